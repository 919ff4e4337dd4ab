//! Retries with backoff, as a wrapper around any backend.
//!
//! [`RetryStorage`] repeats an operation only when it failed with an error
//! that [`Error::is_retryable`] calls transient (timeouts, 5xx, throttling,
//! broken connections); every other error is returned at once. Waits grow
//! exponentially from [`RetryPolicy::initial_delay`] up to
//! [`RetryPolicy::max_delay`], with jitter so that many uploads failing
//! together do not retry in lockstep. It owns no I/O of its own and knows
//! nothing about which backend it wraps.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    BoundedGet, Capabilities, DynStorage, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result,
    Storage,
};

/// How hard to retry a transient failure.
///
/// The defaults (8 attempts, 250 ms doubling to at most 30 s) wait about
/// 30 s in total before giving up on one request: long enough to ride out a
/// load-balancer failover, an SFTP reconnect or a burst of S3 `SlowDown`
/// replies during an unattended backup, short enough that a storage that is
/// really gone fails the run within a minute instead of hanging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first; 1 disables retrying.
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_delay: Duration,
    /// Upper bound of a single wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Nominal wait after failed attempt `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// The wait actually slept: uniformly random in the upper half of the
    /// nominal backoff ("equal jitter"), so waits still grow but concurrent
    /// clients spread out.
    fn jittered(&self, attempt: u32) -> Duration {
        let nominal = self.backoff(attempt);
        let half = nominal / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Runs `f` until it succeeds, fails permanently, or attempts run out.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let max = self.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < max => {
                    let wait = self.jittered(attempt);
                    tracing::debug!(%what, attempt, ?wait, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) if e.is_retryable() && max > 1 => {
                    return Err(Error::new(
                        e.kind(),
                        format!("{e} (gave up after {attempt} attempts)"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A [`Storage`] that retries transient failures of the storage it wraps.
///
/// `put` needs care: a write can land on the server and still report a
/// transient failure (the reply was lost). Its retry then finds the object
/// already there and fails with [`ErrorKind::AlreadyExists`]. After a transient
/// failure, and only then, `put` therefore reads the stored object back and
/// reports success if it has exactly the bytes being written; if the bytes
/// differ another writer won the race and `AlreadyExists` stands. An
/// `AlreadyExists` on the first attempt is returned unchanged.
#[derive(Debug, Clone)]
pub struct RetryStorage {
    inner: DynStorage,
    policy: RetryPolicy,
}

impl RetryStorage {
    pub fn new(inner: DynStorage, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    pub fn inner(&self) -> &DynStorage {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// After a retried `put` met `AlreadyExists`: is the stored object ours?
    async fn landed_earlier(&self, key: &ObjectKey, data: &Bytes) -> Result<bool> {
        let size = self.policy.run("stat", || self.inner.stat(key)).await?;
        if size != Some(data.len() as u64) {
            return Ok(false);
        }
        match self.policy.run("get", || self.inner.get(key)).await {
            Ok(stored) => Ok(stored == *data),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Storage for RetryStorage {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        // Set once any attempt failed transiently: only then can an earlier
        // attempt have stored the object behind our back.
        let failed_transiently = AtomicBool::new(false);
        let result = self
            .policy
            .run("put", || async {
                let result = self.inner.put(key, data.clone()).await;
                if result.as_ref().is_err_and(Error::is_retryable) {
                    failed_transiently.store(true, Ordering::Relaxed);
                }
                result
            })
            .await;
        match result {
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && failed_transiently.load(Ordering::Relaxed) =>
            {
                if self.landed_earlier(key, &data).await? {
                    tracing::debug!(%key, "put landed before a transient failure");
                    Ok(())
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.policy.run("get", || self.inner.get(key)).await
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.policy
            .run("get_range", || self.inner.get_range(key, offset, len))
            .await
    }

    async fn get_at_most(&self, key: &ObjectKey, max: u64) -> Result<BoundedGet> {
        self.policy
            .run("get", || self.inner.get_at_most(key, max))
            .await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.policy.run("stat", || self.inner.stat(key)).await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.policy.run("list", || self.inner.list(kind)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.policy.run("delete", || self.inner.delete(key)).await
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }

    // Not retried: callers of these rare maintenance calls (init, lock
    // extension, prune) report per-object failures themselves.
    fn versioned(&self) -> Option<&dyn crate::VersionedStorage> {
        self.inner.versioned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::MemoryStorage;

    /// Fails the first `fail` calls of each operation with a transient error;
    /// with `land_puts`, a failing put still stores the object (lost reply).
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryStorage,
        fail: u32,
        land_puts: bool,
        calls: AtomicU32,
    }

    impl Flaky {
        fn new(fail: u32, land_puts: bool) -> Self {
            Self {
                inner: MemoryStorage::new(),
                fail,
                land_puts,
                calls: AtomicU32::new(0),
            }
        }

        fn trip(&self) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
                Err(Error::new(ErrorKind::Transient, "connection reset"))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl Storage for Flaky {
        fn location(&self) -> String {
            "flaky:".into()
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
            if let Err(e) = self.trip() {
                if self.land_puts {
                    let _ = self.inner.put(key, data).await;
                }
                return Err(e);
            }
            self.inner.put(key, data).await
        }
        async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
            self.trip()?;
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
            self.trip()?;
            self.inner.get_range(key, offset, len).await
        }
        async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
            self.inner.stat(key).await
        }
        async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
            self.trip()?;
            self.inner.list(kind).await
        }
        async fn delete(&self, key: &ObjectKey) -> Result<()> {
            self.inner.delete(key).await
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::Index, "abc")
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(250));
        assert_eq!(p.backoff(2), Duration::from_millis(500));
        assert_eq!(p.backoff(5), Duration::from_secs(4));
        assert_eq!(p.backoff(20), Duration::from_secs(30));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(30));
        for attempt in 1..10 {
            let j = p.jittered(attempt);
            assert!(j <= p.backoff(attempt) && j >= p.backoff(attempt) / 2);
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried() {
        let flaky = Arc::new(Flaky::new(3, false));
        let s = RetryStorage::new(flaky.clone(), fast(5));
        s.put(&key(), Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let flaky = Arc::new(Flaky::new(10, false));
        let s = RetryStorage::new(flaky.clone(), fast(3));
        let err = s.list(Kind::Index).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.to_string().contains("3 attempts"), "{err}");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let flaky = Arc::new(Flaky::new(0, false));
        let s = RetryStorage::new(flaky.clone(), fast(5));
        let err = s.get(&key()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn put_that_landed_before_a_lost_reply_succeeds() {
        let flaky = Arc::new(Flaky::new(1, true));
        let s = RetryStorage::new(flaky.clone(), fast(5));
        s.put(&key(), Bytes::from_static(b"mine")).await.unwrap();
        assert_eq!(flaky.inner.get(&key()).await.unwrap(), "mine");
    }

    #[tokio::test]
    async fn put_racing_a_different_writer_still_fails() {
        // Different size, then same size with different bytes: not ours.
        for mine in [&b"mine"[..], &b"mine!!"[..]] {
            let flaky = Arc::new(Flaky::new(1, false));
            flaky.inner.tamper(&key(), Bytes::from_static(b"theirs"));
            let s = RetryStorage::new(flaky.clone(), fast(5));
            let err = s
                .put(&key(), Bytes::copy_from_slice(mine))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::AlreadyExists);
            assert_eq!(flaky.inner.get(&key()).await.unwrap(), "theirs");
        }
    }

    #[tokio::test]
    async fn already_exists_on_first_attempt_is_not_excused() {
        let mem = MemoryStorage::new();
        mem.tamper(&key(), Bytes::from_static(b"same"));
        let s = RetryStorage::new(Arc::new(mem), fast(5));
        let err = s
            .put(&key(), Bytes::from_static(b"same"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    }
}
