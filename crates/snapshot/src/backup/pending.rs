//! The pipeline every backup goes through, and its end: the snapshot
//! record and the pending snapshot.
//!
//! [`run`] is the one skeleton for every source: prepare each repository,
//! build the shared context, read the source on a blocking thread (the
//! source's own job, passed in), then build each surviving target's
//! snapshot record ([`finish_all`], the only place a record is built) and
//! hand it back as a [`PendingBackup`]. Committing writes the record with
//! the caller's `extra`. This module reads no source data itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lifeboat_repo::{
    BackupMode, BlobType, Id, Repository, SnapshotRecord, Tree, WriteOptions, WriteSession,
};

use super::BackupOutcome;
use super::ctx::{Ctx, TargetMeta};
use super::prepare::prepare_all;
use super::tree::generated_file_node;
use crate::progress::BackupProgress;
use crate::{Error, Result};

/// Per repository, in the caller's order: its pending snapshot or the
/// error that stopped it (`None` while the backup runs).
pub(crate) type Results = Vec<Option<Result<PendingBackup>>>;

/// What every target's snapshot record shares, and how the repositories
/// are prepared.
pub(crate) struct Request {
    pub(crate) started: Instant,
    pub(crate) time: jiff::Timestamp,
    pub(crate) host: String,
    /// The source identity recorded (`paths`), which also picks the parent.
    pub(crate) paths: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) mode: BackupMode,
    /// Compression level and dry run of every write session.
    pub(crate) write: WriteOptions,
    /// Read each parent snapshot's root tree up front (a tree source
    /// compares with it; a stream does not).
    pub(crate) parent_trees: bool,
}

/// Runs a backup of one source into every repository: `set` fills in the
/// source's options of the shared context, and `read` (run on a blocking
/// thread) reads the source once, given each target's parent root tree,
/// and returns each target's root tree id (`None` where it failed).
pub(crate) async fn run<F>(
    repos: Vec<Arc<Repository>>,
    request: Request,
    progress: Arc<dyn BackupProgress>,
    set: impl FnOnce(&mut Ctx),
    read: F,
) -> Result<Vec<Result<PendingBackup>>>
where
    F: FnOnce(&Arc<Ctx>, Vec<Option<Tree>>) -> Result<Vec<Option<Id>>> + Send + 'static,
{
    let (live, parent_trees, mut results) = prepare_all(
        &repos,
        &request.host,
        &request.paths,
        request.mode,
        &request.write,
        request.parent_trees,
    )
    .await;
    if live.is_empty() {
        return Ok(results.into_iter().map(Option::unwrap).collect());
    }
    let (ctx, meta) = Ctx::new(live, progress, set);
    let ctx = Arc::new(ctx);
    let roots = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || read(&ctx, parent_trees))
            .await
            .map_err(|e| Error::Internal(format!("backup task failed: {e}")))??
    };
    finish_all(ctx, meta, roots, &request, &mut results)?;
    Ok(results.into_iter().map(Option::unwrap).collect())
}

/// Commits every pending snapshot (concurrently), without connector data.
pub(crate) async fn commit_all(pending: Vec<Result<PendingBackup>>) -> Vec<Result<BackupOutcome>> {
    futures::future::join_all(
        pending
            .into_iter()
            .map(|p| async move { p?.commit(Default::default()).await }),
    )
    .await
}

/// Fills in every target's result: for each surviving target, its
/// snapshot record ready to be committed.
fn finish_all(
    ctx: Arc<Ctx>,
    meta: Vec<TargetMeta>,
    roots: Vec<Option<Id>>,
    request: &Request,
    results: &mut Results,
) -> Result<()> {
    let ctx =
        Arc::try_unwrap(ctx).map_err(|_| Error::Internal("write session still in use".into()))?;
    let warnings = std::mem::take(&mut *ctx.warnings.lock().unwrap());
    for ((target, meta), root) in ctx.targets.into_iter().zip(meta).zip(roots) {
        let failure = target.failure.lock().unwrap().take();
        let root = match (failure, root) {
            (Some(e), _) => {
                results[meta.index] = Some(Err(e));
                continue;
            }
            (None, Some(root)) => root,
            (None, None) => {
                results[meta.index] = Some(Err(Error::Internal(
                    "backup did not complete its root tree".into(),
                )));
                continue;
            }
        };
        let summary = ctx.counters.summary(request.started, &target.files);
        let record = SnapshotRecord {
            time: request.time,
            host: request.host.clone(),
            user: std::env::var("USER").unwrap_or_default(),
            paths: request.paths.clone(),
            tags: request.tags.clone(),
            tree: root,
            mode: meta.mode,
            parent: meta.parent.as_ref().map(|p| p.id),
            partial: summary.errors > 0,
            summary,
            program_version: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
            extra: Default::default(),
            creator: Some(creator()),
        };
        results[meta.index] = Some(Ok(PendingBackup {
            session: target.session,
            root: target.root_tree.into_inner().unwrap(),
            record,
            started: request.started,
            warnings: warnings.clone(),
        }));
    }
    Ok(())
}

