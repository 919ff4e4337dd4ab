//! Reading blobs out of packs: the one place that slices a pack and opens
//! a blob.
//!
//! This module owns the read path from a pack object to verified
//! plaintext: planning ranged reads over a set of wanted blobs
//! ([`plan_ranges`], coalescing neighbours within [`RangeLimits`]),
//! fetching them from the right tier under a memory budget
//! ([`PackReader`]), checking that storage returned what was asked, and
//! decrypting, decompressing and verifying each blob against its id
//! ([`FetchedRange::open`]). A damaged blob is an error for that blob only,
//! so callers can go on past it. Two ways in: the pieces (plan, reserve,
//! read, open), for a caller that opens blobs on threads of its own
//! (restore), and [`PackReader::read_blobs`], a stream of opened blobs for
//! a caller that just wants plaintext (copy). Whole packs are read too,
//! for callers that need every byte (`check --read-data` hashes the pack
//! against its name; prune's repack reads what it rewrites).
//!
//! It does not decide *which* blobs are wanted, where their plaintext goes,
//! nor what a damaged blob means to the caller; it does not write packs
//! (`writer`) nor parse trailers for the index (`pack`, `repair`). The
//! pack format itself (sealing, trailer) is in `pack`.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use lifeboat_storage::{ErrorKind, Kind, ObjectKey};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::crypto::MasterKey;
use crate::index::BlobLocation;
use crate::pack::{BlobScratch, PackEntry, open_blob, open_blob_in, open_blob_keeping_payload};
use crate::repository::{Repository, Tier, blocking};
use crate::{Error, Id, Result};

/// The storage key of a pack (inside its tier).
pub(crate) fn pack_key(id: &Id) -> ObjectKey {
    ObjectKey::new(Kind::Packs, id.to_hex())
}

/// A pack's object path inside its tier (`data/ab/ab12…`), for telling a
/// user which objects a read needs (say, to restore them from an archive
/// storage class with the provider's tools). Reading goes through
/// [`PackReader`].
pub fn pack_object_path(pack: &Id) -> String {
    pack_key(pack).to_string()
}

/// How wanted blobs of one pack are cut into ranged reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLimits {
    /// Two blobs closer than this are fetched in one read, the bytes
    /// between them read and dropped.
    pub gap: u64,
    /// Largest single read (unless one blob is larger).
    pub max_len: u64,
    /// Most plaintext one read is cut to carry.
    pub max_raw: u64,
}

impl RangeLimits {
    /// The limits restore uses (and its plan predicts).
    ///
    /// - `gap` 256 KiB: on object storage a request's latency costs more
    ///   than reading a quarter mebibyte.
    /// - `max_len` 4 MiB: requests long enough that their latency does not
    ///   matter, and several of them fit in a memory budget at once, which
    ///   is what keeps a remote backend busy. Bigger ranges cost resident
    ///   memory beyond their own size: each is allocated by whichever
    ///   thread reads it, and glibc keeps that much free in every such
    ///   thread's arena.
    /// - `max_raw` 16 MiB: a range is also the unit of work of whoever
    ///   opens its blobs, and a range of very compressible data (a
    ///   database's pages, 20:1 and more) under `max_len` alone would hold
    ///   some 80 MiB of writing, so a handful of ranges would make up a
    ///   whole restore and leave its writers idle while the last finish.
    pub const RESTORE: RangeLimits = RangeLimits {
        gap: 256 * 1024,
        max_len: 4 * 1024 * 1024,
        max_raw: 16 * 1024 * 1024,
    };

    /// The limits `copy` reads its source with: a quarter of restore's,
    /// so that several ranges fit `copy`'s read budget at once (each holds
    /// its sealed bytes, their payloads and their plaintext until the
    /// target has them). With restore's limits one range of compressible
    /// data took the whole 32 MiB budget, and a copy between two buckets
    /// 20 ms away read one range at a time, its reads waiting on its own
    /// sealing and the sealing on the next read.
    pub const COPY: RangeLimits = RangeLimits {
        gap: 256 * 1024,
        max_len: 1024 * 1024,
        max_raw: 4 * 1024 * 1024,
    };
}

