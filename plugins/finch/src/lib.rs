//! The `finch` runtime plugin: images and the stack on macOS targets through
//! [Finch](https://github.com/runfinch/finch) (`finch …`, `finch compose …`),
//! whose containers run in a Lima VM. Capabilities: `images` and `stack`.
//!
//! The finch binary is located at every call (one cheap `sh -c` that tries
//! `command -v finch` and the usual install paths), because a non-interactive
//! ssh session on macOS rarely has Homebrew's directories in `PATH`, and one
//! plugin instance may serve several targets. See `docs/runtimes.md`.

use cultivate_plugin_api::ops::{self, InstallInstructions, Operation, StackRef};
use cultivate_plugin_api::{
    Capability, ErrorKind, ExecRequest, Host, Manifest, Plugin, PluginError, PluginKind, Probe, TargetInfo,
};

#[path = "../../docker/src/images.rs"]
pub mod images;
#[path = "../../compose/src/stack.rs"]
pub mod stack;
#[path = "../../docker/src/version.rs"]
pub mod version;

use stack::{Compose, Dialect};

/// The plugin's name in its manifest.
pub const NAME: &str = "finch";

/// Manifest priority (above docker and docker-compose, which do not run on macOS anyway).
pub const PRIORITY: i32 = 60;

/// Where Finch is installed, besides `PATH`: the .pkg installer, Homebrew on
/// Intel and on Apple silicon, and the application bundle.
pub const INSTALL_PATHS: &[&str] =
    &["/usr/local/bin/finch", "/opt/finch/bin/finch", "/opt/homebrew/bin/finch", "/Applications/Finch/bin/finch"];

/// The install command shown when Finch is missing.
pub const INSTALL_COMMAND: &str = "brew install --cask finch";

/// How long `finch vm init` may take (it downloads and boots the VM).
pub const VM_INIT_TIMEOUT_SECS: u64 = 1200;

const OPERATIONS: &[&str] = &[
    ops::ImageInspect::NAME,
    ops::ImageList::NAME,
    ops::ImageLoadCommand::NAME,
    ops::ImageTag::NAME,
    ops::ImageRemove::NAME,
    ops::ImageBuildCommand::NAME,
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
    ops::InstallHelp::NAME,
];

/// The finch runtime plugin. Stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct FinchPlugin;

impl Plugin for FinchPlugin {
    fn manifest(&self) -> Manifest {
        let mut m = cultivate_plugin_api::manifest(NAME, env!("CARGO_PKG_VERSION"), &[PluginKind::Runtime]);
        m.description = "Images and the stack on macOS through Finch (`finch`, `finch compose`)".to_string();
        m.capabilities = vec![Capability::Images, Capability::Stack];
        m.priority = PRIORITY;
        m.target_os = vec!["darwin".to_string()];
        m.operations = OPERATIONS.iter().map(|s| s.to_string()).collect();
        m
    }

    fn probe(&self, host: &Host, target: &TargetInfo) -> Result<Probe, PluginError> {
        probe_finch(host, target)
    }

    fn call(&self, host: &Host, op: &str, payload: &str) -> Result<String, PluginError> {
        match op {
            ops::ImageInspect::NAME => {
                ops::handle::<ops::ImageInspect>(payload, |r| images::inspect(host, &finch(host)?, &r.refs))
            }
            ops::ImageList::NAME => {
                ops::handle::<ops::ImageList>(payload, |r| images::list(host, &finch(host)?, &r.prefix))
            }
            ops::ImageLoadCommand::NAME => {
                ops::handle::<ops::ImageLoadCommand>(payload, |_| Ok(images::load_command(&finch(host)?)))
            }
            ops::ImageTag::NAME => ops::handle::<ops::ImageTag>(payload, |r| {
                images::tag(host, &finch(host)?, &r.source, &r.target).map(|()| ops::Empty {})
            }),
            ops::ImageRemove::NAME => {
                ops::handle::<ops::ImageRemove>(payload, |r| images::remove(host, &finch(host)?, &r.refs))
            }
            ops::ImageBuildCommand::NAME => ops::handle::<ops::ImageBuildCommand>(payload, |r| {
                check_path(&r.context_dir)?;
                images::build_command(&finch(host)?, &r)
            }),
            ops::StackUp::NAME => ops::handle::<ops::StackUp>(payload, |r| compose(host, &r.stack)?.up(host, &r)),
            ops::StackDown::NAME => ops::handle::<ops::StackDown>(payload, |r| compose(host, &r.stack)?.down(host, &r)),
            ops::StackPs::NAME => ops::handle::<ops::StackPs>(payload, |r| compose(host, &r)?.ps(host, &r)),
            ops::StackLogs::NAME => ops::handle::<ops::StackLogs>(payload, |r| compose(host, &r.stack)?.logs(host, &r)),
            ops::StackConfig::NAME => ops::handle::<ops::StackConfig>(payload, |r| compose(host, &r)?.config(host, &r)),
            ops::StackExec::NAME => ops::handle::<ops::StackExec>(payload, |r| compose(host, &r.stack)?.exec(host, &r)),
            ops::StackServiceHashes::NAME => {
                ops::handle::<ops::StackServiceHashes>(payload, |r| compose(host, &r)?.service_hashes(host, &r))
            }
            ops::StackStartBeside::NAME => {
                ops::handle::<ops::StackStartBeside>(payload, |r| compose(host, &r.stack)?.start_beside(host, &r))
            }
            ops::StackUpServices::NAME => {
                ops::handle::<ops::StackUpServices>(payload, |r| compose(host, &r.stack)?.up_services(host, &r))
            }
            ops::ContainerRemove::NAME => {
                ops::handle::<ops::ContainerRemove>(payload, |r| engine_only(host)?.remove_containers(host, &r))
            }
            ops::ContainerExec::NAME => {
                ops::handle::<ops::ContainerExec>(payload, |r| engine_only(host)?.container_exec(host, &r))
            }
            ops::CopyFromImage::NAME => {
                ops::handle::<ops::CopyFromImage>(payload, |r| engine_only(host)?.copy_from_image(host, &r))
            }
            ops::ContainerLogsCommand::NAME => {
                ops::handle::<ops::ContainerLogsCommand>(payload, |r| engine_only(host)?.container_logs_command(&r))
            }
            ops::ContainerExecCommand::NAME => {
                ops::handle::<ops::ContainerExecCommand>(payload, |r| engine_only(host)?.container_exec_command(&r))
            }
            ops::StackStop::NAME => ops::handle::<ops::StackStop>(payload, |r| compose(host, &r.stack)?.stop(host, &r)),
            ops::StackStart::NAME => ops::handle::<ops::StackStart>(payload, |r| compose(host, &r)?.start(host, &r)),
            ops::InstallHelp::NAME => ops::handle::<ops::InstallHelp>(payload, |r| Ok(install_help(&r.target))),
            other => Err(PluginError::unsupported(format!("operation {other}"))),
        }
    }
}

