//! `lifeboat pg ...`: PostgreSQL base backups, WAL archive, point-in-time
//! restore, standby, checks, WAL retention and logical dumps. The work is in
//! `lifeboat_connectors::postgres`; this module calls it and renders the
//! results. Its clap types are in `crate::args` with the other commands'.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use lifeboat_connectors::postgres::conn::shell_quote;
use lifeboat_connectors::postgres::{
    base, check, conn::ConnOptions, conn::system_identifier_of, dump, pitr, retention, wal, xacts,
};
use lifeboat_repo::BackupMode;

use crate::args::{ActionArg, DbArg, Global, MethodArg, ModeArg, PgArgs, PgCommand, PgRestoreArgs};
use crate::exit::{self, cli_error};
use crate::output::{bytes, duration_ms, outln};
use crate::session;

impl DbArg {
    /// The connector's connection options for this `--db`.
    fn conn(&self) -> ConnOptions {
        ConnOptions {
            url: self.url.clone(),
        }
    }
}

/// Maps connector errors to the CLI's exit codes.
fn mode(m: ModeArg) -> BackupMode {
    match m {
        ModeArg::Full => BackupMode::Full,
        ModeArg::Incremental => BackupMode::Incremental,
        ModeArg::Differential => BackupMode::Differential,
    }
}

pub async fn run(g: &Global, a: PgArgs) -> Result<i32> {
    match a.command {
        PgCommand::Backup {
            db,
            mode: m,
            tags,
            host,
            compression,
            spread_checkpoint,
            method,
        } => {
            let options = base::BaseBackupOptions {
                conn: db.conn(),
                mode: mode(m),
                tags,
                host,
                compression_level: compression,
                spread_checkpoint,
                method: match method {
                    MethodArg::Auto => base::BackupMethod::Auto,
                    MethodArg::Files => base::BackupMethod::Files,
                    MethodArg::Stream => base::BackupMethod::Stream,
                },
            };
            // The repository opens (its key derivation) while the server
            // checkpoints for the backup's start; a repository that does
            // not open drops the started backup, which ends it.
            let (repo, started) = tokio::join!(session::open(g), base::start(&options));
            let (repo, started) = (repo?, started?);
            let (snap, info) = base::finish(repo, &options, started, Arc::new(|_| {})).await?;
            let s = &snap.record.summary;
            if g.json {
                crate::output::json(&serde_json::json!({
                    "snapshot": snap.id.to_hex(),
                    "mode": snap.record.mode,
                    "postgresql": info,
                    "summary": s,
                }))?;
            } else {
                outln!(
                    "base backup {} saved ({} backup, {}) of cluster {} (PostgreSQL {})",
                    snap.id.short(),
                    snap.record.mode,
                    match info.layout {
                        base::Layout::Files => "data directory files read directly",
                        base::Layout::Tar => "pg_basebackup stream",
                    },
                    info.system_identifier,
                    info.server_version
                );
                outln!(
                    "WAL {} .. {} (LSN {} .. {}, timeline {}){}",
                    info.start_wal,
                    info.stop_wal,
                    info.start_lsn,
                    info.stop_lsn,
                    info.timeline,
                    if info.wal_included {
                        "; archiving is off, so that WAL is inside the backup (no point-in-time recovery)"
                    } else {
                        ""
                    }
                );
                outln!(
                    "data: {} read, {} added to the repository, took {}",
                    bytes(s.read_bytes),
                    bytes(s.added_bytes),
                    duration_ms(s.elapsed_ms)
                );
            }
            Ok(exit::OK)
        }
        PgCommand::WalPush {
            path,
            batch,
            parallel,
        } => wal_push(g, &path, batch, parallel).await,
        PgCommand::WalFetch {
            file,
            path,
            read_ahead,
        } => wal_fetch(g, &file, &path, read_ahead).await,
        PgCommand::Restore(a) => restore(g, a).await,
        PgCommand::Check { db } => {
            let repo = session::open(g).await?;
            let report = check::check(&repo, &db.conn()).await?;
            if g.json {
                crate::output::json(&report)?;
            } else {
                outln!(
                    "cluster {}: {} base backups, {} archived WAL files, newest segment {}",
                    report.system_identifier,
                    report.base_backups,
                    report.wal_files,
                    report.newest_segment.as_deref().unwrap_or("none")
                );
                match (&report.window_start, &report.window_end) {
                    (Some(s), Some(e)) => outln!("point-in-time recovery window: {s} .. {e}"),
                    _ => outln!("point-in-time recovery window: none"),
                }
                for f in &report.findings {
                    outln!("{}: {}", f.severity, f.message);
                }
                if report.findings.is_empty() {
                    outln!("no problems found");
                }
            }
            Ok(if report.ok() { exit::OK } else { exit::DAMAGED })
        }
        PgCommand::Transactions {
            from,
            to,
            system_id,
        } => transactions(g, &from, &to, system_id).await,
        PgCommand::ExpireWal { dry_run } => {
            let repo = session::open(g).await?;
            let report = retention::expire_wal(&repo, dry_run).await?;
            if g.json {
                let v: Vec<_> = report
                    .clusters
                    .iter()
                    .map(|(id, c)| {
                        serde_json::json!({
                            "system_identifier": id.to_string(),
                            "keep_from": c.keep_from,
                            "deleted": c.deleted,
                            "kept": c.kept,
                        })
                    })
                    .collect();
                crate::output::json(&v)?;
            } else {
                for (id, c) in &report.clusters {
                    match &c.keep_from {
                        Some(from) => outln!(
                            "cluster {id}: {} {} WAL files before {from}, {} kept",
                            if dry_run { "would delete" } else { "deleted" },
                            c.deleted.len(),
                            c.kept
                        ),
                        None => outln!(
                            "cluster {id}: no base backup in the repository, all {} WAL files kept",
                            c.kept
                        ),
                    }
                }
            }
            Ok(exit::OK)
        }
        PgCommand::Dump {
            db,
            mode: m,
            tags,
            host,
        } => {
            let repo = session::open(g).await?;
            let options = dump::DumpOptions {
                conn: db.conn(),
                tags,
                host,
                mode: mode(m),
            };
            let (snap, info) = dump::dump(repo, &options, Arc::new(|_| {})).await?;
            let s = &snap.record.summary;
            if g.json {
                crate::output::json(&serde_json::json!({
                    "snapshot": snap.id.to_hex(),
                    "postgresql": info,
                    "summary": s,
                }))?;
            } else {
                outln!(
                    "dump {} of database {} saved: {} read, {} added to the repository, took {}",
                    snap.id.short(),
                    info.database,
                    bytes(s.read_bytes),
                    bytes(s.added_bytes),
                    duration_ms(s.elapsed_ms)
                );
            }
            Ok(exit::OK)
        }
        PgCommand::RestoreDump {
            snapshot,
            db,
            clean,
            no_owner,
        } => {
            let repo = session::open(g).await?;
            let snap = repo.find_snapshot(&snapshot).await?;
            let options = dump::RestoreDumpOptions {
                conn: db.conn(),
                clean,
                no_owner,
            };
            let started = Instant::now();
            let n = dump::restore_dump(repo, &snap, &options).await?;
            outln!(
                "restored dump {} ({}) in {}",
                snap.id.short(),
                bytes(n),
                duration_ms(started.elapsed().as_millis() as u64)
            );
            Ok(exit::OK)
        }
    }
}

