//! A byte stream into a snapshot holding one file, committed with connector
//! data that is known only after the stream ended.
//!
//! `lifeboat-snapshot`'s `backup_stream` writes the record as soon as the
//! stream ends; a database connector needs to look at the tool's exit status
//! and its report (a base backup's stop LSN) first. So this is split in two:
//! [`write_stream`] chunks and stores the bytes and returns a
//! [`WrittenStream`]; [`WrittenStream::commit`] writes the tree and the
//! record with the caller's `extra`. Dropping a `WrittenStream` without
//! committing leaves only unreferenced blobs, which prune removes: no
//! snapshot is visible unless it is complete.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use lifeboat_repo::{
    BackupMode, BackupSummary, BlobType, Chunker, Id, Node, NodeKind, Repository, Snapshot,
    SnapshotRecord, Tree, WriteOptions, WriteSession,
};
use lifeboat_snapshot::backup::{choose_parent, generated_file_node};

use crate::{Error, Result};

/// What a stream snapshot is and how it relates to earlier ones.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Name of the one file in the snapshot (`base.tar`, `app.pgdump`).
    pub file_name: String,
    /// The source identity recorded in the snapshot (`paths`): snapshots with
    /// the same host and source are one series for incremental/differential
    /// parents and retention.
    pub source: String,
    pub host: String,
    pub tags: Vec<String>,
    pub mode: BackupMode,
    pub compression_level: Option<i32>,
}

/// A stream stored in the repository but not yet visible as a snapshot.
pub struct WrittenStream {
    session: WriteSession,
    options: StreamOptions,
    time: jiff::Timestamp,
    started: Instant,
    size: u64,
    content: Vec<Id>,
    parent: Option<Id>,
    mode: BackupMode,
    any_new: bool,
}

/// Chunks `reader` into the repository (on a blocking thread: the chunker
/// and the reader are synchronous). Memory stays flat: the session's upload
/// queue is bounded.
pub async fn write_stream<R: Read + Send + 'static>(
    repo: Arc<Repository>,
    reader: R,
    options: StreamOptions,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<WrittenStream> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    if options.file_name.is_empty() || options.file_name.contains('/') {
        return Err(Error::Invalid(format!(
            "invalid stream file name {:?}",
            options.file_name
        )));
    }
    let all = repo.snapshots().await?;
    let paths = vec![options.source.clone()];
    let parent = choose_parent(&all, &options.host, &paths, options.mode).map(|s| s.id);
    let mode = if parent.is_some() {
        options.mode
    } else {
        BackupMode::Full
    };
    let session = Arc::new(
        WriteSession::start(
            repo.clone(),
            WriteOptions {
                compression_level: options.compression_level,
            },
        )
        .await?,
    );
    let chunker = Chunker::new(repo.config().chunker);
    let (content, size, any_new) = {
        let session = session.clone();
        tokio::task::spawn_blocking(move || store_chunks(&session, chunker, reader, &on_bytes))
            .await
            .map_err(|e| Error::Invalid(format!("stream task failed: {e}")))??
    };
    let session = Arc::try_unwrap(session)
        .map_err(|_| Error::Invalid("write session still in use".into()))?;
    Ok(WrittenStream {
        session,
        options,
        time,
        started,
        size,
        content,
        parent,
        mode,
        any_new,
    })
}

