//! A repository or cold tier that vanishes (a directory moved, a disk
//! unmounted, even lazily) is reported as unreachable: nothing is written
//! to wherever the location used to be, and no snapshot is reported saved
//! (issue 12, item 3). Also: a cold tier made before location markers keeps
//! working and gets its marker on the next write. And read commands work
//! with storage that refuses every write (read-only credentials).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::{CheckOptions, ColdInit, InitOptions, Repository, check};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{
    Capabilities, DynStorage, ErrorClass, Kind, LocalStorage, MemoryStorage, ObjectInfo, ObjectKey,
    Result, Storage,
};
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{init_options, small_chunks};
use lifeboat_testkit::tmpfs::Tmpfs;

type Action = Box<dyn FnOnce() + Send>;

/// Forwards every call; runs `action` once, when the `nth` put of `kind`
/// comes (before forwarding it when `before`, after it otherwise).
struct Tripwire {
    inner: DynStorage,
    kind: Kind,
    nth: usize,
    before: bool,
    seen: AtomicUsize,
    action: Mutex<Option<Action>>,
}

impl std::fmt::Debug for Tripwire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tripwire({:?})", self.inner)
    }
}

impl Tripwire {
    fn new(inner: DynStorage, kind: Kind, nth: usize, before: bool, action: Action) -> Arc<Self> {
        Arc::new(Tripwire {
            inner,
            kind,
            nth,
            before,
            seen: AtomicUsize::new(0),
            action: Mutex::new(Some(action)),
        })
    }

    fn fire(&self) {
        if let Some(a) = self.action.lock().unwrap().take() {
            a();
        }
    }

    fn fired(&self) -> bool {
        self.action.lock().unwrap().is_none()
    }
}

#[async_trait]
impl Storage for Tripwire {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        let hit =
            key.kind() == self.kind && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth;
        if hit && self.before {
            self.fire();
        }
        let r = self.inner.put(key, data).await;
        if hit && !self.before {
            self.fire();
        }
        r
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.inner.stat(key).await
    }
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.inner.list(kind).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }
}

fn options() -> InitOptions {
    InitOptions {
        chunker: Some(small_chunks(3)),
        ..init_options()
    }
}

/// A few MiB in several files: several data packs.
fn source(dir: &Path, seed: u64) -> PathBuf {
    let src = dir.join(format!("src-{seed}"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("f{i}.bin")),
            pseudo_random(1_500_000, seed * 10 + i),
        )
        .unwrap();
    }
    src
}

