//! Preparing the target of a restore.
//!
//! Owns everything between the [`Selection`] and the first byte of file
//! data: looking at what is already in the target, refusing (before
//! anything is written) to replace existing files unless asked to, finding
//! files already identical for `delta`, creating directories, empty files,
//! symlinks and hard links, and planning every blob write of the files
//! that need data ([`Prepared`]). Files with data are created lazily by
//! the writers (`fetch`); this module only creates those that must exist
//! first (empty ones, and those other names link to). It does not read
//! pack data and does not set directory metadata (`metadata`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::fs::{self, File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use lifeboat_repo::{BlobType, Id, Index, MasterKey};

use super::fetch::{Write, remove_partial};
use super::metadata::{Meta, set_file_metadata, set_symlink_metadata};
use super::select::{Item, ItemKind, Selection, Span, fits};
use super::{Problem, RestoreOptions, RestoreStats};
use crate::{Error, Result};

/// What is already at an entry's place in the target.
#[derive(Clone, Copy)]
pub(super) struct Existing {
    pub(super) kind: FileType,
    pub(super) len: u64,
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl From<fs::Metadata> for Existing {
    fn from(m: fs::Metadata) -> Self {
        Existing {
            kind: m.file_type(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// Looks at each kept item's place in the target. Nothing is below a
/// directory that does not exist (or is not a directory), so a restore into
/// a new directory costs no lookups.
pub(super) fn scan_target(sel: &Selection) -> Result<Vec<Option<Existing>>> {
    let lookup = |path: &Path, follow: bool| {
        let m = if follow {
            fs::metadata(path)
        } else {
            fs::symlink_metadata(path)
        };
        match m {
            Ok(m) => Ok(Some(Existing::from(m))),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(Error::io(path, err)),
        }
    };
    // Directory number -> whether it is a directory in the target now.
    let mut present = vec![false; sel.dirs.len()];
    present[0] = lookup(&sel.dirs[0], true)?.is_some_and(|m| m.kind.is_dir());
    let mut out = Vec::with_capacity(sel.items.len());
    for item in &sel.items {
        if !item.keep || !present[item.parent as usize] {
            out.push(None);
            continue;
        }
        let old = lookup(&sel.path(item), false)?;
        if let (ItemKind::Dir(d), Some(m)) = (&item.kind, &old) {
            present[*d as usize] = m.kind.is_dir();
        }
        out.push(old);
    }
    Ok(out)
}

/// A file whose content is being written: what finishing it needs.
pub(super) struct FileState {
    pub(super) meta: Meta,
    /// Its name in [`Prepared::names`].
    pub(super) name: Span,
    /// Number of the directory it is in.
    pub(super) dir: u32,
    /// Blob writes still to do; whoever brings it to zero finishes the file
    /// (or removes it, if it failed).
    pub(super) remaining: AtomicU32,
    /// Set on the first problem; later writes to the file are skipped.
    pub(super) failed: AtomicBool,
    /// Its length, which a lazily created file is created at.
    pub(super) size: u64,
    /// Whether the file exists yet. A file is created by the first writer
    /// that needs it (see [`Exec::open`]), so creating hundreds of files
    /// (which a filesystem serializes per directory) overlaps with writing
    /// data instead of preceding it. A file with other names is created
    /// while planning, for the links to point at; so is an empty one. The
    /// error is boxed to keep the per-file plan small.
    pub(super) created: OnceLock<std::result::Result<(), Box<(io::ErrorKind, String)>>>,
}

#[derive(Default)]
pub(super) struct Prepared {
    pub(super) files: Vec<FileState>,
    pub(super) writes: Vec<Write>,
    pub(super) packs: Vec<Id>,
    /// File number -> the other names of a hard-linked file, removed with it
    /// if its data cannot be written.
    pub(super) links: HashMap<u32, Vec<PathBuf>>,
    /// Directory paths by number (0 is the target).
    pub(super) dir_paths: Arc<Vec<PathBuf>>,
    /// File names (see [`FileState::name`]).
    pub(super) names: Vec<u8>,
    /// Directories (number and metadata), parents first.
    pub(super) dirs: Vec<(u32, Meta)>,
    /// Bytes of the files in `files`.
    pub(super) planned_bytes: u64,
    pub(super) stats: RestoreStats,
    pub(super) problems: Vec<Problem>,
}

impl Prepared {
    pub(super) fn file_path(&self, st: &FileState) -> PathBuf {
        file_path(&self.dir_paths, &self.names, st)
    }
}

pub(super) fn file_path(dirs: &[PathBuf], names: &[u8], st: &FileState) -> PathBuf {
    dirs[st.dir as usize].join(OsStr::from_bytes(st.name.of(names)))
}

/// A hard-linked file's first name, as the other names find it.
pub(super) struct FirstName {
    pub(super) path: PathBuf,
    pub(super) ok: bool,
    /// Its number in the file list, while its data is being written.
    pub(super) file: Option<u32>,
}

/// Checks the target for conflicts, then creates everything but file
/// content, and plans the blob writes. Runs on a blocking thread.
pub(super) fn prepare(
    sel: Selection,
    options: &RestoreOptions,
    index: &Index,
    key: &MasterKey,
) -> Result<Prepared> {
    let existing = scan_target(&sel)?;
    if !(options.overwrite || options.delta) {
        let conflict = sel
            .items
            .iter()
            .zip(&existing)
            .find(|(item, old)| match old {
                None => false,
                Some(m) => !(matches!(item.kind, ItemKind::Dir(_)) && m.kind.is_dir()),
            });
        if let Some((item, _)) = conflict {
            return Err(Error::BadInput(format!(
                "{} already exists in the restore target; nothing was written. Use --overwrite to replace \
                 existing files, or --delta to keep identical files and replace the others",
                sel.path(item).display()
            )));
        }
    }
    let identical = if options.delta {
        find_identical(&sel, &existing, index, key)
    } else {
        Vec::new()
    };
    fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;

    // Sized up front: the plan's vectors are its largest part, and growing
    // them by doubling would hold up to twice that.
    let (mut files, mut blobs) = (0, 0);
    for item in &sel.items {
        if let ItemKind::File {
            content,
            link_to: None,
            ..
        } = item.kind
        {
            files += 1;
            blobs += content.len as usize;
        }
    }
    let mut p = Prepared {
        files: Vec::with_capacity(files),
        writes: Vec::with_capacity(blobs),
        ..Prepared::default()
    };
    let created = create_all(&mut p, &sel, existing, &identical, options, index);
    p.dir_paths = Arc::new(sel.dirs);
    p.names = sel.names;
    if let Err(err) = created {
        // Only a full target stops here: the files created for data are
        // all unfinished.
        let mut problems = Vec::new();
        for (f, st) in p.files.iter().enumerate() {
            let others = p.links.get(&(f as u32)).map_or(&[][..], Vec::as_slice);
            remove_partial(&p.file_path(st), others, &mut problems);
        }
        return Err(err);
    }
    Ok(p)
}

/// An I/O error that stops the whole restore (a full target) as an
/// [`Error`]; any other is given back, to be reported for its entry.
pub(super) fn storage_full(path: &Path, err: io::Error) -> Result<io::Error> {
    if err.kind() == io::ErrorKind::StorageFull {
        Err(Error::io(path, err))
    } else {
        Ok(err)
    }
}

/// Creates every kept item but file content, in order (parents first).
/// Item metadata moves into the plan (the items are left without it).
pub(super) fn create_all(
    p: &mut Prepared,
    sel: &Selection,
    existing: Vec<Option<Existing>>,
    identical: &[bool],
    options: &RestoreOptions,
    index: &Index,
) -> Result<()> {
    let mut packs: HashMap<Id, u32> = HashMap::new();
    let mut firsts: HashMap<u32, FirstName> = HashMap::new();
    for (i, (item, old)) in sel.items.iter().zip(existing).enumerate() {
        if !item.keep {
            continue;
        }
        let path = sel.path(item);
        let old = old.as_ref();
        match item.kind {
            ItemKind::Dir(d) => {
                let made = if old.is_some_and(|m| m.kind.is_dir()) {
                    Ok(())
                } else {
                    clear(&path, old).and_then(|_| fs::create_dir(&path))
                };
                match made {
                    Ok(()) => p.dirs.push((d, item.meta.clone())),
                    Err(err) => {
                        let err = storage_full(&path, err)?;
                        p.problems.push(Problem::error(
                            &path,
                            format!("cannot create directory: {err}"),
                        ));
                    }
                }
            }
            ItemKind::Symlink(target) => {
                let target = OsStr::from_bytes(target.of(&sel.names));
                let same = options.delta
                    && old.is_some_and(|m| m.kind.is_symlink())
                    && fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target);
                let made = if same {
                    Ok(())
                } else {
                    clear(&path, old).and_then(|_| std::os::unix::fs::symlink(target, &path))
                };
                let made = made.and_then(|_| {
                    set_symlink_metadata(&path, &item.meta, options.owner, &mut p.problems)
                });
                match made {
                    Ok(()) => p.stats.symlinks += 1,
                    Err(err) => {
                        let err = storage_full(&path, err)?;
                        p.problems.push(Problem::error(
                            &path,
                            format!("cannot restore symlink: {err}"),
                        ));
                    }
                }
            }
            ItemKind::File {
                link_to: Some(j), ..
            } => {
                let first = &firsts[&j];
                if !first.ok {
                    let first = first.path.display();
                    p.problems.push(Problem::error(
                        &path,
                        format!("not linked: its other name {first} could not be restored"),
                    ));
                    continue;
                }
                let same = options.delta
                    && old.is_some_and(|m| {
                        fs::symlink_metadata(&first.path)
                            .is_ok_and(|f| (f.dev(), f.ino()) == (m.dev, m.ino))
                    });
                let made = if same {
                    Ok(())
                } else {
                    clear(&path, old).and_then(|_| fs::hard_link(&first.path, &path))
                };
                match made {
                    Ok(()) => {
                        p.stats.hardlinks += 1;
                        if let Some(file) = first.file {
                            p.links.entry(file).or_default().push(path);
                        }
                    }
                    Err(err) => {
                        let err = storage_full(&path, err)?;
                        let first = first.path.display();
                        p.problems.push(Problem::error(
                            &path,
                            format!("cannot create hard link to {first}: {err}"),
                        ));
                    }
                }
            }
            ItemKind::File {
                size,
                content,
                link_to: None,
                linked,
            } => {
                let outcome = if identical.get(i).copied().unwrap_or(false) {
                    let done = File::open(&path).and_then(|file| {
                        set_file_metadata(&file, &path, &item.meta, options.owner, &mut p.problems)
                    });
                    match done {
                        Ok(()) => {
                            p.stats.files_skipped_identical += 1;
                            Ok(None)
                        }
                        Err(err) => Err(format!("cannot set metadata: {err}")),
                    }
                } else {
                    let new = NewFile {
                        path: &path,
                        item,
                        size,
                        content: content.of(&sel.content),
                        old,
                        linked,
                    };
                    plan_file(p, &mut packs, new, index, options.owner)?
                };
                let (ok, file) = match outcome {
                    Ok(file) => (true, file),
                    Err(msg) => {
                        p.problems.push(Problem::error(&path, msg));
                        (false, None)
                    }
                };
                if linked {
                    firsts.insert(i as u32, FirstName { path, ok, file });
                }
            }
        }
    }
    Ok(())
}

/// A file about to be created.
pub(super) struct NewFile<'a> {
    pub(super) path: &'a Path,
    pub(super) item: &'a Item,
    pub(super) size: u64,
    pub(super) content: &'a [Id],
    pub(super) old: Option<&'a Existing>,
    /// Other names will be hard links to it: it must exist before they do.
    pub(super) linked: bool,
}

/// Adds one file's blobs to the plan, after removing what is in its way.
/// The file is created (empty, at its final length, so runs of zeros can be
/// left as holes) here if it is empty (and then finished at once) or has
/// other names; otherwise by the first writer that needs it. Returns the
/// file's number in the plan (none if finished), or why it was not
/// created; a full target is an error.
pub(super) fn plan_file(
    p: &mut Prepared,
    packs: &mut HashMap<Id, u32>,
    new: NewFile<'_>,
    index: &Index,
    owner: bool,
) -> Result<std::result::Result<Option<u32>, String>> {
    // Check every blob is indexed first, so a file with a missing blob is
    // not created half-planned.
    if let Some(id) = new
        .content
        .iter()
        .find(|id| !index.contains(BlobType::Data, id))
    {
        return Ok(Err(format!(
            "blob {id} is not in the repository index (run `lifeboat check`); file not restored"
        )));
    }
    let now = new.content.is_empty() || new.linked;
    let created = clear(new.path, new.old).and_then(|_| {
        if now {
            create_sized(new.path, new.size).map(Some)
        } else {
            Ok(None)
        }
    });
    let file = match created {
        Ok(file) => file,
        Err(err) => {
            let err = storage_full(new.path, err)?;
            return Ok(Err(format!("cannot create file: {err}")));
        }
    };
    if let (Some(file), true) = (&file, new.content.is_empty()) {
        let done = set_file_metadata(file, new.path, &new.item.meta, owner, &mut p.problems);
        return Ok(match done {
            Ok(()) => {
                p.stats.files_restored += 1;
                Ok(None)
            }
            Err(err) => Err(format!("cannot set metadata: {err}")),
        });
    }
    let number = fits(p.files.len())?;
    let mut at = 0u64;
    for id in new.content {
        let loc = index.get(BlobType::Data, id).expect("checked above");
        let pack = match packs.entry(loc.pack) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                p.packs.push(loc.pack);
                *e.insert(fits(p.packs.len() - 1)?)
            }
        };
        p.writes.push(Write {
            entry: loc.entry,
            pack,
            file: number,
            at,
        });
        at += loc.entry.raw_length as u64;
    }
    p.planned_bytes += new.size;
    p.files.push(FileState {
        meta: new.item.meta.clone(),
        name: new.item.name,
        dir: new.item.parent,
        remaining: AtomicU32::new(fits(new.content.len())?),
        failed: AtomicBool::new(false),
        size: new.size,
        created: match file {
            Some(_) => OnceLock::from(Ok(())),
            None => OnceLock::new(),
        },
    });
    Ok(Ok(Some(number)))
}

/// Creates a file at its final length. Always a fresh file (never one
/// opened through an existing name) so a symlink or another hard link put
/// in the target is never written through.
pub(super) fn create_sized(path: &Path, size: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(size)?;
    Ok(file)
}

/// Removes a non-directory in the way of a new entry. A directory in the
/// way is an error: replacing it would delete a whole tree the user did
/// not ask about.
pub(super) fn clear(path: &Path, old: Option<&Existing>) -> io::Result<()> {
    match old {
        None => Ok(()),
        Some(m) if m.kind.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way (remove it to restore this entry)",
        )),
        Some(_) => match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
    }
}

