//! What the plugin tests share: the target directory and a build of the
//! libraries they load.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `target/debug`: where `cultivate` and the libraries are built.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cultivate")).parent().unwrap().to_path_buf()
}

/// Builds `packages` once per test binary; returns [`target_dir`].
pub fn build_once(packages: &[&str]) -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet"])
            .args(packages.iter().flat_map(|p| ["-p", p]))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the libraries failed");
        target_dir()
    })
}
