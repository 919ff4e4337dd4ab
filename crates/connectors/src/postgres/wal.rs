//! The WAL archive: WAL files as repository objects, plus the local spool
//! that makes `archive_command` and `restore_command` fast.
//!
//! # Objects
//!
//! Each archived file is one archive object (`lifeboat_repo::archive`,
//! which owns the sealing, the idempotent put-with-compare, listing,
//! deletion, copying and what `check` verifies). The stream is the
//! cluster's system identifier as 16 hex digits and the file name is
//! PostgreSQL's in lower case, so the object is
//! `wal/<system identifier>-<file name in lower case>` (object names are
//! lower case; PostgreSQL's are upper-case hex, so the mapping is exact).
//! This module owns that mapping and which names are WAL files; the
//! retention rule is in `super::retention`.
//!
//! # Durability and idempotence
//!
//! A push whose object already exists compares plaintexts: equal is
//! success (PostgreSQL retries a push whose exit status it did not see),
//! different is [`Error::WalConflict`]. A push killed at any point leaves
//! either no object or the whole object, never a prefix that `wal-fetch`
//! would serve.
//!
//! # Spool
//!
//! Opening a repository runs the password KDF (Argon2id, 64 MiB), a few
//! hundred milliseconds, once per process. PostgreSQL starts one process
//! per WAL file, so a push opens the repository once and also pushes the
//! other files waiting in `pg_wal/archive_status/*.ready`, recording each
//! stored file as a marker `pg_wal/lifeboat/pushed/<name>` holding the
//! BLAKE3 of its content. The next invocations find their marker, check the
//! hash against the file and return without opening the repository. A
//! marker is written only after the object is durable, and a marker whose
//! hash differs sends the push down the slow path (which compares with the
//! repository), so a stale or torn marker can never hide a file that is not
//! archived. Fetches read ahead the same way into `pg_wal/lifeboat/fetched`.
//!
//! # Several repositories
//!
//! A push can archive into several repositories at once (3-2-1 with an
//! off-site copy that is as current as the local one). A file counts as
//! pushed only when every repository holds it; the marker then also holds a
//! tag of the repository set, so a marker written for another set (a
//! repository added to `archive_command`) does not skip the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use lifeboat_repo::archive::{self, ArchiveName};
use lifeboat_repo::{MasterKey, Repository};

use super::walname::{is_archivable, is_segment_name};
use crate::{Error, Result};

pub use lifeboat_repo::archive::PutOutcome;

/// Name of the spool directory inside `pg_wal`. PostgreSQL ignores
/// directories in `pg_wal` other than its own, and `pg_basebackup` does not
/// copy `pg_wal`'s contents, so the spool never lands in a base backup.
pub const SPOOL_DIR: &str = "lifeboat";

/// The archive stream of a cluster: its system identifier as 16 lower-case
/// hex digits.
pub fn stream_name(system_identifier: u64) -> String {
    format!("{system_identifier:016x}")
}

/// Inverse of [`stream_name`]; `None` for another log kind's stream.
pub fn parse_stream(stream: &str) -> Option<u64> {
    let hex = stream.len() == 16
        && stream
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| u64::from_str_radix(stream, 16).ok()).flatten()
}

/// The object name of a WAL file of a cluster.
pub fn object_name(system_identifier: u64, file: &str) -> String {
    format!(
        "{}-{}",
        stream_name(system_identifier),
        file.to_ascii_lowercase()
    )
}

/// Inverse of [`object_name`]: the system identifier and PostgreSQL's file
/// name.
pub fn parse_object_name(name: &str) -> Option<(u64, String)> {
    let (sys, file) = name.split_once('-')?;
    if sys.len() != 16 {
        return None;
    }
    let sysid = u64::from_str_radix(sys, 16).ok()?;
    let mut pg = file.to_ascii_uppercase();
    for suffix in [".history", ".backup", ".partial"] {
        let upper = suffix.to_ascii_uppercase();
        if pg.ends_with(&upper) {
            pg.truncate(pg.len() - upper.len());
            pg.push_str(suffix);
        }
    }
    is_archivable(&pg).then_some((sysid, pg))
}

