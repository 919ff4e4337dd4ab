//! The daemon serves the status page at `/status`: each plan's health and
//! the open incident, current at every request (the incident log is read
//! each time).

mod common;

use common::{DAEMON_START, Setup, TestDaemon, Toml, finished, next_event};
use lifeboat_ops::daemon::{Event, ManualClock};
use lifeboat_ops::incident::{NoticeKind, NoticeOptions, record};

/// Two plans on one repository, run one at a time, and the HTTP endpoints.
fn config() -> Toml {
    Toml::local_files("")
        .plan("other", "files", &["local"], "")
        .daemon("listen = \"127.0.0.1:0\"\nmax-concurrent = 1")
}

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
    let config = s.config(config());
    let TestDaemon {
        clock,
        mut events,
        shutdown,
        handle: daemon,
        ..
    } = s.start_daemon(config.clone(), DAEMON_START.parse().unwrap(), 1, true, None);
    let Event::Listening(addr) = next_event(&mut events).await else {
        panic!("first event is Listening")
    };
    let base = format!("http://{addr}");
    // Both plans never ran: each is caught up once; wait for both.
    finished(&mut events, 2).await;
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

/// Waits for the next `StatusPageWritten` event (other events pass) and
/// returns the page it wrote.
async fn next_page_write(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    dir: &std::path::Path,
) -> String {
    loop {
        match next_event(events).await {
            Event::StatusPageWritten(path) => {
                assert_eq!(path, dir.join("status.html"));
                return std::fs::read_to_string(path).unwrap();
            }
            Event::StatusPageFailed(why) => panic!("status page not written: {why}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rewrites_status_html_in_the_status_dir_when_a_plan_or_incident_changes() {
    let s = Setup::new();
    s.repo("local").await;
    let config = s.config(config().table("communication", "status-dir = \"www\""));
    let www = s.path("www");
    let TestDaemon {
        clock,
        mut events,
        shutdown,
        handle: daemon,
        ..
    } = s.start_daemon(
        config.clone(),
        DAEMON_START.parse().unwrap(),
        1,
        false,
        None,
    );
    // Written at start: neither plan has a backup yet.
    let first = next_page_write(&mut events, &www).await;
    assert!(first.contains("No open incident"), "{first}");
    assert!(
        first.contains("<tr data-plan=\"files\"><td>files</td>"),
        "{first}"
    );
    assert!(!first.contains("class=\"ok\">ok"), "{first}");
    // Both plans are caught up; after each run the page is written again
    // and, once both ran, shows both fresh.
    let mut page = first;
    while !(page.contains("<tr data-plan=\"files\"><td>files</td><td class=\"ok\">")
        && page.contains("<tr data-plan=\"other\"><td>other</td><td class=\"ok\">"))
    {
        page = next_page_write(&mut events, &www).await;
    }

    // An incident opened by another process (`lifeboat incident open`)
    // shows at the daemon's next wake (at most a minute later).
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
    clock.advance(jiff::SignedDuration::from_secs(
        lifeboat_ops::daemon::RPO_CHECK_SECS,
    ));
    let open = next_page_write(&mut events, &www).await;
    assert!(open.contains("Open incident"), "{open}");
    assert!(open.contains("the &lt;disk&gt; failed"), "{open}");
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}
