//! Navigating snapshot trees by path.
//!
//! Snapshot paths are absolute-style, `/`-separated byte strings mirroring
//! where the files were at backup time (`/home/ann/doc.txt`); `/` is the
//! snapshot's root tree. A snapshot query may name a subtree,
//! `SNAPSHOT:SUBPATH` ([`split_query`], [`rooted_at`]).

use lifeboat_repo::{Id, Node, NodeKind, Repository, Snapshot, Tree};

use crate::{Error, Result};

/// Splits a snapshot path into its components, ignoring empty ones and `.`.
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

/// What a path in a snapshot names.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per lookup
pub enum Found {
    /// The snapshot root (no node of its own).
    Root(Id),
    Node(Node),
}

/// Looks up `path` in the tree rooted at `root`.
pub async fn lookup(repo: &Repository, snapshot: &str, root: Id, path: &[u8]) -> Result<Found> {
    let parts = components(path);
    let not_found = || Error::PathNotFound {
        snapshot: snapshot.to_string(),
        path: crate::printable(path),
    };
    let mut tree_id = root;
    let mut found = Found::Root(root);
    for (i, part) in parts.iter().enumerate() {
        let tree: Tree = repo.read_tree(&tree_id).await?;
        let node = tree.find(part).ok_or_else(not_found)?.clone();
        if i + 1 < parts.len() {
            match (&node.kind, node.subtree) {
                (NodeKind::Dir, Some(sub)) => tree_id = sub,
                _ => return Err(not_found()),
            }
        }
        found = Found::Node(node);
    }
    Ok(found)
}

/// Splits a snapshot query of the form `SNAPSHOT:SUBPATH` (restic's
/// `latest:/home/me`) into the snapshot (an id, a prefix or `latest`) and
/// the subpath (bytes: a path need not be UTF-8). Snapshot ids are
/// hexadecimal and `latest` has no colon, so the first `:` is the
/// separator; a query without one has no subpath. A snapshot part that is
/// not UTF-8 is [`Error::BadInput`].
pub fn split_query(query: &[u8]) -> Result<(&str, Option<&[u8]>)> {
    let (snapshot, subpath) = match query.iter().position(|b| *b == b':') {
        Some(i) => (&query[..i], Some(&query[i + 1..])),
        None => (query, None),
    };
    let snapshot = std::str::from_utf8(snapshot).map_err(|_| {
        Error::BadInput(format!(
            "{} is not a snapshot id, prefix or `latest`",
            crate::printable(snapshot)
        ))
    })?;
    Ok((snapshot, subpath))
}

/// `snapshot` re-rooted at its directory `subpath`: the returned snapshot's
/// tree is that directory's, so restoring, listing, dumping or diffing it
/// sees the directory's contents at `/` (restored into the target without
/// the path prefix). An empty subpath or `/` leaves the snapshot as it is.
/// A subpath that is not in the snapshot is [`Error::PathNotFound`]; one
/// that is not a directory is [`Error::BadInput`].
pub async fn rooted_at(repo: &Repository, snapshot: Snapshot, subpath: &[u8]) -> Result<Snapshot> {
    let name = snapshot.id.short();
    match lookup(repo, &name, snapshot.record.tree, subpath).await? {
        Found::Root(_) => Ok(snapshot),
        Found::Node(Node {
            kind: NodeKind::Dir,
            subtree: Some(tree),
            ..
        }) => {
            let mut snapshot = snapshot;
            snapshot.record.tree = tree;
            Ok(snapshot)
        }
        Found::Node(_) => Err(Error::BadInput(format!(
            "{} in snapshot {name} is not a directory: name a directory after `:` \
             (a single file is written by `lifeboat dump {name} PATH`)",
            crate::printable(subpath)
        ))),
    }
}
