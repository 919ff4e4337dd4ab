//! PostgreSQL: base backups, WAL archive, point-in-time restore, standby,
//! checks, WAL expiry and logical dumps, against real throwaway clusters
//! (`lifeboat_testkit::postgres`). The binary runs as the `postgres` user
//! (as PostgreSQL's archive_command and restore_command do), from a private
//! copy, so a concurrent rebuild of the shared target directory cannot swap
//! it under a running test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lifeboat_testkit::postgres::{
    PgCluster, PgOptions, as_postgres, chown_postgres, free_port, pg_tempdir,
};
use lifeboat_testkit::wait::wait_until;
use tempfile::TempDir;

const PASSWORD: &str = "pg test password";
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Far beyond the microseconds the server clock needs to move on.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A repository and password file owned by `postgres`, plus room for
/// restored data directories.
struct Env {
    dir: TempDir,
    repo: PathBuf,
    pw: PathBuf,
    /// The binary under test, copied into the test's directory so the
    /// `postgres` user can run it wherever the build lives (and removed
    /// with the directory).
    bin: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = pg_tempdir();
        let repo = dir.path().join("repo");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let bin = dir.path().join("lifeboat");
        std::fs::copy(env!("CARGO_BIN_EXE_lifeboat"), &bin).expect("copy binary");
        chown_postgres(dir.path());
        let env = Env { dir, repo, pw, bin };
        env.ok(&["init"]);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The repository is named by a path relative to the test's directory
    /// (the working directory), as a user typing `-r ./repo` would: the
    /// restore_command a restore writes must not depend on it.
    fn command(&self, args: &[&str]) -> Command {
        self.command_with_repo(Path::new("repo"), args)
    }

    /// A command run in `cwd` (as PostgreSQL runs archive and restore
    /// commands in its data directory), with the repository's absolute path.
    fn command_in(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = self.command_with_repo(&self.repo, args);
        c.current_dir(cwd);
        c
    }

    fn command_with_repo(&self, repo: &Path, args: &[&str]) -> Command {
        let mut c = as_postgres(&self.bin);
        c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env_remove("LIFEBOAT_PASSWORD")
            .env_remove("LIFEBOAT_REPO")
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .arg("-r")
            .arg(repo)
            .arg("--password-file")
            .arg(&self.pw)
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run lifeboat")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg wal-fetch NAME pg_wal/RECOVERYXLOG` in the data directory `data`,
    /// as PostgreSQL's restore_command runs it.
    fn wal_fetch(&self, data: &std::path::Path, name: &str) -> Output {
        self.command_in(data, &["pg", "wal-fetch", name, "pg_wal/RECOVERYXLOG"])
            .output()
            .expect("run wal-fetch")
    }

    fn archive_command(&self) -> String {
        format!(
            "{} -r {} --password-file {} pg wal-push %p",
            self.bin.display(),
            self.repo.display(),
            self.pw.display()
        )
    }

    /// A primary archiving into this repository.
    fn primary(&self) -> Option<PgCluster> {
        PgCluster::start(&PgOptions {
            archive_command: Some(self.archive_command()),
            extra_conf: vec![],
        })
    }

    /// `pg restore --to DIR ... --start` into a new directory with its own
    /// port and socket; returns the running restored server.
    fn restore_and_start(&self, name: &str, extra: &[&str]) -> (PgCluster, String) {
        let data = self.path(name);
        let sock = self.path(&format!("{name}-s"));
        std::fs::create_dir(&sock).unwrap();
        chown_postgres(&sock);
        let port = free_port();
        let port_set = format!("port={port}");
        let sock_set = format!("unix_socket_directories={}", sock.display());
        let mut args = vec![
            "pg",
            "restore",
            "--to",
            data.to_str().unwrap(),
            "--set",
            &port_set,
            "--set",
            &sock_set,
            "--set",
            "archive_mode=off",
            "--start",
        ];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        (PgCluster::adopt(data, sock, port), out)
    }
}

/// A base backup with the default method, which for these local clusters
/// (archiving on, data directory readable) reads the files directly.
fn base_backup(env: &Env, pg: &PgCluster, mode: &str) -> serde_json::Value {
    base_backup_by(env, pg, mode, "auto", "files")
}

/// A base backup by `method`, checked to have the snapshot `layout`.
fn base_backup_by(
    env: &Env,
    pg: &PgCluster,
    mode: &str,
    method: &str,
    layout: &str,
) -> serde_json::Value {
    let out = env.ok(&[
        "--json",
        "pg",
        "backup",
        "--db",
        &pg.url("postgres"),
        "--mode",
        mode,
        "--method",
        method,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("backup json");
    assert_eq!(v["postgresql"]["layout"], layout, "{v}");
    v
}

/// A server time T strictly after every commit so far and strictly before
/// every later one: waits until the server's clock (at its microsecond
/// resolution) has moved past the time the last commit returned, reads T,
/// and waits until the clock has moved past T. Comparing the server's own
/// readings keeps this true whatever the client's clock says.
fn time_between_commits(pg: &PgCluster) -> String {
    let after_commits = pg.now_utc();
    // The fixed-width timestamps order as strings.
    wait_until(
        CLOCK_TIMEOUT,
        "the server clock passes the last commit",
        || pg.now_utc() > after_commits,
    );
    let t = pg.now_utc();
    wait_until(CLOCK_TIMEOUT, "the server clock passes T", || {
        pg.now_utc() > t
    });
    t
}

/// Remembers a server time T between the commits so far and `damage`
/// ([`time_between_commits`]), then runs `damage` and waits until the WAL
/// holding it is archived; returns T.
fn time_before_damage(pg: &PgCluster, damage: &str) -> String {
    let t = time_between_commits(pg);
    pg.psql("postgres", damage);
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    t
}

/// A PostgreSQL LSN (`16/B374D848`) as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let part =
        |p: &str| u64::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (part(hi) << 32) | part(lo)
}

macro_rules! primary_or_skip {
    ($env:expr) => {
        match $env.primary() {
            Some(p) => p,
            None => return,
        }
    };
}

#[test]
fn bad_migration_is_undone_by_restoring_to_the_time_before_it() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql(
        "postgres",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); \
         INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 1000) g",
    );
    let b = base_backup(&env, &pg, "full");
    assert_eq!(b["postgresql"]["kind"], "base-backup");
    assert!(b["postgresql"]["start_lsn"].as_str().unwrap().contains('/'));
    assert_eq!(
        b["postgresql"]["system_identifier"].as_str().unwrap(),
        pg.system_identifier().to_string()
    );
    // Good writes after the backup.
    pg.psql(
        "postgres",
        "INSERT INTO accounts SELECT g, 200 FROM generate_series(1001, 1100) g",
    );
    let t = time_between_commits(&pg);
    // The bad migration: 40% of the rows corrupted.
    pg.psql(
        "postgres",
        "UPDATE accounts SET balance = -1 WHERE id % 5 < 2",
    );
    pg.psql(
        "postgres",
        "INSERT INTO accounts SELECT g, 300 FROM generate_series(2001, 2010) g",
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM accounts WHERE balance = -1"
        ),
        "440"
    );
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);

    let (restored, out) = env.restore_and_start("r", &["--target-time", &t]);
    assert!(out.contains("whole restore took"), "{out}");
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM accounts"),
        "1100",
        "the good writes are there, the later ones are not"
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*) FROM accounts WHERE balance = -1"
        ),
        "0",
        "the corruption is not"
    );
    assert_eq!(
        restored.psql("postgres", "SELECT pg_is_in_recovery()"),
        "f",
        "promoted"
    );
}

