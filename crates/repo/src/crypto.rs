//! Keys and authenticated encryption.
//!
//! One construction is used for everything that is encrypted:
//! XChaCha20-Poly1305 with a fresh random 192-bit nonce per message (random
//! nonces are safe at this size: the collision bound stays negligible far past
//! 2^64 messages per key), laid out as `nonce (24) || ciphertext || tag (16)`.
//! Associated data binds each ciphertext to its role (a blob to its id, an
//! object to its type) so ciphertexts cannot be swapped between places.
//!
//! A [`MasterKey`] is either *full* (it can read and write everything) or
//! *write-only* (docs/format.md §18): it holds the blob-id key, the
//! repository's *shared* key (config, locks, the blob-id lists of index
//! objects) and the repository's X25519 public key, but not the `encrypt`
//! key. Everything a write-only key seals is sealed under a session key
//! that is itself sealed to the public key with HPKE (RFC 9180), so only a
//! full key, which derives the matching private key, can open it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::Id;

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes an encrypted message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes the sealed session key adds in front of every object a
/// write-only key seals: HPKE's encapsulated key (32) and the session key
/// sealed by HPKE's AEAD (32 + 16).
pub const SESSION_HEADER_LEN: usize = 32 + 32 + 16;
/// The most any sealed object adds to its plaintext (a write-only key's).
pub const MAX_SEAL_OVERHEAD: usize = SEAL_OVERHEAD + SESSION_HEADER_LEN;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;
/// HPKE `info`: binds the sealed session key to its role.
const SESSION_INFO: &[u8] = b"lifeboat write-only session key v1";
/// BLAKE3 `derive_key` contexts: the repository's key pair and shared key
/// are functions of the master key, so every full key file already holds
/// them and none has to be rewritten.
const RECIPIENT_CONTEXT: &str = "lifeboat 2026 write-only recipient key v1";
const SHARED_CONTEXT: &str = "lifeboat 2026 write-only shared key v1";

/// The repository master key. Never stored in the clear.
#[derive(Clone)]
pub struct MasterKey {
    /// The blob-id key (keyed BLAKE3 of plaintext names blobs).
    id: [u8; 32],
    /// The AEAD key of everything a full key seals; `None` for a
    /// write-only key.
    encrypt: Option<[u8; 32]>,
    /// Set when the repository takes write-only keys (config version 4).
    write_only: Option<Arc<WriteOnlyParts>>,
}

/// What a repository that takes write-only keys adds to a key.
struct WriteOnlyParts {
    shared: [u8; 32],
    public: <Kem as hpke::Kem>::PublicKey,
    /// Full keys only.
    secret: Option<<Kem as hpke::Kem>::PrivateKey>,
    /// Write-only keys: this handle's session key and its sealed header,
    /// drawn on first use (one HPKE operation per handle, not per blob).
    session: OnceLock<([u8; SESSION_HEADER_LEN], [u8; 32])>,
    /// Full keys: session keys already unsealed, by header (one HPKE
    /// operation per writing session read, not per blob).
    opened: Mutex<HashMap<[u8; SESSION_HEADER_LEN], [u8; 32]>>,
}

/// A full key's serialized form, inside a key file's sealed payload.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullKeyJson {
    #[serde(with = "hex_32")]
    encrypt: [u8; 32],
    #[serde(with = "hex_32")]
    id: [u8; 32],
}

