//! End-to-end tests of the `lifeboat` binary: first use, error reporting and
//! exit codes, backup features, read commands with `--json`, key management
//! and restore safety. Every test drives the real binary through
//! [`common::Lifeboat`] with its own HOME, repository and password.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::*;
use lifeboat_testkit::tmpfs::Tmpfs;
use serde_json::Value;

/// Exit codes documented in crates/cli/src/exit.rs (and the README).
mod code {
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    pub const NO_REPOSITORY: i32 = 10;
    pub const WRONG_PASSWORD: i32 = 11;
    pub const UNREACHABLE: i32 = 12;
    pub const STORAGE_FULL: i32 = 13;
    pub const DAMAGED: i32 = 14;
    pub const UNSUPPORTED_VERSION: i32 = 15;
    pub const NOT_FOUND: i32 = 16;
}

/// A small source tree: two text files, a binary file in a subdirectory, an
/// empty file and a relative symlink. Returns its root.
fn make_source(lb: &Lifeboat, name: &str) -> PathBuf {
    let src = lb.path(name);
    write(src.join("a.txt"), "hello\n");
    write(src.join("notes/todo.md"), "- write tests\n");
    write(src.join("sub/data.bin"), random_bytes(200_000, 1));
    write(src.join("empty"), "");
    symlink("a.txt", src.join("link")).unwrap();
    src
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn ids(snaps: &[Value]) -> Vec<String> {
    snaps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The absolute path as the snapshot shows it.
fn snap_path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn set_byte(path: &Path, offset: usize, value: u8) {
    let mut b = fs::read(path).unwrap();
    b[offset] = value;
    fs::write(path, b).unwrap();
}

/// The single pack file of a repository that has just one.
/// The one data pack of a small repository (its trees have a pack of
/// their own, a few hundred bytes).
fn only_data_pack(repo: &Path) -> PathBuf {
    let mut packs = files_under(&repo.join("data"));
    assert_eq!(packs.len(), 2, "expected a data and a tree pack: {packs:?}");
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    packs.pop().unwrap()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

// ---------------------------------------------------------------- first use

#[test]
fn first_use_creates_default_repository_and_password_file() {
    let lb = Lifeboat::new();
    let src = make_source(&lb, "src");

    // No -r, no LIFEBOAT_REPO, no password anywhere.
    let out = lb.bare_cmd().arg("backup").arg(&src).output().unwrap();
    assert_ok(&out, "backup (first use)");

    let repo = lb.xdg_data().join("lifeboat/repository");
    let pw_file = lb.xdg_config().join("lifeboat/repository.password");
    assert!(
        repo.join("config").is_file(),
        "no default repository at {}",
        repo.display()
    );
    let meta = fs::metadata(&pw_file).expect("password file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "password file mode"
    );
    let pw = fs::read_to_string(&pw_file).unwrap();
    assert!(
        pw.trim_end().len() >= 32,
        "generated password is too short: {pw:?}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(pw_file.to_str().unwrap()),
        "stderr does not say where the password is: {err}"
    );
    assert!(
        !err.contains(pw.trim_end()),
        "the password itself must not be printed"
    );

    // Later commands find the default repository and its password.
    let target = lb.path("target");
    let out = lb
        .bare_cmd()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_ok(&out, "restore (default repository)");
    assert_same_tree(&src, &restored(&target, &src));

    let out = lb
        .bare_cmd()
        .args(["snapshots", "--json"])
        .output()
        .unwrap();
    assert_ok(&out, "snapshots --json");
    let snaps = parse_json(&out);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["paths"], serde_json::json!([snap_path(&src)]));
    assert_eq!(snaps[0]["mode"], "full");

    // A second backup reuses the repository instead of creating another.
    let out = lb.bare_cmd().arg("backup").arg(&src).output().unwrap();
    assert_ok(&out, "second backup");
    assert!(
        !stderr(&out).contains("created the default repository"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        fs::read_to_string(&pw_file).unwrap(),
        pw,
        "password file rewritten"
    );
}

// ---------------------------------------------------------------- errors and exit codes

/// `backup ~` with the default repository under `~/.local/share` must not
/// store the repository (or its password file) into itself; neither does a
/// named repository inside the backed-up tree, nor its password file.
#[test]
fn a_backup_leaves_out_the_repository_and_its_password_file() {
    let lb = Lifeboat::new();
    let home = lb.home();
    write(home.join("docs/a.txt"), b"hello\n");
    let run = || {
        let out = lb
            .bare_cmd()
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .args(["backup", "--json"])
            .arg(&home)
            .output()
            .unwrap();
        assert_ok(&out, "backup ~");
        out
    };
    run();
    let out = run();
    assert!(
        stderr(&out).contains("leaving out the repository's own files"),
        "{}",
        stderr(&out)
    );
    let ls = lb
        .bare_cmd()
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(["ls", "latest", "--json"])
        .output()
        .unwrap();
    assert_ok(&ls, "ls latest");
    let paths = ls_paths(&parse_json(&ls));
    assert!(paths.iter().any(|p| p.ends_with("docs/a.txt")), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("lifeboat/repository") || p.contains("repository.password")),
        "the backup stored the repository into itself: {paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.ends_with(".local/share")),
        "{paths:?}"
    );

    // A named repository and password file inside the source tree.
    let src = lb.path("src");
    write(src.join("keep.txt"), b"keep\n");
    write(src.join("secret.pw"), lb.password.as_bytes());
    let password = lb.password.clone();
    let lb = lb.with_repo(src.join("repo"), &password);
    lb.ok(["init"]);
    let pw = src.join("secret.pw");
    lb.ok([
        "--password-file".as_ref(),
        pw.as_os_str(),
        "backup".as_ref(),
        src.as_os_str(),
    ]);
    let paths = ls_paths(&lb.json(["ls", "latest"]));
    assert!(paths.iter().any(|p| p.ends_with("keep.txt")), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("/src/repo") || p.ends_with("secret.pw")),
        "{paths:?}"
    );
}

/// `key passwd` on the default repository replaces its password file with
/// the new password (so the next command still opens it); a missing
/// password file is named in the error.
#[test]
fn key_passwd_on_the_default_repository_keeps_its_password_file_working() {
    let lb = Lifeboat::new();
    let src = make_source(&lb, "src");
    assert_ok(
        &lb.bare_cmd().arg("backup").arg(&src).output().unwrap(),
        "backup",
    );
    let pw_file = lb.xdg_config().join("lifeboat/repository.password");
    let old = fs::read_to_string(&pw_file).unwrap();
    let out = lb
        .bare_cmd()
        .args(["key", "passwd"])
        .env("LIFEBOAT_NEW_PASSWORD", "a brand new password")
        .output()
        .unwrap();
    assert_ok(&out, "key passwd");
    assert!(
        stdout(&out).contains(pw_file.to_str().unwrap()),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        fs::read_to_string(&pw_file).unwrap(),
        "a brand new password\n"
    );
    assert_eq!(
        fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_ok(
        &lb.bare_cmd().arg("snapshots").output().unwrap(),
        "snapshots after passwd",
    );
    // The old password no longer opens it.
    let out = lb
        .bare_cmd()
        .arg("snapshots")
        .env("LIFEBOAT_PASSWORD", old.trim_end())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(code::WRONG_PASSWORD),
        "{}",
        describe(&out)
    );

    fs::remove_file(&pw_file).unwrap();
    let out = lb.bare_cmd().arg("snapshots").output().unwrap();
    let err = assert_fails(
        &out,
        code::WRONG_PASSWORD,
        "snapshots without its password file",
    );
    assert!(err.contains(pw_file.to_str().unwrap()), "{err}");
}

/// A password file with Windows line ends reads the same whichever option
/// reads it: `key add --new-password-file`, `key passwd`, `--password-file`
/// and the environment.
#[test]
fn crlf_password_files_work_the_same_everywhere() {
    let lb = Lifeboat::init();
    let crlf = lb.path("crlf.pw");
    fs::write(&crlf, b"second password\r\n").unwrap();
    let lf = lb.path("lf.pw");
    fs::write(&lf, b"second password\n").unwrap();
    lb.ok([
        "key".as_ref(),
        "add".as_ref(),
        "--new-password-file".as_ref(),
        crlf.as_os_str(),
    ]);
    for file in [&crlf, &lf] {
        let out = lb
            .bare_cmd()
            .arg("-r")
            .arg(&lb.repo)
            .arg("--password-file")
            .arg(file)
            .arg("snapshots")
            .output()
            .unwrap();
        assert_ok(&out, file);
    }
    let out = lb
        .bare_cmd()
        .arg("-r")
        .arg(&lb.repo)
        .env("LIFEBOAT_PASSWORD", "second password")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_ok(&out, "env");
    // key passwd with a CRLF file, opened with an LF file.
    let third = lb.path("third.pw");
    fs::write(&third, b"third password\r\n").unwrap();
    lb.ok([
        "key".as_ref(),
        "passwd".as_ref(),
        "--new-password-file".as_ref(),
        third.as_os_str(),
    ]);
    let third_lf = lb.path("third-lf.pw");
    fs::write(&third_lf, b"third password\n").unwrap();
    let out = lb
        .bare_cmd()
        .arg("-r")
        .arg(&lb.repo)
        .arg("--password-file")
        .arg(&third_lf)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_ok(&out, "third password, LF file");
}

/// Starts `backup --stdin` reading from a pipe kept open, and waits until
/// its lock object is in the repository. Returns the child and its stdin.
fn backup_holding_the_lock(
    lb: &Lifeboat,
    extra: &[&str],
) -> (std::process::Child, std::process::ChildStdin) {
    use std::process::Stdio;
    let mut child = lb
        .std_cmd()
        .args(["backup", "--stdin"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"some data\n").unwrap();
    let locks = lb.repo.join("locks");
    while fs::read_dir(&locks).map_or(0, |d| d.count()) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "backup ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, stdin)
}

/// SIGINT and SIGTERM stop a backup, remove its lock and exit 130 / 143;
/// no snapshot is saved.
#[test]
fn a_signal_stops_a_backup_and_releases_its_lock() {
    let lb = Lifeboat::init();
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let (child, stdin) = backup_holding_the_lock(&lb, &[]);
        let status = std::process::Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert_eq!(out.status.code(), Some(code), "{sig}: {}", describe(&out));
        assert!(
            stderr(&out).contains("lock is released"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            fs::read_dir(lb.repo.join("locks")).unwrap().count(),
            0,
            "{sig} left the lock behind"
        );
    }
    assert!(lb.snapshots().is_empty());
    // A prune right after is not refused.
    lb.ok(["prune"]);
}

/// `backup --retry-lock` waits out a prune (an exclusive lock, held here
/// through the library as a running prune holds it) instead of exiting 17,
/// so a scheduled backup survives a prune that overlaps it.
#[test]
fn backup_with_retry_lock_waits_for_a_prune() {
    use lifeboat_repo::lock::{LockKind, LockOptions, RepositoryLock};
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prune = rt.block_on(async {
        let storage = std::sync::Arc::new(lifeboat_storage::LocalStorage::new(lb.repo.clone()));
        let repo = lifeboat_repo::Repository::open(storage, PASSWORD.as_bytes())
            .await
            .unwrap();
        RepositoryLock::acquire(&repo, LockKind::Exclusive, &LockOptions::default())
            .await
            .unwrap()
    });
    let backup = |extra: &[&str]| {
        let mut c = lb.std_cmd();
        c.arg("-v").arg("backup").args(extra).arg(&src);
        c
    };
    let out = backup(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(17), "{}", describe(&out));
    let mut waiting = backup(&["--retry-lock", "10m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (said, _err) = stderr_until(&mut waiting, "waiting (--retry-lock)");
    rt.block_on(prune.release()).unwrap();
    let status = waiting.wait().unwrap();
    assert!(status.success(), "backup --retry-lock: {status}: {said}");
    assert_eq!(lb.snapshots().len(), 1);
}

/// `prune --retry-lock` waits out a running backup instead of exiting 17.
#[test]
fn prune_with_retry_lock_waits_for_a_backup() {
    let lb = Lifeboat::init();
    let (child, stdin) = backup_holding_the_lock(&lb, &[]);
    lb.fail(["prune"], 17);
    let mut waiting = lb
        .std_cmd()
        .args(["-v", "prune", "--retry-lock", "10m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the prune says it waits, the backup's input ends; the backup
    // finishes and the prune then runs.
    let (said, _err) = stderr_until(&mut waiting, "waiting (--retry-lock)");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "backup --stdin");
    let status = waiting.wait().unwrap();
    assert!(status.success(), "prune --retry-lock: {status}: {said}");
    assert_eq!(lb.snapshots().len(), 1);
    let out = lb.run(["prune", "--retry-lock", "5x"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("not a duration"),
        "{}",
        describe(&out)
    );
}

/// `--stdin-from-command`: a failing producer saves no snapshot and its
/// exit status and last stderr lines are reported; a good one saves its
/// output. An empty `--stdin` is saved but marked empty in every listing.
#[test]
fn stdin_from_command_saves_only_when_the_command_succeeds() {
    let lb = Lifeboat::init();
    let out = lb.run([
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "echo half a dump; echo 'pg_dump: connection refused' >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(err.contains("no snapshot was saved"), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        lb.snapshots().is_empty(),
        "a failed producer made a snapshot"
    );
    assert_eq!(fs::read_dir(lb.repo.join("locks")).unwrap().count(), 0);

    let v = parse_json(&lb.ok([
        "backup",
        "--json",
        "--stdin-from-command",
        "--stdin-filename",
        "db.sql",
        "--",
        "sh",
        "-c",
        "printf 'the dump'",
    ]));
    assert_eq!(v["partial"], false, "{v}");
    let dumped = lb.ok(["dump", "latest", "/db.sql"]);
    assert_eq!(dumped.stdout, b"the dump");
    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        snaps[0]["extra"]["stdin_command"]["exit_status"], 0,
        "{snaps:?}"
    );

    // An empty stdin is saved, and marked.
    let out = lb
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "empty.sql"])
        .write_stdin(Vec::<u8>::new())
        .output()
        .unwrap();
    assert_ok(&out, "backup --stdin (empty)");
    assert!(stdout(&out).contains("EMPTY"), "{}", stdout(&out));
    let snaps = lb.snapshots();
    let empty = snaps.iter().find(|s| s["paths"][0] == "empty.sql").unwrap();
    assert_eq!(empty["extra"]["empty_stream"], true, "{empty}");
    let full = snaps.iter().find(|s| s["paths"][0] == "db.sql").unwrap();
    assert!(full["extra"].get("empty_stream").is_none(), "{full}");
    let listing = stdout(&lb.ok(["snapshots"]));
    assert_eq!(listing.matches("(EMPTY input)").count(), 1, "{listing}");
}

#[test]
fn wrong_password_exits_11() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let out = lb
        .cmd()
        .env("LIFEBOAT_PASSWORD", "not the password")
        .arg("snapshots")
        .output()
        .unwrap();
    let err = assert_fails(
        &out,
        code::WRONG_PASSWORD,
        "snapshots with a wrong password",
    );
    assert!(err.contains("password"), "{err}");
    // Restore too, and nothing is written.
    let target = lb.path("target");
    let out = lb
        .cmd()
        .env("LIFEBOAT_PASSWORD", "not the password")
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_fails(&out, code::WRONG_PASSWORD, "restore with a wrong password");
    assert!(!restored(&target, &src).exists());
}

#[test]
fn missing_repository_exits_10() {
    let lb = Lifeboat::new();
    for args in [
        vec!["snapshots"],
        vec!["check"],
        vec!["restore", "latest", "--target", "t"],
    ] {
        let err = lb.fail(&args, code::NO_REPOSITORY);
        assert!(
            err.contains(lb.repo.to_str().unwrap()),
            "error does not name the repository: {err}"
        );
        assert!(
            err.contains("init"),
            "error does not say how to create one: {err}"
        );
    }
    // -r with a path never creates a repository implicitly.
    let src = make_source(&lb, "src");
    lb.fail([Path::new("backup"), src.as_path()], code::NO_REPOSITORY);
    assert!(!lb.repo.join("config").exists());
}

#[test]
fn unreachable_storage_exits_12() {
    let lb = Lifeboat::new();
    // Port 1 on loopback refuses connections at once. Dummy credentials so
    // the request is really sent (without them signing fails first).
    let started = std::time::Instant::now();
    let out = lb
        .bare_cmd()
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .args([
            "-r",
            "s3://bucket/x?endpoint=http://127.0.0.1:1",
            "snapshots",
        ])
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let err = assert_fails(&out, code::UNREACHABLE, "snapshots on a closed port");
    assert!(
        err.contains("127.0.0.1:1"),
        "error does not name the endpoint: {err}"
    );
    // A refused connection is not worth minutes of retries.
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_repository_url_is_one_clear_line() {
    let lb = Lifeboat::new();
    let out = lb
        .bare_cmd()
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .args(["-r", "s3://bucket?colour=blue", "snapshots"])
        .output()
        .unwrap();
    let err = assert_fails(&out, 2, "snapshots with a bad URL");
    assert!(err.contains("colour") && err.contains("s3://"), "{err}");
}

#[test]
fn corrupt_pack_fails_restore_per_file_and_check_names_pack_and_file() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    // The big file's data is nearly all of the pack (the other blobs are a
    // few hundred bytes), so the middle byte of the pack is inside it
    // whatever order the blobs were packed in.
    write(src.join("big.bin"), random_bytes(300_000, 7));
    write(src.join("small.txt"), "still fine\n");
    let snap = lb.backup(&[&src], &[]);
    let snap_id = s(&snap["snapshot"]).to_string();
    let pack = only_data_pack(&lb.repo);
    let pack_id = file_name(&pack);
    flip_byte(&pack, fs::metadata(&pack).unwrap().len() as usize / 2);

    // restore: the damaged file fails, the rest is restored, exit 3.
    let target = lb.path("target");
    let out = lb
        .cmd()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(code::PARTIAL), "{}", describe(&out));
    assert_no_panic(&out);
    let errors = error_lines(&out);
    assert_eq!(
        errors.len(),
        1,
        "one error line per damaged file: {}",
        describe(&out)
    );
    assert!(
        errors[0].contains(&pack_id),
        "error does not name the pack: {errors:?}"
    );
    assert!(
        errors[0].contains("big.bin"),
        "error does not name the file: {errors:?}"
    );
    let dst = restored(&target, &src);
    assert_eq!(
        fs::read_to_string(dst.join("small.txt")).unwrap(),
        "still fine\n"
    );
    assert_ne!(
        fs::read(dst.join("big.bin")).ok(),
        Some(random_bytes(300_000, 7)),
        "damaged content cannot be restored intact"
    );

    // check without --read-data does not read pack contents.
    lb.ok(["check"]);

    // check --read-data: exit 14, names the pack and the affected file.
    let out = lb.run(["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(code::DAMAGED), "{}", describe(&out));
    assert_no_panic(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&pack_id),
        "check does not name the pack: {text}"
    );
    assert!(
        text.contains("big.bin"),
        "check does not name the affected file: {text}"
    );
    assert!(
        !text.contains("small.txt"),
        "small.txt is not affected: {text}"
    );

    let out = lb.run(["check", "--read-data", "--json"]);
    assert_eq!(out.status.code(), Some(code::DAMAGED), "{}", describe(&out));
    let report = parse_json(&out);
    assert_eq!(report["damaged_packs"], serde_json::json!([pack_id]));
    assert_eq!(report["damaged_snapshots"], serde_json::json!([snap_id]));
    let affected = report["affected_files"].as_array().unwrap();
    assert_eq!(affected.len(), 1, "{report}");
    assert!(s(&affected[0]["path"]).ends_with("src/big.bin"), "{report}");
    assert!(!report["errors"].as_array().unwrap().is_empty());
}

#[test]
fn corrupt_snapshot_record_is_named_by_check() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    write(src.join("more.txt"), "more\n");
    let second = lb.backup(&[&src], &[]);
    let second_id = s(&second["snapshot"]).to_string();
    let record = lb.repo.join("snapshots").join(&second_id);
    assert!(
        record.is_file(),
        "snapshot records live in REPO/snapshots/<id>"
    );
    flip_byte(&record, 20);

    let out = lb.run(["check"]);
    assert_eq!(out.status.code(), Some(code::DAMAGED), "{}", describe(&out));
    assert_no_panic(&out);
    assert!(
        stdout(&out).contains(&second_id),
        "check does not name the snapshot: {}",
        describe(&out)
    );

    let out = lb.run(["check", "--json"]);
    assert_eq!(out.status.code(), Some(code::DAMAGED), "{}", describe(&out));
    let report = parse_json(&out);
    assert_eq!(
        report["damaged_snapshots"],
        serde_json::json!([second_id]),
        "{report}"
    );
}

#[test]
fn newer_format_version_is_refused_with_15() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let config = lb.repo.join("config");
    assert_eq!(
        &fs::read(&config).unwrap()[..12],
        b"LIFEBOAT\x01\x00\x00\x00"
    );
    set_byte(&config, 8, 5);
    for args in [vec!["snapshots"], vec!["check"]] {
        let err = lb.fail(&args, code::UNSUPPORTED_VERSION);
        assert!(err.contains("upgrade"), "{err}");
    }
    // Refused before any password is tried: a wrong one gives the same answer.
    let out = lb
        .cmd()
        .env("LIFEBOAT_PASSWORD", "wrong")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(
        &out,
        code::UNSUPPORTED_VERSION,
        "snapshots, newer repository, wrong password",
    );
    // And a backup does not write into it.
    let before = files_under(&lb.repo);
    lb.fail(
        [Path::new("backup"), src.as_path()],
        code::UNSUPPORTED_VERSION,
    );
    assert_eq!(files_under(&lb.repo), before);
}

#[test]
fn snapshot_or_path_not_found_exits_16() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let err = lb.fail(["restore", "deadbeef", "--target", "t"], code::NOT_FOUND);
    assert!(err.contains("deadbeef"), "{err}");
    lb.fail(["ls", "deadbeef"], code::NOT_FOUND);
    // ls streams its JSON array: a path that is not there must still print
    // nothing (not a half-open array) and exit 16; an entry, one array.
    let missing_dir = format!("{}/no-such-dir", snap_path(&src));
    let out = lb.run(["ls", "latest", &missing_dir, "--json"]);
    assert_eq!(out.status.code(), Some(code::NOT_FOUND), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let one = lb.json(["ls", "latest", &snap_path(&src), "--no-recursive"]);
    assert!(one.as_array().is_some_and(|a| !a.is_empty()), "{one}");
    lb.fail(["dump", "deadbeef", "/x"], code::NOT_FOUND);
    lb.fail(["diff", "latest", "deadbeef"], code::NOT_FOUND);
    let missing = format!("{}/no-such-file", snap_path(&src));
    let err = lb.fail(["dump", "latest", &missing], code::NOT_FOUND);
    assert!(err.contains("no-such-file"), "{err}");
    // An empty repository has no `latest`.
    let empty = Lifeboat::init();
    empty.fail(["restore", "latest", "--target", "t"], code::NOT_FOUND);
}

#[test]
fn removing_an_unknown_key_exits_16() {
    let lb = Lifeboat::init();
    let err = lb.fail(["key", "remove", "ffffffff"], code::NOT_FOUND);
    assert!(err.contains("ffffffff"), "{err}");
}

// ---------------------------------------------------------------- full disk

#[test]
fn full_repository_disk_exits_13_and_keeps_earlier_snapshots() {
    let mut lb = Lifeboat::new();
    let Some(mnt) = Tmpfs::mount(&lb.path("mnt"), "4m", "full_repository_disk") else {
        return;
    };
    // Declared after `lb`, so a failing test unmounts before the temp dir goes.
    lb.repo = mnt.path().join("repo");
    lb.ok(["init"]);
    let small = make_source(&lb, "small");
    let first = lb.backup(&[&small], &[]);

    let big = lb.path("big");
    write(big.join("random.bin"), random_bytes(20 << 20, 3));
    let out = lb.cmd().arg("backup").arg(&big).output().unwrap();
    let err = assert_fails(&out, code::STORAGE_FULL, "backup onto a full disk");
    assert!(
        err.contains("free space"),
        "message does not say to free space: {err}"
    );
    // The failed backup removed its lock (issue 13): a prune may run.
    assert_eq!(
        fs::read_dir(lb.repo.join("locks")).unwrap().count(),
        0,
        "a backup that hit a full disk left its lock behind"
    );

    // The earlier snapshot is intact and still the only one.
    let snaps = lb.snapshots();
    assert_eq!(ids(&snaps), vec![s(&first["snapshot"]).to_string()]);
    let target = lb.restore_into("latest", "target", &[]);
    assert_same_tree(&small, &restored(&target, &small));
    lb.ok(["check", "--read-data"]);
    lb.ok(["prune"]);
    drop(mnt);
}

#[test]
fn full_restore_target_exits_13() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("random.bin"), random_bytes(20 << 20, 4));
    lb.backup(&[&src], &[]);
    let Some(mnt) = Tmpfs::mount(&lb.path("mnt"), "4m", "full_restore_target") else {
        return;
    };
    let out = lb
        .cmd()
        .args(["restore", "latest", "--target"])
        .arg(mnt.path())
        .output()
        .unwrap();
    let err = assert_fails(&out, code::STORAGE_FULL, "restore onto a full disk");
    assert!(
        err.contains("free space"),
        "message does not say to free space: {err}"
    );
    drop(mnt);
}

