//! The scheduler's rules, and the daemon driven by a manual clock (no
//! sleeping through minutes): catch-up, schedule, jitter bounds, overlap,
//! concurrency, lock retry, reload with a broken config, HTTP endpoints,
//! clean stop.

mod common;

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use common::{DAEMON_START, Setup, TestDaemon, Toml, finished, next_event};
use jiff::{SignedDuration, Timestamp};
use lifeboat_ops::Config;
use lifeboat_ops::daemon::{Clock, Event};
use lifeboat_ops::report::{Outcome, Trigger};
use lifeboat_ops::scheduler::{Due, Scheduler};
use lifeboat_ops::state::{LastRun, PlanState};
use tokio::sync::mpsc;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn config(plans: &str, daemon: &str) -> Config {
    let text = format!(
        r#"
[repository.r]
location = "/nonexistent"
password-env = "X"
[source.s]
type = "files"
paths = ["/srv"]
{plans}
[daemon]
time-zone = "UTC"
{daemon}
"#
    );
    Config::parse(&text, std::path::Path::new("/x/lifeboat.toml")).unwrap()
}

fn plan(name: &str, schedule: &str, extra: &str) -> String {
    format!(
        "[plan.{name}]\nsource = \"s\"\nrepositories = [\"r\"]\nrpo = \"1d\"\nschedule = \"{schedule}\"\n{extra}\n"
    )
}

fn ran_at(t: Timestamp) -> PlanState {
    PlanState {
        last_run: Some(LastRun {
            id: "x".into(),
            started: t,
            finished: t,
            outcome: Outcome::Ok,
            error: None,
        }),
        ..Default::default()
    }
}

#[test]
fn missed_slots_are_caught_up_once_after_downtime() {
    let c = config(&plan("a", "0 * * * *", ""), "");
    // Last ran at 01:00; the daemon comes back at 05:30: four slots missed.
    let states = BTreeMap::from([("a".to_string(), ran_at(ts("2026-01-01T01:00:00Z")))]);
    let now = ts("2026-01-01T05:30:00Z");
    let mut s = Scheduler::new(&c, &states, now, 1);
    assert_eq!(
        s.take_due(now),
        vec![Due {
            plan: "a".into(),
            trigger: Trigger::CatchUp
        }]
    );
    s.finished(&c, "a", Some(Outcome::Ok), ts("2026-01-01T05:31:00Z"));
    // Next is the 06:00 slot, not another catch-up.
    assert_eq!(s.entry("a").unwrap().next, Some(ts("2026-01-01T06:00:00Z")));
    assert!(s.take_due(ts("2026-01-01T05:59:59Z")).is_empty());
    assert_eq!(s.take_due(ts("2026-01-01T06:00:00Z")).len(), 1);
}

#[test]
fn a_plan_that_ran_after_its_last_slot_waits_for_the_next() {
    let c = config(&plan("a", "0 * * * *", ""), "");
    let states = BTreeMap::from([("a".to_string(), ran_at(ts("2026-01-01T05:00:10Z")))]);
    let now = ts("2026-01-01T05:30:00Z");
    let mut s = Scheduler::new(&c, &states, now, 1);
    assert!(s.take_due(now).is_empty());
    assert_eq!(s.next_wake(), Some(ts("2026-01-01T06:00:00Z")));
}

#[test]
fn jitter_stays_within_its_bound() {
    let c = config(&plan("a", "0 * * * *", "jitter = \"10m\""), "");
    let states = BTreeMap::from([("a".to_string(), ran_at(ts("2026-01-01T05:00:10Z")))]);
    let slot = ts("2026-01-01T06:00:00Z");
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let s = Scheduler::new(&c, &states, ts("2026-01-01T05:30:00Z"), seed);
        let next = s.entry("a").unwrap().next.unwrap();
        assert!(
            next >= slot && next <= slot + SignedDuration::from_mins(10),
            "{next}"
        );
        seen.insert(next);
    }
    assert!(
        seen.len() > 50,
        "jitter does not spread starts: {}",
        seen.len()
    );
}

