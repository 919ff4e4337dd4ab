//! The operations config file, `lifeboat.toml`: where it is, how it is
//! parsed and validated, and the effective config with every default
//! filled in ([`Config`]).
//!
//! The file has these tables: `[repository.NAME]`,
//! `[source.NAME]`, `[plan.NAME]`, `[alert.NAME]`, `[daemon]` and
//! `[communication]`, plus an optional top-level `state-dir`. Keys are kebab-case; unknown keys, wrong
//! types and impossible values (an unknown repository in a plan, a bad cron
//! expression, an RPO of zero) are a [`ConfigError`] naming the file, the
//! line, the key and what is allowed. Parsing is two steps: serde into the
//! raw tables (spans kept for the values checked afterwards), then
//! validation into the effective types. Nothing here touches a repository;
//! `check` (in `lib.rs`) opens them.
//!
//! Relative paths (a local repository location, a password file) are
//! relative to the directory holding the config file, so a config and its
//! files can move together.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::duration::Duration;
use crate::schedule::Schedule;

/// Where the config file is when neither `--config` nor `LIFEBOAT_CONFIG`
/// names one: `/etc/lifeboat/lifeboat.toml` for root, else
/// `$XDG_CONFIG_HOME/lifeboat/lifeboat.toml` (`~/.config/...`).
pub fn default_config_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/etc/lifeboat/lifeboat.toml")
    } else {
        dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("lifeboat")
            .join("lifeboat.toml")
    }
}

/// The config path: the option given (`--config`), else `LIFEBOAT_CONFIG`,
/// else [`default_config_path`].
pub fn config_path(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    match std::env::var_os("LIFEBOAT_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_config_path(),
    }
}

/// Where run state is kept when the config does not say (`state-dir`):
/// `/var/lib/lifeboat` for root, else `$XDG_STATE_HOME/lifeboat`
/// (`~/.local/state/lifeboat`).
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/lifeboat")
    } else {
        dirs::state_dir()
            .or_else(dirs::data_dir)
            .unwrap_or_else(|| PathBuf::from("."))
            .join("lifeboat")
    }
}

// ---------------------------------------------------------------- errors

/// A config file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `plan.home.rpo`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// ------------------------------------------------------- effective config

/// What a repository is for, in the 3-2-1 sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Next to the data (the first copy).
    Primary,
    /// In another place: counts as the off-site copy.
    Offsite,
    /// Rarely read, off-site and usually offline or archive-class storage.
    Cold,
}

impl Role {
    /// Whether the copy is away from the machine's site.
    pub fn is_offsite(self) -> bool {
        matches!(self, Role::Offsite | Role::Cold)
    }
}

/// The kind of medium a repository is on, in the 3-2-1 sense (two copies on
/// the same kind of medium share its failure modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    Disk,
    ObjectStore,
    Sftp,
    /// A `lifeboat serve` endpoint (`lifeboat+http://`): another machine's
    /// storage behind a lifeboat server, whatever that server stores on.
    RemoteServer,
    Removable,
    Tape,
    Optical,
}

impl Media {
    /// Media kept offline between uses: counts as the "1 offline" copy of
    /// 3-2-1-1-0.
    pub fn is_offline(self) -> bool {
        matches!(self, Media::Removable | Media::Tape | Media::Optical)
    }

    /// The name the config file uses (`media = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Media::Disk => "disk",
            Media::ObjectStore => "object-store",
            Media::Sftp => "sftp",
            Media::RemoteServer => "remote-server",
            Media::Removable => "removable",
            Media::Tape => "tape",
            Media::Optical => "optical",
        }
    }
}

/// How a repository's password is obtained; never inline in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordSource {
    /// First line of this file.
    File(PathBuf),
    /// First line of this shell command's output.
    Command(String),
    /// This environment variable.
    Env(String),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RepositoryConfig {
    /// Path or URL as `lifeboat -r` takes it (relative paths resolved).
    pub location: String,
    pub password: PasswordSource,
    pub role: Role,
    pub media: Media,
    pub immutable: bool,
    /// Where a copy of the password is kept away from this machine (a
    /// password manager, a safe): said by the operator, read by `doctor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_copy: Option<String>,
    /// How often the daemon extends the object-lock retention of
    /// everything current (`lifeboat lock extend`) in an object-lock
    /// repository; none: a third of the repository's lock period (read
    /// from the repository), so two extensions can fail before live data
    /// is left unprotected. Ignored for repositories without object lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_extend_every: Option<Duration>,
    /// How often the daemon runs ransomware detection (`lifeboat detect`)
    /// over the repository's snapshots it has not checked yet; none: never.
    /// For repositories that write-only hosts back up into (their backups
    /// are not checked at backup time); needs a full key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_every: Option<Duration>,
}

/// What a plan protects. A tagged enum (`type = "..."`): MariaDB, SQLite
/// and Redis sources are meant to become further variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum SourceConfig {
    /// File trees.
    Files {
        paths: Vec<PathBuf>,
        #[serde(default)]
        excludes: Vec<String>,
        #[serde(default)]
        one_file_system: bool,
        #[serde(default)]
        exclude_caches: bool,
    },
    /// A PostgreSQL cluster (physical base backups; WAL archiving is set up
    /// with `archive_command = 'lifeboat pg wal-push ...'`).
    Postgres {
        /// `postgresql://user@host:port/db`; default: the PG* variables.
        #[serde(default)]
        url: Option<String>,
    },
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Files { .. } => "files",
            SourceConfig::Postgres { .. } => "postgres",
        }
    }
}

