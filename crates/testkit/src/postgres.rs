//! Throwaway PostgreSQL clusters for tests.
//!
//! [`PgCluster::start`] runs `initdb` and `pg_ctl start` (from
//! `/usr/lib/postgresql/<newest>/bin`, or `LIFEBOAT_PG_BIN`) in a fresh
//! short-named directory under `/tmp` (Unix socket paths must stay under
//! ~107 bytes), listening on a free port of 127.0.0.1 and on a socket in
//! that directory, with `wal_level = replica`, `fsync = off` and, when
//! asked, archiving. PostgreSQL refuses to run as root, so when the tests
//! run as root every server command goes through `runuser -u postgres --`
//! and the directories are chowned to `postgres` ([`as_postgres`],
//! [`pg_tempdir`]). The server is stopped (immediate mode) on drop.
//! [`PgCluster::adopt`] wraps a server some other command started (a
//! restored data directory) so it is stopped on drop too.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::services::{in_ci, require_or_skip};

/// The directory of the server binaries, or `None` (after a skip notice;
/// a panic in CI) when PostgreSQL is not installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("LIFEBOAT_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    majors.sort_unstable();
    for m in majors.iter().rev() {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{m}/bin"));
        if d.join("initdb").is_file() {
            return Some(d);
        }
    }
    require_or_skip("initdb", "PostgreSQL tests (apt-get install postgresql)")
        .map(|p| p.parent().expect("binary has a directory").to_path_buf())
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program args...` run as the `postgres` user when the tests run as root.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Makes `path` (recursively) owned by `postgres` when running as root.
pub fn chown_postgres(path: &Path) {
    if running_as_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("run chown");
        assert!(st.success(), "chown postgres {}", path.display());
    }
}

/// A short-named temp directory under /tmp that the `postgres` user owns.
pub fn pg_tempdir() -> TempDir {
    let d = tempfile::Builder::new()
        .prefix("lbpg")
        .tempdir_in("/tmp")
        .expect("temp dir");
    chown_postgres(d.path());
    d
}

/// Re-exported here for the tests that start clusters on their own ports.
pub use crate::services::free_port;

/// Settings of a new cluster.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// `archive_command`; `None` leaves archiving off.
    pub archive_command: Option<String>,
    /// More `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct PgCluster {
    /// Holds the data directory and the socket (unless adopted).
    _dir: Option<TempDir>,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
}

impl PgCluster {
    /// Creates and starts a cluster; `None` (skip) without PostgreSQL.
    pub fn start(options: &PgOptions) -> Option<PgCluster> {
        let bin = bin_dir()?;
        let dir = pg_tempdir();
        let data = dir.path().join("d");
        run_ok(
            as_postgres(bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ]),
            "initdb",
        );
        let port = free_port();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "wal_level = replica".into(),
            "fsync = off".into(),
            "max_wal_senders = 4".into(),
        ];
        if let Some(cmd) = &options.archive_command {
            conf.push("archive_mode = on".into());
            conf.push(format!("archive_command = '{}'", cmd.replace('\'', "''")));
        }
        conf.extend(options.extra_conf.iter().cloned());
        append_conf(&data, &conf);
        let c = PgCluster {
            socket_dir: dir.path().to_path_buf(),
            _dir: Some(dir),
            data,
            port,
            bin,
        };
        c.pg_ctl(&["-w", "-t", "60", "start"]);
        Some(c)
    }

    /// Wraps a server running from `data` (started by another command) so
    /// it is stopped on drop.
    pub fn adopt(data: PathBuf, socket_dir: PathBuf, port: u16) -> PgCluster {
        PgCluster {
            _dir: None,
            data,
            socket_dir,
            port,
            bin: bin_dir().expect("PostgreSQL installed"),
        }
    }

    /// Runs `pg_ctl -D data ARGS` as postgres; panics with its output on failure.
    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        let log = self.data.with_extension("log");
        run_ok(
            as_postgres(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(args),
            "pg_ctl",
        )
    }

    /// A libpq connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run_ok(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(self.url(db))
                .args(["-c", sql]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Like [`PgCluster::psql`], `None` when psql fails (server not ready).
    pub fn try_psql(&self, db: &str, sql: &str) -> Option<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(db))
            .args(["-c", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Switches to a new WAL segment and waits until the finished one is
    /// archived (panics after `timeout`). Returns its name.
    pub fn switch_and_wait_archived(&self, timeout: Duration) -> String {
        // A switch with nothing written since the last one is a no-op, so
        // write something first.
        self.psql("postgres", "SELECT txid_current()");
        let seg = self.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
        let started = Instant::now();
        loop {
            let last = self.psql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            if !last.is_empty() && last.as_str() >= seg.as_str() {
                return seg;
            }
            if started.elapsed() > timeout {
                let failed = self.psql("postgres", "SELECT * FROM pg_stat_archiver");
                panic!("WAL {seg} not archived within {timeout:?}; pg_stat_archiver: {failed}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's current time, UTC, RFC 3339 with microseconds.
    pub fn now_utc(&self) -> String {
        self.psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
    }

    /// The system identifier.
    pub fn system_identifier(&self) -> u64 {
        self.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .parse()
        .expect("system identifier")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = as_postgres(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// Appends lines to `postgresql.conf`.
pub fn append_conf(data: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("open postgresql.conf");
    for l in lines {
        writeln!(f, "{l}").expect("write postgresql.conf");
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Whether PostgreSQL tests can run here (else they skip; CI panics).
pub fn available() -> bool {
    let ok = bin_dir().is_some();
    if !ok && in_ci() {
        panic!("PostgreSQL is required in CI");
    }
    ok
}
