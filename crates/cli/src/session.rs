//! Finding the repository and its password, opening it, and `init`.
//!
//! Order of precedence: command-line flags, then environment variables
//! (clap reads `LIFEBOAT_REPO`, `LIFEBOAT_PASSWORD_FILE`,
//! `LIFEBOAT_PASSWORD_COMMAND`; `LIFEBOAT_PASSWORD` is read here), then the
//! default repository, then a prompt on a terminal.

use crate::output::outln;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_repo::{ColdInit, InitOptions, KdfParams, LocalState, Repository};
use lifeboat_storage::{DynStorage, Location, S3Options, open_location};

use crate::args::{Global, InitArgs};
use crate::exit::{self, cli_error};

/// Where the repository is, and whether it is the built-in default.
pub struct Target {
    pub location: Location,
    pub display: String,
    pub default: Option<DefaultRepo>,
    /// Position among the -r/--repo options (selects its --password-file).
    pub index: usize,
}

/// The zero-configuration repository used when none is named.
pub struct DefaultRepo {
    pub path: PathBuf,
    pub password_file: PathBuf,
}

impl DefaultRepo {
    fn get() -> Result<Self> {
        let data = dirs::data_dir()
            .context("cannot find a data directory; set -r/--repo or LIFEBOAT_REPO")?;
        let config = dirs::config_dir()
            .context("cannot find a config directory; set -r/--repo or LIFEBOAT_REPO")?;
        Ok(DefaultRepo {
            path: data.join("lifeboat").join("repository"),
            password_file: config.join("lifeboat").join("repository.password"),
        })
    }
}

/// The one repository a command works on.
pub fn target(g: &Global) -> Result<Target> {
    with_as_of(g, target_named(g)?)
}

/// `--storage-as-of` applied to a target: S3 locations only.
fn with_as_of(g: &Global, mut t: Target) -> Result<Target> {
    let Some(at) = &g.storage_as_of else {
        return Ok(t);
    };
    let at = lifeboat_storage::parse_as_of(at).map_err(|e| cli_error(exit::USAGE, e))?;
    match &mut t.location {
        Location::S3(o) => o.as_of = Some(at),
        _ => {
            return Err(cli_error(
                exit::USAGE,
                "--storage-as-of reads object versions, which only S3 repositories have",
            ));
        }
    }
    Ok(t)
}

fn target_named(g: &Global) -> Result<Target> {
    match g.repo.as_slice() {
        [] => {
            let d = DefaultRepo::get()?;
            Ok(Target {
                location: Location::Local(d.path.clone()),
                display: d.path.display().to_string(),
                default: Some(d),
                index: 0,
            })
        }
        [r] => {
            if g.password_file.len() > 1 {
                return Err(cli_error(
                    exit::USAGE,
                    format!(
                        "{} password files for one repository: give --password-file once (several are for several -r/--repo)",
                        g.password_file.len()
                    ),
                ));
            }
            target_at(r, 0)
        }
        _ => Err(cli_error(
            exit::USAGE,
            "this command works on one repository: give -r/--repo once (only `backup` and `pg wal-push` write to several)",
        )),
    }
}

