//! Typed values that cross the plugin boundary as JSON.
//!
//! Only these types travel between the host and a plugin; their JSON form is
//! the contract. Fields may be added in a minor version (with `#[serde(default)]`),
//! never removed or changed in meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a plugin is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PluginKind {
    /// Runs images and stacks on a target (docker, docker-compose, finch, podman).
    Runtime,
    /// Carries commands and files to a target (ssh, local).
    Transport,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Runtime => "runtime",
            PluginKind::Transport => "transport",
        })
    }
}

/// What a runtime plugin can supply to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Capability {
    /// An image store: load, inspect, tag, remove, build.
    Images,
    /// A stack of services from a compose file: up, down, ps, logs.
    Stack,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Capability::Images => "images",
            Capability::Stack => "stack",
        })
    }
}

/// A plugin's description of itself, read once when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Unique name (`docker`, `docker-compose`, `ssh`). The first plugin of a name wins.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// The plugin-API version it was built against (semver); the major must match the host's.
    pub api_version: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Runtime or transport (a plugin may be both).
    pub kinds: Vec<PluginKind>,
    /// For runtimes: images and/or stack.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Higher wins when several available plugins offer the same capability.
    #[serde(default)]
    pub priority: i32,
    /// Target operating systems as `uname -s` lowercased (`linux`, `darwin`); empty means any.
    #[serde(default)]
    pub target_os: Vec<String>,
    /// For transports: the target schemes it serves (`ssh`, `local`).
    #[serde(default)]
    pub schemes: Vec<String>,
    /// Names of the operations ([`crate::ops`]) it implements.
    #[serde(default)]
    pub operations: Vec<String>,
    /// For runtimes: the commands its [`crate::Plugin::probe`] runs first,
    /// each marked [`ExecRequest::stable_output`] and without stdin. A host
    /// may run them all, with its own probe of the OS, in one command on the
    /// target before probing, and answer the plugin's own requests from
    /// those answers (no round trip each). A command the probe then does not
    /// run costs only its own run time; one it runs that is not listed runs
    /// as usual. Absent from the JSON when empty, so manifests read the same
    /// by hosts and plugins built before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_commands: Vec<ExecRequest>,
}

impl Manifest {
    /// True when the plugin implements `op`.
    pub fn implements(&self, op: &str) -> bool {
        self.operations.iter().any(|o| o == op)
    }
}

/// What the host learned about the target before asking plugins to probe it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// `uname -s`, e.g. `Linux`, `Darwin`.
    pub os: String,
    /// `uname -m`, e.g. `x86_64`, `arm64`.
    pub arch: String,
    /// `/etc/os-release` fields (ID, VERSION_ID, ID_LIKE, PRETTY_NAME …); empty on macOS.
    #[serde(default)]
    pub os_release: BTreeMap<String, String>,
    /// The remote user's home directory.
    #[serde(default)]
    pub home: Option<String>,
    /// The remote user's name.
    #[serde(default)]
    pub user: Option<String>,
}

impl TargetInfo {
    /// `uname -s` lowercased (`linux`, `darwin`).
    pub fn os_key(&self) -> String {
        self.os.trim().to_ascii_lowercase()
    }

    /// True for Debian, Ubuntu and their derivatives.
    pub fn is_debian_like(&self) -> bool {
        let id = self.os_release.get("ID").map(String::as_str).unwrap_or("");
        let like = self.os_release.get("ID_LIKE").map(String::as_str).unwrap_or("");
        matches!(id, "debian" | "ubuntu") || like.split_whitespace().any(|w| w == "debian" || w == "ubuntu")
    }
}

