//! The `docker` runtime plugin: the image store of a Docker engine on the target.
//!
//! It builds `docker …` command lines and parses their output; the host runs
//! them through the selected transport (ssh or local). Capability: `images`.
//! See `docs/runtimes.md`.

use std::time::{Duration, Instant};

use cultivate_plugin_api::ops::{self, InstallInstructions, InstallReport, Operation};
use cultivate_plugin_api::{
    Capability, ErrorKind, ExecRequest, Host, Manifest, Plugin, PluginError, PluginKind, Probe, TargetInfo,
};
use serde::Deserialize;

pub mod images;
pub mod version;

/// The oldest Docker engine cultivate works with (P19).
pub const MIN_DOCKER: &str = "20.10.0";

/// The plugin's name in its manifest.
pub const NAME: &str = "docker";

/// Manifest priority.
pub const PRIORITY: i32 = 50;

/// How long `deps.install` waits for a freshly started daemon to answer.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(60);

const OPERATIONS: &[&str] = &[
    ops::ImageInspect::NAME,
    ops::ImageList::NAME,
    ops::ImageLoadCommand::NAME,
    ops::ImageTag::NAME,
    ops::ImageRemove::NAME,
    ops::ImageBuildCommand::NAME,
    ops::Install::NAME,
    ops::InstallHelp::NAME,
];

/// The docker runtime plugin. Stateless: every call works from what it is given.
#[derive(Debug, Default, Clone, Copy)]
pub struct DockerPlugin;

fn docker() -> Vec<String> {
    vec!["docker".to_string()]
}

impl Plugin for DockerPlugin {
    fn manifest(&self) -> Manifest {
        let mut m = cultivate_plugin_api::manifest(NAME, env!("CARGO_PKG_VERSION"), &[PluginKind::Runtime]);
        m.description = "Image store on a Docker engine (inspect, load, tag, remove, build)".to_string();
        m.capabilities = vec![Capability::Images];
        m.priority = PRIORITY;
        m.target_os = vec!["linux".to_string()];
        m.operations = OPERATIONS.iter().map(|s| s.to_string()).collect();
        m.probe_commands = vec![version_request(), info_request()];
        m
    }

    fn probe(&self, host: &Host, _target: &TargetInfo) -> Result<Probe, PluginError> {
        probe_docker(host)
    }

    fn call(&self, host: &Host, op: &str, payload: &str) -> Result<String, PluginError> {
        let bin = docker();
        match op {
            ops::ImageInspect::NAME => {
                ops::handle::<ops::ImageInspect>(payload, |r| images::inspect(host, &bin, &r.refs))
            }
            ops::ImageList::NAME => {
                ops::handle::<ops::ImageList>(payload, |r| images::list_one_trip(host, &bin, &r.prefix, &r.ids))
            }
            ops::ImageLoadCommand::NAME => ops::handle::<ops::ImageLoadCommand>(payload, |r| {
                images::load_command_for(&bin, r.compression.as_deref(), r.verify.as_deref())
            }),
            ops::ImageTag::NAME => ops::handle::<ops::ImageTag>(payload, |r| {
                images::tag(host, &bin, &r.source, &r.target).map(|()| ops::Empty {})
            }),
            ops::ImageRemove::NAME => ops::handle::<ops::ImageRemove>(payload, |r| images::remove(host, &bin, &r.refs)),
            ops::ImageBuildCommand::NAME => {
                ops::handle::<ops::ImageBuildCommand>(payload, |r| images::build_command(&bin, &r))
            }
            ops::Install::NAME => ops::handle::<ops::Install>(payload, |r| install(host, &r.target)),
            ops::InstallHelp::NAME => ops::handle::<ops::InstallHelp>(payload, |r| Ok(install_help(&r.target))),
            other => Err(PluginError::unsupported(format!("operation {other}"))),
        }
    }
}

// ---------------------------------------------------------------- probe

/// What `docker version --format '{{json .}}'` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerVersion {
    /// Client version.
    pub client: Option<String>,
    /// Client API version.
    pub client_api: Option<String>,
    /// Server (engine) version; `None` when the daemon did not answer.
    pub server: Option<String>,
    /// Server API version.
    pub server_api: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVersion {
    #[serde(rename = "Client")]
    client: Option<RawSide>,
    #[serde(rename = "Server")]
    server: Option<RawSide>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSide {
    #[serde(rename = "Version")]
    version: Option<String>,
    #[serde(rename = "ApiVersion")]
    api_version: Option<String>,
}

/// Parses `docker version --format '{{json .}}'`. `None` when it is not that JSON.
pub fn parse_version_json(stdout: &str) -> Option<DockerVersion> {
    let line = stdout.lines().map(str::trim).find(|l| l.starts_with('{'))?;
    let raw: RawVersion = serde_json::from_str(line).ok()?;
    let nonempty = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
    let (client, client_api) = raw.client.map(|c| (nonempty(c.version), nonempty(c.api_version))).unwrap_or_default();
    let (server, server_api) = raw.server.map(|s| (nonempty(s.version), nonempty(s.api_version))).unwrap_or_default();
    if client.is_none() && server.is_none() {
        return None;
    }
    Some(DockerVersion { client, client_api, server, server_api })
}

/// What `docker info --format '{{json .}}'` says about storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageInfo {
    /// Storage driver (`overlay2`, `fuse-overlayfs`, `overlayfs` …).
    pub driver: String,
    /// `containerd` with the containerd image store (snapshotter), else `classic`.
    pub image_store: &'static str,
}

