//! The tree source: paths on disk walked into snapshots.
//!
//! [`pending_many`] resolves the roots (absolute, normalized, existing),
//! the source name and the excludes, then runs the shared pipeline with the
//! walk as its read step. One walker thread visits the source depth-first
//! in name order, compares each entry with every target's parent snapshot
//! (reading the parent trees a directory ahead), completes what needs no
//! reading (directories, symlinks, unchanged files) and queues the rest as
//! [`FileJob`]s for a pool of reader threads. An optional scanner thread
//! counts totals for the progress display. This module decides what is
//! visited and reused; reading content is `read`'s job, writing trees
//! `tree`'s.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lifeboat_repo::{BlobType, Cut, Id, Node, NodeKind, Repository, Tree, paged_block_size};

use super::ctx::Ctx;
use super::exclude::{Excludes, is_cache_dir};
use super::node::base_node;
use super::pending::{self, PendingBackup, Request};
use super::read::read_file;
use super::tree::{DirRef, RootSlot, complete, new_dir};
use super::{BackupOptions, hostname, worker_count};
use crate::progress::BackupProgress;
use crate::{Error, Result};

/// Backs up the trees `options` names into every repository, up to the
/// pending snapshots.
pub(crate) async fn pending_many(
    repos: Vec<Arc<Repository>>,
    options: &BackupOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<Vec<Result<PendingBackup>>> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    if options.paths.is_empty() {
        return Err(Error::BadInput(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut roots = Vec::new();
    for p in &options.paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let abs = crate::pathmatch::normalize_fs(&abs);
        let meta = fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
        // `link_to_dir/` names the directory the link points to (POSIX
        // path resolution; tar and rsync read it so): back that up, under
        // its real path, instead of the link alone.
        let abs = if p.as_os_str().as_bytes().ends_with(b"/")
            && meta.file_type().is_symlink()
            && fs::metadata(&abs).is_ok_and(|m| m.is_dir())
        {
            fs::canonicalize(&abs).map_err(|e| Error::io(&abs, e))?
        } else {
            abs
        };
        roots.push(abs);
    }
    roots.sort();
    roots.dedup();
    if options.contents_as_root
        && (roots.len() != 1 || !fs::metadata(&roots[0]).is_ok_and(|m| m.is_dir()))
    {
        return Err(Error::BadInput(
            "a backup whose root is a directory's contents takes exactly one directory".into(),
        ));
    }
    let paths: Vec<String> = match &options.source {
        Some(source) => vec![source.clone()],
        None => roots
            .iter()
            .map(|p| crate::printable(p.as_os_str().as_bytes()))
            .collect(),
    };
    let excludes = Excludes::build(&options.excludes)?;
    let request = Request {
        started,
        time,
        host: options.host.clone().unwrap_or_else(hostname),
        paths,
        tags: options.tags.clone(),
        mode: options.mode,
        write: lifeboat_repo::WriteOptions {
            compression_level: options.compression_level,
            dry_run: options.dry_run,
        },
        parent_trees: true,
    };
    let threads = worker_count(options.threads);
    let root_devs = roots
        .iter()
        .filter_map(|r| fs::symlink_metadata(r).ok().map(|m| m.dev()))
        .collect();
    let excluded_ids = options
        .exclude_paths
        .iter()
        .filter_map(|p| fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
        .collect();
    let scan = options.scan_totals;
    let contents_as_root = options.contents_as_root;
    let set = |ctx: &mut Ctx| {
        ctx.excluded_ids = excluded_ids;
        ctx.excludes = excludes;
        ctx.exclude_caches = options.exclude_caches;
        ctx.one_file_system = options.one_file_system;
        ctx.root_devs = root_devs;
        ctx.live_source = options.live;
        ctx.paged = options.paged;
        ctx.readers = threads;
    };
    pending::run(repos, request, progress, set, move |ctx, parent_trees| {
        let scanner = scan.then(|| {
            let roots = roots.clone();
            let ctx = ctx.clone();
            std::thread::spawn(move || scan_totals(&roots, &ctx))
        });
        let walked = run_walk(ctx, roots, parent_trees, threads, contents_as_root);
        // The scanner only feeds the progress display: stop it (it checks
        // the flag at every entry) and wait, so it no longer shares the
        // sessions.
        if let Some(scanner) = scanner {
            ctx.cancelled.store(true, Ordering::SeqCst);
            let _ = scanner.join();
        }
        Ok(walked)
    })
    .await
}

/// Counts files and bytes for the progress display, without reading data.
fn scan_totals(roots: &[PathBuf], ctx: &Ctx) {
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        if ctx.cancelled() || ctx.excludes.matches(&p) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if ctx.excluded_ids.contains(&(meta.dev(), meta.ino())) {
            continue;
        }
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            ctx.progress().scanned(1, meta.len());
        }
    }
}

/// Work for the reader pool.
pub(crate) struct FileJob {
    pub(crate) path: PathBuf,
    pub(crate) node: Node,
    pub(crate) meta: Metadata,
    /// Per target, the parent snapshot's chunk list when the file is
    /// unchanged there.
    pub(crate) reuse: Vec<Option<Vec<Id>>>,
    /// Per target, whether the parent snapshot has this file.
    pub(crate) had_parent: Vec<bool>,
    pub(crate) dir: DirRef,
    pub(crate) slot: usize,
    /// How the file is cut: page-aligned blocks for a paged file
    /// ([`Ctx::paged`]), by content otherwise.
    pub(crate) cut: Cut,
}

/// An entry to visit: a real path, or a directory that exists in the
/// snapshot only as an ancestor of a backed-up path.
enum Entry {
    Real(PathBuf),
    Virtual(PathBuf, BTreeMap<Vec<u8>, Entry>),
}

/// Walks `roots` with a pool of `threads` readers and returns each
/// target's root tree id (`None` where the target failed).
fn run_walk(
    ctx: &Arc<Ctx>,
    roots: Vec<PathBuf>,
    parent_trees: Vec<Option<Tree>>,
    threads: usize,
    contents_as_root: bool,
) -> Vec<Option<Id>> {
    let root_slot: RootSlot = Arc::new(Mutex::new(None));
    let (tx, rx) = crossbeam_channel::bounded::<Vec<FileJob>>(threads * 4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = rx.clone();
            let root_slot = root_slot.clone();
            scope.spawn(move || {
                for job in rx.iter().flatten() {
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
            batch: std::cell::RefCell::new(Batch::default()),
            root: root_slot.clone(),
            prefetch: Mutex::new(HashMap::new()),
        };
        if contents_as_root {
            walker.walk_root_dir(&roots[0], parent_trees);
        } else {
            walker.walk_roots(roots, parent_trees);
        }
        walker.flush();
        // Dropping the walker closes the queue; the scope joins the workers.
    });
    let roots = root_slot.lock().unwrap().take();
    roots.unwrap_or_else(|| vec![None; ctx.targets.len()])
}

/// Files handed to a reader at once: up to this many, or
/// [`BATCH_BYTES`] of them. One hand-over per small file cost a thread
/// wake-up each, which on a busy machine waits for a time slice: 1M files
/// of 56 bytes took 101-118 s where restic took 45-54 s (docs/performance.md,
/// "Many files in one snapshot").
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 1 << 20;

/// Files the walker has queued but not yet handed to the readers.
#[derive(Default)]
struct Batch {
    jobs: Vec<FileJob>,
    bytes: u64,
}

/// Parent trees read ahead per directory on the walk's path (see
/// [`Walker::prefetch`]).
const PREFETCH_PER_DIR: usize = 16;

/// A parent-snapshot tree being read ahead of the walk.
type Prefetch = tokio::task::JoinHandle<lifeboat_repo::Result<Tree>>;

struct Walker<'a> {
    ctx: &'a Arc<Ctx>,
    tx: crossbeam_channel::Sender<Vec<FileJob>>,
    /// Files waiting to be handed to the readers together (see [`Batch`]).
    batch: std::cell::RefCell<Batch>,
    root: RootSlot,
    /// Parent-snapshot trees being fetched ahead of the walk, per target:
    /// while a directory's entries are visited, the old trees of its next
    /// [`PREFETCH_PER_DIR`] subdirectories are being read, so the walk does
    /// not wait for one tree read at a time. Holds at most that many trees
    /// per directory on the current path (not every subdirectory's: a
    /// directory of 100,000 subdirectories would hold the whole snapshot).
    prefetch: Mutex<HashMap<(usize, Id), Prefetch>>,
}

impl Walker<'_> {
    /// Queues a file for the readers; hands the batch over when it is full.
    /// False once the readers are gone.
    fn queue(&self, job: FileJob) -> bool {
        let full = {
            let mut b = self.batch.borrow_mut();
            b.bytes += job.meta.len();
            b.jobs.push(job);
            b.jobs.len() >= BATCH_FILES || b.bytes >= BATCH_BYTES
        };
        !full || self.flush()
    }

    /// Hands the queued files to the readers. False once they are gone.
    fn flush(&self) -> bool {
        let jobs = std::mem::take(&mut *self.batch.borrow_mut()).jobs;
        jobs.is_empty() || self.tx.send(jobs).is_ok()
    }

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
        let upcoming = self.subtrees_to_prefetch(parent_trees, &entries);
        let mut started = 0;
        let paged_bytes = self.paged_bytes(&entries);
        for (slot, (name, entry)) in entries.into_iter().enumerate() {
            if self.ctx.cancelled() {
                break;
            }
            // Keep the next PREFETCH_PER_DIR subdirectories' old trees coming.
            let from = upcoming.partition_point(|(s, _, _)| *s < slot);
            while started < upcoming.len() && started < from + PREFETCH_PER_DIR {
                let (_, t, id) = upcoming[started];
                self.prefetch_tree(t, id);
                started += 1;
            }
            let parents: Vec<Option<&Node>> = parent_trees
                .iter()
                .map(|t| t.as_ref().and_then(|t| t.find(&name)))
                .collect();
            let nodes = match entry {
                Entry::Real(path) => self.visit(dir, slot, &name, &path, &parents, paged_bytes),
                Entry::Virtual(path, children) => match fs::symlink_metadata(&path) {
                    Ok(meta) => {
                        let node =
                            base_node(self.ctx, &name, &path, &meta, NodeKind::Dir, &parents);
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

    /// The bytes of a directory's paged files ([`Ctx::paged`]), which bound
    /// their block size so the directory's tree stays small; 0 when
    /// nothing is paged. One more `lstat` per paged file.
    fn paged_bytes(&self, entries: &BTreeMap<Vec<u8>, Entry>) -> u64 {
        let Some(paged) = self.ctx.paged else {
            return 0;
        };
        entries
            .values()
            .filter_map(|e| match e {
                Entry::Real(path) if (paged.matches)(path) => fs::symlink_metadata(path)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len()),
                _ => None,
            })
            .sum()
    }

    /// The parent trees of the directory's subdirectories that still exist,
    /// in visiting order: (entry slot, target, tree id).
    fn subtrees_to_prefetch(
        &self,
        parent_trees: &[Option<Tree>],
        entries: &BTreeMap<Vec<u8>, Entry>,
    ) -> Vec<(usize, usize, Id)> {
        let mut out = Vec::new();
        if parent_trees.iter().all(Option::is_none) {
            return out;
        }
        for (slot, name) in entries.keys().enumerate() {
            for (t, tree) in parent_trees.iter().enumerate() {
                if let Some(node) = tree.as_ref().and_then(|tree| tree.find(name))
                    && node.kind == NodeKind::Dir
                    && let Some(id) = node.subtree
                {
                    out.push((slot, t, id));
                }
            }
        }
        out
    }

    /// Starts reading target `t`'s parent tree `id`, unless it is already
    /// being read.
    fn prefetch_tree(&self, t: usize, id: Id) {
        if !self.ctx.live(t) {
            return;
        }
        let mut prefetch = self.prefetch.lock().unwrap();
        if !prefetch.contains_key(&(t, id)) {
            let repo = self.ctx.targets[t].session.repository().clone();
            let task = self
                .ctx
                .handle()
                .spawn(async move { repo.read_tree(&id).await });
            prefetch.insert((t, id), task);
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
                .unwrap_or_else(|e| Err(lifeboat_repo::Error::Internal(e.to_string()))),
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
        paged_bytes: u64,
    ) -> Option<Option<Vec<Node>>> {
        let ctx = self.ctx;
        if ctx.excludes.matches(path) {
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
        if ctx.excluded_ids.contains(&(meta.dev(), meta.ino())) {
            return Some(None);
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            ctx.counters.dirs.fetch_add(1, Ordering::Relaxed);
            let node = base_node(self.ctx, name, path, &meta, NodeKind::Dir, parents);
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
            let mut node = base_node(self.ctx, name, path, &meta, NodeKind::Symlink, parents);
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
            let node = base_node(self.ctx, name, path, &meta, NodeKind::File, parents);
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
                        && p.content
                            .iter()
                            .all(|id| target.session.has_blob(BlobType::Data, id));
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
            let cut = match ctx.paged {
                Some(p) if (p.matches)(path) => Cut::Blocks {
                    block: paged_block_size(meta.len(), paged_bytes, p.page_size),
                    page: p.page_size,
                },
                _ => Cut::ContentDefined,
            };
            let job = FileJob {
                path: path.to_path_buf(),
                node,
                meta,
                reuse,
                had_parent: parents.iter().map(Option::is_some).collect(),
                dir: dir.clone(),
                slot,
                cut,
            };
            if !self.queue(job) {
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
}