/// Which backup mode a run uses: full when the `full` schedule had a slot
/// since the last full backup, differential likewise, else incremental.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModeSchedule {
    pub full: Option<Schedule>,
    pub differential: Option<Schedule>,
}

/// `forget` keep rules, applied after a backup when `prune` is due, then
/// prune.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetentionConfig {
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    pub keep_within: Option<Duration>,
    pub keep_tags: Vec<String>,
    /// When forget + prune run (after a backup, once per slot).
    pub prune: Schedule,
}

/// `check` on a schedule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyConfig {
    pub schedule: Schedule,
    /// Percentage of packs read and verified (`check
    /// --read-data-subset`); 0: structure only; 100: everything.
    pub read_data_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlanConfig {
    pub source: String,
    /// Written by one read of the source (fan-out).
    pub repositories: Vec<String>,
    /// Filled by `copy` from the first of `repositories` after the backup.
    pub copy_to: Vec<String>,
    pub rpo: Duration,
    pub rto: Option<Duration>,
    pub schedule: Schedule,
    /// Whether `schedule` was derived from the RPO.
    pub schedule_derived: bool,
    /// A random delay up to this is added to each scheduled start.
    pub jitter: Duration,
    pub tags: Vec<String>,
    pub mode: ModeSchedule,
    pub retention: Option<RetentionConfig>,
    pub verify: Option<VerifyConfig>,
    pub drill: DrillConfig,
    /// Ransomware detection after each backup (`detect = false`: none).
    pub detect: Option<DetectConfig>,
}

/// The plan's `detect-*` keys: the thresholds of ransomware detection at
/// backup time (lifeboat_snapshot::detect, whose defaults these are;
/// docs/operations.md, "Ransomware detection").
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DetectConfig {
    /// Share of the previous snapshot's files that became incompressible,
    /// or were renamed with a new extension, that flags a backup.
    pub share_percent: f64,
    /// Fewer affected files than this never flag a backup.
    pub min_files: u64,
    /// Share of stable files rewritten that counts with half of `share`.
    pub stable_share_percent: f64,
    /// A file unchanged this many days before the previous snapshot is
    /// stable.
    pub stable_days: u32,
    /// Days the snapshot before a suspect one stays protected.
    pub protect_days: u32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        let d = lifeboat_snapshot::detect::DetectOptions::default();
        DetectConfig {
            share_percent: d.share * 100.0,
            min_files: d.min_files,
            stable_share_percent: d.stable_share * 100.0,
            stable_days: d.stable_days,
            protect_days: d.protect_days,
        }
    }
}

impl DetectConfig {
    pub fn options(&self) -> lifeboat_snapshot::detect::DetectOptions {
        lifeboat_snapshot::detect::DetectOptions {
            share: self.share_percent / 100.0,
            min_files: self.min_files,
            stable_share: self.stable_share_percent / 100.0,
            stable_days: self.stable_days,
            protect_days: self.protect_days,
        }
    }
}

/// `[plan.NAME.drill]`: how restore drills of the plan run and what they
/// tolerate (docs/drills.md). The spot-check tolerances follow borgmatic's
/// "spot" check: files change between a backup and a drill, so the live
/// source is compared within bounds, not exactly.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillConfig {
    /// The daemon runs a drill this long after the last one; none: only
    /// `lifeboat drill`.
    pub every: Option<Duration>,
    /// Where drills restore to; default: `<state-dir>/drills`.
    pub scratch: Option<PathBuf>,
    /// Largest difference in file counts between the snapshot and the live
    /// source, in percent of the larger count.
    pub count_tolerance_percent: f64,
    /// Share of the snapshot's files whose content is compared with the
    /// live source (at least [`DRILL_MIN_SAMPLE`] files when there are).
    pub data_sample_percent: f64,
    /// Largest share of the sampled files allowed to differ from the live
    /// source.
    pub data_tolerance_percent: f64,
    /// PostgreSQL: SQL queries that must each return true.
    pub probes: Vec<String>,
    /// PostgreSQL: the database the probes run in.
    pub probe_database: String,
}

