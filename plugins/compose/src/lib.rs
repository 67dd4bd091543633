//! The `docker-compose` runtime plugin: the application stack through Compose
//! v2 (`docker compose`) or v1 (`docker-compose`). Capability: `stack`.
//!
//! Flavour: v2 is preferred. The plugin keeps no state between calls (one
//! instance may serve several targets over time), so every stack operation
//! first detects the flavour (`docker compose version --short`, falling back
//! to `docker-compose version --short`). Those queries are marked
//! `stable_output`: the host answers them from the run's first answer, so the
//! target is asked once per run, not once per operation. See `docs/runtimes.md`.

use cultivate_plugin_api::ops::{self, InstallInstructions, InstallReport, Operation};
use cultivate_plugin_api::{
    Capability, ErrorKind, ExecOutput, ExecRequest, Host, Manifest, Plugin, PluginError, PluginKind, Probe, TargetInfo,
};

pub mod stack;
#[path = "../../docker/src/version.rs"]
pub mod version;

pub use stack::{Compose, Dialect};

/// The oldest Compose v1 cultivate works with (the last v1 series; Debian bookworm ships 1.29.2).
pub const MIN_COMPOSE_V1: &str = "1.29.0";
/// The oldest Compose v2.
pub const MIN_COMPOSE_V2: &str = "2.0.0";

/// The plugin's name in its manifest.
pub const NAME: &str = "docker-compose";

/// Manifest priority.
pub const PRIORITY: i32 = 50;

const OPERATIONS: &[&str] = &[
    ops::StackUp::NAME,
    ops::StackDown::NAME,
    ops::StackPs::NAME,
    ops::StackLogs::NAME,
    ops::StackConfig::NAME,
    ops::StackExec::NAME,
    ops::StackServiceHashes::NAME,
    ops::StackStartBeside::NAME,
    ops::StackUpServices::NAME,
    ops::ContainerRemove::NAME,
    ops::ContainerExec::NAME,
    ops::CopyFromImage::NAME,
    ops::ContainerLogsCommand::NAME,
    ops::ContainerExecCommand::NAME,
    ops::StackStop::NAME,
    ops::StackStart::NAME,
    ops::Install::NAME,
    ops::InstallHelp::NAME,
];

/// The compose runtime plugin. Stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct ComposePlugin;

impl Plugin for ComposePlugin {
    fn manifest(&self) -> Manifest {
        let mut m = cultivate_plugin_api::manifest(NAME, env!("CARGO_PKG_VERSION"), &[PluginKind::Runtime]);
        m.description =
            "The application stack through Docker Compose v2 (`docker compose`) or v1 (`docker-compose`)".to_string();
        m.capabilities = vec![Capability::Stack];
        m.priority = PRIORITY;
        m.target_os = vec!["linux".to_string()];
        m.operations = OPERATIONS.iter().map(|s| s.to_string()).collect();
        m.probe_commands = probe_requests();
        m
    }

    fn probe(&self, host: &Host, _target: &TargetInfo) -> Result<Probe, PluginError> {
        probe_compose(host)
    }

