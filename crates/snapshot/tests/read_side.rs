//! API tests of the read side (restore, dump, ls, diff, find) against memory
//! storage, with snapshots built by hand so every expected value is known.

use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::tmpfs::Tmpfs;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use lifeboat_repo::{
    BackupMode, BlobType, Id, InitOptions, KdfParams, Node, NodeKind, Repository, Snapshot,
    SnapshotRecord, Time, Tree, WriteOptions, WriteSession,
};
use lifeboat_snapshot::Error;
use lifeboat_snapshot::diff::{Change, diff};
use lifeboat_snapshot::dump::dump;
use lifeboat_snapshot::find::{FindChange, find};
use lifeboat_snapshot::ls::{EntryKind, ls};
use lifeboat_snapshot::progress::{NoProgress, RestoreProgress};
use lifeboat_snapshot::restore::{RestoreOptions, RestoreStats, restore};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey};

// ---------------------------------------------------------------- fixtures

const MTIME: Time = Time {
    secs: 1_700_000_000,
    nanos: 123_456_789,
};

/// A file, directory or symlink to store, with its data and children.
#[derive(Clone)]
struct Spec {
    node: Node,
    data: Vec<u8>,
    /// Fixed chunk size used to cut `data` into blobs.
    chunk: usize,
    children: Vec<Spec>,
}

fn node(name: &[u8], kind: NodeKind, mode: u32) -> Node {
    // The test process's own ids, so restoring owners works unprivileged.
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    Node {
        name: name.to_vec(),
        kind,
        mode,
        uid,
        gid,
        user: None,
        group: None,
        mtime: MTIME,
        ctime: MTIME,
        dev: 0,
        inode: 0,
        links: 1,
        size: 0,
        content: vec![],
        subtree: None,
        link_target: None,
        xattrs: vec![],
    }
}

fn file(name: &[u8], data: &[u8]) -> Spec {
    Spec {
        node: node(name, NodeKind::File, 0o644),
        data: data.to_vec(),
        chunk: 4096,
        children: vec![],
    }
}

fn dir(name: &[u8], children: Vec<Spec>) -> Spec {
    Spec {
        node: node(name, NodeKind::Dir, 0o755),
        data: vec![],
        chunk: 0,
        children,
    }
}

fn symlink(name: &[u8], target: &[u8]) -> Spec {
    let mut n = node(name, NodeKind::Symlink, 0o777);
    n.link_target = Some(target.to_vec());
    Spec {
        node: n,
        data: vec![],
        chunk: 0,
        children: vec![],
    }
}

impl Spec {
    fn mode(mut self, mode: u32) -> Self {
        self.node.mode = mode;
        self
    }
    fn mtime(mut self, secs: i64, nanos: u32) -> Self {
        self.node.mtime = Time { secs, nanos };
        self
    }
    fn chunk(mut self, size: usize) -> Self {
        self.chunk = size;
        self
    }
    fn hard_link(mut self, inode: u64) -> Self {
        self.node.dev = 7;
        self.node.inode = inode;
        self.node.links = 2;
        self
    }
}

/// Stores a spec's blobs and returns its node (content or subtree filled in).
fn store<'a>(session: &'a WriteSession, spec: &'a Spec) -> BoxFuture<'a, Node> {
    Box::pin(async move {
        let mut n = spec.node.clone();
        match n.kind {
            NodeKind::File => {
                n.size = spec.data.len() as u64;
                for piece in spec.data.chunks(spec.chunk) {
                    n.content
                        .push(session.add_blob(BlobType::Data, piece).await.unwrap().id);
                }
            }
            NodeKind::Dir => n.subtree = Some(store_tree(session, &spec.children).await),
            NodeKind::Symlink => {}
        }
        n
    })
}

