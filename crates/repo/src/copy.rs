//! `copy`: copying snapshots from one repository into another.
//!
//! Blob ids are keyed by each repository's id key, so the same plaintext has
//! different ids in the source and in the target. Copying therefore reads each
//! blob the target may lack from the source (decrypting and verifying it),
//! adds it to the target through a [`WriteSession`] (which computes the target
//! id, re-encrypts under the target key and skips what the target already
//! holds), and re-encodes every tree with the target's ids, bottom-up, before
//! writing a snapshot record that names the target's root tree. A blob the
//! source stored compressed keeps its compressed bytes: the target seals
//! the decrypted zstd payload again instead of compressing the plaintext
//! (which took about a third of a copy's CPU), so it keeps the source's
//! compression level.
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
//! Incremental cost: each directory is walked side by side with the same
//! path in an earlier copy (the copy of the parent, else the latest copy of
//! the same source), so an unchanged directory is reused without being
//! walked, and in a changed one the files the earlier copy holds are mapped
//! to its target ids without their data being read again. Source→target
//! tree ids are remembered for the run (an unchanged directory at another
//! path is free too); data blob ids only for one batch (a file met again
//! later, at another path, is read again and deduplicated by the target).
//!
//! Memory (issue 17: bounded by configuration and the indexes, not by the
//! number of files or blobs copied): the two repositories' indexes; the
//! run's source→target tree map and the set of target trees verified (tree
//! ids only, at most the target index's trees); the trees on the walk's
//! current path, each with up to `concurrency` subtrees read ahead and the
//! earlier copy's two trees of the same directory; one batch
//! ([`CopyBatch`]: its trees, its data blob ids and locations); the read
//! budget ([`READ_BUDGET_KIB`]), [`MAX_BLOBS_IN_FLIGHT`] blobs being stored
//! and the write session's packs (see `writer`). docs/performance.md
//! ("Copy") gives the formula and the measured figures.
//!
//! Archive objects (`crate::archive`, e.g. PostgreSQL WAL) are not in
//! snapshots: with [`CopyOptions::archive`], after the snapshots the
//! archive module copies the ones the target's snapshots need, by the
//! connectors' retention rules.
//!
//! Main items: [`copy`], [`CopyOptions`], [`CopyStats`], [`CopyProgress`].

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveCopyStats, ArchiveRules};
use crate::index::{BlobLocation, Index};
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
/// plaintext opened from them, until it is stored. A few default ranges
/// (4 MiB, at most 16 MiB of plaintext; a source tree's ranges carry some
/// 8 MiB) at once keep a remote source's round trips overlapped. 64 MiB
/// until issue 17: half of it took 40 MiB off the peak of a copy of
/// linux-source (docs/performance.md, "Copy").
const READ_BUDGET_KIB: u32 = 32 * 1024;

#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Source snapshots to copy (full id, unique prefix or `latest`); empty
    /// means every snapshot of the source.
    pub snapshots: Vec<String>,
    /// Also copy archive objects, by these retention rules (see
    /// [`crate::archive::copy`]); `None`: archive objects are left alone.
    pub archive: Option<ArchiveRules>,
    /// How much of a snapshot is taken on at once (memory, see the module
    /// doc); the default suits every repository, tests set it small.
    pub batch: CopyBatch,
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
    /// The snapshot needs this many more data blobs (plaintext bytes) from
    /// the source: called once per batch, with that batch's counts (add
    /// them up for the snapshot's).
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

/// Source tree id → target tree id, for the trees copied (or found in an
/// earlier copy) during one run, and the target trees already read back.
/// Both hold tree ids only, so they are bounded by the number of trees in
/// the target's index, not by the number of files or data blobs.
#[derive(Default)]
struct IdMap {
    trees: HashMap<Id, Id>,
    /// Target trees already read back and found complete.
    verified: HashSet<Id>,
}

/// How much of a snapshot one copy batch takes on (see "Memory" in the
/// module doc): the source trees loaded since the last batch and their data
/// blobs are held until the batch's blobs are stored in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyBatch {
    /// Distinct data blobs (read from the source or mapped through an
    /// earlier copy) after which a batch is copied. At least 1.
    pub blobs: usize,
    /// Tree entries (files, directories, links) loaded after which a batch
    /// is copied. At least 1.
    pub nodes: usize,
}

impl CopyBatch {
    /// 16,384 blobs (some 200 MiB of plaintext with the default chunker
    /// and a source tree's typical file sizes) and 16,384 tree entries
    /// (a few MiB of decoded trees).
    pub const DEFAULT: CopyBatch = CopyBatch {
        blobs: 16 * 1024,
        nodes: 16 * 1024,
    };
}

