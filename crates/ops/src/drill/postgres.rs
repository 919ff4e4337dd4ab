//! The drill of a PostgreSQL plan: point-in-time restore of the plan's
//! cluster into the scratch directory (the end of the WAL archive, or
//! `--at TIME`), started as a throwaway server, checked with `pg_amcheck`
//! over every database and with the plan's probes, then stopped.
//!
//! The throwaway server must not touch production: it inherits the
//! restored `postgresql.auto.conf`, so the drill overrides what would
//! collide with it: `archive_mode = off` (it must not archive into the
//! repository), `port` (a free one), `listen_addresses = ''` (no TCP),
//! `unix_socket_directories` (a directory in the scratch place),
//! `external_pid_file = ''`, and `hba_file` (trust over that private socket
//! only, so the drill's checks can connect whatever production's
//! authentication is). Run as root, the server runs as the `postgres` OS
//! user (`runuser`), which must be able to read the repository and its
//! password file, as for WAL archiving.
//!
//! The marker of the scratch directory names the server's data directory
//! before it starts and its pid once known, so a drill killed at any point
//! leaves a server the next drill stops ([`super::scratch::clean_stale`]).
//!
//! Phases: `open`, `restore` (base backup unpacked, the first WAL fetched),
//! `recovery` (start, WAL replay until promoted): these make the time to a
//! usable copy; then `amcheck`, `probes`, `stop`.

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use lifeboat_connectors::postgres::base::BaseBackupInfo;
use lifeboat_connectors::postgres::conn::{self, shell_quote};
use lifeboat_connectors::postgres::pitr::{self, RecoveryTarget};
use lifeboat_repo::Repository;

use super::scratch::{Scratch, ServerMark, check_space, needed_bytes};
use super::{DrillOptions, Recorder, pick_snapshot};
use crate::config::{Config, PasswordSource, PlanConfig, RepositoryConfig};
use crate::error::{Error, Result};

/// The OS user the server runs as when the drill runs as root.
const SERVER_USER: &str = "postgres";

/// The database user the drill's checks connect as: the bootstrap
/// superuser of a cluster made the usual way.
const CHECK_USER: &str = "postgres";

fn connectors(repository: &str) -> impl FnOnce(lifeboat_connectors::Error) -> Error + '_ {
    move |e| Error::Drill {
        repository: repository.into(),
        message: e.to_string(),
    }
}

