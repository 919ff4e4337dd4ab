//! Restoring a snapshot (or part of it) into a directory.
//!
//! [`restore`] works in four steps. It *selects* entries by the
//! include/exclude patterns of [`RestoreOptions`]; *prepares* the target —
//! refusing, before anything is written, to replace existing files unless
//! asked to, skipping files already identical (`delta`), creating
//! directories, empty files of the right length, symlinks and hard links;
//! *fetches* data grouped by pack, each pack's needed blobs read with as few
//! ranged reads as possible, several packs in parallel under a memory budget,
//! every blob verified before its bytes are written at their offsets in every
//! file that uses them; and sets *directory metadata last*, deepest first, so
//! creating entries does not disturb a directory's mtime and a read-only
//! directory can still be filled. A file's own metadata is set when its last
//! blob has been written; one `syncfs` of the target at the end makes the
//! whole restore durable before it is reported done. Problems with one file (a
//! damaged blob, a permission error) are recorded in
//! [`RestoreStats::errors`] and the others are restored anyway; an
//! [`crate::Error`] means nothing sensible could be done at all. Restoring
//! into a database data directory is the connectors' business, not this
//! module's.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_repo::{
    Id, Index, MasterKey, Node, NodeKind, PackEntry, Repository, Snapshot, open_blob, pack_key,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::find::PathMatcher;
use crate::ls::{TreeMap, join, load_trees};
use crate::progress::RestoreProgress;
use crate::{Error, Result};

/// Two blobs of one pack closer than this are fetched in one ranged read,
/// the bytes between them read and dropped: on object storage a request's
/// latency costs more than reading a quarter mebibyte.
const RANGE_GAP_BYTES: u64 = 256 * 1024;
/// Largest single ranged read: the default pack size, so a wholly needed
/// pack is one request, while one range never takes the whole memory budget.
const RANGE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Largest plaintext of one range: a range's blobs are all decrypted and
/// decompressed before they are written, and source code compresses 4-5x,
/// so a cap on sealed bytes alone let one range hold ~70 MiB.
const RANGE_MAX_RAW_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes held at once by ranges in flight (sealed plus plaintext), in KiB:
/// enough for a few ranges to keep a remote backend busy while keeping a
/// restore's memory flat whatever the snapshot's size.
const MEMORY_BUDGET_KIB: u32 = 64 * 1024;

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
/// [`RestoreStats::errors`] (and to `progress` as warnings).
pub async fn restore(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &dyn RestoreProgress,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let include = PathMatcher::new(&options.include)?;
    let exclude = PathMatcher::new(&options.exclude)?;
    let root = snapshot.record.tree;
    let descend = |p: &[u8]| !exclude.is_match(p);
    let trees = load_trees(repo, vec![(Vec::new(), root)], Some(&descend)).await?;
    let mut entries = Vec::new();
    let select = Select {
        trees: &trees,
        include: &include,
        exclude: &exclude,
        target: &options.target,
    };
    select.walk(root, b"", include.is_empty(), &mut entries);
    drop(trees);
    link_hard_links(&mut entries);

    let index = repo.index().await?;
    let key = repo.key().clone();
    let opts = options.clone();
    let prepared = blocking(move || prepare(entries, &opts, &index, &key)).await??;
    let Prepared {
        files,
        jobs,
        dirs,
        mut stats,
        mut problems,
    } = prepared;
    let planned_bytes: u64 = files.iter().map(|f| f.node.size).sum();
    progress.planned(
        files.len() as u64 + stats.files_restored,
        planned_bytes + stats.bytes_written,
    );
    report(progress, &mut stats, &mut problems);
    progress.restored(stats.files_restored, stats.bytes_written);

    let exec = Arc::new(Exec {
        files,
        key: repo.key().clone(),
        owner: options.owner,
    });
    let budget = Arc::new(Semaphore::new(MEMORY_BUDGET_KIB as usize));
    let mut results = futures::stream::iter(build_ranges(jobs))
        .map(|range| {
            let exec = exec.clone();
            let budget = budget.clone();
            async move {
                let kib = (range.len + range.raw)
                    .div_ceil(1024)
                    .min(MEMORY_BUDGET_KIB as u64) as u32;
                let permit = budget
                    .acquire_many_owned(kib)
                    .await
                    .expect("the budget semaphore is never closed");
                let fetched = repo
                    .storage()
                    .get_range(&pack_key(&range.pack), range.start, range.len)
                    .await
                    .map_err(|e| e.to_string());
                blocking(move || {
                    let out = write_range(&exec, &range, fetched);
                    drop(permit);
                    out
                })
                .await
            }
        })
        .buffer_unordered(repo.concurrency());
    while let Some(out) = results.next().await {
        let mut out = out?;
        stats.files_restored += out.files_done;
        stats.bytes_written += out.bytes;
        report(progress, &mut stats, &mut out.problems);
        progress.restored(stats.files_restored, stats.bytes_written);
    }
    drop(results);

    let owner = options.owner;
    let (dir_count, mut dir_problems) = blocking(move || finish_dirs(&dirs, owner)).await?;
    stats.dirs = dir_count;
    report(progress, &mut stats, &mut dir_problems);
    let target = options.target.clone();
    blocking(move || sync_target(&target))
        .await?
        .map_err(|e| Error::io(&options.target, e))?;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(stats)
}

