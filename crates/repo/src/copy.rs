//! `copy`: copying snapshots from one repository into another.
//!
//! Blob ids are keyed by each repository's id key, so the same plaintext has
//! different ids in the source and in the target. Copying therefore reads each
//! blob the target may lack from the source (decrypting and verifying it),
//! adds it to the target through a [`WriteSession`] (which computes the target
//! id, re-encrypts under the target key and skips what the target already
//! holds), and re-encodes every tree with the target's ids, bottom-up, before
//! writing a snapshot record that names the target's root tree.
//!
//! Idempotent: each copied record carries `extra["copied_from"]` (the source
//! repository id and snapshot id), and snapshots whose copy is already in the
//! target are skipped. Resumable: a copy interrupted inside a snapshot leaves
//! only packs behind; the rerun finds their blobs in the target's index by
//! their target id and does not upload them again. Verified: after its blobs
//! are flushed, the new snapshot's trees are read back from the target and
//! every blob they name must be indexed there before the record is written.
//!
//! Locking: the run holds a shared lock on the target (besides each write
//! session's own), so a prune cannot delete blobs between a session's flush
//! and the record that names them.
//!
//! Incremental cost: the source→target id map is learnt from an earlier copy
//! (the copy of the parent, else the latest copy of the same source) by
//! walking both trees side by side, so unchanged directories are reused
//! without reading their data again. The map lives only for one run.
//!
//! Archive objects (`crate::archive`, e.g. PostgreSQL WAL) are not in
//! snapshots: with [`CopyOptions::archive`], after the snapshots the
//! archive module copies the ones the target's snapshots need, by the
//! connectors' retention rules.
//!
//! Main items: [`copy`], [`CopyOptions`], [`CopyStats`], [`CopyProgress`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveCopyStats, ArchiveRules};
use crate::lock::{LockKind, LockOptions, RepositoryLock};
use crate::pack::BlobType;
use crate::packread::{PackReader, RangeLimits};
use crate::record::{Snapshot, SnapshotRecord};
use crate::repository::{Repository, resolve_snapshot};
use crate::tree::Tree;
use crate::writer::{WriteOptions, WriteSession};
use crate::{Error, Id, Result};

/// Key of [`SnapshotRecord::extra`] naming the snapshot a record was copied
/// from: `{"repository": hex id, "snapshot": hex id}`.
pub const COPIED_FROM: &str = "copied_from";

/// Blobs stored into the target at once. Each holds at most one chunk
/// (`max_size`, 8 MiB by default) of plaintext while it is compressed and
/// sealed again.
const MAX_BLOBS_IN_FLIGHT: usize = 8;

/// Source bytes read ahead, in KiB: the sealed ranges in flight and the
/// plaintext opened from them, until it is stored. Several default ranges
/// (4 MiB, at most 16 MiB of plaintext) at once keep a remote source's
/// round trips overlapped.
const READ_BUDGET_KIB: u32 = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Source snapshots to copy (full id, unique prefix or `latest`); empty
    /// means every snapshot of the source.
    pub snapshots: Vec<String>,
    /// Also copy archive objects, by these retention rules (see
    /// [`crate::archive::copy`]); `None`: archive objects are left alone.
    pub archive: Option<ArchiveRules>,
}

/// One snapshot written by a copy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CopiedSnapshot {
    /// Id in the source repository (hex).
    pub source: String,
    /// Id of the new record in the target repository (hex).
    pub target: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyStats {
    pub snapshots_copied: u64,
    /// Selected snapshots whose copy the target already had.
    pub snapshots_skipped: u64,
    pub copied: Vec<CopiedSnapshot>,
    /// Data blobs read (and verified) from the source.
    pub blobs_read: u64,
    /// Plaintext bytes of those blobs.
    pub read_bytes: u64,
    /// Blobs (data and tree) the target did not have and now holds.
    pub blobs_added: u64,
    /// Plaintext bytes of the added blobs.
    pub added_raw_bytes: u64,
    /// Stored (compressed, encrypted) bytes of the added blobs.
    pub added_bytes: u64,
    /// Trees re-encoded with the target's ids.
    pub trees_written: u64,
    /// Time spent on the snapshots (not on archive objects).
    pub elapsed_ms: u64,
    /// What the archive step did, when [`CopyOptions::archive`] was given.
    /// Not serialized: the caller reports it in its own terms (the CLI as
    /// `wal`).
    #[serde(skip)]
    pub archive: Option<ArchiveCopyStats>,
}

