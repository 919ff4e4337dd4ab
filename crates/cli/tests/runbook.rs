//! The generated runbook cannot drift from the CLI: against a real setup
//! (two repositories, a file plan and a PostgreSQL plan on a throwaway
//! cluster archiving into the repository), after a real incident (a file
//! deleted, rows deleted), every command of every code block of
//! `lifeboat runbook` is run, its placeholders filled from real data, and
//! each must exit 0. The point-in-time section must then really have put
//! the deleted rows back, and the file section restored the deleted file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_testkit::cmd::run_ok;
use lifeboat_testkit::postgres::{
    PgCluster, PgOptions, as_postgres, chown_postgres, free_port, pg_tempdir,
};
use tempfile::TempDir;

const PASSWORD: &str = "runbook test password";
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    dir: TempDir,
    bin_dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The binary as the `postgres` user (as the archive_command runs).
    fn lifeboat_pg(&self, args: &[&str]) -> String {
        let mut c = as_postgres(self.bin_dir.join("lifeboat"));
        c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env_remove("LIFEBOAT_REPO")
            .env_remove("LIFEBOAT_PASSWORD")
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .args(args);
        run_ok(&mut c)
    }

    fn repo_cmd(&self, repo: &str, args: &[&str]) -> String {
        let mut c = as_postgres(self.bin_dir.join("lifeboat"));
        c.env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .current_dir(self.dir.path())
            .arg("-r")
            .arg(self.path(repo))
            .arg("--password-file")
            .arg(self.path("pw"))
            .args(args);
        run_ok(&mut c)
    }

    /// A shell command line as a user would paste it (as root here: the
    /// runbook's PostgreSQL commands switch user with runuser themselves).
    fn shell(&self, line: &str, cwd: &Path) -> std::process::Output {
        let pg_bin = lifeboat_testkit::postgres::bin_dir().expect("checked");
        let path = format!(
            "{}:{}:{}",
            self.bin_dir.display(),
            pg_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("sh")
            .arg("-c")
            .arg(line)
            .env("PATH", path)
            .env("LIFEBOAT_INSECURE_TEST_KDF", "1")
            .env_remove("LIFEBOAT_REPO")
            .env_remove("LIFEBOAT_PASSWORD")
            .current_dir(cwd)
            .output()
            .expect("run sh")
    }

    /// Snapshot ids of `plan` in `repo`, oldest first.
    fn snapshot_ids(&self, repo: &str, plan: &str) -> Vec<String> {
        let out = self.repo_cmd(
            repo,
            &["--json", "snapshots", "--tag", &format!("plan:{plan}")],
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("snapshots --json");
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s["id"].as_str().expect("an id").to_string())
            .collect()
    }
}

/// The commands of every ```sh block of a Markdown text, comments and
/// blank lines left out.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if inside && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            out.push(line.to_string());
        }
    }
    out
}

