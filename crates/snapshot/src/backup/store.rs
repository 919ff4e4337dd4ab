//! Storing content: one read of a source, chunks in every target.
//!
//! [`store_content`] reads a reader to its end once and stores its chunks
//! in every target that needs them. Targets with equal chunker parameters
//! (a group) share one chunking; when several groups need the bytes, they
//! are read once and fanned out ("tee") to one chunker thread per group.
//! Within a group, chunks are stored either on the chunking thread (files:
//! the reader pool already runs one file per core) or, for a stream and a
//! large paged file, by a pool of chunk workers ([`Ctx::chunk_workers`],
//! [`Ctx::readers`]) with the ids put back in stream order. A file is cut
//! by content, or in page-aligned blocks when the walker says it is paged
//! ([`Cut`]). A target whose repository fails is dropped
//! ([`Ctx::fail`]); the others go on. This module does not open files or
//! decide what to read.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lifeboat_repo::{BlobType, Cut, Id};

use super::ctx::Ctx;
use crate::Error;

/// Block size of the fan-out to chunker groups.
const TEE_BLOCK: usize = 1 << 20;

/// Why content was not stored.
pub(crate) enum ReadFail {
    /// Reading the source failed.
    Io(std::io::Error),
    /// Every target that needed the content has failed (or the backup was
    /// cancelled).
    Stopped,
}

/// Per target (by index), the chunk list stored there.
pub(crate) type GroupContent = Vec<(usize, Vec<Id>)>;

/// Reads `reader` to its end once and stores its chunks in every target
/// marked in `need`, cut as `cut` says, with `workers` threads storing
/// them (1: on this thread). Returns each target's chunk list (empty for
/// targets not needed or failed) and the number of bytes read.
pub(crate) fn store_content(
    ctx: &Ctx,
    reader: &mut (dyn Read + Send),
    need: &[bool],
    cut: Cut,
    workers: usize,
) -> Result<(Vec<Vec<Id>>, u64), ReadFail> {
    let groups: Vec<usize> = (0..ctx.groups.len())
        .filter(|g| ctx.groups[*g].iter().any(|t| need[*t]))
        .collect();
    let (stored, size) = match groups.as_slice() {
        [] => return Err(ReadFail::Stopped),
        [g] => chunk_group(ctx, *g, reader, need, cut, workers, true)?,
        _ => tee(ctx, &groups, reader, need, cut, workers)?,
    };
    let mut contents = vec![Vec::new(); ctx.targets.len()];
    for (t, c) in stored {
        contents[t] = c;
    }
    Ok((contents, size))
}

/// Chunks `reader` with group `g`'s chunker and stores each chunk in the
/// group's targets that need it.
fn chunk_group(
    ctx: &Ctx,
    g: usize,
    reader: impl Read,
    need: &[bool],
    cut: Cut,
    workers: usize,
    count_progress: bool,
) -> Result<(GroupContent, u64), ReadFail> {
    let members: Vec<usize> = ctx.groups[g].iter().copied().filter(|t| need[*t]).collect();
    if workers > 1 {
        return chunk_group_parallel(ctx, &members, reader, cut, workers, count_progress);
    }
    let mut stored: GroupContent = members.iter().map(|t| (*t, Vec::new())).collect();
    let mut size = 0u64;
    let buffer = CHUNK_BUFFER.take();
    let mut chunks = ctx.targets[members[0]].chunker.chunks(reader, cut, buffer);
    let result = loop {
        if ctx.cancelled() {
            break Err(ReadFail::Stopped);
        }
        let chunk = match chunks.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break Ok((stored, size)),
            Err(e) => break Err(ReadFail::Io(e)),
        };
        size += chunk.len() as u64;
        if !store_chunk(ctx, &mut stored, chunk) {
            break Err(ReadFail::Stopped);
        }
        if count_progress {
            ctx.progress().processed(0, chunk.len() as u64);
        }
    };
    CHUNK_BUFFER.set(chunks.into_buffer());
    result
}

thread_local! {
    /// The buffer a reader thread cuts files into chunks through, kept
    /// between its files ([`lifeboat_repo::Chunks`]): the longest chunk
    /// and 1 MiB (9 MiB with the default sizes) at most, per reader
    /// thread, of which only the pages its largest file so far reached
    /// are touched. A fresh buffer per file costs page faults on every
    /// file of 1 MiB and more, whose buffer the allocator takes from the
    /// system and gives back each time (main.rs, `oversize_threshold`).
    static CHUNK_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`chunk_group`] with the chunks stored by `workers` threads: this
