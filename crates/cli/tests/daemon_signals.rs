//! SIGTERM to `lifeboat daemon` in the middle of a backup: the daemon
//! exits 0, the backup is recorded as stopped, no snapshot is half
//! written, the repository checks clean, its lock objects are gone and
//! the plan's run lock is free (the next `run` goes ahead).

mod common;

use std::time::Duration;

use common::{Lifeboat, child_stderr, free_port, sigterm, src_plan_config};
use lifeboat_testkit::wait::{wait_for, wait_until};

fn lock_objects(lb: &Lifeboat) -> usize {
    std::fs::read_dir(lb.path("repo/locks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn sigterm_mid_backup_leaves_a_clean_repository_and_no_locks() {
    let lb = Lifeboat::new();
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
    lb.init_with_password_file("repo");
    let port = free_port();
    let file = lb.write_config(&src_plan_config(
        "rpo = \"1d\"\nschedule = \"0 3 * * *\"",
        &format!("[daemon]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    assert_eq!(lock_objects(&lb), 0);
    // The plan never ran: the daemon catches it up at once.
    let mut daemon = lb.spawn_daemon(&file);
    wait_until(
        Duration::from_secs(120),
        "the backup holds its lock",
        || lock_objects(&lb) > 0,
    );
    sigterm(&daemon.0);
    let code = wait_for(Duration::from_secs(120), "the daemon to exit", || {
        daemon.0.try_wait().unwrap().map(|s| s.code())
    });
    let log = child_stderr(&mut daemon.0);
    assert_eq!(code, Some(0), "{log}");
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
    let out = lb.run_config(&file, ["run", "src"]);
    common::assert_ok(&out, "run after the stop");
}
