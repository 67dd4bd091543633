//! A Podman runtime plugin for cultivate: images and the application stack
//! through `podman` and a compose tool that drives it (`podman compose` or
//! `podman-compose`). Capabilities: `images` and `stack`.
//!
//! Built out of tree, against `cultivate-plugin-api` alone (see
//! `docs/plugins.md`, "A plugin from scratch: Podman"). Stateless: every
//! operation finds the compose command on the target again (one cheap
//! command), so one instance may serve several targets.
//!
//! Where Podman differs from Docker:
//! - Without systemd, Podman 4.x never runs a container's health check on its
//!   own (its timers are systemd units): `stack.ps` runs `podman healthcheck
//!   run` for each running container that has one, then reads the status.
//! - Loaded and tagged images live under `localhost/`: references are shown
//!   without that prefix, as the host names them.
//! - podman-compose 1.0 writes a constant configuration hash and has no
//!   `--scale`, so this plugin lacks the switch operations
//!   (`ops::SWITCH_OPERATIONS`): the host falls back to a whole-stack `up`
//!   (with a forced recreate: podman-compose's `up` never recreates a
//!   changed container on its own).

use cultivate_plugin_api::ops::{self, Operation};
use cultivate_plugin_api::{Capability, ErrorKind, Host, Manifest, Plugin, PluginError, PluginKind, Probe, TargetInfo};

pub mod images;
pub mod stack;

pub use stack::Compose;

/// The plugin's name (`--runtime podman`).
pub const NAME: &str = "podman";

/// Manifest priority and probe score: below docker's and docker-compose's
/// (50), so Docker wins where both are installed unless `--runtime podman`;
/// alone on a host, any available runtime wins.
pub const PRIORITY: i32 = 40;

/// The oldest Podman this plugin drives (`podman healthcheck run`,
/// `image inspect` with `RootFS.Layers`, `ps --filter label=`).
pub const MIN_PODMAN: (u64, u64) = (4, 0);

const OPERATIONS: &[&str] = &[
    ops::ImageInspect::NAME,
    ops::ImageList::NAME,
    ops::ImageLoadCommand::NAME,
    ops::ImageTag::NAME,
    ops::ImageRemove::NAME,
    ops::StackUp::NAME,
    ops::StackDown::NAME,
    ops::StackPs::NAME,
    ops::StackLogs::NAME,
    ops::StackConfig::NAME,
    ops::StackExec::NAME,
    ops::ContainerLogsCommand::NAME,
    ops::ContainerExecCommand::NAME,
    ops::StackStop::NAME,
    ops::StackStart::NAME,
    ops::InstallHelp::NAME,
];

/// The Podman plugin. Stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct PodmanPlugin;

impl Plugin for PodmanPlugin {
    fn manifest(&self) -> Manifest {
        let mut m = cultivate_plugin_api::manifest(NAME, env!("CARGO_PKG_VERSION"), &[PluginKind::Runtime]);
        m.description = "Images and the stack on Podman, through `podman compose` or `podman-compose`".to_string();
        m.capabilities = vec![Capability::Images, Capability::Stack];
        m.priority = PRIORITY;
        m.target_os = vec!["linux".to_string()];
        m.operations = OPERATIONS.iter().map(|s| s.to_string()).collect();
        m
    }

    fn probe(&self, host: &Host, _target: &TargetInfo) -> Result<Probe, PluginError> {
        probe(host)
    }