async fn wal_push(g: &Global, path: &Path, batch: usize, parallel: usize) -> Result<i32> {
    let paths = wal::WalPaths::from_percent_p(path);
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let data = std::fs::read(path)
        .map_err(|e| cli_error(exit::NOT_FOUND, format!("{}: {e}", path.display())))?;
    // Several -r/--repo: the file is archived into each (3-2-1 with an
    // off-site copy as current as the local one).
    let targets = session::targets(g)?;
    let locations: Vec<String> = targets.iter().map(|t| t.display.clone()).collect();
    let set_tag = wal::repository_set_tag(&locations);
    // Fast path: an earlier invocation already archived this exact file
    // into this set of repositories.
    if wal::marker(&paths, &file, &data, &set_tag) == wal::Marker::Matches {
        return Ok(exit::OK);
    }
    drop(data);
    let sysid = system_identifier_of(&paths.pgdata)?;
    let opened =
        futures::future::join_all(targets.iter().map(|t| session::open_target(g, t))).await;
    let mut repos = Vec::with_capacity(opened.len());
    for (t, r) in targets.iter().zip(opened) {
        repos.push(r.with_context(|| format!("repository {}", t.display))?);
    }
    let options = wal::PushOptions { batch, parallel };
    let report = wal::push(&repos, &set_tag, sysid, path, &options)
        .await
        .map_err(|f| {
            let e = anyhow::Error::from(f.error);
            match f.repository {
                Some(i) if targets.len() > 1 => e.context(format!(
                    "archiving {file} into repository {}",
                    targets[i].display
                )),
                _ => e,
            }
        })?;
    for (name, e) in &report.deferred {
        eprintln!("lifeboat: warning: {name} not pushed ahead (PostgreSQL will retry it): {e}");
    }
    tracing::info!(
        "pushed {} WAL files, {} already archived",
        report.stored.len(),
        report.already_present.len()
    );
    Ok(exit::OK)
}

