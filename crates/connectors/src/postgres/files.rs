//! The files method of `pg backup`: the data directory read directly, in
//! parallel, between `pg_backup_start` and `pg_backup_stop`.
//!
//! This is PostgreSQL's low-level (non-exclusive) backup API, the one
//! pgBackRest builds on (PostgreSQL documentation, "Continuous Archiving
//! and Point-in-Time Recovery", section "Making a Base Backup Using the Low
//! Level API"). One connection stays open from start to stop: closing it
//! aborts the backup on the server. In between, `lifeboat-snapshot`'s file
//! archiver reads the data directory with one reader per core and with its
//! `live` rule (files that vanish are left out, files that change are kept
//! as read: replaying WAL from the backup's start repairs both, which is
//! why a base backup is only restorable with that WAL). `pg_backup_stop`
//! waits until the WAL the backup needs is archived and returns the
//! `backup_label` (and `tablespace_map`), which go into the snapshot's root
//! before it is committed: restoring the snapshot gives a data directory
//! PostgreSQL recovers from, with either `lifeboat pg restore` or a plain
//! `lifeboat restore`.
//!
//! Left out, as `pg_basebackup` leaves them out (the same documentation
//! section lists them): the contents of `pg_wal`, `pg_replslot`,
//! `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp`
//! and `pg_subtrans` (the directories themselves are kept, empty);
//! `postmaster.pid`, `postmaster.opts`, `pg_internal.init` files, temporary
//! files (`pgsql_tmp*`) and the `.tmp` files of settings being rewritten.
//! Also left out: a `backup_label`, `tablespace_map` or signal file lying
//! in the directory, because the restore writes its own.
//!
//! The method needs the server on this machine (its `postmaster.pid` in the
//! data directory it reports must match the server connected to: same
//! start time and port) and archiving on (without it, only `pg_basebackup
//! -X fetch` can put the needed WAL inside the backup).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_repo::{Repository, Snapshot};
use lifeboat_snapshot::PathMatcher;
use lifeboat_snapshot::backup::{BackupOptions, PagedFiles, backup_pending};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::RestoreOptions;
use tokio_postgres::Client;

use super::BytesProgress;
use super::base::{
    BaseBackupInfo, BaseBackupOptions, Layout, archived_positions, backup_history_files,
    create_data_dir, source_name,
};
use super::conn::ServerFacts;
use super::walname::{Segment, parse_lsn};
use crate::{Error, Result};

/// Directories whose contents a base backup leaves out (relative to the
/// data directory).
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files at the data directory's top that a base backup leaves out.
const TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "recovery.signal",
    "standby.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// Names left out wherever they are.
const ANYWHERE: &[&str] = &["pg_internal.init", "pgsql_tmp*"];

/// Whether `path` is a relation file of a data directory: an array of
/// `block_size` pages, which the backup cuts into page-aligned blocks
/// (docs/pitr.md, "Incrementals"). Relation files are
/// `base/<database oid>/<filenode>` and `global/<filenode>`, with an
/// optional fork suffix (`_fsm`, `_vm`, `_init`) and segment number
/// (`.1`, `.2`, ... past each 1 GiB). Everything else (`pg_xact`,
/// `pg_multixact`, settings, `PG_VERSION`, temporary relations `tNNN_NNN`)
/// is cut by content.
pub fn is_relation_file(path: &Path) -> bool {
    let mut up = path.iter().rev();
    let (Some(name), Some(parent)) = (up.next(), up.next()) else {
        return false;
    };
    let in_place = parent == "global"
        || (up.next() == Some(std::ffi::OsStr::new("base"))
            && all_digits(parent.as_encoded_bytes()));
    let Some(name) = name.to_str().filter(|_| in_place) else {
        return false;
    };
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, Some(seg)),
        None => (name, None),
    };
    let node = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|fork| stem.strip_suffix(fork))
        .unwrap_or(stem);
    all_digits(node.as_bytes()) && segment.is_none_or(|s| all_digits(s.as_bytes()))
}

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// The exclude patterns of a files backup of `data_dir`.
fn excludes(data_dir: &str) -> Vec<String> {
    let dir = PathMatcher::escape(data_dir.trim_end_matches('/'));
    EMPTY_DIRS
        .iter()
        .map(|d| format!("{dir}/{d}/*"))
        .chain(TOP_FILES.iter().map(|f| format!("{dir}/{f}")))
        .chain(ANYWHERE.iter().map(|n| n.to_string()))
        .collect()
}

