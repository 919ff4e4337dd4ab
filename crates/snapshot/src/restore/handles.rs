//! Open directory handles of a restore target, and every file-system call
//! a restore makes below its target.
//!
//! A restore run as root may write into directories other users own (a
//! restore over an existing tree). Such a user can swap a directory for a
//! symlink while the restore runs; a restore that named entries by full
//! path would then write, chmod or chown whatever the symlink points to.
//! So nothing below the target is ever named by path: every directory is
//! opened relative to its parent's handle with `O_NOFOLLOW | O_DIRECTORY`
//! (a symlink in its place is an error, never followed), and every create,
//! write, link, unlink and metadata change is made through a handle
//! (`openat`, `mkdirat`, `symlinkat`, `linkat`, `unlinkat`, `fchmod`,
//! `fchown`, `futimens`, `fsetxattr`) or relative to the parent's handle
//! with `AT_SYMLINK_NOFOLLOW`. A directory's handle is verified on every
//! open: its device and inode must be those the restore created or found
//! when it looked at the target, so a directory moved away and replaced
//! by another is an error too. The same idea as `openat2`'s
//! `RESOLVE_NO_SYMLINKS` and `cap-std`'s sandboxed directories, done with
//! the plain `*at` calls of `nix`.
//!
//! Handles are kept in a small cache (a restore may create millions of
//! directories, more than a process may have open); a directory evicted
//! from it is opened again from its nearest cached ancestor, component by
//! component, with the same checks. The target itself is opened once, by
//! the path the user gave, and stays open.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Handles open at once, at most (besides the target's).
const CACHE: usize = 256;

/// Device and inode: what a handle must point at.
pub(super) type Ident = (u64, u64);

pub(super) fn ident(st: &FileStat) -> Ident {
    (st.st_dev, st.st_ino)
}

/// Directory handles by directory number (0 is the target). Directories
/// are added part by part as the restore selects them ([`Dirs::add`]),
/// while the writers of earlier parts go on using the handles.
pub(super) struct Dirs {
    table: RwLock<Table>,
    target: Arc<File>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Table {
    /// Target path of every directory (for messages and names).
    paths: Vec<PathBuf>,
    /// Parent directory number of each directory (the target's is 0).
    parent: Vec<u32>,
    /// What each directory must be when opened; unset until the restore
    /// has created it or looked at it. Set once (a later open is checked
    /// against it), so the handles can be shared with the writers while
    /// the next batch of entries is created.
    idents: Vec<OnceLock<Ident>>,
    /// Whether it was a directory in the target before the restore (so
    /// something may be in the way of its entries).
    found: Vec<bool>,
}

#[derive(Default)]
struct Cache {
    open: HashMap<u32, (Arc<File>, u64)>,
    tick: u64,
}

impl Cache {
    fn get(&mut self, d: u32) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(&d).map(|(f, t)| {
            *t = tick;
            f.clone()
        })
    }

    fn put(&mut self, d: u32, f: Arc<File>) {
        if self.open.len() >= CACHE {
            // Drop the older half; a writer still using one keeps it open.
            let mut ticks: Vec<u64> = self.open.values().map(|(_, t)| *t).collect();
            let mid = ticks.len() / 2;
            let cut = *ticks.select_nth_unstable(mid).1;
            self.open.retain(|_, (_, t)| *t > cut);
        }
        self.tick += 1;
        self.open.insert(d, (f, self.tick));
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Entry names come from decoded trees, which refuse `/`, `.` and `..`;
/// checked again here because a name is all that keeps a call below its
/// directory.
pub(super) fn check_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid entry name in the snapshot",
        ));
    }
    Ok(name)
}

