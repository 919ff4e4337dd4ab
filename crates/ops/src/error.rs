//! Errors of the operations layer, each classified with the workspace's
//! [`ErrorClass`] (the CLI maps classes to exit codes). A config problem
//! is [`Error::Config`] (bad input, with file, line and key); a failed
//! step of a run is not an error of `run` itself but a result in its
//! [`RunReport`](crate::report::RunReport); errors here are what keeps an
//! operation from starting or from recording its outcome.

use std::path::PathBuf;

use lifeboat_storage::ErrorClass;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigError),

    #[error("no plan named {name:?} in {config}; plans: {known}")]
    UnknownPlan {
        name: String,
        config: PathBuf,
        known: String,
    },

    /// A repository's password could not be obtained.
    #[error("repository {repository}: {message}")]
    Password { repository: String, message: String },

    #[error("repository {repository}: {source}")]
    Repo {
        repository: String,
        #[source]
        source: lifeboat_repo::Error,
    },

    #[error("repository {repository}: {source}")]
    Snapshot {
        repository: String,
        #[source]
        source: lifeboat_snapshot::Error,
    },

    #[error("repository {repository}: {source}")]
    Storage {
        repository: String,
        #[source]
        source: lifeboat_storage::Error,
    },

    /// The local state directory could not be read or written.
    #[error("state directory {}: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP listener could not start.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },

    /// A drill could not run (beyond a repository or state error).
    #[error("drill from repository {repository}: {message}")]
    Drill { repository: String, message: String },

    /// An incident command that does not fit the incident log (an update
    /// with no open incident, a second open one).
    #[error("{0}")]
    Incident(String),

    #[error("plan {plan} is already running (started {started})")]
    AlreadyRunning { plan: String, started: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_) | Error::UnknownPlan { .. } => ErrorClass::BadInput,
            Error::Password { .. } => ErrorClass::WrongPassword,
            Error::Repo { source, .. } => source.class(),
            Error::Storage { source, .. } => source.class(),
            Error::Snapshot { source, .. } => source.class(),
            Error::State { .. } | Error::Listen { .. } => ErrorClass::Io,
            Error::AlreadyRunning { .. } => ErrorClass::Locked,
            Error::Drill { .. } | Error::Incident(_) => ErrorClass::BadInput,
        }
    }
}
