//! OpenDAL-backed remote storage: S3-compatible object storage and SFTP.
//!
//! This module owns [`OpendalStorage`], one [`Storage`] implementation over an
//! [`opendal::Operator`], plus the inputs that build one ([`S3Options`],
//! [`SftpOptions`], [`KnownHosts`]). OpenDAL does the protocol work (signing,
//! multipart, SSH sessions); this module adds what the [`Storage`] contract
//! needs on top: no silent overwrites, exact ranges, error classification and
//! listing in the repository layout. Retries are not done here; wrap the
//! storage in [`crate::RetryStorage`] (as [`crate::open_location`] does).
//!
//! How `put` avoids overwrites depends on what the server really does, which
//! is probed when the storage is opened (OpenDAL claims support for
//! conditional writes on every S3 endpoint, but some servers ignore them).
//! An S3 probe's result is remembered for a week per endpoint, bucket and
//! prefix in [`S3Options::probe_memo_dir`]; an open that finds it there
//! makes one request (a stat) to prove the bucket answers instead of the
//! probe's 20–54:
//!
//! - **S3**: `PutObject` with `If-None-Match: *`. The probe first writes one
//!   object twice: a server that accepts the second write ignores the header,
//!   and `put` falls back to stat-then-write. It then races a few writers for
//!   fresh names: a server that lets more than one win checks the condition
//!   before writing instead of atomically (s3s-fs does this), and `put` keeps
//!   the header but reports [`Capabilities::atomic_create`] as false. A probe
//!   can catch a racy server, never prove an atomic one; AWS S3 documents
//!   conditional writes as atomic.
//! - **SFTP**: the object is written under a temporary name (`.tmp-…`, which
//!   listings ignore) in its final directory and then renamed into place, so a
//!   reader never sees a partial object. Whether rename refuses to replace an
//!   existing name is server-specific: OpenSSH's server advertises the
//!   `posix-rename` extension, which OpenDAL's client uses and which replaces.
//!   The probe detects this; when rename replaces, `put` checks that the name
//!   is free just before renaming, so two writers racing on the same key can
//!   both succeed and the last rename wins (`atomic_create` is then false).
//!   Repository objects are named by their content hash, so such a race
//!   replaces an object with identical bytes. SFTP has no portable fsync: an
//!   acknowledged `put` is as durable as the server's page cache.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use opendal::layers::TimeoutLayer;
use opendal::{ErrorKind as OdErrorKind, Operator};

use crate::objectlock::S3LockApi;
use crate::{
    BoundedGet, BucketLock, Capabilities, DefaultRetention, Error, ErrorKind, Kind, ObjectInfo,
    ObjectKey, ObjectVersion, Result, Retention, Storage, VersionedStorage,
};

/// Region used when neither the options nor `AWS_REGION` name one. AWS itself
/// needs the bucket's real region, but S3-compatible servers (MinIO, Garage,
/// s3s, Ceph) accept any, and this is the one they document.
const DEFAULT_S3_REGION: &str = "us-east-1";

/// Requests worth running at once against S3: object stores scale out per
/// request, so the limit is our own memory and sockets, not the server.
const S3_MAX_CONNECTIONS: usize = 16;

/// Writers racing for one probe name, and rounds of that race, when probing
/// whether an S3 server's conditional writes are atomic. A racy server let
/// two to eight of eight writers through per round in our tests; three
/// rounds make missing it unlikely, at ~50 small requests (a few round trips)
/// per open.
const PROBE_RACERS: usize = 8;
const PROBE_ROUNDS: usize = 3;

/// Probe bodies are big enough that a check-then-write server spends time
/// between its check and its write, small enough to be cheap on slow links.
const PROBE_RACE_BYTES: usize = 16 * 1024;

/// Requests worth running at once over SFTP: every connection is an `ssh`
/// process and a server-side session, and OpenSSH's default `MaxStartups`
/// (10) starts refusing new sessions beyond a handful.
const SFTP_MAX_CONNECTIONS: usize = 4;

/// Deadline for requests that move no body (stat, list, delete, rename). A
/// healthy server answers in milliseconds; a minute covers a congested link
/// while still turning a hung connection into a retryable error.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for each chunk of a body read or written. Large objects are fine
/// (the clock restarts per chunk); a stalled transfer is not.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an S3-compatible repository lives and how to sign requests to it.
///
/// Fields left `None` are taken from the environment when the storage is
/// opened (see [`S3Options::with_env_defaults`]). Secrets never appear in
/// `Debug` output or in [`Storage::location`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// `http(s)://host:port` of an S3-compatible server; `None` means AWS
    /// (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix inside the bucket under which the repository lives, without
    /// leading or trailing `/`; empty for the bucket root.
    pub root: String,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// S3 storage class for every object written (`x-amz-storage-class`),
    /// e.g. `STANDARD_IA`, `GLACIER_IR`, `GLACIER`, `DEEP_ARCHIVE`; `None`
    /// leaves the bucket's default. Meant for a repository's cold tier.
    /// Objects in `GLACIER`/`DEEP_ARCHIVE` cannot be read until restored
    /// with the provider's tools: OpenDAL (and so lifeboat) issues plain
    /// GETs, never a restore request.
    pub storage_class: Option<String>,
    /// Directory where the result of the conditional-write probe is kept
    /// per endpoint, bucket and prefix, so that opening the same bucket
    /// again within [`PROBE_MEMO_MAX_AGE`] costs one request instead of the
    /// probe's 20–54; `None` probes on every open. Filled from the
    /// environment by [`S3Options::with_env_defaults`].
    pub probe_memo_dir: Option<PathBuf>,
    /// Open the bucket read-only as it was at this time: every object
    /// reads as its newest version written at or before it (see
    /// [`crate::AsOfStorage`]); for recovery after an attacker deleted or
    /// overwrote objects in a versioned (object-lock) bucket.
    pub as_of: Option<jiff::Timestamp>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("storage_class", &self.storage_class)
            .field("probe_memo_dir", &self.probe_memo_dir)
            .field("as_of", &self.as_of)
            .finish()
    }
}

