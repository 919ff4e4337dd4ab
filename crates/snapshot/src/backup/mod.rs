//! The archiver: file trees and streams into snapshots, in one repository or
//! in several at once.
//!
//! A source is a *tree* (paths on disk, [`BackupOptions`]) or a *stream*
//! (a reader, [`StreamOptions`]). Both go through one pipeline: open a
//! write session and choose a parent snapshot in every repository, read the
//! source once and store it in every one, then hold the result as a
//! [`PendingBackup`] whose snapshot record is built in one place and written
//! by [`PendingBackup::commit`] with optional connector data (`extra`). The
//! plain entry points ([`backup`], [`backup_stream`] and their `_many`
//! forms) commit at once; the `_pending` ones let a caller (a database
//! connector) look at its tool's exit status and report first.
//!
//! Tree data flow: one walker thread visits the source depth-first in name
//! order and compares each file with the parent snapshot (size, mtime,
//! ctime and inode unchanged → the file's chunk list is reused without
//! reading it); files that must be read go through a bounded queue to a
//! pool of worker threads sized to the cores, which read, chunk (FastCDC,
//! or page-aligned blocks for the files [`BackupOptions::paged`] names),
//! and hand chunks to the [`WriteSession`](lifeboat_repo::WriteSession)
//! (hash, dedup, compress, encrypt, pack, upload). A stream is chunked on
//! one thread and its chunks are stored by a pool of workers sized to the
//! cores (compression is the costly stage). The bounded queues and the
//! session's bounded upload queue keep memory flat whatever the size of
//! the input.
//!
//! Trees are assembled bottom-up as their entries complete: each directory
//! has a pending count, and whichever thread completes its last entry
//! encodes the tree blob and fills the directory's slot in its parent. So no
//! thread waits for a directory, and only directories with unfinished
//! entries are held in memory.
//!
//! Several repositories ([`backup_many`], [`backup_stream_many`]): the
//! source is read once; each repository is a *target* with its own write
//! session, parent snapshot, chunker, blob ids and trees. Every directory
//! entry carries one node per target. Targets whose chunker parameters are
//! equal form a group and share one chunking of each file; when groups
//! differ, the bytes are read once and fanned out to one chunker thread per
//! group. A target whose repository fails (unreachable, full) is dropped
//! from the backup and reported in its own result; the others carry on.
//! Backpressure is shared: the slowest repository sets the pace.
//!
//! Per-file problems (unreadable, vanished, changed while read) are reported
//! through [`BackupProgress::warning`] and counted; an unreadable file makes
//! the snapshot `partial`. Repository errors (storage full, unreachable)
//! stop that repository's backup, and no snapshot record is written there.
//!
//! Modules, one job each:
//!
//! - this one: options, outcomes and the public entry points;
//! - `prepare`: opening a write session and choosing the parent snapshot
//!   in each repository;
//! - `ctx`: the targets and the context every thread of a backup shares
//!   (counters, failures, warnings);
//! - `pending`: the common pipeline skeleton, the snapshot record and
//!   [`PendingBackup`] (commit);
//! - `walk`: the tree source (roots, the walker, the reader pool, the
//!   progress scan);
//! - `node`: an entry's metadata as a tree node (owner names, xattrs);
//! - `read`: reading one file from disk into every target;
//! - `store`: chunking a reader once and storing the chunks in every
//!   target (group fan-out, the parallel chunk workers);
//! - `tree`: bottom-up tree assembly and generated file nodes;
//! - `stream`: the stream source (one file in a one-entry root tree);
//! - `exclude`: exclude patterns and cache directories.

mod ctx;
mod exclude;
mod node;
mod pending;
mod prepare;
mod read;
mod store;
mod stream;
mod tree;
mod walk;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_repo::{BackupMode, Repository, Snapshot};

use crate::Result;
use crate::progress::BackupProgress;

