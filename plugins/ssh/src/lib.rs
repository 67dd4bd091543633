//! The ssh transport of `cultivate`, on russh.
//!
//! `connect` resolves the target through `~/.ssh/config` ([`config`]),
//! connects (through ProxyJump hops if configured) with timeouts and
//! keepalive, verifies the host key strictly against known_hosts
//! ([`known_hosts`]), authenticates with key files and ssh-agent
//! ([`session`]) and returns a [`connection::SshConnection`] whose commands
//! stream stdin, stdout and stderr with back-pressure.
//!
//! The plugin runs russh on its own tokio runtime ([`runtime`]); the
//! `Connection` and `Channel` methods block on it.

pub mod config;
pub mod connection;
pub mod known_hosts;
pub mod runtime;
pub mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cultivate_plugin_api::{ConnectSpec, Connection, Host, Manifest, Plugin, PluginError, PluginKind};

pub use connection::{command_line, SshChannel, SshConnection};

/// `ConnectSpec::options` key: an ssh config file used instead of `~/.ssh/config` (`ssh -F`).
pub const OPT_SSH_CONFIG: &str = "ssh_config";
/// `ConnectSpec::options` key: `no` to leave ssh-agent out of authentication.
pub const OPT_AGENT: &str = "agent";

/// The ssh transport plugin.
#[derive(Debug, Default, Clone)]
pub struct SshPlugin;

impl SshPlugin {
    pub fn new() -> Self {
        SshPlugin
    }

    /// Connects without a host (what `Plugin::connect` does).
    pub fn open(&self, spec: &ConnectSpec) -> Result<SshConnection, PluginError> {
        let (hops, details) = plan(spec)?;
        let sessions = runtime::block(session::connect_chain(hops))??;
        SshConnection::new(sessions, spec.sudo, details)
    }
}

fn home() -> PathBuf {
    dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"))
}

/// Resolves the target and its ProxyJump hops into what to connect to, first hop first.
pub fn plan(spec: &ConnectSpec) -> Result<(Vec<session::HopSpec>, BTreeMap<String, String>), PluginError> {
    let target = config::parse_target(&spec.target)?;
    let config_file = spec.options.get(OPT_SSH_CONFIG).filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(f) = &config_file {
        if !f.is_file() {
            return Err(PluginError::invalid(format!("ssh config file {} does not exist", f.display())));
        }
    }
    let (resolved, resolver) = config::resolve(&target, config_file.as_deref())?;
    let use_agent = !matches!(
        spec.options.get(OPT_AGENT).map(|s| s.to_ascii_lowercase()).as_deref(),
        Some("no" | "false" | "0" | "off")
    );
    let connect_timeout =
        Duration::from_secs(if spec.connect_timeout_secs == 0 { 10 } else { spec.connect_timeout_secs });
    let keepalive = Duration::from_secs(spec.keepalive_secs);
    let explicit_identity =
        spec.identity.as_ref().filter(|s| !s.is_empty()).map(|s| config::expand_path(s, "", "", 22));
    let known_hosts_for = |r: &config::Resolved| -> PathBuf {
        match &spec.known_hosts {
            Some(k) if !k.is_empty() => config::expand_path(k, "", "", 22),
            _ => r.known_hosts.clone().unwrap_or_else(|| home().join(".ssh").join("known_hosts")),
        }
    };
    let hop_for = |r: &config::Resolved| session::HopSpec {
        host: r.host.clone(),
        port: r.port,
        user: r.user.clone(),
        // With --identity, only that key (and the agent): the configured or
        // default files are not tried, so what is used is predictable.
        identity_files: if explicit_identity.is_some() && !r.identities_configured {
            Vec::new()
        } else {
            r.identity_files.clone()
        },
        use_agent: use_agent && !r.identities_only,
        explicit_identity: explicit_identity.clone(),
        known_hosts: known_hosts_for(r),
        accept_new_host_key: spec.accept_new_host_key,
        hash_known_hosts: r.hash_known_hosts,
        connect_timeout,
        keepalive,
    };
    if let (Some(cmd), true) = (&resolved.proxy_command, resolved.proxy_jump.is_empty()) {
        return Err(PluginError::invalid(format!(
            "the ssh config sets ProxyCommand `{cmd}` for {}, which the ssh transport cannot run",
            resolved.alias
        ))
        .with_hint("use ProxyJump [user@]jumphost[:port] in the ssh config instead"));
    }
    let mut hops = Vec::new();
    for jump in &resolved.proxy_jump {
        let j = config::parse_target(jump)?;
        let (r, _) = config::resolve(&j, config_file.as_deref())?;
        hops.push(hop_for(&r));
    }
    hops.push(hop_for(&resolved));
    let mut details = BTreeMap::new();
    details.insert(
        "ssh_config".to_string(),
        match resolver {
            config::Resolver::OpenSsh => "ssh -G".to_string(),
            config::Resolver::Builtin => "built-in reader".to_string(),
        },
    );
    details.insert("alias".to_string(), resolved.alias.clone());
    Ok((hops, details))
}

impl Plugin for SshPlugin {
    fn manifest(&self) -> Manifest {
        let mut m = cultivate_plugin_api::manifest("ssh", env!("CARGO_PKG_VERSION"), &[PluginKind::Transport]);
        m.description = "runs commands and copies files on a remote host over SSH (russh)".to_string();
        m.schemes = vec!["ssh".to_string()];
        m.priority = 10;
        m
    }

    fn connect(&self, host: &Host, spec: &ConnectSpec) -> Result<Box<dyn Connection>, PluginError> {
        let conn = self.open(spec)?;
        let info = conn.info();
        host.debug(&format!(
            "ssh: connected to {} ({} {}, cipher {})",
            info.peer,
            info.details.get("host_key_type").map(String::as_str).unwrap_or("?"),
            info.details.get("host_key_fingerprint").map(String::as_str).unwrap_or("?"),
            info.details.get("cipher").map(String::as_str).unwrap_or("?"),
        ));
        if let Some(rec) = info.details.get("host_key_recorded") {
            host.warn(&format!("ssh: recorded the new host key of {} in {rec}", info.peer));
        }
        Ok(Box::new(conn))
    }
}

cultivate_plugin_api::export_plugin!(SshPlugin::new());
