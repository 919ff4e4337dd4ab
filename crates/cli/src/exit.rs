//! Exit codes and the one-line error messages users see.
//!
//! The codes are documented in the README; scripts and monitoring depend on
//! them, so they never change meaning.

use lifeboat_repo::Error as RepoError;
use lifeboat_snapshot::Error as SnapError;
use lifeboat_storage::ErrorKind;

pub const OK: i32 = 0;
pub const GENERIC: i32 = 1;
// 2 is clap's usage error.
/// The operation finished but some items failed (unreadable files in a
/// backup, which makes the snapshot partial; files a restore could not write).
pub const PARTIAL: i32 = 3;
pub const NO_REPOSITORY: i32 = 10;
pub const WRONG_PASSWORD: i32 = 11;
pub const UNREACHABLE: i32 = 12;
pub const STORAGE_FULL: i32 = 13;
/// Damaged or missing repository data (also `check` finding errors).
pub const DAMAGED: i32 = 14;
pub const UNSUPPORTED_VERSION: i32 = 15;
/// A snapshot, path or key that the command names does not exist.
pub const NOT_FOUND: i32 = 16;
/// Another process holds the repository lock (a prune while backups run, a
/// backup while prune runs); retrying later succeeds.
pub const LOCKED: i32 = 17;
/// A backup to several repositories failed in some of them; the others
/// have their snapshot (the output names which failed and why).
pub const SOME_FAILED: i32 = 18;

/// An error the CLI itself raises, with its code and advice.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

pub fn cli_error(code: i32, message: impl Into<String>) -> anyhow::Error {
    CliError {
        code,
        message: message.into(),
    }
    .into()
}

/// Prints the error as one line with what to do next; returns the exit code.
pub fn report(e: &anyhow::Error) -> i32 {
    let (code, msg) = describe(e);
    eprintln!("lifeboat: error: {msg}");
    code
}

/// The exit code for `e` and its one-line message with advice.
pub fn describe(e: &anyhow::Error) -> (i32, String) {
    let (code, hint) = classify(e);
    let mut msg = e.to_string();
    // anyhow's context chain, on one line.
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(&format!(": {c}"));
        }
    }
    if let Some(h) = hint {
        msg.push_str(&format!(" ({h})"));
    }
    (code, msg)
}

/// The storage error kind behind `e`, looking through the library error
/// wrappers (they are `transparent`, so they do not show in `chain()`).
fn storage_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<lifeboat_storage::Error>() {
            return Some(s.kind());
        }
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            return r.storage_kind();
        }
        if let Some(SnapError::Repo(r)) = cause.downcast_ref::<SnapError>() {
            return r.storage_kind();
        }
    }
    None
}

fn classify(e: &anyhow::Error) -> (i32, Option<&'static str>) {
    if let Some(c) = e.downcast_ref::<CliError>() {
        return (c.code, None);
    }
    let repo = e
        .downcast_ref::<RepoError>()
        .or_else(|| match e.downcast_ref::<SnapError>() {
            Some(SnapError::Repo(r)) => Some(r),
            _ => None,
        });
    if let Some(r) = repo {
        match r {
            RepoError::NoRepository { .. } => {
                return (
                    NO_REPOSITORY,
                    Some("check -r/--repo or LIFEBOAT_REPO, or create one with `lifeboat init`"),
                );
            }
            RepoError::WrongPassword => {
                return (
                    WRONG_PASSWORD,
                    Some("check LIFEBOAT_PASSWORD, --password-file or --password-command"),
                );
            }
            RepoError::UnsupportedVersion { .. } => return (UNSUPPORTED_VERSION, None),
            RepoError::Locked { .. } | RepoError::LockLost { .. } => return (LOCKED, None),
            RepoError::Corrupt { .. } | RepoError::BlobNotIndexed { .. } => {
                return (
                    DAMAGED,
                    Some("run `lifeboat check --read-data` to see what is affected"),
                );
            }
            RepoError::SnapshotNotFound { .. } | RepoError::AmbiguousSnapshot { .. } => {
                return (NOT_FOUND, Some("list them with `lifeboat snapshots`"));
            }
            _ => {}
        }
    }
    if let Some(SnapError::PathNotFound { .. }) = e.downcast_ref::<SnapError>() {
        return (
            NOT_FOUND,
            Some("list the snapshot with `lifeboat ls SNAPSHOT`"),
        );
    }
    match storage_kind(e) {
        Some(ErrorKind::StorageFull) => (
            STORAGE_FULL,
            Some(
                "free space on the repository storage, then run the command again; nothing already stored was lost",
            ),
        ),
        Some(ErrorKind::Unreachable) | Some(ErrorKind::Transient) => (
            UNREACHABLE,
            Some("check the repository location and network, then retry"),
        ),
        Some(ErrorKind::PermissionDenied) => (
            UNREACHABLE,
            Some("check permissions or credentials for the repository"),
        ),
        Some(ErrorKind::Config) => (
            GENERIC,
            Some("see `lifeboat --help` for repository URL forms"),
        ),
        _ => {
            // Disk full while restoring/writing local files.
            for cause in e.chain() {
                if let Some(io) = cause.downcast_ref::<std::io::Error>()
                    && io.kind() == std::io::ErrorKind::StorageFull
                {
                    return (
                        STORAGE_FULL,
                        Some("free space on the target, then run the command again"),
                    );
                }
                if let Some(SnapError::Io { source, .. }) = cause.downcast_ref::<SnapError>()
                    && source.kind() == std::io::ErrorKind::StorageFull
                {
                    return (
                        STORAGE_FULL,
                        Some("free space on the target, then run the command again"),
                    );
                }
            }
            (GENERIC, None)
        }
    }
}