/// Parses `docker info --format '{{json .}}'`. `None` when it is not that JSON.
pub fn parse_info(stdout: &str) -> Option<StorageInfo> {
    let line = stdout.lines().map(str::trim).find(|l| l.starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let driver = obj.get("Driver").and_then(|d| d.as_str()).unwrap_or("").to_string();
    let containerd = match obj.get("DriverStatus") {
        Some(serde_json::Value::Array(pairs)) => pairs.iter().any(|p| match p {
            serde_json::Value::Array(kv) => {
                kv.first().and_then(|k| k.as_str()) == Some("driver-type")
                    && kv.get(1).and_then(|v| v.as_str()).is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
            }
            _ => false,
        }),
        _ => false,
    };
    Some(StorageInfo { driver, image_store: if containerd { "containerd" } else { "classic" } })
}

fn first_line(s: &str) -> &str {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}

/// Is this the output of a shell or exec that could not find the program?
fn is_command_missing(status: i32, stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    status == 127
        || s.contains("command not found")
        || (s.contains("docker") && s.contains("no such file or directory"))
}

/// `docker version --format '{{json .}}'`, as the probe runs it (stable).
pub fn version_request() -> ExecRequest {
    ExecRequest::new(["docker", "version", "--format", "{{json .}}"]).stable_output()
}

/// `docker info` as the probe runs it ([`images::info_command`], stable).
pub fn info_request() -> ExecRequest {
    images::info_command(&docker()).stable_output()
}

/// Probes the Docker engine: available only when the daemon answers with a
/// version of at least [`MIN_DOCKER`].
pub fn probe_docker(host: &Host) -> Result<Probe, PluginError> {
    // Both queries are marked stable, and listed in the manifest's
    // `probe_commands`: a host that batches them asks once per run, with the
    // OS probe, in one command.
    let res = match host.exec(&version_request()) {
        Ok(res) => res,
        Err(e) if e.kind == ErrorKind::Io => {
            return Ok(Probe::unavailable(format!("docker not found on the target: {}", e.message)))
        }
        Err(e) => return Err(e),
    };
    let parsed = parse_version_json(&res.stdout);
    let Some(ver) = parsed else {
        if is_command_missing(res.status, &res.stderr) {
            return Ok(Probe::unavailable("docker not found on the target (`docker version` could not run)"));
        }
        let why = first_line(if res.stderr.trim().is_empty() { &res.stdout } else { &res.stderr });
        return Ok(Probe::unavailable(format!("`docker version` failed (status {}): {why}", res.status)));
    };
    let Some(server) = ver.server.clone() else {
        let why = first_line(&res.stderr);
        let why = if why.is_empty() { "the server did not answer" } else { why };
        let mut p = Probe::unavailable(format!("docker client found but the daemon is not reachable: {why}"))
            .with_detail("daemon", "unreachable");
        if let Some(c) = &ver.client {
            p = p.with_detail("client_version", c.clone());
        }
        return Ok(p);
    };
    let mut probe = match version::require_min("Docker", &server, MIN_DOCKER) {
        Ok(_) => Probe::available(server.clone(), PRIORITY),
        Err(reason) => Probe { version: Some(server.clone()), ..Probe::unavailable(reason) },
    };
    if let Some(c) = ver.client {
        probe = probe.with_detail("client_version", c);
    }
    if let Some(a) = ver.server_api {
        probe = probe.with_detail("api_version", a);
    }
    probe = probe.with_detail("binary", "docker");
    let info = host.exec(&info_request())?;
    probe = probe.with_detail(ops::LOAD_COMPRESSION_DETAIL, load_compression(&server, images::has_zstd(&info.stdout)));
    match parse_info(&info.stdout) {
        Some(s) if info.success() || !s.driver.is_empty() => {
            probe = probe.with_detail("storage_driver", s.driver).with_detail("image_store", s.image_store);
        }
        _ => {
            host.warn(&format!("`docker info` gave no storage details: {}", first_line(&info.stderr)));
            probe = probe.with_detail("image_store", "unknown");
        }
    }
    Ok(probe)
}

/// The probe's `load_compression` detail: gzip always (every `docker load`
/// reads it); zstd when the engine reads it itself (Docker ≥ 23: moby's
/// DecompressStream learnt zstd in 23.0) or the target has `zstd` to pipe it
/// through.
pub fn load_compression(server: &str, has_zstd: bool) -> &'static str {
    let major = server.split('.').next().and_then(|m| m.trim().parse::<u32>().ok()).unwrap_or(0);
    if has_zstd || major >= 23 {
        "gzip,zstd"
    } else {
        "gzip"
    }
}

