//! One run of a plan: backup (one read of the source, fanned out to the
//! plan's repositories), copies to `copy-to`, retention when its schedule
//! says so (forget with the plan's keep rules, then prune), verification
//! when due (`check`, optionally reading a share of the packs); then the
//! run report, saved in the state directory and in every repository the
//! run could reach.
//!
//! A step that fails is recorded and the run goes on where that makes
//! sense (a repository that is down does not stop the others); a
//! repository held by another process's lock is [`Outcome::Locked`], not a
//! failure, and the daemon tries the plan again later. The run itself
//! returns an error only when it cannot start (config, state directory) or
//! the plan is already running.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::retention::{ForgetOptions, RetentionPolicy, SnapshotFilter, forget};
use lifeboat_repo::{BackupMode, CheckOptions, CopyOptions, Repository};
use lifeboat_snapshot::backup::{BackupOptions, backup_many};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_storage::ErrorClass;
use tokio_util::sync::CancellationToken;

use crate::alert::{Alerter, Ping};
use crate::config::{Config, PlanConfig, SourceConfig};
use crate::error::{Error, Result};
use crate::report::{Outcome, RunReport, StepKind, StepReport, Trigger};
use crate::state::{PlanState, StateDir};

/// The tag every snapshot of a plan carries, so retention and copies pick
/// the plan's snapshots and no one else's.
pub fn plan_tag(plan: &str) -> String {
    format!("plan:{plan}")
}

/// Inputs of [`run_plan`] besides the config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub trigger: Trigger,
    /// "Now" for the decisions (which mode, whether prune and verification
    /// are due): the daemon's clock, so tests can move it.
    pub now: Timestamp,
    /// Cancelled on shutdown: the run stops between steps (a backup in
    /// flight is abandoned: no snapshot is written, its lock released).
    pub cancel: CancellationToken,
    /// Where the run's pings and events go (none: no alerts).
    pub alerts: Option<Alerter>,
}

impl RunOptions {
    pub fn manual() -> Self {
        RunOptions {
            trigger: Trigger::Manual,
            now: Timestamp::now(),
            cancel: CancellationToken::new(),
            alerts: None,
        }
    }
}

/// What [`run_plan`] returns: the report and the plan's state after it.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub report: RunReport,
    pub state: PlanState,
    /// Repositories where the report could not be stored (name, reason).
    pub report_not_stored: Vec<(String, String)>,
}

pub(crate) fn host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn random_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The backup mode due at `now`: full when the plan's `mode.full` schedule
/// had a slot since the last full backup, differential likewise since the
/// last full or differential one, else incremental.
pub fn mode_due(plan: &PlanConfig, state: &PlanState, now: Timestamp, tz: &TimeZone) -> BackupMode {
    if let Some(full) = &plan.mode.full
        && full.due(state.last_full, now, tz)
    {
        return BackupMode::Full;
    }
    if let Some(diff) = &plan.mode.differential {
        let since = match (state.last_full, state.last_differential) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if diff.due(since, now, tz) {
            return BackupMode::Differential;
        }
    }
    BackupMode::Incremental
}

fn time_zone(config: &Config) -> TimeZone {
    TimeZone::get(&config.daemon.time_zone).unwrap_or(TimeZone::UTC)
}

fn classify(class: ErrorClass) -> Outcome {
    if class == ErrorClass::Locked {
        Outcome::Locked
    } else {
        Outcome::Failed
    }
}

struct Steps {
    steps: Vec<StepReport>,
}

impl Steps {
    fn push(
        &mut self,
        step: StepKind,
        repository: &str,
        started: Timestamp,
        outcome: Outcome,
        error: Option<String>,
    ) -> &mut StepReport {
        self.steps.push(StepReport {
            step,
            repository: repository.to_string(),
            outcome,
            started,
            finished: Timestamp::now(),
            snapshot: None,
            added_bytes: 0,
            count: 0,
            error,
            suspect: None,
        });
        self.steps.last_mut().expect("just pushed")
    }

    /// A failed step, its outcome derived from the error's class.
    fn push_error(
        &mut self,
        step: StepKind,
        repository: &str,
        started: Timestamp,
        class: ErrorClass,
        error: &dyn std::fmt::Display,
    ) {
        self.push(
            step,
            repository,
            started,
            classify(class),
            Some(error.to_string()),
        );
    }

    /// The same failure for every repository of a step that ran for all of
    /// them at once (one read of the source, fanned out).
    fn fail_all(
        &mut self,
        step: StepKind,
        repositories: &[&String],
        started: Timestamp,
        outcome: Outcome,
        error: &str,
    ) {
        for r in repositories {
            self.push(step, r, started, outcome, Some(error.to_string()));
        }
    }

