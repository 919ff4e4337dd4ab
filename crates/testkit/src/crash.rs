//! A [`Storage`] wrapper that models a power cut.
//!
//! # What "durable" means here
//!
//! The [`Storage`] contract promises that `put` is atomic (a reader sees the
//! whole object or nothing) and durable when it returns, and that `delete`
//! is idempotent; `LocalStorage` keeps the promise with a synced temporary
//! file, `link(2)` and a directory fsync, and also syncs the directory after
//! a delete. So a power cut can only affect the calls that are *in flight*
//! when it happens:
//!
//! - a `put` in flight either landed whole or not at all ([`InFlight`]);
//! - a `delete` in flight either happened or not;
//! - everything that returned before the cut stays as it was;
//! - every call after the cut fails ([`ErrorKind::Unreachable`]): the
//!   process is dead and what it does next does not matter.
//!
//! [`CrashStorage::crash_at`] picks the in-flight call by its sequence
//! number, so a test first counts the calls an operation makes
//! ([`CrashStorage::calls`]) and then replays it with a cut at every call,
//! or a seeded random one. Two switches model *weaker* storage than the
//! contract, to show what the repository code would lose if a backend broke
//! it: [`InFlight::Torn`] leaves a prefix of the in-flight put under its
//! final name (an SFTP server that crashed mid-rename), and
//! [`CrashStorage::lossy_deletes`] undoes a seeded subset of the deletes
//! that had returned (a filesystem that never synced the directory).
//!
//! The surviving state is whatever the wrapped storage holds afterwards: a
//! test "reboots" by opening a new repository handle on it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_storage::{
    Capabilities, DynStorage, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result, Storage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What happens to the `put` in flight at the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InFlight {
    /// Lands whole or not at all, by the seeded generator (the contract).
    #[default]
    Either,
    Lost,
    Landed,
    /// A random prefix lands under the final name (breaks the contract).
    Torn,
}

/// What the cut did, for the test's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// Sequence number of the call in flight (from 1).
    pub call: u64,
    pub op: &'static str,
    pub key: Option<ObjectKey>,
    /// For a put or delete in flight: whether it took effect; for a torn
    /// put, how many bytes landed.
    pub outcome: String,
    /// Deletes undone by [`CrashStorage::lossy_deletes`].
    pub undone_deletes: Vec<ObjectKey>,
}

#[derive(Debug)]
struct State {
    calls: u64,
    crash_at: Option<u64>,
    report: Option<CrashReport>,
    rng: StdRng,
    in_flight: InFlight,
    lossy_deletes: bool,
    /// Deletes that returned, with the bytes they removed (lossy mode only).
    deleted: Vec<(ObjectKey, Bytes)>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct CrashStorage {
    inner: DynStorage,
    state: Arc<Mutex<State>>,
}

impl CrashStorage {
    /// A storage that does not crash (until [`CrashStorage::crash_at`]).
    pub fn new(inner: DynStorage, seed: u64) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(State {
                calls: 0,
                crash_at: None,
                report: None,
                rng: StdRng::seed_from_u64(seed),
                in_flight: InFlight::Either,
                lossy_deletes: false,
                deleted: Vec::new(),
            })),
        }
    }

    /// The power is cut during call number `n` (from 1, counted from the
    /// creation of this wrapper).
    pub fn crash_at(self, n: u64) -> Self {
        self.state.lock().unwrap().crash_at = Some(n);
        self
    }

    pub fn in_flight(self, mode: InFlight) -> Self {
        self.state.lock().unwrap().in_flight = mode;
        self
    }

    /// A cut also undoes each delete that had returned with probability ½
    /// (storage weaker than the contract).
    pub fn lossy_deletes(self) -> Self {
        self.state.lock().unwrap().lossy_deletes = true;
        self
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.state.lock().unwrap().calls
    }

    /// What the cut did, once it happened.
    pub fn crashed(&self) -> Option<CrashReport> {
        self.state.lock().unwrap().report.clone()
    }

    /// The storage as it survives.
    pub fn durable(&self) -> DynStorage {
        self.inner.clone()
    }

    /// Counts a call; `Ok(None)` runs it normally, `Ok(Some(n))` means it is
    /// the call in flight at the cut, `Err` means the power is already off.
    fn enter(&self) -> Result<Option<u64>> {
        let mut s = self.state.lock().unwrap();
        if s.report.is_some() {
            return Err(dead());
        }
        s.calls += 1;
        Ok((s.crash_at == Some(s.calls)).then_some(s.calls))
    }

    /// Records the cut, undoing deletes in lossy mode.
    async fn cut(&self, call: u64, op: &'static str, key: Option<&ObjectKey>, outcome: String) {
        let undo: Vec<(ObjectKey, Bytes)> = {
            let mut s = self.state.lock().unwrap();
            let deleted = std::mem::take(&mut s.deleted);
            let mut undo = Vec::new();
            if s.lossy_deletes {
                for d in deleted {
                    if s.rng.random_bool(0.5) {
                        undo.push(d);
                    }
                }
            }
            undo
        };
        let mut undone = Vec::new();
        for (k, b) in undo {
            if self.inner.put(&k, b).await.is_ok() {
                undone.push(k);
            }
        }
        self.state.lock().unwrap().report = Some(CrashReport {
            call,
            op,
            key: key.cloned(),
            outcome,
            undone_deletes: undone,
        });
    }

    fn draw(&self) -> bool {
        self.state.lock().unwrap().rng.random_bool(0.5)
    }
}

