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
