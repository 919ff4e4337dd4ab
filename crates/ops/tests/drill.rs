//! File-tree restore drills (`run_drill`) against real local repositories
//! and a real source tree: a good backup passes every check and leaves no
//! scratch behind; a backup of the wrong directory, of an empty mount
//! point, and a source encrypted by ransomware since the backup are each
//! caught by the spot check; a scratch place too small for the snapshot
//! refuses the drill before anything is restored. (SIGKILL mid-drill is in
//! `crates/cli/tests/drill.rs`: it needs a process to kill.)

mod common;

use std::path::Path;

use common::{Setup, Toml};
use lifeboat_ops::drill::{DrillOutcome, DrillReport};
use lifeboat_ops::{DrillOptions, DrillResult, RunOptions, run_drill, run_drill_with, run_plan};
use lifeboat_testkit::data::pseudo_random;

/// The plan `data` with an RTO, drilled in `scratch` with every file
/// read back, and `drill_extra` lines in its drill table.
fn plan(scratch: &Path, drill_extra: &str) -> Toml {
    Toml::new()
        .repo("local", "")
        .files("data", "data")
        .plan("data", "data", &["local"], "rto = \"1h\"")
        .table(
            "plan.data.drill",
            &format!(
                "scratch = \"{}\"\ndata-sample = \"100%\"\n{drill_extra}",
                scratch.display()
            ),
        )
}

/// Files `data/dir{d}/f{i}` with content from `seed`.
fn fill(root: &Path, files: usize, seed: u64) {
    for i in 0..files {
        let dir = root.join(format!("dir{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}")),
            pseudo_random(1000 + i * 37, seed + i as u64),
        )
        .unwrap();
    }
}

struct Drill {
    s: Setup,
    scratch: std::path::PathBuf,
}

impl Drill {
    async fn new(files: usize) -> Drill {
        let s = Setup::new();
        s.repo("local").await;
        let data = s.path("data");
        std::fs::create_dir_all(&data).unwrap();
        fill(&data, files, 1);
        let scratch = s.path("scratch");
        Drill { s, scratch }
    }

    fn config(&self) -> lifeboat_ops::Config {
        self.s.config(plan(&self.scratch, ""))
    }

    async fn backup(&self) {
        let r = run_plan(&self.config(), "data", &RunOptions::manual())
            .await
            .unwrap();
        assert_eq!(
            r.report.outcome,
            lifeboat_ops::report::Outcome::Ok,
            "{:#?}",
            r.report
        );
    }

    /// Runs a drill, checking that its verdict comes while the scratch
    /// copy is still there and that the copy is removed afterwards.
    async fn drill(&self) -> DrillReport {
        let mut at_verdict = None;
        let r = run_drill_with(
            &self.config(),
            "data",
            &DrillOptions::default(),
            &mut |r: &DrillResult| {
                at_verdict = Some((r.report.id.clone(), self.scratch_is_empty()))
            },
        )
        .await
        .unwrap();
        assert_eq!(r.report_not_stored, None);
        assert_eq!(r.cleanup_error, None);
        assert_eq!(
            at_verdict,
            Some((r.report.id.clone(), false)),
            "the verdict comes once, before the scratch copy is removed"
        );
        assert!(self.scratch_is_empty(), "the scratch place was not cleaned");
        r.report
    }

    fn scratch_is_empty(&self) -> bool {
        std::fs::read_dir(&self.scratch)
            .map(|mut rd| rd.next().is_none())
            .unwrap_or(true)
    }
}

fn check<'a>(r: &'a DrillReport, name: &str) -> &'a lifeboat_ops::drill::Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {r:#?}"))
}

