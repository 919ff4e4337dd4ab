//! `restore` and `dump`.

use crate::output::outln;
use std::sync::Arc;

use anyhow::Result;
use lifeboat_snapshot::restore::{RestoreOptions, restore as restore_snapshot};

use crate::args::{DumpArgs, Global, RestoreArgs};
use crate::exit;
use crate::output::{bytes, duration_ms};
use crate::progress::Bar;
use crate::session;

pub async fn restore(g: &Global, a: RestoreArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let options = RestoreOptions {
        target: a.target,
        include: a.include,
        exclude: a.exclude,
        overwrite: a.overwrite,
        delta: a.delta,
        owner: nix::unistd::geteuid().is_root(),
    };
    let bar = Bar::new(!g.quiet && !g.json, "restore");
    let stats = restore_snapshot(&repo, &snap, &options, &bar).await;
    bar.finish();
    let stats = stats?;
    if g.json {
        crate::output::json(&stats)?;
    } else {
        for e in &stats.errors {
            eprintln!("lifeboat: error: {e}");
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
    }
    Ok(if stats.errors.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

pub async fn dump(g: &Global, a: DumpArgs) -> Result<i32> {
    let repo: Arc<_> = session::open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    lifeboat_snapshot::dump::dump(&repo, &snap, a.path.as_bytes(), &mut out).await?;
    std::io::Write::flush(&mut out)?;
    Ok(exit::OK)
}
