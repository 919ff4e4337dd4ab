//! The archiver: file trees and streams into snapshots, in one repository or
//! in several at once.
//!
//! Data flow: one walker thread visits the source depth-first in name order
//! and compares each file with the parent snapshot (size, mtime, ctime and
//! inode unchanged → the file's chunk list is reused without reading it);
//! files that must be read go through a bounded queue to a pool of worker
//! threads sized to the cores, which read, chunk (FastCDC), and hand chunks
//! to the [`WriteSession`] (hash, dedup, compress, encrypt, pack, upload).
//! The bounded queue and the session's bounded upload queue keep memory
//! flat whatever the size of the input.
//!
//! Trees are assembled bottom-up as their entries complete: each directory
//! has a pending count, and whichever thread completes its last entry
//! encodes the tree blob and fills the directory's slot in its parent. So no
//! thread waits for a directory, and only directories with unfinished
//! entries are held in memory.
//!
//! Several repositories ([`backup_many`]): the source is walked and read
//! once; each repository is a *target* with its own write session, parent
//! snapshot, chunker, blob ids and trees. Every directory entry carries one
//! node per target. Targets whose chunker parameters are equal form a group
//! and share one chunking of each file; when groups differ, a file's bytes
//! are read once and fanned out to one chunker thread per group. A target
//! whose repository fails (unreachable, full) is dropped from the backup
//! and reported in its own result; the others carry on. Backpressure is
//! shared: the slowest repository sets the pace.
//!
//! Per-file problems (unreadable, vanished, changed while read) are reported
//! through [`BackupProgress::warning`] and counted; an unreadable file makes
//! the snapshot `partial`. Repository errors (storage full, unreachable)
//! stop that repository's backup, and no snapshot record is written there.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use globset::{Glob, GlobSet, GlobSetBuilder};
use lifeboat_repo::{
    BackupMode, BackupSummary, BlobType, Chunker, Id, Node, NodeKind, Repository, Snapshot,
    SnapshotRecord, Time, Tree, WriteOptions, WriteSession,
};

use crate::progress::BackupProgress;
use crate::{Error, Result};

/// The tag file that marks a cache directory (https://bford.info/cachedir/).
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Block size of the fan-out to chunker groups.
const TEE_BLOCK: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    /// Glob patterns; a pattern without `/` matches a name anywhere, one with
    /// `/` matches the absolute path.
    pub excludes: Vec<String>,
    pub exclude_caches: bool,
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
}

/// See [`BackupOptions::live`].
pub const LIVE_REUSE_MARGIN_SECS: i64 = 1;

/// What a finished backup produced.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub snapshot: Snapshot,
    /// Per-item problems, in the order they happened.
    pub warnings: Vec<String>,
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

