//! Property test: a random file tree, backed up with the library's
//! `backup` and restored with its `restore`, comes back identical — names
//! (any bytes but `/` and NUL), kinds, content, mode bits (set-id and sticky
//! too), owners, mtimes to the nanosecond (symlinks included, through
//! lstat), symlink targets (dangling ones too), hard links (one inode, two
//! names) and `user.*` extended attributes.
//!
//! The tree is built from a list of generated operations (make a directory,
//! a file, a symlink or a hard link under an earlier directory) so shrinking
//! removes operations and a failure comes down to a few entries. Half the
//! cases restore in batches of a few files (`RestoreOptions::batch_files`)
//! and parts of a few entries (`RestoreOptions::part_entries`), so hard
//! links, directories and shared blobs fall across batches and parts. Cases
//! are few and heavy (a few contain multi-MiB sparse files): 16 by default,
//! `PROPTEST_CASES` overrides.

use lifeboat_testkit::data::pseudo_random;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lifeboat_repo::{InitOptions, KdfParams, Repository};
use lifeboat_snapshot::backup::{BackupOptions, backup};
use lifeboat_snapshot::progress::NoProgress;
use lifeboat_snapshot::restore::{RestoreOptions, restore};
use lifeboat_storage::{DynStorage, MemoryStorage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

// ------------------------------------------------------------- generation

/// Content of a generated regular file; bytes come from a seeded xorshift so
/// cases stay small to print and cheap to shrink.
#[derive(Debug, Clone)]
enum Content {
    Empty,
    /// Random (incompressible) bytes.
    Random {
        len: usize,
        seed: u64,
    },
    /// A repeated short pattern (compresses well).
    Text {
        len: usize,
        seed: u64,
    },
    /// Mostly zeros with a few random islands: a file of a few MiB that
    /// spans many chunks, most of them all-zero (restored as holes).
    Sparse {
        len: u64,
        islands: Vec<(u64, usize, u64)>,
    },
}

#[derive(Debug, Clone)]
enum What {
    Dir,
    File(Content),
    Symlink(Vec<u8>),
    /// A second name for the n-th (modulo) file created so far.
    HardLink(usize),
}

#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    mtime: (i64, u32),
    uid: u32,
    gid: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
struct Op {
    /// Which directory created so far (modulo; 0 is the source root).
    parent: usize,
    name: Vec<u8>,
    what: What,
    meta: Meta,
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    let odd: Vec<&'static [u8]> = vec![
        b"-rf",
        b"--help",
        b"-",
        b" leading and trailing ",
        b"new\nline",
        b"tab\there",
        b"\xff\xfe not utf-8 \x80",
        b"\xc3\x28",
        "ünïcödé ✓".as_bytes(),
        b".hidden",
        b"...",
        b"back\\slash",
        b"*?[glob]",
        b"'quote\"",
        b"\x01\x1b[31m",
    ];
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 1..16),
        2 => proptest::sample::select(odd).prop_map(|n| n.to_vec()),
        1 => "[a-z]{1,8}".prop_map(String::into_bytes),
    ]
    .prop_map(|mut n| {
        for b in n.iter_mut() {
            if *b == 0 || *b == b'/' {
                *b = b'_';
            }
        }
        if n == b"." || n == b".." {
            n.push(b'x');
        }
        n
    })
}

fn content_strategy() -> impl Strategy<Value = Content> {
    prop_oneof![
        2 => Just(Content::Empty),
        5 => (0usize..20_000, any::<u64>()).prop_map(|(len, seed)| Content::Random { len, seed }),
        2 => (1usize..300_000, any::<u64>()).prop_map(|(len, seed)| Content::Text { len, seed }),
        1 => (
            (1u64 << 20)..(4u64 << 20),
            proptest::collection::vec((any::<u64>(), 1usize..70_000, any::<u64>()), 0..6)
        )
            .prop_map(|(len, islands)| Content::Sparse { len, islands }),
    ]
}

fn target_strategy() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"/nonexistent/dangling",
        b"..",
        b".",
        b"../../..",
        b"-rf",
        b"does not exist",
        b"/",
    ];
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(|mut t| {
            for b in t.iter_mut() {
                if *b == 0 {
                    *b = b'/';
                }
            }
            t
        }),
        1 => proptest::sample::select(fixed).prop_map(|t| t.to_vec()),
    ]
}

