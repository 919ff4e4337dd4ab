//! Preparing the target of a restore.
//!
//! Owns everything between a part of the [`Selection`] and each batch's
//! first byte of file data: looking at what is already in the target,
//! refusing to replace existing files unless asked to, finding files
//! already identical for `delta` (all in [`start`], over the part), then,
//! batch by batch ([`Preparer::batch`]),
//! creating directories, empty files, symlinks and hard links, and
//! planning every blob write of the batch's files that need data
//! ([`Prepared`]). Files with data are created lazily by the writers
//! (`fetch`); this module only creates those that must exist first (empty
//! ones, and those other names link to). It does not read pack data and
//! does not set directory metadata (`metadata`). Every call below the
//! target goes through the directory handles of `handles`, never a path.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use lifeboat_repo::{BlobLocation, Id, Index, MasterKey};
use nix::libc;

use super::fetch::{Write, remove_partial};
use super::handles::{self, Dirs, Ident, ident};
use super::metadata::{Meta, set_file_metadata, set_symlink_metadata};
use super::select::{Blobs, Item, ItemKind, Selection, Span, fits};
use super::{Problem, RestoreOptions, RestoreStats};
use crate::{Error, Result};

/// What is already at an entry's place in the target.
#[derive(Clone, Copy)]
pub(super) struct Existing {
    pub(super) mode: u32,
    pub(super) len: u64,
    pub(super) ident: Ident,
    pub(super) nlink: u64,
}

impl Existing {
    fn of(st: &nix::sys::stat::FileStat) -> Self {
        Existing {
            mode: st.st_mode,
            len: st.st_size as u64,
            ident: ident(st),
            nlink: st.st_nlink,
        }
    }

    pub(super) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub(super) fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub(super) fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// What is in the target at the places of kept items, by item number:
/// only the places where something is (a restore into a new directory
/// holds nothing here).
pub(super) type Found = HashMap<u32, Existing>;

/// Looks at each item's place in the target, through the handles of the
/// directories above it (recording what each existing directory is).
/// Nothing is below a directory that was not in the target before (or is
/// not a directory), so a restore into a new directory costs no lookups.
pub(super) fn scan_target(sel: &Selection, dirs: &Dirs) -> Result<Found> {
    let mut out = Found::new();
    for (i, item) in sel.items.iter().enumerate() {
        if !dirs.found(item.parent) {
            continue;
        }
        let name = OsStr::from_bytes(item.name.of(&sel.names));
        let old = dirs
            .get(item.parent)
            .and_then(|dir| handles::lookup(&dir, name))
            .map_err(|e| Error::io(item_path(dirs, sel, item), e))?
            .map(|st| Existing::of(&st));
        if let (ItemKind::Dir(d), Some(m)) = (&item.kind, &old)
            && m.is_dir()
        {
            dirs.set_found(*d, m.ident);
        }
        if let Some(m) = old {
            out.insert(i as u32, m);
        }
    }
    Ok(out)
}

/// An item's path in the target.
pub(super) fn item_path(dirs: &Dirs, sel: &Selection, item: &Item) -> PathBuf {
    dirs.join(item.parent, OsStr::from_bytes(item.name.of(&sel.names)))
}

/// How a file's data goes in: not created yet, created (the inode every
/// later open must find at its name), or failed to be created.
pub(super) type Created = OnceLock<std::result::Result<Ident, Box<(io::ErrorKind, String)>>>;

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
    pub(super) created: Created,
}

/// One batch of a restore: the files whose data is fetched together, and
/// what creating the batch's entries gave.
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) files: Vec<FileState>,
    pub(super) writes: Vec<Write>,
    pub(super) packs: Vec<Id>,
    /// Items whose first name (see [`FirstName`]) is a file of this batch
    /// being written, for [`Preparer::fetched`].
    pub(super) firsts: Vec<u32>,
    /// Counts of what was finished while creating (empty files, identical
    /// files, symlinks, hard links).
    pub(super) stats: RestoreStats,
    pub(super) problems: Vec<Problem>,
}

