//! `audit verify|log|deleted`, `protect` and `unprotect`: render
//! [`lifeboat_repo::audit`] and [`lifeboat_repo::protect`].

use anyhow::Result;
use lifeboat_repo::Snapshot;
use lifeboat_repo::audit::{self, ExternalHeads, LoggedRecord, Severity};
use lifeboat_repo::protect;
use serde::Serialize;

use crate::args::{AuditArgs, AuditCommand, Global, ProtectArgs, UnprotectArgs};
use crate::exit::{self, cli_error};
use crate::output::{bytes, json, outln};
use crate::session;

/// A point in time given on the command line: a date (midnight UTC), an
/// RFC 3339 time, or a duration back from now (`past`) or ahead of now.
pub fn parse_when(option: &str, s: &str, past: bool) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>()
        && let Ok(z) = d.to_zoned(jiff::tz::TimeZone::UTC)
    {
        return Ok(z.timestamp());
    }
    if let Ok(d) = lifeboat_repo::retention::parse_duration(s) {
        let now = jiff::Timestamp::now();
        let t = if past {
            now.checked_sub(d)
        } else {
            now.checked_add(d)
        };
        if let Ok(t) = t {
            return Ok(t);
        }
    }
    Err(cli_error(
        exit::USAGE,
        format!(
            "{option} takes a date (2027-01-31), a time (2027-01-31T12:00:00Z) or a duration \
             (30d, 12h, 1y), not {s:?}"
        ),
    ))
}

pub async fn run(g: &Global, a: AuditArgs) -> Result<i32> {
    match a.command {
        AuditCommand::Verify {
            against,
            against_password_file,
        } => verify(g, &against, against_password_file.as_deref()).await,
        AuditCommand::Log { since, ops } => {
            let since = since.map(|s| parse_when("--since", &s, true)).transpose()?;
            log(g, since, &ops).await
        }
        AuditCommand::Deleted { since } => {
            let since = since.map(|s| parse_when("--since", &s, true)).transpose()?;
            deleted(g, since).await
        }
    }
}

async fn verify(
    g: &Global,
    against: &[String],
    password_file: Option<&std::path::Path>,
) -> Result<i32> {
    let repo = session::open(g).await?;
    let mut external: Vec<ExternalHeads> = Vec::new();
    for loc in against {
        let target = crate::copy::open_source(g, loc, password_file).await?;
        external.extend(audit::witnessed_in(&target, &repo.config().repository_id).await?);
    }
    let report = audit::verify(&repo, &external).await?;
    let code = if report.errors() > 0 {
        exit::DAMAGED
    } else {
        exit::OK
    };
    if g.json {
        json(&report)?;
        return Ok(code);
    }
    for f in &report.findings {
        let label = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        outln!("{label}: {}", f.message);
    }
    outln!(
        "{} records, height {}, {} head{}; compared with {} witness{}: {}",
        report.records,
        report.height,
        report.heads.len(),
        if report.heads.len() == 1 { "" } else { "s" },
        report.witnesses_checked,
        if report.witnesses_checked == 1 {
            ""
        } else {
            "es"
        },
        if report.errors() > 0 {
            format!(
                "{} errors: the audit log was tampered with or damaged",
                report.errors()
            )
        } else {
            "no errors".to_string()
        }
    );
    Ok(code)
}

#[derive(Serialize)]
struct RecordJson<'a> {
    id: String,
    #[serde(flatten)]
    record: &'a audit::AuditRecord,
}

