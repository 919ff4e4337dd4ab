//! A write session holds a bounded number of finished packs however slow
//! the storage is (issue 17, memory by design).
//!
//! The storage here holds every pack upload until the test lets it go.
//! Eight callers keep adding blobs meanwhile. The session may hold the
//! packs being uploaded, one waiting in the uploader's channel and one in
//! the hands of the caller that finished it; the other callers wait before
//! their next blob. Before the hand-over gate each caller could come to
//! hold a finished pack of its own while it waited (8 here, as `copy` adds
//! 8 blobs at once): about twice the packs these tests allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_repo::{BlobType, InitOptions, KdfParams, Repository, WriteOptions, WriteSession};
use lifeboat_storage::{
    Capabilities, DynStorage, Kind, MemoryStorage, ObjectInfo, ObjectKey, Result, Storage,
};
use tokio::sync::watch;

// testkit's repository fixtures, compiled in (see api.rs for why).
#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;

/// Adding callers, as many as `copy` runs at once.
const CALLERS: usize = 8;
/// Blobs each caller adds.
const BLOBS_EACH: usize = 24;
/// Pack size of the test repository, and blob size: four blobs fill a pack
/// (each is a little over a quarter with its encryption overhead).
const PACK: u32 = 1024 * 1024;
const BLOB: usize = 256 * 1024;
const BLOBS_PER_PACK: u64 = 4;
/// The storage's connections: the session uploads this many packs at once
/// (`uploads_at_once`: the 64 MiB budget holds 64 packs of 1 MiB).
const CONNECTIONS: usize = 2;

/// Memory storage whose pack uploads wait until `open` says true.
#[derive(Debug)]
struct HeldUploads {
    inner: MemoryStorage,
    open: watch::Receiver<bool>,
    packs_put: AtomicU64,
}

#[async_trait]
impl Storage for HeldUploads {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_connections: CONNECTIONS,
            ..self.inner.capabilities()
        }
    }
    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        if key.kind() == Kind::Packs {
            let mut open = self.open.clone();
            open.wait_for(|o| *o)
                .await
                .expect("the test keeps the sender");
            self.packs_put.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.inner.stat(key).await
    }
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.inner.list(kind).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }
}

/// Distinct, incompressible bytes for caller `c`'s blob `i`.
fn blob(c: usize, i: usize) -> Vec<u8> {
    lifeboat_testkit::data::pseudo_random(BLOB, (c * 1000 + i) as u64)
}

struct Setup {
    repo: Arc<Repository>,
    session: Arc<WriteSession>,
    open: watch::Sender<bool>,
    storage: Arc<HeldUploads>,
}

async fn setup() -> Setup {
    let (open, rx) = watch::channel(false);
    let storage = Arc::new(HeldUploads {
        inner: MemoryStorage::new(),
        open: rx,
        packs_put: AtomicU64::new(0),
    });
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: PACK,
        compression_level: 0,
        ..Default::default()
    };
    let dynamic: DynStorage = storage.clone();
    let repo = Arc::new(Repository::init(dynamic, b"pw", options).await.unwrap());
    let session = Arc::new(
        WriteSession::start(repo.clone(), WriteOptions::default())
            .await
            .unwrap(),
    );
    Setup {
        repo,
        session,
        open,
        storage,
    }
}

/// Waits until the session stops adding blobs (none added for half a
/// second), and returns how many it added.
async fn settled(session: &WriteSession) -> u64 {
    let mut last = u64::MAX;
    let mut quiet = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = session.stats().blobs_added.load(Ordering::Relaxed);
        if now == last {
            quiet += 1;
            if quiet == 5 {
                return now;
            }
        } else {
            quiet = 0;
            last = now;
        }
    }
    panic!("the callers never stopped adding: nothing holds them back");
}

/// The blobs a session may have taken while uploads are held: the packs
/// uploading (one per connection), one in the channel and one in the hands
/// of the caller that finished it, each full; and the open pack, into which
/// callers that passed the gate before the hand-over began may each have
/// put one blob (at most one pack's worth more: the caller that fills it
/// waits at the gate with it).
fn allowed() -> u64 {
    (CONNECTIONS as u64 + 3) * BLOBS_PER_PACK + (BLOBS_PER_PACK - 1)
}

async fn finish(s: Setup, callers_done: impl std::future::Future<Output = ()>) {
    assert_eq!(s.storage.packs_put.load(Ordering::Relaxed), 0);
    s.open.send(true).unwrap();
    callers_done.await;
    let session = Arc::into_inner(s.session).expect("the callers are done");
    session.flush().await.unwrap();
    let total = (CALLERS * BLOBS_EACH) as u64;
    assert!(s.storage.packs_put.load(Ordering::Relaxed) >= total / BLOBS_PER_PACK);
    s.repo.invalidate_index().await;
    assert_eq!(s.repo.index().await.unwrap().blob_count() as u64, total);
    fixtures::assert_check_ok(&s.repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_callers_stop_at_the_hand_over_while_uploads_are_held() {
    let s = setup().await;
    let threads: Vec<_> = (0..CALLERS)
        .map(|c| {
            let session = s.session.clone();
            std::thread::spawn(move || {
                for i in 0..BLOBS_EACH {
                    session
                        .add_blob_blocking(BlobType::Data, &blob(c, i))
                        .unwrap();
                }
            })
        })
        .collect();
    let added = settled(&s.session).await;
    assert!(
        added <= allowed(),
        "{added} blobs taken while uploads were held: the callers filled more packs than \
         the uploads, the channel and one hand-over (at most {} blobs)",
        allowed()
    );
    finish(s, async {
        tokio::task::spawn_blocking(move || {
            for t in threads {
                t.join().unwrap();
            }
        })
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_callers_stop_at_the_hand_over_while_uploads_are_held() {
    let s = setup().await;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let session = s.session.clone();
            tokio::spawn(async move {
                for i in 0..BLOBS_EACH {
                    session.add_blob(BlobType::Data, &blob(c, i)).await.unwrap();
                }
            })
        })
        .collect();
    let added = settled(&s.session).await;
    assert!(
        added <= allowed(),
        "{added} blobs taken while uploads were held (at most {})",
        allowed()
    );
    finish(s, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}
