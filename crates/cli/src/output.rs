//! Rendering helpers: JSON to stdout, human sizes and durations.

use std::io::Write;

use serde::Serialize;

/// `println!` for command output. A closed stdout (`lifeboat snapshots |
/// head`) ends the process quietly, as for other Unix tools, instead of
/// panicking the way `println!` does.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Set by `-q` for commands whose output is a summary (see `main`): their
/// text output is left out; errors still go to stderr.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn write_line(args: std::fmt::Arguments<'_>) {
    if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.write_all(b"\n")) {
        drop(out);
        write_failed(e);
    }
}

/// Buffered standard output for a command that prints a line per entry of
/// something large (`ls` of a whole snapshot): one write per 64 KiB, not
/// per line. Failures end the process as in [`write_line`]. Not affected
/// by `-q` (listings are not summaries).
pub struct Lines(std::io::BufWriter<std::io::Stdout>);

impl Lines {
    pub fn new() -> Self {
        Lines(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ))
    }

    pub fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if let Err(e) = self.0.write_fmt(args).and_then(|_| self.0.write_all(b"\n")) {
            write_failed(e);
        }
    }

    pub fn finish(mut self) {
        if let Err(e) = self.0.flush() {
            write_failed(e);
        }
    }
}

fn write_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(crate::exit::OK);
    }
    eprintln!("lifeboat: error: cannot write output: {e}");
    std::process::exit(crate::exit::GENERIC);
}

/// Whether `e` is, or wraps, a write to a closed pipe (stdout read by
/// `head`).
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A time for text output: in the local time zone (`TZ` is honoured, as
/// by `date`), with the zone named, e.g. `2026-03-01 10:14:00 CET`. JSON
/// output keeps UTC RFC 3339.
pub fn local_time(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// [`local_time`] to the minute, for schedules.
pub fn local_minute(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// Log events (tracing's) on stderr in the same one-line form as the
/// CLI's own messages: `lifeboat: warning: MESSAGE`, `lifeboat: error:
/// ...`, `lifeboat: info: ...`, no time, no target, no colour, so a
/// warning looks the same whichever part of lifeboat raised it. Debug and
/// trace events (`LIFEBOAT_LOG=debug`) keep their target, which is what
/// they are for.
pub struct LogLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LogLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        write!(writer, "lifeboat: {level}: ")?;
        if *meta.level() > tracing::Level::INFO {
            write!(writer, "{}: ", meta.target())?;
        }
        tracing_subscriber::fmt::FormatFields::format_fields(ctx, writer.by_ref(), event)?;
        writeln!(writer)
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Regression (issue 13): tracing's warnings came as `WARN target:
    /// message`, with ANSI colour codes even into a file, beside the CLI's
    /// own `lifeboat: warning: ...` lines. Now one format, no colour.
    #[test]
    fn log_events_use_the_cli_format_without_colour() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(LogLine)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("cannot refresh the repository lock: timed out");
            tracing::error!(code = 3, "broken");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "lifeboat: warning: cannot refresh the repository lock: timed out\n\
             lifeboat: error: broken code=3\n"
        );
        assert!(!text.contains('\x1b'));
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
