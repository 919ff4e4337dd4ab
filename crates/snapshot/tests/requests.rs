//! The requests a no-change backup makes on object storage (storage that
//! declares round trips, with the metadata cache), by what each is for:
//! on a real cloud every request is latency and most are billed, so one
//! more per backup must show up here first (docs/performance.md,
//! "Metadata cache" and "Bookkeeping requests").

use std::fs;
use std::sync::Arc;

use std::collections::BTreeSet;

use lifeboat_repo::{BlobType, InitOptions, KdfParams, Repository, pack_object_path};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage};
use lifeboat_testkit::CountingStorage;
use lifeboat_testkit::data::pseudo_random;

/// A new repository with the test key derivation and `pack_size` (none:
/// the default).
async fn init(storage: &DynStorage, pack_size: Option<u32>) {
    let defaults = InitOptions::default();
    Repository::init(
        storage.clone(),
        b"pw",
        InitOptions {
            kdf: KdfParams::INSECURE_TEST,
            pack_size: pack_size.unwrap_or(defaults.pack_size),
            ..defaults
        },
    )
    .await
    .unwrap();
}

/// A backup of `source`, as its owner would read it.
fn backup_options(source: &std::path::Path) -> BackupOptions {
    BackupOptions {
        paths: vec![source.to_path_buf()],
        contents_as_root: true,
        ..Default::default()
    }
}

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
    init(&storage, None).await;
    let options = backup_options(source.path());
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

/// A restore in batches reads a data pack again only where a batch
/// boundary falls inside it: batches follow the data's order in the
/// packs, not the snapshot's breadth-first order. Here a backup (depth
/// first) packs each top directory's eight nested files together, while a
/// breadth-first walk meets them a level at a time, so batches of eight
/// files cut in the walk's order each read from nearly every pack (the
/// code before pack order made 50 reads of 4 packs). Cut in pack order,
/// each batch is a run of the sorted files, and runs of one order share
/// at most their boundary packs: at most packs + batches - 1 reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_in_batches_reads_each_data_pack_once_but_at_batch_boundaries() {
    let mem = MemoryStorage::new().with_round_trips();
    let counting = Arc::new(CountingStorage::new(Arc::new(mem)));
    let storage: DynStorage = counting.clone();
    let cache = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    // 64 files of 60 KiB (one blob each, incompressible) in 1 MiB packs.
    let mut contents = Vec::new();
    for d in 0..8u64 {
        let mut dir = source.path().join(format!("d{d}"));
        for level in 0..8u64 {
            fs::create_dir_all(&dir).unwrap();
            let data = pseudo_random(60 * 1024, d * 8 + level);
            fs::write(dir.join("f"), &data).unwrap();
            contents.push(data);
            dir = dir.join("s");
        }
    }
    init(&storage, Some(1024 * 1024)).await;
    let options = backup_options(source.path());
    let repo = open(&storage, cache.path()).await;
    let made = backup(repo.clone(), &options, Arc::new(NoProgress))
        .await
        .unwrap();
    let mut packs = BTreeSet::new();
    for data in &contents {
        let id = repo.key().blob_id(data);
        let loc = repo.locate(BlobType::Data, &id).await.unwrap();
        packs.insert(pack_object_path(&loc.pack));
    }
    assert!(packs.len() >= 3, "the files lie in {} pack(s)", packs.len());

    let target = tempfile::tempdir().unwrap();
    let restored = target.path().join("r");
    counting.reset();
    let repo = open(&storage, cache.path()).await;
    let batch_files = 8;
    let stats = restore(
        &repo,
        &made.snapshot,
        &RestoreOptions {
            target: restored.clone(),
            batch_files,
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(stats.errors, Vec::<String>::new());
    assert_eq!(stats.files_restored, 64);
    let log = counting.call_log();
    let data_reads: u64 = counting
        .reads_by_object()
        .iter()
        .filter(|(key, _)| packs.contains(&key.to_string()))
        .map(|(_, n)| n)
        .sum();
    let batches = contents.len().div_ceil(batch_files) as u64;
    let most = packs.len() as u64 + batches - 1;
    assert!(
        data_reads <= most,
        "{data_reads} reads of {} data packs in {batches} batches (at most {most}); requests:\n{log}",
        packs.len()
    );
    // And the restore is whole (one backup path is the snapshot's root).
    let mut k = 0;
    for d in 0..8 {
        let mut dir = restored.join(format!("d{d}"));
        for _ in 0..8 {
            assert_eq!(fs::read(dir.join("f")).unwrap(), contents[k]);
            k += 1;
            dir = dir.join("s");
        }
    }
}
