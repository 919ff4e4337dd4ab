//! Incident communication: `lifeboat incident open|update|resolve` sends
//! templated notices to each audience's alert channels (real local
//! receivers from testkit's sinks: webhook, Slack-compatible, SMTP), keeps
//! the incident log, and writes a self-contained status page that a real
//! headless Chromium loads without console errors, showing the open
//! incident and a breached RPO. A page whose script throws is caught by
//! the same check (the negative case), so the check can fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lifeboat_testkit::sinks::{HttpSink, SmtpSink};

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("pw"), "pw\n").unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let config = dir.path().join("lifeboat.toml");
        std::fs::write(
            &config,
            format!(
                r#"state-dir = "{d}/state"

[repository.local]
location = "{d}/local"
password-file = "{d}/pw"

[source.files]
type = "files"
paths = ["{d}/src"]

[plan.files]
source = "files"
repositories = ["local"]
rpo = "1h"
rto = "2h"
{extra}"#
            ),
        )
        .unwrap();
        Env { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env_remove("LIFEBOAT_REPO")
            .env("HOME", self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn notices_reach_each_audience_through_its_channels_with_the_templates_filled() {
    let http = HttpSink::start();
    let smtp = SmtpSink::start();
    let env = Env::new(&format!(
        r#"
[alert.oncall]
webhook = "{url}/hook"
email.to = ["oncall@example.org"]
email.from = "lifeboat@example.org"
email.smtp = "{smtp}"

[alert.public]
slack = "{url}/slack"

[communication]
update-every = "15m"

[communication.audience.team]
channels = ["oncall"]

[communication.audience.customers]
channels = ["public"]
open = "We are having trouble: {{what}}. Next update by {{next-update}}."
update = "Update: {{step}}. Expected back: {{eta}}."
resolve = "Resolved: {{step}}"
"#,
        url = http.url(),
        smtp = smtp.url()
    ));
    env.ok(&[
        "incident",
        "open",
        "--message",
        "the database host lost its disk",
    ]);
    let got = http.wait_for(2);
    let hook = got.iter().find(|r| r.path == "/hook").expect("webhook");
    let v = json(&hook.body);
    assert_eq!(v["kind"], "incident");
    assert_eq!(v["status"], "open");
    assert_eq!(v["audience"], "team");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("the database host lost its disk"), "{text}");
    // No backup ever ran: the plan's RPO is breached, which is the impact.
    assert!(text.contains("Impact: plan files (breached)"), "{text}");
    assert!(text.contains("Next update: "), "{text}");
    assert!(
        text.contains("Expected back: unknown: no restore drill"),
        "{text}"
    );
    let slack = got.iter().find(|r| r.path == "/slack").expect("slack");
    let s = json(&slack.body)["text"].as_str().unwrap().to_string();
    assert!(
        s.starts_with("We are having trouble: the database host lost its disk. Next update by 20"),
        "{s}"
    );
    assert!(!s.contains('{'), "{s}");
    let mail = smtp.wait_for(1);
    assert_eq!(mail[0].to, vec!["oncall@example.org".to_string()]);
    assert!(mail[0].data.contains("the database host lost its disk"));

    // One incident at a time.
    let again = env.run(&["incident", "open", "--message", "another"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("incident update"));

    env.ok(&[
        "incident",
        "update",
        "--message",
        "restoring from the off-site copy",
    ]);
    let got = http.wait_for(4);
    let slack = &got
        .iter()
        .filter(|r| r.path == "/slack")
        .nth(1)
        .expect("2nd slack");
    let s = json(&slack.body)["text"].as_str().unwrap().to_string();
    assert!(
        s.starts_with("Update: restoring from the off-site copy. Expected back: "),
        "{s}"
    );

    let out = env.ok(&["--json", "incident", "resolve"]);
    let v = json(&out);
    assert!(v["incident"]["resolved"].is_string(), "{v}");
    assert_eq!(v["incident"]["entries"].as_array().unwrap().len(), 3);
    let got = http.wait_for(6);
    assert!(
        got.iter()
            .any(|r| r.path == "/slack" && r.body.contains("Resolved: Service is restored."))
    );
    // The log is kept in the state directory.
    let log = std::fs::read_to_string(env.dir.path().join("state/incidents.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);
    // Nothing open: update is refused with what to do.
    let no = env.run(&["incident", "update", "--message", "x"]);
    assert_eq!(no.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no.stderr).contains("incident open"));
}

#[test]
fn without_communication_notices_go_to_every_alert() {
    let http = HttpSink::start();
    let env = Env::new(&format!(
        "\n[alert.a]\nwebhook = \"{url}/a\"\n\n[alert.b]\nslack = \"{url}/b\"\n",
        url = http.url()
    ));
    env.ok(&["incident", "open", "--message", "disk full"]);
    let got = http.wait_for(2);
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/b"]);
    assert!(got.iter().all(|r| r.body.contains("disk full")));
}

#[test]
fn an_unknown_placeholder_in_a_template_is_a_config_error() {
    let env = Env::new("\n[communication.audience.team]\nopen = \"down: {imapct}\"\n");
    let out = env.run(&["incident", "open", "--message", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("communication.audience.team.open") && err.contains("{imapct}"),
        "{err}"
    );
}

/// Loads `page` in headless Chromium: the DOM after its scripts ran, and
/// every console message (an uncaught exception is one).
fn chromium(page: &Path) -> Option<(String, Vec<String>)> {
    let which = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .ok()?;
    if !which.status.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (scripts/setup-test-deps)"
        );
        return None;
    }
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Some((String::from_utf8(out.stdout).unwrap(), console))
}

#[test]
fn the_status_page_loads_in_chromium_without_errors_and_shows_the_incident_and_the_breached_rpo() {
    let env = Env::new("");
    let pages = env.dir.path().join("www");
    let pages_s = pages.display().to_string();
    env.ok(&[
        "incident",
        "open",
        "--message",
        "the file server was encrypted",
        "--status-dir",
        &pages_s,
    ]);
    let page = pages.join("status.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "external reference {external}");
    }
    let Some((dom, console)) = chromium(&page) else {
        eprintln!("skipped: chromium is not installed (scripts/setup-test-deps)");
        return;
    };
    assert!(console.is_empty(), "console messages: {console:?}");
    // The script ran to its end.
    assert!(dom.contains("data-ready=\"yes\""), "{dom}");
    assert!(dom.contains("Open incident"), "{dom}");
    assert!(dom.contains("the file server was encrypted"));
    assert!(dom.contains("class=\"breached\">RPO breached"), "{dom}");

    // The negative case: the same page with a script that throws.
    let broken = env.dir.path().join("broken.html");
    std::fs::write(
        &broken,
        html.replace("<script>", "<script>null.nothing();</script><script>"),
    )
    .unwrap();
    let (_, console) = chromium(&broken).unwrap();
    assert!(
        console.iter().any(|l| l.contains("Uncaught TypeError")),
        "a throwing script went unnoticed: {console:?}"
    );

    // Resolved: the page says so.
    env.ok(&["incident", "resolve", "--status-dir", &pages_s]);
    let (dom, console) = chromium(&page).unwrap();
    assert!(console.is_empty(), "{console:?}");
    assert!(dom.contains("No open incident"), "{dom}");
}

#[test]
fn an_audience_naming_an_unknown_alert_is_a_config_error() {
    let env = Env::new("\n[communication.audience.customers]\nchannels = [\"statuspage\"]\n");
    let out = env.run(&["incident", "open", "--message", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("communication.audience.customers.channels")
            && err.contains("no alert named \"statuspage\""),
        "{err}"
    );
    // Nothing was logged.
    assert!(!env.dir.path().join("state/incidents.jsonl").exists());
}
