//! The FFI layer: the only module that names abi_stable.
//!
//! 1. A plugin library exports one root module, [`PluginMod`], through
//!    [`crate::export_plugin!`]: four entry points (manifest, probe, call,
//!    connect) whose payloads are JSON strings of [`crate::types`] and
//!    [`crate::ops`] values.
//! 2. The host passes itself as an [`FfiHost`] trait object; a transport
//!    returns an [`FfiConnection`] whose commands are [`FfiChannel`]s.
//! 3. Every entry point and every callback catches panics and turns them into
//!    a [`PluginError`] of kind `Panicked`, so a panic never crosses the boundary.
//!
//! The layout is frozen for API major version 1; new operations travel as new
//! `call` names, new fields as new JSON fields.

#![allow(non_local_definitions)] // expansions of `#[sabi_trait]`

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, RErr, ROk, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

use crate::plugin::{Channel, ChannelEvent, Connection, Host, HostServices, Plugin};
use crate::{
    ConnectSpec, ConnectionInfo, ErrorKind, ExecOutput, ExecRequest, LogLevel, Manifest, PluginError, Probe, TargetInfo,
};

/// Re-exports for [`crate::export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
}

/// The host's callbacks, as a plugin receives them.
#[sabi_trait]
pub trait FfiHost: Clone + Send + Sync {
    /// Runs a command (JSON [`ExecRequest`]) and returns JSON [`ExecOutput`].
    fn exec(&self, req: RStr<'_>) -> RResult<RString, RString>;
    /// Writes a file on the target.
    fn put_file(&self, path: RStr<'_>, mode: u32, data: RSlice<'_, u8>) -> RResult<(), RString>;
    /// Records a log line.
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, plugin: RStr<'_>, message: RStr<'_>);
}

/// A host trait object.
pub type FfiHostBox = FfiHost_TO<'static, RArc<()>>;

