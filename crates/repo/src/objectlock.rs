//! Object Lock for repositories on S3: enabling it at init, extending the
//! retention of live objects, and reclaiming versions whose lock expired.
//!
//! A repository created with `init --object-lock DAYS` records
//! [`ObjectLockConfig`] in its config (docs/format.md) and sets the bucket's
//! default retention, so every version lifeboat writes (packs, index,
//! snapshot records, keys, config, audit records, lock files) is locked for
//! DAYS from its upload without per-request headers. [`extend`] pushes the
//! retain-until date of every current object forward again (maintenance
//! runs it, so live data never falls out of protection), and [`reclaim`]
//! removes for good the versions nothing shows any more (deleted by prune,
//! or hidden by a newer version or delete marker) once their lock has
//! expired, deferring the rest. The storage side is
//! [`lifeboat_storage::VersionedStorage`].

use futures::StreamExt;
use lifeboat_storage::{
    DefaultRetention, DynStorage, Kind, LockMode, ObjectVersion, Retention, VersionedStorage,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Retention requests in flight at once: each is a small signed request,
/// and S3 scales per request.
const CONCURRENCY: usize = 16;

/// The repository's Object Lock settings, fixed at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    pub mode: LockMode,
    /// How long every version stays locked after it is written or its
    /// retention last extended.
    pub days: u32,
}

impl ObjectLockConfig {
    fn default_retention(self) -> DefaultRetention {
        DefaultRetention {
            mode: self.mode,
            days: self.days,
        }
    }
}

/// What `init --object-lock` checks and sets on the bucket: it must have
/// Object Lock enabled (only possible when the bucket is created); its
/// default retention is set to `config` when it has none, and must equal
/// `config` when it has one (the bucket-wide default is not lifeboat's to
/// change under other users of the bucket).
pub async fn enable(storage: &DynStorage, config: ObjectLockConfig) -> Result<()> {
    if config.days == 0 {
        return Err(Error::BadInput(
            "--object-lock needs at least 1 day (S3's smallest default retention)".into(),
        ));
    }
    let versions = versioned(storage)?;
    let bucket = versions.bucket_lock().await?;
    if !bucket.enabled {
        return Err(Error::BadInput(format!(
            "the bucket of {} has no object lock, so its objects could be deleted by anyone \
             holding the storage credentials; object lock can only be turned on when a bucket \
             is created: create a new bucket with it (`aws s3api create-bucket --bucket NAME \
             --object-lock-enabled-for-bucket`, or your provider's console) and run init there",
            storage.location()
        )));
    }
    match bucket.default_retention {
        None => versions
            .set_default_retention(config.default_retention())
            .await
            .map_err(Error::from),
        Some(d) if d == config.default_retention() => Ok(()),
        Some(d) => Err(Error::BadInput(format!(
            "the bucket of {} already has a default retention of {} days in {} mode; \
             run init with `--object-lock {} --lock-mode {}`, or change the bucket's \
             default retention first",
            storage.location(),
            d.days,
            d.mode.as_str(),
            d.days,
            d.mode.as_str()
        ))),
    }
}

fn versioned(storage: &DynStorage) -> Result<&dyn VersionedStorage> {
    storage.versioned().ok_or_else(|| {
        Error::BadInput(format!(
            "{} keeps no object versions: object lock needs an S3 bucket created with \
             object lock enabled",
            storage.location()
        ))
    })
}

/// What [`extend`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtendStats {
    /// Current objects looked at.
    pub objects: usize,
    /// Objects whose retain-until date was moved forward.
    pub extended: usize,
    /// Objects already locked at least until the new date.
    pub already_locked: usize,
    /// The retain-until date every current object now has at least.
    pub until: String,
}

