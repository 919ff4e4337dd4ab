//! The runbook: what to type, scenario by scenario, generated from the
//! config and the repositories' state (`lifeboat runbook`). Real names,
//! locations, password references, snapshot ids and times, and the last
//! drill's measured phases; every command in a code block can be pasted
//! as is once its `<PLACEHOLDERS>` are filled (the test
//! `crates/cli/tests/runbook.rs` runs every one of them).
//!
//! [`gather`] reads the facts (snapshot lists, drill history, the
//! PostgreSQL tools' directory); [`generate`] turns config and facts into
//! a [`Runbook`], a list of blocks rendered as Markdown or as one
//! self-contained HTML page. Nothing here prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::Timestamp;

use crate::config::{Config, PasswordSource, PlanConfig, RepositoryConfig, SourceConfig};
use crate::drill::DrillReport;
use crate::error::{Error, Result};
use crate::statuspage::escape;

/// One block of the runbook.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Heading(u8, String),
    /// Text; `` `code` `` spans are kept.
    Para(String),
    List(Vec<String>),
    /// Shell commands, one per line; lines starting with `#` are comments.
    Code(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runbook {
    pub blocks: Vec<Block>,
}

impl Runbook {
    fn h(&mut self, level: u8, t: impl Into<String>) {
        self.blocks.push(Block::Heading(level, t.into()));
    }
    fn p(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Para(t.into()));
    }
    fn list(&mut self, items: Vec<String>) {
        if !items.is_empty() {
            self.blocks.push(Block::List(items));
        }
    }
    fn code(&mut self, lines: Vec<String>) {
        self.blocks.push(Block::Code(lines));
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => o.push_str(&format!("{} {t}\n\n", "#".repeat(*l as usize))),
                Block::Para(t) => o.push_str(&format!("{t}\n\n")),
                Block::List(items) => {
                    for i in items {
                        o.push_str(&format!("- {i}\n"));
                    }
                    o.push('\n');
                }
                Block::Code(lines) => {
                    o.push_str("```sh\n");
                    for l in lines {
                        o.push_str(l);
                        o.push('\n');
                    }
                    o.push_str("```\n\n");
                }
            }
        }
        o
    }

    /// One self-contained page (inline CSS, no script, no external asset).
    pub fn html(&self) -> String {
        let mut o = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Lifeboat runbook</title><style>\
body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45}\
pre{background:#f4f4f4;padding:.6em;overflow-x:auto}code{font-family:ui-monospace,monospace}</style></head><body>\n",
        );
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => o.push_str(&format!("<h{l}>{}</h{l}>\n", inline(t))),
                Block::Para(t) => o.push_str(&format!("<p>{}</p>\n", inline(t))),
                Block::List(items) => {
                    o.push_str("<ul>\n");
                    for i in items {
                        o.push_str(&format!("<li>{}</li>\n", inline(i)));
                    }
                    o.push_str("</ul>\n");
                }
                Block::Code(lines) => {
                    o.push_str("<pre><code>");
                    o.push_str(&escape(&lines.join("\n")));
                    o.push_str("</code></pre>\n");
                }
            }
        }
        o.push_str("</body></html>\n");
        o
    }
}

/// Escaped text with `` `x` `` spans as `<code>`.
fn inline(t: &str) -> String {
    escape(t)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_string()
            }
        })
        .collect()
}

/// `s` as one shell word: as is when it has no special characters.
/// `<NAME>` placeholders stay bare: the reader replaces them whole.
pub fn quote(s: &str) -> String {
    let mut rest = s.to_string();
    while let Some(a) = rest.find('<') {
        match rest[a..].find('>') {
            Some(len)
                if len > 1
                    && rest[a + 1..a + len]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '-') =>
            {
                rest.replace_range(a..=a + len, "X");
            }
            _ => break,
        }
    }
    let plain = rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if !s.is_empty() && plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A snapshot as the runbook names it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotFact {
    pub id: String,
    pub time: Timestamp,
    pub tags: Vec<String>,
}

