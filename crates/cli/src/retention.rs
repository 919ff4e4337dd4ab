//! `forget` and `prune`: parse the policy and limits, call
//! `lifeboat_repo::retention::forget` / `lifeboat_repo::prune::prune` (with
//! the connectors' archive retention rules, so archived WAL is expired
//! too), render.

use anyhow::Result;
use lifeboat_connectors::postgres::retention::WAL_KIND;
use lifeboat_repo::prune::{PruneOptions, PruneStats, prune as run_prune};
use lifeboat_repo::retention::{
    ForgetOptions, ForgetReport, RetentionPolicy, SnapshotFilter, forget as run_forget,
    forget_records, parse_duration,
};

use crate::args::{ForgetArgs, Global, PruneArgs};
use crate::exit::{self, cli_error};
use crate::output::{bytes, duration_ms, outln};
use crate::session;

pub async fn forget(g: &Global, a: ForgetArgs) -> Result<i32> {
    if a.prune && !a.dry_run {
        // Before the repository is opened: memory freed before the
        // setting (the key derivation's 64 MiB) stays resident otherwise.
        crate::release_freed_memory_at_once();
    }
    if !a.ids.is_empty() {
        return forget_ids(g, a).await;
    }
    let keep_within = match &a.keep_within {
        Some(d) => Some(
            parse_duration(d).map_err(|e| cli_error(exit::USAGE, format!("--keep-within: {e}")))?,
        ),
        None => None,
    };
    let policy = RetentionPolicy {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within,
        keep_tags: a.keep_tags,
    };
    if policy.is_empty() {
        return Err(cli_error(
            exit::USAGE,
            "give at least one --keep-* rule (forget never removes everything by default)",
        ));
    }
    let repo = session::open(g).await?;
    let report = run_forget(
        &repo,
        &policy,
        &ForgetOptions {
            dry_run: a.dry_run,
            allow_empty_source: a.allow_empty_source,
            filter: SnapshotFilter {
                hosts: a.hosts,
                tags: a.tags,
                paths: a.paths,
            },
        },
    )
    .await?;
    let pruned = if a.prune && !a.dry_run {
        Some(prune_and_expire_wal(&repo, &PruneOptions::default()).await?)
    } else {
        None
    };
    if g.json {
        let prune = pruned.as_ref().map(|(stats, wal)| prune_json(stats, *wal));
        crate::output::json(&serde_json::json!({ "forget": report, "prune": prune }))?;
    } else {
        render_forget(&report, pruned.is_some());
        if let Some((p, wal)) = &pruned {
            render_prune(p, *wal);
        }
    }
    Ok(exit::OK)
}

/// `forget ID...`: removes the named records, readable or damaged.
async fn forget_ids(g: &Global, a: ForgetArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    let removed = forget_records(&repo, &a.ids, a.dry_run).await?;
    let pruned = if a.prune && !a.dry_run {
        Some(prune_and_expire_wal(&repo, &PruneOptions::default()).await?)
    } else {
        None
    };
    if g.json {
        let prune = pruned.as_ref().map(|(stats, wal)| prune_json(stats, *wal));
        crate::output::json(&serde_json::json!({
            "forget": { "removed_ids": removed, "dry_run": a.dry_run },
            "prune": prune,
        }))?;
    } else {
        let would = if a.dry_run { "would remove" } else { "removed" };
        for id in &removed {
            outln!("{would} snapshot record {id}");
        }
        if let Some((p, wal)) = &pruned {
            render_prune(p, *wal);
        }
    }
    Ok(exit::OK)
}

/// `pruning`: a prune follows (`--prune`), so the hint to run one is not
/// given.
fn render_forget(r: &ForgetReport, pruning: bool) {
    for g in &r.groups {
        match &g.key {
            Some(key) => outln!(
                "source {} {} (written by key {}, counted apart):",
                g.host,
                g.paths.join(" "),
                &key[..8]
            ),
            None => outln!("source {} {}:", g.host, g.paths.join(" ")),
        }
        for d in &g.snapshots {
            let time = crate::output::local_time(d.time);
            if d.keep {
                outln!(
                    "  keep    {}  {}  ({})",
                    d.short_id,
                    time,
                    d.reasons.join(", ")
                );
            } else {
                outln!("  forget  {}  {}", d.short_id, time);
            }
        }
    }
    outln!(
        "{} {} snapshots, kept {}{}",
        if r.dry_run { "would forget" } else { "forgot" },
        r.removed,
        r.kept,
        if r.removed > 0 && !r.dry_run && !pruning {
            "; their data still takes space until `lifeboat prune` (or `forget --prune`) removes it"
        } else {
            ""
        }
    );
}