fn what_strategy() -> impl Strategy<Value = What> {
    prop_oneof![
        3 => Just(What::Dir),
        6 => content_strategy().prop_map(What::File),
        2 => target_strategy().prop_map(What::Symlink),
        1 => any::<usize>().prop_map(What::HardLink),
    ]
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn meta_strategy() -> impl Strategy<Value = Meta> {
    let mode = proptest::sample::select(vec![
        0o644u32, 0o600, 0o755, 0o700, 0o400, 0o000, 0o777, 0o4755, 0o2755, 0o6750, 0o1777, 0o555,
        0o2775, 0o1644,
    ]);
    let secs = prop_oneof![
        1 => -2_000_000_000i64..0,
        4 => 0i64..2_000_000_000,
        1 => 2_000_000_000i64..10_000_000_000,
    ];
    let nanos = prop_oneof![1 => Just(0u32), 4 => 0u32..1_000_000_000];
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    // Only root can give files to other owners.
    let ids = if is_root() {
        (0u32..70_000, 0u32..70_000).boxed()
    } else {
        Just((uid, gid)).boxed()
    };
    let xattrs = proptest::collection::vec(
        (
            "[a-z0-9_.]{1,12}",
            proptest::collection::vec(any::<u8>(), 0..40),
        ),
        0..3,
    );
    (mode, (secs, nanos), ids, xattrs).prop_map(|(mode, mtime, (uid, gid), xattrs)| {
        let mut seen = HashSet::new();
        let xattrs = xattrs
            .into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(n, v)| (format!("user.{n}"), v))
            .collect();
        Meta {
            // A non-root user must still be able to read and list.
            mode: if is_root() { mode } else { mode | 0o700 },
            mtime,
            uid,
            gid,
            xattrs,
        }
    })
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (
            any::<usize>(),
            name_strategy(),
            what_strategy(),
            meta_strategy(),
        )
            .prop_map(|(parent, name, what, meta)| Op {
                parent,
                name,
                what,
                meta,
            }),
        0..40,
    )
}

// ----------------------------------------------------------- materializing

/// Whether the test filesystem takes `user.*` xattrs; probed once.
fn xattrs_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let f = dir.path().join("probe");
        fs::write(&f, b"").unwrap();
        match xattr::set(&f, "user.lifeboat-probe", b"1") {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "roundtrip_prop: the temp filesystem rejects user.* xattrs ({e}); \
                     skipping the xattr part of the comparison"
                );
                false
            }
        }
    })
}

fn write_content(path: &Path, content: &Content) -> std::io::Result<()> {
    let f = File::create(path)?;
    match content {
        Content::Empty => {}
        Content::Random { len, seed } => f.write_all_at(&pseudo_random(*len, *seed), 0)?,
        Content::Text { len, seed } => {
            let word = format!("lifeboat {seed:x} line\n");
            let text: Vec<u8> = word.bytes().cycle().take(*len).collect();
            f.write_all_at(&text, 0)?;
        }
        Content::Sparse { len, islands } => {
            for (at, n, seed) in islands {
                let at = at % len;
                let n = (*n as u64).min(len - at) as usize;
                f.write_all_at(&pseudo_random(n, *seed), at)?;
            }
            f.set_len(*len)?;
        }
    }
    Ok(())
}

/// Applies owner, xattrs and mode (owner first: chown clears set-id bits).
fn apply_meta(path: &Path, meta: &Meta, xattrs: bool) -> std::io::Result<()> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    }
    if xattrs {
        for (n, v) in &meta.xattrs {
            xattr::set(path, n, v)?;
        }
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
}

fn set_mtime(path: &Path, meta: &Meta) -> std::io::Result<()> {
    let t = filetime::FileTime::from_unix_time(meta.mtime.0, meta.mtime.1);
    filetime::set_symlink_file_times(path, t, t)
}

