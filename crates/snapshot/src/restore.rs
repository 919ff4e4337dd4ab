//! Restoring a snapshot (or part of it) into a directory.
//!
//! [`restore`] works in four steps. It *selects* entries by the
//! include/exclude patterns of [`RestoreOptions`], reading the snapshot's
//! trees breadth first (several in flight) and keeping of each entry only
//! what restoring it needs, so a tree is dropped as soon as it has been
//! read; it *prepares* the target — refusing, before anything is written, to
//! replace existing files unless asked to, skipping files already identical
//! (`delta`), creating directories, empty files of the right length,
//! symlinks and hard links; it *fetches* data grouped by pack, each pack's
//! needed blobs read with as few ranged reads as possible, several ranges in
//! parallel under a memory budget, every blob verified (on a few dedicated
//! writer threads) before its bytes are written at their offsets in every
//! file that uses them; and it sets
//! *directory metadata last*, deepest first, so creating entries does not
//! disturb a directory's mtime and a read-only directory can still be
//! filled. A file's own metadata is set when its last blob has been written;
//! one `syncfs` of the target at the end makes the whole restore durable
//! before it is reported done (or, with [`RestoreOptions::sync_each_file`],
//! an fsync of each file as it completes and of each directory at the end).
//!
//! [`plan`] answers, before any of that, what a restore will read: which
//! packs, in which tier, how many bytes. It reads only trees and the index
//! (never pack data, so never the cold tier) and writes nothing, which is
//! what `restore --plan-only` prints for a repository with a cold tier.
//!
//! Memory stays flat whatever the snapshot's size: the plan holds a few
//! dozen bytes per file and per blob in a handful of large buffers (no tree
//! nodes, no allocation per entry), and the data path holds at most
//! [`MEMORY_BUDGET_KIB`] of sealed bytes and plaintext.
//!
//! Problems with one file (a damaged blob, a permission error) are recorded
//! in [`RestoreStats::errors`] and the others are restored anyway; a file
//! whose data could not be written is removed rather than left at its real
//! name with holes in it. An [`crate::Error`] means nothing sensible could
//! be done at all — including a full target filesystem (an
//! [`Error::Io`] whose source is of kind [`io::ErrorKind::StorageFull`]),
//! after which the files not finished are removed. Restoring into a
//! database data directory is the connectors' business, not this module's.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File, FileType, OpenOptions, Permissions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lifeboat_repo::{
    BlobType, Id, Index, MasterKey, NodeKind, PackEntry, Repository, Snapshot, Tier, open_blob,
    pack_key,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::pathmatch::PathMatcher;
use crate::pathmatch::join;
use crate::progress::RestoreProgress;
use crate::{Error, Result};

/// Two blobs of one pack closer than this are fetched in one ranged read,
/// the bytes between them read and dropped: on object storage a request's
/// latency costs more than reading a quarter mebibyte.
const RANGE_GAP_BYTES: u64 = 256 * 1024;
/// Largest single ranged read (unless one blob is larger). A few MiB keep
/// requests to a remote backend long enough that their latency does not
/// matter, and several of them fit in the memory budget at once, which is
/// what keeps a remote backend busy. Bigger ranges cost resident memory
/// beyond their own size: each is allocated by whichever blocking thread
/// reads it, and glibc keeps that much free in every such thread's arena.
const RANGE_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Most plaintext one ranged read is cut to carry: a range is also the unit
/// of work of the writer threads, and a range of very compressible data (a
/// database's pages, 20:1 and more) under `RANGE_MAX_BYTES` alone would
/// hold some 80 MiB of writing, so a handful of ranges would make up the
/// whole restore and leave writers idle while the last ones finish.
const RANGE_MAX_RAW_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes held at once by ranges in flight, in KiB: each range's sealed
/// bytes plus what opening its largest blob takes (blobs are opened one at
/// a time). Keeps a restore's memory flat whatever the snapshot's size.
const MEMORY_BUDGET_KIB: u32 = 24 * 1024;

/// What to restore and how.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into; snapshot path `/home/ann/x` lands at
    /// `target/home/ann/x`. Created if missing.
    pub target: PathBuf,
    /// Restore only entries matching one of these (and everything below a
    /// matching directory); empty means everything. Snapshot paths
    /// (`/home/ann`) or globs: a pattern with `/` matches the full snapshot
    /// path, one without matches entry names (`*.conf`).
    pub include: Vec<String>,
    /// Skip entries matching one of these (and everything below them); same
    /// syntax as `include`, and exclusion wins.
    pub exclude: Vec<String>,
    /// Replace existing files, symlinks and non-directories in the way.
    pub overwrite: bool,
    /// Leave files whose content already matches the snapshot untouched
    /// (only their metadata is set) and replace those that differ.
    pub delta: bool,
    /// Restore numeric owners (needs root, or the files' own uid).
    pub owner: bool,
    /// Make each file durable with fsync when its last byte is written, and
    /// each directory at the end, instead of one `syncfs` of the target's
    /// filesystem. `syncfs` also waits for every other writer's dirty data
    /// on that filesystem, which a restore beside a busy database server
    /// pays for; per-file fsyncs are slower for many small files. For a
    /// few large files (a database's data directory), set this.
    pub sync_each_file: bool,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    /// Regular files written (hard links counted once, in `hardlinks` for
    /// the extra names).
    pub files_restored: u64,
    /// Files left as they were because their content already matched.
    pub files_skipped_identical: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Extra names created for hard-linked files.
    pub hardlinks: u64,
    /// File bytes restored (including runs of zeros left as holes).
    pub bytes_written: u64,
    /// One `path: problem` line per entry that could not be fully restored.
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
}

