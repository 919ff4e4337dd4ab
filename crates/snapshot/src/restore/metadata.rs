//! Metadata of restored entries, and making the restore durable.
//!
//! Owns what setting an entry's metadata needs ([`Meta`]) and the order it
//! is set in (owner, xattrs, mode, times), for files (through their open
//! handle, when their last blob is written), symlinks (while preparing)
//! and directories (last, deepest first, so creating entries does not
//! disturb a directory's mtime and a read-only directory can still be
//! filled); and the one `syncfs` of the target that makes a restore
//! durable. Extended attributes are best effort: a failure is a warning.
//! It does not decide which entries are restored nor write file content.

use std::ffi::OsStr;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Problem;

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

/// Sets a file's metadata through its handle. Order
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

pub(super) fn set_symlink_metadata(
    path: &Path,
    meta: &Meta,
    owner: bool,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    if owner {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    }
    for (name, value) in meta.xattrs() {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
            problems.push(xattr_warning(path, name, e));
        }
    }
    let t = meta.mtime();
    filetime::set_symlink_file_times(path, t, t)
}

/// Xattrs are best effort (the target filesystem may not support them, or
/// forbid a namespace), so a failure is reported but does not fail the entry.
pub(super) fn xattr_warning(path: &Path, name: &[u8], e: io::Error) -> Problem {
    Problem {
        path: path.to_path_buf(),
        message: format!(
            "extended attribute {} not restored: {e}",
            String::from_utf8_lossy(name)
        ),
        error: false,
    }
}

/// Sets directories' metadata, deepest first (`dirs` lists parents before
/// their contents). Returns how many were done. Durability comes from one
/// `syncfs` of the target at the end of the restore (see [`sync_target`]).
pub(super) fn finish_dirs(
    paths: &[PathBuf],
    dirs: &[(u32, Meta)],
    owner: bool,
) -> (u64, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut done = 0;
    for (d, meta) in dirs.iter().rev() {
        let path = &paths[*d as usize];
        let r = (|| {
            if owner {
                std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
            }
            for (name, value) in meta.xattrs() {
                if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                    problems.push(xattr_warning(path, name, e));
                }
            }
            fs::set_permissions(path, Permissions::from_mode(meta.mode & 0o7777))?;
            let t = meta.mtime();
            // By path, without opening: filetime's set_file_times opens
            // the directory first, which a mode just set to 000 forbids to
            // a non-root user (its write-only fallback then fails with
            // "Is a directory"). utimensat on the path needs only ownership.
            filetime::set_symlink_file_times(path, t, t)
        })();
        match r {
            Ok(()) => done += 1,
            Err(e) => problems.push(Problem::error(
                path,
                format!("cannot set directory metadata: {e}"),
            )),
        }
    }
    (done, problems)
}

/// Makes everything written under `target` durable with one `syncfs(2)` of
/// its filesystem. One call instead of an fsync per file and directory:
/// per-file fsyncs made restores of many small files several times slower,
/// and the restore is only reported done after this returns either way.
pub(super) fn sync_target(target: &Path) -> io::Result<()> {
    let dir = File::open(target)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}
