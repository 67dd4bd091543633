//! A session: a connection to one target through a transport plugin, and the
//! host services that runtime plugins call back into.
//!
//! Every command, whichever plugin asks for it, goes through [`Services::exec`],
//! so `-v` shows each one and its output, with secrets redacted.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cultivate_plugin_api::{
    collect_with, ChannelEvent, ConnectSpec, Connection, ErrorKind, ExecOutput, ExecRequest, Host, HostServices,
    LogLevel, PluginError, TargetInfo,
};

use crate::batch;
use crate::plugins::Registry;
use crate::redact;
use crate::target::{parse_target_info, Target, PROBE_SCRIPT};

/// Forwards a plugin's log line to tracing with the plugin's name.
fn forward_log(level: LogLevel, plugin: &str, message: &str) {
    let message = redact::apply(message);
    match level {
        LogLevel::Error => tracing::error!(plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(plugin, "{message}"),
        LogLevel::Info => tracing::info!(plugin, "{message}"),
        LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        LogLevel::Trace => tracing::trace!(plugin, "{message}"),
    }
}

/// Splits streamed bytes into lines for the verbose log.
#[derive(Default)]
struct LineLog {
    buf: Vec<u8>,
}

impl LineLog {
    fn feed(&mut self, is_stderr: bool, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            emit_line(is_stderr, &line[..line.len() - 1]);
        }
        if self.buf.len() > 16 * 1024 {
            let line = std::mem::take(&mut self.buf);
            emit_line(is_stderr, &line);
        }
    }

    fn flush(&mut self, is_stderr: bool) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            emit_line(is_stderr, &line);
        }
    }
}

/// Logs a collected output line by line, as [`LineLog`] logs a streamed one.
fn log_output(out: &ExecOutput) {
    for line in out.stdout.lines() {
        emit_line(false, line.as_bytes());
    }
    for line in out.stderr.lines() {
        emit_line(true, line.as_bytes());
    }
}

fn emit_line(is_stderr: bool, line: &[u8]) {
    let text = redact::apply(&String::from_utf8_lossy(line));
    if is_stderr {
        tracing::debug!(target: "cultivate::cmd", "  ! {text}");
    } else {
        tracing::debug!(target: "cultivate::cmd", "  | {text}");
    }
}

/// True when a command's output must not be logged, even at `-vv`: the request
/// says so, or the command is one known to print environment values whoever
/// asks for it (plugins included):
/// - `compose config` (and `convert`), which prints the interpolated `.env`;
/// - a container `inspect` without `--format`, whose `Config.Env` lists the
///   environment (`image inspect` is left alone: images never hold secrets);
/// - `cat` of a `.env` file.
pub fn output_is_private(req: &ExecRequest) -> bool {
    if req.private_output {
        return true;
    }
    let argv: Vec<&str> = req.argv.iter().map(String::as_str).collect();
    let Some(program) = argv.first().map(|p| p.rsplit('/').next().unwrap_or(p)) else { return false };
    let args = &argv[1..];
    if program == "cat" {
        return args.iter().any(|a| a.rsplit('/').next() == Some(".env"));
    }
    let (compose_args, engine) = match program {
        "docker-compose" | "podman-compose" => (Some(args), false),
        "docker" | "finch" | "podman" | "nerdctl" => match args.iter().position(|a| *a == "compose") {
            Some(i) if args[..i].iter().all(|a| a.starts_with('-')) => (Some(&args[i + 1..]), true),
            _ => (None, true),
        },
        _ => (None, false),
    };
    if let Some(rest) = compose_args {
        return matches!(subcommand(rest, COMPOSE_VALUE_FLAGS), Some("config" | "convert"));
    }
    if engine {
        let inspects_containers = match subcommand(args, ENGINE_VALUE_FLAGS) {
            Some("inspect") => true,
            Some("container") => args.iter().skip_while(|a| **a != "container").nth(1) == Some(&"inspect"),
            _ => false,
        };
        let formatted = args.iter().any(|a| *a == "-f" || a.starts_with("--format"));
        return inspects_containers && !formatted;
    }
    false
}