/// Every repository named with -r/--repo (or the default one).
pub fn targets(g: &Global) -> Result<Vec<Target>> {
    if g.repo.len() <= 1 {
        return Ok(vec![target(g)?]);
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, r) in g.repo.iter().enumerate() {
        if !seen.insert(r) {
            return Err(cli_error(
                exit::USAGE,
                format!("repository {r} is named twice"),
            ));
        }
        out.push(with_as_of(g, target_at(r, i)?)?);
    }
    if g.password_file.len() > 1 && g.password_file.len() != out.len() {
        return Err(cli_error(
            exit::USAGE,
            format!(
                "{} password files for {} repositories: give one for all, or one per repository in the order of -r/--repo",
                g.password_file.len(),
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// A repository named on the command line; `index` is its position among
/// the -r/--repo options.
pub fn target_at(location: &str, index: usize) -> Result<Target> {
    let location_parsed = Location::parse(location)?;
    // The default repository named by its path is still the default one:
    // its password file applies (`copy --from ~/.local/share/lifeboat/repository`).
    let default = match &location_parsed {
        Location::Local(p) => DefaultRepo::get().ok().filter(|d| same_path(&d.path, p)),
        _ => None,
    };
    Ok(Target {
        location: location_parsed,
        display: location.to_string(),
        default,
        index,
    })
}

/// Whether two local paths name the same directory (both resolved when
/// they exist, else compared as absolute paths).
fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    let resolve = |p: &std::path::Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .ok()
    };
    resolve(a).is_some_and(|a| Some(a) == resolve(b))
}

pub async fn storage(t: &Target) -> Result<DynStorage> {
    Ok(open_location(&t.location).await?)
}

/// Reads the repository's config, failing with "no repository" (exit 10)
/// when the storage holds none, so a mistyped location is named as such
/// before any password is looked for or prompted. The bytes go to
/// [`Repository::open_with_config`]: the config is fetched once.
pub async fn require_repository(storage: &DynStorage) -> Result<bytes::Bytes> {
    Ok(Repository::read_config(storage).await?)
}

/// Reads the password from the configured source.
pub fn password(g: &Global, t: &Target, confirm: bool) -> Result<Vec<u8>> {
    let file = match g.password_file.as_slice() {
        [] => None,
        [one] => Some(one),
        several => several.get(t.index),
    };
    if let Some(file) = file {
        return read_password_file(file);
    }
    if let Some(cmd) = &g.password_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("LIFEBOAT_PASSWORD_FOR", &t.display)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running the password command ({})", program_of(cmd)))?;
        if !out.status.success() {
            // Only the program's name: its arguments may hold a secret.
            return Err(cli_error(
                exit::WRONG_PASSWORD,
                format!(
                    "the password command ({}) failed ({})",
                    program_of(cmd),
                    out.status
                ),
            ));
        }
        return Ok(password_line(&out.stdout));
    }
    if let Ok(p) = std::env::var("LIFEBOAT_PASSWORD") {
        return Ok(password_line(p.as_bytes()));
    }
    if let Some(d) = &t.default {
        if d.password_file.exists() {
            return read_password_file(&d.password_file);
        }
        if d.path.join("config").exists() {
            return Err(cli_error(
                exit::WRONG_PASSWORD,
                format!(
                    "the password file of the default repository, {}, is missing: put back \
                     your copy of it, or give the password with LIFEBOAT_PASSWORD, \
                     --password-file or --password-command",
                    d.password_file.display()
                ),
            ));
        }
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("password for {}: ", t.display))?;
        if confirm {
            let again = rpassword::prompt_password("enter it again: ")?;
            if again != p {
                return Err(cli_error(exit::GENERIC, "the passwords do not match"));
            }
        }
        return Ok(p.into_bytes());
    }
    Err(cli_error(
        exit::WRONG_PASSWORD,
        "no password given: set LIFEBOAT_PASSWORD, --password-file or --password-command",
    ))
}

pub fn read_password_file(file: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(file).map_err(|e| {
        cli_error(
            exit::WRONG_PASSWORD,
            format!("cannot read password file {}: {e}", file.display()),
        )
    })?;
    Ok(password_line(&bytes))
}

/// The password in what a file, a command or an environment variable
/// holds: its first line, without the line end (`\n` or `\r\n`). Every
/// way of giving a password (and a new password) goes through this one
/// function, so a file saved with Windows line ends opens the same way
/// whichever option reads it.
pub fn password_line(bytes: &[u8]) -> Vec<u8> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

/// The default repository's password file, when it is where this command
/// took the password from (no -p file, command or LIFEBOAT_PASSWORD).
pub fn default_password_file_in_use(g: &Global, t: &Target) -> Option<PathBuf> {
    if !g.password_file.is_empty()
        || g.password_command.is_some()
        || std::env::var_os("LIFEBOAT_PASSWORD").is_some()
    {
        return None;
    }
    t.default
        .as_ref()
        .map(|d| d.password_file.clone())
        .filter(|f| f.exists())
}

/// Writes `password` to a new file next to `file` (mode 0600, synced),
/// to be renamed over it by [`commit_password_file`] once the repository
/// accepts the new password.
pub fn stage_password_file(file: &std::path::Path, password: &[u8]) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let staged = file.with_extension(format!("new-{}", hex::encode(rand::random::<[u8; 4]>())));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("creating {}", staged.display()))?;
    let mut line = password.to_vec();
    line.push(b'\n');
    std::io::Write::write_all(&mut f, &line)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", staged.display()))?;
    Ok(staged)
}

/// Atomically replaces `file` with the staged copy and makes the rename
/// durable.
pub fn commit_password_file(staged: &std::path::Path, file: &std::path::Path) -> Result<()> {
    std::fs::rename(staged, file).with_context(|| {
        format!(
            "the password changed, but {} could not replace {}: the new password is in {}; \
             move it over the old file",
            staged.display(),
            file.display(),
            staged.display()
        )
    })?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
    }
    Ok(())
}

