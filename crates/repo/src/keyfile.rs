//! Key files: the master key wrapped under a password.
//!
//! A key file is plaintext JSON (it must be readable before anything can be
//! decrypted) holding the Argon2id parameters and salt and the master key
//! sealed under the Argon2id output. Several key files may wrap the same
//! master key (one per person or machine); removing one revokes that password
//! without re-encrypting anything. Each key file is named by the BLAKE3 of its
//! bytes.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::crypto::{MasterKey, hex_32, open_with, seal_with};
use crate::{Error, Result};

/// Associated data of the wrapped master key.
const WRAP_AAD: &[u8] = b"lifeboat key file v1";
/// Upper bounds accepted when reading a key file, so a hostile key file cannot
/// make us allocate 4 TiB or spin for a day.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 64;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane — RFC 9106's second recommended
    /// memory and pass counts (with one lane instead of four, so the cost
    /// does not depend on the cores of the machine that opens the
    /// repository), about a quarter of a second on a current core.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Deliberately weak parameters for test suites only (the CLI accepts them
    /// only through `LIFEBOAT_INSECURE_TEST_KDF=1`).
    pub const INSECURE_TEST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
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
    /// hex of `seal(argon2id(password), master key JSON)`.
    wrapped: String,
}

impl KeyFile {
    pub fn create(master: &MasterKey, password: &[u8], params: KdfParams) -> Result<Self> {
        let salt: [u8; 32] = crate::crypto::os_random();
        let kek = derive(password, &salt, params)?;
        let plain = serde_json::to_vec(master).expect("master key serializes");
        let wrapped = hex::encode(seal_with(&kek, &plain, WRAP_AAD));
        Ok(KeyFile {
            lifeboat_key_version: 1,
            created: jiff::Timestamp::now(),
            host: hostname(),
            user: std::env::var("USER").unwrap_or_default(),
            kdf: KdfRecord {
                algorithm: "argon2id".into(),
                params,
                salt,
            },
            wrapped,
        })
    }

    pub fn decode(object: &str, bytes: &[u8]) -> Result<Self> {
        let kf: KeyFile = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(object, e))?;
        if kf.lifeboat_key_version != 1 || kf.kdf.algorithm != "argon2id" {
            return Err(Error::corrupt(object, "unknown key file version or KDF"));
        }
        let p = kf.kdf.params;
        if p.memory_kib > MAX_MEMORY_KIB
            || p.iterations > MAX_ITERATIONS
            || p.parallelism > MAX_PARALLELISM
        {
            return Err(Error::corrupt(object, "KDF parameters out of range"));
        }
        Ok(kf)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serializes")
    }

    pub fn kdf_params(&self) -> KdfParams {
        self.kdf.params
    }

    /// Unwraps the master key; `Ok(None)` if the password is wrong.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        let kek = derive(password, &self.kdf.salt, self.kdf.params)?;
        let Ok(sealed) = hex::decode(&self.wrapped) else {
            return Err(Error::corrupt("key file", "wrapped key is not hex"));
        };
        match open_with(&kek, &sealed, WRAP_AAD) {
            None => Ok(None),
            Some(plain) => serde_json::from_slice(&plain)
                .map(Some)
                .map_err(|e| Error::corrupt("key file", e)),
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

    #[test]
    fn truncated_key_file_is_an_error() {
        let kf = KeyFile::create(&MasterKey::generate(), b"pw", KdfParams::INSECURE_TEST).unwrap();
        let bytes = kf.encode();
        for n in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(KeyFile::decode("k", &bytes[..n]).is_err());
        }
    }
}