/// What the repositories and the state directory say.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Per repository: its snapshots (oldest first), or why they could not
    /// be read.
    pub repositories: BTreeMap<String, std::result::Result<Vec<SnapshotFact>, String>>,
    /// Per plan: the newest drill.
    pub drills: BTreeMap<String, DrillReport>,
    /// `pg_ctl` as found on this machine.
    pub pg_ctl: PathBuf,
}

/// Reads the facts: each repository's snapshot list (a repository that
/// does not open is noted, not fatal) and each plan's newest drill.
pub async fn gather(config: &Config) -> Facts {
    let lists = config.repositories.iter().map(|(name, r)| async move {
        let list = match crate::repos::open(name, r).await {
            Ok(repo) => repo
                .snapshots()
                .await
                .map(|all| {
                    all.iter()
                        .map(|s| SnapshotFact {
                            id: s.id.to_hex(),
                            time: s.record.time,
                            tags: s.record.tags.clone(),
                        })
                        .collect()
                })
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        (name.clone(), list)
    });
    let repositories = futures::future::join_all(lists).await.into_iter().collect();
    let state = crate::state::StateDir::new(&config.state_dir);
    let drills = config
        .plans
        .keys()
        .filter_map(|p| {
            crate::drill::history::last(&state, p)
                .0
                .map(|d| (p.clone(), d))
        })
        .collect();
    Facts {
        repositories,
        drills,
        pg_ctl: lifeboat_connectors::postgres::conn::tool("pg_ctl", None),
    }
}

/// The placeholders the runbook uses, with what to fill in.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "<RESTORE-DIR>",
        "a directory on a disk with room for the restore (it is created; the PostgreSQL user must be able to write there)",
    ),
    (
        "<SNAPSHOT>",
        "the id of the snapshot to restore from (the newest ones are listed in each section)",
    ),
    (
        "<SAFE-SNAPSHOT>",
        "the id of a snapshot in the off-site or immutable repository from before the attack (ids differ between repositories)",
    ),
    (
        "<FILE-PATTERN>",
        "a file name or glob, e.g. `invoice-*.pdf`, or a path containing `/`",
    ),
    (
        "<TARGET-TIME>",
        "the recovery target, RFC 3339 in UTC, e.g. 2026-03-01T09:14:00Z",
    ),
    (
        "<TARGET-XID>",
        "the id of the bad transaction, from the application's or the database's log",
    ),
    (
        "<FREE-PORT>",
        "a TCP port nothing listens on (e.g. 5433) for the restored copy",
    ),
    ("<TABLE>", "the table whose rows are rescued"),
];

struct Gen<'a> {
    config: &'a Config,
    facts: &'a Facts,
    cfg: String,
    rb: Runbook,
}

fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The `-r LOCATION --password-...` part of a repository's commands.
pub fn repo_args(r: &RepositoryConfig) -> String {
    let pw = match &r.password {
        PasswordSource::File(f) => format!("--password-file {}", quote(&f.display().to_string())),
        PasswordSource::Command(c) => format!("--password-command {}", quote(c)),
        PasswordSource::Env(v) => format!("--password-command {}", quote(&format!("printenv {v}"))),
    };
    format!("-r {} {pw}", quote(&r.location))
}

fn password_text(r: &RepositoryConfig) -> String {
    match &r.password {
        PasswordSource::File(f) => format!("password file `{}`", f.display()),
        PasswordSource::Command(c) => format!("password from the command `{c}`"),
        PasswordSource::Env(v) => format!("password in the environment variable `{v}`"),
    }
}

