//! Content-defined chunking with the repository's FastCDC parameters.

use std::io::Read;

use fastcdc::v2020::Normalization;

use crate::ChunkerParams;

/// Splits a byte stream into chunks whose boundaries depend on content (so an
/// insertion shifts only nearby boundaries) and on the repository seed.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    params: ChunkerParams,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        Chunker { params }
    }

    pub fn min_size(&self) -> usize {
        self.params.min_size as usize
    }

    /// The chunks of `source` cut as `cut` says, read through `buffer`
    /// (any vector: its memory is reused, and [`Chunks::into_buffer`]
    /// gives it back for the next stream). Blocks are never larger than
    /// the repository's `max_size` (rounded down to a multiple of `page`):
    /// a block size above it is lowered, and a repository whose
    /// `max_size` is below one page cuts by content.
    pub fn chunks<R: Read>(&self, source: R, cut: Cut, buffer: Vec<u8>) -> Chunks<R> {
        self.chunks_with_room(source, cut, buffer, READ_ROOM)
    }

    /// [`Chunker::chunks`] with `read_room` beyond the longest chunk
    /// (tests use a little, so that streams of a few KiB move and cut
    /// across the buffer's end as large files do).
    fn chunks_with_room<R: Read>(
        &self,
        source: R,
        cut: Cut,
        buffer: Vec<u8>,
        read_room: usize,
    ) -> Chunks<R> {
        let p = self.params;
        let max = p.max_size as usize;
        let how = match cut {
            Cut::Blocks { block, page } if block > 0 && max - max % page.max(1) > 0 => {
                How::Blocks(block.min(max - max % page.max(1)))
            }
            _ => {
                let (mask_s, mask_l) =
                    fastcdc::v2020::select_masks(p.avg_size as usize, Normalization::Level1);
                let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(p.seed);
                How::Content(Box::new(Cdc {
                    min: p.min_size as usize,
                    avg: p.avg_size as usize,
                    max,
                    mask_s,
                    mask_l,
                    gear,
                    gear_ls,
                }))
            }
        };
        Chunks {
            source,
            buf: buffer,
            start: 0,
            end: 0,
            eof: false,
            how,
            read_room: read_room.max(1),
        }
    }

    /// [`Chunker::chunks`] as owned vectors, one fresh allocation each:
    /// for a caller that hands chunks to other threads.
    pub fn cut<'a, R: Read + 'a>(
        &'a self,
        source: R,
        cut: Cut,
    ) -> impl Iterator<Item = std::io::Result<Vec<u8>>> + 'a {
        let mut chunks = self.chunks(source, cut, Vec::new());
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            match chunks.next_chunk() {
                Ok(Some(c)) => Some(Ok(c.to_vec())),
                Ok(None) => None,
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        })
    }
}

/// The content-defined cut's parameters: FastCDC 2020 at normalization
/// level 1, with the repository's sizes and seed (the masks and gear
/// tables the fastcdc crate's own `StreamCDC` derives from them, so the
/// cut points are the same as that iterator's, which the repository used
/// before; a test holds them equal).
struct Cdc {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: std::borrow::Cow<'static, [u64]>,
    gear_ls: std::borrow::Cow<'static, [u64]>,
}

enum How {
    Content(Box<Cdc>),
    Blocks(usize),
}

impl How {
    /// The longest chunk: a cut point depends on no byte past it.
    fn longest(&self) -> usize {
        match self {
            How::Content(c) => c.max,
            How::Blocks(b) => *b,
        }
    }