/// `pg transactions` lists the bad DELETE (read from the archived WAL
/// with pg_waldump) with the id `txid_current()` gave inside it, the
/// table's file and the rows it deleted; restoring with that id and
/// `--exclusive` gives the table as it was just before it.
#[test]
fn pg_transactions_lists_a_delete_whose_xid_restores_to_just_before_it() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql(
        "postgres",
        "CREATE TABLE orders (id int PRIMARY KEY, item text); \
         INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 100) g",
    );
    base_backup(&env, &pg, "full");
    pg.psql(
        "postgres",
        "INSERT INTO orders VALUES (101, 'after the backup')",
    );
    let from = time_between_commits(&pg);
    let out = pg.psql(
        "postgres",
        "BEGIN; DELETE FROM orders WHERE id > 40; SELECT txid_current(); COMMIT;",
    );
    let xid: u64 = out
        .lines()
        .map(str::trim)
        .find_map(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no xid in {out:?}"));
    pg.psql(
        "postgres",
        "INSERT INTO orders VALUES (102, 'after the delete')",
    );
    let to = time_between_commits(&pg);
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    let file = pg.psql("postgres", "SELECT pg_relation_filenode('orders')");
    let db_oid = pg.psql(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    );

    let listed: serde_json::Value = serde_json::from_str(&env.ok(&[
        "--json",
        "pg",
        "transactions",
        "--from",
        &from,
        "--to",
        &to,
    ]))
    .unwrap();
    assert_eq!(listed["covers_window"], true, "{listed}");
    let txs = listed["transactions"].as_array().unwrap();
    let delete = txs
        .iter()
        .find(|t| t["xid"] == xid)
        .unwrap_or_else(|| panic!("transaction {xid} not listed: {listed}"));
    assert_eq!(delete["outcome"], "commit", "{delete}");
    assert_eq!(delete["changes"]["Heap DELETE"], 61, "{delete}");
    assert_eq!(
        delete["relations"],
        serde_json::json!([format!("1663/{}/{}", db_oid.trim(), file.trim())]),
        "{delete}"
    );
    // The insert after it is listed too, and nothing outside the window
    // (the insert before `from`).
    assert!(
        txs.iter()
            .any(|t| t["xid"] == xid + 1 && t["changes"]["Heap INSERT"] == 1),
        "{listed}"
    );
    assert!(
        txs.iter().all(|t| t["xid"].as_u64().unwrap() >= xid),
        "{listed}"
    );

    let x = xid.to_string();
    let (restored, _) = env.restore_and_start("r", &["--target-xid", &x, "--exclusive"]);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM orders"),
        "101",
        "the rows the transaction deleted are back, the later insert is not"
    );
}

