//! Backup and restore-to-a-temp-directory fixtures shared by
//! lifeboat-snapshot's test binaries.
//!
//! These live here rather than in lifeboat-testkit because they call this
//! crate's `restore`: testkit depending on lifeboat-snapshot would put a
//! dev-dependency cycle under this crate. Everything that needs no
//! snapshot code (repositories, tree comparison) is in testkit.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_repo::{Repository, Snapshot};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_testkit::fs::{assert_same_tree, restored};
use tempfile::TempDir;

/// Backs up `path` with default options, which must succeed; returns the
/// snapshot.
pub async fn backup_snapshot(repo: &Arc<Repository>, path: PathBuf) -> Snapshot {
    backup(
        repo.clone(),
        &BackupOptions {
            paths: vec![path],
            ..Default::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .expect("backup")
    .snapshot
}

/// Restores all of `snap` into a new temporary directory (under the
/// target directory, not /tmp, which may be a small tmpfs) and returns it.
/// Panics if the restore fails or reports any file it could not restore.
pub async fn restore_to_temp(repo: &Arc<Repository>, snap: &Snapshot) -> TempDir {
    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stats = restore(
        repo,
        snap,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .expect("restore");
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    target
}

/// Restores `snap` and checks that the backed-up directory `source` comes
/// back identical: the same paths, contents and symlink targets.
pub async fn assert_restores(repo: &Arc<Repository>, snap: &Snapshot, source: &Path) {
    let target = restore_to_temp(repo, snap).await;
    assert_same_tree(source, &restored(target.path(), source));
}