/// The mode a snapshot records: an incremental or differential backup that
/// found no parent read everything, so it is recorded as full (as
/// pgBackRest does), and later differential backups can use it.
fn recorded_mode(requested: BackupMode, has_parent: bool) -> BackupMode {
    if has_parent {
        requested
    } else {
        BackupMode::Full
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
    only(pending_many(vec![repo], options, progress).await?)
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
    Ok(commit_all(pending_many(repos, options, progress).await?).await)
}

async fn pending_many(
    repos: Vec<Arc<Repository>>,
    options: &BackupOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<Vec<Result<PendingBackup>>> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    if options.paths.is_empty() {
        return Err(Error::Invalid(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut roots = Vec::new();
    for p in &options.paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let abs = normalize(&abs);
        fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
        roots.push(abs);
    }
    roots.sort();
    roots.dedup();
    if options.contents_as_root
        && (roots.len() != 1 || !fs::metadata(&roots[0]).is_ok_and(|m| m.is_dir()))
    {
        return Err(Error::Invalid(
            "a backup whose root is a directory's contents takes exactly one directory".into(),
        ));
    }
    let paths: Vec<String> = match &options.source {
        Some(source) => vec![source.clone()],
        None => roots
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    };
    let host = options.host.clone().unwrap_or_else(hostname);
    let excludes = build_excludes(&options.excludes)?;

    let (live, parent_trees, mut results) = prepare_all(
        &repos,
        &host,
        &paths,
        options.mode,
        options.compression_level,
        true,
    )
    .await;
    if live.is_empty() {
        return Ok(results.into_iter().map(Option::unwrap).collect());
    }
    let threads = options
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    let root_devs = roots
        .iter()
        .filter_map(|r| fs::symlink_metadata(r).ok().map(|m| m.dev()))
        .collect();
    let (ctx, meta) = Ctx::new(live, progress.clone(), |ctx| {
        ctx.excludes = excludes;
        ctx.exclude_caches = options.exclude_caches;
        ctx.one_file_system = options.one_file_system;
        ctx.root_devs = root_devs;
        ctx.live_source = options.live;
    });
    let ctx = Arc::new(ctx);
    let scanner = if options.scan_totals {
        let roots = roots.clone();
        let ctx = ctx.clone();
        Some(std::thread::spawn(move || scan_totals(&roots, &ctx)))
    } else {
        None
    };
    let walked = {
        let ctx = ctx.clone();
        let contents_as_root = options.contents_as_root;
        tokio::task::spawn_blocking(move || {
            run_walk(&ctx, roots, parent_trees, threads, contents_as_root)
        })
        .await
        .map_err(|e| Error::Invalid(format!("backup task failed: {e}")))
    };
    // The scanner only feeds the progress display: stop it (it checks the
    // flag at every entry) and wait, so it no longer shares the sessions.
    if let Some(scanner) = scanner {
        ctx.cancelled.store(true, Ordering::SeqCst);
        let _ = scanner.join();
    }
    let roots = walked?;
    let base = RecordBase {
        time,
        host,
        paths,
        tags: options.tags.clone(),
    };
    finish_all(ctx, meta, roots, &base, started, &mut results)?;
    Ok(results.into_iter().map(Option::unwrap).collect())
}

fn only<T>(mut results: Vec<Result<T>>) -> Result<T> {
    results.pop().expect("one repository gives one result")
}

/// Commits every pending snapshot (concurrently).
async fn commit_all(pending: Vec<Result<PendingBackup>>) -> Vec<Result<BackupOutcome>> {
    futures::future::join_all(
        pending
            .into_iter()
            .map(|p| async move { p?.commit(Default::default()).await }),
    )
    .await
}

/// A repository ready to take a backup.
struct Prepared {
    /// Position in the caller's list of repositories.
    index: usize,
    session: WriteSession,
    parent: Option<Snapshot>,
    mode: BackupMode,
}

/// What a target's snapshot record needs besides the session.
struct TargetMeta {
    index: usize,
    parent: Option<Snapshot>,
    mode: BackupMode,
}

type Results = Vec<Option<Result<PendingBackup>>>;

/// Opens a write session in every repository (concurrently) and reads each
/// one's parent snapshot. Repositories that fail here get their error in
/// the results and take no part in the backup.
async fn prepare_all(
    repos: &[Arc<Repository>],
    host: &str,
    paths: &[String],
    mode: BackupMode,
    compression_level: Option<i32>,
    with_trees: bool,
) -> (Vec<Prepared>, Vec<Option<Tree>>, Results) {
    let prepared = futures::future::join_all(repos.iter().enumerate().map(|(index, repo)| {
        prepare(
            index,
            repo.clone(),
            host,
            paths,
            mode,
            compression_level,
            with_trees,
        )
    }))
    .await;
    let mut results: Results = repos.iter().map(|_| None).collect();
    let mut live = Vec::new();
    let mut trees = Vec::new();
    for (index, p) in prepared.into_iter().enumerate() {
        match p {
            Ok((p, tree)) => {
                live.push(p);
                trees.push(tree);
            }
            Err(e) => results[index] = Some(Err(e)),
        }
    }
    (live, trees, results)
}

async fn prepare(
    index: usize,
    repo: Arc<Repository>,
    host: &str,
    paths: &[String],
    mode: BackupMode,
    compression_level: Option<i32>,
    with_tree: bool,
) -> Result<(Prepared, Option<Tree>)> {
    // The session's shared lock first: a prune cannot then repack the
    // parent's trees away between choosing the parent and reading it.
    let session = WriteSession::start(repo.clone(), WriteOptions { compression_level }).await?;
    let parent = async {
        let all = repo.snapshots().await?;
        let parent = choose_parent(&all, host, paths, mode).cloned();
        let tree = match &parent {
            Some(p) if with_tree => Some(repo.read_tree(&p.record.tree).await?),
            _ => None,
        };
        Ok::<_, lifeboat_repo::Error>((parent, tree))
    }
    .await;
    let (parent, tree) = match parent {
        Ok(found) => found,
        Err(e) => {
            // Nothing was written: this only releases the lock.
            let _ = session.flush().await;
            return Err(e.into());
        }
    };
    let mode = recorded_mode(mode, parent.is_some());
    Ok((
        Prepared {
            index,
            session,
            parent,
            mode,
        },
        tree,
    ))
}

/// The fields every target's snapshot record shares.
struct RecordBase {
    time: jiff::Timestamp,
    host: String,
    paths: Vec<String>,
    tags: Vec<String>,
}

/// Fills in every target's result: for each surviving target, its
/// snapshot record ready to be committed.
fn finish_all(
    ctx: Arc<Ctx>,
    meta: Vec<TargetMeta>,
    roots: Vec<Option<Id>>,
    base: &RecordBase,
    started: Instant,
    results: &mut Results,
) -> Result<()> {
    let ctx =
        Arc::try_unwrap(ctx).map_err(|_| Error::Invalid("write session still in use".into()))?;
    let warnings = std::mem::take(&mut *ctx.warnings.lock().unwrap());
    for ((target, meta), root) in ctx.targets.into_iter().zip(meta).zip(roots) {
        let failure = target.failure.lock().unwrap().take();
        let root = match (failure, root) {
            (Some(e), _) => {
                results[meta.index] = Some(Err(e));
                continue;
            }
            (None, Some(root)) => root,
            (None, None) => {
                results[meta.index] = Some(Err(Error::Invalid(
                    "backup did not complete its root tree".into(),
                )));
                continue;
            }
        };
        let summary = ctx.counters.summary(started, &target.files);
        let record = SnapshotRecord {
            time: base.time,
            host: base.host.clone(),
            user: std::env::var("USER").unwrap_or_default(),
            paths: base.paths.clone(),
            tags: base.tags.clone(),
            tree: root,
            mode: meta.mode,
            parent: meta.parent.as_ref().map(|p| p.id),
            partial: summary.errors > 0,
            summary,
            program_version: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
            extra: Default::default(),
        };
        results[meta.index] = Some(Ok(PendingBackup {
            session: target.session,
            root: target.root_tree.into_inner().unwrap(),
            record,
            started,
            warnings: warnings.clone(),
        }));
    }
    Ok(())
}

/// A backup whose data and trees are stored but whose snapshot record is
/// not written yet (see [`backup_pending`]).
pub struct PendingBackup {
    session: WriteSession,
    /// The tree `record.tree` names.
    root: Option<Tree>,
    record: SnapshotRecord,
    started: Instant,
    warnings: Vec<String>,
}

impl PendingBackup {
    /// The record [`commit`](Self::commit) will write (its `extra` empty).
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// Per-item problems so far.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Adds a regular file to the snapshot's root directory (replacing an
    /// entry of the same name), its content stored as one blob: meant for
    /// small files such as a database's backup label.
    pub async fn add_root_file(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::Invalid(format!("invalid file name {name:?}")));
        }
        let Some(root) = self.root.as_mut() else {
            return Err(Error::Invalid(
                "the backup's root tree is not at hand".into(),
            ));
        };
        let content = if data.is_empty() {
            Vec::new()
        } else {
            vec![self.session.add_blob(BlobType::Data, data).await?.id]
        };
        let node = generated_file_node(name, mode, data.len() as u64, content);
        root.nodes.retain(|n| n.name != node.name);
        let at = root.nodes.partition_point(|n| n.name < node.name);
        root.nodes.insert(at, node);
        let root = root.encode();
        self.record.tree = self.session.add_blob(BlobType::Tree, &root).await?.id;
        let s = &mut self.record.summary;
        s.files_new += 1;
        s.total_files += 1;
        s.total_bytes += data.len() as u64;
        s.read_bytes += data.len() as u64;
        Ok(())
    }

    /// Writes the snapshot record, with `extra` as its connector data, and
    /// returns the stored snapshot.
    pub async fn commit(self, extra: BTreeMap<String, serde_json::Value>) -> Result<BackupOutcome> {
        let PendingBackup {
            session,
            root: _,
            mut record,
            started,
            warnings,
        } = self;
        let repo = session.repository().clone();
        record.extra = extra;
        record.summary.elapsed_ms = started.elapsed().as_millis() as u64;
        let id = session.finish(record).await?;
        // Read back the record as stored (finish fills in the added-bytes counters).
        let snapshot = repo.find_snapshot(&id.to_hex()).await?;
        Ok(BackupOutcome { snapshot, warnings })
    }
}

/// Options of a stream backup.
#[derive(Debug, Clone, Default)]
pub struct StdinOptions {
    /// Name of the single file the stream is stored as.
    pub filename: String,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub mode: BackupMode,
    pub compression_level: Option<i32>,
}

/// Backs up a byte stream (stdin, a dump command's output) as a snapshot
/// holding one file.
pub async fn backup_stream<R: Read + Send + 'static>(
    repo: Arc<Repository>,
    reader: R,
    options: &StdinOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<BackupOutcome> {
    only(backup_stream_many(vec![repo], reader, options, progress).await?)
}

/// Backs up a byte stream into every repository given, reading it once;
/// results as for [`backup_many`].
pub async fn backup_stream_many<R: Read + Send + 'static>(
    repos: Vec<Arc<Repository>>,
    mut reader: R,
    options: &StdinOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<Vec<Result<BackupOutcome>>> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    let name = options.filename.trim_matches('/').to_string();
    if name.is_empty() || name.contains('/') {
        return Err(Error::Invalid(format!(
            "invalid stream file name {:?}: give a plain name such as db.sql",
            options.filename
        )));
    }
    let host = options.host.clone().unwrap_or_else(hostname);
    let paths = vec![name.clone()];
    let (live, _, mut results) = prepare_all(
        &repos,
        &host,
        &paths,
        options.mode,
        options.compression_level,
        false,
    )
    .await;
    if live.is_empty() {
        return Ok(commit_all(results.into_iter().map(Option::unwrap).collect()).await);
    }
    let (ctx, meta) = Ctx::new(live, progress, |_| {});
    let ctx = Arc::new(ctx);
    let roots = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Option<Id>>> {
            let need = vec![true; ctx.targets.len()];
            let (contents, size) = match store_content(&ctx, &mut reader, &need) {
                Ok(stored) => stored,
                Err(ReadFail::Io(e)) => return Err(Error::io("<stream>", e)),
                Err(ReadFail::Stopped) => (vec![Vec::new(); ctx.targets.len()], 0),
            };
            let c = &ctx.counters;
            c.read_bytes.store(size, Ordering::Relaxed);
            c.total_bytes.store(size, Ordering::Relaxed);
            c.total_files.store(1, Ordering::Relaxed);
            Ok(stream_trees(&ctx, &name, size, contents))
        })
        .await
        .map_err(|e| Error::Invalid(format!("backup task failed: {e}")))??
    };
    let base = RecordBase {
        time,
        host,
        paths,
        tags: options.tags.clone(),
    };
    finish_all(ctx, meta, roots, &base, started, &mut results)?;
    Ok(commit_all(results.into_iter().map(Option::unwrap).collect()).await)
}

