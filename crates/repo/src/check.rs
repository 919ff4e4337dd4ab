//! `check`: proves the repository is restorable, or names what is not.
//!
//! Structure (always): every index object decodes; every indexed pack exists
//! and is large enough for its blobs; every snapshot record decodes; every
//! snapshot's trees decode and every blob they reference is indexed.
//! In a repository with a cold tier, both tiers are listed (a listing reads
//! no pack content) and each pack must be in the tier its blob type belongs
//! to; only `read_data` downloads cold packs.
//! Data (`read_data`): every (or a random subset of) pack is downloaded, its
//! name checked against its BLAKE3, and every blob decrypted and verified.
//! Damage is reported with the pack, and the snapshots and file paths that
//! lose data because of it.
//! Archive objects (`crate::archive`, e.g. PostgreSQL WAL) are listed
//! always and, with `read_data`, each is read and opened there; this
//! module only calls that step.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;
use lifeboat_storage::Kind;
use serde::Serialize;

use crate::index::{Index, IndexFile};
use crate::limits::get_bounded;
use crate::pack::BlobType;
use crate::packread::{FetchedRange, PackReader};
use crate::record::{Snapshot, SnapshotRecord};
use crate::repository::{Repository, Tier, blocking};
use crate::tree::{NodeKind, Tree};
use crate::{Error, Id, Result};

/// Pack bytes held at once by `--read-data`, in KiB: two default-size
/// packs. Whole packs are downloaded (their name is the hash of all their
/// bytes), so this, not the number of parallel reads, bounds memory.
const READ_DATA_BUDGET_KIB: u32 = 32 * 1024;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub read_data: bool,
    /// With `read_data`, read only this percentage (0 < p <= 100) of packs,
    /// chosen at random.
    pub read_data_subset_percent: Option<f64>,
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
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Progress callback: (packs read so far, packs to read).
pub type CheckProgress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

