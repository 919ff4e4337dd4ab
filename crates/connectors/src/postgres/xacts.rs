//! `pg transactions`: the transactions that committed or aborted in a time
//! window, read from the WAL archived in the repository, so an on-call
//! engineer can pick a point-in-time target (`--target-xid XID
//! --exclusive`) from what the database itself recorded.
//!
//! lifeboat does not parse WAL: PostgreSQL's own `pg_waldump` (of the
//! cluster's major version) reads segments fetched from the repository
//! into a scratch directory, and its text output is grouped here by
//! transaction id: the commit or abort record gives the time, the heap
//! records before it give the relations touched (`tablespace/database/
//! relfilenode`) and what was done to them (INSERT, UPDATE, DELETE...).
//!
//! Segments are read on the timeline of the newest base backup that
//! started before the window (the oldest one when none did), from that
//! backup's first segment on, a few at a time, and reading stops at the
//! first segment holding a commit after the window: the archive is read
//! no further than the window needs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use lifeboat_repo::Repository;
use serde::Serialize;

use super::base::{base_backups, choose_system};
use super::conn;
use super::wal::{get_wal, list_wal};
use super::walname::{Segment, parse_lsn};
use crate::{Error, Result};

/// Segments handed to one `pg_waldump` run (plus the one before, for
/// records that continue across the boundary).
const SEGMENTS_PER_RUN: usize = 4;

/// What to list.
#[derive(Debug, Clone)]
pub struct TransactionsOptions {
    pub from: jiff::Timestamp,
    pub to: jiff::Timestamp,
    /// The cluster, when the repository holds several.
    pub system_identifier: Option<u64>,
}

/// One transaction that ended in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transaction {
    /// The transaction id, as `--target-xid` takes it.
    pub xid: u64,
    /// `commit` or `abort`.
    pub outcome: String,
    pub time: jiff::Timestamp,
    /// LSN of the commit or abort record.
    pub lsn: String,
    /// Relations written, as `tablespace/database/relfilenode`.
    pub relations: Vec<String>,
    /// Record kinds and how many of each (e.g. `Heap DELETE: 40`).
    pub changes: BTreeMap<String, u64>,
}

/// What [`transactions`] found.
#[derive(Debug, Clone, Serialize)]
pub struct TransactionsReport {
    pub system_identifier: String,
    pub timeline: u32,
    pub from: jiff::Timestamp,
    pub to: jiff::Timestamp,
    /// First and last segment read.
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments_read: u64,
    /// Time of the newest commit or abort read: when it is before `to`,
    /// the archive does not yet cover the whole window.
    pub newest_end: Option<jiff::Timestamp>,
    pub covers_window: bool,
    pub transactions: Vec<Transaction>,
}

/// One parsed `pg_waldump` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub rmgr: String,
    pub xid: u64,
    pub lsn: u64,
    pub desc: String,
}

/// Parses `pg_waldump`'s record lines (`rmgr: Heap len (rec/tot): …, tx:
/// 735, lsn: 0/01A2B3C8, prev 0/01A2B390, desc: DELETE …`); other lines
/// are skipped.
pub fn parse_waldump(text: &str) -> Vec<WalRecord> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("rmgr: ")?;
            let rmgr = rest.split_whitespace().next()?.to_string();
            let tx = rest.split_once("tx:")?.1.trim_start();
            let xid: u64 = tx.split(',').next()?.trim().parse().ok()?;
            let lsn = rest.split_once("lsn:")?.1.trim_start();
            let lsn = parse_lsn(lsn.split(',').next()?)?;
            let desc = rest.split_once("desc: ")?.1.to_string();
            Some(WalRecord {
                rmgr,
                xid,
                lsn,
                desc,
            })
        })
        .collect()
}

/// The end time of a `Transaction` record's description (`COMMIT
/// 2026-12-06 07:50:01.123456 UTC; rels: …`), read with `TZ=UTC`.
fn end_of(desc: &str) -> Option<(&'static str, jiff::Timestamp)> {
    let (outcome, rest) = if let Some(r) = desc.strip_prefix("COMMIT ") {
        ("commit", r)
    } else if let Some(r) = desc.strip_prefix("ABORT ") {
        ("abort", r)
    } else {
        return None;
    };
    let stamp = rest.split(';').next()?.trim();
    let stamp = stamp.strip_suffix(" UTC")?;
    let dt: jiff::civil::DateTime = stamp.replace(' ', "T").parse().ok()?;
    let t = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some((outcome, t))
}

