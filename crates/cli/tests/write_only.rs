//! Write-only keys through the real binary (issue 16, docs/security.md
//! §12): `init --write-only-keys`, `key add --write-only`, a backup with
//! the write-only key, every reading or deleting command refused with
//! exit 11 and a message naming the full key, and the full key restoring
//! what the write-only key wrote byte for byte. The library side is
//! `crates/snapshot/tests/write_only.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Lifeboat, assert_fails, assert_ok, assert_same_tree, parse_json, restored, write};

/// Exit code of a key that cannot open what the command reads (README):
/// the write-only key's refusals share it with a wrong password.
const WRONG_KEY: i32 = 11;
const WRITE_ONLY_PW: &str = "write-only backup host password";

fn init_with_write_only_key(lb: &Lifeboat) -> String {
    common::init_with_write_only_key(lb, WRITE_ONLY_PW)
}

fn run_write_only(lb: &Lifeboat, args: &[&str]) -> Output {
    common::run_with_password(lb, WRITE_ONLY_PW, args)
}

/// A refusal of the write-only key: exit 11, one error line that says a
/// full key is needed and where to keep it.
fn refused(lb: &Lifeboat, args: &[&str]) {
    let err = assert_fails(&run_write_only(lb, args), WRONG_KEY, args);
    assert!(
        err.contains("needs a full key") && err.contains("this key is write-only"),
        "{args:?}: {err}"
    );
}

fn source(lb: &Lifeboat) -> PathBuf {
    let src = lb.path("src");
    write(src.join("a.txt"), b"alpha\n");
    write(src.join("dir/b.txt"), common::random_bytes(300_000, 7));
    src
}

fn restore_full(lb: &Lifeboat, snapshot: &str, src: &Path, target: &str) {
    let target = lb.path(target);
    lb.ok(["restore", snapshot, "--target", target.to_str().unwrap()]);
    assert_same_tree(src, &restored(&target, src));
}

#[test]
fn a_write_only_key_backs_up_from_the_cli_and_reads_nothing() {
    let lb = Lifeboat::new();
    init_with_write_only_key(&lb);
    let src = source(&lb);
    // A full-key snapshot first: the write-only host must not read it.
    let first = lb.backup(&[&src], &[])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    write(src.join("c.txt"), b"gamma, written by the backup host\n");
    let args = ["backup", src.to_str().unwrap(), "--json"];
    let out = run_write_only(&lb, &args);
    assert_ok(&out, args);
    let summary = parse_json(&out);
    let written = summary["snapshot"].as_str().unwrap().to_string();
    assert_eq!(summary["summary"]["files_new"], 3, "{summary}");

    for args in [
        vec!["snapshots"],
        vec!["snapshots", "--json"],
        vec!["ls", "latest"],
        vec!["ls", &written[..8]],
        vec!["restore", "latest", "--target", "out"],
        vec!["check"],
        vec!["check", "--read-data"],
        vec!["forget", "--keep-last", "1"],
        vec!["forget", &first[..8]],
    ] {
        refused(&lb, &args);
    }
    assert!(!lb.path("out").exists(), "a refused restore wrote files");

    // Nothing was forgotten, and the full key restores both snapshots,
    // the one the write-only key wrote included.
    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 2);
    assert!(
        snaps.iter().any(|s| s["id"] == written.as_str()),
        "{snaps:?}"
    );
    restore_full(&lb, &written, &src, "restored-written");
    std::fs::remove_file(src.join("c.txt")).unwrap();
    restore_full(&lb, &first, &src, "restored-first");
    lb.ok(["check", "--read-data"]);
}

/// A directory shaped like a PostgreSQL data directory, as far as
/// `pg wal-push` and `wal-fetch` read one: the control file (its first 8
/// bytes are the system identifier) and `pg_wal/archive_status`. No server.
fn fake_pgdata(lb: &Lifeboat) -> PathBuf {
    let d = lb.path("pgdata");
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
    let mut control = 0x5eed_u64.to_ne_bytes().to_vec();
    control.resize(8192, 0);
    std::fs::write(d.join("global/pg_control"), control).unwrap();
    d
}