/// One selected snapshot entry and where it goes.
struct Entry {
    path: PathBuf,
    node: Node,
    /// For a file: the entry (earlier in the list) holding the first name of
    /// its hard-link group, when this is another name for it.
    link_to: Option<usize>,
}

struct Select<'a> {
    trees: &'a TreeMap,
    include: &'a PathMatcher,
    exclude: &'a PathMatcher,
    target: &'a Path,
}

impl Select<'_> {
    /// Appends the selected entries below tree `id` (at snapshot path
    /// `path`) in depth-first order, each directory before its contents.
    /// A directory is kept when it is selected itself or holds something
    /// selected (it is then needed as a parent). Returns whether anything
    /// was appended.
    fn walk(&self, id: Id, path: &[u8], included: bool, out: &mut Vec<Entry>) -> bool {
        let Some(tree) = self.trees.get(&id) else {
            return false;
        };
        let mut any = false;
        for node in &tree.nodes {
            let child = join(path, &node.name);
            if self.exclude.is_match(&child) {
                continue;
            }
            let inc = included || self.include.is_match(&child);
            let mark = out.len();
            if inc || node.kind == NodeKind::Dir {
                out.push(Entry {
                    path: self.target.join(OsStr::from_bytes(&child[1..])),
                    node: node.clone(),
                    link_to: None,
                });
            }
            if node.kind == NodeKind::Dir {
                let below = node
                    .subtree
                    .is_some_and(|sub| self.walk(sub, &child, inc, out));
                if !inc && !below {
                    out.truncate(mark);
                    continue;
                }
            }
            any |= inc || out.len() > mark;
        }
        any
    }
}

/// Files sharing device and inode (with more than one link) were one file
/// at backup time: the first selected name is restored, the others link to it.
fn link_hard_links(entries: &mut [Entry]) {
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, e) in entries.iter_mut().enumerate() {
        let n = &e.node;
        if n.kind == NodeKind::File && n.links > 1 {
            match first.get(&(n.dev, n.inode)) {
                Some(&j) => e.link_to = Some(j),
                None => {
                    first.insert((n.dev, n.inode), i);
                }
            }
        }
    }
}

/// A file whose content is being written.
struct FileState {
    path: PathBuf,
    node: Node,
    /// Blob writes still to do; whoever brings it to zero finishes the file.
    remaining: AtomicUsize,
    /// Set on the first problem; later writes to the file are skipped.
    failed: AtomicBool,
}

