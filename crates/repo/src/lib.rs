//! The lifeboat repository format.
//!
//! This crate owns everything that defines what is stored and how: keys and
//! encryption ([`MasterKey`], [`KeyFile`]), the [`Config`], chunking
//! ([`Chunker`]), packs, the [`Index`], directory [`Tree`]s and
//! [`SnapshotRecord`]s, [`archive`] objects (log files such as PostgreSQL
//! WAL, kept whole outside packs), plus the operations that need nothing
//! but the repository: write sessions, reading blobs out of packs
//! ([`PackReader`]), `check`, `prune`, `copy`, `repair index` and key
//! management. Connectors give `prune` and `copy` their log kinds'
//! retention rules ([`ArchiveRetention`]).
//! It does not know about files on disk (that is `lifeboat-snapshot`).
//! The byte-level format is specified in `docs/format.md`.

pub mod archive;
pub mod audit;
mod check;
mod chunker;
mod config;
mod copy;
mod coverage;
mod crypto;
pub mod diskcache;
mod error;
mod id;
mod index;
mod keyfile;
pub mod keys;
pub mod limits;
mod local;
pub mod lock;
pub mod objectlock;
mod pack;
mod packread;
pub mod protect;
pub mod prune;
mod record;
pub mod repair;
mod repository;
pub mod retention;
pub mod tags;
mod tree;
mod writer;

pub use archive::{ArchiveName, ArchiveRetention, ArchiveRules};
pub use check::{
    CeilingStats, CheckOptions, CheckProblem, CheckReport, VerifyOptions, check, check_with,
    measure_ceiling,
};
pub use chunker::{Chunker, Chunks, Cut, paged_block_size};
pub use config::{ChunkerParams, ColdTierConfig, Config, FORMAT_VERSION, WriteOnlyConfig};
pub use copy::{
    COPIED_FROM, CopiedSnapshot, CopyBatch, CopyOptions, CopyProgress, CopyStats, copied_from, copy,
};
pub use coverage::{Coverage, DEFAULT_COVERAGE_DAYS, DataSubset};
pub use crypto::{MasterKey, os_random};
pub use error::{Error, Result};
pub use id::Id;
pub use index::{BlobLocation, FirstPacks, Index, IndexBuilder, IndexFile, IndexPack};
pub use keyfile::{KdfParams, KeyFile, KeyKind, Permission, Role};
pub use local::LocalState;
pub use lock::{LockKind, LockOptions, RepositoryLock};
pub use pack::{BlobScratch, BlobType, PackEntry};
pub use packread::{
    FetchedRange, MemoryPermit, OpenedBlob, PackRange, PackReader, RangeLimits,
    another_copy_may_help, pack_object_path, plan_ranges,
};
pub use record::{BackupMode, BackupSummary, Creator, Snapshot, SnapshotRecord};
pub use repository::{
    CacheBypass, ColdInit, DamagedSnapshot, InitOptions, MAX_KEY_FILES_TRIED, Repository,
    SnapshotFilter, SnapshotListing, Tier, resolve_snapshot, resolve_snapshot_matching,
};
pub use tree::{Node, NodeKind, Time, Tree};
pub use writer::{AddedBlob, WriteOptions, WriteSession, WriteStats};

/// Entry points for fuzzing the decoders of untrusted pack bytes (the
/// targets under `fuzz/` and the corpus example). Not an API: readers go
/// through [`PackReader`] and [`Repository`].
#[doc(hidden)]
pub mod fuzzing {
    use crate::{Id, MasterKey, PackEntry, Result};

    /// Decodes a whole pack's trailer (see `pack::parse_pack`).
    pub fn parse_pack(key: &MasterKey, pack: &Id, bytes: &[u8]) -> Result<Vec<PackEntry>> {
        crate::pack::parse_pack(key, pack, bytes)
    }

    /// A full key of a repository that takes write-only keys, and the
    /// write-only key that goes with it (docs/format.md §18).
    pub fn write_only_pair() -> (MasterKey, MasterKey) {
        let full = MasterKey::generate();
        let public = full.derived_public().expect("a full key");
        let full = full
            .with_write_only_public(&public)
            .expect("its own public key");
        let write_only = full
            .write_only_key()
            .expect("a full key")
            .with_write_only_public(&public)
            .expect("its own public key");
        (full, write_only)
    }

    /// Opens one sealed blob (see `pack::open_blob`).
    pub fn open_blob(key: &MasterKey, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
        crate::pack::open_blob(key, entry, sealed)
    }
}
