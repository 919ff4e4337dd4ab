//! Selecting what a restore restores.
//!
//! Reads the snapshot's trees breadth first (several in flight), applies
//! the include/exclude patterns of [`super::RestoreOptions`] (matching is
//! [`PathMatcher`]'s, the one glob dialect; nothing here interprets a
//! pattern), and keeps of each entry only what restoring it needs, in a
//! compact [`Selection`]: a few dozen bytes per entry in a handful of
//! large buffers, so a tree is dropped as soon as it has been read. It also
//! pairs the names of hard-linked files. It does not look at the target
//! (`prepare`) nor at pack data.
//!
//! A damaged subtree (a tree blob that is missing, fails to decrypt or
//! verify, or is indexed only as a data blob) is skipped: its directory is
//! still restored, empty, and a problem names it, so the rest of the
//! snapshot is restored and the restore ends partial. Only a damaged root
//! tree, which leaves nothing to restore, and errors that are not damage
//! (an unreachable storage) stop the walk.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::num::NonZeroU32;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lifeboat_repo::{BlobLocation, BlobType, Id, Index, NodeKind, Repository};
use lifeboat_storage::ErrorClass;

use super::metadata::Meta;
use super::{Problem, RestoreOptions};
use crate::pathmatch::PathMatcher;
use crate::pathmatch::join;
use crate::{Error, Result};

/// Bytes in a shared buffer (names and link targets in
/// [`Selection::names`], blob numbers in [`Selection::content`]): one buffer
/// instead of an allocation per entry keeps the plan small and lets the
/// allocator give it back whole.
#[derive(Clone, Copy)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) len: u32,
}

impl Span {
    pub(super) fn of<T>(self, buf: &[T]) -> &[T] {
        &buf[self.start as usize..][..self.len as usize]
    }
}

/// Whether item `first` (a file) has this size and content (blob numbers).
fn same_file(sel: &Selection, first: u32, size: u64, content: &[u32]) -> bool {
    match &sel.items[first as usize].kind {
        ItemKind::File {
            size: s,
            content: c,
            ..
        } => *s == size && c.of(&sel.content) == content,
        _ => false,
    }
}

/// Appends `items` to `buf` and returns where they are.
pub(super) fn append<T: Clone>(buf: &mut Vec<T>, items: &[T]) -> Result<Span> {
    let span = Span {
        start: fits(buf.len())?,
        len: fits(items.len())?,
    };
    fits(buf.len() + items.len())?;
    buf.extend_from_slice(items);
    Ok(span)
}

/// A count or position of the plan as a `u32`: the plan is kept compact,
/// and no real snapshot comes near four billion entries, names or blobs.
pub(super) fn fits(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        Error::BadInput(
            "the snapshot is too large to restore at once; restore it in parts with --include"
                .into(),
        )
    })
}

/// A selected snapshot entry, with only what restoring it needs.
pub(super) struct Item {
    pub(super) meta: Meta,
    pub(super) name: Span,
    /// Number of the parent directory (an index into
    /// [`Selection::dirs`]; 0 is the target itself).
    pub(super) parent: u32,
    pub(super) kind: ItemKind,
    /// Selected itself, or a directory holding something selected (it is
    /// then needed as a parent). Entries not kept are skipped.
    pub(super) keep: bool,
}

pub(super) enum ItemKind {
    /// The directory's own number.
    Dir(u32),
    File {
        size: u64,
        content: Span,
        /// For another name of a hard-linked file: the item holding the
        /// first selected name, which is restored and linked to.
        link_to: Option<LinkTo>,
        /// Whether this is the first selected name of a hard-linked file.
        linked: bool,
    },
    /// The link target.
    Symlink(Span),
}

// An entry per selected file, held for the whole restore: 72 bytes (80
// while `link_to` was an `Option<u32>`, 8 bytes with its tag).
const _: () = assert!(std::mem::size_of::<Item>() == 72);

/// The item holding a hard-linked file's first selected name, stored as
/// its number plus one so that `Option<LinkTo>` takes four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkTo(NonZeroU32);

impl LinkTo {
    /// None only for item `u32::MAX`, which the selection never reaches
    /// (its count is a `u32`).
    fn new(item: u32) -> Option<LinkTo> {
        item.checked_add(1).and_then(NonZeroU32::new).map(LinkTo)
    }

    pub(super) fn item(self) -> u32 {
        self.0.get() - 1
    }
}

