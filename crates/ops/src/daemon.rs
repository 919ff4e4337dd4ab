//! `lifeboat daemon`: runs every plan on its schedule and its restore
//! drills every `drill.every` ([`Scheduler`]), serves `/metrics`, `/healthz`,
//! `/api/status` and `/status` over HTTP (axum), keeps `status.html`
//! current in `communication.status-dir` when one is configured,
//! extends the object-lock retention of S3 repositories
//! ([`crate::lockextend`]) and runs ransomware detection on repositories
//! with `detect-every` ([`crate::detectjob`]).
//!
//! The clock is injected ([`Clock`]): the real one sleeps, the
//! [`ManualClock`] of the tests moves only when told, so schedules, catch-up
//! and retries are tested without waiting. Shutdown and reload are
//! injected too (a [`CancellationToken`] and a channel), which the CLI
//! wires to SIGTERM/SIGINT and SIGHUP. On shutdown the running plans are
//! cancelled (a backup in flight is abandoned: no snapshot is written and
//! its repository lock is released) and waited for. A reload reads the
//! config file again; a broken file keeps the running config and says
//! why ([`Event::ReloadFailed`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alert::Alerter;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::report::{Outcome, Trigger};
use crate::run::{RunOptions, run_plan};
use crate::scheduler::Scheduler;
use crate::state::StateDir;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Resolves at or after `t` (as this clock counts).
    fn sleep_until(&self, t: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, t: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let d = t.duration_since(Timestamp::now());
        let d = std::time::Duration::try_from(d).unwrap_or_default();
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only when [`ManualClock::set`] or
/// [`ManualClock::advance`] is called (tests).
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(ManualClock {
            now: watch::Sender::new(start),
        })
    }

    pub fn set(&self, t: Timestamp) {
        self.now.send_replace(t);
    }

    pub fn advance(&self, d: jiff::SignedDuration) {
        let t = self.now().checked_add(d).expect("in range");
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, t: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|now| *now >= t).await;
        })
    }
}

/// What the daemon did, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The HTTP server listens here.
    Listening(std::net::SocketAddr),
    Started {
        plan: String,
        trigger: Trigger,
    },
    Finished {
        plan: String,
        outcome: Option<Outcome>,
        error: Option<String>,
    },
    /// A restore drill of the plan started (`drill.every`).
    DrillStarted {
        plan: String,
        trigger: Trigger,
    },
    DrillFinished {
        plan: String,
        outcome: Option<crate::drill::DrillOutcome>,
        error: Option<String>,
    },
    /// The object-lock retention of a repository was extended (or found
    /// not to need it, `not_locked`), or the extension failed (`error`).
    LockExtended {
        repository: String,
        not_locked: bool,
        error: Option<String>,
    },
    /// Ransomware detection ran on a repository (`detect-every`): how many
    /// snapshots it checked and which it tagged `suspect`, or why it failed.
    Detected {
        repository: String,
        checked: usize,
        suspect: Vec<String>,
        error: Option<String>,
    },
    /// `status.html` was rewritten in `communication.status-dir` (plan
    /// state or an incident changed since the last write).
    StatusPageWritten(PathBuf),
    /// The status page could not be rendered or written (logged; the
    /// daemon keeps running and tries again at its next wake).
    StatusPageFailed(String),
    Reloaded,
    /// The new config is broken; the old one keeps running.
    ReloadFailed(String),
    Stopped,
}

/// The daemon's inputs besides the config.
pub struct DaemonOptions {
    pub config_path: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub shutdown: CancellationToken,
    /// A message asks for a reload of the config file.
    pub reload: mpsc::UnboundedReceiver<()>,
    /// Every [`Event`] is sent here too (tests; the CLI logs them).
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// Seed of the jitter.
    pub seed: u64,
    /// Serve HTTP on the config's `daemon.listen` (off in scheduler tests).
    pub http: bool,
    /// The alert sender (none: one made from the config with the default
    /// retries).
    pub alerts: Option<Alerter>,
}

