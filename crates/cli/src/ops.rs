//! The operations commands: `config check|show`, `run PLAN`, `status`,
//! `daemon`.
//! Each loads the config file (`--config`, `LIFEBOAT_CONFIG`, or the
//! default path), calls one `lifeboat_ops` function and renders it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use lifeboat_ops::report::{Outcome, RunReport, StepKind};
use lifeboat_ops::status::{Freshness, Status};
use lifeboat_ops::{Config, RunOptions};

use crate::args::Global;
use crate::exit::{self, cli_error};
use crate::output::{bytes, duration_ms, outln};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the file and open every repository it names.
    Check,
    /// Print the effective config, defaults filled in.
    Show,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan to run (a `[plan.NAME]` of the config).
    pub plan: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Free space under a local repository below this percentage of its
    /// filesystem is a gap.
    #[arg(long, default_value_t = 10.0, value_name = "PERCENT")]
    pub min_free_percent: f64,
    /// ...and so is less than this much free space (e.g. 1G, 500M).
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = size_arg)]
    pub min_free: u64,
    /// A plan whose repositories were not verified for this long is a gap.
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    pub verify_max_age: String,
}

fn size_arg(s: &str) -> Result<u64, String> {
    crate::retention::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size: a number and K, M, G or T, e.g. 1G"))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Log lines as text or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Turns an ops error into the CLI's error, with its exit code.
pub fn ops_error(e: lifeboat_ops::Error) -> anyhow::Error {
    match &e {
        lifeboat_ops::Error::Password { .. } => cli_error(exit::WRONG_PASSWORD, e.to_string()),
        lifeboat_ops::Error::AlreadyRunning { .. } => cli_error(exit::LOCKED, e.to_string()),
        lifeboat_ops::Error::Config(_) | lifeboat_ops::Error::UnknownPlan { .. } => {
            cli_error(exit::GENERIC, e.to_string())
        }
        _ => anyhow::Error::from(e),
    }
}

pub fn config_file(g: &Global) -> PathBuf {
    lifeboat_ops::config_path(g.config.as_deref())
}

pub fn load(g: &Global) -> Result<Config> {
    Config::load(&config_file(g)).map_err(|e| cli_error(exit::GENERIC, e.to_string()))
}

pub async fn config(g: &Global, a: ConfigArgs) -> Result<i32> {
    let config = load(g)?;
    match a.action {
        ConfigAction::Show => {
            if g.json {
                crate::output::json(&config)?;
            } else {
                outln!("# effective config of {}", config.path.display());
                outln!("{}", config.to_toml());
            }
            Ok(exit::OK)
        }
        ConfigAction::Check => {
            let checks = lifeboat_ops::check_repositories(&config).await;
            let failed = checks.iter().filter(|c| !c.ok).count();
            if g.json {
                crate::output::json(&serde_json::json!({
                    "config": config.path,
                    "valid": true,
                    "plans": config.plans.len(),
                    "repositories": checks,
                }))?;
            } else {
                outln!(
                    "{}: valid ({} plans, {} repositories, {} sources, {} alerts)",
                    config.path.display(),
                    config.plans.len(),
                    config.repositories.len(),
                    config.sources.len(),
                    config.alerts.len()
                );
                for c in &checks {
                    match &c.error {
                        None => outln!(
                            "  repository {}: opens ({} snapshots) at {}",
                            c.repository,
                            c.snapshots.unwrap_or(0),
                            c.location
                        ),
                        Some(e) => outln!("  repository {}: FAILED: {e}", c.repository),
                    }
                }
            }
            if failed > 0 {
                return Err(cli_error(
                    exit::UNREACHABLE,
                    format!(
                        "{failed} of {} repositories did not open (see above): create them with `lifeboat init -r LOCATION`, or fix their location and password",
                        checks.len()
                    ),
                ));
            }
            Ok(exit::OK)
        }
    }
}

/// How long `run` waits for its alerts after the run: more than one
/// message's retries (~33 s), so a slow endpoint still gets its message.
const ALERT_FLUSH: std::time::Duration = std::time::Duration::from_secs(40);

/// Alerts are delivered in the background; waits for them (bounded: a
/// dead endpoint is given up and logged, the exit code is the command's).
pub async fn flush_alerts(alerts: &lifeboat_ops::alert::Alerter) {
    if !alerts.flush(ALERT_FLUSH).await {
        eprintln!(
            "lifeboat: warning: some alerts were not delivered within {}s",
            ALERT_FLUSH.as_secs()
        );
    }
}

pub async fn run(g: &Global, a: RunArgs) -> Result<i32> {
    let config = load(g)?;
    let alerts = lifeboat_ops::alert::Alerter::new(&config);
    let options = RunOptions {
        alerts: Some(alerts.clone()),
        ..RunOptions::manual()
    };
    let result = lifeboat_ops::run_plan(&config, &a.plan, &options)
        .await
        .map_err(ops_error)?;
    flush_alerts(&alerts).await;
    let r = &result.report;
    if g.json {
        crate::output::json(r)?;
    } else {
        render_report(r);
        for (repo, why) in &result.report_not_stored {
            eprintln!("lifeboat: warning: the run report was not stored in {repo}: {why}");
        }
    }
    Ok(match r.outcome {
        Outcome::Ok | Outcome::Skipped => exit::OK,
        Outcome::Partial => {
            if r.steps_of(StepKind::Backup)
                .any(|s| s.outcome == Outcome::Failed)
            {
                exit::SOME_FAILED
            } else {
                exit::PARTIAL
            }
        }
        Outcome::Locked => exit::LOCKED,
        Outcome::Failed => exit::GENERIC,
    })
}

fn render_report(r: &RunReport) {
    outln!(
        "plan {}: {} ({} backup, {}, took {})",
        r.plan,
        r.outcome.as_str().to_uppercase(),
        r.mode.as_deref().unwrap_or("-"),
        crate::output::local_time(r.started),
        duration_ms(r.duration_ms)
    );
    for s in &r.steps {
        let what = match s.step {
            StepKind::Backup => "backup",
            StepKind::Copy => "copy",
            StepKind::Forget => "forget",
            StepKind::Prune => "prune",
            StepKind::Verify => "verify",
        };
        let mut line = format!("  {what:<7} {:<16} {:<8}", s.repository, s.outcome.as_str());
        if let Some(id) = &s.snapshot {
            line.push_str(&format!(" snapshot {}", &id[..id.len().min(8)]));
        }
        if s.added_bytes > 0 {
            line.push_str(&format!(", {} added", bytes(s.added_bytes)));
        }
        match s.step {
            StepKind::Forget if s.count > 0 => line.push_str(&format!(", {} forgotten", s.count)),
            StepKind::Verify if s.count > 0 => line.push_str(&format!(", {} problems", s.count)),
            _ => {}
        }
        if let Some(e) = &s.error {
            line.push_str(&format!(": {e}"));
        }
        outln!("{line}");
    }
    outln!(
        "  read {} from the source, added {} in total",
        bytes(r.read_bytes),
        bytes(r.added_bytes)
    );
}

fn age(s: Option<i64>) -> String {
    match s {
        None => "never".into(),
        Some(s) => format!(
            "{} ago",
            lifeboat_ops::duration::Duration::from_secs(s.max(0) as u64)
        ),
    }
}

pub async fn status(g: &Global, _a: StatusArgs) -> Result<i32> {
    let config = load(g)?;
    let st = lifeboat_ops::status::status(&config, jiff::Timestamp::now()).map_err(ops_error)?;
    if g.json {
        crate::output::json(&st)?;
    } else {
        render_status(&st);
    }
    let breached = st.plans.iter().any(|p| p.freshness == Freshness::Breached);
    Ok(if breached {
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}

pub fn render_status(st: &Status) {
    if st.plans.is_empty() {
        outln!("no plans in the config");
    }
    for p in &st.plans {
        let rpo = lifeboat_ops::duration::Duration::from_secs(p.rpo_seconds);
        outln!(
            "plan {}: {} (last success {}, RPO {rpo}); next run {}",
            p.plan,
            p.freshness.as_str().to_uppercase(),
            age(p.age_seconds),
            p.next_run
                .map(crate::output::local_minute)
                .unwrap_or_else(|| "-".into())
        );
        if let Some(o) = p.rto.objective_seconds {
            let o = lifeboat_ops::duration::Duration::from_secs(o);
            match (p.rto.state, p.rto.measured_seconds, p.rto.measured_at) {
                (state, Some(m), Some(t)) => outln!(
                    "  RTO {o}: {} (restore drill {} measured {})",
                    state.to_uppercase(),
                    t.strftime("%Y-%m-%d %H:%M UTC"),
                    lifeboat_ops::duration::Duration::from_secs(m.ceil() as u64)
                ),
                ("drill-failed", _, Some(t)) => outln!(
                    "  RTO {o}: DRILL-FAILED (restore drill {})",
                    t.strftime("%Y-%m-%d %H:%M UTC")
                ),
                _ => outln!("  RTO {o}: not measured yet (no restore drill)"),
            }
        }
        if let Some(f) = &p.last_failure {
            outln!(
                "  last failure {}: {}",
                crate::output::local_minute(f.time),
                f.reason
            );
        }
        for c in &p.copies {
            outln!(
                "  copy {:<16} {:<9} {:<12} {}{}{}",
                c.repository,
                format!("{:?}", c.role).to_lowercase(),
                format!("{:?}", c.media).to_lowercase(),
                age(c.age_seconds),
                if c.current { "" } else { " (not current)" },
                c.last_error
                    .as_ref()
                    .map(|e| format!("; failing: {}", e.reason))
                    .unwrap_or_default()
            );
        }
        let r = &p.rule_321;
        outln!(
            "  3-2-1: {}; 3-2-1-1-0: {}",
            if r.satisfied { "met" } else { "NOT met" },
            if r.satisfied_32110 { "met" } else { "NOT met" }
        );
        for point in &r.points {
            outln!(
                "    [{}] {}: {}",
                if point.ok { "ok" } else { "!!" },
                point.rule,
                point.detail
            );
            if let Some(fix) = &point.fix {
                outln!("         fix: {fix}");
            }
        }
    }
}

/// `lifeboat doctor`: the setup's gaps, most dangerous first; exit 19
/// when there are any.
pub async fn doctor(g: &Global, a: DoctorArgs) -> Result<i32> {
    let config = load(g)?;
    let verify_max_age =
        lifeboat_ops::duration::Duration::parse(&a.verify_max_age).ok_or_else(|| {
            cli_error(
                exit::USAGE,
                format!(
                    "--verify-max-age {:?} is not a duration: a number and a unit, e.g. 30d",
                    a.verify_max_age
                ),
            )
        })?;
    let options = lifeboat_ops::doctor::Options {
        min_free_percent: a.min_free_percent,
        min_free_bytes: a.min_free,
        verify_max_age,
    };
    let report = lifeboat_ops::doctor::doctor(&config, jiff::Timestamp::now(), &options).await;
    if g.json {
        crate::output::json(&report)?;
    } else if report.healthy() {
        outln!(
            "{}: no gaps found ({} plans, {} repositories)",
            config.path.display(),
            config.plans.len(),
            config.repositories.len()
        );
    } else {
        outln!(
            "{}: {} gaps, most dangerous first",
            config.path.display(),
            report.gaps.len()
        );
        for (i, gap) in report.gaps.iter().enumerate() {
            outln!(
                "{:>2}. [{}] {}: {} ({})",
                i + 1,
                gap.severity.as_str(),
                gap.subject,
                gap.problem,
                gap.check
            );
            outln!("    fix: {}", gap.fix);
        }
    }
    Ok(if report.healthy() {
        exit::OK
    } else {
        exit::GAPS
    })
}

/// `lifeboat daemon`: runs until SIGTERM or SIGINT; SIGHUP reloads the
/// config file (a broken one is logged and the old one kept).
pub async fn daemon(g: &Global, _a: DaemonArgs) -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = load(g)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); stop.cancel(); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); stop.cancel(); break; }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading the config"); let _ = reload_tx.send(()); }
            }
        }
    });
    tracing::info!(
        "lifeboat daemon: {} plans from {}, HTTP on {}",
        config.plans.len(),
        config.path.display(),
        config.daemon.listen
    );
    lifeboat_ops::daemon::run_daemon(
        config,
        lifeboat_ops::daemon::DaemonOptions {
            config_path: config_file(g),
            clock: std::sync::Arc::new(lifeboat_ops::daemon::SystemClock),
            shutdown,
            reload: reload_rx,
            events: None,
            seed: rand::random(),
            http: true,
            alerts: None,
        },
    )
    .await
    .map_err(ops_error)?;
    Ok(exit::OK)
}