impl Dirs {
    /// Creates the target if missing (following the path the user gave)
    /// and opens it.
    pub(super) fn open(target: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(target)?;
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            target,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let file = File::from(fd);
        let me = OnceLock::new();
        let _ = me.set(ident(&fstat(&file).map_err(errno)?));
        Ok(Dirs {
            table: RwLock::new(Table {
                paths: vec![target.to_path_buf()],
                parent: vec![0],
                idents: vec![me],
                found: vec![true],
            }),
            target: Arc::new(file),
            cache: Mutex::default(),
        })
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds directories `first`, `first + 1`, ...: each one's target path
    /// and its parent's number (an earlier directory).
    pub(super) fn add(&self, first: u32, new: &[(PathBuf, u32)]) {
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(t.paths.len(), first as usize, "directories added in order");
        for (path, parent) in new {
            assert!((*parent as usize) < t.paths.len(), "a parent comes first");
            t.paths.push(path.clone());
            t.parent.push(*parent);
            t.idents.push(OnceLock::new());
            t.found.push(false);
        }
    }

    pub(super) fn path(&self, d: u32) -> PathBuf {
        self.table().paths[d as usize].clone()
    }

    /// The target path of `name` in directory `d` (for messages).
    pub(super) fn join(&self, d: u32, name: &OsStr) -> PathBuf {
        self.table().paths[d as usize].join(name)
    }

    /// A directory's own name (none for the target).
    fn name(&self, d: u32) -> io::Result<std::ffi::OsString> {
        let t = self.table();
        check_name(t.paths[d as usize].file_name().unwrap_or_default()).map(OsStr::to_os_string)
    }

    /// Whether directory `d` was a directory in the target before the
    /// restore (see [`Dirs::set_found`]).
    pub(super) fn found(&self, d: u32) -> bool {
        self.table().found[d as usize]
    }

    /// Records that directory `d` is a directory in the target already,
    /// and what it is.
    pub(super) fn set_found(&self, d: u32, id: Ident) {
        self.set_ident(d, id);
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        t.found[d as usize] = true;
    }

    /// Records what directory `d` is (after creating or looking at it).
    /// A directory already recorded keeps what it was: every open checks
    /// against that, so a different one is refused there.
    pub(super) fn set_ident(&self, d: u32, id: Ident) {
        let _ = self.table().idents[d as usize].set(id);
    }

    /// The handle of directory `d`, opened (without following symlinks,
    /// from its nearest open ancestor) if it is not open.
    pub(super) fn get(&self, d: u32) -> io::Result<Arc<File>> {
        if d == 0 {
            return Ok(self.target.clone());
        }
        let mut chain = Vec::new();
        let mut base = {
            let mut cache = self.cache.lock().expect("dir cache");
            let mut cur = d;
            loop {
                if cur == 0 {
                    break self.target.clone();
                }
                if let Some(f) = cache.get(cur) {
                    break f;
                }
                chain.push(cur);
                cur = self.table().parent[cur as usize];
            }
        };
        for &c in chain.iter().rev() {
            let f = Arc::new(self.open_child(&base, c)?);
            self.cache.lock().expect("dir cache").put(c, f.clone());
            base = f;
        }
        Ok(base)
    }

    /// Opens directory `d` in `parent`, refusing a symlink (or anything but
    /// a directory) and a directory other than the one the restore knows.
    fn open_child(&self, parent: &File, d: u32) -> io::Result<File> {
        let fd = openat(
            parent,
            self.name(d)?.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => io::Error::new(
                io::ErrorKind::NotADirectory,
                "no longer a directory (replaced during the restore?); nothing written through it",
            ),
            e => errno(e),
        })?;
        let file = File::from(fd);
        let id = ident(&fstat(&file).map_err(errno)?);
        if let Some(&want) = self.table().idents[d as usize].get()
            && want != id
        {
            return Err(replaced());
        }
        Ok(file)
    }

    /// Creates directory `d` (mode 0700 until its metadata is set at the
    /// end, so no one else can put anything in it meanwhile), or opens it
    /// if `exists`, and records what it is.
    pub(super) fn make(&self, d: u32, exists: bool) -> io::Result<()> {
        // (The table's guard is let go before `get` takes it again: a
        // read lock taken twice can wait forever behind a waiting writer.)
        let up = self.table().parent[d as usize];
        let parent = self.get(up)?;
        if !exists {
            mkdirat(
                &*parent,
                self.name(d)?.as_os_str(),
                Mode::from_bits_truncate(0o700),
            )
            .map_err(errno)?;
        }
        let file = self.open_child(&parent, d)?;
        self.set_ident(d, ident(&fstat(&file).map_err(errno)?));
        self.cache.lock().expect("dir cache").put(d, Arc::new(file));
        Ok(())
    }
}

pub(super) fn replaced() -> io::Error {
    io::Error::other("replaced by something else during the restore; not touched")
}

