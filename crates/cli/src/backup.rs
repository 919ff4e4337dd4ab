//! `lifeboat backup`.

use crate::output::outln;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_repo::BackupMode;
use lifeboat_snapshot::backup::{
    BackupOptions, BackupOutcome, StreamOptions, backup, backup_many, backup_stream,
    backup_stream_many,
};
use lifeboat_snapshot::detect::{AfterCheck, DetectOptions, check, check_after};

use crate::args::{BackupArgs, DetectArgs, DetectThresholds, Global, ModeArg};
use crate::exit;
use crate::output::{bytes, duration_ms};
use crate::progress::Bar;
use crate::session;

/// What to back up, as the library takes it.
enum Source {
    Stdin(StreamOptions),
    Files(BackupOptions),
}

fn source(a: BackupArgs, draw: bool, own: Vec<std::path::PathBuf>) -> Result<Source> {
    let mode = match a.mode {
        ModeArg::Full => BackupMode::Full,
        ModeArg::Incremental => BackupMode::Incremental,
        ModeArg::Differential => BackupMode::Differential,
    };
    if a.stdin {
        return Ok(Source::Stdin(StreamOptions {
            file_name: a.stdin_filename,
            tags: a.tags,
            host: a.host,
            mode,
            compression_level: a.compression,
            dry_run: a.dry_run,
            ..Default::default()
        }));
    }
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
    Ok(Source::Files(BackupOptions {
        paths: a.paths,
        excludes,
        exclude_caches: a.exclude_caches,
        exclude_paths: own,
        one_file_system: a.one_file_system,
        tags: a.tags,
        host: a.host,
        mode,
        compression_level: a.compression,
        scan_totals: draw,
        dry_run: a.dry_run,
        ..Default::default()
    }))
}

/// The paths of `--files-from` (one a line, `#` comments) and
/// `--files-from-raw` (NUL-separated, verbatim) files; `-` is stdin.
fn files_from(a: &BackupArgs) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let read = |f: &PathBuf| -> Result<Vec<u8>> {
        if f.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            return Ok(buf);
        }
        std::fs::read(f).map_err(|e| {
            exit::cli_error(
                exit::USAGE,
                format!("cannot read the list of paths {}: {e}", f.display()),
            )
        })
    };
    let mut out = Vec::new();
    for f in &a.files_from {
        let text = read(f)?;
        for line in text.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            out.push(PathBuf::from(std::ffi::OsStr::from_bytes(line)));
        }
    }
    for f in &a.files_from_raw {
        let raw = read(f)?;
        out.extend(
            raw.split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p))),
        );
    }
    if out.is_empty() && a.paths.is_empty() && !a.stdin {
        return Err(exit::cli_error(
            exit::USAGE,
            "the --files-from lists name no path: nothing to back up",
        ));
    }
    Ok(out)
}

pub async fn run(g: &Global, mut a: BackupArgs) -> Result<i32> {
    if let Some(d) = a.retry_lock {
        lifeboat_repo::lock::set_default_retry(d);
    }
    if a.stdin_from_command {
        return from_command(g, a).await;
    }
    let listed = files_from(&a)?;
    a.paths.extend(listed);
    if g.repo.len() > 1 {
        return run_many(g, a).await;
    }
    let repo = if a.dry_run {
        // A dry run creates nothing, not even the default repository.
        session::open(g).await?
    } else {
        session::open_or_create_default(g).await?
    };
    let own = own_paths(g, &[session::target(g)?], std::slice::from_ref(&repo));
    note_own_paths(g, &a, &own);
    let detect = detect_options(&a)?;
    let bar = Arc::new(Bar::new(!g.quiet && !g.json, "backup"));
    let outcome = match source(a, bar.is_drawing(), own)? {
        Source::Stdin(o) => backup_stream(repo.clone(), std::io::stdin(), &o, bar.clone()).await,
        Source::Files(o) => backup(repo.clone(), &o, bar.clone()).await,
    };
    bar.finish();
    let mut outcome = outcome?;
    let suspect = match &detect {
        Some(d) => detect_ransomware(&repo, &mut outcome, d).await?,
        None => false,
    };
    render(g, &outcome)?;
    Ok(if suspect {
        exit::SUSPECT
    } else {
        exit_code(&outcome)
    })
}

/// The detection thresholds, or `None` with `--no-detect` and for
/// streams (one file: nothing to compare a share of).
fn detect_options(a: &BackupArgs) -> Result<Option<DetectOptions>> {
    if a.no_detect || a.stdin {
        return Ok(None);
    }
    thresholds(&a.detect).map(Some)
}

