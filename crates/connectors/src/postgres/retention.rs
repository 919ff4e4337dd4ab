//! WAL retention: after base backups are forgotten, the archived WAL that
//! no retained base backup can replay is deleted.
//!
//! Rule, per cluster (system identifier): recovery from a base backup
//! reads WAL from the backup's start segment onwards, on any timeline. So
//! every segment (and `.partial` and `.backup` file) whose position (log
//! and segment number, whatever the timeline) is before the oldest
//! retained backup's start segment is unneeded; everything at or after it
//! is kept, and timeline history files are always kept (they are tiny and
//! recovery reads them to follow timelines). A cluster with no retained
//! base backup keeps all its WAL: deleting it would destroy the only copy
//! of changes a later backup may still need (and that case usually means
//! a mistake). A base backup being taken while this runs starts after
//! every retained one, so its WAL is never before the cut.

use std::collections::BTreeMap;

use lifeboat_repo::Repository;

use super::base::base_backups;
use super::wal::{delete_wal, list_wal};
use super::walname::position_part;
use crate::Result;

/// What expiry did (or would do, with `dry_run`), per cluster.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    /// Cluster → (first segment kept, files deleted).
    pub clusters: BTreeMap<u64, ExpiredCluster>,
}

#[derive(Debug, Clone, Default)]
pub struct ExpiredCluster {
    /// The oldest retained base backup's start segment; `None` if the
    /// cluster has no base backup (nothing is deleted).
    pub keep_from: Option<String>,
    pub deleted: Vec<String>,
    pub kept: usize,
}

/// Deletes archived WAL no retained base backup needs.
pub async fn expire_wal(repo: &Repository, dry_run: bool) -> Result<ExpireReport> {
    let backups = base_backups(repo).await?;
    let wal = list_wal(repo).await?;
    let mut report = ExpireReport::default();
    for (sysid, files) in wal {
        let oldest = backups
            .iter()
            .filter(|(_, i)| i.system_id() == sysid)
            .filter_map(|(_, i)| position_part(&i.start_wal).map(str::to_string))
            .min();
        let mut entry = ExpiredCluster {
            keep_from: oldest.clone(),
            ..Default::default()
        };
        for f in files {
            let expired = match (&oldest, position_part(&f)) {
                (Some(cut), Some(pos)) => !f.ends_with(".history") && pos < cut.as_str(),
                _ => false,
            };
            if expired {
                if !dry_run {
                    delete_wal(repo, sysid, &f).await?;
                }
                entry.deleted.push(f);
            } else {
                entry.kept += 1;
            }
        }
        report.clusters.insert(sysid, entry);
    }
    Ok(report)
}