/// The archive name of a WAL file; an error for a name no WAL file has.
fn archive_name(system_identifier: u64, file: &str) -> Result<ArchiveName> {
    ArchiveName::new(stream_name(system_identifier), file.to_ascii_lowercase())
        .ok_or_else(|| Error::BadInput(format!("{file:?} is not a WAL file name")))
}

/// Compresses and seals a WAL file for storage under `object` (an
/// [`object_name`]): `lifeboat_repo::archive::seal`. Panics if `object`
/// is not an archive object name.
pub fn encode(key: &MasterKey, object: &str, data: &[u8]) -> Vec<u8> {
    let name = ArchiveName::parse(object).expect("an archive object name");
    archive::seal(key, &name, data)
}

/// Opens and decompresses a stored WAL file (`lifeboat_repo::archive::open`);
/// a damaged or misplaced object is an error naming it.
pub fn decode(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let name = ArchiveName::parse(object).ok_or_else(|| {
        Error::Repo(lifeboat_repo::Error::Corrupt {
            object: format!("wal/{object}"),
            reason: "not an archive object name".into(),
        })
    })?;
    Ok(archive::open(key, &name, sealed)?)
}

/// Stores one WAL file; durable when this returns `Ok`.
pub async fn put_wal(
    repo: &Repository,
    system_identifier: u64,
    file: &str,
    data: Arc<Vec<u8>>,
) -> Result<PutOutcome> {
    if !is_archivable(file) {
        return Err(Error::BadInput(format!(
            "{file:?} is not a WAL file name; archive_command must pass %p"
        )));
    }
    let name = archive_name(system_identifier, file)?;
    match archive::put(repo, &name, data).await {
        Err(lifeboat_repo::Error::ArchiveConflict { .. }) => {
            Err(Error::WalConflict { name: file.into() })
        }
        r => Ok(r?),
    }
}

/// Whether a WAL file is archived, asked of the storage alone: object
/// names are not secret, so this needs no password. A restore_command
/// answers PostgreSQL's many probes for files that do not exist (newer
/// timelines' history files, the segment past the end of the archive)
/// without paying for the password KDF.
pub async fn is_archived(
    storage: &dyn lifeboat_storage::Storage,
    system_identifier: u64,
    file: &str,
) -> Result<bool> {
    let name = archive_name(system_identifier, file)?;
    Ok(archive::exists(storage, &name).await?)
}

/// Reads one WAL file; `None` if it is not archived.
pub async fn get_wal(
    repo: &Repository,
    system_identifier: u64,
    file: &str,
) -> Result<Option<Vec<u8>>> {
    let name = archive_name(system_identifier, file)?;
    Ok(archive::get(repo, &name).await?)
}

