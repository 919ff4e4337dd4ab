//! Directory-tree fixtures shared by the test suites: writing files,
//! reading a tree back as a map, comparing two trees, and where a restore
//! puts a backed-up path.
//!
//! Owns only plain filesystem work; it knows nothing of repositories or
//! snapshots (restoring is the caller's job, so this module adds no
//! dependency on the crates under test).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes a file, creating its parent directories.
pub fn write(path: impl AsRef<Path>, data: impl AsRef<[u8]>) {
    let path = path.as_ref();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// XORs the byte at `offset` of a file with 0xff (making the file writable
/// first: some backends store objects read-only).
pub fn flip_byte(path: &Path, offset: usize) {
    let mut b = fs::read(path).unwrap();
    assert!(
        offset < b.len(),
        "{} has only {} bytes",
        path.display(),
        b.len()
    );
    b[offset] ^= 0xff;
    let mut perm = fs::metadata(path).unwrap().permissions();
    perm.set_mode(perm.mode() | 0o200);
    fs::set_permissions(path, perm).unwrap();
    fs::write(path, b).unwrap();
}

/// Where `source` (an absolute path that was backed up) ends up when a
/// snapshot is restored into `target`: snapshots mirror absolute paths.
pub fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").expect("absolute source path"))
}

/// Every regular file in `dir` (recursively, sorted); empty if `dir` does
/// not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        let ft = fs::symlink_metadata(&p).unwrap().file_type();
        if ft.is_dir() {
            out.extend(files_under(&p));
        } else if ft.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies a directory tree (files, directories, symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = fs::symlink_metadata(&src).unwrap().file_type();
        if ft.is_dir() {
            copy_tree(&src, &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// What a tree holds at one relative path: file contents, a symlink's
/// target, or a directory. Metadata is compared separately where a test
/// cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
}

/// Everything under `root` by relative path (symlinks are not followed).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_symlink() {
                out.insert(rel, Entry::Symlink(fs::read_link(&p).unwrap()));
            } else if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &p, out);
            } else {
                out.insert(rel, Entry::File(fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Panics unless the two trees hold the same paths with the same file
/// contents, symlink targets and directories. The message names the first
/// differing path rather than dumping file contents.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (e, a) = (tree(expected), tree(actual));
    let names = |t: &BTreeMap<PathBuf, Entry>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&e),
        names(&a),
        "paths differ between {} and {}",
        expected.display(),
        actual.display()
    );
    for (path, entry) in &e {
        assert!(
            a[path] == *entry,
            "{} differs from {}",
            actual.join(path).display(),
            expected.join(path).display()
        );
    }
}
