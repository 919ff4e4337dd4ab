//! The audit log against in-memory storage: every mutating operation is
//! recorded, and each kind of tampering (deleted, edited, renamed, forged
//! record; truncated log) is detected by `verify`; concurrent writers fork
//! and the next append joins them.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use lifeboat_repo::audit::{self, AuditRecord, Entry, Severity, VerifyReport};
use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::retention::{ForgetOptions, RetentionPolicy, forget};
use lifeboat_repo::{
    BackupMode, BlobType, Id, Repository, SnapshotRecord, Tree, WriteOptions, WriteSession,
};
use lifeboat_storage::{Kind, MemoryStorage, ObjectKey, Storage};

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::{memory_repo as new_repo, reopen};

/// One state directory for the whole test binary (the witness directory is
/// process-wide; witnesses are per repository id, so tests do not meet).
fn state_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let d = DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        audit::set_witness_dir(Some(d.path().to_path_buf()));
        d
    });
    d.path().to_path_buf()
}

fn record(tree: Id, n: u8) -> SnapshotRecord {
    SnapshotRecord {
        time: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(100 - n as i64),
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

async fn backup(repo: &Arc<Repository>, n: u8) -> Id {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    session.add_blob(BlobType::Data, &[n; 5000]).await.unwrap();
    let tree = session
        .add_blob(BlobType::Tree, &Tree::default().encode())
        .await
        .unwrap()
        .id;
    session.finish(record(tree, n)).await.unwrap()
}

/// The audit objects, sorted by name.
async fn audit_objects(mem: &MemoryStorage) -> Vec<ObjectKey> {
    let mut v: Vec<ObjectKey> = mem
        .list(Kind::Audit)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    v.sort();
    v
}

fn errors(r: &VerifyReport) -> Vec<&str> {
    r.findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.message.as_str())
        .collect()
}

/// A repository with init, three backups and a forget in its log.
async fn logged_repo() -> (MemoryStorage, Arc<Repository>) {
    state_dir();
    let (mem, repo) = new_repo().await;
    for n in 1..=3 {
        backup(&repo, n).await;
    }
    forget(
        &repo,
        &RetentionPolicy {
            keep_last: Some(2),
            ..Default::default()
        },
        &ForgetOptions::default(),
    )
    .await
    .unwrap();
    (mem, repo)
}

#[tokio::test]
async fn every_operation_is_recorded_in_order_and_the_log_verifies() {
    let (_mem, repo) = logged_repo().await;
    prune(&repo, &PruneOptions::default()).await.unwrap();
    let log = audit::read_log(&repo).await.unwrap();
    let ops: Vec<&str> = log.records.iter().map(|r| r.record.op.as_str()).collect();
    assert_eq!(
        ops,
        ["init", "backup", "backup", "backup", "forget", "prune"]
    );
    let heights: Vec<u64> = log.records.iter().map(|r| r.record.height).collect();
    assert_eq!(heights, [0, 1, 2, 3, 4, 5]);
    // Each names the one before.
    for w in log.records.windows(2) {
        assert_eq!(w[1].record.prev, vec![w[0].id]);
    }
    let forget = &log.records[4].record;
    assert_eq!(forget.snapshots.len(), 1);
    assert_eq!(forget.forgotten.len(), 1, "what the snapshot was");
    assert_eq!(forget.forgotten[0].paths, vec!["/x".to_string()]);
    assert_eq!(forget.args["policy"]["keep_last"], 2);
    let prune = &log.records[5].record;
    assert!(prune.bytes_deleted > 0, "prune says what it deletes");
    assert!(!forget.host.is_empty() && forget.version.starts_with("lifeboat "));

    let report = audit::verify(&repo, &[]).await.unwrap();
    assert!(errors(&report).is_empty(), "{:?}", report.findings);
    assert_eq!(report.records, 6);
}

#[tokio::test]
async fn a_deleted_record_is_detected() {
    let (mem, repo) = logged_repo().await;
    let objects = audit_objects(&mem).await;
    // The second backup's record, in the middle.
    mem.delete(&objects[2]).await.unwrap();
    let report = audit::verify(&*reopen(Arc::new(mem.clone())).await, &[])
        .await
        .unwrap();
    let e = errors(&report);
    assert!(
        e.iter()
            .any(|m| m.contains("which is missing: a record was deleted")),
        "{e:?}"
    );
    drop(repo);
}

#[tokio::test]
async fn an_edited_record_is_detected() {
    let (mem, _repo) = logged_repo().await;
    let objects = audit_objects(&mem).await;
    let mut bytes = mem.get(&objects[1]).await.unwrap().to_vec();
    bytes[30] ^= 1;
    mem.delete(&objects[1]).await.unwrap();
    mem.put(&objects[1], Bytes::from(bytes)).await.unwrap();
    let report = audit::verify(&*reopen(Arc::new(mem.clone())).await, &[])
        .await
        .unwrap();
    let e = errors(&report);
    assert!(e.iter().any(|m| m.contains("edited")), "{e:?}");
}

#[tokio::test]
async fn a_forged_record_is_detected() {
    let (mem, repo) = logged_repo().await;
    // Without the key: random bytes under a well-formed name.
    let junk = vec![7u8; 200];
    let name = audit::object_name(5, &Id::of_bytes(&junk));
    mem.put(&ObjectKey::new(Kind::Audit, name), Bytes::from(junk))
        .await
        .unwrap();
    // With another repository's key: a real record that is not ours.
    let (_, other) = new_repo().await;
    let forged = AuditRecord {
        height: 6,
        prev: vec![],
        time: jiff::Timestamp::now(),
        host: "x".into(),
        user: "x".into(),
        version: "x".into(),
        op: "backup".into(),
        args: Default::default(),
        snapshots: vec![],
        bytes_deleted: 0,
        forgotten: vec![],
        witness: None,
    }
    .encode(other.key());
    let name = audit::object_name(6, &Id::of_bytes(&forged));
    mem.put(&ObjectKey::new(Kind::Audit, name), Bytes::from(forged))
        .await
        .unwrap();
    let report = audit::verify(&repo, &[]).await.unwrap();
    let e = errors(&report);
    assert_eq!(
        e.iter()
            .filter(|m| m.contains("forged or damaged") && m.contains("authentication failed"))
            .count(),
        2,
        "{e:?}"
    );
    // Appending still works, past the planted objects.
    audit::append(&repo, Entry::new("test")).await.unwrap();
}

#[tokio::test]
async fn a_reordered_record_is_detected() {
    let (mem, repo) = logged_repo().await;
    let objects = audit_objects(&mem).await;
    // Move the first backup's record to another height.
    let bytes = mem.get(&objects[1]).await.unwrap();
    let (_, id) = audit::parse_name(objects[1].name()).unwrap();
    mem.delete(&objects[1]).await.unwrap();
    mem.put(
        &ObjectKey::new(Kind::Audit, audit::object_name(9, &id)),
        bytes,
    )
    .await
    .unwrap();
    let report = audit::verify(&repo, &[]).await.unwrap();
    let e = errors(&report);
    assert!(
        e.iter().any(|m| m.contains("renamed or reordered")),
        "{e:?}"
    );
}

#[tokio::test]
async fn truncation_is_detected_by_witnesses_and_only_by_them() {
    let (mem, repo) = logged_repo().await;
    let objects = audit_objects(&mem).await;
    let last = objects.last().unwrap().clone();
    let (height, id) = audit::parse_name(last.name()).unwrap();
    mem.delete(&last).await.unwrap();

    // This machine wrote the newest record and remembers it.
    let report = audit::verify(&repo, &[]).await.unwrap();
    let e = errors(&report);
    assert!(
        e.iter()
            .any(|m| m.contains("not in the log: the log was truncated or rewritten")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains(": truncated")), "{e:?}");

    // Without that memory the shorter log is a valid log: what an attacker
    // counts on.
    let witness_file = state_dir()
        .join("audit")
        .join(format!("{}.json", repo.config().repository_id.to_hex()));
    std::fs::remove_file(&witness_file).unwrap();
    let alone = audit::verify(&repo, &[]).await.unwrap();
    assert!(errors(&alone).is_empty(), "{:?}", alone.findings);

    // A copy target's heads catch it.
    std::fs::remove_file(&witness_file).unwrap();
    let copy_target = audit::ExternalHeads {
        source: "copy target".into(),
        heads: audit::AuditHeads {
            repository: repo.config().repository_id,
            height,
            heads: vec![id],
        },
        seen: None,
    };
    let with_copy = audit::verify(&repo, &[copy_target]).await.unwrap();
    assert!(
        errors(&with_copy)
            .iter()
            .any(|m| m.starts_with("copy target remembers record")),
        "{:?}",
        with_copy.findings
    );
}

#[tokio::test]
async fn concurrent_appends_fork_and_the_next_append_joins_them() {
    state_dir();
    let (mem, repo) = new_repo().await;
    audit::append(&repo, Entry::new("a")).await.unwrap();
    // Two writers that listed the same log: both name the same head and
    // land at the same height. The second is written by hand, as a writer
    // racing the first would have.
    let log = audit::read_log(&repo).await.unwrap();
    let head = log.records.last().unwrap().clone();
    audit::append(&repo, Entry::new("b")).await.unwrap();
    let sibling = AuditRecord {
        height: head.record.height + 1,
        prev: vec![head.id],
        time: jiff::Timestamp::now(),
        host: "other".into(),
        user: "u".into(),
        version: "lifeboat test".into(),
        op: "c".into(),
        args: Default::default(),
        snapshots: vec![],
        bytes_deleted: 0,
        forgotten: vec![],
        witness: None,
    }
    .encode(repo.key());
    let sid = Id::of_bytes(&sibling);
    mem.put(
        &ObjectKey::new(
            Kind::Audit,
            audit::object_name(head.record.height + 1, &sid),
        ),
        Bytes::from(sibling),
    )
    .await
    .unwrap();
    let forked = audit::verify(&repo, &[]).await.unwrap();
    assert!(errors(&forked).is_empty(), "{:?}", forked.findings);
    assert_eq!(forked.heads.len(), 2, "a fork has two heads");

    let joined = audit::append(&repo, Entry::new("d")).await.unwrap();
    let log = audit::read_log(&repo).await.unwrap();
    let d = log.records.iter().find(|r| r.id == joined).unwrap();
    assert_eq!(d.record.prev.len(), 2, "the join names both branches");
    assert!(d.record.prev.contains(&sid));
    let report = audit::verify(&repo, &[]).await.unwrap();
    assert!(errors(&report).is_empty(), "{:?}", report.findings);
    assert_eq!(report.heads, vec![joined]);
}

#[tokio::test]
async fn a_snapshot_without_a_record_is_a_warning() {
    let (mem, repo) = logged_repo().await;
    // A record written around the log (a key holder writing directly).
    let planted = record(Id([9; 32]), 100);
    repo.write_snapshot(&planted).await.unwrap();
    let report = audit::verify(&*reopen(Arc::new(mem)).await, &[])
        .await
        .unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.severity == Severity::Warning && f.message.contains("no audit record")),
        "{:?}",
        report.findings
    );
}

