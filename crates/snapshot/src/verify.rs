//! Verifying a restored tree against its snapshot: every regular file of
//! the snapshot is read back from the target, cut at the snapshot's blob
//! boundaries, and each piece's keyed id compared with the blob id the
//! snapshot records (the same comparison `restore --delta` makes to skip
//! identical files); symlinks are compared by target, directories by
//! existence. Restore drills (`lifeboat-ops`) use it to prove that what
//! landed on disk is what was backed up, not only that the blobs read were
//! sound.
//!
//! It reads the snapshot's trees and the index, never pack data. It does
//! not compare metadata (owners, modes, times): a drill restores as
//! whoever runs it, and what it proves is the data.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lifeboat_repo::{BlobType, Id, NodeKind, Repository, Snapshot};
use serde::Serialize;

use crate::Result;
use crate::ls::{load_trees, lossy, walk_loaded};
use crate::restore::{blocking, same_content};

/// One regular file of the snapshot, as [`verify_restored`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    /// Full snapshot path (`/home/ann/doc.txt`).
    pub path: Vec<u8>,
    pub size: u64,
}

/// What [`verify_restored`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyStats {
    /// Regular files whose restored content matched the snapshot's blobs.
    pub files_verified: u64,
    pub bytes_verified: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// One `path: problem` line per entry that is missing or differs.
    pub problems: Vec<String>,
    /// Every regular file of the snapshot, in walk order (for spot checks
    /// that sample them).
    #[serde(skip)]
    pub files: Vec<VerifiedFile>,
}

/// Where snapshot path `path` was restored under `target`.
pub fn restored_path(target: &Path, path: &[u8]) -> PathBuf {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    target.join(OsStr::from_bytes(rel))
}

/// Compares the tree restored under `target` with `snapshot`. Problems
/// with single entries are listed in [`VerifyStats::problems`]; an error
/// means the snapshot's trees or the index could not be read.
pub async fn verify_restored(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    target: &Path,
) -> Result<VerifyStats> {
    let trees = load_trees(repo, vec![(Vec::new(), snapshot.record.tree)], None).await?;
    let mut stats = VerifyStats::default();
    let mut files: Vec<(Vec<u8>, u64, Vec<Id>)> = Vec::new();
    let mut links: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    walk_loaded(&trees, snapshot.record.tree, &[], &mut |p, n| {
        match n.kind {
            NodeKind::File => files.push((p.to_vec(), n.size, n.content.clone())),
            NodeKind::Dir => {
                stats.dirs += 1;
                if !restored_path(target, p).is_dir() {
                    stats
                        .problems
                        .push(format!("{}: directory missing", lossy(p)));
                }
            }
            NodeKind::Symlink => {
                links.push((p.to_vec(), n.link_target.clone().unwrap_or_default()))
            }
        }
        true
    });
    drop(trees);
    for (p, want) in &links {
        stats.symlinks += 1;
        match std::fs::read_link(restored_path(target, p)) {
            Ok(t) if t.as_os_str().as_bytes() == want.as_slice() => {}
            Ok(_) => stats
                .problems
                .push(format!("{}: symlink target differs", lossy(p))),
            Err(e) => stats.problems.push(format!("{}: {e}", lossy(p))),
        }
    }
    let index = repo.index().await?;
    let key = repo.key().clone();
    let target = target.to_path_buf();
    let (verified, bytes, problems) = blocking(move || {
        // Hashing is CPU-bound: one thread per core, each taking the next
        // file (sizes vary too much for a fixed split).
        let next = AtomicUsize::new(0);
        let verified = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let problems = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(files.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some((p, size, content)) =
                        files.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let path = restored_path(&target, p);
                        let problem = match std::fs::File::open(&path) {
                            Err(e) => Some(format!("{}: {e}", lossy(p))),
                            Ok(f) => match same_content(
                                f,
                                content
                                    .iter()
                                    .map(|id| index.get(BlobType::Data, id).ok_or(*id)),
                                &key,
                            ) {
                                Ok(true) => None,
                                Ok(false) => Some(format!(
                                    "{}: restored content differs from the snapshot",
                                    lossy(p)
                                )),
                                Err(e) => Some(format!("{}: {e}", lossy(p))),
                            },
                        };
                        match problem {
                            None => {
                                verified.fetch_add(1, Ordering::Relaxed);
                                bytes.fetch_add(*size, Ordering::Relaxed);
                            }
                            Some(msg) => problems.lock().expect("not poisoned").push(msg),
                        }
                    }
                });
            }
        });
        let list = files
            .into_iter()
            .map(|(path, size, _)| VerifiedFile { path, size })
            .collect::<Vec<_>>();
        (
            (verified.into_inner(), list),
            bytes.into_inner(),
            problems.into_inner().expect("not poisoned"),
        )
    })
    .await?;
    stats.files_verified = verified.0;
    stats.files = verified.1;
    stats.bytes_verified = bytes;
    stats.problems.extend(problems);
    stats.problems.sort();
    Ok(stats)
}
