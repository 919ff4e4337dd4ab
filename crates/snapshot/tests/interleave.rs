//! Two backups and one prune, interleaved call by call in thousands of
//! seeded schedules (`lifeboat_testkit::sim`), over in-memory storage.
//!
//! The repository starts with a forgotten snapshot whose packs are garbage
//! for prune, while both backups back up that very data again and so find
//! its blobs in the index and reuse them: the race that the lock protocol
//! of docs/format.md §11.3 exists for. After every schedule: each backup
//! that reported success has its snapshot, `check` passes (every tree and
//! every data blob a snapshot needs is indexed in a pack that exists), and
//! each finished snapshot restores byte for byte.
//!
//! `LIFEBOAT_SIM_SCHEDULES=N` sets the count (default 150, what CI runs);
//! `LIFEBOAT_SIM_SEED=N` replays one schedule and prints its trace. The
//! control test runs the same simulation with a prune whose clock is an
//! hour ahead, so it takes every backup's lock for stale, and shows that the
//! simulation does find the deleted blobs then.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::{
    BackupMode, CheckOptions, ChunkerParams, InitOptions, KdfParams, LockOptions, Repository, check,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, ObjectKey, Storage};
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::sim::Scheduler;

const PW: &[u8] = b"pw";

struct Fixture {
    /// The starting repository's objects.
    objects: BTreeMap<ObjectKey, bytes::Bytes>,
    dirs: [PathBuf; 2],
    _tmp: tempfile::TempDir,
}

