//! `cultivate config check` and `cultivate init`.

use std::path::Path;

use anyhow::Result;

use crate::cli::{InitArgs, TargetArgs};
use crate::error::usage;
use crate::output::Printer;
use crate::settings::{self, Overrides};

/// Prints the resolved settings, secrets redacted, after checking them.
pub fn check(printer: &Printer, config: Option<&Path>, args: &TargetArgs) -> Result<()> {
    let s = settings::load(config, &Overrides::from_target(args))?;
    let mut value = serde_json::to_value(&s)?;
    if let Some(path) = &s.secrets_file {
        let secrets = settings::load_secrets(path)?;
        value["secrets"] = secrets.keys().map(|k| (k.clone(), serde_json::Value::String("***".into()))).collect();
    }
    if printer.json() {
        printer.json_value(&value);
    } else {
        strip_nulls(&mut value);
        printer.data(&toml::to_string_pretty(&value).unwrap_or_else(|_| value.to_string()));
        printer.success("configuration is valid");
    }
    Ok(())
}

/// TOML has no null: unset optional settings are left out of the human view.
fn strip_nulls(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = v {
        map.retain(|_, x| !x.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

/// The commented example written by `cultivate init`.
pub const EXAMPLE: &str = include_str!("../../../docs/cultivate.example.toml");

/// Writes a commented `cultivate.toml`.
pub fn init(printer: &Printer, args: &InitArgs) -> Result<()> {
    if args.path.exists() && !args.force {
        return Err(usage(format!("{} already exists", args.path.display()))
            .hint("pass --force to overwrite it")
            .into());
    }
    fs_err::write(&args.path, EXAMPLE)?;
    printer.success(&format!("wrote {}", args.path.display()));
    printer.detail("put secrets in the file named by `secrets_file` (mode 0600), never in cultivate.toml");
    Ok(())
}
