//! `dump`: a file to stdout, a directory as a tar stream, and a reader
//! that stops early (`dump | head`) ends it quietly.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::*;

#[test]
fn regression_dump_into_a_closed_pipe_reported_an_error() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("big.bin"), random_bytes(8 << 20, 7));
    lb.backup(&[&src], &[]);
    let mut child = lb
        .std_cmd()
        .args(["dump", "latest"])
        .arg(src.join("big.bin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What `head -c 100` does: read a little, then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn dump_of_a_directory_writes_a_tar_stream() {
    let lb = Lifeboat::init();
    let src = lb.path("src");
    write(src.join("a.txt"), "hello\n");
    write(src.join("sub/deep/b.bin"), random_bytes(300_000, 3));
    write(src.join("sub/empty"), "");
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    lb.backup(&[&src], &[]);

    let out = lb.ok([
        std::ffi::OsStr::new("dump"),
        "latest".as_ref(),
        src.as_os_str(),
    ]);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut seen = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let kind = entry.header().entry_type();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let link = entry.link_name().unwrap().map(|l| l.display().to_string());
        seen.insert(path, (kind, data, link));
    }
    let name = src.file_name().unwrap().to_str().unwrap();
    let file = |rel: &str| &seen[&format!("{name}/{rel}")];
    assert!(seen[name].0.is_dir(), "{:?}", seen.keys());
    assert_eq!(file("a.txt").1, b"hello\n");
    assert_eq!(file("sub/deep/b.bin").1, random_bytes(300_000, 3));
    assert!(file("sub/empty").1.is_empty());
    assert!(file("sub").0.is_dir());
    assert!(file("link").0.is_symlink());
    assert_eq!(file("link").2.as_deref(), Some("a.txt"));
    assert_eq!(seen.len(), 7, "{:?}", seen.keys());
}
