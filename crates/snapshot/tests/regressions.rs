//! Regression tests for bugs found by the reliability harness
//! (docs/reliability.md), each named after what broke.

mod common;
use common::backup_snapshot;

use std::fs;
use std::sync::Arc;

use lifeboat_repo::Repository;
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::DynStorage;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::faulty::{FaultPlan, FaultyStorage};
use lifeboat_testkit::repo::{default_options, memory_repo_with};

/// Found by `random_ops` (a restore step under short reads): a `get_range`
/// that returned fewer bytes than asked made a restore worker panic while
/// slicing the range ("range end index … out of range"). Now the short
/// read is a per-file error naming the cause, and nothing wrong is written.
#[tokio::test(flavor = "multi_thread")]
async fn regression_restore_panicked_on_short_range_read() {
    let (mem, repo) = memory_repo_with(default_options()).await;
    let src = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for i in 0..4 {
        fs::write(src.path().join(format!("f{i}")), pseudo_random(50_000, i)).unwrap();
    }
    let snap = backup_snapshot(&repo, src.path().to_path_buf()).await;

    let faulty: DynStorage = Arc::new(FaultyStorage::new(
        Arc::new(mem.clone()),
        FaultPlan::new(7)
            .short_reads(1.0)
            .short_reads_from_len(40_000),
    ));
    let repo = Arc::new(Repository::open(faulty, b"pw").await.unwrap());
    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stats = restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .expect("a short read is a per-file problem, not a crash of the restore");
    assert_eq!(stats.errors.len(), 4, "{:?}", stats.errors);
    for e in &stats.errors {
        assert!(e.contains("short read"), "{e}");
    }
    // Damaged files are removed, never left with wrong bytes.
    let under = target.path().join(src.path().strip_prefix("/").unwrap());
    for i in 0..4 {
        assert!(!under.join(format!("f{i}")).exists());
    }
}

/// Found by `crates/cli/tests/prune.rs` (backups and prunes in a loop): a
/// backup read the index (to read its parent snapshot) while a prune was
/// replacing it; an index object listed a moment before was gone when read,
/// and the backup failed with "object index/… not found". Now the backup
/// takes its lock before reading anything, and an index object that
/// vanishes between the listing and the read makes the listing be read
/// again (prune writes the new index objects before deleting the old).
#[tokio::test(flavor = "multi_thread")]
async fn regression_backup_racing_prune_failed_on_a_vanished_index_object() {
    use lifeboat_storage::{ErrorKind, Kind};
    use lifeboat_testkit::faulty::Op;
    let (mem, repo) = memory_repo_with(default_options()).await;
    let src = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::write(src.path().join("f"), pseudo_random(50_000, 1)).unwrap();
    let opts = BackupOptions {
        paths: vec![src.path().to_path_buf()],
        ..Default::default()
    };
    backup(repo, &opts, Arc::new(NoProgress)).await.unwrap();

    // The first index object read "vanishes" after the listing.
    let faulty = Arc::new(FaultyStorage::new(
        Arc::new(mem.clone()),
        FaultPlan::new(1).fail_nth_of_kind(Op::Get, Kind::Index, 1, ErrorKind::NotFound),
    ));
    let repo = Arc::new(Repository::open(faulty.clone(), b"pw").await.unwrap());
    let out = backup(repo.clone(), &opts, Arc::new(NoProgress))
        .await
        .unwrap();
    let injected = faulty.injected();
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert_eq!(
        injected[0].key.as_ref().map(|k| k.kind()),
        Some(Kind::Index),
        "{injected:?}"
    );
    assert_eq!(out.snapshot.record.summary.files_unchanged, 1);
}

/// Issue 12: a crafted snapshot whose hard-link group (two names, one
/// device and inode, `links = 2`) holds different contents used to restore
/// the first name's bytes for both, while `dump` returned the second's and
/// `check --read-data` passed. Now `check` names the group, and restore
/// gives each name its own contents, as `dump` does.
#[tokio::test(flavor = "multi_thread")]
async fn regression_crafted_hard_link_group_with_different_contents() {
    use lifeboat_repo::{BlobType, CheckOptions, Id, WriteOptions, WriteSession, check};
    use lifeboat_snapshot::dump::dump;
    let (_, repo) = memory_repo_with(default_options()).await;
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let first = b"the first name's bytes\n".to_vec();
    let second = b"the second name's other bytes\n".to_vec();
    let file = |name: &str, content: Id, size: usize| file_node(name, vec![content], size, 42, 2);
    let a = session.add_blob(BlobType::Data, &first).await.unwrap().id;
    let b = session.add_blob(BlobType::Data, &second).await.unwrap().id;
    let nodes = vec![file("a", a, first.len()), file("b", b, second.len())];
    let snap = finish_crafted(&repo, session, nodes).await;

    let report = check(
        &repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.contains("different contents")),
        "{:?}",
        report.errors
    );

    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap();
    for (name, bytes) in [("a", &first), ("b", &second)] {
        let mut dumped = Vec::new();
        dump(&repo, &snap, format!("/{name}").as_bytes(), &mut dumped)
            .await
            .unwrap();
        assert_eq!(&dumped, bytes, "dump of {name}");
        assert_eq!(
            &fs::read(target.path().join(name)).unwrap(),
            bytes,
            "restore of {name}"
        );
    }
}

