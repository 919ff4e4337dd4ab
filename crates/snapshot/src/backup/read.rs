//! Reading one file from disk into every target that needs it.
//!
//! A reader-pool worker takes a [`FileJob`] from the walker, opens the
//! file once, reads it whole when it is smaller than every chunker's
//! minimum (one chunk everywhere) or hands it to the store otherwise —
//! never past the size it had when the read began — warns (and counts in
//! the snapshot's summary) when it changed while being read, and counts it as new, changed or
//! unchanged per target. The nodes it returns complete the file's slot in
//! its directory. It does not walk directories or write trees.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;

use lifeboat_repo::{Cut, Id, Node};

use super::ctx::Ctx;
use super::store::{GroupContent, ReadFail, store_chunk, store_content};
use super::walk::FileJob;

/// Paged files from this size on are hashed by several threads.
const PARALLEL_PAGED_BYTES: u64 = 64 << 20;

/// Reads one file once and stores it in every target that does not have it
/// unchanged; `None` if it could not be read.
pub(crate) fn read_file(ctx: &Ctx, job: FileJob) -> Option<Vec<Node>> {
    let FileJob {
        path,
        node,
        meta,
        mut reuse,
        had_parent,
        cut,
        ..
    } = job;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
        ctx.warn(&path, format!("{what}: {e}"));
        None
    };
    let need: Vec<bool> = (0..ctx.targets.len())
        .map(|t| reuse[t].is_none() && ctx.live(t))
        .collect();
    let stored = if !need.contains(&true) {
        Err(ReadFail::Stopped)
    } else {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if ctx.vanished(&e) => return None,
            Err(e) => return fail("cannot open", &e),
        };
        // Read at most the size seen before opening (as restic does): a
        // file appended to faster than it is read would otherwise never
        // end the backup.
        let mut limited = (&file).take(meta.len());
        let stored = if meta.len() < ctx.min_chunk as u64 {
            read_small(ctx, &mut limited, &meta, &need)
        } else {
            // A large paged file is mostly unchanged blocks, whose cost
            // is hashing: spread it over the cores, so one 1 GiB segment
            // does not hold the backup on one core.
            let workers = match cut {
                Cut::Blocks { .. } if meta.len() >= PARALLEL_PAGED_BYTES => ctx.readers,
                _ => 1,
            };
            store_content(ctx, &mut limited, &need, cut, workers)
        };
        // One byte past what was read tells a file that grew (or a file
        // whose size says nothing, as in /proc) and surfaces a read error
        // of a file that claimed to be empty.
        let more = match &stored {
            Ok((_, size)) => match file.read_at(&mut [0u8; 1], *size) {
                Ok(n) => n > 0,
                Err(e) => return fail("cannot read", &e),
            },
            Err(_) => false,
        };
        if let Ok((_, size)) = &stored
            && !ctx.live_source
            && let Ok(after) = file.metadata()
            && (more
                || after.len() != meta.len()
                || after.mtime() != meta.mtime()
                || after.mtime_nsec() != meta.mtime_nsec()
                || *size != meta.len())
        {
            ctx.counters
                .changed_during_read
                .fetch_add(1, Ordering::Relaxed);
            let what = if more || after.len() > meta.len() {
                format!(
                    "grew while being read ({} to {} bytes); the snapshot holds its first {} bytes, as they were read",
                    meta.len(),
                    after.len(),
                    size
                )
            } else {
                "changed while being read; the snapshot holds what was read".to_string()
            };
            ctx.warn(&path, what);
        }
        stored
    };
    let (mut contents, size) = match stored {
        Ok(s) => {
            ctx.counters.read_bytes.fetch_add(s.1, Ordering::Relaxed);
            s
        }
        Err(ReadFail::Io(e)) => return fail("cannot read", &e),
        // The targets that needed the content failed; those that have it
        // unchanged still record the file.
        Err(ReadFail::Stopped) if !ctx.cancelled() => (vec![Vec::new(); need.len()], meta.len()),
        Err(ReadFail::Stopped) => return None,
    };
    for (t, target) in ctx.targets.iter().enumerate() {
        let files = &target.files;
        if reuse[t].is_some() {
            files.unchanged.fetch_add(1, Ordering::Relaxed);
        } else if !ctx.live(t) {
            // A failed target records nothing.
        } else if had_parent[t] {
            files.changed.fetch_add(1, Ordering::Relaxed);
        } else {
            files.new.fetch_add(1, Ordering::Relaxed);
        }
    }
    ctx.progress().processed(1, 0);
    Some(ctx.per_target(node, |t, n| match reuse[t].take() {
        Some(content) => n.content = content,
        None => {
            n.size = size;
            n.content = if size == 0 {
                Vec::new()
            } else {
                std::mem::take(&mut contents[t])
            };
        }
    }))
}

/// Reads a file smaller than every chunker's minimum whole and stores it as
/// one chunk in each target that needs it.
fn read_small(
    ctx: &Ctx,
    file: &mut impl Read,
    meta: &Metadata,
    need: &[bool],
) -> Result<(Vec<Vec<Id>>, u64), ReadFail> {
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut buf).map_err(ReadFail::Io)?;
    let mut stored: GroupContent = (0..need.len())
        .filter(|t| need[*t])
        .map(|t| (t, Vec::new()))
        .collect();
    if !buf.is_empty() && !store_chunk(ctx, &mut stored, &buf) {
        return Err(ReadFail::Stopped);
    }
    ctx.progress().processed(0, buf.len() as u64);
    let mut contents = vec![Vec::new(); need.len()];
    for (t, c) in stored {
        contents[t] = c;
    }
    Ok((contents, buf.len() as u64))
}
