//! The audit log: who changed the repository, how, and what was deleted.
//!
//! Every mutating operation (init, backup, copy, forget, prune, repair,
//! key add/remove/passwd, protect/unprotect, lock extension) appends one
//! [`AuditRecord`] under `audit/`: time, host, OS user, program version,
//! operation, its arguments (never a secret), the snapshots it made or
//! removed, and the bytes it deleted. Records are sealed with the master
//! key and named `<height, 12 digits>.<hex BLAKE3 of the sealed bytes>`.
//!
//! **Hash links that tolerate concurrent writers.** A record names, in
//! `prev`, the ids of the *heads* its writer found: among the records whose
//! height is within [`WINDOW`] of the highest one listed, those that no
//! other record of that window names. Its height is one more than the
//! highest it names. Two hosts appending at once both name the same heads
//! and land at the same height: the log forks, and the next append names
//! both branches again (a join). So the log is a DAG, ordered by height,
//! then time, then id — the rule of git's commit graph rather than of a
//! single chain, and the reason `audit verify` accepts several records at
//! one height. (A per-writer chain, kopia-style, would need a stable writer
//! identity, which containers without local state do not have.)
//!
//! What the links give ([`verify`]): an edited record no longer matches its
//! name; a forged one (no key) fails authentication; a renamed (re-heighted,
//! reordered) one has a name that disagrees with its sealed height; a
//! deleted one is named by a later record's `prev`. What they cannot give is
//! the newest records: deleting the tip (truncation) leaves a shorter valid
//! log. So heads are also kept *outside* the repository: in the local state
//! directory of every machine that appends or verifies ([`Witness`]), and in
//! every copy target (a `copy` record carries the source's heads). `verify`
//! compares the log with them.
//!
//! Records are written *before* destructive work (forget, prune, key
//! removal, unprotect) so a killed process can never have deleted without a
//! trace, and *after* additive work (a backup's record names the snapshot
//! it wrote). A `put` is atomic, so a kill during an append leaves the
//! record whole or absent; either way the log verifies.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use futures::StreamExt;
use lifeboat_storage::{Kind, ObjectKey};
use serde::{Deserialize, Serialize};

use crate::limits::get_bounded;
use crate::repository::put_idempotent;
use crate::{Error, Id, Repository, Result};

pub(crate) const AUDIT_AAD: &[u8] = b"lifeboat audit v1";

/// How far below the highest record an appender looks for heads: a record
/// that landed up to this many heights below the top (a writer whose
/// listing lagged, or a fork) is still joined by the next append.
pub const WINDOW: u64 = 2;

/// How many of its own records a machine remembers per repository.
const WITNESS_KEEP: usize = 16;

/// Clock difference between hosts tolerated before a record whose time is
/// earlier than a record it names is reported (the lock protocol assumes
/// much less, docs/format.md §11.3).
const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(30 * 60);

/// One audit record (sealed JSON; unknown fields are ignored, so later
/// versions can add some).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 0 for a log's first record; else one more than the highest `prev`.
    pub height: u64,
    /// Ids of the heads the writer found (empty only for a first record).
    pub prev: Vec<Id>,
    pub time: jiff::Timestamp,
    /// Kernel host name of the writer.
    pub host: String,
    /// `$USER` (or the effective uid) of the writer.
    pub user: String,
    /// e.g. `lifeboat 0.1.0`.
    pub version: String,
    /// `init`, `backup`, `copy`, `forget`, `prune`, `repair-index`,
    /// `key-add`, `key-remove`, `key-passwd`, `protect`, `unprotect`,
    /// `lock-extend`, `audit-start`.
    pub op: String,
    /// The operation's options (never a secret).
    #[serde(default)]
    pub args: BTreeMap<String, serde_json::Value>,
    /// Snapshots the operation wrote, forgot, protected or unprotected.
    #[serde(default)]
    pub snapshots: Vec<Id>,
    /// Bytes the operation deletes (prune: packs; forget: records).
    #[serde(default)]
    pub bytes_deleted: u64,
    /// What each forgotten snapshot was (a forget's record), so the log
    /// still says what went after prune has removed the data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<ForgottenSnapshot>,
    /// A copy's record: the source repository's audit heads when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<AuditHeads>,
}