/// The data directory of the server `client` is connected to, when it is
/// on this machine and readable; otherwise an error that says why and what
/// to do.
pub(super) async fn local_data_dir(client: &Client, facts: &ServerFacts) -> Result<PathBuf> {
    let use_stream = "or use --method stream";
    if facts.archive_mode == "off" {
        return Err(Error::BadInput(format!(
            "the files method needs WAL archiving (archive_mode = on, archive_command = \
             'lifeboat pg wal-push %p'): without it only pg_basebackup can put the WAL a backup \
             needs inside it; turn archiving on {use_stream}"
        )));
    }
    let row = client
        .query_one(
            "SELECT current_setting('data_directory'), \
                    extract(epoch FROM pg_postmaster_start_time())::bigint, \
                    current_setting('port')",
            &[],
        )
        .await
        .map_err(|e| {
            Error::BadInput(format!(
                "cannot read the server's data_directory setting ({e}): the files method needs \
                 a superuser or a member of pg_read_all_settings, {use_stream}"
            ))
        })?;
    let dir: String = row.get(0);
    let started: i64 = row.get(1);
    let port: String = row.get(2);
    let pid_file = Path::new(&dir).join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).map_err(|e| {
        Error::BadInput(format!(
            "the server's data directory {dir} is not readable here ({e}): the server runs on \
             another machine, or this user cannot read its files; run lifeboat as the \
             server's OS user on its machine, {use_stream}"
        ))
    })?;
    if !postmaster_matches(&text, &dir, started, &port) {
        return Err(Error::BadInput(format!(
            "{} belongs to another server than the one connected to (its start time or port \
             differs): the server connected to runs elsewhere; {use_stream}",
            pid_file.display()
        )));
    }
    let control = Path::new(&dir).join("global").join("pg_control");
    std::fs::File::open(&control).map_err(|e| {
        Error::BadInput(format!(
            "cannot read {} ({e}): run lifeboat as the server's OS user, {use_stream}",
            control.display()
        ))
    })?;
    Ok(PathBuf::from(dir))
}

/// Whether `postmaster.pid` (lines: pid, data directory, start time in
/// seconds, port, ...) describes the server that reports `dir`, `started`
/// and `port`. The start times come from two clock readings a moment apart,
/// so they may differ by a second or two.
fn postmaster_matches(text: &str, dir: &str, started: i64, port: &str) -> bool {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let file_started = lines.get(2).and_then(|l| l.parse::<i64>().ok());
    lines.get(1) == Some(&dir)
        && file_started.is_some_and(|t| (t - started).abs() <= 2)
        && lines.get(3) == Some(&port.trim())
}

/// A files backup begun on the server: `pg_backup_start` has returned on
/// `client`, which must stay open until the stop.
pub(super) struct Begun {
    client: Client,
    facts: ServerFacts,
    data_dir: PathBuf,
    start_time: jiff::Timestamp,
}

