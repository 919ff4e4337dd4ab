//! `lifeboat drill` through the binary: a drill killed with SIGKILL in the
//! middle of its restore leaves a marked scratch directory, and the next
//! drill removes it and passes; PostgreSQL drills against a real cluster
//! archiving its WAL (see the tests below).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Lifeboat;
use lifeboat_testkit::wait::wait_until;

/// A plan backing up `<root>/data` into the test's repository, with its
/// scratch place at `<root>/scratch`.
fn files_config(lb: &Lifeboat) -> PathBuf {
    std::fs::write(lb.path("pw"), &lb.password).unwrap();
    let text = format!(
        r#"state-dir = "{root}/state"

[repository.local]
location = "{repo}"
password-file = "{root}/pw"

[source.data]
type = "files"
paths = ["{root}/data"]

[plan.data]
source = "data"
repositories = ["local"]
rpo = "1h"
rto = "1h"

[plan.data.drill]
scratch = "{root}/scratch"
"#,
        root = lb.root().display(),
        repo = lb.repo.display()
    );
    let path = lb.path("lifeboat.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The largest pack of the repository: file data (trees are few bytes).
fn largest_pack(repo: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for sub in std::fs::read_dir(repo.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            let len = f.metadata().unwrap().len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, f.path()));
            }
        }
    }
    best.expect("the repository has packs").1
}

