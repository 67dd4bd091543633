//! The sync [`Connection`] and [`Channel`] over an async russh session.
//!
//! Every blocking call hands a future to the plugin's private runtime and
//! waits for its result on a std channel, so the caller may be any thread,
//! even one inside another tokio runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use cultivate_plugin_api::{
    collect, shell, Channel, ChannelEvent, Connection, ConnectionInfo, ErrorKind, ExecRequest, PluginError,
};
use russh::client::{Handle, Msg};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::sync::{watch, Semaphore};

use crate::runtime::block;
use crate::session::{Alive, ClientHandler, Session};

/// Output bytes buffered per channel before the reader stops pulling from the
/// session (then the server's window for that channel closes).
const OUTPUT_BUFFER_BYTES: usize = 32 * 1024 * 1024;

struct Inner {
    handle: Arc<Handle<ClientHandler>>,
    alive: Alive,
    /// Jump-host sessions that carry the tunnel; kept alive with the target's.
    _jumps: Vec<Session>,
    disconnect: Arc<crate::session::Shared>,
}

/// An open SSH connection.
pub struct SshConnection {
    inner: Arc<Inner>,
    info: ConnectionInfo,
    peer: String,
    sudo: bool,
    open_timeout: Duration,
    closed: AtomicBool,
}

impl SshConnection {
    pub(crate) fn new(
        mut sessions: Vec<Session>,
        sudo: bool,
        mut details: BTreeMap<String, String>,
    ) -> Result<Self, PluginError> {
        let Some(target) = sessions.pop() else {
            return Err(PluginError::other("no ssh session was opened"));
        };
        let facts = target.shared.facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let peer = target.spec.peer();
        details.insert("host_key_type".into(), facts.host_key_type);
        details.insert("host_key_fingerprint".into(), facts.fingerprint);
        details.insert("cipher".into(), facts.cipher);
        details.insert(cultivate_plugin_api::PTY_DETAIL.into(), "yes".into());
        details.insert("kex".into(), facts.kex);
        if let Some(line) = facts.learned_line {
            details.insert("host_key_recorded".into(), format!("{} line {line}", target.spec.known_hosts.display()));
        }
        if !sessions.is_empty() {
            details.insert("via".into(), sessions.iter().map(|s| s.spec.peer()).collect::<Vec<_>>().join(","));
        }
        let open_timeout = target.spec.connect_timeout.max(Duration::from_secs(10));
        Ok(SshConnection {
            inner: Arc::new(Inner {
                handle: Arc::new(target.handle),
                alive: target.alive,
                _jumps: sessions,
                disconnect: target.shared,
            }),
            info: ConnectionInfo { peer: peer.clone(), details },
            peer,
            sudo,
            open_timeout,
            closed: AtomicBool::new(false),
        })
    }

    fn lost(&self, during: &str) -> PluginError {
        lost_error(&self.peer, during, &self.inner.disconnect)
    }
}

fn lost_error(peer: &str, during: &str, shared: &crate::session::Shared) -> PluginError {
    let why = shared.disconnect.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    PluginError::new(ErrorKind::ConnectionLost, format!("the connection to {peer} was lost {during}{why}")).with_hint(
        "check the network and the server (it may have rebooted or sshd restarted), then run the command again",
    )
}

/// Builds the command line the server's shell runs.
pub fn command_line(req: &ExecRequest, sudo: bool) -> Result<String, PluginError> {
    if req.argv.is_empty() {
        return Err(PluginError::invalid("empty command"));
    }
    let mut line = String::new();
    if let Some(dir) = &req.cwd {
        line.push_str("cd ");
        line.push_str(&shell::quote(dir));
        line.push_str(" && ");
    }
    if sudo {
        line.push_str("sudo -n ");
    }
    if !req.env.is_empty() {
        line.push_str("env ");
        for (k, v) in &req.env {
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(PluginError::invalid(format!("bad environment variable name `{k}`")));
            }
            line.push_str(&shell::quote(&format!("{k}={v}")));
            line.push(' ');
        }
    }
    line.push_str(&shell::join(&req.argv));
    Ok(line)
}