#[tokio::test]
async fn a_drill_of_a_good_backup_passes_every_check_and_leaves_nothing_behind() {
    let d = Drill::new(40).await;
    d.backup().await;
    let r = d.drill().await;
    assert_eq!(r.outcome, DrillOutcome::Passed, "{r:#?}");
    for name in [
        "scratch-space",
        "restore",
        "content",
        "file-count",
        "file-data",
    ] {
        assert!(check(&r, name).ok, "{name}: {r:#?}");
    }
    assert_eq!(r.restored_files, 40);
    assert!(
        check(&r, "content").detail.starts_with("40 files"),
        "{r:#?}"
    );
    assert!(
        check(&r, "file-data").detail.starts_with("0 of 40 sampled"),
        "{r:#?}"
    );
    assert_eq!(r.rto_met, Some(true));
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["open", "prepare", "fetch-write", "verify", "spot-check",]
    );
    let rto: u64 = r.phases.iter().filter(|p| p.rto).map(|p| p.ms).sum();
    assert_eq!(r.rto_ms, rto);
    assert!(d.scratch_is_empty(), "the scratch place was not cleaned");

    // status and /metrics read it from the state directory.
    let st = lifeboat_ops::status::status(&d.config(), jiff::Timestamp::now()).unwrap();
    let ds = &st.plans[0].drill;
    assert_eq!(ds.last_success, Some(r.finished));
    assert_eq!((ds.rto_ms, ds.rto_met), (Some(r.rto_ms), Some(true)));
    // ... and the plan's RTO line shows the measured time.
    let rto = &st.plans[0].rto;
    assert_eq!(rto.measured_seconds, Some(r.rto_ms as f64 / 1000.0));
    assert_eq!(rto.state, "ok", "{rto:?}");
    let text = lifeboat_ops::metrics::render(&st);
    for line in [
        format!(
            "lifeboat_drill_last_success_timestamp_seconds{{plan=\"data\"}} {}",
            r.finished.as_second()
        ),
        "lifeboat_drill_rto_met{plan=\"data\"} 1".to_string(),
    ] {
        assert!(
            text.contains(&format!("{line}\n")) || text.contains(&format!("{line}.0\n")),
            "{line} not in:\n{text}"
        );
    }
    assert!(
        text.contains("lifeboat_drill_duration_seconds{plan=\"data\"} "),
        "{text}"
    );
}

#[tokio::test]
async fn a_backup_taken_while_another_volume_was_mounted_there_fails_the_data_check() {
    // The path held another directory's files at backup time (the wrong
    // volume mounted): as many files, none of them the live ones.
    let d = Drill::new(0).await;
    let data = d.s.path("data");
    fill(&data, 30, 1000);
    d.backup().await;
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    for i in 0..30 {
        std::fs::write(data.join(format!("other{i}")), pseudo_random(500, i)).unwrap();
    }
    let r = d.drill().await;
    assert_eq!(r.outcome, DrillOutcome::Failed, "{r:#?}");
    assert!(
        check(&r, "content").ok,
        "the restore itself is sound: {r:#?}"
    );
    assert!(check(&r, "file-count").ok, "same number of files: {r:#?}");
    let data_check = check(&r, "file-data");
    assert!(!data_check.ok, "{r:#?}");
    assert!(
        data_check
            .detail
            .starts_with("30 of 30 sampled files differ"),
        "{r:#?}"
    );
    assert!(d.scratch_is_empty());
}

#[tokio::test]
async fn a_backup_of_an_empty_mount_point_fails_the_count_check() {
    // Backed up while the volume was not mounted: the snapshot is empty.
    let d = Drill::new(0).await;
    d.backup().await;
    fill(&d.s.path("data"), 25, 7);
    let r = d.drill().await;
    assert_eq!(r.outcome, DrillOutcome::Failed, "{r:#?}");
    let count = check(&r, "file-count");
    assert!(!count.ok, "{r:#?}");
    assert!(
        count
            .detail
            .contains("0 files in the snapshot, 25 live (100.0% apart"),
        "{r:#?}"
    );
    assert!(d.scratch_is_empty());
}

#[tokio::test]
async fn files_encrypted_by_ransomware_since_the_backup_fail_the_data_check() {
    let d = Drill::new(40).await;
    d.backup().await;
    // Encrypted in place: same names and sizes, other bytes.
    let mut n = 0;
    for dir in std::fs::read_dir(d.s.path("data")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let len = std::fs::metadata(&p).unwrap().len() as usize;
            std::fs::write(&p, pseudo_random(len, 99_000 + n)).unwrap();
            n += 1;
        }
    }
    let r = d.drill().await;
    assert_eq!(r.outcome, DrillOutcome::Failed, "{r:#?}");
    assert!(check(&r, "file-count").ok, "{r:#?}");
    let data_check = check(&r, "file-data");
    assert!(!data_check.ok, "{r:#?}");
    assert!(
        data_check
            .detail
            .starts_with("40 of 40 sampled files differ"),
        "{r:#?}"
    );
}

