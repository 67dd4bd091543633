//! The local transport: runs commands as processes on this machine.
//!
//! 1. `connect` accepts the target `local` and returns a [`LocalConnection`].
//! 2. `exec` spawns the argv directly (no shell), with two reader threads
//!    forwarding stdout and stderr as events, and the exit status last.
//! 3. `put_file` writes a temporary file beside the destination, sets its
//!    mode and renames it into place, so a crash never leaves half a file.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use cultivate_plugin_api::{
    manifest, Channel, ChannelEvent, ConnectSpec, Connection, ConnectionInfo, ErrorKind, ExecRequest, Host, Manifest,
    Plugin, PluginError, PluginKind,
};

/// The local transport plugin.
#[derive(Debug, Default)]
pub struct LocalPlugin;

impl Plugin for LocalPlugin {
    fn manifest(&self) -> Manifest {
        let mut m = manifest("local", env!("CARGO_PKG_VERSION"), &[PluginKind::Transport]);
        m.description = "Runs commands and writes files on this machine".into();
        m.schemes = vec!["local".into()];
        m.priority = 10;
        m
    }

    fn connect(&self, _host: &Host, spec: &ConnectSpec) -> Result<Box<dyn Connection>, PluginError> {
        if spec.target != "local" {
            return Err(PluginError::invalid(format!(
                "the local transport serves target `local`, not `{}`",
                spec.target
            )));
        }
        Ok(Box::new(LocalConnection { sudo: spec.sudo }))
    }
}

/// A "connection" to this machine.
#[derive(Debug, Default)]
pub struct LocalConnection {
    sudo: bool,
}

impl LocalConnection {
    /// A connection that runs commands as the current user.
    pub fn new() -> Self {
        LocalConnection { sudo: false }
    }
}

impl Connection for LocalConnection {
    fn exec(&self, req: &ExecRequest) -> Result<Box<dyn Channel>, PluginError> {
        let mut argv = req.argv.clone();
        if argv.is_empty() {
            return Err(PluginError::invalid("empty command"));
        }
        if self.sudo {
            argv.splice(0..0, ["sudo".to_string(), "-n".to_string()]);
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(&req.env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(dir) = &req.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound { ErrorKind::NotAvailable } else { ErrorKind::Io };
            let place = req.cwd.as_deref().map(|d| format!(" in {d}")).unwrap_or_default();
            PluginError::new(kind, format!("cannot run `{}`{place}: {e}", argv[0]))
        })?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(64);
        let readers = [
            spawn_reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), false, tx.clone()),
            spawn_reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), true, tx),
        ];
        let mut ch = LocalChannel { child, stdin: None, rx, open_readers: readers.iter().filter(|r| **r).count() };
        ch.stdin = ch.child.stdin.take();
        if let Some(data) = &req.stdin {
            ch.write_stdin(data.as_bytes())?;
        }
        Ok(Box::new(ch))
    }

    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        if self.sudo {
            return cultivate_plugin_api::put_file_via_exec(self, path, mode, data);
        }
        write_atomically(Path::new(path), mode, data)
            .map_err(|e| PluginError::new(ErrorKind::Io, format!("cannot write {path}: {e}")))
    }

    fn info(&self) -> ConnectionInfo {
        ConnectionInfo { peer: "local".into(), details: Default::default() }
    }
}

/// Writes `data` to `path` through a temporary file in the same directory.
pub fn write_atomically(path: &Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = dir.join(format!(".{}.cultivate-tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode_0600().open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

enum Msg {
    Data(bool, Vec<u8>),
    Eof,
}

fn spawn_reader(stream: Option<Box<dyn Read + Send>>, is_stderr: bool, tx: mpsc::SyncSender<Msg>) -> bool {
    let Some(mut stream) = stream else { return false };
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Msg::Data(is_stderr, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Eof);
    });
    true
}

struct LocalChannel {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Msg>,
    open_readers: usize,
}

impl Channel for LocalChannel {
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), PluginError> {
        let stdin = self.stdin.as_mut().ok_or_else(|| PluginError::invalid("stdin is already closed"))?;
        stdin
            .write_all(data)
            .map_err(|e| PluginError::new(ErrorKind::Io, format!("writing to the command's stdin: {e}")))
    }

    fn close_stdin(&mut self) -> Result<(), PluginError> {
        self.stdin = None;
        Ok(())
    }

    fn next_event(&mut self, wait: Duration) -> Result<ChannelEvent, PluginError> {
        while self.open_readers > 0 {
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Data(false, b)) => return Ok(ChannelEvent::Stdout(b)),
                Ok(Msg::Data(true, b)) => return Ok(ChannelEvent::Stderr(b)),
                Ok(Msg::Eof) => self.open_readers -= 1,
                Err(RecvTimeoutError::Timeout) => return Ok(ChannelEvent::Idle),
                Err(RecvTimeoutError::Disconnected) => self.open_readers = 0,
            }
        }
        self.stdin = None;
        let status =
            self.child.wait().map_err(|e| PluginError::new(ErrorKind::Io, format!("waiting for command: {e}")))?;
        Ok(ChannelEvent::Exit(exit_code(status)))
    }
}