// ---------------------------------------------------------------- backup features

#[test]
fn stdin_backup_dumps_byte_identical() {
    let lb = Lifeboat::init();
    let mut data = b"-- PostgreSQL database dump\nCREATE TABLE t (x int);\n".to_vec();
    data.extend(random_bytes(1_500_000, 9));
    let out = lb
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "db.sql", "--json"])
        .write_stdin(data.clone())
        .output()
        .unwrap();
    assert_ok(&out, "backup --stdin");
    let summary = parse_json(&out);
    assert_eq!(u(&summary["summary"]["total_bytes"]), data.len() as u64);

    let snaps = lb.snapshots();
    assert_eq!(snaps[0]["paths"], serde_json::json!(["db.sql"]));
    let out = lb.ok(["dump", "latest", "db.sql"]);
    assert!(
        out.stdout == data,
        "dump differs ({} vs {} bytes)",
        out.stdout.len(),
        data.len()
    );
    let out = lb.ok(["dump", s(&snaps[0]["short_id"]), "/db.sql"]);
    assert!(out.stdout == data, "dump with a leading slash differs");
}

#[test]
fn excludes_patterns_files_and_caches() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("keep/a.txt"), "a");
    write(src.join("app.log"), "log");
    write(src.join("keep/deep/debug.log"), "log");
    write(src.join("scratch.tmp"), "tmp");
    write(src.join("build/out.o"), "obj");
    write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    );
    write(src.join("cache/blob"), "cached");
    // Not a valid tag: its directory is kept.
    write(src.join("notcache/CACHEDIR.TAG"), "not a signature\n");
    write(src.join("notcache/blob"), "kept");
    let exclude_file = lb.path("excludes.txt");
    write(&exclude_file, "# temporary files\n*.tmp\n\nbuild\n");

    let mut args = vec![
        "backup".to_string(),
        "--exclude".into(),
        "*.log".into(),
        "--exclude-file".into(),
    ];
    args.push(exclude_file.to_str().unwrap().into());
    args.push("--exclude-caches".into());
    args.push(snap_path(&src));
    lb.json(&args);

    let paths = ls_paths(&lb.json(["ls", "latest"]));
    let root = snap_path(&src);
    let has = |rel: &str| paths.contains(&format!("{root}/{rel}"));
    assert!(
        has("keep/a.txt") && has("keep/deep") && has("notcache/blob"),
        "{paths:#?}"
    );
    assert!(
        !has("app.log") && !has("keep/deep/debug.log"),
        "--exclude: {paths:#?}"
    );
    assert!(
        !has("scratch.tmp") && !has("build") && !has("build/out.o"),
        "--exclude-file: {paths:#?}"
    );
    assert!(!has("cache/blob"), "--exclude-caches: {paths:#?}");

    // Without the flags everything is there.
    lb.backup(&[&src], &[]);
    let paths = ls_paths(&lb.json(["ls", "latest"]));
    for rel in ["app.log", "scratch.tmp", "build/out.o", "cache/blob"] {
        assert!(
            paths.contains(&format!("{root}/{rel}")),
            "{rel} missing: {paths:#?}"
        );
    }
}