/// A forget whose deletes the storage refuses (append-only credentials, a
/// `lifeboat serve` client that may not delete) must not leave a log that
/// claims them: the forget record (written first) is followed by a
/// `forget-refused` record naming the snapshots still there.
#[tokio::test]
async fn a_forget_the_storage_refuses_is_recorded_as_refused() {
    use lifeboat_storage::ErrorKind;
    use lifeboat_testkit::faulty::{FaultPlan, FaultyStorage, Op};
    state_dir();
    let (mem, repo) = new_repo().await;
    for n in 1..=3 {
        backup(&repo, n).await;
    }
    // The second snapshot record delete is refused.
    let faulty = FaultyStorage::new(
        Arc::new(mem.clone()),
        FaultPlan::new(1).fail_nth_of_kind(
            Op::Delete,
            Kind::Snapshots,
            2,
            ErrorKind::PermissionDenied,
        ),
    );
    let repo = reopen(Arc::new(faulty)).await;
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    let e = forget(&repo, &policy, &ForgetOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    let left: Vec<Id> = repo
        .snapshots()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left.len(), 2, "one deleted, one refused, one kept");

    let log = audit::read_log(&repo).await.unwrap();
    let ops: Vec<&str> = log.records.iter().map(|r| r.record.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "init",
            "backup",
            "backup",
            "backup",
            "forget",
            "forget-refused"
        ]
    );
    let (forget_rec, refused) = (&log.records[4], &log.records[5].record);
    assert_eq!(forget_rec.record.snapshots.len(), 2);
    assert_eq!(refused.args["forget"], forget_rec.id.to_hex());
    assert!(
        refused.args["error"].as_str().unwrap().contains("injected"),
        "{:?}",
        refused.args
    );
    // Exactly the snapshot the storage kept, which is still listed.
    assert_eq!(refused.snapshots.len(), 1);
    assert!(left.contains(&refused.snapshots[0]));
    assert!(forget_rec.record.snapshots.contains(&refused.snapshots[0]));
    let report = audit::verify(&repo, &[]).await.unwrap();
    assert!(errors(&report).is_empty(), "{:?}", report.findings);
}