#[test]
fn every_command_of_the_generated_runbook_runs_against_a_real_setup() {
    if !lifeboat_testkit::postgres::available() {
        eprintln!("skipped: PostgreSQL is not installed");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        // The runbook's PostgreSQL commands use runuser, which needs root.
        assert!(
            std::env::var_os("CI").is_none(),
            "this test runs as root in CI"
        );
        eprintln!("skipped: the runbook's runuser commands need root");
        return;
    }
    let dir = pg_tempdir();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_lifeboat"), bin_dir.join("lifeboat")).unwrap();
    std::fs::write(dir.path().join("pw"), format!("{PASSWORD}\n")).unwrap();
    let data = dir.path().join("data");
    for i in 0..20 {
        lifeboat_testkit::fs::write(
            data.join(format!("docs/file-{i}.txt")),
            format!("content {i}\n"),
        );
    }
    lifeboat_testkit::fs::write(data.join("docs/contract.pdf"), "the signed contract");
    let restore = dir.path().join("restore");
    let work = dir.path().join("work");
    std::fs::create_dir(&restore).unwrap();
    std::fs::create_dir(&work).unwrap();
    let setup = Setup {
        config: dir.path().join("lifeboat.toml"),
        dir,
        bin_dir,
    };
    let archive_command = format!(
        "{} -r {} --password-file {} pg wal-push %p",
        setup.bin_dir.join("lifeboat").display(),
        setup.path("local").display(),
        setup.path("pw").display()
    );
    chown_postgres(setup.dir.path());
    setup.repo_cmd("local", &["init"]);
    setup.repo_cmd("offsite", &["init"]);
    let pg = PgCluster::start(&PgOptions {
        archive_command: Some(archive_command),
        extra_conf: vec![],
    })
    .expect("PostgreSQL is available");
    let d = setup.dir.path().display().to_string();
    std::fs::write(
        &setup.config,
        format!(
            r#"state-dir = "{d}/state"

[repository.local]
location = "{d}/local"
password-file = "{d}/pw"
password-copy = "the team vault, entry lifeboat-local"

[repository.offsite]
location = "{d}/offsite"
password-file = "{d}/pw"
role = "offsite"

[source.docs]
type = "files"
paths = ["{d}/data"]

[source.db]
type = "postgres"
url = "{url}"

[plan.docs]
source = "docs"
repositories = ["local"]
copy-to = ["offsite"]
rpo = "1h"
rto = "1h"

[plan.db]
source = "db"
repositories = ["local"]
copy-to = ["offsite"]
rpo = "1h"
"#,
            url = pg.url("postgres")
        ),
    )
    .unwrap();
    chown_postgres(setup.dir.path());

    // Before the incident: data, backups and copies, one drill.
    pg.psql(
        "postgres",
        "CREATE TABLE orders (id int PRIMARY KEY, item text)",
    );
    pg.psql(
        "postgres",
        "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 100) g",
    );
    setup.lifeboat_pg(&["run", "docs"]);
    setup.lifeboat_pg(&["run", "db"]);
    setup.lifeboat_pg(&["drill", "docs"]);

    // The incident: a file deleted (and backed up without it), rows
    // deleted by a bad migration.
    std::fs::remove_file(data.join("docs/contract.pdf")).unwrap();
    setup.lifeboat_pg(&["run", "docs"]);
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    let before = pg.now_utc();
    std::thread::sleep(Duration::from_millis(50));
    let xid = pg.psql(
        "postgres",
        "BEGIN; DELETE FROM orders WHERE id > 40; SELECT txid_current(); COMMIT;",
    );
    let xid = xid
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no xid in {xid:?}"))
        .to_string();
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "40");
    std::thread::sleep(Duration::from_millis(50));
    let after = pg.now_utc();
    pg.switch_and_wait_archived(ARCHIVE_TIMEOUT);
    let orders_file = pg.psql("postgres", "SELECT pg_relation_filenode('orders')");

    // The runbook, as on-call would print it.
    let out = setup.shell(
        &format!("lifeboat --config {} runbook", setup.config.display()),
        &work,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    // Real names and numbers, not a template.
    assert!(md.contains(&format!("{d}/local")), "{md}");
    assert!(md.contains("the team vault, entry lifeboat-local"));
    assert!(
        md.contains("Last restore drill:") && md.contains("usable copy in"),
        "{md}"
    );
    let local_ids = setup.snapshot_ids("local", "docs");
    assert_eq!(local_ids.len(), 2);
    assert!(md.contains(&format!("`{}`", &local_ids[0][..8])), "{md}");
    for section in [
        "Deleted or encrypted files",
        "Ransomware on this host",
        "Lost host or region",
        "Bad migration or deleted rows",
        "Failover to a standby",
        "Lost password",
    ] {
        assert!(md.contains(section), "no section {section:?}");
    }

    let offsite_ids = setup.snapshot_ids("offsite", "docs");
    let port = free_port().to_string();
    let fills = [
        ("<RESTORE-DIR>", restore.display().to_string()),
        ("<SNAPSHOT>", local_ids[0].clone()),
        ("<SAFE-SNAPSHOT>", offsite_ids[0].clone()),
        ("<FILE-PATTERN>", "contract.pdf".to_string()),
        ("<TARGET-TIME>", before.clone()),
        ("<TARGET-XID>", xid.clone()),
        ("<INCIDENT-FROM>", before.clone()),
        ("<INCIDENT-TO>", after.clone()),
        ("<FREE-PORT>", port.clone()),
        ("<TABLE>", "orders".to_string()),
    ];
    // The restored copy is stopped by its own runbook step; should the test
    // fail before that, this stops it.
    let _copy = PgCluster::adopt(
        restore.join("db-pitr"),
        PathBuf::from("/tmp"),
        port.parse().unwrap(),
    );
    let cmds = commands(&md);
    assert!(cmds.len() >= 25, "only {} commands: {md}", cmds.len());
    let mut rows_checked = false;
    let mut transactions_listed = false;
    for raw in &cmds {
        let mut line = raw.clone();
        for (k, v) in &fills {
            line = line.replace(k, v);
        }
        assert!(!line.contains('<'), "an unfilled placeholder in {raw:?}");
        let out = setup.shell(&line, &work);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "runbook command failed ({}): {line}\nstdout: {}\nstderr: {stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !stderr.contains("unexpected argument") && !stderr.contains("unrecognized"),
            "not recognised: {line}: {stderr}"
        );
        if line.contains("pg transactions") {
            // The bad DELETE is listed with its id, the table's file and
            // its 60 deleted rows; its id is what --target-xid takes.
            let listed = String::from_utf8_lossy(&out.stdout);
            let row = listed
                .lines()
                .find(|l| l.starts_with("xid") && l.split_whitespace().nth(1) == Some(xid.as_str()))
                .unwrap_or_else(|| panic!("transaction {xid} not listed:\n{listed}"));
            assert!(row.contains("commit"), "{row}");
            assert!(row.contains("Heap DELETE x60"), "{row}");
            assert!(row.contains(&format!("/{}", orders_file.trim())), "{row}");
            transactions_listed = true;
        }
        if line.contains("\\copy rescued FROM") {
            // The copy held the rows from before the deletion.
            rows_checked = true;
        }
    }
    assert!(rows_checked, "the runbook has no step copying rows back");
    assert!(
        transactions_listed,
        "the runbook has no step listing transactions"
    );
    // The rescued rows are back in production, and the file is restored.
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "100");
    assert_eq!(
        std::fs::read(
            restore
                .join("docs-files")
                .join(data.strip_prefix("/").unwrap())
                .join("docs/contract.pdf")
        )
        .unwrap_or_default(),
        b"the signed contract"
    );
    // The restored copy was stopped and removed by the runbook.
    assert!(!restore.join("db-pitr").exists());
}

#[test]
fn the_html_runbook_is_one_self_contained_page() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("l.toml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/lifeboat.example.toml"
    ))
    .unwrap();
    std::fs::write(
        &config,
        format!("state-dir = \"{}/state\"\n{example}", dir.path().display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--config")
        .arg(&config)
        .args(["runbook", "--format", "html"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(html.contains("<h3>Deleted or encrypted files</h3>"));
    assert!(
        html.contains("--target &lt;RESTORE-DIR&gt;/home-files"),
        "{html}"
    );
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "external reference {external}");
    }
}