pub use pending::PendingBackup;
pub use stream::EMPTY_STREAM;

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    /// Glob patterns; a pattern without `/` matches a name anywhere, one with
    /// `/` matches the absolute path.
    pub excludes: Vec<String>,
    pub exclude_caches: bool,
    /// Files and directories left out wherever the walk meets them,
    /// identified by device and inode (so a path reached through a symlink
    /// or a bind mount is left out too). The CLI puts the repository, its
    /// cold tier and the password files here, so a backup never stores
    /// the repository into itself. Paths that do not exist are ignored.
    pub exclude_paths: Vec<PathBuf>,
    pub one_file_system: bool,
    pub tags: Vec<String>,
    /// Host recorded in the snapshot (defaults to this machine's name).
    pub host: Option<String>,
    pub mode: BackupMode,
    pub compression_level: Option<i32>,
    /// Worker threads reading files (defaults to the number of cores).
    pub threads: Option<usize>,
    /// Walk the source once up front to report totals (for an ETA).
    pub scan_totals: bool,
    /// Record the snapshot under this source name (its `paths`) instead of
    /// the absolute paths read; the parent snapshot is chosen by it too. For
    /// connectors whose series is a database, not a path.
    pub source: Option<String>,
    /// With exactly one path, a directory: its entries are the snapshot's
    /// root, so a restore puts them straight into the target (a database's
    /// data directory, wherever it lives).
    pub contents_as_root: bool,
    /// The source is a live database directory whose own log repairs what
    /// changes while it is read (PostgreSQL between `pg_backup_start` and
    /// `pg_backup_stop`). Files that vanish are left out and files that
    /// change are kept as read, both without a warning; and a file is
    /// taken unread from the parent snapshot only if it was last modified
    /// more than [`LIVE_REUSE_MARGIN_SECS`] before that snapshot began: a
    /// write in the same clock tick as the parent's read leaves mtime and
    /// size as the parent saw them, and its log record lies before this
    /// backup's start, so nothing would repair it.
    pub live: bool,
    /// Read and count as a backup would, write nothing: no lock, no pack,
    /// no index, no record (the outcome's snapshot is the record that
    /// would have been written).
    pub dry_run: bool,
    /// Files that are arrays of fixed-size pages (a database's relation
    /// files): cut into page-aligned blocks instead of content-defined
    /// chunks, so a changed page changes one block.
    pub paged: Option<PagedFiles>,
}

/// Which files of a tree backup are arrays of pages, and the page size
/// (see [`BackupOptions::paged`]). A matching file is cut into fixed
/// blocks whose size [`lifeboat_repo::paged_block_size`] chooses from the
/// file's size and the size of the paged files of its directory; every
/// other file is cut by content. Restores are unaffected: a file's
/// content list says everything a reader needs.
#[derive(Debug, Clone, Copy)]
pub struct PagedFiles {
    /// Page size in bytes (PostgreSQL: its `block_size`, 8192 unless
    /// compiled otherwise).
    pub page_size: usize,
    /// Whether the file at this absolute path is paged.
    pub matches: fn(&Path) -> bool,
}

/// See [`BackupOptions::live`].
pub const LIVE_REUSE_MARGIN_SECS: i64 = 1;

/// Options of a stream backup (stdin, a database tool's output): the
/// snapshot holds one file.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Name of the single file the stream is stored as (`db.sql`,
    /// `base.tar`); leading and trailing `/` are ignored, any other `/` is
    /// refused.
    pub file_name: String,
    /// Record the snapshot under this source name (its `paths`) instead of
    /// the file name; the parent snapshot is chosen by it too. Snapshots
    /// with the same host and source are one series for
    /// incremental/differential parents and retention.
    pub source: Option<String>,
    pub tags: Vec<String>,
    /// Host recorded in the snapshot (defaults to this machine's name).
    pub host: Option<String>,
    pub mode: BackupMode,
    pub compression_level: Option<i32>,
    /// Worker threads storing chunks (defaults to the number of cores).
    pub threads: Option<usize>,
    /// As [`BackupOptions::dry_run`].
    pub dry_run: bool,
}

