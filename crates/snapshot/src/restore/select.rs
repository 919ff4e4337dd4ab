//! Selecting what a restore restores.
//!
//! Walks the snapshot's trees depth first (read ahead, several in
//! flight), applies the include/exclude patterns of
//! [`super::RestoreOptions`] (matching is [`PathMatcher`]'s, the one glob
//! dialect; nothing here interprets a pattern), and keeps of each entry
//! only what restoring it needs, in compact [`Selection`]s handed out a
//! part at a time ([`Walker`]): a few dozen bytes per entry in a handful
//! of large buffers, so a tree is dropped as soon as it has been walked
//! and a part once it is restored. It also pairs the names of hard-linked
//! files, which it holds apart for the last part. It does not look at the
//! target (`prepare`) nor at pack data.
//!
//! A damaged subtree (a tree blob that is missing, fails to decrypt or
//! verify, or is indexed only as a data blob) is skipped: its directory is
//! still restored, empty, and a problem names it, so the rest of the
//! snapshot is restored and the restore ends partial. Only a damaged root
//! tree, which leaves nothing to restore, and errors that are not damage
//! (an unreachable storage) stop the walk.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::num::NonZeroU32;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_repo::{BlobLocation, BlobType, Id, Index, Node, NodeKind, Repository};
use lifeboat_storage::ErrorClass;

use super::metadata::Meta;
use super::{Problem, RestoreOptions};
use crate::ls::ReadAhead;
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

// An entry per selected file, held while its part is restored: 72 bytes
// (80 while `link_to` was an `Option<u32>`, 8 bytes with its tag).
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

/// One part of a restore's selection (see [`Walker`]): its entries in the
/// walk's order, every directory before its contents.
#[derive(Default)]
pub(super) struct Selection {
    pub(super) items: Vec<Item>,
    /// The directories first selected in this part, by number from
    /// `first_dir` on: each one's target path and its parent's number (0
    /// is the target). Directories of earlier parts keep their numbers.
    pub(super) new_dirs: Vec<(PathBuf, u32)>,
    pub(super) first_dir: u32,
    /// Shared with the writers of every batch (see `fetch::Exec`).
    pub(super) names: Arc<Vec<u8>>,
    /// Every selected file's blobs, by number (see [`Blobs`]): 4 bytes a
    /// blob where its 32-byte id was.
    pub(super) content: Vec<u32>,
    /// The blobs not in the index, numbered from the index's blob count.
    pub(super) missing: Vec<Id>,
    /// Selected directories whose tree was damaged, left empty, and
    /// hard-linked names whose group disagrees.
    pub(super) problems: Vec<Problem>,
}

impl Selection {
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

/// The number of the data blob `id` in `part` (see [`Blobs`]): its
/// position in `index`, or past the index a number in the part's
/// `missing` (one per id).
fn blob_number(part: &mut Part, index: &Index, id: &Id) -> Result<u32> {
    if let Some(at) = index.position(BlobType::Data, id) {
        return fits(at);
    }
    let n = fits(index.blob_count() + part.sel.missing.len())?;
    let missing = &mut part.sel.missing;
    Ok(*part.missing_numbers.entry(*id).or_insert_with(|| {
        missing.push(*id);
        n
    }))
}

/// A directory on the walk's current path.
struct Frame {
    /// Its entries not yet visited.
    nodes: std::vec::IntoIter<Node>,
    /// Its snapshot path.
    path: Vec<u8>,
    /// Its target path.
    target: PathBuf,
    /// Whether it is selected (so everything below it is).
    included: bool,
    /// Its directory number, once it is selected or holds something
    /// selected (the target's is 0).
    dir: Option<u32>,
    /// Until then, what its entry will need: its name and metadata.
    name: Vec<u8>,
    meta: Option<Meta>,
}

/// A part being built.
#[derive(Default)]
struct Part {
    sel: Selection,
    names: Vec<u8>,
    missing_numbers: HashMap<Id, u32>,
}

impl Part {
    fn new(first_dir: u32) -> Self {
        Part {
            sel: Selection {
                first_dir,
                ..Selection::default()
            },
            ..Part::default()
        }
    }

