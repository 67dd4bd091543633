//! Checking the configured certificate and key before anything is uploaded (P14).

use anyhow::Result;

use crate::error::usage;
use crate::settings::TlsSettings;

/// Validates the pair with [`crate::certs`]; returns warnings (an expiry within
/// `warn_days`). A bad pair is a configuration error naming the file.
pub fn check_pair(tls: &TlsSettings, warn_days: u32) -> Result<Vec<String>> {
    match crate::certs::check_files(&tls.cert, &tls.key, warn_days) {
        Ok(report) => {
            tracing::info!(
                "certificate {} valid for {} more days ({} key)",
                report.subject,
                report.days_remaining,
                report.key_type
            );
            Ok(report.warnings)
        }
        Err(e) => Err(usage(format!("the TLS certificate is not usable: {e}"))
            .hint("fix tls.cert / tls.key in cultivate.toml (PEM, currently valid, key matching the certificate); nothing was uploaded")
            .into()),
    }
}
