//! Lock objects: sealed JSON, read from every other writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::lock::{LockInfo, LockOptions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // Readers refuse a stored object over this size before reading it
    // (lifeboat_repo::limits, docs/security.md): larger inputs never reach
    // the decoder.
    if data.len() as u64 > lifeboat_repo::limits::MAX_LOCK_LEN + 1 {
        return;
    }
    let Some(object) = common::object(data, common::LOCK_AAD) else {
        return;
    };
    if let Ok(info) = LockInfo::decode(common::key(), "locks/fuzz", &object) {
        let _ = info.describe();
        let _ = LockOptions::default().is_stale(&info);
    }
});
