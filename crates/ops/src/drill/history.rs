//! Drill reports, kept twice like run reports: in the repository the drill
//! restored from, encrypted, as archive objects of the stream
//! [`DRILL_STREAM`] (docs/format.md, "Drill reports"), so any machine with
//! the key sees the drill history; and in the state directory,
//! `drills/<plan>.jsonl` (every report, one JSON line each), which
//! `status`, `/metrics` and the daemon's drill schedule read without
//! touching a repository.

use std::fs;

use lifeboat_repo::Repository;
use lifeboat_repo::archive::ArchiveName;

use super::DrillReport;
use crate::error::{Error, Result};
use crate::report::{load_stream, report_name, store_json};
use crate::state::StateDir;

/// The archive stream of drill reports (not 16 hex digits: never taken
/// for a PostgreSQL WAL stream; no retention rule claims it, so prune
/// keeps it and copy carries it).
pub const DRILL_STREAM: &str = "drills";

impl DrillReport {
    /// The archive name of this report in a repository.
    pub fn archive_name(&self) -> ArchiveName {
        report_name(DRILL_STREAM, self.started, &self.id)
    }
}

/// Stores `report` in `repo` (sealed with its key; idempotent).
pub async fn store(repo: &Repository, report: &DrillReport) -> lifeboat_repo::Result<()> {
    store_json(repo, &report.archive_name(), report).await
}

/// Every drill report stored in `repo`, oldest first.
pub async fn load_all(repo: &Repository) -> lifeboat_repo::Result<Vec<DrillReport>> {
    let mut out: Vec<DrillReport> = load_stream(repo, DRILL_STREAM).await?;
    out.sort_by_key(|r| r.started);
    Ok(out)
}

fn history_file(state: &StateDir, plan: &str) -> std::path::PathBuf {
    state.root().join("drills").join(format!("{plan}.jsonl"))
}

/// Appends `report` to its plan's local drill history (synced).
pub fn record(state: &StateDir, report: &DrillReport) -> Result<()> {
    crate::state::append_line(&history_file(state, &report.plan), report)?;
    // The newest drill's summary, which `status`'s RTO line reads
    // (docs/operations.md, "RTO"): a drill whose checks passed counts as
    // `ok` and its measured time is judged against the objective there.
    state.save_drill(&crate::state::DrillSummary {
        plan: report.plan.clone(),
        time: report.finished,
        outcome: match report.outcome {
            super::DrillOutcome::Failed => "failed",
            super::DrillOutcome::Passed | super::DrillOutcome::RtoMissed => "ok",
        }
        .into(),
        rto_seconds: (report.outcome != super::DrillOutcome::Failed)
            .then_some(report.rto_ms as f64 / 1000.0),
        repository: report.repository.clone(),
        snapshot: report.snapshot.clone(),
        error: report.error.clone(),
    })
}

/// The plan's local drill reports, oldest first (at most the newest
/// `limit`). Lines that do not decode are skipped.
pub fn history(state: &StateDir, plan: &str, limit: usize) -> Result<Vec<DrillReport>> {
    let path = history_file(state, plan);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::State { path, source }),
    };
    let all: Vec<DrillReport> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let skip = all.len().saturating_sub(limit);
    Ok(all.into_iter().skip(skip).collect())
}

/// The newest drill of `plan`, and the newest one whose checks passed.
pub fn last(state: &StateDir, plan: &str) -> (Option<DrillReport>, Option<DrillReport>) {
    let all = history(state, plan, usize::MAX).unwrap_or_default();
    let passed = all
        .iter()
        .rev()
        .find(|r| r.outcome.checks_passed())
        .cloned();
    (all.last().cloned(), passed)
}