/// A backup whose data and trees are stored but whose snapshot record is
/// not written yet (see [`backup_pending`](super::backup_pending) and
/// [`backup_stream_pending`](super::backup_stream_pending)).
pub struct PendingBackup {
    session: WriteSession,
    /// The tree `record.tree` names.
    root: Option<Tree>,
    record: SnapshotRecord,
    started: Instant,
    warnings: Vec<String>,
}

impl PendingBackup {
    /// The record [`commit`](Self::commit) will write (its `extra` empty).
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// Sets `extra[key] = true` in the record to be written (a mark such
    /// as [`EMPTY_STREAM`](super::stream::EMPTY_STREAM)); `commit` keeps it.
    pub fn mark(&mut self, key: &str) {
        self.record
            .extra
            .insert(key.to_string(), serde_json::Value::Bool(true));
    }

    /// Per-item problems so far.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Adds a regular file to the snapshot's root directory (replacing an
    /// entry of the same name), its content stored as one blob: meant for
    /// small files such as a database's backup label.
    pub async fn add_root_file(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::BadInput(format!("invalid file name {name:?}")));
        }
        let Some(root) = self.root.as_mut() else {
            return Err(Error::Internal(
                "the backup's root tree is not at hand".into(),
            ));
        };
        let content = if data.is_empty() {
            Vec::new()
        } else {
            vec![self.session.add_blob(BlobType::Data, data).await?.id]
        };
        let node = generated_file_node(name, mode, data.len() as u64, content);
        root.nodes.retain(|n| n.name != node.name);
        let at = root.nodes.partition_point(|n| n.name < node.name);
        root.nodes.insert(at, node);
        let root = root.encode();
        self.record.tree = self.session.add_blob(BlobType::Tree, &root).await?.id;
        let s = &mut self.record.summary;
        s.files_new += 1;
        s.total_files += 1;
        s.total_bytes += data.len() as u64;
        s.read_bytes += data.len() as u64;
        Ok(())
    }

    /// Writes the snapshot record, with `extra` added to its connector data
    /// (next to any [`mark`](Self::mark)), and returns the stored snapshot.
    pub async fn commit(self, extra: BTreeMap<String, serde_json::Value>) -> Result<BackupOutcome> {
        let PendingBackup {
            session,
            root: _,
            mut record,
            started,
            warnings,
        } = self;
        let repo = session.repository().clone();
        record.extra.extend(extra);
        record.summary.elapsed_ms = started.elapsed().as_millis() as u64;
        if session.is_dry_run() {
            // Nothing is stored to read back: the record as it would be.
            session.fill_summary(&mut record);
            let id = session.finish(record.clone()).await?;
            let snapshot = lifeboat_repo::Snapshot { id, record };
            return Ok(BackupOutcome {
                snapshot,
                warnings,
                dry_run: true,
            });
        }
        if repo.is_write_only() {
            // A write-only key cannot read the record back: the record as
            // written (finish fills in the same counters).
            session.fill_summary(&mut record);
            let id = session.finish(record.clone()).await?;
            return Ok(BackupOutcome {
                snapshot: lifeboat_repo::Snapshot { id, record },
                warnings,
                dry_run: false,
            });
        }
        let id = session.finish(record).await?;
        // Read back the record as stored (finish fills in the added-bytes counters).
        let snapshot = repo.find_snapshot(&id.to_hex()).await?;
        Ok(BackupOutcome {
            snapshot,
            warnings,
            dry_run: false,
        })
    }
}

/// Who this process is, for the snapshot record: its effective uid,
/// whether it runs in a user namespace, and the kernel's host name.
pub(crate) fn creator() -> lifeboat_repo::Creator {
    lifeboat_repo::Creator {
        uid: nix::unistd::geteuid().as_raw(),
        user_namespace: std::fs::read_to_string("/proc/self/uid_map")
            .ok()
            .map(|map| in_user_namespace(&map)),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        key: None,
    }
}

/// The initial user namespace maps every uid to itself in one line
/// (`0 0 4294967295`); any other map is a user namespace's.
pub(crate) fn in_user_namespace(uid_map: &str) -> bool {
    let lines: Vec<Vec<&str>> = uid_map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    !matches!(lines.as_slice(), [f] if f.as_slice() == ["0", "0", "4294967295"])
}

#[cfg(test)]
mod tests {
    use super::in_user_namespace;

    #[test]
    fn the_initial_user_namespace_is_told_from_others() {
        assert!(!in_user_namespace("         0          0 4294967295\n"));
        assert!(in_user_namespace("         0       1000          1\n"));
        assert!(in_user_namespace("         0     100000      65536\n"));
        assert!(in_user_namespace(""));
    }
}
