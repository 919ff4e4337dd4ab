//! Errors of snapshot operations.
//!
//! Rules: per-item failures during a backup or restore (one unreadable file)
//! are not errors of the operation: they are reported through the progress
//! trait and counted in the result. An [`Error`] stops the whole operation.

use std::path::PathBuf;

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

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
