//! The storage conformance suite: every backend must pass it.
//!
//! [`run_all`] checks each point of the [`Storage`] contract in turn and
//! panics with the backend's location and the broken rule on the first
//! violation. Each check is also public, for a backend test that wants to
//! re-run one while debugging. The suite needs a storage that starts empty;
//! every check removes what it wrote, so the storage is empty again after a
//! successful run. Whether concurrent `put`s of one key may both succeed
//! depends on [`Capabilities::atomic_create`](lifeboat_storage::Capabilities),
//! which the suite reads from the storage itself.

use std::collections::BTreeMap;

use bytes::Bytes;
use lifeboat_storage::{BoundedGet, DynStorage, ErrorKind, Kind, ObjectKey, Result, Storage};

/// Size of the large-object check: above S3's 5 MiB multipart threshold and
/// OpenDAL's default chunk sizes, and deliberately not a multiple of any
/// power of two, so chunk boundaries and the tail get exercised.
pub const LARGE_OBJECT_BYTES: usize = 20 * 1024 * 1024 + 12_345;

/// How many writers race for one key in [`concurrent_puts_have_one_winner`];
/// more than the 4 connections some backends allow, so some writers queue.
const RACING_WRITERS: u64 = 8;

/// Runs every check against `storage`, which must be empty.
pub async fn run_all(storage: DynStorage) {
    let s = storage.as_ref();
    s.create_root().await.expect("create_root");
    assert_empty(s, "at the start (the suite needs an empty storage)").await;
    capabilities_are_sane(s);
    put_get_round_trip(s).await;
    assert_empty(s, "after put_get_round_trip").await;
    put_never_overwrites(s).await;
    assert_empty(s, "after put_never_overwrites").await;
    missing_objects_are_not_found(s).await;
    get_range_is_exact(s).await;
    assert_empty(s, "after get_range_is_exact").await;
    list_returns_each_kind(s).await;
    assert_empty(s, "after list_returns_each_kind").await;
    delete_is_idempotent(s).await;
    assert_empty(s, "after delete_is_idempotent").await;
    concurrent_puts_have_one_winner(storage.clone()).await;
    assert_empty(s, "after concurrent_puts_have_one_winner").await;
    empty_object(s).await;
    assert_empty(s, "after empty_object").await;
    large_object(s).await;
    assert_empty(s, "at the end").await;
}

