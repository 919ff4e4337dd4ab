//! Read commands: `snapshots`, `ls`, `diff`, `find`, `stats`. Each has `--json`.

use crate::output::outln;
use anyhow::Result;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use lifeboat_repo::{BlobType, Repository, Snapshot};
use lifeboat_snapshot::diff::{Change, diff as diff_snapshots};
use lifeboat_snapshot::find::find as find_files;
use lifeboat_snapshot::ls::ls_each;
use lifeboat_snapshot::nav::{rooted_at, split_query};
use serde::Serialize;

use crate::args::{
    DiffArgs, FindArgs, Global, LsArgs, SnapshotFilterArgs, SnapshotsArgs, StatsArgs,
};
use crate::exit;
use crate::output::{Lines, bytes, json, local_time};
use crate::session;

#[derive(Serialize)]
struct SnapshotRow<'a> {
    id: String,
    short_id: String,
    #[serde(flatten)]
    record: &'a lifeboat_repo::SnapshotRecord,
}

#[derive(Serialize)]
struct DamagedRow<'a> {
    id: &'a str,
    damaged: bool,
    reason: &'a str,
}

/// Lists every snapshot, and every damaged snapshot record (whatever the
/// filters: its host and tags are unknown) with exit code 14 after the
/// listing, so a damaged record is never passed over in silence.
pub async fn snapshots(g: &Global, a: SnapshotsArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let listing = repo.snapshot_listing().await?;
    let all: Vec<&Snapshot> = listing
        .snapshots
        .iter()
        .filter(|s| a.host.as_ref().is_none_or(|h| &s.record.host == h))
        .filter(|s| a.tag.as_ref().is_none_or(|t| s.record.tags.contains(t)))
        .collect();
    let code = if listing.damaged.is_empty() {
        exit::OK
    } else {
        exit::DAMAGED
    };
    if g.json {
        let mut rows: Vec<serde_json::Value> = all
            .iter()
            .map(|s| {
                serde_json::to_value(SnapshotRow {
                    id: s.id.to_hex(),
                    short_id: s.id.short(),
                    record: &s.record,
                })
            })
            .collect::<Result<_, _>>()?;
        for d in &listing.damaged {
            rows.push(serde_json::to_value(DamagedRow {
                id: &d.id,
                damaged: true,
                reason: &d.reason,
            })?);
        }
        return json(&rows).map(|_| code);
    }
    outln!(
        "{:<8}  {:<24}  {:<12}  {:<8}  {:<12}  {:>10}  {:>10}  paths",
        "id",
        "time",
        "host",
        "parent",
        "mode",
        "size",
        "added"
    );
    for s in &all {
        let r = &s.record;
        let time = local_time(r.time);
        outln!(
            "{:<8}  {:<24}  {:<12}  {:<8}  {:<12}  {:>10}  {:>10}  {}{}{}",
            s.id.short(),
            time,
            r.host,
            r.parent.map(|p| p.short()).unwrap_or_else(|| "-".into()),
            r.mode.to_string(),
            bytes(r.summary.total_bytes),
            bytes(r.summary.added_bytes),
            r.paths.join(" "),
            if r.tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", r.tags.join(","))
            },
            marks(r),
        );
    }
    for d in &listing.damaged {
        outln!(
            "{:<8}  DAMAGED record snapshots/{}: {}",
            d.id.get(..8).unwrap_or(&d.id),
            d.id,
            d.reason
        );
    }
    if listing.damaged.is_empty() {
        outln!("{} snapshots", all.len());
    } else {
        outln!(
            "{} snapshots, {} damaged snapshot records (run `lifeboat check`; `lifeboat forget ID` removes one)",
            all.len(),
            listing.damaged.len()
        );
    }
    Ok(code)
}

/// What the listing says after a snapshot's paths: partial, empty input.
fn marks(r: &lifeboat_repo::SnapshotRecord) -> String {
    let mut out = String::new();
    if r.partial {
        out.push_str(" (partial)");
    }
    if r.extra.get(lifeboat_snapshot::backup::EMPTY_STREAM) == Some(&serde_json::Value::Bool(true))
    {
        out.push_str(" (EMPTY input)");
    }
    out
}

