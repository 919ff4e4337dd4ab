//! Restoring a snapshot (or part of it) into a directory.
//!
//! [`restore`] works in four steps, a *part* of the snapshot at a time. It
//! *selects* entries by the include/exclude patterns of
//! [`RestoreOptions`], walking the snapshot's trees depth first (read
//! ahead, several in flight) and keeping of each entry only what restoring
//! it needs, a part of [`RestoreOptions::part_entries`] entries at a time
//! (`select::Walker`); only the directories on the walk's path and the
//! trees read ahead are held between parts. For each part it looks at the
//! target (a target that already held something was checked whole first,
//! so a restore it refuses writes nothing: see `check_target`), finding
//! files already identical (`delta`); it creates every entry that needs no
//! data (directories, parents first, symlinks, empty and identical files)
//! and puts the files with data in the order of their first blob's pack
//! and offset. Then it works through those files in *batches*
//! ([`RestoreOptions::batch_files`]): it *prepares* a batch — creating
//! empty files of the right length where they must exist before their
//! data — and *fetches* the batch's data grouped by pack, each pack's
//! needed blobs read with as few ranged reads as possible, several ranges
//! in parallel under a memory budget, every blob verified (on a few
//! dedicated writer threads) before its bytes are written at their offsets
//! in every file of the batch that uses them. The batches overlap, across
//! parts too: the next batch is prepared (and the next part walked) while
//! the data of the one before is fetched, and its reads start before that
//! one's last reads end, so the reads and the writers never drain between
//! batches; at most two batches are held at once. Cut in pack order,
//! batches read a pack twice only where one ends inside it (and a blob
//! used by files of two batches once in each); a part is a stretch of the
//! walk, which is the order a backup packed the files in, so a pack is
//! read again mostly where a part ends inside it (or, for a snapshot whose
//! unchanged files point into older backups' packs, once per part that
//! needs blobs of it). Every name of a hard-linked file is held apart and
//! restored in the last part; once its data is written, it makes the
//! *other names of hard-linked files* (none for a file whose data failed,
//! which was removed). It sets *directory metadata last*, deepest first,
//! so creating entries does not disturb a directory's mtime and a
//! read-only directory can still be filled. A file's own metadata is set
//! when its last blob has been written;
//! one `syncfs` of the target at the end makes the whole restore durable
//! before it is reported done (or, with [`RestoreOptions::sync_each_file`],
//! an fsync of each file as it completes and of each directory at the end).
//!
//! [`plan()`] answers, before any of that, what a restore will read: which
//! packs, in which tier, how many bytes. It reads only trees and the index
//! (never pack data, so never the cold tier) and writes nothing, which is
//! what `restore --plan-only` prints for a repository with a cold tier.
//!
//! Memory is bounded by the options, not by the number of files, beyond
//! the index, the directories and the hard-linked files: a part's entries,
//! about 81 bytes per entry of one blob (its entry, 72 bytes; its name; 4
//! bytes per blob, the blob's position in the index rather than its id),
//! the pack order of its files with data (4 bytes a file; 12 while it is
//! sorted) and (only where the target already holds something) what is at
//! each existing place, held while the part's batches are made (about
//! 10 MiB at the default 131,072 entries); plus, for the whole restore,
//! the target path, parent and metadata of every restored directory and
//! every name of the hard-linked files. What the plan adds on top — each
//! file's write state and each blob write, about 100 and 64 bytes — is
//! held for at most two batches at a time: 2 × (100 B × `batch_files` +
//! 64 B × 4 × `batch_files`), at most 2 × 11 MiB at the default 32,768
//! files (every batch is built on one dedicated thread, so the allocator
//! reuses a freed batch's memory for the next), and the data path, shared
//! by both batches, holds at most `fetch::MEMORY_BUDGET_KIB` of sealed
//! bytes and plaintext. Resident memory is mostly not this but freed
//! memory the allocator keeps per arena (docs/performance.md, "Restore in
//! batches").
//!
//! Problems with one file (a damaged blob, a permission error) are recorded
//! in [`RestoreStats::errors`] and the others are restored anyway; a file
//! whose data could not be written is removed rather than left at its real
//! name with holes in it. A directory whose tree is damaged is created
//! empty and reported the same way (see `select`). An [`crate::Error`] means nothing sensible could
//! be done at all — including a full target filesystem (an
//! [`Error::Io`] whose source is of kind [`io::ErrorKind::StorageFull`](std::io::ErrorKind::StorageFull)),
//! after which the files not finished are removed. Restoring into a
//! database data directory is the connectors' business, not this module's.
//!
//! The steps live in one module each: `select` (patterns, the depth-first
//! tree walk in parts, the compact selection), `prepare` (per part target
//! scan, conflicts, `delta`, then per batch creating everything but file
//! content and planning the blob writes), `fetch`
//! (ranged reads through [`lifeboat_repo::PackReader`] and the writer
//! threads), `metadata` (setting metadata, directories last, and the final
//! sync), `plan` (the [`RestorePlan`] of `--plan-only`) and `verify`
//! (reading a restored target back, `--verify`). This file holds
//! the options, the stats and the entry point that runs the steps in order.

