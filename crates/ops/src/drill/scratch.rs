//! The scratch place of a drill: a directory `lifeboat-drill-<plan>-<id>`
//! under the plan's `drill.scratch` (default `<state-dir>/drills`), marked
//! by a JSON file `.lifeboat-drill` written before anything else, so a
//! drill killed at any moment leaves a directory the next drill recognises
//! and removes. The marker names the server a PostgreSQL drill started
//! (its pid and data directory), so the next drill stops it first.
//!
//! A directory is stale when its plan's drill lock can be taken: the
//! drill that made it is gone (the kernel releases a flock with its
//! process). The drill of the same plan holds that lock itself, so every
//! directory of its own plan is stale. Space is checked before the drill
//! writes: a drill refuses to start when the filesystem lacks room for the
//! snapshot.

use std::fs;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Recorder;
use crate::error::{Error, Result};
use crate::state::StateDir;

const PREFIX: &str = "lifeboat-drill-";
pub(crate) const MARKER: &str = ".lifeboat-drill";

/// A server a drill started, to be stopped if the drill dies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMark {
    pub pid: i32,
    pub data_dir: PathBuf,
}

/// The content of a scratch directory's marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub plan: String,
    pub drill: String,
    pub pid: u32,
    pub started: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerMark>,
}

/// The name of the lock a plan's drills hold (beside the plan's run lock,
/// so a drill and a backup of one plan may run at once, two drills not).
pub(crate) fn lock_name(plan: &str) -> String {
    // '.' cannot occur in a plan name: no clash with another plan's lock.
    format!("{plan}.drill")
}

/// A live scratch directory; [`Scratch::remove`] deletes it.
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
    marker: Marker,
}

impl Scratch {
    /// Creates `<root>/lifeboat-drill-<plan>-<id>` and its marker (synced).
    pub fn create(root: &Path, plan: &str, id: &str) -> Result<Scratch> {
        let dir = root.join(format!("{PREFIX}{plan}-{id}"));
        fs::create_dir_all(root).map_err(io(root))?;
        fs::create_dir(&dir).map_err(io(&dir))?;
        let marker = Marker {
            plan: plan.into(),
            drill: id.into(),
            pid: std::process::id(),
            started: Timestamp::now(),
            server: None,
        };
        let s = Scratch { dir, marker };
        s.write_marker()?;
        fs::File::open(root)
            .and_then(|d| d.sync_all())
            .map_err(io(root))?;
        Ok(s)
    }

    fn write_marker(&self) -> Result<()> {
        crate::state::write_atomic(
            &self.dir.join(MARKER),
            &serde_json::to_vec_pretty(&self.marker).expect("markers serialize"),
        )
    }

    /// Records the server this drill started (before it is started, so a
    /// kill right after the start still leaves its data directory named;
    /// the pid is filled in once known).
    pub fn set_server(&mut self, server: Option<ServerMark>) -> Result<()> {
        self.marker.server = server;
        self.write_marker()
    }

    /// Deletes the directory and everything in it.
    pub fn remove(self) -> Result<()> {
        force_remove(&self.dir)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes `dir`, making directories writable first when a plain removal
/// is refused (a restored read-only directory, for a user who is not
/// root).
pub(crate) fn force_remove(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(dir);
            fs::remove_dir_all(dir).map_err(io(dir))
        }
        Err(e) => Err(io(dir)(e)),
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// What [`clean_stale`] removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cleaned {
    /// Scratch directories removed.
    pub dirs: Vec<PathBuf>,
    /// Servers stopped (pids).
    pub servers: Vec<i32>,
}

/// Removes the scratch directories under `root` left by drills that are
/// gone, stopping the servers they started. `plan`'s own drill lock must
/// be held by the caller.
pub fn clean_stale(root: &Path, plan: &str, state: &StateDir) -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cleaned),
        Err(e) => return Err(io(root)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let path = e.path();
        let marker: Option<Marker> = fs::read(path.join(MARKER))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // The plan is in the marker, or (killed before the marker was
        // written) in the name: `<plan>-<16 hex digits>`.
        let owner = marker.as_ref().map(|m| m.plan.clone()).or_else(|| {
            rest.rsplit_once('-')
                .map(|(p, _)| p.to_string())
                .filter(|p| !p.is_empty())
        });
        let Some(owner) = owner else { continue };
        // Another plan's directory is stale only when no drill of that
        // plan runs: its lock is free (held only while we look).
        let _other_lock = if owner == plan {
            None
        } else {
            match state.lock_plan(&lock_name(&owner))? {
                Some(l) => Some(l),
                None => continue,
            }
        };
        if let Some(server) = marker.as_ref().and_then(|m| m.server.as_ref())
            && stop_server(server)
        {
            cleaned.servers.push(server.pid);
        }
        force_remove(&path)?;
        tracing::info!(
            "removed the scratch directory of an interrupted drill: {}",
            path.display()
        );
        cleaned.dirs.push(path);
    }
    Ok(cleaned)
}

/// Stops a server a killed drill left running: only when the pid is
/// still a `postgres` process serving that data directory (pids are
/// reused). SIGQUIT is PostgreSQL's immediate shutdown; SIGKILL follows if
/// it is still there after a minute. Returns whether one was stopped.
pub(crate) fn stop_server(server: &ServerMark) -> bool {
    let serves = |pid: i32| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        text.contains("postgres") && text.contains(&*server.data_dir.to_string_lossy())
    };
    // kill(1): the signal API of `nix` is a feature this workspace does
    // not build, and `unsafe` is forbidden.
    let signal = |sig: &str, pid: i32| {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    };
    // The pid in postmaster.pid is the authority (the marker's may be from
    // before the server wrote it).
    let pid = fs::read_to_string(server.data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .filter(|p| serves(*p))
        .or(Some(server.pid).filter(|p| *p > 0 && serves(*p)));
    let Some(pid) = pid else { return false };
    signal("-QUIT", pid);
    for _ in 0..600 {
        if !serves(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    signal("-KILL", pid);
    true
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| io(dir)(std::io::Error::from(e)))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The drill's `scratch-space` check: whether the filesystem holding
/// `scratch` has the `needed` bytes free for `what` (named in the failure
/// with its `detail`: "the snapshot", "3 files, 1200 bytes"). Without
/// room the open phase ends and the check fails saying what to do; the
/// answer is whether the drill may go on.
pub(super) fn check_space(
    rec: &mut Recorder,
    scratch: &Scratch,
    plan: &str,
    needed: u64,
    what: &str,
    detail: &str,
) -> Result<bool> {
    let free = free_bytes(&scratch.dir)?;
    if free < needed {
        rec.phase("open", true);
        rec.fail(
            "scratch-space",
            format!(
                "{} has {free} bytes free, {what} needs {needed} ({detail}): free space there or set plan.{plan}.drill.scratch to a larger place",
                scratch.dir.display(),
            ),
        );
        return Ok(false);
    }
    rec.check(
        "scratch-space",
        true,
        format!("{free} bytes free, {needed} needed"),
    );
    Ok(true)
}

/// Space a restore of `bytes` in `files` files needs: the data plus up to
/// one 4 KiB block lost per file to rounding.
pub fn needed_bytes(bytes: u64, files: u64) -> u64 {
    bytes + files * 4096
}
