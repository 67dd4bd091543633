//! Settings: `cultivate.toml`, overridden by `CULTIVATE_*` environment
//! variables, overridden by flags, resolved into one plain [`Settings`].
//!
//! [`resolve`] has no side effects: it takes the file's text, the environment
//! and the flags, and returns the settings or every problem at once, each by
//! name (P25). Defaults are the `DEFAULT_*` constants, documented in
//! `docs/configuration.md` (P26).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{BuildMode, DeployArgs, TargetArgs};

/// Default compose project name and image prefix.
pub const DEFAULT_PROJECT: &str = "cultivate";
/// Default deploy directory on Linux targets.
pub const DEFAULT_DEPLOY_PATH_LINUX: &str = "/opt/cultivate";
/// Default deploy directory on macOS targets, under the home directory (the Finch VM reaches only that).
pub const DEFAULT_DEPLOY_PATH_MACOS: &str = "~/cultivate";
/// Default published HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default published HTTPS port.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
/// Default seconds to wait for every container to be healthy.
pub const DEFAULT_HEALTH_TIMEOUT: u64 = 180;
/// Default first health-poll interval.
pub const DEFAULT_HEALTH_INITIAL_BACKOFF_MS: u64 = 500;
/// Default longest health-poll interval. A poll is one cheap command (the
/// containers' states); the stack's own checks run every 5 s, so a poll a
/// second sees a container turn healthy within a second of its check
/// instead of up to five (three services start one after the other on a
/// first deploy: that was seconds of waiting on nothing).
pub const DEFAULT_HEALTH_MAX_BACKOFF_MS: u64 = 1_000;
/// Default `health.drain_timeout`: seconds the old backend gets to finish requests in flight after a switch.
pub const DEFAULT_DRAIN_TIMEOUT: u64 = 30;
/// Default number of releases kept on the target (the current one included).
pub const DEFAULT_RELEASES_KEPT: u32 = 5;
/// Default base image for the Dockerfiles.
pub const DEFAULT_BASE_IMAGE: &str = "debian:bookworm-slim";
/// Default SSH connect timeout (seconds).
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
/// Default SSH keepalive interval (seconds).
pub const DEFAULT_KEEPALIVE: u64 = 15;
/// Default days before expiry that a certificate draws a warning.
pub const DEFAULT_CERT_WARNING_DAYS: u32 = 21;
/// Default days deploy logs are kept on the target.
pub const DEFAULT_LOG_RETENTION_DAYS: u32 = 30;

/// The file, as written. Every field optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    target: Option<String>,
    project: Option<String>,
    deploy_path: Option<String>,
    app_dir: Option<String>,
    stack_dir: Option<String>,
    releases_kept: Option<u32>,
    secrets_file: Option<String>,
    runtime: Option<String>,
    transport: Option<String>,
    #[serde(default)]
    ssh: SshFile,
    #[serde(default)]
    ports: PortsFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    build: BuildFile,
    #[serde(default)]
    health: HealthFile,
    #[serde(default)]
    logs: LogsFile,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    app: AppFile,
    #[serde(default)]
    release: ReleaseFile,
    #[serde(default)]
    transfer: TransferFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferFile {
    compression: Option<String>,
    level: Option<i64>,
}

/// Whether images cross the wire compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd when the target's engine decompresses it (Docker ≥ 23), else gzip.
    Zstd,
    /// As exported.
    None,
}

/// `[transfer]`: how images are sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TransferSettings {
    /// Compressed or not.
    pub compression: Compression,
    /// zstd level (1–19; gzip, for older engines, uses at most 9).
    pub level: i32,
}

