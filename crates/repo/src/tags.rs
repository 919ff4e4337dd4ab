//! Changing the tags of a stored snapshot (`lifeboat tag`).
//!
//! A snapshot record is immutable and named by the hash of its sealed
//! bytes, so changing its tags writes a *new* record (same tree, time,
//! host, paths, summary; `extra.original` names the first record it came
//! from) and then deletes the old one. The new record is durable before the
//! old one goes: an interruption leaves both (the same tree twice, which
//! `forget` can drop), never neither. Records only: no lock is needed, as
//! for `forget` — a prune running meanwhile sees either record, and both
//! reference the same tree.

use lifeboat_storage::{Kind, ObjectKey};

use crate::record::Snapshot;
use crate::repository::Repository;
use crate::{Error, Result};

/// `extra` key of a rewritten record: the hex id of the record it was
/// first rewritten from (kept through later rewrites), as restic's
/// `original` field.
pub const ORIGINAL: &str = "original";

/// What to do to a snapshot's tags: `set` replaces them all (an empty list
/// removes every tag), then `add` and `remove` apply.
#[derive(Debug, Clone, Default)]
pub struct TagChange {
    pub set: Option<Vec<String>>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl TagChange {
    /// The tags after the change, in their first-seen order, without
    /// duplicates or empty names.
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let base = self.set.as_deref().unwrap_or(tags);
        for t in base.iter().chain(&self.add) {
            if !t.is_empty() && !out.contains(t) && !self.remove.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_none() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Applies `change` to `snapshot`'s tags. Returns the new snapshot, or
/// `None` when its tags are already what the change asks (nothing is
/// written). The new record is stored before the old one is deleted.
pub async fn retag(
    repo: &Repository,
    snapshot: &Snapshot,
    change: &TagChange,
) -> Result<Option<Snapshot>> {
    repo.require(
        crate::Permission::Full,
        "change tags (that rewrites a snapshot record)",
    )?;
    if change.is_empty() {
        return Err(Error::BadInput(
            "no tag change given: use --add, --remove or --set".into(),
        ));
    }
    let tags = change.apply(&snapshot.record.tags);
    if tags == snapshot.record.tags {
        return Ok(None);
    }
    let mut record = snapshot.record.clone();
    record.tags = tags;
    record
        .extra
        .entry(ORIGINAL.to_string())
        .or_insert_with(|| snapshot.id.to_hex().into());
    let id = repo.write_snapshot(&record).await?;
    repo.storage()
        .delete(&ObjectKey::new(Kind::Snapshots, snapshot.id.to_hex()))
        .await?;
    // Replaced, not vanished: no rollback warning for the old id later.
    repo.note_snapshots_changed(&[], &[snapshot.id]);
    Ok(Some(Snapshot { id, record }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn set_then_add_then_remove() {
        let c = TagChange {
            set: None,
            add: v(&["b", "c"]),
            remove: v(&["a"]),
        };
        assert_eq!(c.apply(&v(&["a", "b"])), v(&["b", "c"]));
        let c = TagChange {
            set: Some(v(&["x", "x", ""])),
            add: v(&["y"]),
            remove: v(&["y"]),
        };
        assert_eq!(c.apply(&v(&["a"])), v(&["x"]));
        let c = TagChange {
            set: Some(vec![]),
            ..Default::default()
        };
        assert!(c.apply(&v(&["a"])).is_empty());
        assert!(!c.is_empty());
    }
}
