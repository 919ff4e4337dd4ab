//! Repository locks: shared locks held by write sessions (backups), an
//! exclusive lock held by prune, so that prune never deletes data a running
//! backup is about to reference.
//!
//! A lock is an object in the `locks/` namespace, named by 32 random bytes in
//! hex and holding `seal(JSON of LockInfo, LOCK_AAD)`. Objects are never
//! rewritten: a holder *refreshes* its lock by writing a new object with a
//! new `refreshed` time and then deleting the old one. A lock whose
//! `refreshed` time is older than [`STALE_AFTER`] (or whose process is known
//! to be dead, see [`LockOptions`]) is stale: ignored by everyone and deleted
//! by prune.
//!
//! Protocol (restic's, in spirit): write your own lock, *then* list the
//! others; give up (deleting your own) if an incompatible live lock exists.
//! Because `list` shows every object whose `put` returned before it
//! (`list_after_write`), of two racing holders at least one sees the other.
//! The argument is written out in `docs/format.md` ("Locks").
//!
//! Main types: [`RepositoryLock`] (a held lock, refreshed by a Tokio task until
//! [`RepositoryLock::release`]), [`LockInfo`] (what is stored),
//! [`LockOptions`] (host, pid and an injectable [`Clock`] for tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_storage::{DynStorage, ErrorKind, Kind, ObjectKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio::task::JoinHandle;

use crate::crypto::MasterKey;
use crate::limits::{MAX_LOCK_LEN, too_large};
use crate::repository::Repository;
use crate::{Error, Result};

pub(crate) const LOCK_AAD: &[u8] = b"lifeboat lock v1";

/// Age of `refreshed` after which a lock is ignored. Six refresh intervals:
/// a holder that is alive refreshes long before, even through several failed
/// refresh attempts or slow storage, and a crashed backup blocks prune for at
/// most half an hour.
pub const STALE_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(30 * 60);

/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Source of wall-clock time. Injectable so lock expiry is tested without
/// sleeping.
pub type Clock = Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(jiff::Timestamp::now)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    /// Held by write sessions; any number may coexist.
    Shared,
    /// Held by prune; excludes every other lock.
    Exclusive,
}

/// The content of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    /// When the holder first took the lock.
    pub created: jiff::Timestamp,
    /// When this object was written.
    pub refreshed: jiff::Timestamp,
}

impl LockInfo {
    /// Sealed under the shared key in a repository that takes write-only
    /// keys (a write-only backup must see a prune's lock), else under the
    /// master key.
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        key.seal_shared(
            &serde_json::to_vec(self).expect("lock info serializes"),
            LOCK_AAD,
        )
    }

    pub fn decode(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Self> {
        let plain = key
            .open_shared(sealed, LOCK_AAD)
            .ok_or_else(|| Error::corrupt(object, "authentication failed"))?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(object, e))
    }

    /// "a backup on HOST (pid N) since T", for messages.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            LockKind::Shared => "a backup",
            LockKind::Exclusive => "a prune",
        };
        format!(
            "{what} on {} (pid {}) since {}",
            self.host,
            self.pid,
            self.created.strftime("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// Who takes a lock and how time is read.
#[derive(Clone)]
pub struct LockOptions {
    pub clock: Clock,
    /// This machine's name, recorded in the lock.
    pub host: String,
    /// This process, recorded in the lock. A lock with this `host` whose pid
    /// is not a running process here is stale at once (its holder crashed):
    /// this is what lets a prune run right after a killed backup or prune.
    pub pid: u32,
    pub stale_after: jiff::SignedDuration,
    pub refresh_every: Duration,
    /// How long `acquire` waits out an incompatible live lock, trying again
    /// every few seconds, before failing with [`Error::Locked`] (zero: fail
    /// at once).
    pub retry_for: Duration,
}

impl std::fmt::Debug for LockOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockOptions")
            .field("host", &self.host)
            .field("pid", &self.pid)
            .field("stale_after", &self.stale_after)
            .field("refresh_every", &self.refresh_every)
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            clock: system_clock(),
            host: crate::keyfile::hostname(),
            pid: std::process::id(),
            stale_after: STALE_AFTER,
            refresh_every: REFRESH_EVERY,
            retry_for: default_retry(),
        }
    }
}