/// A transport's open connection.
#[sabi_trait]
pub trait FfiConnection: Send + Sync {
    /// Starts a command (JSON [`ExecRequest`]).
    fn exec(&self, req: RStr<'_>) -> RResult<FfiChannelBox, RString>;
    /// Writes a file atomically with a mode.
    fn put_file(&self, path: RStr<'_>, mode: u32, data: RSlice<'_, u8>) -> RResult<(), RString>;
    /// JSON [`ConnectionInfo`].
    fn info(&self) -> RString;
    /// Closes the connection.
    #[sabi(last_prefix_field)]
    fn close(&self);
}

/// A connection trait object.
pub type FfiConnectionBox = FfiConnection_TO<'static, RBox<()>>;

/// A running command.
#[sabi_trait]
pub trait FfiChannel: Send {
    /// Writes to stdin.
    fn write_stdin(&mut self, data: RSlice<'_, u8>) -> RResult<(), RString>;
    /// Closes stdin.
    fn close_stdin(&mut self) -> RResult<(), RString>;
    /// Waits up to `wait_ms` for the next event.
    #[sabi(last_prefix_field)]
    fn next_event(&mut self, wait_ms: u64) -> RResult<FfiEvent, RString>;
}

/// A channel trait object.
pub type FfiChannelBox = FfiChannel_TO<'static, RBox<()>>;

/// [`ChannelEvent`] at the boundary.
#[repr(C)]
#[derive(StableAbi)]
pub enum FfiEvent {
    /// stdout bytes.
    Stdout(RVec<u8>),
    /// stderr bytes.
    Stderr(RVec<u8>),
    /// exit status.
    Exit(i32),
    /// nothing yet.
    Idle,
}

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// JSON [`Manifest`].
    pub manifest: extern "C" fn() -> RResult<RString, RString>,
    /// JSON [`TargetInfo`] in, JSON [`Probe`] out.
    pub probe: extern "C" fn(host: FfiHostBox, target: RStr<'_>) -> RResult<RString, RString>,
    /// Operation name and JSON payload in, JSON response out.
    pub call: extern "C" fn(host: FfiHostBox, op: RStr<'_>, payload: RStr<'_>) -> RResult<RString, RString>,
    /// JSON [`ConnectSpec`] in, a connection out.
    #[sabi(last_prefix_field)]
    pub connect: extern "C" fn(host: FfiHostBox, spec: RStr<'_>) -> RResult<FfiConnectionBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "cultivate_plugin";
    const NAME: &'static str = "cultivate_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The symbol abi_stable looks for; the export macro names it literally.
#[doc(hidden)]
pub const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

// ------------------------------------------------------------ panics and errors

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(RString::from(e.to_wire())),
        Err(payload) => RErr(RString::from(
            PluginError::new(ErrorKind::Panicked, format!("{what} panicked: {}", panic_message(payload.as_ref())))
                .to_wire(),
        )),
    }
}

fn unwire<T>(r: RResult<T, RString>) -> Result<T, PluginError> {
    r.into_result().map_err(|e| PluginError::from_wire(e.as_str()))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, PluginError> {
    serde_json::to_string(v).map_err(|e| PluginError::other(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, PluginError> {
    serde_json::from_str(s).map_err(|e| PluginError::invalid(format!("malformed {what}: {e}")))
}

// ------------------------------------------------------------ host side of FfiHost

#[derive(Clone)]
struct HostAdapter(Arc<dyn HostServices>);

impl FfiHost for HostAdapter {
    fn exec(&self, req: RStr<'_>) -> RResult<RString, RString> {
        guarded("host exec", || {
            let req: ExecRequest = from_json(req.as_str(), "exec request")?;
            let out = self.0.exec(&req)?;
            Ok(RString::from(to_json(&out)?))
        })
    }

    fn put_file(&self, path: RStr<'_>, mode: u32, data: RSlice<'_, u8>) -> RResult<(), RString> {
        guarded("host put_file", || self.0.put_file(path.as_str(), mode, data.as_slice()))
    }

    fn log(&self, level: u8, plugin: RStr<'_>, message: RStr<'_>) {
        let _ =
            catch_unwind(AssertUnwindSafe(|| self.0.log(LogLevel::from_u8(level), plugin.as_str(), message.as_str())));
    }
}

pub(crate) fn host_to_ffi(services: Arc<dyn HostServices>) -> FfiHostBox {
    FfiHost_TO::from_ptr(RArc::new(HostAdapter(services)), TD_Opaque)
}

pub(crate) fn host_exec(host: &FfiHostBox, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
    let json = to_json(req)?;
    let out = unwire(host.exec(RStr::from(json.as_str())))?;
    from_json(out.as_str(), "exec output")
}

pub(crate) fn host_put_file(host: &FfiHostBox, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
    unwire(host.put_file(RStr::from(path), mode, RSlice::from(data)))
}

pub(crate) fn host_log(host: &FfiHostBox, level: LogLevel, plugin: &str, message: &str) {
    host.log(level.to_u8(), RStr::from(plugin), RStr::from(message))
}

// ------------------------------------------------------------ plugin side: exporting

static PLUGIN: OnceLock<Box<dyn Plugin>> = OnceLock::new();

fn plugin() -> Result<&'static dyn Plugin, PluginError> {
    PLUGIN.get().map(|b| b.as_ref()).ok_or_else(|| PluginError::other("plugin not initialised"))
}

fn host_from(host: FfiHostBox) -> Host {
    Host { inner: host, plugin: Arc::from(plugin().map(|p| p.manifest().name).unwrap_or_default().as_str()) }
}

extern "C" fn entry_manifest() -> RResult<RString, RString> {
    guarded("manifest", || Ok(RString::from(to_json(&plugin()?.manifest())?)))
}

extern "C" fn entry_probe(host: FfiHostBox, target: RStr<'_>) -> RResult<RString, RString> {
    guarded("probe", || {
        let target: TargetInfo = from_json(target.as_str(), "target info")?;
        let probe = plugin()?.probe(&host_from(host), &target)?;
        Ok(RString::from(to_json(&probe)?))
    })
}

extern "C" fn entry_call(host: FfiHostBox, op: RStr<'_>, payload: RStr<'_>) -> RResult<RString, RString> {
    guarded(op.as_str(), || Ok(RString::from(plugin()?.call(&host_from(host), op.as_str(), payload.as_str())?)))
}

extern "C" fn entry_connect(host: FfiHostBox, spec: RStr<'_>) -> RResult<FfiConnectionBox, RString> {
    guarded("connect", || {
        let spec: ConnectSpec = from_json(spec.as_str(), "connect spec")?;
        let conn = plugin()?.connect(&host_from(host), &spec)?;
        Ok(FfiConnection_TO::from_value(ConnectionAdapter(conn), TD_Opaque))
    })
}

/// Builds the root module around the plugin made by `ctor` (used by [`crate::export_plugin!`]).
#[doc(hidden)]
pub fn make_root_module(ctor: fn() -> Box<dyn Plugin>) -> PluginModRef {
    PLUGIN.get_or_init(ctor);
    PluginMod { manifest: entry_manifest, probe: entry_probe, call: entry_call, connect: entry_connect }
        .leak_into_prefix()
}

struct ConnectionAdapter(Box<dyn Connection>);

impl FfiConnection for ConnectionAdapter {
    fn exec(&self, req: RStr<'_>) -> RResult<FfiChannelBox, RString> {
        guarded("exec", || {
            let req: ExecRequest = from_json(req.as_str(), "exec request")?;
            let ch = self.0.exec(&req)?;
            Ok(FfiChannel_TO::from_value(ChannelAdapter(ch), TD_Opaque))
        })
    }

    fn put_file(&self, path: RStr<'_>, mode: u32, data: RSlice<'_, u8>) -> RResult<(), RString> {
        guarded("put_file", || self.0.put_file(path.as_str(), mode, data.as_slice()))
    }

    fn info(&self) -> RString {
        let info = catch_unwind(AssertUnwindSafe(|| self.0.info())).unwrap_or_default();
        RString::from(serde_json::to_string(&info).unwrap_or_default())
    }

    fn close(&self) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.close()));
    }
}

struct ChannelAdapter(Box<dyn Channel>);

impl FfiChannel for ChannelAdapter {
    fn write_stdin(&mut self, data: RSlice<'_, u8>) -> RResult<(), RString> {
        guarded("write_stdin", || self.0.write_stdin(data.as_slice()))
    }