// ---------------------------------------------------------------- locating finch

/// The `sh -c` script that prints the path of the finch binary, or exits 1.
pub fn locate_script() -> String {
    let paths = INSTALL_PATHS.join(" ");
    format!(
        "command -v finch 2>/dev/null && exit 0; \
         for p in {paths}; do if [ -x \"$p\" ]; then echo \"$p\"; exit 0; fi; done; exit 1"
    )
}

/// The path of finch on the target, if any.
pub fn locate(host: &Host) -> Result<Option<String>, PluginError> {
    let out = host.exec(&ExecRequest::shell(locate_script()))?;
    if !out.success() {
        return Ok(None);
    }
    Ok(out.stdout.lines().map(str::trim).find(|l| l.starts_with('/')).map(str::to_string))
}

fn not_found_message() -> String {
    format!(
        "finch not found on the target (looked in PATH and {}); install it with `{INSTALL_COMMAND}`",
        INSTALL_PATHS.join(", ")
    )
}

/// The finch argv prefix for an operation, located now.
fn finch(host: &Host) -> Result<Vec<String>, PluginError> {
    match locate(host)? {
        Some(path) => Ok(vec![path]),
        None => Err(PluginError::new(ErrorKind::NotAvailable, not_found_message())
            .with_hint(format!("{INSTALL_COMMAND} && finch vm init"))),
    }
}

fn check_path(path: &str) -> Result<(), PluginError> {
    validate_deploy_path(path, None).map_err(PluginError::invalid)
}

/// The compose CLI (`finch compose`) for a stack whose directory the VM can reach.
fn compose(host: &Host, stack: &StackRef) -> Result<Compose, PluginError> {
    check_path(&stack.dir)?;
    let bin = finch(host)?;
    let mut command = bin.clone();
    command.push("compose".to_string());
    Ok(Compose { command, dialect: Dialect::Finch, engine: bin })
}

/// `finch` for container operations that need no compose project.
fn engine_only(host: &Host) -> Result<Compose, PluginError> {
    let bin = finch(host)?;
    Ok(Compose { command: Vec::new(), dialect: Dialect::Finch, engine: bin })
}

// ---------------------------------------------------------------- probe

/// The state `finch vm status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Never initialised: `finch vm init`.
    Nonexistent,
    /// Initialised but not running: `finch vm start`.
    Stopped,
    /// Ready.
    Running,
    /// Anything else (starting, broken).
    Unknown,
}

/// Reads `finch vm status` output (it may print on stdout or stderr).
pub fn parse_vm_status(stdout: &str, stderr: &str) -> VmState {
    let text = format!("{stdout}\n{stderr}").to_ascii_lowercase();
    if text.contains("nonexistent") {
        VmState::Nonexistent
    } else if text.contains("stopped") {
        VmState::Stopped
    } else if text.contains("running") {
        VmState::Running
    } else {
        VmState::Unknown
    }
}

