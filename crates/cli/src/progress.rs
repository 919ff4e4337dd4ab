//! Progress display: indicatif bars on a terminal, nothing when stderr is not
//! a terminal (or with --quiet / --json). Warnings are always printed: they
//! name files that are not in the snapshot.

use std::io::IsTerminal;
use std::path::Path;
#[cfg(test)]
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_snapshot::progress::{BackupProgress, RestoreProgress};

pub struct Bar {
    bar: Option<ProgressBar>,
    files: AtomicU64,
    total_files: AtomicU64,
    bytes: AtomicU64,
    total_bytes: AtomicU64,
    /// Counting items (`Some(unit)`, e.g. packs), not files and bytes.
    unit: Option<&'static str>,
}

impl Bar {
    /// A bar of files and bytes (backup, restore, copy).
    pub fn new(enabled: bool, verb: &str) -> Self {
        Self::with_template(
            enabled,
            &format!(
                "{verb} {{msg}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
            ),
            None,
        )
    }

    /// A bar counting `unit`s (`check --read-data`: packs), fed through
    /// [`Bar::count`].
    pub fn counting(enabled: bool, verb: &str, unit: &'static str) -> Self {
        Self::with_template(
            enabled,
            &format!("{verb} [{{bar:30}}] {{pos}}/{{len}} {unit} ETA {{eta}}"),
            Some(unit),
        )
    }

    fn with_template(enabled: bool, template: &str, unit: Option<&'static str>) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            b.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Bar {
            bar,
            files: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            unit,
        }
    }

    /// `done` of `total` items (a counting bar).
    pub fn count(&self, done: u64, total: u64) {
        self.files.store(done, Ordering::Relaxed);
        self.total_files.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total.max(done));
            b.set_position(done);
        }
    }

    /// What the bar shows now: (files or items done, their total, bytes
    /// done, their total).
    #[cfg(test)]
    pub fn numbers(&self) -> (u64, u64, u64, u64) {
        (
            self.files.load(Ordering::Relaxed),
            self.total_files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.total_bytes.load(Ordering::Relaxed),
        )
    }

    fn update(&self) {
        debug_assert!(self.unit.is_none(), "a counting bar takes count()");
        if let Some(b) = &self.bar {
            let total = self.total_bytes.load(Ordering::Relaxed);
            let done = self.bytes.load(Ordering::Relaxed);
            b.set_length(total.max(done));
            b.set_position(done);
            b.set_message(format!(
                "{}/{} files",
                self.files.load(Ordering::Relaxed),
                self.total_files.load(Ordering::Relaxed)
            ));
        }
    }

    fn warn(&self, path: &Path, message: &str) {
        // The name in the lossless escape form: a newline in a file name
        // must not start what looks like another report.
        let line = format!(
            "lifeboat: warning: {}: {message}",
            lifeboat_snapshot::printable(path.as_os_str().as_encoded_bytes())
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// True when a bar is drawn (stderr is a terminal and output is wanted).
    pub fn is_drawing(&self) -> bool {
        self.bar.is_some()
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl BackupProgress for Bar {
    fn scanned(&self, files: u64, bytes: u64) {
        self.total_files.fetch_add(files, Ordering::Relaxed);
        self.total_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn processed(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.update();
    }
    fn warning(&self, path: &Path, message: &str) {
        self.warn(path, message);
    }
}

impl RestoreProgress for Bar {
    fn planned(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
        self.update();
    }
    /// Running totals, not increments (adding them counted every file
    /// again at each report).
    fn restored(&self, files: u64, bytes: u64) {
        self.files.store(files, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.update();
    }
    fn warning(&self, path: &Path, message: &str) {
        self.warn(path, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_snapshot::backup::{BackupOptions, backup};
    use lifeboat_snapshot::restore::{RestoreOptions, restore};

    #[tokio::test]
    async fn regression_restore_bar_added_running_totals_and_overshot_the_summary() {
        let (_storage, repo) = lifeboat_testkit::repo::memory_repo().await;
        let src = tempfile::tempdir().unwrap();
        // Enough files in enough packs that the restore reports several
        // times; each report carried the totals so far.
        for i in 0..40u64 {
            let data = lifeboat_testkit::data::pseudo_random(50_000 + i as usize * 997, i);
            std::fs::write(src.path().join(format!("f{i}")), data).unwrap();
        }
        let options = BackupOptions {
            paths: vec![src.path().to_path_buf()],
            ..Default::default()
        };
        let outcome = backup(
            repo.clone(),
            &options,
            Arc::new(lifeboat_snapshot::progress::NoProgress),
        )
        .await
        .unwrap();
        let target = tempfile::tempdir().unwrap();
        let bar = Bar::new(false, "restore");
        let stats = restore(
            &repo,
            &outcome.snapshot,
            &RestoreOptions {
                target: target.path().to_path_buf(),
                ..Default::default()
            },
            &bar,
        )
        .await
        .unwrap();
        assert_eq!(stats.files_restored, 40);
        let (files, total_files, bytes, total_bytes) = bar.numbers();
        assert_eq!(
            (files, bytes),
            (stats.files_restored, stats.bytes_written),
            "the bar's last numbers are the summary's"
        );
        assert_eq!((total_files, total_bytes), (files, bytes));
    }

    /// The backup bar's last numbers are the summary's: files and bytes of
    /// the snapshot, for a first (full) backup and for an incremental one
    /// where unchanged, changed and new files are counted each their way.
    #[tokio::test]
    async fn backup_bar_ends_at_the_summarys_numbers() {
        let (_storage, repo) = lifeboat_testkit::repo::memory_repo().await;
        let src = tempfile::tempdir().unwrap();
        for i in 0..30u64 {
            let data = lifeboat_testkit::data::pseudo_random(20_000 + i as usize * 991, i);
            std::fs::write(src.path().join(format!("f{i}")), data).unwrap();
        }
        let options = BackupOptions {
            paths: vec![src.path().to_path_buf()],
            ..Default::default()
        };
        for round in 0..2u64 {
            if round == 1 {
                std::fs::write(src.path().join("f3"), b"changed").unwrap();
                std::fs::write(src.path().join("new"), b"a new file").unwrap();
            }
            let bar = Arc::new(Bar::new(false, "backup"));
            let outcome = backup(repo.clone(), &options, bar.clone()).await.unwrap();
            let s = &outcome.snapshot.record.summary;
            let (files, _, bytes, _) = bar.numbers();
            assert_eq!(
                (files, bytes),
                (s.total_files, s.total_bytes),
                "round {round}: the bar's last numbers are the summary's ({s:?})"
            );
        }
    }

    #[test]
    fn check_bar_counts_packs_not_bytes() {
        let bar = Bar::counting(false, "check", "packs");
        for done in 1..=7 {
            bar.count(done, 7);
        }
        assert_eq!(bar.numbers(), (7, 7, 0, 0));
    }
}
