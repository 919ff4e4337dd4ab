//! Ransomware detection at backup time: does a new snapshot look like its
//! source was just encrypted?
//!
//! [`analyze`] compares a new snapshot with its parent (the previous
//! snapshot of the same source), walking only the directories whose trees
//! differ, and counts three signs of an encryption event:
//!
//! - **became incompressible**: files whose old content was stored
//!   compressed (most of its first blobs) and whose new content is not
//!   (encrypted bytes never compress), counted for files rewritten in place
//!   and for renamed ones;
//! - **renamed with a new extension**: a file gone from a directory while a
//!   file named like it plus an extension (`a.doc` → `a.doc.locked`), or
//!   with the same stem and another extension (`a.doc` → `a.crypt`), appeared
//!   there;
//! - **stable files rewritten**: files unchanged for `stable_days` before the
//!   parent was taken whose content changed.
//!
//! Shares are of the parent's file count. The first two signs each flag the
//! snapshot on their own; mass rewrites of stable files only count together
//! with half the threshold of one of the others, since ordinary churn (a
//! source tree moved to a new release, a package upgrade) rewrites many
//! stable files, all still compressible and mostly under their own names.
//! [`respond`] then tags the snapshot `suspect` (a new record replacing
//! the old one, as restic's `tag` does) and protects the parent.
//! [`check`] is what a backup runs on its new snapshot; [`check_after`]
//! runs the same comparison later, from a full key, on snapshots nobody
//! checked when they were taken (a write-only key's: they have no parent).
//! Repositories stored without compression (level 0) give no
//! compressibility signal.

use std::collections::BTreeMap;
use std::sync::Arc;

use lifeboat_repo::audit;
use lifeboat_repo::{BlobType, Id, Index, Node, NodeKind, Repository, Snapshot, Tree};
use serde::Serialize;

use crate::Result;

/// The tag a suspect snapshot gets.
pub const SUSPECT_TAG: &str = "suspect";

/// Thresholds (`backup --detect-*`; config `detect-*`).
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Fewer affected files than this never flag a snapshot (a handful of
    /// archives or renamed files is ordinary). 10.
    pub min_files: u64,
    /// Share of the parent's files that became incompressible, or were
    /// renamed with a new extension, that flags the snapshot. 0.10: an
    /// encryption event touches far more; ordinary churn leaves both near 0.
    pub share: f64,
    /// Share of the parent's files that were stable and got rewritten; only
    /// counts with half of `share` of another sign. 0.5.
    pub stable_share: f64,
    /// A file whose mtime is this many days before the parent is stable. 30.
    pub stable_days: u32,
    /// How long the parent of a suspect snapshot is protected. 30 days.
    pub protect_days: u32,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            min_files: 10,
            share: 0.10,
            stable_share: 0.5,
            stable_days: 30,
            protect_days: 30,
        }
    }
}

/// What [`analyze`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Detection {
    pub suspect: bool,
    /// One line per sign over its threshold.
    pub reasons: Vec<String>,
    /// Files in the parent (its record's count).
    pub parent_files: u64,
    pub became_incompressible: u64,
    pub renamed_new_extension: u64,
    pub stable_rewritten: u64,
    /// Paths of some affected files (at most 10), for the message.
    pub examples: Vec<String>,
}

#[derive(Default)]
struct Counts {
    incompressible: u64,
    renamed: u64,
    stable: u64,
    examples: Vec<String>,
}

impl Counts {
    fn example(&mut self, path: &str) {
        if self.examples.len() < 10 {
            self.examples.push(path.to_string());
        }
    }
}

/// Whether most of the file's first blobs (up to 8) are stored compressed;
/// `None` for empty files and blobs the index lacks.
fn compressed(index: &Index, node: &Node) -> Option<bool> {
    let mut yes = 0;
    let mut seen = 0;
    for id in node.content.iter().take(8) {
        let loc = index.get(BlobType::Data, id)?;
        seen += 1;
        if loc.entry.compressed {
            yes += 1;
        }
    }
    (seen > 0).then_some(yes * 2 > seen)
}

