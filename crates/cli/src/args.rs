//! Command-line definitions (clap). Option structs of the libraries never
//! carry clap attributes; commands translate these into them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Encrypted, deduplicated backups you can prove you can restore",
    after_help = "Repository locations: a local path, s3://BUCKET/PREFIX?endpoint=URL&region=R \
(credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or sftp://USER@HOST:PORT/PATH?key=KEYFILE.\n\
Without -r and LIFEBOAT_REPO, a default local repository in your data directory is used."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Repository location (path or URL). `backup` takes it several times
    /// and writes one snapshot to each, reading the source once; `pg
    /// wal-push` archives into each.
    #[arg(short = 'r', long = "repo", env = "LIFEBOAT_REPO", global = true)]
    pub repo: Vec<String>,
    /// Read the password from this file (first line). With several --repo:
    /// once for all of them, or once per repository in the same order.
    #[arg(long, env = "LIFEBOAT_PASSWORD_FILE", global = true)]
    pub password_file: Vec<PathBuf>,
    /// Run this command and use the first line of its output as the
    /// password (it sees the repository in LIFEBOAT_PASSWORD_FOR).
    #[arg(long, env = "LIFEBOAT_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More logging on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Take no repository lock (restic's --no-lock). Read commands
    /// (snapshots, ls, restore, check, ...) never take one in lifeboat, so
    /// for them this changes nothing; commands that write refuse it.
    #[arg(long, global = true)]
    pub no_lock: bool,
    /// Read an S3 repository as it was at TIME (RFC 3339, e.g.
    /// 2026-12-06T04:00:00Z): each object as its newest version written
    /// then, ignoring later overwrites and delete markers. For recovery on
    /// a versioned (object-lock) bucket after an attacker deleted or
    /// overwrote objects; the repository is then read-only. Same as the
    /// location's `?as-of=TIME`.
    #[arg(long, value_name = "TIME", global = true)]
    pub storage_as_of: Option<String>,
    /// Where the repository's cold tier is, when not where `init --cold`
    /// recorded it (the same data reached another way, e.g. from another
    /// machine).
    #[arg(
        long,
        env = "LIFEBOAT_COLD_LOCATION",
        global = true,
        value_name = "LOCATION"
    )]
    pub cold_location: Option<String>,
    /// The operations config file (plans, repositories, alerts) read by
    /// `config`, `run`, `status`, `daemon` and `doctor`; default:
    /// LIFEBOAT_CONFIG, else /etc/lifeboat/lifeboat.toml for root or
    /// ~/.config/lifeboat/lifeboat.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Let `latest` mean the newest readable snapshot even when damaged
    /// snapshot records exist (one of them might be newer).
    #[arg(long, global = true)]
    pub skip_damaged: bool,
    /// Do not use the local metadata cache (copies of index objects,
    /// snapshot records and tree packs of S3 and SFTP repositories, kept in
    /// LIFEBOAT_CACHE_DIR, else $XDG_CACHE_HOME/lifeboat or
    /// ~/.cache/lifeboat).
    #[arg(long, env = "LIFEBOAT_NO_CACHE", global = true)]
    pub no_cache: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up files and directories (or a stream with --stdin).
    Backup(BackupArgs),
    /// Restore a snapshot (or part of it) into a directory.
    Restore(RestoreArgs),
    /// Write one file of a snapshot to stdout.
    Dump(DumpArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List files in a snapshot.
    Ls(LsArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Find files by name across all snapshots: when they appeared, changed, disappeared.
    Find(FindArgs),
    /// Repository statistics.
    Stats(StatsArgs),
    /// Add, remove or set the tags of snapshots (rewrites their records).
    Tag(TagArgs),
    /// Remove stale repository locks (a crashed backup's or prune's),
    /// showing each holder.
    Unlock(UnlockArgs),
    /// Verify the repository; with --read-data also every blob's content.
    Check(CheckArgs),
    /// Repair repository metadata.
    Repair(RepairArgs),
    /// Manage the passwords (key files) that open the repository.
    Key(KeyArgs),
    /// Copy snapshots to another repository (re-encrypted under its key).
    Copy(CopyArgs),
    /// Remove snapshots (their records only) by a retention policy, per source.
    Forget(ForgetArgs),
    /// Delete data no snapshot uses; repack mostly-unused packs.
    Prune(PruneArgs),
    /// PostgreSQL: base backups, WAL archive, point-in-time restore, dumps.
    Pg(PgArgs),
    /// The audit log: who changed the repository, and what was deleted when.
    Audit(AuditArgs),
    /// Compare snapshots with the one before of the same source for signs
    /// of ransomware, as a backup does (for write-only keys' snapshots,
    /// which no backup checked); tag suspect ones and protect the one
    /// before. Needs a full key.
    Detect(DetectArgs),
    /// Keep a snapshot whatever `forget`'s policy says, until a date.
    Protect(ProtectArgs),
    /// Remove a snapshot's protection.
    Unprotect(UnprotectArgs),
    /// S3 Object Lock of the repository's objects (`init --object-lock`).
    Lock(LockArgs),
    /// Check or show the operations config file (--config).
    Config(crate::ops::ConfigArgs),
    /// Run one plan of the config now: backup, copies, retention and
    /// verification when due.
    Run(crate::ops::RunArgs),
    /// Every plan: last success against its RPO, next run, copies, 3-2-1.
    Status(crate::ops::StatusArgs),
    /// Run every plan on its schedule; serve /metrics, /healthz, /api/status.
    Daemon(crate::ops::DaemonArgs),
    /// Serve the repository's storage (-r) over HTTP to clients, each with
    /// a role (full, append-only, read-only) granted by its token; clients
    /// use `-r lifeboat+http://HOST:PORT/`.
    Serve(ServeArgs),
    /// Audit the setup: list its gaps, most dangerous first, each with its
    /// fix (exit 19 when there are any).
    Doctor(crate::ops::DoctorArgs),
    /// Restore drill of a plan: restore into a scratch place, prove the
    /// copy, measure the time to it against the RTO, clean up.
    Drill(crate::drill::DrillArgs),
    /// Print the runbook generated from the config and the repositories:
    /// one section per incident scenario, every command ready to paste.
    Runbook(crate::runbook::RunbookArgs),
    /// Incident notices (open, update, resolve) to the configured
    /// audiences, the incident log and the static status page.
    Incident(crate::runbook::IncidentArgs),
    /// Print the version and build details (commit, compiler, target).
    Version,
    /// Print a shell completion script, e.g. `lifeboat completions bash >
    /// /etc/bash_completion.d/lifeboat`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `lifeboat man > lifeboat.1`.
    Man,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// zstd compression level for new data (0 disables compression).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compression: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pack_size_mib: u32,
    /// Use the chunker parameters (sizes and seed) of this repository, so both
    /// chunk alike and `copy` between them deduplicates well.
    #[arg(long, value_name = "REPO")]
    pub copy_chunker_params_from: Option<String>,
    /// Password file of the --copy-chunker-params-from repository (default:
    /// LIFEBOAT_FROM_PASSWORD, else this repository's password).
    #[arg(long, env = "LIFEBOAT_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Keep data packs in this cold tier (path or URL, e.g. a second bucket
    /// or s3://BUCKET/PREFIX?storage-class=GLACIER_IR); config, keys, index,
    /// snapshot records and directory trees stay in the repository.
    #[arg(long, value_name = "LOCATION")]
    pub cold: Option<String>,
    /// S3 only: lock every object lifeboat writes for DAYS with S3 Object
    /// Lock (the bucket must have been created with object lock; its
    /// default retention is set to this). `prune` and `lifeboat lock
    /// extend` keep live data locked.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub object_lock: Option<u32>,
    /// Object lock mode: `governance` (accounts with
    /// s3:BypassGovernanceRetention can still remove a version) or
    /// `compliance` (nobody can before its date).
    #[arg(long, value_name = "MODE", default_value = "governance", requires = "object_lock",
          value_parser = ["governance", "compliance"])]
    pub lock_mode: String,
    /// Let this repository take write-only keys (`key add --write-only`):
    /// hosts that can add snapshots but read none, not even their own
    /// (format version 4, read by lifeboat builds since write-only keys).
    #[arg(long)]
    pub write_only_keys: bool,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(subcommand)]
    pub command: LockCommand,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Extend the object-lock retention of every current object to DAYS
    /// (the repository's setting) from now; `prune` does this too.
    Extend,
    /// Put the repository back as it was at TIME after an attacker
    /// deleted or overwrote objects: every object deleted or overwritten
    /// since gets its version of that time copied back on top (a new
    /// version, locked again), and objects added since are hidden behind
    /// a delete marker (audit records excepted). Nothing is destroyed.
    /// Full key only.
    Restore(LockRestoreArgs),
}

