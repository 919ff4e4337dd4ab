//! Where repository bytes live.
//!
//! This crate owns the [`Storage`] trait — a narrow, contract-documented store of
//! named immutable objects — and its backends: [`MemoryStorage`] (tests and
//! simulations), [`LocalStorage`] (a directory on a local filesystem) and
//! [`OpendalStorage`] (S3-compatible object storage and SFTP through OpenDAL)
//! and [`HttpStorage`] (a repository served by `lifeboat serve`).
//! Cross-cutting behaviour (retries with backoff) is a wrapper, [`RetryStorage`],
//! not a flag on a backend. It knows nothing about the repository format: objects
//! are opaque bytes.

pub mod cachedir;
mod error;
mod http;
mod key;
mod local;
mod memory;
mod objectlock;
mod remote;
mod retry;
mod sftpmode;
mod url;

pub use error::{Error, ErrorClass, ErrorKind, Result};
pub use http::{HttpOptions, HttpStorage, kind_name, parse_kind};
pub use key::{Kind, ObjectKey};
pub use local::LocalStorage;
pub use memory::MemoryStorage;
pub use objectlock::{
    AsOfStorage, BucketLock, DefaultRetention, LockMode, ObjectVersion, Retention,
    VersionedStorage, view_at,
};
pub use remote::{KnownHosts, OpendalStorage, S3Options, SftpOptions};
pub use retry::{RetryPolicy, RetryStorage};
pub use url::{Location, open_location, parse_as_of};

use async_trait::async_trait;
use bytes::Bytes;

/// An object as seen by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size_bytes: u64,
}

/// What a backend can do, declared up front so callers choose a strategy
/// instead of discovering a limitation by failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// How many requests are worth running at once against this backend.
    pub max_connections: usize,
    /// `put` of an existing key is refused by the backend itself, atomically
    /// (no check-then-write race between two writers).
    pub atomic_create: bool,
    /// A `list` right after a successful `put` is guaranteed to show the object.
    pub list_after_write: bool,
    /// Every request is a network round trip (object storage, SFTP), so a
    /// few larger reads beat many small ones even when they fetch bytes no
    /// one asked for. False for local disks and memory, where a small read
    /// costs next to nothing and reading more is pure waste.
    pub round_trips: bool,
}

/// What [`Storage::get_at_most`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedGet {
    /// The whole object, no larger than the bound.
    Whole(Bytes),
    /// The object is larger than the bound and was not read whole; its size
    /// when the backend learnt it without reading.
    TooLarge(Option<u64>),
}

/// A store of named, immutable objects.
///
/// # Contract
///
/// Every backend passes the conformance suite in `lifeboat-testkit`, which
/// checks each of these points.
///
/// - **`put` is atomic.** A reader sees either no object or the whole object,
///   never a prefix, even if the writer crashes mid-way.
/// - **`put` never silently overwrites.** If `key` already exists, `put` fails
///   with [`ErrorKind::AlreadyExists`] and the stored object is unchanged.
///   Repository objects are named by their content hash, so callers treat
///   `AlreadyExists` as success after an (optional) comparison.
/// - **`put` is durable on return.** `Ok(())` means the object survives a crash
///   of this process and (for local disks) of the machine.
/// - **`get` of a missing key** fails with [`ErrorKind::NotFound`].
/// - **`get_range(key, offset, len)`** returns exactly `len` bytes starting at
///   `offset`, or fails with [`ErrorKind::InvalidRange`] if the range is not
///   inside the object (a short read is never returned as success).
/// - **`list(kind)`** returns every object of that kind whose `put` returned
///   before `list` was called (when [`Capabilities::list_after_write`]), in no
///   particular order. An object deleted while the listing runs may or may
///   not be in it, and a `delete` running beside it never makes `list` fail;
///   callers that then `get` a listed object treat `NotFound` as "deleted
///   since".
/// - **`delete`** of a missing key succeeds (deletes are idempotent), and a
///   delete is durable on return: a crash never brings the object back.
/// - **Errors are classified.** [`Error::is_retryable`] is true only for
///   transient failures (timeouts, 5xx, connection resets) that the
///   [`RetryStorage`] wrapper retries; everything else is permanent.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Human-readable location, for messages (never contains secrets).
    fn location(&self) -> String;
    fn capabilities(&self) -> Capabilities;
    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()>;
    async fn get(&self, key: &ObjectKey) -> Result<Bytes>;
    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes>;
    /// [`Storage::get`] into `buf`, whose allocation the bytes may reuse:
    /// a caller reading many objects of about one size (packs, in
    /// `check --read-data`) hands back the buffer of the last one instead
    /// of having fresh pages mapped and zeroed for each. Returns the
    /// object's bytes, and only them (`buf`'s old contents are gone). The
    /// default is `get`, which drops `buf`; the local backend reads into it.
    async fn get_into(&self, key: &ObjectKey, buf: Vec<u8>) -> Result<Vec<u8>> {
        drop(buf);
        Ok(Vec::from(self.get(key).await?))
    }
    /// Reads the object whole if it holds at most `max` bytes, without ever
    /// holding much more than `max` bytes of it: objects anyone with write
    /// access may have planted are read this way (a missing key fails with
    /// [`ErrorKind::NotFound`], as `get`). The default asks for the size
    /// first; backends where every request is a round trip stream the
    /// object in one request and stop reading past the bound.
    async fn get_at_most(&self, key: &ObjectKey, max: u64) -> Result<BoundedGet> {
        match self.stat(key).await? {
            None => Err(Error::not_found(key)),
            Some(size) if size > max => Ok(BoundedGet::TooLarge(Some(size))),
            Some(_) => {
                let bytes = self.get(key).await?;
                // Replaced by a larger object between the two requests.
                Ok(if bytes.len() as u64 > max {
                    BoundedGet::TooLarge(Some(bytes.len() as u64))
                } else {
                    BoundedGet::Whole(bytes)
                })
            }
        }
    }
    /// Size of the object, or `None` if it does not exist.
    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>>;
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>>;
    async fn delete(&self, key: &ObjectKey) -> Result<()>;
    /// Creates the location itself (a local directory and its namespace
    /// directories) if it does not exist yet. Only `init` calls this: no
    /// other call of any backend ever creates a repository root, so a
    /// location that vanished mid-run (a disk unmounted, a directory moved)
    /// fails with [`ErrorKind::Unreachable`] instead of being recreated
    /// empty. Backends without a root to create (object storage) do nothing.
    async fn create_root(&self) -> Result<()> {
        Ok(())
    }
    /// Object versions and retention, on backends that keep them (S3);
    /// `None` elsewhere. Wrappers pass their inner storage's through.
    fn versioned(&self) -> Option<&dyn VersionedStorage> {
        None
    }
}

/// Shared handle to any backend.
pub type DynStorage = std::sync::Arc<dyn Storage>;
