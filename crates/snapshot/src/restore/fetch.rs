//! The data step of a restore: fetching blobs and writing them.
//!
//! Owns the blob writes planned by `prepare` from the moment they are cut
//! into ranged reads ([`build_ranges`], with the repository's planner and
//! [`RangeLimits::RESTORE`]) until every file is finished: the ranges are
//! read through a [`PackReader`] (several in flight under
//! [`MEMORY_BUDGET_KIB`]), and a few dedicated writer threads open each
//! blob once and write it at its offsets in every file that uses it,
//! creating files lazily and finishing (metadata, fsync) or removing each
//! file when its last write is done. It does not decide what is restored
//! (`select`, `prepare`), nor touch directories (`metadata`); slicing packs
//! and verifying blobs is the repository's ([`FetchedRange::open`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use lifeboat_repo::{
    BlobLocation, BlobScratch, BlobType, FetchedRange, Id, Index, PackEntry, PackRange, PackReader,
    RangeLimits, Repository, another_copy_may_help, plan_ranges,
};

use super::handles::{self, Dirs};
use super::metadata::set_file_metadata;
use super::prepare::{FileState, create_sized, file_path, storage_full};
use super::select::Span;
use super::{Problem, RestoreStats, blocking, report};
use crate::progress::RestoreProgress;
use crate::{Error, Result};

/// Bytes held at once by ranges in flight, in KiB: each range's sealed
/// bytes plus what opening its largest blob takes (blobs are opened one at
/// a time). Keeps a restore's memory flat whatever the snapshot's size.
const MEMORY_BUDGET_KIB: u32 = 24 * 1024;

/// One blob write: a blob of a pack, and where it goes in which file.
pub(super) struct Write {
    pub(super) entry: PackEntry,
    /// Index into the pack list.
    pub(super) pack: u32,
    /// Index into the file list.
    pub(super) file: u32,
    /// Byte offset in the file.
    pub(super) at: u64,
}

/// Sorts the writes by pack and offset (the writes of one blob, however
/// many places use it, end up next to each other) and cuts them into
/// ranged reads with the repository's planner and restore's limits.
pub(super) fn build_ranges(writes: &mut [Write]) -> Vec<PackRange> {
    writes.sort_unstable_by_key(|w| (w.pack, w.entry.offset, w.entry.id, w.file, w.at));
    plan_ranges(writes, &RangeLimits::RESTORE, |w| (w.pack, &w.entry))
}

fn same_blob(a: &Write, b: &Write) -> bool {
    a.pack == b.pack && a.entry.offset == b.entry.offset && a.entry.id == b.entry.id
}

/// The blob writes of one pass over the packs, and the packs they read.
/// The first pass reads each blob at its first indexed location; a blob
/// whose pack turned out missing or damaged there is read in a further
/// pass from its next location (see [`write_data`]).
#[derive(Default)]
pub(super) struct Pass {
    /// Sorted by [`build_ranges`].
    pub(super) writes: Vec<Write>,
    pub(super) packs: Vec<Id>,
}

/// A blob write whose read failed at its location in a way another copy
/// may not share (see [`another_copy_may_help`]), and which has another
/// indexed location: it is done in the next pass instead.
struct Deferred {
    /// Index into the pass's writes.
    write: usize,
    /// Why this location failed.
    reason: String,
}