/// Global options of `compose` that take a value.
const COMPOSE_VALUE_FLAGS: &[&str] =
    &["-p", "--project-name", "-f", "--file", "--env-file", "--project-directory", "--profile", "--ansi", "--parallel"];

/// Global options of the engine CLI that take a value.
const ENGINE_VALUE_FLAGS: &[&str] =
    &["-c", "--context", "-H", "--host", "--config", "-l", "--log-level", "--namespace"];

/// The first argument that is not an option (nor an option's value).
fn subcommand<'a>(args: &[&'a str], value_flags: &[&str]) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with('-') {
            if value_flags.contains(a) {
                it.next();
            }
            continue;
        }
        return Some(a);
    }
    None
}

/// Host services for plugins, bound to one connection.
pub struct Services {
    conn: Option<Arc<dyn Connection>>,
    /// Answers to requests marked [`ExecRequest::stable_output`], by request:
    /// what a plugin learned once in this run (the compose flavour, versions)
    /// is not asked of the target again. See [`stable_key`].
    stable: Mutex<HashMap<String, ExecOutput>>,
    /// Off while software is being installed on the target: an install
    /// probes before and after, and the answers change in between.
    remember: std::sync::atomic::AtomicBool,
}

/// The memo key of a request whose output is stable within a run: `None`
/// for any other request (and for one with stdin, whose answer depends on it).
pub fn stable_key(req: &ExecRequest) -> Option<String> {
    if !req.stable_output || req.stdin.is_some() || req.tty.is_some() {
        return None;
    }
    // The timeout does not change the answer.
    let mut key = req.clone();
    key.timeout_secs = None;
    serde_json::to_string(&key).ok()
}