    fn close_stdin(&mut self) -> RResult<(), RString> {
        guarded("close_stdin", || self.0.close_stdin())
    }

    fn next_event(&mut self, wait_ms: u64) -> RResult<FfiEvent, RString> {
        guarded("next_event", || {
            Ok(match self.0.next_event(Duration::from_millis(wait_ms))? {
                ChannelEvent::Stdout(b) => FfiEvent::Stdout(RVec::from(b)),
                ChannelEvent::Stderr(b) => FfiEvent::Stderr(RVec::from(b)),
                ChannelEvent::Exit(s) => FfiEvent::Exit(s),
                ChannelEvent::Idle => FfiEvent::Idle,
            })
        })
    }
}

// ------------------------------------------------------------ host side: loading

/// Why a library could not be loaded as a plugin. Each is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be opened as a dynamic library.
    #[error("cannot open library: {0}")]
    Open(String),
    /// The library exports no cultivate root module.
    #[error("not a cultivate plugin (no plugin root module exported)")]
    NotAPlugin,
    /// Built against an incompatible plugin-API version.
    #[error("built against plugin API {found}, this cultivate speaks {expected}: rebuild the plugin against cultivate-plugin-api {expected}")]
    IncompatibleVersion {
        /// The plugin's version.
        found: String,
        /// The host's version.
        expected: String,
    },
    /// Its types do not match the host's (built against a different plugin-api).
    #[error("plugin ABI layout differs from this cultivate's (plugin API {expected}): rebuild the plugin against the same cultivate-plugin-api")]
    IncompatibleLayout {
        /// The host's version.
        expected: String,
    },
    /// The manifest was missing or malformed.
    #[error("bad manifest: {0}")]
    Manifest(String),
    /// Anything else abi_stable reported.
    #[error("{0}")]
    Other(String),
}

fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.len() > 200 {
        let mut end = 200;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    }
}

fn summarize(err: LibraryError) -> LoadError {
    let expected = crate::API_VERSION.to_string();
    match err {
        LibraryError::OpenError { err, .. } => LoadError::Open(first_line(&err.to_string())),
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            LoadError::IncompatibleVersion { found: actual_version.to_string(), expected }
        }
        LibraryError::AbiInstability(_) => LoadError::IncompatibleLayout { expected },
        LibraryError::InvalidAbiHeader(h) => {
            LoadError::Other(format!("built with an incompatible abi_stable ({})", first_line(&format!("{h:?}"))))
        }
        other => LoadError::Other(first_line(&other.to_string())),
    }
}