/// A config enum as the config file spells it (`offsite`, `object-store`).
fn word(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The database a PostgreSQL URL names (its path), else `postgres`.
fn url_database(url: Option<&str>) -> String {
    url.and_then(|u| u.split_once("://").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_once('/').map(|(_, db)| db))
        .map(|db| db.split(['?', '#']).next().unwrap_or_default().to_string())
        .filter(|db| !db.is_empty())
        .unwrap_or_else(|| "postgres".into())
}

impl Gen<'_> {
    fn lb(&self, repo: &str, rest: &str) -> String {
        format!(
            "lifeboat {} {rest}",
            repo_args(&self.config.repositories[repo])
        )
    }

    /// The plan's snapshots in `repo`, newest first (at most `n`), as list
    /// items; or why they are unknown.
    fn snapshot_items(&self, plan: &str, repo: &str, n: usize) -> Vec<String> {
        let tag = crate::run::plan_tag(plan);
        match self.facts.repositories.get(repo) {
            Some(Ok(all)) => {
                let mine: Vec<&SnapshotFact> = all
                    .iter()
                    .rev()
                    .filter(|s| s.tags.contains(&tag))
                    .take(n)
                    .collect();
                if mine.is_empty() {
                    return vec![format!(
                        "repository {repo} holds no snapshot of plan {plan} yet"
                    )];
                }
                mine.iter()
                    .map(|s| {
                        let suspect = if s.tags.iter().any(|t| t == "suspect") {
                            " (tagged `suspect`: taken after files were encrypted?)"
                        } else {
                            ""
                        };
                        format!(
                            "`{}` of {}{suspect}",
                            &s.id[..s.id.len().min(8)],
                            ts(s.time)
                        )
                    })
                    .collect()
            }
            Some(Err(e)) => vec![format!(
                "repository {repo} could not be read when this runbook was generated ({e}); list its snapshots with the command below"
            )],
            None => Vec::new(),
        }
    }

    /// The copy to restore from when this host cannot be trusted or is
    /// gone: immutable first, then offline media, then any off-site role.
    fn safe_copy(&self, plan: &PlanConfig) -> Option<String> {
        let all: Vec<&String> = plan.repositories.iter().chain(&plan.copy_to).collect();
        let r = |n: &String| &self.config.repositories[n.as_str()];
        all.iter()
            .find(|n| r(n).immutable)
            .or_else(|| all.iter().find(|n| r(n).media.is_offline()))
            .or_else(|| all.iter().find(|n| r(n).role.is_offsite()))
            .map(|n| (*n).clone())
    }

    fn header(&mut self, plans: &[(&String, &PlanConfig)]) {
        self.rb.h(1, "Lifeboat runbook");
        self.rb.p(format!(
            "Generated by `lifeboat runbook` from `{}` and the state of its repositories. Regenerate it after every change of the config, and keep a printed copy away from the machines it describes:",
            self.config.path.display()
        ));
        self.rb.code(vec![format!(
            "lifeboat --config {} runbook > lifeboat-runbook.md",
            self.cfg
        )]);
        self.rb
            .p("Every command below can be pasted as is once its placeholders are filled:");
        self.rb.list(
            PLACEHOLDERS
                .iter()
                .map(|(p, what)| format!("`{p}`: {what}"))
                .collect(),
        );
        self.rb.h(2, "First: where things stand");
        self.rb
            .p("Each plan's newest backup against its RPO, its copies and its last restore drill:");
        self.rb
            .code(vec![format!("lifeboat --config {} status", self.cfg)]);
        self.rb.p(format!(
            "Plans in this runbook: {}.",
            plans
                .iter()
                .map(|(n, p)| format!("`{n}` ({})", self.config.sources[&p.source].kind()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    fn repositories(&mut self) {
        self.rb.h(2, "Repositories and their keys");
        let mut items = Vec::new();
        for (name, r) in &self.config.repositories {
            items.push(format!(
                "`{name}`: `{}`, role {}, media {}{}; {}; a copy of the password is kept: {}",
                r.location,
                word(&r.role),
                word(&r.media),
                if r.immutable { ", immutable" } else { "" },
                password_text(r),
                r.password_copy.as_deref().unwrap_or(
                    "NOT DOCUMENTED (set password-copy; `lifeboat doctor` lists this gap)"
                )
            ));
        }
        self.rb.list(items);
        self.rb.h(3, "Lost password");
        self.rb.p("A repository opens with any of its key files; each wraps the same master key under its own password. List them (with a password that still works) to see who can still open it:");
        let names: Vec<String> = self.config.repositories.keys().cloned().collect();
        let cmds = names.iter().map(|n| self.lb(n, "key list")).collect();
        self.rb.code(cmds);
        self.rb.p("The places listed above as \"a copy of the password is kept\" are where to get it back. A repository whose every password is lost cannot be read by anyone: that is the encryption working. Restore from another repository of the plan, then add a new password to every repository that still opens (`key add`) and record where its copy is kept (`password-copy`).");
    }

    fn drill_text(&mut self, name: &str, plan: &PlanConfig) {
        let objective = plan
            .rto
            .map(|d| format!("RTO objective {d}"))
            .unwrap_or_else(|| "no RTO objective set".into());
        match self.facts.drills.get(name) {
            Some(d) => {
                self.rb.p(format!(
                    "Last restore drill: {} ({}), usable copy in {} ({objective}); the drill took {} in all. Expect about this long for a full restore:",
                    ts(d.finished),
                    d.outcome.as_str(),
                    secs(d.rto_ms),
                    secs(d.duration_ms)
                ));
                self.rb.list(
                    d.phases
                        .iter()
                        .map(|p| {
                            format!(
                                "{}: {}{}",
                                p.name,
                                secs(p.ms),
                                if p.rto { "" } else { " (not part of the restore time)" }
                            )
                        })
                        .collect(),
                );
            }
            None => self.rb.p(format!(
                "No restore drill of this plan has run yet ({objective}): how long a restore takes is unknown. Run one (see the end of this section)."
            )),
        }
    }

    fn plan(&mut self, name: &str, plan: &PlanConfig) {
        let source = &self.config.sources[&plan.source];
        self.rb.h(2, format!("Plan `{name}`"));
        let primary = plan.repositories[0].clone();
        let mut items = vec![
            format!(
                "source `{}` ({}): {}",
                plan.source,
                source.kind(),
                match source {
                    SourceConfig::Files { paths, .. } => paths
                        .iter()
                        .map(|p| format!("`{}`", p.display()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    SourceConfig::Postgres { url } => url
                        .as_deref()
                        .map(|u| format!("`{u}`"))
                        .unwrap_or_else(|| "the PG* environment variables".into()),
                }
            ),
            format!(
                "backed up to {}{}; RPO {}",
                plan.repositories
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if plan.copy_to.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", copied to {}",
                        plan.copy_to
                            .iter()
                            .map(|r| format!("`{r}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                plan.rpo
            ),
            format!(
                "its snapshots carry the tag `{}`",
                crate::run::plan_tag(name)
            ),
        ];
        items.push(format!("newest snapshots in `{primary}`:"));
        self.rb.list(items);
        let snaps = self.snapshot_items(name, &primary, 5);
        self.rb.list(snaps);
        self.drill_text(name, plan);
        match source {
            SourceConfig::Files { .. } => self.files(name, plan, &primary),
            SourceConfig::Postgres { url } => self.postgres(name, plan, &primary, url.as_deref()),
        }
        self.rb.h(3, "Afterwards: prove the copy");
        self.rb.p("When the incident is over, run a restore drill: it restores the newest snapshot into a scratch place, checks it, measures the time against the RTO, and cleans up (exit 0: passed).");
        self.rb
            .code(vec![format!("lifeboat --config {} drill {name}", self.cfg)]);
    }

    fn files(&mut self, name: &str, plan: &PlanConfig, primary: &str) {
        let tag = crate::run::plan_tag(name);
        let dir = |s: &str| format!("<RESTORE-DIR>/{name}-{s}");
        self.rb.h(3, "Deleted or encrypted files");
        self.rb.p("Find the files and when they last existed intact: `find` lists every snapshot in which a name appears, changes or disappears; `diff` shows what changed between a good snapshot and the newest. Files encrypted by ransomware show as modified everywhere; `audit log` shows who changed the repository itself.");
        let cmds = vec![
            self.lb(primary, &format!("snapshots --tag {tag}")),
            self.lb(primary, "find <FILE-PATTERN>"),
            self.lb(primary, &format!("diff <SNAPSHOT> latest --tag {tag}")),
            self.lb(primary, "audit log --since 7d"),
        ];
        self.rb.code(cmds);
        self.rb.p("Restore only those files beside the live ones, each checked against the snapshot's content hashes (`--verify`), then copy them into place yourself:");
        let cmds = vec![self.lb(
            primary,
            &format!(
                "restore <SNAPSHOT> --target {} --include <FILE-PATTERN> --verify",
                dir("files")
            ),
        )];
        self.rb.code(cmds);
        let safe = self.safe_copy(plan);
        self.rb.h(3, "Ransomware on this host");
        match &safe {
            Some(s) => {
                let r = &self.config.repositories[s.as_str()];
                self.rb.p(format!(
                    "Do not restore on the infected host, and do not trust a repository it could write to. Set up a clean host, install lifeboat, and put the password of `{s}` into `{}` from where its copy is kept ({}). Then check the copy, pick the newest snapshot from before the encryption (snapshots tagged `suspect` were taken after it), and restore:",
                    match &r.password {
                        PasswordSource::File(f) => f.display().to_string(),
                        _ => "the place its password-command or variable reads".into(),
                    },
                    r.password_copy.as_deref().unwrap_or("not documented")
                ));
                let items = self.snapshot_items(name, s, 5);
                self.rb.list(items);
                let cmds = vec![
                    self.lb(s, "check"),
                    self.lb(s, &format!("snapshots --tag {tag}")),
                    self.lb(
                        s,
                        &format!("restore <SAFE-SNAPSHOT> --target {} --verify", dir("clean")),
                    ),
                ];
                self.rb.code(cmds);
            }
            None => self.rb.p("This plan has no off-site, offline or immutable copy: ransomware that reaches the repository's machine can take the backups too. Add one (`copy-to` a repository with `role = \"offsite\"` or `immutable = true`)."),
        }
        self.lost_host(name, plan);
    }

    fn lost_host(&mut self, name: &str, plan: &PlanConfig) {
        let tag = crate::run::plan_tag(name);
        let away: Vec<String> = plan
            .repositories
            .iter()
            .chain(&plan.copy_to)
            .filter(|n| self.config.repositories[n.as_str()].role.is_offsite())
            .cloned()
            .collect();
        self.rb.h(3, "Lost host or region");
        if away.is_empty() {
            self.rb.p("Every repository of this plan is marked as on-site: losing the site loses the backups. Add an off-site copy.");
            return;
        }
        self.rb.p(format!(
            "Restore from the off-site copies ({}) on a new host. Ask for the restore plan first: it lists the packs to read and which of them are in a cold (archive-class) tier, which must be thawed before the restore can read them (add `--cold-location LOCATION` when the cold tier is reached another way than from the original machine). Removable media must be brought and mounted at the location shown above.",
            away.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
        ));
        let kind_files = matches!(
            self.config.sources[&plan.source],
            SourceConfig::Files { .. }
        );
        for a in away {
            let items = self.snapshot_items(name, &a, 3);
            self.rb.p(format!("From `{a}`:"));
            self.rb.list(items);
            let mut cmds = vec![self.lb(&a, &format!("snapshots --tag {tag}"))];
            if kind_files {
                let target = format!("<RESTORE-DIR>/{name}-{a}");
                cmds.push(self.lb(
                    &a,
                    &format!("restore latest --tag {tag} --target {target} --plan-only"),
                ));
                cmds.push(self.lb(
                    &a,
                    &format!("restore latest --tag {tag} --target {target} --verify"),
                ));
            } else {
                cmds.push(format!(
                    "runuser -u postgres -- {}",
                    self.lb(&a, &format!("pg restore --to <RESTORE-DIR>/{name}-{a}"))
                ));
            }
            self.rb.code(cmds);
        }
        if !kind_files {
            self.rb.p("Without a target, `pg restore` replays every archived WAL file the copy holds (add `--start` to start it, as in the point-in-time section). A copy made by `copy` ends at its last copy; WAL archived into it directly (`archive_command` naming it) is complete.");
        }
    }

    fn postgres(&mut self, name: &str, plan: &PlanConfig, primary: &str, url: Option<&str>) {
        let db_arg = url
            .map(|u| format!(" --db {}", quote(u)))
            .unwrap_or_default();
        let psql_prod = match url {
            Some(u) => format!("psql {}", quote(u)),
            None => "psql".to_string(),
        };
        let db = url_database(url);
        let pitr = format!("<RESTORE-DIR>/{name}-pitr");
        let pg_ctl = self.facts.pg_ctl.display().to_string();
        self.rb
            .h(3, "Bad migration or deleted rows: point-in-time restore");
        self.rb.p("Restore a copy of the database as it was just before the damage, beside production, take the lost rows from it, and put them back. Production keeps running.");
        self.rb.p("1. Does the archive cover the moment you need? `pg check` ends with the point-in-time window: from the oldest base backup to the newest archived WAL. The target must be inside it.");
        self.rb
            .code(vec![self.lb(primary, &format!("pg check{db_arg}"))]);
        self.rb.p("If the target is after the window's end, the WAL holding it has not been archived yet: wait for `archive_timeout` (the server's setting; at most that long on a quiet server) or switch to a new WAL file on the primary now, then check again:");
        self.rb.code(vec![
            format!("{psql_prod} -c 'SELECT pg_switch_wal()'"),
            self.lb(primary, &format!("pg check{db_arg}")),
        ]);
        self.rb.p("2. Pick the target. Take the time from what the application's log shows of the bad statement (the database log has it when `log_min_duration_statement` or `log_statement` is set), converted to UTC. `--target-time` is inclusive: transactions that committed at exactly that instant are kept. So pick a time just before the bad statement, or, when you know the bad transaction's id (`%x` in `log_line_prefix`, or the application's log), stop just before it with `--target-xid <TARGET-XID> --exclusive`. To find that id, list the transactions that ended around the incident, read from the archived WAL (PostgreSQL's `pg_waldump` does the reading): each line shows the transaction id, commit or abort, its time, and the rows it changed per relation (`tablespace/database/relfilenode`; `SELECT relname FROM pg_class WHERE pg_relation_filenode(oid) = N` in that database names one). The bad migration or `DELETE` is the one with many `Heap DELETE` (or `UPDATE`) records on the table in question.");
        self.rb.code(vec![self.lb(
            primary,
            "pg transactions --from <INCIDENT-FROM> --to <INCIDENT-TO>",
        )]);
        self.rb.p(format!(
            "3. Restore beside production. The copy inherits production's settings, `port`, `unix_socket_directories`, `listen_addresses` and the `archive_command` included: give it another port and socket directory, and `archive_mode=off` so it never archives into the repository of the live cluster. `--start` starts the server, waits until recovery reached the target, and leaves it running; its start log is `{pitr}/pg_wal/lifeboat/server-start.log`."
        ));
        self.rb.code(vec![
            format!("runuser -u postgres -- {}", self.lb(primary, &format!("pg restore --to {pitr} --target-time <TARGET-TIME> --set port=<FREE-PORT> --set unix_socket_directories=/tmp --set listen_addresses=localhost --set archive_mode=off --start"))),
            format!("tail -n 20 {pitr}/pg_wal/lifeboat/server-start.log"),
        ]);
        self.rb.p("In that log, lines such as `lifeboat: 00000002.history is not in the repository` are normal: at start and at promotion PostgreSQL asks for files that may not exist (a newer timeline's history, the segment after the last archived one), and \"not there\" is the answer it expects. Errors are lines with `FATAL` or `PANIC`, or a restore that never ends.");
        self.rb.p("With the transaction id instead of a time (into its own directory; add `--set` and `--start` as above to run it):");
        self.rb.code(vec![format!(
            "runuser -u postgres -- {}",
            self.lb(
                primary,
                &format!("pg restore --to <RESTORE-DIR>/{name}-pitr-xid --target-xid <TARGET-XID> --exclusive")
            )
        )]);
        self.rb.p(format!(
            "4. Check the rows and copy them back. Look at them in the copy (port `<FREE-PORT>`, socket in `/tmp`), export the table to CSV, and add to production, in one transaction, the rows it lacks (database `{db}` here; for another database change it in both commands). Rows production still has are left alone; a row whose key production has with other values makes the whole load fail, nothing half-done: settle those by hand."
        ));
        let rescued = format!("<RESTORE-DIR>/{name}-rescued.csv");
        self.rb.code(vec![
            format!("psql -h /tmp -p <FREE-PORT> -U postgres -d {db} -c 'SELECT count(*) FROM <TABLE>'"),
            format!("psql -h /tmp -p <FREE-PORT> -U postgres -d {db} -c '\\copy <TABLE> TO {rescued} CSV'"),
            format!("{psql_prod} --single-transaction -v ON_ERROR_STOP=1 -c 'CREATE TEMP TABLE rescued (LIKE <TABLE>)' -c '\\copy rescued FROM {rescued} CSV' -c 'INSERT INTO <TABLE> SELECT * FROM rescued EXCEPT SELECT * FROM <TABLE>'"),
        ]);
        self.rb
            .p("5. Stop the copy (it keeps running until told) and remove it:");
        self.rb.code(vec![
            format!("runuser -u postgres -- {pg_ctl} stop -D {pitr} -m fast"),
            format!("rm -rf {pitr} <RESTORE-DIR>/{name}-pitr-xid {rescued}"),
        ]);
        self.rb.h(3, "Ransomware on the database host");
        match self.safe_copy(plan) {
            Some(s) => self.rb.p(format!(
                "Restore on a clean host from `{s}` (the password from where its copy is kept, see \"Repositories and their keys\"), as in \"Lost host or region\" below, with `--target-time` before the attack when the attack also changed data."
            )),
            None => self.rb.p("This plan has no off-site, offline or immutable copy: ransomware that reaches the repository's machine can take the backups too. Add one."),
        }
        self.lost_host(name, plan);
        self.rb.h(3, "Failover to a standby");
        self.rb.p("No standby is configured for this plan (the config has no standby setting). A warm standby is a `pg restore --standby` copy that keeps replaying WAL from the repository; failing over to one is `pg_ctl promote -D DIR` (docs/pitr.md).");
    }
}

/// The runbook of every plan, or of `only`.
pub fn generate(config: &Config, only: Option<&str>, facts: &Facts) -> Result<Runbook> {
    let plans: Vec<(&String, &PlanConfig)> = match only {
        Some(p) => {
            let (n, plan) = config
                .plans
                .get_key_value(p)
                .ok_or_else(|| Error::UnknownPlan {
                    name: p.to_string(),
                    config: config.path.clone(),
                    known: config.plans.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
            vec![(n, plan)]
        }
        None => config.plans.iter().collect(),
    };
    let mut g = Gen {
        config,
        facts,
        cfg: quote(&config.path.display().to_string()),
        rb: Runbook::default(),
    };
    g.header(&plans);
    for (name, plan) in &plans {
        g.plan(name, plan);
    }
    g.repositories();
    Ok(g.rb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_leaves_plain_words_and_placeholders() {
        assert_eq!(quote("/srv/backup/repo"), "/srv/backup/repo");
        assert_eq!(quote("<RESTORE-DIR>/x"), "<RESTORE-DIR>/x");
        assert_eq!(quote("pass show x"), "'pass show x'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("a>b"), "'a>b'");
    }

    #[test]
    fn url_database_is_the_path() {
        assert_eq!(url_database(Some("postgresql://u@h:5/app?x=1")), "app");
        assert_eq!(url_database(Some("postgresql://u@h:5")), "postgres");
        assert_eq!(url_database(None), "postgres");
    }

    #[test]
    fn html_escapes_and_keeps_code_spans() {
        let mut rb = Runbook::default();
        rb.p("use `a<b` & more");
        rb.code(vec!["echo '<x>'".into()]);
        let h = rb.html();
        assert!(
            h.contains("<p>use <code>a&lt;b</code> &amp; more</p>"),
            "{h}"
        );
        assert!(h.contains("echo &#39;&lt;x&gt;&#39;"), "{h}");
        assert!(!h.contains("src=") && !h.contains("href="));
    }
}
