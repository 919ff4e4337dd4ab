//! Getting each repository ready for a backup: its write session (and the
//! shared lock that comes with it), its parent snapshot, and the mode the
//! snapshot will record.
//!
//! This module only prepares; it reads no source and writes no blob. A
//! repository that fails here is reported in its own result and takes no
//! part in the backup.

use std::sync::Arc;

use lifeboat_repo::{BackupMode, Repository, Snapshot, Tree, WriteOptions, WriteSession};

use super::choose_parent;
use super::pending::Results;
use crate::Result;

/// A repository ready to take a backup.
pub(crate) struct Prepared {
    /// Position in the caller's list of repositories.
    pub(crate) index: usize,
    pub(crate) session: WriteSession,
    pub(crate) parent: Option<Snapshot>,
    /// The mode the snapshot records (see [`recorded_mode`]).
    pub(crate) mode: BackupMode,
}

/// The mode a snapshot records: an incremental or differential backup that
/// found no parent read everything, so it is recorded as full (as
/// pgBackRest does), and later differential backups can use it.
fn recorded_mode(requested: BackupMode, has_parent: bool) -> BackupMode {
    if has_parent {
        requested
    } else {
        BackupMode::Full
    }
}

/// Opens a write session in every repository (concurrently) and reads each
/// one's parent snapshot (and, with `with_trees`, its root tree).
/// Repositories that fail here get their error in the results and take no
/// part in the backup.
pub(crate) async fn prepare_all(
    repos: &[Arc<Repository>],
    host: &str,
    paths: &[String],
    mode: BackupMode,
    write: &WriteOptions,
    with_trees: bool,
) -> (Vec<Prepared>, Vec<Option<Tree>>, Results) {
    let prepared = futures::future::join_all(repos.iter().enumerate().map(|(index, repo)| {
        prepare(
            index,
            repo.clone(),
            host,
            paths,
            mode,
            write.clone(),
            with_trees,
        )
    }))
    .await;
    let mut results: Results = repos.iter().map(|_| None).collect();
    let mut live = Vec::new();
    let mut trees = Vec::new();
    for (index, p) in prepared.into_iter().enumerate() {
        match p {
            Ok((p, tree)) => {
                live.push(p);
                trees.push(tree);
            }
            Err(e) => results[index] = Some(Err(e)),
        }
    }
    (live, trees, results)
}

async fn prepare(
    index: usize,
    repo: Arc<Repository>,
    host: &str,
    paths: &[String],
    mode: BackupMode,
    write: WriteOptions,
    with_tree: bool,
) -> Result<(Prepared, Option<Tree>)> {
    // The session's shared lock first: a prune cannot then repack the
    // parent's trees away between choosing the parent and reading it.
    let session = WriteSession::start(repo.clone(), write).await?;
    let parent = async {
        // A write-only key reads no snapshot, so it has no parent: every
        // file is read again, and deduplication (through the index's
        // blob-id lists) keeps what is already stored from being uploaded
        // again (docs/format.md §18).
        let all = if repo.is_write_only() {
            Vec::new()
        } else {
            repo.snapshots().await?
        };
        let parent = choose_parent(&all, host, paths, mode).cloned();
        let tree = match &parent {
            Some(p) if with_tree => Some(repo.read_tree(&p.record.tree).await?),
            _ => None,
        };
        Ok::<_, lifeboat_repo::Error>((parent, tree))
    }
    .await;
    let (parent, tree) = match parent {
        Ok(found) => found,
        Err(e) => {
            // Nothing was written: this only releases the lock.
            let _ = session.flush().await;
            return Err(e.into());
        }
    };
    let mode = recorded_mode(mode, parent.is_some());
    Ok((
        Prepared {
            index,
            session,
            parent,
            mode,
        },
        tree,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_parent_is_recorded_as_full() {
        for mode in [
            BackupMode::Full,
            BackupMode::Incremental,
            BackupMode::Differential,
        ] {
            assert_eq!(recorded_mode(mode, false), BackupMode::Full);
            assert_eq!(recorded_mode(mode, true), mode);
        }
    }
}
