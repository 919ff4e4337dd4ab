//! Every `lifeboat` command line in the README and the user guide runs as
//! printed, so a documented command cannot drift from the CLI.
//!
//! The command lines are taken from the ```sh blocks. Each runs, in
//! document order, in one scratch world per document: every absolute path (and `~`) is
//! moved under a scratch directory that holds the files the examples name
//! (`/home/you/Documents`, `/etc/hosts`, ...) and the repositories they use
//! (`/srv/backup/repo`, `/mnt/usb/repo`); the password comes from
//! `LIFEBOAT_PASSWORD`. A command passes when it is accepted (never a usage
//! error, exit 2) and either succeeds or fails only because an example
//! names data the scratch world cannot have (an example snapshot id, a
//! path that the latest snapshot lacks: exit 16). The lines that need
//! outside state are skipped by the explicit list in [`skip_reason`].

mod common;

use std::path::{Path, PathBuf};

use common::*;

const DOCS: &[&str] = &["../../README.md", "../../docs/user-guide.md"];

/// Why a documented line is not run here, or `None` to run it.
fn skip_reason(line: &str) -> Option<&'static str> {
    let reasons: &[(&str, &str)] = &[
        (
            "s3://",
            "needs an S3 endpoint (remote.rs and cold.rs run S3 end to end)",
        ),
        (
            "sftp://",
            "needs an SSH server (remote.rs runs SFTP end to end)",
        ),
        ("[--", "a syntax summary with optional parts, not a command"),
        ("...", "elided arguments"),
        ("cargo install", "builds and installs the binary"),
        (
            "config check",
            "reads the operations config in /etc/lifeboat (ops.rs checks \
             the minimal config and the shipped example)",
        ),
        (
            "doctor",
            "audits the operations config in /etc/lifeboat (doctor.rs runs it \
             on a healthy and a neglected setup)",
        ),
        (
            "lifeboat.toml run ",
            "runs a plan of the operations config in /etc/lifeboat (ops.rs and \
             doctor.rs run plans through the binary)",
        ),
        (
            "lifeboat.toml status",
            "reads the operations config in /etc/lifeboat (ops.rs runs status \
             through the binary)",
        ),
        (
            "lifeboat daemon",
            "runs until stopped (prometheus.rs and crates/ops/tests/daemon.rs)",
        ),
    ];
    reasons
        .iter()
        .find(|(needle, _)| line.contains(needle))
        .map(|(_, why)| *why)
}

/// The ```sh blocks of `text`, each as its `lifeboat ...` command lines
/// and `export NAME=VALUE ...` lines, with continuation lines joined and
/// comments, redirections and the other parts of a pipeline cut off.
fn blocks(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut block: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            match block.take() {
                Some(done) => out.push(done),
                None if line.trim() == "```sh" => block = Some(Vec::new()),
                None => {}
            }
            continue;
        }
        let Some(lines) = block.as_mut() else {
            continue;
        };
        let line = line.trim();
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        if full.starts_with('#') {
            continue;
        }
        if full.starts_with("export ") {
            lines.push(full);
            continue;
        }
        let Some(start) = full.find("lifeboat ") else {
            continue;
        };
        // Drop a trailing comment (two spaces then #) and what follows a
        // pipe or redirection after the lifeboat command.
        let mut cmd = &full[start..];
        if let Some(i) = cmd.find("  #") {
            cmd = &cmd[..i];
        }
        for sep in [" | ", " > "] {
            if let Some(i) = cmd.find(sep) {
                cmd = &cmd[..i];
            }
        }
        lines.push(cmd.trim().to_string());
    }
    out
}

/// Every line of [`blocks`], in document order.
fn command_lines(text: &str) -> Vec<String> {
    blocks(text).into_iter().flatten().collect()
}

