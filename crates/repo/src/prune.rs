//! `prune`: removes data no snapshot references and repacks packs that are
//! mostly unused, under the exclusive repository lock.
//!
//! Steps: take the exclusive lock (fails while any backup holds a shared
//! one); merge every index object and read every snapshot record (any
//! failure aborts: a record or tree that cannot be read might reference
//! anything); walk all trees to mark the used blobs; classify packs as kept,
//! deleted (no used blob), repacked (unused share above `max_unused`, up to
//! `max_repack` bytes) or unindexed leftovers of crashed backups. Then, in
//! this order, each step durable before the next: write new packs holding
//! the live blobs of repacked packs (and their index objects) → write index
//! objects covering every kept pack, with `supersedes` naming all old index
//! objects → delete the old index objects → delete dropped, repacked and
//! unindexed packs → delete stale locks → release the lock. No object is
//! rewritten in place. The argument that a crash anywhere is harmless is in
//! `docs/format.md` ("Prune").
//!
//! Memory: the merged index (47 bytes a blob), one bit a blob for "used",
//! a few dozen bytes a pack, the trees in flight and, while the kept packs'
//! index objects are written, four bytes a blob to order them by pack. No
//! decoded index object, set of blob ids or per-pack entry list is held
//! beside the index (docs/performance.md, "Cost at scale").
//!
//! With a cold tier, packs are listed in both tiers and deleted from the one
//! they are in; repacking a data pack downloads it from the cold tier (whole,
//! like any repacked pack) and uploads its live blobs there again, which on
//! an archive storage class costs retrieval fees and time:
//! [`PruneStats::cold_read_bytes`] says how much, and `max_repack_bytes`
//! bounds it. Deleting whole unused packs reads nothing.
//!
//! Archive objects (`crate::archive`) are not packs: after the lock is
//! released, prune hands them to the archive module's expiry with the
//! retention rules given in [`PruneOptions::archive`], so forgetting a
//! PostgreSQL base backup frees the WAL only it needed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use lifeboat_storage::{Kind, ObjectKey};
use serde::Serialize;

use crate::archive::{ArchiveRules, ExpireReport, expire_after_prune};
use crate::index::{Index, IndexFile, IndexPack};
use crate::limits::get_bounded;
use crate::lock::{LockKind, LockOptions, RepositoryLock, remove_stale_locks};
use crate::pack::BlobType;
use crate::packread::{PackReader, pack_key};
use crate::record::SnapshotRecord;
use crate::repository::{Repository, Tier, blocking};
use crate::tree::{NodeKind, Tree};
use crate::writer::{WriteOptions, WriteSession};
use crate::{Error, Id, Result};

/// Packs per index object written by prune (as `repair index`): large
/// enough for few objects, small enough that one object stays a few MiB.
const PACKS_PER_INDEX: usize = 256;

