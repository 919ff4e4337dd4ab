//! Connector errors.
//!
//! Rules: repository, snapshot and storage errors are carried unchanged (the
//! CLI maps them to exit codes); a failed vendor tool is reported with its
//! exit status and the tail of its stderr, because that is where the cause
//! is; WAL problems name the WAL file.

use std::path::PathBuf;

use lifeboat_storage::ErrorClass;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::Error),

    #[error(transparent)]
    Snapshot(#[from] lifeboat_snapshot::Error),

    #[error(transparent)]
    Storage(#[from] lifeboat_storage::Error),

    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A vendor tool (pg_basebackup, pg_dump, pg_ctl...) failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },

    /// The repository holds a WAL file of this name with other content.
    #[error(
        "WAL file {name} is already archived with DIFFERENT content: refusing to overwrite it. \
         Two clusters with the same system identifier archive into this repository, or the \
         cluster was restored and promoted without a new timeline; check archive_command \
         settings before anything else"
    )]
    WalConflict { name: String },

    /// A WAL segment needed for a restore is not in the repository.
    #[error(
        "WAL segment {segment} is missing from the repository (needed to replay from base backup \
         {backup} to the target); nothing was written. Restore to a target before the gap, or \
         pick an earlier base backup with --snapshot"
    )]
    MissingWal { segment: String, backup: String },

    #[error("{0}")]
    NotFound(String),

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
    /// The class of this error (see [`ErrorClass`]): library errors keep
    /// theirs, so a full repository inside a connector is still a full
    /// repository.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Repo(e) => e.class(),
            Error::Snapshot(e) => e.class(),
            Error::Storage(e) => e.class(),
            Error::Postgres(_) | Error::Tool { .. } => ErrorClass::External,
            Error::Io { source, .. } => lifeboat_snapshot::io_class(source),
            Error::WalConflict { .. } => ErrorClass::Damaged,
            Error::MissingWal { .. } | Error::NotFound(_) => ErrorClass::NotFound,
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