#[test]
fn a_running_plan_is_not_started_again_and_a_slot_missed_meanwhile_runs_once() {
    let c = config(&plan("a", "*/15 * * * *", ""), "");
    let states = BTreeMap::from([("a".to_string(), ran_at(ts("2026-01-01T05:00:10Z")))]);
    let mut s = Scheduler::new(&c, &states, ts("2026-01-01T05:01:00Z"), 1);
    assert_eq!(s.take_due(ts("2026-01-01T05:15:00Z")).len(), 1);
    // Still running at 05:50: three slots passed, nothing starts.
    assert!(s.take_due(ts("2026-01-01T05:50:00Z")).is_empty());
    s.finished(&c, "a", Some(Outcome::Ok), ts("2026-01-01T05:50:00Z"));
    assert_eq!(
        s.take_due(ts("2026-01-01T05:50:00Z")).len(),
        1,
        "one coalesced run"
    );
    s.finished(&c, "a", Some(Outcome::Ok), ts("2026-01-01T05:51:00Z"));
    assert_eq!(s.entry("a").unwrap().next, Some(ts("2026-01-01T06:00:00Z")));
}

#[test]
fn at_most_max_concurrent_plans_run() {
    let plans = format!(
        "{}{}{}",
        plan("a", "0 * * * *", ""),
        plan("b", "0 * * * *", ""),
        plan("c", "0 * * * *", "")
    );
    let c = config(&plans, "max-concurrent = 2");
    let now = ts("2026-01-01T05:30:00Z");
    let mut s = Scheduler::new(&c, &BTreeMap::new(), now, 1); // never ran: all catch up
    assert_eq!(s.take_due(now).len(), 2);
    assert!(s.take_due(now).is_empty());
    s.finished(&c, "a", Some(Outcome::Ok), now);
    let third = s.take_due(now);
    assert_eq!(
        third,
        vec![Due {
            plan: "c".into(),
            trigger: Trigger::CatchUp
        }]
    );
}

#[test]
fn a_lock_conflict_is_retried_after_lock_retry() {
    let c = config(&plan("a", "0 * * * *", ""), "lock-retry = \"5m\"");
    let now = ts("2026-01-01T05:30:00Z");
    let mut s = Scheduler::new(&c, &BTreeMap::new(), now, 1);
    s.take_due(now);
    s.finished(&c, "a", Some(Outcome::Locked), now);
    assert!(s.take_due(ts("2026-01-01T05:34:59Z")).is_empty());
    assert_eq!(
        s.take_due(ts("2026-01-01T05:35:00Z")),
        vec![Due {
            plan: "a".into(),
            trigger: Trigger::Retry
        }]
    );
}

