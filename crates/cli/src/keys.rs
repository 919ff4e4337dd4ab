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
        let bytes = std::fs::read(f).map_err(|e| {
            cli_error(
                exit::GENERIC,
                format!("cannot read new password file {}: {e}", f.display()),
            )
        })?;
        return Ok(session::password_line(&bytes));
    }
    if let Ok(p) = std::env::var("LIFEBOAT_NEW_PASSWORD") {
        return Ok(session::password_line(p.as_bytes()));
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
        KeyAction::Add {
            new_password_file,
            role,
            write_only,
        } => {
            // Refused before a password is asked for.
            if write_only && role != lifeboat_repo::Role::Full {
                return Err(cli_error(
                    exit::USAGE,
                    "--write-only and --role cannot be combined: a write-only key can only add \
                     snapshots",
                ));
            }
            repo.require(lifeboat_repo::Permission::Full, "add keys")?;
            let pw = new_password(new_password_file.as_deref())?;
            if pw.is_empty() {
                return Err(cli_error(exit::USAGE, "refusing an empty password"));
            }
            let id = if write_only {
                keys::add_write_only(&repo, &pw, session::kdf_params()).await?
            } else {
                keys::add_with_role(&repo, &pw, session::kdf_params(), role).await?
            };
            let kind = if write_only { "write-only" } else { "full" };
            if g.json {
                crate::output::json(&serde_json::json!({
                    "added": id.to_hex(),
                    "role": role.as_str(),
                    "kind": kind,
                }))?;
            } else if write_only {
                outln!(
                    "added write-only key {}: a host holding it can add snapshots but read none; \
                     keep a full key off that host for restores",
                    id.short()
                );
            } else {
                outln!("added key {} ({role})", id.short());
            }
        }
        KeyAction::List => {
            let list = keys::list(&repo).await?;
            if g.json {
                crate::output::json(&list)?;
            } else {
                for k in list {
                    outln!(
                        "{} {} {:<11} {:<10} {}@{} created {}",
                        if k.current { "*" } else { " " },
                        &k.id[..8],
                        k.role.as_str(),
                        k.kind.as_str(),
                        k.user,
                        k.host,
                        k.created
                    );
                }
            }
        }
        KeyAction::Remove { id } => {
            repo.require(lifeboat_repo::Permission::Full, "remove keys")?;
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
            repo.require(
                lifeboat_repo::Permission::Full,
                "change its password (that deletes a key file)",
            )?;
            let pw = new_password(new_password_file.as_deref())?;
            if pw.is_empty() {
                return Err(cli_error(exit::USAGE, "refusing an empty password"));
            }
            // The default repository's password file is replaced with the
            // new password atomically: staged first, renamed over the old
            // file only once the repository accepts the new key.
            let t = session::target(g)?;
            let default_file = session::default_password_file_in_use(g, &t);
            let staged = match &default_file {
                Some(f) => Some(session::stage_password_file(f, &pw)?),
                None => None,
            };
            let id = match keys::change_password(&repo, &pw, session::kdf_params()).await {
                Ok(id) => id,
                Err(e) => {
                    if let Some(s) = &staged {
                        let _ = std::fs::remove_file(s);
                    }
                    return Err(e.into());
                }
            };
            outln!("password changed (new key {})", id.short());
            if let (Some(file), Some(staged)) = (&default_file, &staged) {
                session::commit_password_file(staged, file)?;
                outln!(
                    "{} now holds the new password: replace every copy of that file you keep \
                     elsewhere (off this disk) with it; the old copy no longer opens the repository",
                    file.display()
                );
            } else if let [file] = g.password_file.as_slice() {
                eprintln!(
                    "lifeboat: warning: {} still holds the OLD password: write the new one into \
                     it (and every copy of it) before the next command",
                    file.display()
                );
            }
        }
    }
    Ok(exit::OK)
}