/// Restores `snapshot` into `options.target`. Returns an error before
/// writing anything if a selected file already exists in the target and
/// neither `overwrite` nor `delta` is set; per-entry problems go to
/// [`RestoreStats::errors`] (and to `progress` as warnings). A full target
/// filesystem stops the restore with an [`Error::Io`] of kind
/// [`io::ErrorKind::StorageFull`].
pub async fn restore(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &dyn RestoreProgress,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let include = PathMatcher::new(&options.include)?;
    let exclude = PathMatcher::new(&options.exclude)?;
    let selection = select(
        repo,
        snapshot.record.tree,
        &include,
        &exclude,
        &options.target,
    )
    .await?;
    tracing::debug!("restore: selected in {:?}", started.elapsed());

    let index = repo.index().await?;
    let key = repo.key().clone();
    let opts = options.clone();
    let prepared = blocking(move || prepare(selection, &opts, &index, &key)).await??;
    tracing::debug!(
        "restore: {} files to write, created by {:?}",
        prepared.files.len(),
        started.elapsed()
    );
    let Prepared {
        files,
        mut writes,
        packs,
        links,
        dir_paths,
        names,
        dirs,
        planned_bytes,
        mut stats,
        mut problems,
    } = prepared;
    progress.planned(
        files.len() as u64 + stats.files_restored,
        planned_bytes + stats.bytes_written,
    );
    report(progress, &mut stats, &mut problems);
    progress.restored(stats.files_restored, stats.bytes_written);

    let ranges = build_ranges(&mut writes);
    // Every range is of data blobs, so all come from the data packs' tier
    // (opened here, only when there is something to fetch).
    let data_storage = if ranges.is_empty() {
        repo.storage()
    } else {
        repo.tier_storage(repo.tier_of(BlobType::Data)).await?
    };
    let exec = Arc::new(Exec {
        files,
        writes,
        packs,
        links,
        dir_paths: dir_paths.clone(),
        names,
        key: repo.key().clone(),
        owner: options.owner,
        sync_each: options.sync_each_file,
        abort: AtomicBool::new(false),
    });
    let budget = Arc::new(Semaphore::new(MEMORY_BUDGET_KIB as usize));
    let writers = Writers::start()?;
    let mut results = futures::stream::iter(ranges)
        .map(|range| {
            let exec = exec.clone();
            let budget = budget.clone();
            let writers = &writers;
            async move {
                if exec.abort.load(Ordering::Acquire) {
                    return Ok(RangeOutcome::default());
                }
                let kib = (range.len + range.blob_mem)
                    .div_ceil(1024)
                    .min(MEMORY_BUDGET_KIB as u64) as u32;
                let permit = budget
                    .acquire_many_owned(kib)
                    .await
                    .expect("the budget semaphore is never closed");
                if exec.abort.load(Ordering::Acquire) {
                    return Ok(RangeOutcome::default());
                }
                let fetched = data_storage
                    .get_range(
                        &pack_key(&exec.packs[range.pack as usize]),
                        range.start,
                        range.len,
                    )
                    .await
                    .map_err(|e| e.to_string())
                    // The storage contract rules out short reads, but a
                    // backend that breaks it must not make the slicing below
                    // panic (found by crates/snapshot/tests/random_ops.rs).
                    .and_then(|b| {
                        if b.len() as u64 == range.len {
                            Ok(b)
                        } else {
                            Err(format!(
                                "storage returned {} of the {} bytes asked for (short read)",
                                b.len(),
                                range.len
                            ))
                        }
                    });
                writers
                    .run(move || {
                        let out = write_range(&exec, &range, fetched);
                        drop(permit);
                        out
                    })
                    .await
            }
        })
        .buffer_unordered(repo.concurrency());
    let mut fatal = None;
    while let Some(out) = results.next().await {
        let mut out = out?;
        if fatal.is_none() {
            fatal = out.fatal.take();
        }
        stats.files_restored += out.files_done;
        stats.bytes_written += out.bytes;
        report(progress, &mut stats, &mut out.problems);
        progress.restored(stats.files_restored, stats.bytes_written);
    }
    drop(results);
    drop(writers);
    if let Some(err) = fatal {
        // Every range has returned: what is unfinished stays unfinished.
        let mut left = blocking(move || remove_unfinished(&exec)).await?;
        report(progress, &mut stats, &mut left);
        return Err(err);
    }
    drop(exec);
    tracing::debug!("restore: file data written by {:?}", started.elapsed());

    let owner = options.owner;
    let synced_dirs = options.sync_each_file.then(|| dir_paths.clone());
    let (dir_count, mut dir_problems) =
        blocking(move || finish_dirs(&dir_paths, &dirs, owner)).await?;
    stats.dirs = dir_count;
    report(progress, &mut stats, &mut dir_problems);
    let target = options.target.clone();
    blocking(move || match synced_dirs {
        // Files were synced as they completed; the directories hold their
        // names (and, on a journaling filesystem, their fsync commits the
        // metadata of the empty and unchanged files too).
        Some(dirs) => dirs
            .iter()
            .map(PathBuf::as_path)
            .chain([target.as_path()])
            .try_for_each(|d| File::open(d)?.sync_all()),
        None => sync_target(&target),
    })
    .await?
    .map_err(|e| Error::io(&options.target, e))?;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(
        "restore: directories finished and synced by {:?}",
        started.elapsed()
    );
    Ok(stats)
}

// ---------------------------------------------------------------- plan

/// What restoring a snapshot (with the same include/exclude patterns) will
/// read, pack by pack. Files a `delta` restore finds identical are counted
/// too: the plan is what a restore into an empty target reads, at most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestorePlan {
    /// Regular files with content (each hard-linked file once).
    pub files: u64,
    pub file_bytes: u64,
    pub hot_packs: u64,
    /// Bytes of the ranged reads from hot packs.
    pub hot_read_bytes: u64,
    pub cold_packs: u64,
    /// Bytes of the ranged reads from cold packs.
    pub cold_read_bytes: u64,
    /// Blobs the index does not know (their files will not be restored;
    /// `lifeboat check` says more).
    pub missing_blobs: u64,
    /// Every pack to read, sorted by tier then id.
    pub packs: Vec<PlannedPack>,
}

/// One pack a restore reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPack {
    /// Pack id (hex).
    pub pack: String,
    pub tier: Tier,
    /// Object path inside its tier (`data/ab/ab12…`), for restoring it from
    /// an archive storage class with the provider's own tools.
    pub object: String,
    /// Ranged reads and their bytes.
    pub reads: u64,
    pub read_bytes: u64,
}