/// thread chunks, the workers hash, compress and encrypt (the costly
/// stage: one thread kept a base backup stream at about 100 MiB/s; for a
/// large paged file most blocks are unchanged, and hashing them is the
/// stage). Each worker returns its chunks' ids by chunk number, and
/// they are put back in stream order at the end; the bounded queue (two
/// chunks per worker) keeps memory flat.
fn chunk_group_parallel(
    ctx: &Ctx,
    members: &[usize],
    reader: impl Read,
    cut: Cut,
    workers: usize,
    count_progress: bool,
) -> Result<(GroupContent, u64), ReadFail> {
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Vec<u8>)>(workers * 2);
    // Set by a worker when none of the group's targets is left alive.
    let stopped = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (rx, stopped) = (rx.clone(), &stopped);
                scope.spawn(move || {
                    // (chunk number, per member target the id stored there)
                    let mut done: Vec<(usize, GroupContent)> = Vec::new();
                    for (n, chunk) in rx.iter() {
                        if stopped.load(Ordering::Relaxed) {
                            continue;
                        }
                        let mut stored: GroupContent =
                            members.iter().map(|t| (*t, Vec::new())).collect();
                        if !store_chunk(ctx, &mut stored, &chunk) {
                            stopped.store(true, Ordering::Relaxed);
                            continue;
                        }
                        if count_progress {
                            ctx.progress().processed(0, chunk.len() as u64);
                        }
                        done.push((n, stored));
                    }
                    done
                })
            })
            .collect();
        drop(rx);
        let mut size = 0u64;
        let mut count = 0usize;
        let mut read_error = None;
        for chunk in ctx.targets[members[0]].chunker.cut(reader, cut) {
            if ctx.cancelled() || stopped.load(Ordering::Relaxed) {
                break;
            }
            match chunk {
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    if tx.send((count, chunk)).is_err() {
                        break;
                    }
                    count += 1;
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        // Per member, its ids by chunk number.
        let mut ids: Vec<Vec<Option<Id>>> = members.iter().map(|_| vec![None; count]).collect();
        for h in handles {
            let done = h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (n, stored) in done {
                for (t, id) in stored {
                    if let (Some(m), Some(id)) =
                        (members.iter().position(|x| *x == t), id.into_iter().next())
                    {
                        ids[m][n] = Some(id);
                    }
                }
            }
        }
        if let Some(e) = read_error {
            return Err(ReadFail::Io(e));
        }
        if ctx.cancelled() || stopped.load(Ordering::Relaxed) {
            return Err(ReadFail::Stopped);
        }
        let mut stored = GroupContent::new();
        for (m, t) in members.iter().enumerate() {
            let content: Option<Vec<Id>> = std::mem::take(&mut ids[m]).into_iter().collect();
            match content {
                Some(content) if ctx.live(*t) => stored.push((*t, content)),
                // A target that failed on the way: its error is recorded.
                _ if !ctx.live(*t) => stored.push((*t, Vec::new())),
                _ => {
                    ctx.fail(*t, Error::Internal("a chunk was not stored".into()));
                    stored.push((*t, Vec::new()));
                }
            }
        }
        Ok((stored, size))
    })
}

/// Stores one chunk in each live target of `stored`; false when none is
/// left alive.
pub(crate) fn store_chunk(ctx: &Ctx, stored: &mut GroupContent, chunk: &[u8]) -> bool {
    let mut any = false;
    for (t, content) in stored.iter_mut() {
        if !ctx.live(*t) {
            continue;
        }
        match ctx.targets[*t]
            .session
            .add_blob_blocking(BlobType::Data, chunk)
        {
            Ok(added) => {
                if added.new {
                    ctx.targets[*t]
                        .files
                        .new_blobs
                        .fetch_add(1, Ordering::Relaxed);
                }
                content.push(added.id);
                any = true;
            }
            Err(e) => ctx.fail(*t, e.into()),
        }
    }
    any
}

/// Reads `reader` once and feeds every block to one chunker thread per
/// group (the groups chunk differently, so they cannot share chunks).
fn tee(
    ctx: &Ctx,
    groups: &[usize],
    reader: &mut (dyn Read + Send),
    need: &[bool],
    cut: Cut,
    chunk_workers: usize,
) -> Result<(GroupContent, u64), ReadFail> {
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for (k, g) in groups.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded::<std::io::Result<Arc<[u8]>>>(4);
            senders.push(tx);
            let g = *g;
            workers.push(scope.spawn(move || {
                chunk_group(ctx, g, TeeReader::new(rx), need, cut, chunk_workers, k == 0)
            }));
        }
        let mut buf = vec![0u8; TEE_BLOCK];
        let mut read_error = None;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let block: Arc<[u8]> = Arc::from(&buf[..n]);
                    // A group whose targets all failed stops receiving.
                    senders.retain(|tx| tx.send(Ok(block.clone())).is_ok());
                    if senders.is_empty() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    for tx in &senders {
                        let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    }
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(senders);
        let mut stored = Vec::new();
        let mut size = None;
        for w in workers {
            match w.join() {
                Ok(Ok((content, n))) => {
                    stored.extend(content);
                    size = Some(n);
                }
                Ok(Err(ReadFail::Stopped)) => {}
                Ok(Err(ReadFail::Io(e))) => read_error = read_error.or(Some(e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        if let Some(e) = read_error {
            return Err(ReadFail::Io(e));
        }
        size.map(|n| (stored, n)).ok_or(ReadFail::Stopped)
    })
}

/// The reading end of the fan-out: blocks from a channel as a `Read`.
struct TeeReader {
    rx: crossbeam_channel::Receiver<std::io::Result<Arc<[u8]>>>,
    block: Arc<[u8]>,
    pos: usize,
}

impl TeeReader {
    fn new(rx: crossbeam_channel::Receiver<std::io::Result<Arc<[u8]>>>) -> Self {
        TeeReader {
            rx,
            block: Arc::from(&[][..]),
            pos: 0,
        }
    }
}

impl Read for TeeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.block.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.block = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender is gone: end of input.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.block.len() - self.pos);
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
