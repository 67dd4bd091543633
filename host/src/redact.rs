//! Secret redaction for everything cultivate prints or logs.
//!
//! Secret values (from the secrets file) are registered once, as soon as the
//! settings are read; every log line and message passes through [`apply`].

use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers values that must never be shown. Values shorter than 4
/// characters are not registered: they would mask ordinary text.
pub fn register<I: IntoIterator<Item = String>>(values: I) {
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for v in values {
        if v.len() >= 4 && !secrets.contains(&v) {
            secrets.push(v);
        }
    }
    // Longest first so a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by `***`.
pub fn apply(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_longest_first() {
        register(["hunter2-long".to_string(), "hunter2".to_string(), "ab".to_string()]);
        assert_eq!(apply("pw=hunter2-long and hunter2, ab"), "pw=*** and ***, ab");
    }
}
