//! Writing one file of a snapshot to a byte stream (`lifeboat dump`).
//!
//! [`dump`] streams a file's data blobs, in order, into any [`Write`]r
//! (usually stdout), reading a few blobs ahead so storage latency overlaps
//! with writing. Every blob is verified as it is read. Directories are not
//! dumped (use restore); this module writes no files and sets no metadata.

use std::io::Write;

use futures::{StreamExt, TryStreamExt};
use lifeboat_repo::{NodeKind, Repository, Snapshot};

use crate::ls::lossy;
use crate::nav::{self, Found};
use crate::{Error, Result};

/// Blobs read ahead of the one being written. Four keeps a remote backend
/// busy (about 4 MiB in flight at the default chunk size) while holding
/// memory to a handful of chunks.
const PREFETCH_BLOBS: usize = 4;

/// Writes the content of the file at `path` in `snapshot` to `out`; returns
/// the number of bytes written. `out` is flushed at the end. A directory or
/// a symlink is an [`Error::Invalid`]; a damaged blob is a repository error
/// naming the blob and its pack.
pub async fn dump(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &[u8],
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let shown = lossy(&crate::pathmatch::normalize(path));
    let node = match nav::lookup(repo, &snapshot.id.short(), snapshot.record.tree, path).await? {
        Found::Root(_) => None,
        Found::Node(node) => Some(node),
    };
    let node = match node {
        Some(n) if n.kind == NodeKind::File => n,
        Some(n) if n.kind == NodeKind::Symlink => {
            return Err(Error::Invalid(format!(
                "{shown} is a symlink to {}; dump the path it points to instead",
                lossy(n.link_target.as_deref().unwrap_or_default())
            )));
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{shown} is a directory; dump writes one file, use `lifeboat restore` for directories"
            )));
        }
    };
    let mut blobs = futures::stream::iter(node.content.iter())
        .map(|id| repo.read_blob(id))
        .buffered(PREFETCH_BLOBS)
        .map_err(Error::from);
    let mut written = 0u64;
    let io_err = |e| Error::io("<output>", e);
    while let Some(data) = blobs.try_next().await? {
        out.write_all(&data).map_err(io_err)?;
        written += data.len() as u64;
    }
    out.flush().map_err(io_err)?;
    Ok(written)
}
