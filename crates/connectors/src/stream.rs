//! A vendor tool's standard output stored as a pending stream snapshot.
//!
//! This is the connector-specific part of a stream backup: spawning the
//! tool, collecting its stderr (where its report and its errors are), and
//! refusing the snapshot when the tool fails. Chunking and storing the
//! bytes, the snapshot record and the commit are `lifeboat-snapshot`'s
//! stream path ([`backup_stream_pending`]); the caller commits the returned
//! [`PendingBackup`] with its own data once it has read the tool's report.

use std::process::Stdio;
use std::sync::Arc;

use lifeboat_repo::Repository;
use lifeboat_snapshot::backup::{PendingBackup, StreamOptions, backup_stream_pending};

use crate::postgres::BytesProgress;
use crate::postgres::conn;
use crate::{Error, Result};

/// Runs `cmd` (named `tool` in errors; `spawn_what` names it if it cannot
/// be started) and stores its standard output as a pending stream
/// snapshot. Returns the pending snapshot and the tool's stderr, or the
/// tool's failure (exit status and the tail of its stderr), which takes
/// precedence over a storage error: a tool that fails usually made the
/// stream end early. Dropping the pending snapshot leaves only
/// unreferenced blobs.
pub(crate) async fn store_tool_output(
    mut cmd: tokio::process::Command,
    tool: &str,
    spawn_what: &str,
    repo: Arc<Repository>,
    options: &StreamOptions,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(PendingBackup, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Error::io(spawn_what, e))?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    // The chunker reads synchronously on a blocking thread.
    let fd = stdout
        .into_owned_fd()
        .map_err(|e| Error::io(format!("{tool} stdout"), e))?;
    let written = backup_stream_pending(
        repo,
        std::fs::File::from(fd),
        options,
        Arc::new(BytesProgress(on_bytes)),
    )
    .await;
    let status = child.wait().await.map_err(|e| Error::io(tool, e))?;
    let stderr = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(Error::Tool {
            tool: tool.into(),
            status: status.to_string(),
            stderr: conn::tail(&stderr),
        });
    }
    Ok((written?, stderr))
}
