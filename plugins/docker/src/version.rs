//! Lenient version parsing and minimum-version checks (P19).
//!
//! Shared by the docker, compose and finch plugins (the latter two include this
//! file with `#[path]`, because a plugin cdylib cannot link another plugin's
//! rlib: both would export the same root symbol).

use semver::Version;

/// Parses the version a tool prints, leniently: an optional leading `v`, then
/// `MAJOR[.MINOR[.PATCH]]`; anything after the numbers (`+dfsg1`,
/// `-0ubuntu1~22.04.1`, `-rc.1`, `, build 5becea4`) is dropped, so a distribution
/// build of 20.10.24 counts as 20.10.24. Leading zeros are accepted (`20.10.05`).
pub fn parse_lenient(text: &str) -> Option<Version> {
    let t = text.trim();
    let t = t.strip_prefix('v').or_else(|| t.strip_prefix('V')).unwrap_or(t);
    let mut parts = [0u64; 3];
    let mut rest = t;
    for (i, slot) in parts.iter_mut().enumerate() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            if i == 0 {
                return None;
            }
            break;
        }
        *slot = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
            _ => break,
        }
    }
    Some(Version::new(parts[0], parts[1], parts[2]))
}

/// Finds the first version-looking word (`1.29.2`, `v2.26.1`) in free text,
/// such as `docker-compose version 1.29.2, build unknown`.
pub fn find_version(text: &str) -> Option<Version> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| {
            let w = w.strip_prefix('v').unwrap_or(w);
            w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.')
        })
        .find_map(parse_lenient)
}

/// `Ok(found)` when `found` is at least `minimum`; otherwise a reason naming
/// both, e.g. `Docker 19.3.15 is too old: cultivate needs Docker 20.10.0 or newer`.
pub fn require_min(tool: &str, found: &str, minimum: &str) -> Result<Version, String> {
    let min = parse_lenient(minimum).unwrap_or_else(|| Version::new(0, 0, 0));
    match parse_lenient(found) {
        Some(v) if v >= min => Ok(v),
        Some(_) => Err(format!("{tool} {} is too old: cultivate needs {tool} {minimum} or newer", found.trim())),
        None => Err(format!(
            "cannot read the {tool} version from {:?}: cultivate needs {tool} {minimum} or newer",
            found.trim()
        )),
    }
}
