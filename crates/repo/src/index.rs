//! The index: which pack holds each blob, by blob type and id.
//!
//! Stored as index objects, each `seal(postcard(IndexFile), INDEX_AAD)` and
//! named by the BLAKE3 of the sealed bytes. Every write session adds its own
//! index objects; readers merge all of them. An index object may list packs
//! that other index objects list too (harmless); `supersedes` names index
//! objects this one replaces (written by `repair index`), which are deleted
//! only after it is durable.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::limits::MAX_INDEX_ENTRIES;
use crate::pack::{BlobType, PackEntry};
use crate::{Error, Id, Result};

pub(crate) const INDEX_AAD: &[u8] = b"lifeboat index v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// One indexed blob, decoded. In memory an [`Index`] keeps it in 47 bytes
/// (issue 17's bound is 48 per indexed blob, directory and pack table
/// included): its id without the first byte, which the directory's
/// bucket gives, then its pack as a number into [`Index::pack_ids`] (the
/// blob type and the compressed flag ride in that number's top bits),
/// offset, length and raw length, four bytes each, little-endian. An
/// [`IndexBuilder`] keeps the whole id (48 bytes) until the index is
/// sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: [u8; 32],
    /// Pack number (bits 0..30), compressed (bit 30), tree (bit 31).
    pack: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

const TREE_BIT: u32 = 1 << 31;
const COMPRESSED_BIT: u32 = 1 << 30;
const PACK_BITS: u32 = COMPRESSED_BIT - 1;

/// Bytes of a slot in an [`IndexBuilder`]: the whole id, then the fields.
const FULL: usize = 48;
/// Bytes of a slot in an [`Index`]: the id without its first byte, then
/// the fields.
const SLOT: usize = FULL - 1;
/// Bytes of the fields after the id, at the end of both encodings.
const FIELDS: usize = 16;

/// The directory narrows lookups by the ids' leading bits, at least the
/// first byte's: which is why a slot need not keep that byte.
const MIN_DIRECTORY_BITS: u32 = 8;
const MAX_DIRECTORY_BITS: u32 = 20;

fn le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The packed pack number of an encoded slot (either encoding).
fn packed_number(b: &[u8]) -> u32 {
    le(b, b.len() - FIELDS)
}

/// The pack number of an encoded slot, without the flag bits.
fn pack_number_of(b: &[u8]) -> u32 {
    packed_number(b) & PACK_BITS
}

/// The order of the index, of an encoded slot: the id (or its tail),
/// then the type (data first).
fn sort_key(b: &[u8]) -> (&[u8], bool) {
    (&b[..b.len() - FIELDS], packed_number(b) & TREE_BIT != 0)
}

