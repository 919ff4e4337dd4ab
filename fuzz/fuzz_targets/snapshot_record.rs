//! Snapshot records: sealed JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::{SnapshotRecord, copied_from};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // Readers refuse a stored object over this size before reading it
    // (lifeboat_repo::limits, docs/security.md): larger inputs never reach
    // the decoder.
    if data.len() as u64 > lifeboat_repo::limits::MAX_SNAPSHOT_LEN + 1 {
        return;
    }
    let Some(object) = common::object(data, common::SNAPSHOT_AAD) else {
        return;
    };
    if let Ok(record) = SnapshotRecord::decode(common::key(), "snapshots/fuzz", &object) {
        let _ = copied_from(&record);
        let _ = record.same_source("host", &["/a".to_string()]);
        SnapshotRecord::decode(
            common::key(),
            "snapshots/fuzz",
            &record.encode(common::key()),
        )
        .expect("re-encoded record decodes");
    }
});