/// Fetches every range and writes its blobs, several ranges in flight
/// under [`MEMORY_BUDGET_KIB`]; adds what was done to `stats`. A blob whose
/// pack is missing or damaged is read from another pack that holds it, in
/// a further pass over what is left, with a warning naming the bad pack;
/// only a blob with no readable copy fails its files. A full target stops
/// it: what is unfinished is removed and the error returned.
pub(super) async fn write_data(
    repo: &Repository,
    fetcher: &Fetcher<'_>,
    exec: Arc<Exec>,
    mut pass: Pass,
    progress: &dyn RestoreProgress,
    stats: &Mutex<RestoreStats>,
) -> Result<()> {
    let tier = repo.tier_of(BlobType::Data);
    if !pass.writes.is_empty() {
        // Every range is of data blobs, so all come from the data packs'
        // tier: opened here, only when there is something to fetch, so
        // that failing to open it stops the restore rather than failing
        // every file.
        repo.tier_storage(tier).await?;
    }
    let reader = &fetcher.reader;
    let writers = &fetcher.writers;
    let slots = &fetcher.slots;
    let mut fatal = None;
    // Each pass moves every deferred blob one location further down its
    // index entry, so there are at most as many passes as a blob has
    // copies.
    while !pass.writes.is_empty() {
        let ranges = build_ranges(&mut pass.writes);
        let this = Arc::new(pass);
        let mut deferred = Vec::new();
        let mut results = futures::stream::iter(ranges)
            .map(|range| {
                let exec = exec.clone();
                let this = this.clone();
                async move {
                    if exec.abort.load(Ordering::Acquire) {
                        return Ok(RangeOutcome::default());
                    }
                    // First come, first served: the earlier batch's ranges
                    // go first.
                    let Ok(_slot) = slots.acquire().await else {
                        return Ok(RangeOutcome::default());
                    };
                    let permit = reader.reserve(range.memory()).await;
                    if exec.abort.load(Ordering::Acquire) {
                        return Ok(RangeOutcome::default());
                    }
                    let pack = this.packs[range.pack as usize];
                    let fetched = reader
                        .read(tier, pack, range.start, range.len, permit)
                        .await
                        .map_err(|e| ReadFailure {
                            other_copy_may_help: another_copy_may_help(&e),
                            message: e.to_string(),
                        });
                    writers
                        .run(move || write_range(&exec, &this, &range, fetched))
                        .await
                }
            })
            .buffer_unordered(repo.concurrency());
        while let Some(out) = results.next().await {
            let mut out = out?;
            if fatal.is_none() {
                fatal = out.fatal.take();
            }
            deferred.append(&mut out.deferred);
            {
                let mut stats = lock(stats);
                stats.files_restored += out.files_done;
                stats.bytes_written += out.bytes;
                report(progress, &mut stats, &mut out.problems);
                progress.restored(stats.files_restored, stats.bytes_written);
            }
        }
        drop(results);
        if fatal.is_some() {
            break;
        }
        let mut warnings = Vec::new();
        pass = exec.next_pass(&this, deferred, &mut warnings);
        report(progress, &mut lock(stats), &mut warnings);
    }
    if let Some(err) = fatal {
        // Every range has returned: what is unfinished stays unfinished.
        let mut left = blocking(move || remove_unfinished(&exec)).await?;
        report(progress, &mut lock(stats), &mut left);
        return Err(err);
    }
    Ok(())
}

/// The restore's stats, shared by the batches in flight (never held
/// across an await).
pub(super) fn lock(stats: &Mutex<RestoreStats>) -> MutexGuard<'_, RestoreStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the batches of one restore fetch through: one reader (so one
/// memory budget, however many batches are in flight), one set of writer
/// threads, and as many ranges in flight as the storage takes connections
/// (as a restore in one batch has), not that many per batch: two batches'
/// worth of reads spread the buffers over more threads, and the allocator
/// kept 15-45 MiB more of them on linux-source.
pub(super) struct Fetcher<'a> {
    reader: PackReader<'a>,
    writers: Threads,
    slots: tokio::sync::Semaphore,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(repo: &'a Repository) -> Result<Self> {
        Ok(Fetcher {
            reader: PackReader::new(repo, MEMORY_BUDGET_KIB),
            writers: Threads::writers()?,
            slots: tokio::sync::Semaphore::new(repo.concurrency()),
        })
    }
}

/// State shared by the range writers.
pub(super) struct Exec {
    /// The batch's files.
    pub(super) files: Vec<FileState>,
    /// Where else each blob is, for reading it from another pack when its
    /// first one is missing or damaged.
    pub(super) index: Arc<Index>,
    pub(super) dirs: Arc<Dirs>,
    /// The selection's names (see [`super::select::Selection::names`]).
    pub(super) names: Arc<Vec<u8>>,
    pub(super) owner: bool,
    /// See [`RestoreOptions::sync_each_file`].
    pub(super) sync_each: bool,
    /// Set when the target is full: writers stop where they are, and what
    /// is unfinished is removed.
    pub(super) abort: AtomicBool,
}

/// A failed ranged read, as the writer threads see it.
struct ReadFailure {
    message: String,
    /// See [`another_copy_may_help`].
    other_copy_may_help: bool,
}

#[derive(Default)]
struct RangeOutcome {
    bytes: u64,
    files_done: u64,
    problems: Vec<Problem>,
    /// Blob writes to do again from another copy.
    deferred: Vec<Deferred>,
    /// What stops the whole restore (a full target).
    fatal: Option<Error>,
}