fn backup_options(src: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![src.to_path_buf()],
        host: Some("h".into()),
        threads: Some(1),
        ..Default::default()
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

async fn init_local(root: &Path) -> Arc<Repository> {
    Arc::new(
        Repository::init(Arc::new(LocalStorage::new(root)), b"pw", options())
            .await
            .unwrap(),
    )
}

async fn open_with(storage: DynStorage) -> Arc<Repository> {
    Arc::new(Repository::open(storage, b"pw").await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_moved_mid_backup_is_unreachable_and_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let moved = dir.path().join("moved");
    init_local(&root).await;
    let src = source(dir.path(), 1);
    let (from, to) = (root.clone(), moved.clone());
    let wire = Tripwire::new(
        Arc::new(LocalStorage::new(&root)),
        Kind::Packs,
        2,
        true,
        Box::new(move || std::fs::rename(&from, &to).unwrap()),
    );
    let repo = open_with(wire.clone()).await;
    let err = backup(repo, &backup_options(&src), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(wire.fired(), "the directory was never moved");
    assert_eq!(err.class(), ErrorClass::Unreachable, "{err}");
    assert!(!root.exists(), "the backup recreated the moved repository");
    let real = open_with(Arc::new(LocalStorage::new(&moved))).await;
    assert!(real.snapshots().await.unwrap().is_empty());
    // (Its lock object stays where the repository went, out of reach; it
    // names a process that has ended, so it is stale on this host at once.)
}

/// The repository's disk is a tmpfs that is lazily unmounted mid-backup:
/// its mount point stays, empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_unmounted_mid_backup_is_unreachable_and_nothing_lands_on_the_mount_point() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let Some(_fs) = Tmpfs::mount(&mnt, "64m", "repository unmounted mid-backup") else {
        return;
    };
    init_local(&mnt).await;
    let src = source(dir.path(), 2);
    let point = mnt.clone();
    let wire = Tripwire::new(
        Arc::new(LocalStorage::new(&mnt)),
        Kind::Packs,
        2,
        true,
        Box::new(move || umount_lazy(&point)),
    );
    let repo = open_with(wire.clone()).await;
    let result = backup(repo, &backup_options(&src), Arc::new(NoProgress)).await;
    assert!(wire.fired(), "the disk was never unmounted");
    let err = result.expect_err("a backup into an unmounted disk reported success");
    assert_eq!(err.class(), ErrorClass::Unreachable, "{err}");
    assert!(
        files_in(&mnt).is_empty() && std::fs::read_dir(&mnt).unwrap().count() == 0,
        "the backup wrote to the empty mount point: {:?}",
        files_in(&mnt)
    );
}

/// A backend that recreates a vanished location by itself (SFTP and object
/// stores create parents on write): everything is gone after the index is
/// written, so the snapshot record must not be reported saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_emptied_before_the_record_is_written_saves_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    Repository::init(Arc::new(mem.clone()), b"pw", options())
        .await
        .unwrap();
    let src = source(dir.path(), 3);
    let wiped = mem.clone();
    let wire = Tripwire::new(
        Arc::new(mem.clone()),
        Kind::Index,
        1,
        false,
        Box::new(move || {
            let rt = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                rt.block_on(async {
                    for kind in Kind::ALL {
                        for o in wiped.list(kind).await.unwrap() {
                            wiped.delete(&o.key).await.unwrap();
                        }
                    }
                })
            })
            .join()
            .unwrap();
        }),
    );
    let repo = open_with(wire.clone()).await;
    let err = backup(repo, &backup_options(&src), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(wire.fired());
    assert_eq!(err.class(), ErrorClass::Unreachable, "{err}");
    assert!(mem.list(Kind::Snapshots).await.unwrap().is_empty());
}

/// A repository whose cold tier is at `cold` (a local directory).
async fn cold_repo(hot: &Path, cold: &Path) -> Arc<Repository> {
    Arc::new(
        Repository::init(
            Arc::new(LocalStorage::new(hot)),
            b"pw",
            InitOptions {
                cold: Some(ColdInit {
                    location: cold.display().to_string(),
                    storage: Arc::new(LocalStorage::new(cold)),
                }),
                ..options()
            },
        )
        .await
        .unwrap(),
    )
}

