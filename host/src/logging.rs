//! Diagnostics: tracing to stderr (by `-v`/`RUST_LOG`) and to a rotated log
//! file, every line with an ISO 8601 timestamp and a level (P32).

use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::time::UtcTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// The directory of cultivate's own log files: `$CULTIVATE_LOG_DIR`, or
/// `$XDG_STATE_HOME/cultivate/logs` (`~/.local/state/cultivate/logs`).
pub fn log_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CULTIVATE_LOG_DIR") {
        return PathBuf::from(dir);
    }
    dirs::state_dir().or_else(dirs::data_local_dir).unwrap_or_else(std::env::temp_dir).join("cultivate").join("logs")
}

/// Keeps the file writer alive; drop it last.
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// The stderr filter for a verbosity: warnings by default, commands at `-v`, everything at `-vv`.
pub fn stderr_filter(verbose: u8, quiet: bool) -> String {
    match (quiet, verbose) {
        (true, _) => "error".into(),
        (false, 0) => "warn".into(),
        (false, 1) => "warn,cultivate=debug,cultivate::cmd=debug".into(),
        (false, _) => "debug,cultivate=trace".into(),
    }
}

/// Installs the subscriber: stderr by verbosity (or `RUST_LOG`), the file at debug, rotated daily, 14 files kept.
pub fn init(verbose: u8, quiet: bool) -> LogGuard {
    let stderr_filter =
        std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| stderr_filter(verbose, quiet));
    let timer = UtcTime::rfc_3339();
    let stderr_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_timer(timer.clone())
        .with_target(false)
        .with_filter(EnvFilter::new(stderr_filter));
    let dir = log_dir();
    let (file_layer, guard) = match file_writer(&dir) {
        Some((writer, guard)) => {
            let layer = fmt::layer()
                .with_writer(PrefixedLines(writer))
                .with_ansi(false)
                .with_timer(timer)
                .with_filter(EnvFilter::new("info,cultivate=debug"));
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(stderr_layer).with(file_layer).try_init();
    LogGuard { _file: guard }
}

fn file_writer(dir: &Path) -> Option<(tracing_appender::non_blocking::NonBlocking, WorkerGuard)> {
    std::fs::create_dir_all(dir).ok()?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("cultivate")
        .filename_suffix("log")
        .max_log_files(14)
        .build(dir)
        .ok()?;
    Some(tracing_appender::non_blocking(appender))
}

/// Gives every line of a multi-line event the event's timestamp and level,
/// and drops blank lines, so each line of the file starts with an ISO 8601
/// timestamp and a level (P32).
#[derive(Clone)]
struct PrefixedLines<W>(W);

impl<'a, W: std::io::Write + Clone + 'a> tracing_subscriber::fmt::MakeWriter<'a> for PrefixedLines<W> {
    type Writer = PrefixedLines<W>;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl<W: std::io::Write> std::io::Write for PrefixedLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(prefix_lines(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// One formatted event, each continuation line prefixed like the first.
fn prefix_lines(event: &str) -> String {
    let mut lines = event.lines().filter(|l| !l.trim().is_empty());
    let Some(first) = lines.next() else { return String::new() };
    let prefix: String = first.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(event.len() + 64);
    out.push_str(first);
    out.push('\n');
    for line in lines {
        out.push_str(&prefix);
        out.push_str(" | ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn timestamped(line: &str) -> bool {
        let mut it = line.split_whitespace();
        let ts = it.next().unwrap_or("");
        let level = it.next().unwrap_or("");
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok()
            && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level)
    }

    #[test]
    fn continuation_lines_get_the_events_prefix() {
        let out = prefix_lines("2026-11-26T05:00:00.1Z DEBUG cultivate: error: boom\n\ncaused by: x\n");
        assert_eq!(
            out,
            "2026-11-26T05:00:00.1Z DEBUG cultivate: error: boom\n2026-11-26T05:00:00.1Z DEBUG | caused by: x\n"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// P32: whatever a message holds, every line written starts with a timestamp and a level.
        #[test]
        fn p32_every_line_is_timestamped(msg in "\\PC{0,40}(\n\\PC{0,40}){0,4}\n?") {
            let event = format!("2026-11-26T05:00:00.123456Z  INFO cultivate: {msg}\n");
            for line in prefix_lines(&event).lines() {
                prop_assert!(timestamped(line), "{line:?}");
            }
        }
    }
}
