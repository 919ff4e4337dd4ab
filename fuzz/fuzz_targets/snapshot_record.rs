//! Snapshot records: sealed JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::{SnapshotRecord, copied_from};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
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
