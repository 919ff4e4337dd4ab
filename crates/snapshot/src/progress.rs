//! Progress reporting: libraries report events, only the CLI draws them.
//!
//! Counters are cumulative so a renderer can sample them at any rate.

use std::path::Path;

/// Events of a backup. Every method has a no-op default.
pub trait BackupProgress: Send + Sync {
    /// The source scan found this many more files and bytes to consider.
    fn scanned(&self, _files: u64, _bytes: u64) {}
    /// A file was processed (read, or reused from the parent snapshot).
    fn processed(&self, _files: u64, _bytes: u64) {}
    /// A per-item problem: the item is skipped (or stored as read) and the
    /// backup goes on.
    fn warning(&self, _path: &Path, _message: &str) {}
}

/// Events of a restore.
pub trait RestoreProgress: Send + Sync {
    /// Totals of files and bytes to write, once the plan of the first
    /// part is known; a restore in several parts (its trees are walked a
    /// part at a time) says them again, larger, as each later part adds
    /// to them.
    fn planned(&self, _files: u64, _bytes: u64) {}
    /// Files and bytes restored so far: running totals, not increments.
    fn restored(&self, _files: u64, _bytes: u64) {}
    fn warning(&self, _path: &Path, _message: &str) {}
}

/// Progress sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl BackupProgress for NoProgress {}
impl RestoreProgress for NoProgress {}