#[test]
fn tags_and_host_are_recorded_and_filter() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(
        &[&src],
        &["--tag", "daily", "--tag", "db", "--host", "web-1"],
    );
    lb.backup(&[&src], &["--host", "web-2"]);
    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["host"], "web-1");
    assert_eq!(snaps[0]["tags"], serde_json::json!(["daily", "db"]));
    assert_eq!(snaps[1]["host"], "web-2");
    assert_eq!(snaps[1]["tags"], serde_json::json!([]));
    // A different host is a different source: no parent.
    assert_eq!(snaps[1]["parent"], Value::Null);

    let tagged = lb.json(["snapshots", "--tag", "daily"]);
    assert_eq!(ids(tagged.as_array().unwrap()), ids(&snaps[..1]));
    let by_host = lb.json(["snapshots", "--host", "web-2"]);
    assert_eq!(ids(by_host.as_array().unwrap()), ids(&snaps[1..]));
    assert_eq!(
        lb.json(["snapshots", "--host", "nobody"]),
        serde_json::json!([])
    );
}

#[test]
fn modes_are_recorded_with_parents() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    let id = |v: &Value| s(&v["snapshot"]).to_string();

    // The first backup of a source, whatever was asked, is full.
    let b1 = lb.backup(&[&src], &[]);
    assert_eq!(b1["mode"], "full");
    assert_eq!(b1["parent"], Value::Null);
    assert_eq!(u(&b1["summary"]["files_new"]), 4);

    write(src.join("a.txt"), "hello, changed\n");
    let b2 = lb.backup(&[&src], &["--mode", "incremental"]);
    assert_eq!(b2["mode"], "incremental");
    assert_eq!(b2["parent"].as_str(), Some(id(&b1).as_str()));
    assert_eq!(u(&b2["summary"]["files_changed"]), 1, "{b2}");
    assert_eq!(u(&b2["summary"]["files_unchanged"]), 3, "{b2}");

    write(src.join("new.txt"), "new\n");
    let b3 = lb.backup(&[&src], &["--mode", "differential"]);
    assert_eq!(b3["mode"], "differential");
    assert_eq!(
        b3["parent"].as_str(),
        Some(id(&b1).as_str()),
        "differential compares with the full one"
    );

    let b4 = lb.backup(&[&src], &[]);
    assert_eq!(b4["mode"], "incremental");
    assert_eq!(
        b4["parent"].as_str(),
        Some(id(&b3).as_str()),
        "incremental compares with the latest"
    );
    assert_eq!(u(&b4["summary"]["read_bytes"]), 0, "nothing changed: {b4}");

    let b5 = lb.backup(&[&src], &["--mode", "full"]);
    assert_eq!(b5["mode"], "full");
    assert_eq!(b5["parent"], Value::Null);
    assert_eq!(
        u(&b5["summary"]["files_unchanged"]),
        0,
        "full reads everything: {b5}"
    );
    assert_eq!(
        u(&b5["summary"]["read_bytes"]),
        u(&b5["summary"]["total_bytes"])
    );

    let b6 = lb.backup(&[&src], &["--mode", "differential"]);
    assert_eq!(b6["parent"].as_str(), Some(id(&b5).as_str()));

    // snapshots --json shows the same.
    let snaps = lb.snapshots();
    let got: Vec<(String, Option<String>)> = snaps
        .iter()
        .map(|s| {
            (
                s["mode"].as_str().unwrap().to_string(),
                s["parent"].as_str().map(String::from),
            )
        })
        .collect();
    let want = vec![
        ("full".to_string(), None),
        ("incremental".into(), Some(id(&b1))),
        ("differential".into(), Some(id(&b1))),
        ("incremental".into(), Some(id(&b3))),
        ("full".into(), None),
        ("differential".into(), Some(id(&b5))),
    ];
    assert_eq!(got, want);

    // A differential backup of a source without a full snapshot reads
    // everything and records no parent.
    let other = make_source(&lb, "other");
    let d = lb.backup(&[&other], &["--mode", "differential"]);
    assert_eq!(d["parent"], Value::Null);
}

