//! `check`: proves the repository is restorable, or names what is not.
//!
//! Structure (always): every index object decodes; every indexed pack exists
//! and is large enough for its blobs; every snapshot record decodes; every
//! snapshot's trees decode and every blob they reference is indexed.
//! In a repository with a cold tier, both tiers are listed (a listing reads
//! no pack content) and each pack must be in the tier its blob type belongs
//! to; only `read_data` downloads cold packs.
//! Data (`read_data`): every pack (or a subset: [`DataSubset`]) is
//! downloaded, its name checked against its BLAKE3, and every blob
//! decrypted and verified. Damage is reported with the pack, and the
//! snapshots and file paths that lose data because of it.
//!
//! Concurrency: index objects are read and decoded several at once and
//! merged in listing order. Snapshot trees are walked one at a time, in
//! order, while the trees the walk needs next are read ahead several at
//! once (`TreeWalker`). Packs are downloaded up to the storage's
//! connection limit and verified on [`VerifyOptions::workers`] threads,
//! while the packs held (downloaded, not yet verified) stay within a byte
//! budget ([`VerifyOptions::memory_bytes`]); findings are sorted, so they
//! do not depend on which pack finished first. With `read_data` the tree
//! walk runs while the packs are verified (it waits on small reads, the
//! verification on the cores); if the verification finds damage the walk
//! did not know of, the snapshots are walked again with all of it, so the
//! report is the same as walking after the verification.
//!
//! Coverage: with local state, the packs each run verified are recorded
//! (`crate::coverage`); a subset run reads the least recently verified
//! packs, and the report says how much was verified recently.
//! Archive objects (`crate::archive`, e.g. PostgreSQL WAL) are listed
//! always and, with `read_data`, each is read and opened there; this
//! module only calls that step.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lifeboat_storage::Kind;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::coverage::{self, Coverage, DEFAULT_COVERAGE_DAYS, DataSubset, Verified};

use crate::index::{FirstPacks, Index, IndexFile};
use crate::limits::get_bounded;
use crate::pack::{BlobScratch, BlobType};
use crate::packread::{FetchedRange, PackReader};
use crate::record::{Snapshot, SnapshotRecord};
use crate::repository::{Repository, Tier, blocking};
use crate::tree::{NodeKind, Tree};
use crate::{Error, Id, Result};

/// Least pack bytes held at once by `--read-data`: two default-size packs
/// (what a single reader held before verification ran on several
/// threads). Whole packs are downloaded (their name is the hash of all
/// their bytes), so the budget, not the number of parallel reads, bounds
/// memory.
const MIN_READ_BUDGET_BYTES: u64 = 32 << 20;

/// Most pack bytes held at once by default, whatever the number of cores:
/// a many-core machine verifies at disk or network speed long before it
/// holds a gibibyte of packs.
const MAX_DEFAULT_READ_BUDGET_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub read_data: bool,
    /// With `read_data`, read only this percentage (0 < p <= 100) of packs
    /// ([`DataSubset::Percent`]; [`VerifyOptions::subset`] overrides it
    /// for packs). Archive objects are read in the same share.
    pub read_data_subset_percent: Option<f64>,
}

/// How `read_data` runs, beyond what [`CheckOptions`] asks for. The
/// defaults suit a command-line run; none changes what a check finds.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Threads verifying packs at once; `None`: the available cores.
    pub workers: Option<usize>,
    /// Most pack bytes held at once (downloaded and not yet verified); a
    /// pack larger than this is still read, alone. `None`: one pack per
    /// worker plus one being downloaded, between 32 MiB and 1 GiB.
    pub memory_bytes: Option<u64>,
    /// Which packs a subset run reads; when set it wins over
    /// [`CheckOptions::read_data_subset_percent`] for packs.
    pub subset: Option<DataSubset>,
    /// The coverage window in days; `None`: [`DEFAULT_COVERAGE_DAYS`].
    pub coverage_days: Option<u32>,
    /// The time verifications are recorded at and coverage is computed
    /// for; `None`: the clock (tests set it).
    pub now: Option<jiff::Timestamp>,
}