impl S3Options {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            ..Self::default()
        }
    }

    /// Fills every unset field from `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`;
    /// explicit values win. The session token is only taken from the
    /// environment together with keys taken from the environment, since a
    /// token belongs to one key pair.
    pub fn with_env_defaults(self) -> Self {
        self.with_defaults_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`S3Options::with_env_defaults`] with an explicit variable lookup.
    /// The probe memo directory (if unset) is `LIFEBOAT_CACHE_DIR`, else
    /// `lifeboat` in `XDG_CACHE_HOME`, else `~/.cache/lifeboat`.
    pub fn with_defaults_from(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        if self.probe_memo_dir.is_none() {
            self.probe_memo_dir = crate::cachedir::cache_root_from(&var);
        }
        if self.endpoint.is_none() {
            self.endpoint = var("AWS_ENDPOINT_URL");
        }
        if self.region.is_none() {
            self.region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION"));
        }
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = var("AWS_ACCESS_KEY_ID");
            self.secret_access_key = var("AWS_SECRET_ACCESS_KEY");
            if self.session_token.is_none() {
                self.session_token = var("AWS_SESSION_TOKEN");
            }
        }
        self
    }

    fn display(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.root.is_empty() {
            s.push('/');
            s.push_str(&self.root);
        }
        if let Some(endpoint) = &self.endpoint {
            s.push_str(&format!(" at {endpoint}"));
        }
        if let Some(class) = &self.storage_class {
            s.push_str(&format!(" (storage class {class})"));
        }
        s
    }
}

/// How to treat the server's SSH host key (OpenSSH's `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KnownHosts {
    /// The host must already be in `~/.ssh/known_hosts`.
    Strict,
    /// Trust a host seen for the first time and remember it; refuse a changed
    /// key. The default: it works on first use without trusting an impostor
    /// later.
    #[default]
    Add,
    /// Accept any host key (test servers whose keys change every run).
    Accept,
}

impl KnownHosts {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "strict" => Some(Self::Strict),
            "add" => Some(Self::Add),
            "accept" => Some(Self::Accept),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Add => "add",
            Self::Accept => "accept",
        }
    }
}

/// Where an SFTP repository lives. Authentication is by key only (the system
/// `ssh` client runs non-interactively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SftpOptions {
    /// Login name; `None` lets `ssh` decide (its config, then the local user).
    pub user: Option<String>,
    pub host: String,
    /// `None` means 22 or whatever `~/.ssh/config` says.
    pub port: Option<u16>,
    /// Absolute path of the repository directory on the server (created if
    /// missing). OpenDAL resolves every root from `/`, so a path relative to
    /// the login directory cannot be expressed.
    pub root: String,
    /// Private key file; `None` uses the agent and `ssh`'s defaults.
    pub key_file: Option<PathBuf>,
    pub known_hosts: KnownHosts,
}

impl SftpOptions {
    pub(crate) fn endpoint(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut s = String::from("ssh://");
        if let Some(user) = &self.user {
            s.push_str(user);
            s.push('@');
        }
        s.push_str(&host);
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s
    }

    pub(crate) fn display(&self) -> String {
        let mut s = self.endpoint().replacen("ssh://", "sftp://", 1);
        if !self.root.starts_with('/') {
            s.push('/');
        }
        s.push_str(&self.root);
        s
    }
}

/// How long a remembered probe result is trusted. A server's handling of
/// conditional writes changes only when the server software behind the
/// endpoint changes; a week bounds how long a stale answer can last, and a
/// stale answer costs little: every object lifeboat writes is named by its
/// content or by a random id, so a put that wrongly gets through writes the
/// same bytes or a name nobody else uses.
pub const PROBE_MEMO_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A remembered probe result for one endpoint, bucket and prefix: a small
/// text file in the probe memo directory. The file names its bucket in full
/// (its name is only a hash of that); a file that does not parse, names
/// another bucket, or is older than [`PROBE_MEMO_MAX_AGE`] is ignored and
/// the server is probed again.
#[derive(Debug, Clone)]
struct ProbeMemo {
    path: PathBuf,
    identity: String,
}

impl S3Options {
    fn probe_memo(&self) -> Option<ProbeMemo> {
        let dir = self.probe_memo_dir.as_ref()?;
        let identity = format!(
            "{} {} {}",
            self.endpoint.as_deref().unwrap_or("aws"),
            self.bucket,
            self.root.trim_matches('/')
        );
        // FNV-1a: a stable file name, not a security boundary (the file
        // holds the identity in full and is checked against it).
        let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Some(ProbeMemo {
            path: dir.join(format!("s3-probe-{hash:016x}")),
            identity,
        })
    }
}

const PROBE_MEMO_HEADER: &str = "lifeboat s3 conditional-write probe v1";

impl ProbeMemo {
    fn load(&self) -> Option<S3Probe> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut lines = text.lines();
        if lines.next()? != PROBE_MEMO_HEADER || lines.next()? != self.identity {
            return None;
        }
        let probe = S3Probe::parse(lines.next()?)?;
        let probed_at: u64 = lines.next()?.parse().ok()?;
        let age = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs()
            .checked_sub(probed_at)?;
        (age < PROBE_MEMO_MAX_AGE.as_secs()).then_some(probe)
    }

    /// Best effort: a memo that cannot be written only costs the next open
    /// a probe. Written under a temporary name and renamed, so a reader
    /// never sees half a file.
    fn store(&self, probe: S3Probe) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = format!(
            "{PROBE_MEMO_HEADER}\n{}\n{}\n{now}\n",
            self.identity,
            probe.as_str()
        );
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
        let dir = self.path.parent().unwrap_or(&self.path);
        let result = crate::cachedir::create_cache_dir(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(path = %self.path.display(), error = %e, "probe memo not written");
        }
    }
}

