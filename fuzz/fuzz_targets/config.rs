//! The config object: unauthenticated header, then a sealed JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::Config;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // Readers refuse a stored object over this size before reading it
    // (lifeboat_repo::limits, docs/security.md): larger inputs never reach
    // the decoder.
    if data.len() as u64 > lifeboat_repo::limits::MAX_CONFIG_LEN + 1 {
        return;
    }
    let Some((sealed, rest)) = common::mode(data) else {
        return;
    };
    let bytes = if sealed {
        let mut b = common::CONFIG_HEADER.to_vec();
        b.extend(common::key().seal(rest, common::CONFIG_HEADER));
        b
    } else {
        rest.to_vec()
    };
    let _ = Config::check_version(&bytes);
    if let Ok(config) = Config::decode(&bytes, common::key()) {
        let again = Config::decode(&config.encode(common::key()), common::key())
            .expect("re-encoded config decodes");
        assert_eq!(again.repository_id, config.repository_id);
    }
});