/// A snapshot a `forget` removed, as its record described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgottenSnapshot {
    pub id: Id,
    pub time: jiff::Timestamp,
    pub host: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub tree: Id,
}

/// The newest records of one repository's audit log: what a witness keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHeads {
    pub repository: Id,
    pub height: u64,
    pub heads: Vec<Id>,
}

/// What an operation tells [`append`]; the rest (time, host, user,
/// version, links) is filled in.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub op: String,
    pub args: BTreeMap<String, serde_json::Value>,
    pub snapshots: Vec<Id>,
    pub bytes_deleted: u64,
    pub forgotten: Vec<ForgottenSnapshot>,
    pub witness: Option<AuditHeads>,
}

impl Entry {
    pub fn new(op: &str) -> Self {
        Entry {
            op: op.to_string(),
            ..Default::default()
        }
    }

    /// Adds an argument (skipped when it serializes to `null`).
    pub fn arg(mut self, name: &str, value: impl Serialize) -> Self {
        let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        if !v.is_null() {
            self.args.insert(name.to_string(), v);
        }
        self
    }

    pub fn snapshot(mut self, id: Id) -> Self {
        self.snapshots.push(id);
        self
    }
}

impl AuditRecord {
    pub fn encode(&self, key: &crate::MasterKey) -> Vec<u8> {
        key.seal(
            &serde_json::to_vec(self).expect("audit record serializes"),
            AUDIT_AAD,
        )
    }

    pub fn decode(key: &crate::MasterKey, object: &str, sealed: &[u8]) -> Result<Self> {
        let plain = key
            .open(sealed, AUDIT_AAD)
            .ok_or_else(|| Error::corrupt(object, "authentication failed"))?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(object, e))
    }
}

/// The object name of a record: height, then the hash of its bytes.
pub fn object_name(height: u64, id: &Id) -> String {
    format!("{height:012}.{}", id.to_hex())
}

/// Height and id from an object name, if it is one.
pub fn parse_name(name: &str) -> Option<(u64, Id)> {
    let (h, id) = name.split_once('.')?;
    if h.len() != 12 || !h.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((h.parse().ok()?, Id::from_hex(id)?))
}

/// Host and user of this process, for records.
fn actor() -> (String, String) {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", nix::unistd::geteuid()));
    (crate::keyfile::hostname(), user)
}

/// One record read from storage.
#[derive(Debug, Clone)]
pub struct LoggedRecord {
    pub id: Id,
    pub record: AuditRecord,
}

/// Appends `entry` to the repository's audit log; returns the record's id.
/// Also remembers it in this machine's witness (best effort: a witness that
/// cannot be written is logged, never an error of the operation).
pub async fn append(repo: &Repository, entry: Entry) -> Result<Id> {
    let storage = repo.storage();
    let list = storage.list(Kind::Audit).await?;
    repo.retain_cached(Kind::Audit, &list);
    let mut names: Vec<(u64, Id, ObjectKey, u64)> = list
        .into_iter()
        .filter_map(|o| {
            let (h, id) = parse_name(o.key.name())?;
            Some((h, id, o.key, o.size_bytes))
        })
        .collect();
    names.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    if repo.is_write_only() {
        // A write-only key opens no record: it links to every record of
        // the highest height by name alone (docs/format.md §18).
        let top = names.first().map(|n| n.0);
        let mut prev: Vec<Id> = names
            .iter()
            .filter(|n| Some(n.0) == top)
            .map(|n| n.1)
            .collect();
        prev.sort();
        let height = top.map_or(0, |t| t + 1);
        return write_record(repo, entry, height, prev).await;
    }
    // Read from the top down: the highest record that opens sets the
    // window; records that do not open (planted, damaged) are left out and
    // reported by `verify`.
    let mut window: Vec<LoggedRecord> = Vec::new();
    let mut top: Option<u64> = None;
    for (h, id, key, size) in names {
        if let Some(t) = top
            && h + WINDOW < t
        {
            break;
        }
        // Linking needs only the heads' ids and heights, which the cached
        // copy (checked against its name) gives as well as the stored one;
        // `verify` and `log` read the repository's own bytes.
        match read_record(repo, &key, id, h, Some(size), Via::Cache).await {
            Ok(r) => {
                top.get_or_insert(h);
                window.push(r);
            }
            Err(e) => {
                tracing::warn!("audit log: skipping {key}: {e} (run `lifeboat audit verify`)")
            }
        }
    }
    let named: HashSet<Id> = window
        .iter()
        .flat_map(|r| r.record.prev.iter().copied())
        .collect();
    let mut prev: Vec<Id> = window
        .iter()
        .filter(|r| !named.contains(&r.id))
        .map(|r| r.id)
        .collect();
    prev.sort();
    let height = window
        .iter()
        .filter(|r| prev.contains(&r.id))
        .map(|r| r.record.height + 1)
        .max()
        .unwrap_or(0);
    write_record(repo, entry, height, prev).await
}

