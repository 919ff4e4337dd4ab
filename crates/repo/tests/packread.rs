//! The pack reader against a real (in-memory) repository: blobs come back
//! verified, batched into few ranged reads, a damaged blob or a missing
//! pack is an error for its blobs only, and a tiny memory budget still
//! gets through everything.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_repo::{
    BlobLocation, BlobType, Error, Id, InitOptions, KdfParams, PackReader, RangeLimits, Repository,
    WriteOptions, WriteSession, pack_object_path,
};
use lifeboat_storage::{Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::CountingStorage;
use lifeboat_testkit::data::pseudo_random;

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::one_file_tree;

struct Fixture {
    mem: MemoryStorage,
    counting: Arc<CountingStorage>,
    repo: Arc<Repository>,
    /// Plaintext by blob id.
    blobs: HashMap<Id, Vec<u8>>,
}

/// A repository of 120 data blobs of 20 KiB in packs of about 1 MiB.
async fn fixture() -> Fixture {
    let mem = MemoryStorage::new();
    let counting = Arc::new(CountingStorage::new(Arc::new(mem.clone())));
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        // Stored as they are, so each blob is 20 KiB in its pack too.
        compression_level: 0,
        ..Default::default()
    };
    let repo = Arc::new(
        Repository::init(counting.clone(), b"pw", options)
            .await
            .unwrap(),
    );
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let mut blobs = HashMap::new();
    for i in 0..120 {
        let data = pseudo_random(20 * 1024, i);
        let added = session.add_blob(BlobType::Data, &data).await.unwrap();
        blobs.insert(added.id, data);
    }
    session.flush().await.unwrap();
    repo.invalidate_index().await;
    Fixture {
        mem,
        counting,
        repo,
        blobs,
    }
}

impl Fixture {
    async fn locations(&self) -> Vec<BlobLocation> {
        let mut out = Vec::new();
        for id in self.blobs.keys() {
            out.push(self.repo.locate(BlobType::Data, id).await.unwrap());
        }
        out
    }

    async fn read_all(
        &self,
        wanted: Vec<BlobLocation>,
        budget_kib: u32,
    ) -> Vec<(BlobLocation, lifeboat_repo::Result<Bytes>)> {
        let reader = PackReader::new(&self.repo, budget_kib);
        reader
            .read_blobs(wanted, RangeLimits::RESTORE)
            .map(|b| (b.location, b.data))
            .collect()
            .await
    }
}

