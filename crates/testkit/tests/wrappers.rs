//! The fault and crash wrappers themselves: each kind of fault happens when
//! the plan says, and only then; a clean plan passes the conformance suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::{DynStorage, ErrorKind, Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::conformance::{self, key, test_bytes};
use lifeboat_testkit::crash::{CrashStorage, InFlight};
use lifeboat_testkit::faulty::{FaultPlan, FaultyStorage, InjectedKind, Op, PutFailure};

fn mem() -> (MemoryStorage, DynStorage) {
    let m = MemoryStorage::new();
    let d: DynStorage = Arc::new(m.clone());
    (m, d)
}

#[tokio::test]
async fn faulty_with_an_empty_plan_passes_conformance() {
    let (_, inner) = mem();
    let s = FaultyStorage::new(inner, FaultPlan::new(1));
    conformance::run_all(Arc::new(s.clone())).await;
    assert!(s.injected().is_empty());
    assert!(s.calls() > 20);
}

#[tokio::test]
async fn crash_storage_without_a_cut_passes_conformance() {
    let (_, inner) = mem();
    let s = CrashStorage::new(inner, 1);
    conformance::run_all(Arc::new(s.clone())).await;
    assert!(s.crashed().is_none());
}

#[tokio::test]
async fn fail_nth_fails_exactly_that_call() {
    let (m, inner) = mem();
    let s = FaultyStorage::new(
        inner,
        FaultPlan::new(1).fail_nth(Op::Put, 2, ErrorKind::Transient),
    );
    s.put(&key(Kind::Packs, 1), Bytes::from_static(b"a"))
        .await
        .unwrap();
    let err = s
        .put(&key(Kind::Packs, 2), Bytes::from_static(b"b"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("injected"), "{err}");
    s.put(&key(Kind::Packs, 3), Bytes::from_static(b"c"))
        .await
        .unwrap();
    // A failure "before" stored nothing.
    assert_eq!(m.snapshot().len(), 2);
    assert!(!m.snapshot().contains_key(&key(Kind::Packs, 2)));
    let inj = s.injected();
    assert_eq!(inj.len(), 1);
    assert_eq!(inj[0].key, Some(key(Kind::Packs, 2)));
    assert_eq!(
        inj[0].what,
        InjectedKind::Error(ErrorKind::Transient, Some(PutFailure::Before))
    );
}

#[tokio::test]
async fn put_failure_after_stores_the_object_and_still_fails() {
    let (m, inner) = mem();
    let s = FaultyStorage::new(
        inner,
        FaultPlan::new(1)
            .fail_nth(Op::Put, 1, ErrorKind::Transient)
            .put_failure(PutFailure::After),
    );
    let k = key(Kind::Index, 7);
    assert!(s.put(&k, Bytes::from_static(b"x")).await.is_err());
    assert_eq!(m.snapshot().get(&k).unwrap().as_ref(), b"x");
}

#[tokio::test]
async fn fail_from_makes_every_later_call_fail() {
    let (_, inner) = mem();
    let s = FaultyStorage::new(
        inner,
        FaultPlan::new(1).fail_from(3, ErrorKind::Unreachable),
    );
    s.list(Kind::Packs).await.unwrap();
    s.stat(&key(Kind::Packs, 1)).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            s.list(Kind::Packs).await.unwrap_err().kind(),
            ErrorKind::Unreachable
        );
    }
    assert_eq!(s.injected().len(), 5);
}

#[tokio::test]
async fn rate_is_seeded_and_roughly_right() {
    async fn run(seed: u64) -> Vec<bool> {
        let (_, inner) = mem();
        let s = FaultyStorage::new(
            inner,
            FaultPlan::new(seed).rate(Op::Stat, 0.3, ErrorKind::Transient),
        );
        let mut out = Vec::new();
        for i in 0..1000 {
            out.push(s.stat(&key(Kind::Packs, i)).await.is_err());
            // Other kinds are untouched.
            s.list(Kind::Packs).await.unwrap();
        }
        out
    }
    let a = run(42).await;
    assert_eq!(a, run(42).await, "same seed, same faults");
    assert_ne!(a, run(43).await, "another seed, other faults");
    let failed = a.iter().filter(|f| **f).count();
    assert!((200..400).contains(&failed), "{failed} of 1000 at rate 0.3");
}