/// Default `transfer.level`.
pub const DEFAULT_TRANSFER_LEVEL: i32 = 3;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    health_path: Option<String>,
    build_command: Option<String>,
    output_dir: Option<String>,
    start_command: Option<String>,
    node_version: Option<u32>,
    spa_fallback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFile {
    command: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshFile {
    identity: Option<String>,
    known_hosts: Option<String>,
    accept_new_host_key: Option<bool>,
    connect_timeout: Option<u64>,
    keepalive: Option<u64>,
    sudo: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsFile {
    http: Option<i64>,
    https: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    expiry_warning_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildFile {
    mode: Option<String>,
    base_image: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    timeout: Option<u64>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    drain_timeout: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsFile {
    retention_days: Option<u32>,
}

/// SSH settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SshSettings {
    /// Identity file.
    pub identity: Option<PathBuf>,
    /// known_hosts file.
    pub known_hosts: Option<PathBuf>,
    /// Record unknown host keys.
    pub accept_new_host_key: bool,
    /// Connect timeout, seconds.
    pub connect_timeout: u64,
    /// Keepalive interval, seconds.
    pub keepalive: u64,
    /// Use sudo on the target.
    pub sudo: bool,
}

/// TLS files, both present or neither.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsSettings {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Health polling.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthSettings {
    /// Deadline, seconds.
    pub timeout_secs: u64,
    /// First interval.
    pub initial_backoff_ms: u64,
    /// Longest interval.
    pub max_backoff_ms: u64,
    /// Seconds a switched-out container gets to finish the requests in flight.
    pub drain_secs: u64,
}

/// How the application is built and run (docs/your-app.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppSettings {
    /// The backend's health route (GET, 200 when it can serve).
    pub health_path: String,
    /// Run in frontend/ to build it; empty for a directory of static files.
    pub build_command: String,
    /// The directory (relative to frontend/) the site is in after the build.
    pub output_dir: String,
    /// Starts the backend, in backend/.
    pub start_command: String,
    /// The Node.js major version the application needs (the base image's).
    pub node_version: u32,
    /// Serve index.html for a path that is no file (client-side routing); else 404.
    pub spa_fallback: bool,
}

/// A health path the backend's check and the frontend's nginx both take
/// unquoted: `/` then letters, digits and `/._~%=?&+-` (the frontend's
/// Dockerfile refuses anything else too).
pub fn health_path_ok(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._~%=?&+-".contains(&b))
}

/// Default `app.health_path`.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default `app.build_command`.
pub const DEFAULT_BUILD_COMMAND: &str = "node build.js";
/// Default `app.output_dir`.
pub const DEFAULT_OUTPUT_DIR: &str = "dist";
/// Default `app.start_command`.
pub const DEFAULT_START_COMMAND: &str = "node server.js";
/// Default `app.node_version`: Debian bookworm's nodejs.
pub const DEFAULT_NODE_VERSION: u32 = 18;

/// Everything a command needs, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Settings {
    /// The file read, if any.
    pub config_path: Option<PathBuf>,
    /// Relative paths are resolved against this (the file's directory, else the current one).
    pub base_dir: PathBuf,
    /// Where to deploy.
    pub target: String,
    /// Compose project name and image prefix.
    pub project: String,
    /// Deploy directory on the target; `None` picks the OS default after probing.
    pub deploy_path: Option<String>,
    /// The application (frontend/ and backend/).
    pub app_dir: PathBuf,
    /// The directory holding the project's own `docker/` and `compose/`, when set.
    pub stack_dir: Option<PathBuf>,
    /// How the application is built and run.
    pub app: AppSettings,
    /// Run once per deploy in a one-off backend container before traffic moves.
    pub release_command: Option<String>,
    /// SSH.
    pub ssh: SshSettings,
    /// Published HTTP port.
    pub http_port: u16,
    /// Published HTTPS port.
    pub https_port: u16,
    /// TLS, when configured.
    pub tls: Option<TlsSettings>,
    /// Warn when the certificate expires within this many days.
    pub cert_warning_days: u32,
    /// Build mode.
    pub build_mode: BuildMode,
    /// Base image for the Dockerfiles.
    pub base_image: String,
    /// Application environment (not secret).
    pub env: BTreeMap<String, String>,
    /// Secrets file (KEY=VALUE, mode 0600).
    pub secrets_file: Option<PathBuf>,
    /// Health polling.
    pub health: HealthSettings,
    /// Releases kept on the target.
    pub releases_kept: u32,
    /// Runtime override.
    pub runtime: Option<String>,
    /// Transport override.
    pub transport: Option<String>,
    /// Release version override.
    pub release_version: Option<String>,
    /// Install missing dependencies.
    pub install_deps: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Days of deploy logs kept on the target.
    pub log_retention_days: u32,
    /// How images are sent.
    pub transfer: TransferSettings,
}

impl Settings {
    /// The stack this project uses: `stack_dir`, the project's own copy, or the built-in one.
    pub fn stack(&self) -> crate::stack::Stack {
        crate::stack::Stack::locate(self.stack_dir.as_deref(), &self.base_dir)
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--target`.
    pub target: Option<String>,
    /// `--runtime`.
    pub runtime: Option<String>,
    /// `--transport`.
    pub transport: Option<String>,
    /// `--identity`.
    pub identity: Option<PathBuf>,
    /// `--known-hosts`.
    pub known_hosts: Option<PathBuf>,
    /// `--accept-new-host-key`.
    pub accept_new_host_key: bool,
    /// `--connect-timeout`.
    pub connect_timeout: Option<u64>,
    /// `--build`.
    pub build: Option<BuildMode>,
    /// `--release-version`.
    pub release_version: Option<String>,
    /// `--install-deps`.
    pub install_deps: bool,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--health-timeout`.
    pub health_timeout: Option<u64>,
}

impl Overrides {
    /// From the target flags.
    pub fn from_target(t: &TargetArgs) -> Self {
        Overrides {
            target: t.target.clone(),
            runtime: t.runtime.clone(),
            transport: t.transport.clone(),
            identity: t.identity.clone(),
            known_hosts: t.known_hosts.clone(),
            accept_new_host_key: t.accept_new_host_key,
            connect_timeout: t.connect_timeout,
            ..Overrides::default()
        }
    }

