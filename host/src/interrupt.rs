//! SIGINT, SIGTERM and SIGHUP stop a run at its next safe point instead of
//! killing it between two steps that must go together.
//!
//! 1. [`install`] (from `main`, before anything runs) registers handlers for
//!    the three signals and ignores SIGPIPE. A handler only records the
//!    signal (atomics, nothing else: it runs in signal context).
//! 2. The pipeline calls [`check`] at its safe points — between stages,
//!    never between two steps that must go together. Once a signal came it
//!    returns an [`Interrupted`] error, which [`crate::error::exit_code`] maps
//!    to 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP).
//! 3. The pipeline then cleans up as after any failure (release the lock,
//!    remove the half-made release directory, leave `current` serving), says
//!    what it left, and returns the error.
//! 4. A second signal during that cleanup prints "still cleaning up"; a
//!    third exits at once with the first signal's code ([`action`], a pure
//!    state machine).
//!
//! How `deploy.rs` uses it (the lead wires it): call `crate::interrupt::check()?`
//! at the top of each stage (after connect, after lock — `Ctx::lock` already
//! does — before build, before transfer, between image transfers, before the
//! configuration upload, before `stack.up`, between health polls), and never
//! between writing `release.json` and starting, nor between a healthy verdict
//! and moving `current`. On the error path the existing cleanup runs: remove
//! the unfinished release directory (`lock::clean_after_takeover` does the
//! same for a dead holder's leftovers), `ctx.unlock()`, then return the
//! error; `interrupt::received()` tells the cleanup whether it was a signal,
//! so it can say "interrupted by SIGTERM: release X removed, release Y still
//! serving". Commands that run long on the target are not themselves
//! interrupted: the deploy waits for the current command, then stops.
//!
//! Closed output never kills a run: SIGPIPE is ignored (a write then fails
//! with EPIPE), and the printer ([`crate::output`]) ignores write errors.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::error::{Code, UserError};

/// The first signal received (0: none).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// How many signals came.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// What a handler does for the `n`th signal (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Record it; the pipeline stops at its next safe point.
    Stop,
    /// Say that cleanup is still running.
    StillCleaningUp,
    /// Exit at once with this code.
    ExitNow(i32),
}

/// The state machine: the `n`th signal, the first one being `first`.
pub fn action(n: usize, first: i32) -> Action {
    match n {
        0 | 1 => Action::Stop,
        2 => Action::StillCleaningUp,
        _ => Action::ExitNow(exit_code_for(first)),
    }
}

/// 128 + the signal number, as shells report a death by signal.
pub fn exit_code_for(signal: i32) -> i32 {
    128 + signal
}

/// The signal's name.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn on_signal(signal: i32) {
    let _ = FIRST.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    match action(n, FIRST.load(Ordering::SeqCst)) {
        Action::Stop => {}
        Action::StillCleaningUp => {
            let msg = b"\nwarning: still cleaning up (the target is being left consistent); interrupt once more to stop at once\n";
            // SAFETY: write(2) is async-signal-safe; the buffer is valid.
            let _ = unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        }
        // SAFETY: _exit is async-signal-safe and skips atexit handlers.
        Action::ExitNow(code) => unsafe { libc::_exit(code) },
    }
}

/// Installs the handlers and ignores SIGPIPE; call once, first thing in `main`.
pub fn install() {
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN has no preconditions
    // (Rust's runtime does the same for binaries; done here so it is explicit).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the action only touches atomics and calls write(2) and
        // _exit(2), all async-signal-safe.
        let registered = unsafe { signal_hook_registry::register(signal, move || on_signal(signal)) };
        if let Err(e) = registered {
            tracing::warn!("cannot handle {}: {e}", signal_name(signal));
        }
    }
}

/// The first signal received, if any.
pub fn received() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The error a stopped run returns: exit code 128 + the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

/// `Err(Interrupted)` once a signal came; call at the pipeline's safe points.
pub fn check() -> anyhow::Result<()> {
    match received() {
        None => Ok(()),
        Some(s) => Err(UserError::new(code_for(s), Interrupted(s).to_string()).into()),
    }
}

/// The exit code for a signal.
pub fn code_for(signal: i32) -> Code {
    match signal {
        libc::SIGHUP => Code::HangUp,
        libc::SIGTERM => Code::Terminated,
        _ => Code::Interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stops_second_warns_third_exits_with_the_first_signals_code() {
        assert_eq!(action(1, libc::SIGINT), Action::Stop);
        assert_eq!(action(2, libc::SIGINT), Action::StillCleaningUp);
        assert_eq!(action(3, libc::SIGINT), Action::ExitNow(130));
        assert_eq!(action(4, libc::SIGTERM), Action::ExitNow(143));
        assert_eq!(action(3, libc::SIGHUP), Action::ExitNow(129));
    }

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
            assert_eq!(code_for(sig) as i32, code);
            assert_eq!(exit_code_for(sig), code);
            let err: anyhow::Error = UserError::new(code_for(sig), Interrupted(sig).to_string()).into();
            assert_eq!(crate::error::exit_code(&err), code);
            assert_eq!(err.to_string(), format!("interrupted by {}", signal_name(sig)));
        }
    }

    #[test]
    fn no_signal_means_no_error() {
        // The test process gets no signal: nothing recorded.
        assert_eq!(received(), None);
        assert!(check().is_ok());
    }
}
