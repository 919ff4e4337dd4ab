//! `lifeboat runbook` (the runbook generated from the config and the
//! repositories, `lifeboat_ops::runbook`) and `lifeboat incident
//! open|update|resolve` (templated notices, the incident log and the
//! status page, `lifeboat_ops::incident` and `lifeboat_ops::statuspage`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use lifeboat_ops::incident::{NoticeKind, NoticeOptions};

use crate::args::Global;
use crate::exit::{self, cli_error};
use crate::output::outln;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunbookFormat {
    /// Markdown.
    Md,
    /// One self-contained HTML page.
    Html,
}

#[derive(Debug, Args)]
pub struct RunbookArgs {
    /// Only this plan (a `[plan.NAME]` of the config); default: every plan.
    pub plan: Option<String>,
    /// Markdown on stdout, or one self-contained HTML page.
    #[arg(long, value_enum, default_value = "md")]
    pub format: RunbookFormat,
}

pub async fn runbook(g: &Global, a: RunbookArgs) -> Result<i32> {
    let mut config = crate::ops::load(g)?;
    // Commands in the runbook name the config by an absolute path, so
    // they work from any directory.
    if let Ok(p) = std::fs::canonicalize(&config.path) {
        config.path = p;
    }
    let facts = lifeboat_ops::runbook::gather(&config).await;
    let rb = lifeboat_ops::runbook::generate(&config, a.plan.as_deref(), &facts)
        .map_err(crate::ops::ops_error)?;
    match a.format {
        RunbookFormat::Md => print!("{}", rb.markdown()),
        RunbookFormat::Html => print!("{}", rb.html()),
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct IncidentArgs {
    #[command(subcommand)]
    pub action: IncidentAction,
    /// Also write status.html into this directory (besides the config's
    /// communication.status-dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub status_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum IncidentAction {
    /// Open an incident: notify every audience, start the incident log.
    Open {
        /// What happened.
        #[arg(long)]
        message: String,
        /// The impact, instead of the plans whose data is not fresh.
        #[arg(long)]
        impact: Option<String>,
    },
    /// Send an update on the open incident: the current step.
    Update {
        /// The current step, as the audiences should read it.
        #[arg(long)]
        message: String,
        /// The impact now, if it changed.
        #[arg(long)]
        impact: Option<String>,
    },
    /// Resolve the open incident.
    Resolve {
        /// The closing words to the audiences.
        #[arg(long, default_value = "Service is restored.")]
        message: String,
    },
}

pub async fn incident(g: &Global, a: IncidentArgs) -> Result<i32> {
    let config = crate::ops::load(g)?;
    let (kind, message, impact) = match a.action {
        IncidentAction::Open { message, impact } => (NoticeKind::Open, message, impact),
        IncidentAction::Update { message, impact } => (NoticeKind::Update, message, impact),
        IncidentAction::Resolve { message } => (NoticeKind::Resolve, message, None),
    };
    let now = jiff::Timestamp::now();
    let recorded = lifeboat_ops::incident::record(
        &config,
        &NoticeOptions {
            kind,
            message,
            impact,
            now,
        },
    )
    .map_err(|e| match e {
        lifeboat_ops::Error::Incident(m) => cli_error(exit::USAGE, m),
        e => crate::ops::ops_error(e),
    })?;
    let alerts = lifeboat_ops::alert::Alerter::new(&config);
    lifeboat_ops::incident::send(&alerts, &recorded);
    let page = lifeboat_ops::statuspage::current(&config, now).map_err(crate::ops::ops_error)?;
    let mut pages = Vec::new();
    for dir in config
        .communication
        .status_dir
        .iter()
        .chain(a.status_dir.iter())
    {
        pages.push(lifeboat_ops::statuspage::write(dir, &page).map_err(crate::ops::ops_error)?);
    }
    let delivered = alerts.flush(std::time::Duration::from_secs(40)).await;
    if g.json {
        crate::output::json(&recorded)?;
    } else {
        outln!(
            "incident {}: {} notice sent to {}",
            recorded.incident.id,
            recorded.incident.latest().kind.status_word(),
            recorded
                .notices
                .iter()
                .map(|n| n.audience.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for p in &pages {
            outln!("  status page written: {}", p.display());
        }
    }
    if !delivered || alerts.stats().gave_up > 0 {
        eprintln!(
            "lifeboat: warning: some notices were not delivered (see the warnings above); the incident is logged"
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}
