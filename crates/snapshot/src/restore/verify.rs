//! Re-reading a restored target and comparing it with the snapshot
//! (`restore --verify`).
//!
//! Selects the same entries a restore with the same options restores
//! (`select`), a part at a time, and reads every selected regular file back from the target
//! and checks it blob by blob against the snapshot's content ids (the
//! keyed hash `delta` uses, `prepare::same_content`): the length of each
//! blob comes from the index, so the file is cut where the backup cut it.
//! Symlinks are compared by target. It reads no pack data and writes
//! nothing; a difference is reported, never repaired.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_repo::{Index, MasterKey, Repository, Snapshot};
use nix::libc;
use serde::Serialize;

use super::RestoreOptions;
use super::prepare::same_content;
use super::select::{ItemKind, Selection, Walker};
use crate::Result;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Regular files read back (every name of a hard-linked file).
    pub files_checked: u64,
    /// Symlinks whose target was compared.
    pub symlinks_checked: u64,
    /// Bytes read back.
    pub bytes_checked: u64,
    /// One `path: what differs` line per entry that does not match.
    pub differences: Vec<String>,
}

/// Reads back what a restore of `snapshot` with `options` wrote into
/// `options.target` and compares it with the snapshot.
pub async fn verify(
    repo: &Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreOptions,
) -> Result<VerifyReport> {
    repo.require_full_key("restore --verify")?;
    let index = repo.index().await?;
    let mut walker = Walker::new(repo, &index, snapshot.record.tree, options).await?;
    let key = repo.key().clone();
    // Target path of every directory selected so far, by number.
    let mut dirs = vec![options.target.clone()];
    let mut report = VerifyReport::default();
    while let Some(sel) = walker.next(super::part_items(options)).await? {
        dirs.extend(sel.new_dirs.iter().map(|(path, _)| path.clone()));
        let (index, key) = (index.clone(), key.clone());
        (dirs, report) = super::blocking(move || {
            check_part(&sel, &dirs, &index, &key, &mut report);
            (dirs, report)
        })
        .await?;
    }
    Ok(report)
}

/// Compares the entries of one part with the target.
fn check_part(
    sel: &Selection,
    dirs: &[PathBuf],
    index: &Index,
    key: &MasterKey,
    report: &mut VerifyReport,
) {
    for item in &sel.items {
        let path = dirs[item.parent as usize].join(OsStr::from_bytes(item.name.of(&sel.names)));
        let shown = path.display();
        match &item.kind {
            ItemKind::Dir(_) => {}
            ItemKind::Symlink(target) => {
                report.symlinks_checked += 1;
                match std::fs::read_link(&path) {
                    Ok(t) if t.as_os_str().as_encoded_bytes() == target.of(&sel.names) => {}
                    Ok(_) => report
                        .differences
                        .push(format!("{shown}: symlink target differs")),
                    Err(e) => report.differences.push(format!("{shown}: {e}")),
                }
            }
            ItemKind::File { size, content, .. } => {
                report.files_checked += 1;
                let file = File::options()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path);
                let file = match file {
                    Ok(f) => f,
                    Err(e) => {
                        report.differences.push(format!("{shown}: {e}"));
                        continue;
                    }
                };
                match file.metadata() {
                    Ok(m) if !m.file_type().is_file() => {
                        report
                            .differences
                            .push(format!("{shown}: not a regular file"));
                        continue;
                    }
                    Ok(m) if m.len() != *size => {
                        report.differences.push(format!(
                            "{shown}: {} bytes, the snapshot has {size}",
                            m.len()
                        ));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        report.differences.push(format!("{shown}: {e}"));
                        continue;
                    }
                }
                report.bytes_checked += size;
                match same_content(file, sel.blobs(*content).locations(index), key) {
                    Ok(true) => {}
                    Ok(false) => report
                        .differences
                        .push(format!("{shown}: content differs from the snapshot")),
                    Err(e) => report.differences.push(format!("{shown}: {e}")),
                }
            }
        }
    }
}
