//! Fixtures of the ops suites: a scratch root holding local repositories
//! (initialised with the test KDF, password "pw" in a file beside them), a
//! source tree, a state directory, and a config file written from a
//! template in which `{root}` is replaced by the scratch root.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use lifeboat_ops::Config;
use lifeboat_storage::{Location, open_location};
use lifeboat_testkit::repo::{PASSWORD, init_on, init_options};

pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-ops-")
            .tempdir()
            .unwrap();
        let s = Setup { dir };
        std::fs::create_dir_all(s.path("src/sub")).unwrap();
        std::fs::write(s.path("src/a.txt"), b"alpha").unwrap();
        std::fs::write(
            s.path("src/sub/b.bin"),
            lifeboat_testkit::data::pseudo_random(200_000, 1),
        )
        .unwrap();
        std::fs::write(s.path("pw"), PASSWORD).unwrap();
        s
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Initialises a repository at `<root>/<name>`.
    pub async fn repo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        let storage = open_location(&Location::Local(p.clone())).await.unwrap();
        init_on(storage, init_options()).await;
        p
    }

    /// Writes the config (with `{root}` replaced) and parses it.
    pub fn config(&self, template: impl AsRef<str>) -> Config {
        let text = template
            .as_ref()
            .replace("{root}", &self.root().display().to_string());
        let path = self.path("lifeboat.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The text of a config for [`Setup::config`], built from the pieces the
/// suites share, so that a test spells out only what it is about:
/// `state-dir = "state"`, repositories on the scratch root opened with the
/// password file `pw`, files sources below `{root}`, plans with an RPO of
/// an hour, and any other lines as they are written.
#[derive(Clone, Debug)]
pub struct Toml(String);

impl Default for Toml {
    fn default() -> Self {
        Self::new()
    }
}

impl Toml {
    /// `state-dir = "state"` and nothing else yet.
    pub fn new() -> Self {
        Toml("state-dir = \"state\"\n".into())
    }

    /// The most common shape: repository `local`, the source `files` over
    /// [`Setup`]'s tree `{root}/src`, and the plan `files` backing it up
    /// to `local`, with `plan_extra` lines.
    pub fn local_files(plan_extra: &str) -> Self {
        Self::new().repo("local", "").files("files", "src").plan(
            "files",
            "files",
            &["local"],
            plan_extra,
        )
    }

    /// `[repository.NAME]` at `<root>/NAME`, opened
    /// with the password file, then `extra` lines (`role = "offsite"`).
    pub fn repo(self, name: &str, extra: &str) -> Self {
        self.table(
            &format!("repository.{name}"),
            &format!("location = \"{name}\"\npassword-file = \"pw\"\n{extra}"),
        )
    }

    /// `[source.NAME]` of type files over `{root}/<dir>`.
    pub fn files(self, name: &str, dir: &str) -> Self {
        self.table(
            &format!("source.{name}"),
            &format!("type = \"files\"\npaths = [\"{{root}}/{dir}\"]\n"),
        )
    }

    /// `[plan.NAME]` backing up `source` to `repositories` with an RPO of
    /// an hour, then `extra` lines (`schedule = …`, `rto = …`).
    pub fn plan(self, name: &str, source: &str, repositories: &[&str], extra: &str) -> Self {
        let repositories: Vec<String> = repositories.iter().map(|r| format!("\"{r}\"")).collect();
        self.table(
            &format!("plan.{name}"),
            &format!(
                "source = \"{source}\"\nrepositories = [{}]\nrpo = \"1h\"\n{extra}",
                repositories.join(", ")
            ),
        )
    }

    /// `[daemon]` in UTC, then `extra` lines (`listen = …`).
    pub fn daemon(self, extra: &str) -> Self {
        self.table("daemon", &format!("time-zone = \"UTC\"\n{extra}"))
    }

    /// `[NAME]` and its `lines`, as written.
    pub fn table(mut self, name: &str, lines: &str) -> Self {
        self.0.push_str(&format!("[{name}]\n{lines}"));
        if !self.0.ends_with('\n') {
            self.0.push('\n');
        }
        self
    }
}

impl AsRef<str> for Toml {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Toml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Two repositories (local disk, off-site copy), a files source and one
/// plan with copy-to, retention and verification.
pub fn two_repos() -> Toml {
    Toml::new()
        .repo("local", "")
        .repo("offsite", "role = \"offsite\"\nmedia = \"sftp\"")
        .files("files", "src")
        .plan("files", "files", &["local"], "copy-to = [\"offsite\"]")
        .table("plan.files.retention", "keep-last = 2")
        .table(
            "plan.files.verify",
            "schedule = \"0 5 * * 0\"\nread-data-subset = \"100%\"",
        )
        .daemon("")
}

/// A daemon a test started on a manual clock, and the ends it drives it by.
pub struct TestDaemon {
    pub clock: std::sync::Arc<lifeboat_ops::daemon::ManualClock>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<lifeboat_ops::daemon::Event>,
    pub reload: tokio::sync::mpsc::UnboundedSender<()>,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub handle: tokio::task::JoinHandle<lifeboat_ops::Result<()>>,
}

impl TestDaemon {
    /// The daemon's next event, failing the test after a minute.
    pub async fn next(&mut self) -> lifeboat_ops::daemon::Event {
        next_event(&mut self.events).await
    }
}

/// The next event on `rx`, failing the test after a minute.
pub async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<lifeboat_ops::daemon::Event>,
) -> lifeboat_ops::daemon::Event {
    tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
        .await
        .expect("the daemon answers within a minute")
        .expect("the daemon is running")
}

impl Setup {
    /// Starts the daemon on `config` (written as `lifeboat.toml` in the
    /// root) with its clock at `start`.
    pub fn start_daemon(
        &self,
        config: Config,
        start: jiff::Timestamp,
        seed: u64,
        http: bool,
        alerts: Option<lifeboat_ops::alert::Alerter>,
    ) -> TestDaemon {
        let clock = lifeboat_ops::daemon::ManualClock::new(start);
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (reload, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(lifeboat_ops::daemon::run_daemon(
            config,
            lifeboat_ops::daemon::DaemonOptions {
                config_path: self.path("lifeboat.toml"),
                clock: clock.clone(),
                shutdown: shutdown.clone(),
                reload: reload_rx,
                events: Some(events_tx),
                seed,
                http,
                alerts,
            },
        ));
        TestDaemon {
            clock,
            events,
            reload,
            shutdown,
            handle,
        }
    }
}

/// When the daemon suites start their manual clocks: 05:07, between two
/// quarter-hour slots, so a plan that never ran is caught up first.
pub const DAEMON_START: &str = "2026-01-01T05:07:00Z";

impl Setup {
    /// Starts the daemon on `config` at [`DAEMON_START`] (seed 1, no HTTP)
    /// with [`quick_alerts`]; returns it and the alerts, to flush.
    pub fn start_alerting_daemon(
        &self,
        config: &Config,
    ) -> (TestDaemon, lifeboat_ops::alert::Alerter) {
        let alerts = quick_alerts(config);
        let daemon = self.start_daemon(
            config.clone(),
            DAEMON_START.parse().unwrap(),
            1,
            false,
            Some(alerts.clone()),
        );
        (daemon, alerts)
    }
}

/// Waits for `n` Finished events (any plan; other events pass) and returns
/// their plans and outcomes, sorted by plan.
pub async fn finished(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<lifeboat_ops::daemon::Event>,
    n: usize,
) -> Vec<(String, Option<lifeboat_ops::report::Outcome>)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let lifeboat_ops::daemon::Event::Finished { plan, outcome, .. } = next_event(rx).await {
            out.push((plan, outcome));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Alerts for `config` that give up fast: two attempts 50 ms apart, so a
/// test sees delivery (or its failure) within seconds.
pub fn quick_alerts(config: &Config) -> lifeboat_ops::alert::Alerter {
    lifeboat_ops::alert::Alerter::with_retry(
        config,
        lifeboat_ops::alert::Retry {
            attempts: 2,
            backoff: std::time::Duration::from_millis(50),
            timeout: std::time::Duration::from_secs(5),
        },
    )
}

/// `n` compressible text files, unchanged for years (stable).
pub fn text_tree(dir: &std::path::Path, n: usize) {
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 5));
        std::fs::create_dir_all(&sub).unwrap();
        let line = format!("line of file {i}: the quick brown fox jumps over the lazy dog\n");
        let p = sub.join(format!("f{i:03}.txt"));
        std::fs::write(&p, line.repeat(60 + i)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

/// Encrypts `percent`% of the files under `dir` and renames them with a
/// new extension, as ransomware does (`scripts/encrypt-like-ransomware`).
pub fn encrypt_like_ransomware(dir: &Path, percent: u32) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/encrypt-like-ransomware");
    let out = std::process::Command::new(&script)
        .arg(dir)
        .arg(percent.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