/// Old pack bytes a repack holds at once, in KiB: three default-size packs
/// (16 MiB), the two downloading ahead and the one being rewritten, so for
/// such packs the read-ahead, not the budget, is what limits it; packs
/// larger than configured wait for each other instead.
const REPACK_BUDGET_KIB: u32 = 3 * 16 * 1024;

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub dry_run: bool,
    /// Repack a pack when more than this percentage of its bytes is unused.
    /// 10 %: rewriting a pack costs its used bytes in upload, so only packs
    /// with a real share of garbage are worth it.
    pub max_unused_percent: f64,
    /// Most bytes of packs to repack in one run (`None`: no limit).
    pub max_repack_bytes: Option<u64>,
    pub lock: LockOptions,
    /// Retention rules for archive objects, supplied by the connectors
    /// (`None`: archive objects are left alone). Objects a rule says the
    /// remaining snapshots do not need are deleted after the packs.
    pub archive: Option<ArchiveRules>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            max_unused_percent: 10.0,
            max_repack_bytes: None,
            lock: LockOptions::default(),
            archive: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneStats {
    pub dry_run: bool,
    pub snapshots: usize,
    pub trees_read: usize,
    pub packs_before: usize,
    pub blobs_used: usize,
    pub blobs_unused: usize,
    /// Packs with no used blob, deleted.
    pub packs_deleted: usize,
    /// Packs in no index object (left by interrupted backups), deleted.
    pub packs_unindexed_deleted: usize,
    /// Packs whose live blobs were copied to new packs, then deleted.
    pub packs_repacked: usize,
    /// Stored bytes of the blobs copied into new packs (estimated by a dry
    /// run).
    pub rewritten_bytes: u64,
    /// Pack bytes before minus pack bytes after (estimated by a dry run).
    pub freed_bytes: u64,
    /// Bytes of cold-tier packs downloaded to repack them (what a dry run
    /// would download): retrieval an archive storage class may charge for.
    pub cold_read_bytes: u64,
    /// Bytes of unused blobs left in kept packs (below the threshold or
    /// beyond `max_repack`).
    pub unused_bytes_kept: u64,
    pub index_files_written: usize,
    pub index_files_deleted: usize,
    pub stale_locks_removed: usize,
    /// Snapshots under protection (`lifeboat protect`): prune never
    /// removes a snapshot, so their data always stays.
    pub protected_snapshots: usize,
    pub elapsed_ms: u64,
    /// What the archive step deleted (or would), when
    /// [`PruneOptions::archive`] was given. Not serialized: the caller
    /// reports it in its own terms (the CLI as `wal_files_deleted`).
    #[serde(skip)]
    pub archive: Option<ExpireReport>,
    /// On an object-lock repository (not in a dry run): retention extended
    /// on what is still there, and old versions removed or deferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::objectlock::LockMaintenance>,
}

/// Runs prune. Fails with [`Error::Locked`] while a backup runs.
pub async fn prune(repo: &Arc<Repository>, options: &PruneOptions) -> Result<PruneStats> {
    repo.require(crate::Permission::Full, "prune")?;
    let lock = RepositoryLock::acquire(repo, LockKind::Exclusive, &options.lock).await?;
    let mut r = prune_locked(repo, options).await;
    // Still under the exclusive lock: extending and reclaiming see the
    // repository exactly as this prune left it.
    if let (Ok(stats), Some(lock), false) = (&mut r, repo.config().object_lock, options.dry_run) {
        match crate::objectlock::maintain(repo, lock).await {
            Ok(m) => stats.object_lock = Some(m),
            Err(e) => r = Err(e),
        }
    }
    repo.invalidate_index().await;
    let released = lock.release().await;
    let mut stats = r?;
    released?;
    if let Some(rules) = &options.archive {
        // Outside the lock, as archive writers take none: what is expired
        // follows from the snapshots alone.
        stats.archive = Some(expire_after_prune(repo, rules, options.dry_run).await?);
    }
    Ok(stats)
}

/// One indexed pack as prune sees it: counts only, never its entries (the
/// merged index has those), so prune's memory beyond the index is a few
/// dozen bytes per pack and one bit per blob.
struct PackInfo {
    /// Stored bytes of its blobs, as its first index object lists them.
    blob_bytes: u64,
    size: u64,
    used_bytes: u64,
    used_blobs: usize,
}

/// One bit per indexed blob, by [`Index::position`]: prune's set of used
/// blobs (a set of ids would cost more than the index itself).
struct BlobBits(Vec<u64>);

impl BlobBits {
    fn new(blobs: usize) -> Self {
        BlobBits(vec![0; blobs.div_ceil(64)])
    }

    /// Sets bit `i`; true if it was clear.
    fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let was_clear = self.0[word] & bit == 0;
        self.0[word] |= bit;
        was_clear
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }

    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

