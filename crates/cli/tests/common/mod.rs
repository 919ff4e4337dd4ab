//! Shared helpers for the CLI tests: a [`Lifeboat`] wrapper that runs the
//! real `lifeboat` binary with a private HOME, XDG directories, repository
//! path and password, plus the file-tree utilities of
//! `lifeboat_testkit::fs`, re-exported.
//!
//! Every command runs with `LIFEBOAT_INSECURE_TEST_KDF=1` (cheap Argon2) and
//! with the `LIFEBOAT_*` variables of the calling environment removed, so a
//! developer's own repository can never be touched by the tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use tempfile::TempDir;

// The file-tree helpers live in testkit, shared with the library suites.
#[allow(unused_imports)] // each test binary uses a different subset
pub use lifeboat_testkit::fs::{
    Entry, assert_same_tree, copy_tree, files_under, flip_byte, restored, tree, write,
};

/// Password of the repositories the tests create.
pub const PASSWORD: &str = "correct horse battery staple";

/// Longest any single command may take. The biggest input in the suite is
/// 20 MiB; an unoptimized binary handles that in seconds, so a minute is
/// far beyond normal and still ends a hung command well inside CI's budget.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Variables that would point a test at someone else's repository or
/// password.
const INHERITED_VARS: &[&str] = &[
    "LIFEBOAT_REPO",
    "LIFEBOAT_PASSWORD",
    "LIFEBOAT_PASSWORD_FILE",
    "LIFEBOAT_PASSWORD_COMMAND",
    "LIFEBOAT_NEW_PASSWORD",
    "LIFEBOAT_LOG",
    "LIFEBOAT_COLD_LOCATION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "RUST_BACKTRACE",
];

/// One isolated user of the binary: a temp dir holding HOME, the XDG data
/// and config directories, a repository path (`repo`, not created until
/// [`Lifeboat::init`]) and room for sources and restore targets.
pub struct Lifeboat {
    dir: TempDir,
    pub repo: PathBuf,
    pub password: String,
}

impl Default for Lifeboat {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifeboat {
    /// A fresh environment; the repository does not exist yet.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-cli-")
            .tempdir()
            .expect("temp dir");
        for d in ["home", "xdg-data", "xdg-config"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let repo = dir.path().join("repo");
        Lifeboat {
            dir,
            repo,
            password: PASSWORD.to_string(),
        }
    }

    /// A fresh environment with an initialized repository.
    pub fn init() -> Self {
        let lb = Self::new();
        lb.ok(["init"]);
        lb
    }

    /// Uses an existing repository directory (e.g. a copied fixture).
    pub fn with_repo(mut self, repo: PathBuf, password: &str) -> Self {
        self.repo = repo;
        self.password = password.to_string();
        self
    }

    /// The temp directory everything of this test lives in.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    pub fn xdg_data(&self) -> PathBuf {
        self.path("xdg-data")
    }

    pub fn xdg_config(&self) -> PathBuf {
        self.path("xdg-config")
    }