impl Slot {
    fn new(pack: u32, e: &PackEntry) -> Slot {
        let mut number = pack;
        if e.blob_type == BlobType::Tree {
            number |= TREE_BIT;
        }
        if e.compressed {
            number |= COMPRESSED_BIT;
        }
        Slot {
            id: e.id.0,
            pack: number,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }

    /// The builder's encoding (whole id); the index's is the same
    /// without the first byte.
    fn encode(&self) -> [u8; FULL] {
        let mut out = [0u8; FULL];
        out[..32].copy_from_slice(&self.id);
        for (i, v) in [self.pack, self.offset, self.length, self.raw_length]
            .into_iter()
            .enumerate()
        {
            out[32 + 4 * i..36 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes either encoding; `first` is the id's first byte when `b`
    /// lacks it.
    fn decode(first: Option<u8>, b: &[u8]) -> Slot {
        let mut id = [0u8; 32];
        match first {
            Some(f) => {
                id[0] = f;
                id[1..].copy_from_slice(&b[..31]);
            }
            None => id.copy_from_slice(&b[..32]),
        }
        let f = b.len() - FIELDS;
        Slot {
            id,
            pack: le(b, f),
            offset: le(b, f + 4),
            length: le(b, f + 8),
            raw_length: le(b, f + 12),
        }
    }

    fn pack_number(&self) -> u32 {
        self.pack & PACK_BITS
    }

    fn blob_type(&self) -> BlobType {
        if self.pack & TREE_BIT != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    }

    fn entry(&self) -> PackEntry {
        PackEntry {
            blob_type: self.blob_type(),
            id: Id(self.id),
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            compressed: self.pack & COMPRESSED_BIT != 0,
        }
    }
}

/// Collects the packs of index objects; [`IndexBuilder::build`] makes the
/// [`Index`].
#[derive(Debug, Default)]
pub struct IndexBuilder {
    pack_ids: Vec<Id>,
    numbers: HashMap<Id, u32>,
    /// Slots of [`FULL`] bytes, in the order added.
    slots: Vec<u8>,
}

impl IndexBuilder {
    /// A builder with room for `blobs` entries, so that building an index
    /// of a known size allocates it once.
    pub fn with_capacity(blobs: usize) -> Self {
        IndexBuilder {
            slots: Vec::with_capacity(blobs * FULL),
            ..Default::default()
        }
    }

    pub fn add_pack(&mut self, pack: &IndexPack) {
        let next = self.pack_ids.len() as u32;
        assert!(next < PACK_BITS, "more packs than an index can number");
        let number = *self.numbers.entry(pack.id).or_insert_with(|| {
            self.pack_ids.push(pack.id);
            next
        });
        self.slots.reserve(pack.entries.len() * FULL);
        for e in &pack.entries {
            self.slots.extend_from_slice(&Slot::new(number, e).encode());
        }
    }

    /// Sorts the entries and keeps one slot per blob: its first location
    /// (the one added first), the others apart in `more`. Then drops each
    /// id's first byte, in place: the index never holds more than the
    /// builder's 48 bytes a blob.
    pub fn build(self) -> Index {
        let IndexBuilder {
            pack_ids,
            numbers,
            mut slots,
        } = self;
        // Pack numbers grow in the order packs were added, so sorting by
        // (id, type, pack number) puts a blob's first location first.
        slots.as_chunks_mut::<FULL>().0.sort_unstable_by(|a, b| {
            sort_key(a)
                .cmp(&sort_key(b))
                .then(pack_number_of(a).cmp(&pack_number_of(b)))
        });
        let mut more: HashMap<(BlobType, Id), Vec<BlobLocation>> = HashMap::new();
        let mut kept = 0usize;
        for i in 0..slots.len() / FULL {
            let at = i * FULL;
            if kept > 0 {
                let last = (kept - 1) * FULL;
                if sort_key(&slots[at..at + FULL]) == sort_key(&slots[last..last + FULL]) {
                    // The same pack listed by two index objects is one
                    // location, not two.
                    let later = Slot::decode(None, &slots[at..at + FULL]);
                    if later.pack_number() != pack_number_of(&slots[last..last + FULL]) {
                        let locs = more.entry((later.blob_type(), Id(later.id))).or_default();
                        let pack = pack_ids[later.pack_number() as usize];
                        if !locs.iter().any(|l| l.pack == pack) {
                            locs.push(BlobLocation {
                                pack,
                                entry: later.entry(),
                            });
                        }
                    }
                    continue;
                }
            }
            slots.copy_within(at..at + FULL, kept * FULL);
            kept += 1;
        }
        let bits = directory_bits(kept);
        let directory = directory_of(kept, bits, |i| prefix_of(&slots[i * FULL..i * FULL + 4]));
        // Each slot loses its id's first byte: moved down in place, so no
        // second copy of the index is made.
        for i in 0..kept {
            slots.copy_within(i * FULL + 1..(i + 1) * FULL, i * SLOT);
        }
        slots.truncate(kept * SLOT);
        slots.shrink_to_fit();
        Index {
            slots,
            directory,
            directory_bits: bits,
            more,
            pack_ids,
            numbers,
        }
    }
}

/// The directory's bits for an index of `n` blobs: about sixteen slots
/// per entry (a quarter of a byte per blob), at least the first byte's
/// 256 entries (1 KiB), at most 2^20 (4 MiB); none for an empty index.
fn directory_bits(n: usize) -> u32 {
    if n == 0 {
        return 0;
    }
    (usize::BITS - 1 - n.leading_zeros())
        .saturating_sub(4)
        .clamp(MIN_DIRECTORY_BITS, MAX_DIRECTORY_BITS)
}

/// `directory[p]` is the first of `n` sorted slots whose id's leading
/// `bits` bits are at least `p`; `prefix(i)` is slot `i`'s id's first four
/// bytes.
fn directory_of(n: usize, bits: u32, prefix: impl Fn(usize) -> u32) -> Vec<u32> {
    if bits == 0 {
        return Vec::new();
    }
    let buckets = 1usize << bits;
    let mut directory = Vec::with_capacity(buckets + 1);
    let mut at = 0usize;
    for p in 0..buckets {
        while at < n && (prefix(at) >> (32 - bits)) < p as u32 {
            at += 1;
        }
        directory.push(at as u32);
    }
    directory.push(n as u32);
    directory
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
///
/// Memory: 47 bytes per blob (a sorted array of encoded [`Slot`]s, no
/// per-entry allocation or hash-table slack), plus a directory of the
/// ids' leading bits (about one `u32` per sixteen blobs, at least 1 KiB,
/// at most 4 MiB) that narrows each lookup to a handful of slots and
/// gives each slot its id's first byte, plus each pack's id once, plus the
/// rare second locations (docs/performance.md, "Cost at scale").
#[derive(Debug, Default, Clone)]
pub struct Index {
    /// One slot of [`SLOT`] bytes per blob (its first location), sorted by
    /// id and type.
    slots: Vec<u8>,
    /// `directory[p]` is the first slot whose id's leading
    /// `directory_bits` bits are at least `p` (`2^bits + 1` entries; empty
    /// for an empty index). `directory_bits` is at least 8, so the bucket
    /// of a slot gives its id's first byte.
    directory: Vec<u32>,
    directory_bits: u32,
    /// Further locations of blobs that are in more than one pack (rare, so
    /// kept apart: the common case costs nothing per blob).
    more: HashMap<(BlobType, Id), Vec<BlobLocation>>,
    /// Every pack ever numbered, by number (packs dropped by
    /// [`Index::retain_packs`] keep their number, unused).
    pack_ids: Vec<Id>,
    /// The packs indexed now, with their numbers.
    numbers: HashMap<Id, u32>,
}

impl Index {
    /// The index of these packs (see [`IndexBuilder`]).
    pub fn from_packs<'a>(packs: impl IntoIterator<Item = &'a IndexPack>) -> Index {
        let mut b = IndexBuilder::default();
        for p in packs {
            b.add_pack(p);
        }
        b.build()
    }

    /// The encoded slot `i`.
    fn raw(&self, i: usize) -> &[u8] {
        &self.slots[i * SLOT..(i + 1) * SLOT]
    }

    /// The first byte of slot `i`'s id: the directory's first-byte bucket
    /// that holds it (a binary search of 8 steps).
    fn first_byte(&self, i: usize) -> u8 {
        let shift = self.directory_bits - MIN_DIRECTORY_BITS;
        let start = |b: usize| self.directory[b << shift] as usize;
        // start(lo) <= i < start(hi)
        let (mut lo, mut hi) = (0usize, 256usize);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if start(mid) <= i {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo as u8
    }

    /// Slot `i`, decoded.
    fn slot(&self, i: usize) -> Slot {
        Slot::decode(Some(self.first_byte(i)), self.raw(i))
    }

    /// The blob's position among all indexed blobs (`0..blob_count()`, the
    /// order of [`Index::blobs`]): a dense number for per-blob bookkeeping
    /// in a bit set instead of a set of ids (prune's used blobs).
    pub fn position(&self, blob_type: BlobType, id: &Id) -> Option<usize> {
        if self.directory.is_empty() {
            return None;
        }
        let p = (prefix_of(&id.0) >> (32 - self.directory_bits)) as usize;
        let (lo, hi) = (self.directory[p] as usize, self.directory[p + 1] as usize);
        // Every slot of a bucket shares the id's first byte: the tails
        // decide.
        let key: (&[u8], bool) = (&id.0[1..], blob_type == BlobType::Tree);
        let run = &self.slots[lo * SLOT..hi * SLOT];
        let run = run.as_chunks::<SLOT>().0;
        let i = run.partition_point(|s| sort_key(s) < key);
        run.get(i).filter(|s| sort_key(*s) == key).map(|_| lo + i)
    }

    /// Every indexed pack with all of its indexed entries (first and
    /// further locations), one pack at a time: packs in the order they were
    /// first added, entries by offset. Costs four bytes per blob for the
    /// ordering, not a second copy of the index (prune writes the index
    /// objects of the packs it keeps from this).
    pub fn pack_entries(&self) -> impl Iterator<Item = IndexPack> + '_ {
        let mut order: Vec<u32> = (0..self.blob_count() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            let s = self.raw(i as usize);
            (pack_number_of(s), le(s, SLOT - FIELDS + 4))
        });
        let mut more: HashMap<u32, Vec<PackEntry>> = HashMap::new();
        for loc in self.more.values().flatten() {
            if let Some(&n) = self.numbers.get(&loc.pack) {
                more.entry(n).or_default().push(loc.entry);
            }
        }
        let mut numbers: Vec<u32> = self.numbers.values().copied().collect();
        numbers.sort_unstable();
        let number_of = |i: u32| pack_number_of(self.raw(i as usize));
        let mut at = 0usize;
        numbers.into_iter().filter_map(move |n| {
            let mut entries = Vec::new();
            while at < order.len() && number_of(order[at]) < n {
                at += 1; // not numbered now (cannot happen; never loop on it)
            }
            while at < order.len() && number_of(order[at]) == n {
                entries.push(self.slot(order[at] as usize).entry());
                at += 1;
            }
            if let Some(extra) = more.remove(&n) {
                entries.extend(extra);
                entries.sort_by_key(|e| e.offset);
            }
            (!entries.is_empty()).then(|| IndexPack {
                id: self.pack_ids[n as usize],
                entries,
            })
        })
    }

    /// Every blob grouped by the pack of its first location (the packs and
    /// entries [`Index::blobs`] gives, grouped): `check --read-data`'s
    /// per-pack lookup. Costs four bytes per blob and four per pack number,
    /// not a second copy of the index; [`FirstPacks::entries`] makes one
    /// pack's entries on demand. A blob's further locations are not in it.
    pub fn first_packs(&self) -> FirstPacks<'_> {
        // A counting sort by pack number: stable, so each pack's blobs stay
        // in the order of `blobs()`.
        let number = |i: usize| pack_number_of(self.raw(i)) as usize;
        let mut starts = vec![0u32; self.pack_ids.len() + 1];
        for i in 0..self.blob_count() {
            starts[number(i) + 1] += 1;
        }
        for n in 1..starts.len() {
            starts[n] += starts[n - 1];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; self.blob_count()];
        for i in 0..self.blob_count() {
            let at = &mut next[number(i)];
            order[*at as usize] = i as u32;
            *at += 1;
        }
        FirstPacks {
            index: self,
            starts,
            order,
        }
    }

    fn location(&self, s: &Slot) -> BlobLocation {
        BlobLocation {
            pack: self.pack_ids[s.pack_number() as usize],
            entry: s.entry(),
        }
    }

    /// Drops every location in a pack `keep` refuses (a pack that is not in
    /// storage), and the pack itself; a blob with no location left is no
    /// longer indexed. Returns the number of packs dropped.
    pub fn retain_packs(&mut self, mut keep: impl FnMut(&Id) -> bool) -> usize {
        let before = self.numbers.len();
        self.numbers.retain(|p, _| keep(p));
        if self.numbers.len() == before {
            return 0;
        }
        let numbers = &self.numbers;
        let pack_ids = &self.pack_ids;
        let more = &mut self.more;
        more.retain(|_, locs| {
            locs.retain(|l| numbers.contains_key(&l.pack));
            !locs.is_empty()
        });
        // Slots are kept in order, moved down in place; the directory at
        // the old bits counts the slots kept before each bucket.
        let bits = self.directory_bits;
        let mut directory = Vec::with_capacity(self.directory.len());
        let mut kept = 0usize;
        for p in 0..self.directory.len().saturating_sub(1) {
            directory.push(kept as u32);
            let first = (p >> (bits - MIN_DIRECTORY_BITS)) as u8;
            for i in self.directory[p] as usize..self.directory[p + 1] as usize {
                let at = i * SLOT;
                let s = Slot::decode(Some(first), &self.slots[at..at + SLOT]);
                if numbers.contains_key(&pack_ids[s.pack_number() as usize]) {
                    self.slots.copy_within(at..at + SLOT, kept * SLOT);
                    kept += 1;
                    continue;
                }
                // Promote another copy, if one is left.
                let key = (s.blob_type(), Id(s.id));
                if let Some(locs) = more.get_mut(&key) {
                    let loc = locs.remove(0);
                    if locs.is_empty() {
                        more.remove(&key);
                    }
                    self.slots[kept * SLOT..(kept + 1) * SLOT]
                        .copy_from_slice(&Slot::new(numbers[&loc.pack], &loc.entry).encode()[1..]);
                    kept += 1;
                }
            }
        }
        directory.push(kept as u32);
        self.slots.truncate(kept * SLOT);
        self.slots.shrink_to_fit();
        // Fewer blobs may want fewer bits: a coarser bucket starts where
        // its first finer bucket did.
        let new_bits = directory_bits(kept);
        self.directory = if new_bits == 0 {
            Vec::new()
        } else {
            let step = 1usize << (bits - new_bits);
            (0..=1usize << new_bits)
                .map(|q| directory[q * step])
                .collect()
        };
        self.directory_bits = new_bits;
        before - self.numbers.len()
    }

    /// The first merged location of the blob at `position` (a number
    /// [`Index::position`] gave for this index): a lookup by number, for
    /// callers that keep four-byte positions instead of 32-byte ids (the
    /// restore's selection). Panics past [`Index::blob_count`].
    pub fn at(&self, position: usize) -> BlobLocation {
        assert!(position < self.blob_count(), "no blob at {position}");
        self.location(&self.slot(position))
    }

    /// The first merged location of the blob of this type and id.
    pub fn get(&self, blob_type: BlobType, id: &Id) -> Option<BlobLocation> {
        // The id's first byte is known here: no directory search for it.
        self.position(blob_type, id)
            .map(|i| self.location(&Slot::decode(Some(id.0[0]), self.raw(i))))
    }

    /// Every indexed location of the blob, the one [`Index::get`] gives
    /// first; empty if it is not indexed.
    pub fn locations(&self, blob_type: BlobType, id: &Id) -> Vec<BlobLocation> {
        let Some(first) = self.get(blob_type, id) else {
            return Vec::new();
        };
        let mut out = vec![first];
        if let Some(more) = self.more.get(&(blob_type, *id)) {
            out.extend_from_slice(more);
        }
        out
    }

    pub fn contains(&self, blob_type: BlobType, id: &Id) -> bool {
        self.position(blob_type, id).is_some()
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.numbers.contains_key(id)
    }

    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.numbers.keys()
    }

    /// Every indexed blob once (its first location), in id order; the type
    /// is in `location.entry.blob_type`.
    pub fn blobs(&self) -> impl Iterator<Item = BlobLocation> + '_ {
        (0..self.blob_count()).map(|i| self.at(i))
    }