/// The node of a file whose content did not come from a file on disk (a
/// stream, a database's backup label): this process's user, mode `mode`,
/// times now.
pub fn generated_file_node(name: &str, mode: u32, size: u64, content: Vec<Id>) -> Node {
    let now = jiff::Timestamp::now();
    let t = Time {
        secs: now.as_second(),
        nanos: now.subsec_nanosecond() as u32,
    };
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: mode & 0o7777,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        user: None,
        group: None,
        mtime: t,
        ctime: t,
        dev: 0,
        inode: 0,
        links: 1,
        size,
        content,
        subtree: None,
        link_target: None,
        xattrs: vec![],
    }
}

/// Stores, in each live target, the one-file tree of a stream backup, and
/// counts the file as new, changed or unchanged there.
fn stream_trees(ctx: &Ctx, name: &str, size: u64, contents: Vec<Vec<Id>>) -> Vec<Option<Id>> {
    let mut roots = Vec::new();
    for (i, (target, content)) in ctx.targets.iter().zip(contents).enumerate() {
        if !ctx.live(i) {
            roots.push(None);
            continue;
        }
        let files = &target.files;
        if !target.has_parent {
            files.new.fetch_add(1, Ordering::Relaxed);
        } else if files.new_blobs.load(Ordering::Relaxed) > 0 {
            files.changed.fetch_add(1, Ordering::Relaxed);
        } else {
            files.unchanged.fetch_add(1, Ordering::Relaxed);
        }
        let node = generated_file_node(name, 0o600, size, content);
        let tree = Tree { nodes: vec![node] };
        match target
            .session
            .add_blob_blocking(BlobType::Tree, &tree.encode())
        {
            Ok(added) => {
                *target.root_tree.lock().unwrap() = Some(tree);
                roots.push(Some(added.id));
            }
            Err(e) => {
                ctx.fail(i, e.into());
                roots.push(None);
            }
        }
    }
    roots
}

// ---------------------------------------------------------------------------
// Targets and the shared context.

/// Counters every target shares (they describe the source).
#[derive(Default)]
struct Counters {
    dirs: AtomicU64,
    files_skipped: AtomicU64,
    errors: AtomicU64,
    read_bytes: AtomicU64,
    total_bytes: AtomicU64,
    total_files: AtomicU64,
}

/// Counters that depend on a target's parent snapshot.
#[derive(Default)]
struct FileCounters {
    new: AtomicU64,
    changed: AtomicU64,
    unchanged: AtomicU64,
    /// Data blobs this target did not have yet.
    new_blobs: AtomicU64,
}

impl Counters {
    fn summary(&self, started: Instant, files: &FileCounters) -> BackupSummary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackupSummary {
            files_new: g(&files.new),
            files_changed: g(&files.changed),
            files_unchanged: g(&files.unchanged),
            dirs: g(&self.dirs),
            files_skipped: g(&self.files_skipped),
            errors: g(&self.errors),
            read_bytes: g(&self.read_bytes),
            total_bytes: g(&self.total_bytes),
            total_files: g(&self.total_files),
            elapsed_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        }
    }
}

