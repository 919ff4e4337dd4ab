//! Tree assembly: directories' tree blobs written bottom-up as their
//! entries complete, and the nodes of files that do not come from disk.
//!
//! Each directory has a pending count (its entries plus one held by the
//! walker until it has listed them all); whichever thread completes the
//! last one encodes the directory's tree in every live target and fills
//! the directory's slot in its parent. So no thread waits for a directory,
//! and only directories with unfinished entries are held in memory. This
//! module does not read the source: the walker and the readers hand it
//! finished nodes.

use std::sync::{Arc, Mutex};

use lifeboat_repo::{BlobType, Id, Node, NodeKind, Time, Tree};

use super::ctx::Ctx;

/// A directory whose trees are not written yet.
pub(crate) struct DirState {
    /// Per entry, its node in each target (in target order); `None` once
    /// the entry turned out to be skipped.
    nodes: Vec<Option<Vec<Node>>>,
    /// Entries not yet complete, plus one held by the walker until it has
    /// enumerated the directory.
    remaining: usize,
    /// This directory's own node (None for the snapshot root).
    node: Option<Node>,
    parent: Option<(Arc<Mutex<DirState>>, usize)>,
}

pub(crate) type DirRef = Arc<Mutex<DirState>>;

/// Where the root trees' ids go (one per target; `None` for a target that
/// failed) when the root completes.
pub(crate) type RootSlot = Arc<Mutex<Option<Vec<Option<Id>>>>>;

/// A directory with `entries` entries to complete; `node` and `parent`
/// are `None` for the snapshot's root.
pub(crate) fn new_dir(
    node: Option<Node>,
    parent: Option<(DirRef, usize)>,
    entries: usize,
) -> DirRef {
    Arc::new(Mutex::new(DirState {
        nodes: vec![None; entries],
        remaining: entries + 1,
        node,
        parent,
    }))
}

/// Records one entry's nodes (or `None` if skipped) and finishes the
/// directory if it was the last one outstanding. `slot: None` releases the
/// walker's hold.
pub(crate) fn complete(
    ctx: &Ctx,
    dir: &DirRef,
    slot: Option<usize>,
    nodes: Option<Vec<Node>>,
    root: &RootSlot,
) {
    let finished = {
        let mut d = dir.lock().unwrap();
        if let Some(slot) = slot {
            d.nodes[slot] = nodes;
        }
        d.remaining -= 1;
        if d.remaining > 0 {
            return;
        }
        let entries: Vec<Vec<Node>> = std::mem::take(&mut d.nodes).into_iter().flatten().collect();
        (entries, d.node.take(), d.parent.take())
    };
    let (entries, own, parent) = finished;
    let mut per_target: Vec<Vec<Node>> = ctx
        .targets
        .iter()
        .map(|_| Vec::with_capacity(entries.len()))
        .collect();
    for nodes in entries {
        for (t, node) in nodes.into_iter().enumerate() {
            per_target[t].push(node);
        }
    }
    let ids: Vec<Option<Id>> = per_target
        .into_iter()
        .enumerate()
        .map(|(t, nodes)| store_tree(ctx, t, Tree { nodes }, parent.is_none()))
        .collect();
    match parent {
        Some((parent, slot)) => {
            let own = own.expect("a non-root directory has a node");
            let nodes = ctx.per_target(own, |t, n| n.subtree = ids[t]);
            complete(ctx, &parent, Some(slot), Some(nodes), root);
        }
        None => *root.lock().unwrap() = Some(ids),
    }
}

/// Stores `tree` in target `t` if it is live; a root tree is also kept
/// at hand for [`PendingBackup::add_root_file`](super::PendingBackup::add_root_file).
/// `None` if the target failed (now or before).
pub(crate) fn store_tree(ctx: &Ctx, t: usize, tree: Tree, is_root: bool) -> Option<Id> {
    if !ctx.live(t) {
        return None;
    }
    let target = &ctx.targets[t];
    match target
        .session
        .add_blob_blocking(BlobType::Tree, &tree.encode())
    {
        Ok(a) => {
            if is_root {
                *target.root_tree.lock().unwrap() = Some(tree);
            }
            Some(a.id)
        }
        Err(e) => {
            ctx.fail(t, e.into());
            None
        }
    }
}

/// The node of a file whose content did not come from a file on disk (a
/// stream, a database's backup label): this process's user, mode `mode`,
/// times now.
pub(crate) fn generated_file_node(name: &str, mode: u32, size: u64, content: Vec<Id>) -> Node {
    let now = jiff::Timestamp::now();
    let t = Time {
        secs: now.as_second(),
        nanos: now.subsec_nanosecond() as u32,
    };
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: mode & 0o7777,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        user: None,
        group: None,
        mtime: t,
        ctime: t,
        dev: 0,
        inode: 0,
        links: 1,
        size,
        content,
        subtree: None,
        link_target: None,
        xattrs: vec![],
    }
}