pub(super) fn file_path(dirs: &Dirs, names: &[u8], st: &FileState) -> PathBuf {
    dirs.join(st.dir, OsStr::from_bytes(st.name.of(names)))
}

/// A hard-linked file's first name, as the other names find it.
pub(super) struct FirstName {
    pub(super) dir: u32,
    pub(super) name: Span,
    /// What it is, once restored (none if it could not be).
    pub(super) ident: Option<Ident>,
    /// Its number in the batch's file list, while its data is being
    /// written (none once its batch is done).
    pub(super) file: Option<u32>,
}

/// Another name of a hard-linked file, linked to its first name once
/// every batch's data is written ([`Preparer::link_names`]).
struct LinkName {
    item: u32,
    /// Its directory and name.
    dir: u32,
    name: Span,
    /// The item of the first name.
    first: u32,
}

/// How many files (and blob writes) one batch plans and fetches at once,
/// when [`RestoreOptions::batch_files`] is 0. What a batch holds is about
/// 100 bytes per file and 64 per blob write: about 5 MiB for files of one
/// blob, 11 MiB at the most (four writes a file). Batches are cut in the
/// order of each file's first blob in the packs, so a pack is read by
/// more than one batch only where a batch ends inside it (or for a blob
/// files of two batches share): a restore of linux-source (78,579 files)
/// from S3 made 104 requests in batches of 16,384 and 103 in one batch,
/// where batches of 16,384 cut in the selection's order had made 435.
/// Larger batches hold more: 500,000 tiny files peaked at 146 MiB at this
/// size, 186 MiB at 131,072 (docs/performance.md, "Restore in batches").
pub(super) const BATCH_FILES: usize = 32_768;

/// A batch is also closed at this many blob writes per file of
/// [`RestoreOptions::batch_files`] (a file with more blobs than that is a
/// batch by itself).
const WRITES_PER_FILE: usize = 4;

/// Works through one part of the selection batch by batch: [`start`]
/// looks at the part's places in the target (the conflict refusal and
/// `delta`'s comparisons, before any of the part is written); the first
/// [`Preparer::batch`] creates every entry
/// that needs no data (directories, symlinks, empty and identical files)
/// and puts the files with data in the order of their data in the packs;
/// each later batch creates the next stretch of those files and plans
/// their data; once all data is written, [`Preparer::link_names`] makes
/// the other names of hard-linked files (all in the last part).
pub(super) struct Preparer {
    pub(super) sel: Selection,
    pub(super) dirs: Arc<Dirs>,
    /// What was found in the target, by item; taken as each item is made.
    existing: Found,
    /// Items `delta` found identical in the target.
    identical: HashSet<u32>,
    options: RestoreOptions,
    /// First names of hard-linked files, by item, for their other names.
    firsts: HashMap<u32, FirstName>,
    /// Whether the first batch (the entries without data) is made.
    entries_made: bool,
    /// Items of the files with data to fetch, in the order of their first
    /// blob's pack and offset (made with the first batch): 4 bytes a file.
    order: Vec<u32>,
    /// The next file of `order` to make.
    next: usize,
    /// Other names of hard-linked files, made last.
    links: Vec<LinkName>,
    /// Files (and blob writes) per batch.
    batch_files: usize,
    /// Directories made (number and metadata), parents first: their
    /// metadata is set after everything else.
    pub(super) dir_meta: Vec<(u32, Meta)>,
    /// Files that will be written (not identical, each hard-linked file
    /// once) and their bytes, for the progress display.
    pub(super) planned_files: u64,
    pub(super) planned_bytes: u64,
    /// What the start found to say (stripped set-id bits and attributes).
    pub(super) stats: RestoreStats,
    pub(super) problems: Vec<Problem>,
}