/// One blob to fetch and every place it goes.
struct BlobJob {
    pack: Id,
    entry: PackEntry,
    /// (index into the file list, byte offset in that file).
    targets: Vec<(usize, u64)>,
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
    jobs: HashMap<Id, BlobJob>,
    /// Directories in depth-first order, for metadata at the end.
    dirs: Vec<(PathBuf, Node)>,
    stats: RestoreStats,
    problems: Vec<Problem>,
}

/// Checks the target for conflicts, then creates everything but file
/// content, and plans the blob writes. Runs on a blocking thread.
fn prepare(
    entries: Vec<Entry>,
    options: &RestoreOptions,
    index: &Index,
    key: &MasterKey,
) -> Result<Prepared> {
    let existing = entries
        .iter()
        .map(|e| match fs::symlink_metadata(&e.path) {
            Ok(m) => Ok(Some(m)),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(Error::io(&e.path, err)),
        })
        .collect::<Result<Vec<_>>>()?;
    if !(options.overwrite || options.delta) {
        let conflict = entries.iter().zip(&existing).find(|(e, m)| match m {
            None => false,
            Some(m) => e.node.kind != NodeKind::Dir || !m.is_dir(),
        });
        if let Some((e, _)) = conflict {
            return Err(Error::Invalid(format!(
                "{} already exists in the restore target; nothing was written. Use --overwrite to replace \
                 existing files, or --delta to keep identical files and replace the others",
                e.path.display()
            )));
        }
    }
    let identical = if options.delta {
        find_identical(&entries, &existing, index, key)
    } else {
        vec![false; entries.len()]
    };
    fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;

    let mut p = Prepared::default();
    // Entry index -> whether it was created (hard links need their first name).
    let mut ok = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        let fail = |p: &mut Prepared, msg: String| p.problems.push(Problem::error(&e.path, msg));
        let old = existing[i].as_ref();
        match e.node.kind {
            NodeKind::Dir => {
                let made = if old.is_some_and(|m| m.is_dir()) {
                    Ok(())
                } else {
                    clear(&e.path, old).and_then(|_| fs::create_dir(&e.path))
                };
                if let Err(err) = made {
                    fail(&mut p, format!("cannot create directory: {err}"));
                    continue;
                }
                p.dirs.push((e.path.clone(), e.node.clone()));
                ok[i] = true;
            }
            NodeKind::Symlink => {
                let target = OsStr::from_bytes(e.node.link_target.as_deref().unwrap_or_default());
                let same = options.delta
                    && old.is_some_and(|m| m.file_type().is_symlink())
                    && fs::read_link(&e.path).is_ok_and(|t| t.as_os_str() == target);
                let made = if same {
                    Ok(())
                } else {
                    clear(&e.path, old).and_then(|_| std::os::unix::fs::symlink(target, &e.path))
                };
                match made.and_then(|_| {
                    set_symlink_metadata(&e.path, &e.node, options.owner, &mut p.problems)
                }) {
                    Ok(()) => {
                        p.stats.symlinks += 1;
                        ok[i] = true;
                    }
                    Err(err) => fail(&mut p, format!("cannot restore symlink: {err}")),
                }
            }
            NodeKind::File => {
                if let Some(j) = e.link_to {
                    if !ok[j] {
                        let first = entries[j].path.display();
                        fail(
                            &mut p,
                            format!("not linked: its other name {first} could not be restored"),
                        );
                        continue;
                    }
                    let first = &entries[j].path;
                    let same = options.delta
                        && old.is_some_and(|m| {
                            fs::symlink_metadata(first)
                                .is_ok_and(|f| (f.dev(), f.ino()) == (m.dev(), m.ino()))
                        });
                    let made = if same {
                        Ok(())
                    } else {
                        clear(&e.path, old).and_then(|_| fs::hard_link(first, &e.path))
                    };
                    match made {
                        Ok(()) => p.stats.hardlinks += 1,
                        Err(err) => fail(
                            &mut p,
                            format!("cannot create hard link to {}: {err}", first.display()),
                        ),
                    }
                    continue;
                }
                if identical[i] {
                    let done = File::open(&e.path).and_then(|f| {
                        set_file_metadata(&f, &e.path, &e.node, options.owner, &mut p.problems)
                    });
                    match done {
                        Ok(()) => {
                            p.stats.files_skipped_identical += 1;
                            ok[i] = true;
                        }
                        Err(err) => fail(&mut p, format!("cannot set metadata: {err}")),
                    }
                    continue;
                }
                match plan_file(&mut p, e, old, index, options.owner) {
                    Ok(()) => ok[i] = true,
                    Err(msg) => fail(&mut p, msg),
                }
            }
        }
    }
    Ok(p)
}