/// Works out the [`RestorePlan`] of restoring `snapshot` with `options`'
/// include and exclude patterns. Reads trees and the index only; writes
/// nothing and never touches the target or the cold tier.
pub async fn plan(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreOptions,
) -> Result<RestorePlan> {
    let include = PathMatcher::new(&options.include)?;
    let exclude = PathMatcher::new(&options.exclude)?;
    let sel = select(
        repo,
        snapshot.record.tree,
        &include,
        &exclude,
        &options.target,
    )
    .await?;
    let index = repo.index().await?;
    let mut out = RestorePlan::default();
    let mut packs: Vec<Id> = Vec::new();
    let mut numbers: HashMap<Id, u32> = HashMap::new();
    let mut writes: Vec<Write> = Vec::new();
    for item in sel.items.iter().filter(|i| i.keep) {
        let ItemKind::File {
            size,
            content,
            link_to: None,
            ..
        } = item.kind
        else {
            continue;
        };
        if content.len == 0 {
            continue;
        }
        out.files += 1;
        out.file_bytes += size;
        for id in content.of(&sel.content) {
            let Some(loc) = index.get(id) else {
                out.missing_blobs += 1;
                continue;
            };
            let pack = match numbers.entry(loc.pack) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    packs.push(loc.pack);
                    *e.insert(fits(packs.len() - 1)?)
                }
            };
            writes.push(Write {
                entry: loc.entry,
                pack,
                file: 0,
                at: 0,
            });
        }
    }
    drop(sel);
    // The same ranges the restore will fetch.
    let ranges = build_ranges(&mut writes);
    let tier = repo.tier_of(BlobType::Data);
    let mut per_pack: Vec<(u64, u64)> = vec![(0, 0); packs.len()];
    for r in &ranges {
        let p = &mut per_pack[r.pack as usize];
        p.0 += 1;
        p.1 += r.len;
    }
    for (i, (reads, bytes)) in per_pack.into_iter().enumerate() {
        match tier {
            Tier::Hot => {
                out.hot_packs += 1;
                out.hot_read_bytes += bytes;
            }
            Tier::Cold => {
                out.cold_packs += 1;
                out.cold_read_bytes += bytes;
            }
        }
        out.packs.push(PlannedPack {
            pack: packs[i].to_hex(),
            tier,
            object: pack_key(&packs[i]).to_string(),
            reads,
            read_bytes: bytes,
        });
    }
    out.packs
        .sort_by(|a, b| (a.tier, &a.pack).cmp(&(b.tier, &b.pack)));
    Ok(out)
}

// ---------------------------------------------------------------- selection

/// Bytes in a shared buffer (names and link targets in
/// [`Selection::names`], blob ids in [`Selection::content`]): one buffer
/// instead of an allocation per entry keeps the plan small and lets the
/// allocator give it back whole.
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn of<T>(self, buf: &[T]) -> &[T] {
        &buf[self.start as usize..][..self.len as usize]
    }
}

/// Appends `items` to `buf` and returns where they are.
fn append<T: Clone>(buf: &mut Vec<T>, items: &[T]) -> Result<Span> {
    let span = Span {
        start: fits(buf.len())?,
        len: fits(items.len())?,
    };
    fits(buf.len() + items.len())?;
    buf.extend_from_slice(items);
    Ok(span)
}

/// A count or position of the plan as a `u32`: the plan is kept compact,
/// and no real snapshot comes near four billion entries, names or blobs.
fn fits(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        Error::Invalid(
            "the snapshot is too large to restore at once; restore it in parts with --include"
                .into(),
        )
    })
}

/// Extended attributes as (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What setting an entry's metadata needs.
#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_nanos: u32,
    mtime_secs: i64,
    /// Boxed: almost every entry has none.
    xattrs: Option<Box<Xattrs>>,
}

impl Meta {
    fn xattrs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        self.xattrs.as_deref().map_or(&[], Vec::as_slice)
    }

    fn mtime(&self) -> filetime::FileTime {
        filetime::FileTime::from_unix_time(self.mtime_secs, self.mtime_nanos)
    }
}

/// A selected snapshot entry, with only what restoring it needs.
struct Item {
    meta: Meta,
    name: Span,
    /// Number of the parent directory (an index into
    /// [`Selection::dirs`]; 0 is the target itself).
    parent: u32,
    kind: ItemKind,
    /// Selected itself, or a directory holding something selected (it is
    /// then needed as a parent). Entries not kept are skipped.
    keep: bool,
}

enum ItemKind {
    /// The directory's own number.
    Dir(u32),
    File {
        size: u64,
        content: Span,
        /// For another name of a hard-linked file: the item holding the
        /// first selected name, which is restored and linked to.
        link_to: Option<u32>,
        /// Whether this is the first selected name of a hard-linked file.
        linked: bool,
    },
    /// The link target.
    Symlink(Span),
}

struct Selection {
    /// Breadth first: every directory before its contents.
    items: Vec<Item>,
    /// Target path of every directory, by number; 0 is the target.
    dirs: Vec<PathBuf>,
    names: Vec<u8>,
    content: Vec<Id>,
}

impl Selection {
    fn path(&self, item: &Item) -> PathBuf {
        self.dirs[item.parent as usize].join(OsStr::from_bytes(item.name.of(&self.names)))
    }
}

/// A directory whose tree is still to be read.
struct Pending {
    /// Its directory number.
    dir: u32,
    /// Its snapshot path.
    path: Vec<u8>,
    /// Whether it is selected (so everything below it is).
    included: bool,
}

