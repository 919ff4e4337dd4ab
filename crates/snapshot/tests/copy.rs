//! `copy` between two in-memory repositories with different keys (and
//! different chunker parameters): real directories are backed up into the
//! source, copied, and restored from the target byte for byte.

use std::path::Path;
use std::sync::Arc;

use common::assert_restores;
use lifeboat_repo::{
    COPIED_FROM, CopyBatch, CopyOptions, CopyStats, InitOptions, Repository, Snapshot, copied_from,
    copy,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_storage::{DynStorage, ErrorKind, Kind, MemoryStorage};
use lifeboat_testkit::FillingUp;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{assert_check_ok, init_options, small_chunks};

mod common;

/// Small chunks so a few MiB of test data make many blobs.
fn options(seed: u64) -> InitOptions {
    InitOptions {
        chunker: Some(small_chunks(seed)),
        ..init_options()
    }
}

async fn new_repo(storage: DynStorage, password: &[u8], seed: u64) -> Arc<Repository> {
    Arc::new(
        Repository::init(storage, password, options(seed))
            .await
            .unwrap(),
    )
}

fn make_source(dir: &Path) {
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello copy\n").unwrap();
    std::fs::write(dir.join("a/big.bin"), pseudo_random(3_000_000, 1)).unwrap();
    std::fs::write(dir.join("a/b/other.bin"), pseudo_random(1_500_000, 2)).unwrap();
    // The same content twice: one blob list, deduplicated in both repos.
    std::fs::write(dir.join("a/b/dup.bin"), pseudo_random(1_500_000, 2)).unwrap();
    std::fs::write(dir.join("zero"), b"").unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("link")).unwrap();
}

async fn backup_dir(repo: &Arc<Repository>, dir: &Path) -> Snapshot {
    let opts = BackupOptions {
        paths: vec![dir.to_path_buf()],
        tags: vec!["nightly".into()],
        host: Some("db1".into()),
        ..Default::default()
    };
    backup(repo.clone(), &opts, Arc::new(NoProgress))
        .await
        .unwrap()
        .snapshot
}

async fn copy_all(a: &Arc<Repository>, b: &Arc<Repository>) -> CopyStats {
    copy(a, b, &CopyOptions::default(), &()).await.unwrap()
}

/// Reopens a repository so nothing cached in the handle hides what storage holds.
async fn reopen(storage: DynStorage, password: &[u8]) -> Arc<Repository> {
    Arc::new(Repository::open(storage, password).await.unwrap())
}

#[tokio::test]
async fn copy_restores_byte_for_byte_and_rerun_copies_nothing() {
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    let a = new_repo(Arc::new(MemoryStorage::new()), b"pw-a", 11).await;
    let mem_b = MemoryStorage::new();
    let b = new_repo(Arc::new(mem_b.clone()), b"pw-b", 22).await;
    let snap = backup_dir(&a, src.path()).await;

    let stats = copy_all(&a, &b).await;
    assert_eq!(stats.snapshots_copied, 1);
    assert_eq!(stats.snapshots_skipped, 0);
    assert!(stats.blobs_added > 0 && stats.added_bytes > 0);

    let b = reopen(b.storage().clone(), b"pw-b").await;
    let copies = b.snapshots().await.unwrap();
    assert_eq!(copies.len(), 1);
    let c = &copies[0];
    // Everything describing the backup is kept; ids are the target's own.
    assert_eq!(c.record.time, snap.record.time);
    assert_eq!(c.record.host, "db1");
    assert_eq!(c.record.paths, snap.record.paths);
    assert_eq!(c.record.tags, vec!["nightly".to_string()]);
    assert_eq!(c.record.mode, snap.record.mode);
    assert_eq!(c.record.summary, snap.record.summary);
    assert_ne!(
        c.record.tree, snap.record.tree,
        "tree ids are keyed per repository"
    );
    assert_eq!(
        copied_from(&c.record),
        Some((a.config().repository_id, snap.id))
    );
    assert!(c.record.extra.contains_key(COPIED_FROM));
    assert_eq!(stats.copied[0].target, c.id.to_hex());
    assert_restores(&b, c, src.path()).await;
    assert_check_ok(&b).await;

    let before = mem_b.snapshot();
    let again = copy_all(&a, &b).await;
    assert_eq!(again.snapshots_copied, 0);
    assert_eq!(again.snapshots_skipped, 1);
    assert_eq!(again.blobs_read, 0);
    assert_eq!(
        mem_b.snapshot().keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "a rerun writes nothing"
    );

    // Naming the snapshot explicitly is skipped as well.
    let named = copy(
        &a,
        &b,
        &CopyOptions {
            snapshots: vec![snap.id.to_hex()[..8].to_string()],
            ..Default::default()
        },
        &(),
    )
    .await
    .unwrap();
    assert_eq!((named.snapshots_copied, named.snapshots_skipped), (0, 1));
}

