//! Key files: the master key wrapped under a password.
//!
//! A key file is plaintext JSON (it must be readable before anything can be
//! decrypted) holding the Argon2id parameters and salt and the master key
//! sealed under the Argon2id output. Several key files may wrap the same
//! master key (one per person or machine); removing one revokes that password
//! without re-encrypting anything. Each key file is named by the BLAKE3 of its
//! bytes.
//!
//! Version 2 (written since issue 12) binds every field outside `wrapped`
//! (version, created, host, user, KDF algorithm, parameters and salt) into
//! the wrap's associated data ([`KeyFile::wrap_aad`]), so editing any of them
//! makes the key fail to open instead of misleading `key list` or weakening
//! the KDF. Version 1 files (whose fields are unauthenticated) are still
//! read, with a warning, and `key passwd` replaces them with version 2.
//! Both versions are refused before any KDF runs when their parameters are
//! below [`KdfParams::MINIMUM`] or their `wrapped` field is not exactly the
//! hex of one sealed master key.
//!
//! Version 3 is version 2 plus a [`Role`] (`append-only`, `read-only`),
//! also bound into the associated data. Full keys are still written as
//! version 2 (older builds read them); version 1 and 2 files are `full`.
//! A key file has a *kind* (docs/format.md §4, §18): `full` (no `kind`
//! field, every file written before write-only keys) wraps the master key;
//! `write-only` wraps only what adding snapshots needs (the blob-id key,
//! the shared key and the repository's public key). The kind is bound into
//! the wrap's associated data, so it cannot be edited either.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::crypto::{MasterKey, SEAL_OVERHEAD, hex_32, open_with, seal_with};
use crate::{Error, Result};

/// Associated data of a version 1 wrapped master key (a constant: the other
/// fields of a version 1 file are not authenticated).
const WRAP_AAD_V1: &[u8] = b"lifeboat key file v1";
/// The version [`KeyFile::create`] writes for a full key.
const KEY_FILE_VERSION: u32 = 2;
/// The version written for a key with a role other than full (the only
/// difference: the `role` field, bound into the associated data).
const KEY_FILE_VERSION_ROLE: u32 = 3;
/// Upper bounds accepted when reading a key file, so a hostile key file cannot
/// make us allocate 4 TiB or spin for a day.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 64;
/// Bytes of the master key's JSON (`{"encrypt":"<64 hex>","id":"<64 hex>"}`),
/// so a full key's `wrapped` is always `2 * (WRAPPED_PLAIN_LEN +
/// SEAL_OVERHEAD)` hex digits.
const WRAPPED_PLAIN_LEN: usize = 150;
/// Bytes of a write-only key's JSON (`{"id":"<64 hex>","shared":"<64
/// hex>","public":"<64 hex>"}`).
const WRAPPED_WRITE_ONLY_PLAIN_LEN: usize = 225;

/// What a key file's password unlocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// The master key: reads and writes everything.
    #[default]
    Full,
    /// Adds snapshots; reads nothing stored (docs/security.md §12).
    WriteOnly,
}

impl KeyKind {
    fn is_full(&self) -> bool {
        *self == KeyKind::Full
    }

