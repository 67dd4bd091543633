//! `plugins install`, `plugins remove` and where `plugins list` says each
//! plugin came from, against real libraries the test builds. Each test has
//! its own user data directory (`XDG_DATA_HOME`) and its own "bundled"
//! directory: a hard link of the `cultivate` binary beside the plugins it ships.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::target_dir;

/// Builds the libraries once.
fn built() -> &'static PathBuf {
    common::build_once(&[
        "cultivate-fixture-bad-api",
        "cultivate-fixture-not-a-plugin",
        "cultivate-plugin-local",
        "cultivate-plugin-compose",
    ])
}

/// One test's world: a home, a user data directory, and a bundled directory
/// holding the `cultivate` binary and the local transport.
struct World {
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir_in(target_dir()).unwrap();
        let bundled = root.path().join("bin");
        std::fs::create_dir_all(&bundled).unwrap();
        let exe = bundled.join("cultivate");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_cultivate"), &exe).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_cultivate"), &exe).unwrap();
        }
        std::fs::copy(built().join("libcultivate_plugin_local.so"), bundled.join("libcultivate_plugin_local.so"))
            .unwrap();
        std::fs::create_dir_all(root.path().join("staging")).unwrap();
        World { root }
    }

    fn user_dir(&self) -> PathBuf {
        self.root.path().join("data/cultivate/plugins")
    }

    /// A built library copied into the staging directory under `file`.
    fn stage(&self, built_name: &str, file: &str) -> PathBuf {
        let to = self.root.path().join("staging").join(file);
        std::fs::copy(built().join(format!("lib{built_name}.so")), &to).unwrap();
        to
    }

    fn run(&self, plugin_path: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.root.path().join("bin/cultivate"));
        cmd.args(args)
            .env("HOME", self.root.path())
            .env("XDG_DATA_HOME", self.root.path().join("data"))
            .env("CULTIVATE_LOG_DIR", self.root.path().join("logs"))
            .env_remove("CULTIVATE_PLUGIN_PATH")
            .env_remove("CULTIVATE_NO_DEFAULT_PLUGINS")
            .env_remove("CULTIVATE_CONFIG")
            .current_dir(self.root.path());
        if let Some(p) = plugin_path {
            cmd.env("CULTIVATE_PLUGIN_PATH", p);
        }
        cmd.output().unwrap()
    }

    fn cultivate(&self, args: &[&str]) -> Output {
        self.run(None, args)
    }

    /// `name → origin` from `plugins list --json`.
    fn origins(&self, plugin_path: Option<&Path>) -> Vec<(String, String)> {
        let out = self.run(plugin_path, &["plugins", "list", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut o: Vec<(String, String)> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["origin"].as_str().unwrap().to_string()))
            .collect();
        o.sort();
        o
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn install_copies_a_checked_plugin_and_list_says_where_each_came_from() {
    let w = World::new();
    assert_eq!(w.origins(None), pairs(&[("local", "bundled")]));
    let src = w.stage("cultivate_plugin_compose", "libcultivate_plugin_compose.so");

    let out = w.cultivate(&["plugins", "install", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let installed = w.user_dir().join("libcultivate_plugin_compose.so");
    assert!(text(&out).contains("installed plugin docker-compose"), "{}", text(&out));
    assert!(text(&out).contains(&installed.display().to_string()), "{}", text(&out));
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&src).unwrap());
    assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
    let leftovers: Vec<_> = std::fs::read_dir(w.user_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind: {leftovers:?}");
    assert_eq!(w.origins(None), pairs(&[("docker-compose", "installed"), ("local", "bundled")]));

    // The human table has a FROM column.
    let out = w.cultivate(&["plugins", "list"]);
    let shown = text(&out);
    assert!(shown.lines().next().unwrap().contains("FROM"), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("docker-compose") && l.contains("installed")), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("local") && l.contains("bundled")), "{shown}");

    // Same name again: refused without --force, the installed file untouched.
    let before = std::fs::metadata(&installed).unwrap().modified().unwrap();
    let out = w.cultivate(&["plugins", "install", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("a plugin named docker-compose is already installed"), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::metadata(&installed).unwrap().modified().unwrap(), before);

    // Under another file name, still the same plugin name: refused too; with --force the old file goes.
    let renamed = w.stage("cultivate_plugin_compose", "libcultivate_plugin_compose2.so");
    let out = w.cultivate(&["plugins", "install", renamed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = w.cultivate(&["plugins", "install", "--force", renamed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!installed.exists(), "the replaced library is removed");
    assert!(w.user_dir().join("libcultivate_plugin_compose2.so").exists());
    assert_eq!(w.origins(None), pairs(&[("docker-compose", "installed"), ("local", "bundled")]));

    // Remove: by name; bundled plugins are not ours to remove; unknown names are named.
    let out = w.cultivate(&["plugins", "remove", "local"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("was not installed with `plugins install` (bundled)"), "{}", text(&out));
    let out = w.cultivate(&["plugins", "remove", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no plugin named nope is installed"), "{}", text(&out));
    assert!(text(&out).contains("installed there: docker-compose"), "{}", text(&out));
    let out = w.cultivate(&["plugins", "remove", "docker-compose"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed plugin docker-compose"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(w.user_dir()).unwrap().count(), 0);
    assert_eq!(w.origins(None), pairs(&[("local", "bundled")]));
}

#[test]
fn install_refuses_what_would_not_load_in_one_line_and_copies_nothing() {
    let w = World::new();
    let bad_api = w.stage("cultivate_fixture_bad_api", "libcultivate_plugin_bad_api.so");
    let out = w.cultivate(&["plugins", "install", bad_api.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    let line = shown.lines().find(|l| l.contains("cannot install")).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains("2.0.0") && line.contains("1.0.0"), "{line}");

    let not_plugin = w.stage("cultivate_fixture_not_a_plugin", "libcultivate_plugin_bogus.so");
    let out = w.cultivate(&["plugins", "install", not_plugin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not a cultivate plugin (no plugin root module exported)"), "{}", text(&out));

    let odd_name = w.stage("cultivate_plugin_compose", "compose.so");
    let out = w.cultivate(&["plugins", "install", odd_name.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("libcultivate_plugin_NAME.so"), "{}", text(&out));

    let out = w.cultivate(&["plugins", "install", "/nonexistent/libcultivate_plugin_x.so"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/libcultivate_plugin_x.so"), "{}", text(&out));

    assert!(!w.user_dir().exists() || std::fs::read_dir(w.user_dir()).unwrap().count() == 0);
}

#[test]
fn plugin_path_wins_over_an_installed_plugin_and_install_says_so() {
    let w = World::new();
    let path_dir = w.root.path().join("path");
    std::fs::create_dir_all(&path_dir).unwrap();
    std::fs::copy(built().join("libcultivate_plugin_compose.so"), path_dir.join("libcultivate_plugin_compose.so"))
        .unwrap();
    assert_eq!(w.origins(Some(&path_dir)), pairs(&[("docker-compose", "plugin-path"), ("local", "bundled")]));
    let src = w.stage("cultivate_plugin_compose", "libcultivate_plugin_compose.so");
    let out = w.run(Some(&path_dir), &["plugins", "install", "--force", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CULTIVATE_PLUGIN_PATH is searched first"), "{}", text(&out));
    // The one in CULTIVATE_PLUGIN_PATH is not touched by --force: only the user's directory is ours.
    assert!(path_dir.join("libcultivate_plugin_compose.so").exists());
    // Removing takes the installed copy (shadowed) and leaves the other.
    let out = w.run(Some(&path_dir), &["plugins", "remove", "docker-compose"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!w.user_dir().join("libcultivate_plugin_compose.so").exists());
    assert!(path_dir.join("libcultivate_plugin_compose.so").exists());
}
