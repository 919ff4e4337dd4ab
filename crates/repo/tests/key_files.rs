//! Key files read from storage are untrusted (issue 12): a storage writer
//! without the password can edit them, plant new ones, and plant many.
//! These tests name the attack each one stops.

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::{
    Error, KdfParams, KeyFile, LocalState, MAX_KEY_FILES_TRIED, MasterKey, Repository,
};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey, Storage};

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::{PASSWORD, memory_repo};

async fn key_names(mem: &MemoryStorage) -> Vec<String> {
    let mut names: Vec<String> = mem
        .list(Kind::Keys)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key.name().to_string())
        .collect();
    names.sort();
    names
}

/// Stores `bytes` as a key file under the hash of its bytes; returns the name.
async fn plant(mem: &MemoryStorage, bytes: Vec<u8>) -> String {
    let name = blake3::hash(&bytes).to_hex().to_string();
    mem.put(
        &ObjectKey::new(Kind::Keys, name.clone()),
        Bytes::from(bytes),
    )
    .await
    .unwrap();
    name
}

fn storage(mem: &MemoryStorage) -> DynStorage {
    Arc::new(mem.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_any_key_file_field_breaks_that_key_instead_of_misleading() {
    for (field, value) in [
        ("host", serde_json::json!("forged-host")),
        ("user", serde_json::json!("mallory")),
        ("created", serde_json::json!("2020-01-01T00:00:00Z")),
    ] {
        let (mem, _repo) = memory_repo().await;
        let [name] = key_names(&mem).await.try_into().unwrap();
        let key = ObjectKey::new(Kind::Keys, name);
        let mut json: serde_json::Value =
            serde_json::from_slice(&mem.get(&key).await.unwrap()).unwrap();
        json[field] = value;
        mem.delete(&key).await.unwrap();
        plant(&mem, serde_json::to_vec_pretty(&json).unwrap()).await;
        assert!(
            matches!(
                Repository::open(storage(&mem), PASSWORD).await,
                Err(Error::WrongPassword)
            ),
            "a key file with an edited {field} still opened"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_files_with_kdf_parameters_below_the_defaults_are_refused_before_the_kdf() {
    let cheap = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    // A storage writer plants a key file wrapping a master key of their own
    // under a guess, cheap to derive: a guess that opens it would show as
    // "config is corrupt", confirming the password.
    let (mem, repo) = memory_repo().await;
    let planted = KeyFile::create(&MasterKey::generate(), PASSWORD, cheap).unwrap();
    let err = KeyFile::decode("keys/planted", &planted.encode()).unwrap_err();
    assert!(
        err.to_string().contains("below the minimum"),
        "unexpected error: {err}"
    );
    plant(&mem, planted.encode()).await;
    let opened = Repository::open(storage(&mem), PASSWORD).await.unwrap();
    assert_eq!(opened.key_id(), repo.key_id());
    assert!(matches!(
        Repository::open(storage(&mem), b"wrong guess").await,
        Err(Error::WrongPassword)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrapped_key_of_the_wrong_shape_is_refused_before_the_kdf() {
    let kf = KeyFile::create(&MasterKey::generate(), b"pw", KdfParams::INSECURE_TEST).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&kf.encode()).unwrap();
    let wrapped = json["wrapped"].as_str().unwrap().to_string();
    for bad in [
        format!("{wrapped}00"),
        wrapped[..wrapped.len() - 2].to_string(),
        wrapped.to_uppercase(),
        format!("zz{}", &wrapped[2..]),
        String::new(),
    ] {
        let mut j = json.clone();
        j["wrapped"] = serde_json::json!(bad);
        // The most expensive parameters a reader accepts: had the KDF run
        // before the shape check, this test would take minutes.
        j["kdf"]["memory_kib"] = serde_json::json!(4 * 1024 * 1024);
        j["kdf"]["iterations"] = serde_json::json!(64);
        let err = KeyFile::decode("keys/x", &serde_json::to_vec(&j).unwrap()).unwrap_err();
        assert!(err.to_string().contains("wrapped key"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_unwraps_but_does_not_open_the_config_is_not_this_key() {
    let (mem, repo) = memory_repo().await;
    let [real] = key_names(&mem).await.try_into().unwrap();
    // Another master key under the same password, named to sort before the
    // real key so it is tried first.
    loop {
        let kf =
            KeyFile::create(&MasterKey::generate(), PASSWORD, KdfParams::INSECURE_TEST).unwrap();
        let bytes = kf.encode();
        if blake3::hash(&bytes).to_hex().as_str() < real.as_str() {
            plant(&mem, bytes).await;
            break;
        }
    }
    let opened = Repository::open(storage(&mem), PASSWORD).await.unwrap();
    assert_eq!(opened.key_id(), repo.key_id());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_tries_a_bounded_number_of_key_files_the_last_one_used_first() {
    let (mem, repo) = memory_repo().await;
    let cache = tempfile::tempdir().unwrap();
    let local = || Some(LocalState::new(cache.path()));
    // Remembered on this machine.
    Repository::open_with(storage(&mem), PASSWORD, local())
        .await
        .unwrap();
    let [real] = key_names(&mem).await.try_into().unwrap();
    let mut before = 0;
    while before < MAX_KEY_FILES_TRIED {
        let kf =
            KeyFile::create(&MasterKey::generate(), b"other", KdfParams::INSECURE_TEST).unwrap();
        let bytes = kf.encode();
        if blake3::hash(&bytes).to_hex().as_str() < real.as_str() {
            plant(&mem, bytes).await;
            before += 1;
        }
    }
    match Repository::open(storage(&mem), PASSWORD).await {
        Err(e @ Error::TooManyKeyFiles { .. }) => {
            assert!(e.to_string().contains("key remove"), "{e}")
        }
        other => panic!("expected the cap on key files tried, got {other:?}"),
    }
    let opened = Repository::open_with(storage(&mem), PASSWORD, local())
        .await
        .unwrap();
    assert_eq!(opened.key_id(), repo.key_id());
}

/// New key files use four lanes (RFC 9106's second option); key files
/// that builds before that wrote with one lane, the minimum, still open.
/// Both at the real costs, so this runs the 64 MiB KDF four times.
#[test]
fn new_key_files_use_four_lanes_and_one_lane_files_still_open() {
    assert_eq!(KdfParams::DEFAULT.parallelism, 4);
    assert_eq!(KdfParams::MINIMUM.parallelism, 1);
    let master = MasterKey::generate();
    for params in [KdfParams::DEFAULT, KdfParams::MINIMUM] {
        let kf = KeyFile::create(&master, PASSWORD, params).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&kf.encode()).unwrap();
        assert_eq!(json["kdf"]["parallelism"], params.parallelism);
        let read = KeyFile::decode("keys/x", &kf.encode()).unwrap();
        let opened = read
            .unwrap_key(PASSWORD)
            .unwrap()
            .expect("the password opens it");
        assert_eq!(opened.blob_id(b"probe"), master.blob_id(b"probe"));
        assert!(read.unwrap_key(b"wrong").unwrap().is_none());
    }
}
