//! Alerts: events (a run failed, an RPO was breached, a verification found
//! errors, and the recovery of each) sent through the channels of the
//! config's `[alert.NAME]` tables: a generic JSON webhook, a
//! Slack-compatible webhook, email over SMTP (`lettre`), and
//! Healthchecks.io-style ping URLs (start / success / fail).
//!
//! # Sending an event (for any part of lifeboat)
//!
//! ```ignore
//! use lifeboat_ops::alert::{Alerter, Event, conditions};
//! // Inside a tokio runtime; one Alerter per process is enough (it is a
//! // cheap clone).
//! let alerts = Alerter::new(&config);
//! alerts.notify(Event::problem(conditions::RUN_FAILED, "home", "local", "backup local: unreachable"), now);
//! alerts.notify(Event::recovered(conditions::RUN_FAILED, "home", "local", "backup local: ok"), now);
//! // A short-lived command waits (bounded) for delivery before it exits:
//! alerts.flush(std::time::Duration::from_secs(40)).await;
//! ```
//!
//! A condition is a short kebab-case name ([`conditions`] has the ones
//! this crate raises; restore drills, incident notices and ransomware
//! detection add their own, e.g. `"drill-failed"`). `plan` and
//! `repository` may be empty when the event is not about one.
//!
//! Rules:
//! - **deduplicated**: one message per change of state of
//!   (alert, condition, plan, repository): a problem is sent when it
//!   starts, a recovery only for a problem that was sent; a problem that
//!   lasts is sent again as a reminder every `remind` of the alert (`0s`:
//!   never). The state is the file `alerts.json` in the state directory
//!   (taken under a lock, so `lifeboat run` and the daemon share it), so a
//!   restart neither repeats nor forgets an alert;
//! - **off the backup path**: [`Alerter::notify`] and [`Alerter::ping`]
//!   return at once; messages are delivered by tasks with a bounded
//!   number of attempts and a timeout per attempt ([`Retry`]). A dead
//!   endpoint never blocks or fails a backup; giving up is logged
//!   (warning) and counted ([`Alerter::stats`]);
//! - **in order per destination**: one task per alert channel (an alert's
//!   webhook, Slack hook, email, ping URL) sends its messages in the order
//!   they were queued, each after the one before was delivered or given
//!   up, so a receiver never sees a recovery before the problem it ends.
//!
//! Payloads are documented in docs/operations.md ("Alerts").

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration as StdDuration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::{AlertConfig, Config, PlanConfig};
use crate::report::{Outcome, RunReport, StepKind};
use crate::state::PlanState;

/// The conditions this crate raises.
pub mod conditions {
    /// A backup or copy to a repository failed.
    pub const RUN_FAILED: &str = "run-failed";
    /// A repository's newest backup of the plan is older than the RPO.
    pub const RPO_BREACH: &str = "rpo-breach";
    /// A verification of a repository found errors or could not run.
    pub const VERIFY_FAILED: &str = "verify-failed";
    /// A restore drill's checks failed, or the drill could not run.
    pub const DRILL_FAILED: &str = "drill-failed";
    /// A restore drill passed its checks but took longer than the RTO.
    pub const DRILL_RTO_MISSED: &str = "drill-rto-missed";
    /// The plan's scheduled drill (`drill.every`) has not happened: its
    /// newest drill is older than `every` plus [`super::DRILL_OVERDUE_GRACE_SECS`].
    pub const DRILL_OVERDUE: &str = "drill-overdue";
    /// A backup of the plan looks like its source was just encrypted.
    pub const RANSOMWARE_SUSPECTED: &str = "ransomware-suspected";
    /// The daemon could not extend the object-lock retention of a
    /// repository (plan empty; the repository names it).
    pub const LOCK_EXTEND_FAILED: &str = "lock-extend-failed";
    /// The daemon could not run ransomware detection on a repository
    /// (`detect-every`; plan empty, the repository names it).
    pub const DETECT_FAILED: &str = "detect-failed";
}

