//! Opening the repositories a config names: the password by reference
//! (file, command, environment variable), then the storage and the key.

use std::sync::Arc;

use lifeboat_repo::Repository;
use lifeboat_storage::{Location, open_location};

use crate::config::{PasswordSource, RepositoryConfig};
use crate::error::{Error, Result};

/// The password of repository `name`, from where its config says.
pub fn password(name: &str, r: &RepositoryConfig) -> Result<Vec<u8>> {
    let err = |message: String| Error::Password {
        repository: name.to_string(),
        message,
    };
    match &r.password {
        PasswordSource::File(f) => {
            let bytes = std::fs::read(f)
                .map_err(|e| err(format!("cannot read password-file {}: {e}", f.display())))?;
            Ok(first_line(&bytes))
        }
        PasswordSource::Command(cmd) => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("LIFEBOAT_PASSWORD_FOR", &r.location)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .output()
                .map_err(|e| err(format!("cannot run password-command {cmd:?}: {e}")))?;
            if !out.status.success() {
                return Err(err(format!(
                    "password-command {cmd:?} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(first_line(&out.stdout))
        }
        PasswordSource::Env(var) => std::env::var(var)
            .map(String::into_bytes)
            .map_err(|_| err(format!("password-env {var} is not set"))),
    }
}

fn first_line(bytes: &[u8]) -> Vec<u8> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

/// Opens repository `name`: reads its password, reaches its storage and
/// opens a key.
pub async fn open(name: &str, r: &RepositoryConfig) -> Result<Arc<Repository>> {
    let password = password(name, r)?;
    let storage_err = |source| Error::Storage {
        repository: name.to_string(),
        source,
    };
    let location = Location::parse(&r.location).map_err(storage_err)?;
    let storage = open_location(&location).await.map_err(storage_err)?;
    let repo = Repository::open(storage, &password)
        .await
        .map_err(|source| Error::Repo {
            repository: name.to_string(),
            source,
        })?
        .with_user_disk_cache();
    Ok(Arc::new(repo))
}
