//! A fake host for plugin unit tests: answers commands from a script of
//! rules and records every command and file, so command building and output
//! parsing can be tested without a server.

use std::sync::{Arc, Mutex};

use crate::{ExecOutput, ExecRequest, Host, HostServices, LogLevel, PluginError};

type Rule = (String, Result<ExecOutput, PluginError>);
type Shared<T> = Arc<Mutex<Vec<T>>>;

/// A scripted host. Clone it to keep a handle for assertions after giving a [`Host`] away.
#[derive(Clone, Default)]
pub struct FakeHost {
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Every command run, as its display line.
    pub commands: Arc<Mutex<Vec<String>>>,
    /// Every file written: (path, mode, bytes).
    pub files: Shared<(String, u32, Vec<u8>)>,
    /// Every log line: (level, plugin, message).
    pub logs: Shared<(LogLevel, String, String)>,
}

impl FakeHost {
    /// A host with no rules: every command exits 127.
    pub fn new() -> Self {
        FakeHost::default()
    }

    /// Commands whose display line starts with `prefix` succeed with `stdout`.
    pub fn ok(self, prefix: &str, stdout: &str) -> Self {
        self.answer(prefix, Ok(ExecOutput { status: 0, stdout: stdout.to_string(), stderr: String::new() }))
    }

    /// Commands whose display line starts with `prefix` exit with `status` and `stderr`.
    pub fn fail(self, prefix: &str, status: i32, stderr: &str) -> Self {
        self.answer(prefix, Ok(ExecOutput { status, stdout: String::new(), stderr: stderr.to_string() }))
    }

    /// Commands whose display line starts with `prefix` get `result`. Later rules win.
    pub fn answer(self, prefix: &str, result: Result<ExecOutput, PluginError>) -> Self {
        self.rules.lock().unwrap().push((prefix.to_string(), result));
        self
    }

    /// The [`Host`] a plugin receives.
    pub fn host(&self) -> Host {
        Host::new(Arc::new(self.clone()))
    }

    /// Commands run so far.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

impl HostServices for FakeHost {
    fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let line = req.display();
        self.commands.lock().unwrap().push(line.clone());
        let rules = self.rules.lock().unwrap();
        for (prefix, result) in rules.iter().rev() {
            if line.starts_with(prefix.as_str()) {
                return result.clone();
            }
        }
        Ok(ExecOutput { status: 127, stdout: String::new(), stderr: format!("fake host: no rule for `{line}`") })
    }

    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        self.files.lock().unwrap().push((path.to_string(), mode, data.to_vec()));
        Ok(())
    }

    fn log(&self, level: LogLevel, plugin: &str, message: &str) {
        self.logs.lock().unwrap().push((level, plugin.to_string(), message.to_string()));
    }
}

/// A host that runs commands on this machine with `std::process::Command`,
/// for plugin tests against real tools (a real Docker engine, Compose).
/// A missing program exits 127, like a shell.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalHost;

impl LocalHost {
    /// The [`Host`] a plugin receives.
    pub fn host() -> Host {
        Host::new(Arc::new(LocalHost))
    }
}

impl HostServices for LocalHost {
    fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let Some((program, args)) = req.argv.split_first() else {
            return Err(PluginError::invalid("empty command"));
        };
        let mut cmd = Command::new(program);
        cmd.args(args).envs(&req.env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(dir) = &req.cwd {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ExecOutput { status: 127, stdout: String::new(), stderr: format!("{program}: not found") })
            }
            Err(e) => return Err(e.into()),
        };
        if let (Some(mut stdin), Some(data)) = (child.stdin.take(), &req.stdin) {
            stdin.write_all(data.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(ExecOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, data)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn log(&self, level: LogLevel, plugin: &str, message: &str) {
        eprintln!("[{level:?}] {plugin}: {message}");
    }
}
