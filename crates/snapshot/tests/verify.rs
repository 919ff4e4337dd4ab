//! `restore --verify`: reading a restored target back against the
//! snapshot finds every kind of difference, and none after a clean restore.

mod common;
use common::backup_snapshot;

use std::fs;

use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore, verify};
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{default_options, memory_repo_with};

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_changed_missing_and_resized_files_after_a_restore() {
    let (_, repo) = memory_repo_with(default_options()).await;
    let src = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for i in 0..3 {
        fs::write(src.path().join(format!("f{i}")), pseudo_random(300_000, i)).unwrap();
    }
    std::os::unix::fs::symlink("f0", src.path().join("link")).unwrap();
    let snap = backup_snapshot(&repo, src.path().to_path_buf()).await;
    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let options = RestoreOptions {
        target: target.path().to_path_buf(),
        ..Default::default()
    };
    restore(&repo, &snap, &options, &NoProgress).await.unwrap();
    let clean = verify(&repo, &snap, &options).await.unwrap();
    assert_eq!(clean.differences, Vec::<String>::new());
    assert_eq!(clean.files_checked, 3);
    assert_eq!(clean.symlinks_checked, 1);
    assert_eq!(clean.bytes_checked, 900_000);

    let restored = target.path().join(src.path().strip_prefix("/").unwrap());
    // One byte changed in the middle, same length.
    let mut b = fs::read(restored.join("f0")).unwrap();
    b[150_000] ^= 1;
    fs::write(restored.join("f0"), b).unwrap();
    fs::remove_file(restored.join("f1")).unwrap();
    fs::write(restored.join("f2"), b"short").unwrap();
    fs::remove_file(restored.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", restored.join("link")).unwrap();
    let found = verify(&repo, &snap, &options).await.unwrap();
    let mut what: Vec<String> = found
        .differences
        .iter()
        .map(|d| d.rsplit('/').next().unwrap().to_string())
        .collect();
    what.sort();
    assert_eq!(what.len(), 4, "{:?}", found.differences);
    assert!(what[0].starts_with("f0: content differs"), "{what:?}");
    assert!(what[1].starts_with("f1: "), "{what:?}");
    assert!(what[2].starts_with("f2: 5 bytes"), "{what:?}");
    assert!(
        what[3].starts_with("link: symlink target differs"),
        "{what:?}"
    );
}