fn thresholds(a: &DetectThresholds) -> Result<DetectOptions> {
    let share: f64 = a
        .detect_share
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|p: &f64| (0.0..=100.0).contains(p))
        .ok_or_else(|| {
            exit::cli_error(
                exit::USAGE,
                format!(
                    "--detect-share takes a percentage like 10%, not {:?}",
                    a.detect_share
                ),
            )
        })?;
    Ok(DetectOptions {
        share: share / 100.0,
        min_files: a.detect_min_files,
        protect_days: a.detect_protect_days,
        ..Default::default()
    })
}

/// `lifeboat detect`: the backup's ransomware check, run afterwards from
/// a full key (`lifeboat_snapshot::detect::check_after`). Exits 20 when a
/// snapshot looks suspect, like the backup would have.
pub async fn detect(g: &Global, a: DetectArgs) -> Result<i32> {
    let options = thresholds(&a.detect)?;
    let repo = session::open(g).await?;
    let mut all = repo.snapshots().await?;
    let targets: Vec<lifeboat_repo::Id> = if a.all {
        all.iter().map(|s| s.id).collect()
    } else if a.snapshots.is_empty() {
        // The newest of each source.
        all.iter()
            .filter(|s| {
                !all.iter().any(|o| {
                    o.record.time > s.record.time
                        && o.record.same_source(&s.record.host, &s.record.paths)
                })
            })
            .map(|s| s.id)
            .collect()
    } else {
        let mut ids = Vec::new();
        for q in &a.snapshots {
            ids.push(repo.find_snapshot(q).await?.id);
        }
        ids
    };
    let checks = check_after(&repo, &mut all, &targets, &options, a.dry_run).await?;
    let suspect = checks.iter().any(|c| c.suspect());
    if g.json {
        crate::output::json(&checks)?;
    } else {
        render_detect(&checks, a.dry_run);
    }
    Ok(if suspect { exit::SUSPECT } else { exit::OK })
}

fn render_detect(checks: &[AfterCheck], dry_run: bool) {
    for c in checks {
        let id = &c.snapshot[..8];
        let (Some(pred), Some(d)) = (&c.predecessor, &c.detection) else {
            outln!("{id}  nothing to compare with (the first snapshot of its source)");
            continue;
        };
        if !d.suspect {
            outln!(
                "{id}  ok against {}: {} files became incompressible, {} renamed with a new \
                 extension, {} stable files rewritten",
                &pred[..8],
                d.became_incompressible,
                d.renamed_new_extension,
                d.stable_rewritten
            );
            continue;
        }
        let done = match (&c.tagged, &c.protected, &c.protected_until) {
            (Some(t), Some(p), Some(until)) => format!(
                "tagged `suspect` (now {}); {} is protected until {} (`lifeboat protect --list`)",
                &t[..8],
                &p[..8],
                until.strftime("%Y-%m-%d")
            ),
            _ if c.already_suspect => "already tagged `suspect`".to_string(),
            _ if dry_run => "dry run: nothing tagged or protected".to_string(),
            _ => String::new(),
        };
        eprintln!(
            "lifeboat: WARNING: snapshot {id} looks like its source was just encrypted \
             (ransomware?) compared with {}: {}. {done}. Look at the source; examples: {}",
            &pred[..8],
            d.reasons.join("; "),
            d.examples.join(", ")
        );
    }
    if checks.is_empty() {
        outln!("no snapshot to check");
    }
}

/// Compares the new snapshot with its parent; when it looks like an
/// encryption event, tags it `suspect`, protects the parent and says so on
/// stderr. Returns whether it did. A failure of the check itself is a
/// warning: the backup is saved either way.
async fn detect_ransomware(
    repo: &Arc<lifeboat_repo::Repository>,
    outcome: &mut BackupOutcome,
    options: &DetectOptions,
) -> Result<bool> {
    let (d, r) = match check(repo, &outcome.snapshot, options).await {
        Ok(Some(found)) => (found.detection, found.response),
        Ok(None) => return Ok(false),
        Err(e) => {
            eprintln!("lifeboat: warning: the ransomware check could not run: {e:#}");
            return Ok(false);
        }
    };
    eprintln!(
        "lifeboat: WARNING: this backup looks like its source was just encrypted (ransomware?): {}. \
         The snapshot is saved as {} and tagged `suspect`; the one before it, {}, is protected \
         until {} (`lifeboat protect --list`). Look at the source now; examples: {}",
        d.reasons.join("; "),
        r.snapshot.id.short(),
        r.protected.short(),
        r.protected_until.strftime("%Y-%m-%d"),
        d.examples.join(", ")
    );
    outcome.snapshot = r.snapshot;
    Ok(true)
}