/// A plugin's answer to "can you work on this target?".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Usable on this target now.
    pub available: bool,
    /// Version of the tool found (`20.10.24`), if any.
    #[serde(default)]
    pub version: Option<String>,
    /// Preference among available plugins; usually the manifest priority, adjusted by what was found.
    #[serde(default)]
    pub score: i32,
    /// Why it is unavailable (or a note when it is available).
    #[serde(default)]
    pub reason: Option<String>,
    /// Free-form facts (`compose_flavour = v1`, `binary = /usr/bin/docker-compose`).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Probe {
    /// An available probe with a version and score.
    pub fn available(version: impl Into<String>, score: i32) -> Self {
        Probe { available: true, version: Some(version.into()), score, ..Probe::default() }
    }

    /// An unavailable probe with the reason.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Probe { available: false, reason: Some(reason.into()), ..Probe::default() }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// A command to run on the target. Always an argument vector: a transport
/// that needs a command line (ssh) quotes it; one that can exec directly does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments. Use `["sh", "-c", "…"]` for a shell snippet.
    pub argv: Vec<String>,
    /// Extra environment for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory on the target.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes written to the command's stdin (small payloads; stream large ones through a channel).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Give up after this many seconds (the host kills the command).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Values that must never appear in logs (replaced by `***` when the command is shown).
    #[serde(default)]
    pub redact: Vec<String>,
    /// The output may carry secrets (environment values, a `.env`): the host
    /// returns it but never logs it, even at `-vv`. Absent from the JSON when
    /// false, so plugins built before it exchange the same requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private_output: bool,
    /// Run the command on a pseudo-terminal of this size (an interactive
    /// `exec`). Only transports whose [`ConnectionInfo`] details say
    /// `pty = yes` honour it; others run the command without one. Absent
    /// from the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// The output cannot change within one run (a version query such as
    /// `docker compose version --short`): the host may answer a request equal
    /// to one it already ran on this connection from that earlier answer,
    /// without a round trip. Only for commands that change nothing. Absent
    /// from the JSON when false, so plugins built before it exchange the same
    /// requests (and an older host simply runs the command).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stable_output: bool,
}

/// A pseudo-terminal's type and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// `TERM` (`xterm-256color`).
    pub term: String,
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// The [`ConnectionInfo`] detail a transport sets (to `yes`) when it runs
/// commands with [`ExecRequest::tty`] on a pseudo-terminal.
pub const PTY_DETAIL: &str = "pty";

