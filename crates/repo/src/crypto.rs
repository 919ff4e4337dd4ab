//! Keys and authenticated encryption.
//!
//! One construction is used for everything that is encrypted:
//! XChaCha20-Poly1305 with a fresh random 192-bit nonce per message (random
//! nonces are safe at this size: the collision bound stays negligible far past
//! 2^64 messages per key), laid out as `nonce (24) || ciphertext || tag (16)`.
//! Associated data binds each ciphertext to its role (a blob to its id, an
//! object to its type) so ciphertexts cannot be swapped between places.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::Id;

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes an encrypted message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The repository master key: 32 bytes for encryption and 32 bytes for the
/// keyed BLAKE3 that names blobs. Never stored in the clear.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKey {
    #[serde(with = "hex_32")]
    encrypt: [u8; 32],
    #[serde(with = "hex_32")]
    id: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// `N` bytes from the operating system's random generator (`getrandom(2)`),
/// for every key, salt and nonce: no user-space generator whose state a
/// `fork` or a cloned virtual machine could repeat. A system that cannot
/// deliver randomness cannot encrypt safely, so that is a panic, not an
/// error to work around.
pub fn os_random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random generator failed");
    out
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey {
            encrypt: os_random(),
            id: os_random(),
        }
    }

    /// Keyed BLAKE3 of a blob's plaintext. Keyed so that an observer cannot
    /// confirm that a repository holds a known file by hashing it.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id, plaintext).as_bytes())
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.encrypt, plaintext, aad)
    }

    /// Decrypts and authenticates; `None` on any mismatch (wrong key, damaged
    /// bytes, wrong associated data, too short).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.encrypt, sealed, aad)
    }
}

pub(crate) fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce_bytes: [u8; NONCE_LEN] = os_random();
    let nonce = XNonce::from(nonce_bytes);
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    out
}

pub(crate) fn open_with(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
        .ok()
}

pub(crate) mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = MasterKey::generate();
        let sealed = k.seal(b"hello", b"aad");
        assert_eq!(k.open(&sealed, b"aad").unwrap(), b"hello");
        assert!(k.open(&sealed, b"other").is_none());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(k.open(&bad, b"aad").is_none());
        assert!(k.open(&sealed[..10], b"aad").is_none());
        assert!(MasterKey::generate().open(&sealed, b"aad").is_none());
    }
}
