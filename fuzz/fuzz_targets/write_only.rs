//! What a repository that takes write-only keys adds (docs/format.md §18):
//! index objects with a blob-id list in front (read by write-only keys)
//! and objects sealed under a session key that is sealed to the
//! repository's public key (read by full keys).
//!
//! The first input byte picks the form: even — the rest is a stored index
//! object, decoded by the write-only key (its id list) and by the full
//! key (its sealed index), and opened by the full key as a write-only
//! key's sealed object (the session header); odd — the rest is the
//! *plaintext* of an id list, which the harness seals with the shared key,
//! so the postcard decoder behind it sees arbitrary bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::{Index, IndexFile, MasterKey};

const INDEX_IDS_AAD: &[u8] = b"lifeboat index ids v1";
const SNAPSHOT_AAD: &[u8] = b"lifeboat snapshot v1";

fn keys() -> &'static (MasterKey, MasterKey) {
    static KEYS: OnceLock<(MasterKey, MasterKey)> = OnceLock::new();
    KEYS.get_or_init(lifeboat_repo::fuzzing::write_only_pair)
}

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > lifeboat_repo::limits::MAX_INDEX_LEN + 1 {
        return;
    }
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let (full, write_only) = keys();
    let object = if first & 1 == 1 {
        let ids = write_only.seal_shared(rest, INDEX_IDS_AAD);
        let mut object = (ids.len() as u32).to_le_bytes().to_vec();
        object.extend_from_slice(&ids);
        object
    } else {
        let _ = full.open(rest, SNAPSHOT_AAD);
        rest.to_vec()
    };
    for key in [write_only, full] {
        if let Ok(file) = IndexFile::decode(key, "index/fuzz", &object) {
            let index = Index::from_packs(&file.packs);
            let _ = index.blob_count();
        }
    }
});
