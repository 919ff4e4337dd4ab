//! The scheduler's rules, and the daemon driven by a manual clock (no
//! sleeping through minutes): catch-up, schedule, jitter bounds, overlap,
//! concurrency, lock retry, reload with a broken config, HTTP endpoints,
//! clean stop.

mod common;

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use common::Setup;
use jiff::{SignedDuration, Timestamp};
use lifeboat_ops::Config;
use lifeboat_ops::daemon::{Clock, DaemonOptions, Event, ManualClock, run_daemon};
use lifeboat_ops::report::{Outcome, Trigger};
use lifeboat_ops::scheduler::{Due, Scheduler};
use lifeboat_ops::state::{LastRun, PlanState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(StdDuration::from_secs(60), rx.recv())
        .await
        .expect("the daemon answers within a minute")
        .expect("the daemon is running")
}

const DAEMON_CONFIG: &str = r#"
state-dir = "state"
[repository.local]
location = "local"
password-file = "pw"
[source.files]
type = "files"
paths = ["{root}/src"]
[plan.files]
source = "files"
repositories = ["local"]
rpo = "1h"
schedule = "*/15 * * * *"
[daemon]
time-zone = "UTC"
listen = "127.0.0.1:0"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_catches_up_runs_on_schedule_reloads_serves_and_stops() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(DAEMON_CONFIG);
    let start = ts("2026-01-01T05:07:00Z");
    let clock = ManualClock::new(start);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(run_daemon(
        config,
        DaemonOptions {
            config_path: s.path("lifeboat.toml"),
            clock: clock.clone(),
            shutdown: shutdown.clone(),
            reload: reload_rx,
            events: Some(events_tx),
            seed: 7,
            http: true,
            alerts: None,
        },
    ));
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
    let good = DAEMON_CONFIG
        .replace("{root}", &s.root().display().to_string())
        .replace("*/15 * * * *", "0 * * * *");
    std::fs::write(s.path("lifeboat.toml"), good).unwrap();
    reload_tx.send(()).unwrap();
    assert_eq!(next_event(&mut events).await, Event::Reloaded);

    shutdown.cancel();
    assert_eq!(next_event(&mut events).await, Event::Stopped);
    daemon.await.unwrap().unwrap();
}

/// Waits for `n` Finished events (any plan) and returns their plans and
/// outcomes, sorted.
async fn finished(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
) -> Vec<(String, Option<Outcome>)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Event::Finished { plan, outcome, .. } = next_event(rx).await {
            out.push((plan, outcome));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_goes_unreachable_fails_its_plan_shows_in_status_and_alerts_once_while_others_run()
 {
    let s = Setup::new();
    s.repo("ra").await;
    s.repo("rb").await;
    let http = lifeboat_testkit::sinks::HttpSink::start();
    let config = s.config(&format!(
        r#"
state-dir = "state"
[repository.ra]
location = "ra"
password-file = "pw"
[repository.rb]
location = "rb"
password-file = "pw"
[source.files]
type = "files"
paths = ["{{root}}/src"]
[plan.a]
source = "files"
repositories = ["ra"]
rpo = "1h"
schedule = "*/15 * * * *"
[plan.b]
source = "files"
repositories = ["rb"]
rpo = "1h"
schedule = "*/15 * * * *"
[alert.ops]
webhook = "{}/hook"
[daemon]
time-zone = "UTC"
"#,
        http.url()
    ));
    let clock = ManualClock::new(ts("2026-01-01T05:07:00Z"));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (_reload_tx, reload_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let alerts = lifeboat_ops::alert::Alerter::with_retry(
        &config,
        lifeboat_ops::alert::Retry {
            attempts: 2,
            backoff: StdDuration::from_millis(50),
            timeout: StdDuration::from_secs(5),
        },
    );
    let daemon = tokio::spawn(run_daemon(
        config.clone(),
        DaemonOptions {
            config_path: s.path("lifeboat.toml"),
            clock: clock.clone(),
            shutdown: shutdown.clone(),
            reload: reload_rx,
            events: Some(events_tx),
            seed: 1,
            http: false,
            alerts: Some(alerts.clone()),
        },
    ));
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
