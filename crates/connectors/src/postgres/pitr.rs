//! `pg restore`: point-in-time restore and warm standbys.
//!
//! Order of work, chosen so a restore that cannot succeed fails before it
//! writes a byte: choose the base backup for the target, list the archived
//! WAL and check it is continuous from the backup's start to the target
//! (naming the first missing segment), check the target directory is
//! empty, then unpack the backup, write the recovery settings
//! (`recovery.signal` or `standby.signal`, `restore_command`, the target and
//! the action) and, when asked, start the server and wait until recovery
//! has finished.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_repo::{Repository, Snapshot};

use super::base::{BaseBackupInfo, base_backups, choose_system, unpack};
use super::conn;
use super::wal::list_wal;
use super::walname::{Segment, is_segment_name, parse_lsn};
use crate::{Error, Result};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    Time(jiff::Timestamp),
    Lsn(u64),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
    Xid(String),
}

/// What the server does when it reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAction {
    /// End recovery and accept writes (a new timeline).
    #[default]
    Promote,
    /// Stay in recovery, paused, so the data can be inspected first.
    Pause,
    Shutdown,
}

impl TargetAction {
    fn setting(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Options of [`plan`] and [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub to: PathBuf,
    pub target: Option<RecoveryTarget>,
    /// Use this base backup (id, prefix or `latest`) instead of choosing.
    pub snapshot: Option<String>,
    /// The cluster, when the repository holds several.
    pub system_identifier: Option<u64>,
    pub action: TargetAction,
    /// Stop just before the target instead of just after it.
    pub exclusive: bool,
    /// A warm standby: keep replaying WAL as it is archived.
    pub standby: bool,
    /// The `restore_command` to write.
    pub restore_command: String,
    /// Segments put in the read-ahead spool by the restore itself (those
    /// the backup needs to become consistent, plus this many more).
    pub read_ahead: usize,
    /// Extra settings appended to `postgresql.auto.conf` (port, paths).
    pub settings: Vec<(String, String)>,
    /// [`start_and_wait`]: run `pg_ctl` as this OS user (through
    /// `runuser`, for a caller running as root, which PostgreSQL refuses)
    /// and connect as the database user of that name.
    pub run_as: Option<String>,
}

/// What a restore will do, known before anything is written.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub backup: Snapshot,
    pub info: BaseBackupInfo,
    /// WAL segments checked present, first and last (none if the backup
    /// holds its own WAL and nothing else is needed).
    pub wal_first: Option<String>,
    pub wal_last: Option<String>,
    pub wal_segments: u64,
}

/// Chooses the base backup and checks WAL continuity. Writes nothing.
pub async fn plan(repo: &Repository, options: &RestoreOptions) -> Result<RestorePlan> {
    let target = options.target.clone().unwrap_or(RecoveryTarget::Latest);
    let mut backups = base_backups(repo).await?;
    if backups.is_empty() {
        return Err(Error::NotFound(
            "the repository holds no PostgreSQL base backup; run `lifeboat pg backup` first".into(),
        ));
    }
    let (backup, info) = if let Some(q) = &options.snapshot {
        let s = repo.find_snapshot(q).await?;
        let info = BaseBackupInfo::of(&s).ok_or_else(|| {
            Error::BadInput(format!(
                "snapshot {} is not a PostgreSQL base backup",
                s.id.short()
            ))
        })?;
        (s, info)
    } else {
        let system = choose_system(&backups, options.system_identifier)?;
        backups.retain(|(_, i)| i.system_id() == system);
        let chosen = match &target {
            RecoveryTarget::Time(t) => backups.iter().rev().find(|(_, i)| i.stop_time < *t),
            RecoveryTarget::Lsn(l) => backups.iter().rev().find(|(_, i)| i.stop_lsn() <= *l),
            _ => backups.last(),
        };
        chosen.cloned().ok_or_else(|| {
            let oldest = backups
                .first()
                .map(|(s, i)| format!("{} (consistent at {}, LSN {})", s.id.short(), i.stop_time, i.stop_lsn))
                .unwrap_or_default();
            Error::NotFound(format!(
                "no base backup of cluster {system} was finished before the target; the oldest is {oldest}"
            ))
        })?
    };
    let all = list_wal(repo).await?;
    let have = all.get(&info.system_id()).cloned().unwrap_or_default();
    let (first, last, count) = check_continuity(&have, &info, &target, backup.id.short())?;
    Ok(RestorePlan {
        backup,
        info,
        wal_first: first,
        wal_last: last,
        wal_segments: count,
    })
}

/// Segments present per timeline, as numbers.
pub fn segments_by_timeline(
    have: &BTreeSet<String>,
    seg_size: u64,
) -> BTreeMap<u32, BTreeSet<u64>> {
    let mut out: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for n in have.iter().filter(|n| is_segment_name(n)) {
        if let Some(s) = Segment::parse(n, seg_size) {
            out.entry(s.timeline).or_default().insert(s.number);
        }
    }
    out
}

/// Checks that the archive holds every segment recovery from `info` to
/// `target` reads: on the backup's timeline from its start segment (or,
/// when the backup holds its WAL, the segment after its stop) to the last
/// archived one (to the target's segment for an LSN target), and on each
/// later timeline from its first archived segment to its last. Time, name
/// and xid targets cannot be placed in the WAL without reading it, so the
/// check goes to the newest archived segment: a gap after the target also
/// refuses the restore (conservative). Returns the first and last segment
/// checked and how many.
pub fn check_continuity(
    have: &BTreeSet<String>,
    info: &BaseBackupInfo,
    target: &RecoveryTarget,
    backup: String,
) -> Result<(Option<String>, Option<String>, u64)> {
    let seg = info.wal_segment_size;
    let by_tl = segments_by_timeline(have, seg);
    let tl = info.timeline;
    let lsn_cap = match target {
        RecoveryTarget::Lsn(l) => Some(*l / seg),
        _ => None,
    };
    let mut ranges: Vec<(u32, u64, u64)> = Vec::new();
    let empty = BTreeSet::new();
    let on_tl = by_tl.get(&tl).unwrap_or(&empty);
    let from = if info.wal_included {
        info.stop().number + 1
    } else {
        info.start().number
    };
    let newest = on_tl.last().copied();
    let mut to = newest.unwrap_or(0).max(info.stop().number);
    if let Some(cap) = lsn_cap {
        to = to.min(cap.max(info.stop().number));
    }
    if from <= to && (!info.wal_included || newest.is_some_and(|n| n >= from)) {
        ranges.push((tl, from, to));
    }
    for (&t, nums) in by_tl.range(tl + 1..) {
        let (Some(&lo), Some(&hi)) = (nums.first(), nums.last()) else {
            continue;
        };
        let hi = lsn_cap.map_or(hi, |c| hi.min(c));
        if lo <= hi {
            ranges.push((t, lo, hi));
        }
    }
    if let Some(cap) = lsn_cap {
        let reached = by_tl.range(tl..).any(|(_, n)| n.contains(&cap));
        let covered_by_backup = info.wal_included && cap <= info.stop().number;
        if !reached && !covered_by_backup {
            let last_tl = by_tl.keys().next_back().copied().unwrap_or(tl).max(tl);
            return Err(Error::MissingWal {
                segment: Segment {
                    timeline: last_tl,
                    number: cap,
                }
                .name(seg),
                backup,
            });
        }
    }
    let mut count = 0;
    let (mut first, mut last) = (None, None);
    for (t, lo, hi) in ranges {
        let nums = by_tl.get(&t).unwrap_or(&empty);
        for n in lo..=hi {
            let s = Segment {
                timeline: t,
                number: n,
            };
            if !nums.contains(&n) {
                return Err(Error::MissingWal {
                    segment: s.name(seg),
                    backup,
                });
            }
            count += 1;
            first.get_or_insert_with(|| s.name(seg));
            last = Some(s.name(seg));
        }
    }
    Ok((first, last, count))
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub restored_bytes: u64,
    pub data_dir: PathBuf,
}

/// Unpacks the planned base backup into `options.to` and writes the
/// recovery settings. The directory must be absent or empty.
pub async fn restore(
    repo: Arc<Repository>,
    plan: &RestorePlan,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    check_empty(&options.to)?;
    let started = Instant::now();
    // The WAL the backup needs (and the read-ahead) is fetched while the
    // base backup is unpacked: the repository is open here, which spares
    // the server's first restore_command opening it (the password KDF and
    // a listing) while recovery waits, and doing it alongside the file
    // restore takes it off the restore's critical path. The spool lives
    // under pg_wal, which is made first so the unpack finds it there (a
    // directory both create would race).
    let prefetch = async {
        let Some(first) = &plan.wal_first else {
            return;
        };
        let count = (plan.info.stop().number + 1).saturating_sub(plan.info.start().number) as usize
            + options.read_ahead;
        let pg_wal = options.to.join("pg_wal");
        if let Err(e) =
            super::wal::prefetch(repo.clone(), plan.info.system_id(), &pg_wal, first, count).await
        {
            tracing::warn!("prefetching WAL failed ({e}); restore_command will fetch it");
        }
        tracing::debug!("pg restore: WAL prefetched by {:?}", started.elapsed());
    };
    if plan.wal_first.is_some() {
        super::wal::make_spool(&options.to.join("pg_wal"))?;
    }
    let unpacked = async {
        let n = unpack(repo.clone(), &plan.backup, &options.to).await;
        tracing::debug!(
            "pg restore: base backup unpacked by {:?}",
            started.elapsed()
        );
        n
    };
    let (restored_bytes, ()) = tokio::join!(unpacked, prefetch);
    let restored_bytes = restored_bytes?;
    write_recovery_settings(&options.to, options)?;
    Ok(RestoreReport {
        restored_bytes,
        data_dir: options.to.clone(),
    })
}

/// Fails unless `dir` is absent or an empty directory.
pub fn check_empty(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::BadInput(format!(
                    "{} is not empty; restore into a new or empty directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Settings that a restore owns: removed from the restored
/// `postgresql.auto.conf` before the new ones are written, so the targets
/// of an earlier restore (carried in the backup) cannot leak into this one.
const OWNED_SETTINGS: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_timeline",
];

/// Writes `recovery.signal` (or `standby.signal`) and the recovery settings
/// in `postgresql.auto.conf`, each fsynced.
pub fn write_recovery_settings(dir: &Path, options: &RestoreOptions) -> Result<()> {
    let auto = dir.join("postgresql.auto.conf");
    let old = std::fs::read_to_string(&auto).unwrap_or_default();
    let extra_names: Vec<&str> = options.settings.iter().map(|(k, _)| k.as_str()).collect();
    let mut text: String = old
        .lines()
        .filter(|l| {
            let name = l.split('=').next().unwrap_or("").trim();
            !OWNED_SETTINGS.contains(&name) && !extra_names.contains(&name)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str("# Written by lifeboat pg restore\n");
    let mut set = |k: &str, v: &str| text.push_str(&format!("{k} = {}\n", quote(v)));
    set("restore_command", &options.restore_command);
    if !options.standby {
        match options.target.as_ref().unwrap_or(&RecoveryTarget::Latest) {
            RecoveryTarget::Latest => {}
            RecoveryTarget::Time(t) => set(
                "recovery_target_time",
                &t.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            ),
            RecoveryTarget::Lsn(l) => set("recovery_target_lsn", &super::walname::format_lsn(*l)),
            RecoveryTarget::Name(n) => set("recovery_target_name", n),
            RecoveryTarget::Xid(x) => set("recovery_target_xid", x),
        }
        if !matches!(options.target, None | Some(RecoveryTarget::Latest)) {
            set("recovery_target_action", options.action.setting());
            set(
                "recovery_target_inclusive",
                if options.exclusive { "off" } else { "on" },
            );
        }
    }
    set("recovery_target_timeline", "latest");
    for (k, v) in &options.settings {
        set(k, v);
    }
    write_synced(&auto, text.as_bytes())?;
    let signal = if options.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_synced(&dir.join(signal), b"")?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// How a started server ended its recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// Target reached (or WAL exhausted) and promoted: accepting writes.
    Promoted,
    /// Target reached, replay paused (`--target-action pause`).
    Paused,
    /// Target reached and the server shut down.
    ShutDown,
    /// A standby is running and replaying.
    StandbyRunning,
}

/// Starts the restored server with `pg_ctl` and waits until recovery is
/// over (or, for a standby, until it accepts read-only connections). If
/// the server stops on its own (target not reached, missing WAL) the error
/// carries the end of its log.
pub async fn start_and_wait(
    dir: &Path,
    info: &BaseBackupInfo,
    options: &RestoreOptions,
) -> Result<RecoveryOutcome> {
    let major = info.server_version_num / 10000;
    let log = dir
        .join("pg_wal")
        .join(super::wal::SPOOL_DIR)
        .join("server-start.log");
    std::fs::create_dir_all(log.parent().expect("has parent")).map_err(|e| Error::io(&log, e))?;
    let pg_ctl = conn::tool("pg_ctl", Some(major));
    let mut cmd = match &options.run_as {
        Some(user) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", user, "--"]).arg(pg_ctl);
            c
        }
        None => tokio::process::Command::new(pg_ctl),
    };
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "86400", "start"]);
    let log_tail = |log: &Path| conn::tail(&std::fs::read_to_string(log).unwrap_or_default());
    if let Err(e) = conn::run_tool(cmd, "pg_ctl start").await {
        return Err(Error::BadInput(format!(
            "{e}; server log: {}",
            log_tail(&log)
        )));
    }
    if options.standby {
        return Ok(RecoveryOutcome::StandbyRunning);
    }
    let pid_file = dir.join("postmaster.pid");
    let ended = |pid_file: &Path| !pid_file.exists();
    if options.action == TargetAction::Shutdown
        && !matches!(options.target, None | Some(RecoveryTarget::Latest))
    {
        while !ended(&pid_file) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        return Ok(RecoveryOutcome::ShutDown);
    }
    let started = Instant::now();
    loop {
        if ended(&pid_file) {
            return Err(Error::BadInput(format!(
                "the server stopped during recovery; server log: {}",
                log_tail(&log)
            )));
        }
        match recovery_state(dir, options.run_as.as_deref()).await {
            Ok((false, _)) => return Ok(RecoveryOutcome::Promoted),
            Ok((true, paused)) if paused => return Ok(RecoveryOutcome::Paused),
            Ok(_) => {}
            Err(e) if started.elapsed() > Duration::from_secs(60) => {
                tracing::debug!("cannot query the restored server yet: {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(in recovery, replay paused)` of the server running in `dir`, reached
/// through the socket directory and port in its `postmaster.pid`, as the
/// database user `user` (default: `PGUSER`, else the OS user's name).
pub async fn recovery_state(dir: &Path, user: Option<&str>) -> Result<(bool, bool)> {
    let pid = std::fs::read_to_string(dir.join("postmaster.pid"))
        .map_err(|e| Error::io(dir.join("postmaster.pid"), e))?;
    let lines: Vec<&str> = pid.lines().collect();
    let port = lines.get(3).copied().unwrap_or("5432").trim();
    let socket = lines.get(4).copied().unwrap_or("").trim();
    let host = if socket.is_empty() {
        lines
            .get(5)
            .copied()
            .unwrap_or("127.0.0.1")
            .trim()
            .to_string()
    } else {
        socket.to_string()
    };
    let user = user
        .map(str::to_string)
        .or_else(|| std::env::var("PGUSER").ok())
        .unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "postgres".into())
        });
    let url = format!("host={host} port={port} user={user} dbname=postgres connect_timeout=5");
    let client = conn::ConnOptions { url: Some(url) }.connect().await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() = 'paused' \
                         ELSE false END",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Parses `--target-lsn`.
pub fn lsn_arg(s: &str) -> Result<u64> {
    parse_lsn(s)
        .ok_or_else(|| Error::BadInput(format!("bad LSN {s:?}: expected the form 0/3000060")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn info(start: &str, stop: &str, included: bool) -> BaseBackupInfo {
        BaseBackupInfo {
            kind: "base-backup".into(),
            system_identifier: "1".into(),
            server_version: "15".into(),
            server_version_num: 150000,
            timeline: 1,
            start_lsn: "0/0".into(),
            stop_lsn: "0/0".into(),
            start_wal: start.into(),
            stop_wal: stop.into(),
            wal_segment_size: MB16,
            wal_included: included,
            start_time: jiff::Timestamp::UNIX_EPOCH,
            stop_time: jiff::Timestamp::UNIX_EPOCH,
            layout: Default::default(),
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn continuity_names_the_first_gap() {
        let i = info(
            "000000010000000000000002",
            "000000010000000000000002",
            false,
        );
        let have = names(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000005",
        ]);
        match check_continuity(&have, &i, &RecoveryTarget::Latest, "b".into()) {
            Err(Error::MissingWal { segment, .. }) => {
                assert_eq!(segment, "000000010000000000000004")
            }
            other => panic!("expected a gap, got {other:?}"),
        }
        // An LSN target before the gap needs only 2..3.
        let t = RecoveryTarget::Lsn(parse_lsn("0/3000100").unwrap());
        let (first, last, n) = check_continuity(&have, &i, &t, "b".into()).unwrap();
        assert_eq!(first.as_deref(), Some("000000010000000000000002"));
        assert_eq!(last.as_deref(), Some("000000010000000000000003"));
        assert_eq!(n, 2);
        // The backup's own start segment missing is a gap too.
        let have = names(&["000000010000000000000003"]);
        assert!(check_continuity(&have, &i, &RecoveryTarget::Latest, "b".into()).is_err());
    }

    #[test]
    fn later_timelines_are_checked() {
        let i = info(
            "000000010000000000000002",
            "000000010000000000000002",
            false,
        );
        let have = names(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000020000000000000003",
            "000000020000000000000005",
        ]);
        match check_continuity(&have, &i, &RecoveryTarget::Latest, "b".into()) {
            Err(Error::MissingWal { segment, .. }) => {
                assert_eq!(segment, "000000020000000000000004")
            }
            other => panic!("expected a gap, got {other:?}"),
        }
    }
}
