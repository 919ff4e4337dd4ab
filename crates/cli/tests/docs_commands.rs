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
            "pg backup",
            "needs a PostgreSQL cluster to copy (tests/pg.rs)",
        ),
        ("pg restore", "starts a PostgreSQL server (tests/pg.rs)"),
        ("pg dump", "needs a database to dump (tests/pg.rs)"),
        (
            "pg wal-push",
            "runs as PostgreSQL's archive_command (tests/pg.rs)",
        ),
        (
            "pg check",
            "needs a running PostgreSQL server (tests/pg.rs)",
        ),
        (
            "-- pg_dump",
            "needs a database to dump (cli.rs runs --stdin-from-command \
             with commands that fail and succeed)",
        ),
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

/// The `lifeboat ...` command lines of the ```sh blocks of `text`, with
/// continuation lines joined and comments, redirections and the other
/// parts of a pipeline cut off.
fn command_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
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
        out.push(cmd.trim().to_string());
    }
    out
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
        // The cold-tier example's repository is /srv/backup, the parent
        // of the other examples' /srv/backup/repo: two separate examples,
        // one scratch world, so it gets its own place.
        if word == "/srv/backup" {
            return self
                .fs
                .join("srv/cold-example")
                .to_string_lossy()
                .into_owned();
        }
        let moved = |p: &str| -> String {
            let rel = p.trim_start_matches('/');
            self.fs.join(rel).to_string_lossy().into_owned()
        };
        if word == "~" {
            return self.home().to_string_lossy().into_owned();
        }
        if let Some(rest) = word.strip_prefix("~/") {
            return self.home().join(rest).to_string_lossy().into_owned();
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
        let lines = command_lines(&text);
        assert!(!lines.is_empty(), "no command lines found in {doc}");
        for line in lines {
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