/// Deterministic pseudo-random bytes (SplitMix64), so a failure reproduces
/// and different seeds give different content of the same length.
pub fn test_bytes(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A valid key of `kind` whose name is derived from `n` (64 hex digits like
/// a content hash, so packs spread over fan-out directories by `n`'s top
/// byte). The config namespace has one name only.
pub fn key(kind: Kind, n: u64) -> ObjectKey {
    match kind {
        Kind::Config => ObjectKey::config(),
        _ => ObjectKey::new(kind, format!("{n:016x}{:048x}", n.wrapping_mul(31))),
    }
}

/// Panics unless no kind lists any object.
pub async fn assert_empty(s: &dyn Storage, when: &str) {
    for kind in Kind::ALL {
        let listed = s
            .list(kind)
            .await
            .unwrap_or_else(|e| panic!("{}: list({kind:?}) {when} failed: {e}", s.location()));
        assert!(
            listed.is_empty(),
            "{}: {kind:?} not empty {when}: {listed:?}",
            s.location()
        );
    }
}

pub fn capabilities_are_sane(s: &dyn Storage) {
    let caps = s.capabilities();
    assert!(caps.max_connections >= 1, "{}: {caps:?}", s.location());
}

/// Every kind round-trips bytes through `put`/`get` (and `get_into`), and
/// `stat` reports the size.
pub async fn put_get_round_trip(s: &dyn Storage) {
    let loc = s.location();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let k = key(kind, 0x1000 + i as u64);
        let data = test_bytes(i as u64, 1000 + i * 37);
        ok(&loc, "put", s.put(&k, data.clone()).await);
        let got = ok(&loc, "get", s.get(&k).await);
        assert!(got == data, "{loc}: get({k}) returned different bytes");
        // Into a buffer that holds other bytes, longer and shorter than
        // the object: only the object's bytes come back.
        for old in [vec![0xee; 5000], vec![0xee; 3]] {
            let got = ok(&loc, "get_into", s.get_into(&k, old).await);
            assert!(got == data, "{loc}: get_into({k}) returned different bytes");
        }
        let size = ok(&loc, "stat", s.stat(&k).await);
        assert_eq!(size, Some(data.len() as u64), "{loc}: stat({k})");
        ok(&loc, "delete", s.delete(&k).await);
    }
}

/// A second `put` of a key fails with `AlreadyExists` (not retryable), even
/// with identical bytes, and leaves the first object as it was.
pub async fn put_never_overwrites(s: &dyn Storage) {
    let loc = s.location();
    for kind in [Kind::Config, Kind::Packs, Kind::Locks] {
        let k = key(kind, 0x2000);
        let first = test_bytes(1, 500);
        ok(&loc, "put", s.put(&k, first.clone()).await);
        for second in [test_bytes(2, 500), test_bytes(3, 900), first.clone()] {
            let err = s.put(&k, second).await.expect_err(&format!(
                "{loc}: put over existing {k} must fail, not overwrite"
            ));
            assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{loc}: {err}");
            assert!(
                !err.is_retryable(),
                "{loc}: AlreadyExists must be permanent"
            );
        }
        let got = ok(&loc, "get", s.get(&k).await);
        assert!(got == first, "{loc}: refused put changed {k}");
        ok(&loc, "delete", s.delete(&k).await);
    }
}

/// `get`/`get_range`/`get_into` of a missing key fail with `NotFound` (permanent),
/// `stat` says `None`.
pub async fn missing_objects_are_not_found(s: &dyn Storage) {
    let loc = s.location();
    for kind in Kind::ALL {
        let k = key(kind, 0x3000);
        let err = s
            .get(&k)
            .await
            .expect_err(&format!("{loc}: get of missing {k}"));
        assert_eq!(err.kind(), ErrorKind::NotFound, "{loc}: {err}");
        assert!(!err.is_retryable(), "{loc}: NotFound must be permanent");
        let err = s
            .get_range(&k, 0, 1)
            .await
            .expect_err(&format!("{loc}: get_range of missing {k}"));
        assert_eq!(err.kind(), ErrorKind::NotFound, "{loc}: {err}");
        let err = s
            .get_at_most(&k, 1024)
            .await
            .expect_err(&format!("{loc}: get_at_most of missing {k}"));
        assert_eq!(err.kind(), ErrorKind::NotFound, "{loc}: {err}");
        let err = s
            .get_into(&k, vec![1, 2, 3])
            .await
            .expect_err(&format!("{loc}: get_into of missing {k}"));
        assert_eq!(err.kind(), ErrorKind::NotFound, "{loc}: {err}");
        assert_eq!(ok(&loc, "stat", s.stat(&k).await), None, "{loc}: stat({k})");
    }
}

/// `get_range` returns exactly the requested bytes, or `InvalidRange` for
/// any range not inside the object (never a short read).
pub async fn get_range_is_exact(s: &dyn Storage) {
    let loc = s.location();
    let k = key(Kind::Packs, 0x4000);
    let data = test_bytes(4, 1000);
    ok(&loc, "put", s.put(&k, data.clone()).await);
    let valid = [
        (0, 1000),
        (0, 1),
        (999, 1),
        (100, 250),
        (1, 999),
        (0, 0),
        (500, 0),
        (1000, 0),
    ];
    for (offset, len) in valid {
        let got = ok(&loc, "get_range", s.get_range(&k, offset, len).await);
        let want = data.slice(offset as usize..(offset + len) as usize);
        assert!(
            got == want,
            "{loc}: get_range({k}, {offset}, {len}) returned {} bytes, not the requested ones",
            got.len()
        );
    }
    let invalid = [
        (0, 1001),
        (999, 2),
        (1000, 1),
        (1001, 0),
        (5000, 10),
        (u64::MAX, 1),
        (1, u64::MAX),
    ];
    for (offset, len) in invalid {
        match s.get_range(&k, offset, len).await {
            Ok(b) => panic!(
                "{loc}: get_range({k}, {offset}, {len}) past the end of 1000 bytes returned {} bytes",
                b.len()
            ),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::InvalidRange,
                "{loc}: get_range({k}, {offset}, {len}): {e}"
            ),
        }
    }
    ok(&loc, "delete", s.delete(&k).await);
}