    /// The name `key list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Full => "full",
            KeyKind::WriteOnly => "write-only",
        }
    }

    fn wrapped_plain_len(self) -> usize {
        match self {
            KeyKind::Full => WRAPPED_PLAIN_LEN,
            KeyKind::WriteOnly => WRAPPED_WRITE_ONLY_PLAIN_LEN,
        }
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// The default for new key files: 64 MiB, 3 passes, 4 lanes, RFC
    /// 9106's second recommended option. The lanes are computed on
    /// parallel threads (the argon2 crate's `parallel` feature), so a
    /// 2-core machine derives the key in about half the wall time of one
    /// lane; one core does the same work as with one lane, and a password
    /// guess costs an attacker the same memory and passes either way.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    /// The least a key file read from storage may ask for: a planted key
    /// file with cheaper parameters would let a storage writer test
    /// password guesses cheaply. One lane, so key files written before
    /// [`KdfParams::DEFAULT`] had four still open.
    pub const MINIMUM: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Deliberately weak parameters for test suites only. Key files with
    /// exactly these parameters are accepted on read only by builds with
    /// debug assertions ([`KdfParams::weak_test_params_accepted`]), and the
    /// CLI writes them only there, through `LIFEBOAT_INSECURE_TEST_KDF=1`.
    pub const INSECURE_TEST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// Whether this build reads key files made with
    /// [`KdfParams::INSECURE_TEST`]: only builds with debug assertions (the
    /// test suites'), never a release build.
    pub const fn weak_test_params_accepted() -> bool {
        cfg!(debug_assertions)
    }

    /// Whether a key file read from storage may use these parameters: none
    /// below [`KdfParams::MINIMUM`] (and none above the reader's caps).
    fn check_on_read(self, object: &str) -> Result<()> {
        if self.memory_kib > MAX_MEMORY_KIB
            || self.iterations > MAX_ITERATIONS
            || self.parallelism > MAX_PARALLELISM
        {
            return Err(Error::corrupt(object, "KDF parameters out of range"));
        }
        let d = Self::MINIMUM;
        let weak = self.memory_kib < d.memory_kib
            || self.iterations < d.iterations
            || self.parallelism < d.parallelism;
        if weak && !(Self::weak_test_params_accepted() && self == Self::INSECURE_TEST) {
            return Err(Error::corrupt(
                object,
                format!(
                    "KDF parameters ({} KiB, {} passes, {} lanes) are below the minimum \
                     ({} KiB, {} passes, {} lane): refused without trying it (a planted key \
                     file?)",
                    self.memory_kib,
                    self.iterations,
                    self.parallelism,
                    d.memory_kib,
                    d.iterations,
                    d.parallelism
                ),
            ));
        }
        Ok(())
    }
}

/// What a key may do (docs/format.md §4, docs/security.md §11.4). The CLI
/// and the library refuse the rest; a `lifeboat serve` endpoint enforces
/// the same split on the storage itself.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything: back up, read, forget, prune, manage keys and
    /// protections.
    #[default]
    Full,
    /// Back up (add objects) and read; never delete or rewrite anything.
    AppendOnly,
    /// Read only.
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Full => "full",
            Role::AppendOnly => "append-only",
            Role::ReadOnly => "read-only",
        }
    }

    /// Whether a key of this role may do what `needs` names.
    pub fn allows(self, needs: Permission) -> bool {
        match self {
            Role::Full => true,
            Role::AppendOnly => needs != Permission::Full,
            Role::ReadOnly => needs == Permission::Read,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Role::Full),
            "append-only" => Ok(Role::AppendOnly),
            "read-only" => Ok(Role::ReadOnly),
            _ => Err(format!(
                "unknown role {s:?}: full, append-only or read-only"
            )),
        }
    }
}

/// What an operation needs of the key that opened the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read objects.
    Read,
    /// Add new objects (a backup, a copy into the repository, WAL).
    Append,
    /// Delete or rewrite objects, or manage keys and protections.
    Full,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfRecord {
    algorithm: String,
    #[serde(flatten)]
    params: KdfParams,
    #[serde(with = "hex_32")]
    salt: [u8; 32],
}

/// The on-disk key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub lifeboat_key_version: u32,
    pub created: jiff::Timestamp,
    pub host: String,
    pub user: String,
    kdf: KdfRecord,
    /// Present exactly in version 3 files; absent means `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// Absent for a full key (every key file written before write-only
    /// keys existed).
    #[serde(default, skip_serializing_if = "KeyKind::is_full")]
    pub kind: KeyKind,
    /// hex of `seal(argon2id(password), master key JSON, wrap_aad)`.
    wrapped: String,
}

impl KeyFile {
    pub fn create(master: &MasterKey, password: &[u8], params: KdfParams) -> Result<Self> {
        Self::create_with_role(master, password, params, Role::Full)
    }

