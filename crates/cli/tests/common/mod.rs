//! Shared helpers for the CLI tests: a [`Lifeboat`] wrapper that runs the
//! real `lifeboat` binary with a private HOME, XDG directories, repository
//! path and password, plus the file-tree utilities of
//! `lifeboat_testkit::fs`, re-exported; and for the operations commands a
//! config file, `--config` runs, the daemon as a child process and a plain
//! HTTP GET of its endpoints.
//!
//! Every command runs with `LIFEBOAT_INSECURE_TEST_KDF=1` (cheap Argon2) and
//! with the `LIFEBOAT_*` variables of the calling environment removed, so a
//! developer's own repository can never be touched by the tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use tempfile::TempDir;

// The file-tree helpers live in testkit, shared with the library suites.
#[allow(unused_imports)] // each test binary uses a different subset
pub use lifeboat_testkit::fs::{
    Entry, assert_same_tree, copy_tree, files_under, flip_byte, restored, tree, write,
};
#[allow(unused_imports)] // each test binary uses a different subset
pub use lifeboat_testkit::{cmd::KillOnDrop, services::free_port};

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
        let args = os_args(args);
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
        let mut args = os_args(args);
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
        let args = os_args(args);
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

    /// `restore SNAPSHOT --target <root>/<target> FLAGS...`, which must
    /// succeed; returns the target.
    pub fn restore_into(&self, snapshot: &str, target: &str, flags: &[&str]) -> PathBuf {
        let target = self.path(target);
        let mut args: Vec<std::ffi::OsString> =
            vec!["restore".into(), snapshot.into(), "--target".into()];
        args.push(target.clone().into());
        args.extend(flags.iter().map(Into::into));
        self.ok(&args);
        target
    }

    /// `snapshots --json`.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        self.json(["snapshots"])
            .as_array()
            .expect("snapshots array")
            .clone()
    }

    /// Creates the repository `<root>/<name>` opened with the password
    /// file `<root>/pw` (as a config file names them), writing that file
    /// first if there is none.
    pub fn init_with_password_file(&self, name: &str) {
        let pw = self.path("pw");
        if !pw.exists() {
            fs::write(&pw, "pw\n").unwrap();
        }
        let out = self
            .bare_cmd()
            .arg("init")
            .arg("-r")
            .arg(self.path(name))
            .arg("--password-file")
            .arg(&pw)
            .output()
            .unwrap();
        assert_ok(&out, "init");
    }

    /// Writes `text` as `<root>/lifeboat.toml`, with `{root}` replaced by
    /// the temp dir; returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let file = self.path("lifeboat.toml");
        fs::write(
            &file,
            text.replace("{root}", &self.root().display().to_string()),
        )
        .unwrap();
        file
    }

    /// Runs `lifeboat --config FILE ARGS...` (no repository, no password)
    /// and returns whatever happened.
    pub fn run_config<I, S>(&self, file: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.bare_cmd()
            .arg("--config")
            .arg(file)
            .args(args)
            .output()
            .unwrap()
    }

    /// [`Lifeboat::run_config`] for a command that must succeed.
    pub fn ok_config<I, S>(&self, file: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args = os_args(args);
        let out = self.run_config(file, &args);
        assert_ok(&out, &args);
        out
    }

    /// Starts `lifeboat --config FILE daemon --log-format json` with
    /// stdout discarded and stderr (its log) piped; killed on drop.
    pub fn spawn_daemon(&self, file: &Path) -> KillOnDrop {
        KillOnDrop(
            self.std_bare_cmd()
                .arg("--config")
                .arg(file)
                .args(["daemon", "--log-format", "json"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }
}

/// The config of the operations tests: repository `main` at `<root>/repo`
/// (password file `pw`, see [`Lifeboat::init_with_password_file`]), the
/// source `src` over `<root>/src` and the plan `src` backing it up, with
/// the `plan` lines (rpo, schedule), then `tail` (a `[daemon]` table).
/// `{root}` is left for [`Lifeboat::write_config`].
pub fn src_plan_config(plan: &str, tail: &str) -> String {
    format!(
        r#"state-dir = "state"
[repository.main]
location = "repo"
password-file = "pw"
[source.src]
type = "files"
paths = ["{{root}}/src"]
[plan.src]
source = "src"
repositories = ["main"]
{plan}
{tail}"#
    )
}

/// Sends SIGTERM to `child` (as systemd stops the daemon).
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {}: {status}", child.id());
}

/// Everything `child` wrote to its piped stderr (read after it exited).
pub fn child_stderr(child: &mut std::process::Child) -> String {
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    log
}

/// Reads `child`'s piped stderr line by line until a line contains
/// `needle`; returns the lines read and the reader. Keep the reader until
/// the child exits: closing the pipe would fail its later writes. Panics
/// if stderr ends first (the child exited without saying it).
pub fn stderr_until(
    child: &mut std::process::Child,
    needle: &str,
) -> (String, std::io::BufReader<std::process::ChildStderr>) {
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut said = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "ended without saying {needle:?}: {said}");
        said.push_str(&line);
        if line.contains(needle) {
            return (said, err);
        }
    }
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`: status code and body;
/// `None` while nothing listens there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Command-line arguments, collected to be used twice (run, then named in
/// an assertion message).
fn os_args<I, S>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect()
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
