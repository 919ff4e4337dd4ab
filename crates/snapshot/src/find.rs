//! Finding paths across snapshots (`lifeboat find`).
//!
//! [`find`] matches a glob against every entry of every given snapshot and
//! tells each matching path's story, oldest snapshot first: when it
//! appeared, each snapshot where its content changed, when it disappeared
//! (and reappeared), plus the list of snapshots holding it ([`FindHistory`]).
//! Trees are walked with a memo per tree id, so a subtree shared by many
//! snapshots is read and matched once. Patterns are
//! [`PathMatcher`]'s, the one glob dialect of lifeboat.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use lifeboat_repo::{Id, Node, NodeKind, Repository, Snapshot};
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};

use crate::diff::path_order;
use crate::ls::{EntryKind, lossy, timestamp};
use crate::pathmatch::{PathMatcher, join};
use crate::{Error, Result};

/// One snapshot holding a matching path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindMatch {
    pub snapshot: String,
    pub time: jiff::Timestamp,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: jiff::Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindChange {
    /// First seen in this snapshot (or seen again after disappearing).
    Appeared,
    /// Content (data blobs, symlink target) or type differs from the
    /// previous snapshot holding the path.
    Changed,
    /// Held by the previous snapshot, not by this one.
    Disappeared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindEvent {
    pub change: FindChange,
    pub snapshot: String,
    pub time: jiff::Timestamp,
    /// Size in this snapshot (absent when the path disappeared).
    pub size: Option<u64>,
}

/// The story of one matching path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindHistory {
    /// Full snapshot path in the lossless escape form of
    /// [`printable`](crate::printable).
    pub path: String,
    /// Oldest first.
    pub events: Vec<FindEvent>,
    /// Every snapshot holding the path, oldest first.
    pub matches: Vec<FindMatch>,
}

/// Finds entries matching `pattern` in `snapshots` (any order; the history
/// runs oldest to newest). A pattern containing `/` is matched against the
/// full snapshot path (`/home/*/notes.txt`, `**/*.conf`); otherwise against
/// each entry's name (`*.conf`). `*` does not cross `/`, `**` does. Results
/// come in depth-first path order.
pub async fn find(
    repo: &Repository,
    pattern: impl AsRef<std::ffi::OsStr>,
    snapshots: &[Snapshot],
) -> Result<Vec<FindHistory>> {
    let matcher = PathMatcher::new(&[pattern])?;
    let mut ordered: Vec<&Snapshot> = snapshots.iter().collect();
    ordered.sort_by(|a, b| a.record.time.cmp(&b.record.time).then(a.id.cmp(&b.id)));
    let ctx = Walk {
        repo,
        keyed_by_path: matcher.uses_full_path(),
        matcher,
        memo: Mutex::new(HashMap::new()),
        reads: Semaphore::new(repo.concurrency()),
    };
    let mut states: BTreeMap<Vec<u8>, PathState> = BTreeMap::new();
    for snap in ordered {
        let hits = walk(&ctx, snap.record.tree, Vec::new()).await?;
        let snapshot = snap.id.to_hex();
        let time = snap.record.time;
        let mut present: HashSet<&[u8]> = HashSet::new();
        for hit in hits.iter() {
            present.insert(&hit.path);
            let state = states.entry(hit.path.clone()).or_insert_with(|| PathState {
                history: FindHistory {
                    path: lossy(&hit.path),
                    events: Vec::new(),
                    matches: Vec::new(),
                },
                last: None,
            });
            let change = match state.last {
                None => Some(FindChange::Appeared),
                Some(fp) if fp != hit.fingerprint => Some(FindChange::Changed),
                Some(_) => None,
            };
            if let Some(change) = change {
                state.history.events.push(FindEvent {
                    change,
                    snapshot: snapshot.clone(),
                    time,
                    size: Some(hit.size),
                });
            }
            state.last = Some(hit.fingerprint);
            state.history.matches.push(FindMatch {
                snapshot: snapshot.clone(),
                time,
                kind: hit.kind,
                size: hit.size,
                mtime: hit.mtime,
            });
        }
        for (path, state) in states.iter_mut() {
            if state.last.is_some() && !present.contains(path.as_slice()) {
                state.last = None;
                state.history.events.push(FindEvent {
                    change: FindChange::Disappeared,
                    snapshot: snapshot.clone(),
                    time,
                    size: None,
                });
            }
        }
    }
    let mut out: Vec<(Vec<u8>, FindHistory)> =
        states.into_iter().map(|(p, s)| (p, s.history)).collect();
    out.sort_by(|a, b| path_order(&a.0, &b.0));
    Ok(out.into_iter().map(|(_, h)| h).collect())
}