    /// The length of the chunk at the front of `ahead`, or `None` when it
    /// cannot be told without more bytes (`ended`: the stream has no
    /// more). A content-defined cut that FastCDC finds before the end of
    /// what is there is the cut it would find with more bytes: it scans
    /// from the front, and with fewer bytes it tests a prefix of the same
    /// positions under the same masks (fewer than `avg` bytes only move
    /// the switch from the strict to the relaxed mask past the end). With
    /// no cut found before the end, it needs the next bytes, up to
    /// `max_size`.
    fn cut(&self, ahead: &[u8], ended: bool) -> Option<usize> {
        match self {
            How::Blocks(block) => (ended || ahead.len() >= *block).then(|| ahead.len().min(*block)),
            How::Content(c) => {
                let (_, len) = fastcdc::v2020::cut_gear(
                    ahead,
                    c.min,
                    c.avg,
                    c.max,
                    c.mask_s,
                    c.mask_l,
                    c.mask_s << 1,
                    c.mask_l << 1,
                    &c.gear,
                    &c.gear_ls,
                );
                (ended || len < ahead.len() || ahead.len() >= c.max).then_some(len)
            }
        }
    }
}

/// Room in a chunk buffer beyond the longest chunk: what one read adds
/// at the least, so that small blocks (a PostgreSQL file's 8 KiB) are
/// still read in large reads, and how far the buffer may fill before the
/// bytes not yet cut are moved to its front.
const READ_ROOM: usize = 1 << 20;

/// One stream's chunks, borrowed from one buffer in turn
/// ([`Chunker::chunks`]). The buffer holds the longest chunk and
/// [`READ_ROOM`] (9 MiB with the default sizes), is filled in large
/// reads, and a chunk is cut from the bytes ahead as soon as its end is
/// known; the bytes not yet cut (part of one chunk) are moved to the
/// front only when less than [`READ_ROOM`] is left behind them, about
/// once per 8 MiB read. (The fastcdc crate's `StreamCDC`, which the
/// repository used before and whose cut points these are, moved
/// everything after each chunk to the front, about 7 MiB per 1 MiB
/// chunk with the default sizes, and copied each chunk into a vector of
/// its own.)
pub struct Chunks<R> {
    source: R,
    buf: Vec<u8>,
    /// The first byte not yet handed out.
    start: usize,
    /// The end of what was read.
    end: usize,
    eof: bool,
    how: How,
    /// [`READ_ROOM`], but in tests.
    read_room: usize,
}

impl<R: Read> Chunks<R> {
    /// The next chunk, `None` at the end of the stream (never an empty
    /// chunk), or the read error that stopped it (and ends the stream).
    pub fn next_chunk(&mut self) -> std::io::Result<Option<&[u8]>> {
        let len = loop {
            let ahead = &self.buf[self.start..self.end];
            if ahead.is_empty() && self.eof {
                return Ok(None);
            }
            if !ahead.is_empty()
                && let Some(len) = self.how.cut(ahead, self.eof)
            {
                break len;
            }
            self.read_more()?;
        };
        // cut_gear gives 0 only for an empty source, ruled out above.
        debug_assert!(len > 0);
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        Ok(Some(chunk))
    }

