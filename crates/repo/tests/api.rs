//! Repository API tests against in-memory storage: open/init, keys, write
//! sessions, check and repair index.

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::{
    BackupMode, BlobType, CheckOptions, Error, KdfParams, Repository, SnapshotRecord, Tree,
    WriteOptions, WriteSession, check, keys, repair,
};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey, Storage};

// testkit's repository fixtures, compiled into this test binary: through
// testkit's `repo` feature they would make lifeboat-repo a dev-dependency
// of itself.
#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::{init_options, memory_repo as new_repo};

fn record(tree: lifeboat_repo::Id) -> SnapshotRecord {
    SnapshotRecord {
        time: jiff::Timestamp::now(),
        host: "h".into(),
        user: "u".into(),
        paths: vec!["/x".into()],
        tags: vec![],
        tree,
        mode: BackupMode::Full,
        parent: None,
        partial: false,
        summary: Default::default(),
        program_version: "test".into(),
        extra: Default::default(),
        creator: None,
    }
}

/// Writes `n` distinct data blobs of `size` bytes and an empty tree, then a
/// snapshot record; returns the blob contents.
async fn write_snapshot(repo: &Arc<Repository>, n: usize, size: usize, seed: u8) -> Vec<Vec<u8>> {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let mut blobs = Vec::new();
    for i in 0..n {
        // xorshift: incompressible, so pack sizes are predictable.
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed as u64;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let added = session.add_blob(BlobType::Data, &data).await.unwrap();
        assert!(added.new);
        blobs.push(data);
    }
    let tree = session
        .add_blob(BlobType::Tree, &Tree::default().encode())
        .await
        .unwrap()
        .id;
    session.finish(record(tree)).await.unwrap();
    blobs
}

