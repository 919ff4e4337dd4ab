//! The repository config object: a plaintext version header followed by the
//! sealed parameters that must never change for the life of the repository.
//!
//! Layout: `b"LIFEBOAT"` (8) || format version (u32 LE) || sealed JSON body,
//! with the 12 header bytes as associated data so the version cannot be
//! altered without detection.

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::{Error, Id, Result};

pub const MAGIC: &[u8; 8] = b"LIFEBOAT";
/// The newest format version this build reads. Version 2 differs from 1
/// only by the config's `cold` field, and a config is written as version 2
/// only when it has one: a repository without a cold tier stays version 1
/// (readable by older builds), and an older build refuses a repository with
/// a cold tier ("upgrade lifeboat") instead of looking for its data packs in
/// the wrong place. Version 3 differs from 2 only by the `object_lock`
/// field, written only when the repository has one: an older build then
/// refuses the repository ("upgrade lifeboat") instead of pruning it with
/// plain deletes that free nothing on a locked bucket. Version 4 is a
/// repository that takes write-only keys (the `write_only` field, written
/// only at `init --write-only-keys`): its body is sealed under the shared
/// key (which write-only keys hold too), and it holds objects that older
/// builds cannot open, so they refuse it ("upgrade lifeboat").
pub const FORMAT_VERSION: u32 = 4;
/// Version of a config with object lock (and no write-only keys).
const OBJECT_LOCK_VERSION: u32 = 3;
/// Version of a config with a cold tier and no object lock.
const COLD_VERSION: u32 = 2;
/// Version of a config without a cold tier.
const BASE_VERSION: u32 = 1;
const HEADER_LEN: usize = 12;

/// FastCDC parameters, fixed at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// XORed into FastCDC's gear table so that chunk boundaries (and thus
    /// blob sizes visible in pack trailers' lengths) differ per repository.
    pub seed: u64,
}

impl ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB: large enough that per-blob overhead (index
    /// entry, AEAD tag) is negligible, small enough that a one-byte change in a
    /// large file rewrites about one MiB.
    pub fn generate() -> Self {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            seed: u64::from_le_bytes(crate::crypto::os_random()),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        use fastcdc::v2020::*;
        let ok = (MINIMUM_MIN as u32..=MINIMUM_MAX as u32).contains(&self.min_size)
            && (AVERAGE_MIN as u32..=AVERAGE_MAX as u32).contains(&self.avg_size)
            && (MAXIMUM_MIN as u32..=MAXIMUM_MAX as u32).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.min_size.is_multiple_of(2)
            && self.avg_size.is_multiple_of(2)
            && self.max_size.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(crate::Error::corrupt(
                "config",
                "chunker parameters out of range",
            ))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Random id of this repository (distinguishes repositories in messages,
    /// caches and copies).
    pub repository_id: Id,
    pub chunker: ChunkerParams,
    /// zstd level used when a backup does not override it.
    pub compression_level: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    pub created: jiff::Timestamp,
    /// Where the data packs live when they are not in the repository's own
    /// storage (format version 2); absent for a single-tier repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<ColdTierConfig>,
    /// S3 Object Lock retention every object gets (format version 3);
    /// absent for a repository without object lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::objectlock::ObjectLockConfig>,
    /// The repository takes write-only keys (format version 4); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_only: Option<WriteOnlyConfig>,
}

/// A repository that takes write-only keys: the public key everything a
/// write-only key writes is sealed to (docs/format.md §18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteOnlyConfig {
    #[serde(with = "crate::crypto::hex_32")]
    pub public: [u8; 32],
}

/// A repository's cold tier, fixed at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdTierConfig {
    /// The location as the user gave it at init (a path or URL without
    /// secrets); used to open the cold tier unless the user names another
    /// at open time (the same data, reached from another machine).
    pub location: String,
}

