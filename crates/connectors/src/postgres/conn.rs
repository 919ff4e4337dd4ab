//! Connecting to PostgreSQL and finding its tools.
//!
//! Connection settings come from a URL (`postgresql://user@host:port/db`,
//! with an empty host for the default socket, or `?host=/socket/dir`) or a
//! `key=value` string, as libpq takes them; what it leaves out comes from
//! the usual libpq environment variables (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`), which the vendor tools read themselves,
//! then libpq's defaults. Tools are looked up in `LIFEBOAT_PG_BIN`, then in
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
        config_with(self.url.as_deref(), |k| std::env::var(k).ok())
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

/// libpq's compiled-in socket directory: Debian's, else upstream's.
fn default_socket_dir() -> &'static str {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql"
    } else {
        "/tmp"
    }
}

/// Parses `conn` (a URL or a `key=value` string, as libpq takes them) and
/// fills what it leaves out as libpq does: from `PGHOST`, `PGPORT`,
/// `PGUSER`, `PGPASSWORD`, `PGDATABASE` (read through `env`), then libpq's
/// defaults. So `postgresql://postgres@/postgres` (an empty host) means the
/// default socket directory, as it does for psql.
fn config_with(
    conn: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<tokio_postgres::Config> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut config = match conn {
        Some(c) => tokio_postgres::Config::from_str(c).map_err(|e| {
            Error::BadInput(format!(
                "bad PostgreSQL connection settings {c:?}: {e} (use a URL like \
                 postgresql://user@host:port/db or key=value pairs like \"host=/var/run/postgresql dbname=app\")"
            ))
        })?,
        None => tokio_postgres::Config::new(),
    };
    if config.get_hosts().is_empty() {
        let hosts = get("PGHOST").unwrap_or_else(|| default_socket_dir().to_string());
        for h in hosts.split(',') {
            if h.starts_with('/') {
                config.host_path(h);
            } else {
                config.host(h);
            }
        }
    }
    if config.get_ports().is_empty() {
        let ports = get("PGPORT").unwrap_or_else(|| "5432".into());
        for p in ports.split(',') {
            let port = p.trim().parse().map_err(|_| {
                Error::BadInput(format!("bad PGPORT {ports:?}: expected a port number"))
            })?;
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        let user = get("PGUSER")
            .or_else(|| get("USER"))
            .unwrap_or_else(|| "postgres".into());
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let db =
            get("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("postgres").into());
        config.dbname(&db);
    }
    if config.get_password().is_none()
        && let Some(p) = get("PGPASSWORD")
    {
        config.password(p);
    }
    Ok(config)
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
    /// The page size relation files are arrays of (8192 unless the server
    /// was compiled otherwise).
    pub block_size: u32,
    /// The server is a standby (in recovery).
    pub standby: bool,
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
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'archive_timeout'), \
                    current_setting('block_size')::int, pg_is_in_recovery()",
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
        block_size: row.get::<_, i32>(9) as u32,
        standby: row.get(10),
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

/// `s` as one word for `sh` (single quotes; a quote inside closed, escaped
/// and reopened), for commands PostgreSQL runs (`restore_command`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The last lines of a tool's stderr, for an error message.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn hosts(c: &tokio_postgres::Config) -> Vec<String> {
        c.get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn regression_url_with_an_empty_host_was_invalid_configuration() {
        // The README's form: libpq reads the empty host as the default
        // socket; the connection failed with "invalid configuration".
        let c = config_with(Some("postgresql://postgres@/postgres"), no_env).unwrap();
        assert_eq!(hosts(&c), vec![default_socket_dir().to_string()]);
        assert_eq!(c.get_ports(), &[5432]);
        assert_eq!(c.get_user(), Some("postgres"));
        assert_eq!(c.get_dbname(), Some("postgres"));
    }

    #[test]
    fn every_libpq_form_names_the_same_server() {
        for conn in [
            "postgresql:///app?host=/srv/sock&user=alice",
            "postgres://alice@%2Fsrv%2Fsock/app",
            "host=/srv/sock user=alice dbname=app",
            "dbname=app user=alice host=/srv/sock port=5432",
        ] {
            let c = config_with(Some(conn), no_env).unwrap();
            assert_eq!(hosts(&c), vec!["/srv/sock".to_string()], "{conn}");
            assert_eq!(c.get_ports(), &[5432], "{conn}");
            assert_eq!(c.get_user(), Some("alice"), "{conn}");
            assert_eq!(c.get_dbname(), Some("app"), "{conn}");
        }
    }

    #[test]
    fn what_the_string_leaves_out_comes_from_pg_variables() {
        let env = |k: &str| {
            Some(match k {
                "PGHOST" => "db.example.com".to_string(),
                "PGPORT" => "5433".to_string(),
                "PGUSER" => "bob".to_string(),
                "PGDATABASE" => "sales".to_string(),
                "PGPASSWORD" => "s3cret".to_string(),
                _ => return None,
            })
        };
        let c = config_with(None, env).unwrap();
        assert_eq!(hosts(&c), vec!["db.example.com".to_string()]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("bob"));
        assert_eq!(c.get_dbname(), Some("sales"));
        assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
        // The string's own settings win over the variables.
        let c = config_with(Some("postgresql://carol@/hr"), env).unwrap();
        assert_eq!(hosts(&c), vec!["db.example.com".to_string()]);
        assert_eq!(c.get_user(), Some("carol"));
        assert_eq!(c.get_dbname(), Some("hr"));
        // dbname defaults to the user name.
        let c = config_with(Some("user=dave"), no_env).unwrap();
        assert_eq!(c.get_dbname(), Some("dave"));
    }

    #[test]
    fn a_malformed_string_is_bad_input() {
        let e = config_with(Some("postgresql://x@/db?port=notaport"), no_env).unwrap_err();
        assert!(matches!(e, Error::BadInput(_)), "{e}");
    }
}