/// Through the pg_basebackup stream (the method for remote servers).
#[test]
fn dropped_table_is_recovered_to_just_before_the_drop() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql(
        "postgres",
        "CREATE TABLE important (id int, note text); \
         INSERT INTO important SELECT g, md5(g::text) FROM generate_series(1, 500) g",
    );
    base_backup_by(&env, &pg, "full", "stream", "tar");
    pg.psql(
        "postgres",
        "INSERT INTO important SELECT g, 'after backup' FROM generate_series(501, 600) g",
    );
    let sum_before = pg.psql(
        "postgres",
        "SELECT md5(string_agg(note, ',' ORDER BY id)) FROM important",
    );
    let t = time_before_damage(&pg, "DROP TABLE important");

    let (restored, _) = env.restore_and_start("r", &["--target-time", &t]);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT md5(string_agg(note, ',' ORDER BY id)) FROM important"
        ),
        sum_before
    );
}

/// The files method reads a data directory that changes under it: tables
/// created, filled and dropped (their files vanish mid-walk) and rows
/// updated (pages change while read). Replaying WAL from the backup's start
/// must give exactly the committed data.
#[test]
fn files_backup_taken_during_heavy_writes_restores_exactly_the_committed_data() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql(
        "postgres",
        "CREATE TABLE ledger (id int PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 50000) g",
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds_done = std::sync::atomic::AtomicU32::new(0);
    let wal_position = || lsn(&pg.psql("postgres", "SELECT pg_current_wal_lsn()"));
    let (b, marks) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            // The WAL position before the first round and after each: round
            // i writes after marks[i] and (it returns once its commit is
            // flushed) at or before marks[i + 1].
            let mut marks = vec![wal_position()];
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || rounds < 3 {
                pg.psql(
                    "postgres",
                    &format!(
                        "CREATE TABLE churn_{rounds} AS SELECT g, md5(g::text) AS h \
                           FROM generate_series(1, 20000) g; \
                         DROP TABLE IF EXISTS churn_{prev}; \
                         UPDATE ledger SET n = n + 1 WHERE id % 7 = {m};",
                        prev = rounds.wrapping_sub(1),
                        m = rounds % 7
                    ),
                );
                marks.push(wal_position());
                rounds += 1;
                rounds_done.store(rounds, std::sync::atomic::Ordering::SeqCst);
            }
            marks
        });
        wait_until(ARCHIVE_TIMEOUT, "the writer has finished a round", || {
            rounds_done.load(std::sync::atomic::Ordering::SeqCst) > 0
        });
        let b = base_backup(&env, &pg, "full");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (b, writer.join().expect("writer"))
    });
    // The writer ran during the backup: it had written WAL before the
    // backup's start LSN and was still writing after its stop LSN, and it
    // loops without pauses, so the data directory changed throughout the
    // walk. (A backup can be shorter than one round, so no round need
    // fall wholly inside it.)
    let (start, stop) = (
        lsn(b["postgresql"]["start_lsn"].as_str().unwrap()),
        lsn(b["postgresql"]["stop_lsn"].as_str().unwrap()),
    );
    let (first, last) = (marks[0], *marks.last().unwrap());
    assert!(
        first < start && stop < last,
        "the writer did not span the backup: it wrote WAL from {first:#x} to {last:#x}, \
         the backup ran from {start:#x} to {stop:#x} (positions between rounds: {marks:x?})"
    );
    assert_eq!(b["snapshot"].as_str().map(str::len), Some(64));
    let expect = pg.psql(
        "postgres",
        "SELECT sum(n) || ':' || count(*) || ':' || \
           (SELECT count(*) FROM pg_class WHERE relname LIKE 'churn_%') FROM ledger",
    );
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);

    let (restored, _) = env.restore_and_start("r", &[]);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT sum(n) || ':' || count(*) || ':' || \
               (SELECT count(*) FROM pg_class WHERE relname LIKE 'churn_%') FROM ledger",
        ),
        expect
    );
    let last = restored.psql(
        "postgres",
        "SELECT relname FROM pg_class WHERE relname LIKE 'churn_%'",
    );
    assert_eq!(
        restored.psql("postgres", &format!("SELECT count(*) FROM {last}")),
        "20000",
        "the table created last is whole"
    );

    // Without --start: the restore itself has spooled the WAL the backup
    // needs, so the server's first restore_command need not open the
    // repository.
    let again = env.path("r2");
    env.ok(&["pg", "restore", "--to", again.to_str().unwrap()]);
    let start_wal = b["postgresql"]["start_wal"].as_str().unwrap();
    let spooled = again.join("pg_wal/lifeboat/fetched").join(start_wal);
    assert!(spooled.is_file(), "{} is spooled", spooled.display());
    assert!(again.join("backup_label").is_file());
    assert!(again.join("pg_wal/archive_status").is_dir());
}

