//! A failing `--password-command` is named by its program only: its
//! arguments may hold a secret and never appear in an error.

mod common;

use common::*;

#[test]
fn a_failing_password_command_never_prints_its_arguments() {
    let lb = Lifeboat::init();
    let args = [
        "--password-command",
        "false token-s3cr3t-value",
        "snapshots",
    ];
    let out = lb
        .std_bare_cmd()
        .arg("-r")
        .arg(&lb.repo)
        .args(args)
        .output()
        .unwrap();
    let err = assert_fails(&out, 11, args);
    assert!(err.contains("password command (false) failed"), "{err}");
    assert!(
        !err.contains("s3cr3t"),
        "the command's arguments were printed: {err}"
    );
    assert!(!stdout(&out).contains("s3cr3t"));
}
