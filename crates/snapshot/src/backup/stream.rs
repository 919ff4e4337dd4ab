//! The stream source: a byte stream (stdin, a database tool's output) into
//! a snapshot holding one file.
//!
//! The stream is read once, chunked on one thread and its chunks stored in
//! every repository by a pool of chunk workers (see `store`); the
//! snapshot's root tree holds one file node named by
//! [`StreamOptions::file_name`]. The record is built and committed by the
//! shared pipeline (`pending`), so a connector can hold the stream as a
//! [`PendingBackup`] until its tool has exited and reported. Reading a
//! stream snapshot back is [`crate::dump`]'s job.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use lifeboat_repo::{Cut, Id, Repository, Tree};

use super::ctx::Ctx;
use super::pending::{self, PendingBackup, Request};
use super::store::{ReadFail, store_content};
use super::tree::{generated_file_node, store_tree};
use super::{StreamOptions, hostname, worker_count};
use crate::progress::BackupProgress;
use crate::{Error, Result};

/// Stores the stream in every repository, up to the pending snapshots.
pub(crate) async fn pending_many<R: Read + Send + 'static>(
    repos: Vec<Arc<Repository>>,
    mut reader: R,
    options: &StreamOptions,
    progress: Arc<dyn BackupProgress>,
) -> Result<Vec<Result<PendingBackup>>> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    let name = options.file_name.trim_matches('/').to_string();
    if name.is_empty() || name.contains('/') {
        return Err(Error::BadInput(format!(
            "invalid stream file name {:?}: give a plain name such as db.sql",
            options.file_name
        )));
    }
    let request = Request {
        started,
        time,
        host: options.host.clone().unwrap_or_else(hostname),
        paths: vec![options.source.clone().unwrap_or_else(|| name.clone())],
        tags: options.tags.clone(),
        mode: options.mode,
        write: lifeboat_repo::WriteOptions {
            compression_level: options.compression_level,
            dry_run: options.dry_run,
        },
        parent_trees: false,
    };
    let workers = worker_count(options.threads);
    let set = |ctx: &mut Ctx| ctx.chunk_workers = workers;
    let mut results = pending::run(repos, request, progress, set, move |ctx, _| {
        let need = vec![true; ctx.targets.len()];
        let (contents, size) = match store_content(
            ctx,
            &mut reader,
            &need,
            Cut::ContentDefined,
            ctx.chunk_workers,
        ) {
            Ok(stored) => stored,
            Err(ReadFail::Io(e)) => return Err(Error::io("<stream>", e)),
            Err(ReadFail::Stopped) => (vec![Vec::new(); ctx.targets.len()], 0),
        };
        // The reader (a tool's stdout) is closed now, not when the
        // snapshot is committed: the tool must see its reader gone.
        drop(reader);
        let c = &ctx.counters;
        c.read_bytes.store(size, Ordering::Relaxed);
        c.total_bytes.store(size, Ordering::Relaxed);
        c.total_files.store(1, Ordering::Relaxed);
        Ok(stream_trees(ctx, &name, size, contents))
    })
    .await?;
    // An empty stream is almost always a producer that failed or sent
    // nothing (`pg_dump | lifeboat backup --stdin` cannot see pg_dump's
    // exit status): the record says so, for every listing to show.
    for p in results.iter_mut().flatten() {
        if p.record().summary.total_bytes == 0 {
            p.mark(EMPTY_STREAM);
        }
    }
    Ok(results)
}

/// The key in a snapshot record's `extra` that marks a stream backup whose
/// stream was empty (`"empty_stream": true`).
pub const EMPTY_STREAM: &str = "empty_stream";

/// Stores, in each live target, the one-file tree of a stream backup, and
/// counts the file as new, changed or unchanged there.
fn stream_trees(ctx: &Ctx, name: &str, size: u64, contents: Vec<Vec<Id>>) -> Vec<Option<Id>> {
    let mut roots = Vec::new();
    for (t, (target, content)) in ctx.targets.iter().zip(contents).enumerate() {
        if !ctx.live(t) {
            roots.push(None);
            continue;
        }
        let files = &target.files;
        if !target.has_parent {
            files.new.fetch_add(1, Ordering::Relaxed);
        } else if files.new_blobs.load(Ordering::Relaxed) > 0 {
            files.changed.fetch_add(1, Ordering::Relaxed);
        } else {
            files.unchanged.fetch_add(1, Ordering::Relaxed);
        }
        let node = generated_file_node(name, 0o600, size, content);
        roots.push(store_tree(ctx, t, Tree { nodes: vec![node] }, true));
    }
    roots
}
