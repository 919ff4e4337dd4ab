//! Real servers for tests, each private to one test.
//!
//! [`S3Server`] runs s3s-fs (an S3 server that keeps objects as plain files,
//! so damage tests can corrupt them on disk); [`SshServer`] runs a private
//! OpenSSH daemon for SFTP. Each lives in its own temp directory, listens on
//! a free port of 127.0.0.1, is ready when `start` returns, and is killed by
//! its PID when dropped.
//!
//! When a server binary is missing, `start` returns `None` after printing a
//! skip notice, so a developer without the tools still gets a green run of
//! everything else; with the `CI` environment variable set it panics
//! instead, because a skipped test in CI is a test that silently stopped
//! running. `scripts/setup-test-deps` installs everything.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_storage::{KnownHosts, Location, ObjectKey, S3Options, SftpOptions};
use tempfile::TempDir;

/// How long a server may take to accept connections. Both start in tens of
/// milliseconds; the margin is for a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Tries with a fresh port when a server dies at start, which is what
/// losing the race for a just-probed free port looks like.
const START_ATTEMPTS: usize = 3;

/// True when running in CI, where a missing test dependency is an error.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Finds `binary` on `PATH` or in the places installers put it but `PATH`
/// may miss (`~/.cargo/bin`, `/usr/sbin`, `/usr/local/sbin`, `/sbin`).
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Some(PathBuf::from(binary)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// Returns the path of `binary`, or `None` after printing why `purpose` is
/// skipped. Panics instead when [`in_ci`], naming the setup script.
pub fn require_or_skip(binary: &str, purpose: &str) -> Option<PathBuf> {
    require_or_skip_in(binary, purpose, in_ci())
}

fn require_or_skip_in(binary: &str, purpose: &str, ci: bool) -> Option<PathBuf> {
    if let Some(path) = find_binary(binary) {
        return Some(path);
    }
    if ci {
        panic!(
            "\n\n*** TEST DEPENDENCY MISSING: `{binary}` (needed for {purpose}) ***\n\
             *** CI is set, so this fails instead of skipping.          ***\n\
             *** Install the test dependencies: scripts/setup-test-deps ***\n\n"
        );
    }
    eprintln!(
        "SKIPPED: {purpose} needs `{binary}`, which is not installed; \
         run scripts/setup-test-deps to install it"
    );
    None
}

/// An s3s-fs server on 127.0.0.1 with fixed test credentials and one
/// bucket, [`S3Server::BUCKET`].
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl S3Server {
    pub const BUCKET: &'static str = "lifeboat-test";
    pub const ACCESS_KEY: &'static str = "lifeboat-test-access-key";
    pub const SECRET_KEY: &'static str = "lifeboat-test-secret-key";
    pub const REGION: &'static str = "us-east-1";
    /// Key prefix of the repository that [`S3Server::location_url`] names.
    pub const REPO_PREFIX: &'static str = "repo";

    /// Starts a server, or returns `None` if s3s-fs is missing (see
    /// [`require_or_skip`]). Panics if it is installed but will not start.
    pub fn start() -> Option<Self> {
        let binary = require_or_skip("s3s-fs", "an S3 test")?;
        let dir = temp_dir("lb-s3-");
        let root = dir.path().join("data");
        fs::create_dir_all(root.join(Self::BUCKET)).expect("creating the bucket directory");
        let log = dir.path().join("s3s-fs.log");
        let (child, port) = start_with_retries("s3s-fs", &log, |port| {
            let mut cmd = Command::new(&binary);
            cmd.arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg("--access-key")
                .arg(Self::ACCESS_KEY)
                .arg("--secret-key")
                .arg(Self::SECRET_KEY)
                .arg(&root);
            cmd
        });
        Some(Self { child, dir, port })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bucket(&self) -> &str {
        Self::BUCKET
    }

    pub fn access_key(&self) -> &str {
        Self::ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        Self::SECRET_KEY
    }

    /// The server's data directory: one subdirectory per bucket, one file
    /// per object at `<root>/<bucket>/<key>`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the server keeps `key` of the repository under `prefix`, for
    /// tests that damage or inspect stored objects.
    pub fn object_path(&self, prefix: &str, key: &ObjectKey) -> PathBuf {
        let mut path = self.root().join(Self::BUCKET);
        if !prefix.is_empty() {
            path.push(prefix);
        }
        path.join(key.path())
    }

    /// `s3://` URL of the repository at [`S3Server::REPO_PREFIX`]. It holds no
    /// credentials: pass [`S3Server::env`] to a child process, or use
    /// [`S3Server::location`] in-process.
    pub fn location_url(&self) -> String {
        self.location_url_for(Self::REPO_PREFIX)
    }

    /// Like [`S3Server::location_url`] for a repository under `prefix`.
    pub fn location_url_for(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region={}",
            Self::BUCKET,
            self.endpoint(),
            Self::REGION
        )
    }

    /// Complete options (with credentials) for a repository under `prefix`.
    pub fn s3_options(&self, prefix: &str) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            root: prefix.to_string(),
            region: Some(Self::REGION.to_string()),
            access_key_id: Some(Self::ACCESS_KEY.to_string()),
            secret_access_key: Some(Self::SECRET_KEY.to_string()),
            ..S3Options::new(Self::BUCKET)
        }
    }

    /// [`S3Server::location_url`] parsed, with the credentials filled in.
    pub fn location(&self) -> Location {
        match Location::parse(&self.location_url()).expect("test URL parses") {
            Location::S3(options) => Location::S3(S3Options {
                access_key_id: Some(Self::ACCESS_KEY.to_string()),
                secret_access_key: Some(Self::SECRET_KEY.to_string()),
                ..options
            }),
            other => panic!("s3 URL parsed as {other:?}"),
        }
    }

    /// Environment that makes [`S3Server::location_url`] work in a child
    /// process (the `AWS_*` variables the storage reads).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_string()),
            ("AWS_REGION", Self::REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// moto's S3 server, which (unlike s3s-fs) keeps object versions and
/// enforces S3 Object Lock: a locked version cannot be deleted before its
/// retain-until date. Buckets are made by the test ([`MotoServer::python`]
/// runs boto3 against it, which is also how tests play an attacker holding
/// the same credentials). moto accepts any credentials.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    _dir: TempDir,
    port: u16,
    /// The Python moto was installed for (its venv's, when it has one),
    /// which has boto3.
    python: PathBuf,
    /// With IAM ([`MotoServer::start_with_iam`]): the file whose creation
    /// switches enforcement on.
    auth_flag: Option<PathBuf>,
}

