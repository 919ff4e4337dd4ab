//! Comparing two snapshots (`lifeboat diff`).
//!
//! [`diff`] walks both snapshots' trees side by side and reports every entry
//! added, removed or changed, saying whether the content changed and which
//! metadata fields did, with sizes and totals in a [`DiffReport`]. Trees are
//! content-addressed, so a directory whose subtree id is the same in both
//! snapshots is identical all the way down and is skipped without being
//! read: the cost follows the size of the change, not of the snapshots.
//! Added or removed directories are listed with everything they contain.

use std::cmp::Ordering;

use futures::{StreamExt, TryStreamExt};
use lifeboat_repo::{Id, Node, NodeKind, Repository, Snapshot};
use serde::Serialize;

use crate::Result;
use crate::ls::{EntryKind, load_trees, lossy, walk_loaded};
use crate::pathmatch::join;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One difference. An entry whose type changed (a file that became a
/// directory, say) appears twice: removed, then added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    /// Full snapshot path in the lossless escape form of
    /// [`printable`](crate::printable).
    pub path: String,
    pub change: Change,
    pub kind: EntryKind,
    /// For a changed entry: the file's data (or the symlink's target) differs.
    pub content: bool,
    /// For a changed entry: the metadata fields that differ, among `mode`,
    /// `owner` (uid, gid or names), `mtime` and `xattrs`.
    pub metadata: Vec<&'static str>,
    /// Size in the first snapshot (absent for added entries).
    pub old_size: Option<u64>,
    /// Size in the second snapshot (absent for removed entries).
    pub new_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffTotals {
    pub added: u64,
    pub removed: u64,
    /// Changed entries (content or metadata).
    pub changed: u64,
    /// Changed entries whose content differs.
    pub content_changed: u64,
    /// Changed entries whose content is the same (metadata only).
    pub metadata_changed: u64,
    /// Total size of added files.
    pub added_bytes: u64,
    /// Total size of removed files.
    pub removed_bytes: u64,
    /// Net change of the total file size from the first to the second snapshot.
    pub size_change_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// Id of the first (older) snapshot.
    pub from: String,
    /// Id of the second snapshot.
    pub to: String,
    /// Differences in depth-first path order.
    pub entries: Vec<DiffEntry>,
    pub totals: DiffTotals,
}

/// A pair of directories, one in each snapshot, whose trees differ.
struct Pair {
    path: Vec<u8>,
    a: Id,
    b: Id,
}

/// What comparing one pair of trees yields.
#[derive(Default)]
struct PairOut {
    entries: Vec<(Vec<u8>, DiffEntry)>,
    pairs: Vec<Pair>,
    /// Whole directories only in the first (`Removed`) or second snapshot.
    whole: Vec<(Vec<u8>, Id, Change)>,
}

/// Compares snapshot `a` (the old one) with snapshot `b`.
pub async fn diff(repo: &Repository, a: &Snapshot, b: &Snapshot) -> Result<DiffReport> {
    let mut entries: Vec<(Vec<u8>, DiffEntry)> = Vec::new();
    let mut whole: Vec<(Vec<u8>, Id, Change)> = Vec::new();
    let mut pairs = Vec::new();
    if a.record.tree != b.record.tree {
        pairs.push(Pair {
            path: Vec::new(),
            a: a.record.tree,
            b: b.record.tree,
        });
    }
    // One level of differing directory pairs at a time, compared in parallel.
    while !pairs.is_empty() {
        let outs: Vec<PairOut> = futures::stream::iter(std::mem::take(&mut pairs))
            .map(|p| compare_pair(repo, p))
            .buffer_unordered(repo.concurrency())
            .try_collect()
            .await?;
        for out in outs {
            entries.extend(out.entries);
            pairs.extend(out.pairs);
            whole.extend(out.whole);
        }
    }
    for change in [Change::Removed, Change::Added] {
        let roots: Vec<(Vec<u8>, Id)> = whole
            .iter()
            .filter(|w| w.2 == change)
            .map(|(p, id, _)| (p.clone(), *id))
            .collect();
        if roots.is_empty() {
            continue;
        }
        let trees = load_trees(repo, roots.clone(), None).await?;
        for (path, id) in roots {
            walk_loaded(&trees, id, &path, &mut |p, n| {
                entries.push((p.to_vec(), one_sided(p, n, change)));
                true
            });
        }
    }
    entries.sort_by(|x, y| path_order(&x.0, &y.0).then(removed_first(&x.1, &y.1)));
    let mut totals = DiffTotals::default();
    for (_, e) in &entries {
        let old = e.old_size.unwrap_or(0) as i64;
        let new = e.new_size.unwrap_or(0) as i64;
        totals.size_change_bytes += new - old;
        match e.change {
            Change::Added => {
                totals.added += 1;
                totals.added_bytes += new as u64;
            }
            Change::Removed => {
                totals.removed += 1;
                totals.removed_bytes += old as u64;
            }
            Change::Changed => {
                totals.changed += 1;
                if e.content {
                    totals.content_changed += 1;
                } else {
                    totals.metadata_changed += 1;
                }
            }
        }
    }
    Ok(DiffReport {
        from: a.id.to_hex(),
        to: b.id.to_hex(),
        entries: entries.into_iter().map(|(_, e)| e).collect(),
        totals,
    })
}

async fn compare_pair(repo: &Repository, pair: Pair) -> Result<PairOut> {
    let (ta, tb) = futures::try_join!(repo.read_tree(&pair.a), repo.read_tree(&pair.b))?;
    let mut out = PairOut::default();
    let (mut i, mut j) = (0, 0);
    loop {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        match order {
            Ordering::Less => {
                one_side(&mut out, &pair.path, &ta.nodes[i], Change::Removed);
                i += 1;
            }
            Ordering::Greater => {
                one_side(&mut out, &pair.path, &tb.nodes[j], Change::Added);
                j += 1;
            }
            Ordering::Equal => {
                both_sides(&mut out, &pair.path, &ta.nodes[i], &tb.nodes[j]);
                i += 1;
                j += 1;
            }
        }
    }
    Ok(out)
}

fn one_side(out: &mut PairOut, parent: &[u8], node: &Node, change: Change) {
    let path = join(parent, &node.name);
    out.entries
        .push((path.clone(), one_sided(&path, node, change)));
    if let (NodeKind::Dir, Some(sub)) = (&node.kind, node.subtree) {
        out.whole.push((path, sub, change));
    }
}

fn both_sides(out: &mut PairOut, parent: &[u8], a: &Node, b: &Node) {
    if a.kind != b.kind {
        one_side(out, parent, a, Change::Removed);
        one_side(out, parent, b, Change::Added);
        return;
    }
    let path = join(parent, &a.name);
    let content = match a.kind {
        NodeKind::File => a.size != b.size || a.content != b.content,
        NodeKind::Symlink => a.link_target != b.link_target,
        // A directory's content is its entries, reported one by one.
        NodeKind::Dir => false,
    };
    let metadata = metadata_changes(a, b);
    if content || !metadata.is_empty() {
        out.entries.push((
            path.clone(),
            DiffEntry {
                path: lossy(&path),
                change: Change::Changed,
                kind: EntryKind::from(&a.kind),
                content,
                metadata,
                old_size: Some(a.size),
                new_size: Some(b.size),
            },
        ));
    }
    if let (Some(sa), Some(sb)) = (a.subtree, b.subtree)
        && sa != sb
    {
        out.pairs.push(Pair { path, a: sa, b: sb });
    }
}

fn one_sided(path: &[u8], node: &Node, change: Change) -> DiffEntry {
    let size = Some(node.size);
    DiffEntry {
        path: lossy(path),
        change,
        kind: EntryKind::from(&node.kind),
        content: false,
        metadata: Vec::new(),
        old_size: if change == Change::Removed {
            size
        } else {
            None
        },
        new_size: if change == Change::Added { size } else { None },
    }
}

/// Metadata a restore would set differently. Ctime, device, inode and link
/// count are left out: they change whenever a file is copied or restored,
/// without the user changing anything.
fn metadata_changes(a: &Node, b: &Node) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.mode != b.mode {
        out.push("mode");
    }
    if (a.uid, a.gid, &a.user, &a.group) != (b.uid, b.gid, &b.user, &b.group) {
        out.push("owner");
    }
    if a.mtime != b.mtime {
        out.push("mtime");
    }
    if a.xattrs != b.xattrs {
        out.push("xattrs");
    }
    out
}

/// Depth-first order: compares paths component by component, so a
/// directory's contents come right after it.
pub(crate) fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

fn removed_first(a: &DiffEntry, b: &DiffEntry) -> Ordering {
    let rank = |c: Change| match c {
        Change::Removed => 0,
        Change::Changed => 1,
        Change::Added => 2,
    };
    rank(a.change).cmp(&rank(b.change))
}
