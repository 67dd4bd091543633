//! A Mac as the build machine: when this machine has no Docker engine but
//! has [Finch](https://github.com/runfinch/finch), the images are built with
//! `finch build` and exported with `finch save` (requirement 9.6-9.8).
//!
//! Finch is found on `PATH` or at its usual install paths (the same list the
//! finch runtime plugin uses on targets). Its VM must be running: cultivate
//! does not start a VM on the machine it runs on, it says how.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::error::{Code, UserError};
use crate::pipeline::build::{build_args, BuiltImage};

/// Where Finch is installed besides `PATH` (kept equal to the finch plugin's list).
pub const INSTALL_PATHS: &[&str] =
    &["/usr/local/bin/finch", "/opt/finch/bin/finch", "/opt/homebrew/bin/finch", "/Applications/Finch/bin/finch"];

/// The finch binary on this machine, if any.
pub fn locate() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("finch")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain(INSTALL_PATHS.iter().map(PathBuf::from)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Finch on this machine, its VM checked to be running.
#[derive(Debug, Clone)]
pub struct LocalFinch {
    /// The binary.
    pub bin: PathBuf,
}

impl LocalFinch {
    /// Finch here, when there is one; an error that says what to do when its
    /// VM is not running.
    pub fn find() -> Result<Option<LocalFinch>> {
        let Some(bin) = locate() else { return Ok(None) };
        let out = Command::new(&bin)
            .args(["vm", "status"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} vm status", bin.display()))?;
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            .to_ascii_lowercase();
        if text.contains("running") {
            return Ok(Some(LocalFinch { bin }));
        }
        let fix = if text.contains("nonexistent") { "finch vm init" } else { "finch vm start" };
        bail!(UserError::new(
            Code::Failed,
            format!(
                "this machine has no Docker engine and Finch's VM is not running ({}: {})",
                bin.display(),
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        )
        .hint(format!("run `{fix}`, then deploy again (or start Docker)")))
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.stdin(Stdio::null());
        c
    }

    /// `finch build` of one service from the build context tar; the image's
    /// ID, layers and size from `finch image inspect`.
    pub fn build(
        &self,
        context: &[u8],
        service: &str,
        reference: &str,
        base_image: &str,
        app: &crate::settings::AppSettings,
        step: &mut dyn FnMut(&str),
    ) -> Result<BuiltImage> {
        let dir = tempfile::Builder::new().prefix("cultivate-build-").tempdir().context("a build directory")?;
        tar::Archive::new(context).unpack(dir.path()).context("unpacking the build context")?;
        let argv = build_argv(dir.path(), service, reference, &build_args(base_image, app));
        let out = self.command().args(&argv).output().with_context(|| format!("running {}", self.bin.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // finch build's output arrives when it is done (not streamed)
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            tracing::debug!(target: "cultivate::build", "{service}: {line}");
            step(line);
        }
        if !out.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(UserError::new(
                Code::Failed,
                format!("building the {service} image with `finch build` failed ({})", out.status)
            )
            .hint(format!("last build output:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))));
        }
        self.inspect(service, reference)
    }

    fn inspect(&self, service: &str, reference: &str) -> Result<BuiltImage> {
        let out = self
            .command()
            .args(["image", "inspect", "--format", "{{json .}}", reference])
            .output()
            .with_context(|| format!("running {} image inspect", self.bin.display()))?;
        if !out.status.success() {
            bail!("`finch image inspect {reference}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        parse_inspect(service, reference, &String::from_utf8_lossy(&out.stdout))
    }

    /// `finch save` of one image into an unnamed temporary file, rewound.
    pub fn save(&self, reference: &str) -> Result<std::fs::File> {
        let mut file = tempfile::tempfile().context("creating a temporary file for the image archive")?;
        let out = self
            .command()
            .args(["save", reference])
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {} save", self.bin.display()))?;
        if !out.status.success() {
            bail!("`finch save {reference}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        file.flush()?;
        file.rewind()?;
        Ok(file)
    }

    /// `finch rmi` of this machine's tags (best effort).
    pub fn untag(&self, refs: &[String]) {
        if !refs.is_empty() {
            let _ = self.command().arg("rmi").args(refs).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// `build -t REF -f DIR/docker/Dockerfile.SERVICE --build-arg K=V… DIR`.
pub fn build_argv(dir: &Path, service: &str, reference: &str, args: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = vec![
        "build".to_string(),
        "-t".into(),
        reference.to_string(),
        "-f".into(),
        dir.join(format!("docker/Dockerfile.{service}")).display().to_string(),
    ];
    for (k, v) in args {
        argv.push("--build-arg".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(dir.display().to_string());
    argv
}

/// The image from `finch image inspect --format '{{json .}}'` (Docker's and
/// nerdctl's shape: `Id`, `RootFS.Layers`, `Size`; an array of one is accepted).
pub fn parse_inspect(service: &str, reference: &str, text: &str) -> Result<BuiltImage> {
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("`finch image inspect {reference}` did not print JSON: {}", text.trim()))?;
    let v = match v {
        serde_json::Value::Array(mut a) if !a.is_empty() => a.remove(0),
        v => v,
    };
    let id = v["Id"].as_str().filter(|s| !s.is_empty()).with_context(|| format!("no Id for {reference}: {v}"))?;
    let layers = v["RootFS"]["Layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Ok(BuiltImage {
        service: service.to_string(),
        reference: reference.to_string(),
        id: id.to_string(),
        layers,
        size: v["Size"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_command_names_the_dockerfile_and_the_args() {
        let args = BTreeMap::from([
            ("APP_DIR".to_string(), "app".to_string()),
            ("BASE_IMAGE".to_string(), "base:1".to_string()),
        ]);
        let argv = build_argv(Path::new("/tmp/ctx"), "backend", "p-backend:v1", &args);
        assert_eq!(
            argv,
            [
                "build",
                "-t",
                "p-backend:v1",
                "-f",
                "/tmp/ctx/docker/Dockerfile.backend",
                "--build-arg",
                "APP_DIR=app",
                "--build-arg",
                "BASE_IMAGE=base:1",
                "/tmp/ctx"
            ]
        );
    }

    #[test]
    fn inspect_output_is_read_in_both_shapes() {
        let one = r#"{"Id":"sha256:abc","RootFS":{"Type":"layers","Layers":["sha256:l1","sha256:l2"]},"Size":42}"#;
        let img = parse_inspect("backend", "p-backend:v1", one).unwrap();
        assert_eq!(img.id, "sha256:abc");
        assert_eq!(img.layers, ["sha256:l1", "sha256:l2"]);
        assert_eq!(img.size, 42);
        let arr = format!("[{one}]");
        assert_eq!(parse_inspect("backend", "p-backend:v1", &arr).unwrap(), img);
        let err = parse_inspect("backend", "p-backend:v1", "no such image").unwrap_err();
        assert!(format!("{err:#}").contains("did not print JSON"), "{err:#}");
        assert!(parse_inspect("backend", "r", r#"{"Id":""}"#).is_err());
    }
}
