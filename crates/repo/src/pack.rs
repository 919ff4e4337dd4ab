//! Packs: many encrypted blobs in one object, with an encrypted trailer listing
//! them so the index can always be rebuilt from packs alone.
//!
//! Layout: `blob_0 || blob_1 || ... || sealed trailer || trailer length (u32 LE)`.
//! Each blob is `seal(payload, aad = type || compressed || blob id)` where the
//! payload is the zstd-compressed plaintext, or the plaintext itself when
//! compression would not make it smaller. The trailer is the postcard
//! encoding of `Vec<PackEntry>`, sealed with [`TRAILER_AAD`]. A pack is named
//! by the BLAKE3 of all its bytes.
//!
//! This module owns the format: sealing and opening one blob, building a
//! pack, decoding its trailer. Reading stored packs (ranges, tiers, memory)
//! is `packread`'s job, which calls [`open_blob`] here.

use serde::{Deserialize, Serialize};

use crate::crypto::{MAX_SEAL_OVERHEAD, MasterKey, SEAL_OVERHEAD};
use crate::{Error, Id, Result};

pub(crate) const TRAILER_AAD: &[u8] = b"lifeboat pack trailer v1";
/// Largest trailer accepted when reading: bounds the allocation a damaged or
/// hostile length field can cause (≈ 1.4M entries of 37-49 bytes; the
/// writer closes a pack at [`MAX_PACK_ENTRIES`] so it never comes close).
pub(crate) const MAX_TRAILER_LEN: u32 = 64 * 1024 * 1024;

/// Most blobs the writer puts in one pack (keeps trailers far below
/// [`MAX_TRAILER_LEN`] even for packs of tiny blobs).
pub const MAX_PACK_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobType {
    Data,
    Tree,
}

impl BlobType {
    fn tag(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }
}

/// One blob's place in a pack, as recorded in the trailer and the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub blob_type: BlobType,
    pub id: Id,
    pub offset: u32,
    /// Stored (sealed) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
    pub compressed: bool,
}

pub(crate) fn blob_aad(blob_type: BlobType, compressed: bool, id: &Id) -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[0] = blob_type.tag();
    aad[1] = compressed as u8;
    aad[2..].copy_from_slice(&id.0);
    aad
}

impl PackEntry {
    /// Whether the entry's lengths are within what any reader accepts:
    /// plaintext at most [`crate::limits::MAX_BLOB_LEN`], stored length
    /// at least the seal's overhead and at most the plaintext plus the
    /// largest overhead (a write-only key's, [`MAX_SEAL_OVERHEAD`]; a blob
    /// is stored compressed only when that is shorter). Checked when
    /// trailers and index objects are decoded, so a crafted length (a
    /// 4 GiB "chunk") never reaches an allocation.
    pub fn lengths_in_bounds(&self) -> bool {
        let max_raw = crate::limits::MAX_BLOB_LEN;
        self.raw_length <= max_raw
            && (self.length as usize) >= SEAL_OVERHEAD
            && self.length as u64 <= self.raw_length as u64 + MAX_SEAL_OVERHEAD as u64
    }
}

/// A blob compressed and sealed, ready to be appended to a pack; its
/// bytes are borrowed from the sealing thread's buffer ([`seal_blob`]).
#[derive(Debug)]
pub struct SealedBlob<'a> {
    pub blob_type: BlobType,
    pub id: Id,
    pub raw_length: u32,
    pub compressed: bool,
    pub bytes: &'a [u8],
}

/// Per thread, the buffers one blob is compressed and then sealed into,
/// kept between blobs: a blob costs no allocation of its own (chunks of
/// 1 MiB and more would each take fresh pages from the system, see the
/// allocator's `oversize_threshold` in the binary's main.rs). A buffer
/// larger than [`SEAL_BUFFER_KEEP`] (a directory listing can be a
/// 256 MiB blob) is let go after its blob.
#[derive(Default)]
struct SealBuffers {
    compressed: Vec<u8>,
    sealed: Vec<u8>,
}

/// The largest seal buffer a thread keeps: room for a chunk of the
/// chunker's default 8 MiB maximum, compressed or sealed, twice over.
const SEAL_BUFFER_KEEP: usize = 16 << 20;

thread_local! {
    static SEAL_BUFFERS: std::cell::RefCell<SealBuffers> =
        std::cell::RefCell::new(SealBuffers::default());
}

