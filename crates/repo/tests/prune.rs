//! Locks, retention and prune against in-memory storage.
//!
//! Lock tests inject a clock, so expiry is tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lifeboat_repo::lock::{LockInfo, list_locks};
use lifeboat_repo::{
    Error, InitOptions, KdfParams, LockKind, LockOptions, Repository, RepositoryLock, WriteOptions,
    WriteSession,
};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey, Storage};

fn init_options() -> InitOptions {
    InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        ..Default::default()
    }
}

async fn new_repo() -> (MemoryStorage, Arc<Repository>) {
    let mem = MemoryStorage::new();
    let storage: DynStorage = Arc::new(mem.clone());
    let repo = Repository::init(storage, b"pw", init_options())
        .await
        .unwrap();
    (mem, Arc::new(repo))
}

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