/// Whether an event starts (or continues) a problem or ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Problem,
    Recovered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Warning,
    Critical,
}

/// Something to tell the operator about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// e.g. [`conditions::RUN_FAILED`].
    pub condition: String,
    pub state: State,
    pub severity: Severity,
    pub plan: String,
    pub repository: String,
    /// One line: what happened and why.
    pub reason: String,
    /// Extra fields passed through to the payload (e.g. a drill id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl Event {
    /// A problem (critical).
    pub fn problem(
        condition: &str,
        plan: &str,
        repository: &str,
        reason: impl Into<String>,
    ) -> Event {
        Event {
            condition: condition.to_string(),
            state: State::Problem,
            severity: Severity::Critical,
            plan: plan.to_string(),
            repository: repository.to_string(),
            reason: reason.into(),
            details: BTreeMap::new(),
        }
    }

    /// The end of a problem (sent only if the problem was).
    pub fn recovered(
        condition: &str,
        plan: &str,
        repository: &str,
        reason: impl Into<String>,
    ) -> Event {
        Event {
            state: State::Recovered,
            ..Event::problem(condition, plan, repository, reason)
        }
    }

    pub fn with_severity(mut self, s: Severity) -> Event {
        self.severity = s;
        self
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<String>) -> Event {
        self.details.insert(key.to_string(), value.into());
        self
    }

    fn key(&self, alert: &str) -> String {
        format!(
            "{alert}/{}/{}/{}",
            self.condition, self.plan, self.repository
        )
    }
}

/// What a message says about the state change: a new problem, the same
/// problem again (reminder), or its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Problem,
    Reminder,
    Recovered,
}

/// The generic webhook's JSON body (also the content of the email).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Always `"lifeboat"`.
    pub source: String,
    /// Version of this shape (1).
    pub version: u32,
    /// The `[alert.NAME]` that sent it.
    pub alert: String,
    pub status: Status,
    pub condition: String,
    pub severity: Severity,
    pub plan: String,
    pub repository: String,
    pub reason: String,
    pub host: String,
    /// When this message was made.
    pub time: Timestamp,
    /// When the problem started.
    pub since: Timestamp,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl Payload {
    /// One line: the Slack text and the email subject.
    pub fn summary(&self) -> String {
        let what = match self.status {
            Status::Problem => "PROBLEM",
            Status::Reminder => "STILL FAILING",
            Status::Recovered => "RECOVERED",
        };
        let mut s = format!("[lifeboat {}] {what} {}", self.host, self.condition);
        if !self.plan.is_empty() {
            s.push_str(&format!(" plan {}", self.plan));
        }
        if !self.repository.is_empty() {
            s.push_str(&format!(" repository {}", self.repository));
        }
        s.push_str(&format!(": {}", self.reason));
        s
    }
}

/// A Healthchecks.io-style ping, sent to `ping` + suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    /// `/start`: a run began.
    Start,
    /// The base URL: a run succeeded.
    Success,
    /// `/fail`, the reason as body.
    Fail(String),
    /// `/log`: neither success nor failure (a run met a lock, or was
    /// stopped), the message as body.
    Log(String),
}

impl Ping {
    fn url(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        match self {
            Ping::Start => format!("{base}/start"),
            Ping::Success => base.to_string(),
            Ping::Fail(_) => format!("{base}/fail"),
            Ping::Log(_) => format!("{base}/log"),
        }
    }

    fn body(&self) -> String {
        match self {
            Ping::Start | Ping::Success => String::new(),
            Ping::Fail(m) | Ping::Log(m) => m.clone(),
        }
    }
}

/// How hard a message is tried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each later one.
    pub backoff: StdDuration,
    /// Per attempt (connect and answer).
    pub timeout: StdDuration,
}

impl Default for Retry {
    /// 3 attempts, 1 s then 2 s apart, 10 s each: at most ~33 s per message.
    fn default() -> Self {
        Retry {
            attempts: 3,
            backoff: StdDuration::from_secs(1),
            timeout: StdDuration::from_secs(10),
        }
    }
}