/// Starts a part of the selection: adds its directories to `dirs`, checks
/// the target for conflicts and (for `delta`) finds the identical files:
/// everything a restore decides from a part before it writes any of it.
/// `first` says whether it is the first part (before which nothing was
/// written). Runs on a blocking thread.
pub(super) fn start(
    mut sel: Selection,
    dirs: &Arc<Dirs>,
    options: &RestoreOptions,
    index: &Index,
    key: &MasterKey,
    untrusted: bool,
    first: bool,
) -> Result<Preparer> {
    dirs.add(sel.first_dir, &sel.new_dirs);
    sel.new_dirs = Vec::new();
    let mut stripped = Vec::new();
    let mut options = options.clone();
    if untrusted {
        options.owner = false;
        for i in 0..sel.items.len() {
            if strip(&mut sel.items[i].meta) {
                stripped.push(item_path(dirs, &sel, &sel.items[i]));
            }
        }
    }
    let existing = scan_target(&sel, dirs)?;
    if !(options.overwrite || options.delta) {
        refuse_conflicts(&sel, dirs, &existing, first)?;
    }
    let identical = if options.delta {
        find_identical(&sel, dirs, &existing, index, key)
    } else {
        HashSet::new()
    };
    let (mut planned_files, mut planned_bytes) = (0, 0);
    for (i, item) in sel.items.iter().enumerate() {
        if let ItemKind::File {
            size,
            link_to: None,
            ..
        } = item.kind
            && !identical.contains(&(i as u32))
        {
            planned_files += 1;
            planned_bytes += size;
        }
    }
    let mut stats = RestoreStats {
        untrusted_snapshot: untrusted,
        ..RestoreStats::default()
    };
    let mut problems = Vec::new();
    for path in stripped {
        problems.push(Problem {
            message: "set-id bits and security.* attributes not restored (the snapshot was not made by root of a host)".into(),
            error: false,
            path: path.clone(),
        });
        stats.stripped.push(path.display().to_string());
    }
    problems.append(&mut sel.problems);
    let batch_files = match options.batch_files {
        0 => BATCH_FILES,
        n => n,
    };
    Ok(Preparer {
        sel,
        dirs: dirs.clone(),
        existing,
        identical,
        options,
        firsts: HashMap::new(),
        entries_made: false,
        order: Vec::new(),
        next: 0,
        links: Vec::new(),
        batch_files,
        dir_meta: Vec::new(),
        planned_files,
        planned_bytes,
        stats,
        problems,
    })
}

/// Refuses the restore if something other than a directory is at a place
/// `existing` found for an item of `sel` (a directory at a directory's
/// place is fine). `first`: whether nothing was written yet.
pub(super) fn refuse_conflicts(
    sel: &Selection,
    dirs: &Dirs,
    existing: &Found,
    first: bool,
) -> Result<()> {
    let conflict = existing
        .iter()
        .map(|(&i, m)| (&sel.items[i as usize], m))
        .find(|(item, m)| !(matches!(item.kind, ItemKind::Dir(_)) && m.is_dir()));
    let Some((item, _)) = conflict else {
        return Ok(());
    };
    // (Later parts meet only what appeared during the restore: a target
    // with something in it was checked whole before the first part, see
    // `super::check_target`.)
    let written = if first {
        "nothing was written"
    } else {
        "the restore stopped there"
    };
    Err(Error::BadInput(format!(
        "{} already exists in the restore target; {written}. Use --overwrite to replace \
         existing files, or --delta to keep identical files and replace the others",
        item_path(dirs, sel, item).display()
    )))
}

