//! Writes the seed corpus of the `write_only` fuzz target
//! (`fuzz/corpus/write_only/`): the index objects of a repository that
//! takes write-only keys, one written by a full key and one by a
//! write-only key (mode byte 0, as stored), and the plaintext of an id
//! list (mode byte 1). See `fuzz/fuzz_targets/write_only.rs`.
//!
//! Run: `cargo run -p lifeboat-repo --example fuzz_corpus_write_only -- fuzz/corpus`

use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::{BlobType, InitOptions, KdfParams, Repository, WriteOptions, WriteSession};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage};

async fn add(repo: &Arc<Repository>, blobs: &[&[u8]]) {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for b in blobs {
        session.add_blob(BlobType::Data, b).await.unwrap();
    }
    session.add_blob(BlobType::Tree, &[0]).await.unwrap();
    session.flush().await.unwrap();
}

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: fuzz_corpus_write_only DIR");
    let dir = Path::new(&out).join("write_only");
    std::fs::create_dir_all(&dir).unwrap();
    let mem = MemoryStorage::new();
    let storage: DynStorage = Arc::new(mem.clone());
    let full = Arc::new(
        Repository::init(
            storage.clone(),
            b"full",
            InitOptions {
                kdf: KdfParams::INSECURE_TEST,
                write_only_keys: true,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    add(&full, &[b"written by a full key", b"another blob"]).await;
    lifeboat_repo::keys::add_write_only(&full, b"host", KdfParams::INSECURE_TEST)
        .await
        .unwrap();
    let host = Arc::new(Repository::open(storage, b"host").await.unwrap());
    add(&host, &[b"written by a write-only key"]).await;
    for (k, bytes) in mem.snapshot() {
        if k.kind() != Kind::Index {
            continue;
        }
        let name = &k.name()[..16];
        let mut v = vec![0u8];
        v.extend_from_slice(&bytes);
        std::fs::write(dir.join(name), v).unwrap();
    }
    // An id list's plaintext: one pack with a data and a tree blob.
    let ids = vec![(
        lifeboat_repo::Id([7; 32]),
        vec![
            (BlobType::Data, lifeboat_repo::Id([1; 32])),
            (BlobType::Tree, lifeboat_repo::Id([2; 32])),
        ],
    )];
    let mut v = vec![1u8];
    v.extend_from_slice(&postcard::to_allocvec(&ids).unwrap());
    std::fs::write(dir.join("ids-plain"), v).unwrap();
}
