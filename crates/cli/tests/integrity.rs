//! Bit rot: one flipped bit anywhere in a pack, an index object or a
//! snapshot record is found by `check --read-data` (exit 14, naming the
//! object), and a restore that needs the damaged object does not succeed
//! silently (non-zero exit, naming it). A restore that does succeed must
//! give back exactly what was backed up.
//!
//! Each test builds a small repository with two snapshots through the real
//! binary, then flips one bit at a time (start, middle and end of the
//! object, plus the edges between a pack's blobs and its trailer) in a fresh
//! copy of the repository.

use lifeboat_testkit::data::pseudo_random;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

const PASSWORD: &str = "integrity test password";
const DAMAGED: i32 = 14;
const PARTIAL: i32 = 3;

fn lifeboat(repo: &Path) -> Command {
    let mut c = Command::cargo_bin("lifeboat").unwrap();
    c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .env_remove("LIFEBOAT_PASSWORD_COMMAND")
        .env_remove("LIFEBOAT_LOG")
        .arg("-q")
        .arg("-r")
        .arg(repo);
    c
}

/// Exit code and stdout + stderr of a finished command.
struct Run {
    code: i32,
    output: String,
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What a restored tree holds: per relative path, a kind tag and the file
/// content or symlink target.
type Digest = BTreeMap<Vec<u8>, (char, Vec<u8>)>;

fn digest(root: &Path) -> Digest {
    fn walk(dir: &Path, rel: &[u8], out: &mut Digest) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let mut r = rel.to_vec();
            r.push(b'/');
            r.extend_from_slice(e.file_name().as_bytes());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(r.clone(), ('d', vec![]));
                walk(&e.path(), &r, out);
            } else if ft.is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(r, ('l', t.as_os_str().as_bytes().to_vec()));
            } else {
                out.insert(r, ('f', fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Digest::new();
    if root.exists() {
        walk(root, b"", &mut out);
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Every regular file under `dir` (recursively), sorted.
fn objects_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if !e.file_name().as_bytes().starts_with(b".") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A pristine repository with two snapshots, and each snapshot's restore.
struct Fixture {
    dir: tempfile::TempDir,
    repo: PathBuf,
    /// Snapshot ids (full hex), oldest first.
    snapshots: Vec<String>,
    /// What restoring each snapshot gives, from the pristine repository.
    expected: Vec<Digest>,
}

fn backup(repo: &Path, src: &Path) -> String {
    let out = lifeboat(repo)
        .arg("--json")
        .arg("backup")
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot"].as_str().unwrap().to_string()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let repo = dir.path().join("repo");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(
        src.join("notes.txt"),
        "lifeboat integrity fixture\n".repeat(500),
    )
    .unwrap();
    fs::write(src.join("random.bin"), pseudo_random(300_000, 1)).unwrap();
    fs::write(src.join("sub/more.bin"), pseudo_random(100_000, 2)).unwrap();
    fs::write(src.join("sub/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../notes.txt", src.join("sub/link")).unwrap();
    let init = run(lifeboat(&repo).arg("init"));
    assert_eq!(init.code, 0, "init failed: {}", init.output);
    let first = backup(&repo, &src);
    fs::write(
        src.join("notes.txt"),
        "changed for the second snapshot\n".repeat(300),
    )
    .unwrap();
    fs::write(src.join("sub/new.bin"), pseudo_random(200_000, 3)).unwrap();
    let second = backup(&repo, &src);
    let snapshots = vec![first, second];
    let expected = snapshots
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let target = dir.path().join(format!("expected-{i}"));
            let r = run(lifeboat(&repo)
                .arg("restore")
                .arg(id)
                .arg("--target")
                .arg(&target));
            assert_eq!(
                r.code, 0,
                "restore of the pristine repository failed: {}",
                r.output
            );
            digest(&target)
        })
        .collect();
    let clean = run(lifeboat(&repo).args(["check", "--read-data"]));
    assert_eq!(
        clean.code, 0,
        "the pristine repository does not check: {}",
        clean.output
    );
    Fixture {
        dir,
        repo,
        snapshots,
        expected,
    }
}

/// One damaged copy of the repository.
struct Damaged {
    repo: PathBuf,
    /// Object name (hex id) of the damaged object.
    id: String,
    what: String,
}

impl Fixture {
    /// Copies the repository and flips bit `bit` of byte `pos` of the object
    /// at `rel` (relative to the repository root).
    fn damage(&self, n: usize, rel: &Path, pos: usize, bit: u8) -> Damaged {
        let repo = self.dir.path().join(format!("damaged-{n}"));
        copy_dir(&self.repo, &repo);
        let path = repo.join(rel);
        let mut bytes = fs::read(&path).unwrap();
        bytes[pos] ^= 1 << bit;
        fs::write(&path, &bytes).unwrap();
        Damaged {
            repo,
            id: rel.file_name().unwrap().to_str().unwrap().to_string(),
            what: format!(
                "{} (byte {pos} of {}, bit {bit})",
                rel.display(),
                bytes.len()
            ),
        }
    }

    /// `check --read-data` must exit 14 and name the damaged object; returns
    /// the snapshots it reports as damaged.
    fn assert_check_finds(&self, d: &Damaged) -> Vec<String> {
        let r = run(lifeboat(&d.repo).args(["check", "--read-data"]));
        assert_eq!(
            r.code, DAMAGED,
            "check --read-data missed a flipped bit in {}; output:\n{}",
            d.what, r.output
        );
        assert!(
            r.output.contains(&d.id),
            "check --read-data does not name the damaged object {} ({}); output:\n{}",
            d.id,
            d.what,
            r.output
        );
        r.output
            .lines()
            .filter_map(|l| l.strip_prefix("damaged snapshots: "))
            .flat_map(|l| l.split(", ").map(str::to_string))
            .collect()
    }

    /// Restores snapshot `i` of the damaged copy. `Ok(())` if it succeeded
    /// with exactly the pristine content; `Err(output)` if it failed with a
    /// damage exit code and named the object. Anything else fails the test.
    fn restore(&self, d: &Damaged, i: usize, n: usize) -> Result<(), String> {
        let target = self.dir.path().join(format!("restore-{n}-{i}"));
        let r = run(lifeboat(&d.repo)
            .arg("restore")
            .arg(&self.snapshots[i])
            .arg("--target")
            .arg(&target));
        let got = digest(&target);
        fs::remove_dir_all(&target).ok();
        if r.code == 0 {
            assert!(
                got == self.expected[i],
                "restore of snapshot {} exited 0 but restored different content after a flipped bit in {}; output:\n{}",
                self.snapshots[i],
                d.what,
                r.output
            );
            return Ok(());
        }
        assert!(
            r.code == DAMAGED || r.code == PARTIAL,
            "restore of snapshot {} exited {} (expected {DAMAGED} or {PARTIAL}) after a flipped bit in {}; output:\n{}",
            self.snapshots[i],
            r.code,
            d.what,
            r.output
        );
        assert!(
            r.output.contains(&d.id),
            "restore of snapshot {} failed without naming the damaged object {} ({}); output:\n{}",
            self.snapshots[i],
            d.id,
            d.what,
            r.output
        );
        Err(r.output)
    }
}

/// Start, middle and end of an object, plus a couple of inner edges.
fn positions(len: usize, extra: &[usize]) -> Vec<usize> {
    let mut p = vec![0, 23.min(len - 1), len / 2, len - 1];
    p.extend(extra.iter().copied().filter(|&x| x < len));
    p.sort();
    p.dedup();
    p
}

fn relative(repo: &Path, paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .map(|p| p.strip_prefix(repo).unwrap().to_path_buf())
        .collect()
}

#[test]
fn flipped_bit_in_a_pack_is_found_and_stops_the_restores_that_need_it() {
    let f = fixture();
    let packs = relative(&f.repo, objects_under(&f.repo.join("data")));
    assert!(!packs.is_empty());
    let mut n = 0;
    for rel in &packs {
        let bytes = fs::read(f.repo.join(rel)).unwrap();
        let len = bytes.len();
        let trailer_len = u32::from_le_bytes(bytes[len - 4..].try_into().unwrap()) as usize;
        // Blobs lie in [0, blob_end); the sealed trailer and its length after.
        let blob_end = len - 4 - trailer_len;
        let extra = [blob_end - 1, blob_end, len - 4, blob_end / 3];
        for pos in positions(len, &extra) {
            n += 1;
            let bit = (n % 8) as u8;
            let d = f.damage(n, rel, pos, bit);
            let damaged = f.assert_check_finds(&d);
            let mut failed = 0;
            for i in 0..f.snapshots.len() {
                let listed = damaged.contains(&f.snapshots[i]);
                match f.restore(&d, i, n) {
                    Ok(()) => assert!(
                        !listed,
                        "check lists snapshot {} as damaged after a flipped bit in {}, but it restores intact",
                        f.snapshots[i], d.what
                    ),
                    Err(output) => {
                        assert!(
                            listed,
                            "restore of snapshot {} fails after a flipped bit in {}, but check does not list it as damaged; restore said:\n{output}",
                            f.snapshots[i], d.what
                        );
                        failed += 1;
                    }
                }
            }
            // Every blob in a pack belongs to one of the snapshots, so a
            // flipped bit among the blobs must stop at least one restore. A
            // flip in the trailer loses no data: restores succeed (checked
            // byte for byte above) while check still reports the pack.
            if pos < blob_end {
                assert!(
                    failed > 0,
                    "a flipped bit among the blobs of {} stopped no restore",
                    d.what
                );
            }
            fs::remove_dir_all(&d.repo).unwrap();
        }
    }
}

#[test]
fn flipped_bit_in_an_index_object_is_found_and_not_restored_silently() {
    let f = fixture();
    let indexes = relative(&f.repo, objects_under(&f.repo.join("index")));
    assert!(!indexes.is_empty());
    let mut n = 0;
    for rel in &indexes {
        let len = fs::metadata(f.repo.join(rel)).unwrap().len() as usize;
        for pos in positions(len, &[]) {
            n += 1;
            let d = f.damage(n, rel, pos, (n % 8) as u8);
            f.assert_check_finds(&d);
            // A damaged index object may make the restore refuse (naming it)
            // or be worked around; silently wrong content fails in `restore`.
            for i in 0..f.snapshots.len() {
                let _ = f.restore(&d, i, n);
            }
            fs::remove_dir_all(&d.repo).unwrap();
        }
    }
}

#[test]
fn flipped_bit_in_a_snapshot_record_is_found_and_that_snapshot_does_not_restore() {
    let f = fixture();
    let records = relative(&f.repo, objects_under(&f.repo.join("snapshots")));
    assert_eq!(records.len(), 2);
    let mut n = 0;
    for rel in &records {
        let len = fs::metadata(f.repo.join(rel)).unwrap().len() as usize;
        for pos in positions(len, &[]) {
            n += 1;
            let d = f.damage(n, rel, pos, (n % 8) as u8);
            let damaged = f.assert_check_finds(&d);
            assert!(
                damaged.contains(&d.id),
                "check does not list snapshot {} as damaged after a flipped bit in {}",
                d.id,
                d.what
            );
            for i in 0..f.snapshots.len() {
                let r = f.restore(&d, i, n);
                if f.snapshots[i] == d.id {
                    assert!(
                        r.is_err(),
                        "snapshot {} restored after a flipped bit in its own record ({})",
                        d.id,
                        d.what
                    );
                }
            }
            fs::remove_dir_all(&d.repo).unwrap();
        }
    }
}
