//! Target parsing and `~/.ssh/config` resolution.
//!
//! `ssh://[user@]host[:port]` or a bare `[user@]host[:port]` / alias is
//! resolved the way OpenSSH would: through `ssh -G` when the `ssh` client is
//! installed (so every config feature OpenSSH knows applies: Match, Include,
//! tokens, canonicalisation), through the small built-in reader below
//! otherwise (Host blocks with wildcards and negation; HostName, Port, User,
//! IdentityFile, ProxyJump, UserKnownHostsFile, HashKnownHosts; the user's
//! file first, then the system-wide `/etc/ssh/ssh_config`, as OpenSSH reads
//! them).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cultivate_plugin_api::{ErrorKind, PluginError};

/// The parts of a target as the user wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetSpec {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// One hop, resolved: where to connect and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// What the user wrote (alias or host).
    pub alias: String,
    /// The real host name or address.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// IdentityFile entries, `~` expanded, in order.
    pub identity_files: Vec<PathBuf>,
    /// True when `identity_files` came from the config, not OpenSSH's defaults.
    pub identities_configured: bool,
    /// ProxyJump hops, first hop first (unresolved, as written).
    pub proxy_jump: Vec<String>,
    /// UserKnownHostsFile (the first one).
    pub known_hosts: Option<PathBuf>,
    /// ProxyCommand, which this transport cannot run (refused with a hint).
    pub proxy_command: Option<String>,
    /// `IdentitiesOnly yes`: leave the agent out.
    pub identities_only: bool,
    /// `HashKnownHosts yes` (Debian's default in /etc/ssh/ssh_config): a newly
    /// accepted host key is recorded hashed.
    pub hash_known_hosts: bool,
}

/// Which mechanism resolved the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `ssh -G`.
    OpenSsh,
    /// The built-in reader.
    Builtin,
}

fn invalid_target(target: &str, why: &str) -> PluginError {
    PluginError::new(ErrorKind::InvalidRequest, format!("invalid ssh target `{target}`: {why}"))
        .with_hint("write the target as ssh://[user@]host[:port] or a Host alias from ~/.ssh/config")
}

/// Parses `ssh://[user@]host[:port]`, `[user@]host[:port]` or `[user@][v6]:port`.
pub fn parse_target(target: &str) -> Result<TargetSpec, PluginError> {
    let t = target.trim();
    let rest = if let Some(r) = t.strip_prefix("ssh://") {
        r
    } else if t.contains("://") {
        return Err(invalid_target(target, "only the ssh:// scheme is served by the ssh transport"));
    } else {
        t
    };
    let rest = rest.trim_end_matches('/');
    let (user, hostport) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    if let Some(u) = user {
        if u.is_empty() || u.starts_with('-') || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid_target(target, "bad user name"));
        }
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err(invalid_target(target, "unterminated [address]"));
        };
        let host = &v6[..end];
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(invalid_target(target, "unexpected text after ]")),
        };
        (host, port)
    } else if hostport.matches(':').count() == 1 {
        let (h, p) = hostport.split_once(':').unwrap_or((hostport, ""));
        (h, Some(p))
    } else {
        (hostport, None)
    };
    if host.is_empty() {
        return Err(invalid_target(target, "no host"));
    }
    if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(invalid_target(target, "bad host name"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(invalid_target(target, &format!("bad port `{p}`"))),
        },
    };
    Ok(TargetSpec { user: user.map(str::to_string), host: host.to_string(), port })
}

fn home() -> PathBuf {
    dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"))
}

fn local_user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "root".to_string())
}

/// Expands `~`, `%d`, `%u`, `%h`, `%r`, `%p`, `%%` in a path from the config.
pub fn expand_path(raw: &str, host: &str, user: &str, port: u16) -> PathBuf {
    let home = home();
    let mut s = if raw == "~" {
        home.display().to_string()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        format!("{}/{}", home.display(), rest)
    } else {
        raw.to_string()
    };
    if s.contains('%') {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('d') => out.push_str(&home.display().to_string()),
                Some('u') => out.push_str(&local_user()),
                Some('h') => out.push_str(host),
                Some('r') => out.push_str(user),
                Some('p') => out.push_str(&port.to_string()),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        s = out;
    }
    PathBuf::from(s)
}

