//! `check`'s tree walk reads trees ahead, several at once, but reports as a
//! walk of one tree at a time does: files that lose data in depth-first
//! order per snapshot, each shared subtree read once, and hard-link groups
//! compared in that same order.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use lifeboat_repo::{
    BackupMode, BlobType, CheckOptions, Id, Node, NodeKind, Repository, SnapshotRecord, Time, Tree,
    WriteOptions, WriteSession, check,
};

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;
use fixtures::memory_repo;

/// A directory to write: its files (name, whether a chunk is missing from
/// the index, hard-link group) and subdirectories, names sorted.
#[derive(Clone)]
struct Dir {
    files: Vec<(String, bool, Option<u64>)>,
    dirs: Vec<(String, Dir)>,
}

fn node(name: &str, kind: NodeKind) -> Node {
    let mode = if kind == NodeKind::Dir { 0o755 } else { 0o644 };
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: Time { secs: 1, nanos: 0 },
        ctime: Time { secs: 1, nanos: 0 },
        dev: 0,
        inode: 0,
        links: 1,
        size: 0,
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
    }
}

/// Writes `dir`'s trees bottom up; returns its id and records every
/// distinct tree id in `trees`.
async fn write(session: &WriteSession, dir: &Dir, trees: &mut HashSet<Id>) -> Id {
    let mut nodes: Vec<Node> = Vec::new();
    for (name, sub) in &dir.dirs {
        let mut n = node(name, NodeKind::Dir);
        n.subtree = Some(Box::pin(write(session, sub, trees)).await);
        nodes.push(n);
    }
    for (name, missing, link) in &dir.files {
        let mut n = node(name, NodeKind::File);
        let present = session
            .add_blob(BlobType::Data, name.as_bytes())
            .await
            .unwrap()
            .id;
        n.content.push(present);
        if *missing {
            // A chunk no pack holds: the file loses data.
            n.content.push(Id(
                *blake3::hash(format!("missing {name}").as_bytes()).as_bytes()
            ));
        }
        if let Some(group) = link {
            n.links = 2;
            n.dev = 1;
            n.inode = *group;
        }
        nodes.push(n);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let id = session
        .add_blob(BlobType::Tree, &Tree { nodes }.encode())
        .await
        .unwrap()
        .id;
    trees.insert(id);
    id
}

/// The paths of files that lose data, depth first, entries by name: what a
/// walk of one tree at a time reports.
fn lost(dir: &Dir, prefix: &str, out: &mut Vec<String>) {
    let mut entries: Vec<(&str, Option<&Dir>, bool)> = dir
        .dirs
        .iter()
        .map(|(n, d)| (n.as_str(), Some(d), false))
        .chain(dir.files.iter().map(|(n, m, _)| (n.as_str(), None, *m)))
        .collect();
    entries.sort_by_key(|e| e.0);
    for (name, sub, missing) in entries {
        let path = format!("{prefix}/{name}");
        match sub {
            Some(d) => lost(d, &path, out),
            None if missing => out.push(path),
            None => {}
        }
    }
}

/// A tree of `depth` levels of `fanout` directories, every level with a few
/// files, some losing data; `seed` makes the files distinct, and every
/// directory holds the same `shared` subtree.
fn tree(depth: u32, fanout: u32, seed: &str, shared: &Dir) -> Dir {
    let files = (0..3)
        .map(|i| {
            let name = format!("f{i}-{seed}");
            let missing = (seed.len() as u32 + i).is_multiple_of(4);
            (name, missing, None)
        })
        .collect();
    let mut dirs: Vec<(String, Dir)> = if depth == 0 {
        Vec::new()
    } else {
        (0..fanout)
            .map(|i| {
                (
                    format!("d{i}"),
                    tree(depth - 1, fanout, &format!("{seed}.{i}"), shared),
                )
            })
            .collect()
    };
    dirs.push(("shared".into(), shared.clone()));
    Dir { files, dirs }
}

async fn snapshot(repo: &Arc<Repository>, root: &Dir, trees: &mut HashSet<Id>) -> Id {
    let session = WriteSession::start(repo.clone(), WriteOptions::default())
        .await
        .unwrap();
    let tree = write(&session, root, trees).await;
    let record = SnapshotRecord {
        time: Timestamp::now(),
        host: "h".into(),
        user: "u".into(),
        paths: vec!["/x".into()],
        tags: vec![],
        tree,
        mode: BackupMode::Full,
        parent: None,
        partial: false,
        summary: Default::default(),
        program_version: "test".into(),
        extra: Default::default(),
        creator: None,
    };
    session.finish(record).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trees_read_ahead_report_as_a_walk_one_tree_at_a_time() {
    let (_mem, repo) = memory_repo().await;
    let shared = Dir {
        files: vec![("lost-in-shared".into(), true, None)],
        dirs: Vec::new(),
    };
    // Far more trees than reads in flight: the read-ahead runs ahead of
    // the walk and out of order.
    let a = tree(3, 4, "a", &shared);
    let mut b = tree(2, 5, "b", &shared);
    // `b` also holds all of `a` (shared subtrees, walked once), and a
    // hard-link group whose two names differ, deep in two places.
    b.dirs.insert(0, ("a-copy".into(), a.clone()));
    let mut linked = a.dirs[2].1.clone();
    linked.files.push(("link1".into(), false, Some(77)));
    b.dirs[2].1.files.push(("link2".into(), false, Some(77)));
    b.dirs.insert(1, ("b-linked".into(), linked));

    let mut trees = HashSet::new();
    let snap_a = snapshot(&repo, &a, &mut trees).await;
    let snap_b = snapshot(&repo, &b, &mut trees).await;
    assert!(trees.len() > 100, "{} trees", trees.len());

    let report = check(&repo, &CheckOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.trees_checked, trees.len());
    let mut by_snapshot: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &report.affected_files {
        by_snapshot
            .entry(f.snapshot.clone())
            .or_default()
            .push(f.path.clone());
    }
    for (snap, dir) in [(snap_a, &a), (snap_b, &b)] {
        let mut want = Vec::new();
        lost(dir, "", &mut want);
        assert!(want.len() > 10, "{} lost", want.len());
        assert_eq!(by_snapshot[&snap.short()], want, "snapshot {snap}");
    }
    let mut damaged = report.damaged_snapshots.clone();
    damaged.sort();
    let mut want = vec![snap_a.to_hex(), snap_b.to_hex()];
    want.sort();
    assert_eq!(damaged, want);

    // One error per missing chunk, then the hard-link group of `b`, named
    // by its names in walk order.
    let links: Vec<_> = report
        .errors
        .iter()
        .filter(|e| e.object.starts_with("snapshot "))
        .collect();
    assert_eq!(links.len(), 1, "{:?}", report.errors);
    assert_eq!(links[0].object, format!("snapshot {snap_b}"));
    assert!(
        links[0].message.contains("/b-linked/link1 and /d1/link2"),
        "{}",
        links[0].message
    );
    // Each missing chunk once, however many snapshots and paths lose it.
    let mut paths = Vec::new();
    lost(&a, "", &mut paths);
    lost(&b, "", &mut paths);
    let names: HashSet<&str> = paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap())
        .collect();
    let blobs = report
        .errors
        .iter()
        .filter(|e| e.object.starts_with("blob "))
        .count();
    assert_eq!(blobs, names.len());
    let mut sorted = report.errors.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(report.errors, sorted, "errors sorted, once each");
}