mod fetch;
mod handles;
mod metadata;
mod plan;
mod prepare;
mod select;
mod verify;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lifeboat_repo::{Repository, Snapshot};
use serde::Serialize;

use crate::progress::RestoreProgress;
use crate::{Error, Result};

pub use plan::{PlannedPack, RestorePlan, plan};
pub(crate) use prepare::same_content;
pub use verify::{VerifyReport, verify};

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
    pub include: Vec<OsString>,
    /// Skip entries matching one of these (and everything below them); same
    /// syntax as `include`, and exclusion wins.
    pub exclude: Vec<OsString>,
    /// Replace existing files, symlinks and non-directories in the way.
    pub overwrite: bool,
    /// Leave files whose content already matches the snapshot untouched
    /// (only their metadata is set) and replace those that differ.
    pub delta: bool,
    /// Restore numeric owners (needs root, or the files' own uid). When
    /// restoring as root from a snapshot not made by root of a host (see
    /// [`Snapshot`]'s `record.creator`), owners are not restored unless
    /// `trust_snapshot_owner` is set.
    pub owner: bool,
    /// Restore owners, set-id bits and `security.*` extended attributes as
    /// root even from a snapshot not made by root of a host (made by
    /// another user, in a user namespace, or by a version that did not
    /// record who made it). Without it such a restore leaves files owned by
    /// the invoking user, strips those bits and attributes and lists the
    /// entries in [`RestoreStats::stripped`]: a holder of the repository key
    /// without root could otherwise plant a setuid-root program through a
    /// root restore.
    pub trust_snapshot_owner: bool,
    /// Make each file durable with fsync when its last byte is written, and
    /// each directory at the end, instead of one `syncfs` of the target's
    /// filesystem. `syncfs` also waits for every other writer's dirty data
    /// on that filesystem, which a restore beside a busy database server
    /// pays for; per-file fsyncs are slower for many small files. For a
    /// few large files (a database's data directory), set this.
    pub sync_each_file: bool,
    /// Files whose data is planned and fetched together (0: 32,768). A
    /// restore holds the plans of at most two batches at a time (one
    /// being fetched while the next is prepared, or both being fetched),
    /// so its memory does not grow with the number of files beyond the
    /// selection itself. Batches follow the order of the files' first
    /// blobs in the packs, so a pack is read again only where a batch ends
    /// inside it, and a blob used by files of two batches once per batch.
    /// A batch also ends at four blob writes per file of this.
    pub batch_files: usize,
    /// Entries (files, directories, symlinks) selected per part (0:
    /// 131,072). The snapshot's trees are walked a part at a time, depth
    /// first (see `select::Walker`), and a part's entries are held only
    /// while its batches are made, so a restore's memory does not grow
    /// with the number of files; the names of hard-linked files are held
    /// apart for a last part, so that part grows with them. Batches follow
    /// the pack order within a part; across parts, the walk's order, which
    /// is the order a backup packed the files in.
    pub part_entries: usize,
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
    /// Whether the snapshot's owners, set-id bits and `security.*`
    /// attributes were withheld: a restore as root of a snapshot not made
    /// by root of a host, without `trust_snapshot_owner`.
    pub untrusted_snapshot: bool,
    /// Entries whose set-id bits or `security.*` attributes were not
    /// restored for that reason.
    pub stripped: Vec<String>,
    pub elapsed_ms: u64,
}

