//! The operations commands through the binary: `--config`, `config
//! check|show`, `run`, `status`, with the issue's minimal config verbatim
//! and the shipped example.

mod common;

use std::path::{Path, PathBuf};

use common::{Lifeboat, src_plan_config};

/// The minimal config of issue 14, exactly as written there.
const MINIMAL: &str = include_str!("../../../tests/fixtures/issue14-minimal.toml");

/// Removes what a test created outside its temp dir, also on panic.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Creates `p`'s missing ancestors, noting each for cleanup.
fn create_parents(p: &Path, made: &mut Vec<PathBuf>) {
    let mut missing = Vec::new();
    let mut cur = p.parent();
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(&d).unwrap();
        made.push(d);
    }
}

#[test]
fn the_minimal_config_works_exactly_as_written() {
    let lb = Lifeboat::new();
    let file = lb.path("lifeboat.toml");
    std::fs::write(&file, MINIMAL).unwrap();
    let cfg = file.to_str().unwrap();

    let out = lb
        .bare_cmd()
        .args(["--config", cfg, "config", "show"])
        .output()
        .unwrap();
    common::assert_ok(&out, "config show");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("[plan.home]"), "{shown}");
    assert!(shown.contains("schedule = \"*/15 * * * *\""), "{shown}");
    assert!(shown.contains("max-concurrent = 2"), "{shown}");

    // LIFEBOAT_CONFIG selects it too.
    let out = lb
        .bare_cmd()
        .env("LIFEBOAT_CONFIG", cfg)
        .args(["config", "show", "--json"])
        .output()
        .unwrap();
    common::assert_ok(&out, "config show --json");
    let v = common::parse_json(&out);
    assert_eq!(v["plan"]["home"]["rpo"], "1h");

    // `config check` opens /srv/backup/repo with /etc/lifeboat/local.pw:
    // set those paths up when they are free to take (as root, as in CI).
    let repo = Path::new("/srv/backup/repo");
    let pw = Path::new("/etc/lifeboat/local.pw");
    let root = nix::unistd::geteuid().is_root();
    if !root || repo.exists() || pw.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this as root on a machine without /srv/backup/repo and /etc/lifeboat/local.pw"
        );
        eprintln!("skipping `config check` of the verbatim config: not root, or the paths exist");
        return;
    }
    let mut made = Vec::new();
    create_parents(repo, &mut made);
    create_parents(pw, &mut made);
    let _cleanup = Cleanup(made);
    std::fs::write(pw, "verbatim test password\n").unwrap();
    let _pw_cleanup = Cleanup(vec![pw.to_path_buf(), repo.to_path_buf()]);

    // Before the repository exists, check says so and fails.
    let out = lb
        .bare_cmd()
        .args(["--config", cfg, "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", common::describe(&out));
    assert!(
        common::stderr(&out).contains("did not open"),
        "{}",
        common::describe(&out)
    );

    let out = lb
        .bare_cmd()
        .args([
            "init",
            "-r",
            "/srv/backup/repo",
            "--password-file",
            "/etc/lifeboat/local.pw",
        ])
        .output()
        .unwrap();
    common::assert_ok(&out, "init");
    let out = lb
        .bare_cmd()
        .args(["--config", cfg, "config", "check"])
        .output()
        .unwrap();
    common::assert_ok(&out, "config check");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("repository local: opens (0 snapshots)"),
        "{}",
        common::describe(&out)
    );
}

#[test]
fn the_shipped_example_passes_config_check() {
    let lb = Lifeboat::new();
    let root = lb.root().display().to_string();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/lifeboat.example.toml"),
    )
    .unwrap();
    // Only the locations of its files move into the scratch root.
    let text = example
        .replace("\"/srv/", &format!("\"{root}/srv/"))
        .replace("\"/etc/lifeboat/", &format!("\"{root}/etc/lifeboat/"))
        .replace("\"/mnt/", &format!("\"{root}/mnt/"));
    let file = lb.path("lifeboat.toml");
    std::fs::write(&file, text).unwrap();
    std::fs::create_dir_all(lb.path("etc/lifeboat")).unwrap();
    for (repo, pw) in [
        ("srv/backup/repo", "local.pw"),
        ("mnt/usb/lifeboat", "usb.pw"),
    ] {
        let pw = lb.path(&format!("etc/lifeboat/{pw}"));
        std::fs::write(&pw, "example password\n").unwrap();
        let out = lb
            .bare_cmd()
            .arg("init")
            .arg("-r")
            .arg(lb.path(repo))
            .arg("--password-file")
            .arg(&pw)
            .output()
            .unwrap();
        common::assert_ok(&out, "init");
    }
    let out = lb.ok_config(&file, ["config", "check", "--json"]);
    let v = common::parse_json(&out);
    assert_eq!(v["valid"], true);
    assert_eq!(v["repositories"].as_array().unwrap().len(), 2);
    assert!(
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ok"] == true),
        "{v}"
    );
}

#[test]
fn a_config_error_names_file_line_and_key() {
    let lb = Lifeboat::new();
    let file = lb.write_config(&MINIMAL.replace("rpo = \"1h\"", "rpo = \"soon\""));
    let out = lb.run_config(&file, ["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:14: plan.home.rpo: \"soon\" is not a duration",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn run_then_status_through_the_binary() {
    let lb = Lifeboat::new();
    std::fs::create_dir_all(lb.path("src")).unwrap();
    std::fs::write(lb.path("src/f"), "data").unwrap();
    lb.init_with_password_file("repo");
    let file = lb.write_config(&src_plan_config("rpo = \"1h\"", ""));
    let out = lb.ok_config(&file, ["run", "src"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("plan src: OK"), "{text}");
    assert!(text.contains("backup  main"), "{text}");

    let out = lb.ok_config(&file, ["status", "--json"]);
    let v = common::parse_json(&out);
    assert_eq!(v["plans"][0]["freshness"], "ok");
    assert_eq!(v["plans"][0]["rule_321"]["satisfied"], false);

    let out = lb.run_config(&file, ["run", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).contains("no plan named \"nope\""));
}
