//! Write sessions: adding blobs, packing and uploading them, and finally
//! writing the index and the snapshot record.
//!
//! Concurrency: callers (the archiver's worker threads) call
//! [`WriteSession::add_blob_blocking`] from blocking threads, or
//! [`WriteSession::add_blob`] from async code. Compression and encryption
//! happen in the caller's thread; only appending to the open pack takes the
//! session lock. Full packs go through a bounded channel to one uploader task
//! that runs a few uploads at once ([`uploads_at_once`]: as many packs as
//! [`UPLOAD_BUDGET_BYTES`] holds, at most the storage's connections) — the
//! bound is what keeps memory flat: at most that many packs upload, one
//! waits in the channel and one in the hands of the caller that finished
//! it, however slow the storage (on S3, 16 connections let 32 full packs
//! queue before issue 17). While a caller waits to hand a pack over, the
//! others wait before their next blob ([`WriteSession`]'s `handover`), so
//! they do not fill further packs meanwhile: without that, each adding
//! thread could come to hold a finished pack of its own (copy adds 8 blobs
//! at once). Callers that passed the gate just before a hand-over began
//! add one blob each; should those fill the open pack, its finisher waits
//! at the gate with it: one more pack at most, and only when blobs are
//! large beside the pack size.
//!
//! Deduplication is by blob type and id: a blob's id hashes its plaintext
//! alone, so a file whose bytes equal a directory listing has that tree's
//! id, and must still be stored as its own data blob (and the tree as a
//! tree), or one of them would be read as the other.
//!
//! Packs never mix blob types: the session keeps one open pack for data
//! blobs and one for tree blobs (as restic does), so a repository with a
//! cold tier can send data packs there and keep tree packs hot, and a pack's
//! tier follows from the type of its blobs. A hot-only repository gets the
//! same separation (tree packs are small and read together, which helps
//! listing too); its data path is unchanged.
//!
//! Durability order: a pack is put (durable) before any index object names
//! it, and [`WriteSession::finish`] writes the snapshot record after the
//! index. A crash at any point leaves only unreferenced packs (garbage for
//! prune, recoverable by `repair index`), never a snapshot with missing data.
//!
//! Locking: [`WriteSession::start`] takes a shared repository lock *before*
//! loading the index and holds it until the snapshot record is written (or
//! `flush` returns), so prune (exclusive) never runs while a session may
//! reference blobs it found in the index.
//!
//! Dry run ([`WriteOptions::dry_run`], `backup --dry-run`): the session
//! takes no lock, seals every new blob (so the counts of what would be
//! added are exact) and keeps only its id; nothing is uploaded and
//! [`WriteSession::finish`] writes neither index nor record.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::index::{Index, IndexFile, IndexPack, index_batches};
use crate::limits::MAX_BLOB_LEN;
use crate::lock::{LockKind, LockOptions, RepositoryLock};
use crate::pack::{BlobType, FinishedPack, MAX_PACK_ENTRIES, PackBuilder, seal_blob};
use crate::packread::pack_key;
use crate::record::SnapshotRecord;
use crate::repository::{Repository, put_idempotent};
use crate::{Error, Id, Result};

/// Packs per index object written during a session: bounds what a crash in a
/// long backup forces the next run to re-upload (the packs are still there
/// but unindexed until `repair index`).
const PACKS_PER_INDEX: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// zstd level for this session (defaults to the repository's).
    pub compression_level: Option<i32>,
    /// Count what would be added, write nothing (see the module doc).
    pub dry_run: bool,
}

/// Counters of what a session added.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub blobs_added: AtomicU64,
    pub added_raw_bytes: AtomicU64,
    pub added_bytes: AtomicU64,
    pub packs_written: AtomicU64,
}

/// Result of adding one blob.
#[derive(Debug, Clone, Copy)]
pub struct AddedBlob {
    pub id: Id,
    /// False when the repository (or this session) already had it.
    pub new: bool,
}

struct State {
    /// The open packs, one per blob type (see [`slot`]).
    packs: [PackBuilder; 2],
    /// Blobs added in this session (in the open pack or already uploaded),
    /// by type and id: a data blob never stands in for a tree of the same
    /// id, nor the other way round.
    seen: HashSet<(BlobType, Id)>,
}

