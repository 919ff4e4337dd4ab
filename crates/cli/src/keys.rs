//! `key add|list|remove|passwd`.

use crate::output::outln;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;
use lifeboat_repo::keys;

use crate::args::{Global, KeyAction, KeyArgs};
use crate::exit::{self, cli_error};
use crate::session;

fn new_password(file: Option<&Path>) -> Result<Vec<u8>> {
    if let Some(f) = file {
        let bytes = std::fs::read(f)
            .map_err(|e| cli_error(exit::GENERIC, format!("cannot read {}: {e}", f.display())))?;
        let line = bytes
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default()
            .to_vec();
        return Ok(line);
    }
    if let Ok(p) = std::env::var("LIFEBOAT_NEW_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("new password: ")?;
        let again = rpassword::prompt_password("enter it again: ")?;
        if p != again {
            return Err(cli_error(exit::GENERIC, "the passwords do not match"));
        }
        return Ok(p.into_bytes());
    }
    Err(cli_error(
        exit::USAGE,
        "no new password: use --new-password-file or LIFEBOAT_NEW_PASSWORD",
    ))
}

pub async fn run(g: &Global, a: KeyArgs) -> Result<i32> {
    let repo = session::open(g).await?;
    match a.action {
        KeyAction::Add { new_password_file } => {
            let pw = new_password(new_password_file.as_deref())?;
            if pw.is_empty() {
                return Err(cli_error(exit::USAGE, "refusing an empty password"));
            }
            let id = keys::add(&repo, &pw, session::kdf_params()).await?;
            if g.json {
                crate::output::json(&serde_json::json!({ "added": id.to_hex() }))?;
            } else {
                outln!("added key {}", id.short());
            }
        }
        KeyAction::List => {
            let list = keys::list(&repo).await?;
            if g.json {
                crate::output::json(&list)?;
            } else {
                for k in list {
                    outln!(
                        "{} {} {}@{} created {}",
                        if k.current { "*" } else { " " },
                        &k.id[..8],
                        k.user,
                        k.host,
                        k.created
                    );
                }
            }
        }
        KeyAction::Remove { id } => {
            // A key that does not exist is "not found" (exit 16), like a
            // snapshot; the library reports it as a generic invalid request.
            if !keys::list(&repo)
                .await?
                .iter()
                .any(|k| k.id.starts_with(&id))
            {
                return Err(cli_error(
                    exit::NOT_FOUND,
                    format!("no key matches {id:?} (list them with `lifeboat key list`)"),
                ));
            }
            let removed = keys::remove(&repo, &id).await?;
            outln!("removed key {}", removed.short());
        }
        KeyAction::Passwd { new_password_file } => {
            let pw = new_password(new_password_file.as_deref())?;
            if pw.is_empty() {
                return Err(cli_error(exit::USAGE, "refusing an empty password"));
            }
            let id = keys::change_password(&repo, &pw, session::kdf_params()).await?;
            outln!("password changed (new key {})", id.short());
        }
    }
    Ok(exit::OK)
}