/// Creates one file (empty, at its final length, so runs of zeros can be
/// left as holes) and adds its blobs to the plan. An empty file is finished
/// at once.
fn plan_file(
    p: &mut Prepared,
    e: &Entry,
    old: Option<&fs::Metadata>,
    index: &Index,
    owner: bool,
) -> Result<(), String> {
    // Locate every blob first, so a file with a missing blob is not created
    // half-planned.
    let mut located = Vec::with_capacity(e.node.content.len());
    for id in &e.node.content {
        let loc = index.get(id).ok_or_else(|| {
            format!(
                "blob {id} is not in the repository index (run `lifeboat check`); file not restored"
            )
        })?;
        located.push(*loc);
    }
    // A fresh file (never one opened through an existing name) so a symlink
    // or another hard link in the target is never written through.
    let file = clear(&e.path, old)
        .and_then(|_| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&e.path)
        })
        .and_then(|f| f.set_len(e.node.size).map(|_| f))
        .map_err(|err| format!("cannot create file: {err}"))?;
    if located.is_empty() {
        set_file_metadata(&file, &e.path, &e.node, owner, &mut p.problems)
            .map_err(|err| format!("cannot set metadata: {err}"))?;
        p.stats.files_restored += 1;
        return Ok(());
    }
    let f = p.files.len();
    let mut offset = 0u64;
    for loc in &located {
        p.jobs
            .entry(loc.entry.id)
            .or_insert_with(|| BlobJob {
                pack: loc.pack,
                entry: loc.entry,
                targets: Vec::new(),
            })
            .targets
            .push((f, offset));
        offset += loc.entry.raw_length as u64;
    }
    p.files.push(FileState {
        path: e.path.clone(),
        node: Node {
            content: Vec::new(),
            ..e.node.clone()
        },
        remaining: AtomicUsize::new(located.len()),
        failed: AtomicBool::new(false),
    });
    Ok(())
}

/// Removes a non-directory in the way of a new entry. A directory in the
/// way is an error: replacing it would delete a whole tree the user did
/// not ask about.
fn clear(path: &Path, old: Option<&fs::Metadata>) -> io::Result<()> {
    match old {
        None => Ok(()),
        Some(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way (remove it to restore this entry)",
        )),
        Some(_) => match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
    }
}

/// For `delta`: which entries are regular files already in the target with
/// the snapshot's content, checked in parallel (hashing is CPU-bound).
fn find_identical(
    entries: &[Entry],
    existing: &[Option<fs::Metadata>],
    index: &Index,
    key: &MasterKey,
) -> Vec<bool> {
    let candidates: Vec<usize> = (0..entries.len())
        .filter(|&i| {
            let e = &entries[i];
            e.node.kind == NodeKind::File
                && e.link_to.is_none()
                && existing[i]
                    .as_ref()
                    .is_some_and(|m| m.file_type().is_file() && m.len() == e.node.size)
        })
        .collect();
    let mut out = vec![false; entries.len()];
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
                    let Some(&i) = candidates.get(k) else { break };
                    let same = same_content(&entries[i].path, &entries[i].node, index, key)
                        .unwrap_or(false);
                    results[k].store(same, Ordering::Relaxed);
                }
            });
        }
    });
    for (k, &i) in candidates.iter().enumerate() {
        out[i] = results[k].load(Ordering::Relaxed);
    }
    out
}

