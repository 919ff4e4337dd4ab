//! Lock objects: sealed JSON, read from every other writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::lock::{LockInfo, LockOptions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some(object) = common::object(data, common::LOCK_AAD) else {
        return;
    };
    if let Ok(info) = LockInfo::decode(common::key(), "locks/fuzz", &object) {
        let _ = info.describe();
        let _ = LockOptions::default().is_stale(&info);
    }
});