/// Every archived WAL file, per system identifier (PostgreSQL names,
/// sorted). Objects whose names do not parse are skipped.
pub async fn list_wal(repo: &Repository) -> Result<BTreeMap<u64, BTreeSet<String>>> {
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (stream, files) in archive::list(repo).await? {
        for f in files {
            if let Some((sys, file)) = parse_object_name(&format!("{stream}-{f}")) {
                out.entry(sys).or_default().insert(file);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// archive_command

/// The paths a push or fetch works with, derived from PostgreSQL's `%p`
/// (which is relative to the data directory, its working directory).
#[derive(Debug, Clone)]
pub struct WalPaths {
    pub pg_wal: PathBuf,
    pub pgdata: PathBuf,
}

impl WalPaths {
    pub fn from_percent_p(p: &Path) -> Self {
        let pg_wal = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let pgdata = match pg_wal.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        WalPaths { pg_wal, pgdata }
    }

    fn pushed_dir(&self) -> PathBuf {
        self.pg_wal.join(SPOOL_DIR).join("pushed")
    }

    /// Intent markers of pushes by write-only keys ([`push`]).
    fn pushing_dir(&self) -> PathBuf {
        self.pg_wal.join(SPOOL_DIR).join("pushing")
    }

    fn fetched_dir(&self) -> PathBuf {
        self.pg_wal.join(SPOOL_DIR).join("fetched")
    }
}

/// What the local marker says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Archived earlier with exactly this content.
    Matches,
    /// No marker (or one for other content): ask the repository.
    Unknown,
}

/// The tag of a set of repositories in push markers: empty for one
/// repository (markers then hold the content hash alone), else a hash of
/// their locations as given, in order.
pub fn repository_set_tag(locations: &[String]) -> String {
    if locations.len() <= 1 {
        return String::new();
    }
    let mut h = blake3::Hasher::new();
    for l in locations {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex()[..16].to_string()
}

fn marker_text(data: &[u8], set_tag: &str) -> String {
    let hash = blake3::hash(data).to_hex();
    if set_tag.is_empty() {
        hash.to_string()
    } else {
        format!("{hash} {set_tag}")
    }
}

/// Checks the push marker of `file` against its content and the
/// repository set (see [`repository_set_tag`]).
pub fn marker(paths: &WalPaths, file: &str, data: &[u8], set_tag: &str) -> Marker {
    match std::fs::read_to_string(paths.pushed_dir().join(file)) {
        Ok(s) if s.trim() == marker_text(data, set_tag) => Marker::Matches,
        _ => Marker::Unknown,
    }
}

fn write_marker(paths: &WalPaths, file: &str, data: &[u8], set_tag: &str) -> std::io::Result<()> {
    let dir = paths.pushed_dir();
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".tmp-{file}"));
    std::fs::write(&tmp, marker_text(data, set_tag).as_bytes())?;
    std::fs::rename(&tmp, dir.join(file))
}

/// Whether an earlier push of `file` with a write-only key left an intent
/// marker for exactly this content: that attempt may have stored it.
fn intent_matches(paths: &WalPaths, file: &str, data: &[u8]) -> bool {
    std::fs::read_to_string(paths.pushing_dir().join(file))
        .is_ok_and(|s| s.trim() == marker_text(data, ""))
}

/// Records, before the upload, that this host is about to store `data`
/// as `file` (synced, so a crash after the upload cannot lose it).
fn write_intent(paths: &WalPaths, file: &str, data: &[u8]) -> std::io::Result<()> {
    let dir = paths.pushing_dir();
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".tmp-{file}"));
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, marker_text(data, "").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(file))?;
    std::fs::File::open(&dir)?.sync_all()
}

fn remove_intent(paths: &WalPaths, file: &str) {
    let _ = std::fs::remove_file(paths.pushing_dir().join(file));
}

/// Options of [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Most files pushed by one invocation (the asked one included).
    pub batch: usize,
    /// Files compressed and uploaded at once.
    pub parallel: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        // 32 segments is 512 MiB of WAL per repository open: at a few
        // hundred ms per open, archiving keeps up with far more WAL than a
        // 2-core machine writes; 4 in parallel fills 2 cores with zstd.
        PushOptions {
            batch: 32,
            parallel: 4,
        }
    }
}

/// What one push invocation did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub stored: Vec<String>,
    pub already_present: Vec<String>,
    /// Other ready files that could not be pushed now (they are retried
    /// when PostgreSQL asks for them).
    pub deferred: Vec<(String, String)>,
}

/// The asked file could not be archived: into `repos[i]` for
/// `repository: Some(i)`, or for a local reason (`None`).
#[derive(Debug)]
pub struct PushFailure {
    pub repository: Option<usize>,
    pub error: Error,
}