/// An open file of a range writer, with its number.
type Handle = Option<(u32, File)>;

impl Exec {
    fn path(&self, f: u32) -> PathBuf {
        file_path(&self.dirs, &self.names, &self.files[f as usize])
    }

    /// The indexed location of data blob `id` that comes after its copy in
    /// `pack`, if it has one.
    fn next_location(&self, pack: &Id, id: &Id) -> Option<BlobLocation> {
        let locations = self.index.locations(BlobType::Data, id);
        let at = locations.iter().position(|l| l.pack == *pack)?;
        locations.get(at + 1).copied()
    }

    /// The pass that reads every deferred write of `done` from its blob's
    /// next location; one warning per pack that failed, naming it.
    fn next_pass(&self, done: &Pass, deferred: Vec<Deferred>, warnings: &mut Vec<Problem>) -> Pass {
        let mut next = Pass::default();
        let mut numbers: HashMap<Id, u32> = HashMap::new();
        let mut bad: HashMap<Id, (u32, String, u64)> = HashMap::new();
        for d in deferred {
            let w = &done.writes[d.write];
            let from = done.packs[w.pack as usize];
            let Some(loc) = self.next_location(&from, &w.entry.id) else {
                // write_range defers only a blob with another location.
                continue;
            };
            let pack = *numbers.entry(loc.pack).or_insert_with(|| {
                next.packs.push(loc.pack);
                (next.packs.len() - 1) as u32
            });
            bad.entry(from).or_insert((w.file, d.reason, 0)).2 += 1;
            next.writes.push(Write {
                entry: loc.entry,
                pack,
                file: w.file,
                at: w.at,
            });
        }
        for (pack, (file, reason, count)) in bad {
            warnings.push(Problem::warning(
                &self.path(file),
                format!(
                    "pack {pack} is missing or damaged ({reason}): {count} blob writes read \
                     from another pack that holds the same blobs (run `lifeboat check`)"
                ),
            ));
        }
        next
    }

    /// Marks a file failed; only its first problem is reported. The file is
    /// removed once no write to it is left.
    fn fail(&self, f: u32, msg: impl FnOnce() -> String, out: &mut RangeOutcome) {
        if !self.files[f as usize].failed.swap(true, Ordering::AcqRel) {
            out.problems.push(Problem::error(&self.path(f), msg()));
        }
    }

