//! WAL retention: which archived WAL the remaining base backups still
//! need. The rule is [`WalRetention`], the PostgreSQL WAL rule that `prune`
//! and `copy` in `lifeboat-repo` apply to archive objects (the CLI passes
//! it in with [`crate::archive_rules`]); `pg expire-wal` runs it alone
//! ([`expire_wal`]). Deleting and copying the objects is
//! `lifeboat_repo::archive`'s job, not this module's.
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
//! every retained one, so its WAL is never before the cut. For `copy` the
//! retained backups are the target's, so the target gets the WAL its own
//! base backups need.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lifeboat_repo::archive::{self, ArchiveRetention, ArchiveRules};
use lifeboat_repo::{Repository, Snapshot};

use super::base::BaseBackupInfo;
use super::wal::{parse_object_name, parse_stream};
use super::walname::position_part;
use crate::Result;

/// What reports call the objects [`WalRetention`] governs.
pub const WAL_KIND: &str = "PostgreSQL WAL";

/// The retention rule of PostgreSQL WAL archive objects (see the module
/// documentation). Claims the streams named by a system identifier.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalRetention;

impl ArchiveRetention for WalRetention {
    fn kind(&self) -> &'static str {
        WAL_KIND
    }

    fn claims(&self, stream: &str) -> bool {
        parse_stream(stream).is_some()
    }

    fn needed(
        &self,
        stream: &str,
        files: &BTreeSet<String>,
        remaining: &[Snapshot],
    ) -> BTreeSet<String> {
        let Some(sysid) = parse_stream(stream) else {
            return files.clone();
        };
        let cut = cut_for(remaining, sysid);
        files
            .iter()
            .filter(|f| match parse_object_name(&format!("{stream}-{f}")) {
                Some((_, pg)) => needed(cut.as_deref(), &pg),
                // Not a WAL file name: not ours to delete.
                None => true,
            })
            .cloned()
            .collect()
    }
}

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
/// backups in `snapshots`: WAL before it is not needed. `None` if it has
/// none.
fn cut_for(snapshots: &[Snapshot], sysid: u64) -> Option<String> {
    snapshots
        .iter()
        .filter_map(BaseBackupInfo::of)
        .filter(|i| i.system_id() == sysid)
        .filter_map(|i| position_part(&i.start_wal).map(str::to_string))
        .min()
}

/// Whether the WAL file `file` is needed given the cut of its cluster.
fn needed(cut: Option<&str>, file: &str) -> bool {
    match (cut, position_part(file)) {
        (Some(cut), Some(pos)) => file.ends_with(".history") || pos >= cut,
        _ => true,
    }
}