/// Compresses (if it helps; `level` 0 disables compression) and seals one
/// blob whose plaintext is `data` and whose id is `id`, and hands it to
/// `then` (which appends it to a pack or lets it go).
///
/// `zstd` is a payload already made, a frame that decompresses to `data`
/// (checked by the caller): what `copy` has of a blob the source stored
/// compressed. Where this repository compresses and that payload is the
/// shorter, it is sealed as it is instead of compressing `data` again (a
/// third of a copy's CPU), and the blob keeps the source's level.
pub fn seal_blob<T>(
    key: &MasterKey,
    blob_type: BlobType,
    id: Id,
    data: &[u8],
    level: i32,
    zstd: Option<&[u8]>,
    then: impl FnOnce(&SealedBlob<'_>) -> T,
) -> T {
    SEAL_BUFFERS.with(|cell| {
        let mut guard = cell.borrow_mut();
        let SealBuffers { compressed, sealed } = &mut *guard;
        let payload = match zstd {
            Some(z) if level > 0 && z.len() < data.len() => Some(z),
            _ if level > 0
                && compress_into(data, level, compressed)
                && compressed.len() < data.len() =>
            {
                Some(&compressed[..])
            }
            _ => None,
        };
        let is_compressed = payload.is_some();
        sealed.clear();
        key.seal_into(
            payload.unwrap_or(data),
            &blob_aad(blob_type, is_compressed, &id),
            sealed,
        );
        let result = then(&SealedBlob {
            blob_type,
            id,
            raw_length: data.len() as u32,
            compressed: is_compressed,
            bytes: sealed,
        });
        free_over(SEAL_BUFFER_KEEP, [compressed, sealed]);
        result
    })
}

/// [`open_blob`], also giving back the decrypted zstd payload of a blob
/// stored compressed (none for one stored as it is).
pub(crate) fn open_blob_keeping_payload(
    key: &MasterKey,
    entry: &PackEntry,
    sealed: &[u8],
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut scratch = BlobScratch::default();
    open_blob_in(key, entry, sealed, &mut scratch)?;
    Ok(if entry.compressed {
        (scratch.plain, Some(scratch.payload))
    } else {
        (scratch.payload, None)
    })
}

/// Opens one sealed blob and checks that its plaintext hashes to its id.
pub(crate) fn open_blob(key: &MasterKey, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
    open_blob_keeping_payload(key, entry, sealed).map(|(plain, _)| plain)
}

/// The buffers [`open_blob_in`] decrypts and decompresses into, kept
/// between blobs by a caller that uses each plaintext before opening the
/// next (`check --read-data`, restore), so a pack's blobs reuse two
/// buffers instead of allocating two each.
#[derive(Debug, Default)]
pub struct BlobScratch {
    payload: Vec<u8>,
    plain: Vec<u8>,
}

impl BlobScratch {
    /// Frees either buffer whose capacity is over `bytes`: a caller that
    /// keeps the buffers between packs keeps the usual blob's worth, not
    /// the largest blob's (up to the chunker's maximum) for good.
    pub fn trim(&mut self, bytes: usize) {
        free_over(bytes, [&mut self.payload, &mut self.plain]);
    }
}

/// Frees each of `bufs` whose capacity is over `bytes` (buffers kept
/// between blobs keep the usual blob's worth, not the largest's).
fn free_over(bytes: usize, bufs: [&mut Vec<u8>; 2]) {
    for buf in bufs {
        if buf.capacity() > bytes {
            *buf = Vec::new();
        }
    }
}

/// [`open_blob`] into `scratch`: the blob's plaintext, borrowed from it.
pub(crate) fn open_blob_in<'s>(
    key: &MasterKey,
    entry: &PackEntry,
    sealed: &[u8],
    scratch: &'s mut BlobScratch,
) -> Result<&'s [u8]> {
    let what = || format!("blob {}", entry.id);
    let aad = blob_aad(entry.blob_type, entry.compressed, &entry.id);
    if !key.open_into(sealed, &aad, &mut scratch.payload) {
        return Err(Error::corrupt(what(), "authentication failed"));
    }
    let plain = if entry.compressed {
        decompress_into(
            &scratch.payload,
            entry.raw_length as usize,
            &mut scratch.plain,
        )
        .map_err(|e| Error::corrupt(what(), format!("decompression failed: {e}")))?;
        &scratch.plain
    } else {
        &scratch.payload
    };
    if plain.len() != entry.raw_length as usize || key.blob_id(plain) != entry.id {
        return Err(Error::corrupt(what(), "content does not match its id"));
    }
    Ok(plain)
}

thread_local! {
    // zstd contexts are costly to set up (hundreds of KiB of tables); reusing
    // one per thread makes small blobs cheap. Keyed by level for compressors.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `data` into `out` (replacing what it held); false when zstd
/// failed (the blob is then stored as it is).
fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    out.clear();
    let bound = zstd::zstd_safe::compress_bound(data.len());
    if out.capacity() < bound {
        // A fresh vector, not `reserve`: growing would copy the old
        // buffer's bytes for nothing.
        *out = Vec::with_capacity(bound);
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            match zstd::bulk::Compressor::new(level) {
                Ok(c) => *slot = Some((level, c)),
                Err(_) => return false,
            }
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress_to_buffer(data, out).is_ok()
    })
}

