//! `lifeboat backup -r A -r B ...`: one read of the source, one snapshot in
//! each repository, each under its own password; a repository that fails
//! is named, with exit code 18, and the others keep their snapshot.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const PW_B: &str = "the second repository's password";

struct Two {
    lb: Lifeboat,
    b: PathBuf,
    pw_a: PathBuf,
    pw_b: PathBuf,
    src: PathBuf,
}

impl Two {
    fn new() -> Self {
        let lb = Lifeboat::init();
        let b = lb.path("repo-b");
        let pw_a = lb.path("pw-a");
        let pw_b = lb.path("pw-b");
        write(&pw_a, format!("{}\n", lb.password));
        write(&pw_b, format!("{PW_B}\n"));
        let out = lb
            .bare_cmd()
            .arg("-r")
            .arg(&b)
            .arg("--password-file")
            .arg(&pw_b)
            .arg("init")
            .output()
            .unwrap();
        assert_ok(&out, "init b");
        let src = lb.path("src");
        write(src.join("a.txt"), b"alpha");
        write(src.join("dir/big.bin"), random_bytes(3 << 20, 1));
        write(src.join("dir/small.bin"), random_bytes(10_000, 2));
        Two {
            lb,
            b,
            pw_a,
            pw_b,
            src,
        }
    }

    /// `lifeboat -r A -r B --password-file PA --password-file PB ARGS`,
    /// with extra repositories after B.
    fn run(&self, extra_repos: &[&Path], args: &[&str]) -> std::process::Output {
        let mut cmd = self.lb.bare_cmd();
        cmd.arg("-r").arg(&self.lb.repo).arg("-r").arg(&self.b);
        for r in extra_repos {
            cmd.arg("-r").arg(r);
        }
        cmd.arg("--password-file").arg(&self.pw_a);
        cmd.arg("--password-file").arg(&self.pw_b);
        for _ in extra_repos {
            cmd.arg("--password-file").arg(&self.pw_b);
        }
        cmd.args(args).output().unwrap()
    }

    /// Snapshots of repository B, opened with its own password.
    fn b_snapshots(&self) -> Vec<serde_json::Value> {
        let out = self
            .lb
            .bare_cmd()
            .arg("-r")
            .arg(&self.b)
            .env("LIFEBOAT_PASSWORD", PW_B)
            .args(["snapshots", "--json"])
            .output()
            .unwrap();
        parse_json(&out).as_array().unwrap().clone()
    }

    fn restore_b(&self, target: &Path) {
        let out = self
            .lb
            .bare_cmd()
            .arg("-r")
            .arg(&self.b)
            .env("LIFEBOAT_PASSWORD", PW_B)
            .args(["restore", "latest", "--target"])
            .arg(target)
            .output()
            .unwrap();
        assert_ok(&out, "restore b");
    }
}

#[test]
fn backup_to_two_repositories_writes_a_snapshot_in_each() {
    let t = Two::new();
    let src = t.src.to_str().unwrap();
    let out = t.run(&[], &["backup", src, "--json"]);
    assert_ok(&out, "backup -r A -r B");
    let v = parse_json(&out);
    let repos = v["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2);
    for r in repos {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["summary"]["files_new"], 3, "{r}");
    }
    assert_eq!(repos[0]["repository"], t.lb.repo.to_str().unwrap());
    assert_eq!(repos[1]["repository"], t.b.to_str().unwrap());
    // Each repository holds its own snapshot, under its own key.
    let a_snaps = t.lb.snapshots();
    let b_snaps = t.b_snapshots();
    assert_eq!((a_snaps.len(), b_snaps.len()), (1, 1));
    assert_eq!(a_snaps[0]["id"], repos[0]["snapshot"]);
    assert_eq!(b_snaps[0]["id"], repos[1]["snapshot"]);
    assert_ne!(a_snaps[0]["id"], b_snaps[0]["id"]);
    // Both restore to the source.
    let ra = t.lb.path("restore-a");
    t.lb.ok(["restore", "latest", "--target", ra.to_str().unwrap()]);
    assert_eq!(tree(&restored(&ra, &t.src)), tree(&t.src));
    let rb = t.lb.path("restore-b");
    t.restore_b(&rb);
    assert_eq!(tree(&restored(&rb, &t.src)), tree(&t.src));

    // A second run compares each repository with its own parent.
    write(t.src.join("a.txt"), b"alpha, changed");
    let out = t.run(&[], &["backup", src]);
    assert_ok(&out, "second backup");
    let text = stdout(&out);
    assert_eq!(
        text.matches("files: 0 new, 1 changed, 2 unchanged").count(),
        2,
        "{text}"
    );
    assert_eq!(t.b_snapshots().len(), 2);
}