struct PathState {
    history: FindHistory,
    /// Fingerprint in the latest snapshot processed, if it held the path.
    last: Option<Id>,
}

/// A matching entry, with its path relative to the tree it was found in
/// (memo entries) or to the snapshot root (results of [`walk`] on a root).
#[derive(Debug, Clone)]
struct Hit {
    path: Vec<u8>,
    kind: EntryKind,
    size: u64,
    mtime: jiff::Timestamp,
    /// Identifies type and content: equal fingerprints mean no change.
    fingerprint: Id,
}

type MemoKey = (Id, Option<Vec<u8>>);
/// Matches below one tree, computed once by whichever walker gets there first.
type MemoCell = Arc<OnceCell<Arc<Vec<Hit>>>>;

struct Walk<'a> {
    repo: &'a Repository,
    matcher: PathMatcher,
    /// Full-path patterns depend on where a tree sits, so their memo is keyed
    /// by tree id and path; name patterns by tree id alone.
    keyed_by_path: bool,
    memo: Mutex<HashMap<MemoKey, MemoCell>>,
    /// Bounds tree reads in flight (the walk itself fans out freely).
    reads: Semaphore,
}

/// Matches in the tree `id` found at snapshot path `prefix`, with paths
/// relative to that tree. The `OnceCell` per key makes concurrent walkers of
/// one shared subtree wait for a single read instead of repeating it.
fn walk<'a>(ctx: &'a Walk<'a>, id: Id, prefix: Vec<u8>) -> BoxFuture<'a, Result<Arc<Vec<Hit>>>> {
    Box::pin(async move {
        let key = (id, ctx.keyed_by_path.then(|| prefix.clone()));
        let cell = ctx.memo.lock().unwrap().entry(key).or_default().clone();
        let hits = cell
            .get_or_try_init(|| async {
                let tree = {
                    let _permit = ctx
                        .reads
                        .acquire()
                        .await
                        .expect("semaphore is never closed");
                    ctx.repo.read_tree(&id).await?
                };
                let mut hits = Vec::new();
                let mut subdirs = Vec::new();
                for node in &tree.nodes {
                    let full = join(&prefix, &node.name);
                    if ctx.matcher.is_match(&full) {
                        hits.push(hit(join(b"", &node.name), node));
                    }
                    if let (NodeKind::Dir, Some(sub)) = (&node.kind, node.subtree) {
                        subdirs.push((node.name.clone(), sub, full));
                    }
                }
                // Only names and ids are kept while the subtrees are walked.
                drop(tree);
                let below = futures::future::try_join_all(
                    subdirs
                        .iter()
                        .map(|(_, sub, full)| walk(ctx, *sub, full.clone())),
                )
                .await?;
                for ((name, _, _), sub_hits) in subdirs.iter().zip(below) {
                    let base = join(b"", name);
                    hits.extend(sub_hits.iter().map(|h| Hit {
                        path: [base.as_slice(), &h.path].concat(),
                        ..h.clone()
                    }));
                }
                Ok::<_, Error>(Arc::new(hits))
            })
            .await?;
        Ok(hits.clone())
    })
}

fn hit(path: Vec<u8>, node: &Node) -> Hit {
    let mut fp = vec![match node.kind {
        NodeKind::File => 0u8,
        NodeKind::Dir => 1,
        NodeKind::Symlink => 2,
    }];
    match node.kind {
        NodeKind::File => node
            .content
            .iter()
            .for_each(|id| fp.extend_from_slice(&id.0)),
        NodeKind::Symlink => fp.extend_from_slice(node.link_target.as_deref().unwrap_or_default()),
        // A directory's "content" is its entries, which have their own history.
        NodeKind::Dir => {}
    }
    Hit {
        path,
        kind: EntryKind::from(&node.kind),
        size: node.size,
        mtime: timestamp(node.mtime),
        fingerprint: Id::of_bytes(&fp),
    }
}
