//! A real `lifeboat serve` process in front of a local repository, with a
//! full, an append-only and a read-only client: the append-only host
//! backs up and restores, and its `forget`, `prune`, `key remove` and raw
//! HTTP DELETE or overwrite of a pack are refused and logged, even though
//! it holds the repository's full password; the read-only client reads,
//! checks and restores but cannot back up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use common::{Lifeboat, assert_ok, describe, restored, write};

const ADMIN: &str = "admin-token-0123456789abcdef";
const HOST: &str = "host-token-0123456789abcdef";
const AUDITOR: &str = "auditor-token-0123456789abcdef";

struct Served {
    lb: Lifeboat,
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        // Our own child, by its handle (its PID).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start() -> Self {
        let lb = Lifeboat::new();
        let mut specs = Vec::new();
        for (name, role, token) in [
            ("admin", "full", ADMIN),
            ("host1", "append-only", HOST),
            ("auditor", "read-only", AUDITOR),
        ] {
            let file = lb.path(&format!("{name}.token"));
            std::fs::write(&file, format!("{token}\n")).unwrap();
            specs.push(format!("{name}:{role}:{}", file.display()));
        }
        let mut cmd = lb.std_bare_cmd();
        cmd.arg("-r")
            .arg(lb.path("served"))
            .args(["serve", "--listen", "127.0.0.1:0", "--audit-log"])
            .arg(lb.path("refused.log"));
        for s in &specs {
            cmd.arg("--client").arg(s);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lifeboat serve");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .split("on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = stderr.read_to_string(&mut sink);
        });
        let lb = lb.with_repo(
            PathBuf::from(format!("lifeboat+http://{addr}/")),
            common::PASSWORD,
        );
        Served { lb, child, addr }
    }

    fn run(&self, token: &str, args: &[&str]) -> Output {
        self.lb
            .cmd()
            .env("LIFEBOAT_SERVE_TOKEN", token)
            .args(args)
            .output()
            .expect("run lifeboat")
    }

    fn ok(&self, token: &str, args: &[&str]) -> Output {
        let out = self.run(token, args);
        assert_ok(&out, args);
        out
    }

    /// Refused by the server: access denied (exit 12), naming the refusal.
    fn refused(&self, token: &str, args: &[&str]) {
        let out = self.run(token, args);
        assert_eq!(out.status.code(), Some(12), "{args:?}: {}", describe(&out));
        assert!(
            common::stderr(&out).contains("refused:"),
            "{args:?}: {}",
            describe(&out)
        );
    }

    /// A plain HTTP/1.1 request; returns the status code and body.
    fn http(&self, token: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header in {:?}", String::from_utf8_lossy(&answer)));
        let head = String::from_utf8_lossy(&answer[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, answer[end + 4..].to_vec())
    }

    fn snapshot_count(&self) -> usize {
        let out = self.ok(ADMIN, &["snapshots", "--json"]);
        common::parse_json(&out).as_array().unwrap().len()
    }

    fn restore(&self, token: &str, src: &Path, name: &str) {
        let target = self.lb.path(name);
        self.ok(
            token,
            &["restore", "latest", "--target", target.to_str().unwrap()],
        );
        common::assert_same_tree(src, &restored(&target, src));
    }
}

#[test]
fn lifeboat_serve_enforces_append_only_and_read_only_clients() {
    let s = Served::start();
    let src = s.lb.path("src");
    write(src.join("a.txt"), b"alpha\n");
    write(src.join("sub/b.bin"), common::random_bytes(200_000, 3));
    s.ok(ADMIN, &["init"]);
    s.ok(ADMIN, &["backup", src.to_str().unwrap()]);
    let other_pw = s.lb.path("other.pw");
    std::fs::write(&other_pw, "another password").unwrap();
    s.ok(
        ADMIN,
        &[
            "key",
            "add",
            "--new-password-file",
            other_pw.to_str().unwrap(),
        ],
    );

    // The append-only host, with the repository's full password.
    write(src.join("c.txt"), b"gamma\n");
    s.ok(HOST, &["backup", src.to_str().unwrap()]);
    s.restore(HOST, &src, "restored-by-host");
    assert_eq!(s.snapshot_count(), 2);
    let keys = common::parse_json(&s.ok(ADMIN, &["key", "list", "--json"]));
    let other_key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.refused(HOST, &["forget", "--keep-last", "1"]);
    // The forget was logged before its delete; the refusal is logged
    // after it, so the log does not claim a deletion that did not happen.
    let log = common::parse_json(&s.ok(ADMIN, &["audit", "log", "--json"]));
    let ops: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops[ops.len() - 2..], ["forget", "forget-refused"], "{log}");
    let deleted = common::stdout(&s.ok(ADMIN, &["audit", "deleted"]));
    assert!(
        deleted.contains("NOT DELETED: the storage refused"),
        "{deleted}"
    );
    // A pack no index names (as an interrupted backup leaves), so that a
    // prune has something to delete.
    let stray = format!("/v1/data/{}", "f".repeat(64));
    assert_eq!(s.http(ADMIN, "PUT", &stray, b"left over").0, 201);
    s.refused(HOST, &["prune"]);
    assert_eq!(s.http(ADMIN, "GET", &stray, b"").0, 200);
    s.refused(HOST, &["key", "remove", &other_key[..8]]);
    assert_eq!(s.snapshot_count(), 2);

    // Plain HTTP with the host's token: a pack cannot be deleted or
    // overwritten.
    let (status, listing) = s.http(ADMIN, "GET", "/v1/data/", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&listing));
    let listing = String::from_utf8_lossy(&listing).into_owned();
    let pack = listing.split_whitespace().next().unwrap().to_string();
    let path = format!("/v1/data/{pack}");
    let (before_status, before) = s.http(ADMIN, "GET", &path, b"");
    assert_eq!(before_status, 200);
    assert_eq!(s.http(HOST, "DELETE", &path, b"").0, 403);
    assert_eq!(s.http(HOST, "PUT", &path, b"ransomware").0, 409);
    assert_eq!(s.http(ADMIN, "GET", &path, b""), (200, before));

    // The read-only auditor.
    s.ok(AUDITOR, &["snapshots"]);
    s.ok(AUDITOR, &["check", "--read-data"]);
    s.restore(AUDITOR, &src, "restored-by-auditor");
    write(src.join("d.txt"), b"delta\n");
    s.refused(AUDITOR, &["backup", src.to_str().unwrap()]);
    std::fs::remove_file(src.join("d.txt")).unwrap();
    assert_eq!(s.snapshot_count(), 2);

    // Every refusal is in the audit log, and the repository is whole.
    let log = std::fs::read_to_string(s.lb.path("refused.log")).unwrap();
    for want in [
        "client=host1 role=append-only DELETE /v1/snapshots/",
        "client=host1 role=append-only DELETE /v1/keys/",
        format!("client=host1 role=append-only DELETE {path}").as_str(),
        format!("client=host1 role=append-only PUT {path}").as_str(),
        "client=auditor role=read-only PUT /v1/locks/",
    ] {
        assert!(log.contains(want), "{want} not in the audit log:\n{log}");
    }
    s.ok(ADMIN, &["prune"]);
    assert_eq!(s.http(ADMIN, "GET", &stray, b"").0, 404);
    s.ok(ADMIN, &["check", "--read-data"]);
    s.restore(ADMIN, &src, "restored-by-admin");
}