    fn call(&self, host: &Host, op: &str, payload: &str) -> Result<String, PluginError> {
        match op {
            ops::StackUp::NAME => ops::handle::<ops::StackUp>(payload, |r| detect(host)?.up(host, &r)),
            ops::StackDown::NAME => ops::handle::<ops::StackDown>(payload, |r| detect(host)?.down(host, &r)),
            ops::StackPs::NAME => ops::handle::<ops::StackPs>(payload, |r| detect(host)?.ps(host, &r)),
            ops::StackLogs::NAME => ops::handle::<ops::StackLogs>(payload, |r| detect(host)?.logs(host, &r)),
            ops::StackConfig::NAME => ops::handle::<ops::StackConfig>(payload, |r| detect(host)?.config(host, &r)),
            ops::StackExec::NAME => ops::handle::<ops::StackExec>(payload, |r| detect(host)?.exec(host, &r)),
            ops::StackServiceHashes::NAME => {
                ops::handle::<ops::StackServiceHashes>(payload, |r| detect(host)?.service_hashes(host, &r))
            }
            ops::StackStartBeside::NAME => {
                ops::handle::<ops::StackStartBeside>(payload, |r| detect(host)?.start_beside(host, &r))
            }
            ops::StackUpServices::NAME => {
                ops::handle::<ops::StackUpServices>(payload, |r| detect(host)?.up_services(host, &r))
            }
            ops::ContainerRemove::NAME => {
                ops::handle::<ops::ContainerRemove>(payload, |r| docker_cli().remove_containers(host, &r))
            }
            ops::ContainerExec::NAME => {
                ops::handle::<ops::ContainerExec>(payload, |r| docker_cli().container_exec(host, &r))
            }
            ops::CopyFromImage::NAME => {
                ops::handle::<ops::CopyFromImage>(payload, |r| docker_cli().copy_from_image(host, &r))
            }
            ops::ContainerLogsCommand::NAME => {
                ops::handle::<ops::ContainerLogsCommand>(payload, |r| docker_cli().container_logs_command(&r))
            }
            ops::ContainerExecCommand::NAME => {
                ops::handle::<ops::ContainerExecCommand>(payload, |r| docker_cli().container_exec_command(&r))
            }
            ops::StackStop::NAME => ops::handle::<ops::StackStop>(payload, |r| detect(host)?.stop(host, &r)),
            ops::StackStart::NAME => ops::handle::<ops::StackStart>(payload, |r| detect(host)?.start(host, &r)),
            ops::Install::NAME => ops::handle::<ops::Install>(payload, |r| install(host, &r.target)),
            ops::InstallHelp::NAME => ops::handle::<ops::InstallHelp>(payload, |r| Ok(install_help(&r.target))),
            other => Err(PluginError::unsupported(format!("operation {other}"))),
        }
    }
}

// ---------------------------------------------------------------- detection

/// The engine CLI alone, for container operations that need no compose
/// (no flavour detection: one command fewer).
fn docker_cli() -> Compose {
    Compose { command: Vec::new(), dialect: Dialect::V2, engine: vec!["docker".to_string()] }
}

/// A Compose found on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// v1 or v2.
    pub dialect: Dialect,
    /// The argv prefix that answered.
    pub command: Vec<String>,
    /// The version as printed (without a leading `v`).
    pub version: String,
}

impl Found {
    /// `v1` or `v2`.
    pub fn flavour(&self) -> &'static str {
        if self.dialect == Dialect::V1 {
            "v1"
        } else {
            "v2"
        }
    }

    /// The minimum for this flavour.
    pub fn minimum(&self) -> &'static str {
        if self.dialect == Dialect::V1 {
            MIN_COMPOSE_V1
        } else {
            MIN_COMPOSE_V2
        }
    }

    /// `Err(reason)` when the version is below the flavour's minimum; the
    /// reason names the version found and both minimums.
    pub fn check(&self) -> Result<(), String> {
        let min = version::parse_lenient(self.minimum()).expect("valid minimum");
        match version::parse_lenient(&self.version) {
            Some(v) if v >= min => Ok(()),
            _ => Err(format!(
                "{} {} is too old: cultivate needs Compose v1 {MIN_COMPOSE_V1} or newer, or Compose v2 {MIN_COMPOSE_V2} or newer",
                self.command.join(" "),
                self.version
            )),
        }
    }

    /// The compose CLI to drive.
    pub fn compose(&self) -> Compose {
        Compose { command: self.command.clone(), dialect: self.dialect, engine: vec!["docker".to_string()] }
    }
}

/// The version in the output of `… version --short` or `… version`: the first
/// version-looking word of the first line that has one.
pub fn parse_compose_version(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let line = line.trim();
        let word = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .find(|w| w.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit()))?;
        version::parse_lenient(word)?;
        Some(word.trim_start_matches('v').to_string())
    })
}

/// Runs a version query. Marked `stable_output`: a host that remembers such
/// answers asks the target once per run, however many stack operations
/// detect the flavour; a host from before the field runs it every time.
fn run_quiet(host: &Host, argv: &[&str]) -> Result<Option<ExecOutput>, PluginError> {
    run_request(host, ExecRequest::new(argv.iter().copied()))
}