#[test]
fn a_drill_killed_mid_restore_leaves_a_marked_scratch_dir_that_the_next_drill_removes() {
    let lb = Lifeboat::init();
    let data = lb.path("data");
    std::fs::create_dir(&data).unwrap();
    for i in 0..6 {
        std::fs::write(data.join(format!("f{i}")), common::random_bytes(2 << 20, i)).unwrap();
    }
    let config = files_config(&lb);
    let cfg = config.to_str().unwrap();
    let out = lb
        .bare_cmd()
        .args(["--config", cfg, "run", "data"])
        .output()
        .unwrap();
    common::assert_ok(&out, "run data");

    // A data pack becomes a FIFO nobody writes to: the restore blocks on
    // it (after creating the tree and the empty files in the scratch
    // place) until it is killed. Nothing times the kill.
    let pack = largest_pack(&lb.repo);
    let aside = lb.path("pack-aside");
    std::fs::rename(&pack, &aside).unwrap();
    nix::unistd::mkfifo(&pack, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = lb
        .std_bare_cmd()
        .args(["--config", cfg, "drill", "data"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let scratch = lb.path("scratch");
    wait_until(Duration::from_secs(120), "the drill restoring", || {
        scratch_entries(&scratch).iter().any(|d| {
            d.join("data")
                .join(data.strip_prefix("/").unwrap())
                .is_dir()
        })
    });
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    std::fs::remove_file(&pack).unwrap();
    std::fs::rename(&aside, &pack).unwrap();

    let left = scratch_entries(&scratch);
    assert_eq!(left.len(), 1, "{left:?}");
    let name = left[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("lifeboat-drill-data-"), "{name}");
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(left[0].join(".lifeboat-drill")).unwrap()).unwrap();
    assert_eq!(marker["plan"], "data");
    assert_eq!(marker["pid"], child.id());

    let out = lb
        .bare_cmd()
        .args(["--config", cfg, "--json", "drill", "data"])
        .output()
        .unwrap();
    common::assert_ok(&out, "drill data");
    let report = common::parse_json(&out);
    assert_eq!(report["outcome"], "passed", "{report:#}");
    assert_eq!(
        report["cleaned"]["dirs"][0].as_str().unwrap(),
        left[0].to_str().unwrap()
    );
    assert!(
        scratch_entries(&scratch).is_empty(),
        "left behind: {:?}",
        scratch_entries(&scratch)
    );
}

// ------------------------------------------------------------ PostgreSQL

mod pg {
    use super::*;
    use lifeboat_testkit::postgres::{
        PgCluster, PgOptions, as_postgres, chown_postgres, pg_tempdir,
    };

    const PASSWORD: &str = "drill test password";
    const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);

    /// A repository, password file and config owned by `postgres` (which
    /// archives and fetches WAL with them), and a private copy of the
    /// binary (the drill's `restore_command` names the running binary).
    struct Env {
        dir: tempfile::TempDir,
        bin: PathBuf,
    }

    impl Env {
        fn new() -> Env {
            let dir = pg_tempdir();
            std::fs::write(dir.path().join("pw"), format!("{PASSWORD}\n")).unwrap();
            let bin = dir.path().join("lifeboat");
            std::fs::copy(env!("CARGO_BIN_EXE_lifeboat"), &bin).unwrap();
            chown_postgres(dir.path());
            let env = Env { dir, bin };
            let out = env
                .as_postgres(&["-r", env.path("repo").to_str().unwrap(), "--password-file"])
                .arg(env.path("pw"))
                .arg("init")
                .output()
                .unwrap();
            common::assert_ok(&out, "init");
            env
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn as_postgres(&self, args: &[&str]) -> std::process::Command {
            let mut c = as_postgres(&self.bin);
            c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
                .env_remove("LIFEBOAT_PASSWORD")
                .env_remove("LIFEBOAT_REPO")
                .env_remove("LIFEBOAT_CONFIG")
                .env("HOME", self.dir.path())
                .current_dir(self.dir.path())
                .args(args);
            c
        }

        /// The drill as the test's own user (root in CI: the server then
        /// runs as `postgres` through runuser).
        fn drill(&self) -> std::process::Command {
            let mut c = std::process::Command::new(&self.bin);
            c.env_remove("LIFEBOAT_PASSWORD")
                .env_remove("LIFEBOAT_REPO")
                .current_dir(self.dir.path())
                .args(["--config", self.path("lifeboat.toml").to_str().unwrap()]);
            c
        }

        fn archive_command(&self) -> String {
            format!(
                "{} -r {} --password-file {} pg wal-push %p",
                self.bin.display(),
                self.path("repo").display(),
                self.path("pw").display()
            )
        }

        fn config(&self, pg: &PgCluster, probes: &[&str]) {
            let probes: Vec<String> = probes.iter().map(|p| format!("{p:?}")).collect();
            let text = format!(
                r#"state-dir = "{root}/state"

[repository.local]
location = "{root}/repo"
password-file = "{root}/pw"

[source.db]
type = "postgres"
url = "{url}"

[plan.db]
source = "db"
repositories = ["local"]
rpo = "1h"
rto = "1h"

[plan.db.drill]
scratch = "{root}/scratch"
probes = [{probes}]
"#,
                root = self.dir.path().display(),
                url = pg.url("postgres"),
                probes = probes.join(", ")
            );
            std::fs::write(self.path("lifeboat.toml"), text).unwrap();
            chown_postgres(&self.path("lifeboat.toml"));
        }

        fn scratch(&self) -> Vec<PathBuf> {
            scratch_entries(&self.path("scratch"))
        }
    }

    /// Whether `pid` is a postgres process running from under `dir`.
    fn serves_from(pid: i64, dir: &Path) -> bool {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        text.contains("postgres") && text.contains(&*dir.to_string_lossy())
    }

    /// Every process whose command line names `dir` (a server left behind).
    fn processes_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_err() {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(&*dir.to_string_lossy()) {
                out.push(format!("{name}: {text}"));
            }
        }
        out
    }

    /// A primary archiving into the repository, with a table `t` of three
    /// rows written after its base backup (`run db`), all archived.
    fn primary_with_backup(env: &Env) -> Option<PgCluster> {
        let pg = PgCluster::start(&PgOptions {
            archive_command: Some(env.archive_command()),
            extra_conf: vec![],
        })?;
        env.config(&pg, &[]);
        pg.psql(
            "postgres",
            "CREATE TABLE t (id int PRIMARY KEY, created timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO t (id) VALUES (1)",
        );
        let out = env
            .as_postgres(&[
                "--config",
                env.path("lifeboat.toml").to_str().unwrap(),
                "run",
                "db",
            ])
            .output()
            .unwrap();
        common::assert_ok(&out, "run db");
        pg.psql("postgres", "INSERT INTO t (id) VALUES (2), (3)");
        pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
        Some(pg)
    }

    fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
    }

    #[test]
    fn a_postgres_drill_recovers_checks_probes_and_stops_its_server() {
        let env = Env::new();
        let Some(pg) = primary_with_backup(&env) else {
            return;
        };
        env.config(
            &pg,
            &[
                "select count(*) = 3 from t",
                "select max(created) > {target} - interval '1 hour' from t",
            ],
        );
        let out = env
            .drill()
            .args(["--json", "drill", "db"])
            .output()
            .unwrap();
        common::assert_ok(&out, "drill db");
        let r = common::parse_json(&out);
        assert_eq!(r["outcome"], "passed", "{r:#}");
        assert_eq!(r["kind"], "postgres");
        for name in [
            "scratch-space",
            "restore",
            "recovery",
            "amcheck",
            "probe-1",
            "probe-2",
        ] {
            assert_eq!(check(&r, name)["ok"], true, "{name}: {r:#}");
        }
        let phases: Vec<&str> = r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            phases,
            ["open", "restore", "recovery", "amcheck", "probes", "stop"]
        );
        assert!(env.scratch().is_empty(), "{:?}", env.scratch());
        assert!(
            processes_under(&env.path("scratch")).is_empty(),
            "{:?}",
            processes_under(&env.path("scratch"))
        );

        // A probe that does not hold fails the drill, and it still cleans up.
        env.config(&pg, &["select count(*) = 999 from t"]);
        let out = env
            .drill()
            .args(["--json", "drill", "db"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", common::describe(&out));
        let r = common::parse_json(&out);
        assert_eq!(r["outcome"], "failed", "{r:#}");
        assert_eq!(check(&r, "probe-1")["ok"], false, "{r:#}");
        assert_eq!(check(&r, "amcheck")["ok"], true, "{r:#}");
        assert!(env.scratch().is_empty());
        assert!(processes_under(&env.path("scratch")).is_empty());
    }

    #[test]
    fn a_postgres_drill_killed_while_its_server_runs_leaves_a_server_the_next_drill_stops() {
        let env = Env::new();
        let Some(pg) = primary_with_backup(&env) else {
            return;
        };
        // A probe that never ends in the test's time: the drill is inside
        // its checks, with its server running, when it is killed.
        env.config(&pg, &["select pg_sleep(3600) is not null"]);
        let mut child = env
            .drill()
            .args(["drill", "db"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let marker_pid = || -> Option<(PathBuf, i64)> {
            let dir = env.scratch().into_iter().next()?;
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(".lifeboat-drill")).ok()?).ok()?;
            let pid = m["server"]["pid"].as_i64().filter(|p| *p > 0)?;
            Some((dir, pid))
        };
        wait_until(
            Duration::from_secs(300),
            "the drill's server running",
            || marker_pid().is_some(),
        );
        let (dir, pid) = marker_pid().unwrap();
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        assert!(
            serves_from(pid, &dir),
            "the killed drill's server is still up"
        );

        env.config(&pg, &["select count(*) = 3 from t"]);
        let out = env
            .drill()
            .args(["--json", "drill", "db"])
            .output()
            .unwrap();
        common::assert_ok(&out, "drill db");
        let r = common::parse_json(&out);
        assert_eq!(r["outcome"], "passed", "{r:#}");
        assert_eq!(r["cleaned"]["servers"][0].as_i64(), Some(pid), "{r:#}");
        assert_eq!(
            r["cleaned"]["dirs"][0].as_str(),
            Some(dir.to_str().unwrap()),
            "{r:#}"
        );
        assert!(!serves_from(pid, &dir));
        assert!(env.scratch().is_empty(), "{:?}", env.scratch());
        assert!(
            processes_under(&env.path("scratch")).is_empty(),
            "{:?}",
            processes_under(&env.path("scratch"))
        );
    }
}
