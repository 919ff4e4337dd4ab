//! Bytes of memory per indexed blob (issue 17, "cost at scale": at most 48).
//!
//! Builds the in-memory [`Index`] of `N` synthetic blobs (random ids, 1,000
//! blobs per pack, one in 50 a tree) pack by pack, as `check` does, and
//! prints the growth of the process's resident memory once it is built
//! (the inputs are gone by then), per blob, with the mean time of a lookup.
//! The builder is not told the count ahead, so its array grows by doubling
//! and is trimmed at the end. Run on a release build, one size per process:
//!
//! ```text
//! cargo run --release -p lifeboat-repo --example index_memory -- 1000000
//! ```
//!
//! `bench/scale` runs it for 1M, 10M and 50M blobs.

use std::time::Instant;

use lifeboat_repo::{BlobType, Id, Index, IndexBuilder, IndexPack, PackEntry};

/// Resident memory of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

/// A deterministic stream of pseudo-random ids (splitmix64 over a counter).
fn id(n: u64) -> Id {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut z = n
            .wrapping_mul(4)
            .wrapping_add(i as u64)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    Id(out)
}

fn pack(p: u64, per_pack: u64) -> IndexPack {
    let mut offset = 0u32;
    IndexPack {
        id: id(u64::MAX - p),
        entries: (0..per_pack)
            .map(|i| {
                let n = p * per_pack + i;
                let e = PackEntry {
                    blob_type: if n.is_multiple_of(50) {
                        BlobType::Tree
                    } else {
                        BlobType::Data
                    },
                    id: id(n),
                    offset,
                    length: 4096,
                    raw_length: 8192,
                    compressed: true,
                };
                offset += 4096;
                e
            })
            .collect(),
    }
}

fn main() {
    let blobs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let per_pack = 1000;
    let packs = blobs.div_ceil(per_pack);
    let before = rss_bytes();
    let started = Instant::now();
    let index: Index = {
        let mut index = IndexBuilder::default();
        for p in 0..packs {
            index.add_pack(&pack(p, per_pack));
        }
        index.build()
    };
    let built = started.elapsed();
    let after = rss_bytes();
    assert_eq!(index.blob_count() as u64, packs * per_pack);
    // Lookups of blobs that are there, in an order unrelated to storage.
    let probes = 1_000_000u64.min(blobs);
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..probes {
        let n = (i * 7_919) % (packs * per_pack);
        let t = if n.is_multiple_of(50) {
            BlobType::Tree
        } else {
            BlobType::Data
        };
        found += index.get(t, &id(n)).is_some() as u64;
    }
    let lookup = started.elapsed();
    assert_eq!(found, probes, "every probed blob is indexed");
    let grown = after.saturating_sub(before);
    println!(
        "{{\"blobs\": {}, \"packs\": {packs}, \"rss_growth_bytes\": {grown}, \"bytes_per_blob\": {:.1}, \"build_ms\": {}, \"lookup_ns\": {:.0}}}",
        packs * per_pack,
        grown as f64 / (packs * per_pack) as f64,
        built.as_millis(),
        lookup.as_nanos() as f64 / probes as f64,
    );
}