/// The identity files OpenSSH lists when none is configured; we try the ones
/// the plugin supports, in its order.
const OPENSSH_DEFAULT_IDENTITIES: &[&str] =
    &["id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa"];

/// The plugin's default identity files, in order.
pub fn default_identity_files() -> Vec<PathBuf> {
    let dir = home().join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| dir.join(n)).collect()
}

/// Splits a ProxyJump value into hops (`none` means no jump).
fn split_jumps(v: &str) -> Vec<String> {
    if v.eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Resolves `spec` through the config at `config_file` (default `~/.ssh/config`).
pub fn resolve(spec: &TargetSpec, config_file: Option<&Path>) -> Result<(Resolved, Resolver), PluginError> {
    match resolve_with_openssh(spec, config_file) {
        Ok(Some(r)) => Ok((r, Resolver::OpenSsh)),
        Ok(None) => Ok((resolve_builtin(spec, config_file)?, Resolver::Builtin)),
        Err(e) => Err(e),
    }
}

/// `ssh -G`; `Ok(None)` when the client is not installed.
fn resolve_with_openssh(spec: &TargetSpec, config_file: Option<&Path>) -> Result<Option<Resolved>, PluginError> {
    let ssh = std::env::var_os("CULTIVATE_SSH_CLIENT").unwrap_or_else(|| "ssh".into());
    let mut cmd = Command::new(ssh);
    cmd.arg("-G");
    if let Some(f) = config_file {
        cmd.arg("-F").arg(f);
    }
    if let Some(p) = spec.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &spec.user {
        cmd.arg("-l").arg(u);
    }
    cmd.arg("--").arg(&spec.host);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PluginError::new(ErrorKind::Io, format!("cannot run `ssh -G`: {e}"))),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err.lines().filter(|l| !l.contains("Pseudo-terminal")).collect();
        return Err(PluginError::new(
            ErrorKind::InvalidRequest,
            format!("cannot resolve ssh target `{}` through ssh config: {}", spec.host, err.join("; ").trim()),
        )
        .with_hint("fix the ssh config file (check it with `ssh -G HOST`)"));
    }
    Ok(Some(parse_ssh_g(&String::from_utf8_lossy(&out.stdout), &spec.host)))
}

/// Parses the `key value` lines `ssh -G` prints.
pub fn parse_ssh_g(text: &str, alias: &str) -> Resolved {
    let mut r = Resolved { alias: alias.to_string(), host: alias.to_string(), port: 22, ..Resolved::default() };
    let mut identities = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else { continue };
        let value = value.trim();
        match key {
            "hostname" => r.host = value.to_string(),
            "port" => r.port = value.parse().unwrap_or(22),
            "user" => r.user = value.to_string(),
            "identityfile" => identities.push(value.to_string()),
            "proxyjump" => r.proxy_jump = split_jumps(value),
            "proxycommand" if !value.eq_ignore_ascii_case("none") => r.proxy_command = Some(value.to_string()),
            "identitiesonly" => r.identities_only = value.eq_ignore_ascii_case("yes"),
            "hashknownhosts" => r.hash_known_hosts = value.eq_ignore_ascii_case("yes"),
            "userknownhostsfile" => {
                r.known_hosts = value.split_whitespace().next().map(PathBuf::from);
            }
            _ => {}
        }
    }
    if r.user.is_empty() {
        r.user = local_user();
    }
    let defaults: Vec<String> = OPENSSH_DEFAULT_IDENTITIES.iter().map(|n| format!("~/.ssh/{n}")).collect();
    let only_defaults = !identities.is_empty() && identities.iter().all(|i| defaults.contains(i));
    if only_defaults || identities.is_empty() {
        r.identity_files = default_identity_files();
        r.identities_configured = false;
    } else {
        r.identity_files = identities.iter().map(|i| expand_path(i, &r.host, &r.user, r.port)).collect();
        r.identities_configured = true;
    }
    if let Some(kh) = r.known_hosts.take() {
        r.known_hosts = Some(expand_path(&kh.display().to_string(), &r.host, &r.user, r.port));
    }
    r
}