pub async fn check(
    repo: &Repository,
    options: &CheckOptions,
    progress: CheckProgress<'_>,
) -> Result<CheckReport> {
    // What the repository holds is checked, not the local cache's copies.
    let _bypass = repo.bypass_cache();
    let mut report = CheckReport::default();
    let storage = repo.storage();

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

    // Index objects, one by one so one bad object does not hide the others.
    let mut index = Index::default();
    for info in storage.list(Kind::Index).await? {
        report.index_files += 1;
        let file = match get_bounded(storage, &info.key, Some(info.size_bytes)).await {
            Ok(bytes) => IndexFile::decode(repo.key(), &info.key.to_string(), &bytes),
            Err(e) => Err(e),
        };
        match file {
            Ok(f) => f.packs.iter().for_each(|p| index.add_pack(p)),
            Err(e) => report.errors.push(problem(&info.key.to_string(), &e)),
        }
    }
    report.blobs = index.blob_count();

    let mut damaged_blobs: HashSet<(BlobType, Id)> = HashSet::new();
    let mut damaged_packs: BTreeSet<Id> = BTreeSet::new();
    let tiered = repo.has_cold_tier();
    for (id, loc) in index.blobs() {
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

    if options.read_data {
        read_data(
            repo,
            options,
            &index,
            &pack_sizes,
            &tiers,
            &mut report,
            &mut damaged_blobs,
            &mut damaged_packs,
            progress,
        )
        .await;
    }
    report.damaged_packs = damaged_packs.iter().map(|p| p.to_hex()).collect();

    // Snapshots and their trees.
    let mut snapshots: Vec<Snapshot> = Vec::new();
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
            Ok(s) => snapshots.push(s),
            // Forgotten by a `forget` running at the same time.
            Err(e) if e.storage_kind() == Some(lifeboat_storage::ErrorKind::NotFound) => {}
            Err(e) => {
                report.errors.push(problem(&info.key.to_string(), &e));
                report.damaged_snapshots.push(info.key.name().to_string());
            }
        }
    }
    report.snapshots = snapshots.len();
    let mut walker = TreeWalker {
        repo,
        index: &index,
        damaged_blobs: &damaged_blobs,
        memo: HashMap::new(),
        problems: BTreeSet::new(),
    };
    for snap in &snapshots {
        let lost = walker.walk(snap.record.tree).await;
        if !lost.is_empty() {
            report.damaged_snapshots.push(snap.id.to_hex());
        }
        for path in lost.iter() {
            report.affected_files.push(AffectedFile {
                snapshot: snap.id.short(),
                path: format!("/{path}"),
            });
        }
    }
    report.trees_checked = walker.memo.len();
    report.errors.extend(walker.problems);
    crate::archive::check(repo, options, &mut report).await?;
    report.errors.sort();
    report.errors.dedup();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn read_data(
    repo: &Repository,
    options: &CheckOptions,
    index: &Index,
    pack_sizes: &HashMap<Id, u64>,
    tiers: &HashMap<Id, Tier>,
    report: &mut CheckReport,
    damaged_blobs: &mut HashSet<(BlobType, Id)>,
    damaged_packs: &mut BTreeSet<Id>,
    progress: CheckProgress<'_>,
) {
    let mut by_pack: HashMap<Id, Vec<crate::PackEntry>> = HashMap::new();
    for (_, loc) in index.blobs() {
        by_pack.entry(loc.pack).or_default().push(loc.entry);
    }
    let fraction = options
        .read_data_subset_percent
        .map(|p| (p / 100.0).clamp(0.0, 1.0))
        .unwrap_or(1.0);
    let mut packs: Vec<Id> = by_pack
        .keys()
        .filter(|p| pack_sizes.contains_key(p))
        .copied()
        .collect();
    packs.sort();
    if fraction < 1.0 {
        let keep = ((packs.len() as f64 * fraction).ceil() as usize)
            .max(1)
            .min(packs.len());
        let mut rng = rand::rng();
        packs = rand::seq::IndexedRandom::choose_multiple(&packs[..], &mut rng, keep)
            .copied()
            .collect();
    }
    let total = packs.len() as u64;
    let done = AtomicU64::new(0);
    let by_pack = Arc::new(by_pack);
    let reader = PackReader::new(repo, READ_DATA_BUDGET_KIB);
    let results: Vec<PackVerdict> = futures::stream::iter(packs)
        .map(|pack| {
            let by_pack = by_pack.clone();
            let done = &done;
            let reader = &reader;
            let size = pack_sizes[&pack];
            async move {
                let permit = reader.reserve(size).await;
                let r = match reader.read_whole(tiers[&pack], pack, permit).await {
                    Err(e) => (pack, 0, Err(format!("cannot be read: {e}"))),
                    Ok(fetched) => {
                        let len = fetched.bytes().len() as u64;
                        let verdict =
                            blocking(move || verify_pack(&fetched, &by_pack[&pack])).await;
                        (pack, len, verdict.map_err(|e| e.to_string()))
                    }
                };
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                r
            }
        })
        .buffer_unordered(repo.concurrency())
        .collect()
        .await;
    for (pack, len, r) in results {
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
                damaged_blobs.extend(by_pack[&pack].iter().map(|e| (e.blob_type, e.id)));
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

/// A pack, the bytes read, and (name matches, damaged blobs) or why it
/// could not be read.
type PackVerdict = (
    Id,
    u64,
    std::result::Result<(bool, Vec<(BlobType, Id)>), String>,
);

/// Checks a downloaded pack: does it match its name, and which of its
/// indexed blobs fail to decrypt or verify.
fn verify_pack(pack: &FetchedRange, entries: &[crate::PackEntry]) -> (bool, Vec<(BlobType, Id)>) {
    let name_ok = Id::of_bytes(pack.bytes()) == pack.pack();
    let bad = entries
        .iter()
        .filter(|e| pack.open(e).is_err())
        .map(|e| (e.blob_type, e.id))
        .collect();
    (name_ok, bad)
}

struct TreeWalker<'a> {
    repo: &'a Repository,
    index: &'a Index,
    damaged_blobs: &'a HashSet<(BlobType, Id)>,
    /// Per tree: paths (relative to it) of files that lose data.
    memo: HashMap<Id, Arc<Vec<String>>>,
    problems: BTreeSet<CheckProblem>,
}

impl<'a> TreeWalker<'a> {
    fn walk(&mut self, tree_id: Id) -> BoxFuture<'_, Arc<Vec<String>>> {
        Box::pin(async move {
            if let Some(m) = self.memo.get(&tree_id) {
                return m.clone();
            }
            let tree = self.load(tree_id).await;
            let mut lost = Vec::new();
            match tree {
                Err(e) => {
                    self.problems
                        .insert(problem(&format!("tree {tree_id}"), &e));
                    lost.push(String::new());
                }
                Ok(tree) => {
                    for node in &tree.nodes {
                        let name = node.name_lossy();
                        match node.kind {
                            NodeKind::Dir => match node.subtree {
                                Some(sub) => {
                                    for p in self.walk(sub).await.iter() {
                                        lost.push(join(&name, p));
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
                                if bad {
                                    lost.push(name);
                                }
                            }
                            NodeKind::Symlink => {}
                        }
                    }
                }
            }
            let lost = Arc::new(lost);
            self.memo.insert(tree_id, lost.clone());
            lost
        })
    }

    async fn load(&self, id: Id) -> Result<Tree> {
        let Some(loc) = self.index.get(BlobType::Tree, &id) else {
            if self.index.contains(BlobType::Data, &id) {
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
        if self.damaged_blobs.contains(&(BlobType::Tree, id)) {
            return Err(Error::corrupt(
                format!("tree {id}"),
                format!("stored in damaged pack {}", loc.pack),
            ));
        }
        // Read through the check's own index (built skipping damaged index
        // objects), not the repository's, which refuses to load at all then.
        let bytes = self.repo.read_tree_blob_at(&id, loc).await?;
        Tree::decode(&id, &bytes)
    }
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
