//! Crash safety: `kill -9` of a running `lifeboat backup` at random moments
//! never damages the repository. After every kill, `check` passes (packs
//! left unindexed are only a warning), earlier snapshots still restore byte
//! for byte, and the next backup succeeds and restores byte for byte too.
//!
//! A trial changes the source tree, starts a backup, sleeps a random time
//! up to about the duration of an uninterrupted backup (measured once up
//! front), then sends SIGKILL to the process. The repository uses 1 MiB
//! packs so a backup writes several packs, and a kill can land before,
//! during or after any of them, the index or the snapshot record.
//!
//! Knobs (environment):
//! - `LIFEBOAT_CRASH_TRIALS` (default 20): number of kills.
//! - `LIFEBOAT_CRASH_SEED`: replays a run (the seed is printed).
//! - `LIFEBOAT_CRASH_MIB` (default 3): size of the source tree. Debug
//!   builds back up and restore at only a few MiB/s (the AEAD is generic
//!   code, compiled at the workspace crates' opt-level 0), so the default
//!   keeps the test well under a minute; 40 makes each backup take seconds.
//! - `LIFEBOAT_CRASH_FULL_VERIFY=1`: after every kill, restore *every*
//!   earlier snapshot (quadratic; by default the first snapshot and the
//!   new ones are restored each trial, and `check` covers all of them).

use lifeboat_testkit::data::pseudo_random;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PASSWORD: &str = "crash test password";
const FILES: usize = 16;
/// The signal `Child::kill` sends.
const SIGKILL: i32 = 9;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn lifeboat(repo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .env_remove("LIFEBOAT_PASSWORD_COMMAND")
        .env_remove("LIFEBOAT_LOG")
        .stdin(Stdio::null())
        .arg("-q")
        .arg("-r")
        .arg(repo);
    c
}

/// Runs to completion; panics with the output unless it exits 0.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}); output:\n{text}",
        out.status
    );
    text
}

/// Deterministic file content: `len` bytes from `seed`.
fn content(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random(len, seed)
}

/// The source tree as a list of files: relative path -> (seed, length).
type Manifest = BTreeMap<String, (u64, usize)>;

struct Source {
    root: PathBuf,
    files: Manifest,
    avg_len: usize,
    next_name: usize,
}

impl Source {
    fn random_len(&self, rng: &mut StdRng) -> usize {
        rng.random_range(self.avg_len / 4..=self.avg_len * 7 / 4)
    }

    fn write(&mut self, name: String, seed: u64, len: usize) {
        let path = self.root.join(&name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content(seed, len)).unwrap();
        self.files.insert(name, (seed, len));
    }

    fn add_file(&mut self, rng: &mut StdRng) {
        let name = format!("dir{}/file{:04}", self.next_name % 3, self.next_name);
        self.next_name += 1;
        let len = self.random_len(rng);
        self.write(name, rng.random(), len);
    }

    /// Rewrites about half the files, deletes one and adds one.
    fn change(&mut self, rng: &mut StdRng) {
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in &names {
            if rng.random_bool(0.5) {
                let len = self.random_len(rng);
                self.write(name.clone(), rng.random(), len);
            }
        }
        let gone = &names[rng.random_range(0..names.len())];
        fs::remove_file(self.root.join(gone)).unwrap();
        self.files.remove(gone);
        self.add_file(rng);
    }
}

fn snapshot_ids(repo: &Path) -> BTreeSet<String> {
    match fs::read_dir(repo.join("snapshots")) {
        Err(_) => BTreeSet::new(),
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect(),
    }
}

/// Every regular file under `root`, relative path -> bytes; panics on
/// anything but directories and regular files.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                assert!(ft.is_file(), "unexpected entry {}", e.path().display());
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Objects (not temporaries) under a repository directory.
fn count_objects(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                n += 1;
            }
        }
    }
    n
}

