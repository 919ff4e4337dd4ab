//! Path edges where tar, rsync and restic users expect one thing and a
//! backup tool can silently do another: relative excludes with a `/`, an
//! `--include` of a path the snapshot lacks, a symlink to a directory named
//! with a trailing slash, and a mode-000 directory restored by its owner.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const NOT_FOUND: i32 = 16;

fn names(lb: &Lifeboat) -> Vec<String> {
    let ls = lb.json(["ls", "latest"]);
    ls.as_array()
        .unwrap_or_else(|| ls["entries"].as_array().expect("ls entries"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn regression_relative_exclude_with_a_slash_excluded_nothing() {
    let lb = Lifeboat::init();
    let src = lb.path("proj");
    write(src.join("keep.txt"), "k\n");
    write(src.join("build/cache/big.o"), "o\n");
    write(src.join("other/cache/x.txt"), "x\n");
    lb.backup(&[&src], &["-e", "build/cache"]);
    let paths = names(&lb);
    assert!(paths.iter().any(|p| p.ends_with("/keep.txt")), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.ends_with("/other/cache/x.txt")),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.contains("/build/cache")),
        "build/cache must be excluded: {paths:?}"
    );
}

#[test]
fn regression_restore_include_of_a_missing_path_exited_0() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    lb.backup(&[&src], &[]);
    let target = lb.path("t");
    let missing = format!("{}/no-such-file", src.display());
    let err = lb.fail(
        [
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--include",
            &missing,
        ],
        NOT_FOUND,
    );
    assert!(err.contains("no-such-file"), "{err}");
    // A glob matching nothing says so too.
    let err = lb.fail(
        [
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--include",
            "*.nothing",
        ],
        NOT_FOUND,
    );
    assert!(err.contains("matches"), "{err}");
    // An include that exists restores.
    lb.ok([
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        &format!("{}/a.txt", src.display()),
    ]);
}

#[test]
fn regression_backup_of_link_to_dir_with_a_trailing_slash_stored_only_the_link() {
    let lb = Lifeboat::init();
    let real = lb.path("real");
    write(real.join("inside.txt"), "inside\n");
    let link = lb.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let arg = format!("{}/", link.display());
    lb.backup(&[Path::new(&arg)], &[]);
    let paths = names(&lb);
    assert!(
        paths.iter().any(|p| p.ends_with("/inside.txt")),
        "the directory's content is stored: {paths:?}"
    );
    // Without the slash the link itself is stored, as tar does.
    lb.backup(&[&link], &[]);
    let ls = lb.json(["ls", "latest"]);
    let text = ls.to_string();
    assert!(!text.contains("inside.txt"), "{text}");
}

#[test]
fn regression_mode_000_directory_restored_by_its_owner_reported_is_a_directory() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("locked/f.txt"), "f\n");
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    lb.backup(&[&src], &[]);
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Restore as a non-root user (nobody, via runuser, when the test runs
    // as root), so the restore runs into the mode it sets.
    let root = nix::unistd::geteuid().is_root();
    let shared = tempfile::Builder::new()
        .prefix("lb-nonroot-")
        .tempdir()
        .unwrap();
    let bin = shared.path().join("lifeboat");
    std::fs::copy(assert_cmd::cargo::cargo_bin("lifeboat"), &bin).unwrap();
    let repo = shared.path().join("repo");
    copy_tree(&lb.repo, &repo);
    let target = shared.path().join("target");
    if root {
        let st = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(shared.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .env_clear()
        .env("HOME", shared.path())
        .env("LIFEBOAT_PASSWORD", &lb.password)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("-r")
        .arg(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_ok(&out, "restore as non-root");
    assert!(
        !stderr(&out).contains("Is a directory"),
        "{}",
        describe(&out)
    );
    let locked = target.join(src.strip_prefix("/").unwrap()).join("locked");
    let mode = std::fs::symlink_metadata(&locked)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o000, "the mode is restored");
    // Let the temp dir be removed.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}
