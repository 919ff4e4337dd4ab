//! Bounded reads of untrusted objects (issue 12, item 4).
//!
//! Someone with write access to the storage and no password plants
//! oversized objects in `keys/`, `locks/`, `snapshots/` and `index/`.
//! Before, every command read them whole (a 2 GiB sparse file cost 2 GiB
//! of memory per command). Now each kind's maximum size is checked from
//! the listing before the object is read, and an object over it is
//! refused, named, without reading a byte of it. The tests count the
//! bytes read from storage (seen failing before the fix: every planted
//! object was read whole).

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::limits::{
    MAX_INDEX_LEN, MAX_KEY_FILE_LEN, MAX_LOCK_LEN, MAX_SNAPSHOT_LEN, max_object_len,
};
use lifeboat_repo::lock::list_locks;
use lifeboat_repo::{
    BlobType, Id, IndexFile, IndexPack, InitOptions, KdfParams, PackEntry, Repository,
};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::CountingStorage;

const MIB: u64 = 1024 * 1024;

async fn plant(mem: &MemoryStorage, kind: Kind, name: &str, len: u64) {
    mem.put(
        &ObjectKey::new(kind, name),
        Bytes::from(vec![0x42u8; len as usize]),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_objects_are_refused_before_they_are_read() {
    let mem = MemoryStorage::new();
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        ..Default::default()
    };
    Repository::init(Arc::new(mem.clone()), b"pw", options)
        .await
        .unwrap();
    // Names sort first, so the key file is the first one tried.
    let zeros = "0".repeat(64);
    plant(&mem, Kind::Keys, &zeros, MAX_KEY_FILE_LEN + 1).await;
    plant(&mem, Kind::Locks, &zeros, MAX_LOCK_LEN + 1).await;
    plant(&mem, Kind::Snapshots, &zeros, MAX_SNAPSHOT_LEN + 1).await;

    let counting = Arc::new(CountingStorage::new(Arc::new(mem.clone())));
    let storage: DynStorage = counting.clone();
    let repo = Repository::open(storage.clone(), b"pw")
        .await
        .expect("the planted key file is skipped");
    let snapshots = repo.snapshots().await.unwrap();
    assert!(snapshots.is_empty());
    let locks = list_locks(&storage, repo.key()).await.unwrap();
    assert_eq!(locks.len(), 1);
    let e = locks[0].info.as_ref().unwrap_err().to_string();
    assert!(e.contains(&zeros) && e.contains("more than"), "{e}");
    let read = counting.counts().read_bytes;
    assert!(
        read < MIB,
        "{read} bytes read: the planted objects were read"
    );

    // An oversized index object stops the index load, named, unread.
    plant(&mem, Kind::Index, &zeros, MAX_INDEX_LEN + 1).await;
    let before = counting.counts().read_bytes;
    let e = repo.load_index().await.unwrap_err().to_string();
    assert!(e.contains(&format!("index/{zeros}")), "{e}");
    assert!(e.contains("more than"), "{e}");
    assert!(counting.counts().read_bytes - before < MIB);
}

#[test]
fn every_kind_read_whole_has_a_bound() {
    for kind in [
        Kind::Config,
        Kind::Keys,
        Kind::Locks,
        Kind::Snapshots,
        Kind::Index,
    ] {
        assert!(max_object_len(kind).is_some(), "{kind:?}");
    }
}

/// A key holder's index entry claiming a 4 GiB blob is refused when the
/// index object is decoded, before any reader sizes a buffer by it (seen
/// failing before: the entry was accepted).
#[test]
fn an_index_entry_claiming_a_4_gib_blob_is_refused() {
    let key = lifeboat_repo::MasterKey::generate();
    let entry = PackEntry {
        blob_type: BlobType::Data,
        id: Id([7; 32]),
        offset: 0,
        length: u32::MAX,
        raw_length: u32::MAX,
        compressed: true,
    };
    let file = IndexFile {
        packs: vec![IndexPack {
            id: Id([1; 32]),
            entries: vec![entry],
        }],
        supersedes: vec![],
    };
    let e = IndexFile::decode(&key, "index/x", &file.encode(&key)).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    // A sane entry passes.
    let ok = PackEntry {
        length: 1040,
        raw_length: 1000,
        ..entry
    };
    let file = IndexFile {
        packs: vec![IndexPack {
            id: Id([1; 32]),
            entries: vec![ok],
        }],
        supersedes: vec![],
    };
    IndexFile::decode(&key, "index/x", &file.encode(&key)).unwrap();
}

/// A stray object in `keys/` whose name is not an id (`keys/abc`) is not a
/// key file: `key list` and `key remove` skip it instead of panicking on
/// its name (issue 12, low).
#[tokio::test(flavor = "multi_thread")]
async fn a_stray_key_name_does_not_break_key_list_or_remove() {
    let mem = MemoryStorage::new();
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        ..Default::default()
    };
    let repo = Repository::init(Arc::new(mem.clone()), b"pw", options)
        .await
        .unwrap();
    plant(&mem, Kind::Keys, "abc", 10).await;
    let keys = lifeboat_repo::keys::list(&repo).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let e = lifeboat_repo::keys::remove(&repo, "abc").await.unwrap_err();
    assert!(e.to_string().contains("no key matches"), "{e}");
}