    /// Every location of every blob (a blob in two packs twice).
    pub fn all_locations(&self) -> impl Iterator<Item = BlobLocation> + '_ {
        self.blobs().chain(self.more.values().flatten().copied())
    }

    /// Number of indexed blobs (a data blob and a tree blob with the same
    /// id count twice: they are different blobs).
    pub fn blob_count(&self) -> usize {
        self.slots.len() / SLOT
    }

    pub fn blob_count_of(&self, t: BlobType) -> usize {
        let tree = t == BlobType::Tree;
        self.slots
            .as_chunks::<SLOT>()
            .0
            .iter()
            .filter(|s| (packed_number(s.as_slice()) & TREE_BIT != 0) == tree)
            .count()
    }
}

/// The blobs of an [`Index`] grouped by the pack of their first location
/// ([`Index::first_packs`]).
#[derive(Debug)]
pub struct FirstPacks<'a> {
    index: &'a Index,
    /// By pack number: where its slots start in `order` (one more entry
    /// than pack numbers, the last being the end).
    starts: Vec<u32>,
    /// Slot numbers, grouped by pack number, in slot order within a pack.
    order: Vec<u32>,
}

impl FirstPacks<'_> {
    /// The slot numbers of the blobs whose first location is `pack`.
    fn run(&self, pack: &Id) -> &[u32] {
        match self.index.numbers.get(pack) {
            Some(&n) => {
                let n = n as usize;
                &self.order[self.starts[n] as usize..self.starts[n + 1] as usize]
            }
            None => &[],
        }
    }

    /// The entries of the blobs whose first location is `pack`, in the
    /// order of [`Index::blobs`]; empty for a pack not indexed, or whose
    /// blobs all have an earlier location elsewhere.
    pub fn entries(&self, pack: &Id) -> Vec<PackEntry> {
        self.run(pack)
            .iter()
            .map(|&i| self.index.slot(i as usize).entry())
            .collect()
    }

    /// Whether some blob's first location is `pack`.
    pub fn has_entries(&self, pack: &Id) -> bool {
        !self.run(pack).is_empty()
    }
}

