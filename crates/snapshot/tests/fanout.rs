//! One read of the source, several repositories: `backup_many` and
//! `backup_stream_many`.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::{BackupMode, ChunkerParams, InitOptions, Repository};
use lifeboat_snapshot::backup::{BackupOptions, StreamOptions, backup_many, backup_stream_many};
use lifeboat_snapshot::dump::dump;
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_storage::{DynStorage, Kind, MemoryStorage};
use lifeboat_testkit::FillingUp;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{init_on, init_options};

mod common;

/// Small packs (1 MiB, from [`init_options`]), so a backup uploads packs
/// while it runs.
async fn repo_on(storage: DynStorage, chunker: Option<ChunkerParams>) -> Arc<Repository> {
    init_on(
        storage,
        InitOptions {
            chunker,
            ..init_options()
        },
    )
    .await
}

async fn memory_repo(chunker: Option<ChunkerParams>) -> Arc<Repository> {
    repo_on(Arc::new(MemoryStorage::new()), chunker).await
}

/// A source with small files (one chunk), large files (several chunks)
/// and an empty file.
fn source() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    for i in 0..6u64 {
        fs::write(
            dir.path().join(format!("small{i}")),
            pseudo_random(1000 + i as usize * 500, i),
        )
        .unwrap();
    }
    fs::write(
        dir.path().join("sub/big"),
        pseudo_random(5 * 1024 * 1024 + 17, 40),
    )
    .unwrap();
    fs::write(
        dir.path().join("sub/deeper/big2"),
        pseudo_random(3 * 1024 * 1024, 41),
    )
    .unwrap();
    fs::write(dir.path().join("sub/empty"), b"").unwrap();
    dir
}

fn opts(path: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![path.to_path_buf()],
        mode: BackupMode::Incremental,
        threads: Some(2),
        ..Default::default()
    }
}

