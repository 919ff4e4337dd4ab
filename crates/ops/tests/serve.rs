//! `lifeboat serve` in-process: a full client passes the storage
//! conformance suite through it, and each role gets exactly what it may
//! (append-only: read, create, delete only its own locks; read-only:
//! read), with every refusal in the audit log. The real server process,
//! driven by the CLI, is tested in `crates/cli/tests/serve.rs`.

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_ops::serve::{Client, ServeConfig, serve};
use lifeboat_repo::Role;
use lifeboat_storage::{
    DynStorage, ErrorKind, HttpOptions, HttpStorage, Kind, LocalStorage, ObjectKey, Storage,
};
use lifeboat_testkit::conformance::{self, run_all};

const ADMIN: &str = "admin-token-0123456789";
const HOST: &str = "host-token-0123456789";
const AUDITOR: &str = "auditor-token-0123456789";

struct Server {
    dir: tempfile::TempDir,
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage: DynStorage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let config = ServeConfig {
        storage,
        clients: vec![
            Client::new("admin", Role::Full, ADMIN),
            Client::new("host1", Role::AppendOnly, HOST),
            Client::new("auditor", Role::ReadOnly, AUDITOR),
        ],
        audit_log: Some(dir.path().join("refused.log")),
    };
    tokio::spawn(serve(listener, config, async {
        let _ = stopped.await;
    }));
    Server {
        dir,
        endpoint,
        stop: Some(stop),
    }
}

async fn client(server: &Server, token: &str) -> HttpStorage {
    let file = server.dir.path().join(format!("{token}.token"));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    HttpStorage::open(HttpOptions {
        endpoint: server.endpoint.clone(),
        token_file: Some(file),
    })
    .await
    .unwrap()
}

fn refused_lines(server: &Server) -> Vec<String> {
    std::fs::read_to_string(server.dir.path().join("refused.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_through_lifeboat_serve_conforms() {
    let server = start().await;
    run_all(Arc::new(client(&server, ADMIN).await)).await;
    // The suite tries overwrites; those (409) are all a full client is
    // refused, and each is logged.
    let lines = refused_lines(&server);
    assert!(!lines.is_empty());
    for line in lines {
        assert!(line.contains("is never overwritten"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_what_it_may_and_every_refusal_is_logged() {
    let server = start().await;
    let admin = client(&server, ADMIN).await;
    let host = client(&server, HOST).await;
    let auditor = client(&server, AUDITOR).await;
    admin.create_root().await.unwrap();
    let pack = conformance::key(Kind::Packs, 0xab00_0000_0000_0001);
    let record = conformance::key(Kind::Snapshots, 7);
    admin
        .put(&record, Bytes::from_static(b"record"))
        .await
        .unwrap();

    // The append-only host reads and creates...
    host.put(&pack, Bytes::from_static(b"pack")).await.unwrap();
    assert_eq!(&host.get(&record).await.unwrap()[..], b"record");
    assert_eq!(host.list(Kind::Packs).await.unwrap().len(), 1);
    // ...never overwrites or deletes (its own pack included)...
    let overwrite = host.put(&pack, Bytes::from_static(b"evil")).await;
    assert_eq!(overwrite.unwrap_err().kind(), ErrorKind::AlreadyExists);
    for key in [&pack, &record, &ObjectKey::config()] {
        let e = host.delete(key).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{key}: {e}");
    }
    assert_eq!(&admin.get(&pack).await.unwrap()[..], b"pack");
    // ...and deletes only the lock objects it created.
    let mine = conformance::key(Kind::Locks, 1);
    let theirs = conformance::key(Kind::Locks, 2);
    host.put(&mine, Bytes::from_static(b"lock")).await.unwrap();
    admin
        .put(&theirs, Bytes::from_static(b"lock"))
        .await
        .unwrap();
    host.delete(&mine).await.unwrap();
    assert_eq!(admin.stat(&mine).await.unwrap(), None);
    let e = host.delete(&theirs).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // The read-only auditor reads only.
    assert_eq!(&auditor.get(&pack).await.unwrap()[..], b"pack");
    let e = auditor
        .put(&conformance::key(Kind::Locks, 3), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = auditor.delete(&pack).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // A wrong token opens nothing.
    let bad = server.dir.path().join("bad.token");
    std::fs::write(&bad, "not-a-token-of-this-server").unwrap();
    let e = HttpStorage::open(HttpOptions {
        endpoint: server.endpoint.clone(),
        token_file: Some(bad),
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // The full client may do all of it.
    admin.delete(&theirs).await.unwrap();
    admin.delete(&pack).await.unwrap();

    let lines = refused_lines(&server);
    let expect = [
        "client=host1 role=append-only PUT /v1/data/",
        "client=host1 role=append-only DELETE /v1/data/",
        "client=host1 role=append-only DELETE /v1/snapshots/",
        "client=host1 role=append-only DELETE /v1/config/config",
        "client=host1 role=append-only DELETE /v1/locks/",
        "client=auditor role=read-only PUT /v1/locks/",
        "client=auditor role=read-only DELETE /v1/data/",
        "client=- role=- GET /v1",
    ];
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(
            line.contains(want) && line.contains("refused"),
            "{line} !~ {want}"
        );
    }
}
