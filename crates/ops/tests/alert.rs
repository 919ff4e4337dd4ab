//! Alerts delivered to real local receivers (an HTTP server for the
//! webhook, Slack and ping channels, an SMTP server for email, from
//! testkit's sinks): content, deduplication, reminders on an injected
//! clock, recovery, dedup state surviving a restart, and a dead endpoint
//! that neither blocks nor fails a run.

mod common;

use std::time::Duration as StdDuration;

use common::{Setup, Toml};
use jiff::Timestamp;
use lifeboat_ops::alert::{Event, conditions};
use lifeboat_ops::report::Outcome;
use lifeboat_ops::{RunOptions, run_plan};
use lifeboat_testkit::sinks::{HttpSink, SmtpSink, dead_address};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Plan `files` on `local` and plan `other` on `gone`, a repository that
/// does not exist.
fn plans() -> Toml {
    Toml::new()
        .repo("local", "")
        .repo("gone", "")
        .files("files", "src")
        .plan("files", "files", &["local"], "")
        .plan("other", "files", &["gone"], "")
        .daemon("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_per_state_change_reminders_and_recovery_survive_a_restart() {
    let s = Setup::new();
    let http = HttpSink::start();
    let smtp = SmtpSink::start();
    let config = s.config(format!(
        "{plans}
[alert.ops]
webhook = \"{url}/hook\"
slack = \"{url}/slack\"
remind = \"6h\"
email.to = [\"ops@example.org\"]
email.from = \"lifeboat@example.org\"
email.smtp = \"{smtp}\"
",
        plans = plans(),
        url = http.url(),
        smtp = smtp.url()
    ));
    let t0 = ts("2026-03-01T10:00:00Z");
    let problem = || {
        Event::problem(
            conditions::RUN_FAILED,
            "files",
            "local",
            "backup to local failed: disk on fire",
        )
    };
    let a = common::quick_alerts(&config);
    a.notify(problem(), t0);
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(2);
    assert_eq!(got.len(), 2, "{got:?}");
    let hook = got.iter().find(|r| r.path == "/hook").expect("webhook");
    let p = json(&hook.body);
    assert_eq!(p["source"], "lifeboat");
    assert_eq!(p["status"], "problem");
    assert_eq!(p["condition"], "run-failed");
    assert_eq!(p["plan"], "files");
    assert_eq!(p["repository"], "local");
    assert_eq!(p["reason"], "backup to local failed: disk on fire");
    assert_eq!(p["since"], "2026-03-01T10:00:00Z");
    let slack = got.iter().find(|r| r.path == "/slack").expect("slack");
    let text = json(&slack.body)["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("PROBLEM run-failed plan files repository local: backup to local failed"),
        "{text}"
    );
    let mails = smtp.wait_for(1);
    assert_eq!(mails[0].to, vec!["ops@example.org".to_string()]);
    assert_eq!(mails[0].from, "lifeboat@example.org");
    assert!(
        mails[0].data.contains("Subject: [lifeboat"),
        "{}",
        mails[0].data
    );
    assert!(
        mails[0].data.contains("repository: local"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("disk on fire"), "{}", mails[0].data);

    // The same problem an hour later: nothing (deduplicated).
    a.notify(problem(), ts("2026-03-01T11:00:00Z"));
    assert!(a.flush(StdDuration::from_secs(60)).await);
    assert_eq!(http.received().len(), 2);
    assert_eq!(smtp.received().len(), 1);

    // A restart (a new Alerter on the same state directory): still
    // nothing at 15:59, a reminder at 16:00 (remind = 6h).
    drop(a);
    let a = common::quick_alerts(&config);
    a.notify(problem(), ts("2026-03-01T15:59:00Z"));
    assert!(a.flush(StdDuration::from_secs(60)).await);
    assert_eq!(http.received().len(), 2);
    a.notify(problem(), ts("2026-03-01T16:00:00Z"));
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(4);
    let reminder = json(&got.iter().rfind(|r| r.path == "/hook").unwrap().body);
    assert_eq!(reminder["status"], "reminder");
    assert_eq!(reminder["since"], "2026-03-01T10:00:00Z");
    smtp.wait_for(2);

    // Recovery: once, naming when the problem began; then silence.
    let ok = || {
        Event::recovered(
            conditions::RUN_FAILED,
            "files",
            "local",
            "backup to local succeeded",
        )
    };
    a.notify(ok(), ts("2026-03-01T16:30:00Z"));
    a.notify(ok(), ts("2026-03-01T16:45:00Z"));
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(6);
    assert_eq!(got.len(), 6, "{got:?}");
    let rec = json(&got.iter().rfind(|r| r.path == "/hook").unwrap().body);
    assert_eq!(rec["status"], "recovered");
    assert_eq!(rec["since"], "2026-03-01T10:00:00Z");
    assert_eq!(rec["reason"], "backup to local succeeded");
    assert_eq!(smtp.wait_for(3).len(), 3);
    // A recovery of something never alerted sends nothing.
    a.notify(
        Event::recovered(conditions::VERIFY_FAILED, "files", "local", "fine"),
        ts("2026-03-01T17:00:00Z"),
    );
    assert!(a.flush(StdDuration::from_secs(60)).await);
    assert_eq!(http.received().len(), 6);
    assert_eq!(a.stats().gave_up, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pings_alerts_a_failing_repository_and_a_dead_endpoint_does_not_fail_it() {
    let s = Setup::new();
    s.repo("local").await;
    let http = HttpSink::start();
    let dead = dead_address();
    let config = s.config(format!(
        "{plans}
[alert.ops]
webhook = \"{url}/hook\"
ping = \"{url}/ping/files\"
plans = [\"files\", \"other\"]

[alert.dead]
webhook = \"http://{dead}/hook\"
ping = \"http://{dead}/ping\"
",
        plans = plans(),
        url = http.url()
    ));
    let a = common::quick_alerts(&config);
    let options = RunOptions {
        alerts: Some(a.clone()),
        ..RunOptions::manual()
    };
    // A plan whose repository is fine: start and success pings, no alert
    // (a recovery of nothing is not sent); the dead endpoint's pings fail
    // in the background and the run is ok.
    let r = run_plan(&config, "files", &options).await.unwrap();
    assert_eq!(r.report.outcome, Outcome::Ok, "{:?}", r.report);
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(2);
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, vec!["/ping/files", "/ping/files/start"], "{got:?}");
    assert_eq!(a.stats().gave_up, 2, "the dead endpoint's two pings");

    // A plan whose repository does not exist: it fails, a fail ping with
    // the reason, and a run-failed alert naming the repository.
    let r = run_plan(&config, "other", &options).await.unwrap();
    assert_eq!(r.report.outcome, Outcome::Failed);
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(5);
    let fail = got
        .iter()
        .find(|r| r.path == "/ping/files/fail")
        .expect("fail ping");
    assert!(fail.body.contains("gone"), "{}", fail.body);
    let hooks: Vec<serde_json::Value> = got
        .iter()
        .filter(|r| r.path == "/hook")
        .map(|r| json(&r.body))
        .collect();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["condition"], "run-failed");
    assert_eq!(hooks[0]["plan"], "other");
    assert_eq!(hooks[0]["repository"], "gone");
    assert!(
        hooks[0]["reason"]
            .as_str()
            .unwrap()
            .contains("backup to gone failed"),
        "{}",
        hooks[0]
    );
    assert_eq!(a.stats().gave_up, 5, "and the dead webhook and pings");

    // The repository appears: the next run recovers the alert.
    s.repo("gone").await;
    let r = run_plan(&config, "other", &options).await.unwrap();
    assert_eq!(r.report.outcome, Outcome::Ok);
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(8);
    let last_hook = json(&got.iter().rfind(|r| r.path == "/hook").unwrap().body);
    assert_eq!(last_hook["status"], "recovered");
    assert_eq!(last_hook["repository"], "gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpo_breach_is_alerted_once_and_recovers() {
    let s = Setup::new();
    s.repo("local").await;
    let http = HttpSink::start();
    let config = s.config(format!(
        "{plans}
[alert.ops]
webhook = \"{url}/hook\"
plans = [\"files\"]
",
        plans = plans(),
        url = http.url()
    ));
    let a = common::quick_alerts(&config);
    // Never ran: no RPO alert (its first run is due at once).
    a.notify_all(
        lifeboat_ops::alert::all_rpo_events(&config, Timestamp::now()),
        Timestamp::now(),
    );
    let r = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
    assert_eq!(r.report.outcome, Outcome::Ok);
    let started = r.report.started;
    let later = |h: i64| {
        started
            .checked_add(jiff::SignedDuration::from_hours(h))
            .unwrap()
    };
    for t in [later(0), later(2), later(3)] {
        a.notify_all(lifeboat_ops::alert::all_rpo_events(&config, t), t);
    }
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(1);
    assert_eq!(got.len(), 1, "{got:?}");
    let p = json(&got[0].body);
    assert_eq!(p["condition"], "rpo-breach");
    assert_eq!(p["plan"], "files");
    assert_eq!(p["repository"], "local");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("older than the RPO of 1h"),
        "{p}"
    );
    // A new backup brings it back within the RPO: recovered.
    let r = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
    let t = r.report.started;
    a.notify_all(lifeboat_ops::alert::all_rpo_events(&config, t), t);
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(2);
    assert_eq!(json(&got[1].body)["status"], "recovered");
}

/// A plan (its extra `keys`) run over a text tree, 30% of which a
/// script then encrypts (new extensions), and run again: the second
/// run's report, and the alerts it sent.
async fn encrypted_between_two_runs(
    keys: &str,
) -> (
    Setup,
    lifeboat_ops::report::RunReport,
    Vec<serde_json::Value>,
) {
    let s = Setup::new();
    s.repo("local").await;
    let http = HttpSink::start();
    common::text_tree(&s.path("text"), 100);
    let config = s.config(
        Toml::new()
            .repo("local", "")
            .files("text", "text")
            .plan("text", "text", &["local"], keys)
            .table("alert.ops", &format!("webhook = \"{}/hook\"", http.url())),
    );
    let alerts = common::quick_alerts(&config);
    let options = RunOptions {
        alerts: Some(alerts.clone()),
        ..RunOptions::manual()
    };
    run_plan(&config, "text", &options).await.unwrap();
    common::encrypt_like_ransomware(&s.path("text"), 30);
    let r = run_plan(&config, "text", &options).await.unwrap();
    assert!(alerts.flush(StdDuration::from_secs(60)).await);
    let sent = http
        .received()
        .iter()
        .map(|m| json(&m.body))
        .filter(|p| p["condition"] == "ransomware-suspected")
        .collect();
    (s, r.report, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_run_whose_source_was_encrypted_alerts_ransomware_suspected() {
    let (s, r, sent) = encrypted_between_two_runs("").await;
    assert_eq!(r.outcome, Outcome::Ok, "the backup is kept: {r:#?}");
    let step = &r.steps[0];
    let found = step.suspect.as_ref().unwrap_or_else(|| panic!("{r:#?}"));
    let snapshot = step.snapshot.clone().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let p = &sent[0];
    assert_eq!(p["status"], "problem");
    assert_eq!(p["plan"], "text");
    assert_eq!(p["repository"], "local");
    assert_eq!(p["details"]["snapshot"], snapshot.as_str());
    assert_eq!(p["details"]["protected"], found.protected.as_str());
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "backup {} of plan text to local looks like its source was just encrypted: ",
            &snapshot[..8]
        )),
        "{reason}"
    );
    assert!(reason.contains("no longer compress"), "{reason}");
    assert!(reason.contains("renamed with a new extension"), "{reason}");
    // The step names the tagged snapshot, the one in the repository.
    let storage =
        lifeboat_storage::open_location(&lifeboat_storage::Location::Local(s.path("local")))
            .await
            .unwrap();
    let repo = lifeboat_testkit::repo::reopen(storage).await;
    let snap = repo.find_snapshot(&snapshot).await.unwrap();
    assert!(
        snap.record.tags.iter().any(|t| t == "suspect"),
        "{:?}",
        snap.record.tags
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_s_own_thresholds_decide_and_detection_can_be_switched_off() {
    for keys in ["detect-share = \"40%\"", "detect = false"] {
        let (_s, r, sent) = encrypted_between_two_runs(keys).await;
        assert!(r.steps[0].suspect.is_none(), "{keys}: {r:#?}");
        assert!(sent.is_empty(), "{keys}: {sent:?}");
    }
}

/// A receiver sees each destination's messages in the order they were
/// sent: a condition that flips between problem and recovery many times
/// in a row arrives alternating, never a recovery before its problem
/// (every message had its own task before, and two of them could race;
/// the drill alert test caught one such swap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_gets_its_messages_in_the_order_sent() {
    let s = Setup::new();
    let http = HttpSink::start();
    let config = s.config(format!(
        "{plans}
[alert.ops]
webhook = \"{url}/hook\"
",
        plans = plans(),
        url = http.url()
    ));
    let a = common::quick_alerts(&config);
    let t0 = ts("2026-03-01T10:00:00Z");
    let flips = 40;
    for i in 0..flips {
        let ev = if i % 2 == 0 {
            Event::problem(
                conditions::RUN_FAILED,
                "files",
                "local",
                format!("failed {i}"),
            )
        } else {
            Event::recovered(conditions::RUN_FAILED, "files", "local", format!("ok {i}"))
        };
        a.notify(ev, t0);
    }
    assert!(a.flush(StdDuration::from_secs(60)).await);
    let got = http.wait_for(flips);
    let statuses: Vec<String> = got
        .iter()
        .map(|r| json(&r.body)["status"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..flips)
        .map(|i| if i % 2 == 0 { "problem" } else { "recovered" }.to_string())
        .collect();
    assert_eq!(statuses, expected);
}
