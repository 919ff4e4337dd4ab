//! Retention (`forget`): which snapshots a policy keeps, and removing the
//! others' records.
//!
//! [`apply_policy`] is pure: it groups snapshots by source (host and sorted
//! paths) and, within each group, marks every snapshot kept or removed with
//! the rules that keep it. [`forget`] deletes the records of removed
//! snapshots and nothing else: data stays until `prune`. Snapshots are
//! self-contained (no snapshot needs its parent), so any subset may go.
//!
//! Snapshots written by a key that is not full (an append-only backup
//! host's) form groups of their own, per key ([`apply_policy_by_key`]): a
//! count rule (`--keep-last`, the buckets) never lets one such key's
//! snapshots push another key's out, so fake snapshots from a compromised
//! append-only host cannot make `forget` drop the real ones
//! (docs/security.md §11.4).
//!
//! Time buckets (hourly … yearly) are computed in UTC, so a policy means the
//! same on every machine whatever its time zone; weeks are ISO 8601 weeks.
//! Each bucket rule keeps the newest snapshot of each of its `n` newest
//! buckets that hold a snapshot (restic's and borg's meaning).

use std::collections::{BTreeMap, HashSet};

use lifeboat_storage::{Kind, ObjectKey};
use serde::Serialize;

use crate::record::Snapshot;
use crate::repository::Repository;
use crate::{Error, Id, Result};

/// What to keep. Counts of `None` (or 0) disable a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    /// Keep every snapshot taken within this long before the group's newest
    /// snapshot (not before now: a source whose backups stopped keeps its
    /// last ones).
    pub keep_within: Option<jiff::SignedDuration>,
    /// Keep every snapshot carrying one of these tags.
    pub keep_tags: Vec<String>,
}

impl RetentionPolicy {
    /// True if no rule keeps anything.
    pub fn is_empty(&self) -> bool {
        let n = |c: Option<usize>| c.unwrap_or(0) == 0;
        n(self.keep_last)
            && n(self.keep_hourly)
            && n(self.keep_daily)
            && n(self.keep_weekly)
            && n(self.keep_monthly)
            && n(self.keep_yearly)
            && self.keep_within.is_none()
            && self.keep_tags.is_empty()
    }
}

/// Parses a duration like `7d`, `12h`, `2w`, `6m`, `1y` or `1y6m`: units `h`
/// (hour), `d` (day), `w` (week), `m` (month, 30 days), `y` (year, 365 days).
pub fn parse_duration(s: &str) -> Result<jiff::SignedDuration> {
    let bad = || {
        Error::BadInput(format!(
            "{s:?} is not a duration like 7d, 12h, 2w, 6m or 1y (h, d, w, m = 30 days, y = 365 days)"
        ))
    };
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit: i64 = match c {
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'm' => 30 * 86_400,
            'y' => 365 * 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| v.checked_add(total))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(jiff::SignedDuration::from_secs(total))
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub short_id: String,
    pub time: jiff::Timestamp,
    pub tags: Vec<String>,
    pub keep: bool,
    /// The rules that keep it (`last`, `hourly`, `daily`, `weekly`,
    /// `monthly`, `yearly`, `within`, `tag:NAME`); empty when removed.
    pub reasons: Vec<String>,
}

/// The snapshots of one source, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct SourceGroup {
    pub host: String,
    pub paths: Vec<String>,
    /// The key (not a full one) that wrote these snapshots; `None` for
    /// snapshots of full keys and records that name no key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub snapshots: Vec<Decision>,
}

impl SourceGroup {
    pub fn kept(&self) -> usize {
        self.snapshots.iter().filter(|d| d.keep).count()
    }

    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.snapshots.iter().filter(|d| !d.keep)
    }
}

type BucketFn = fn(&jiff::civil::DateTime) -> i64;