/// Process-wide default of [`LockOptions::retry_for`], in milliseconds.
static DEFAULT_RETRY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets how long locks taken with default options (a backup's write
/// session) wait out an incompatible lock: the CLI's `--retry-lock`.
pub fn set_default_retry(d: Duration) {
    DEFAULT_RETRY_MS.store(
        d.as_millis().min(u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn default_retry() -> Duration {
    Duration::from_millis(DEFAULT_RETRY_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Lock acquisitions under way (see [`release_held_locks`]).
static ACQUIRING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Longest [`release_held_locks`] waits for acquisitions under way: one
/// lock write and one listing, far beyond what a reachable storage takes.
const ACQUIRE_WAIT: Duration = Duration::from_secs(10);

/// Every lock this process holds, so a signal handler can remove them
/// before the process exits ([`release_held_locks`]).
static HELD: Mutex<Vec<std::sync::Weak<Inner>>> = Mutex::new(Vec::new());

/// Deletes the object of every lock this process still holds and keeps
/// them from being refreshed again. For a process about to exit on a
/// signal (SIGINT, SIGTERM): the work in progress is abandoned (nothing it
/// wrote is referenced by a snapshot record; prune removes it) and no lock
/// is left to block a prune. Returns how many locks were removed.
pub async fn release_held_locks() -> usize {
    // A lock being acquired has (or is about to have) its object written
    // but is not in HELD yet: wait for those acquisitions, which run to the
    // end even when their caller was stopped (see `RepositoryLock::acquire`).
    // Bounded: an acquisition that hangs on storage is given up on.
    let deadline = tokio::time::Instant::now() + ACQUIRE_WAIT;
    while ACQUIRING.load(std::sync::atomic::Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held: Vec<Arc<Inner>> = HELD
        .lock()
        .unwrap()
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    let mut removed = 0;
    for inner in held {
        // Taken and never given back: a refresh waits on it forever, so it
        // cannot write a new object after this delete.
        let current = inner.current.lock().await;
        match inner.storage.delete(&current).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove the repository lock {}: {e}", *current),
        }
        std::mem::forget(current);
    }
    removed
}

impl LockOptions {
    /// True if `info` no longer protects anything: not refreshed for
    /// `stale_after`, or held by a process of this host that is gone.
    pub fn is_stale(&self, info: &LockInfo) -> bool {
        let now = (self.clock)();
        if now.duration_since(info.refreshed) > self.stale_after {
            return true;
        }
        info.host == self.host && info.pid != self.pid && !process_alive(info.pid)
    }
}

/// Whether a process with this pid runs on this machine. Where that cannot be
/// told (no `/proc`), every process counts as alive, so locks only expire by
/// age.
fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// A lock object found in the repository.
#[derive(Debug)]
pub struct FoundLock {
    pub key: ObjectKey,
    /// `Err` for an object that cannot be decrypted or parsed (damage); such
    /// objects are ignored and removed by prune.
    pub info: Result<LockInfo>,
}

/// Lists and reads every lock object. A listed lock that vanishes before it
/// is read was usually replaced by a refresh (new object first, then the old
/// one deleted), so the listing is repeated until it is consistent: skipping
/// it could miss the live replacement.
pub async fn list_locks(storage: &DynStorage, key: &MasterKey) -> Result<Vec<FoundLock>> {
    list_locks_except(storage, key, None).await
}

/// [`list_locks`] without reading (or returning) `own`: the lock this
/// process just wrote, whose content it knows.
async fn list_locks_except(
    storage: &DynStorage,
    key: &MasterKey,
    own: Option<&ObjectKey>,
) -> Result<Vec<FoundLock>> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let mut out = Vec::new();
        let mut vanished = false;
        for obj in storage.list(Kind::Locks).await? {
            if Some(&obj.key) == own {
                continue;
            }
            if obj.size_bytes > MAX_LOCK_LEN {
                // Not read: refused like an undecodable lock (ignored,
                // and deleted by prune).
                let info = Err(too_large(&obj.key, Some(obj.size_bytes), MAX_LOCK_LEN));
                out.push(FoundLock { key: obj.key, info });
                continue;
            }
            match storage.get(&obj.key).await {
                Ok(bytes) => {
                    let info = LockInfo::decode(key, &obj.key.to_string(), &bytes);
                    out.push(FoundLock { key: obj.key, info });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => vanished = true,
                Err(e) => return Err(e.into()),
            }
        }
        if !vanished {
            return Ok(out);
        }
    }
    Err(Error::Locked {
        holder: "another process (its lock objects keep changing)".into(),
    })
}

struct Inner {
    storage: DynStorage,
    key: MasterKey,
    options: LockOptions,
    kind: LockKind,
    created: jiff::Timestamp,
    /// The current lock object. Held across a refresh so release never
    /// races with one.
    current: AsyncMutex<ObjectKey>,
    /// When the current object was written, and whether there ever was a gap
    /// of `stale_after` between two writes (then others may have considered
    /// the lock stale in between, and it no longer proves anything).
    state: Mutex<RefreshState>,
}

struct RefreshState {
    last: jiff::Timestamp,
    lost: bool,
    last_error: Option<String>,
}

impl Inner {
    fn info(&self, now: jiff::Timestamp) -> LockInfo {
        LockInfo {
            kind: self.kind,
            host: self.options.host.clone(),
            pid: self.options.pid,
            created: self.created,
            refreshed: now,
        }
    }

    async fn write(&self, now: jiff::Timestamp) -> Result<ObjectKey> {
        let name = hex::encode(crate::crypto::os_random::<32>());
        let key = ObjectKey::new(Kind::Locks, name);
        let bytes = self.info(now).encode(&self.key);
        self.storage.put(&key, bytes.into()).await?;
        Ok(key)
    }

    async fn refresh(&self) -> Result<()> {
        let mut current = self.current.lock().await;
        let now = (self.options.clock)();
        let new = self.write(now).await?;
        let old = std::mem::replace(&mut *current, new);
        {
            let mut st = self.state.lock().unwrap();
            if now.duration_since(st.last) >= self.options.stale_after {
                st.lost = true;
            }
            st.last = now;
            st.last_error = None;
        }
        drop(current);
        if let Err(e) = self.storage.delete(&old).await {
            // Harmless: the old object goes stale and prune removes it.
            tracing::warn!("cannot delete old lock object {old}: {e}");
        }
        Ok(())
    }
}

/// A held lock. Refreshed in the background every
/// [`LockOptions::refresh_every`] until [`RepositoryLock::release`]; dropping
/// it without releasing deletes the lock object on a best-effort basis.
pub struct RepositoryLock {
    inner: Arc<Inner>,
    stop: Arc<Notify>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RepositoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryLock")
            .field("kind", &self.inner.kind)
            .finish()
    }
}

impl RepositoryLock {
    /// Takes a lock: writes the lock object, then lists the others, and fails
    /// with [`Error::Locked`] (after deleting its own object) if a live
    /// incompatible lock exists. Must be called inside a Tokio runtime.
    /// With [`LockOptions::retry_for`], a conflict is retried until that
    /// much time has passed.
    pub async fn acquire(repo: &Repository, kind: LockKind, options: &LockOptions) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + options.retry_for;
        loop {
            // The acquisition runs as a task of its own, to its end even if
            // this caller is dropped (a SIGINT stops the command): between
            // writing its object and registering in HELD a lock would
            // otherwise be left behind. The count lets
            // `release_held_locks` wait for it.
            ACQUIRING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (storage, key, opts) =
                (repo.storage().clone(), repo.key().clone(), options.clone());
            let task = tokio::spawn(async move {
                let r = Self::acquire_in(storage, key, kind, &opts).await;
                ACQUIRING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                r
            });
            let acquired = task
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("lock task failed: {e}"))));
            match acquired {
                Err(Error::Locked { holder }) if tokio::time::Instant::now() < deadline => {
                    tracing::info!("repository is in use by {holder}; waiting (--retry-lock)");
                    let left = deadline - tokio::time::Instant::now();
                    tokio::time::sleep(left.min(Duration::from_secs(2))).await;
                }
                r => return r,
            }
        }
    }

    pub(crate) async fn acquire_in(
        storage: DynStorage,
        key: MasterKey,
        kind: LockKind,
        options: &LockOptions,
    ) -> Result<Self> {
        let now = (options.clock)();
        let inner = Arc::new(Inner {
            storage,
            key,
            options: options.clone(),
            kind,
            created: now,
            current: AsyncMutex::new(ObjectKey::config()),
            state: Mutex::new(RefreshState {
                last: now,
                lost: false,
                last_error: None,
            }),
        });
        let own = inner.write(now).await?;
        *inner.current.lock().await = own.clone();
        let conflict = match list_locks_except(&inner.storage, &inner.key, Some(&own)).await {
            Ok(found) => Ok(found.into_iter().find_map(|l| {
                let info = l.info.ok()?;
                let incompatible = kind == LockKind::Exclusive || info.kind == LockKind::Exclusive;
                (incompatible && !options.is_stale(&info)).then_some(info)
            })),
            Err(e) => Err(e),
        };
        match conflict {
            Ok(None) => {}
            Ok(Some(info)) => {
                inner.storage.delete(&own).await?;
                return Err(Error::Locked {
                    holder: info.describe(),
                });
            }
            Err(e) => {
                let _ = inner.storage.delete(&own).await;
                return Err(e);
            }
        }
        {
            let mut held = HELD.lock().unwrap();
            held.retain(|w| w.strong_count() > 0);
            held.push(Arc::downgrade(&inner));
        }
        let stop = Arc::new(Notify::new());
        let refresher = tokio::spawn(refresh_loop(inner.clone(), stop.clone()));
        Ok(RepositoryLock {
            inner,
            stop,
            refresher: Some(refresher),
        })
    }

    pub fn kind(&self) -> LockKind {
        self.inner.kind
    }

    /// Refreshes now (the background task does this periodically).
    pub async fn refresh(&self) -> Result<()> {
        self.inner.refresh().await
    }

    /// Proves the lock still protects us: it was refreshed within
    /// `stale_after` continuously and its object still exists. A write
    /// session checks this before writing its snapshot record.
    pub async fn verify(&self) -> Result<()> {
        let (last, lost, err) = {
            let st = self.inner.state.lock().unwrap();
            (st.last, st.lost, st.last_error.clone())
        };
        let now = (self.inner.options.clock)();
        let age = now.duration_since(last);
        let why = if lost || age >= self.inner.options.stale_after {
            Some(format!(
                "it was not refreshed for {} minutes{}",
                age.as_secs() / 60,
                err.map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ))
        } else {
            let current = self.inner.current.lock().await.clone();
            match self.inner.storage.stat(&current).await? {
                Some(_) => None,
                None => Some(format!("its object {current} was removed")),
            }
        };
        match why {
            None => Ok(()),
            Some(why) => Err(Error::LockLost { reason: why }),
        }
    }

    /// Stops refreshing and deletes the lock object.
    pub async fn release(mut self) -> Result<()> {
        self.stop.notify_one();
        if let Some(task) = self.refresher.take() {
            let _ = task.await;
        }
        let current = self.inner.current.lock().await.clone();
        self.inner.storage.delete(&current).await?;
        Ok(())
    }
}

