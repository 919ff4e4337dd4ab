//! Archive objects: named, sealed, immutable files kept whole outside packs,
//! such as database log files (PostgreSQL WAL is the first user; MariaDB
//! binlogs and SQLite WAL are meant to be the next).
//!
//! This module owns the generic part: the object names (a *stream* and a
//! file name, stored as `<stream>-<file>` under [`Kind::Archive`], whose
//! prefix is `wal/`), the sealing (zstd when it helps, then the master key,
//! with the object name bound as associated data), the idempotent
//! put-with-compare, get, list and delete, copying between repositories,
//! what `check` verifies, and the retention hook ([`ArchiveRetention`])
//! through which `prune` and `copy` learn which objects the remaining
//! snapshots still need. It does not know what a stream or a file name
//! means: which names a log kind archives, how its files follow each other
//! and which of them a snapshot needs belong to the connector that writes
//! them (`lifeboat-connectors`), which supplies its rule as an
//! [`ArchiveRetention`].
//!
//! A stream groups the objects of one log (for PostgreSQL, one cluster:
//! its system identifier as 16 hex digits). Stream names never contain
//! `-`, so the first `-` of an object name ends the stream; each log kind
//! picks stream names that cannot be mistaken for another kind's.
//!
//! Writers take no repository lock: every object is written whole by one
//! atomic `put`, never overwritten, and packs-only `prune` steps never
//! touch it. The byte format is in `docs/format.md` ("Archive objects").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lifeboat_storage::{ErrorKind, Kind, ObjectKey, Storage};
use serde::Serialize;

use crate::check::{CheckOptions, CheckProblem, CheckReport};
use crate::copy::CopyProgress;
use crate::crypto::MasterKey;
use crate::record::Snapshot;
use crate::repository::{Repository, blocking};
use crate::{Error, Result};

/// Associated-data prefix of every archive object. It keeps the name it
/// had when PostgreSQL WAL was the only kind: changing it would make every
/// existing object unreadable.
const ARCHIVE_AAD: &[u8] = b"lifeboat wal v1\0";

/// zstd level: 3 compresses a 16 MiB WAL segment in a few tens of
/// milliseconds on one core, well inside the time a busy server takes to
/// fill one; higher levels cost more time than they save bytes.
const ZSTD_LEVEL: i32 = 3;

/// Largest plaintext an archive object may inflate to: 1 GiB, the largest
/// PostgreSQL WAL segment and MariaDB binlog file. Refusing more keeps a
/// hostile object from exhausting memory.
pub const MAX_PLAINTEXT: u64 = 1 << 30;

/// Bytes reserved up front when decompressing, whatever the frame header
/// claims: the output grows past this only as the data bears it out.
const UP_FRONT: u64 = 64 << 20;

/// Objects copied between repositories at once (each up to a WAL segment,
/// 16 MiB or more, in plaintext and sealed form).
const COPY_IN_FLIGHT: usize = 4;

/// Archive bytes held at once by `check --read-data`, in KiB (the least
/// budget packs get; archive objects are read on their own, not by the
/// check's pack workers).
const CHECK_BUDGET_KIB: u32 = 32 * 1024;

/// The name of an archive object: its stream and its file name within the
/// stream. Both are valid object-name characters (`[0-9a-z._-]`, lower
/// case); the stream has no `-` and neither part is empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchiveName {
    stream: String,
    file: String,
}

impl ArchiveName {
    /// `None` if either part is not allowed or the object name
    /// (`<stream>-<file>`) would be too long for storage.
    pub fn new(stream: impl Into<String>, file: impl Into<String>) -> Option<Self> {
        let (stream, file) = (stream.into(), file.into());
        let ok = !stream.is_empty()
            && !stream.contains('-')
            && !file.is_empty()
            && ObjectKey::parse(Kind::Archive, &format!("{stream}-{file}")).is_some();
        ok.then_some(ArchiveName { stream, file })
    }

