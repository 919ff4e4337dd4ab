//! Restore drills: `lifeboat drill PLAN` restores the plan's latest
//! snapshot (or a chosen one, or a point in time) into an isolated scratch
//! place, proves the copy, measures how long a usable copy took (the real
//! RTO, compared with the plan's `rto`) and removes everything it made.
//!
//! - file trees ([`files`]): restore, verify every restored file against
//!   the snapshot's content hashes, then the spot check against the live
//!   source ([`spot`]);
//! - PostgreSQL ([`postgres`]): point-in-time restore into a throwaway
//!   cluster on a free port, `pg_amcheck`, the plan's probes.
//!
//! Every drill follows the same shape, which further sources (MariaDB,
//! SQLite, Redis) fit: take the plan's drill lock, remove what killed
//! drills left ([`scratch::clean_stale`]), open the first reachable
//! repository, pick the snapshot, check the scratch space, restore
//! (phases timed), check (each check a [`Check`]), report, clean up. A
//! failed check is a result ([`DrillOutcome::Failed`]), not an error; an
//! error is what kept the drill from running at all.

pub mod files;
pub mod history;
pub mod postgres;
pub mod scratch;
mod spot;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use lifeboat_repo::{Repository, Snapshot};
use serde::{Deserialize, Serialize};

use crate::config::{Config, PlanConfig, SourceConfig};
use crate::error::{Error, Result};
use crate::state::StateDir;

/// Inputs of [`run_drill`] besides the config.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// Restore this snapshot (id or prefix) instead of the plan's latest.
    pub snapshot: Option<String>,
    /// PostgreSQL: recover to this time instead of the end of the archive.
    pub at: Option<Timestamp>,
    /// Why the drill runs (`manual`, `schedule`).
    pub trigger: Option<crate::report::Trigger>,
    /// Where the drill's events go (`drill-failed`, `drill-rto-missed`
    /// and their recoveries; none: no alerts).
    pub alerts: Option<crate::alert::Alerter>,
    /// "Now" for the alerts (the daemon's clock); none: the system clock.
    pub now: Option<Timestamp>,
}

/// How a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillOutcome {
    /// Every check passed and the usable copy came within the RTO (or the
    /// plan has none).
    Passed,
    /// Every check passed, but the usable copy took longer than the RTO.
    RtoMissed,
    /// A check failed, or the restore did.
    Failed,
}

impl DrillOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillOutcome::Passed => "passed",
            DrillOutcome::RtoMissed => "rto-missed",
            DrillOutcome::Failed => "failed",
        }
    }

    /// The checks passed (whatever the time).
    pub fn checks_passed(self) -> bool {
        self != DrillOutcome::Failed
    }
}

/// One timed phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `open`, `restore`, `recovery`, `verify`, `spot-check`, `amcheck`,
    /// `probes`, `stop`. The removal of the scratch copy comes after the
    /// report ([`DrillResult::cleanup_ms`]).
    pub name: String,
    pub ms: u64,
    /// Whether the phase counts towards the time to a usable copy.
    pub rto: bool,
}

/// One check and what it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The record of one drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// 16 random hex digits.
    pub id: String,
    pub plan: String,
    pub host: String,
    /// `files` or `postgres`.
    pub kind: String,
    pub trigger: crate::report::Trigger,
    pub started: Timestamp,
    pub finished: Timestamp,
    /// Whole drill up to its verdict: the removal of the scratch copy,
    /// which comes after the report, is not included
    /// ([`DrillResult::cleanup_ms`]).
    pub duration_ms: u64,
    /// Time to a usable copy: the phases marked `rto` (opening the
    /// repository, restoring, and for a database its recovery), not the
    /// drill's own checks.
    pub rto_ms: u64,
    pub rto_objective_seconds: Option<u64>,
    pub rto_met: Option<bool>,
    pub outcome: DrillOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time: Option<Timestamp>,
    /// PostgreSQL: the recovery target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub restored_bytes: u64,
    pub restored_files: u64,
    pub phases: Vec<Phase>,
    pub checks: Vec<Check>,
    /// What earlier, killed drills left and this one removed.
    #[serde(default)]
    pub cleaned: scratch::Cleaned,
    /// Why it failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DrillReport {
    pub fn phase_ms(&self, name: &str) -> Option<u64> {
        self.phases.iter().find(|p| p.name == name).map(|p| p.ms)
    }
}