impl VerifyOptions {
    /// The verifying threads: [`VerifyOptions::workers`] or the cores.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// The byte budget for packs held at once, for packs of `pack_size`.
    pub fn memory_bytes(&self, pack_size: u64) -> u64 {
        self.memory_bytes
            .unwrap_or_else(|| {
                ((self.workers() as u64 + 1) * pack_size)
                    .clamp(MIN_READ_BUDGET_BYTES, MAX_DEFAULT_READ_BUDGET_BYTES)
            })
            .max(1024)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct CheckProblem {
    /// The damaged or missing object (`pack <id>`, `index/<id>`, ...).
    pub object: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct AffectedFile {
    pub snapshot: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    pub trees_checked: usize,
    pub packs_read: usize,
    pub read_bytes: u64,
    /// Of `read_bytes`, those read from the cold tier.
    pub cold_read_bytes: u64,
    pub errors: Vec<CheckProblem>,
    pub warnings: Vec<String>,
    /// Packs with missing or damaged blobs.
    pub damaged_packs: Vec<String>,
    /// Snapshots that cannot be fully restored.
    pub damaged_snapshots: Vec<String>,
    /// Files that lose data because of damaged or missing blobs.
    pub affected_files: Vec<AffectedFile>,
    /// Archive objects listed.
    pub archive_objects: usize,
    /// Archive objects read and opened (`read_data`).
    pub archive_objects_read: usize,
    /// Stored bytes of those objects.
    pub archive_read_bytes: u64,
    /// `read_data`: threads that verified packs, the byte budget for packs
    /// held at once, and the most bytes of packs actually held at once.
    pub read_workers: usize,
    pub read_budget_bytes: u64,
    pub read_peak_bytes: u64,
    /// How much of the data this machine verified recently; `None` when
    /// the handle has no local state to remember it in.
    pub coverage: Option<Coverage>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Progress callback: (packs read so far, packs to read).
pub type CheckProgress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Checks the repository with the default [`VerifyOptions`].
pub async fn check(
    repo: &Repository,
    options: &CheckOptions,
    progress: CheckProgress<'_>,
) -> Result<CheckReport> {
    check_with(repo, options, &VerifyOptions::default(), progress).await
}

/// Checks the repository; `verify` says how data is read and how much.
pub async fn check_with(
    repo: &Repository,
    options: &CheckOptions,
    verify: &VerifyOptions,
    progress: CheckProgress<'_>,
) -> Result<CheckReport> {
    repo.require_full_key("check")?;
    // What the repository holds is checked, not the local cache's copies.
    let _bypass = repo.bypass_cache();
    let mut report = CheckReport::default();
    let storage = repo.storage();
    let workers = verify.workers();

    // Packs present.
    let mut pack_sizes: HashMap<Id, u64> = HashMap::new();
    let mut tiers: HashMap<Id, Tier> = HashMap::new();
    for (tier, info) in repo.list_packs().await? {
        match Id::from_hex(info.key.name()) {
            Some(id) => {
                pack_sizes.insert(id, info.size_bytes);
                tiers.insert(id, tier);
            }
            None => report
                .warnings
                .push(format!("stray object {} ignored", info.key)),
        }
    }
    report.packs = pack_sizes.len();

    // Index objects, each on its own so one bad object does not hide the
    // others; several read and decoded at once, merged in listing order
    // (so the merged index is the same whatever finishes first) as they
    // arrive, never all decoded objects held at once.
    let listing = storage.list(Kind::Index).await?;
    let mut index = crate::repository::index_builder_for(&listing);
    report.index_files = listing.len();
    let in_flight =
        crate::repository::index_reads_in_flight(&listing, repo.concurrency().max(workers));
    let mut files = futures::stream::iter(listing)
        .map(|info| async move {
            let name = info.key.to_string();
            let file = match get_bounded(storage, &info.key, Some(info.size_bytes)).await {
                Ok(bytes) => {
                    let (key, n) = (repo.key().clone(), name.clone());
                    blocking(move || IndexFile::decode(&key, &n, &bytes))
                        .await
                        .and_then(|r| r)
                }
                Err(e) => Err(e),
            };
            (name, file)
        })
        .buffered(in_flight);
    while let Some((name, file)) = files.next().await {
        match file {
            Ok(f) => f.packs.iter().for_each(|p| index.add_pack(p)),
            Err(e) => report.errors.push(problem(&name, &e)),
        }
    }
    drop(files);
    let index = index.build();
    report.blobs = index.blob_count();

    let mut damaged_blobs: HashSet<(BlobType, Id)> = HashSet::new();
    let mut damaged_packs: BTreeSet<Id> = BTreeSet::new();
    let tiered = repo.has_cold_tier();
    for loc in index.blobs() {
        let id = &loc.entry.id;
        if tiered
            && let Some(&found) = tiers.get(&loc.pack)
            && found != repo.tier_of(loc.entry.blob_type)
        {
            damaged_blobs.insert((loc.entry.blob_type, *id));
            if damaged_packs.insert(loc.pack) {
                report.errors.push(CheckProblem {
                    object: format!("pack {}", loc.pack),
                    message: format!(
                        "in the {found:?} tier, but its {:?} blobs are read from the other tier",
                        loc.entry.blob_type
                    )
                    .to_lowercase(),
                });
            }
            continue;
        }
        match pack_sizes.get(&loc.pack) {
            None => {
                damaged_blobs.insert((loc.entry.blob_type, *id));
                if damaged_packs.insert(loc.pack) {
                    report.errors.push(CheckProblem {
                        object: format!("pack {}", loc.pack),
                        message: "missing, but the index lists blobs in it".into(),
                    });
                }
            }
            Some(size) if loc.entry.offset as u64 + loc.entry.length as u64 + 4 > *size => {
                damaged_blobs.insert((loc.entry.blob_type, *id));
                if damaged_packs.insert(loc.pack) {
                    report.errors.push(CheckProblem {
                        object: format!("pack {}", loc.pack),
                        message: "truncated: shorter than its indexed blobs".into(),
                    });
                }
            }
            _ => {}
        }
    }
    for pack in pack_sizes.keys() {
        if !index.has_pack(pack) {
            report.warnings.push(format!(
                "pack {pack} is not in the index (left by an interrupted backup; `lifeboat repair index` adds it, prune will remove it)"
            ));
        }
    }

    // The packs data verification is about: present and indexed.
    let mut candidates: Vec<Id> = pack_sizes
        .keys()
        .filter(|p| index.has_pack(p))
        .copied()
        .collect();
    candidates.sort();
    let now = verify.now.unwrap_or_else(jiff::Timestamp::now);
    let local = repo.local_state();
    let mut verified = local.map(|(l, config)| Verified::load(l, config));

    // The snapshots' trees are walked while the packs are verified: the
    // walk waits on small reads, verification keeps the cores busy. The
    // walk can only know the damage found so far (by the index and the
    // pack listing); if verification finds more, the snapshots are walked
    // again with all of it, so the files named are the same as walking
    // after verification (a healthy repository, the usual case, is walked
    // once).
    let damaged_before = damaged_blobs.len();
    let walk_first = async {
        let snapshots = load_snapshots(repo).await?;
        let walked = walk_snapshots(repo, &index, &damaged_blobs, &snapshots.snapshots).await;
        Ok::<_, Error>((snapshots, walked))
    };
    let data = async {
        if !options.read_data {
            return None;
        }
        let run = DataRun {
            repo,
            options,
            verify,
            index: &index,
            pack_sizes: &pack_sizes,
            tiers: &tiers,
            progress,
        };
        Some(run.read(&candidates, verified.as_ref()).await)
    };
    let (walked, outcome) = futures::join!(walk_first, data);
    let (snapshots, mut walked) = walked?;
    if let Some(outcome) = outcome {
        if let (Some(v), Some((l, config))) = (verified.as_mut(), local) {
            for (pack, ok) in &outcome.verified {
                if *ok {
                    v.0.insert(*pack, now.as_second());
                } else {
                    v.0.remove(pack);
                }
            }
            v.retain(|p| pack_sizes.contains_key(p));
            let v = v.clone();
            let (l, config) = (l.clone(), config.to_vec());
            // A failed write is logged and ignored (local state is a hint).
            let _ = blocking(move || v.save(&l, &config)).await;
        }
        outcome.apply(&mut report, &mut damaged_blobs, &mut damaged_packs, &tiers);
    }
    if damaged_blobs.len() > damaged_before {
        walked = walk_snapshots(repo, &index, &damaged_blobs, &snapshots.snapshots).await;
    }
    if let Some(v) = &verified {
        let sized: Vec<(Id, u64)> = candidates.iter().map(|p| (*p, pack_sizes[p])).collect();
        report.coverage = Some(coverage::coverage(
            &sized,
            v,
            now,
            verify.coverage_days.unwrap_or(DEFAULT_COVERAGE_DAYS),
        ));
    }
    report.damaged_packs = damaged_packs.iter().map(|p| p.to_hex()).collect();

    report.snapshots = snapshots.snapshots.len();
    report.errors.extend(snapshots.errors);
    report.damaged_snapshots.extend(snapshots.damaged);
    report.damaged_snapshots.extend(walked.damaged_snapshots);
    report.affected_files.extend(walked.affected_files);
    report.trees_checked = walked.trees_checked;
    report.errors.extend(walked.errors);
    crate::archive::check(repo, options, &mut report).await?;
    report.errors.sort();
    report.errors.dedup();
    Ok(report)
}

/// The snapshot records, and those that could not be read.
struct LoadedSnapshots {
    snapshots: Vec<Snapshot>,
    errors: Vec<CheckProblem>,
    /// Ids of records that could not be read or decoded.
    damaged: Vec<String>,
}

async fn load_snapshots(repo: &Repository) -> Result<LoadedSnapshots> {
    let storage = repo.storage();
    let mut out = LoadedSnapshots {
        snapshots: Vec::new(),
        errors: Vec::new(),
        damaged: Vec::new(),
    };
    for info in storage.list(Kind::Snapshots).await? {
        let r = async {
            let bytes = get_bounded(storage, &info.key, Some(info.size_bytes)).await?;
            if Id::of_bytes(&bytes).to_hex() != info.key.name() {
                return Err(Error::corrupt(&info.key, "content does not match its name"));
            }
            let record = SnapshotRecord::decode(repo.key(), &info.key.to_string(), &bytes)?;
            let id = Id::from_hex(info.key.name()).expect("checked above");
            Ok(Snapshot { id, record })
        }
        .await;
        match r {
            Ok(s) => out.snapshots.push(s),
            // Forgotten by a `forget` running at the same time.
            Err(e) if e.storage_kind() == Some(lifeboat_storage::ErrorKind::NotFound) => {}
            Err(e) => {
                out.errors.push(problem(&info.key.to_string(), &e));
                out.damaged.push(info.key.name().to_string());
            }
        }
    }
    Ok(out)
}

/// What walking the snapshots' trees found.
struct WalkedSnapshots {
    errors: Vec<CheckProblem>,
    damaged_snapshots: Vec<String>,
    affected_files: Vec<AffectedFile>,
    trees_checked: usize,
}

/// Walks every snapshot's trees, each shared tree once, naming the files
/// that lose data to `damaged_blobs` or to blobs the index lacks.
async fn walk_snapshots(
    repo: &Repository,
    index: &Index,
    damaged_blobs: &HashSet<(BlobType, Id)>,
    snapshots: &[Snapshot],
) -> WalkedSnapshots {
    let mut out = WalkedSnapshots {
        errors: Vec::new(),
        damaged_snapshots: Vec::new(),
        affected_files: Vec::new(),
        trees_checked: 0,
    };
    let mut walker = TreeWalker::new(repo, index, damaged_blobs);
    walker.want(snapshots.iter().map(|s| s.record.tree));
    for snap in snapshots {
        let walked = walker.walk(snap.record.tree).await;
        if let Some(message) = inconsistent_links(&walked.links) {
            out.errors.push(CheckProblem {
                object: format!("snapshot {}", snap.id),
                message,
            });
        }
        let lost = &walked.lost;
        if !lost.is_empty() {
            out.damaged_snapshots.push(snap.id.to_hex());
        }
        for path in lost.iter() {
            out.affected_files.push(AffectedFile {
                snapshot: snap.id.short(),
                path: format!("/{path}"),
            });
        }
    }
    debug_assert!(walker.pending.is_empty(), "every tree read was walked");
    out.trees_checked = walker.memo.len();
    out.errors.extend(walker.problems);
    out
}

/// One `read_data` pass: what it needs from the structure check.
struct DataRun<'a, 'p> {
    repo: &'a Repository,
    options: &'a CheckOptions,
    verify: &'a VerifyOptions,
    index: &'a Index,
    pack_sizes: &'a HashMap<Id, u64>,
    tiers: &'a HashMap<Id, Tier>,
    progress: CheckProgress<'p>,
}

/// What a `read_data` pass found, before it is merged into the report.
struct DataOutcome<'a> {
    /// Per pack read, sorted by pack: its verdict.
    results: Vec<PackVerdict>,
    /// Every pack's blobs, for a pack that could not be read at all.
    by_pack: FirstPacks<'a>,
    /// Per pack read: whether it verified clean.
    verified: Vec<(Id, bool)>,
    workers: usize,
    budget_bytes: u64,
    peak_bytes: u64,
}

/// Bytes of packs held at once, and the most ever held: the proof (in the
/// report, and asserted by tests) that the budget holds.
#[derive(Default)]
struct Held {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Held {
    fn add(&self, n: u64) {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn sub(&self, n: u64) {
        self.now.fetch_sub(n, Ordering::SeqCst);
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Most bytes of each blob buffer `check --read-data` keeps for the next
/// pack: twice the chunker's average blob. A pack that held a larger blob
/// (up to the chunker's 8 MiB maximum) leaves its buffers to be freed.
const SCRATCH_KEPT_BYTES: usize = 2 << 20;

/// Pack buffers `check --read-data` reads into again once their pack is
/// verified. A pack's buffer is as large as the pack (16 MiB by default),
/// and the allocator maps a request that large afresh (see the CLI's
/// `oversize_threshold`): page faults, zeroing and unmapping for every
/// pack took about 5.5% of a check's CPU (docs/performance.md).
///
/// Memory: recycling must not hold more than fresh buffers would, which
/// hold exactly the packs being read and verified. So a buffer is kept
/// only for a pack waiting for the read budget, which takes it as soon as
/// it starts (idle buffers no pack waits for are freed), and the capacity
/// of every buffer, in use or idle, stays within the most pack bytes held
/// at once so far (`Held::peak`), not within the budget. Idle buffers
/// kept up to the budget made the check's peak 5-10 MiB higher: a budget
/// of three 16 MiB packs holds only two packs a little over 16 MiB, and
/// a buffer too small for the big packs sat idle beside them
/// (docs/performance.md, "Idle pack buffers within the peak"). A buffer
/// is reused only for a pack of at least 8/9 of its capacity.
#[derive(Default)]
struct PackBuffers {
    state: Mutex<BufferState>,
}

#[derive(Default)]
struct BufferState {
    idle: Vec<Vec<u8>>,
    /// The capacity of the idle buffers.
    idle_bytes: u64,
    /// The capacity of buffers in use beyond their packs' bytes.
    slack: u64,
}

impl BufferState {
    /// Pack bytes `held` plus what the buffers hold beyond them.
    fn total(&self, held: u64) -> u64 {
        held + self.slack + self.idle_bytes
    }
}

impl PackBuffers {
    /// A buffer for a pack of `size` bytes, with `held` pack bytes held
    /// (this pack's included), at most `limit` ever held at once and
    /// `waiting` packs waiting to start: the smallest idle buffer that
    /// fits it within 1/8, or a fresh one with room up to the next MiB;
    /// then frees idle buffers until all of them fit `limit` and no more
    /// are idle than packs wait.
    fn take(&self, size: u64, held: u64, limit: u64, waiting: usize) -> Vec<u8> {
        let mut state = self.state.lock().unwrap();
        let best = (state.idle.iter().enumerate())
            .filter(|(_, b)| fits(b.capacity() as u64, size))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let buf = match best {
            Some(i) => {
                let buf = state.idle.swap_remove(i);
                let cap = buf.capacity() as u64;
                state.idle_bytes -= cap;
                state.slack += cap - size;
                buf
            }
            None => {
                // Packs of one size differ by a few KiB (a pack closes
                // past its target size): room for the next MiB lets the
                // buffer serve the next pack too. The pages a pack never
                // reaches are not touched, so they cost no memory, but
                // they are counted as if they did.
                let cap = if size < 1 << 20 {
                    size
                } else {
                    size.next_multiple_of(1 << 20)
                };
                state.slack += cap - size;
                Vec::with_capacity(cap as usize)
            }
        };
        // `held` counts the pack's bytes, whichever buffer holds them.
        while state.total(held) > limit || state.idle.len() > waiting {
            let Some(freed) = state.idle.pop() else {
                break;
            };
            state.idle_bytes -= freed.capacity() as u64;
        }
        buf
    }

    /// Takes back what `take` gave with `slack` bytes beyond its pack,
    /// once its pack is done: keeps the buffer (if the pack's bytes handed
    /// it back) for the first of the `waiting` packs (their sizes, in the
    /// order they will start) that no idle buffer is kept for, if it fits
    /// that pack and the `held` pack bytes (its own pack's no longer
    /// counted), the other buffers and it fit `limit` (the most pack bytes
    /// held at once so far); frees it otherwise.
    fn give(&self, buf: Option<Vec<u8>>, slack: u64, held: u64, limit: u64, waiting: &[u64]) {
        let mut state = self.state.lock().unwrap();
        state.slack -= slack;
        let Some(buf) = buf else {
            return;
        };
        let cap = buf.capacity() as u64;
        let wanted =
            (waiting.get(state.idle.len())).is_some_and(|&size| cap > 0 && fits(cap, size));
        if wanted && state.total(held) + cap <= limit {
            state.idle_bytes += cap;
            state.idle.push(buf);
        }
    }
}

/// Whether a buffer of `cap` bytes may hold a pack of `size`: it is large
/// enough and not more than 1/8 larger.
fn fits(cap: u64, size: u64) -> bool {
    cap >= size && cap <= size + size / 8
}

impl<'a> DataRun<'a, '_> {
    /// Picks the packs (all, or a subset by [`coverage::select`]) and
    /// verifies them.
    async fn read(&self, candidates: &[Id], verified: Option<&Verified>) -> DataOutcome<'a> {
        let by_pack = self.index.first_packs();
        let subset = self.verify.subset.or(self
            .options
            .read_data_subset_percent
            .map(DataSubset::Percent));
        let packs = match subset {
            Some(DataSubset::Percent(p)) if p >= 100.0 => candidates.to_vec(),
            Some(s) => coverage::select(candidates, s, verified),
            None => candidates.to_vec(),
        };
        let workers = self.verify.workers();
        let budget = self
            .verify
            .memory_bytes(self.repo.config().pack_size as u64);
        let (results, peak) = self.verify_packs(packs, &by_pack, workers, budget).await;
        DataOutcome {
            verified: results
                .iter()
                .map(|(p, _, r)| (*p, matches!(r, Ok((true, bad)) if bad.is_empty())))
                .collect(),
            results,
            by_pack,
            workers,
            budget_bytes: budget,
            peak_bytes: peak,
        }
    }

    /// Downloads and verifies `packs`: downloads up to the storage's
    /// connection limit, verification on `workers` threads, at most
    /// `budget` bytes of packs held at once. Returns the verdicts sorted by
    /// pack and the most bytes held.
    async fn verify_packs(
        &self,
        packs: Vec<Id>,
        by_pack: &FirstPacks<'_>,
        workers: usize,
        budget: u64,
    ) -> (Vec<PackVerdict>, u64) {
        let total = packs.len() as u64;
        let done = AtomicU64::new(0);
        // The budget in KiB, rounded down so that the packs held never
        // add up to more than `budget` bytes.
        let budget_kib = (budget / 1024).clamp(1, u32::MAX as u64) as u32;
        let memory = Semaphore::new(budget_kib as usize);
        let connections = Semaphore::new(self.repo.concurrency());
        let cpu = Semaphore::new(workers);
        let held = Held::default();
        let buffers = PackBuffers::default();
        // The packs' sizes in the order they start (`memory` is fair, so
        // they acquire it in order), the packs started and those waiting
        // for `memory`, which a pack's buffer is kept for.
        let sizes: Vec<u64> = packs.iter().map(|p| self.pack_sizes[p]).collect();
        let (started, waiting) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let waiting_sizes = || {
            let from = started.load(Ordering::SeqCst).min(sizes.len());
            let n = waiting.load(Ordering::SeqCst);
            &sizes[from..(from + n).min(sizes.len())]
        };
        let scratches: Mutex<Vec<BlobScratch>> = Mutex::default();
        // The reader's own budget is not used: `memory` is given back
        // only after `held` is lowered, so the peak is exact.
        let reader = PackReader::new(self.repo, 1);
        let mut results: Vec<PackVerdict> = futures::stream::iter(packs)
            .map(|pack| {
                let size = self.pack_sizes[&pack];
                let (memory, connections, cpu, held, reader, done, buffers, scratches) = (
                    &memory,
                    &connections,
                    &cpu,
                    &held,
                    &reader,
                    &done,
                    &buffers,
                    &scratches,
                );
                let (started, waiting, waiting_sizes) = (&started, &waiting, &waiting_sizes);
                async move {
                    let kib = size.div_ceil(1024).min(budget_kib as u64) as u32;
                    waiting.fetch_add(1, Ordering::SeqCst);
                    let mem = memory.acquire_many(kib).await.expect("never closed");
                    started.fetch_add(1, Ordering::SeqCst);
                    waiting.fetch_sub(1, Ordering::SeqCst);
                    held.add(size);
                    let (fetched, slack) = {
                        let _c = connections.acquire().await.expect("never closed");
                        let waits = waiting.load(Ordering::SeqCst);
                        let buf = buffers.take(size, held.now(), held.peak(), waits);
                        let slack = (buf.capacity() as u64).saturating_sub(size);
                        let none = reader.reserve(0).await;
                        let read = reader.read_whole_into(self.tiers[&pack], pack, buf, none);
                        (read.await, slack)
                    };
                    // The pack's buffer, for the next pack, once verified.
                    let mut back = None;
                    let r = match fetched {
                        Err(e) => (pack, 0, Err(format!("cannot be read: {e}"))),
                        Ok(fetched) => {
                            let len = fetched.bytes().len() as u64;
                            let _c = cpu.acquire().await.expect("never closed");
                            let entries = entries_of(by_pack, &pack);
                            let mut scratch = scratches.lock().unwrap().pop().unwrap_or_default();
                            let verified = blocking(move || {
                                let verdict = verify_pack(&fetched, &entries, &mut scratch);
                                (verdict, fetched, scratch)
                            })
                            .await;
                            match verified {
                                Ok((verdict, fetched, mut scratch)) => {
                                    scratch.trim(SCRATCH_KEPT_BYTES);
                                    scratches.lock().unwrap().push(scratch);
                                    back = fetched.into_buffer();
                                    (pack, len, Ok(verdict))
                                }
                                Err(e) => (pack, len, Err(e.to_string())),
                            }
                        }
                    };
                    buffers.give(back, slack, held.now() - size, held.peak(), waiting_sizes());
                    held.sub(size);
                    drop(mem);
                    (self.progress)(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    r
                }
            })
            // Enough tasks that every connection and every worker is busy;
            // the memory budget, not this, bounds what they hold.
            .buffer_unordered(self.repo.concurrency() + workers)
            .collect()
            .await;
        results.sort_by_key(|(pack, _, _)| *pack);
        (results, held.peak())
    }
}

impl DataOutcome<'_> {
    /// Adds the findings to the report, in pack order.
    fn apply(
        self,
        report: &mut CheckReport,
        damaged_blobs: &mut HashSet<(BlobType, Id)>,
        damaged_packs: &mut BTreeSet<Id>,
        tiers: &HashMap<Id, Tier>,
    ) {
        report.read_workers = self.workers;
        report.read_budget_bytes = self.budget_bytes;
        report.read_peak_bytes = self.peak_bytes;
        for (pack, len, r) in self.results {
            report.packs_read += 1;
            report.read_bytes += len;
            if tiers[&pack] == Tier::Cold {
                report.cold_read_bytes += len;
            }
            let message = match r {
                Ok((true, bad)) if bad.is_empty() => continue,
                Ok((name_ok, bad)) => {
                    let n = bad.len();
                    damaged_blobs.extend(bad);
                    if name_ok {
                        format!("{n} damaged blob(s): decryption or verification failed")
                    } else {
                        format!("content does not match its name; {n} damaged blob(s)")
                    }
                }
                Err(msg) => {
                    // The whole pack is unreadable: all its blobs are lost.
                    damaged_blobs.extend(
                        entries_of(&self.by_pack, &pack)
                            .into_iter()
                            .map(|e| (e.blob_type, e.id)),
                    );
                    msg
                }
            };
            damaged_packs.insert(pack);
            report.errors.push(CheckProblem {
                object: format!("pack {pack}"),
                message,
            });
        }
    }
}

/// A pack, the bytes read, and (name matches, damaged blobs) or why it
/// could not be read.
type PackVerdict = (
    Id,
    u64,
    std::result::Result<(bool, Vec<(BlobType, Id)>), String>,
);

/// The index entries whose first location is `pack`, made from the
/// index when a pack is verified (the index is not copied per pack up
/// front: [`Index::first_packs`]). None for a pack whose blobs all have an
/// earlier copy elsewhere (two backups that stored the same new blobs at
/// once): its bytes are still checked against its name, which covers
/// every blob in it.
fn entries_of(by_pack: &FirstPacks<'_>, pack: &Id) -> Vec<crate::PackEntry> {
    by_pack.entries(pack)
}

/// Checks a downloaded pack: does it match its name, and which of its
/// indexed blobs fail to decrypt or verify.
fn verify_pack(
    pack: &FetchedRange,
    entries: &[crate::PackEntry],
    scratch: &mut BlobScratch,
) -> (bool, Vec<(BlobType, Id)>) {
    let bad = damaged(pack, entries, scratch)
        .map(|e| (e.blob_type, e.id))
        .collect();
    (name_matches(pack), bad)
}

/// Do a downloaded pack's bytes match its name (their BLAKE3)?
fn name_matches(pack: &FetchedRange) -> bool {
    Id::of_bytes(pack.bytes()) == pack.pack()
}

/// The `entries` of `pack` that fail to decrypt, decompress or match
/// their ids. Each is opened into the same two buffers (`scratch`, which
/// callers keep from pack to pack): allocating two per blob (about 1 MiB
/// each) cost page faults for every blob.
fn damaged<'e, 's>(
    pack: &'s FetchedRange,
    entries: &'e [crate::PackEntry],
    scratch: &'s mut BlobScratch,
) -> impl Iterator<Item = &'e crate::PackEntry> + 's
where
    'e: 's,
{
    entries
        .iter()
        .filter(move |e| pack.open_in(e, scratch).is_err())
}

/// Stored bytes of blobs a thread of [`measure_ceiling`] takes at a time.
/// The ceiling splits each pack's verification into pieces (its hash, and
/// its blobs in runs of about this many bytes), so no thread waits at the
/// end of a batch while another finishes a whole pack: the machine's
/// capacity, not the check's schedule. (The check itself verifies a pack
/// per thread: pieces made it no faster and used 35 MiB more, 46a441c.)
const PIECE_BYTES: u64 = 2 << 20;

/// One piece of a downloaded pack's verification (see [`PIECE_BYTES`]).
enum Piece {
    /// Do the pack's bytes match its name (their BLAKE3)?
    Name,
    /// Do these indexed blobs (positions in the pack's entries) decrypt,
    /// decompress and match their ids?
    Blobs(std::ops::Range<usize>),
}

/// The pieces of verifying a pack with `entries`: its name, then its blobs
/// in runs of about [`PIECE_BYTES`].
fn pieces(entries: &[crate::PackEntry]) -> Vec<Piece> {
    let mut out = vec![Piece::Name];
    let (mut start, mut bytes) = (0, 0u64);
    for (i, e) in entries.iter().enumerate() {
        bytes += e.length as u64;
        if bytes >= PIECE_BYTES {
            out.push(Piece::Blobs(start..i + 1));
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < entries.len() {
        out.push(Piece::Blobs(start..entries.len()));
    }
    out
}

/// Does one piece of a pack's verification; how many checks failed (a
/// wrong name counts one, each damaged blob one).
fn run_piece(
    pack: &FetchedRange,
    entries: &[crate::PackEntry],
    piece: &Piece,
    scratch: &mut BlobScratch,
) -> usize {
    match piece {
        Piece::Name => usize::from(!name_matches(pack)),
        Piece::Blobs(range) => damaged(pack, &entries[range.clone()], scratch).count(),
    }
}

/// What [`measure_ceiling`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingStats {
    /// Indexed packs processed, and their stored bytes.
    pub packs: usize,
    pub bytes: u64,
    /// Threads the work ran on.
    pub workers: usize,
    /// Wall time of the work alone: hashing every pack, decrypting,
    /// decompressing and verifying every blob, packs already in memory.
    pub elapsed_ms: u64,
    /// `bytes` over that time, MiB/s.
    pub mib_per_s: f64,
}

/// The machine's ceiling for `check --read-data` (bench/ prints it beside
/// the check's time): the same per-pack work as the check
/// (`name_matches` and `damaged`, as `verify_pack` calls them), split
/// finer ([`pieces`]), on `verify.workers()` threads, timed without the
/// storage reads, which happen in untimed batches of at most
/// `verify.memory_bytes()` before each timed one. No findings: a damaged
/// pack costs what it costs.
pub async fn measure_ceiling(repo: &Repository, verify: &VerifyOptions) -> Result<CeilingStats> {
    let index = repo.index().await?;
    let by_pack = index.first_packs();
    let mut packs: Vec<(Id, Tier, u64)> = Vec::new();
    for (tier, info) in repo.list_packs().await? {
        if let Some(id) = Id::from_hex(info.key.name()).filter(|id| by_pack.has_entries(id)) {
            packs.push((id, tier, info.size_bytes));
        }
    }
    packs.sort();
    let workers = verify.workers();
    let budget = verify.memory_bytes(repo.config().pack_size as u64);
    let reader = PackReader::new(repo, 1);
    let mut stats = CeilingStats {
        packs: packs.len(),
        bytes: 0,
        workers,
        elapsed_ms: 0,
        mib_per_s: 0.0,
    };
    let mut elapsed = std::time::Duration::ZERO;
    let mut rest = &packs[..];
    while !rest.is_empty() {
        // The next batch: as many packs as fit the budget, at least one.
        let mut n = 1;
        let mut sum = rest[0].2;
        while n < rest.len() && sum + rest[n].2 <= budget {
            sum += rest[n].2;
            n += 1;
        }
        let (batch, later) = rest.split_at(n);
        rest = later;
        let fetched: Vec<FetchedRange> = futures::stream::iter(batch)
            .map(|&(id, tier, _)| {
                let reader = &reader;
                async move { reader.read_whole(tier, id, reader.reserve(0).await).await }
            })
            .buffered(repo.concurrency())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        stats.bytes += fetched.iter().map(|f| f.bytes().len() as u64).sum::<u64>();
        // Each pack's entries, made untimed, as the check makes them before
        // it hands a pack to a verifying thread, and its pieces.
        let fetched: Vec<(FetchedRange, Vec<crate::PackEntry>)> = fetched
            .into_iter()
            .map(|f| {
                let entries = entries_of(&by_pack, &f.pack());
                (f, entries)
            })
            .collect();
        let work: Vec<(usize, Piece)> = fetched
            .iter()
            .enumerate()
            .flat_map(|(i, (_, entries))| pieces(entries).into_iter().map(move |p| (i, p)))
            .collect();
        elapsed += blocking(move || {
            let next = AtomicUsize::new(0);
            let started = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(|| {
                        // Per thread, as the check keeps one per worker.
                        let mut scratch = BlobScratch::default();
                        while let Some((i, piece)) = work.get(next.fetch_add(1, Ordering::Relaxed))
                        {
                            let (f, entries) = &fetched[*i];
                            std::hint::black_box(run_piece(f, entries, piece, &mut scratch));
                        }
                    });
                }
            });
            started.elapsed()
        })
        .await?;
    }
    stats.elapsed_ms = elapsed.as_millis() as u64;
    if !elapsed.is_zero() {
        stats.mib_per_s = stats.bytes as f64 / 1048576.0 / elapsed.as_secs_f64();
    }
    Ok(stats)
}

/// Walks snapshot trees depth first, one tree at a time (so findings come
/// out in the same order whatever the storage does), each shared subtree
/// once, while reading trees ahead of the walk, several at once.
///
/// Read-ahead: each tree read pushes its subtrees on a stack, first child
/// on top, so the trees read ahead are (nearly) the next ones the walk
/// needs, in its order. At most `in_flight` reads run at once and at most
/// `held` trees are read and not yet walked (read ahead beyond that
/// waits); a tree the walk needs and nobody has started is read at once,
/// beyond both bounds, so the walk never waits on the read-ahead. Memory:
/// the per-tree results (as before), the trees on the walk's path, `held`
/// trees and the ids waiting on the stack; never every decoded tree.
struct TreeWalker<'a> {
    repo: &'a Repository,
    index: &'a Index,
    damaged_blobs: &'a HashSet<(BlobType, Id)>,
    /// Per tree the walk has taken: what [`TreeWalker::walk`] found below
    /// it (`None` while it is walked).
    memo: HashMap<Id, Option<Arc<Walked>>>,
    problems: BTreeSet<CheckProblem>,
    /// Trees to read ahead, the next on top.
    wanted: Vec<Id>,
    /// Trees being read (`None`) or read, not yet taken by the walk.
    pending: HashMap<Id, Option<Result<Tree>>>,
    reads: FuturesUnordered<BoxFuture<'a, (Id, Result<Tree>)>>,
    in_flight: usize,
    held: usize,
}

/// What is below one tree: paths (relative to it) of files that lose
/// data, and the names of hard-linked files.
#[derive(Default)]
struct Walked {
    lost: Vec<String>,
    links: Vec<LinkName>,
}

/// One name of a hard-linked file: its group (device, inode), what the
/// snapshot says it holds (size and the hash of its blob ids), its path.
struct LinkName {
    group: (u64, u64),
    content: (u64, [u8; 32]),
    path: String,
}

/// A hard-link group of one snapshot whose names hold different contents
/// (possible only in a crafted snapshot: a real hard link is one file):
/// restore gives each name its own contents, as `dump` does, and `check`
/// names the group. `None` if every group is consistent.
fn inconsistent_links(links: &[LinkName]) -> Option<String> {
    let mut first: HashMap<(u64, u64), &LinkName> = HashMap::new();
    for l in links {
        let f = *first.entry(l.group).or_insert(l);
        if f.content != l.content {
            return Some(format!(
                "hard-linked names /{} and /{} have different contents (a crafted snapshot?); \
                 restore and dump give each name its own contents",
                f.path, l.path
            ));
        }
    }
    None
}

impl<'a> TreeWalker<'a> {
    fn new(
        repo: &'a Repository,
        index: &'a Index,
        damaged_blobs: &'a HashSet<(BlobType, Id)>,
    ) -> Self {
        // As many reads as the storage serves at once (prune's bound);
        // a few times that read and waiting, so the walk rarely finds the
        // tree it needs missing while trees it needs later fill the room.
        let in_flight = repo.concurrency();
        TreeWalker {
            repo,
            index,
            damaged_blobs,
            memo: HashMap::new(),
            problems: BTreeSet::new(),
            wanted: Vec::new(),
            pending: HashMap::new(),
            reads: FuturesUnordered::new(),
            in_flight,
            held: 4 * in_flight,
        }
    }

    /// Trees the walk will take, in its order: read ahead first to last.
    fn want(&mut self, trees: impl DoubleEndedIterator<Item = Id>) {
        self.wanted.extend(trees.rev());
        self.read_ahead();
    }

    /// Starts reads from the top of `wanted` while the bounds allow.
    fn read_ahead(&mut self) {
        while self.reads.len() < self.in_flight && self.pending.len() < self.held {
            let Some(id) = self.wanted.pop() else { break };
            if !self.memo.contains_key(&id) && !self.pending.contains_key(&id) {
                self.start(id);
            }
        }
    }

    fn start(&mut self, id: Id) {
        self.pending.insert(id, None);
        let (repo, index, damaged) = (self.repo, self.index, self.damaged_blobs);
        self.reads.push(Box::pin(async move {
            (id, load(repo, index, damaged, id).await)
        }));
    }

    /// A read finished: keep the tree for the walk, and want its subtrees.
    fn arrived(&mut self, id: Id, tree: Result<Tree>) {
        if let Ok(tree) = &tree {
            let subtrees = tree.nodes.iter().filter_map(|n| match n.kind {
                NodeKind::Dir => n.subtree.filter(|s| !self.memo.contains_key(s)),
                _ => None,
            });
            let at = self.wanted.len();
            self.wanted.extend(subtrees);
            self.wanted[at..].reverse();
        }
        self.pending.insert(id, Some(tree));
    }

    /// The tree `id`, read ahead or now; the walk takes each tree once.
    async fn take(&mut self, id: Id) -> Result<Tree> {
        if !self.pending.contains_key(&id) {
            self.start(id);
        }
        loop {
            if let Some(Some(_)) = self.pending.get(&id) {
                let tree = self.pending.remove(&id).flatten().expect("just seen");
                self.read_ahead();
                return tree;
            }
            let (done, tree) = self.reads.next().await.expect("`id` is being read");
            self.arrived(done, tree);
            self.read_ahead();
        }
    }

    fn walk(&mut self, tree_id: Id) -> BoxFuture<'_, Arc<Walked>> {
        Box::pin(async move {
            match self.memo.get(&tree_id) {
                Some(Some(m)) => return m.clone(),
                // Only a tree below itself, which its id (a hash of its
                // contents) rules out.
                Some(None) => return Arc::default(),
                None => {}
            }
            self.memo.insert(tree_id, None);
            let tree = self.take(tree_id).await;
            let mut walked = Walked::default();
            match tree {
                Err(e) => {
                    self.problems
                        .insert(problem(&format!("tree {tree_id}"), &e));
                    walked.lost.push(String::new());
                }
                Ok(tree) => {
                    for node in &tree.nodes {
                        let name = node.name_lossy();
                        match node.kind {
                            NodeKind::Dir => match node.subtree {
                                Some(sub) => {
                                    let below = self.walk(sub).await;
                                    for p in below.lost.iter() {
                                        walked.lost.push(join(&name, p));
                                    }
                                    for l in below.links.iter() {
                                        walked.links.push(LinkName {
                                            group: l.group,
                                            content: l.content,
                                            path: join(&name, &l.path),
                                        });
                                    }
                                }
                                None => {
                                    self.problems.insert(CheckProblem {
                                        object: format!("tree {tree_id}"),
                                        message: format!("directory {name:?} has no subtree"),
                                    });
                                }
                            },
                            NodeKind::File => {
                                let mut bad = false;
                                for blob in &node.content {
                                    if self.damaged_blobs.contains(&(BlobType::Data, *blob)) {
                                        bad = true;
                                    } else if !self.index.contains(BlobType::Data, blob) {
                                        bad = true;
                                        self.problems.insert(CheckProblem {
                                            object: format!("blob {blob}"),
                                            message: "referenced by a file but not in the index"
                                                .into(),
                                        });
                                    }
                                }
                                if node.links > 1 {
                                    let mut h = blake3::Hasher::new();
                                    for blob in &node.content {
                                        h.update(&blob.0);
                                    }
                                    walked.links.push(LinkName {
                                        group: (node.dev, node.inode),
                                        content: (node.size, *h.finalize().as_bytes()),
                                        path: name.clone(),
                                    });
                                }
                                if bad {
                                    walked.lost.push(name);
                                }
                            }
                            NodeKind::Symlink => {}
                        }
                    }
                }
            }
            let walked = Arc::new(walked);
            self.memo.insert(tree_id, Some(walked.clone()));
            walked
        })
    }
}

/// Reads and decodes one tree for the walk, through the check's own index
/// (built skipping damaged index objects), not the repository's, which
/// refuses to load at all then.
async fn load(
    repo: &Repository,
    index: &Index,
    damaged_blobs: &HashSet<(BlobType, Id)>,
    id: Id,
) -> Result<Tree> {
    let Some(loc) = index.get(BlobType::Tree, &id) else {
        if index.contains(BlobType::Data, &id) {
            // The trace of a backup by a version that deduplicated by
            // id alone: the tree was taken for a file chunk with the
            // same bytes and never stored.
            return Err(Error::corrupt(
                format!("tree {id}"),
                "not in the index as a tree (only a data blob has this id)",
            ));
        }
        return Err(Error::TreeNotIndexed { id: id.to_hex() });
    };
    if damaged_blobs.contains(&(BlobType::Tree, id)) {
        return Err(Error::corrupt(
            format!("tree {id}"),
            format!("stored in damaged pack {}", loc.pack),
        ));
    }
    let bytes = repo.read_tree_blob_at(&id, &loc).await?;
    crate::packread::open_off_thread_if_large(bytes.len(), move || Tree::decode(&id, &bytes))
        .await?
}

fn join(name: &str, rest: &str) -> String {
    if rest.is_empty() {
        name.to_string()
    } else {
        format!("{name}/{rest}")
    }
}

fn problem(object: &str, e: &Error) -> CheckProblem {
    CheckProblem {
        object: object.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, length: u32) -> crate::PackEntry {
        crate::PackEntry {
            blob_type: BlobType::Data,
            id: Id([n; 32]),
            offset: 0,
            length,
            raw_length: length,
            compressed: false,
        }
    }

    /// Idle pack buffers are kept only for packs waiting to start that
    /// they fit within 1/8, and all buffers (the packs held, what buffers
    /// hold beyond their packs, the idle ones) never exceed the limit, the
    /// most pack bytes held at once so far: a buffer given back past
    /// either is freed, and taking one frees idle ones until the rest fit
    /// both.
    #[test]
    fn pack_buffers_wait_for_a_pack_and_stay_within_the_limit() {
        let mib = 1u64 << 20;
        let buffers = PackBuffers::default();
        let state = |b: &PackBuffers| {
            let s = b.state.lock().unwrap();
            (s.idle.len(), s.idle_bytes / mib, s.slack / mib)
        };
        let sized = |n: u64| Some(Vec::<u8>::with_capacity((n * mib) as usize));
        // Two packs of 16 MiB were held at once: the limit is 32 MiB. With
        // no pack waiting, a buffer given back is freed.
        buffers.give(sized(16), 0, 16 * mib, 32 * mib, &[]);
        assert_eq!(state(&buffers), (0, 0, 0));
        // Nor is one kept that does not fit the next pack to start.
        buffers.give(sized(16), 0, 16 * mib, 32 * mib, &[5 * mib, 16 * mib]);
        buffers.give(sized(5), 0, 16 * mib, 32 * mib, &[16 * mib, 5 * mib]);
        assert_eq!(state(&buffers), (0, 0, 0));
        // With three 15 MiB packs waiting, two are kept; a third does not
        // fit beside them, whatever the budget: fresh buffers never held
        // 48 MiB.
        let next = [15 * mib; 3];
        buffers.give(sized(16), 0, 16 * mib, 32 * mib, &next);
        buffers.give(sized(16), 0, 0, 32 * mib, &next);
        assert_eq!(state(&buffers), (2, 32, 0));
        buffers.give(sized(16), 0, 0, 32 * mib, &next);
        assert_eq!(state(&buffers), (2, 32, 0));
        // A 15 MiB pack reuses one (16 is within 1/8 of 15); the extra
        // MiB is slack. One pack still waits, so the other stays.
        let b = buffers.take(15 * mib, 15 * mib, 32 * mib, 1);
        assert_eq!(b.capacity() as u64, 16 * mib);
        assert_eq!(state(&buffers), (1, 16, 1));
        // A 1 MiB pack does not: a 16 MiB buffer would hold 16x its
        // bytes. Its fresh buffer, the 15 MiB pack's and the idle one
        // would pass the limit (1 + 16 + 16 MiB): the idle one goes.
        assert_eq!(
            buffers.take(mib, 16 * mib, 32 * mib, 1).capacity() as u64,
            mib
        );
        assert_eq!(state(&buffers), (0, 0, 1));
        // The 15 MiB pack's buffer comes back beside the 1 MiB pack (17
        // MiB in all) and is kept for a waiting pack; its slack is no
        // longer counted.
        buffers.give(Some(b), mib, mib, 32 * mib, &next[..1]);
        assert_eq!(state(&buffers), (1, 16, 0));
        // A pack that takes a fresh buffer frees idle ones no pack waits
        // for, though they fit the limit.
        assert_eq!(
            buffers.take(mib, 2 * mib, 32 * mib, 0).capacity() as u64,
            mib
        );
        assert_eq!(state(&buffers), (0, 0, 0));
        // A fresh buffer has room up to the next MiB, counted as slack.
        let b = buffers.take(15 * mib + 5, 15 * mib + 5, 32 * mib, 0);
        assert_eq!(b.capacity() as u64, 16 * mib);
        assert_eq!(buffers.state.lock().unwrap().slack, mib - 5);
        buffers.give(Some(b), mib - 5, 0, 32 * mib, &[]);
        assert_eq!(state(&buffers), (0, 0, 0));
        // A pack whose bytes did not hand its buffer back (a failed read
        // or verification) gives back its slack alone.
        buffers.give(sized(16), 0, 0, 32 * mib, &next[..1]);
        let b = buffers.take(15 * mib, 15 * mib, 32 * mib, 0);
        assert_eq!(state(&buffers), (0, 0, 1));
        drop(b);
        buffers.give(None, mib, 0, 32 * mib, &next);
        assert_eq!(state(&buffers), (0, 0, 0));
        // An empty buffer is never kept.
        buffers.give(Some(Vec::new()), 0, 0, 32 * mib, &[0]);
        assert_eq!(state(&buffers), (0, 0, 0));
    }

    /// The pieces name the pack once and cover every entry exactly once,
    /// in order, in runs of at least `PIECE_BYTES` (but the last).
    #[test]
    fn pieces_cover_every_entry_once_in_order() {
        let mib = 1u32 << 20;
        let lengths = [mib / 2, mib, mib, 3 * mib, 1, 1, mib + mib / 2, 7];
        let entries: Vec<_> = lengths
            .iter()
            .enumerate()
            .map(|(i, l)| entry(i as u8, *l))
            .collect();
        let ps = pieces(&entries);
        assert!(matches!(ps[0], Piece::Name));
        assert_eq!(ps.iter().filter(|p| matches!(p, Piece::Name)).count(), 1);
        let runs: Vec<_> = ps[1..]
            .iter()
            .map(|p| match p {
                Piece::Blobs(r) => r.clone(),
                Piece::Name => unreachable!("one name piece, first"),
            })
            .collect();
        assert_eq!(runs, vec![0..3, 3..4, 4..8]);
        let covered: Vec<usize> = runs.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(covered, (0..entries.len()).collect::<Vec<_>>());
        for r in &runs[..runs.len() - 1] {
            let bytes: u64 = entries[r.clone()].iter().map(|e| e.length as u64).sum();
            assert!(bytes >= PIECE_BYTES, "{r:?}: {bytes}");
        }
        assert_eq!(pieces(&[]).len(), 1, "an entry-less pack is still hashed");
    }
}
