//! The archiver: file trees and streams into snapshots.
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
//! Per-file problems (unreadable, vanished, changed while read) are reported
//! through [`BackupProgress::warning`] and counted; an unreadable file makes
//! the snapshot `partial`. Repository errors (storage full, unreachable)
//! stop the backup, and no snapshot record is written.

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
}

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
    let paths: Vec<String> = roots
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let host = options.host.clone().unwrap_or_else(hostname);

    let all = repo.snapshots().await?;
    let parent = choose_parent(&all, &host, &paths, options.mode).cloned();
    let mode = recorded_mode(options.mode, parent.is_some());
    let parent_tree = match &parent {
        Some(p) => Some(repo.read_tree(&p.record.tree).await?),
        None => None,
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
    let excludes = build_excludes(&options.excludes)?;
    let threads = options
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    let ctx = Arc::new(Ctx {
        session: session.clone(),
        handle: tokio::runtime::Handle::current(),
        chunker: Chunker::new(repo.config().chunker),
        excludes,
        exclude_caches: options.exclude_caches,
        one_file_system: options.one_file_system,
        full: mode == BackupMode::Full,
        progress: progress.clone(),
        counters: Counters::default(),
        warnings: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        cancelled: AtomicBool::new(false),
        names: Mutex::new(NameCache::default()),
        root_devs: roots
            .iter()
            .filter_map(|r| fs::symlink_metadata(r).ok().map(|m| m.dev()))
            .collect(),
    });
    let scanner = if options.scan_totals {
        let roots = roots.clone();
        let ctx = ctx.clone();
        Some(std::thread::spawn(move || scan_totals(&roots, &ctx)))
    } else {
        None
    };
    let walked = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || run_walk(&ctx, roots, parent_tree, threads))
            .await
            .map_err(|e| Error::Invalid(format!("backup task failed: {e}")))
    };
    // The scanner only feeds the progress display: stop it (it checks the
    // flag at every entry) and wait, so it no longer shares the session.
    if let Some(scanner) = scanner {
        ctx.cancelled.store(true, Ordering::SeqCst);
        let _ = scanner.join();
    }
    let root_id = walked??;
    let summary = ctx.counters.summary(started);
    let warnings = std::mem::take(&mut *ctx.warnings.lock().unwrap());
    drop(ctx);
    let session = Arc::try_unwrap(session)
        .map_err(|_| Error::Invalid("write session still in use".into()))?;
    let record = SnapshotRecord {
        time,
        host,
        user: std::env::var("USER").unwrap_or_default(),
        paths,
        tags: options.tags.clone(),
        tree: root_id,
        mode,
        parent: parent.as_ref().map(|p| p.id),
        partial: summary.errors > 0,
        summary,
        program_version: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        extra: Default::default(),
    };
    finish(session, record, started, warnings).await
}

