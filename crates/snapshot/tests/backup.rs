//! Backup behaviour against in-memory storage: modes, dedup, confidentiality,
//! per-file failures.

use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{assert_check_ok, default_options, memory_repo_with};
use lifeboat_testkit::tmpfs::Tmpfs;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::{BackupMode, Repository};
use lifeboat_snapshot::backup::{
    BackupOptions, BackupOutcome, LIVE_REUSE_MARGIN_SECS, StreamOptions, backup, backup_pending,
    backup_stream,
};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{Kind, MemoryStorage};

/// An in-memory repository with the default pack size: these tests
/// measure pack bytes as a real backup lays them out.
async fn memory_repo() -> (MemoryStorage, Arc<Repository>) {
    memory_repo_with(default_options()).await
}

fn opts(path: &Path, mode: BackupMode) -> BackupOptions {
    BackupOptions {
        paths: vec![path.to_path_buf()],
        mode,
        ..Default::default()
    }
}

/// A backup with `options` that must succeed.
async fn backup_ok(repo: &Arc<Repository>, options: &BackupOptions) -> BackupOutcome {
    backup(repo.clone(), options, Arc::new(NoProgress))
        .await
        .unwrap()
}

async fn pack_bytes(mem: &MemoryStorage) -> u64 {
    use lifeboat_storage::Storage;
    mem.list(Kind::Packs)
        .await
        .unwrap()
        .iter()
        .map(|p| p.size_bytes)
        .sum()
}

