//! Running a command that must succeed, for tests that drive a binary,
//! and a child process that cannot outlive its test.
//!
//! Owns only the "run, and panic with everything it printed unless it
//! exited 0" step and the "kill on drop" guard; how a test builds its
//! command (binary, environment, repository) stays with the test.

use std::process::{Child, Command};

/// A child process (a daemon, a server) killed and reaped when dropped,
/// so a test that fails half-way leaves nothing running. Dropping one
/// that has already exited does nothing.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to completion and returns its stdout; panics with the
/// command, its status, stdout and stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
