//! Seeded random sequences of backup, forget, prune, copy, restore and check
//! against fault-injecting and crashing storage, with the invariants checked
//! after every step on a freshly opened ("rebooted") repository:
//!
//! 1. every snapshot record in a repository restores byte for byte to the
//!    source as it was when that snapshot was taken (so no operation left a
//!    visible snapshot with missing or wrong data);
//! 2. every snapshot whose backup or copy reported success, and that no
//!    successful forget removed, is still there;
//! 3. `check --read-data` passes; and in the seeds that end by damaging a
//!    pack on purpose, it names exactly that pack, and exactly the
//!    snapshots that no longer restore;
//! 4. an operation that reports success did what it said (a forget's
//!    removed records are gone, a restore without errors wrote the right
//!    bytes).
//!
//! Each step runs under one seeded fault: none, transient errors at a rate
//! (with and without the retry wrapper, failed puts storing or not), the
//! storage becoming unreachable at a call, or a power cut at a call
//! (`CrashStorage`). `LIFEBOAT_SEED=N` replays one seed;
//! `LIFEBOAT_RANDOM_SEEDS=N` runs N seeds (default 4, what CI runs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use lifeboat_repo::prune::{PruneOptions, prune};
use lifeboat_repo::retention::{ForgetOptions, RetentionPolicy, forget};
use lifeboat_repo::{
    BackupMode, CheckOptions, ChunkerParams, CopyOptions, Id, InitOptions, KdfParams, LockOptions,
    Repository, check, copied_from, copy,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{
    DynStorage, ErrorKind, Kind, MemoryStorage, ObjectKey, RetryPolicy, RetryStorage, Storage,
};
use lifeboat_testkit::crash::CrashStorage;
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::faulty::{FaultPlan, FaultyStorage, Op, PutFailure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PASSWORD: &[u8] = b"pw";
/// Steps per seed: enough for forget and prune to meet several backups.
const STEPS: usize = 14;

/// Source content: relative path -> bytes (files), and the directories.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Content {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
}

fn read_tree(root: &Path) -> Content {
    let mut c = Content::default();
    fn walk(root: &Path, dir: &Path, c: &mut Content) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                c.dirs.insert(rel);
                walk(root, &p, c);
            } else {
                c.files.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    walk(root, root, &mut c);
    c
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// Transient errors at a rate on every operation kind.
    Rate {
        p: f64,
        retry: bool,
        after: bool,
    },
    /// Every call from this one on fails: the storage went away.
    Unreachable(u64),
    /// Power cut during this call.
    Crash(u64),
}

/// One repository: its durable storage and what we know about it.
struct Repo {
    mem: MemoryStorage,
    /// Snapshot id -> the content it must restore to.
    expected: BTreeMap<Id, Content>,
    /// Snapshots that must exist (reported made, not reported forgotten).
    alive: BTreeSet<Id>,
}

/// The wrapped storage for one step, and the handles to ask what happened.
struct Wrapped {
    storage: DynStorage,
    crash: Option<CrashStorage>,
}

fn wrap(mem: &MemoryStorage, fault: Fault, seed: u64) -> Wrapped {
    let base: DynStorage = Arc::new(mem.clone());
    match fault {
        Fault::None => Wrapped {
            storage: base,
            crash: None,
        },
        Fault::Rate { p, retry, after } => {
            let mut plan = FaultPlan::new(seed).put_failure(if after {
                PutFailure::After
            } else {
                PutFailure::Before
            });
            for op in Op::ALL {
                plan = plan.rate(op, p, ErrorKind::Transient);
            }
            let f: DynStorage = Arc::new(FaultyStorage::new(base, plan));
            let storage: DynStorage = if retry {
                Arc::new(RetryStorage::new(
                    f,
                    RetryPolicy {
                        max_attempts: 6,
                        initial_delay: Duration::from_millis(1),
                        max_delay: Duration::from_millis(4),
                    },
                ))
            } else {
                f
            };
            Wrapped {
                storage,
                crash: None,
            }
        }
        Fault::Unreachable(n) => Wrapped {
            storage: Arc::new(FaultyStorage::new(
                base,
                FaultPlan::new(seed).fail_from(n, ErrorKind::Unreachable),
            )),
            crash: None,
        },
        Fault::Crash(n) => {
            let c = CrashStorage::new(base, seed).crash_at(n);
            Wrapped {
                storage: Arc::new(c.clone()),
                crash: Some(c),
            }
        }
    }
}

fn pick_fault(rng: &mut StdRng) -> Fault {
    match rng.random_range(0..10) {
        0..=2 => Fault::None,
        3..=5 => Fault::Rate {
            p: [0.02, 0.05, 0.15][rng.random_range(0..3)],
            retry: rng.random_bool(0.5),
            after: rng.random_bool(0.5),
        },
        6 => Fault::Unreachable(rng.random_range(1..80)),
        _ => Fault::Crash(rng.random_range(1..80)),
    }
}

/// Lock options of a prune "after a reboot": its clock runs an hour ahead,
/// so shared locks left by simulated crashes of backups (this host, and
/// this process is still alive) are stale to it; and it records a pid that
/// no process has, so its own lock, if a cut leaves it behind, is stale to
/// everyone on this host at once, as a real crashed prune's is.
fn after_reboot(n: u32) -> LockOptions {
    LockOptions {
        clock: Arc::new(|| jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)),
        // One per prune: a lock holding the reader's own pid is never stale.
        pid: 0x7000_0000 + n,
        ..Default::default()
    }
}