    /// The name of a listed object (`<stream>-<file>`), if it is one.
    pub fn parse(object: &str) -> Option<Self> {
        let (stream, file) = object.split_once('-')?;
        Self::new(stream, file)
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// The storage object name, `<stream>-<file>`.
    pub fn object_name(&self) -> String {
        format!("{}-{}", self.stream, self.file)
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(Kind::Archive, self.object_name())
    }
}

/// The object's path, `wal/<stream>-<file>`: how errors and `check` name it.
impl fmt::Display for ArchiveName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key())
    }
}

fn aad(name: &ArchiveName) -> Vec<u8> {
    let mut a = ARCHIVE_AAD.to_vec();
    a.extend_from_slice(name.object_name().as_bytes());
    a
}

/// The stored form of `data` under `name`: `seal(flag || payload, aad)`,
/// `flag` 1 when `payload` is zstd of `data`, 0 when it is `data` as is.
pub fn seal(key: &MasterKey, name: &ArchiveName, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(data.len() / 2 + 1);
    match zstd::bulk::compress(data, ZSTD_LEVEL) {
        Ok(c) if c.len() < data.len() => {
            payload.push(1);
            payload.extend_from_slice(&c);
        }
        _ => {
            payload.push(0);
            payload.extend_from_slice(data);
        }
    }
    key.seal(&payload, &aad(name))
}

/// Authenticates, decrypts and decompresses a stored object. A damaged
/// object, or one stored under another name, is [`Error::Corrupt`] naming
/// it; so is one that would inflate past [`MAX_PLAINTEXT`].
pub fn open(key: &MasterKey, name: &ArchiveName, sealed: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |why: &str| Error::corrupt(name, why);
    let payload = key
        .open(sealed, &aad(name))
        .ok_or_else(|| corrupt("authentication failed"))?;
    match payload.split_first() {
        Some((0, raw)) => Ok(raw.to_vec()),
        Some((1, c)) => {
            use std::io::Read;
            // Sized from the frame header when it says (it does for what
            // `seal` writes), so the output is not grown by doubling.
            let expected = zstd::zstd_safe::get_frame_content_size(c)
                .ok()
                .flatten()
                .map_or(0, |n| n.min(UP_FRONT) as usize);
            let mut out = Vec::with_capacity(expected);
            // Streamed, so a small object never reserves the whole limit.
            zstd::stream::read::Decoder::new(c)
                .and_then(|d| d.take(MAX_PLAINTEXT + 1).read_to_end(&mut out))
                .map_err(|_| corrupt("bad zstd data"))?;
            if out.len() as u64 > MAX_PLAINTEXT {
                return Err(corrupt("inflates past 1 GiB"));
            }
            Ok(out)
        }
        _ => Err(corrupt("unknown payload flag")),
    }
}

/// How a [`put`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The same content was already stored under this name.
    AlreadyPresent,
}

