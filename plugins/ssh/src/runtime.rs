//! The plugin's private tokio runtime.
//!
//! Never the host's: the plugin is a separate library with its own tokio, and
//! its sync API may be called from any thread. The runtime lives for the
//! process (a static), so it is never dropped inside someone else's async
//! context.

use std::future::Future;
use std::sync::OnceLock;

use cultivate_plugin_api::{ErrorKind, PluginError};
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, PluginError> {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cultivate-ssh")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    rt.as_ref().map_err(|e| PluginError::new(ErrorKind::Io, format!("cannot start the ssh plugin's runtime: {e}")))
}

/// Runs `fut` on the plugin's runtime and blocks this thread until it is done.
/// Works from any thread, including one driven by another runtime.
pub fn block<F, T>(fut: F) -> Result<T, PluginError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| PluginError::other("an ssh task stopped unexpectedly"))
}

/// Starts `fut` on the plugin's runtime without waiting.
pub fn spawn<F>(fut: F) -> Result<(), PluginError>
where
    F: Future<Output = ()> + Send + 'static,
{
    runtime()?.spawn(fut);
    Ok(())
}