/// Pushes the file at `path` (PostgreSQL's `%p`) and up to
/// `options.batch - 1` other files waiting in `archive_status` into every
/// repository of `repos`. Succeeds only if `path` itself is durably
/// archived in all of them; `set_tag` is [`repository_set_tag`] of their
/// locations.
///
/// A write-only key cannot read a stored file back to compare it with
/// the one being pushed (docs/security.md §12). So before uploading with
/// one, the push writes an *intent marker* (the content's hash) in
/// `pg_wal/lifeboat/pushing/`; a later push that finds the file already
/// stored calls it archived only if an intent for the same content was
/// there before it started (an earlier attempt of this host, killed
/// after its upload and before its push marker). A stored file without
/// such an intent is refused ([`lifeboat_repo::Error::ArchiveUnverifiable`])
/// and the intent is removed, so PostgreSQL's retries keep refusing it
/// until someone with a full key compares it. An upload that returns an
/// error removes the intent it wrote too, unless another repository of the
/// push stored the file (the retry must accept that copy): an upload that
/// failed vouches for nothing this host knows it stored.
pub async fn push(
    repos: &[Arc<Repository>],
    set_tag: &str,
    system_identifier: u64,
    path: &Path,
    options: &PushOptions,
) -> std::result::Result<PushReport, PushFailure> {
    let failure = |error| PushFailure {
        repository: None,
        error,
    };
    let paths = WalPaths::from_percent_p(path);
    let file = file_name(path).map_err(failure)?;
    let mut names = vec![file.clone()];
    if let Ok(rd) = std::fs::read_dir(paths.pg_wal.join("archive_status")) {
        let mut ready: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
                (n != file && is_archivable(&n)).then_some(n)
            })
            .collect();
        ready.sort();
        names.extend(ready.into_iter().take(options.batch.saturating_sub(1)));
    }
    type Pushed = std::result::Result<PutOutcome, PushFailure>;
    let results: Vec<(String, Pushed)> = futures::stream::iter(names)
        .map(|name| {
            let paths = paths.clone();
            async move {
                let p = paths.pg_wal.join(&name);
                let r = async {
                    let data = Arc::new(
                        tokio::fs::read(&p)
                            .await
                            .map_err(|e| failure(Error::io(&p, e)))?,
                    );
                    if marker(&paths, &name, &data, set_tag) == Marker::Matches {
                        return Ok(PutOutcome::AlreadyPresent);
                    }
                    let write_only = repos.iter().any(|r| r.is_write_only());
                    let earlier_attempt = write_only && intent_matches(&paths, &name, &data);
                    if write_only && !earlier_attempt {
                        write_intent(&paths, &name, &data)
                            .map_err(|e| failure(Error::io(paths.pushing_dir(), e)))?;
                    }
                    // Into every repository at once (an off-site one is
                    // slower; the others do not wait for it in turn).
                    let outcomes = futures::future::join_all(
                        repos
                            .iter()
                            .map(|repo| put_wal(repo, system_identifier, &name, data.clone())),
                    )
                    .await;
                    // An intent written by this attempt is removed when
                    // the attempt fails and no repository said it stored
                    // the file: the intent then vouches for nothing this
                    // host knows it uploaded, and a file of that name
                    // found by a retry is someone else's until a full key
                    // compares it. One that a repository did store stays,
                    // so the retry accepts that copy.
                    let stored_somewhere =
                        outcomes.iter().any(|o| matches!(o, Ok(PutOutcome::Stored)));
                    let mut out = PutOutcome::AlreadyPresent;
                    for (repository, o) in outcomes.into_iter().enumerate() {
                        match o {
                            Ok(PutOutcome::Stored) => out = PutOutcome::Stored,
                            Ok(PutOutcome::AlreadyPresent) => {}
                            // Stored by this host's earlier attempt.
                            Err(Error::Repo(lifeboat_repo::Error::ArchiveUnverifiable {
                                ..
                            })) if earlier_attempt => {}
                            Err(error) => {
                                let foreign = matches!(
                                    error,
                                    Error::Repo(lifeboat_repo::Error::ArchiveUnverifiable { .. })
                                );
                                if write_only && (foreign || !(earlier_attempt || stored_somewhere))
                                {
                                    remove_intent(&paths, &name);
                                }
                                return Err(PushFailure {
                                    repository: Some(repository),
                                    error,
                                });
                            }
                        }
                    }
                    // Durable in every repository: now the marker may say so.
                    if let Err(e) = write_marker(&paths, &name, &data, set_tag) {
                        tracing::warn!("cannot write push marker for {name}: {e}");
                    }
                    if write_only {
                        remove_intent(&paths, &name);
                    }
                    Ok(out)
                }
                .await;
                (name, r)
            }
        })
        .buffer_unordered(options.parallel.max(1))
        .collect()
        .await;
    let mut report = PushReport::default();
    let mut own = None;
    for (name, r) in results {
        match r {
            Ok(PutOutcome::Stored) => report.stored.push(name.clone()),
            Ok(PutOutcome::AlreadyPresent) => report.already_present.push(name.clone()),
            Err(f) if name != file => report.deferred.push((name.clone(), f.error.to_string())),
            Err(f) => own = Some(f),
        }
    }
    if let Some(f) = own {
        return Err(f);
    }
    clean_markers(&paths);
    report.stored.sort();
    report.already_present.sort();
    Ok(report)
}