/// Begins a files backup of `data_dir` (found by [`local_data_dir`]) on
/// the open connection `client`: `pg_backup_start`, an immediate
/// checkpoint unless the options ask for a spread one. Needs no
/// repository, so the caller may open one meanwhile.
pub(super) async fn begin(
    options: &BaseBackupOptions,
    client: Client,
    facts: ServerFacts,
    data_dir: &Path,
) -> Result<Begun> {
    if data_dir.to_str().is_none() {
        return Err(Error::BadInput(format!(
            "data directory {data_dir:?} is not UTF-8"
        )));
    }
    let modern = facts.server_version_num >= 150000;
    let fast = !options.spread_checkpoint;
    let label = format!("lifeboat {}", jiff::Timestamp::now());
    let start_time = jiff::Timestamp::now();
    let start = if modern {
        "SELECT pg_backup_start($1, $2)::text"
    } else {
        "SELECT pg_start_backup($1, $2, false)::text"
    };
    let clock = std::time::Instant::now();
    client.query_one(start, &[&label, &fast]).await?;
    tracing::debug!(
        "pg backup: backup start (checkpoint) took {:?}",
        clock.elapsed()
    );
    Ok(Begun {
        client,
        facts,
        data_dir: data_dir.to_path_buf(),
        start_time,
    })
}

/// Reads the data directory of a [`Begun`] backup into `repo`, stops the
/// backup, waits for its WAL and records the snapshot.
pub(super) async fn backup(
    repo: Arc<Repository>,
    options: &BaseBackupOptions,
    begun: Begun,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(Snapshot, BaseBackupInfo)> {
    let Begun {
        client,
        facts,
        data_dir,
        start_time,
    } = begun;
    let data_dir = data_dir.as_path();
    let dir = data_dir.to_str().expect("checked by begin");
    // Listed after the start: the backup's own history file appears only
    // at its stop.
    let history_before = backup_history_files(&repo, facts.system_identifier).await?;
    let modern = facts.server_version_num >= 150000;
    let read = BackupOptions {
        paths: vec![data_dir.to_path_buf()],
        excludes: excludes(dir),
        tags: options.tags.clone(),
        host: options.host.clone(),
        mode: options.mode,
        compression_level: options.compression_level,
        source: Some(source_name(facts.system_identifier)),
        contents_as_root: true,
        live: true,
        paged: Some(PagedFiles {
            page_size: usize::try_from(facts.block_size).unwrap_or(8192).max(512),
            matches: is_relation_file,
        }),
        ..Default::default()
    };
    // On any error from here the connection is dropped with the pending
    // snapshot, which ends the backup on the server and leaves only
    // unreferenced blobs in the repository.
    let clock = std::time::Instant::now();
    let mut pending =
        backup_pending(repo.clone(), &read, Arc::new(BytesProgress(on_bytes))).await?;
    tracing::debug!(
        "pg backup: reading the data directory took {:?}",
        clock.elapsed()
    );
    if pending.record().partial {
        let first: Vec<&str> = pending
            .warnings()
            .iter()
            .take(3)
            .map(String::as_str)
            .collect();
        return Err(Error::BadInput(format!(
            "could not read every file of the data directory, so no backup was recorded: {}",
            first.join("; ")
        )));
    }
    // A primary's stop does not wait for archiving: the server would
    // check for it once a second (PostgreSQL 15's do_pg_backup_stop sleeps
    // 1 s between checks), so the backup waits itself, at a finer step
    // (as pgBackRest does, with its archive check). A standby's stop waits
    // as before: only the server knows when a standby archives.
    let wait = facts.standby;
    let stop = if modern {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop($1)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, $1)"
    };
    let clock = std::time::Instant::now();
    let row = client.query_one(stop, &[&wait]).await?;
    let backup_label: String = row.get(1);
    if !wait {
        let stop_lsn = parse_lsn(&row.get::<_, String>(0)).unwrap_or_default();
        let needed =
            needed_wal(&backup_label, stop_lsn, facts.wal_segment_size).ok_or_else(|| {
                Error::Internal(format!("cannot read the backup label: {backup_label:?}"))
            })?;
        wait_archived(&client, data_dir, &needed).await?;
    }
    drop(client);
    tracing::debug!(
        "pg backup: backup stop (WAL archived) took {:?}",
        clock.elapsed()
    );
    let stop_time = jiff::Timestamp::now();
    let tablespace_map: Option<String> = row.get(2);
    pending
        .add_root_file("backup_label", backup_label.as_bytes(), 0o600)
        .await?;
    if let Some(map) = tablespace_map.filter(|m| !m.is_empty()) {
        pending
            .add_root_file("tablespace_map", map.as_bytes(), 0o600)
            .await?;
    }
    let clock = std::time::Instant::now();
    let positions = archived_positions(&repo, &facts, &history_before).await?;
    let mut info = BaseBackupInfo::new(&facts, positions, start_time, stop_time);
    info.layout = Layout::Files;
    let outcome = pending.commit(info.extra()).await?;
    tracing::debug!(
        "pg backup: recording the snapshot took {:?}",
        clock.elapsed()
    );
    Ok((outcome.snapshot, info))
}

