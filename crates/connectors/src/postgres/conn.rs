//! Connecting to PostgreSQL and finding its tools.
//!
//! Connection settings come from a URL (`postgresql://user@host:port/db`)
//! or, without one, from the usual libpq environment variables (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`), which the vendor tools
//! read themselves. Tools are looked up in `LIFEBOAT_PG_BIN`, then in
//! `/usr/lib/postgresql/<major>/bin` (Debian and Ubuntu keep `pg_ctl`
//! there, outside `PATH`), then in `PATH`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::{Error, Result};

/// Where the server is.
#[derive(Debug, Clone, Default)]
pub struct ConnOptions {
    /// A libpq connection URL or `key=value` string; `None`: PG* variables.
    pub url: Option<String>,
}

impl ConnOptions {
    /// Arguments that pass the same connection to a libpq tool.
    pub fn tool_args(&self) -> Vec<String> {
        match &self.url {
            Some(u) => vec!["-d".into(), u.clone()],
            None => vec![],
        }
    }

    fn config(&self) -> Result<tokio_postgres::Config> {
        let s = match &self.url {
            Some(u) => u.clone(),
            None => env_conninfo(),
        };
        tokio_postgres::Config::from_str(&s)
            .map_err(|e| Error::BadInput(format!("bad PostgreSQL connection settings: {e}")))
    }

    /// Opens a connection; the connection task runs on the current runtime.
    pub async fn connect(&self) -> Result<Client> {
        let (client, conn) = self.config()?.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("postgres connection ended: {e}");
            }
        });
        Ok(client)
    }
}

/// A `key=value` connection string from the libpq environment variables,
/// with libpq's defaults (Debian's socket directory, the OS user name).
fn env_conninfo() -> String {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let user = get("PGUSER")
        .or_else(|| get("USER"))
        .unwrap_or_else(|| "postgres".into());
    let mut parts = vec![
        format!(
            "host={}",
            quote(&get("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into()))
        ),
        format!(
            "port={}",
            quote(&get("PGPORT").unwrap_or_else(|| "5432".into()))
        ),
        format!("user={}", quote(&user)),
        format!(
            "dbname={}",
            quote(&get("PGDATABASE").unwrap_or(user.clone()))
        ),
    ];
    if let Some(p) = get("PGPASSWORD") {
        parts.push(format!("password={}", quote(&p)));
    }
    parts.join(" ")
}

/// The path of a PostgreSQL tool, preferring the one of `major`.
pub fn tool(name: &str, major: Option<u32>) -> PathBuf {
    if let Ok(dir) = std::env::var("LIFEBOAT_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut majors: Vec<u32> = match major {
        Some(m) => vec![m],
        None => installed_majors(),
    };
    majors.sort_unstable_by(|a, b| b.cmp(a));
    for m in majors {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{m}/bin/{name}"));
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn installed_majors() -> Vec<u32> {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a running server says about itself.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub system_identifier: u64,
    pub server_version: String,
    pub server_version_num: u32,
    pub timeline: u32,
    pub wal_segment_size: u64,
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: String,
    pub archive_timeout_s: u64,
}

pub async fn server_facts(client: &Client) -> Result<ServerFacts> {
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    current_setting('server_version'), \
                    current_setting('server_version_num')::int, \
                    (SELECT timeline_id FROM pg_control_checkpoint()), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    current_setting('wal_level'), current_setting('archive_mode'), \
                    current_setting('archive_command'), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'archive_timeout')",
            &[],
        )
        .await?;
    let sysid: String = row.get(0);
    Ok(ServerFacts {
        system_identifier: sysid
            .parse()
            .map_err(|_| Error::BadInput(format!("bad system identifier {sysid:?}")))?,
        server_version: row.get(1),
        server_version_num: row.get::<_, i32>(2) as u32,
        timeline: row.get::<_, i32>(3) as u32,
        wal_segment_size: row.get::<_, i64>(4) as u64,
        wal_level: row.get(5),
        archive_mode: row.get(6),
        archive_command: row.get(7),
        archive_timeout_s: row.get::<_, i64>(8) as u64,
    })
}

/// The system identifier of a data directory, from `global/pg_control`
/// (its first field, a native-endian u64), without a server.
pub fn system_identifier_of(pgdata: &Path) -> Result<u64> {
    let path = pgdata.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::BadInput(format!("{} is too short", path.display())))?;
    Ok(u64::from_ne_bytes(first))
}

/// Runs a tool to completion; a failure carries the tail of its stderr.
pub async fn run_tool(mut cmd: tokio::process::Command, what: &str) -> Result<String> {
    cmd.env("LC_ALL", "C");
    let out = cmd.output().await.map_err(|e| Error::io(what, e))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(Error::Tool {
            tool: what.into(),
            status: out.status.to_string(),
            stderr: tail(&stderr),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last lines of a tool's stderr, for an error message.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}
