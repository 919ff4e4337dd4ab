//! `/metrics`: the status of every plan in the Prometheus / OpenMetrics
//! text format, built with `prometheus-client` from the saved state (the
//! tool's own run log, never a repository scan) at each scrape.
//!
//! Names follow Prometheus conventions: a `lifeboat_` prefix, the unit as
//! suffix (`_seconds`, `_bytes`), `_total` on counters, and low-cardinality
//! labels only (`plan`, `repository`, `outcome`, `rule`). The list is in
//! docs/operations.md ("Metrics").

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::status::{Freshness, Status};

type Labels = Vec<(String, String)>;
type FGauge = Family<Labels, Gauge<f64, AtomicU64>>;
type IGauge = Family<Labels, Gauge>;

fn plan(p: &str) -> Labels {
    vec![("plan".into(), p.into())]
}

/// The text exposition of `status`.
pub fn render(status: &Status) -> String {
    let mut reg = Registry::default();
    let last_success = FGauge::default();
    let rpo = IGauge::default();
    let age = FGauge::default();
    let freshness = IGauge::default();
    let duration = FGauge::default();
    let added = IGauge::default();
    let runs = IGauge::default();
    let next_run = FGauge::default();
    let copy_last = FGauge::default();
    let copy_current = IGauge::default();
    let repo_snapshots = IGauge::default();
    let rule = IGauge::default();
    let rule_point = IGauge::default();
    let verify_errors = IGauge::default();
    let verify_last = FGauge::default();
    let rto = IGauge::default();
    let rto_measured = FGauge::default();
    let drill_success = FGauge::default();
    let drill_duration = FGauge::default();
    let drill_rto = FGauge::default();
    let drill_rto_met = IGauge::default();
    let drill_failed = IGauge::default();
    let drill_overdue = IGauge::default();
    let mut seen_repo = std::collections::BTreeSet::new();
    for p in &status.plans {
        let l = plan(&p.plan);
        if let Some(t) = p.last_success {
            last_success.get_or_create(&l).set(t.as_second() as f64);
        }
        if let Some(a) = p.age_seconds {
            age.get_or_create(&l).set(a as f64);
        }
        rpo.get_or_create(&l).set(p.rpo_seconds as i64);
        if let Some(o) = p.rto.objective_seconds {
            rto.get_or_create(&l).set(o as i64);
        }
        if let Some(m) = p.rto.measured_seconds {
            rto_measured.get_or_create(&l).set(m);
        }
        for f in [Freshness::Ok, Freshness::AtRisk, Freshness::Breached] {
            let mut l2 = l.clone();
            l2.push(("state".into(), f.as_str().into()));
            freshness
                .get_or_create(&l2)
                .set(i64::from(p.freshness == f));
        }
        if let Some(d) = p.last_duration_ms {
            duration.get_or_create(&l).set(d as f64 / 1000.0);
        }
        added.get_or_create(&l).set(p.last_added_bytes as i64);
        for (outcome, n) in &p.runs {
            let mut l2 = l.clone();
            l2.push(("outcome".into(), outcome.clone()));
            runs.get_or_create(&l2).set(*n as i64);
        }
        if let Some(t) = p.next_run {
            next_run.get_or_create(&l).set(t.as_second() as f64);
        }
        for c in &p.copies {
            let mut l2 = l.clone();
            l2.push(("repository".into(), c.repository.clone()));
            if let Some(t) = c.last_success {
                copy_last.get_or_create(&l2).set(t.as_second() as f64);
            }
            copy_current.get_or_create(&l2).set(i64::from(c.current));
        }
        for (repo, n) in &p.repository_snapshots {
            if seen_repo.insert(repo.clone()) {
                repo_snapshots
                    .get_or_create(&vec![("repository".into(), repo.clone())])
                    .set(*n as i64);
            }
        }
        let mut l2 = l.clone();
        l2.push(("rule".into(), "3-2-1".into()));
        rule.get_or_create(&l2).set(i64::from(p.rule_321.satisfied));
        let mut l2 = l.clone();
        l2.push(("rule".into(), "3-2-1-1-0".into()));
        rule.get_or_create(&l2)
            .set(i64::from(p.rule_321.satisfied_32110));
        for point in &p.rule_321.points {
            let mut l2 = l.clone();
            l2.push(("point".into(), point.rule.into()));
            rule_point.get_or_create(&l2).set(i64::from(point.ok));
        }
        let d = &p.drill;
        if let Some(t) = d.last_success {
            drill_success.get_or_create(&l).set(t.as_second() as f64);
        }
        if let Some(ms) = d.last_duration_ms {
            drill_duration.get_or_create(&l).set(ms as f64 / 1000.0);
        }
        if let Some(ms) = d.rto_ms {
            drill_rto.get_or_create(&l).set(ms as f64 / 1000.0);
        }
        if let Some(met) = d.rto_met {
            drill_rto_met.get_or_create(&l).set(i64::from(met));
        }
        if let Some(o) = d.last_outcome {
            drill_failed
                .get_or_create(&l)
                .set(i64::from(!o.checks_passed()));
        }
        if d.every_seconds.is_some() {
            drill_overdue.get_or_create(&l).set(i64::from(d.overdue));
        }
        if let Some(v) = &p.last_verify {
            verify_errors.get_or_create(&l).set(v.errors as i64);
            verify_last.get_or_create(&l).set(v.time.as_second() as f64);
        }
    }
    reg.register_with_unit(
        "lifeboat_plan_last_success_timestamp",
        "Start time of the newest backup of the plan that reached a repository",
        Unit::Seconds,
        last_success,
    );
    reg.register_with_unit(
        "lifeboat_plan_age",
        "Age of the newest successful backup of the plan",
        Unit::Seconds,
        age,
    );
    reg.register_with_unit(
        "lifeboat_plan_rpo",
        "Recovery-point objective of the plan",
        Unit::Seconds,
        rpo,
    );
    reg.register_with_unit(
        "lifeboat_plan_rto",
        "Recovery-time objective of the plan",
        Unit::Seconds,
        rto,
    );
    reg.register_with_unit(
        "lifeboat_plan_rto_measured",
        "Restore time measured by the plan's newest restore drill",
        Unit::Seconds,
        rto_measured,
    );
    reg.register(
        "lifeboat_plan_freshness",
        "1 for the plan's freshness state (ok, at-risk, breached), 0 for the others",
        freshness,
    );
    reg.register_with_unit(
        "lifeboat_plan_duration",
        "Duration of the newest successful run of the plan",
        Unit::Seconds,
        duration,
    );
    reg.register_with_unit(
        "lifeboat_plan_added",
        "Stored bytes the newest successful backup added, summed over repositories",
        Unit::Bytes,
        added,
    );
    // A gauge, not a counter: `promtool check metrics` reads the classic
    // text format, where an OpenMetrics counter's family name (without
    // `_total`) does not match its samples; and the count restarts with
    // the state directory.
    reg.register(
        "lifeboat_plan_runs",
        "Runs of the plan by outcome, as recorded in the state directory",
        runs,
    );
    reg.register_with_unit(
        "lifeboat_plan_next_run_timestamp",
        "When the plan's next scheduled run is due",
        Unit::Seconds,
        next_run,
    );
    reg.register_with_unit(
        "lifeboat_plan_copy_last_success_timestamp",
        "Start time of the newest backup of the plan held by the repository",
        Unit::Seconds,
        copy_last,
    );
    reg.register(
        "lifeboat_plan_copy_current",
        "1 when the repository's copy of the plan is younger than twice the RPO",
        copy_current,
    );
    reg.register(
        "lifeboat_repository_snapshots",
        "Snapshots in the repository at the end of the last run that reached it",
        repo_snapshots,
    );
    reg.register(
        "lifeboat_rule_321_satisfied",
        "1 when the plan's copies meet the rule (3-2-1 or 3-2-1-1-0)",
        rule,
    );
    reg.register(
        "lifeboat_rule_321_point_satisfied",
        "1 when the point of the 3-2-1-1-0 rule is met for the plan",
        rule_point,
    );
    reg.register(
        "lifeboat_plan_verify_errors",
        "Problems found by the plan's newest verification",
        verify_errors,
    );
    reg.register_with_unit(
        "lifeboat_plan_verify_last_timestamp",
        "Time of the plan's newest verification",
        Unit::Seconds,
        verify_last,
    );
    reg.register_with_unit(
        "lifeboat_drill_last_success_timestamp",
        "When the plan's newest restore drill whose checks passed finished",
        Unit::Seconds,
        drill_success,
    );
    reg.register_with_unit(
        "lifeboat_drill_duration",
        "Duration of the plan's newest restore drill up to its verdict (the removal of its scratch copy after it is not included)",
        Unit::Seconds,
        drill_duration,
    );
    reg.register_with_unit(
        "lifeboat_drill_rto_measured",
        "Time to a usable copy measured by the plan's newest passing drill",
        Unit::Seconds,
        drill_rto,
    );
    reg.register(
        "lifeboat_drill_rto_met",
        "1 when the newest passing drill's time to a usable copy was within the plan's RTO",
        drill_rto_met,
    );
    reg.register(
        "lifeboat_drill_last_failed",
        "1 when the plan's newest restore drill failed its checks or its restore",
        drill_failed,
    );
    reg.register(
        "lifeboat_drill_overdue",
        "1 when no restore drill of the plan passed within drill.every (plans with drill.every)",
        drill_overdue,
    );
    let lock_success = FGauge::default();
    let lock_until = FGauge::default();
    let lock_failing = IGauge::default();
    for (repo, l) in &status.lock_extend {
        if l.not_locked {
            continue;
        }
        let labels = vec![("repository".to_string(), repo.clone())];
        if let Some(t) = l.last_success {
            lock_success
                .get_or_create(&labels)
                .set(t.as_second() as f64);
        }
        if let Some(t) = l
            .until
            .as_deref()
            .and_then(|u| u.parse::<jiff::Timestamp>().ok())
        {
            lock_until.get_or_create(&labels).set(t.as_second() as f64);
        }
        lock_failing
            .get_or_create(&labels)
            .set(i64::from(l.error.is_some()));
    }
    reg.register_with_unit(
        "lifeboat_lock_extend_last_success_timestamp",
        "When the daemon last extended the object-lock retention of everything current in the repository",
        Unit::Seconds,
        lock_success,
    );
    reg.register_with_unit(
        "lifeboat_lock_extend_until_timestamp",
        "Every current object of the repository is locked at least until this time",
        Unit::Seconds,
        lock_until,
    );
    reg.register(
        "lifeboat_lock_extend_failing",
        "1 when the daemon's newest object-lock extension of the repository failed",
        lock_failing,
    );
    let info = IGauge::default();
    info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
        .set(1);
    reg.register("lifeboat_build_info", "The lifeboat version serving", info);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
