//! `doctor` checks that need more than a config: a PostgreSQL cluster that
//! does not archive (a real throwaway cluster), a verification that is
//! stale or found errors, a repository that opens but cannot be written
//! (a read-only tmpfs).

mod common;

use common::{Setup, Toml};
use jiff::Timestamp;
use lifeboat_ops::doctor::{Options, Severity, doctor};
use lifeboat_ops::state::{StateDir, VerifyState};
use lifeboat_testkit::postgres::{PgCluster, PgOptions};

/// A repository line that says where the password's copy is kept (so
/// doctor does not report a password without one).
const SAFE: &str = "password-copy = \"safe\"";

fn checks(r: &lifeboat_ops::doctor::Report) -> Vec<(&'static str, String)> {
    r.gaps
        .iter()
        .map(|g| (g.check, g.subject.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_archiving_is_a_gap() {
    let Some(pg) = PgCluster::start(&PgOptions::default()) else {
        return;
    };
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(
        Toml::new()
            .repo("local", SAFE)
            .table(
                "source.db",
                &format!("type = \"postgres\"\nurl = \"{}\"", pg.url("postgres")),
            )
            .plan("db", "db", &["local"], ""),
    );
    let r = doctor(&config, Timestamp::now(), &Options::default()).await;
    let g = r
        .gaps
        .iter()
        .find(|g| g.check == "postgres-archiving" && g.problem.contains("archive_mode is off"))
        .unwrap_or_else(|| panic!("{:#?}", r.gaps));
    assert_eq!(g.severity, Severity::High);
    assert_eq!(g.subject, "plan db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_failed_verifications_are_gaps() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(
        Toml::new()
            .repo("local", SAFE)
            .files("files", "src")
            .plan("files", "files", &["local"], "")
            .table("plan.files.verify", "schedule = \"0 5 * * 0\""),
    );
    let now = Timestamp::now();
    let r = doctor(&config, now, &Options::default()).await;
    assert!(
        checks(&r).contains(&("verification-stale", "plan files".into())),
        "{:#?}",
        r.gaps
    );
    let dir = StateDir::new(&config.state_dir);
    let mut st = dir.plan("files").unwrap();
    st.last_verify = Some(VerifyState {
        time: now
            .checked_sub(jiff::SignedDuration::from_hours(24 * 40))
            .unwrap(),
        errors: 0,
        failed: vec![],
    });
    dir.save_plan("files", &st).unwrap();
    let r = doctor(&config, now, &Options::default()).await;
    let g = r
        .gaps
        .iter()
        .find(|g| g.check == "verification-stale")
        .unwrap();
    assert!(
        g.problem.contains("no verification for 40d"),
        "{}",
        g.problem
    );
    st.last_verify = Some(VerifyState {
        time: now,
        errors: 3,
        failed: vec![],
    });
    dir.save_plan("files", &st).unwrap();
    let r = doctor(&config, now, &Options::default()).await;
    assert!(!checks(&r).iter().any(|(c, _)| *c == "verification-stale"));
    let g = r
        .gaps
        .iter()
        .find(|g| g.check == "verification-failed")
        .unwrap();
    assert_eq!(g.severity, Severity::High);
    assert!(g.problem.contains("found 3 errors"), "{}", g.problem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_opens_but_cannot_be_written_is_a_gap() {
    let s = Setup::new();
    let Some(fs) = lifeboat_testkit::tmpfs::Tmpfs::mount(
        &s.path("ro"),
        "32m",
        "a_repository_that_opens_but_cannot_be_written_is_a_gap",
    ) else {
        return;
    };
    s.repo("ro/repo").await;
    let config = s.config(
        r#"
state-dir = "state"
[repository.ro]
location = "ro/repo"
password-file = "pw"
password-copy = "safe"
"#,
    );
    let r = doctor(&config, Timestamp::now(), &Options::default()).await;
    assert!(
        !checks(&r)
            .iter()
            .any(|(c, _)| *c == "repository-not-writable"),
        "{:#?}",
        r.gaps
    );
    let out = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = doctor(&config, Timestamp::now(), &Options::default()).await;
    let g = r
        .gaps
        .iter()
        .find(|g| g.check == "repository-not-writable")
        .unwrap_or_else(|| panic!("{:#?}", r.gaps));
    assert_eq!(g.severity, Severity::Critical);
    assert_eq!(g.subject, "repository ro");
    assert_eq!(r.gaps[0].check, "repository-not-writable", "critical first");
}
