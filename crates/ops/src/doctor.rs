//! `lifeboat doctor`: audits a setup (the config, its repositories, the
//! saved state, PostgreSQL's archiver) and lists the gaps, most dangerous
//! first, each with its fix. A healthy setup gets an empty list.
//!
//! Checks, by severity (docs/operations.md, "Doctor"):
//! - critical: a repository unreachable (or its password wrong), a
//!   repository not writable, a plan that never succeeded;
//! - high: a repository's password only on this machine, low free space
//!   under a local repository, a plan whose schedule (plus jitter and its
//!   last measured duration) cannot meet its RPO, an RPO breached now,
//!   3-2-1 not met, a verification that found errors, PostgreSQL not
//!   archiving or archiving failing, a repository inside a backed-up path;
//! - medium: no immutable or offline copy (3-2-1-1-0), no verification
//!   configured or none for `verify-max-age` days.
//!
//! Repositories are contacted (opened, a lock written and removed); the
//! rest comes from the config and the state directory, like `status`.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use lifeboat_repo::lock::{LockKind, LockOptions, RepositoryLock};
use lifeboat_storage::ErrorClass;
use serde::Serialize;

use crate::config::{Config, PasswordSource, SourceConfig};
use crate::duration::Duration;
use crate::state::StateDir;
use crate::status::{Freshness, plan_status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Critical,
    High,
    Medium,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
        }
    }
}

/// One gap in the setup.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub severity: Severity,
    /// The check's name, e.g. `repository-unreachable`.
    pub check: &'static str,
    /// What it is about: `repository NAME` or `plan NAME`.
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: PathBuf,
    pub generated: Timestamp,
    /// Most dangerous first.
    pub gaps: Vec<Gap>,
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.gaps.is_empty()
    }
}

/// Thresholds of the checks.
#[derive(Debug, Clone)]
pub struct Options {
    /// Free space under a local repository below this share of its
    /// filesystem is low...
    pub min_free_percent: f64,
    /// ...or below this many bytes.
    pub min_free_bytes: u64,
    /// A verification older than this is stale.
    pub verify_max_age: Duration,
}

impl Default for Options {
    /// 10 %, 1 GiB, 30 days.
    fn default() -> Self {
        Options {
            min_free_percent: 10.0,
            min_free_bytes: 1 << 30,
            verify_max_age: Duration::from_secs(30 * 86_400),
        }
    }
}

fn gap(
    severity: Severity,
    check: &'static str,
    subject: String,
    problem: String,
    fix: String,
) -> Gap {
    Gap {
        severity,
        check,
        subject,
        problem,
        fix,
    }
}