#[test]
fn missing_wal_segment_refuses_the_restore_and_names_it() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql("postgres", "CREATE TABLE t (x int)");
    base_backup(&env, &pg, "full");
    let mut segments = Vec::new();
    for i in 0..3 {
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        segments.push(pg.switch_and_wait_archived(ARCHIVE_TIMEOUT));
    }
    // Lose the middle one from the repository.
    let victim = &segments[1];
    let object = env.repo.join("wal").join(format!(
        "{:016x}-{}",
        pg.system_identifier(),
        victim.to_ascii_lowercase()
    ));
    std::fs::remove_file(&object).unwrap_or_else(|e| panic!("{}: {e}", object.display()));

    let target = env.path("r");
    let out = env.run(&["pg", "restore", "--to", target.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(16), "{stderr}");
    assert!(
        stderr.contains(victim.as_str()),
        "names the segment: {stderr}"
    );
    assert!(!target.exists(), "nothing was written");
}

/// A fake data directory holding what wal-push and wal-fetch read: the
/// control file (for the system identifier) and `pg_wal`.
fn fake_pgdata(env: &Env, sysid: u64) -> PathBuf {
    let d = env.path("data");
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
    let mut control = sysid.to_ne_bytes().to_vec();
    control.resize(8192, 0);
    std::fs::write(d.join("global/pg_control"), control).unwrap();
    chown_postgres(&d);
    d
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half the bytes repeat so zstd has something to do.
            if x.is_multiple_of(2) { 0 } else { x as u8 }
        })
        .collect()
}

#[test]
fn wal_push_is_idempotent_and_refuses_other_content_under_the_same_name() {
    if !lifeboat_testkit::postgres::available() {
        return;
    }
    let env = Env::new();
    let data = fake_pgdata(&env, 0x5eed);
    let name = "000000010000000000000042";
    let seg = data.join("pg_wal").join(name);
    let content = pseudo_random(16 << 20, 1);
    std::fs::write(&seg, &content).unwrap();
    chown_postgres(&seg);
    let p = format!("pg_wal/{name}");
    let push = |env: &Env| {
        env.command_in(&data, &["pg", "wal-push", &p])
            .output()
            .unwrap()
    };
    assert!(push(&env).status.success());
    // Again (PostgreSQL retries when it missed the exit status): success.
    assert!(push(&env).status.success());
    // Without the local marker too (the slow path compares with the repository).
    std::fs::remove_dir_all(data.join("pg_wal/lifeboat")).unwrap();
    assert!(push(&env).status.success());

    // Fetch returns the same bytes.
    let fetched = data.join("pg_wal/RECOVERYXLOG");
    let out = env.wal_fetch(&data, name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&fetched).unwrap() == content);

    // Same name, different content: a loud failure, the archive unchanged.
    let mut other = content.clone();
    other[1000] ^= 0xff;
    std::fs::write(&seg, &other).unwrap();
    let out = push(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("DIFFERENT"), "{stderr}");
    std::fs::remove_file(&fetched).unwrap();
    let out = env.wal_fetch(&data, name);
    assert!(out.status.success());
    assert!(std::fs::read(&fetched).unwrap() == content, "original kept");

    // A file not in the archive: exit 1 (PostgreSQL reads it as "no more WAL").
    let out = env.wal_fetch(&data, "000000010000000000000099");
    assert_eq!(out.status.code(), Some(1));
    // Answered from the storage alone, without the password (so without
    // its KDF): a wrong one does not matter for a file that is not there,
    // and is refused for one that is.
    let wrong_pw = env.path("wrong-pw");
    std::fs::write(&wrong_pw, "not the password\n").unwrap();
    chown_postgres(&wrong_pw);
    let fetch_with_wrong_pw = |file: &str| {
        let mut c = as_postgres(&env.bin);
        c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env_remove("LIFEBOAT_PASSWORD")
            .current_dir(&data)
            .arg("-r")
            .arg(&env.repo)
            .arg("--password-file")
            .arg(&wrong_pw)
            .args(["pg", "wal-fetch", file, "pg_wal/RECOVERYXLOG"]);
        c.output().unwrap()
    };
    let out = fetch_with_wrong_pw("00000002.history");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&fetched).unwrap();
    assert_ne!(fetch_with_wrong_pw(name).status.code(), Some(0));
    assert!(!fetched.exists());
}