impl Default for RangeLimits {
    fn default() -> Self {
        RangeLimits::RESTORE
    }
}

/// A run of blobs of one pack fetched with one ranged read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRange {
    /// The caller's number for the pack (see [`plan_ranges`]).
    pub pack: u32,
    pub start: u64,
    pub len: u64,
    /// Most memory opening one of its blobs takes (sealed payload plus
    /// plaintext), for a caller that opens them one at a time.
    pub blob_mem: u64,
    /// Plaintext of its blobs (each counted once, however many items).
    pub raw: u64,
    /// Its items: a slice of the caller's sorted list.
    pub items: Range<usize>,
}

impl PackRange {
    /// Memory the range holds while its blobs are opened one at a time:
    /// its sealed bytes plus the largest blob's opening.
    pub fn memory(&self) -> u64 {
        self.len + self.blob_mem
    }
}

/// Cuts wanted blobs into ranged reads, merging neighbours within
/// `limits`.
///
/// `items` must be sorted by pack number and offset; `blob` gives each
/// item's pack number (any numbering the caller keeps, e.g. an index into
/// its own pack list, which keeps its items small) and entry. Neighbouring
/// items of one blob (same pack, offset and id: one blob used in several
/// places) are one blob to read and end up in the same range. A range
/// grows while the next blob starts within `gap` of its end, its length
/// stays within `max_len` and its plaintext within `max_raw`; a blob larger
/// than that is a range of its own.
pub fn plan_ranges<T>(
    items: &[T],
    limits: &RangeLimits,
    blob: impl Fn(&T) -> (u32, &PackEntry),
) -> Vec<PackRange> {
    let same = |a: &T, b: &T| {
        let ((pa, ea), (pb, eb)) = (blob(a), blob(b));
        pa == pb && ea.offset == eb.offset && ea.id == eb.id
    };
    let mut out: Vec<PackRange> = Vec::new();
    let mut i = 0;
    for group in items.chunk_by(same) {
        let (pack, entry) = blob(&group[0]);
        let start = entry.offset as u64;
        let end = start + entry.length as u64;
        let raw = entry.raw_length as u64;
        let mem = entry.length as u64 + raw;
        let next = i + group.len();
        match out.last_mut() {
            Some(r)
                if r.pack == pack
                    && start <= r.start + r.len + limits.gap
                    && end - r.start <= limits.max_len
                    && r.raw + raw <= limits.max_raw =>
            {
                debug_assert!(start >= r.start, "items are sorted by pack and offset");
                r.len = r.len.max(end - r.start);
                r.blob_mem = r.blob_mem.max(mem);
                r.raw += raw;
                r.items.end = next;
            }
            _ => out.push(PackRange {
                pack,
                start,
                len: end - start,
                blob_mem: mem,
                raw,
                items: i..next,
            }),
        }
        i = next;
    }
    out
}

/// Memory reserved from a [`PackReader`]'s budget; given back on drop.
#[derive(Debug)]
pub struct MemoryPermit {
    _held: Option<OwnedSemaphorePermit>,
}

/// Reads packs of one repository under a memory budget.
///
/// The budget bounds the bytes of reads in flight and of what their
/// holders keep: each read takes a [`MemoryPermit`], which the
/// [`FetchedRange`] holds until it is dropped.
#[derive(Debug)]
pub struct PackReader<'a> {
    repo: &'a Repository,
    budget: Arc<Semaphore>,
    budget_kib: u32,
}

impl<'a> PackReader<'a> {
    /// A reader holding at most `budget_kib` KiB at once (a single read
    /// larger than that still runs, alone).
    pub fn new(repo: &'a Repository, budget_kib: u32) -> Self {
        let budget_kib = budget_kib.max(1);
        PackReader {
            repo,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
        }
    }