async fn prune_locked(repo: &Arc<Repository>, options: &PruneOptions) -> Result<PruneStats> {
    let started = Instant::now();
    let storage = repo.storage();
    let mut stats = PruneStats {
        dry_run: options.dry_run,
        ..Default::default()
    };

    // Everything the repository holds, merged one index object at a time.
    // Index objects are read strictly: an undecodable one could hide where
    // used blobs live. Packs by id (sorted, so the choice of what to repack
    // is deterministic); a pack listed by several index objects counts once.
    let mut packs: BTreeMap<Id, PackInfo> = BTreeMap::new();
    let (mut index, old_index_ids) = repo
        .load_index_visiting(|_, file| {
            for p in &file.packs {
                packs.entry(p.id).or_insert_with(|| PackInfo {
                    blob_bytes: p.entries.iter().map(|e| e.length as u64).sum(),
                    size: 0,
                    used_bytes: 0,
                    used_blobs: 0,
                });
            }
        })
        .await
        .map_err(|e| {
            Error::Damaged(format!(
                "cannot read the index ({e}); run `lifeboat repair index` first"
            ))
        })?;
    let mut present: HashMap<Id, u64> = HashMap::new();
    let mut tiers: HashMap<Id, Tier> = HashMap::new();
    for (tier, info) in repo.list_packs().await? {
        if let Some(id) = Id::from_hex(info.key.name()) {
            present.insert(id, info.size_bytes);
            tiers.insert(id, tier);
        }
    }
    stats.packs_before = present.len();
    // A pack the index names but storage lacks cannot serve any blob.
    packs.retain(|id, p| match present.get(id) {
        Some(size) if index.has_pack(id) => {
            p.size = *size;
            true
        }
        _ => false,
    });
    index.retain_packs(|id| packs.contains_key(id));

    let used = used_blobs(repo, &index, &mut stats).await?;
    stats.protected_snapshots = crate::protect::list(repo).await?.0.len();
    stats.blobs_used = used.count();

    // Count each used blob once, in the pack the merged index chose for it.
    for (i, loc) in index.blobs().enumerate() {
        if used.contains(i) {
            let p = packs.get_mut(&loc.pack).expect("indexed pack");
            p.used_bytes += loc.entry.length as u64;
            p.used_blobs += 1;
        }
    }
    stats.blobs_unused = index.blob_count() - stats.blobs_used;

    let mut delete: Vec<Id> = Vec::new();
    let mut candidates: Vec<(Id, u64, u64)> = Vec::new(); // (pack, size, unused)
    for (id, p) in &packs {
        if p.used_blobs == 0 {
            delete.push(*id);
            continue;
        }
        // Blob bytes only: the trailer is overhead every pack has, and
        // counting it would repack small packs again and again.
        let unused = p.blob_bytes.saturating_sub(p.used_bytes);
        if unused as f64 > p.blob_bytes as f64 * options.max_unused_percent / 100.0 {
            candidates.push((*id, p.size, unused));
        } else {
            stats.unused_bytes_kept += unused;
        }
    }
    // Most garbage first: the best return for the bytes rewritten.
    candidates.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let mut repack: Vec<Id> = Vec::new();
    let mut budget = options.max_repack_bytes.unwrap_or(u64::MAX);
    for (id, size, unused) in candidates {
        if size <= budget {
            budget -= size;
            repack.push(id);
        } else {
            stats.unused_bytes_kept += unused;
        }
    }
    let unindexed: Vec<Id> = present
        .keys()
        .filter(|id| !packs.contains_key(id))
        .copied()
        .collect();
    stats.packs_deleted = delete.len();
    stats.packs_repacked = repack.len();
    stats.packs_unindexed_deleted = unindexed.len();
    let removed_bytes: u64 = delete
        .iter()
        .chain(&repack)
        .chain(&unindexed)
        .map(|id| present[id])
        .sum();
    stats.rewritten_bytes = repack.iter().map(|id| packs[id].used_bytes).sum();
    stats.cold_read_bytes = repack
        .iter()
        .filter(|id| tiers[id] == Tier::Cold)
        .map(|id| present[id])
        .sum();
    stats.freed_bytes = removed_bytes.saturating_sub(stats.rewritten_bytes);
    let nothing_to_do = delete.is_empty() && repack.is_empty() && unindexed.is_empty();
    if options.dry_run || nothing_to_do {
        if !options.dry_run {
            stats.stale_locks_removed =
                remove_stale_locks(storage, repo.key(), &options.lock).await?;
        }
        stats.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(stats);
    }

    // Logged before anything is deleted: a prune never deletes unrecorded.
    crate::audit::append(
        repo,
        crate::audit::Entry {
            bytes_deleted: removed_bytes,
            ..crate::audit::Entry::new("prune")
                .arg("max_unused_percent", options.max_unused_percent)
                .arg("max_repack_bytes", options.max_repack_bytes)
                .arg("packs_deleted", stats.packs_deleted)
                .arg("packs_repacked", stats.packs_repacked)
                .arg("packs_unindexed_deleted", stats.packs_unindexed_deleted)
                .arg("rewritten_bytes", stats.rewritten_bytes)
        },
    )
    .await?;

    // 1. New packs with the live blobs of the packs being repacked: each
    //    used blob whose chosen copy is in such a pack (by offset). The
    //    session sees only the kept packs' blobs as present, so each live
    //    blob of a repacked pack is written again exactly once.
    let dropped: HashSet<Id> = delete.iter().chain(&repack).copied().collect();
    let repacking: HashSet<Id> = repack.iter().copied().collect();
    let mut rewrite: HashMap<Id, Vec<crate::PackEntry>> = HashMap::new();
    for (i, loc) in index.blobs().enumerate() {
        if used.contains(i) && repacking.contains(&loc.pack) {
            rewrite.entry(loc.pack).or_default().push(loc.entry);
        }
    }
    drop(used);
    index.retain_packs(|id| !dropped.contains(id));
    let kept = Arc::new(index);
    if !repack.is_empty() {
        let session =
            WriteSession::start_unlocked(repo.clone(), WriteOptions::default(), kept.clone())
                .await?;
        let session = Arc::new(session);
        // The next packs download while this one is rewritten: at most
        // three old packs in memory, and one blob's plaintext at a time.
        let reader = PackReader::new(repo, REPACK_BUDGET_KIB);
        let reader = &reader;
        let fetched = futures::stream::iter(repack.iter().copied())
            .map(|pack| {
                let mut entries = rewrite.remove(&pack).unwrap_or_default();
                entries.sort_by_key(|e| e.offset);
                let tier = tiers[&pack];
                let size = packs[&pack].size;
                async move {
                    let permit = reader.reserve(size).await;
                    let bytes = reader.read_whole(tier, pack, permit).await?;
                    Ok::<_, Error>((pack, entries, bytes))
                }
            })
            .buffered(2);
        futures::pin_mut!(fetched);
        while let Some(next) = fetched.next().await {
            let (pack, entries, bytes) = next?;
            let session = session.clone();
            blocking(move || -> Result<()> {
                for e in &entries {
                    if !bytes.contains(e) {
                        return Err(Error::corrupt(
                            format!("pack {pack}"),
                            "shorter than its index says",
                        ));
                    }
                    let plain = bytes.open(e).map_err(|err| {
                        Error::corrupt(
                            format!("pack {pack}"),
                            format!("blob {} cannot be repacked: {err}", e.id),
                        )
                    })?;
                    session.add_blob_blocking(e.blob_type, &plain)?;
                }
                Ok(())
            })
            .await??;
        }
        let session = Arc::try_unwrap(session)
            .map_err(|_| Error::Internal("the repack session is still in use".into()))?;
        let written = session
            .stats()
            .added_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        session.flush().await?;
        stats.rewritten_bytes = written;
    }

    // 2. Index objects for every kept old pack, superseding all old ones.
    //    (The repack session has written its own for the new packs.)
    //    Written from the merged index a batch at a time.
    let mut written = Vec::new();
    let mut batch: Vec<IndexPack> = Vec::new();
    let mut batch_entries = 0usize;
    let mut kept_packs = kept.pack_entries().peekable();
    while let Some(p) = kept_packs.next() {
        batch_entries += p.entries.len();
        batch.push(p);
        let full = kept_packs.peek().is_none_or(|next| {
            batch.len() >= PACKS_PER_INDEX
                || batch_entries + next.entries.len() > crate::limits::MAX_INDEX_ENTRIES
        });
        if full {
            written.push(
                repo.write_index(&IndexFile {
                    packs: std::mem::take(&mut batch),
                    supersedes: old_index_ids.clone(),
                })
                .await?,
            );
            batch_entries = 0;
        }
    }
    drop(kept_packs);
    drop(kept);
    stats.index_files_written = written.len();

    // 3. Old index objects; only then 4. the packs nothing indexes any more.
    for id in &old_index_ids {
        if !written.contains(id) {
            storage
                .delete(&ObjectKey::new(Kind::Index, id.to_hex()))
                .await?;
            stats.index_files_deleted += 1;
        }
    }
    let doomed: Vec<Id> = delete
        .iter()
        .chain(&repack)
        .chain(&unindexed)
        .copied()
        .collect();
    let tiers = &tiers;
    futures::stream::iter(doomed)
        .map(|id| async move {
            repo.tier_storage(tiers[&id])
                .await?
                .delete(&pack_key(&id))
                .await
                .map_err(Error::from)
        })
        .buffer_unordered(repo.concurrency())
        .try_collect::<Vec<()>>()
        .await?;

    let before: u64 = present.values().sum();
    let after: u64 = repo
        .list_packs()
        .await?
        .iter()
        .map(|(_, o)| o.size_bytes)
        .sum();
    stats.freed_bytes = before.saturating_sub(after);

    // 5. Locks of crashed processes.
    stats.stale_locks_removed = remove_stale_locks(storage, repo.key(), &options.lock).await?;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(stats)
}

