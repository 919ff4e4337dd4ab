//! The RTO in `status` and `/metrics`: the plan's objective against the
//! newest restore drill recorded in the state directory
//! (`drills/<plan>.json`, the seam the drills write to).

mod common;

use common::{Setup, Toml};
use jiff::Timestamp;
use lifeboat_ops::state::{DrillSummary, StateDir};

fn drill(outcome: &str, rto: Option<f64>) -> DrillSummary {
    DrillSummary {
        plan: "files".into(),
        time: "2026-03-01T10:00:00Z".parse().unwrap(),
        outcome: outcome.into(),
        rto_seconds: rto,
        repository: Some("local".into()),
        snapshot: None,
        error: None,
    }
}

#[test]
fn status_shows_the_rto_objective_against_the_newest_drill() {
    let s = Setup::new();
    let config =
        s.config(Toml::local_files("rto = \"30m\"").plan("norto", "files", &["local"], ""));
    let rto = |plan: &str| {
        let st = lifeboat_ops::status::status(&config, Timestamp::now()).unwrap();
        st.plans.into_iter().find(|p| p.plan == plan).unwrap().rto
    };
    let r = rto("files");
    assert_eq!(r.objective_seconds, Some(1800));
    assert_eq!(r.state, "unmeasured");
    assert_eq!(r.measured_seconds, None);
    assert_eq!(rto("norto").state, "no-objective");

    let dir = StateDir::new(&config.state_dir);
    dir.save_drill(&drill("ok", Some(120.5))).unwrap();
    let r = rto("files");
    assert_eq!(r.state, "ok");
    assert_eq!(r.measured_seconds, Some(120.5));
    assert_eq!(r.measured_at, Some("2026-03-01T10:00:00Z".parse().unwrap()));
    let st = lifeboat_ops::status::status(&config, Timestamp::now()).unwrap();
    let metrics = lifeboat_ops::metrics::render(&st);
    assert!(
        metrics.contains("lifeboat_plan_rto_seconds{plan=\"files\"} 1800"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_plan_rto_measured_seconds{plan=\"files\"} 120.5"),
        "{metrics}"
    );

    dir.save_drill(&drill("ok", Some(3600.0))).unwrap();
    assert_eq!(rto("files").state, "exceeded");
    dir.save_drill(&drill("failed", None)).unwrap();
    assert_eq!(rto("files").state, "drill-failed");
    // A drill report with more fields than this shape still reads.
    std::fs::write(
        dir.drill_file("files"),
        r#"{"plan":"files","time":"2026-03-02T10:00:00Z","outcome":"ok","rto_seconds":60,"grade":"sandbox","probes":[]}"#,
    )
    .unwrap();
    assert_eq!(rto("files").state, "ok");
}