/// Deletes archived WAL no retained base backup needs (`pg expire-wal`;
/// `prune` does the same through [`crate::archive_rules`]).
pub async fn expire_wal(repo: &Repository, dry_run: bool) -> Result<ExpireReport> {
    let remaining = repo.snapshots().await?;
    let rules = ArchiveRules::new().with(Arc::new(WalRetention));
    let expired = archive::expire(repo, &rules, &remaining, dry_run).await?;
    let mut report = ExpireReport::default();
    for (stream, s) in expired.streams {
        let Some(sysid) = parse_stream(&stream) else {
            continue;
        };
        let deleted = s
            .deleted
            .iter()
            .filter_map(|f| parse_object_name(&format!("{stream}-{f}")).map(|(_, pg)| pg))
            .collect();
        report.clusters.insert(
            sysid,
            ExpiredCluster {
                keep_from: cut_for(&remaining, sysid),
                deleted,
                kept: s.kept,
            },
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lifeboat_repo::{
        BackupMode, CheckOptions, Id, InitOptions, KdfParams, SnapshotRecord, check,
    };
    use lifeboat_storage::{DynStorage, MemoryStorage, Storage};

    use super::*;
    use crate::postgres::EXTRA_KEY;
    use crate::postgres::base::Layout;
    use crate::postgres::wal::{object_name, put_wal, stream_name};

    const SYSID: u64 = 0x7301_f2c4_a5b6_c7d8;

    /// A base backup snapshot of cluster `sysid` starting at `start_wal`.
    fn base_backup(sysid: u64, start_wal: &str) -> Snapshot {
        let info = BaseBackupInfo {
            kind: "base-backup".into(),
            system_identifier: sysid.to_string(),
            server_version: "15.14".into(),
            server_version_num: 150014,
            timeline: 1,
            start_lsn: "0/0".into(),
            stop_lsn: "0/0".into(),
            start_wal: start_wal.into(),
            stop_wal: start_wal.into(),
            wal_segment_size: 16 << 20,
            wal_included: false,
            start_time: jiff::Timestamp::UNIX_EPOCH,
            stop_time: jiff::Timestamp::UNIX_EPOCH,
            layout: Layout::Files,
        };
        let mut record = SnapshotRecord {
            time: jiff::Timestamp::UNIX_EPOCH,
            host: "h".into(),
            user: "u".into(),
            paths: vec![format!("postgresql:{sysid}:base-backup")],
            tags: vec![],
            tree: Id::of_bytes(b"tree"),
            mode: BackupMode::Full,
            parent: None,
            partial: false,
            summary: Default::default(),
            program_version: "test".into(),
            extra: Default::default(),
            creator: None,
        };
        record
            .extra
            .insert(EXTRA_KEY.into(), serde_json::to_value(info).unwrap());
        Snapshot {
            id: Id::of_bytes(start_wal.as_bytes()),
            record,
        }
    }

    /// Archive file names (lower case) of PostgreSQL names.
    fn files(pg: &[&str]) -> BTreeSet<String> {
        pg.iter().map(|f| f.to_ascii_lowercase()).collect()
    }

    #[test]
    fn wal_rule_keeps_from_the_oldest_base_backups_start_and_every_history_file() {
        let rule = WalRetention;
        let stream = stream_name(SYSID);
        assert!(rule.claims(&stream));
        assert!(!rule.claims("mariadb.0001"));
        assert!(
            !rule.claims("7301F2C4A5B6C7D8"),
            "archive names are lower case"
        );
        let all = files(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
            "000000020000000000000003",
            "000000020000000000000004.partial",
        ]);
        let backups = [
            base_backup(SYSID, "000000020000000000000003"),
            base_backup(SYSID, "000000010000000000000002"),
            // Another cluster's backup does not move this cluster's cut.
            base_backup(1, "000000010000000000000009"),
        ];
        let needed = rule.needed(&stream, &all, &backups);
        let mut want = all.clone();
        want.remove("000000010000000000000001");
        assert_eq!(needed, want);

        let newer_only = rule.needed(&stream, &all, &backups[..1]);
        assert_eq!(
            newer_only,
            files(&[
                "00000002.history",
                "000000020000000000000003",
                "000000020000000000000004.partial",
            ])
        );
        // No base backup of the cluster: everything is kept.
        assert_eq!(rule.needed(&stream, &all, &backups[2..]), all);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flipped_byte_in_a_wal_object_is_reported_by_check_read_data() {
        let mem = MemoryStorage::new();
        let storage: DynStorage = Arc::new(mem.clone());
        let options = InitOptions {
            kdf: KdfParams::INSECURE_TEST,
            ..Default::default()
        };
        let repo = Repository::init(storage, b"pw", options).await.unwrap();
        let segment: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        for f in ["000000010000000000000001", "000000010000000000000002"] {
            put_wal(&repo, SYSID, f, Arc::new(segment.clone()))
                .await
                .unwrap();
        }
        let object = object_name(SYSID, "000000010000000000000002");
        let key = lifeboat_storage::ObjectKey::new(lifeboat_storage::Kind::Archive, &object);
        let mut bytes = mem.get(&key).await.unwrap().to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x80;
        mem.tamper(&key, bytes.into());

        let plain = check(&repo, &CheckOptions::default(), &|_, _| {})
            .await
            .unwrap();
        assert!(plain.is_ok(), "{:?}", plain.errors);
        assert_eq!(plain.archive_objects, 2);

        let read = CheckOptions {
            read_data: true,
            read_data_subset_percent: None,
        };
        let report = check(&repo, &read, &|_, _| {}).await.unwrap();
        assert_eq!(report.archive_objects_read, 2);
        let named: Vec<&str> = report.errors.iter().map(|e| e.object.as_str()).collect();
        assert_eq!(named, [format!("wal/{object}")], "{:?}", report.errors);
    }
}