/// Removes markers (push and intent) of files PostgreSQL has removed or
/// recycled.
fn clean_markers(paths: &WalPaths) {
    for dir in [paths.pushed_dir(), paths.pushing_dir()] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if n.starts_with(".tmp-") || !paths.pg_wal.join(n).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn file_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput(format!("{} has no file name", path.display())))?;
    if !is_archivable(name) {
        return Err(Error::BadInput(format!(
            "{name:?} is not a WAL file name; use archive_command = 'lifeboat pg wal-push %p'"
        )));
    }
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------
// restore_command

/// Serves `file` from the read-ahead spool if it is there: moves it to
/// `dest` (PostgreSQL's `%p`). Needs no repository.
pub fn fetch_from_spool(file: &str, dest: &Path) -> Result<bool> {
    let paths = WalPaths::from_percent_p(dest);
    let spooled = paths.fetched_dir().join(file);
    match std::fs::rename(&spooled, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(&spooled, e)),
    }
}

/// Fetches `file` into `dest`, and up to `read_ahead` archived segments
/// after it (same timeline) into the spool for the next calls. Returns
/// `false` if `file` is not archived (PostgreSQL then ends or waits).
pub async fn fetch(
    repo: Arc<Repository>,
    system_identifier: u64,
    file: &str,
    dest: &Path,
    read_ahead: usize,
) -> Result<bool> {
    let paths = WalPaths::from_percent_p(dest);
    let mut next = Vec::new();
    if is_segment_name(file) && read_ahead > 0 {
        let all = list_wal(&repo).await?;
        let have = all.get(&system_identifier).cloned().unwrap_or_default();
        if !have.contains(file) {
            return Ok(false);
        }
        next = segments_from(&have, Bound::Excluded(file), read_ahead)
            .filter(|n| !paths.fetched_dir().join(n).exists())
            .collect();
    }
    clean_spool(&paths, file);
    let wanted = std::iter::once((file.to_string(), dest.to_path_buf())).chain(
        next.into_iter()
            .map(|n| (n.clone(), paths.fetched_dir().join(n))),
    );
    let results = fetch_into(&repo, system_identifier, wanted).await;
    let mut found = false;
    for (name, r) in results {
        if name == file {
            found = r?;
        } else if let Err(e) = r {
            tracing::warn!("read-ahead of {name} failed: {e}");
        }
    }
    Ok(found)
}

