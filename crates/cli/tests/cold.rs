//! The cold storage tier through the real binary: `init --cold`, data packs
//! in a second local directory or a second s3s-fs bucket, hot-only commands
//! that work with the cold tier moved out of reach (so they cannot have
//! read it), `restore --plan-only`, the plan printed before a cold restore,
//! and `--cold-location` for a restore on another machine.

mod common;

use std::path::{Path, PathBuf};

use common::{
    Lifeboat, assert_same_tree, files_under, random_bytes, restored, stderr, stdout, write,
};
use lifeboat_testkit::services::S3Server;

fn make_source(lb: &Lifeboat) -> PathBuf {
    let src = lb.path("src");
    write(src.join("notes.txt"), b"cold tier notes\n");
    write(src.join("db/big.bin"), random_bytes(3_000_000, 11));
    write(src.join("db/other.bin"), random_bytes(1_000_000, 12));
    src
}

/// Path, size and modification time of every file below `dir`: changes if
/// anything in the tier is written, replaced or deleted.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p, m.len(), m.modified().unwrap())
        })
        .collect()
}

fn config_version(repo: &Path) -> u32 {
    let bytes = std::fs::read(repo.join("config")).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// Runs the commands that must never need the cold tier; each must succeed
/// while the tier is out of reach.
fn hot_only_commands(lb: &Lifeboat, src: &Path, env: &[(&'static str, String)]) {
    let run = |args: &[&str]| {
        let mut cmd = lb.cmd();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        common::assert_ok(&out, args);
        out
    };
    let snaps: serde_json::Value =
        serde_json::from_slice(&run(&["snapshots", "--json"]).stdout).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let first = snaps[0]["short_id"].as_str().unwrap().to_string();
    let second = snaps[1]["short_id"].as_str().unwrap().to_string();
    let ls = stdout(&run(&["ls", "latest"]));
    assert!(ls.contains("big.bin"), "{ls}");
    let found = stdout(&run(&["find", "*.bin"]));
    assert!(found.contains("other.bin"), "{found}");
    let diff = stdout(&run(&["diff", &first, &second]));
    assert!(diff.contains("notes.txt"), "{diff}");
    let plan: serde_json::Value = serde_json::from_slice(
        &run(&[
            "restore",
            "latest",
            "--target",
            lb.path("never-written").to_str().unwrap(),
            "--plan-only",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert!(plan["cold_packs"].as_u64().unwrap() >= 2, "{plan}");
    assert_eq!(plan["hot_packs"], 0, "{plan}");
    assert_eq!(plan["files"], 3, "{plan}");
    let listed: Vec<&str> = plan["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tier"].as_str().unwrap())
        .collect();
    assert!(listed.iter().all(|t| *t == "cold"), "{plan}");
    assert!(
        !lb.path("never-written").exists(),
        "--plan-only wrote the target"
    );
    let forget = stdout(&run(&["forget", "--keep-last", "1", "--dry-run"]));
    assert!(forget.contains(&first), "{forget}");
    let _ = src;
}

#[test]
fn local_cold_tier_keeps_data_packs_apart_and_hot_commands_never_need_it() {
    let lb = Lifeboat::new();
    let cold = lb.path("cold");
    let out = lb.ok(["init", "--cold", cold.to_str().unwrap()]);
    assert!(stdout(&out).contains("cold tier"), "{}", stdout(&out));
    assert_eq!(config_version(&lb.repo), 2);
    let src = make_source(&lb);
    lb.backup(&[&src], &[]);
    write(src.join("notes.txt"), b"changed notes\n");
    lb.backup(&[&src], &[]);

    // Cold holds data packs only (and its location marker); the
    // repository keeps the rest.
    let mut cold_files = files_under(&cold);
    assert!(cold_files.contains(&cold.join("marker")), "{cold_files:?}");
    cold_files.retain(|p| *p != cold.join("marker"));
    assert!(cold_files.len() >= 2, "{cold_files:?}");
    assert!(cold_files.iter().all(|p| p.starts_with(cold.join("data"))));
    let stats = lb.json(["stats"]);
    assert_eq!(
        stats["cold_packs"].as_u64().unwrap() as usize,
        cold_files.len()
    );
    assert!(stats["packs"].as_u64().unwrap() > stats["cold_packs"].as_u64().unwrap());
    let hot_pack_bytes: u64 = files_under(&lb.repo.join("data"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        hot_pack_bytes < 100_000,
        "trees only, got {hot_pack_bytes} bytes"
    );

    // Out of reach: every hot-only command still works.
    let before = fingerprint(&cold);
    let away = lb.path("cold-away");
    std::fs::rename(&cold, &away).unwrap();
    hot_only_commands(&lb, &src, &[]);
    // A restore needs the cold tier: it prints the plan, then fails.
    let target = lb.path("target-fail");
    let out = lb.run(["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("restore plan"), "{text}");
    assert!(text.contains("cold tier"), "{text}");
    std::fs::rename(&away, &cold).unwrap();
    assert_eq!(
        fingerprint(&cold),
        before,
        "hot-only commands changed the cold tier"
    );

    // check without --read-data lists both tiers; with it, reads cold.
    let check = stdout(&lb.ok(["check"]));
    assert!(check.contains("no errors"), "{check}");
    let check = stdout(&lb.ok(["check", "--read-data"]));
    assert!(check.contains("from the cold tier"), "{check}");

    // Restore: the plan first, then the files, byte for byte.
    let target = lb.path("target");
    let out = lb.ok(["restore", "latest", "--target", target.to_str().unwrap()]);
    let text = stdout(&out);
    let plan_at = text.find("restore plan").expect("plan printed");
    let done_at = text.find("restored snapshot").expect("restore summary");
    assert!(plan_at < done_at, "{text}");
    assert!(text.contains("cold pack "), "{text}");
    assert_same_tree(&src, &restored(&target, &src));
    assert_eq!(fingerprint(&cold), before, "restore wrote to the cold tier");
}

#[test]
fn prune_says_what_it_downloads_from_the_cold_tier() {
    let lb = Lifeboat::new();
    let cold = lb.path("cold");
    lb.ok(["init", "--cold", cold.to_str().unwrap()]);
    let src = lb.path("src");
    write(src.join("keep.bin"), random_bytes(400_000, 1));
    write(src.join("drop.bin"), random_bytes(400_000, 2));
    lb.backup(&[&src], &[]);
    std::fs::remove_file(src.join("drop.bin")).unwrap();
    lb.backup(&[&src], &[]);
    lb.ok(["forget", "--keep-last", "1"]);
    let dry = stdout(&lb.ok(["prune", "--dry-run", "--max-unused", "0%"]));
    assert!(dry.contains("would download"), "{dry}");
    let stats = lb.json(["prune", "--max-unused", "0%"]);
    assert!(
        stats["cold_read_bytes"].as_u64().unwrap() > 400_000,
        "{stats}"
    );
    assert!(stdout(&lb.ok(["check", "--read-data"])).contains("no errors"));
    let target = lb.path("target");
    lb.ok(["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn another_machine_names_the_moved_cold_tier_with_cold_location() {
    let lb = Lifeboat::new();
    let cold = lb.path("cold");
    lb.ok(["init", "--cold", cold.to_str().unwrap()]);
    let src = make_source(&lb);
    lb.backup(&[&src], &[]);
    let elsewhere = lb.path("mounted/elsewhere");
    std::fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    std::fs::rename(&cold, &elsewhere).unwrap();

    let target = lb.path("t1");
    lb.ok([
        "--cold-location",
        elsewhere.to_str().unwrap(),
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &restored(&target, &src));
    // The environment variable does the same.
    let target = lb.path("t2");
    let out = lb
        .cmd()
        .env("LIFEBOAT_COLD_LOCATION", &elsewhere)
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    common::assert_ok(&out, "restore with LIFEBOAT_COLD_LOCATION");
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn init_refuses_the_repository_itself_as_cold_tier_and_hot_repos_stay_version_1() {
    let lb = Lifeboat::new();
    let err = lb.fail(["init", "--cold", lb.repo.to_str().unwrap()], 2);
    assert!(err.contains("another location"), "{err}");
    assert!(!lb.repo.join("config").exists());

    lb.ok(["init"]);
    assert_eq!(
        config_version(&lb.repo),
        1,
        "a repository without a cold tier stays version 1"
    );
    let err = lb.fail(["--cold-location", "/tmp/x", "snapshots"], 2);
    assert!(err.contains("no cold tier"), "{err}");
    // Tree and data blobs in separate packs there too; restore unchanged.
    let src = make_source(&lb);
    lb.backup(&[&src], &[]);
    let target = lb.path("target");
    let out = lb.ok(["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(!stdout(&out).contains("restore plan"), "{}", stdout(&out));
    assert_same_tree(&src, &restored(&target, &src));
    let plan = lb.json([
        "restore",
        "latest",
        "--target",
        lb.path("t2").to_str().unwrap(),
        "--plan-only",
    ]);
    assert_eq!(plan["cold_packs"], 0, "{plan}");
    assert!(plan["hot_packs"].as_u64().unwrap() >= 1, "{plan}");
    let _ = stderr(&out);
}

#[test]
fn s3_second_bucket_as_cold_tier() {
    let Some(s3) = S3Server::start() else { return };
    let cold_bucket = "lifeboat-cold";
    std::fs::create_dir_all(s3.root().join(cold_bucket)).unwrap();
    let hot = s3.location_url_for("hot");
    let cold = hot
        .replacen(s3.bucket(), cold_bucket, 1)
        .replacen("/hot?", "/archive?", 1)
        + "&storage-class=STANDARD";
    let env = s3.env();
    let lb = Lifeboat::new();
    let password = lb.password.clone();
    let lb = lb.with_repo(PathBuf::from(&hot), &password);
    let with_env = |args: &[&str]| {
        let mut cmd = lb.cmd();
        cmd.args(args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        common::assert_ok(&out, args);
        out
    };
    // The storage class reaches the server: s3s-fs stores only STANDARD and
    // refuses an archive class by name (AWS would store it).
    let mut cmd = lb.cmd();
    cmd.args(["init", "--cold", &cold.replace("STANDARD", "DEEP_ARCHIVE")]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("InvalidStorageClass"),
        "{}",
        stderr(&out)
    );
    with_env(&["init", "--cold", &cold]);
    let src = make_source(&lb);
    with_env(&["backup", src.to_str().unwrap()]);
    write(src.join("notes.txt"), b"changed notes\n");
    with_env(&["backup", src.to_str().unwrap()]);

    let cold_dir = s3.root().join(cold_bucket).join("archive");
    let mut cold_files = files_under(&cold_dir);
    assert!(
        cold_files.contains(&cold_dir.join("marker")),
        "{cold_files:?}"
    );
    cold_files.retain(|p| *p != cold_dir.join("marker"));
    assert!(cold_files.len() >= 2, "{cold_files:?}");
    assert!(
        cold_files
            .iter()
            .all(|p| p.starts_with(cold_dir.join("data"))),
        "{cold_files:?}"
    );

    // --plan-only --json names each cold pack by bucket and full key
    // (prefix included), what a provider's restore request takes: it
    // printed the key without the prefix and no bucket.
    let out = with_env(&[
        "restore",
        "latest",
        "--target",
        "/nonexistent",
        "--plan-only",
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cold_packs: Vec<_> = plan["packs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["tier"] == "cold")
        .collect();
    assert!(!cold_packs.is_empty(), "{plan}");
    for p in cold_packs {
        assert_eq!(p["bucket"], cold_bucket, "{p}");
        let key = p["key"].as_str().unwrap();
        assert!(key.starts_with("archive/data/"), "{p}");
        assert!(s3.root().join(cold_bucket).join(key).is_file(), "{p}");
    }

    // The cold bucket out of reach: hot-only commands still work.
    let before = fingerprint(&cold_dir);
    let away = s3.root().join("moved-away");
    std::fs::rename(s3.root().join(cold_bucket), &away).unwrap();
    hot_only_commands(&lb, &src, &env);
    std::fs::rename(&away, s3.root().join(cold_bucket)).unwrap();
    assert_eq!(fingerprint(&cold_dir), before);

    let target = lb.path("target");
    let out = with_env(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(stdout(&out).contains("restore plan"), "{}", stdout(&out));
    assert_same_tree(&src, &restored(&target, &src));
    let check = stdout(&with_env(&["check", "--read-data"]));
    assert!(check.contains("no errors"), "{check}");
}

/// With the cold tier unmounted or moved, every command that needs it says
/// "cold tier unreachable (use --cold-location)" and exits 12, writing
/// nothing: not "every file damaged", zero cold data or a partial restore.
#[test]
fn commands_that_need_a_moved_cold_tier_say_it_is_unreachable() {
    let lb = Lifeboat::new();
    let cold = lb.path("cold");
    lb.ok(["init", "--cold", cold.to_str().unwrap()]);
    let src = make_source(&lb);
    lb.ok(["backup", src.to_str().unwrap()]);
    assert!(
        cold.join("marker").is_file(),
        "init wrote no location marker"
    );
    std::fs::rename(&cold, lb.path("cold-away")).unwrap();
    let before = fingerprint(&lb.repo);
    let target = lb.path("target");
    let target_arg = target.to_str().unwrap();
    for args in [
        vec!["check"],
        vec!["check", "--read-data"],
        vec!["stats"],
        vec!["prune"],
        vec!["restore", "latest", "--target", target_arg],
        vec!["backup", src.to_str().unwrap()],
    ] {
        let err = lb.fail(&args, 12);
        assert!(
            err.contains("cold tier unreachable (use --cold-location)"),
            "{args:?}: {err}"
        );
    }
    assert!(!cold.exists(), "the cold tier was recreated");
    assert!(files_under(&target).is_empty(), "restore wrote files");
    assert_eq!(
        fingerprint(&lb.repo),
        before,
        "the repository was written to"
    );
}