/// For `delta`: which items are regular files already in the target with
/// the snapshot's content, checked in parallel (hashing is CPU-bound).
pub(super) fn find_identical(
    sel: &Selection,
    existing: &[Option<Existing>],
    index: &Index,
    key: &MasterKey,
) -> Vec<bool> {
    let candidates: Vec<(usize, Span)> = sel
        .items
        .iter()
        .zip(existing)
        .enumerate()
        .filter_map(|(i, (item, old))| match (&item.kind, old) {
            (
                ItemKind::File {
                    size,
                    content,
                    link_to: None,
                    ..
                },
                Some(m),
            ) if item.keep && m.kind.is_file() && m.len == *size => Some((i, *content)),
            _ => None,
        })
        .collect();
    let mut out = vec![false; sel.items.len()];
    let results: Vec<AtomicBool> = candidates.iter().map(|_| AtomicBool::new(false)).collect();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(candidates.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, content)) = candidates.get(k) else {
                        break;
                    };
                    let path = sel.path(&sel.items[i]);
                    let same =
                        same_content(&path, content.of(&sel.content), index, key).unwrap_or(false);
                    results[k].store(same, Ordering::Relaxed);
                }
            });
        }
    });
    for (k, &(i, _)) in candidates.iter().enumerate() {
        out[i] = results[k].load(Ordering::Relaxed);
    }
    out
}

/// Cuts the existing file at the snapshot's blob boundaries and compares
/// each piece's keyed id with the snapshot's blob id.
pub(super) fn same_content(
    path: &Path,
    content: &[Id],
    index: &Index,
    key: &MasterKey,
) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buf = Vec::new();
    for id in content {
        let Some(loc) = index.get(BlobType::Data, id) else {
            return Ok(false);
        };
        buf.resize(loc.entry.raw_length as usize, 0);
        match file.read_exact(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            r => r?,
        }
        if key.blob_id(&buf) != *id {
            return Ok(false);
        }
    }
    Ok(file.read(&mut [0u8; 1])? == 0)
}