    /// From the deploy flags.
    pub fn from_deploy(d: &DeployArgs) -> Self {
        Overrides {
            build: d.build,
            release_version: d.release_version.clone(),
            install_deps: d.install_deps,
            dry_run: d.dry_run,
            health_timeout: d.health_timeout,
            ..Overrides::from_target(&d.target)
        }
    }
}

/// Every problem found, each naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", format_problems(.0))]
pub struct ConfigErrors(pub Vec<Problem>);

/// One problem with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting (`ports.http`, `target`).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn format_problems(p: &[Problem]) -> String {
    let mut s = format!("the configuration has {} problem{}:", p.len(), if p.len() == 1 { "" } else { "s" });
    for pr in p {
        s.push_str(&format!("\n  - {}: {}", pr.key, pr.message));
    }
    s
}

/// The environment variable that overrides each setting.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("CULTIVATE_TARGET", "target"),
    ("CULTIVATE_PROJECT", "project"),
    ("CULTIVATE_DEPLOY_PATH", "deploy_path"),
    ("CULTIVATE_APP_DIR", "app_dir"),
    ("CULTIVATE_STACK_DIR", "stack_dir"),
    ("CULTIVATE_RELEASES_KEPT", "releases_kept"),
    ("CULTIVATE_SECRETS_FILE", "secrets_file"),
    ("CULTIVATE_RUNTIME", "runtime"),
    ("CULTIVATE_TRANSPORT", "transport"),
    ("CULTIVATE_SSH_IDENTITY", "ssh.identity"),
    ("CULTIVATE_SSH_KNOWN_HOSTS", "ssh.known_hosts"),
    ("CULTIVATE_SSH_CONNECT_TIMEOUT", "ssh.connect_timeout"),
    ("CULTIVATE_SSH_SUDO", "ssh.sudo"),
    ("CULTIVATE_HTTP_PORT", "ports.http"),
    ("CULTIVATE_HTTPS_PORT", "ports.https"),
    ("CULTIVATE_TLS_CERT", "tls.cert"),
    ("CULTIVATE_TLS_KEY", "tls.key"),
    ("CULTIVATE_BUILD_MODE", "build.mode"),
    ("CULTIVATE_BASE_IMAGE", "build.base_image"),
    ("CULTIVATE_HEALTH_TIMEOUT", "health.timeout"),
    ("CULTIVATE_TRANSFER_COMPRESSION", "transfer.compression"),
    ("CULTIVATE_TRANSFER_LEVEL", "transfer.level"),
];