/// Collects phases and checks while a drill runs.
pub(crate) struct Recorder {
    pub report: DrillReport,
    clock: Instant,
    phase: Instant,
}

impl Recorder {
    fn new(plan: &str, kind: &str, p: &PlanConfig, trigger: crate::report::Trigger) -> Self {
        Recorder {
            report: DrillReport {
                id: crate::run::random_id(),
                plan: plan.into(),
                host: crate::run::host(),
                kind: kind.into(),
                trigger,
                started: Timestamp::now(),
                finished: Timestamp::now(),
                duration_ms: 0,
                rto_ms: 0,
                rto_objective_seconds: p.rto.map(|d| d.seconds()),
                rto_met: None,
                outcome: DrillOutcome::Failed,
                repository: None,
                snapshot: None,
                snapshot_time: None,
                target: None,
                restored_bytes: 0,
                restored_files: 0,
                phases: Vec::new(),
                checks: Vec::new(),
                cleaned: Default::default(),
                error: None,
            },
            clock: Instant::now(),
            phase: Instant::now(),
        }
    }

    /// Ends the current phase (started at the previous call).
    pub fn phase(&mut self, name: &str, rto: bool) {
        self.phase_until(name, None, rto);
    }

    /// Ends the current phase at `at` (now when `None`), which must not be
    /// earlier than its start.
    pub fn phase_until(&mut self, name: &str, at: Option<Instant>, rto: bool) {
        let at = at.unwrap_or_else(Instant::now).max(self.phase);
        self.report.phases.push(Phase {
            name: name.into(),
            ms: at.duration_since(self.phase).as_millis() as u64,
            rto,
        });
        self.phase = at;
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.report.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// A failure that ends the drill early (recorded as a failed check).
    pub fn fail(&mut self, name: &str, why: impl Into<String>) {
        let why = why.into();
        self.check(name, false, why);
    }

    fn finish(mut self) -> DrillReport {
        let r = &mut self.report;
        r.rto_ms = r.phases.iter().filter(|p| p.rto).map(|p| p.ms).sum();
        r.duration_ms = self.clock.elapsed().as_millis() as u64;
        r.finished = Timestamp::now();
        let passed = !r.checks.is_empty() && r.checks.iter().all(|c| c.ok);
        r.rto_met = r
            .rto_objective_seconds
            .filter(|_| passed)
            .map(|o| r.rto_ms <= o * 1000);
        r.outcome = match (passed, r.rto_met) {
            (false, _) => DrillOutcome::Failed,
            (true, Some(false)) => DrillOutcome::RtoMissed,
            (true, _) => DrillOutcome::Passed,
        };
        if r.error.is_none() {
            r.error = r
                .checks
                .iter()
                .find(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail));
        }
        self.report
    }
}

/// The scratch root of a plan: `drill.scratch`, else `<state-dir>/drills`.
pub fn scratch_root(config: &Config, plan: &PlanConfig) -> std::path::PathBuf {
    plan.drill
        .scratch
        .clone()
        .unwrap_or_else(|| config.state_dir.join("drills"))
}

