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
//! Libraries never print: results come back as values.

mod error;
pub mod postgres;
mod stream;

pub use error::{Error, Result};