#[tokio::test]
async fn short_reads_return_fewer_bytes_and_are_recorded() {
    let (_, inner) = mem();
    let s = FaultyStorage::new(inner, FaultPlan::new(5).short_reads(1.0));
    let k = key(Kind::Packs, 9);
    s.put(&k, test_bytes(1, 1000)).await.unwrap();
    let got = s.get_range(&k, 100, 500).await.unwrap();
    assert!(got.len() < 500);
    match &s.injected()[0].what {
        InjectedKind::ShortRead { asked, returned } => {
            assert_eq!((*asked, *returned as usize), (500, got.len()));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hang_waits_then_fails_as_transient() {
    let (_, inner) = mem();
    let s = FaultyStorage::new(
        inner,
        FaultPlan::new(1).hang_nth(Op::Get, 1, Duration::from_millis(200)),
    );
    let k = key(Kind::Snapshots, 1);
    s.put(&k, Bytes::from_static(b"s")).await.unwrap();
    let t = Instant::now();
    let err = s.get(&k).await.unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(s.get(&k).await.unwrap().as_ref(), b"s");
}

#[tokio::test]
async fn latency_delays_every_call() {
    let (_, inner) = mem();
    let s = FaultyStorage::new(inner, FaultPlan::new(1).latency(Duration::from_millis(30)));
    let t = Instant::now();
    for _ in 0..3 {
        s.list(Kind::Locks).await.unwrap();
    }
    assert!(t.elapsed() >= Duration::from_millis(90));
}

#[tokio::test]
async fn lagging_list_hides_recent_puts_and_says_so() {
    let (_, inner) = mem();
    let s = FaultyStorage::new(inner, FaultPlan::new(1).list_lag(2));
    assert!(!s.capabilities().list_after_write);
    for i in 0..5 {
        s.put(&key(Kind::Locks, i), Bytes::from_static(b"l"))
            .await
            .unwrap();
    }
    let listed: Vec<ObjectKey> = s
        .list(Kind::Locks)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(!listed.contains(&key(Kind::Locks, 4)));
    assert!(!listed.contains(&key(Kind::Locks, 3)));
    assert!(matches!(s.injected()[0].what, InjectedKind::Lagged(2)));
}

#[tokio::test]
async fn crash_keeps_returned_puts_and_kills_later_calls() {
    let (m, inner) = mem();
    // Calls: put 1, put 2, put 3 (in flight, lost), then dead.
    let s = CrashStorage::new(inner, 1)
        .crash_at(3)
        .in_flight(InFlight::Lost);
    for i in 1..=2 {
        s.put(&key(Kind::Packs, i), test_bytes(i, 100))
            .await
            .unwrap();
    }
    let err = s
        .put(&key(Kind::Packs, 3), test_bytes(3, 100))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert_eq!(
        s.get(&key(Kind::Packs, 1)).await.unwrap_err().kind(),
        ErrorKind::Unreachable
    );
    let report = s.crashed().unwrap();
    assert_eq!((report.call, report.op), (3, "put"));
    let survived = m.snapshot();
    assert_eq!(survived.len(), 2);
    assert_eq!(survived[&key(Kind::Packs, 2)], test_bytes(2, 100));
}

#[tokio::test]
async fn in_flight_put_lands_whole_or_not_at_all() {
    let mut landed = 0;
    for seed in 0..40 {
        let (m, inner) = mem();
        let s = CrashStorage::new(inner, seed).crash_at(1);
        let data = test_bytes(seed, 5000);
        assert!(s.put(&key(Kind::Packs, 1), data.clone()).await.is_err());
        if let Some(b) = m.snapshot().get(&key(Kind::Packs, 1)) {
            assert_eq!(*b, data, "never a prefix");
            landed += 1;
        }
    }
    assert!(
        (5..35).contains(&landed),
        "both outcomes happen: {landed}/40"
    );
}

#[tokio::test]
async fn torn_put_leaves_a_prefix() {
    let (m, inner) = mem();
    let s = CrashStorage::new(inner, 3)
        .crash_at(1)
        .in_flight(InFlight::Torn);
    let data = test_bytes(1, 5000);
    assert!(s.put(&key(Kind::Packs, 1), data.clone()).await.is_err());
    let stored = m.snapshot()[&key(Kind::Packs, 1)].clone();
    assert!(stored.len() < data.len());
    assert_eq!(stored, data.slice(..stored.len()));
}

#[tokio::test]
async fn lossy_deletes_come_back_after_a_cut() {
    let (m, inner) = mem();
    let s = CrashStorage::new(inner, 11).lossy_deletes().crash_at(41);
    for i in 0..20 {
        s.put(&key(Kind::Snapshots, i), test_bytes(i, 10))
            .await
            .unwrap();
    }
    for i in 0..20 {
        s.delete(&key(Kind::Snapshots, i)).await.unwrap();
    }
    assert!(m.snapshot().is_empty());
    assert!(s.list(Kind::Snapshots).await.is_err());
    let back = s.crashed().unwrap().undone_deletes;
    assert!(!back.is_empty() && back.len() < 20, "{}", back.len());
    assert_eq!(m.snapshot().len(), back.len());
}

async fn scheduled_run(seed: u64) -> Vec<String> {
    let (_, inner) = mem();
    let sched = lifeboat_testkit::sim::Scheduler::new(seed);
    let mut tasks = Vec::new();
    let actors: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| sched.actor(n, inner.clone()))
        .collect();
    for (i, (storage, guard)) in actors.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let _guard = guard;
            for j in 0..4 {
                storage
                    .put(&key(Kind::Packs, (i * 10 + j) as u64), test_bytes(1, 10))
                    .await
                    .unwrap();
                storage.list(Kind::Packs).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    sched.trace()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn scheduler_is_deterministic_per_seed_and_explores() {
    let a = scheduled_run(9).await;
    assert_eq!(a.len(), 24, "every call ran once: {a:?}");
    assert_eq!(a, scheduled_run(9).await, "same seed, same schedule");
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..20 {
        distinct.insert(scheduled_run(seed).await);
    }
    assert!(distinct.len() > 15, "{} schedules of 20", distinct.len());
    // Each actor's own calls stay in program order.
    let puts_of_a: Vec<&String> = a.iter().filter(|l| l.starts_with("a: put")).collect();
    let mut sorted = puts_of_a.clone();
    sorted.sort();
    assert_eq!(puts_of_a, sorted);
}