/// The `restore_command` of the throwaway server: this binary fetching WAL
/// from the repository, with the repository's password source.
fn restore_command(r: &RepositoryConfig) -> Result<String> {
    let exe = std::env::current_exe().map_err(|source| Error::State {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let mut cmd = String::new();
    if let PasswordSource::Env(var) = &r.password {
        // The server inherits the drill's environment.
        cmd.push_str(&format!("LIFEBOAT_PASSWORD=\"${var}\" "));
    }
    cmd.push_str(&format!(
        "{} -r {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&r.location)
    ));
    match &r.password {
        PasswordSource::File(f) => cmd.push_str(&format!(
            " --password-file {}",
            shell_quote(&f.to_string_lossy())
        )),
        PasswordSource::Command(c) => {
            cmd.push_str(&format!(" --password-command {}", shell_quote(c)))
        }
        PasswordSource::Env(_) => {}
    }
    cmd.push_str(" pg wal-fetch %f %p");
    Ok(cmd)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives `path` (recursively) to the server's OS user when running as
/// root.
fn chown_server(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let st = std::process::Command::new("chown")
        .args(["-R", &format!("{SERVER_USER}:{SERVER_USER}")])
        .arg(path)
        .status()
        .map_err(|source| Error::State {
            path: path.into(),
            source,
        })?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::State {
            path: path.into(),
            source: std::io::Error::other(format!("chown {SERVER_USER} failed ({st})")),
        })
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn drill(
    config: &Config,
    repo: &Arc<Repository>,
    repository: &str,
    plan: &PlanConfig,
    plan_name: &str,
    options: &DrillOptions,
    scratch: &mut Scratch,
    rec: &mut Recorder,
) -> Result<()> {
    let repository = repository.to_string();
    // The plan's newest base backup names the cluster (a repository may
    // hold several).
    let newest = pick_snapshot(repo, &repository, plan_name, options.snapshot.as_deref()).await?;
    let info = BaseBackupInfo::of(&newest).ok_or_else(|| Error::Drill {
        repository: repository.clone(),
        message: format!(
            "snapshot {} of plan {plan_name} is not a PostgreSQL base backup",
            newest.id.short()
        ),
    })?;
    let data = scratch.dir.join("data");
    let sockets = scratch.dir.join("s");
    let hba = scratch.dir.join("pg_hba.drill.conf");
    let port = free_port()?;
    // A Unix socket path is limited to 107 bytes (sun_path).
    if sockets.as_os_str().len() + ".s.PGSQL.65535".len() + 1 > 107 {
        return Err(Error::Drill {
            repository: repository.clone(),
            message: format!(
                "the scratch path {} is too long for PostgreSQL's socket: set plan.{plan_name}.drill.scratch to a shorter directory",
                scratch.dir.display()
            ),
        });
    }
    let target = match options.at {
        Some(t) => RecoveryTarget::Time(t),
        None => RecoveryTarget::Latest,
    };
    let target_time = options.at.unwrap_or_else(Timestamp::now);
    rec.report.target = Some(match options.at {
        Some(t) => t.to_string(),
        None => format!("latest (end of the WAL archive, drill started {target_time})"),
    });
    let p = |s: &Path| s.to_string_lossy().into_owned();
    let opts = pitr::RestoreOptions {
        to: data.clone(),
        target: Some(target),
        snapshot: options.snapshot.as_ref().map(|_| newest.id.to_hex()),
        system_identifier: Some(info.system_id()),
        action: pitr::TargetAction::Promote,
        exclusive: false,
        standby: false,
        restore_command: restore_command(&config.repositories[&repository])?,
        read_ahead: 4,
        settings: vec![
            ("archive_mode".into(), "off".into()),
            ("port".into(), port.to_string()),
            ("listen_addresses".into(), String::new()),
            ("unix_socket_directories".into(), p(&sockets)),
            ("external_pid_file".into(), String::new()),
            ("hba_file".into(), p(&hba)),
        ],
        run_as: is_root().then(|| SERVER_USER.to_string()),
    };
    let planned = pitr::plan(repo, &opts)
        .await
        .map_err(connectors(&repository))?;
    rec.report.snapshot = Some(planned.backup.id.to_hex());
    rec.report.snapshot_time = Some(planned.info.stop_time);
    let sum = &planned.backup.record.summary;
    let needed = needed_bytes(
        sum.total_bytes + planned.wal_segments * planned.info.wal_segment_size,
        sum.total_files,
    );
    let detail = format!("base backup and {} WAL segments", planned.wal_segments);
    if !check_space(rec, scratch, plan_name, needed, "the restore", &detail)? {
        return Ok(());
    }
    rec.phase("open", true);

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::State { path, source }
    };
    std::fs::create_dir(&sockets).map_err(io(&sockets))?;
    std::fs::write(
        &hba,
        "# lifeboat drill: trust on the drill's private socket directory only\nlocal all all trust\n",
    )
    .map_err(io(&hba))?;
    let restored = pitr::restore(repo.clone(), &planned, &opts).await;
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            rec.phase("restore", true);
            rec.fail("restore", e.to_string());
            return Ok(());
        }
    };
    rec.report.restored_bytes = restored.restored_bytes;
    rec.report.restored_files = sum.total_files;
    // A cluster whose configuration lives outside the data directory
    // (Debian's /etc/postgresql) restores without postgresql.conf.
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# written by lifeboat drill: the backup had none\n")
            .map_err(io(&conf))?;
    }
    chown_server(&scratch.dir)?;
    rec.check(
        "restore",
        true,
        format!(
            "base backup {} ({} bytes) restored, WAL {}",
            planned.backup.id.short(),
            restored.restored_bytes,
            match (&planned.wal_first, &planned.wal_last) {
                (Some(f), Some(l)) => format!("{f} .. {l} present"),
                _ => "in the backup".into(),
            }
        ),
    );
    rec.phase("restore", true);

    // Named before the start: a kill during recovery leaves it findable.
    scratch.set_server(Some(ServerMark {
        pid: 0,
        data_dir: data.clone(),
    }))?;
    let started = pitr::start_and_wait(&data, &planned.info, &opts).await;
    if let Some(pid) = server_pid(&data) {
        scratch.set_server(Some(ServerMark {
            pid,
            data_dir: data.clone(),
        }))?;
    }
    rec.phase("recovery", true);
    let checked = match started {
        Err(e) => {
            rec.fail("recovery", e.to_string());
            Ok(())
        }
        Ok(outcome) => {
            rec.check(
                "recovery",
                outcome == pitr::RecoveryOutcome::Promoted,
                format!("recovery ended: {outcome:?}"),
            );
            checks(plan, &planned.info, &sockets, port, target_time, rec).await
        }
    };
    stop(&data, &planned.info);
    scratch.set_server(None)?;
    rec.phase("stop", false);
    checked
}