fn args_line(r: &audit::AuditRecord) -> String {
    r.args
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn when(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

async fn log(g: &Global, since: Option<jiff::Timestamp>, ops: &[String]) -> Result<i32> {
    let repo = session::open(g).await?;
    let log = audit::read_log(&repo).await?;
    let selected: Vec<&LoggedRecord> = audit::filter(&log, since, ops).collect();
    if g.json {
        let out: Vec<RecordJson> = selected
            .iter()
            .map(|r| RecordJson {
                id: r.id.to_hex(),
                record: &r.record,
            })
            .collect();
        json(&out)?;
    } else {
        for r in &selected {
            let rec = &r.record;
            let mut line = format!(
                "{}  {:>4}  {}  {}@{}  {:<12} {}",
                when(&rec.time),
                rec.height,
                r.id.short(),
                rec.user,
                rec.host,
                rec.op,
                args_line(rec)
            );
            if !rec.snapshots.is_empty() {
                let ids: Vec<String> = rec.snapshots.iter().map(|i| i.short()).collect();
                line.push_str(&format!("  snapshots {}", ids.join(",")));
            }
            if rec.bytes_deleted > 0 {
                line.push_str(&format!("  deleted {}", bytes(rec.bytes_deleted)));
            }
            outln!("{}", line.trim_end());
        }
    }
    for u in &log.unreadable {
        tracing::warn!("audit log: {u} (run `lifeboat audit verify`)");
    }
    Ok(exit::OK)
}

/// One pair of consecutive snapshots of a source and what disappeared.
#[derive(Serialize)]
struct Disappeared {
    host: String,
    paths: Vec<String>,
    from: String,
    from_time: jiff::Timestamp,
    to: String,
    to_time: jiff::Timestamp,
    removed: Vec<RemovedPath>,
}

#[derive(Serialize)]
struct RemovedPath {
    path: String,
    size: Option<u64>,
}

#[derive(Serialize)]
struct DeletedReport<'a> {
    /// Records of forget, prune, key-remove and unprotect.
    records: Vec<RecordJson<'a>>,
    disappeared: Vec<Disappeared>,
}

/// `forget-refused` follows a forget whose deletes the storage refused
/// (its `snapshots` are still there).
const DESTRUCTIVE: &[&str] = &[
    "forget",
    "forget-refused",
    "prune",
    "key-remove",
    "unprotect",
];

async fn deleted(g: &Global, since: Option<jiff::Timestamp>) -> Result<i32> {
    let repo = session::open(g).await?;
    let log = audit::read_log(&repo).await?;
    let ops: Vec<String> = DESTRUCTIVE.iter().map(|s| s.to_string()).collect();
    let records: Vec<&LoggedRecord> = audit::filter(&log, since, &ops).collect();
    // Snapshots a forget named but the storage refused to delete.
    let refused: std::collections::HashSet<(String, lifeboat_repo::Id)> = log
        .records
        .iter()
        .filter(|r| r.record.op == "forget-refused")
        .flat_map(|r| {
            let forget = r.record.args.get("forget").and_then(|v| v.as_str());
            let forget = forget.unwrap_or_default().to_string();
            r.record
                .snapshots
                .iter()
                .map(move |id| (forget.clone(), *id))
        })
        .collect();

    // Paths that disappeared between consecutive snapshots of a source.
    let snapshots = repo.snapshots().await?;
    let mut groups: std::collections::BTreeMap<(String, Vec<String>), Vec<&Snapshot>> =
        Default::default();
    for s in &snapshots {
        let mut paths = s.record.paths.clone();
        paths.sort();
        groups
            .entry((s.record.host.clone(), paths))
            .or_default()
            .push(s);
    }
    let mut disappeared = Vec::new();
    for ((host, paths), list) in &groups {
        for pair in list.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if since.is_some_and(|t| b.record.time < t) || a.record.tree == b.record.tree {
                continue;
            }
            let report = lifeboat_snapshot::diff::diff(&repo, a, b).await?;
            let removed: Vec<RemovedPath> = report
                .entries
                .iter()
                .filter(|e| e.change == lifeboat_snapshot::diff::Change::Removed)
                .map(|e| RemovedPath {
                    path: e.path.clone(),
                    size: e.old_size,
                })
                .collect();
            if !removed.is_empty() {
                disappeared.push(Disappeared {
                    host: host.clone(),
                    paths: paths.clone(),
                    from: a.id.to_hex(),
                    from_time: a.record.time,
                    to: b.id.to_hex(),
                    to_time: b.record.time,
                    removed,
                });
            }
        }
    }
    if g.json {
        json(&DeletedReport {
            records: records
                .iter()
                .map(|r| RecordJson {
                    id: r.id.to_hex(),
                    record: &r.record,
                })
                .collect(),
            disappeared,
        })?;
        return Ok(exit::OK);
    }
    for r in &records {
        let rec = &r.record;
        let who = format!("{}@{} ({})", rec.user, rec.host, rec.version);
        match rec.op.as_str() {
            "forget" => {
                outln!(
                    "{}  forget by {who}: {} snapshots ({})",
                    when(&rec.time),
                    rec.snapshots.len(),
                    args_line(rec)
                );
                for f in &rec.forgotten {
                    outln!(
                        "    forgotten {}  taken {}  {} {}{}{}",
                        f.id.short(),
                        when(&f.time),
                        f.host,
                        f.paths.join(" "),
                        if f.tags.is_empty() {
                            String::new()
                        } else {
                            format!("  tags {}", f.tags.join(","))
                        },
                        if refused.contains(&(r.id.to_hex(), f.id)) {
                            "  NOT DELETED: the storage refused"
                        } else {
                            ""
                        }
                    );
                }
            }
            "forget-refused" => outln!(
                "{}  the storage refused the forget above (by {who}): {} snapshots are still there ({})",
                when(&rec.time),
                rec.snapshots.len(),
                args_line(rec)
            ),
            "prune" => outln!(
                "{}  prune by {who}: deleted {} of packs ({})",
                when(&rec.time),
                bytes(rec.bytes_deleted),
                args_line(rec)
            ),
            op => outln!("{}  {op} by {who}: {}", when(&rec.time), args_line(rec)),
        }
    }
    for d in &disappeared {
        outln!(
            "{} {}: between {} ({}) and {} ({}), {} paths disappeared:",
            d.host,
            d.paths.join(" "),
            &d.from[..8],
            when(&d.from_time),
            &d.to[..8],
            when(&d.to_time),
            d.removed.len()
        );
        for p in &d.removed {
            match p.size {
                Some(s) => outln!("    - {} ({})", p.path, bytes(s)),
                None => outln!("    - {}", p.path),
            }
        }
    }
    if records.is_empty() && disappeared.is_empty() {
        outln!("nothing was deleted{}", since_text(since));
    }
    Ok(exit::OK)
}

