//! Keys, salts and nonces come from the operating system's generator
//! (issue 12): a user-space generator that is not reseeded when the process
//! forks (rand 0.9's `ThreadRng` is not) hands the parent and the child the
//! same "random" bytes, and a nonce repeated under the one master key lets
//! forged metadata through. A cloned virtual machine repeats a user-space
//! generator the same way; forking is the clone a test can make.
//!
//! The test warms the generators in the parent (every key, salt and nonce
//! kind drawn at least once), forks, draws one of each in both processes in
//! the same order, and compares. With the generator swapped for
//! `rand::rng()` (done once by hand when this test was written) it fails:
//! the child's nonce, key and salt equal the parent's.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

use lifeboat_repo::{KdfParams, KeyFile, MasterKey};

/// One draw of each kind: the nonce of a sealed message (its first 24
/// bytes), a new master key (seen through the blob id it gives a fixed
/// plaintext, which depends on its secret id key), and a key file's salt.
fn draw(existing: &MasterKey) -> Vec<u8> {
    let mut out = Vec::new();
    let sealed = existing.seal(b"probe", b"aad");
    out.extend_from_slice(&sealed[..24]);
    out.extend_from_slice(&MasterKey::generate().blob_id(b"probe").0);
    let kf = KeyFile::create(existing, b"password", KdfParams::INSECURE_TEST).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&kf.encode()).unwrap();
    let salt = hex::decode(json["kdf"]["salt"].as_str().expect("a salt")).unwrap();
    assert_eq!(salt.len(), 32);
    out.extend_from_slice(&salt);
    out
}

#[test]
fn keys_salts_and_nonces_differ_between_a_forked_child_and_its_parent() {
    let key = MasterKey::generate();
    // Warm every generator a user-space implementation would keep state in.
    for _ in 0..3 {
        let _ = draw(&key);
    }

    let mut fds = [0; 2];
    // SAFETY: plain pipe(2) into a two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: the child only draws (no locks are held by other threads of
    // this test process at this point: nextest runs one test per process),
    // writes to the pipe and leaves with _exit, never returning into the
    // test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let child = draw(&key);
        // SAFETY: the write end is ours; _exit skips the harness.
        unsafe {
            let mut w = std::fs::File::from_raw_fd(write_fd);
            let ok = w.write_all(&child).is_ok();
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    // SAFETY: the child owns its copy of the write end; ours is closed so
    // the read ends when the child exits.
    unsafe { libc::close(write_fd) };
    let parent = draw(&key);
    let mut child = Vec::new();
    // SAFETY: the read end is ours alone.
    let mut r = unsafe { std::fs::File::from_raw_fd(read_fd) };
    r.read_to_end(&mut child).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed"
    );
    assert_eq!(child.len(), parent.len(), "child sent a whole draw");

    for (what, range) in [("nonce", 0..24), ("master key", 24..56), ("salt", 56..88)] {
        assert_ne!(
            parent[range.clone()],
            child[range],
            "the forked child drew the same {what} as its parent: a user-space generator \
             not reseeded on fork"
        );
    }
}
