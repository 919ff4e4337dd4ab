//! The daemon's ransomware detection after the fact (issue 16,
//! docs/security.md §12): a write-only host cannot read the snapshot
//! before its new one, so its backups are not checked for an encryption
//! event when they are taken. A daemon holding a full key for the
//! repository (`detect-every` on `[repository.NAME]`) runs what
//! `lifeboat detect` does, every interval, over the snapshots it has not
//! checked yet: each is compared with the snapshot of the same source
//! before it ([`lifeboat_snapshot::detect::check_after`], default
//! thresholds), a suspect one is tagged `suspect` and its predecessor
//! protected, and `ransomware-suspected` goes out through the alert
//! channels (plan empty; the repository names it). Every snapshot is
//! checked once: the ids checked are kept in
//! `<state-dir>/detect/<repository>.json`. A run that cannot happen (no
//! full key, repository unreachable) alerts `detect-failed` and is tried
//! again after an hour, or sooner at the interval.

use std::collections::BTreeSet;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::alert::{Event, conditions};
use crate::config::{Config, RepositoryConfig};
use crate::error::{Error, Result};
use crate::state::StateDir;

/// A failed run is tried again this long after (or at the repository's
/// interval, when that is shorter).
pub const RETRY_SECS: u64 = 3600;

/// What the daemon knows of one repository's detection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectState {
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    /// The snapshots checked (full ids), among those the repository still
    /// holds.
    #[serde(default)]
    pub checked: BTreeSet<String>,
    /// Failures since the last success.
    #[serde(default)]
    pub failures: u32,
    pub error: Option<String>,
}

fn file(state: &StateDir, repository: &str) -> PathBuf {
    state.job_file("detect", repository)
}

/// The saved state of `repository` (none yet: default).
pub fn load(state: &StateDir, repository: &str) -> DetectState {
    crate::state::load_json(&file(state, repository))
}

/// Whether the daemon runs detection on `r`.
pub fn candidate(r: &RepositoryConfig) -> bool {
    r.detect_every.is_some()
}

/// When the next run on `r` is due, from its saved state.
pub fn next_due(r: &RepositoryConfig, s: &DetectState, now: Timestamp) -> Timestamp {
    let (Some(every), Some(last)) = (r.detect_every, s.last_attempt) else {
        return now;
    };
    let secs = if s.error.is_some() {
        every.seconds().min(RETRY_SECS)
    } else {
        every.seconds()
    };
    last.checked_add(jiff::SignedDuration::from_secs(secs as i64))
        .unwrap_or(now)
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detected {
    /// Snapshots checked now (the first of a source included: nothing to
    /// compare it with, so nothing to find).
    pub checked: usize,
    /// Snapshots found suspect and tagged now, by their new ids.
    pub suspect: Vec<String>,
}

/// Checks the snapshots of `repository` not checked before, records the
/// outcome in the state directory, and returns it with the alert events
/// it raises or ends.
pub async fn run(
    config: &Config,
    repository: &str,
    now: Timestamp,
) -> (Result<Detected>, Vec<Event>) {
    let state = StateDir::new(&config.state_dir);
    let mut s = load(&state, repository);
    s.last_attempt = Some(now);
    let r = match config.repositories.get(repository) {
        Some(r) => detect(repository, r, &mut s).await,
        None => Err(Error::Password {
            repository: repository.to_string(),
            message: "not in the config any more".into(),
        }),
    };
    let mut events = Vec::new();
    match &r {
        Ok(found) => {
            s.failures = 0;
            s.error = None;
            s.last_success = Some(now);
            events.push(Event::recovered(
                conditions::DETECT_FAILED,
                "",
                repository,
                format!("ransomware detection on {repository} ran"),
            ));
            if let Some(e) = suspect_event(repository, found) {
                events.push(e);
            }
        }
        Err(e) => {
            s.failures += 1;
            s.error = Some(e.to_string());
            events.push(Event::problem(
                conditions::DETECT_FAILED,
                "",
                repository,
                format!(
                    "ransomware detection on {repository} failed ({} time(s) in a row): {e}; \
                     backups of write-only hosts into it are not being checked",
                    s.failures
                ),
            ));
        }
    }
    if let Err(e) = crate::state::save_json(&file(&state, repository), &s) {
        tracing::warn!("{e}");
    }
    (r, events)
}

/// `ransomware-suspected` for a run that tagged snapshots; recovered for
/// one that compared snapshots and found none; nothing when there was
/// nothing new to compare.
fn suspect_event(repository: &str, found: &Detected) -> Option<Event> {
    if found.suspect.is_empty() {
        return (found.checked > 0).then(|| {
            Event::recovered(
                conditions::RANSOMWARE_SUSPECTED,
                "",
                repository,
                format!("the newest snapshots in {repository} show no sign of encryption"),
            )
        });
    }
    let short: Vec<&str> = found
        .suspect
        .iter()
        .map(|id| &id[..id.len().min(8)])
        .collect();
    Some(
        Event::problem(
            conditions::RANSOMWARE_SUSPECTED,
            "",
            repository,
            format!(
                "snapshot(s) {} in {repository} look like their source was just encrypted; \
                 they are tagged `suspect` and the snapshot before each is protected \
                 (`lifeboat detect --dry-run` says why). Look at the sources now",
                short.join(", ")
            ),
        )
        .with_detail("snapshots", found.suspect.join(", ")),
    )
}

async fn detect(name: &str, r: &RepositoryConfig, s: &mut DetectState) -> Result<Detected> {
    let repo_err = |source: lifeboat_repo::Error| Error::Repo {
        repository: name.to_string(),
        source,
    };
    let repo = crate::repos::open(name, r).await?;
    let mut all = repo.snapshots().await.map_err(repo_err)?;
    let targets: Vec<lifeboat_repo::Id> = all
        .iter()
        .filter(|snap| !s.checked.contains(&snap.id.to_hex()))
        .map(|snap| snap.id)
        .collect();
    let checks = lifeboat_snapshot::detect::check_after(
        &repo,
        &mut all,
        &targets,
        &lifeboat_snapshot::detect::DetectOptions::default(),
        false,
    )
    .await
    .map_err(|source| Error::Snapshot {
        repository: name.to_string(),
        source,
    })?;
    let mut found = Detected {
        checked: checks.len(),
        suspect: Vec::new(),
    };
    for c in &checks {
        s.checked.insert(c.snapshot.clone());
        if let Some(tagged) = &c.tagged {
            s.checked.insert(tagged.clone());
            found.suspect.push(tagged.clone());
        }
    }
    // Forget what the repository no longer holds (forgotten, or replaced
    // by its tagged record).
    let present: BTreeSet<String> = all.iter().map(|snap| snap.id.to_hex()).collect();
    s.checked.retain(|id| present.contains(id));
    Ok(found)
}