    /// Waits until `bytes` of the budget are free and takes them (all of
    /// it, for more than the budget). A task that holds a permit while it
    /// waits for another must stay within the budget with both, or it
    /// waits for itself.
    pub async fn reserve(&self, bytes: u64) -> MemoryPermit {
        let kib = bytes.div_ceil(1024).min(self.budget_kib as u64) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the budget semaphore is never closed");
        MemoryPermit {
            _held: Some(permit),
        }
    }

    /// One ranged read of `pack` in `tier`, holding `permit` while the
    /// bytes live. A short read (which the storage contract rules out, but
    /// a broken backend may do) is an error, never a panic later. Storage
    /// errors are returned as they are.
    pub async fn read(
        &self,
        tier: Tier,
        pack: Id,
        start: u64,
        len: u64,
        permit: MemoryPermit,
    ) -> Result<FetchedRange> {
        let storage = self.repo.tier_storage(tier).await?;
        let bytes = storage.get_range(&pack_key(&pack), start, len).await?;
        if bytes.len() as u64 != len {
            return Err(Error::Storage(lifeboat_storage::Error::new(
                ErrorKind::Other,
                format!(
                    "storage returned {} of the {len} bytes asked for (short read)",
                    bytes.len()
                ),
            )));
        }
        Ok(self.fetched(pack, start, bytes, permit))
    }

    /// Reads a whole pack (for callers that need every byte of it).
    pub async fn read_whole(
        &self,
        tier: Tier,
        pack: Id,
        permit: MemoryPermit,
    ) -> Result<FetchedRange> {
        let storage = self.repo.tier_storage(tier).await?;
        let bytes = storage.get(&pack_key(&pack)).await?;
        Ok(self.fetched(pack, 0, bytes, permit))
    }

    /// [`PackReader::read_whole`] into `buf`
    /// ([`lifeboat_storage::Storage::get_into`]): a
    /// caller reading many packs hands back the buffer of the last one
    /// ([`FetchedRange::into_buffer`]).
    pub async fn read_whole_into(
        &self,
        tier: Tier,
        pack: Id,
        buf: Vec<u8>,
        permit: MemoryPermit,
    ) -> Result<FetchedRange> {
        let storage = self.repo.tier_storage(tier).await?;
        let bytes = storage.get_into(&pack_key(&pack), buf).await?;
        Ok(self.fetched(pack, 0, Bytes::from(bytes), permit))
    }

    fn fetched(&self, pack: Id, start: u64, bytes: Bytes, permit: MemoryPermit) -> FetchedRange {
        FetchedRange {
            pack,
            start,
            bytes,
            key: self.repo.key().clone(),
            _permit: permit,
        }
    }

    /// Reads the blobs at `wanted` (in any order; a location given twice is
    /// read once and yielded twice), batched by pack into the ranges of
    /// `limits`, up to the repository's concurrency of reads at once, each
    /// from the tier its blob type lives in. Yields every wanted blob once,
    /// opened and verified, or with the error that kept it from being read
    /// (a damaged blob, or its range's failed read); no order is promised.
    /// A blob stored compressed comes with its decrypted zstd payload too
    /// ([`OpenedBlob::payload`]), which `copy` seals again as it is.
    ///
    /// Memory: a range's sealed bytes, its payloads (at most as many bytes
    /// again) and all its plaintext count against the budget until the
    /// last of its yielded blobs is dropped.
    pub fn read_blobs(
        &'a self,
        mut wanted: Vec<BlobLocation>,
        limits: RangeLimits,
    ) -> impl Stream<Item = OpenedBlob> + 'a {
        wanted.sort_unstable_by_key(|l| (l.pack, l.entry.offset, l.entry.id));
        // Pack numbers in sorted order, so the planner sees sorted items.
        let mut packs: Vec<Id> = Vec::new();
        let numbered: Vec<(u32, PackEntry)> = wanted
            .iter()
            .map(|l| {
                if packs.last() != Some(&l.pack) {
                    packs.push(l.pack);
                }
                ((packs.len() - 1) as u32, l.entry)
            })
            .collect();
        let ranges = plan_ranges(&numbered, &limits, |(p, e)| (*p, e));
        let wanted = Arc::new(wanted);
        futures::stream::iter(ranges)
            .map(move |range| {
                let wanted = wanted.clone();
                let pack = packs[range.pack as usize];
                async move {
                    let locations = &wanted[range.items.clone()];
                    let tier = self.repo.tier_of(locations[0].entry.blob_type);
                    let permit = self.reserve(2 * range.len + range.raw).await;
                    let fetched = self
                        .read(tier, pack, range.start, range.len, permit)
                        .await
                        .map_err(|e| in_pack_read(e, pack, &locations[0].entry.id));
                    let items = range.items.clone();
                    let all = wanted.clone();
                    let opened = match blocking(move || open_all(fetched, &all[items])).await {
                        Ok(opened) => opened,
                        Err(e) => wanted[range.items]
                            .iter()
                            .map(|l| OpenedBlob {
                                location: *l,
                                data: Err(copy_error(&e)),
                                payload: None,
                                _range: None,
                            })
                            .collect(),
                    };
                    futures::stream::iter(opened)
                }
            })
            .buffer_unordered(self.repo.concurrency())
            .flatten()
    }
}