/// `list(kind)` returns exactly the objects of that kind with their sizes:
/// packs from every fan-out directory, nothing from other kinds.
pub async fn list_returns_each_kind(s: &dyn Storage) {
    let loc = s.location();
    let mut expected: BTreeMap<Kind, BTreeMap<ObjectKey, u64>> = BTreeMap::new();
    let mut put = async |k: ObjectKey, len: usize| {
        let data = test_bytes(len as u64, len);
        ok(&loc, "put", s.put(&k, data).await);
        expected.entry(k.kind()).or_default().insert(k, len as u64);
    };
    // Packs across several fan-out directories, two sharing one.
    for (n, len) in [
        (0x00aa_0000_0000_0000, 10),
        (0xab12_0000_0000_0000, 20),
        (0xab34_0000_0000_0000, 30),
        (0xff00_0000_0000_0000, 40),
    ] {
        put(key(Kind::Packs, n), len).await;
    }
    put(key(Kind::Config, 0), 11).await;
    put(key(Kind::Keys, 1), 12).await;
    put(key(Kind::Keys, 2), 13).await;
    put(key(Kind::Index, 3), 14).await;
    put(key(Kind::Snapshots, 4), 15).await;
    put(key(Kind::Snapshots, 5), 16).await;
    // Non-hex names are valid too (locks and fixed words).
    put(ObjectKey::new(Kind::Locks, "host-1.lock"), 17).await;
    let keys = expected
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect::<Vec<_>>();
    for kind in Kind::ALL {
        let listed = ok(&loc, "list", s.list(kind).await);
        let got: BTreeMap<ObjectKey, u64> = listed
            .iter()
            .map(|o| (o.key.clone(), o.size_bytes))
            .collect();
        assert_eq!(
            got.len(),
            listed.len(),
            "{loc}: list({kind:?}) has duplicates"
        );
        let want = expected.get(&kind).cloned().unwrap_or_default();
        assert_eq!(got, want, "{loc}: list({kind:?})");
    }
    for k in keys {
        ok(&loc, "delete", s.delete(&k).await);
    }
}

/// `delete` removes an object; deleting it again, or a key that never
/// existed, succeeds; the key can then be written afresh.
pub async fn delete_is_idempotent(s: &dyn Storage) {
    let loc = s.location();
    let k = key(Kind::Locks, 0x5000);
    ok(&loc, "put", s.put(&k, test_bytes(5, 64)).await);
    ok(&loc, "delete", s.delete(&k).await);
    assert_eq!(
        ok(&loc, "stat", s.stat(&k).await),
        None,
        "{loc}: deleted {k} still there"
    );
    let err = s
        .get(&k)
        .await
        .expect_err(&format!("{loc}: get of deleted {k}"));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{loc}: {err}");
    ok(&loc, "second delete", s.delete(&k).await);
    ok(
        &loc,
        "delete of never-written key",
        s.delete(&key(Kind::Packs, 0x5001)).await,
    );
    let again = test_bytes(6, 80);
    ok(&loc, "put after delete", s.put(&k, again.clone()).await);
    assert!(
        ok(&loc, "get", s.get(&k).await) == again,
        "{loc}: re-put of {k}"
    );
    ok(&loc, "delete", s.delete(&k).await);
}

/// Writers racing to create one key: every loser gets `AlreadyExists` and
/// the stored object is one writer's complete bytes. With
/// `atomic_create`, exactly one writer wins.
pub async fn concurrent_puts_have_one_winner(storage: DynStorage) {
    let loc = storage.location();
    let atomic = storage.capabilities().atomic_create;
    for round in 0..3u64 {
        let k = key(Kind::Snapshots, 0x6000 + round);
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..RACING_WRITERS {
            let (storage, k) = (storage.clone(), k.clone());
            // Equal lengths, so only the bytes tell the writers apart.
            let data = test_bytes(100 * round + writer, 4096);
            tasks.spawn(async move { (writer, data.clone(), storage.put(&k, data).await) });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (writer, data, result) = joined.expect("put task panicked");
            match result {
                Ok(()) => winners.push(data),
                Err(e) => assert_eq!(
                    e.kind(),
                    ErrorKind::AlreadyExists,
                    "{loc}: racing writer {writer} of {k}: {e}"
                ),
            }
        }
        assert!(!winners.is_empty(), "{loc}: no racing put of {k} succeeded");
        if atomic {
            assert_eq!(
                winners.len(),
                1,
                "{loc}: {} racing puts of {k} succeeded, but the storage claims atomic_create",
                winners.len()
            );
        }
        let stored = ok(&loc, "get", storage.get(&k).await);
        assert!(
            winners.contains(&stored),
            "{loc}: {k} holds bytes that no successful writer wrote"
        );
        ok(&loc, "delete", storage.delete(&k).await);
    }
}

