//! Index objects: sealed postcard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::{Index, IndexFile};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // Readers refuse a stored object over this size before reading it
    // (lifeboat_repo::limits, docs/security.md): larger inputs never reach
    // the decoder.
    if data.len() as u64 > lifeboat_repo::limits::MAX_INDEX_LEN + 1 {
        return;
    }
    let Some(object) = common::object(data, common::INDEX_AAD) else {
        return;
    };
    if let Ok(file) = IndexFile::decode(common::key(), "index/fuzz", &object) {
        // Merging is what every reader does next.
        let index = Index::from_packs(&file.packs);
        // The merged index finds every entry it was given, under its type.
        for p in &file.packs {
            for e in &p.entries {
                assert!(index.contains(e.blob_type, &e.id), "indexed blob not found");
            }
        }
        let _ = index.blob_count();
    }
});