/// Decompresses into `out` (replacing what it held), at most `raw_length`
/// bytes (more is an error: the trailer said how long the plaintext is).
fn decompress_into(payload: &[u8], raw_length: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    out.reserve(raw_length);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        // Writes into `out`'s spare room, never past its capacity (which
        // `reserve` may have made larger than `raw_length`: the length
        // check after it catches a longer plaintext).
        slot.as_mut()
            .expect("set above")
            .decompress_to_buffer(payload, out)
            .map(|_| ())
    })
}

/// Accumulates sealed blobs into one pack.
#[derive(Debug, Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A complete pack, named and ready to upload.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: Id,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Appends one sealed blob. The first blob of a pack reserves
    /// `reserve` bytes (what the pack will hold when the writer closes
    /// it), so the pack is not copied into ever larger buffers as it
    /// grows; pages reserved and never written cost no memory.
    pub fn push(&mut self, blob: &SealedBlob<'_>, reserve: usize) {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(reserve.max(blob.bytes.len()));
        }
        self.entries.push(PackEntry {
            blob_type: blob.blob_type,
            id: blob.id,
            offset: self.bytes.len() as u32,
            length: blob.bytes.len() as u32,
            raw_length: blob.raw_length,
            compressed: blob.compressed,
        });
        self.bytes.extend_from_slice(blob.bytes);
    }

    pub fn finish(mut self, key: &MasterKey) -> FinishedPack {
        let trailer = postcard::to_allocvec(&self.entries).expect("entries serialize");
        let sealed = key.seal(&trailer, TRAILER_AAD);
        self.bytes.extend_from_slice(&sealed);
        self.bytes
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        FinishedPack {
            id: Id::of_bytes(&self.bytes),
            bytes: self.bytes,
            entries: self.entries,
        }
    }
}

/// Where the trailer lies, given the pack size and its last four bytes.
pub(crate) fn trailer_range(pack: &Id, pack_size: u64, len_bytes: &[u8]) -> Result<(u64, u64)> {
    let len = u32::from_le_bytes(
        len_bytes
            .try_into()
            .map_err(|_| Error::corrupt(format!("pack {pack}"), "short trailer length"))?,
    );
    if len > MAX_TRAILER_LEN || (len as u64) + 4 > pack_size || (len as usize) < SEAL_OVERHEAD {
        return Err(Error::corrupt(
            format!("pack {pack}"),
            "trailer length out of range",
        ));
    }
    Ok((pack_size - 4 - len as u64, len as u64))
}

/// Decrypts and decodes a trailer, checking every entry lies before it.
pub(crate) fn decode_trailer(
    key: &MasterKey,
    pack: &Id,
    trailer_offset: u64,
    sealed: &[u8],
) -> Result<Vec<PackEntry>> {
    let what = || format!("pack {pack}");
    let plain = key
        .open(sealed, TRAILER_AAD)
        .ok_or_else(|| Error::corrupt(what(), "trailer authentication failed"))?;
    let entries: Vec<PackEntry> = postcard::from_bytes(&plain)
        .map_err(|e| Error::corrupt(what(), format!("trailer: {e}")))?;
    for e in &entries {
        if e.offset as u64 + e.length as u64 > trailer_offset {
            return Err(Error::corrupt(what(), "trailer entry outside the pack"));
        }
        if !e.lengths_in_bounds() {
            return Err(Error::corrupt(what(), "trailer entry length out of range"));
        }
    }
    Ok(entries)
}