/// `forget ID` deletes records too: it is logged first, like a forget by
/// policy, with what the snapshot was.
#[tokio::test]
async fn forget_by_id_is_recorded_before_it_deletes() {
    state_dir();
    let (_mem, repo) = new_repo().await;
    let first = backup(&repo, 1).await;
    backup(&repo, 2).await;
    let short = first.to_hex()[..10].to_string();
    lifeboat_repo::retention::forget_records(&repo, std::slice::from_ref(&short), false)
        .await
        .unwrap();
    let log = audit::read_log(&repo).await.unwrap();
    let last = &log.records.last().unwrap().record;
    assert_eq!(last.op, "forget");
    assert_eq!(last.snapshots, vec![first]);
    assert_eq!(last.forgotten.len(), 1);
    assert_eq!(last.forgotten[0].id, first);
    assert_eq!(last.args["ids"], serde_json::json!([short]));
}

/// Witnesses of several repositories written at the same time by threads
/// of one process (the daemon's parallel jobs; this file's tests under
/// `cargo test`) each keep their own records: with one temporary file name
/// per process they were renamed over each other, and `verify` then saw
/// another repository's records as truncated ones.
#[test]
fn witnesses_written_at_once_by_one_process_stay_apart() {
    state_dir();
    let repositories: Vec<Id> = (0..8u8).map(|r| Id::of_bytes(&[b'w', r])).collect();
    let ids = |repository: &Id, n: u64| Id::of_bytes(format!("{repository:?} {n}").as_bytes());
    std::thread::scope(|scope| {
        for repository in &repositories {
            scope.spawn(move || {
                for n in 0..40 {
                    audit::Witness::remember(repository, n, &[ids(repository, n)]).unwrap();
                }
            });
        }
    });
    for repository in &repositories {
        let w = audit::Witness::load(repository).unwrap();
        assert_eq!(w.heads.height, 39, "{}", w.source);
        let own: Vec<Id> = (0..40).map(|n| ids(repository, n)).collect();
        assert!(!w.heads.heads.is_empty());
        for head in &w.heads.heads {
            assert!(
                own.contains(head),
                "{} holds {head:?} of another repository",
                w.source
            );
        }
    }
}