/// Restores the latest snapshot of `repo` and compares it with `src`.
async fn assert_latest_restores(repo: &Arc<Repository>, src: &Path) {
    let snaps = repo.snapshots().await.unwrap();
    common::assert_restores(repo, snaps.last().unwrap(), src).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_read_fills_repositories_with_equal_and_different_chunkers() {
    let a = memory_repo(None).await;
    // B chunks like A; C has its own parameters (a different seed and
    // smaller chunks), so the file bytes are fanned out to two chunkers.
    let b = memory_repo(Some(a.config().chunker)).await;
    let c = memory_repo(Some(ChunkerParams {
        min_size: 256 * 1024,
        avg_size: 512 * 1024,
        max_size: 2 * 1024 * 1024,
        seed: 7,
    }))
    .await;
    let src = source();
    let results = backup_many(
        vec![a.clone(), b.clone(), c.clone()],
        &opts(src.path()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 3);
    let outcomes: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
    for o in &outcomes {
        let r = &o.snapshot.record;
        assert_eq!(r.mode, BackupMode::Full);
        assert_eq!(r.summary.files_new, 9);
        assert_eq!(r.summary.total_files, 9);
        assert!(r.summary.added_bytes > 8 * 1024 * 1024, "{:?}", r.summary);
    }
    // Each repository has its own key, so its own blob and tree ids.
    assert_ne!(
        outcomes[0].snapshot.record.tree,
        outcomes[1].snapshot.record.tree
    );
    assert_ne!(
        outcomes[0].snapshot.record.tree,
        outcomes[2].snapshot.record.tree
    );
    // C's smaller chunks: more blobs for the same data.
    assert!(
        outcomes[2].snapshot.record.summary.blobs_added
            > outcomes[0].snapshot.record.summary.blobs_added
    );
    for repo in [&a, &b, &c] {
        assert_latest_restores(repo, src.path()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_repository_compares_with_its_own_parent() {
    let a = memory_repo(None).await;
    let b = memory_repo(None).await;
    let src = source();
    // A first backup into A only.
    let first = backup_many(vec![a.clone()], &opts(src.path()), Arc::new(NoProgress))
        .await
        .unwrap();
    let a_parent = first.into_iter().next().unwrap().unwrap().snapshot.id;
    fs::write(src.path().join("small0"), b"changed").unwrap();
    let results = backup_many(
        vec![a.clone(), b.clone()],
        &opts(src.path()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let (ra, rb) = {
        let mut it = results.into_iter().map(|r| r.unwrap().snapshot.record);
        (it.next().unwrap(), it.next().unwrap())
    };
    // A: incremental against its parent, one file changed.
    assert_eq!(ra.mode, BackupMode::Incremental);
    assert_eq!(ra.parent, Some(a_parent));
    assert_eq!(ra.summary.files_changed, 1);
    assert_eq!(ra.summary.files_unchanged, 8);
    // B had nothing: everything new, recorded as full.
    assert_eq!(rb.mode, BackupMode::Full);
    assert_eq!(rb.parent, None);
    assert_eq!(rb.summary.files_new, 9);
    assert_latest_restores(&a, src.path()).await;
    assert_latest_restores(&b, src.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_repository_fails_alone_and_the_others_get_their_snapshot() {
    let good = memory_repo(None).await;
    let bad_storage = FillingUp::with_room(Arc::new(MemoryStorage::new()), Kind::Packs);
    let bad = repo_on(Arc::new(bad_storage.clone()), None).await;
    let other = memory_repo(None).await;
    let src = source();
    bad_storage.fill();
    let results = backup_many(
        vec![good.clone(), bad.clone(), other.clone()],
        &opts(src.path()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let mut it = results.into_iter();
    let ok1 = it.next().unwrap();
    let failed = it.next().unwrap();
    let ok2 = it.next().unwrap();
    assert!(ok1.is_ok() && ok2.is_ok());
    let err = failed.unwrap_err();
    assert!(
        err.to_string().contains("no space left"),
        "the real cause is reported: {err}"
    );
    // No snapshot record in the failed repository; the others restore.
    assert!(bad.snapshots().await.unwrap().is_empty());
    assert_latest_restores(&good, src.path()).await;
    assert_latest_restores(&other, src.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_repository_fails_each_reports_its_error() {
    let mut repos = Vec::new();
    for _ in 0..2 {
        let full = FillingUp::new(Arc::new(MemoryStorage::new()), Kind::Packs, 0);
        repos.push(repo_on(Arc::new(full), None).await);
    }
    let src = source();
    let results = backup_many(repos.clone(), &opts(src.path()), Arc::new(NoProgress))
        .await
        .unwrap();
    for r in results {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("no space left"), "{e}");
    }
    for repo in repos {
        assert!(repo.snapshots().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_read_once_into_every_repository() {
    let a = memory_repo(None).await;
    let b = memory_repo(None).await;
    let data = pseudo_random(4 * 1024 * 1024 + 3, 9);
    let options = StreamOptions {
        file_name: "db.sql".into(),
        ..Default::default()
    };
    let results = backup_stream_many(
        vec![a.clone(), b.clone()],
        std::io::Cursor::new(data.clone()),
        &options,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    for (repo, r) in [&a, &b].into_iter().zip(results) {
        let snap = r.unwrap().snapshot;
        assert_eq!(snap.record.summary.files_new, 1);
        let mut out = Vec::new();
        dump(repo, &snap, b"/db.sql", &mut out).await.unwrap();
        assert_eq!(out, data);
    }
    // The same stream again: unchanged in both; the only new blob is the
    // one-file tree (it records the time of the backup).
    let results = backup_stream_many(
        vec![a.clone(), b.clone()],
        std::io::Cursor::new(data.clone()),
        &options,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    for r in results {
        let s = r.unwrap().snapshot.record.summary;
        assert_eq!((s.files_unchanged, s.blobs_added), (1, 1), "{s:?}");
        assert!(s.added_raw_bytes < 1000, "{s:?}");
    }
}

/// A stream stored by many chunk workers, fanned out to two chunkers, with
/// one repository full: the full one fails alone, and the others hold the
/// stream's bytes in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_stored_by_many_workers_keeps_its_order_and_a_full_repository_fails_alone() {
    let good = memory_repo(None).await;
    let bad = repo_on(
        Arc::new(FillingUp::new(
            Arc::new(MemoryStorage::new()),
            Kind::Packs,
            0,
        )),
        None,
    )
    .await;
    let small_chunks = memory_repo(Some(ChunkerParams {
        min_size: 256 * 1024,
        avg_size: 512 * 1024,
        max_size: 2 * 1024 * 1024,
        seed: 7,
    }))
    .await;
    let data = pseudo_random(12 * 1024 * 1024 + 5, 21);
    let options = StreamOptions {
        file_name: "big.bin".into(),
        threads: Some(6),
        ..Default::default()
    };
    let results = backup_stream_many(
        vec![good.clone(), bad.clone(), small_chunks.clone()],
        std::io::Cursor::new(data.clone()),
        &options,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let mut it = results.into_iter();
    let (ok1, failed, ok2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let err = failed.unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(bad.snapshots().await.unwrap().is_empty());
    // At least this many chunks, so several workers stored them out of
    // order: `good` has a random chunker seed (1 MiB average, 8 MiB
    // maximum: 12 MiB is at least 2 chunks, often 8 or fewer); the small
    // chunker's seed is fixed (512 KiB average: about two dozen).
    for (repo, r, min_chunks) in [(&good, ok1, 2), (&small_chunks, ok2, 9)] {
        let snap = r.unwrap().snapshot;
        assert_eq!(snap.record.summary.total_bytes, data.len() as u64);
        assert!(
            snap.record.summary.blobs_added >= min_chunks,
            "{:?}",
            snap.record.summary
        );
        let mut out = Vec::new();
        dump(repo, &snap, b"/big.bin", &mut out).await.unwrap();
        assert!(out == data, "the stream comes back in order");
    }
}