/// A write-only key's serialized form, inside a write-only key file's
/// sealed payload: no `encrypt` key, no private key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteOnlyKeyJson {
    #[serde(with = "hex_32")]
    id: [u8; 32],
    #[serde(with = "hex_32")]
    shared: [u8; 32],
    #[serde(with = "hex_32")]
    public: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_write_only() {
            f.write_str("MasterKey(write-only, ..)")
        } else {
            f.write_str("MasterKey(..)")
        }
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
            encrypt: Some(os_random()),
            id: os_random(),
            write_only: None,
        }
    }

    /// Keyed BLAKE3 of a blob's plaintext. Keyed so that an observer cannot
    /// confirm that a repository holds a known file by hashing it.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id, plaintext).as_bytes())
    }

    /// Whether this key can only add to the repository (it opens nothing
    /// but the config, locks and the blob-id lists of index objects).
    pub fn is_write_only(&self) -> bool {
        self.encrypt.is_none()
    }

    /// Whether the repository this key was set up for takes write-only
    /// keys ([`MasterKey::with_write_only_public`]).
    pub fn takes_write_only_keys(&self) -> bool {
        self.write_only.is_some()
    }

    /// Seals with the `encrypt` key (full keys), or (write-only keys)
    /// under this handle's session key, prefixed by that key sealed to the
    /// repository's public key: `header (80) || seal(session, p, aad)`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_SEAL_OVERHEAD + plaintext.len());
        self.seal_into(plaintext, aad, &mut out);
        out
    }

    /// [`MasterKey::seal`] appended to `out`: the plaintext is copied there
    /// and encrypted in place, so a caller that keeps `out` between
    /// blobs allocates nothing per blob.
    pub fn seal_into(&self, plaintext: &[u8], aad: &[u8], out: &mut Vec<u8>) {
        match (&self.encrypt, &self.write_only) {
            (Some(k), _) => seal_with_into(k, plaintext, aad, out),
            (None, Some(parts)) => {
                let (header, session) = parts.session.get_or_init(|| new_session(&parts.public));
                out.reserve(SESSION_HEADER_LEN + SEAL_OVERHEAD + plaintext.len());
                out.extend_from_slice(header);
                seal_with_into(session, plaintext, aad, out);
            }
            (None, None) => unreachable!("a write-only key always has its public key"),
        }
    }

    /// Decrypts and authenticates; `None` on any mismatch (wrong key, damaged
    /// bytes, wrong associated data, too short), and always for a
    /// write-only key. A full key of a repository that takes write-only
    /// keys also opens what write-only keys sealed.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.open_into(sealed, aad, &mut out).then_some(out)
    }

    /// [`MasterKey::open`] into `out` (replacing what it held, reusing its
    /// memory); false when it does not open, and `out` then holds nothing
    /// to use.
    pub fn open_into(&self, sealed: &[u8], aad: &[u8], out: &mut Vec<u8>) -> bool {
        match self.open_other(sealed, aad, out) {
            Some(()) => true,
            None => {
                out.clear();
                false
            }
        }
    }

    fn open_other(&self, sealed: &[u8], aad: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let encrypt = self.encrypt.as_ref()?;
        if open_with_into(encrypt, sealed, aad, out) {
            return Some(());
        }
        let parts = self.write_only.as_ref()?;
        let secret = parts.secret.as_ref()?;
        if sealed.len() < SESSION_HEADER_LEN + SEAL_OVERHEAD {
            return None;
        }
        let (header, rest) = sealed.split_at(SESSION_HEADER_LEN);
        let header: [u8; SESSION_HEADER_LEN] = header.try_into().ok()?;
        let cached = parts.opened.lock().unwrap().get(&header).copied();
        let session = match cached {
            Some(k) => k,
            None => {
                let k = open_session(secret, &header)?;
                let mut opened = parts.opened.lock().unwrap();
                // Bounded: a reader meets one header per writing session.
                if opened.len() >= 4096 {
                    opened.clear();
                }
                opened.insert(header, k);
                k
            }
        };
        open_with_into(&session, rest, aad, out).then_some(())
    }

    /// The repository's shared key: a function of the master key for a
    /// full key, carried by a write-only key.
    fn shared(&self) -> [u8; 32] {
        match (&self.encrypt, &self.write_only) {
            (_, Some(parts)) => parts.shared,
            (Some(_), None) => derive(SHARED_CONTEXT, self),
            (None, None) => unreachable!("a write-only key always has its shared key"),
        }
    }

    /// Seals what write-only keys must read too (a version 4 config, lock
    /// objects and the blob-id lists of index objects) under the shared
    /// key when the repository takes write-only keys, else like
    /// [`MasterKey::seal`].
    pub fn seal_shared(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        if self.takes_write_only_keys() {
            seal_with(&self.shared(), plaintext, aad)
        } else {
            self.seal(plaintext, aad)
        }
    }

    /// Opens what [`MasterKey::seal_shared`] sealed.
    pub fn open_shared(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if self.takes_write_only_keys() {
            open_with(&self.shared(), sealed, aad)
        } else {
            self.open(sealed, aad)
        }
    }

    /// Opens with the shared key whatever the key was set up for (a
    /// version 4 config, before the key knows the repository's settings).
    pub(crate) fn open_with_shared(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.shared(), sealed, aad)
    }

    /// Seals with the shared key whatever the key was set up for (a
    /// version 4 config).
    pub(crate) fn seal_with_shared(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.shared(), plaintext, aad)
    }

    /// The repository's public key, derived from a full key (its private
    /// half never leaves the full key).
    pub(crate) fn derived_public(&self) -> Result<[u8; 32], crate::Error> {
        if self.encrypt.is_none() {
            return Err(crate::Error::WriteOnlyKey {
                what: "deriving the repository's key pair".into(),
            });
        }
        let (_, public) = Kem::derive_keypair(&derive(RECIPIENT_CONTEXT, self));
        Ok(public.to_bytes().into())
    }

    /// This key, set up for a repository that takes write-only keys and
    /// whose config names `public`: a full key derives the key pair and
    /// checks that its public half is `public`; a write-only key checks
    /// that its own copy is. A mismatch is an error (a config swapped by
    /// someone holding the shared key, or a key file of another
    /// repository).
    pub(crate) fn with_write_only_public(
        mut self,
        public: &[u8; 32],
    ) -> Result<Self, crate::Error> {
        let mismatch = || {
            crate::Error::corrupt(
                "config",
                "the repository's write-only public key does not match this key's",
            )
        };
        match &self.encrypt {
            Some(_) => {
                let (secret, derived) = Kem::derive_keypair(&derive(RECIPIENT_CONTEXT, &self));
                if derived.to_bytes().as_slice() != public {
                    return Err(mismatch());
                }
                self.write_only = Some(Arc::new(WriteOnlyParts {
                    shared: derive(SHARED_CONTEXT, &self),
                    public: derived,
                    secret: Some(secret),
                    session: OnceLock::new(),
                    opened: Mutex::default(),
                }));
            }
            None => {
                let parts = self
                    .write_only
                    .as_ref()
                    .expect("write-only keys have parts");
                if parts.public.to_bytes().as_slice() != public {
                    return Err(mismatch());
                }
            }
        }
        Ok(self)
    }

    /// The write-only key that goes with this full key: the blob-id key,
    /// the shared key and the public key; nothing that opens what is
    /// sealed.
    pub fn write_only_key(&self) -> Result<MasterKey, crate::Error> {
        let public = self.derived_public()?;
        Ok(MasterKey {
            id: self.id,
            encrypt: None,
            write_only: Some(Arc::new(WriteOnlyParts {
                shared: self.shared(),
                public: <Kem as hpke::Kem>::PublicKey::from_bytes(&public)
                    .expect("a derived public key decodes"),
                secret: None,
                session: OnceLock::new(),
                opened: Mutex::default(),
            })),
        })
    }

    /// The key's serialized form (the plaintext a key file wraps):
    /// `{"encrypt","id"}` for a full key, `{"id","shared","public"}` for a
    /// write-only key.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        match (&self.encrypt, &self.write_only) {
            (Some(encrypt), _) => serde_json::to_vec(&FullKeyJson {
                encrypt: *encrypt,
                id: self.id,
            }),
            (None, Some(parts)) => serde_json::to_vec(&WriteOnlyKeyJson {
                id: self.id,
                shared: parts.shared,
                public: parts.public.to_bytes().into(),
            }),
            (None, None) => unreachable!("a write-only key always has its parts"),
        }
        .expect("keys serialize")
    }

    /// Parses [`MasterKey::to_json`]'s output, of the kind expected.
    pub(crate) fn from_json(bytes: &[u8], write_only: bool) -> Option<MasterKey> {
        if !write_only {
            let k: FullKeyJson = serde_json::from_slice(bytes).ok()?;
            return Some(MasterKey {
                id: k.id,
                encrypt: Some(k.encrypt),
                write_only: None,
            });
        }
        let k: WriteOnlyKeyJson = serde_json::from_slice(bytes).ok()?;
        Some(MasterKey {
            id: k.id,
            encrypt: None,
            write_only: Some(Arc::new(WriteOnlyParts {
                shared: k.shared,
                public: <Kem as hpke::Kem>::PublicKey::from_bytes(&k.public).ok()?,
                secret: None,
                session: OnceLock::new(),
                opened: Mutex::default(),
            })),
        })
    }
}