    /// A key file of `role`: version 2 for a full key, else version 3.
    pub fn create_with_role(
        master: &MasterKey,
        password: &[u8],
        params: KdfParams,
        role: Role,
    ) -> Result<Self> {
        let salt: [u8; 32] = crate::crypto::os_random();
        let kek = derive(password, &salt, params)?;
        let (version, role) = match role {
            Role::Full => (KEY_FILE_VERSION, None),
            other => (KEY_FILE_VERSION_ROLE, Some(other)),
        };
        let kind = if master.is_write_only() {
            KeyKind::WriteOnly
        } else {
            KeyKind::Full
        };
        let plain = master.to_json();
        debug_assert_eq!(plain.len(), kind.wrapped_plain_len());
        let mut kf = KeyFile {
            lifeboat_key_version: version,
            created: jiff::Timestamp::now(),
            host: hostname(),
            user: std::env::var("USER").unwrap_or_default(),
            kdf: KdfRecord {
                algorithm: "argon2id".into(),
                params,
                salt,
            },
            role,
            kind,
            wrapped: String::new(),
        };
        kf.wrapped = hex::encode(seal_with(&kek, &plain, &kf.wrap_aad()));
        Ok(kf)
    }

    /// Parses and checks a key file read from storage, before any password
    /// is tried: known version and KDF, parameters within
    /// [`KdfParams::MINIMUM`] and the caps, `wrapped` exactly one sealed
    /// master key in lowercase hex.
    pub fn decode(object: &str, bytes: &[u8]) -> Result<Self> {
        let kf: KeyFile = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(object, e))?;
        if !(1..=KEY_FILE_VERSION_ROLE).contains(&kf.lifeboat_key_version)
            || kf.kdf.algorithm != "argon2id"
        {
            return Err(Error::corrupt(object, "unknown key file version or KDF"));
        }
        // A role is written only in version 3, and version 3 always has one.
        if kf.role.is_some() != (kf.lifeboat_key_version == KEY_FILE_VERSION_ROLE) {
            return Err(Error::corrupt(
                object,
                "a role belongs in version 3 key files only",
            ));
        }
        kf.kdf.params.check_on_read(object)?;
        if kf.kind != KeyKind::Full && kf.lifeboat_key_version < 2 {
            return Err(Error::corrupt(
                object,
                "a write-only key file must be version 2",
            ));
        }
        let hex_len = 2 * (kf.kind.wrapped_plain_len() + SEAL_OVERHEAD);
        if kf.wrapped.len() != hex_len
            || !kf
                .wrapped
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::corrupt(
                object,
                format!("wrapped key is not {hex_len} lowercase hex digits"),
            ));
        }
        Ok(kf)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serializes")
    }

    pub fn kdf_params(&self) -> KdfParams {
        self.kdf.params
    }

    /// What this key may do (`full` for version 1 and 2 files).
    pub fn role(&self) -> Role {
        self.role.unwrap_or_default()
    }

    /// A version 1 key file: its fields outside `wrapped` are not
    /// authenticated (`key passwd` rewrites it as version 2).
    pub fn is_legacy(&self) -> bool {
        self.lifeboat_key_version == 1
    }

    /// The associated data of the wrap (docs/format.md §4): for version 2,
    /// every field but `wrapped`, length-prefixed, so that none can be
    /// changed without the key failing to open.
    fn wrap_aad(&self) -> Vec<u8> {
        if self.lifeboat_key_version == 1 {
            return WRAP_AAD_V1.to_vec();
        }
        let mut aad = if self.lifeboat_key_version == KEY_FILE_VERSION_ROLE {
            b"lifeboat key file v3\n".to_vec()
        } else {
            b"lifeboat key file v2\n".to_vec()
        };
        let p = self.kdf.params;
        aad.extend_from_slice(&self.lifeboat_key_version.to_le_bytes());
        aad.extend_from_slice(&self.created.as_second().to_le_bytes());
        aad.extend_from_slice(&self.created.subsec_nanosecond().to_le_bytes());
        for field in [&self.host, &self.user, &self.kdf.algorithm] {
            aad.extend_from_slice(&(field.len() as u32).to_le_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        for n in [p.memory_kib, p.iterations, p.parallelism] {
            aad.extend_from_slice(&n.to_le_bytes());
        }
        aad.extend_from_slice(&self.kdf.salt);
        if self.lifeboat_key_version == KEY_FILE_VERSION_ROLE {
            let role = self.role().as_str();
            aad.extend_from_slice(&(role.len() as u32).to_le_bytes());
            aad.extend_from_slice(role.as_bytes());
        }
        // Only write-only files append their kind, so full files keep the
        // associated data they always had.
        if self.kind != KeyKind::Full {
            let kind = self.kind.as_str();
            aad.extend_from_slice(&(kind.len() as u32).to_le_bytes());
            aad.extend_from_slice(kind.as_bytes());
        }
        aad
    }

    /// Unwraps the master key; `Ok(None)` if the password is wrong (or, for
    /// version 2, any field was changed).
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        // Checked again (decode already did) so that no caller can run the
        // KDF on a malformed file.
        let Ok(sealed) = hex::decode(&self.wrapped) else {
            return Err(Error::corrupt("key file", "wrapped key is not hex"));
        };
        if sealed.len() != self.kind.wrapped_plain_len() + SEAL_OVERHEAD {
            return Err(Error::corrupt(
                "key file",
                "wrapped key has the wrong length",
            ));
        }
        let kek = derive(password, &self.kdf.salt, self.kdf.params)?;
        match open_with(&kek, &sealed, &self.wrap_aad()) {
            None => Ok(None),
            Some(plain) => MasterKey::from_json(&plain, self.kind == KeyKind::WriteOnly)
                .map(Some)
                .ok_or_else(|| Error::corrupt("key file", "wrapped key does not decode")),
        }
    }
}