struct Harness {
    work: tempfile::TempDir,
    repo: PathBuf,
    src: PathBuf,
    restores: usize,
}

impl Harness {
    /// Restores `snapshot` into a fresh target directory; returns the
    /// target and the directory holding the source tree as restored
    /// (TARGET/<absolute source path>).
    fn restore(&mut self, snapshot: &str) -> (PathBuf, PathBuf) {
        self.restores += 1;
        let target = self.work.path().join(format!("restore-{}", self.restores));
        run_ok(
            lifeboat(&self.repo)
                .arg("restore")
                .arg(snapshot)
                .arg("--target")
                .arg(&target),
            &format!("restore of snapshot {snapshot}"),
        );
        let dir = target.join(self.src.strip_prefix("/").unwrap());
        (target, dir)
    }

    /// Restores `snapshot` and compares it byte for byte with `manifest`.
    fn verify(&mut self, snapshot: &str, manifest: &Manifest, context: &str) {
        let (target, dir) = self.restore(snapshot);
        let got = read_tree(&dir);
        let want: BTreeSet<&String> = manifest.keys().collect();
        let have: BTreeSet<&String> = got.keys().collect();
        assert_eq!(
            have, want,
            "{context}: snapshot {snapshot} restores a different set of files"
        );
        for (name, &(seed, len)) in manifest {
            assert!(
                got[name] == content(seed, len),
                "{context}: snapshot {snapshot}: {name} restores with different content"
            );
        }
        fs::remove_dir_all(target).unwrap();
    }

    fn check(&self, context: &str) {
        let out = lifeboat(&self.repo).arg("check").output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{context}: check fails after the kill; output:\n{text}"
        );
    }
}