// ---------------------------------------------------------------- install

fn apt(args: &[&str]) -> Vec<String> {
    ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"].iter().chain(args).map(|s| s.to_string()).collect()
}

fn refuse_non_debian(target: &TargetInfo) -> PluginError {
    let name = target.os_release.get("PRETTY_NAME").cloned().unwrap_or_else(|| target.os.clone());
    PluginError::new(
        ErrorKind::NotAvailable,
        format!("cannot install Docker automatically on {name}: only Debian and Ubuntu are supported"),
    )
    .with_hint(install_help(target).lines.join("\n"))
}

/// Installs Debian's `docker.io`, starts the daemon (systemd when it is PID 1,
/// else `dockerd` in the background), waits for it and verifies it with the probe (P18).
pub fn install(host: &Host, target: &TargetInfo) -> Result<InstallReport, PluginError> {
    install_with_timeout(host, target, DAEMON_START_TIMEOUT)
}

/// [`install`] with a chosen wait for the daemon.
pub fn install_with_timeout(host: &Host, target: &TargetInfo, wait: Duration) -> Result<InstallReport, PluginError> {
    if !target.is_debian_like() {
        return Err(refuse_non_debian(target));
    }
    let mut steps = Vec::new();
    let update = ExecRequest::new(apt(&["update"])).timeout_secs(900);
    host.info("apt-get update");
    host.exec(&update)?.check("apt-get update")?;
    steps.push("apt-get update".to_string());
    let inst = ExecRequest::new(apt(&["install", "-y", "docker.io"])).timeout_secs(1800);
    host.info("apt-get install -y docker.io");
    host.exec(&inst)?.check("apt-get install -y docker.io")?;
    steps.push("apt-get install -y docker.io".to_string());

    let answering = |host: &Host| -> Result<bool, PluginError> {
        Ok(host.run(&["docker", "info", "--format", "{{.ServerVersion}}"])?.success())
    };
    if !answering(host)? {
        let systemd = host.run(&["test", "-d", "/run/systemd/system"])?.success();
        if systemd {
            host.run_ok(&["systemctl", "enable", "--now", "docker"])?;
            steps.push("systemctl enable --now docker".to_string());
        } else {
            host.run_ok(&["sh", "-c", "nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &"])?;
            steps.push("started dockerd in the background (no systemd), log in /var/log/dockerd.log".to_string());
        }
        let start = Instant::now();
        loop {
            if answering(host)? {
                break;
            }
            if start.elapsed() >= wait {
                return Err(PluginError::new(
                    ErrorKind::Timeout,
                    format!("the Docker daemon did not answer within {}s after starting it", wait.as_secs()),
                )
                .with_hint("see /var/log/dockerd.log or `journalctl -u docker` on the target"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    } else {
        steps.push("the Docker daemon is already running".to_string());
    }
    let probe = probe_docker(host)?;
    if !probe.available {
        return Err(PluginError::new(
            ErrorKind::NotAvailable,
            format!(
                "Docker was installed but is not usable: {}",
                probe.reason.unwrap_or_else(|| "unknown reason".to_string())
            ),
        ));
    }
    steps.push(format!("verified: Docker {}", probe.version.clone().unwrap_or_default()));
    Ok(InstallReport { steps, version: probe.version })
}

/// How to install Docker by hand on this target.
pub fn install_help(target: &TargetInfo) -> InstallInstructions {
    let lines = if target.is_debian_like() {
        vec![
            "sudo apt-get update".to_string(),
            "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io".to_string(),
            "sudo systemctl enable --now docker    # without systemd: sudo nohup dockerd >/var/log/dockerd.log 2>&1 &"
                .to_string(),
            "docker version    # the Server section must show 20.10.0 or newer".to_string(),
        ]
    } else {
        vec![
            format!("Install Docker Engine {MIN_DOCKER} or newer for your distribution and start its daemon:"),
            "https://docs.docker.com/engine/install/".to_string(),
        ]
    };
    InstallInstructions { lines }
}

#[cfg(test)]
mod tests;

cultivate_plugin_api::export_plugin!(DockerPlugin);
