//! A file appended to while a backup reads it is read only up to the size
//! it had when the read began (docs/reliability.md, "a file growing during
//! backup").

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::{BackupProgress, NoProgress};
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{default_options, memory_repo_with};

const START: usize = 8 << 20;
const APPENDED: usize = 4 << 20;

/// Appends to the file the first time the reader reports bytes read: the
/// file grows after the backup looked at its size and while it is read.
struct Grower {
    file: PathBuf,
    grown: AtomicBool,
    warnings: Mutex<Vec<String>>,
}

impl BackupProgress for Grower {
    fn processed(&self, _files: u64, bytes: u64) {
        if bytes > 0 && !self.grown.swap(true, Ordering::SeqCst) {
            let mut f = OpenOptions::new().append(true).open(&self.file).unwrap();
            f.write_all(&pseudo_random(APPENDED, 9)).unwrap();
        }
    }

    fn warning(&self, path: &Path, message: &str) {
        self.warnings
            .lock()
            .unwrap()
            .push(format!("{}: {message}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_growing_while_read_is_read_to_its_size_at_the_start() {
    let (_, repo) = memory_repo_with(default_options()).await;
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = base.path().join("src");
    fs::create_dir(&src).unwrap();
    let log = src.join("log");
    let start = pseudo_random(START, 1);
    fs::write(&log, &start).unwrap();
    let progress = Arc::new(Grower {
        file: log.clone(),
        grown: AtomicBool::new(false),
        warnings: Mutex::default(),
    });
    let out = backup(
        repo.clone(),
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        progress.clone(),
    )
    .await
    .unwrap();
    assert!(progress.grown.load(Ordering::SeqCst), "the file never grew");
    assert_eq!(fs::metadata(&log).unwrap().len() as usize, START + APPENDED);

    // The snapshot says so, and the warning names the file.
    let summary = &out.snapshot.record.summary;
    assert_eq!(summary.files_changed_during_backup, 1, "{summary:?}");
    let warnings = progress.warnings.lock().unwrap().clone();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&log.display().to_string()) && w.contains("grew while being read")),
        "{warnings:?}"
    );

    // It holds the file as it was when the read began.
    let target = base.path().join("target");
    let stats = restore(
        &repo,
        &out.snapshot,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let restored = fs::read(target.join(log.strip_prefix("/").unwrap())).unwrap();
    assert_eq!(restored.len(), START, "read past its size at the start");
    assert!(restored == start);
}
