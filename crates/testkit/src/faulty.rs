//! A [`Storage`] wrapper that misbehaves on purpose.
//!
//! [`FaultyStorage`] forwards every call to the storage it wraps and, by its
//! [`FaultPlan`], injects the failures real backends show on a bad day:
//!
//! - **errors on a schedule** ([`FaultPlan::fail_nth`]: the n-th call of one
//!   operation kind fails) or **from a point on** ([`FaultPlan::fail_from`]:
//!   the storage becomes unreachable mid-run);
//! - **errors at a seeded rate** per operation kind ([`FaultPlan::rate`]),
//!   reproducible from the seed;
//! - **latency** on every call ([`FaultPlan::latency`]);
//! - **short reads** from `get_range` ([`FaultPlan::short_reads`]), which
//!   break the contract: the reader must notice, never use the bytes;
//! - **a hang** ([`FaultPlan::hang_nth`]): the call sleeps, then fails with a
//!   transient "timed out" error, as the remote backends' request timeout
//!   turns a stuck connection into one;
//! - **listings that lag behind writes** ([`FaultPlan::list_lag`]): `list`
//!   omits the objects of the most recent puts, and `capabilities()` then
//!   stops claiming `list_after_write`.
//!
//! A failing `put` can fail *before* storing (nothing written) or *after*
//! (the object landed and the reply was lost), per [`PutFailure`]. Every
//! injected fault is recorded in [`FaultyStorage::injected`], so a test can
//! check that what an operation reported matches what really happened.
//! It owns no data: all state that survives is in the wrapped storage.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_storage::{
    Capabilities, DynStorage, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result, Storage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The operation kinds of the [`Storage`] trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Put,
    Get,
    GetRange,
    Stat,
    List,
    Delete,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::Stat,
        Op::List,
        Op::Delete,
    ];
}

/// Whether a failing `put` stored its object first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutFailure {
    /// Nothing is stored (the request never reached the server).
    #[default]
    Before,
    /// The object is stored, then the error is returned (the reply was lost).
    After,
}

/// One fault that was injected, in call order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// Sequence number of the call (from 1, over all operation kinds).
    pub call: u64,
    pub op: Op,
    /// The key concerned (`None` for `list`).
    pub key: Option<ObjectKey>,
    pub what: InjectedKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectedKind {
    /// An error of this kind was returned; for a put, whether it stored.
    Error(ErrorKind, Option<PutFailure>),
    ShortRead {
        asked: u64,
        returned: u64,
    },
    Hang,
    /// `list` hid this many objects.
    Lagged(usize),
}

/// What to inject. Build with the methods; the default injects nothing.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// (operation, n): the n-th call (from 1) of that operation fails.
    nth: Vec<(Op, u64, ErrorKind)>,
    /// (operation, object kind, n): the n-th call of that operation on an
    /// object of that kind fails.
    nth_of_kind: Vec<(Op, Kind, u64, ErrorKind)>,
    /// From this global call number on, every call fails.
    from: Option<(u64, ErrorKind)>,
    rates: BTreeMap<Op, (f64, ErrorKind)>,
    seed: u64,
    latency: Duration,
    short_reads: f64,
    short_read_min_len: u64,
    hang: Vec<(Op, u64)>,
    hang_for: Duration,
    list_lag: usize,
    put_failure: PutFailure,
}

impl FaultPlan {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// The `n`-th call (from 1) of `op` fails with `kind`.
    pub fn fail_nth(mut self, op: Op, n: u64, kind: ErrorKind) -> Self {
        self.nth.push((op, n, kind));
        self
    }

    /// The `n`-th call (from 1) of `op` on an object of kind `object` fails
    /// with `kind` (for example the first read of an index object).
    pub fn fail_nth_of_kind(mut self, op: Op, object: Kind, n: u64, kind: ErrorKind) -> Self {
        self.nth_of_kind.push((op, object, n, kind));
        self
    }