/// Folds records into transactions (those whose commit or abort record is
/// among them), in WAL order. Records already seen (by LSN) are skipped.
#[derive(Default)]
struct Fold {
    seen: HashSet<u64>,
    open: BTreeMap<u64, (BTreeSet<String>, BTreeMap<String, u64>)>,
    ended: Vec<Transaction>,
}

impl Fold {
    fn add(&mut self, records: Vec<WalRecord>) {
        for r in records {
            if !self.seen.insert(r.lsn) || r.xid == 0 {
                continue;
            }
            if r.rmgr == "Transaction" {
                if let Some((outcome, time)) = end_of(&r.desc) {
                    let (rels, changes) = self.open.remove(&r.xid).unwrap_or_default();
                    self.ended.push(Transaction {
                        xid: r.xid,
                        outcome: outcome.into(),
                        time,
                        lsn: super::walname::format_lsn(r.lsn),
                        relations: rels.into_iter().collect(),
                        changes,
                    });
                }
                continue;
            }
            let entry = self.open.entry(r.xid).or_default();
            for part in r.desc.split("rel ").skip(1) {
                if let Some(rel) = part.split_whitespace().next() {
                    entry.0.insert(rel.trim_end_matches(',').to_string());
                }
            }
            if matches!(r.rmgr.as_str(), "Heap" | "Heap2") {
                let op = r.desc.split_whitespace().next().unwrap_or("?");
                *entry.1.entry(format!("{} {op}", r.rmgr)).or_default() += 1;
            }
        }
    }
}