/// Opens every blob of a fetched range (each distinct blob once).
fn open_all(fetched: Result<FetchedRange>, locations: &[BlobLocation]) -> Vec<OpenedBlob> {
    let fetched = match fetched {
        Ok(f) => Arc::new(f),
        Err(e) => {
            return locations
                .iter()
                .map(|l| OpenedBlob {
                    location: *l,
                    data: Err(copy_error(&e)),
                    payload: None,
                    _range: None,
                })
                .collect();
        }
    };
    let mut out = Vec::with_capacity(locations.len());
    let same = |a: &BlobLocation, b: &BlobLocation| {
        a.pack == b.pack && a.entry.offset == b.entry.offset && a.entry.id == b.entry.id
    };
    for group in locations.chunk_by(same) {
        let opened = fetched
            .open_keeping_payload(&group[0].entry)
            .map(|(plain, payload)| (Bytes::from(plain), payload.map(Bytes::from)))
            .map_err(|e| in_pack(e, fetched.pack));
        for l in group {
            let (data, payload) = match &opened {
                Ok((plain, payload)) => (Ok(plain.clone()), payload.clone()),
                Err(e) => (Err(copy_error(e)), None),
            };
            out.push(OpenedBlob {
                location: *l,
                data,
                payload,
                _range: Some(fetched.clone()),
            });
        }
    }
    out
}

/// The same error again, for each blob a failure touches (errors are not
/// `Clone`; the message and, for storage errors, the kind survive).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Storage(s) => Error::Storage(lifeboat_storage::Error::new(s.kind(), s.to_string())),
        Error::Corrupt { object, reason } => Error::Corrupt {
            object: object.clone(),
            reason: reason.clone(),
        },
        other => Error::Internal(other.to_string()),
    }
}

/// Whether a blob whose read at one location failed with `e` may still be
/// read from another indexed copy: the pack is missing, truncated or its
/// bytes are damaged. Any other failure (an unreachable storage, a denied
/// request) would fail the same for every copy, so it is returned at once.
pub fn another_copy_may_help(e: &Error) -> bool {
    e.class() == lifeboat_storage::ErrorClass::Damaged
        || matches!(
            e.storage_kind(),
            Some(ErrorKind::NotFound | ErrorKind::InvalidRange)
        )
}

/// A failed read of a pack as [`Repository::read_blob_at`] words it: a
/// missing or truncated pack is damage to the repository.
pub(crate) fn in_pack_read(e: Error, pack: Id, blob: &Id) -> Error {
    match e.storage_kind() {
        Some(ErrorKind::NotFound) => Error::corrupt(
            format!("pack {pack}"),
            format!("missing (needed for blob {blob})"),
        ),
        Some(ErrorKind::InvalidRange) => Error::corrupt(
            format!("pack {pack}"),
            format!("truncated (needed for blob {blob})"),
        ),
        _ => e,
    }
}

