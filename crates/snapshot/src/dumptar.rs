//! A directory of a snapshot as a tar stream (`lifeboat dump SNAP DIR`,
//! as `restic dump` does for directories).
//!
//! The entries are the directory and everything below it, named relative
//! to the directory's parent (dumping `/home/ann` gives `ann/...`; the
//! snapshot root gives the top-level entries by their own names), in tree
//! order. Each carries its mode, owner ids and names and mtime; file data
//! is streamed blob by blob (verified as read), never held whole in memory.
//! Hard links are written as separate regular files, and extended
//! attributes are left out: use `restore` where those matter.

use std::io::Write;
use std::sync::Arc;

use lifeboat_repo::{Id, Node, NodeKind, Repository, Snapshot};

use crate::dump::stream_reader;
use crate::nav::{self, Found};
use crate::{Error, Result};

/// One entry to write: its path in the archive and its node.
struct Entry {
    path: Vec<u8>,
    node: Node,
}

/// Whether `path` names a directory of `snapshot` (or its root): what
/// `dump` writes as a tar stream.
pub async fn is_dir(repo: &Repository, snapshot: &Snapshot, path: &[u8]) -> Result<bool> {
    Ok(
        match nav::lookup(repo, &snapshot.id.short(), snapshot.record.tree, path).await? {
            Found::Root(_) => true,
            Found::Node(n) => n.kind == NodeKind::Dir,
        },
    )
}

/// Writes the directory at `path` in `snapshot` (or the root for `/`) to
/// `out` as a tar stream; returns the number of entries. A file is an
/// [`Error::BadInput`] (dump it with [`crate::dump::dump`]).
pub async fn dump_tar(
    repo: Arc<Repository>,
    snapshot: &Snapshot,
    path: &[u8],
    out: Box<dyn Write + Send>,
) -> Result<u64> {
    repo.require_full_key("dump")?;
    let mut entries = Vec::new();
    let (root_tree, prefix) =
        match nav::lookup(&repo, &snapshot.id.short(), snapshot.record.tree, path).await? {
            Found::Root(id) => (id, Vec::new()),
            Found::Node(node) if node.kind == NodeKind::Dir => {
                let id = node.subtree.ok_or_else(|| {
                    Error::BadInput(format!("{} has no tree", crate::printable(&node.name)))
                })?;
                let prefix = node.name.clone();
                entries.push(Entry {
                    path: prefix.clone(),
                    node,
                });
                (id, prefix)
            }
            Found::Node(_) => {
                return Err(Error::BadInput(format!(
                    "{} is not a directory",
                    crate::printable(path)
                )));
            }
        };
    collect(&repo, root_tree, prefix, &mut entries).await?;
    let count = entries.len() as u64;
    let handle = tokio::runtime::Handle::current();
    let write = move || -> std::io::Result<()> {
        // stream_reader spawns its fetch task on this runtime.
        let _guard = handle.enter();
        let mut builder = tar::Builder::new(out);
        for e in entries {
            append(&mut builder, &repo, e)?;
        }
        builder.into_inner()?.flush()
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| Error::Internal(format!("tar writer task failed: {e}")))?
        .map_err(|e| Error::io("<output>", e))?;
    Ok(count)
}

/// Every node below the tree `tree`, depth first, named under `prefix`.
async fn collect(
    repo: &Repository,
    tree: Id,
    prefix: Vec<u8>,
    entries: &mut Vec<Entry>,
) -> Result<()> {
    let mut stack = vec![(tree, prefix)];
    while let Some((tree, prefix)) = stack.pop() {
        let t = repo.read_tree(&tree).await?;
        let mut subdirs = Vec::new();
        for node in t.nodes.iter() {
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&node.name);
            if let (NodeKind::Dir, Some(sub)) = (&node.kind, node.subtree) {
                subdirs.push((sub, path.clone()));
            }
            entries.push(Entry {
                path,
                node: node.clone(),
            });
        }
        // Popped in order: the first subdirectory is walked next.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn append(
    builder: &mut tar::Builder<Box<dyn Write + Send>>,
    repo: &Arc<Repository>,
    e: Entry,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let n = &e.node;
    let mut h = tar::Header::new_gnu();
    h.set_mode(n.mode);
    h.set_uid(n.uid as u64);
    h.set_gid(n.gid as u64);
    h.set_mtime(n.mtime.secs.max(0) as u64);
    if let Some(u) = &n.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &n.group {
        let _ = h.set_groupname(g);
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&e.path));
    match n.kind {
        NodeKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            builder.append_data(&mut h, path, std::io::empty())
        }
        NodeKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = n.link_target.as_deref().unwrap_or_default();
            builder.append_link(
                &mut h,
                path,
                std::path::Path::new(std::ffi::OsStr::from_bytes(target)),
            )
        }
        NodeKind::File => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(n.size);
            let reader = stream_reader(repo.clone(), n);
            builder.append_data(&mut h, path, reader)
        }
    }
}