/// Extends the retention of every current object version (everything a
/// plain read of the repository sees, which after a prune is exactly what
/// is still referenced, plus the metadata) to `now + days`. Versions
/// locked longer already are left alone (S3 refuses to shorten a lock).
pub async fn extend(
    storage: &DynStorage,
    config: ObjectLockConfig,
    now: jiff::Timestamp,
) -> Result<ExtendStats> {
    let versions = versioned(storage)?;
    let until = now
        .checked_add(jiff::SignedDuration::from_hours(
            24 * i64::from(config.days),
        ))
        .map_err(|e| Error::BadInput(format!("retention date: {e}")))?;
    let mut stats = ExtendStats {
        until: until.to_string(),
        ..Default::default()
    };
    // Every namespace lifeboat writes, so every one whose versions are
    // locked, extended and reclaimed.
    for kind in Kind::ALL {
        let current: Vec<ObjectVersion> = versions
            .list_versions(kind)
            .await?
            .into_iter()
            .filter(|v| v.latest && !v.delete_marker)
            .collect();
        stats.objects += current.len();
        let results: Vec<Result<bool>> = futures::stream::iter(current)
            .map(|v| async move {
                let held = versions.retention(&v.key, &v.version_id).await?;
                if held.is_some_and(|r| r.until >= until) {
                    return Ok(false);
                }
                versions
                    .set_retention(
                        &v.key,
                        &v.version_id,
                        Retention {
                            mode: config.mode,
                            until,
                        },
                    )
                    .await?;
                Ok(true)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            if r? {
                stats.extended += 1;
            } else {
                stats.already_locked += 1;
            }
        }
    }
    Ok(stats)
}

/// What [`reclaim`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReclaimStats {
    /// Non-current versions removed for good (their lock had expired).
    pub versions_deleted: usize,
    pub bytes_deleted: u64,
    /// Non-current versions still locked: kept, to be removed by a later
    /// prune once their retain-until date has passed.
    pub versions_deferred: usize,
    pub bytes_deferred: u64,
}

/// Non-current versions sorted by whether their lock has expired: what
/// [`reclaim`] will delete and what it defers. Planned before anything is
/// deleted, so the audit record of a reclaim can be written first.
#[derive(Debug, Clone, Default)]
pub struct ReclaimPlan {
    /// Versions whose lock expired (or that have none): to delete.
    pub expired: Vec<ObjectVersion>,
    pub stats: ReclaimStats,
}

