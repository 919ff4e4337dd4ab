//! Snapshot records: the last object a backup writes, naming the root tree
//! and describing the backup. Stored as `seal(JSON, SNAPSHOT_AAD)`, named by
//! the BLAKE3 of the sealed bytes; JSON so later fields (a database recovery
//! point, say) can be added without a format break.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::{Error, Id, Result};

pub(crate) const SNAPSHOT_AAD: &[u8] = b"lifeboat snapshot v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackupMode {
    /// Read everything.
    Full,
    /// Compare with the latest snapshot of the same source.
    #[default]
    Incremental,
    /// Compare with the latest full snapshot of the same source.
    Differential,
}

impl std::fmt::Display for BackupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
            BackupMode::Differential => "differential",
        })
    }
}

/// Counters of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupSummary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub files_skipped: u64,
    pub errors: u64,
    /// Plaintext bytes read from the source.
    pub read_bytes: u64,
    /// Total size of the files in the snapshot.
    pub total_bytes: u64,
    pub total_files: u64,
    pub blobs_added: u64,
    /// Plaintext bytes of the new blobs.
    pub added_raw_bytes: u64,
    /// Stored (compressed, encrypted) bytes of the new blobs, without pack
    /// trailers.
    pub added_bytes: u64,
    pub elapsed_ms: u64,
    /// Files that changed while being read (grew, shrank, or a new mtime):
    /// the snapshot holds what was read, at most their size when the read
    /// began. Each is named in the backup's warnings.
    pub files_changed_during_backup: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub time: jiff::Timestamp,
    pub host: String,
    pub user: String,
    /// What was backed up: absolute paths, or the stream name for `--stdin`.
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub tree: Id,
    pub mode: BackupMode,
    pub parent: Option<Id>,
    /// Some files could not be read; the snapshot holds everything else.
    #[serde(default)]
    pub partial: bool,
    pub summary: BackupSummary,
    pub program_version: String,
    /// Connector-specific data (a database recovery point, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Who made the snapshot (absent from records written before it was
    /// kept): what a restore as root decides from whether to trust the
    /// snapshot's owners, set-id bits and `security.*` attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<Creator>,
}

/// Who made a snapshot, as the backing-up process saw itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creator {
    /// Effective uid of the backup process.
    pub uid: u32,
    /// Whether it ran in a user namespace other than the initial one (read
    /// from `/proc/self/uid_map`); `None` where that could not be told. In
    /// a user namespace, uid 0 is not root of the host.
    #[serde(default)]
    pub user_namespace: Option<bool>,
    /// The kernel's host name (whatever `--host` named the snapshot).
    #[serde(default)]
    pub host: String,
    /// The key file that wrote the record (absent from records written
    /// before it was kept). Set by [`crate::Repository::write_snapshot`]
    /// whatever the caller put here; `forget` never lets snapshots written
    /// by a key that is not full count against another key's
    /// (docs/format.md §12.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Id>,
}

impl Creator {
    /// Whether this creator was root of the host: uid 0 outside any user
    /// namespace. Only such a snapshot's owners, set-id bits and
    /// `security.*` attributes are restored by root without asking.
    pub fn is_host_root(&self) -> bool {
        self.uid == 0 && self.user_namespace == Some(false)
    }
}

impl SnapshotRecord {
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        key.seal(
            &serde_json::to_vec(self).expect("snapshot serializes"),
            SNAPSHOT_AAD,
        )
    }

    pub fn decode(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Self> {
        let plain = key
            .open(sealed, SNAPSHOT_AAD)
            .ok_or_else(|| Error::corrupt(object, "authentication failed"))?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(object, e))
    }

    /// Same source: same host and same set of paths.
    pub fn same_source(&self, host: &str, paths: &[String]) -> bool {
        let mut a = self.paths.clone();
        let mut b = paths.to_vec();
        a.sort();
        b.sort();
        self.host == host && a == b
    }
}

/// A snapshot record with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: Id,
    pub record: SnapshotRecord,
}
