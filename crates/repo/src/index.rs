//! The index: which pack holds each blob, by blob type and id.
//!
//! Stored as index objects, each `seal(postcard(IndexFile), INDEX_AAD)` and
//! named by the BLAKE3 of the sealed bytes. Every write session adds its own
//! index objects; readers merge all of them. An index object may list packs
//! that other index objects list too (harmless); `supersedes` names index
//! objects this one replaces (written by `repair index`), which are deleted
//! only after it is durable.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::limits::MAX_INDEX_ENTRIES;
use crate::pack::{BlobType, PackEntry};
use crate::{Error, Id, Result};

pub(crate) const INDEX_AAD: &[u8] = b"lifeboat index v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    pub entries: Vec<PackEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
    pub supersedes: Vec<Id>,
}

/// Associated data of an index object's blob-id list (repositories that
/// take write-only keys, docs/format.md §18).
pub(crate) const INDEX_IDS_AAD: &[u8] = b"lifeboat index ids v1";

/// What a write-only key reads of an index object: each pack's name and
/// the (type, id) of its blobs, nothing about where or how large they are.
type IdList = Vec<(Id, Vec<(BlobType, Id)>)>;

impl IndexFile {
    /// `seal(postcard(self), INDEX_AAD)`; in a repository that takes
    /// write-only keys, preceded by `u32 LE n || seal_shared(postcard(id
    /// list), INDEX_IDS_AAD)` (n bytes), so write-only keys can deduplicate.
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        let full = key.seal(
            &postcard::to_allocvec(self).expect("index serializes"),
            INDEX_AAD,
        );
        if !key.takes_write_only_keys() {
            return full;
        }
        let ids: IdList = self
            .packs
            .iter()
            .map(|p| {
                (
                    p.id,
                    p.entries.iter().map(|e| (e.blob_type, e.id)).collect(),
                )
            })
            .collect();
        let ids = key.seal_shared(
            &postcard::to_allocvec(&ids).expect("id list serializes"),
            INDEX_IDS_AAD,
        );
        let mut out = Vec::with_capacity(4 + ids.len() + full.len());
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        out.extend_from_slice(&ids);
        out.extend_from_slice(&full);
        out
    }

    pub fn decode(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Self> {
        let sealed = if key.takes_write_only_keys() {
            let (ids, full) = split_id_list(object, sealed)?;
            if key.is_write_only() {
                return decode_id_list(key, object, ids);
            }
            full
        } else {
            sealed
        };
        let plain = key
            .open(sealed, INDEX_AAD)
            .ok_or_else(|| Error::corrupt(object, "authentication failed"))?;
        let file: IndexFile =
            postcard::from_bytes(&plain).map_err(|e| Error::corrupt(object, e))?;
        for p in &file.packs {
            if let Some(e) = p.entries.iter().find(|e| !e.lengths_in_bounds()) {
                return Err(Error::corrupt(
                    object,
                    format!(
                        "entry for blob {} claims {} bytes ({} stored): out of range",
                        e.id, e.raw_length, e.length
                    ),
                ));
            }
        }
        Ok(file)
    }
}

/// The two parts of an index object of a repository that takes write-only
/// keys: the sealed id list and the sealed index.
fn split_id_list<'a>(object: &str, bytes: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(Error::corrupt(object, "too short for an id list length"));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err(Error::corrupt(object, "id list length past the end"));
    }
    Ok(rest.split_at(len))
}

/// A write-only key's view of an index object: every blob it lists, with
/// a placeholder location (offset 0, 40 stored bytes, no plaintext) that
/// nothing reads, since a write-only handle refuses every read
/// ([`crate::Repository::require_full_key`]). Enough to deduplicate and to
/// drop packs that are not in storage.
fn decode_id_list(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<IndexFile> {
    let plain = key
        .open_shared(sealed, INDEX_IDS_AAD)
        .ok_or_else(|| Error::corrupt(object, "id list: authentication failed"))?;
    let ids: IdList = postcard::from_bytes(&plain).map_err(|e| Error::corrupt(object, e))?;
    Ok(IndexFile {
        packs: ids
            .into_iter()
            .map(|(id, blobs)| IndexPack {
                id,
                entries: blobs
                    .into_iter()
                    .map(|(blob_type, id)| PackEntry {
                        blob_type,
                        id,
                        offset: 0,
                        length: crate::crypto::SEAL_OVERHEAD as u32,
                        raw_length: 0,
                        compressed: false,
                    })
                    .collect(),
            })
            .collect(),
        supersedes: Vec::new(),
    })
}

/// Cuts `packs` into the pack lists of index objects: at most `max_packs`
/// packs and (unless one pack alone has more) at most
/// [`MAX_INDEX_ENTRIES`] entries each, so every index object a writer
/// produces stays under the size readers accept
/// ([`crate::limits::MAX_INDEX_LEN`]).
pub(crate) fn index_batches(packs: &[IndexPack], max_packs: usize) -> Vec<&[IndexPack]> {
    let mut out = Vec::new();
    let (mut start, mut entries) = (0, 0);
    for (i, p) in packs.iter().enumerate() {
        if i > start && (i - start >= max_packs || entries + p.entries.len() > MAX_INDEX_ENTRIES) {
            out.push(&packs[start..i]);
            (start, entries) = (i, 0);
        }
        entries += p.entries.len();
    }
    if start < packs.len() {
        out.push(&packs[start..]);
    }
    out
}

/// Where one blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub entry: PackEntry,
}

