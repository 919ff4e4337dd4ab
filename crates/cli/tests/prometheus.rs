//! `lifeboat daemon` scraped by a real Prometheus (Debian's `prometheus`
//! package, started here on a free port with a generated config): a
//! lifeboat metric is read back through Prometheus's HTTP API, `promtool
//! check metrics` accepts `/metrics`, and SIGTERM stops the daemon
//! cleanly. Skipped with a message outside CI when Prometheus is missing;
//! under CI (`CI` set) a missing Prometheus fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Lifeboat;

/// Kills a child process on drop (test failure included).
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls `f` until it returns `Some`, for at most two minutes (a wait for
/// a server, not a timing assertion).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn prometheus_scrapes_the_daemon_and_reads_a_lifeboat_metric_back() {
    if !have("prometheus") || !have("promtool") {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus and promtool are required under CI (scripts/setup-test-deps installs them)"
        );
        eprintln!("skipping: prometheus/promtool not installed (apt-get install prometheus)");
        return;
    }
    let lb = Lifeboat::new();
    let root = lb.root().display().to_string();
    std::fs::create_dir_all(lb.path("src")).unwrap();
    std::fs::write(lb.path("src/f"), "data").unwrap();
    std::fs::write(lb.path("pw"), "pw\n").unwrap();
    let out = lb
        .bare_cmd()
        .arg("init")
        .arg("-r")
        .arg(lb.path("repo"))
        .arg("--password-file")
        .arg(lb.path("pw"))
        .output()
        .unwrap();
    common::assert_ok(&out, "init");
    let port = free_port();
    let file = lb.path("lifeboat.toml");
    std::fs::write(
        &file,
        format!(
            r#"state-dir = "state"
[repository.main]
location = "repo"
password-file = "pw"
[source.src]
type = "files"
paths = ["{root}/src"]
[plan.src]
source = "src"
repositories = ["main"]
rpo = "1h"
schedule = "0 3 * * *"
[daemon]
listen = "127.0.0.1:{port}"
"#
        ),
    )
    .unwrap();
    let out = lb
        .bare_cmd()
        .arg("--config")
        .arg(&file)
        .args(["run", "src"])
        .output()
        .unwrap();
    common::assert_ok(&out, "run");

    let mut daemon_cmd = lb.std_bare_cmd();
    daemon_cmd
        .arg("--config")
        .arg(&file)
        .args(["daemon", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut daemon = Kill(daemon_cmd.spawn().unwrap());
    let (code, _) = wait_for("the daemon's /healthz", || get(port, "/healthz"));
    assert_eq!(code, 200);
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("lifeboat_plan_rpo_seconds{plan=\"src\"} 3600"),
        "{metrics}"
    );

    // promtool accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it.
    let prom_port = free_port();
    let prom_config = lb.path("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: lifeboat\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!("--storage.tsdb.path={}", lb.path("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let body = wait_for(
        "Prometheus to have scraped lifeboat_plan_rpo_seconds",
        || {
            let (code, body) = get(prom_port, "/api/v1/query?query=lifeboat_plan_rpo_seconds")?;
            (code == 200 && body.contains("\"plan\":\"src\"")).then_some(body)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = &v["data"]["result"][0];
    assert_eq!(result["metric"]["job"], "lifeboat");
    assert_eq!(result["value"][1], "3600");

    // SIGTERM: a clean stop, exit 0.
    let killed = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = daemon.0.wait().unwrap();
    let mut log = String::new();
    daemon
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        log.lines().all(|l| l.starts_with('{')),
        "not JSON lines: {log}"
    );
}
