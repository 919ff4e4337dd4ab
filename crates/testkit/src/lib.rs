//! Test support for lifeboat, never a dependency of shipped code.
//!
//! - [`conformance`]: one async suite that checks every point of the
//!   [`lifeboat_storage::Storage`] contract, run against every backend.
//! - [`services`]: real servers for tests ([`services::S3Server`] on s3s-fs,
//!   [`services::SshServer`] on a private sshd), started in temp dirs and
//!   killed on drop, plus [`services::require_or_skip`] for missing binaries.
//! - [`postgres`]: throwaway PostgreSQL clusters ([`postgres::PgCluster`]).
//! - [`cmd::run_ok`]: run a command that must succeed, for binary tests;
//!   [`cmd::KillOnDrop`]: a child process that cannot outlive its test.
//! - [`data`]: reproducible pseudo-random test data.
//! - [`fs`]: directory-tree fixtures (write, read back, compare, where a
//!   restore puts a path).
//! - [`repo`] (feature `repo`): test repositories (fast KDF, small packs)
//!   and the read-everything check.
//! - [`tmpfs::Tmpfs`]: a small filesystem to fill up, for full-disk tests.
//! - [`sinks`]: local HTTP and SMTP receivers that record what they get
//!   (alert webhooks, pings, email).
//! - [`wait`]: waiting on a condition with a deadline instead of sleeping.
//! - [`faulty::FaultyStorage`]: injects errors (scheduled or at a seeded
//!   rate), latency, short reads, hangs and lagging listings.
//! - [`crash::CrashStorage`]: models a power cut in the middle of an
//!   operation, per the storage contract's durability promises.
//! - [`sim::Scheduler`]: runs several actors' storage calls one at a time
//!   in a seeded order, to explore interleavings deterministically.
//! - [`FillingUp`]: a disk that fills up: puts of one object kind fail
//!   with "storage full" once a budget is spent.
//! - [`CountingStorage`]: counts the calls made to a storage (which tier an
//!   operation touched).
//! - [`MemoryStorage`], re-exported so API tests need only this crate.

pub mod cmd;
pub mod conformance;
mod counting;
pub mod crash;
pub mod data;
pub mod faulty;
mod filling;
pub mod fs;
pub mod postgres;
#[cfg(feature = "repo")]
pub mod repo;
pub mod services;
pub mod sim;
pub mod sinks;
pub mod tmpfs;
pub mod wait;

pub use counting::{CountingStorage, Counts};
pub use filling::FillingUp;
pub use lifeboat_storage::MemoryStorage;
