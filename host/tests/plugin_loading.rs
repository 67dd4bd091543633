//! The plugin loader against real libraries the test builds: an incompatible
//! plugin-API version, a different ABI layout, a library that is not a
//! plugin, a plugin that panics, an empty plugin path, and shadowing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

/// Builds the fixture libraries and the local transport once.
fn built() -> &'static PathBuf {
    common::build_once(&[
        "cultivate-fixture-bad-api",
        "cultivate-fixture-bad-layout",
        "cultivate-fixture-not-a-plugin",
        "cultivate-fixture-panicky",
        "cultivate-plugin-local",
        "cultivate-plugin-docker",
        "cultivate-plugin-compose",
        "cultivate-plugin-finch",
    ])
}

/// A plugin directory holding the given libraries, each under a plugin file name.
fn plugin_dir(libs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (built_name, plugin_name) in libs {
        let from = built().join(format!("lib{built_name}.so"));
        std::fs::copy(&from, dir.path().join(format!("libcultivate_plugin_{plugin_name}.so")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    dir
}

fn cultivate(path: &[&Path], args: &[&str]) -> Output {
    let joined = std::env::join_paths(path).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cultivate"))
        .args(args)
        .env("CULTIVATE_PLUGIN_PATH", joined)
        .env("CULTIVATE_NO_DEFAULT_PLUGINS", "1")
        .env("CULTIVATE_LOG_DIR", std::env::temp_dir().join("cultivate-test-logs"))
        .env_remove("CULTIVATE_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn list_json(path: &[&Path]) -> serde_json::Value {
    let out = cultivate(path, &["plugins", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn failure_for<'a>(v: &'a serde_json::Value, file: &str) -> &'a str {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(file))
        .unwrap_or_else(|| panic!("no failure recorded for {file}: {v}"))["reason"]
        .as_str()
        .unwrap()
}

#[test]
fn incompatible_api_version_is_refused_in_one_line_and_others_load() {
    let dir = plugin_dir(&[("cultivate_fixture_bad_api", "bad_api"), ("cultivate_plugin_local", "local")]);
    let v = list_json(&[dir.path()]);
    let reason = failure_for(&v, "libcultivate_plugin_bad_api.so");
    assert!(reason.contains("2.0.0") && reason.contains("1.0.0"), "{reason}");
    assert!(!reason.contains('\n'), "reason must be one line: {reason}");
    let names: Vec<_> = v["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["local"]);
}

#[test]
fn different_abi_layout_is_refused_in_one_line() {
    let dir = plugin_dir(&[("cultivate_fixture_bad_layout", "bad_layout"), ("cultivate_plugin_local", "local")]);
    let v = list_json(&[dir.path()]);
    let reason = failure_for(&v, "libcultivate_plugin_bad_layout.so");
    assert!(reason.contains("layout"), "{reason}");
    assert!(!reason.contains('\n') && reason.len() < 300, "reason must be one short line: {reason}");
}

#[test]
fn library_that_is_not_a_plugin_is_refused() {
    let dir = plugin_dir(&[("cultivate_fixture_not_a_plugin", "bogus"), ("cultivate_plugin_local", "local")]);
    let v = list_json(&[dir.path()]);
    assert_eq!(
        failure_for(&v, "libcultivate_plugin_bogus.so"),
        "not a cultivate plugin (no plugin root module exported)"
    );
    // The human table names it on one line too.
    let out = cultivate(&[dir.path()], &["plugins", "list"]);
    let shown = text(&out);
    assert!(
        shown.lines().any(|l| l.contains("libcultivate_plugin_bogus.so") && l.contains("not a cultivate plugin")),
        "{shown}"
    );
}

#[test]
fn panicking_plugin_returns_an_error_and_the_host_carries_on() {
    let dir = plugin_dir(&[("cultivate_fixture_panicky", "panicky"), ("cultivate_plugin_local", "local")]);
    let out = cultivate(&[dir.path()], &["plugins", "list", "--target", "local", "--json"]);
    assert!(out.status.success(), "the host must survive the panic: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let panicky = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "panicky").unwrap();
    assert_eq!(panicky["probe"]["available"], false);
    let reason = panicky["probe"]["reason"].as_str().unwrap();
    assert!(reason.contains("panicked") && reason.contains("exploded on purpose"), "{reason}");
    assert_eq!(v["target"]["transport"], "local");
}

#[test]
fn empty_plugin_path_gives_a_helpful_message() {
    let empty = tempfile::tempdir().unwrap();
    let out = cultivate(&[empty.path()], &["plugins", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out);
    assert!(shown.contains("no cultivate plugins found"), "{shown}");
    assert!(shown.contains(&empty.path().display().to_string()), "{shown}");
    assert!(shown.contains("hint:") && shown.contains("CULTIVATE_PLUGIN_PATH"), "{shown}");
}

#[test]
fn first_plugin_of_a_name_wins_and_the_duplicate_is_reported() {
    let first = plugin_dir(&[("cultivate_plugin_local", "local")]);
    let second = plugin_dir(&[("cultivate_plugin_local", "local_copy")]);
    let v = list_json(&[first.path(), second.path()]);
    let plugins = v["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1);
    assert!(plugins[0]["path"].as_str().unwrap().starts_with(&first.path().display().to_string()));
    let shadowed = &v["shadowed"][0];
    assert_eq!(shadowed["name"], "local");
    assert!(shadowed["path"].as_str().unwrap().ends_with("libcultivate_plugin_local_copy.so"));
}

#[test]
fn unknown_transport_override_lists_the_installed_ones() {
    let dir = plugin_dir(&[("cultivate_plugin_local", "local")]);
    let out = cultivate(&[dir.path()], &["plugins", "list", "--target", "local", "--transport", "carrier-pigeon"]);
    assert_eq!(out.status.code(), Some(2));
    let shown = text(&out);
    assert!(shown.contains("--transport carrier-pigeon") && shown.contains("installed transports: local"), "{shown}");
}

/// The first-party plugins in a directory of their own, when this machine's
/// Docker engine answers; `None` (skip) without one, except under CI, where
/// that fails.
fn first_party_plugins_with_an_engine() -> Option<tempfile::TempDir> {
    if Command::new("docker").arg("info").output().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(std::env::var_os("CI").is_none(), "CI needs this machine's Docker engine");
        eprintln!("SKIPPED: no Docker engine here");
        return None;
    }
    Some(plugin_dir(&[
        ("cultivate_plugin_local", "local"),
        ("cultivate_plugin_docker", "docker"),
        ("cultivate_plugin_compose", "compose"),
        ("cultivate_plugin_finch", "finch"),
    ]))
}

#[test]
fn runtime_override_unavailable_on_the_target_names_the_available_ones() {
    let Some(dir) = first_party_plugins_with_an_engine() else { return };
    let app = tempfile::tempdir().unwrap();
    let config = app.path().join("cultivate.toml");
    // A valid application: the checks before a deploy pass, so the runtime choice is what fails.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/app");
    std::fs::write(&config, format!("target = \"local\"\napp_dir = {:?}\n", example.display().to_string())).unwrap();
    let out = cultivate(&[dir.path()], &["deploy", "--dry-run", "--runtime", "finch", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("--runtime finch is not available on the target"), "{shown}");
    assert!(shown.contains("macOS") || shown.contains("darwin"), "the reason is given: {shown}");
    assert!(
        shown.contains("available on this target: docker-compose, docker")
            || shown.contains("available on this target: docker, docker-compose"),
        "{shown}"
    );
    let out = cultivate(&[dir.path()], &["deploy", "--dry-run", "--runtime", "podman", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--runtime podman: no runtime plugin of that name is installed"), "{}", text(&out));
}

#[test]
fn plugins_list_on_this_machine_finds_its_engine_and_compose() {
    let Some(dir) = first_party_plugins_with_an_engine() else { return };
    let out = cultivate(&[dir.path()], &["plugins", "list", "--target", "local", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe =
        |name: &str| v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["probe"].clone();
    let server = String::from_utf8(
        Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output().unwrap().stdout,
    )
    .unwrap();
    assert_eq!(probe("docker")["available"], true);
    assert_eq!(probe("docker")["version"].as_str().unwrap(), server.trim());
    assert_eq!(probe("docker-compose")["available"], true);
    assert!(["v1", "v2"].contains(&probe("docker-compose")["details"]["flavour"].as_str().unwrap()));
    assert_eq!(probe("finch")["available"], false);
    assert!(
        probe("finch")["reason"].as_str().unwrap().contains("macOS")
            || probe("finch")["reason"].as_str().unwrap().contains("darwin")
    );
}