/// Default count tolerance: 5% absorbs a day's churn of files created and
/// deleted, far below what an empty mount point (100%) or another
/// directory shows.
pub const DRILL_COUNT_TOLERANCE: f64 = 5.0;
/// Default sample: 5% of the files.
pub const DRILL_DATA_SAMPLE: f64 = 5.0;
/// Fewest files sampled (when the snapshot has that many): a sample of
/// one or two files says little.
pub const DRILL_MIN_SAMPLE: usize = 20;
/// Default data tolerance: 10% of the sampled files may have changed
/// since the backup; ransomware changes them all.
pub const DRILL_DATA_TOLERANCE: f64 = 10.0;

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            every: None,
            scratch: None,
            count_tolerance_percent: DRILL_COUNT_TOLERANCE,
            data_sample_percent: DRILL_DATA_SAMPLE,
            data_tolerance_percent: DRILL_DATA_TOLERANCE,
            probes: Vec::new(),
            probe_database: "postgres".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AlertConfig {
    /// Generic JSON POST.
    pub webhook: Option<String>,
    /// Slack-compatible incoming webhook (`{"text": ...}`).
    pub slack: Option<String>,
    /// Healthchecks.io-style base URL: `/start`, `` (success), `/fail`.
    pub ping: Option<String>,
    pub email: Option<EmailConfig>,
    /// Plans this alert is for; empty: all.
    pub plans: Vec<String>,
    /// Repeat an unresolved problem this often (0: never).
    pub remind: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EmailConfig {
    pub to: Vec<String>,
    pub from: String,
    /// `smtp://host:port` (plain, for a local relay) or
    /// `smtps://host:port` / `smtp://...?tls=starttls`.
    pub smtp: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonConfig {
    /// HTTP address for /metrics, /healthz, /api/status.
    pub listen: String,
    /// Plans running at once.
    pub max_concurrent: usize,
    /// Time zone of the cron schedules (IANA name); default: the system's.
    pub time_zone: String,
    /// How long after a lock conflict a plan is tried again.
    pub lock_retry: Duration,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(skip)]
    pub path: PathBuf,
    pub state_dir: PathBuf,
    #[serde(rename = "repository")]
    pub repositories: BTreeMap<String, RepositoryConfig>,
    #[serde(rename = "source")]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(rename = "plan")]
    pub plans: BTreeMap<String, PlanConfig>,
    #[serde(rename = "alert")]
    pub alerts: BTreeMap<String, AlertConfig>,
    pub daemon: DaemonConfig,
    /// `[communication]`: who hears about incidents, and how.
    pub communication: CommunicationConfig,
}

/// `[communication]`: incident notices (`lifeboat incident`) and the
/// static status page. Without the table, notices go to every alert with
/// the default templates, as one audience named `team`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommunicationConfig {
    /// `[communication.audience.NAME]`, e.g. `team` and `customers`.
    #[serde(rename = "audience")]
    pub audiences: BTreeMap<String, AudienceConfig>,
    /// `incident` commands write `status.html` here and the daemon keeps
    /// it current (for any web server); none: only the daemon's `/status`
    /// serves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_dir: Option<PathBuf>,
    /// Promised time to the next update (the `{next-update}` placeholder).
    pub update_every: Duration,
}

/// One audience of incident notices.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AudienceConfig {
    /// Names of `[alert.NAME]` tables whose webhook, Slack and email
    /// channels carry the notices; empty: every alert.
    pub channels: Vec<String>,
    /// Templates of the three notices (placeholders: see
    /// [`crate::incident::PLACEHOLDERS`]).
    pub open: String,
    pub update: String,
    pub resolve: String,
}

/// Default promise of the next update: half an hour is what status pages
/// of hosted services commonly promise during an outage.
pub const DEFAULT_UPDATE_EVERY_SECS: u64 = 1800;

/// Default HTTP address: loopback only, so metrics are not exposed to the
/// network unless asked; 9898 is not taken by a common exporter.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9898";

/// Default plans at once: two keeps one slow plan (a big first backup)
/// from holding every other plan back, without competing for one disk.
pub const DEFAULT_MAX_CONCURRENT: usize = 2;

/// Default wait after a lock conflict (a prune holding the repository):
/// short against an hourly RPO, long enough for most prunes to finish.
pub const DEFAULT_LOCK_RETRY_SECS: u64 = 300;

/// Default prune schedule: weekly, Sunday 04:00 (prune rewrites packs;
/// once a week keeps its cost low).
pub const DEFAULT_PRUNE_SCHEDULE: &str = "0 4 * * 0";

