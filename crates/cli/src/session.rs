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
use lifeboat_repo::{InitOptions, KdfParams, Repository};
use lifeboat_storage::{DynStorage, Location, open_location};

use crate::args::{Global, InitArgs};
use crate::exit::{self, cli_error};

/// Where the repository is, and whether it is the built-in default.
pub struct Target {
    pub location: Location,
    pub display: String,
    pub default: Option<DefaultRepo>,
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

pub fn target(g: &Global) -> Result<Target> {
    match &g.repo {
        Some(r) => Ok(Target {
            location: Location::parse(r)?,
            display: r.clone(),
            default: None,
        }),
        None => {
            let d = DefaultRepo::get()?;
            Ok(Target {
                location: Location::Local(d.path.clone()),
                display: d.path.display().to_string(),
                default: Some(d),
            })
        }
    }
}

pub async fn storage(t: &Target) -> Result<DynStorage> {
    Ok(open_location(&t.location).await?)
}

/// Reads the password from the configured source.
pub fn password(g: &Global, t: &Target, confirm: bool) -> Result<Vec<u8>> {
    if let Some(file) = &g.password_file {
        return read_password_file(file);
    }
    if let Some(cmd) = &g.password_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running password command {cmd:?}"))?;
        if !out.status.success() {
            return Err(cli_error(
                exit::WRONG_PASSWORD,
                format!("password command {cmd:?} failed ({})", out.status),
            ));
        }
        return Ok(first_line(&out.stdout));
    }
    if let Ok(p) = std::env::var("LIFEBOAT_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if let Some(d) = &t.default
        && d.password_file.exists()
    {
        return read_password_file(&d.password_file);
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
    Ok(first_line(&bytes))
}

fn first_line(bytes: &[u8]) -> Vec<u8> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

/// KDF cost for new key files. `LIFEBOAT_INSECURE_TEST_KDF=1` selects
/// deliberately weak parameters so test suites run fast; never use it for
/// real data.
pub fn kdf_params() -> KdfParams {
    if std::env::var("LIFEBOAT_INSECURE_TEST_KDF").as_deref() == Ok("1") {
        KdfParams::INSECURE_TEST
    } else {
        KdfParams::DEFAULT
    }
}

/// Opens the repository named by the global options.
pub async fn open(g: &Global) -> Result<Arc<Repository>> {
    let t = target(g)?;
    let storage = storage(&t).await?;
    let password = password(g, &t, false)?;
    Ok(Arc::new(Repository::open(storage, &password).await?))
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

fn rand_bytes() -> [u8; 32] {
    // The password of the default repository: 256 random bits.
    rand::random()
}

pub async fn init(g: &Global, a: InitArgs) -> Result<i32> {
    let t = target(g)?;
    let storage = storage(&t).await?;
    let chunker = match &a.copy_chunker_params_from {
        Some(from) => {
            let from = crate::copy::open_source(g, from, a.from_password_file.as_deref()).await?;
            Some(from.config().chunker)
        }
        None => None,
    };
    let password = password(g, &t, true)?;
    if password.is_empty() {
        return Err(cli_error(exit::GENERIC, "refusing an empty password"));
    }
    let repo = Repository::init(
        storage,
        &password,
        InitOptions {
            kdf: kdf_params(),
            compression_level: a.compression,
            pack_size: a.pack_size_mib * 1024 * 1024,
            chunker,
        },
    )
    .await?;
    if g.json {
        crate::output::json(&serde_json::json!({
            "repository": t.display,
            "repository_id": repo.config().repository_id.to_hex(),
            "key_id": repo.key_id().to_hex(),
        }))?;
    } else {
        outln!(
            "created repository {} at {}\nkeep the password safe: without it the data cannot be read",
            repo.config().repository_id.short(),
            t.display
        );
    }
    Ok(exit::OK)
}
