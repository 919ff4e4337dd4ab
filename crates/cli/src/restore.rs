//! `restore` and `dump`.

use crate::output::outln;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use anyhow::Result;
use lifeboat_repo::{Repository, Snapshot, Tier};
use lifeboat_snapshot::restore::{RestoreOptions, RestorePlan, plan, restore as restore_snapshot};

use crate::args::{DumpArgs, Global, RestoreArgs};
use crate::exit;
use crate::output::{bytes, duration_ms};
use crate::progress::Bar;
use crate::session;

pub async fn restore(g: &Global, a: RestoreArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let snap = crate::read::find_snapshot(&repo, &a.snapshot, &a.filter).await?;
    check_includes_exist(&repo, &snap, &a.include).await?;
    let options = RestoreOptions {
        target: a.target,
        include: a.include,
        exclude: a.exclude,
        overwrite: a.overwrite,
        delta: a.delta,
        owner: nix::unistd::geteuid().is_root(),
        trust_snapshot_owner: a.trust_snapshot_owner,
        sync_each_file: false,
        batch_files: a.batch_files.map_or(0, |n| n as usize),
        part_entries: a.part_entries.map_or(0, |n| n as usize),
    };
    // With a cold tier, say what will be fetched before fetching it: the
    // plan reads only trees and the index.
    if a.plan_only || repo.has_cold_tier() {
        let planned = plan(&repo, &snap, &options).await?;
        if a.plan_only {
            if g.json {
                crate::output::json(&plan_json(&repo, &planned, g.cold_location.as_deref())?)?;
            } else {
                print_plan(&repo, &snap, &planned, usize::MAX, false);
            }
            return Ok(exit::OK);
        }
        // stdout carries the restore's JSON: the plan goes to stderr.
        print_plan(&repo, &snap, &planned, PLAN_PACKS_SHOWN, g.json);
    }
    let bar = Bar::new(!g.quiet && !g.json, "restore");
    let stats = restore_snapshot(&repo, &snap, &options, &bar).await;
    bar.finish();
    let stats = stats?;
    if !options.include.is_empty()
        && stats.files_restored
            + stats.files_skipped_identical
            + stats.dirs
            + stats.symlinks
            + stats.hardlinks
            == 0
    {
        return Err(exit::cli_error(
            exit::NOT_FOUND,
            format!(
                "nothing in snapshot {} matches --include {} (list it with `lifeboat ls {}`)",
                snap.id.short(),
                options
                    .include
                    .iter()
                    .map(|p| lifeboat_snapshot::printable(p.as_bytes()))
                    .collect::<Vec<_>>()
                    .join(" --include "),
                snap.id.short()
            ),
        ));
    }
    let verified = if a.verify {
        Some(lifeboat_snapshot::restore::verify(&repo, &snap, &options).await?)
    } else {
        None
    };
    let differ = verified.as_ref().is_some_and(|v| !v.differences.is_empty());
    if g.json {
        let mut v = serde_json::to_value(&stats)?;
        if let Some(verified) = &verified {
            v["verify"] = serde_json::to_value(verified)?;
        }
        crate::output::json(&v)?;
    } else {
        for e in &stats.errors {
            eprintln!("lifeboat: error: {e}");
        }
        if stats.untrusted_snapshot {
            eprintln!(
                "lifeboat: warning: owners not restored; set-id bits and security.* attributes left off {} entries \
                 (the snapshot was not made by root of a host; --trust-snapshot-owner restores them)",
                stats.stripped.len()
            );
        }
        outln!(
            "restored snapshot {} to {}: {} files ({}), {} unchanged files skipped, {} errors, took {}",
            snap.id.short(),
            options.target.display(),
            stats.files_restored,
            bytes(stats.bytes_written),
            stats.files_skipped_identical,
            stats.errors.len(),
            duration_ms(stats.elapsed_ms)
        );
        if let Some(v) = &verified {
            for d in &v.differences {
                eprintln!("lifeboat: error: verify: {d}");
            }
            outln!(
                "verified {} files ({}) and {} symlinks against the snapshot: {}",
                v.files_checked,
                bytes(v.bytes_checked),
                v.symlinks_checked,
                if v.differences.is_empty() {
                    "all match".to_string()
                } else {
                    format!("{} DIFFER", v.differences.len())
                }
            );
        }
    }
    Ok(if stats.errors.is_empty() && !differ {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

/// An `--include` that is a plain snapshot path (a `/` and no wildcard)
/// must exist: a typo would otherwise restore nothing and succeed.
async fn check_includes_exist(
    repo: &Repository,
    snap: &Snapshot,
    include: &[std::ffi::OsString],
) -> Result<()> {
    for p in include {
        // Not UTF-8: a literal path or name, never a glob.
        let plain = match p.to_str() {
            Some(p) => p.contains('/') && !p.contains(['*', '?', '[', '{', '\\']),
            None => p.as_bytes().contains(&b'/'),
        };
        if plain {
            lifeboat_snapshot::nav::lookup(repo, &snap.id.short(), snap.record.tree, p.as_bytes())
                .await?;
        }
    }
    Ok(())
}

/// The plan as JSON, each cold pack with where it really is: for S3 its
/// `bucket` and full `key` (prefix included), what a provider's restore
/// request (GLACIER, DEEP_ARCHIVE) takes; for a directory its full `path`.
fn plan_json(
    repo: &Repository,
    p: &RestorePlan,
    cold_override: Option<&str>,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(p)?;
    let cold = cold_override
        .or(repo.cold_location())
        .map(lifeboat_storage::Location::parse)
        .transpose()?;
    if let (Some(cold), Some(packs)) = (cold, v["packs"].as_array_mut()) {
        for pack in packs {
            if pack["tier"] != serde_json::json!(Tier::Cold) {
                continue;
            }
            let object = pack["object"].as_str().unwrap_or_default().to_string();
            match &cold {
                lifeboat_storage::Location::S3(o) => {
                    let prefix = o.root.trim_matches('/');
                    pack["bucket"] = o.bucket.clone().into();
                    pack["key"] = if prefix.is_empty() {
                        object
                    } else {
                        format!("{prefix}/{object}")
                    }
                    .into();
                }
                lifeboat_storage::Location::Local(dir) => {
                    pack["path"] = dir.join(&object).display().to_string().into();
                }
                lifeboat_storage::Location::Sftp(o) => {
                    pack["path"] = format!("{}/{object}", o.root.trim_end_matches('/')).into();
                }
                lifeboat_storage::Location::Serve(_) => {}
            }
        }
    }
    Ok(v)
}

/// Cold packs listed before a restore proceeds (`--plan-only` lists all).
const PLAN_PACKS_SHOWN: usize = 20;

fn print_plan(repo: &Repository, snap: &Snapshot, p: &RestorePlan, shown: usize, stderr: bool) {
    let say = |line: String| {
        if stderr {
            eprintln!("lifeboat: {line}");
        } else {
            outln!("{line}");
        }
    };
    say(format!(
        "restore plan for snapshot {}: {} files ({})",
        snap.id.short(),
        p.files,
        bytes(p.file_bytes)
    ));
    if let Some(cold) = repo.cold_location() {
        say(format!(
            "  cold tier {cold}: {} packs, {} to read",
            p.cold_packs,
            bytes(p.cold_read_bytes)
        ));
    }
    say(format!(
        "  hot tier: {} packs, {} to read",
        p.hot_packs,
        bytes(p.hot_read_bytes)
    ));
    if p.missing_blobs > 0 {
        say(format!(
            "  {} blobs are not in the index: their files will not be restored (run `lifeboat check`)",
            p.missing_blobs
        ));
    }
    if p.damaged_trees > 0 {
        say(format!(
            "  {} directories have a damaged tree: their contents will not be restored (run `lifeboat check`)",
            p.damaged_trees
        ));
    }
    let cold: Vec<_> = p.packs.iter().filter(|k| k.tier == Tier::Cold).collect();
    for k in cold.iter().take(shown) {
        say(format!(
            "  cold pack {} ({}, {} in {} reads)",
            k.pack,
            k.object,
            bytes(k.read_bytes),
            k.reads
        ));
    }
    if cold.len() > shown {
        say(format!(
            "  ... and {} more cold packs (`restore --plan-only --json` lists them all)",
            cold.len() - shown
        ));
    }
}

pub async fn dump(g: &Global, a: DumpArgs) -> Result<i32> {
    let repo: Arc<_> = session::open(g).await?;
    let snap = crate::read::find_snapshot(&repo, &a.snapshot, &a.filter).await?;
    let path = a.path.as_bytes();
    let result = if lifeboat_snapshot::dumptar::is_dir(&repo, &snap, path).await? {
        // A directory (or the whole snapshot) as a tar stream, as restic
        // does.
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        lifeboat_snapshot::dumptar::dump_tar(repo.clone(), &snap, path, Box::new(out))
            .await
            .map(|_| ())
    } else {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        lifeboat_snapshot::dump::dump(&repo, &snap, path, &mut out)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => Ok(exit::OK),
        // `dump ... | head`: the reader has all it wanted. Quiet, as for
        // cat and tar.
        Err(e) if crate::output::is_broken_pipe(&e) => Ok(exit::OK),
        Err(e) => Err(e.into()),
    }
}