/// KDF cost for new key files: [`KdfParams::DEFAULT`], or in a build with
/// debug assertions (the test suites') the deliberately weak test
/// parameters when `LIFEBOAT_INSECURE_TEST_KDF=1`. A release build has no
/// such switch: it ignores the variable, with a warning, and never reads a
/// key file made with the weak parameters either.
pub fn kdf_params() -> KdfParams {
    let asked = std::env::var("LIFEBOAT_INSECURE_TEST_KDF").as_deref() == Ok("1");
    if insecure_test_kdf(asked, KdfParams::weak_test_params_accepted()) {
        KdfParams::INSECURE_TEST
    } else {
        if asked {
            tracing::warn!(
                "LIFEBOAT_INSECURE_TEST_KDF is ignored: this release build uses the default KDF"
            );
        }
        KdfParams::DEFAULT
    }
}

/// Whether new key files get the weak test parameters: only when asked
/// and only in a build that also reads them (debug assertions on).
fn insecure_test_kdf(asked: bool, debug_build: bool) -> bool {
    asked && debug_build
}

/// This machine's memory of repositories (the key that last opened one,
/// the snapshots seen), in the cache directory.
pub fn local_state() -> Option<LocalState> {
    LocalState::from_env()
}

/// Opens the repository named by the global options.
pub async fn open(g: &Global) -> Result<Arc<Repository>> {
    open_target(g, &target(g)?).await
}

/// Opens one repository with its password. `--cold-location` applies when
/// the command names one repository (it is that repository's cold tier).
pub async fn open_target(g: &Global, t: &Target) -> Result<Arc<Repository>> {
    let storage = storage(t).await?;
    let config = require_repository(&storage).await?;
    let password = password(g, t, false)?;
    let repo = Repository::open_with_config(storage, config, &password, local_state())
        .await?
        .with_user_disk_cache();
    tracing::info!(
        "opened repository {} (id {})",
        t.display,
        repo.config().repository_id.short()
    );
    if g.cold_location.is_some() && g.repo.len() > 1 {
        return Err(cli_error(
            exit::USAGE,
            "--cold-location (or LIFEBOAT_COLD_LOCATION) names the cold tier of one repository; \
             it cannot be used with several -r/--repo",
        ));
    }
    Ok(Arc::new(
        with_cold_location(repo, g.cold_location.as_deref())?.with_skip_damaged(g.skip_damaged),
    ))
}

/// Applies `--cold-location` to a repository with a cold tier. The cold
/// tier itself is opened only when a command first needs a data pack.
pub fn with_cold_location(repo: Repository, location: Option<&str>) -> Result<Repository> {
    match location {
        None => Ok(repo),
        Some(_) if !repo.has_cold_tier() => Err(cli_error(
            exit::USAGE,
            "--cold-location (or LIFEBOAT_COLD_LOCATION) was given, but this repository has no cold tier",
        )),
        Some(l) => Ok(repo.with_cold_location(l.to_string())?),
    }
}

/// Opens the cold tier named at `init --cold`, refusing the repository's
/// own location (the packs of both tiers would mix).
async fn cold_init(t: &Target, cold: &str) -> Result<ColdInit> {
    let location = Location::parse(cold)?;
    let base = |l: &Location| match l {
        Location::S3(o) => Location::S3(S3Options {
            storage_class: None,
            ..o.clone()
        }),
        other => other.clone(),
    };
    let same = match (&base(&location), &base(&t.location)) {
        (Location::Local(a), Location::Local(b)) => {
            std::path::absolute(a).ok() == std::path::absolute(b).ok()
        }
        (a, b) => a == b,
    };
    if same {
        return Err(cli_error(
            exit::USAGE,
            "--cold must name another location than the repository (another directory, bucket or prefix)",
        ));
    }
    Ok(ColdInit {
        location: location.to_string(),
        storage: open_location(&location).await?,
    })
}

/// Opens the repository, creating the default one on first use.
pub async fn open_or_create_default(g: &Global) -> Result<Arc<Repository>> {
    let t = target(g)?;
    if let Some(d) = &t.default
        && !d.path.join("config").exists()
    {
        return Ok(Arc::new(create_default(d, &t).await?));
    }
    open(g).await
}