impl Default for CopyBatch {
    fn default() -> Self {
        CopyBatch::DEFAULT
    }
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
        let related = related_copy(snap, &all, &copies);
        let parent = snap
            .record
            .parent
            .and_then(|p| copies.get(&p))
            .map(|s| s.id);
        let copy = copy_snapshot(
            source,
            target,
            snap,
            parent,
            related,
            options.batch,
            &mut map,
            &mut stats,
            progress,
            lock,
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

/// The same directory in an earlier copy: its source tree and the target
/// tree it was copied to, entry by entry alike.
struct OldPair {
    source: Tree,
    target: Tree,
}

impl OldPair {
    /// The pair, if `target` lines up with `source` entry by entry (a copy
    /// made by this code always does; anything else is not trusted).
    fn new(source: Tree, target: Tree) -> Option<OldPair> {
        let aligned = source.nodes.len() == target.nodes.len()
            && source.nodes.iter().zip(&target.nodes).all(|(x, y)| {
                x.name == y.name
                    && x.kind == y.kind
                    && x.content.len() == y.content.len()
                    && x.subtree.is_some() == y.subtree.is_some()
            });
        aligned.then_some(OldPair { source, target })
    }

    /// The subtree named `name` in the old source tree and its copy.
    fn subtree(&self, name: &[u8]) -> Option<(Id, Id)> {
        let i = self
            .source
            .nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()?;
        Some((self.source.nodes[i].subtree?, self.target.nodes[i].subtree?))
    }

    /// Source data blob id → target id, for every blob the old pair names.
    fn data_ids(&self) -> HashMap<Id, Id> {
        let mut out = HashMap::new();
        for (x, y) in self.source.nodes.iter().zip(&self.target.nodes) {
            for (a, b) in x.content.iter().zip(&y.content) {
                out.entry(*a).or_insert(*b);
            }
        }
        out
    }
}

/// A source tree to copy, with the same directory of an earlier copy.
struct Loaded {
    id: Id,
    tree: Tree,
    old: Option<OldPair>,
}

/// Reads source tree `id` and, when given, the earlier copy's pair of trees
/// at the same path (source and target ids).
async fn load(
    source: Arc<Repository>,
    target: Arc<Repository>,
    id: Id,
    old: Option<(Id, Id)>,
) -> Result<Loaded> {
    let old_pair = async {
        let Some((a, b)) = old else {
            return Ok::<_, Error>(None);
        };
        let (ta, tb) = futures::try_join!(source.read_tree(&a), target.read_tree(&b))?;
        Ok(OldPair::new(ta, tb))
    };
    let (tree, old) = futures::try_join!(source.read_tree(&id), old_pair)?;
    Ok(Loaded { id, tree, old })
}

/// The subtrees of a tree on the walk's path, loaded in order, a few ahead.
type Children = Pin<Box<dyn Stream<Item = Result<Loaded>> + Send>>;

/// A source tree on the walk's path (its subtrees are being copied).
struct Frame {
    id: Id,
    tree: Tree,
    /// Its data blob ids are the target's already (the batch that queued
    /// them is copied).
    translated: bool,
    children: Children,
}

/// A source tree whose subtrees are all copied, waiting for the batch of
/// its data blobs (or for a tree finished before it) to be written.
struct Finished {
    id: Id,
    tree: Tree,
    translated: bool,
}

/// One snapshot's copy in progress: a depth-first walk of the source trees
/// the target lacks, copying data blobs in bounded batches and writing each
/// tree once its subtrees and the batch of its data blobs are copied.
///
/// What it holds: the trees on the current path (each with up to
/// `concurrency` subtrees loaded ahead, and the earlier copy's pair of the
/// same directory), the trees loaded since the last batch, and the batch's
/// data blob ids and locations; all bounded by [`CopyBatch`] and the
/// depth of the snapshot, not by its size.
struct Walk<'a> {
    source: &'a Arc<Repository>,
    target: &'a Arc<Repository>,
    source_index: Arc<Index>,
    session: Arc<WriteSession>,
    limits: CopyBatch,
    map: &'a mut IdMap,
    stats: &'a mut CopyStats,
    progress: &'a dyn CopyProgress,
    stack: Vec<Frame>,
    finished: Vec<Finished>,
    /// This batch's data blobs: source id → target id (`None`: to be read).
    blobs: HashMap<Id, Option<Id>>,
    /// Source locations of the blobs to read.
    needed: Vec<BlobLocation>,
    /// Tree entries loaded in this batch.
    nodes: usize,
}

impl Walk<'_> {
    /// The target's copy of source tree `a`, if known and still there.
    fn mapped_tree(&self, a: &Id) -> Option<Id> {
        self.map
            .trees
            .get(a)
            .filter(|b| self.session.has_blob(BlobType::Tree, b))
            .copied()
    }