fn init_options(seed: u64) -> InitOptions {
    InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        chunker: Some(ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 32768,
            seed,
        }),
        ..Default::default()
    }
}

/// Changes the source at random: new, rewritten and deleted files.
fn mutate(src: &Path, rng: &mut StdRng) {
    for _ in 0..rng.random_range(1..5) {
        let dir = if rng.random_bool(0.3) {
            src.join("sub")
        } else {
            src.to_path_buf()
        };
        fs::create_dir_all(&dir).unwrap();
        let name = dir.join(format!("f{}", rng.random_range(0..8)));
        match rng.random_range(0..4) {
            0 if name.exists() => fs::remove_file(&name).unwrap(),
            1 if name.exists() => {
                // Rewrite a piece in place: most chunks stay shared.
                let mut b = fs::read(&name).unwrap();
                if !b.is_empty() {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= 0x5a;
                    b.push(7);
                }
                fs::write(&name, b).unwrap();
            }
            _ => {
                let len = rng.random_range(0..120_000);
                fs::write(&name, pseudo_random(len, rng.random())).unwrap();
            }
        }
    }
}

async fn open_clean(mem: &MemoryStorage) -> Arc<Repository> {
    Arc::new(
        Repository::open(Arc::new(mem.clone()), PASSWORD)
            .await
            .expect("repository opens after every step"),
    )
}

