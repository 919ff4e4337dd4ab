//! Incident communication: the incident log (`incidents.jsonl` in the
//! state directory, one line per notice), the templated notices of
//! `lifeboat incident open|update|resolve` for each audience of the
//! config's `[communication]` table, and where they are sent (the alert
//! channels, [`crate::alert::Alerter::announce`]).
//!
//! One incident is open at a time: `open` starts one (refused while one is
//! open), `update` and `resolve` need one. Nothing here renders the status
//! page ([`crate::statuspage`]) or prints.
//!
//! Templates are plain text with placeholders in braces
//! ([`PLACEHOLDERS`]); an unknown placeholder is a config error, so a typo
//! never reaches customers as `{imapct}`.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// The placeholders a template may use, with what each becomes.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("id", "the incident's id"),
    ("status", "open, update or resolved"),
    ("host", "the machine lifeboat runs on"),
    ("what", "what happened: the message of `incident open`"),
    ("step", "the current step: the message of this notice"),
    ("impact", "which plans are not healthy (or --impact)"),
    (
        "eta",
        "expected time back: the incident's start plus the longest measured RTO of the affected plans",
    ),
    (
        "next-update",
        "when the next update is due (communication.update-every)",
    ),
];

pub const DEFAULT_OPEN: &str = "[{status}] Incident {id} on {host}: {what}\nImpact: {impact}\nCurrent step: {step}\nExpected back: {eta}\nNext update: {next-update}";
pub const DEFAULT_UPDATE: &str = "[{status}] Incident {id} on {host}: {what}\nCurrent step: {step}\nImpact: {impact}\nExpected back: {eta}\nNext update: {next-update}";
pub const DEFAULT_RESOLVE: &str = "[{status}] Incident {id} on {host} is resolved: {what}\n{step}";

/// Checks that every `{...}` of `template` is a known placeholder.
pub fn check_template(template: &str) -> std::result::Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err("a `{` without its `}`".into());
        };
        let name = &rest[start + 1..start + len];
        if !PLACEHOLDERS.iter().any(|(p, _)| *p == name) {
            return Err(format!(
                "unknown placeholder {{{name}}}; known: {}",
                PLACEHOLDERS
                    .iter()
                    .map(|(p, _)| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

/// Replaces each placeholder of `template` by its value in `values`.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoticeKind {
    Open,
    Update,
    Resolve,
}

impl NoticeKind {
    /// The word the `{status}` placeholder and the status page use.
    pub fn status_word(self) -> &'static str {
        match self {
            NoticeKind::Open => "open",
            NoticeKind::Update => "update",
            NoticeKind::Resolve => "resolved",
        }
    }
}

/// One line of the incident log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub incident: String,
    pub kind: NoticeKind,
    pub time: Timestamp,
    pub message: String,
    pub impact: String,
    /// Expected time back, when a drill measured the restore time.
    pub eta: Option<Timestamp>,
    /// When the next update is due (none once resolved).
    pub next_update: Option<Timestamp>,
    /// The audiences it was sent to.
    pub audiences: Vec<String>,
}

/// An incident as its log lines tell it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub id: String,
    pub opened: Timestamp,
    /// The message of `open`.
    pub what: String,
    pub resolved: Option<Timestamp>,
    pub entries: Vec<LogEntry>,
}

impl Incident {
    pub fn latest(&self) -> &LogEntry {
        self.entries.last().expect("an incident has its open entry")
    }
}

fn log_path(state: &StateDir) -> std::path::PathBuf {
    state.root().join("incidents.jsonl")
}

/// Every incident of the log, oldest first.
pub fn incidents(state: &StateDir) -> Result<Vec<Incident>> {
    let path = log_path(state);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(Error::State { path, source }),
    };
    let mut out: Vec<Incident> = Vec::new();
    // A torn last line (a crash mid-append) is skipped, not fatal.
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<LogEntry>(l).ok())
    {
        match out.iter_mut().find(|i| i.id == e.incident) {
            Some(i) => {
                if e.kind == NoticeKind::Resolve {
                    i.resolved = Some(e.time);
                }
                i.entries.push(e);
            }
            None => out.push(Incident {
                id: e.incident.clone(),
                opened: e.time,
                what: e.message.clone(),
                resolved: (e.kind == NoticeKind::Resolve).then_some(e.time),
                entries: vec![e],
            }),
        }
    }
    Ok(out)
}

/// The open incident, if any.
pub fn current(state: &StateDir) -> Result<Option<Incident>> {
    Ok(incidents(state)?
        .into_iter()
        .rev()
        .find(|i| i.resolved.is_none()))
}

/// What `incident open|update|resolve` asks for.
#[derive(Debug, Clone)]
pub struct NoticeOptions {
    pub kind: NoticeKind,
    /// What happened (open) or the current step (update, resolve).
    pub message: String,
    /// Overrides the impact derived from the plans' status.
    pub impact: Option<String>,
    pub now: Timestamp,
}

/// One templated notice for one audience.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub audience: String,
    /// Alert names it goes through (empty: every alert).
    pub channels: Vec<String>,
    pub subject: String,
    pub text: String,
}

/// The result of one incident command.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub incident: Incident,
    pub notices: Vec<Notice>,
}

