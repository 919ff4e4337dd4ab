//! `pg check`: can the repository restore this cluster to any point in its
//! PITR window, and will it keep being able to?
//!
//! Three groups of findings: server settings that break archiving or PITR
//! (each named with its fix), archiver health from `pg_stat_archiver`, and
//! continuity of the archived WAL from the oldest base backup's start to
//! the newest archived segment. The report also states the PITR window:
//! from the oldest base backup's consistency time to the last archived
//! WAL.

use lifeboat_repo::Repository;
use serde::Serialize;

use super::base::base_backups;
use super::conn::{ConnOptions, server_facts};
use super::pitr::{RecoveryTarget, check_continuity};
use super::wal::list_wal;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `error`: PITR is broken or will break; `warning`: degraded.
    pub severity: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub system_identifier: String,
    pub base_backups: usize,
    pub wal_files: usize,
    /// PITR window: earliest and latest point a restore can reach.
    pub window_start: Option<jiff::Timestamp>,
    pub window_end: Option<String>,
    pub newest_segment: Option<String>,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.severity != "error")
    }
}

pub async fn check(repo: &Repository, conn: &ConnOptions) -> Result<CheckReport> {
    let client = conn.connect().await?;
    let facts = server_facts(&client).await?;
    let mut findings = Vec::new();
    let mut error = |m: String| {
        findings.push(Finding {
            severity: "error",
            message: m,
        })
    };
    if facts.wal_level == "minimal" {
        error(
            "wal_level is minimal: set wal_level = replica in postgresql.conf and restart".into(),
        );
    }
    if facts.archive_mode == "off" {
        error("archive_mode is off: set archive_mode = on and restart PostgreSQL".into());
    }
    if !facts.archive_command.contains("wal-push") {
        error(format!(
            "archive_command is {:?}: set archive_command = 'lifeboat -r REPO --password-file FILE pg wal-push %p' and reload",
            facts.archive_command
        ));
    }
    let row = client
        .query_one(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, \
                    last_failed_wal, last_failed_time, \
                    coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
             FROM pg_stat_archiver",
            &[],
        )
        .await?;
    let last_archived_wal: Option<String> = row.get(1);
    let last_archived_time: Option<std::time::SystemTime> = row.get(2);
    let failed_count: i64 = row.get(3);
    let last_failed_wal: Option<String> = row.get(4);
    let failing: bool = row.get(6);
    if failing {
        error(format!(
            "the archiver is failing: {failed_count} failures, last on {}; see the server log for the archive_command's message (WAL piles up in pg_wal until it succeeds)",
            last_failed_wal.unwrap_or_default()
        ));
    }
    let mut warning = |m: String| {
        findings.push(Finding {
            severity: "warning",
            message: m,
        })
    };
    if facts.archive_timeout_s == 0 {
        warning(
            "archive_timeout is 0: on a quiet server the last changes may stay unarchived for a long time; set archive_timeout = 60 to bound that to a minute".into(),
        );
    }
    let sysid = facts.system_identifier;
    let backups: Vec<_> = base_backups(repo)
        .await?
        .into_iter()
        .filter(|(_, i)| i.system_id() == sysid)
        .collect();
    let wal = list_wal(repo).await?;
    let have = wal.get(&sysid).cloned().unwrap_or_default();
    let newest_segment = have
        .iter()
        .filter(|n| super::walname::is_segment_name(n))
        .max_by(|a, b| a[8..].cmp(&b[8..]).then(a.cmp(b)))
        .cloned();
    let mut window_start = None;
    match backups.first() {
        None => findings.push(Finding {
            severity: "error",
            message: "no base backup of this cluster in the repository: run `lifeboat pg backup`"
                .into(),
        }),
        Some((s, info)) => {
            match check_continuity(&have, info, &RecoveryTarget::Latest, s.id.short()) {
                Ok(_) => window_start = Some(info.stop_time),
                Err(Error::MissingWal { segment, .. }) => findings.push(Finding {
                    severity: "error",
                    message: format!(
                        "WAL segment {segment} is missing from the repository: restores from base backup {} cannot replay past it; take a new base backup now",
                        s.id.short()
                    ),
                }),
                Err(e) => return Err(e),
            }
        }
    }
    let window_end = last_archived_time
        .map(|t| {
            jiff::Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        })
        .or(last_archived_wal);
    Ok(CheckReport {
        system_identifier: sysid.to_string(),
        base_backups: backups.len(),
        wal_files: have.len(),
        window_start,
        window_end,
        newest_segment,
        findings,
    })
}