fn dead() -> Error {
    Error::new(
        ErrorKind::Unreachable,
        "power cut (simulated): the process is gone",
    )
}

#[async_trait]
impl Storage for CrashStorage {
    fn location(&self) -> String {
        format!("crash+{}", self.inner.location())
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        let Some(call) = self.enter()? else {
            return self.inner.put(key, data).await;
        };
        let mode = self.state.lock().unwrap().in_flight;
        let outcome = match mode {
            InFlight::Lost => "lost".to_string(),
            InFlight::Landed => {
                let r = self.inner.put(key, data).await;
                format!("landed ({r:?})")
            }
            InFlight::Either => {
                if self.draw() {
                    let r = self.inner.put(key, data).await;
                    format!("landed ({r:?})")
                } else {
                    "lost".into()
                }
            }
            InFlight::Torn => {
                let n = self
                    .state
                    .lock()
                    .unwrap()
                    .rng
                    .random_range(0..data.len().max(1));
                let r = self.inner.put(key, data.slice(..n.min(data.len()))).await;
                format!("torn: {n} of {} bytes ({r:?})", data.len())
            }
        };
        self.cut(call, "put", Some(key), outcome).await;
        Err(dead())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        if let Some(call) = self.enter()? {
            self.cut(call, "get", Some(key), String::new()).await;
            return Err(dead());
        }
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        if let Some(call) = self.enter()? {
            self.cut(call, "get_range", Some(key), String::new()).await;
            return Err(dead());
        }
        self.inner.get_range(key, offset, len).await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        if let Some(call) = self.enter()? {
            self.cut(call, "stat", Some(key), String::new()).await;
            return Err(dead());
        }
        self.inner.stat(key).await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        if let Some(call) = self.enter()? {
            self.cut(call, "list", None, String::new()).await;
            return Err(dead());
        }
        self.inner.list(kind).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let Some(call) = self.enter()? else {
            let lossy = self.state.lock().unwrap().lossy_deletes;
            if lossy && let Ok(bytes) = self.inner.get(key).await {
                self.inner.delete(key).await?;
                self.state
                    .lock()
                    .unwrap()
                    .deleted
                    .push((key.clone(), bytes));
                return Ok(());
            }
            return self.inner.delete(key).await;
        };
        let outcome = if self.draw() {
            let r = self.inner.delete(key).await;
            format!("deleted ({r:?})")
        } else {
            "not deleted".into()
        };
        self.cut(call, "delete", Some(key), outcome).await;
        Err(dead())
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }
}
