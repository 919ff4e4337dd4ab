//! Writes the fuzz seed corpus (`fuzz/corpus/<target>/`) from real encoded
//! objects: a small repository is created in memory, and every kind of
//! object it holds is saved in the form each fuzz target reads (see
//! `fuzz/fuzz_targets/common.rs`: a mode byte, then either the stored
//! object or the plaintext behind its encryption).
//!
//! Run: `cargo run -p lifeboat-repo --example fuzz_corpus -- fuzz/corpus`

use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::fuzzing::parse_pack;
use lifeboat_repo::lock::{LockInfo, LockKind};
use lifeboat_repo::{
    BackupMode, BlobType, IndexFile, InitOptions, KdfParams, KeyFile, MasterKey, Node, NodeKind,
    Repository, SnapshotRecord, Time, Tree, WriteOptions, WriteSession,
};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, Storage};

fn save(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn node(name: &str, kind: NodeKind) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        user: Some("ann".into()),
        group: None,
        mtime: Time {
            secs: 1_700_000_000,
            nanos: 500,
        },
        ctime: Time { secs: -2, nanos: 0 },
        dev: 2049,
        inode: 131,
        links: 1,
        size: 0,
        content: vec![],
        subtree: None,
        link_target: None,
        xattrs: vec![],
    }
}

#[tokio::main]
async fn main() {
    let out = std::env::args().nth(1).expect("usage: fuzz_corpus DIR");
    let out = Path::new(&out);
    let mem = MemoryStorage::new();
    let storage: DynStorage = Arc::new(mem.clone());
    let repo = Arc::new(
        Repository::init(
            storage,
            b"password",
            InitOptions {
                kdf: KdfParams::INSECURE_TEST,
                pack_size: 1024 * 1024,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let key = repo.key();

    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let text = b"hello hello hello hello hello, compressible text".repeat(20);
    let a = session.add_blob(BlobType::Data, &text).await.unwrap().id;
    let b = session
        .add_blob(BlobType::Data, &(0..=255u8).collect::<Vec<_>>())
        .await
        .unwrap()
        .id;
    let mut file = node("notes.txt", NodeKind::File);
    file.size = text.len() as u64 + 256;
    file.content = vec![a, b];
    file.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    let mut link = node("link", NodeKind::Symlink);
    link.link_target = Some(b"notes.txt".to_vec());
    let sub = Tree {
        nodes: vec![link, file],
    };
    let sub_id = session
        .add_blob(BlobType::Tree, &sub.encode())
        .await
        .unwrap()
        .id;
    let mut dir = node("home", NodeKind::Dir);
    dir.subtree = Some(sub_id);
    let root = Tree { nodes: vec![dir] };
    let root_id = session
        .add_blob(BlobType::Tree, &root.encode())
        .await
        .unwrap()
        .id;
    let mut record = SnapshotRecord {
        time: "2025-01-31T09:12:44Z".parse().unwrap(),
        host: "laptop".into(),
        user: "ann".into(),
        paths: vec!["/home".into()],
        tags: vec!["daily".into()],
        tree: root_id,
        mode: BackupMode::Incremental,
        parent: None,
        partial: false,
        summary: Default::default(),
        program_version: "lifeboat 0.1.0".into(),
        extra: Default::default(),
        creator: None,
    };
    record.extra.insert(
        "copied_from".into(),
        serde_json::json!({"repository": root_id.to_hex(), "snapshot": sub_id.to_hex()}),
    );
    session.finish(record.clone()).await.unwrap();

    // A version 2 key file with the default KDF parameters: the only kind
    // a release build (and so the `-O` fuzz build) decodes; the test
    // repository's own key file uses the test parameters, which only
    // builds with debug assertions accept.
    let kf = KeyFile::create(&MasterKey::generate(), b"password", KdfParams::DEFAULT).unwrap();
    save(out, "key_file", "v2-default-kdf", &kf.encode());

    // Trees (plaintext, as read after opening a blob).
    save(out, "tree", "root", &root.encode());
    save(out, "tree", "sub", &sub.encode());
    save(out, "tree", "empty", &Tree::default().encode());

    for (k, bytes) in mem.snapshot() {
        let name = &k.name()[..k.name().len().min(16)];
        match k.kind() {
            Kind::Keys => save(out, "key_file", name, &bytes),
            Kind::Config => {
                save(out, "config", "stored", &with_mode(0, &bytes));
                let body = serde_json::to_vec(repo.config()).unwrap();
                save(out, "config", "plain", &with_mode(1, &body));
            }
            Kind::Packs => {
                save(out, "pack_trailer", name, &with_mode(0, &bytes));
                let id = lifeboat_repo::Id::from_hex(k.name()).unwrap();
                let entries = parse_pack(key, &id, &bytes).unwrap();
                let mut plain = vec![1u8, 200];
                plain.extend(postcard::to_allocvec(&entries).unwrap());
                save(out, "pack_trailer", &format!("{name}-plain"), &plain);
                // Blobs: flags (sealed mode 4 | type | compressed), raw length.
                for (i, e) in entries.iter().enumerate() {
                    let sealed = &bytes[e.offset as usize..(e.offset + e.length) as usize];
                    let flags = (e.blob_type == BlobType::Tree) as u8 | ((e.compressed as u8) << 1);
                    let mut v = vec![flags];
                    v.extend_from_slice(&(e.raw_length as u16).to_le_bytes());
                    v.extend_from_slice(sealed);
                    save(out, "blob", &format!("{name}-{i}"), &v);
                }
            }
            // No archive objects in this repository (they come from `pg wal-push`).
            Kind::Archive | Kind::Audit | Kind::Protect => {}
            Kind::Index => {
                save(out, "index", name, &with_mode(0, &bytes));
                let file = IndexFile::decode(key, k.name(), &bytes).unwrap();
                save(
                    out,
                    "index",
                    &format!("{name}-plain"),
                    &with_mode(1, &postcard::to_allocvec(&file).unwrap()),
                );
            }
            Kind::Snapshots => {
                save(out, "snapshot_record", name, &with_mode(0, &bytes));
                save(
                    out,
                    "snapshot_record",
                    &format!("{name}-plain"),
                    &with_mode(1, &serde_json::to_vec(&record).unwrap()),
                );
            }
            Kind::Locks => {}
        }
    }
    // Raw plaintext blob with a matching id (blob flags 4|8: sealed by the
    // harness, id and length made right).
    save(out, "blob", "plain-raw", &[12, 0, 0, b'h', b'i']);
    let lock = LockInfo {
        kind: LockKind::Shared,
        host: "db1".into(),
        pid: 4711,
        created: "2025-01-31T09:12:44Z".parse().unwrap(),
        refreshed: "2025-01-31T09:17:44Z".parse().unwrap(),
    };
    save(out, "lock", "stored", &with_mode(0, &lock.encode(key)));
    save(
        out,
        "lock",
        "plain",
        &with_mode(1, &serde_json::to_vec(&lock).unwrap()),
    );
    let _ = mem.list(Kind::Locks).await;
    println!("corpus written to {}", out.display());
}
