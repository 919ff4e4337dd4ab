//! The spot check of a file-tree drill, after borgmatic's "spot" check:
//! the restored copy is compared with the live source within tolerances,
//! because files change between a backup and a drill.
//!
//! - **file count**, per source path: the snapshot's regular files under
//!   it against the live source's (excludes applied as the backup does);
//!   the difference, in percent of the larger count, must be within
//!   `count-tolerance`. A backup of an empty mount point, or of another
//!   directory than the plan names, fails here;
//! - **file data**: a sample of the snapshot's files (`data-sample`, at
//!   least [`DRILL_MIN_SAMPLE`](crate::config::DRILL_MIN_SAMPLE)) is
//!   compared byte for byte, restored copy against live file; the share
//!   that differs (or is gone) must be within `data-tolerance`. Files
//!   encrypted in place by ransomware, or a volume swapped under the same
//!   path, fail here.
//!
//! What it cannot tell: which side is right. A failed spot check says the
//! backup and the live data disagree; the drill report names files to
//! look at.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use lifeboat_snapshot::PathMatcher;
use lifeboat_snapshot::verify::{VerifiedFile, restored_path};
use rand::SeedableRng;

use super::Check;
use crate::config::{DRILL_MIN_SAMPLE, DrillConfig};

/// What the live source is, as the plan's source config says.
pub(crate) struct LiveSource<'a> {
    pub paths: &'a [PathBuf],
    pub excludes: &'a [String],
    pub one_file_system: bool,
    pub exclude_caches: bool,
}

/// Both checks, in order: file count, file data.
pub(crate) fn spot_check(
    live: &LiveSource<'_>,
    files: &[VerifiedFile],
    restored: &Path,
    cfg: &DrillConfig,
) -> Vec<Check> {
    vec![
        count_check(live, files, cfg),
        data_check(files, restored, cfg),
    ]
}

fn count_check(live: &LiveSource<'_>, files: &[VerifiedFile], cfg: &DrillConfig) -> Check {
    let matcher = PathMatcher::new(live.excludes).ok();
    let mut ok = true;
    let mut details = Vec::new();
    for p in live.paths {
        let prefix = p.as_os_str().as_bytes();
        let in_snapshot = files
            .iter()
            .filter(|f| {
                f.path.starts_with(prefix)
                    && (f.path.len() == prefix.len() || f.path[prefix.len()] == b'/')
            })
            .count() as u64;
        let mut live_count = 0;
        let dev = std::fs::symlink_metadata(p).ok().map(|m| m.dev());
        count_live(p, live, matcher.as_ref(), dev, &mut live_count);
        let larger = in_snapshot.max(live_count);
        let apart = if larger == 0 {
            100.0
        } else {
            in_snapshot.abs_diff(live_count) as f64 * 100.0 / larger as f64
        };
        let fine = larger > 0 && apart <= cfg.count_tolerance_percent;
        ok &= fine;
        details.push(format!(
            "{}: {in_snapshot} files in the snapshot, {live_count} live ({apart:.1}% apart{})",
            p.display(),
            if larger == 0 { ", both empty" } else { "" }
        ));
    }
    Check {
        name: "file-count".into(),
        ok,
        detail: format!(
            "{} (tolerance {}%)",
            details.join("; "),
            cfg.count_tolerance_percent
        ),
    }
}

/// Counts regular files under `dir` as a backup would see them.
fn count_live(
    path: &Path,
    live: &LiveSource<'_>,
    excludes: Option<&PathMatcher>,
    dev: Option<u64>,
    count: &mut u64,
) {
    if excludes.is_some_and(|m| m.is_match(path.as_os_str().as_bytes())) {
        return;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        *count += 1;
        return;
    }
    if !meta.is_dir() || (live.one_file_system && Some(meta.dev()) != dev) {
        return;
    }
    if live.exclude_caches && path.join("CACHEDIR.TAG").is_file() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            count_live(&e.path(), live, excludes, dev, count);
        }
    }
}

fn data_check(files: &[VerifiedFile], restored: &Path, cfg: &DrillConfig) -> Check {
    let name = "file-data".to_string();
    if files.is_empty() {
        return Check {
            name,
            ok: false,
            detail: "the snapshot holds no files to compare".into(),
        };
    }
    let wanted = ((files.len() as f64 * cfg.data_sample_percent / 100.0).ceil() as usize)
        .max(DRILL_MIN_SAMPLE)
        .min(files.len());
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let sample = rand::seq::index::sample(&mut rng, files.len(), wanted);
    let mut differ = Vec::new();
    for i in sample.into_iter() {
        let f = &files[i];
        let live = Path::new(std::ffi::OsStr::from_bytes(&f.path));
        if !same_bytes(&restored_path(restored, &f.path), live) {
            differ.push(String::from_utf8_lossy(&f.path).into_owned());
        }
    }
    differ.sort();
    let share = differ.len() as f64 * 100.0 / wanted as f64;
    let ok = share <= cfg.data_tolerance_percent;
    let mut detail = format!(
        "{} of {wanted} sampled files differ from the live source ({share:.1}%, tolerance {}%)",
        differ.len(),
        cfg.data_tolerance_percent
    );
    if !differ.is_empty() {
        let shown: Vec<&str> = differ.iter().take(5).map(String::as_str).collect();
        detail.push_str(&format!(
            ": {}{}",
            shown.join(", "),
            if differ.len() > 5 { ", ..." } else { "" }
        ));
    }
    Check { name, ok, detail }
}

/// Whether two regular files hold the same bytes. A live path that is not
/// a regular file (gone, a FIFO, a directory now) differs; it is opened
/// without blocking and without following a symlink.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
            .open(p)
            .ok()
            .filter(|f: &File| f.metadata().is_ok_and(|m| m.is_file()))
    };
    let (Some(mut fa), Some(mut fb)) = (open(a), open(b)) else {
        return false;
    };
    if fa.metadata().map(|m| m.len()).ok() != fb.metadata().map(|m| m.len()).ok() {
        return false;
    }
    let mut ba = vec![0u8; 64 << 10];
    let mut bb = vec![0u8; 64 << 10];
    loop {
        let n = match fa.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return fb.read(&mut bb[..1]).is_ok_and(|m| m == 0);
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}