async fn store_tree(session: &WriteSession, children: &[Spec]) -> Id {
    let mut nodes = Vec::new();
    for c in children {
        nodes.push(store(session, c).await);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let tree = Tree { nodes };
    session
        .add_blob(BlobType::Tree, &tree.encode())
        .await
        .unwrap()
        .id
}

struct Fixture {
    mem: MemoryStorage,
}

impl Fixture {
    async fn new() -> Self {
        let mem = MemoryStorage::new();
        let storage: DynStorage = Arc::new(mem.clone());
        let options = InitOptions {
            kdf: KdfParams::INSECURE_TEST,
            // The smallest pack size a repository accepts, so big.bin spans
            // several packs and packs hold blobs of several files.
            pack_size: 1024 * 1024,
            ..Default::default()
        };
        Repository::init(storage, b"pw", options).await.unwrap();
        Fixture { mem }
    }

    /// A new fixture holding [`sample`] as a snapshot at second 1000, the
    /// snapshot, and a handle that sees it.
    async fn with_sample() -> (Self, Snapshot, Arc<Repository>) {
        let fx = Self::new().await;
        let snap = fx.snapshot(1000, sample()).await;
        let repo = fx.open().await;
        (fx, snap, repo)
    }

    /// A fresh handle: the index is loaded once per handle, so reads after
    /// writes need a new one.
    async fn open(&self) -> Arc<Repository> {
        let storage: DynStorage = Arc::new(self.mem.clone());
        Arc::new(Repository::open(storage, b"pw").await.unwrap())
    }

    /// Writes a snapshot whose root holds `children`, taken at `secs`.
    async fn snapshot(&self, secs: i64, children: Vec<Spec>) -> Snapshot {
        let repo = self.open().await;
        let session = WriteSession::start(repo.clone(), WriteOptions::default())
            .await
            .unwrap();
        let tree = store_tree(&session, &children).await;
        let record = SnapshotRecord {
            time: jiff::Timestamp::from_second(secs).unwrap(),
            host: "test".into(),
            user: "test".into(),
            paths: vec!["/data".into()],
            tags: vec![],
            tree,
            mode: BackupMode::Full,
            parent: None,
            partial: false,
            summary: Default::default(),
            program_version: "test".into(),
            extra: Default::default(),
            creator: None,
        };
        let id = session.finish(record).await.unwrap();
        self.open().await.find_snapshot(&id.to_hex()).await.unwrap()
    }
}

/// big.bin: 2.5 MB in 64 KiB blobs, spread over three 1 MiB packs.
const BIG_LEN: usize = 2_500_000;
const BIG_CHUNK: usize = 64 * 1024;

fn big() -> Vec<u8> {
    pseudo_random(BIG_LEN, 2)
}

const ODD_NAME: &[u8] = b"caf\xe9 \n*?name";

fn chunk_a() -> Vec<u8> {
    pseudo_random(4096, 1)
}

/// The main test tree, under `/data`.
fn sample() -> Vec<Spec> {
    let a = chunk_a();
    let repeat = [a.clone(), a.clone(), b"tail of repeat".to_vec()].concat();
    let zeros = [vec![0u8; 3 * 8192], b"end".to_vec()].concat();
    vec![
        dir(
            b"data",
            vec![
                file(b"big.bin", &big())
                    .chunk(BIG_CHUNK)
                    .mode(0o640)
                    .mtime(1_600_000_000, 987_654_321),
                file(b"repeat.bin", &repeat),
                file(b"copy.bin", &a),
                file(b"zeros.bin", &zeros).chunk(8192),
                file(b"empty", b"").mode(0o600).mtime(1_500_000_000, 1),
                file(ODD_NAME, b"odd bytes in the name"),
                symlink(b"link", b"big.bin").mtime(1_400_000_000, 42),
                file(b"hard1", b"two names, one file").hard_link(42),
                file(b"hard2", b"two names, one file").hard_link(42),
                dir(b"sub", vec![file(b"inner.txt", b"inside a read-only dir")])
                    .mode(0o555)
                    .mtime(1_300_000_000, 5),
            ],
        )
        .mode(0o750)
        .mtime(1_200_000_000, 500_000_000),
    ]
}

fn options(target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_path_buf(),
        ..Default::default()
    }
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// Makes a restored tree removable again (a read-only directory inside).
fn unlock(root: &Path) {
    let sub = root.join("data/sub");
    if sub.exists() {
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

// ---------------------------------------------------------------- restore

#[tokio::test(flavor = "multi_thread")]
async fn restore_round_trip_restores_content_and_metadata() {
    round_trip(0).await;
}

/// The same in batches of one file (see [`RestoreOptions::batch_files`])
/// and parts of two entries ([`RestoreOptions::part_entries`]): hard2
/// links to hard1 made in an earlier batch, copy.bin and repeat.bin share
/// a blob read in two batches, and `data/sub`'s contents come in a later
/// batch and part than the directory while its metadata is still set
/// last.
#[tokio::test(flavor = "multi_thread")]
async fn restore_round_trip_restores_content_and_metadata_in_batches_of_one_file() {
    round_trip(1).await;
}

async fn round_trip(batch_files: usize) {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    // The fixture must exercise reads from several packs.
    let mut packs = Vec::new();
    for piece in big().chunks(BIG_CHUNK) {
        packs.push(
            repo.locate(BlobType::Data, &repo.key().blob_id(piece))
                .await
                .unwrap()
                .pack,
        );
    }
    packs.sort();
    packs.dedup();
    assert!(packs.len() >= 2, "big.bin lies in {} pack(s)", packs.len());

    let o = RestoreOptions {
        owner: true,
        batch_files,
        part_entries: 2 * batch_files,
        ..options(&t)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    unlock(&t);

    assert_eq!(stats.errors, Vec::<String>::new());
    let d = t.join("data");
    let a = chunk_a();
    assert_eq!(fs::read(d.join("big.bin")).unwrap(), big());
    assert_eq!(
        fs::read(d.join("repeat.bin")).unwrap(),
        [a.clone(), a.clone(), b"tail of repeat".to_vec()].concat()
    );
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), a);
    assert_eq!(
        fs::read(d.join("zeros.bin")).unwrap(),
        [vec![0u8; 3 * 8192], b"end".to_vec()].concat()
    );
    assert_eq!(fs::read(d.join("empty")).unwrap(), b"");
    let odd = d.join(std::ffi::OsStr::from_bytes(ODD_NAME));
    assert_eq!(fs::read(&odd).unwrap(), b"odd bytes in the name");

    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&d.join("big.bin")), 0o640);
    assert_eq!(mode(&d.join("empty")), 0o600);
    assert_eq!(mode(&d.join("copy.bin")), 0o644);
    assert_eq!(mode(&d), 0o750);
    assert_eq!(mtime_of(&d.join("big.bin")), (1_600_000_000, 987_654_321));
    assert_eq!(mtime_of(&d.join("empty")), (1_500_000_000, 1));
    assert_eq!(
        mtime_of(&d.join("copy.bin")),
        (MTIME.secs, MTIME.nanos as i64)
    );
    // Directory metadata is set after the contents are written.
    assert_eq!(mtime_of(&d), (1_200_000_000, 500_000_000));
    assert_eq!(mtime_of(&d.join("sub")), (1_300_000_000, 5));
    assert_eq!(
        fs::read(d.join("sub/inner.txt")).unwrap(),
        b"inside a read-only dir"
    );

    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("big.bin"));
    assert_eq!(mtime_of(&d.join("link")), (1_400_000_000, 42));

    let owner = fs::metadata(d.join("big.bin")).unwrap();
    assert_eq!(
        (owner.uid(), owner.gid()),
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        )
    );
    let h1 = fs::metadata(d.join("hard1")).unwrap();
    let h2 = fs::metadata(d.join("hard2")).unwrap();
    assert_eq!(h1.ino(), h2.ino());
    assert_eq!(h1.nlink(), 2);
    assert_eq!(fs::read(d.join("hard2")).unwrap(), b"two names, one file");

    let expected_bytes = (BIG_LEN + 2 * 4096 + 14 + 4096 + 3 * 8192 + 3 + 21 + 19 + 22) as u64;
    assert_eq!(
        RestoreStats {
            elapsed_ms: 0,
            ..stats
        },
        RestoreStats {
            files_restored: 8,
            files_skipped_identical: 0,
            dirs: 2,
            symlinks: 1,
            hardlinks: 1,
            bytes_written: expected_bytes,
            errors: vec![],
            // The fixture's records do not say who made them: a restore
            // as root does not trust their owners.
            untrusted_snapshot: nix::unistd::geteuid().is_root(),
            stripped: vec![],
            elapsed_ms: 0,
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_of_only_zero_blobs_is_created_though_no_write_opens_it() {
    // Files are created by the first write that needs them; a file whose
    // blobs are all zeros gets no write (its holes are the content), so it
    // must be created when it is finished.
    let fx = Fixture::new().await;
    let tree = vec![dir(
        b"data",
        vec![
            file(b"allzero.bin", &[0u8; 3 * 8192])
                .chunk(8192)
                .mode(0o604),
        ],
    )];
    let snap = fx.snapshot(1000, tree).await;
    let repo = fx.open().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    let stats = restore(&repo, &snap, &options(&t), &NoProgress)
        .await
        .unwrap();
    assert_eq!(stats.errors, Vec::<String>::new());
    assert_eq!(stats.files_restored, 1);
    let f = t.join("data/allzero.bin");
    assert_eq!(fs::read(&f).unwrap(), vec![0u8; 3 * 8192]);
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o604);
}

/// `<dir>/target` with a file of the user's (`data/zeros.bin`, "mine")
/// where [`sample`] restores one.
fn target_holding_mine(dir: &Path) -> PathBuf {
    let t = dir.join("target");
    fs::create_dir_all(t.join("data")).unwrap();
    fs::write(t.join("data/zeros.bin"), b"mine").unwrap();
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_existing_files_before_writing_anything() {
    refuses_existing(0).await;
}

/// The same in batches of one file (see [`RestoreOptions::batch_files`])
/// and parts of two entries: the conflict is found before the first
/// batch is written, by the walk of the whole selection that a target
/// with something in it gets first.
#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_existing_files_before_writing_anything_in_batches_of_one_file() {
    refuses_existing(1).await;
}

async fn refuses_existing(batch_files: usize) {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = target_holding_mine(tmp.path());

    let o = RestoreOptions {
        batch_files,
        part_entries: 2 * batch_files,
        ..options(&t)
    };
    let err = restore(&repo, &snap, &o, &NoProgress).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadInput(_)), "{err:?}");
    assert!(msg.contains("data/zeros.bin"), "{msg}");
    assert!(
        msg.contains("--overwrite") && msg.contains("--delta"),
        "{msg}"
    );
    assert!(!t.join("data/big.bin").exists(), "nothing may be written");
    assert_eq!(fs::read(t.join("data/zeros.bin")).unwrap(), b"mine");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_overwrite_replaces_files_and_never_writes_through_symlinks() {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = target_holding_mine(tmp.path());
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, t.join("data/copy.bin")).unwrap();

    let o = RestoreOptions {
        overwrite: true,
        ..options(&t)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    unlock(&t);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(stats.files_restored, 8);
    assert_eq!(
        fs::read(t.join("data/zeros.bin")).unwrap(),
        [vec![0u8; 3 * 8192], b"end".to_vec()].concat()
    );
    assert!(
        fs::symlink_metadata(t.join("data/copy.bin"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs::read(t.join("data/copy.bin")).unwrap(), chunk_a());
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_delta_skips_identical_files_and_fixes_the_others() {
    delta(0).await;
}

/// The same in batches of one file (see [`RestoreOptions::batch_files`])
/// and parts of two entries: the identical files are found part by part.
#[tokio::test(flavor = "multi_thread")]
async fn restore_delta_skips_identical_files_and_fixes_the_others_in_batches_of_one_file() {
    delta(1).await;
}

async fn delta(batch_files: usize) {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    restore(&repo, &snap, &options(&t), &NoProgress)
        .await
        .unwrap();
    let d = t.join("data");
    // Same size, one byte different; and a shorter file.
    let mut changed = fs::read(d.join("big.bin")).unwrap();
    changed[BIG_LEN / 2] ^= 0xff;
    fs::set_permissions(d.join("big.bin"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(d.join("big.bin"), &changed).unwrap();
    fs::write(d.join("repeat.bin"), b"short").unwrap();
    let copy_ino = fs::metadata(d.join("copy.bin")).unwrap().ino();
    // Metadata of a skipped file is still brought back.
    fs::set_permissions(d.join("copy.bin"), fs::Permissions::from_mode(0o600)).unwrap();

    let o = RestoreOptions {
        delta: true,
        batch_files,
        part_entries: 2 * batch_files,
        ..options(&t)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    unlock(&t);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(stats.files_restored, 2);
    assert_eq!(stats.files_skipped_identical, 6);
    assert_eq!(stats.bytes_written, BIG_LEN as u64 + 2 * 4096 + 14);
    assert_eq!(fs::read(d.join("big.bin")).unwrap(), big());
    assert_eq!(fs::read(d.join("repeat.bin")).unwrap().len(), 2 * 4096 + 14);
    let copy = fs::metadata(d.join("copy.bin")).unwrap();
    assert_eq!(copy.ino(), copy_ino, "an identical file is left in place");
    assert_eq!(copy.mode() & 0o7777, 0o644);
    assert_eq!(mtime_of(&d.join("big.bin")), (1_600_000_000, 987_654_321));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_include_and_exclude_select_entries() {
    include_exclude(0).await;
}

/// The same in parts of one entry ([`RestoreOptions::part_entries`]): a
/// directory is selected (and made) in the part of the first entry below
/// it that is included, parents first.
#[tokio::test(flavor = "multi_thread")]
async fn restore_include_and_exclude_select_entries_in_parts_of_one_entry() {
    include_exclude(1).await;
}

async fn include_exclude(part_entries: usize) {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let tmp = tempfile::tempdir().unwrap();
    let options = |t: &Path| RestoreOptions {
        part_entries,
        ..options(t)
    };

    // A snapshot path: the directory, its contents and the parents needed.
    let t1 = tmp.path().join("one");
    let o = RestoreOptions {
        include: vec!["/data/sub".into()],
        ..options(&t1)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    unlock(&t1);
    assert_eq!(
        (stats.files_restored, stats.dirs, stats.symlinks),
        (1, 2, 0)
    );
    assert!(t1.join("data/sub/inner.txt").exists());
    assert!(!t1.join("data/big.bin").exists());

    // A name glob excluded everywhere.
    let t2 = tmp.path().join("two");
    let o = RestoreOptions {
        exclude: vec!["*.bin".into(), "sub".into()],
        ..options(&t2)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    assert!(stats.errors.is_empty());
    let mut names: Vec<_> = fs::read_dir(t2.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    let expected: Vec<&[u8]> = vec![ODD_NAME, b"empty", b"hard1", b"hard2", b"link"];
    assert_eq!(names, expected);

    // Include by glob, exclude by full path: exclusion wins.
    let t3 = tmp.path().join("three");
    let o = RestoreOptions {
        include: vec!["/data/*.bin".into()],
        exclude: vec!["/data/zeros.bin".into()],
        ..options(&t3)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    assert_eq!(stats.files_restored, 3);
    assert!(t3.join("data/repeat.bin").exists() && !t3.join("data/zeros.bin").exists());
    assert!(!t3.join("data/empty").exists() && !t3.join("data/sub").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_reports_damaged_blob_with_file_and_pack_and_restores_the_rest() {
    let (fx, snap, repo) = Fixture::with_sample().await;
    // Damage the third chunk of big.bin, and only it.
    let third = &big()[2 * BIG_CHUNK..3 * BIG_CHUNK];
    let loc = repo
        .locate(BlobType::Data, &repo.key().blob_id(third))
        .await
        .unwrap();
    let key = pack_key(&loc.pack);
    let mut bytes = fx.mem.snapshot()[&key].to_vec();
    bytes[loc.entry.offset as usize + 30] ^= 0x01;
    fx.mem.tamper(&key, Bytes::from(bytes));

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    let stats = restore(&repo, &snap, &options(&t), &NoProgress)
        .await
        .unwrap();
    unlock(&t);
    assert_eq!(stats.errors.len(), 1, "{:?}", stats.errors);
    let e = &stats.errors[0];
    assert!(e.contains("data/big.bin"), "{e}");
    assert!(e.contains(&loc.pack.to_hex()), "{e}");
    assert_eq!(stats.files_restored, 7);
    assert_eq!(fs::read(t.join("data/copy.bin")).unwrap(), chunk_a());
    assert_eq!(
        fs::read(t.join("data/sub/inner.txt")).unwrap(),
        b"inside a read-only dir"
    );
}

/// Flips the last byte of a blob's sealed form in its pack.
async fn damage(fx: &Fixture, repo: &Repository, plaintext: &[u8]) -> Id {
    let loc = repo
        .locate(BlobType::Data, &repo.key().blob_id(plaintext))
        .await
        .unwrap();
    let key = pack_key(&loc.pack);
    let mut bytes = fx.mem.snapshot()[&key].to_vec();
    bytes[(loc.entry.offset + loc.entry.length - 1) as usize] ^= 0x01;
    fx.mem.tamper(&key, Bytes::from(bytes));
    loc.pack
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_removes_files_whose_data_is_damaged() {
    removes_damaged(0).await;
}

/// The same in batches of one file (see [`RestoreOptions::batch_files`])
/// and parts of two entries: hard2, in a later batch than hard1, is not
/// linked to the removed hard1.
#[tokio::test(flavor = "multi_thread")]
async fn restore_removes_files_whose_data_is_damaged_in_batches_of_one_file() {
    removes_damaged(1).await;
}

async fn removes_damaged(batch_files: usize) {
    let (fx, snap, repo) = Fixture::with_sample().await;
    let big_pack = damage(&fx, &repo, &big()[2 * BIG_CHUNK..3 * BIG_CHUNK]).await;
    // hard1 and hard2 are one file: both names go.
    let hard_pack = damage(&fx, &repo, b"two names, one file").await;

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    let o = RestoreOptions {
        batch_files,
        part_entries: 2 * batch_files,
        ..options(&t)
    };
    let stats = restore(&repo, &snap, &o, &NoProgress).await.unwrap();
    unlock(&t);
    let d = t.join("data");
    for name in ["big.bin", "hard1", "hard2"] {
        assert!(
            fs::symlink_metadata(d.join(name)).is_err(),
            "{name} is left in the target"
        );
    }
    let mut errors = stats.errors.clone();
    errors.sort();
    assert_eq!(errors.len(), 3, "{errors:?}");
    let (big, hard1, hard2) = (&errors[0], &errors[1], &errors[2]);
    assert!(
        big.contains("data/big.bin: not restored: damaged data in pack"),
        "{big}"
    );
    assert!(big.contains(&big_pack.to_hex()), "{big}");
    assert!(
        hard1.contains("data/hard1: not restored: damaged data in pack"),
        "{hard1}"
    );
    assert!(hard1.contains(&hard_pack.to_hex()), "{hard1}");
    assert!(hard2.contains("data/hard2: not restored"), "{hard2}");
    assert!(hard2.contains("data/hard1"), "{hard2}");
    assert_eq!(stats.files_restored, 6);
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), chunk_a());
    assert_eq!(
        fs::read(d.join("sub/inner.txt")).unwrap(),
        b"inside a read-only dir"
    );
}

/// A progress sink that records every call: `('p', files, bytes)` for
/// [`RestoreProgress::planned`], `('r', ..)` for
/// [`RestoreProgress::restored`].
#[derive(Default)]
struct Recorder {
    calls: std::sync::Mutex<Vec<(char, u64, u64)>>,
}

impl RestoreProgress for Recorder {
    fn planned(&self, files: u64, bytes: u64) {
        self.calls.lock().unwrap().push(('p', files, bytes));
    }
    fn restored(&self, files: u64, bytes: u64) {
        self.calls.lock().unwrap().push(('r', files, bytes));
    }
}

/// In batches of one file, progress is what a restore in one batch says:
/// the totals once, before anything is said restored, then running totals
/// (two batches add to them at once) that never go back and end at the
/// stats.
#[tokio::test(flavor = "multi_thread")]
async fn restore_in_batches_says_the_totals_once_and_running_totals_that_end_at_the_stats() {
    let (calls, stats) = restore_recorded(0).await;
    let planned: Vec<_> = calls.iter().filter(|c| c.0 == 'p').collect();
    assert_eq!(
        planned,
        [&('p', stats.files_restored, stats.bytes_written)],
        "{calls:?}"
    );
}

/// In parts of two entries, the totals are said again for each part that
/// adds to them: growing, the first before anything is said restored, the
/// last the stats'; running totals never go back.
#[tokio::test(flavor = "multi_thread")]
async fn restore_in_parts_says_growing_totals_that_end_at_the_stats() {
    let (calls, stats) = restore_recorded(2).await;
    let planned: Vec<(u64, u64)> = calls
        .iter()
        .filter(|c| c.0 == 'p')
        .map(|c| (c.1, c.2))
        .collect();
    assert!(planned.len() > 1, "{calls:?}");
    assert!(
        planned
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0] != w[1]),
        "{calls:?}"
    );
    assert_eq!(
        planned.last(),
        Some(&(stats.files_restored, stats.bytes_written)),
        "{calls:?}"
    );
}

/// Restores the sample in batches of one file (and parts of
/// `part_entries`, 0 for the default) with a [`Recorder`]; checks what
/// every such restore says: totals first, then running totals that never
/// go back and end at the stats. Returns the calls and the stats.
async fn restore_recorded(part_entries: usize) -> (Vec<(char, u64, u64)>, RestoreStats) {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    let o = RestoreOptions {
        batch_files: 1,
        part_entries,
        ..options(&t)
    };
    let rec = Recorder::default();
    let stats = restore(&repo, &snap, &o, &rec).await.unwrap();
    unlock(&t);
    assert_eq!(stats.errors, Vec::<String>::new());
    assert_eq!(stats.files_restored, 8);
    let calls = rec.calls.into_inner().unwrap();
    assert_eq!(calls[0].0, 'p', "{calls:?}");
    let restored: Vec<(u64, u64)> = calls
        .iter()
        .filter(|c| c.0 == 'r')
        .map(|c| (c.1, c.2))
        .collect();
    assert!(
        restored
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "{restored:?}"
    );
    assert_eq!(
        restored.last(),
        Some(&(stats.files_restored, stats.bytes_written)),
        "{restored:?}"
    );
    (calls, stats)
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_onto_a_full_target_stops_with_storage_full() {
    let fx = Fixture::new().await;
    let huge = pseudo_random(8_000_000, 5);
    let children = vec![dir(
        b"data",
        vec![
            file(b"huge.bin", &huge).chunk(BIG_CHUNK),
            file(b"small.txt", b"small"),
        ],
    )];
    let snap = fx.snapshot(1000, children).await;
    let repo = fx.open().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&tmp.path().join("mnt"), "4m", "restore_onto_a_full_target")
    else {
        return;
    };
    let t = mnt.path().join("target");
    let err = restore(&repo, &snap, &options(&t), &NoProgress)
        .await
        .unwrap_err();
    match &err {
        Error::Io { path, source } => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
            assert!(path.ends_with("data/huge.bin"), "{err}");
        }
        other => panic!("expected a typed I/O error, got {other:?}"),
    }
    assert!(
        fs::symlink_metadata(t.join("data/huge.bin")).is_err(),
        "the unfinished file is left in the target"
    );
    drop(mnt);
}

/// The same in batches of one file, each file read in several ranges:
/// whichever batch meets the full target, the other batch in flight stops
/// too, and no file is left with part of its data.
#[tokio::test(flavor = "multi_thread")]
async fn restore_in_batches_onto_a_full_target_leaves_no_partial_file() {
    let fx = Fixture::new().await;
    let data: Vec<Vec<u8>> = (0..12).map(|i| pseudo_random(1_000_000, 100 + i)).collect();
    let files = data
        .iter()
        .enumerate()
        .map(|(i, d)| file(format!("f{i:02}").as_bytes(), d).chunk(BIG_CHUNK))
        .collect();
    let snap = fx.snapshot(1000, vec![dir(b"data", files)]).await;
    let repo = fx.open().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(
        &tmp.path().join("mnt"),
        "4m",
        "restore_in_batches_onto_a_full_target",
    ) else {
        return;
    };
    let t = mnt.path().join("target");
    let o = RestoreOptions {
        batch_files: 1,
        ..options(&t)
    };
    let err = restore(&repo, &snap, &o, &NoProgress).await.unwrap_err();
    match &err {
        Error::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
        }
        other => panic!("expected a typed I/O error, got {other:?}"),
    }
    let mut left = Vec::new();
    for entry in fs::read_dir(t.join("data")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let i: usize = name[1..].parse().unwrap();
        assert!(
            fs::read(entry.path()).unwrap() == data[i],
            "{name} is left in the target with part of its data"
        );
        left.push(i);
    }
    assert!(left.len() < data.len(), "{left:?}");
    drop(mnt);
}

// ---------------------------------------------------------------- dump, ls

#[tokio::test(flavor = "multi_thread")]
async fn dump_writes_file_content_and_refuses_directories() {
    let (_fx, snap, repo) = Fixture::with_sample().await;
    let mut out = Vec::new();
    let n = dump(&repo, &snap, b"/data/big.bin", &mut out)
        .await
        .unwrap();
    assert_eq!(n, BIG_LEN as u64);
    assert_eq!(out, big());

    let mut out = Vec::new();
    dump(&repo, &snap, b"data/empty", &mut out).await.unwrap();
    assert!(out.is_empty());

    let err = dump(&repo, &snap, b"/data", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::BadInput(m) if m.contains("restore")),
        "{err:?}"
    );
    let err = dump(&repo, &snap, b"/", &mut Vec::new()).await.unwrap_err();
    assert!(matches!(err, Error::BadInput(_)), "{err:?}");
    let err = dump(&repo, &snap, b"/data/nope", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PathNotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_lists_directories_files_and_subtrees() {
    let (_fx, snap, repo) = Fixture::with_sample().await;

    let root = ls(&repo, &snap, b"/", false).await.unwrap();
    assert_eq!(root.len(), 1);
    assert_eq!(
        (root[0].path.as_str(), root[0].kind, root[0].mode),
        ("/data", EntryKind::Dir, 0o750)
    );

    let data = ls(&repo, &snap, b"/data", false).await.unwrap();
    let paths: Vec<&str> = data.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/data/big.bin",
            "/data/caf\\xe9 \\n*?name", // the escape form of `printable`
            "/data/copy.bin",
            "/data/empty",
            "/data/hard1",
            "/data/hard2",
            "/data/link",
            "/data/repeat.bin",
            "/data/sub",
            "/data/zeros.bin",
        ]
    );
    let big = &data[0];
    assert_eq!(
        (big.kind, big.size, big.mode),
        (EntryKind::File, BIG_LEN as u64, 0o640)
    );
    assert_eq!(big.mtime.to_string(), "2020-09-13T12:26:40.987654321Z");
    assert_eq!(data[6].link_target.as_deref(), Some("big.bin"));
    let json = serde_json::to_string(big).unwrap();
    assert!(
        json.contains(r#""kind":"file""#) && json.contains("2020-09-13T12:26:40.987654321Z"),
        "{json}"
    );

    let all = ls(&repo, &snap, b"", true).await.unwrap();
    assert_eq!(all.len(), 12);
    let pos = |p: &str| all.iter().position(|e| e.path == p).unwrap();
    assert_eq!(pos("/data/sub/inner.txt"), pos("/data/sub") + 1);

    let one = ls(&repo, &snap, b"/data/sub/inner.txt", true)
        .await
        .unwrap();
    assert_eq!((one.len(), one[0].size), (1, 22));
    assert!(matches!(
        ls(&repo, &snap, b"/data/missing", false).await,
        Err(Error::PathNotFound { .. })
    ));
}

/// A recursive listing streams the trees with a bounded read-ahead (64
/// trees): over more directories than that, several levels deep and with
/// identical directories sharing one tree, it must still give every entry
/// once, each directory right before its contents, in name order.
#[tokio::test(flavor = "multi_thread")]
async fn ls_streams_a_wide_deep_tree_in_order() {
    let fx = Fixture::new().await;
    let mut top = Vec::new();
    let mut expected = Vec::new();
    for a in 0..150u32 {
        let an = format!("a{a:03}");
        expected.push(format!("/{an}"));
        let mut mid = Vec::new();
        for b in 0..3u32 {
            let bn = format!("b{b}");
            expected.push(format!("/{an}/{bn}"));
            // Every `b1` holds the same file: one tree shared 150 times.
            let content = if b == 1 {
                "same".to_string()
            } else {
                format!("{a}/{b}")
            };
            let inner = dir(b"deep", vec![file(b"f", content.as_bytes())]);
            expected.push(format!("/{an}/{bn}/deep"));
            expected.push(format!("/{an}/{bn}/deep/f"));
            let here = format!("{a}.{b}");
            expected.push(format!("/{an}/{bn}/g"));
            mid.push(dir(bn.as_bytes(), vec![inner, file(b"g", here.as_bytes())]));
        }
        expected.push(format!("/{an}/z"));
        mid.push(file(b"z", b"z"));
        top.push(dir(an.as_bytes(), mid));
    }
    let snap = fx.snapshot(1000, top).await;
    let repo = fx.open().await;
    let all = ls(&repo, &snap, b"/", true).await.unwrap();
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, expected);
    // Below one directory, not recursive: its entries only.
    let one = ls(&repo, &snap, b"/a007", false).await.unwrap();
    let paths: Vec<&str> = one.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/a007/b0", "/a007/b1", "/a007/b2", "/a007/z"]);
}

// ---------------------------------------------------------------- diff

#[tokio::test(flavor = "multi_thread")]
async fn diff_reports_changes_and_skips_identical_subtrees() {
    let fx = Fixture::new().await;
    let same = || dir(b"same", vec![file(b"x", b"unchanged")]);
    let a = fx
        .snapshot(
            1000,
            vec![dir(
                b"data",
                vec![
                    file(b"a.txt", b"old content"),
                    file(b"b.txt", b"to be removed"),
                    file(b"meta.txt", b"same bytes"),
                    file(b"kind", b"a file that becomes a directory"),
                    same(),
                ],
            )],
        )
        .await;
    let b = fx
        .snapshot(
            2000,
            vec![dir(
                b"data",
                vec![
                    file(b"a.txt", b"new content, longer"),
                    file(b"c.txt", b"added"),
                    file(b"meta.txt", b"same bytes").mode(0o600),
                    dir(b"kind", vec![]),
                    dir(b"newdir", vec![file(b"f", b"1234")]),
                    same(),
                ],
            )],
        )
        .await;
    let repo = fx.open().await;
    // Damage the shared subtree: a diff that read it would fail.
    let data_id = repo.read_tree(&b.record.tree).await.unwrap().nodes[0]
        .subtree
        .unwrap();
    let data = repo.read_tree(&data_id).await.unwrap();
    let same_id = data.find(b"same").unwrap().subtree.unwrap();
    let loc = repo.locate(BlobType::Tree, &same_id).await.unwrap();
    let key = pack_key(&loc.pack);
    let mut bytes = fx.mem.snapshot()[&key].to_vec();
    bytes[loc.entry.offset as usize + 30] ^= 0x01;
    fx.mem.tamper(&key, Bytes::from(bytes));

    let report = diff(&repo, &a, &b).await.unwrap();
    let got: Vec<(&str, Change, bool, Vec<&str>)> = report
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.change, e.content, e.metadata.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/data/a.txt", Change::Changed, true, vec![]),
            ("/data/b.txt", Change::Removed, false, vec![]),
            ("/data/c.txt", Change::Added, false, vec![]),
            ("/data/kind", Change::Removed, false, vec![]),
            ("/data/kind", Change::Added, false, vec![]),
            ("/data/meta.txt", Change::Changed, false, vec!["mode"]),
            ("/data/newdir", Change::Added, false, vec![]),
            ("/data/newdir/f", Change::Added, false, vec![]),
        ]
    );
    let a_txt = &report.entries[0];
    assert_eq!((a_txt.old_size, a_txt.new_size), (Some(11), Some(19)));
    let t = &report.totals;
    assert_eq!((t.added, t.removed, t.changed), (4, 2, 2));
    assert_eq!((t.content_changed, t.metadata_changed), (1, 1));
    assert_eq!((t.added_bytes, t.removed_bytes), (5 + 4, 13 + 31));
    assert_eq!(t.size_change_bytes, (19 - 11) + 5 + 4 - 13 - 31);

    let none = diff(&repo, &a, &a).await.unwrap();
    assert!(none.entries.is_empty() && none.totals.changed == 0);
}

// ---------------------------------------------------------------- find

#[tokio::test(flavor = "multi_thread")]
async fn find_tells_each_paths_history() {
    let fx = Fixture::new().await;
    let keep = || file(b"keep.txt", b"constant");
    let s1 = fx
        .snapshot(
            1000,
            vec![dir(b"data", vec![file(b"notes.txt", b"v1"), keep()])],
        )
        .await;
    let s2 = fx
        .snapshot(
            2000,
            vec![dir(b"data", vec![file(b"notes.txt", b"version 2"), keep()])],
        )
        .await;
    let s3 = fx.snapshot(3000, vec![dir(b"data", vec![keep()])]).await;
    let s4 = fx
        .snapshot(
            4000,
            vec![dir(
                b"data",
                vec![
                    // Same content, new mtime: not a change.
                    file(b"notes.txt", b"version 2").mtime(5, 0),
                    keep(),
                ],
            )],
        )
        .await;
    let repo = fx.open().await;
    // Any order in, oldest first out.
    let all = vec![s3.clone(), s1.clone(), s4.clone(), s2.clone()];

    let found = find(&repo, "notes.txt", &all).await.unwrap();
    assert_eq!(found.len(), 1);
    let h = &found[0];
    assert_eq!(h.path, "/data/notes.txt");
    let events: Vec<(FindChange, String, Option<u64>)> = h
        .events
        .iter()
        .map(|e| (e.change, e.snapshot.clone(), e.size))
        .collect();
    assert_eq!(
        events,
        vec![
            (FindChange::Appeared, s1.id.to_hex(), Some(2)),
            (FindChange::Changed, s2.id.to_hex(), Some(9)),
            (FindChange::Disappeared, s3.id.to_hex(), None),
            (FindChange::Appeared, s4.id.to_hex(), Some(9)),
        ]
    );
    let seen: Vec<&str> = h.matches.iter().map(|m| m.snapshot.as_str()).collect();
    assert_eq!(seen, [s1.id.to_hex(), s2.id.to_hex(), s4.id.to_hex()]);

    let found = find(&repo, "/data/*.txt", &all).await.unwrap();
    let paths: Vec<&str> = found.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths, ["/data/keep.txt", "/data/notes.txt"]);
    assert_eq!(found[0].events.len(), 1);
    assert_eq!(found[0].matches.len(), 4);

    // `*` does not cross directories in a full-path pattern.
    assert!(find(&repo, "/*.txt", &all).await.unwrap().is_empty());
    assert_eq!(find(&repo, "**/keep.*", &all).await.unwrap().len(), 1);
    assert!(matches!(
        find(&repo, "[", &all).await,
        Err(Error::BadInput(_))
    ));
}

/// The storage key of a pack (packs are named by their id).
fn pack_key(id: &Id) -> ObjectKey {
    ObjectKey::new(Kind::Packs, id.to_hex())
}