/// Builds the tree under `root` (an existing empty directory).
fn materialize(root: &Path, ops: &[Op], root_meta: &Meta) -> std::io::Result<()> {
    let xattrs = xattrs_supported();
    let mut dirs: Vec<(PathBuf, Meta)> = vec![(root.to_path_buf(), root_meta.clone())];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut names: HashSet<(usize, Vec<u8>)> = HashSet::new();
    let mut leaves: Vec<(PathBuf, Meta)> = Vec::new();
    for op in ops {
        let parent = op.parent % dirs.len();
        if !names.insert((parent, op.name.clone())) {
            continue;
        }
        let path = dirs[parent].0.join(OsStr::from_bytes(&op.name));
        match &op.what {
            What::Dir => {
                fs::create_dir(&path)?;
                dirs.push((path, op.meta.clone()));
            }
            What::File(content) => {
                write_content(&path, content)?;
                apply_meta(&path, &op.meta, xattrs)?;
                files.push(path.clone());
                leaves.push((path, op.meta.clone()));
            }
            What::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)?;
                if is_root() {
                    std::os::unix::fs::lchown(&path, Some(op.meta.uid), Some(op.meta.gid))?;
                }
                leaves.push((path, op.meta.clone()));
            }
            What::HardLink(n) => {
                if files.is_empty() {
                    names.remove(&(parent, op.name.clone()));
                    continue;
                }
                fs::hard_link(&files[n % files.len()], &path)?;
            }
        }
    }
    for (path, meta) in &leaves {
        set_mtime(path, meta)?;
    }
    // Directory metadata last: creating entries changes a directory's mtime,
    // and a read-only mode would stop the creation (for a non-root user).
    for (path, meta) in dirs.iter().rev() {
        apply_meta(path, meta, xattrs)?;
        set_mtime(path, meta)?;
    }
    Ok(())
}

// --------------------------------------------------------------- comparing

/// What the comparison looks at, per path (relative, raw bytes).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Scan {
    entries: BTreeMap<Vec<u8>, Seen>,
    /// Hard-link groups: the paths of each inode with more than one name.
    links: BTreeSet<BTreeSet<Vec<u8>>>,
}

fn scan(root: &Path) -> std::io::Result<Scan> {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((path, rel)) = stack.pop() {
        let m = fs::symlink_metadata(&path)?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)?
            .map(|n| {
                let v = xattr::get(&path, &n).ok().flatten().unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect();
        xattrs.sort();
        if ft.is_file() {
            inodes
                .entry((m.dev(), m.ino()))
                .or_default()
                .insert(rel.clone());
        }
        if ft.is_dir() {
            for e in fs::read_dir(&path)? {
                let e = e?;
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                stack.push((e.path(), r));
            }
        }
        let seen = Seen {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            content: if ft.is_file() {
                Some(fs::read(&path)?)
            } else {
                None
            },
            target: if ft.is_symlink() {
                Some(fs::read_link(&path)?.into_os_string().into_vec())
            } else {
                None
            },
            xattrs,
        };
        entries.insert(rel, seen);
    }
    let links = inodes.into_values().filter(|s| s.len() > 1).collect();
    Ok(Scan { entries, links })
}

fn show(p: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(p))
}

/// Every difference between the source and the restored tree, one a line.
fn differences(src: &Scan, out: &Scan) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, a) in &src.entries {
        let Some(b) = out.entries.get(path) else {
            diffs.push(format!("{}: missing from the restore", show(path)));
            continue;
        };
        let p = show(path);
        if a.kind != b.kind {
            diffs.push(format!("{p}: kind {} restored as {}", a.kind, b.kind));
            continue;
        }
        if a.mode != b.mode {
            diffs.push(format!(
                "{p} ({}): mode {:o} restored as {:o}",
                a.kind, a.mode, b.mode
            ));
        }
        if (a.uid, a.gid) != (b.uid, b.gid) {
            diffs.push(format!(
                "{p} ({}): owner {}:{} restored as {}:{}",
                a.kind, a.uid, a.gid, b.uid, b.gid
            ));
        }
        if a.mtime != b.mtime {
            diffs.push(format!(
                "{p} ({}): mtime {}.{:09} restored as {}.{:09}",
                a.kind, a.mtime.0, a.mtime.1, b.mtime.0, b.mtime.1
            ));
        }
        if a.content != b.content {
            let (x, y) = (
                a.content.as_deref().unwrap_or_default(),
                b.content.as_deref().unwrap_or_default(),
            );
            let first = x
                .iter()
                .zip(y)
                .position(|(u, v)| u != v)
                .unwrap_or(x.len().min(y.len()));
            diffs.push(format!(
                "{p}: content differs ({} bytes, restored {} bytes, first difference at byte {first})",
                x.len(),
                y.len()
            ));
        }
        if a.target != b.target {
            diffs.push(format!(
                "{p}: symlink target {} restored as {}",
                show(a.target.as_deref().unwrap_or_default()),
                show(b.target.as_deref().unwrap_or_default())
            ));
        }
        if xattrs_supported() && a.xattrs != b.xattrs {
            diffs.push(format!(
                "{p}: xattrs {:?} restored as {:?}",
                a.xattrs, b.xattrs
            ));
        }
    }
    for path in out.entries.keys().filter(|p| !src.entries.contains_key(*p)) {
        diffs.push(format!(
            "{}: in the restore but not in the source",
            show(path)
        ));
    }
    if src.links != out.links {
        let fmt = |l: &BTreeSet<BTreeSet<Vec<u8>>>| {
            l.iter()
                .map(|g| g.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = "))
                .collect::<Vec<_>>()
        };
        diffs.push(format!(
            "hard links {:?} restored as {:?}",
            fmt(&src.links),
            fmt(&out.links)
        ));
    }
    diffs
}

