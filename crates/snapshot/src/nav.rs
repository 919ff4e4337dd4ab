//! Navigating snapshot trees by path.
//!
//! Snapshot paths are absolute-style, `/`-separated byte strings mirroring
//! where the files were at backup time (`/home/ann/doc.txt`); `/` is the
//! snapshot's root tree.

use lifeboat_repo::{Id, Node, NodeKind, Repository, Tree};

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
        path: String::from_utf8_lossy(path).into_owned(),
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