fn pack_key(id: &Id) -> ObjectKey {
    ObjectKey::new(Kind::Packs, id.to_hex())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_blob_comes_back_verified_in_one_read_per_pack() {
    let fx = fixture().await;
    let wanted = fx.locations().await;
    let packs: std::collections::HashSet<Id> = wanted.iter().map(|l| l.pack).collect();
    assert!(packs.len() >= 3, "the fixture spans several packs");
    fx.counting.reset();
    let got = fx.read_all(wanted, 24 * 1024).await;
    assert_eq!(got.len(), 120);
    for (loc, data) in &got {
        assert_eq!(&data.as_ref().unwrap()[..], &fx.blobs[&loc.entry.id][..]);
    }
    // Adjacent blobs of a pack (well under 4 MiB) are one ranged read.
    assert_eq!(fx.counting.counts().reads, packs.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_location_given_twice_is_read_once_and_yielded_twice() {
    let fx = fixture().await;
    let one = fx.locations().await[0];
    fx.counting.reset();
    let got = fx.read_all(vec![one, one], 24 * 1024).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(l, d)| *l == one && d.is_ok()));
    assert_eq!(fx.counting.counts().reads, 1);
    assert_eq!(fx.counting.counts().read_bytes, one.entry.length as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_blob_fails_alone_and_a_missing_pack_fails_its_blobs() {
    let fx = fixture().await;
    let wanted = fx.locations().await;
    let victim = wanted[5];
    let key = pack_key(&victim.pack);
    let mut bytes = fx.mem.snapshot()[&key].to_vec();
    bytes[victim.entry.offset as usize + 100] ^= 0x01;
    fx.mem.tamper(&key, Bytes::from(bytes));
    let gone = wanted
        .iter()
        .map(|l| l.pack)
        .find(|p| *p != victim.pack)
        .unwrap();
    fx.mem.delete(&pack_key(&gone)).await.unwrap();

    let got = fx.read_all(wanted.clone(), 24 * 1024).await;
    assert_eq!(got.len(), wanted.len());
    for (loc, data) in got {
        if loc == victim {
            let e = data.unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(&victim.pack.to_hex()), "{e}");
        } else if loc.pack == gone {
            let e = data.unwrap_err();
            assert!(e.to_string().contains("missing"), "{e}");
        } else {
            assert_eq!(&data.unwrap()[..], &fx.blobs[&loc.entry.id][..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_smaller_than_one_range_still_reads_everything() {
    let fx = fixture().await;
    let wanted = fx.locations().await;
    let got = fx.read_all(wanted, 1).await;
    assert_eq!(got.len(), 120);
    assert!(got.iter().all(|(_, d)| d.is_ok()));
}

#[tokio::test(flavor = "multi_thread")]
async fn ranged_and_whole_reads_open_the_same_blobs() {
    let fx = fixture().await;
    let loc = fx.locations().await[3];
    // Room for both reads at once: this task holds the first while it
    // takes the second.
    let reader = PackReader::new(&fx.repo, 2048);
    let tier = fx.repo.tier_of(BlobType::Data);
    let start = loc.entry.offset as u64;
    let permit = reader.reserve(loc.entry.length as u64).await;
    let range = reader
        .read(tier, loc.pack, start, loc.entry.length as u64, permit)
        .await
        .unwrap();
    let permit = reader.reserve(1 << 20).await;
    let whole = reader.read_whole(tier, loc.pack, permit).await.unwrap();
    assert_eq!(
        Id::of_bytes(whole.bytes()),
        loc.pack,
        "a pack is named by its hash"
    );
    let want = &fx.blobs[&loc.entry.id];
    assert_eq!(&range.open(&loc.entry).unwrap(), want);
    assert_eq!(&whole.open(&loc.entry).unwrap(), want);
    // An entry outside the bytes read is an error, not a panic.
    let mut beyond = loc.entry;
    beyond.offset += 1;
    assert!(!range.contains(&beyond));
    assert!(range.open(&beyond).is_err());
    assert_eq!(
        pack_object_path(&loc.pack),
        pack_key(&loc.pack).path(),
        "the path a plan names is the object read"
    );
}

/// A repository on `mem` (counted) holding `n` small trees, flushed.
async fn tree_repo(
    mem: &MemoryStorage,
    n: usize,
) -> (Arc<CountingStorage>, Vec<(Id, lifeboat_repo::Tree)>) {
    let counting = Arc::new(CountingStorage::new(Arc::new(mem.clone())));
    let options = InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        ..Default::default()
    };
    let repo = Arc::new(
        Repository::init(counting.clone(), b"pw", options)
            .await
            .unwrap(),
    );
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let mut trees = Vec::new();
    for i in 0..n {
        let tree = one_file_tree(&format!("file-{i}"));
        let added = session
            .add_blob(BlobType::Tree, &tree.encode())
            .await
            .unwrap();
        trees.push((added.id, tree));
    }
    session.flush().await.unwrap();
    (counting, trees)
}

/// Reading many trees costs one request per tree pack, not one per tree
/// (on object storage each request is a round trip), and every tree is
/// still verified: a damaged one fails alone.
#[tokio::test(flavor = "multi_thread")]
async fn trees_are_read_one_request_per_tree_pack_and_each_is_still_verified() {
    // Object storage, where every request is a round trip.
    let mem = MemoryStorage::new().with_round_trips();
    let (counting, trees) = tree_repo(&mem, 300).await;

    // A fresh handle, as a new command would have, with its index loaded.
    let fresh = Repository::open(counting.clone(), b"pw").await.unwrap();
    fresh.index().await.unwrap();
    let mut packs = std::collections::HashSet::new();
    for (id, _) in &trees {
        packs.insert(fresh.locate(BlobType::Tree, id).await.unwrap().pack);
    }
    let before = counting.counts().reads;
    let read: Vec<_> = futures::stream::iter(&trees)
        .map(|(id, _)| fresh.read_tree(id))
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(read.iter().all(|r| r.is_ok()));
    let reads = counting.counts().reads - before;
    // Every tree comes back as written (from the packs now in memory).
    for (id, tree) in &trees {
        assert_eq!(&fresh.read_tree(id).await.unwrap(), tree, "tree {id}");
    }
    assert_eq!(
        reads,
        packs.len() as u64,
        "{} trees in {} packs took {reads} reads",
        trees.len(),
        packs.len()
    );

    // Damage one tree inside its pack: a fresh reader fails that tree, with
    // the pack named, and still reads the others.
    let (victim, _) = &trees[17];
    let loc = fresh.locate(BlobType::Tree, victim).await.unwrap();
    let key = ObjectKey::new(Kind::Packs, loc.pack.to_hex());
    let mut bytes = mem.get(&key).await.unwrap().to_vec();
    bytes[loc.entry.offset as usize + 5] ^= 0x10;
    mem.delete(&key).await.unwrap();
    mem.put(&key, Bytes::from(bytes)).await.unwrap();
    let damaged = Repository::open(counting.clone(), b"pw").await.unwrap();
    let err = damaged.read_tree(victim).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&loc.pack.to_hex()), "{err}");
    for (id, tree) in trees.iter().filter(|(id, _)| id != victim) {
        assert_eq!(&damaged.read_tree(id).await.unwrap(), tree);
    }
}

/// Where a request costs no round trip (a local disk), trees are read by
/// whole pack too: each request there is a hand-off to a blocking thread,
/// which costs a walk of thousands of trees more than the packs' bytes.
#[tokio::test(flavor = "multi_thread")]
async fn on_storage_without_round_trips_trees_are_read_one_request_per_tree_pack_too() {
    let mem = MemoryStorage::new();
    let (counting, trees) = tree_repo(&mem, 20).await;
    let fresh = Repository::open(counting.clone(), b"pw").await.unwrap();
    fresh.index().await.unwrap();
    let mut packs = std::collections::HashSet::new();
    for (id, _) in &trees {
        packs.insert(fresh.locate(BlobType::Tree, id).await.unwrap().pack);
    }
    let before = counting.counts();
    for (id, tree) in &trees {
        assert_eq!(&fresh.read_tree(id).await.unwrap(), tree, "tree {id}");
    }
    let after = counting.counts();
    assert_eq!(
        after.reads - before.reads,
        packs.len() as u64,
        "{} trees in {} packs",
        trees.len(),
        packs.len()
    );
    assert!(packs.len() < trees.len(), "{} packs", packs.len());
}
