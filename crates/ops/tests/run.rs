//! `run_plan` against real local repositories: backup, copy, retention,
//! verification, the report in the state directory and (encrypted) in the
//! repositories, and `status` computed from what the runs saved.

mod common;

use std::sync::Arc;

use common::{Setup, Toml, two_repos};
use lifeboat_ops::report::{self, Outcome, StepKind};
use lifeboat_ops::state::StateDir;
use lifeboat_ops::status::{Freshness, status};
use lifeboat_ops::{RunOptions, run_plan};
use lifeboat_repo::{LockKind, LockOptions, Repository, RepositoryLock};
use lifeboat_storage::{Location, open_location};
use lifeboat_testkit::repo::PASSWORD;

async fn open(path: &std::path::Path) -> Arc<Repository> {
    let storage = open_location(&Location::Local(path.to_path_buf()))
        .await
        .unwrap();
    Arc::new(Repository::open(storage, PASSWORD).await.unwrap())
}

fn outcome_of(r: &lifeboat_ops::report::RunReport, step: StepKind, repo: &str) -> Outcome {
    r.steps
        .iter()
        .find(|s| s.step == step && s.repository == repo)
        .unwrap_or_else(|| panic!("no {step:?} step for {repo}: {r:#?}"))
        .outcome
}

#[tokio::test]
async fn a_run_backs_up_copies_prunes_verifies_and_records_its_report() {
    let s = Setup::new();
    let local = s.repo("local").await;
    let offsite = s.repo("offsite").await;
    let config = s.config(two_repos());

    let first = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
    let r = &first.report;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert_eq!(outcome_of(r, StepKind::Backup, "local"), Outcome::Ok);
    assert_eq!(outcome_of(r, StepKind::Copy, "offsite"), Outcome::Ok);
    assert_eq!(outcome_of(r, StepKind::Forget, "local"), Outcome::Ok);
    assert_eq!(outcome_of(r, StepKind::Prune, "offsite"), Outcome::Ok);
    assert_eq!(outcome_of(r, StepKind::Verify, "local"), Outcome::Ok);
    assert_eq!(outcome_of(r, StepKind::Verify, "offsite"), Outcome::Ok);
    assert!(r.added_bytes > 0);
    assert_eq!(r.repository_snapshots.get("offsite"), Some(&1));
    assert!(
        first.report_not_stored.is_empty(),
        "{:?}",
        first.report_not_stored
    );

    // The report is in both repositories, readable with the key only.
    for repo in [&local, &offsite] {
        let stored = report::load_all(&*open(repo).await).await.unwrap();
        assert!(stored.iter().any(|x| x.id == r.id), "{}", repo.display());
    }
    let wal_dir = local.join("wal");
    let objects: Vec<_> = std::fs::read_dir(&wal_dir).unwrap().collect();
    assert_eq!(objects.len(), 1);
    let raw = std::fs::read(objects[0].as_ref().unwrap().path()).unwrap();
    assert!(
        !raw.windows(14).any(|w| w == b"\"plan\":\"files\""),
        "the report is stored in plaintext"
    );

    // Second run: verification and prune are not due again this week.
    let second = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
    assert_eq!(second.report.outcome, Outcome::Ok, "{:#?}", second.report);
    assert_eq!(second.report.steps_of(StepKind::Verify).count(), 0);
    assert_eq!(second.report.steps_of(StepKind::Prune).count(), 0);
    assert_eq!(open(&offsite).await.snapshots().await.unwrap().len(), 2);

    // The state directory keeps both runs across a "restart" (a new reader).
    let dir = StateDir::new(s.path("state"));
    assert_eq!(dir.reports("files", 10).unwrap().len(), 2);
    let st = dir.plan("files").unwrap();
    assert_eq!(st.runs.get("ok"), Some(&2));
    assert_eq!(st.last_success, Some(second.report.started));

    // Status: fresh; 3 copies on 2 media with one off-site; no immutable copy.
    let now = jiff::Timestamp::now();
    let status = status(&config, now).unwrap();
    let p = &status.plans[0];
    assert_eq!(p.freshness, Freshness::Ok, "{p:#?}");
    assert!(p.copies.iter().all(|c| c.current));
    let points: Vec<(&str, bool)> = p.rule_321.points.iter().map(|x| (x.rule, x.ok)).collect();
    assert_eq!(
        points,
        vec![
            ("3-copies", true),
            ("2-media", true),
            ("1-offsite", true),
            ("1-immutable", false),
            ("0-errors", true)
        ]
    );
    assert!(p.rule_321.satisfied);
    assert!(!p.rule_321.satisfied_32110);
    assert!(
        p.rule_321.points[3]
            .fix
            .as_deref()
            .unwrap()
            .contains("immutable = true")
    );

    // Two hours later without a run: breached.
    let later = now
        .checked_add(jiff::SignedDuration::from_hours(2))
        .unwrap();
    let p = &lifeboat_ops::status::status(&config, later).unwrap().plans[0];
    assert_eq!(p.freshness, Freshness::Breached);
}

