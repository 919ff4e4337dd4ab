//! The local metadata cache (`lifeboat_repo::diskcache`): a second handle
//! on object storage reads index objects, snapshot records and tree packs
//! from the cache (no request for them), never trusts a damaged copy,
//! drops what the repository no longer holds, and `check` looks at the
//! repository, not at the cache.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::{
    BackupMode, BlobType, Id, InitOptions, KdfParams, Repository, SnapshotRecord, Tree,
    WriteOptions, WriteSession,
};
use lifeboat_storage::{Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::CountingStorage;

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::one_file_tree;

/// A repository on storage that declares round trips (as S3 does), with
/// `n` trees and one snapshot record naming the first.
async fn repo_with_snapshot(mem: &MemoryStorage, n: usize) -> (Arc<CountingStorage>, Vec<Id>) {
    repo_with_snapshot_cached(mem, n, None).await
}

/// [`repo_with_snapshot`], written by a handle with its cache under `cache`.
async fn repo_with_snapshot_cached(
    mem: &MemoryStorage,
    n: usize,
    cache: Option<&Path>,
) -> (Arc<CountingStorage>, Vec<Id>) {
    let counting = Arc::new(CountingStorage::new(Arc::new(mem.clone())));
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        ..Default::default()
    };
    let repo = Arc::new(
        Repository::init(counting.clone(), b"pw", options)
            .await
            .unwrap()
            .with_disk_cache(cache),
    );
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let mut trees = Vec::new();
    for i in 0..n {
        let tree = one_file_tree(&format!("file-{i}"));
        let added = session
            .add_blob(BlobType::Tree, &tree.encode())
            .await
            .unwrap();
        trees.push(added.id);
    }
    session.flush().await.unwrap();
    let record = SnapshotRecord {
        time: jiff::Timestamp::now(),
        host: "cache-test".into(),
        user: "u".into(),
        paths: vec!["/data".into()],
        tags: vec![],
        tree: trees[0],
        mode: BackupMode::Full,
        parent: None,
        partial: false,
        summary: Default::default(),
        program_version: "test".into(),
        extra: Default::default(),
        creator: None,
    };
    repo.write_snapshot(&record).await.unwrap();
    (counting, trees)
}

/// Opens a fresh handle, as a new command would, with its cache under `root`.
async fn open_cached(storage: Arc<CountingStorage>, root: &Path) -> Repository {
    Repository::open(storage, b"pw")
        .await
        .unwrap()
        .with_disk_cache(Some(root))
}

/// Reads everything a no-change backup reads: the index, every snapshot
/// record, and the trees.
async fn read_metadata(repo: &Repository, trees: &[Id]) -> Vec<Tree> {
    repo.index().await.unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
    let mut out = Vec::new();
    for id in trees {
        out.push(repo.read_tree(id).await.unwrap());
    }
    out
}

