//! Logical dumps: `pg_dump` streamed into a snapshot, `pg_restore` fed
//! from one.
//!
//! The dump is pg_dump's custom format without compression (`-Fc -Z0`):
//! table data is plain COPY text, so content-defined chunking finds the
//! unchanged parts of yesterday's dump and stores only what changed (a
//! compressed dump changes everywhere after the first changed byte). The
//! repository compresses chunks itself. Custom format keeps `pg_restore`'s
//! selective and `--clean` restores.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;

use lifeboat_repo::{BackupMode, Repository, Snapshot};
use lifeboat_snapshot::backup::StreamOptions;
use lifeboat_snapshot::dump::{stream_file, stream_reader};
use serde::{Deserialize, Serialize};

use super::EXTRA_KEY;
use super::conn::{self, ConnOptions, server_facts};
use crate::stream::store_tool_output;
use crate::{Error, Result};

/// What a dump snapshot records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpInfo {
    /// Always `"dump"`.
    pub kind: String,
    pub database: String,
    pub system_identifier: String,
    pub server_version: String,
    pub format: String,
    pub start_time: jiff::Timestamp,
    pub stop_time: jiff::Timestamp,
}

#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    pub conn: ConnOptions,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub mode: BackupMode,
}

/// Dumps the connection's database into a new snapshot.
pub async fn dump(
    repo: Arc<Repository>,
    options: &DumpOptions,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(Snapshot, DumpInfo)> {
    let client = options.conn.connect().await?;
    let facts = server_facts(&client).await?;
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    drop(client);
    let major = facts.server_version_num / 10000;
    let mut cmd = tokio::process::Command::new(conn::tool("pg_dump", Some(major)));
    cmd.args(options.conn.tool_args())
        .args(["-Fc", "-Z", "0", "--no-password"])
        .env("LC_ALL", "C");
    let start_time = jiff::Timestamp::now();
    let safe_name: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Stored, not yet visible: committed only if pg_dump succeeds.
    let (written, _) = store_tool_output(
        cmd,
        "pg_dump",
        "pg_dump",
        repo,
        &StreamOptions {
            file_name: format!("{safe_name}.pgdump"),
            source: Some(format!(
                "postgresql:{}:dump:{database}",
                facts.system_identifier
            )),
            host: options.host.clone(),
            tags: options.tags.clone(),
            mode: options.mode,
            compression_level: None,
            threads: None,
            dry_run: false,
        },
        on_bytes,
    )
    .await?;
    let info = DumpInfo {
        kind: "dump".into(),
        database,
        system_identifier: facts.system_identifier.to_string(),
        server_version: facts.server_version,
        format: "custom, uncompressed".into(),
        start_time,
        stop_time: jiff::Timestamp::now(),
    };
    let mut extra = BTreeMap::new();
    extra.insert(
        EXTRA_KEY.to_string(),
        serde_json::to_value(&info).expect("serializes"),
    );
    Ok((written.commit(extra).await?.snapshot, info))
}

/// Options of [`restore_dump`].
#[derive(Debug, Clone, Default)]
pub struct RestoreDumpOptions {
    /// The database to restore into (it must exist).
    pub conn: ConnOptions,
    /// Drop objects before recreating them (`pg_restore --clean --if-exists`).
    pub clean: bool,
    /// Skip restoring object ownership (`--no-owner`).
    pub no_owner: bool,
}

/// Feeds a dump snapshot to `pg_restore`.
pub async fn restore_dump(
    repo: Arc<Repository>,
    snapshot: &Snapshot,
    options: &RestoreDumpOptions,
) -> Result<u64> {
    let is_dump = snapshot
        .record
        .extra
        .get(EXTRA_KEY)
        .and_then(|v| v.get("kind"))
        .and_then(|k| k.as_str())
        == Some("dump");
    if !is_dump {
        return Err(Error::BadInput(format!(
            "snapshot {} is not a PostgreSQL dump (made by `lifeboat pg dump`)",
            snapshot.id.short()
        )));
    }
    let node = stream_file(&repo, snapshot).await?;
    let mut cmd = tokio::process::Command::new(conn::tool("pg_restore", None));
    cmd.args(["--no-password", "--exit-on-error", "-Fc"]);
    if options.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if options.no_owner {
        cmd.arg("--no-owner");
    }
    match &options.conn.url {
        Some(u) => cmd.args(["-d", u]),
        None => cmd.args([
            "-d",
            &std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()),
        ]),
    };
    cmd.env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Error::io("pg_restore", e))?;
    let stdin = child.stdin.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let fd = stdin
        .into_owned_fd()
        .map_err(|e| Error::io("pg_restore stdin", e))?;
    let mut reader = stream_reader(repo, &node);
    let copied = tokio::task::spawn_blocking(move || {
        let mut out = std::fs::File::from(fd);
        std::io::copy(&mut reader, &mut out)
    })
    .await
    .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?;
    let status = child.wait().await.map_err(|e| Error::io("pg_restore", e))?;
    let stderr = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(Error::Tool {
            tool: "pg_restore".into(),
            status: status.to_string(),
            stderr: conn::tail(&stderr),
        });
    }
    copied.map_err(|e| Error::io("<dump stream>", e))
}