struct Shared {
    repo: Arc<Repository>,
    index: Arc<Index>,
    level: i32,
    dry_run: bool,
    state: Mutex<State>,
    stats: WriteStats,
    /// Packs uploaded but not yet in an index object.
    unindexed: Mutex<Vec<IndexPack>>,
    /// The error that stopped the uploader, handed to the first caller that
    /// notices (so "storage full" reaches the user, not "task stopped").
    upload_failure: Mutex<Option<Error>>,
}

impl Shared {
    fn upload_error(&self) -> Error {
        self.upload_failure
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| {
                Error::Internal("pack upload stopped (see the earlier error)".into())
            })
    }
}

pub struct WriteSession {
    shared: Arc<Shared>,
    tx: mpsc::Sender<FinishedPack>,
    /// Held by a caller while it waits to hand a finished pack to the
    /// uploader; every caller passes it before adding a blob (see the
    /// module doc).
    handover: tokio::sync::Mutex<()>,
    uploader: JoinHandle<Result<()>>,
    /// The shared lock; `None` for prune's own session, which runs under
    /// the exclusive lock.
    lock: Option<RepositoryLock>,
}

impl std::fmt::Debug for WriteSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteSession")
    }
}

/// The repository's index without the entries of packs that are not in
/// storage: one listing of the packs of each tier (`data/`, paginated:
/// about one request per 1,000 packs on S3). An index object that names a
/// pack prune deleted (put back by someone with write access to the
/// storage, or left by a crash between prune's steps) would otherwise make
/// this session deduplicate against blobs that are gone, and its snapshot
/// would silently lack data until `check` ran. The blobs are written again
/// instead, and the dropped packs are warned about.
async fn present_packs_only(repo: &Repository) -> Result<Arc<Index>> {
    let index = repo.index().await?;
    let present: HashSet<Id> = repo
        .list_packs()
        .await?
        .into_iter()
        .filter_map(|(_, info)| Id::from_hex(info.key.name()))
        .collect();
    if index.packs().all(|p| present.contains(p)) {
        return Ok(index);
    }
    let mut kept = (*index).clone();
    let dropped = kept.retain_packs(|p| present.contains(p));
    tracing::warn!(
        "{dropped} pack(s) named by the index are not in storage; their blobs are written \
         again (run `lifeboat check`, then `lifeboat repair index`)"
    );
    Ok(Arc::new(kept))
}

