//! The storage conformance suite against every backend, plus the
//! backend-specific promises the generic suite cannot reach (leftover
//! temporaries in listings, probed capabilities, URL round trips).

use std::fs;
use std::sync::Arc;

use bytes::Bytes;
use lifeboat_storage::{
    DynStorage, ErrorKind, Kind, LocalStorage, Location, ObjectKey, OpendalStorage, Storage,
    open_location,
};
use lifeboat_testkit::MemoryStorage;
use lifeboat_testkit::conformance::{self, run_all};
use lifeboat_testkit::services::{S3Server, SshServer};

fn pack_key() -> ObjectKey {
    conformance::key(Kind::Packs, 0xab00_0000_0000_0001)
}

/// Plants files that are not objects next to a real pack and checks that
/// `list` shows only the pack.
async fn assert_strays_not_listed(storage: &dyn Storage, pack_dir: &std::path::Path) {
    let pack = pack_key();
    storage.create_root().await.unwrap();
    storage
        .put(&pack, Bytes::from_static(b"pack"))
        .await
        .unwrap();
    fs::create_dir_all(pack_dir).unwrap();
    // A crashed put's temporary, and a name that is not a valid object name.
    fs::write(pack_dir.join(".tmp-0123456789abcdef"), b"partial").unwrap();
    fs::write(pack_dir.join("UPPER-case"), b"stray").unwrap();
    let listed = storage.list(Kind::Packs).await.unwrap();
    assert_eq!(
        listed.iter().map(|o| &o.key).collect::<Vec<_>>(),
        vec![&pack],
        "{}",
        storage.location()
    );
    storage.delete(&pack).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_conforms() {
    run_all(Arc::new(MemoryStorage::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_all(Arc::new(LocalStorage::new(dir.path().join("repo")))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_via_file_url_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/repo", dir.path().display());
    run_all(
        open_location(&Location::parse(&url).unwrap())
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn local_storage_ignores_temporaries_in_listings() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    assert_strays_not_listed(&storage, &dir.path().join("data/ab")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_conforms() {
    let Some(server) = S3Server::start() else {
        return;
    };
    // s3s-fs refuses If-None-Match writes over existing objects but checks
    // before writing, so racing writers all win; the probe must notice.
    // It can only catch a racy server, never prove an atomic one: racers
    // that happen to arrive one after another (a loaded machine) miss it.
    // This test failed once in 0.19 s in a whole-suite run (its output
    // was not kept; the probe is its one nondeterministic step), so each
    // open probes again and one of five must catch it.
    let mut caught = None;
    for _ in 0..5 {
        let storage = OpendalStorage::s3(server.s3_options("repo")).await.unwrap();
        if !storage.capabilities().atomic_create {
            caught = Some(storage);
            break;
        }
    }
    let storage = caught.expect("five probes never caught s3s-fs's racy conditional writes");
    run_all(Arc::new(storage)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_never_creates_its_root_outside_init() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let storage = LocalStorage::new(&root);
    let key = conformance::key(Kind::Index, 1);
    // A root that does not exist is not created by put.
    let err = storage
        .put(&key, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(!root.exists(), "put created the repository root");
    // An empty root (a mount point after an unmount) gets no directories.
    fs::create_dir(&root).unwrap();
    let err = storage
        .put(&pack_key(), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        0,
        "put wrote under an empty root"
    );
    // create_root (init) makes it a location; a namespace directory that
    // vanished is recreated only while the root holds a config or marker.
    storage.create_root().await.unwrap();
    storage
        .put(&pack_key(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    fs::remove_dir_all(root.join("index")).unwrap();
    let err = storage
        .put(&key, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    storage
        .put(&ObjectKey::marker(), Bytes::from_static(b"marker"))
        .await
        .unwrap();
    storage.put(&key, Bytes::from_static(b"x")).await.unwrap();
    // The marker is not listed as a config object.
    assert!(storage.list(Kind::Config).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_via_url_conforms() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let storage: DynStorage = open_location(&server.location()).await.unwrap();
    assert!(storage.location().starts_with("s3://lifeboat-test/repo"));
    run_all(storage).await;
}

#[tokio::test]
async fn s3_storage_ignores_temporaries_in_listings() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let storage = OpendalStorage::s3(server.s3_options("repo")).await.unwrap();
    let pack_dir = server.object_path("repo", &pack_key());
    assert_strays_not_listed(&storage, pack_dir.parent().unwrap()).await;
}

#[tokio::test]
async fn s3_objects_are_files_that_tests_can_damage() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let storage = OpendalStorage::s3(server.s3_options("repo")).await.unwrap();
    let key = pack_key();
    storage
        .put(&key, Bytes::from_static(b"original"))
        .await
        .unwrap();
    let path = server.object_path("repo", &key);
    assert_eq!(fs::read(&path).unwrap(), b"original");
    fs::write(&path, b"damaged!").unwrap();
    assert_eq!(storage.get(&key).await.unwrap(), "damaged!");
}

#[tokio::test]
async fn s3_wrong_credentials_are_permission_denied() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let mut options = server.s3_options("repo");
    options.secret_access_key = Some("wrong".into());
    // Opening survives (read-only credentials are allowed to open) but no
    // operation goes through.
    let storage = OpendalStorage::s3(options).await.unwrap();
    assert!(!storage.capabilities().atomic_create);
    let err = storage.list(Kind::Snapshots).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

#[tokio::test]
async fn s3_server_that_is_down_is_unreachable() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let options = server.s3_options("repo");
    drop(server);
    let err = OpendalStorage::s3(options).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_storage_conforms() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let storage = OpendalStorage::sftp(server.sftp_options("repo"))
        .await
        .unwrap();
    // OpenSSH offers posix-rename, which replaces: no atomic create.
    assert!(!storage.capabilities().atomic_create, "{storage:?}");
    run_all(Arc::new(storage)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_storage_via_url_conforms() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let location = Location::parse(&server.location_url()).unwrap();
    run_all(open_location(&location).await.unwrap()).await;
    assert!(server.data_dir().join("repo").is_dir());
}

#[tokio::test]
async fn sftp_storage_ignores_temporaries_in_listings() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let storage = OpendalStorage::sftp(server.sftp_options("repo"))
        .await
        .unwrap();
    let pack_dir = server.data_dir().join("repo").join(pack_key().path());
    assert_strays_not_listed(&storage, pack_dir.parent().unwrap()).await;
}

/// The probe's result is remembered per bucket and prefix: a second open
/// takes it from the memo (here doctored to claim the opposite of what the
/// probe found, so only the memo can explain the answer), and still fails
/// when the server is down.
///
/// s3s-fs checks `If-None-Match` without atomicity, which the probe finds
/// by racing writers; on a loaded machine the racers can arrive too
/// staggered to collide in the probe's rounds, and it then says atomic.
/// The test takes whichever answer the probe gave rather than assuming
/// one (it failed once in CI that way, with a rustic build beside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_probe_result_is_remembered_between_opens() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let memo_dir = tempfile::tempdir().unwrap();
    let options = lifeboat_storage::S3Options {
        probe_memo_dir: Some(memo_dir.path().to_path_buf()),
        ..server.s3_options("repo")
    };
    let memos = || -> Vec<std::path::PathBuf> {
        fs::read_dir(memo_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("s3-probe-")
            })
            .collect()
    };
    let first = OpendalStorage::s3(options.clone()).await.unwrap();
    let found = first.capabilities().atomic_create;
    let [memo] = &memos()[..] else {
        panic!("one probe result remembered: {:?}", memos());
    };
    let text = fs::read_to_string(memo).unwrap();
    let (said, doctored) = if found {
        ("\natomic\n", "\nracy\n")
    } else {
        ("\nracy\n", "\natomic\n")
    };
    assert!(text.contains(said), "{text}");
    fs::write(memo, text.replace(said, doctored)).unwrap();

    let second = OpendalStorage::s3(options.clone()).await.unwrap();
    assert_eq!(
        second.capabilities().atomic_create,
        !found,
        "memo not used: {second:?}"
    );
    // Another prefix in the same bucket is probed on its own: a memo of
    // its own, not the doctored one.
    OpendalStorage::s3(lifeboat_storage::S3Options {
        root: "elsewhere".into(),
        ..options.clone()
    })
    .await
    .unwrap();
    assert_eq!(memos().len(), 2, "{:?}", memos());
    assert!(fs::read_to_string(memo).unwrap().contains(doctored));

    drop(server);
    let err = OpendalStorage::s3(options).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

/// Credentials that cannot write learn nothing about the server: no memo.
#[tokio::test]
async fn s3_probe_without_write_access_is_not_remembered() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let memo_dir = tempfile::tempdir().unwrap();
    let options = lifeboat_storage::S3Options {
        probe_memo_dir: Some(memo_dir.path().to_path_buf()),
        secret_access_key: Some("wrong".into()),
        ..server.s3_options("repo")
    };
    OpendalStorage::s3(options).await.unwrap();
    let names: Vec<_> = fs::read_dir(memo_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// Modes of every file and directory under `root` that are not `file`
/// and `dir` (after the umask, which can only narrow them).
fn loose_modes(root: &std::path::Path, file: u32, dir: u32) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if mode != dir {
            out.push(format!("{} {mode:o}", d.display()));
        }
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                if mode != file {
                    out.push(format!("{} {mode:o}", p.display()));
                }
            }
        }
    }
    out
}

/// Puts one object of every kind (the config, a key file, a pack, ...).
async fn put_every_kind(storage: &dyn Storage) {
    storage.create_root().await.unwrap();
    storage
        .put(&ObjectKey::config(), Bytes::from_static(b"config"))
        .await
        .unwrap();
    for (i, kind) in [
        Kind::Keys,
        Kind::Packs,
        Kind::Index,
        Kind::Snapshots,
        Kind::Locks,
    ]
    .into_iter()
    .enumerate()
    {
        storage
            .put(
                &conformance::key(kind, 0xab00_0000_0000_0000 + i as u64),
                Bytes::from_static(b"object"),
            )
            .await
            .unwrap();
    }
}

/// Issue 12: objects (key files, the config, everything) are readable by
/// their owner only, and directories are 0700, whatever the umask allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_creates_objects_0600_and_directories_0700() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    put_every_kind(&LocalStorage::new(&root)).await;
    assert_eq!(loose_modes(&root, 0o600, 0o700), Vec::<String>::new());
}

/// Issue 12: the same over SFTP. OpenDAL creates files and directories
/// with the server's default mode (0644/0755 under sshd's usual umask);
/// the backend sets 0600 on each object before renaming it into place and
/// 0700 on its directories through a session of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_storage_creates_objects_0600_and_directories_0700() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let storage = OpendalStorage::sftp(server.sftp_options("repo"))
        .await
        .unwrap();
    put_every_kind(&storage).await;
    let root = server.data_dir().join("repo");
    assert_eq!(loose_modes(&root, 0o600, 0o700), Vec::<String>::new());
}
