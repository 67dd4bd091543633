//! The secrets a command can know of, registered for redaction ([`crate::redact`])
//! before anything could show them, whichever command runs.
//!
//! 1. The secrets file, when configured: before connecting.
//! 2. Right after connecting: the values of the `.env` keys of every kept
//!    release that came from secrets. `release.json` names those keys
//!    (`secret_keys`, never the values); a release recorded before it existed
//!    falls back to the `# secrets` section its `.env` was written with.
//!    The `.env` files are read with private output: never logged.

use std::collections::BTreeMap;
use std::path::Path;

use cultivate_plugin_api::ExecRequest;

use crate::output::Printer;
use crate::pipeline::release::{Layout, ReleaseRecord};
use crate::session::Session;
use crate::settings::Settings;

/// Registers the values of a secrets file.
pub fn register_file(path: &Path) -> anyhow::Result<()> {
    crate::redact::register(crate::settings::load_secrets(path)?.into_values());
    Ok(())
}

/// Registers what `settings` names: the secrets file. One that cannot be read
/// is a warning here; the command that needs its values, `deploy`, fails on it.
pub fn register_configured(settings: &Settings, printer: &Printer) {
    if let Some(path) = &settings.secrets_file {
        if let Err(e) = register_file(path) {
            printer.warn(&format!(
                "{e:#}; its values are hidden from output only where a release on the target holds them"
            ));
        }
    }
}

/// Marker lines of the read script's output ([`state::script`]).
use crate::pipeline::state::{self, ENV_MARK, RELEASE_MARK};

/// Registers the secret values of the `.env` of every release kept under
/// `layout`, and returns what the same command read of the deployment
/// ([`state`]: `current`, the stop marker, the records), so that a
/// read-only command needs no other read. `None` when it could not be read.
pub fn register_from_target(session: &Session, layout: &Layout) -> Option<state::TargetState> {
    let script = state::script(layout, true);
    match session.run(&ExecRequest::shell(script).private_output().timeout_secs(60)) {
        Ok(out) if out.success() => Some(register_from_output(&out.stdout)),
        Ok(out) => {
            tracing::warn!("could not read the releases' .env files (status {})", out.status);
            None
        }
        Err(e) => {
            tracing::warn!("could not read the releases' .env files: {e}");
            None
        }
    }
}

/// Registers the secrets in the output of [`state::script`] with `.env`s
/// (read by [`register_from_target`], or in `connect`'s first command), and
/// returns the state it read.
pub fn register_from_output(out: &str) -> state::TargetState {
    let values = secret_values(out);
    tracing::debug!("{} secret values of the releases on the target registered for redaction", values.len());
    crate::redact::register(values);
    let state = state::parse(out);
    tracing::debug!(
        "deployment on the target: current {:?}, releases {:?}, stopped {}, lock directory {}",
        state.current,
        state.releases,
        state.stopped,
        if state.locked { "present" } else { "absent" }
    );
    state
}

/// The secret values in the output of the read script: per release, the
/// values of the keys its record names, or of its `.env`'s `# secrets` section.
pub fn secret_values(output: &str) -> Vec<String> {
    let mut records: BTreeMap<&str, String> = BTreeMap::new();
    let mut envs: BTreeMap<&str, String> = BTreeMap::new();
    let mut current: Option<(&str, bool)> = None;
    for line in output.lines() {
        if let Some(v) = line.strip_prefix(RELEASE_MARK) {
            current = Some((v, false));
        } else if let Some(v) = line.strip_prefix(ENV_MARK) {
            current = Some((v, true));
        } else if let Some((v, env)) = current {
            let map = if env { &mut envs } else { &mut records };
            let text = map.entry(v).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    let mut values = Vec::new();
    for (version, env) in &envs {
        let keys = records
            .get(version)
            .and_then(|r| serde_json::from_str::<ReleaseRecord>(r).ok())
            .and_then(|r| r.secret_keys);
        values.extend(env_secret_values(env, keys.as_deref()));
    }
    values
}

/// The values of `keys` in a `.env`; without `keys`, those of its `# secrets` section.
pub fn env_secret_values(env: &str, keys: Option<&[String]>) -> Vec<String> {
    let mut in_secrets = false;
    let mut values = Vec::new();
    for line in env.lines() {
        if let Some(section) = line.strip_prefix("# ") {
            in_secrets = section.trim() == "secrets";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let wanted = match keys {
            Some(keys) => keys.iter().any(|x| x == k.trim()),
            None => in_secrets,
        };
        if wanted {
            values.push(unquote(v).to_string());
        }
    }
    values
}

/// A value as [`crate::pipeline::envfile::quote_value`] wrote it.
fn unquote(v: &str) -> &str {
    v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')).unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::envfile;
    use proptest::prelude::*;

    #[test]
    fn record_keys_pick_values_and_old_releases_fall_back_to_the_section() {
        let out = format!(
            "\n{RELEASE_MARK}20260101-000000\n{{\"version\":\"20260101-000000\",\"created_at\":\"x\",\"images\":{{}},\
             \"files\":{{}},\"fingerprint\":\"f\",\"status\":\"healthy\",\"secret_keys\":[\"API_KEY\"]}}\n\
             \n{ENV_MARK}20260101-000000\n# cultivate\nHTTP_PORT=80\n# application environment\nAPI_KEY=from-env-not-secret\n\
             # secrets\nAPI_KEY='new key!'\nOTHER=x\n\
             \n{RELEASE_MARK}20250101-000000\n{{not json\n\
             \n{ENV_MARK}20250101-000000\n# secrets\nAPP_SECRET=old-secret-1\n"
        );
        let values = secret_values(&out);
        assert!(values.contains(&"new key!".to_string()), "{values:?}");
        assert!(values.contains(&"old-secret-1".to_string()), "{values:?}");
        assert!(!values.contains(&"x".to_string()), "{values:?}");
        assert!(!values.contains(&"80".to_string()), "{values:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every secret rendered into a `.env` is read back, quoted or not.
        #[test]
        fn rendered_secrets_are_read_back(value in "[a-zA-Z0-9 _./:@+,%$\"#-]{1,30}") {
            let secrets = BTreeMap::from([("APP_SECRET".to_string(), value.clone())]);
            let env = BTreeMap::from([("GREETING".to_string(), "hello".to_string())]);
            let text = envfile::render("v1", &BTreeMap::new(), &env, &secrets).unwrap();
            prop_assert_eq!(env_secret_values(&text, None), vec![value.clone()]);
            prop_assert_eq!(env_secret_values(&text, Some(&["APP_SECRET".to_string()])), vec![value]);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,300}") {
            let _ = secret_values(&s);
        }
    }
}