    fn call(&self, host: &Host, op: &str, payload: &str) -> Result<String, PluginError> {
        let bin = podman();
        match op {
            ops::ImageInspect::NAME => {
                ops::handle::<ops::ImageInspect>(payload, |r| images::inspect(host, &bin, &r.refs))
            }
            ops::ImageList::NAME => ops::handle::<ops::ImageList>(payload, |r| images::list(host, &bin, &r.prefix)),
            ops::ImageLoadCommand::NAME => {
                ops::handle::<ops::ImageLoadCommand>(payload, |_| Ok(images::load_command(&bin)))
            }
            ops::ImageTag::NAME => ops::handle::<ops::ImageTag>(payload, |r| {
                images::tag(host, &bin, &r.source, &r.target).map(|()| ops::Empty {})
            }),
            ops::ImageRemove::NAME => ops::handle::<ops::ImageRemove>(payload, |r| images::remove(host, &bin, &r.refs)),
            ops::StackUp::NAME => ops::handle::<ops::StackUp>(payload, |r| detect(host)?.up(host, &r)),
            ops::StackDown::NAME => ops::handle::<ops::StackDown>(payload, |r| detect(host)?.down(host, &r)),
            ops::StackPs::NAME => ops::handle::<ops::StackPs>(payload, |r| stack::ps(host, &bin, &r)),
            ops::StackLogs::NAME => ops::handle::<ops::StackLogs>(payload, |r| stack::logs(host, &bin, &r)),
            ops::StackConfig::NAME => ops::handle::<ops::StackConfig>(payload, |r| detect(host)?.config(host, &r)),
            ops::StackExec::NAME => ops::handle::<ops::StackExec>(payload, |r| stack::exec(host, &bin, &r)),
            ops::ContainerLogsCommand::NAME => {
                ops::handle::<ops::ContainerLogsCommand>(payload, |r| stack::container_logs_command(&bin, &r))
            }
            ops::ContainerExecCommand::NAME => {
                ops::handle::<ops::ContainerExecCommand>(payload, |r| stack::container_exec_command(&bin, &r))
            }
            ops::StackStop::NAME => ops::handle::<ops::StackStop>(payload, |r| stack::stop(host, &bin, &r)),
            ops::StackStart::NAME => ops::handle::<ops::StackStart>(payload, |r| stack::start(host, &bin, &r)),
            ops::InstallHelp::NAME => ops::handle::<ops::InstallHelp>(payload, |_| Ok(install_help())),
            other => Err(PluginError::unsupported(format!("operation {other}"))),
        }
    }
}

fn podman() -> Vec<String> {
    vec!["podman".to_string()]
}

/// How to install Podman and podman-compose by hand.
pub fn install_help() -> ops::InstallInstructions {
    ops::InstallInstructions {
        lines: vec![
            "sudo apt-get update".to_string(),
            "sudo apt-get install -y podman podman-compose    # Debian 12+, Ubuntu 22.04+".to_string(),
            "podman version && podman-compose version".to_string(),
        ],
    }
}

// ---------------------------------------------------------------- probe

/// `major.minor.patch` of a version string (`4.3.1`, `v4.9.0-rc1`).
pub fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim().trim_start_matches('v');
    let core = s.split(|c: char| c == '-' || c == '+' || c.is_whitespace()).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().unwrap_or("0").parse().ok()?;
    let patch = it.next().unwrap_or("0").parse().unwrap_or(0);
    Some((major, minor, patch))
}

/// The client and (remote) server versions in `podman version --format json`.
pub fn parse_podman_version(stdout: &str) -> Option<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
    let client = v.get("Client")?.get("Version")?.as_str()?.to_string();
    let server = v.get("Server").and_then(|s| s.get("Version")).and_then(|s| s.as_str()).map(str::to_string);
    Some((client, server))
}

/// The version in `podman-compose version` (`podman-composer version  1.0.3`,
/// `podman-compose version 1.0.6`) or `podman compose version`: the first
/// version-looking word of a line that names compose.
pub fn parse_compose_version(stdout: &str) -> Option<String> {
    stdout.lines().filter(|l| l.to_ascii_lowercase().contains("compose")).find_map(|line| {
        line.split(|c: char| c.is_whitespace() || c == ',')
            .map(|w| w.trim_start_matches('v'))
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && parse_version(w).is_some())
            .map(str::to_string)
    })
}

/// A compose command found on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCompose {
    /// The argv prefix that answered.
    pub command: Vec<String>,
    /// Its version.
    pub version: String,
}

fn run_quiet(host: &Host, argv: &[&str]) -> Result<Option<cultivate_plugin_api::ExecOutput>, PluginError> {
    match host.run(argv) {
        Ok(out) => Ok(Some(out)),
        // a transport that spawns directly reports a missing program as an I/O error
        Err(e) if e.kind == ErrorKind::Io => Ok(None),
        Err(e) => Err(e),
    }
}