async fn wal_fetch(g: &Global, file: &str, dest: &Path, read_ahead: usize) -> Result<i32> {
    // The name becomes part of a spool path and a storage key: anything
    // but a name PostgreSQL archives (no `/`, no `..`) is refused first.
    if !lifeboat_connectors::postgres::walname::is_archivable(file) {
        eprintln!(
            "lifeboat: error: {file:?} is not a WAL segment, timeline history or backup history file name; \
             nothing fetched (restore_command passes %f)"
        );
        return Ok(exit::USAGE);
    }
    if wal::fetch_from_spool(file, dest)? {
        return Ok(exit::OK);
    }
    let paths = wal::WalPaths::from_percent_p(dest);
    let sysid = system_identifier_of(&paths.pgdata)?;
    // PostgreSQL asks for files past the end of the archive; a nonzero
    // status (below 126) tells it there is none.
    let absent = || {
        eprintln!("lifeboat: {file} is not in the repository");
        Ok(1)
    };
    let storage = session::storage(&session::target(g)?).await?;
    if !wal::is_archived(storage.as_ref(), sysid, file).await? {
        return absent();
    }
    let repo = session::open(g).await?;
    if wal::fetch(repo, sysid, file, dest, read_ahead).await? {
        Ok(exit::OK)
    } else {
        absent()
    }
}

/// The restore_command the restored server runs: this binary, with the
/// repository and password source of this invocation.
fn restore_command(g: &Global, read_ahead: usize) -> Result<String> {
    let exe = std::env::current_exe()?;
    let t = session::target(g)?;
    // The server runs the command in its data directory: a repository
    // given by a relative path is named absolutely.
    let repo = match &t.location {
        lifeboat_storage::Location::Local(p) if p.is_relative() => {
            std::path::absolute(p)?.to_string_lossy().into_owned()
        }
        _ => t.display.clone(),
    };
    let mut cmd = format!(
        "{} -r {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&repo)
    );
    if let Some(f) = g.password_file.first() {
        let f = std::path::absolute(f)?;
        cmd.push_str(&format!(
            " --password-file {}",
            shell_quote(&f.to_string_lossy())
        ));
    } else if let Some(c) = &g.password_command {
        cmd.push_str(&format!(" --password-command {}", shell_quote(c)));
    } else if t.default.is_none() {
        eprintln!(
            "lifeboat: warning: no --password-file or --password-command given: the restored server's restore_command needs LIFEBOAT_PASSWORD in its environment"
        );
    }
    cmd.push_str(&format!(" pg wal-fetch --read-ahead {read_ahead} %f %p"));
    Ok(cmd)
}

fn time_arg(option: &str, t: &str) -> Result<jiff::Timestamp> {
    t.parse().map_err(|e| {
        cli_error(
            exit::USAGE,
            format!("bad {option} {t:?}: {e} (use RFC 3339, e.g. 2026-01-31T12:00:00Z)"),
        )
    })
}

/// `pg transactions --from T --to T`.
async fn transactions(g: &Global, from: &str, to: &str, system_id: Option<u64>) -> Result<i32> {
    let options = xacts::TransactionsOptions {
        from: time_arg("--from", from)?,
        to: time_arg("--to", to)?,
        system_identifier: system_id,
    };
    let repo = session::open(g).await?;
    let report = xacts::transactions(&repo, &options).await?;
    if g.json {
        crate::output::json(&report)?;
        return Ok(exit::OK);
    }
    outln!(
        "cluster {}, timeline {}: transactions that ended between {} and {} ({} WAL segment(s) read: {} .. {})",
        report.system_identifier,
        report.timeline,
        report.from,
        report.to,
        report.segments_read,
        report.first_segment.as_deref().unwrap_or("none"),
        report.last_segment.as_deref().unwrap_or("none")
    );
    for t in &report.transactions {
        let changes: Vec<String> = t.changes.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        outln!(
            "xid {:>10}  {:<6}  {}  lsn {:<12}  {}  relations {}",
            t.xid,
            t.outcome,
            t.time,
            t.lsn,
            if changes.is_empty() {
                "no row changes".to_string()
            } else {
                changes.join(", ")
            },
            if t.relations.is_empty() {
                "-".to_string()
            } else {
                t.relations.join(" ")
            }
        );
    }
    if report.transactions.is_empty() {
        outln!("no transaction ended in that window");
    }
    if !report.covers_window {
        outln!(
            "note: the archive ends before {} (newest transaction end read: {}): WAL written since has \
             not been archived yet; wait for archive_timeout or run SELECT pg_switch_wal() on the primary, then list again",
            report.to,
            report
                .newest_end
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into())
        );
    }
    outln!(
        "relations are tablespace/database/relfilenode; name one in the database with \
         SELECT relname FROM pg_class WHERE pg_relation_filenode(oid) = N. \
         To restore to just before a transaction: pg restore --to DIR --target-xid XID --exclusive"
    );
    Ok(exit::OK)
}