/// A damaged blob's error naming its pack too.
fn in_pack(e: Error, pack: Id) -> Error {
    match e {
        Error::Corrupt { object, reason } => Error::Corrupt {
            object: format!("{object} in pack {pack}"),
            reason,
        },
        e => e,
    }
}

/// A blob yielded by [`PackReader::read_blobs`].
#[derive(Debug)]
pub struct OpenedBlob {
    pub location: BlobLocation,
    /// The verified plaintext, or why it could not be read.
    pub data: Result<Bytes>,
    /// For a blob stored compressed: its decrypted zstd payload, which
    /// decompresses to `data` (checked).
    pub payload: Option<Bytes>,
    /// Holds the range's memory permit until its last blob is dropped.
    _range: Option<Arc<FetchedRange>>,
}

/// Bytes read from a pack, from which blobs are opened.
#[derive(Debug)]
pub struct FetchedRange {
    pack: Id,
    start: u64,
    bytes: Bytes,
    key: MasterKey,
    _permit: MemoryPermit,
}

impl FetchedRange {
    pub fn pack(&self) -> Id {
        self.pack
    }

    /// The bytes read (all of the pack for [`PackReader::read_whole`]).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The buffer the bytes were read into, for the next read, if nothing
    /// else holds them (`None` otherwise). Its length is unspecified.
    pub fn into_buffer(self) -> Option<Vec<u8>> {
        self.bytes.try_into_mut().ok().map(Vec::from)
    }

    /// Whether `entry` lies inside the bytes read.
    pub fn contains(&self, entry: &PackEntry) -> bool {
        let (start, end) = (
            entry.offset as u64,
            entry.offset as u64 + entry.length as u64,
        );
        start >= self.start && end <= self.start + self.bytes.len() as u64
    }

    /// Decrypts, decompresses and verifies one blob of the range against
    /// its id. CPU-bound: call it from a blocking thread. Errors are
    /// [`Error::Corrupt`]: the blob is damaged, or lies outside the bytes
    /// read (the pack is shorter than its index says).
    pub fn open(&self, entry: &PackEntry) -> Result<Vec<u8>> {
        open_blob(&self.key, entry, self.sealed(entry)?)
    }

    /// [`FetchedRange::open`], also giving back the decrypted zstd payload
    /// of a blob stored compressed (see [`crate::pack::seal_precompressed`]).
    pub fn open_keeping_payload(&self, entry: &PackEntry) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        open_blob_keeping_payload(&self.key, entry, self.sealed(entry)?)
    }

    /// [`FetchedRange::open`] into `scratch`, for a caller that uses each
    /// plaintext before opening the next (`check --read-data`, restore):
    /// it is borrowed from `scratch`, whose buffers the next blob reuses.
    pub fn open_in<'s>(&self, entry: &PackEntry, scratch: &'s mut BlobScratch) -> Result<&'s [u8]> {
        open_blob_in(&self.key, entry, self.sealed(entry)?, scratch)
    }

    /// The sealed bytes of `entry` within the range.
    fn sealed(&self, entry: &PackEntry) -> Result<&[u8]> {
        if !self.contains(entry) {
            return Err(Error::corrupt(
                format!("pack {}", self.pack),
                "shorter than its index says",
            ));
        }
        let at = (entry.offset as u64 - self.start) as usize;
        Ok(&self.bytes[at..at + entry.length as usize])
    }
}

/// Most bytes of whole tree packs one process keeps (see [`TreePacks`]).
/// Two default-size (16 MiB) packs: the trees of a snapshot of ~80,000
/// files fit in a few MiB of packs, and memory must stay bounded whatever
/// the repository's size.
pub(crate) const TREE_PACK_CACHE_BYTES: u64 = 32 << 20;