fn stem(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

/// Whether `new` looks like `old` renamed by ransomware: an extension
/// appended, or the extension replaced.
fn renamed_like(old: &str, new: &str) -> bool {
    if old == new {
        return false;
    }
    if let Some(rest) = new.strip_prefix(old)
        && rest.starts_with('.')
        && rest.len() > 1
    {
        return true;
    }
    stem(old) == stem(new) && stem(new) != new && stem(old) != old
}

/// Compares `new` with `parent` (see the module doc).
pub async fn analyze(
    repo: &Arc<Repository>,
    parent: &Snapshot,
    new: &Snapshot,
    options: &DetectOptions,
) -> Result<Detection> {
    let index = repo.index().await?;
    let stable_before = parent
        .record
        .time
        .checked_sub(jiff::SignedDuration::from_hours(
            24 * options.stable_days as i64,
        ))
        .unwrap_or(parent.record.time)
        .as_second();
    let mut counts = Counts::default();
    // Directory pairs whose trees differ: (path, old tree, new tree).
    let mut stack: Vec<(String, Option<Id>, Option<Id>)> = vec![(
        String::new(),
        Some(parent.record.tree),
        Some(new.record.tree),
    )];
    while let Some((path, a, b)) = stack.pop() {
        let read = |id: Option<Id>| async move {
            match id {
                Some(id) => repo.read_tree(&id).await.map(Some),
                None => Ok(None),
            }
        };
        let old: Tree = read(a).await?.unwrap_or_default();
        let new_tree: Tree = read(b).await?.unwrap_or_default();
        let by_name = |t: &Tree| -> BTreeMap<String, Node> {
            t.nodes
                .iter()
                .map(|n| (n.name_lossy(), n.clone()))
                .collect()
        };
        let (old, new_nodes) = (by_name(&old), by_name(&new_tree));
        let mut removed: Vec<&Node> = Vec::new();
        let mut added: Vec<&Node> = Vec::new();
        for (name, o) in &old {
            match (&o.kind, new_nodes.get(name)) {
                (NodeKind::Dir, Some(n)) if n.kind == NodeKind::Dir && o.subtree != n.subtree => {
                    stack.push((format!("{path}/{name}"), o.subtree, n.subtree));
                }
                (NodeKind::Dir, Some(n)) if n.kind == NodeKind::Dir => {}
                (NodeKind::Dir, _) => stack.push((format!("{path}/{name}"), o.subtree, None)),
                (NodeKind::File, Some(n)) if n.kind == NodeKind::File && o.content != n.content => {
                    let p = format!("{path}/{name}");
                    if compressed(&index, o) == Some(true) && compressed(&index, n) == Some(false) {
                        counts.incompressible += 1;
                        counts.example(&p);
                    }
                    if o.mtime.secs < stable_before {
                        counts.stable += 1;
                    }
                }
                (NodeKind::File, Some(n)) if n.kind == NodeKind::File => {}
                (NodeKind::File, _) => removed.push(o),
                _ => {}
            }
        }
        for (name, n) in &new_nodes {
            if old.contains_key(name) && old[name].kind == n.kind {
                continue;
            }
            match &n.kind {
                NodeKind::File => added.push(n),
                NodeKind::Dir => stack.push((format!("{path}/{name}"), None, None)),
                _ => {}
            }
        }
        // Renames within this directory.
        for o in removed {
            let oname = o.name_lossy();
            if let Some(n) = added.iter().find(|n| renamed_like(&oname, &n.name_lossy())) {
                counts.renamed += 1;
                let p = format!("{path}/{}", n.name_lossy());
                if compressed(&index, o) == Some(true) && compressed(&index, n) == Some(false) {
                    counts.incompressible += 1;
                }
                counts.example(&p);
            }
        }
    }
    Ok(judge(counts, parent.record.summary.total_files, options))
}

fn judge(c: Counts, parent_files: u64, o: &DetectOptions) -> Detection {
    let total = parent_files.max(1) as f64;
    let over = |n: u64, share: f64| n >= o.min_files && n as f64 >= share * total;
    let mut reasons = Vec::new();
    let pct = |n: u64| format!("{:.0}%", n as f64 * 100.0 / total);
    if over(c.incompressible, o.share) {
        reasons.push(format!(
            "{} files ({}) that compressed before no longer compress (encrypted?)",
            c.incompressible,
            pct(c.incompressible)
        ));
    }
    if over(c.renamed, o.share) {
        reasons.push(format!(
            "{} files ({}) were renamed with a new extension",
            c.renamed,
            pct(c.renamed)
        ));
    }
    if over(c.stable, o.stable_share)
        && (over(c.incompressible, o.share / 2.0) || over(c.renamed, o.share / 2.0))
    {
        reasons.push(format!(
            "{} files ({}) unchanged for {} days were rewritten",
            c.stable,
            pct(c.stable),
            o.stable_days
        ));
    }
    Detection {
        suspect: !reasons.is_empty(),
        reasons,
        parent_files,
        became_incompressible: c.incompressible,
        renamed_new_extension: c.renamed,
        stable_rewritten: c.stable,
        examples: c.examples,
    }
}

/// What [`respond`] did.
#[derive(Debug, Clone)]
pub struct Response {
    /// The suspect snapshot under its new id (its record now carries the
    /// `suspect` tag).
    pub snapshot: Snapshot,
    /// The parent, now protected.
    pub protected: Id,
    pub protected_until: jiff::Timestamp,
}

/// A snapshot [`check`] found suspect, and what was done about it.
#[derive(Debug, Clone)]
pub struct Suspected {
    pub detection: Detection,
    pub response: Response,
}

/// The whole check of a new snapshot, as `backup` and plan runs do it:
/// [`analyze`] against its parent and, when it looks like an encryption
/// event, [`respond`]. `None` for a snapshot without a parent or one that
/// looks ordinary.
pub async fn check(
    repo: &Arc<Repository>,
    new: &Snapshot,
    options: &DetectOptions,
) -> Result<Option<Suspected>> {
    let Some(parent_id) = new.record.parent else {
        return Ok(None);
    };
    let parent = repo.find_snapshot(&parent_id.to_hex()).await?;
    let detection = analyze(repo, &parent, new, options).await?;
    if !detection.suspect {
        return Ok(None);
    }
    let response = respond(repo, &parent, new, &detection, options).await?;
    Ok(Some(Suspected {
        detection,
        response,
    }))
}

/// The snapshot of the same source (host and paths) taken last before
/// `snap`: what an incremental backup would have compared it with. A
/// write-only key's backups record no parent (they cannot read one), so
/// [`check_after`] goes by this instead.
pub fn predecessor<'a>(all: &'a [Snapshot], snap: &Snapshot) -> Option<&'a Snapshot> {
    all.iter()
        .filter(|s| {
            s.id != snap.id
                && s.record.time < snap.record.time
                && s.record.same_source(&snap.record.host, &snap.record.paths)
        })
        .max_by_key(|s| s.record.time)
}

