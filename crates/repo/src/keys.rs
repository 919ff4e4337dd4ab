//! Key management: several key files may wrap the one master key.

use lifeboat_storage::{Kind, ObjectKey};
use serde::Serialize;

use crate::audit;
use crate::keyfile::{KdfParams, KeyFile, KeyKind, Permission, Role};
use crate::limits::get_bounded;
use crate::repository::{Repository, blocking, write_key_file};
use crate::{Error, Id, Result};

#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub current: bool,
    pub created: jiff::Timestamp,
    pub host: String,
    pub user: String,
    /// What the key may do (`full` for key files written before roles).
    pub role: Role,
    /// `full` or `write-only`.
    pub kind: KeyKind,
}

/// Wraps the master key under a new password for a full key; returns the
/// new key file's id.
pub async fn add(repo: &Repository, new_password: &[u8], kdf: KdfParams) -> Result<Id> {
    add_with_role(repo, new_password, kdf, Role::Full).await
}

/// Wraps the master key under a new password for a key of `role`. Only a
/// full key manages keys.
pub async fn add_with_role(
    repo: &Repository,
    new_password: &[u8],
    kdf: KdfParams,
    role: Role,
) -> Result<Id> {
    repo.require(Permission::Full, "add keys")?;
    let key = repo.key().clone();
    let pw = new_password.to_vec();
    let kf = blocking(move || KeyFile::create_with_role(&key, &pw, kdf, role)).await??;
    let id = write_key_file(repo.storage(), &kf).await?;
    audit::append_after(
        repo,
        audit::Entry::new("key-add")
            .arg("key", id.to_hex())
            .arg("role", role.as_str()),
    )
    .await;
    Ok(id)
}

/// Adds a write-only key (docs/format.md §18) under a new password:
/// a host holding it can add snapshots but read none. Needs a full key of
/// a repository created to take write-only keys (`init --write-only-keys`).
pub async fn add_write_only(repo: &Repository, new_password: &[u8], kdf: KdfParams) -> Result<Id> {
    repo.require(Permission::Full, "add keys")?;
    if !repo.key().takes_write_only_keys() {
        return Err(Error::BadInput(
            "this repository does not take write-only keys: they exist only in repositories \
             created with `lifeboat init --write-only-keys` (format version 4); create one and \
             `lifeboat copy` the snapshots into it"
                .into(),
        ));
    }
    let key = repo.key().write_only_key()?;
    let pw = new_password.to_vec();
    let kf = blocking(move || KeyFile::create(&key, &pw, kdf)).await??;
    let id = write_key_file(repo.storage(), &kf).await?;
    audit::append_after(
        repo,
        audit::Entry::new("key-add")
            .arg("key", id.to_hex())
            .arg("kind", KeyKind::WriteOnly.as_str()),
    )
    .await;
    Ok(id)
}

pub async fn list(repo: &Repository) -> Result<Vec<KeyInfo>> {
    let mut out = Vec::new();
    for info in repo.storage().list(Kind::Keys).await? {
        // Key files are named by the hash of their bytes; anything else in
        // `keys/` (a stray `keys/abc`) is not a key file, and is never
        // sliced or hex-decoded as one.
        if Id::from_hex(info.key.name()).is_none() {
            continue;
        }
        let bytes = get_bounded(repo.storage(), &info.key, Some(info.size_bytes)).await?;
        let kf = KeyFile::decode(&info.key.to_string(), &bytes)?;
        out.push(KeyInfo {
            id: info.key.name().to_string(),
            current: info.key.name() == repo.key_id().to_hex(),
            created: kf.created,
            role: kf.role(),
            host: kf.host,
            user: kf.user,
            kind: kf.kind,
        });
    }
    out.sort_by_key(|a| a.created);
    Ok(out)
}

/// The ids of the repository's full keys. Unlike [`list`], a key file that
/// does not decode is skipped (it is no full key), so a planted file in
/// `keys/` cannot stop `forget`.
pub async fn full_keys(repo: &Repository) -> Result<std::collections::HashSet<Id>> {
    let mut out = std::collections::HashSet::new();
    for info in repo.storage().list(Kind::Keys).await? {
        let Some(id) = Id::from_hex(info.key.name()) else {
            continue;
        };
        let Ok(bytes) = get_bounded(repo.storage(), &info.key, Some(info.size_bytes)).await else {
            continue;
        };
        if Id::of_bytes(&bytes) == id
            && let Ok(kf) = KeyFile::decode(&info.key.to_string(), &bytes)
            && kf.role() == Role::Full
        {
            out.insert(id);
        }
    }
    Ok(out)
}

/// Removes a key file by id or unique prefix. Refuses to remove the key this
/// handle was opened with (so the last usable key can never be removed).
pub async fn remove(repo: &Repository, query: &str) -> Result<Id> {
    repo.require(Permission::Full, "remove keys")?;
    let keys = list(repo).await?;
    let matches: Vec<&KeyInfo> = keys.iter().filter(|k| k.id.starts_with(query)).collect();
    let k = match matches.as_slice() {
        [k] => *k,
        [] => {
            return Err(Error::KeyNotFound {
                query: query.to_string(),
            });
        }
        _ => {
            return Err(Error::BadInput(format!(
                "key prefix {query:?} is ambiguous"
            )));
        }
    };
    if k.current {
        return Err(Error::BadInput(
            "refusing to remove the key in use; open the repository with another key to remove this one".into(),
        ));
    }
    // Logged before the key file goes: a removal never happens unrecorded.
    audit::append(
        repo,
        audit::Entry::new("key-remove")
            .arg("key", &k.id)
            .arg("key_host", &k.host)
            .arg("key_user", &k.user),
    )
    .await?;
    repo.storage()
        .delete(&ObjectKey::new(Kind::Keys, k.id.clone()))
        .await?;
    Id::from_hex(&k.id).ok_or_else(|| Error::corrupt(format!("keys/{}", k.id), "name is not an id"))
}

/// Changes the password of the key in use: adds a new key file, then removes
/// the old one (in that order, so a crash leaves two working keys, never none).
/// Only a full key may (the old key file is deleted).
pub async fn change_password(repo: &Repository, new_password: &[u8], kdf: KdfParams) -> Result<Id> {
    repo.require(
        Permission::Full,
        "change its password (that deletes a key file)",
    )?;
    let key = repo.key().clone();
    let pw = new_password.to_vec();
    let kf = blocking(move || KeyFile::create(&key, &pw, kdf)).await??;
    let new = write_key_file(repo.storage(), &kf).await?;
    audit::append(
        repo,
        audit::Entry::new("key-passwd")
            .arg("key", new.to_hex())
            .arg("replaces", repo.key_id().to_hex()),
    )
    .await?;
    repo.storage()
        .delete(&ObjectKey::new(Kind::Keys, repo.key_id().to_hex()))
        .await?;
    Ok(new)
}
