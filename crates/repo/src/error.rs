//! Repository errors.
//!
//! Rules: one enum for the crate, each variant precise enough that the CLI can
//! map it to an exit code and a next step without parsing messages. Decoding
//! untrusted bytes always yields [`Error::Corrupt`] naming the object, never a
//! panic. Storage errors are carried unchanged so their retryable/permanent
//! classification survives.

use lifeboat_storage::{ErrorClass, ErrorKind as StorageErrorKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] lifeboat_storage::Error),

    #[error("no repository at {location} (no config object found)")]
    NoRepository { location: String },

    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },

    #[error("wrong password: no key file in the repository opens with it")]
    WrongPassword,

    /// More key files than an open tries ([`crate::MAX_KEY_FILES_TRIED`]).
    #[error(
        "wrong password: none of the {tried} key files an open tries (of {total} in the \
         repository) opens with it; with a password that works, remove stale or planted key \
         files (`lifeboat key list`, `lifeboat key remove`)"
    )]
    TooManyKeyFiles { tried: usize, total: usize },

    /// The repository was opened with a write-only key, which can add
    /// snapshots but read nothing stored (docs/security.md §12).
    #[error(
        "{what} needs a full key: this key is write-only (it can add snapshots but cannot read \
         any snapshot, tree or file content); use a full key, held off this host, e.g. on the \
         machine of whoever administers the repository"
    )]
    WriteOnlyKey { what: String },

    #[error(
        "repository format version {found} is newer than this lifeboat understands (up to {supported}); upgrade lifeboat"
    )]
    UnsupportedVersion { found: u32, supported: u32 },

    #[error("{object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },

    #[error("blob {id} is not in the index")]
    BlobNotIndexed { id: String },

    /// No tree blob has this id (a data blob with the same id is another
    /// blob and is never read as a tree).
    #[error("tree {id} is not in the index")]
    TreeNotIndexed { id: String },

    #[error("no snapshot matches {query:?}")]
    SnapshotNotFound { query: String },

    #[error("snapshot prefix {query:?} is ambiguous ({count} snapshots match)")]
    AmbiguousSnapshot { query: String, count: usize },

    /// A key the command names does not exist.
    #[error("no key matches {query:?}; see `lifeboat key list`")]
    KeyNotFound { query: String },
    /// The request is wrong (an option value, a policy that would remove
    /// every snapshot, a location that cannot be used): the message says
    /// what to change.
    #[error("{0}")]
    BadInput(String),
    /// Repository data an operation needs is damaged or missing; the
    /// message says what the operation refused to do and what to run.
    #[error("{0}")]
    Damaged(String),

    /// Another process holds an incompatible repository lock.
    #[error("repository is in use by {holder}; try again later")]
    Locked { holder: String },

    /// A write session's lock can no longer be trusted (not refreshed in
    /// time, or removed): a prune may have run, so nothing is committed.
    #[error("lost the repository lock: {reason}; nothing was committed, run the command again")]
    LockLost { reason: String },

    /// An archive object of this name is stored with other content; it was
    /// left unchanged (archive objects are never overwritten).
    #[error("{object} is already stored with DIFFERENT content: refusing to overwrite it")]
    ArchiveConflict { object: String },

    /// An archive object of this name is already stored, and the key the
    /// repository was opened with is write-only, so it cannot read the
    /// object back to compare (docs/security.md §12). The object was left
    /// unchanged; the caller decides from what it knows locally.
    #[error(
        "{object} is already stored and this key is write-only, so it cannot read it back to \
         compare: refusing to call it archived. If this host archived it before (and lost its \
         push markers), compare it from a machine with a full key (`lifeboat pg wal-fetch`), \
         and if it is the same, run the same push once with a full key, which confirms it"
    )]
    ArchiveUnverifiable { object: String },

    /// The key the repository was opened with has a role that does not
    /// allow the operation (docs/security.md §11.4).
    #[error(
        "the key this repository was opened with ({key}) is {role}: it cannot {operation}; \
         use a key with the full role (`lifeboat key list` shows each key's role)"
    )]
    NotAllowed {
        key: String,
        role: crate::Role,
        operation: String,
    },

    /// A location of the repository (its own storage or its cold tier) is
    /// gone, unmounted or another repository's: nothing was written there.
    #[error("{0}")]
    Unreachable(String),

    /// A broken invariant inside lifeboat (a worker task died, a session
    /// still in use): not the user's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn corrupt(object: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            object: object.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The class of this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Storage(e) => e.class(),
            Error::NoRepository { .. } => ErrorClass::NoRepository,
            Error::AlreadyInitialized { .. } => ErrorClass::BadInput,
            Error::WrongPassword | Error::TooManyKeyFiles { .. } | Error::WriteOnlyKey { .. } => {
                ErrorClass::WrongPassword
            }
            Error::UnsupportedVersion { .. } => ErrorClass::Unsupported,
            Error::Corrupt { .. }
            | Error::BlobNotIndexed { .. }
            | Error::TreeNotIndexed { .. }
            | Error::ArchiveConflict { .. }
            | Error::ArchiveUnverifiable { .. }
            | Error::Damaged(_) => ErrorClass::Damaged,
            Error::SnapshotNotFound { .. } | Error::AmbiguousSnapshot { .. } => {
                ErrorClass::NotFound
            }
            Error::KeyNotFound { .. } => ErrorClass::NotFound,
            Error::BadInput(_) => ErrorClass::BadInput,
            Error::Locked { .. } | Error::LockLost { .. } => ErrorClass::Locked,
            Error::Unreachable(_) => ErrorClass::Unreachable,
            Error::NotAllowed { .. } => ErrorClass::NotAllowed,
            Error::Internal(_) => ErrorClass::Internal,
        }
    }

    /// The storage error kind behind this error, if it came from storage.
    pub fn storage_kind(&self) -> Option<StorageErrorKind> {
        match self {
            Error::Storage(e) => Some(e.kind()),
            _ => None,
        }
    }
}