/// The WAL files a backup needs archived before it is restorable, from its
/// backup label (`START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`,
/// `START TIMELINE: 1`) and its stop position: the backup history file
/// the stop writes (named after the start segment and offset) and the
/// segment holding the stop position's last byte. These are the two files
/// PostgreSQL's own stop waits for.
fn needed_wal(label: &str, stop_lsn: u64, segment_size: u64) -> Option<[String; 2]> {
    let field = |name: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let start = parse_lsn(field("START WAL LOCATION:")?.split_whitespace().next()?)?;
    let timeline: u32 = field("START TIMELINE:")?.parse().ok()?;
    if segment_size == 0 || stop_lsn < start {
        return None;
    }
    let history = format!(
        "{}.{:08X}.backup",
        Segment::of_lsn(timeline, start, segment_size).name(segment_size),
        start % segment_size
    );
    let last = Segment::before_lsn(timeline, stop_lsn, segment_size).name(segment_size);
    Some([history, last])
}

/// Waits until the server has archived every file of `names`, by the
/// archiver's status files (`pg_wal/archive_status/NAME.done`), read as
/// PostgreSQL's own stop reads them: a file is still to be archived while
/// it has no `.done` and either its `.ready` or the file itself is there.
/// Checks every 10 ms; after a minute it warns once with the archiver's
/// last failure, and goes on waiting, as the server would.
async fn wait_archived(client: &Client, data_dir: &Path, names: &[String]) -> Result<()> {
    let wal = data_dir.join("pg_wal");
    let status = wal.join("archive_status");
    let busy = |name: &String| {
        !status.join(format!("{name}.done")).exists()
            && (status.join(format!("{name}.ready")).exists() || wal.join(name).exists())
    };
    let started = std::time::Instant::now();
    let mut warned = false;
    while names.iter().any(busy) {
        if !warned && started.elapsed() > std::time::Duration::from_secs(60) {
            warned = true;
            let row = client
                .query_one(
                    "SELECT coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') \
                     FROM pg_stat_archiver",
                    &[],
                )
                .await?;
            let (failed, when): (String, String) = (row.get(0), row.get(1));
            tracing::warn!(
                "still waiting for the server to archive {} after a minute (last failure: \
                 {failed:?} at {when:?}); check archive_command and the server's log",
                names.join(" and ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Restores a files base backup into `dir` (absent or empty): the files in
/// parallel, then the directories PostgreSQL needs that a backup leaves
/// empty. A file that could not be restored fails the whole restore: a
/// data directory missing a file must not be started.
pub(super) async fn restore(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    dir: &Path,
) -> Result<u64> {
    create_data_dir(dir)?;
    // fsync per file: a data directory is a few hundred mostly large files,
    // and it is often restored beside a running server whose dirty pages a
    // syncfs would wait for too.
    let options = RestoreOptions {
        target: dir.to_path_buf(),
        sync_each_file: true,
        ..Default::default()
    };
    let stats = lifeboat_snapshot::restore::restore(repo, snapshot, &options, &NoProgress).await?;
    if !stats.errors.is_empty() {
        let first: Vec<&str> = stats.errors.iter().take(3).map(String::as_str).collect();
        return Err(Error::BadInput(format!(
            "{} file(s) of the base backup could not be restored, so {} is incomplete and must \
             not be started: {}",
            stats.errors.len(),
            dir.display(),
            first.join("; ")
        )));
    }
    for d in EMPTY_DIRS.iter().copied().chain(["pg_wal/archive_status"]) {
        let path = dir.join(d);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(stats.bytes_written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_wal_is_the_history_file_and_the_stop_segment() {
        let label = "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n\
                     CHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-12-06 23:00:00 UTC\n\
                     LABEL: x\nSTART TIMELINE: 3\n";
        let seg = 16 << 20;
        let [history, last] = needed_wal(label, 0x700_0100, seg).unwrap();
        assert_eq!(history, "000000030000000000000005.00000028.backup");
        assert_eq!(last, "000000030000000000000007");
        // A stop on a segment boundary needs the segment before it.
        let [_, last] = needed_wal(label, 0x800_0000, seg).unwrap();
        assert_eq!(last, "000000030000000000000007");
        assert!(needed_wal("LABEL: x\n", 0x700_0100, seg).is_none());
        assert!(needed_wal(label, 0x100, seg).is_none());
    }

    #[test]
    fn postmaster_pid_must_describe_the_connected_server() {
        let pid = "4242\n/srv/pg/data\n1700000000\n5432\n/var/run/postgresql\n*\n  1 2\nready\n";
        assert!(postmaster_matches(pid, "/srv/pg/data", 1700000001, "5432"));
        assert!(!postmaster_matches(
            pid,
            "/srv/pg/other",
            1700000000,
            "5432"
        ));
        assert!(!postmaster_matches(pid, "/srv/pg/data", 1700000100, "5432"));
        assert!(!postmaster_matches(pid, "/srv/pg/data", 1700000000, "5433"));
        assert!(!postmaster_matches("", "/srv/pg/data", 1700000000, "5432"));
    }

    #[test]
    fn relation_files_are_told_apart_by_name_and_place() {
        let yes = [
            "/d/base/5/16396",
            "/d/base/5/16396.1",
            "/d/base/5/16396_fsm",
            "/d/base/5/16396_vm",
            "/d/base/16384/2619_init",
            "/d/base/1/1259_fsm.2",
            "/d/global/1262",
            "/d/global/1262_vm",
        ];
        let no = [
            "/d/base/5/PG_VERSION",
            "/d/base/5/pg_filenode.map",
            "/d/base/5/t3_16400",
            "/d/base/5/16396.",
            "/d/base/5/16396_fsm_vm",
            "/d/base/5/16396.x",
            "/d/base/pgsql_tmp/123",
            "/d/global/pg_control",
            "/d/pg_xact/0000",
            "/d/pg_multixact/offsets/0000",
            "/d/base/5x/16396",
            "16396",
        ];
        for p in yes {
            assert!(is_relation_file(Path::new(p)), "{p}");
        }
        for p in no {
            assert!(!is_relation_file(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn excludes_escape_the_data_directory() {
        let ex = excludes("/srv/pg[1]/data/");
        // The backup matches them with the one dialect every exclude uses.
        let set = PathMatcher::new(&ex).unwrap();
        assert!(set.is_match(b"/srv/pg[1]/data/pg_wal/000000010000000000000001"));
        assert!(set.is_match(b"/srv/pg[1]/data/pg_wal/archive_status"));
        assert!(set.is_match(b"/srv/pg[1]/data/postmaster.pid"));
        assert!(!set.is_match(b"/srv/pg1/data/postmaster.pid"));
        assert!(!set.is_match(b"/srv/pg[1]/data/base/1/1259"));
        assert!(set.is_match(b"/srv/pg[1]/data/base/1/pgsql_tmp/pgsql_tmp1234.0"));
    }
}
