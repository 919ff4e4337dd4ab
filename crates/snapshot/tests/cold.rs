//! The cold storage tier: data packs in a second storage, everything else
//! hot. Both tiers are in-memory storages wrapped in counting wrappers, so
//! each test proves which operations touch the cold tier and which never do.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::retention::{ForgetOptions, RetentionPolicy, forget};
use lifeboat_repo::{
    BackupMode, BlobType, CheckOptions, ColdInit, Error, InitOptions, Repository, Snapshot,
    SnapshotRecord, Tier, Tree, WriteOptions, WriteSession, check,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, plan, restore};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, Storage};
use lifeboat_testkit::CountingStorage;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::fs::restored;
use lifeboat_testkit::repo::{assert_check_ok, file_node, init_options, small_chunks};

mod common;
use common::restore_to_temp;

/// Small chunks and packs so a few MiB make several data packs.
fn options() -> InitOptions {
    InitOptions {
        chunker: Some(small_chunks(7)),
        ..init_options()
    }
}

struct Tiers {
    hot_mem: MemoryStorage,
    cold_mem: MemoryStorage,
    hot: Arc<CountingStorage>,
    cold: Arc<CountingStorage>,
}

impl Tiers {
    fn new() -> Self {
        let hot_mem = MemoryStorage::new();
        let cold_mem = MemoryStorage::new();
        Tiers {
            hot: Arc::new(CountingStorage::new(Arc::new(hot_mem.clone()))),
            cold: Arc::new(CountingStorage::new(Arc::new(cold_mem.clone()))),
            hot_mem,
            cold_mem,
        }
    }

    async fn init(&self) -> Arc<Repository> {
        let repo = Repository::init(
            self.hot.clone(),
            b"pw",
            InitOptions {
                cold: Some(ColdInit {
                    location: "/srv/cold-tier".into(),
                    storage: self.cold.clone(),
                }),
                ..options()
            },
        )
        .await
        .unwrap();
        Arc::new(repo)
    }

    /// A new repository with [`make_source`]'s tree backed up: the
    /// repository, the source directory and the snapshot.
    async fn backed_up(&self) -> (Arc<Repository>, tempfile::TempDir, Snapshot) {
        let repo = self.init().await;
        let src = tempfile::tempdir().unwrap();
        make_source(src.path());
        let snap = backup_dir(&repo, src.path()).await;
        (repo, src, snap)
    }

    /// Opens the repository again (as a new process would), with the
    /// counting cold storage standing in for the recorded location.
    async fn open(&self) -> Arc<Repository> {
        let repo = Repository::open(self.hot.clone(), b"pw").await.unwrap();
        assert_eq!(repo.cold_location(), Some("/srv/cold-tier"));
        Arc::new(repo.with_cold_storage(self.cold.clone()).unwrap())
    }
}

/// Restores all of `snap` into a new directory and returns the bytes of
/// the file at `rel` under the backed-up `src`.
async fn restore_and_read(
    repo: &Arc<Repository>,
    snap: &Snapshot,
    src: &Path,
    rel: &str,
) -> Vec<u8> {
    let target = restore_to_temp(repo, snap).await;
    std::fs::read(restored(target.path(), src).join(rel)).unwrap()
}

