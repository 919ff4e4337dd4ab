//! The PostgreSQL WAL archive: object names as listed from storage, WAL
//! file names and LSNs, backup history files, and sealed WAL objects.
//!
//! The first byte picks what the rest is: 0 names (object names, file
//! names, LSNs), 1 a backup history file, 2 a stored WAL object, 3 a
//! plaintext WAL payload the harness seals (so decompression sees
//! arbitrary bytes behind the AEAD).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_connectors::postgres::{base, wal, walname};

#[path = "common.rs"]
mod common;

const OBJECT: &str = "7300000000000001-000000010000000000000003";

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Some((sysid, file)) = wal::parse_object_name(&text) {
                assert_eq!(
                    wal::parse_object_name(&wal::object_name(sysid, &file)),
                    Some((sysid, file.clone()))
                );
            }
            for size in [1u64 << 20, 16 << 20, 1 << 30] {
                if let Some(seg) = walname::Segment::parse(&text, size) {
                    let _ = seg.name(size);
                }
            }
            let _ = walname::is_segment_name(&text);
            let _ = walname::is_archivable(&text);
            let _ = walname::position_part(&text);
            if let Some(lsn) = walname::parse_lsn(&text) {
                assert_eq!(walname::parse_lsn(&walname::format_lsn(lsn)), Some(lsn));
            }
        }
        1 => {
            let _ = base::parse_history(&String::from_utf8_lossy(rest));
        }
        2 => {
            let _ = wal::decode(common::key(), OBJECT, rest);
        }
        _ => {
            let sealed = common::key().seal(rest, &wal_aad());
            let _ = wal::decode(common::key(), OBJECT, &sealed);
            // What encode writes, decode reads back.
            let stored = wal::encode(common::key(), OBJECT, rest);
            assert_eq!(wal::decode(common::key(), OBJECT, &stored).unwrap(), rest);
        }
    }
});

/// The associated data of a WAL object (docs/format.md, WAL archive).
fn wal_aad() -> Vec<u8> {
    let mut a = b"lifeboat wal v1\0".to_vec();
    a.extend_from_slice(OBJECT.as_bytes());
    a
}
