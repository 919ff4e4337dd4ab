//! What a restore will read, before it reads anything.
//!
//! [`plan`] selects like a restore does and cuts the same ranged reads
//! (`fetch::build_ranges`), then sums them per pack and tier: the
//! [`RestorePlan`] that `restore --plan-only` prints for a repository with
//! a cold tier. It reads trees and the index only (never pack data, so
//! never the cold tier) and writes nothing.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use lifeboat_repo::{BlobType, Id, Repository, Snapshot, Tier, pack_object_path};
use serde::Serialize;

use super::RestoreOptions;
use super::fetch::{Write, build_ranges};
use super::select::{ItemKind, Walker, fits};
use crate::Result;

/// What restoring a snapshot (with the same include/exclude patterns) will
/// read, pack by pack. Files a `delta` restore finds identical are counted
/// too: the plan is what a restore into an empty target reads, at most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestorePlan {
    /// Regular files with content (each hard-linked file once).
    pub files: u64,
    pub file_bytes: u64,
    pub hot_packs: u64,
    /// Bytes of the ranged reads from hot packs.
    pub hot_read_bytes: u64,
    pub cold_packs: u64,
    /// Bytes of the ranged reads from cold packs.
    pub cold_read_bytes: u64,
    /// Blobs the index does not know (their files will not be restored;
    /// `lifeboat check` says more).
    pub missing_blobs: u64,
    /// Selected directories whose tree is damaged: their contents will not
    /// be restored (`lifeboat check` says more).
    pub damaged_trees: u64,
    /// Every pack to read, sorted by tier then id.
    pub packs: Vec<PlannedPack>,
}

/// One pack a restore reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPack {
    /// Pack id (hex).
    pub pack: String,
    pub tier: Tier,
    /// Object path inside its tier (`data/ab/ab12…`), for restoring it from
    /// an archive storage class with the provider's own tools.
    pub object: String,
    /// Ranged reads and their bytes.
    pub reads: u64,
    pub read_bytes: u64,
}

/// Works out the [`RestorePlan`] of restoring `snapshot` with `options`'
/// include and exclude patterns. Reads trees and the index only; writes
/// nothing and never touches the target or the cold tier.
pub async fn plan(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreOptions,
) -> Result<RestorePlan> {
    let index = repo.index().await?;
    let mut walker = Walker::new(repo, &index, snapshot.record.tree, options).await?;
    let mut out = RestorePlan::default();
    let mut packs: Vec<Id> = Vec::new();
    let mut numbers: HashMap<Id, u32> = HashMap::new();
    let mut writes: Vec<Write> = Vec::new();
    while let Some(sel) = walker.next(super::part_items(options)).await? {
        // (Its other problems are warnings about hard-link groups.)
        out.damaged_trees += sel.problems.iter().filter(|p| p.error).count() as u64;
        for item in &sel.items {
            let ItemKind::File {
                size,
                content,
                link_to: None,
                ..
            } = item.kind
            else {
                continue;
            };
            if content.len == 0 {
                continue;
            }
            out.files += 1;
            out.file_bytes += size;
            for loc in sel.blobs(content).locations(&index) {
                let Ok(loc) = loc else {
                    out.missing_blobs += 1;
                    continue;
                };
                let pack = match numbers.entry(loc.pack) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        packs.push(loc.pack);
                        *e.insert(fits(packs.len() - 1)?)
                    }
                };
                writes.push(Write {
                    entry: loc.entry,
                    pack,
                    file: 0,
                    at: 0,
                });
            }
        }
    }
    // The same ranges the restore will fetch.
    let ranges = build_ranges(&mut writes);
    let tier = repo.tier_of(BlobType::Data);
    let mut per_pack: Vec<(u64, u64)> = vec![(0, 0); packs.len()];
    for r in &ranges {
        let p = &mut per_pack[r.pack as usize];
        p.0 += 1;
        p.1 += r.len;
    }
    for (i, (reads, bytes)) in per_pack.into_iter().enumerate() {
        match tier {
            Tier::Hot => {
                out.hot_packs += 1;
                out.hot_read_bytes += bytes;
            }
            Tier::Cold => {
                out.cold_packs += 1;
                out.cold_read_bytes += bytes;
            }
        }
        out.packs.push(PlannedPack {
            pack: packs[i].to_hex(),
            tier,
            object: pack_object_path(&packs[i]),
            reads,
            read_bytes: bytes,
        });
    }
    out.packs
        .sort_by(|a, b| (a.tier, &a.pack).cmp(&(b.tier, &b.pack)));
    Ok(out)
}