#[test]
fn kill_9_during_backup_never_damages_the_repository() {
    let trials: usize = env_or("LIFEBOAT_CRASH_TRIALS", 20);
    let mib: usize = env_or("LIFEBOAT_CRASH_MIB", 3);
    let full_verify = std::env::var("LIFEBOAT_CRASH_FULL_VERIFY").as_deref() == Ok("1");
    let seed: u64 = env_or("LIFEBOAT_CRASH_SEED", rand::random());
    println!(
        "crash test: seed {seed} (LIFEBOAT_CRASH_SEED={seed} replays), {trials} trials, {mib} MiB source"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    // Not under /tmp: the snapshot records the source's ancestors, and a
    // shared /tmp changes under a running test.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let repo = work.path().join("repo");
    let src = work.path().join("src");
    let mut h = Harness {
        repo: repo.clone(),
        src: src.clone(),
        work,
        restores: 0,
    };
    let mut source = Source {
        root: src.clone(),
        files: Manifest::new(),
        avg_len: mib * 1024 * 1024 / FILES,
        next_name: 0,
    };
    for _ in 0..FILES {
        source.add_file(&mut rng);
    }
    run_ok(
        lifeboat(&repo).args(["init", "--pack-size-mib", "1"]),
        "init",
    );

    // The first snapshot, and its restore to compare with after every kill.
    run_ok(lifeboat(&repo).arg("backup").arg(&src), "first backup");
    let first = snapshot_ids(&repo).into_iter().next().unwrap();
    let (recorded_target, recorded_dir) = h.restore(&first);
    let recorded = read_tree(&recorded_dir);
    fs::remove_dir_all(recorded_target).unwrap();
    h.verify(&first, &source.files, "first snapshot");
    let mut manifests: BTreeMap<String, Manifest> = BTreeMap::new();
    manifests.insert(first.clone(), source.files.clone());

    // How long an uninterrupted backup of a changed tree takes.
    source.change(&mut rng);
    let started = Instant::now();
    run_ok(lifeboat(&repo).arg("backup").arg(&src), "measured backup");
    let t_ms = started.elapsed().as_millis() as u64;
    let measured: Vec<String> = snapshot_ids(&repo)
        .into_iter()
        .filter(|id| !manifests.contains_key(id))
        .collect();
    assert_eq!(measured.len(), 1);
    manifests.insert(measured[0].clone(), source.files.clone());
    // Trials change different amounts of data, so some backups are shorter
    // than this and finish first: kills land anywhere up to the very end
    // (index and snapshot record), and a few after it.
    let max_sleep = t_ms;
    println!(
        "crash test: an uninterrupted backup takes {t_ms} ms; killing after 0..={max_sleep} ms"
    );

    let (mut killed, mut finished) = (0, 0);
    for trial in 1..=trials {
        source.change(&mut rng);
        let sleep = rng.random_range(0..=max_sleep);
        let context = format!("trial {trial} (seed {seed}, kill after {sleep} ms)");
        let before = snapshot_ids(&repo);
        let packs_before = count_objects(&repo.join("data"));
        let index_before = count_objects(&repo.join("index"));
        let mut child = lifeboat(&repo)
            .arg("backup")
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(sleep));
        // SIGKILL by PID; harmless if the process has already exited.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.signal() == Some(SIGKILL) {
            killed += 1;
        } else {
            assert!(
                status.success(),
                "{context}: backup failed before the kill: {status}"
            );
            finished += 1;
        }

        h.check(&context);
        println!(
            "crash test: trial {trial}: {} after {sleep} ms, leaving {} new packs, {} new index objects, {} new snapshots",
            if status.success() {
                "finished"
            } else {
                "killed"
            },
            count_objects(&repo.join("data")) - packs_before,
            count_objects(&repo.join("index")) - index_before,
            snapshot_ids(&repo).len() - before.len(),
        );
        // A snapshot the killed backup managed to write holds this trial's tree.
        let written: Vec<String> = snapshot_ids(&repo).difference(&before).cloned().collect();
        if status.success() {
            assert_eq!(
                written.len(),
                1,
                "{context}: the backup exited 0 and wrote {} snapshots",
                written.len()
            );
        } else {
            assert!(
                written.len() <= 1,
                "{context}: the killed backup wrote {} snapshots",
                written.len()
            );
        }
        for id in &written {
            manifests.insert(id.clone(), source.files.clone());
            h.verify(
                id,
                &source.files,
                &format!("{context}, snapshot written before the kill"),
            );
        }

        // Earlier snapshots: the first one against its recorded restore,
        // all of them with LIFEBOAT_CRASH_FULL_VERIFY=1.
        let (target, dir) = h.restore(&first);
        assert!(
            read_tree(&dir) == recorded,
            "{context}: the first snapshot no longer restores as it did before the kills"
        );
        fs::remove_dir_all(target).unwrap();
        if full_verify {
            for (id, m) in manifests.clone() {
                h.verify(&id, &m, &context);
            }
        }

        // The next backup succeeds, and restores byte for byte.
        run_ok(
            lifeboat(&repo).arg("backup").arg(&src),
            &format!("{context}: backup after the kill"),
        );
        let new: Vec<String> = snapshot_ids(&repo)
            .into_iter()
            .filter(|id| !manifests.contains_key(id))
            .collect();
        assert_eq!(
            new.len(),
            1,
            "{context}: the backup after the kill wrote {} snapshots",
            new.len()
        );
        manifests.insert(new[0].clone(), source.files.clone());
        h.verify(
            &new[0],
            &source.files,
            &format!("{context}, backup after the kill"),
        );
    }
    // Otherwise every backup finished before its kill and the test proved
    // nothing about crashes.
    assert!(
        trials == 0 || killed > 0,
        "no trial killed a running backup (seed {seed}): all {finished} finished first"
    );
    // Last, every blob of every snapshot: downloaded, decrypted, verified.
    let out = lifeboat(&repo)
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "check --read-data fails after all trials (seed {seed}); output:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "crash test: {trials} trials: {killed} killed mid-run, {finished} finished before the kill; \
         {} snapshots, all pass check --read-data",
        manifests.len()
    );
}