impl Preparer {
    /// Makes the next batch; `None` when every file has been made (the
    /// other names of hard-linked files are then still to be made, by
    /// [`Preparer::link_names`] once every batch's data is written). The
    /// first batch creates the entries that need no data (see
    /// [`Preparer::make_entries`]); each later one creates the next
    /// stretch of files with data, in pack order, and plans their blob
    /// writes. A full target is an error, after the batch's unfinished
    /// files are removed.
    pub(super) fn batch(&mut self, index: &Index) -> Result<Option<Prepared>> {
        if !self.entries_made {
            self.entries_made = true;
            let mut p = Prepared::default();
            self.make_entries(&mut p, index)?;
            return Ok(Some(p));
        }
        if self.next >= self.order.len() {
            return Ok(None);
        }
        // Sized up front: the files and writes are most of a batch, and
        // growing them by doubling would leave up to as much again freed
        // behind (the allocator keeps it resident for a while).
        let (files, writes) = self.extent();
        let mut p = Prepared {
            files: Vec::with_capacity(files),
            writes: Vec::with_capacity(writes),
            ..Prepared::default()
        };
        let made = self.make_files(&mut p, index);
        if self.next >= self.order.len() {
            // Every file is made: what only making them needed goes now,
            // not after the last batches' data is fetched.
            self.sel.items = Vec::new();
            self.sel.content = Vec::new();
            self.order = Vec::new();
            self.identical = HashSet::new();
        }
        if let Err(err) = made {
            // Only a full target stops here: the files created for data
            // are all unfinished (no other name of them is made yet).
            let mut problems = Vec::new();
            for st in &p.files {
                remove_partial(&self.dirs, &self.sel.names, st.dir, st.name, &mut problems);
            }
            return Err(err);
        }
        Ok(Some(p))
    }

    /// How many files and blob writes the next batch plans at most (fewer
    /// if a file cannot be planned).
    fn extent(&self) -> (usize, usize) {
        let (mut files, mut writes) = (0, 0);
        for &i in &self.order[self.next..] {
            if files >= self.batch_files || writes >= self.batch_files * WRITES_PER_FILE {
                break;
            }
            if let ItemKind::File { content, .. } = self.sel.items[i as usize].kind {
                files += 1;
                writes += content.len as usize;
            }
        }
        (files, writes)
    }

    /// Whether this part has no other names of hard-linked files to link
    /// (every part but the last, the hard-linked files').
    pub(super) fn has_no_links(&self) -> bool {
        self.links.is_empty() && self.firsts.is_empty()
    }

    /// After a batch's data has been written (`firsts` and `files` are its
    /// [`Prepared::firsts`] and files): a hard-linked file whose data
    /// failed was removed, so its other names are not linked.
    pub(super) fn fetched(&mut self, firsts: &[u32], files: &[FileState]) {
        for &i in firsts {
            if let Some(first) = self.firsts.get_mut(&i)
                && let Some(f) = first.file.take()
                && files[f as usize].failed.load(Ordering::Acquire)
            {
                first.ident = None;
            }
        }
    }
}

/// Takes set-id bits and `security.*` attributes off an entry of an
/// untrusted snapshot; says whether it had any.
pub(super) fn strip(meta: &mut Meta) -> bool {
    let mut had = meta.mode & 0o6000 != 0;
    meta.mode &= !0o6000;
    if let Some(xattrs) = &mut meta.xattrs {
        let before = xattrs.len();
        xattrs.retain(|(name, _)| !name.starts_with(b"security."));
        had |= xattrs.len() != before;
    }
    had
}