/// Counts of messages since the [`Alerter`] was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub delivered: u64,
    pub gave_up: u64,
}

/// One entry of the dedup file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Firing {
    since: Timestamp,
    last_sent: Timestamp,
    reason: String,
}

struct Inner {
    alerts: RwLock<Arc<BTreeMap<String, AlertConfig>>>,
    state_dir: PathBuf,
    host: String,
    runtime: tokio::runtime::Handle,
    delivery: Arc<Delivery>,
    /// The queue of each destination (alert name, channel) whose task is
    /// running (see [`send_in_order`]). Dropped with the alerter: each
    /// task then sends what is still queued and ends.
    queues: Mutex<HashMap<(String, &'static str), mpsc::UnboundedSender<Message>>>,
}

/// What the destinations' tasks share with the alerter.
struct Delivery {
    retry: Retry,
    client: reqwest::Client,
    pending: watch::Sender<usize>,
    delivered: AtomicU64,
    gave_up: AtomicU64,
}

/// The sender of alerts. Cheap to clone; needs a tokio runtime.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("alerts", &self.alert_names())
            .finish()
    }
}

impl Alerter {
    /// The config's alerts, with the default [`Retry`]. Must be called
    /// inside a tokio runtime.
    pub fn new(config: &Config) -> Alerter {
        Alerter::with_retry(config, Retry::default())
    }