/// Default reminder for an unresolved problem: once a day.
pub const DEFAULT_REMIND_SECS: u64 = 86_400;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "no config file here: write one (see dist/lifeboat.example.toml), or name it with --config or LIFEBOAT_CONFIG".into()
            } else {
                format!("cannot read it: {e}")
            },
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text`, read from `path` (used in messages and to resolve
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            ConfigError {
                file: path.to_path_buf(),
                line: offset.map(|o| line_of(text, o)),
                key: offset.map(|o| key_at(text, o)).unwrap_or_default(),
                message: e.message().trim().to_string(),
            }
        })?;
        Validator { text, path }.validate(raw)
    }

    /// The plan, or an error listing the plans there are.
    pub fn plan(&self, name: &str) -> Option<&PlanConfig> {
        self.plans.get(name)
    }

    /// The effective config as TOML (`config show`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the effective config serializes")
    }
}

// ------------------------------------------------------------ raw tables

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    repository: BTreeMap<String, RawRepository>,
    #[serde(default)]
    source: BTreeMap<String, RawSource>,
    #[serde(default)]
    plan: BTreeMap<String, RawPlan>,
    #[serde(default)]
    alert: BTreeMap<String, RawAlert>,
    #[serde(default)]
    daemon: RawDaemon,
    communication: Option<RawCommunication>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCommunication {
    status_dir: Option<PathBuf>,
    update_every: Option<Spanned<String>>,
    #[serde(default)]
    audience: BTreeMap<String, RawAudience>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAudience {
    channels: Option<Spanned<Vec<String>>>,
    open: Option<Spanned<String>>,
    update: Option<Spanned<String>>,
    resolve: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRepository {
    location: Spanned<String>,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    password_env: Option<String>,
    role: Option<Role>,
    media: Option<Media>,
    #[serde(default)]
    immutable: bool,
    password_copy: Option<String>,
    lock_extend_every: Option<Spanned<String>>,
    detect_every: Option<Spanned<String>>,
}

/// Every key any source type takes, so each keeps its span (serde's
/// internally tagged enums lose them); which keys a type allows is checked
/// in validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSource {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    paths: Option<Spanned<Vec<PathBuf>>>,
    excludes: Option<Spanned<Vec<String>>>,
    one_file_system: Option<Spanned<bool>>,
    exclude_caches: Option<Spanned<bool>>,
    url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlan {
    source: Spanned<String>,
    repositories: Spanned<Vec<String>>,
    #[serde(default)]
    copy_to: Option<Spanned<Vec<String>>>,
    rpo: Spanned<String>,
    rto: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    mode: Option<RawModes>,
    retention: Option<RawRetention>,
    verify: Option<RawVerify>,
    drill: Option<RawDrill>,
    detect: Option<bool>,
    detect_share: Option<Spanned<String>>,
    detect_min_files: Option<Spanned<i64>>,
    detect_stable_share: Option<Spanned<String>>,
    detect_stable_days: Option<Spanned<i64>>,
    detect_protect_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDrill {
    every: Option<Spanned<String>>,
    scratch: Option<PathBuf>,
    count_tolerance: Option<Spanned<String>>,
    data_sample: Option<Spanned<String>>,
    data_tolerance: Option<Spanned<String>>,
    #[serde(default)]
    probes: Vec<String>,
    probe_database: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawModes {
    full: Option<Spanned<String>>,
    differential: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRetention {
    keep_last: Option<usize>,
    keep_hourly: Option<usize>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
    keep_monthly: Option<usize>,
    keep_yearly: Option<usize>,
    keep_within: Option<Spanned<String>>,
    #[serde(default)]
    keep_tags: Vec<String>,
    prune: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVerify {
    schedule: Spanned<String>,
    read_data_subset: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAlert {
    webhook: Option<Spanned<String>>,
    slack: Option<Spanned<String>>,
    ping: Option<Spanned<String>>,
    email: Option<RawEmail>,
    #[serde(default)]
    plans: Option<Spanned<Vec<String>>>,
    remind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEmail {
    to: Vec<String>,
    from: String,
    smtp: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDaemon {
    listen: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<usize>>,
    time_zone: Option<Spanned<String>>,
    lock_retry: Option<Spanned<String>>,
}

// ------------------------------------------------------------ validation

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, offset: Option<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: offset.map(|o| line_of(self.text, o)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn at<T>(&self, s: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.err(Some(s.span().start), key, message)
    }

    /// The error for a whole table `[kind.name]`, at its header.
    fn table(&self, kind: &str, name: &str, key: &str, message: impl Into<String>) -> ConfigError {
        self.err(header_offset(self.text, kind, name), key, message)
    }

    fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    fn name(&self, kind: &str, name: &str) -> Result<(), ConfigError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(())
        } else {
            Err(self.table(
                kind,
                name,
                &format!("{kind}.{name}"),
                "names may use letters, digits, - and _ (at most 64): they become file names and metric labels",
            ))
        }
    }

    fn duration(
        &self,
        s: &Spanned<String>,
        key: &str,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        match Duration::parse(s.get_ref()) {
            Some(d) if allow_zero || d.seconds() > 0 => Ok(d),
            Some(_) => Err(self.at(s, key, "must be more than zero")),
            None => Err(self.at(
                s,
                key,
                format!(
                    "{:?} is not a duration: write a number and a unit (s, m, h, d, w), e.g. \"15m\", \"1h\", \"7d\"",
                    s.get_ref()
                ),
            )),
        }
    }

    fn schedule(&self, s: &Spanned<String>, key: &str) -> Result<Schedule, ConfigError> {
        Schedule::parse(s.get_ref()).map_err(|e| {
            self.at(
                s,
                key,
                format!(
                    "{:?} is not a cron expression ({e}): five fields, minute hour day-of-month month day-of-week, e.g. \"*/15 * * * *\"",
                    s.get_ref()
                ),
            )
        })
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut repositories = BTreeMap::new();
        for (name, r) in raw.repository {
            self.name("repository", &name)?;
            repositories.insert(name.clone(), self.repository(&name, r)?);
        }
        let mut sources = BTreeMap::new();
        for (name, s) in raw.source {
            self.name("source", &name)?;
            let source = self.source(&name, s)?;
            sources.insert(name, source);
        }
        let mut plans = BTreeMap::new();
        for (name, p) in raw.plan {
            self.name("plan", &name)?;
            let plan = self.plan(&name, p, &repositories, &sources)?;
            plans.insert(name, plan);
        }
        let mut alerts = BTreeMap::new();
        for (name, a) in raw.alert {
            self.name("alert", &name)?;
            alerts.insert(name.clone(), self.alert(&name, a, &plans)?);
        }
        let daemon = self.daemon(raw.daemon)?;
        let communication = self.communication(raw.communication, &alerts)?;
        Ok(Config {
            path: self.path.to_path_buf(),
            state_dir: raw
                .state_dir
                .map(|p| self.resolve(&p))
                .unwrap_or_else(default_state_dir),
            repositories,
            sources,
            plans,
            alerts,
            daemon,
            communication,
        })
    }

    fn communication(
        &self,
        c: Option<RawCommunication>,
        alerts: &BTreeMap<String, AlertConfig>,
    ) -> Result<CommunicationConfig, ConfigError> {
        let c = c.unwrap_or(RawCommunication {
            status_dir: None,
            update_every: None,
            audience: BTreeMap::new(),
        });
        let update_every = match &c.update_every {
            Some(d) => self.duration(d, "communication.update-every", false)?,
            None => Duration::from_secs(DEFAULT_UPDATE_EVERY_SECS),
        };
        let mut raw = c.audience;
        if raw.is_empty() {
            raw.insert(
                "team".into(),
                RawAudience {
                    channels: None,
                    open: None,
                    update: None,
                    resolve: None,
                },
            );
        }
        let mut audiences = BTreeMap::new();
        for (name, a) in raw {
            self.name("communication.audience", &name)?;
            let key = |k: &str| format!("communication.audience.{name}.{k}");
            let channels = match &a.channels {
                Some(list) => {
                    if let Some(n) = list.get_ref().iter().find(|n| !alerts.contains_key(*n)) {
                        return Err(self.at(
                            list,
                            &key("channels"),
                            format!(
                                "no alert named {n:?}; channels are [alert.NAME] tables, defined: {}",
                                list_or_none(alerts.keys())
                            ),
                        ));
                    }
                    list.get_ref().clone()
                }
                None => Vec::new(),
            };
            let template = |t: &Option<Spanned<String>>,
                            k: &str,
                            default: &str|
             -> Result<String, ConfigError> {
                match t {
                    None => Ok(default.to_string()),
                    Some(t) => crate::incident::check_template(t.get_ref())
                        .map(|()| t.get_ref().clone())
                        .map_err(|why| self.at(t, &key(k), why)),
                }
            };
            audiences.insert(
                name.clone(),
                AudienceConfig {
                    channels,
                    open: template(&a.open, "open", crate::incident::DEFAULT_OPEN)?,
                    update: template(&a.update, "update", crate::incident::DEFAULT_UPDATE)?,
                    resolve: template(&a.resolve, "resolve", crate::incident::DEFAULT_RESOLVE)?,
                },
            );
        }
        Ok(CommunicationConfig {
            audiences,
            status_dir: c.status_dir.map(|p| self.resolve(&p)),
            update_every,
        })
    }

    fn source(&self, name: &str, s: RawSource) -> Result<SourceConfig, ConfigError> {
        let key = |k: &str| format!("source.{name}.{k}");
        // (key, span start) of every key given besides `type`.
        let given: Vec<(&str, usize)> = [
            ("paths", s.paths.as_ref().map(|v| v.span().start)),
            ("excludes", s.excludes.as_ref().map(|v| v.span().start)),
            (
                "one-file-system",
                s.one_file_system.as_ref().map(|v| v.span().start),
            ),
            (
                "exclude-caches",
                s.exclude_caches.as_ref().map(|v| v.span().start),
            ),
            ("url", s.url.as_ref().map(|v| v.span().start)),
        ]
        .into_iter()
        .filter_map(|(k, o)| o.map(|o| (k, o)))
        .collect();
        let allowed: &[&str] = match s.kind.get_ref().as_str() {
            "files" => &["paths", "excludes", "one-file-system", "exclude-caches"],
            "postgres" => &["url"],
            other => {
                return Err(self.at(
                    &s.kind,
                    &key("type"),
                    format!("unknown source type {other:?}, expected one of `files`, `postgres`"),
                ));
            }
        };
        if let Some((k, o)) = given.iter().find(|(k, _)| !allowed.contains(k)) {
            return Err(self.err(
                Some(*o),
                &key(k),
                format!(
                    "not a key of type = {:?} sources; allowed: {}",
                    s.kind.get_ref(),
                    allowed.join(", ")
                ),
            ));
        }
        match s.kind.get_ref().as_str() {
            "files" => {
                let Some(paths) = s.paths else {
                    return Err(self.at(
                        &s.kind,
                        &key("paths"),
                        "name at least one path to back up (paths = [\"/home\"])",
                    ));
                };
                if paths.get_ref().is_empty() {
                    return Err(self.at(
                        &paths,
                        &key("paths"),
                        "name at least one path to back up",
                    ));
                }
                if let Some(p) = paths.get_ref().iter().find(|p| !p.is_absolute()) {
                    return Err(self.at(
                        &paths,
                        &key("paths"),
                        format!("{} is relative: source paths must be absolute", p.display()),
                    ));
                }
                Ok(SourceConfig::Files {
                    paths: paths.into_inner(),
                    excludes: s.excludes.map(Spanned::into_inner).unwrap_or_default(),
                    one_file_system: s.one_file_system.is_some_and(|b| *b.get_ref()),
                    exclude_caches: s.exclude_caches.is_some_and(|b| *b.get_ref()),
                })
            }
            _ => Ok(SourceConfig::Postgres {
                url: s.url.map(Spanned::into_inner),
            }),
        }
    }

    fn repository(&self, name: &str, r: RawRepository) -> Result<RepositoryConfig, ConfigError> {
        let key = |k: &str| format!("repository.{name}.{k}");
        let password = match (r.password_file, r.password_command, r.password_env) {
            (Some(f), None, None) => PasswordSource::File(self.resolve(&f)),
            (None, Some(c), None) => PasswordSource::Command(c),
            (None, None, Some(e)) => PasswordSource::Env(e),
            (None, None, None) => {
                return Err(self.table(
                    "repository",
                    name,
                    &key("password-file"),
                    "say where the password is: password-file, password-command or password-env (never the password itself)",
                ));
            }
            _ => {
                return Err(self.table(
                    "repository",
                    name,
                    &key("password-file"),
                    "give only one of password-file, password-command and password-env",
                ));
            }
        };
        let text = r.location.get_ref().trim();
        if text.is_empty() {
            return Err(self.at(&r.location, &key("location"), "must not be empty"));
        }
        let location = lifeboat_storage::Location::parse(text).map_err(|e| {
            self.at(
                &r.location,
                &key("location"),
                format!(
                    "{e}: a path, s3://BUCKET/PREFIX?..., sftp://USER@HOST/PATH or \
                     lifeboat+http://HOST:PORT/"
                ),
            )
        })?;
        let (location, default_media) = match location {
            lifeboat_storage::Location::Local(p) => {
                (self.resolve(&p).display().to_string(), Media::Disk)
            }
            lifeboat_storage::Location::S3(_) => (text.to_string(), Media::ObjectStore),
            lifeboat_storage::Location::Sftp(_) => (text.to_string(), Media::Sftp),
            lifeboat_storage::Location::Serve(_) => (text.to_string(), Media::RemoteServer),
        };
        let lock_extend_every = match &r.lock_extend_every {
            Some(d) => Some(self.duration(d, &key("lock-extend-every"), false)?),
            None => None,
        };
        let detect_every = match &r.detect_every {
            Some(d) => Some(self.duration(d, &key("detect-every"), false)?),
            None => None,
        };
        Ok(RepositoryConfig {
            lock_extend_every,
            detect_every,
            location,
            password,
            role: r.role.unwrap_or(Role::Primary),
            media: r.media.unwrap_or(default_media),
            immutable: r.immutable,
            password_copy: r
                .password_copy
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        })
    }

    fn names_in(
        &self,
        list: &Spanned<Vec<String>>,
        key: &str,
        known: &BTreeMap<String, RepositoryConfig>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for n in list.get_ref() {
            if !known.contains_key(n) {
                return Err(self.at(
                    list,
                    key,
                    format!(
                        "no repository named {n:?}; defined: {}",
                        list_or_none(known.keys())
                    ),
                ));
            }
            if !seen.insert(n) {
                return Err(self.at(list, key, format!("{n:?} is named twice")));
            }
        }
        Ok(list.get_ref().clone())
    }

    fn plan(
        &self,
        name: &str,
        p: RawPlan,
        repositories: &BTreeMap<String, RepositoryConfig>,
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<PlanConfig, ConfigError> {
        let key = |k: &str| format!("plan.{name}.{k}");
        let detect = self.detect(name, &p)?;
        if !sources.contains_key(p.source.get_ref()) {
            return Err(self.at(
                &p.source,
                &key("source"),
                format!(
                    "no source named {:?}; defined: {}",
                    p.source.get_ref(),
                    list_or_none(sources.keys())
                ),
            ));
        }
        let repos = self.names_in(&p.repositories, &key("repositories"), repositories)?;
        if repos.is_empty() {
            return Err(self.at(
                &p.repositories,
                &key("repositories"),
                "name at least one repository to back up to",
            ));
        }
        let copy_to = match &p.copy_to {
            Some(c) => {
                let names = self.names_in(c, &key("copy-to"), repositories)?;
                if let Some(n) = names.iter().find(|n| repos.contains(n)) {
                    return Err(self.at(
                        c,
                        &key("copy-to"),
                        format!("{n:?} is already in repositories (it gets its own snapshot)"),
                    ));
                }
                names
            }
            None => Vec::new(),
        };
        let rpo = self.duration(&p.rpo, &key("rpo"), false)?;
        let rto = p
            .rto
            .as_ref()
            .map(|r| self.duration(r, &key("rto"), false))
            .transpose()?;
        let (schedule, derived) = match &p.schedule {
            Some(s) => (self.schedule(s, &key("schedule"))?, false),
            None => (Schedule::from_rpo(rpo), true),
        };
        let jitter = match &p.jitter {
            Some(j) => self.duration(j, &key("jitter"), true)?,
            None => Duration::from_secs(0),
        };
        if jitter.seconds() >= rpo.seconds() {
            return Err(self.at(
                p.jitter.as_ref().expect("set"),
                &key("jitter"),
                format!("must be shorter than the RPO ({rpo})"),
            ));
        }
        let mode = match p.mode {
            Some(m) => ModeSchedule {
                full: m
                    .full
                    .as_ref()
                    .map(|s| self.schedule(s, &key("mode.full")))
                    .transpose()?,
                differential: m
                    .differential
                    .as_ref()
                    .map(|s| self.schedule(s, &key("mode.differential")))
                    .transpose()?,
            },
            None => ModeSchedule::default(),
        };
        let retention = match p.retention {
            Some(r) => {
                let keep_within = r
                    .keep_within
                    .as_ref()
                    .map(|d| self.duration(d, &key("retention.keep-within"), false))
                    .transpose()?;
                let none = r.keep_last.is_none()
                    && r.keep_hourly.is_none()
                    && r.keep_daily.is_none()
                    && r.keep_weekly.is_none()
                    && r.keep_monthly.is_none()
                    && r.keep_yearly.is_none()
                    && keep_within.is_none()
                    && r.keep_tags.is_empty();
                if none {
                    return Err(self.err(
                        header_offset(self.text, "plan", &format!("{name}.retention")),
                        &key("retention"),
                        "give at least one keep rule: keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly, keep-within or keep-tags",
                    ));
                }
                let prune = match &r.prune {
                    Some(s) => self.schedule(s, &key("retention.prune"))?,
                    None => Schedule::parse(DEFAULT_PRUNE_SCHEDULE).expect("valid default"),
                };
                Some(RetentionConfig {
                    keep_last: r.keep_last,
                    keep_hourly: r.keep_hourly,
                    keep_daily: r.keep_daily,
                    keep_weekly: r.keep_weekly,
                    keep_monthly: r.keep_monthly,
                    keep_yearly: r.keep_yearly,
                    keep_within,
                    keep_tags: r.keep_tags,
                    prune,
                })
            }
            None => None,
        };
        let verify = match p.verify {
            Some(v) => {
                let schedule = self.schedule(&v.schedule, &key("verify.schedule"))?;
                let read_data_percent =
                    self.percent(&v.read_data_subset, &key("verify.read-data-subset"), 0.0)?;
                Some(VerifyConfig {
                    schedule,
                    read_data_percent,
                })
            }
            None => None,
        };
        let drill = match p.drill {
            Some(d) => self.drill(name, d)?,
            None => DrillConfig::default(),
        };
        Ok(PlanConfig {
            source: p.source.into_inner(),
            repositories: repos,
            copy_to,
            rpo,
            rto,
            schedule,
            schedule_derived: derived,
            jitter,
            tags: p.tags,
            mode,
            retention,
            verify,
            drill,
            detect,
        })
    }

    /// A whole number in `min..=max` for `key`, or `default`.
    fn count(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: u64,
    ) -> Result<u64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        if range.contains(v.get_ref()) {
            Ok(*v.get_ref() as u64)
        } else {
            Err(self.at(
                v,
                key,
                format!(
                    "{} is out of range: a whole number from {} to {}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            ))
        }
    }

    fn detect(&self, name: &str, p: &RawPlan) -> Result<Option<DetectConfig>, ConfigError> {
        if p.detect == Some(false) {
            return Ok(None);
        }
        let key = |k: &str| format!("plan.{name}.{k}");
        let d = DetectConfig::default();
        let share = self.percent(&p.detect_share, &key("detect-share"), d.share_percent)?;
        if share == 0.0 {
            let s = p.detect_share.as_ref().expect("0 only when given");
            return Err(self.at(
                s,
                &key("detect-share"),
                "must be more than 0% (every backup would be suspect); to switch detection off write detect = false",
            ));
        }
        Ok(Some(DetectConfig {
            share_percent: share,
            min_files: self.count(
                &p.detect_min_files,
                &key("detect-min-files"),
                1..=i64::MAX,
                d.min_files,
            )?,
            stable_share_percent: self.percent(
                &p.detect_stable_share,
                &key("detect-stable-share"),
                d.stable_share_percent,
            )?,
            stable_days: self.count(
                &p.detect_stable_days,
                &key("detect-stable-days"),
                1..=36_500,
                d.stable_days.into(),
            )? as u32,
            protect_days: self.count(
                &p.detect_protect_days,
                &key("detect-protect-days"),
                1..=36_500,
                d.protect_days.into(),
            )? as u32,
        }))
    }

    /// A percentage from 0% to 100% (`"5%"` or `"5"`), or `default`.
    fn percent(
        &self,
        s: &Option<Spanned<String>>,
        key: &str,
        default: f64,
    ) -> Result<f64, ConfigError> {
        let Some(s) = s else { return Ok(default) };
        s.get_ref()
            .trim()
            .trim_end_matches('%')
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| self.at(s, key, "a percentage from 0% to 100%, e.g. \"5%\""))
    }

    fn drill(&self, name: &str, d: RawDrill) -> Result<DrillConfig, ConfigError> {
        let key = |k: &str| format!("plan.{name}.drill.{k}");
        let every = d
            .every
            .as_ref()
            .map(|e| self.duration(e, &key("every"), false))
            .transpose()?;
        Ok(DrillConfig {
            every,
            scratch: d.scratch.map(|p| self.resolve(&p)),
            count_tolerance_percent: self.percent(
                &d.count_tolerance,
                &key("count-tolerance"),
                DRILL_COUNT_TOLERANCE,
            )?,
            data_sample_percent: self.percent(
                &d.data_sample,
                &key("data-sample"),
                DRILL_DATA_SAMPLE,
            )?,
            data_tolerance_percent: self.percent(
                &d.data_tolerance,
                &key("data-tolerance"),
                DRILL_DATA_TOLERANCE,
            )?,
            probes: d.probes,
            probe_database: d.probe_database.unwrap_or_else(|| "postgres".into()),
        })
    }

    fn alert(
        &self,
        name: &str,
        a: RawAlert,
        plans: &BTreeMap<String, PlanConfig>,
    ) -> Result<AlertConfig, ConfigError> {
        let key = |k: &str| format!("alert.{name}.{k}");
        let url = |s: &Option<Spanned<String>>, k: &str| -> Result<Option<String>, ConfigError> {
            match s {
                None => Ok(None),
                Some(s) => {
                    let t = s.get_ref().trim();
                    if t.starts_with("http://") || t.starts_with("https://") {
                        Ok(Some(t.to_string()))
                    } else {
                        Err(self.at(
                            s,
                            &key(k),
                            format!("{t:?} is not an http:// or https:// URL"),
                        ))
                    }
                }
            }
        };
        let webhook = url(&a.webhook, "webhook")?;
        let slack = url(&a.slack, "slack")?;
        let ping = url(&a.ping, "ping")?;
        let email = match a.email {
            Some(e) => {
                let smtp = e.smtp.get_ref().trim();
                if !(smtp.starts_with("smtp://") || smtp.starts_with("smtps://")) {
                    return Err(self.at(
                        &e.smtp,
                        &key("email.smtp"),
                        "an smtp://HOST:PORT or smtps://HOST:PORT URL",
                    ));
                }
                if e.to.is_empty() {
                    return Err(self.at(&e.smtp, &key("email.to"), "name at least one recipient"));
                }
                Some(EmailConfig {
                    to: e.to,
                    from: e.from,
                    smtp: smtp.to_string(),
                })
            }
            None => None,
        };
        if webhook.is_none() && slack.is_none() && ping.is_none() && email.is_none() {
            return Err(self.table(
                "alert",
                name,
                &format!("alert.{name}"),
                "give at least one of webhook, slack, ping and email",
            ));
        }
        let for_plans = match &a.plans {
            Some(list) => {
                if let Some(p) = list.get_ref().iter().find(|p| !plans.contains_key(*p)) {
                    return Err(self.at(
                        list,
                        &key("plans"),
                        format!(
                            "no plan named {p:?}; defined: {}",
                            list_or_none(plans.keys())
                        ),
                    ));
                }
                list.get_ref().clone()
            }
            None => Vec::new(),
        };
        let remind = match &a.remind {
            Some(r) => self.duration(r, &key("remind"), true)?,
            None => Duration::from_secs(DEFAULT_REMIND_SECS),
        };
        Ok(AlertConfig {
            webhook,
            slack,
            ping,
            email,
            plans: for_plans,
            remind,
        })
    }

    fn daemon(&self, d: RawDaemon) -> Result<DaemonConfig, ConfigError> {
        let listen = match &d.listen {
            Some(l) => {
                if l.get_ref().parse::<std::net::SocketAddr>().is_err() {
                    return Err(self.at(
                        l,
                        "daemon.listen",
                        format!(
                            "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:9898\"",
                            l.get_ref()
                        ),
                    ));
                }
                l.get_ref().clone()
            }
            None => DEFAULT_LISTEN.to_string(),
        };
        let max_concurrent = match &d.max_concurrent {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.at(m, "daemon.max-concurrent", "must be at least 1"));
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_CONCURRENT,
        };
        let time_zone = match &d.time_zone {
            Some(t) => {
                if jiff::tz::TimeZone::get(t.get_ref()).is_err() {
                    return Err(self.at(t, "daemon.time-zone", format!("{:?} is not a known time zone: an IANA name such as \"UTC\" or \"Europe/Berlin\"", t.get_ref())));
                }
                t.get_ref().clone()
            }
            None => jiff::tz::TimeZone::system()
                .iana_name()
                .unwrap_or("UTC")
                .to_string(),
        };
        let lock_retry = match &d.lock_retry {
            Some(l) => self.duration(l, "daemon.lock-retry", false)?,
            None => Duration::from_secs(DEFAULT_LOCK_RETRY_SECS),
        };
        Ok(DaemonConfig {
            listen,
            max_concurrent,
            time_zone,
            lock_retry,
        })
    }
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key at byte `offset`: the table header above it plus the key
/// on its line (for errors the TOML parser reports with a span only).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    for l in text[..line_start].lines() {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key.to_string(),
        (false, false) => format!("{table}.{key}"),
    }
}

/// Byte offset of the header `[kind.name]`, if the file has one.
fn header_offset(text: &str, kind: &str, name: &str) -> Option<usize> {
    let wanted = format!("{kind}.{name}");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim();
        let header: String = l
            .trim_matches(|c| c == '[' || c == ']')
            .split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".");
        if l.starts_with('[') && header == wanted {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}