/// One repository the backup writes to.
struct Target {
    session: WriteSession,
    chunker: Chunker,
    /// Read every file (a full backup, or no parent snapshot).
    full: bool,
    /// With a live source: files modified at or after this time are read
    /// even when the parent snapshot has them unchanged.
    reuse_before: Option<Time>,
    has_parent: bool,
    files: FileCounters,
    /// The root tree as stored, for [`PendingBackup::add_root_file`]: the
    /// session's blobs cannot be read back before it is finished.
    root_tree: Mutex<Option<Tree>>,
    /// The error that stopped this target.
    failure: Mutex<Option<Error>>,
    dead: AtomicBool,
}

#[derive(Default)]
struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

#[derive(Default)]
struct Ctx {
    targets: Vec<Target>,
    /// Targets with equal chunker parameters: each group chunks a file once.
    groups: Vec<Vec<usize>>,
    /// The smallest chunk any group makes: files below it are one chunk
    /// everywhere and are read whole.
    min_chunk: usize,
    handle: Option<tokio::runtime::Handle>,
    excludes: Option<GlobSet>,
    exclude_caches: bool,
    one_file_system: bool,
    progress: Option<Arc<dyn BackupProgress>>,
    counters: Counters,
    warnings: Mutex<Vec<String>>,
    /// Set when every target has failed (or the progress scan must stop):
    /// the walk and the workers stop.
    cancelled: AtomicBool,
    names: Mutex<NameCache>,
    /// Devices of the backup roots: with `one_file_system`, directories on
    /// any other device are stored empty.
    root_devs: std::collections::HashSet<u64>,
    /// See [`BackupOptions::live`].
    live_source: bool,
}

impl Ctx {
    /// The context for the prepared targets, plus what each target's record
    /// needs at the end; `set` fills in the walk options.
    fn new(
        prepared: Vec<Prepared>,
        progress: Arc<dyn BackupProgress>,
        set: impl FnOnce(&mut Ctx),
    ) -> (Ctx, Vec<TargetMeta>) {
        let mut ctx = Ctx {
            handle: Some(tokio::runtime::Handle::current()),
            progress: Some(progress),
            ..Default::default()
        };
        let mut params = Vec::new();
        let mut meta = Vec::new();
        for p in prepared {
            let chunker_params = p.session.repository().config().chunker;
            let group = match params.iter().position(|q| *q == chunker_params) {
                Some(g) => g,
                None => {
                    params.push(chunker_params);
                    ctx.groups.push(Vec::new());
                    params.len() - 1
                }
            };
            ctx.groups[group].push(ctx.targets.len());
            ctx.targets.push(Target {
                chunker: Chunker::new(chunker_params),
                full: p.mode == BackupMode::Full,
                reuse_before: p.parent.as_ref().map(|parent| Time {
                    secs: parent.record.time.as_second() - LIVE_REUSE_MARGIN_SECS,
                    nanos: 0,
                }),
                has_parent: p.parent.is_some(),
                session: p.session,
                files: FileCounters::default(),
                root_tree: Mutex::new(None),
                failure: Mutex::new(None),
                dead: AtomicBool::new(false),
            });
            meta.push(TargetMeta {
                index: p.index,
                parent: p.parent,
                mode: p.mode,
            });
        }
        ctx.min_chunk = ctx
            .targets
            .iter()
            .map(|t| t.chunker.min_size())
            .min()
            .unwrap_or(0);
        set(&mut ctx);
        if !ctx.live_source {
            for t in &mut ctx.targets {
                t.reuse_before = None;
            }
        }
        (ctx, meta)
    }

    fn progress(&self) -> &dyn BackupProgress {
        self.progress.as_deref().expect("set by Ctx::new")
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.handle.as_ref().expect("set by Ctx::new")
    }

    fn warn(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        self.progress().warning(path, &message);
        self.warnings
            .lock()
            .unwrap()
            .push(format!("{}: {message}", path.display()));
    }