fn local_path(location: &str) -> Option<PathBuf> {
    match lifeboat_storage::Location::parse(location).ok()? {
        lifeboat_storage::Location::Local(p) => Some(p),
        _ => None,
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Audits `config` at `now`.
pub async fn doctor(config: &Config, now: Timestamp, o: &Options) -> Report {
    let mut gaps = Vec::new();
    let dir = StateDir::new(&config.state_dir);
    let tz = TimeZone::get(&config.daemon.time_zone).unwrap_or(TimeZone::UTC);

    // Repositories: reachable, writable, room, password kept elsewhere.
    let mut opened = std::collections::BTreeMap::new();
    for (name, r) in &config.repositories {
        let subject = format!("repository {name}");
        match crate::repos::open(name, r).await {
            Err(e) => gaps.push(gap(
                Severity::Critical,
                "repository-unreachable",
                subject.clone(),
                format!("does not open: {e}"),
                match e.class() {
                    ErrorClass::WrongPassword => format!(
                        "give the right password in [repository.{name}] (password-file, password-command or password-env)"
                    ),
                    ErrorClass::NoRepository => format!(
                        "create it with `lifeboat init -r {}`, or fix repository.{name}.location",
                        r.location
                    ),
                    _ => format!(
                        "make {} reachable (mount, network, credentials), or fix repository.{name}.location",
                        r.location
                    ),
                },
            )),
            Ok(repo) => {
                match RepositoryLock::acquire(&repo, LockKind::Shared, &LockOptions::default()).await {
                    Ok(lock) => {
                        let _ = lock.release().await;
                    }
                    Err(e) if e.class() == ErrorClass::Locked => {}
                    Err(e) => gaps.push(gap(
                        Severity::Critical,
                        "repository-not-writable",
                        subject.clone(),
                        format!("opens but cannot be written (a test lock failed): {e}"),
                        format!(
                            "give the user lifeboat runs as write access to {} (or free space there); backups to it fail",
                            r.location
                        ),
                    )),
                }
                opened.insert(name.clone(), repo);
            }
        }
        if let Some(p) = local_path(&r.location)
            && let Ok(st) = nix::sys::statvfs::statvfs(&p)
        {
            let frsize = st.fragment_size();
            let total = st.blocks() * frsize;
            let avail = st.blocks_available() * frsize;
            let percent = if total == 0 {
                100.0
            } else {
                avail as f64 * 100.0 / total as f64
            };
            if avail < o.min_free_bytes || percent < o.min_free_percent {
                gaps.push(gap(
                    Severity::High,
                    "low-free-space",
                    subject.clone(),
                    format!(
                        "{} free of {} ({percent:.1} %) under {}",
                        bytes(avail),
                        bytes(total),
                        p.display()
                    ),
                    format!(
                        "free space there, move the repository to a larger disk, or tighten the retention of the plans writing to it (then `lifeboat -r {} prune`)",
                        r.location
                    ),
                ));
            }
        }
        if r.password_copy.is_none() {
            let here = match &r.password {
                PasswordSource::File(f) => format!("the file {}", f.display()),
                PasswordSource::Command(c) => format!("the output of `{c}`"),
                PasswordSource::Env(v) => format!("the environment variable {v}"),
            };
            gaps.push(gap(
                Severity::High,
                "password-only-here",
                subject.clone(),
                format!(
                    "its password comes from {here} on this machine and the config names no copy elsewhere: if this machine is lost, the backups cannot be decrypted"
                ),
                format!(
                    "keep a copy of the password away from this machine (a password manager, a sealed envelope in a safe), then say where with password-copy = \"...\" in [repository.{name}]"
                ),
            ));
        }
    }

    // Repositories inside a path a plan backs up.
    for (sname, s) in &config.sources {
        let SourceConfig::Files { paths, .. } = s else {
            continue;
        };
        for (rname, r) in &config.repositories {
            let Some(rp) = local_path(&r.location) else {
                continue;
            };
            if let Some(p) = paths.iter().find(|p| inside(&rp, p)) {
                gaps.push(gap(
                    Severity::High,
                    "repository-inside-source",
                    format!("repository {rname}"),
                    format!(
                        "{} is inside {}, which source {sname} backs up: one disk failure or deletion takes the data and this copy together",
                        rp.display(),
                        p.display()
                    ),
                    format!(
                        "move the repository to another disk or machine (then fix repository.{rname}.location), or exclude it in source.{sname}.excludes and add an off-site copy"
                    ),
                ));
            }
        }
    }

    // Plans.
    for (name, plan) in &config.plans {
        let subject = format!("plan {name}");
        let state = dir.plan(name).unwrap_or_default();
        let st = plan_status(config, name, plan, &state, now, &tz);
        if state.last_success.is_none() {
            gaps.push(gap(
                Severity::Critical,
                "never-succeeded",
                subject.clone(),
                match &state.last_failure {
                    Some(f) => format!(
                        "no backup of this plan has ever succeeded; last failure: {}",
                        f.reason
                    ),
                    None => "no backup of this plan has ever run: there is nothing to restore"
                        .to_string(),
                },
                format!("run `lifeboat run {name}` and fix what it reports (or start the daemon)"),
            ));
        } else if st.freshness == Freshness::Breached {
            gaps.push(gap(
                Severity::High,
                "rpo-breached",
                subject.clone(),
                format!(
                    "the newest backup is {} old, older than the RPO of {}",
                    Duration::from_secs(st.age_seconds.unwrap_or(0).max(0) as u64),
                    plan.rpo
                ),
                format!(
                    "see `lifeboat status` for the last failure, fix it and run `lifeboat run {name}`; check that the daemon runs"
                ),
            ));
        }
        // Can the schedule keep the RPO at all?
        if let Some(interval) = plan.schedule.max_interval(now, &tz) {
            let duration = state.last_duration_ms.unwrap_or(0) / 1000;
            let worst = interval + plan.jitter.seconds() + duration;
            if worst > plan.rpo.seconds() {
                gaps.push(gap(
                    Severity::High,
                    "rpo-unmeetable",
                    subject.clone(),
                    format!(
                        "schedule {:?} leaves up to {} between runs, plus jitter {} and the last run's {}: data may be {} old, more than the RPO of {}",
                        plan.schedule.as_str(),
                        Duration::from_secs(interval),
                        plan.jitter,
                        Duration::from_secs(duration),
                        Duration::from_secs(worst),
                        plan.rpo
                    ),
                    format!(
                        "run it more often (or delete plan.{name}.schedule to derive one from the RPO), shorten its jitter, or raise plan.{name}.rpo"
                    ),
                ));
            }
        }
        // 3-2-1 (the first three points) and 3-2-1-1-0's immutable copy;
        // the verification point is the checks below.
        for point in &st.rule_321.points {
            if point.ok || point.rule == "0-errors" {
                continue;
            }
            let severity = if point.rule == "1-immutable" {
                Severity::Medium
            } else {
                Severity::High
            };
            gaps.push(gap(
                severity,
                if point.rule == "1-immutable" {
                    "rule-32110-not-met"
                } else {
                    "rule-321-not-met"
                },
                subject.clone(),
                format!("{}: {}", point.rule, point.detail),
                point.fix.clone().unwrap_or_default(),
            ));
        }
        match (&plan.verify, &state.last_verify) {
            (None, _) => gaps.push(gap(
                Severity::Medium,
                "no-verification",
                subject.clone(),
                "no verification is configured: damage in the repositories would be found only at restore time".into(),
                format!("add [plan.{name}.verify] with schedule = \"0 5 * * 0\" and read-data-subset = \"5%\""),
            )),
            (Some(_), Some(v)) if v.errors > 0 || !v.failed.is_empty() => gaps.push(gap(
                Severity::High,
                "verification-failed",
                subject.clone(),
                format!(
                    "the verification of {} found {} errors{}",
                    v.time,
                    v.errors,
                    if v.failed.is_empty() {
                        String::new()
                    } else {
                        format!(" and could not check {}", v.failed.join(", "))
                    }
                ),
                "run `lifeboat -r REPO check --read-data` on the repository named in the run report, then `lifeboat -r REPO repair index` or a fresh full backup".into(),
            )),
            (Some(_), last) => {
                let age = last.as_ref().map(|v| now.as_second() - v.time.as_second());
                if age.is_none_or(|a| a > o.verify_max_age.seconds() as i64) {
                    gaps.push(gap(
                        Severity::Medium,
                        "verification-stale",
                        subject.clone(),
                        match age {
                            None => "the repositories were never verified".to_string(),
                            Some(a) => format!(
                                "no verification for {} (more than {})",
                                Duration::from_secs(a.max(0) as u64),
                                o.verify_max_age
                            ),
                        },
                        format!("run `lifeboat run {name}` when its verify schedule is due, or check plan.{name}.verify.schedule and that the daemon runs"),
                    ));
                }
            }
        }
        // PostgreSQL: archiving on and not failing, WAL continuous.
        if let SourceConfig::Postgres { url } = &config.sources[&plan.source]
            && let Some(repo) = plan.repositories.iter().find_map(|r| opened.get(r))
        {
            let conn = lifeboat_connectors::postgres::conn::ConnOptions { url: url.clone() };
            match lifeboat_connectors::postgres::check::check(repo, &conn).await {
                Ok(report) => {
                    for f in report.findings.iter().filter(|f| f.severity == "error") {
                        gaps.push(gap(
                            Severity::High,
                            "postgres-archiving",
                            subject.clone(),
                            f.message.clone(),
                            "see docs/user-guide.md (PostgreSQL): archive_mode = on, archive_command = 'lifeboat ... pg wal-push %p', then `lifeboat pg check`".into(),
                        ));
                    }
                }
                Err(e) => gaps.push(gap(
                    Severity::High,
                    "postgres-archiving",
                    subject.clone(),
                    format!("cannot check WAL archiving: {e}"),
                    format!(
                        "make the server reachable with source.{}.url, then `lifeboat pg check`",
                        plan.source
                    ),
                )),
            }
        }
    }
    gaps.sort_by_key(|g| g.severity);
    Report {
        config: config.path.clone(),
        generated: now,
        gaps,
    }
}

/// Whether `p` is `dir` or below it (lexically; both absolute).
fn inside(p: &Path, dir: &Path) -> bool {
    p.starts_with(dir)
}
