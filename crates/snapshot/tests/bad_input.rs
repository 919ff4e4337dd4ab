//! Rows of the bad-input table in docs/reliability.md that need a storage
//! misbehaving on cue (`FaultyStorage`, `CrashStorage`) or a clock that
//! went backwards: each checks the error the operation reports and that the
//! snapshots made before are untouched (listed, restore byte for byte,
//! `check --read-data` passes). The messages printed with `--nocapture` are
//! the ones quoted in the table; the CLI prints them after `lifeboat:
//! error:` with the exit code of crates/cli/src/exit.rs for the error kind.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_repo::{
    BackupMode, CheckOptions, CopyOptions, Repository, Snapshot, WriteOptions, WriteSession, check,
    copy,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_storage::{DynStorage, ErrorKind, MemoryStorage, RetryPolicy, RetryStorage, Storage};
use lifeboat_testkit::crash::CrashStorage;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::faulty::{FaultPlan, FaultyStorage, Op, PutFailure};
use lifeboat_testkit::repo::{PASSWORD, assert_check_ok, init_options};

mod common;
use common::restore_to_temp;

const PW: &[u8] = PASSWORD;

fn source(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..6 {
        fs::write(
            dir.join(format!("f{i}")),
            pseudo_random(150_000, seed * 100 + i),
        )
        .unwrap();
    }
    fs::write(dir.join("sub/g"), pseudo_random(900_000, seed)).unwrap();
}

fn opts(dir: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![dir.to_path_buf()],
        host: Some("h".into()),
        threads: Some(2),
        ..Default::default()
    }
}

/// A repository with one snapshot of `src`, and that snapshot.
async fn repo_with_snapshot(src: &Path) -> (MemoryStorage, Snapshot) {
    let mem = MemoryStorage::new();
    let repo = Repository::init(Arc::new(mem.clone()), PW, init_options())
        .await
        .unwrap();
    source(src, 1);
    let s = backup(Arc::new(repo), &opts(src), Arc::new(NoProgress))
        .await
        .unwrap()
        .snapshot;
    (mem, s)
}

