//! What this machine remembers about a repository between runs, in
//! lifeboat's cache directory ([`lifeboat_storage::cachedir::cache_root`]): the key
//! file that last opened it (tried first, so a planted key file cannot push
//! the user's own beyond the cap of key files tried) and the snapshot ids
//! seen (a high-water mark: a snapshot that vanishes is warned about, as a
//! rollback of the storage would make it vanish).
//!
//! Everything here is a hint. A missing, unreadable or foreign file is
//! ignored, and failing to write one is logged and ignored: the repository
//! is the truth. A repository is named by the BLAKE3 of its `config`
//! object, which never changes for the life of a repository and needs no
//! key to read. Files are written 0600 in directories made 0700, replaced
//! atomically (write beside, rename).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::Id;

/// Snapshot ids kept in the high-water mark at most (about 65 bytes each):
/// a repository with more keeps the newest listing's first ids only, and
/// the warning covers those.
const MAX_KNOWN_SNAPSHOTS: usize = 100_000;

/// The local state directory of one machine (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalState {
    dir: PathBuf,
}

impl LocalState {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalState { dir: dir.into() }
    }

    /// The cache directory of the process environment, if there is one.
    pub fn from_env() -> Option<Self> {
        lifeboat_storage::cachedir::cache_root().map(Self::new)
    }

    fn repo_dir(&self, config: &[u8]) -> PathBuf {
        self.dir
            .join("repositories")
            .join(Id::of_bytes(config).to_hex())
    }

    pub(crate) fn read(&self, config: &[u8], name: &str) -> Option<String> {
        std::fs::read_to_string(self.repo_dir(config).join(name)).ok()
    }

    pub(crate) fn write(&self, config: &[u8], name: &str, text: &str) {
        let dir = self.repo_dir(config);
        let result = (|| {
            // Tagged as a cache, so backups of a home directory leave it out.
            lifeboat_storage::cachedir::create_cache_dir(&self.dir.join("repositories"))?;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            drop(f);
            std::fs::rename(&tmp, dir.join(name))
        })();
        if let Err(e) = result {
            tracing::debug!("cannot write local state {}/{name}: {e}", dir.display());
        }
    }

    /// The key file that last opened the repository with this config.
    pub(crate) fn key_hint(&self, config: &[u8]) -> Option<Id> {
        Id::from_hex(self.read(config, "key")?.trim())
    }

    pub(crate) fn save_key_hint(&self, config: &[u8], key: Id) {
        if self.key_hint(config) != Some(key) {
            self.write(config, "key", &format!("{}\n", key.to_hex()));
        }
    }

    /// The snapshot ids seen in this repository by earlier runs.
    pub(crate) fn known_snapshots(&self, config: &[u8]) -> BTreeSet<Id> {
        self.read(config, "snapshots")
            .map(|text| text.lines().filter_map(Id::from_hex).collect())
            .unwrap_or_default()
    }

    pub(crate) fn save_known_snapshots(&self, config: &[u8], ids: &BTreeSet<Id>) {
        let mut text = String::with_capacity(ids.len() * 65);
        for id in ids.iter().take(MAX_KNOWN_SNAPSHOTS) {
            text.push_str(&id.to_hex());
            text.push('\n');
        }
        if self.read(config, "snapshots").as_deref() != Some(text.as_str()) {
            self.write(config, "snapshots", &text);
        }
    }
}
