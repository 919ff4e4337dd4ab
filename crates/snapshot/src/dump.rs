//! Reading one file of a snapshot back as a byte stream.
//!
//! [`dump`] streams a file's data blobs, in order, into any [`Write`]r
//! (usually stdout, `lifeboat dump`), reading a few blobs ahead so storage
//! latency overlaps with writing. [`stream_file`] and [`stream_reader`]
//! serve stream snapshots (one file, see
//! [`backup_stream`](crate::backup::backup_stream)) to a consumer that
//! wants a blocking [`Read`]er, such as a database's restore tool. Every
//! blob is verified as it is read. Directories are not dumped (use
//! restore); this module writes no files and sets no metadata.

use std::io::{Read, Write};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lifeboat_repo::{Node, NodeKind, Repository, Snapshot};

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
    repo.require_full_key("dump")?;
    let shown = lossy(&crate::pathmatch::normalize(path));
    let node = match nav::lookup(repo, &snapshot.id.short(), snapshot.record.tree, path).await? {
        Found::Root(_) => None,
        Found::Node(node) => Some(node),
    };
    let node = match node {
        Some(n) if n.kind == NodeKind::File => n,
        Some(n) if n.kind == NodeKind::Symlink => {
            return Err(Error::BadInput(format!(
                "{shown} is a symlink to {}; dump the path it points to instead",
                lossy(n.link_target.as_deref().unwrap_or_default())
            )));
        }
        _ => {
            return Err(Error::BadInput(format!(
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

/// The single file of a stream snapshot: its name and content blobs. A
/// snapshot whose root is not exactly one file is an [`Error::Invalid`].
pub async fn stream_file(repo: &Repository, snapshot: &Snapshot) -> Result<Node> {
    let tree = repo.read_tree(&snapshot.record.tree).await?;
    match tree.nodes.as_slice() {
        [node] if node.kind == NodeKind::File => Ok(node.clone()),
        _ => Err(Error::BadInput(format!(
            "snapshot {} is not a stream snapshot (one file)",
            snapshot.id.short()
        ))),
    }
}

/// Reads a file's content back as a blocking [`Read`]er: a task fetches
/// blobs a few ahead (so storage latency overlaps with the consumer) into
/// a bounded channel. Every blob is verified by the repository as it is
/// read; an error ends the stream with an I/O error carrying the cause.
/// Must be called within a Tokio runtime; read from a blocking thread.
pub fn stream_reader(repo: Arc<Repository>, node: &Node) -> StreamReader {
    // Eight blobs in flight (about 8 MiB at the default chunk size) keep a
    // remote backend busy while memory stays small.
    const PREFETCH: usize = 8;
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<bytes::Bytes>>(PREFETCH);
    let ids = node.content.clone();
    tokio::spawn(async move {
        let mut blobs = futures::stream::iter(ids)
            .map(|id| {
                let repo = repo.clone();
                async move { repo.read_blob(&id).await }
            })
            .buffered(PREFETCH);
        while let Some(b) = blobs.next().await {
            let item = b.map_err(|e| std::io::Error::other(e.to_string()));
            let failed = item.is_err();
            let tx = tx.clone();
            // The channel is bounded and synchronous: send from a blocking
            // thread so a slow consumer does not stall the runtime.
            let sent = tokio::task::spawn_blocking(move || tx.send(item).is_ok())
                .await
                .unwrap_or(false);
            if !sent || failed {
                break;
            }
        }
    });
    StreamReader {
        rx,
        current: bytes::Bytes::new(),
    }
}

/// The consumer side of [`stream_reader`].
pub struct StreamReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.current = b,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
