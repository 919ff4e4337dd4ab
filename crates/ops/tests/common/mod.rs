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
    pub fn config(&self, template: &str) -> Config {
        let text = template.replace("{root}", &self.root().display().to_string());
        let path = self.path("lifeboat.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Two repositories (local disk, off-site copy), a files source and one
/// plan with copy-to, retention and verification.
pub const TWO_REPOS: &str = r#"
state-dir = "state"

[repository.local]
location = "local"
password-file = "pw"

[repository.offsite]
location = "offsite"
password-file = "pw"
role = "offsite"
media = "sftp"

[source.files]
type = "files"
paths = ["{root}/src"]

[plan.files]
source = "files"
repositories = ["local"]
copy-to = ["offsite"]
rpo = "1h"

[plan.files.retention]
keep-last = 2

[plan.files.verify]
schedule = "0 5 * * 0"
read-data-subset = "100%"

[daemon]
time-zone = "UTC"
"#;

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