/// The first of the plan's repositories (backup targets, then copies)
/// that opens, with its name.
async fn open_first(config: &Config, plan: &PlanConfig) -> Result<(String, Arc<Repository>)> {
    let mut last = None;
    for name in plan.repositories.iter().chain(&plan.copy_to) {
        match crate::repos::open(name, &config.repositories[name]).await {
            Ok(r) => return Ok((name.clone(), r)),
            Err(e) => {
                tracing::warn!("drill: repository {name} does not open: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.expect("a plan has at least one repository"))
}

/// The snapshot to restore: the one asked for, else the plan's newest.
async fn pick_snapshot(
    repo: &Repository,
    repository: &str,
    plan: &str,
    asked: Option<&str>,
) -> Result<Snapshot> {
    let filter = lifeboat_repo::SnapshotFilter {
        tags: vec![crate::run::plan_tag(plan)],
        ..Default::default()
    };
    repo.find_snapshot_matching(asked.unwrap_or("latest"), &filter)
        .await
        .map_err(|source| Error::Repo {
            repository: repository.into(),
            source,
        })
}

/// What [`run_drill`] returns.
#[derive(Debug, Clone)]
pub struct DrillResult {
    pub report: DrillReport,
    /// Why the report could not be stored in the repository, if so.
    pub report_not_stored: Option<String>,
    /// How long removing the scratch copy took, after the verdict (zero
    /// when the verdict callback sees the result: it runs before).
    pub cleanup_ms: u64,
    /// Why the scratch copy could not be removed, if so (the next drill of
    /// the plan removes what is left).
    pub cleanup_error: Option<String>,
}

/// Runs one drill of `plan_name`, stores its report (repository and state
/// directory) and queues its alerts (`options.alerts`): the events of
/// [`crate::alert::drill_events`], or `drill-failed` when the drill could
/// not run at all (but not when another drill of the plan is running).
/// See the module doc for what is an error and what is a recorded
/// failure.
pub async fn run_drill(
    config: &Config,
    plan_name: &str,
    options: &DrillOptions,
) -> Result<DrillResult> {
    run_drill_with(config, plan_name, options, &mut |_| {}).await
}

/// [`run_drill`], calling `on_verdict` with the stored report as soon as
/// the drill has its verdict, before the scratch copy is removed: a user
/// waiting for the answer gets it without waiting for the removal of a
/// restored tree (seconds for a large tree on a slow disk), and the
/// drill's measured time is that of restoring and checking, as for a
/// `restore --verify`. The removal still happens before this returns, with
/// the drill's lock held; its time and any failure are in the result.
pub async fn run_drill_with(
    config: &Config,
    plan_name: &str,
    options: &DrillOptions,
    on_verdict: &mut (dyn FnMut(&DrillResult) + Send),
) -> Result<DrillResult> {
    let result = drill_once(config, plan_name, options, on_verdict).await;
    if let Some(a) = &options.alerts {
        // "Now" on the caller's clock, moved on by the drill's duration.
        let now = |ms: u64| {
            let now = options.now.unwrap_or_else(Timestamp::now);
            now.checked_add(jiff::SignedDuration::from_millis(ms as i64))
                .unwrap_or(now)
        };
        match &result {
            Ok(r) => {
                a.notify_all(
                    crate::alert::drill_events(&r.report),
                    now(r.report.duration_ms),
                );
                if let Some(why) = &r.cleanup_error {
                    a.notify(
                        crate::alert::drill_error_event(plan_name, why),
                        now(r.report.duration_ms + r.cleanup_ms),
                    );
                }
            }
            Err(Error::AlreadyRunning { .. } | Error::UnknownPlan { .. }) => {}
            Err(e) => a.notify(crate::alert::drill_error_event(plan_name, e), now(0)),
        }
    }
    result
}

async fn drill_once(
    config: &Config,
    plan_name: &str,
    options: &DrillOptions,
    on_verdict: &mut (dyn FnMut(&DrillResult) + Send),
) -> Result<DrillResult> {
    let plan = config.plan(plan_name).ok_or_else(|| Error::UnknownPlan {
        name: plan_name.to_string(),
        config: config.path.clone(),
        known: config.plans.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let state = StateDir::new(&config.state_dir);
    let Some(_lock) = state.lock_plan(&scratch::lock_name(plan_name))? else {
        return Err(Error::AlreadyRunning {
            plan: format!("{plan_name} (a drill)"),
            started: "earlier".into(),
        });
    };
    let root = scratch_root(config, plan);
    let cleaned = scratch::clean_stale(&root, plan_name, &state)?;
    let trigger = options.trigger.unwrap_or(crate::report::Trigger::Manual);
    let source = &config.sources[&plan.source];
    let mut rec = Recorder::new(plan_name, source.kind(), plan, trigger);
    rec.report.cleaned = cleaned;
    let mut scratch = scratch::Scratch::create(&root, plan_name, &rec.report.id)?;
    let opened = open_first(config, plan).await;
    let repo = match opened {
        Ok((name, repo)) => {
            rec.report.repository = Some(name.clone());
            let ran = match source {
                SourceConfig::Files {
                    paths,
                    excludes,
                    one_file_system,
                    exclude_caches,
                } => {
                    let live = spot::LiveSource {
                        paths,
                        excludes,
                        one_file_system: *one_file_system,
                        exclude_caches: *exclude_caches,
                    };
                    files::drill(
                        &repo, &name, plan, plan_name, options, &live, &scratch, &mut rec,
                    )
                    .await
                }
                SourceConfig::Postgres { .. } => {
                    postgres::drill(
                        config,
                        &repo,
                        &name,
                        plan,
                        plan_name,
                        options,
                        &mut scratch,
                        &mut rec,
                    )
                    .await
                }
            };
            if let Err(e) = ran {
                rec.fail("drill", e.to_string());
            }
            Some(repo)
        }
        Err(e) => {
            rec.phase("open", true);
            rec.fail("open", e.to_string());
            None
        }
    };
    let report = rec.finish();
    let report_not_stored = match &repo {
        Some(repo) => history::store(repo, &report)
            .await
            .err()
            .map(|e| e.to_string()),
        None => Some("no repository of the plan opened".into()),
    };
    let record = history::record(&state, &report);
    let mut result = DrillResult {
        report,
        report_not_stored,
        cleanup_ms: 0,
        cleanup_error: None,
    };
    if record.is_ok() {
        on_verdict(&result);
    }
    // Cleanup always, whatever happened above, with the lock still held so
    // that the next drill of the plan does not start on a full scratch
    // place.
    let started = Instant::now();
    let dir = scratch.dir.clone();
    if let Err(e) = scratch.remove() {
        result.cleanup_error = Some(format!(
            "could not remove the scratch copy {}: {e} (the next drill of {plan_name} \
             removes it, or remove it by hand)",
            dir.display()
        ));
    }
    result.cleanup_ms = started.elapsed().as_millis() as u64;
    record?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(rto: Option<u64>) -> Recorder {
        let text = format!(
            "[repository.r]\nlocation = \"/r\"\npassword-env = \"P\"\n[source.s]\ntype = \"files\"\npaths = [\"/s\"]\n[plan.p]\nsource = \"s\"\nrepositories = [\"r\"]\nrpo = \"1h\"\n{}",
            rto.map(|s| format!("rto = \"{s}s\"\n")).unwrap_or_default()
        );
        let config = Config::parse(&text, std::path::Path::new("/x.toml")).unwrap();
        Recorder::new(
            "p",
            "files",
            &config.plans["p"],
            crate::report::Trigger::Manual,
        )
    }

    fn with_phases(mut r: Recorder, restore_ms: u64, checks_ms: u64) -> DrillReport {
        r.report.phases = vec![
            Phase {
                name: "restore".into(),
                ms: restore_ms,
                rto: true,
            },
            Phase {
                name: "verify".into(),
                ms: checks_ms,
                rto: false,
            },
        ];
        r.check("content", true, "fine");
        r.finish()
    }

    #[test]
    fn a_drill_that_passes_but_misses_the_rto_is_reported_as_such() {
        let r = with_phases(recorder(Some(60)), 61_000, 5);
        assert_eq!(r.outcome, DrillOutcome::RtoMissed);
        assert_eq!(r.rto_met, Some(false));
        assert_eq!(r.rto_ms, 61_000);
        assert!(r.outcome.checks_passed());
    }

    #[test]
    fn the_drill_s_own_checks_do_not_count_towards_the_rto() {
        let r = with_phases(recorder(Some(60)), 59_000, 120_000);
        assert_eq!(r.outcome, DrillOutcome::Passed);
        assert_eq!(r.rto_met, Some(true));
        assert_eq!(r.rto_ms, 59_000);
    }

    #[test]
    fn without_an_rto_a_passing_drill_passes_and_a_failed_check_fails() {
        let r = with_phases(recorder(None), 10_000_000, 0);
        assert_eq!((r.outcome, r.rto_met), (DrillOutcome::Passed, None));
        let mut rec = recorder(Some(60));
        rec.check("content", true, "fine");
        rec.check("file-data", false, "all differ");
        let r = rec.finish();
        assert_eq!(r.outcome, DrillOutcome::Failed);
        assert_eq!(r.rto_met, None, "a failed drill measured no usable copy");
        assert_eq!(r.error.as_deref(), Some("file-data: all differ"));
    }
}
