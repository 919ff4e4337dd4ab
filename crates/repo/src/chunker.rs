//! Content-defined chunking with the repository's FastCDC parameters.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

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

    /// Iterates over the chunks of `source`; each item is the chunk's bytes or
    /// the read error that stopped it.
    pub fn chunks<R: Read>(&self, source: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
        let p = self.params;
        StreamCDC::with_level_and_seed(
            source,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            Normalization::Level1,
            p.seed,
        )
        .map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            })
        })
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

impl Chunker {
    /// Iterates over the chunks of `source` cut as `cut` says. Blocks are
    /// never larger than the repository's `max_size` (rounded down to a
    /// multiple of `page`): a block size above it is lowered, and a
    /// repository whose `max_size` is below one page cuts by content.
    pub fn cut<'a, R: Read + 'a>(
        &'a self,
        source: R,
        cut: Cut,
    ) -> Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + 'a> {
        match cut {
            Cut::Blocks { block, page } => {
                let max = self.params.max_size as usize;
                let cap = max - max % page.max(1);
                if cap == 0 || block == 0 {
                    Box::new(self.chunks(source))
                } else {
                    Box::new(blocks(source, block.min(cap)))
                }
            }
            Cut::ContentDefined => Box::new(self.chunks(source)),
        }
    }
}

/// Cuts `source` into blocks of exactly `block` bytes (the last one
/// shorter, none empty).
pub fn blocks<R: Read>(
    mut source: R,
    block: usize,
) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = vec![0u8; block];
        let mut filled = 0;
        while filled < block {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        }
        if filled < block {
            done = true;
            buf.truncate(filled);
        }
        (!buf.is_empty()).then_some(Ok(buf))
    })
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
            fill in any::<u8>(),
        ) {
            let page = 1usize << page_pow;
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill ^ (i >> 9) as u8).collect();
            let chunker = Chunker::new(params(1 << 20));
            let chunks: Vec<Vec<u8>> = chunker
                .cut(Trickle(&data, step), Cut::Blocks { block: page * pages, page })
                .collect::<std::io::Result<_>>()
                .unwrap();
            prop_assert_eq!(chunks.concat(), data.clone());
            prop_assert!(chunks.iter().all(|c| !c.is_empty()));
            if let Some((_last, full)) = chunks.split_last() {
                prop_assert!(full.iter().all(|c| c.len() == page * pages));
            }
            prop_assert_eq!(chunks.len(), len.div_ceil(page * pages));
        }
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