/// Seals and writes one record of `height` naming `prev`.
async fn write_record(repo: &Repository, entry: Entry, height: u64, prev: Vec<Id>) -> Result<Id> {
    let storage = repo.storage();
    let (host, user) = actor();
    let record = AuditRecord {
        height,
        prev,
        time: jiff::Timestamp::now(),
        host,
        user,
        version: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        op: entry.op,
        args: entry.args,
        snapshots: entry.snapshots,
        bytes_deleted: entry.bytes_deleted,
        forgotten: entry.forgotten,
        witness: entry.witness,
    };
    let bytes = record.encode(repo.key());
    let id = Id::of_bytes(&bytes);
    let key = ObjectKey::new(Kind::Audit, object_name(height, &id));
    put_idempotent(storage, &key, bytes.clone()).await?;
    // The next append links to this record: keep it for that.
    repo.cache_copy(&key, &bytes.into()).await;
    let repository = repo.config().repository_id;
    if let Err(e) = Witness::remember(&repository, height, &[id]) {
        tracing::warn!("audit log: cannot update the local witness: {e}");
    }
    Ok(id)
}

/// [`append`], for work that already happened: a failure is logged as a
/// warning and does not fail the operation (its result is in the
/// repository; `audit verify` reports the snapshot without a record).
pub async fn append_after(repo: &Repository, entry: Entry) {
    let op = entry.op.clone();
    if let Err(e) = append(repo, entry).await {
        tracing::warn!("audit log: the record of this {op} could not be written: {e}");
    }
}

/// Where [`read_record`] reads from.
#[derive(Clone, Copy)]
enum Via {
    /// The metadata cache when it holds the record, else the storage.
    Cache,
    /// Always the storage.
    Storage,
}

async fn read_record(
    repo: &Repository,
    key: &ObjectKey,
    id: Id,
    height: u64,
    size: Option<u64>,
    via: Via,
) -> Result<LoggedRecord> {
    let bytes = match via {
        Via::Cache => repo.get_cached(key, size).await?,
        Via::Storage => get_bounded(repo.storage(), key, size).await?,
    };
    if Id::of_bytes(&bytes) != id {
        return Err(Error::corrupt(
            key,
            "content does not match its name (edited)",
        ));
    }
    let record = AuditRecord::decode(repo.key(), &key.to_string(), &bytes)?;
    if record.height != height {
        return Err(Error::corrupt(
            key,
            format!(
                "its name says height {height}, the record says {} (renamed or reordered)",
                record.height
            ),
        ));
    }
    Ok(LoggedRecord { id, record })
}

/// The whole log as read: records that verify, in log order (height, time,
/// id), and the problems met reading the others.
#[derive(Debug, Default)]
pub struct AuditLog {
    pub records: Vec<LoggedRecord>,
    pub unreadable: Vec<String>,
}

impl AuditLog {
    /// The heads: records no other record names.
    pub fn heads(&self) -> Vec<&LoggedRecord> {
        let named: HashSet<Id> = self
            .records
            .iter()
            .flat_map(|r| r.record.prev.iter().copied())
            .collect();
        self.records
            .iter()
            .filter(|r| !named.contains(&r.id))
            .collect()
    }

    pub fn height(&self) -> u64 {
        self.records
            .iter()
            .map(|r| r.record.height)
            .max()
            .unwrap_or(0)
    }
}

