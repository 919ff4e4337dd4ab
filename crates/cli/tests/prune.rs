//! `forget` and `prune` through the binary: retention output, data of
//! forgotten snapshots freed while every kept snapshot restores byte for
//! byte, backups and prunes running concurrently, and `kill -9` of prune at
//! random instants.
//!
//! Knobs: `LIFEBOAT_PRUNE_CRASH_TRIALS` (default 10) and
//! `LIFEBOAT_PRUNE_CRASH_SEED` (replays a run; the seed is printed).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Entry, Lifeboat, random_bytes, restored, tree, write};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LOCKED: i32 = 17;

fn new_repo() -> Lifeboat {
    let lb = Lifeboat::new();
    lb.ok(["init", "--pack-size-mib", "1"]);
    lb
}

/// Rewrites `n` of the files `f0..f7` in `dir` with fresh random content.
fn change(dir: &Path, rng: &mut StdRng, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for _ in 0..n {
        let i = rng.random_range(0..8);
        let len = rng.random_range(50_000..400_000);
        write(dir.join(format!("f{i}")), random_bytes(len, rng.random()));
    }
}

type Expected = BTreeMap<String, (PathBuf, BTreeMap<PathBuf, Entry>)>;

/// Runs `backup --json` (retrying while a prune holds the lock); records
/// what the snapshot must restore to.
fn backup(lb: &Lifeboat, src: &Path, expected: &Mutex<Expected>, locked: &AtomicUsize) {
    loop {
        let content = tree(src);
        let out = lb.run([
            "backup".as_ref(),
            "--json".as_ref(),
            "--host".as_ref(),
            "h".as_ref(),
            src.as_os_str(),
        ]);
        match out.status.code() {
            Some(0) => {
                let v = common::parse_json(&out);
                let id = v["snapshot"].as_str().unwrap().to_string();
                expected
                    .lock()
                    .unwrap()
                    .insert(id, (src.to_path_buf(), content));
                return;
            }
            Some(LOCKED) => {
                assert!(common::stderr(&out).contains("in use by a prune"));
                locked.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => panic!("backup failed: {}", common::describe(&out)),
        }
    }
}

/// Every remaining snapshot restores to exactly what was backed up.
fn verify_all(lb: &Lifeboat, expected: &Expected) {
    let snaps = lb.snapshots();
    assert!(!snaps.is_empty());
    for s in snaps {
        let id = s["id"].as_str().unwrap();
        let (src, content) = expected
            .get(id)
            .unwrap_or_else(|| panic!("unknown snapshot {id}"));
        let target = lb.path(&format!("restore-{}", &id[..12]));
        lb.ok([
            "restore".as_ref(),
            id.as_ref(),
            "--target".as_ref(),
            target.as_os_str(),
        ]);
        assert!(
            tree(&restored(&target, src)) == *content,
            "snapshot {id} does not restore byte for byte"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
}

fn check_clean(lb: &Lifeboat, read_data: bool) {
    let mut args = vec!["check"];
    if read_data {
        args.push("--read-data");
    }
    let out = lb.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", common::describe(&out));
}

#[test]
fn forget_lists_reasons_refuses_to_empty_a_source_and_prune_frees_data() {
    let lb = new_repo();
    let mut rng = StdRng::seed_from_u64(1);
    let src = lb.path("src");
    let expected = Mutex::new(Expected::new());
    let locked = AtomicUsize::new(0);
    for _ in 0..3 {
        change(&src, &mut rng, 8);
        backup(&lb, &src, &expected, &locked);
    }
    let other = lb.path("other");
    change(&other, &mut rng, 2);
    backup(&lb, &other, &expected, &locked);

    // Dry run: nothing goes, every decision has its reasons.
    let v = lb.json([
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "none",
        "--dry-run",
    ]);
    assert_eq!(v["forget"]["removed"], 2);
    assert_eq!(v["forget"]["kept"], 2);
    let groups = v["forget"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "one group per source");
    let g = groups
        .iter()
        .find(|g| g["snapshots"].as_array().unwrap().len() == 3)
        .unwrap();
    assert_eq!(g["snapshots"][0]["reasons"][0], "last");
    assert_eq!(g["snapshots"][1]["keep"], false);
    assert_eq!(lb.snapshots().len(), 4);
    let text = common::stdout(&lb.ok(["forget", "--keep-last", "1", "--dry-run"]));
    assert!(text.contains("keep") && text.contains("(last)"), "{text}");
    assert!(text.contains("would forget 2 snapshots"), "{text}");

    // A policy keeping nothing of a source is refused.
    let err = lb.fail(["forget", "--keep-tag", "none"], 2);
    assert!(err.contains("--allow-empty-source"), "{err}");
    assert_eq!(lb.snapshots().len(), 4);
    lb.fail(["forget"], 2);

    let before = common::files_under(&lb.repo.join("data")).len();
    lb.ok(["forget", "--keep-last", "1"]);
    assert_eq!(lb.snapshots().len(), 2);
    assert_eq!(common::files_under(&lb.repo.join("data")).len(), before);
    let dry = lb.json(["prune", "--dry-run"]);
    assert!(dry["freed_bytes"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(common::files_under(&lb.repo.join("data")).len(), before);
    let stats = lb.json(["prune"]);
    assert!(
        stats["freed_bytes"].as_u64().unwrap() > 500_000,
        "two snapshots of 8 changed files freed little: {stats}"
    );
    assert!(common::files_under(&lb.repo.join("data")).len() < before);
    check_clean(&lb, true);
    verify_all(&lb, &expected.lock().unwrap());
}

#[test]
fn backups_and_prunes_running_concurrently_lose_nothing() {
    let lb = new_repo();
    let expected = Mutex::new(Expected::new());
    let locked_backups = AtomicUsize::new(0);
    let locked_prunes = AtomicUsize::new(0);
    let prunes_done = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    // When each backup (with its retries) and each prune run, to show that
    // they interleaved rather than ran one after the other.
    let backup_runs = Mutex::new(Vec::<(Instant, Instant)>::new());
    let prune_runs = Mutex::new(Vec::<(Instant, Instant)>::new());
    std::thread::scope(|s| {
        let mut backups = Vec::new();
        for t in 0..2u64 {
            let (lb, expected, locked, runs) = (&lb, &expected, &locked_backups, &backup_runs);
            backups.push(s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + t);
                let src = lb.path(&format!("src{t}"));
                for _ in 0..6 {
                    change(&src, &mut rng, 3);
                    let started = Instant::now();
                    backup(lb, &src, expected, locked);
                    runs.lock().unwrap().push((started, Instant::now()));
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
                }
            }));
        }
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                lb.ok(["forget", "--keep-last", "2"]);
                let started = Instant::now();
                let out = lb.run(["prune"]);
                prune_runs.lock().unwrap().push((started, Instant::now()));
                match out.status.code() {
                    Some(0) => {
                        prunes_done.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(LOCKED) => {
                        assert!(common::stderr(&out).contains("in use by a backup"));
                        locked_prunes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => panic!("prune failed: {}", common::describe(&out)),
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        // Stop the prune loop whatever the backups did; a backup thread's
        // panic is passed on only after that, or the scope would wait on
        // the loop for ever.
        let results: Vec<_> = backups.into_iter().map(|b| b.join()).collect();
        done.store(true, Ordering::Relaxed);
        for r in results {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });
    eprintln!(
        "prunes completed during backups: {}, refused: {}; backups refused: {}",
        prunes_done.load(Ordering::Relaxed),
        locked_prunes.load(Ordering::Relaxed),
        locked_backups.load(Ordering::Relaxed)
    );
    let (backup_runs, prune_runs) = (
        backup_runs.into_inner().unwrap(),
        prune_runs.into_inner().unwrap(),
    );
    let overlapping = prune_runs
        .iter()
        .filter(|p| backup_runs.iter().any(|b| p.0 < b.1 && b.0 < p.1))
        .count();
    assert!(
        overlapping > 0,
        "no prune ran while a backup was in flight ({} prunes, {} backups)",
        prune_runs.len(),
        backup_runs.len()
    );
    lb.ok(["forget", "--keep-last", "2"]);
    lb.ok(["prune"]);
    assert_eq!(lb.snapshots().len(), 4);
    check_clean(&lb, true);
    verify_all(&lb, &expected.lock().unwrap());
    assert_eq!(
        std::fs::read_dir(lb.repo.join("locks")).unwrap().count(),
        0,
        "no lock left behind"
    );
}

#[test]
fn prune_killed_at_random_instants_leaves_a_checkable_repository() {
    let trials: usize = std::env::var("LIFEBOAT_PRUNE_CRASH_TRIALS")
        .ok()
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(10);
    let seed: u64 = std::env::var("LIFEBOAT_PRUNE_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("a number"))
        .unwrap_or_else(rand::random);
    eprintln!("LIFEBOAT_PRUNE_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let lb = new_repo();
    let src = lb.path("src");
    let expected = Mutex::new(Expected::new());
    let locked = AtomicUsize::new(0);
    change(&src, &mut rng, 8);
    backup(&lb, &src, &expected, &locked);
    // How long an uninterrupted prune of this repository takes.
    change(&src, &mut rng, 4);
    backup(&lb, &src, &expected, &locked);
    lb.ok(["forget", "--keep-last", "1"]);
    lb.ok(["prune"]);
    // How long a prune of one trial's garbage takes, uninterrupted.
    for _ in 0..2 {
        change(&src, &mut rng, 4);
        backup(&lb, &src, &expected, &locked);
    }
    lb.ok(["forget", "--keep-last", "2"]);
    let t = Instant::now();
    lb.ok(["prune"]);
    let full = t.elapsed().max(Duration::from_millis(20));
    let mut killed = 0;
    for trial in 0..trials {
        // Two new snapshots; the two older ones become garbage.
        for _ in 0..2 {
            change(&src, &mut rng, 4);
            backup(&lb, &src, &expected, &locked);
        }
        lb.ok(["forget", "--keep-last", "2"]);
        let mut child = lb
            .std_cmd()
            .args(["-q", "prune"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wait = full.mul_f64(rng.random_range(0.0..1.0));
        std::thread::sleep(wait);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed += 1;
        }
        // The repository is consistent: check passes (leftovers are only
        // warnings) and the newest snapshot restores byte for byte.
        check_clean(&lb, trial % 3 == 0);
        let exp = expected.lock().unwrap();
        let latest = lb.snapshots().last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, content) = &exp[&latest];
        let target = lb.path("restore-latest");
        lb.ok([
            "restore".as_ref(),
            latest.as_ref(),
            "--target".as_ref(),
            target.as_os_str(),
        ]);
        assert!(
            tree(&restored(&target, s)) == *content,
            "trial {trial}: latest snapshot differs after kill -9 of prune after {wait:?}"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
    eprintln!("{killed} of {trials} prunes were killed mid-run (full prune: {full:?})");
    assert!(trials == 0 || killed > 0, "no prune was interrupted");
    // A later prune finishes and leaves a clean repository.
    lb.ok(["prune"]);
    check_clean(&lb, true);
    let out = lb.ok(["check"]);
    assert!(
        !common::stderr(&out).contains("not in the index"),
        "prune left unindexed packs: {}",
        common::stderr(&out)
    );
    verify_all(&lb, &expected.lock().unwrap());
}

#[test]
fn forget_filters_by_host_tag_and_path_and_leaves_the_rest_alone() {
    let lb = new_repo();
    let a = lb.path("a");
    let b = lb.path("b");
    write(a.join("f"), b"a");
    write(b.join("f"), b"b");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    for (host, tags, path) in [
        ("web", "daily,db", a),
        ("web", "daily", a),
        ("web", "daily,db", a),
        ("mail", "daily,db", a),
        ("mail", "daily,db", a),
        ("web", "daily,db", b),
        ("web", "daily,db", b),
    ] {
        let mut args = vec!["backup", "--host", host, path];
        for t in tags.split(',') {
            args.extend(["--tag", t]);
        }
        lb.ok(&args);
    }
    let ids_of = |lb: &Lifeboat, host: &str| -> usize {
        lb.snapshots().iter().filter(|s| s["host"] == host).count()
    };

    // Host web, tags daily AND db, path a: two snapshots, keep the last.
    let v = lb.json([
        "forget",
        "--keep-last",
        "1",
        "--host",
        "web",
        "--tag",
        "daily,db",
        "--path",
        a,
    ]);
    assert_eq!(v["forget"]["removed"], 1, "{v}");
    assert_eq!(v["forget"]["kept"], 1, "{v}");
    let groups = v["forget"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "only the filtered source: {v}");
    assert_eq!(groups[0]["snapshots"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(lb.snapshots().len(), 6);
    // The other hosts were not touched.
    assert_eq!(ids_of(&lb, "mail"), 2);

    // A tag list that no snapshot has all of selects nothing.
    let v = lb.json(["forget", "--keep-last", "1", "--tag", "db,weekly"]);
    assert_eq!(v["forget"]["removed"], 0, "{v}");
    assert_eq!(lb.snapshots().len(), 6);

    // Host mail only.
    let v = lb.json(["forget", "--keep-last", "1", "--host", "mail"]);
    assert_eq!(v["forget"]["removed"], 1, "{v}");
    assert_eq!(ids_of(&lb, "mail"), 1);
    assert_eq!(ids_of(&lb, "web"), 4);
    check_clean(&lb, false);
}