/// Fills the read-ahead spool of the data directory whose `pg_wal` is
/// given with up to `count` archived segments from `first` on (same
/// timeline), so the restored server's first restore_command calls are
/// served without opening the repository. Returns how many were spooled.
pub async fn prefetch(
    repo: Arc<Repository>,
    system_identifier: u64,
    pg_wal: &Path,
    first: &str,
    count: usize,
) -> Result<usize> {
    let all = list_wal(&repo).await?;
    let have = all.get(&system_identifier).cloned().unwrap_or_default();
    let spool = WalPaths {
        pg_wal: pg_wal.to_path_buf(),
        pgdata: pg_wal.parent().unwrap_or(Path::new(".")).to_path_buf(),
    }
    .fetched_dir();
    let wanted: Vec<(String, PathBuf)> = segments_from(&have, Bound::Included(first), count)
        .map(|n| (n.clone(), spool.join(n)))
        .collect();
    let mut n = 0;
    for (_, r) in fetch_into(&repo, system_identifier, wanted).await {
        n += r? as usize;
    }
    Ok(n)
}

/// Creates the fetch spool under `pg_wal` (and `pg_wal` itself, mode 0700
/// as PostgreSQL wants its directories) before a restore fills it.
pub fn make_spool(pg_wal: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let spool = WalPaths {
        pg_wal: pg_wal.to_path_buf(),
        pgdata: pg_wal.parent().unwrap_or(Path::new(".")).to_path_buf(),
    }
    .fetched_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spool)
        .map_err(|e| Error::io(&spool, e))
}

/// Up to `count` archived segments from `from` on, on `from`'s timeline.
fn segments_from<'a>(
    have: &'a BTreeSet<String>,
    from: Bound<&'a str>,
    count: usize,
) -> impl Iterator<Item = String> + 'a {
    let timeline = match from {
        Bound::Included(n) | Bound::Excluded(n) => n.get(..8).unwrap_or(n),
        Bound::Unbounded => "",
    };
    have.range::<str, _>((from, Bound::Unbounded))
        .filter(move |n| is_segment_name(n) && n.starts_with(timeline))
        .take(count)
        .cloned()
}

/// Fetches each named WAL file into its path (through a temporary name),
/// four at a time; per file, whether it was archived.
async fn fetch_into(
    repo: &Arc<Repository>,
    system_identifier: u64,
    wanted: impl IntoIterator<Item = (String, PathBuf)>,
) -> Vec<(String, Result<bool>)> {
    futures::stream::iter(wanted)
        .map(|(name, target)| {
            let repo = repo.clone();
            async move {
                let r = async {
                    let Some(data) = get_wal(&repo, system_identifier, &name).await? else {
                        return Ok(false);
                    };
                    // Off the async workers: 16 MiB per segment.
                    tokio::task::spawn_blocking(move || write_atomically(&target, &data))
                        .await
                        .map_err(|e| Error::Internal(format!("WAL write task failed: {e}")))??;
                    Ok(true)
                }
                .await;
                (name, r)
            }
        })
        .buffered(4)
        .collect()
        .await
}

/// Removes spooled files recovery has gone past.
fn clean_spool(paths: &WalPaths, current: &str) {
    let Ok(rd) = std::fs::read_dir(paths.fetched_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.starts_with(".tmp-") || n <= current {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes through a temporary file and a rename, so PostgreSQL (or the
/// spool) never sees a partial file.
fn write_atomically(target: &Path, data: &[u8]) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!(".tmp-{name}"));
    std::fs::write(&tmp, data).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        for f in [
            "000000010000000A000000FF",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000020000000000000005.partial",
        ] {
            let o = object_name(0x1234, f);
            assert!(ArchiveName::parse(&o).is_some(), "{o}");
            assert_eq!(parse_object_name(&o), Some((0x1234, f.to_string())));
        }
        assert_eq!(parse_object_name("0000000000001234-notwal"), None);
    }

    #[test]
    fn sealed_wal_is_bound_to_its_name() {
        let key = MasterKey::generate();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let a = object_name(1, "000000010000000000000001");
        let b = object_name(1, "000000010000000000000002");
        let sealed = encode(&key, &a, &data);
        assert!(
            sealed.len() < data.len() / 10,
            "compressible data is compressed"
        );
        assert_eq!(decode(&key, &a, &sealed).unwrap(), data);
        assert!(decode(&key, &b, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(decode(&key, &a, &bad).is_err());
    }
}
