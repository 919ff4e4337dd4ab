//! The daemon's object-lock maintenance (issue 16): every object-lock
//! repository of the config gets its retention extended on a schedule
//! (`lifeboat lock extend`, audited), so live data never falls out of
//! protection between prunes.
//!
//! Which repositories: those on S3 (the only storage with object lock);
//! whether one has object lock is read from its config when the daemon
//! first extends it, and a repository without it is looked at again only
//! daily. How often: the repository's `lock-extend-every`, else a third of
//! its lock period (at least an hour), so two extensions in a row can fail
//! (and alert) before anything written before them loses its lock. A
//! failed extension alerts (`lock-extend-failed`), is retried after an
//! hour (or sooner, at the interval), and shows in `/metrics`
//! (`lifeboat_lock_extend_last_success_timestamp_seconds`,
//! `lifeboat_lock_extend_failing`). The state is kept in
//! `<state-dir>/lock-extend/<repository>.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::{Config, RepositoryConfig};
use crate::error::{Error, Result};
use crate::state::StateDir;

/// A failed extension is tried again this long after (or at the
/// repository's interval, when that is shorter).
pub const RETRY_SECS: u64 = 3600;
/// A repository found without object lock is looked at again this long
/// after (its config cannot gain object lock, but a reload may point the
/// name at another location).
pub const NOT_LOCKED_RECHECK_SECS: u64 = 24 * 3600;
/// The shortest default interval.
const MIN_EVERY_SECS: u64 = 3600;

/// What the daemon last did for one repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockExtendState {
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    /// Every current object was locked at least until this after the last
    /// success.
    pub until: Option<String>,
    /// The repository's lock period, as last read.
    pub days: Option<u32>,
    /// The repository has no object lock (nothing to extend).
    #[serde(default)]
    pub not_locked: bool,
    /// Failures since the last success.
    #[serde(default)]
    pub failures: u32,
    pub error: Option<String>,
}

fn file(state: &StateDir, repository: &str) -> PathBuf {
    state.job_file("lock-extend", repository)
}

/// The saved state of `repository` (none yet: default).
pub fn load(state: &StateDir, repository: &str) -> LockExtendState {
    crate::state::load_json(&file(state, repository))
}

fn save(state: &StateDir, repository: &str, s: &LockExtendState) -> Result<()> {
    crate::state::save_json(&file(state, repository), s)
}

/// Every repository whose state was saved, for `/metrics`.
pub fn all(config: &Config) -> BTreeMap<String, LockExtendState> {
    let state = StateDir::new(&config.state_dir);
    config
        .repositories
        .keys()
        .filter(|n| file(&state, n).exists())
        .map(|n| (n.clone(), load(&state, n)))
        .collect()
}

/// Whether the daemon schedules extensions for `r`: object lock exists
/// only on S3.
pub fn candidate(r: &RepositoryConfig) -> bool {
    matches!(
        lifeboat_storage::Location::parse(&r.location),
        Ok(lifeboat_storage::Location::S3(_))
    )
}

/// The interval between extensions of a repository locked for `days`.
pub fn every(r: &RepositoryConfig, days: u32) -> u64 {
    r.lock_extend_every
        .map(|d| d.seconds())
        .unwrap_or_else(|| (u64::from(days) * 24 * 3600 / 3).max(MIN_EVERY_SECS))
}

/// When the next extension of `r` is due, from its saved state.
pub fn next_due(r: &RepositoryConfig, s: &LockExtendState, now: Timestamp) -> Timestamp {
    let Some(last) = s.last_attempt else {
        return now;
    };
    let secs = if s.not_locked {
        NOT_LOCKED_RECHECK_SECS
    } else if s.error.is_some() {
        s.days.map_or(RETRY_SECS, |d| every(r, d).min(RETRY_SECS))
    } else {
        s.days.map_or(RETRY_SECS, |d| every(r, d))
    };
    last.checked_add(jiff::SignedDuration::from_secs(secs as i64))
        .unwrap_or(now)
}

/// What one extension did.
#[derive(Debug, Clone, PartialEq)]
pub enum Extended {
    NotLocked,
    Done(lifeboat_repo::objectlock::ExtendStats),
}

/// Extends the retention of everything current in `repository` (audited
/// as `lock extend`), records the outcome in the state directory, and
/// returns it with the alert event it raises or ends.
pub async fn run(
    config: &Config,
    repository: &str,
    now: Timestamp,
) -> (Result<Extended>, crate::alert::Event) {
    let state = StateDir::new(&config.state_dir);
    let mut s = load(&state, repository);
    s.last_attempt = Some(now);
    let r = match config.repositories.get(repository) {
        Some(r) => extend(repository, r, &mut s).await,
        None => Err(Error::Password {
            repository: repository.to_string(),
            message: "not in the config any more".into(),
        }),
    };
    let condition = crate::alert::conditions::LOCK_EXTEND_FAILED;
    let event = match &r {
        Ok(_) => {
            s.failures = 0;
            s.error = None;
            crate::alert::Event::recovered(
                condition,
                "",
                repository,
                format!("object-lock retention of {repository} extended"),
            )
        }
        Err(e) => {
            s.failures += 1;
            s.error = Some(e.to_string());
            crate::alert::Event::problem(
                condition,
                "",
                repository,
                format!(
                    "extending the object-lock retention of {repository} failed ({} time(s) in a row): {e}; \
                     objects whose lock runs out are no longer protected from deletion",
                    s.failures
                ),
            )
        }
    };
    if let Err(e) = save(&state, repository, &s) {
        tracing::warn!("{e}");
    }
    (r, event)
}

async fn extend(name: &str, r: &RepositoryConfig, s: &mut LockExtendState) -> Result<Extended> {
    let repo = crate::repos::open(name, r).await?;
    let Some(lock) = repo.config().object_lock else {
        s.not_locked = true;
        s.days = None;
        return Ok(Extended::NotLocked);
    };
    s.not_locked = false;
    s.days = Some(lock.days);
    let stats = lifeboat_repo::objectlock::extend_repository(&repo, lock)
        .await
        .map_err(|source| Error::Repo {
            repository: name.to_string(),
            source,
        })?;
    s.last_success = s.last_attempt;
    s.until = Some(stats.until.clone());
    Ok(Extended::Done(stats))
}
