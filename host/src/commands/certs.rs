//! `cultivate certs check` and `cultivate certs renew`.

use std::path::Path;

use anyhow::{Context, Result};
use cultivate_plugin_api::ops;

use crate::cli::{CertFiles, RenewArgs};
use crate::error::usage;
use crate::output::Printer;
use crate::settings::{self, Overrides, TlsSettings};

fn files(args: &CertFiles, settings: Option<&settings::Settings>) -> Result<TlsSettings> {
    let from_settings = settings.and_then(|s| s.tls.clone());
    match (&args.cert, &args.key, from_settings) {
        (Some(c), Some(k), _) => Ok(TlsSettings { cert: c.clone(), key: k.clone() }),
        (None, None, Some(t)) => Ok(t),
        (Some(c), None, Some(t)) => Ok(TlsSettings { cert: c.clone(), key: t.key }),
        (None, Some(k), Some(t)) => Ok(TlsSettings { cert: t.cert, key: k.clone() }),
        _ => Err(usage("no certificate given")
            .hint("pass --cert FILE --key FILE, or set tls.cert and tls.key in cultivate.toml")
            .into()),
    }
}

/// Validates the certificate and key (P14).
pub fn check(printer: &Printer, config: Option<&Path>, args: &CertFiles) -> Result<()> {
    let settings = settings::load(config, &Overrides::default()).ok();
    let tls = files(args, settings.as_ref())?;
    let days = settings.as_ref().map(|s| s.cert_warning_days).unwrap_or(settings::DEFAULT_CERT_WARNING_DAYS);
    let report = crate::certs::check_files(&tls.cert, &tls.key, days)
        .map_err(|e| usage(format!("the certificate is not usable: {e}")))?;
    if printer.json() {
        printer.json_value(&serde_json::json!({
            "subject": report.subject, "days_remaining": report.days_remaining,
            "key_type": report.key_type, "chain_len": report.chain_len, "warnings": report.warnings,
        }));
    } else {
        for w in &report.warnings {
            printer.warn(w);
        }
        printer.success(&format!(
            "{} and {} belong together; {} is valid for {} more days",
            tls.cert.display(),
            tls.key.display(),
            report.subject,
            report.days_remaining
        ));
    }
    Ok(())
}

/// Uploads a new certificate into the current release and reloads nginx, with no rebuild (P15).
pub fn renew(printer: &Printer, config: Option<&Path>, args: &RenewArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    let tls = files(&args.files, Some(&settings))?;
    for w in crate::certs_check::check_pair(&tls, settings.cert_warning_days)? {
        printer.warn(&w);
    }
    let mut ctx = crate::pipeline::connect(&settings, printer, false)?;
    ctx.lock("certificate renewal")?;
    let result = (|| {
        let current =
            ctx.current_version()?.context("nothing is deployed yet: deploy first, with tls.cert and tls.key set")?;
        let dir = format!("{}/certs", ctx.layout.release(&current));
        ctx.status(&format!("installing the certificate in release {current}"));
        let (cert, key) = (fs_err::read(&tls.cert)?, fs_err::read(&tls.key)?);
        // The release keeps its copy (a rollback restores it); nginx reads CERT_DIR.
        for dir in [dir.clone(), ctx.layout.certs()] {
            ctx.session.put_file(&format!("{dir}/fullchain.pem"), 0o644, &cert)?;
            ctx.session.put_file(&format!("{dir}/privkey.pem"), 0o600, &key)?;
        }
        let req = ops::StackExecRequest {
            stack: ctx.stack_ref(&current),
            service: "frontend".into(),
            argv: vec!["cultivate-tls".into(), "reload".into()],
        };
        let out = ctx.stack_op::<ops::StackExec>(&req)?;
        if !out.success() {
            anyhow::bail!("reloading nginx failed: {}", out.stderr.trim());
        }
        ctx.log.record("INFO", &format!("certificate renewed in release {current}"));
        ctx.printer.success("certificate installed and nginx reloaded; no image was rebuilt");
        Ok(())
    })();
    ctx.unlock();
    result
}
