//! Storage errors.
//!
//! Rules: every error carries the [`ErrorKind`] a caller branches on, the
//! location or key it concerns, and the backend's own message. Only
//! [`ErrorKind::Transient`] is retryable; a caller never string-matches.
//!
//! [`ErrorClass`] is the vocabulary every lifeboat crate's error answers
//! with its `class()`: the few things a caller (the CLI choosing an exit
//! code, a scheduler deciding whether to retry) needs to know about any
//! failure, whichever layer raised it. It lives here because this is the
//! lowest crate; storage errors are only one of its users.

use crate::ObjectKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidRange,
    /// Timeouts, 5xx, connection resets: worth retrying.
    Transient,
    /// The storage cannot be reached at all (DNS, refused, auth failed).
    Unreachable,
    PermissionDenied,
    /// No space left on the device or quota exceeded.
    StorageFull,
    /// Bad URL or configuration.
    Config,
    /// The container the location names (an S3 bucket) does not exist, so
    /// there can be no repository in it.
    NoContainer,
    Other,
}

/// What kind of failure an error is, across all lifeboat crates.
///
/// Each crate's error type maps every variant to one class (a `class()`
/// method, matched exhaustively, so a new variant must be classified). The
/// CLI turns classes into exit codes with one table; nothing branches on
/// message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Something the caller named (a snapshot, a path in it, a key, a
    /// source path, a WAL segment) does not exist.
    NotFound,
    /// There is no repository at the location.
    NoRepository,
    /// No key of the repository opens with the password (or none was given).
    WrongPassword,
    /// The storage cannot be reached, or answered only with transient
    /// failures; retrying later may succeed.
    Unreachable,
    /// The storage refused access (permissions, credentials).
    AccessDenied,
    /// The key (or client) the operation runs with has a role that does
    /// not allow it (an append-only key cannot forget).
    NotAllowed,
    /// The storage, or a restore target, is full.
    StorageFull,
    /// Repository data is damaged or missing, or conflicts with what is
    /// being written.
    Damaged,
    /// The repository's format is newer than this lifeboat.
    Unsupported,
    /// Another process holds an incompatible lock; retrying later succeeds.
    Locked,
    /// The request itself is wrong: a bad pattern, option value, file name
    /// or URL. Retrying the same request fails the same way.
    BadInput,
    /// A database server or a vendor tool (pg_dump, pg_ctl) failed or
    /// refused; its own message says why.
    External,
    /// A file, directory or object could not be read or written for a
    /// reason no other class names (an I/O error, an unexpected answer).
    Io,
    /// A bug or a broken invariant in lifeboat itself (a worker task
    /// died, an internal channel closed).
    Internal,
}

impl ErrorClass {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Unreachable | ErrorClass::Locked)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(key: &ObjectKey) -> Self {
        Self::new(ErrorKind::NotFound, format!("object {key} not found"))
    }

    pub fn already_exists(key: &ObjectKey) -> Self {
        Self::new(
            ErrorKind::AlreadyExists,
            format!("object {key} already exists"),
        )
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The class of this error. A missing object is missing repository
    /// data: callers that treat absence as normal (a lock, a record
    /// forgotten while listing) check [`ErrorKind::NotFound`] themselves
    /// before it ever becomes an error.
    pub fn class(&self) -> ErrorClass {
        match self.kind {
            ErrorKind::NotFound | ErrorKind::InvalidRange => ErrorClass::Damaged,
            // lifeboat never overwrites: meeting an existing object where a
            // new one was meant is a race or a bug, not the user's doing.
            ErrorKind::AlreadyExists => ErrorClass::Internal,
            ErrorKind::Transient | ErrorKind::Unreachable => ErrorClass::Unreachable,
            ErrorKind::PermissionDenied => ErrorClass::AccessDenied,
            ErrorKind::StorageFull => ErrorClass::StorageFull,
            ErrorKind::Config => ErrorClass::BadInput,
            ErrorKind::NoContainer => ErrorClass::NoRepository,
            ErrorKind::Other => ErrorClass::Io,
        }
    }

    /// Classifies an I/O error from a local filesystem.
    pub fn from_io(err: std::io::Error, context: impl std::fmt::Display) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied | K::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
            K::StorageFull | K::QuotaExceeded => ErrorKind::StorageFull,
            K::TimedOut | K::Interrupted => ErrorKind::Transient,
            K::UnexpectedEof => ErrorKind::InvalidRange,
            _ => ErrorKind::Other,
        };
        Self::new(kind, format!("{context}: {err}"))
    }
}
