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
                .with_writer(writer)
                .with_ansi(false)
                .with_timer(timer)
                .with_filter(EnvFilter::new("debug,cultivate=debug"));
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