    /// Appends the entries of `other` (built apart, with its own buffers
    /// and no directories of its own) to this part.
    fn absorb(&mut self, other: Part, index: &Index) -> Result<()> {
        let Part {
            sel: mut theirs,
            names,
            ..
        } = other;
        let (items, names_at, content_at) = (
            fits(self.sel.items.len())?,
            fits(self.names.len())?,
            fits(self.sel.content.len())?,
        );
        let indexed = index.blob_count();
        for n in &mut theirs.content {
            if let Some(k) = (*n as usize).checked_sub(indexed) {
                *n = blob_number(self, index, &theirs.missing[k])?;
            }
        }
        append(&mut self.sel.content, &theirs.content)?;
        append(&mut self.names, &names)?;
        for mut item in theirs.items {
            item.name.start += names_at;
            match &mut item.kind {
                ItemKind::File {
                    content, link_to, ..
                } => {
                    content.start += content_at;
                    *link_to = link_to.and_then(|l| LinkTo::new(l.item() + items));
                }
                ItemKind::Symlink(target) => target.start += names_at,
                ItemKind::Dir(_) => unreachable!("directories are put in the walk's parts"),
            }
            self.sel.items.push(item);
        }
        self.sel.problems.append(&mut theirs.problems);
        Ok(())
    }

    fn finish(self) -> Selection {
        let Part {
            mut sel, mut names, ..
        } = self;
        // The buffers grew by doubling: give back the unused half (they
        // are held while the part is restored).
        sel.items.shrink_to_fit();
        sel.content.shrink_to_fit();
        sel.missing.shrink_to_fit();
        names.shrink_to_fit();
        sel.names = Arc::new(names);
        sel
    }
}

/// Walks a snapshot's trees depth first in name order (the order a backup
/// reads and packs them), read ahead as `ls` does ([`ReadAhead`]), and
/// hands out what a restore selects a part at a time ([`Walker::next`]):
/// only the directories on the current path and the trees read ahead are
/// held between parts, so a restore's memory does not grow with the
/// number of files. The include and exclude patterns are the options'
/// (a bad pattern is an error before any read). Excluded directories
/// are not read; a directory is selected (numbered and put in a part)
/// when it is included itself or the first entry below it is, parents
/// first.
///
/// Every name of a file with more than one link is held apart, for the
/// last part: its names must be restored together (the other names are
/// linked to the first once its data is written, and `delta` compares the
/// group as a whole). That part grows with the hard-linked files.
pub(super) struct Walker<'r> {
    index: &'r Index,
    include: PathMatcher,
    exclude: PathMatcher,
    ahead: ReadAhead<'r>,
    frames: Vec<Frame>,
    /// Directories numbered so far, the target included.
    dirs: u32,
    /// The names of hard-linked files, for the last part.
    linked: Part,
    /// The first selected name of each hard-linked file (by device and
    /// inode at backup time: files sharing both were one file), as its
    /// item in `linked`.
    first_names: HashMap<(u64, u64), u32>,
    /// One file's blob numbers, before they are appended.
    numbers: Vec<u32>,
    /// Whether the walk is over (only the linked part is left).
    walked: bool,
}