/// What an S3 server does with `If-None-Match: *`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S3Probe {
    /// Refuses existing objects, also under concurrent writers.
    Atomic,
    /// Refuses existing objects, but racing writers can all get through.
    Racy,
    /// Overwrites anyway.
    Ignored,
}

impl S3Probe {
    fn as_str(self) -> &'static str {
        match self {
            S3Probe::Atomic => "atomic",
            S3Probe::Racy => "racy",
            S3Probe::Ignored => "ignored",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [S3Probe::Atomic, S3Probe::Racy, S3Probe::Ignored]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    S3,
    Sftp,
}

/// A [`Storage`] over an OpenDAL operator (S3-compatible or SFTP); see the
/// module documentation for how each protocol keeps `put` from overwriting.
#[derive(Clone)]
pub struct OpendalStorage {
    op: Operator,
    protocol: Protocol,
    location: String,
    /// S3 only: the server refuses `If-None-Match: *` writes over existing
    /// objects (at least when they do not race).
    conditional_write: bool,
    /// Result of the probe at open: the server itself refuses to replace an
    /// existing object, atomically (conditional write for S3, rename for
    /// SFTP).
    atomic_create: bool,
    /// SFTP only: sets the modes of what `put` creates.
    sftp_modes: Option<std::sync::Arc<crate::sftpmode::SftpModes>>,
    /// S3 only: what object-lock buckets need beyond the plain operator.
    s3: Option<Arc<S3Extra>>,
}

/// The parts of an S3 storage that object-lock buckets need.
struct S3Extra {
    /// The same bucket, sending Content-MD5 with every write.
    md5_op: Operator,
    /// Set once the bucket refused a write without an integrity header.
    content_md5: AtomicBool,
    lock_api: S3LockApi,
}

impl fmt::Debug for OpendalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpendalStorage")
            .field("location", &self.location)
            .field("atomic_create", &self.atomic_create)
            .finish_non_exhaustive()
    }
}

impl OpendalStorage {
    /// Opens an S3-compatible bucket (unset options come from the
    /// environment) and probes whether it enforces conditional writes. The
    /// probe writes and deletes one object under `locks/` with a name that
    /// listings ignore, so it needs write access; with read-only credentials
    /// the storage still opens, reporting `atomic_create: false`.
    pub async fn s3(options: S3Options) -> Result<Self> {
        let options = options.with_env_defaults();
        if options.bucket.is_empty() {
            return Err(Error::new(ErrorKind::Config, "S3 bucket name is empty"));
        }
        let region = options.region.as_deref().unwrap_or(DEFAULT_S3_REGION);
        let location = options.display();
        let operator = |content_md5: bool| {
            let mut builder = opendal::services::S3::default()
                .bucket(&options.bucket)
                .root(&format!("/{}", options.root.trim_matches('/')))
                .region(region);
            if let Some(endpoint) = &options.endpoint {
                builder = builder
                    .endpoint(endpoint.trim_end_matches('/'))
                    // Instance metadata only exists on AWS; asking for it
                    // elsewhere costs a timeout before every credential lookup.
                    .disable_ec2_metadata();
            }
            if let (Some(id), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
                builder = builder.access_key_id(id).secret_access_key(secret);
                if let Some(token) = &options.session_token {
                    builder = builder.session_token(token);
                }
            }
            if let Some(class) = &options.storage_class {
                builder = builder.default_storage_class(class);
            }
            if content_md5 {
                builder = builder.checksum_algorithm("md5");
            }
            Operator::new(builder).map_err(|e| map_err(e, format!("configuring {location}"), None))
        };
        let op = operator(false)?;
        let md5_op = Self::with_timeouts(operator(true)?);
        let mut storage = Self::from_operator(op, Protocol::S3, location.clone());
        storage.s3 = Some(Arc::new(S3Extra {
            md5_op,
            content_md5: AtomicBool::new(false),
            lock_api: S3LockApi::new(&options, region, location)?,
        }));
        let memo = options.probe_memo();
        let probe = match memo.as_ref().and_then(ProbeMemo::load) {
            Some(known) => {
                // The memo says what the server does; one request still
                // proves the bucket is reachable with these credentials.
                storage.check_reachable().await?;
                known
            }
            None => {
                let (probe, measured) = storage.probe_conditional_write().await?;
                if let (Some(memo), true) = (&memo, measured) {
                    memo.store(probe);
                }
                probe
            }
        };
        storage.conditional_write = probe != S3Probe::Ignored;
        storage.atomic_create = probe == S3Probe::Atomic;
        Ok(storage)
    }

