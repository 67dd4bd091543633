//! Errors the user sees, and the one place that maps them to exit codes.

use cultivate_plugin_api::{ErrorKind, PluginError};

/// Exit codes, documented in `cultivate --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Failed; nothing was changed, or an internal error.
    Failed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// The target's runtime is missing or too old.
    RuntimeMissing = 3,
    /// Deploy failed and was rolled back to a healthy release.
    RolledBack = 4,
    /// Deploy failed and the rollback failed too.
    RollbackFailed = 5,
    /// Another deploy holds the lock.
    Locked = 6,
    /// Connection timed out.
    Timeout = 10,
    /// Connection refused.
    Refused = 11,
    /// Host unreachable or unknown name.
    Unreachable = 12,
    /// SSH authentication failed.
    AuthFailed = 13,
    /// Host key unknown.
    HostKeyUnknown = 14,
    /// Host key changed.
    HostKeyChanged = 15,
    /// Connection lost during a command.
    ConnectionLost = 16,
    /// Stopped by SIGHUP (128 + 1).
    HangUp = 129,
    /// Stopped by SIGINT, Ctrl-C (128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15).
    Terminated = 143,
}

/// An error with an exit code and an optional hint, for the user.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UserError {
    /// Exit code.
    pub code: Code,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl UserError {
    /// A new error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        UserError { code, message: message.into(), hint: None }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The exit status of a command run for the user (`cultivate exec`), passed
/// through as cultivate's own; nothing more is printed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the command exited with status {0}")]
pub struct PassThrough(pub i32);

/// Shorthand for a usage/configuration error.
pub fn usage(message: impl Into<String>) -> UserError {
    UserError::new(Code::Usage, message)
}

fn code_of_kind(kind: ErrorKind) -> Option<Code> {
    Some(match kind {
        ErrorKind::Timeout => Code::Timeout,
        ErrorKind::ConnectionRefused => Code::Refused,
        ErrorKind::HostUnreachable => Code::Unreachable,
        ErrorKind::AuthFailed => Code::AuthFailed,
        ErrorKind::HostKeyUnknown => Code::HostKeyUnknown,
        ErrorKind::HostKeyChanged => Code::HostKeyChanged,
        ErrorKind::ConnectionLost => Code::ConnectionLost,
        ErrorKind::NotAvailable => Code::RuntimeMissing,
        _ => return None,
    })
}

/// The exit code for an error: the first classified error in its chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(p) = err.downcast_ref::<PassThrough>() {
        return p.0;
    }
    // anyhow finds context values anywhere in the chain, outermost first.
    if let Some(u) = err.downcast_ref::<UserError>() {
        return u.code as i32;
    }
    if let Some(code) = err.downcast_ref::<PluginError>().and_then(|p| code_of_kind(p.kind)) {
        return code as i32;
    }
    for cause in err.chain() {
        if let Some(u) = cause.downcast_ref::<UserError>() {
            return u.code as i32;
        }
        if let Some(p) = cause.downcast_ref::<PluginError>() {
            if let Some(code) = code_of_kind(p.kind) {
                return code as i32;
            }
        }
        if cause.downcast_ref::<clap::Error>().is_some() {
            return Code::Usage as i32;
        }
    }
    Code::Failed as i32
}

/// The hint for an error, from the first error in its chain that has one.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    if let Some(h) = err.downcast_ref::<UserError>().and_then(|u| u.hint.clone()) {
        return Some(h);
    }
    if let Some(h) = err.downcast_ref::<PluginError>().and_then(|p| p.hint.clone()) {
        return Some(h);
    }
    err.chain().find_map(|cause| {
        if let Some(u) = cause.downcast_ref::<UserError>() {
            return u.hint.clone();
        }
        cause.downcast_ref::<PluginError>().and_then(|p| p.hint.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn plugin_error_kinds_map_through_context() {
        let err: anyhow::Result<()> =
            Err(PluginError::new(ErrorKind::HostKeyChanged, "changed")).context("connecting to example.org");
        assert_eq!(exit_code(&err.unwrap_err()), 15);
    }

    #[test]
    fn outermost_user_error_wins() {
        let inner = anyhow::Error::new(PluginError::new(ErrorKind::Timeout, "slow"));
        let outer = inner.context(UserError::new(Code::RolledBack, "rolled back"));
        assert_eq!(exit_code(&outer), 4);
    }

    #[test]
    fn unclassified_is_one() {
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
    }
}