/// Reads the snapshot's trees breadth first, up to `repo.concurrency()` in
/// flight and in a fixed order, and turns each tree's nodes into [`Item`]s
/// as it arrives, so no more than a few trees are held at once. Excluded
/// directories are not read.
async fn select(
    repo: &Repository,
    root: Id,
    include: &PathMatcher,
    exclude: &PathMatcher,
    target: &Path,
) -> Result<Selection> {
    let mut sel = Selection {
        items: Vec::new(),
        dirs: vec![target.to_path_buf()],
        names: Vec::new(),
        content: Vec::new(),
    };
    // Directory number -> its item (none for the target).
    let mut dir_items: Vec<u32> = vec![u32::MAX];
    // Files with more than one link, by device and inode at backup time:
    // files sharing both were one file. The first selected name is
    // restored, the others link to it.
    let mut first_names: HashMap<(u64, u64), u32> = HashMap::new();
    let first = Pending {
        dir: 0,
        path: Vec::new(),
        included: include.is_empty(),
    };
    let mut queue = VecDeque::from([(first, root)]);
    let mut reading = FuturesOrdered::new();
    loop {
        while reading.len() < repo.concurrency()
            && let Some((pending, id)) = queue.pop_front()
        {
            reading.push_back(async move { (pending, repo.read_tree(&id).await) });
        }
        let Some((pending, tree)) = reading.next().await else {
            break;
        };
        for node in tree?.nodes {
            let child = join(&pending.path, &node.name);
            if exclude.is_match(&child) {
                continue;
            }
            let included = pending.included || include.is_match(&child);
            let i = fits(sel.items.len())?;
            let kind = match node.kind {
                NodeKind::Dir => {
                    let d = fits(sel.dirs.len())?;
                    let path = sel.dirs[pending.dir as usize].join(OsStr::from_bytes(&node.name));
                    sel.dirs.push(path);
                    dir_items.push(i);
                    if let Some(sub) = node.subtree {
                        let below = Pending {
                            dir: d,
                            path: child,
                            included,
                        };
                        queue.push_back((below, sub));
                    }
                    ItemKind::Dir(d)
                }
                _ if !included => continue,
                NodeKind::File => {
                    let (link_to, linked) = if node.links > 1 {
                        match first_names.entry((node.dev, node.inode)) {
                            Entry::Occupied(e) => (Some(*e.get()), false),
                            Entry::Vacant(e) => {
                                e.insert(i);
                                (None, true)
                            }
                        }
                    } else {
                        (None, false)
                    };
                    ItemKind::File {
                        size: node.size,
                        content: append(&mut sel.content, &node.content)?,
                        link_to,
                        linked,
                    }
                }
                NodeKind::Symlink => {
                    let target = node.link_target.as_deref().unwrap_or_default();
                    ItemKind::Symlink(append(&mut sel.names, target)?)
                }
            };
            let xattrs = (!node.xattrs.is_empty()).then(|| Box::new(node.xattrs));
            sel.items.push(Item {
                meta: Meta {
                    mode: node.mode,
                    uid: node.uid,
                    gid: node.gid,
                    mtime_nanos: node.mtime.nanos,
                    mtime_secs: node.mtime.secs,
                    xattrs,
                },
                name: append(&mut sel.names, &node.name)?,
                parent: pending.dir,
                kind,
                keep: false,
            });
            if included {
                keep(&mut sel.items, &dir_items, i as usize);
            }
        }
    }
    Ok(sel)
}

/// Keeps item `i` and every directory above it.
fn keep(items: &mut [Item], dir_items: &[u32], mut i: usize) {
    while !items[i].keep {
        items[i].keep = true;
        match items[i].parent {
            0 => break,
            d => i = dir_items[d as usize] as usize,
        }
    }
}

// ---------------------------------------------------------------- preparation

/// What is already at an entry's place in the target.
#[derive(Clone, Copy)]
struct Existing {
    kind: FileType,
    len: u64,
    dev: u64,
    ino: u64,
}

