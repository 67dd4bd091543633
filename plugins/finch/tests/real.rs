//! The finch plugin on this (Linux) machine, through a tiny host that runs
//! commands locally. There is no macOS here: this proves the plugin refuses
//! a Linux target with the documented reason, that its locator script runs
//! in a real POSIX shell, and that operations fail cleanly without finch.
//! Everything macOS-specific is covered by the fake-host unit tests.

use std::process::Command;

use cultivate_plugin_api::fake::LocalHost;
use cultivate_plugin_api::ops::{self, Operation};
use cultivate_plugin_api::{ErrorKind, Plugin, TargetInfo};
use cultivate_plugin_finch::{locate, FinchPlugin};

fn uname(flag: &str) -> String {
    let out = Command::new("uname").arg(flag).output().expect("uname runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn finch_plugin_on_this_linux_machine() {
    let host = LocalHost::host().for_plugin("finch");
    let target = TargetInfo { os: uname("-s"), arch: uname("-m"), ..TargetInfo::default() };
    assert_eq!(target.os_key(), "linux", "this test describes a Linux machine");

    let probe = FinchPlugin.probe(&host, &target).unwrap();
    assert!(!probe.available);
    assert_eq!(probe.reason.as_deref(), Some("finch runs on macOS only (target is Linux)"));

    // the locator runs in a real shell; no finch is installed here
    let has_finch = Command::new("sh").arg("-c").arg("command -v finch").output().unwrap().status.success();
    let found = locate(&host).unwrap();
    assert_eq!(found.is_some(), has_finch, "{found:?}");

    if !has_finch {
        let payload = serde_json::to_string(&ops::ImageRefs { refs: vec!["x:1".into()] }).unwrap();
        let err = FinchPlugin.call(&host, ops::ImageInspect::NAME, &payload).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotAvailable);
        assert!(err.message.contains("brew install --cask finch"), "{}", err.message);
    }
}

/// The cdylib cargo built next to this test loads through the host's loader
/// (ABI layout and API version checked) and describes itself as expected.
#[test]
fn the_built_library_loads_as_a_plugin() {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!("{}cultivate_plugin_finch{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let path = [deps.join(&file), deps.parent().unwrap().join(&file)].into_iter().find(|p| p.exists());
    let path = path.unwrap_or_else(|| panic!("{file} not built next to {}", deps.display()));
    let plugin = cultivate_plugin_api::LoadedPlugin::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(plugin.manifest().name, "finch");
    assert!(plugin.manifest().implements("stack.ps"));
}