/// How often (on the daemon's clock) every plan's RPO is checked for
/// `rpo-breach` alerts, besides after each run.
pub const RPO_CHECK_SECS: i64 = 60;

/// What the HTTP handlers read.
pub struct Shared {
    pub config: RwLock<Arc<Config>>,
    pub next_runs: Mutex<BTreeMap<String, Option<Timestamp>>>,
    pub clock: Arc<dyn Clock>,
}

impl Shared {
    /// `status --json`, with the scheduler's next run times.
    pub fn status(&self) -> Result<crate::status::Status> {
        let config = self.config.read().expect("not poisoned").clone();
        let mut st = crate::status::status(&config, self.clock.now())?;
        let next = self.next_runs.lock().expect("not poisoned");
        for p in &mut st.plans {
            if let Some(Some(t)) = next.get(&p.plan) {
                p.next_run = Some(*t);
            }
        }
        Ok(st)
    }
}

fn send(events: &Option<mpsc::UnboundedSender<Event>>, e: Event) {
    match &e {
        Event::ReloadFailed(why) => {
            tracing::error!("config reload failed, the old config keeps running: {why}")
        }
        Event::Finished {
            plan,
            outcome,
            error,
        } => {
            tracing::info!(plan = %plan, outcome = ?outcome, error = ?error, "run finished")
        }
        Event::Started { plan, trigger } => {
            tracing::info!(plan = %plan, trigger = ?trigger, "run started")
        }
        Event::StatusPageFailed(why) => tracing::warn!("status page not written: {why}"),
        Event::DrillStarted { plan, trigger } => {
            tracing::info!(plan = %plan, trigger = ?trigger, "drill started")
        }
        Event::DrillFinished {
            plan,
            outcome,
            error,
        } => {
            tracing::info!(plan = %plan, outcome = ?outcome, error = ?error, "drill finished")
        }
        other => tracing::info!("{other:?}"),
    }
    if let Some(tx) = events {
        let _ = tx.send(e);
    }
}

fn load_states(config: &Config) -> BTreeMap<String, crate::state::PlanState> {
    let dir = StateDir::new(&config.state_dir);
    config
        .plans
        .keys()
        .filter_map(|p| dir.plan(p).ok().map(|s| (p.clone(), s)))
        .collect()
}

/// When each plan's newest drill finished (the drill schedule's start).
fn last_drills(config: &Config) -> BTreeMap<String, Timestamp> {
    let dir = StateDir::new(&config.state_dir);
    config
        .plans
        .iter()
        .filter(|(_, p)| p.drill.every.is_some())
        .filter_map(|(n, _)| {
            crate::drill::history::last(&dir, n)
                .0
                .map(|r| (n.clone(), r.finished))
        })
        .collect()
}

/// Rewrites `status.html` in the config's `communication.status-dir` when
/// the page differs from the one written last (`last`): a run or drill
/// finished, an incident command changed the incident log, a plan's
/// freshness crossed its RPO. Called at every wake of the daemon, which is
/// at least every [`RPO_CHECK_SECS`], so a web server serving that
/// directory is never more than that behind `/status`.
fn refresh_status_dir(
    config: &Config,
    now: Timestamp,
    last: &mut Option<String>,
    events: &Option<mpsc::UnboundedSender<Event>>,
) {
    let Some(dir) = &config.communication.status_dir else {
        return;
    };
    let page = match crate::statuspage::current(config, now) {
        Ok(p) => p,
        Err(e) => {
            send(events, Event::StatusPageFailed(e.to_string()));
            return;
        }
    };
    if last.as_deref() == Some(page.as_str()) {
        return;
    }
    match crate::statuspage::write(dir, &page) {
        Ok(path) => {
            *last = Some(page);
            send(events, Event::StatusPageWritten(path));
        }
        Err(e) => send(
            events,
            Event::StatusPageFailed(format!("writing status.html to {}: {e}", dir.display())),
        ),
    }
}