/// Resolves settings from the file text (with its path), the environment and the flags.
pub fn resolve(
    file: Option<(&Path, &str)>,
    env: &BTreeMap<String, String>,
    flags: &Overrides,
    cwd: &Path,
) -> Result<Settings, ConfigErrors> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| problems.push(Problem { key: key.to_string(), message });

    let (cfg, config_path, base_dir) = match file {
        Some((path, text)) => {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| cwd.to_path_buf());
            let base = if base.is_absolute() { base } else { cwd.join(base) };
            match toml::from_str::<FileConfig>(text) {
                Ok(cfg) => (cfg, Some(path.to_path_buf()), base),
                Err(e) => {
                    let msg = e.message().to_string();
                    let key = e
                        .span()
                        .map(|s| format!("{} (byte {})", path.display(), s.start))
                        .unwrap_or_else(|| path.display().to_string());
                    problem(&key, format!("{msg}; see `cultivate init` for a commented example"));
                    (FileConfig::default(), Some(path.to_path_buf()), base)
                }
            }
        }
        None => (FileConfig::default(), None, cwd.to_path_buf()),
    };
    let env_of = |key: &str| -> Option<String> {
        ENV_VARS.iter().find(|(_, k)| *k == key).and_then(|(var, _)| env.get(*var)).filter(|v| !v.is_empty()).cloned()
    };
    let path_of = |s: &str| -> PathBuf { expand_path(s, &base_dir) };

    // target (required)
    let target = flags.target.clone().or_else(|| env_of("target")).or(cfg.target.clone());
    let target = match target {
        Some(t) => match crate::target::Target::parse(&t) {
            Ok(_) => t,
            Err(e) => {
                problem("target", e.message);
                String::new()
            }
        },
        None => {
            problem(
                "target",
                "required: set `target` in cultivate.toml, CULTIVATE_TARGET, or --target (`local`, `ssh://user@host`)"
                    .into(),
            );
            String::new()
        }
    };

    let project = env_of("project").or(cfg.project.clone()).unwrap_or_else(|| DEFAULT_PROJECT.to_string());
    if !valid_project(&project) {
        problem(
            "project",
            format!("`{project}` must be 1-40 characters of a-z, 0-9, `-`, `_`, starting with a letter or digit"),
        );
    }

    let deploy_path = env_of("deploy_path").or(cfg.deploy_path.clone());
    if let Some(p) = &deploy_path {
        if !(p.starts_with('/') || p.starts_with("~/"))
            || p.contains("..")
            || p.chars().any(|c| c.is_control() || c == ' ')
        {
            problem("deploy_path", format!("`{p}` must be an absolute path (or start with ~/) without spaces or `..`"));
        }
    }

    let app_dir = match env_of("app_dir").or(cfg.app_dir.clone()) {
        Some(a) => path_of(&a),
        None => {
            problem("app_dir", "required: the directory of your application (with frontend/ and backend/), e.g. `app_dir = \"examples/app\"`".into());
            PathBuf::new()
        }
    };
    let stack_dir = env_of("stack_dir").or(cfg.stack_dir.clone()).map(|s| path_of(&s));

    // app and release
    let health_path = cfg.app.health_path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
    if !health_path_ok(&health_path) {
        problem(
            "app.health_path",
            format!(
                "`{health_path}` must be a URL path starting with `/`, of letters, digits and `/._~%=?&+-` \
                 only (the frontend's nginx proxies /api/health to it), e.g. \"/health\""
            ),
        );
    }
    let command_ok = |c: &str| !c.contains(['\n', '\r', '\0', '\'']) && !c.contains("${");
    let build_command = cfg.app.build_command.clone().unwrap_or_else(|| DEFAULT_BUILD_COMMAND.into());
    if !command_ok(&build_command) {
        problem("app.build_command", "must be one line without single quotes or `${`".into());
    }
    let output_dir = cfg.app.output_dir.clone().unwrap_or_else(|| DEFAULT_OUTPUT_DIR.into());
    if output_dir.is_empty()
        || output_dir.starts_with('/')
        || output_dir.split('/').any(|c| c == "..")
        || !output_dir.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        problem(
            "app.output_dir",
            format!(
                "`{output_dir}` must be a relative path inside frontend/ (`.` for the directory itself), e.g. \"dist\""
            ),
        );
    }
    let start_command = cfg.app.start_command.clone().unwrap_or_else(|| DEFAULT_START_COMMAND.into());
    if start_command.trim().is_empty() || !command_ok(&start_command) {
        problem(
            "app.start_command",
            "must be one non-empty line without single quotes or `${`, e.g. \"node server.js\"".into(),
        );
    }
    let node_version = cfg.app.node_version.unwrap_or(DEFAULT_NODE_VERSION);
    if !(10..=99).contains(&node_version) {
        problem("app.node_version", format!("{node_version} is not a Node.js major version, e.g. 18"));
    }
    let release_command = cfg.release.command.clone().filter(|c| !c.trim().is_empty());
    if let Some(c) = &release_command {
        if !command_ok(c) {
            problem("release.command", "must be one line without single quotes or `${`".into());
        }
    }

    let parse_u64 = |_key: &str, v: Option<String>| -> Option<Result<u64, String>> {
        v.map(|s| s.trim().parse::<u64>().map_err(|_| format!("`{s}` is not a whole number")))
    };

    // ports
    let port = |key: &str,
                env_v: Option<String>,
                file_v: Option<i64>,
                default: u16,
                problem: &mut dyn FnMut(&str, String)|
     -> u16 {
        let raw: Option<i64> = match env_v {
            Some(s) => match s.trim().parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    problem(key, format!("`{s}` is not a port number (1-65535)"));
                    return default;
                }
            },
            None => file_v,
        };
        match raw {
            None => default,
            Some(n) if (1..=65535).contains(&n) => n as u16,
            Some(n) => {
                problem(key, format!("{n} is not a port number (1-65535)"));
                default
            }
        }
    };
    let http_port = port("ports.http", env_of("ports.http"), cfg.ports.http, DEFAULT_HTTP_PORT, &mut problem);
    let https_port = port("ports.https", env_of("ports.https"), cfg.ports.https, DEFAULT_HTTPS_PORT, &mut problem);
    if http_port == https_port {
        problem("ports.https", format!("must differ from ports.http (both are {http_port})"));
    }

    // tls
    let cert = env_of("tls.cert").or(cfg.tls.cert.clone());
    let key = env_of("tls.key").or(cfg.tls.key.clone());
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some(TlsSettings { cert: path_of(&c), key: path_of(&k) }),
        (None, None) => None,
        (Some(_), None) => {
            problem("tls.key", "required when tls.cert is set (HTTPS needs both the certificate and its key)".into());
            None
        }
        (None, Some(_)) => {
            problem("tls.cert", "required when tls.key is set (HTTPS needs both the certificate and its key)".into());
            None
        }
    };

    // build
    let build_mode = match flags.build {
        Some(m) => m,
        None => match env_of("build.mode").or(cfg.build.mode.clone()).as_deref() {
            None | Some("local") => BuildMode::Local,
            Some("remote") => BuildMode::Remote,
            Some(other) => {
                problem("build.mode", format!("`{other}` is not `local` or `remote`"));
                BuildMode::Local
            }
        },
    };
    let base_image =
        env_of("build.base_image").or(cfg.build.base_image.clone()).unwrap_or_else(|| DEFAULT_BASE_IMAGE.to_string());
    if base_image.is_empty() || base_image.chars().any(|c| c.is_whitespace()) {
        problem("build.base_image", format!("`{base_image}` is not an image reference"));
    }

    // health
    let health_timeout =
        match flags.health_timeout.map(Ok).or_else(|| parse_u64("health.timeout", env_of("health.timeout"))) {
            Some(Ok(n)) => n,
            Some(Err(m)) => {
                problem("health.timeout", m);
                DEFAULT_HEALTH_TIMEOUT
            }
            None => cfg.health.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
        };
    if health_timeout == 0 || health_timeout > 3600 {
        problem("health.timeout", format!("{health_timeout} must be between 1 and 3600 seconds"));
    }
    let initial = cfg.health.initial_backoff_ms.unwrap_or(DEFAULT_HEALTH_INITIAL_BACKOFF_MS);
    let max = cfg.health.max_backoff_ms.unwrap_or(DEFAULT_HEALTH_MAX_BACKOFF_MS);
    if initial == 0 || initial > max {
        problem(
            "health.initial_backoff_ms",
            format!("{initial} must be at least 1 and at most health.max_backoff_ms ({max})"),
        );
    }

    let drain = cfg.health.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    if drain > 600 {
        problem("health.drain_timeout", format!("{drain} must be at most 600 seconds"));
    }

    // releases
    let releases_kept = match parse_u64("releases_kept", env_of("releases_kept")) {
        Some(Ok(n)) => n.min(u32::MAX as u64) as u32,
        Some(Err(m)) => {
            problem("releases_kept", m);
            DEFAULT_RELEASES_KEPT
        }
        None => cfg.releases_kept.unwrap_or(DEFAULT_RELEASES_KEPT),
    };
    if !(2..=100).contains(&releases_kept) {
        problem(
            "releases_kept",
            format!("{releases_kept} must be between 2 and 100 (the previous release is needed for rollback)"),
        );
    }

    // ssh
    let connect_timeout =
        match flags.connect_timeout.map(Ok).or_else(|| parse_u64("ssh.connect_timeout", env_of("ssh.connect_timeout")))
        {
            Some(Ok(n)) => n,
            Some(Err(m)) => {
                problem("ssh.connect_timeout", m);
                DEFAULT_CONNECT_TIMEOUT
            }
            None => cfg.ssh.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        };
    if connect_timeout == 0 {
        problem("ssh.connect_timeout", "must be at least 1 second".into());
    }
    let sudo = match env_of("ssh.sudo").as_deref() {
        Some("1" | "true" | "yes") => true,
        Some("0" | "false" | "no") => false,
        Some(other) => {
            problem("ssh.sudo", format!("`{other}` is not true or false"));
            false
        }
        None => cfg.ssh.sudo.unwrap_or(false),
    };
    let ssh = SshSettings {
        identity: flags
            .identity
            .clone()
            .or_else(|| env_of("ssh.identity").or(cfg.ssh.identity.clone()).map(|s| path_of(&s))),
        known_hosts: flags
            .known_hosts
            .clone()
            .or_else(|| env_of("ssh.known_hosts").or(cfg.ssh.known_hosts.clone()).map(|s| path_of(&s))),
        accept_new_host_key: flags.accept_new_host_key || cfg.ssh.accept_new_host_key.unwrap_or(false),
        connect_timeout,
        keepalive: cfg.ssh.keepalive.unwrap_or(DEFAULT_KEEPALIVE),
        sudo,
    };

    // env
    for k in cfg.env.keys() {
        if !valid_env_key(k) {
            problem(
                &format!("env.{k}"),
                "is not a valid variable name (A-Z, 0-9, _; not starting with a digit)".into(),
            );
        }
        if let Some(why) = reserved(k) {
            problem(&format!("env.{k}"), format!("collides with a variable cultivate sets itself ({why}); rename it"));
        }
    }

    let release_version = flags.release_version.clone();
    if let Some(v) = &release_version {
        if !valid_version(v) {
            problem(
                "release_version",
                format!("`{v}` must be 1-64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, not starting with `.` or `-`"),
            );
        }
    }

    // transfer
    let compression = match env_of("transfer.compression").or(cfg.transfer.compression.clone()).as_deref() {
        None | Some("zstd") => Compression::Zstd,
        Some("none") => Compression::None,
        Some(other) => {
            problem("transfer.compression", format!("`{other}` is not `zstd` or `none`"));
            Compression::Zstd
        }
    };
    let level = match parse_u64("transfer.level", env_of("transfer.level")) {
        Some(Ok(n)) => n.min(1000) as i64,
        Some(Err(m)) => {
            problem("transfer.level", m);
            DEFAULT_TRANSFER_LEVEL as i64
        }
        None => cfg.transfer.level.unwrap_or(DEFAULT_TRANSFER_LEVEL as i64),
    };
    if !(1..=19).contains(&level) {
        problem("transfer.level", format!("{level} must be between 1 (fastest) and 19 (smallest)"));
    }
    let transfer = TransferSettings { compression, level: level.clamp(1, 19) as i32 };

    let secrets_file = env_of("secrets_file").or(cfg.secrets_file.clone()).map(|s| path_of(&s));

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(Settings {
        config_path,
        base_dir,
        target,
        project,
        deploy_path,
        app_dir,
        stack_dir,
        app: AppSettings {
            health_path,
            build_command,
            output_dir,
            start_command,
            node_version,
            spa_fallback: cfg.app.spa_fallback.unwrap_or(true),
        },
        release_command,
        ssh,
        http_port,
        https_port,
        tls,
        cert_warning_days: cfg.tls.expiry_warning_days.unwrap_or(DEFAULT_CERT_WARNING_DAYS),
        build_mode,
        base_image,
        env: cfg.env,
        secrets_file,
        health: HealthSettings {
            timeout_secs: health_timeout,
            initial_backoff_ms: initial,
            max_backoff_ms: max,
            drain_secs: drain,
        },
        releases_kept,
        runtime: flags.runtime.clone().or_else(|| env_of("runtime")).or(cfg.runtime),
        transport: flags.transport.clone().or_else(|| env_of("transport")).or(cfg.transport),
        release_version,
        install_deps: flags.install_deps,
        dry_run: flags.dry_run,
        log_retention_days: cfg.logs.retention_days.unwrap_or(DEFAULT_LOG_RETENTION_DAYS),
        transfer,
    })
}

