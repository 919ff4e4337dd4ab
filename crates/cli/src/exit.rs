//! Exit codes and the one-line error messages users see.
//!
//! The codes are documented in the README; scripts and monitoring depend on
//! them, so they never change meaning.

use lifeboat_connectors::Error as ConnError;
use lifeboat_repo::Error as RepoError;
use lifeboat_snapshot::Error as SnapError;
use lifeboat_storage::ErrorClass;

pub const OK: i32 = 0;
pub const GENERIC: i32 = 1;
/// A bad command line: an unknown or malformed option value, options that
/// conflict, a missing required option (clap's own usage errors use 2 too).
pub const USAGE: i32 = 2;
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
/// `doctor` found gaps in the setup (listed, most dangerous first).
pub const GAPS: i32 = 19;
/// The backup finished, but the snapshot looks like its source was just
/// encrypted (ransomware): it is tagged `suspect` and the snapshot before
/// it is protected.
pub const SUSPECT: i32 = 20;
/// The key the repository was opened with (or the `lifeboat serve` client)
/// has a role that does not allow the operation (an append-only key
/// cannot forget, a read-only one cannot back up).
pub const NOT_ALLOWED: i32 = 21;

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

/// The class of `e`: that of the first lifeboat error in its chain (library
/// errors wrap each other transparently, and each delegates to the error
/// it wraps), or of a bare I/O error there.
fn class_of(e: &anyhow::Error) -> Option<(ErrorClass, Origin)> {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<lifeboat_storage::Error>() {
            return Some((s.class(), Origin::Storage));
        }
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            return Some((r.class(), origin_repo(r)));
        }
        if let Some(s) = cause.downcast_ref::<SnapError>() {
            let origin = match s {
                SnapError::Repo(r) => origin_repo(r),
                SnapError::PathNotFound { .. } => Origin::SnapshotPath,
                _ => Origin::Local,
            };
            return Some((s.class(), origin));
        }
        if let Some(c) = cause.downcast_ref::<ConnError>() {
            let origin = match c {
                ConnError::Repo(r) | ConnError::Snapshot(SnapError::Repo(r)) => origin_repo(r),
                ConnError::Storage(_) => Origin::Storage,
                ConnError::Snapshot(s) => match s {
                    SnapError::PathNotFound { .. } => Origin::SnapshotPath,
                    _ => Origin::Local,
                },
                ConnError::Io { .. } => Origin::Local,
                _ => Origin::Advised,
            };
            return Some((c.class(), origin));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some((lifeboat_snapshot::io_class(io), Origin::Local));
        }
    }
    None
}

/// Where an error arose, for the advice only (the code depends on the class
/// alone).
#[derive(Clone, Copy, PartialEq)]
enum Origin {
    /// The repository's storage.
    Storage,
    /// The repository format (keys, records, locks) above the storage.
    Repository,
    /// A snapshot the command named.
    Snapshot,
    /// A path inside a snapshot.
    SnapshotPath,
    /// Local files: a backup source, a restore target, a data directory.
    Local,
    /// An error whose message already says what to do (a missing WAL
    /// segment, a WAL conflict, a prune refusing damaged data).
    Advised,
}

fn origin_repo(r: &RepoError) -> Origin {
    match r {
        RepoError::SnapshotNotFound { .. } | RepoError::AmbiguousSnapshot { .. } => {
            Origin::Snapshot
        }
        RepoError::Storage(_) => Origin::Storage,
        RepoError::Damaged(_) | RepoError::KeyNotFound { .. } | RepoError::WriteOnlyKey { .. } => {
            Origin::Advised
        }
        _ => Origin::Repository,
    }
}

/// The exit code of each class: the one table the README's exit-code list
/// documents.
fn code(class: ErrorClass) -> i32 {
    match class {
        ErrorClass::NoRepository => NO_REPOSITORY,
        ErrorClass::WrongPassword => WRONG_PASSWORD,
        ErrorClass::Unreachable | ErrorClass::AccessDenied => UNREACHABLE,
        ErrorClass::StorageFull => STORAGE_FULL,
        ErrorClass::Damaged => DAMAGED,
        ErrorClass::Unsupported => UNSUPPORTED_VERSION,
        ErrorClass::NotFound => NOT_FOUND,
        ErrorClass::Locked => LOCKED,
        ErrorClass::NotAllowed => NOT_ALLOWED,
        // The request itself is wrong (a bad value, pattern or URL): the
        // same command fails the same way until the command line changes.
        ErrorClass::BadInput => USAGE,
        ErrorClass::External | ErrorClass::Io | ErrorClass::Internal => GENERIC,
    }
}

