//! Write-only keys (docs/format.md §18, docs/security.md §12): a host
//! holding one adds snapshots, deduplicated against what the repository
//! holds, and reads nothing stored, not even what it wrote; a full key
//! reads and checks everything.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::{
    BlobType, Error, IndexFile, InitOptions, KdfParams, NodeKind, Repository, SnapshotRecord, keys,
};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{DynStorage, Kind, MemoryStorage, Storage};
use lifeboat_testkit::data::pseudo_random;
use lifeboat_testkit::repo::{PASSWORD, assert_check_ok, memory_repo_with};

const WRITE_ONLY_PASSWORD: &[u8] = b"backup host";

fn options(path: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![path.to_path_buf()],
        contents_as_root: true,
        ..Default::default()
    }
}

async fn stored_bytes(mem: &MemoryStorage) -> u64 {
    let mut n = 0;
    for kind in [Kind::Packs, Kind::Index, Kind::Snapshots] {
        n += mem
            .list(kind)
            .await
            .unwrap()
            .iter()
            .map(|o| o.size_bytes)
            .sum::<u64>();
    }
    n
}

/// Every regular file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn is_write_only_error(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("needs a full key")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_only_key_backs_up_with_dedup_and_reads_nothing_a_full_key_restores_all() {
    let (mem, full) = memory_repo_with(InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        pack_size: 1024 * 1024,
        write_only_keys: true,
        ..Default::default()
    })
    .await;
    let storage: DynStorage = Arc::new(mem.clone());
    let src = tempfile::tempdir().unwrap();
    for i in 0..6 {
        fs::write(src.path().join(format!("f{i}")), pseudo_random(700_000, i)).unwrap();
    }
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::write(src.path().join("sub/small"), b"a small file").unwrap();
    let old = backup(full.clone(), &options(src.path()), Arc::new(NoProgress))
        .await
        .unwrap()
        .snapshot;
    let old_files = files(src.path());

    keys::add_write_only(&full, WRITE_ONLY_PASSWORD, KdfParams::INSECURE_TEST)
        .await
        .unwrap();
    let listed = keys::list(&full).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>(),
        ["full", "write-only"]
    );

    // The backup host: one new file, the rest unchanged.
    let host = Arc::new(
        Repository::open(storage.clone(), WRITE_ONLY_PASSWORD)
            .await
            .unwrap(),
    );
    assert!(host.is_write_only());
    fs::write(src.path().join("new"), pseudo_random(100_000, 99)).unwrap();
    let before = stored_bytes(&mem).await;
    let outcome = backup(host.clone(), &options(src.path()), Arc::new(NoProgress))
        .await
        .unwrap();
    let new = outcome.snapshot;
    let uploaded = stored_bytes(&mem).await - before;
    let total = new.record.summary.total_bytes;
    assert!(total > 4_000_000, "{total}");
    // Without a parent it read every file again...
    assert_eq!(new.record.parent, None);
    assert_eq!(new.record.summary.read_bytes, total);
    // ...but stored only the new file and the trees: the old chunks were
    // found through the index's blob-id lists.
    assert!(
        uploaded < 200_000,
        "uploaded {uploaded} bytes of {total} (no dedup?)"
    );
    let new_files = files(src.path());

    // The write-only key reads nothing: not the snapshots, trees or file
    // contents of the old snapshot, nor of its own.
    assert!(is_write_only_error(&host.snapshots().await.unwrap_err()));
    for id in [old.id, new.id] {
        let e = host.find_snapshot(&id.to_hex()).await.unwrap_err();
        assert!(matches!(e, Error::WriteOnlyKey { .. }), "{e}");
    }
    for tree in [old.record.tree, new.record.tree] {
        assert!(matches!(
            host.read_tree(&tree).await,
            Err(Error::WriteOnlyKey { .. })
        ));
    }
    let root = full.read_tree(&old.record.tree).await.unwrap();
    let chunk = root
        .nodes
        .iter()
        .find(|n| n.kind == NodeKind::File)
        .unwrap()
        .content[0];
    assert!(matches!(
        host.read_blob(&chunk).await,
        Err(Error::WriteOnlyKey { .. })
    ));
    let target = tempfile::tempdir().unwrap();
    let e = restore(
        &host,
        &old,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(is_write_only_error(&e), "{e}");
    assert!(
        lifeboat_repo::check(&host, &Default::default(), &|_, _| {})
            .await
            .is_err()
    );
    // Past the guards: the key itself opens no stored record, pack or
    // index (only the blob-id lists).
    for (key, bytes) in mem.snapshot() {
        let name = key.to_string();
        match key.kind() {
            Kind::Snapshots => {
                assert!(SnapshotRecord::decode(host.key(), &name, &bytes).is_err());
                assert!(SnapshotRecord::decode(full.key(), &name, &bytes).is_ok());
            }
            Kind::Packs => {
                let id = lifeboat_repo::Id::from_hex(key.name()).unwrap();
                assert!(lifeboat_repo::fuzzing::parse_pack(host.key(), &id, &bytes).is_err());
                let entries = lifeboat_repo::fuzzing::parse_pack(full.key(), &id, &bytes).unwrap();
                let e = &entries[0];
                let sealed = &bytes[e.offset as usize..(e.offset + e.length) as usize];
                assert!(lifeboat_repo::fuzzing::open_blob(host.key(), e, sealed).is_err());
                lifeboat_repo::fuzzing::open_blob(full.key(), e, sealed).unwrap();
            }
            Kind::Index => {
                let ids = IndexFile::decode(host.key(), &name, &bytes).unwrap();
                assert!(
                    ids.packs
                        .iter()
                        .flat_map(|p| &p.entries)
                        .all(|e| e.raw_length == 0 && e.offset == 0),
                    "a write-only key learns no blob sizes or places"
                );
            }
            _ => {}
        }
    }

    // A full key, opened afresh, lists, restores and checks both.
    let full = Arc::new(Repository::open(storage.clone(), PASSWORD).await.unwrap());
    let all = full.snapshots().await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.id).collect::<Vec<_>>(),
        [old.id, new.id]
    );
    for (snap, want) in [(&all[0], &old_files), (&all[1], &new_files)] {
        let target = common::restore_to_temp(&full, snap).await;
        assert!(&files(target.path()) == want, "restored bytes differ");
    }
    assert!(full.index().await.unwrap().blob_count_of(BlobType::Tree) >= 2);
    let report = assert_check_ok(&full).await;
    assert_eq!(report.snapshots, 2);
    let audit = lifeboat_repo::audit::verify(&full, &[]).await.unwrap();
    assert!(
        audit
            .findings
            .iter()
            .all(|f| f.severity != lifeboat_repo::audit::Severity::Error),
        "{:?}",
        audit.findings
    );
    // The write-only backup's audit record opens with the full key.
    let log = lifeboat_repo::audit::read_log(&full).await.unwrap();
    assert!(
        log.records
            .iter()
            .any(|r| r.record.op == "backup" && r.record.snapshots == [new.id])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn write_only_keys_need_a_repository_made_for_them() {
    let (_mem, full) = memory_repo_with(InitOptions {
        kdf: KdfParams::INSECURE_TEST,
        ..Default::default()
    })
    .await;
    let e = keys::add_write_only(&full, b"x", KdfParams::INSECURE_TEST)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--write-only-keys"), "{e}");
}