pub(super) struct Selection {
    /// Breadth first: every directory before its contents.
    pub(super) items: Vec<Item>,
    /// Target path of every directory, by number; 0 is the target.
    pub(super) dirs: Vec<PathBuf>,
    /// Shared with the writers of every batch (see `fetch::Exec`).
    pub(super) names: Arc<Vec<u8>>,
    /// Every selected file's blobs, by number (see [`Blobs`]): 4 bytes a
    /// blob where its 32-byte id was.
    pub(super) content: Vec<u32>,
    /// The blobs not in the index, numbered from the index's blob count.
    pub(super) missing: Vec<Id>,
    /// Selected directories whose tree was damaged, left empty.
    pub(super) problems: Vec<Problem>,
}

impl Selection {
    pub(super) fn path(&self, item: &Item) -> PathBuf {
        self.dirs[item.parent as usize].join(OsStr::from_bytes(item.name.of(&self.names)))
    }

    /// A file's blobs, its `content` span.
    pub(super) fn blobs(&self, content: Span) -> Blobs<'_> {
        Blobs {
            numbers: content.of(&self.content),
            missing: &self.missing,
        }
    }
}

/// A file's blobs by number: a number below the index's blob count is the
/// blob's position in the index ([`Index::position`], the index the
/// selection was made with), one past it a blob the index does not have
/// (`missing`, by its id). Looking a blob up by position needs no search.
#[derive(Clone, Copy)]
pub(super) struct Blobs<'a> {
    numbers: &'a [u32],
    missing: &'a [Id],
}

impl<'a> Blobs<'a> {
    pub(super) fn len(&self) -> usize {
        self.numbers.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// Each blob's first location, or the id of a blob not in `index`.
    pub(super) fn locations(
        self,
        index: &'a Index,
    ) -> impl Iterator<Item = std::result::Result<BlobLocation, Id>> + 'a {
        let indexed = index.blob_count();
        self.numbers.iter().map(move |&n| {
            let n = n as usize;
            match n.checked_sub(indexed) {
                None => Ok(index.at(n)),
                Some(k) => Err(self.missing[k]),
            }
        })
    }
}

/// The number of the data blob `id` (see [`Blobs`]): its position in
/// `index`, or past the index a number in `missing` (one per id).
fn blob_number(
    index: &Index,
    missing: &mut Vec<Id>,
    missing_numbers: &mut HashMap<Id, u32>,
    id: &Id,
) -> Result<u32> {
    if let Some(at) = index.position(BlobType::Data, id) {
        return fits(at);
    }
    let n = fits(index.blob_count() + missing.len())?;
    Ok(*missing_numbers.entry(*id).or_insert_with(|| {
        missing.push(*id);
        n
    }))
}

/// A directory whose tree is still to be read.
pub(super) struct Pending {
    /// Its directory number.
    pub(super) dir: u32,
    /// Its snapshot path.
    pub(super) path: Vec<u8>,
    /// Whether it is selected (so everything below it is).
    pub(super) included: bool,
}

