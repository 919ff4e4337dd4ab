//! What the binary says about itself: `version` with build details, shell
//! completions and the man page generated from the clap definitions, and
//! `--help` with the global options apart.

mod common;

use common::*;

#[test]
fn version_names_the_build() {
    let lb = Lifeboat::new();
    let out = lb.bare_cmd().arg("version").output().unwrap();
    assert_ok(&out, "version");
    let text = stdout(&out);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("commit"), "{text}");
    assert!(text.contains("rustc"), "{text}");
    let out = lb.bare_cmd().args(["version", "--json"]).output().unwrap();
    let v = parse_json(&out);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["commit"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    assert!(v["repository_format"].as_u64().is_some(), "{v}");
}

#[test]
fn completions_and_man_page_cover_every_command() {
    let lb = Lifeboat::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = lb.bare_cmd().args(["completions", shell]).output().unwrap();
        assert_ok(&out, shell);
        let text = stdout(&out);
        for cmd in ["backup", "restore", "forget", "read-data-subset"] {
            assert!(text.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    let out = lb.bare_cmd().arg("man").output().unwrap();
    assert_ok(&out, "man");
    let page = stdout(&out);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("backup"), "{page}");
    // An unknown shell is a usage error.
    let out = lb
        .bare_cmd()
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_lists_global_options_apart_from_the_commands_own() {
    let lb = Lifeboat::new();
    let out = lb.bare_cmd().args(["forget", "--help"]).output().unwrap();
    assert_ok(&out, "forget --help");
    let help = stdout(&out);
    let global = help
        .find("Global options:")
        .expect("a Global options heading");
    assert!(help.find("--keep-daily").unwrap() < global, "{help}");
    assert!(help[global..].contains("--password-file"), "{help}");
}