fn bucket_rules(p: &RetentionPolicy) -> [(&'static str, Option<usize>, BucketFn); 5] {
    // Each key orders buckets the way time does.
    [
        ("hourly", p.keep_hourly, |t| {
            day_number(t) * 24 + t.hour() as i64
        }),
        ("daily", p.keep_daily, day_number),
        ("weekly", p.keep_weekly, |t| {
            let w = t.date().iso_week_date();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", p.keep_monthly, |t| {
            t.year() as i64 * 12 + t.month() as i64
        }),
        ("yearly", p.keep_yearly, |t| t.year() as i64),
    ]
}

fn day_number(t: &jiff::civil::DateTime) -> i64 {
    t.year() as i64 * 400 + t.day_of_year() as i64
}

/// Decides, per source, which snapshots the policy keeps, whichever key
/// wrote them.
pub fn apply_policy(snapshots: &[Snapshot], policy: &RetentionPolicy) -> Vec<SourceGroup> {
    group_and_decide(snapshots, policy, |_| None)
}

/// Decides, per source and per writing key, which snapshots the policy
/// keeps: snapshots whose record names a key that is not in `full_keys`
/// (an append-only key, or a key no longer in the repository) are a group
/// of their own, so their number never counts against the snapshots of
/// full keys or of other keys. Records naming no key (written before keys
/// were recorded) count with the full keys'.
pub fn apply_policy_by_key(
    snapshots: &[Snapshot],
    policy: &RetentionPolicy,
    full_keys: &HashSet<Id>,
) -> Vec<SourceGroup> {
    group_and_decide(snapshots, policy, |s| {
        s.record
            .creator
            .as_ref()
            .and_then(|c| c.key)
            .filter(|k| !full_keys.contains(k))
    })
}

fn group_and_decide(
    snapshots: &[Snapshot],
    policy: &RetentionPolicy,
    maker: impl Fn(&Snapshot) -> Option<Id>,
) -> Vec<SourceGroup> {
    type Source = (String, Vec<String>, Option<Id>);
    let mut groups: BTreeMap<Source, Vec<&Snapshot>> = BTreeMap::new();
    for s in snapshots {
        let mut paths = s.record.paths.clone();
        paths.sort();
        paths.dedup();
        groups
            .entry((s.record.host.clone(), paths, maker(s)))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|((host, paths, key), mut snaps)| {
            // Newest first; ties broken by id so the result is deterministic.
            snaps.sort_by(|a, b| b.record.time.cmp(&a.record.time).then(b.id.cmp(&a.id)));
            SourceGroup {
                host,
                paths,
                key: key.map(|k| k.to_hex()),
                snapshots: decide_group(&snaps, policy),
            }
        })
        .collect()
}

fn decide_group(snaps: &[&Snapshot], policy: &RetentionPolicy) -> Vec<Decision> {
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); snaps.len()];
    if let Some(n) = policy.keep_last {
        for r in reasons.iter_mut().take(n) {
            r.push("last".into());
        }
    }
    for (name, count, bucket) in bucket_rules(policy) {
        let Some(mut left) = count else { continue };
        let mut last_bucket = None;
        for (i, s) in snaps.iter().enumerate() {
            if left == 0 {
                break;
            }
            let b = bucket(&s.record.time.to_zoned(jiff::tz::TimeZone::UTC).datetime());
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                reasons[i].push(name.into());
                left -= 1;
            }
        }
    }
    if let (Some(within), Some(newest)) = (policy.keep_within, snaps.first()) {
        let cutoff = newest
            .record
            .time
            .saturating_sub(within)
            .unwrap_or(newest.record.time);
        for (i, s) in snaps.iter().enumerate() {
            if s.record.time >= cutoff {
                reasons[i].push("within".into());
            }
        }
    }
    for (i, s) in snaps.iter().enumerate() {
        for t in &policy.keep_tags {
            if s.record.tags.contains(t) {
                reasons[i].push(format!("tag:{t}"));
            }
        }
    }
    snaps
        .iter()
        .zip(reasons)
        .map(|(s, reasons)| Decision {
            id: s.id.to_hex(),
            short_id: s.id.short(),
            time: s.record.time,
            tags: s.record.tags.clone(),
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    pub dry_run: bool,
    /// Allow a policy to remove every snapshot of a source.
    pub allow_empty_source: bool,
    /// Only snapshots matching this are considered; the others are left
    /// alone (and do not count for the policy).
    pub filter: SnapshotFilter,
}

/// Selects snapshots by host, tags and paths (an empty field matches all).
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// The snapshot's host is one of these.
    pub hosts: Vec<String>,
    /// Each entry is a comma-separated tag list the snapshot must all have;
    /// the snapshot matches if any entry does.
    pub tags: Vec<String>,
    /// The snapshot's paths include every one of these.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        let r = &s.record;
        (self.hosts.is_empty() || self.hosts.contains(&r.host))
            && (self.tags.is_empty()
                || self.tags.iter().any(|set| {
                    set.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .all(|t| r.tags.iter().any(|have| have == t))
                }))
            && self.paths.iter().all(|p| r.paths.contains(p))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    pub groups: Vec<SourceGroup>,
    pub kept: usize,
    pub removed: usize,
    pub dry_run: bool,
}

