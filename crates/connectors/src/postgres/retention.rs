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
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lifeboat_repo::{Repository, Snapshot};
use serde::Serialize;

use super::base::{BaseBackupInfo, base_backups};
use super::wal::{PutOutcome, delete_wal, get_wal, list_wal, put_wal};
use super::walname::position_part;
use crate::{Error, Result};

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

/// The position part of the oldest start segment among a cluster's base
/// backups: WAL before it is not needed. `None` if it has none.
fn cut_for(backups: &[(Snapshot, BaseBackupInfo)], sysid: u64) -> Option<String> {
    backups
        .iter()
        .filter(|(_, i)| i.system_id() == sysid)
        .filter_map(|(_, i)| position_part(&i.start_wal).map(str::to_string))
        .min()
}

/// Whether the WAL file `file` is needed given the cut of its cluster.
fn needed(cut: Option<&str>, file: &str) -> bool {
    match (cut, position_part(file)) {
        (Some(cut), Some(pos)) => file.ends_with(".history") || pos >= cut,
        _ => true,
    }
}

/// Deletes archived WAL no retained base backup needs.
pub async fn expire_wal(repo: &Repository, dry_run: bool) -> Result<ExpireReport> {
    let backups = base_backups(repo).await?;
    let wal = list_wal(repo).await?;
    let mut report = ExpireReport::default();
    for (sysid, files) in wal {
        let oldest = cut_for(&backups, sysid);
        let mut entry = ExpiredCluster {
            keep_from: oldest.clone(),
            ..Default::default()
        };
        for f in files {
            if !needed(oldest.as_deref(), &f) {
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

/// What [`copy_wal`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalCopyReport {
    /// WAL files stored in the target (re-encrypted, read back and
    /// compared).
    pub copied: u64,
    /// Files the target already held with the same content.
    pub present: u64,
    /// Files the target's base backups do not need (before the oldest one's
    /// start, by the rule of [`expire_wal`]), not copied.
    pub not_needed: u64,
    /// Plaintext bytes of the copied files.
    pub bytes: u64,
}

/// Brings the target's WAL archive up to what its base backups need: every
/// archived WAL file of the source that the target lacks and that the
/// target's retention would keep (for a cluster with no base backup in the
/// target, all of them). Each file is decrypted with the source's key,
/// stored under the target's with the same idempotent, conflict-checked
/// put as `wal-push`, then read back and compared, so an interrupted copy
/// leaves whole files only and a rerun copies the rest. Run it after the
/// snapshots are copied, so the cut is that of the copied base backups.
pub async fn copy_wal(source: &Repository, target: &Repository) -> Result<WalCopyReport> {
    let backups = base_backups(target).await?;
    let have = list_wal(target).await?;
    let mut todo = Vec::new();
    let mut report = WalCopyReport::default();
    for (sysid, files) in list_wal(source).await? {
        let cut = cut_for(&backups, sysid);
        for f in files {
            if have.get(&sysid).is_some_and(|h| h.contains(&f)) {
                report.present += 1;
            } else if !needed(cut.as_deref(), &f) {
                report.not_needed += 1;
            } else {
                todo.push((sysid, f));
            }
        }
    }
    // A few files in flight: WAL segments are up to 16 MiB (or more) each.
    let done: Vec<(PutOutcome, u64)> = futures::stream::iter(todo)
        .map(|(sysid, f)| async move {
            let data = get_wal(source, sysid, &f).await?.ok_or_else(|| {
                Error::Invalid(format!(
                    "WAL file {f} vanished from the source while copying (expired by a prune \
                         there?); run the copy again"
                ))
            })?;
            let data = Arc::new(data);
            let outcome = put_wal(target, sysid, &f, data.clone()).await?;
            match get_wal(target, sysid, &f).await? {
                Some(back) if back == *data => Ok((outcome, data.len() as u64)),
                _ => Err(Error::Invalid(format!(
                    "WAL file {f} does not read back from the target as written"
                ))),
            }
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    for (outcome, bytes) in done {
        match outcome {
            PutOutcome::Stored => {
                report.copied += 1;
                report.bytes += bytes;
            }
            PutOutcome::AlreadyPresent => report.present += 1,
        }
    }
    Ok(report)
}