impl<'r> Walker<'r> {
    /// Reads the root tree (a damaged one is an error: nothing would be
    /// left to restore) and checks the patterns.
    pub(super) async fn new(
        repo: &'r Repository,
        index: &'r Index,
        root: Id,
        options: &RestoreOptions,
    ) -> Result<Walker<'r>> {
        let include = PathMatcher::new(&options.include)?;
        let exclude = PathMatcher::new(&options.exclude)?;
        let mut ahead = ReadAhead::new(repo);
        let tree = ahead.take(root).await?;
        let included = include.is_empty();
        Ok(Walker {
            index,
            include,
            exclude,
            ahead,
            frames: vec![Frame {
                nodes: tree.nodes.into_iter(),
                path: Vec::new(),
                target: options.target.clone(),
                included,
                dir: Some(0),
                name: Vec::new(),
                meta: None,
            }],
            dirs: 1,
            linked: Part::default(),
            first_names: HashMap::new(),
            numbers: Vec::new(),
            walked: false,
        })
    }

    /// A part with nothing in it (for a snapshot with nothing selected).
    pub(super) fn empty(&self) -> Selection {
        Selection {
            first_dir: self.dirs,
            ..Selection::default()
        }
    }

    /// The next part: at least one entry and at most about `items` entries
    /// (the directories put in first count too), or the hard-linked files
    /// once the walk is over; `None` after that.
    pub(super) async fn next(&mut self, items: usize) -> Result<Option<Selection>> {
        if self.walked {
            return Ok(None);
        }
        let mut part = Part::new(self.dirs);
        while part.sel.items.len() < items.max(1) {
            let Some(top) = self.frames.last_mut() else {
                break;
            };
            let Some(node) = top.nodes.next() else {
                self.frames.pop();
                continue;
            };
            let child = join(&top.path, &node.name);
            if self.exclude.is_match(&child) {
                continue;
            }
            let included = top.included || self.include.is_match(&child);
            if node.kind == NodeKind::Dir {
                self.enter(node, child, included, &mut part).await?;
                continue;
            }
            if !included {
                continue;
            }
            self.select_dirs(&mut part)?;
            let parent = self
                .frames
                .last()
                .and_then(|f| f.dir)
                .expect("just selected");
            if node.kind == NodeKind::File && node.links > 1 {
                self.add_linked(node, parent, &mut part)?;
            } else {
                add_item(&mut part, node, parent, &mut self.numbers, self.index)?;
            }
        }
        if self.frames.is_empty() {
            // The walk is over: the hard-linked files join the last part
            // (a restore of one part says its totals once).
            self.walked = true;
            let linked = std::mem::take(&mut self.linked);
            part.absorb(linked, self.index)?;
            if part.sel.items.is_empty() && part.sel.problems.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(part.finish()))
    }

    /// Visits directory `node` (at snapshot path `child`): selected now if
    /// included, and entered (its tree read) if it has one. A damaged tree
    /// leaves it empty: a problem names it (if selected) and the rest is
    /// restored.
    async fn enter(
        &mut self,
        mut node: Node,
        child: Vec<u8>,
        included: bool,
        part: &mut Part,
    ) -> Result<()> {
        let top = self.frames.last().expect("a directory is in one");
        let target = top.target.join(OsStr::from_bytes(&node.name));
        let subtree = node.subtree;
        self.frames.push(Frame {
            nodes: Vec::new().into_iter(),
            path: child,
            target,
            included,
            dir: None,
            name: std::mem::take(&mut node.name),
            meta: Some(meta_of(&mut node)),
        });
        if included {
            self.select_dirs(part)?;
        }
        let Some(sub) = subtree else {
            self.frames.pop();
            return Ok(());
        };
        // Read ahead the subdirectories visited after this one, nearest
        // first: the rest of this directory's, then its parents'.
        self.ahead
            .start_upcoming(self.frames.iter().rev().flat_map(|f| {
                f.nodes
                    .as_slice()
                    .iter()
                    .filter(|n| n.kind == NodeKind::Dir)
                    .filter_map(|n| n.subtree)
            }));
        match self.ahead.take(sub).await {
            Ok(tree) => {
                let top = self.frames.last_mut().expect("pushed above");
                top.nodes = tree.nodes.into_iter();
                Ok(())
            }
            Err(e) if e.class() == ErrorClass::Damaged => {
                // Skip this directory's contents and restore the rest.
                let top = self.frames.pop().expect("pushed above");
                if included {
                    part.sel.problems.push(Problem::error(
                        &top.target,
                        format!("directory contents not restored: {e} (run `lifeboat check`)"),
                    ));
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Selects every directory on the current path not selected yet,
    /// parents first: each gets its number and its entry in `part`.
    fn select_dirs(&mut self, part: &mut Part) -> Result<()> {
        let mut parent = 0;
        for f in &mut self.frames {
            if let Some(d) = f.dir {
                parent = d;
                continue;
            }
            let d = self.dirs;
            self.dirs = fits(d as usize + 1)?;
            part.sel.new_dirs.push((f.target.clone(), parent));
            part.sel.items.push(Item {
                meta: f.meta.take().expect("a directory's entry is made once"),
                name: append(&mut part.names, &f.name)?,
                parent,
                kind: ItemKind::Dir(d),
            });
            f.name = Vec::new();
            f.dir = Some(d);
            parent = d;
        }
        Ok(())
    }

    /// Puts a name of a hard-linked file in the linked part. The first
    /// selected name is restored, the others link to it; a name is linked
    /// to the first only when the snapshot gives both the same contents: a
    /// crafted group with different contents is restored as separate
    /// files, each with its own bytes (what `dump` gives for each name;
    /// `check` reports the group).
    fn add_linked(&mut self, node: Node, parent: u32, part: &mut Part) -> Result<()> {
        let linked = &mut self.linked;
        let i = fits(linked.sel.items.len())?;
        self.numbers.clear();
        for id in &node.content {
            let n = blob_number(linked, self.index, id)?;
            self.numbers.push(n);
        }
        let (link_to, first) = match self.first_names.entry((node.dev, node.inode)) {
            Entry::Occupied(e) if !same_file(&linked.sel, *e.get(), node.size, &self.numbers) => {
                let top = self.frames.last().expect("a file is in one");
                part.sel.problems.push(Problem::warning(
                    &top.target.join(OsStr::from_bytes(&node.name)),
                    "hard-linked in the snapshot to a file with other contents: restored as a \
                     separate file with its own contents (run `lifeboat check`)"
                        .into(),
                ));
                (None, false)
            }
            Entry::Occupied(e) => (LinkTo::new(*e.get()), false),
            Entry::Vacant(e) => {
                e.insert(i);
                (None, true)
            }
        };
        let kind = ItemKind::File {
            size: node.size,
            content: append(&mut linked.sel.content, &self.numbers)?,
            link_to,
            linked: first,
        };
        push_item(linked, node, parent, kind)
    }
}

/// A node's metadata for its entry (its extended attributes taken).
fn meta_of(node: &mut Node) -> Meta {
    let xattrs = std::mem::take(&mut node.xattrs);
    Meta {
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        mtime_nanos: node.mtime.nanos,
        mtime_secs: node.mtime.secs,
        xattrs: (!xattrs.is_empty()).then(|| Box::new(xattrs)),
    }
}

/// Puts a file or symlink that is not hard-linked in `part`.
fn add_item(
    part: &mut Part,
    node: Node,
    parent: u32,
    numbers: &mut Vec<u32>,
    index: &Index,
) -> Result<()> {
    let kind = match node.kind {
        NodeKind::File => {
            numbers.clear();
            for id in &node.content {
                let n = blob_number(part, index, id)?;
                numbers.push(n);
            }
            ItemKind::File {
                size: node.size,
                content: append(&mut part.sel.content, numbers)?,
                link_to: None,
                linked: false,
            }
        }
        _ => {
            let target = node.link_target.as_deref().unwrap_or_default();
            ItemKind::Symlink(append(&mut part.names, target)?)
        }
    };
    push_item(part, node, parent, kind)
}

/// Pushes the entry of `node` in directory `parent`.
fn push_item(part: &mut Part, mut node: Node, parent: u32, kind: ItemKind) -> Result<()> {
    let meta = meta_of(&mut node);
    part.sel.items.push(Item {
        meta,
        name: append(&mut part.names, &node.name)?,
        parent,
        kind,
    });
    Ok(())
}