    /// Opens a directory over SFTP (creating it if needed) and probes whether
    /// the server's rename refuses to replace an existing file.
    pub async fn sftp(options: SftpOptions) -> Result<Self> {
        if options.host.is_empty() {
            return Err(Error::new(ErrorKind::Config, "SFTP host is empty"));
        }
        if !options.root.starts_with('/') {
            return Err(Error::new(
                ErrorKind::Config,
                format!("SFTP path {:?} must be absolute", options.root),
            ));
        }
        let mut builder = opendal::services::Sftp::default()
            .endpoint(&options.endpoint())
            .root(&options.root)
            .known_hosts_strategy(options.known_hosts.as_str());
        if let Some(user) = &options.user {
            builder = builder.user(user);
        }
        if let Some(key) = &options.key_file {
            let key = key.to_str().ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("key file {} is not UTF-8", key.display()),
                )
            })?;
            builder = builder.key(key);
        }
        let location = options.display();
        let op = Operator::new(builder)
            .map_err(|e| map_err(e, format!("configuring {location}"), None))?;
        let mut storage = Self::from_operator(op, Protocol::Sftp, location);
        storage.atomic_create = storage.probe_exclusive_rename().await?;
        storage.sftp_modes = Some(std::sync::Arc::new(crate::sftpmode::SftpModes::new(
            options,
        )));
        Ok(storage)
    }

    fn with_timeouts(op: Operator) -> Operator {
        op.layer(
            TimeoutLayer::new()
                .with_timeout(OP_TIMEOUT)
                .with_io_timeout(IO_TIMEOUT),
        )
    }

    fn from_operator(op: Operator, protocol: Protocol, location: String) -> Self {
        Self {
            op: Self::with_timeouts(op),
            protocol,
            location,
            conditional_write: false,
            atomic_create: false,
            sftp_modes: None,
            s3: None,
        }
    }

    /// Writes one S3 object. A bucket with a default Object Lock retention
    /// refuses PUTs without an integrity header ("Content-MD5 or
    /// x-amz-checksum required", AWS S3 API reference, PutObject); the
    /// first such refusal switches this storage to sending Content-MD5
    /// (OpenDAL's `md5` checksum option) for the rest of its life, so
    /// buckets without a lock never pay for the digest.
    async fn write_s3(
        &self,
        path: &str,
        data: Bytes,
        if_not_exists: bool,
    ) -> opendal::Result<opendal::Metadata> {
        let extra = self.s3.as_ref().expect("S3 storage");
        if !extra.content_md5.load(Ordering::Relaxed) {
            match self
                .op
                .write_with(path, data.clone())
                .if_not_exists(if_not_exists)
                .await
            {
                Err(e) if needs_content_md5(&e) => {
                    tracing::debug!(location = %self.location, "bucket wants Content-MD5 (object lock)");
                    extra.content_md5.store(true, Ordering::Relaxed);
                }
                result => return result,
            }
        }
        extra
            .md5_op
            .write_with(path, data)
            .if_not_exists(if_not_exists)
            .await
    }

    /// One request that fails unless the bucket answers to these
    /// credentials: a stat of a name that does not exist.
    async fn check_reachable(&self) -> Result<()> {
        match self.op.stat(&probe_path()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == OdErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.open_error(e)),
        }
    }

    /// Finds out what the server does with `If-None-Match: *` (see the module
    /// documentation), and whether that was measured (false when the
    /// credentials cannot write, so nothing was learnt about the server).
    async fn probe_conditional_write(&self) -> Result<(S3Probe, bool)> {
        let path = probe_path();
        let write =
            |path: String, data: Bytes| async move { self.write_s3(&path, data, true).await };
        if let Err(e) = write(path.clone(), probe_bytes()).await {
            self.probe_failed(e, &path).await?;
            return Ok((S3Probe::Ignored, false));
        }
        self.race_conditional_writes(path, write)
            .await
            .map(|p| (p, true))
    }

    async fn race_conditional_writes<W, F>(&self, path: String, write: W) -> Result<S3Probe>
    where
        W: Fn(String, Bytes) -> F,
        F: std::future::Future<Output = opendal::Result<opendal::Metadata>>,
    {
        let second = write(path.clone(), probe_bytes()).await;
        let cleanup = self.op.delete(&path).await;
        match second {
            Err(e) if is_exists(&e) => {}
            Ok(_) => {
                cleanup.map_err(|e| self.open_error(e))?;
                tracing::warn!(
                    location = %self.location,
                    "server ignores conditional writes; falling back to stat-then-write"
                );
                return Ok(S3Probe::Ignored);
            }
            Err(e) => return Err(self.open_error(e)),
        }
        cleanup.map_err(|e| self.open_error(e))?;

        let body = Bytes::from(vec![0x5a; PROBE_RACE_BYTES]);
        for _ in 0..PROBE_ROUNDS {
            let path = probe_path();
            // Open one connection per racer first: writers that each wait
            // for a new connection arrive too staggered to race at all.
            for result in
                futures::future::join_all((0..PROBE_RACERS).map(|_| self.op.stat(&path))).await
            {
                match result {
                    Err(e) if e.kind() != OdErrorKind::NotFound => {
                        return Err(self.open_error(e));
                    }
                    _ => {}
                }
            }
            let results = futures::future::join_all(
                (0..PROBE_RACERS).map(|_| write(path.clone(), body.clone())),
            )
            .await;
            let cleanup = self.op.delete(&path).await;
            let mut winners = 0;
            for result in results {
                match result {
                    Ok(_) => winners += 1,
                    Err(e) if is_exists(&e) => {}
                    // Conflict replies are how an atomic server may turn
                    // away concurrent conditional writers.
                    Err(e) if e.kind() == OdErrorKind::Conflict => {}
                    Err(e) => return Err(self.open_error(e)),
                }
            }
            cleanup.map_err(|e| self.open_error(e))?;
            if winners > 1 {
                tracing::warn!(
                    location = %self.location,
                    winners,
                    "server checks conditional writes non-atomically; \
                     concurrent puts of one key may both succeed"
                );
                return Ok(S3Probe::Racy);
            }
        }
        Ok(S3Probe::Atomic)
    }

    /// Renames two probe files onto the same name: a server whose rename
    /// refuses to replace refuses the second.
    async fn probe_exclusive_rename(&self) -> Result<bool> {
        let target = probe_path();
        let (a, b) = (format!("{target}-a"), format!("{target}-b"));
        if let Err(e) = self.op.write(&a, probe_bytes()).await {
            self.probe_failed(e, &a).await?;
            return Ok(false);
        }
        let result = async {
            self.op.write(&b, probe_bytes()).await?;
            self.op.rename(&a, &target).await?;
            Ok::<_, opendal::Error>(self.op.rename(&b, &target).await.is_err())
        }
        .await;
        for path in [&a, &b, &target] {
            let _ = self.op.delete(path).await;
        }
        let exclusive = result.map_err(|e| self.open_error(e))?;
        tracing::debug!(location = %self.location, exclusive, "probed SFTP rename");
        Ok(exclusive)
    }

    /// A probe's first write failed: read-only credentials still open the
    /// storage (puts will fail on their own, so the probe result does not
    /// matter); anything else fails the open.
    async fn probe_failed(&self, e: opendal::Error, path: &str) -> Result<()> {
        if e.kind() == OdErrorKind::PermissionDenied {
            tracing::warn!(location = %self.location, "no write access; opened read-only");
            let _ = self.op.delete(path).await;
            return Ok(());
        }
        Err(self.open_error(e))
    }

    /// Classifies a failure while opening: the storage could not be used at
    /// all, so anything not clearly permission or configuration is reported
    /// as unreachable rather than as a failure of some object.
    fn open_error(&self, e: opendal::Error) -> Error {
        let err = map_err(e, format!("opening {}", self.location), None);
        match err.kind() {
            ErrorKind::PermissionDenied
            | ErrorKind::Config
            | ErrorKind::StorageFull
            | ErrorKind::NoContainer => err,
            _ => Error::new(ErrorKind::Unreachable, err.to_string()),
        }
    }

    async fn stat_path(&self, key: &ObjectKey, path: &str) -> Result<Option<u64>> {
        match self.op.stat(path).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.content_length())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == OdErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_err(e, format!("stat {key} in {}", self.location), None)),
        }
    }

    async fn put_s3(&self, key: &ObjectKey, path: &str, data: Bytes) -> Result<()> {
        let context = || format!("writing {key} to {}", self.location);
        if self.conditional_write {
            return self
                .write_s3(path, data, true)
                .await
                .map(drop)
                .map_err(|e| map_err(e, context(), Some(key)));
        }
        // Racy fallback for servers that ignore If-None-Match (see module doc).
        if self.stat_path(key, path).await?.is_some() {
            return Err(Error::already_exists(key));
        }
        self.write_s3(path, data, false)
            .await
            .map(drop)
            .map_err(|e| map_err(e, context(), Some(key)))
    }

    async fn put_sftp(&self, key: &ObjectKey, path: &str, data: Bytes) -> Result<()> {
        let context = || format!("writing {key} to {}", self.location);
        if !self.atomic_create && self.stat_path(key, path).await?.is_some() {
            return Err(Error::already_exists(key));
        }
        let tmp = temp_path(path);
        if let Err(e) = self.op.write(&tmp, data).await {
            let _ = self.op.delete(&tmp).await;
            return Err(map_err(e, context(), Some(key)));
        }
        if let Some(modes) = &self.sftp_modes {
            // Before the rename: no object is ever at its name with the
            // server's default mode.
            modes.make_private(&tmp).await;
        }
        if !self.atomic_create && self.stat_path(key, path).await?.is_some() {
            // Someone else finished first while we uploaded.
            let _ = self.op.delete(&tmp).await;
            return Err(Error::already_exists(key));
        }
        match self.op.rename(&tmp, path).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.op.delete(&tmp).await;
                // An exclusive rename reports an existing target as a generic
                // failure; look before blaming the connection.
                if self.stat_path(key, path).await?.is_some() {
                    Err(Error::already_exists(key))
                } else {
                    Err(map_err(e, context(), Some(key)))
                }
            }
        }
    }
}

