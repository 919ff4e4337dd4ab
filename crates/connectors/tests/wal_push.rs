//! `wal::push` with a write-only key when an upload fails: the intent
//! marker it wrote must not outlive the failure (or a file of that name
//! stored by someone else would later be taken as this host's), unless
//! another repository of the same push stored the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_connectors::Error;
use lifeboat_connectors::postgres::wal::{PushOptions, get_wal, push, put_wal};
use lifeboat_repo::{InitOptions, KdfParams, Repository, keys};
use lifeboat_storage::{DynStorage, ErrorKind, Kind, MemoryStorage};
use lifeboat_testkit::faulty::{FaultPlan, FaultyStorage, Op};
use lifeboat_testkit::repo::init_on;

const SYSID: u64 = 0x5eed;
const SEGMENT: &str = "000000010000000000000001";
const HOST_PASSWORD: &[u8] = b"write-only host";

/// A repository that takes write-only keys, its full-key handle, and the
/// storage to open the write-only key on.
async fn repository() -> (MemoryStorage, Arc<Repository>) {
    let mem = MemoryStorage::new();
    let full = init_on(
        Arc::new(mem.clone()),
        InitOptions {
            kdf: KdfParams::INSECURE_TEST,
            write_only_keys: true,
            ..Default::default()
        },
    )
    .await;
    keys::add_write_only(&full, HOST_PASSWORD, KdfParams::INSECURE_TEST)
        .await
        .unwrap();
    (mem, full)
}

/// The write-only host's handle on `storage`, whose first archive upload
/// fails before anything is stored.
async fn host_failing_first_upload(storage: DynStorage) -> (Arc<FaultyStorage>, Arc<Repository>) {
    let faulty = Arc::new(FaultyStorage::new(
        storage,
        FaultPlan::new(1).fail_nth_of_kind(Op::Put, Kind::Archive, 1, ErrorKind::Transient),
    ));
    let host = Repository::open(faulty.clone() as DynStorage, HOST_PASSWORD)
        .await
        .unwrap();
    assert!(host.is_write_only());
    (faulty, Arc::new(host))
}

fn segment(dir: &Path, data: &[u8]) -> PathBuf {
    let pg_wal = dir.join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let path = pg_wal.join(SEGMENT);
    std::fs::write(&path, data).unwrap();
    path
}

fn intent(segment: &Path) -> PathBuf {
    segment
        .parent()
        .unwrap()
        .join("lifeboat/pushing")
        .join(SEGMENT)
}

fn wal(seed: u8) -> Vec<u8> {
    (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed)
        .collect()
}

fn is_unverifiable(e: &Error) -> bool {
    matches!(
        e,
        Error::Repo(lifeboat_repo::Error::ArchiveUnverifiable { .. })
    )
}

#[tokio::test]
async fn a_failed_upload_removes_its_intent_so_a_file_stored_by_another_cluster_is_refused() {
    let (mem, full) = repository().await;
    let (faulty, host) = host_failing_first_upload(Arc::new(mem.clone())).await;
    let hosts = [host];
    let dir = tempfile::tempdir().unwrap();
    let ours = wal(1);
    let seg = segment(dir.path(), &ours);

    let failed = push(&hosts, "set", SYSID, &seg, &PushOptions::default())
        .await
        .unwrap_err();
    assert!(!is_unverifiable(&failed.error), "{}", failed.error);
    assert_eq!(faulty.injected().len(), 1, "{:?}", faulty.injected());
    assert!(
        !intent(&seg).exists(),
        "the failed upload's intent is removed"
    );

    // Another cluster with the same system identifier stores its own file
    // of that name before PostgreSQL retries.
    let theirs = wal(2);
    put_wal(&full, SYSID, SEGMENT, Arc::new(theirs.clone()))
        .await
        .unwrap();

    // Every retry refuses it: nothing says this host stored it.
    for _ in 0..2 {
        let retry = push(&hosts, "set", SYSID, &seg, &PushOptions::default())
            .await
            .unwrap_err();
        assert!(is_unverifiable(&retry.error), "{}", retry.error);
    }
    assert_eq!(
        get_wal(&full, SYSID, SEGMENT).await.unwrap().unwrap(),
        theirs,
        "the other cluster's file is untouched"
    );
}

#[tokio::test]
async fn an_intent_stays_when_another_repository_of_the_push_stored_the_file() {
    let (mem_a, full_a) = repository().await;
    let (mem_b, full_b) = repository().await;
    let host_a = Arc::new(
        Repository::open(Arc::new(mem_a), HOST_PASSWORD)
            .await
            .unwrap(),
    );
    let (_, host_b) = host_failing_first_upload(Arc::new(mem_b)).await;
    let repos = [host_a, host_b];
    let dir = tempfile::tempdir().unwrap();
    let data = wal(3);
    let seg = segment(dir.path(), &data);

    let failed = push(&repos, "set", SYSID, &seg, &PushOptions::default())
        .await
        .unwrap_err();
    assert_eq!(failed.repository, Some(1), "{}", failed.error);
    assert!(
        intent(&seg).exists(),
        "the first repository stored the file: the retry must accept it"
    );

    // The retry finds its own file in the first repository and uploads
    // into the second.
    let report = push(&repos, "set", SYSID, &seg, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(report.stored, [SEGMENT], "{report:?}");
    assert!(!intent(&seg).exists(), "removed once archived everywhere");
    for full in [&full_a, &full_b] {
        assert_eq!(get_wal(full, SYSID, SEGMENT).await.unwrap().unwrap(), data);
    }
}