/// Restores `id` from `repo` and returns the content under the source path,
/// or the problems met.
async fn restore_content(
    repo: &Arc<Repository>,
    id: &Id,
    src: &Path,
    scratch: &Path,
) -> Result<Content, String> {
    let all = repo.snapshots().await.map_err(|e| e.to_string())?;
    let snap = all
        .iter()
        .find(|s| s.id == *id)
        .ok_or_else(|| format!("snapshot {id} not listed"))?;
    let target = tempfile::tempdir_in(scratch).unwrap();
    let stats = restore(
        repo,
        snap,
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
    let under = target.path().join(src.strip_prefix("/").unwrap());
    Ok(read_tree(&under))
}

/// Invariants 1–3 on one repository. `damaged`: the pack damaged on
/// purpose, if any, and the snapshots expected to be hit are computed here.
async fn assert_invariants(
    label: &str,
    r: &Repo,
    src: &Path,
    scratch: &Path,
    source_expected: Option<&BTreeMap<Id, Content>>,
) {
    let repo = open_clean(&r.mem).await;
    let snaps = repo.snapshots().await.unwrap();
    let present: BTreeSet<Id> = snaps.iter().map(|s| s.id).collect();
    for id in &r.alive {
        assert!(
            present.contains(id),
            "{label}: snapshot {id} was reported made and never forgotten, but is gone"
        );
    }
    for s in &snaps {
        let want = match source_expected {
            // A copy must restore to what its source snapshot holds.
            Some(src_expected) => {
                let (_, from) = copied_from(&s.record)
                    .unwrap_or_else(|| panic!("{label}: {} is not a copy", s.id));
                src_expected.get(&from).unwrap_or_else(|| {
                    panic!("{label}: {} copied from unknown snapshot {from}", s.id)
                })
            }
            None => r.expected.get(&s.id).unwrap_or_else(|| {
                panic!("{label}: snapshot {} appeared that no backup made", s.id)
            }),
        };
        let got = restore_content(&repo, &s.id, src, scratch)
            .await
            .unwrap_or_else(|e| panic!("{label}: snapshot {} does not restore: {e}", s.id));
        assert!(
            got == *want,
            "{label}: snapshot {} restores to other content than was backed up",
            s.id
        );
    }
    let report = check(
        &repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(
        report.is_ok(),
        "{label}: check --read-data failed: {:?}",
        report.errors
    );
}

struct World {
    a: Repo,
    b: Repo,
    src: PathBuf,
    scratch: PathBuf,
}

async fn run_seed(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let scratch = tmp.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let mk = || Repo {
        mem: MemoryStorage::new(),
        expected: BTreeMap::new(),
        alive: BTreeSet::new(),
    };
    let mut w = World {
        a: mk(),
        b: mk(),
        src,
        scratch,
    };
    for (r, s) in [(&w.a, seed), (&w.b, seed ^ 1)] {
        Repository::init(Arc::new(r.mem.clone()), PASSWORD, init_options(s))
            .await
            .unwrap();
    }
    mutate(&w.src, &mut rng);
    for step in 0..STEPS {
        let fault = pick_fault(&mut rng);
        let fault_seed: u64 = rng.random();
        let op = match rng.random_range(0..10) {
            0..=3 => "backup",
            4 => "forget",
            5 | 6 => "prune",
            7 | 8 => "copy",
            _ => "restore",
        };
        let line = format!("step {step}: {op} under {fault:?}");
        eprintln!("seed {seed} {line}");
        let result = step_op(&mut w, op, fault, fault_seed, &mut rng).await;
        eprintln!("seed {seed}   -> {result}");
        let label = format!("seed {seed}, {line}");
        assert_invariants(&format!("{label} [repo A]"), &w.a, &w.src, &w.scratch, None).await;
        assert_invariants(
            &format!("{label} [repo B]"),
            &w.b,
            &w.src,
            &w.scratch,
            Some(&w.a.expected),
        )
        .await;
    }
    if rng.random_bool(0.5) {
        damage_and_check(&w, seed, &mut rng).await;
    }
}

/// Runs one operation through the step's wrapper; returns a line for the log.
async fn step_op(w: &mut World, op: &str, fault: Fault, fs: u64, rng: &mut StdRng) -> String {
    let wa = wrap(&w.a.mem, fault, fs);
    let crash_note = |c: &Option<CrashStorage>| {
        c.as_ref()
            .and_then(|c| c.crashed())
            .map(|r| format!(" (power cut at call {} {} {})", r.call, r.op, r.outcome))
            .unwrap_or_default()
    };
    match op {
        "backup" => {
            mutate(&w.src, rng);
            let content = read_tree(&w.src);
            let before: BTreeSet<Id> = snapshot_ids(&w.a.mem).await;
            let r = match Repository::open(wa.storage.clone(), PASSWORD).await {
                Ok(repo) => backup(
                    Arc::new(repo),
                    &BackupOptions {
                        paths: vec![w.src.clone()],
                        host: Some("h".into()),
                        mode: [
                            BackupMode::Full,
                            BackupMode::Incremental,
                            BackupMode::Differential,
                        ][rng.random_range(0..3)],
                        threads: Some(2),
                        ..Default::default()
                    },
                    Arc::new(NoProgress),
                )
                .await
                .map(|o| o.snapshot.id)
                .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            // A record may exist although the backup failed (its put landed
            // and the reply was lost, or the cut came after it): it is this
            // step's content, and must restore as such.
            for id in snapshot_ids(&w.a.mem).await.difference(&before) {
                w.a.expected.insert(*id, content.clone());
            }
            match r {
                Ok(id) => {
                    assert!(
                        w.a.expected.contains_key(&id),
                        "backup reported snapshot {id}, which is not stored"
                    );
                    w.a.alive.insert(id);
                    format!("ok {id}{}", crash_note(&wa.crash))
                }
                Err(e) => format!("failed: {e}{}", crash_note(&wa.crash)),
            }
        }
        "forget" => {
            let keep = rng.random_range(1..4);
            let r = match Repository::open(wa.storage.clone(), PASSWORD).await {
                Ok(repo) => forget(
                    &repo,
                    &RetentionPolicy {
                        keep_last: Some(keep),
                        ..Default::default()
                    },
                    &ForgetOptions::default(),
                )
                .await
                .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(report) => {
                    let left = snapshot_ids(&w.a.mem).await;
                    let mut removed = 0;
                    for g in &report.groups {
                        for d in g.removed() {
                            let id = Id::from_hex(&d.id).unwrap();
                            assert!(
                                !left.contains(&id),
                                "forget reported {id} removed, but it is still stored"
                            );
                            w.a.alive.remove(&id);
                            removed += 1;
                        }
                    }
                    format!("ok, kept {keep}, removed {removed}")
                }
                Err(e) => {
                    // Some records may be gone: they are no longer required.
                    let left = snapshot_ids(&w.a.mem).await;
                    w.a.alive.retain(|id| left.contains(id));
                    format!("failed: {e}{}", crash_note(&wa.crash))
                }
            }
        }
        "prune" => {
            let options = PruneOptions {
                max_unused_percent: [0.0, 10.0, 50.0][rng.random_range(0..3)],
                lock: after_reboot(rng.random_range(0..0x0fff_ffff)),
                ..Default::default()
            };
            let r = match Repository::open(wa.storage.clone(), PASSWORD).await {
                Ok(repo) => prune(&Arc::new(repo), &options)
                    .await
                    .map(|s| {
                        format!(
                            "ok: {} packs deleted, {} repacked, {} unindexed",
                            s.packs_deleted, s.packs_repacked, s.packs_unindexed_deleted
                        )
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(s) => s,
                Err(e) => format!("failed: {e}{}", crash_note(&wa.crash)),
            }
        }
        "copy" => {
            // The fault hits the source or the target side.
            let on_target = rng.random_bool(0.5);
            let (sa, sb) = if on_target {
                (
                    Arc::new(w.a.mem.clone()) as DynStorage,
                    wrap(&w.b.mem, fault, fs),
                )
            } else {
                (wa.storage.clone(), wrap(&w.b.mem, Fault::None, fs))
            };
            let before = snapshot_ids(&w.b.mem).await;
            let r = async {
                let source = Arc::new(Repository::open(sa, PASSWORD).await?);
                let target = Arc::new(Repository::open(sb.storage.clone(), PASSWORD).await?);
                copy(&source, &target, &CopyOptions::default(), &()).await
            }
            .await;
            let after = snapshot_ids(&w.b.mem).await;
            let note = if on_target {
                crash_note(&sb.crash)
            } else {
                crash_note(&wa.crash)
            };
            match r {
                Ok(stats) => {
                    for c in &stats.copied {
                        let id = Id::from_hex(&c.target).unwrap();
                        assert!(
                            after.contains(&id),
                            "copy reported {id}, which is not stored"
                        );
                        w.b.alive.insert(id);
                    }
                    format!(
                        "ok: {} copied, {} skipped{note}",
                        stats.snapshots_copied, stats.snapshots_skipped
                    )
                }
                Err(e) => format!(
                    "failed ({} new records anyway): {e}{note}",
                    after.difference(&before).count()
                ),
            }
        }
        "restore" => {
            // Reads only: short reads are fair game too.
            let storage: DynStorage = match fault {
                Fault::Rate { p, .. } => Arc::new(FaultyStorage::new(
                    Arc::new(w.a.mem.clone()),
                    FaultPlan::new(fs)
                        .short_reads(p)
                        .rate(Op::GetRange, p, ErrorKind::Transient),
                )),
                _ => wa.storage.clone(),
            };
            let alive: Vec<Id> = w.a.alive.iter().copied().collect();
            if alive.is_empty() {
                return "nothing to restore".into();
            }
            let id = alive[rng.random_range(0..alive.len())];
            let repo = match Repository::open(storage, PASSWORD).await {
                Ok(r) => Arc::new(r),
                Err(e) => return format!("open failed: {e}"),
            };
            match restore_content(&repo, &id, &w.src, &w.scratch).await {
                Ok(got) => {
                    // Success must mean the right bytes.
                    assert!(
                        got == w.a.expected[&id],
                        "restore of {id} reported success with wrong content"
                    );
                    format!("ok {id}")
                }
                Err(e) => format!("failed: {e}"),
            }
        }
        _ => unreachable!(),
    }
}

async fn snapshot_ids(mem: &MemoryStorage) -> BTreeSet<Id> {
    mem.list(Kind::Snapshots)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| Id::from_hex(o.key.name()))
        .collect()
}

/// Flips a byte in (or deletes) one pack of repository A, then checks that
/// `check --read-data` names exactly that pack and exactly the snapshots
/// that no longer restore.
async fn damage_and_check(w: &World, seed: u64, rng: &mut StdRng) {
    let packs: Vec<ObjectKey> =
        w.a.mem
            .list(Kind::Packs)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
    if packs.is_empty() {
        return;
    }
    let victim = packs[rng.random_range(0..packs.len())].clone();
    let delete = rng.random_bool(0.5);
    if delete {
        w.a.mem.delete(&victim).await.unwrap();
    } else {
        let mut b = w.a.mem.snapshot()[&victim].to_vec();
        let at = rng.random_range(0..b.len());
        b[at] ^= 0x01;
        w.a.mem.tamper(&victim, b.into());
    }
    let label = format!(
        "seed {seed}: {} pack {}",
        if delete {
            "deleted"
        } else {
            "flipped a bit in"
        },
        victim.name()
    );
    let repo = open_clean(&w.a.mem).await;
    let report = check(
        &repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    // Which snapshots really lost data: restore each.
    let mut broken = BTreeSet::new();
    for s in repo.snapshots().await.unwrap() {
        match restore_content(&repo, &s.id, &w.src, &w.scratch).await {
            Ok(got) => assert!(
                got == w.a.expected[&s.id],
                "{label}: snapshot {} restored wrong bytes without an error",
                s.id
            ),
            Err(_) => {
                broken.insert(s.id.to_hex());
            }
        }
    }
    let pack_used = !report.damaged_packs.is_empty();
    if pack_used {
        assert!(!report.is_ok(), "{label}: damage found but check passed");
        assert_eq!(
            report.damaged_packs,
            vec![victim.name().to_string()],
            "{label}: check must name exactly the damaged pack"
        );
    } else {
        // A pack no index names (an interrupted run's leftover) holds
        // nothing anyone needs: no snapshot may break.
        assert!(
            broken.is_empty(),
            "{label}: {broken:?} broke, check saw no damage"
        );
    }
    eprintln!(
        "{label}: check named packs {:?}, snapshots {:?}; {} snapshots do not restore",
        report.damaged_packs,
        report.damaged_snapshots,
        broken.len()
    );
    let named: BTreeSet<String> = report.damaged_snapshots.iter().cloned().collect();
    assert_eq!(
        named, broken,
        "{label}: check must name exactly the snapshots that no longer restore"
    );
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("LIFEBOAT_SEED") {
        return vec![s.parse().expect("LIFEBOAT_SEED is a number")];
    }
    let n: u64 = std::env::var("LIFEBOAT_RANDOM_SEEDS")
        .ok()
        .map(|s| s.parse().expect("LIFEBOAT_RANDOM_SEEDS is a number"))
        .unwrap_or(4);
    // A fresh base per run, printed, so runs explore new seeds.
    let base: u64 = std::env::var("LIFEBOAT_SEED_BASE")
        .ok()
        .map(|s| s.parse().unwrap())
        .unwrap_or_else(rand::random::<u32>) as u64;
    (base..base + n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_under_faults_lose_nothing() {
    let seeds = seeds();
    eprintln!("random_ops: seeds {:?}", seeds);
    for seed in seeds {
        let r = std::panic::AssertUnwindSafe(tokio::spawn(run_seed(seed)))
            .catch_unwind()
            .await;
        match r {
            Ok(Ok(())) => eprintln!("random_ops: seed {seed} ok"),
            Ok(Err(join)) => panic!(
                "random_ops: seed {seed} FAILED: {join}\nreplay with: LIFEBOAT_SEED={seed} cargo nextest run -p lifeboat-snapshot --test random_ops"
            ),
            Err(_) => panic!("random_ops: seed {seed} FAILED"),
        }
    }
}
