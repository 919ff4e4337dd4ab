//! Progress display: indicatif bars on a terminal, nothing when stderr is not
//! a terminal (or with --quiet / --json). Warnings are always printed: they
//! name files that are not in the snapshot.

use std::io::IsTerminal;
use std::path::Path;
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
}

impl Bar {
    pub fn new(enabled: bool, verb: &str) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{verb} {{msg}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
                ))
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
        }
    }

    fn update(&self) {
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
        let line = format!("lifeboat: warning: {}: {message}", path.display());
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
    fn restored(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.update();
    }
    fn warning(&self, path: &Path, message: &str) {
        self.warn(path, message);
    }
}