impl From<fs::Metadata> for Existing {
    fn from(m: fs::Metadata) -> Self {
        Existing {
            kind: m.file_type(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// Looks at each kept item's place in the target. Nothing is below a
/// directory that does not exist (or is not a directory), so a restore into
/// a new directory costs no lookups.
fn scan_target(sel: &Selection) -> Result<Vec<Option<Existing>>> {
    let lookup = |path: &Path, follow: bool| {
        let m = if follow {
            fs::metadata(path)
        } else {
            fs::symlink_metadata(path)
        };
        match m {
            Ok(m) => Ok(Some(Existing::from(m))),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(Error::io(path, err)),
        }
    };
    // Directory number -> whether it is a directory in the target now.
    let mut present = vec![false; sel.dirs.len()];
    present[0] = lookup(&sel.dirs[0], true)?.is_some_and(|m| m.kind.is_dir());
    let mut out = Vec::with_capacity(sel.items.len());
    for item in &sel.items {
        if !item.keep || !present[item.parent as usize] {
            out.push(None);
            continue;
        }
        let old = lookup(&sel.path(item), false)?;
        if let (ItemKind::Dir(d), Some(m)) = (&item.kind, &old) {
            present[*d as usize] = m.kind.is_dir();
        }
        out.push(old);
    }
    Ok(out)
}

/// A file whose content is being written: what finishing it needs.
struct FileState {
    meta: Meta,
    /// Its name in [`Prepared::names`].
    name: Span,
    /// Number of the directory it is in.
    dir: u32,
    /// Blob writes still to do; whoever brings it to zero finishes the file
    /// (or removes it, if it failed).
    remaining: AtomicU32,
    /// Set on the first problem; later writes to the file are skipped.
    failed: AtomicBool,
    /// Its length, which a lazily created file is created at.
    size: u64,
    /// Whether the file exists yet. A file is created by the first writer
    /// that needs it (see [`Exec::open`]), so creating hundreds of files
    /// (which a filesystem serializes per directory) overlaps with writing
    /// data instead of preceding it. A file with other names is created
    /// while planning, for the links to point at; so is an empty one. The
    /// error is boxed to keep the per-file plan small.
    created: OnceLock<std::result::Result<(), Box<(io::ErrorKind, String)>>>,
}

/// One blob write: a blob of a pack, and where it goes in which file.
struct Write {
    entry: PackEntry,
    /// Index into the pack list.
    pack: u32,
    /// Index into the file list.
    file: u32,
    /// Byte offset in the file.
    at: u64,
}

/// A per-entry problem: the entry's target path and what went wrong.
struct Problem {
    path: PathBuf,
    message: String,
    /// False for best-effort parts (xattrs): reported, but the entry counts
    /// as restored.
    error: bool,
}

impl Problem {
    fn error(path: &Path, message: String) -> Self {
        Problem {
            path: path.to_path_buf(),
            message,
            error: true,
        }
    }
}

#[derive(Default)]
struct Prepared {
    files: Vec<FileState>,
    writes: Vec<Write>,
    packs: Vec<Id>,
    /// File number -> the other names of a hard-linked file, removed with it
    /// if its data cannot be written.
    links: HashMap<u32, Vec<PathBuf>>,
    /// Directory paths by number (0 is the target).
    dir_paths: Arc<Vec<PathBuf>>,
    /// File names (see [`FileState::name`]).
    names: Vec<u8>,
    /// Directories (number and metadata), parents first.
    dirs: Vec<(u32, Meta)>,
    /// Bytes of the files in `files`.
    planned_bytes: u64,
    stats: RestoreStats,
    problems: Vec<Problem>,
}

impl Prepared {
    fn file_path(&self, st: &FileState) -> PathBuf {
        file_path(&self.dir_paths, &self.names, st)
    }
}

fn file_path(dirs: &[PathBuf], names: &[u8], st: &FileState) -> PathBuf {
    dirs[st.dir as usize].join(OsStr::from_bytes(st.name.of(names)))
}

/// A hard-linked file's first name, as the other names find it.
struct FirstName {
    path: PathBuf,
    ok: bool,
    /// Its number in the file list, while its data is being written.
    file: Option<u32>,
}

/// Checks the target for conflicts, then creates everything but file
/// content, and plans the blob writes. Runs on a blocking thread.
fn prepare(
    sel: Selection,
    options: &RestoreOptions,
    index: &Index,
    key: &MasterKey,
) -> Result<Prepared> {
    let existing = scan_target(&sel)?;
    if !(options.overwrite || options.delta) {
        let conflict = sel
            .items
            .iter()
            .zip(&existing)
            .find(|(item, old)| match old {
                None => false,
                Some(m) => !(matches!(item.kind, ItemKind::Dir(_)) && m.kind.is_dir()),
            });
        if let Some((item, _)) = conflict {
            return Err(Error::Invalid(format!(
                "{} already exists in the restore target; nothing was written. Use --overwrite to replace \
                 existing files, or --delta to keep identical files and replace the others",
                sel.path(item).display()
            )));
        }
    }
    let identical = if options.delta {
        find_identical(&sel, &existing, index, key)
    } else {
        Vec::new()
    };
    fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;

    // Sized up front: the plan's vectors are its largest part, and growing
    // them by doubling would hold up to twice that.
    let (mut files, mut blobs) = (0, 0);
    for item in &sel.items {
        if let ItemKind::File {
            content,
            link_to: None,
            ..
        } = item.kind
        {
            files += 1;
            blobs += content.len as usize;
        }
    }
    let mut p = Prepared {
        files: Vec::with_capacity(files),
        writes: Vec::with_capacity(blobs),
        ..Prepared::default()
    };
    let created = create_all(&mut p, &sel, existing, &identical, options, index);
    p.dir_paths = Arc::new(sel.dirs);
    p.names = sel.names;
    if let Err(err) = created {
        // Only a full target stops here: the files created for data are
        // all unfinished.
        let mut problems = Vec::new();
        for (f, st) in p.files.iter().enumerate() {
            let others = p.links.get(&(f as u32)).map_or(&[][..], Vec::as_slice);
            remove_partial(&p.file_path(st), others, &mut problems);
        }
        return Err(err);
    }
    Ok(p)
}

/// An I/O error that stops the whole restore (a full target) as an
/// [`Error`]; any other is given back, to be reported for its entry.
fn storage_full(path: &Path, err: io::Error) -> Result<io::Error> {
    if err.kind() == io::ErrorKind::StorageFull {
        Err(Error::io(path, err))
    } else {
        Ok(err)
    }
}

/// Creates every kept item but file content, in order (parents first).
/// Item metadata moves into the plan (the items are left without it).
fn create_all(
    p: &mut Prepared,
    sel: &Selection,
    existing: Vec<Option<Existing>>,
    identical: &[bool],
    options: &RestoreOptions,
    index: &Index,
) -> Result<()> {
    let mut packs: HashMap<Id, u32> = HashMap::new();
    let mut firsts: HashMap<u32, FirstName> = HashMap::new();
    for (i, (item, old)) in sel.items.iter().zip(existing).enumerate() {
        if !item.keep {
            continue;
        }
        let path = sel.path(item);
        let old = old.as_ref();
        match item.kind {
            ItemKind::Dir(d) => {
                let made = if old.is_some_and(|m| m.kind.is_dir()) {
                    Ok(())
                } else {
                    clear(&path, old).and_then(|_| fs::create_dir(&path))
                };
                match made {
                    Ok(()) => p.dirs.push((d, item.meta.clone())),
                    Err(err) => {
                        let err = storage_full(&path, err)?;
                        p.problems.push(Problem::error(
                            &path,
                            format!("cannot create directory: {err}"),
                        ));
                    }
                }
            }
            ItemKind::Symlink(target) => {
                let target = OsStr::from_bytes(target.of(&sel.names));
                let same = options.delta
                    && old.is_some_and(|m| m.kind.is_symlink())
                    && fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target);
                let made = if same {
                    Ok(())
                } else {
                    clear(&path, old).and_then(|_| std::os::unix::fs::symlink(target, &path))
                };
                let made = made.and_then(|_| {
                    set_symlink_metadata(&path, &item.meta, options.owner, &mut p.problems)
                });
                match made {
                    Ok(()) => p.stats.symlinks += 1,
                    Err(err) => {
                        let err = storage_full(&path, err)?;
                        p.problems.push(Problem::error(
                            &path,
                            format!("cannot restore symlink: {err}"),
                        ));
                    }
                }
            }
            ItemKind::File {
                link_to: Some(j), ..
            } => {
                let first = &firsts[&j];
                if !first.ok {
                    let first = first.path.display();
                    p.problems.push(Problem::error(
                        &path,
                        format!("not linked: its other name {first} could not be restored"),
                    ));
                    continue;
                }
                let same = options.delta
                    && old.is_some_and(|m| {
                        fs::symlink_metadata(&first.path)
                            .is_ok_and(|f| (f.dev(), f.ino()) == (m.dev, m.ino))
                    });
                let made = if same {
                    Ok(())
                } else {
                    clear(&path, old).and_then(|_| fs::hard_link(&first.path, &path))
                };
                match made {
                    Ok(()) => {
                        p.stats.hardlinks += 1;
                        if let Some(file) = first.file {
                            p.links.entry(file).or_default().push(path);
                        }
                    }
                    Err(err) => {
                        let err = storage_full(&path, err)?;
                        let first = first.path.display();
                        p.problems.push(Problem::error(
                            &path,
                            format!("cannot create hard link to {first}: {err}"),
                        ));
                    }
                }
            }
            ItemKind::File {
                size,
                content,
                link_to: None,
                linked,
            } => {
                let outcome = if identical.get(i).copied().unwrap_or(false) {
                    let done = File::open(&path).and_then(|file| {
                        set_file_metadata(&file, &path, &item.meta, options.owner, &mut p.problems)
                    });
                    match done {
                        Ok(()) => {
                            p.stats.files_skipped_identical += 1;
                            Ok(None)
                        }
                        Err(err) => Err(format!("cannot set metadata: {err}")),
                    }
                } else {
                    let new = NewFile {
                        path: &path,
                        item,
                        size,
                        content: content.of(&sel.content),
                        old,
                        linked,
                    };
                    plan_file(p, &mut packs, new, index, options.owner)?
                };
                let (ok, file) = match outcome {
                    Ok(file) => (true, file),
                    Err(msg) => {
                        p.problems.push(Problem::error(&path, msg));
                        (false, None)
                    }
                };
                if linked {
                    firsts.insert(i as u32, FirstName { path, ok, file });
                }
            }
        }
    }
    Ok(())
}

/// A file about to be created.
struct NewFile<'a> {
    path: &'a Path,
    item: &'a Item,
    size: u64,
    content: &'a [Id],
    old: Option<&'a Existing>,
    /// Other names will be hard links to it: it must exist before they do.
    linked: bool,
}

/// Adds one file's blobs to the plan, after removing what is in its way.
/// The file is created (empty, at its final length, so runs of zeros can be
/// left as holes) here if it is empty (and then finished at once) or has
/// other names; otherwise by the first writer that needs it. Returns the
/// file's number in the plan (none if finished), or why it was not
/// created; a full target is an error.
fn plan_file(
    p: &mut Prepared,
    packs: &mut HashMap<Id, u32>,
    new: NewFile<'_>,
    index: &Index,
    owner: bool,
) -> Result<std::result::Result<Option<u32>, String>> {
    // Check every blob is indexed first, so a file with a missing blob is
    // not created half-planned.
    if let Some(id) = new.content.iter().find(|id| !index.contains(id)) {
        return Ok(Err(format!(
            "blob {id} is not in the repository index (run `lifeboat check`); file not restored"
        )));
    }
    let now = new.content.is_empty() || new.linked;
    let created = clear(new.path, new.old).and_then(|_| {
        if now {
            create_sized(new.path, new.size).map(Some)
        } else {
            Ok(None)
        }
    });
    let file = match created {
        Ok(file) => file,
        Err(err) => {
            let err = storage_full(new.path, err)?;
            return Ok(Err(format!("cannot create file: {err}")));
        }
    };
    if let (Some(file), true) = (&file, new.content.is_empty()) {
        let done = set_file_metadata(file, new.path, &new.item.meta, owner, &mut p.problems);
        return Ok(match done {
            Ok(()) => {
                p.stats.files_restored += 1;
                Ok(None)
            }
            Err(err) => Err(format!("cannot set metadata: {err}")),
        });
    }
    let number = fits(p.files.len())?;
    let mut at = 0u64;
    for id in new.content {
        let loc = index.get(id).expect("checked above");
        let pack = match packs.entry(loc.pack) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                p.packs.push(loc.pack);
                *e.insert(fits(p.packs.len() - 1)?)
            }
        };
        p.writes.push(Write {
            entry: loc.entry,
            pack,
            file: number,
            at,
        });
        at += loc.entry.raw_length as u64;
    }
    p.planned_bytes += new.size;
    p.files.push(FileState {
        meta: new.item.meta.clone(),
        name: new.item.name,
        dir: new.item.parent,
        remaining: AtomicU32::new(fits(new.content.len())?),
        failed: AtomicBool::new(false),
        size: new.size,
        created: match file {
            Some(_) => OnceLock::from(Ok(())),
            None => OnceLock::new(),
        },
    });
    Ok(Ok(Some(number)))
}

