//! A small tmpfs mounted for one test, so full-disk behaviour can be
//! tested for real.
//!
//! Owns mounting, the skip-or-fail decision when mounting is not permitted
//! (the same [`crate::services::in_ci`] rule as every other test
//! dependency) and unmounting on drop. It does not fill the filesystem.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily if still busy) when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size` (e.g. "4m") on it.
    /// Returns `None` after printing a skip notice for `test` where mounting
    /// is not permitted (not root, no mount namespace); panics instead when
    /// [`crate::services::in_ci`], because CI must run these tests.
    pub fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        // Trying is the test for permission: mount(8) refuses non-root users
        // and unprivileged containers alike, with a message saying why.
        let result = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
                }
            });
        match result {
            Ok(()) => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Err(why) => {
                if crate::services::in_ci() {
                    panic!("{test}: cannot mount a tmpfs ({why}), and CI must run this test");
                }
                eprintln!("SKIP {test}: cannot mount a tmpfs: {why}");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.dir).status().is_ok_and(|s| s.success())
        };
        if !unmount(false) {
            // Something still has it open; detach so the temp dir can go.
            unmount(true);
        }
    }
}
