//! [`FillingUp`]: a storage whose disk fills up. Puts of one kind of object
//! (packs, usually) succeed until a budget is spent, then fail with
//! [`ErrorKind::StorageFull`]; everything else passes through.
//!
//! Owns only that one failure. Scheduled, random or transient faults are
//! [`crate::faulty::FaultyStorage`]'s job; this wrapper exists because a
//! full disk stays full (every later put of the kind fails, not just the
//! n-th) and because a test can fill it at a moment of its choosing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_storage::{
    Capabilities, DynStorage, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result, Storage,
};

/// Forwards every call, except that puts of objects of `kind` fail with a
/// "no space left on device" [`ErrorKind::StorageFull`] error once the
/// budget of such puts is spent. Clones share the budget.
#[derive(Debug, Clone)]
pub struct FillingUp {
    inner: DynStorage,
    kind: Kind,
    left: Arc<AtomicU64>,
}

impl FillingUp {
    /// `left` more puts of `kind` succeed; every later one fails.
    pub fn new(inner: DynStorage, kind: Kind, left: u64) -> Self {
        FillingUp {
            inner,
            kind,
            left: Arc::new(AtomicU64::new(left)),
        }
    }

    /// Room for any number of puts, until [`FillingUp::fill`].
    pub fn with_room(inner: DynStorage, kind: Kind) -> Self {
        Self::new(inner, kind, u64::MAX)
    }

    /// The disk is full from now on: every later put of the kind fails.
    pub fn fill(&self) {
        self.left.store(0, Ordering::SeqCst);
    }
}

#[async_trait]
impl Storage for FillingUp {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        if key.kind() == self.kind
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Err(Error::new(
                ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.inner.stat(key).await
    }
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.inner.list(kind).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }
}
