//! Golden fixture: a format-v1 repository written once by an early binary
//! (tests/fixtures/repo-v1, see tests/fixtures/README.md) must stay
//! readable by every later binary, byte for byte. Each test works on a
//! private copy; the fixture itself is never written to.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const GOLDEN_PASSWORD: &str = "golden";
/// The directory that was backed up when the fixture was made.
const GOLDEN_SOURCE: &str = "/tmp/lifeboat-golden/src";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A private copy of the v1 fixture, opened with its password.
fn golden() -> Lifeboat {
    let lb = Lifeboat::new();
    let repo = lb.path("repo-v1");
    copy_tree(&fixtures().join("repo-v1"), &repo);
    lb.with_repo(repo, GOLDEN_PASSWORD)
}

fn expected() -> Value {
    let text = fs::read_to_string(fixtures().join("repo-v1.expected/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn expected_ids() -> Vec<String> {
    expected()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The fields of `snapshots --json` the fixture pins down.
fn snapshot_projection(snaps: &Value) -> Value {
    let rows = snaps.as_array().unwrap().iter().map(|s| {
        serde_json::json!({
            "id": s["id"], "host": s["host"], "tags": s["tags"], "paths": s["paths"],
            "mode": s["mode"], "parent": s["parent"], "partial": s["partial"],
        })
    });
    Value::Array(rows.collect())
}

/// The fields of `ls --json` the fixture pins down.
fn ls_projection(entries: &Value) -> Value {
    let rows = entries.as_array().unwrap().iter().map(|e| {
        serde_json::json!({
            "path": e["path"], "kind": e["kind"], "size": e["size"], "mode": e["mode"],
            "mtime": e["mtime"], "link_target": e.get("link_target").cloned().unwrap_or(Value::Null),
        })
    });
    Value::Array(rows.collect())
}

#[test]
fn golden_v1_lists_its_two_snapshots() {
    let lb = golden();
    let snaps = lb.json(["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps:#}");
    assert_eq!(snapshot_projection(&snaps), expected()["snapshots"]);
    let human = stdout(&lb.ok(["snapshots"]));
    assert!(human.contains("2 snapshots"), "{human}");
}

#[test]
fn golden_v1_check_read_data_passes() {
    let lb = golden();
    let report = lb.json(["check", "--read-data"]);
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["snapshots"], 2);
    assert!(report["packs_read"].as_u64().unwrap() >= 1);
    assert_eq!(report["packs_read"], report["packs"]);
    let text = stdout(&lb.ok(["check", "--read-data"]));
    assert!(text.contains("no errors found"), "{text}");
}

#[test]
fn golden_v1_ls_metadata_is_stable() {
    let lb = golden();
    let want = expected();
    for id in expected_ids() {
        let entries = lb.json(["ls", &id, GOLDEN_SOURCE]);
        assert_eq!(
            ls_projection(&entries),
            want["ls"][&id],
            "ls of snapshot {id}"
        );
    }
}

#[test]
fn golden_v1_restores_each_snapshot() {
    let lb = golden();
    let want = expected();
    for (n, id) in expected_ids().iter().enumerate() {
        let target = lb.restore_into(&id[..8], &format!("target-{n}"), &[]);
        let root = restored(&target, Path::new(GOLDEN_SOURCE));
        let expected_tree = fixtures().join(format!("repo-v1.expected/snapshot-{}", n + 1));
        assert_same_tree(&expected_tree, &root);

        // Metadata comes back as recorded: permission bits and mtimes.
        for e in want["ls"][id].as_array().unwrap() {
            let path = e["path"].as_str().unwrap();
            let local = restored(&target, Path::new(path));
            let meta = fs::symlink_metadata(&local)
                .unwrap_or_else(|err| panic!("{}: {err}", local.display()));
            if e["kind"] == "symlink" {
                assert!(meta.file_type().is_symlink(), "{path}");
                continue;
            }
            assert_eq!(
                u64::from(meta.mode() & 0o7777),
                e["mode"].as_u64().unwrap(),
                "mode of {path}"
            );
            let mtime: jiff::Timestamp = e["mtime"].as_str().unwrap().parse().unwrap();
            assert_eq!(meta.mtime(), mtime.as_second(), "mtime of {path}");
        }
    }
}

#[test]
fn golden_v1_dump_diff_and_find() {
    let lb = golden();
    let ids = expected_ids();
    let hello = format!("{GOLDEN_SOURCE}/hello.txt");
    assert_eq!(stdout(&lb.ok(["dump", &ids[0], &hello])), "hello golden\n");
    assert_eq!(
        stdout(&lb.ok(["dump", "latest", &hello])),
        "hello again, golden\n"
    );
    let blob = lb
        .ok(["dump", "latest", &format!("{GOLDEN_SOURCE}/data/blob.bin")])
        .stdout;
    assert_eq!(
        blob,
        fs::read(fixtures().join("repo-v1.expected/snapshot-2/data/blob.bin")).unwrap()
    );

    let diff = lb.json(["diff", &ids[0], &ids[1]]);
    let t = &diff["totals"];
    assert_eq!(
        (t["added"].as_u64(), t["removed"].as_u64()),
        (Some(1), Some(1)),
        "{diff:#}"
    );
    let found = lb.json(["find", "new.txt"]);
    assert_eq!(found[0]["events"][0]["change"], "appeared");
    assert_eq!(
        found[0]["events"][0]["snapshot"].as_str(),
        Some(ids[1].as_str())
    );
}

#[test]
fn golden_v1_reading_never_writes_and_new_backups_append() {
    let lb = golden();
    lb.json(["snapshots"]);
    lb.json(["check", "--read-data"]);
    lb.json(["stats"]);
    lb.json(["key", "list"]);
    lb.restore_into("latest", "target", &[]);
    assert_same_tree(&fixtures().join("repo-v1"), &lb.repo);

    // Today's binary can add to a v1 repository, and the old snapshots stay.
    let src = lb.path("src");
    write(src.join("today.txt"), "written by a newer binary\n");
    lb.backup(&[&src], &[]);
    let snaps = lb.json(["snapshots"]);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 3);
    let old: Vec<&str> = snaps[..2]
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(old, expected_ids());
    lb.json(["check", "--read-data"]);
    assert_eq!(
        &fs::read(lb.repo.join("config")).unwrap()[..12],
        b"LIFEBOAT\x01\x00\x00\x00",
        "still v1"
    );
}

#[test]
fn golden_v1_with_a_newer_version_byte_is_refused() {
    let lb = golden();
    let config = lb.repo.join("config");
    let mut bytes = fs::read(&config).unwrap();
    assert_eq!(&bytes[..12], b"LIFEBOAT\x01\x00\x00\x00");
    // 2 is the cold-tier version, 3 the object-lock one and 4 the
    // write-only-keys one this build reads; 5 is beyond it.
    bytes[8] = 5;
    fs::write(&config, bytes).unwrap();
    for args in [
        vec!["snapshots"],
        vec!["check", "--read-data"],
        vec!["restore", "latest", "--target", "t"],
    ] {
        let err = lb.fail(&args, 15);
        assert!(err.contains("upgrade"), "{err}");
    }
    assert!(
        !lb.path("t").exists(),
        "nothing restored from a refused repository"
    );
}