/// What [`check_after`] found for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct AfterCheck {
    /// The snapshot checked, by the id it had.
    pub snapshot: String,
    /// The snapshot it was compared with; `None`: the first of its source,
    /// nothing to compare with.
    pub predecessor: Option<String>,
    /// `None` when there was no predecessor.
    pub detection: Option<Detection>,
    /// It carried the `suspect` tag already: reported, not tagged or
    /// protected again.
    pub already_suspect: bool,
    /// Its new id, when it was tagged `suspect` now.
    pub tagged: Option<String>,
    /// The predecessor, when it was protected now, and until when.
    pub protected: Option<String>,
    pub protected_until: Option<jiff::Timestamp>,
}

impl AfterCheck {
    /// Whether the snapshot looks like an encryption event.
    pub fn suspect(&self) -> bool {
        self.detection.as_ref().is_some_and(|d| d.suspect)
    }
}

/// The check a backup makes at its end, made afterwards by a full key on
/// snapshots that were not checked when they were taken (those of
/// write-only keys, which read no parent; backups with `--no-detect`;
/// snapshots copied in): each of `targets` is compared with its
/// [`predecessor`] among `all` by [`analyze`], and unless `dry_run` one
/// that looks like an encryption event is tagged `suspect` and its
/// predecessor protected ([`respond`]), as the backup would have done.
/// Targets are checked oldest first; a target tagged here is replaced in
/// `all`, so a later target's predecessor is its tagged record.
pub async fn check_after(
    repo: &Arc<Repository>,
    all: &mut [Snapshot],
    targets: &[Id],
    options: &DetectOptions,
    dry_run: bool,
) -> Result<Vec<AfterCheck>> {
    if dry_run {
        repo.require_full_key("checking snapshots for ransomware")?;
    } else {
        repo.require(
            lifeboat_repo::Permission::Full,
            "tag suspect snapshots and protect the ones before them",
        )?;
    }
    let mut order: Vec<Snapshot> = all
        .iter()
        .filter(|s| targets.contains(&s.id))
        .cloned()
        .collect();
    order.sort_by_key(|s| s.record.time);
    let mut out = Vec::with_capacity(order.len());
    for snap in order {
        let mut report = AfterCheck {
            snapshot: snap.id.to_hex(),
            predecessor: None,
            detection: None,
            already_suspect: snap.record.tags.iter().any(|t| t == SUSPECT_TAG),
            tagged: None,
            protected: None,
            protected_until: None,
        };
        let Some(parent) = predecessor(all, &snap).cloned() else {
            out.push(report);
            continue;
        };
        report.predecessor = Some(parent.id.to_hex());
        let detection = analyze(repo, &parent, &snap, options).await?;
        if detection.suspect && !report.already_suspect && !dry_run {
            let r = respond(repo, &parent, &snap, &detection, options).await?;
            report.tagged = Some(r.snapshot.id.to_hex());
            report.protected = Some(r.protected.to_hex());
            report.protected_until = Some(r.protected_until);
            if let Some(s) = all.iter_mut().find(|s| s.id == snap.id) {
                *s = r.snapshot;
            }
        }
        report.detection = Some(detection);
        out.push(report);
    }
    Ok(out)
}