/// What to do next, by class and where the error arose.
fn hint(class: ErrorClass, origin: Origin) -> Option<&'static str> {
    Some(match (class, origin) {
        (ErrorClass::NoRepository, _) => {
            "check -r/--repo or LIFEBOAT_REPO, or create one with `lifeboat init`"
        }
        // A write-only key's message says which key is needed.
        (ErrorClass::WrongPassword, Origin::Advised) => return None,
        (ErrorClass::WrongPassword, _) => {
            "check LIFEBOAT_PASSWORD, --password-file or --password-command"
        }
        (ErrorClass::Damaged, Origin::Advised) => return None,
        (ErrorClass::NotFound, Origin::Advised) => return None,
        (ErrorClass::Damaged, _) => "run `lifeboat check --read-data` to see what is affected",
        (ErrorClass::NotFound, Origin::Snapshot) => "list them with `lifeboat snapshots`",
        (ErrorClass::NotFound, Origin::SnapshotPath) => {
            "list the snapshot with `lifeboat ls SNAPSHOT`"
        }
        (ErrorClass::NotFound, _) => "check the path, then run the command again",
        (ErrorClass::StorageFull, Origin::Storage) => {
            "free space on the repository storage, then run the command again; nothing already stored was lost"
        }
        (ErrorClass::StorageFull, _) => "free space on the target, then run the command again",
        (ErrorClass::Unreachable, _) => "check the repository location and network, then retry",
        (ErrorClass::AccessDenied, _) => "check permissions or credentials for the repository",
        (ErrorClass::BadInput, Origin::Storage) => "see `lifeboat --help` for repository URL forms",
        _ => return None,
    })
}

fn classify(e: &anyhow::Error) -> (i32, Option<&'static str>) {
    if let Some(c) = e.downcast_ref::<CliError>() {
        return (c.code, None);
    }
    match class_of(e) {
        Some((class, origin)) => (code(class), hint(class, origin)),
        None => (GENERIC, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_storage::{Error as StorageError, ErrorKind};

    fn full_storage() -> StorageError {
        StorageError::new(ErrorKind::StorageFull, "no space left on device")
    }

    #[test]
    fn a_full_disk_inside_a_connector_exits_13() {
        // pg restore writing a data directory on a full disk: this exited 1
        // while connector errors had their own mapper.
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = anyhow::Error::from(ConnError::io("/srv/pg/base/1/1259", io));
        let (code, msg) = describe(&e);
        assert_eq!(code, STORAGE_FULL);
        assert!(msg.contains("free space on the target"), "{msg}");
    }

    #[test]
    fn a_full_repository_under_connector_and_context_layers_exits_13() {
        let inner = ConnError::Snapshot(SnapError::Repo(RepoError::Storage(full_storage())));
        let e = anyhow::Error::from(inner).context("archiving 000000010000000000000001");
        let (code, msg) = describe(&e);
        assert_eq!(code, STORAGE_FULL);
        assert!(msg.contains("repository storage"), "{msg}");
    }

    #[test]
    fn every_class_has_its_documented_code() {
        let cases: Vec<(anyhow::Error, i32)> = vec![
            (
                RepoError::NoRepository {
                    location: "/x".into(),
                }
                .into(),
                NO_REPOSITORY,
            ),
            (RepoError::WrongPassword.into(), WRONG_PASSWORD),
            (RepoError::BadInput("bad value".into()).into(), USAGE),
            (
                StorageError::new(ErrorKind::NoContainer, "no such bucket").into(),
                NO_REPOSITORY,
            ),
            (
                StorageError::new(ErrorKind::Unreachable, "refused").into(),
                UNREACHABLE,
            ),
            (
                StorageError::new(ErrorKind::PermissionDenied, "403").into(),
                UNREACHABLE,
            ),
            (full_storage().into(), STORAGE_FULL),
            (
                RepoError::Corrupt {
                    object: "packs/ab".into(),
                    reason: "bad tag".into(),
                }
                .into(),
                DAMAGED,
            ),
            (
                RepoError::UnsupportedVersion {
                    found: 9,
                    supported: 1,
                }
                .into(),
                UNSUPPORTED_VERSION,
            ),
            (
                SnapError::PathNotFound {
                    snapshot: "1a2b".into(),
                    path: "/etc".into(),
                }
                .into(),
                NOT_FOUND,
            ),
            (
                ConnError::MissingWal {
                    segment: "000000010000000000000002".into(),
                    backup: "1a2b".into(),
                }
                .into(),
                NOT_FOUND,
            ),
            (
                ConnError::WalConflict {
                    name: "000000010000000000000002".into(),
                }
                .into(),
                DAMAGED,
            ),
            (
                RepoError::Locked {
                    holder: "prune on host".into(),
                }
                .into(),
                LOCKED,
            ),
            (
                ConnError::Tool {
                    tool: "pg_dump".into(),
                    status: "exit status 1".into(),
                    stderr: "no such database".into(),
                }
                .into(),
                GENERIC,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(describe(&e).0, want, "{e}");
        }
    }
}
