//! The local state directory: what survives a restart of the daemon and is
//! read by `status`, `doctor` and `/metrics` without touching a
//! repository (freshness comes from saved state, not from scanning).
//!
//! Layout under `state-dir`:
//! - `plans/<plan>.json`: [`PlanState`], rewritten after each run through
//!   a temporary file and a rename (never half-written);
//! - `reports/<plan>.jsonl`: every [`RunReport`], one JSON line each,
//!   appended;
//! - `locks/<plan>.lock`: held (flock) while the plan runs, so `lifeboat
//!   run` and the daemon never run one plan twice at once;
//!   `locks/alerts.guard` guards `alerts.json`;
//! - `alerts.json`: the problems alerted and not yet recovered, per
//!   alert, condition, plan and repository (`alert` module);
//! - `drills/<plan>.json`: the newest restore drill of the plan
//!   ([`DrillSummary`]), written by the drills; `status` reads its
//!   measured RTO.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::report::{Outcome, RunReport, StepKind};

/// Where one repository stands for one plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoState {
    /// Start time of the newest backup (or copy of one) that reached this
    /// repository: the age of this copy of the data.
    pub last_success: Option<Timestamp>,
    pub last_snapshot: Option<String>,
    /// The last failure and its reason, when newer than `last_success`.
    pub last_error: Option<Failure>,
    /// Snapshots the repository held (all plans) at the end of the last
    /// run that reached it.
    #[serde(default)]
    pub snapshots: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub time: Timestamp,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyState {
    pub time: Timestamp,
    /// Problems found, over all repositories checked.
    pub errors: u64,
    /// Repositories that could not be checked at all.
    pub failed: Vec<String>,
}

/// Everything known about one plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanState {
    /// Start time of the newest run whose backup reached at least one
    /// repository.
    pub last_success: Option<Timestamp>,
    pub last_run: Option<LastRun>,
    pub last_failure: Option<Failure>,
    /// Duration of the newest successful run.
    pub last_duration_ms: Option<u64>,
    pub last_added_bytes: u64,
    pub last_full: Option<Timestamp>,
    pub last_differential: Option<Timestamp>,
    pub last_prune: Option<Timestamp>,
    pub last_verify: Option<VerifyState>,
    /// Start of the newest scheduled slot the daemon has handled (run or
    /// caught up), so a restart does not run it again.
    pub last_slot: Option<Timestamp>,
    pub repositories: BTreeMap<String, RepoState>,
    /// Runs per outcome, since the state directory was made.
    pub runs: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub id: String,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub outcome: Outcome,
    pub error: Option<String>,
}

impl PlanState {
    /// Folds a finished run into the state.
    pub fn record(&mut self, r: &RunReport) {
        *self.runs.entry(r.outcome.as_str().to_string()).or_default() += 1;
        self.last_run = Some(LastRun {
            id: r.id.clone(),
            started: r.started,
            finished: r.finished,
            outcome: r.outcome,
            error: r.error.clone(),
        });
        let backed_up = r
            .steps_of(StepKind::Backup)
            .any(|s| matches!(s.outcome, Outcome::Ok | Outcome::Partial));
        if backed_up {
            self.last_success = Some(r.started);
            self.last_duration_ms = Some(r.duration_ms);
            self.last_added_bytes = r.added_bytes;
            match r.mode.as_deref() {
                Some("full") => self.last_full = Some(r.started),
                Some("differential") => self.last_differential = Some(r.started),
                _ => {}
            }
        }
        if matches!(r.outcome, Outcome::Failed | Outcome::Partial) {
            self.last_failure = Some(Failure {
                time: r.finished,
                reason: r
                    .error
                    .clone()
                    .unwrap_or_else(|| "see the run report".into()),
            });
        }
        for s in &r.steps {
            match s.step {
                StepKind::Backup | StepKind::Copy => {
                    let e = self.repositories.entry(s.repository.clone()).or_default();
                    match s.outcome {
                        Outcome::Ok | Outcome::Partial => {
                            e.last_success = Some(r.started);
                            e.last_snapshot = s.snapshot.clone();
                            e.last_error = None;
                        }
                        Outcome::Failed | Outcome::Locked => {
                            e.last_error = Some(Failure {
                                time: s.finished,
                                reason: s.error.clone().unwrap_or_default(),
                            });
                        }
                        Outcome::Skipped => {}
                    }
                }
                StepKind::Prune if s.outcome == Outcome::Ok => self.last_prune = Some(r.started),
                _ => {}
            }
        }
        for (repo, n) in &r.repository_snapshots {
            self.repositories.entry(repo.clone()).or_default().snapshots = Some(*n);
        }
        let verifies: Vec<_> = r.steps_of(StepKind::Verify).collect();
        if verifies.iter().any(|s| s.outcome != Outcome::Skipped) {
            self.last_verify = Some(VerifyState {
                time: r.started,
                errors: verifies.iter().map(|s| s.count).sum(),
                failed: verifies
                    .iter()
                    .filter(|s| s.outcome == Outcome::Failed && s.count == 0)
                    .map(|s| s.repository.clone())
                    .collect(),
            });
        }
    }
}