impl OpendalStorage {
    fn lock_api(&self) -> &S3LockApi {
        &self
            .s3
            .as_ref()
            .expect("only S3 storage is versioned")
            .lock_api
    }

    fn version_err(&self, e: opendal::Error, what: String, key: &ObjectKey) -> Error {
        map_err(e, format!("{what} {key} in {}", self.location), Some(key))
    }
}

#[async_trait]
impl VersionedStorage for OpendalStorage {
    async fn bucket_lock(&self) -> Result<BucketLock> {
        self.lock_api().bucket_lock().await
    }

    async fn set_default_retention(&self, retention: DefaultRetention) -> Result<()> {
        self.lock_api().set_default_retention(retention).await
    }

    async fn list_versions(&self, kind: Kind) -> Result<Vec<ObjectVersion>> {
        let dir = if kind == Kind::Config {
            ObjectKey::config().path()
        } else {
            format!("{}/", kind.dir())
        };
        let entries = match self
            .op
            .list_with(&dir)
            .recursive(kind == Kind::Packs)
            .versions(true)
            .deleted(true)
            .await
        {
            Ok(entries) => entries,
            Err(e) if e.kind() == OdErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(map_err(
                    e,
                    format!("listing versions of {dir} in {}", self.location),
                    None,
                ));
            }
        };
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let meta = entry.metadata();
                let path = entry.path().trim_start_matches('/');
                let name = path.rsplit('/').next()?;
                let key = ObjectKey::parse(kind, name)?;
                if key.path() != path {
                    return None;
                }
                Some(ObjectVersion {
                    key,
                    version_id: meta.version()?.to_string(),
                    last_modified: meta.last_modified()?.into(),
                    size_bytes: meta.content_length(),
                    delete_marker: meta.is_deleted(),
                    latest: meta.is_current().unwrap_or(false),
                    etag: meta.etag().map(str::to_string),
                })
            })
            .collect())
    }

    async fn get_version(&self, key: &ObjectKey, version_id: &str) -> Result<Bytes> {
        self.op
            .read_with(&key.path())
            .version(version_id)
            .await
            .map(|buf| buf.to_bytes())
            .map_err(|e| self.version_err(e, format!("reading version {version_id} of"), key))
    }

    async fn get_version_range(
        &self,
        key: &ObjectKey,
        version_id: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let bytes = self
            .op
            .read_with(&key.path())
            .version(version_id)
            .range(offset..offset + len)
            .await
            .map(|buf| buf.to_bytes())
            .map_err(|e| self.version_err(e, format!("reading version {version_id} of"), key))?;
        if bytes.len() as u64 != len {
            return Err(Error::new(
                ErrorKind::InvalidRange,
                format!("range {offset}+{len} of {key} (version {version_id}) is past its end"),
            ));
        }
        Ok(bytes)
    }

    async fn retention(&self, key: &ObjectKey, version_id: &str) -> Result<Option<Retention>> {
        self.lock_api().retention(key, version_id).await
    }

    async fn set_retention(
        &self,
        key: &ObjectKey,
        version_id: &str,
        retention: Retention,
    ) -> Result<()> {
        self.lock_api()
            .set_retention(key, version_id, retention)
            .await
    }

    async fn delete_version(&self, key: &ObjectKey, version_id: &str) -> Result<()> {
        self.op
            .delete_with(&key.path())
            .version(version_id)
            .await
            .map_err(|e| self.version_err(e, format!("deleting version {version_id} of"), key))
    }

    async fn copy_version_to_current(&self, key: &ObjectKey, version_id: &str) -> Result<()> {
        // Signed here rather than through OpenDAL's copy, which sends no
        // integrity header: a bucket with a default retention refuses
        // writes without one (moto does for CopyObject).
        self.lock_api()
            .copy_version_to_current(key, version_id)
            .await
    }
}