/// Reads the snapshot's trees breadth first, up to `repo.concurrency()` in
/// flight and in a fixed order, and turns each tree's nodes into [`Item`]s
/// as it arrives, so no more than a few trees are held at once. Excluded
/// directories are not read. The include and exclude patterns and the
/// target are the options' (a bad pattern is an error before any read).
pub(super) async fn select(
    repo: &Repository,
    index: &Index,
    root: Id,
    options: &RestoreOptions,
) -> Result<Selection> {
    let include = &PathMatcher::new(&options.include)?;
    let exclude = &PathMatcher::new(&options.exclude)?;
    let target = options.target.as_path();
    let mut sel = Selection {
        items: Vec::new(),
        dirs: vec![target.to_path_buf()],
        names: Arc::default(),
        content: Vec::new(),
        missing: Vec::new(),
        problems: Vec::new(),
    };
    let mut names = Vec::new();
    let mut missing_numbers = HashMap::new();
    // One file's blob numbers, before they are appended.
    let mut numbers: Vec<u32> = Vec::new();
    // Directory number -> its item (none for the target).
    let mut dir_items: Vec<u32> = vec![u32::MAX];
    // Files with more than one link, by device and inode at backup time:
    // files sharing both were one file. The first selected name is
    // restored, the others link to it.
    let mut first_names: HashMap<(u64, u64), u32> = HashMap::new();
    let first = Pending {
        dir: 0,
        path: Vec::new(),
        included: include.is_empty(),
    };
    let mut queue = VecDeque::from([(first, root)]);
    let mut reading = FuturesOrdered::new();
    loop {
        while reading.len() < repo.concurrency()
            && let Some((pending, id)) = queue.pop_front()
        {
            reading.push_back(async move { (pending, repo.read_tree(&id).await) });
        }
        let Some((pending, tree)) = reading.next().await else {
            break;
        };
        let tree = match tree {
            Ok(tree) => tree,
            Err(e) if pending.dir != 0 && e.class() == ErrorClass::Damaged => {
                // Skip this directory's contents and restore the rest.
                if pending.included {
                    keep(
                        &mut sel.items,
                        &dir_items,
                        dir_items[pending.dir as usize] as usize,
                    );
                    sel.problems.push(Problem::error(
                        &sel.dirs[pending.dir as usize],
                        format!("directory contents not restored: {e} (run `lifeboat check`)"),
                    ));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for node in tree.nodes {
            let child = join(&pending.path, &node.name);
            if exclude.is_match(&child) {
                continue;
            }
            let included = pending.included || include.is_match(&child);
            let i = fits(sel.items.len())?;
            let kind = match node.kind {
                NodeKind::Dir => {
                    let d = fits(sel.dirs.len())?;
                    let path = sel.dirs[pending.dir as usize].join(OsStr::from_bytes(&node.name));
                    sel.dirs.push(path);
                    dir_items.push(i);
                    if let Some(sub) = node.subtree {
                        let below = Pending {
                            dir: d,
                            path: child,
                            included,
                        };
                        queue.push_back((below, sub));
                    }
                    ItemKind::Dir(d)
                }
                _ if !included => continue,
                NodeKind::File => {
                    numbers.clear();
                    for id in &node.content {
                        let n = blob_number(index, &mut sel.missing, &mut missing_numbers, id)?;
                        numbers.push(n);
                    }
                    let (link_to, linked) = if node.links > 1 {
                        match first_names.entry((node.dev, node.inode)) {
                            // A name is linked to the first only when the
                            // snapshot gives both the same contents: a
                            // crafted group with different contents is
                            // restored as separate files, each with its
                            // own bytes (what `dump` gives for each name;
                            // `check` reports the group).
                            Entry::Occupied(e)
                                if !same_file(&sel, *e.get(), node.size, &numbers) =>
                            {
                                sel.problems.push(Problem {
                                    path: sel.dirs[pending.dir as usize]
                                        .join(OsStr::from_bytes(&node.name)),
                                    message: "hard-linked in the snapshot to a file with other \
                                              contents: restored as a separate file with its own \
                                              contents (run `lifeboat check`)"
                                        .into(),
                                    error: false,
                                });
                                (None, false)
                            }
                            Entry::Occupied(e) => (LinkTo::new(*e.get()), false),
                            Entry::Vacant(e) => {
                                e.insert(i);
                                (None, true)
                            }
                        }
                    } else {
                        (None, false)
                    };
                    ItemKind::File {
                        size: node.size,
                        content: append(&mut sel.content, &numbers)?,
                        link_to,
                        linked,
                    }
                }
                NodeKind::Symlink => {
                    let target = node.link_target.as_deref().unwrap_or_default();
                    ItemKind::Symlink(append(&mut names, target)?)
                }
            };
            let xattrs = (!node.xattrs.is_empty()).then(|| Box::new(node.xattrs));
            sel.items.push(Item {
                meta: Meta {
                    mode: node.mode,
                    uid: node.uid,
                    gid: node.gid,
                    mtime_nanos: node.mtime.nanos,
                    mtime_secs: node.mtime.secs,
                    xattrs,
                },
                name: append(&mut names, &node.name)?,
                parent: pending.dir,
                kind,
                keep: false,
            });
            if included {
                keep(&mut sel.items, &dir_items, i as usize);
            }
        }
    }
    // The buffers grew by doubling: give back the unused half (they are
    // held for the whole restore).
    sel.items.shrink_to_fit();
    sel.content.shrink_to_fit();
    sel.missing.shrink_to_fit();
    sel.dirs.shrink_to_fit();
    names.shrink_to_fit();
    sel.names = Arc::new(names);
    Ok(sel)
}

/// Keeps item `i` and every directory above it.
pub(super) fn keep(items: &mut [Item], dir_items: &[u32], mut i: usize) {
    while !items[i].keep {
        items[i].keep = true;
        match items[i].parent {
            0 => break,
            d => i = dir_items[d as usize] as usize,
        }
    }
}