    /// Walks the trees under `root` (which the target lacks) and copies
    /// them and their data blobs.
    async fn run(&mut self, root: Loaded) -> Result<()> {
        self.enter(root).await?;
        while let Some(top) = self.stack.last_mut() {
            match top.children.next().await {
                Some(loaded) => {
                    let loaded = loaded?;
                    // The same directory may have been copied meanwhile
                    // (at another path).
                    if self.mapped_tree(&loaded.id).is_none() {
                        self.enter(loaded).await?;
                    }
                }
                None => {
                    let f = self.stack.pop().expect("the stack has a top");
                    if f.translated && self.finished.is_empty() {
                        self.write_tree(f.id, f.tree).await?;
                    } else {
                        self.finished.push(Finished {
                            id: f.id,
                            tree: f.tree,
                            translated: f.translated,
                        });
                    }
                }
            }
        }
        self.copy_batch().await
    }

    /// Takes on a loaded source tree: queues its data blobs the target may
    /// lack (those the earlier copy's pair names are mapped without being
    /// read), starts loading its subtrees the target lacks, and copies the
    /// batch when it is full.
    async fn enter(&mut self, loaded: Loaded) -> Result<()> {
        let Loaded { id, tree, old } = loaded;
        let known = old.as_ref().map(OldPair::data_ids).unwrap_or_default();
        for n in &tree.nodes {
            for a in &n.content {
                if self.blobs.contains_key(a) {
                    continue;
                }
                match known
                    .get(a)
                    .filter(|b| self.session.has_blob(BlobType::Data, b))
                {
                    Some(b) => {
                        self.blobs.insert(*a, Some(*b));
                    }
                    None => {
                        let loc = self
                            .source_index
                            .get(BlobType::Data, a)
                            .ok_or_else(|| Error::BlobNotIndexed { id: a.to_hex() })?;
                        self.blobs.insert(*a, None);
                        self.needed.push(loc);
                    }
                }
            }
        }
        drop(known);
        self.nodes += tree.nodes.len();

        let mut children = Vec::new();
        for n in &tree.nodes {
            let Some(s) = n.subtree else { continue };
            if self.mapped_tree(&s).is_some() {
                continue;
            }
            let before = old.as_ref().and_then(|o| o.subtree(&n.name));
            if let Some((a, b)) = before
                && a == s
                && self.session.has_blob(BlobType::Tree, &b)
            {
                // Unchanged since the earlier copy: reused, not walked.
                self.map.trees.insert(s, b);
                continue;
            }
            children.push((s, before));
        }
        drop(old);
        let (source, target) = (self.source.clone(), self.target.clone());
        let ahead = source.concurrency();
        // Each read is a task of its own: a read left waiting while the
        // walk is deeper down must not hold up another (two reads of one
        // tree pack share its fetch).
        let children: Children = Box::pin(
            futures::stream::iter(children)
                .map(move |(s, before)| {
                    let read = tokio::spawn(load(source.clone(), target.clone(), s, before));
                    async move { read.await.map_err(|e| Error::Internal(e.to_string()))? }
                })
                .buffered(ahead),
        );
        self.stack.push(Frame {
            id,
            tree,
            translated: false,
            children,
        });
        if self.blobs.len() >= self.limits.blobs || self.nodes >= self.limits.nodes {
            self.copy_batch().await?;
        }
        Ok(())
    }