/// Whether a block is a PostgreSQL story (it runs `lifeboat pg ...`): its
/// lines run against a throwaway cluster in
/// [`the_postgresql_lines_run_against_a_throwaway_cluster`], as do lines
/// that run `pg_dump`.
fn is_pg_block(block: &[String]) -> bool {
    block.iter().any(|l| l.contains(" pg "))
}

fn needs_pg(line: &str) -> bool {
    line.contains("pg_dump")
}

/// Splits a command line like sh (single and double quotes, no
/// expansion).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                started = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if started || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The scratch world every documented path is moved into.
struct World {
    lb: Lifeboat,
    fs: PathBuf,
}

impl World {
    fn new() -> Self {
        let lb = Lifeboat::new();
        let fs = lb.path("fs");
        let w = World { lb, fs };
        for (path, content) in [
            ("home/you/Documents/notes.txt", "notes\n"),
            ("home/ann/Documents/report.txt", "report\n"),
            ("home/ann/.cache/x", "cache\n"),
            ("etc/hosts", "127.0.0.1 localhost\n"),
            ("etc/ssh/sshd_config", "Port 22\n"),
        ] {
            write(w.fs.join(path), content);
        }
        // The user guide's `--files-from` list, naming a path of this world.
        write(
            w.fs.join("home/you/backup-list.txt"),
            format!(
                "# what to back up\n{}\n",
                w.fs.join("home/you/Documents").display()
            ),
        );
        for repo in ["srv/backup/repo", "mnt/usb/repo", "backup/repo"] {
            let out =
                w.lb.bare_cmd()
                    .env("LIFEBOAT_PASSWORD", &w.lb.password)
                    .arg("-r")
                    .arg(w.fs.join(repo))
                    .arg("init")
                    .output()
                    .unwrap();
            assert_ok(&out, repo);
        }
        w
    }

    fn home(&self) -> PathBuf {
        self.fs.join("home/you")
    }

    /// `word` with an absolute path or `~` moved into the world.
    fn map(&self, word: &str) -> String {
        map_word(&self.fs, word)
    }
}

/// `word` with an absolute path or `~` moved under `fs` (`~` is
/// `fs/home/you`).
fn map_word(fs: &Path, word: &str) -> String {
    // The cold-tier example's repository is /srv/backup, the parent of the
    // other examples' /srv/backup/repo: two separate examples, one scratch
    // world, so it gets its own place.
    if word == "/srv/backup" {
        return fs.join("srv/cold-example").to_string_lossy().into_owned();
    }
    let moved = |p: &str| -> String {
        let rel = p.trim_start_matches('/');
        fs.join(rel).to_string_lossy().into_owned()
    };
    let home = fs.join("home/you");
    if word == "~" {
        return home.to_string_lossy().into_owned();
    }
    if let Some(rest) = word.strip_prefix("~/") {
        return home.join(rest).to_string_lossy().into_owned();
    }
    if word.starts_with('/') {
        return moved(word);
    }
    // SNAPSHOT:/SUBPATH (`latest:/home/ann`): the subpath moves too.
    if let Some((snapshot, sub)) = word.split_once(':')
        && sub.starts_with('/')
        && !sub.starts_with("//")
    {
        return format!("{snapshot}:{}", moved(sub));
    }
    word.to_string()
}

/// The `NAME=VALUE` pairs of an `export` line, values moved by `map`.
fn exports(line: &str, map: impl Fn(&str) -> String) -> Vec<(String, String)> {
    words(line)
        .iter()
        .skip(1)
        .map(|w| {
            let (name, value) = w.split_once('=').expect("export NAME=VALUE");
            (name.to_string(), map(value))
        })
        .collect()
}