/// Cuts the existing file at the snapshot's blob boundaries and compares
/// each piece's keyed id with the snapshot's blob id.
fn same_content(path: &Path, node: &Node, index: &Index, key: &MasterKey) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buf = Vec::new();
    for id in &node.content {
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

/// A run of blobs of one pack fetched with one ranged read.
struct Range {
    pack: Id,
    start: u64,
    len: u64,
    /// Plaintext bytes of the range's blobs.
    raw: u64,
    jobs: Vec<BlobJob>,
}

/// Groups blob jobs by pack and merges neighbours into ranged reads.
fn build_ranges(jobs: HashMap<Id, BlobJob>) -> Vec<Range> {
    let mut by_pack: HashMap<Id, Vec<BlobJob>> = HashMap::new();
    for job in jobs.into_values() {
        by_pack.entry(job.pack).or_default().push(job);
    }
    let mut packs: Vec<(Id, Vec<BlobJob>)> = by_pack.into_iter().collect();
    packs.sort_by_key(|(id, _)| *id);
    let mut out = Vec::new();
    for (pack, mut jobs) in packs {
        jobs.sort_by_key(|j| j.entry.offset);
        let mut current: Option<Range> = None;
        for job in jobs {
            let start = job.entry.offset as u64;
            let end = start + job.entry.length as u64;
            match current.as_mut() {
                Some(r)
                    if start <= r.start + r.len + RANGE_GAP_BYTES
                        && end - r.start <= RANGE_MAX_BYTES
                        && r.raw + job.entry.raw_length as u64 <= RANGE_MAX_RAW_BYTES =>
                {
                    r.len = r.len.max(end - r.start);
                    r.raw += job.entry.raw_length as u64;
                    r.jobs.push(job);
                }
                _ => {
                    out.extend(current.take());
                    current = Some(Range {
                        pack,
                        start,
                        len: end - start,
                        raw: job.entry.raw_length as u64,
                        jobs: vec![job],
                    });
                }
            }
        }
        out.extend(current);
    }
    out
}

/// State shared by the range writers.
struct Exec {
    files: Vec<FileState>,
    key: MasterKey,
    owner: bool,
}

#[derive(Default)]
struct RangeOutcome {
    bytes: u64,
    files_done: u64,
    problems: Vec<Problem>,
}

impl Exec {
    /// Marks a file failed; only its first problem is reported.
    fn fail(&self, f: usize, msg: impl FnOnce() -> String, out: &mut RangeOutcome) {
        let st = &self.files[f];
        if !st.failed.swap(true, Ordering::AcqRel) {
            out.problems.push(Problem::error(&st.path, msg()));
        }
    }
}

/// Opens every blob of a fetched range and writes it wherever it goes, one
/// file at a time (so at most one file handle is open per range whatever
/// the number of small files in a pack). Runs on a blocking thread.
fn write_range(exec: &Exec, range: &Range, fetched: Result<Bytes, String>) -> RangeOutcome {
    let mut out = RangeOutcome::default();
    // Decrypt and verify each blob once, however many places use it.
    let plains: Vec<Result<(Vec<u8>, bool), String>> = range
        .jobs
        .iter()
        .map(|job| {
            let bytes = fetched
                .as_ref()
                .map_err(|e| format!("cannot read pack {}: {e}", range.pack))?;
            let at = (job.entry.offset as u64 - range.start) as usize;
            let sealed = &bytes[at..at + job.entry.length as usize];
            let plain = open_blob(&exec.key, &job.entry, sealed)
                .map_err(|e| format!("damaged data in pack {}: {e}", range.pack))?;
            let zero = plain.iter().all(|b| *b == 0);
            Ok((plain, zero))
        })
        .collect();
    let mut writes: Vec<(usize, u64, usize)> = Vec::new();
    for (j, job) in range.jobs.iter().enumerate() {
        writes.extend(job.targets.iter().map(|&(f, off)| (f, off, j)));
    }
    writes.sort_unstable();
    for group in writes.chunk_by(|a, b| a.0 == b.0) {
        let f = group[0].0;
        let st = &exec.files[f];
        let mut handle: Option<File> = None;
        for &(_, offset, j) in group {
            if st.failed.load(Ordering::Acquire) {
                break;
            }
            let (data, zero) = match &plains[j] {
                Ok(p) => p,
                Err(msg) => {
                    exec.fail(f, || msg.clone(), &mut out);
                    break;
                }
            };
            out.bytes += data.len() as u64;
            // The file was created empty at its final length, so zeros are
            // already there (as a hole, where the filesystem supports it).
            if *zero {
                continue;
            }
            let written =
                open_for_write(&mut handle, &st.path).and_then(|h| h.write_all_at(data, offset));
            if let Err(err) = written {
                exec.fail(f, || format!("cannot write: {err}"), &mut out);
                break;
            }
        }
        let before = st.remaining.fetch_sub(group.len(), Ordering::AcqRel);
        if before == group.len() && !st.failed.load(Ordering::Acquire) {
            let finished = open_for_write(&mut handle, &st.path).and_then(|h| {
                set_file_metadata(h, &st.path, &st.node, exec.owner, &mut out.problems)
            });
            match finished {
                Ok(()) => out.files_done += 1,
                Err(err) => exec.fail(f, || format!("cannot set metadata: {err}"), &mut out),
            }
        }
    }
    out
}

fn open_for_write<'a>(handle: &'a mut Option<File>, path: &Path) -> io::Result<&'a File> {
    if handle.is_none() {
        *handle = Some(OpenOptions::new().write(true).open(path)?);
    }
    Ok(handle.as_ref().expect("just opened"))
}