/// What a task of the daemon ended with.
enum Done {
    Run(Result<crate::run::RunResult>),
    Drill(Result<crate::drill::DrillResult>),
    /// A lock extension (the task's name is the repository's).
    LockExtend(Result<crate::lockextend::Extended>),
    /// A detection run (the task's name is the repository's).
    Detect(Result<crate::detectjob::Detected>),
}

/// One kind of per-repository maintenance the daemon schedules (lock
/// extension, detection): when each candidate repository is next due, and
/// which are running.
struct RepoJobs {
    /// Whether the config's repository gets this job.
    candidate: fn(&crate::config::RepositoryConfig) -> bool,
    /// When it is next due, from the state directory.
    next_due: fn(&StateDir, &str, &crate::config::RepositoryConfig, Timestamp) -> Timestamp,
    due: BTreeMap<String, Timestamp>,
    running: std::collections::BTreeSet<String>,
}

impl RepoJobs {
    fn lock_extend() -> Self {
        Self::new(crate::lockextend::candidate, |state, name, r, now| {
            crate::lockextend::next_due(r, &crate::lockextend::load(state, name), now)
        })
    }

    fn detect() -> Self {
        Self::new(crate::detectjob::candidate, |state, name, r, now| {
            crate::detectjob::next_due(r, &crate::detectjob::load(state, name), now)
        })
    }

    fn new(
        candidate: fn(&crate::config::RepositoryConfig) -> bool,
        next_due: fn(&StateDir, &str, &crate::config::RepositoryConfig, Timestamp) -> Timestamp,
    ) -> Self {
        RepoJobs {
            candidate,
            next_due,
            due: BTreeMap::new(),
            running: Default::default(),
        }
    }

    /// Schedules every candidate repository of `config` not scheduled or
    /// running yet, keeping the times already scheduled for repositories
    /// still in the config.
    fn sync(&mut self, config: &Config, now: Timestamp) {
        let state = StateDir::new(&config.state_dir);
        let candidate = self.candidate;
        self.due
            .retain(|n, _| config.repositories.get(n).is_some_and(candidate));
        for (name, r) in &config.repositories {
            if candidate(r) && !self.due.contains_key(name) && !self.running.contains(name) {
                self.due
                    .insert(name.clone(), (self.next_due)(&state, name, r, now));
            }
        }
    }

    /// The repositories due at `now`, marked running.
    fn take_due(&mut self, now: Timestamp) -> Vec<String> {
        let names: Vec<String> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            self.due.remove(name);
            self.running.insert(name.clone());
        }
        names
    }

    /// `name` finished: scheduled again from its saved state.
    fn finished(&mut self, config: &Config, name: &str, now: Timestamp) {
        self.running.remove(name);
        if let Some(r) = config.repositories.get(name) {
            let state = StateDir::new(&config.state_dir);
            self.due
                .insert(name.to_string(), (self.next_due)(&state, name, r, now));
        }
    }

    fn earliest(&self, wake: Timestamp) -> Timestamp {
        self.due.values().fold(wake, |w, t| w.min(*t))
    }
}

/// The event of a finished task.
fn finished_event(plan: String, done: Done) -> Event {
    match done {
        Done::Run(r) => {
            let (outcome, error) = match r {
                Ok(r) => (Some(r.report.outcome), r.report.error),
                Err(e) => (None, Some(e.to_string())),
            };
            Event::Finished {
                plan,
                outcome,
                error,
            }
        }
        Done::Drill(r) => {
            let (outcome, error) = match r {
                Ok(r) => (Some(r.report.outcome), r.report.error),
                Err(e) => (None, Some(e.to_string())),
            };
            Event::DrillFinished {
                plan,
                outcome,
                error,
            }
        }
        Done::LockExtend(r) => Event::LockExtended {
            repository: plan,
            not_locked: matches!(r, Ok(crate::lockextend::Extended::NotLocked)),
            error: r.err().map(|e| e.to_string()),
        },
        Done::Detect(r) => {
            let (found, error) = match r {
                Ok(found) => (found, None),
                Err(e) => (Default::default(), Some(e.to_string())),
            };
            Event::Detected {
                repository: plan,
                checked: found.checked,
                suspect: found.suspect,
                error,
            }
        }
    }
}

