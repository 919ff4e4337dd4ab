//! SIGTERM to `lifeboat daemon` in the middle of a backup: the daemon
//! exits 0, the backup is recorded as stopped, no snapshot is half
//! written, the repository checks clean, its lock objects are gone and
//! the plan's run lock is free (the next `run` goes ahead).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Lifeboat;
use lifeboat_testkit::wait::wait_until;

fn lock_objects(lb: &Lifeboat) -> usize {
    std::fs::read_dir(lb.path("repo/locks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn sigterm_mid_backup_leaves_a_clean_repository_and_no_locks() {
    let lb = Lifeboat::new();
    let root = lb.root().display().to_string();
    std::fs::create_dir_all(lb.path("src")).unwrap();
    // Big enough that the backup is still running when the test sees its
    // lock (it waits for the lock, not for a time).
    for i in 0..4 {
        std::fs::write(
            lb.path(&format!("src/big{i}")),
            lifeboat_testkit::data::pseudo_random(48 << 20, i),
        )
        .unwrap();
    }
    std::fs::write(lb.path("pw"), "pw\n").unwrap();
    let out = lb
        .bare_cmd()
        .arg("init")
        .arg("-r")
        .arg(lb.path("repo"))
        .arg("--password-file")
        .arg(lb.path("pw"))
        .output()
        .unwrap();
    common::assert_ok(&out, "init");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = lb.path("lifeboat.toml");
    std::fs::write(
        &file,
        format!(
            r#"state-dir = "state"
[repository.main]
location = "repo"
password-file = "pw"
[source.src]
type = "files"
paths = ["{root}/src"]
[plan.src]
source = "src"
repositories = ["main"]
rpo = "1d"
schedule = "0 3 * * *"
[daemon]
listen = "127.0.0.1:{port}"
"#
        ),
    )
    .unwrap();
    assert_eq!(lock_objects(&lb), 0);
    // The plan never ran: the daemon catches it up at once.
    let mut daemon = lb
        .std_bare_cmd()
        .arg("--config")
        .arg(&file)
        .args(["daemon", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "the backup holds its lock",
        || lock_objects(&lb) > 0,
    );
    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut code = None;
    wait_until(Duration::from_secs(120), "the daemon exits", || {
        code = daemon.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    let mut log = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(code.unwrap(), Some(0), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");

    // The run is recorded as stopped during the backup.
    let reports = std::fs::read_to_string(lb.path("state/reports/src.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(reports.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "failed", "{last:#}");
    assert!(
        last["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("shut down during the backup"),
        "{last:#}"
    );
    // No lock left, no snapshot written, and the repository checks clean.
    assert_eq!(lock_objects(&lb), 0, "lock objects left behind");
    let repo = |args: &[&str]| {
        lb.bare_cmd()
            .arg("-r")
            .arg(lb.path("repo"))
            .arg("--password-file")
            .arg(lb.path("pw"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = repo(&["check"]);
    common::assert_ok(&out, "check");
    let out = repo(&["snapshots", "--json"]);
    common::assert_ok(&out, "snapshots");
    assert_eq!(common::parse_json(&out), serde_json::json!([]));
    // The plan's run lock is free: the next run goes ahead and succeeds.
    let out = lb
        .bare_cmd()
        .arg("--config")
        .arg(&file)
        .args(["run", "src"])
        .output()
        .unwrap();
    common::assert_ok(&out, "run after the stop");
}