/// Creates a file at its final length. Always a fresh file (never one
/// opened through an existing name) so a symlink or another hard link put
/// in the target is never written through.
fn create_sized(path: &Path, size: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(size)?;
    Ok(file)
}

/// Removes a non-directory in the way of a new entry. A directory in the
/// way is an error: replacing it would delete a whole tree the user did
/// not ask about.
fn clear(path: &Path, old: Option<&Existing>) -> io::Result<()> {
    match old {
        None => Ok(()),
        Some(m) if m.kind.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way (remove it to restore this entry)",
        )),
        Some(_) => match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
    }
}

/// For `delta`: which items are regular files already in the target with
/// the snapshot's content, checked in parallel (hashing is CPU-bound).
fn find_identical(
    sel: &Selection,
    existing: &[Option<Existing>],
    index: &Index,
    key: &MasterKey,
) -> Vec<bool> {
    let candidates: Vec<(usize, Span)> = sel
        .items
        .iter()
        .zip(existing)
        .enumerate()
        .filter_map(|(i, (item, old))| match (&item.kind, old) {
            (
                ItemKind::File {
                    size,
                    content,
                    link_to: None,
                    ..
                },
                Some(m),
            ) if item.keep && m.kind.is_file() && m.len == *size => Some((i, *content)),
            _ => None,
        })
        .collect();
    let mut out = vec![false; sel.items.len()];
    let results: Vec<AtomicBool> = candidates.iter().map(|_| AtomicBool::new(false)).collect();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(candidates.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, content)) = candidates.get(k) else {
                        break;
                    };
                    let path = sel.path(&sel.items[i]);
                    let same =
                        same_content(&path, content.of(&sel.content), index, key).unwrap_or(false);
                    results[k].store(same, Ordering::Relaxed);
                }
            });
        }
    });
    for (k, &(i, _)) in candidates.iter().enumerate() {
        out[i] = results[k].load(Ordering::Relaxed);
    }
    out
}

/// Cuts the existing file at the snapshot's blob boundaries and compares
/// each piece's keyed id with the snapshot's blob id.
fn same_content(path: &Path, content: &[Id], index: &Index, key: &MasterKey) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buf = Vec::new();
    for id in content {
        let Some(loc) = index.get(id) else {
            return Ok(false);
        };
        buf.resize(loc.entry.raw_length as usize, 0);
        match file.read_exact(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            r => r?,
        }
        if key.blob_id(&buf) != *id {
            return Ok(false);
        }
    }
    Ok(file.read(&mut [0u8; 1])? == 0)
}

// ---------------------------------------------------------------- data

/// A run of blobs of one pack fetched with one ranged read.
struct PackRange {
    /// Index into the pack list.
    pack: u32,
    start: u64,
    len: u64,
    /// Most memory opening one of its blobs takes (sealed payload plus
    /// plaintext): blobs are opened one at a time.
    blob_mem: u64,
    /// Plaintext of its blobs (each counted once, however many writes).
    raw: u64,
    /// Its writes: a slice of the sorted write list.
    writes: Range<usize>,
}