/// The snapshot a query names: an id, a unique prefix or `latest` (which
/// the filters narrow), optionally followed by `:SUBPATH` (restic's
/// `latest:/home/me`), in which case the snapshot is re-rooted at that
/// directory ([`lifeboat_snapshot::nav::rooted_at`]).
pub async fn find_snapshot(
    repo: &Repository,
    query: &OsStr,
    filter: &SnapshotFilterArgs,
) -> Result<Snapshot> {
    let (query, subpath) = split_query(query.as_bytes())?;
    let snap = repo.find_snapshot_matching(query, &filter.filter()).await?;
    rooted(repo, snap, subpath).await
}

/// `snap` re-rooted at `subpath` when there is one.
async fn rooted(repo: &Repository, snap: Snapshot, subpath: Option<&[u8]>) -> Result<Snapshot> {
    Ok(match subpath {
        Some(sub) => rooted_at(repo, snap, sub).await?,
        None => snap,
    })
}

pub async fn ls(g: &Global, a: LsArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let snap = find_snapshot(&repo, &a.snapshot, &a.filter).await?;
    let path = a.path.unwrap_or_else(|| "/".into());
    // Entries are printed as the trees arrive (a snapshot of millions of
    // files is never held); JSON output is the same array, one entry a line.
    // "[" is written with the first entry, so a path that is not there
    // prints nothing on stdout.
    let mut out = Lines::new();
    let mut first = true;
    ls_each(&repo, &snap, path.as_bytes(), !a.no_recursive, &mut |e| {
        if g.json {
            let sep = if std::mem::take(&mut first) {
                "[\n"
            } else {
                ","
            };
            let entry = serde_json::to_string(&e).expect("an entry serializes");
            out.line(format_args!("{sep}{entry}"));
            return Ok(());
        }
        let kind = match e.kind {
            lifeboat_snapshot::ls::EntryKind::Dir => 'd',
            lifeboat_snapshot::ls::EntryKind::Symlink => 'l',
            lifeboat_snapshot::ls::EntryKind::File => '-',
        };
        out.line(format_args!(
            "{kind}{:04o} {:>8} {:>8} {:>12} {} {}{}",
            e.mode,
            e.user.clone().unwrap_or_else(|| e.uid.to_string()),
            e.group.clone().unwrap_or_else(|| e.gid.to_string()),
            e.size,
            local_time(e.mtime),
            e.path,
            e.link_target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default()
        ));
        Ok(())
    })
    .await?;
    if g.json {
        out.line(format_args!("{}]", if first { "[" } else { "" }));
    }
    out.finish();
    Ok(exit::OK)
}

pub async fn diff(g: &Global, a: DiffArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let listing = repo.snapshot_listing().await?;
    let filter = a.filter.filter();
    let (first, first_sub) = split_query(a.first.as_bytes())?;
    let (second, second_sub) = split_query(a.second.as_bytes())?;
    let first = listing
        .resolve(first, &filter, repo.skip_damaged())?
        .clone();
    let second = listing
        .resolve(second, &filter, repo.skip_damaged())?
        .clone();
    let first = rooted(&repo, first, first_sub).await?;
    let second = rooted(&repo, second, second_sub).await?;
    let report = diff_snapshots(&repo, &first, &second).await?;
    if g.json {
        return json(&report).map(|_| exit::OK);
    }
    for e in &report.entries {
        let sign = match e.change {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => 'M',
        };
        let size = match (e.old_size, e.new_size) {
            (Some(o), Some(n)) if o != n => format!(" ({} -> {})", bytes(o), bytes(n)),
            (_, Some(n)) => format!(" ({})", bytes(n)),
            (Some(o), None) => format!(" ({})", bytes(o)),
            _ => String::new(),
        };
        let what = if e.change == Change::Changed && !e.content {
            format!(" [metadata: {}]", e.metadata.join(","))
        } else {
            String::new()
        };
        outln!("{sign} {}{size}{what}", e.path);
    }
    let t = &report.totals;
    outln!(
        "{} added ({}), {} removed ({}), {} changed",
        t.added,
        bytes(t.added_bytes),
        t.removed,
        bytes(t.removed_bytes),
        t.changed
    );
    Ok(exit::OK)
}