/// Runs `lifeboat pg ARGS` in the data directory, as archive_command and
/// restore_command do, with `password`.
fn pg_in(lb: &Lifeboat, data: &Path, password: &str, args: &[&str]) -> Output {
    lb.cmd()
        .current_dir(data)
        .env("LIFEBOAT_PASSWORD", password)
        .arg("pg")
        .args(args)
        .output()
        .expect("run lifeboat")
}

/// A PostgreSQL host archiving with a write-only key: `wal-push` stores
/// WAL it can never read back, retries after a kill between the upload
/// and the push marker succeed, a stored file it cannot compare is
/// refused (and stays refused on PostgreSQL's retries) until a full key
/// confirms it, and `wal-fetch` is refused with exit 11.
#[test]
fn a_write_only_key_pushes_wal_and_cannot_fetch_it() {
    let lb = Lifeboat::new();
    init_with_write_only_key(&lb);
    let data = fake_pgdata(&lb);
    let seg = |n: u32| format!("0000000100000000000000{n:02X}");
    let put_segment = |n: u32, seed: u64| {
        let name = seg(n);
        std::fs::write(
            data.join("pg_wal").join(&name),
            common::random_bytes(1 << 20, seed),
        )
        .unwrap();
        std::fs::write(
            data.join(format!("pg_wal/archive_status/{name}.ready")),
            b"",
        )
        .unwrap();
        format!("pg_wal/{name}")
    };
    let push_ok = |password: &str, p: &str| {
        let out = pg_in(&lb, &data, password, &["wal-push", p]);
        assert_ok(&out, ("wal-push", p, password));
    };
    let push_refused = |p: &str| {
        let out = pg_in(&lb, &data, WRITE_ONLY_PW, &["wal-push", p]);
        let err = assert_fails(&out, 14, ("wal-push", p));
        assert!(
            err.contains("this key is write-only, so it cannot read it back"),
            "{err}"
        );
    };

    let first = put_segment(0x10, 1);
    push_ok(WRITE_ONLY_PW, &first);
    // PostgreSQL missed the exit status and asks again: the push marker.
    push_ok(WRITE_ONLY_PW, &first);
    // Killed after the upload, before the push marker: what is left is
    // the intent marker the push wrote before uploading (same text as a
    // push marker for one repository), and the retry succeeds.
    let spool = data.join("pg_wal/lifeboat");
    std::fs::create_dir_all(spool.join("pushing")).unwrap();
    std::fs::rename(
        spool.join("pushed").join(seg(0x10)),
        spool.join("pushing").join(seg(0x10)),
    )
    .unwrap();
    push_ok(WRITE_ONLY_PW, &first);
    assert!(spool.join("pushed").join(seg(0x10)).exists());
    assert!(!spool.join("pushing").join(seg(0x10)).exists());

    // Every local marker lost: the stored file cannot be compared, so it
    // is refused, again on a retry, until a full key confirms it.
    std::fs::remove_dir_all(&spool).unwrap();
    push_refused(&first);
    push_refused(&first);
    push_ok(&lb.password, &first);
    push_ok(WRITE_ONLY_PW, &first);

    // Another cluster's file of the same name (different content) stays
    // refused: the write-only host never calls it archived.
    let second = put_segment(0x11, 2);
    push_ok(&lb.password, &second);
    std::fs::remove_dir_all(&spool).unwrap();
    put_segment(0x11, 3);
    push_refused(&second);
    push_refused(&second);

    // Fetching needs a full key: exit 11 naming it, nothing written.
    let out = pg_in(
        &lb,
        &data,
        WRITE_ONLY_PW,
        &["wal-fetch", &seg(0x10), "pg_wal/RECOVERYXLOG"],
    );
    let err = assert_fails(&out, WRONG_KEY, "wal-fetch");
    assert!(err.contains("needs a full key"), "{err}");
    assert!(!data.join("pg_wal/RECOVERYXLOG").exists());
    // The full key fetches what the write-only key pushed, byte for byte.
    let out = pg_in(
        &lb,
        &data,
        &lb.password,
        &["wal-fetch", &seg(0x10), "pg_wal/RECOVERYXLOG"],
    );
    assert_ok(&out, "wal-fetch");
    assert_eq!(
        std::fs::read(data.join("pg_wal/RECOVERYXLOG")).unwrap(),
        std::fs::read(data.join("pg_wal").join(seg(0x10))).unwrap()
    );
}