/// Sorts the writes by pack and offset (the writes of one blob, however
/// many places use it, end up next to each other) and cuts them into
/// ranged reads, merging neighbouring blobs.
fn build_ranges(writes: &mut [Write]) -> Vec<PackRange> {
    writes.sort_unstable_by_key(|w| (w.pack, w.entry.offset, w.entry.id, w.file, w.at));
    let mut out: Vec<PackRange> = Vec::new();
    let mut i = 0;
    for blob in writes.chunk_by(same_blob) {
        let w = &blob[0];
        let start = w.entry.offset as u64;
        let end = start + w.entry.length as u64;
        let raw = w.entry.raw_length as u64;
        let mem = w.entry.length as u64 + raw;
        let next = i + blob.len();
        match out.last_mut() {
            Some(r)
                if r.pack == w.pack
                    && start <= r.start + r.len + RANGE_GAP_BYTES
                    && end - r.start <= RANGE_MAX_BYTES
                    && r.raw + raw <= RANGE_MAX_RAW_BYTES =>
            {
                r.len = r.len.max(end - r.start);
                r.blob_mem = r.blob_mem.max(mem);
                r.raw += raw;
                r.writes.end = next;
            }
            _ => out.push(PackRange {
                pack: w.pack,
                start,
                len: end - start,
                blob_mem: mem,
                raw,
                writes: i..next,
            }),
        }
        i = next;
    }
    out
}

fn same_blob(a: &Write, b: &Write) -> bool {
    a.pack == b.pack && a.entry.offset == b.entry.offset && a.entry.id == b.entry.id
}

/// State shared by the range writers.
struct Exec {
    files: Vec<FileState>,
    /// Sorted by [`build_ranges`].
    writes: Vec<Write>,
    packs: Vec<Id>,
    links: HashMap<u32, Vec<PathBuf>>,
    dir_paths: Arc<Vec<PathBuf>>,
    names: Vec<u8>,
    key: MasterKey,
    owner: bool,
    /// See [`RestoreOptions::sync_each_file`].
    sync_each: bool,
    /// Set when the target is full: writers stop where they are, and what
    /// is unfinished is removed.
    abort: AtomicBool,
}

#[derive(Default)]
struct RangeOutcome {
    bytes: u64,
    files_done: u64,
    problems: Vec<Problem>,
    /// What stops the whole restore (a full target).
    fatal: Option<Error>,
}

/// An open file of a range writer, with its number.
type Handle = Option<(u32, File)>;

impl Exec {
    fn path(&self, f: u32) -> PathBuf {
        file_path(&self.dir_paths, &self.names, &self.files[f as usize])
    }

    /// Marks a file failed; only its first problem is reported. The file is
    /// removed once no write to it is left.
    fn fail(&self, f: u32, msg: impl FnOnce() -> String, out: &mut RangeOutcome) {
        if !self.files[f as usize].failed.swap(true, Ordering::AcqRel) {
            out.problems.push(Problem::error(&self.path(f), msg()));
        }
    }

    /// The file's handle, creating the file if no writer has yet (writers
    /// that need it meanwhile wait for that).
    fn open<'a>(&self, handle: &'a mut Handle, f: u32) -> io::Result<&'a File> {
        if handle.as_ref().is_none_or(|(g, _)| *g != f) {
            *handle = None;
            let st = &self.files[f as usize];
            let path = self.path(f);
            let mut fresh = None;
            let created = st
                .created
                .get_or_init(|| match create_sized(&path, st.size) {
                    Ok(file) => {
                        fresh = Some(file);
                        Ok(())
                    }
                    Err(e) => Err(Box::new((e.kind(), format!("cannot create file: {e}")))),
                });
            if let Err(e) = created {
                return Err(io::Error::new(e.0, e.1.clone()));
            }
            let file = match fresh {
                Some(file) => file,
                None => OpenOptions::new().write(true).open(&path)?,
            };
            *handle = Some((f, file));
        }
        Ok(&handle.as_ref().expect("just opened").1)
    }

    /// Called by whoever did the file's last write: sets its metadata, or
    /// removes it (and its other names) if some data could not be written.
    fn finish(&self, f: u32, handle: &mut Handle, out: &mut RangeOutcome) {
        let st = &self.files[f as usize];
        let path = self.path(f);
        if st.failed.load(Ordering::Acquire) {
            *handle = None;
            let others = self.links.get(&f).map_or(&[][..], Vec::as_slice);
            remove_partial(&path, others, &mut out.problems);
            for other in others {
                let message = format!(
                    "not restored: another name of {}, whose data could not be restored",
                    path.display()
                );
                out.problems.push(Problem::error(other, message));
            }
            return;
        }
        let done = self.open(handle, f).and_then(|file| {
            set_file_metadata(file, &path, &st.meta, self.owner, &mut out.problems)?;
            if self.sync_each {
                file.sync_all()?;
            }
            Ok(())
        });
        *handle = None;
        match done {
            Ok(()) => out.files_done += 1,
            Err(err) => self.fail(f, || format!("cannot set metadata: {err}"), out),
        }
    }
}

/// Removes a file whose data could not all be written, and its other names,
/// so no file is left at its real name with missing data.
fn remove_partial(path: &Path, others: &[PathBuf], problems: &mut Vec<Problem>) {
    for p in std::iter::once(path).chain(others.iter().map(PathBuf::as_path)) {
        match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => problems.push(Problem::error(
                p,
                format!("cannot remove the partially restored file: {e}"),
            )),
            _ => {}
        }
    }
}

/// After the restore was stopped: removes every file not finished.
fn remove_unfinished(exec: &Exec) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (f, st) in exec.files.iter().enumerate() {
        if st.remaining.load(Ordering::Acquire) > 0 {
            let f = f as u32;
            let others = exec.links.get(&f).map_or(&[][..], Vec::as_slice);
            remove_partial(&exec.path(f), others, &mut problems);
        }
    }
    problems
}

/// The threads that open fetched blobs and write them. A few dedicated
/// threads rather than the shared blocking pool: glibc gives each thread
/// that allocates its own heap arena and keeps freed buffers there, so
/// plaintext passing through every pool thread in turn cost several times
/// the memory budget in resident memory. Writes are mostly page-cache
/// copies and syscalls, so a few threads keep up with the fetches.
struct Writers {
    jobs: crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>,
}

