//! `cultivate deploy` and `cultivate rollback`.

use std::path::Path;

use anyhow::Result;

use crate::cli::{DeployArgs, RollbackArgs};
use crate::output::Printer;
use crate::settings::{self, Overrides};

/// Deploys.
pub fn deploy(printer: &Printer, config: Option<&Path>, args: &DeployArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_deploy(args))?;
    let report = crate::pipeline::deploy::run(&settings, printer)?;
    if printer.json() {
        printer.json_value(&serde_json::to_value(&report)?);
    } else if report.outcome == "deployed" {
        let timings: Vec<String> = report.timings.iter().map(|(s, t)| format!("{} {t:.1}s", s.label())).collect();
        printer.detail(&format!(
            "{} of images sent; {}",
            crate::pipeline::transfer::human_bytes(report.bytes_sent),
            timings.join(", ")
        ));
    }
    Ok(())
}

/// Rolls back.
pub fn rollback(printer: &Printer, config: Option<&Path>, args: &RollbackArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    let version = crate::pipeline::rollback::run(&settings, printer, args.to.as_deref())?;
    if printer.json() {
        printer.json_value(&serde_json::json!({ "version": version, "outcome": "rolled-back" }));
    }
    Ok(())
}