#[tokio::test(flavor = "multi_thread")]
async fn open_checks_password_and_refuses_second_init() {
    let (mem, _repo) = new_repo().await;
    let storage: DynStorage = Arc::new(mem.clone());
    assert!(Repository::open(storage.clone(), b"pw").await.is_ok());
    assert!(matches!(
        Repository::open(storage.clone(), b"nope").await,
        Err(Error::WrongPassword)
    ));
    assert!(matches!(
        Repository::init(storage, b"pw", init_options()).await,
        Err(Error::AlreadyInitialized { .. })
    ));
    let empty: DynStorage = Arc::new(MemoryStorage::new());
    assert!(matches!(
        Repository::open(empty, b"pw").await,
        Err(Error::NoRepository { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_format_version_is_refused_before_any_key_is_tried() {
    let (mem, _repo) = new_repo().await;
    let key = ObjectKey::config();
    let mut config = mem.snapshot()[&key].to_vec();
    config[8] = 9;
    mem.tamper(&key, Bytes::from(config));
    let storage: DynStorage = Arc::new(mem);
    match Repository::open(storage, b"pw").await {
        Err(Error::UnsupportedVersion {
            found: 9,
            supported: 4,
        }) => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_round_trip_and_dedup_within_and_across_sessions() {
    let (_mem, repo) = new_repo().await;
    let blobs = write_snapshot(&repo, 40, 100_000, 1).await;
    for b in &blobs {
        let id = repo.key().blob_id(b);
        assert_eq!(&repo.read_blob(&id).await.unwrap()[..], &b[..]);
    }
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for b in &blobs {
        assert!(!session.add_blob(BlobType::Data, b).await.unwrap().new);
    }
    session.flush().await.unwrap();
    // 40 x 100 KB with 1 MiB packs: several packs, all indexed.
    let index = repo.index().await.unwrap();
    assert_eq!(index.blob_count(), 41);
    assert!(index.packs().count() >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_missing_pack_and_repair_index_rebuilds_from_trailers() {
    let (mem, repo) = new_repo().await;
    write_snapshot(&repo, 30, 100_000, 2).await;
    let ok = check(
        &repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(ok.is_ok(), "{:?}", ok.errors);

    // Drop every index object: repair rebuilds the same index from packs.
    let before = repo.index().await.unwrap();
    for info in mem.list(Kind::Index).await.unwrap() {
        mem.delete(&info.key).await.unwrap();
    }
    let stats = repair::repair_index(&repo).await.unwrap();
    assert_eq!(stats.blobs_indexed, before.blob_count());
    let reopened = Repository::open(Arc::new(mem.clone()), b"pw")
        .await
        .unwrap();
    let after = reopened.load_index().await.unwrap();
    assert_eq!(after.blob_count(), before.blob_count());
    for loc in before.blobs() {
        assert_eq!(after.get(loc.entry.blob_type, &loc.entry.id), Some(loc));
    }

    // Remove one pack: check names it.
    let pack = mem.list(Kind::Packs).await.unwrap()[0].key.clone();
    mem.delete(&pack).await.unwrap();
    let report = check(&reopened, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.object.contains(pack.name()) && e.message.contains("missing")),
        "{:?}",
        report.errors
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_keeps_old_entries_of_a_pack_with_a_damaged_trailer() {
    let (mem, repo) = new_repo().await;
    write_snapshot(&repo, 5, 50_000, 3).await;
    // The data pack (5 blobs; the tree blob has a pack of its own).
    let pack = mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|o| o.size_bytes)
        .unwrap()
        .key;
    let mut bytes = mem.snapshot()[&pack].to_vec();
    let n = bytes.len();
    bytes[n - 10] ^= 1; // inside the sealed trailer
    mem.tamper(&pack, Bytes::from(bytes));
    let stats = repair::repair_index(&repo).await.unwrap();
    assert_eq!(stats.unreadable_packs.len(), 1);
    assert_eq!(stats.entries_carried_over, 5);
    let reopened = Repository::open(Arc::new(mem.clone()), b"pw")
        .await
        .unwrap();
    assert_eq!(reopened.load_index().await.unwrap().blob_count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_add_list_remove_and_change_password() {
    let (mem, repo) = new_repo().await;
    let storage: DynStorage = Arc::new(mem.clone());
    keys::add(&repo, b"second", KdfParams::INSECURE_TEST)
        .await
        .unwrap();
    assert_eq!(keys::list(&repo).await.unwrap().len(), 2);
    let second = Repository::open(storage.clone(), b"second").await.unwrap();
    assert_eq!(second.config().repository_id, repo.config().repository_id);
    // The key in use cannot be removed; the other one can.
    let current = repo.key_id().to_hex();
    assert!(keys::remove(&repo, &current).await.is_err());
    keys::remove(&second, &current).await.unwrap();
    assert!(matches!(
        Repository::open(storage.clone(), b"pw").await,
        Err(Error::WrongPassword)
    ));
    keys::change_password(&second, b"third", KdfParams::INSECURE_TEST)
        .await
        .unwrap();
    assert!(Repository::open(storage.clone(), b"second").await.is_err());
    assert!(Repository::open(storage, b"third").await.is_ok());
}

/// Memory storage on which a `forget` deletes every snapshot record right
/// after it was listed, before the lister gets to read it.
#[derive(Debug)]
struct ForgetDuringListing(MemoryStorage);

#[async_trait::async_trait]
impl Storage for ForgetDuringListing {
    fn location(&self) -> String {
        self.0.location()
    }
    fn capabilities(&self) -> lifeboat_storage::Capabilities {
        self.0.capabilities()
    }
    async fn put(&self, key: &ObjectKey, data: Bytes) -> lifeboat_storage::Result<()> {
        self.0.put(key, data).await
    }
    async fn get(&self, key: &ObjectKey) -> lifeboat_storage::Result<Bytes> {
        self.0.get(key).await
    }
    async fn get_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> lifeboat_storage::Result<Bytes> {
        self.0.get_range(key, offset, len).await
    }
    async fn stat(&self, key: &ObjectKey) -> lifeboat_storage::Result<Option<u64>> {
        self.0.stat(key).await
    }
    async fn list(
        &self,
        kind: Kind,
    ) -> lifeboat_storage::Result<Vec<lifeboat_storage::ObjectInfo>> {
        let listed = self.0.list(kind).await?;
        if kind == Kind::Snapshots {
            for info in &listed {
                self.0.delete(&info.key).await?;
            }
        }
        Ok(listed)
    }
    async fn delete(&self, key: &ObjectKey) -> lifeboat_storage::Result<()> {
        self.0.delete(key).await
    }
    async fn create_root(&self) -> lifeboat_storage::Result<()> {
        self.0.create_root().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_forgotten_while_listing_is_left_out_not_an_error() {
    let (mem, repo) = new_repo().await;
    write_snapshot(&repo, 3, 10_000, 4).await;
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
    let racing: DynStorage = Arc::new(ForgetDuringListing(mem.clone()));
    let repo = Repository::open(racing, b"pw").await.unwrap();
    // Listed, then gone before the read: the snapshot no longer exists.
    assert_eq!(repo.snapshots().await.unwrap().len(), 0);
    write_snapshot(&Arc::new(repo), 3, 10_000, 5).await;
    let racing: DynStorage = Arc::new(ForgetDuringListing(mem));
    let repo = Repository::open(racing, b"pw").await.unwrap();
    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.damaged_snapshots.is_empty(), "{report:?}");
    assert_eq!(report.snapshots, 0);
}

/// Issue 12, rollback: an index object naming a pack that is gone (prune
/// deleted the pack, someone with storage access put the old index object
/// back) used to make the next backup deduplicate against the missing
/// blobs, so its snapshot silently lacked data. A session drops the
/// entries of packs the listing does not have and writes the blobs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_writes_again_the_blobs_of_packs_missing_from_storage() {
    let (mem, repo) = new_repo().await;
    let blobs = write_snapshot(&repo, 3, 1000, 7).await;
    let packs = mem.list(Kind::Packs).await.unwrap();
    assert!(!packs.is_empty());
    for p in &packs {
        mem.delete(&p.key).await.unwrap();
    }
    let repo = Arc::new(
        Repository::open(Arc::new(mem.clone()), b"pw")
            .await
            .unwrap(),
    );
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for b in &blobs {
        assert!(
            session.add_blob(BlobType::Data, b).await.unwrap().new,
            "deduplicated against a pack that is not in storage"
        );
    }
    let tree = session
        .add_blob(BlobType::Tree, &Tree::default().encode())
        .await
        .unwrap()
        .id;
    session.finish(record(tree)).await.unwrap();
    let reopened = Repository::open(Arc::new(mem.clone()), b"pw")
        .await
        .unwrap();
    for b in &blobs {
        let id = reopened.key().blob_id(b);
        assert_eq!(&reopened.read_blob(&id).await.unwrap()[..], &b[..]);
    }
}

/// Issue 12, rollback: a blob stored in two packs (two backups racing)
/// is read from the other pack when the first one is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_in_two_packs_is_read_from_the_other_when_one_is_gone() {
    let (mem, repo) = new_repo().await;
    let blob = b"stored twice ".repeat(500);
    let a = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let b = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for s in [a, b] {
        assert!(s.add_blob(BlobType::Data, &blob).await.unwrap().new);
        let tree = s
            .add_blob(BlobType::Tree, &Tree::default().encode())
            .await
            .unwrap()
            .id;
        s.finish(record(tree)).await.unwrap();
    }
    let repo = Repository::open(Arc::new(mem.clone()), b"pw")
        .await
        .unwrap();
    let id = repo.key().blob_id(&blob);
    let locations = repo.index().await.unwrap().locations(BlobType::Data, &id);
    assert_eq!(locations.len(), 2, "the blob is in two packs");
    mem.delete(&ObjectKey::new(Kind::Packs, locations[0].pack.to_hex()))
        .await
        .unwrap();
    assert_eq!(&repo.read_blob(&id).await.unwrap()[..], &blob[..]);
}