async fn finish(
    session: WriteSession,
    mut record: SnapshotRecord,
    started: Instant,
    warnings: Vec<String>,
) -> Result<BackupOutcome> {
    let repo = session.repository().clone();
    record.summary.elapsed_ms = started.elapsed().as_millis() as u64;
    let id = session.finish(record).await?;
    // Read back the record as stored (finish fills in the added-bytes counters).
    let snapshot = repo.find_snapshot(&id.to_hex()).await?;
    Ok(BackupOutcome { snapshot, warnings })
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
    let all = repo.snapshots().await?;
    let parent = choose_parent(&all, &host, &paths, options.mode).map(|s| s.id);
    let mode = recorded_mode(options.mode, parent.is_some());
    let session = WriteSession::start(
        repo.clone(),
        WriteOptions {
            compression_level: options.compression_level,
        },
    )
    .await?;
    let session = Arc::new(session);
    let chunker = Chunker::new(repo.config().chunker);
    let (content, size, new_bytes) = {
        let session = session.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || -> Result<(Vec<Id>, u64, bool)> {
            let mut content = Vec::new();
            let mut size = 0u64;
            let mut any_new = false;
            for chunk in chunker.chunks(reader) {
                let chunk = chunk.map_err(|e| Error::io("<stream>", e))?;
                size += chunk.len() as u64;
                let added = session.add_blob_blocking(BlobType::Data, &chunk)?;
                any_new |= added.new;
                content.push(added.id);
                progress.processed(0, chunk.len() as u64);
            }
            Ok((content, size, any_new))
        })
        .await
        .map_err(|e| Error::Invalid(format!("backup task failed: {e}")))??
    };
    let now = jiff::Timestamp::now();
    let t = Time {
        secs: now.as_second(),
        nanos: now.subsec_nanosecond() as u32,
    };
    let node = Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o600,
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
    };
    let tree = Tree { nodes: vec![node] };
    let root = session.add_blob(BlobType::Tree, &tree.encode()).await?.id;
    let session = Arc::try_unwrap(session)
        .map_err(|_| Error::Invalid("write session still in use".into()))?;
    let summary = BackupSummary {
        files_new: (parent.is_none()) as u64,
        files_changed: (parent.is_some() && new_bytes) as u64,
        files_unchanged: (parent.is_some() && !new_bytes) as u64,
        read_bytes: size,
        total_bytes: size,
        total_files: 1,
        ..Default::default()
    };
    let record = SnapshotRecord {
        time,
        host,
        user: std::env::var("USER").unwrap_or_default(),
        paths,
        tags: options.tags.clone(),
        tree: root,
        mode,
        parent,
        partial: false,
        summary,
        program_version: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        extra: Default::default(),
    };
    finish(session, record, started, vec![]).await
}

// ---------------------------------------------------------------------------
// The walk.

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unchanged: AtomicU64,
    dirs: AtomicU64,
    files_skipped: AtomicU64,
    errors: AtomicU64,
    read_bytes: AtomicU64,
    total_bytes: AtomicU64,
    total_files: AtomicU64,
}