impl WriteSession {
    /// Starts a session under a shared lock. Must be called inside a Tokio
    /// runtime. Fails with [`Error::Locked`] while a prune runs.
    pub async fn start(repo: Arc<Repository>, options: WriteOptions) -> Result<Self> {
        repo.require(crate::Permission::Append, "write snapshots")?;
        if options.dry_run {
            // Nothing will be written, so nothing needs protecting from a
            // prune; a prune running meanwhile only makes the counts stale.
            let index = repo.index().await?;
            return Self::start_unlocked(repo, options, index).await;
        }
        let lock =
            RepositoryLock::acquire(&repo, LockKind::Shared, &LockOptions::default()).await?;
        // An index cached before the lock was taken may predate a prune and
        // name blobs that are gone: read it again now that prune is excluded.
        repo.invalidate_index().await;
        let index = match present_packs_only(&repo).await {
            Ok(index) => index,
            Err(e) => {
                let _ = lock.release().await;
                return Err(e);
            }
        };
        // A cold tier is checked (and given its marker if it predates
        // markers) before anything is written to it.
        if let Err(e) = repo.ensure_cold_marker().await {
            let _ = lock.release().await;
            return Err(e);
        }
        match Self::start_unlocked(repo, options, index).await {
            Ok(mut s) => {
                s.lock = Some(lock);
                Ok(s)
            }
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    }

    /// Starts a session without taking a lock: only for a caller that holds
    /// the exclusive lock (prune's repacking).
    /// Blobs in `index` are taken as present (prune passes the index of the
    /// packs it keeps, so blobs of packs it drops are written again).
    pub(crate) async fn start_unlocked(
        repo: Arc<Repository>,
        options: WriteOptions,
        index: Arc<Index>,
    ) -> Result<Self> {
        let level = options
            .compression_level
            .unwrap_or(repo.config().compression_level);
        let shared = Arc::new(Shared {
            repo,
            index,
            level,
            dry_run: options.dry_run,
            state: Mutex::new(State {
                packs: Default::default(),
                seen: HashSet::new(),
            }),
            stats: WriteStats::default(),
            unindexed: Mutex::new(Vec::new()),
            upload_failure: Mutex::new(None),
        });
        let concurrency = uploads_at_once(
            shared.repo.config().pack_size as u64,
            shared.repo.concurrency(),
        );
        let (tx, rx) = mpsc::channel::<FinishedPack>(1);
        let uploader = tokio::spawn(upload_loop(shared.clone(), rx, concurrency));
        Ok(WriteSession {
            shared,
            tx,
            handover: tokio::sync::Mutex::new(()),
            uploader,
            lock: None,
        })
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.shared.repo
    }

    pub fn stats(&self) -> &WriteStats {
        &self.shared.stats
    }

    /// Whether this session writes nothing ([`WriteOptions::dry_run`]).
    pub fn is_dry_run(&self) -> bool {
        self.shared.dry_run
    }

    /// Sets the record's added-blob counters from this session's stats
    /// ([`WriteSession::finish`] does it before writing the record).
    pub fn fill_summary(&self, record: &mut SnapshotRecord) {
        let s = &self.shared.stats;
        record.summary.blobs_added = s.blobs_added.load(Ordering::Relaxed);
        record.summary.added_raw_bytes = s.added_raw_bytes.load(Ordering::Relaxed);
        record.summary.added_bytes = s.added_bytes.load(Ordering::Relaxed);
    }

    /// Id a blob with this content would get (no storage access).
    pub fn blob_id(&self, data: &[u8]) -> Id {
        self.shared.repo.key().blob_id(data)
    }

    /// True if the repository or this session already holds the blob of
    /// this type and id.
    pub fn has_blob(&self, blob_type: BlobType, id: &Id) -> bool {
        self.shared.index.contains(blob_type, id)
            || self
                .shared
                .state
                .lock()
                .unwrap()
                .seen
                .contains(&(blob_type, *id))
    }

    /// Adds a blob from a blocking thread (never from async code: it blocks
    /// when the upload queue is full, which is the backpressure).
    pub fn add_blob_blocking(&self, blob_type: BlobType, data: &[u8]) -> Result<AddedBlob> {
        drop(self.handover.blocking_lock());
        let (added, full) = self.add_inner(blob_type, data, None)?;
        if let Some(pack) = full {
            let _turn = self.handover.blocking_lock();
            self.tx
                .blocking_send(pack)
                .map_err(|_| self.shared.upload_error())?;
        }
        Ok(added)
    }

    /// Adds a blob from async code.
    pub async fn add_blob(&self, blob_type: BlobType, data: &[u8]) -> Result<AddedBlob> {
        self.add_blob_precompressed(blob_type, data, None).await
    }

    /// [`WriteSession::add_blob`] of a blob whose zstd payload is already
    /// made (`zstd`: a frame that decompresses to `data`, checked by the
    /// caller, as `copy` has it from the source): sealed as it is instead
    /// of compressing `data` again, when this repository compresses and
    /// the payload is the shorter. The blob is then stored at the source's
    /// compression level, not this session's.
    pub async fn add_blob_precompressed(
        &self,
        blob_type: BlobType,
        data: &[u8],
        zstd: Option<&[u8]>,
    ) -> Result<AddedBlob> {
        drop(self.handover.lock().await);
        let (added, full) = self.add_inner(blob_type, data, zstd)?;
        if let Some(pack) = full {
            let _turn = self.handover.lock().await;
            self.tx
                .send(pack)
                .await
                .map_err(|_| self.shared.upload_error())?;
        }
        Ok(added)
    }

    fn add_inner(
        &self,
        blob_type: BlobType,
        data: &[u8],
        zstd: Option<&[u8]>,
    ) -> Result<(AddedBlob, Option<FinishedPack>)> {
        if self.uploader.is_finished() {
            return Err(self.shared.upload_error());
        }
        if data.len() > MAX_BLOB_LEN as usize {
            // Only a tree can be this large (file chunks are at most the
            // chunker's max_size): readers refuse such lengths.
            return Err(Error::BadInput(format!(
                "a directory listing of {} bytes is larger than the {MAX_BLOB_LEN} bytes a blob may have; split the directory",
                data.len()
            )));
        }
        let id = self.blob_id(data);
        if self.has_blob(blob_type, &id) {
            return Ok((AddedBlob { id, new: false }, None));
        }
        let key = self.shared.repo.key();
        let level = self.shared.level;
        // Sealed into this thread's buffer, outside the lock; only the
        // copy into the open pack happens under it.
        let (stored, full) = seal_blob(key, blob_type, id, data, level, zstd, |sealed| {
            let stored = sealed.bytes.len() as u64;
            let mut st = self.shared.state.lock().unwrap();
            // Re-check under the lock: another thread may have added the
            // same blob while we were compressing.
            if !st.seen.insert((blob_type, id)) {
                return (None, None);
            }
            if self.shared.dry_run {
                return (Some(stored), None);
            }
            let pack_size = self.shared.repo.config().pack_size as usize;
            let pack = &mut st.packs[slot(blob_type)];
            // Room for the blob that takes the pack past its size and
            // the trailer: growing would copy the pack into fresh pages.
            pack.push(sealed, pack_size + pack_size / 2);
            let full = (pack.len() >= pack_size || pack.entry_count() >= MAX_PACK_ENTRIES)
                .then(|| std::mem::take(pack));
            (Some(stored), full)
        });
        let Some(stored) = stored else {
            return Ok((AddedBlob { id, new: false }, None));
        };
        let s = &self.shared.stats;
        s.blobs_added.fetch_add(1, Ordering::Relaxed);
        s.added_raw_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        s.added_bytes.fetch_add(stored, Ordering::Relaxed);
        let finished = full.map(|p| p.finish(self.shared.repo.key()));
        Ok((AddedBlob { id, new: true }, finished))
    }

    /// Uploads what is buffered and writes the index, without a snapshot,
    /// then releases the lock.
    pub async fn flush(self) -> Result<()> {
        let (_, lock) = self.upload_all().await?;
        release(lock).await;
        Ok(())
    }

    /// Uploads the open pack, waits for the uploader and writes the index;
    /// hands back the lock, still held.
    async fn upload_all(self) -> Result<(Arc<Shared>, Option<RepositoryLock>)> {
        let WriteSession {
            shared,
            tx,
            uploader,
            lock,
            ..
        } = self;
        let open = std::mem::take(&mut shared.state.lock().unwrap().packs);
        for last in open {
            if !last.is_empty() {
                let pack = last.finish(shared.repo.key());
                // If the uploader died, its error is reported below.
                let _ = tx.send(pack).await;
            }
        }
        drop(tx);
        let uploaded = match uploader.await {
            Ok(Ok(())) => write_pending_index(&shared, true).await,
            Ok(Err(_)) => Err(shared.upload_error()),
            Err(e) => Err(Error::Internal(e.to_string())),
        };
        if let Err(e) = uploaded {
            // A failed session (storage full, a vanished location) removes
            // its lock before reporting, so it never blocks a prune.
            release(lock).await;
            return Err(e);
        }
        // Each index object written invalidated the handle's cached index
        // (`Repository::write_index`); a session that added nothing keeps it.
        Ok((shared, lock))
    }

    /// Finishes the session: uploads the last pack, writes the index, then the
    /// snapshot record (last, so a snapshot is visible only when complete).
    /// The lock is held until the record is durable: a prune that ran
    /// between the index and the record would see the new blobs unused.
    ///
    /// In a dry run nothing is written: the summary is filled in and the id
    /// returned is the one the record would have had.
    pub async fn finish(self, mut record: SnapshotRecord) -> Result<Id> {
        self.fill_summary(&mut record);
        let (shared, lock) = self.upload_all().await?;
        if shared.dry_run {
            return Ok(Id::of_bytes(&record.encode(shared.repo.key())));
        }
        // A vanished location first (its lock vanished with it, but
        // "unreachable" is what the user must hear), then the lock.
        let verified = match (shared.repo.verify_locations().await, &lock) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(lock)) => lock.verify().await,
            (Ok(()), None) => Ok(()),
        };
        let written = match verified {
            Ok(()) => shared.repo.put_snapshot_record(&record).await,
            Err(e) => Err(e),
        };
        release(lock).await;
        if let Ok(id) = &written {
            crate::audit::append_after(
                &shared.repo,
                crate::audit::Entry::new("backup")
                    .arg("host", &record.host)
                    .arg("paths", &record.paths)
                    .arg("tags", &record.tags)
                    .arg("mode", record.mode)
                    .arg("added_bytes", record.summary.added_bytes)
                    .snapshot(*id),
            )
            .await;
        }
        written
    }
}