#[test]
fn unreadable_path_makes_a_partial_snapshot_and_exits_3() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    // Reading /proc/self/mem at offset 0 fails even for root.
    let out = lb
        .cmd()
        .arg("backup")
        .arg(&src)
        .args(["/proc/self/mem", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(code::PARTIAL), "{}", describe(&out));
    assert_no_panic(&out);
    assert!(
        stderr(&out).contains("/proc/self/mem"),
        "unreadable file not reported: {}",
        describe(&out)
    );
    let summary = parse_json(&out);
    assert_eq!(summary["partial"], true);
    assert_eq!(u(&summary["summary"]["errors"]), 1);
    assert!(
        summary["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| s(w).contains("/proc/self/mem"))
    );

    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 1, "a partial snapshot is still saved");
    assert_eq!(snaps[0]["partial"], true);
    let human = stdout(&lb.ok(["snapshots"]));
    assert!(human.contains("partial"), "{human}");

    // Everything readable was saved.
    let target = lb.restore_into("latest", "target", &[]);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn backup_json_summary_counts() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    let total: u64 = ["a.txt", "notes/todo.md", "sub/data.bin", "empty"]
        .iter()
        .map(|f| fs::metadata(src.join(f)).unwrap().len())
        .sum();
    let b = lb.backup(&[&src], &[]);
    let sum = &b["summary"];
    assert_eq!(s(&b["snapshot"]).len(), 64);
    assert!(s(&b["snapshot"]).starts_with(s(&b["short_id"])));
    assert_eq!(b["partial"], false);
    assert_eq!(u(&sum["files_new"]), 4, "{b}");
    assert_eq!(u(&sum["files_changed"]), 0);
    assert_eq!(u(&sum["files_unchanged"]), 0);
    assert_eq!(u(&sum["errors"]), 0);
    assert_eq!(u(&sum["total_bytes"]), total);
    assert_eq!(u(&sum["read_bytes"]), total);
    assert!(u(&sum["dirs"]) >= 3, "{b}");
    assert!(u(&sum["blobs_added"]) >= 2, "{b}");
    // Random data does not compress: stored bytes are at least the raw data.
    assert!(u(&sum["added_raw_bytes"]) >= total);
    assert!(u(&sum["added_bytes"]) > 200_000);
    assert_eq!(b["warnings"], serde_json::json!([]));

    // Same data again: nothing read, no data added.
    let b = lb.backup(&[&src], &[]);
    let sum = &b["summary"];
    assert_eq!(u(&sum["files_unchanged"]), 4, "{b}");
    assert_eq!(u(&sum["files_new"]), 0);
    assert_eq!(u(&sum["read_bytes"]), 0);
    assert!(
        u(&sum["added_raw_bytes"]) < 100_000,
        "data was stored twice: {b}"
    );

    // The same content under another name is deduplicated.
    fs::copy(src.join("sub/data.bin"), src.join("copy.bin")).unwrap();
    let b = lb.backup(&[&src], &[]);
    assert_eq!(u(&b["summary"]["files_new"]), 1, "{b}");
    assert!(
        u(&b["summary"]["added_raw_bytes"]) < 100_000,
        "duplicate data stored: {b}"
    );
}

