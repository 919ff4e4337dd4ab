//! `copy --from A --to B`: opens both repositories and calls
//! [`lifeboat_repo::copy`] (with the connectors' archive retention rules
//! unless `--no-wal`, so the WAL archive the copied base backups need comes
//! along); also opens the source repository for
//! `init --copy-chunker-params-from`.
//!
//! The source password comes from `--from-password-file` /
//! `LIFEBOAT_FROM_PASSWORD_FILE`, then `LIFEBOAT_FROM_PASSWORD`, then the
//! main password options; the target uses the main password options.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use lifeboat_repo::{CopyOptions, CopyProgress, Repository};
use lifeboat_snapshot::progress::BackupProgress;

use crate::args::{CopyArgs, Global};
use crate::exit;
use crate::output::outln;
use crate::progress::Bar;
use crate::session;

/// Opens the repository to copy (or take chunker parameters) from.
pub async fn open_source(
    g: &Global,
    location: &str,
    password_file: Option<&Path>,
) -> Result<Arc<Repository>> {
    let t = session::target_at(location, 0)?;
    let storage = session::storage(&t).await?;
    let config = session::require_repository(&storage)
        .await
        .with_context(|| format!("opening the source repository {location}"))?;
    let password = match (password_file, std::env::var("LIFEBOAT_FROM_PASSWORD")) {
        (Some(file), _) => session::read_password_file(file)?,
        (None, Ok(p)) => p.into_bytes(),
        // The default repository named by its path: its own password file,
        // not the main password options (those are the target's).
        (None, Err(_)) => match &t.default {
            Some(d) if d.password_file.exists() => session::read_password_file(&d.password_file)?,
            _ => session::password(g, &t, false)?,
        },
    };
    let repo = Repository::open_with_config(storage, config, &password, session::local_state())
        .await
        .with_context(|| format!("opening the source repository {location}"))?
        .with_user_disk_cache();
    Ok(Arc::new(repo))
}

/// The progress bar counts data blobs as its "files" and their plaintext as
/// its bytes. It also notes when the snapshots are done and the archive
/// objects start, so an error can say which part failed.
struct CopyBar {
    bar: Bar,
    archive_started: AtomicBool,
}

impl CopyProgress for CopyBar {
    fn planned(&self, blobs: u64, bytes: u64) {
        self.bar.scanned(blobs, bytes);
    }
    fn blob_copied(&self, bytes: u64) {
        self.bar.processed(1, bytes);
    }
    fn archive_started(&self) {
        self.archive_started.store(true, Ordering::Relaxed);
    }
}

pub async fn run(g: &Global, a: CopyArgs) -> Result<i32> {
    crate::release_freed_memory_at_once();
    let source = open_source(g, &a.from, a.from_password_file.as_deref()).await?;
    let t = match &a.to {
        Some(to) => session::target_at(to, 0)?,
        None => session::target(g)?,
    };
    let storage = session::storage(&t).await?;
    let config = session::require_repository(&storage)
        .await
        .with_context(|| format!("opening the target repository {}", t.display))?;
    let password = session::password(g, &t, false)?;
    let target = Repository::open_with_config(storage, config, &password, session::local_state())
        .await
        .with_context(|| format!("opening the target repository {}", t.display))?
        .with_user_disk_cache();
    // --cold-location names the main repository's cold tier: the target.
    let target = Arc::new(session::with_cold_location(
        target,
        g.cold_location.as_deref(),
    )?);
    let bar = CopyBar {
        bar: Bar::new(!g.quiet && !g.json, "copy"),
        archive_started: AtomicBool::new(false),
    };
    let options = CopyOptions {
        snapshots: a.snapshots,
        archive: (!a.no_wal).then(lifeboat_connectors::archive_rules),
        ..Default::default()
    };
    let stats = lifeboat_repo::copy(&source, &target, &options, &bar).await;
    bar.bar.finish();
    let stats = if bar.archive_started.load(Ordering::Relaxed) {
        stats.context("copying the PostgreSQL WAL archive (the snapshots were copied)")?
    } else {
        stats?
    };
    let wal = stats.archive.as_ref();
    if g.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            stats: &'a lifeboat_repo::CopyStats,
            wal: Option<&'a lifeboat_repo::archive::ArchiveCopyStats>,
        }
        crate::output::json(&Out { stats: &stats, wal })?;
    } else {
        for c in &stats.copied {
            outln!("copied snapshot {} -> {}", &c.source[..8], &c.target[..8]);
        }
        outln!(
            "{} snapshots copied, {} already in {}; {} blobs added ({} stored), {} read from {} in {}",
            stats.snapshots_copied,
            stats.snapshots_skipped,
            t.display,
            stats.blobs_added,
            crate::output::bytes(stats.added_bytes),
            crate::output::bytes(stats.read_bytes),
            a.from,
            crate::output::duration_ms(stats.elapsed_ms)
        );
        if let Some(w) = wal.filter(|w| w.copied + w.present + w.not_needed > 0) {
            outln!(
                "WAL archive: {} files copied ({}), {} already there, {} older than the target's oldest base backup skipped",
                w.copied,
                crate::output::bytes(w.bytes),
                w.present,
                w.not_needed
            );
        }
    }
    Ok(exit::OK)
}