/// Whole tree packs read by this process, so that reading the trees of a
/// snapshot (a backup comparing with its parent, a restore's selection,
/// `ls`, `find`, `check`) costs one request per tree pack instead of one
/// per tree: on object storage each request is a round trip (the
/// object-storage diagnosis in docs/performance.md counted 380 ranged reads
/// for 380 trees held in one 344 KB pack), and on a local disk each is a
/// hand-off to the blocking pool and back (a `check` of linux-source's
/// trees spent a quarter of its CPU waking threads for them).
///
/// A tree pack holds trees only (the writer keeps one open pack per blob
/// type), and packs are immutable and named by their content, so a cached
/// pack is never stale. What is kept is the sealed bytes: each tree is
/// still opened and verified against its id on every read, exactly as a
/// ranged read's bytes are. Memory is bounded by [`TREE_PACK_CACHE_BYTES`]
/// (oldest pack dropped first); a repository whose packs may be larger than
/// half of it reads trees by range, as before. Concurrent readers of the
/// same pack share one fetch.
#[derive(Default)]
pub(crate) struct TreePacks {
    state: Mutex<TreePackState>,
}

impl std::fmt::Debug for TreePacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock().unwrap();
        f.debug_struct("TreePacks")
            .field("packs", &st.order.len())
            .field("bytes", &st.bytes)
            .finish()
    }
}

#[derive(Default)]
struct TreePackState {
    packs: HashMap<Id, CachedPack>,
    /// Packs counted in `bytes`, oldest first.
    order: VecDeque<Id>,
    bytes: u64,
}

struct CachedPack {
    bytes: Arc<OnceCell<Bytes>>,
    counted: bool,
}

impl TreePacks {
    /// Forgets every pack held, so the next reads fetch them again.
    pub(crate) fn clear(&self) {
        *self.state.lock().unwrap() = TreePackState::default();
    }

    /// Whether trees of a repository with packs of `pack_size` bytes are
    /// read by whole pack.
    fn applies(pack_size: u32) -> bool {
        // A pack may run one blob past the configured size.
        (pack_size as u64) * 2 <= TREE_PACK_CACHE_BYTES
    }

    /// The sealed bytes of tree pack `pack`, fetched whole on first use.
    async fn get(&self, repo: &Repository, pack: Id) -> Result<Bytes> {
        let cell = {
            let mut st = self.state.lock().unwrap();
            st.packs
                .entry(pack)
                .or_insert_with(|| CachedPack {
                    bytes: Arc::new(OnceCell::new()),
                    counted: false,
                })
                .bytes
                .clone()
        };
        let bytes = cell
            .get_or_try_init(|| async { repo.get_cached(&pack_key(&pack), None).await })
            .await?
            .clone();
        let mut st = self.state.lock().unwrap();
        if let Some(entry) = st.packs.get_mut(&pack)
            && !entry.counted
        {
            entry.counted = true;
            st.bytes += bytes.len() as u64;
            st.order.push_back(pack);
            while st.bytes > TREE_PACK_CACHE_BYTES && st.order.len() > 1 {
                let Some(old) = st.order.pop_front() else {
                    break;
                };
                if let Some(gone) = st.packs.remove(&old)
                    && let Some(b) = gone.bytes.get()
                {
                    st.bytes -= b.len() as u64;
                }
            }
        }
        Ok(bytes)
    }
}

impl Repository {
    /// Reads, decrypts and verifies one tree blob at a known location,
    /// from its whole pack kept in memory (see [`TreePacks`]).
    pub(crate) async fn read_tree_blob_at(&self, id: &Id, loc: &BlobLocation) -> Result<Bytes> {
        // Whole packs pay off on every storage: on object storage each
        // request is a round trip, and on a local disk each ranged read is
        // a hand-off to the blocking pool, which cost a tree walk more than
        // reading the few MiB of its packs once (docs/performance.md,
        // "Trees without thread hand-offs").
        if !TreePacks::applies(self.config().pack_size) {
            return self.read_blob_at(id, loc).await;
        }
        let loc = *loc;
        let pack = self
            .tree_packs()
            .get(self, loc.pack)
            .await
            .map_err(|e| in_pack_read(e, loc.pack, id))?;
        let (start, len) = (loc.entry.offset as usize, loc.entry.length as usize);
        if start + len > pack.len() {
            return Err(Error::corrupt(
                format!("pack {}", loc.pack),
                format!("shorter than its index says (needed for blob {id})"),
            ));
        }
        let key = self.key().clone();
        let work = len.max(loc.entry.raw_length as usize);
        let plain = open_off_thread_if_large(work, move || {
            open_blob(&key, &loc.entry, &pack[start..start + len])
        })
        .await?
        .map_err(|e| in_pack(e, loc.pack))?;
        Ok(Bytes::from(plain))
    }
}