#[test]
fn every_documented_command_runs_as_printed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    let mut failures = Vec::new();
    for doc in DOCS {
        // Each document is a story of its own (both restore to
        // /tmp/restored): one world each.
        let world = World::new();
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let blocks = blocks(&text);
        assert!(!blocks.is_empty(), "no command lines found in {doc}");
        for block in blocks {
            // An `export` holds for the rest of its block.
            let mut env = Vec::new();
            let pg_block = is_pg_block(&block);
            for line in block {
                if pg_block || needs_pg(&line) {
                    eprintln!("runs in the PostgreSQL test: {line}");
                    continue;
                }
                if line.starts_with("export ") {
                    env.extend(exports(&line, |v| world.map(v)));
                    continue;
                }
                if let Some(why) = skip_reason(&line) {
                    eprintln!("skipped ({why}): {line}");
                    continue;
                }
                let words = words(&line);
                assert_eq!(words[0], "lifeboat", "{line}");
                let args: Vec<String> = words[1..].iter().map(|w| world.map(w)).collect();
                // The password: the default repository's own file, as in the
                // README's first-use flow, unless the line names a repository
                // (then LIFEBOAT_PASSWORD, as the examples' set-up assumes).
                let names_repo = words
                    .iter()
                    .any(|w| ["-r", "--repo", "--from", "--to"].contains(&w.as_str()));
                let mut cmd = world.lb.bare_cmd();
                if names_repo {
                    cmd.env("LIFEBOAT_PASSWORD", &world.lb.password);
                }
                let out = cmd
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env("HOME", world.home())
                    .args(&args)
                    .write_stdin("a stream for --stdin\n")
                    .output()
                    .unwrap();
                assert_no_panic(&out);
                ran += 1;
                match out.status.code() {
                    Some(0) => {}
                    // An example id, or a path the latest snapshot lacks.
                    Some(16) => eprintln!("ran (16, example data): {line}"),
                    _ => failures.push(format!("{doc}: {line}\n  {}", describe(&out))),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "documented commands that do not run as printed:\n{}",
        failures.join("\n")
    );
    assert!(ran >= 20, "only {ran} documented commands ran");
}

#[test]
fn command_lines_are_extracted_like_sh_reads_them() {
    let text = "```sh\nlifeboat backup -r a \\\n    -r 'b c' /x   # note\npg_dump d | lifeboat backup --stdin > out\n```\n";
    assert_eq!(
        command_lines(text),
        vec![
            "lifeboat backup -r a  -r 'b c' /x",
            "lifeboat backup --stdin"
        ]
    );
    assert_eq!(
        words("lifeboat -r 'b c' find '*.sql'"),
        vec!["lifeboat", "-r", "b c", "find", "*.sql"]
    );
}

/// The README's PostgreSQL story, run as printed by the `postgres` user
/// against a throwaway cluster (`lifeboat_testkit::postgres`): the
/// cluster archives with the README's own `archive_command` (its paths
/// moved into a scratch world), `postgresql://postgres@/...` reaches it
/// through `PGHOST`/`PGPORT` as libpq would, the example's
/// `--target-time` becomes a time between two commits, and the example
/// ports become free ones. Every line must succeed, and the restored
/// servers must hold what they should.
#[test]
fn the_postgresql_lines_run_against_a_throwaway_cluster() {
    use lifeboat_testkit::postgres::{
        PgCluster, PgOptions, as_postgres, chown_postgres, free_port, pg_tempdir,
    };
    if !lifeboat_testkit::postgres::available() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let lines: Vec<String> = blocks(&text)
        .into_iter()
        .flat_map(|b| {
            if is_pg_block(&b) {
                b
            } else {
                b.into_iter().filter(|l| needs_pg(l)).collect()
            }
        })
        .collect();
    assert!(
        lines.iter().filter(|l| l.contains(" pg ")).count() >= 5,
        "the README's PostgreSQL block is gone: {lines:?}"
    );

    // The world, owned by postgres, with the binary in it (the postgres
    // user cannot reach the build directory).
    let dir = pg_tempdir();
    let fs = dir.path().join("fs");
    let bin = dir.path().join("lifeboat");
    std::fs::copy(env!("CARGO_BIN_EXE_lifeboat"), &bin).expect("copy binary");
    let map = |w: &str| map_word(&fs, w);
    write(
        map("/etc/lifeboat/pg.password"),
        "a password made once for the PostgreSQL repository\n",
    );
    std::fs::create_dir_all(map("/srv")).unwrap();
    std::fs::create_dir_all(map("/home/you")).unwrap();
    chown_postgres(dir.path());

    // The cluster archives with the README's archive_command.
    let archive_command = text
        .lines()
        .find_map(|l| l.split_once("archive_command = '")?.1.strip_suffix('\''))
        .expect("the README shows an archive_command");
    let archive_words = words(archive_command);
    assert_eq!(archive_words[0], "lifeboat", "{archive_command}");
    let archive_command = std::iter::once(bin.to_string_lossy().into_owned())
        .chain(archive_words[1..].iter().map(|w| map(w)))
        .collect::<Vec<_>>()
        .join(" ");
    let Some(pg) = PgCluster::start(&PgOptions {
        archive_command: Some(archive_command),
        extra_conf: vec![],
    }) else {
        return;
    };
    for db in ["app", "mydb"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    }
    pg.psql(
        "app",
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')",
    );

    let mut target_time = None;
    let mut restored = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    for line in &lines {
        if line.starts_with("export ") {
            env.extend(exports(line, map));
            continue;
        }
        let words = words(line);
        assert_eq!(words[0], "lifeboat", "{line}");
        let mut args: Vec<String> = words[1..].iter().map(|w| map(w)).collect();
        let mut port = None;
        for i in 1..args.len() {
            let flag = args[i - 1].as_str();
            if flag == "--target-time" {
                args[i] = target_time
                    .clone()
                    .expect("a base backup before the restore");
            } else if flag == "--set" && args[i].starts_with("port=") {
                let p = free_port();
                args[i] = format!("port={p}");
                port = Some(p);
            }
        }
        let mut cmd = as_postgres(&bin);
        cmd.env_remove("LIFEBOAT_REPO")
            .env_remove("LIFEBOAT_PASSWORD")
            .env_remove("LIFEBOAT_PASSWORD_FILE")
            .env_remove("LIFEBOAT_PASSWORD_COMMAND")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env("HOME", map("~"))
            .env("XDG_DATA_HOME", map("~/.local/share"))
            .env("XDG_CONFIG_HOME", map("~/.config"))
            .env("XDG_CACHE_HOME", map("~/.cache"))
            .env("XDG_STATE_HOME", map("~/.local/state"))
            .env("PGHOST", &pg.socket_dir)
            .env("PGPORT", pg.port.to_string())
            .current_dir(dir.path())
            .args(&args);
        // A hang (a base backup waiting for WAL that is never archived)
        // fails too.
        let out = assert_cmd::Command::from_std(cmd)
            .timeout(COMMAND_TIMEOUT)
            .output()
            .unwrap();
        assert_no_panic(&out);
        assert_ok(&out, line);
        if let (Some(port), Some(i)) = (port, args.iter().position(|a| a == "--to")) {
            restored.push((
                line.contains("--standby"),
                PgCluster::adopt(PathBuf::from(&args[i + 1]), pg.socket_dir.clone(), port),
            ));
        }
        if line.contains("pg backup") {
            // A commit before the example's target time and one after,
            // both archived.
            target_time = Some(pg.now_utc());
            pg.psql("app", "INSERT INTO t VALUES ('after the target')");
            pg.switch_and_wait_archived(std::time::Duration::from_secs(60));
        }
    }
    assert_eq!(restored.len(), 2, "a point-in-time copy and a standby");
    for (standby, server) in &restored {
        if *standby {
            // Still replaying (how far it got is its own business).
            assert_eq!(server.psql("app", "SELECT pg_is_in_recovery()"), "t");
            assert!(!server.psql("app", "SELECT v FROM t").is_empty());
        } else {
            assert_eq!(
                server.psql("app", "SELECT string_agg(v, ',') FROM t"),
                "kept"
            );
        }
    }
}