// ---------------------------------------------------------------- read commands

#[test]
fn ls_json_lists_entries_with_metadata() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    lb.backup(&[&src], &[]);
    let root = snap_path(&src);

    let entries = lb.json(["ls", "latest"]);
    let by_path = |p: &str| -> Value {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("{p} not listed: {entries:#}"))
            .clone()
    };
    let a = by_path(&format!("{root}/a.txt"));
    assert_eq!(a["kind"], "file");
    assert_eq!(u(&a["size"]), 6);
    assert_eq!(u(&a["mode"]), 0o640);
    assert_eq!(by_path(&format!("{root}/sub"))["kind"], "dir");
    assert_eq!(
        u(&by_path(&format!("{root}/sub/data.bin"))["size"]),
        200_000
    );
    let link = by_path(&format!("{root}/link"));
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["link_target"], "a.txt");
    // Every ancestor of the source is listed, down from the root.
    assert!(
        ls_paths(&entries)
            .iter()
            .any(|p| p == root.rsplit_once('/').unwrap().0)
    );

    // A subdirectory, non-recursive.
    let sub = lb.json(["ls", "latest", &root, "--no-recursive"]);
    let mut names = ls_paths(&sub);
    names.sort();
    let want: Vec<String> = ["a.txt", "empty", "link", "notes", "sub"]
        .iter()
        .map(|n| format!("{root}/{n}"))
        .collect();
    assert_eq!(names, want);
}