impl Config {
    /// The version this config is written as.
    pub fn version(&self) -> u32 {
        if self.write_only.is_some() {
            FORMAT_VERSION
        } else if self.object_lock.is_some() {
            OBJECT_LOCK_VERSION
        } else if self.cold.is_some() {
            COLD_VERSION
        } else {
            BASE_VERSION
        }
    }

    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        let header = header(self.version());
        let body = serde_json::to_vec(self).expect("config serializes");
        let mut out = header.to_vec();
        if self.write_only.is_some() {
            out.extend_from_slice(&key.seal_with_shared(&body, &header));
        } else {
            out.extend_from_slice(&key.seal(&body, &header));
        }
        out
    }

    /// Reads only the plaintext header; refuses unknown versions.
    pub fn check_version(bytes: &[u8]) -> Result<u32> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(Error::corrupt("config", "not a lifeboat repository config"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(Error::corrupt("config", "format version 0"));
        }
        Ok(version)
    }

    pub fn decode(bytes: &[u8], key: &MasterKey) -> Result<Self> {
        let version = Self::check_version(bytes)?;
        let (header, sealed) = bytes.split_at(HEADER_LEN);
        let body = if version == FORMAT_VERSION {
            key.open_with_shared(sealed, header)
        } else {
            key.open(sealed, header)
        }
        .ok_or_else(|| Error::corrupt("config", "authentication failed"))?;
        let config: Config =
            serde_json::from_slice(&body).map_err(|e| Error::corrupt("config", e))?;
        config.chunker.validate()?;
        if !(1..=22).contains(&config.compression_level) && config.compression_level != 0 {
            return Err(Error::corrupt("config", "compression level out of range"));
        }
        if config.pack_size < 1024 * 1024 || config.pack_size > 1024 * 1024 * 1024 {
            return Err(Error::corrupt("config", "pack size out of range"));
        }
        if config.version() != version {
            return Err(Error::corrupt(
                "config",
                "format version does not match the cold tier, object lock and write-only settings",
            ));
        }
        Ok(config)
    }
}

fn header(version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&version.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            repository_id: Id([7; 32]),
            chunker: ChunkerParams::generate(),
            compression_level: 3,
            pack_size: 16 << 20,
            created: jiff::Timestamp::now(),
            cold: None,
            object_lock: None,
            write_only: None,
        }
    }

    #[test]
    fn round_trip_and_newer_version_refused() {
        let k = MasterKey::generate();
        let bytes = sample().encode(&k);
        assert_eq!(Config::decode(&bytes, &k).unwrap().pack_size, 16 << 20);
        let mut newer = bytes.clone();
        newer[8] = 5;
        assert!(matches!(
            Config::decode(&newer, &k),
            Err(Error::UnsupportedVersion { found: 5, .. })
        ));
        let mut damaged = bytes;
        let n = damaged.len() - 1;
        damaged[n] ^= 1;
        assert!(matches!(
            Config::decode(&damaged, &k),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn cold_tier_is_version_2_and_single_tier_stays_version_1() {
        let k = MasterKey::generate();
        let plain = sample().encode(&k);
        assert_eq!(Config::check_version(&plain).unwrap(), 1);
        let body =
            String::from_utf8_lossy(&k.open(&plain[12..], &plain[..12]).unwrap()).to_string();
        assert!(
            !body.contains("cold"),
            "no cold field without a tier: {body}"
        );

        let cold = Config {
            cold: Some(ColdTierConfig {
                location: "/mnt/archive/repo".into(),
            }),
            ..sample()
        };
        let bytes = cold.encode(&k);
        assert_eq!(Config::check_version(&bytes).unwrap(), 2);
        assert_eq!(Config::decode(&bytes, &k).unwrap().cold, cold.cold);
    }

    #[test]
    fn object_lock_is_version_3_and_round_trips() {
        let k = MasterKey::generate();
        let locked = Config {
            object_lock: Some(crate::objectlock::ObjectLockConfig {
                mode: lifeboat_storage::LockMode::Compliance,
                days: 30,
            }),
            ..sample()
        };
        let bytes = locked.encode(&k);
        assert_eq!(Config::check_version(&bytes).unwrap(), 3);
        let body =
            String::from_utf8_lossy(&k.open(&bytes[12..], &bytes[..12]).unwrap()).to_string();
        assert!(
            body.contains(r#""object_lock":{"mode":"compliance","days":30}"#),
            "{body}"
        );
        assert_eq!(
            Config::decode(&bytes, &k).unwrap().object_lock,
            locked.object_lock
        );
    }

    #[test]
    fn write_only_keys_are_version_4_and_write_only_keys_read_it() {
        let k = MasterKey::generate();
        let public = k.derived_public().unwrap();
        let config = Config {
            write_only: Some(WriteOnlyConfig { public }),
            ..sample()
        };
        let bytes = config.encode(&k);
        assert_eq!(Config::check_version(&bytes).unwrap(), 4);
        assert_eq!(
            Config::decode(&bytes, &k).unwrap().write_only,
            config.write_only
        );
        let wo = k.write_only_key().unwrap();
        let got = Config::decode(&bytes, &wo).unwrap();
        assert_eq!(got.chunker, config.chunker);
        // Another repository's key opens neither.
        assert!(Config::decode(&bytes, &MasterKey::generate()).is_err());
        // A version 3 header on a version 4 body is refused.
        let mut lowered = bytes.clone();
        lowered[8] = 3;
        assert!(Config::decode(&lowered, &k).is_err());
    }
}
