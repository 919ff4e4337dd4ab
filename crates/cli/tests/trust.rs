//! Issue 13's trust fixes, each test named after what was wrong:
//! `SNAPSHOT:SUBPATH`, the restic features a new user looks for (`backup
//! --dry-run`, `--files-from`, `restore --verify`, `tag`, `unlock`,
//! `--no-lock`), names that are not UTF-8, times with their zone, quiet and
//! verbose output, and signals during prune and copy.

mod common;

use std::fs;

use common::*;

const NOT_FOUND: i32 = 16;
const USAGE: i32 = 2;

/// Regression (issue 13): `latest:/home/me` was taken as a snapshot id
/// ("no snapshot latest:/home/me"). It names a directory inside the
/// snapshot: `restore` puts its contents into the target without the path
/// prefix, `ls`, `dump` and `diff` see it as the root; it works with the
/// `latest` filters and with id prefixes.
#[test]
fn snapshot_subpath_restores_lists_dumps_and_diffs_a_subtree() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "hello\n");
    write(src.join("notes/todo.md"), "- write tests\n");
    let src_s = src.to_str().unwrap().to_string();
    lb.backup(&[&src], &["--tag", "files"]);
    // A later stdin backup: plain `latest` is now the stream.
    let out = lb
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "db.sql"])
        .write_stdin("dump\n")
        .output()
        .unwrap();
    assert_ok(&out, "backup --stdin");

    // restore latest:SRC with a filter: the contents land in the target.
    let t = lb.path("t1");
    let q = format!("latest:{src_s}");
    lb.ok(["restore", &q, "--tag", "files", "-t", t.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(t.join("a.txt")).unwrap(), "hello\n");
    assert_eq!(
        fs::read_to_string(t.join("notes/todo.md")).unwrap(),
        "- write tests\n"
    );
    assert!(!t.join(src.strip_prefix("/").unwrap()).exists());

    // An id prefix with a deeper subpath.
    let id = lb
        .snapshots()
        .iter()
        .find(|s| s["tags"][0] == "files")
        .map(|s| s["id"].as_str().unwrap()[..8].to_string())
        .unwrap();
    let t2 = lb.path("t2");
    let q2 = format!("{id}:{src_s}/notes");
    lb.ok(["restore", &q2, "-t", t2.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(t2.join("todo.md")).unwrap(),
        "- write tests\n"
    );
    assert!(!t2.join("a.txt").exists());

    // ls and dump see the directory as the root.
    let listed = ls_paths(&lb.json(["ls", &q2]));
    assert_eq!(listed, vec!["/todo.md".to_string()]);
    assert_eq!(
        stdout(&lb.ok(["dump", &q, "/a.txt", "--tag", "files"])),
        "hello\n"
    );

    // diff of the same directory in two snapshots: only what changed there.
    write(src.join("notes/todo.md"), "- done\n");
    write(src.join("b.txt"), "outside notes\n");
    lb.backup(&[&src], &["--tag", "files"]);
    let diff = lb.json([
        "diff",
        &q2,
        &format!("latest:{src_s}/notes"),
        "--tag",
        "files",
    ]);
    let paths: Vec<&str> = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["/todo.md"], "{diff}");

    // A subpath that is not there is "not found"; a file is not a root.
    lb.fail(["ls", &format!("{id}:{src_s}/nope")], NOT_FOUND);
    let err = lb.fail(
        [
            "restore",
            &format!("{id}:{src_s}/a.txt"),
            "-t",
            lb.path("t3").to_str().unwrap(),
        ],
        USAGE,
    );
    assert!(err.contains("not a directory"), "{err}");
}