#[tokio::test]
async fn a_few_changed_files_stay_within_the_data_tolerance() {
    let d = Drill::new(40).await;
    d.backup().await;
    // One file of 40 (2.5%) changed since: within the default 10%.
    std::fs::write(d.s.path("data/dir0/f0"), b"edited since the backup").unwrap();
    let r = d.drill().await;
    assert_eq!(r.outcome, DrillOutcome::Passed, "{r:#?}");
    assert!(
        check(&r, "file-data")
            .detail
            .starts_with("1 of 40 sampled files differ"),
        "{r:#?}"
    );
}

#[tokio::test]
async fn a_scratch_place_without_room_for_the_snapshot_refuses_the_drill() {
    let d = Drill::new(0).await;
    // About 4 MiB of data for a 1 MiB scratch filesystem.
    let data = d.s.path("data");
    for i in 0..4 {
        std::fs::write(data.join(format!("big{i}")), pseudo_random(1 << 20, i)).unwrap();
    }
    d.backup().await;
    let Some(fs) = lifeboat_testkit::tmpfs::Tmpfs::mount(
        &d.scratch,
        "1m",
        "a_scratch_place_without_room_for_the_snapshot_refuses_the_drill",
    ) else {
        return;
    };
    let r = d.drill().await;
    assert_eq!(r.outcome, DrillOutcome::Failed, "{r:#?}");
    let space = check(&r, "scratch-space");
    assert!(!space.ok, "{r:#?}");
    assert!(space.detail.contains("the snapshot needs"), "{r:#?}");
    assert_eq!(r.checks.len(), 1, "nothing else ran: {r:#?}");
    assert_eq!(r.restored_bytes, 0);
    assert!(d.scratch_is_empty());
    drop(fs);
}