/// BLAKE3's key derivation over the whole master key, under `context`.
fn derive(context: &str, key: &MasterKey) -> [u8; 32] {
    let encrypt = key.encrypt.expect("derived only from full keys");
    let mut material = [0u8; 64];
    material[..32].copy_from_slice(&encrypt);
    material[32..].copy_from_slice(&key.id);
    blake3::derive_key(context, &material)
}

/// A fresh session key from the OS generator, sealed to `public` with
/// single-shot HPKE (base mode): `enc (32) || sealed key (48)`.
fn new_session(public: &<Kem as hpke::Kem>::PublicKey) -> ([u8; SESSION_HEADER_LEN], [u8; 32]) {
    let session: [u8; 32] = os_random();
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, Kdf, Kem>(
        &OpModeS::Base,
        public,
        SESSION_INFO,
        &session,
        &[],
    )
    .expect("HPKE sealing to a valid public key cannot fail");
    let mut header = [0u8; SESSION_HEADER_LEN];
    header[..32].copy_from_slice(&enc.to_bytes());
    header[32..].copy_from_slice(&ct);
    (header, session)
}

/// Unseals a session key sealed by [`new_session`]; `None` if it does not
/// open (not sealed to this key, or damaged).
fn open_session(
    secret: &<Kem as hpke::Kem>::PrivateKey,
    header: &[u8; SESSION_HEADER_LEN],
) -> Option<[u8; 32]> {
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&header[..32]).ok()?;
    let plain = hpke::single_shot_open::<HpkeAead, Kdf, Kem>(
        &OpModeR::Base,
        secret,
        &enc,
        SESSION_INFO,
        &header[32..],
        &[],
    )
    .ok()?;
    plain.try_into().ok()
}