/// The numbers of the signals ssh names (Linux numbering), for 128+N.
fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(name) => match name.trim_start_matches("SIG") {
            "TRAP" => 5,
            "BUS" => 7,
            "USR2" => 12,
            "STKFLT" => 16,
            "CHLD" => 17,
            "CONT" => 18,
            "STOP" => 19,
            "TSTP" => 20,
            "TTIN" => 21,
            "TTOU" => 22,
            "URG" => 23,
            "XCPU" => 24,
            "XFSZ" => 25,
            "VTALRM" => 26,
            "PROF" => 27,
            "WINCH" => 28,
            "IO" => 29,
            "PWR" => 30,
            "SYS" => 31,
            _ => 127,
        },
    }
}

enum Event {
    Out(Vec<u8>),
    Err(Vec<u8>),
    Exit(i32),
    Failed(PluginError),
}

/// Pulls a channel's messages into a byte-bounded queue, so one slow reader
/// never stalls the whole session, and notes when the channel is over.
async fn pump(
    mut read: ChannelReadHalf,
    tx: std_mpsc::Sender<Event>,
    budget: Arc<Semaphore>,
    done: watch::Sender<Done>,
    alive: Alive,
    peer: String,
    shared: Arc<crate::session::Shared>,
) {
    let mut status: Option<i32> = None;
    let send_bytes = |bytes: Vec<u8>, stderr: bool| {
        let budget = budget.clone();
        let tx = tx.clone();
        async move {
            let n = (bytes.len().min(OUTPUT_BUFFER_BYTES)) as u32;
            match budget.acquire_many(n).await {
                Ok(permit) => permit.forget(),
                Err(_) => return false, // the reader is gone
            }
            tx.send(if stderr { Event::Err(bytes) } else { Event::Out(bytes) }).is_ok()
        }
    };
    let finish = |ev: Event| {
        let state = if matches!(ev, Event::Exit(_)) { Done::Exited } else { Done::Failed };
        let _ = tx.send(ev);
        done.send_replace(state);
    };
    loop {
        let msg = tokio::select! {
            biased;
            m = read.wait() => m,
            // Biased: whatever arrived before the session ended is read first.
            _ = alive.gone() => None,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                if !send_bytes(data.to_vec(), false).await {
                    break;
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                if !send_bytes(data.to_vec(), ext == 1).await {
                    break;
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                status = Some(i32::try_from(exit_status).unwrap_or(255));
            }
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                status = Some(128 + signal_number(&signal_name));
            }
            Some(ChannelMsg::Failure) => {
                finish(Event::Failed(PluginError::new(
                    ErrorKind::CommandFailed,
                    format!("the server {peer} refused to run the command"),
                )));
                break;
            }
            Some(ChannelMsg::Close) => {
                finish(Event::Exit(status.unwrap_or(-1)));
                break;
            }
            Some(_) => {}
            None => {
                match status {
                    Some(s) => finish(Event::Exit(s)),
                    None => finish(Event::Failed(lost_error(&peer, "while a command was running", &shared))),
                }
                break;
            }
        }
    }
    done.send_if_modified(|d| {
        let running = *d == Done::Running;
        if running {
            *d = Done::Exited;
        }
        running
    });
}

/// Where a channel's command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Running,
    /// Exited (status queued for `next_event`).
    Exited,
    /// Failed or the connection was lost (error queued).
    Failed,
}