/// A zero-byte object is an object: stored, listed with size 0, read back.
pub async fn empty_object(s: &dyn Storage) {
    let loc = s.location();
    let k = key(Kind::Index, 0x7000);
    ok(&loc, "put", s.put(&k, Bytes::new()).await);
    assert_eq!(ok(&loc, "get", s.get(&k).await).len(), 0, "{loc}: get({k})");
    assert_eq!(
        ok(&loc, "stat", s.stat(&k).await),
        Some(0),
        "{loc}: stat({k})"
    );
    let listed = ok(&loc, "list", s.list(Kind::Index).await);
    assert!(
        listed.len() == 1 && listed[0].key == k && listed[0].size_bytes == 0,
        "{loc}: list(Index) with one empty object: {listed:?}"
    );
    assert!(ok(&loc, "get_range", s.get_range(&k, 0, 0).await).is_empty());
    assert_eq!(
        ok(&loc, "get_at_most", s.get_at_most(&k, 0).await),
        BoundedGet::Whole(Bytes::new()),
        "{loc}: get_at_most({k}, 0) of an empty object"
    );
    let err = s
        .get_range(&k, 0, 1)
        .await
        .expect_err(&format!("{loc}: get_range past the end of empty {k}"));
    assert_eq!(err.kind(), ErrorKind::InvalidRange, "{loc}: {err}");
    let err = s
        .put(&k, Bytes::from_static(b"x"))
        .await
        .expect_err(&format!("{loc}: put over empty {k} must fail"));
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{loc}: {err}");
    ok(&loc, "delete", s.delete(&k).await);
}

/// A pack-sized object ([`LARGE_OBJECT_BYTES`]) round-trips, and ranges in
/// its middle and at its tail are exact.
pub async fn large_object(s: &dyn Storage) {
    let loc = s.location();
    let k = key(Kind::Packs, 0x8000);
    let data = test_bytes(8, LARGE_OBJECT_BYTES);
    let len = data.len() as u64;
    ok(&loc, "put", s.put(&k, data.clone()).await);
    assert_eq!(
        ok(&loc, "stat", s.stat(&k).await),
        Some(len),
        "{loc}: stat({k})"
    );
    let got = ok(&loc, "get", s.get(&k).await);
    assert!(
        got == data,
        "{loc}: large {k} came back as {} different bytes",
        got.len()
    );
    // A bounded read returns the whole object at its size, and refuses it
    // one byte below (without reading it whole) and far below.
    match ok(&loc, "get_at_most", s.get_at_most(&k, len).await) {
        BoundedGet::Whole(got) => assert!(got == data, "{loc}: get_at_most({k}, {len})"),
        other => panic!("{loc}: get_at_most({k}, {len}) of a {len}-byte object: {other:?}"),
    }
    for max in [len - 1, 1024] {
        match ok(&loc, "get_at_most", s.get_at_most(&k, max).await) {
            BoundedGet::TooLarge(size) => assert!(
                size.is_none_or(|n| n == len),
                "{loc}: get_at_most({k}, {max}) says the size is {size:?}, not {len}"
            ),
            BoundedGet::Whole(got) => {
                panic!(
                    "{loc}: get_at_most({k}, {max}) returned {} bytes",
                    got.len()
                )
            }
        }
    }
    for (offset, n) in [(7 * 1024 * 1024 - 3, 3 * 1024 * 1024), (len - 100, 100)] {
        let got = ok(&loc, "get_range", s.get_range(&k, offset, n).await);
        assert!(
            got == data.slice(offset as usize..(offset + n) as usize),
            "{loc}: get_range({k}, {offset}, {n}) of a large object"
        );
    }
    let listed = ok(&loc, "list", s.list(Kind::Packs).await);
    assert_eq!(
        listed.iter().map(|o| o.size_bytes).collect::<Vec<_>>(),
        vec![len],
        "{loc}: list(Packs) size of a large object"
    );
    ok(&loc, "delete", s.delete(&k).await);
}

#[track_caller]
fn ok<T>(location: &str, what: &str, result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{location}: {what} failed: {e} ({:?})", e.kind()))
}
