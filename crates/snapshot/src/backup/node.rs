//! An entry's metadata as a tree node: mode, owner (with user and group
//! names, looked up once per id), times, inode, size and extended
//! attributes.
//!
//! This module reads metadata only; it never reads file content and never
//! decides whether an entry is backed up.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use lifeboat_repo::{Node, NodeKind, Time};

use super::ctx::Ctx;

/// User and group names by id, looked up once each.
#[derive(Default)]
pub(crate) struct Names(Mutex<NameCache>);

#[derive(Default)]
struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&self, uid: u32) -> Option<String> {
        let mut n = self.0.lock().unwrap();
        n.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&self, gid: u32) -> Option<String> {
        let mut n = self.0.lock().unwrap();
        n.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// The node for an entry, from its metadata. Extended attributes are
/// read only if the entry's ctime or inode differs from a parent
/// snapshot's node: setting an xattr updates the ctime, so an unchanged
/// ctime means unchanged xattrs (and one syscall saved per entry on an
/// unchanged tree).
pub(crate) fn base_node(
    ctx: &Ctx,
    name: &[u8],
    path: &Path,
    meta: &Metadata,
    kind: NodeKind,
    parents: &[Option<&Node>],
) -> Node {
    let ctime = Time {
        secs: meta.ctime(),
        nanos: meta.ctime_nsec() as u32,
    };
    let reuse = ctx.targets.iter().zip(parents).find_map(|(target, p)| {
        p.filter(|p| !target.full && p.kind == kind && p.ctime == ctime && p.inode == meta.ino())
    });
    let xattrs = match reuse {
        Some(p) => p.xattrs.clone(),
        None => read_xattrs(path),
    };
    Node {
        name: name.to_vec(),
        kind: kind.clone(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: ctx.names.user(meta.uid()),
        group: ctx.names.group(meta.gid()),
        mtime: Time {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec() as u32,
        },
        ctime,
        dev: meta.dev(),
        inode: meta.ino(),
        links: meta.nlink(),
        size: if kind == NodeKind::File {
            meta.len()
        } else {
            0
        },
        content: vec![],
        subtree: None,
        link_target: None,
        xattrs,
    }
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    match xattr::list(path) {
        Ok(names) => names
            .filter_map(|n| {
                let v = xattr::get(path, &n).ok().flatten()?;
                Some((n.as_bytes().to_vec(), v))
            })
            .collect(),
        Err(_) => vec![],
    }
}