/// Runs `pg_waldump` over `first..=last` (segment file names) in `dir`.
/// The end of valid WAL (a partly filled last segment) is where it stops
/// with an error; what it printed before that is the dump.
async fn waldump(
    tool: &Path,
    dir: &Path,
    timeline: u32,
    first: &str,
    last: &str,
) -> Result<String> {
    let out = tokio::process::Command::new(tool)
        .env("TZ", "UTC")
        .arg("--path")
        .arg(dir)
        .arg("--timeline")
        .arg(timeline.to_string())
        .arg(first)
        .arg(last)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Io {
            path: tool.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && !stdout.contains("rmgr: ") {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A segment with no complete record yet (the tail of the archive)
        // is not an error of the listing.
        if !stderr.contains("invalid record length")
            && !stderr.contains("could not find a valid record")
        {
            return Err(Error::Tool {
                tool: format!("{} (set LIFEBOAT_PG_BIN?)", tool.display()),
                status: out.status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
    }
    Ok(stdout)
}

/// Lists the transactions that ended between `from` and `to` (inclusive),
/// from the WAL archived in `repo`. Writes only to a scratch directory it
/// removes.
pub async fn transactions(
    repo: &Repository,
    options: &TransactionsOptions,
) -> Result<TransactionsReport> {
    if options.to < options.from {
        return Err(Error::BadInput(format!(
            "--to {} is before --from {}",
            options.to, options.from
        )));
    }
    let mut backups = base_backups(repo).await?;
    let system = choose_system(&backups, options.system_identifier)?;
    backups.retain(|(_, i)| i.system_id() == system);
    let (_, info) = backups
        .iter()
        .rev()
        .find(|(_, i)| i.start_time <= options.from)
        .or_else(|| backups.first())
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("no base backup of cluster {system}")))?;
    let seg_size = info.wal_segment_size;
    let timeline = info.timeline;
    let start = info.start().number;
    let archived = list_wal(repo).await?.remove(&system).unwrap_or_default();
    let numbers: Vec<u64> = super::pitr::segments_by_timeline(&archived, seg_size)
        .remove(&timeline)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| *n >= start)
        .collect();
    let name = |n: u64| {
        Segment {
            timeline,
            number: n,
        }
        .name(seg_size)
    };
    let major = info.server_version_num / 10000;
    let tool = conn::tool("pg_waldump", Some(major));
    let scratch = tempfile::Builder::new()
        .prefix("lifeboat-waldump-")
        .tempdir()
        .map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let mut fold = Fold::default();
    let mut report = TransactionsReport {
        system_identifier: system.to_string(),
        timeline,
        from: options.from,
        to: options.to,
        first_segment: None,
        last_segment: None,
        segments_read: 0,
        newest_end: None,
        covers_window: false,
        transactions: Vec::new(),
    };
    let mut previous: Option<u64> = None;
    for chunk in numbers.chunks(SEGMENTS_PER_RUN) {
        // A gap in the archive ends the readable WAL.
        let expected = previous.map_or(chunk[0], |p| p + 1);
        let contiguous: Vec<u64> = chunk
            .iter()
            .copied()
            .enumerate()
            .take_while(|(i, n)| *n == expected + *i as u64)
            .map(|(_, n)| n)
            .collect();
        if contiguous.is_empty() {
            break;
        }
        for &n in &contiguous {
            let file = name(n);
            let bytes = get_wal(repo, system, &file).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "WAL segment {file} vanished from the repository while it was read"
                ))
            })?;
            let path = scratch.path().join(&file);
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|source| Error::Io { path, source })?;
            report.segments_read += 1;
            report.first_segment.get_or_insert_with(|| file.clone());
            report.last_segment = Some(file);
        }
        let last = *contiguous.last().expect("not empty");
        let first = previous.unwrap_or(contiguous[0]);
        let text = waldump(&tool, scratch.path(), timeline, &name(first), &name(last)).await?;
        fold.add(parse_waldump(&text));
        // Keep only the last segment: the next run starts there.
        if let Some(p) = previous {
            for n in p..last {
                let _ = std::fs::remove_file(scratch.path().join(name(n)));
            }
        }
        previous = Some(last);
        report.newest_end = fold.ended.iter().map(|t| t.time).max();
        if report.newest_end.is_some_and(|t| t > options.to) {
            report.covers_window = true;
            break;
        }
        if contiguous.len() < chunk.len() {
            break;
        }
    }
    report.transactions = fold
        .ended
        .into_iter()
        .filter(|t| t.time >= options.from && t.time <= options.to)
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
rmgr: Heap        len (rec/tot):     54/    54, tx:        741, lsn: 0/03000060, prev 0/03000028, desc: DELETE off 41 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16389 blk 0
rmgr: Heap        len (rec/tot):     54/    54, tx:        741, lsn: 0/03000098, prev 0/03000060, desc: DELETE off 42 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16389 blk 0
rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/030000D0, prev 0/03000098, desc: RUNNING_XACTS nextXid 742 latestCompletedXid 740 oldestRunningXid 741; 1 xacts: 741
rmgr: Transaction len (rec/tot):     34/    34, tx:        741, lsn: 0/03000108, prev 0/030000D0, desc: COMMIT 2026-12-06 07:50:01.123456 UTC
rmgr: Heap        len (rec/tot):     59/    59, tx:        742, lsn: 0/03000130, prev 0/03000108, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16389 blk 1
rmgr: Transaction len (rec/tot):     34/    34, tx:        742, lsn: 0/03000170, prev 0/03000130, desc: ABORT 2026-12-06 07:50:02.5 UTC
";

    #[test]
    fn waldump_records_fold_into_transactions_with_time_relations_and_changes() {
        let mut fold = Fold::default();
        fold.add(parse_waldump(DUMP));
        // The same records again (an overlapping run) change nothing.
        fold.add(parse_waldump(DUMP));
        assert_eq!(fold.ended.len(), 2);
        let t = &fold.ended[0];
        assert_eq!(t.xid, 741);
        assert_eq!(t.outcome, "commit");
        assert_eq!(t.time.to_string(), "2026-12-06T07:50:01.123456Z");
        assert_eq!(t.lsn, "0/3000108");
        assert_eq!(t.relations, vec!["1663/5/16389".to_string()]);
        assert_eq!(t.changes.get("Heap DELETE"), Some(&2));
        let a = &fold.ended[1];
        assert_eq!((a.xid, a.outcome.as_str()), (742, "abort"));
        assert_eq!(a.changes.get("Heap INSERT"), Some(&1));
    }
}
