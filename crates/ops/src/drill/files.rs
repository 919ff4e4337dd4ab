//! The drill of a file-tree plan: restore the snapshot into the scratch
//! directory, verify every restored file against the snapshot's content
//! hashes (`lifeboat_snapshot::verify`), then spot-check the copy against
//! the live source ([`super::spot`]).
//!
//! Phases: `open` (repository, snapshot, space check), `prepare` (trees
//! read, directories and empty files created), `fetch-write` (pack data
//! fetched, each blob verified and written, the target synced: fetching
//! and writing overlap in the restore's pipeline, so they are timed
//! together), `verify`, `spot-check`. The first three make the time to a
//! usable copy.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use lifeboat_repo::Repository;
use lifeboat_snapshot::progress::RestoreProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};

use super::scratch::{Scratch, check_space, needed_bytes};
use super::spot::{LiveSource, spot_check};
use super::{DrillOptions, Recorder, pick_snapshot};
use crate::config::PlanConfig;
use crate::error::Result;

/// Notes when the restore has planned its writes (end of `prepare`).
#[derive(Default)]
struct PhaseClock {
    planned: Mutex<Option<Instant>>,
}

impl RestoreProgress for PhaseClock {
    fn planned(&self, _files: u64, _bytes: u64) {
        self.planned
            .lock()
            .expect("not poisoned")
            .get_or_insert_with(Instant::now);
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn drill(
    repo: &Arc<Repository>,
    repository: &str,
    plan: &PlanConfig,
    plan_name: &str,
    options: &DrillOptions,
    live: &LiveSource<'_>,
    scratch: &Scratch,
    rec: &mut Recorder,
) -> Result<()> {
    let snap = pick_snapshot(repo, repository, plan_name, options.snapshot.as_deref()).await?;
    rec.report.snapshot = Some(snap.id.to_hex());
    rec.report.snapshot_time = Some(snap.record.time);
    let sum = &snap.record.summary;
    let needed = needed_bytes(sum.total_bytes, sum.total_files);
    let detail = format!("{} files, {} bytes", sum.total_files, sum.total_bytes);
    if !check_space(rec, scratch, plan_name, needed, "the snapshot", &detail)? {
        return Ok(());
    }
    rec.phase("open", true);

    let target = scratch.dir.join("data");
    let clock = PhaseClock::default();
    let restored = restore(
        repo,
        &snap,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
        &clock,
    )
    .await;
    // The restore's time is split where its writes were planned.
    let planned = *clock.planned.lock().expect("not poisoned");
    rec.phase_until("prepare", planned, true);
    rec.phase("fetch-write", true);
    let stats = match restored {
        Ok(s) => s,
        Err(e) => {
            rec.fail("restore", e.to_string());
            return Ok(());
        }
    };
    rec.report.restored_bytes = stats.bytes_written;
    rec.report.restored_files = stats.files_restored;
    rec.check(
        "restore",
        stats.errors.is_empty(),
        if stats.errors.is_empty() {
            format!(
                "{} files, {} bytes restored from snapshot {}",
                stats.files_restored,
                stats.bytes_written,
                snap.id.short()
            )
        } else {
            format!(
                "{} entries could not be restored: {}",
                stats.errors.len(),
                stats.errors.first().cloned().unwrap_or_default()
            )
        },
    );

    let verified = lifeboat_snapshot::verify::verify_restored(repo, &snap, &target).await;
    let files = match verified {
        Ok(v) => {
            rec.check(
                "content",
                v.problems.is_empty(),
                if v.problems.is_empty() {
                    format!(
                        "{} files ({} bytes) match the snapshot's content hashes; {} directories, {} symlinks present",
                        v.files_verified, v.bytes_verified, v.dirs, v.symlinks
                    )
                } else {
                    format!(
                        "{} entries differ from the snapshot: {}",
                        v.problems.len(),
                        v.problems.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                    )
                },
            );
            v.files
        }
        Err(e) => {
            rec.fail("content", e.to_string());
            Vec::new()
        }
    };
    rec.phase("verify", false);

    let cfg = plan.drill.clone();
    let live_paths = live.paths.to_vec();
    let excludes = live.excludes.to_vec();
    let (one_fs, caches) = (live.one_file_system, live.exclude_caches);
    let checks = tokio::task::spawn_blocking(move || {
        let live = LiveSource {
            paths: &live_paths,
            excludes: &excludes,
            one_file_system: one_fs,
            exclude_caches: caches,
        };
        spot_check(&live, &files, &target, &cfg)
    })
    .await
    .map_err(|e| crate::Error::State {
        path: scratch.dir.clone(),
        source: std::io::Error::other(e),
    })?;
    rec.report.checks.extend(checks);
    rec.phase("spot-check", false);
    Ok(())
}
