//! Targets: where a deploy goes, as the user writes it.

use std::collections::BTreeMap;

use cultivate_plugin_api::TargetInfo;

use crate::error::{usage, UserError};

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This machine.
    Local,
    /// A host over SSH: the string as given (`ssh://…` or an ssh-config alias).
    Ssh(String),
}

impl Target {
    /// Parses `local`, `ssh://[user@]host[:port]`, or a bare host or alias.
    pub fn parse(s: &str) -> Result<Target, UserError> {
        let s = s.trim();
        let bad = |why: &str| {
            usage(format!("target `{s}` is not valid: {why}"))
                .hint("write `local`, `ssh://[user@]host[:port]`, or a host alias from ~/.ssh/config")
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s == "local" {
            return Ok(Target::Local);
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let hostport = rest.rsplit_once('@').map(|(user, hp)| (Some(user), hp)).unwrap_or((None, rest));
            if let (Some(user), _) = hostport {
                if user.is_empty() || user.contains([':', '/', ' ']) {
                    return Err(bad("the user name is empty or has `:`, `/` or a space"));
                }
            }
            let hp = hostport.1;
            let (host, port) = if let Some(inner) = hp.strip_prefix('[') {
                let (h, after) = inner.split_once(']').ok_or_else(|| bad("an IPv6 address needs a closing `]`"))?;
                (h, after.strip_prefix(':'))
            } else {
                match hp.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hp, None),
                }
            };
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(bad("the host name is empty or has `/`, `@` or a space"));
            }
            if let Some(p) = port {
                match p.parse::<u16>() {
                    Ok(n) if n > 0 => {}
                    _ => return Err(bad(&format!("port `{p}` is not a number from 1 to 65535"))),
                }
            }
            return Ok(Target::Ssh(s.to_string()));
        }
        if s.contains("://") {
            return Err(bad("only `ssh://` URLs are supported"));
        }
        if s.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("a host alias cannot contain spaces or `/`"));
        }
        Ok(Target::Ssh(s.to_string()))
    }

    /// The transport scheme this target needs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::Ssh(_) => "ssh",
        }
    }

    /// The target as written.
    pub fn as_str(&self) -> &str {
        match self {
            Target::Local => "local",
            Target::Ssh(s) => s,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shell snippet that describes a target; parsed by [`parse_target_info`].
/// macOS has no `/etc/os-release`: `sw_vers` stands in for it there.
pub const PROBE_SCRIPT: &str = "uname -s; uname -m; echo \"${HOME:-}\"; id -un 2>/dev/null || echo; echo ---; \
                                cat /etc/os-release 2>/dev/null || \
                                { v=$(sw_vers -productVersion 2>/dev/null) && \
                                printf 'NAME=macOS\\nID=macos\\nVERSION_ID=%s\\nPRETTY_NAME=\"macOS %s\"\\n' \"$v\" \"$v\"; } || true";

/// Parses the output of [`PROBE_SCRIPT`].
pub fn parse_target_info(out: &str) -> TargetInfo {
    let (head, release) = out.split_once("---\n").or_else(|| out.split_once("---")).unwrap_or((out, ""));
    let mut lines = head.lines().map(str::trim);
    let os = lines.next().unwrap_or("").to_string();
    let arch = lines.next().unwrap_or("").to_string();
    let home = lines.next().filter(|s| !s.is_empty()).map(str::to_string);
    let user = lines.next().filter(|s| !s.is_empty()).map(str::to_string);
    TargetInfo { os, arch, os_release: parse_os_release(release), home, user }
}

/// Parses `/etc/os-release` (KEY=value, values optionally quoted).
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("local").unwrap(), Target::Local);
        assert_eq!(Target::parse("ssh://root@10.0.0.1:2222").unwrap().scheme(), "ssh");
        assert_eq!(Target::parse("ssh://[::1]:22").unwrap().scheme(), "ssh");
        assert_eq!(Target::parse("prod-web").unwrap(), Target::Ssh("prod-web".into()));
        for bad in ["", "ssh://", "ssh://host:0", "ssh://host:99999", "ssh://@host", "http://x", "a b", "ssh://h:x"] {
            let err = Target::parse(bad).unwrap_err();
            assert!(err.message.contains("is not valid"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn target_info_from_debian() {
        let out = "Linux\nx86_64\n/root\nroot\n---\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        let info = parse_target_info(out);
        assert_eq!(info.os, "Linux");
        assert_eq!(info.arch, "x86_64");
        assert_eq!(info.home.as_deref(), Some("/root"));
        assert_eq!(info.os_release["VERSION_ID"], "12");
        assert!(info.is_debian_like());
    }

    #[test]
    fn target_info_from_macos() {
        let info = parse_target_info("Darwin\narm64\n/Users/me\nme\n---\n");
        assert_eq!(info.os_key(), "darwin");
        assert!(info.os_release.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn target_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = Target::parse(&s);
        }

        #[test]
        fn target_info_parsing_never_panics(s in "\\PC{0,200}") {
            let _ = parse_target_info(&s);
        }

        #[test]
        fn ssh_urls_with_valid_ports_parse(user in "[a-z][a-z0-9]{0,7}", host in "[a-z][a-z0-9.-]{0,20}", port in 1u16..) {
            let t = format!("ssh://{user}@{host}:{port}");
            prop_assert_eq!(Target::parse(&t).unwrap(), Target::Ssh(t.clone()));
        }
    }
}