/// `pg wal-push` into two repositories in one invocation, the first with
/// a write-only key and the second with a full one (a database host that
/// may read its off-site archive but not the shared one, or the other way
/// round): both hold the segment, a retry after success is accepted in
/// both (from the push marker, and after a kill between the uploads and
/// the marker, from the intent marker and the full key's comparison),
/// with every marker lost the write-only repository refuses and is named,
/// and `wal-fetch` from the full one returns it byte for byte.
#[test]
fn wal_push_into_a_write_only_and_a_full_repository_at_once() {
    let lb = Lifeboat::new();
    init_with_write_only_key(&lb);
    let write_only_pw = lb.path("write-only.pw");
    let off = Lifeboat::init();
    let off_pw = off.path("pw");
    write(&off_pw, off.password.as_bytes());
    let data = fake_pgdata(&lb);
    let name = "000000010000000000000020";
    let content = common::random_bytes(1 << 20, 20);
    write(data.join("pg_wal").join(name), &content);
    write(
        data.join(format!("pg_wal/archive_status/{name}.ready")),
        b"",
    );
    let push_output = || {
        lb.std_bare_cmd()
            .current_dir(&data)
            .arg("-r")
            .arg(&lb.repo)
            .arg("--password-file")
            .arg(&write_only_pw)
            .arg("-r")
            .arg(&off.repo)
            .arg("--password-file")
            .arg(&off_pw)
            .args(["pg", "wal-push", &format!("pg_wal/{name}")])
            .output()
            .unwrap()
    };
    let push = || assert_ok(&push_output(), "wal-push into both");
    let fetch = |env: &Lifeboat, dest: &str| {
        let out = env
            .cmd()
            .current_dir(&data)
            .args(["pg", "wal-fetch", name, &format!("pg_wal/{dest}")])
            .output()
            .unwrap();
        assert_ok(&out, ("wal-fetch", dest));
        std::fs::read(data.join("pg_wal").join(dest)).unwrap()
    };

    push();
    // PostgreSQL asks again: the push marker for the pair answers.
    push();
    // Killed after both uploads, before the push marker: the intent marker
    // (the content's hash, the marker's first word) is what is left.
    let spool = data.join("pg_wal/lifeboat");
    let marker = std::fs::read_to_string(spool.join("pushed").join(name)).unwrap();
    std::fs::remove_file(spool.join("pushed").join(name)).unwrap();
    write(
        spool.join("pushing").join(name),
        marker.split_whitespace().next().unwrap().as_bytes(),
    );
    push();
    assert!(spool.join("pushed").join(name).exists());
    assert!(!spool.join("pushing").join(name).exists());
    // Every marker lost: the full key compares and accepts, the write-only
    // key cannot, and the error names its repository (as with one, §12).
    std::fs::remove_dir_all(&spool).unwrap();
    let err = assert_fails(&push_output(), 14, "wal-push without markers");
    assert!(
        err.contains(&format!("into repository {}", lb.repo.display()))
            && err.contains("this key is write-only, so it cannot read it back"),
        "{err}"
    );

    // Both repositories hold it: the off-site one's full key fetches it,
    // and so does the first repository's full key.
    assert_eq!(fetch(&off, "FROM_OFFSITE"), content);
    assert_eq!(fetch(&lb, "FROM_FIRST"), content);
}
