//! `repair index`: rebuilds the index from the packs' own trailers.
//!
//! Every pack carries an encrypted list of its blobs, so the index is a cache
//! that can always be recomputed. The new index objects are written first and
//! name the old ones in `supersedes`; the old ones are deleted only after the
//! new ones are durable, so a crash mid-repair leaves a usable index. A pack
//! whose trailer cannot be read keeps the entries the old index had for it.
//! With a cold tier, the packs of both tiers are read (two small ranged
//! reads per pack: the trailer length and the trailer), so repair does read
//! from the cold tier.

use std::collections::HashMap;

use futures::StreamExt;
use lifeboat_storage::{Kind, ObjectKey};
use serde::Serialize;

use crate::index::{IndexFile, IndexPack, index_batches};
use crate::limits::get_bounded;
use crate::lock::{LockKind, LockOptions, RepositoryLock};
use crate::pack::{decode_trailer, trailer_range};
use crate::packread::pack_key;
use crate::repository::Repository;
use crate::{Id, Result};

/// Packs per rebuilt index object.
const PACKS_PER_INDEX: usize = 256;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairStats {
    pub packs_indexed: usize,
    pub blobs_indexed: usize,
    /// Packs whose trailer could not be read (left in place, not indexed).
    pub unreadable_packs: Vec<String>,
    pub old_index_files_removed: usize,
    /// Index entries kept from the old index for unreadable packs.
    pub entries_carried_over: usize,
}

/// Runs under the exclusive lock: a prune deleting packs, or a backup
/// adding them, would make the rebuilt index wrong.
pub async fn repair_index(repo: &Repository) -> Result<RepairStats> {
    repo.require(crate::Permission::Full, "repair the index")?;
    let lock = RepositoryLock::acquire(repo, LockKind::Exclusive, &LockOptions::default()).await?;
    let r = repair_locked(repo).await;
    repo.invalidate_index().await;
    let released = lock.release().await;
    let stats = r?;
    released?;
    crate::audit::append_after(
        repo,
        crate::audit::Entry::new("repair-index")
            .arg("packs_indexed", stats.packs_indexed)
            .arg("old_index_files_removed", stats.old_index_files_removed)
            .arg("unreadable_packs", &stats.unreadable_packs),
    )
    .await;
    Ok(stats)
}

async fn repair_locked(repo: &Repository) -> Result<RepairStats> {
    let storage = repo.storage();
    let old: Vec<Id> = storage
        .list(Kind::Index)
        .await?
        .iter()
        .filter_map(|i| Id::from_hex(i.key.name()))
        .collect();
    let packs = repo.list_packs().await?;
    let results: Vec<(Id, Result<Vec<crate::PackEntry>>)> = futures::stream::iter(packs)
        .filter_map(|(tier, info)| async move {
            Id::from_hex(info.key.name()).map(|id| (id, info.size_bytes, tier))
        })
        .map(|(id, size, tier)| async move {
            let r = async {
                let storage = repo.tier_storage(tier).await?;
                let key = pack_key(&id);
                if size < 4 {
                    return Err(crate::Error::corrupt(format!("pack {id}"), "too short"));
                }
                let len = storage.get_range(&key, size - 4, 4).await?;
                let (off, tlen) = trailer_range(&id, size, &len)?;
                let sealed = storage.get_range(&key, off, tlen).await?;
                decode_trailer(repo.key(), &id, off, &sealed)
            }
            .await;
            (id, r)
        })
        .buffer_unordered(repo.concurrency())
        .collect()
        .await;
    // What the old index said, for packs whose trailer is unreadable now:
    // their blobs may still be intact, so their entries are carried over
    // rather than dropped with the old index objects.
    let mut previous: HashMap<Id, IndexPack> = HashMap::new();
    for id in &old {
        let key = ObjectKey::new(Kind::Index, id.to_hex());
        if let Ok(bytes) = get_bounded(storage, &key, None).await
            && let Ok(file) = IndexFile::decode(repo.key(), &key.to_string(), &bytes)
        {
            previous.extend(file.packs.into_iter().map(|p| (p.id, p)));
        }
    }
    let mut stats = RepairStats::default();
    let mut good = Vec::new();
    for (id, r) in results {
        match r {
            Ok(entries) => {
                stats.packs_indexed += 1;
                stats.blobs_indexed += entries.len();
                good.push(IndexPack { id, entries });
            }
            Err(e) => {
                stats.unreadable_packs.push(format!("{id}: {e}"));
                if let Some(p) = previous.remove(&id) {
                    stats.entries_carried_over += p.entries.len();
                    good.push(p);
                }
            }
        }
    }
    good.sort_by_key(|p| p.id);
    let mut chunks: Vec<Vec<IndexPack>> = index_batches(&good, PACKS_PER_INDEX)
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let mut written = Vec::new();
    for packs in chunks {
        written.push(
            repo.write_index(&IndexFile {
                packs,
                supersedes: old.clone(),
            })
            .await?,
        );
    }
    for id in old {
        if !written.contains(&id) {
            storage
                .delete(&ObjectKey::new(Kind::Index, id.to_hex()))
                .await?;
            stats.old_index_files_removed += 1;
        }
    }
    Ok(stats)
}