#[test]
fn check_read_data_names_a_wal_object_with_a_flipped_byte() {
    if !lifeboat_testkit::postgres::available() {
        return;
    }
    let env = Env::new();
    let sysid = 0x0b17_f11b;
    let data = fake_pgdata(&env, sysid);
    let names = ["000000010000000000000011", "000000010000000000000012"];
    for (i, name) in names.iter().enumerate() {
        let seg = data.join("pg_wal").join(name);
        std::fs::write(&seg, pseudo_random(1 << 20, i as u64 + 3)).unwrap();
        chown_postgres(&seg);
        let out = env
            .command_in(&data, &["pg", "wal-push", &format!("pg_wal/{name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let object = format!("{sysid:016x}-{}", names[1]);
    let path = env.repo.join("wal").join(&object);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    // Replaced, not written in place: stored objects are read-only.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    // Plain check reads no object content, but lists them.
    let out = env.ok(&["check"]);
    assert!(out.contains("2 archive objects"), "{out}");
    assert!(out.contains("no errors found"), "{out}");

    let out = env.run(&["check", "--read-data"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(14), "{stdout}");
    assert!(
        stdout.contains(&format!("error: wal/{object}: authentication failed")),
        "{stdout}"
    );
    let other = format!("{sysid:016x}-{}", names[0]);
    assert!(!stdout.contains(&other), "only the damaged one: {stdout}");
    let out = env.run(&["--json", "check", "--read-data"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["archive_objects_read"], 2, "{v}");
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn wal_push_killed_with_sigkill_leaves_nothing_wal_fetch_would_serve() {
    if !lifeboat_testkit::postgres::available() {
        return;
    }
    let env = Env::new();
    let data = fake_pgdata(&env, 0xdead);
    let mut served = 0;
    let mut absent = 0;
    // Kill at increasing delays: during start, the KDF, compression and the
    // write of the object.
    for (i, delay_ms) in [0u64, 20, 60, 120, 200, 300, 450, 650, 900]
        .into_iter()
        .enumerate()
    {
        let name = format!("0000000100000000000000{:02X}", i + 1);
        let seg = data.join("pg_wal").join(&name);
        let content = pseudo_random(16 << 20, i as u64 + 7);
        std::fs::write(&seg, &content).unwrap();
        chown_postgres(&seg);
        let mut child = env
            .command_in(&data, &["pg", "wal-push", &format!("pg_wal/{name}")])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // runuser forwards SIGKILL? It cannot: kill the whole process group
        // member that is lifeboat itself.
        kill_lifeboat_children(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let dest = data.join("pg_wal/RECOVERYXLOG");
        let _ = std::fs::remove_file(&dest);
        let out = env
            .command_in(
                &data,
                &[
                    "pg",
                    "wal-fetch",
                    &name,
                    "pg_wal/RECOVERYXLOG",
                    "--read-ahead",
                    "0",
                ],
            )
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => {
                assert!(
                    std::fs::read(&dest).unwrap() == content,
                    "served {name} must be whole"
                );
                served += 1;
            }
            Some(1) => absent += 1,
            other => panic!(
                "wal-fetch of {name} after a kill: {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    eprintln!("after kill -9: {served} segments complete, {absent} absent");
    assert!(
        absent > 0,
        "some kills must land before the object is written"
    );
}

/// Sends SIGKILL to `lifeboat` processes whose parent is `pid` (the
/// runuser wrapper), or to `pid` itself when it is lifeboat.
fn kill_lifeboat_children(pid: u32) {
    let mut targets = vec![pid];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised name) is the parent pid.
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(pid) {
                targets.push(p);
            }
        }
    }
    for p in targets.into_iter().rev() {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
}

#[test]
fn incremental_base_backup_stores_far_less_after_a_small_change() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql(
        "postgres",
        "CREATE TABLE big (id int, payload text); \
         INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 200000) g",
    );
    // Set hint bits and freeze now: otherwise the first scan after the
    // backup rewrites every page, and a backup of that is not a small change.
    pg.psql("postgres", "VACUUM FREEZE big");
    pg.psql("postgres", "CHECKPOINT");
    let full = base_backup(&env, &pg, "full");
    pg.psql(
        "postgres",
        "UPDATE big SET payload = 'changed' WHERE id <= 20",
    );
    let inc = base_backup(&env, &pg, "incremental");
    assert_eq!(inc["mode"], "incremental");
    let full_added = full["summary"]["added_bytes"].as_u64().unwrap();
    let inc_added = inc["summary"]["added_bytes"].as_u64().unwrap();
    let inc_read = inc["summary"]["read_bytes"].as_u64().unwrap();
    eprintln!("full added {full_added} B, incremental added {inc_added} B of {inc_read} B read");
    assert!(full_added > 5 << 20, "the full backup stores the table");
    assert!(
        inc_added * 5 < full_added,
        "incremental stored {inc_added} B, full {full_added} B"
    );
}

/// Relation files are cut into page-aligned blocks (docs/pitr.md,
/// "Incrementals"): updating a few rows scattered over a large table makes
/// the next incremental store little more than the pages those rows were
/// and are on, where content-defined chunks of about 1 MiB each stored a
/// chunk per row; and the point-in-time restore from that incremental
/// gives the table back exactly.
#[test]
fn incremental_stores_the_changed_pages_of_a_large_table_and_restores_it() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    // About 60 MB of hex text (compressible only about 2:1), 300,000 rows
    // in id order, so the updated rows below lie on pages far apart.
    pg.psql(
        "postgres",
        "CREATE TABLE big (id int, payload text); \
         INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) \
         FROM generate_series(1, 300000) g",
    );
    pg.psql("postgres", "VACUUM FREEZE big");
    pg.psql("postgres", "CHECKPOINT");
    let full = base_backup(&env, &pg, "full");
    let rows = "(SELECT g * 15000 FROM generate_series(1, 20) g)";
    let pages_sql =
        format!("SELECT count(DISTINCT (ctid::text::point)[0]) FROM big WHERE id IN {rows}");
    let old_pages: u64 = pg.psql("postgres", &pages_sql).parse().unwrap();
    pg.psql(
        "postgres",
        &format!("UPDATE big SET payload = 'changed ' || id WHERE id IN {rows}"),
    );
    let new_pages: u64 = pg.psql("postgres", &pages_sql).parse().unwrap();
    let changed = (old_pages + new_pages) * 8192;
    let inc = base_backup(&env, &pg, "incremental");
    assert_eq!(inc["mode"], "incremental");
    let full_added = full["summary"]["added_bytes"].as_u64().unwrap();
    let inc_added = inc["summary"]["added_bytes"].as_u64().unwrap();
    eprintln!(
        "full added {full_added} B; {old_pages}+{new_pages} pages changed ({changed} B); \
         incremental added {inc_added} B"
    );
    assert!(old_pages >= 15, "the updated rows lie on many pages");
    // The table is about 42 MB of hex text, stored compressed to about half.
    assert!(full_added > 10 << 20, "the full backup stores the table");
    // The changed pages, stored uncompressed, at most 4 times over, plus
    // 512 KiB for what else changes between two base backups (trees,
    // pg_control, pg_xact, the free space and visibility maps, catalogs).
    assert!(
        inc_added <= 4 * changed + (512 << 10),
        "incremental stored {inc_added} B for {changed} B of changed pages"
    );
    let want = pg.psql(
        "postgres",
        "SELECT count(*) || ':' || md5(string_agg(payload, ',' ORDER BY id)) FROM big",
    );
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    // The newest base backup, the incremental, is the one restored.
    let (restored, _) = env.restore_and_start("restored", &[]);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*) || ':' || md5(string_agg(payload, ',' ORDER BY id)) FROM big",
        ),
        want
    );
}

fn table_checksum(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM customers t",
    ) + &pg.psql(
        db,
        "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM orders t",
    )
}

#[test]
fn pg_dump_round_trip_keeps_table_checksums() {
    let env = Env::new();
    let Some(pg) = PgCluster::start(&PgOptions::default()) else {
        return;
    };
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, joined date); \
         CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric); \
         INSERT INTO customers SELECT g, 'name ' || g, date '2020-01-01' + g FROM generate_series(1, 5000) g; \
         INSERT INTO orders SELECT g, 1 + g % 5000, g * 1.5 FROM generate_series(1, 20000) g",
    );
    let before = table_checksum(&pg, "shop");
    let out = env.ok(&["--json", "pg", "dump", "--db", &pg.url("shop")]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["postgresql"]["database"], "shop");
    let snap = v["snapshot"].as_str().unwrap().to_string();
    pg.psql("postgres", "CREATE DATABASE shop2");
    env.ok(&["pg", "restore-dump", &snap, "--db", &pg.url("shop2")]);
    assert_eq!(table_checksum(&pg, "shop2"), before);
    // Again over the restored tables, with --clean.
    let out = env.run(&[
        "pg",
        "restore-dump",
        &snap[..8],
        "--db",
        &pg.url("shop2"),
        "--clean",
    ]);
    assert!(
        out.status.success(),
        "--clean restores over existing objects"
    );
    assert_eq!(table_checksum(&pg, "shop2"), before);
}

