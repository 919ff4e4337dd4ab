//! The daemon serves the status page at `/status`: each plan's health and
//! the open incident, current at every request (the incident log is read
//! each time).

mod common;

use common::{Setup, TestDaemon, next_event};
use lifeboat_ops::daemon::{Event, ManualClock};
use lifeboat_ops::incident::{NoticeKind, NoticeOptions, record};

const CONFIG: &str = r#"
state-dir = "state"
[repository.local]
location = "local"
password-file = "pw"
[source.files]
type = "files"
paths = ["{root}/src"]
[plan.files]
source = "files"
repositories = ["local"]
rpo = "1h"
[plan.other]
source = "files"
repositories = ["local"]
rpo = "1h"
[daemon]
time-zone = "UTC"
listen = "127.0.0.1:0"
max-concurrent = 1
"#;

fn clock_now(c: &ManualClock) -> jiff::Timestamp {
    lifeboat_ops::daemon::Clock::now(c)
}

async fn page(base: &str) -> String {
    let r = reqwest::get(format!("{base}/status")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_the_status_page_with_the_open_incident() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(CONFIG);
    let TestDaemon {
        clock,
        mut events,
        shutdown,
        handle: daemon,
        ..
    } = s.start_daemon(
        config.clone(),
        "2026-01-01T05:07:00Z".parse().unwrap(),
        1,
        true,
        None,
    );
    let Event::Listening(addr) = next_event(&mut events).await else {
        panic!("first event is Listening")
    };
    let base = format!("http://{addr}");
    // Both plans never ran: each is caught up once; wait for both.
    let mut finished = 0;
    while finished < 2 {
        if let Event::Finished { .. } = next_event(&mut events).await {
            finished += 1;
        }
    }
    let calm = page(&base).await;
    assert!(calm.contains("No open incident"), "{calm}");
    assert!(calm.contains("<tr data-plan=\"files\">"), "{calm}");

    record(
        &config,
        &NoticeOptions {
            kind: NoticeKind::Open,
            message: "the <disk> failed".into(),
            impact: None,
            now: "2026-01-01T05:08:00Z".parse().unwrap(),
        },
    )
    .unwrap();
    let open = page(&base).await;
    assert!(open.contains("Open incident"), "{open}");
    // Escaped, never markup.
    assert!(open.contains("the &lt;disk&gt; failed"), "{open}");
    // Each plan's row shows the freshness `status` computes.
    let st = lifeboat_ops::status::status(&config, clock_now(&clock)).unwrap();
    for p in &st.plans {
        assert!(
            open.contains(&format!(
                "<tr data-plan=\"{}\"><td>{}</td><td class=\"{}\">",
                p.plan,
                p.plan,
                p.freshness.as_str()
            )),
            "{open}"
        );
    }
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}