/// Events of a copy. Every method has a no-op default; `()` ignores all.
pub trait CopyProgress: Send + Sync {
    /// Copying `snapshot` (number `n` of `count`, from 1) starts.
    fn snapshot_started(&self, _snapshot: &Snapshot, _n: usize, _count: usize) {}
    /// The snapshot needs this many data blobs (plaintext bytes) from the
    /// source.
    fn planned(&self, _blobs: u64, _bytes: u64) {}
    /// One data blob was read and stored (or found in the target).
    fn blob_copied(&self, _bytes: u64) {}
    /// The copy of `source` is verified and visible as `target`.
    fn snapshot_finished(&self, _source: &Snapshot, _target: &Id) {}
    /// The snapshots are copied; archive objects are copied next.
    fn archive_started(&self) {}
    /// One archive object (this many plaintext bytes) was stored and read
    /// back.
    fn archive_object_copied(&self, _bytes: u64) {}
}

impl CopyProgress for () {}

#[derive(Serialize, Deserialize)]
struct CopiedFrom {
    repository: String,
    snapshot: String,
}

/// The (repository id, snapshot id) a record was copied from, if any.
pub fn copied_from(record: &SnapshotRecord) -> Option<(Id, Id)> {
    let v = record.extra.get(COPIED_FROM)?;
    let c: CopiedFrom = serde_json::from_value(v.clone()).ok()?;
    Some((Id::from_hex(&c.repository)?, Id::from_hex(&c.snapshot)?))
}

/// Source id → target id, learnt during one run.
#[derive(Default)]
struct IdMap {
    data: HashMap<Id, Id>,
    trees: HashMap<Id, Id>,
    /// Target trees already read back and found complete.
    verified: HashSet<Id>,
}

/// Copies snapshots of `source` that `target` does not hold yet, oldest
/// first. Snapshots named in `options` that are already copied are skipped
/// (and counted as such).
pub async fn copy(
    source: &Arc<Repository>,
    target: &Arc<Repository>,
    options: &CopyOptions,
    progress: &dyn CopyProgress,
) -> Result<CopyStats> {
    source.require_full_key("copy (reading the source)")?;
    target.require_full_key("copy (reading the target's snapshots)")?;
    let started = Instant::now();
    let source_repo = source.config().repository_id;
    let target_repo = target.config().repository_id;
    if source_repo == target_repo {
        return Err(Error::BadInput(
            "source and target are the same repository".into(),
        ));
    }
    // A shared lock on the target for the whole run: prune (exclusive) must
    // not run between a session's flush and the record naming its blobs,
    // nor invalidate the ids learnt from earlier copies.
    let lock = RepositoryLock::acquire(target, LockKind::Shared, &LockOptions::default()).await?;
    let result = copy_locked(source, target, options, progress, &lock).await;
    let released = lock.release().await;
    let mut stats = result?;
    released?;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    if let Some(rules) = &options.archive {
        stats.archive = Some(crate::archive::copy(source, target, rules, progress).await?);
    }
    if stats.snapshots_copied > 0 {
        // The target keeps the source's audit heads: a witness that the
        // source's log reached them (`audit verify --against`).
        let witness = match crate::audit::heads(source).await {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("cannot read the source's audit log: {e}");
                None
            }
        };
        let mut entry = crate::audit::Entry::new("copy")
            .arg("from", source.storage().location())
            .arg("from_repository", source_repo.to_hex());
        entry.snapshots = stats
            .copied
            .iter()
            .filter_map(|c| Id::from_hex(&c.target))
            .collect();
        entry.witness = witness;
        crate::audit::append_after(target, entry).await;
    }
    Ok(stats)
}

