//! [`CountingStorage`]: a wrapper that counts every call to the storage it
//! wraps and remembers which objects were read, so a test can prove that an
//! operation never touched a storage (the cold tier of a repository).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_storage::{
    BoundedGet, Capabilities, DynStorage, Kind, ObjectInfo, ObjectKey, Result, Storage,
};

/// Calls seen so far, by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub put: u64,
    /// `get` plus `get_range`: the calls that read object content.
    pub reads: u64,
    pub read_bytes: u64,
    pub stat: u64,
    pub list: u64,
    pub delete: u64,
}

impl Counts {
    /// Every call, of any kind.
    pub fn total(&self) -> u64 {
        self.put + self.reads + self.stat + self.list + self.delete
    }
}

#[derive(Debug, Default)]
struct Counters {
    put: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    stat: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
}

/// Forwards every call to the inner storage and counts it.
#[derive(Debug)]
pub struct CountingStorage {
    inner: DynStorage,
    counters: Counters,
    /// Reads (of content) by object.
    reads_by_object: Mutex<BTreeMap<ObjectKey, u64>>,
    /// Every call as (operation, object kind), in order.
    calls: Mutex<Vec<(&'static str, Kind)>>,
}

impl CountingStorage {
    pub fn new(inner: DynStorage) -> Self {
        CountingStorage {
            inner,
            counters: Counters::default(),
            reads_by_object: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            put: c.put.load(Ordering::SeqCst),
            reads: c.reads.load(Ordering::SeqCst),
            read_bytes: c.read_bytes.load(Ordering::SeqCst),
            stat: c.stat.load(Ordering::SeqCst),
            list: c.list.load(Ordering::SeqCst),
            delete: c.delete.load(Ordering::SeqCst),
        }
    }

    /// Objects whose content was read (by `get` or `get_range`).
    pub fn read_keys(&self) -> BTreeSet<ObjectKey> {
        self.reads_by_object
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// How many reads (`get` or `get_range`) each object had.
    pub fn reads_by_object(&self) -> BTreeMap<ObjectKey, u64> {
        self.reads_by_object.lock().unwrap().clone()
    }

    /// How many calls of `op` ("put", "get" for whole or bounded reads,
    /// "get_range", "stat", "list", "delete") concerned objects of `kind`.
    pub fn calls(&self, op: &str, kind: Kind) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, k)| *o == op && *k == kind)
            .count()
    }

    /// Every call so far as "op kind" lines, for a failing assertion's
    /// message.
    pub fn call_log(&self) -> String {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .map(|(o, k)| format!("{o} {}", k.dir()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn call(&self, op: &'static str, kind: Kind) {
        self.calls.lock().unwrap().push((op, kind));
    }

    /// Starts counting from zero again.
    pub fn reset(&self) {
        let c = &self.counters;
        for n in [&c.put, &c.reads, &c.read_bytes, &c.stat, &c.list, &c.delete] {
            n.store(0, Ordering::SeqCst);
        }
        self.reads_by_object.lock().unwrap().clear();
        self.calls.lock().unwrap().clear();
    }

    fn read(&self, key: &ObjectKey, bytes: u64) {
        self.counters.reads.fetch_add(1, Ordering::SeqCst);
        self.counters.read_bytes.fetch_add(bytes, Ordering::SeqCst);
        *self
            .reads_by_object
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1;
    }
}

#[async_trait]
impl Storage for CountingStorage {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        self.counters.put.fetch_add(1, Ordering::SeqCst);
        self.call("put", key.kind());
        self.inner.put(key, data).await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.call("get", key.kind());
        let r = self.inner.get(key).await;
        self.read(key, r.as_ref().map_or(0, |b| b.len() as u64));
        r
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.call("get_range", key.kind());
        let r = self.inner.get_range(key, offset, len).await;
        self.read(key, r.as_ref().map_or(0, |b| b.len() as u64));
        r
    }

    /// Forwarded as one read (what a round-trip backend makes of it).
    async fn get_at_most(&self, key: &ObjectKey, max: u64) -> Result<BoundedGet> {
        self.call("get", key.kind());
        let r = self.inner.get_at_most(key, max).await;
        let len = match &r {
            Ok(BoundedGet::Whole(b)) => b.len() as u64,
            _ => 0,
        };
        self.read(key, len);
        r
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.counters.stat.fetch_add(1, Ordering::SeqCst);
        self.call("stat", key.kind());
        self.inner.stat(key).await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.counters.list.fetch_add(1, Ordering::SeqCst);
        self.call("list", kind);
        self.inner.list(kind).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.counters.delete.fetch_add(1, Ordering::SeqCst);
        self.call("delete", key.kind());
        self.inner.delete(key).await
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }
}