/// Probes Finch: macOS only; finds the binary, reads its version, and makes
/// sure the VM runs (`finch vm init` when it was never initialised, `finch vm
/// start` when stopped).
pub fn probe_finch(host: &Host, target: &TargetInfo) -> Result<Probe, PluginError> {
    if target.os_key() != "darwin" {
        let os = if target.os.trim().is_empty() { "unknown" } else { target.os.trim() };
        return Ok(Probe::unavailable(format!("finch runs on macOS only (target is {os})")));
    }
    let Some(bin) = locate(host)? else {
        return Ok(Probe::unavailable(not_found_message()).with_detail("install", INSTALL_COMMAND));
    };
    let out = host.run(&[bin.as_str(), "--version"])?;
    let version = if out.success() { version::find_version(&out.stdout) } else { None };
    let Some(version) = version else {
        return Ok(Probe::unavailable(format!(
            "`{bin} --version` gave no version (status {}): {}",
            out.status,
            out.stderr.trim()
        )));
    };
    let status = host.run(&[bin.as_str(), "vm", "status"])?;
    let state = parse_vm_status(&status.stdout, &status.stderr);
    let action = match state {
        VmState::Running => None,
        VmState::Nonexistent => Some(("init", "the Finch VM was not initialised: running `finch vm init`")),
        VmState::Stopped => Some(("start", "the Finch VM is stopped: running `finch vm start`")),
        VmState::Unknown => {
            return Ok(Probe::unavailable(format!(
                "cannot tell the state of the Finch VM from `finch vm status`: {} {}",
                status.stdout.trim(),
                status.stderr.trim()
            ))
            .with_detail("binary", bin))
        }
    };
    let mut vm = "running";
    if let Some((verb, message)) = action {
        host.info(message);
        let req =
            ExecRequest::new([bin.clone(), "vm".to_string(), verb.to_string()]).timeout_secs(VM_INIT_TIMEOUT_SECS);
        let out = host.exec(&req)?;
        if !out.success() {
            let why = if out.stderr.trim().is_empty() { out.stdout.trim() } else { out.stderr.trim() };
            return Ok(Probe::unavailable(format!("`finch vm {verb}` failed (status {}): {why}", out.status))
                .with_detail("binary", bin));
        }
        vm = if verb == "init" { "initialised" } else { "started" };
    }
    Ok(Probe::available(version.to_string(), PRIORITY)
        .with_detail("binary", bin)
        .with_detail("vm", vm)
        .with_detail("image_store", "containerd")
        .with_detail("flavour", "finch"))
}

// ---------------------------------------------------------------- paths (10.6)

/// Top-level directories the Finch VM cannot reach.
pub const UNREACHABLE_ROOTS: &[&str] = &["/opt", "/var", "/etc", "/usr", "/tmp", "/private"];

/// Checks that a deploy path on a macOS target is one the Finch VM can reach
/// (requirement 10.6): the home directory (`~/…`, or under `home` when given), or anything under
/// `/Users/NAME/` or `/Volumes/NAME/`. `/opt`, `/var`, `/etc`, `/usr`, `/tmp`
/// and `/private` (and every other system path) are refused, with an error
/// naming the path and suggesting `~/cultivate`.
pub fn validate_deploy_path(path: &str, home: Option<&str>) -> Result<(), String> {
    let p = path.trim();
    let suggest = "use a directory under your home directory, such as ~/cultivate";
    if p.is_empty() {
        return Err(format!("the deploy path is empty; {suggest}"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("deploy path {p} must not contain `..`; {suggest}"));
    }
    if p == "~" || p.starts_with("~/") {
        return Ok(());
    }
    if !p.starts_with('/') {
        return Err(format!("deploy path {p} must be absolute or start with ~/; {suggest}"));
    }
    if let Some(home) = home.map(|h| h.trim().trim_end_matches('/')).filter(|h| h.len() > 1) {
        if p == home || p.starts_with(&format!("{home}/")) {
            return Ok(());
        }
    }
    let lower = p.to_ascii_lowercase();
    for shared in ["/users/", "/volumes/"] {
        if let Some(rest) = lower.strip_prefix(shared) {
            if rest.split('/').any(|c| !c.is_empty()) {
                return Ok(());
            }
        }
    }
    if let Some(root) = UNREACHABLE_ROOTS.iter().find(|r| lower == **r || lower.starts_with(&format!("{r}/"))) {
        return Err(format!(
            "deploy path {p} is under {root}, which the Finch VM cannot reach (it shares only /Users and /Volumes); {suggest}"
        ));
    }
    Err(format!(
        "deploy path {p} is outside the directories the Finch VM can reach (it shares only /Users and /Volumes); {suggest}"
    ))
}

// ---------------------------------------------------------------- install help

/// How to install Finch by hand.
pub fn install_help(target: &TargetInfo) -> InstallInstructions {
    let lines = if target.os_key() == "darwin" {
        vec![
            INSTALL_COMMAND.to_string(),
            "finch vm init".to_string(),
            "finch version    # or the .pkg installer from https://github.com/runfinch/finch/releases".to_string(),
        ]
    } else {
        vec![format!(
            "finch runs on macOS only (target is {}); on Linux the docker and docker-compose runtimes are used",
            if target.os.trim().is_empty() { "unknown" } else { target.os.trim() }
        )]
    };
    InstallInstructions { lines }
}

#[cfg(test)]
mod tests;

cultivate_plugin_api::export_plugin!(FinchPlugin);
