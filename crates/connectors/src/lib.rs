//! What lifeboat protects beyond plain files: database connectors.
//!
//! Each connector drives the database vendor's own tools as child processes
//! (never a reimplementation of their protocols) and turns their output into
//! snapshots through `lifeboat-snapshot`'s archiver (a tool's output stream
//! or a data directory becomes a pending snapshot, committed with the
//! connector's data once the tool has reported); log archiving (WAL) and
//! point-in-time restore live here too. Modules:
//!
//! - [`postgres`]: base backups (`pg_basebackup`), the WAL archive
//!   (`archive_command` / `restore_command`), point-in-time restore and warm
//!   standbys, `pg check`, WAL retention and logical dumps (`pg_dump`).
//! - `stream`: a vendor tool's standard output stored as a pending stream
//!   snapshot, refused if the tool fails.
//!
//! Log files a connector archives (PostgreSQL WAL) are archive objects of
//! `lifeboat_repo::archive`; the connector owns their names and meaning
//! and supplies their retention rule, and [`archive_rules`] gathers every
//! connector's rule for `prune` and `copy`.
//!
//! Libraries never print: results come back as values.

mod error;
pub mod postgres;
mod stream;

pub use error::{Error, Result};

use std::sync::Arc;

use lifeboat_repo::ArchiveRules;

/// The retention rules of every log kind a connector archives, for
/// `lifeboat_repo::prune` and `lifeboat_repo::copy`
/// (`PruneOptions::archive`, `CopyOptions::archive`). A new log kind
/// (MariaDB binlogs, SQLite WAL) adds its rule here.
pub fn archive_rules() -> ArchiveRules {
    ArchiveRules::new().with(Arc::new(postgres::retention::WalRetention))
}
