//! The static status page (`status.html`): each plan's health (freshness
//! against its RPO, the measured RTO of its last drill) and the open
//! incident with its updates. One self-contained file: inline CSS and
//! one small inline script (times shown in the reader's time zone), no
//! external assets, so any web server (or a file:// URL) can serve it.
//! The daemon serves it at `/status` and rewrites it in
//! `communication.status-dir` when it changes; `incident` commands write
//! it there or to `--status-dir`.

use std::path::Path;

use crate::error::Result;
use crate::incident::Incident;
use crate::status::{Freshness, Status};

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn time(t: jiff::Timestamp) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t,
        t.strftime("%Y-%m-%d %H:%M UTC")
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left}\
.ok{color:#176f2c}.at-risk{color:#9a6700}.breached{color:#b3261e;font-weight:bold}\
.incident{border:2px solid #b3261e;padding:.5em 1em;margin:1em 0}.calm{border:1px solid #176f2c;padding:.5em 1em}\
pre{white-space:pre-wrap}";

/// Shows every `<time>` in the reader's time zone; marks the page ready.
const SCRIPT: &str = "document.querySelectorAll('time[datetime]').forEach(function(t){\
var d=new Date(t.getAttribute('datetime'));if(!isNaN(d)){t.title=t.textContent;t.textContent=d.toLocaleString();}});\
document.body.setAttribute('data-ready','yes');";

/// The page for `status` and the open incident (if any).
pub fn render(status: &Status, incident: Option<&Incident>) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str("<title>Backup status</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<h1>Backup status</h1>\n");
    h.push_str(&format!("<p>Updated {}</p>\n", time(status.generated)));
    match incident {
        Some(i) => {
            h.push_str(&format!(
                "<section class=\"incident\" id=\"incident\"><h2>Open incident {}</h2>\n<p>Since {}: {}</p>\n",
                escape(&i.id),
                time(i.opened),
                escape(&i.what)
            ));
            let latest = i.latest();
            h.push_str(&format!("<p>Impact: {}</p>\n", escape(&latest.impact)));
            if let Some(eta) = latest.eta {
                h.push_str(&format!("<p>Expected back: {}</p>\n", time(eta)));
            }
            if let Some(n) = latest.next_update {
                h.push_str(&format!("<p>Next update: {}</p>\n", time(n)));
            }
            h.push_str("<ol>\n");
            for e in i.entries.iter().rev() {
                h.push_str(&format!(
                    "<li>{} {}: {}</li>\n",
                    time(e.time),
                    e.kind.status_word(),
                    escape(&e.message)
                ));
            }
            h.push_str("</ol></section>\n");
        }
        None => h.push_str("<p class=\"calm\" id=\"incident\">No open incident.</p>\n"),
    }
    h.push_str("<h2>Plans</h2>\n<table><thead><tr><th>Plan</th><th>Data</th><th>Newest backup</th><th>RPO</th><th>Restore time (last drill)</th></tr></thead><tbody>\n");
    for p in &status.plans {
        let class = p.freshness.as_str();
        let fresh = match p.freshness {
            Freshness::Ok => "ok",
            Freshness::AtRisk => "at risk",
            Freshness::Breached => "RPO breached",
        };
        let newest = p.last_success.map(time).unwrap_or_else(|| "none".into());
        let rto = match (p.drill.rto_ms, p.rto_seconds) {
            (Some(ms), Some(o)) => format!(
                "{} (objective {})",
                crate::duration::Duration::from_secs(ms.div_ceil(1000)),
                crate::duration::Duration::from_secs(o)
            ),
            (Some(ms), None) => crate::duration::Duration::from_secs(ms.div_ceil(1000)).to_string(),
            (None, _) => "not measured".into(),
        };
        h.push_str(&format!(
            "<tr data-plan=\"{plan}\"><td>{plan}</td><td class=\"{class}\">{fresh}</td><td>{newest}</td><td>{rpo}</td><td>{rto}</td></tr>\n",
            plan = escape(&p.plan),
            rpo = crate::duration::Duration::from_secs(p.rpo_seconds),
            rto = escape(&rto),
        ));
    }
    h.push_str("</tbody></table>\n<script>");
    h.push_str(SCRIPT);
    h.push_str("</script>\n</body></html>\n");
    h
}

/// The page as it stands now, from the config's state directory.
pub fn current(config: &crate::Config, now: jiff::Timestamp) -> Result<String> {
    let status = crate::status::status(config, now)?;
    let state = crate::state::StateDir::new(&config.state_dir);
    let incident = crate::incident::current(&state)?;
    Ok(render(&status, incident.as_ref()))
}

/// Writes `status.html` into `dir` (created if missing), atomically.
pub fn write(dir: &Path, page: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("status.html");
    crate::state::write_atomic(&path, page.as_bytes())?;
    Ok(path)
}