/// Blobs up to this size (stored and plaintext) are opened (decrypted,
/// decompressed, verified) on the task that asked for them, and trees up
/// to it decoded there; larger ones on the blocking pool. Handing work
/// to the pool and back wakes two threads, which cost more than opening
/// a small blob: a directory's tree of a few dozen
/// entries is a few KiB, opened in microseconds, and a walk of a
/// snapshot's trees reads thousands of them (`check` spent ~40% of its
/// CPU in those wake-ups on a 2-core VM). 16 KiB opens in well under
/// tokio's ~100 µs between awaits.
pub(crate) const OPEN_ON_TASK_BYTES: usize = 16 * 1024;

/// Runs `open` here if the work is at most [`OPEN_ON_TASK_BYTES`], else
/// on the blocking pool. `bytes`: for opening a blob, the larger of its
/// stored and plaintext lengths (a small stored blob of a very
/// compressible chunk decompresses to megabytes; opening never makes more
/// plaintext than the index's length); for decoding a tree, its plaintext.
pub(crate) async fn open_off_thread_if_large<T: Send + 'static>(
    bytes: usize,
    open: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    if bytes <= OPEN_ON_TASK_BYTES {
        Ok(open())
    } else {
        blocking(open).await
    }
}

impl Repository {
    /// Reads, decrypts and verifies one blob at a known location (from the
    /// cold tier for a data blob of a repository that has one).
    pub async fn read_blob_at(&self, id: &Id, loc: &BlobLocation) -> Result<Bytes> {
        let loc = *loc;
        let reader = PackReader::new(self, 1);
        let fetched = reader
            .read(
                self.tier_of(loc.entry.blob_type),
                loc.pack,
                loc.entry.offset as u64,
                loc.entry.length as u64,
                MemoryPermit { _held: None },
            )
            .await
            .map_err(|e| in_pack_read(e, loc.pack, id))?;
        let work = loc.entry.length.max(loc.entry.raw_length) as usize;
        let plain = open_off_thread_if_large(work, move || fetched.open(&loc.entry))
            .await?
            .map_err(|e| in_pack(e, loc.pack))?;
        Ok(Bytes::from(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::BlobType;

    const KIB: u32 = 1024;
    const MIB: u32 = 1024 * 1024;

    fn fetched_from(bytes: Bytes) -> FetchedRange {
        FetchedRange {
            pack: Id([7; 32]),
            start: 0,
            bytes,
            key: MasterKey::generate(),
            _permit: MemoryPermit { _held: None },
        }
    }

    /// `into_buffer` hands back the very allocation the bytes were read
    /// into (what `check --read-data` recycles), whether the read filled
    /// the buffer exactly or left room, and nothing while another handle
    /// to the bytes lives.
    #[test]
    fn into_buffer_gives_back_the_same_allocation() {
        for (len, cap) in [(4096, 4096), (4000, 8192)] {
            let mut buf = Vec::with_capacity(cap);
            buf.resize(len, 0xab);
            let at = buf.as_ptr();
            let back = fetched_from(Bytes::from(buf)).into_buffer().unwrap();
            assert_eq!(back.as_ptr(), at, "len {len}, capacity {cap}");
            assert!(back.capacity() >= len);
        }
        let shared = Bytes::from(vec![1u8; 4096]);
        let other = shared.clone();
        assert!(fetched_from(shared).into_buffer().is_none());
        drop(other);
    }

    fn entry(offset: u32, length: u32, raw_length: u32, n: u8) -> PackEntry {
        PackEntry {
            blob_type: BlobType::Data,
            id: Id([n; 32]),
            offset,
            length,
            raw_length,
            compressed: raw_length != length,
        }
    }

    fn plan(items: &[(u32, PackEntry)]) -> Vec<PackRange> {
        plan_ranges(items, &RangeLimits::RESTORE, |(p, e)| (*p, e))
    }

    #[test]
    fn neighbours_within_the_gap_are_one_range() {
        let items = [
            (0, entry(0, 100 * KIB, 100 * KIB, 1)),
            // 256 KiB after the first ends: still merged.
            (0, entry(356 * KIB, 10 * KIB, 10 * KIB, 2)),
            // One byte more than the gap: a new range.
            (0, entry(366 * KIB + 256 * KIB + 1, 10 * KIB, 30 * KIB, 3)),
        ];
        let r = plan(&items);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!((r[0].start, r[0].len), (0, 366 * 1024));
        assert_eq!(r[0].items, 0..2);
        assert_eq!(r[0].raw, 110 * 1024);
        assert_eq!(r[0].blob_mem, 200 * 1024);
        assert_eq!(r[1].items, 2..3);
        assert_eq!((r[1].len, r[1].raw, r[1].blob_mem), (10240, 30720, 40960));
        assert_eq!(r[1].memory(), 10240 + 40960);
    }

    #[test]
    fn packs_are_never_merged() {
        let items = [
            (0, entry(0, 10, 10, 1)),
            (1, entry(10, 10, 10, 2)),
            (1, entry(20, 10, 10, 3)),
        ];
        let r = plan(&items);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].pack, r[0].items.clone()), (0, 0..1));
        assert_eq!((r[1].pack, r[1].start, r[1].len), (1, 10, 20));
    }