#[tokio::test]
async fn a_restored_file_that_differs_from_the_snapshot_is_named_by_verify() {
    use lifeboat_snapshot::progress::NoProgress;
    use lifeboat_snapshot::restore::{RestoreOptions, restore};
    let d = Drill::new(8).await;
    d.backup().await;
    let storage =
        lifeboat_storage::open_location(&lifeboat_storage::Location::Local(d.s.path("local")))
            .await
            .unwrap();
    let repo = std::sync::Arc::new(
        lifeboat_repo::Repository::open(storage, lifeboat_testkit::repo::PASSWORD)
            .await
            .unwrap(),
    );
    let snap = repo.find_snapshot("latest").await.unwrap();
    let target = d.s.path("restored");
    let opts = RestoreOptions {
        target: target.clone(),
        ..Default::default()
    };
    restore(&repo, &snap, &opts, &NoProgress).await.unwrap();
    let v = lifeboat_snapshot::verify::verify_restored(&repo, &snap, &target)
        .await
        .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.files_verified, 8);
    // One byte flipped, one file gone.
    let data = format!("{}/data", d.s.root().display());
    let f1 =
        lifeboat_snapshot::verify::restored_path(&target, format!("{data}/dir1/f1").as_bytes());
    let mut bytes = std::fs::read(&f1).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&f1, bytes).unwrap();
    let f2 =
        lifeboat_snapshot::verify::restored_path(&target, format!("{data}/dir2/f2").as_bytes());
    std::fs::remove_file(&f2).unwrap();
    let v = lifeboat_snapshot::verify::verify_restored(&repo, &snap, &target)
        .await
        .unwrap();
    assert_eq!(v.files_verified, 6);
    assert_eq!(v.problems.len(), 2, "{:?}", v.problems);
    assert!(
        v.problems[0].ends_with("dir1/f1: restored content differs from the snapshot"),
        "{:?}",
        v.problems
    );
    assert!(v.problems[1].contains("dir2/f2: "), "{:?}", v.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_a_slow_and_an_overdue_drill_alert_once_each_and_recover() {
    use lifeboat_ops::alert::{drill_events, drill_overdue_events};
    use lifeboat_testkit::sinks::HttpSink;
    let d = Drill::new(40).await;
    let http = HttpSink::start();
    let config = d.s.config(
        plan(&d.scratch, "every = \"1d\"")
            .table("alert.ops", &format!("webhook = \"{}/hook\"", http.url())),
    );
    let alerts = common::quick_alerts(&config);
    let options = DrillOptions {
        alerts: Some(alerts.clone()),
        ..Default::default()
    };
    let drill = || async { run_drill(&config, "data", &options).await.unwrap().report };
    let bodies = |n: usize| -> Vec<serde_json::Value> {
        http.wait_for(n)
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    };
    d.backup().await;
    // The source encrypted since the backup: the drill fails, once alerted.
    fill(&d.s.path("data"), 40, 777);
    assert_eq!(drill().await.outcome, DrillOutcome::Failed);
    assert_eq!(drill().await.outcome, DrillOutcome::Failed);
    assert!(alerts.flush(std::time::Duration::from_secs(60)).await);
    let got = bodies(1);
    assert_eq!(got.len(), 1, "deduplicated: {got:#?}");
    assert_eq!(got[0]["condition"], "drill-failed");
    assert_eq!(got[0]["status"], "problem");
    assert_eq!(got[0]["plan"], "data");
    let reason = got[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("restore drill of data from local failed: file-data: 40 of 40"),
        "{reason}"
    );
    assert_eq!(got[0]["details"]["drill_repository"], "local");

    // A fresh backup: the drill passes, and the failure recovers.
    d.backup().await;
    let passed = drill().await;
    assert_eq!(passed.outcome, DrillOutcome::Passed);
    assert!(alerts.flush(std::time::Duration::from_secs(60)).await);
    let got = bodies(2);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        (got[1]["condition"].as_str(), got[1]["status"].as_str()),
        (Some("drill-failed"), Some("recovered"))
    );

    // The same checks over an RTO of 1 h taking 2 h: rto-missed, and the
    // next passing drill recovers it.
    let mut slow = passed.clone();
    slow.outcome = DrillOutcome::RtoMissed;
    slow.rto_ms = 7_200_000;
    slow.rto_met = Some(false);
    let now = jiff::Timestamp::now();
    alerts.notify_all(drill_events(&slow), now);
    alerts.notify_all(drill_events(&slow), now);
    alerts.notify_all(drill_events(&passed), now);
    assert!(alerts.flush(std::time::Duration::from_secs(60)).await);
    let got = bodies(4);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[2]["condition"], "drill-rto-missed");
    assert_eq!(got[2]["status"], "problem");
    assert_eq!(
        got[2]["reason"],
        "restore drill of data from local took 2h to a usable copy, more than the RTO of 1h"
    );
    assert_eq!(
        (got[3]["condition"].as_str(), got[3]["status"].as_str()),
        (Some("drill-rto-missed"), Some("recovered"))
    );

    // No drill for a day and more than the grace: overdue, once; not while
    // a drill of the plan is under way; recovered once one ran.
    let later = passed
        .finished
        .checked_add(jiff::SignedDuration::from_hours(26))
        .unwrap();
    alerts.notify_all(
        drill_overdue_events(&config, &["data".into()], later),
        later,
    );
    alerts.notify_all(drill_overdue_events(&config, &[], later), later);
    alerts.notify_all(drill_overdue_events(&config, &[], later), later);
    assert!(alerts.flush(std::time::Duration::from_secs(60)).await);
    let got = bodies(5);
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(got[4]["condition"], "drill-overdue");
    assert_eq!(got[4]["status"], "problem");
    assert!(
        got[4]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no restore drill of data for 1d2h"),
        "{got:#?}"
    );
    drill().await;
    assert!(alerts.flush(std::time::Duration::from_secs(60)).await);
    let got = bodies(6);
    assert_eq!(
        (got[5]["condition"].as_str(), got[5]["status"].as_str()),
        (Some("drill-overdue"), Some("recovered")),
        "{got:#?}"
    );
}
