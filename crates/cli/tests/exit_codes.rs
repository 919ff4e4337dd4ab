//! The README's exit-code table, held for the inputs a new user gets wrong
//! first: bad option values and conflicting options exit 2, a location
//! without a repository exits 10 before any password is looked for (a
//! mistyped path must not be reported as a password problem), and a
//! missing S3 bucket is one readable line with exit 10.

mod common;

use common::*;
use lifeboat_testkit::services::S3Server;

const USAGE: i32 = 2;
const NO_REPOSITORY: i32 = 10;

#[test]
fn bad_option_values_exit_2() {
    let lb = Lifeboat::init();
    let err = lb.fail(["forget", "--keep-within", "1x"], USAGE);
    assert!(err.contains("--keep-within"), "{err}");
    let err = lb.fail(["check", "--read-data-subset", "lots"], USAGE);
    assert!(err.contains("--read-data-subset"), "{err}");
    lb.fail(["check", "--read-data-subset", "0%"], USAGE);
    let err = lb.fail(["forget"], USAGE);
    assert!(err.contains("--keep-"), "{err}");
    lb.fail(["prune", "--max-unused", "ten"], USAGE);
    lb.fail(["prune", "--max-repack", "huge"], USAGE);
}

#[test]
fn bad_option_values_exit_2_even_without_a_repository() {
    // The value is wrong whatever the repository: say that, not "no
    // repository" or "no password".
    let lb = Lifeboat::new();
    lb.fail(["check", "--read-data-subset", "lots"], USAGE);
    lb.fail(["forget", "--keep-within", "1x"], USAGE);
}

#[test]
fn conflicting_repository_options_exit_2() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    let other = lb.path("other");
    let pw = lb.path("pw");
    write(&pw, format!("{}\n", lb.password));
    let repo = lb.repo.to_str().unwrap().to_string();

    // The same repository twice.
    let out = lb
        .bare_cmd()
        .args(["-r", &repo, "-r", &repo, "--password-file"])
        .arg(&pw)
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    let err = assert_fails(&out, USAGE, "backup -r A -r A");
    assert!(err.contains("named twice"), "{err}");

    // Three password files for two repositories.
    let out = lb
        .bare_cmd()
        .args(["-r", &repo, "-r"])
        .arg(&other)
        .args(["--password-file"])
        .arg(&pw)
        .arg("--password-file")
        .arg(&pw)
        .arg("--password-file")
        .arg(&pw)
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    assert_fails(&out, USAGE, "3 password files, 2 repositories");

    // Two password files for one repository.
    let out = lb
        .bare_cmd()
        .args(["-r", &repo, "--password-file"])
        .arg(&pw)
        .arg("--password-file")
        .arg(&pw)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&out, USAGE, "2 password files, 1 repository");
    assert_eq!(lb.snapshots().len(), 0, "nothing was backed up");
}

#[test]
fn a_repository_path_that_does_not_exist_exits_10_before_any_password() {
    let lb = Lifeboat::new();
    let missing = lb.path("no-such-repo");
    // No password anywhere: the location is what is wrong, and says so.
    for args in [
        vec!["snapshots"],
        vec!["check"],
        vec!["ls", "latest"],
        vec!["forget", "--keep-last", "1"],
        vec!["prune"],
    ] {
        let out = lb
            .bare_cmd()
            .arg("-r")
            .arg(&missing)
            .args(&args)
            .output()
            .unwrap();
        let err = assert_fails(&out, NO_REPOSITORY, &args);
        assert!(err.contains("no-such-repo"), "{err}");
        assert!(!err.contains("password"), "{err}");
    }
    // The copy source and target too.
    let out = lb
        .bare_cmd()
        .args(["copy", "--from"])
        .arg(&missing)
        .arg("--to")
        .arg(lb.path("also-missing"))
        .output()
        .unwrap();
    assert_fails(&out, NO_REPOSITORY, "copy --from missing");
}

#[test]
fn a_missing_s3_bucket_exits_10() {
    // s3s-fs creates a bucket on the first write to it (the open's write
    // probe), so here the bucket exists but holds no repository; a real
    // S3's NoSuchBucket answer is mapped to the same exit code, with
    // "the bucket does not exist" (storage's remote.rs unit tests).
    let Some(s3) = S3Server::start() else { return };
    let url = s3
        .location_url_for("repo")
        .replacen(s3.bucket(), "no-such-bucket", 1);
    let lb = Lifeboat::new();
    for args in [vec!["snapshots"], vec!["check"]] {
        let mut cmd = lb.std_bare_cmd();
        cmd.arg("-r").arg(&url).env("LIFEBOAT_PASSWORD", "pw");
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        let out = cmd.args(&args).output().unwrap();
        let err = assert_fails(&out, NO_REPOSITORY, &args);
        assert!(err.contains("no-such-bucket"), "{err}");
    }
}

#[test]
fn regression_s3_errors_reached_the_user_as_a_backend_dump() {
    // Wrong credentials: the storage refuses every request. The user gets
    // one line with the cause and what to do, not OpenDAL's context dump
    // (service, path, response headers) or a debug-printed S3Error struct.
    let Some(s3) = S3Server::start() else { return };
    let lb = Lifeboat::new();
    let mut cmd = lb.std_bare_cmd();
    cmd.arg("-r")
        .arg(s3.location_url())
        .env("LIFEBOAT_PASSWORD", "pw");
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let out = cmd.arg("snapshots").output().unwrap();
    // assert_fails checks there is exactly one error line.
    let err = assert_fails(&out, 12, "snapshots with a wrong secret key");
    let err = err
        .lines()
        .find(|l| l.starts_with("lifeboat: error:"))
        .unwrap();
    assert!(err.contains("access denied"), "{err}");
    assert!(err.contains("credentials"), "says what to check: {err}");
    assert!(!err.contains("S3Error {"), "{err}");
    assert!(!err.contains("context: {"), "{err}");
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let lb = Lifeboat::new();
    write(lb.repo.join("notes.txt"), "mine\n");
    let err = lb.fail(["init"], USAGE);
    assert!(err.contains("not empty"), "{err}");
    assert!(!lb.repo.join("config").exists());
    assert_eq!(
        std::fs::read_dir(&lb.repo).unwrap().count(),
        1,
        "nothing added"
    );
    // An empty directory is fine.
    std::fs::remove_file(lb.repo.join("notes.txt")).unwrap();
    lb.ok(["init"]);
}

#[test]
fn the_default_repository_works_by_path_as_a_copy_source() {
    // The default repository (created by the first backup, its password
    // in the config directory) named by its path in `copy --from` and
    // `init --copy-chunker-params-from`: its own password file opens it,
    // while the main password options are the target's.
    let lb = Lifeboat::new();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    let out = lb.bare_cmd().arg("backup").arg(&src).output().unwrap();
    assert_ok(&out, "first backup into the default repository");
    let default = lb.xdg_data().join("lifeboat/repository");
    assert!(default.join("config").exists());

    let out = lb
        .cmd()
        .args(["init", "--copy-chunker-params-from"])
        .arg(&default)
        .output()
        .unwrap();
    assert_ok(&out, "init --copy-chunker-params-from DEFAULT");
    let out = lb
        .cmd()
        .args(["copy", "--from"])
        .arg(&default)
        .output()
        .unwrap();
    assert_ok(&out, "copy --from DEFAULT");
    assert_eq!(lb.snapshots().len(), 1);
}