/// Applies `policy` and deletes the records of the snapshots it does not
/// keep (unless `dry_run`). Refuses, before deleting anything, a policy
/// that would remove every snapshot of a source, unless
/// `allow_empty_source`. Takes no lock: deleting records only makes a
/// concurrent prune keep more than needed, and backups never read records
/// other than to pick a parent, which they verify blob by blob.
pub async fn forget(
    repo: &Repository,
    policy: &RetentionPolicy,
    options: &ForgetOptions,
) -> Result<ForgetReport> {
    repo.require(crate::Permission::Full, "forget snapshots")?;
    if policy.is_empty() {
        return Err(Error::BadInput(
            "no retention rule given (--keep-last, --keep-daily, ...): refusing to forget everything"
                .into(),
        ));
    }
    let mut snapshots = repo.snapshots().await?;
    snapshots.retain(|s| options.filter.matches(s));
    let full_keys = crate::keys::full_keys(repo).await?;
    let mut groups = apply_policy_by_key(&snapshots, policy, &full_keys);
    // Protected snapshots stay, whatever the policy says.
    let (protected, _) = crate::protect::list(repo).await?;
    for d in groups.iter_mut().flat_map(|g| g.snapshots.iter_mut()) {
        if let Some(p) = crate::Id::from_hex(&d.id).and_then(|id| protected.get(&id)) {
            d.reasons.push(format!(
                "protected until {}",
                p.until.strftime("%Y-%m-%d %H:%M:%S UTC")
            ));
            d.keep = true;
        }
    }
    if !options.allow_empty_source
        && let Some(g) = groups.iter().find(|g| g.kept() == 0)
    {
        return Err(Error::BadInput(format!(
            "the policy would forget every snapshot of {} {} ({}); give --allow-empty-source to do that",
            g.host,
            g.paths.join(" "),
            g.snapshots.len()
        )));
    }
    let kept = groups.iter().map(|g| g.kept()).sum();
    let removed: Vec<&Decision> = groups.iter().flat_map(|g| g.removed()).collect();
    let removed_count = removed.len();
    if !options.dry_run && !removed.is_empty() {
        // Logged before anything is deleted, with what each snapshot was:
        // a forget never removes a record without a trace.
        let by_id: std::collections::HashMap<String, &Snapshot> =
            snapshots.iter().map(|s| (s.id.to_hex(), s)).collect();
        let gone: Vec<&Snapshot> = removed
            .iter()
            .filter_map(|d| by_id.get(&d.id).copied())
            .collect();
        let mut entry = crate::audit::Entry::new("forget")
            .arg("policy", policy_args(policy))
            .arg("hosts", &options.filter.hosts)
            .arg("tags", &options.filter.tags)
            .arg("paths", &options.filter.paths)
            .arg("allow_empty_source", options.allow_empty_source);
        entry.snapshots = gone.iter().map(|s| s.id).collect();
        entry.forgotten = crate::audit::forgotten_of(&gone);
        let record = crate::audit::append(repo, entry).await?;
        let names: Vec<String> = removed.iter().map(|d| d.id.clone()).collect();
        delete_records(repo, &names, Some(record)).await?;
    }
    Ok(ForgetReport {
        kept,
        removed: removed_count,
        dry_run: options.dry_run,
        groups,
    })
}

