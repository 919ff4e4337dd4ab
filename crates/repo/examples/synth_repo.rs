//! Synthetic repository generator (issue 17, "cost at scale").
//!
//! Writes a real repository (default key derivation, real packs of
//! encrypted blobs, index objects, trees and snapshot records, all through
//! the library's own write path) of a chosen size into a local directory,
//! so that the commands can be timed as the repository grows:
//!
//! ```text
//! LIFEBOAT_PASSWORD=scale cargo run --release -p lifeboat-repo --example synth_repo -- \
//!     DIR BLOBS SNAPSHOTS [GENERATIONS] [CHUNKS_PER_FILE] [BLOB_SIZE]
//! ```
//!
//! The data: `BLOBS` data blobs of `BLOB_SIZE` bytes (default 64, distinct
//! and incompressible), in files of `CHUNKS_PER_FILE` chunks (default 4),
//! a thousand files to a directory. They are written in `GENERATIONS`
//! (default 10) equal batches, one write session each; generation `g`'s
//! root holds its own directory `gN` and, unchanged, the previous
//! generation's, so consecutive generations share half their data and
//! forgetting the snapshots of the oldest generations makes whole packs
//! unused. `SNAPSHOTS` snapshot records (one an hour, oldest first) are
//! spread evenly over the generations' roots. Blobs are small so that a
//! 50M-blob index fits on one disk; what the commands' cost depends on is
//! the number of blobs, trees and snapshots, which are real.
//!
//! Prints one JSON line: what was written and how long it took.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use lifeboat_repo::{
    BackupMode, BlobType, InitOptions, Node, NodeKind, Repository, SnapshotRecord, Time, Tree,
    WriteOptions, WriteSession,
};
use lifeboat_storage::{DynStorage, LocalStorage};

const FILES_PER_DIR: u64 = 1000;

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i)
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// `size` incompressible bytes, distinct for each `n` (the counter leads).
fn content(n: u64, size: usize) -> Vec<u8> {
    let mut out = n.to_le_bytes().to_vec();
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size.max(8));
    out
}

fn node(name: String, kind: NodeKind, size: u64) -> Node {
    let mode = if kind == NodeKind::Dir { 0o755 } else { 0o644 };
    Node {
        name: name.into_bytes(),
        kind,
        mode,
        uid: 1000,
        gid: 1000,
        user: None,
        group: None,
        mtime: Time {
            secs: 1_700_000_000,
            nanos: 0,
        },
        ctime: Time {
            secs: 1_700_000_000,
            nanos: 0,
        },
        dev: 1,
        inode: 0,
        links: 1,
        size,
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
    }
}

/// Writes one generation's files; returns the id of its directory tree.
fn write_generation(
    session: &WriteSession,
    first_blob: u64,
    blobs: u64,
    chunks: u64,
    blob_size: usize,
) -> lifeboat_repo::Id {
    let add = |t: BlobType, data: &[u8]| session.add_blob_blocking(t, data).expect("add blob").id;
    let mut dirs: Vec<Node> = Vec::new();
    let mut files: Vec<Node> = Vec::new();
    let flush_dir = |files: &mut Vec<Node>, dirs: &mut Vec<Node>| {
        if files.is_empty() {
            return;
        }
        let tree = Tree {
            nodes: std::mem::take(files),
        };
        let mut d = node(format!("d{:07}", dirs.len()), NodeKind::Dir, 0);
        d.subtree = Some(add(BlobType::Tree, &tree.encode()));
        dirs.push(d);
    };
    let mut n = first_blob;
    let end = first_blob + blobs;
    while n < end {
        let count = chunks.min(end - n);
        let mut f = node(
            format!("f{:04}", files.len()),
            NodeKind::File,
            count * blob_size as u64,
        );
        f.inode = n;
        for i in n..n + count {
            f.content.push(add(BlobType::Data, &content(i, blob_size)));
        }
        n += count;
        files.push(f);
        if files.len() as u64 == FILES_PER_DIR {
            flush_dir(&mut files, &mut dirs);
        }
    }
    flush_dir(&mut files, &mut dirs);
    let tree = Tree { nodes: dirs };
    add(BlobType::Tree, &tree.encode())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().expect(
        "usage: synth_repo DIR BLOBS SNAPSHOTS [GENERATIONS] [CHUNKS_PER_FILE] [BLOB_SIZE]",
    );
    let blobs = arg(&args, 1, 1_000_000);
    let snapshots = arg(&args, 2, 100).max(1);
    let generations = arg(&args, 3, 10).clamp(1, blobs.max(1));
    let chunks = arg(&args, 4, 4).max(1);
    let blob_size = arg(&args, 5, 64).max(8) as usize;
    let password = std::env::var("LIFEBOAT_PASSWORD").unwrap_or_else(|_| "scale".into());
    let started = Instant::now();

    std::fs::create_dir_all(dir).expect("create the repository directory");
    let storage: DynStorage = Arc::new(LocalStorage::new(dir));
    let repo = Arc::new(
        Repository::init(storage, password.as_bytes(), InitOptions::default())
            .await
            .expect("init"),
    );

    // Generation g: its own directory, and the previous generation's.
    let mut roots = Vec::new();
    let mut previous: Option<Node> = None;
    for g in 0..generations {
        let first = blobs * g / generations;
        let count = blobs * (g + 1) / generations - first;
        let session = Arc::new(
            WriteSession::start(repo.clone(), WriteOptions::default())
                .await
                .expect("write session"),
        );
        let s = session.clone();
        let gen_tree = tokio::task::spawn_blocking(move || {
            write_generation(&s, first, count, chunks, blob_size)
        })
        .await
        .expect("generation");
        let mut own = node(format!("g{g:04}"), NodeKind::Dir, 0);
        own.subtree = Some(gen_tree);
        let root = Tree {
            nodes: previous.take().into_iter().chain([own.clone()]).collect(),
        };
        let root_id = session
            .add_blob(BlobType::Tree, &root.encode())
            .await
            .expect("root tree")
            .id;
        previous = Some(own);
        roots.push(root_id);
        Arc::try_unwrap(session)
            .unwrap_or_else(|_| panic!("the write session is still shared"))
            .flush()
            .await
            .expect("flush");
        eprintln!(
            "synth_repo: generation {} of {generations} written ({} s)",
            g + 1,
            started.elapsed().as_secs()
        );
    }

    let now = jiff::Timestamp::now();
    let records: Vec<SnapshotRecord> = (0..snapshots)
        .map(|i| SnapshotRecord {
            time: now - jiff::SignedDuration::from_hours((snapshots - i) as i64),
            host: "synth".into(),
            user: "scale".into(),
            paths: vec!["/synth".into()],
            tags: vec![],
            tree: roots[(i * generations / snapshots) as usize],
            mode: BackupMode::Full,
            parent: None,
            partial: false,
            summary: Default::default(),
            program_version: "synth_repo".into(),
            extra: Default::default(),
            creator: None,
        })
        .collect();
    futures::stream::iter(records)
        .map(|r| {
            let repo = repo.clone();
            async move { repo.write_snapshot(&r).await.expect("snapshot") }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    println!(
        "{{\"blobs\":{blobs},\"snapshots\":{snapshots},\"generations\":{generations},\"chunks_per_file\":{chunks},\"blob_size\":{blob_size},\"files\":{},\"elapsed_ms\":{}}}",
        blobs.div_ceil(chunks),
        started.elapsed().as_millis()
    );
}