async fn restore(g: &Global, a: PgRestoreArgs) -> Result<i32> {
    let started = Instant::now();
    let target = if let Some(t) = &a.target_time {
        Some(pitr::RecoveryTarget::Time(t.parse().map_err(|e| {
            cli_error(
                exit::USAGE,
                format!("bad --target-time {t:?}: {e} (use RFC 3339, e.g. 2026-01-31T12:00:00Z)"),
            )
        })?))
    } else if let Some(l) = &a.target_lsn {
        Some(pitr::RecoveryTarget::Lsn(pitr::lsn_arg(l)?))
    } else if let Some(n) = &a.target_name {
        Some(pitr::RecoveryTarget::Name(n.clone()))
    } else {
        a.target_xid
            .as_ref()
            .map(|x| pitr::RecoveryTarget::Xid(x.clone()))
    };
    let mut settings = Vec::new();
    for s in &a.settings {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            cli_error(exit::USAGE, format!("bad --set {s:?}: expected NAME=VALUE"))
        })?;
        settings.push((k.trim().to_string(), v.trim().to_string()));
    }
    let options = pitr::RestoreOptions {
        to: std::path::absolute(&a.to)?,
        target,
        snapshot: a.snapshot,
        system_identifier: a.system_id,
        action: match a.target_action {
            ActionArg::Promote => pitr::TargetAction::Promote,
            ActionArg::Pause => pitr::TargetAction::Pause,
            ActionArg::Shutdown => pitr::TargetAction::Shutdown,
        },
        exclusive: a.exclusive,
        standby: a.standby,
        restore_command: restore_command(g, a.read_ahead)?,
        read_ahead: a.read_ahead,
        settings,
        run_as: None,
    };
    pitr::check_empty(&options.to)?;
    if a.start && nix::unistd::geteuid().is_root() {
        // pg_ctl refuses root; say so before anything is written.
        return Err(cli_error(
            exit::GENERIC,
            "--start cannot run PostgreSQL as root: run the restore as the database owner \
             (e.g. runuser -u postgres -- lifeboat ...)",
        ));
    }
    let repo = session::open(g).await?;
    let plan = pitr::plan(&repo, &options).await?;
    let wal_desc = match (&plan.wal_first, &plan.wal_last) {
        (Some(f), Some(l)) => format!("{} WAL segments {f} .. {l} present", plan.wal_segments),
        _ => "no archived WAL needed".into(),
    };
    if !g.json {
        outln!(
            "restoring base backup {} (consistent at {}, LSN {}); {wal_desc}",
            plan.backup.id.short(),
            plan.info.stop_time,
            plan.info.stop_lsn
        );
    }
    let report = pitr::restore(repo, &plan, &options).await?;
    let unpacked_ms = started.elapsed().as_millis() as u64;
    let outcome = if a.start {
        Some(pitr::start_and_wait(&options.to, &plan.info, &options).await?)
    } else {
        None
    };
    let total_ms = started.elapsed().as_millis() as u64;
    if g.json {
        crate::output::json(&serde_json::json!({
            "snapshot": plan.backup.id.to_hex(),
            "data_dir": report.data_dir,
            "restored_bytes": report.restored_bytes,
            "wal_first": plan.wal_first,
            "wal_last": plan.wal_last,
            "outcome": outcome.as_ref().map(|o| format!("{o:?}").to_lowercase()),
            "unpacked_ms": unpacked_ms,
            "total_ms": total_ms,
        }))?;
    } else {
        outln!(
            "restored {} into {} in {}; recovery settings written ({})",
            bytes(report.restored_bytes),
            report.data_dir.display(),
            duration_ms(unpacked_ms),
            if options.standby {
                "standby.signal"
            } else {
                "recovery.signal"
            }
        );
        match outcome {
            Some(pitr::RecoveryOutcome::Promoted) => outln!(
                "recovery finished, server promoted and accepting writes; whole restore took {}",
                duration_ms(total_ms)
            ),
            Some(pitr::RecoveryOutcome::Paused) => outln!(
                "target reached, replay paused (inspect, then SELECT pg_wal_replay_resume()); whole restore took {}",
                duration_ms(total_ms)
            ),
            Some(pitr::RecoveryOutcome::ShutDown) => outln!(
                "target reached, server shut down; whole restore took {}",
                duration_ms(total_ms)
            ),
            Some(pitr::RecoveryOutcome::StandbyRunning) => outln!(
                "standby running, replaying WAL from the repository (promote with pg_ctl promote); took {}",
                duration_ms(total_ms)
            ),
            None => outln!(
                "start it with: pg_ctl -D {} start",
                report.data_dir.display()
            ),
        }
    }
    Ok(exit::OK)
}