/// Every object under the repository directory, relative.
fn repo_files(lb: &Lifeboat) -> Vec<String> {
    let mut out: Vec<String> = files_under(&lb.repo)
        .into_iter()
        .map(|p| p.strip_prefix(&lb.repo).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

/// Regression (issue 13): `backup --dry-run` did not exist. It reads the
/// source and reports what would be read and added, and writes nothing:
/// no lock, no pack, no index, no snapshot record.
#[test]
fn backup_dry_run_counts_and_writes_nothing() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.bin"), random_bytes(100_000, 1));
    write(src.join("b.txt"), "bee\n");
    let before = repo_files(&lb);
    let dry = lb.backup(&[&src], &["--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["summary"]["files_new"], 2, "{dry}");
    assert!(
        dry["summary"]["added_bytes"].as_u64().unwrap() > 90_000,
        "{dry}"
    );
    assert_eq!(repo_files(&lb), before, "a dry run wrote to the repository");
    assert!(lb.snapshots().is_empty());

    let real = lb.backup(&[&src], &[]);
    // The dry run predicted exactly what the real backup added.
    assert_eq!(
        real["summary"]["added_bytes"],
        dry["summary"]["added_bytes"]
    );
    write(src.join("b.txt"), "changed\n");
    let before = repo_files(&lb);
    let out = lb.ok(["backup", "-n", src.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(text.contains("dry run: nothing was written"), "{text}");
    assert!(text.contains("1 changed, 1 unchanged"), "{text}");
    assert_eq!(repo_files(&lb), before);
    assert_eq!(lb.snapshots().len(), 1);
}

/// Regression (issue 13): `backup --files-from` did not exist. Paths come
/// one per line (blank lines and # comments skipped), or NUL-separated and
/// verbatim with `--files-from-raw`, alongside any given as arguments.
#[test]
fn backup_files_from_lists_and_raw_nul_lists() {
    let lb = Lifeboat::init();
    let a = lb.path("a.txt");
    let b = lb.path("dir b");
    let c = lb.path("c.txt");
    write(&a, "a\n");
    write(b.join("x"), "x\n");
    write(&c, "c\n");
    let list = lb.path("list");
    fs::write(
        &list,
        format!("# what to back up\n{}\n\n{}\n", a.display(), b.display()),
    )
    .unwrap();
    lb.backup(&[&c], &["--files-from", list.to_str().unwrap()]);
    let listed = ls_paths(&lb.json(["ls", "latest"]));
    for want in [&a, &b.join("x"), &c] {
        assert!(
            listed.contains(&want.display().to_string()),
            "{want:?} in {listed:?}"
        );
    }

    let raw = lb.path("raw");
    let mut bytes = a.as_os_str().as_encoded_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(b.as_os_str().as_encoded_bytes());
    bytes.push(0);
    fs::write(&raw, bytes).unwrap();
    lb.backup(&[], &["--files-from-raw", raw.to_str().unwrap()]);
    let snaps = lb.snapshots();
    let paths = snaps.last().unwrap()["paths"].as_array().unwrap().len();
    assert_eq!(paths, 2, "{snaps:?}");

    // A list that names nothing is a usage error, not an empty snapshot.
    let empty = lb.path("empty");
    fs::write(&empty, "# nothing\n").unwrap();
    lb.fail(["backup", "--files-from", empty.to_str().unwrap()], USAGE);
    let missing = lb.path("no-such-list");
    lb.fail(["backup", "--files-from", missing.to_str().unwrap()], USAGE);
}

/// Regression (issue 13): `restore --verify` did not exist. It reads every
/// restored file back and compares it with the snapshot; the JSON says
/// what was checked (the library test `verify.rs` shows it finds changed,
/// missing and resized files).
#[test]
fn restore_verify_reads_back_what_was_restored() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.bin"), random_bytes(300_000, 2));
    write(src.join("sub/b.txt"), "bee\n");
    lb.backup(&[&src], &[]);
    let t = lb.path("t");
    let out = lb.ok(["restore", "latest", "--verify", "-t", t.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(text.contains("verified 2 files"), "{text}");
    assert!(text.contains("all match"), "{text}");
    let t2 = lb.path("t2");
    let v = lb.json(["restore", "latest", "--verify", "-t", t2.to_str().unwrap()]);
    assert_eq!(v["verify"]["files_checked"], 2, "{v}");
    assert_eq!(v["verify"]["bytes_checked"], 300_004, "{v}");
    assert_eq!(
        v["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{v}"
    );
}

/// Regression (issue 13): there was no `tag` command. It adds, removes or
/// sets tags by writing a new record (`original` names the first one) and
/// removing the old record after the new one is stored.
#[test]
fn tag_adds_removes_and_sets_by_rewriting_the_record() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    lb.backup(&[&src], &["--tag", "old"]);
    let first = lb.snapshots()[0]["id"].as_str().unwrap().to_string();

    let rows = lb.json([
        "tag",
        &first[..8],
        "--add",
        "keep,monthly",
        "--remove",
        "old",
    ]);
    let new_id = rows[0]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, first);
    let snaps = lb.snapshots();
    assert_eq!(snaps.len(), 1, "the old record stays: {snaps:?}");
    assert_eq!(snaps[0]["id"], new_id.as_str());
    assert_eq!(snaps[0]["tags"], serde_json::json!(["keep", "monthly"]));
    assert_eq!(snaps[0]["extra"]["original"], first.as_str());

    // latest with a tag filter, then --set; original stays the first id.
    lb.ok(["tag", "latest", "--tag", "keep", "--set", "x"]);
    let snaps = lb.snapshots();
    assert_eq!(snaps[0]["tags"], serde_json::json!(["x"]));
    assert_eq!(snaps[0]["extra"]["original"], first.as_str());
    // The tree is the same: restoring it still works.
    lb.ok(["restore", "latest", "-t", lb.path("t").to_str().unwrap()]);
    // Unchanged: nothing rewritten.
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    let rows = lb.json(["tag", "latest", "--add", "x"]);
    assert_eq!(rows[0]["changed"], false);
    assert_eq!(lb.snapshots()[0]["id"], id.as_str());
    // No change given, or an unknown snapshot: nothing happens.
    lb.fail(["tag", "latest"], USAGE);
    lb.fail(["tag", "latest", "ffffffff", "--add", "y"], NOT_FOUND);
    assert_eq!(lb.snapshots()[0]["tags"], serde_json::json!(["x"]));
}

/// Regression (issue 13): there was no `unlock`. It removes stale locks
/// (here: one left by a process that no longer exists on this host),
/// naming each holder, and keeps live ones unless `--remove-all`.
#[test]
fn unlock_removes_stale_locks_and_remove_all_the_live_ones() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    // A backup killed with SIGKILL leaves its lock behind.
    let mut child = lb
        .std_cmd()
        .args(["backup", "--stdin", "--stdin-filename", "x"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locks = lb.repo.join("locks");
    while fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "backup ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 1);
    let out = lb.ok(["unlock"]);
    let text = stdout(&out);
    assert!(text.contains("removed stale lock: a backup on"), "{text}");
    assert!(text.contains(&format!("(pid {})", child.id())), "{text}");
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 0);

    // A live holder: kept, then removed with --remove-all and a warning.
    let mut live = lb
        .std_cmd()
        .args(["backup", "--stdin", "--stdin-filename", "x"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rows = lb.json(["unlock"]);
    assert_eq!(rows[0]["stale"], false, "{rows}");
    assert_eq!(rows[0]["removed"], false, "{rows}");
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 1);
    let out = lb.ok(["unlock", "--remove-all"]);
    assert!(
        stderr(&out).contains("warning: removing the lock of a backup"),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 0);
    live.kill().unwrap();
    live.wait().unwrap();
}

/// Regression (issue 13): text output printed UTC times without saying
/// so, and ignored `TZ`. Now times are shown in the local zone (`TZ`
/// honoured) with the zone named; JSON stays UTC RFC 3339.
#[test]
fn text_times_are_local_and_name_their_zone_json_stays_utc() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    lb.backup(&[&src], &[]);
    let snaps = lb.snapshots();
    let utc: jiff::Timestamp = snaps[0]["time"].as_str().unwrap().parse().unwrap();
    assert!(
        snaps[0]["time"].as_str().unwrap().ends_with('Z'),
        "{snaps:?}"
    );
    let tokyo = utc
        .checked_add(jiff::SignedDuration::from_hours(9))
        .unwrap()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let out = lb
        .cmd()
        .env("TZ", "JST-9")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_ok(&out, "snapshots");
    assert!(
        stdout(&out).contains(&format!("{tokyo} JST")),
        "{}",
        stdout(&out)
    );
    let out = lb
        .cmd()
        .env("TZ", "UTC0")
        .arg("snapshots")
        .output()
        .unwrap();
    let plain = utc.strftime("%Y-%m-%d %H:%M:%S").to_string();
    assert!(
        stdout(&out).contains(&format!("{plain} UTC")),
        "{}",
        stdout(&out)
    );
    // ls and find show times the same way.
    for args in [vec!["ls", "latest"], vec!["find", "a.txt"]] {
        let out = lb.cmd().env("TZ", "JST-9").args(&args).output().unwrap();
        assert_ok(&out, &args);
        assert!(stdout(&out).contains(" JST"), "{args:?}: {}", stdout(&out));
    }
    // JSON is unchanged by TZ.
    let out = lb
        .cmd()
        .env("TZ", "JST-9")
        .args(["snapshots", "--json"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains(snaps[0]["time"].as_str().unwrap()));
}

/// Regression (issue 13): names that are not UTF-8 could not be given on
/// the command line (clap refused the argument) and were listed with
/// replacement characters, so two such names looked alike; a newline in a
/// name broke the text listing into two lines. Arguments are now taken as
/// bytes end to end, and names are shown in a lossless escape form
/// (`\xNN`, `\n`, `\\`) in text and JSON.
#[test]
fn names_that_are_not_utf8_or_hold_newlines_round_trip() {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let lb = Lifeboat::init();
    let src = lb.path("src");
    let latin1 = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    let other = src.join(std::ffi::OsStr::from_bytes(b"caf\xe8.txt"));
    let newline = src.join("two\nlines");
    write(&latin1, "latin-1\n");
    write(&other, "other\n");
    write(&newline, "nl\n");
    write(src.join("plain.txt"), "plain\n");
    lb.backup(&[&src], &[]);
    let base = src.to_str().unwrap().to_string();

    let listed = ls_paths(&lb.json(["ls", "latest"]));
    for want in [
        format!("{base}/caf\\xe9.txt"),
        format!("{base}/caf\\xe8.txt"),
        format!("{base}/two\\nlines"),
    ] {
        assert!(listed.contains(&want), "{want} in {listed:?}");
    }
    let text = stdout(&lb.ok(["ls", "latest"]));
    assert!(text.contains("two\\nlines"), "{text}");
    assert!(
        !text.contains("two\nlines"),
        "a raw newline in the listing: {text}"
    );

    // The raw bytes address the file in ls, dump, find and restore.
    let raw = latin1.clone().into_os_string();
    let mut ls = vec![
        OsString::from("ls"),
        "latest".into(),
        raw.clone(),
        "--json".into(),
    ];
    let one = parse_json(&lb.ok(&ls));
    assert_eq!(ls_paths(&one), vec![format!("{base}/caf\\xe9.txt")]);
    ls.pop();
    let out = lb.ok([OsString::from("dump"), "latest".into(), raw.clone()]);
    assert_eq!(stdout(&out), "latin-1\n");
    let found = parse_json(&lb.ok([
        OsString::from("find"),
        OsString::from_vec(b"caf\xe9.txt".to_vec()),
        "--json".into(),
    ]));
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let t = lb.path("t");
    lb.ok([
        OsString::from("restore"),
        "latest".into(),
        "--include".into(),
        raw.clone(),
        "-t".into(),
        t.clone().into_os_string(),
    ]);
    let restored = t.join(latin1.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(&restored).unwrap(), "latin-1\n");
    assert!(!t.join(other.strip_prefix("/").unwrap()).exists());
    assert!(
        !t.join(src.strip_prefix("/").unwrap())
            .join("plain.txt")
            .exists()
    );
}

/// Regression (issue 13): `-q` only hid progress bars (a backup still
/// printed its summary), `-v` said nothing for most commands, and `forget`
/// told a user who gave `--prune` to run prune.
#[test]
fn quiet_is_quiet_verbose_says_something_and_forget_names_prune_only_when_needed() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    let out = lb.ok(["-q", "backup", src.to_str().unwrap()]);
    assert_eq!(stdout(&out), "", "{}", describe(&out));
    assert_eq!(stderr(&out), "", "{}", describe(&out));
    let out = lb.ok([
        "-q",
        "restore",
        "latest",
        "-t",
        lb.path("t").to_str().unwrap(),
    ]);
    assert_eq!(stdout(&out), "", "{}", describe(&out));
    assert_eq!(stderr(&out), "", "{}", describe(&out));
    // Data asked for is still printed.
    assert!(stdout(&lb.ok(["-q", "snapshots"])).contains("1 snapshots"));
    // Errors still show.
    let err = lb.fail(["-q", "ls", "ffffffff"], NOT_FOUND);
    assert!(err.contains("lifeboat: error:"), "{err}");

    for args in [
        vec!["-v", "version"],
        vec!["-v", "snapshots"],
        vec!["-v", "ls", "latest"],
        vec!["-v", "check"],
    ] {
        let out = lb.ok(&args);
        let e = stderr(&out);
        assert!(e.contains("lifeboat: info: "), "{args:?}: {e}");
        assert!(!e.contains('\x1b'), "colour codes into a pipe: {e:?}");
    }
    let e = stderr(&lb.ok(["-v", "snapshots"]));
    assert!(e.contains("opened repository"), "{e}");

    write(src.join("a.txt"), "b\n");
    lb.backup(&[&src], &[]);
    let out = stdout(&lb.ok(["forget", "--keep-last", "1"]));
    assert!(out.contains("until `lifeboat prune`"), "{out}");
    write(src.join("a.txt"), "c\n");
    lb.backup(&[&src], &[]);
    let out = stdout(&lb.ok(["forget", "--keep-last", "1", "--prune"]));
    assert!(!out.contains("`lifeboat prune`"), "{out}");
}

/// Starts `lifeboat ARGS` (against `lb`'s repository), waits until a lock
/// object appears in `locks` (the command is under way), lets it run a
/// little longer (`after`, so rounds stop it at different steps), then
/// sends `sig`; returns its output. The command may also have finished by
/// itself first.
fn signal_mid_run(
    lb: &Lifeboat,
    args: &[&str],
    locks: &std::path::Path,
    after: std::time::Duration,
    sig: &str,
) -> std::process::Output {
    let mut child = lb
        .std_cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while fs::read_dir(locks).map_or(0, |d| d.count()) == 0 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(after);
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status();
    child.wait_with_output().unwrap()
}

fn lock_count(dir: &std::path::Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Regression test (issue 13): SIGINT/SIGTERM during `prune` releases its
/// exclusive lock and leaves a repository that `check` passes, at whatever
/// step the signal lands; the next prune finishes the work.
#[test]
fn a_signal_during_prune_releases_the_lock_and_leaves_nothing_half_done() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    let locks = lb.repo.join("locks");
    for (round, (sig, code)) in [("-INT", 130), ("-TERM", 143), ("-INT", 130), ("-TERM", 143)]
        .into_iter()
        .enumerate()
    {
        // Data that prune must delete (a forgotten snapshot's) and repack
        // (a pack shared with a kept file).
        for i in 0..3 {
            write(
                src.join(format!("f{i}")),
                random_bytes(3 << 20, (round * 10 + i) as u64),
            );
        }
        lb.backup(&[&src], &[]);
        fs::remove_file(src.join("f0")).unwrap();
        lb.backup(&[&src], &[]);
        lb.ok(["forget", "--keep-last", "1"]);
        let after = std::time::Duration::from_millis(40 * round as u64);
        let out = signal_mid_run(&lb, &["prune", "--max-unused", "0%"], &locks, after, sig);
        let got = out.status.code();
        assert!(
            got == Some(code) || got == Some(0),
            "{sig}: {}",
            describe(&out)
        );
        assert_eq!(
            lock_count(&locks),
            0,
            "{sig} left a lock: {}",
            describe(&out)
        );
        lb.ok(["check"]);
    }
    lb.ok(["prune", "--max-unused", "0%"]);
    lb.ok(["check", "--read-data"]);
    let t = lb.path("t");
    lb.ok(["restore", "latest", "-t", t.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&t, &src));
}

/// Regression test (issue 13): SIGINT/SIGTERM during `copy` releases the
/// target's lock; the target passes `check` and the rerun completes the
/// copy.
#[test]
fn a_signal_during_copy_releases_the_lock_and_the_rerun_finishes() {
    let from = Lifeboat::init();
    let src = from.path("src");
    for i in 0..4 {
        write(src.join(format!("f{i}")), random_bytes(3 << 20, 100 + i));
        from.backup(&[&src], &[]);
    }
    let to = Lifeboat::init();
    let locks = to.repo.join("locks");
    let from_repo = from.repo.to_str().unwrap().to_string();
    for (round, (sig, code)) in [("-INT", 130), ("-TERM", 143)].into_iter().enumerate() {
        let after = std::time::Duration::from_millis(60 * round as u64);
        let out = signal_mid_run(&to, &["copy", "--from", &from_repo], &locks, after, sig);
        let got = out.status.code();
        assert!(
            got == Some(code) || got == Some(0),
            "{sig}: {}",
            describe(&out)
        );
        assert_eq!(
            lock_count(&locks),
            0,
            "{sig} left a lock: {}",
            describe(&out)
        );
        to.ok(["check"]);
    }
    to.ok(["copy", "--from", &from_repo]);
    assert_eq!(to.snapshots().len(), 4);
    to.ok(["check", "--read-data"]);
    let t = to.path("t");
    to.ok(["restore", "latest", "-t", t.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&t, &src));
}

/// A read-only bind mount of `src` at `dst`, unmounted on drop.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(src: &std::path::Path, dst: &std::path::Path, test: &str) -> Option<Self> {
        fs::create_dir_all(dst).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("mount")
                .args(args)
                .output()
                .map(|o| o.status.success().then_some(()).ok_or(o))
        };
        let bound = run(&["--bind".as_ref(), src.as_os_str(), dst.as_os_str()]);
        match bound {
            Ok(Ok(())) => {}
            other => {
                let why = format!("{other:?}");
                assert!(
                    !lifeboat_testkit::services::in_ci(),
                    "{test}: cannot bind-mount ({why}), and CI must run this test"
                );
                eprintln!("SKIP {test}: cannot bind-mount: {why}");
                return None;
            }
        }
        let guard = ReadOnlyMount(dst.to_path_buf());
        let ro = run(&["-o".as_ref(), "remount,bind,ro".as_ref(), dst.as_os_str()]);
        assert!(matches!(ro, Ok(Ok(()))), "{test}: remount ro: {ro:?}");
        Some(guard)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Issue 13 ("read-only users"): every command that only reads works on
/// storage it cannot write to (here a read-only mount, which root cannot
/// write either), and `--no-lock` is accepted there; a command that writes
/// refuses `--no-lock` with a usage error.
#[test]
fn read_commands_work_on_read_only_storage_and_no_lock_is_for_them() {
    let mut lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "a\n");
    write(src.join("b/c.bin"), random_bytes(100_000, 9));
    lb.backup(&[&src], &[]);
    let Some(ro) = ReadOnlyMount::new(&lb.repo.clone(), &lb.path("ro"), "read_only_storage") else {
        return;
    };
    lb.repo = ro.0.clone();
    let a = format!("{}/a.txt", src.display());
    let t = lb.path("t");
    let t2 = lb.path("t2");
    for no_lock in [false, true] {
        let target = if no_lock { &t2 } else { &t };
        for args in [
            vec!["snapshots"],
            vec!["ls", "latest"],
            vec!["find", "*.bin"],
            vec!["diff", "latest", "latest"],
            vec!["dump", "latest", a.as_str()],
            vec!["stats"],
            vec!["check", "--read-data"],
            vec!["key", "list"],
            vec!["restore", "latest", "-t", target.to_str().unwrap()],
        ] {
            let mut args = args.clone();
            if no_lock {
                args.push("--no-lock");
            }
            let out = lb.ok(&args);
            assert!(
                !stderr(&out).contains("error"),
                "{args:?}: {}",
                describe(&out)
            );
        }
    }
    assert_same_tree(&src, &restored(&t, &src));
    let err = lb.fail(["backup", "--no-lock", src.to_str().unwrap()], USAGE);
    assert!(err.contains("--no-lock is for read commands"), "{err}");
    drop(ro);
}

/// The lines of `out`'s stderr that name `what`.
fn lines_naming(out: &std::process::Output, what: &str) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

/// Issue 13, "one report per failure (not a warning and an error for the
/// same file)", beyond restore: a file a backup cannot read, a file a
/// restore cannot read back from a damaged pack, and the damaged pack as
/// `check`, `copy` and `prune` meet it are each reported on one line,
/// never as a warning and again as an error.
#[test]
fn each_failure_is_reported_once() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("big.bin"), random_bytes(2_000_000, 3));
    write(src.join("small.txt"), "small\n");
    // Reading /proc/self/mem at offset 0 fails even for root.
    let out = lb
        .cmd()
        .arg("backup")
        .arg(&src)
        .arg("/proc/self/mem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(
        lines_naming(&out, "/proc/self/mem").len(),
        1,
        "backup: {}",
        describe(&out)
    );

    // The biggest pack holds big.bin's data; damage it.
    let pack = files_under(&lb.repo.join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(&pack, (fs::metadata(&pack).unwrap().len() / 2) as usize);
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();

    let t = lb.path("t");
    let out = lb
        .cmd()
        .args(["restore", "latest", "--target"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(
        lines_naming(&out, "big.bin").len(),
        1,
        "restore: {}",
        describe(&out)
    );

    let copy_target = lb.path("copy");
    lb.bare_cmd()
        .env("LIFEBOAT_PASSWORD", &lb.password)
        .arg("-r")
        .arg(&copy_target)
        .arg("init")
        .assert()
        .success();
    let copy = lb
        .cmd()
        .arg("copy")
        .arg("--from")
        .arg(&lb.repo)
        .arg("--to")
        .arg(&copy_target)
        .output()
        .unwrap();
    let check = lb.run(["check", "--read-data"]);
    lb.ok(["forget", "--keep-last", "1"]);
    let prune = lb.run(["prune", "--max-unused", "0"]);
    for (what, out) in [("copy", &copy), ("check", &check), ("prune", &prune)] {
        assert_no_panic(out);
        let naming = lines_naming(out, &pack_id[..16]);
        let warnings = naming.iter().filter(|l| l.contains("warning")).count();
        assert!(
            warnings == 0 || warnings == naming.len() && warnings == 1,
            "{what}: the damaged pack as a warning and an error: {}",
            describe(out)
        );
        let err = stderr(out);
        let mut lines: Vec<&str> = err.lines().collect();
        let all = lines.len();
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(
            lines.len(),
            all,
            "{what}: a line repeated: {}",
            describe(out)
        );
    }
    assert_eq!(check.status.code(), Some(14), "{}", describe(&check));
}