impl Counters {
    fn summary(&self, started: Instant) -> BackupSummary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackupSummary {
            files_new: g(&self.files_new),
            files_changed: g(&self.files_changed),
            files_unchanged: g(&self.files_unchanged),
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

#[derive(Default)]
struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

struct Ctx {
    session: Arc<WriteSession>,
    handle: tokio::runtime::Handle,
    chunker: Chunker,
    excludes: Option<GlobSet>,
    exclude_caches: bool,
    one_file_system: bool,
    full: bool,
    progress: Arc<dyn BackupProgress>,
    counters: Counters,
    warnings: Mutex<Vec<String>>,
    /// The first repository error; set once, stops the walk and the workers.
    fatal: Mutex<Option<Error>>,
    cancelled: AtomicBool,
    names: Mutex<NameCache>,
    /// Devices of the backup roots: with `one_file_system`, directories on
    /// any other device are stored empty.
    root_devs: std::collections::HashSet<u64>,
}

impl Ctx {
    fn warn(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        self.progress.warning(path, &message);
        self.warnings
            .lock()
            .unwrap()
            .push(format!("{}: {message}", path.display()));
    }

    fn fail(&self, e: Error) {
        let mut f = self.fatal.lock().unwrap();
        // Keep the first real cause: "upload task stopped" errors from other
        // threads only echo it.
        let echo = |e: &Error| matches!(e, Error::Repo(lifeboat_repo::Error::Task(_)));
        if f.as_ref().is_none_or(|old| echo(old) && !echo(&e)) {
            *f = Some(e);
        }
        self.cancelled.store(true, Ordering::SeqCst);
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
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

/// A directory whose tree is not written yet.
struct DirState {
    nodes: Vec<Option<Node>>,
    /// Entries not yet complete, plus one held by the walker until it has
    /// enumerated the directory.
    remaining: usize,
    /// This directory's own node (None for the snapshot root).
    node: Option<Node>,
    parent: Option<(Arc<Mutex<DirState>>, usize)>,
}

type DirRef = Arc<Mutex<DirState>>;

/// Where a tree's result goes when the root completes.
type RootSlot = Arc<Mutex<Option<Id>>>;

fn new_dir(node: Option<Node>, parent: Option<(DirRef, usize)>, entries: usize) -> DirRef {
    Arc::new(Mutex::new(DirState {
        nodes: vec![None; entries],
        remaining: entries + 1,
        node,
        parent,
    }))
}

/// Records one entry's node (or `None` if skipped) and finishes the
/// directory if it was the last one outstanding.
fn complete(ctx: &Ctx, dir: &DirRef, slot: Option<usize>, node: Option<Node>, root: &RootSlot) {
    let finished = {
        let mut d = dir.lock().unwrap();
        if let Some(slot) = slot {
            d.nodes[slot] = node;
        }
        d.remaining -= 1;
        if d.remaining > 0 {
            return;
        }
        let nodes: Vec<Node> = std::mem::take(&mut d.nodes).into_iter().flatten().collect();
        (nodes, d.node.take(), d.parent.take())
    };
    let (nodes, own, parent) = finished;
    let tree = Tree { nodes };
    let id = match ctx
        .session
        .add_blob_blocking(BlobType::Tree, &tree.encode())
    {
        Ok(a) => a.id,
        Err(e) => return ctx.fail(e.into()),
    };
    match parent {
        Some((parent, slot)) => {
            let mut own = own.expect("a non-root directory has a node");
            own.subtree = Some(id);
            complete(ctx, &parent, Some(slot), Some(own), root);
        }
        None => *root.lock().unwrap() = Some(id),
    }
}

/// Work for the reader pool.
struct FileJob {
    path: PathBuf,
    node: Node,
    meta: Metadata,
    is_new: bool,
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
    parent_tree: Option<Tree>,
    threads: usize,
) -> Result<Id> {
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
                    let node = read_file(ctx, job);
                    complete(ctx, &dir, Some(slot), node, &root_slot);
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
        walker.walk_roots(roots, parent_tree);
        // Dropping the walker closes the queue; the scope joins the workers.
    });
    if let Some(e) = ctx.fatal.lock().unwrap().take() {
        return Err(e);
    }
    let id = root_slot.lock().unwrap().take();
    id.ok_or_else(|| Error::Invalid("backup did not complete its root tree".into()))
}

struct Walker<'a> {
    ctx: &'a Arc<Ctx>,
    tx: crossbeam_channel::Sender<FileJob>,
    root: RootSlot,
    /// Parent-snapshot trees being fetched ahead of the walk: when a
    /// directory is entered, its subdirectories' old trees are requested
    /// at once, so the walk does not wait for one tree read at a time.
    /// Holds at most the subdirectories of the directories on the current
    /// path.
    prefetch: Mutex<HashMap<Id, tokio::task::JoinHandle<lifeboat_repo::Result<Tree>>>>,
}

impl Walker<'_> {
    fn walk_roots(&self, roots: Vec<PathBuf>, parent_tree: Option<Tree>) {
        if roots.iter().any(|r| r == Path::new("/")) {
            self.walk_root_dir(Path::new("/"), parent_tree);
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
        self.visit_entries(&dir, top, parent_tree.as_ref());
    }

    fn walk_root_dir(&self, path: &Path, parent_tree: Option<Tree>) {
        let entries = self.read_dir(path);
        let dir = new_dir(None, None, entries.len());
        self.visit_entries(&dir, entries, parent_tree.as_ref());
    }

    fn read_dir(&self, path: &Path) -> BTreeMap<Vec<u8>, Entry> {
        let mut out = BTreeMap::new();
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
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
    fn visit_entries(
        &self,
        dir: &DirRef,
        entries: BTreeMap<Vec<u8>, Entry>,
        parent_tree: Option<&Tree>,
    ) {
        if let Some(tree) = parent_tree {
            self.prefetch_subtrees(tree, &entries);
        }
        for (slot, (name, entry)) in entries.into_iter().enumerate() {
            if self.ctx.cancelled() {
                break;
            }
            let parent_node = parent_tree.and_then(|t| t.find(&name));
            let node = match entry {
                Entry::Real(path) => self.visit(dir, slot, &name, &path, parent_node),
                Entry::Virtual(path, children) => match fs::symlink_metadata(&path) {
                    Ok(meta) => {
                        let node = self.base_node(&name, &path, &meta, NodeKind::Dir, parent_node);
                        let child = new_dir(Some(node), Some((dir.clone(), slot)), children.len());
                        let sub = self.parent_subtree(parent_node);
                        self.visit_entries(&child, children, sub.as_ref());
                        continue;
                    }
                    Err(e) => {
                        self.ctx.warn(&path, format!("cannot read: {e}"));
                        None
                    }
                },
            };
            if let Some(node) = node {
                complete(self.ctx, dir, Some(slot), node, &self.root);
            }
        }
        complete(self.ctx, dir, None, None, &self.root);
    }

    /// Loads the parent snapshot's tree for a directory, if it has one.
    fn prefetch_subtrees(&self, tree: &Tree, entries: &BTreeMap<Vec<u8>, Entry>) {
        let mut prefetch = self.prefetch.lock().unwrap();
        for node in &tree.nodes {
            if node.kind == NodeKind::Dir
                && let Some(id) = node.subtree
                && entries.contains_key(&node.name)
                && !prefetch.contains_key(&id)
            {
                let repo = self.ctx.session.repository().clone();
                let task = self
                    .ctx
                    .handle
                    .spawn(async move { repo.read_tree(&id).await });
                prefetch.insert(id, task);
            }
        }
    }

    fn parent_subtree(&self, parent_node: Option<&Node>) -> Option<Tree> {
        let id = parent_node.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        let repo = self.ctx.session.repository().clone();
        let pending = self.prefetch.lock().unwrap().remove(&id);
        let read = match pending {
            Some(task) => self
                .ctx
                .handle
                .block_on(task)
                .unwrap_or_else(|e| Err(lifeboat_repo::Error::Task(e.to_string()))),
            None => self.ctx.handle.block_on(repo.read_tree(&id)),
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

    /// Visits one real entry. Returns `Some(node_or_none)` when the entry is
    /// complete now, `None` when a worker or a subdirectory will complete it.
    fn visit(
        &self,
        dir: &DirRef,
        slot: usize,
        name: &[u8],
        path: &Path,
        parent_node: Option<&Node>,
    ) -> Option<Option<Node>> {
        let ctx = self.ctx;
        if ctx.excluded(path) {
            return Some(None);
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                ctx.warn(path, format!("cannot read metadata: {e}"));
                return Some(None);
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            ctx.counters.dirs.fetch_add(1, Ordering::Relaxed);
            let node = self.base_node(name, path, &meta, NodeKind::Dir, parent_node);
            let skip_contents = (ctx.one_file_system && !ctx.root_devs.contains(&meta.dev()))
                || (ctx.exclude_caches && is_cache_dir(path));
            let entries = if skip_contents {
                BTreeMap::new()
            } else {
                self.read_dir(path)
            };
            let child = new_dir(Some(node), Some((dir.clone(), slot)), entries.len());
            let sub = self.parent_subtree(parent_node);
            self.visit_entries(&child, entries, sub.as_ref());
            None
        } else if ft.is_symlink() {
            let mut node = self.base_node(name, path, &meta, NodeKind::Symlink, parent_node);
            match fs::read_link(path) {
                Ok(t) => node.link_target = Some(t.as_os_str().as_bytes().to_vec()),
                Err(e) => {
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    ctx.warn(path, format!("cannot read link: {e}"));
                    return Some(None);
                }
            }
            Some(Some(node))
        } else if ft.is_file() {
            ctx.counters.total_files.fetch_add(1, Ordering::Relaxed);
            ctx.counters
                .total_bytes
                .fetch_add(meta.len(), Ordering::Relaxed);
            let mut node = self.base_node(name, path, &meta, NodeKind::File, parent_node);
            if let Some(p) = parent_node.filter(|_| !ctx.full)
                && p.kind == NodeKind::File
                && p.size == node.size
                && p.mtime == node.mtime
                && p.ctime == node.ctime
                && p.inode == node.inode
                && p.content.iter().all(|id| ctx.session.has_blob(id))
            {
                node.content = p.content.clone();
                ctx.counters.files_unchanged.fetch_add(1, Ordering::Relaxed);
                ctx.progress.processed(1, node.size);
                return Some(Some(node));
            }
            let job = FileJob {
                path: path.to_path_buf(),
                node,
                meta,
                is_new: parent_node.is_none(),
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
    /// read only if the entry's ctime or inode differs from the parent
    /// snapshot's node: setting an xattr updates the ctime, so an
    /// unchanged ctime means unchanged xattrs (and one syscall saved per
    /// entry on an unchanged tree).
    fn base_node(
        &self,
        name: &[u8],
        path: &Path,
        meta: &Metadata,
        kind: NodeKind,
        parent_node: Option<&Node>,
    ) -> Node {
        let ctime = Time {
            secs: meta.ctime(),
            nanos: meta.ctime_nsec() as u32,
        };
        let reuse = parent_node.filter(|p| {
            !self.ctx.full && p.kind == kind && p.ctime == ctime && p.inode == meta.ino()
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
            ctime: Time {
                secs: meta.ctime(),
                nanos: meta.ctime_nsec() as u32,
            },
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

/// Reads and stores one file; `None` if it could not be read.
fn read_file(ctx: &Ctx, job: FileJob) -> Option<Node> {
    let FileJob {
        path,
        mut node,
        meta,
        is_new,
        ..
    } = job;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
        ctx.warn(&path, format!("{what}: {e}"));
        None
    };
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => return fail("cannot open", &e),
    };
    let mut content = Vec::new();
    let mut size = 0u64;
    // Small files are one chunk: read them whole instead of setting up the
    // chunker's max-size buffer.
    if meta.len() < ctx.chunker.min_size() as u64 {
        let mut buf = Vec::with_capacity(meta.len() as usize);
        if let Err(e) = file.read_to_end(&mut buf) {
            return fail("cannot read", &e);
        }
        if !buf.is_empty() || meta.len() > 0 {
            match store_chunk(ctx, &buf) {
                Ok(id) => content.push(id),
                Err(e) => {
                    ctx.fail(e);
                    return None;
                }
            }
        }
        size = buf.len() as u64;
    } else {
        for chunk in ctx.chunker.chunks(&mut file) {
            if ctx.cancelled() {
                return None;
            }
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return fail("cannot read", &e),
            };
            size += chunk.len() as u64;
            match store_chunk(ctx, &chunk) {
                Ok(id) => content.push(id),
                Err(e) => {
                    ctx.fail(e);
                    return None;
                }
            }
        }
    }
    if size == 0 {
        content.clear();
    }
    ctx.counters.read_bytes.fetch_add(size, Ordering::Relaxed);
    if let Ok(after) = file.metadata()
        && (after.len() != meta.len()
            || after.mtime() != meta.mtime()
            || after.mtime_nsec() != meta.mtime_nsec()
            || size != meta.len())
    {
        ctx.warn(
            &path,
            "changed while being read; the snapshot holds what was read",
        );
    }
    node.size = size;
    node.content = content;
    if is_new {
        ctx.counters.files_new.fetch_add(1, Ordering::Relaxed);
    } else {
        ctx.counters.files_changed.fetch_add(1, Ordering::Relaxed);
    }
    ctx.progress.processed(1, 0);
    Some(node)
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

fn store_chunk(ctx: &Ctx, data: &[u8]) -> Result<Id> {
    let added = ctx.session.add_blob_blocking(BlobType::Data, data)?;
    ctx.progress.processed(0, data.len() as u64);
    Ok(added.id)
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
            ctx.progress.scanned(1, meta.len());
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