#[async_trait]
impl Storage for OpendalStorage {
    fn versioned(&self) -> Option<&dyn VersionedStorage> {
        self.s3.as_ref().map(|_| self as &dyn VersionedStorage)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_connections: match self.protocol {
                Protocol::S3 => S3_MAX_CONNECTIONS,
                Protocol::Sftp => SFTP_MAX_CONNECTIONS,
            },
            atomic_create: self.atomic_create,
            // AWS S3 has been strongly consistent since December 2020, as are
            // the compatible servers we test against; SFTP is a filesystem.
            list_after_write: true,
            round_trips: true,
        }
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        let path = key.path();
        match self.protocol {
            Protocol::S3 => self.put_s3(key, &path, data).await,
            Protocol::Sftp => self.put_sftp(key, &path, data).await,
        }
        .map_err(write_denied)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.op
            .read(&key.path())
            .await
            .map(|buf| buf.to_bytes())
            .map_err(|e| {
                map_err(
                    e,
                    format!("reading {key} from {}", self.location),
                    Some(key),
                )
            })
    }

    /// One streamed GET, dropped as soon as it passes the bound: no size
    /// request first (a HEAD is a round trip of its own), and a planted
    /// huge object costs at most `max` bytes of memory and transfer.
    async fn get_at_most(&self, key: &ObjectKey, max: u64) -> Result<BoundedGet> {
        let context = || format!("reading {key} from {}", self.location);
        let stream = async { self.op.reader(&key.path()).await?.into_stream(..).await };
        let mut stream = stream.await.map_err(|e| map_err(e, context(), Some(key)))?;
        let mut out: Vec<u8> = Vec::new();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| map_err(e, context(), Some(key)))?
        {
            if (out.len() + chunk.len()) as u64 > max {
                return Ok(BoundedGet::TooLarge(None));
            }
            for part in chunk {
                out.extend_from_slice(&part);
            }
        }
        Ok(BoundedGet::Whole(Bytes::from(out)))
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        let invalid = |size: Option<u64>| {
            let size = size.map_or_else(String::new, |s| format!(" of {s} bytes"));
            Error::new(
                ErrorKind::InvalidRange,
                format!("range {offset}+{len} is outside object {key}{size}"),
            )
        };
        let path = key.path();
        let Some(end) = offset.checked_add(len) else {
            return Err(invalid(None));
        };
        if len == 0 {
            // An empty range means "whole object" to HTTP; answer it locally.
            let size = self
                .stat_path(key, &path)
                .await?
                .ok_or_else(|| Error::not_found(key))?;
            return if offset <= size {
                Ok(Bytes::new())
            } else {
                Err(invalid(Some(size)))
            };
        }
        match self.op.read_with(&path).range(offset..end).await {
            Ok(buf) if buf.len() as u64 == len => Ok(buf.to_bytes()),
            // Servers answer a range that runs past the end with the bytes
            // that exist; the contract forbids passing a short read on.
            Ok(_) => Err(invalid(self.stat_path(key, &path).await?)),
            Err(e) if e.kind() == OdErrorKind::RangeNotSatisfied => Err(invalid(None)),
            Err(e) if e.kind() == OdErrorKind::NotFound => Err(Error::not_found(key)),
            Err(e) => {
                // OpenDAL reports that short answer as an unclassified error
                // ("reader got too little data"); the object's size tells
                // a bad range from a broken transfer.
                match self.stat_path(key, &path).await {
                    Ok(Some(size)) if end > size => Err(invalid(Some(size))),
                    Ok(None) => Err(Error::not_found(key)),
                    _ => Err(map_err(
                        e,
                        format!("reading {key} from {}", self.location),
                        Some(key),
                    )),
                }
            }
        }
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.stat_path(key, &key.path()).await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        if kind == Kind::Config {
            let key = ObjectKey::config();
            let size = self.stat_path(&key, &key.path()).await?;
            return Ok(size
                .map(|size_bytes| ObjectInfo { key, size_bytes })
                .into_iter()
                .collect());
        }
        let dir = format!("{}/", kind.dir());
        let entries = match self
            .op
            .list_with(&dir)
            // Packs live one level down, in their two-hex fan-out directory.
            .recursive(kind == Kind::Packs)
            .await
        {
            Ok(entries) => entries,
            Err(e) if e.kind() == OdErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(map_err(
                    e,
                    format!("listing {dir} in {}", self.location),
                    None,
                ));
            }
        };
        Ok(entries
            .into_iter()
            .filter(|entry| entry.metadata().is_file())
            .filter_map(|entry| {
                let path = entry.path().trim_start_matches('/');
                let name = path.rsplit('/').next()?;
                // Temporaries and strays fail to parse or sit in the wrong
                // place; neither is an object of this kind.
                let key = ObjectKey::parse(kind, name)?;
                (key.path() == path).then(|| ObjectInfo {
                    key,
                    size_bytes: entry.metadata().content_length(),
                })
            })
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self.op.delete(&key.path()).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == OdErrorKind::NotFound => Ok(()),
            Err(e) => Err(write_denied(map_err(
                e,
                format!("deleting {key} from {}", self.location),
                Some(key),
            ))),
        }
    }
}

