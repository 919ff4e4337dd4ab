//! A pack's trailer: length field, sealed entry list, entry bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::Id;
use lifeboat_repo::fuzzing::parse_pack;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((sealed, rest)) = common::mode(data) else {
        return;
    };
    let pack = if sealed {
        // Blob area of up to 255 bytes (so entry bounds matter), then the
        // sealed trailer and its length.
        let Some((&blobs, plain)) = rest.split_first() else {
            return;
        };
        let mut p = vec![0u8; blobs as usize];
        let t = common::key().seal(plain, common::TRAILER_AAD);
        p.extend_from_slice(&t);
        p.extend_from_slice(&(t.len() as u32).to_le_bytes());
        p
    } else {
        rest.to_vec()
    };
    let id = Id::of_bytes(&pack);
    if let Ok(entries) = parse_pack(common::key(), &id, &pack) {
        let trailer_start = pack.len()
            - 4
            - u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
        for e in entries {
            assert!(e.offset as usize + e.length as usize <= trailer_start);
        }
    }
});