    #[test]
    fn ranges_stop_at_the_maximum_length() {
        // Eight adjacent 1 MiB blobs: two 4 MiB reads.
        let items: Vec<(u32, PackEntry)> = (0..8u32)
            .map(|i| (0, entry(i * MIB, MIB, MIB, i as u8)))
            .collect();
        let r = plan(&items);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            (r[0].start, r[0].len, r[0].items.clone()),
            (0, 4 << 20, 0..4)
        );
        assert_eq!((r[1].start, r[1].len), (4 << 20, 4 << 20));
        // A blob larger than the maximum is a range of its own.
        let items = [
            (0, entry(0, 10, 10, 1)),
            (0, entry(10, 5 * MIB, 5 * MIB, 2)),
            (0, entry(10 + 5 * MIB, 10, 10, 3)),
        ];
        let r = plan(&items);
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[1].len, 5 << 20);
    }

    #[test]
    fn ranges_are_cut_at_the_plaintext_budget() {
        // 256 KiB sealed, 4 MiB plaintext each (16:1): four fill the
        // 16 MiB plaintext cut long before the 4 MiB read length.
        let items: Vec<(u32, PackEntry)> = (0..10u32)
            .map(|i| (0, entry(i * 256 * KIB, 256 * KIB, 4 * MIB, i as u8)))
            .collect();
        let r = plan(&items);
        assert_eq!(
            r.iter().map(|r| r.items.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert!(r.iter().all(|r| r.raw <= 16 << 20));
        assert_eq!(r[0].len, 1 << 20);
        // Other limits cut elsewhere.
        let loose = RangeLimits {
            max_raw: u64::MAX,
            ..RangeLimits::RESTORE
        };
        let r = plan_ranges(&items, &loose, |(p, e)| (*p, e));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn one_blob_used_twice_is_read_once() {
        let e = entry(0, 100, 1000, 7);
        let items = [(0, e), (0, e), (0, entry(100, 50, 50, 8))];
        let r = plan(&items);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].items, 0..3);
        // Plaintext counts each blob once.
        assert_eq!(r[0].raw, 1050);
        assert_eq!(r[0].len, 150);
    }

    #[test]
    fn nothing_wanted_is_no_range() {
        assert!(plan(&[]).is_empty());
    }
}