/// A write or delete the storage refused for lack of permission, said as
/// what it most often is: credentials that may read but not write (or not
/// delete). Reading commands work with such credentials (format.md §2.1).
fn write_denied(e: Error) -> Error {
    if e.kind() != ErrorKind::PermissionDenied {
        return e;
    }
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "{e}: these storage credentials may not write or delete here (read-only or \
             append-only credentials?); commands that only read (snapshots, ls, restore, \
             check) work with read-only credentials, this one needs the permission refused"
        ),
    )
}

/// The refusal of a write without an integrity header by a bucket with a
/// default retention: AWS answers `InvalidRequest` naming Content-MD5,
/// moto `MissingUploadObjectWithObjectLockHeaders`.
fn needs_content_md5(e: &opendal::Error) -> bool {
    let (code, text) = service_message(e);
    code.as_deref() == Some("MissingUploadObjectWithObjectLockHeaders")
        || (code.as_deref() == Some("InvalidRequest") && text.contains("Content-MD5"))
}

fn is_exists(e: &opendal::Error) -> bool {
    matches!(
        e.kind(),
        OdErrorKind::AlreadyExists | OdErrorKind::ConditionNotMatch
    )
}

/// Maps an OpenDAL error onto our kinds. OpenDAL marks errors worth replaying
/// (5xx, throttling, timeouts, broken connections) as temporary; those, and
/// only those, become [`ErrorKind::Transient`].
fn map_err(e: opendal::Error, context: String, key: Option<&ObjectKey>) -> Error {
    let (code, text) = service_message(&e);
    // OpenDAL reports a missing bucket as a configuration error whose
    // message carries the S3 code; the code is the only reliable sign.
    if code.as_deref() == Some("NoSuchBucket") {
        return Error::new(
            ErrorKind::NoContainer,
            format!(
                "{context}: the bucket does not exist (create it with your provider's tools, then run `lifeboat init`)"
            ),
        );
    }
    if let Some(key) = key {
        match e.kind() {
            OdErrorKind::NotFound => return Error::not_found(key),
            _ if is_exists(&e) => return Error::already_exists(key),
            _ => {}
        }
    }
    let kind = match e.kind() {
        _ if e.is_temporary() => ErrorKind::Transient,
        OdErrorKind::RateLimited => ErrorKind::Transient,
        OdErrorKind::NotFound => ErrorKind::NotFound,
        OdErrorKind::AlreadyExists | OdErrorKind::ConditionNotMatch => ErrorKind::AlreadyExists,
        OdErrorKind::RangeNotSatisfied => ErrorKind::InvalidRange,
        OdErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        OdErrorKind::ConfigInvalid => ErrorKind::Config,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("{context}: {text}"))
}

/// The S3 error code (when the server sent one) and a one-line description
/// of `e` for users: what failed and the server's own words, without
/// OpenDAL's context dump (request headers, service names) or a debug
/// struct. The full error goes to the debug log.
fn service_message(e: &opendal::Error) -> (Option<String>, String) {
    tracing::debug!(error = %e, "storage error");
    let message = e.message();
    let field = |name: &str| {
        let start = message.find(&format!("{name}: \""))? + name.len() + 3;
        let rest = &message[start..];
        Some(rest[..rest.find('"')?].to_string())
    };
    let kind = match e.kind() {
        OdErrorKind::NotFound => "not found".to_string(),
        OdErrorKind::PermissionDenied => "access denied".to_string(),
        OdErrorKind::ConfigInvalid => "invalid configuration".to_string(),
        OdErrorKind::RateLimited => "rate limited".to_string(),
        other => other.to_string().to_lowercase(),
    };
    let code = message
        .starts_with("S3Error")
        .then(|| field("code"))
        .flatten();
    let mut text = match (&code, field("message")) {
        (Some(c), Some(m)) if !m.is_empty() => format!("{kind}: {m} ({c})"),
        (Some(c), _) => format!("{kind} ({c})"),
        (None, _) if message.is_empty() => kind,
        (None, _) => {
            let first = message.lines().next().unwrap_or_default();
            format!("{kind}: {}", first.chars().take(200).collect::<String>())
        }
    };
    if let Some(source) = std::error::Error::source(e) {
        text.push_str(&format!(": {source}"));
    }
    (code, text)
}

/// A name next to `path` that [`ObjectKey::parse`] rejects (leading dot), so
/// a leftover from a crash never shows up in a listing.
fn temp_path(path: &str) -> String {
    let suffix = hex::encode(rand::random::<[u8; 8]>());
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/.tmp-{suffix}"),
        None => format!(".tmp-{suffix}"),
    }
}

fn probe_path() -> String {
    format!(
        "{}/.probe-{}",
        Kind::Locks.dir(),
        hex::encode(rand::random::<[u8; 8]>())
    )
}

