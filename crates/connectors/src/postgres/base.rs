//! `pg backup`: a physical base backup into a snapshot, and unpacking one
//! into a data directory.
//!
//! Two methods. When the server runs on this machine and its data
//! directory is readable here, the files are read directly and in
//! parallel between `pg_backup_start` and `pg_backup_stop` ([`super::files`],
//! the snapshot is the data directory itself). Otherwise (a remote server,
//! or archiving off) `pg_basebackup` streams the cluster as a tar, as
//! described next; `--method` chooses explicitly.
//!
//! `pg_basebackup -D - -F tar` writes the whole cluster as one tar stream on
//! its stdout; it is chunked straight into the repository (content-defined
//! chunks deduplicate unchanged relation files between backups; nothing is
//! staged on disk). With archiving on (`archive_mode`), `-X none`: the
//! server waits until the WAL the backup needs is archived before
//! `pg_basebackup` exits, so a successful backup is restorable from the
//! archive. The positions (start and stop LSN, timeline) are read from the
//! backup history file the server archives at the end of the backup, which
//! also proves that `archive_command` writes to this repository. Without
//! archiving, `-X fetch` puts the WAL inside the tar, so the backup
//! restores on its own (but without point-in-time recovery), and the
//! positions come from `pg_basebackup -v`'s report.
//!
//! A stream snapshot holds one file, `base.tar`; a files snapshot holds the
//! data directory's tree ([`Layout`]). Either record's `extra["postgresql"]`
//! is a [`BaseBackupInfo`] (positions, timeline, WAL range, server version,
//! system identifier, times, layout). Only clusters without extra
//! tablespaces are supported (`pg_basebackup` cannot stream those to
//! stdout, and the files method refuses them rather than store a symlink
//! to data it did not read).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::{BackupMode, Repository, Snapshot};
use lifeboat_snapshot::backup::StreamOptions;
use lifeboat_snapshot::dump::{stream_file, stream_reader};
use serde::{Deserialize, Serialize};

use super::EXTRA_KEY;
use super::conn::{self, ConnOptions, server_facts};
use super::wal::{get_wal, list_wal};
use super::walname::{Segment, format_lsn, parse_lsn};
use crate::stream::store_tool_output;
use crate::{Error, Result};

/// The name of the tar file inside a base backup snapshot.
pub const BASE_TAR: &str = "base.tar";

/// How a base backup snapshot holds the data directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One file, [`BASE_TAR`], as `pg_basebackup` streamed it (the default,
    /// for snapshots written before the files method existed).
    #[default]
    Tar,
    /// The data directory's files at the snapshot's root, `backup_label`
    /// among them.
    Files,
}

/// How `pg backup` reads the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackupMethod {
    /// Files when the data directory is local and readable and archiving is
    /// on, else stream.
    #[default]
    Auto,
    /// Read the data directory's files directly, in parallel.
    Files,
    /// `pg_basebackup`'s tar stream (works against a remote server).
    Stream,
}

/// What a base backup snapshot records about the cluster and the backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseBackupInfo {
    /// Always `"base-backup"`.
    pub kind: String,
    /// As a decimal string: JSON numbers lose precision past 2^53.
    pub system_identifier: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// First and last WAL segment the backup needs to become consistent.
    pub start_wal: String,
    pub stop_wal: String,
    pub wal_segment_size: u64,
    /// The needed WAL is inside the tar (`-X fetch`, archiving was off).
    pub wal_included: bool,
    pub start_time: jiff::Timestamp,
    /// After this time the backup is consistent: a recovery target must be
    /// later.
    pub stop_time: jiff::Timestamp,
    #[serde(default)]
    pub layout: Layout,
}

impl BaseBackupInfo {
    pub fn system_id(&self) -> u64 {
        self.system_identifier.parse().unwrap_or_default()
    }

    pub fn start(&self) -> Segment {
        Segment::parse(&self.start_wal, self.wal_segment_size).expect("valid start segment")
    }

    pub fn stop(&self) -> Segment {
        Segment::parse(&self.stop_wal, self.wal_segment_size).expect("valid stop segment")
    }

    pub fn stop_lsn(&self) -> u64 {
        parse_lsn(&self.stop_lsn).unwrap_or_default()
    }

    /// The info of a snapshot, if it is a base backup.
    pub fn of(snapshot: &Snapshot) -> Option<Self> {
        let v = snapshot.record.extra.get(EXTRA_KEY)?;
        let info: Self = serde_json::from_value(v.clone()).ok()?;
        (info.kind == "base-backup"
            && Segment::parse(&info.start_wal, info.wal_segment_size).is_some()
            && Segment::parse(&info.stop_wal, info.wal_segment_size).is_some())
        .then_some(info)
    }
}