    /// A backup to `targets` that did not finish: stopped by a shutdown
    /// (`None`) or failed with an error (its class and the error).
    fn backup_not_done(
        &mut self,
        targets: &[&String],
        started: Timestamp,
        error: Option<(ErrorClass, &dyn std::fmt::Display)>,
    ) {
        match error {
            None => self.fail_all(
                StepKind::Backup,
                targets,
                started,
                Outcome::Failed,
                STOPPED_DURING_BACKUP,
            ),
            Some((class, e)) => self.fail_all(
                StepKind::Backup,
                targets,
                started,
                classify(class),
                &e.to_string(),
            ),
        }
    }
}

/// The failure recorded for a backup stopped by SIGTERM/SIGINT: the
/// snapshot record is written last, so nothing of it is visible.
const STOPPED_DURING_BACKUP: &str =
    "stopped: lifeboat was shut down during the backup (no snapshot written)";

/// Runs `plan` once. See the module doc for what is an error and what is
/// a recorded outcome.
pub async fn run_plan(config: &Config, plan_name: &str, options: &RunOptions) -> Result<RunResult> {
    let plan = config.plan(plan_name).ok_or_else(|| Error::UnknownPlan {
        name: plan_name.to_string(),
        config: config.path.clone(),
        known: config.plans.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let state_dir = StateDir::new(&config.state_dir);
    let Some(_lock) = state_dir.lock_plan(plan_name)? else {
        let started = state_dir
            .plan(plan_name)
            .ok()
            .and_then(|s| s.last_run.map(|r| r.finished.to_string()))
            .unwrap_or_else(|| "earlier".into());
        return Err(Error::AlreadyRunning {
            plan: plan_name.to_string(),
            started,
        });
    };
    let state = state_dir.plan(plan_name)?;
    if let Some(a) = &options.alerts {
        a.ping(plan_name, Ping::Start);
    }
    let tz = time_zone(config);
    let started = Timestamp::now();
    let clock = Instant::now();
    let mut steps = Steps { steps: Vec::new() };
    let mode = mode_due(plan, &state, options.now, &tz);
    let source = &config.sources[&plan.source];
    let host = host();
    let tag = plan_tag(plan_name);

    // Open every repository of the plan (backup targets and copy targets).
    let names: Vec<&String> = plan.repositories.iter().chain(&plan.copy_to).collect();
    let opened = futures::future::join_all(
        names
            .iter()
            .map(|n| crate::repos::open(n, &config.repositories[*n])),
    )
    .await;
    let mut repos: std::collections::BTreeMap<String, Arc<Repository>> = Default::default();
    let mut open_errors: std::collections::BTreeMap<String, Error> = Default::default();
    for (n, r) in names.iter().zip(opened) {
        match r {
            Ok(r) => {
                repos.insert((*n).clone(), r);
            }
            Err(e) => {
                open_errors.insert((*n).clone(), e);
            }
        }
    }

    // Backup.
    let mut read_bytes = 0;
    let mut backed_up: Vec<String> = Vec::new();
    let targets: Vec<&String> = plan
        .repositories
        .iter()
        .filter(|n| repos.contains_key(*n))
        .collect();
    for n in &plan.repositories {
        if let Some(e) = open_errors.get(n) {
            steps.push_error(StepKind::Backup, n, started, e.class(), &e);
        }
    }
    if !targets.is_empty() && !options.cancel.is_cancelled() {
        let mut tags = plan.tags.clone();
        tags.push(tag.clone());
        match source {
            SourceConfig::Files {
                paths,
                excludes,
                one_file_system,
                exclude_caches,
            } => {
                let bo = BackupOptions {
                    paths: paths.clone(),
                    excludes: excludes.clone(),
                    exclude_caches: *exclude_caches,
                    one_file_system: *one_file_system,
                    tags,
                    host: Some(host.clone()),
                    mode,
                    ..Default::default()
                };
                let list: Vec<Arc<Repository>> =
                    targets.iter().map(|n| repos[*n].clone()).collect();
                let t0 = Timestamp::now();
                let result = tokio::select! {
                    r = backup_many(list, &bo, Arc::new(NoProgress)) => Some(r),
                    _ = options.cancel.cancelled() => None,
                };
                match result {
                    None => steps.backup_not_done(&targets, t0, None),
                    Some(Err(e)) => steps.backup_not_done(&targets, t0, Some((e.class(), &e))),
                    Some(Ok(outcomes)) => {
                        for (n, o) in targets.iter().zip(outcomes) {
                            match o {
                                Ok(o) => {
                                    let r = &o.snapshot.record;
                                    read_bytes = read_bytes.max(r.summary.read_bytes);
                                    let outcome = if r.partial {
                                        Outcome::Partial
                                    } else {
                                        Outcome::Ok
                                    };
                                    let error = r.partial.then(|| {
                                        format!(
                                            "{} files could not be read: {}",
                                            r.summary.errors,
                                            o.warnings.first().cloned().unwrap_or_default()
                                        )
                                    });
                                    let suspect = match &plan.detect {
                                        Some(d) => detect(&repos[*n], n, &o.snapshot, d).await,
                                        None => None,
                                    };
                                    let s = steps.push(StepKind::Backup, n, t0, outcome, error);
                                    s.snapshot = Some(match &suspect {
                                        Some((id, _)) => id.clone(),
                                        None => o.snapshot.id.to_hex(),
                                    });
                                    s.suspect = suspect.map(|(_, found)| found);
                                    s.added_bytes = r.summary.added_bytes;
                                    s.count = r.summary.errors;
                                    backed_up.push((*n).clone());
                                }
                                Err(e) => {
                                    steps.push_error(StepKind::Backup, n, t0, e.class(), &e);
                                }
                            }
                        }
                    }
                }
            }
            SourceConfig::Postgres { url } => {
                // pg_basebackup reads the cluster once into the first
                // reachable repository; the others get it by copy below
                // (with the WAL the base backup needs).
                let first = targets[0];
                let t0 = Timestamp::now();
                let bo = lifeboat_connectors::postgres::base::BaseBackupOptions {
                    conn: lifeboat_connectors::postgres::conn::ConnOptions { url: url.clone() },
                    mode,
                    tags,
                    host: Some(host.clone()),
                    ..Default::default()
                };
                let result = tokio::select! {
                    r = lifeboat_connectors::postgres::base::base_backup(repos[first].clone(), &bo, Arc::new(|_| {})) => Some(r),
                    _ = options.cancel.cancelled() => None,
                };
                match result {
                    Some(Ok((snap, _))) => {
                        read_bytes = snap.record.summary.read_bytes;
                        let s = steps.push(StepKind::Backup, first, t0, Outcome::Ok, None);
                        s.snapshot = Some(snap.id.to_hex());
                        s.added_bytes = snap.record.summary.added_bytes;
                        backed_up.push(first.clone());
                        for n in targets.iter().skip(1) {
                            let s = copy_one(&repos[first], &repos[*n], &tag, n).await;
                            let mut s = s;
                            s.step = StepKind::Backup;
                            if matches!(s.outcome, Outcome::Ok) {
                                backed_up.push((*n).clone());
                            }
                            steps.steps.push(s);
                        }
                    }
                    Some(Err(e)) => steps.backup_not_done(&targets, t0, Some((e.class(), &e))),
                    None => steps.backup_not_done(&targets, t0, None),
                }
            }
        }
    }

    // Copies: from the first repository the backup reached.
    for n in &plan.copy_to {
        let t0 = Timestamp::now();
        if let Some(e) = open_errors.get(n) {
            steps.push_error(StepKind::Copy, n, t0, e.class(), &e);
            continue;
        }
        match backed_up.first() {
            _ if options.cancel.is_cancelled() => {
                steps.push(
                    StepKind::Copy,
                    n,
                    t0,
                    Outcome::Skipped,
                    Some("shutting down".into()),
                );
            }
            Some(from) => {
                let s = copy_one(&repos[from], &repos[n], &tag, n).await;
                steps.steps.push(s);
            }
            None => {
                steps.push(
                    StepKind::Copy,
                    n,
                    t0,
                    Outcome::Skipped,
                    Some("no repository got the backup to copy from".into()),
                );
            }
        }
    }

    // Retention: forget with the plan's rules, then prune, when due.
    if let Some(ret) = &plan.retention
        && ret.prune.due(state.last_prune, options.now, &tz)
        && !options.cancel.is_cancelled()
    {
        let policy = RetentionPolicy {
            keep_last: ret.keep_last,
            keep_hourly: ret.keep_hourly,
            keep_daily: ret.keep_daily,
            keep_weekly: ret.keep_weekly,
            keep_monthly: ret.keep_monthly,
            keep_yearly: ret.keep_yearly,
            keep_within: ret
                .keep_within
                .map(|d| jiff::SignedDuration::from_secs(d.seconds() as i64)),
            keep_tags: ret.keep_tags.clone(),
        };
        let fo = ForgetOptions {
            dry_run: false,
            allow_empty_source: false,
            filter: SnapshotFilter {
                tags: vec![tag.clone()],
                ..Default::default()
            },
        };
        for (n, repo) in &repos {
            let t0 = Timestamp::now();
            match forget(repo, &policy, &fo).await {
                Ok(r) => {
                    steps.push(StepKind::Forget, n, t0, Outcome::Ok, None).count = r.removed as u64;
                }
                Err(e) => {
                    steps.push_error(StepKind::Forget, n, t0, e.class(), &e);
                    continue;
                }
            }
            let t0 = Timestamp::now();
            let po = PruneOptions {
                archive: Some(lifeboat_connectors::archive_rules()),
                ..Default::default()
            };
            match prune(repo, &po).await {
                Ok(p) => {
                    steps.push(StepKind::Prune, n, t0, Outcome::Ok, None).count =
                        p.packs_deleted as u64;
                }
                Err(e) => {
                    steps.push_error(StepKind::Prune, n, t0, e.class(), &e);
                }
            }
        }
    }

    // Verification when due.
    if let Some(v) = &plan.verify
        && v.schedule
            .due(state.last_verify.as_ref().map(|v| v.time), options.now, &tz)
        && !options.cancel.is_cancelled()
    {
        let co = CheckOptions {
            read_data: v.read_data_percent > 0.0,
            read_data_subset_percent: (v.read_data_percent > 0.0 && v.read_data_percent < 100.0)
                .then_some(v.read_data_percent),
        };
        for n in names.iter() {
            let t0 = Timestamp::now();
            let Some(repo) = repos.get(*n) else {
                let e = &open_errors[*n];
                steps.push_error(StepKind::Verify, n, t0, e.class(), &e);
                continue;
            };
            match lifeboat_repo::check(repo, &co, &|_, _| {}).await {
                Ok(r) if r.errors.is_empty() => {
                    steps.push(StepKind::Verify, n, t0, Outcome::Ok, None);
                }
                Ok(r) => {
                    let first = &r.errors[0];
                    let msg = format!(
                        "{} problems, first: {}: {}",
                        r.errors.len(),
                        first.object,
                        first.message
                    );
                    steps
                        .push(StepKind::Verify, n, t0, Outcome::Failed, Some(msg))
                        .count = r.errors.len() as u64;
                }
                Err(e) => {
                    steps.push_error(StepKind::Verify, n, t0, e.class(), &e);
                }
            }
        }
    }

    let steps = steps.steps;
    let backups: Vec<&StepReport> = steps
        .iter()
        .filter(|s| s.step == StepKind::Backup)
        .collect();
    let any_backup = backups
        .iter()
        .any(|s| matches!(s.outcome, Outcome::Ok | Outcome::Partial));
    let all_locked = !backups.is_empty() && backups.iter().all(|s| s.outcome == Outcome::Locked);
    let problems = steps.iter().any(|s| {
        matches!(
            s.outcome,
            Outcome::Failed | Outcome::Partial | Outcome::Locked
        )
    });
    let outcome = if all_locked {
        Outcome::Locked
    } else if !any_backup {
        Outcome::Failed
    } else if problems {
        Outcome::Partial
    } else {
        Outcome::Ok
    };
    let error = steps
        .iter()
        .find(|s| {
            matches!(
                s.outcome,
                Outcome::Failed | Outcome::Locked | Outcome::Partial
            )
        })
        .map(|s| {
            format!(
                "{} {}: {}",
                step_name(s.step),
                s.repository,
                s.error.clone().unwrap_or_default()
            )
        });
    let mut repository_snapshots = std::collections::BTreeMap::new();
    for (n, repo) in &repos {
        if let Ok(s) = repo.snapshots().await {
            repository_snapshots.insert(n.clone(), s.len() as u64);
        }
    }
    let report = RunReport {
        repository_snapshots,
        id: random_id(),
        plan: plan_name.to_string(),
        host,
        trigger: options.trigger,
        started,
        finished: Timestamp::now(),
        duration_ms: clock.elapsed().as_millis() as u64,
        outcome,
        mode: Some(mode.to_string()),
        added_bytes: steps
            .iter()
            .filter(|s| s.step == StepKind::Backup)
            .map(|s| s.added_bytes)
            .sum(),
        read_bytes,
        steps,
        error,
    };
    let mut report_not_stored = Vec::new();
    for (n, repo) in &repos {
        if let Err(e) = crate::report::store(repo, &report).await {
            report_not_stored.push((n.clone(), e.to_string()));
        }
    }
    let state = state_dir.record(&report)?;
    if let Some(a) = &options.alerts {
        send_alerts(a, config, &report, &state, options);
    }
    Ok(RunResult {
        report,
        state,
        report_not_stored,
    })
}

/// The run's end ping and its events (queued: delivery is off this path).
/// A run stopped by shutdown raises no event (the next run decides).
fn send_alerts(
    a: &Alerter,
    config: &Config,
    report: &RunReport,
    state: &PlanState,
    options: &RunOptions,
) {
    let plan = &report.plan;
    let why = || {
        report
            .error
            .clone()
            .unwrap_or_else(|| "see the run report".into())
    };
    if options.cancel.is_cancelled() {
        a.ping(plan, Ping::Log(format!("stopped by shutdown: {}", why())));
        return;
    }
    a.ping(
        plan,
        match report.outcome {
            Outcome::Ok | Outcome::Skipped => Ping::Success,
            Outcome::Failed | Outcome::Partial => Ping::Fail(why()),
            Outcome::Locked => Ping::Log(format!("not run, will retry: {}", why())),
        },
    );
    // "Now" on the caller's clock (the daemon's may be a test's).
    let now = options
        .now
        .checked_add(jiff::SignedDuration::from_millis(report.duration_ms as i64))
        .unwrap_or(options.now);
    a.notify_all(crate::alert::run_events(config, report, state, now), now);
}

pub fn step_name(k: StepKind) -> &'static str {
    match k {
        StepKind::Backup => "backup",
        StepKind::Copy => "copy",
        StepKind::Forget => "forget",
        StepKind::Prune => "prune",
        StepKind::Verify => "verify",
    }
}

/// Ransomware detection of a new snapshot (lifeboat_snapshot::detect):
/// when it looks like an encryption event, the snapshot is tagged
/// `suspect` (under a new id, returned) and its parent protected. A check
/// that cannot run is logged, never fails the backup.
async fn detect(
    repo: &Arc<Repository>,
    repository: &str,
    snapshot: &lifeboat_repo::Snapshot,
    config: &crate::config::DetectConfig,
) -> Option<(String, crate::report::Suspect)> {
    match lifeboat_snapshot::detect::check(repo, snapshot, &config.options()).await {
        Ok(Some(found)) => Some((
            found.response.snapshot.id.to_hex(),
            crate::report::Suspect {
                signals: found.detection.reasons,
                protected: found.response.protected.to_hex(),
                protected_until: found.response.protected_until,
                examples: found.detection.examples,
            },
        )),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("the ransomware check of the backup to {repository} could not run: {e}");
            None
        }
    }
}

