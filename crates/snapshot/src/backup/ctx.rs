//! The targets of a backup and the context every thread of it shares.
//!
//! A *target* is one repository being written: its write session, chunker,
//! per-target counters, the root tree as stored, and the error that stopped
//! it (if one did). [`Ctx`] holds the targets, their chunker groups, the
//! counters that describe the source, the warnings, and the walk options.
//! It decides nothing about what to read or how to store it: that is the
//! walker's, the reader's and the store's job.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lifeboat_repo::{BackupMode, BackupSummary, Chunker, Node, Snapshot, Time, Tree, WriteSession};

use super::LIVE_REUSE_MARGIN_SECS;
use super::exclude::Excludes;
use super::node::Names;
use super::prepare::Prepared;
use crate::Error;
use crate::progress::BackupProgress;

/// Counters every target shares (they describe the source).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) dirs: AtomicU64,
    pub(crate) files_skipped: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) read_bytes: AtomicU64,
    pub(crate) total_bytes: AtomicU64,
    pub(crate) total_files: AtomicU64,
    /// Files that changed while being read.
    pub(crate) changed_during_read: AtomicU64,
}

/// Counters that depend on a target's parent snapshot.
#[derive(Default)]
pub(crate) struct FileCounters {
    pub(crate) new: AtomicU64,
    pub(crate) changed: AtomicU64,
    pub(crate) unchanged: AtomicU64,
    /// Data blobs this target did not have yet.
    pub(crate) new_blobs: AtomicU64,
}

impl Counters {
    /// The summary a target's snapshot records.
    pub(crate) fn summary(&self, started: Instant, files: &FileCounters) -> BackupSummary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackupSummary {
            files_new: g(&files.new),
            files_changed: g(&files.changed),
            files_unchanged: g(&files.unchanged),
            dirs: g(&self.dirs),
            files_skipped: g(&self.files_skipped),
            errors: g(&self.errors),
            read_bytes: g(&self.read_bytes),
            total_bytes: g(&self.total_bytes),
            total_files: g(&self.total_files),
            files_changed_during_backup: g(&self.changed_during_read),
            elapsed_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        }
    }
}

/// One repository the backup writes to.
pub(crate) struct Target {
    pub(crate) session: WriteSession,
    pub(crate) chunker: Chunker,
    /// Read every file (a full backup, or no parent snapshot).
    pub(crate) full: bool,
    /// With a live source: files modified at or after this time are read
    /// even when the parent snapshot has them unchanged.
    pub(crate) reuse_before: Option<Time>,
    pub(crate) has_parent: bool,
    pub(crate) files: FileCounters,
    /// The root tree as stored, for
    /// [`PendingBackup::add_root_file`](super::PendingBackup::add_root_file):
    /// the session's blobs cannot be read back before it is finished.
    pub(crate) root_tree: Mutex<Option<Tree>>,
    /// The error that stopped this target.
    pub(crate) failure: Mutex<Option<Error>>,
    dead: AtomicBool,
}

/// What a target's snapshot record needs besides the session.
pub(crate) struct TargetMeta {
    pub(crate) index: usize,
    pub(crate) parent: Option<Snapshot>,
    pub(crate) mode: BackupMode,
}

#[derive(Default)]
pub(crate) struct Ctx {
    pub(crate) targets: Vec<Target>,
    /// Targets with equal chunker parameters: each group chunks a file once.
    pub(crate) groups: Vec<Vec<usize>>,
    /// The smallest chunk any group makes: files below it are one chunk
    /// everywhere and are read whole.
    pub(crate) min_chunk: usize,
    handle: Option<tokio::runtime::Handle>,
    pub(crate) excludes: Excludes,
    pub(crate) exclude_caches: bool,
    pub(crate) one_file_system: bool,
    progress: Option<Arc<dyn BackupProgress>>,
    pub(crate) counters: Counters,
    pub(crate) warnings: Mutex<Vec<String>>,
    /// Set when every target has failed (or the progress scan must stop):
    /// the walk and the workers stop.
    pub(crate) cancelled: AtomicBool,
    pub(crate) names: Names,
    /// Devices of the backup roots: with `one_file_system`, directories on
    /// any other device are stored empty.
    pub(crate) root_devs: std::collections::HashSet<u64>,
    /// (device, inode) of paths left out wherever the walk meets them
    /// (see [`BackupOptions::exclude_paths`](super::BackupOptions::exclude_paths)).
    pub(crate) excluded_ids: std::collections::HashSet<(u64, u64)>,
    /// See [`BackupOptions::live`](super::BackupOptions::live).
    pub(crate) live_source: bool,
    /// See [`BackupOptions::paged`](super::BackupOptions::paged).
    pub(crate) paged: Option<super::PagedFiles>,
    /// Reader threads of a tree backup (the cores unless set).
    pub(crate) readers: usize,
    /// Workers storing the chunks of one reader (a stream); 1 stores them
    /// on the reading thread (files: the reader pool is the parallelism).
    pub(crate) chunk_workers: usize,
}