impl ExecRequest {
    /// A request for `argv` with nothing else set.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest { argv: argv.into_iter().map(Into::into).collect(), ..ExecRequest::default() }
    }

    /// A `sh -c SCRIPT` request.
    pub fn shell(script: impl Into<String>) -> Self {
        ExecRequest::new(["sh".to_string(), "-c".to_string(), script.into()])
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the stdin payload.
    pub fn stdin(mut self, data: impl Into<String>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Marks the output as private: returned, never logged.
    pub fn private_output(mut self) -> Self {
        self.private_output = true;
        self
    }

    /// Marks the output as stable within a run (see [`ExecRequest::stable_output`]).
    pub fn stable_output(mut self) -> Self {
        self.stable_output = true;
        self
    }

    /// Sets the timeout.
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// The command as one shell-quoted line, with redacted values replaced.
    pub fn display(&self) -> String {
        let mut line = String::new();
        if let Some(dir) = &self.cwd {
            line.push_str("cd ");
            line.push_str(&crate::shell::quote(dir));
            line.push_str(" && ");
        }
        for (k, v) in &self.env {
            line.push_str(k);
            line.push('=');
            line.push_str(&crate::shell::quote(v));
            line.push(' ');
        }
        line.push_str(&crate::shell::join(&self.argv));
        for secret in self.redact.iter().filter(|s| !s.is_empty()) {
            line = line.replace(secret.as_str(), "***");
        }
        line
    }
}

/// The collected result of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit status; 128+N when killed by signal N; -1 when unknown.
    pub status: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl ExecOutput {
    /// True when the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// `Ok(self)` when the command exited 0, else a [`crate::PluginError`] of kind
    /// `CommandFailed` naming the command and carrying its stderr.
    pub fn check(self, what: &str) -> Result<Self, crate::PluginError> {
        if self.success() {
            Ok(self)
        } else {
            let detail = if self.stderr.trim().is_empty() { self.stdout.trim() } else { self.stderr.trim() };
            Err(crate::PluginError::new(
                crate::ErrorKind::CommandFailed,
                format!("{what} exited with status {}: {}", self.status, tail(detail, 2000)),
            ))
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// How the host asks a transport to connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectSpec {
    /// The target as the user wrote it: `local`, `ssh://[user@]host[:port]`, or an ssh-config alias.
    pub target: String,
    /// Identity file (`--identity`).
    #[serde(default)]
    pub identity: Option<String>,
    /// known_hosts file (`--known-hosts`); default `~/.ssh/known_hosts`.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Record an unknown host key instead of refusing it (`--accept-new-host-key`).
    #[serde(default)]
    pub accept_new_host_key: bool,
    /// TCP connect and handshake timeout, each.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Keepalive interval; 0 disables.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Prefix commands with `sudo -n` on the target.
    #[serde(default)]
    pub sudo: bool,
    /// Transport-specific options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_connect_timeout() -> u64 {
    10
}

fn default_keepalive() -> u64 {
    15
}

/// What a connected transport says about its peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// `local`, or `user@host:port`.
    pub peer: String,
    /// Free-form facts (server version, host key fingerprint).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// A log level, for plugins' log lines forwarded to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures.
    Error,
    /// Something the user should know.
    Warn,
    /// Progress.
    Info,
    /// Details (shown with `-v`).
    Debug,
    /// Everything (shown with `-vv`).
    Trace,
}

impl LogLevel {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            LogLevel::Error => 1,
            LogLevel::Warn => 2,
            LogLevel::Info => 3,
            LogLevel::Debug => 4,
            LogLevel::Trace => 5,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `probe_commands` changes nothing on the wire for plugins and hosts
    /// built before it: a manifest without it parses (empty), and an empty
    /// list is left out of the JSON.
    #[test]
    fn probe_commands_keep_the_manifest_wire_format() {
        let old = r#"{"name":"x","version":"1.0.0","api_version":"1.0.0","kinds":["runtime"]}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert!(m.probe_commands.is_empty());
        assert!(!serde_json::to_string(&m).unwrap().contains("probe_commands"));
        let mut m = m;
        m.probe_commands = vec![ExecRequest::new(["docker", "version"]).stable_output()];
        let text = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        // A host built before the field reads the manifest as it did.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldManifest {
            name: String,
            kinds: Vec<PluginKind>,
        }
        let _: OldManifest = serde_json::from_str(&text).unwrap();
    }

    /// `private_output` changes nothing on the wire for plugins built before it:
    /// their requests (without the field) parse, and a request that does not
    /// set it serializes exactly as before.
    #[test]
    fn private_output_keeps_the_exec_request_wire_format() {
        let old =
            r#"{"argv":["docker","inspect","x"],"env":{},"cwd":null,"stdin":null,"timeout_secs":null,"redact":[]}"#;
        let req: ExecRequest = serde_json::from_str(old).unwrap();
        assert!(!req.private_output);
        assert!(!req.stable_output);
        assert_eq!(serde_json::to_string(&req).unwrap(), old);
        let stable = serde_json::to_string(&ExecRequest::new(["docker", "version"]).stable_output()).unwrap();
        assert!(stable.contains(r#""stable_output":true"#), "{stable}");
        let private = serde_json::to_string(&ExecRequest::new(["cat", ".env"]).private_output()).unwrap();
        assert!(private.contains(r#""private_output":true"#), "{private}");
        // An older plugin ignores the field it does not know.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldExecRequest {
            argv: Vec<String>,
        }
        let _: OldExecRequest = serde_json::from_str(&private).unwrap();
    }
}
