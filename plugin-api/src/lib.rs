//! The stable plugin interface of `cultivate`.
//!
//! 1. A plugin implements [`Plugin`] and exports it with [`export_plugin!`];
//!    it builds as a `cdylib` named `cultivate_plugin_<name>`.
//! 2. The host loads it with [`LoadedPlugin::load`], which checks the ABI
//!    layout and the manifest's [`API_VERSION`] and refuses a mismatch with a
//!    one-line [`LoadError`].
//! 3. The host probes the target through each plugin, picks one per
//!    capability, and calls operations ([`ops`]) whose typed payloads cross
//!    as JSON. Plugins run commands on the target through the [`Host`]
//!    callbacks, which the host routes through the selected transport.
//!
//! Versioning: the API version is this crate's version. Plugins and host must
//! share the major version; a minor version only adds operations or optional
//! fields, so an older plugin keeps loading in a newer host.

mod error;
pub mod ffi;
pub mod ops;
mod plugin;
pub mod shell;
mod types;

#[cfg(feature = "fake-host")]
pub mod fake;

pub use error::{ErrorKind, PluginError};
pub use ffi::{LoadError, LoadedPlugin};
pub use plugin::{
    collect, collect_with, put_file_via_exec, Channel, ChannelEvent, Connection, Host, HostServices, Plugin,
};
pub use types::{
    Capability, ConnectSpec, ConnectionInfo, ExecOutput, ExecRequest, LogLevel, Manifest, PluginKind, Probe,
    TargetInfo, TtySize, PTY_DETAIL,
};

/// The plugin-API version (this crate's version).
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// File-name prefix of plugin libraries (`libcultivate_plugin_docker.so`).
pub const LIBRARY_PREFIX: &str = "cultivate_plugin_";

/// True when a plugin built against API `version` can be loaded by this host:
/// same major version, and a minor version no newer than the host's.
pub fn api_compatible(version: &str) -> bool {
    fn parse(v: &str) -> Option<(u64, u64)> {
        let mut it = v.trim().split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().unwrap_or("0").parse().ok()?;
        Some((major, minor))
    }
    match (parse(version), parse(API_VERSION)) {
        (Some((maj, min)), Some((hmaj, hmin))) => maj == hmaj && min <= hmin,
        _ => false,
    }
}

/// A manifest with this API version filled in.
pub fn manifest(name: &str, version: &str, kinds: &[PluginKind]) -> Manifest {
    Manifest {
        name: name.to_string(),
        version: version.to_string(),
        api_version: API_VERSION.to_string(),
        description: String::new(),
        kinds: kinds.to_vec(),
        capabilities: Vec::new(),
        priority: 0,
        target_os: Vec::new(),
        schemes: Vec::new(),
        operations: Vec::new(),
        probe_commands: Vec::new(),
    }
}

/// Exports a plugin from a `cdylib`: `export_plugin!(MyPlugin::new());`.
///
/// The expression is evaluated once, when the host loads the library. Every
/// entry point catches panics and returns them as errors of kind `Panicked`.
#[macro_export]
macro_rules! export_plugin {
    ($ctor:expr) => {
        #[doc(hidden)]
        fn __cultivate_plugin_new() -> ::std::boxed::Box<dyn $crate::Plugin> {
            ::std::boxed::Box::new($ctor)
        }

        #[doc(hidden)]
        fn __cultivate_plugin_root() -> $crate::ffi::PluginModRef {
            $crate::ffi::make_root_module(__cultivate_plugin_new)
        }

        /// The abi_stable library header (what `#[export_root_module]` generates).
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __CULTIVATE_PLUGIN_ROOT: $crate::ffi::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased() -> $crate::ffi::__private::abi_stable::library::RootModuleResult {
                $crate::ffi::__private::abi_stable::library::__call_root_module_loader(__cultivate_plugin_root)
            }
            // SAFETY: this is the expansion of abi_stable's `#[export_root_module]`
            // for a root module of type `PluginModRef`, with layout checking on.
            unsafe {
                $crate::ffi::__private::abi_stable::library::LibHeader::from_constructor::<$crate::ffi::PluginModRef>(
                    erased,
                    $crate::ffi::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_macro_uses_abi_stables_symbol_name() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, ffi::ROOT_SYMBOL);
    }

    #[test]
    fn api_compatibility_rule() {
        assert!(api_compatible(API_VERSION));
        assert!(api_compatible("1.0.0"));
        assert!(!api_compatible("2.0.0"));
        assert!(!api_compatible("0.9.0"));
        assert!(!api_compatible("1.99.0"));
        assert!(!api_compatible("garbage"));
    }
}
