//! The `lifeboat` binary: parses the command line, opens the repository,
//! calls one library function per command and renders its result. All the
//! work is in the library crates; this crate is glue, progress bars and
//! exit codes.

mod about;
mod args;
mod audit;
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
mod runbook;
mod serve;
mod session;

/// jemalloc instead of glibc malloc: large buffers (packs, chunks) are
/// allocated on one thread and freed on another, which leaves glibc's
/// per-thread arenas holding hundreds of MiB after a prune.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads before `main` (its `malloc_conf`
/// global; `_RJEM_MALLOC_CONF` in the environment still overrides them).
/// Requests of 1 MiB and more (packs, chunks, decompressed blobs) come
/// from jemalloc's arena for oversize requests, which does not cache
/// freed extents for reuse, instead of the per-thread arenas, where a
/// buffer freed by one thread sat unused for the 10 s decay while another
/// thread's arena mapped fresh pages. Peak RSS on linux-source (by hand,
/// loaded machine, default 8 MiB against 1 MiB): backup 103-122 -> 82 MiB,
/// restore 134-136 -> 82 MiB, `check --read-data` 104-118 -> 82 MiB, at
/// the same wall time; 82 MiB is the key derivation's 64 MiB plus the
/// binary, which every command that opens a repository reaches
/// (docs/performance.md, "One allocator setting for every command").
/// 512 KiB gave about the same (`check` 87 MiB), 2 MiB a little more
/// (90 MiB), 4 MiB most of it back (101 MiB).
///
/// The one unsafe item of product code (docs/architecture.md, "Unsafe
/// code"): jemalloc reads its options only from this symbol or the
/// environment, before any Rust code runs, and has no setting for this
/// option afterwards.
// SAFETY: the symbol is jemalloc's weak `malloc_conf` (prefixed, as
// tikv-jemalloc-sys builds it), a `const char *` it only reads; nothing
// else in the binary defines it, and the value is a pointer to a static,
// NUL-terminated string (the type is a reference to its first byte, which
// has a C pointer's layout).
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &u8 = &b"oversize_threshold:1048576\0"[0];

/// Makes jemalloc hand freed pages back to the system at once instead of
/// after its default 10 s decay, for every arena, for the rest of the
/// process. `copy` and prune (`prune`, `forget --prune`) call it: they free
/// a pack-sized buffer per pack read and written, and with the decay kept a
/// linux-source copy peaked at 289 MiB, without it 114 MiB (restic: 124);
/// `bench/prune`'s prune 193.9 MiB (restic: 135.3), with it 122.0 MiB
/// (restic: 138.3). Not for every command: backup and
/// `check --read-data` ran 25-40% slower with it (docs/performance.md,
/// "Copy"). A failure only costs memory, so it is ignored.
pub(crate) fn release_freed_memory_at_once() {
    use tikv_jemalloc_ctl::{Access, AsName};
    // MALLCTL_ARENAS_ALL (4096) addresses every arena; `arenas.*` sets the
    // default for arenas made later. Each is a ssize_t (isize) option.
    for name in [
        &b"arena.4096.dirty_decay_ms\0"[..],
        b"arena.4096.muzzy_decay_ms\0",
        b"arenas.dirty_decay_ms\0",
        b"arenas.muzzy_decay_ms\0",
    ] {
        let _ = name.name().write(0isize);
    }
}

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
    let matches = <args::Cli as clap::CommandFactory>::command().get_matches();
    let name = command_name(&matches);
    let args = <args::Cli as clap::FromArgMatches>::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.exit());
    // -q: errors only; -v: what each command does.
    let filter = if args.global.verbose {
        "info"
    } else if args.global.quiet {
        "error"
    } else {
        "warn"
    };
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
        // Every other command: log lines in the CLI's own one format
        // (`lifeboat: warning: ...`), never with colour codes.
        _ => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(output::LogLine)
            .init(),
    }
    lifeboat_repo::audit::set_witness_dir(Some(state_dir()));
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
    if args.global.quiet && !args.global.json && quiet_summary(&args.command) {
        output::set_quiet();
    }
    let started = std::time::Instant::now();
    tracing::info!("{name}: started");
    let code = runtime.block_on(run_until_signal(args));
    tracing::info!(
        "{name}: finished in {} with exit code {code}",
        output::duration_ms(started.elapsed().as_millis() as u64)
    );
    // Do not wait for lingering blocking tasks (a stalled storage request).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// The subcommand as typed, with its own subcommand (`key add`, `pg
/// backup`), for `-v` messages.
fn command_name(m: &clap::ArgMatches) -> String {
    let mut name = String::from("lifeboat");
    let mut m = m;
    while let Some((sub, next)) = m.subcommand() {
        name.push(' ');
        name.push_str(sub);
        m = next;
    }
    name
}