/// The parent trees of a directory's subdirectories are read ahead in a
/// window (16 a directory), not all at once: with more subdirectories than
/// that, over two levels, and one subdirectory replaced by a file
/// (its read-ahead tree is never used), every unchanged file must still be
/// found unchanged and nothing read again.
#[tokio::test(flavor = "multi_thread")]
async fn unchanged_files_are_reused_past_the_parent_tree_read_ahead() {
    let (_mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = |path: &Path| BackupOptions {
        contents_as_root: true,
        ..opts(path, BackupMode::Incremental)
    };
    let mut files = 0;
    for a in 0..40 {
        for b in 0..3 {
            let d = dir.path().join(format!("d{a:02}/e{b}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("f"), format!("{a}.{b}")).unwrap();
            files += 1;
        }
    }
    let first = backup_ok(&repo, &opts(dir.path())).await;
    assert_eq!(first.snapshot.record.summary.files_new, files);
    // d05/e1 becomes a file: its old tree is read ahead but never asked for.
    fs::remove_dir_all(dir.path().join("d05/e1")).unwrap();
    fs::write(dir.path().join("d05/e1"), "now a file").unwrap();
    let second = backup_ok(&repo, &opts(dir.path())).await;
    let s = &second.snapshot.record.summary;
    // (A file where the parent had a directory counts as changed.)
    assert_eq!(
        (s.files_unchanged, s.files_new + s.files_changed),
        (files - 1, 1),
        "{s:?}"
    );
    assert_eq!(s.read_bytes, "now a file".len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_second_backup_adds_no_pack_bytes_and_reads_nothing() {
    let (mem, repo) = memory_repo().await;
    // The directory is the snapshot's root: snapshots of a path record its
    // ancestors' metadata too, and the temp directories' parent changes
    // whenever a test running alongside makes or removes a directory there,
    // which made the second snapshot's tree differ now and then.
    let dir = tempfile::tempdir().unwrap();
    let opts = |path: &Path, mode| BackupOptions {
        contents_as_root: true,
        ..opts(path, mode)
    };
    for i in 0..20 {
        fs::write(
            dir.path().join(format!("f{i}")),
            pseudo_random(10_000 + i * 1000, i as u64),
        )
        .unwrap();
    }
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/big"), pseudo_random(3 << 20, 99)).unwrap();
    let first = backup_ok(&repo, &opts(dir.path(), BackupMode::Incremental)).await;
    assert_eq!(first.snapshot.record.summary.files_new, 21);
    let before = pack_bytes(&mem).await;
    assert!(before > 3 << 20);
    let second = backup_ok(&repo, &opts(dir.path(), BackupMode::Incremental)).await;
    let s = &second.snapshot.record.summary;
    assert_eq!(pack_bytes(&mem).await, before, "no new pack bytes");
    assert_eq!(s.added_bytes, 0);
    assert_eq!(s.files_unchanged, 21);
    assert_eq!(s.read_bytes, 0, "unchanged files are not read");
    assert_eq!(second.snapshot.record.parent, Some(first.snapshot.id));
    assert_eq!(second.snapshot.record.tree, first.snapshot.record.tree);

    // A full backup reads everything but still stores nothing new.
    let full = backup_ok(&repo, &opts(dir.path(), BackupMode::Full)).await;
    assert_eq!(
        full.snapshot.record.summary.read_bytes,
        first.snapshot.record.summary.read_bytes
    );
    assert_eq!(full.snapshot.record.parent, None);
    assert_eq!(pack_bytes(&mem).await, before);

    // Differential compares with the latest full snapshot.
    fs::write(dir.path().join("f0"), b"changed").unwrap();
    let inc = backup_ok(&repo, &opts(dir.path(), BackupMode::Incremental)).await;
    let diff = backup_ok(&repo, &opts(dir.path(), BackupMode::Differential)).await;
    assert_eq!(inc.snapshot.record.parent, Some(full.snapshot.id));
    assert_eq!(diff.snapshot.record.parent, Some(full.snapshot.id));
    assert_eq!(diff.snapshot.record.mode, BackupMode::Differential);
    assert_eq!(inc.snapshot.record.summary.files_changed, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_byte_change_in_64_mib_file_adds_few_chunks() {
    let (mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let mut data = pseudo_random(64 << 20, 7);
    fs::write(&path, &data).unwrap();
    backup_ok(&repo, &opts(dir.path(), BackupMode::Incremental)).await;
    let before = pack_bytes(&mem).await;
    data[40 << 20] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let second = backup_ok(&repo, &opts(dir.path(), BackupMode::Incremental)).await;
    let s = &second.snapshot.record.summary;
    // The changed chunk, maybe its neighbour, and the trees on the path.
    assert!(s.blobs_added <= 3 + 4, "added {} blobs", s.blobs_added);
    let grown = pack_bytes(&mem).await - before;
    assert!(grown < 20 << 20, "grew by {grown} bytes");
    assert_eq!(s.files_changed, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn marker_appears_in_no_repository_object() {
    let (mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = b"MARKER-7f3a9c-lifeboat-confidential";
    let mut content = pseudo_random(100_000, 3);
    content[5000..5000 + marker.len()].copy_from_slice(marker);
    let name = String::from_utf8(marker.to_vec()).unwrap();
    fs::write(dir.path().join(&name), &content).unwrap();
    fs::create_dir(dir.path().join(format!("dir-{name}"))).unwrap();
    std::os::unix::fs::symlink(&name, dir.path().join("link")).unwrap();
    let mut o = opts(dir.path(), BackupMode::Incremental);
    o.compression_level = Some(0); // no compression to hide behind
    o.tags = vec![name.clone()];
    backup(repo.clone(), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    let so = StreamOptions {
        file_name: "stream".into(),
        compression_level: Some(0),
        ..Default::default()
    };
    backup_stream(
        repo.clone(),
        std::io::Cursor::new(content.clone()),
        &so,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let objects = mem.snapshot();
    assert!(objects.len() > 4);
    for (key, bytes) in objects {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "marker found in {key}"
        );
        let prefix = &marker[..16];
        assert!(
            !bytes.windows(prefix.len()).any(|w| w == prefix),
            "marker prefix found in {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_file_is_skipped_and_snapshot_is_partial() {
    let (_mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ok"), b"fine").unwrap();
    // /proc/self/mem is a regular file whose read at offset 0 fails (EIO),
    // even for root, which chmod 000 would not achieve.
    let o = BackupOptions {
        paths: vec![dir.path().to_path_buf(), "/proc/self/mem".into()],
        ..Default::default()
    };
    let out = backup(repo.clone(), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(out.snapshot.record.partial);
    assert_eq!(out.snapshot.record.summary.errors, 1);
    assert!(
        out.warnings.iter().any(|w| w.contains("/proc/self/mem")),
        "{:?}",
        out.warnings
    );
    assert_eq!(out.snapshot.record.summary.files_new, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_source_path_fails_before_writing_a_snapshot() {
    let (mem, repo) = memory_repo().await;
    let o = BackupOptions {
        paths: vec!["/nonexistent/lifeboat-test-path".into()],
        ..Default::default()
    };
    let err = backup(repo.clone(), &o, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/lifeboat-test-path"),
        "{err}"
    );
    use lifeboat_storage::Storage;
    assert!(mem.list(Kind::Snapshots).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn excludes_and_cache_dirs() {
    let (_mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("keep.txt"), b"k").unwrap();
    fs::write(dir.path().join("drop.log"), b"d").unwrap();
    fs::create_dir(dir.path().join("cache")).unwrap();
    fs::write(
        dir.path().join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(dir.path().join("cache/blob"), b"c").unwrap();
    let mut o = opts(dir.path(), BackupMode::Incremental);
    o.excludes = vec!["*.log".into()];
    o.exclude_caches = true;
    let out = backup(repo.clone(), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(out.snapshot.record.summary.total_files, 1, "only keep.txt");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_backups_into_one_repository_both_succeed() {
    let (_mem, repo) = memory_repo().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fs::write(a.path().join("x"), pseudo_random(2 << 20, 1)).unwrap();
    fs::write(b.path().join("y"), pseudo_random(2 << 20, 1)).unwrap(); // same content
    let spawn = |p: &Path| {
        let (repo, o) = (repo.clone(), opts(p, BackupMode::Incremental));
        tokio::spawn(async move { backup(repo, &o, Arc::new(NoProgress)).await })
    };
    let (ta, tb) = (spawn(a.path()), spawn(b.path()));
    ta.await.unwrap().unwrap();
    tb.await.unwrap().unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
    assert_check_ok(&repo).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_file_system_keeps_mount_points_empty() {
    let (_mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("top"), b"t").unwrap();
    let Some(mnt) = Tmpfs::mount(
        &dir.path().join("mnt"),
        "1m",
        "one_file_system_keeps_mount_points_empty",
    ) else {
        return;
    };
    fs::write(mnt.path().join("inner"), b"i").unwrap();
    let mut o = opts(dir.path(), BackupMode::Full);
    o.one_file_system = true;
    let one = backup(repo.clone(), &o, Arc::new(NoProgress)).await;
    o.one_file_system = false;
    let all = backup(repo.clone(), &o, Arc::new(NoProgress)).await;
    drop(mnt);
    assert_eq!(
        one.unwrap().snapshot.record.summary.total_files,
        1,
        "only `top`"
    );
    assert_eq!(all.unwrap().snapshot.record.summary.total_files, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_backup_of_a_directory_as_root_gains_a_late_file_and_restores_into_the_target() {
    let (_mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::create_dir(dir.path().join("base")).unwrap();
    fs::write(dir.path().join("base/rel"), pseudo_random(300_000, 5)).unwrap();
    fs::write(dir.path().join("conf"), b"setting = 1\n").unwrap();
    let o = BackupOptions {
        paths: vec![dir.path().to_path_buf()],
        source: Some("db:42".into()),
        contents_as_root: true,
        ..Default::default()
    };
    let mut pending = backup_pending(repo.clone(), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(
        repo.snapshots().await.unwrap().is_empty(),
        "nothing is visible before the commit"
    );
    pending
        .add_root_file("label", b"START 0/2000028\n", 0o600)
        .await
        .unwrap();
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("db".to_string(), serde_json::json!({"lsn": "0/2000028"}));
    let done = pending.commit(extra).await.unwrap();
    let record = &done.snapshot.record;
    assert_eq!(record.paths, vec!["db:42".to_string()]);
    assert_eq!(record.extra["db"]["lsn"], "0/2000028");
    assert_eq!(record.summary.total_files, 3);

    let target = tempfile::tempdir().unwrap();
    let stats = restore(
        &repo,
        &done.snapshot,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            sync_each_file: true,
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let t = target.path();
    assert_eq!(fs::read(t.join("label")).unwrap(), b"START 0/2000028\n");
    assert_eq!(fs::read(t.join("conf")).unwrap(), b"setting = 1\n");
    assert_eq!(
        fs::read(t.join("base/rel")).unwrap(),
        pseudo_random(300_000, 5)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(t.join("label")).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second backup of the same source finds the first as its parent.
    let again = backup(repo.clone(), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(again.snapshot.record.parent, Some(done.snapshot.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn live_source_rereads_files_modified_near_the_parent_backup() {
    let (_mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::write(dir.path().join("old"), pseudo_random(200_000, 1)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(
        (LIVE_REUSE_MARGIN_SECS as u64 + 1) * 1000 + 100,
    ));
    // Written within the margin before the first backup starts: a write in
    // the same clock tick as that backup's read would leave its mtime and
    // size unchanged, so a live source must not trust them.
    fs::write(dir.path().join("fresh"), pseudo_random(100_000, 2)).unwrap();
    let read_twice = |live: bool| {
        let repo = repo.clone();
        let o = BackupOptions {
            paths: vec![dir.path().to_path_buf()],
            source: Some(format!("live={live}")),
            contents_as_root: true,
            live,
            ..Default::default()
        };
        async move {
            backup(repo.clone(), &o, Arc::new(NoProgress))
                .await
                .unwrap();
            let second = backup(repo, &o, Arc::new(NoProgress)).await.unwrap();
            second.snapshot.record.summary.read_bytes
        }
    };
    assert_eq!(
        read_twice(false).await,
        0,
        "an ordinary source trusts mtimes"
    );
    assert_eq!(
        read_twice(true).await,
        100_000,
        "a live source reads `fresh` again and reuses `old`"
    );
}
