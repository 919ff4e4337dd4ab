//! A restore as root trusts a snapshot's owners, set-id bits and
//! `security.*` attributes only when root of a host made it
//! (docs/security.md, "A key holder without root").

mod common;
use common::backup_snapshot;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_repo::{Creator, Repository, Snapshot};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, RestoreStats, restore};
use lifeboat_testkit::repo::{default_options, memory_repo_with};

const CAP: &str = "security.capability";
/// A valid `security.capability` value: revision 2, CAP_NET_RAW permitted.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn running_as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "these tests need root (CI runs them as root)"
    );
    eprintln!("skipped: needs root");
    false
}

struct Setup {
    repo: Arc<Repository>,
    snap: Snapshot,
    src: PathBuf,
    base: tempfile::TempDir,
    /// Whether the source filesystem took a `security.capability`.
    has_cap: bool,
}

/// A source with a setuid-root program carrying a file capability, a file
/// owned by uid 1234 and a setgid directory, backed up by this (root)
/// process.
async fn setup() -> Setup {
    let (_, repo) = memory_repo_with(default_options()).await;
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = base.path().join("src");
    fs::create_dir_all(src.join("sgid")).unwrap();
    fs::write(src.join("shell"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(src.join("shell"), Some(0), Some(0)).unwrap();
    fs::set_permissions(src.join("shell"), fs::Permissions::from_mode(0o4755)).unwrap();
    let has_cap = xattr::set(src.join("shell"), CAP, &CAP_NET_RAW).is_ok();
    if !has_cap {
        eprintln!("the source filesystem refuses {CAP}: that part is not checked");
    }
    fs::write(src.join("owned"), b"someone's").unwrap();
    std::os::unix::fs::chown(src.join("owned"), Some(1234), Some(1234)).unwrap();
    fs::set_permissions(src.join("sgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    let snap = backup_snapshot(&repo, src.clone()).await;
    Setup {
        repo,
        snap,
        src,
        base,
        has_cap,
    }
}

impl Setup {
    /// The same tree under a record saying someone else made it.
    async fn remade(&self, creator: Option<Creator>) -> Snapshot {
        let mut record = self.snap.record.clone();
        record.creator = creator;
        let id = self.repo.write_snapshot(&record).await.unwrap();
        self.repo.find_snapshot(&id.to_hex()).await.unwrap()
    }

    async fn restore(&self, snap: &Snapshot, name: &str, trust: bool) -> (PathBuf, RestoreStats) {
        let target = self.base.path().join(name);
        let stats = restore(
            &self.repo,
            snap,
            &RestoreOptions {
                target: target.clone(),
                owner: true,
                trust_snapshot_owner: trust,
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        (target.join(self.src.strip_prefix("/").unwrap()), stats)
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn uid(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().uid()
}

fn assert_trusted(s: &Setup, dir: &Path, stats: &RestoreStats) {
    assert!(!stats.untrusted_snapshot);
    assert!(stats.stripped.is_empty(), "{:?}", stats.stripped);
    assert_eq!(mode(&dir.join("shell")), 0o4755);
    assert_eq!(uid(&dir.join("owned")), 1234);
    assert_eq!(mode(&dir.join("sgid")), 0o2755);
    if s.has_cap {
        assert_eq!(
            xattr::get(dir.join("shell"), CAP).unwrap().as_deref(),
            Some(&CAP_NET_RAW[..])
        );
    }
}

fn assert_stripped(s: &Setup, dir: &Path, stats: &RestoreStats) {
    assert!(stats.untrusted_snapshot);
    // Owned by the invoking user (root), set-id bits and capability gone.
    assert_eq!(mode(&dir.join("shell")), 0o755);
    assert_eq!(uid(&dir.join("owned")), 0);
    assert_eq!(mode(&dir.join("sgid")), 0o755);
    if s.has_cap {
        assert_eq!(xattr::get(dir.join("shell"), CAP).unwrap(), None);
    }
    let listed = |name: &str| {
        stats
            .stripped
            .iter()
            .any(|p| p == &dir.join(name).display().to_string())
    };
    assert!(listed("shell") && listed("sgid"), "{:?}", stats.stripped);
    assert!(!listed("owned"), "{:?}", stats.stripped);
}

#[tokio::test(flavor = "multi_thread")]
async fn root_restore_trusts_a_snapshot_made_by_host_root() {
    if !running_as_root() {
        return;
    }
    let s = setup().await;
    let creator = s
        .snap
        .record
        .creator
        .clone()
        .expect("backup records its creator");
    assert_eq!(creator.uid, 0);
    assert_eq!(
        creator.user_namespace,
        Some(false),
        "this test runs as host root"
    );
    let (dir, stats) = s.restore(&s.snap, "t", false).await;
    assert_trusted(&s, &dir, &stats);
}

#[tokio::test(flavor = "multi_thread")]
async fn root_restore_strips_privileges_of_a_snapshot_made_in_a_user_namespace() {
    if !running_as_root() {
        return;
    }
    let s = setup().await;
    for (i, creator) in [
        // Root of a user namespace: files it backs up look owned by uid 0.
        Some(Creator {
            uid: 0,
            user_namespace: Some(true),
            host: "box".into(),
            key: None,
        }),
        // An ordinary user.
        Some(Creator {
            uid: 1000,
            user_namespace: Some(false),
            host: "box".into(),
            key: None,
        }),
        // Not known (a record from before creators were kept).
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let snap = s.remade(creator).await;
        let (dir, stats) = s.restore(&snap, &format!("u{i}"), false).await;
        assert_stripped(&s, &dir, &stats);
        // Asked to trust it, the restore restores everything.
        let (dir, stats) = s.restore(&snap, &format!("trusted{i}"), true).await;
        assert_trusted(&s, &dir, &stats);
    }
}