/// One plan every quarter hour, and the HTTP endpoints.
fn daemon_config() -> Toml {
    Toml::local_files("schedule = \"*/15 * * * *\"").daemon("listen = \"127.0.0.1:0\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_catches_up_runs_on_schedule_reloads_serves_and_stops() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(daemon_config());
    let start = ts(DAEMON_START);
    let TestDaemon {
        clock,
        mut events,
        reload: reload_tx,
        shutdown,
        handle: daemon,
    } = s.start_daemon(config, start, 7, true, None);
    let Event::Listening(addr) = next_event(&mut events).await else {
        panic!("first event is Listening")
    };
    // Never ran: caught up at once.
    assert_eq!(
        next_event(&mut events).await,
        Event::Started {
            plan: "files".into(),
            trigger: Trigger::CatchUp
        }
    );
    let Event::Finished { outcome, .. } = next_event(&mut events).await else {
        panic!()
    };
    assert_eq!(outcome, Some(Outcome::Ok));

    // Nothing until the 05:15 slot.
    clock.set(ts("2026-01-01T05:14:59Z"));
    assert!(
        tokio::time::timeout(StdDuration::from_millis(300), events.recv())
            .await
            .is_err(),
        "started before its slot"
    );
    clock.set(ts("2026-01-01T05:15:00Z"));
    assert_eq!(
        next_event(&mut events).await,
        Event::Started {
            plan: "files".into(),
            trigger: Trigger::Schedule
        }
    );
    let Event::Finished { outcome, .. } = next_event(&mut events).await else {
        panic!()
    };
    assert_eq!(outcome, Some(Outcome::Ok));

    // HTTP: metrics, health, status.
    let base = format!("http://{addr}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lifeboat_plan_last_success_timestamp_seconds{plan=\"files\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_plan_rpo_seconds{plan=\"files\"} 3600"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_plan_runs{plan=\"files\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_repository_snapshots{repository=\"local\"} 2"),
        "{metrics}"
    );
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let st: serde_json::Value = reqwest::get(format!("{base}/api/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["plans"][0]["plan"], "files");
    assert_eq!(st["plans"][0]["next_run"], "2026-01-01T05:30:00Z");

    // A broken config on reload: the old one keeps running, and says why.
    std::fs::write(s.path("lifeboat.toml"), "[plan.files]\nrpo = \"soon\"\n").unwrap();
    reload_tx.send(()).unwrap();
    let Event::ReloadFailed(why) = next_event(&mut events).await else {
        panic!("expected ReloadFailed")
    };
    assert!(why.contains("lifeboat.toml:"), "{why}");
    clock.set(ts("2026-01-01T05:30:00Z"));
    assert_eq!(
        next_event(&mut events).await,
        Event::Started {
            plan: "files".into(),
            trigger: Trigger::Schedule
        }
    );
    let Event::Finished { .. } = next_event(&mut events).await else {
        panic!()
    };

    // A good config on reload is taken.
    let good = daemon_config()
        .to_string()
        .replace("{root}", &s.root().display().to_string())
        .replace("*/15 * * * *", "0 * * * *");
    std::fs::write(s.path("lifeboat.toml"), good).unwrap();
    reload_tx.send(()).unwrap();
    assert_eq!(next_event(&mut events).await, Event::Reloaded);

    shutdown.cancel();
    assert_eq!(next_event(&mut events).await, Event::Stopped);
    daemon.await.unwrap().unwrap();
}

/// Plans `a` on `ra` and `b` on `rb` (each with `extra` lines), and a
/// webhook at `hook`.
fn two_plans(extra: &str, hook: &str) -> Toml {
    Toml::new()
        .repo("ra", "")
        .repo("rb", "")
        .files("files", "src")
        .plan("a", "files", &["ra"], extra)
        .plan("b", "files", &["rb"], extra)
        .table("alert.ops", &format!("webhook = \"{hook}/hook\""))
        .daemon("")
}

/// The daemon's events up to the `n`th DrillFinished.
async fn until_drills_finished(rx: &mut mpsc::UnboundedReceiver<Event>, n: usize) -> Vec<Event> {
    let mut seen: Vec<Event> = Vec::new();
    while seen
        .iter()
        .filter(|e| matches!(e, Event::DrillFinished { .. }))
        .count()
        < n
    {
        seen.push(next_event(rx).await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_goes_unreachable_fails_its_plan_shows_in_status_and_alerts_once_while_others_run()
 {
    let s = Setup::new();
    s.repo("ra").await;
    s.repo("rb").await;
    let http = lifeboat_testkit::sinks::HttpSink::start();
    let config = s.config(two_plans("schedule = \"*/15 * * * *\"", &http.url()));
    let (
        TestDaemon {
            clock,
            mut events,
            shutdown,
            handle: daemon,
            ..
        },
        alerts,
    ) = s.start_alerting_daemon(&config);
    let ok = Some(Outcome::Ok);
    assert_eq!(
        finished(&mut events, 2).await,
        vec![("a".into(), ok), ("b".into(), ok)]
    );

    // rb goes away (an unmounted disk): b fails, a goes on.
    std::fs::rename(s.path("rb"), s.path("rb-away")).unwrap();
    clock.set(ts("2026-01-01T05:15:00Z"));
    assert_eq!(
        finished(&mut events, 2).await,
        vec![("a".into(), ok), ("b".into(), Some(Outcome::Failed))]
    );
    let st = lifeboat_ops::status::status(&config, clock.now()).unwrap();
    let b = st.plans.iter().find(|p| p.plan == "b").unwrap();
    assert_eq!(b.last_outcome, Some(Outcome::Failed));
    let failing = b.copies[0]
        .last_error
        .as_ref()
        .expect("rb shows as failing");
    assert!(failing.reason.contains("rb"), "{failing:?}");
    let a = st.plans.iter().find(|p| p.plan == "a").unwrap();
    assert_eq!(a.last_outcome, ok);
    assert!(a.copies[0].last_error.is_none());

    // One alert for the change, naming plan, repository and reason.
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(1);
    assert_eq!(got.len(), 1, "{got:?}");
    let p: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(p["condition"], "run-failed");
    assert_eq!(p["plan"], "b");
    assert_eq!(p["repository"], "rb");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("backup to rb failed"),
        "{p}"
    );

    // Still down at the next slot: a runs again, b fails again, no second
    // alert (deduplicated).
    clock.set(ts("2026-01-01T05:30:00Z"));
    assert_eq!(
        finished(&mut events, 2).await,
        vec![("a".into(), ok), ("b".into(), Some(Outcome::Failed))]
    );
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    assert_eq!(http.received().len(), 1, "{:?}", http.received());

    // Back: b recovers, and says so.
    std::fs::rename(s.path("rb-away"), s.path("rb")).unwrap();
    clock.set(ts("2026-01-01T05:45:00Z"));
    assert_eq!(
        finished(&mut events, 2).await,
        vec![("a".into(), ok), ("b".into(), ok)]
    );
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(2);
    let p: serde_json::Value = serde_json::from_str(&got[1].body).unwrap();
    assert_eq!(p["status"], "recovered");
    assert_eq!(p["repository"], "rb");

    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}

fn drilled_at(t: &str) -> BTreeMap<String, Timestamp> {
    BTreeMap::from([("a".to_string(), ts(t))])
}

#[test]
fn a_drill_missed_during_downtime_is_caught_up_once_then_runs_every_interval() {
    // A yearly backup (on 1 January), so no backup is due meanwhile.
    let c = config(&plan("a", "0 3 1 1 *", "drill.every = \"7d\""), "");
    // Last ran after its slot; last drilled 10 days ago: one drill now.
    let states = BTreeMap::from([("a".to_string(), ran_at(ts("2026-01-11T03:00:10Z")))]);
    let now = ts("2026-01-11T05:00:00Z");
    let mut s = Scheduler::new(&c, &states, now, 1);
    s.sync_drills(&c, &drilled_at("2026-01-01T04:00:00Z"), now);
    assert!(s.take_due(now).is_empty());
    let due = Due {
        plan: "a".into(),
        trigger: Trigger::CatchUp,
    };
    assert_eq!(s.take_due_drills(now), vec![due]);
    assert!(s.take_due_drills(now).is_empty(), "one drill at a time");
    s.drill_finished(&c, "a", ts("2026-01-11T05:10:00Z"));
    let next = s.drill_entry("a").unwrap().next;
    assert_eq!(next, Some(ts("2026-01-18T05:10:00Z")));
    assert!(s.take_due_drills(ts("2026-01-18T05:09:59Z")).is_empty());
    assert_eq!(s.take_due_drills(ts("2026-01-18T05:10:00Z")).len(), 1);
}

#[test]
fn a_drill_drilled_recently_waits_and_its_start_is_jittered_within_bounds() {
    let c = config(
        &plan("a", "0 3 * * *", "drill.every = \"1d\"\njitter = \"10m\""),
        "",
    );
    let states = BTreeMap::from([("a".to_string(), ran_at(ts("2026-01-11T03:00:10Z")))]);
    let now = ts("2026-01-11T05:00:00Z");
    let due = ts("2026-01-11T06:00:00Z");
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let mut s = Scheduler::new(&c, &states, now, seed);
        s.sync_drills(&c, &drilled_at("2026-01-10T06:00:00Z"), now);
        assert!(s.take_due_drills(now).is_empty());
        let next = s.drill_entry("a").unwrap().next.unwrap();
        assert!(
            next >= due && next <= due + SignedDuration::from_mins(10),
            "{next}"
        );
        seen.insert(next);
    }
    assert!(
        seen.len() > 20,
        "jitter does not spread drills: {}",
        seen.len()
    );
}

#[test]
fn a_drill_never_runs_beside_its_plan_s_backup() {
    let c = config(&plan("a", "0 * * * *", "drill.every = \"1d\""), "");
    let now = ts("2026-01-01T05:30:00Z");
    // Never ran, never drilled: both due at once; the backup goes first.
    let mut s = Scheduler::new(&c, &BTreeMap::new(), now, 1);
    s.sync_drills(&c, &BTreeMap::new(), now);
    assert!(
        s.take_due_drills(now).is_empty(),
        "a drill started while the backup was due"
    );
    assert_eq!(s.take_due(now).len(), 1);
    assert!(
        s.take_due_drills(now).is_empty(),
        "a drill started while the backup ran"
    );
    s.finished(&c, "a", Some(Outcome::Ok), ts("2026-01-01T05:35:00Z"));
    assert_eq!(s.take_due_drills(ts("2026-01-01T05:35:00Z")).len(), 1);
    // The 06:00 slot comes while the drill runs: the backup waits for it.
    assert!(s.take_due(ts("2026-01-01T06:00:00Z")).is_empty());
    assert_eq!(s.next_wake_after(ts("2026-01-01T06:00:00Z")), None);
    s.drill_finished(&c, "a", ts("2026-01-01T06:05:00Z"));
    assert_eq!(s.take_due(ts("2026-01-01T06:05:00Z")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_drills_each_plan_after_its_backup_and_alerts_a_failed_drill() {
    let s = Setup::new();
    s.repo("ra").await;
    let http = lifeboat_testkit::sinks::HttpSink::start();
    let config = s.config(two_plans(
        "schedule = \"0 * * * *\"\ndrill.every = \"1d\"\ndrill.scratch = \"{root}/scratch\"",
        &http.url(),
    ));
    let (
        TestDaemon {
            clock,
            mut events,
            shutdown,
            handle: daemon,
            ..
        },
        alerts,
    ) = s.start_alerting_daemon(&config);
    // Per plan: its catch-up backup, then (never at the same time) its
    // catch-up drill. rb does not exist: b's backup and drill fail.
    let seen = until_drills_finished(&mut events, 2).await;
    for p in ["a", "b"] {
        let at = |want: &dyn Fn(&Event) -> bool| {
            seen.iter()
                .position(want)
                .unwrap_or_else(|| panic!("{p}: {seen:#?}"))
        };
        let backup_started =
            at(&|e| matches!(e, Event::Started { plan, trigger: Trigger::CatchUp } if plan == p));
        let backup_done = at(&|e| matches!(e, Event::Finished { plan, .. } if plan == p));
        let drill_started = at(
            &|e| matches!(e, Event::DrillStarted { plan, trigger: Trigger::CatchUp } if plan == p),
        );
        let drill_done = at(&|e| matches!(e, Event::DrillFinished { plan, .. } if plan == p));
        assert!(
            backup_started < backup_done
                && backup_done < drill_started
                && drill_started < drill_done,
            "{p}: {seen:#?}"
        );
    }
    let drill_outcome = |p: &str| {
        seen.iter().find_map(|e| match e {
            Event::DrillFinished { plan, outcome, .. } if plan == p => Some(*outcome),
            _ => None,
        })
    };
    use lifeboat_ops::drill::DrillOutcome;
    assert_eq!(drill_outcome("a"), Some(Some(DrillOutcome::Passed)));
    assert_eq!(drill_outcome("b"), Some(Some(DrillOutcome::Failed)));

    // Nothing more until the next hourly slot, and no second drill that day.
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    let drill_alerts = || -> Vec<serde_json::Value> {
        http.received()
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(&r.body).unwrap())
            .filter(|p| p["condition"].as_str().unwrap().starts_with("drill-"))
            .collect()
    };
    let got = drill_alerts();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["condition"], "drill-failed");
    assert_eq!(got[0]["status"], "problem");
    assert_eq!(got[0]["plan"], "b");
    let reason = got[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("restore drill of b from its repositories failed: open:")
            && reason.contains("rb"),
        "{got:#?}"
    );

    // rb appears; the next day's drills run after that hour's backups, b's
    // passes and its alert recovers.
    s.repo("rb").await;
    clock.set(ts("2026-01-02T05:07:00Z"));
    let day2 = until_drills_finished(&mut events, 2).await;
    for e in &day2 {
        if let Event::DrillStarted { trigger, .. } = e {
            assert_eq!(*trigger, Trigger::Schedule, "{day2:#?}");
        }
        if let Event::DrillFinished { outcome, .. } = e {
            assert_eq!(*outcome, Some(DrillOutcome::Passed), "{day2:#?}");
        }
    }
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    let got = drill_alerts();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[1]["condition"], "drill-failed");
    assert_eq!(got[1]["status"], "recovered");
    assert_eq!(got[1]["plan"], "b");

    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}

/// A write-only host backs up into a repository (so its backups are not
/// checked at backup time); a daemon holding the full key runs detection
/// there every `detect-every`: the host's tree encrypted between two
/// backups is found at the next run, the snapshot tagged `suspect`, the
/// one before protected, `ransomware-suspected` alerted; each snapshot is
/// checked once. The same repository configured with the write-only
/// key's password fails and alerts `detect-failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_detection_on_snapshots_of_write_only_hosts_once_each() {
    use lifeboat_snapshot::backup::{BackupOptions, backup};
    use lifeboat_snapshot::progress::NoProgress;

    let s = Setup::new();
    let storage =
        lifeboat_storage::open_location(&lifeboat_storage::Location::Local(s.path("shared")))
            .await
            .unwrap();
    let full = lifeboat_testkit::repo::init_on(
        storage.clone(),
        lifeboat_repo::InitOptions {
            write_only_keys: true,
            ..lifeboat_testkit::repo::init_options()
        },
    )
    .await;
    lifeboat_repo::keys::add_write_only(&full, b"host", lifeboat_repo::KdfParams::INSECURE_TEST)
        .await
        .unwrap();
    let host = std::sync::Arc::new(
        lifeboat_repo::Repository::open(storage.clone(), b"host")
            .await
            .unwrap(),
    );
    common::text_tree(&s.path("text"), 100);
    let host_backup = || async {
        let options = BackupOptions {
            paths: vec![s.path("text")],
            ..Default::default()
        };
        backup(host.clone(), &options, std::sync::Arc::new(NoProgress))
            .await
            .unwrap()
            .snapshot
    };
    let first = host_backup().await;

    let http = lifeboat_testkit::sinks::HttpSink::start();
    // The same repository named a second time with the host's password:
    // a write-only key cannot run detection.
    std::fs::write(s.path("host.pw"), b"host").unwrap();
    let config = s.config(
        Toml::new()
            .repo("shared", "detect-every = \"1h\"")
            .table(
                "repository.hostkey",
                "location = \"shared\"\npassword-file = \"host.pw\"\ndetect-every = \"1h\"",
            )
            .table("alert.ops", &format!("webhook = \"{}/hook\"", http.url()))
            .daemon(""),
    );
    let (mut d, alerts) = s.start_alerting_daemon(&config);
    // One run of each repository: `shared`'s (checked, suspect), and the
    // error of `hostkey`'s.
    async fn runs(d: &mut common::TestDaemon) -> ((usize, Vec<String>), String) {
        let mut shared = None;
        let mut hostkey = None;
        while shared.is_none() || hostkey.is_none() {
            match d.next().await {
                Event::Detected {
                    repository,
                    checked,
                    suspect,
                    error,
                } if repository == "shared" => {
                    assert_eq!(error, None);
                    shared = Some((checked, suspect));
                }
                Event::Detected {
                    repository, error, ..
                } if repository == "hostkey" => hostkey = error,
                other => panic!("expected Detected, got {other:?}"),
            }
        }
        (shared.unwrap(), hostkey.unwrap())
    }
    // At start: the host's first snapshot, nothing to compare it with; the
    // write-only key is refused.
    let (shared, refused) = runs(&mut d).await;
    assert_eq!(shared, (1, vec![]));
    assert!(refused.contains("needs a full key"), "{refused}");

    common::encrypt_like_ransomware(&s.path("text"), 30);
    let second = host_backup().await;
    assert!(
        !second.record.tags.iter().any(|t| t == "suspect"),
        "a write-only backup is not checked when it is taken"
    );
    d.clock.advance(SignedDuration::from_hours(1));
    let ((checked, suspect), _) = runs(&mut d).await;
    assert_eq!((checked, suspect.len()), (1, 1), "{suspect:?}");

    // The full key sees the tag and the protection.
    let admin = lifeboat_testkit::repo::reopen(storage.clone()).await;
    let tagged = admin.find_snapshot(&suspect[0]).await.unwrap();
    assert!(tagged.record.tags.iter().any(|t| t == "suspect"));
    assert!(admin.find_snapshot(&second.id.to_hex()).await.is_err());
    let (protections, _) = lifeboat_repo::protect::list(&admin).await.unwrap();
    assert!(protections.contains_key(&first.id), "{protections:?}");

    // The alert went out, naming the repository and the snapshot.
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    let sent: Vec<serde_json::Value> = http
        .received()
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .filter(|p: &serde_json::Value| p["condition"] == "ransomware-suspected")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["status"], "problem");
    assert_eq!(sent[0]["repository"], "shared");
    assert_eq!(sent[0]["details"]["snapshots"], suspect[0].as_str());
    // The refused key alerted detect-failed once, for its repository.
    let failed: Vec<serde_json::Value> = http
        .received()
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .filter(|p: &serde_json::Value| p["condition"] == "detect-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["repository"], "hostkey");

    // An hour later nothing is checked again.
    d.clock.advance(SignedDuration::from_hours(1));
    assert_eq!(runs(&mut d).await.0, (0, vec![]));
    d.shutdown.cancel();
    assert_eq!(d.next().await, Event::Stopped);
    d.handle.await.unwrap().unwrap();
}