/// Stores `data` under `name`; durable when this returns `Ok`.
///
/// Idempotent: when the object exists, it is read back and compared in
/// plaintext; the same content is [`PutOutcome::AlreadyPresent`] (a writer
/// retrying a put whose result it did not see), other content is
/// [`Error::ArchiveConflict`] and the stored object is unchanged. A
/// write-only key, which cannot read the object back, gets
/// [`Error::ArchiveUnverifiable`] instead. A put killed at any point
/// leaves no object or the whole object.
pub async fn put(repo: &Repository, name: &ArchiveName, data: Arc<Vec<u8>>) -> Result<PutOutcome> {
    repo.require(crate::Permission::Append, "archive logs")?;
    let sealed = {
        let (key, name, data) = (repo.key().clone(), name.clone(), data.clone());
        blocking(move || seal(&key, &name, &data)).await?
    };
    let okey = name.key();
    match repo.storage().put(&okey, Bytes::from(sealed)).await {
        Ok(()) => Ok(PutOutcome::Stored),
        // A write-only key cannot read the stored object back: the
        // caller decides with what it knows (its own earlier attempt).
        Err(e) if e.kind() == ErrorKind::AlreadyExists && repo.is_write_only() => {
            Err(Error::ArchiveUnverifiable {
                object: name.to_string(),
            })
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let stored = repo.storage().get(&okey).await?;
            let (key, n) = (repo.key().clone(), name.clone());
            let plain = blocking(move || open(&key, &n, &stored)).await??;
            if plain == *data {
                Ok(PutOutcome::AlreadyPresent)
            } else {
                Err(Error::ArchiveConflict {
                    object: name.to_string(),
                })
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads one object (authenticated and decompressed); `None` if it is not
/// stored.
pub async fn get(repo: &Repository, name: &ArchiveName) -> Result<Option<Vec<u8>>> {
    repo.require_full_key("reading archived logs")?;
    let sealed = match repo.storage().get(&name.key()).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (key, name) = (repo.key().clone(), name.clone());
    blocking(move || open(&key, &name, &sealed).map(Some)).await?
}

/// Whether an object is stored, asked of the storage alone: object names
/// are not secret, so this needs no key (and no password KDF).
pub async fn exists(storage: &dyn Storage, name: &ArchiveName) -> Result<bool> {
    Ok(storage.stat(&name.key()).await?.is_some())
}

/// Every stored object, per stream (file names sorted). Objects whose name
/// is not an archive name are left out.
pub async fn list(repo: &Repository) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in repo.storage().list(Kind::Archive).await? {
        if let Some(n) = ArchiveName::parse(o.key.name()) {
            out.entry(n.stream).or_default().insert(n.file);
        }
    }
    Ok(out)
}

/// Deletes one object (retention). Deleting a missing object succeeds.
pub async fn delete(repo: &Repository, name: &ArchiveName) -> Result<()> {
    repo.require(crate::Permission::Full, "delete archived logs")?;
    Ok(repo.storage().delete(&name.key()).await?)
}

// ---------------------------------------------------------------------------
// Retention

/// A log kind's retention rule, implemented by the connector that writes
/// the kind's objects and passed in by whoever runs `prune` or `copy`
/// (this crate cannot know what a file of a stream is for).
///
/// A second log kind plugs in as a second rule in the same
/// [`ArchiveRules`]; each rule claims its own streams.
pub trait ArchiveRetention: Send + Sync {
    /// What reports call this kind's objects, e.g. `"PostgreSQL WAL"`.
    fn kind(&self) -> &'static str;

    /// Whether the objects of `stream` are this kind's.
    fn claims(&self, stream: &str) -> bool;

    /// Of `files` (every object of `stream` in the repository asked about),
    /// those still needed now that the snapshots in `remaining` are the
    /// repository's (for `copy`: the target's). Everything else may be
    /// deleted, and is not copied. A file the rule does not understand must
    /// be kept: deleting it could destroy the only copy of something.
    fn needed(
        &self,
        stream: &str,
        files: &BTreeSet<String>,
        remaining: &[Snapshot],
    ) -> BTreeSet<String>;
}

/// The retention rules `prune` and `copy` apply to archive objects, one per
/// log kind. A stream no rule claims is kept whole and copied whole.
#[derive(Clone, Default)]
pub struct ArchiveRules {
    rules: Vec<Arc<dyn ArchiveRetention>>,
}

impl ArchiveRules {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule; for a stream several rules claim, the first added wins.
    pub fn with(mut self, rule: Arc<dyn ArchiveRetention>) -> Self {
        self.rules.push(rule);
        self
    }

    /// The rule governing `stream`, if any.
    pub fn rule_for(&self, stream: &str) -> Option<&dyn ArchiveRetention> {
        self.rules
            .iter()
            .find(|r| r.claims(stream))
            .map(|r| r.as_ref())
    }

    /// The kind of `stream` and the subset of `files` still needed given
    /// the `remaining` snapshots (all of them for an unclaimed stream).
    pub fn needed(
        &self,
        stream: &str,
        files: &BTreeSet<String>,
        remaining: &[Snapshot],
    ) -> (Option<&'static str>, BTreeSet<String>) {
        match self.rule_for(stream) {
            None => (None, files.clone()),
            Some(rule) => {
                // Only names that exist count, whatever the rule returns.
                let mut keep = rule.needed(stream, files, remaining);
                keep.retain(|f| files.contains(f));
                (Some(rule.kind()), keep)
            }
        }
    }
}

impl fmt::Debug for ArchiveRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| r.kind()))
            .finish()
    }
}