impl Writers {
    fn start() -> Result<Self> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let (jobs, queue) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for _ in 0..n {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("lifeboat-restore".into())
                .spawn(move || {
                    // Ends when the restore drops its sender and the queue
                    // is empty.
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })
                .map_err(|e| Error::Repo(lifeboat_repo::Error::Task(e.to_string())))?;
        }
        Ok(Writers { jobs })
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            // The receiver is gone only if the restore was dropped.
            let _ = tx.send(f());
        });
        let lost = || {
            Error::Repo(lifeboat_repo::Error::Task(
                "a restore writer thread failed".into(),
            ))
        };
        self.jobs.send(job).map_err(|_| lost())?;
        rx.await.map_err(|_| lost())
    }
}

/// Opens the blobs of a fetched range one at a time, in pack order, and
/// writes each wherever it goes (a file's blobs are mostly neighbours in a
/// pack, so it is opened once per range). Runs on a blocking thread.
fn write_range(exec: &Exec, range: &PackRange, fetched: Result<Bytes, String>) -> RangeOutcome {
    let mut out = RangeOutcome::default();
    let pack = exec.packs[range.pack as usize];
    let mut handle: Handle = None;
    for blob in exec.writes[range.writes.clone()].chunk_by(same_blob) {
        if exec.abort.load(Ordering::Acquire) {
            return out;
        }
        let entry = &blob[0].entry;
        let live = blob
            .iter()
            .any(|w| !exec.files[w.file as usize].failed.load(Ordering::Acquire));
        // Decrypt and verify each blob once, however many places use it.
        let plain = live.then(|| {
            let bytes = fetched
                .as_ref()
                .map_err(|e| format!("not restored: cannot read pack {pack}: {e}"))?;
            let at = (entry.offset as u64 - range.start) as usize;
            let sealed = &bytes[at..at + entry.length as usize];
            let plain = open_blob(&exec.key, entry, sealed)
                .map_err(|e| format!("not restored: damaged data in pack {pack}: {e}"))?;
            let zero = plain.iter().all(|b| *b == 0);
            Ok::<_, String>((plain, zero))
        });
        for w in blob {
            let st = &exec.files[w.file as usize];
            match &plain {
                _ if st.failed.load(Ordering::Acquire) => {}
                None => {}
                Some(Err(msg)) => exec.fail(w.file, || msg.clone(), &mut out),
                Some(Ok((data, zero))) => {
                    out.bytes += data.len() as u64;
                    // The file was created empty at its final length, so
                    // zeros are already there (as a hole, where the
                    // filesystem supports it).
                    let written = if *zero {
                        Ok(())
                    } else {
                        exec.open(&mut handle, w.file)
                            .and_then(|file| file.write_all_at(data, w.at))
                    };
                    if let Err(err) = written {
                        match storage_full(&exec.path(w.file), err) {
                            Err(fatal) => {
                                // Stop before counting this write: the file
                                // stays unfinished and is removed.
                                exec.abort.store(true, Ordering::Release);
                                out.fatal = Some(fatal);
                                return out;
                            }
                            Ok(err) => exec.fail(
                                w.file,
                                || format!("not restored: cannot write: {err}"),
                                &mut out,
                            ),
                        }
                    }
                }
            }
            if st.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                exec.finish(w.file, &mut handle, &mut out);
            }
        }
    }
    out
}

// ---------------------------------------------------------------- metadata

/// Sets a file's metadata through its handle. Order
/// matters: chown first (it clears set-id bits), xattrs before chmod (a
/// read-only mode would forbid them), times last (nothing after touches
/// the mtime). The access time is set to the mtime: snapshots do not keep it.
fn set_file_metadata(
    file: &File,
    path: &Path,
    meta: &Meta,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))?;
    }
    for (name, value) in meta.xattrs() {
        if let Err(e) = xattr::FileExt::set_xattr(file, OsStr::from_bytes(name), value) {
            problems.push(xattr_warning(path, name, e));
        }
    }
    file.set_permissions(Permissions::from_mode(meta.mode & 0o7777))?;
    let t = meta.mtime();
    filetime::set_file_handle_times(file, Some(t), Some(t))
}

fn set_symlink_metadata(
    path: &Path,
    meta: &Meta,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    }
    for (name, value) in meta.xattrs() {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
            problems.push(xattr_warning(path, name, e));
        }
    }
    let t = meta.mtime();
    filetime::set_symlink_file_times(path, t, t)
}

/// Xattrs are best effort (the target filesystem may not support them, or
/// forbid a namespace), so a failure is reported but does not fail the entry.
fn xattr_warning(path: &Path, name: &[u8], e: io::Error) -> Problem {
    Problem {
        path: path.to_path_buf(),
        message: format!(
            "extended attribute {} not restored: {e}",
            String::from_utf8_lossy(name)
        ),
        error: false,
    }
}

/// Sets directories' metadata, deepest first (`dirs` lists parents before
/// their contents). Returns how many were done. Durability comes from one
/// `syncfs` of the target at the end of the restore (see [`sync_target`]).
fn finish_dirs(paths: &[PathBuf], dirs: &[(u32, Meta)], owner: bool) -> (u64, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut done = 0;
    for (d, meta) in dirs.iter().rev() {
        let path = &paths[*d as usize];
        let r = (|| {
            if owner {
                std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
            }
            for (name, value) in meta.xattrs() {
                if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                    problems.push(xattr_warning(path, name, e));
                }
            }
            fs::set_permissions(path, Permissions::from_mode(meta.mode & 0o7777))?;
            let t = meta.mtime();
            filetime::set_file_times(path, t, t)
        })();
        match r {
            Ok(()) => done += 1,
            Err(e) => problems.push(Problem::error(
                path,
                format!("cannot set directory metadata: {e}"),
            )),
        }
    }
    (done, problems)
}

/// Makes everything written under `target` durable with one `syncfs(2)` of
/// its filesystem. One call instead of an fsync per file and directory:
/// per-file fsyncs made restores of many small files several times slower,
/// and the restore is only reported done after this returns either way.
fn sync_target(target: &Path) -> io::Result<()> {
    let dir = File::open(target)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}

/// Passes problems to `progress`; errors also go to the stats.
fn report(progress: &dyn RestoreProgress, stats: &mut RestoreStats, problems: &mut Vec<Problem>) {
    for p in problems.drain(..) {
        progress.warning(&p.path, &p.message);
        if p.error {
            stats
                .errors
                .push(format!("{}: {}", p.path.display(), p.message));
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Repo(lifeboat_repo::Error::Task(e.to_string())))
}