/// What is at `name` in `dir`, not following a symlink; `None` if nothing.
pub(super) fn lookup(dir: &File, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, check_name(name)?, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Creates a new file (never opening an existing name, so a symlink or
/// another hard link put in its place is never written through).
pub(super) fn create_file(dir: &File, name: &OsStr) -> io::Result<File> {
    let fd = openat(
        dir,
        check_name(name)?,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(errno)?;
    Ok(File::from(fd))
}

/// Opens an existing regular file without following a symlink, and checks
/// it is the inode `want` (when given).
pub(super) fn open_file(
    dir: &File,
    name: &OsStr,
    write: bool,
    want: Option<Ident>,
) -> io::Result<(File, FileStat)> {
    let access = if write {
        OFlag::O_WRONLY
    } else {
        OFlag::O_RDONLY
    };
    let fd = openat(
        dir,
        check_name(name)?,
        access | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => replaced(),
        e => errno(e),
    })?;
    let file = File::from(fd);
    let st = fstat(&file).map_err(errno)?;
    if (st.st_mode & nix::libc::S_IFMT) != nix::libc::S_IFREG
        || want.is_some_and(|w| w != ident(&st))
    {
        return Err(replaced());
    }
    Ok((file, st))
}

/// Removes a non-directory name in `dir`; a missing one is fine.
pub(super) fn remove(dir: &File, name: &OsStr) -> io::Result<()> {
    match unlinkat(dir, check_name(name)?, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Makes `name` in `dir` a symlink to `target`.
pub(super) fn symlink(target: &OsStr, dir: &File, name: &OsStr) -> io::Result<()> {
    nix::unistd::symlinkat(target, dir, check_name(name)?).map_err(errno)
}

/// Reads the symlink `name` in `dir`.
pub(super) fn read_link(dir: &File, name: &OsStr) -> io::Result<std::ffi::OsString> {
    nix::fcntl::readlinkat(dir, check_name(name)?).map_err(errno)
}

/// Links `name` in `dir` to `from` in `from_dir` (never following a
/// symlink), and checks the new name is the inode `want`.
pub(super) fn hard_link(
    from_dir: &File,
    from: &OsStr,
    dir: &File,
    name: &OsStr,
    want: Ident,
) -> io::Result<()> {
    nix::unistd::linkat(
        from_dir,
        check_name(from)?,
        dir,
        check_name(name)?,
        AtFlags::empty(),
    )
    .map_err(errno)?;
    match lookup(dir, name)? {
        Some(st) if ident(&st) == want => Ok(()),
        _ => {
            let _ = remove(dir, name);
            Err(replaced())
        }
    }
}

/// A handle on the symlink `name` in `dir` itself (`O_PATH`), checked to
/// be a symlink: what a symlink's owner is set through.
pub(super) fn open_symlink(dir: &File, name: &OsStr) -> io::Result<OwnedFd> {
    let fd = openat(
        dir,
        check_name(name)?,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let st = fstat(&fd).map_err(errno)?;
    if (st.st_mode & nix::libc::S_IFMT) != nix::libc::S_IFLNK {
        return Err(replaced());
    }
    Ok(fd)
}

/// Sets a symlink's owner through its `O_PATH` handle.
pub(super) fn chown_symlink(link: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchownat(
        link,
        "",
        Some(uid.into()),
        Some(gid.into()),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno)
}

/// Sets a symlink's times, relative to its directory without following it.
pub(super) fn symlink_times(dir: &File, name: &OsStr, secs: i64, nanos: u32) -> io::Result<()> {
    let t = nix::sys::time::TimeSpec::new(secs, nanos.into());
    nix::sys::stat::utimensat(
        dir,
        check_name(name)?,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno)
}

/// Sets an extended attribute of the symlink `name` in `dir`. Linux has no
/// `*at` call for xattrs before 6.13 and `fsetxattr` refuses `O_PATH`
/// handles, so the directory is named through its handle
/// (`/proc/self/fd/N/name`) and the symlink itself with `lsetxattr`: no
/// path component outside the directory's handle is resolved.
pub(super) fn symlink_xattr(
    dir: &File,
    name: &OsStr,
    attr: &OsStr,
    value: &[u8],
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut path = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    path.extend_from_slice(check_name(name)?.as_bytes());
    let path = CString::new(path).map_err(io::Error::other)?;
    xattr::set(OsStr::from_bytes(path.as_bytes()), attr, value)
}