fn kinds_read(counting: &CountingStorage) -> BTreeSet<Kind> {
    counting.read_keys().iter().map(|k| k.kind()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_command_reads_index_snapshots_and_trees_from_the_cache() {
    let mem = MemoryStorage::new().with_round_trips();
    let (counting, trees) = repo_with_snapshot(&mem, 50).await;
    let cache = tempfile::tempdir().unwrap();

    let first = open_cached(counting.clone(), cache.path()).await;
    counting.reset();
    let expected = read_metadata(&first, &trees).await;
    let kinds = kinds_read(&counting);
    assert!(
        kinds.contains(&Kind::Index) && kinds.contains(&Kind::Packs),
        "the first command fetches from the repository: {kinds:?}"
    );

    let second = open_cached(counting.clone(), cache.path()).await;
    counting.reset();
    let again = read_metadata(&second, &trees).await;
    assert_eq!(again, expected);
    assert_eq!(
        kinds_read(&counting),
        BTreeSet::new(),
        "the second command read {:?} from the repository",
        counting.read_keys()
    );
    // It still lists: what the repository holds comes from its listings.
    assert!(counting.counts().list >= 2);

    // Without a cache, the same reads go to the repository.
    let uncached = Repository::open(counting.clone(), b"pw").await.unwrap();
    assert!(uncached.disk_cache().is_none());
    counting.reset();
    read_metadata(&uncached, &trees).await;
    assert!(kinds_read(&counting).contains(&Kind::Snapshots));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_backup_writes_is_cached_for_the_next_command() {
    let mem = MemoryStorage::new().with_round_trips();
    let cache = tempfile::tempdir().unwrap();
    let (counting, trees) = repo_with_snapshot_cached(&mem, 50, Some(cache.path())).await;
    let next = open_cached(counting.clone(), cache.path()).await;
    counting.reset();
    read_metadata(&next, &trees).await;
    assert_eq!(
        kinds_read(&counting),
        BTreeSet::new(),
        "the command after the backup read {:?} from the repository",
        counting.read_keys()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_planted_cache_file_is_replaced_by_the_repository_copy() {
    let mem = MemoryStorage::new().with_round_trips();
    let (counting, trees) = repo_with_snapshot(&mem, 5).await;
    let cache = tempfile::tempdir().unwrap();
    let first = open_cached(counting.clone(), cache.path()).await;
    let expected = read_metadata(&first, &trees).await;
    let dir = first.disk_cache().unwrap().dir().to_path_buf();

    // Flip a byte in every cached file, and plant a file named like an id.
    let mut damaged = 0;
    for sub in ["index", "snapshots", "packs"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = e.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged >= 3, "expected cached index, snapshot and pack");

    let second = open_cached(counting.clone(), cache.path()).await;
    counting.reset();
    assert_eq!(read_metadata(&second, &trees).await, expected);
    let kinds = kinds_read(&counting);
    assert!(
        kinds.contains(&Kind::Index) && kinds.contains(&Kind::Snapshots),
        "damaged copies must be fetched again: {kinds:?}"
    );
    // ... and the cache holds good copies again.
    let third = open_cached(counting.clone(), cache.path()).await;
    counting.reset();
    assert_eq!(read_metadata(&third, &trees).await, expected);
    assert_eq!(kinds_read(&counting), BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_of_objects_the_repository_no_longer_has_are_dropped() {
    let mem = MemoryStorage::new().with_round_trips();
    let (counting, trees) = repo_with_snapshot(&mem, 5).await;
    let cache = tempfile::tempdir().unwrap();
    let first = open_cached(counting.clone(), cache.path()).await;
    read_metadata(&first, &trees).await;
    let dir = first.disk_cache().unwrap().dir().to_path_buf();
    let names = |sub: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(names("snapshots").len(), 1);

    // Another host forgets the snapshot: the next listing drops the copy,
    // and the snapshot is gone for this host too.
    let snap = mem.list(Kind::Snapshots).await.unwrap().remove(0).key;
    mem.delete(&snap).await.unwrap();
    let second = open_cached(counting.clone(), cache.path()).await;
    assert!(second.snapshots().await.unwrap().is_empty());
    assert!(names("snapshots").is_empty());

    // Another host prunes: a new index without the tree pack replaces the
    // old one; the cached pack and index copy go.
    for info in mem.list(Kind::Index).await.unwrap() {
        mem.delete(&info.key).await.unwrap();
    }
    let third = open_cached(counting.clone(), cache.path()).await;
    assert_eq!(third.index().await.unwrap().blob_count(), 0);
    assert!(names("index").is_empty());
    assert!(names("packs").is_empty(), "{:?}", names("packs"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reads_the_repository_not_the_cache() {
    let mem = MemoryStorage::new().with_round_trips();
    let (counting, trees) = repo_with_snapshot(&mem, 5).await;
    let cache = tempfile::tempdir().unwrap();
    let first = open_cached(counting.clone(), cache.path()).await;
    read_metadata(&first, &trees).await;

    // Damage the tree pack in the repository; the cache still holds a good
    // copy of it.
    let loc = first.locate(BlobType::Tree, &trees[0]).await.unwrap();
    let key = ObjectKey::new(Kind::Packs, loc.pack.to_hex());
    let mut bytes = mem.get(&key).await.unwrap().to_vec();
    bytes[loc.entry.offset as usize + 3] ^= 0x20;
    mem.delete(&key).await.unwrap();
    mem.put(&key, Bytes::from(bytes)).await.unwrap();

    let second = open_cached(counting.clone(), cache.path()).await;
    // A command reading trees is served by the good copy ...
    assert!(second.read_tree(&trees[0]).await.is_ok());
    // ... but check looks at what the repository holds.
    let report = lifeboat_repo::check(&second, &lifeboat_repo::CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|p| p.message.contains(&loc.pack.to_hex())),
        "check must see the damaged tree pack {}: {:?}",
        loc.pack,
        report.errors
    );
    // The cache was not replaced by the damaged bytes.
    let third = open_cached(counting.clone(), cache.path()).await;
    assert!(third.read_tree(&trees[0]).await.is_ok());
}