fn make_source(dir: &Path) {
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello cold\n").unwrap();
    std::fs::write(dir.join("a/big.bin"), pseudo_random(2_500_000, 1)).unwrap();
    std::fs::write(dir.join("a/b/other.bin"), pseudo_random(1_500_000, 2)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

async fn backup_dir(repo: &Arc<Repository>, dir: &Path) -> Snapshot {
    let opts = BackupOptions {
        paths: vec![dir.to_path_buf()],
        host: Some("h".into()),
        // One reader, so each file's chunks land in packs of their own
        // (apart from where two files meet) and a one-file restore plans
        // fewer packs than the whole snapshot has. Several readers
        // interleave the files' chunks and that held only by luck.
        threads: Some(1),
        ..Default::default()
    };
    backup(repo.clone(), &opts, Arc::new(NoProgress))
        .await
        .unwrap()
        .snapshot
}

/// Blob types of the packs in one tier, from the index.
async fn pack_types(repo: &Repository, mem: &MemoryStorage) -> Vec<BTreeSet<String>> {
    let index = repo.load_index().await.unwrap();
    let mut out = Vec::new();
    for info in mem.list(Kind::Packs).await.unwrap() {
        let id = lifeboat_repo::Id::from_hex(info.key.name()).unwrap();
        let types: BTreeSet<String> = index
            .blobs()
            .filter(|l| l.pack == id)
            .map(|l| format!("{:?}", l.entry.blob_type))
            .collect();
        out.push(types);
    }
    out
}

#[tokio::test]
async fn a_write_session_never_mixes_tree_and_data_blobs_in_a_pack() {
    // A hot-only repository: the separation holds there too.
    let mem = MemoryStorage::new();
    let repo = Arc::new(
        Repository::init(Arc::new(mem.clone()), b"pw", options())
            .await
            .unwrap(),
    );
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for i in 0..40u64 {
        let t = if i % 2 == 0 {
            BlobType::Data
        } else {
            BlobType::Tree
        };
        session
            .add_blob(t, &pseudo_random(100_000, i + 1))
            .await
            .unwrap();
    }
    session.flush().await.unwrap();
    let types = pack_types(&repo, &mem).await;
    assert!(types.len() >= 2, "{types:?}");
    for t in &types {
        assert_eq!(t.len(), 1, "a pack holds one blob type: {types:?}");
    }
    assert!(!repo.has_cold_tier());
    assert_eq!(repo.tier_of(BlobType::Data), Tier::Hot);
}

#[tokio::test]
async fn data_packs_go_cold_and_everything_else_stays_hot() {
    let tiers = Tiers::new();
    let (repo, _src, _) = tiers.backed_up().await;

    // The cold tier holds packs and nothing else.
    for kind in Kind::ALL {
        let n = tiers.cold_mem.list(kind).await.unwrap().len();
        if kind == Kind::Packs {
            assert!(n >= 3, "several data packs expected, got {n}");
        } else {
            assert_eq!(n, 0, "{kind:?} objects in the cold tier");
        }
    }
    let cold_types = pack_types(&repo, &tiers.cold_mem).await;
    assert!(
        cold_types
            .iter()
            .all(|t| *t == BTreeSet::from(["Data".to_string()])),
        "{cold_types:?}"
    );
    let hot_types = pack_types(&repo, &tiers.hot_mem).await;
    assert!(!hot_types.is_empty());
    assert!(
        hot_types
            .iter()
            .all(|t| *t == BTreeSet::from(["Tree".to_string()])),
        "{hot_types:?}"
    );
    // Config, key, index and the snapshot record are hot.
    for kind in [Kind::Config, Kind::Keys, Kind::Index, Kind::Snapshots] {
        assert!(
            !tiers.hot_mem.list(kind).await.unwrap().is_empty(),
            "{kind:?}"
        );
    }
    assert!(
        check(&repo, &CheckOptions::default(), &|_, _| {})
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn listing_ls_find_diff_forget_check_and_planning_never_read_the_cold_tier() {
    let tiers = Tiers::new();
    let (repo, src, _) = tiers.backed_up().await;
    std::fs::write(src.path().join("a/new.bin"), pseudo_random(300_000, 9)).unwrap();
    backup_dir(&repo, src.path()).await;
    drop(repo);

    let repo = tiers.open().await;
    tiers.cold.reset();
    tiers.hot.reset();
    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 2);
    let listed = lifeboat_snapshot::ls::ls(&repo, &snaps[1], b"/", true)
        .await
        .unwrap();
    assert!(listed.len() >= 5, "{}", listed.len());
    let found = lifeboat_snapshot::find::find(&repo, "*.bin", &snaps)
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    let diff = lifeboat_snapshot::diff::diff(&repo, &snaps[0], &snaps[1])
        .await
        .unwrap();
    assert_eq!(diff.totals.added, 1, "{diff:?}");
    let report = forget(
        &repo,
        &RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        },
        &ForgetOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.removed, 1);
    // Everything so far: not a single call to the cold tier, while the hot
    // one served every read.
    assert_eq!(tiers.cold.counts().total(), 0, "{:?}", tiers.cold.counts());
    assert!(tiers.hot.counts().reads > 0);

    let target = tempfile::tempdir().unwrap();
    let planned = plan(
        &repo,
        &repo.find_snapshot("latest").await.unwrap(),
        &RestoreOptions {
            target: target.path().join("out"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(planned.cold_packs >= 3, "{planned:?}");
    assert_eq!(planned.hot_packs, 0);
    assert_eq!(planned.files, 4);
    assert_eq!(
        tiers.cold.counts().total(),
        0,
        "planning touched the cold tier"
    );
    assert!(
        !target.path().join("out").exists(),
        "planning wrote to the target"
    );

    // Check without --read-data lists the cold tier but reads no pack.
    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let c = tiers.cold.counts();
    assert_eq!((c.reads, c.put, c.delete), (0, 0, 0), "{c:?}");
    assert!(
        c.list > 0,
        "check lists the cold tier to find missing packs"
    );
}

#[tokio::test]
async fn restore_reads_exactly_the_planned_cold_packs() {
    let tiers = Tiers::new();
    let (_repo, src, snap) = tiers.backed_up().await;
    let repo = tiers.open().await;
    tiers.cold.reset();

    // Only one file: the plan names a subset of the cold packs.
    let other = format!("{}/a/b/other.bin", src.path().display());
    let target = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        target: target.path().to_path_buf(),
        include: vec![other.clone().into()],
        ..Default::default()
    };
    let planned = plan(&repo, &snap, &opts).await.unwrap();
    let all_cold = tiers.cold_mem.list(Kind::Packs).await.unwrap().len() as u64;
    assert!(
        planned.cold_packs >= 1 && planned.cold_packs < all_cold,
        "{planned:?}"
    );
    assert_eq!(planned.files, 1);
    assert_eq!(planned.file_bytes, 1_500_000);

    let stats = restore(&repo, &snap, &opts, &NoProgress).await.unwrap();
    assert_eq!(stats.files_restored, 1, "{stats:?}");
    let restored = std::fs::read(target.path().join(other.trim_start_matches('/'))).unwrap();
    assert_eq!(restored, pseudo_random(1_500_000, 2));

    let read: BTreeSet<String> = tiers
        .cold
        .read_keys()
        .iter()
        .map(|k| k.to_string())
        .collect();
    let wanted: BTreeSet<String> = planned.packs.iter().map(|p| p.object.clone()).collect();
    assert_eq!(read, wanted, "restore read other cold packs than planned");
    assert_eq!(tiers.cold.counts().read_bytes, planned.cold_read_bytes);
    assert_eq!(tiers.cold.counts().put, 0);
}

#[tokio::test]
async fn check_read_data_and_prune_work_across_tiers() {
    let tiers = Tiers::new();
    let (repo, src, _) = tiers.backed_up().await;
    // A second snapshot without big.bin; forgetting the first leaves the
    // big file's packs unused.
    std::fs::remove_file(src.path().join("a/big.bin")).unwrap();
    let kept = backup_dir(&repo, src.path()).await;
    let repo = tiers.open().await;

    tiers.cold.reset();
    let report = assert_check_ok(&repo).await;
    let cold_bytes: u64 = tiers
        .cold_mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .iter()
        .map(|o| o.size_bytes)
        .sum();
    assert_eq!(report.cold_read_bytes, cold_bytes);
    assert_eq!(tiers.cold.counts().read_bytes, cold_bytes);

    forget(
        &repo,
        &RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        },
        &ForgetOptions::default(),
    )
    .await
    .unwrap();
    let cold_before = tiers.cold_mem.list(Kind::Packs).await.unwrap().len();
    let stats = prune(
        &repo,
        &PruneOptions {
            max_unused_percent: 0.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(stats.packs_deleted + stats.packs_repacked > 0, "{stats:?}");
    let cold_after = tiers.cold_mem.list(Kind::Packs).await.unwrap().len();
    assert!(cold_after < cold_before, "{cold_before} -> {cold_after}");
    // Repacked data stays cold, trees stay hot.
    let hot_types = pack_types(&repo, &tiers.hot_mem).await;
    assert!(hot_types.iter().all(|t| !t.contains("Data")));
    assert!(tiers.cold_mem.list(Kind::Index).await.unwrap().is_empty());

    assert_check_ok(&repo).await;
    assert_eq!(
        restore_and_read(&repo, &kept, src.path(), "a/b/other.bin").await,
        pseudo_random(1_500_000, 2)
    );
}

#[tokio::test]
async fn prune_reports_the_cold_bytes_it_downloads_to_repack() {
    let tiers = Tiers::new();
    let repo = tiers.init().await;
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    // One pack holding a used and an unused data blob.
    let used = session
        .add_blob(BlobType::Data, &pseudo_random(200_000, 1))
        .await
        .unwrap();
    session
        .add_blob(BlobType::Data, &pseudo_random(200_000, 2))
        .await
        .unwrap();
    let tree = Tree {
        nodes: vec![file_node("f", 200_000, vec![used.id])],
    };
    let tree_id = session
        .add_blob(BlobType::Tree, &tree.encode())
        .await
        .unwrap()
        .id;
    session
        .finish(SnapshotRecord {
            time: jiff::Timestamp::now(),
            host: "h".into(),
            user: "u".into(),
            paths: vec!["/x".into()],
            tags: vec![],
            tree: tree_id,
            mode: BackupMode::Full,
            parent: None,
            partial: false,
            summary: Default::default(),
            program_version: "test".into(),
            extra: Default::default(),
            creator: None,
        })
        .await
        .unwrap();
    let cold_pack_bytes: u64 = tiers
        .cold_mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .iter()
        .map(|o| o.size_bytes)
        .sum();

    let dry = prune(
        &repo,
        &PruneOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.packs_repacked, 1, "{dry:?}");
    assert_eq!(dry.cold_read_bytes, cold_pack_bytes);
    tiers.cold.reset();
    let stats = prune(&repo, &PruneOptions::default()).await.unwrap();
    assert_eq!(stats.cold_read_bytes, cold_pack_bytes);
    assert_eq!(tiers.cold.counts().read_bytes, cold_pack_bytes);
    assert_eq!(
        repo.read_blob(&used.id).await.unwrap(),
        pseudo_random(200_000, 1)
    );
}

#[tokio::test]
async fn the_cold_tier_is_opened_only_when_data_is_needed() {
    let tiers = Tiers::new();
    let (_repo, _src, snap) = tiers.backed_up().await;

    // Recorded location unreachable (nothing there): trees still list.
    let nowhere = tempfile::tempdir().unwrap();
    let moved = nowhere.path().join("moved-away");
    let repo = Repository::open(tiers.hot.clone(), b"pw")
        .await
        .unwrap()
        .with_cold_location(moved.display().to_string())
        .unwrap();
    let repo = Arc::new(repo);
    let listed = lifeboat_snapshot::ls::ls(&repo, &snap, b"/", true)
        .await
        .unwrap();
    assert!(!listed.is_empty());
    assert!(!moved.exists(), "listing created the cold directory");
    // Reading data goes to the (empty) cold location, which holds no marker
    // while the index names data packs there: an unmounted or moved tier,
    // reported as unreachable (not as missing packs), and not created.
    let index = repo.index().await.unwrap();
    let id = index
        .blobs()
        .find(|l| l.entry.blob_type == BlobType::Data)
        .unwrap()
        .entry
        .id;
    let err = repo.read_blob(&id).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("cold tier unreachable"), "{err}");
    assert!(!moved.exists(), "reading created the cold directory");
}

#[tokio::test]
async fn init_refuses_a_cold_tier_that_is_not_its_own_empty_place() {
    let mem = MemoryStorage::new();
    let hot: DynStorage = Arc::new(mem.clone());
    // The same storage as hot.
    let err = Repository::init(
        hot.clone(),
        b"pw",
        InitOptions {
            cold: Some(ColdInit {
                location: "same".into(),
                storage: hot.clone(),
            }),
            ..options()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("another location"), "{err}");

    // A cold storage that is itself a repository.
    let other = MemoryStorage::new();
    let other_dyn: DynStorage = Arc::new(other.clone());
    Repository::init(other_dyn.clone(), b"pw", options())
        .await
        .unwrap();
    let err = Repository::init(
        Arc::new(MemoryStorage::new()),
        b"pw",
        InitOptions {
            cold: Some(ColdInit {
                location: "other".into(),
                storage: other_dyn,
            }),
            ..options()
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("holds a lifeboat repository"),
        "{err}"
    );
    // Nothing was written to the refused repository's storage.
    assert!(mem.list(Kind::Config).await.unwrap().is_empty());
    // A hot-only repository has no cold tier to attach.
    let plain = Repository::open(Arc::new(other.clone()), b"pw")
        .await
        .unwrap();
    assert!(
        plain
            .with_cold_storage(Arc::new(MemoryStorage::new()))
            .is_err()
    );
}

#[tokio::test]
async fn copy_into_and_out_of_a_cold_repository_keeps_the_tiers() {
    let tiers = Tiers::new();
    let cold_repo = tiers.init().await;
    let hot_mem = MemoryStorage::new();
    let hot_repo = Arc::new(
        Repository::init(Arc::new(hot_mem.clone()), b"pw", options())
            .await
            .unwrap(),
    );
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    backup_dir(&hot_repo, src.path()).await;

    // Into the cold repository: its data packs land in the cold tier.
    let stats = lifeboat_repo::copy(
        &hot_repo,
        &cold_repo,
        &lifeboat_repo::CopyOptions::default(),
        &(),
    )
    .await
    .unwrap();
    assert_eq!(stats.snapshots_copied, 1);
    let cold_types = pack_types(&cold_repo, &tiers.cold_mem).await;
    assert!(cold_types.len() >= 3, "{cold_types:?}");
    assert!(
        cold_types
            .iter()
            .all(|t| t.len() == 1 && t.contains("Data"))
    );
    let hot_types = pack_types(&cold_repo, &tiers.hot_mem).await;
    assert!(hot_types.iter().all(|t| t.len() == 1 && t.contains("Tree")));

    // Out of it again, into a fresh hot-only repository: reads cold data.
    let back = Arc::new(
        Repository::init(Arc::new(MemoryStorage::new()), b"pw", options())
            .await
            .unwrap(),
    );
    tiers.cold.reset();
    let stats = lifeboat_repo::copy(
        &cold_repo,
        &back,
        &lifeboat_repo::CopyOptions::default(),
        &(),
    )
    .await
    .unwrap();
    assert_eq!(stats.snapshots_copied, 1);
    assert!(tiers.cold.counts().read_bytes > 4_000_000);
    let snap = back.find_snapshot("latest").await.unwrap();
    assert_eq!(
        restore_and_read(&back, &snap, src.path(), "a/big.bin").await,
        pseudo_random(2_500_000, 1)
    );
}

#[tokio::test]
async fn repair_index_reads_both_tiers_and_check_names_a_pack_in_the_wrong_tier() {
    let tiers = Tiers::new();
    let (repo, _src, _) = tiers.backed_up().await;
    let before = repo.load_index().await.unwrap();

    // Index lost: repair rebuilds it from the trailers of both tiers.
    for info in tiers.hot_mem.list(Kind::Index).await.unwrap() {
        tiers.hot_mem.delete(&info.key).await.unwrap();
    }
    tiers.cold.reset();
    let stats = lifeboat_repo::repair::repair_index(&repo).await.unwrap();
    assert_eq!(stats.blobs_indexed, before.blob_count(), "{stats:?}");
    assert!(tiers.cold.counts().reads > 0, "repair reads cold trailers");
    assert_eq!(
        repo.load_index().await.unwrap().blob_count(),
        before.blob_count()
    );
    assert!(
        check(&repo, &CheckOptions::default(), &|_, _| {})
            .await
            .unwrap()
            .is_ok()
    );

    // A data pack moved into the hot tier cannot be read where readers
    // look for it: check says so.
    let moved = tiers.cold_mem.list(Kind::Packs).await.unwrap()[0]
        .key
        .clone();
    let bytes = tiers.cold_mem.get(&moved).await.unwrap();
    tiers.hot_mem.put(&moved, bytes).await.unwrap();
    tiers.cold_mem.delete(&moved).await.unwrap();
    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.object.contains(moved.name()) && e.message.contains("hot tier")),
        "{:?}",
        report.errors
    );
}