fn derive(password: &[u8], salt: &[u8; 32], p: KdfParams) -> Result<[u8; 32]> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::corrupt("key file", format!("bad KDF parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::Internal(format!("key derivation failed: {e}")))?;
    Ok(out)
}

/// This machine's name, recorded in key files and locks.
pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap() {
        let mk = MasterKey::generate();
        let kf = KeyFile::create(&mk, b"pw", KdfParams::INSECURE_TEST).unwrap();
        let bytes = kf.encode();
        let kf2 = KeyFile::decode("k", &bytes).unwrap();
        let got = kf2.unwrap_key(b"pw").unwrap().unwrap();
        assert_eq!(got.blob_id(b"x"), mk.blob_id(b"x"));
        assert!(kf2.unwrap_key(b"wrong").unwrap().is_none());
    }

    /// A version 1 file (unauthenticated fields, constant associated
    /// data) as written before issue 12.
    fn legacy(master: &MasterKey, password: &[u8], params: KdfParams) -> KeyFile {
        let mut kf = KeyFile::create(master, password, params).unwrap();
        kf.lifeboat_key_version = 1;
        let kek = derive(password, &kf.kdf.salt, params).unwrap();
        let plain = master.to_json();
        kf.wrapped = hex::encode(seal_with(&kek, &plain, WRAP_AAD_V1));
        kf
    }

    #[test]
    fn new_key_files_are_version_2_and_version_1_files_still_open() {
        let mk = MasterKey::generate();
        let kf = KeyFile::create(&mk, b"pw", KdfParams::INSECURE_TEST).unwrap();
        assert_eq!(kf.lifeboat_key_version, 2);
        assert!(!kf.is_legacy());
        let old =
            KeyFile::decode("k", &legacy(&mk, b"pw", KdfParams::INSECURE_TEST).encode()).unwrap();
        assert!(old.is_legacy());
        let got = old.unwrap_key(b"pw").unwrap().unwrap();
        assert_eq!(got.blob_id(b"x"), mk.blob_id(b"x"));
        // A version 1 file's fields are not bound: editing the host still
        // opens (which is why it is warned about), while a version 2 file
        // refuses.
        let mut edited = old.clone();
        edited.host = "forged".into();
        assert!(edited.unwrap_key(b"pw").unwrap().is_some());
        let mut edited = kf.clone();
        edited.host = "forged".into();
        assert!(edited.unwrap_key(b"pw").unwrap().is_none());
        let mut edited = kf;
        edited.lifeboat_key_version = 1;
        assert!(edited.unwrap_key(b"pw").unwrap().is_none());
    }

    #[test]
    fn a_role_is_version_3_and_bound_into_the_wrap() {
        let mk = MasterKey::generate();
        let kf = KeyFile::create_with_role(&mk, b"pw", KdfParams::INSECURE_TEST, Role::AppendOnly)
            .unwrap();
        assert_eq!(kf.lifeboat_key_version, 3);
        let read = KeyFile::decode("k", &kf.encode()).unwrap();
        assert_eq!(read.role(), Role::AppendOnly);
        assert!(read.unwrap_key(b"pw").unwrap().is_some());
        // Promoting the key by editing its role, or by dropping the field
        // and posing as version 2, breaks it.
        for promoted in [Role::Full, Role::ReadOnly] {
            let mut edited = read.clone();
            edited.role = Some(promoted);
            assert!(edited.unwrap_key(b"pw").unwrap().is_none(), "{promoted}");
        }
        let mut v2 = read.clone();
        v2.role = None;
        v2.lifeboat_key_version = 2;
        assert_eq!(v2.role(), Role::Full);
        assert!(v2.unwrap_key(b"pw").unwrap().is_none());
        // A role outside version 3 (or version 3 without one) is malformed.
        let text = String::from_utf8(read.encode()).unwrap();
        let no_role = text.replace("  \"role\": \"append-only\",\n", "");
        assert_ne!(no_role, text);
        assert!(KeyFile::decode("k", no_role.as_bytes()).is_err());
        let full = KeyFile::create(&mk, b"pw", KdfParams::INSECURE_TEST).unwrap();
        assert_eq!((full.lifeboat_key_version, full.role()), (2, Role::Full));
        assert!(!String::from_utf8(full.encode()).unwrap().contains("role"));
    }

    #[test]
    fn only_debug_builds_read_the_insecure_test_parameters() {
        let kf = KeyFile::create(&MasterKey::generate(), b"pw", KdfParams::INSECURE_TEST).unwrap();
        assert_eq!(
            KeyFile::decode("k", &kf.encode()).is_ok(),
            cfg!(debug_assertions)
        );
        let mut near = KdfParams::INSECURE_TEST;
        near.memory_kib += 8;
        let kf = KeyFile::create(&MasterKey::generate(), b"pw", near).unwrap();
        assert!(KeyFile::decode("k", &kf.encode()).is_err());
    }

    #[test]
    fn write_only_key_files_round_trip_and_their_kind_is_bound() {
        let full = MasterKey::generate();
        let public = full.derived_public().unwrap();
        let wo = full.write_only_key().unwrap();
        let kf = KeyFile::create(&wo, b"pw", KdfParams::INSECURE_TEST).unwrap();
        assert_eq!(kf.kind, KeyKind::WriteOnly);
        let text = String::from_utf8(kf.encode()).unwrap();
        assert!(text.contains(r#""kind": "write-only""#), "{text}");
        let back = KeyFile::decode("k", &kf.encode()).unwrap();
        let got = back.unwrap_key(b"pw").unwrap().unwrap();
        assert!(got.is_write_only());
        assert_eq!(got.blob_id(b"x"), full.blob_id(b"x"));
        got.with_write_only_public(&public).unwrap();
        // Full key files carry no `kind` field at all.
        let f = KeyFile::create(&full, b"pw", KdfParams::INSECURE_TEST).unwrap();
        assert!(!String::from_utf8(f.encode()).unwrap().contains("kind"));
        // Relabelling a write-only file as full (removing the field) is
        // refused before any KDF: its wrapped key has a write-only length.
        let relabelled = text.replace(",\n  \"kind\": \"write-only\"", "");
        assert_ne!(relabelled, text);
        assert!(KeyFile::decode("k", relabelled.as_bytes()).is_err());
        // An unknown kind is refused; a version 1 write-only file too.
        let unknown = text.replace(r#""write-only""#, r#""admin""#);
        assert!(KeyFile::decode("k", unknown.as_bytes()).is_err());
        let v1 = text.replace(
            r#""lifeboat_key_version": 2"#,
            r#""lifeboat_key_version": 1"#,
        );
        assert!(KeyFile::decode("k", v1.as_bytes()).is_err());
        // A flipped bit in the wrapped key does not open.
        let mut bad = back.clone();
        let flip = if bad.wrapped.ends_with('0') { "1" } else { "0" };
        bad.wrapped.replace_range(bad.wrapped.len() - 1.., flip);
        assert!(bad.unwrap_key(b"pw").unwrap().is_none());
    }

    #[test]
    fn truncated_key_file_is_an_error() {
        let kf = KeyFile::create(&MasterKey::generate(), b"pw", KdfParams::INSECURE_TEST).unwrap();
        let bytes = kf.encode();
        for n in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(KeyFile::decode("k", &bytes[..n]).is_err());
        }
    }
}