fn probe_bytes() -> Bytes {
    Bytes::from_static(b"lifeboat write probe")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo_options(dir: &std::path::Path, bucket: &str) -> S3Options {
        S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            root: "repo".into(),
            probe_memo_dir: Some(dir.to_path_buf()),
            ..S3Options::new(bucket)
        }
    }

    #[test]
    fn probe_memo_round_trips_and_is_per_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let memo = memo_options(dir.path(), "b").probe_memo().unwrap();
        assert_eq!(memo.load(), None);
        memo.store(S3Probe::Racy);
        assert_eq!(memo.load(), Some(S3Probe::Racy));
        memo.store(S3Probe::Atomic);
        assert_eq!(memo.load(), Some(S3Probe::Atomic));
        let other = memo_options(dir.path(), "other").probe_memo().unwrap();
        assert_ne!(other.path, memo.path);
        assert_eq!(other.load(), None);
        // The directory is tagged so backups with --exclude-caches skip it.
        assert!(dir.path().join("CACHEDIR.TAG").is_file());
    }

    #[test]
    fn probe_memo_is_ignored_when_old_damaged_or_for_another_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let memo = memo_options(dir.path(), "b").probe_memo().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let write = |identity: &str, result: &str, at: u64| {
            std::fs::write(
                &memo.path,
                format!("{PROBE_MEMO_HEADER}\n{identity}\n{result}\n{at}\n"),
            )
            .unwrap();
        };
        write(&memo.identity, "atomic", now - 60);
        assert_eq!(memo.load(), Some(S3Probe::Atomic));
        write(
            &memo.identity,
            "atomic",
            now - PROBE_MEMO_MAX_AGE.as_secs() - 1,
        );
        assert_eq!(memo.load(), None, "expired");
        write(&memo.identity, "maybe", now);
        assert_eq!(memo.load(), None, "unknown result");
        write("http://elsewhere b repo", "atomic", now);
        assert_eq!(memo.load(), None, "another bucket's result");
        write(&memo.identity, "atomic", now + 3600);
        assert_eq!(memo.load(), None, "probed in the future");
    }

    #[test]
    fn probe_memo_dir_comes_from_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let dir = |vars| {
            S3Options::new("b")
                .with_defaults_from(env(vars))
                .probe_memo_dir
        };
        assert_eq!(
            dir(&[("LIFEBOAT_CACHE_DIR", "/c"), ("HOME", "/h")]),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]),
            Some(PathBuf::from("/x/lifeboat"))
        );
        assert_eq!(
            dir(&[("HOME", "/h")]),
            Some(PathBuf::from("/h/.cache/lifeboat"))
        );
        assert_eq!(dir(&[]), None);
    }

    fn s3_error(kind: OdErrorKind, code: &str, message: &str) -> opendal::Error {
        // What OpenDAL's S3 service makes of an error response: the S3
        // error body debug-printed as the message, plus request context.
        opendal::Error::new(
            kind,
            format!(
                "S3Error {{ code: \"{code}\", message: \"{message}\", resource: \"\", request_id: \"tx1\" }}"
            ),
        )
        .with_context("service", "s3")
        .with_context("response", "Parts { status: 404, headers: {\"x-amz-request-id\": \"tx1\"} }")
    }

    #[test]
    fn regression_missing_bucket_was_a_raw_backend_dump_with_exit_1() {
        let e = map_err(
            s3_error(
                OdErrorKind::ConfigInvalid,
                "NoSuchBucket",
                "The specified bucket does not exist",
            ),
            "opening s3://nope/repo".into(),
            None,
        );
        assert_eq!(e.kind(), ErrorKind::NoContainer);
        assert_eq!(e.class(), crate::ErrorClass::NoRepository);
        let text = e.to_string();
        assert!(text.contains("bucket does not exist"), "{text}");
        assert!(text.starts_with("opening s3://nope/repo"), "{text}");
        assert!(!text.contains("S3Error"), "{text}");
    }

    #[test]
    fn s3_errors_read_as_one_line_with_the_servers_words() {
        let e = map_err(
            s3_error(
                OdErrorKind::PermissionDenied,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match",
            ),
            "listing keys in s3://b/repo".into(),
            None,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let text = e.to_string();
        assert_eq!(
            text,
            "listing keys in s3://b/repo: access denied: The request signature we calculated \
             does not match (SignatureDoesNotMatch)"
        );
    }

    #[test]
    fn env_defaults_fill_only_unset_fields() {
        let env = |name: &str| {
            Some(match name {
                "AWS_ENDPOINT_URL" => "http://env:9000".to_string(),
                "AWS_REGION" => "eu-west-1".to_string(),
                "AWS_ACCESS_KEY_ID" => "envkey".to_string(),
                "AWS_SECRET_ACCESS_KEY" => "envsecret".to_string(),
                "AWS_SESSION_TOKEN" => "envtoken".to_string(),
                _ => return None,
            })
        };
        let o = S3Options::new("b").with_defaults_from(env);
        assert_eq!(o.endpoint.as_deref(), Some("http://env:9000"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.access_key_id.as_deref(), Some("envkey"));
        assert_eq!(o.session_token.as_deref(), Some("envtoken"));

        let explicit = S3Options {
            endpoint: Some("http://mine".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::new("b")
        }
        .with_defaults_from(env);
        assert_eq!(explicit.endpoint.as_deref(), Some("http://mine"));
        assert_eq!(explicit.access_key_id.as_deref(), Some("k"));
        assert_eq!(explicit.session_token, None, "token belongs to env keys");
    }

    #[test]
    fn debug_hides_secrets() {
        let o = S3Options {
            secret_access_key: Some("hunter2".into()),
            session_token: Some("tok".into()),
            ..S3Options::new("b")
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok\""), "{s}");
    }

    #[test]
    fn temp_names_are_rejected_by_parse() {
        let tmp = temp_path("data/ab/abcdef");
        let (dir, name) = tmp.rsplit_once('/').unwrap();
        assert_eq!(dir, "data/ab");
        assert!(ObjectKey::parse(Kind::Packs, name).is_none());
        let probe = probe_path();
        assert!(ObjectKey::parse(Kind::Locks, probe.rsplit('/').next().unwrap()).is_none());
    }

    #[test]
    fn sftp_endpoint_and_display() {
        let o = SftpOptions {
            user: Some("bob".into()),
            host: "example.org".into(),
            port: Some(2222),
            root: "/srv/repo".into(),
            ..SftpOptions::default()
        };
        assert_eq!(o.endpoint(), "ssh://bob@example.org:2222");
        assert_eq!(o.display(), "sftp://bob@example.org:2222/srv/repo");
        let rel = SftpOptions {
            host: "h".into(),
            root: "backups".into(),
            ..SftpOptions::default()
        };
        assert_eq!(rel.display(), "sftp://h/backups");
    }
}
