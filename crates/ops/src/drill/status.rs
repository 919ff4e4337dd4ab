//! Where a plan's drills stand, from the local drill history alone (no
//! repository is contacted): the newest drill, the newest one whose checks
//! passed, its measured time to a usable copy against the plan's RTO, and
//! when the next scheduled drill is due (`drill.every`). `status`,
//! `/metrics` and the daemon's drill schedule read it.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::DrillOutcome;
use super::history;
use crate::config::PlanConfig;
use crate::state::StateDir;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DrillStatus {
    /// When the newest drill finished, and how.
    pub last: Option<Timestamp>,
    pub last_outcome: Option<DrillOutcome>,
    pub last_error: Option<String>,
    /// Whole duration of the newest drill.
    pub last_duration_ms: Option<u64>,
    /// When the newest drill whose checks passed finished.
    pub last_success: Option<Timestamp>,
    /// Its measured time to a usable copy.
    pub rto_ms: Option<u64>,
    pub rto_objective_seconds: Option<u64>,
    /// Whether that time was within the RTO (none without an objective).
    pub rto_met: Option<bool>,
    /// `drill.every`, and when the next scheduled drill is due.
    pub every_seconds: Option<u64>,
    pub next_due: Option<Timestamp>,
    /// A drill is due by the schedule and none has passed since: the
    /// newest passing drill is older than `every` (or there is none).
    pub overdue: bool,
}

/// When the next scheduled drill of a plan is due: `every` after the
/// newest drill, at once when there was none; none without `every`.
pub fn next_due(plan: &PlanConfig, last: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    let every = plan.drill.every?;
    Some(match last {
        None => now,
        Some(t) => t
            .checked_add(SignedDuration::from_secs(every.seconds() as i64))
            .unwrap_or(Timestamp::MAX),
    })
}

pub fn drill_status(
    state: &StateDir,
    plan_name: &str,
    plan: &PlanConfig,
    now: Timestamp,
) -> DrillStatus {
    let (last, passed) = history::last(state, plan_name);
    let last_time = last.as_ref().map(|r| r.finished);
    let next = next_due(plan, last_time, now);
    let overdue = plan.drill.every.is_some_and(|every| {
        passed
            .as_ref()
            .is_none_or(|p| now.as_second() - p.finished.as_second() > every.seconds() as i64)
    });
    DrillStatus {
        last: last_time,
        last_outcome: last.as_ref().map(|r| r.outcome),
        last_error: last.as_ref().and_then(|r| r.error.clone()),
        last_duration_ms: last.as_ref().map(|r| r.duration_ms),
        last_success: passed.as_ref().map(|r| r.finished),
        rto_ms: passed.as_ref().map(|r| r.rto_ms),
        rto_objective_seconds: plan.rto.map(|d| d.seconds()),
        rto_met: passed
            .as_ref()
            .and_then(|r| plan.rto.map(|o| r.rto_ms <= o.seconds() * 1000)),
        every_seconds: plan.drill.every.map(|d| d.seconds()),
        next_due: next,
        overdue,
    }
}