/// The impact as the plans' status shows it: the plans whose data is
/// older than their RPO or at risk, else "no backup plan is affected".
fn derived_impact(status: &crate::status::Status) -> (String, Vec<String>) {
    let hit: Vec<&crate::status::PlanStatus> = status
        .plans
        .iter()
        .filter(|p| p.freshness != crate::status::Freshness::Ok)
        .collect();
    if hit.is_empty() {
        return ("no backup plan is affected".into(), Vec::new());
    }
    let text = hit
        .iter()
        .map(|p| format!("plan {} ({})", p.plan, p.freshness.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    (text, hit.iter().map(|p| p.plan.clone()).collect())
}

/// The expected time back: `since` plus the longest measured RTO among
/// `plans` (every plan when empty); none when no drill measured one.
fn eta(status: &crate::status::Status, plans: &[String], since: Timestamp) -> Option<Timestamp> {
    let longest = status
        .plans
        .iter()
        .filter(|p| plans.is_empty() || plans.contains(&p.plan))
        .filter_map(|p| p.drill.rto_ms)
        .max()?;
    since
        .checked_add(SignedDuration::from_millis(longest as i64))
        .ok()
}

fn time_text(t: Option<Timestamp>, none: &str) -> String {
    t.map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| none.to_string())
}

/// Appends the notice to the incident log and returns it with the text
/// for each audience. Refuses `open` while an incident is open and
/// `update`/`resolve` when none is.
pub fn record(config: &Config, o: &NoticeOptions) -> Result<Recorded> {
    let state = StateDir::new(&config.state_dir);
    let _lock = state.lock_file("incidents")?;
    let open = current(&state)?;
    let id = match (o.kind, &open) {
        (NoticeKind::Open, Some(i)) => {
            return Err(Error::Incident(format!(
                "incident {} is still open (since {}): send `incident update` or `incident resolve`",
                i.id, i.opened
            )));
        }
        (NoticeKind::Open, None) => format!("{}", o.now.strftime("%Y%m%d-%H%M%S")),
        (_, None) => {
            return Err(Error::Incident(
                "no incident is open: start one with `lifeboat incident open --message TEXT`"
                    .into(),
            ));
        }
        (_, Some(i)) => i.id.clone(),
    };
    let status = crate::status::status(config, o.now)?;
    let (derived, affected) = derived_impact(&status);
    let impact = o.impact.clone().unwrap_or(derived);
    let since = open.as_ref().map_or(o.now, |i| i.opened);
    let eta = eta(&status, &affected, since);
    let next_update = (o.kind != NoticeKind::Resolve).then(|| {
        o.now
            .checked_add(SignedDuration::from_secs(
                config.communication.update_every.seconds() as i64,
            ))
            .unwrap_or(o.now)
    });
    let what = open.as_ref().map_or(o.message.clone(), |i| i.what.clone());
    let values = [
        ("id", id.clone()),
        ("status", o.kind.status_word().to_string()),
        ("host", crate::run::host()),
        ("what", what),
        ("step", o.message.clone()),
        ("impact", impact.clone()),
        (
            "eta",
            time_text(eta, "unknown: no restore drill has measured the time yet"),
        ),
        ("next-update", time_text(next_update, "none")),
    ];
    let notices: Vec<Notice> = config
        .communication
        .audiences
        .iter()
        .map(|(name, a)| {
            let template = match o.kind {
                NoticeKind::Open => &a.open,
                NoticeKind::Update => &a.update,
                NoticeKind::Resolve => &a.resolve,
            };
            let text = fill(template, &values);
            Notice {
                audience: name.clone(),
                channels: a.channels.clone(),
                subject: text.lines().next().unwrap_or_default().to_string(),
                text,
            }
        })
        .collect();
    let entry = LogEntry {
        incident: id.clone(),
        kind: o.kind,
        time: o.now,
        message: o.message.clone(),
        impact,
        eta,
        next_update,
        audiences: notices.iter().map(|n| n.audience.clone()).collect(),
    };
    crate::state::append_line(&log_path(&state), &entry)?;
    let incident = incidents(&state)?
        .into_iter()
        .find(|i| i.id == id)
        .expect("the incident just written");
    Ok(Recorded { incident, notices })
}

/// Sends each notice through its audience's alert channels. The webhook
/// body is JSON (docs/operations.md, "Incident communication").
pub fn send(alerts: &crate::alert::Alerter, r: &Recorded) {
    let latest = r.incident.latest();
    for n in &r.notices {
        let json = serde_json::json!({
            "source": "lifeboat",
            "version": 1,
            "kind": "incident",
            "incident": r.incident.id,
            "status": latest.kind.status_word(),
            "audience": n.audience,
            "text": n.text,
            "impact": latest.impact,
            "eta": latest.eta,
            "next_update": latest.next_update,
            "time": latest.time,
        });
        alerts.announce(&n.channels, &n.subject, &n.text, &json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_only_known_placeholders() {
        assert!(check_template(DEFAULT_OPEN).is_ok());
        assert!(check_template(DEFAULT_UPDATE).is_ok());
        assert!(check_template(DEFAULT_RESOLVE).is_ok());
        let e = check_template("down: {imapct}").unwrap_err();
        assert!(e.contains("{imapct}") && e.contains("{impact}"), "{e}");
        assert!(check_template("open { brace").is_err());
    }

    #[test]
    fn fill_replaces_every_placeholder() {
        let t = fill(
            "{id}: {what} until {eta}, {id}",
            &[
                ("id", "7".into()),
                ("what", "db down".into()),
                ("eta", "noon".into()),
            ],
        );
        assert_eq!(t, "7: db down until noon, 7");
    }
}
