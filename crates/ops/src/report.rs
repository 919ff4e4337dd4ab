//! Run reports: what one run of a plan did (steps, times, bytes, result,
//! errors), kept twice: in the local state directory (`state`) and in
//! every repository the run wrote to, encrypted, so any machine holding
//! the key sees the history.
//!
//! In a repository a report is an archive object (`lifeboat_repo::archive`)
//! of the stream [`REPORT_STREAM`], named
//! `<YYYYMMDDTHHMMSSZ>.<16 hex digits>` (start time in UTC, then the run
//! id), holding the report as JSON; the format is in docs/format.md
//! ("Run reports"). No archive retention rule claims the stream, so prune
//! keeps reports and copy carries them to the copy's repository.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;
use lifeboat_repo::Repository;
use lifeboat_repo::archive::{self, ArchiveName};
use serde::{Deserialize, Serialize};

/// The archive stream of run reports: not 16 hex digits, so it cannot be
/// mistaken for a PostgreSQL cluster's WAL stream.
pub const REPORT_STREAM: &str = "runs";

/// How a run (or a step) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// Finished with per-item problems (unreadable files), or failed in
    /// some of the repositories while others got their snapshot.
    Partial,
    Failed,
    /// Another process held a repository lock (a prune): not a failure,
    /// the run is tried again later.
    Locked,
    /// Not due, or not possible because an earlier step failed.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Locked => "locked",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Backup,
    Copy,
    Forget,
    Prune,
    Verify,
}

/// One step against one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: StepKind,
    pub repository: String,
    pub outcome: Outcome,
    pub started: Timestamp,
    pub finished: Timestamp,
    /// The snapshot written (backup) or copied (copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Stored bytes added to the repository.
    #[serde(default)]
    pub added_bytes: u64,
    /// Problems found (verify), snapshots forgotten (forget), unreadable
    /// files (backup).
    #[serde(default)]
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Backup: the snapshot looks like its source was just encrypted
    /// (ransomware detection); what was found, what was protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<Suspect>,
}

/// A backup flagged by ransomware detection (the step's `snapshot` is the
/// suspect one, tagged `suspect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    /// One line per sign over its threshold.
    pub signals: Vec<String>,
    /// The snapshot before it, now protected, and until when.
    pub protected: String,
    pub protected_until: Timestamp,
    /// Some affected files.
    pub examples: Vec<String>,
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `lifeboat run`.
    Manual,
    /// A slot of the plan's schedule.
    Schedule,
    /// A slot missed while the daemon was down, run once at start.
    CatchUp,
    /// Again after a lock conflict.
    Retry,
}

/// The record of one run of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// 16 random hex digits.
    pub id: String,
    pub plan: String,
    pub host: String,
    pub trigger: Trigger,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub duration_ms: u64,
    pub outcome: Outcome,
    /// The backup mode used (`full`, `incremental`, `differential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub steps: Vec<StepReport>,
    /// Stored bytes the backup added, summed over repositories.
    pub added_bytes: u64,
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Snapshots in each repository the run reached, counted at its end.
    #[serde(default)]
    pub repository_snapshots: std::collections::BTreeMap<String, u64>,
    /// The first error, for a one-line reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunReport {
    /// The archive name of this report in a repository.
    pub fn archive_name(&self) -> ArchiveName {
        report_name(REPORT_STREAM, self.started, &self.id)
    }

    /// Steps of one kind.
    pub fn steps_of(&self, kind: StepKind) -> impl Iterator<Item = &StepReport> {
        self.steps.iter().filter(move |s| s.step == kind)
    }
}

/// The archive name of a report in `stream`: `<YYYYMMDDTHHMMSSZ>.<id>`
/// (start time in UTC, then the report's id).
pub fn report_name(stream: &str, started: Timestamp, id: &str) -> ArchiveName {
    let t = started.strftime("%Y%m%dt%H%M%Sz").to_string();
    ArchiveName::new(stream, format!("{t}.{id}")).expect("report names are valid archive names")
}

/// Stores `value` as JSON under `name` in `repo` (sealed with its key;
/// idempotent).
pub async fn store_json<T: Serialize>(
    repo: &Repository,
    name: &ArchiveName,
    value: &T,
) -> lifeboat_repo::Result<()> {
    let body = serde_json::to_vec(value).expect("reports serialize");
    archive::put(repo, name, Arc::new(body)).await?;
    Ok(())
}

/// Every JSON object of `stream` in `repo` that decodes as a `T`, in name
/// order (start time first). Objects that do not decode are skipped (a
/// newer lifeboat's format).
pub async fn load_stream<T: serde::de::DeserializeOwned>(
    repo: &Repository,
    stream: &str,
) -> lifeboat_repo::Result<Vec<T>> {
    let names: BTreeSet<String> = archive::list(repo)
        .await?
        .remove(stream)
        .unwrap_or_default();
    let mut out = Vec::new();
    for file in names {
        let name = ArchiveName::new(stream, file).expect("listed names are valid");
        if let Some(bytes) = archive::get(repo, &name).await?
            && let Ok(r) = serde_json::from_slice::<T>(&bytes)
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// Stores `report` in `repo` (sealed with its key; idempotent).
pub async fn store(repo: &Repository, report: &RunReport) -> lifeboat_repo::Result<()> {
    store_json(repo, &report.archive_name(), report).await
}

/// Every run report stored in `repo`, oldest first. Objects that do not
/// decode as a report are skipped (a newer lifeboat's format).
pub async fn load_all(repo: &Repository) -> lifeboat_repo::Result<Vec<RunReport>> {
    let mut out: Vec<RunReport> = load_stream(repo, REPORT_STREAM).await?;
    out.sort_by_key(|r| r.started);
    Ok(out)
}