/// The source name base backups of a cluster are recorded under.
pub fn source_name(system_identifier: u64) -> String {
    format!("postgresql:{system_identifier}:base-backup")
}

/// Options of [`base_backup`].
#[derive(Debug, Clone, Default)]
pub struct BaseBackupOptions {
    pub conn: ConnOptions,
    pub mode: BackupMode,
    pub tags: Vec<String>,
    /// Host recorded in the snapshot (default: this machine's name).
    pub host: Option<String>,
    pub compression_level: Option<i32>,
    /// Wait for a spread checkpoint instead of forcing an immediate one.
    pub spread_checkpoint: bool,
    pub method: BackupMethod,
}

/// Runs a base backup into a new snapshot: [`start`], then [`finish`].
pub async fn base_backup(
    repo: Arc<Repository>,
    options: &BaseBackupOptions,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(Snapshot, BaseBackupInfo)> {
    let started = start(options).await?;
    finish(repo, options, started, on_bytes).await
}

/// A base backup begun on the server and not yet tied to a repository
/// ([`start`]). Dropping it closes its connection, which ends a files
/// backup on the server.
pub struct Started(StartedKind);

enum StartedKind {
    /// `pg_backup_start` has returned on a held connection.
    Files(Box<super::files::Begun>),
    /// `pg_basebackup` runs in [`finish`].
    Stream(conn::ServerFacts),
}

/// The part of a base backup that needs no repository: connecting, the
/// server's facts and the method, and for the files method
/// `pg_backup_start` with its checkpoint. A caller may open the repository
/// meanwhile (`lifeboat pg backup` does: the key derivation and the
/// checkpoint then overlap) and pass it to [`finish`].
pub async fn start(options: &BaseBackupOptions) -> Result<Started> {
    let client = options.conn.connect().await?;
    let facts = server_facts(&client).await?;
    refuse_tablespaces(&client).await?;
    let local = match options.method {
        BackupMethod::Stream => None,
        BackupMethod::Files => Some(super::files::local_data_dir(&client, &facts).await?),
        BackupMethod::Auto => match super::files::local_data_dir(&client, &facts).await {
            Ok(dir) => Some(dir),
            Err(why) => {
                tracing::info!("using the pg_basebackup stream: {why}");
                None
            }
        },
    };
    Ok(Started(match local {
        Some(data_dir) => StartedKind::Files(Box::new(
            super::files::begin(options, client, facts, &data_dir).await?,
        )),
        None => StartedKind::Stream(facts),
    }))
}

/// Reads a [`start`]ed base backup into `repo` and records its snapshot.
pub async fn finish(
    repo: Arc<Repository>,
    options: &BaseBackupOptions,
    started: Started,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(Snapshot, BaseBackupInfo)> {
    match started.0 {
        StartedKind::Files(begun) => super::files::backup(repo, options, *begun, on_bytes).await,
        StartedKind::Stream(facts) => stream_backup(repo, options, facts, on_bytes).await,
    }
}

/// The stream method: `pg_basebackup`'s tar into one file of a snapshot.
async fn stream_backup(
    repo: Arc<Repository>,
    options: &BaseBackupOptions,
    facts: conn::ServerFacts,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(Snapshot, BaseBackupInfo)> {
    let archiving = facts.archive_mode != "off";
    let major = facts.server_version_num / 10000;
    let mut cmd = tokio::process::Command::new(conn::tool("pg_basebackup", Some(major)));
    cmd.args(options.conn.tool_args())
        .args(["-D", "-", "-F", "tar", "-v", "--no-password"])
        .args(["-X", if archiving { "none" } else { "fetch" }])
        .args([
            "-c",
            if options.spread_checkpoint {
                "spread"
            } else {
                "fast"
            },
        ])
        .env("LC_ALL", "C");
    // With -X none the server archives a backup history file
    // (`<segment>.<offset>.backup`) before pg_basebackup returns; the new
    // one is this backup's, and its presence proves archive_command writes
    // to this repository.
    let history_before = backup_history_files(&repo, facts.system_identifier).await?;
    let start_time = jiff::Timestamp::now();
    // Stored, not yet visible: the snapshot is committed only once
    // pg_basebackup has succeeded and the WAL positions are known.
    let (written, stderr) = store_tool_output(
        cmd,
        "pg_basebackup",
        "pg_basebackup (set LIFEBOAT_PG_BIN?)",
        repo.clone(),
        &StreamOptions {
            file_name: BASE_TAR.into(),
            source: Some(source_name(facts.system_identifier)),
            host: options.host.clone(),
            tags: options.tags.clone(),
            mode: options.mode,
            compression_level: options.compression_level,
            threads: None,
            dry_run: false,
        },
        on_bytes,
    )
    .await?;
    let stop_time = jiff::Timestamp::now();
    let positions = if archiving {
        archived_positions(&repo, &facts, &history_before).await?
    } else {
        parse_report(&stderr).ok_or_else(|| Error::Tool {
            tool: "pg_basebackup".into(),
            status: "no start/end point in its report".into(),
            stderr: conn::tail(&stderr),
        })?
    };
    let mut info = BaseBackupInfo::new(&facts, positions, start_time, stop_time);
    info.wal_included = !archiving;
    let outcome = written.commit(info.extra()).await?;
    Ok((outcome.snapshot, info))
}

impl BaseBackupInfo {
    /// The record of a backup of the server `facts` describes, with WAL
    /// positions (start LSN, timeline, stop LSN); WAL not included, tar layout.
    pub(super) fn new(
        facts: &conn::ServerFacts,
        (start_lsn, timeline, stop_lsn): (u64, u32, u64),
        start_time: jiff::Timestamp,
        stop_time: jiff::Timestamp,
    ) -> Self {
        let seg = facts.wal_segment_size;
        BaseBackupInfo {
            kind: "base-backup".into(),
            system_identifier: facts.system_identifier.to_string(),
            server_version: facts.server_version.clone(),
            server_version_num: facts.server_version_num,
            timeline,
            start_lsn: format_lsn(start_lsn),
            stop_lsn: format_lsn(stop_lsn),
            start_wal: Segment::of_lsn(timeline, start_lsn, seg).name(seg),
            stop_wal: Segment::before_lsn(timeline, stop_lsn.max(start_lsn + 1), seg).name(seg),
            wal_segment_size: seg,
            wal_included: false,
            start_time,
            stop_time,
            layout: Layout::Tar,
        }
    }

    /// The snapshot record's `extra` holding this info.
    pub(super) fn extra(&self) -> BTreeMap<String, serde_json::Value> {
        let mut extra = BTreeMap::new();
        extra.insert(
            EXTRA_KEY.to_string(),
            serde_json::to_value(self).expect("serializes"),
        );
        extra
    }
}

/// Refuses clusters with tablespaces besides the default ones: neither
/// method can back them up yet, and saying so beats a backup that restores
/// without them.
async fn refuse_tablespaces(client: &tokio_postgres::Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
            &[],
        )
        .await?;
    let n: i64 = row.get(0);
    if n > 0 {
        return Err(Error::BadInput(format!(
            "the cluster has {n} tablespace(s) besides pg_default and pg_global; lifeboat pg \
             backup does not support tablespaces yet (back up with pg_basebackup -F plain, or \
             move the tables into pg_default)"
        )));
    }
    Ok(())
}

/// Start LSN, timeline and stop LSN from the backup history file the
/// server archived for this backup (the one not in `before`). Its arrival
/// proves that archive_command writes to this repository.
pub(super) async fn archived_positions(
    repo: &Repository,
    facts: &conn::ServerFacts,
    before: &std::collections::BTreeSet<String>,
) -> Result<(u64, u32, u64)> {
    let after = backup_history_files(repo, facts.system_identifier).await?;
    let ours = after.difference(before).last().ok_or_else(|| {
        Error::BadInput(format!(
            "the base backup finished but its backup history file did not arrive in this \
             repository: archive_command ({:?}) must run `lifeboat pg wal-push %p` into the \
             same repository, or WAL needed to restore this backup is elsewhere",
            facts.archive_command
        ))
    })?;
    let text = get_wal(repo, facts.system_identifier, ours)
        .await?
        .ok_or_else(|| Error::NotFound(format!("backup history file {ours} vanished")))?;
    parse_history(&String::from_utf8_lossy(&text)).ok_or_else(|| {
        Error::BadInput(format!(
            "backup history file {ours} has no start/stop location"
        ))
    })
}

/// Start LSN, timeline and end LSN from `pg_basebackup -v`'s report
/// (`write-ahead log start point: 0/2000028 on timeline 1`,
/// `write-ahead log end point: 0/2000100`), which it prints in the C
/// locale.
fn parse_report(stderr: &str) -> Option<(u64, u32, u64)> {
    let mut start = None;
    let mut end = None;
    for line in stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut it = rest.split(" on timeline ");
            let lsn = parse_lsn(it.next()?)?;
            let tl = it.next()?.trim().parse().ok()?;
            start = Some((lsn, tl));
        } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            end = parse_lsn(rest);
        }
    }
    let (s, tl) = start?;
    Some((s, tl, end?))
}