impl Drop for RepositoryLock {
    fn drop(&mut self) {
        let Some(task) = self.refresher.take() else {
            return;
        };
        task.abort();
        // Best effort: a lock left behind blocks prune until it is stale
        // (or at once, if this process exits).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            handle.spawn(async move {
                let current = inner.current.lock().await.clone();
                let _ = inner.storage.delete(&current).await;
            });
        }
    }
}

async fn refresh_loop(inner: Arc<Inner>, stop: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(inner.options.refresh_every) => {}
        }
        if let Err(e) = inner.refresh().await {
            tracing::warn!("cannot refresh the repository lock: {e}");
            inner.state.lock().unwrap().last_error = Some(e.to_string());
        }
    }
}

/// Deletes stale and unreadable lock objects (prune, under its exclusive
/// lock). Returns how many were removed.
pub async fn remove_stale_locks(
    storage: &DynStorage,
    key: &MasterKey,
    options: &LockOptions,
) -> Result<usize> {
    let mut removed = 0;
    for l in list_locks(storage, key).await? {
        let stale = match &l.info {
            Ok(info) => options.is_stale(info),
            Err(_) => true,
        };
        if stale {
            storage.delete(&l.key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: LockKind, host: &str, pid: u32, refreshed: i64) -> LockInfo {
        LockInfo {
            kind,
            host: host.into(),
            pid,
            created: jiff::Timestamp::from_second(refreshed).unwrap(),
            refreshed: jiff::Timestamp::from_second(refreshed).unwrap(),
        }
    }

    fn options_at(now: i64) -> LockOptions {
        LockOptions {
            clock: Arc::new(move || jiff::Timestamp::from_second(now).unwrap()),
            host: "here".into(),
            pid: std::process::id(),
            ..Default::default()
        }
    }

    #[test]
    fn staleness_by_age_and_by_dead_process() {
        let o = options_at(10_000);
        let me = std::process::id();
        assert!(!o.is_stale(&info(LockKind::Shared, "elsewhere", 1, 10_000 - 29 * 60)));
        assert!(o.is_stale(&info(LockKind::Shared, "elsewhere", 1, 10_000 - 31 * 60)));
        // A clock ahead of ours: not stale.
        assert!(!o.is_stale(&info(LockKind::Shared, "elsewhere", 1, 20_000)));
        // Same host: our own pid is alive, a pid beyond pid_max is not.
        assert!(!o.is_stale(&info(LockKind::Shared, "here", me, 10_000)));
        assert!(o.is_stale(&info(LockKind::Shared, "here", u32::MAX - 1, 10_000)));
        // Another host with that pid: only age counts.
        assert!(!o.is_stale(&info(LockKind::Shared, "elsewhere", u32::MAX - 1, 10_000)));
    }

    #[test]
    fn lock_info_round_trips_and_is_bound_to_its_role() {
        let k = MasterKey::generate();
        let i = info(LockKind::Exclusive, "h", 7, 1_700_000_000);
        let sealed = i.encode(&k);
        assert_eq!(LockInfo::decode(&k, "x", &sealed).unwrap(), i);
        assert!(LockInfo::decode(&MasterKey::generate(), "x", &sealed).is_err());
        let json = String::from_utf8(k.open(&sealed, LOCK_AAD).unwrap()).unwrap();
        assert!(json.contains("\"kind\":\"exclusive\""), "{json}");
    }
}