/// Reads a whole pack's trailer from its bytes.
pub(crate) fn parse_pack(key: &MasterKey, pack: &Id, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    if bytes.len() < 4 {
        return Err(Error::corrupt(format!("pack {pack}"), "too short"));
    }
    let (off, len) = trailer_range(pack, bytes.len() as u64, &bytes[bytes.len() - 4..])?;
    decode_trailer(key, pack, off, &bytes[off as usize..(off + len) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimming frees only the buffers over the limit.
    #[test]
    fn trim_frees_only_buffers_over_the_limit() {
        let mut scratch = BlobScratch {
            payload: Vec::with_capacity(4 << 20),
            plain: Vec::with_capacity(1 << 20),
        };
        scratch.trim(2 << 20);
        assert_eq!(scratch.payload.capacity(), 0);
        assert_eq!(scratch.plain.capacity(), 1 << 20);
    }

    #[test]
    fn pack_round_trip_and_damage() {
        let k = MasterKey::generate();
        let mut b = PackBuilder::default();
        let datas: Vec<Vec<u8>> = vec![vec![0u8; 10000], b"hello".to_vec(), (0..255u8).collect()];
        for d in &datas {
            seal_blob(&k, BlobType::Data, k.blob_id(d), d, 3, None, |s| {
                b.push(s, 0)
            });
        }
        let p = b.finish(&k);
        let entries = parse_pack(&k, &p.id, &p.bytes).unwrap();
        assert_eq!(entries, p.entries);
        assert!(entries[0].compressed && !entries[1].compressed);
        for (e, d) in entries.iter().zip(&datas) {
            let s = &p.bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&k, e, s).unwrap(), d);
            let mut bad = s.to_vec();
            bad[SEAL_OVERHEAD] ^= 0x10;
            assert!(open_blob(&k, e, &bad).is_err());
        }
        // Any truncation is an error, not a panic.
        for n in 0..p.bytes.len().min(64) {
            assert!(parse_pack(&k, &p.id, &p.bytes[..n]).is_err());
        }
    }

    /// A blob larger than the seal buffers a thread keeps (a directory
    /// listing can be one) is sealed as any other and its buffers are let
    /// go after it; a usual blob's are kept for the next.
    #[test]
    fn seal_buffers_keep_a_chunks_worth_not_a_huge_blobs() {
        let k = MasterKey::generate();
        let capacities = || {
            SEAL_BUFFERS.with(|c| {
                let c = c.borrow();
                (c.compressed.capacity(), c.sealed.capacity())
            })
        };
        let huge = vec![3u8; SEAL_BUFFER_KEEP + 1];
        let small: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = PackBuilder::default();
        seal_blob(&k, BlobType::Tree, k.blob_id(&huge), &huge, 3, None, |s| {
            b.push(s, 0)
        });
        // Compressed, its sealed copy is small; its compression room was not.
        assert_eq!(capacities().0, 0);
        seal_blob(
            &k,
            BlobType::Tree,
            k.blob_id(&small),
            &small,
            3,
            None,
            |s| b.push(s, 0),
        );
        let (compressed, sealed) = capacities();
        assert!(compressed >= zstd::zstd_safe::compress_bound(small.len()) && sealed > 0);
        let p = b.finish(&k);
        let entries = parse_pack(&k, &p.id, &p.bytes).unwrap();
        for (e, d) in entries.iter().zip([&huge, &small]) {
            let s = &p.bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&k, e, s).unwrap(), d);
        }
    }

    /// One scratch reused across blobs of every kind and size gives each
    /// blob its own plaintext: a larger plaintext left in a buffer, or a
    /// blob that failed to open, never shows through in the next.
    #[test]
    fn a_reused_scratch_opens_each_blob_as_a_fresh_one_would() {
        let k = MasterKey::generate();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        let incompressible: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let datas = [
            big,
            b"hi".to_vec(),
            incompressible,
            vec![9u8; 40_000],
            vec![],
        ];
        let mut b = PackBuilder::default();
        for d in &datas {
            seal_blob(&k, BlobType::Data, k.blob_id(d), d, 3, None, |s| {
                b.push(s, 0)
            });
        }
        let p = b.finish(&k);
        let entries = parse_pack(&k, &p.id, &p.bytes).unwrap();
        assert!(entries.iter().any(|e| e.compressed) && entries.iter().any(|e| !e.compressed));
        let sealed = |e: &PackEntry| &p.bytes[e.offset as usize..(e.offset + e.length) as usize];
        let mut scratch = BlobScratch::default();
        // Every blob after the one before, largest first, then in reverse.
        for (e, d) in entries
            .iter()
            .zip(&datas)
            .chain(entries.iter().zip(&datas).rev())
        {
            assert_eq!(
                open_blob_in(&k, e, sealed(e), &mut scratch).unwrap(),
                &d[..]
            );
        }
        for (i, (e, d)) in entries.iter().zip(&datas).enumerate() {
            // A damaged copy fails, and so do these bytes under the wrong
            // entry; the intact blob after them opens to its own bytes.
            let mut bad = sealed(e).to_vec();
            let at = bad.len() - 1;
            bad[at] ^= 0x01;
            assert!(open_blob_in(&k, e, &bad, &mut scratch).is_err(), "blob {i}");
            let other = &entries[(i + 1) % entries.len()];
            assert!(open_blob_in(&k, other, sealed(e), &mut scratch).is_err());
            assert_eq!(
                open_blob_in(&k, e, sealed(e), &mut scratch).unwrap(),
                &d[..]
            );
        }
    }
}
