//! Index objects: sealed postcard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::{Index, IndexFile};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some(object) = common::object(data, common::INDEX_AAD) else {
        return;
    };
    if let Ok(file) = IndexFile::decode(common::key(), "index/fuzz", &object) {
        // Merging is what every reader does next.
        let mut index = Index::default();
        for p in &file.packs {
            index.add_pack(p);
        }
        let _ = index.blob_count();
    }
});