/// Restores `snapshot` into `options.target`. Returns an error before
/// writing anything if a selected file already exists in the target and
/// neither `overwrite` nor `delta` is set; per-entry problems go to
/// [`RestoreStats::errors`] (and to `progress` as warnings). A full target
/// filesystem stops the restore with an [`Error::Io`] of kind
/// [`io::ErrorKind::StorageFull`](std::io::ErrorKind::StorageFull).
pub async fn restore(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &dyn RestoreProgress,
) -> Result<RestoreStats> {
    repo.require_full_key("restore")?;
    let started = Instant::now();
    let untrusted = untrusted(snapshot, options, progress);
    // The selection numbers blobs by their position in this index.
    let index = repo.index().await?;
    let root = snapshot.record.tree;
    // A bad pattern or a damaged root tree stops the restore here, before
    // the target is touched.
    let mut walker = select::Walker::new(repo, &index, root, options).await?;
    if repo.has_cold_tier() {
        // Checked before anything is written to the target: an unmounted
        // or moved cold tier stops the restore here ("cold tier
        // unreachable"), not file by file half-way through.
        repo.tier_storage(lifeboat_repo::Tier::Cold).await?;
    }
    check_target(repo, &index, root, options).await?;
    let dirs = open_dirs(options).await?;
    let part_items = part_items(options);
    let first = match walker.next(part_items).await? {
        Some(sel) => sel,
        None => walker.empty(),
    };
    tracing::debug!("restore: first part selected in {:?}", started.elapsed());

    let key = repo.key().clone();
    let opts = options.clone();
    // One thread makes every batch (and looks at the target first), so
    // every batch's plan comes from one allocator arena, which the next
    // batches reuse once a batch is freed, rather than from whichever
    // blocking thread (and arena) was free.
    let planner = fetch::Threads::start("lifeboat-restore-plan", 1)?;
    let starting = Starting {
        dirs: dirs.clone(),
        options: opts,
        index: index.clone(),
        key,
        untrusted,
    };
    let (back, made) = planner
        .run(move || {
            let made = starting.part(first, true);
            (starting, made)
        })
        .await?;
    let mut starting = back;
    let mut preparer = made?;
    let mut stats = std::mem::take(&mut preparer.stats);
    let mut problems = std::mem::take(&mut preparer.problems);
    report(progress, &mut stats, &mut problems);
    let mut planned = (preparer.planned_files, preparer.planned_bytes);
    let mut said = None;
    let mut dir_meta = Vec::new();
    let fetcher = fetch::Fetcher::new(repo)?;
    let stats = Mutex::new(stats);
    let owner = options.owner && !untrusted;
    // Entries are created and file data fetched a batch at a time, the next
    // batch prepared while the data of the one before is fetched, and its
    // fetch started before that one's ends (so the reads and writers never
    // drain between batches): at most two batches are held. A part of the
    // selection is walked and started once the one before has made its
    // last batch, while that batch is fetched.
    let mut flight: Option<Flight<'_>> = None;
    let mut batches = 0u32;
    loop {
        let for_batch = index.clone();
        let prep = planner.run(move || {
            let batch = preparer.batch(&for_batch);
            (preparer, batch)
        });
        let (back, batch) = match drive(prep, flight.as_mut()).await {
            Ok(made) => made,
            Err(err) => return Err(abort(flight, err, progress, &stats).await),
        };
        preparer = back;
        let batch = match batch {
            Ok(batch) => batch,
            Err(err) => return Err(abort(flight, err, progress, &stats).await),
        };
        let mut next = None;
        if let Some(p) = batch {
            batches += 1;
            if said != Some(planned) {
                // Said when a part's first batch is made: once for a
                // restore of one part (the drill times its steps by the
                // first), and again with larger totals for each later part.
                progress.planned(planned.0, planned.1);
                said = Some(planned);
            }
            tracing::debug!(
                "restore: batch {batches}: {} files to write, created by {:?}",
                p.files.len(),
                started.elapsed()
            );
            let prepare::Prepared {
                files,
                writes,
                packs,
                firsts,
                stats: made,
                mut problems,
            } = p;
            {
                let mut stats = fetch::lock(&stats);
                stats.files_restored += made.files_restored;
                stats.files_skipped_identical += made.files_skipped_identical;
                stats.symlinks += made.symlinks;
                stats.hardlinks += made.hardlinks;
                report(progress, &mut stats, &mut problems);
                progress.restored(stats.files_restored, stats.bytes_written);
            }
            let exec = Arc::new(fetch::Exec {
                files,
                index: index.clone(),
                dirs: dirs.clone(),
                names: preparer.sel.names.clone(),
                owner,
                sync_each: options.sync_each_file,
                abort: AtomicBool::new(false),
            });
            let pass = fetch::Pass { writes, packs };
            let data = fetch::write_data(repo, &fetcher, exec.clone(), pass, progress, &stats);
            next = Some(Flight {
                exec,
                firsts,
                data: Box::pin(data),
                done: None,
            });
        } else {
            // This part is made; the next one, if any, is walked and
            // started while the last batch is fetched.
            let walked = drive(walker.next(part_items), flight.as_mut()).await;
            let sel = match walked {
                Ok(sel) => sel,
                Err(err) => return Err(abort(flight, err, progress, &stats).await),
            };
            if let Some(sel) = sel {
                dir_meta.append(&mut preparer.dir_meta);
                // Only the last part (the hard-linked files) has other
                // names to link once its data is written.
                debug_assert!(preparer.has_no_links());
                let started_part = planner.run(move || {
                    let made = starting.part(sel, false);
                    (starting, made)
                });
                let (back, made) = match drive(started_part, flight.as_mut()).await {
                    Ok(made) => made,
                    Err(err) => return Err(abort(flight, err, progress, &stats).await),
                };
                starting = back;
                preparer = match made {
                    Ok(p) => p,
                    Err(err) => return Err(abort(flight, err, progress, &stats).await),
                };
                planned.0 += preparer.planned_files;
                planned.1 += preparer.planned_bytes;
                let mut stats = fetch::lock(&stats);
                stats.stripped.append(&mut preparer.stats.stripped);
                report(progress, &mut stats, &mut preparer.problems);
                continue;
            }
        }
        if let Some(mut old) = flight.take() {
            // The batch before ends (the new one's reads already under
            // way) before the one after is prepared.
            let done = match old.done.take() {
                Some(done) => done,
                None => drive(old.data.as_mut(), next.as_mut()).await,
            };
            if let Err(err) = done {
                return Err(abort(next, err, progress, &stats).await);
            }
            preparer.fetched(&old.firsts, &old.exec.files);
        }
        match next {
            Some(n) => flight = Some(n),
            None => break,
        }
    }
    if said.is_none() {
        progress.planned(planned.0, planned.1);
    }
    tracing::debug!(
        "restore: file data written in {batches} batches by {:?}",
        started.elapsed()
    );
    drop(flight);
    drop(fetcher);
    // Every batch's data is written: the other names of hard-linked files
    // whose data was restored can be made.
    let (back, linked) = planner
        .run(move || {
            let linked = preparer.link_names();
            (preparer, linked)
        })
        .await?;
    preparer = back;
    drop(planner);
    let mut stats = stats.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut linked = linked?;
    stats.hardlinks += linked.stats.hardlinks;
    report(progress, &mut stats, &mut linked.problems);
    dir_meta.append(&mut preparer.dir_meta);
    drop(preparer);
    drop(starting);

    let sync_each = options.sync_each_file;
    let finishing = dirs.clone();
    let (dir_meta, dir_count, mut dir_problems) = blocking(move || {
        let (count, problems) = metadata::finish_dirs(&finishing, &dir_meta, owner);
        (dir_meta, count, problems)
    })
    .await?;
    stats.dirs = dir_count;
    report(progress, &mut stats, &mut dir_problems);
    blocking(move || {
        if sync_each {
            // Files were synced as they completed; the directories hold
            // their names (and, on a journaling filesystem, their fsync
            // commits the metadata of the empty and unchanged files too).
            dir_meta
                .iter()
                .map(|(d, _)| *d)
                .chain([0])
                .try_for_each(|d| dirs.get(d)?.sync_all())
        } else {
            dirs.get(0)
                .and_then(|target| metadata::sync_target(&target))
        }
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

/// A batch whose data is being fetched and written.
struct Flight<'a> {
    exec: Arc<fetch::Exec>,
    /// See [`prepare::Prepared::firsts`].
    firsts: Vec<u32>,
    data: Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>,
    /// How `data` ended, if it did while something else was awaited.
    done: Option<Result<()>>,
}

/// Awaits `work` while the batch in flight (if any, and not yet done) goes
/// on fetching; records how that batch ended if it ends first.
async fn drive<T>(work: impl Future<Output = T>, flight: Option<&mut Flight<'_>>) -> T {
    let mut work = std::pin::pin!(work);
    if let Some(f) = flight
        && f.done.is_none()
    {
        match futures::future::select(work.as_mut(), f.data.as_mut()).await {
            futures::future::Either::Left((out, _)) => return out,
            futures::future::Either::Right((ended, _)) => f.done = Some(ended),
        }
    }
    work.await
}

/// Stops the batch in flight after `err` elsewhere stopped the restore:
/// its writers stop where they are, and what it left unfinished is
/// removed. Returns `err`.
async fn abort(
    flight: Option<Flight<'_>>,
    err: Error,
    progress: &dyn RestoreProgress,
    stats: &Mutex<RestoreStats>,
) -> Error {
    let Some(mut f) = flight else {
        return err;
    };
    f.exec.abort.store(true, Ordering::Release);
    let ended = match f.done.take() {
        Some(ended) => ended,
        None => f.data.await,
    };
    if ended.is_ok() {
        // (A batch that failed by itself removed its unfinished files.)
        let exec = f.exec;
        if let Ok(mut left) = blocking(move || fetch::remove_unfinished(&exec)).await {
            report(progress, &mut fetch::lock(stats), &mut left);
        }
    }
    err
}

/// Whether to withhold the snapshot's owners, set-id bits and `security.*`
/// attributes: when restoring as root a snapshot not made by root of a
/// host (or not saying who made it), unless the caller trusts it. Says so
/// (or that it is trusted on request) as a warning.
fn untrusted(
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &dyn RestoreProgress,
) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let by = match &snapshot.record.creator {
        Some(c) if c.is_host_root() => return false,
        Some(c) if c.uid == 0 => format!("uid 0 in a user namespace on {}", c.host),
        Some(c) => format!("uid {} on {}", c.uid, c.host),
        None => "an unrecorded user (a snapshot from before lifeboat recorded it)".into(),
    };
    if options.trust_snapshot_owner {
        tracing::warn!(
            "restoring owners, set-id bits and security attributes of snapshot {} made by {by}, as asked (--trust-snapshot-owner)",
            snapshot.id
        );
        progress.warning(
            &options.target,
            &format!("trusting the owners, set-id bits and security.* attributes of a snapshot made by {by}, as asked"),
        );
        return false;
    }
    progress.warning(
        &options.target,
        &format!(
            "the snapshot was made by {by}, not by root of a host: files are restored owned by you, \
             without set-id bits or security.* attributes (use --trust-snapshot-owner if you trust who made it)"
        ),
    );
    true
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

    fn warning(path: &Path, message: String) -> Self {
        Problem {
            path: path.to_path_buf(),
            message,
            error: false,
        }
    }
}

/// Passes problems to `progress`; errors also go to the stats.
fn report(progress: &dyn RestoreProgress, stats: &mut RestoreStats, problems: &mut Vec<Problem>) {
    // One report per problem: an error goes to the stats (the caller
    // reports those, with the exit code), only a warning to the progress
    // sink. Both at once showed each failed file twice.
    for p in problems.drain(..) {
        if p.error {
            stats
                .errors
                .push(format!("{}: {}", p.path.display(), p.message));
        } else {
            progress.warning(&p.path, &p.message);
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Repo(lifeboat_repo::Error::Internal(e.to_string())))
}

/// Entries in a part of the selection when [`RestoreOptions::part_entries`]
/// is 0: four batches' worth of files at the default batch size. A part's
/// entries are about 81 bytes a file of one blob, about 10 MiB here.
const PART_ENTRIES: usize = 131_072;

/// Entries in a part of the selection (see [`select::Walker`]).
fn part_items(options: &RestoreOptions) -> usize {
    match options.part_entries {
        0 => PART_ENTRIES,
        n => n,
    }
}

/// Opens (creating it if missing) the restore's target.
async fn open_dirs(options: &RestoreOptions) -> Result<Arc<handles::Dirs>> {
    let target = options.target.clone();
    let dirs = blocking(move || handles::Dirs::open(&target))
        .await?
        .map_err(|e| Error::io(&options.target, e))?;
    Ok(Arc::new(dirs))
}

/// What starting each part of the selection needs, on the planner thread.
struct Starting {
    dirs: Arc<handles::Dirs>,
    options: RestoreOptions,
    index: Arc<lifeboat_repo::Index>,
    key: lifeboat_repo::MasterKey,
    untrusted: bool,
}

impl Starting {
    /// Starts part `sel` (`first`: the first, before which nothing was
    /// written): see [`prepare::start`].
    fn part(&self, sel: select::Selection, first: bool) -> Result<prepare::Preparer> {
        prepare::start(
            sel,
            &self.dirs,
            &self.options,
            &self.index,
            &self.key,
            self.untrusted,
            first,
        )
    }
}

/// Before anything is written into a target that already holds
/// something, unless `overwrite` or `delta` allow replacing what is
/// there: walks the whole selection once, a part at a time, and refuses
/// the restore if a selected entry's place is taken (a directory at a
/// directory's place is fine), so a refused restore writes nothing. A new
/// or empty target needs no such walk: nothing can be in the way there
/// but what the restore itself makes.
async fn check_target(
    repo: &Repository,
    index: &lifeboat_repo::Index,
    root: lifeboat_repo::Id,
    options: &RestoreOptions,
) -> Result<()> {
    if options.overwrite || options.delta {
        return Ok(());
    }
    let target = options.target.clone();
    let empty = blocking(move || match std::fs::read_dir(&target) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    })
    .await?;
    if empty {
        return Ok(());
    }
    let dirs = open_dirs(options).await?;
    let mut walker = select::Walker::new(repo, index, root, options).await?;
    while let Some(sel) = walker.next(part_items(options)).await? {
        let dirs = dirs.clone();
        blocking(move || {
            dirs.add(sel.first_dir, &sel.new_dirs);
            let existing = prepare::scan_target(&sel, &dirs)?;
            prepare::refuse_conflicts(&sel, &dirs, &existing, true)
        })
        .await??;
    }
    Ok(())
}
