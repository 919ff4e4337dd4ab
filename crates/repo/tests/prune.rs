//! Locks, retention and prune against in-memory storage.
//!
//! Lock tests inject a clock, so expiry is tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lifeboat_repo::lock::{LockInfo, list_locks};
use lifeboat_repo::prune::{PruneOptions, PruneStats, prune};
use lifeboat_repo::retention::{ForgetOptions, RetentionPolicy, forget};
use lifeboat_repo::{
    BackupMode, BlobType, Error, Id, LockKind, LockOptions, Node, NodeKind, Repository,
    RepositoryLock, SnapshotRecord, Time, Tree, WriteOptions, WriteSession,
};
use lifeboat_storage::{Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::wait::wait_until_async;

/// How long background work (an upload, a lock release) may take before a
/// test gives up waiting for it: far beyond normal, for a loaded machine.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

// testkit's repository fixtures, compiled into this test binary: through
// testkit's `repo` feature they would make lifeboat-repo a dev-dependency
// of itself.
#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::memory_repo as new_repo;

/// A settable clock (seconds since the epoch) and lock options that read it.
fn clock_options(host: &str, pid: u32) -> (Arc<AtomicI64>, LockOptions) {
    // Starts at the real time, so sessions on the system clock agree.
    let t = Arc::new(AtomicI64::new(jiff::Timestamp::now().as_second()));
    let c = t.clone();
    let options = LockOptions {
        clock: Arc::new(move || jiff::Timestamp::from_second(c.load(Ordering::SeqCst)).unwrap()),
        host: host.into(),
        pid,
        ..Default::default()
    };
    (t, options)
}

async fn lock_count(mem: &MemoryStorage) -> usize {
    mem.list(Kind::Locks).await.unwrap().len()
}

#[tokio::test]
async fn exclusive_lock_blocks_shared_and_shared_blocks_exclusive() {
    let (mem, repo) = new_repo().await;
    let (_, a) = clock_options("host-a", 100);
    let (_, b) = clock_options("host-b", 200);

    let shared = RepositoryLock::acquire(&repo, LockKind::Shared, &a)
        .await
        .unwrap();
    // Shared locks coexist.
    let shared2 = RepositoryLock::acquire(&repo, LockKind::Shared, &b)
        .await
        .unwrap();
    let err = RepositoryLock::acquire(&repo, LockKind::Exclusive, &b)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(msg.contains("a backup on host-"), "{msg}");
    assert!(msg.contains("try again later"), "{msg}");
    // The failed attempt removed its own object.
    assert_eq!(lock_count(&mem).await, 2);
    shared.release().await.unwrap();
    shared2.release().await.unwrap();
    assert_eq!(lock_count(&mem).await, 0);

    let excl = RepositoryLock::acquire(&repo, LockKind::Exclusive, &a)
        .await
        .unwrap();
    let err = RepositoryLock::acquire(&repo, LockKind::Shared, &b)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a prune on host-a (pid 100)"),
        "{err}"
    );
    let err = RepositoryLock::acquire(&repo, LockKind::Exclusive, &b)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }));
    // A write session (a backup) is refused too, and leaves no lock behind.
    let err = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert_eq!(lock_count(&mem).await, 1);
    excl.release().await.unwrap();
    WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap()
        .flush()
        .await
        .unwrap();
    assert_eq!(lock_count(&mem).await, 0, "flush releases the lock");
}

#[tokio::test]
async fn stale_locks_are_ignored() {
    let (_mem, repo) = new_repo().await;
    let (t_a, a) = clock_options("host-a", 100);
    let (t_b, b) = clock_options("host-b", 200);
    // Host a takes a shared lock and then stops refreshing (we never call
    // refresh and the background interval is 5 minutes of real time).
    let _held = RepositoryLock::acquire(&repo, LockKind::Shared, &a)
        .await
        .unwrap();
    // 29 minutes later it still counts.
    t_b.store(t_a.load(Ordering::SeqCst) + 29 * 60, Ordering::SeqCst);
    assert!(
        RepositoryLock::acquire(&repo, LockKind::Exclusive, &b)
            .await
            .is_err()
    );
    // 31 minutes later it is stale.
    t_b.store(t_a.load(Ordering::SeqCst) + 31 * 60, Ordering::SeqCst);
    let excl = RepositoryLock::acquire(&repo, LockKind::Exclusive, &b)
        .await
        .unwrap();
    excl.release().await.unwrap();
}