/// The built-in reader: Host blocks (wildcards, `!negation`), first value wins,
/// IdentityFile accumulates. `Match` blocks are skipped.
pub fn resolve_builtin(spec: &TargetSpec, config_file: Option<&Path>) -> Result<Resolved, PluginError> {
    let path = config_file.map(Path::to_path_buf).unwrap_or_else(|| home().join(".ssh").join("config"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config_file.is_none() => String::new(),
        Err(e) => {
            return Err(PluginError::new(ErrorKind::Io, format!("cannot read ssh config {}: {e}", path.display())))
        }
    };
    // As `ssh -F FILE` does, an explicit file replaces both user and system
    // files; otherwise the system-wide file follows the user's (first value
    // wins), behind a `Host *` so it does not continue the user's last block.
    let text = match config_file {
        Some(_) => text,
        None => match std::fs::read_to_string("/etc/ssh/ssh_config") {
            Ok(system) => format!("{text}\nHost *\n{system}"),
            Err(_) => text,
        },
    };
    Ok(resolve_builtin_text(spec, &text))
}

/// [`resolve_builtin`] on the config's text.
pub fn resolve_builtin_text(spec: &TargetSpec, text: &str) -> Resolved {
    let mut host_name: Option<String> = None;
    let mut port: Option<u16> = None;
    let mut user: Option<String> = None;
    let mut identities: Vec<String> = Vec::new();
    let mut jump: Option<String> = None;
    let mut proxy_command: Option<String> = None;
    let mut identities_only: Option<bool> = None;
    let mut known_hosts: Option<String> = None;
    let mut hash_known_hosts: Option<bool> = None;
    let mut active = true;
    let alias = spec.host.to_ascii_lowercase();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.find(|c: char| c.is_whitespace() || c == '=') {
            Some(i) => (&line[..i], line[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim()),
            None => (line, ""),
        };
        let value = value.trim_matches('"');
        match key.to_ascii_lowercase().as_str() {
            "host" => {
                let mut matched = false;
                for pat in value.split_whitespace() {
                    if let Some(neg) = pat.strip_prefix('!') {
                        if crate::known_hosts::glob_matches(&neg.to_ascii_lowercase(), &alias) {
                            matched = false;
                            break;
                        }
                    } else if crate::known_hosts::glob_matches(&pat.to_ascii_lowercase(), &alias) {
                        matched = true;
                    }
                }
                active = matched;
            }
            "match" => active = false,
            _ if !active => {}
            "hostname" => {
                host_name.get_or_insert_with(|| value.replace("%h", &spec.host));
            }
            "port" if port.is_none() => port = value.parse().ok(),
            "user" => {
                user.get_or_insert_with(|| value.to_string());
            }
            "identityfile" => identities.push(value.to_string()),
            "proxyjump" => {
                jump.get_or_insert_with(|| value.to_string());
            }
            "proxycommand" => {
                proxy_command.get_or_insert_with(|| value.to_string());
            }
            "identitiesonly" => {
                identities_only.get_or_insert(value.eq_ignore_ascii_case("yes"));
            }
            "userknownhostsfile" => {
                known_hosts.get_or_insert_with(|| value.split_whitespace().next().unwrap_or("").to_string());
            }
            "hashknownhosts" => {
                hash_known_hosts.get_or_insert(value.eq_ignore_ascii_case("yes"));
            }
            _ => {}
        }
    }
    // The command line (the target) wins over the config, as with ssh.
    let host = host_name.unwrap_or_else(|| spec.host.clone());
    let port = spec.port.or(port).unwrap_or(22);
    let user = spec.user.clone().or(user).unwrap_or_else(local_user);
    let identities_configured = !identities.is_empty();
    let identity_files = if identities_configured {
        identities.iter().map(|i| expand_path(i, &host, &user, port)).collect()
    } else {
        default_identity_files()
    };
    Resolved {
        alias: spec.host.clone(),
        proxy_jump: jump.as_deref().map(split_jumps).unwrap_or_default(),
        proxy_command: proxy_command.filter(|c| !c.eq_ignore_ascii_case("none")),
        identities_only: identities_only.unwrap_or(false),
        hash_known_hosts: hash_known_hosts.unwrap_or(false),
        known_hosts: known_hosts.filter(|k| !k.is_empty()).map(|k| expand_path(&k, &host, &user, port)),
        host,
        port,
        user,
        identity_files,
        identities_configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("ssh://deploy@example.com:2222").unwrap();
        assert_eq!((t.user.as_deref(), t.host.as_str(), t.port), (Some("deploy"), "example.com", Some(2222)));
        let t = parse_target("myalias").unwrap();
        assert_eq!((t.user, t.host.as_str(), t.port), (None, "myalias", None));
        let t = parse_target("ssh://root@[::1]:22/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(22)));
        let t = parse_target("fe80::1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fe80::1", None));
        for bad in ["", "ssh://", "http://x", "ssh://h:0", "ssh://h:99999", "ssh://-oProxyCommand=x", "@h", "a b"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_g_output() {
        let text = "user bob\nhostname 10.0.0.5\nport 2200\nidentityfile ~/.ssh/deploy_key\n\
                    proxyjump jump@bastion:22\nuserknownhostsfile /tmp/kh /tmp/kh2\nidentitiesonly yes\n";
        let r = parse_ssh_g(text, "web");
        assert_eq!((r.host.as_str(), r.port, r.user.as_str()), ("10.0.0.5", 2200, "bob"));
        assert!(r.identities_configured);
        assert!(r.identity_files[0].ends_with(".ssh/deploy_key"));
        assert_eq!(r.proxy_jump, vec!["jump@bastion:22".to_string()]);
        assert_eq!(r.known_hosts, Some(PathBuf::from("/tmp/kh")));
        assert!(r.identities_only);
        let defaults = "hostname h\nidentityfile ~/.ssh/id_rsa\nidentityfile ~/.ssh/id_ed25519\n";
        let r = parse_ssh_g(defaults, "h");
        assert!(!r.identities_configured);
        assert!(r.identity_files[0].ends_with("id_ed25519"));
    }

    proptest::proptest! {
        /// Whatever the user writes, parsing and config reading never panic.
        #[test]
        fn no_panics_on_any_input(target in "\\PC{0,40}", cfg in "(\\PC{0,30}\n){0,8}", g in "\\PC{0,80}") {
            let _ = parse_target(&target);
            let spec = TargetSpec { user: None, host: target.clone(), port: None };
            let _ = resolve_builtin_text(&spec, &cfg);
            let _ = parse_ssh_g(&g, &target);
            let _ = expand_path(&target, "h", "u", 22);
        }
    }

    #[test]
    fn builtin_reader() {
        let cfg = "Host web !web-old\n  HostName 10.1.1.1\n  Port 2201\n  User deploy\n  IdentityFile ~/.ssh/k1\n\
                   Host web*\n  Port 9999\n  IdentityFile=~/.ssh/k2\n  ProxyJump bastion\n\
                   Match host foo\n  User nobody\nHost *\n  User fallback\n";
        let r = resolve_builtin_text(&parse_target("web").unwrap(), cfg);
        assert_eq!((r.host.as_str(), r.port, r.user.as_str()), ("10.1.1.1", 2201, "deploy"));
        assert_eq!(r.identity_files.len(), 2);
        assert_eq!(r.proxy_jump, vec!["bastion".to_string()]);
        let r = resolve_builtin_text(&parse_target("other@web-old:22").unwrap(), cfg);
        assert_eq!((r.host.as_str(), r.port, r.user.as_str()), ("web-old", 22, "other"));
        // `web*` still applies; the negated first block does not.
        assert_eq!(r.identity_files.len(), 1);
        assert!(r.identity_files[0].ends_with(".ssh/k2"));
        let r = resolve_builtin_text(&parse_target("db").unwrap(), cfg);
        assert_eq!((r.host.as_str(), r.port, r.user.as_str()), ("db", 22, "fallback"));
        assert!(!r.identities_configured);
    }
}
