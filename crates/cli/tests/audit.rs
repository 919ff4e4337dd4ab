//! `lifeboat audit`, `protect` and `unprotect` through the real binary:
//! every mutating command leaves a record, `audit verify` catches a removed
//! record and a truncated log (locally and through a copy target), `audit
//! deleted` says what went, and protected snapshots survive `forget`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Lifeboat, stdout};

fn write(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// Audit objects of a local repository, sorted by name (height first).
fn audit_files(repo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(repo.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn ops(lb: &Lifeboat) -> Vec<String> {
    lb.json(["audit", "log"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap().to_string())
        .collect()
}

/// Three backups of a source that loses a file each time.
fn three_backups(lb: &Lifeboat) -> (PathBuf, Vec<String>) {
    let src = lb.path("src");
    for f in ["a.txt", "b.txt", "c.txt"] {
        write(&src.join(f), f);
    }
    let mut ids = Vec::new();
    for gone in ["", "c.txt", "b.txt"] {
        if !gone.is_empty() {
            fs::remove_file(src.join(gone)).unwrap();
        }
        let s = lb.backup(&[&src], &[]);
        ids.push(s["snapshot"].as_str().unwrap().to_string());
    }
    (src, ids)
}

#[test]
fn mutating_commands_are_logged_and_the_log_verifies() {
    let lb = Lifeboat::init();
    let (_src, ids) = three_backups(&lb);
    let pw = lb.path("new.pw");
    fs::write(&pw, "second password").unwrap();
    lb.ok(["key", "add", "--new-password-file", pw.to_str().unwrap()]);
    lb.ok(["protect", &ids[0], "--until", "30d"]);
    lb.ok(["unprotect", &ids[0]]);
    lb.ok(["forget", "--keep-last", "2"]);
    lb.ok(["prune"]);
    lb.ok(["repair", "index"]);
    let target = Lifeboat::init();
    // Both environments share the test password, so copy's source opens
    // with the main one.
    target.ok(["copy", "--from", lb.repo.to_str().unwrap()]);
    assert_eq!(
        ops(&lb),
        [
            "init",
            "backup",
            "backup",
            "backup",
            "key-add",
            "protect",
            "unprotect",
            "forget",
            "prune",
            "repair-index"
        ]
    );
    assert_eq!(ops(&target), ["init", "copy"]);
    let log = lb.json(["audit", "log", "--op", "forget"]);
    let forget = &log[0];
    assert_eq!(forget["snapshots"][0], ids[0].as_str());
    assert_eq!(forget["user"], "tester");
    assert_eq!(forget["args"]["policy"]["keep_last"], 2);
    let out = lb.ok(["audit", "verify"]);
    assert!(stdout(&out).contains("10 records"), "{}", stdout(&out));
    assert!(stdout(&out).contains("no errors"), "{}", stdout(&out));
    let text = stdout(&lb.ok(["audit", "log", "--since", "1d"]));
    assert!(
        text.contains("forget") && text.contains("keep_last"),
        "{text}"
    );
}

#[test]
fn audit_deleted_names_forgotten_snapshots_and_vanished_paths() {
    let lb = Lifeboat::init();
    let (src, ids) = three_backups(&lb);
    lb.ok(["forget", "--keep-last", "2"]);
    let text = stdout(&lb.ok(["audit", "deleted"]));
    assert!(text.contains("forget by tester@"), "{text}");
    assert!(
        text.contains(&format!("forgotten {}", &ids[0][..8])),
        "{text}"
    );
    // Between the two remaining snapshots, b.txt went.
    let b = format!("- {}", src.join("b.txt").display());
    assert!(text.contains(&b), "{text}");
    let json = lb.json(["audit", "deleted"]);
    assert_eq!(json["records"][0]["forgotten"][0]["id"], ids[0].as_str());
    assert_eq!(
        json["disappeared"][0]["removed"][0]["path"],
        src.join("b.txt").to_str().unwrap()
    );
}

#[test]
fn a_removed_record_fails_verify_with_exit_14() {
    let lb = Lifeboat::init();
    three_backups(&lb);
    let files = audit_files(&lb.repo);
    fs::remove_file(&files[1]).unwrap();
    let out = lb.run(["audit", "verify"]);
    assert_eq!(out.status.code(), Some(14), "{}", common::describe(&out));
    assert!(
        stdout(&out).contains("a record was deleted"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_truncated_log_is_caught_by_the_local_witness_and_by_a_copy_target() {
    let lb = Lifeboat::init();
    let (src, _) = three_backups(&lb);
    let target = Lifeboat::init();
    let copy = ["copy", "--from", lb.repo.to_str().unwrap()];
    target.ok(copy);
    write(&src.join("d.txt"), "d");
    lb.backup(&[&src], &[]);
    target.ok(copy);
    // The attacker removes the newest record (the last backup's).
    let files = audit_files(&lb.repo);
    fs::remove_file(files.last().unwrap()).unwrap();

    let out = lb.run(["audit", "verify"]);
    assert_eq!(out.status.code(), Some(14), "{}", common::describe(&out));
    assert!(stdout(&out).contains("truncated"), "{}", stdout(&out));

    // Another machine (no witness of its own) sees a valid log...
    let elsewhere = Lifeboat::new().with_repo(lb.repo.clone(), &lb.password);
    elsewhere.ok(["audit", "verify"]);
    // ...until it compares with the copy target.
    let out = elsewhere.run([
        "audit",
        "verify",
        "--against",
        target.repo.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(14), "{}", common::describe(&out));
    assert!(stdout(&out).contains("copy target"), "{}", stdout(&out));
}

#[test]
fn protected_snapshots_survive_forget_and_dry_runs_say_so() {
    let lb = Lifeboat::init();
    let (_src, ids) = three_backups(&lb);
    lb.ok(["protect", &ids[0], "--until", "2099-01-01"]);
    let list = lb.json(["protect", "--list"]);
    assert_eq!(list[0]["snapshot"], ids[0].as_str());

    let dry = stdout(&lb.ok(["forget", "--keep-last", "1", "--dry-run"]));
    assert!(
        dry.contains(&format!("keep    {}", &ids[0][..8]))
            && dry.contains("protected until 2099-01-01"),
        "{dry}"
    );
    lb.ok(["forget", "--keep-last", "1"]);
    let left: Vec<String> = lb
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [ids[0].clone(), ids[2].clone()]);
    let prune = stdout(&lb.ok(["prune", "--dry-run"]));
    assert!(prune.contains("1 protected snapshots"), "{prune}");

    lb.ok(["unprotect", &ids[0]]);
    lb.ok(["forget", "--keep-last", "1"]);
    assert_eq!(lb.snapshots().len(), 1);
    let text = stdout(&lb.ok(["audit", "deleted"]));
    assert!(text.contains("unprotect by tester@"), "{text}");
}