#[tokio::test]
async fn copy_of_a_new_snapshot_copies_only_it_and_its_new_blobs() {
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    let a = new_repo(Arc::new(MemoryStorage::new()), b"pw-a", 11).await;
    let b = new_repo(Arc::new(MemoryStorage::new()), b"pw-b", 22).await;
    let first = backup_dir(&a, src.path()).await;
    let full = copy_all(&a, &b).await;

    std::fs::write(src.path().join("hello.txt"), b"changed\n").unwrap();
    std::fs::write(src.path().join("a/b/new.txt"), b"new file\n").unwrap();
    let second = backup_dir(&a, src.path()).await;
    assert_eq!(second.record.parent, Some(first.id));

    // A fresh handle: nothing learnt in the first run is remembered.
    let b = reopen(b.storage().clone(), b"pw-b").await;
    let stats = copy_all(&a, &b).await;
    assert_eq!((stats.snapshots_copied, stats.snapshots_skipped), (1, 1));
    // Only the two new small files are read from the source: unchanged
    // directories and files are mapped through the first copy.
    assert_eq!(stats.blobs_read, 2, "{stats:?}");
    // Two data blobs, plus the trees on the changed paths (root .. src dir,
    // and a/b for the new file, a for its new subtree id).
    assert!(stats.blobs_added <= 2 + 12, "{stats:?}");
    assert!(
        stats.added_raw_bytes * 20 < full.added_raw_bytes,
        "{stats:?}"
    );

    let copies = b.snapshots().await.unwrap();
    assert_eq!(copies.len(), 2);
    let (c1, c2) = (&copies[0], &copies[1]);
    assert_eq!(copied_from(&c2.record).unwrap().1, second.id);
    assert_eq!(
        c2.record.parent,
        Some(c1.id),
        "parent maps to the target's copy"
    );
    assert_restores(&b, c2, src.path()).await;
    assert_check_ok(&b).await;
}

#[tokio::test]
async fn copying_back_does_not_duplicate() {
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    let a = new_repo(Arc::new(MemoryStorage::new()), b"pw-a", 11).await;
    let b = new_repo(Arc::new(MemoryStorage::new()), b"pw-b", 22).await;
    backup_dir(&a, src.path()).await;
    copy_all(&a, &b).await;
    let back = copy_all(&b, &a).await;
    assert_eq!((back.snapshots_copied, back.snapshots_skipped), (0, 1));
    assert_eq!(a.snapshots().await.unwrap().len(), 1);
}

#[tokio::test]
async fn interrupted_copy_resumes_and_everything_restores() {
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    let a = new_repo(Arc::new(MemoryStorage::new()), b"pw-a", 11).await;
    let first = backup_dir(&a, src.path()).await;
    std::fs::write(src.path().join("a/more.bin"), pseudo_random(2_000_000, 3)).unwrap();
    let second = backup_dir(&a, src.path()).await;

    // Reference: how much an uninterrupted copy uploads, and how many packs
    // the first snapshot takes.
    let mem_clean = MemoryStorage::new();
    let clean = new_repo(Arc::new(mem_clean.clone()), b"pw-b", 22).await;
    let only_first = CopyOptions {
        snapshots: vec![first.id.to_hex()],
        ..Default::default()
    };
    let clean_first = copy(&a, &clean, &only_first, &()).await.unwrap();
    let first_packs = mem_clean
        .snapshot()
        .keys()
        .filter(|k| k.kind() == Kind::Packs)
        .count();
    let clean_rest = copy_all(&a, &clean).await;
    let clean_added = clean_first.blobs_added + clean_rest.blobs_added;

    let mem_b = MemoryStorage::new();
    new_repo(Arc::new(mem_b.clone()), b"pw-b", 22).await;
    // The first snapshot completes; the second fails on its second pack.
    let failing: DynStorage = Arc::new(FillingUp::new(
        Arc::new(mem_b.clone()),
        Kind::Packs,
        first_packs as u64 + 1,
    ));
    let b = reopen(failing, b"pw-b").await;
    let err = copy(&a, &b, &CopyOptions::default(), &())
        .await
        .expect_err("a pack upload fails");
    assert_eq!(err.storage_kind(), Some(ErrorKind::StorageFull), "{err}");
    let packs_before = mem_b
        .snapshot()
        .keys()
        .filter(|k| k.kind() == Kind::Packs)
        .count();
    assert_eq!(packs_before, first_packs + 1);
    assert_eq!(b.snapshots().await.unwrap().len(), 1);

    let b = reopen(Arc::new(mem_b.clone()), b"pw-b").await;
    let resumed = copy_all(&a, &b).await;
    assert_eq!(
        (resumed.snapshots_copied, resumed.snapshots_skipped),
        (1, 1)
    );
    // The completed snapshot's blobs are not uploaded again.
    assert!(
        resumed.blobs_added < clean_added,
        "resumed {resumed:?} vs clean {clean_added}"
    );
    let copies = b.snapshots().await.unwrap();
    assert_eq!(copies.len(), 2);
    assert_eq!(copied_from(&copies[0].record).unwrap().1, first.id);
    assert_eq!(copied_from(&copies[1].record).unwrap().1, second.id);
    assert_restores(&b, &copies[1], src.path()).await;
    assert_check_ok(&b).await;
    let again = copy_all(&a, &b).await;
    assert_eq!((again.snapshots_copied, again.snapshots_skipped), (0, 2));
}