/// The repository's own files, which no backup stores: each local
/// repository, its local cold tier, every password file (named or the
/// default one) and lifeboat's cache directory. Left out by identity (device and inode), wherever they
/// live.
fn own_paths(
    g: &Global,
    targets: &[session::Target],
    repos: &[Arc<lifeboat_repo::Repository>],
) -> Vec<std::path::PathBuf> {
    use lifeboat_storage::Location;
    let mut out = Vec::new();
    for t in targets {
        if let Location::Local(p) = &t.location {
            out.push(p.clone());
        }
        if let Some(d) = &t.default {
            out.push(d.path.clone());
            out.push(d.password_file.clone());
        }
    }
    for r in repos {
        if let Some(Ok(Location::Local(p))) = r.cold_location().map(Location::parse) {
            out.push(p);
        }
    }
    out.extend(g.password_file.iter().cloned());
    // The metadata cache and the S3 probe memo: copies of repository
    // objects, not the user's data.
    out.extend(lifeboat_storage::cachedir::cache_root());
    out.retain(|p| p.exists());
    out
}

/// Says once which of the repository's own files lie inside what is
/// backed up (and are left out).
fn note_own_paths(g: &Global, a: &BackupArgs, own: &[std::path::PathBuf]) {
    if g.quiet || a.stdin {
        return;
    }
    let roots: Vec<std::path::PathBuf> = a
        .paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let inside: Vec<String> = own
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .map(|p| p.display().to_string())
        .collect();
    if !inside.is_empty() {
        eprintln!(
            "lifeboat: leaving out the repository's own files, which lie inside the backup: {}",
            inside.join(", ")
        );
    }
}

/// `backup --stdin-from-command -- CMD ARGS...`: the command's standard
/// output is the stream; the snapshot is committed only when the command
/// exits with status 0. Its standard error is passed through, and its last
/// lines are repeated in the error when it fails.
async fn from_command(g: &Global, a: BackupArgs) -> Result<i32> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    if g.repo.len() > 1 {
        return Err(exit::cli_error(
            exit::GENERIC,
            "--stdin-from-command works with one repository",
        ));
    }
    let Some((program, args)) = a.paths.split_first() else {
        return Err(exit::cli_error(
            2,
            "--stdin-from-command needs the command to run, after `--`",
        ));
    };
    let name = program.display().to_string();
    let repo = session::open_or_create_default(g).await?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| exit::cli_error(exit::GENERIC, format!("cannot run {name}: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    // Pass stderr through, keeping its last lines for the error message.
    let tail = std::thread::spawn(move || {
        let mut last: std::collections::VecDeque<String> = Default::default();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if last.len() == 10 {
                last.pop_front();
            }
            last.push_back(line);
        }
        last.into_iter().collect::<Vec<_>>()
    });
    let options = StreamOptions {
        file_name: a.stdin_filename,
        tags: a.tags,
        host: a.host,
        mode: match a.mode {
            ModeArg::Full => BackupMode::Full,
            ModeArg::Incremental => BackupMode::Incremental,
            ModeArg::Differential => BackupMode::Differential,
        },
        compression_level: a.compression,
        ..Default::default()
    };
    let bar = Arc::new(Bar::new(!g.quiet && !g.json, "backup"));
    let pending =
        lifeboat_snapshot::backup::backup_stream_pending(repo, stdout, &options, bar.clone()).await;
    bar.finish();
    let status = child.wait().context("waiting for the command")?;
    let tail = tail.join().unwrap_or_default();
    let pending = pending?;
    if !status.success() {
        // The pending snapshot is dropped: its data stays unreferenced
        // (prune removes it) and no record is written.
        drop(pending);
        let why = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => format!("was stopped ({status})"),
        };
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; its last lines on stderr: {}", tail.join(" | "))
        };
        return Err(exit::cli_error(
            exit::GENERIC,
            format!("{name} {why}: no snapshot was saved{tail}"),
        ));
    }
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "stdin_command".to_string(),
        serde_json::json!({ "program": name, "exit_status": 0 }),
    );
    let outcome = pending.commit(extra).await?;
    render(g, &outcome)?;
    if !g.json {
        outln!("{name} exited with status 0");
    }
    Ok(exit_code(&outcome))
}

fn exit_code(o: &BackupOutcome) -> i32 {
    if o.snapshot.record.partial {
        exit::PARTIAL
    } else {
        exit::OK
    }
}