async fn copy_locked(
    source: &Arc<Repository>,
    target: &Arc<Repository>,
    options: &CopyOptions,
    progress: &dyn CopyProgress,
    lock: &RepositoryLock,
) -> Result<CopyStats> {
    let source_repo = source.config().repository_id;
    let target_repo = target.config().repository_id;
    let all = source.snapshots().await?;
    let mut selected: Vec<Snapshot> = if options.snapshots.is_empty() {
        all.clone()
    } else {
        let mut picked = Vec::new();
        for q in &options.snapshots {
            let s = resolve_snapshot(&all, q)?;
            if !picked.iter().any(|p: &Snapshot| p.id == s.id) {
                picked.push(s.clone());
            }
        }
        picked
    };
    selected.sort_by(|a, b| a.record.time.cmp(&b.record.time).then(a.id.cmp(&b.id)));

    let existing = target.snapshots().await?;
    let target_ids: HashSet<Id> = existing.iter().map(|s| s.id).collect();
    // Source snapshot id -> its copy in the target.
    let mut copies: HashMap<Id, Snapshot> = HashMap::new();
    for s in &existing {
        if let Some((repo, snap)) = copied_from(&s.record)
            && repo == source_repo
        {
            copies.entry(snap).or_insert_with(|| s.clone());
        }
    }

    let mut stats = CopyStats::default();
    let todo: Vec<Snapshot> = selected
        .into_iter()
        .filter(|s| {
            // A source snapshot that is itself a copy of a target snapshot
            // (copying back and forth) is already there too.
            let back = matches!(copied_from(&s.record),
                Some((repo, snap)) if repo == target_repo && target_ids.contains(&snap));
            let done = back || copies.contains_key(&s.id);
            if done {
                stats.snapshots_skipped += 1;
            }
            !done
        })
        .collect();

    let mut map = IdMap::default();
    for (i, snap) in todo.iter().enumerate() {
        progress.snapshot_started(snap, i + 1, todo.len());
        if let Some((a_root, b_root)) = related_copy(snap, &all, &copies)
            && !map.trees.contains_key(&a_root)
        {
            learn(source, target, a_root, b_root, &mut map).await?;
        }
        let parent = snap
            .record
            .parent
            .and_then(|p| copies.get(&p))
            .map(|s| s.id);
        let copy = copy_snapshot(
            source, target, snap, parent, &mut map, &mut stats, progress, lock,
        )
        .await?;
        progress.snapshot_finished(snap, &copy.id);
        stats.snapshots_copied += 1;
        stats.copied.push(CopiedSnapshot {
            source: snap.id.to_hex(),
            target: copy.id.to_hex(),
        });
        copies.insert(snap.id, copy);
    }
    Ok(stats)
}

/// Root trees (source, target) of an earlier copy that probably shares most
/// directories with `snap`: its parent's copy, else the latest copy of a
/// snapshot of the same source taken before it, else the latest earlier copy.
fn related_copy(
    snap: &Snapshot,
    all: &[Snapshot],
    copies: &HashMap<Id, Snapshot>,
) -> Option<(Id, Id)> {
    let pair = |s: &Snapshot| copies.get(&s.id).map(|c| (s.record.tree, c.record.tree));
    if let Some(p) = snap.record.parent
        && let Some(parent) = all.iter().find(|s| s.id == p)
        && let Some(pair) = pair(parent)
    {
        return Some(pair);
    }
    let earlier = || {
        all.iter()
            .filter(|s| s.id != snap.id && s.record.time <= snap.record.time)
            .rev()
    };
    // Any copy pairs ids correctly; one of the same source shares the most.
    earlier()
        .filter(|s| s.record.same_source(&snap.record.host, &snap.record.paths))
        .find_map(pair)
        .or_else(|| earlier().find_map(pair))
}

