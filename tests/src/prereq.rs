//! Prerequisites of end-to-end tests.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests crate lives inside the workspace").to_path_buf()
}

/// True when running under CI (`CI` set to anything but empty/`false`/`0`).
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Check a prerequisite. Returns `true` when it is met. When it is not met,
/// panics under CI (a missing prerequisite must fail the run) and otherwise
/// prints why the test is skipped and returns `false`.
pub fn require(met: bool, what: &str) -> bool {
    if met {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI: {what}");
    }
    eprintln!("SKIPPED (not under CI): prerequisite missing: {what}");
    false
}

/// True when `program args...` runs and exits 0.
pub fn command_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True when this machine's Docker engine answers.
pub fn docker_available() -> bool {
    command_ok("docker", &["info"])
}