struct NoCopyProgress;
impl lifeboat_repo::CopyProgress for NoCopyProgress {}

/// Copies every snapshot of the plan (its tag) that `to` lacks.
async fn copy_one(
    from: &Arc<Repository>,
    to: &Arc<Repository>,
    tag: &str,
    to_name: &str,
) -> StepReport {
    let t0 = Timestamp::now();
    let mut step = StepReport {
        step: StepKind::Copy,
        repository: to_name.to_string(),
        outcome: Outcome::Ok,
        started: t0,
        finished: t0,
        snapshot: None,
        added_bytes: 0,
        count: 0,
        error: None,
        suspect: None,
    };
    let ids = match from.snapshots().await {
        Ok(all) => all
            .iter()
            .filter(|s| s.record.tags.iter().any(|t| t == tag))
            .map(|s| s.id.to_hex())
            .collect::<Vec<_>>(),
        Err(e) => {
            step.outcome = classify(e.class());
            step.error = Some(format!("reading the snapshots to copy: {e}"));
            step.finished = Timestamp::now();
            return step;
        }
    };
    if ids.is_empty() {
        step.outcome = Outcome::Skipped;
        step.error = Some("no snapshot of the plan to copy".into());
        step.finished = Timestamp::now();
        return step;
    }
    let last = ids.last().cloned();
    let co = CopyOptions {
        snapshots: ids,
        archive: Some(lifeboat_connectors::archive_rules()),
        ..Default::default()
    };
    match lifeboat_repo::copy(from, to, &co, &NoCopyProgress).await {
        Ok(stats) => {
            step.added_bytes = stats.added_bytes;
            step.count = stats.snapshots_copied;
            step.snapshot = stats.copied.last().map(|c| c.target.clone()).or(last);
        }
        Err(e) => {
            step.outcome = classify(e.class());
            step.error = Some(e.to_string());
        }
    }
    step.finished = Timestamp::now();
    step
}
