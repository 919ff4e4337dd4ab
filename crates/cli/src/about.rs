//! `version`, `completions` and `man`: what the binary says about itself,
//! generated from the clap definitions so completions and the man page
//! always match the options that exist.

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs, Global};
use crate::exit;
use crate::output::outln;

/// Build details, also in `--json`.
pub fn version(g: &Global) -> Result<i32> {
    let details = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("LIFEBOAT_GIT_COMMIT"),
        "rustc": env!("LIFEBOAT_RUSTC_VERSION"),
        "target": env!("LIFEBOAT_TARGET"),
        "profile": env!("LIFEBOAT_BUILD_PROFILE"),
        "repository_format": lifeboat_repo::FORMAT_VERSION,
    });
    if g.json {
        crate::output::json(&details)?;
    } else {
        outln!(
            "lifeboat {} (commit {}, {} build, {})\nbuilt with {}\nrepository format version {}",
            details["version"].as_str().unwrap_or_default(),
            details["commit"].as_str().unwrap_or_default(),
            details["profile"].as_str().unwrap_or_default(),
            details["target"].as_str().unwrap_or_default(),
            details["rustc"].as_str().unwrap_or_default(),
            details["repository_format"],
        );
    }
    Ok(exit::OK)
}

/// A completion script for `shell` on stdout.
pub fn completions(a: CompletionsArgs) -> Result<i32> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "lifeboat", &mut out);
    write_out(&out)
}

/// The man page (roff) on stdout: `lifeboat man > lifeboat.1`.
pub fn man() -> Result<i32> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    write_out(&out)
}

fn write_out(bytes: &[u8]) -> Result<i32> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        Ok(()) => Ok(exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(e.into()),
    }
}