    pub fn with_retry(config: &Config, retry: Retry) -> Alerter {
        let client = reqwest::Client::builder()
            .timeout(retry.timeout)
            .connect_timeout(retry.timeout)
            .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds");
        Alerter {
            inner: Arc::new(Inner {
                alerts: RwLock::new(Arc::new(config.alerts.clone())),
                state_dir: config.state_dir.clone(),
                host: crate::run::host(),
                runtime: tokio::runtime::Handle::current(),
                delivery: Arc::new(Delivery {
                    retry,
                    client,
                    pending: watch::Sender::new(0),
                    delivered: AtomicU64::new(0),
                    gave_up: AtomicU64::new(0),
                }),
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes the alerts of a reloaded config (the dedup state stays).
    pub fn reload(&self, config: &Config) {
        *self.inner.alerts.write().expect("not poisoned") = Arc::new(config.alerts.clone());
    }

    fn alert_names(&self) -> Vec<String> {
        self.inner
            .alerts
            .read()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }

    fn alerts_for(&self, plan: &str) -> Vec<(String, AlertConfig)> {
        self.inner
            .alerts
            .read()
            .expect("not poisoned")
            .iter()
            .filter(|(_, a)| {
                plan.is_empty() || a.plans.is_empty() || a.plans.iter().any(|p| p == plan)
            })
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            delivered: self.inner.delivery.delivered.load(Ordering::Relaxed),
            gave_up: self.inner.delivery.gave_up.load(Ordering::Relaxed),
        }
    }

    /// Sends `event` where it is due (see the module doc); returns at once.
    pub fn notify(&self, event: Event, now: Timestamp) {
        self.notify_all(vec![event], now);
    }

    /// [`Alerter::notify`] for several events, under one lock of the dedup
    /// file.
    pub fn notify_all(&self, events: Vec<Event>, now: Timestamp) {
        if events.is_empty() || self.inner.alerts.read().expect("not poisoned").is_empty() {
            return;
        }
        let payloads = match self.dedup(&events, now) {
            Ok(p) => p,
            Err(e) => {
                // Better a repeated alert than a lost one.
                tracing::warn!(
                    "alert state {}: {e}; sending without deduplication",
                    self.dedup_path().display()
                );
                events
                    .iter()
                    .flat_map(|ev| {
                        self.alerts_for(&ev.plan).into_iter().map(move |(name, _)| {
                            self.payload(&name, ev, status_of(ev.state), now, now)
                        })
                    })
                    .collect()
            }
        };
        let alerts = self.inner.alerts.read().expect("not poisoned").clone();
        for p in payloads {
            let Some(a) = alerts.get(&p.alert) else {
                continue;
            };
            if let Some(url) = &a.webhook {
                let body = serde_json::to_value(&p).expect("payloads serialize");
                self.deliver(&p.alert, "webhook", Message::Json(url.clone(), body));
            }
            if let Some(url) = &a.slack {
                let body = serde_json::json!({ "text": p.summary() });
                self.deliver(&p.alert, "slack", Message::Json(url.clone(), body));
            }
            if let Some(email) = &a.email {
                self.deliver(
                    &p.alert,
                    "email",
                    Message::Email {
                        smtp: email.smtp.clone(),
                        from: email.from.clone(),
                        to: email.to.clone(),
                        subject: p.summary(),
                        body: email_body(&p),
                    },
                );
            }
        }
    }

    /// Sends a message that is not an alert (an incident notice) through
    /// the webhook (`json` as the body), Slack (`text`) and email
    /// (`subject`, `text`) channels of the named alerts (all when empty),
    /// as is: no deduplication, no pings. Returns at once; the same
    /// retries as alerts; [`Alerter::flush`] waits for delivery.
    pub fn announce(&self, alerts: &[String], subject: &str, text: &str, json: &serde_json::Value) {
        let all = self.inner.alerts.read().expect("not poisoned").clone();
        for (name, a) in all.iter() {
            if !alerts.is_empty() && !alerts.contains(name) {
                continue;
            }
            if let Some(url) = &a.webhook {
                self.deliver(name, "webhook", Message::Json(url.clone(), json.clone()));
            }
            if let Some(url) = &a.slack {
                let body = serde_json::json!({ "text": text });
                self.deliver(name, "slack", Message::Json(url.clone(), body));
            }
            if let Some(email) = &a.email {
                self.deliver(
                    name,
                    "email",
                    Message::Email {
                        smtp: email.smtp.clone(),
                        from: email.from.clone(),
                        to: email.to.clone(),
                        subject: subject.to_string(),
                        body: text.to_string(),
                    },
                );
            }
        }
    }

    /// Sends a ping to every alert with a `ping` URL that covers `plan`.
    /// Pings are not deduplicated (the receiver tracks them).
    pub fn ping(&self, plan: &str, ping: Ping) {
        for (name, a) in self.alerts_for(plan) {
            if let Some(base) = &a.ping {
                self.deliver(&name, "ping", Message::Ping(ping.url(base), ping.body()));
            }
        }
    }

    /// Waits until every message queued so far is delivered or given up,
    /// at most `timeout`; returns whether all were.
    pub async fn flush(&self, timeout: StdDuration) -> bool {
        let mut rx = self.inner.delivery.pending.subscribe();
        let done = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        let ok = matches!(done, Ok(Ok(_)));
        if !ok {
            tracing::warn!(
                "{} alert messages still undelivered after {timeout:?}; not waiting longer",
                *self.inner.delivery.pending.borrow()
            );
        }
        ok
    }

    fn dedup_path(&self) -> PathBuf {
        self.inner.state_dir.join("alerts.json")
    }

    fn payload(
        &self,
        alert: &str,
        ev: &Event,
        status: Status,
        since: Timestamp,
        now: Timestamp,
    ) -> Payload {
        Payload {
            source: "lifeboat".into(),
            version: 1,
            alert: alert.to_string(),
            status,
            condition: ev.condition.clone(),
            severity: ev.severity,
            plan: ev.plan.clone(),
            repository: ev.repository.clone(),
            reason: ev.reason.clone(),
            host: self.inner.host.clone(),
            time: now,
            since,
            details: ev.details.clone(),
        }
    }

    /// Decides, under the dedup file's lock, which messages are due, and
    /// records them.
    fn dedup(&self, events: &[Event], now: Timestamp) -> crate::Result<Vec<Payload>> {
        let dir = crate::state::StateDir::new(&self.inner.state_dir);
        let _lock = dir.lock_file("alerts")?;
        let path = self.dedup_path();
        let mut book: BTreeMap<String, Firing> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(crate::Error::State { path, source }),
        };
        let before = book.clone();
        let mut out = Vec::new();
        for ev in events {
            for (name, a) in self.alerts_for(&ev.plan) {
                let key = ev.key(&name);
                match (ev.state, book.get_mut(&key)) {
                    (State::Problem, None) => {
                        book.insert(
                            key,
                            Firing {
                                since: now,
                                last_sent: now,
                                reason: ev.reason.clone(),
                            },
                        );
                        out.push(self.payload(&name, ev, Status::Problem, now, now));
                    }
                    (State::Problem, Some(f)) => {
                        let remind = a.remind.seconds() as i64;
                        f.reason = ev.reason.clone();
                        if remind > 0 && now.as_second() - f.last_sent.as_second() >= remind {
                            f.last_sent = now;
                            let since = f.since;
                            out.push(self.payload(&name, ev, Status::Reminder, since, now));
                        }
                    }
                    (State::Recovered, Some(f)) => {
                        let since = f.since;
                        book.remove(&key);
                        out.push(self.payload(&name, ev, Status::Recovered, since, now));
                    }
                    (State::Recovered, None) => {}
                }
            }
        }
        if book != before {
            crate::state::write_atomic(
                &path,
                &serde_json::to_vec_pretty(&book).expect("the alert state serializes"),
            )?;
        }
        Ok(out)
    }

    /// Queues `msg` for the destination (`alert`, `channel`): its task
    /// (started on first use) sends the destination's messages one at a
    /// time, in the order queued.
    fn deliver(&self, alert: &str, channel: &'static str, msg: Message) {
        self.inner.delivery.pending.send_modify(|n| *n += 1);
        let mut queues = self.inner.queues.lock().expect("not poisoned");
        let tx = queues
            .entry((alert.to_string(), channel))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let delivery = self.inner.delivery.clone();
                let task = send_in_order(delivery, alert.to_string(), channel, rx);
                self.inner.runtime.spawn(task);
                tx
            });
        if let Err(mpsc::error::SendError(_)) = tx.send(msg) {
            // Its task is gone (the runtime shutting down): not sent.
            queues.remove(&(alert.to_string(), channel));
            self.inner.delivery.gave_up.fetch_add(1, Ordering::Relaxed);
            self.inner.delivery.pending.send_modify(|n| *n -= 1);
        }
    }
}