    /// Drops target `t` from the backup with its error; stops everything
    /// when no target is left.
    fn fail(&self, t: usize, e: Error) {
        let target = &self.targets[t];
        {
            let mut f = target.failure.lock().unwrap();
            // Keep the first real cause: "upload task stopped" errors from
            // other threads only echo it.
            let echo = |e: &Error| matches!(e, Error::Repo(lifeboat_repo::Error::Task(_)));
            if f.as_ref().is_none_or(|old| echo(old) && !echo(&e)) {
                *f = Some(e);
            }
        }
        target.dead.store(true, Ordering::SeqCst);
        if self.targets.iter().all(|t| t.dead.load(Ordering::SeqCst)) {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }

    fn live(&self, t: usize) -> bool {
        !self.targets[t].dead.load(Ordering::Relaxed)
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// One copy of `node` per target, each adjusted by `set`.
    fn per_target(&self, node: Node, mut set: impl FnMut(usize, &mut Node)) -> Vec<Node> {
        let n = self.targets.len();
        let mut out = Vec::with_capacity(n);
        for t in 0..n - 1 {
            let mut copy = node.clone();
            set(t, &mut copy);
            out.push(copy);
        }
        let mut last = node;
        set(n - 1, &mut last);
        out.push(last);
        out
    }

    /// A file or directory that vanished while a live source was read: left
    /// out without a warning (the database removed it; its log says so).
    fn vanished(&self, e: &std::io::Error) -> bool {
        self.live_source && e.kind() == std::io::ErrorKind::NotFound
    }

    fn excluded(&self, path: &Path) -> bool {
        let Some(set) = &self.excludes else {
            return false;
        };
        set.is_match(path) || path.file_name().is_some_and(|n| set.is_match(n))
    }

    fn user(&self, uid: u32) -> Option<String> {
        let mut n = self.names.lock().unwrap();
        n.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&self, gid: u32) -> Option<String> {
        let mut n = self.names.lock().unwrap();
        n.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

// ---------------------------------------------------------------------------
// Storing content: one read, every target.

enum ReadFail {
    /// Reading the source failed.
    Io(std::io::Error),
    /// Every target that needed the content has failed (or the backup was
    /// cancelled).
    Stopped,
}

/// Reads `reader` to its end once and stores its chunks in every target
/// marked in `need`. Returns each target's chunk list (empty for targets
/// not needed or failed) and the number of bytes read.
fn store_content(
    ctx: &Ctx,
    reader: &mut (dyn Read + Send),
    need: &[bool],
) -> std::result::Result<(Vec<Vec<Id>>, u64), ReadFail> {
    let groups: Vec<usize> = (0..ctx.groups.len())
        .filter(|g| ctx.groups[*g].iter().any(|t| need[*t]))
        .collect();
    let mut contents = vec![Vec::new(); ctx.targets.len()];
    match groups.as_slice() {
        [] => Err(ReadFail::Stopped),
        [g] => {
            let (stored, size) = chunk_group(ctx, *g, reader, need, true)?;
            for (t, c) in stored {
                contents[t] = c;
            }
            Ok((contents, size))
        }
        _ => {
            let (stored, size) = tee(ctx, &groups, reader, need)?;
            for (t, c) in stored {
                contents[t] = c;
            }
            Ok((contents, size))
        }
    }
}

type GroupContent = Vec<(usize, Vec<Id>)>;

/// Chunks `reader` with group `g`'s chunker and stores each chunk in the
/// group's targets that need it.
fn chunk_group(
    ctx: &Ctx,
    g: usize,
    reader: impl Read,
    need: &[bool],
    count_progress: bool,
) -> std::result::Result<(GroupContent, u64), ReadFail> {
    let members: Vec<usize> = ctx.groups[g].iter().copied().filter(|t| need[*t]).collect();
    let mut stored: GroupContent = members.iter().map(|t| (*t, Vec::new())).collect();
    let mut size = 0u64;
    for chunk in ctx.targets[members[0]].chunker.chunks(reader) {
        if ctx.cancelled() {
            return Err(ReadFail::Stopped);
        }
        let chunk = chunk.map_err(ReadFail::Io)?;
        size += chunk.len() as u64;
        if !store_chunk(ctx, &mut stored, &chunk) {
            return Err(ReadFail::Stopped);
        }
        if count_progress {
            ctx.progress().processed(0, chunk.len() as u64);
        }
    }
    Ok((stored, size))
}

/// Stores one chunk in each live target of `stored`; false when none is
/// left alive.
fn store_chunk(ctx: &Ctx, stored: &mut GroupContent, chunk: &[u8]) -> bool {
    let mut any = false;
    for (t, content) in stored.iter_mut() {
        if !ctx.live(*t) {
            continue;
        }
        match ctx.targets[*t]
            .session
            .add_blob_blocking(BlobType::Data, chunk)
        {
            Ok(added) => {
                if added.new {
                    ctx.targets[*t]
                        .files
                        .new_blobs
                        .fetch_add(1, Ordering::Relaxed);
                }
                content.push(added.id);
                any = true;
            }
            Err(e) => ctx.fail(*t, e.into()),
        }
    }
    any
}

/// Reads `reader` once and feeds every block to one chunker thread per
/// group (the groups chunk differently, so they cannot share chunks).
fn tee(
    ctx: &Ctx,
    groups: &[usize],
    reader: &mut (dyn Read + Send),
    need: &[bool],
) -> std::result::Result<(GroupContent, u64), ReadFail> {
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for (k, g) in groups.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded::<std::io::Result<Arc<[u8]>>>(4);
            senders.push(tx);
            let g = *g;
            workers.push(
                scope.spawn(move || chunk_group(ctx, g, ChannelReader::new(rx), need, k == 0)),
            );
        }
        let mut buf = vec![0u8; TEE_BLOCK];
        let mut read_error = None;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let block: Arc<[u8]> = Arc::from(&buf[..n]);
                    // A group whose targets all failed stops receiving.
                    senders.retain(|tx| tx.send(Ok(block.clone())).is_ok());
                    if senders.is_empty() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    for tx in &senders {
                        let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    }
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(senders);
        let mut stored = Vec::new();
        let mut size = None;
        for w in workers {
            match w.join() {
                Ok(Ok((content, n))) => {
                    stored.extend(content);
                    size = Some(n);
                }
                Ok(Err(ReadFail::Stopped)) => {}
                Ok(Err(ReadFail::Io(e))) => read_error = read_error.or(Some(e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        if let Some(e) = read_error {
            return Err(ReadFail::Io(e));
        }
        size.map(|n| (stored, n)).ok_or(ReadFail::Stopped)
    })
}

/// The reading end of the fan-out: blocks from a channel as a `Read`.
struct ChannelReader {
    rx: crossbeam_channel::Receiver<std::io::Result<Arc<[u8]>>>,
    block: Arc<[u8]>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: crossbeam_channel::Receiver<std::io::Result<Arc<[u8]>>>) -> Self {
        ChannelReader {
            rx,
            block: Arc::from(&[][..]),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.block.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.block = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender is gone: end of input.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.block.len() - self.pos);
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// The walk.

/// A directory whose trees are not written yet.
struct DirState {
    /// Per entry, its node in each target (in target order); `None` once
    /// the entry turned out to be skipped.
    nodes: Vec<Option<Vec<Node>>>,
    /// Entries not yet complete, plus one held by the walker until it has
    /// enumerated the directory.
    remaining: usize,
    /// This directory's own node (None for the snapshot root).
    node: Option<Node>,
    parent: Option<(Arc<Mutex<DirState>>, usize)>,
}

type DirRef = Arc<Mutex<DirState>>;

/// Where the root trees' ids go (one per target; `None` for a target that
/// failed) when the root completes.
type RootSlot = Arc<Mutex<Option<Vec<Option<Id>>>>>;

fn new_dir(node: Option<Node>, parent: Option<(DirRef, usize)>, entries: usize) -> DirRef {
    Arc::new(Mutex::new(DirState {
        nodes: vec![None; entries],
        remaining: entries + 1,
        node,
        parent,
    }))
}

/// Records one entry's nodes (or `None` if skipped) and finishes the
/// directory if it was the last one outstanding.
fn complete(
    ctx: &Ctx,
    dir: &DirRef,
    slot: Option<usize>,
    nodes: Option<Vec<Node>>,
    root: &RootSlot,
) {
    let finished = {
        let mut d = dir.lock().unwrap();
        if let Some(slot) = slot {
            d.nodes[slot] = nodes;
        }
        d.remaining -= 1;
        if d.remaining > 0 {
            return;
        }
        let entries: Vec<Vec<Node>> = std::mem::take(&mut d.nodes).into_iter().flatten().collect();
        (entries, d.node.take(), d.parent.take())
    };
    let (entries, own, parent) = finished;
    let mut per_target: Vec<Vec<Node>> = ctx
        .targets
        .iter()
        .map(|_| Vec::with_capacity(entries.len()))
        .collect();
    for nodes in entries {
        for (t, node) in nodes.into_iter().enumerate() {
            per_target[t].push(node);
        }
    }
    let ids: Vec<Option<Id>> = per_target
        .into_iter()
        .enumerate()
        .map(|(t, nodes)| {
            if !ctx.live(t) {
                return None;
            }
            let tree = Tree { nodes };
            let target = &ctx.targets[t];
            match target
                .session
                .add_blob_blocking(BlobType::Tree, &tree.encode())
            {
                Ok(a) => {
                    if parent.is_none() {
                        *target.root_tree.lock().unwrap() = Some(tree);
                    }
                    Some(a.id)
                }
                Err(e) => {
                    ctx.fail(t, e.into());
                    None
                }
            }
        })
        .collect();
    match parent {
        Some((parent, slot)) => {
            let own = own.expect("a non-root directory has a node");
            let nodes = ctx.per_target(own, |t, n| n.subtree = ids[t]);
            complete(ctx, &parent, Some(slot), Some(nodes), root);
        }
        None => *root.lock().unwrap() = Some(ids),
    }
}

/// Work for the reader pool.
struct FileJob {
    path: PathBuf,
    node: Node,
    meta: Metadata,
    /// Per target, the parent snapshot's chunk list when the file is
    /// unchanged there.
    reuse: Vec<Option<Vec<Id>>>,
    /// Per target, whether the parent snapshot has this file.
    had_parent: Vec<bool>,
    dir: DirRef,
    slot: usize,
}

/// An entry to visit: a real path, or a directory that exists in the
/// snapshot only as an ancestor of a backed-up path.
enum Entry {
    Real(PathBuf),
    Virtual(PathBuf, BTreeMap<Vec<u8>, Entry>),
}

fn run_walk(
    ctx: &Arc<Ctx>,
    roots: Vec<PathBuf>,
    parent_trees: Vec<Option<Tree>>,
    threads: usize,
    contents_as_root: bool,
) -> Vec<Option<Id>> {
    let root_slot: RootSlot = Arc::new(Mutex::new(None));
    let (tx, rx) = crossbeam_channel::bounded::<FileJob>(threads * 4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = rx.clone();
            let root_slot = root_slot.clone();
            scope.spawn(move || {
                for job in rx.iter() {
                    if ctx.cancelled() {
                        continue;
                    }
                    let (dir, slot) = (job.dir.clone(), job.slot);
                    let nodes = read_file(ctx, job);
                    complete(ctx, &dir, Some(slot), nodes, &root_slot);
                }
            });
        }
        drop(rx);
        let walker = Walker {
            ctx,
            tx,
            root: root_slot.clone(),
            prefetch: Mutex::new(HashMap::new()),
        };
        if contents_as_root {
            walker.walk_root_dir(&roots[0], parent_trees);
        } else {
            walker.walk_roots(roots, parent_trees);
        }
        // Dropping the walker closes the queue; the scope joins the workers.
    });
    let roots = root_slot.lock().unwrap().take();
    roots.unwrap_or_else(|| vec![None; ctx.targets.len()])
}

/// A parent-snapshot tree being read ahead of the walk.
type Prefetch = tokio::task::JoinHandle<lifeboat_repo::Result<Tree>>;

struct Walker<'a> {
    ctx: &'a Arc<Ctx>,
    tx: crossbeam_channel::Sender<FileJob>,
    root: RootSlot,
    /// Parent-snapshot trees being fetched ahead of the walk, per target:
    /// when a directory is entered, its subdirectories' old trees are
    /// requested at once, so the walk does not wait for one tree read at a
    /// time. Holds at most the subdirectories of the directories on the
    /// current path.
    prefetch: Mutex<HashMap<(usize, Id), Prefetch>>,
}

impl Walker<'_> {
    fn walk_roots(&self, roots: Vec<PathBuf>, parent_trees: Vec<Option<Tree>>) {
        if roots.iter().any(|r| r == Path::new("/")) {
            self.walk_root_dir(Path::new("/"), parent_trees);
            return;
        }
        // Nest the roots under their ancestors; a root inside another is
        // covered by it.
        let mut top: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        'roots: for root in roots {
            let comps: Vec<&OsStr> = root
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect();
            let mut map = &mut top;
            let mut prefix = PathBuf::from("/");
            for (i, c) in comps.iter().enumerate() {
                prefix.push(c);
                let key = c.as_bytes().to_vec();
                if i + 1 == comps.len() {
                    map.insert(key, Entry::Real(prefix.clone()));
                    continue 'roots;
                }
                let e = map
                    .entry(key)
                    .or_insert_with(|| Entry::Virtual(prefix.clone(), BTreeMap::new()));
                match e {
                    Entry::Virtual(_, children) => map = children,
                    Entry::Real(_) => continue 'roots,
                }
            }
        }
        let dir = new_dir(None, None, top.len());
        self.visit_entries(&dir, top, &parent_trees);
    }

    fn walk_root_dir(&self, path: &Path, parent_trees: Vec<Option<Tree>>) {
        let entries = self.read_dir(path);
        let dir = new_dir(None, None, entries.len());
        self.visit_entries(&dir, entries, &parent_trees);
    }

    fn read_dir(&self, path: &Path) -> BTreeMap<Vec<u8>, Entry> {
        let mut out = BTreeMap::new();
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) if self.ctx.vanished(&e) => return out,
            Err(e) => {
                self.ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.ctx.warn(path, format!("cannot list directory: {e}"));
                return out;
            }
        };
        for entry in rd {
            match entry {
                Ok(e) => {
                    out.insert(e.file_name().as_bytes().to_vec(), Entry::Real(e.path()));
                }
                Err(e) => {
                    self.ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.ctx.warn(path, format!("cannot list directory: {e}"));
                }
            }
        }
        out
    }

    /// Visits a directory's entries, then releases the walker's hold on it.
    /// `parent_trees` holds, per target, the directory's tree in that
    /// target's parent snapshot.
    fn visit_entries(
        &self,
        dir: &DirRef,
        entries: BTreeMap<Vec<u8>, Entry>,
        parent_trees: &[Option<Tree>],
    ) {
        for (t, tree) in parent_trees.iter().enumerate() {
            if let Some(tree) = tree {
                self.prefetch_subtrees(t, tree, &entries);
            }
        }
        for (slot, (name, entry)) in entries.into_iter().enumerate() {
            if self.ctx.cancelled() {
                break;
            }
            let parents: Vec<Option<&Node>> = parent_trees
                .iter()
                .map(|t| t.as_ref().and_then(|t| t.find(&name)))
                .collect();
            let nodes = match entry {
                Entry::Real(path) => self.visit(dir, slot, &name, &path, &parents),
                Entry::Virtual(path, children) => match fs::symlink_metadata(&path) {
                    Ok(meta) => {
                        let node = self.base_node(&name, &path, &meta, NodeKind::Dir, &parents);
                        let child = new_dir(Some(node), Some((dir.clone(), slot)), children.len());
                        let subs = self.parent_subtrees(&parents);
                        self.visit_entries(&child, children, &subs);
                        continue;
                    }
                    Err(e) => {
                        self.ctx.warn(&path, format!("cannot read: {e}"));
                        Some(None)
                    }
                },
            };
            if let Some(nodes) = nodes {
                complete(self.ctx, dir, Some(slot), nodes, &self.root);
            }
        }
        complete(self.ctx, dir, None, None, &self.root);
    }

    /// Starts reading, for target `t`, the parent trees of the directory's
    /// subdirectories that still exist.
    fn prefetch_subtrees(&self, t: usize, tree: &Tree, entries: &BTreeMap<Vec<u8>, Entry>) {
        if !self.ctx.live(t) {
            return;
        }
        let mut prefetch = self.prefetch.lock().unwrap();
        for node in &tree.nodes {
            if node.kind == NodeKind::Dir
                && let Some(id) = node.subtree
                && entries.contains_key(&node.name)
                && !prefetch.contains_key(&(t, id))
            {
                let repo = self.ctx.targets[t].session.repository().clone();
                let task = self
                    .ctx
                    .handle()
                    .spawn(async move { repo.read_tree(&id).await });
                prefetch.insert((t, id), task);
            }
        }
    }

    /// Per target, the parent snapshot's tree of a directory.
    fn parent_subtrees(&self, parents: &[Option<&Node>]) -> Vec<Option<Tree>> {
        parents
            .iter()
            .enumerate()
            .map(|(t, p)| self.parent_subtree(t, *p))
            .collect()
    }

    fn parent_subtree(&self, t: usize, parent_node: Option<&Node>) -> Option<Tree> {
        let id = parent_node.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        let pending = self.prefetch.lock().unwrap().remove(&(t, id));
        if !self.ctx.live(t) {
            return None;
        }
        let repo = self.ctx.targets[t].session.repository().clone();
        let handle = self.ctx.handle();
        let read = match pending {
            Some(task) => handle
                .block_on(task)
                .unwrap_or_else(|e| Err(lifeboat_repo::Error::Task(e.to_string()))),
            None => handle.block_on(repo.read_tree(&id)),
        };
        match read {
            Ok(t) => Some(t),
            Err(e) => {
                self.ctx.warn(
                    Path::new("<parent snapshot>"),
                    format!("cannot read tree {id}: {e}; reading files again"),
                );
                None
            }
        }
    }

    /// Visits one real entry. Returns `Some(nodes_or_none)` when the entry
    /// is complete now, `None` when a worker or a subdirectory will complete
    /// it.
    fn visit(
        &self,
        dir: &DirRef,
        slot: usize,
        name: &[u8],
        path: &Path,
        parents: &[Option<&Node>],
    ) -> Option<Option<Vec<Node>>> {
        let ctx = self.ctx;
        if ctx.excluded(path) {
            return Some(None);
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if ctx.vanished(&e) => return Some(None),
            Err(e) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                ctx.warn(path, format!("cannot read metadata: {e}"));
                return Some(None);
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            ctx.counters.dirs.fetch_add(1, Ordering::Relaxed);
            let node = self.base_node(name, path, &meta, NodeKind::Dir, parents);
            let skip_contents = (ctx.one_file_system && !ctx.root_devs.contains(&meta.dev()))
                || (ctx.exclude_caches && is_cache_dir(path));
            let entries = if skip_contents {
                BTreeMap::new()
            } else {
                self.read_dir(path)
            };
            let child = new_dir(Some(node), Some((dir.clone(), slot)), entries.len());
            let subs = self.parent_subtrees(parents);
            self.visit_entries(&child, entries, &subs);
            None
        } else if ft.is_symlink() {
            let mut node = self.base_node(name, path, &meta, NodeKind::Symlink, parents);
            match fs::read_link(path) {
                Ok(t) => node.link_target = Some(t.as_os_str().as_bytes().to_vec()),
                Err(e) => {
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    ctx.warn(path, format!("cannot read link: {e}"));
                    return Some(None);
                }
            }
            Some(Some(ctx.per_target(node, |_, _| {})))
        } else if ft.is_file() {
            ctx.counters.total_files.fetch_add(1, Ordering::Relaxed);
            ctx.counters
                .total_bytes
                .fetch_add(meta.len(), Ordering::Relaxed);
            let node = self.base_node(name, path, &meta, NodeKind::File, parents);
            let mut reuse: Vec<Option<Vec<Id>>> = ctx
                .targets
                .iter()
                .zip(parents)
                .map(|(target, p)| {
                    let p = p.filter(|_| !target.full)?;
                    let same = p.kind == NodeKind::File
                        && p.size == node.size
                        && p.mtime == node.mtime
                        && p.ctime == node.ctime
                        && p.inode == node.inode
                        && target
                            .reuse_before
                            .is_none_or(|cut| p.mtime < cut && p.ctime < cut)
                        && p.content.iter().all(|id| target.session.has_blob(id));
                    same.then(|| p.content.clone())
                })
                .collect();
            let unchanged_everywhere = reuse
                .iter()
                .enumerate()
                .all(|(t, r)| r.is_some() || !ctx.live(t));
            if unchanged_everywhere {
                for (t, r) in reuse.iter().enumerate() {
                    if r.is_some() {
                        ctx.targets[t]
                            .files
                            .unchanged
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                ctx.progress().processed(1, node.size);
                let nodes = ctx.per_target(node, |t, n| {
                    n.content = reuse[t].take().unwrap_or_default();
                });
                return Some(Some(nodes));
            }
            let job = FileJob {
                path: path.to_path_buf(),
                node,
                meta,
                reuse,
                had_parent: parents.iter().map(Option::is_some).collect(),
                dir: dir.clone(),
                slot,
            };
            if self.tx.send(job).is_err() {
                return Some(None);
            }
            None
        } else {
            let what = if ft.is_fifo() {
                "named pipe"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "device"
            } else {
                "special file"
            };
            ctx.counters.files_skipped.fetch_add(1, Ordering::Relaxed);
            ctx.warn(path, format!("skipped: {what}s are not backed up"));
            Some(None)
        }
    }

    /// The node for an entry, from its metadata. Extended attributes are
    /// read only if the entry's ctime or inode differs from a parent
    /// snapshot's node: setting an xattr updates the ctime, so an unchanged
    /// ctime means unchanged xattrs (and one syscall saved per entry on an
    /// unchanged tree).
    fn base_node(
        &self,
        name: &[u8],
        path: &Path,
        meta: &Metadata,
        kind: NodeKind,
        parents: &[Option<&Node>],
    ) -> Node {
        let ctime = Time {
            secs: meta.ctime(),
            nanos: meta.ctime_nsec() as u32,
        };
        let reuse = self
            .ctx
            .targets
            .iter()
            .zip(parents)
            .find_map(|(target, p)| {
                p.filter(|p| {
                    !target.full && p.kind == kind && p.ctime == ctime && p.inode == meta.ino()
                })
            });
        let xattrs = match reuse {
            Some(p) => p.xattrs.clone(),
            None => read_xattrs(path),
        };
        Node {
            name: name.to_vec(),
            kind: kind.clone(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            user: self.ctx.user(meta.uid()),
            group: self.ctx.group(meta.gid()),
            mtime: Time {
                secs: meta.mtime(),
                nanos: meta.mtime_nsec() as u32,
            },
            ctime,
            dev: meta.dev(),
            inode: meta.ino(),
            links: meta.nlink(),
            size: if kind == NodeKind::File {
                meta.len()
            } else {
                0
            },
            content: vec![],
            subtree: None,
            link_target: None,
            xattrs,
        }
    }
}

/// Reads one file once and stores it in every target that does not have it
/// unchanged; `None` if it could not be read.
fn read_file(ctx: &Ctx, job: FileJob) -> Option<Vec<Node>> {
    let FileJob {
        path,
        node,
        meta,
        mut reuse,
        had_parent,
        ..
    } = job;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
        ctx.warn(&path, format!("{what}: {e}"));
        None
    };
    let need: Vec<bool> = (0..ctx.targets.len())
        .map(|t| reuse[t].is_none() && ctx.live(t))
        .collect();
    let stored = if !need.contains(&true) {
        Err(ReadFail::Stopped)
    } else {
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if ctx.vanished(&e) => return None,
            Err(e) => return fail("cannot open", &e),
        };
        let stored = if meta.len() < ctx.min_chunk as u64 {
            read_small(ctx, &mut file, &meta, &need)
        } else {
            store_content(ctx, &mut file, &need)
        };
        if let Ok((_, size)) = &stored
            && !ctx.live_source
            && let Ok(after) = file.metadata()
            && (after.len() != meta.len()
                || after.mtime() != meta.mtime()
                || after.mtime_nsec() != meta.mtime_nsec()
                || *size != meta.len())
        {
            ctx.warn(
                &path,
                "changed while being read; the snapshot holds what was read",
            );
        }
        stored
    };
    let (mut contents, size) = match stored {
        Ok(s) => {
            ctx.counters.read_bytes.fetch_add(s.1, Ordering::Relaxed);
            s
        }
        Err(ReadFail::Io(e)) => return fail("cannot read", &e),
        // The targets that needed the content failed; those that have it
        // unchanged still record the file.
        Err(ReadFail::Stopped) if !ctx.cancelled() => (vec![Vec::new(); need.len()], meta.len()),
        Err(ReadFail::Stopped) => return None,
    };
    for (t, target) in ctx.targets.iter().enumerate() {
        let files = &target.files;
        if reuse[t].is_some() {
            files.unchanged.fetch_add(1, Ordering::Relaxed);
        } else if !ctx.live(t) {
            // A failed target records nothing.
        } else if had_parent[t] {
            files.changed.fetch_add(1, Ordering::Relaxed);
        } else {
            files.new.fetch_add(1, Ordering::Relaxed);
        }
    }
    ctx.progress().processed(1, 0);
    Some(ctx.per_target(node, |t, n| match reuse[t].take() {
        Some(content) => n.content = content,
        None => {
            n.size = size;
            n.content = if size == 0 {
                Vec::new()
            } else {
                std::mem::take(&mut contents[t])
            };
        }
    }))
}

