//! Diagnostics: tracing to stderr (by `-v`/`RUST_LOG`) and to a rotated log
//! file, every line with an ISO 8601 timestamp and a level (P32).
//!
//! 1. Both sinks redact registered secrets ([`crate::redact::RedactingMakeWriter`]).
//! 2. The log directory is private (0700) and so is each file in it (0600):
//!    created that way, and files of earlier versions tightened on the next run.
//! 3. Files written before the redaction knew a secret are found
//!    ([`leaking_files`]) so the user can be warned and offered [`purge`].

use std::io::BufRead;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
        .with_writer(crate::redact::RedactingMakeWriter(std::io::stderr))
        .with_timer(timer.clone())
        .with_target(false)
        .with_filter(EnvFilter::new(stderr_filter));
    let dir = log_dir();
    let (file_layer, guard) = match file_writer(&dir) {
        Some((writer, guard)) => {
            let layer = fmt::layer()
                .with_writer(crate::redact::RedactingMakeWriter(PrefixedLines(writer)))
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

/// Prefix and suffix of the log files: `cultivate.YYYY-MM-DD.log`.
const FILE_PREFIX: &str = "cultivate.";
const FILE_SUFFIX: &str = ".log";

/// True for the name of one of cultivate's log files.
fn is_log_file(name: &str) -> bool {
    name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)
}

/// Today's file (the appender rotates by UTC date).
fn todays_file(dir: &Path) -> PathBuf {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::OffsetDateTime::now_utc().format(&fmt).unwrap_or_default();
    dir.join(format!("{FILE_PREFIX}{date}{FILE_SUFFIX}"))
}

/// The log files in `dir`.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| is_log_file(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Makes `dir` private: created 0700; an existing one tightened to 0700 when it
/// holds nothing but cultivate's logs (a `CULTIVATE_LOG_DIR` shared with other
/// files keeps its mode: the files themselves are 0600). Every log file in it
/// becomes 0600, and today's is created 0600 before the appender opens it.
fn make_private(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let only_ours = std::fs::read_dir(dir)?.flatten().all(|e| is_log_file(&e.file_name().to_string_lossy()));
    if only_ours {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(todays_file(dir))?;
    for f in log_files(dir) {
        let mode = std::fs::metadata(&f)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// The log files in `dir` holding a line the redaction would now hide: written
/// by an earlier cultivate, or before the secret was known.
pub fn leaking_files(dir: &Path) -> Vec<PathBuf> {
    if !crate::redact::any() {
        return Vec::new();
    }
    log_files(dir)
        .into_iter()
        .filter(|f| {
            let Ok(file) = std::fs::File::open(f) else { return false };
            std::io::BufReader::new(file)
                .split(b'\n')
                .map_while(Result::ok)
                .any(|line| crate::redact::reveals(&String::from_utf8_lossy(&line)))
        })
        .collect()
}

/// Removes every log file in `dir` (today's, still open for this run, is
/// emptied instead). Returns how many held anything.
pub fn purge(dir: &Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    let today = todays_file(dir);
    let mut n = 0;
    for f in log_files(dir) {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        if f == today {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .and_then(|file| file.set_len(0))
                .with_context(|| format!("cannot empty {}", f.display()))?;
        } else {
            std::fs::remove_file(&f).with_context(|| format!("cannot remove {}", f.display()))?;
        }
        if len > 0 {
            n += 1;
        }
    }
    Ok(n)
}

fn file_writer(dir: &Path) -> Option<(tracing_appender::non_blocking::NonBlocking, WorkerGuard)> {
    if let Err(e) = make_private(dir) {
        use std::io::Write as _;
        let _ =
            writeln!(std::io::stderr(), "warning: not writing a log file: cannot make {} private: {e}", dir.display());
        return None;
    }
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

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn log_dir_and_files_are_private_and_older_ones_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/cultivate/logs");
        make_private(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&todays_file(&dir)), 0o600);
        let old = dir.join("cultivate.2020-01-01.log");
        std::fs::write(&old, "x\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&old)), (0o700, 0o600));
    }

    #[test]
    fn a_shared_directory_keeps_its_mode_but_the_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(tmp.path().join("someone-elses.txt"), "x").unwrap();
        make_private(tmp.path()).unwrap();
        assert_eq!(mode(tmp.path()), 0o755);
        assert_eq!(mode(&todays_file(tmp.path())), 0o600);
    }

    #[test]
    fn files_with_a_known_secret_are_found_and_purge_removes_all_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        make_private(dir).unwrap();
        crate::redact::register(["old-Leak-5c1e".to_string()]);
        let leaky = dir.join("cultivate.2020-01-01.log");
        std::fs::write(&leaky, "2020-01-01T00:00:00Z DEBUG | \"APP_SECRET=old-Leak-5c1e\"\n").unwrap();
        let clean = dir.join("cultivate.2020-01-02.log");
        std::fs::write(&clean, "2020-01-02T00:00:00Z INFO connected\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "old-Leak-5c1e").unwrap();
        assert_eq!(leaking_files(dir), vec![leaky.clone()]);
        std::fs::write(todays_file(dir), "today\n").unwrap();
        assert_eq!(purge(dir).unwrap(), 3);
        assert!(!leaky.exists() && !clean.exists());
        assert_eq!(std::fs::read(todays_file(dir)).unwrap(), b"");
        assert!(dir.join("notes.txt").exists(), "only cultivate's log files go");
        assert!(leaking_files(dir).is_empty());
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