#[derive(Debug, Args)]
pub struct LockRestoreArgs {
    /// The point in time to go back to (RFC 3339, e.g.
    /// 2026-12-06T04:00:00Z): the time `--storage-as-of TIME` showed a
    /// good repository.
    #[arg(long, value_name = "TIME")]
    pub as_of: String,
    /// Only say what would change.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Repository to copy from (path or URL).
    #[arg(long, value_name = "REPO")]
    pub from: String,
    /// Repository to copy to (default: -r/--repo or LIFEBOAT_REPO); it is
    /// opened with the main password options.
    #[arg(long, value_name = "REPO")]
    pub to: Option<String>,
    /// Password file of the source repository (default:
    /// LIFEBOAT_FROM_PASSWORD, else the main password).
    #[arg(long, env = "LIFEBOAT_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Snapshots to copy (id, unique prefix or `latest`); default: every
    /// snapshot of the source not yet in the target.
    pub snapshots: Vec<String>,
    /// Do not copy the PostgreSQL WAL archive. By default, after the
    /// snapshots, every archived WAL file the target's base backups need
    /// and the target lacks is copied too, so the copy supports
    /// point-in-time recovery on its own.
    #[arg(long)]
    pub no_wal: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the log: every record authentic and linked, none deleted,
    /// edited, reordered or forged, and the newest records this machine
    /// (and each --against copy target) saw still there. Exit 14 on any error.
    Verify {
        /// A copy target of this repository: the audit heads its `copy`
        /// records saw must still be in this log (repeatable).
        #[arg(long, value_name = "REPO")]
        against: Vec<String>,
        /// Password file of the --against repositories (default:
        /// LIFEBOAT_FROM_PASSWORD, else the main password).
        #[arg(long, value_name = "FILE")]
        against_password_file: Option<PathBuf>,
    },
    /// List the records, oldest first.
    Log {
        /// Only records from this time on: a date (2026-12-01), a time
        /// (RFC 3339) or a duration back from now (7d, 12h).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only these operations (repeatable): init, backup, copy, forget,
        /// prune, repair-index, key-add, key-remove, key-passwd, protect,
        /// unprotect, lock-extend.
        #[arg(long = "op", value_name = "OP")]
        ops: Vec<String>,
    },
    /// What was deleted: snapshots forgotten (by whom, when, what they
    /// were), prunes and key removals, and the paths that disappeared
    /// between consecutive snapshots of each source.
    Deleted {
        /// Only from this time on (as for `audit log`).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ProtectArgs {
    /// The snapshot (id, unique prefix or `latest`); omit with --list.
    #[arg(required_unless_present = "list")]
    pub snapshot: Option<String>,
    /// Until when: a date (2027-01-31), a time (RFC 3339) or a duration
    /// from now (30d, 1y).
    #[arg(long, value_name = "WHEN", required_unless_present = "list")]
    pub until: Option<String>,
    /// Why (recorded with the protection and in the audit log).
    #[arg(long, default_value = "manual")]
    pub reason: String,
    /// List the protections in force instead.
    #[arg(long, conflicts_with_all = ["snapshot", "until"])]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct UnprotectArgs {
    /// The snapshot (id, unique prefix or `latest`).
    pub snapshot: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum ModeArg {
    Full,
    #[default]
    Incremental,
    Differential,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up (with --stdin-from-command: the
    /// command and its arguments, after `--`).
    #[arg(required_unless_present_any = ["stdin", "files_from", "files_from_raw"])]
    pub paths: Vec<PathBuf>,
    /// Also back up the paths listed in this file, one per line (empty
    /// lines and lines starting with # are ignored); `-` reads standard
    /// input. Repeatable.
    #[arg(long, value_name = "FILE", conflicts_with = "stdin")]
    pub files_from: Vec<PathBuf>,
    /// Like --files-from, but the paths are separated by NUL bytes and
    /// taken as they are (any byte but NUL; `find -print0` writes this).
    #[arg(long, value_name = "FILE", conflicts_with = "stdin")]
    pub files_from_raw: Vec<PathBuf>,
    /// Read the source and count what would be added, but write nothing
    /// to the repository (no lock, no data, no snapshot).
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Wait up to this long for a prune that holds the repository (e.g. 30m,
    /// 2h, 90s) instead of failing at once with exit 17.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retry_lock: Option<std::time::Duration>,
    /// Back up standard input as one file.
    #[arg(long, conflicts_with = "paths")]
    pub stdin: bool,
    /// Run the command given as the arguments (after `--`) and back up its
    /// standard output as one file; the snapshot is saved only if the
    /// command exits with status 0.
    #[arg(long, conflicts_with = "stdin")]
    pub stdin_from_command: bool,
    /// File name for --stdin and --stdin-from-command.
    #[arg(long, default_value = "stdin")]
    pub stdin_filename: String,
    /// full: read everything; incremental: compare with the latest snapshot of
    /// the same source; differential: compare with the latest full one.
    #[arg(long, value_enum, default_value_t = ModeArg::Incremental)]
    pub mode: ModeArg,
    /// Exclude paths matching this glob: without / it matches names
    /// anywhere, starting with / the absolute path, and a relative one
    /// with / inside (proj/build) those trailing components at any depth.
    #[arg(long = "exclude", short = 'e')]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file (one per line, # comments).
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Skip the contents of directories holding a valid CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Do not cross filesystem boundaries.
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// zstd level for this backup (overrides the repository default).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compression: Option<i32>,
    /// Do not compare the new snapshot with its parent for signs of
    /// ransomware (files that stopped compressing, mass renames).
    #[arg(long)]
    pub no_detect: bool,
    #[command(flatten)]
    pub detect: DetectThresholds,
}

/// The ransomware check's thresholds (`backup` and `detect`).
#[derive(Debug, Args)]
pub struct DetectThresholds {
    /// Share of the parent's files that became incompressible, or were
    /// renamed with a new extension, that makes the snapshot suspect.
    #[arg(long, default_value = "10%", value_name = "PERCENT")]
    pub detect_share: String,
    /// Fewer affected files than this never make a snapshot suspect.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub detect_min_files: u64,
    /// Days the snapshot before a suspect one stays protected.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub detect_protect_days: u32,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Snapshots to check (ids, unique prefixes or `latest`); none: the
    /// newest snapshot of every source.
    pub snapshots: Vec<String>,
    /// Check every snapshot that has a predecessor of its source.
    #[arg(long, conflicts_with = "snapshots")]
    pub all: bool,
    /// Report only: tag nothing, protect nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub detect: DetectThresholds,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id (or unique prefix), or `latest` (see --host, --tag,
    /// --path); `SNAPSHOT:SUBPATH` (e.g. `latest:/home/me`) names a
    /// directory inside it, which then stands for the snapshot's root.
    pub snapshot: OsString,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
    /// Directory to restore into.
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Restore only these snapshot paths or globs (repeatable).
    #[arg(long)]
    pub include: Vec<OsString>,
    /// Skip these snapshot paths or globs (repeatable).
    #[arg(long)]
    pub exclude: Vec<OsString>,
    /// Replace existing files in the target.
    #[arg(long)]
    pub overwrite: bool,
    /// Skip files already identical in the target; rewrite the others.
    #[arg(long)]
    pub delta: bool,
    /// After restoring, read every restored file back and compare it with
    /// the snapshot's content hashes; differences are listed and the exit
    /// code is 3.
    #[arg(long)]
    pub verify: bool,
    /// Print which packs the restore would read (and from which tier, how
    /// many bytes), then stop: nothing is read from packs or written.
    #[arg(long)]
    pub plan_only: bool,
    /// When restoring as root, restore owners, setuid/setgid bits and
    /// security.* attributes even from a snapshot not made by root of a
    /// host (made by another user, in a user namespace, or by an older
    /// version). Without it such files are restored owned by you, with
    /// those bits and attributes left off and listed.
    #[arg(long)]
    pub trust_snapshot_owner: bool,
    /// Files whose data is planned and fetched together (default
    /// 32,768). At most two batches are held, about 2 x 356 bytes a
    /// file. Batches follow the order of the data in the packs, so a
    /// smaller one costs few extra reads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_files: Option<u32>,
    /// Entries (files, directories, symlinks) selected and held at a time
    /// (default 131,072, about 81 bytes each): the snapshot is walked a
    /// part at a time, so a restore's memory does not grow with the
    /// number of files. A pack holding files of several parts is read
    /// once per part (only the blobs each part needs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub part_entries: Option<u32>,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Snapshot id (or unique prefix), or `latest` (see --host, --tag,
    /// --path); `SNAPSHOT:SUBPATH` (e.g. `latest:/home/me`) names a
    /// directory inside it, which then stands for the snapshot's root.
    pub snapshot: OsString,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
    /// Path inside the snapshot (as backed up, e.g. /etc/hosts): a file is
    /// written as it is, a directory (or /) as a tar stream.
    pub path: OsString,
}

/// Which snapshot `latest` means (restic's filters); an id or a prefix is
/// not filtered.
#[derive(Debug, Clone, Default, Args)]
pub struct SnapshotFilterArgs {
    /// With `latest`: the newest snapshot of this host.
    #[arg(long = "host", id = "filter_host", value_name = "HOST")]
    pub host: Option<String>,
    /// With `latest`: the newest snapshot with this tag (repeatable: every
    /// tag given).
    #[arg(long = "tag", id = "filter_tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// With `latest`: the newest snapshot that backed up this path, as
    /// `snapshots` lists it (repeatable: every path given).
    #[arg(long = "path", id = "filter_path", value_name = "PATH")]
    pub paths: Vec<String>,
}

impl SnapshotFilterArgs {
    pub fn filter(&self) -> lifeboat_repo::SnapshotFilter {
        lifeboat_repo::SnapshotFilter {
            host: self.host.clone(),
            tags: self.tags.clone(),
            paths: self.paths.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id (or unique prefix), or `latest` (see --host, --tag,
    /// --path); `SNAPSHOT:SUBPATH` (e.g. `latest:/home/me`) names a
    /// directory inside it, which then stands for the snapshot's root.
    pub snapshot: OsString,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
    /// Directory inside the snapshot (default: everything).
    pub path: Option<OsString>,
    /// Only the directory itself, not its subdirectories.
    #[arg(long)]
    pub no_recursive: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older snapshot (id, unique prefix or `latest`; `SNAPSHOT:SUBPATH`
    /// compares only that directory).
    pub first: OsString,
    /// The newer snapshot (id, unique prefix or `latest`; `SNAPSHOT:SUBPATH`
    /// compares only that directory).
    pub second: OsString,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// Glob on the file name, or on the full path if it contains `/` (a
    /// name that is not UTF-8 matches exactly).
    pub pattern: OsString,
    /// Search only the snapshots these filters allow.
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Snapshots to change (id, unique prefix or `latest`, which --host,
    /// --tag and --path narrow).
    #[arg(required = true)]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
    /// Add this tag (repeatable; a,b adds both).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub add: Vec<String>,
    /// Remove this tag (repeatable; a,b removes both).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub remove: Vec<String>,
    /// Replace all tags with these (repeatable; a,b sets both; `--set ''`
    /// removes every tag).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub set: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, also those of running backups and prunes. Only
    /// when you know no lifeboat process uses the repository: a prune
    /// running beside an unlocked backup can delete the data the backup
    /// is about to reference.
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also download, decrypt and verify every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Like --read-data, for a subset of packs: a percentage (10%) or n/m
    /// (1/7). This machine remembers which packs it verified when, and a
    /// subset reads the least recently verified first, so seven runs of
    /// 1/7 cover every pack (without that local state: 10% is a random
    /// tenth, n/m the n-th of m fixed parts).
    #[arg(long, value_name = "PERCENT|N/M")]
    pub read_data_subset: Option<String>,
    /// Threads verifying packs at once (default: the available cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub read_workers: Option<u32>,
    /// Most MiB of downloaded packs held at once (default: one pack per
    /// worker plus one, between 32 MiB and 1 GiB).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub read_memory: Option<u64>,
    /// Coverage counts packs verified within this many days (default 7).
    #[arg(long, value_name = "DAYS", default_value_t = lifeboat_repo::DEFAULT_COVERAGE_DAYS)]
    pub coverage_days: u32,
    /// bench/ only: time hashing, decrypting, decompressing and verifying
    /// every pack on all workers, packs already in memory (the machine's
    /// ceiling for --read-data), instead of checking.
    #[arg(long, hide = true)]
    pub measure_ceiling: bool,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairWhat,
}

#[derive(Debug, Subcommand)]
pub enum RepairWhat {
    /// Rebuild the index from the packs' own trailers.
    Index,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Add a password (new key file wrapping the same master key).
    Add {
        /// Read the new password from this file instead of a prompt / LIFEBOAT_NEW_PASSWORD.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// What the new key may do: `full` (everything), `append-only`
        /// (back up and read; never forget, prune, remove keys, change
        /// protections or rewrite records) or `read-only`.
        #[arg(long, default_value = "full", value_parser = parse_role)]
        role: lifeboat_repo::Role,
        /// A write-only key, for a backup host: it can add snapshots but
        /// cannot read any snapshot, tree or file content (restores need a
        /// full key, held elsewhere). Needs `init --write-only-keys`.
        #[arg(long)]
        write_only: bool,
    },
    /// List key files.
    List,
    /// Remove a key file by id (prefix).
    Remove {
        /// Key file id or unique prefix (see `key list`).
        id: String,
    },
    /// Change the password of the key in use.
    Passwd {
        /// Read the new password from this file instead of a prompt / LIFEBOAT_NEW_PASSWORD.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Remove these snapshot records (ids or unique prefixes), damaged
    /// ones included, instead of applying a policy.
    #[arg(value_name = "ID", conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within", "keep_tags", "hosts", "tags", "paths", "allow_empty_source"])]
    pub ids: Vec<String>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest snapshot of each of the N newest hours (UTC).
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<usize>,
    /// Keep the newest snapshot of each of the N newest days (UTC).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// Keep the newest snapshot of each of the N newest ISO weeks (UTC).
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// Keep the newest snapshot of each of the N newest months (UTC).
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// Keep the newest snapshot of each of the N newest years (UTC).
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<usize>,
    /// Keep snapshots this recent, counted back from the source's newest
    /// (e.g. 12h, 7d, 2w, 6m, 1y; m = 30 days).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Show what would be forgotten and why the rest is kept; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Allow the policy to forget every snapshot of a source.
    #[arg(long)]
    pub allow_empty_source: bool,
    /// Only consider snapshots of this host (repeatable: any of them).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only consider snapshots with these tags (comma-separated: all of
    /// them; repeatable: any of the lists).
    #[arg(long = "tag", value_name = "TAG[,TAG...]")]
    pub tags: Vec<String>,
    /// Only consider snapshots whose paths include this one (repeatable:
    /// all of them).
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// Run prune afterwards.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Wait up to this long for backups that hold the repository (e.g. 30m,
    /// 2h, 90s) instead of failing at once with exit 17.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retry_lock: Option<std::time::Duration>,
    /// Repack packs whose unused share is above this, e.g. 10%.
    #[arg(long, default_value = "10%", value_name = "PERCENT")]
    pub max_unused: String,
    /// Repack at most this many bytes of packs, e.g. 2G or 500M (default: no limit).
    #[arg(long, value_name = "SIZE")]
    pub max_repack: Option<String>,
    /// Show what would be deleted and rewritten; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

// ------------------------------------------------------------ lifeboat pg

#[derive(Debug, Args)]
pub struct PgArgs {
    #[command(subcommand)]
    pub command: PgCommand,
}

#[derive(Debug, Args)]
pub struct DbArg {
    /// Connection string as libpq takes it: a URL
    /// (postgresql://user@host:port/db; an empty host means the local
    /// socket, or ?host=/socket/dir) or key=value pairs ("host=/run/postgresql
    /// dbname=app"); what it leaves out comes from the PG* environment
    /// variables.
    #[arg(long = "db", env = "LIFEBOAT_PG_URL")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    /// files when the server's data directory is on this machine and
    /// readable and archiving is on; stream otherwise.
    Auto,
    /// Read the data directory directly, in parallel, between
    /// pg_backup_start and pg_backup_stop.
    Files,
    /// pg_basebackup's tar stream (works against a remote server).
    Stream,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Promote,
    Pause,
    Shutdown,
}

#[derive(Debug, Subcommand)]
pub enum PgCommand {
    /// Take a physical base backup into a snapshot.
    Backup {
        #[command(flatten)]
        db: DbArg,
        /// full, incremental or differential (recorded; the repository
        /// stores only chunks it does not have in every mode).
        #[arg(long, value_enum, default_value_t = ModeArg::Incremental)]
        mode: ModeArg,
        /// Tag the snapshot (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Host name to record (default: this machine's).
        #[arg(long)]
        host: Option<String>,
        /// zstd level for this backup (overrides the repository default).
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=22))]
        compression: Option<i32>,
        /// Wait for a spread checkpoint instead of an immediate one.
        #[arg(long)]
        spread_checkpoint: bool,
        /// How to read the cluster.
        #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
        method: MethodArg,
    },
    /// archive_command: store a WAL file (and other ready ones) in the repository.
    WalPush {
        /// PostgreSQL's %p.
        path: PathBuf,
        /// Most WAL files pushed per invocation (the ready ones after %p).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// WAL files compressed and uploaded at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// restore_command: fetch a WAL file from the repository.
    WalFetch {
        /// PostgreSQL's %f.
        file: String,
        /// PostgreSQL's %p.
        path: PathBuf,
        /// Segments fetched ahead into pg_wal/lifeboat/fetched.
        #[arg(long, default_value_t = 8)]
        read_ahead: usize,
    },
    /// Restore a base backup and set up recovery to a point in time (or a standby).
    Restore(PgRestoreArgs),
    /// Check archiving settings, archiver health, WAL continuity and the PITR window.
    Check {
        #[command(flatten)]
        db: DbArg,
    },
    /// List the transactions that committed or aborted in a time window,
    /// read from the archived WAL with PostgreSQL's pg_waldump: their ids
    /// (for `pg restore --target-xid ID --exclusive`), times and the
    /// relations they changed.
    Transactions {
        /// Start of the window (RFC 3339, e.g. 2026-01-31T11:55:00Z).
        #[arg(long)]
        from: String,
        /// End of the window (RFC 3339).
        #[arg(long)]
        to: String,
        /// The cluster, when the repository holds base backups of several.
        #[arg(long)]
        system_id: Option<u64>,
    },
    /// Delete archived WAL that no base backup in the repository needs.
    ExpireWal {
        /// Show what would be deleted.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Logical dump (pg_dump, custom format, uncompressed so it deduplicates).
    Dump {
        #[command(flatten)]
        db: DbArg,
        /// full, incremental or differential (recorded; storage is
        /// deduplicated in every mode).
        #[arg(long, value_enum, default_value_t = ModeArg::Incremental)]
        mode: ModeArg,
        /// Tag the snapshot (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Host name to record (default: this machine's).
        #[arg(long)]
        host: Option<String>,
    },
    /// Restore a logical dump into a database with pg_restore.
    RestoreDump {
        /// Dump snapshot id, prefix or `latest`.
        snapshot: String,
        #[command(flatten)]
        db: DbArg,
        /// Drop objects before recreating them.
        #[arg(long)]
        clean: bool,
        /// Do not restore object ownership.
        #[arg(long)]
        no_owner: bool,
    },
}

#[derive(Debug, Args)]
pub struct PgRestoreArgs {
    /// New (or empty) data directory.
    #[arg(long)]
    pub to: PathBuf,
    /// Recover to this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, group = "target")]
    pub target_time: Option<String>,
    /// Recover to this LSN (e.g. 0/3000060).
    #[arg(long, group = "target")]
    pub target_lsn: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, group = "target")]
    pub target_name: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, group = "target")]
    pub target_xid: Option<String>,
    /// What the server does at the target.
    #[arg(long, value_enum, default_value_t = ActionArg::Promote)]
    pub target_action: ActionArg,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub exclusive: bool,
    /// A warm standby that keeps replaying WAL from the repository.
    #[arg(long, conflicts_with = "target")]
    pub standby: bool,
    /// Use this base backup instead of the newest before the target.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// The cluster, when the repository holds base backups of several.
    #[arg(long)]
    pub system_id: Option<u64>,
    /// Extra setting for postgresql.auto.conf, e.g. --set port=5433 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
    /// Start the server (pg_ctl) and wait until recovery has finished.
    #[arg(long)]
    pub start: bool,
    /// Read-ahead of the restore_command written (segments).
    #[arg(long, default_value_t = 8)]
    pub read_ahead: usize,
}

/// A duration as the config file writes them (`90s`, `30m`, `2h`, `1d`,
/// `1w`, sums such as `1h30m`): one parser for the command line and
/// `lifeboat.toml` ([`lifeboat_ops::duration`]).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    lifeboat_ops::duration::Duration::parse(s)
        .map(|d| std::time::Duration::from_secs(d.seconds()))
        .ok_or_else(|| {
            format!("{s:?} is not a duration: give numbers with s, m, h, d or w (e.g. 30m, 1h30m)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and argument has a description in `--help` (and so in
    /// the man page and completions).
    #[test]
    fn every_command_and_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "lifeboat", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:#?}");
    }

    #[test]
    fn help_lists_global_options_apart() {
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("snapshots")
            .expect("snapshots")
            .render_help()
            .to_string();
        let global = help
            .find("Global options:")
            .expect("a Global options heading");
        let own = help.find("--host").expect("the command's own --host");
        assert!(own < global, "{help}");
        assert!(help[global..].contains("--repo"), "{help}");
    }
}

fn parse_role(s: &str) -> Result<lifeboat_repo::Role, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (put a TLS reverse proxy in front to
    /// serve beyond a trusted network).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8765")]
    pub listen: String,
    /// A client: its name, role (full, append-only or read-only) and a file
    /// holding its token (first line, at least 16 characters). Repeat for
    /// each client.
    #[arg(long = "client", value_name = "NAME:ROLE:TOKENFILE", required = true)]
    pub clients: Vec<String>,
    /// Also append a line for every refused request to this file (they go
    /// to stderr in any case).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}