/// Lists the non-current versions of every namespace and asks each one's
/// retention: those still locked are deferred, the others planned for
/// deletion. Never includes a current version or a delete marker (those
/// hold no data). Reads only.
pub async fn plan_reclaim(storage: &DynStorage, now: jiff::Timestamp) -> Result<ReclaimPlan> {
    let versions = versioned(storage)?;
    let mut plan = ReclaimPlan::default();
    // Every namespace lifeboat writes, so every one whose versions are
    // locked, extended and reclaimed.
    for kind in Kind::ALL {
        let all = versions.list_versions(kind).await?;
        let old: Vec<ObjectVersion> = all
            .into_iter()
            .filter(|v| !v.latest && !v.delete_marker)
            .collect();
        let results: Vec<Result<(bool, ObjectVersion)>> = futures::stream::iter(old)
            .map(|v| async move {
                let held = versions.retention(&v.key, &v.version_id).await?;
                Ok((held.is_none_or(|r| r.until <= now), v))
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            let (expired, v) = r?;
            if expired {
                plan.stats.versions_deleted += 1;
                plan.stats.bytes_deleted += v.size_bytes;
                plan.expired.push(v);
            } else {
                plan.stats.versions_deferred += 1;
                plan.stats.bytes_deferred += v.size_bytes;
            }
        }
    }
    Ok(plan)
}

/// Deletes the versions `plan` found expired (by version id: a plain
/// delete on a versioned bucket only adds a delete marker and frees
/// nothing). A version whose lock was extended since the plan is refused
/// by S3 and fails the reclaim; nothing is ever deleted that the plan (and
/// so the audit record written from it) does not name.
pub async fn execute_reclaim(storage: &DynStorage, plan: &ReclaimPlan) -> Result<()> {
    let versions = versioned(storage)?;
    // Owned versions: a stream over borrowed ones makes every future that
    // awaits this one fail rustc's "Send is not general enough" check.
    let results: Vec<Result<()>> = futures::stream::iter(plan.expired.clone())
        .map(|v| async move {
            versions
                .delete_version(&v.key, &v.version_id)
                .await
                .map_err(Error::from)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Removes non-current versions whose lock has expired and defers those
/// still locked ([`plan_reclaim`], then [`execute_reclaim`]); never
/// touches a current version, and never asks S3 to delete a version it
/// knows to be locked. Unaudited: [`maintain`] is the audited path.
pub async fn reclaim(storage: &DynStorage, now: jiff::Timestamp) -> Result<ReclaimStats> {
    let plan = plan_reclaim(storage, now).await?;
    execute_reclaim(storage, &plan).await?;
    Ok(plan.stats)
}

/// What a prune of an object-lock repository adds to its work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LockMaintenance {
    pub extend: ExtendStats,
    pub reclaim: ReclaimStats,
}

/// Extends the retention of everything current (audited as `lock
/// extend`), for `lifeboat lock extend` and the daemon's schedule.
pub async fn extend_repository(
    repo: &crate::Repository,
    config: ObjectLockConfig,
) -> Result<ExtendStats> {
    // Extending retention only lengthens protection.
    repo.require(crate::Permission::Append, "extend object locks")?;
    crate::audit::append(
        repo,
        crate::audit::Entry::new("lock-extend")
            .arg("days", config.days)
            .arg("mode", config.mode),
    )
    .await?;
    extend(repo.storage(), config, jiff::Timestamp::now()).await
}

/// Prune's object-lock step: extend what is current, then reclaim old
/// versions whose lock expired. The reclaim's audit record (the versions
/// and bytes about to be deleted) is written before the first delete, so a
/// crash in between leaves a record of a deletion that may not have
/// happened, never a deletion without a record.
pub async fn maintain(
    repo: &crate::Repository,
    config: ObjectLockConfig,
) -> Result<LockMaintenance> {
    let extend = extend_repository(repo, config).await?;
    let plan = plan_reclaim(repo.storage(), jiff::Timestamp::now()).await?;
    let reclaim = plan.stats.clone();
    if !plan.expired.is_empty() {
        crate::audit::append(
            repo,
            crate::audit::Entry {
                bytes_deleted: reclaim.bytes_deleted,
                ..crate::audit::Entry::new("lock-reclaim")
                    .arg("versions_deleted", reclaim.versions_deleted)
                    .arg("versions_deferred", reclaim.versions_deferred)
            },
        )
        .await?;
        execute_reclaim(repo.storage(), &plan).await?;
    }
    Ok(LockMaintenance { extend, reclaim })
}

/// What [`plan_restore`] found: how the repository's current view differs
/// from its view at a point in time, and so what [`execute_restore`] does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    /// The point in time the current view is made equal to.
    pub as_of: String,
    /// Objects whose version at that time is current already.
    pub unchanged: usize,
    /// Objects hidden by a delete marker since: their version at that time
    /// is copied back on top.
    pub undeleted: usize,
    /// Objects overwritten since (a newer version): their version at that
    /// time is copied back on top.
    pub overwritten: usize,
    /// Bytes of the versions copied back (server-side, nothing is uploaded).
    pub bytes_copied: u64,
    /// Objects that did not exist at that time (a snapshot record, a key or
    /// a pack written since): hidden behind a delete marker, not destroyed.
    pub hidden: usize,
    /// Audit records appended since that time: kept, because they are the
    /// account of what happened since (the attack's own records included).
    pub audit_records_kept: usize,
    /// Nothing was changed (`--dry-run`).
    pub dry_run: bool,
}

/// One object [`execute_restore`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreAction {
    /// Copy this version (the newest at the point in time) back on top.
    CopyBack {
        key: lifeboat_storage::ObjectKey,
        version_id: String,
    },
    /// Add a delete marker: the object did not exist at the point in time.
    Hide { key: lifeboat_storage::ObjectKey },
}

/// The actions that make the current view equal to the view at a point in
/// time, and their counts.
#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub actions: Vec<RestoreAction>,
    pub stats: RestoreStats,
}