/// The merged in-memory index.
///
/// Keyed by blob type *and* id, as restic's index is: a blob's id is the
/// keyed hash of its plaintext alone, so a file chunk whose bytes equal
/// the encoding of a directory listing (a one-byte file holding `0x00` is
/// an empty directory's listing) has the id of that tree. The two are
/// different entries; a lookup always says which type it wants, so a tree
/// is never deduplicated against, or read as, a data blob.
///
/// Every indexed location of a blob is kept (a blob stored twice, by two
/// backups racing or by a repack, has two): [`Index::get`] gives the first
/// merged, [`Index::locations`] all of them, for a reader that falls back
/// on another copy when one pack is missing or damaged.
#[derive(Debug, Default, Clone)]
pub struct Index {
    blobs: HashMap<(BlobType, Id), BlobLocation>,
    /// Further locations of blobs that are in more than one pack (rare, so
    /// kept apart: the common case costs no allocation per blob).
    more: HashMap<(BlobType, Id), Vec<BlobLocation>>,
    /// Packs named by some index object, with their blob count.
    packs: HashMap<Id, u32>,
}

impl Index {
    pub fn add_pack(&mut self, pack: &IndexPack) {
        *self.packs.entry(pack.id).or_default() += pack.entries.len() as u32;
        for e in &pack.entries {
            let loc = BlobLocation {
                pack: pack.id,
                entry: *e,
            };
            match self.blobs.entry((e.blob_type, e.id)) {
                Entry::Vacant(v) => {
                    v.insert(loc);
                }
                Entry::Occupied(o) => {
                    // The same pack listed by two index objects is one
                    // location, not two.
                    let more = self.more.entry((e.blob_type, e.id)).or_default();
                    if o.get().pack != pack.id && !more.iter().any(|l| l.pack == pack.id) {
                        more.push(loc);
                    }
                }
            }
        }
    }

    /// Drops every location in a pack `keep` refuses (a pack that is not in
    /// storage), and the pack itself; a blob with no location left is no
    /// longer indexed. Returns the number of packs dropped.
    pub fn retain_packs(&mut self, mut keep: impl FnMut(&Id) -> bool) -> usize {
        let before = self.packs.len();
        self.packs.retain(|p, _| keep(p));
        if self.packs.len() == before {
            return 0;
        }
        let packs = &self.packs;
        let more = &mut self.more;
        more.retain(|_, locs| {
            locs.retain(|l| packs.contains_key(&l.pack));
            !locs.is_empty()
        });
        self.blobs.retain(|k, loc| {
            if packs.contains_key(&loc.pack) {
                return true;
            }
            // Promote another copy, if one is left.
            match more.get_mut(k) {
                Some(locs) => {
                    *loc = locs.remove(0);
                    if locs.is_empty() {
                        more.remove(k);
                    }
                    true
                }
                None => false,
            }
        });
        before - self.packs.len()
    }

    /// The first merged location of the blob of this type and id.
    pub fn get(&self, blob_type: BlobType, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(&(blob_type, *id))
    }

    /// Every indexed location of the blob, the one [`Index::get`] gives
    /// first; empty if it is not indexed.
    pub fn locations(&self, blob_type: BlobType, id: &Id) -> Vec<BlobLocation> {
        let key = (blob_type, *id);
        let Some(first) = self.blobs.get(&key) else {
            return Vec::new();
        };
        let mut out = vec![*first];
        if let Some(more) = self.more.get(&key) {
            out.extend_from_slice(more);
        }
        out
    }

    pub fn contains(&self, blob_type: BlobType, id: &Id) -> bool {
        self.blobs.contains_key(&(blob_type, *id))
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.packs.contains_key(id)
    }

    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.packs.keys()
    }

    /// Every indexed blob once (its first location); the type is in
    /// `location.entry.blob_type`.
    pub fn blobs(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter().map(|((_, id), loc)| (id, loc))
    }

    /// Every location of every blob (a blob in two packs twice).
    pub fn all_locations(&self) -> impl Iterator<Item = &BlobLocation> {
        self.blobs.values().chain(self.more.values().flatten())
    }

    /// Number of indexed blobs (a data blob and a tree blob with the same
    /// id count twice: they are different blobs).
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn blob_count_of(&self, t: BlobType) -> usize {
        self.blobs.keys().filter(|(bt, _)| *bt == t).count()
    }
}
