//! The lifeboat repository format.
//!
//! This crate owns everything that defines what is stored and how: keys and
//! encryption ([`MasterKey`], [`KeyFile`]), the [`Config`], chunking
//! ([`Chunker`]), packs, the [`Index`], directory [`Tree`]s and
//! [`SnapshotRecord`]s, [`archive`] objects (log files such as PostgreSQL
//! WAL, kept whole outside packs), plus the operations that need nothing
//! but the repository: write sessions, `check`, `prune`, `copy`, `repair
//! index` and key management. Connectors give `prune` and `copy` their log
//! kinds' retention rules ([`ArchiveRetention`]).
//! It does not know about files on disk (that is `lifeboat-snapshot`).
//! The byte-level format is specified in `docs/format.md`.

pub mod archive;
mod check;
mod chunker;
mod config;
mod copy;
mod crypto;
mod error;
mod id;
mod index;
mod keyfile;
pub mod keys;
pub mod lock;
mod pack;
pub mod prune;
mod record;
pub mod repair;
mod repository;
pub mod retention;
mod tree;
mod writer;

pub use archive::{ArchiveName, ArchiveRetention, ArchiveRules};
pub use check::{CheckOptions, CheckProblem, CheckReport, check};
pub use chunker::Chunker;
pub use config::{ChunkerParams, ColdTierConfig, Config, FORMAT_VERSION};
pub use copy::{
    COPIED_FROM, CopiedSnapshot, CopyOptions, CopyProgress, CopyStats, copied_from, copy,
};
pub use crypto::MasterKey;
pub use error::{Error, Result};
pub use id::Id;
pub use index::{BlobLocation, Index, IndexFile, IndexPack};
pub use keyfile::{KdfParams, KeyFile};
pub use lock::{LockKind, LockOptions, RepositoryLock};
pub use pack::{BlobType, PackEntry, open_blob, parse_pack};
pub use record::{BackupMode, BackupSummary, Snapshot, SnapshotRecord};
pub use repository::{ColdInit, InitOptions, Repository, Tier, pack_key, resolve_snapshot};
pub use tree::{Node, NodeKind, Time, Tree};
pub use writer::{AddedBlob, WriteOptions, WriteSession, WriteStats};
