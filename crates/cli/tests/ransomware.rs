//! Ransomware detection at backup time, through the real binary: a tree
//! 30% of which a script encrypts (AES-256-CTR with openssl, new
//! extensions) makes the next backup exit 20, tagged `suspect`, with the
//! snapshot before it protected; ordinary churn (edits, additions,
//! deletions, renames, and a mass rewrite of old files as a source tree
//! moved to a new release) does not.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Lifeboat, stderr};

/// `n` text files of a few KiB, compressible, each different.
fn text_tree(dir: &Path, n: usize) {
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 5));
        fs::create_dir_all(&sub).unwrap();
        let line = format!("line of file {i}: the quick brown fox jumps over the lazy dog\n");
        fs::write(sub.join(format!("f{i:03}.txt")), line.repeat(60 + i)).unwrap();
    }
}

fn set_old_mtimes(dir: &Path) {
    let old = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    for e in walk(dir) {
        filetime::set_file_mtime(&e, old).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn an_encrypted_tree_makes_the_backup_suspect_and_protects_the_one_before() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    text_tree(&src, 100);
    set_old_mtimes(&src);
    let before = lb.backup(&[&src], &[])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/encrypt-like-ransomware");
    let out = Command::new(&script).arg(&src).arg("30").output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let out = lb.run(["backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(20), "{}", common::describe(&out));
    let err = stderr(&out);
    assert!(err.contains("ransomware"), "{err}");
    assert!(
        err.contains("30 files (30%) that compressed before no longer compress"),
        "{err}"
    );
    assert!(err.contains("renamed with a new extension"), "{err}");

    // The backup is kept (it may be the only copy of the current state),
    // tagged; the one before is protected.
    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[1]["tags"], serde_json::json!(["suspect"]));
    let protected = lb.json(["protect", "--list"]);
    assert_eq!(protected[0]["snapshot"], before.as_str());
    // forget cannot remove it while protected.
    lb.ok(["forget", "--keep-last", "1"]);
    assert_eq!(lb.snapshots().len(), 2);
    let log = lb.json(["audit", "log", "--op", "tag"]);
    assert_eq!(log[0]["args"]["tag"], "suspect");
}

#[test]
fn ordinary_churn_and_a_release_upgrade_do_not_trigger() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    text_tree(&src, 100);
    set_old_mtimes(&src);
    lb.backup(&[&src], &[]);

    // A day of work: edits, new files, deletions, a few renames.
    let files = walk(&src);
    for f in files.iter().take(20) {
        let mut t = fs::read_to_string(f).unwrap();
        t.push_str("an edit\n");
        fs::write(f, t).unwrap();
    }
    for f in files.iter().skip(20).take(5) {
        fs::remove_file(f).unwrap();
    }
    for f in files.iter().skip(25).take(5) {
        fs::rename(f, f.with_extension("md")).unwrap();
    }
    text_tree(&src.join("new"), 20);
    let out = lb.run(["backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", common::describe(&out));

    // A source tree moved to a new release: most old files rewritten,
    // still text, under their own names.
    for (i, f) in walk(&src).iter().enumerate().filter(|(i, _)| i % 10 < 7) {
        let t = format!("release 2 of this file {i}, rewritten: lorem ipsum dolor sit amet\n");
        fs::write(f, t.repeat(80)).unwrap();
    }
    let out = lb.run(["backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", common::describe(&out));
    assert!(
        lb.snapshots()
            .iter()
            .all(|s| s["tags"] == serde_json::json!([]))
    );
    assert_eq!(lb.json(["protect", "--list"]), serde_json::json!([]));
}

#[test]
fn no_detect_skips_the_check() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    text_tree(&src, 50);
    lb.backup(&[&src], &[]);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/encrypt-like-ransomware");
    assert!(
        Command::new(&script)
            .arg(&src)
            .arg("50")
            .status()
            .unwrap()
            .success()
    );
    let out = lb.run(["backup", "--no-detect", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", common::describe(&out));
}

/// A write-only key's backups have no parent, so no backup checks them;
/// `lifeboat detect`, run with a full key, makes the same check afterwards
/// against the snapshot before of the same source: it finds the
/// encrypted tree, tags the snapshot `suspect`, protects the one before
/// and exits 20, as the backup would have.
#[test]
fn detect_from_a_full_key_finds_an_encrypted_tree_in_a_write_only_backup() {
    const WRITE_ONLY_PW: &str = "backup host's write-only password";
    let lb = Lifeboat::new();
    common::init_with_write_only_key(&lb, WRITE_ONLY_PW);
    let src = lb.path("src");
    text_tree(&src, 100);
    set_old_mtimes(&src);
    let backup = |lb: &Lifeboat| {
        let args = ["backup", src.to_str().unwrap(), "--json"];
        let out = common::run_with_password(lb, WRITE_ONLY_PW, &args);
        common::assert_ok(&out, args);
        common::parse_json(&out)["snapshot"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = backup(&lb);
    // Ordinary churn between two write-only backups is not suspect.
    fs::write(src.join("d0/f000.txt"), "an edit\n".repeat(40)).unwrap();
    let ordinary = backup(&lb);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/encrypt-like-ransomware");
    let out = Command::new(&script).arg(&src).arg("30").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // The write-only backup cannot compare: it exits 0, untagged.
    let encrypted = backup(&lb);
    assert!(
        lb.snapshots()
            .iter()
            .all(|s| s["tags"] == serde_json::json!([]))
    );

    // The write-only key cannot run the check.
    let out = common::run_with_password(&lb, WRITE_ONLY_PW, &["detect"]);
    let err = common::assert_fails(&out, 11, "detect");
    assert!(err.contains("needs a full key"), "{err}");

    // A dry run reports and changes nothing.
    let out = lb.run(["detect", "--all", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(20), "{}", common::describe(&out));
    let checks = common::parse_json(&out);
    let checks = checks.as_array().unwrap();
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert_eq!(checks[0]["snapshot"], before.as_str());
    assert_eq!(checks[0]["predecessor"], serde_json::Value::Null);
    assert_eq!(checks[1]["predecessor"], before.as_str());
    assert_eq!(checks[1]["detection"]["suspect"], false, "{checks:?}");
    assert_eq!(checks[2]["snapshot"], encrypted.as_str());
    assert_eq!(checks[2]["predecessor"], ordinary.as_str());
    let d = &checks[2]["detection"];
    assert_eq!(d["suspect"], true, "{d}");
    assert_eq!(d["became_incompressible"], 30, "{d}");
    assert_eq!(d["renamed_new_extension"], 30, "{d}");
    assert_eq!(checks[2]["tagged"], serde_json::Value::Null);
    assert!(
        lb.snapshots()
            .iter()
            .all(|s| s["tags"] == serde_json::json!([]))
    );
    assert_eq!(lb.json(["protect", "--list"]), serde_json::json!([]));

    // For real, on the newest snapshot of each source (the default).
    let out = lb.run(["detect"]);
    assert_eq!(out.status.code(), Some(20), "{}", common::describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("30 files (30%) that compressed before no longer compress"),
        "{err}"
    );
    assert!(err.contains("tagged `suspect`"), "{err}");
    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 3);
    assert_eq!(snaps[2]["tags"], serde_json::json!(["suspect"]));
    let protected = lb.json(["protect", "--list"]);
    assert_eq!(protected.as_array().unwrap().len(), 1, "{protected}");
    assert_eq!(protected[0]["snapshot"], ordinary.as_str());
    let log = lb.json(["audit", "log", "--op", "tag"]);
    assert_eq!(log[0]["args"]["tag"], "suspect");

    // Again: reported as already suspect, nothing tagged or protected twice.
    let out = lb.run(["detect", "--json"]);
    assert_eq!(out.status.code(), Some(20), "{}", common::describe(&out));
    let again = common::parse_json(&out);
    assert_eq!(again[0]["already_suspect"], true, "{again}");
    assert_eq!(again[0]["tagged"], serde_json::Value::Null);
    assert_eq!(lb.json(["protect", "--list"]).as_array().unwrap().len(), 1);
}
