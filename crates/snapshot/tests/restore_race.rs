//! A restore raced by someone who owns a directory in its target
//! (docs/security.md, "A local user during a restore").
//!
//! A helper thread keeps swapping a directory the restore creates for a
//! symlink to a directory outside the target, and back, while plain,
//! `--overwrite` and `--delta` restores run. Nothing outside the target may
//! change: no file created there, its mode and times untouched.

mod common;
use common::backup_snapshot;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_testkit::repo::{default_options, memory_repo_with};

/// Restores per kind (plain, overwrite, delta) of the race test.
const TRIALS: usize = 12;

/// Swaps `dir` for a symlink to `victim` and back until `stop`; counts the
/// swaps that happened.
fn racer(dir: PathBuf, victim: PathBuf, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    let hold = dir.with_file_name("hold");
    while !stop.load(Ordering::Relaxed) {
        if fs::rename(&dir, &hold).is_ok() {
            if std::os::unix::fs::symlink(&victim, &dir).is_ok() {
                swaps.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::yield_now();
            let _ = fs::remove_file(&dir);
            let _ = fs::rename(&hold, &dir);
        } else {
            std::thread::yield_now();
        }
    }
    // Leave the real directory in place.
    if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = fs::remove_file(&dir);
    }
    let _ = fs::rename(&hold, &dir);
}

struct Outside {
    path: PathBuf,
    mode: u32,
    mtime: (i64, i64),
}

impl Outside {
    fn new(path: &Path) -> Self {
        fs::create_dir(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        let m = fs::metadata(path).unwrap();
        Outside {
            path: path.to_path_buf(),
            mode: m.mode(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }

    fn assert_untouched(&self, when: &str) {
        let m = fs::symlink_metadata(&self.path).unwrap();
        assert!(m.is_dir(), "{when}: the outside directory was replaced");
        assert_eq!(
            m.mode(),
            self.mode,
            "{when}: the mode of a directory outside the target changed"
        );
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            self.mtime,
            "{when}: the mtime of a directory outside the target changed"
        );
        let entries: Vec<_> = fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            entries.is_empty(),
            "{when}: files were created outside the target: {entries:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_never_follows_a_directory_swapped_for_a_symlink() {
    let (_, repo) = memory_repo_with(default_options()).await;
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = base.path().join("src");
    // `a` stands for a directory another user owns in the target; `b` is
    // what the restore creates in it (mode 0777 in the snapshot).
    let b = src.join("a").join("b");
    fs::create_dir_all(b.join("sub")).unwrap();
    for i in 0..40 {
        fs::write(b.join(format!("f{i}")), format!("file {i}\n").repeat(50)).unwrap();
        fs::write(b.join("sub").join(format!("g{i}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("f0", b.join("link")).unwrap();
    fs::hard_link(b.join("f1"), b.join("f1-again")).unwrap();
    fs::set_permissions(&b, fs::Permissions::from_mode(0o777)).unwrap();
    let snap = backup_snapshot(&repo, src.clone()).await;

    let outside = Outside::new(&base.path().join("outside"));
    let swaps = Arc::new(AtomicU64::new(0));
    let mut restored_ok = 0;
    for trial in 0..TRIALS {
        let target = base.path().join(format!("target{trial}"));
        let a = target.join(src.strip_prefix("/").unwrap()).join("a");
        fs::create_dir_all(&a).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let helper = {
            let (dir, victim) = (a.join("b"), outside.path.clone());
            let (stop, swaps) = (stop.clone(), swaps.clone());
            std::thread::spawn(move || racer(dir, victim, stop, swaps))
        };
        for (overwrite, delta) in [(false, false), (true, false), (false, true)] {
            let opts = RestoreOptions {
                target: target.clone(),
                overwrite,
                delta,
                owner: true,
                ..Default::default()
            };
            // Failing is allowed (the directory was not there when the
            // restore looked); writing outside the target is not.
            if restore(&repo, &snap, &opts, &NoProgress).await.is_ok() {
                restored_ok += 1;
            }
            outside.assert_untouched(&format!(
                "trial {trial} (overwrite {overwrite}, delta {delta})"
            ));
        }
        stop.store(true, Ordering::Relaxed);
        helper.join().unwrap();
        outside.assert_untouched(&format!("trial {trial}"));
    }
    assert!(swaps.load(Ordering::Relaxed) > 0, "the helper never raced");
    assert!(restored_ok > 0, "no restore ran to its end");
}

/// `--delta` over a target file that is also linked from outside the
/// target: the file is identical, but setting its metadata would change the
/// outside name too. It is replaced instead.
#[tokio::test(flavor = "multi_thread")]
async fn delta_replaces_a_file_hard_linked_from_outside_the_target() {
    let (_, repo) = memory_repo_with(default_options()).await;
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = base.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"same bytes").unwrap();
    fs::set_permissions(src.join("f"), fs::Permissions::from_mode(0o666)).unwrap();
    let snap = backup_snapshot(&repo, src.clone()).await;

    let target = base.path().join("target");
    let in_target = target.join(src.strip_prefix("/").unwrap()).join("f");
    fs::create_dir_all(in_target.parent().unwrap()).unwrap();
    let outside = base.path().join("outside-f");
    fs::write(&outside, b"same bytes").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(&outside, &in_target).unwrap();
    let stats = restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.clone(),
            delta: true,
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(stats.files_skipped_identical, 0);
    let out = fs::metadata(&outside).unwrap();
    assert_eq!(
        out.mode() & 0o7777,
        0o600,
        "the outside name's mode changed"
    );
    assert_eq!(out.nlink(), 1, "the target still links to the outside file");
    assert_eq!(fs::metadata(&in_target).unwrap().mode() & 0o7777, 0o666);
    assert_eq!(fs::read(&in_target).unwrap(), b"same bytes");
}