/// Tags `new` `suspect` (writes its record again with the tag, then
/// deletes the old record; both logged) and protects `parent` for
/// `protect_days`. The backup itself stays: it may be the only copy of the
/// current state.
pub async fn respond(
    repo: &Arc<Repository>,
    parent: &Snapshot,
    new: &Snapshot,
    detection: &Detection,
    options: &DetectOptions,
) -> Result<Response> {
    let until = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(
            24 * options.protect_days.max(1) as i64,
        ))
        .map_err(|e| crate::Error::Internal(e.to_string()))?;
    lifeboat_repo::protect::protect(
        repo,
        parent,
        until,
        &format!(
            "last snapshot before suspected ransomware in {}",
            new.id.short()
        ),
    )
    .await?;
    let mut record = new.record.clone();
    if !record.tags.iter().any(|t| t == SUSPECT_TAG) {
        record.tags.push(SUSPECT_TAG.to_string());
    }
    let id = repo.write_snapshot(&record).await?;
    audit::append_after(
        repo,
        audit::Entry::new("tag")
            .arg("tag", SUSPECT_TAG)
            .arg("replaces", new.id.to_hex())
            .arg("reasons", &detection.reasons)
            .snapshot(id),
    )
    .await;
    if id != new.id {
        repo.storage()
            .delete(&lifeboat_storage::ObjectKey::new(
                lifeboat_storage::Kind::Snapshots,
                new.id.to_hex(),
            ))
            .await
            .map_err(lifeboat_repo::Error::from)?;
    }
    Ok(Response {
        snapshot: Snapshot { id, record },
        protected: parent.id,
        protected_until: until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_that_look_like_ransomware() {
        assert!(renamed_like("a.doc", "a.doc.locked"));
        assert!(renamed_like("a.doc", "a.crypt"));
        assert!(!renamed_like("a.doc", "b.doc"));
        assert!(!renamed_like("Makefile", "Makefile"));
        assert!(!renamed_like("README", "READ"));
        assert!(!renamed_like("a.doc", "a.doc."));
    }

    #[test]
    fn stable_rewrites_alone_never_flag() {
        let o = DetectOptions::default();
        let d = judge(
            Counts {
                stable: 900,
                incompressible: 0,
                renamed: 3,
                examples: vec![],
            },
            1000,
            &o,
        );
        assert!(!d.suspect, "{:?}", d.reasons);
        let d = judge(
            Counts {
                stable: 900,
                incompressible: 60,
                renamed: 0,
                examples: vec![],
            },
            1000,
            &o,
        );
        assert!(d.suspect && d.reasons.len() == 1, "{:?}", d.reasons);
        let d = judge(
            Counts {
                stable: 0,
                incompressible: 9,
                renamed: 0,
                examples: vec![],
            },
            20,
            &o,
        );
        assert!(!d.suspect, "fewer than min_files never flags");
    }
}
