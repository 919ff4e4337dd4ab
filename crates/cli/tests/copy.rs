//! `lifeboat copy` and `init --copy-chunker-params-from` through the real
//! binary: between two local repositories and from a local repository to a
//! real S3 server (s3s-fs).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lifeboat_repo::{BlobType, Repository};
use lifeboat_storage::{Location, open_location};
use lifeboat_testkit::cmd::run_ok;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::fs::{assert_same_tree, restored};
use lifeboat_testkit::services::S3Server;

const PW_A: &str = "source password";
const PW_B: &str = "target password";

/// The binary with the target's password as the main one and the source's
/// as LIFEBOAT_FROM_PASSWORD.
fn lifeboat(env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    cmd.env("LIFEBOAT_PASSWORD", PW_B)
        .env("LIFEBOAT_FROM_PASSWORD", PW_A)
        .env("LIFEBOAT_INSECURE_TEST_KDF", "1")
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .env_remove("LIFEBOAT_PASSWORD_COMMAND")
        .env_remove("LIFEBOAT_FROM_PASSWORD_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Commands on the source repository, opened with its own password.
fn on_source(repo: &Path) -> Command {
    let mut cmd = lifeboat(&[]);
    cmd.env("LIFEBOAT_PASSWORD", PW_A).arg("-r").arg(repo);
    cmd
}

fn json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_str(&run_ok(cmd.arg("--json"))).unwrap()
}

fn make_source(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello copy\n").unwrap();
    std::fs::write(dir.join("sub/big.bin"), pseudo_random(6_000_000, 7)).unwrap();
    std::fs::write(dir.join("sub/deeper/text.txt"), "line\n".repeat(50_000)).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("link")).unwrap();
}

/// Restores `latest` from the target and compares it with `src`.
fn assert_latest_restores(target_repo: &str, env: &[(&'static str, String)], src: &Path) {
    let out = tempfile::tempdir().unwrap();
    run_ok(
        lifeboat(env)
            .args(["-r", target_repo, "restore", "latest", "--target"])
            .arg(out.path()),
    );
    assert_same_tree(src, &restored(out.path(), src));
}

/// Sorted plaintext sizes of a repository's data blobs.
fn data_blob_sizes(repo: &Path, password: &str) -> Vec<u32> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = open_location(&Location::Local(repo.to_path_buf()))
            .await
            .unwrap();
        let repo = Arc::new(
            Repository::open(storage, password.as_bytes())
                .await
                .unwrap(),
        );
        let index = repo.index().await.unwrap();
        let mut v: Vec<u32> = index
            .blobs()
            .filter(|l| l.entry.blob_type == BlobType::Data)
            .map(|l| l.entry.raw_length)
            .collect();
        v.sort();
        v
    })
}

#[test]
fn copy_between_local_repositories_is_idempotent_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let src = dir.path().join("src");
    make_source(&src);
    run_ok(on_source(&a).arg("init"));
    run_ok(on_source(&a).arg("backup").arg(&src));

    // b chunks like a; c (a fresh seed) does not.
    run_ok(
        lifeboat(&[])
            .arg("-r")
            .arg(&b)
            .arg("init")
            .arg("--copy-chunker-params-from")
            .arg(&a),
    );
    run_ok(lifeboat(&[]).arg("-r").arg(&c).arg("init"));
    run_ok(lifeboat(&[]).arg("-r").arg(&b).arg("backup").arg(&src));
    run_ok(lifeboat(&[]).arg("-r").arg(&c).arg("backup").arg(&src));
    let (sa, sb, sc) = (
        data_blob_sizes(&a, PW_A),
        data_blob_sizes(&b, PW_B),
        data_blob_sizes(&c, PW_B),
    );
    assert!(sa.len() >= 3, "{sa:?}");
    assert_eq!(sa, sb, "same chunker parameters, same chunk boundaries");
    assert_ne!(sa, sc, "another seed cuts elsewhere");

    // b already holds every data blob: the copy adds only trees.
    let stats = json(
        lifeboat(&[])
            .arg("copy")
            .arg("--from")
            .arg(&a)
            .arg("--to")
            .arg(&b),
    );
    assert_eq!(stats["snapshots_copied"], 1, "{stats}");
    // (Ancestor directories changed since, so a few trees are new.)
    assert!(
        stats["added_raw_bytes"].as_u64().unwrap() < 10_000,
        "{stats}"
    );
    let snaps = json(lifeboat(&[]).arg("-r").arg(&b).arg("snapshots"));
    assert_eq!(snaps.as_array().unwrap().len(), 2);

    // Into the differently chunked c, by -r; then restore from it.
    std::fs::write(src.join("hello.txt"), b"second version\n").unwrap();
    run_ok(on_source(&a).arg("backup").arg(&src));
    let stats = json(
        lifeboat(&[])
            .arg("-r")
            .arg(&c)
            .arg("copy")
            .arg("--from")
            .arg(&a),
    );
    assert_eq!(stats["snapshots_copied"], 2, "{stats}");
    assert!(stats["blobs_added"].as_u64().unwrap() > 3, "{stats}");
    assert_latest_restores(c.to_str().unwrap(), &[], &src);
    run_ok(
        lifeboat(&[])
            .arg("-r")
            .arg(&c)
            .args(["check", "--read-data"]),
    );

    let again = json(
        lifeboat(&[])
            .arg("-r")
            .arg(&c)
            .arg("copy")
            .arg("--from")
            .arg(&a),
    );
    assert_eq!(again["snapshots_copied"], 0, "{again}");
    assert_eq!(again["snapshots_skipped"], 2, "{again}");
    assert_eq!(again["blobs_read"], 0, "{again}");

    // Human output names the copies.
    let text = run_ok(
        lifeboat(&[])
            .arg("-r")
            .arg(&b)
            .arg("copy")
            .arg("--from")
            .arg(&a)
            .arg("latest"),
    );
    assert!(text.contains("1 snapshots copied"), "{text}");
}

#[test]
fn copy_with_a_wrong_source_password_fails_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(on_source(&a).arg("init"));
    run_ok(lifeboat(&[]).arg("-r").arg(&b).arg("init"));
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "not it\n").unwrap();
    let out = lifeboat(&[])
        .arg("-r")
        .arg(&b)
        .arg("copy")
        .arg("--from")
        .arg(&a)
        .arg("--from-password-file")
        .arg(&pw_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("source repository"));
}

#[test]
fn copy_from_local_to_s3() {
    let Some(s3) = S3Server::start() else { return };
    let env = s3.env();
    let remote = s3.location_url_for("copy-target");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let src = dir.path().join("src");
    make_source(&src);
    run_ok(on_source(&a).arg("init"));
    run_ok(on_source(&a).arg("backup").arg(&src));
    run_ok(
        lifeboat(&env)
            .args(["-r", &remote, "init", "--copy-chunker-params-from"])
            .arg(&a),
    );
    let stats = json(
        lifeboat(&env)
            .args(["copy", "--to", &remote, "--from"])
            .arg(&a),
    );
    assert_eq!(stats["snapshots_copied"], 1, "{stats}");
    assert_latest_restores(&remote, &env, &src);
    run_ok(lifeboat(&env).args(["-r", &remote, "check", "--read-data"]));
    let again = json(
        lifeboat(&env)
            .args(["copy", "--to", &remote, "--from"])
            .arg(&a),
    );
    assert_eq!(again["snapshots_copied"], 0, "{again}");
}
