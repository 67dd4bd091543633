//! OpenSSH `known_hosts` files: lookup (plain, wildcard, negated, hashed
//! `|1|salt|hash` and `[host]:port` entries, `@revoked` markers) and
//! recording a newly accepted key, hashed when the ssh config says
//! `HashKnownHosts yes` (OpenSSH's format: `|1|base64(salt)|base64(HMAC-SHA1
//! keyed with a random 20-byte salt, over the entry name)`).
//!
//! russh ships a lookup too, but it fails the whole file on one malformed
//! line, ignores markers and wildcards, and miscounts line numbers after
//! comments; the line number is part of our error message, so we read the
//! file ourselves.

use std::io::Write;
use std::path::Path;

use data_encoding::BASE64_MIME;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;

/// What known_hosts says about a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is recorded for this host.
    Known { line: usize },
    /// Nothing is recorded for this host.
    Unknown,
    /// Another key is recorded for this host (the first such entry).
    Changed { line: usize, recorded_type: String, recorded_fingerprint: String },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

/// The name a host is recorded under: `host`, or `[host]:port` off port 22.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:…` fingerprint of a key, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// One parsed line of a known_hosts file.
struct Entry<'a> {
    line: usize,
    revoked: bool,
    hosts: &'a str,
    key: PublicKey,
}

fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let mut hosts = fields.next()?;
        let mut revoked = false;
        if let Some(marker) = hosts.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                // Certificate authorities vouch for certificates, which we do not request.
                _ => return None,
            }
            hosts = fields.next()?;
        }
        let _key_type = fields.next()?;
        let blob = fields.next()?;
        let key = russh::keys::parse_public_key_base64(blob).ok()?;
        Some(Entry { line: i + 1, revoked, hosts, key })
    })
}

/// True when the comma-separated `patterns` field of an entry names `name`.
/// A matching negated pattern (`!pat`) vetoes the entry.
pub fn hosts_field_matches(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',').filter(|p| !p.is_empty()) {
        if pattern.starts_with("|1|") {
            if hashed_matches(pattern, name) {
                matched = true;
            }
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if glob_matches(&negated.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
                return false;
            }
        } else if glob_matches(&pattern.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
            matched = true;
        }
    }
    matched
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hashed_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (BASE64_MIME.decode(salt.as_bytes()), BASE64_MIME.decode(hash.as_bytes())) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes()).verify_slice(&hash).is_ok()
}

/// Shell-style `*` and `?` matching, as in ssh patterns.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}

/// Checks `key` presented by `host:port` against the file at `path` (a
/// missing file knows nothing).
pub fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verdict::Unknown),
        Err(e) => return Err(e),
    };
    Ok(check_text(&text, host, port, key))
}

/// [`check`] on the file's contents.
pub fn check_text(text: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    let name = host_entry_name(host, port);
    let mut known = None;
    let mut changed_same_type = None;
    let mut changed_other_type = None;
    for entry in entries(text) {
        let same_key = entry.key.key_data() == key.key_data();
        if entry.revoked {
            if same_key && hosts_field_matches(entry.hosts, &name) {
                return Verdict::Revoked { line: entry.line };
            }
            continue;
        }
        if !hosts_field_matches(entry.hosts, &name) {
            continue;
        }
        if same_key {
            known.get_or_insert(entry.line);
        } else if same_family(&entry.key.algorithm(), &key.algorithm()) {
            changed_same_type.get_or_insert((entry.line, entry.key));
        } else {
            changed_other_type.get_or_insert((entry.line, entry.key));
        }
    }
    if let Some(line) = known {
        return Verdict::Known { line };
    }
    match changed_same_type.or(changed_other_type) {
        Some((line, old)) => Verdict::Changed {
            line,
            recorded_type: old.algorithm().as_str().to_string(),
            recorded_fingerprint: fingerprint(&old),
        },
        None => Verdict::Unknown,
    }
}