/// Sends the messages of one destination as they are queued, each after
/// the one before was delivered or given up. Ends once the alerter is
/// dropped (the queue's sender goes with it) and the queue is empty.
async fn send_in_order(
    delivery: Arc<Delivery>,
    alert: String,
    channel: &'static str,
    mut queue: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(msg) = queue.recv().await {
        delivery.send_with_retries(&alert, channel, &msg).await;
        delivery.pending.send_modify(|n| *n -= 1);
    }
}

impl Delivery {
    /// Sends `msg` with [`Retry`]'s attempts and timeout; counts and logs
    /// the outcome.
    async fn send_with_retries(&self, alert: &str, channel: &'static str, msg: &Message) {
        let retry = self.retry;
        let mut wait = retry.backoff;
        let mut last = String::new();
        for attempt in 1..=retry.attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            match tokio::time::timeout(retry.timeout, msg.send(&self.client)).await {
                Ok(Ok(())) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {:?}", retry.timeout),
            }
        }
        self.gave_up.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            alert = %alert,
            channel,
            "alert not delivered, gave up after {} attempts: {last}",
            retry.attempts.max(1)
        );
    }
}

fn status_of(s: State) -> Status {
    match s {
        State::Problem => Status::Problem,
        State::Recovered => Status::Recovered,
    }
}

