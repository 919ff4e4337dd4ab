//! Shared by the fuzz targets: one fixed master key per process, and the
//! associated-data strings of docs/format.md §3.1.
//!
//! Encrypted objects are fuzzed two ways, chosen by the first input byte:
//! even — the rest is the stored object as read from storage (exercises
//! length checks and authentication); odd — the rest is a *plaintext* that
//! the harness seals with the right key and role, so the decoder behind the
//! AEAD (postcard, JSON, range checks) sees arbitrary bytes, as it would from
//! a buggy or hostile writer holding the key.

#![allow(dead_code)]

use std::sync::OnceLock;

use lifeboat_repo::MasterKey;

pub const CONFIG_HEADER: &[u8; 12] = b"LIFEBOAT\x01\x00\x00\x00";
pub const TRAILER_AAD: &[u8] = b"lifeboat pack trailer v1";
pub const INDEX_AAD: &[u8] = b"lifeboat index v1";
pub const SNAPSHOT_AAD: &[u8] = b"lifeboat snapshot v1";
pub const LOCK_AAD: &[u8] = b"lifeboat lock v1";

pub fn key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(MasterKey::generate)
}

/// Splits the mode byte off: `(sealed_plaintext_mode, rest)`.
pub fn mode(data: &[u8]) -> Option<(bool, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((first & 1 == 1, rest))
}

/// The stored form of `data` for a role: as given, or sealed under `aad`.
pub fn object(data: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let (sealed, rest) = mode(data)?;
    Some(if sealed {
        key().seal(rest, aad)
    } else {
        rest.to_vec()
    })
}