/// Releases a session's lock. A failure only leaves a lock object behind,
/// which goes stale and is removed by prune, so it does not fail the session.
async fn release(lock: Option<RepositoryLock>) {
    if let Some(lock) = lock
        && let Err(e) = lock.release().await
    {
        tracing::warn!("cannot remove the repository lock: {e}");
    }
}

/// Bytes of finished packs a session uploads at once: 4 packs of the
/// default 16 MiB. Enough to keep a disk or a remote connection busy
/// (restic uploads over 5 connections by default); beyond that, packs
/// only wait in memory whenever the storage is slower than the packing
/// (16 uploads and 16 queued on S3 before this bound).
pub(crate) const UPLOAD_BUDGET_BYTES: u64 = 64 << 20;

/// Packs a session uploads at once: as many as [`UPLOAD_BUDGET_BYTES`]
/// holds at the repository's pack size, at least one, at most the
/// storage's connections. One more finished pack waits in the channel
/// and one (rarely two) in callers' hands; the other callers wait before
/// their next blob until it is taken (the module doc).
pub(crate) fn uploads_at_once(pack_size: u64, connections: usize) -> usize {
    let fit = (UPLOAD_BUDGET_BYTES / pack_size.max(1)).max(1);
    (fit as usize).min(connections.max(1))
}

