//! `lifeboat daemon` scraped by a real Prometheus (Debian's `prometheus`
//! package, started here on a free port with a generated config): a
//! lifeboat metric is read back through Prometheus's HTTP API, `promtool
//! check metrics` accepts `/metrics`, and SIGTERM stops the daemon
//! cleanly. Skipped with a message outside CI when Prometheus is missing;
//! under CI (`CI` set) a missing Prometheus fails.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, Lifeboat, child_stderr, free_port, http_get, sigterm, src_plan_config};
use lifeboat_testkit::wait::wait_for;

/// How long to wait for a server (the daemon, Prometheus) to answer: a
/// wait, not a timing assertion.
const WAIT: Duration = Duration::from_secs(120);

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
    std::fs::create_dir_all(lb.path("src")).unwrap();
    std::fs::write(lb.path("src/f"), "data").unwrap();
    lb.init_with_password_file("repo");
    let port = free_port();
    let file = lb.write_config(&src_plan_config(
        "rpo = \"1h\"\nschedule = \"0 3 * * *\"",
        &format!("[daemon]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    lb.ok_config(&file, ["run", "src"]);

    let mut daemon = lb.spawn_daemon(&file);
    let (code, _) = wait_for(WAIT, "the daemon's /healthz", || http_get(port, "/healthz"));
    assert_eq!(code, 200);
    let (code, metrics) = http_get(port, "/metrics").unwrap();
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
    let _prometheus = KillOnDrop(
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
        WAIT,
        "Prometheus to have scraped lifeboat_plan_rpo_seconds",
        || {
            let (code, body) =
                http_get(prom_port, "/api/v1/query?query=lifeboat_plan_rpo_seconds")?;
            (code == 200 && body.contains("\"plan\":\"src\"")).then_some(body)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = &v["data"]["result"][0];
    assert_eq!(result["metric"]["job"], "lifeboat");
    assert_eq!(result["value"][1], "3600");

    // SIGTERM: a clean stop, exit 0.
    sigterm(&daemon.0);
    let status = daemon.0.wait().unwrap();
    let log = child_stderr(&mut daemon.0);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        log.lines().all(|l| l.starts_with('{')),
        "not JSON lines: {log}"
    );
}