impl Connection for SshConnection {
    fn exec(&self, req: &ExecRequest) -> Result<Box<dyn Channel>, PluginError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PluginError::new(
                ErrorKind::ConnectionLost,
                format!("the connection to {} is closed", self.peer),
            ));
        }
        let line = command_line(req, self.sudo)?;
        let inner = self.inner.clone();
        let t = self.open_timeout;
        let tty = req.tty.clone();
        let opened = block(async move {
            let open = async {
                let ch = inner.handle.channel_open_session().await?;
                if let Some(tty) = &tty {
                    // An interactive `cultivate exec`: the server's pty does
                    // the line discipline (echo, Ctrl-C) for the remote side.
                    ch.request_pty(false, &tty.term, tty.cols, tty.rows, 0, 0, &[]).await?;
                }
                ch.exec(true, line.into_bytes()).await?;
                Ok::<_, russh::Error>(ch)
            };
            tokio::select! {
                r = tokio::time::timeout(t, open) => Some(r),
                _ = inner.alive.gone() => None,
            }
        })?;
        let ch = match opened {
            None => return Err(self.lost("while starting a command")),
            Some(Err(_)) => {
                return Err(PluginError::new(
                    ErrorKind::Timeout,
                    format!("{} did not start the command within {}s", self.peer, t.as_secs()),
                )
                .with_hint("the server is overloaded or the network stalls"))
            }
            Some(Ok(Err(e))) => {
                if self.inner.alive.is_gone() {
                    return Err(self.lost("while starting a command"));
                }
                return Err(PluginError::new(
                    ErrorKind::CommandFailed,
                    format!("{} refused to open a session channel: {e}", self.peer),
                )
                .with_hint("the server may limit sessions per connection (MaxSessions)"));
            }
            Some(Ok(Ok(ch))) => ch,
        };
        let (read, write) = ch.split();
        let (tx, rx) = std_mpsc::channel();
        let budget = Arc::new(Semaphore::new(OUTPUT_BUFFER_BYTES));
        let (done_tx, done_rx) = watch::channel(Done::Running);
        crate::runtime::spawn(pump(
            read,
            tx,
            budget.clone(),
            done_tx,
            self.inner.alive.clone(),
            self.peer.clone(),
            self.inner.disconnect.clone(),
        ))?;
        let mut channel = SshChannel {
            write: Arc::new(write),
            rx,
            budget,
            done: done_rx,
            alive: self.inner.alive.clone(),
            eof_sent: false,
            finished: false,
            peer: self.peer.clone(),
            shared: self.inner.disconnect.clone(),
        };
        if let Some(stdin) = &req.stdin {
            channel.write_stdin(stdin.as_bytes())?;
        }
        Ok(Box::new(channel))
    }

    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        put_file_checked(self, path, mode, data)
    }

    fn info(&self) -> ConnectionInfo {
        self.info.clone()
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.clone();
        let _ = block(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                inner.handle.disconnect(russh::Disconnect::ByApplication, "", "en"),
            )
            .await;
        });
    }
}

// No Drop for SshConnection: russh ends the session once the handle and every
// channel are gone, so a channel still in use outlives the connection object.