/// The policy as the audit log records it: only the rules given.
fn policy_args(p: &RetentionPolicy) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut count = |name: &str, v: Option<usize>| {
        if let Some(n) = v.filter(|n| *n > 0) {
            m.insert(name.into(), n.into());
        }
    };
    count("keep_last", p.keep_last);
    count("keep_hourly", p.keep_hourly);
    count("keep_daily", p.keep_daily);
    count("keep_weekly", p.keep_weekly);
    count("keep_monthly", p.keep_monthly);
    count("keep_yearly", p.keep_yearly);
    if let Some(d) = p.keep_within {
        m.insert("keep_within".into(), format!("{d:#}").into());
    }
    if !p.keep_tags.is_empty() {
        m.insert("keep_tags".into(), p.keep_tags.clone().into());
    }
    m.into()
}

/// Deletes the snapshot records that `queries` name (full ids or unique
/// prefixes), readable or damaged: `forget ID`. Every query is resolved
/// and the forget logged (audit op `forget`, args `ids`) before anything
/// is deleted; returns the record names (deleted, or that would be with
/// `dry_run`).
pub async fn forget_records(
    repo: &Repository,
    queries: &[String],
    dry_run: bool,
) -> Result<Vec<String>> {
    repo.require(crate::Permission::Full, "forget snapshots")?;
    let listing = repo.snapshot_listing().await?;
    let mut names = Vec::new();
    for q in queries {
        let name = listing.resolve_record(q)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if !dry_run {
        // Logged before anything is deleted, like a forget by policy; a
        // damaged record is named by its id alone.
        let gone: Vec<&Snapshot> = listing
            .snapshots
            .iter()
            .filter(|s| names.contains(&s.id.to_hex()))
            .collect();
        let mut entry = crate::audit::Entry::new("forget").arg("ids", queries);
        entry.snapshots = names.iter().filter_map(|n| Id::from_hex(n)).collect();
        entry.forgotten = crate::audit::forgotten_of(&gone);
        let record = crate::audit::append(repo, entry).await?;
        delete_records(repo, &names, Some(record)).await?;
    }
    Ok(names)
}

/// Deletes the snapshot records `names`, several at once (the
/// repository's connection count). Every deletion is tried; when the
/// storage refuses some (append-only credentials, a `lifeboat serve`
/// client that may not delete, a network failure) and the forget was
/// logged as `record`, a `forget-refused` record naming exactly the
/// snapshots still there (`snapshots`), the forget record it amends
/// (`args.forget`) and the storage's first error follows it, so the log
/// never claims a deletion the storage refused (`audit deleted` marks
/// them), and the first error is returned.
async fn delete_records(repo: &Repository, names: &[String], record: Option<Id>) -> Result<()> {
    use futures::StreamExt;
    let results: Vec<(usize, std::result::Result<(), lifeboat_storage::Error>)> =
        futures::stream::iter(names.iter().cloned().enumerate())
            .map(|(i, name)| async move {
                let key = ObjectKey::new(Kind::Snapshots, name);
                (i, repo.storage().delete(&key).await)
            })
            .buffer_unordered(repo.concurrency())
            .collect()
            .await;
    let mut deleted = Vec::new();
    let mut refused: Vec<(usize, lifeboat_storage::Error)> = Vec::new();
    for (i, r) in results {
        match r {
            Ok(()) => deleted.extend(Id::from_hex(&names[i])),
            Err(e) => refused.push((i, e)),
        }
    }
    repo.note_snapshots_changed(&[], &deleted);
    refused.sort_by_key(|(i, _)| *i);
    let Some((_, first)) = refused.first() else {
        return Ok(());
    };
    if let Some(record) = record {
        let mut entry = crate::audit::Entry::new("forget-refused")
            .arg("forget", record.to_hex())
            .arg("error", first.to_string());
        entry.snapshots = refused
            .iter()
            .filter_map(|(i, _)| Id::from_hex(&names[*i]))
            .collect();
        crate::audit::append_after(repo, entry).await;
    }
    Err(refused.swap_remove(0).1.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BackupMode, SnapshotRecord};
    use crate::{Id, Snapshot};
    use proptest::prelude::*;

    fn snap(n: u8, time: &str, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            id: Id([n; 32]),
            record: SnapshotRecord {
                time: time.parse().unwrap(),
                host: host.into(),
                user: String::new(),
                paths: vec!["/data".into()],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                tree: Id([0; 32]),
                mode: BackupMode::Full,
                parent: None,
                partial: false,
                summary: Default::default(),
                program_version: String::new(),
                extra: Default::default(),
                creator: None,
            },
        }
    }

    fn kept(groups: &[SourceGroup]) -> Vec<(String, Vec<String>)> {
        groups
            .iter()
            .flat_map(|g| g.snapshots.iter())
            .filter(|d| d.keep)
            .map(|d| (d.time.to_string(), d.reasons.clone()))
            .collect()
    }

    #[test]
    fn daily_keeps_the_newest_of_each_utc_day() {
        let s = vec![
            snap(1, "2025-03-01T08:00:00Z", "h", &[]),
            snap(2, "2025-03-01T23:30:00Z", "h", &[]),
            // 00:30 in UTC+2 is still March 2 in UTC: buckets are UTC.
            snap(3, "2025-03-02T22:30:00Z", "h", &[]),
            snap(4, "2025-03-03T01:00:00Z", "h", &[]),
            snap(5, "2025-03-03T02:00:00Z", "h", &[]),
        ];
        let p = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        assert_eq!(
            kept(&apply_policy(&s, &p)),
            vec![
                (
                    "2025-03-03T02:00:00Z".to_string(),
                    vec!["daily".to_string()]
                ),
                (
                    "2025-03-02T22:30:00Z".to_string(),
                    vec!["daily".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn reasons_accumulate_and_groups_are_per_source() {
        let s = vec![
            snap(1, "2024-12-31T10:00:00Z", "a", &["keep"]),
            snap(2, "2025-01-05T10:00:00Z", "a", &[]),
            snap(3, "2025-01-06T10:00:00Z", "a", &[]),
            snap(4, "2025-01-06T11:00:00Z", "b", &[]),
        ];
        let p = RetentionPolicy {
            keep_last: Some(1),
            keep_weekly: Some(2),
            keep_yearly: Some(5),
            keep_tags: vec!["keep".into()],
            ..Default::default()
        };
        let g = apply_policy(&s, &p);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].host, "a");
        let r: Vec<Vec<String>> = g[0].snapshots.iter().map(|d| d.reasons.clone()).collect();
        // 2025-01-06 is a Monday: a new ISO week; 01-05 and 12-31 share week 1 of 2025.
        assert_eq!(
            r,
            vec![
                vec!["last", "weekly", "yearly"],
                vec!["weekly"],
                vec!["yearly", "tag:keep"],
            ]
        );
        assert_eq!(g[1].snapshots[0].reasons, vec!["last", "weekly", "yearly"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        let s = vec![
            snap(1, "2020-01-01T00:00:00Z", "h", &[]),
            snap(2, "2020-01-07T00:00:00Z", "h", &[]),
            snap(3, "2020-01-09T00:00:00Z", "h", &[]),
        ];
        let p = RetentionPolicy {
            keep_within: Some(parse_duration("1w").unwrap()),
            ..Default::default()
        };
        let k = kept(&apply_policy(&s, &p));
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 12 * 3600);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(
            parse_duration("1y6m").unwrap().as_secs(),
            (365 + 180) * 86400
        );
        for bad in ["", "7", "d", "7x", "-1d", "0d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn arb_snapshots() -> impl Strategy<Value = Vec<Snapshot>> {
        // Up to 60 snapshots over ~3 years, two hosts, an occasional tag.
        proptest::collection::vec((0i64..100_000_000, 0u8..2, 0u8..10), 0..60).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (secs, host, tag))| {
                    let mut s = snap(i as u8, "2022-01-01T00:00:00Z", "", &[]);
                    s.record.time = jiff::Timestamp::from_second(1_640_000_000 + secs).unwrap();
                    s.record.host = format!("host{host}");
                    if tag == 0 {
                        s.record.tags.push("gold".into());
                    }
                    s
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
        let c = || proptest::option::of(0usize..8);
        (
            c(),
            c(),
            c(),
            c(),
            c(),
            c(),
            proptest::option::of(1i64..2000),
            any::<bool>(),
        )
            .prop_map(|(l, h, d, w, m, y, within, tag)| RetentionPolicy {
                keep_last: l,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
                keep_within: within.map(jiff::SignedDuration::from_hours),
                keep_tags: if tag { vec!["gold".into()] } else { vec![] },
            })
    }

    proptest! {
        #[test]
        fn policy_properties(snaps in arb_snapshots(), p in arb_policy()) {
            let groups = apply_policy(&snaps, &p);
            let total: usize = groups.iter().map(|g| g.snapshots.len()).sum();
            prop_assert_eq!(total, snaps.len(), "every snapshot decided once");
            for g in &groups {
                for d in &g.snapshots {
                    prop_assert_eq!(d.keep, !d.reasons.is_empty());
                    if p.keep_tags.iter().any(|t| d.tags.contains(t)) {
                        prop_assert!(d.keep, "tagged snapshots are kept");
                    }
                }
                // keep-last n keeps exactly the n newest.
                let n = p.keep_last.unwrap_or(0).min(g.snapshots.len());
                for (i, d) in g.snapshots.iter().enumerate() {
                    prop_assert_eq!(d.reasons.iter().any(|r| r == "last"), i < n);
                }
                // keep-daily n keeps the newest of each of the n newest days.
                if let Some(n) = p.keep_daily {
                    let day = |t: &jiff::Timestamp| t.to_zoned(jiff::tz::TimeZone::UTC).date();
                    let mut days: Vec<jiff::civil::Date> =
                        g.snapshots.iter().map(|d| day(&d.time)).collect();
                    days.dedup();
                    let expect: Vec<_> = days.into_iter().take(n).collect();
                    let got: Vec<_> = g.snapshots.iter()
                        .filter(|d| d.reasons.iter().any(|r| r == "daily"))
                        .map(|d| day(&d.time)).collect();
                    prop_assert_eq!(&got, &expect);
                    for d in g.snapshots.iter().filter(|d| d.reasons.iter().any(|r| r == "daily")) {
                        let newest_of_day = g.snapshots.iter().find(|x| day(&x.time) == day(&d.time)).unwrap();
                        prop_assert_eq!(&newest_of_day.id, &d.id);
                    }
                }
            }
            // Raising a count never removes a snapshot that was kept.
            let mut more = p.clone();
            more.keep_monthly = Some(more.keep_monthly.unwrap_or(0) + 1);
            more.keep_last = Some(more.keep_last.unwrap_or(0) + 1);
            let kept_before: Vec<String> = groups.iter().flat_map(|g| g.snapshots.iter())
                .filter(|d| d.keep).map(|d| d.id.clone()).collect();
            let after = apply_policy(&snaps, &more);
            for id in kept_before {
                let d = after.iter().flat_map(|g| g.snapshots.iter()).find(|d| d.id == id).unwrap();
                prop_assert!(d.keep);
            }
        }
    }
}