pub async fn prune(g: &Global, a: PruneArgs) -> Result<i32> {
    // Before the repository is opened (see `forget`).
    crate::release_freed_memory_at_once();
    let max_unused: f64 = a
        .max_unused
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|p: &f64| (0.0..=100.0).contains(p))
        .ok_or_else(|| {
            cli_error(
                exit::USAGE,
                format!(
                    "--max-unused takes a percentage like 10%, not {:?}",
                    a.max_unused
                ),
            )
        })?;
    let max_repack = match &a.max_repack {
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            cli_error(
                exit::USAGE,
                format!("--max-repack takes a size like 500M or 2G, not {s:?}"),
            )
        })?),
        None => None,
    };
    if let Some(d) = a.retry_lock {
        lifeboat_repo::lock::set_default_retry(d);
    }
    let repo = session::open(g).await?;
    let (stats, wal) = prune_and_expire_wal(
        &repo,
        &PruneOptions {
            dry_run: a.dry_run,
            max_unused_percent: max_unused,
            max_repack_bytes: max_repack,
            ..Default::default()
        },
    )
    .await?;
    if g.json {
        crate::output::json(&prune_json(&stats, wal))?;
    } else {
        render_prune(&stats, wal);
    }
    Ok(exit::OK)
}

/// Prune, with every connector's archive retention rules: archived
/// PostgreSQL WAL that no remaining base backup needs is deleted too (so
/// forgetting base backups frees their WAL). Returns the number of WAL
/// files deleted (or that would be, in a dry run).
async fn prune_and_expire_wal(
    repo: &std::sync::Arc<lifeboat_repo::Repository>,
    options: &PruneOptions,
) -> Result<(PruneStats, usize)> {
    let options = PruneOptions {
        archive: Some(lifeboat_connectors::archive_rules()),
        ..options.clone()
    };
    let stats = run_prune(repo, &options).await?;
    let deleted = stats.archive.as_ref().map_or(0, |a| a.deleted_of(WAL_KIND));
    Ok((stats, deleted))
}

const NO_OBJECT_LOCK: &str = "this repository has no object lock (it is set at init: `lifeboat init --object-lock DAYS` on a lock-enabled S3 bucket)";

/// `lifeboat lock extend` and `lifeboat lock restore`.
pub async fn lock(g: &Global, a: crate::args::LockArgs) -> Result<i32> {
    match a.command {
        crate::args::LockCommand::Extend => lock_extend(g).await,
        crate::args::LockCommand::Restore(r) => lock_restore(g, r).await,
    }
}

async fn lock_extend(g: &Global) -> Result<i32> {
    let repo = session::open(g).await?;
    let Some(config) = repo.config().object_lock else {
        return Err(cli_error(exit::USAGE, NO_OBJECT_LOCK));
    };
    let stats = lifeboat_repo::objectlock::extend_repository(&repo, config).await?;
    if g.json {
        crate::output::json(&stats)?;
    } else {
        render_extend(&stats);
    }
    Ok(exit::OK)
}

/// `lifeboat lock restore --as-of TIME`: authenticates through the view
/// at TIME (the current one may not even open after an attack), makes the
/// current view equal to it, then records the restore in the audit log of
/// the restored repository. The record comes after the change, unlike a
/// deletion's: before it, the current view may have no readable config or
/// log to append to, and the change destroys nothing.
async fn lock_restore(g: &Global, a: crate::args::LockRestoreArgs) -> Result<i32> {
    use lifeboat_repo::{Permission, Repository, objectlock};
    if g.storage_as_of.is_some() {
        return Err(cli_error(
            exit::USAGE,
            "`lock restore` writes to the current repository: give the time with its --as-of, not --storage-as-of",
        ));
    }
    let at = lifeboat_storage::parse_as_of(&a.as_of)
        .map_err(|e| cli_error(exit::USAGE, format!("--as-of: {e}")))?;
    let target = session::target(g)?;
    let mut then_target = session::target(g)?;
    match &mut then_target.location {
        lifeboat_storage::Location::S3(o) => o.as_of = Some(at),
        _ => return Err(cli_error(exit::USAGE, NO_OBJECT_LOCK)),
    }
    let password = session::password(g, &target, false)?;
    let then_storage = session::storage(&then_target).await?;
    let config = session::require_repository(&then_storage).await?;
    let then =
        Repository::open_with_config(then_storage, config, &password, session::local_state())
            .await?;
    then.require_full_key("restore locked versions")?;
    then.require(Permission::Full, "restore locked versions")?;
    if then.config().object_lock.is_none() {
        return Err(cli_error(exit::USAGE, NO_OBJECT_LOCK));
    }
    let storage = session::storage(&target).await?;
    let plan = objectlock::plan_restore(&storage, at).await?;
    let mut stats = plan.stats.clone();
    stats.dry_run = a.dry_run;
    if !a.dry_run {
        objectlock::execute_restore(&storage, &plan).await?;
        let config = session::require_repository(&storage).await?;
        let repo = Repository::open_with_config(storage, config, &password, session::local_state())
            .await?;
        objectlock::record_restore(&repo, &stats).await?;
    }
    if g.json {
        crate::output::json(&stats)?;
    } else {
        let would = if a.dry_run { "would " } else { "" };
        outln!(
            "as of {}: {} objects unchanged; {would}copy back {} deleted and {} overwritten ({}); {would}hide {} added since; {} audit records added since kept",
            stats.as_of,
            stats.unchanged,
            stats.undeleted,
            stats.overwritten,
            bytes(stats.bytes_copied),
            stats.hidden,
            stats.audit_records_kept
        );
    }
    Ok(exit::OK)
}