/// Writes a file atomically: the bytes go to a temporary name next to the
/// destination, whose size is checked before it is renamed over it, so a cut
/// connection (the remote `cat` sees EOF early) leaves the destination as it was.
pub fn put_file_checked<C: Connection + ?Sized>(
    conn: &C,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<(), PluginError> {
    let q = shell::quote(path);
    let size = data.len();
    let script = format!(
        "set -e; umask 077; tmp={q}.cultivate-tmp.$$; trap 'rm -f \"$tmp\"' EXIT; trap 'exit 1' HUP INT TERM PIPE; \
         cat > \"$tmp\"; n=$(wc -c < \"$tmp\" | tr -d ' '); \
         if [ \"$n\" != {size} ]; then echo \"short write: $n of {size} bytes\" >&2; exit 1; fi; \
         chmod {mode:o} \"$tmp\"; mv -f \"$tmp\" {q}; trap - EXIT"
    );
    let mut ch = conn.exec(&ExecRequest::shell(script))?;
    for chunk in data.chunks(1024 * 1024) {
        ch.write_stdin(chunk)?;
    }
    collect(ch.as_mut(), None)?.check(&format!("writing {path}"))?;
    Ok(())
}

/// A running command.
pub struct SshChannel {
    write: Arc<ChannelWriteHalf<Msg>>,
    rx: std_mpsc::Receiver<Event>,
    budget: Arc<Semaphore>,
    done: watch::Receiver<Done>,
    alive: Alive,
    eof_sent: bool,
    finished: bool,
    peer: String,
    shared: Arc<crate::session::Shared>,
}

impl SshChannel {
    fn lost(&self) -> PluginError {
        lost_error(&self.peer, "while a command was running", &self.shared)
    }

    /// `Some` once the command is over: writes to an exited command go
    /// nowhere, like a pipe to an exited process (its status comes from
    /// `next_event`); after a failure or a lost connection they fail.
    fn when_over(&self) -> Option<Result<(), PluginError>> {
        let state = if self.finished { Done::Exited } else { *self.done.borrow() };
        match state {
            Done::Running if self.alive.is_gone() => Some(Err(self.lost())),
            Done::Running => None,
            Done::Exited => Some(Ok(())),
            Done::Failed if self.alive.is_gone() => Some(Err(self.lost())),
            Done::Failed => Some(Err(PluginError::new(
                ErrorKind::CommandFailed,
                format!("the command on {} failed to start", self.peer),
            ))),
        }
    }
}

impl Channel for SshChannel {
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), PluginError> {
        if self.eof_sent {
            return Err(PluginError::invalid("stdin of the command is already closed"));
        }
        if let Some(r) = self.when_over() {
            return r;
        }
        if data.is_empty() {
            return Ok(());
        }
        let write = self.write.clone();
        let alive = self.alive.clone();
        let mut done = self.done.clone();
        let bytes = data.to_vec();
        // Waits for the server's window: at most one chunk is in memory here.
        let r = block(async move {
            tokio::select! {
                r = write.data_bytes(bytes) => Some(r.is_ok()),
                _ = done.wait_for(|d| *d != Done::Running) => Some(true),
                _ = alive.gone() => None,
            }
        })?;
        if let Some(r) = self.when_over() {
            return r;
        }
        match r {
            Some(true) => Ok(()),
            Some(false) => Err(PluginError::other(format!("cannot write to the command on {}", self.peer))),
            None => Err(self.lost()),
        }
    }

    fn close_stdin(&mut self) -> Result<(), PluginError> {
        if self.eof_sent {
            return Ok(());
        }
        if let Some(r) = self.when_over() {
            self.eof_sent = true;
            return r;
        }
        self.eof_sent = true;
        let write = self.write.clone();
        let alive = self.alive.clone();
        let r = block(async move {
            tokio::select! {
                r = write.eof() => Some(r.is_ok()),
                _ = alive.gone() => None,
            }
        })?;
        match r {
            Some(_) => Ok(()),
            None => Err(self.lost()),
        }
    }

    fn next_event(&mut self, wait: Duration) -> Result<ChannelEvent, PluginError> {
        if self.finished {
            return Err(PluginError::invalid("the command has already exited"));
        }
        let ev = match self.rx.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(std_mpsc::RecvTimeoutError::Timeout) => return Ok(ChannelEvent::Idle),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                self.finished = true;
                return Err(self.lost());
            }
        };
        Ok(match ev {
            Event::Out(b) => {
                self.budget.add_permits(b.len().min(OUTPUT_BUFFER_BYTES));
                ChannelEvent::Stdout(b)
            }
            Event::Err(b) => {
                self.budget.add_permits(b.len().min(OUTPUT_BUFFER_BYTES));
                ChannelEvent::Stderr(b)
            }
            Event::Exit(s) => {
                self.finished = true;
                ChannelEvent::Exit(s)
            }
            Event::Failed(e) => {
                self.finished = true;
                return Err(e);
            }
        })
    }
}

impl Drop for SshChannel {
    fn drop(&mut self) {
        // Stop the pump (it may wait for buffer space) and close the channel.
        self.budget.close();
        if !self.finished && *self.done.borrow() == Done::Running {
            let write = self.write.clone();
            let _ = crate::runtime::spawn(async move {
                let _ = write.eof().await;
                let _ = write.close().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let req = ExecRequest::new(["docker", "load"]).cwd("/opt/my app").env("A", "x y").env("B", "1");
        assert_eq!(command_line(&req, false).unwrap(), "cd '/opt/my app' && env 'A=x y' B=1 docker load");
        assert_eq!(command_line(&req, true).unwrap(), "cd '/opt/my app' && sudo -n env 'A=x y' B=1 docker load");
        let mut secret = ExecRequest::new(["echo", "hunter2"]);
        secret.redact.push("hunter2".into());
        assert_eq!(command_line(&secret, false).unwrap(), "echo hunter2");
        assert!(command_line(&ExecRequest::default(), false).is_err());
        assert!(command_line(&ExecRequest::new(["x"]).env("A;rm", "1"), false).is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(signal_number(&Sig::KILL), 9);
        assert_eq!(signal_number(&Sig::Custom("USR2".into())), 12);
    }
}