/// Every blob some snapshot needs: its trees and the data of its files, as
/// bits by [`Index::position`]. Strict: a snapshot record or tree that
/// cannot be read aborts prune, because the blobs it references are unknown.
/// Trees are read breadth first, a level's trees several at once, and each
/// is dropped once its entries are marked: memory is the bits, the ids of
/// the next level's directories and the trees in flight.
async fn used_blobs(repo: &Repository, index: &Index, stats: &mut PruneStats) -> Result<BlobBits> {
    let storage = repo.storage();
    let list = storage.list(Kind::Snapshots).await?;
    let records: Vec<SnapshotRecord> = futures::stream::iter(list)
        .map(|info| async move {
            let bytes = get_bounded(storage, &info.key, Some(info.size_bytes)).await?;
            if Id::of_bytes(&bytes).to_hex() != info.key.name() {
                return Err(Error::corrupt(&info.key, "content does not match its name"));
            }
            SnapshotRecord::decode(repo.key(), &info.key.to_string(), &bytes)
        })
        .buffer_unordered(repo.concurrency())
        .try_collect()
        .await
        .map_err(|e| {
            Error::Damaged(format!(
                "prune needs every snapshot record ({e}); run `lifeboat check`, then forget the damaged snapshot"
            ))
        })?;
    stats.snapshots = records.len();
    let mut used = BlobBits::new(index.blob_count());
    let tree_position = |id: &Id| {
        index.position(BlobType::Tree, id).ok_or_else(|| {
            Error::Damaged(format!(
                "tree {id} is not in the index; run `lifeboat check` (prune changed nothing)"
            ))
        })
    };
    let mut level: Vec<Id> = Vec::new();
    for r in &records {
        if used.insert(tree_position(&r.tree)?) {
            level.push(r.tree);
        }
    }
    drop(records);
    while !level.is_empty() {
        stats.trees_read += level.len();
        let mut trees = futures::stream::iter(std::mem::take(&mut level))
            .map(|id| async move {
                let loc = index.get(BlobType::Tree, &id).ok_or_else(|| {
                    Error::Damaged(format!(
                        "tree {id} is not in the index; run `lifeboat check` (prune changed nothing)"
                    ))
                })?;
                let bytes = repo.read_tree_blob_at(&id, &loc).await?;
                Tree::decode(&id, &bytes)
            })
            .buffer_unordered(repo.concurrency());
        while let Some(tree) = trees.next().await {
            for node in tree?.nodes {
                match node.kind {
                    NodeKind::Dir => {
                        if let Some(sub) = node.subtree
                            && used.insert(tree_position(&sub)?)
                        {
                            level.push(sub);
                        }
                    }
                    NodeKind::File => {
                        for blob in node.content {
                            let Some(i) = index.position(BlobType::Data, &blob) else {
                                return Err(Error::Damaged(format!(
                                    "blob {blob} of a file is not in the index; run `lifeboat check` (prune changed nothing)"
                                )));
                            };
                            used.insert(i);
                        }
                    }
                    NodeKind::Symlink => {}
                }
            }
        }
    }
    Ok(used)
}