    /// Every call from global call number `n` (from 1) on fails with `kind`:
    /// the storage became unreachable.
    pub fn fail_from(mut self, n: u64, kind: ErrorKind) -> Self {
        self.from = Some((n, kind));
        self
    }

    /// Each call of `op` fails with `kind` with probability `p`, drawn from
    /// the plan's seeded generator.
    pub fn rate(mut self, op: Op, p: f64, kind: ErrorKind) -> Self {
        self.rates.insert(op, (p, kind));
        self
    }

    /// Every call waits this long before it runs.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// A `get_range` returns fewer bytes than asked with probability `p`.
    pub fn short_reads(mut self, p: f64) -> Self {
        self.short_reads = p;
        self
    }

    /// Only `get_range` calls of at least `len` bytes are cut short (so a
    /// test can spare small reads such as trees and hit file data).
    pub fn short_reads_from_len(mut self, len: u64) -> Self {
        self.short_read_min_len = len;
        self
    }

    /// The `n`-th call of `op` hangs for `d`, then fails as timed out
    /// (transient).
    pub fn hang_nth(mut self, op: Op, n: u64, d: Duration) -> Self {
        self.hang.push((op, n));
        self.hang_for = d;
        self
    }

    /// `list` leaves out the objects of the `n` most recent puts.
    pub fn list_lag(mut self, n: usize) -> Self {
        self.list_lag = n;
        self
    }

    /// Whether failing puts store their object first.
    pub fn put_failure(mut self, f: PutFailure) -> Self {
        self.put_failure = f;
        self
    }
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    calls: u64,
    per_op: BTreeMap<Op, u64>,
    per_op_kind: BTreeMap<(Op, Kind), u64>,
    recent_puts: VecDeque<ObjectKey>,
    injected: Vec<Injected>,
    enabled: bool,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: DynStorage,
    plan: Arc<FaultPlan>,
    state: Arc<Mutex<State>>,
}

/// What one call should do, decided under the lock.
enum Decision {
    Pass,
    Fail(ErrorKind),
    Hang,
}