#[tokio::test]
async fn refreshing_keeps_a_lock_alive_and_never_rewrites_in_place() {
    let (mem, repo) = new_repo().await;
    let (t_a, a) = clock_options("host-a", 100);
    let (t_b, b) = clock_options("host-b", 200);
    let start = t_a.load(Ordering::SeqCst);
    let held = RepositoryLock::acquire(&repo, LockKind::Shared, &a)
        .await
        .unwrap();
    let before: Vec<ObjectKey> = mem
        .list(Kind::Locks)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    for _ in 0..10 {
        t_a.fetch_add(5 * 60, Ordering::SeqCst);
        held.refresh().await.unwrap();
    }
    let after: Vec<ObjectKey> = mem
        .list(Kind::Locks)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(after.len(), 1, "old lock objects are deleted");
    assert_ne!(before, after, "a refresh writes a new object");
    let found = list_locks(repo.storage(), repo.key()).await.unwrap();
    let info: &LockInfo = found[0].info.as_ref().unwrap();
    assert_eq!(info.refreshed.as_second(), t_a.load(Ordering::SeqCst));
    assert_eq!(info.created.as_second(), start);
    // 50 minutes after it was taken, the refreshed lock still blocks prune.
    t_b.store(t_a.load(Ordering::SeqCst) + 60, Ordering::SeqCst);
    assert!(
        RepositoryLock::acquire(&repo, LockKind::Exclusive, &b)
            .await
            .is_err()
    );
    held.verify().await.unwrap();
    held.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_not_refreshed_in_time_is_lost() {
    let (mem, repo) = new_repo().await;
    let (t_a, a) = clock_options("host-a", 100);
    let held = RepositoryLock::acquire(&repo, LockKind::Shared, &a)
        .await
        .unwrap();
    held.verify().await.unwrap();
    // Suspended for 40 minutes: others may have pruned meanwhile.
    t_a.fetch_add(40 * 60, Ordering::SeqCst);
    let err = held.verify().await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    // Refreshing now does not make it trustworthy again.
    held.refresh().await.unwrap();
    assert!(held.verify().await.is_err());
    held.release().await.unwrap();

    // A lock whose object was removed (by a prune that thought it stale).
    let held = RepositoryLock::acquire(&repo, LockKind::Shared, &a)
        .await
        .unwrap();
    for o in mem.list(Kind::Locks).await.unwrap() {
        mem.delete(&o.key).await.unwrap();
    }
    assert!(held.verify().await.is_err());
}

#[tokio::test]
async fn a_lock_of_a_dead_process_on_this_host_is_stale() {
    let (_mem, repo) = new_repo().await;
    // pid beyond any pid_max: not running.
    let (_, dead) = clock_options("this-host", u32::MAX - 1);
    let (_, me) = clock_options("this-host", std::process::id());
    let (_, other_host) = clock_options("other-host", std::process::id());
    let _left = RepositoryLock::acquire(&repo, LockKind::Exclusive, &dead)
        .await
        .unwrap();
    // Same host: its process is gone, so the lock is ignored.
    let s = RepositoryLock::acquire(&repo, LockKind::Shared, &me)
        .await
        .unwrap();
    s.release().await.unwrap();
    // Another host cannot tell, so it waits for the lock to age.
    assert!(
        RepositoryLock::acquire(&repo, LockKind::Shared, &other_host)
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------- prune

/// Incompressible bytes, distinct per `seed`.
fn blob(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn file_node(name: &str, content: Vec<Id>) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: Time::default(),
        ctime: Time::default(),
        dev: 0,
        inode: 0,
        links: 1,
        size: 0,
        content,
        subtree: None,
        link_target: None,
        xattrs: vec![],
    }
}

/// Writes a snapshot of one file made of the blobs with these seeds (100 KB
/// each); returns its id.
async fn snapshot_of(repo: &Arc<Repository>, seeds: &[u64], time: &str) -> Id {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for s in seeds {
        ids.push(
            session
                .add_blob(BlobType::Data, &blob(*s, 100_000))
                .await
                .unwrap()
                .id,
        );
    }
    let tree = Tree {
        nodes: vec![file_node("f", ids)],
    };
    let tree = session
        .add_blob(BlobType::Tree, &tree.encode())
        .await
        .unwrap()
        .id;
    session
        .finish(SnapshotRecord {
            time: time.parse().unwrap(),
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
        })
        .await
        .unwrap()
}

/// Every blob of these seeds reads back intact.
async fn assert_readable(repo: &Arc<Repository>, seeds: impl IntoIterator<Item = u64>) {
    repo.invalidate_index().await;
    for s in seeds {
        let data = blob(s, 100_000);
        let got = repo.read_blob(&repo.key().blob_id(&data)).await.unwrap();
        assert!(got == data, "blob {s} differs after prune");
    }
}

async fn assert_check_clean(repo: &Arc<Repository>) {
    let report = fixtures::assert_check_ok(repo).await;
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

async fn run_prune(repo: &Arc<Repository>, options: PruneOptions) -> PruneStats {
    prune(repo, &options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_data_of_forgotten_snapshots_and_keeps_the_rest() {
    let (mem, repo) = new_repo().await;
    // 1 MiB packs: each snapshot's 12 blobs of 100 KB fill one pack and part
    // of another; blobs 100..104 are shared.
    let old: Vec<u64> = (1..=8).chain(100..104).collect();
    let new: Vec<u64> = (11..=18).chain(100..104).collect();
    snapshot_of(&repo, &old, "2025-01-01T00:00:00Z").await;
    snapshot_of(&repo, &new, "2025-01-02T00:00:00Z").await;
    let packs_before = mem.list(Kind::Packs).await.unwrap().len();
    let bytes_before: u64 = mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .iter()
        .map(|o| o.size_bytes)
        .sum();

    // Nothing is unused yet: prune changes nothing.
    let stats = run_prune(&repo, PruneOptions::default()).await;
    assert_eq!(stats.blobs_unused, 0);
    assert_eq!(stats.freed_bytes, 0);
    assert_eq!(mem.list(Kind::Packs).await.unwrap().len(), packs_before);

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
    assert_eq!((report.kept, report.removed), (1, 1));
    // forget removes records only.
    assert_eq!(mem.list(Kind::Packs).await.unwrap().len(), packs_before);

    let dry = run_prune(
        &repo,
        PruneOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    // 8 data blobs and the forgotten snapshot's tree.
    assert_eq!(dry.blobs_unused, 9);
    assert_eq!(mem.list(Kind::Packs).await.unwrap().len(), packs_before);

    let stats = run_prune(&repo, PruneOptions::default()).await;
    assert_eq!(stats.blobs_unused, 9);
    assert!(stats.packs_deleted + stats.packs_repacked > 0, "{stats:?}");
    let bytes_after: u64 = mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .iter()
        .map(|o| o.size_bytes)
        .sum();
    assert!(
        bytes_after < bytes_before - 700_000,
        "{bytes_before} -> {bytes_after}"
    );
    assert_eq!(bytes_before - bytes_after, stats.freed_bytes, "{stats:?}");
    assert_readable(&repo, new.iter().copied()).await;
    let index = repo.index().await.unwrap();
    for s in 1..=8 {
        assert!(!index.contains(BlobType::Data, &repo.key().blob_id(&blob(s, 100_000))));
    }
    assert_check_clean(&repo).await;
    assert!(mem.list(Kind::Locks).await.unwrap().is_empty());
    // A second prune finds nothing worth doing (an unused tree blob of a
    // few hundred bytes stays in a pack below the threshold).
    let again = run_prune(&repo, PruneOptions::default()).await;
    assert_eq!(
        (again.packs_deleted, again.packs_repacked, again.freed_bytes),
        (0, 0, 0),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repack_follows_max_unused_and_max_repack() {
    // One pack of 9 blobs (900 KB < 1 MiB): the snapshot that survives uses
    // 6 of them, so a third of the pack is unused.
    async fn setup() -> (MemoryStorage, Arc<Repository>) {
        let (mem, repo) = new_repo().await;
        snapshot_of(&repo, &(1..=9).collect::<Vec<_>>(), "2025-01-01T00:00:00Z").await;
        snapshot_of(&repo, &(1..=6).collect::<Vec<_>>(), "2025-01-02T00:00:00Z").await;
        let all = repo.snapshots().await.unwrap();
        mem.delete(&ObjectKey::new(Kind::Snapshots, all[0].id.to_hex()))
            .await
            .unwrap();
        // Tree and data blobs have separate packs: the first snapshot's
        // tree pack is now wholly unused. Delete it without repacking, so
        // only the data pack is left to decide on.
        let s = run_prune(
            &repo,
            PruneOptions {
                max_unused_percent: 100.0,
                ..Default::default()
            },
        )
        .await;
        assert_eq!((s.packs_deleted, s.packs_repacked), (1, 0), "{s:?}");
        (mem, repo)
    }
    let packs = |mem: &MemoryStorage| {
        let mem = mem.clone();
        async move {
            let mut v: Vec<String> = mem
                .list(Kind::Packs)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key.name().to_string())
                .collect();
            v.sort();
            v
        }
    };

    // Above the threshold: repacked.
    let (mem, repo) = setup().await;
    let before = packs(&mem).await;
    let s = run_prune(&repo, PruneOptions::default()).await;
    assert_eq!((s.packs_repacked, s.packs_deleted), (1, 0), "{s:?}");
    assert!(
        s.rewritten_bytes > 590_000 && s.rewritten_bytes < 610_000,
        "{s:?}"
    );
    // The big pack is replaced; the second snapshot's small tree pack stays.
    let after = packs(&mem).await;
    assert_eq!(after.len(), 2);
    assert_eq!(before.iter().filter(|p| after.contains(p)).count(), 1);
    assert_readable(&repo, 1..=6).await;
    assert_check_clean(&repo).await;

    // Threshold above the unused share (33 %): kept as is.
    let (mem, repo) = setup().await;
    let before = packs(&mem).await;
    let s = run_prune(
        &repo,
        PruneOptions {
            max_unused_percent: 40.0,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (s.packs_repacked, s.packs_deleted, s.freed_bytes),
        (0, 0, 0)
    );
    assert!(s.unused_bytes_kept > 290_000, "{s:?}");
    assert_eq!(packs(&mem).await, before);

    // Repack budget smaller than the pack: kept as is.
    let (mem, repo) = setup().await;
    let before = packs(&mem).await;
    let s = run_prune(
        &repo,
        PruneOptions {
            max_repack_bytes: Some(500_000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(s.packs_repacked, 0, "{s:?}");
    assert_eq!(packs(&mem).await, before);
    assert_readable(&repo, 1..=6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_unindexed_leftovers_and_stale_locks_and_waits_for_backups() {
    let (mem, repo) = new_repo().await;
    snapshot_of(&repo, &[1, 2, 3], "2025-01-01T00:00:00Z").await;
    let packs_before = mem.list(Kind::Packs).await.unwrap().len();
    // A crashed backup: its pack uploaded, no index object, no snapshot.
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for s in 50..62 {
        session
            .add_blob(BlobType::Data, &blob(s, 100_000))
            .await
            .unwrap();
    }
    // Let the full pack upload, then crash (drop without flush).
    wait_until_async(WAIT, "the session's full pack is uploaded", || async {
        mem.list(Kind::Packs).await.unwrap().len() > packs_before
    })
    .await;
    // While the session runs, prune is refused.
    let err = prune(&repo, &PruneOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(session);
    // Dropping releases the session's lock in the background.
    wait_until_async(WAIT, "the crashed session's lock is released", || async {
        lock_count(&mem).await == 0
    })
    .await;
    // A stale lock of a crashed process elsewhere.
    let (t, other) = clock_options("elsewhere", 1);
    t.fetch_sub(3600, Ordering::SeqCst);
    let left = RepositoryLock::acquire(&repo, LockKind::Shared, &other)
        .await
        .unwrap();
    std::mem::forget(left);
    let index = repo.load_index().await.unwrap();
    let unindexed = mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| !index.has_pack(&Id::from_hex(o.key.name()).unwrap()))
        .count();
    assert_eq!(unindexed, 1);
    let s = run_prune(&repo, PruneOptions::default()).await;
    assert_eq!(s.packs_unindexed_deleted, 1, "{s:?}");
    assert_eq!(s.stale_locks_removed, 1, "{s:?}");
    assert!(mem.list(Kind::Locks).await.unwrap().is_empty());
    assert_readable(&repo, [1, 2, 3]).await;
    assert_check_clean(&repo).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_refuses_when_a_snapshot_record_is_damaged() {
    let (mem, repo) = new_repo().await;
    snapshot_of(&repo, &[1, 2], "2025-01-01T00:00:00Z").await;
    let snap = snapshot_of(&repo, &[3, 4], "2025-01-02T00:00:00Z").await;
    let key = ObjectKey::new(Kind::Snapshots, snap.to_hex());
    let mut bytes = mem.snapshot()[&key].to_vec();
    bytes[30] ^= 1;
    mem.tamper(&key, bytes.into());
    let before = mem.snapshot().len();
    let err = prune(&repo, &PruneOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("every snapshot record"), "{err}");
    // Nothing deleted (the blobs of the damaged snapshot may be needed),
    // and the lock is gone.
    assert_eq!(mem.snapshot().len(), before);
    assert!(mem.list(Kind::Locks).await.unwrap().is_empty());
}