fn file_time(node: &Node) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(node.mtime.secs, node.mtime.nanos)
}

/// Sets a file's metadata through its handle. Order
/// matters: chown first (it clears set-id bits), xattrs before chmod (a
/// read-only mode would forbid them), times last (nothing after touches
/// the mtime). The access time is set to the mtime: snapshots do not keep it.
fn set_file_metadata(
    file: &File,
    path: &Path,
    node: &Node,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid))?;
    }
    for (name, value) in &node.xattrs {
        if let Err(e) = xattr::FileExt::set_xattr(file, OsStr::from_bytes(name), value) {
            problems.push(xattr_warning(path, name, e));
        }
    }
    file.set_permissions(Permissions::from_mode(node.mode & 0o7777))?;
    let t = file_time(node);
    filetime::set_file_handle_times(file, Some(t), Some(t))
}

fn set_symlink_metadata(
    path: &Path,
    node: &Node,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    }
    for (name, value) in &node.xattrs {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
            problems.push(xattr_warning(path, name, e));
        }
    }
    let t = file_time(node);
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

/// Sets directories' metadata, deepest first. Returns how many were done.
/// Durability comes from one `syncfs` of the target at the end of the
/// restore (see [`sync_target`]).
fn finish_dirs(dirs: &[(PathBuf, Node)], owner: bool) -> (u64, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut done = 0;
    for (path, node) in dirs.iter().rev() {
        let r = (|| {
            if owner {
                std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
            }
            for (name, value) in &node.xattrs {
                if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                    problems.push(xattr_warning(path, name, e));
                }
            }
            fs::set_permissions(path, Permissions::from_mode(node.mode & 0o7777))?;
            let t = file_time(node);
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