/// The snapshots before are all there, restore byte for byte (to `src` as
/// it was), and `check --read-data` passes.
async fn assert_untouched(mem: &MemoryStorage, before: &[Snapshot], src_copy: &Path) {
    let repo = Arc::new(Repository::open(Arc::new(mem.clone()), PW).await.unwrap());
    let now = repo.snapshots().await.unwrap();
    for s in before {
        let found = now.iter().find(|n| n.id == s.id).expect("snapshot kept");
        let target = restore_to_temp(&repo, found).await;
        let root = target
            .path()
            .join(s.record.paths[0].trim_start_matches('/'));
        for name in ["f0", "f3", "f5", "sub/g"] {
            assert_eq!(
                fs::read(root.join(name)).unwrap(),
                fs::read(src_copy.join(name)).unwrap(),
                "{name} of {}",
                s.id
            );
        }
    }
    assert_check_ok(&repo).await;
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Copies the source aside, so later changes do not hide what a snapshot
/// must restore to.
fn keep_copy(src: &Path, to: &Path) {
    for name in ["f0", "f3", "f5", "sub/g"] {
        fs::create_dir_all(to.join("sub")).unwrap();
        fs::copy(src.join(name), to.join(name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_unreachable_mid_backup_fails_and_keeps_existing_snapshots() {
    let t = tmp();
    let src = t.path().join("src");
    let (mem, first) = repo_with_snapshot(&src).await;
    keep_copy(&src, &t.path().join("copy"));
    source(&src, 2);
    // The storage goes away after n calls, at many points of the backup.
    for n in [3, 8, 12, 16, 20, 25] {
        let storage: DynStorage = Arc::new(FaultyStorage::new(
            Arc::new(mem.clone()),
            FaultPlan::new(n).fail_from(n, ErrorKind::Unreachable),
        ));
        let err = match Repository::open(storage, PW).await {
            Ok(repo) => backup(Arc::new(repo), &opts(&src), Arc::new(NoProgress))
                .await
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            Err(e) => e.to_string(),
        };
        eprintln!("unreachable from call {n}: {err}");
        assert!(err.contains("injected Unreachable failure"), "{err}");
        assert_untouched(&mem, std::slice::from_ref(&first), &t.path().join("copy")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_500_and_503_are_retried_and_the_backup_succeeds() {
    let t = tmp();
    let src = t.path().join("src");
    let (mem, first) = repo_with_snapshot(&src).await;
    keep_copy(&src, &t.path().join("copy1"));
    source(&src, 3);
    // One call in five fails as a 5xx does (transient); half of the failed
    // puts still stored their object (the reply was lost).
    let faulty = FaultyStorage::new(
        Arc::new(mem.clone()),
        Op::ALL
            .iter()
            .fold(FaultPlan::new(17), |p, op| {
                p.rate(*op, 0.2, ErrorKind::Transient)
            })
            .put_failure(PutFailure::After),
    );
    let storage: DynStorage = Arc::new(RetryStorage::new(
        Arc::new(faulty.clone()),
        RetryPolicy {
            max_attempts: 8,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(8),
        },
    ));
    let repo = Arc::new(Repository::open(storage, PW).await.unwrap());
    let second = backup(repo, &opts(&src), Arc::new(NoProgress))
        .await
        .expect("transient errors are retried")
        .snapshot;
    assert!(faulty.injected().len() >= 3, "{}", faulty.injected().len());
    keep_copy(&src, &t.path().join("copy2"));
    assert_untouched(&mem, std::slice::from_ref(&first), &t.path().join("copy1")).await;
    assert_untouched(&mem, &[second], &t.path().join("copy2")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_persistent_503_fails_after_retries_and_keeps_existing_snapshots() {
    let t = tmp();
    let src = t.path().join("src");
    let (mem, first) = repo_with_snapshot(&src).await;
    keep_copy(&src, &t.path().join("copy"));
    source(&src, 4);
    let storage: DynStorage = Arc::new(RetryStorage::new(
        Arc::new(FaultyStorage::new(
            Arc::new(mem.clone()),
            FaultPlan::new(1).fail_from(12, ErrorKind::Transient),
        )),
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
    ));
    let repo = Arc::new(Repository::open(storage, PW).await.unwrap());
    let err = backup(repo, &opts(&src), Arc::new(NoProgress))
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    eprintln!("persistent 503: {err}");
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    assert_untouched(&mem, &[first], &t.path().join("copy")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_copy_leaves_the_target_consistent_and_a_rerun_completes() {
    let t = tmp();
    let src = t.path().join("src");
    let (mem_a, first) = repo_with_snapshot(&src).await;
    keep_copy(&src, &t.path().join("copy"));
    let source_repo = Arc::new(Repository::open(Arc::new(mem_a.clone()), PW).await.unwrap());
    // Count the calls an uninterrupted copy makes on the target.
    let probe = MemoryStorage::new();
    Repository::init(Arc::new(probe.clone()), PW, init_options())
        .await
        .unwrap();
    let counting = CrashStorage::new(Arc::new(probe.clone()), 0);
    let target = Arc::new(
        Repository::open(Arc::new(counting.clone()), PW)
            .await
            .unwrap(),
    );
    copy(&source_repo, &target, &CopyOptions::default(), &())
        .await
        .unwrap();
    let calls = counting.calls();
    assert!(calls > 10, "{calls}");
    // A power cut at every call of the copy.
    let mut unreached = 0;
    for cut in 1..=calls {
        let mem_b = MemoryStorage::new();
        Repository::init(Arc::new(mem_b.clone()), PW, init_options())
            .await
            .unwrap();
        let crash = CrashStorage::new(Arc::new(mem_b.clone()), cut).crash_at(cut);
        let r = match Repository::open(Arc::new(crash.clone()), PW).await {
            Ok(target) => copy(
                &source_repo,
                &Arc::new(target),
                &CopyOptions::default(),
                &(),
            )
            .await
            .map(|_| ()),
            Err(e) => Err(e),
        };
        // A copy's call count varies a little from run to run (a lock
        // refresh, the order of parallel puts), so a cut near the end may
        // not be reached; one that was reached must fail the copy, unless
        // it fell on the audit record written after the copy's work (a
        // failure there is a warning: the copy is whole), which then must
        // be missing: only init's record is in the target's log. A cut on
        // the record's own put may have landed it (the write reached the
        // storage, the answer did not): then the copy is whole and logged.
        let landed_audit = crash.crashed().is_some_and(|c| {
            c.op == "put"
                && c.key.as_ref().map(|k| k.kind()) == Some(lifeboat_storage::Kind::Audit)
                && c.outcome.starts_with("landed")
        });
        if r.is_ok() && !landed_audit {
            if crash.calls() >= cut {
                let audit = mem_b
                    .list(lifeboat_storage::Kind::Audit)
                    .await
                    .unwrap()
                    .len();
                assert_eq!(
                    audit,
                    1,
                    "cut at call {cut} of {calls} was reached ({} calls) and the copy still \
                     succeeded, with its audit record written",
                    crash.calls()
                );
            } else {
                unreached += 1;
            }
        }
        if cut == calls / 2 {
            eprintln!("copy interrupted at call {cut}: {}", r.unwrap_err());
        }
        // The target is consistent: whatever copy is there restores.
        let target = Arc::new(Repository::open(Arc::new(mem_b.clone()), PW).await.unwrap());
        let report = check(&target, &CheckOptions::default(), &|_, _| {})
            .await
            .unwrap();
        assert!(report.is_ok(), "cut {cut}: {:?}", report.errors);
        // The rerun finishes, and the copy restores byte for byte.
        let stats = copy(&source_repo, &target, &CopyOptions::default(), &())
            .await
            .unwrap();
        assert!(stats.snapshots_copied + stats.snapshots_skipped == 1);
        let copies = target.snapshots().await.unwrap();
        assert_eq!(copies.len(), 1, "cut {cut}: exactly one copy");
        assert_untouched(&mem_b, &copies, &t.path().join("copy")).await;
    }
    assert!(
        unreached <= 2,
        "{unreached} of {calls} cuts were never reached"
    );
    assert_untouched(&mem_a, &[first], &t.path().join("copy")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clock_moved_backwards_keeps_every_snapshot() {
    let t = tmp();
    let src = t.path().join("src");
    let (mem, first) = repo_with_snapshot(&src).await;
    keep_copy(&src, &t.path().join("copy"));
    let repo = Arc::new(Repository::open(Arc::new(mem.clone()), PW).await.unwrap());
    // A snapshot written after the first one, by a host whose clock is two
    // days behind: its record's time is earlier than the first snapshot's.
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let mut record = first.record.clone();
    record.time = first.record.time - jiff::SignedDuration::from_hours(48);
    record.mode = BackupMode::Full;
    record.parent = None;
    let older = session.finish(record).await.unwrap();
    let all = repo.snapshots().await.unwrap();
    assert_eq!(all.len(), 2);
    // Listed oldest first by recorded time: the skewed one comes first, and
    // `latest` is still the first snapshot.
    assert_eq!(all[0].id, older);
    assert_eq!(all[1].id, first.id);
    // An incremental backup picks the newest by recorded time as parent and
    // still stores a complete snapshot.
    let third = backup(
        repo.clone(),
        &BackupOptions {
            mode: BackupMode::Incremental,
            ..opts(&src)
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap()
    .snapshot;
    assert_eq!(third.record.parent, Some(first.id));
    assert_untouched(&mem, &all, &t.path().join("copy")).await;
    assert_untouched(&mem, &[third], &t.path().join("copy")).await;
}
