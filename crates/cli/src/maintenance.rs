//! `check` and `repair index`: call `lifeboat_repo::check` /
//! `lifeboat_repo::repair::repair_index`, render.

use crate::output::outln;
use std::sync::Arc;

use anyhow::Result;
use lifeboat_repo::{CheckOptions, DataSubset, VerifyOptions};

use crate::args::{CheckArgs, Global, RepairArgs, RepairWhat};
use crate::exit::{self, cli_error};
use crate::progress::Bar;
use crate::session;

pub async fn check(g: &Global, a: CheckArgs) -> Result<i32> {
    // Options are checked before the repository is opened: a bad value
    // is a usage error (2) whatever state the repository is in.
    let subset = match &a.read_data_subset {
        None => None,
        Some(s) => Some(DataSubset::parse(s).map_err(|m| cli_error(exit::USAGE, m))?),
    };
    let repo = session::open(g).await?;
    let options = CheckOptions {
        read_data: a.read_data || subset.is_some(),
        // Archive objects are read in the same share.
        read_data_subset_percent: subset.map(|s| s.share() * 100.0),
    };
    let verify = VerifyOptions {
        workers: a.read_workers.map(|n| n as usize),
        memory_bytes: a.read_memory.map(|mib| mib.saturating_mul(1 << 20)),
        subset,
        coverage_days: Some(a.coverage_days),
        now: None,
    };
    if a.measure_ceiling {
        let stats = lifeboat_repo::measure_ceiling(&repo, &verify).await?;
        if g.json {
            crate::output::json(&stats)?;
        } else {
            outln!(
                "ceiling: {} packs ({}) in {:.2} s on {} workers: {:.0} MiB/s",
                stats.packs,
                crate::output::bytes(stats.bytes),
                stats.elapsed_ms as f64 / 1000.0,
                stats.workers,
                stats.mib_per_s
            );
        }
        return Ok(exit::OK);
    }
    // Packs read of packs to read: a count, not bytes.
    let bar = Arc::new(Bar::counting(
        !g.quiet && !g.json && options.read_data,
        "check",
        "packs",
    ));
    let b = bar.clone();
    let progress = move |done: u64, total: u64| b.count(done, total);
    let report = lifeboat_repo::check_with(&repo, &options, &verify, &progress).await;
    bar.finish();
    let report = report?;
    if g.json {
        crate::output::json(&report)?;
    } else {
        for w in &report.warnings {
            eprintln!("lifeboat: warning: {w}");
        }
        for e in &report.errors {
            outln!("error: {}: {}", e.object, e.message);
        }
        if !report.damaged_snapshots.is_empty() {
            outln!("damaged snapshots: {}", report.damaged_snapshots.join(", "));
        }
        for f in report.affected_files.iter().take(100) {
            outln!("affected file: snapshot {} {}", f.snapshot, f.path);
        }
        if report.affected_files.len() > 100 {
            outln!(
                "... and {} more affected files (see --json)",
                report.affected_files.len() - 100
            );
        }
        outln!(
            "checked {} snapshots, {} trees, {} packs, {} blobs{}{}",
            report.snapshots,
            report.trees_checked,
            report.packs,
            report.blobs,
            // Archive objects (PostgreSQL WAL) only when there are some, so
            // the line is unchanged for repositories without.
            if report.archive_objects > 0 {
                format!(", {} archive objects", report.archive_objects)
            } else {
                String::new()
            },
            if options.read_data {
                format!(
                    "; read {} packs ({}{}){}",
                    report.packs_read,
                    crate::output::bytes(report.read_bytes),
                    if repo.has_cold_tier() {
                        format!(
                            ", {} of them from the cold tier",
                            crate::output::bytes(report.cold_read_bytes)
                        )
                    } else {
                        String::new()
                    },
                    if report.archive_objects_read > 0 {
                        format!(
                            " and {} archive objects ({})",
                            report.archive_objects_read,
                            crate::output::bytes(report.archive_read_bytes)
                        )
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            }
        );
        if let Some(c) = report.coverage.as_ref().filter(|_| options.read_data) {
            outln!(
                "verified on this machine within {} days: {} of {} packs ({:.0}%), {} of {} ({:.0}%){}",
                c.window_days,
                c.packs_verified,
                c.packs,
                c.packs_share * 100.0,
                crate::output::bytes(c.bytes_verified),
                crate::output::bytes(c.bytes),
                c.bytes_share * 100.0,
                if c.never_verified_packs > 0 {
                    format!("; {} packs never verified", c.never_verified_packs)
                } else {
                    String::new()
                }
            );
        }
        if report.is_ok() {
            outln!("no errors found");
        } else {
            outln!("{} errors found", report.errors.len());
        }
    }
    Ok(if report.is_ok() {
        exit::OK
    } else {
        exit::DAMAGED
    })
}

pub async fn repair(g: &Global, a: RepairArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    match a.what {
        RepairWhat::Index => {
            let stats = lifeboat_repo::repair::repair_index(&repo).await?;
            if g.json {
                crate::output::json(&stats)?;
            } else {
                outln!(
                    "index rebuilt: {} packs, {} blobs; {} old index objects removed",
                    stats.packs_indexed,
                    stats.blobs_indexed,
                    stats.old_index_files_removed
                );
                for p in &stats.unreadable_packs {
                    outln!("unreadable pack (not indexed): {p}");
                }
            }
            Ok(if stats.unreadable_packs.is_empty() {
                exit::OK
            } else {
                exit::DAMAGED
            })
        }
    }
}

/// `unlock`: removes stale lock objects (holder gone or not refreshed for
/// [`lifeboat_repo::lock::STALE_AFTER`]) and unreadable ones, naming each
/// holder; live locks are kept and named unless `--remove-all`.
pub async fn unlock(g: &Global, a: crate::args::UnlockArgs) -> Result<i32> {
    use lifeboat_repo::lock::{LockOptions, list_locks};
    let repo = session::open(g).await?;
    repo.require(
        lifeboat_repo::Permission::Full,
        "remove locks (other processes' lock objects)",
    )?;
    let options = LockOptions::default();
    let mut rows = Vec::new();
    let mut removed = 0;
    for l in list_locks(repo.storage(), repo.key()).await? {
        let (holder, stale) = match &l.info {
            Ok(info) => (info.describe(), options.is_stale(info)),
            Err(e) => (format!("an unreadable lock ({e})"), true),
        };
        let remove = stale || a.remove_all;
        if remove {
            if !stale && !g.json {
                eprintln!(
                    "lifeboat: warning: removing the lock of {holder}, which still looks alive: \
                     if it runs, a prune may now delete data it is about to reference"
                );
            }
            repo.storage().delete(&l.key).await?;
            removed += 1;
        }
        if !g.json {
            let what = match (remove, stale) {
                (true, true) => "removed stale lock",
                (true, false) => "removed live lock",
                (false, _) => "kept live lock",
            };
            outln!("{what}: {holder}");
        }
        rows.push(serde_json::json!({
            "object": l.key.to_string(),
            "holder": holder,
            "stale": stale,
            "removed": remove,
        }));
    }
    if g.json {
        crate::output::json(&rows)?;
    } else {
        let kept = rows.len() - removed;
        outln!(
            "{removed} locks removed, {kept} kept{}",
            if kept > 0 {
                " (live: wait for them to finish, or --remove-all if you know they are gone)"
            } else {
                ""
            }
        );
    }
    Ok(exit::OK)
}