/// `pg_amcheck` over every database, then the probes.
async fn checks(
    plan: &PlanConfig,
    info: &BaseBackupInfo,
    sockets: &Path,
    port: u16,
    target: Timestamp,
    rec: &mut Recorder,
) -> Result<()> {
    let major = info.server_version_num / 10000;
    let mut cmd = tokio::process::Command::new(conn::tool("pg_amcheck", Some(major)));
    cmd.arg("--all")
        .arg("--install-missing")
        .arg("-h")
        .arg(sockets)
        .arg("-p")
        .arg(port.to_string())
        .arg("-U")
        .arg(CHECK_USER);
    match conn::run_tool(cmd, "pg_amcheck").await {
        Ok(out) if out.trim().is_empty() => {
            rec.check("amcheck", true, "pg_amcheck --all found no corruption")
        }
        Ok(out) => rec.check(
            "amcheck",
            false,
            format!("pg_amcheck: {}", conn::tail(&out)),
        ),
        Err(e) => rec.check("amcheck", false, e.to_string()),
    }
    rec.phase("amcheck", false);

    if !plan.drill.probes.is_empty() {
        let url = format!(
            "host={} port={port} user={CHECK_USER} dbname={} connect_timeout=10",
            sockets.display(),
            plan.drill.probe_database
        );
        match (conn::ConnOptions { url: Some(url) }).connect().await {
            Err(e) => rec.check("probes", false, format!("cannot connect: {e}")),
            Ok(client) => {
                let literal = format!(
                    "'{}'::timestamptz",
                    target.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
                );
                for (i, probe) in plan.drill.probes.iter().enumerate() {
                    let sql = probe.replace("{target}", &literal);
                    let (ok, detail) = match client.query_one(sql.as_str(), &[]).await {
                        Ok(row) => match row.try_get::<_, bool>(0) {
                            Ok(true) => (true, format!("{probe}: true")),
                            Ok(false) => (false, format!("{probe}: false")),
                            Err(e) => (false, format!("{probe}: not a boolean ({e})")),
                        },
                        Err(e) => (false, format!("{probe}: {e}")),
                    };
                    rec.check(&format!("probe-{}", i + 1), ok, detail);
                }
            }
        }
        rec.phase("probes", false);
    }
    Ok(())
}

fn server_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Stops the throwaway server (immediate: its data is thrown away next),
/// and makes sure it is gone.
fn stop(data: &Path, info: &BaseBackupInfo) {
    if server_pid(data).is_none() {
        return;
    }
    let pg_ctl = conn::tool("pg_ctl", Some(info.server_version_num / 10000));
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(pg_ctl);
        c
    } else {
        std::process::Command::new(pg_ctl)
    };
    let _ = cmd
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Some(pid) = server_pid(data) {
        super::scratch::stop_server(&ServerMark {
            pid,
            data_dir: data.to_path_buf(),
        });
    }
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::State {
            path: "127.0.0.1:0".into(),
            source,
        })
}