#[tokio::test]
async fn an_unreachable_repository_fails_its_step_and_not_the_other_plan() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(
        Toml::new()
            .repo("local", "")
            .repo("gone", "role = \"offsite\"")
            .files("files", "src")
            .plan("both", "files", &["local", "gone"], "")
            .plan("alone", "files", &["local"], "")
            .daemon(""),
    );
    let both = run_plan(&config, "both", &RunOptions::manual())
        .await
        .unwrap();
    assert_eq!(both.report.outcome, Outcome::Partial, "{:#?}", both.report);
    assert_eq!(
        outcome_of(&both.report, StepKind::Backup, "local"),
        Outcome::Ok
    );
    assert_eq!(
        outcome_of(&both.report, StepKind::Backup, "gone"),
        Outcome::Failed
    );
    assert!(both.report.error.as_deref().unwrap().contains("gone"));
    let alone = run_plan(&config, "alone", &RunOptions::manual())
        .await
        .unwrap();
    assert_eq!(alone.report.outcome, Outcome::Ok);

    let st = status(&config, jiff::Timestamp::now()).unwrap();
    let both = st.plans.iter().find(|p| p.plan == "both").unwrap();
    let gone = both.copies.iter().find(|c| c.repository == "gone").unwrap();
    assert!(!gone.current);
    assert!(gone.last_error.is_some());
    assert!(both.last_failure.as_ref().unwrap().reason.contains("gone"));
    let alone = st.plans.iter().find(|p| p.plan == "alone").unwrap();
    assert_eq!(alone.freshness, Freshness::Ok);
    assert!(alone.last_failure.is_none());
}

#[tokio::test]
async fn a_repository_locked_by_a_prune_is_locked_not_failed() {
    let s = Setup::new();
    let local = s.repo("local").await;
    let config = s.config(Toml::local_files(""));
    let repo = open(&local).await;
    let lock = RepositoryLock::acquire(&repo, LockKind::Exclusive, &LockOptions::default())
        .await
        .unwrap();
    let r = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
    assert_eq!(r.report.outcome, Outcome::Locked, "{:#?}", r.report);
    assert_eq!(r.state.runs.get("locked"), Some(&1));
    assert!(
        r.state.last_failure.is_none(),
        "a lock conflict is not a failure"
    );
    lock.release().await.unwrap();
    let r = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
    assert_eq!(r.report.outcome, Outcome::Ok);
}

#[tokio::test]
async fn a_plan_does_not_run_twice_at_once() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(Toml::local_files(""));
    let dir = StateDir::new(&config.state_dir);
    let held = dir.lock_plan("files").unwrap().expect("free");
    let e = run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap_err();
    assert!(
        matches!(e, lifeboat_ops::Error::AlreadyRunning { .. }),
        "{e}"
    );
    drop(held);
    run_plan(&config, "files", &RunOptions::manual())
        .await
        .unwrap();
}