    /// The binary with the private environment but no repository and no
    /// password, as a plain `std` command (for spawning with pipes).
    pub fn std_bare_cmd(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("lifeboat"));
        for v in INHERITED_VARS {
            cmd.env_remove(v);
        }
        cmd.env("HOME", self.home())
            .env("XDG_DATA_HOME", self.xdg_data())
            .env("XDG_CONFIG_HOME", self.xdg_config())
            .env("XDG_CACHE_HOME", self.path("home/.cache"))
            .env("XDG_STATE_HOME", self.path("home/.local/state"))
            .env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env("USER", "tester")
            .current_dir(self.root());
        cmd
    }

    /// Like [`Lifeboat::std_bare_cmd`], pointed at this test's repository
    /// with its password.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut cmd = self.std_bare_cmd();
        cmd.arg("-r")
            .arg(&self.repo)
            .env("LIFEBOAT_PASSWORD", &self.password);
        cmd
    }

    /// What a first-time user with an empty HOME runs: no repository, no
    /// password.
    pub fn bare_cmd(&self) -> Command {
        let mut cmd = Command::from_std(self.std_bare_cmd());
        cmd.timeout(COMMAND_TIMEOUT);
        cmd
    }

    /// The binary pointed at this test's repository with its password.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::from_std(self.std_cmd());
        cmd.timeout(COMMAND_TIMEOUT);
        cmd
    }

    /// Runs `lifeboat -r REPO ARGS...` and returns whatever happened.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd().args(args).output().expect("run lifeboat")
    }

    /// Runs a command that must succeed; returns its output.
    pub fn ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.run(&args);
        assert_ok(&out, &args);
        out
    }

    /// Runs a command with `--json` that must succeed; parses its stdout.
    pub fn json<I, S>(&self, args: I) -> serde_json::Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        args.push("--json".into());
        parse_json(&self.ok(&args))
    }

    /// Runs a command that must fail with `code` and report exactly one
    /// error line; returns that stderr.
    pub fn fail<I, S>(&self, args: I, code: i32) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.run(&args);
        assert_fails(&out, code, &args)
    }

    /// Backs up `paths` (with extra flags) as JSON and returns the summary.
    pub fn backup(&self, paths: &[&Path], flags: &[&str]) -> serde_json::Value {
        let mut args: Vec<std::ffi::OsString> = vec!["backup".into()];
        args.extend(flags.iter().map(Into::into));
        args.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
        self.json(&args)
    }

    /// `snapshots --json`.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        self.json(["snapshots"])
            .as_array()
            .expect("snapshots array")
            .clone()
    }
}

/// Creates the test's repository with `init --write-only-keys` and adds a
/// write-only key under `password` (`key add --write-only`); returns the
/// key's id.
pub fn init_with_write_only_key(lb: &Lifeboat, password: &str) -> String {
    let out = lb.json(["init", "--write-only-keys"]);
    assert_eq!(out["write_only_keys"], true, "{out}");
    let file = lb.path("write-only.pw");
    fs::write(&file, password).unwrap();
    let out = lb.json([
        "key",
        "add",
        "--write-only",
        "--new-password-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out["kind"], "write-only", "{out}");
    out["added"].as_str().unwrap().to_string()
}

/// Runs lifeboat on the test's repository with another password.
pub fn run_with_password(lb: &Lifeboat, password: &str, args: &[&str]) -> Output {
    lb.cmd()
        .env("LIFEBOAT_PASSWORD", password)
        .args(args)
        .output()
        .expect("run lifeboat")
}

/// Snapshot paths of `ls --json` output.
pub fn ls_paths(entries: &serde_json::Value) -> Vec<String> {
    entries
        .as_array()
        .expect("ls entries")
        .iter()
        .map(|e| e["path"].as_str().expect("a path").to_string())
        .collect()
}

/// Stdout and stderr of a run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_ok<A: std::fmt::Debug>(out: &Output, args: A) {
    assert!(
        out.status.success(),
        "lifeboat {args:?} failed: {}",
        describe(out)
    );
    assert_no_panic(out);
}

pub fn parse_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(out)))
}

/// The binary never shows a Rust panic or backtrace to users.
pub fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "panic: {}", describe(out));
    assert!(
        !err.contains("stack backtrace"),
        "backtrace: {}",
        describe(out)
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "panic exit code: {}",
        describe(out)
    );
}

/// Exit code `code`, no panic, and exactly one `lifeboat: error:` line.
/// Returns stderr.
pub fn assert_fails<A: std::fmt::Debug>(out: &Output, code: i32, args: A) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "lifeboat {args:?}: wrong exit code: {}",
        describe(out)
    );
    assert_no_panic(out);
    let err = stderr(out);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("lifeboat: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "want exactly one error line: {}",
        describe(out)
    );
    err
}

/// The lines of stderr that report errors.
pub fn error_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("lifeboat: error:"))
        .map(String::from)
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough
/// to make real packs, without a dev-dependency.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
