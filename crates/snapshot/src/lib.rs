//! Files and streams to and from snapshots.
//!
//! This crate turns a source (file trees, a byte stream) into a snapshot
//! ([`backup`]), and a snapshot back into files ([`restore`], [`dump`]). It
//! also answers questions about snapshots' contents ([`ls`], [`diff`],
//! [`find`]). It knows the repository only through `lifeboat-repo`'s public
//! API (trees, blobs, write sessions) and never prints: progress goes through
//! the [`progress`] traits, results come back as values.

pub mod backup;
pub mod detect;
pub mod diff;
pub mod dump;
pub mod dumptar;
mod error;
pub mod find;
pub mod ls;
pub mod nav;
mod pathmatch;
pub mod progress;
pub mod restore;
pub mod verify;

pub use error::{Error, Result, io_class};
pub use pathmatch::{PathMatcher, printable};
