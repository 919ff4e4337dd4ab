//! `status`: per plan, the freshness of its data against the RPO, the next
//! run, the last failure, each repository's copy and its age, and the
//! 3-2-1 (and 3-2-1-1-0) evaluation with a fix for every unmet point.
//! Computed from the config and the local state alone (no repository is
//! contacted), so it answers in milliseconds and works while a repository
//! is down: that a repository is failing shows in its last error.
//!
//! Rules (docs/operations.md, "Status"):
//! - freshness: `breached` when the newest successful backup is older than
//!   the RPO (or there is none); `at-risk` when the last run failed, or the
//!   next scheduled run plus the last run's duration would end after the
//!   RPO runs out; else `ok`;
//! - a repository holds a *current copy* when its newest snapshot of the
//!   plan is younger than twice the RPO;
//! - 3 copies counting the source; 2 kinds of media counting the source's
//!   (disk); 1 current copy off-site (role offsite or cold); 1 current copy
//!   immutable or offline (removable, tape, optical); 0 errors in the last
//!   verification, which must have run.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::config::{Config, Media, PlanConfig};
use crate::error::Result;
use crate::report::Outcome;
use crate::state::{Failure, PlanState, StateDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    Ok,
    AtRisk,
    Breached,
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Ok => "ok",
            Freshness::AtRisk => "at-risk",
            Freshness::Breached => "breached",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyStatus {
    pub repository: String,
    pub role: crate::config::Role,
    pub media: Media,
    pub immutable: bool,
    /// `backup` (written by the plan's backup) or `copy` (by copy-to).
    pub via: &'static str,
    pub last_success: Option<Timestamp>,
    pub age_seconds: Option<i64>,
    /// Younger than twice the RPO: counts for 3-2-1.
    pub current: bool,
    pub last_error: Option<Failure>,
}

/// One point of the 3-2-1-1-0 rule.
#[derive(Debug, Clone, Serialize)]
pub struct RulePoint {
    /// `3-copies`, `2-media`, `1-offsite`, `1-immutable`, `0-errors`.
    pub rule: &'static str,
    pub ok: bool,
    /// What was counted.
    pub detail: String,
    /// What to do when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule321 {
    /// 3-2-1 holds (the first three points).
    pub satisfied: bool,
    /// 3-2-1-1-0 holds (all five).
    pub satisfied_32110: bool,
    pub points: Vec<RulePoint>,
}

/// The recovery-time objective against the newest restore drill.
#[derive(Debug, Clone, Serialize)]
pub struct RtoStatus {
    /// The plan's `rto`.
    pub objective_seconds: Option<u64>,
    /// The newest drill's measured restore time.
    pub measured_seconds: Option<f64>,
    pub measured_at: Option<Timestamp>,
    pub drill_outcome: Option<String>,
    /// `ok` (measured within the objective), `exceeded`, `drill-failed`,
    /// `unmeasured` (no drill yet), or `no-objective` (no `rto` set).
    pub state: &'static str,
}

fn rto_status(plan: &PlanConfig, drill: Option<crate::state::DrillSummary>) -> RtoStatus {
    let objective = plan.rto.map(|d| d.seconds());
    let state = match (&drill, objective) {
        (None, None) => "no-objective",
        (None, Some(_)) => "unmeasured",
        (Some(d), _) if d.outcome != "ok" => "drill-failed",
        (Some(d), Some(o)) => match d.rto_seconds {
            Some(m) if m <= o as f64 => "ok",
            Some(_) => "exceeded",
            None => "unmeasured",
        },
        (Some(_), None) => "no-objective",
    };
    RtoStatus {
        objective_seconds: objective,
        measured_seconds: drill.as_ref().and_then(|d| d.rto_seconds),
        measured_at: drill.as_ref().map(|d| d.time),
        drill_outcome: drill.map(|d| d.outcome),
        state,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanStatus {
    pub plan: String,
    pub source: String,
    pub rpo_seconds: u64,
    pub rto_seconds: Option<u64>,
    /// The RTO against the newest restore drill.
    pub rto: RtoStatus,
    pub schedule: String,
    pub freshness: Freshness,
    pub last_success: Option<Timestamp>,
    pub age_seconds: Option<i64>,
    pub next_run: Option<Timestamp>,
    pub last_outcome: Option<Outcome>,
    pub last_duration_ms: Option<u64>,
    pub last_added_bytes: u64,
    pub last_failure: Option<Failure>,
    pub last_verify: Option<crate::state::VerifyState>,
    pub copies: Vec<CopyStatus>,
    pub rule_321: Rule321,
    pub runs: std::collections::BTreeMap<String, u64>,
    /// Snapshots per repository (all plans), as last counted by a run.
    pub repository_snapshots: std::collections::BTreeMap<String, u64>,
    /// The plan's restore drills: the newest, its measured RTO.
    pub drill: crate::drill::status::DrillStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generated: Timestamp,
    pub plans: Vec<PlanStatus>,
    /// The daemon's object-lock retention extensions, per repository that
    /// had one (docs/operations.md, "Object lock").
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lock_extend: std::collections::BTreeMap<String, crate::lockextend::LockExtendState>,
}

/// Status of every plan at `now`.
pub fn status(config: &Config, now: Timestamp) -> Result<Status> {
    let dir = StateDir::new(&config.state_dir);
    let tz = TimeZone::get(&config.daemon.time_zone).unwrap_or(TimeZone::UTC);
    let mut plans = Vec::new();
    for (name, plan) in &config.plans {
        let state = dir.plan(name)?;
        let mut st = plan_status(config, name, plan, &state, now, &tz);
        st.rto = rto_status(plan, dir.last_drill(name));
        st.drill = crate::drill::status::drill_status(&dir, name, plan, now);
        plans.push(st);
    }
    Ok(Status {
        generated: now,
        plans,
        lock_extend: crate::lockextend::all(config),
    })
}

fn age(now: Timestamp, t: Option<Timestamp>) -> Option<i64> {
    t.map(|t| now.as_second() - t.as_second())
}

/// One plan's status from its state.
pub fn plan_status(
    config: &Config,
    name: &str,
    plan: &PlanConfig,
    state: &PlanState,
    now: Timestamp,
    tz: &TimeZone,
) -> PlanStatus {
    let rpo = plan.rpo.seconds() as i64;
    let next_run = plan.schedule.next_after(now, tz);
    let age_s = age(now, state.last_success);
    let last_outcome = state.last_run.as_ref().map(|r| r.outcome);
    let freshness = match (state.last_success, age_s) {
        (Some(last), Some(a)) if a <= rpo => {
            let expires = last.as_second() + rpo;
            let duration = state.last_duration_ms.unwrap_or(0) as i64 / 1000;
            let next_end = next_run.map(|n| n.as_second() + duration);
            let failing = matches!(last_outcome, Some(Outcome::Failed));
            if failing || next_end.is_some_and(|e| e > expires) {
                Freshness::AtRisk
            } else {
                Freshness::Ok
            }
        }
        _ => Freshness::Breached,
    };
    let copies: Vec<CopyStatus> = plan
        .repositories
        .iter()
        .map(|r| (r, "backup"))
        .chain(plan.copy_to.iter().map(|r| (r, "copy")))
        .map(|(r, via)| {
            let rc = &config.repositories[r];
            let rs = state.repositories.get(r).cloned().unwrap_or_default();
            let a = age(now, rs.last_success);
            CopyStatus {
                repository: r.clone(),
                role: rc.role,
                media: rc.media,
                immutable: rc.immutable,
                via,
                last_success: rs.last_success,
                age_seconds: a,
                current: a.is_some_and(|a| a <= 2 * rpo),
                last_error: rs.last_error,
            }
        })
        .collect();
    let rule_321 = rule_321(name, plan, &copies, state);
    PlanStatus {
        plan: name.to_string(),
        source: plan.source.clone(),
        rpo_seconds: plan.rpo.seconds(),
        rto_seconds: plan.rto.map(|d| d.seconds()),
        rto: rto_status(plan, None),
        schedule: plan.schedule.to_string(),
        freshness,
        last_success: state.last_success,
        age_seconds: age_s,
        next_run,
        last_outcome,
        last_duration_ms: state.last_duration_ms,
        last_added_bytes: state.last_added_bytes,
        last_failure: state.last_failure.clone(),
        last_verify: state.last_verify.clone(),
        copies,
        rule_321,
        runs: state.runs.clone(),
        repository_snapshots: state
            .repositories
            .iter()
            .filter_map(|(r, s)| s.snapshots.map(|n| (r.clone(), n)))
            .collect(),
        drill: Default::default(),
    }
}

fn rule_321(name: &str, plan: &PlanConfig, copies: &[CopyStatus], state: &PlanState) -> Rule321 {
    let current: Vec<&CopyStatus> = copies.iter().filter(|c| c.current).collect();
    let stale: Vec<&str> = copies
        .iter()
        .filter(|c| !c.current)
        .map(|c| c.repository.as_str())
        .collect();
    let stale_note = if stale.is_empty() {
        String::new()
    } else {
        format!(
            "; not current (no snapshot within 2 x RPO): {}",
            stale.join(", ")
        )
    };
    let n = 1 + current.len();
    let mut points = vec![RulePoint {
        rule: "3-copies",
        ok: n >= 3,
        detail: format!("{n} copies counting the source{stale_note}"),
        fix: (n < 3).then(|| {
            if stale.is_empty() {
                format!(
                    "add {} more repository to plan.{name}.repositories or plan.{name}.copy-to",
                    3 - n
                )
            } else {
                format!(
                    "make the stale repositories succeed again (see their last error) or add a repository to plan.{name}.copy-to"
                )
            }
        }),
    }];
    let mut media: std::collections::BTreeSet<Media> = current.iter().map(|c| c.media).collect();
    media.insert(Media::Disk); // the source lives on disk
    points.push(RulePoint {
        rule: "2-media",
        ok: media.len() >= 2,
        detail: format!(
            "{} kinds of media: {}",
            media.len(),
            media
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        fix: (media.len() < 2).then(|| {
            format!("add a copy on another kind of medium than disk (object storage, sftp, removable): a repository with media = \"object-store\" in plan.{name}.copy-to")
        }),
    });
    let offsite = current.iter().filter(|c| c.role.is_offsite()).count();
    points.push(RulePoint {
        rule: "1-offsite",
        ok: offsite >= 1,
        detail: format!("{offsite} current off-site copies"),
        fix: (offsite == 0).then(|| {
            format!("add a repository in another place (role = \"offsite\") to plan.{name}.copy-to")
        }),
    });
    let immutable = current
        .iter()
        .filter(|c| c.immutable || c.media.is_offline())
        .count();
    points.push(RulePoint {
        rule: "1-immutable",
        ok: immutable >= 1,
        detail: format!("{immutable} current immutable or offline copies"),
        fix: (immutable == 0).then(|| {
            "keep one copy that ransomware on this machine cannot delete: a bucket with object lock (immutable = true) or a removable disk kept offline (media = \"removable\")".to_string()
        }),
    });
    let (ok0, detail0, fix0) = match (&plan.verify, &state.last_verify) {
        (None, _) => (
            false,
            "no verification configured".to_string(),
            Some(format!(
                "add [plan.{name}.verify] with schedule = \"0 5 * * 0\" and read-data-subset = \"5%\""
            )),
        ),
        (Some(_), None) => (
            false,
            "verification has not run yet".to_string(),
            Some(format!("run `lifeboat run {name}` or wait for the verify schedule")),
        ),
        (Some(_), Some(v)) if v.errors == 0 && v.failed.is_empty() => (
            true,
            format!("last verification {} found 0 errors", v.time),
            None,
        ),
        (Some(_), Some(v)) => (
            false,
            format!(
                "last verification {} found {} errors{}",
                v.time,
                v.errors,
                if v.failed.is_empty() {
                    String::new()
                } else {
                    format!("; could not check {}", v.failed.join(", "))
                }
            ),
            Some("run `lifeboat check --read-data` on the repository named in the run report, then `lifeboat repair index` or a fresh full backup".to_string()),
        ),
    };
    points.push(RulePoint {
        rule: "0-errors",
        ok: ok0,
        detail: detail0,
        fix: fix0,
    });
    let satisfied = points[..3].iter().all(|p| p.ok);
    let satisfied_32110 = points.iter().all(|p| p.ok);
    Rule321 {
        satisfied,
        satisfied_32110,
        points,
    }
}
