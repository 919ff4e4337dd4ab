//! The local metadata cache: copies of a repository's index objects,
//! snapshot records, tree packs and audit records on the local disk (the
//! audit records only for appending: `audit verify` and `audit log` read
//! the repository's own), so that commands on
//! object storage (where each request is a round trip, and many are
//! billed) read them once per machine instead of once per command. restic
//! keeps the same three kinds in its cache (restic's design document,
//! "Local Cache"); the differences are in how a copy is trusted and
//! dropped, and the audit records.
//!
//! Why it is safe with several hosts writing the repository:
//! - every cached object is immutable and named by the BLAKE3 hash of its
//!   stored bytes (docs/format.md §3), so a copy can never be stale, only
//!   superseded; every read hashes the copy and compares it with the name
//!   (and with the listed size where there is one): a damaged or planted
//!   file is deleted and the object is fetched again;
//! - what the repository still holds is learned from its listings, never
//!   from the cache: an index object or snapshot record is only read
//!   because the listing names it, and copies whose names the listing no
//!   longer has (a prune or forget on another host) are deleted; cached
//!   tree packs the merged index no longer names are deleted likewise;
//! - the copies are the stored (encrypted) bytes, so the cache holds
//!   nothing the repository does not, and everything read from it is still
//!   decrypted and verified by the same code as a fresh read.
//!
//! It is used only on storage where a request is a round trip
//! (`Capabilities::round_trips`: S3, SFTP); a local repository is its own
//! cache. Errors writing the cache are logged and ignored: the cache can
//! only save requests, never fail a command. Tree packs are bounded by
//! [`MAX_PACK_BYTES`] (least recently used dropped first); index objects
//! snapshot records and audit records are kept while the repository has
//! them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use lifeboat_storage::{Kind, ObjectKey};

use crate::Id;

/// Most bytes of tree packs kept per repository. The trees of a snapshot
/// of ~80,000 files take a few MiB; 1 GiB keeps many snapshots' trees of
/// a large repository.
pub const MAX_PACK_BYTES: u64 = 1 << 30;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the cache off for every repository this process opens from now
/// on (the CLI's `--no-cache`).
pub fn disable_for_process() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// One repository's directory in the cache: `<root>/<repository id>/`
/// with `index/`, `snapshots/` and `packs/` below it.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// The cache of repository `id` under `root`, created if missing.
    /// `None` (with a debug log) when the directory cannot be created, or
    /// when the process turned caching off.
    pub fn open(root: &Path, id: &Id) -> Option<Self> {
        if DISABLED.load(Ordering::Relaxed) {
            return None;
        }
        let dir = root.join(id.to_hex());
        let made = lifeboat_storage::cachedir::create_cache_dir(root).and_then(|()| {
            for sub in ["index", "snapshots", "packs", "audit"] {
                lifeboat_storage::cachedir::create_cache_dir(&dir.join(sub))?;
            }
            Ok(())
        });
        match made {
            Ok(()) => Some(DiskCache { dir }),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "metadata cache not used");
                None
            }
        }
    }

    /// This repository's cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which object kinds are cached, and where.
    fn sub(kind: Kind) -> Option<&'static str> {
        match kind {
            Kind::Index => Some("index"),
            Kind::Snapshots => Some("snapshots"),
            Kind::Packs => Some("packs"),
            Kind::Audit => Some("audit"),
            _ => None,
        }
    }

    /// The hash of the stored bytes an object's name claims: the whole name
    /// for most kinds, the part after the height for audit records. Names
    /// come from listings of storage that an attacker may write: only a
    /// name of this form may become a file name here.
    fn content_id(key: &ObjectKey) -> Option<Id> {
        match key.kind() {
            Kind::Audit => crate::audit::parse_name(key.name()).map(|(_, id)| id),
            _ => Id::from_hex(key.name()),
        }
    }

    fn path(&self, key: &ObjectKey) -> Option<PathBuf> {
        let sub = Self::sub(key.kind())?;
        Self::content_id(key)?;
        Some(self.dir.join(sub).join(key.name()))
    }

    /// The cached copy of `key`, if there is one whose bytes hash to its
    /// name (and whose length is `listed`, when the listing gave one). A
    /// copy that fails the check is deleted.
    pub fn get(&self, key: &ObjectKey, listed: Option<u64>) -> Option<Bytes> {
        let path = self.path(key)?;
        let bytes = std::fs::read(&path).ok()?;
        let fits = listed.is_none_or(|n| n == bytes.len() as u64);
        if !fits || Some(Id::of_bytes(&bytes)) != Self::content_id(key) {
            tracing::warn!(
                path = %path.display(),
                "cached copy of {key} is damaged; deleted, reading the repository's"
            );
            let _ = std::fs::remove_file(&path);
            return None;
        }
        if key.kind() == Kind::Packs {
            // Recently used packs are the last to be dropped.
            let _ = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
        Some(Bytes::from(bytes))
    }

    /// Keeps a copy of `key`'s stored bytes (only when they hash to its
    /// name). Written under a temporary name and renamed.
    pub fn put(&self, key: &ObjectKey, bytes: &[u8]) {
        let Some(path) = self.path(key) else { return };
        if Some(Id::of_bytes(bytes)) != Self::content_id(key) {
            return;
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            key.name(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let result = write_private(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(path = %path.display(), error = %e, "not cached");
        }
    }

    /// Deletes the cached objects of `kind` whose names `live` does not
    /// hold (the repository no longer has them), and leftover temporaries.
    pub fn retain(&self, kind: Kind, live: &HashSet<&str>) {
        let Some(sub) = Self::sub(kind) else { return };
        for (name, path, _) in entries(&self.dir.join(sub)) {
            if !live.contains(name.as_str()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Deletes cached packs `live` says are gone, then the least recently
    /// used ones until at most [`MAX_PACK_BYTES`] remain.
    pub fn retain_packs(&self, live: impl Fn(&Id) -> bool) {
        let mut kept = Vec::new();
        for (name, path, meta) in entries(&self.dir.join("packs")) {
            match Id::from_hex(&name) {
                Some(id) if live(&id) => kept.push((meta, path)),
                _ => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let mut total: u64 = kept.iter().map(|(m, _)| m.len()).sum();
        if total <= MAX_PACK_BYTES {
            return;
        }
        kept.sort_by_key(|(m, _)| m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        for (meta, path) in kept {
            if total <= MAX_PACK_BYTES {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= meta.len();
            }
        }
    }
}

/// Files in `dir` as (name, path, metadata); temporaries older than an
/// hour (a process killed while writing) are deleted on the way.
fn entries(dir: &Path) -> Vec<(String, PathBuf, std::fs::Metadata)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let (Ok(name), Ok(meta)) = (e.file_name().into_string(), e.metadata()) else {
            continue;
        };
        if name.starts_with('.') {
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        if meta.is_file() {
            out.push((name, e.path(), meta));
        }
    }
    out
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