    /// Fills the room behind the bytes ahead (moved to the front first
    /// when that room is short), or reads to the end of the stream. Whole:
    /// a source that gives a little per read (a pipe, the backup's
    /// fan-out to several chunkers) would otherwise have the unfinished
    /// chunk scanned again after each read.
    fn read_more(&mut self) -> std::io::Result<()> {
        let room = self.how.longest() + self.read_room;
        if self.buf.len() < room {
            // Zeroed by the allocator (fresh pages are not touched until
            // read into), not by a loop over the whole buffer.
            let mut bigger = vec![0u8; room];
            bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
            self.buf = bigger;
            self.end -= self.start;
            self.start = 0;
        } else if self.buf.len() - self.end < self.read_room {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The stream ends with its error.
                    self.eof = true;
                    self.start = self.end;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The buffer, for the next stream's [`Chunker::chunks`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// How one file is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// FastCDC with the repository's parameters (every file but the paged
    /// ones).
    ContentDefined,
    /// Fixed blocks of `block` bytes from offset 0, the last one
    /// shorter: for files that are arrays of pages (PostgreSQL relation
    /// files), so that a changed page changes one block and every other
    /// block keeps its id. `page` is the page size, which a lowered block
    /// size stays a multiple of. See [`paged_block_size`].
    Blocks { block: usize, page: usize },
}

/// Blocks a paged file may be cut into before its blocks grow: 32,768
/// (a 1 GiB PostgreSQL segment gets 32 KiB blocks and a content list of
/// 1 MiB in its directory's tree).
pub const PAGED_MAX_BLOCKS: u64 = 32 * 1024;

/// Blocks the paged files of one directory may be cut into before all
/// their blocks grow: 262,144, so a database directory's tree holds at
/// most 8 MiB of content lists (an incremental rewrites that tree whole
/// when any of its files changed) and its files at most that many index
/// entries per version. A directory reaches it at 2 GiB of files under
/// 256 MiB (8 KiB blocks) or 8 GiB of 1 GiB segments (32 KiB blocks).
pub const PAGED_DIR_MAX_IDS: u64 = 256 * 1024;

/// The block size of a paged file of `file_size` bytes in a directory
/// whose paged files hold `dir_bytes` together: the smallest power-of-two
/// multiple of `page` that cuts the file into at most [`PAGED_MAX_BLOCKS`]
/// blocks and the directory into at most [`PAGED_DIR_MAX_IDS`]. The idea
/// is pgBackRest's block incremental (block size chosen from the file
/// size, so the map of a file's blocks stays small next to its data);
/// our map is the file's content list in its directory's tree.
pub fn paged_block_size(file_size: u64, dir_bytes: u64, page: usize) -> usize {
    let page = page.max(1) as u64;
    let mut block = page;
    while file_size.div_ceil(block) > PAGED_MAX_BLOCKS
        || dir_bytes.div_ceil(block) > PAGED_DIR_MAX_IDS
    {
        block *= 2;
    }
    block as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(max_size: u32) -> ChunkerParams {
        ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size,
            seed: 7,
        }
    }

    /// A reader that hands out at most `step` bytes per call, as pipes and
    /// some filesystems do.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(out.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Page-aligned blocks put back together give the bytes cut,
        /// whatever the file's size (not a page multiple, shorter than a
        /// block, empty) and however the reader splits its reads; every
        /// block but the last is full and starts on a page boundary.
        #[test]
        fn blocks_restore_identical_bytes(
            len in prop_oneof![0usize..40_000, Just(8192), Just(8191), Just(8193), Just(32768), Just(65537)],
            page_pow in 9u32..14,
            pages in 1usize..5,
            step in 1usize..20_000,
            read_room in 1usize..40_000,
            fill in any::<u8>(),
        ) {
            let page = 1usize << page_pow;
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill ^ (i >> 9) as u8).collect();
            let chunker = Chunker::new(params(1 << 20));
            let mut cut = chunker.chunks_with_room(
                Trickle(&data, step),
                Cut::Blocks { block: page * pages, page },
                Vec::new(),
                read_room,
            );
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            while let Some(c) = cut.next_chunk().unwrap() {
                chunks.push(c.to_vec());
            }
            prop_assert_eq!(chunks.concat(), data.clone());
            prop_assert!(chunks.iter().all(|c| !c.is_empty()));
            if let Some((_last, full)) = chunks.split_last() {
                prop_assert!(full.iter().all(|c| c.len() == page * pages));
            }
            prop_assert_eq!(chunks.len(), len.div_ceil(page * pages));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Content-defined chunks are cut where the fastcdc crate's own
        /// `StreamCDC` cuts them (with the same sizes, normalization and
        /// seed), however the reader splits its reads and whatever buffer
        /// the chunks are read through: a repository's existing chunks
        /// keep deduplicating against new backups.
        #[test]
        fn content_chunks_are_the_stream_chunkers(
            len in prop_oneof![0usize..60_000, Just(1024), Just(2048), Just(2049)],
            max_pow in 10u32..14,
            seed in any::<u64>(),
            step in 1usize..30_000,
            reused in 0usize..20_000,
            read_room in 1usize..5_000,
            fill in any::<u8>(),
        ) {
            let mut state = u64::from(fill) | 1;
            let data: Vec<u8> = (0..len)
                .map(|i| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    // Runs of one byte now and then: cuts at max_size.
                    if (i / 3000) % 5 == 4 { fill } else { (state >> 33) as u8 }
                })
                .collect();
            let p = ChunkerParams { min_size: 64, avg_size: 256, max_size: 1 << max_pow, seed };
            let expected: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
                &data[..], 64, 256, 1 << max_pow, Normalization::Level1, seed,
            )
            .map(|c| c.unwrap().data)
            .collect();
            let mut chunks = Chunker::new(p).chunks_with_room(
                Trickle(&data, step),
                Cut::ContentDefined,
                vec![7u8; reused],
                read_room,
            );
            let mut got = Vec::new();
            while let Some(c) = chunks.next_chunk().unwrap() {
                got.push(c.to_vec());
            }
            prop_assert_eq!(got, expected);
        }
    }

    /// A read error ends the stream with that error, and the buffer given
    /// back serves the next stream.
    #[test]
    fn a_read_error_ends_the_stream_and_the_buffer_is_reused() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk gone"));
                }
                let n = out.len().min(self.0);
                out[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let chunker = Chunker::new(params(4096));
        let mut chunks = chunker.chunks(Failing(10_000), Cut::ContentDefined, Vec::new());
        let err = loop {
            match chunks.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without its error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.to_string(), "disk gone");
        assert!(chunks.next_chunk().unwrap().is_none());
        let buffer = chunks.into_buffer();
        let ptr = buffer.as_ptr();
        let data = vec![9u8; 5000];
        let mut chunks = chunker.chunks(&data[..], Cut::ContentDefined, buffer);
        let mut total = 0;
        while let Some(c) = chunks.next_chunk().unwrap() {
            total += c.len();
        }
        assert_eq!(total, 5000);
        let buffer = chunks.into_buffer();
        assert_eq!(buffer.as_ptr(), ptr);
    }

    #[test]
    fn a_changed_page_changes_one_block_only() {
        let page = 8192;
        let mut data: Vec<u8> = (0..page * 40).map(|i| (i * 7 % 251) as u8).collect();
        let chunker = Chunker::new(params(1 << 20));
        let cut = |d: &[u8]| -> Vec<Vec<u8>> {
            chunker
                .cut(
                    d,
                    Cut::Blocks {
                        block: 4 * page,
                        page,
                    },
                )
                .collect::<std::io::Result<_>>()
                .unwrap()
        };
        let before = cut(&data);
        data[page * 17 + 100] ^= 0xff;
        let after = cut(&data);
        let differ = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!((before.len(), differ), (10, 1));
    }

    #[test]
    fn blocks_are_capped_by_max_size_or_fall_back_to_content() {
        let data = vec![5u8; 100_000];
        // max_size 20,000 with 8 KiB pages: blocks of 16 KiB.
        let sizes: Vec<usize> = Chunker::new(params(20_000))
            .cut(
                &data[..],
                Cut::Blocks {
                    block: 65536,
                    page: 8192,
                },
            )
            .map(|c| c.unwrap().len())
            .collect();
        assert_eq!(sizes[0], 16384);
        // max_size below one page: content-defined chunks, never above
        // max_size.
        let sizes: Vec<usize> = Chunker::new(params(4096))
            .cut(
                &data[..],
                Cut::Blocks {
                    block: 65536,
                    page: 8192,
                },
            )
            .map(|c| c.unwrap().len())
            .collect();
        assert!(sizes.iter().all(|s| *s <= 4096));
        assert_eq!(sizes.iter().sum::<usize>(), data.len());
    }

    #[test]
    fn block_size_grows_with_the_file_and_the_directory() {
        const K: u64 = 1024;
        const G: u64 = K * K * K;
        let b = |size, dir| paged_block_size(size, dir, 8192);
        assert_eq!(b(10 * K * K, 20 * K * K), 8192);
        assert_eq!(b(256 * K * K, 2 * G), 8192);
        assert_eq!(b(256 * K * K + 1, 2 * G), 16384);
        assert_eq!(b(G, 2 * G), 32768);
        // Larger database directories: blocks grow so the directory holds
        // at most 262,144 of them.
        assert_eq!(b(G, 16 * G), 65536);
        assert_eq!(b(8 * K * K, 1024 * G), 4 << 20);
        assert_eq!(b(0, 0), 8192);
    }
}