impl Drop for LocalChannel {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| status.signal().map(|s| 128 + s).unwrap_or(-1))
}

cultivate_plugin_api::export_plugin!(LocalPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use cultivate_plugin_api::collect;
    use proptest::prelude::*;

    fn run(req: ExecRequest) -> cultivate_plugin_api::ExecOutput {
        let mut ch = LocalConnection::new().exec(&req).unwrap();
        collect(ch.as_mut(), Some(Duration::from_secs(20))).unwrap()
    }

    #[test]
    fn exit_status_and_streams_are_separate() {
        let out = run(ExecRequest::shell("echo out; echo err >&2; exit 3"));
        assert_eq!((out.status, out.stdout.as_str(), out.stderr.as_str()), (3, "out\n", "err\n"));
    }

    #[test]
    fn killed_by_signal_is_128_plus_n() {
        assert_eq!(run(ExecRequest::shell("kill -TERM $$")).status, 128 + 15);
    }

    #[test]
    fn cwd_and_env_are_applied() {
        let out = run(ExecRequest::shell("pwd; echo $FOO").cwd("/tmp").env("FOO", "a b"));
        assert_eq!(out.stdout, "/tmp\na b\n");
    }

    #[test]
    fn missing_program_names_it() {
        let err = LocalConnection::new().exec(&ExecRequest::new(["no-such-program-xyz"])).err().unwrap();
        assert_eq!(err.kind, ErrorKind::NotAvailable);
        assert!(err.message.contains("no-such-program-xyz"), "{}", err.message);
    }

    #[test]
    fn put_file_sets_mode_and_leaves_no_temporary() {
        let dir = tempfile_dir();
        let path = dir.join("secret.env");
        LocalConnection::new().put_file(path.to_str().unwrap(), 0o600, b"A=1\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"A=1\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A connection whose channels lose everything written after the first
    /// `keep` bytes, as a cut connection would.
    struct Cut {
        keep: usize,
    }

    struct CutChannel {
        inner: Box<dyn Channel>,
        left: usize,
    }

    impl Channel for CutChannel {
        fn write_stdin(&mut self, data: &[u8]) -> Result<(), PluginError> {
            let n = data.len().min(self.left);
            self.left -= n;
            self.inner.write_stdin(&data[..n])
        }
        fn close_stdin(&mut self) -> Result<(), PluginError> {
            self.inner.close_stdin()
        }
        fn next_event(&mut self, wait: Duration) -> Result<ChannelEvent, PluginError> {
            self.inner.next_event(wait)
        }
    }

    impl Connection for Cut {
        fn exec(&self, req: &ExecRequest) -> Result<Box<dyn Channel>, PluginError> {
            Ok(Box::new(CutChannel { inner: LocalConnection::new().exec(req)?, left: self.keep }))
        }
        fn info(&self) -> ConnectionInfo {
            ConnectionInfo::default()
        }
    }

    #[test]
    fn put_file_over_exec_is_byte_exact_with_its_mode() {
        let dir = tempfile_dir();
        let path = dir.join("compose.yml");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        cultivate_plugin_api::put_file_via_exec(&LocalConnection::new(), path.to_str().unwrap(), 0o640, &data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cut_upload_never_replaces_the_destination() {
        let dir = tempfile_dir();
        let path = dir.join(".env");
        std::fs::write(&path, b"OLD=1\n").unwrap();
        let err = cultivate_plugin_api::put_file_via_exec(
            &Cut { keep: 3 },
            path.to_str().unwrap(),
            0o600,
            b"NEW=2\nMORE=3\n",
        )
        .unwrap_err();
        assert!(err.message.contains("received 3 of 13 bytes"), "{}", err.message);
        assert_eq!(std::fs::read(&path).unwrap(), b"OLD=1\n", "the old file must stay");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cultivate-local-test-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]
        /// Payloads of any size and chunking come back from `cat` byte-exact.
        #[test]
        fn stdin_round_trips_through_cat(data in proptest::collection::vec(any::<u8>(), 0..200_000), chunk in 1usize..70_000) {
            let ch = LocalConnection::new().exec(&ExecRequest::new(["cat"])).unwrap();
            let mut got = Vec::new();
            // Write from another thread so a full pipe never deadlocks the reader.
            let payload = data.clone();
            let writer = thread::spawn(move || {
                let mut ch = ch;
                for c in payload.chunks(chunk) {
                    ch.write_stdin(c).unwrap();
                }
                ch.close_stdin().unwrap();
                ch
            });
            let mut ch = writer.join().unwrap();
            loop {
                match ch.next_event(Duration::from_secs(5)).unwrap() {
                    ChannelEvent::Stdout(b) => got.extend(b),
                    ChannelEvent::Stderr(_) | ChannelEvent::Idle => {}
                    ChannelEvent::Exit(s) => { prop_assert_eq!(s, 0); break; }
                }
            }
            prop_assert_eq!(got, data);
        }
    }
}