/// Key algorithms recorded for `host:port`, first seen first, so the
/// handshake can ask for a key type we can verify.
pub fn recorded_algorithms(path: &Path, host: &str, port: u16) -> Vec<Algorithm> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let name = host_entry_name(host, port);
    let mut out: Vec<Algorithm> = Vec::new();
    for entry in entries(&text) {
        if !entry.revoked && hosts_field_matches(entry.hosts, &name) {
            let alg = entry.key.algorithm();
            if !out.iter().any(|a| same_family(a, &alg)) {
                out.push(alg);
            }
        }
    }
    out
}

/// The hashed form of an entry name, `|1|salt|hash`, with the given salt.
pub fn hash_entry_name(name: &str, salt: &[u8; 20]) -> String {
    // HMAC accepts a key of any length; 20 bytes cannot fail.
    let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt).map(|m| m.chain_update(name.as_bytes()));
    let hash = mac.map(|m| m.finalize().into_bytes().to_vec()).unwrap_or_default();
    format!("|1|{}|{}", data_encoding::BASE64.encode(salt), data_encoding::BASE64.encode(&hash))
}

/// A fresh salt from the kernel, as ssh-keygen takes one per entry.
fn random_salt() -> std::io::Result<[u8; 20]> {
    use std::io::Read;
    let mut salt = [0u8; 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read /dev/urandom for a known_hosts salt: {e}")))?;
    Ok(salt)
}

/// Appends `host:port key` to the file (the name hashed when `hashed`),
/// creating it (and its directory) if needed. Returns the line number of the
/// new entry.
pub fn learn(path: &Path, host: &str, port: u16, key: &PublicKey, hashed: bool) -> std::io::Result<usize> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let existing = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let bare = PublicKey::new(key.key_data().clone(), "");
    let encoded = bare.to_openssh().map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut line = String::new();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        line.push('\n');
    }
    let name = host_entry_name(host, port);
    line.push_str(&if hashed { hash_entry_name(&name, &random_salt()?) } else { name });
    line.push(' ');
    line.push_str(encoded.trim());
    line.push('\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    let before = existing.iter().filter(|&&b| b == b'\n').count();
    let extra = usize::from(!existing.is_empty() && !existing.ends_with(b"\n"));
    Ok(before + extra + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(b: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b).unwrap()
    }

    proptest::proptest! {
        /// Any file content, host name and pattern: no panic.
        #[test]
        fn no_panics_on_any_input(text in "(\\PC{0,60}\n){0,6}", host in "\\PC{0,20}", pat in "\\PC{0,20}", port in 0u16..) {
            let _ = check_text(&text, &host, port, &key(ED));
            let _ = glob_matches(&pat, &host);
            let _ = hosts_field_matches(&pat, &host);
        }
    }

    #[test]
    fn glob() {
        assert!(glob_matches("*.example.com", "a.example.com"));
        assert!(glob_matches("host?", "host1"));
        assert!(!glob_matches("host?", "host"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn plain_port_and_negated_entries() {
        let text = format!(
            "# comment\n\nexample.com ssh-ed25519 {ED}\n[example.com]:2222 ssh-ed25519 {ED2}\n*.corp,!bad.corp ssh-ed25519 {ED}\n"
        );
        assert_eq!(check_text(&text, "example.com", 22, &key(ED)), Verdict::Known { line: 3 });
        assert_eq!(check_text(&text, "example.com", 2222, &key(ED2)), Verdict::Known { line: 4 });
        match check_text(&text, "example.com", 2222, &key(ED)) {
            Verdict::Changed { line: 4, .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(check_text(&text, "good.corp", 22, &key(ED)), Verdict::Known { line: 5 });
        assert_eq!(check_text(&text, "bad.corp", 22, &key(ED)), Verdict::Unknown);
        assert_eq!(check_text(&text, "other", 22, &key(ED)), Verdict::Unknown);
    }

    #[test]
    fn hashed_entries() {
        // Made by `ssh-keygen -H` for "[127.0.0.1]:2222".
        let salt = [7u8; 20];
        let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt).unwrap().chain_update(b"[127.0.0.1]:2222");
        let hash = mac.finalize().into_bytes();
        let line = format!(
            "|1|{}|{} ssh-ed25519 {ED}\n",
            data_encoding::BASE64.encode(&salt),
            data_encoding::BASE64.encode(&hash)
        );
        assert_eq!(check_text(&line, "127.0.0.1", 2222, &key(ED)), Verdict::Known { line: 1 });
        assert_eq!(check_text(&line, "127.0.0.1", 22, &key(ED)), Verdict::Unknown);
    }

    #[test]
    fn revoked_and_garbage_lines() {
        let text =
            format!("garbage\nhost ssh-ed25519 !!!notbase64\n@revoked * ssh-ed25519 {ED}\nhost ssh-ed25519 {ED}\n");
        assert_eq!(check_text(&text, "host", 22, &key(ED)), Verdict::Revoked { line: 3 });
        assert_eq!(check_text(&text, "host", 22, &key(ED2)).clone(), {
            let v = check_text(&text, "host", 22, &key(ED2));
            assert!(matches!(v, Verdict::Changed { line: 4, .. }));
            v
        });
    }

    #[test]
    fn learn_appends_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        assert_eq!(learn(&path, "h", 2200, &key(ED), false).unwrap(), 1);
        std::fs::write(&path, format!("{}no-newline", std::fs::read_to_string(&path).unwrap())).unwrap();
        assert_eq!(learn(&path, "h2", 22, &key(ED2), false).unwrap(), 3);
        assert_eq!(check(&path, "h", 2200, &key(ED)).unwrap(), Verdict::Known { line: 1 });
        assert_eq!(check(&path, "h2", 22, &key(ED2)).unwrap(), Verdict::Known { line: 3 });
    }

    /// A hashed line we write is found by OpenSSH (`ssh-keygen -F`) and by
    /// our reader, under port 22 and `[host]:port`; the name is not in the file.
    #[test]
    fn hashed_lines_are_read_by_openssh_and_by_us() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        assert_eq!(learn(&path, "target.example", 22, &key(ED), true).unwrap(), 1);
        assert_eq!(learn(&path, "10.0.0.7", 2222, &key(ED2), true).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("target.example") && !text.contains("10.0.0.7"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.starts_with("|1|")), "{text}");
        assert_ne!(lines[0].split('|').nth(2), lines[1].split('|').nth(2), "a salt per entry");
        assert_eq!(check(&path, "target.example", 22, &key(ED)).unwrap(), Verdict::Known { line: 1 });
        assert_eq!(check(&path, "10.0.0.7", 2222, &key(ED2)).unwrap(), Verdict::Known { line: 2 });
        assert_eq!(check(&path, "10.0.0.7", 22, &key(ED2)).unwrap(), Verdict::Unknown);

        for (name, line) in [("target.example", 1), ("[10.0.0.7]:2222", 2)] {
            let out = match std::process::Command::new("ssh-keygen").arg("-F").arg(name).arg("-f").arg(&path).output() {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
                    eprintln!("skipped the OpenSSH half: ssh-keygen is not installed");
                    return;
                }
                Err(e) => panic!("cannot run ssh-keygen: {e}"),
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "ssh-keygen -F {name}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
            assert!(stdout.contains(&format!("found: line {line}")), "{stdout}");
            assert!(stdout.contains(lines[line - 1]), "{stdout}");
        }
        let out =
            std::process::Command::new("ssh-keygen").args(["-F", "other.example", "-f"]).arg(&path).output().unwrap();
        assert!(!out.status.success(), "ssh-keygen found an entry for a host never recorded");
    }

    #[test]
    fn hash_known_hosts_is_read_from_the_config() {
        let spec = crate::config::TargetSpec { host: "t".into(), ..Default::default() };
        assert!(crate::config::resolve_builtin_text(&spec, "Host *\n  HashKnownHosts yes\n").hash_known_hosts);
        assert!(
            !crate::config::resolve_builtin_text(&spec, "Host t\n HashKnownHosts no\nHost *\n HashKnownHosts yes\n")
                .hash_known_hosts
        );
        assert!(!crate::config::resolve_builtin_text(&spec, "").hash_known_hosts);
        assert!(crate::config::parse_ssh_g("hostname t\nhashknownhosts yes\n", "t").hash_known_hosts);
        assert!(!crate::config::parse_ssh_g("hostname t\nhashknownhosts no\n", "t").hash_known_hosts);
    }
}
