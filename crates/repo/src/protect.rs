//! Protected snapshots: `forget` keeps a protected snapshot whatever its
//! policy says, until the protection's end date.
//!
//! A protection is an object `protect/<snapshot id>.<end, Unix seconds>`
//! holding `seal(JSON, "lifeboat protection v1")`. Objects are never
//! rewritten: protecting again adds an object (the latest end wins),
//! `unprotect` deletes every object of the snapshot. Both are recorded in
//! the audit log (unprotect before it deletes). An object that does not
//! open (planted, damaged) protects nothing and is reported by [`list`].

use std::collections::BTreeMap;

use lifeboat_storage::{Kind, ObjectKey};
use serde::{Deserialize, Serialize};

use crate::limits::get_bounded;
use crate::repository::put_idempotent;
use crate::{Error, Id, Repository, Result, Snapshot, audit};

pub(crate) const PROTECT_AAD: &[u8] = b"lifeboat protection v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protection {
    pub snapshot: Id,
    pub until: jiff::Timestamp,
    /// When and by whom it was set.
    pub time: jiff::Timestamp,
    pub host: String,
    pub user: String,
    /// Why (`manual`, or what set it: `suspected ransomware before <id>`).
    #[serde(default)]
    pub reason: String,
}

fn object_name(snapshot: &Id, until: jiff::Timestamp) -> String {
    format!("{}.{}", snapshot.to_hex(), until.as_second().max(0))
}

fn parse_name(name: &str) -> Option<Id> {
    let (id, secs) = name.split_once('.')?;
    secs.parse::<u64>().ok()?;
    Id::from_hex(id)
}

/// Protects `snapshot` until `until` (a later protection of the same
/// snapshot extends it; an earlier one changes nothing).
pub async fn protect(
    repo: &Repository,
    snapshot: &Snapshot,
    until: jiff::Timestamp,
    reason: &str,
) -> Result<Protection> {
    // Adding a protection only makes `forget` keep more: a backup's
    // ransomware check protects the snapshot before a suspect one with an
    // append-only key too. The CLI's `protect` asks for a full key.
    repo.require(crate::Permission::Append, "protect snapshots")?;
    repo.require_full_key("protect")?;
    if until <= jiff::Timestamp::now() {
        return Err(Error::BadInput(format!(
            "--until {until} is in the past; give a later date"
        )));
    }
    let p = Protection {
        snapshot: snapshot.id,
        until,
        time: jiff::Timestamp::now(),
        host: crate::keyfile::hostname(),
        user: std::env::var("USER").unwrap_or_default(),
        reason: reason.to_string(),
    };
    let bytes = repo.key().seal(
        &serde_json::to_vec(&p).expect("protection serializes"),
        PROTECT_AAD,
    );
    put_idempotent(
        repo.storage(),
        &ObjectKey::new(Kind::Protect, object_name(&snapshot.id, until)),
        bytes,
    )
    .await?;
    audit::append_after(
        repo,
        audit::Entry::new("protect")
            .arg("until", until)
            .arg("reason", reason)
            .snapshot(snapshot.id),
    )
    .await;
    Ok(p)
}

/// Removes every protection of `snapshot`; returns how many objects went.
pub async fn unprotect(repo: &Repository, snapshot: &Id) -> Result<usize> {
    repo.require(crate::Permission::Full, "unprotect snapshots")?;
    let keys: Vec<ObjectKey> = repo
        .storage()
        .list(Kind::Protect)
        .await?
        .into_iter()
        .filter(|o| parse_name(o.key.name()) == Some(*snapshot))
        .map(|o| o.key)
        .collect();
    if keys.is_empty() {
        return Ok(0);
    }
    audit::append(repo, audit::Entry::new("unprotect").snapshot(*snapshot)).await?;
    for k in &keys {
        repo.storage().delete(k).await?;
    }
    Ok(keys.len())
}

/// Every protection in force now, the latest end per snapshot, and the
/// objects that could not be read (they protect nothing).
pub async fn list(repo: &Repository) -> Result<(BTreeMap<Id, Protection>, Vec<String>)> {
    repo.require_full_key("listing protections")?;
    let now = jiff::Timestamp::now();
    let mut out: BTreeMap<Id, Protection> = BTreeMap::new();
    let mut bad = Vec::new();
    for o in repo.storage().list(Kind::Protect).await? {
        let Some(id) = parse_name(o.key.name()) else {
            bad.push(format!("{}: not a protection name", o.key));
            continue;
        };
        let bytes = match get_bounded(repo.storage(), &o.key, Some(o.size_bytes)).await {
            Ok(b) => b,
            Err(e) if e.storage_kind() == Some(lifeboat_storage::ErrorKind::NotFound) => continue,
            Err(e @ Error::Corrupt { .. }) => {
                bad.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let p: Option<Protection> = repo
            .key()
            .open(&bytes, PROTECT_AAD)
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .filter(|p: &Protection| p.snapshot == id);
        let Some(p) = p else {
            bad.push(format!("{}: does not open (forged or damaged)", o.key));
            continue;
        };
        if p.until <= now {
            continue;
        }
        match out.get(&id) {
            Some(q) if q.until >= p.until => {}
            _ => {
                out.insert(id, p);
            }
        }
    }
    for b in &bad {
        tracing::warn!("protection ignored: {b}");
    }
    Ok((out, bad))
}