/// The newest restore drill of a plan, as the drill code writes it to
/// `drills/<plan>.json` (the seam between drills and `status`; the shape
/// is in docs/operations.md, "RTO"). Unknown fields are ignored, so a
/// drill report may carry more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillSummary {
    pub plan: String,
    /// When the drill finished.
    pub time: Timestamp,
    /// `ok` or `failed`.
    pub outcome: String,
    /// Measured time from the start of the restore to the data being
    /// usable (the measured RTO), when the drill got that far.
    #[serde(default)]
    pub rto_seconds: Option<f64>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state file of a per-repository daemon job:
    /// `<state-dir>/<job>/<repository>.json` (read and written with
    /// [`load_json`] and [`save_json`]).
    pub(crate) fn job_file(&self, job: &str, repository: &str) -> PathBuf {
        self.root.join(job).join(format!("{repository}.json"))
    }

    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::State {
            path: path.to_path_buf(),
            source,
        }
    }

    fn plan_file(&self, plan: &str) -> PathBuf {
        self.root.join("plans").join(format!("{plan}.json"))
    }

    fn reports_file(&self, plan: &str) -> PathBuf {
        self.root.join("reports").join(format!("{plan}.jsonl"))
    }

    /// The plan's state (empty if it never ran). A damaged file is treated
    /// as empty with a warning: status must not stop at it.
    pub fn plan(&self, plan: &str) -> Result<PlanState> {
        let path = self.plan_file(plan);
        match fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable state ({e}); starting afresh",
                    path.display()
                );
                PlanState::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PlanState::default()),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// Where the newest drill of `plan` is written.
    pub fn drill_file(&self, plan: &str) -> PathBuf {
        self.root.join("drills").join(format!("{plan}.json"))
    }

    /// The newest drill of `plan`, if one was recorded (an unreadable file
    /// counts as none, with a warning).
    pub fn last_drill(&self, plan: &str) -> Option<DrillSummary> {
        let path = self.drill_file(plan);
        let bytes = fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| tracing::warn!("{}: unreadable drill report ({e})", path.display()))
            .ok()
    }

    /// Records `drill` as the newest of its plan (atomically).
    pub fn save_drill(&self, drill: &DrillSummary) -> Result<()> {
        write_atomic(
            &self.drill_file(&drill.plan),
            &serde_json::to_vec_pretty(drill).expect("drills serialize"),
        )
    }

    /// Writes the plan's state atomically.
    pub fn save_plan(&self, plan: &str, state: &PlanState) -> Result<()> {
        let path = self.plan_file(plan);
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(state).expect("state serializes"),
        )
    }

    /// Appends a report to the plan's history and folds it into its state.
    pub fn record(&self, report: &RunReport) -> Result<PlanState> {
        append_line(&self.reports_file(&report.plan), report)?;
        let mut state = self.plan(&report.plan)?;
        state.record(report);
        self.save_plan(&report.plan, &state)?;
        Ok(state)
    }

    /// The plan's reports, oldest first (at most the newest `limit`).
    pub fn reports(&self, plan: &str, limit: usize) -> Result<Vec<RunReport>> {
        let path = self.reports_file(plan);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::err(&path)(e)),
        };
        let all: Vec<RunReport> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).collect())
    }

    fn open_lock(&self, file: &str) -> Result<(PathBuf, fs::File)> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(Self::err(&dir))?;
        let path = dir.join(file);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Self::err(&path))?;
        Ok((path, f))
    }

    /// Takes the plan's run lock, or says who holds it.
    pub fn lock_plan(&self, plan: &str) -> Result<Option<PlanLock>> {
        let (path, f) = self.open_lock(&format!("{plan}.lock"))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(PlanLock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(Self::err(&path)(std::io::Error::from(e))),
        }
    }

    /// Takes `locks/<name>.guard`, waiting for another holder (short
    /// read-modify-write sections such as the alert state, `alerts`).
    pub fn lock_file(&self, name: &str) -> Result<PlanLock> {
        let (path, f) = self.open_lock(&format!("{name}.guard"))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(|lock| PlanLock { _lock: lock })
            .map_err(|(_, e)| Self::err(&path)(std::io::Error::from(e)))
    }
}

/// Held while a plan runs; released on drop (and by the kernel if the
/// process dies).
pub struct PlanLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Appends `value` as one JSON line to `path` (created with its
/// directory if missing) and syncs it: the local report histories.
pub(crate) fn append_line(path: &Path, value: &impl Serialize) -> Result<()> {
    let err = |source| Error::State {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(path.parent().expect("has a parent")).map_err(err)?;
    let mut line = serde_json::to_vec(value).expect("reports serialize");
    line.push(b'\n');
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    f.write_all(&line).and_then(|()| f.sync_data()).map_err(err)
}

/// The state of a per-repository daemon job, saved as JSON at `path`
/// (`<state-dir>/<job>/<repository>.json`): the default when none is
/// saved yet or the file does not parse.
pub(crate) fn load_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Saves what [`load_json`] reads, atomically.
pub(crate) fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(
        path,
        &serde_json::to_vec_pretty(value).expect("state serializes"),
    )
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("has a parent");
    fs::create_dir_all(dir).map_err(StateDir::err(dir))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(StateDir::err(&tmp))?;
    f.write_all(bytes).map_err(StateDir::err(&tmp))?;
    f.sync_all().map_err(StateDir::err(&tmp))?;
    fs::rename(&tmp, path).map_err(StateDir::err(path))?;
    Ok(())
}