/// Variables cultivate writes into `.env` itself.
pub const RESERVED_ENV: &[&str] = &[
    "HTTP_PORT",
    "HTTPS_PORT",
    "HTTP_BIND",
    "RELEASE_VERSION",
    "IMAGE_PREFIX",
    "CERT_DIR",
    "EDGE_DIR",
    "DATABASE_TAG",
    "BACKEND_TAG",
    "FRONTEND_TAG",
    "COMPOSE_PROJECT_NAME",
    "TLS_CERT_NAME",
    "TLS_KEY_NAME",
    "HEALTHCHECK_INTERVAL",
    "RELEASE_COMMAND",
];

/// Variables the backend's container gets from cultivate's stack.
pub const BACKEND_ENV: &[&str] =
    &["NODE_ENV", "PORT", "DB_SOCKET_DIR", "DB_NAME", "DB_USER", "HEALTH_PATH", "START_COMMAND", "HOME", "PATH"];

/// Why `key` cannot be an `[env]` key or a secret: `None` when it can.
pub fn reserved(key: &str) -> Option<&'static str> {
    if RESERVED_ENV.contains(&key) || key.starts_with("COMPOSE_") || key.starts_with("DOCKER_") {
        Some("cultivate writes it into the release's .env")
    } else if BACKEND_ENV.contains(&key) {
        Some("the backend's container gets it from the stack")
    } else {
        None
    }
}