/// Chunks on this thread and stores the chunks (hash, compress, encrypt)
/// on worker threads, one per core: compression is the costly stage, and a
/// single thread kept a base backup at about 100 MiB/s. Ids are put back
/// in stream order by chunk number; the bounded queue (two chunks per
/// worker) keeps memory flat.
fn store_chunks<R: Read>(
    session: &WriteSession,
    chunker: Chunker,
    reader: R,
    on_bytes: &Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(Vec<Id>, u64, bool)> {
    use std::sync::Mutex;
    use std::sync::mpsc::sync_channel;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(1);
    let (tx, rx) = sync_channel::<(usize, Vec<u8>)>(workers * 2);
    let rx = Mutex::new(rx);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (rx, failed) = (&rx, &failed);
                scope.spawn(move || -> Result<Vec<(usize, Id, bool)>> {
                    let mut out = Vec::new();
                    loop {
                        let next = rx.lock().expect("queue lock").recv();
                        let Ok((n, chunk)) = next else {
                            return Ok(out);
                        };
                        match session.add_blob_blocking(BlobType::Data, &chunk) {
                            Ok(added) => {
                                on_bytes(chunk.len() as u64);
                                out.push((n, added.id, added.new));
                            }
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                                return Err(e.into());
                            }
                        }
                    }
                })
            })
            .collect();
        let mut size = 0u64;
        let mut count = 0usize;
        let mut read_error = None;
        for chunk in chunker.chunks(reader) {
            if failed.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            match chunk {
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    if tx.send((count, chunk)).is_err() {
                        break;
                    }
                    count += 1;
                }
                Err(e) => {
                    read_error = Some(Error::io("<stream>", e));
                    break;
                }
            }
        }
        drop(tx);
        let mut ids: Vec<Option<Id>> = vec![None; count];
        let mut any_new = false;
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(done)) => {
                    for (n, id, new) in done {
                        ids[n] = Some(id);
                        any_new |= new;
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Invalid("a chunk worker panicked".into()));
                }
            }
        }
        if let Some(e) = first_error.or(read_error) {
            return Err(e);
        }
        let content = ids
            .into_iter()
            .map(|id| id.ok_or_else(|| Error::Invalid("a chunk was not stored".into())))
            .collect::<Result<Vec<Id>>>()?;
        Ok((content, size, any_new))
    })
}

impl WrittenStream {
    /// Bytes read from the stream.
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Writes the tree and the snapshot record (last) and returns the stored
    /// snapshot.
    pub async fn commit(self, extra: BTreeMap<String, serde_json::Value>) -> Result<Snapshot> {
        let node = generated_file_node(&self.options.file_name, 0o600, self.size, self.content);
        let tree = Tree { nodes: vec![node] };
        let root = self
            .session
            .add_blob(BlobType::Tree, &tree.encode())
            .await?
            .id;
        let has_parent = self.parent.is_some();
        let summary = BackupSummary {
            files_new: (!has_parent) as u64,
            files_changed: (has_parent && self.any_new) as u64,
            files_unchanged: (has_parent && !self.any_new) as u64,
            read_bytes: self.size,
            total_bytes: self.size,
            total_files: 1,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            ..Default::default()
        };
        let record = SnapshotRecord {
            time: self.time,
            host: self.options.host,
            user: std::env::var("USER").unwrap_or_default(),
            paths: vec![self.options.source],
            tags: self.options.tags,
            tree: root,
            mode: self.mode,
            parent: self.parent,
            partial: false,
            summary,
            program_version: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
            extra,
        };
        let repo = self.session.repository().clone();
        let id = self.session.finish(record).await?;
        Ok(repo.find_snapshot(&id.to_hex()).await?)
    }
}

/// The single file of a stream snapshot: its name and content blobs.
pub async fn stream_file(repo: &Repository, snapshot: &Snapshot) -> Result<Node> {
    let tree = repo.read_tree(&snapshot.record.tree).await?;
    match tree.nodes.as_slice() {
        [node] if node.kind == NodeKind::File => Ok(node.clone()),
        _ => Err(Error::Invalid(format!(
            "snapshot {} is not a stream snapshot (one file)",
            snapshot.id.short()
        ))),
    }
}

/// Reads a stream snapshot's file back as a blocking [`Read`]er: a task
/// fetches blobs a few ahead (so storage latency overlaps with the
/// consumer) into a bounded channel. Every blob is verified by the
/// repository as it is read; an error ends the stream with an I/O error
/// carrying the cause.
pub fn stream_reader(repo: Arc<Repository>, node: &Node) -> ChannelReader {
    use futures::StreamExt;
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
    ChannelReader {
        rx,
        current: bytes::Bytes::new(),
    }
}

/// The consumer side of [`stream_reader`].
pub struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
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