/// `podman compose` (Podman 4.7+, which runs an external compose tool) first,
/// then `podman-compose`.
pub fn find_compose(host: &Host) -> Result<Option<FoundCompose>, PluginError> {
    let candidates: [&[&str]; 2] = [&["podman", "compose"], &["podman-compose"]];
    for prefix in candidates {
        let mut argv = prefix.to_vec();
        argv.push("version");
        if let Some(out) = run_quiet(host, &argv)? {
            if out.success() {
                let text = format!("{}\n{}", out.stdout, out.stderr);
                if let Some(version) = parse_compose_version(&text) {
                    return Ok(Some(FoundCompose { command: prefix.iter().map(|s| s.to_string()).collect(), version }));
                }
            }
        }
    }
    Ok(None)
}

const NO_COMPOSE: &str = "neither `podman compose` nor `podman-compose` answered (install podman-compose)";

/// Probes Podman: found, version at least [`MIN_PODMAN`], rootful or
/// rootless, and a compose command. Details: `rootless`, `compose`,
/// `compose_version`, `storage_driver`, `load_formats`.
pub fn probe(host: &Host) -> Result<Probe, PluginError> {
    let Some(out) = run_quiet(host, &["podman", "version", "--format", "json"])? else {
        return Ok(Probe::unavailable("podman not found on the target"));
    };
    let Some((client, server)) = parse_podman_version(&out.stdout) else {
        if out.status == 127 || out.stderr.contains("not found") {
            return Ok(Probe::unavailable("podman not found on the target (`podman version` could not run)"));
        }
        let why = out.stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output");
        return Ok(Probe::unavailable(format!("`podman version` failed (status {}): {why}", out.status)));
    };
    let version = server.unwrap_or(client);
    match parse_version(&version) {
        Some((major, minor, _)) if (major, minor) >= MIN_PODMAN => {}
        _ => {
            return Ok(Probe {
                version: Some(version.clone()),
                ..Probe::unavailable(format!(
                    "podman {version} is too old: cultivate's podman plugin needs {}.{} or newer",
                    MIN_PODMAN.0, MIN_PODMAN.1
                ))
            })
        }
    }
    let info =
        host.run(&["podman", "info", "--format", "{{json .Host.Security.Rootless}} {{.Store.GraphDriverName}}"])?;
    if !info.success() {
        let why = info.stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output");
        return Ok(Probe {
            version: Some(version),
            ..Probe::unavailable(format!("podman is installed but `podman info` failed: {why}"))
        });
    }
    let mut words = info.stdout.split_whitespace();
    let rootless = words.next() == Some("true");
    let driver = words.next().unwrap_or("unknown").to_string();
    let Some(compose) = find_compose(host)? else {
        return Ok(Probe {
            version: Some(version.clone()),
            ..Probe::unavailable(format!("podman {version} found but no compose tool: {NO_COMPOSE}"))
        }
        .with_detail("rootless", rootless.to_string()));
    };
    // `flavour` is what the host shows beside the version ("compose …").
    let flavour = format!("{} {}", compose.command.join(" "), compose.version);
    Ok(Probe::available(version, PRIORITY)
        .with_detail("rootless", rootless.to_string())
        .with_detail("mode", if rootless { "rootless" } else { "rootful" })
        .with_detail("storage_driver", driver)
        .with_detail("compose", compose.command.join(" "))
        .with_detail("compose_version", compose.version)
        .with_detail("flavour", flavour)
        // `podman load` takes an OCI archive and looks each layer up in its
        // store by digest before reading it: the host may leave out the
        // layers the target has (docs/plugins.md, "Layers").
        .with_detail(ops::LOAD_FORMATS_DETAIL, images::LOAD_FORMATS))
}

/// The compose command for a stack operation, found now on the target.
pub fn detect(host: &Host) -> Result<Compose, PluginError> {
    let found = find_compose(host)?.ok_or_else(|| {
        PluginError::new(ErrorKind::NotAvailable, NO_COMPOSE).with_hint(install_help().lines.join("\n"))
    })?;
    host.debug(&format!("using {} {}", found.command.join(" "), found.version));
    Ok(Compose { command: found.command, engine: podman() })
}

#[cfg(test)]
mod tests;

cultivate_plugin_api::export_plugin!(PodmanPlugin);