fn render_extend(s: &lifeboat_repo::objectlock::ExtendStats) {
    outln!(
        "{} objects locked until at least {}: {} extended, {} already locked longer",
        s.objects,
        s.until,
        s.extended,
        s.already_locked
    );
}

fn prune_json(stats: &PruneStats, wal_deleted: usize) -> serde_json::Value {
    let mut v = serde_json::to_value(stats).expect("prune stats serialize");
    v["wal_files_deleted"] = wal_deleted.into();
    v
}

fn render_prune(s: &PruneStats, wal_deleted: usize) {
    let would = if s.dry_run { "would " } else { "" };
    outln!(
        "{} snapshots, {} packs; {} blobs used, {} unused",
        s.snapshots,
        s.packs_before,
        s.blobs_used,
        s.blobs_unused
    );
    outln!(
        "{would}delete {} unused packs and {} packs left by interrupted backups; {would}repack {} packs ({} rewritten)",
        s.packs_deleted,
        s.packs_unindexed_deleted,
        s.packs_repacked,
        bytes(s.rewritten_bytes)
    );
    if s.cold_read_bytes > 0 {
        outln!(
            "repacking {} {} from the cold tier (an archive storage class may charge for \
             retrieval; --max-repack bounds it)",
            if s.dry_run {
                "would download"
            } else {
                "downloaded"
            },
            bytes(s.cold_read_bytes)
        );
    }
    outln!(
        "{}freed {}; {} of unused blobs left in kept packs{}; took {}",
        if s.dry_run { "would have " } else { "" },
        bytes(s.freed_bytes),
        bytes(s.unused_bytes_kept),
        if s.stale_locks_removed > 0 {
            format!("; removed {} stale locks", s.stale_locks_removed)
        } else {
            String::new()
        },
        duration_ms(s.elapsed_ms)
    );
    if s.protected_snapshots > 0 {
        outln!(
            "{} protected snapshots (`lifeboat protect --list`): prune never removes a snapshot, \
             so their data stays",
            s.protected_snapshots
        );
    }
    if let Some(lock) = &s.object_lock {
        render_extend(&lock.extend);
        outln!(
            "object lock: deleted {} old versions ({}) whose lock had expired; deferred {} still locked ({}) to a later prune",
            lock.reclaim.versions_deleted,
            bytes(lock.reclaim.bytes_deleted),
            lock.reclaim.versions_deferred,
            bytes(lock.reclaim.bytes_deferred)
        );
    }
    if wal_deleted > 0 {
        outln!(
            "{}deleted {wal_deleted} archived WAL files that no remaining PostgreSQL base backup needs",
            if s.dry_run { "would have " } else { "" },
        );
    }
}

/// `500M`, `2G`, `1.5GiB`, `1048576`: binary units.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

/// `tag`: rewrites each named snapshot's record with the changed tags
/// ([`lifeboat_repo::tags::retag`]: the new record is stored before the
/// old one is deleted).
pub async fn tag(g: &Global, a: crate::args::TagArgs) -> Result<i32> {
    use lifeboat_repo::tags::{TagChange, retag};
    let change = TagChange {
        set: a.set,
        add: a.add,
        remove: a.remove,
    };
    if change.is_empty() {
        return Err(cli_error(
            exit::USAGE,
            "tag needs --add, --remove or --set (e.g. `lifeboat tag latest --add keep`)",
        ));
    }
    let repo = session::open(g).await?;
    let all = repo.snapshots().await?;
    let filter = a.filter.filter();
    // Resolve every query before changing anything: a typo changes nothing.
    let mut chosen: Vec<lifeboat_repo::Snapshot> = Vec::new();
    for q in &a.snapshots {
        let s = lifeboat_repo::resolve_snapshot_matching(&all, q, &filter)?;
        if !chosen.iter().any(|c| c.id == s.id) {
            chosen.push(s.clone());
        }
    }
    let mut rows = Vec::new();
    for s in &chosen {
        let new = retag(&repo, s, &change).await?;
        let (id, tags) = match &new {
            Some(n) => (n.id, &n.record.tags),
            None => (s.id, &s.record.tags),
        };
        if !g.json {
            match &new {
                Some(_) => outln!(
                    "snapshot {} is now {} with tags [{}]",
                    s.id.short(),
                    id.short(),
                    tags.join(",")
                ),
                None => outln!(
                    "snapshot {} unchanged, tags [{}]",
                    s.id.short(),
                    tags.join(",")
                ),
            }
        }
        rows.push(serde_json::json!({
            "old_id": s.id.to_hex(),
            "id": id.to_hex(),
            "changed": new.is_some(),
            "tags": tags,
        }));
    }
    if g.json {
        crate::output::json(&rows)?;
    }
    Ok(exit::OK)
}
