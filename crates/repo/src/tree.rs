//! Directory trees: one tree blob per directory, listing its entries sorted
//! by name, each file with its ordered list of data blob ids.
//!
//! Encoding: postcard of [`Tree`], stored as a blob of type `Tree` (so it is
//! compressed, encrypted and deduplicated like data: an unchanged directory
//! costs nothing in the next snapshot).

use serde::{Deserialize, Serialize};

use crate::{Error, Id, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The raw file name bytes (Unix names need not be UTF-8).
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub mtime: Time,
    pub ctime: Time,
    /// Device and inode at backup time: used to compare with the parent
    /// snapshot and to restore hard links (nodes sharing both, with
    /// `links > 1`, are one file).
    pub dev: u64,
    pub inode: u64,
    pub links: u64,
    pub size: u64,
    /// Data blobs of a file, in order.
    pub content: Vec<Id>,
    /// Tree blob of a directory.
    pub subtree: Option<Id>,
    pub link_target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Node {
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("tree serializes")
    }

    pub fn decode(id: &Id, bytes: &[u8]) -> Result<Self> {
        let tree: Tree =
            postcard::from_bytes(bytes).map_err(|e| Error::corrupt(format!("tree {id}"), e))?;
        let bad_name = |n: &Node| {
            n.name.is_empty() || n.name.contains(&b'/') || n.name == b"." || n.name == b".."
        };
        if tree.nodes.iter().any(bad_name) {
            return Err(Error::corrupt(format!("tree {id}"), "invalid entry name"));
        }
        // Lookups binary-search by name.
        if tree.nodes.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(Error::corrupt(
                format!("tree {id}"),
                "entries not sorted and unique",
            ));
        }
        Ok(tree)
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}
