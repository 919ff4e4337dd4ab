//! Keys, salts and nonces must differ between a process and its `fork`
//! (issue 12, docs/security.md §5): a user-space generator copied by
//! `fork(2)` (or a cloned virtual machine) hands parent and child the same
//! "random" bytes, and one repeated nonce under the master key lets forged
//! metadata through.
//!
//! The test warms every generator the crate uses, forks, draws the same
//! things in both processes and compares them. It calls `fork` itself, so
//! it is the workspace's one documented exception to `unsafe_code = "deny"`
//! (docs/architecture.md, "Unsafe code"). Nextest runs each test in its own
//! process, so the only other thread is the harness's, which is blocked
//! waiting for this test and holds no lock the child could need.
#![allow(unsafe_code)]

use std::io::{Read, Write};

use lifeboat_repo::{MasterKey, os_random};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe};

/// What one process draws after the fork: a bare draw, a fresh master key's
/// blob-id of a fixed plaintext (so its id key), and a message sealed under
/// a key both processes share (so its nonce).
fn draws(shared: &MasterKey) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&os_random::<32>());
    out.extend_from_slice(&MasterKey::generate().blob_id(b"same plaintext").0);
    out.extend_from_slice(&shared.seal(b"same plaintext", b"same aad"));
    out
}

#[test]
fn parent_and_child_of_a_fork_draw_different_keys_and_nonces() {
    let shared = MasterKey::generate();
    // Warm every generator: whatever state a user-space generator keeps is
    // now set up in the parent and copied into the child.
    for _ in 0..4 {
        draws(&shared);
        let _ = rand::random::<u64>();
    }
    let (read_end, write_end) = pipe().expect("pipe");
    // SAFETY: the child only computes, writes to a pipe it owns and calls
    // _exit; see the module comment for the threads.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            let mut pipe = std::fs::File::from(write_end);
            let ok = pipe.write_all(&draws(&shared)).is_ok();
            drop(pipe);
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or the test harness's shutdown.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let parent = draws(&shared);
            let mut from_child = Vec::new();
            std::fs::File::from(read_end)
                .read_to_end(&mut from_child)
                .expect("read the child's draws");
            assert_eq!(
                waitpid(child, None).expect("wait for the child"),
                WaitStatus::Exited(child, 0)
            );
            assert_eq!(
                from_child.len(),
                parent.len(),
                "the child wrote all its draws"
            );
            let (p, c) = (&parent, &from_child);
            assert_ne!(p[..32], c[..32], "os_random repeated across fork");
            assert_ne!(
                p[32..64],
                c[32..64],
                "MasterKey::generate repeated across fork"
            );
            assert_ne!(
                p[64..],
                c[64..],
                "a sealed message's nonce repeated across fork"
            );
        }
    }
}
