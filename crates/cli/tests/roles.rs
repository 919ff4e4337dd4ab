//! Key roles (issue 16): an append-only key backs up and reads but deletes
//! and rewrites nothing, a read-only key only reads; `forget` counts the
//! snapshots of a key that is not full apart, so fake snapshots from an
//! append-only host cannot push the real ones out of `--keep-last`.
//! Read-only and append-only *storage* credentials (S3 IAM policies,
//! enforced by moto) are in `s3_credentials.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Lifeboat, assert_fails, assert_ok, parse_json, write};

/// Exit code of a command the key's role does not allow (README).
const NOT_ALLOWED: i32 = 21;
const APPEND_PW: &str = "append-only host password";
const READ_PW: &str = "read-only auditor password";

/// A repository with a full key (the test's own) and one key of `role`
/// under `password`; returns the new key's id.
fn add_key(lb: &Lifeboat, role: &str, password: &str) -> String {
    let file = lb.path(&format!("{role}.pw"));
    std::fs::write(&file, password).unwrap();
    let out = lb.json([
        "key",
        "add",
        "--role",
        role,
        "--new-password-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out["role"], role, "{out}");
    out["added"].as_str().unwrap().to_string()
}

/// Runs lifeboat on the test's repository with another password.
fn run_as(lb: &Lifeboat, password: &str, args: &[&str]) -> Output {
    lb.cmd()
        .env("LIFEBOAT_PASSWORD", password)
        .args(args)
        .output()
        .expect("run lifeboat")
}

fn ok_as(lb: &Lifeboat, password: &str, args: &[&str]) -> Output {
    let out = run_as(lb, password, args);
    assert_ok(&out, args);
    out
}

/// A refusal by role: exit 21, one error line naming the role and saying
/// what to use instead.
fn refused_as(lb: &Lifeboat, password: &str, role: &str, args: &[&str]) {
    let err = assert_fails(&run_as(lb, password, args), NOT_ALLOWED, args);
    assert!(
        err.contains(&format!("is {role}: it cannot")) && err.contains("full role"),
        "{args:?}: {err}"
    );
}

fn source(lb: &Lifeboat) -> PathBuf {
    let src = lb.path("src");
    write(src.join("a.txt"), b"alpha\n");
    write(src.join("dir/b.txt"), b"beta\n");
    src
}

fn snapshot_ids(lb: &Lifeboat) -> Vec<String> {
    let mut ids: Vec<String> = lb
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn restore_as(lb: &Lifeboat, password: &str, target: &Path, src: &Path) {
    ok_as(
        lb,
        password,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(restored.join("dir/b.txt")).unwrap(),
        b"beta\n"
    );
}

#[test]
fn an_append_only_key_backs_up_and_restores_but_never_deletes_or_rewrites() {
    let lb = Lifeboat::init();
    let src = source(&lb);
    lb.backup(&[&src], &[]);
    let append = add_key(&lb, "append-only", APPEND_PW);

    let keys = lb.json(["key", "list"]);
    let roles: Vec<(&str, &str)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["role"].as_str().unwrap()))
        .collect();
    assert!(roles.contains(&(append.as_str(), "append-only")), "{keys}");
    assert!(roles.iter().any(|(_, r)| *r == "full"), "{keys}");
    let text = String::from_utf8(lb.ok(["key", "list"]).stdout).unwrap();
    assert!(text.contains(" append-only "), "{text}");

    // Back up, list, restore, check.
    write(src.join("c.txt"), b"gamma\n");
    let out = ok_as(&lb, APPEND_PW, &["backup", src.to_str().unwrap(), "--json"]);
    assert_eq!(
        parse_json(&out)["summary"]["files_new"],
        1,
        "{}",
        common::describe(&out)
    );
    ok_as(&lb, APPEND_PW, &["snapshots"]);
    restore_as(&lb, APPEND_PW, &lb.path("restored"), &src);
    ok_as(&lb, APPEND_PW, &["check", "--read-data"]);

    // Nothing that deletes or rewrites.
    let before = snapshot_ids(&lb);
    let first = before[0].clone();
    let full_key = roles
        .iter()
        .find(|(_, r)| *r == "full")
        .map(|(id, _)| id.to_string())
        .unwrap();
    let pw_file = lb.path("another.pw");
    std::fs::write(&pw_file, "another").unwrap();
    let pw_file = pw_file.to_str().unwrap();
    for args in [
        vec!["forget", "--keep-last", "1"],
        vec!["forget", &first],
        vec!["prune"],
        vec!["key", "remove", &full_key],
        vec!["key", "add", "--new-password-file", pw_file],
        vec!["key", "passwd", "--new-password-file", pw_file],
        vec!["tag", "latest", "--add", "x"],
        vec!["protect", "latest", "--until", "2099-01-01T00:00:00Z"],
        vec!["unprotect", "latest"],
        vec!["unlock"],
        vec!["repair", "index"],
    ] {
        refused_as(&lb, APPEND_PW, "append-only", &args);
    }
    assert_eq!(
        snapshot_ids(&lb),
        before,
        "an append-only key removed a snapshot"
    );
    assert_eq!(lb.json(["key", "list"]).as_array().unwrap().len(), 2);

    // The full key still does all of it.
    lb.ok(["forget", "--keep-last", "1"]);
    lb.ok(["key", "remove", &append[..8]]);
}

#[test]
fn a_read_only_key_reads_and_checks_but_cannot_back_up() {
    let lb = Lifeboat::init();
    let src = source(&lb);
    lb.backup(&[&src], &[]);
    add_key(&lb, "read-only", READ_PW);

    ok_as(&lb, READ_PW, &["snapshots"]);
    ok_as(&lb, READ_PW, &["ls", "latest"]);
    restore_as(&lb, READ_PW, &lb.path("restored"), &src);
    ok_as(&lb, READ_PW, &["check", "--read-data"]);
    let out = ok_as(&lb, READ_PW, &["key", "list", "--json"]);
    let current: Vec<_> = parse_json(&out)
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .map(|k| k["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(current, ["read-only"]);

    let before = snapshot_ids(&lb);
    refused_as(
        &lb,
        READ_PW,
        "read-only",
        &["backup", src.to_str().unwrap()],
    );
    refused_as(&lb, READ_PW, "read-only", &["forget", "--keep-last", "1"]);
    assert_eq!(snapshot_ids(&lb), before);
}

/// Editing a key file's role (and renaming it to its new hash, so the
/// name check passes) breaks that key rather than promoting it: the role
/// is bound into the wrap's associated data.
#[test]
fn a_key_files_role_cannot_be_edited_to_full() {
    let lb = Lifeboat::init();
    let id = add_key(&lb, "append-only", APPEND_PW);
    let path = lb.repo.join("keys").join(&id);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let promoted = text.replace("\"role\": \"append-only\"", "\"role\": \"full\"");
    // Posing as a version 2 file, which has no role.
    let downgraded = text
        .replace("  \"role\": \"append-only\",\n", "")
        .replace("\"lifeboat_key_version\": 3", "\"lifeboat_key_version\": 2");
    for edited in [promoted, downgraded] {
        assert_ne!(edited, text);
        let name = blake3::hash(edited.as_bytes()).to_hex().to_string();
        let planted = lb.repo.join("keys").join(&name);
        std::fs::write(&planted, &edited).unwrap();
        let out = run_as(&lb, APPEND_PW, &["forget", "--keep-last", "1"]);
        assert_eq!(
            out.status.code(),
            Some(11),
            "the edited key must not open: {}",
            common::describe(&out)
        );
        std::fs::remove_file(&planted).unwrap();
    }
    // The untouched file still opens (and is still append-only).
    std::fs::write(&path, &text).unwrap();
    refused_as(
        &lb,
        APPEND_PW,
        "append-only",
        &["forget", "--keep-last", "1"],
    );
}

/// restic's documented pitfall: an attacker on an append-only host adds
/// fake snapshots of the same source so that `--keep-last N` keeps only
/// fakes. Snapshots of a key that is not full are counted apart.
#[test]
fn fifty_fake_snapshots_from_an_append_only_key_do_not_push_out_the_real_ones() {
    let lb = Lifeboat::init();
    let src = source(&lb);
    for i in 0..3 {
        write(src.join("n.txt"), format!("real {i}\n").as_bytes());
        lb.backup(&[&src], &[]);
    }
    let real = snapshot_ids(&lb);
    add_key(&lb, "append-only", APPEND_PW);
    for i in 0..50 {
        write(src.join("n.txt"), format!("fake {i}\n").as_bytes());
        ok_as(&lb, APPEND_PW, &["backup", "-q", src.to_str().unwrap()]);
    }
    assert_eq!(lb.snapshots().len(), 53);

    let report = lb.json(["forget", "--keep-last", "3"]);
    let left = snapshot_ids(&lb);
    for id in &real {
        assert!(
            left.contains(id),
            "real snapshot {id} was forgotten: {report}"
        );
    }
    // The fakes are a group of their own, named by their key, and lose
    // all but their own newest 3.
    assert_eq!(left.len(), 6, "{report}");
    let groups = report["forget"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{report}");
    assert!(groups.iter().any(|g| g["key"].is_string()), "{report}");
}
