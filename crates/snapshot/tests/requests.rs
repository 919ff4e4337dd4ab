//! The requests a no-change backup makes on object storage (storage that
//! declares round trips, with the metadata cache), by what each is for:
//! on a real cloud every request is latency and most are billed, so one
//! more per backup must show up here first (docs/performance.md,
//! "Metadata cache" and "Bookkeeping requests").

use std::fs;
use std::sync::Arc;

use lifeboat_repo::{InitOptions, KdfParams, Repository};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_storage::{DynStorage, Kind, MemoryStorage};
use lifeboat_testkit::CountingStorage;

/// Opens the repository as a command does: config first (one read), then
/// the key, with the metadata cache under `cache`.
async fn open(storage: &DynStorage, cache: &std::path::Path) -> Arc<Repository> {
    let config = Repository::read_config(storage).await.unwrap();
    let repo = Repository::open_with_config(storage.clone(), config, b"pw", None)
        .await
        .unwrap();
    Arc::new(repo.with_disk_cache(Some(cache)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_no_change_backup_reads_the_config_twice_and_nothing_it_already_holds() {
    let mem = MemoryStorage::new().with_round_trips();
    let counting = Arc::new(CountingStorage::new(Arc::new(mem)));
    let storage: DynStorage = counting.clone();
    let cache = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    for i in 0..5 {
        fs::write(source.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    Repository::init(
        storage.clone(),
        b"pw",
        InitOptions {
            kdf: KdfParams::INSECURE_TEST,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let options = BackupOptions {
        paths: vec![source.path().to_path_buf()],
        contents_as_root: true,
        ..Default::default()
    };
    let first = backup(
        open(&storage, cache.path()).await,
        &options,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();

    counting.reset();
    let repo = open(&storage, cache.path()).await;
    let second = backup(repo.clone(), &options, Arc::new(NoProgress))
        .await
        .unwrap();
    // Looking the parent up by id, as the ransomware check after a backup
    // does, needs no request: the backup listed it.
    let parent = repo
        .find_snapshot(&first.snapshot.id.to_hex())
        .await
        .unwrap();
    assert_eq!(second.snapshot.record.parent, Some(parent.id));

    let log = counting.call_log();
    let calls = |op, kind| counting.calls(op, kind);
    // The config: once to open, once to prove the location is still this
    // repository before the snapshot record is written. Never a size probe.
    assert_eq!(calls("get", Kind::Config), 2, "requests:\n{log}");
    assert_eq!(calls("stat", Kind::Config), 0, "requests:\n{log}");
    // The only lock is this backup's own: written, checked once before the
    // record, deleted; never read back.
    assert_eq!(calls("get", Kind::Locks), 0, "requests:\n{log}");
    assert_eq!(calls("stat", Kind::Locks), 1, "requests:\n{log}");
    // Index, snapshot records and audit records come from the cache; the
    // index is listed once (the backup wrote no index object).
    assert_eq!(calls("list", Kind::Index), 1, "requests:\n{log}");
    for kind in [Kind::Index, Kind::Snapshots, Kind::Audit] {
        assert_eq!(calls("get", kind), 0, "{kind:?} read; requests:\n{log}");
    }
    assert_eq!(calls("stat", Kind::Snapshots), 0, "requests:\n{log}");
    assert_eq!(counting.counts().total(), 14, "requests:\n{log}");
}