impl Services {
    fn new(conn: Option<Arc<dyn Connection>>) -> Services {
        Services { conn, stable: Mutex::new(HashMap::new()), remember: std::sync::atomic::AtomicBool::new(true) }
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExecOutput>> {
        self.stable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the stable answers (after installing software on the target).
    pub fn forget_stable(&self) {
        self.memo().clear();
    }

    /// Runs a command with its output streamed to the verbose log; a request
    /// marked stable that already ran in this session is answered from memory.
    pub fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let key = stable_key(req).filter(|_| self.remember.load(std::sync::atomic::Ordering::SeqCst));
        if let Some(out) = key.as_ref().and_then(|k| self.memo().get(k).cloned()) {
            tracing::debug!(
                target: "cultivate::cmd",
                "$ {}  (answered from this run's earlier run: exit {})",
                redact::apply(&req.display()),
                out.status
            );
            return Ok(out);
        }
        let result = self.run_uncached(req);
        if let (Some(k), Ok(out)) = (key, &result) {
            self.memo().insert(k, out.clone());
        }
        result
    }

    /// Runs a [`batch::script`] of `count` commands: one command on the
    /// target, its raw output read as frames. Its output is never logged as
    /// a whole (it may carry private frames); the caller logs the frames it
    /// may show. Frames that came whole are returned even when the rest did
    /// not (a warning says so); only a failure to run it at all is an error.
    pub fn run_batch(&self, req: &ExecRequest, count: usize) -> Result<BTreeMap<String, ExecOutput>, PluginError> {
        let conn = self.conn.as_ref().ok_or_else(|| PluginError::invalid("no target connection in this context"))?;
        tracing::debug!(target: "cultivate::cmd", "$ (batch of {count} commands, one round trip)");
        tracing::trace!(target: "cultivate::cmd", "  {}", redact::apply(&req.display()));
        let started = Instant::now();
        let mut ch = conn.exec(req)?;
        let mut raw = Vec::new();
        let mut err_log = LineLog::default();
        let out = collect_with(ch.as_mut(), req.timeout_secs.map(Duration::from_secs), &mut |is_err, bytes| {
            if is_err {
                err_log.feed(true, bytes)
            } else {
                raw.extend_from_slice(bytes)
            }
        })?;
        err_log.flush(true);
        tracing::debug!(target: "cultivate::cmd", "  exit {} in {:.2?}", out.status, started.elapsed());
        let (frames, problem) = batch::parse(&raw);
        if let Some(p) = problem {
            tracing::warn!("{p} (status {}); the commands not answered run one by one", out.status);
        }
        tracing::debug!(target: "cultivate::cmd", "  {} of {count} commands ran (others are for another OS)", frames.len());
        Ok(frames)
    }

    fn run_uncached(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let conn = self.conn.as_ref().ok_or_else(|| PluginError::invalid("no target connection in this context"))?;
        tracing::debug!(target: "cultivate::cmd", "$ {}", redact::apply(&req.display()));
        let private = output_is_private(req);
        let started = Instant::now();
        let mut ch = conn.exec(req)?;
        let (mut out_log, mut err_log) = (LineLog::default(), LineLog::default());
        let result = collect_with(ch.as_mut(), req.timeout_secs.map(Duration::from_secs), &mut |is_err, bytes| match (
            private, is_err,
        ) {
            (true, _) => {}
            (false, true) => err_log.feed(true, bytes),
            (false, false) => out_log.feed(false, bytes),
        });
        out_log.flush(false);
        err_log.flush(true);
        if let Ok(out) = &result {
            if private {
                tracing::debug!(
                    target: "cultivate::cmd",
                    "  (output not logged: it carries environment values; {} bytes)",
                    out.stdout.len() + out.stderr.len()
                );
            }
            tracing::debug!(target: "cultivate::cmd", "  exit {} in {:.2?}", out.status, started.elapsed());
        }
        result
    }
}

impl HostServices for Services {
    fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.run(req)
    }

    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        let conn = self.conn.as_ref().ok_or_else(|| PluginError::invalid("no target connection in this context"))?;
        tracing::debug!(target: "cultivate::cmd", "put {path} ({} bytes, mode {mode:o})", data.len());
        conn.put_file(path, mode, data)
    }

    fn log(&self, level: LogLevel, plugin: &str, message: &str) {
        forward_log(level, plugin, message)
    }
}

/// Options for connecting.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `--transport`.
    pub transport: Option<String>,
    /// What the transport needs.
    pub spec: ConnectSpec,
}

/// A live connection to a target.
pub struct Session {
    /// The target as given.
    pub target: Target,
    /// The transport plugin's name.
    pub transport: String,
    /// The peer as the transport describes it.
    pub peer: String,
    /// What the target is.
    pub info: TargetInfo,
    conn: Arc<dyn Connection>,
    services: Arc<Services>,
    host: Host,
    /// What `connect_with`'s `extra` printed.
    prefetched: Mutex<Option<ExecOutput>>,
}

impl Session {
    /// Connects through the transport the target implies (or `--transport`),
    /// then verifies the connection by running a command (P16) and probes the OS.
    pub fn connect(registry: &Registry, target: &Target, opts: &ConnectOptions) -> Result<Session> {
        Session::connect_with(registry, target, opts, None)
    }