// -------------------------------------------------------------------- test

async fn round_trip(ops: &[Op], root_meta: &Meta, batch_files: usize) -> Result<(), TestCaseError> {
    // Not under /tmp: the snapshot records the source's ancestors, and a
    // shared /tmp changes under a running test.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    materialize(&src, ops, root_meta)
        .map_err(|e| TestCaseError::fail(format!("building the source tree: {e}")))?;
    let before = scan(&src).unwrap();

    let storage: DynStorage = Arc::new(MemoryStorage::new());
    let repo = Arc::new(
        Repository::init(
            storage,
            b"pw",
            InitOptions {
                kdf: KdfParams::INSECURE_TEST,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let options = BackupOptions {
        paths: vec![src.clone()],
        ..Default::default()
    };
    let outcome = backup(repo.clone(), &options, Arc::new(NoProgress))
        .await
        .map_err(|e| TestCaseError::fail(format!("backup failed: {e}")))?;
    prop_assert!(
        outcome.warnings.is_empty(),
        "backup warnings: {:?}",
        outcome.warnings
    );
    prop_assert!(!outcome.snapshot.record.partial);

    let target = work.path().join("restore");
    let stats = restore(
        &repo,
        &outcome.snapshot,
        &RestoreOptions {
            target: target.clone(),
            owner: is_root(),
            batch_files,
            part_entries: 2 * batch_files,
            ..Default::default()
        },
        &NoProgress,
    )
    .await
    .map_err(|e| TestCaseError::fail(format!("restore failed: {e}")))?;
    prop_assert!(
        stats.errors.is_empty(),
        "restore errors: {:?}",
        stats.errors
    );

    // The snapshot mirrors absolute paths: SRC lands at TARGET/SRC.
    let restored = target.join(src.strip_prefix("/").unwrap());
    let after =
        scan(&restored).map_err(|e| TestCaseError::fail(format!("scanning the restore: {e}")))?;
    let touched = differences(&before, &scan(&src).unwrap());
    prop_assert!(
        touched.is_empty(),
        "backup changed the source:\n  {}",
        touched.join("\n  ")
    );
    let diffs = differences(&before, &after);
    prop_assert!(
        diffs.is_empty(),
        "restore differs from the source:\n  {}",
        diffs.join("\n  ")
    );
    Ok(())
}

#[test]
fn random_trees_survive_backup_and_restore() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut runner = TestRunner::new(Config {
        cases,
        // Cases are heavy: keep shrinking bounded, and do not write
        // regression files into the source tree.
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Half the cases restore in batches of one to three files, and parts
    // of twice as many entries (so directories, hard links and batches
    // cross parts).
    let batch_files = prop_oneof![Just(0usize), 1usize..4];
    let strategy = (ops_strategy(), meta_strategy(), batch_files);
    let result = runner.run(&strategy, |(ops, root_meta, batch_files)| {
        rt.block_on(round_trip(&ops, &root_meta, batch_files))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