/// The backup history files (`*.backup`) archived for a cluster.
pub(super) async fn backup_history_files(
    repo: &Repository,
    system_identifier: u64,
) -> Result<std::collections::BTreeSet<String>> {
    Ok(list_wal(repo)
        .await?
        .remove(&system_identifier)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(".backup"))
        .collect())
}

/// Start LSN, timeline and stop LSN from a backup history file
/// (`START WAL LOCATION: 0/2000028 (file ...)`, `STOP WAL LOCATION: ...`,
/// `START TIMELINE: 1`).
pub fn parse_history(text: &str) -> Option<(u64, u32, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let lsn = |v: String| parse_lsn(v.split_whitespace().next()?);
    let start = lsn(field("START WAL LOCATION:")?)?;
    let stop = lsn(field("STOP WAL LOCATION:")?)?;
    let tl = field("START TIMELINE:")?.parse().ok()?;
    Some((start, tl, stop))
}

/// Unpacks a base backup snapshot into `dir` (which must be empty or
/// absent; it is created with mode 0700 as PostgreSQL requires). A tar is
/// read straight from the repository; a files snapshot is restored with
/// parallel writes.
pub async fn unpack(repo: Arc<Repository>, snapshot: &Snapshot, dir: &Path) -> Result<u64> {
    if BaseBackupInfo::of(snapshot).is_some_and(|i| i.layout == Layout::Files) {
        return super::files::restore(&repo, snapshot, dir).await;
    }
    let node = stream_file(&repo, snapshot).await?;
    if node.name != BASE_TAR.as_bytes() {
        return Err(Error::BadInput(format!(
            "snapshot {} is not a base backup",
            snapshot.id.short()
        )));
    }
    create_data_dir(dir)?;
    let reader = stream_reader(repo, &node);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut counting = Counting {
            inner: reader,
            n: 0,
        };
        let mut archive = tar::Archive::new(&mut counting);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(false);
        archive.unpack(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(counting.n)
    })
    .await
    .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?
}