async fn create_default(d: &DefaultRepo, t: &Target) -> Result<Repository> {
    use std::os::unix::fs::OpenOptionsExt;
    let password = if d.password_file.exists() {
        read_password_file(&d.password_file)?
    } else {
        let pw = hex::encode(rand_bytes());
        std::fs::create_dir_all(d.password_file.parent().expect("has parent"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&d.password_file)
            .with_context(|| format!("creating {}", d.password_file.display()))?;
        std::io::Write::write_all(&mut f, format!("{pw}\n").as_bytes())?;
        f.sync_all()?;
        pw.into_bytes()
    };
    let storage = storage(t).await?;
    let repo = Repository::init(
        storage,
        &password,
        InitOptions {
            kdf: kdf_params(),
            ..Default::default()
        },
    )
    .await?;
    eprintln!(
        "lifeboat: created the default repository at {}\n\
         lifeboat: its password is in {} -- keep a copy of that file somewhere safe (not on this disk): without it these backups cannot be read",
        d.path.display(),
        d.password_file.display()
    );
    Ok(repo)
}

/// `init` makes a repository in a new or empty directory only: files
/// already there (a mistyped path, a home directory) would mix with the
/// repository's, and a later prune or a user cleaning up could not tell
/// them apart. An existing repository is refused by the library (its own
/// message).
fn refuse_non_empty_directory(t: &Target) -> Result<()> {
    let Location::Local(path) = &t.location else {
        return Ok(());
    };
    if path.join("config").exists() {
        return Ok(());
    }
    let non_empty = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some());
    if non_empty {
        return Err(cli_error(
            exit::USAGE,
            format!(
                "{} is not empty: `init` creates a repository in a new or empty directory \
                 (name a new one, e.g. {}/lifeboat)",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

fn rand_bytes() -> [u8; 32] {
    // The password of the default repository: 256 random bits, from the
    // operating system like every key (docs/security.md §5).
    lifeboat_repo::os_random()
}

pub async fn init(g: &Global, a: InitArgs) -> Result<i32> {
    let t = target(g)?;
    refuse_non_empty_directory(&t)?;
    let storage = storage(&t).await?;
    let chunker = match &a.copy_chunker_params_from {
        Some(from) => {
            let from = crate::copy::open_source(g, from, a.from_password_file.as_deref()).await?;
            Some(from.config().chunker)
        }
        None => None,
    };
    let cold = match &a.cold {
        Some(c) => Some(cold_init(&t, c).await?),
        None => None,
    };
    let password = password(g, &t, true)?;
    if password.is_empty() {
        return Err(cli_error(exit::USAGE, "refusing an empty password"));
    }
    let repo = Repository::init(
        storage,
        &password,
        InitOptions {
            kdf: kdf_params(),
            compression_level: a.compression,
            pack_size: a.pack_size_mib * 1024 * 1024,
            chunker,
            cold,
            object_lock: a
                .object_lock
                .map(|days| lifeboat_repo::objectlock::ObjectLockConfig {
                    mode: lifeboat_storage::LockMode::parse(&a.lock_mode).expect("clap checked"),
                    days,
                }),
            write_only_keys: a.write_only_keys,
        },
    )
    .await?;
    if g.json {
        crate::output::json(&serde_json::json!({
            "repository": t.display,
            "repository_id": repo.config().repository_id.to_hex(),
            "key_id": repo.key_id().to_hex(),
            "cold_tier": repo.cold_location(),
            "object_lock": repo.config().object_lock,
            "write_only_keys": repo.config().write_only.is_some(),
        }))?;
    } else {
        outln!(
            "created repository {} at {}\nkeep the password safe: without it the data cannot be read",
            repo.config().repository_id.short(),
            t.display
        );
        if let Some(cold) = repo.cold_location() {
            outln!(
                "data packs go to the cold tier at {cold}; everything else (config, keys, index, \
                 snapshots, directory trees) stays at {}",
                t.display
            );
        }
        if let Some(lock) = repo.config().object_lock {
            outln!(
                "every object is locked for {} days ({} mode); `prune` and `lifeboat lock extend` \
                 keep live data locked",
                lock.days,
                lock.mode.as_str()
            );
        }
        if repo.config().write_only.is_some() {
            outln!(
                "this repository takes write-only keys: give a backup host one with \
                 `lifeboat key add --write-only`"
            );
        }
    }
    Ok(exit::OK)
}

/// The program a `--password-command` runs (its first word), for messages:
/// the rest may be a secret (a token, a password) and is never printed.
fn program_of(cmd: &str) -> &str {
    cmd.split_whitespace().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: the weak-KDF switch exists only where debug assertions
    /// are on; a release build ignores `LIFEBOAT_INSECURE_TEST_KDF=1`.
    #[test]
    fn the_weak_kdf_switch_is_only_in_debug_builds() {
        assert!(insecure_test_kdf(true, true));
        assert!(!insecure_test_kdf(true, false));
        assert!(!insecure_test_kdf(false, true));
        assert_eq!(
            KdfParams::weak_test_params_accepted(),
            cfg!(debug_assertions)
        );
    }
}