#[test]
fn a_failing_repository_is_named_and_the_others_keep_their_snapshot() {
    let t = Two::new();
    let missing = t.lb.path("no-such-repo");
    let src = t.src.to_str().unwrap();
    let out = t.run(&[&missing], &["backup", src]);
    assert_eq!(out.status.code(), Some(18), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("repository {}:\n  FAILED: ", missing.display())),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("backup failed in 1 of 3 repositories") && err.contains("no-such-repo"),
        "{err}"
    );
    assert_eq!(t.lb.snapshots().len(), 1);
    assert_eq!(t.b_snapshots().len(), 1);

    // JSON says the same, with the failed repository's own exit code.
    let out = t.run(&[&missing], &["backup", src, "--json"]);
    assert_eq!(out.status.code(), Some(18), "{}", describe(&out));
    let v = parse_json(&out);
    let failed = &v["repositories"][2];
    assert_eq!(failed["ok"], false);
    assert_eq!(failed["exit_code"], 10, "no repository there: {failed}");
}

#[test]
fn a_stream_goes_to_every_repository() {
    let t = Two::new();
    let data = random_bytes(2 << 20, 5);
    let mut cmd = t.lb.bare_cmd();
    cmd.arg("-r")
        .arg(&t.lb.repo)
        .arg("-r")
        .arg(&t.b)
        .arg("--password-file")
        .arg(&t.pw_a)
        .arg("--password-file")
        .arg(&t.pw_b)
        .args(["backup", "--stdin", "--stdin-filename", "dump.sql"])
        .write_stdin(data.clone());
    let out = cmd.output().unwrap();
    assert_ok(&out, "backup --stdin to two");
    let a = t.lb.ok(["dump", "latest", "/dump.sql"]).stdout;
    assert_eq!(a, data);
    let out =
        t.lb.bare_cmd()
            .arg("-r")
            .arg(&t.b)
            .env("LIFEBOAT_PASSWORD", PW_B)
            .args(["dump", "latest", "/dump.sql"])
            .output()
            .unwrap();
    assert_ok(&out, "dump b");
    assert_eq!(out.stdout, data);
}

/// A stream of many chunks (stored by the parallel chunk workers, and
/// fanned out to two repositories whose chunkers differ) gives the same
/// content in both; sent again, it is unchanged in both.
#[test]
fn a_stream_of_many_chunks_is_stored_alike_in_every_repository() {
    let t = Two::new();
    let data = random_bytes(24 << 20, 11);
    let backup = || {
        let mut cmd = t.lb.bare_cmd();
        cmd.arg("-r")
            .arg(&t.lb.repo)
            .arg("-r")
            .arg(&t.b)
            .arg("--password-file")
            .arg(&t.pw_a)
            .arg("--password-file")
            .arg(&t.pw_b)
            .args(["--json", "backup", "--stdin", "--stdin-filename", "big.bin"])
            .write_stdin(data.clone());
        let out = cmd.output().unwrap();
        assert_ok(&out, "backup --stdin to two");
        let v = parse_json(&out);
        let repos = v["repositories"].as_array().unwrap().clone();
        assert_eq!(repos.len(), 2, "{v}");
        repos
    };
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    for r in backup() {
        assert_eq!(r["ok"], true, "{r}");
        let s = &r["summary"];
        assert_eq!(n(&s["total_bytes"]), data.len() as u64, "{r}");
        assert_eq!(n(&s["read_bytes"]), data.len() as u64, "{r}");
        assert_eq!(n(&s["files_new"]), 1, "{r}");
        // 24 MiB at a 1 MiB average chunk: many data blobs, plus the tree.
        assert!(n(&s["blobs_added"]) >= 10, "{r}");
    }
    let a = t.lb.ok(["dump", "latest", "/big.bin"]).stdout;
    assert!(a == data, "repository A's dump differs");
    let out =
        t.lb.bare_cmd()
            .arg("-r")
            .arg(&t.b)
            .env("LIFEBOAT_PASSWORD", PW_B)
            .args(["dump", "latest", "/big.bin"])
            .output()
            .unwrap();
    assert_ok(&out, "dump b");
    assert!(out.stdout == data, "repository B's dump differs");
    assert_eq!(t.b_snapshots()[0]["paths"], serde_json::json!(["big.bin"]));
    // The same stream again: unchanged in both, only the one-file tree is
    // new (it records the time of the backup).
    for r in backup() {
        let s = &r["summary"];
        assert_eq!(r["mode"], "incremental", "{r}");
        assert_eq!(n(&s["files_unchanged"]), 1, "{r}");
        assert_eq!(n(&s["blobs_added"]), 1, "{r}");
    }
}

#[test]
fn several_repositories_need_matching_password_files_and_a_backup() {
    let t = Two::new();
    let src = t.src.to_str().unwrap();
    // Two password files for three repositories.
    let out =
        t.lb.bare_cmd()
            .args(["-r", "x", "-r", "y", "-r", "z"])
            .arg("--password-file")
            .arg(&t.pw_a)
            .arg("--password-file")
            .arg(&t.pw_b)
            .args(["backup", src])
            .output()
            .unwrap();
    let err = assert_fails(&out, 2, "mismatched password files");
    assert!(err.contains("2 password files for 3 repositories"), "{err}");
    // Other commands take one repository.
    let out = t.run(&[], &["snapshots"]);
    let err = assert_fails(&out, 2, "snapshots with two repos");
    assert!(err.contains("give -r/--repo once"), "{err}");
    // Nothing was written anywhere.
    assert!(t.lb.snapshots().is_empty());
    assert!(t.b_snapshots().is_empty());
}