/// `backup -r A -r B ...`: one read of the source, one snapshot in each
/// repository. A repository that cannot be opened or fails during the
/// backup is reported; the others keep their snapshot.
async fn run_many(g: &Global, a: BackupArgs) -> Result<i32> {
    let targets = session::targets(g)?;
    let opened =
        futures::future::join_all(targets.iter().map(|t| session::open_target(g, t))).await;
    let mut results: Vec<Option<Result<BackupOutcome>>> = Vec::new();
    let mut repos = Vec::new();
    let mut positions = Vec::new();
    for (i, r) in opened.into_iter().enumerate() {
        match r {
            Ok(repo) => {
                repos.push(repo);
                positions.push(i);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut suspect = false;
    if !repos.is_empty() {
        let own = own_paths(g, &targets, &repos);
        note_own_paths(g, &a, &own);
        let detect = detect_options(&a)?;
        let bar = Arc::new(Bar::new(!g.quiet && !g.json, "backup"));
        let outcomes = match source(a, bar.is_drawing(), own)? {
            Source::Stdin(o) => {
                backup_stream_many(repos.clone(), std::io::stdin(), &o, bar.clone()).await
            }
            Source::Files(o) => backup_many(repos.clone(), &o, bar.clone()).await,
        };
        bar.finish();
        for ((i, outcome), repo) in positions.into_iter().zip(outcomes?).zip(&repos) {
            let mut outcome = outcome.map_err(anyhow::Error::from);
            if let (Ok(o), Some(d)) = (&mut outcome, &detect) {
                suspect |= detect_ransomware(repo, o, d).await?;
            }
            results[i] = Some(outcome);
        }
    }
    let results: Vec<Result<BackupOutcome>> = results.into_iter().map(Option::unwrap).collect();
    render_many(g, &targets, &results)?;
    let failed: Vec<(i32, String)> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(exit::describe))
        .collect();
    Ok(if failed.len() == results.len() {
        failed[0].0
    } else if !failed.is_empty() {
        exit::SOME_FAILED
    } else if suspect {
        exit::SUSPECT
    } else if results.iter().flatten().any(|o| o.snapshot.record.partial) {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

fn render_many(
    g: &Global,
    targets: &[session::Target],
    results: &[Result<BackupOutcome>],
) -> Result<()> {
    if g.json {
        let repos: Vec<serde_json::Value> = targets
            .iter()
            .zip(results)
            .map(|(t, r)| match r {
                Ok(o) => {
                    let mut v = outcome_json(o);
                    v["repository"] = t.display.clone().into();
                    v["ok"] = true.into();
                    v
                }
                Err(e) => {
                    let (code, message) = exit::describe(e);
                    serde_json::json!({
                        "repository": t.display,
                        "ok": false,
                        "error": message,
                        "exit_code": code,
                    })
                }
            })
            .collect();
        return crate::output::json(&serde_json::json!({ "repositories": repos }));
    }
    let mut failed = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        outln!("repository {}:", t.display);
        match r {
            Ok(o) => render_text(o, "  "),
            Err(e) => {
                let (_, message) = exit::describe(e);
                outln!("  FAILED: {message}");
                failed.push(t.display.as_str());
            }
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "lifeboat: backup failed in {} of {} repositories: {}; their earlier snapshots are untouched",
            failed.len(),
            results.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn render(g: &Global, o: &BackupOutcome) -> Result<()> {
    if g.json {
        return crate::output::json(&outcome_json(o));
    }
    render_text(o, "");
    Ok(())
}

fn outcome_json(o: &BackupOutcome) -> serde_json::Value {
    let r = &o.snapshot.record;
    serde_json::json!({
        "dry_run": o.dry_run,
        "snapshot": o.snapshot.id.to_hex(),
        "short_id": o.snapshot.id.short(),
        "mode": r.mode,
        "parent": r.parent.map(|p| p.to_hex()),
        "partial": r.partial,
        "summary": r.summary,
        "warnings": o.warnings,
    })
}

fn render_text(o: &BackupOutcome, indent: &str) {
    let r = &o.snapshot.record;
    let s = &r.summary;
    if o.dry_run {
        outln!("{indent}dry run: nothing was written to the repository");
    }
    outln!(
        "{indent}snapshot {} {} ({} backup{}{})",
        o.snapshot.id.short(),
        if o.dry_run { "would be saved" } else { "saved" },
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
    if r.extra.get(lifeboat_snapshot::backup::EMPTY_STREAM) == Some(&serde_json::Value::Bool(true))
    {
        outln!(
            "{indent}WARNING: the input was EMPTY (0 bytes): did the program feeding it fail? \
             The snapshot is marked empty."
        );
    }
    outln!(
        "{indent}files: {} new, {} changed, {} unchanged, {} skipped, {} errors; {} directories",
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.files_skipped,
        s.errors,
        s.dirs
    );
    outln!(
        "{indent}data: {} read, {} {} the repository ({} before compression), {} in the snapshot",
        bytes(s.read_bytes),
        bytes(s.added_bytes),
        if o.dry_run {
            "would be added to"
        } else {
            "added to"
        },
        bytes(s.added_raw_bytes),
        bytes(s.total_bytes)
    );
    outln!("{indent}took {}", duration_ms(s.elapsed_ms));
}