/// A file's node for a crafted tree: `size` bytes in blobs `content`,
/// inode `inode` of device 7 with `links` names.
fn file_node(
    name: &str,
    content: Vec<lifeboat_repo::Id>,
    size: usize,
    inode: u64,
    links: u64,
) -> lifeboat_repo::Node {
    use lifeboat_repo::Time;
    lifeboat_repo::Node {
        name: name.as_bytes().to_vec(),
        kind: lifeboat_repo::NodeKind::File,
        mode: 0o644,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        user: None,
        group: None,
        mtime: Time {
            secs: 1_700_000_000,
            nanos: 0,
        },
        ctime: Time { secs: 0, nanos: 0 },
        dev: 7,
        inode,
        links,
        size: size as u64,
        content,
        subtree: None,
        link_target: None,
        xattrs: vec![],
    }
}

/// A snapshot whose files use a blob the index does not have (a damaged
/// or tampered repository): the restore's selection numbers blobs by their
/// index position and keeps such ids aside, so each file that uses one is
/// reported by the blob's id and not restored, the others are restored
/// whole, the plan counts the missing blobs, and two names of one inode
/// that both use the same missing blob are still one hard-linked file
/// (not "other contents").
#[tokio::test(flavor = "multi_thread")]
async fn restore_names_blobs_the_index_does_not_have() {
    use lifeboat_repo::{BlobType, Id, WriteOptions, WriteSession};
    let (_, repo) = memory_repo_with(default_options()).await;
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let kept = b"bytes the index has\n".to_vec();
    let a = session.add_blob(BlobType::Data, &kept).await.unwrap().id;
    let gone = Id([0xab; 32]);
    let nodes = vec![
        file_node("h1", vec![gone], 10, 50, 2),
        file_node("h2", vec![gone], 10, 50, 2),
        file_node("lost1", vec![a, gone], kept.len() + 10, 51, 1),
        file_node("lost2", vec![gone], 10, 52, 1),
        file_node("ok", vec![a], kept.len(), 53, 1),
    ];
    let snap = finish_crafted(&repo, session, nodes).await;

    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let options = RestoreOptions {
        target: target.path().to_path_buf(),
        ..Default::default()
    };
    let plan = lifeboat_snapshot::restore::plan(&repo, &snap, &options)
        .await
        .unwrap();
    assert_eq!((plan.files, plan.missing_blobs), (4, 3), "{plan:?}");

    let warnings = Warnings::default();
    let stats = restore(&repo, &snap, &options, &warnings).await.unwrap();
    assert_eq!(fs::read(target.path().join("ok")).unwrap(), kept);
    let gone_hex = gone.to_hex();
    for name in ["h1", "lost1", "lost2"] {
        assert!(
            stats.errors.iter().any(|e| e.contains(name)
                && e.contains(&gone_hex)
                && e.contains("not in the repository index")),
            "{name}: {:?}",
            stats.errors
        );
        assert!(!target.path().join(name).exists(), "{name} was left behind");
    }
    assert!(
        !target.path().join("h2").exists(),
        "h2 links to a file not restored"
    );
    assert_eq!(stats.files_restored, 1, "{stats:?}");
    let warned = warnings.0.lock().unwrap();
    assert!(
        !warned.iter().any(|w| w.contains("other contents")),
        "{warned:?}"
    );
}

/// Finishes `session` with a snapshot whose root tree holds `nodes` (a
/// crafted tree, written through the library) and returns the snapshot.
async fn finish_crafted(
    repo: &Arc<Repository>,
    session: lifeboat_repo::WriteSession,
    nodes: Vec<lifeboat_repo::Node>,
) -> lifeboat_repo::Snapshot {
    let tree = lifeboat_repo::Tree { nodes }.encode();
    let tree = session
        .add_blob(lifeboat_repo::BlobType::Tree, &tree)
        .await
        .unwrap()
        .id;
    let id = session.finish(record(tree)).await.unwrap();
    repo.find_snapshot(&id.to_hex()).await.unwrap()
}