    /// [`Session::connect`], where the first command also runs every
    /// runtime plugin's declared probe commands (their answers are
    /// remembered as this run's, so the probes that follow run nothing) and,
    /// when given, `extra`: a shell snippet whose output is private (never
    /// logged), kept for [`Session::take_prefetched`]. `prelude` runs before
    /// all of them and may set variables `extra` uses.
    pub fn connect_with(
        registry: &Registry,
        target: &Target,
        opts: &ConnectOptions,
        extra: Option<(&str, &str)>,
    ) -> Result<Session> {
        let plugin = registry.select_transport(target.scheme(), opts.transport.as_deref())?;
        let name = plugin.manifest().name.clone();
        let log_host = Host::new(Arc::new(Services::new(None))).for_plugin(&name);
        let mut spec = opts.spec.clone();
        spec.target = target.as_str().to_string();
        let conn: Arc<dyn Connection> =
            Arc::from(plugin.connect(&log_host, &spec).with_context(|| format!("cannot connect to {target}"))?);
        let peer = conn.info().peer;
        let services = Arc::new(Services::new(Some(conn.clone())));
        let host = Host::new(services.clone());
        // The probe commands the runtimes declared, each once.
        // Each only on the operating systems its plugin is for.
        let mut probes: Vec<(String, ExecRequest, Vec<String>)> = Vec::new();
        for p in registry.of_kind(cultivate_plugin_api::PluginKind::Runtime) {
            let m = p.manifest();
            for req in &m.probe_commands {
                if let Some(key) = stable_key(req) {
                    match probes.iter_mut().find(|(k, _, _)| *k == key) {
                        // Wanted by several plugins: wherever any of them is for.
                        Some((_, _, os)) if !os.is_empty() && !m.target_os.is_empty() => {
                            os.extend(m.target_os.iter().filter(|o| !os.contains(o)).cloned().collect::<Vec<_>>())
                        }
                        Some((_, _, os)) => os.clear(),
                        None => probes.push((key, req.clone(), m.target_os.clone())),
                    }
                }
            }
        }
        let mut commands = vec![batch::Command { id: "os".into(), shell: PROBE_SCRIPT.to_string(), os: Vec::new() }];
        for (i, (_, req, os)) in probes.iter().enumerate() {
            commands.push(batch::Command { id: format!("p{i}"), shell: batch::shell_line(req), os: os.clone() });
        }
        if let Some((_, snippet)) = extra {
            commands.push(batch::Command { id: "extra".into(), shell: snippet.to_string(), os: Vec::new() });
        }
        let script = batch::script(extra.map(|(prelude, _)| prelude).unwrap_or(""), &commands);
        let frames = match services.run_batch(&ExecRequest::shell(script).timeout_secs(60), commands.len()) {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!("the batched probe failed ({e}): probing one command at a time");
                BTreeMap::new()
            }
        };
        let out = match frames.get("os") {
            Some(out) => out.clone(),
            // Not answered in the batch: the OS probe alone, as before batching.
            None => services
                .run(&ExecRequest::shell(PROBE_SCRIPT).timeout_secs(30))
                .with_context(|| format!("connected to {target}, but running a first command failed"))?,
        };
        if !out.success() {
            anyhow::bail!(
                "connected to {target}, but `uname` failed there (status {}): {}",
                out.status,
                out.stderr.trim()
            );
        }
        if let Some(os) = frames.get("os") {
            tracing::debug!(target: "cultivate::cmd", "  (batched) $ {PROBE_SCRIPT}: exit {}", os.status);
            log_output(os);
        }
        if let Some(extra) = frames.get("extra") {
            tracing::debug!(
                target: "cultivate::cmd",
                "  (batched) the deployment's state and secrets: exit {} (output not logged: it carries environment values; {} bytes)",
                extra.status,
                extra.stdout.len() + extra.stderr.len()
            );
        }
        for (i, (key, req, _)) in probes.iter().enumerate() {
            if let Some(answer) = frames.get(&format!("p{i}")) {
                tracing::debug!(
                    target: "cultivate::cmd",
                    "  (batched) $ {}: exit {}",
                    redact::apply(&req.display()),
                    answer.status
                );
                log_output(answer);
                services.memo().insert(key.clone(), answer.clone());
            }
        }
        let prefetched = frames.get("extra").cloned();
        let info = parse_target_info(&out.stdout);
        tracing::info!(target = %target, transport = %name, os = %info.os, arch = %info.arch, "connected");
        Ok(Session {
            target: target.clone(),
            transport: name,
            peer,
            info,
            conn,
            services,
            host,
            prefetched: Mutex::new(prefetched),
        })
    }

    /// The output of the `extra` snippet given to [`Session::connect_with`]
    /// (once; `None` after, or when it did not run to its end).
    pub fn take_prefetched(&self) -> Option<ExecOutput> {
        self.prefetched.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The host handle to give plugins.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Runs a command and collects its output.
    pub fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.services.run(req)
    }

    /// Runs `f` (an install on the target) with stable answers forgotten
    /// before and after, and none remembered or given while it runs.
    pub fn without_stable_answers<T>(&self, f: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        self.services.forget_stable();
        self.services.remember.store(false, Ordering::SeqCst);
        let out = f();
        self.services.remember.store(true, Ordering::SeqCst);
        self.services.forget_stable();
        out
    }

    /// Runs a command and fails unless it exits 0.
    pub fn run_ok(&self, req: &ExecRequest) -> Result<ExecOutput> {
        let shown = redact::apply(&req.display());
        Ok(self.run(req).with_context(|| format!("running `{shown}`"))?.check(&format!("`{shown}`"))?)
    }

    /// Runs a shell snippet and fails unless it exits 0.
    pub fn sh(&self, script: &str) -> Result<ExecOutput> {
        self.run_ok(&ExecRequest::shell(script))
    }

    /// Writes a file on the target.
    pub fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.services.put_file(path, mode, data).with_context(|| format!("cannot write {path} on {}", self.target))
    }

    /// Runs `req` with `input` streamed to its stdin, calling `progress(bytes_sent)`
    /// as it goes. Output is collected and returned.
    pub fn run_with_input(
        &self,
        req: &ExecRequest,
        input: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExecOutput, PluginError> {
        self.stream(req, input, progress, false)?.finish()
    }

    /// Starts `req` and streams `input` to its stdin, all of it but its last
    /// read when `hold_last`: the command cannot have read its input whole
    /// until [`Streaming::finish`] sends that and closes stdin (a `docker load`
    /// cannot start loading an archive it has not read to its end). Another
    /// command may run meanwhile.
    pub fn stream(
        &self,
        req: &ExecRequest,
        input: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
        hold_last: bool,
    ) -> Result<Streaming, PluginError> {
        tracing::debug!(target: "cultivate::cmd", "$ {} < (stream)", redact::apply(&req.display()));
        let ch = self.conn.exec(req)?;
        let private = output_is_private(req);
        let mut s =
            Streaming { ch, stdout: Vec::new(), stderr: Vec::new(), held: None, early: None, released: false, private };
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| PluginError::new(ErrorKind::Io, format!("reading the stream: {e}")))?;
            if n == 0 {
                break;
            }
            let previous;
            let chunk = if hold_last {
                match s.held.replace(buf[..n].to_vec()) {
                    Some(p) => {
                        previous = p;
                        &previous[..]
                    }
                    None => continue,
                }
            } else {
                &buf[..n]
            };
            if let Err(e) = s.ch.write_stdin(chunk) {
                // The command may have exited early; report its own error if it has one.
                let out = drain(s.ch.as_mut(), &mut s.stdout, &mut s.stderr);
                return match out {
                    Ok(status) if status != 0 => {
                        s.held = None;
                        s.early = Some(status);
                        Ok(s)
                    }
                    _ => Err(e),
                };
            }
            sent += chunk.len() as u64;
            progress(sent);
            // Keep the output pipes moving so the remote side never blocks on them.
            while let ChannelEvent::Stdout(_) | ChannelEvent::Stderr(_) =
                peek(s.ch.as_mut(), &mut s.stdout, &mut s.stderr)?
            {}
        }
        Ok(s)
    }

    /// Starts a command whose output the caller streams itself (`logs -f`,
    /// `exec`); shown at `-v` like every other command.
    pub fn open(&self, req: &ExecRequest) -> Result<Box<dyn cultivate_plugin_api::Channel>, PluginError> {
        tracing::debug!(target: "cultivate::cmd", "$ {} (streamed)", redact::apply(&req.display()));
        self.conn.exec(req)
    }

    /// True when the transport runs commands on a pseudo-terminal when asked.
    pub fn supports_pty(&self) -> bool {
        self.conn.info().details.get(cultivate_plugin_api::PTY_DETAIL).is_some_and(|v| v == "yes")
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close()
    }
}

