//! The `lifeboat` binary: parses the command line, opens the repository,
//! calls one library function per command and renders its result. All the
//! work is in the library crates; this crate is glue, progress bars and
//! exit codes.

mod about;
mod args;
mod backup;
mod copy;
mod drill;
mod exit;
mod keys;
mod maintenance;
mod ops;
mod output;
mod pg;
mod progress;
mod read;
mod restore;
mod retention;
mod session;

use clap::Parser;

/// jemalloc instead of glibc malloc: large buffers (packs, chunks) are
/// allocated on one thread and freed on another, which leaves glibc's
/// per-thread arenas holding hundreds of MiB after a prune.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Threads for blocking work (file I/O, decryption, local storage calls):
/// at most this many such jobs run at once, the rest queue. The bound was
/// set when the binary used glibc malloc, whose per-thread arenas kept the
/// buffers freed on each thread, so every extra thread cost resident
/// memory; jemalloc (above) has since taken most of that cost away, and
/// the bound is kept (the benchmarks in docs/performance.md ran with it).
/// Backups run their file readers (and stream backups their chunk workers)
/// on their own scoped threads, so this does not limit backup parallelism.
const MAX_BLOCKING_THREADS: usize = 8;

/// Crates that log secrets at debug level (reqsign's credential providers
/// print the S3 secret access key). Matched as target prefixes.
const SECRET_LOGGING_TARGETS: &[&str] = &["reqsign", "reqsign_core", "reqsign_aws_v4"];

fn main() {
    let args = args::Cli::parse();
    let filter = if args.global.verbose { "info" } else { "warn" };
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
        .unwrap_or_else(|_| filter.into());
    // The S3 request-signing crates log their credential provider, secret
    // key included, at debug level: never let them below info, whatever
    // LIFEBOAT_LOG asks for (a directive added last wins for its target).
    for target in SECRET_LOGGING_TARGETS {
        filter = filter.add_directive(format!("{target}=info").parse().expect("a valid directive"));
    }
    match &args.command {
        // The daemon logs with timestamps, as JSON lines when asked.
        args::Command::Daemon(d) => {
            let filter = if args.global.verbose || std::env::var_os("LIFEBOAT_LOG").is_some() {
                filter
            } else {
                filter.add_directive("lifeboat=info".parse().expect("a valid directive"))
            };
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if d.log_format == ops::LogFormat::Json {
                fmt.json().init();
            } else {
                fmt.init();
            }
        }
        _ => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeboat: cannot start: {e}");
            std::process::exit(exit::GENERIC);
        }
    };
    let code = runtime.block_on(run_until_signal(args));
    // Do not wait for lingering blocking tasks (a stalled storage request).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// Runs the command; on SIGINT or SIGTERM stops it, removes every
/// repository lock this process holds, and returns 130 or 143 (128 + the
/// signal number, as shells report it). What the stopped command wrote is
/// not referenced by any snapshot record (a backup saves its record last),
/// so nothing is half-done: prune removes the unreferenced packs.
///
/// The daemon is the exception: it handles its own signals (SIGTERM and
/// SIGINT stop it cleanly with exit 0, SIGHUP reloads its config), so it
/// runs without this handler.
async fn run_until_signal(cli: args::Cli) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    if matches!(cli.command, args::Command::Daemon(_)) {
        let code = run(cli).await;
        lifeboat_repo::lock::release_held_locks().await;
        return code;
    }
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        let code = run(cli).await;
        lifeboat_repo::lock::release_held_locks().await;
        return code;
    };
    let work = run(cli);
    tokio::pin!(work);
    let (code, name) = tokio::select! {
        code = &mut work => {
            // A lock still registered belongs to work abandoned on an error
            // path (its drop only started an asynchronous delete): remove
            // it before the runtime goes.
            lifeboat_repo::lock::release_held_locks().await;
            return code;
        }
        _ = int.recv() => (130, "SIGINT"),
        _ = term.recv() => (143, "SIGTERM"),
    };
    let released = lifeboat_repo::lock::release_held_locks().await;
    eprintln!(
        "lifeboat: stopped by {name}{}; nothing this run had not finished was saved",
        if released > 0 {
            "; the repository lock is released"
        } else {
            ""
        }
    );
    code
}

async fn run(cli: args::Cli) -> i32 {
    let g = &cli.global;
    if g.no_cache {
        lifeboat_repo::diskcache::disable_for_process();
    }
    let result = match cli.command {
        args::Command::Init(a) => session::init(g, a).await,
        args::Command::Backup(a) => backup::run(g, a).await,
        args::Command::Restore(a) => restore::restore(g, a).await,
        args::Command::Dump(a) => restore::dump(g, a).await,
        args::Command::Snapshots(a) => read::snapshots(g, a).await,
        args::Command::Ls(a) => read::ls(g, a).await,
        args::Command::Diff(a) => read::diff(g, a).await,
        args::Command::Find(a) => read::find(g, a).await,
        args::Command::Stats(a) => read::stats(g, a).await,
        args::Command::Check(a) => maintenance::check(g, a).await,
        args::Command::Repair(a) => maintenance::repair(g, a).await,
        args::Command::Key(a) => keys::run(g, a).await,
        args::Command::Copy(a) => copy::run(g, a).await,
        args::Command::Forget(a) => retention::forget(g, a).await,
        args::Command::Prune(a) => retention::prune(g, a).await,
        args::Command::Pg(a) => pg::run(g, a).await,
        args::Command::Version => about::version(g),
        args::Command::Completions(a) => about::completions(a),
        args::Command::Man => about::man(),
        args::Command::Config(a) => ops::config(g, a).await,
        args::Command::Run(a) => ops::run(g, a).await,
        args::Command::Status(a) => ops::status(g, a).await,
        args::Command::Daemon(a) => ops::daemon(g, a).await,
        args::Command::Drill(a) => drill::drill(g, a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}
