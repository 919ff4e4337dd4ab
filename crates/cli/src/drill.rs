//! `lifeboat drill PLAN`: one restore drill of a plan of the config
//! (`lifeboat_ops::drill`), rendered on one screen or as JSON.
//!
//! Exit codes: 0 passed within the RTO (or the plan has none); 3 every
//! check passed but the copy took longer than the RTO; 13 the scratch
//! place lacks the space the snapshot needs; 1 a check failed, or the
//! scratch copy could not be removed after the verdict.

use anyhow::Result;
use clap::Args;
use lifeboat_ops::drill::{DrillOutcome, DrillReport};

use crate::args::Global;
use crate::exit::{self, cli_error};
use crate::output::{bytes, duration_ms, outln};

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The plan to drill (a `[plan.NAME]` of the config).
    pub plan: String,
    /// Restore this snapshot (id or unique prefix) instead of the plan's
    /// latest.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// PostgreSQL plans: recover to this time (RFC 3339, e.g.
    /// 2026-01-31T12:00:00Z) instead of the end of the WAL archive.
    #[arg(long)]
    pub at: Option<String>,
}

pub async fn drill(g: &Global, a: DrillArgs) -> Result<i32> {
    let config = crate::ops::load(g)?;
    let at = match &a.at {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|e| {
            cli_error(
                exit::USAGE,
                format!("bad --at {t:?}: {e} (use RFC 3339, e.g. 2026-01-31T12:00:00Z)"),
            )
        })?),
    };
    let alerts = lifeboat_ops::alert::Alerter::new(&config);
    let options = lifeboat_ops::DrillOptions {
        snapshot: a.snapshot,
        at,
        alerts: Some(alerts.clone()),
        ..Default::default()
    };
    // The report is shown as soon as the drill has its verdict; the
    // scratch copy is removed after that.
    let json = g.json;
    let mut shown = Ok(());
    let result = lifeboat_ops::run_drill_with(&config, &a.plan, &options, &mut |r| {
        shown = show(json, r);
    })
    .await;
    crate::ops::flush_alerts(&alerts).await;
    let result = result.map_err(crate::ops::ops_error)?;
    shown?;
    let report = &result.report;
    if let Some(why) = &result.cleanup_error {
        eprintln!("lifeboat: error: {why}");
        return Ok(exit::GENERIC);
    }
    if !json {
        outln!(
            "  scratch copy removed in {} (after the verdict; not part of the drill's time)",
            duration_ms(result.cleanup_ms)
        );
    }
    Ok(match report.outcome {
        DrillOutcome::Passed => exit::OK,
        DrillOutcome::RtoMissed => exit::PARTIAL,
        DrillOutcome::Failed
            if report
                .checks
                .iter()
                .any(|c| c.name == "scratch-space" && !c.ok) =>
        {
            exit::STORAGE_FULL
        }
        DrillOutcome::Failed => exit::GENERIC,
    })
}

/// Prints the report and any warning about storing it.
fn show(json: bool, result: &lifeboat_ops::DrillResult) -> Result<()> {
    if json {
        crate::output::json(&result.report)?;
    } else {
        render(&result.report);
    }
    if let Some(why) = &result.report_not_stored {
        eprintln!("lifeboat: warning: the drill report was not stored in the repository: {why}");
    }
    Ok(())
}

fn objective(r: &DrillReport) -> String {
    match r.rto_objective_seconds {
        None => "no RTO set".into(),
        Some(s) => format!("RTO {}", lifeboat_ops::duration::Duration::from_secs(s)),
    }
}

pub fn render(r: &DrillReport) {
    let verdict = match r.outcome {
        DrillOutcome::Passed => "PASSED".to_string(),
        DrillOutcome::RtoMissed => "PASSED, RTO MISSED".to_string(),
        DrillOutcome::Failed => "FAILED".to_string(),
    };
    outln!(
        "drill of plan {} ({}): {verdict}; usable copy in {} ({}), drill took {}",
        r.plan,
        r.kind,
        duration_ms(r.rto_ms),
        objective(r),
        duration_ms(r.duration_ms)
    );
    if let (Some(repo), Some(snap)) = (&r.repository, &r.snapshot) {
        outln!(
            "  snapshot {} of {} from repository {repo}; {} in {} files restored",
            &snap[..snap.len().min(8)],
            r.snapshot_time
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "-".into()),
            bytes(r.restored_bytes),
            r.restored_files
        );
    }
    if let Some(t) = &r.target {
        outln!("  recovery target: {t}");
    }
    outln!(
        "  phases: {}",
        r.phases
            .iter()
            .map(|p| format!(
                "{} {}{}",
                p.name,
                duration_ms(p.ms),
                if p.rto { "*" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    outln!("  (* counts towards the time to a usable copy)");
    for c in &r.checks {
        outln!(
            "  [{}] {}: {}",
            if c.ok { "ok" } else { "!!" },
            c.name,
            c.detail
        );
    }
    for d in &r.cleaned.dirs {
        outln!(
            "  removed the scratch directory of an interrupted drill: {}",
            d.display()
        );
    }
    for pid in &r.cleaned.servers {
        outln!("  stopped the server (pid {pid}) of an interrupted drill");
    }
}