#[test]
fn diff_json_reports_added_removed_changed_with_sizes() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("same.txt"), "same");
    write(src.join("gone.txt"), "12345");
    write(src.join("grow.txt"), "0123456789");
    let first = lb.backup(&[&src], &[]);
    fs::remove_file(src.join("gone.txt")).unwrap();
    write(src.join("new.txt"), "1234567");
    write(src.join("grow.txt"), "01234567890123456789");
    let second = lb.backup(&[&src], &[]);

    let report = lb.json(["diff", s(&first["short_id"]), s(&second["short_id"])]);
    assert_eq!(report["from"], first["snapshot"]);
    assert_eq!(report["to"], second["snapshot"]);
    let root = snap_path(&src);
    let entry = |name: &str| -> Value {
        let p = format!("{root}/{name}");
        let found: Vec<&Value> = report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["path"] == p)
            .collect();
        assert_eq!(found.len(), 1, "{p}: {report:#}");
        found[0].clone()
    };
    let added = entry("new.txt");
    assert_eq!(
        (
            added["change"].as_str(),
            added["old_size"].as_u64(),
            added["new_size"].as_u64()
        ),
        (Some("added"), None, Some(7))
    );
    let removed = entry("gone.txt");
    assert_eq!(
        (
            removed["change"].as_str(),
            removed["old_size"].as_u64(),
            removed["new_size"].as_u64()
        ),
        (Some("removed"), Some(5), None)
    );
    let changed = entry("grow.txt");
    assert_eq!(changed["change"], "changed");
    assert_eq!(changed["content"], true);
    assert_eq!(
        (changed["old_size"].as_u64(), changed["new_size"].as_u64()),
        (Some(10), Some(20))
    );
    assert!(
        !report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == format!("{root}/same.txt")),
        "unchanged file listed: {report:#}"
    );
    let t = &report["totals"];
    assert_eq!(
        (u(&t["added"]), u(&t["removed"]), u(&t["content_changed"])),
        (1, 1, 1),
        "{t}"
    );
    assert_eq!(
        (u(&t["added_bytes"]), u(&t["removed_bytes"])),
        (7, 5),
        "{t}"
    );
    assert_eq!(t["size_change_bytes"].as_i64(), Some(7 - 5 + 10), "{t}");

    // The human form says the same in one summary line.
    let text = stdout(&lb.ok(["diff", s(&first["short_id"]), s(&second["short_id"])]));
    assert!(text.contains(&format!("+ {root}/new.txt")), "{text}");
    assert!(text.contains(&format!("- {root}/gone.txt")), "{text}");
    assert!(text.contains(&format!("M {root}/grow.txt")), "{text}");
}

#[test]
fn find_json_follows_a_file_across_snapshots() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("notes.txt"), "abc");
    write(src.join("other.txt"), "x");
    let s1 = lb.backup(&[&src], &[]);
    write(src.join("notes.txt"), "abcdef");
    let s2 = lb.backup(&[&src], &[]);
    fs::remove_file(src.join("notes.txt")).unwrap();
    let s3 = lb.backup(&[&src], &[]);

    let found = lb.json(["find", "notes.txt"]);
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["path"], format!("{}/notes.txt", snap_path(&src)));
    let events: Vec<(String, String, Option<u64>)> = found[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                s(&e["change"]).to_string(),
                s(&e["snapshot"]).to_string(),
                e["size"].as_u64(),
            )
        })
        .collect();
    let id = |v: &Value| s(&v["snapshot"]).to_string();
    assert_eq!(
        events,
        vec![
            ("appeared".to_string(), id(&s1), Some(3)),
            ("changed".into(), id(&s2), Some(6)),
            ("disappeared".into(), id(&s3), None),
        ]
    );
    assert_eq!(found[0]["matches"].as_array().unwrap().len(), 2);

    // A glob with a slash matches full paths; no match is an empty list.
    let by_path = lb.json(["find", &format!("{}/*.txt", snap_path(&src))]);
    assert_eq!(by_path.as_array().unwrap().len(), 2, "{by_path:#}");
    assert_eq!(
        lb.json(["find", "nothing-like-this"]),
        serde_json::json!([])
    );
}

#[test]
fn stats_json_counts_the_repository() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    lb.backup(&[&src], &[]);
    let st = lb.json(["stats"]);
    assert_eq!(u(&st["snapshots"]), 2, "{st}");
    assert_eq!(
        u(&st["packs"]) as usize,
        files_under(&lb.repo.join("data")).len()
    );
    let on_disk: u64 = files_under(&lb.repo.join("data"))
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(u(&st["pack_bytes"]), on_disk);
    assert!(u(&st["index_files"]) >= 1);
    assert_eq!(u(&st["blobs"]), u(&st["data_blobs"]) + u(&st["tree_blobs"]));
    assert!(u(&st["data_blobs"]) >= 3, "{st}");
    assert!(u(&st["raw_bytes"]) >= 200_000, "{st}");
    // Two snapshots of the same data: described twice, stored once.
    assert!(st["dedup_ratio"].as_f64().unwrap() > 1.5, "{st}");
}

#[test]
fn check_json_on_a_healthy_repository() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    write(src.join("more"), random_bytes(50_000, 5));
    lb.backup(&[&src], &[]);
    let r = lb.json(["check"]);
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(u(&r["snapshots"]), 2);
    assert_eq!(u(&r["packs_read"]), 0, "no --read-data, no pack reads");
    let r = lb.json(["check", "--read-data"]);
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(u(&r["packs_read"]), u(&r["packs"]));
    assert_eq!(r["damaged_snapshots"], serde_json::json!([]));
    assert_eq!(r["affected_files"], serde_json::json!([]));
    let text = stdout(&lb.ok(["check", "--read-data-subset", "50%"]));
    assert!(text.contains("no errors found"), "{text}");
}