/// A plugin library loaded into the host. The library stays loaded for the life of the process.
#[derive(Clone)]
pub struct LoadedPlugin {
    path: PathBuf,
    manifest: Manifest,
    module: PluginModRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("path", &self.path).field("manifest", &self.manifest).finish()
    }
}

impl LoadedPlugin {
    /// Loads the library at `path`, checks its ABI and its manifest's API version.
    pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
        let header = lib_header_from_path(path).map_err(summarize)?;
        let module = header.init_root_module::<PluginModRef>().map_err(summarize)?;
        let manifest_json = unwire((module.manifest())()).map_err(|e| LoadError::Manifest(e.message))?;
        let manifest: Manifest = serde_json::from_str(manifest_json.as_str())
            .map_err(|e| LoadError::Manifest(first_line(&e.to_string())))?;
        if manifest.name.trim().is_empty() {
            return Err(LoadError::Manifest("empty plugin name".into()));
        }
        if !crate::api_compatible(&manifest.api_version) {
            return Err(LoadError::IncompatibleVersion {
                found: manifest.api_version.clone(),
                expected: crate::API_VERSION.to_string(),
            });
        }
        Ok(LoadedPlugin { path: path.to_path_buf(), manifest, module })
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Asks the plugin to probe the target.
    pub fn probe(&self, host: &Host, target: &TargetInfo) -> Result<Probe, PluginError> {
        let target = to_json(target)?;
        let out = unwire((self.module.probe())(host.inner.clone(), RStr::from(target.as_str())))?;
        from_json(out.as_str(), "probe result")
    }

    /// Calls an operation by name with a JSON payload.
    pub fn call_raw(&self, host: &Host, op: &str, payload: &str) -> Result<String, PluginError> {
        let out = unwire((self.module.call())(host.inner.clone(), RStr::from(op), RStr::from(payload)))?;
        Ok(out.into_string())
    }

    /// Calls a typed operation.
    pub fn call<O: crate::ops::Operation>(&self, host: &Host, req: &O::Request) -> Result<O::Response, PluginError> {
        let payload = to_json(req)?;
        let out = self.call_raw(host, O::NAME, &payload)?;
        from_json(&out, O::NAME)
    }

    /// Opens a connection (transports).
    pub fn connect(&self, host: &Host, spec: &ConnectSpec) -> Result<Box<dyn Connection>, PluginError> {
        let spec = to_json(spec)?;
        let conn = unwire((self.module.connect())(host.inner.clone(), RStr::from(spec.as_str())))?;
        Ok(Box::new(RemoteConnection(conn)))
    }
}

struct RemoteConnection(FfiConnectionBox);

impl Connection for RemoteConnection {
    fn exec(&self, req: &ExecRequest) -> Result<Box<dyn Channel>, PluginError> {
        let json = to_json(req)?;
        let ch = unwire(self.0.exec(RStr::from(json.as_str())))?;
        Ok(Box::new(RemoteChannel(ch)))
    }

    fn put_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), PluginError> {
        unwire(self.0.put_file(RStr::from(path), mode, RSlice::from(data)))
    }

    fn info(&self) -> ConnectionInfo {
        serde_json::from_str(self.0.info().as_str()).unwrap_or_default()
    }

    fn close(&self) {
        self.0.close()
    }
}

struct RemoteChannel(FfiChannelBox);

impl Channel for RemoteChannel {
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), PluginError> {
        unwire(self.0.write_stdin(RSlice::from(data)))
    }

    fn close_stdin(&mut self) -> Result<(), PluginError> {
        unwire(self.0.close_stdin())
    }

    fn next_event(&mut self, wait: Duration) -> Result<ChannelEvent, PluginError> {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        Ok(match unwire(self.0.next_event(ms))? {
            FfiEvent::Stdout(b) => ChannelEvent::Stdout(b.into_vec()),
            FfiEvent::Stderr(b) => ChannelEvent::Stderr(b.into_vec()),
            FfiEvent::Exit(s) => ChannelEvent::Exit(s),
            FfiEvent::Idle => ChannelEvent::Idle,
        })
    }
}