/// A snapshot record of `tree`, for snapshots written through the library.
fn record(tree: lifeboat_repo::Id) -> lifeboat_repo::SnapshotRecord {
    lifeboat_repo::SnapshotRecord {
        time: jiff::Timestamp::now(),
        host: "h".into(),
        user: "u".into(),
        paths: vec!["/".into()],
        tags: vec![],
        tree,
        mode: lifeboat_repo::BackupMode::Full,
        parent: None,
        partial: false,
        summary: Default::default(),
        program_version: "test".into(),
        extra: Default::default(),
        creator: None,
    }
}

/// What a restore reported as warnings (text), for tests that check one
/// names what it should.
#[derive(Default)]
struct Warnings(std::sync::Mutex<Vec<String>>);

impl lifeboat_snapshot::progress::RestoreProgress for Warnings {
    fn warning(&self, path: &std::path::Path, message: &str) {
        let mut w = self.0.lock().unwrap();
        w.push(format!("{}: {message}", path.display()));
    }
}

/// How [`restore_falls_back_to_another_copy`] damages the first copy.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Missing,
    Corrupt,
}

/// Issue 12, rollback: the index keeps every location of a blob and
/// `read_blob` falls back on another, but restore read each blob only at
/// its first location: with that pack missing or damaged, the files failed
/// though another pack held the same blobs. Now restore reads them from
/// the other pack, warns naming the bad one, and restores every byte.
async fn restore_falls_back_to_another_copy(damage: Damage) {
    use lifeboat_repo::{BlobType, WriteOptions, WriteSession};
    use lifeboat_storage::{Kind, ObjectKey, Storage};
    use lifeboat_testkit::repo::{memory_repo, one_file_tree, reopen};

    let (mem, repo) = memory_repo().await;
    let src = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Each file is one chunk (below the chunker's minimum size), so its
    // content is one blob the two sessions below can store first.
    let files: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random(60_000, 40 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        fs::write(src.path().join(format!("f{i}")), f).unwrap();
    }
    // Two sessions started together both store every blob (as two backups
    // racing do): each blob is in two packs.
    let a = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let b = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for (n, s) in [a, b].into_iter().enumerate() {
        for f in &files {
            assert!(s.add_blob(BlobType::Data, f).await.unwrap().new);
        }
        let tree = one_file_tree(&format!("session{n}")).encode();
        let tree = s.add_blob(BlobType::Tree, &tree).await.unwrap().id;
        s.finish(record(tree)).await.unwrap();
    }
    let repo = reopen(Arc::new(mem.clone())).await;
    let snap = backup_snapshot(&repo, src.path().to_path_buf()).await;

    // The pack the restoring handle reads first is the one damaged (index
    // objects are merged in the order their reads finish, so another
    // handle may list the copies the other way round).
    let repo = reopen(Arc::new(mem.clone())).await;
    let index = repo.index().await.unwrap();
    let id = repo.key().blob_id(&files[0]);
    let locations = index.locations(BlobType::Data, &id);
    assert_eq!(locations.len(), 2, "the blob is in two packs");
    let bad = locations[0].pack;
    for f in &files {
        let l = index.locations(BlobType::Data, &repo.key().blob_id(f));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].pack, bad, "one session's pack holds every file");
    }
    let key = ObjectKey::new(Kind::Packs, bad.to_hex());
    match damage {
        Damage::Missing => mem.delete(&key).await.unwrap(),
        Damage::Corrupt => {
            // One byte inside every file's blob.
            let mut bytes = mem.get(&key).await.unwrap().to_vec();
            for f in &files {
                let l = index.locations(BlobType::Data, &repo.key().blob_id(f))[0];
                bytes[l.entry.offset as usize + l.entry.length as usize / 2] ^= 0x40;
            }
            mem.delete(&key).await.unwrap();
            mem.put(&key, bytes.into()).await.unwrap();
        }
    }

    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let warnings = Warnings::default();
    let stats = restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &warnings,
    )
    .await
    .unwrap();
    assert!(stats.errors.is_empty(), "{damage:?}: {:?}", stats.errors);
    assert_eq!(stats.files_restored, files.len() as u64);
    lifeboat_testkit::fs::assert_same_tree(
        src.path(),
        &lifeboat_testkit::fs::restored(target.path(), src.path()),
    );
    let warnings = warnings.0.into_inner().unwrap();
    assert!(
        warnings.iter().any(|w| w.contains(&bad.to_string())),
        "{damage:?}: a warning names the bad pack {bad}: {warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn regression_restore_reads_another_copy_of_a_blob_whose_pack_is_missing() {
    restore_falls_back_to_another_copy(Damage::Missing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn regression_restore_reads_another_copy_of_a_blob_whose_pack_is_corrupt() {
    restore_falls_back_to_another_copy(Damage::Corrupt).await;
}