/// Compares, for every namespace but `locks/` (locks are live state: an old
/// lock brought back would be stale, and hiding a running backup's lock
/// would let a prune delete under it), each object's current version with
/// its newest version at `at` ([`lifeboat_storage::view_at`], the view
/// `--storage-as-of` reads). Reads only.
pub async fn plan_restore(storage: &DynStorage, at: jiff::Timestamp) -> Result<RestorePlan> {
    let versions = versioned(storage)?;
    let mut plan = RestorePlan {
        stats: RestoreStats {
            as_of: at.to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Locks) {
        let all = versions.list_versions(kind).await?;
        let keys: std::collections::HashMap<String, lifeboat_storage::ObjectKey> =
            all.iter().map(|v| (v.key.path(), v.key.clone())).collect();
        let etags: std::collections::HashMap<(String, String), String> = all
            .iter()
            .filter_map(|v| Some(((v.key.path(), v.version_id.clone()), v.etag.clone()?)))
            .collect();
        // The same content: the same version, or a copy of it (an earlier
        // restore's), which S3 gives the same entity tag and size. Tags
        // that differ only cost a copy that was not needed.
        let same = |path: &String, (a, a_size): &(String, u64), (b, b_size): &(String, u64)| {
            a == b
                || (a_size == b_size
                    && etags
                        .get(&(path.clone(), a.clone()))
                        .is_some_and(|t| etags.get(&(path.clone(), b.clone())) == Some(t)))
        };
        let then = lifeboat_storage::view_at(all.clone(), at);
        let now = lifeboat_storage::view_at(all, jiff::Timestamp::MAX);
        let mut paths: Vec<&String> = keys.keys().collect();
        paths.sort();
        for path in paths {
            let key = keys[path].clone();
            match (then.get(path), now.get(path)) {
                (Some(was), Some(is)) if same(path, was, is) => plan.stats.unchanged += 1,
                (Some((was, size)), current) => {
                    if current.is_some() {
                        plan.stats.overwritten += 1;
                    } else {
                        plan.stats.undeleted += 1;
                    }
                    plan.stats.bytes_copied += size;
                    plan.actions.push(RestoreAction::CopyBack {
                        key,
                        version_id: was.clone(),
                    });
                }
                (None, Some(_)) if kind == Kind::Audit => plan.stats.audit_records_kept += 1,
                (None, Some(_)) => {
                    plan.stats.hidden += 1;
                    plan.actions.push(RestoreAction::Hide { key });
                }
                (None, None) => {}
            }
        }
    }
    Ok(plan)
}

/// Carries out [`plan_restore`]'s actions: server-side copies of the old
/// versions (each a new version, locked by the bucket's default retention)
/// and delete markers. Destroys nothing: every version stays in the
/// bucket, so a restore to the wrong time is undone by another one.
pub async fn execute_restore(storage: &DynStorage, plan: &RestorePlan) -> Result<()> {
    let versions = versioned(storage)?;
    // Owned actions, as in execute_reclaim.
    let results: Vec<Result<()>> = futures::stream::iter(plan.actions.clone())
        .map(|action| async move {
            match action {
                RestoreAction::CopyBack { key, version_id } => versions
                    .copy_version_to_current(&key, &version_id)
                    .await
                    .map_err(Error::from),
                RestoreAction::Hide { key } => storage.delete(&key).await.map_err(Error::from),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The audit record of a restore (`lock-restore`), appended to the
/// repository once its current view is the restored one.
pub async fn record_restore(repo: &crate::Repository, stats: &RestoreStats) -> Result<()> {
    repo.require(crate::Permission::Full, "restore locked versions")?;
    crate::audit::append(
        repo,
        crate::audit::Entry::new("lock-restore")
            .arg("as_of", &stats.as_of)
            .arg("undeleted", stats.undeleted)
            .arg("overwritten", stats.overwritten)
            .arg("hidden", stats.hidden)
            .arg("bytes_copied", stats.bytes_copied),
    )
    .await
    .map(drop)
}