/// The wrapper [`MotoServer::start_with_iam`] runs (why, in its comments).
const MOTO_IAM_SERVER: &str = include_str!("moto/iam_server.py");

impl MotoServer {
    pub const ACCESS_KEY: &'static str = "lifeboat-moto-access-key";
    pub const SECRET_KEY: &'static str = "lifeboat-moto-secret-key";
    pub const REGION: &'static str = "us-east-1";

    /// Starts a server, or returns `None` if `moto_server` is missing (see
    /// [`require_or_skip`]; `scripts/setup-test-deps` installs it).
    pub fn start() -> Option<Self> {
        Self::start_mode(false)
    }

    /// Starts a server that will check signatures and IAM policies once
    /// [`MotoServer::enforce_iam`] is called: until then any credentials
    /// may create buckets and users ([`MotoServer::create_user`]). Runs
    /// moto through `moto/iam_server.py`, which also makes moto compute
    /// the canonical query string as AWS does (without it moto refuses
    /// every correctly signed listing with a `/` in its prefix).
    pub fn start_with_iam() -> Option<Self> {
        Self::start_mode(true)
    }

    fn start_mode(iam: bool) -> Option<Self> {
        let binary = require_or_skip("moto_server", "an S3 object-lock or IAM test")?;
        let python = binary
            .parent()
            .map(|d| d.join("python3"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("python3"));
        let dir = temp_dir("lb-moto-");
        let log = dir.path().join("moto.log");
        let script = dir.path().join("iam_server.py");
        let auth_flag = iam.then(|| dir.path().join("enforce-iam"));
        if iam {
            write_file(&script, MOTO_IAM_SERVER);
        }
        let (child, port) = start_with_retries("moto_server", &log, |port| {
            let mut cmd = match &auth_flag {
                Some(flag) => {
                    let mut cmd = Command::new(&python);
                    cmd.arg(&script).arg(flag);
                    cmd
                }
                None => Command::new(&binary),
            };
            cmd.arg("-H")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(port.to_string());
            cmd
        });
        Some(Self {
            child,
            _dir: dir,
            port,
            python,
            auth_flag,
        })
    }

    /// From now on every request must be signed by a user this server knows
    /// and be allowed by that user's policies.
    pub fn enforce_iam(&self) {
        let flag = self
            .auth_flag
            .as_ref()
            .expect("enforce_iam needs a server from start_with_iam");
        write_file(flag, "");
    }

    /// Creates an IAM user with one inline policy (a JSON policy document)
    /// and returns its access key id and secret (before
    /// [`MotoServer::enforce_iam`]).
    pub fn create_user(&self, name: &str, policy: &str) -> (String, String) {
        let out = self.python(&format!(
            "iam = boto3.client('iam', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
             iam.create_user(UserName={name:?})\n\
             iam.put_user_policy(UserName={name:?}, PolicyName='p', PolicyDocument={policy:?})\n\
             k = iam.create_access_key(UserName={name:?})['AccessKey']\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])"
        ));
        let mut words = out.split_whitespace();
        let (Some(id), Some(secret)) = (words.next(), words.next()) else {
            panic!("create_access_key printed {out:?}");
        };
        (id.to_string(), secret.to_string())
    }

    /// [`MotoServer::env`] with another user's keys.
    pub fn env_as(&self, access_key: &str, secret_key: &str) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        for (name, value) in &mut env {
            match *name {
                "AWS_ACCESS_KEY_ID" => *value = access_key.to_string(),
                "AWS_SECRET_ACCESS_KEY" => *value = secret_key.to_string(),
                _ => {}
            }
        }
        env
    }

    /// [`MotoServer::python`] as another user; returns the snippet's exit
    /// success and its stdout and stderr (a denied call is an expected
    /// outcome here).
    pub fn python_as(&self, access_key: &str, secret_key: &str, script: &str) -> (bool, String) {
        let program = format!(
            "import boto3, datetime, json, os, sys, time\n\
             s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n{script}"
        );
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(&program)
            .envs(self.env_as(access_key, secret_key))
            .output()
            .expect("running python3");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://` URL of a repository under `prefix` of `bucket`.
    pub fn location_url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region={}",
            self.endpoint(),
            Self::REGION
        )
    }

    /// Environment for a child process (lifeboat or boto3) to reach the
    /// server with the test credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_string()),
            ("AWS_REGION", Self::REGION.to_string()),
            ("AWS_DEFAULT_REGION", Self::REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// Runs a python3 snippet with `s3`, a boto3 client of this server,
    /// already defined; returns its stdout. Panics with its output if it
    /// fails.
    pub fn python(&self, script: &str) -> String {
        let program = format!(
            "import boto3, datetime, json, os, sys, time\n\
             s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n{script}"
        );
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(&program)
            .envs(self.env())
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "python snippet failed:\n{script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private OpenSSH daemon on 127.0.0.1 that accepts one temporary client
/// key for the current user and serves SFTP.
#[derive(Debug)]
pub struct SshServer {
    child: Child,
    dir: TempDir,
    port: u16,
    user: String,
}

impl SshServer {
    /// Starts a server, or returns `None` if sshd, ssh or ssh-keygen is
    /// missing (see [`require_or_skip`]). Panics if they are installed but
    /// the server will not start.
    pub fn start() -> Option<Self> {
        let sshd = require_or_skip("sshd", "an SFTP test")?;
        // The client side: OpenDAL drives the system `ssh`.
        require_or_skip("ssh", "an SFTP test")?;
        let keygen = require_or_skip("ssh-keygen", "an SFTP test")?;
        let dir = temp_dir("lb-ssh-");
        let d = dir.path();
        for name in ["host_ed25519", "client_ed25519"] {
            let status = Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "lifeboat-test", "-f"])
                .arg(d.join(name))
                .stdin(Stdio::null())
                .status()
                .expect("running ssh-keygen");
            assert!(status.success(), "ssh-keygen failed for {name}");
        }
        fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys"))
            .expect("writing authorized_keys");
        fs::create_dir_all(d.join("data")).expect("creating the data directory");
        // sshd insists on its privilege-separation directory; only root can
        // create it, and only root needs it.
        let _ = fs::create_dir_all("/run/sshd");
        let user = current_user();
        let log = d.join("sshd.log");
        let (child, port) = start_with_retries("sshd", &log, |port| {
            let config = d.join("sshd_config");
            write_file(&config, &sshd_config(d, port));
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            cmd
        });
        Some(Self {
            child,
            dir,
            port,
            user,
        })
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Private key that the server accepts.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// Directory on the server (the same filesystem as the test) under which
    /// repositories go; [`SshServer::location_url`] names `repo` inside it.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `sftp://` URL of the repository `<data_dir>/repo`, with the client key
    /// and `known-hosts=accept` (every run has a new host key).
    pub fn location_url(&self) -> String {
        self.location_url_for("repo")
    }

    /// Like [`SshServer::location_url`] for `<data_dir>/<name>`.
    pub fn location_url_for(&self, name: &str) -> String {
        format!(
            "sftp://{}@{}:{}{}?key={}&known-hosts=accept",
            self.user,
            self.host(),
            self.port,
            self.data_dir().join(name).display(),
            self.client_key().display()
        )
    }

    pub fn sftp_options(&self, name: &str) -> SftpOptions {
        SftpOptions {
            user: Some(self.user.clone()),
            host: self.host().to_string(),
            port: Some(self.port),
            root: self.data_dir().join(name).display().to_string(),
            key_file: Some(self.client_key()),
            known_hosts: KnownHosts::Accept,
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn sshd_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {d}/host_ed25519\n\
         PidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         MaxStartups 100\n\
         MaxSessions 100\n\
         Subsystem sftp internal-sftp\n"
    )
}

fn current_user() -> String {
    if let Some(user) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        return user;
    }
    let out = Command::new("id")
        .arg("-un")
        .output()
        .expect("running id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A temp dir with a short path: Unix socket paths (ssh's control socket)
/// must stay under ~107 bytes.
fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .or_else(|_| tempfile::Builder::new().prefix(prefix).tempdir())
        .expect("creating a temp dir")
}

fn write_file(path: &Path, contents: &str) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A port of 127.0.0.1 that was free a moment ago (the OS picks it; the
/// listener is closed again before the server binds it, so a race with
/// another process is possible but unlikely in a test run).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

/// Spawns the command built for a fresh port until the server accepts
/// connections, retrying when it exits early; output goes to `log`.
fn start_with_retries(
    name: &str,
    log: &Path,
    mut command: impl FnMut(u16) -> Command,
) -> (Child, u16) {
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let out = fs::File::create(log).expect("creating the server log");
        let err = out.try_clone().expect("cloning the log handle");
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        match wait_ready(&mut child, port) {
            Ok(()) => return (child, port),
            Err(Exited) => continue,
            Err(TimedOut) => {
                stop(&mut child);
                panic!(
                    "{name} did not accept connections on port {port} within {READY_TIMEOUT:?}; log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
    panic!(
        "{name} exited at start {START_ATTEMPTS} times; last log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

enum NotReady {
    Exited,
    TimedOut,
}
use NotReady::{Exited, TimedOut};

fn wait_ready(child: &mut Child, port: u16) -> Result<(), NotReady> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return Err(Exited);
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TimedOut);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the server we started (by its PID, through `Child`) and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSING: &str = "lifeboat-test-no-such-binary";

    #[test]
    fn missing_binary_skips_outside_ci() {
        assert_eq!(require_or_skip_in(MISSING, "this test", false), None);
    }

    #[test]
    #[should_panic(expected = "scripts/setup-test-deps")]
    fn missing_binary_fails_loudly_in_ci() {
        require_or_skip_in(MISSING, "this test", true);
    }

    #[test]
    fn finds_binaries_outside_path_too() {
        assert!(find_binary("sh").is_some());
    }
}
