//! `lifeboat backup`.

use crate::output::outln;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_repo::BackupMode;
use lifeboat_snapshot::backup::{
    BackupOptions, BackupOutcome, StdinOptions, backup, backup_stream,
};

use crate::args::{BackupArgs, Global, ModeArg};
use crate::exit;
use crate::output::{bytes, duration_ms};
use crate::progress::Bar;
use crate::session;

pub async fn run(g: &Global, a: BackupArgs) -> Result<i32> {
    let repo = session::open_or_create_default(g).await?;
    let mode = match a.mode {
        ModeArg::Full => BackupMode::Full,
        ModeArg::Incremental => BackupMode::Incremental,
        ModeArg::Differential => BackupMode::Differential,
    };
    let bar = Arc::new(Bar::new(!g.quiet && !g.json, "backup"));
    let outcome = if a.stdin {
        let options = StdinOptions {
            filename: a.stdin_filename,
            tags: a.tags,
            host: a.host,
            mode,
            compression_level: a.compression,
        };
        backup_stream(repo, std::io::stdin(), &options, bar.clone()).await
    } else {
        let mut excludes = a.excludes;
        for f in &a.exclude_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading exclude file {}", f.display()))?;
            excludes.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        let options = BackupOptions {
            paths: a.paths,
            excludes,
            exclude_caches: a.exclude_caches,
            one_file_system: a.one_file_system,
            tags: a.tags,
            host: a.host,
            mode,
            compression_level: a.compression,
            threads: None,
            scan_totals: bar.is_drawing(),
        };
        backup(repo, &options, bar.clone()).await
    };
    bar.finish();
    let outcome = outcome?;
    render(g, &outcome)?;
    Ok(if outcome.snapshot.record.partial {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

fn render(g: &Global, o: &BackupOutcome) -> Result<()> {
    let r = &o.snapshot.record;
    let s = &r.summary;
    if g.json {
        return crate::output::json(&serde_json::json!({
            "snapshot": o.snapshot.id.to_hex(),
            "short_id": o.snapshot.id.short(),
            "mode": r.mode,
            "parent": r.parent.map(|p| p.to_hex()),
            "partial": r.partial,
            "summary": s,
            "warnings": o.warnings,
        }));
    }
    outln!(
        "snapshot {} saved ({} backup{}{})",
        o.snapshot.id.short(),
        r.mode,
        r.parent
            .map(|p| format!(", parent {}", p.short()))
            .unwrap_or_default(),
        if r.partial {
            ", PARTIAL: some files could not be read"
        } else {
            ""
        }
    );
    outln!(
        "files: {} new, {} changed, {} unchanged, {} skipped, {} errors; {} directories",
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.files_skipped,
        s.errors,
        s.dirs
    );
    outln!(
        "data: {} read, {} added to the repository ({} before compression), {} in the snapshot",
        bytes(s.read_bytes),
        bytes(s.added_bytes),
        bytes(s.added_raw_bytes),
        bytes(s.total_bytes)
    );
    outln!("took {}", duration_ms(s.elapsed_ms));
    Ok(())
}