/// Runs `req` as a version query (see [`run_quiet`]).
fn run_request(host: &Host, req: ExecRequest) -> Result<Option<ExecOutput>, PluginError> {
    match host.exec(&req.stable_output()) {
        Ok(out) => Ok(Some(out)),
        // a transport that spawns directly reports a missing program as an I/O error
        Err(e) if e.kind == ErrorKind::Io => Ok(None),
        Err(e) => Err(e),
    }
}

/// The script of [`v1_version_request`]; `$HOME/.cache/cultivate/docker-compose-version`
/// holds the `ls -lLi` line of the binary and its version.
pub const V1_VERSION_SCRIPT: &str = r#": docker-compose version --short, remembered per binary
p=$(command -v docker-compose) || exit 127
key=$(ls -lLi "$p" 2>/dev/null) || key=
c=${HOME:-/nonexistent}/.cache/cultivate/docker-compose-version
if [ -n "$key" ] && [ -r "$c" ] && [ "$(sed -n 1p "$c")" = "$key" ]; then sed -n 2p "$c"; exit 0; fi
v=$(docker-compose version --short) || { s=$?; printf '%s\n' "$v"; exit "$s"; }
printf '%s\n' "$v"
if [ -n "$key" ] && [ -n "$v" ]; then
  { mkdir -p "${c%/*}" && printf '%s\n%s\n' "$key" "$v" >"$c.$$" && mv -f "$c.$$" "$c"; } 2>/dev/null || rm -f "$c.$$"
fi
exit 0"#;

/// `docker-compose version --short`, remembered on the target across runs
/// for the same binary (its inode, size and time, as `ls -lLi` prints them):
/// Python's docker-compose 1.x takes 0.5-1 s just to start, more than the
/// rest of a deploy that finds nothing changed. A replaced or upgraded
/// binary is asked again; exit 127 when there is none.
pub fn v1_version_request() -> ExecRequest {
    ExecRequest::shell(V1_VERSION_SCRIPT)
}

/// `docker compose version --short` as [`find_compose`] runs it (stable).
pub fn v2_version_request() -> ExecRequest {
    ExecRequest::new(["docker", "compose", "version", "--short"]).stable_output()
}

/// The commands [`probe_compose`] runs first (the manifest's `probe_commands`):
/// a host that runs them in one command with its OS probe answers the
/// probe, and every later flavour detection in the run, without a round trip.
/// The long `docker-compose version`, run only when `--short` fails, is left out.
pub fn probe_requests() -> Vec<ExecRequest> {
    vec![v2_version_request(), v1_version_request().stable_output()]
}

/// Finds Compose on the target, v2 (`docker compose`) first, then
/// `docker-compose` (whose major version decides its dialect).
pub fn find_compose(host: &Host) -> Result<Option<Found>, PluginError> {
    if let Some(out) = run_request(host, v2_version_request())? {
        if out.success() {
            if let Some(v) = parse_compose_version(&out.stdout) {
                return Ok(Some(Found {
                    dialect: Dialect::V2,
                    command: vec!["docker".into(), "compose".into()],
                    version: v,
                }));
            }
        }
    }
    let mut version = None;
    if let Some(out) = run_request(host, v1_version_request())? {
        if out.success() {
            version = parse_compose_version(&out.stdout);
        }
        if version.is_none() && out.status != 127 {
            if let Some(out) = run_quiet(host, &["docker-compose", "version"])? {
                if out.success() {
                    version = parse_compose_version(&out.stdout);
                }
            }
        }
    }
    Ok(version.map(|v| {
        let major = version::parse_lenient(&v).map(|x| x.major).unwrap_or(1);
        Found {
            dialect: if major >= 2 { Dialect::V2 } else { Dialect::V1 },
            command: vec!["docker-compose".into()],
            version: v,
        }
    }))
}

const NOT_FOUND: &str = "Docker Compose not found: neither `docker compose` (v2) nor `docker-compose` (v1) answered";

