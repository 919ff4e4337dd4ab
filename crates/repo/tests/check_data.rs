//! `check --read-data` across many packs: parallel verification names the
//! same damage as one worker, holds no more pack bytes than its budget,
//! and subset runs move through the repository by the local record of
//! what was verified when (coverage).

use std::sync::Arc;

use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use lifeboat_repo::{
    BackupMode, BlobType, CheckOptions, CheckReport, DataSubset, LocalState, Repository,
    SnapshotRecord, Tree, VerifyOptions, WriteOptions, WriteSession, check_with,
};
use lifeboat_storage::{Kind, MemoryStorage, Storage};

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::{PASSWORD, memory_repo};

/// Writes one snapshot of `n` incompressible 192 KiB data blobs (five to a
/// 1 MiB test pack) named by `seed`, and an empty root tree.
async fn add_snapshot(repo: &Arc<Repository>, n: u32, seed: u32) {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    for i in 0..n {
        let mut data = vec![0u8; 192 * 1024];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .update(&i.to_le_bytes())
            .finalize_xof()
            .fill(&mut data);
        session.add_blob(BlobType::Data, &data).await.unwrap();
    }
    let tree = session
        .add_blob(BlobType::Tree, &Tree::default().encode())
        .await
        .unwrap()
        .id;
    let record = SnapshotRecord {
        time: Timestamp::now(),
        host: "h".into(),
        user: "u".into(),
        paths: vec!["/x".into()],
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
    session.finish(record).await.unwrap();
}

/// A repository of about a dozen packs, and its storage.
async fn many_packs() -> (MemoryStorage, Arc<Repository>) {
    let (mem, repo) = memory_repo().await;
    add_snapshot(&repo, 60, 1).await;
    (mem, repo)
}

async fn read_data(repo: &Repository, verify: &VerifyOptions) -> CheckReport {
    let options = CheckOptions {
        read_data: true,
        ..Default::default()
    };
    check_with(repo, &options, verify, &|_, _| {})
        .await
        .unwrap()
}

async fn pack_sizes(mem: &MemoryStorage) -> Vec<(String, u64)> {
    mem.list(Kind::Packs)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.key.name().to_string(), i.size_bytes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_pack_among_many_is_named_by_parallel_workers() {
    let (mem, repo) = many_packs().await;
    let packs = pack_sizes(&mem).await;
    assert!(packs.len() >= 10, "{} packs", packs.len());
    // Damage the middle of one data pack in the middle of the listing.
    let (victim, _) = &packs[packs.len() / 2];
    let key = mem
        .list(Kind::Packs)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.key.name() == victim)
        .unwrap()
        .key;
    let mut bytes = mem.get(&key).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    mem.tamper(&key, Bytes::from(bytes));

    let parallel = read_data(
        &repo,
        &VerifyOptions {
            workers: Some(4),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(parallel.read_workers, 4);
    assert_eq!(parallel.packs_read, packs.len());
    assert_eq!(parallel.damaged_packs, vec![victim.clone()]);
    let named: Vec<&str> = parallel.errors.iter().map(|e| e.object.as_str()).collect();
    assert_eq!(
        named,
        vec![format!("pack {victim}").as_str()],
        "{parallel:?}"
    );

    // One worker finds exactly the same, in the same order.
    let serial = read_data(
        &repo,
        &VerifyOptions {
            workers: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(serial.errors, parallel.errors);
    assert_eq!(serial.damaged_packs, parallel.damaged_packs);
    assert_eq!(serial.read_bytes, parallel.read_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packs_held_at_once_stay_within_the_byte_budget() {
    let (mem, repo) = many_packs().await;
    let sizes = pack_sizes(&mem).await;
    let largest = sizes.iter().map(|(_, s)| *s).max().unwrap();
    let smallest = sizes.iter().map(|(_, s)| *s).min().unwrap();
    // Room for two and a half packs, with eight workers wanting more.
    let budget = largest * 5 / 2;
    let report = read_data(
        &repo,
        &VerifyOptions {
            workers: Some(8),
            memory_bytes: Some(budget),
            ..Default::default()
        },
    )
    .await;
    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!(report.packs_read, sizes.len());
    assert_eq!(report.read_budget_bytes, budget);
    assert!(
        report.read_peak_bytes <= budget,
        "held {} bytes at once, budget {budget}",
        report.read_peak_bytes
    );
    // Something was held: the counter counts.
    assert!(report.read_peak_bytes >= smallest);

    // A budget smaller than a pack still reads every pack, one at a time.
    let report = read_data(
        &repo,
        &VerifyOptions {
            workers: Some(8),
            memory_bytes: Some(64 * 1024),
            ..Default::default()
        },
    )
    .await;
    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!(report.packs_read, sizes.len());
    assert!(
        report.read_peak_bytes <= largest,
        "{}",
        report.read_peak_bytes
    );
}

/// The repository of `mem` opened again with local state under `dir`.
async fn with_state(mem: &MemoryStorage, dir: &std::path::Path) -> Repository {
    Repository::open_with(Arc::new(mem.clone()), PASSWORD, Some(LocalState::new(dir)))
        .await
        .unwrap()
}

fn subset_run(n: u32, m: u32, now: Timestamp) -> VerifyOptions {
    VerifyOptions {
        subset: Some(DataSubset::Part { n, m }),
        now: Some(now),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seven_one_seventh_runs_cover_every_pack_and_a_new_pack_goes_first() {
    let (mem, repo) = many_packs().await;
    drop(repo);
    let state = tempfile::tempdir().unwrap();
    let repo = with_state(&mem, state.path()).await;
    let packs = pack_sizes(&mem).await.len();
    let per_run = packs.div_ceil(7);
    let day0 = Timestamp::from_second(1_800_000_000).unwrap();
    let hours = |h: i64| day0 + SignedDuration::from_hours(h);

    // Nothing verified yet: coverage says so without reading data.
    let report = check_with(
        &repo,
        &CheckOptions::default(),
        &VerifyOptions {
            now: Some(day0),
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    let c = report.coverage.expect("local state gives coverage");
    assert_eq!(
        (c.packs, c.packs_verified, c.never_verified_packs),
        (packs, 0, packs)
    );
    assert_eq!(c.oldest_verification, None);

    // Each run reads a seventh (rounded up), never-verified packs first.
    let mut oldest = None;
    for run in 0..7 {
        let report = read_data(&repo, &subset_run(1, 7, hours(run * 24))).await;
        assert!(report.is_ok(), "{:?}", report.errors);
        assert_eq!(report.packs_read, per_run, "run {run}");
        let c = report.coverage.unwrap();
        let left = packs.saturating_sub(per_run * (run as usize + 1));
        assert_eq!(c.never_verified_packs, left, "run {run}");
        assert_eq!(c.packs_verified, packs - left, "run {run}");
        if left > 0 {
            assert_eq!(c.oldest_verification, Some(day0), "run {run}");
        }
        oldest = c.oldest_verification;
    }

    // An eighth run, within a week of the first: everything is covered,
    // and it read the least recently verified packs again, so the oldest
    // verification moved on.
    let report = read_data(&repo, &subset_run(1, 7, hours(7 * 24 - 1))).await;
    let c = report.coverage.unwrap();
    assert_eq!(c.never_verified_packs, 0);
    assert_eq!((c.packs_verified, c.packs_share), (packs, 1.0));
    assert!(c.oldest_verification > oldest, "{c:?}");

    // A new pack is read by the next subset run, before any older one.
    add_snapshot(&Arc::new(repo), 1, 2).await;
    let repo = with_state(&mem, state.path()).await;
    let report = read_data(&repo, &subset_run(1, 100, hours(8 * 24))).await;
    assert_eq!(report.packs_read, 1);
    let c = report.coverage.unwrap();
    assert_eq!(c.packs, packs + 1);
    assert_eq!(c.never_verified_packs, 0, "the new pack was the one read");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_local_state_parts_still_cover_every_pack() {
    let (mem, repo) = many_packs().await;
    let packs = pack_sizes(&mem).await.len();
    let mut read = 0;
    for n in 1..=3 {
        let report = read_data(&repo, &subset_run(n, 3, Timestamp::now())).await;
        assert!(report.coverage.is_none());
        read += report.packs_read;
    }
    assert_eq!(read, packs, "parts 1/3, 2/3 and 3/3 split the packs");
}