#[tokio::test]
async fn copied_chunker_params_chunk_alike() {
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    let a = new_repo(Arc::new(MemoryStorage::new()), b"pw-a", 11).await;
    let b = Arc::new(
        Repository::init(
            Arc::new(MemoryStorage::new()),
            b"pw-b",
            InitOptions {
                chunker: Some(a.config().chunker),
                ..options(0)
            },
        )
        .await
        .unwrap(),
    );
    let other = new_repo(Arc::new(MemoryStorage::new()), b"pw-c", 99).await;
    backup_dir(&a, src.path()).await;
    backup_dir(&b, src.path()).await;
    backup_dir(&other, src.path()).await;
    let sizes = |r: Arc<Repository>| async move {
        let index = r.index().await.unwrap();
        let mut v: Vec<u32> = index
            .blobs()
            .filter(|l| l.entry.blob_type == lifeboat_repo::BlobType::Data)
            .map(|l| l.entry.raw_length)
            .collect();
        v.sort();
        v
    };
    let (sa, sb, so) = (sizes(a).await, sizes(b).await, sizes(other).await);
    assert!(sa.len() > 10);
    assert_eq!(sa, sb, "same chunker parameters, same boundaries");
    assert_ne!(sa, so, "a different seed cuts elsewhere");
}

/// A deeper, wider tree than `make_source`: nested directories, files of
/// one and many chunks, the same file and the same directory at several
/// paths (so a batch meets blobs and trees it or an earlier batch already
/// copied).
fn make_wide_source(dir: &Path) {
    for d in 0..4u64 {
        for e in 0..3u64 {
            let sub = dir.join(format!("d{d}/e{e}/f"));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(
                dir.join(format!("d{d}/e{e}/small.txt")),
                format!("{d}/{e}\n"),
            )
            .unwrap();
            std::fs::write(sub.join("chunks.bin"), pseudo_random(300_000, 10 * d + e)).unwrap();
            // The same bytes in every directory.
            std::fs::write(sub.join("same.bin"), pseudo_random(200_000, 99)).unwrap();
        }
        // The same directory content at two paths.
        for twin in ["t1", "t2"] {
            let t = dir.join(format!("d{d}/{twin}"));
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join("twin.bin"), pseudo_random(100_000, 77)).unwrap();
        }
    }
    std::fs::write(dir.join("top.bin"), pseudo_random(500_000, 5)).unwrap();
}