    /// Copies the batch's data blobs the target may lack, then gives the
    /// trees loaded in this batch their target ids and writes the finished
    /// ones, children first.
    async fn copy_batch(&mut self) -> Result<()> {
        let needed = std::mem::take(&mut self.needed);
        if !needed.is_empty() {
            let bytes = needed.iter().map(|l| l.entry.raw_length as u64).sum();
            self.progress.planned(needed.len() as u64, bytes);
            // Read batched by pack (neighbouring blobs in one ranged read,
            // under a memory budget), then each blob is its own task so
            // compression and encryption for the target spread over the
            // runtime's threads; the session's bounded upload queue is the
            // backpressure.
            let source: &Repository = self.source;
            let reader = PackReader::new(source, READ_BUDGET_KIB);
            let mut copied = reader
                .read_blobs(needed, RangeLimits::COPY)
                .map(|blob| {
                    let session = self.session.clone();
                    tokio::spawn(async move {
                        let a_id = blob.location.entry.id;
                        let plain = blob.data?;
                        // A blob the source stored compressed is sealed
                        // again as it is, not compressed again.
                        let added = session
                            .add_blob_precompressed(BlobType::Data, &plain, blob.payload.as_deref())
                            .await?;
                        Ok::<_, Error>((a_id, added.id, plain.len() as u64))
                    })
                })
                .buffer_unordered(MAX_BLOBS_IN_FLIGHT);
            while let Some(joined) = copied.next().await {
                let (a_id, b_id, raw) = joined.map_err(|e| Error::Internal(e.to_string()))??;
                self.blobs.insert(a_id, Some(b_id));
                self.stats.blobs_read += 1;
                self.stats.read_bytes += raw;
                self.progress.blob_copied(raw);
            }
        }
        let blobs = std::mem::take(&mut self.blobs);
        for f in &mut self.stack {
            if !f.translated {
                translate(&mut f.tree, &blobs)?;
                f.translated = true;
            }
        }
        for f in &mut self.finished {
            if !f.translated {
                translate(&mut f.tree, &blobs)?;
                f.translated = true;
            }
        }
        drop(blobs);
        for f in std::mem::take(&mut self.finished) {
            self.write_tree(f.id, f.tree).await?;
        }
        self.nodes = 0;
        Ok(())
    }

    /// Writes a translated tree with its subtrees' target ids.
    async fn write_tree(&mut self, id: Id, mut tree: Tree) -> Result<()> {
        for n in &mut tree.nodes {
            if let Some(s) = &mut n.subtree {
                *s = *self
                    .map
                    .trees
                    .get(s)
                    .ok_or_else(|| Error::Internal(format!("tree {s} was not copied")))?;
            }
        }
        let added = self
            .session
            .add_blob(BlobType::Tree, &tree.encode())
            .await?;
        self.map.trees.insert(id, added.id);
        self.stats.trees_written += 1;
        Ok(())
    }
}

/// Replaces a tree's data blob ids by the target's.
fn translate(tree: &mut Tree, blobs: &HashMap<Id, Option<Id>>) -> Result<()> {
    for n in &mut tree.nodes {
        for c in &mut n.content {
            *c = blobs
                .get(c)
                .copied()
                .flatten()
                .ok_or_else(|| Error::Internal(format!("data blob {c} was not copied")))?;
        }
    }
    Ok(())
}

/// Copies one snapshot's blobs and trees, verifies them in the target and
/// writes the record. Returns the target's snapshot. `related` is the
/// (source, target) root pair of an earlier copy to map unchanged
/// directories and files through.
#[allow(clippy::too_many_arguments)]
async fn copy_snapshot(
    source: &Arc<Repository>,
    target: &Arc<Repository>,
    snap: &Snapshot,
    parent: Option<Id>,
    related: Option<(Id, Id)>,
    limits: CopyBatch,
    map: &mut IdMap,
    stats: &mut CopyStats,
    progress: &dyn CopyProgress,
    lock: &RepositoryLock,
) -> Result<Snapshot> {
    let session = Arc::new(WriteSession::start(target.clone(), WriteOptions::default()).await?);
    let root = snap.record.tree;
    if let Some((a, b)) = related
        && a == root
        && session.has_blob(BlobType::Tree, &b)
    {
        map.trees.insert(a, b);
    }
    let mut walk = Walk {
        source,
        target,
        source_index: source.index().await?,
        session: session.clone(),
        limits: CopyBatch {
            blobs: limits.blobs.max(1),
            nodes: limits.nodes.max(1),
        },
        map,
        stats,
        progress,
        stack: Vec::new(),
        finished: Vec::new(),
        blobs: HashMap::new(),
        needed: Vec::new(),
        nodes: 0,
    };
    if walk.mapped_tree(&root).is_none() {
        let loaded = load(source.clone(), target.clone(), root, related).await?;
        walk.run(loaded).await?;
    }
    drop(walk);
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

    // Read the new snapshot back from the target before making it visible.
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

/// Reads every tree under `root` from the target (decrypting and verifying
/// it) and requires every blob it names to be indexed there. Trees in
/// `verified` were checked earlier in this run and are not read again.
/// Holds one level's tree ids and the trees being read, not the trees.
async fn verify(target: &Arc<Repository>, root: Id, verified: &mut HashSet<Id>) -> Result<()> {
    let index = target.index().await?;
    let mut level = Vec::new();
    if verified.insert(root) {
        level.push(root);
    }
    while !level.is_empty() {
        let mut next = Vec::new();
        let mut trees = futures::stream::iter(level)
            .map(|id| async move { Ok::<_, Error>((id, target.read_tree(&id).await?)) })
            .buffer_unordered(target.concurrency());
        while let Some(read) = trees.next().await {
            let (id, tree) = read?;
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