async fn upload_loop(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<FinishedPack>,
    concurrency: usize,
) -> Result<()> {
    let mut uploads = tokio_stream_of(rx)
        .map(|pack| {
            let shared = shared.clone();
            async move {
                let key = pack_key(&pack.id);
                // Packs hold one blob type, so the first entry decides.
                let blob_type = pack.entries.first().map_or(BlobType::Data, |e| e.blob_type);
                let storage = shared
                    .repo
                    .tier_storage(shared.repo.tier_of(blob_type))
                    .await?;
                if blob_type == BlobType::Tree && shared.repo.disk_cache().is_some() {
                    // The next backup compares with these trees: keep the
                    // pack in the metadata cache instead of fetching it back.
                    let bytes = bytes::Bytes::from(pack.bytes);
                    put_idempotent(storage, &key, bytes.to_vec()).await?;
                    shared.repo.cache_copy(&key, &bytes).await;
                } else {
                    put_idempotent(storage, &key, pack.bytes).await?;
                }
                shared.stats.packs_written.fetch_add(1, Ordering::Relaxed);
                shared.unindexed.lock().unwrap().push(IndexPack {
                    id: pack.id,
                    entries: pack.entries,
                });
                write_pending_index(&shared, false).await
            }
        })
        .buffer_unordered(concurrency);
    while let Some(r) = uploads.next().await {
        if let Err(e) = r {
            *shared.upload_failure.lock().unwrap() = Some(e);
            return Err(Error::Internal("pack upload failed".into()));
        }
    }
    Ok(())
}

/// Which open pack of [`State::packs`] takes a blob of this type.
fn slot(blob_type: BlobType) -> usize {
    match blob_type {
        BlobType::Data => 0,
        BlobType::Tree => 1,
    }
}

fn tokio_stream_of<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Writes an index object for uploaded packs once enough have gathered (or
/// always, when `all`).
async fn write_pending_index(shared: &Shared, all: bool) -> Result<()> {
    let batch = {
        let mut pending = shared.unindexed.lock().unwrap();
        if pending.is_empty() || (!all && pending.len() < PACKS_PER_INDEX) {
            return Ok(());
        }
        std::mem::take(&mut *pending)
    };
    for packs in index_batches(&batch, PACKS_PER_INDEX) {
        shared
            .repo
            .write_index(&IndexFile {
                packs: packs.to_vec(),
                supersedes: vec![],
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_at_once_hold_the_budget_and_no_more_than_the_connections() {
        // Default 16 MiB packs: 4 uploads, on S3 (16 connections) as on a
        // local disk (4).
        assert_eq!(uploads_at_once(16 << 20, 16), 4);
        assert_eq!(uploads_at_once(16 << 20, 4), 4);
        // Small packs: as many as the storage takes at once.
        assert_eq!(uploads_at_once(1 << 20, 16), 16);
        assert_eq!(uploads_at_once(1 << 20, 2), 2);
        // Packs larger than the budget: one at a time, never none.
        assert_eq!(uploads_at_once(1 << 30, 16), 1);
        assert_eq!(uploads_at_once(16 << 20, 0), 1);
    }
}
