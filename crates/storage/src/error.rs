//! Storage errors.
//!
//! Rules: every error carries the [`ErrorKind`] a caller branches on, the
//! location or key it concerns, and the backend's own message. Only
//! [`ErrorKind::Transient`] is retryable; a caller never string-matches.

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
    Other,
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