/// Reads every record (in parallel). An object whose name is not a record
/// name, that does not match its name, does not open or disagrees with its
/// name's height is listed in `unreadable`; other storage errors fail.
pub async fn read_log(repo: &Repository) -> Result<AuditLog> {
    let list = repo.storage().list(Kind::Audit).await?;
    let mut log = AuditLog::default();
    let mut valid = Vec::new();
    for o in list {
        match parse_name(o.key.name()) {
            Some((h, id)) => valid.push((h, id, o.key, o.size_bytes)),
            None => log
                .unreadable
                .push(format!("{}: not an audit record name (planted?)", o.key)),
        }
    }
    let read: Vec<(ObjectKey, Result<LoggedRecord>)> = futures::stream::iter(valid)
        .map(|(h, id, key, size)| async move {
            let r = read_record(repo, &key, id, h, Some(size), Via::Storage).await;
            (key, r)
        })
        .buffer_unordered(repo.concurrency())
        .collect()
        .await;
    for (key, r) in read {
        match r {
            Ok(r) => log.records.push(r),
            Err(e @ Error::Corrupt { .. }) => {
                log.unreadable.push(format!("forged or damaged: {e}"))
            }
            Err(e) if e.storage_kind() == Some(lifeboat_storage::ErrorKind::NotFound) => {
                log.unreadable
                    .push(format!("{key}: listed, then gone before it was read"));
            }
            Err(e) => return Err(e),
        }
    }
    log.records.sort_by(|a, b| {
        (a.record.height, a.record.time, a.id).cmp(&(b.record.height, b.record.time, b.id))
    });
    log.unreadable.sort();
    Ok(log)
}

/// The current heads of a repository's log (for a copy's record and for
/// witnesses). Reads only the top of the log.
pub async fn heads(repo: &Repository) -> Result<AuditHeads> {
    let log = read_log(repo).await?;
    Ok(heads_of(repo, &log))
}

fn heads_of(repo: &Repository, log: &AuditLog) -> AuditHeads {
    let mut heads: Vec<Id> = log.heads().iter().map(|r| r.id).collect();
    heads.sort();
    AuditHeads {
        repository: repo.config().repository_id,
        height: log.height(),
        heads,
    }
}

/// How serious a finding is: errors mean the log was tampered with (or
/// damaged); warnings are states concurrent writers or older versions can
/// leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub records: usize,
    pub height: u64,
    pub heads: Vec<Id>,
    /// Witnesses compared with (the local state directory, copy targets).
    pub witnesses_checked: usize,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }
}

/// Heads kept elsewhere, to compare the log with: where they come from (for
/// messages) and what they are.
#[derive(Debug, Clone)]
pub struct ExternalHeads {
    pub source: String,
    pub heads: AuditHeads,
    /// When that place saw them.
    pub seen: Option<jiff::Timestamp>,
}