/// An id's first four bytes, big-endian: the directory's key.
fn prefix_of(id: &[u8]) -> u32 {
    u32::from_be_bytes([id[0], id[1], id[2], id[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: BlobType, id: u8, offset: u32) -> PackEntry {
        let mut bytes = [0u8; 32];
        bytes[0] = id;
        bytes[31] = id;
        PackEntry {
            blob_type: t,
            id: Id(bytes),
            offset,
            length: 10 + id as u32,
            raw_length: 20 + id as u32,
            compressed: id.is_multiple_of(2),
        }
    }

    fn pack(n: u8, entries: Vec<PackEntry>) -> IndexPack {
        IndexPack {
            id: Id([n; 32]),
            entries,
        }
    }

    #[test]
    fn lookups_keep_types_apart_and_the_first_location_first() {
        let a = entry(BlobType::Data, 7, 0);
        let t = entry(BlobType::Tree, 7, 50);
        let b = entry(BlobType::Data, 9, 100);
        let index = Index::from_packs(&[
            pack(1, vec![a, t]),
            pack(2, vec![b, a]),
            // The same pack listed twice is one location.
            pack(1, vec![a, t]),
        ]);
        assert_eq!(index.blob_count(), 3);
        assert_eq!(index.blob_count_of(BlobType::Tree), 1);
        let loc = index.get(BlobType::Data, &a.id).unwrap();
        assert_eq!((loc.pack, loc.entry), (Id([1; 32]), a));
        assert_eq!(index.get(BlobType::Tree, &a.id).unwrap().entry, t);
        assert_eq!(index.get(BlobType::Tree, &b.id), None);
        let locs = index.locations(BlobType::Data, &a.id);
        assert_eq!(
            locs.iter().map(|l| l.pack).collect::<Vec<_>>(),
            [Id([1; 32]), Id([2; 32])]
        );
        assert_eq!(index.locations(BlobType::Tree, &a.id).len(), 1);
        assert_eq!(index.all_locations().count(), 4);
    }

    #[test]
    fn dropping_a_pack_promotes_the_next_copy_and_forgets_lone_blobs() {
        let a = entry(BlobType::Data, 7, 0);
        let b = entry(BlobType::Data, 9, 100);
        let mut index = Index::from_packs(&[pack(1, vec![a, b]), pack(2, vec![a])]);
        assert_eq!(index.retain_packs(|p| *p != Id([1; 32])), 1);
        assert!(!index.has_pack(&Id([1; 32])));
        assert_eq!(index.get(BlobType::Data, &a.id).unwrap().pack, Id([2; 32]));
        assert_eq!(index.locations(BlobType::Data, &a.id).len(), 1);
        assert!(!index.contains(BlobType::Data, &b.id));
        assert_eq!(index.retain_packs(|_| true), 0);
    }

    #[test]
    fn positions_are_dense_and_pack_entries_give_back_every_pack_whole() {
        let a = entry(BlobType::Data, 7, 0);
        let t = entry(BlobType::Tree, 7, 50);
        let b = entry(BlobType::Data, 9, 100);
        let c = entry(BlobType::Data, 3, 30);
        // Pack 3 holds only a second copy of `a`: it has no slot of its own
        // and must still come back whole.
        let packs = [
            pack(1, vec![a, t]),
            pack(2, vec![b, c]),
            pack(3, vec![a]),
            pack(1, vec![a, t]),
        ];
        let index = Index::from_packs(&packs);
        let mut seen: Vec<usize> = index
            .blobs()
            .map(|l| index.position(l.entry.blob_type, &l.entry.id).unwrap())
            .collect();
        let in_order = seen.clone();
        seen.sort();
        assert_eq!(seen, (0..index.blob_count()).collect::<Vec<_>>());
        assert_eq!(in_order, seen, "positions follow the order of blobs()");
        assert_eq!(index.position(BlobType::Tree, &b.id), None);
        // A position gives back the blob's first location.
        for l in [a, t, b, c] {
            let at = index.position(l.blob_type, &l.id).unwrap();
            assert_eq!(index.at(at), index.get(l.blob_type, &l.id).unwrap());
        }

        let back: Vec<IndexPack> = index.pack_entries().collect();
        assert_eq!(
            back,
            [
                pack(1, vec![a, t]),
                pack(2, vec![c, b]), // by offset
                pack(3, vec![a]),
            ]
        );
        // A dropped pack is not given back; the promoted copy is.
        let mut index = index;
        index.retain_packs(|p| *p != Id([1; 32]));
        let back: Vec<IndexPack> = index.pack_entries().collect();
        assert_eq!(back, [pack(2, vec![c, b]), pack(3, vec![a])]);
    }

    #[test]
    fn first_packs_group_blobs_as_the_naive_grouping_does() {
        // Several packs, a blob in two packs (its first location wins), a
        // pack listed twice, a pack holding only a second copy, and enough
        // blobs that the directory is used.
        let mut packs = Vec::new();
        for p in 0..6u8 {
            let entries = (0..40u32)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..4]
                        .copy_from_slice(&(i.wrapping_mul(2_654_435_761) ^ p as u32).to_be_bytes());
                    id[4] = p;
                    PackEntry {
                        blob_type: if i % 5 == 0 {
                            BlobType::Tree
                        } else {
                            BlobType::Data
                        },
                        id: Id(id),
                        offset: 1000 - i * 10,
                        length: 1 + i,
                        raw_length: 2 + i,
                        compressed: i % 2 == 0,
                    }
                })
                .collect();
            packs.push(pack(p + 10, entries));
        }
        let dup = packs[1].entries[3];
        packs[4].entries.push(PackEntry { offset: 7, ..dup });
        packs.push(pack(20, vec![PackEntry { offset: 9, ..dup }]));
        packs.push(packs[2].clone());
        let index = Index::from_packs(&packs);

        let mut naive: HashMap<Id, Vec<PackEntry>> = HashMap::new();
        for loc in index.blobs() {
            naive.entry(loc.pack).or_default().push(loc.entry);
        }
        let groups = index.first_packs();
        let mut all = 0;
        let ids: std::collections::BTreeSet<Id> = packs.iter().map(|p| p.id).collect();
        for p in ids.into_iter().chain([Id([99; 32])]) {
            let want = naive.get(&p).cloned().unwrap_or_default();
            assert_eq!(groups.entries(&p), want, "pack {p}");
            assert_eq!(groups.has_entries(&p), !want.is_empty());
            all += want.len();
        }
        assert_eq!(all, index.blob_count());
        // The duplicate is in its first pack only; pack 20 has none.
        assert!(groups.entries(&Id([11; 32])).contains(&dup));
        assert!(!groups.entries(&Id([14; 32])).iter().any(|e| e.id == dup.id));
        assert!(!groups.has_entries(&Id([20; 32])));
        assert_eq!(groups.entries(&Id([10; 32])).len(), 40);

        // After a pack is dropped, its blobs' next copies are grouped with
        // their pack.
        let mut index = index;
        index.retain_packs(|p| *p != Id([11; 32]));
        let groups = index.first_packs();
        assert!(groups.entries(&Id([11; 32])).is_empty());
        assert!(
            groups
                .entries(&Id([14; 32]))
                .iter()
                .any(|e| e.id == dup.id && e.offset == 7)
        );
    }

    /// Ids whose first bytes take every value, several times each, so
    /// every first-byte bucket is used, and blobs in two packs.
    fn spread_packs(per_pack: u32, packs: u8) -> Vec<IndexPack> {
        (0..packs)
            .map(|p| {
                let entries = (0..per_pack)
                    .map(|i| {
                        let mut id = [0u8; 32];
                        let x = (i * packs as u32 + p as u32).wrapping_mul(2_654_435_761);
                        id[..4].copy_from_slice(&x.to_be_bytes());
                        id[31] = p;
                        PackEntry {
                            blob_type: if i % 7 == 0 {
                                BlobType::Tree
                            } else {
                                BlobType::Data
                            },
                            id: Id(id),
                            offset: i * 100,
                            length: 1 + i,
                            raw_length: 3 + i,
                            compressed: i % 3 == 0,
                        }
                    })
                    .collect();
                pack(p, entries)
            })
            .collect()
    }

    #[test]
    fn a_slot_keeps_47_bytes_and_its_id_whole() {
        let mut packs = spread_packs(300, 8);
        // A blob in two packs, its second copy in a later pack.
        let dup = packs[2].entries[5];
        packs[6].entries.push(PackEntry { offset: 77, ..dup });
        let index = Index::from_packs(&packs);
        let n = index.blob_count();
        assert_eq!(n, 300 * 8);
        // 47 bytes a blob, no spare capacity left by the build's 48.
        assert_eq!(index.slots.len(), n * SLOT);
        assert_eq!(index.slots.capacity(), n * SLOT);
        let mut firsts = std::collections::BTreeSet::new();
        for (i, loc) in index.blobs().enumerate() {
            // Each blob comes back whole (its id's first byte from the
            // directory), at its position, from its own pack.
            let want = packs
                .iter()
                .find(|p| p.entries.contains(&loc.entry))
                .expect("an added entry");
            assert_eq!(loc.pack, want.id);
            assert_eq!(index.position(loc.entry.blob_type, &loc.entry.id), Some(i));
            assert_eq!(index.get(loc.entry.blob_type, &loc.entry.id), Some(loc));
            firsts.insert(loc.entry.id.0[0]);
        }
        assert_eq!(firsts.len(), 256, "every first byte is used");
        assert_eq!(index.locations(BlobType::Data, &dup.id).len(), 2);
    }

    #[test]
    fn dropping_most_packs_keeps_every_other_blob_findable() {
        // From 40,000 blobs (a directory of 2^11 buckets) down to one
        // pack's 5,001 (2^8) and then to none: the directory is rebuilt at
        // fewer bits, and the kept slots and the promoted copy are found.
        let mut packs = spread_packs(5000, 8);
        let dup = packs[1].entries[9];
        packs[7].entries.push(PackEntry { offset: 99, ..dup });
        let mut index = Index::from_packs(&packs);
        assert_eq!(index.directory_bits, 11);
        assert_eq!(index.retain_packs(|p| *p == Id([7; 32])), 7);
        assert_eq!(index.directory_bits, 8);
        assert_eq!(index.blob_count(), 5001);
        assert_eq!(index.slots.len(), 5001 * SLOT);
        for e in &packs[7].entries {
            let loc = index.get(e.blob_type, &e.id).unwrap();
            assert_eq!((loc.pack, loc.entry), (Id([7; 32]), *e));
        }
        for e in &packs[0].entries {
            assert!(!index.contains(e.blob_type, &e.id));
        }
        let positions: Vec<usize> = index
            .blobs()
            .map(|l| index.position(l.entry.blob_type, &l.entry.id).unwrap())
            .collect();
        assert_eq!(positions, (0..5001).collect::<Vec<_>>());

        let mut lone = Index::from_packs(&[pack(1, vec![entry(BlobType::Data, 5, 0)])]);
        assert_eq!(lone.retain_packs(|_| false), 1);
        assert_eq!(lone.blob_count(), 0);
        assert!(!lone.contains(BlobType::Data, &entry(BlobType::Data, 5, 0).id));
        assert_eq!(lone.blobs().count(), 0);
        assert_eq!(Index::default().get(BlobType::Data, &Id([0; 32])), None);
    }

    #[test]
    fn the_directory_finds_every_blob_of_a_large_index() {
        // Ids spread over the whole range, so every directory bucket is
        // used, and absent ids between them.
        let mut entries = Vec::new();
        for i in 0..5000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761) & !1).to_be_bytes());
            id[4..8].copy_from_slice(&i.to_le_bytes());
            entries.push(PackEntry {
                blob_type: if i.is_multiple_of(3) {
                    BlobType::Tree
                } else {
                    BlobType::Data
                },
                id: Id(id),
                offset: i,
                length: 1,
                raw_length: 1,
                compressed: false,
            });
        }
        let index = Index::from_packs(&[pack(1, entries.clone())]);
        assert!(index.directory_bits > 0);
        for e in &entries {
            assert_eq!(index.get(e.blob_type, &e.id).map(|l| l.entry), Some(*e));
            let other = match e.blob_type {
                BlobType::Data => BlobType::Tree,
                BlobType::Tree => BlobType::Data,
            };
            assert!(!index.contains(other, &e.id));
            let mut absent = e.id;
            absent.0[3] |= 1;
            assert!(!index.contains(e.blob_type, &absent));
        }
    }
}