/// What a finished backup produced.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub snapshot: Snapshot,
    /// Per-item problems, in the order they happened.
    pub warnings: Vec<String>,
    /// A dry run: `snapshot` is the record that would have been written,
    /// and nothing was.
    pub dry_run: bool,
}

/// Picks the parent snapshot a backup compares with, per its mode.
pub fn choose_parent<'a>(
    all: &'a [Snapshot],
    host: &str,
    paths: &[String],
    mode: BackupMode,
) -> Option<&'a Snapshot> {
    let mut same = all.iter().filter(|s| s.record.same_source(host, paths));
    match mode {
        BackupMode::Full => None,
        BackupMode::Incremental => same.next_back(),
        BackupMode::Differential => same.rfind(|s| s.record.mode == BackupMode::Full),
    }
}

/// Backs up file trees into a new snapshot.
pub async fn backup(
    repo: Arc<Repository>,
    options: &BackupOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<BackupOutcome> {
    only(backup_many(vec![repo], options, progress).await?)
}

/// Backs up file trees like [`backup`] but does not make the snapshot
/// visible: the caller may add files to its root (what is known only
/// after the read, such as a database's backup label) and then
/// [`PendingBackup::commit`]s it with its own connector data. Dropped
/// uncommitted, it leaves only unreferenced blobs, which prune removes.
pub async fn backup_pending(
    repo: Arc<Repository>,
    options: &BackupOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<PendingBackup> {
    only(walk::pending_many(vec![repo], options, progress).await?)
}

/// Backs up file trees into every repository given, reading the source
/// once. Each repository gets its own snapshot (its own parent, key, blob
/// ids and packs). The result holds one outcome per repository, in the
/// order given: a repository that fails (unreachable, full, locked) has its
/// error there and the others still get their snapshot. The outer error is
/// for a request no repository could run (no paths, a bad exclude pattern,
/// a source path that does not exist).
pub async fn backup_many(
    repos: Vec<Arc<Repository>>,
    options: &BackupOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<Vec<Result<BackupOutcome>>> {
    Ok(pending::commit_all(walk::pending_many(repos, options, progress).await?).await)
}

/// Backs up a byte stream (stdin, a dump command's output) as a snapshot
/// holding one file.
pub async fn backup_stream<R: Read + Send + 'static>(
    repo: Arc<Repository>,
    reader: R,
    options: &StreamOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<BackupOutcome> {
    only(backup_stream_many(vec![repo], reader, options, progress).await?)
}

/// Stores a byte stream like [`backup_stream`] but does not make the
/// snapshot visible: a connector first checks that its tool succeeded and
/// reads the tool's report, then [`PendingBackup::commit`]s with its data.
/// Dropped uncommitted, it leaves only unreferenced blobs.
pub async fn backup_stream_pending<R: Read + Send + 'static>(
    repo: Arc<Repository>,
    reader: R,
    options: &StreamOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<PendingBackup> {
    only(stream::pending_many(vec![repo], reader, options, progress).await?)
}

/// Backs up a byte stream into every repository given, reading it once;
/// results as for [`backup_many`].
pub async fn backup_stream_many<R: Read + Send + 'static>(
    repos: Vec<Arc<Repository>>,
    reader: R,
    options: &StreamOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<Vec<Result<BackupOutcome>>> {
    Ok(pending::commit_all(stream::pending_many(repos, reader, options, progress).await?).await)
}

fn only<T>(mut results: Vec<Result<T>>) -> Result<T> {
    results.pop().expect("one repository gives one result")
}

/// This machine's name, recorded in snapshots that do not name a host.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Worker threads for a request: `threads` if given, else one per core.
fn worker_count(threads: Option<usize>) -> usize {
    threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1)
}