fn expand_path(s: &str, base: &Path) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    let p = PathBuf::from(s);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// A compose project name.
pub fn valid_project(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A release version, usable as an image tag and a directory name.
pub fn valid_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// An environment variable name.
pub fn valid_env_key(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses a secrets file (`KEY=VALUE` lines, `#` comments). Values are taken
/// literally (no quotes removed, no expansion), so they reach `.env` as written.
pub fn parse_secrets(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (k, v) = t.split_once('=').ok_or_else(|| format!("line {}: expected KEY=VALUE", i + 1))?;
        let k = k.trim();
        if !valid_env_key(k) {
            return Err(format!("line {}: `{k}` is not a valid variable name", i + 1));
        }
        if v.contains(['\n', '\r']) {
            return Err(format!("line {}: values cannot span lines", i + 1));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Reads and checks the secrets file: it must be mode 0600 (or stricter).
pub fn load_secrets(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs_err::metadata(path).map_err(|e| {
        crate::error::usage(format!("secrets file {}: {e}", path.display()))
            .hint("create it with KEY=VALUE lines and `chmod 600`")
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(crate::error::usage(format!(
            "secrets file {} has mode {mode:04o}; it must not be readable by group or others",
            path.display()
        ))
        .hint(format!("chmod 600 {}", path.display()))
        .into());
    }
    let text = fs_err::read_to_string(path)?;
    let secrets =
        parse_secrets(&text).map_err(|e| crate::error::usage(format!("secrets file {}: {e}", path.display())))?;
    let clashes: Vec<String> = secrets.keys().filter_map(|k| reserved(k).map(|why| format!("{k} ({why})"))).collect();
    if !clashes.is_empty() {
        return Err(crate::error::usage(format!(
            "secrets file {}: these names collide with variables cultivate sets itself: {}",
            path.display(),
            clashes.join(", ")
        ))
        .hint("rename them in the secrets file and in the application")
        .into());
    }
    Ok(secrets)
}

/// The process environment as a map.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with("CULTIVATE_")).collect()
}

/// Loads settings from `--config` (or `./cultivate.toml` when it exists), the environment and `flags`.
pub fn load(config: Option<&Path>, flags: &Overrides) -> anyhow::Result<Settings> {
    let cwd = std::env::current_dir()?;
    let path = match config {
        Some(p) => Some(p.to_path_buf()),
        None => Some(cwd.join("cultivate.toml")).filter(|p| p.exists()),
    };
    let text = match &path {
        Some(p) => Some(fs_err::read_to_string(p).map_err(|e| {
            crate::error::usage(format!("cannot read configuration: {e}"))
                .hint("write one with `cultivate init`, or pass --config FILE")
        })?),
        None => None,
    };
    let settings = resolve(path.as_deref().zip(text.as_deref()), &process_env(), flags, &cwd).map_err(|e| {
        crate::error::usage(e.to_string()).hint("fix the values named above; `cultivate config check` shows the result")
    })?;
    Ok(settings)
}

/// Connection options from settings (when loaded) and the target flags.
pub fn connect_options(flags: &TargetArgs, settings: Option<&Settings>) -> crate::session::ConnectOptions {
    let mut spec = cultivate_plugin_api::ConnectSpec::default();
    let ssh = settings.map(|s| s.ssh.clone());
    spec.identity =
        flags.identity.clone().or(ssh.as_ref().and_then(|s| s.identity.clone())).map(|p| p.display().to_string());
    spec.known_hosts =
        flags.known_hosts.clone().or(ssh.as_ref().and_then(|s| s.known_hosts.clone())).map(|p| p.display().to_string());
    spec.accept_new_host_key = flags.accept_new_host_key || ssh.as_ref().is_some_and(|s| s.accept_new_host_key);
    spec.connect_timeout_secs =
        flags.connect_timeout.or(ssh.as_ref().map(|s| s.connect_timeout)).unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    spec.keepalive_secs = ssh.as_ref().map(|s| s.keepalive).unwrap_or(DEFAULT_KEEPALIVE);
    spec.sudo = ssh.as_ref().is_some_and(|s| s.sudo);
    if let Ok(cfg) = std::env::var("CULTIVATE_SSH_CONFIG") {
        spec.options.insert("ssh_config".into(), cfg);
    }
    crate::session::ConnectOptions {
        transport: flags.transport.clone().or(settings.and_then(|s| s.transport.clone())),
        spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn resolve_text(text: &str, env: &[(&str, &str)], flags: Overrides) -> Result<Settings, ConfigErrors> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(Some((Path::new("/srv/app/cultivate.toml"), text)), &env, &flags, Path::new("/work"))
    }

    fn keys(e: &ConfigErrors) -> Vec<String> {
        e.0.iter().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn p26_defaults_are_applied() {
        let s = resolve_text("target = \"local\"\napp_dir = \"app\"", &[], Overrides::default()).unwrap();
        assert_eq!(s.project, DEFAULT_PROJECT);
        assert_eq!(s.http_port, DEFAULT_HTTP_PORT);
        assert_eq!(s.https_port, DEFAULT_HTTPS_PORT);
        assert_eq!(s.health.timeout_secs, DEFAULT_HEALTH_TIMEOUT);
        assert_eq!(s.releases_kept, DEFAULT_RELEASES_KEPT);
        assert_eq!(s.base_image, DEFAULT_BASE_IMAGE);
        assert_eq!(s.build_mode, BuildMode::Local);
        assert_eq!(s.ssh.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s.deploy_path, None);
        assert_eq!(s.tls, None);
        assert_eq!(s.app_dir, PathBuf::from("/srv/app/app"));
        assert_eq!(s.stack_dir, None);
        assert_eq!(s.app.health_path, DEFAULT_HEALTH_PATH);
        assert_eq!(s.app.start_command, DEFAULT_START_COMMAND);
        assert_eq!(s.release_command, None);
    }

    #[test]
    fn transfer_compression_and_level() {
        let base = "target = \"local\"\napp_dir = \"app\"\n";
        let s = resolve_text(base, &[], Overrides::default()).unwrap();
        assert_eq!(s.transfer, TransferSettings { compression: Compression::Zstd, level: DEFAULT_TRANSFER_LEVEL });
        let s =
            resolve_text(&format!("{base}[transfer]\ncompression = \"none\"\nlevel = 9"), &[], Overrides::default())
                .unwrap();
        assert_eq!(s.transfer, TransferSettings { compression: Compression::None, level: 9 });
        let s = resolve_text(base, &[("CULTIVATE_TRANSFER_LEVEL", "12")], Overrides::default()).unwrap();
        assert_eq!(s.transfer.level, 12);
        let e = resolve_text(&format!("{base}[transfer]\ncompression = \"lz4\"\nlevel = 0"), &[], Overrides::default())
            .unwrap_err();
        assert_eq!(keys(&e), ["transfer.compression", "transfer.level"]);
        assert!(e.to_string().contains("`lz4` is not `zstd` or `none`"), "{e}");
    }

    #[test]
    fn flags_beat_environment_beats_file() {
        let text = "target = \"ssh://file\"\napp_dir = \"app\"\n[ports]\nhttp = 81";
        let s = resolve_text(
            text,
            &[("CULTIVATE_TARGET", "ssh://env"), ("CULTIVATE_HTTP_PORT", "82")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!((s.target.as_str(), s.http_port), ("ssh://env", 82));
        let flags = Overrides { target: Some("local".into()), ..Overrides::default() };
        let s = resolve_text(text, &[("CULTIVATE_TARGET", "ssh://env")], flags).unwrap();
        assert_eq!(s.target, "local");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "project = \"Bad Name\"\n[ports]\nhttp = 0\nhttps = 70000\n[tls]\ncert = \"c.pem\"";
        let e = resolve_text(text, &[], Overrides::default()).unwrap_err();
        assert_eq!(keys(&e), ["target", "project", "app_dir", "ports.http", "ports.https", "tls.key"]);
        let shown = e.to_string();
        assert!(shown.contains("6 problems"), "{shown}");
        assert!(shown.contains("70000 is not a port number"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e =
            resolve_text("target = \"local\"\napp_dir = \"a\"\ntargett = 1", &[], Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("targett"), "{e}");
    }

    #[test]
    fn env_names_cultivate_sets_are_refused() {
        for k in ["PORT", "DB_USER", "RELEASE_VERSION", "COMPOSE_FILE", "HTTP_PORT"] {
            let e = resolve_text(
                &format!("target = \"local\"\napp_dir = \"a\"\n[env]\n{k} = \"x\""),
                &[],
                Overrides::default(),
            )
            .unwrap_err();
            assert_eq!(keys(&e), [format!("env.{k}")]);
            assert!(e.to_string().contains("collides with a variable cultivate sets itself"), "{e}");
        }
        assert!(reserved("APP_SECRET").is_none());
    }

    #[test]
    fn secrets_named_like_cultivate_variables_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.env");
        std::fs::write(&path, "OK=1\nPORT=80\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_secrets(&path).unwrap_err();
        assert!(format!("{e:#}").contains("PORT (the backend's container"), "{e:#}");
    }

    #[test]
    fn app_settings_are_checked() {
        let text = "target = \"local\"\napp_dir = \"a\"\n[app]\nhealth_path = \"health\"\noutput_dir = \"../x\"\nstart_command = \"\"\n[release]\ncommand = \"echo '1'\"";
        let e = resolve_text(text, &[], Overrides::default()).unwrap_err();
        assert_eq!(keys(&e), ["app.health_path", "app.output_dir", "app.start_command", "release.command"]);
    }

    #[test]
    fn secrets_parse_literally() {
        let s = parse_secrets("# c\nAPP_SECRET=a=b 'c' $d\n\nDB=x").unwrap();
        assert_eq!(s["APP_SECRET"], "a=b 'c' $d");
        assert!(parse_secrets("lower=1").is_err());
        assert!(parse_secrets("NOEQUALS").is_err());
    }

    const REQUIRED: [(&str, &str); 2] = [("target", "target = \"local\""), ("app_dir", "app_dir = \"app\"")];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// P25: whichever required values are missing, all of them are named, and nothing else.
        #[test]
        fn p25_required_configuration(mask in 0u8..4) {
            let text: Vec<&str> = REQUIRED.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, (_, l))| *l).collect();
            let missing: Vec<String> = REQUIRED.iter().enumerate().filter(|(i, _)| mask & (1 << i) == 0).map(|(_, (k, _))| k.to_string()).collect();
            match resolve_text(&text.join("\n"), &[], Overrides::default()) {
                Ok(_) => prop_assert!(missing.is_empty()),
                Err(e) => prop_assert_eq!(keys(&e), missing),
            }
        }

        /// P26: a port given is used; one not given takes the documented default.
        #[test]
        fn p26_port_defaults(http in proptest::option::of(1u16..), https in proptest::option::of(1u16..)) {
            let mut text = String::from("target = \"local\"\napp_dir = \"a\"\n[ports]\n");
            if let Some(h) = http { text.push_str(&format!("http = {h}\n")); }
            if let Some(h) = https { text.push_str(&format!("https = {h}\n")); }
            let want_http = http.unwrap_or(DEFAULT_HTTP_PORT);
            let want_https = https.unwrap_or(DEFAULT_HTTPS_PORT);
            match resolve_text(&text, &[], Overrides::default()) {
                Ok(s) => prop_assert_eq!((s.http_port, s.https_port), (want_http, want_https)),
                Err(e) => {
                    prop_assert_eq!(want_http, want_https);
                    prop_assert_eq!(keys(&e), vec!["ports.https".to_string()]);
                }
            }
        }

        /// A health path that passes the check never carries what would break
        /// the frontend's nginx line or the shell (and `/` plus URL-safe text passes).
        #[test]
        fn health_paths_are_safe_for_nginx(path in "\\PC{0,20}", safe in "[A-Za-z0-9/._~%=?&+-]{0,20}") {
            if health_path_ok(&path) {
                prop_assert!(path.starts_with('/'));
                let unsafe_chars = [';', '{', '}', '#', '\'', '"', '$', '`', '\\', ' ', '\t', '\n', '|'];
                prop_assert!(!path.contains(unsafe_chars), "{:?} passed", path);
            }
            let safe_path = format!("/{safe}");
            prop_assert!(health_path_ok(&safe_path));
        }

        /// No file text, environment or flag makes the loader panic.
        #[test]
        fn loader_never_panics(text in "\\PC{0,300}", port in "\\PC{0,8}", target in "\\PC{0,20}") {
            let _ = resolve_text(&text, &[("CULTIVATE_HTTP_PORT", &port), ("CULTIVATE_TARGET", &target)], Overrides::default());
        }

        /// Structured but arbitrary TOML never panics either.
        #[test]
        fn loader_never_panics_on_toml(key in "[a-z_.]{1,12}", value in "[0-9a-z\"\\[\\]{}=.-]{0,12}") {
            let _ = resolve_text(&format!("{key} = {value}\n"), &[], Overrides::default());
        }

        #[test]
        fn secrets_parser_never_panics(text in "\\PC{0,200}") {
            let _ = parse_secrets(&text);
        }
    }
}