fn write_files(dir: &Path, seeds: &[u64]) {
    fs::create_dir_all(dir).unwrap();
    for s in seeds {
        fs::write(dir.join(format!("f{s}")), pseudo_random(20_000, *s)).unwrap();
    }
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let old = tmp.path().join("old");
    let dirs = [tmp.path().join("a"), tmp.path().join("b")];
    // Both sources share files with the old snapshot and with each other.
    write_files(&old, &[1, 2, 3]);
    write_files(&dirs[0], &[1, 2, 10]);
    write_files(&dirs[1], &[2, 3, 20]);
    let mem = MemoryStorage::new();
    let repo = Arc::new(
        Repository::init(
            Arc::new(mem.clone()),
            PW,
            InitOptions {
                kdf: KdfParams::INSECURE_TEST,
                pack_size: 1024 * 1024,
                chunker: Some(ChunkerParams {
                    min_size: 2048,
                    avg_size: 8192,
                    max_size: 32768,
                    seed: 5,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    for (host, dir) in [("old", &old), ("keep", &dirs[1])] {
        backup(repo.clone(), &opts(dir, host), Arc::new(NoProgress))
            .await
            .unwrap();
    }
    // Forget the old one (delete its record, as `forget` does): its packs
    // become garbage for prune, while both new backups reuse its blobs.
    let old_snap = repo
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.record.host == "old")
        .unwrap();
    mem.delete(&ObjectKey::new(Kind::Snapshots, old_snap.id.to_hex()))
        .await
        .unwrap();
    let objects = mem.snapshot();
    Fixture {
        objects,
        dirs,
        _tmp: tmp,
    }
}

fn opts(dir: &Path, host: &str) -> BackupOptions {
    BackupOptions {
        paths: vec![dir.to_path_buf()],
        host: Some(host.into()),
        mode: BackupMode::Incremental,
        threads: Some(1),
        ..Default::default()
    }
}

fn storage_from(objects: &BTreeMap<ObjectKey, bytes::Bytes>) -> MemoryStorage {
    let mem = MemoryStorage::new();
    for (k, v) in objects {
        mem.tamper(k, v.clone());
    }
    mem
}

/// Runs one schedule; returns a violation, if any, with the trace.
async fn run_schedule(f: &Fixture, seed: u64, broken_prune: bool) -> Result<(), String> {
    let mem = storage_from(&f.objects);
    let shared: DynStorage = Arc::new(mem.clone());
    let sched = Scheduler::new(seed);
    let (s1, g1) = sched.actor("backup-a", shared.clone());
    let (s2, g2) = sched.actor("backup-b", shared.clone());
    let (sp, gp) = sched.actor("prune", shared.clone());
    let b = |s: lifeboat_testkit::sim::SimStorage, g, dir: PathBuf, host: &'static str| {
        tokio::spawn(async move {
            let _g = g;
            let repo = Arc::new(Repository::open(Arc::new(s), PW).await?);
            backup(repo, &opts(&dir, host), Arc::new(NoProgress))
                .await
                .map(|o| o.snapshot.id)
                .map_err(|e| lifeboat_repo::Error::Internal(e.to_string()))
        })
    };
    let t1 = b(s1, g1, f.dirs[0].clone(), "a");
    let t2 = b(s2, g2, f.dirs[1].clone(), "b");
    let tp = tokio::spawn(async move {
        let _g = gp;
        let repo = Arc::new(Repository::open(Arc::new(sp), PW).await?);
        let mut options = PruneOptions {
            max_unused_percent: 0.0,
            ..Default::default()
        };
        if broken_prune {
            options.lock = LockOptions {
                clock: Arc::new(|| jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)),
                ..Default::default()
            };
        }
        prune(&repo, &options).await
    });
    let all = async { (t1.await, t2.await, tp.await) };
    let (r1, r2, rp) = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .map_err(|_| format!("schedule {seed} hung; trace: {:#?}", sched.trace()))?;
    let (r1, r2, rp) = (r1.unwrap(), r2.unwrap(), rp.unwrap());
    let trace = || sched.trace().join("\n  ");
    let outcome = format!(
        "backup-a: {:?}\nbackup-b: {:?}\nprune: {}",
        r1.as_ref().map(|i| i.short()),
        r2.as_ref().map(|i| i.short()),
        match &rp {
            Ok(s) => format!("ok ({} packs deleted)", s.packs_deleted),
            Err(e) => format!("{e}"),
        }
    );
    // Check the result with a plain handle.
    let repo = Arc::new(Repository::open(Arc::new(mem.clone()), PW).await.unwrap());
    let snaps = repo.snapshots().await.unwrap();
    for (r, dir) in [(&r1, &f.dirs[0]), (&r2, &f.dirs[1])] {
        if let Ok(id) = r {
            let Some(s) = snaps.iter().find(|s| s.id == *id) else {
                return Err(format!(
                    "schedule {seed}: finished snapshot {id} is gone\n{outcome}\n  {}",
                    trace()
                ));
            };
            if let Err(e) = restores_to(&repo, s, dir).await {
                return Err(format!(
                    "schedule {seed}: finished snapshot {} does not restore: {e}\n{outcome}\n  {}",
                    id.short(),
                    trace()
                ));
            }
        }
    }
    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    if !report.is_ok() {
        return Err(format!(
            "schedule {seed}: check failed: {:?}\n{outcome}\n  {}",
            report.errors,
            trace()
        ));
    }
    if std::env::var("LIFEBOAT_SIM_SEED").is_ok() {
        eprintln!("schedule {seed}:\n{outcome}\n  {}", trace());
    }
    Ok(())
}

async fn restores_to(
    repo: &Arc<Repository>,
    s: &lifeboat_repo::Snapshot,
    dir: &Path,
) -> Result<(), String> {
    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stats = restore(
        repo,
        s,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !stats.errors.is_empty() {
        return Err(stats.errors.join("; "));
    }
    let under = target.path().join(dir.strip_prefix("/").unwrap());
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let got = fs::read(under.join(e.file_name())).map_err(|e| e.to_string())?;
        if got != fs::read(e.path()).unwrap() {
            return Err(format!("{:?} differs", e.file_name()));
        }
    }
    Ok(())
}

fn schedules() -> Vec<u64> {
    if let Ok(s) = std::env::var("LIFEBOAT_SIM_SEED") {
        return vec![s.parse().expect("LIFEBOAT_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("LIFEBOAT_SIM_SCHEDULES")
        .ok()
        .map(|s| s.parse().expect("LIFEBOAT_SIM_SCHEDULES is a number"))
        .unwrap_or(150);
    let base = rand::random::<u32>() as u64;
    (base..base + n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_backups_and_a_prune_never_lose_a_finished_snapshot() {
    let f = fixture().await;
    let seeds = schedules();
    eprintln!(
        "interleave: {} schedules from seed {}",
        seeds.len(),
        seeds[0]
    );
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for seed in seeds {
        if let Err(e) = run_schedule(&f, seed, false).await {
            panic!(
                "{e}\nreplay with: LIFEBOAT_SIM_SEED={seed} cargo nextest run -p lifeboat-snapshot --test interleave two_backups"
            );
        }
        *outcomes.entry("ok".into()).or_default() += 1;
    }
    eprintln!("interleave: {outcomes:?}");
}

/// The control: with the lock protocol defeated, some schedule loses data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_a_prune_that_ignores_locks_is_caught() {
    let f = fixture().await;
    let mut caught = None;
    for seed in 0..300 {
        if let Err(e) = run_schedule(&f, seed, true).await {
            caught = Some((seed, e));
            break;
        }
    }
    let (seed, e) = caught.expect("no schedule of 300 showed the race: the simulation is blind");
    eprintln!(
        "control caught it at schedule {seed}: {}",
        e.lines().next().unwrap()
    );
}
