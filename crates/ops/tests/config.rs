//! The config file: the minimal file verbatim, the shipped
//! example, defaults, and every class of config error with its line and
//! key (the table in docs/operations.md).

use std::path::Path;

use lifeboat_ops::Config;
use lifeboat_ops::config::{Media, PasswordSource, Role, SourceConfig};

/// The minimal config of issue 14, exactly as written there.
pub const MINIMAL: &str = include_str!("../../../tests/fixtures/issue14-minimal.toml");

#[test]
fn the_minimal_config_parses_as_written() {
    let c = Config::parse(MINIMAL, Path::new("/etc/lifeboat/lifeboat.toml")).unwrap();
    let r = &c.repositories["local"];
    assert_eq!(r.location, "/srv/backup/repo");
    assert_eq!(
        r.password,
        PasswordSource::File("/etc/lifeboat/local.pw".into())
    );
    assert_eq!(r.role, Role::Primary);
    assert_eq!(r.media, Media::Disk);
    assert!(!r.immutable);
    assert_eq!(
        c.sources["home"],
        SourceConfig::Files {
            paths: vec!["/home".into()],
            excludes: vec![],
            one_file_system: false,
            exclude_caches: false
        }
    );
    let p = &c.plans["home"];
    assert_eq!(p.rpo.seconds(), 3600);
    assert_eq!(p.schedule.as_str(), "*/15 * * * *");
    assert!(!p.schedule_derived);
    assert_eq!(
        c.alerts["ops"].webhook.as_deref(),
        Some("http://127.0.0.1:9000/hook")
    );
    assert_eq!(c.daemon.listen, "127.0.0.1:9898");
    assert_eq!(c.daemon.max_concurrent, 2);
    // The effective config (config show) parses back to the same plan.
    let shown = c.to_toml();
    assert!(shown.contains("schedule = \"*/15 * * * *\""), "{shown}");
    assert!(shown.contains("max-concurrent = 2"), "{shown}");
}

#[test]
fn the_shipped_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/lifeboat.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.plans.is_empty());
}

#[test]
fn a_plan_without_schedule_gets_one_from_its_rpo() {
    let text = MINIMAL.replace("schedule = \"*/15 * * * *\"\n", "");
    let c = Config::parse(&text, Path::new("x.toml")).unwrap();
    assert_eq!(c.plans["home"].schedule.as_str(), "*/30 * * * *");
    assert!(c.plans["home"].schedule_derived);
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let text = MINIMAL
        .replace("/srv/backup/repo", "repo")
        .replace("/etc/lifeboat/local.pw", "local.pw");
    let c = Config::parse(&text, Path::new("/cfg/dir/lifeboat.toml")).unwrap();
    assert_eq!(c.repositories["local"].location, "/cfg/dir/repo");
    assert_eq!(
        c.repositories["local"].password,
        PasswordSource::File("/cfg/dir/local.pw".into())
    );
}