/// Checks the log: every record authentic and under its own name, every
/// link present and consistent, and every head that `external` (and this
/// machine's witness) remembers still in the log. Snapshots that no backup
/// or copy record names are warnings.
pub async fn verify(repo: &Repository, external: &[ExternalHeads]) -> Result<VerifyReport> {
    let log = read_log(repo).await?;
    let mut findings: Vec<Finding> = Vec::new();
    let mut error = |m: String| {
        findings.push(Finding {
            severity: Severity::Error,
            message: m,
        })
    };
    for u in &log.unreadable {
        error(u.clone());
    }
    let by_id: HashMap<Id, &LoggedRecord> = log.records.iter().map(|r| (r.id, r)).collect();
    let describe = |r: &LoggedRecord| {
        format!(
            "record {} (height {}, {} by {}@{} at {})",
            r.id.short(),
            r.record.height,
            r.record.op,
            r.record.user,
            r.record.host,
            r.record.time.strftime("%Y-%m-%d %H:%M:%S")
        )
    };
    let mut warnings: Vec<String> = Vec::new();
    let mut roots = 0;
    for r in &log.records {
        if r.record.prev.is_empty() {
            roots += 1;
            if r.record.height != 0 {
                error(format!("{}: names no previous record", describe(r)));
            }
            continue;
        }
        let mut highest = None;
        for p in &r.record.prev {
            match by_id.get(p) {
                None => error(format!(
                    "{} names record {} which is missing: a record was deleted",
                    describe(r),
                    p.short()
                )),
                Some(q) => {
                    highest = highest.max(Some(q.record.height));
                    if q.record.time > r.record.time + CLOCK_SKEW {
                        warnings.push(format!(
                            "{} is dated before {} which it follows (clocks differ by more \
                             than 30 minutes?)",
                            describe(r),
                            describe(q)
                        ));
                    }
                }
            }
        }
        if let Some(h) = highest
            && h + 1 != r.record.height
        {
            error(format!(
                "{}: the records it names end at height {h}, so its height should be {} \
                 (reordered)",
                describe(r),
                h + 1
            ));
        }
    }
    if roots > 1 {
        warnings.push(format!(
            "the log has {roots} first records (two operations began it at once?)"
        ));
    }
    let top = log.height();
    for h in log.heads() {
        if h.record.height + WINDOW < top {
            warnings.push(format!(
                "{} is a branch no later record names (a writer whose listing lagged); \
                 it is only protected by witnesses",
                describe(h)
            ));
        }
    }
    // Witnesses: heads seen elsewhere must still be here.
    let repository = repo.config().repository_id;
    let mut external: Vec<ExternalHeads> = external.to_vec();
    if let Some(w) = Witness::load(&repository) {
        external.push(w);
    }
    for x in &external {
        if x.heads.repository != repository {
            continue;
        }
        let seen = x
            .seen
            .map(|t| format!(" (seen {})", t.strftime("%Y-%m-%d %H:%M:%S")))
            .unwrap_or_default();
        for id in &x.heads.heads {
            if !by_id.contains_key(id) {
                error(format!(
                    "{} remembers record {} at height {}{seen}, which is not in the log: \
                     the log was truncated or rewritten",
                    x.source,
                    id.short(),
                    x.heads.height
                ));
            }
        }
        if x.heads.height > top {
            error(format!(
                "{} saw the log reach height {}{seen}; it now ends at {top}: truncated",
                x.source, x.heads.height
            ));
        }
    }
    // Snapshots without a record: the log began before them but no backup
    // or copy names them.
    if let Some(first) = log.records.first().map(|r| r.record.time) {
        let named: HashSet<Id> = log
            .records
            .iter()
            .filter(|r| matches!(r.record.op.as_str(), "backup" | "copy" | "tag"))
            .flat_map(|r| r.record.snapshots.iter().copied())
            .collect();
        for s in repo.snapshots().await? {
            if s.record.time > first && !named.contains(&s.id) {
                warnings.push(format!(
                    "snapshot {} ({}, {}) has no audit record: written by an older lifeboat, \
                     an append that failed, or planted by a key holder",
                    s.id.short(),
                    s.record.host,
                    s.record.time.strftime("%Y-%m-%d %H:%M:%S")
                ));
            }
        }
    }
    findings.extend(warnings.into_iter().map(|m| Finding {
        severity: Severity::Warning,
        message: m,
    }));
    let heads = heads_of(repo, &log);
    let report = VerifyReport {
        records: log.records.len(),
        height: top,
        heads: heads.heads.clone(),
        witnesses_checked: external.len(),
        findings,
    };
    if report.errors() == 0
        && !heads.heads.is_empty()
        && let Err(e) = Witness::remember(&repository, heads.height, &heads.heads)
    {
        tracing::warn!("audit log: cannot update the local witness: {e}");
    }
    Ok(report)
}

/// The copy records in `target` that carry `source`'s heads: what a copy
/// target witnessed of the source's log.
pub async fn witnessed_in(target: &Repository, source: &Id) -> Result<Vec<ExternalHeads>> {
    let log = read_log(target).await?;
    Ok(log
        .records
        .into_iter()
        .filter_map(|r| {
            let w = r.record.witness?;
            (w.repository == *source).then(|| ExternalHeads {
                source: format!("copy target {}", target.storage().location()),
                heads: w,
                seen: Some(r.record.time),
            })
        })
        .collect())
}

