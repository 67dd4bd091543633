//! The Rust-side traits: what a plugin implements and what the host offers.
//!
//! Plugin authors implement [`Plugin`] (and, for transports, [`Connection`] and
//! [`Channel`]) and export it with [`crate::export_plugin!`]. The host
//! implements [`HostServices`]. Neither side sees the FFI types in
//! [`crate::ffi`], which carry these traits across the boundary.

use std::sync::Arc;
use std::time::Duration;

use crate::{
    ConnectSpec, ConnectionInfo, ErrorKind, ExecOutput, ExecRequest, LogLevel, Manifest, PluginError, Probe, TargetInfo,
};

/// A plugin. One per dynamic library.
pub trait Plugin: Send + Sync + 'static {
    /// The manifest. Called once at load.
    fn manifest(&self) -> Manifest;

    /// Can this plugin work on the target? Runs commands through `host`.
    fn probe(&self, host: &Host, target: &TargetInfo) -> Result<Probe, PluginError> {
        let _ = (host, target);
        Ok(Probe { available: true, ..Probe::default() })
    }

    /// Runs one operation of [`crate::ops`]: `payload` and the result are JSON.
    fn call(&self, host: &Host, op: &str, payload: &str) -> Result<String, PluginError> {
        let _ = (host, payload);
        Err(PluginError::unsupported(format!("operation {op}")))
    }

    /// For transports: open a connection to the target.
    fn connect(&self, host: &Host, spec: &ConnectSpec) -> Result<Box<dyn Connection>, PluginError> {
        let _ = (host, spec);
        Err(PluginError::unsupported("connect"))
    }
}

/// An open connection of a transport.
pub trait Connection: Send + Sync {
    /// Starts a command. Its `stdin` field, if set, is written first; more can
    /// be streamed through the channel.
    fn exec(&self, req: &ExecRequest) -> Result<Box<dyn Channel>, PluginError>;

    /// Writes a file atomically (temporary name, then rename) with `mode`.
    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        put_file_via_exec(self, path, mode, data)
    }

    /// Describes the peer.
    fn info(&self) -> ConnectionInfo;

    /// Closes the connection; later calls fail.
    fn close(&self) {}
}

/// A running command.
pub trait Channel: Send {
    /// Writes to the command's stdin; blocks while the peer's window is full.
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), PluginError>;

    /// Closes stdin (EOF).
    fn close_stdin(&mut self) -> Result<(), PluginError>;

    /// The next output or the exit. [`ChannelEvent::Exit`] comes last, after
    /// all output; [`ChannelEvent::Idle`] when nothing arrived within `wait`.
    fn next_event(&mut self, wait: Duration) -> Result<ChannelEvent, PluginError>;
}

/// What a running command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// Bytes on stdout.
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// The exit status (128+N for signal N); the last event.
    Exit(i32),
    /// Nothing within the wait.
    Idle,
}

/// Drains a channel into collected output, closing stdin first. Gives up
/// after `timeout` with a [`ErrorKind::Timeout`] error.
pub fn collect(channel: &mut dyn Channel, timeout: Option<Duration>) -> Result<ExecOutput, PluginError> {
    collect_with(channel, timeout, &mut |_, _| {})
}

/// Like [`collect`], calling `on_output(is_stderr, bytes)` as output arrives.
pub fn collect_with(
    channel: &mut dyn Channel,
    timeout: Option<Duration>,
    on_output: &mut dyn FnMut(bool, &[u8]),
) -> Result<ExecOutput, PluginError> {
    channel.close_stdin()?;
    let start = std::time::Instant::now();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    loop {
        match channel.next_event(Duration::from_millis(200))? {
            ChannelEvent::Stdout(b) => {
                on_output(false, &b);
                stdout.extend_from_slice(&b);
            }
            ChannelEvent::Stderr(b) => {
                on_output(true, &b);
                stderr.extend_from_slice(&b);
            }
            ChannelEvent::Exit(status) => {
                return Ok(ExecOutput {
                    status,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                })
            }
            ChannelEvent::Idle => {}
        }
        if let Some(limit) = timeout {
            if start.elapsed() > limit {
                return Err(PluginError::new(
                    ErrorKind::Timeout,
                    format!("command did not finish within {}s", limit.as_secs()),
                ));
            }
        }
    }
}

/// The default [`Connection::put_file`]: `cat` into a temporary file next to
/// the destination, check its size, set the mode, rename over the destination.
pub fn put_file_via_exec<C: Connection + ?Sized>(
    conn: &C,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<(), PluginError> {
    let q = crate::shell::quote(path);
    // The size check matters: when a connection is cut, `cat` just sees the
    // end of its input, and a truncated file must never be renamed into place.
    let len = data.len();
    let script = format!(
        "set -e; umask 077; tmp={q}.cultivate-tmp.$$; trap 'rm -f \"$tmp\"' EXIT; \
         cat > \"$tmp\"; n=$(wc -c < \"$tmp\"); \
         if [ \"$n\" -ne {len} ]; then echo \"received $n of {len} bytes\" >&2; exit 1; fi; \
         chmod {mode:o} \"$tmp\"; mv -f \"$tmp\" {q}; trap - EXIT"
    );
    let mut ch = conn.exec(&ExecRequest::shell(script))?;
    for chunk in data.chunks(64 * 1024) {
        ch.write_stdin(chunk)?;
    }
    collect(ch.as_mut(), None)?.check(&format!("writing {path}"))?;
    Ok(())
}

/// What the host offers a plugin.
pub trait HostServices: Send + Sync + 'static {
    /// Runs a command on the target through the selected transport and collects its output.
    fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError>;
    /// Writes a file on the target with `mode`.
    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError>;
    /// Records a log line from plugin `plugin`.
    fn log(&self, level: LogLevel, plugin: &str, message: &str);
}

/// The host, as a plugin sees it. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: crate::ffi::FfiHostBox,
    pub(crate) plugin: Arc<str>,
}

impl Host {
    /// Wraps host services (host side, or a fake in tests).
    pub fn new(services: Arc<dyn HostServices>) -> Self {
        Host { inner: crate::ffi::host_to_ffi(services), plugin: Arc::from("") }
    }

    /// The same host, logging as `plugin`.
    pub fn for_plugin(&self, plugin: &str) -> Self {
        Host { inner: self.inner.clone(), plugin: Arc::from(plugin) }
    }

    /// Runs a command on the target and collects its output.
    pub fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        crate::ffi::host_exec(&self.inner, req)
    }

    /// Runs `argv` and collects its output.
    pub fn run<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, PluginError> {
        self.exec(&ExecRequest::new(argv.iter().map(|s| s.as_ref().to_string())))
    }

    /// Runs `argv` and fails unless it exits 0.
    pub fn run_ok<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, PluginError> {
        let what = crate::shell::join(argv);
        self.run(argv)?.check(&what)
    }

    /// Writes a file on the target.
    pub fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        crate::ffi::host_put_file(&self.inner, path, mode, data)
    }

    /// Logs a line, tagged with this plugin's name.
    pub fn log(&self, level: LogLevel, message: &str) {
        crate::ffi::host_log(&self.inner, level, &self.plugin, message)
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message)
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message)
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("plugin", &self.plugin).finish()
    }
}
