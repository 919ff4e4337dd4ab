//! PostgreSQL: physical base backups, the continuous WAL archive,
//! point-in-time restore, warm standbys, archive checks, WAL retention and
//! logical dumps.
//!
//! The vendor tools do the database work (`pg_basebackup`, `pg_dump`,
//! `pg_restore`, `pg_ctl`), run as child processes with their output
//! streamed, never staged on disk; `tokio-postgres` reads positions and
//! settings and drives the low-level backup API when the data directory is
//! local. Modules:
//!
//! - [`walname`]: WAL file names, segment arithmetic, LSNs.
//! - [`wal`]: WAL files as archive objects of the repository (their names;
//!   `wal-push`, `wal-fetch`, listing), with the local spool that batches
//!   pushes and reads ahead on fetches.
//! - [`base`]: `pg backup` (a base backup into a snapshot) and unpacking one
//!   into a data directory.
//! - [`files`]: the files method of `pg backup`: the data directory read
//!   directly and in parallel between `pg_backup_start` and `pg_backup_stop`.
//! - [`pitr`]: `pg restore`: choosing the base backup, checking WAL
//!   continuity, writing the recovery settings, starting and waiting.
//! - [`retention`]: which WAL the retained base backups need (the rule
//!   `prune` and `copy` apply; `pg expire-wal`).
//! - [`check`]: `pg check`.
//! - [`dump`]: `pg dump` / `pg restore-dump`.
//! - [`xacts`]: `pg transactions`: the transactions of a time window, read
//!   from the archived WAL with `pg_waldump`.
//!
//! The design and the guarantees are in `docs/pitr.md`; the object format
//! in `docs/format.md` ("Archive objects").

pub mod base;
pub mod check;
pub mod conn;
pub mod dump;
pub mod files;
pub mod pitr;
pub mod retention;
pub mod wal;
pub mod walname;
pub mod xacts;

/// Hands a backup's stored bytes to a connector's byte counter (the CLI's
/// progress display).
pub(crate) struct BytesProgress(pub(crate) std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl lifeboat_snapshot::progress::BackupProgress for BytesProgress {
    fn processed(&self, _files: u64, bytes: u64) {
        (self.0)(bytes)
    }
}

/// Key of [`lifeboat_repo::SnapshotRecord::extra`] holding the PostgreSQL
/// data of a snapshot (a [`base::BaseBackupInfo`] or a [`dump::DumpInfo`]).
pub const EXTRA_KEY: &str = "postgresql";
