//! Build details for `lifeboat version`: the git commit (when built from a
//! checkout) and the compiler. Missing tools leave them "unknown".

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or("unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .map(|_| "-dirty")
        .unwrap_or("");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or("unknown".into());
    println!("cargo:rustc-env=LIFEBOAT_GIT_COMMIT={commit}{dirty}");
    println!("cargo:rustc-env=LIFEBOAT_RUSTC_VERSION={rustc_version}");
    println!(
        "cargo:rustc-env=LIFEBOAT_BUILD_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=LIFEBOAT_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    // Rerun when the commit or the tree changes, not only when this
    // crate's files do (cargo's default without these lines): a commit
    // that touched only another crate kept the previous commit's stamp,
    // and benchmarks name their binary by it. HEAD, the branch it names,
    // packed refs and the index (commits, checkouts, adds), wherever git
    // keeps them (a worktree's HEAD is not under `.git/`), and every
    // crate's sources (the `-dirty` mark).
    let mut watched = vec!["HEAD".to_string(), "index".into(), "packed-refs".into()];
    if let Some(branch) = output("git", &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = output("git", &["rev-parse", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // `crates` holds this build script too.
    for path in ["../../crates", "../../Cargo.toml", "../../Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