/// Walks a source tree and its copy side by side, recording which target id
/// each source tree and data blob got. Pairs that do not line up (which a
/// copy made by this code never produces) are skipped, not trusted.
async fn learn(
    source: &Arc<Repository>,
    target: &Arc<Repository>,
    a_root: Id,
    b_root: Id,
    map: &mut IdMap,
) -> Result<()> {
    let mut level = vec![(a_root, b_root)];
    let mut queued: HashSet<Id> = HashSet::from([a_root]);
    while !level.is_empty() {
        let concurrency = source.concurrency().max(target.concurrency());
        let pairs: Vec<(Id, Tree, Id, Tree)> = futures::stream::iter(level)
            .map(|(a, b)| async move {
                let (ta, tb) = futures::try_join!(source.read_tree(&a), target.read_tree(&b))?;
                Ok::<_, Error>((a, ta, b, tb))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (a, ta, b, tb) in pairs {
            let aligned = ta.nodes.len() == tb.nodes.len()
                && ta.nodes.iter().zip(&tb.nodes).all(|(x, y)| {
                    x.name == y.name
                        && x.kind == y.kind
                        && x.content.len() == y.content.len()
                        && x.subtree.is_some() == y.subtree.is_some()
                });
            if !aligned {
                continue;
            }
            map.trees.insert(a, b);
            for (x, y) in ta.nodes.iter().zip(&tb.nodes) {
                for (ca, cb) in x.content.iter().zip(&y.content) {
                    map.data.entry(*ca).or_insert(*cb);
                }
                if let (Some(sa), Some(sb)) = (x.subtree, y.subtree)
                    && !map.trees.contains_key(&sa)
                    && queued.insert(sa)
                {
                    next.push((sa, sb));
                }
            }
        }
        level = next;
    }
    Ok(())
}

/// Reads trees from `repo`, `concurrency` at a time.
async fn read_trees(repo: &Repository, ids: Vec<Id>) -> Result<Vec<(Id, Tree)>> {
    futures::stream::iter(ids)
        .map(|id| async move { Ok::<_, Error>((id, repo.read_tree(&id).await?)) })
        .buffer_unordered(repo.concurrency())
        .try_collect()
        .await
}

/// Copies one snapshot's blobs and trees, verifies them in the target and
/// writes the record. Returns the target's snapshot.
#[allow(clippy::too_many_arguments)]
async fn copy_snapshot(
    source: &Arc<Repository>,
    target: &Arc<Repository>,
    snap: &Snapshot,
    parent: Option<Id>,
    map: &mut IdMap,
    stats: &mut CopyStats,
    progress: &dyn CopyProgress,
    lock: &RepositoryLock,
) -> Result<Snapshot> {
    let session = Arc::new(WriteSession::start(target.clone(), WriteOptions::default()).await?);
    // A mapping is usable only while the target still holds the blob.
    let mapped_tree = |map: &IdMap, a: &Id| {
        map.trees
            .get(a)
            .filter(|b| session.has_blob(BlobType::Tree, b))
            .copied()
    };

    // 1. The source trees whose copy the target lacks, level by level.
    let root = snap.record.tree;
    let mut trees: HashMap<Id, Tree> = HashMap::new();
    let mut queued: HashSet<Id> = HashSet::new();
    let mut level = Vec::new();
    if mapped_tree(map, &root).is_none() {
        queued.insert(root);
        level.push(root);
    }
    while !level.is_empty() {
        let mut next = Vec::new();
        for (id, tree) in read_trees(source, level).await? {
            for n in &tree.nodes {
                if let Some(sub) = n.subtree
                    && mapped_tree(map, &sub).is_none()
                    && queued.insert(sub)
                {
                    next.push(sub);
                }
            }
            trees.insert(id, tree);
        }
        level = next;
    }

    // 2. Their data blobs the target may lack, in source pack order so reads
    // stay sequential within each pack.
    let source_index = source.index().await?;
    let mut seen = HashSet::new();
    let mut needed = Vec::new();
    for tree in trees.values() {
        for n in &tree.nodes {
            for id in &n.content {
                let known = map
                    .data
                    .get(id)
                    .is_some_and(|b| session.has_blob(BlobType::Data, b));
                if !known && seen.insert(*id) {
                    let loc = source_index
                        .get(BlobType::Data, id)
                        .ok_or_else(|| Error::BlobNotIndexed { id: id.to_hex() })?;
                    needed.push((*id, loc));
                }
            }
        }
    }
    drop(seen);
    needed.sort_by_key(|(_, l)| (l.pack, l.entry.offset));
    let planned_bytes = needed.iter().map(|(_, l)| l.entry.raw_length as u64).sum();
    progress.planned(needed.len() as u64, planned_bytes);

    // 3. Copy them: read batched by pack (neighbouring blobs in one ranged
    // read, under a memory budget), then each blob is its own task so
    // compression and encryption for the target spread over the runtime's
    // threads; the session's bounded upload queue is the backpressure.
    let reader = PackReader::new(source, READ_BUDGET_KIB);
    let locations = needed.into_iter().map(|(_, loc)| loc).collect();
    let mut copied = reader
        .read_blobs(locations, RangeLimits::RESTORE)
        .map(|blob| {
            let session = session.clone();
            tokio::spawn(async move {
                let a_id = blob.location.entry.id;
                let plain = blob.data?;
                let added = session.add_blob(BlobType::Data, &plain).await?;
                Ok::<_, Error>((a_id, added.id, plain.len() as u64))
            })
        })
        .buffer_unordered(MAX_BLOBS_IN_FLIGHT);
    while let Some(joined) = copied.next().await {
        let (a_id, b_id, raw) = joined.map_err(|e| Error::Internal(e.to_string()))??;
        map.data.insert(a_id, b_id);
        stats.blobs_read += 1;
        stats.read_bytes += raw;
        progress.blob_copied(raw);
    }
    drop(copied);

    // 4. Re-encode the trees with the target's ids, children first.
    for a in post_order(root, &trees) {
        let mut tree = trees.remove(&a).expect("post_order yields loaded trees");
        for n in &mut tree.nodes {
            for c in &mut n.content {
                *c = *map
                    .data
                    .get(c)
                    .ok_or_else(|| Error::Internal(format!("data blob {c} was not copied")))?;
            }
            if let Some(s) = &mut n.subtree {
                *s = *map
                    .trees
                    .get(s)
                    .ok_or_else(|| Error::Internal(format!("tree {s} was not copied")))?;
            }
        }
        let added = session.add_blob(BlobType::Tree, &tree.encode()).await?;
        map.trees.insert(a, added.id);
        stats.trees_written += 1;
    }
    let b_root = *map
        .trees
        .get(&root)
        .ok_or_else(|| Error::Internal(format!("root tree {root} was not copied")))?;

    let session = Arc::try_unwrap(session)
        .map_err(|_| Error::Internal("copy tasks still hold the write session".into()))?;
    let s = session.stats();
    stats.blobs_added += s.blobs_added.load(Ordering::Relaxed);
    stats.added_raw_bytes += s.added_raw_bytes.load(Ordering::Relaxed);
    stats.added_bytes += s.added_bytes.load(Ordering::Relaxed);
    session.flush().await?;

    // 5. Read the new snapshot back from the target before making it visible.
    verify(target, b_root, &mut map.verified).await?;

    let mut record = snap.record.clone();
    record.tree = b_root;
    record.parent = parent;
    record.extra.insert(
        COPIED_FROM.into(),
        serde_json::to_value(CopiedFrom {
            repository: source.config().repository_id.to_hex(),
            snapshot: snap.id.to_hex(),
        })
        .expect("serializes"),
    );
    lock.verify().await?;
    let id = target.write_snapshot(&record).await?;
    Ok(Snapshot { id, record })
}

/// Tree ids of `trees` reachable from `root`, every tree after its subtrees.
fn post_order(root: Id, trees: &HashMap<Id, Tree>) -> Vec<Id> {
    let mut out = Vec::new();
    let mut expanded = HashSet::new();
    let mut stack = vec![(root, false)];
    while let Some((id, children_done)) = stack.pop() {
        let Some(tree) = trees.get(&id) else { continue };
        if children_done {
            out.push(id);
            continue;
        }
        if !expanded.insert(id) {
            continue;
        }
        stack.push((id, true));
        for n in &tree.nodes {
            if let Some(s) = n.subtree
                && trees.contains_key(&s)
                && !expanded.contains(&s)
            {
                stack.push((s, false));
            }
        }
    }
    out
}

/// Reads every tree under `root` from the target (decrypting and verifying
/// it) and requires every blob it names to be indexed there. Trees in
/// `verified` were checked earlier in this run and are not read again.
async fn verify(target: &Arc<Repository>, root: Id, verified: &mut HashSet<Id>) -> Result<()> {
    let index = target.index().await?;
    let mut level = Vec::new();
    if verified.insert(root) {
        level.push(root);
    }
    while !level.is_empty() {
        let mut next = Vec::new();
        for (id, tree) in read_trees(target, level).await? {
            for n in &tree.nodes {
                if let Some(c) = n
                    .content
                    .iter()
                    .find(|c| !index.contains(BlobType::Data, c))
                {
                    return Err(Error::corrupt(
                        format!("copied tree {id}"),
                        format!("data blob {c} of {} is not in the target", n.name_lossy()),
                    ));
                }
                if let Some(sub) = n.subtree
                    && verified.insert(sub)
                {
                    next.push(sub);
                }
            }
        }
        level = next;
    }
    Ok(())
}