#[test]
fn read_data_subsets_cover_every_pack_and_json_reports_coverage() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    for seed in 10..13 {
        write(src.join(format!("more-{seed}")), random_bytes(50_000, seed));
        lb.backup(&[&src], &[]);
    }
    // Without reading data, coverage says nothing is verified yet.
    let r = lb.json(["check"]);
    let packs = u(&r["packs"]);
    assert!(packs >= 4, "{r}");
    assert_eq!(u(&r["coverage"]["never_verified_packs"]), packs, "{r}");
    assert_eq!(r["coverage"]["oldest_verification"], Value::Null);

    let mut read = 0;
    for run in 1..=3 {
        let r = lb.json(["check", "--read-data-subset", "1/3"]);
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
        assert_eq!(u(&r["packs_read"]), packs.div_ceil(3), "{r}");
        // Never-verified packs go first, so none is read twice until all
        // have been read.
        read = (read + u(&r["packs_read"])).min(packs);
        let c = &r["coverage"];
        assert_eq!(u(&c["window_days"]), 7);
        assert_eq!(u(&c["packs"]), packs);
        assert_eq!(u(&c["packs_verified"]), read, "run {run}: {r}");
        assert_eq!(
            u(&c["never_verified_packs"]),
            packs - read,
            "run {run}: {r}"
        );
        let share = c["packs_share"].as_f64().unwrap();
        assert!((share - read as f64 / packs as f64).abs() < 1e-9, "{r}");
        assert!(c["oldest_verification"].is_string(), "{r}");
        if run == 1 {
            // One run's packs are all verified, and are the bytes it read.
            assert_eq!(u(&c["bytes_verified"]), u(&r["read_bytes"]), "{r}");
        }
    }
    assert_eq!(read, packs, "three 1/3 runs read every pack");
    let r = lb.json(["check", "--coverage-days", "1"]);
    assert_eq!(r["coverage"]["bytes_share"].as_f64(), Some(1.0), "{r}");

    // The text says it too; the workers and memory options are taken.
    let text = stdout(&lb.ok([
        "check",
        "--read-data",
        "--read-workers",
        "2",
        "--read-memory",
        "64",
    ]));
    assert!(
        text.contains(&format!(
            "verified on this machine within 7 days: {packs} of {packs} packs (100%)"
        )),
        "{text}"
    );
    lb.fail(["check", "--read-data-subset", "4/3"], 2);
    // A value clap refuses is a usage error too.
    let out = lb.run(["check", "--read-workers", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // bench/'s ceiling measurement runs over the same packs.
    let c = lb.json(["check", "--measure-ceiling", "--read-workers", "2"]);
    assert_eq!(u(&c["packs"]), packs, "{c}");
    assert_eq!(u(&c["workers"]), 2);
    assert!(u(&c["bytes"]) > 0, "{c}");
}

// ---------------------------------------------------------------- keys

#[test]
fn key_add_list_remove_and_passwd() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let keys = lb.json(["key", "list"]);
    let first_key = s(&keys[0]["id"]).to_string();

    let out = lb
        .cmd()
        .env("LIFEBOAT_NEW_PASSWORD", "second password")
        .args(["key", "add", "--json"])
        .output()
        .unwrap();
    assert_ok(&out, "key add");
    let added = s(&parse_json(&out)["added"]).to_string();

    let keys = lb.json(["key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:#?}");
    let current: Vec<&str> = keys
        .iter()
        .filter(|k| k["current"] == true)
        .map(|k| s(&k["id"]))
        .collect();
    assert_eq!(current, vec![first_key.as_str()]);

    // The new password opens the repository.
    let second = Lifeboat::new().with_repo(lb.repo.clone(), "second password");
    assert_eq!(second.snapshots().len(), 1);
    let keys = second.json(["key", "list"]);
    let current: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .map(|k| s(&k["id"]))
        .collect();
    assert_eq!(current, vec![added.as_str()]);

    // The key in use cannot be removed; the other one can.
    let out = second.run(["key", "remove", &added[..8]]);
    assert!(
        !out.status.success(),
        "removed the key in use: {}",
        describe(&out)
    );
    assert_no_panic(&out);
    second.ok(["key", "remove", &first_key[..8]]);
    assert_eq!(second.json(["key", "list"]).as_array().unwrap().len(), 1);
    lb.fail(["snapshots"], code::WRONG_PASSWORD);

    // passwd: the old password stops working, the new one works.
    let out = second
        .cmd()
        .env("LIFEBOAT_NEW_PASSWORD", "third password")
        .args(["key", "passwd"])
        .output()
        .unwrap();
    assert_ok(&out, "key passwd");
    second.fail(["snapshots"], code::WRONG_PASSWORD);
    let third = Lifeboat::new().with_repo(lb.repo.clone(), "third password");
    assert_eq!(third.snapshots().len(), 1);
    assert_eq!(third.json(["key", "list"]).as_array().unwrap().len(), 1);
    let target = third.restore_into("latest", "target", &[]);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn password_file_and_command() {
    let lb = Lifeboat::init();
    let pw_file = lb.path("pw");
    write(&pw_file, format!("{PASSWORD}\n"));
    let out = lb
        .cmd()
        .env_remove("LIFEBOAT_PASSWORD")
        .arg("--password-file")
        .arg(&pw_file)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_ok(&out, "--password-file");
    let out = lb
        .cmd()
        .env_remove("LIFEBOAT_PASSWORD")
        .args([
            "--password-command",
            &format!("echo '{PASSWORD}'"),
            "snapshots",
        ])
        .output()
        .unwrap();
    assert_ok(&out, "--password-command");
    let out = lb
        .cmd()
        .env_remove("LIFEBOAT_PASSWORD")
        .args(["--password-command", "false", "snapshots"])
        .output()
        .unwrap();
    assert_fails(&out, code::WRONG_PASSWORD, "failing password command");
    // No password source at all and no terminal: a clear error, no prompt.
    let out = lb
        .cmd()
        .env_remove("LIFEBOAT_PASSWORD")
        .arg("snapshots")
        .output()
        .unwrap();
    let err = assert_fails(&out, code::WRONG_PASSWORD, "no password");
    assert!(err.contains("LIFEBOAT_PASSWORD"), "{err}");
}

// ---------------------------------------------------------------- restore

#[test]
fn restore_refuses_to_overwrite_without_overwrite() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let target = lb.path("target");
    let restore = |extra: &[&str]| {
        let mut c = lb.cmd();
        c.args(["restore", "latest", "--target"])
            .arg(&target)
            .args(extra);
        c.output().unwrap()
    };
    assert_ok(&restore(&[]), "first restore");
    let dst = restored(&target, &src);
    write(dst.join("a.txt"), "local edit\n");

    let out = restore(&[]);
    assert!(
        !out.status.success(),
        "overwrote without --overwrite: {}",
        describe(&out)
    );
    assert_no_panic(&out);
    assert_eq!(error_lines(&out).len(), 1, "{}", describe(&out));
    assert!(stderr(&out).contains("--overwrite"), "{}", describe(&out));
    assert_eq!(
        fs::read_to_string(dst.join("a.txt")).unwrap(),
        "local edit\n",
        "file was replaced"
    );

    assert_ok(&restore(&["--overwrite"]), "restore --overwrite");
    assert_same_tree(&src, &dst);
}

#[test]
fn restore_delta_rewrites_only_what_differs() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let target = lb.path("target");
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "restore".into(),
            "latest".into(),
            "--target".into(),
            target.clone().into(),
        ];
        a.extend(extra.iter().map(Into::into));
        a
    };
    lb.ok(args(&[]));
    let dst = restored(&target, &src);
    write(dst.join("sub/data.bin"), random_bytes(200_000, 2));
    fs::remove_file(dst.join("a.txt")).unwrap();

    let stats = lb.json(args(&["--delta"]));
    assert_eq!(u(&stats["files_restored"]), 2, "{stats}");
    assert_eq!(u(&stats["files_skipped_identical"]), 2, "{stats}");
    assert_eq!(stats["errors"], serde_json::json!([]));
    assert_same_tree(&src, &dst);

    // Nothing differs: nothing is written.
    let stats = lb.json(args(&["--delta"]));
    assert_eq!(u(&stats["files_restored"]), 0, "{stats}");
    assert_eq!(u(&stats["bytes_written"]), 0, "{stats}");
}