fn email_body(p: &Payload) -> String {
    let mut b = format!("{}\n\n", p.summary());
    let rows = [
        ("status", format!("{:?}", p.status).to_lowercase()),
        ("condition", p.condition.clone()),
        ("severity", format!("{:?}", p.severity).to_lowercase()),
        ("plan", p.plan.clone()),
        ("repository", p.repository.clone()),
        ("reason", p.reason.clone()),
        ("host", p.host.clone()),
        ("since", p.since.to_string()),
        ("time", p.time.to_string()),
    ];
    for (k, v) in rows {
        b.push_str(&format!("{k}: {v}\n"));
    }
    for (k, v) in &p.details {
        b.push_str(&format!("{k}: {v}\n"));
    }
    b.push_str(&format!(
        "\nJSON: {}\n",
        serde_json::to_string(p).expect("payloads serialize")
    ));
    b
}

enum Message {
    Json(String, serde_json::Value),
    Ping(String, String),
    Email {
        smtp: String,
        from: String,
        to: Vec<String>,
        subject: String,
        body: String,
    },
}

impl Message {
    async fn send(&self, client: &reqwest::Client) -> Result<(), String> {
        let response = match self {
            Message::Json(url, body) => client.post(url).json(body).send().await,
            Message::Ping(url, body) => client.post(url).body(body.clone()).send().await,
            Message::Email {
                smtp,
                from,
                to,
                subject,
                body,
            } => return send_email(smtp, from, to, subject, body).await,
        };
        match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(error_chain(&e)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

async fn send_email(
    smtp: &str,
    from: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let mut m = Message::builder()
        .from(from.parse().map_err(|e| format!("from {from:?}: {e}"))?)
        .subject(subject);
    for t in to {
        m = m.to(t.parse().map_err(|e| format!("to {t:?}: {e}"))?);
    }
    let m = m
        .body(body.to_string())
        .map_err(|e| format!("building the message: {e}"))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp)
        .map_err(|e| format!("{smtp}: {}", error_chain(&e)))?
        .build();
    transport
        .send(m)
        .await
        .map(|_| ())
        .map_err(|e| error_chain(&e))
}

// ------------------------------------------------------ events of a run

/// The events a finished run raises: per repository, `run-failed` for a
/// backup or copy that failed (recovered when one succeeds),
/// `verify-failed` for a verification that found errors or could not run
/// (recovered when one passes), and the plan's [`rpo_events`]. Lock
/// conflicts and skipped steps change nothing.
pub fn run_events(
    config: &Config,
    report: &RunReport,
    state: &PlanState,
    now: Timestamp,
) -> Vec<Event> {
    let plan = &report.plan;
    let mut out = Vec::new();
    for s in &report.steps {
        if let Some(e) = ransomware_event(plan, s) {
            out.push(e);
        }
        let condition = match s.step {
            StepKind::Backup | StepKind::Copy => conditions::RUN_FAILED,
            StepKind::Verify => conditions::VERIFY_FAILED,
            StepKind::Forget | StepKind::Prune => continue,
        };
        let what = crate::run::step_name(s.step);
        match s.outcome {
            Outcome::Failed => out.push(Event::problem(
                condition,
                plan,
                &s.repository,
                format!(
                    "{what} to {} failed: {}",
                    s.repository,
                    s.error.clone().unwrap_or_default()
                ),
            )),
            Outcome::Ok | Outcome::Partial => out.push(Event::recovered(
                condition,
                plan,
                &s.repository,
                format!("{what} to {} succeeded", s.repository),
            )),
            Outcome::Locked | Outcome::Skipped => {}
        }
    }
    if let Some(p) = config.plans.get(plan) {
        out.extend(rpo_events(plan, p, state, now));
    }
    out
}

/// `ransomware-suspected` for a backup step: a problem when detection
/// flagged its snapshot (naming the snapshot, the signals and the
/// protected parent), recovered when a later backup to that repository
/// shows no sign (the suspect snapshot stays tagged, its parent
/// protected). Failed backups change nothing.
fn ransomware_event(plan: &str, s: &crate::report::StepReport) -> Option<Event> {
    if s.step != StepKind::Backup || !matches!(s.outcome, Outcome::Ok | Outcome::Partial) {
        return None;
    }
    let snapshot = s.snapshot.clone().unwrap_or_default();
    let short = &snapshot[..snapshot.len().min(8)];
    let repo = &s.repository;
    Some(match &s.suspect {
        Some(found) => Event::problem(
            conditions::RANSOMWARE_SUSPECTED,
            plan,
            repo,
            format!(
                "backup {short} of plan {plan} to {repo} looks like its source was just encrypted: {}; the snapshot is tagged `suspect`, the one before it ({}) is protected until {}. Look at the source now",
                found.signals.join("; "),
                &found.protected[..found.protected.len().min(8)],
                found.protected_until.strftime("%Y-%m-%d"),
            ),
        )
        .with_detail("snapshot", snapshot.clone())
        .with_detail("protected", found.protected.clone())
        .with_detail("signals", found.signals.join("; "))
        .with_detail("examples", found.examples.join(", ")),
        None => Event::recovered(
            conditions::RANSOMWARE_SUSPECTED,
            plan,
            repo,
            format!("backup {short} of plan {plan} to {repo} shows no sign of encryption"),
        ),
    })
}

/// `rpo-breach` per repository of the plan's `repositories`: a problem
/// when its newest backup of the plan is older than the RPO, else
/// recovered. A repository that never got a backup raises nothing here
/// (its failed runs raise `run-failed`; `doctor` reports plans that never
/// succeeded). Copies made by `copy-to` are judged by the 3-2-1 rule in
/// `status`, not here.
pub fn rpo_events(
    plan_name: &str,
    plan: &PlanConfig,
    state: &PlanState,
    now: Timestamp,
) -> Vec<Event> {
    let rpo = plan.rpo.seconds() as i64;
    plan.repositories
        .iter()
        .filter_map(|r| {
            let t = state.repositories.get(r).and_then(|s| s.last_success)?;
            let age = now.as_second() - t.as_second();
            Some(if age <= rpo {
                Event::recovered(
                    conditions::RPO_BREACH,
                    plan_name,
                    r,
                    format!(
                        "newest backup in {r} is from {t}, within the RPO of {}",
                        plan.rpo
                    ),
                )
            } else {
                Event::problem(
                    conditions::RPO_BREACH,
                    plan_name,
                    r,
                    format!(
                        "newest backup in {r} is from {t}, {} old: older than the RPO of {}",
                        crate::duration::Duration::from_secs(age.max(0) as u64),
                        plan.rpo
                    ),
                )
            })
        })
        .collect()
}

// ---------------------------------------------------- events of a drill

/// How late a scheduled drill may be before `drill-overdue`: the daemon
/// starts a drill when it is due plus the plan's jitter, after the plan's
/// backup if one is running; an hour absorbs that.
pub const DRILL_OVERDUE_GRACE_SECS: i64 = 3600;

/// The events a finished drill raises: `drill-failed` (problem when a
/// check failed, recovered when the checks pass), `drill-rto-missed`
/// (problem when the checks passed too slowly, recovered when a drill
/// passes within the RTO; a failed drill measured nothing and changes
/// nothing) and the recovery of `drill-overdue`. The conditions are the
/// plan's (`repository` is empty, so a drill from another repository still
/// ends a problem); the reason names the repository the drill restored
/// from, or the plan's repositories when none opened.
pub fn drill_events(report: &crate::drill::DrillReport) -> Vec<Event> {
    use crate::drill::DrillOutcome;
    let plan = &report.plan;
    let from = report
        .repository
        .clone()
        .unwrap_or_else(|| "its repositories".into());
    let rto = |ms: u64| crate::duration::Duration::from_secs(ms.div_ceil(1000));
    let detail = |e: Event| {
        e.with_detail("drill", report.id.clone())
            .with_detail("rto_ms", report.rto_ms.to_string())
            .with_detail("drill_repository", from.clone())
    };
    let repo = "";
    let from = &from;
    let mut out = vec![detail(Event::recovered(
        conditions::DRILL_OVERDUE,
        plan,
        "",
        format!("a drill of {plan} ran at {}", report.finished),
    ))];
    match report.outcome {
        DrillOutcome::Failed => out.push(detail(Event::problem(
            conditions::DRILL_FAILED,
            plan,
            repo,
            format!(
                "restore drill of {plan} from {from} failed: {}",
                report
                    .error
                    .clone()
                    .unwrap_or_else(|| "see the drill report".into())
            ),
        ))),
        DrillOutcome::RtoMissed => {
            out.push(detail(Event::recovered(
                conditions::DRILL_FAILED,
                plan,
                repo,
                format!("restore drill of {plan} from {from} passed its checks"),
            )));
            out.push(detail(Event::problem(
                conditions::DRILL_RTO_MISSED,
                plan,
                repo,
                format!(
                    "restore drill of {plan} from {from} took {} to a usable copy, more than the RTO of {}",
                    rto(report.rto_ms),
                    crate::duration::Duration::from_secs(report.rto_objective_seconds.unwrap_or(0))
                ),
            )));
        }
        DrillOutcome::Passed => {
            for c in [conditions::DRILL_FAILED, conditions::DRILL_RTO_MISSED] {
                out.push(detail(Event::recovered(
                    c,
                    plan,
                    repo,
                    format!(
                        "restore drill of {plan} from {from} passed, usable copy in {}",
                        rto(report.rto_ms)
                    ),
                )));
            }
        }
    }
    out
}

/// `drill-failed` for a drill that could not run at all (no report).
pub fn drill_error_event(plan: &str, error: &dyn std::fmt::Display) -> Event {
    Event::problem(
        conditions::DRILL_FAILED,
        plan,
        "",
        format!("restore drill of {plan} could not run: {error}"),
    )
}

/// `drill-overdue` for every plan with `drill.every` whose newest drill
/// (any outcome; failures raise `drill-failed`) finished longer ago than
/// `every` plus [`DRILL_OVERDUE_GRACE_SECS`], except the plans in `busy`
/// (a drill running or about to start); recovered otherwise. A plan never
/// drilled raises nothing here: the daemon drills it at once, and `status`
/// shows it as overdue.
pub fn drill_overdue_events(config: &Config, busy: &[String], now: Timestamp) -> Vec<Event> {
    let dir = crate::state::StateDir::new(&config.state_dir);
    let mut out = Vec::new();
    for (name, plan) in &config.plans {
        let Some(every) = plan.drill.every else {
            continue;
        };
        if busy.contains(name) {
            continue;
        }
        let (last, _) = crate::drill::history::last(&dir, name);
        let Some(last) = last else { continue };
        let age = now.as_second() - last.finished.as_second();
        out.push(if age > every.seconds() as i64 + DRILL_OVERDUE_GRACE_SECS {
            Event::problem(
                conditions::DRILL_OVERDUE,
                name,
                "",
                format!(
                    "no restore drill of {name} for {} (drill.every = {every}): is the daemon running? Run `lifeboat drill {name}`",
                    crate::duration::Duration::from_secs(age as u64)
                ),
            )
        } else {
            Event::recovered(
                conditions::DRILL_OVERDUE,
                name,
                "",
                format!("a drill of {name} ran at {}", last.finished),
            )
        });
    }
    out
}

/// [`rpo_events`] for every plan of the config, from the saved state.
pub fn all_rpo_events(config: &Config, now: Timestamp) -> Vec<Event> {
    let dir = crate::state::StateDir::new(&config.state_dir);
    let mut out = Vec::new();
    for (name, plan) in &config.plans {
        if let Ok(state) = dir.plan(name) {
            out.extend(rpo_events(name, plan, &state, now));
        }
    }
    out
}
