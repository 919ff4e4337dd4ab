//! Test support for lifeboat, never a dependency of shipped code.
//!
//! - [`conformance`]: one async suite that checks every point of the
//!   [`lifeboat_storage::Storage`] contract, run against every backend.
//! - [`services`]: real servers for tests ([`services::S3Server`] on s3s-fs,
//!   [`services::SshServer`] on a private sshd), started in temp dirs and
//!   killed on drop, plus [`services::require_or_skip`] for missing binaries.
//! - [`postgres`]: throwaway PostgreSQL clusters ([`postgres::PgCluster`]).
//! - [`data`]: reproducible pseudo-random test data.
//! - [`CountingStorage`]: counts the calls made to a storage (which tier an
//!   operation touched).
//! - [`MemoryStorage`], re-exported so API tests need only this crate.
//!
//! Fixture builders and faulty/crash storages belong here too as they grow.

pub mod conformance;
mod counting;
pub mod data;
pub mod postgres;
pub mod services;

pub use counting::{CountingStorage, Counts};
pub use lifeboat_storage::MemoryStorage;