fn since_text(since: Option<jiff::Timestamp>) -> String {
    since
        .map(|t| format!(" since {}", when(&t)))
        .unwrap_or_default()
}

pub async fn protect(g: &Global, a: ProtectArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    if a.list {
        let (list, _) = protect::list(&repo).await?;
        if g.json {
            json(&list.values().collect::<Vec<_>>())?;
        } else if list.is_empty() {
            outln!("no snapshot is protected");
        } else {
            for p in list.values() {
                outln!(
                    "{}  until {}  ({}; set by {}@{} at {})",
                    p.snapshot.short(),
                    when(&p.until),
                    p.reason,
                    p.user,
                    p.host,
                    when(&p.time)
                );
            }
        }
        return Ok(exit::OK);
    }
    let (Some(query), Some(until)) = (a.snapshot, a.until) else {
        return Err(cli_error(exit::USAGE, "give a snapshot and --until"));
    };
    let until = parse_when("--until", &until, false)?;
    repo.require(lifeboat_repo::Permission::Full, "protect snapshots")?;
    let snapshot = repo.find_snapshot(&query).await?;
    let p = protect::protect(&repo, &snapshot, until, &a.reason).await?;
    if g.json {
        json(&p)?;
    } else {
        outln!(
            "snapshot {} is protected until {} UTC: forget keeps it whatever its policy",
            snapshot.id.short(),
            when(&p.until)
        );
    }
    Ok(exit::OK)
}

pub async fn unprotect(g: &Global, a: UnprotectArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let snapshot = repo.find_snapshot(&a.snapshot).await?;
    let n = protect::unprotect(&repo, &snapshot.id).await?;
    if g.json {
        json(&serde_json::json!({ "snapshot": snapshot.id, "removed": n }))?;
    } else if n == 0 {
        outln!("snapshot {} was not protected", snapshot.id.short());
    } else {
        outln!("snapshot {} is no longer protected", snapshot.id.short());
    }
    Ok(exit::OK)
}
