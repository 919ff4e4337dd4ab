//! Sealed blobs: AEAD, bounded zstd decompression, id check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::fuzzing::open_blob;
use lifeboat_repo::{BlobType, Id, PackEntry};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // flags (type, compressed, sealed mode), raw_length (u16), payload.
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let raw_length = u16::from_le_bytes([data[1], data[2]]) as u32;
    let payload = &data[3..];
    let blob_type = if flags & 1 == 0 {
        BlobType::Data
    } else {
        BlobType::Tree
    };
    let compressed = flags & 2 != 0;
    let mut entry = PackEntry {
        blob_type,
        id: Id::of_bytes(payload),
        offset: 0,
        length: 0,
        raw_length,
        compressed,
    };
    let sealed = if flags & 4 != 0 {
        // A payload that opens: the id check (and decompression) decide.
        // When the payload is a valid zstd frame or raw plaintext whose id
        // matches, opening must succeed.
        let mut aad = vec![flags & 1, compressed as u8];
        if flags & 8 != 0 {
            // Make the id right for the uncompressed case.
            entry.id = common::key().blob_id(payload);
            entry.raw_length = payload.len() as u32;
        }
        aad.extend_from_slice(&entry.id.0);
        common::key().seal(payload, &aad)
    } else {
        payload.to_vec()
    };
    entry.length = sealed.len() as u32;
    match open_blob(common::key(), &entry, &sealed) {
        Ok(plain) => {
            assert_eq!(plain.len(), entry.raw_length as usize);
            assert_eq!(common::key().blob_id(&plain), entry.id);
        }
        Err(_) => assert!(
            compressed || flags & 12 != 12,
            "a raw blob with the right id must open"
        ),
    }
});