/// Commands whose text output is a summary of what they did, not data
/// asked for: `-q` leaves it out (errors still show). `snapshots`, `ls`,
/// `dump` and the other read commands print their result whatever `-q`.
fn quiet_summary(c: &args::Command) -> bool {
    use args::Command as C;
    matches!(
        c,
        C::Init(_)
            | C::Backup(_)
            | C::Restore(_)
            | C::Copy(_)
            | C::Forget(_)
            | C::Prune(_)
            | C::Tag(_)
            | C::Unlock(_)
            | C::Repair(_)
            | C::Run(_)
    )
}

/// The local state directory, where the audit log's witnesses are kept:
/// `LIFEBOAT_STATE_DIR`, else `$XDG_STATE_HOME/lifeboat`, else the
/// daemon's default (`/var/lib/lifeboat` for root, else
/// `~/.local/state/lifeboat`).
fn state_dir() -> std::path::PathBuf {
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
    if let Some(d) = var("LIFEBOAT_STATE_DIR") {
        std::path::PathBuf::from(d)
    } else if let Some(d) = var("XDG_STATE_HOME") {
        std::path::PathBuf::from(d).join("lifeboat")
    } else {
        lifeboat_ops::config::default_state_dir()
    }
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
    if matches!(
        cli.command,
        args::Command::Daemon(_) | args::Command::Serve(_)
    ) {
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

/// Commands that write under a repository lock, which `--no-lock` cannot
/// waive (a prune beside an unlocked backup would delete its data).
fn needs_lock(c: &args::Command) -> bool {
    use args::{Command as C, PgCommand as P};
    match c {
        C::Backup(a) => !a.dry_run,
        C::Prune(a) => !a.dry_run,
        C::Forget(a) => a.prune && !a.dry_run,
        C::Copy(_) | C::Repair(_) | C::Run(_) | C::Daemon(_) => true,
        C::Pg(p) => matches!(
            p.command,
            P::Backup { .. } | P::Dump { .. } | P::WalPush { .. }
        ),
        _ => false,
    }
}

async fn run(cli: args::Cli) -> i32 {
    let g = &cli.global;
    if g.no_cache {
        lifeboat_repo::diskcache::disable_for_process();
    }
    if g.no_lock && needs_lock(&cli.command) {
        return exit::report(&exit::cli_error(
            exit::USAGE,
            "--no-lock is for read commands: this command writes to the repository \
             and needs its lock (a prune could otherwise delete what it writes)",
        ));
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
        args::Command::Tag(a) => retention::tag(g, a).await,
        args::Command::Unlock(a) => maintenance::unlock(g, a).await,
        args::Command::Check(a) => maintenance::check(g, a).await,
        args::Command::Repair(a) => maintenance::repair(g, a).await,
        args::Command::Key(a) => keys::run(g, a).await,
        args::Command::Copy(a) => copy::run(g, a).await,
        args::Command::Forget(a) => retention::forget(g, a).await,
        args::Command::Prune(a) => retention::prune(g, a).await,
        args::Command::Pg(a) => pg::run(g, a).await,
        args::Command::Audit(a) => audit::run(g, a).await,
        args::Command::Protect(a) => audit::protect(g, a).await,
        args::Command::Detect(a) => backup::detect(g, a).await,
        args::Command::Lock(a) => retention::lock(g, a).await,
        args::Command::Unprotect(a) => audit::unprotect(g, a).await,
        args::Command::Version => about::version(g),
        args::Command::Completions(a) => about::completions(a),
        args::Command::Man => about::man(),
        args::Command::Config(a) => ops::config(g, a).await,
        args::Command::Run(a) => ops::run(g, a).await,
        args::Command::Status(a) => ops::status(g, a).await,
        args::Command::Daemon(a) => ops::daemon(g, a).await,
        args::Command::Serve(a) => serve::run(g, a).await,
        args::Command::Doctor(a) => ops::doctor(g, a).await,
        args::Command::Drill(a) => drill::drill(g, a).await,
        args::Command::Runbook(a) => runbook::runbook(g, a).await,
        args::Command::Incident(a) => runbook::incident(g, a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}

#[cfg(test)]
mod tests {
    /// The options symbol reaches jemalloc: a misspelt symbol name (or a
    /// jemalloc built with another prefix) would silently leave the
    /// default 8 MiB threshold and bring back the per-command peaks that
    /// [`super::JEMALLOC_OPTIONS`] removed.
    #[test]
    fn jemalloc_reads_the_oversize_threshold_from_the_binary() {
        use tikv_jemalloc_ctl::{Access, AsName};
        // (`_RJEM_MALLOC_CONF` in the environment would override it.)
        let threshold: usize = b"opt.oversize_threshold\0"
            .name()
            .read()
            .expect("jemalloc answers");
        assert_eq!(threshold, 1 << 20);
    }
}
