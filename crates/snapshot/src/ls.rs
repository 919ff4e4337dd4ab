//! Listing a snapshot's contents (`lifeboat ls`).
//!
//! [`ls`] returns [`LsEntry`] values for one directory (or one file), or for
//! a whole subtree when `recursive`. This module also holds the read-side
//! helpers the other query modules share: [`EntryKind`], the bulk tree
//! loader (`load_trees`, which reads every tree of a subtree once, in
//! parallel) and snapshot path formatting. It does not restore or compare;
//! see [`crate::restore`] and [`crate::diff`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lifeboat_repo::{Id, Node, NodeKind, Repository, Snapshot, Time, Tree};
use serde::Serialize;

use crate::Result;
use crate::nav::{self, Found};
use crate::pathmatch::{join, normalize};

/// What a snapshot entry is, as shown to users (`"file"`, `"dir"`, `"symlink"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl From<&NodeKind> for EntryKind {
    fn from(k: &NodeKind) -> Self {
        match k {
            NodeKind::File => EntryKind::File,
            NodeKind::Dir => EntryKind::Dir,
            NodeKind::Symlink => EntryKind::Symlink,
        }
    }
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsEntry {
    /// Full snapshot path (`/home/ann/doc.txt`) in the lossless escape form
    /// of [`printable`](crate::printable) (`caf\\xe9` for a byte that is not
    /// UTF-8, `\\n` for a newline).
    pub path: String,
    pub kind: EntryKind,
    /// File size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Permission and special bits (`mode & 0o7777`).
    pub mode: u32,
    /// Serialized as RFC 3339 with nanoseconds.
    pub mtime: jiff::Timestamp,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

impl LsEntry {
    pub(crate) fn new(path: &[u8], node: &Node) -> Self {
        LsEntry {
            path: lossy(path),
            kind: EntryKind::from(&node.kind),
            size: node.size,
            mode: node.mode,
            mtime: timestamp(node.mtime),
            uid: node.uid,
            gid: node.gid,
            user: node.user.clone(),
            group: node.group.clone(),
            link_target: node.link_target.as_deref().map(lossy),
        }
    }
}

/// Lists `path` in `snapshot`: a directory's entries (and, when `recursive`,
/// everything below them, each directory followed by its contents), or the
/// single entry a file or symlink path names. `/` or an empty path is the
/// snapshot root. Holds the whole listing; [`ls_each`] streams it.
pub async fn ls(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &[u8],
    recursive: bool,
) -> Result<Vec<LsEntry>> {
    let mut out = Vec::new();
    ls_each(repo, snapshot, path, recursive, &mut |e| {
        out.push(e);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// [`ls`], handing each entry to `emit` as it is found, in the same order:
/// memory is the trees on the path being listed and a bounded read-ahead
/// (see [`walk_streaming`]), not the listing. An error from `emit` stops
/// the walk and is returned.
pub async fn ls_each(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &[u8],
    recursive: bool,
    emit: &mut dyn FnMut(LsEntry) -> Result<()>,
) -> Result<()> {
    repo.require_full_key("ls")?;
    let base = normalize(path);
    let tree_id = match nav::lookup(repo, &snapshot.id.short(), snapshot.record.tree, path).await? {
        Found::Root(id) => id,
        Found::Node(node) => match (&node.kind, node.subtree) {
            (NodeKind::Dir, Some(id)) => id,
            _ => return emit(LsEntry::new(&base, &node)),
        },
    };
    walk_streaming(repo, tree_id, &base, &mut |p, n| {
        emit(LsEntry::new(p, n))?;
        Ok(recursive)
    })
    .await
}

/// Decoded trees a [`walk_streaming`] walk holds ahead of its position.
const READ_AHEAD_TREES: usize = 64;

/// Trees read ahead of a walk: at most `connections` reads at once, at most
/// [`READ_AHEAD_TREES`] decoded or being read.
pub(crate) struct ReadAhead<'r> {
    repo: &'r Repository,
    connections: usize,
    ready: HashMap<Id, lifeboat_repo::Result<Tree>>,
    reading: HashSet<Id>,
    in_flight: futures::stream::FuturesUnordered<
        futures::future::BoxFuture<'r, (Id, lifeboat_repo::Result<Tree>)>,
    >,
}

impl<'r> ReadAhead<'r> {
    pub(crate) fn new(repo: &'r Repository) -> Self {
        ReadAhead {
            repo,
            connections: repo.concurrency().max(1),
            ready: HashMap::new(),
            reading: HashSet::new(),
            in_flight: futures::stream::FuturesUnordered::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.in_flight.len() < self.connections
            && self.ready.len() + self.in_flight.len() < READ_AHEAD_TREES
    }

    /// Starts reading `id` unless it is read or being read already.
    fn start(&mut self, id: Id) {
        if !self.ready.contains_key(&id) && self.reading.insert(id) {
            let repo = self.repo;
            self.in_flight
                .push(Box::pin(async move { (id, repo.read_tree(&id).await) }));
        }
    }

    /// Starts reading the trees a walk will visit next, nearest first, as
    /// many as there is room for.
    pub(crate) fn start_upcoming(&mut self, upcoming: impl Iterator<Item = Id>) {
        for id in upcoming.take(READ_AHEAD_TREES) {
            if !self.has_room() {
                break;
            }
            self.start(id);
        }
    }

    /// The tree `id`, read now if it was not read ahead. A read's error
    /// is kept for its own tree: waiting for one tree never fails because
    /// another one read ahead of it did not read.
    pub(crate) async fn take(&mut self, id: Id) -> lifeboat_repo::Result<Tree> {
        self.start(id);
        loop {
            if let Some(tree) = self.ready.remove(&id) {
                return tree;
            }
            let (got, tree) = self
                .in_flight
                .next()
                .await
                .expect("the tree wanted is being read");
            self.reading.remove(&got);
            self.ready.insert(got, tree);
        }
    }
}

/// A directory being listed by [`walk_streaming`].
struct Frame {
    dir: Vec<u8>,
    tree: Tree,
    next: usize,
}

/// Depth-first walk in name order from `tree_id` (at snapshot path
/// `path`), calling `visit` with each entry's full path as the trees
/// arrive, each directory right before its contents (the order of
/// [`walk_loaded`]); `visit` returns whether to descend into a directory,
/// or an error that stops the walk. Unlike [`load_trees`] + [`walk_loaded`]
/// it never holds the subtree: only the trees of the directories on the
/// current path, plus the next subdirectories to visit read ahead (each
/// time the walk descends, so a one-directory listing reads one tree), at
/// most [`READ_AHEAD_TREES`] of them and `repo.concurrency()` reads at a
/// time. A tree named in two places is read at each.
pub(crate) async fn walk_streaming(
    repo: &Repository,
    tree_id: Id,
    path: &[u8],
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<()> {
    let mut ahead = ReadAhead::new(repo);
    let mut frames = vec![Frame {
        dir: path.to_vec(),
        tree: ahead.take(tree_id).await?,
        next: 0,
    }];
    while let Some(top) = frames.last_mut() {
        let Some(node) = top.tree.nodes.get(top.next) else {
            frames.pop();
            continue;
        };
        top.next += 1;
        let child = join(&top.dir, &node.name);
        let descend = visit(&child, node)?;
        let sub = match (descend, &node.kind, node.subtree) {
            (true, NodeKind::Dir, Some(sub)) => sub,
            _ => continue,
        };
        // Read ahead the subdirectories visited after this one, nearest
        // first: the rest of this directory's, then its parents'. (Only
        // once the walk descends: a one-directory listing reads one tree.)
        ahead.start_upcoming(frames.iter().rev().flat_map(|f| {
            f.tree.nodes[f.next..]
                .iter()
                .filter(|n| n.kind == NodeKind::Dir)
                .filter_map(|n| n.subtree)
        }));
        let tree = ahead.take(sub).await?;
        frames.push(Frame {
            dir: child,
            tree,
            next: 0,
        });
    }
    Ok(())
}

/// Trees loaded by [`load_trees`], by id.
pub(crate) type TreeMap = HashMap<Id, Arc<Tree>>;

/// Decides, from a directory's full snapshot path, whether to descend into it.
pub(crate) type DescendFilter<'a> = &'a (dyn Fn(&[u8]) -> bool + Sync);

/// Reads every tree reachable from `roots` (each a snapshot path and the tree
/// id found there), level by level with up to `repo.concurrency()` reads in
/// flight. Each distinct tree id is read once, however many places share it.
/// `descend`, when given, prunes directories by path (their trees are not
/// read).
pub(crate) async fn load_trees(
    repo: &Repository,
    roots: Vec<(Vec<u8>, Id)>,
    descend: Option<DescendFilter<'_>>,
) -> Result<TreeMap> {
    let mut trees: TreeMap = HashMap::new();
    // Without a path filter, a tree's children are the same wherever it
    // appears, so expanding it once is enough.
    let mut expanded: HashSet<Id> = HashSet::new();
    let mut frontier = roots;
    while !frontier.is_empty() {
        let mut wanted: Vec<Id> = frontier
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !trees.contains_key(id))
            .collect();
        wanted.sort();
        wanted.dedup();
        let loaded: Vec<(Id, Tree)> = futures::stream::iter(wanted)
            .map(|id| async move { Ok::<_, crate::Error>((id, repo.read_tree(&id).await?)) })
            .buffer_unordered(repo.concurrency())
            .try_collect()
            .await?;
        for (id, tree) in loaded {
            trees.insert(id, Arc::new(tree));
        }
        let mut next = Vec::new();
        for (path, id) in frontier {
            if descend.is_none() && !expanded.insert(id) {
                continue;
            }
            for node in &trees[&id].nodes {
                if let (NodeKind::Dir, Some(sub)) = (&node.kind, node.subtree) {
                    let child = join(&path, &node.name);
                    if descend.is_none_or(|f| f(&child)) {
                        next.push((child, sub));
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(trees)
}

/// Depth-first walk over loaded trees in name order, calling `visit` with
/// each entry's full path; `visit` returns whether to descend into a
/// directory. Subtrees missing from `trees` (pruned while loading) are
/// skipped.
pub(crate) fn walk_loaded(
    trees: &TreeMap,
    tree_id: Id,
    path: &[u8],
    visit: &mut dyn FnMut(&[u8], &Node) -> bool,
) {
    let Some(tree) = trees.get(&tree_id) else {
        return;
    };
    for node in &tree.nodes {
        let child = join(path, &node.name);
        let descend = visit(&child, node);
        if let (true, NodeKind::Dir, Some(sub)) = (descend, &node.kind, node.subtree) {
            walk_loaded(trees, sub, &child, visit);
        }
    }
}

/// A snapshot path for display, in [`printable`](crate::printable)'s
/// lossless escape form; the root shows as `/`.
pub(crate) fn lossy(path: &[u8]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        crate::printable(path)
    }
}

/// A tree time as a timestamp; times outside jiff's range (only a damaged or
/// odd source produces them) clamp to its limits.
pub(crate) fn timestamp(t: Time) -> jiff::Timestamp {
    jiff::Timestamp::new(t.secs, t.nanos.min(999_999_999) as i32).unwrap_or(if t.secs < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}