/// One error class: (what, edit of the minimal file, line, key, words of
/// the message).
fn error_of(text: &str) -> lifeboat_ops::ConfigError {
    match Config::parse(text, Path::new("/etc/lifeboat/lifeboat.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn every_error_class_names_file_line_key_and_what_is_allowed() {
    let cases: Vec<(&str, String, usize, &str, &str)> = vec![
        (
            "unknown key",
            MINIMAL.replace("rpo = \"1h\"", "rpo = \"1h\"\nrpoo = \"2h\""),
            15,
            "plan.home.rpoo",
            "unknown field `rpoo`, expected one of",
        ),
        (
            "wrong type",
            MINIMAL.replace("paths = [\"/home\"]", "paths = \"/home\""),
            9,
            "source.home.paths",
            "invalid type",
        ),
        (
            "bad duration",
            MINIMAL.replace("rpo = \"1h\"", "rpo = \"an hour\""),
            14,
            "plan.home.rpo",
            "write a number and a unit",
        ),
        (
            "zero duration",
            MINIMAL.replace("rpo = \"1h\"", "rpo = \"0m\""),
            14,
            "plan.home.rpo",
            "more than zero",
        ),
        (
            "bad cron",
            MINIMAL.replace("*/15 * * * *", "every 15 minutes"),
            15,
            "plan.home.schedule",
            "five fields",
        ),
        (
            "unknown repository",
            MINIMAL.replace("repositories = [\"local\"]", "repositories = [\"nas\"]"),
            13,
            "plan.home.repositories",
            "no repository named \"nas\"; defined: local",
        ),
        (
            "unknown source",
            MINIMAL.replace("source = \"home\"", "source = \"hmoe\""),
            12,
            "plan.home.source",
            "no source named \"hmoe\"; defined: home",
        ),
        (
            "unknown enum value",
            MINIMAL.replace("role = \"primary\"", "role = \"backup\""),
            4,
            "repository.local.role",
            "expected one of `primary`, `offsite`, `cold`",
        ),
        (
            "no password reference",
            MINIMAL.replace("password-file = \"/etc/lifeboat/local.pw\"\n", ""),
            1,
            "repository.local.password-file",
            "password-file, password-command or password-env",
        ),
        (
            "bad address",
            MINIMAL.replace("127.0.0.1:9898", "localhost"),
            21,
            "daemon.listen",
            "IP:PORT",
        ),
        (
            "bad URL",
            MINIMAL.replace("http://127.0.0.1:9000/hook", "127.0.0.1:9000/hook"),
            18,
            "alert.ops.webhook",
            "not an http:// or https:// URL",
        ),
        (
            "key of another source type",
            MINIMAL.replace(
                "paths = [\"/home\"]",
                "paths = [\"/home\"]\nurl = \"postgresql://x\"",
            ),
            10,
            "source.home.url",
            "allowed: paths, excludes, one-file-system, exclude-caches",
        ),
        (
            "unknown source type",
            MINIMAL.replace("type = \"files\"", "type = \"mysql\""),
            8,
            "source.home.type",
            "expected one of `files`, `postgres`",
        ),
        (
            "bad name",
            MINIMAL.replace("[plan.home]", "[plan.\"my plan\"]"),
            11,
            "plan.my plan",
            "letters, digits",
        ),
        (
            "TOML syntax",
            MINIMAL.replace("rpo = \"1h\"", "rpo = 1h"),
            14,
            "plan.home.rpo",
            "",
        ),
    ];
    for (what, text, line, key, words) in cases {
        let e = error_of(&text);
        assert_eq!(e.file, Path::new("/etc/lifeboat/lifeboat.toml"), "{what}");
        assert_eq!(e.line, Some(line), "{what}: {e}");
        assert_eq!(e.key, key, "{what}: {e}");
        assert!(e.message.contains(words), "{what}: {e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("/etc/lifeboat/lifeboat.toml:{line}: {key}")),
            "{what}: {shown}"
        );
    }
}

#[test]
fn a_plan_s_drill_table_has_defaults_and_checked_values() {
    let c = Config::parse(MINIMAL, Path::new("/cfg/lifeboat.toml")).unwrap();
    let d = &c.plans["home"].drill;
    assert_eq!(d.every, None);
    assert_eq!(d.scratch, None);
    assert_eq!(
        (
            d.count_tolerance_percent,
            d.data_sample_percent,
            d.data_tolerance_percent
        ),
        (5.0, 5.0, 10.0)
    );
    let text = format!(
        "{MINIMAL}\n[plan.home.drill]\nevery = \"7d\"\nscratch = \"scratch\"\ncount-tolerance = \"2%\"\ndata-sample = \"50%\"\ndata-tolerance = \"0%\"\nprobes = [\"select true\"]\nprobe-database = \"app\"\n"
    );
    let c = Config::parse(&text, Path::new("/cfg/lifeboat.toml")).unwrap();
    let d = &c.plans["home"].drill;
    assert_eq!(d.every.map(|e| e.seconds()), Some(7 * 86_400));
    assert_eq!(d.scratch.as_deref(), Some(Path::new("/cfg/scratch")));
    assert_eq!(
        (
            d.count_tolerance_percent,
            d.data_sample_percent,
            d.data_tolerance_percent
        ),
        (2.0, 50.0, 0.0)
    );
    assert_eq!(d.probes, ["select true"]);
    assert_eq!(d.probe_database, "app");

    let e = error_of(&format!(
        "{MINIMAL}\n[plan.home.drill]\ndata-tolerance = \"120%\"\n"
    ));
    assert_eq!(e.key, "plan.home.drill.data-tolerance");
    assert_eq!(e.line, Some(24));
    assert!(e.message.contains("a percentage from 0% to 100%"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}\n[plan.home.drill]\nevery = \"weekly\"\n"
    ));
    assert_eq!(e.key, "plan.home.drill.every");
    let e = error_of(&format!("{MINIMAL}\n[plan.home.drill]\nevry = \"7d\"\n"));
    assert_eq!(e.key, "plan.home.drill.evry");
}

#[test]
fn a_plan_s_ransomware_detection_keys_have_defaults_and_checked_values() {
    let c = Config::parse(MINIMAL, Path::new("/cfg/lifeboat.toml")).unwrap();
    let d = c.plans["home"].detect.as_ref().expect("on by default");
    assert_eq!(
        (
            d.share_percent,
            d.min_files,
            d.stable_share_percent,
            d.stable_days,
            d.protect_days
        ),
        (10.0, 10, 50.0, 30, 30)
    );
    let with = |keys: &str| MINIMAL.replace("rpo = \"1h\"", &format!("rpo = \"1h\"\n{keys}"));
    let c = Config::parse(
        &with("detect-share = \"25%\"\ndetect-min-files = 3\ndetect-stable-share = \"80%\"\ndetect-stable-days = 7\ndetect-protect-days = 90"),
        Path::new("/cfg/lifeboat.toml"),
    )
    .unwrap();
    let o = c.plans["home"].detect.as_ref().unwrap().options();
    assert_eq!(
        (
            o.share,
            o.min_files,
            o.stable_share,
            o.stable_days,
            o.protect_days
        ),
        (0.25, 3, 0.8, 7, 90)
    );
    let c = Config::parse(&with("detect = false"), Path::new("/cfg/lifeboat.toml")).unwrap();
    assert!(c.plans["home"].detect.is_none());

    for (keys, key, words) in [
        (
            "detect-share = \"0%\"",
            "plan.home.detect-share",
            "detect = false",
        ),
        (
            "detect-share = \"lots\"",
            "plan.home.detect-share",
            "a percentage from 0% to 100%",
        ),
        (
            "detect-min-files = 0",
            "plan.home.detect-min-files",
            "a whole number from 1",
        ),
        (
            "detect-protect-days = -3",
            "plan.home.detect-protect-days",
            "a whole number from 1 to 36500",
        ),
        (
            "detect-stable-days = \"30\"",
            "plan.home.detect-stable-days",
            "invalid type",
        ),
    ] {
        let e = error_of(&with(keys));
        assert_eq!(e.key, key, "{keys}: {e}");
        assert_eq!(e.line, Some(15), "{keys}: {e}");
        assert!(e.message.contains(words), "{keys}: {e}");
    }
}

/// Each location kind gets its own default medium; a `lifeboat serve`
/// endpoint was taken for SFTP.
#[test]
fn each_location_kind_has_its_own_default_media() {
    let mut text = String::new();
    for (name, location) in [
        ("disk", "/srv/backup/repo"),
        ("s3", "s3://bucket/repo"),
        ("sftp", "sftp://backup@host/srv/repo"),
        ("server", "lifeboat+http://backup-server:8470/"),
    ] {
        text.push_str(&format!(
            "[repository.{name}]\nlocation = \"{location}\"\npassword-file = \"/etc/lb.pw\"\n\n"
        ));
    }
    let c = Config::parse(&text, Path::new("/etc/lifeboat/lifeboat.toml")).unwrap();
    // As the config file names them (`config show`, `status --json`).
    let media =
        |c: &lifeboat_ops::Config, n: &str| serde_json::to_value(c.repositories[n].media).unwrap();
    assert_eq!(media(&c, "disk"), "disk");
    assert_eq!(media(&c, "s3"), "object-store");
    assert_eq!(media(&c, "sftp"), "sftp");
    assert_eq!(media(&c, "server"), "remote-server");
    // And it can be said explicitly.
    let c = Config::parse(
        "[repository.x]\nlocation = \"lifeboat+http://h:1/\"\npassword-file = \"/p\"\nmedia = \"remote-server\"\n",
        Path::new("/etc/lifeboat/lifeboat.toml"),
    );
    let c = c.expect("media = \"remote-server\" is a medium");
    assert_eq!(media(&c, "x"), "remote-server");
}