/// A command [`Session::stream`] is feeding: the rest of its input (the
/// held last read) goes with [`Streaming::finish`], which waits for its exit.
pub struct Streaming {
    ch: Box<dyn cultivate_plugin_api::Channel>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    held: Option<Vec<u8>>,
    /// The command exited early with this status (it stopped reading).
    early: Option<i32>,
    /// The held input went and stdin is closed.
    released: bool,
    private: bool,
}

impl Streaming {
    /// Bytes held back (the input's last read), sent by [`Streaming::finish`].
    pub fn held_bytes(&self) -> u64 {
        self.held.as_ref().map_or(0, |h| h.len() as u64)
    }

    /// Sends what was held back and closes stdin: the command has its whole
    /// input and goes on by itself. Safe twice.
    pub fn release(&mut self) -> Result<(), PluginError> {
        if self.early.is_some() || self.released {
            return Ok(());
        }
        self.released = true;
        if let Some(last) = self.held.take() {
            if let Err(e) = self.ch.write_stdin(&last) {
                match drain(self.ch.as_mut(), &mut self.stdout, &mut self.stderr) {
                    Ok(status) if status != 0 => {
                        self.early = Some(status);
                        return Ok(());
                    }
                    _ => return Err(e),
                }
            }
        }
        self.ch.close_stdin()
    }