impl FaultyStorage {
    pub fn new(inner: DynStorage, plan: FaultPlan) -> Self {
        let state = State {
            rng: StdRng::seed_from_u64(plan.seed),
            calls: 0,
            per_op: BTreeMap::new(),
            per_op_kind: BTreeMap::new(),
            recent_puts: VecDeque::new(),
            injected: Vec::new(),
            enabled: true,
        };
        Self {
            inner,
            plan: Arc::new(plan),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Every fault injected so far, in call order.
    pub fn injected(&self) -> Vec<Injected> {
        self.state.lock().unwrap().injected.clone()
    }

    /// Calls made so far (all kinds).
    pub fn calls(&self) -> u64 {
        self.state.lock().unwrap().calls
    }

    /// Turns injection off (`false`) or back on; calls are still counted.
    pub fn set_enabled(&self, on: bool) {
        self.state.lock().unwrap().enabled = on;
    }

    fn decide(&self, op: Op, key: Option<&ObjectKey>) -> Decision {
        let mut s = self.state.lock().unwrap();
        s.calls += 1;
        let call = s.calls;
        let n = {
            let c = s.per_op.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        let n_of_kind = key.map(|k| {
            let c = s.per_op_kind.entry((op, k.kind())).or_insert(0);
            *c += 1;
            *c
        });
        // The generator advances on every call, enabled or not, so a seed
        // gives the same draws for the same call sequence.
        let draw: f64 = s.rng.random();
        if !s.enabled {
            return Decision::Pass;
        }
        let mut fail = None;
        if let Some((from, kind)) = self.plan.from
            && call >= from
        {
            fail = Some(kind);
        }
        for &(o, nth, kind) in &self.plan.nth {
            if o == op && nth == n {
                fail = Some(kind);
            }
        }
        for &(o, object, nth, kind) in &self.plan.nth_of_kind {
            if o == op && key.map(|k| k.kind()) == Some(object) && n_of_kind == Some(nth) {
                fail = Some(kind);
            }
        }
        if fail.is_none()
            && let Some(&(p, kind)) = self.plan.rates.get(&op)
            && draw < p
        {
            fail = Some(kind);
        }
        let record = |s: &mut State, what| {
            s.injected.push(Injected {
                call,
                op,
                key: key.cloned(),
                what,
            })
        };
        if let Some(kind) = fail {
            let pf = (op == Op::Put).then_some(self.plan.put_failure);
            record(&mut s, InjectedKind::Error(kind, pf));
            return Decision::Fail(kind);
        }
        if self.plan.hang.iter().any(|&(o, nth)| o == op && nth == n) {
            record(&mut s, InjectedKind::Hang);
            return Decision::Hang;
        }
        Decision::Pass
    }

    async fn before(&self, op: Op, key: Option<&ObjectKey>) -> Result<()> {
        if !self.plan.latency.is_zero() {
            tokio::time::sleep(self.plan.latency).await;
        }
        match self.decide(op, key) {
            Decision::Pass => Ok(()),
            Decision::Fail(kind) => Err(injected_error(kind, op, key)),
            Decision::Hang => {
                tokio::time::sleep(self.plan.hang_for).await;
                Err(Error::new(
                    ErrorKind::Transient,
                    format!("{op:?} {}: request timed out (injected hang)", show(key)),
                ))
            }
        }
    }
}

fn show(key: Option<&ObjectKey>) -> String {
    key.map(|k| k.to_string()).unwrap_or_else(|| "-".into())
}

fn injected_error(kind: ErrorKind, op: Op, key: Option<&ObjectKey>) -> Error {
    Error::new(
        kind,
        format!("{op:?} {}: injected {kind:?} failure", show(key)),
    )
}

#[async_trait]
impl Storage for FaultyStorage {
    fn location(&self) -> String {
        format!("faulty+{}", self.inner.location())
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        if self.plan.list_lag > 0 {
            c.list_after_write = false;
        }
        c
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        if let Err(e) = self.before(Op::Put, Some(key)).await {
            if self.plan.put_failure == PutFailure::After {
                let _ = self.inner.put(key, data).await;
            }
            return Err(e);
        }
        self.inner.put(key, data).await?;
        let mut s = self.state.lock().unwrap();
        s.recent_puts.push_back(key.clone());
        while s.recent_puts.len() > self.plan.list_lag {
            s.recent_puts.pop_front();
        }
        Ok(())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.before(Op::Get, Some(key)).await?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.before(Op::GetRange, Some(key)).await?;
        let data = self.inner.get_range(key, offset, len).await?;
        if self.plan.short_reads > 0.0 && len > 0 && len >= self.plan.short_read_min_len {
            let mut s = self.state.lock().unwrap();
            let draw: f64 = s.rng.random();
            if s.enabled && draw < self.plan.short_reads {
                let returned = s.rng.random_range(0..len);
                let call = s.calls;
                s.injected.push(Injected {
                    call,
                    op: Op::GetRange,
                    key: Some(key.clone()),
                    what: InjectedKind::ShortRead {
                        asked: len,
                        returned,
                    },
                });
                return Ok(data.slice(..returned as usize));
            }
        }
        Ok(data)
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.before(Op::Stat, Some(key)).await?;
        self.inner.stat(key).await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.before(Op::List, None).await?;
        let mut all = self.inner.list(kind).await?;
        let mut s = self.state.lock().unwrap();
        if self.plan.list_lag > 0 && s.enabled {
            let before = all.len();
            all.retain(|o| !s.recent_puts.contains(&o.key));
            let hidden = before - all.len();
            if hidden > 0 {
                let call = s.calls;
                s.injected.push(Injected {
                    call,
                    op: Op::List,
                    key: None,
                    what: InjectedKind::Lagged(hidden),
                });
            }
        }
        Ok(all)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.before(Op::Delete, Some(key)).await?;
        self.inner.delete(key).await?;
        self.state.lock().unwrap().recent_puts.retain(|k| k != key);
        Ok(())
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }
}
