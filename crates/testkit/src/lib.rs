//! Test support for lifeboat, never a dependency of shipped code.
//!
//! - [`conformance`]: one async suite that checks every point of the
//!   [`lifeboat_storage::Storage`] contract, run against every backend.
//! - [`services`]: real servers for tests ([`services::S3Server`] on s3s-fs,
//!   [`services::SshServer`] on a private sshd), started in temp dirs and
//!   killed on drop, plus [`services::require_or_skip`] for missing binaries.
//! - [`postgres`]: throwaway PostgreSQL clusters ([`postgres::PgCluster`]).
//! - [`data`]: reproducible pseudo-random test data.
//! - [`MemoryStorage`], re-exported so API tests need only this crate.
//!
//! Fixture builders and faulty/crash storages belong here too as they grow.

pub mod conformance;
pub mod data;
pub mod postgres;
pub mod services;

pub use lifeboat_storage::MemoryStorage;