    /// [`Streaming::release`]s the input and collects the output until the
    /// command exits.
    pub fn finish(mut self) -> Result<ExecOutput, PluginError> {
        self.release()?;
        let status = match self.early {
            Some(status) => status,
            None => drain(self.ch.as_mut(), &mut self.stdout, &mut self.stderr)?,
        };
        Ok(self.output(status))
    }

    fn output(&self, status: i32) -> ExecOutput {
        let out = ExecOutput {
            status,
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
        };
        if self.private {
            tracing::debug!(target: "cultivate::cmd", "  (output not logged: it carries environment values)");
        } else {
            log_output(&out);
        }
        out
    }
}

fn peek(
    ch: &mut dyn cultivate_plugin_api::Channel,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> Result<ChannelEvent, PluginError> {
    let ev = ch.next_event(Duration::ZERO)?;
    match &ev {
        ChannelEvent::Stdout(b) => stdout.extend_from_slice(b),
        ChannelEvent::Stderr(b) => stderr.extend_from_slice(b),
        ChannelEvent::Exit(status) => {
            return Err(PluginError::new(
                ErrorKind::CommandFailed,
                format!(
                    "the command exited with status {status} before reading all its input: {}",
                    String::from_utf8_lossy(stderr).trim()
                ),
            ))
        }
        ChannelEvent::Idle => {}
    }
    Ok(ev)
}

fn drain(
    ch: &mut dyn cultivate_plugin_api::Channel,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> Result<i32, PluginError> {
    loop {
        match ch.next_event(Duration::from_millis(500))? {
            ChannelEvent::Stdout(b) => stdout.extend_from_slice(&b),
            ChannelEvent::Stderr(b) => stderr.extend_from_slice(&b),
            ChannelEvent::Exit(s) => return Ok(s),
            ChannelEvent::Idle => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection whose every command prints how many commands ran before it.
    struct Counting(Arc<AtomicUsize>);

    struct Done(Option<ChannelEvent>, Option<ChannelEvent>);

    impl cultivate_plugin_api::Channel for Done {
        fn write_stdin(&mut self, _: &[u8]) -> Result<(), PluginError> {
            Ok(())
        }
        fn close_stdin(&mut self) -> Result<(), PluginError> {
            Ok(())
        }
        fn next_event(&mut self, _: Duration) -> Result<ChannelEvent, PluginError> {
            Ok(self.0.take().or_else(|| self.1.take()).unwrap_or(ChannelEvent::Idle))
        }
    }

    /// What a recording channel saw: each write's text, then `close`.
    type Seen = Arc<Mutex<Vec<String>>>;

    struct Recording {
        seen: Seen,
        closed: bool,
    }

    impl cultivate_plugin_api::Channel for Recording {
        fn write_stdin(&mut self, data: &[u8]) -> Result<(), PluginError> {
            self.seen.lock().unwrap().push(String::from_utf8_lossy(data).into_owned());
            Ok(())
        }
        fn close_stdin(&mut self) -> Result<(), PluginError> {
            self.closed = true;
            self.seen.lock().unwrap().push("close".into());
            Ok(())
        }
        fn next_event(&mut self, _: Duration) -> Result<ChannelEvent, PluginError> {
            Ok(if self.closed { ChannelEvent::Exit(0) } else { ChannelEvent::Idle })
        }
    }

    struct RecordingConnection(Seen);

    impl Connection for RecordingConnection {
        fn exec(&self, _: &ExecRequest) -> Result<Box<dyn cultivate_plugin_api::Channel>, PluginError> {
            Ok(Box::new(Recording { seen: self.0.clone(), closed: false }))
        }
        fn info(&self) -> cultivate_plugin_api::ConnectionInfo {
            cultivate_plugin_api::ConnectionInfo::default()
        }
    }

    /// Hands out one chunk per read.
    struct Chunks(Vec<&'static [u8]>);

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let c = self.0.remove(0);
            out[..c.len()].copy_from_slice(c);
            Ok(c.len())
        }
    }

    fn recording_session(seen: &Seen) -> Session {
        let conn: Arc<dyn Connection> = Arc::new(RecordingConnection(seen.clone()));
        let services = Arc::new(Services::new(Some(conn.clone())));
        Session {
            target: Target::parse("local").unwrap(),
            transport: "test".into(),
            peer: "test".into(),
            info: TargetInfo::default(),
            conn,
            host: Host::new(services.clone()),
            services,
            prefetched: Mutex::new(None),
        }
    }

    #[test]
    fn a_held_stream_keeps_its_last_read_until_released() {
        let seen: Seen = Arc::default();
        let session = recording_session(&seen);
        let mut sent = 0;
        let mut s = session
            .stream(&ExecRequest::new(["load"]), &mut Chunks(vec![b"aa", b"bbb", b"c"]), &mut |n| sent = n, true)
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), ["aa", "bbb"], "the last read is held, stdin open");
        assert_eq!((sent, s.held_bytes()), (5, 1));
        s.release().unwrap();
        assert_eq!(*seen.lock().unwrap(), ["aa", "bbb", "c", "close"]);
        assert_eq!(s.held_bytes(), 0);
        s.release().unwrap();
        assert_eq!(s.finish().unwrap().status, 0);
        assert_eq!(seen.lock().unwrap().len(), 4, "released once");

        // Not held: all of it goes at once, stdin closes with finish.
        seen.lock().unwrap().clear();
        let s = session.stream(&ExecRequest::new(["load"]), &mut Chunks(vec![b"x", b"y"]), &mut |_| {}, false).unwrap();
        assert_eq!(*seen.lock().unwrap(), ["x", "y"]);
        assert_eq!(s.held_bytes(), 0);
        assert_eq!(s.finish().unwrap().status, 0);
        assert_eq!(*seen.lock().unwrap(), ["x", "y", "close"]);

        // An empty input holds nothing and closes on release.
        seen.lock().unwrap().clear();
        let s = session.stream(&ExecRequest::new(["load"]), &mut Chunks(vec![]), &mut |_| {}, true).unwrap();
        assert_eq!(s.finish().unwrap().status, 0);
        assert_eq!(*seen.lock().unwrap(), ["close"]);
    }

    impl Connection for Counting {
        fn exec(&self, _: &ExecRequest) -> Result<Box<dyn cultivate_plugin_api::Channel>, PluginError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Done(Some(ChannelEvent::Stdout(format!("{n}\n").into_bytes())), Some(ChannelEvent::Exit(0)))))
        }
        fn info(&self) -> cultivate_plugin_api::ConnectionInfo {
            cultivate_plugin_api::ConnectionInfo::default()
        }
    }

    #[test]
    fn stable_requests_run_once_per_session_until_forgotten() {
        let count = Arc::new(AtomicUsize::new(0));
        let services = Services::new(Some(Arc::new(Counting(count.clone()))));
        let version = ExecRequest::new(["docker", "compose", "version", "--short"]).stable_output();
        assert_eq!(services.run(&version).unwrap().stdout, "0\n");
        assert_eq!(services.run(&version.clone().timeout_secs(5)).unwrap().stdout, "0\n", "answered from memory");
        // Requests not marked stable, or another stable one, do run.
        assert_eq!(services.run(&ExecRequest::new(["docker", "compose", "version", "--short"])).unwrap().stdout, "1\n");
        assert_eq!(
            services.run(&ExecRequest::new(["docker-compose", "version"]).stable_output()).unwrap().stdout,
            "2\n"
        );
        assert_eq!(services.run(&version).unwrap().stdout, "0\n");
        // With stdin, the answer depends on it: never remembered.
        let with_stdin = version.clone().stdin("x");
        assert_eq!(services.run(&with_stdin).unwrap().stdout, "3\n");
        assert_eq!(services.run(&with_stdin).unwrap().stdout, "4\n");
        services.forget_stable();
        assert_eq!(services.run(&version).unwrap().stdout, "5\n");
        // While remembering is off (an install), every request runs.
        services.remember.store(false, Ordering::SeqCst);
        assert_eq!(services.run(&version).unwrap().stdout, "6\n");
        assert_eq!(services.run(&version).unwrap().stdout, "7\n");
        services.remember.store(true, Ordering::SeqCst);
        assert_eq!(services.run(&version).unwrap().stdout, "5\n", "what was remembered before");
        assert_eq!(count.load(Ordering::SeqCst), 8);
    }

    fn private(argv: &[&str]) -> bool {
        output_is_private(&ExecRequest::new(argv.iter().copied()))
    }

    #[test]
    fn output_known_to_carry_the_environment_is_private() {
        let compose = ["docker", "compose", "-p", "config", "-f", "docker-compose.yml", "--env-file", ".env"];
        assert!(private(&[&compose[..], &["config"]].concat()));
        assert!(!private(&[&compose[..], &["ps", "--format", "json"]].concat()), "project named config");
        assert!(private(&["docker-compose", "-p", "x", "config"]));
        assert!(private(&["/opt/homebrew/bin/finch", "compose", "-p", "x", "config"]));
        assert!(private(&["docker", "inspect", "abc", "def"]));
        assert!(private(&["docker", "container", "inspect", "abc"]));
        assert!(!private(&["docker", "inspect", "--format", "{{json .State}}", "abc"]));
        assert!(!private(&["docker", "image", "inspect", "cultivate-backend:1"]));
        assert!(private(&["cat", "/srv/cultivate/releases/1/.env"]));
        assert!(!private(&["cat", "/srv/cultivate/releases/1/release.json"]));
        assert!(!private(&["uname", "-s"]));
        assert!(output_is_private(&ExecRequest::shell("true").private_output()));
    }
}