/// Reads a file smaller than every chunker's minimum whole and stores it as
/// one chunk in each target that needs it.
fn read_small(
    ctx: &Ctx,
    file: &mut File,
    meta: &Metadata,
    need: &[bool],
) -> std::result::Result<(Vec<Vec<Id>>, u64), ReadFail> {
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut buf).map_err(ReadFail::Io)?;
    let mut stored: GroupContent = (0..need.len())
        .filter(|t| need[*t])
        .map(|t| (t, Vec::new()))
        .collect();
    if !buf.is_empty() && !store_chunk(ctx, &mut stored, &buf) {
        return Err(ReadFail::Stopped);
    }
    ctx.progress().processed(0, buf.len() as u64);
    let mut contents = vec![Vec::new(); need.len()];
    for (t, c) in stored {
        contents[t] = c;
    }
    Ok((contents, buf.len() as u64))
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    match xattr::list(path) {
        Ok(names) => names
            .filter_map(|n| {
                let v = xattr::get(path, &n).ok().flatten()?;
                Some((n.as_bytes().to_vec(), v))
            })
            .collect(),
        Err(_) => vec![],
    }
}

fn is_cache_dir(path: &Path) -> bool {
    let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
    File::open(path.join(CACHEDIR_TAG))
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && buf == CACHEDIR_SIGNATURE
}

fn build_excludes(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g =
            Glob::new(p).map_err(|e| Error::Invalid(format!("bad exclude pattern {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::Invalid(format!("bad exclude patterns: {e}")))
}

/// Counts files and bytes for the progress display, without reading data.
fn scan_totals(roots: &[PathBuf], ctx: &Ctx) {
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        if ctx.cancelled() || ctx.excluded(&p) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            ctx.progress().scanned(1, meta.len());
        }
    }
}

/// Removes `.` and resolves `..` lexically (the path is already absolute).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