#[test]
fn restore_include_and_exclude_restrict() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    let root = snap_path(&src);

    let target = lb.path("only-sub");
    lb.ok([
        "restore".into(),
        "latest".into(),
        "--target".into(),
        target.clone().into_os_string(),
        "--include".into(),
        format!("{root}/sub").into(),
    ]);
    let dst = restored(&target, &src);
    assert_eq!(
        fs::read(dst.join("sub/data.bin")).unwrap(),
        random_bytes(200_000, 1)
    );
    assert!(
        !dst.join("a.txt").exists() && !dst.join("notes").exists() && !dst.join("link").exists()
    );

    let target = lb.restore_into("latest", "only-md", &["--include", "*.md"]);
    let dst = restored(&target, &src);
    assert!(dst.join("notes/todo.md").is_file());
    assert!(!dst.join("a.txt").exists() && !dst.join("sub/data.bin").exists());

    let target = lb.restore_into("latest", "no-sub", &["--exclude", "sub"]);
    let dst = restored(&target, &src);
    assert!(dst.join("a.txt").is_file() && !dst.join("sub").exists());
}

#[test]
fn restore_an_older_snapshot_by_id_prefix() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    let old = lb.path("old-copy");
    copy_tree(&src, &old);
    let first = lb.backup(&[&src], &[]);
    write(src.join("a.txt"), "changed\n");
    fs::remove_file(src.join("empty")).unwrap();
    lb.backup(&[&src], &[]);

    let target = lb.restore_into(s(&first["short_id"]), "target", &[]);
    assert_same_tree(&old, &restored(&target, &src));
}

// ---------------------------------------------------------------- output plumbing

#[test]
fn closed_stdout_does_not_panic() {
    // `lifeboat snapshots | head -0`: the reader is gone before the output
    // is written. The binary must not panic with a backtrace, in the human
    // form or with --json.
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &[]);
    for args in [
        vec!["snapshots"],
        vec!["snapshots", "--json"],
        vec!["ls", "latest"],
    ] {
        let mut child = lb
            .std_cmd()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_no_panic(&out);
    }
}

/// Regression (issue 13): `latest` meant the newest snapshot of anything,
/// so after a file backup and a later stdin backup `restore latest`
/// restored the dump. `--host`, `--tag` and `--path` pick the newest
/// snapshot they allow, for restore, ls, dump, diff and find.
#[test]
fn latest_respects_host_tag_and_path_filters() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    lb.backup(&[&src], &["--tag", "files", "--host", "web1"]);
    let out = lb
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "db.sql"])
        .args(["--host", "db1", "--tag", "dump"])
        .write_stdin("the dump\n")
        .output()
        .unwrap();
    assert_ok(&out, "backup --stdin");

    // Unfiltered, `latest` is the dump.
    let all = lb.json(["ls", "latest"]);
    assert_eq!(ls_paths(&all), vec!["/db.sql".to_string()]);

    let want = format!("{}/a.txt", snap_path(&src));
    for filter in [
        vec!["--tag", "files"],
        vec!["--host", "web1"],
        vec!["--path", src.to_str().unwrap()],
    ] {
        let mut args = vec!["ls", "latest"];
        args.extend(&filter);
        let listed = ls_paths(&lb.json(&args));
        assert!(listed.contains(&want), "{filter:?}: {listed:?}");

        let target = lb.path(&format!("restored-{}", filter[0].trim_start_matches('-')));
        let mut args = vec!["restore", "latest", "-t", target.to_str().unwrap()];
        args.extend(&filter);
        lb.ok(&args);
        let restored = target.join(src.strip_prefix("/").unwrap());
        assert_eq!(
            fs::read(restored.join("a.txt")).unwrap(),
            b"hello\n",
            "{filter:?}"
        );
        assert!(!target.join("db.sql").exists(), "{filter:?}");

        let mut args = vec!["dump", "latest", want.as_str()];
        args.extend(&filter);
        assert_eq!(stdout(&lb.ok(&args)), "hello\n", "{filter:?}");
    }

    // diff: both sides' `latest` are the file snapshot.
    let files_id = lb
        .snapshots()
        .iter()
        .find(|snap| snap["tags"][0] == "files")
        .map(|snap| s(&snap["id"]).to_string())
        .expect("the file snapshot");
    let diff = lb.json(["diff", "latest", "latest", "--tag", "files"]);
    assert_eq!(s(&diff["from"]), files_id, "{diff}");
    assert_eq!(s(&diff["to"]), files_id, "{diff}");
    assert_eq!(u(&diff["totals"]["added"]), 0, "{diff}");

    // find searches only the snapshots the filters allow.
    let found = lb.json(["find", "*.sql", "--tag", "files"]);
    assert_eq!(found.as_array().map(Vec::len), Some(0), "{found}");
    let found = lb.json(["find", "*.sql", "--host", "db1"]);
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");

    // Nothing allowed: not found (16), naming the filter.
    let err = lb.fail(["ls", "latest", "--tag", "nope"], code::NOT_FOUND);
    assert!(err.contains("tag nope"), "{err}");
}

/// `restore --batch-files 1`: every file's data is its own batch, hard
/// links among them are made after the data, and the tree comes back as a
/// restore in one batch gives it; a batch of no files is refused as usage.
#[test]
fn restore_in_batches_of_one_file_restores_the_tree_and_its_hard_links() {
    let lb = Lifeboat::init();
    let src = make_source(&lb, "src");
    for d in 0..4 {
        write(
            src.join(format!("deep/d{d}/s/file")),
            random_bytes(30_000, 10 + d),
        );
    }
    fs::hard_link(src.join("sub/data.bin"), src.join("deep/also-data.bin")).unwrap();
    lb.backup(&[&src], &[]);
    let target = lb.restore_into("latest", "target", &["--batch-files", "1"]);
    let back = restored(&target, &src);
    assert_same_tree(&src, &back);
    let first = fs::metadata(back.join("sub/data.bin")).unwrap();
    let other = fs::metadata(back.join("deep/also-data.bin")).unwrap();
    assert_eq!(first.ino(), other.ino(), "the hard link was not restored");
    assert_eq!(first.nlink(), 2);
    let out = lb
        .cmd()
        .args(["restore", "latest", "--target", "t0", "--batch-files", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(code::USAGE), "{}", describe(&out));
    assert!(stderr(&out).contains("--batch-files"), "{}", describe(&out));
}