#[test]
fn standby_follows_archived_wal_and_serves_the_latest_data_when_promoted() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql("postgres", "CREATE TABLE events (id int)");
    base_backup(&env, &pg, "full");
    pg.psql(
        "postgres",
        "INSERT INTO events SELECT generate_series(1, 100)",
    );
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    let (standby, out) = env.restore_and_start("sb", &["--standby"]);
    assert!(out.contains("standby running"), "{out}");
    let wait_count = |want: &str| {
        wait_until(
            Duration::from_secs(90),
            &format!("the standby has {want} rows"),
            || {
                standby
                    .try_psql("postgres", "SELECT count(*) FROM events")
                    .as_deref()
                    == Some(want)
            },
        );
    };
    wait_count("100");
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    // New WAL arrives in the repository; the standby follows.
    pg.psql(
        "postgres",
        "INSERT INTO events SELECT generate_series(101, 250)",
    );
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    wait_count("250");
    standby.pg_ctl(&["-w", "promote"]);
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    standby.psql("postgres", "INSERT INTO events VALUES (251)");
    assert_eq!(
        standby.psql("postgres", "SELECT max(id) FROM events"),
        "251"
    );
}

#[test]
fn pg_check_reports_the_window_and_names_broken_settings() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    base_backup(&env, &pg, "full");
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    let out = env.run(&["pg", "check", "--db", &pg.url("postgres")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("point-in-time recovery window: 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("archive_timeout"),
        "warns about archive_timeout: {stdout}"
    );

    // A server without archiving: named with the fix, nonzero exit.
    let Some(plain) = PgCluster::start(&PgOptions::default()) else {
        return;
    };
    let out = env.run(&["pg", "check", "--db", &plain.url("postgres")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(14), "{stdout}");
    assert!(stdout.contains("set archive_mode = on"), "{stdout}");
}

#[test]
fn expire_wal_deletes_only_wal_no_retained_backup_needs() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql("postgres", "CREATE TABLE t (x int)");
    let first = base_backup(&env, &pg, "full");
    let first_start = first["postgresql"]["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    let mut old = Vec::new();
    for i in 0..3 {
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        old.push(pg.switch_and_wait_archived(ARCHIVE_TIMEOUT));
    }
    let second = base_backup(&env, &pg, "full");
    pg.psql("postgres", "INSERT INTO t VALUES (100)");
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    let keep_from = second["postgresql"]["start_wal"]
        .as_str()
        .unwrap()
        .to_string();

    // With both backups retained only WAL from before the first is expired.
    let out = env.ok(&["--json", "pg", "expire-wal"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["keep_from"].as_str().unwrap(),
        &first_start[8..24],
        "{out}"
    );
    for d in v[0]["deleted"].as_array().unwrap() {
        assert!(d.as_str().unwrap()[8..24] < first_start[8..24], "{out}");
    }
    for seg in &old {
        assert!(
            !out.contains(seg.as_str()),
            "{seg} is needed by the first backup: {out}"
        );
    }

    env.ok(&["forget", "--keep-last", "1"]);
    let out = env.ok(&["--json", "pg", "expire-wal", "--dry-run"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deleted: Vec<String> = v[0]["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    for seg in &old {
        assert!(deleted.contains(seg), "{seg} expired: {deleted:?}");
    }
    assert!(
        deleted.iter().all(|d| d[8..24] < keep_from[8..24]),
        "nothing at or after {keep_from} deleted: {deleted:?}"
    );
    // prune deletes them (forgetting base backups frees their WAL).
    let out = env.ok(&["--json", "prune"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["wal_files_deleted"].as_u64().unwrap() as usize,
        deleted.len(),
        "{out}"
    );
    let out = env.ok(&["--json", "pg", "expire-wal"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["deleted"].as_array().unwrap().len(), 0, "{out}");
    // The retained backup still restores to the latest WAL.
    let (restored, _) = env.restore_and_start("r", &[]);
    assert_eq!(restored.psql("postgres", "SELECT max(x) FROM t"), "100");
}

#[test]
fn copy_carries_the_wal_archive_so_the_offsite_copy_recovers_to_a_point_in_time() {
    let env = Env::new();
    let pg = primary_or_skip!(env);
    pg.psql(
        "postgres",
        "CREATE TABLE ledger (id int, amount int); \
         INSERT INTO ledger SELECT g, g FROM generate_series(1, 1000) g",
    );
    base_backup(&env, &pg, "full");
    pg.psql(
        "postgres",
        "INSERT INTO ledger SELECT g, g FROM generate_series(1001, 1200) g",
    );
    let good = pg.psql("postgres", "SELECT sum(amount) FROM ledger");
    let t = time_before_damage(&pg, "UPDATE ledger SET amount = 0 WHERE id % 3 = 0");

    // The off-site repository: its own directory, binary and password.
    let off = Env::new();
    let (from, from_pw) = (env.repo.to_str().unwrap(), env.pw.to_str().unwrap());
    let copy = |off: &Env| -> serde_json::Value {
        let out = off.ok(&[
            "--json",
            "copy",
            "--from",
            from,
            "--from-password-file",
            from_pw,
        ]);
        serde_json::from_str(&out).expect("copy json")
    };
    let first = copy(&off);
    let copied = first["wal"]["copied"].as_u64().unwrap();
    assert!(
        copied >= 2,
        "the WAL since the base backup is copied: {first}"
    );
    assert_eq!(first["wal"]["present"].as_u64().unwrap(), 0, "{first}");
    // A rerun copies nothing and finds every file already there.
    let again = copy(&off);
    assert_eq!(again["wal"]["copied"].as_u64().unwrap(), 0, "{again}");
    assert_eq!(again["wal"]["present"].as_u64().unwrap(), copied, "{again}");
    assert_eq!(again["snapshots_copied"].as_u64().unwrap(), 0, "{again}");

    // Recovery from the copy alone (its restore_command reads the copy).
    let (restored, _) = off.restore_and_start("r", &["--target-time", &t]);
    assert_eq!(
        restored.psql("postgres", "SELECT sum(amount) FROM ledger"),
        good
    );
}

/// WAL object names in a local repository.
fn wal_objects(repo: &std::path::Path) -> std::collections::BTreeSet<String> {
    match std::fs::read_dir(repo.join("wal")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => Default::default(),
    }
}

#[test]
fn wal_push_into_two_repositories_keeps_the_offsite_one_current_for_recovery() {
    let env = Env::new();
    let off = Env::new();
    let archive_command = format!(
        "{} -r {} --password-file {} -r {} --password-file {} pg wal-push %p",
        env.bin.display(),
        env.repo.display(),
        env.pw.display(),
        off.repo.display(),
        off.pw.display()
    );
    let Some(pg) = PgCluster::start(&PgOptions {
        archive_command: Some(archive_command),
        extra_conf: vec![],
    }) else {
        return;
    };
    pg.psql(
        "postgres",
        "CREATE TABLE ledger (id int, amount int); \
         INSERT INTO ledger SELECT g, g FROM generate_series(1, 1000) g",
    );
    base_backup(&env, &pg, "full");
    // The base backup reaches the off-site repository by copy, without
    // its WAL: the WAL is already there, pushed by archive_command.
    let out = off.ok(&[
        "--json",
        "copy",
        "--no-wal",
        "--from",
        env.repo.to_str().unwrap(),
        "--from-password-file",
        env.pw.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["wal"].is_null(), "--no-wal copies no WAL: {out}");
    pg.psql(
        "postgres",
        "INSERT INTO ledger SELECT g, g FROM generate_series(1001, 1300) g",
    );
    let good = pg.psql("postgres", "SELECT sum(amount) FROM ledger");
    let t = time_before_damage(&pg, "DELETE FROM ledger WHERE id % 2 = 0");

    let (here, there) = (wal_objects(&env.repo), wal_objects(&off.repo));
    assert!(here.len() >= 3, "{here:?}");
    assert_eq!(here, there, "every archived file is in both repositories");

    let (restored, _) = off.restore_and_start("r", &["--target-time", &t]);
    assert_eq!(
        restored.psql("postgres", "SELECT sum(amount) FROM ledger"),
        good
    );
}

#[test]
fn wal_push_into_several_repositories_fails_until_every_one_has_the_file() {
    if !lifeboat_testkit::postgres::available() {
        return;
    }
    let env = Env::new();
    let off = Env::new();
    let data = fake_pgdata(&env, 0x0ff5);
    let name = "000000010000000000000007";
    let seg = data.join("pg_wal").join(name);
    let content = pseudo_random(1 << 20, 7);
    std::fs::write(&seg, &content).unwrap();
    chown_postgres(&seg);
    let p = format!("pg_wal/{name}");
    let push = |second: &std::path::Path| {
        let mut c = as_postgres(&env.bin);
        c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env_remove("LIFEBOAT_PASSWORD")
            .env_remove("LIFEBOAT_REPO")
            .current_dir(&data)
            .arg("-r")
            .arg(&env.repo)
            .arg("--password-file")
            .arg(&env.pw)
            .arg("-r")
            .arg(second)
            .arg("--password-file")
            .arg(&off.pw)
            .args(["pg", "wal-push", &p]);
        c.output().unwrap()
    };

    // The second repository does not exist: the push fails, names it, and
    // leaves no marker, so PostgreSQL keeps the file and retries.
    let missing = off.path("not-a-repo");
    let out = push(&missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(stderr.contains("not-a-repo"), "{stderr}");
    assert!(!data.join("pg_wal/lifeboat/pushed").join(name).exists());

    // Pushed into the first repository alone: its marker does not stand for
    // the pair, so the next push with both still stores it in the second.
    let out = env.run(&["pg", "wal-push", seg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wal_objects(&off.repo).is_empty());
    let out = push(&off.repo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wal_objects(&off.repo).len(), 1);
    assert_eq!(wal_objects(&off.repo), wal_objects(&env.repo));

    let fetched = data.join("pg_wal/RECOVERYXLOG");
    let out = off.wal_fetch(&data, name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&fetched).unwrap() == content);
}