#[tokio::test]
async fn copy_in_tiny_batches_loses_and_duplicates_nothing() {
    let src = tempfile::tempdir().unwrap();
    make_wide_source(src.path());
    let a = new_repo(Arc::new(MemoryStorage::new()), b"pw-a", 11).await;
    let first = backup_dir(&a, src.path()).await;

    // Reference: one batch takes the whole snapshot.
    let whole = new_repo(Arc::new(MemoryStorage::new()), b"pw-b", 22).await;
    let one = copy_all(&a, &whole).await;

    // Batches of a few blobs and tree entries: dozens of batches, trees
    // waiting for their batch, and batches ending inside a directory.
    let tiny = CopyOptions {
        batch: CopyBatch { blobs: 3, nodes: 2 },
        ..Default::default()
    };
    let b = new_repo(Arc::new(MemoryStorage::new()), b"pw-b", 22).await;
    let many = copy(&a, &b, &tiny, &()).await.unwrap();
    assert_eq!(many.snapshots_copied, 1);
    assert!(one.blobs_read > 20, "{one:?}");
    // Every blob is read at least once (a blob met again in a later batch
    // is read again, never stored twice).
    assert!(many.blobs_read >= one.blobs_read, "{many:?} vs {one:?}");
    // The same blobs and trees end up in the target, each stored once.
    assert_eq!(many.blobs_added, one.blobs_added, "{many:?} vs {one:?}");
    assert_eq!(many.added_raw_bytes, one.added_raw_bytes);
    let b = reopen(b.storage().clone(), b"pw-b").await;
    let copies = b.snapshots().await.unwrap();
    assert_restores(&b, &copies[0], src.path()).await;
    assert_check_ok(&b).await;

    // An incremental copy in tiny batches: changed files in a few
    // directories, a new directory, the rest mapped through the first copy.
    std::fs::write(src.path().join("d1/e2/small.txt"), b"changed\n").unwrap();
    std::fs::create_dir_all(src.path().join("d3/new")).unwrap();
    std::fs::write(
        src.path().join("d3/new/n.bin"),
        pseudo_random(250_000, 1234),
    )
    .unwrap();
    let second = backup_dir(&a, src.path()).await;
    assert_eq!(second.record.parent, Some(first.id));
    let b = reopen(b.storage().clone(), b"pw-b").await;
    let inc = copy(&a, &b, &tiny, &()).await.unwrap();
    assert_eq!((inc.snapshots_copied, inc.snapshots_skipped), (1, 1));
    // Only the changed and new files' blobs are read.
    assert!(
        inc.blobs_read >= 2 && inc.blobs_read * 4 < many.blobs_read,
        "{inc:?}"
    );
    let copies = b.snapshots().await.unwrap();
    assert_eq!(copies.len(), 2);
    assert_restores(&b, &copies[1], src.path()).await;
    assert_check_ok(&b).await;
}

/// A blob the source stored compressed is sealed again as it is, not
/// compressed again at the target's level (a third of a copy's CPU): with
/// the source at zstd level 19 and the target at 1, every data blob keeps
/// its stored length, and the target restores byte for byte and checks.
#[tokio::test]
async fn copy_keeps_the_sources_compressed_bytes() {
    let src = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..40_000u32 {
        text.push_str(&format!(
            "line {i}: the quick brown fox {} jumps over {} lazy dogs\n",
            i % 97,
            i * 7 % 13
        ));
    }
    std::fs::write(src.path().join("text.txt"), &text).unwrap();
    std::fs::write(src.path().join("noise.bin"), pseudo_random(300_000, 9)).unwrap();
    let at_level = |seed, level| InitOptions {
        compression_level: level,
        ..options(seed)
    };
    let a = Arc::new(
        Repository::init(Arc::new(MemoryStorage::new()), b"pw-a", at_level(11, 19))
            .await
            .unwrap(),
    );
    let mem_b = MemoryStorage::new();
    let b = Arc::new(
        Repository::init(Arc::new(mem_b.clone()), b"pw-b", at_level(22, 1))
            .await
            .unwrap(),
    );
    backup_dir(&a, src.path()).await;
    copy_all(&a, &b).await;
    let b = reopen(Arc::new(mem_b), b"pw-b").await;

    // (plaintext length, stored length, compressed) of every data blob.
    let stored = |repo: Arc<Repository>| async move {
        let index = repo.index().await.unwrap();
        let mut out: Vec<(u32, u32, bool)> = index
            .blobs()
            .filter(|l| l.entry.blob_type == lifeboat_repo::BlobType::Data)
            .map(|l| (l.entry.raw_length, l.entry.length, l.entry.compressed))
            .collect();
        out.sort();
        out
    };
    let (in_a, in_b) = (stored(a.clone()).await, stored(b.clone()).await);
    assert!(
        in_a.iter().filter(|(_, _, c)| *c).count() >= 3,
        "the text should make several compressed blobs: {in_a:?}"
    );
    assert_eq!(in_a, in_b, "the target compressed blobs again");
    let snaps = b.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_restores(&b, &snaps[0], src.path()).await;
    assert_check_ok(&b).await;
}
