//! Metadata of restored entries, and making the restore durable.
//!
//! Owns what setting an entry's metadata needs ([`Meta`]) and the order it
//! is set in (owner, xattrs, mode, times), for files (through their open
//! handle, when their last blob is written), symlinks (while preparing,
//! relative to their directory's handle) and directories (last, through
//! their handles, deepest first, so creating entries does not
//! disturb a directory's mtime and a read-only directory can still be
//! filled); and the one `syncfs` of the target that makes a restore
//! durable. Extended attributes are best effort: a failure is a warning.
//! It does not decide which entries are restored nor write file content.

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::Problem;
use super::handles::{self, Dirs};

/// Extended attributes as (name, value) pairs.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What setting an entry's metadata needs.
#[derive(Clone)]
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime_nanos: u32,
    pub(super) mtime_secs: i64,
    /// Boxed: almost every entry has none.
    pub(super) xattrs: Option<Box<Xattrs>>,
}

impl Meta {
    pub(super) fn xattrs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        self.xattrs.as_deref().map_or(&[], Vec::as_slice)
    }

    pub(super) fn mtime(&self) -> filetime::FileTime {
        filetime::FileTime::from_unix_time(self.mtime_secs, self.mtime_nanos)
    }
}

/// Sets a file's (or directory's) metadata through its handle. Order
/// matters: chown first (it clears set-id bits), xattrs before chmod (a
/// read-only mode would forbid them), times last (nothing after touches
/// the mtime). The access time is set to the mtime: snapshots do not keep it.
pub(super) fn set_file_metadata(
    file: &File,
    path: &Path,
    meta: &Meta,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))?;
    }
    for (name, value) in meta.xattrs() {
        if let Err(e) = xattr::FileExt::set_xattr(file, OsStr::from_bytes(name), value) {
            problems.push(xattr_warning(path, name, e));
        }
    }
    file.set_permissions(Permissions::from_mode(meta.mode & 0o7777))?;
    let t = meta.mtime();
    filetime::set_file_handle_times(file, Some(t), Some(t))
}

/// Sets a symlink's metadata: the owner through an `O_PATH` handle on the
/// symlink itself, times and xattrs relative to its directory's handle
/// without following it (see `handles`).
pub(super) fn set_symlink_metadata(
    dir: &File,
    name: &OsStr,
    path: &Path,
    meta: &Meta,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        let link = handles::open_symlink(dir, name)?;
        handles::chown_symlink(&link, meta.uid, meta.gid)?;
    }
    for (attr, value) in meta.xattrs() {
        if let Err(e) = handles::symlink_xattr(dir, name, OsStr::from_bytes(attr), value) {
            problems.push(xattr_warning(path, attr, e));
        }
    }
    handles::symlink_times(dir, name, meta.mtime_secs, meta.mtime_nanos)
}

/// Xattrs are best effort (the target filesystem may not support them, or
/// forbid a namespace), so a failure is reported but does not fail the entry.
pub(super) fn xattr_warning(path: &Path, name: &[u8], e: io::Error) -> Problem {
    Problem {
        path: path.to_path_buf(),
        message: format!(
            "extended attribute {} not restored: {e}",
            crate::printable(name)
        ),
        error: false,
    }
}

/// Sets directories' metadata, deepest first (`dir_meta` lists parents
/// before their contents), each through its verified handle. Returns how
/// many were done. Durability comes from one `syncfs` of the target at the
/// end of the restore (see [`sync_target`]).
pub(super) fn finish_dirs(
    dirs: &Dirs,
    dir_meta: &[(u32, Meta)],
    owner: bool,
) -> (u64, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut done = 0;
    for (d, meta) in dir_meta.iter().rev() {
        let path = dirs.path(*d);
        let r = dirs
            .get(*d)
            .and_then(|dir| set_file_metadata(&dir, &path, meta, owner, &mut problems));
        match r {
            Ok(()) => done += 1,
            Err(e) => problems.push(Problem::error(
                &path,
                format!("cannot set directory metadata: {e}"),
            )),
        }
    }
    (done, problems)
}

/// Makes everything written under `target` durable with one `syncfs(2)` of
/// its filesystem (through the target's handle). One call instead of an fsync per file and directory:
/// per-file fsyncs made restores of many small files several times slower,
/// and the restore is only reported done after this returns either way.
pub(super) fn sync_target(target: &File) -> io::Result<()> {
    nix::unistd::syncfs(target).map_err(io::Error::from)
}
