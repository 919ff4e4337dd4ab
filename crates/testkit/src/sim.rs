//! Deterministic interleaving of concurrent actors over shared storage.
//!
//! A [`Scheduler`] serializes the storage calls of several *actors* (say
//! two backups and a prune, each with its own repository handle) and picks,
//! with a seeded generator, which one runs next. Each actor talks to the
//! shared storage through its own [`SimStorage`]; every call first waits for
//! its turn. A turn is granted only when **every live actor is waiting** on
//! at least one call (or has finished), so the order of calls, and hence the
//! whole run, is a function of the seed: many seeds explore many schedules,
//! and a failing seed replays its schedule. Exactly one call runs at a time.
//!
//! The rule assumes an actor's storage calls come from code that is
//! otherwise deterministic; an actor that has one call waiting while another
//! of its tasks is still computing its next call may be scheduled before
//! that call exists, which only makes the schedule depend on timing, never
//! invalid. Backends declare one connection ([`SimStorage`] reports
//! `max_connections = 1`), which keeps most actors' calls sequential.
//!
//! Calls of an actor that has finished (say a background task outliving it)
//! and calls made while no actor is registered pass straight through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_storage::{Capabilities, DynStorage, Kind, ObjectInfo, ObjectKey, Result, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

#[derive(Debug)]
struct State {
    rng: StdRng,
    /// Live actors and the tickets of their waiting calls.
    actors: BTreeMap<usize, BTreeSet<u64>>,
    names: Vec<String>,
    next_ticket: u64,
    /// The call allowed to run, if any.
    running: Option<u64>,
    /// What ran, in order: (actor name, call description).
    trace: Vec<String>,
    waiting_calls: BTreeMap<u64, String>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Scheduler {
    state: Arc<Mutex<State>>,
    tick: Arc<watch::Sender<u64>>,
}

/// An actor's storage handle. Dropping the [`ActorGuard`] ends the actor.
#[derive(Debug, Clone)]
pub struct SimStorage {
    inner: DynStorage,
    sched: Scheduler,
    actor: usize,
}

/// Ends the actor when dropped (also on panic or early return).
#[derive(Debug)]
pub struct ActorGuard {
    sched: Scheduler,
    actor: usize,
}

impl Drop for ActorGuard {
    fn drop(&mut self) {
        let mut s = self.sched.state.lock().unwrap();
        s.actors.remove(&self.actor);
        self.sched.grant(&mut s);
    }
}

impl Scheduler {
    pub fn new(seed: u64) -> Self {
        let (tx, _) = watch::channel(0);
        Self {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                actors: BTreeMap::new(),
                names: Vec::new(),
                next_ticket: 0,
                running: None,
                trace: Vec::new(),
                waiting_calls: BTreeMap::new(),
            })),
            tick: Arc::new(tx),
        }
    }

    /// Registers an actor. Register every actor before any of them starts,
    /// so the first turn waits for all of them.
    pub fn actor(&self, name: &str, inner: DynStorage) -> (SimStorage, ActorGuard) {
        let mut s = self.state.lock().unwrap();
        let id = s.names.len();
        s.names.push(name.to_string());
        s.actors.insert(id, BTreeSet::new());
        (
            SimStorage {
                inner,
                sched: self.clone(),
                actor: id,
            },
            ActorGuard {
                sched: self.clone(),
                actor: id,
            },
        )
    }

    /// The calls that ran, in order ("actor: call").
    pub fn trace(&self) -> Vec<String> {
        self.state.lock().unwrap().trace.clone()
    }

    /// Grants the next turn if nothing runs and every live actor waits.
    fn grant(&self, s: &mut State) {
        if s.running.is_some() {
            return;
        }
        if s.actors.values().any(|w| w.is_empty()) {
            return;
        }
        let waiting: Vec<(usize, u64)> = s
            .actors
            .iter()
            .flat_map(|(a, w)| w.iter().map(move |t| (*a, *t)))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let (actor, ticket) = waiting[s.rng.random_range(0..waiting.len())];
        s.actors.get_mut(&actor).unwrap().remove(&ticket);
        s.running = Some(ticket);
        let what = s.waiting_calls.remove(&ticket).unwrap_or_default();
        let line = format!("{}: {what}", s.names[actor]);
        s.trace.push(line);
        self.tick.send_modify(|n| *n += 1);
    }

    /// Waits for a turn; `None` if the call passes straight through.
    async fn enter(&self, actor: usize, what: String) -> Option<u64> {
        let mut rx = self.tick.subscribe();
        let ticket = {
            let mut s = self.state.lock().unwrap();
            if !s.actors.contains_key(&actor) {
                return None;
            }
            let t = s.next_ticket;
            s.next_ticket += 1;
            s.actors.get_mut(&actor).unwrap().insert(t);
            s.waiting_calls.insert(t, what);
            self.grant(&mut s);
            t
        };
        loop {
            if self.state.lock().unwrap().running == Some(ticket) {
                return Some(ticket);
            }
            rx.changed()
                .await
                .expect("the scheduler outlives its storages");
        }
    }

    fn leave(&self, ticket: Option<u64>) {
        if ticket.is_none() {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.running = None;
        self.grant(&mut s);
    }
}

impl SimStorage {
    async fn turn<T>(&self, what: String, f: impl std::future::Future<Output = T>) -> T {
        let t = self.sched.enter(self.actor, what).await;
        let out = f.await;
        self.sched.leave(t);
        out
    }
}

#[async_trait]
impl Storage for SimStorage {
    fn location(&self) -> String {
        format!("sim+{}", self.inner.location())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_connections: 1,
            ..self.inner.capabilities()
        }
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        self.turn(format!("put {key}"), self.inner.put(key, data))
            .await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.turn(format!("get {key}"), self.inner.get(key)).await
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.turn(
            format!("get_range {key}"),
            self.inner.get_range(key, offset, len),
        )
        .await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.turn(format!("stat {key}"), self.inner.stat(key)).await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.turn(format!("list {kind:?}"), self.inner.list(kind))
            .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.turn(format!("delete {key}"), self.inner.delete(key))
            .await
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }
}