/// This machine's memory of a repository's audit heads, kept in the local
/// state directory ([`set_witness_dir`]), file `audit/<repository
/// id>.json`, written through a temporary file and a rename.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Witness {
    pub height: u64,
    pub records: Vec<WitnessedRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WitnessedRecord {
    pub id: Id,
    pub height: u64,
    pub seen: jiff::Timestamp,
}

static WITNESS_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the state directory whose `audit/` holds this process's
/// witnesses. Until it is set, no witness is kept or read: the library
/// writes no file outside the repository unless its caller says where
/// (the binary sets the state directory at start).
pub fn set_witness_dir(state_dir: Option<PathBuf>) {
    *WITNESS_DIR.lock().unwrap() = state_dir;
}

fn witness_dir() -> Option<PathBuf> {
    WITNESS_DIR
        .lock()
        .unwrap()
        .as_ref()
        .map(|d| d.join("audit"))
}

impl Witness {
    fn path(repository: &Id) -> Option<PathBuf> {
        Some(witness_dir()?.join(format!("{}.json", repository.to_hex())))
    }

    /// The heads this machine remembers, if any.
    pub fn load(repository: &Id) -> Option<ExternalHeads> {
        let path = Self::path(repository)?;
        let bytes = std::fs::read(&path).ok()?;
        let w: Witness = match serde_json::from_slice(&bytes) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("{}: unreadable witness ({e}); ignored", path.display());
                return None;
            }
        };
        Some(ExternalHeads {
            source: format!("this machine's witness ({})", path.display()),
            seen: w.records.iter().map(|r| r.seen).max(),
            heads: AuditHeads {
                repository: *repository,
                height: w.height,
                heads: w.records.iter().map(|r| r.id).collect(),
            },
        })
    }

    /// Adds records seen (or written) now, keeping the newest
    /// [`WITNESS_KEEP`]. Calls from threads of one process (a daemon's
    /// jobs on several repositories, parallel tests) take turns, and each
    /// writes through its own temporary file: with one temporary name per
    /// process, two witnesses written at once could each be renamed over
    /// the other's file, so one repository's witness held another's
    /// records (and `verify` reported a truncation that never happened).
    pub fn remember(repository: &Id, height: u64, ids: &[Id]) -> std::io::Result<()> {
        static TURN: Mutex<()> = Mutex::new(());
        let Some(path) = Self::path(repository) else {
            return Ok(());
        };
        let _turn = TURN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut w: Witness = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let now = jiff::Timestamp::now();
        let known: BTreeSet<Id> = w.records.iter().map(|r| r.id).collect();
        for id in ids {
            if !known.contains(id) {
                w.records.push(WitnessedRecord {
                    id: *id,
                    height,
                    seen: now,
                });
            }
        }
        w.height = w.height.max(height);
        w.records.sort_by_key(|r| (r.height, r.seen));
        let excess = w.records.len().saturating_sub(WITNESS_KEEP);
        w.records.drain(..excess);
        let dir = path.parent().expect("witness path has a directory");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            repository.to_hex(),
            std::process::id()
        ));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&w).expect("witness serializes"),
        )?;
        std::fs::rename(&tmp, &path)
    }
}

/// Descriptions of snapshots a caller is about to delete, for
/// [`AuditRecord::forgotten`].
pub fn forgotten_of(snapshots: &[&crate::Snapshot]) -> Vec<ForgottenSnapshot> {
    snapshots
        .iter()
        .map(|s| ForgottenSnapshot {
            id: s.id,
            time: s.record.time,
            host: s.record.host.clone(),
            paths: s.record.paths.clone(),
            tags: s.record.tags.clone(),
            tree: s.record.tree,
        })
        .collect()
}

/// The records of `log` at or after `since` whose operation is one of
/// `ops` (all when empty), in log order.
pub fn filter<'a>(
    log: &'a AuditLog,
    since: Option<jiff::Timestamp>,
    ops: &'a [String],
) -> impl Iterator<Item = &'a LoggedRecord> + 'a {
    log.records.iter().filter(move |r| {
        since.is_none_or(|t| r.record.time >= t) && (ops.is_empty() || ops.contains(&r.record.op))
    })
}
