//! Blob ids are separated by type (issue 12, item 0).
//!
//! A blob's id is the keyed hash of its plaintext alone, so a file whose
//! bytes equal the encoding of a directory listing has that tree's id: a
//! one-byte file holding `0x00` is exactly an empty directory's listing.
//! Deduplication and the index used to key on the id alone; a later backup
//! of any tree with an empty directory then took its tree for the file
//! chunk, exited 0, and from then on `check` said "blob is not a tree" and
//! `restore` restored nothing of those snapshots. Now the index and
//! deduplication key on (type, id), and a restore that meets a damaged
//! subtree restores everything else and reports the directory.
//!
//! The property test plants, for random trees, files holding the exact
//! encodings of those trees, in both orders (trees stored first, files
//! first), and requires every snapshot to check and restore.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::restore_to_temp;
use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::{
    BackupMode, BackupSummary, BlobType, CheckOptions, Id, Repository, Snapshot, SnapshotRecord,
    Tree, WriteOptions, WriteSession, check,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::fs::assert_same_tree;
use lifeboat_testkit::repo::{assert_check_ok, dir_node, memory_repo, reopen};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

async fn backup_dir(repo: &Arc<Repository>, dir: &Path) -> Snapshot {
    backup(
        repo.clone(),
        &BackupOptions {
            paths: vec![dir.to_path_buf()],
            contents_as_root: true,
            ..Default::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .expect("backup")
    .snapshot
}

/// Restores `snap` (whose root is `source`'s contents) and compares.
async fn assert_restores_contents(repo: &Arc<Repository>, snap: &Snapshot, source: &Path) {
    let target = restore_to_temp(repo, snap).await;
    assert_same_tree(source, target.path());
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// The reproduction: a file holding the single byte 0x00, backed
/// up; then a tree with an empty directory. Before the fix the second
/// backup deduplicated the empty directory's tree against the file's data
/// blob: `check` failed with "blob is not a tree" and the restore stopped
/// with nothing restored (seen failing so before the fix).
#[tokio::test(flavor = "multi_thread")]
async fn regression_zero_byte_file_then_empty_directory() {
    let (mem, repo) = memory_repo().await;
    let files = tempdir();
    fs::write(files.path().join("zero"), [0u8]).unwrap();
    let first = backup_dir(&repo, files.path()).await;

    let dirs = tempdir();
    fs::create_dir(dirs.path().join("empty")).unwrap();
    fs::write(dirs.path().join("note.txt"), "beside an empty directory\n").unwrap();
    let second = backup_dir(&repo, dirs.path()).await;

    // The collision is real: the empty directory's tree has the file's id.
    let root = repo.read_tree(&second.record.tree).await.unwrap();
    let empty = root.find(b"empty").unwrap().subtree.unwrap();
    assert_eq!(empty, repo.key().blob_id(&[0u8]), "the ids collide");
    let index = repo.index().await.unwrap();
    assert!(index.contains(BlobType::Data, &empty));
    assert!(index.contains(BlobType::Tree, &empty));

    let repo = reopen(Arc::new(mem.clone())).await;
    assert_check_ok(&repo).await;
    assert_restores_contents(&repo, &first, files.path()).await;
    assert_restores_contents(&repo, &second, dirs.path()).await;

    // And the other order: the tree first, then the file (a new repository).
    let (mem, repo) = memory_repo().await;
    let second = backup_dir(&repo, dirs.path()).await;
    let first = backup_dir(&repo, files.path()).await;
    let repo = reopen(Arc::new(mem)).await;
    assert_check_ok(&repo).await;
    assert_restores_contents(&repo, &first, files.path()).await;
    assert_restores_contents(&repo, &second, dirs.path()).await;
}

/// A snapshot whose root holds `broken` (a directory whose subtree id is
/// only a data blob, as a backup by the old code left it) and `good` (a
/// real directory with a file), written through a write session.
async fn snapshot_with_mistyped_subtree(repo: &Arc<Repository>, good: &Path) -> Snapshot {
    let files = tempdir();
    fs::write(files.path().join("zero"), [0u8]).unwrap();
    backup_dir(repo, files.path()).await;
    let good_snap = backup_dir(repo, good).await;
    let data_only = repo.key().blob_id(&[0u8]);
    assert!(
        !repo
            .index()
            .await
            .unwrap()
            .contains(BlobType::Tree, &data_only),
        "no real empty tree in this repository"
    );
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let root = Tree {
        nodes: vec![
            dir_node("broken", Some(data_only)),
            dir_node("good", Some(good_snap.record.tree)),
        ],
    };
    let root = session
        .add_blob(BlobType::Tree, &root.encode())
        .await
        .unwrap()
        .id;
    let record = SnapshotRecord {
        time: jiff::Timestamp::now(),
        host: "h".into(),
        user: "u".into(),
        paths: vec!["/crafted".into()],
        tags: vec![],
        tree: root,
        mode: BackupMode::Full,
        parent: None,
        partial: false,
        summary: BackupSummary::default(),
        program_version: "test".into(),
        extra: Default::default(),
        creator: None,
    };
    let id = session.finish(record.clone()).await.unwrap();
    Snapshot { id, record }
}

/// A snapshot left by the old code: one directory's tree id resolves only
/// to a data blob. `check` reports it; `restore` restores everything else,
/// creates the directory empty and reports it, instead of aborting (the
/// restore aborted before with "blob is not a tree"; seen failing).
#[tokio::test(flavor = "multi_thread")]
async fn restore_skips_a_subtree_that_is_not_a_tree_and_restores_the_rest() {
    let (_mem, repo) = memory_repo().await;
    let good = tempdir();
    fs::create_dir(good.path().join("sub")).unwrap();
    fs::write(good.path().join("sub/file.txt"), "still here\n").unwrap();
    let snap = snapshot_with_mistyped_subtree(&repo, good.path()).await;

    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(!report.is_ok());
    let all = format!("{:?}", report.errors);
    assert!(all.contains("not in the index as a tree"), "{all}");
    assert_eq!(report.damaged_snapshots, vec![snap.id.to_hex()]);

    let target = tempdir();
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
    .expect("a damaged subtree does not stop the restore");
    assert_eq!(stats.errors.len(), 1, "{:?}", stats.errors);
    assert!(stats.errors[0].contains("broken"), "{:?}", stats.errors);
    assert!(
        stats.errors[0].contains("directory contents not restored"),
        "{:?}",
        stats.errors
    );
    assert_same_tree(good.path(), &target.path().join("good"));
    let broken = target.path().join("broken");
    assert!(broken.is_dir(), "the damaged directory is created, empty");
    assert_eq!(fs::read_dir(&broken).unwrap().count(), 0);

    // The plan says so too.
    let plan = lifeboat_snapshot::restore::plan(&repo, &snap, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(plan.damaged_trees, 1);
}

/// A damaged *root* tree leaves nothing to restore: that stays an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_that_is_not_a_tree_is_still_an_error() {
    let (_mem, repo) = memory_repo().await;
    let files = tempdir();
    fs::write(files.path().join("zero"), [0u8]).unwrap();
    let snap = backup_dir(&repo, files.path()).await;
    let mut fake = snap.clone();
    fake.record.tree = repo.key().blob_id(&[0u8]);
    let target = tempdir();
    let e = restore(
        &repo,
        &fake,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("tree"), "{e}");
}

// ------------------------------------------------------------- property

/// A generated directory: files (name, content) and subdirectories.
#[derive(Debug, Clone)]
struct Dir {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeMap<String, Dir>,
}

fn dir_strategy() -> impl Strategy<Value = Dir> {
    let content = prop_oneof![
        Just(vec![]),
        Just(vec![0u8]),
        proptest::collection::vec(any::<u8>(), 1..8),
        proptest::collection::vec(0u8..3, 1..40),
    ];
    let files = proptest::collection::btree_map("[a-c]{1,3}", content, 0..4);
    let leaf = files.clone().prop_map(|files| Dir {
        files,
        dirs: BTreeMap::new(),
    });
    leaf.prop_recursive(3, 16, 4, move |inner| {
        (
            files.clone(),
            proptest::collection::btree_map("[d-f]{1,2}", inner, 0..4),
        )
            .prop_map(|(files, dirs)| Dir { files, dirs })
    })
}

fn materialize(dir: &Dir, at: &Path) {
    fs::create_dir_all(at).unwrap();
    for (name, content) in &dir.files {
        fs::write(at.join(name), content).unwrap();
    }
    for (name, sub) in &dir.dirs {
        materialize(sub, &at.join(name));
    }
}

/// The plaintext of every tree reachable from `root`.
async fn tree_encodings(repo: &Repository, root: Id) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        let tree = repo.read_tree(&id).await.unwrap();
        let bytes = tree.encode();
        assert_eq!(repo.key().blob_id(&bytes), id, "encoding is stable");
        stack.extend(tree.nodes.iter().filter_map(|n| n.subtree));
        out.push(bytes);
    }
    out
}

/// Every tree a snapshot names is indexed as a tree and every file chunk
/// as data.
async fn assert_types(repo: &Repository, root: Id) -> Result<(), TestCaseError> {
    let index = repo.index().await.unwrap();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        prop_assert!(index.contains(BlobType::Tree, &id), "tree {id} indexed");
        let tree = repo.read_tree(&id).await.unwrap();
        for n in &tree.nodes {
            for c in &n.content {
                prop_assert!(index.contains(BlobType::Data, c), "data {c} indexed");
            }
        }
        stack.extend(tree.nodes.iter().filter_map(|n| n.subtree));
    }
    Ok(())
}

async fn delete_all_records(mem: &MemoryStorage) {
    for info in mem.list(Kind::Snapshots).await.unwrap() {
        mem.delete(&ObjectKey::new(
            Kind::Snapshots,
            info.key.name().to_string(),
        ))
        .await
        .unwrap();
    }
}

async fn no_content_collides_with_a_tree(dir: Dir) -> Result<(), TestCaseError> {
    let (mem, repo) = memory_repo().await;
    let work = tempdir();
    let source = work.path().join("source");
    materialize(&dir, &source);
    // Trees first, then files holding their exact encodings.
    let trees = backup_dir(&repo, &source).await;
    let encodings = tree_encodings(&repo, trees.record.tree).await;
    let decoys = work.path().join("decoys");
    fs::create_dir(&decoys).unwrap();
    for (i, e) in encodings.iter().enumerate() {
        fs::write(decoys.join(format!("t{i}")), e).unwrap();
    }
    let files = backup_dir(&repo, &decoys).await;
    assert_types(&repo, trees.record.tree).await?;
    assert_types(&repo, files.record.tree).await?;
    assert_check_ok(&repo).await;
    assert_restores_contents(&repo, &trees, &source).await;
    assert_restores_contents(&repo, &files, &decoys).await;

    // Files first, then the same trees again (prune emptied the repository).
    delete_all_records(&mem).await;
    prune(&repo, &PruneOptions::default()).await.unwrap();
    let repo = reopen(Arc::new(mem.clone())).await;
    prop_assert_eq!(repo.index().await.unwrap().blob_count(), 0);
    let files = backup_dir(&repo, &decoys).await;
    let again = backup_dir(&repo, &source).await;
    prop_assert_eq!(again.record.tree, trees.record.tree, "same trees again");
    let repo = reopen(Arc::new(mem)).await;
    assert_types(&repo, again.record.tree).await?;
    assert_types(&repo, files.record.tree).await?;
    assert_check_ok(&repo).await;
    assert_restores_contents(&repo, &again, &source).await;
    assert_restores_contents(&repo, &files, &decoys).await;
    Ok(())
}

#[test]
fn no_file_content_collides_with_a_tree() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 128,
        failure_persistence: None,
        ..Config::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runner.run(&dir_strategy(), |dir| {
        rt.block_on(no_content_collides_with_a_tree(dir))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