/// Creates `dir` (and its parents) with mode 0700, as PostgreSQL requires
/// of a data directory.
pub(super) fn create_data_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(dir, e))
}

struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The cluster (PostgreSQL system identifier) a command works on among
/// `backups`: `asked`, or the only cluster they are of. No backup at all,
/// or several clusters without `asked`, is an error saying what to do.
pub(crate) fn choose_system(
    backups: &[(Snapshot, BaseBackupInfo)],
    asked: Option<u64>,
) -> Result<u64> {
    let systems: std::collections::BTreeSet<u64> =
        backups.iter().map(|(_, i)| i.system_id()).collect();
    match (asked, systems.len()) {
        (Some(s), _) => Ok(s),
        (None, 0) => Err(Error::NotFound(
            "the repository holds no PostgreSQL base backup; run `lifeboat pg backup` first".into(),
        )),
        (None, 1) => Ok(*systems.first().expect("one")),
        (None, _) => Err(Error::BadInput(format!(
            "the repository holds base backups of several clusters ({}); choose one with --system-id",
            systems
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Every base backup in the repository, oldest first.
pub async fn base_backups(repo: &Repository) -> Result<Vec<(Snapshot, BaseBackupInfo)>> {
    Ok(repo
        .snapshots()
        .await?
        .into_iter()
        .filter_map(|s| BaseBackupInfo::of(&s).map(|i| (s, i)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parses() {
        let s = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                 pg_basebackup: checkpoint completed\n\
                 pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                 pg_basebackup: write-ahead log end point: 0/2000100\n\
                 pg_basebackup: base backup completed\n";
        assert_eq!(parse_report(s), Some((0x2000028, 1, 0x2000100)));
        assert_eq!(parse_report("pg_basebackup: error"), None);
    }

    #[test]
    fn history_file_parses() {
        let s = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                 STOP WAL LOCATION: 0/3000100 (file 000000010000000000000003)\n\
                 CHECKPOINT LOCATION: 0/2000060\n\
                 START TIMELINE: 1\n";
        assert_eq!(parse_history(s), Some((0x2000028, 1, 0x3000100)));
        assert_eq!(parse_history("START TIMELINE: 1"), None);
    }
}