/// The handle of directory `d`, to make the entry at `path` in it; `None`
/// (the entry is not restored, and `problems` says why) when the directory
/// could not be created or opened. A full target is an error.
fn entry_dir(
    dirs: &Dirs,
    d: u32,
    path: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> Result<Option<Arc<File>>> {
    match dirs.get(d) {
        Ok(dir) => Ok(Some(dir)),
        Err(err) => {
            let err = storage_full(path, err)?;
            problems.push(Problem::error(
                path,
                format!("not restored: its directory cannot be opened: {err}"),
            ));
            Ok(None)
        }
    }
}

/// An I/O error that stops the whole restore (a full target) as an
/// [`Error`]; any other is given back, to be reported for its entry.
pub(super) fn storage_full(path: &std::path::Path, err: io::Error) -> Result<io::Error> {
    if err.kind() == io::ErrorKind::StorageFull {
        Err(Error::io(path, err))
    } else {
        Ok(err)
    }
}

impl Preparer {
    /// The first batch: creates, in the selection's order (parents first),
    /// every kept entry that needs no data fetched — directories, symlinks,
    /// empty files and files `delta` found identical — then puts the files
    /// with data in the order of their first blob's pack and offset (the
    /// later batches' order), and notes the other names of hard-linked
    /// files for [`Preparer::link_names`].
    fn make_entries(&mut self, p: &mut Prepared, index: &Index) -> Result<()> {
        // (pack, in the order first seen; offset; item): 12 bytes a file
        // while sorting, 4 once sorted.
        // (At most the planned files: sized once, not by doubling.)
        let mut keys: Vec<(u32, u32, u32)> = Vec::with_capacity(self.planned_files as usize);
        let mut numbers: HashMap<Id, u32> = HashMap::new();
        let mut packs: HashMap<Id, u32> = HashMap::new();
        for i in 0..self.sel.items.len() {
            let item = &self.sel.items[i];
            let n = fits(i)?;
            match item.kind {
                ItemKind::File {
                    link_to: Some(first),
                    ..
                } => {
                    self.links.push(LinkName {
                        item: n,
                        dir: item.parent,
                        name: item.name,
                        first: first.item(),
                    });
                    continue;
                }
                ItemKind::File {
                    content,
                    link_to: None,
                    ..
                } if content.len > 0 && !self.identical.contains(&n) => {
                    let first = self.sel.blobs(content).locations(index).next();
                    let at = match first {
                        Some(Ok(loc)) => {
                            let seen = fits(numbers.len())?;
                            (*numbers.entry(loc.pack).or_insert(seen), loc.entry.offset)
                        }
                        // Not indexed: reported when its batch plans it.
                        _ => (u32::MAX, 0),
                    };
                    keys.push((at.0, at.1, n));
                    continue;
                }
                _ => {}
            }
            self.make(i, p, &mut packs, index)?;
        }
        keys.sort_unstable();
        self.order = Vec::with_capacity(keys.len());
        self.order.extend(keys.iter().map(|k| k.2));
        Ok(())
    }

    /// Creates the next files of the pack order and plans their data,
    /// until the batch has its files or blob writes.
    fn make_files(&mut self, p: &mut Prepared, index: &Index) -> Result<()> {
        let mut packs: HashMap<Id, u32> = HashMap::new();
        while self.next < self.order.len()
            && p.files.len() < self.batch_files
            && p.writes.len() < self.batch_files * WRITES_PER_FILE
        {
            let i = self.order[self.next] as usize;
            self.next += 1;
            self.make(i, p, &mut packs, index)?;
        }
        Ok(())
    }

    /// Creates kept item `i` but its file content: a directory, a symlink
    /// or a file (whose blob writes go into `p`, see [`plan_file`]); never
    /// another name of a hard-linked file ([`Preparer::link_names`]).
    fn make(
        &mut self,
        i: usize,
        p: &mut Prepared,
        packs: &mut HashMap<Id, u32>,
        index: &Index,
    ) -> Result<()> {
        let Preparer {
            sel,
            dirs,
            existing,
            identical,
            options,
            firsts,
            dir_meta,
            ..
        } = self;
        let item = &sel.items[i];
        let path = item_path(dirs, sel, item);
        let name = OsStr::from_bytes(item.name.of(&sel.names));
        let old = existing.remove(&(i as u32));
        let old = old.as_ref();
        if let ItemKind::Dir(d) = item.kind {
            let exists = old.is_some_and(Existing::is_dir);
            let made = dirs
                .get(item.parent)
                .and_then(|parent| {
                    if exists {
                        Ok(())
                    } else {
                        clear(&parent, name, old)
                    }
                })
                .and_then(|()| dirs.make(d, exists));
            match made {
                Ok(()) => dir_meta.push((d, item.meta.clone())),
                Err(err) => {
                    let err = storage_full(&path, err)?;
                    p.problems.push(Problem::error(
                        &path,
                        format!("cannot create directory: {err}"),
                    ));
                }
            }
            return Ok(());
        }
        // Everything else is made in its directory's handle; a directory
        // that could not be created or opened fails its entries.
        let Some(dir) = entry_dir(dirs, item.parent, &path, &mut p.problems)? else {
            if let ItemKind::File { linked: true, .. } = item.kind {
                firsts.insert(
                    i as u32,
                    FirstName {
                        dir: item.parent,
                        name: item.name,
                        ident: None,
                        file: None,
                    },
                );
            }
            return Ok(());
        };
        match item.kind {
            ItemKind::Dir(_) => unreachable!("handled above"),
            ItemKind::Symlink(target) => {
                let target = OsStr::from_bytes(target.of(&sel.names));
                let same = options.delta
                    && old.is_some_and(Existing::is_symlink)
                    && handles::read_link(&dir, name).is_ok_and(|t| t.as_os_str() == target);
                let made = if same {
                    Ok(())
                } else {
                    clear(&dir, name, old).and_then(|_| handles::symlink(target, &dir, name))
                };
                let made = made.and_then(|_| {
                    set_symlink_metadata(
                        &dir,
                        name,
                        &path,
                        &item.meta,
                        options.owner,
                        &mut p.problems,
                    )
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
                link_to: Some(_), ..
            } => unreachable!("other names are made by link_names"),
            ItemKind::File {
                size,
                content,
                link_to: None,
                linked,
            } => {
                let outcome = match (identical.contains(&(i as u32)), old) {
                    (true, Some(m)) => {
                        // Opened again by handle, and only if still the
                        // inode that was compared.
                        let done = handles::open_file(&dir, name, false, Some(m.ident)).and_then(
                            |(file, _)| {
                                set_file_metadata(
                                    &file,
                                    &path,
                                    &item.meta,
                                    options.owner,
                                    &mut p.problems,
                                )
                            },
                        );
                        match done {
                            Ok(()) => {
                                p.stats.files_skipped_identical += 1;
                                Ok((None, Some(m.ident)))
                            }
                            Err(err) => Err(format!("cannot set metadata: {err}")),
                        }
                    }
                    _ => {
                        let new = NewFile {
                            dir: &dir,
                            dir_number: item.parent,
                            name,
                            path: &path,
                            item,
                            size,
                            content: sel.blobs(content),
                            old,
                            linked,
                        };
                        plan_file(p, packs, new, index, options.owner)?
                    }
                };
                let (ident, file) = match outcome {
                    Ok((file, ident)) => (ident, file),
                    Err(msg) => {
                        p.problems.push(Problem::error(&path, msg));
                        (None, None)
                    }
                };
                if linked {
                    if file.is_some() {
                        p.firsts.push(i as u32);
                    }
                    firsts.insert(
                        i as u32,
                        FirstName {
                            dir: item.parent,
                            name: item.name,
                            ident,
                            file,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Makes the other names of hard-linked files, once every batch's data
    /// is written (and [`Preparer::fetched`] has been told of each batch),
    /// so a name is never left behind for a file whose data failed: such a
    /// file was removed, and its other names are reported instead. What it
    /// made and found is in the [`Prepared`] it returns (no files). A full
    /// target is an error.
    pub(super) fn link_names(&mut self) -> Result<Prepared> {
        let mut p = Prepared::default();
        let links = std::mem::take(&mut self.links);
        let Preparer {
            sel,
            dirs,
            existing,
            options,
            firsts,
            ..
        } = self;
        for link in &links {
            let name = OsStr::from_bytes(link.name.of(&sel.names));
            let path = dirs.join(link.dir, name);
            let old = existing.remove(&link.item);
            let old = old.as_ref();
            let Some(dir) = entry_dir(dirs, link.dir, &path, &mut p.problems)? else {
                continue;
            };
            let first = &firsts[&link.first];
            let first_name = OsStr::from_bytes(first.name.of(&sel.names));
            let first_path = dirs.join(first.dir, first_name);
            let Some(want) = first.ident else {
                let first = first_path.display();
                p.problems.push(Problem::error(
                    &path,
                    format!("not restored: another name of {first}, which could not be restored"),
                ));
                continue;
            };
            let same = options.delta && old.is_some_and(|m| m.ident == want);
            let made = if same {
                Ok(())
            } else {
                clear(&dir, name, old).and_then(|_| {
                    let from = dirs.get(first.dir)?;
                    handles::hard_link(&from, first_name, &dir, name, want)
                })
            };
            match made {
                Ok(()) => p.stats.hardlinks += 1,
                Err(err) => {
                    let err = storage_full(&path, err)?;
                    let first = first_path.display();
                    p.problems.push(Problem::error(
                        &path,
                        format!("cannot create hard link to {first}: {err}"),
                    ));
                }
            }
        }
        self.existing = Found::new();
        self.firsts = HashMap::new();
        Ok(p)
    }
}

/// A file about to be created.
pub(super) struct NewFile<'a> {
    /// Its directory's handle and number.
    pub(super) dir: &'a File,
    pub(super) dir_number: u32,
    pub(super) name: &'a OsStr,
    /// For messages.
    pub(super) path: &'a std::path::Path,
    pub(super) item: &'a Item,
    pub(super) size: u64,
    pub(super) content: Blobs<'a>,
    pub(super) old: Option<&'a Existing>,
    /// Other names will be hard links to it: it must exist before they do.
    pub(super) linked: bool,
}

/// What planning one file gave: its number in the plan (none if finished)
/// and, if it was created now, what it is; or why it was not created.
type Planned = std::result::Result<(Option<u32>, Option<Ident>), String>;

/// Adds one file's blobs to the plan, after removing what is in its way.
/// The file is created (empty, at its final length, so runs of zeros can be
/// left as holes) here if it is empty (and then finished at once) or has
/// other names; otherwise by the first writer that needs it. A full target
/// is an error.
pub(super) fn plan_file(
    p: &mut Prepared,
    packs: &mut HashMap<Id, u32>,
    new: NewFile<'_>,
    index: &Index,
    owner: bool,
) -> Result<Planned> {
    // Plan every blob write first (one index lookup a blob), so a file
    // with a blob not indexed is neither created nor half-planned.
    let number = fits(p.files.len())?;
    let planned = p.writes.len();
    let mut at = 0u64;
    for loc in new.content.locations(index) {
        let Ok(loc) = loc else {
            let id = loc.unwrap_err();
            p.writes.truncate(planned);
            return Ok(Err(format!(
                "blob {id} is not in the repository index (run `lifeboat check`); file not restored"
            )));
        };
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
    let now = new.content.is_empty() || new.linked;
    let created = clear(new.dir, new.name, new.old).and_then(|_| {
        if now {
            create_sized(new.dir, new.name, new.size).map(Some)
        } else {
            Ok(None)
        }
    });
    let file = match created {
        Ok(file) => file,
        Err(err) => {
            p.writes.truncate(planned);
            let err = storage_full(new.path, err)?;
            return Ok(Err(format!("cannot create file: {err}")));
        }
    };
    let made = file.as_ref().map(|(_, id)| *id);
    if let (Some((file, _)), true) = (&file, new.content.is_empty()) {
        let done = set_file_metadata(file, new.path, &new.item.meta, owner, &mut p.problems);
        return Ok(match done {
            Ok(()) => {
                p.stats.files_restored += 1;
                Ok((None, made))
            }
            Err(err) => Err(format!("cannot set metadata: {err}")),
        });
    }
    p.files.push(FileState {
        meta: new.item.meta.clone(),
        name: new.item.name,
        dir: new.dir_number,
        remaining: AtomicU32::new(fits(new.content.len())?),
        failed: AtomicBool::new(false),
        size: new.size,
        created: match made {
            Some(id) => OnceLock::from(Ok(id)),
            None => OnceLock::new(),
        },
    });
    Ok(Ok((Some(number), made)))
}

/// Creates a file at its final length in its directory's handle. Always a
/// fresh file (`O_CREAT | O_EXCL | O_NOFOLLOW`: never one opened through an
/// existing name) so a symlink or another hard link put in the target is
/// never written through. A file that cannot be given its length is
/// removed again, never left empty at its real name.
pub(super) fn create_sized(dir: &File, name: &OsStr, size: u64) -> io::Result<(File, Ident)> {
    let file = handles::create_file(dir, name)?;
    let made = file.set_len(size).and_then(|()| {
        nix::sys::stat::fstat(&file)
            .map(|st| ident(&st))
            .map_err(io::Error::from)
    });
    match made {
        Ok(id) => Ok((file, id)),
        Err(err) => {
            drop(file);
            let _ = handles::remove(dir, name);
            Err(err)
        }
    }
}

/// Removes a non-directory in the way of a new entry. A directory in the
/// way is an error: replacing it would delete a whole tree the user did
/// not ask about.
pub(super) fn clear(dir: &File, name: &OsStr, old: Option<&Existing>) -> io::Result<()> {
    match old {
        None => Ok(()),
        Some(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way (remove it to restore this entry)",
        )),
        Some(_) => handles::remove(dir, name),
    }
}

/// For `delta`: which items are regular files already in the target with
/// the snapshot's content, checked in parallel (hashing is CPU-bound). A
/// file whose link count the snapshot does not explain (a name outside the
/// target, or outside the selection, linked to it) is never identical:
/// setting its metadata, or linking names to it, would change a file
/// elsewhere.
pub(super) fn find_identical(
    sel: &Selection,
    dirs: &Dirs,
    existing: &Found,
    index: &Index,
    key: &MasterKey,
) -> HashSet<u32> {
    // First name of a hard-linked file -> the selected names it should
    // have, and whether the target's other names are all that inode.
    let ident_of = |i: usize| existing.get(&(i as u32)).map(|m| m.ident);
    let mut groups: HashMap<usize, (u64, bool)> = HashMap::new();
    for (i, item) in sel.items.iter().enumerate() {
        if let ItemKind::File {
            link_to: Some(j), ..
        } = item.kind
        {
            let j = j.item() as usize;
            let first = ident_of(j);
            let g = groups.entry(j).or_insert((1, true));
            g.0 += 1;
            g.1 &= first.is_some() && ident_of(i) == first;
        }
    }
    let candidates: Vec<(usize, Span, Ident)> = existing
        .iter()
        .filter_map(|(&i, m)| {
            let i = i as usize;
            let item = &sel.items[i];
            match &item.kind {
                ItemKind::File {
                    size,
                    content,
                    link_to: None,
                    ..
                } if m.is_file() && m.len == *size => {
                    let (names, all) = groups.get(&i).copied().unwrap_or((1, true));
                    (all && m.nlink == names).then_some((i, *content, m.ident))
                }
                _ => None,
            }
        })
        .collect();
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
                    let Some(&(i, content, want)) = candidates.get(k) else {
                        break;
                    };
                    let item = &sel.items[i];
                    let name = OsStr::from_bytes(item.name.of(&sel.names));
                    let same = dirs
                        .get(item.parent)
                        .and_then(|dir| handles::open_file(&dir, name, false, Some(want)))
                        .and_then(|(file, _)| {
                            same_content(file, sel.blobs(content).locations(index), key)
                        })
                        .unwrap_or(false);
                    results[k].store(same, Ordering::Relaxed);
                }
            });
        }
    });
    candidates
        .iter()
        .zip(&results)
        .filter(|(_, same)| same.load(Ordering::Relaxed))
        .map(|(&(i, _, _), _)| i as u32)
        .collect()
}

/// Cuts the existing file at the snapshot's blob boundaries and compares
/// each piece's keyed id with the snapshot's blob id. `content` is the
/// file's blobs' locations in order (`Err`: a blob not indexed, which
/// makes the file differ).
pub(crate) fn same_content(
    mut file: File,
    content: impl IntoIterator<Item = std::result::Result<BlobLocation, Id>>,
    key: &MasterKey,
) -> io::Result<bool> {
    let mut buf = Vec::new();
    for loc in content {
        let Ok(loc) = loc else {
            return Ok(false);
        };
        buf.resize(loc.entry.raw_length as usize, 0);
        match file.read_exact(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            r => r?,
        }
        if key.blob_id(&buf) != loc.entry.id {
            return Ok(false);
        }
    }
    Ok(file.read(&mut [0u8; 1])? == 0)
}
