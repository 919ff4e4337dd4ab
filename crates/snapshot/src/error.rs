//! Errors of snapshot operations.
//!
//! Rules: per-item failures during a backup or restore (one unreadable file)
//! are not errors of the operation: they are reported through the progress
//! trait and counted in the result. An [`Error`] stops the whole operation.

use std::path::PathBuf;

use lifeboat_storage::ErrorClass;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::Error),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} not found in snapshot {snapshot}")]
    PathNotFound { snapshot: String, path: String },

    /// The request is wrong (a pattern, a file name, an option value, a
    /// target that holds files): the message says what to change.
    #[error("{0}")]
    BadInput(String),
    /// A broken invariant inside lifeboat (a worker task died, a session
    /// still in use): not the user's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The class of this error (see [`ErrorClass`]). A local file that is
    /// missing was named by the caller (a backup source); a full target
    /// filesystem is a full storage.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Repo(e) => e.class(),
            Error::Io { source, .. } => io_class(source),
            Error::PathNotFound { .. } => ErrorClass::NotFound,
            Error::BadInput(_) => ErrorClass::BadInput,
            Error::Internal(_) => ErrorClass::Internal,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The class of a local I/O error: full and missing are told apart, the
/// rest is an I/O failure.
pub fn io_class(e: &std::io::Error) -> ErrorClass {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            ErrorClass::StorageFull
        }
        std::io::ErrorKind::NotFound => ErrorClass::NotFound,
        _ => ErrorClass::Io,
    }
}