/// Probes Compose: v2 preferred; available when the version is at least the
/// flavour's minimum. Details: `flavour` (`v1`/`v2`), `command` (the argv prefix).
pub fn probe_compose(host: &Host) -> Result<Probe, PluginError> {
    let Some(found) = find_compose(host)? else {
        return Ok(Probe::unavailable(NOT_FOUND));
    };
    let probe = match found.check() {
        Ok(()) => Probe::available(found.version.clone(), PRIORITY + if found.dialect == Dialect::V2 { 5 } else { 0 }),
        Err(reason) => Probe { version: Some(found.version.clone()), ..Probe::unavailable(reason) },
    };
    Ok(probe
        .with_detail("flavour", found.flavour())
        .with_detail("command", found.command.join(" "))
        .with_detail("minimum", found.minimum()))
}

/// The compose CLI for an operation, detected now on the target.
pub fn detect(host: &Host) -> Result<Compose, PluginError> {
    let found = find_compose(host)?.ok_or_else(|| {
        PluginError::new(ErrorKind::NotAvailable, NOT_FOUND).with_hint("run `cultivate deploy --install-deps`")
    })?;
    found.check().map_err(|reason| PluginError::new(ErrorKind::NotAvailable, reason))?;
    host.debug(&format!("using {} {} ({})", found.command.join(" "), found.version, found.flavour()));
    Ok(found.compose())
}

// ---------------------------------------------------------------- install

fn apt_get(args: &[&str]) -> ExecRequest {
    ExecRequest::new(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"].iter().chain(args).copied())
}

/// Installs Compose on Debian/Ubuntu: `docker-compose-plugin` or
/// `docker-compose-v2` when the package sources offer one, else Debian's
/// `docker-compose` (v1 on bookworm, v2 on trixie); then verifies (P18).
pub fn install(host: &Host, target: &TargetInfo) -> Result<InstallReport, PluginError> {
    if !target.is_debian_like() {
        let name = target.os_release.get("PRETTY_NAME").cloned().unwrap_or_else(|| target.os.clone());
        return Err(PluginError::new(
            ErrorKind::NotAvailable,
            format!("cannot install Docker Compose automatically on {name}: only Debian and Ubuntu are supported"),
        )
        .with_hint(install_help(target).lines.join("\n")));
    }
    let mut steps = Vec::new();
    host.exec(&apt_get(&["update"]).timeout_secs(900))?.check("apt-get update")?;
    steps.push("apt-get update".to_string());
    let mut package = "docker-compose";
    for candidate in ["docker-compose-plugin", "docker-compose-v2"] {
        let out = host.run(&["apt-cache", "show", "--no-all-versions", candidate])?;
        if out.success() && out.stdout.contains("Package:") {
            package = candidate;
            break;
        }
    }
    let what = format!("apt-get install -y {package}");
    host.info(&what);
    host.exec(&apt_get(&["install", "-y", package]).timeout_secs(1800))?.check(&what)?;
    steps.push(what);
    let probe = probe_compose(host)?;
    if !probe.available {
        return Err(PluginError::new(
            ErrorKind::NotAvailable,
            format!(
                "Docker Compose was installed ({package}) but is not usable: {}",
                probe.reason.unwrap_or_else(|| "unknown reason".to_string())
            ),
        ));
    }
    steps.push(format!(
        "verified: {} {}",
        probe.details.get("command").cloned().unwrap_or_default(),
        probe.version.clone().unwrap_or_default()
    ));
    Ok(InstallReport { steps, version: probe.version })
}

/// How to install Compose by hand on this target.
pub fn install_help(target: &TargetInfo) -> InstallInstructions {
    let lines = if target.is_debian_like() {
        vec![
            "sudo apt-get update".to_string(),
            "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose    # Debian's package: v1 on bookworm, v2 on trixie".to_string(),
            "# or, with Docker's own apt repository: sudo apt-get install -y docker-compose-plugin".to_string(),
            format!("docker compose version || docker-compose version    # needs v2 {MIN_COMPOSE_V2}+ or v1 {MIN_COMPOSE_V1}+"),
        ]
    } else {
        vec![
            format!(
                "Install Docker Compose v2 ({MIN_COMPOSE_V2} or newer) for your distribution, or v1 {MIN_COMPOSE_V1}+:"
            ),
            "https://docs.docker.com/compose/install/linux/".to_string(),
        ]
    };
    InstallInstructions { lines }
}

#[cfg(test)]
mod tests;

cultivate_plugin_api::export_plugin!(ComposePlugin);