/// One per-repository job of `name` as a daemon task: `job` returns its
/// result and the alert events it raises or ends (sent here); abandoned
/// on shutdown.
fn repo_job_task<T: Send + 'static>(
    name: String,
    what: &'static str,
    job: impl Future<Output = (Result<T>, Vec<crate::alert::Event>)> + Send + 'static,
    done: fn(Result<T>) -> Done,
    now: Timestamp,
    alerts: Alerter,
    cancel: CancellationToken,
) -> Pin<Box<dyn Future<Output = (String, Done)> + Send>> {
    Box::pin(async move {
        let r = tokio::select! {
            (r, events) = job => {
                alerts.notify_all(events, now);
                r
            }
            _ = cancel.cancelled() => Err(Error::Drill {
                repository: name.clone(),
                message: format!("stopped: lifeboat was shut down during {what}"),
            }),
        };
        (name, done(r))
    })
}

/// Runs until `shutdown` is cancelled.
pub async fn run_daemon(config: Config, mut o: DaemonOptions) -> Result<()> {
    let shared = Arc::new(Shared {
        config: RwLock::new(Arc::new(config)),
        next_runs: Mutex::new(BTreeMap::new()),
        clock: o.clock.clone(),
    });
    let config = shared.config.read().expect("not poisoned").clone();
    if o.http {
        let address = config.daemon.listen.clone();
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|source| Error::Listen {
                address: address.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Listen { address, source })?;
        send(&o.events, Event::Listening(local));
        let app = crate::http::router(shared.clone());
        let stop = o.shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }
    let alerts = o.alerts.take().unwrap_or_else(|| Alerter::new(&config));
    let mut next_rpo_check = o.clock.now();
    let mut scheduler = Scheduler::new(&config, &load_states(&config), o.clock.now(), o.seed);
    scheduler.sync_drills(&config, &last_drills(&config), o.clock.now());
    let mut tasks: JoinSet<(String, Done)> = JoinSet::new();
    let runs_cancel = o.shutdown.child_token();
    let mut last_page: Option<String> = None;
    let mut lock_jobs = RepoJobs::lock_extend();
    let mut detect_jobs = RepoJobs::detect();
    lock_jobs.sync(&config, o.clock.now());
    detect_jobs.sync(&config, o.clock.now());
    loop {
        let config = shared.config.read().expect("not poisoned").clone();
        let now = o.clock.now();
        refresh_status_dir(&config, now, &mut last_page, &o.events);
        if now >= next_rpo_check {
            let mut events = crate::alert::all_rpo_events(&config, now);
            events.extend(crate::alert::drill_overdue_events(
                &config,
                &scheduler.drills_busy(now),
                now,
            ));
            alerts.notify_all(events, now);
            next_rpo_check = now
                .checked_add(jiff::SignedDuration::from_secs(RPO_CHECK_SECS))
                .unwrap_or(now);
        }
        for due in scheduler.take_due(now) {
            send(
                &o.events,
                Event::Started {
                    plan: due.plan.clone(),
                    trigger: due.trigger,
                },
            );
            let config = config.clone();
            let options = RunOptions {
                trigger: due.trigger,
                now,
                cancel: runs_cancel.clone(),
                alerts: Some(alerts.clone()),
            };
            tasks.spawn(async move {
                let r = run_plan(&config, &due.plan, &options).await;
                (due.plan, Done::Run(r))
            });
        }
        for due in scheduler.take_due_drills(now) {
            send(
                &o.events,
                Event::DrillStarted {
                    plan: due.plan.clone(),
                    trigger: due.trigger,
                },
            );
            let config = config.clone();
            let options = crate::drill::DrillOptions {
                trigger: Some(due.trigger),
                alerts: Some(alerts.clone()),
                now: Some(now),
                ..Default::default()
            };
            let cancel = runs_cancel.clone();
            tasks.spawn(async move {
                // A drill stopped by shutdown is abandoned; the next start
                // of a drill removes what it left (drill::scratch).
                let r = tokio::select! {
                    r = crate::drill::run_drill(&config, &due.plan, &options) => r,
                    _ = cancel.cancelled() => Err(Error::Drill {
                        repository: "-".into(),
                        message: "stopped: lifeboat was shut down during the drill; the next drill removes what it left".into(),
                    }),
                };
                (due.plan, Done::Drill(r))
            });
        }
        for name in lock_jobs.take_due(now) {
            let (config, repository) = (config.clone(), name.clone());
            tasks.spawn(repo_job_task(
                name,
                "a lock extension",
                async move {
                    let (r, event) = crate::lockextend::run(&config, &repository, now).await;
                    (r, vec![event])
                },
                Done::LockExtend,
                now,
                alerts.clone(),
                runs_cancel.clone(),
            ));
        }
        for name in detect_jobs.take_due(now) {
            let (config, repository) = (config.clone(), name.clone());
            tasks.spawn(repo_job_task(
                name,
                "ransomware detection",
                async move { crate::detectjob::run(&config, &repository, now).await },
                Done::Detect,
                now,
                alerts.clone(),
                runs_cancel.clone(),
            ));
        }
        *shared.next_runs.lock().expect("not poisoned") = scheduler.next_runs();
        let wake = scheduler
            .next_wake_after(now)
            .map_or(next_rpo_check, |t| t.min(next_rpo_check));
        let wake = detect_jobs.earliest(lock_jobs.earliest(wake));
        let clock = o.clock.clone();
        tokio::select! {
            _ = o.shutdown.cancelled() => break,
            _ = clock.sleep_until(wake) => {}
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let event = match joined {
                    Ok((plan, done)) => finished_event(plan, done),
                    Err(e) => Event::Finished {
                        plan: String::new(),
                        outcome: None,
                        error: Some(format!("run task failed: {e}")),
                    },
                };
                match &event {
                    Event::Finished { plan, outcome, .. } => {
                        scheduler.finished(&config, plan, *outcome, o.clock.now())
                    }
                    Event::DrillFinished { plan, .. } => {
                        scheduler.drill_finished(&config, plan, o.clock.now())
                    }
                    Event::LockExtended { repository, .. } => {
                        lock_jobs.finished(&config, repository, o.clock.now())
                    }
                    Event::Detected { repository, .. } => {
                        detect_jobs.finished(&config, repository, o.clock.now())
                    }
                    _ => {}
                }
                send(&o.events, event);
            }
            Some(()) = o.reload.recv() => {
                match Config::load(&o.config_path) {
                    Ok(new) => {
                        scheduler.sync(&new, &load_states(&new), o.clock.now());
                        scheduler.sync_drills(&new, &last_drills(&new), o.clock.now());
                        lock_jobs.sync(&new, o.clock.now());
                        detect_jobs.sync(&new, o.clock.now());
                        alerts.reload(&new);
                        *shared.config.write().expect("not poisoned") = Arc::new(new);
                        send(&o.events, Event::Reloaded);
                    }
                    Err(e) => send(&o.events, Event::ReloadFailed(e.to_string())),
                }
            }
        }
    }
    // Stop: cancel running plans and wait for them to end cleanly.
    runs_cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((plan, done)) = joined {
            send(&o.events, finished_event(plan, done));
        }
    }
    // Messages of the last runs: a bounded wait, then they are dropped.
    alerts.flush(std::time::Duration::from_secs(15)).await;
    send(&o.events, Event::Stopped);
    Ok(())
}