pub(crate) fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    seal_with_into(key, plaintext, aad, &mut out);
    out
}

/// `nonce || ciphertext || tag` appended to `out`, the plaintext copied
/// there and encrypted in place (what the AEAD crate's allocating
/// `encrypt` does, into a fresh vector).
fn seal_with_into(key: &[u8; 32], plaintext: &[u8], aad: &[u8], out: &mut Vec<u8>) {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce_bytes: [u8; NONCE_LEN] = os_random();
    out.reserve(SEAL_OVERHEAD + plaintext.len());
    out.extend_from_slice(&nonce_bytes);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(nonce_bytes), aad, (&mut out[start..]).into())
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    out.extend_from_slice(&tag);
}

pub(crate) fn open_with(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    open_with_into(key, sealed, aad, &mut out).then_some(out)
}

/// [`open_with`] into `out`, reusing its memory: the ciphertext is copied
/// there and decrypted in place once its tag checks out (what the AEAD
/// crate's allocating `decrypt` does, into a fresh vector).
fn open_with_into(key: &[u8; 32], sealed: &[u8], aad: &[u8], out: &mut Vec<u8>) -> bool {
    if sealed.len() < SEAL_OVERHEAD {
        return false;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let (Ok(nonce), Ok(tag)) = (
        <[u8; NONCE_LEN]>::try_from(nonce),
        <[u8; TAG_LEN]>::try_from(tag),
    ) else {
        return false;
    };
    out.clear();
    out.extend_from_slice(ct);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce),
            aad,
            out.as_mut_slice().into(),
            &tag.into(),
        )
        .is_ok()
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

    #[test]
    fn write_only_seals_what_only_the_full_key_opens() {
        let full = MasterKey::generate();
        let public = full.derived_public().unwrap();
        let full = full.with_write_only_public(&public).unwrap();
        let wo = full.write_only_key().unwrap();
        let wo = MasterKey::from_json(&wo.to_json(), true)
            .unwrap()
            .with_write_only_public(&public)
            .unwrap();
        assert!(wo.is_write_only() && !full.is_write_only());
        assert_eq!(wo.blob_id(b"x"), full.blob_id(b"x"));
        let sealed = wo.seal(b"hello", b"aad");
        assert_eq!(sealed.len(), 5 + MAX_SEAL_OVERHEAD);
        // The write-only key cannot open what it sealed, nor what the
        // full key sealed.
        assert!(wo.open(&sealed, b"aad").is_none());
        assert!(wo.open(&full.seal(b"old", b"aad"), b"aad").is_none());
        assert_eq!(full.open(&sealed, b"aad").unwrap(), b"hello");
        assert!(full.open(&sealed, b"other").is_none());
        // One session key per handle: the header repeats.
        let again = wo.seal(b"more", b"aad");
        assert_eq!(again[..SESSION_HEADER_LEN], sealed[..SESSION_HEADER_LEN]);
        // A damaged session header does not open.
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        let fresh = MasterKey::from_json(&full.to_json(), false)
            .unwrap()
            .with_write_only_public(&public)
            .unwrap();
        assert!(fresh.open(&bad, b"aad").is_none());
        assert_eq!(fresh.open(&sealed, b"aad").unwrap(), b"hello");
        // Both open the shared key's objects.
        let shared = wo.seal_shared(b"lock", b"l");
        assert_eq!(full.open_shared(&shared, b"l").unwrap(), b"lock");
        // Another repository's full key opens nothing.
        let other = MasterKey::generate();
        let other_public = other.derived_public().unwrap();
        let other = other.with_write_only_public(&other_public).unwrap();
        assert!(other.open(&sealed, b"aad").is_none());
        assert!(wo.clone().with_write_only_public(&other_public).is_err());
    }
}