pub async fn find(g: &Global, a: FindArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let filter = a.filter.filter();
    let all: Vec<Snapshot> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| filter.matches(s))
        .collect();
    let found = find_files(&repo, &a.pattern, &all).await?;
    if g.json {
        return json(&found).map(|_| exit::OK);
    }
    if found.is_empty() {
        outln!(
            "no file matches {} in {} snapshots",
            lifeboat_snapshot::printable(a.pattern.as_bytes()),
            all.len()
        );
        return Ok(exit::NOT_FOUND);
    }
    for h in &found {
        outln!("{}", h.path);
        for ev in &h.events {
            outln!(
                "  {:?} in snapshot {} at {}{}",
                ev.change,
                ev.snapshot,
                local_time(ev.time),
                ev.size
                    .map(|s| format!(" ({})", bytes(s)))
                    .unwrap_or_default()
            );
        }
    }
    Ok(exit::OK)
}

#[derive(Serialize)]
struct Stats {
    snapshots: usize,
    /// Packs in all tiers.
    packs: usize,
    pack_bytes: u64,
    /// The cold tier's location, if the repository has one.
    cold_tier: Option<String>,
    cold_packs: usize,
    cold_pack_bytes: u64,
    index_files: usize,
    blobs: usize,
    data_blobs: usize,
    tree_blobs: usize,
    /// Plaintext bytes of all distinct blobs.
    raw_bytes: u64,
    /// Bytes the snapshots describe (sum of file sizes of every snapshot).
    snapshot_bytes: u64,
    compression_ratio: f64,
    dedup_ratio: f64,
}

pub async fn stats(g: &Global, _a: StatsArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let index = repo.index().await?;
    // Lists the cold tier too (a listing reads no pack content).
    let packs = repo.list_packs().await?;
    let cold: Vec<u64> = packs
        .iter()
        .filter(|(t, _)| *t == lifeboat_repo::Tier::Cold)
        .map(|(_, o)| o.size_bytes)
        .collect();
    let index_files = repo
        .storage()
        .list(lifeboat_storage::Kind::Index)
        .await?
        .len();
    let snaps = repo.snapshots().await?;
    let mut raw = 0u64;
    let mut stored = 0u64;
    for loc in index.blobs() {
        raw += loc.entry.raw_length as u64;
        stored += loc.entry.length as u64;
    }
    let snapshot_bytes: u64 = snaps.iter().map(|s| s.record.summary.total_bytes).sum();
    let s = Stats {
        snapshots: snaps.len(),
        packs: packs.len(),
        pack_bytes: packs.iter().map(|(_, p)| p.size_bytes).sum(),
        cold_tier: repo.cold_location().map(str::to_string),
        cold_packs: cold.len(),
        cold_pack_bytes: cold.iter().sum(),
        index_files,
        blobs: index.blob_count(),
        data_blobs: index.blob_count_of(BlobType::Data),
        tree_blobs: index.blob_count_of(BlobType::Tree),
        raw_bytes: raw,
        snapshot_bytes,
        compression_ratio: if stored > 0 {
            raw as f64 / stored as f64
        } else {
            1.0
        },
        dedup_ratio: if raw > 0 {
            snapshot_bytes as f64 / raw as f64
        } else {
            1.0
        },
    };
    if g.json {
        return json(&s).map(|_| exit::OK);
    }
    outln!("snapshots:          {}", s.snapshots);
    outln!("packs:              {} ({})", s.packs, bytes(s.pack_bytes));
    if let Some(cold) = &s.cold_tier {
        outln!(
            "  in the cold tier:  {} ({}) at {cold}",
            s.cold_packs,
            bytes(s.cold_pack_bytes)
        );
    }
    outln!(
        "blobs:              {} ({} data, {} tree)",
        s.blobs,
        s.data_blobs,
        s.tree_blobs
    );
    outln!("unique data:        {}", bytes(s.raw_bytes));
    outln!("data in snapshots:  {}", bytes(s.snapshot_bytes));
    outln!("compression ratio:  {:.2}x", s.compression_ratio);
    outln!("dedup ratio:        {:.2}x", s.dedup_ratio);
    Ok(exit::OK)
}