impl Ctx {
    /// The context for the prepared targets, plus what each target's record
    /// needs at the end; `set` fills in the source's options.
    pub(crate) fn new(
        prepared: Vec<Prepared>,
        progress: Arc<dyn BackupProgress>,
        set: impl FnOnce(&mut Ctx),
    ) -> (Ctx, Vec<TargetMeta>) {
        let mut ctx = Ctx {
            handle: Some(tokio::runtime::Handle::current()),
            progress: Some(progress),
            chunk_workers: 1,
            ..Default::default()
        };
        let mut params = Vec::new();
        let mut meta = Vec::new();
        for p in prepared {
            let chunker_params = p.session.repository().config().chunker;
            let group = match params.iter().position(|q| *q == chunker_params) {
                Some(g) => g,
                None => {
                    params.push(chunker_params);
                    ctx.groups.push(Vec::new());
                    params.len() - 1
                }
            };
            ctx.groups[group].push(ctx.targets.len());
            ctx.targets.push(Target {
                chunker: Chunker::new(chunker_params),
                full: p.mode == BackupMode::Full,
                reuse_before: p.parent.as_ref().map(|parent| Time {
                    secs: parent.record.time.as_second() - LIVE_REUSE_MARGIN_SECS,
                    nanos: 0,
                }),
                has_parent: p.parent.is_some(),
                session: p.session,
                files: FileCounters::default(),
                root_tree: Mutex::new(None),
                failure: Mutex::new(None),
                dead: AtomicBool::new(false),
            });
            meta.push(TargetMeta {
                index: p.index,
                parent: p.parent,
                mode: p.mode,
            });
        }
        ctx.min_chunk = ctx
            .targets
            .iter()
            .map(|t| t.chunker.min_size())
            .min()
            .unwrap_or(0);
        set(&mut ctx);
        if !ctx.live_source {
            for t in &mut ctx.targets {
                t.reuse_before = None;
            }
        }
        (ctx, meta)
    }

    pub(crate) fn progress(&self) -> &dyn BackupProgress {
        self.progress.as_deref().expect("set by Ctx::new")
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.handle.as_ref().expect("set by Ctx::new")
    }

    pub(crate) fn warn(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        self.progress().warning(path, &message);
        self.warnings
            .lock()
            .unwrap()
            .push(format!("{}: {message}", path.display()));
    }

    /// Drops target `t` from the backup with its error; stops everything
    /// when no target is left.
    pub(crate) fn fail(&self, t: usize, e: Error) {
        let target = &self.targets[t];
        {
            let mut f = target.failure.lock().unwrap();
            // Keep the first real cause: "upload task stopped" errors from
            // other threads only echo it.
            let echo = |e: &Error| matches!(e, Error::Repo(lifeboat_repo::Error::Internal(_)));
            if f.as_ref().is_none_or(|old| echo(old) && !echo(&e)) {
                *f = Some(e);
            }
        }
        target.dead.store(true, Ordering::SeqCst);
        if self.targets.iter().all(|t| t.dead.load(Ordering::SeqCst)) {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn live(&self, t: usize) -> bool {
        !self.targets[t].dead.load(Ordering::Relaxed)
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// One copy of `node` per target, each adjusted by `set`.
    pub(crate) fn per_target(
        &self,
        node: Node,
        mut set: impl FnMut(usize, &mut Node),
    ) -> Vec<Node> {
        let n = self.targets.len();
        let mut out = Vec::with_capacity(n);
        for t in 0..n - 1 {
            let mut copy = node.clone();
            set(t, &mut copy);
            out.push(copy);
        }
        let mut last = node;
        set(n - 1, &mut last);
        out.push(last);
        out
    }

    /// A file or directory that vanished while a live source was read: left
    /// out without a warning (the database removed it; its log says so).
    pub(crate) fn vanished(&self, e: &std::io::Error) -> bool {
        self.live_source && e.kind() == std::io::ErrorKind::NotFound
    }
}
