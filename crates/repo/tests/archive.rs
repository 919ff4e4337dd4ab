//! Archive objects against in-memory storage: idempotent put-with-compare,
//! get, list, delete, the retention hook as `prune` and `copy` call it,
//! and `check` verifying every object.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::archive::{self, ArchiveName, ArchiveRetention, ArchiveRules, PutOutcome};
use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::{
    BackupMode, BlobType, CheckOptions, CopyOptions, Error, InitOptions, KdfParams, Repository,
    Snapshot, SnapshotRecord, Tree, WriteOptions, WriteSession, check, copy,
};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey, Storage};

async fn new_repo() -> (MemoryStorage, Arc<Repository>) {
    let mem = MemoryStorage::new();
    let storage: DynStorage = Arc::new(mem.clone());
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        ..Default::default()
    };
    let repo = Repository::init(storage, b"pw", options).await.unwrap();
    (mem, Arc::new(repo))
}

fn name(stream: &str, file: &str) -> ArchiveName {
    ArchiveName::new(stream, file).unwrap()
}

fn data(n: usize, seed: u8) -> Arc<Vec<u8>> {
    Arc::new((0..n).map(|i| (i % 13) as u8 ^ seed).collect())
}

/// A snapshot (of an empty tree) whose `extra["log"]` says from which file
/// on its log stream is needed, as a connector would record it.
async fn snapshot_needing(repo: &Arc<Repository>, from: &str) -> lifeboat_repo::Id {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let tree = session
        .add_blob(BlobType::Tree, &Tree::default().encode())
        .await
        .unwrap()
        .id;
    session.flush().await.unwrap();
    let mut record = SnapshotRecord {
        time: jiff::Timestamp::now(),
        host: "h".into(),
        user: "u".into(),
        paths: vec!["log:s".into()],
        tags: vec![],
        tree,
        mode: BackupMode::Full,
        parent: None,
        partial: false,
        summary: Default::default(),
        program_version: "test".into(),
        extra: Default::default(),
        creator: None,
    };
    record.extra.insert("log".into(), from.into());
    repo.write_snapshot(&record).await.unwrap()
}

/// A toy log kind: streams starting with `log`, files ordered by name, a
/// snapshot needs every file from its `extra["log"]` on.
struct FromOldestSnapshot;

impl ArchiveRetention for FromOldestSnapshot {
    fn kind(&self) -> &'static str {
        "toy log"
    }
    fn claims(&self, stream: &str) -> bool {
        stream.starts_with("log")
    }
    fn needed(
        &self,
        _stream: &str,
        files: &BTreeSet<String>,
        remaining: &[Snapshot],
    ) -> BTreeSet<String> {
        let oldest = remaining
            .iter()
            .filter_map(|s| s.record.extra.get("log")?.as_str().map(str::to_string))
            .min();
        match oldest {
            None => files.clone(),
            Some(from) => files.range(from..).cloned().collect(),
        }
    }
}

fn rules() -> ArchiveRules {
    ArchiveRules::new().with(Arc::new(FromOldestSnapshot))
}

