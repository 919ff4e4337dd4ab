//! Repository fixtures (feature `repo`): fast-to-open test repositories
//! on in-memory or given storage, and the read-everything check most
//! tests end with.
//!
//! Owns the test defaults (the insecure test KDF, small packs and
//! chunks) so every suite builds repositories the same way. It does not
//! back up or restore anything: that is lifeboat-snapshot's job, and
//! depending on it here would put a dev-dependency cycle under that crate.
//!
//! lifeboat-repo's own tests include this file with `#[path]` rather than
//! through the feature, for the same reason; so it names only
//! `lifeboat_repo`, `lifeboat_storage` and std, never `crate::`.

use std::sync::Arc;

use lifeboat_repo::{
    CheckOptions, CheckReport, ChunkerParams, InitOptions, KdfParams, Repository, check,
};
use lifeboat_storage::{DynStorage, MemoryStorage};

/// The password of fixture repositories.
pub const PASSWORD: &[u8] = b"pw";

/// The insecure test KDF and 1 MiB packs, so a few MiB of data make
/// several packs; the chunker is the repository default.
pub fn init_options() -> InitOptions {
    InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        ..Default::default()
    }
}

/// The insecure test KDF with every other setting at the repository
/// default, for tests that want packs and chunks as a real repository
/// lays them out.
pub fn default_options() -> InitOptions {
    InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        ..Default::default()
    }
}

/// Chunks of 16..256 KiB (64 KiB on average), so test files of a few MiB
/// split into many blobs.
pub fn small_chunks(seed: u64) -> ChunkerParams {
    ChunkerParams {
        min_size: 16 * 1024,
        avg_size: 64 * 1024,
        max_size: 256 * 1024,
        seed,
    }
}

/// Initialises a repository on `storage` with [`PASSWORD`].
pub async fn init_on(storage: DynStorage, options: InitOptions) -> Arc<Repository> {
    Arc::new(
        Repository::init(storage, PASSWORD, options)
            .await
            .expect("initialising a test repository"),
    )
}

/// A fresh in-memory repository made with `options`, and its storage (for
/// listing or damaging objects).
pub async fn memory_repo_with(options: InitOptions) -> (MemoryStorage, Arc<Repository>) {
    let mem = MemoryStorage::new();
    let repo = init_on(Arc::new(mem.clone()), options).await;
    (mem, repo)
}

/// A fresh in-memory repository made with [`init_options`].
pub async fn memory_repo() -> (MemoryStorage, Arc<Repository>) {
    memory_repo_with(init_options()).await
}

/// Opens the repository on `storage` again with [`PASSWORD`], as a new
/// process would, so nothing cached in an earlier handle hides what
/// storage holds.
pub async fn reopen(storage: DynStorage) -> Arc<Repository> {
    Arc::new(
        Repository::open(storage, PASSWORD)
            .await
            .expect("reopening a test repository"),
    )
}

/// Runs `check --read-data` and panics unless it finds no error; returns
/// the report for further assertions (warnings, counts).
pub async fn assert_check_ok(repo: &Repository) -> CheckReport {
    let report = check(
        repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .expect("check --read-data runs");
    assert!(report.is_ok(), "{:?}", report.errors);
    report
}

/// A tree holding one empty regular file named `name`: distinct names give
/// distinct tree blobs, for tests that need many small trees.
pub fn one_file_tree(name: &str) -> lifeboat_repo::Tree {
    lifeboat_repo::Tree {
        nodes: vec![file_node(name, 0, vec![])],
    }
}

/// A regular file's node (mode 0644, owner 0, times zero) of `size`
/// bytes made of the data blobs `content`, for trees a test writes by
/// hand.
pub fn file_node(name: &str, size: u64, content: Vec<lifeboat_repo::Id>) -> lifeboat_repo::Node {
    lifeboat_repo::Node {
        kind: lifeboat_repo::NodeKind::File,
        mode: 0o644,
        size,
        content,
        ..dir_node(name, None)
    }
}

/// A directory's node (mode 0755, owner 0, times zero) whose entries are
/// the tree `subtree`, for trees a test writes by hand.
pub fn dir_node(name: &str, subtree: Option<lifeboat_repo::Id>) -> lifeboat_repo::Node {
    use lifeboat_repo::{Node, NodeKind, Time};
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: Time::default(),
        ctime: Time::default(),
        dev: 0,
        inode: 0,
        links: 1,
        size: 0,
        content: vec![],
        subtree,
        link_target: None,
        xattrs: vec![],
    }
}