    /// The file's handle, creating the file if no writer has yet (writers
    /// that need it meanwhile wait for that). Created and opened again in
    /// its directory's handle, never following a symlink, and only if its
    /// name is still the inode that was created.
    fn open<'a>(&self, handle: &'a mut Handle, f: u32) -> io::Result<&'a File> {
        if handle.as_ref().is_none_or(|(g, _)| *g != f) {
            *handle = None;
            let st = &self.files[f as usize];
            let name = OsStr::from_bytes(st.name.of(&self.names));
            let dir = self.dirs.get(st.dir)?;
            let mut fresh = None;
            let created = st
                .created
                .get_or_init(|| match create_sized(&dir, name, st.size) {
                    Ok((file, id)) => {
                        fresh = Some(file);
                        Ok(id)
                    }
                    Err(e) => Err(Box::new((e.kind(), format!("cannot create file: {e}")))),
                });
            let want = match created {
                Ok(id) => *id,
                Err(e) => return Err(io::Error::new(e.0, e.1.clone())),
            };
            let file = match fresh {
                Some(file) => file,
                None => handles::open_file(&dir, name, true, Some(want))?.0,
            };
            *handle = Some((f, file));
        }
        Ok(&handle.as_ref().expect("just opened").1)
    }

    /// Called by whoever did the file's last write: sets its metadata, or
    /// removes it if some data could not be written (its other names, if
    /// it has any, are made only after every batch's data is written).
    fn finish(&self, f: u32, handle: &mut Handle, out: &mut RangeOutcome) {
        let st = &self.files[f as usize];
        let path = self.path(f);
        if st.failed.load(Ordering::Acquire) {
            *handle = None;
            remove_partial(&self.dirs, &self.names, st.dir, st.name, &mut out.problems);
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

/// Removes a file whose data could not all be written (in its directory's
/// handle), so no file is left at its real name with missing data.
pub(super) fn remove_partial(
    dirs: &Dirs,
    names: &[u8],
    dir: u32,
    name: Span,
    problems: &mut Vec<Problem>,
) {
    let name = OsStr::from_bytes(name.of(names));
    if let Err(e) = dirs.get(dir).and_then(|d| handles::remove(&d, name)) {
        problems.push(Problem::error(
            &dirs.join(dir, name),
            format!("cannot remove the partially restored file: {e}"),
        ));
    }
}

/// After the restore was stopped: removes every file not finished.
pub(super) fn remove_unfinished(exec: &Exec) -> Vec<Problem> {
    let mut problems = Vec::new();
    for st in &exec.files {
        if st.remaining.load(Ordering::Acquire) > 0 {
            remove_partial(&exec.dirs, &exec.names, st.dir, st.name, &mut problems);
        }
    }
    problems
}

/// Dedicated threads that run jobs sent to them: the writers that open
/// fetched blobs and write them (a few), and the one that creates each
/// batch's entries and plans its writes (see `super::restore`). Dedicated
/// rather than the shared blocking pool: an allocator keeps freed memory
/// per arena, and a thread keeps its arena (glibc gives each thread that
/// allocates its own; jemalloc spreads threads over a few), so plaintext
/// passing through every pool thread in turn cost several times the memory
/// budget in resident memory, and batch plans made on whichever pool
/// thread was free each left their freed pages in another arena. Writes
/// are mostly page-cache copies and syscalls, so a few threads keep up
/// with the fetches.
pub(super) struct Threads {
    jobs: crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>,
}

impl Threads {
    /// The writers: as many as there are cores, 2 to 4.
    fn writers() -> Result<Self> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        Threads::start("lifeboat-restore", n)
    }

    pub(super) fn start(name: &str, n: usize) -> Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for _ in 0..n {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // Ends when the restore drops its sender and the queue
                    // is empty.
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })
                .map_err(|e| Error::Repo(lifeboat_repo::Error::Internal(e.to_string())))?;
        }
        Ok(Threads { jobs })
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            // The receiver is gone only if the restore was dropped.
            let _ = tx.send(f());
        });
        let lost = || {
            Error::Repo(lifeboat_repo::Error::Internal(
                "a restore thread failed".into(),
            ))
        };
        self.jobs.send(job).map_err(|_| lost())?;
        rx.await.map_err(|_| lost())
    }
}

/// Opens the blobs of a fetched range one at a time, in pack order, and
/// writes each wherever it goes (a file's blobs are mostly neighbours in a
/// pack, so it is opened once per range). Runs on a blocking thread.
fn write_range(
    exec: &Exec,
    pass: &Pass,
    range: &PackRange,
    fetched: std::result::Result<FetchedRange, ReadFailure>,
) -> RangeOutcome {
    let mut out = RangeOutcome::default();
    let pack = pass.packs[range.pack as usize];
    let mut handle: Handle = None;
    // Each blob is written where it belongs and dropped, so all of them
    // are opened into the same two buffers.
    let mut scratch = BlobScratch::default();
    let mut first = range.items.start;
    for blob in pass.writes[range.items.clone()].chunk_by(same_blob) {
        let at = first;
        first += blob.len();
        if exec.abort.load(Ordering::Acquire) {
            return out;
        }
        let entry = &blob[0].entry;
        let live = blob
            .iter()
            .any(|w| !exec.files[w.file as usize].failed.load(Ordering::Acquire));
        // Decrypt and verify each blob once, however many places use it.
        let plain = live.then(|| {
            let fetched = fetched.as_ref().map_err(|e| {
                (
                    format!("cannot read pack {pack}: {}", e.message),
                    e.other_copy_may_help,
                )
            })?;
            let plain = fetched
                .open_in(entry, &mut scratch)
                .map_err(|e| (format!("damaged data in pack {pack}: {e}"), true))?;
            let zero = plain.iter().all(|b| *b == 0);
            Ok::<_, (String, bool)>((plain, zero))
        });
        if let Some(Err((reason, true))) = &plain
            && exec.next_location(&pack, &entry.id).is_some()
        {
            // Read again from another copy in the next pass: the files
            // stay unfinished until then.
            out.deferred.extend((at..first).map(|write| Deferred {
                write,
                reason: reason.clone(),
            }));
            continue;
        }
        let plain = plain.map(|p| p.map_err(|(reason, _)| format!("not restored: {reason}")));
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