/// What [`expire`] did (or would do, in a dry run).
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    pub dry_run: bool,
    /// Per stream, every stream found.
    pub streams: BTreeMap<String, StreamExpiry>,
}

#[derive(Debug, Clone, Default)]
pub struct StreamExpiry {
    /// The kind of the rule that governs the stream; `None`: no rule
    /// claims it, and nothing of it is deleted.
    pub kind: Option<&'static str>,
    /// Files deleted (or that would be), sorted.
    pub deleted: Vec<String>,
    pub kept: usize,
}

impl ExpireReport {
    /// Objects of `kind` deleted (or that would be).
    pub fn deleted_of(&self, kind: &str) -> usize {
        self.streams
            .values()
            .filter(|s| s.kind == Some(kind))
            .map(|s| s.deleted.len())
            .sum()
    }
}

/// Deletes every archive object that its stream's rule says the
/// `remaining` snapshots no longer need (nothing in a dry run, which only
/// reports). Streams no rule claims are left alone. Objects are deleted
/// one by one; an interrupted run leaves whole objects, and a rerun
/// finishes the job.
pub async fn expire(
    repo: &Repository,
    rules: &ArchiveRules,
    remaining: &[Snapshot],
    dry_run: bool,
) -> Result<ExpireReport> {
    let mut report = ExpireReport {
        dry_run,
        ..Default::default()
    };
    for (stream, files) in list(repo).await? {
        let (kind, needed) = rules.needed(&stream, &files, remaining);
        let mut entry = StreamExpiry {
            kind,
            ..Default::default()
        };
        for file in files {
            if needed.contains(&file) {
                entry.kept += 1;
                continue;
            }
            if !dry_run {
                let name = ArchiveName::new(stream.as_str(), file.as_str())
                    .expect("listed names are archive names");
                delete(repo, &name).await?;
            }
            entry.deleted.push(file);
        }
        report.streams.insert(stream, entry);
    }
    Ok(report)
}

/// `prune`'s archive step: [`expire`] against every snapshot the
/// repository holds now.
pub(crate) async fn expire_after_prune(
    repo: &Repository,
    rules: &ArchiveRules,
    dry_run: bool,
) -> Result<ExpireReport> {
    let remaining = repo.snapshots().await?;
    expire(repo, rules, &remaining, dry_run).await
}

// ---------------------------------------------------------------------------
// Copy

/// What [`copy`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveCopyStats {
    /// Objects stored in the target (re-sealed, read back and compared).
    pub copied: u64,
    /// Objects the target already held with the same name.
    pub present: u64,
    /// Objects the target's snapshots do not need (by their rule), not
    /// copied.
    pub not_needed: u64,
    /// Plaintext bytes of the copied objects.
    pub bytes: u64,
}