#[tokio::test(flavor = "multi_thread")]
async fn put_is_idempotent_and_refuses_other_content_under_the_same_name() {
    let (_, repo) = new_repo().await;
    let n = name("log1", "0001");
    let first = data(100_000, 1);
    assert_eq!(
        archive::put(&repo, &n, first.clone()).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        archive::put(&repo, &n, first.clone()).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    let err = archive::put(&repo, &n, data(100_000, 2)).await.unwrap_err();
    assert!(
        matches!(&err, Error::ArchiveConflict { object } if object == "wal/log1-0001"),
        "{err}"
    );
    assert_eq!(archive::get(&repo, &n).await.unwrap().unwrap(), *first);
    assert!(archive::exists(repo.storage().as_ref(), &n).await.unwrap());

    let missing = name("log1", "0002");
    assert_eq!(archive::get(&repo, &missing).await.unwrap(), None);
    assert!(
        !archive::exists(repo.storage().as_ref(), &missing)
            .await
            .unwrap()
    );

    archive::put(&repo, &name("log2", "0009"), data(10, 3))
        .await
        .unwrap();
    let listed = archive::list(&repo).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed["log1"], BTreeSet::from(["0001".to_string()]));
    archive::delete(&repo, &n).await.unwrap();
    archive::delete(&repo, &n).await.unwrap();
    assert!(!archive::list(&repo).await.unwrap().contains_key("log1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_read_data_names_a_damaged_archive_object_and_plain_check_lists_them() {
    let (mem, repo) = new_repo().await;
    let good = name("log1", "0001");
    let bad = name("log1", "0002");
    archive::put(&repo, &good, data(50_000, 1)).await.unwrap();
    archive::put(&repo, &bad, data(50_000, 2)).await.unwrap();
    let key = bad.key();
    let mut bytes = repo.storage().get(&key).await.unwrap().to_vec();
    bytes[30] ^= 0x01;
    mem.tamper(&key, Bytes::from(bytes));
    // A stray name in the namespace is a warning, not an error.
    mem.put(
        &ObjectKey::new(Kind::Archive, "stray"),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();

    let plain = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(plain.is_ok(), "{:?}", plain.errors);
    assert_eq!(plain.archive_objects, 2);
    assert_eq!(plain.archive_objects_read, 0);
    assert!(
        plain.warnings.iter().any(|w| w.contains("wal/stray")),
        "{:?}",
        plain.warnings
    );

    let options = CheckOptions {
        read_data: true,
        read_data_subset_percent: None,
    };
    let full = check(&repo, &options, &|_, _| {}).await.unwrap();
    assert!(!full.is_ok());
    assert_eq!(full.archive_objects_read, 2);
    assert!(full.archive_read_bytes > 0);
    assert_eq!(full.errors.len(), 1, "{:?}", full.errors);
    assert_eq!(full.errors[0].object, "wal/log1-0002");
    assert!(
        full.errors[0].message.contains("authentication failed"),
        "{:?}",
        full.errors
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_the_archive_objects_no_remaining_snapshot_needs() {
    let (_, repo) = new_repo().await;
    for f in ["0001", "0002", "0003", "0004"] {
        archive::put(&repo, &name("log1", f), data(1000, 1))
            .await
            .unwrap();
    }
    // A stream no rule claims is never expired.
    archive::put(&repo, &name("other", "0001"), data(1000, 1))
        .await
        .unwrap();
    snapshot_needing(&repo, "0003").await;

    // Without rules, prune leaves archive objects alone.
    let stats = prune(&repo, &PruneOptions::default()).await.unwrap();
    assert!(stats.archive.is_none());
    assert_eq!(archive::list(&repo).await.unwrap()["log1"].len(), 4);

    let with_rules = |dry_run| PruneOptions {
        dry_run,
        archive: Some(rules()),
        ..Default::default()
    };
    let dry = prune(&repo, &with_rules(true)).await.unwrap();
    let expired = dry.archive.unwrap();
    assert!(expired.dry_run);
    assert_eq!(expired.streams["log1"].deleted, ["0001", "0002"]);
    assert_eq!(expired.streams["log1"].kept, 2);
    assert_eq!(expired.streams["other"].kind, None);
    assert_eq!(expired.streams["other"].kept, 1);
    assert_eq!(expired.deleted_of("toy log"), 2);
    assert_eq!(archive::list(&repo).await.unwrap()["log1"].len(), 4);

    let real = prune(&repo, &with_rules(false)).await.unwrap();
    assert_eq!(real.archive.unwrap().deleted_of("toy log"), 2);
    let left = archive::list(&repo).await.unwrap();
    assert_eq!(
        left["log1"],
        BTreeSet::from(["0003".to_string(), "0004".to_string()])
    );
    assert_eq!(left["other"].len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_brings_the_archive_objects_the_targets_snapshots_need() {
    let (_, a) = new_repo().await;
    let (_, b) = new_repo().await;
    let contents: Vec<(String, Arc<Vec<u8>>)> = ["0001", "0002", "0003"]
        .into_iter()
        .enumerate()
        .map(|(i, f)| (f.to_string(), data(20_000, i as u8)))
        .collect();
    for (f, d) in &contents {
        archive::put(&a, &name("log1", f), d.clone()).await.unwrap();
    }
    archive::put(&a, &name("other", "x"), data(10, 9))
        .await
        .unwrap();
    snapshot_needing(&a, "0002").await;

    // Without rules, copy leaves archive objects alone.
    let plain = copy(&a, &b, &CopyOptions::default(), &()).await.unwrap();
    assert_eq!(plain.snapshots_copied, 1);
    assert!(plain.archive.is_none());
    assert!(archive::list(&b).await.unwrap().is_empty());

    let options = CopyOptions {
        archive: Some(rules()),
        ..Default::default()
    };
    let first = copy(&a, &b, &options, &()).await.unwrap();
    let s = first.archive.unwrap();
    // 0002, 0003 (the copied snapshot needs them) and the unclaimed stream.
    assert_eq!((s.copied, s.present, s.not_needed), (3, 0, 1));
    assert_eq!(s.bytes, 40_000 + 10);
    // Re-sealed under the target's key: the target reads them alone.
    for (f, d) in &contents[1..] {
        assert_eq!(
            archive::get(&b, &name("log1", f)).await.unwrap().unwrap(),
            **d
        );
    }
    assert_eq!(archive::get(&b, &name("log1", "0001")).await.unwrap(), None);

    let again = copy(&a, &b, &options, &()).await.unwrap();
    let s = again.archive.unwrap();
    assert_eq!((s.copied, s.present, s.not_needed), (0, 3, 1));
}
