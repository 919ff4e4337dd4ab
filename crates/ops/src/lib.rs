//! Running lifeboat for real: backup plans from one config file, runs of
//! a plan (backup, copies, retention, verification, run reports), the
//! status of every plan against its RPO and the 3-2-1 rule, and the
//! scheduler daemon with its metrics and alerts.
//!
//! Modules: [`config`] (the `lifeboat.toml` file and its validation),
//! [`schedule`] (cron, RPO-derived schedules), [`run`] (one run of a plan),
//! [`report`] (run reports, also stored encrypted in the repositories),
//! [`state`] (the local state directory), [`status`] (freshness and
//! 3-2-1), [`alert`] (events to webhooks, Slack, email and ping URLs;
//! the API other parts of lifeboat send through), [`runbook`] (the
//! runbook generated from the config and the repositories), [`incident`]
//! (incident notices and their log), [`statuspage`] (`status.html`) and
//! [`lockextend`] (the daemon's object-lock retention extensions) and
//! [`detectjob`] (its ransomware detection after the fact). It sits between the connectors and the CLI: it calls the
//! library functions of `lifeboat-snapshot`, `lifeboat-repo` and
//! `lifeboat-connectors`, never the `lifeboat` binary. Libraries never
//! print: everything comes back as values for the CLI to render.

pub mod alert;
pub mod config;
pub mod daemon;
pub mod detectjob;
pub mod doctor;
pub mod drill;
pub mod duration;
mod error;
mod http;
pub mod incident;
pub mod lockextend;
pub mod metrics;
pub mod report;
pub mod repos;
pub mod run;
pub mod runbook;
pub mod schedule;
pub mod scheduler;
pub mod serve;
pub mod state;
pub mod status;
pub mod statuspage;

pub use config::{Config, ConfigError, config_path};
pub use drill::{DrillOptions, DrillReport, DrillResult, run_drill, run_drill_with};
pub use error::{Error, Result};
pub use run::{RunOptions, RunResult, run_plan};

use serde::Serialize;

/// One repository as `config check` found it.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryCheck {
    pub repository: String,
    pub location: String,
    pub ok: bool,
    /// Snapshots it holds, when it opened.
    pub snapshots: Option<usize>,
    pub error: Option<String>,
}

/// `config check`: the config is valid (it parsed) and every repository
/// opens with its password. Each repository's result is returned; the
/// caller decides what a failed one means.
pub async fn check_repositories(config: &Config) -> Vec<RepositoryCheck> {
    let checks = config.repositories.iter().map(|(name, r)| async move {
        let opened = repos::open(name, r).await;
        let (ok, snapshots, error) = match opened {
            Ok(repo) => match repo.snapshots().await {
                Ok(s) => (true, Some(s.len()), None),
                Err(e) => (false, None, Some(format!("listing snapshots: {e}"))),
            },
            Err(e) => (false, None, Some(e.to_string())),
        };
        RepositoryCheck {
            repository: name.clone(),
            location: r.location.clone(),
            ok,
            snapshots,
            error,
        }
    });
    futures::future::join_all(checks).await
}