/// Brings the target's archive objects up to what its snapshots need:
/// every object of the source that the target lacks and that its stream's
/// rule says the target's snapshots need (every object of an unclaimed
/// stream). Each is opened with the source's key, stored under the
/// target's with the idempotent, conflict-checked [`put`], then read back
/// and compared, so an interrupted copy leaves whole objects only and a
/// rerun copies the rest. Run it after the snapshots are copied, so the
/// rules see the copied ones.
pub async fn copy(
    source: &Repository,
    target: &Repository,
    rules: &ArchiveRules,
    progress: &dyn CopyProgress,
) -> Result<ArchiveCopyStats> {
    progress.archive_started();
    let remaining = target.snapshots().await?;
    let have = list(target).await?;
    let mut stats = ArchiveCopyStats::default();
    let mut todo = Vec::new();
    for (stream, files) in list(source).await? {
        let (_, needed) = rules.needed(&stream, &files, &remaining);
        for file in files {
            if have.get(&stream).is_some_and(|h| h.contains(&file)) {
                stats.present += 1;
            } else if !needed.contains(&file) {
                stats.not_needed += 1;
            } else {
                todo.push(
                    ArchiveName::new(stream.as_str(), file)
                        .expect("listed names are archive names"),
                );
            }
        }
    }
    let done: Vec<(PutOutcome, u64)> = futures::stream::iter(todo)
        .map(|name| async move {
            let data = get(source, &name).await?.ok_or_else(|| {
                Error::BadInput(format!(
                    "{name} vanished from the source while copying (expired by a prune \
                     there?); run the copy again"
                ))
            })?;
            let data = Arc::new(data);
            let outcome = put(target, &name, data.clone()).await?;
            match get(target, &name).await? {
                Some(back) if back == *data => {
                    progress.archive_object_copied(data.len() as u64);
                    Ok((outcome, data.len() as u64))
                }
                _ => Err(Error::BadInput(format!(
                    "{name} does not read back from the target as written"
                ))),
            }
        })
        .buffer_unordered(COPY_IN_FLIGHT)
        .try_collect()
        .await?;
    for (outcome, bytes) in done {
        match outcome {
            PutOutcome::Stored => {
                stats.copied += 1;
                stats.bytes += bytes;
            }
            PutOutcome::AlreadyPresent => stats.present += 1,
        }
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------
// Check

/// `check`'s archive step: lists the objects (a name that is not an
/// archive name is a warning) and, with `read_data`, reads every one (or
/// the same random share as of packs) and opens it: a damaged object is a
/// check error naming it. An object deleted while the check runs (a
/// concurrent expiry) is not an error.
pub(crate) async fn check(
    repo: &Repository,
    options: &CheckOptions,
    report: &mut CheckReport,
) -> Result<()> {
    let mut objects = Vec::new();
    for o in repo.storage().list(Kind::Archive).await? {
        match ArchiveName::parse(o.key.name()) {
            Some(name) => objects.push((name, o.size_bytes)),
            None => report
                .warnings
                .push(format!("stray object {} ignored", o.key)),
        }
    }
    report.archive_objects = objects.len();
    if !options.read_data {
        return Ok(());
    }
    objects.sort();
    if let Some(p) = options.read_data_subset_percent {
        let fraction = (p / 100.0).clamp(0.0, 1.0);
        let keep = ((objects.len() as f64 * fraction).ceil() as usize).min(objects.len());
        let mut rng = rand::rng();
        objects = rand::seq::IndexedRandom::choose_multiple(&objects[..], &mut rng, keep)
            .cloned()
            .collect();
    }
    let budget = tokio::sync::Semaphore::new(CHECK_BUDGET_KIB as usize);
    let results: Vec<(ArchiveName, Option<u64>, std::result::Result<(), String>)> =
        futures::stream::iter(objects)
            .map(|(name, size)| {
                let budget = &budget;
                let size_kib = size.div_ceil(1024).min(CHECK_BUDGET_KIB as u64) as u32;
                async move {
                    let _permit = budget
                        .acquire_many(size_kib)
                        .await
                        .expect("the budget semaphore is never closed");
                    let sealed = match repo.storage().get(&name.key()).await {
                        Ok(b) => b,
                        Err(e) if e.kind() == ErrorKind::NotFound => return (name, None, Ok(())),
                        Err(e) => return (name, Some(0), Err(format!("cannot be read: {e}"))),
                    };
                    let len = sealed.len() as u64;
                    let (key, n) = (repo.key().clone(), name.clone());
                    let verdict = match blocking(move || open(&key, &n, &sealed).map(drop)).await {
                        Ok(Ok(())) => Ok(()),
                        // `open`'s error names the object; the problem
                        // already does, so only the reason is kept.
                        Ok(Err(Error::Corrupt { reason, .. })) => Err(reason),
                        Ok(Err(e)) | Err(e) => Err(e.to_string()),
                    };
                    (name, Some(len), verdict)
                }
            })
            .buffer_unordered(repo.concurrency())
            .collect()
            .await;
    for (name, len, verdict) in results {
        let Some(len) = len else { continue };
        report.archive_objects_read += 1;
        report.archive_read_bytes += len;
        if let Err(message) = verdict {
            report.errors.push(CheckProblem {
                object: name.to_string(),
                message,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(stream: &str, file: &str) -> ArchiveName {
        ArchiveName::new(stream, file).unwrap()
    }

    #[test]
    fn names_round_trip_and_reject_what_storage_or_parsing_cannot_hold() {
        let n = name("00000000000012ab", "000000010000000a000000ff");
        assert_eq!(n.object_name(), "00000000000012ab-000000010000000a000000ff");
        assert_eq!(
            n.to_string(),
            "wal/00000000000012ab-000000010000000a000000ff"
        );
        assert_eq!(ArchiveName::parse(&n.object_name()), Some(n));
        // The file part may hold `-`; the stream part may not.
        let dashed = ArchiveName::parse("s-a-b").unwrap();
        assert_eq!((dashed.stream(), dashed.file()), ("s", "a-b"));
        assert_eq!(ArchiveName::new("s-x", "f"), None);
        for bad in ["", "nodash", "-file", "stream-", "Upper-f", ".s-f"] {
            assert_eq!(ArchiveName::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ArchiveName::new("s", "x".repeat(127)), None, "too long");
    }

    /// The stored format (docs/format.md, "Archive objects") is pinned
    /// byte for byte: objects written before this module existed must
    /// keep opening.
    #[test]
    fn sealed_form_is_the_documented_one() {
        let key = MasterKey::generate();
        let n = name("0000000000000001", "000000010000000000000001");
        let mut aad = b"lifeboat wal v1\0".to_vec();
        aad.extend_from_slice(b"0000000000000001-000000010000000000000001");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();

        let sealed = seal(&key, &n, &data);
        assert!(
            sealed.len() < data.len() / 10,
            "compressible data is compressed"
        );
        let payload = key.open(&sealed, &aad).expect("documented AAD opens it");
        assert_eq!(payload[0], 1);
        assert_eq!(zstd::decode_all(&payload[1..]).unwrap(), data);

        // Written by hand the documented way, flag 0 and flag 1.
        let raw = [&[0u8][..], &b"as is"[..]].concat();
        assert_eq!(open(&key, &n, &key.seal(&raw, &aad)).unwrap(), b"as is");
        let z = [&[1u8][..], &zstd::encode_all(&data[..], 3).unwrap()].concat();
        assert_eq!(open(&key, &n, &key.seal(&z, &aad)).unwrap(), data);
    }

    #[test]
    fn sealed_object_is_bound_to_its_name_and_damage_is_named() {
        let key = MasterKey::generate();
        let a = name("0000000000000001", "000000010000000000000001");
        let b = name("0000000000000001", "000000010000000000000002");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let sealed = seal(&key, &a, &data);
        assert_eq!(open(&key, &a, &sealed).unwrap(), data);
        let err = open(&key, &b, &sealed).unwrap_err();
        assert!(err.to_string().contains(&b.to_string()), "{err}");
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(matches!(open(&key, &a, &bad), Err(Error::Corrupt { .. })));
        let other_flag = key.seal(&[7, 1, 2], &aad(&a));
        assert!(open(&key, &a, &other_flag).is_err());
    }
}