fn hot_state(hot: &Path) -> Vec<PathBuf> {
    files_in(hot)
        .into_iter()
        .filter(|p| !p.starts_with(hot.join("locks")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_cold_tier_is_unreachable_for_every_command_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (hot, cold) = (dir.path().join("hot"), dir.path().join("cold"));
    let repo = cold_repo(&hot, &cold).await;
    assert!(cold.join("marker").is_file(), "init wrote no cold marker");
    let src = source(dir.path(), 4);
    backup(repo, &backup_options(&src), Arc::new(NoProgress))
        .await
        .unwrap();
    std::fs::rename(&cold, dir.path().join("cold-away")).unwrap();
    let before = hot_state(&hot);
    let expect_unreachable = |what: &str, class: ErrorClass, msg: String| {
        assert_eq!(class, ErrorClass::Unreachable, "{what}: {msg}");
        assert!(
            msg.contains("cold tier unreachable (use --cold-location)"),
            "{what}: {msg}"
        );
    };

    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    let src2 = source(dir.path(), 5);
    let err = backup(repo.clone(), &backup_options(&src2), Arc::new(NoProgress))
        .await
        .unwrap_err();
    expect_unreachable("backup", err.class(), err.to_string());

    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    let err = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap_err();
    expect_unreachable("check", err.class(), err.to_string());

    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    let err = prune(&repo, &PruneOptions::default()).await.unwrap_err();
    expect_unreachable("prune", err.class(), err.to_string());

    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    let snap = repo.find_snapshot("latest").await.unwrap();
    let target = dir.path().join("target");
    let err = restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap_err();
    expect_unreachable("restore", err.class(), err.to_string());
    assert!(files_in(&target).is_empty(), "restore wrote files");

    assert!(!cold.exists(), "the cold tier was recreated");
    assert_eq!(hot_state(&hot), before, "the hot tier was written to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_tier_unmounted_mid_backup_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (hot, cold) = (dir.path().join("hot"), dir.path().join("cold"));
    let Some(_fs) = Tmpfs::mount(&cold, "64m", "cold tier unmounted mid-backup") else {
        return;
    };
    cold_repo(&hot, &cold).await;
    let point = cold.clone();
    let wire = Tripwire::new(
        Arc::new(LocalStorage::new(&cold)),
        Kind::Packs,
        2,
        true,
        Box::new(move || umount_lazy(&point)),
    );
    let repo = Arc::new(
        Repository::open(Arc::new(LocalStorage::new(&hot)), b"pw")
            .await
            .unwrap()
            .with_cold_storage(wire.clone())
            .unwrap(),
    );
    let src = source(dir.path(), 6);
    let result = backup(repo, &backup_options(&src), Arc::new(NoProgress)).await;
    assert!(wire.fired(), "the cold tier was never unmounted");
    let err = result.expect_err("a backup into an unmounted cold tier reported success");
    assert_eq!(err.class(), ErrorClass::Unreachable, "{err}");
    assert_eq!(std::fs::read_dir(&cold).unwrap().count(), 0);
    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    assert!(repo.snapshots().await.unwrap().is_empty());
}

/// Cold tiers made before location markers: accepted while they hold packs
/// (and given a marker by the next backup); an empty one where the index
/// names data packs is a moved or unmounted tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_tier_without_a_marker_still_opens_and_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let (hot, cold) = (dir.path().join("hot"), dir.path().join("cold"));
    let repo = cold_repo(&hot, &cold).await;
    backup(
        repo,
        &backup_options(&source(dir.path(), 7)),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    std::fs::remove_file(cold.join("marker")).unwrap();
    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(!cold.join("marker").exists(), "a read wrote the marker");
    backup(
        repo,
        &backup_options(&source(dir.path(), 8)),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(cold.join("marker").is_file(), "the backup wrote no marker");

    // Without marker and without packs, while the index names data packs.
    std::fs::remove_dir_all(&cold).unwrap();
    std::fs::create_dir(&cold).unwrap();
    let repo = open_with(Arc::new(LocalStorage::new(&hot))).await;
    let err = backup(
        repo,
        &backup_options(&source(dir.path(), 9)),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unreachable, "{err}");
    assert_eq!(std::fs::read_dir(&cold).unwrap().count(), 0);
}

fn umount_lazy(at: &Path) {
    let status = std::process::Command::new("umount")
        .arg("-l")
        .arg(at)
        .status()
        .unwrap();
    assert!(status.success(), "umount -l {}", at.display());
}

/// Storage that refuses every write, as read-only credentials do.
#[derive(Debug)]
struct ReadOnly(DynStorage);

#[async_trait]
impl Storage for ReadOnly {
    fn location(&self) -> String {
        self.0.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn put(&self, key: &ObjectKey, _: Bytes) -> Result<()> {
        Err(lifeboat_storage::Error::new(
            lifeboat_storage::ErrorKind::PermissionDenied,
            format!("read-only: put {key}"),
        ))
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.0.get_range(key, offset, len).await
    }
    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.0.stat(key).await
    }
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.0.list(kind).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        Err(lifeboat_storage::Error::new(
            lifeboat_storage::ErrorKind::PermissionDenied,
            format!("read-only: delete {key}"),
        ))
    }
}

/// `snapshots`, `ls`, `restore` and `check` (without repair) never write:
/// they work with read-only storage credentials, on both tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_work_on_read_only_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (hot, cold) = (dir.path().join("hot"), dir.path().join("cold"));
    let repo = cold_repo(&hot, &cold).await;
    let src = source(dir.path(), 10);
    backup(repo, &backup_options(&src), Arc::new(NoProgress))
        .await
        .unwrap();
    let repo = Arc::new(
        Repository::open(Arc::new(ReadOnly(Arc::new(LocalStorage::new(&hot)))), b"pw")
            .await
            .unwrap()
            .with_cold_storage(Arc::new(ReadOnly(Arc::new(LocalStorage::new(&cold)))))
            .unwrap(),
    );
    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let listed = lifeboat_snapshot::ls::ls(&repo, &snaps[0], b"/", true)
        .await
        .unwrap();
    assert!(listed.len() >= 4, "{}", listed.len());
    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let target = dir.path().join("target");
    restore(
        &repo,
        &snaps[0],
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(files_in(&target).len(), 4);
}
