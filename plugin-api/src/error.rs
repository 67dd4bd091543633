//! The one error type that crosses the boundary.

use serde::{Deserialize, Serialize};

/// Classes of failure. Each says what the host does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The plugin does not implement this operation: the host picks another plugin or reports it.
    Unsupported,
    /// The request was malformed (a host or plugin bug, or an API mismatch): reported, nothing changed.
    InvalidRequest,
    /// A command on the target failed: the stage fails.
    CommandFailed,
    /// A command or connection timed out: the stage fails.
    Timeout,
    /// TCP connection refused: nothing was changed; check the port and that sshd runs.
    ConnectionRefused,
    /// Host unreachable or its name unknown: nothing was changed.
    HostUnreachable,
    /// The server refused every authentication method tried.
    AuthFailed,
    /// The host key is not in known_hosts: refused unless the user opts in.
    HostKeyUnknown,
    /// The host key differs from the recorded one: always refused.
    HostKeyChanged,
    /// The connection dropped during a command: the stage fails and the pipeline rolls back.
    ConnectionLost,
    /// The tool this plugin drives is missing or too old on the target.
    NotAvailable,
    /// The plugin panicked; the panic was caught at the boundary.
    Panicked,
    /// A local I/O error.
    Io,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::CommandFailed => "command_failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::HostUnreachable => "host_unreachable",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::HostKeyUnknown => "host_key_unknown",
            ErrorKind::HostKeyChanged => "host_key_changed",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::NotAvailable => "not_available",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Io => "io",
            ErrorKind::Other => "other",
        }
    }
}

/// An error from a plugin or from a host callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What went wrong, naming the value or command involved. No trailing period.
    pub message: String,
    /// What the user can do about it.
    #[serde(default)]
    pub hint: Option<String>,
}

impl PluginError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError { kind, message: message.into(), hint: None }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `op` is not implemented by this plugin.
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        PluginError::new(ErrorKind::Unsupported, format!("{what} is not supported by this plugin"))
    }

    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::InvalidRequest, message)
    }

    /// Anything else.
    pub fn other(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::Other, message)
    }

    /// Serialized form used at the boundary.
    pub(crate) fn to_wire(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.message.clone())
    }

    /// Parses the boundary form; a string that is not one becomes `Other`.
    pub(crate) fn from_wire(s: &str) -> Self {
        serde_json::from_str(s).unwrap_or_else(|_| PluginError::other(s.to_string()))
    }
}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> Self {
        PluginError::new(ErrorKind::Io, e.to_string())
    }
}
