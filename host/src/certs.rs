//! Validation of a TLS certificate and its private key before they are
//! mounted into the frontend (P14, requirement 6.4).
//!
//! Pure functions over the files' bytes plus a thin wrapper that reads them:
//! - both files are PEM (`-----BEGIN CERTIFICATE-----`; a private key as
//!   PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`);
//! - the certificate is valid now (not expired, not yet valid);
//! - the key belongs to the certificate: the public key derived from the key
//!   file equals the certificate's (RSA modulus and exponent; EC and Ed25519
//!   public key as stored in the key file, which OpenSSL, rcgen/ring and
//!   certbot always include);
//! - a certificate expiring within `warn_days` is a warning, not an error.
//!
//! Errors name the file and say what to do. Nothing here panics on any input.
//!
//! No byte of ASN.1, base64 or PEM is decoded here by hand; each layer is a
//! maintained crate:
//! - PEM framing: [`pem`] (`parse_many`). It takes several blocks in one file
//!   (a chain), skips the explanatory text openssl and certbot write between
//!   blocks, and exposes RFC 1421 headers, which is how a legacy encrypted
//!   key (`Proc-Type: 4,ENCRYPTED`) is recognised. RustCrypto's
//!   `pem-rfc7468` is strict RFC 7468, which refuses exactly those files;
//!   x509-parser's `pem` module reads one block and knows no headers.
//! - certificates: `x509-parser` (with its `oid-registry` for algorithm
//!   OIDs and its RSA public key parser).
//! - private keys: RustCrypto's `pkcs8`, `pkcs1` and `sec1` (the typed DER
//!   structures, the versions russh already builds, so nothing is compiled
//!   twice). `rustls-pki-types` was not taken: it only labels DER blobs, and
//!   the public half of a key would still need these crates.
// Part of this API exists for `cultivate certs check`, which may not use every
// field yet.
#![cfg_attr(not(test), allow(dead_code))]

use std::fmt;
use std::path::Path;

use pkcs8::der::Decode;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    Oid, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::time::ASN1Time;

/// What is known about a valid pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    /// The certificate's subject (`CN=…`).
    pub subject: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Whole days until `not_after` (negative never: that is an error).
    pub days_remaining: i64,
    /// `RSA`, `EC` or `Ed25519`.
    pub key_type: &'static str,
    /// Certificates after the first in the certificate file (a chain).
    pub chain_len: usize,
    /// Things to act on soon, such as an upcoming expiry.
    pub warnings: Vec<String>,
}

/// Why a pair is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// A file could not be read.
    Read { path: String, reason: String },
    /// The certificate file is not a PEM certificate.
    NotPemCertificate { path: String, detail: String },
    /// The key file is not a PEM private key.
    NotPemKey { path: String, detail: String },
    /// The key is encrypted (nginx would ask for a passphrase).
    EncryptedKey { path: String },
    /// `not_after` is in the past.
    Expired { path: String, not_after: String },
    /// `not_before` is in the future.
    NotYetValid { path: String, not_before: String },
    /// The key is not the certificate's.
    Mismatch { cert: String, key: String, detail: String },
    /// The pair could not be compared (unsupported key type, no public key
    /// in the key file).
    Unsupported { cert: String, key: String, detail: String },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Read { path, reason } => {
                write!(f, "cannot read {path}: {reason}; check the path in cultivate.toml and the file's permissions")
            }
            CertError::NotPemCertificate { path, detail } => write!(
                f,
                "{path} is not a PEM certificate ({detail}); provide the certificate (with its chain) in PEM form, \
                 starting with -----BEGIN CERTIFICATE----- (convert DER with \
                 `openssl x509 -inform DER -in {path} -out cert.pem`)"
            ),
            CertError::NotPemKey { path, detail } => write!(
                f,
                "{path} is not a PEM private key ({detail}); provide the unencrypted key in PEM form, starting with \
                 -----BEGIN PRIVATE KEY----- (convert with `openssl pkey -in {path} -out key.pem`)"
            ),
            CertError::EncryptedKey { path } => write!(
                f,
                "{path} is an encrypted private key, which nginx cannot use unattended; decrypt it with \
                 `openssl pkey -in {path} -out key.pem` and keep that file private (mode 0600)"
            ),
            CertError::Expired { path, not_after } => write!(
                f,
                "{path} expired on {not_after}; renew the certificate (`cultivate certs renew` or your CA) and deploy again"
            ),
            CertError::NotYetValid { path, not_before } => write!(
                f,
                "{path} is not valid before {not_before}; check this machine's clock, or use a certificate that is valid now"
            ),
            CertError::Mismatch { cert, key, detail } => write!(
                f,
                "{key} is not the private key of {cert} ({detail}); use the key the certificate was issued for \
                 (certbot: privkey.pem next to fullchain.pem)"
            ),
            CertError::Unsupported { cert, key, detail } => write!(
                f,
                "cannot check that {key} belongs to {cert}: {detail}; use an RSA, EC or Ed25519 key in PKCS#8, \
                 PKCS#1 or SEC1 PEM form that includes its public key (`openssl pkey -in {key} -out key.pem`)"
            ),
        }
    }
}

impl std::error::Error for CertError {}

/// Read and check a certificate file and a key file (see the module docs).
pub fn check_files(cert: &Path, key: &Path, warn_days: u32) -> Result<CertReport, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| CertError::Read { path: p.display().to_string(), reason: e.to_string() })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    check_pem(&cert.display().to_string(), &cert_pem, &key.display().to_string(), &key_pem, now, warn_days)
}

/// Check a certificate and key given as bytes; `cert_name`/`key_name` are
/// used in messages, `now` is Unix seconds.
pub fn check_pem(
    cert_name: &str,
    cert_pem: &[u8],
    key_name: &str,
    key_pem: &[u8],
    now: i64,
    warn_days: u32,
) -> Result<CertReport, CertError> {
    let not_cert = |detail: String| CertError::NotPemCertificate { path: cert_name.to_string(), detail };
    let not_key = |detail: String| CertError::NotPemKey { path: key_name.to_string(), detail };

    // Certificate file: one or more CERTIFICATE blocks, the first is the leaf.
    let blocks = pem_blocks(cert_pem).map_err(not_cert)?;
    let certs: Vec<&pem::Pem> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").collect();
    let Some(leaf_block) = certs.first() else {
        let found = blocks.first().map(|b| format!("found a {} block instead", b.tag()));
        return Err(not_cert(found.unwrap_or_else(|| "no -----BEGIN CERTIFICATE----- block".to_string())));
    };
    let (_, leaf) = X509Certificate::from_der(leaf_block.contents())
        .map_err(|e| not_cert(format!("the CERTIFICATE block is not valid X.509: {e}")))?;
    for (i, extra) in certs.iter().enumerate().skip(1) {
        X509Certificate::from_der(extra.contents())
            .map_err(|e| not_cert(format!("certificate {} of the chain is not valid X.509: {e}", i + 1)))?;
    }

    // Key file: exactly one private key block.
    let key_blocks = pem_blocks(key_pem).map_err(not_key)?;
    let key_block = key_blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")).ok_or_else(|| {
        not_key(match key_blocks.first() {
            Some(b) => format!("found a {} block instead", b.tag()),
            None => "no -----BEGIN PRIVATE KEY----- block".to_string(),
        })
    })?;
    // Legacy OpenSSL encryption (RFC 1421 header) wraps a PKCS#1 or SEC1
    // label around ciphertext: say "encrypted", not "malformed".
    let legacy_encrypted = key_block.headers().get("Proc-Type").is_some_and(|v| v.contains("ENCRYPTED"));
    if legacy_encrypted || key_block.tag() == "ENCRYPTED PRIVATE KEY" {
        return Err(CertError::EncryptedKey { path: key_name.to_string() });
    }
    let der = key_block.contents();
    let key_public = match key_block.tag() {
        "PRIVATE KEY" => parse_pkcs8(der),
        "RSA PRIVATE KEY" => parse_pkcs1(der).map(KeyPublic::Rsa),
        "EC PRIVATE KEY" => parse_sec1(der).map(KeyPublic::Ec),
        other => Err(format!("unsupported key block {other}")),
    }
    .map_err(not_key)?;

    // Validity.
    let validity = leaf.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(CertError::NotYetValid { path: cert_name.to_string(), not_before: fmt_time(&validity.not_before) });
    }
    if now > not_after {
        return Err(CertError::Expired { path: cert_name.to_string(), not_after: fmt_time(&validity.not_after) });
    }

    // The pair.
    let spki = leaf.public_key();
    let alg = &spki.algorithm.algorithm;
    let cert_key: &[u8] = &spki.subject_public_key.data;
    let mismatch = |detail: &str| CertError::Mismatch {
        cert: cert_name.to_string(),
        key: key_name.to_string(),
        detail: detail.to_string(),
    };
    let unsupported =
        |detail: String| CertError::Unsupported { cert: cert_name.to_string(), key: key_name.to_string(), detail };
    let Some(cert_kind) = key_kind(alg.as_bytes()) else {
        return Err(unsupported(format!("the certificate's key algorithm {alg} is not supported")));
    };
    if cert_kind != key_public.kind() {
        return Err(mismatch(&format!(
            "the certificate has an {cert_kind} key, the key file an {} key",
            key_public.kind()
        )));
    }
    match &key_public {
        KeyPublic::Rsa((n, e)) => {
            let (cn, ce) = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => (rsa.modulus, rsa.exponent),
                Ok(_) => return Err(unsupported("certificate RSA key: not an RSA public key".to_string())),
                Err(e) => return Err(unsupported(format!("certificate RSA key: {e}"))),
            };
            if strip_zeros(cn) != strip_zeros(n) || strip_zeros(ce) != strip_zeros(e) {
                return Err(mismatch("different RSA modulus"));
            }
        }
        KeyPublic::Ec(Some(point)) | KeyPublic::Ed25519(Some(point)) => {
            if point.as_slice() != cert_key {
                return Err(mismatch(&format!("different {cert_kind} public key")));
            }
        }
        KeyPublic::Ec(None) | KeyPublic::Ed25519(None) => {
            return Err(unsupported("the key file does not include its public key".to_string()))
        }
    }
    let key_type = cert_kind;

    let days_remaining = (not_after - now) / 86_400;
    let mut warnings = Vec::new();
    if days_remaining < i64::from(warn_days) {
        warnings.push(format!(
            "{cert_name} expires on {} (in {days_remaining} day{}); renew it soon (`cultivate certs renew`)",
            fmt_time(&validity.not_after),
            if days_remaining == 1 { "" } else { "s" }
        ));
    }
    Ok(CertReport {
        subject: leaf.subject().to_string(),
        not_before,
        not_after,
        days_remaining,
        key_type,
        chain_len: certs.len() - 1,
        warnings,
    })
}

/// `RSA`, `EC` or `Ed25519` for a public key algorithm OID (DER content
/// bytes, as both x509-parser and `const-oid` give them).
fn key_kind(oid: &[u8]) -> Option<&'static str> {
    let is = |known: &Oid<'static>| known.as_bytes() == oid;
    if is(&OID_PKCS1_RSAENCRYPTION) || is(&OID_PKCS1_RSASSAPSS) {
        Some("RSA")
    } else if is(&OID_KEY_TYPE_EC_PUBLIC_KEY) {
        Some("EC")
    } else if is(&OID_SIG_ED25519) {
        Some("Ed25519")
    } else {
        None
    }
}

fn fmt_time(t: &ASN1Time) -> String {
    t.to_datetime().format(&::time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The public half of a private key, as far as the key file tells it.
enum KeyPublic {
    /// (modulus, public exponent), big-endian.
    Rsa((Vec<u8>, Vec<u8>)),
    /// The uncompressed point from the key file, when present.
    Ec(Option<Vec<u8>>),
    Ed25519(Option<Vec<u8>>),
}

impl KeyPublic {
    fn kind(&self) -> &'static str {
        match self {
            KeyPublic::Rsa(_) => "RSA",
            KeyPublic::Ec(_) => "EC",
            KeyPublic::Ed25519(_) => "Ed25519",
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

/// Every PEM block of a file, in order; a file with no block at all, or
/// binary data, is an error whose text says what the file looks like.
fn pem_blocks(data: &[u8]) -> Result<Vec<pem::Pem>, String> {
    if std::str::from_utf8(data).is_err() {
        // The usual mistake is a DER file where PEM belongs.
        return Err(if X509Certificate::from_der(data).is_ok() {
            "binary data, probably DER (it reads as a DER certificate)".to_string()
        } else if data.first() == Some(&0x30) {
            "binary data, probably DER".to_string()
        } else {
            "binary data, not PEM text".to_string()
        });
    }
    let blocks = pem::parse_many(data).map_err(|e| format!("malformed PEM: {e}"))?;
    if blocks.is_empty() {
        return Err("no -----BEGIN …----- block".to_string());
    }
    if let Some(empty) = blocks.iter().find(|b| b.contents().is_empty()) {
        return Err(format!("the {} block is empty", empty.tag()));
    }
    Ok(blocks)
}

/// PKCS#1 RSAPrivateKey → (modulus, public exponent).
fn parse_pkcs1(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let key = pkcs1::RsaPrivateKey::from_der(der).map_err(|e| format!("malformed RSA PRIVATE KEY: {e}"))?;
    Ok((key.modulus.as_bytes().to_vec(), key.public_exponent.as_bytes().to_vec()))
}

/// SEC1 ECPrivateKey → its public point, when the file carries it.
fn parse_sec1(der: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let key = sec1::EcPrivateKey::from_der(der).map_err(|e| format!("malformed EC PRIVATE KEY: {e}"))?;
    Ok(key.public_key.map(<[u8]>::to_vec))
}

/// PKCS#8 PrivateKeyInfo / OneAsymmetricKey → the public half.
fn parse_pkcs8(der: &[u8]) -> Result<KeyPublic, String> {
    let info = pkcs8::PrivateKeyInfoRef::from_der(der).map_err(|e| format!("malformed PRIVATE KEY: {e}"))?;
    let inner = info.private_key.as_bytes();
    // [1] publicKey of PKCS#8 v2 (RFC 5958), as Ed25519 keys carry it.
    let outer_public = info.public_key.as_ref().and_then(|bits| bits.as_bytes()).map(<[u8]>::to_vec);
    match key_kind(info.algorithm.oid.as_bytes()) {
        Some("RSA") => parse_pkcs1(inner).map(KeyPublic::Rsa),
        Some("EC") => Ok(KeyPublic::Ec(parse_sec1(inner)?.or(outer_public))),
        Some("Ed25519") => Ok(KeyPublic::Ed25519(outer_public)),
        _ => Err("unsupported key algorithm (expected RSA, EC or Ed25519)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::time::{Duration, OffsetDateTime};
    use proptest::prelude::*;
    use rcgen::{CertificateParams, KeyPair};

    /// Test-only keys (generated with openssl for these tests, never used
    /// anywhere else): one RSA and one P-256 key, each in two encodings.
    const RSA_PKCS8: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDtu9Ux3G7Ba7M9
fvFVXzdJYVyO7o+xooZfaXgFpvqI9KUJ4+Ofuj8tz9SefNmiPAk76mdE76Npn0BM
30dhmHYf6sRcTTJ63Tlk5jBUMppGVkPGzr21Y7E3yeofQW2CDeXbsqToiv2Nrque
JTNrzxsdGJz1TrOpRJvJ69hfaYZbQa1HoAf/Ebl2FLBTNN8dVKDNGdMlPM5ODC8g
WPkTPZtx07OVama+294LiQf1A2zQ8qaMKdKx7nt3PSFRSV7fB6KkMdIw46SepIpn
ufgPEsJRhQ/iIEbmEE1DBlOtsWHj6W1gTTHx+4jCwtu4R2elYQN3fip+YS86sHOc
BkQFIHHxAgMBAAECggEAIFExaSbLE5YddpWkHvPjoyEOIQwDEqXCWIQQ4cvSMP34
1YBaOCNsZUDkaWsVdr1sj+2Mfk2JTFlut0R/AqBkJnCWoumHnDYokDPOjBOY70jY
y9Tc6ySTOb9ECV2ukkhrX9NIIaiLUVBWWhg6hkRQLkNjSuGZAMCn4Oojrsy8i/j9
iavRRGqKfClXXRatvUsPC9ym8rMbgvNM/IDUBJR7QLZMQMCqOHEERr61stpGXs1O
qErc283p70HO3zeeRsnHJpodhzGCmZZC6asEr8S24dFTaJwAaJAQot2SS+WOkarI
Vkwoa2u8LXsD76/k8ZEu0yC8o2C2gmTVrIQ8BosTZQKBgQD9ViJ+0FoRp2ODTI8J
2gc5q2WaGLNh59S2yGghG1oX4TjzLu5VgPB/+uN+FDc9zf+Z5Md/7jSDG6YQWQZS
TMZposnaGWJcrWf0BMdNyTGr2GTaB7e30kpJkISsGFmIRzypUWEcv4iy1rYw9CNm
pmZ/hune+N1rshqgFjnqUcXQowKBgQDwO7PgILqeN+yzHqtE13c7MrlJIWWVt/HC
xdQmsMFaUxiGjiuGIftwO32roCUGm6Cuh487U401Ys9au1RkDsMMkf4xHzRzGXg6
F33nmXyN2gr/WEGB7dvC2CwMZqcsiOUkzoNLX+cjPeGU0jnEUrzICGJq9E6FZ8nr
vHRvOsAYWwKBgCgg1bP6stmrBxNMNDgeRhi3co+XLArtGv+c/QmJeJrhvRCgNXZr
xyyuhAx7jUiH8d3hpEw6Yi0GWyapw1uT97XR6GFYtgDyIs4/V4aVwP10eH0kzdAb
SlMexjUwYjY4+n3jext/p1qUsiVM9rKS1xeKOk9sYj5l5tvGyYO5Ujk7AoGADGaY
j25BE9/BKTHhF2mj7vtcUykVLFhVc39wxxqCsJ3veyqlloP0jcOUZiKbJq8r6TZ4
L1DNzj6ug3l+DrgwW1rB61k4BOUArsb9qdHjexMRVEMDBqj3miQ8idtWr9bVNUQv
xNlLfic4mM0NTFQVCKJeKjU4RGyqILAWtpMqzVcCgYASENKeYBkOHgOD2fHfwiqI
P2PdeVFtF7AwwbpcZ2lJmwvC/pR9Qma8FlYh9n0PxGuscl/CXREfdlWxDn/10UnS
XZ4rOgQBHjXC18r0Jb/bRqB7/3r9M5wYQGIq7e0ODGVSaLpHnDFxINKOTpwPwPH8
DgknB0cmsy6dQn75C7b70Q==
-----END PRIVATE KEY-----
";
    const RSA_PKCS1: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEA7bvVMdxuwWuzPX7xVV83SWFcju6PsaKGX2l4Bab6iPSlCePj
n7o/Lc/UnnzZojwJO+pnRO+jaZ9ATN9HYZh2H+rEXE0yet05ZOYwVDKaRlZDxs69
tWOxN8nqH0Ftgg3l27Kk6Ir9ja6rniUza88bHRic9U6zqUSbyevYX2mGW0GtR6AH
/xG5dhSwUzTfHVSgzRnTJTzOTgwvIFj5Ez2bcdOzlWpmvtveC4kH9QNs0PKmjCnS
se57dz0hUUle3weipDHSMOOknqSKZ7n4DxLCUYUP4iBG5hBNQwZTrbFh4+ltYE0x
8fuIwsLbuEdnpWEDd34qfmEvOrBznAZEBSBx8QIDAQABAoIBACBRMWkmyxOWHXaV
pB7z46MhDiEMAxKlwliEEOHL0jD9+NWAWjgjbGVA5GlrFXa9bI/tjH5NiUxZbrdE
fwKgZCZwlqLph5w2KJAzzowTmO9I2MvU3Oskkzm/RAldrpJIa1/TSCGoi1FQVloY
OoZEUC5DY0rhmQDAp+DqI67MvIv4/Ymr0URqinwpV10Wrb1LDwvcpvKzG4LzTPyA
1ASUe0C2TEDAqjhxBEa+tbLaRl7NTqhK3NvN6e9Bzt83nkbJxyaaHYcxgpmWQumr
BK/EtuHRU2icAGiQEKLdkkvljpGqyFZMKGtrvC17A++v5PGRLtMgvKNgtoJk1ayE
PAaLE2UCgYEA/VYiftBaEadjg0yPCdoHOatlmhizYefUtshoIRtaF+E48y7uVYDw
f/rjfhQ3Pc3/meTHf+40gxumEFkGUkzGaaLJ2hliXK1n9ATHTckxq9hk2ge3t9JK
SZCErBhZiEc8qVFhHL+Ista2MPQjZqZmf4bp3vjda7IaoBY56lHF0KMCgYEA8Duz
4CC6njfssx6rRNd3OzK5SSFllbfxwsXUJrDBWlMYho4rhiH7cDt9q6AlBpugroeP
O1ONNWLPWrtUZA7DDJH+MR80cxl4Ohd955l8jdoK/1hBge3bwtgsDGanLIjlJM6D
S1/nIz3hlNI5xFK8yAhiavROhWfJ67x0bzrAGFsCgYAoINWz+rLZqwcTTDQ4HkYY
t3KPlywK7Rr/nP0JiXia4b0QoDV2a8csroQMe41Ih/Hd4aRMOmItBlsmqcNbk/e1
0ehhWLYA8iLOP1eGlcD9dHh9JM3QG0pTHsY1MGI2OPp943sbf6dalLIlTPayktcX
ijpPbGI+ZebbxsmDuVI5OwKBgAxmmI9uQRPfwSkx4Rdpo+77XFMpFSxYVXN/cMca
grCd73sqpZaD9I3DlGYimyavK+k2eC9Qzc4+roN5fg64MFtawetZOATlAK7G/anR
43sTEVRDAwao95okPInbVq/W1TVEL8TZS34nOJjNDUxUFQiiXio1OERsqiCwFraT
Ks1XAoGAEhDSnmAZDh4Dg9nx38IqiD9j3XlRbRewMMG6XGdpSZsLwv6UfUJmvBZW
IfZ9D8RrrHJfwl0RH3ZVsQ5/9dFJ0l2eKzoEAR41wtfK9CW/20age/96/TOcGEBi
Ku3tDgxlUmi6R5wxcSDSjk6cD8Dx/A4JJwdHJrMunUJ++Qu2+9E=
-----END RSA PRIVATE KEY-----
";
    const EC_PKCS8: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcA3LIjRs5F/s9X/3
MK0nEzHTrqADtqLPvHn0vrcwpDKhRANCAATHMoZAylAqtyGOcxSQogV/a9Ah5X1w
NLcME+o3FaznEwb4m+sIckjAglaAngsCTxQuqVqma76kap3cvPYomkIy
-----END PRIVATE KEY-----
";
    const EC_SEC1: &str = r"-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIHANyyI0bORf7PV/9zCtJxMx066gA7aiz7x59L63MKQyoAoGCCqGSM49
AwEHoUQDQgAExzKGQMpQKrchjnMUkKIFf2vQIeV9cDS3DBPqNxWs5xMG+JvrCHJI
wIJWgJ4LAk8ULqlapmu+pGqd3Lz2KJpCMg==
-----END EC PRIVATE KEY-----
";

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    /// A self-signed certificate for `key` valid from `from` to `to` days
    /// relative to now.
    fn cert_for(key: &KeyPair, from: i64, to: i64) -> String {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let t = OffsetDateTime::now_utc();
        params.not_before = t + Duration::days(from);
        params.not_after = t + Duration::days(to);
        params.self_signed(key).unwrap().pem()
    }

    fn check(cert: &str, key: &str) -> Result<CertReport, CertError> {
        check_pem("fullchain.pem", cert.as_bytes(), "privkey.pem", key.as_bytes(), now(), 30)
    }

    #[test]
    fn valid_ec_pair_from_rcgen() {
        let key = KeyPair::generate().unwrap();
        let report = check(&cert_for(&key, -1, 90), &key.serialize_pem()).unwrap();
        assert_eq!(report.key_type, "EC");
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!((88..=90).contains(&report.days_remaining));
        assert_eq!(report.chain_len, 0);
    }

    #[test]
    fn valid_pairs_in_every_key_encoding() {
        for (signing, encodings, kind) in
            [(RSA_PKCS8, [RSA_PKCS8, RSA_PKCS1], "RSA"), (EC_PKCS8, [EC_PKCS8, EC_SEC1], "EC")]
        {
            let key = KeyPair::from_pem(signing).unwrap();
            let cert = cert_for(&key, -1, 365);
            for enc in encodings {
                let r = check(&cert, enc).unwrap_or_else(|e| panic!("{kind}: {e}"));
                assert_eq!(r.key_type, kind);
            }
        }
    }

    #[test]
    fn valid_ed25519_pair() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let r = check(&cert_for(&key, -1, 60), &key.serialize_pem()).unwrap();
        assert_eq!(r.key_type, "Ed25519");
    }

    #[test]
    fn chain_and_comments_are_accepted() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let chain = format!(
            "subject=CN=localhost\n{}\nissuer: intermediate\n{}",
            cert_for(&key, -1, 60),
            cert_for(&other, -1, 60)
        );
        let r = check(&chain, &format!("# comment\n{}", key.serialize_pem())).unwrap();
        assert_eq!(r.chain_len, 1);
    }

    #[test]
    fn expiring_soon_is_a_warning() {
        let key = KeyPair::generate().unwrap();
        let r = check(&cert_for(&key, -60, 10), &key.serialize_pem()).unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("fullchain.pem expires on"), "{}", r.warnings[0]);
        assert!(r.warnings[0].contains("renew"), "{}", r.warnings[0]);
        let quiet =
            check_pem("c", cert_for(&key, -60, 10).as_bytes(), "k", key.serialize_pem().as_bytes(), now(), 5).unwrap();
        assert!(quiet.warnings.is_empty());
    }

    #[test]
    fn expired_is_refused() {
        let key = KeyPair::generate().unwrap();
        let err = check(&cert_for(&key, -30, -1), &key.serialize_pem()).unwrap_err();
        assert!(matches!(err, CertError::Expired { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("fullchain.pem expired on "), "{msg}");
        assert!(msg.contains("renew"), "{msg}");
    }

    #[test]
    fn not_yet_valid_is_refused() {
        let key = KeyPair::generate().unwrap();
        let err = check(&cert_for(&key, 2, 30), &key.serialize_pem()).unwrap_err();
        assert!(matches!(err, CertError::NotYetValid { .. }), "{err:?}");
        assert!(err.to_string().contains("fullchain.pem is not valid before"), "{err}");
    }

    #[test]
    fn mismatched_keys_are_refused() {
        let ec_a = KeyPair::generate().unwrap();
        let ec_b = KeyPair::generate().unwrap();
        let rsa = KeyPair::from_pem(RSA_PKCS8).unwrap();
        let ec_cert = cert_for(&ec_a, -1, 60);
        let rsa_cert = cert_for(&rsa, -1, 60);
        for (cert, key) in [
            (&ec_cert, ec_b.serialize_pem()),
            (&ec_cert, EC_SEC1.to_string()),
            (&ec_cert, RSA_PKCS1.to_string()),
            (&rsa_cert, EC_PKCS8.to_string()),
            (&rsa_cert, ec_a.serialize_pem()),
        ] {
            let err = check(cert, &key).unwrap_err();
            assert!(matches!(err, CertError::Mismatch { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with("privkey.pem is not the private key of fullchain.pem"), "{msg}");
        }
        // Same modulus, different exponent: still a mismatch (a forged key).
        let mut pkcs1 = pem::parse(RSA_PKCS1).unwrap().into_contents();
        // The public exponent 65537 is encoded 02 03 01 00 01; make it 65539.
        let pos = pkcs1.windows(5).position(|w| w == [0x02, 0x03, 0x01, 0x00, 0x01]).unwrap();
        pkcs1[pos + 4] = 0x03;
        let forged = pem_encode("RSA PRIVATE KEY", &pkcs1);
        assert!(matches!(check(&rsa_cert, &forged), Err(CertError::Mismatch { .. })));
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der))
    }

    #[test]
    fn not_pem_is_refused() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        let kp = key.serialize_pem();
        let good = cert.pem();
        // DER certificate, garbage, empty, a key where the certificate belongs.
        for bad in [der.clone(), b"hello".to_vec(), Vec::new(), kp.clone().into_bytes()] {
            let err = check_pem("cert.pem", &bad, "key.pem", kp.as_bytes(), now(), 30).unwrap_err();
            assert!(matches!(err, CertError::NotPemCertificate { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with("cert.pem is not a PEM certificate"), "{msg}");
            assert!(msg.contains("-----BEGIN CERTIFICATE-----"), "{msg}");
        }
        let err = check_pem("cert.pem", &der, "key.pem", kp.as_bytes(), now(), 30).unwrap_err();
        assert!(err.to_string().contains("DER"), "{err}");
        // Broken base64, unterminated block, not X.509 inside.
        for bad in [
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_string(),
            good.replace("-----END CERTIFICATE-----", ""),
            pem_encode("CERTIFICATE", b"not der at all"),
        ] {
            let err = check_pem("cert.pem", bad.as_bytes(), "key.pem", kp.as_bytes(), now(), 30).unwrap_err();
            assert!(matches!(err, CertError::NotPemCertificate { .. }), "{err:?}");
        }
        // Key side.
        for bad in [
            b"hello".to_vec(),
            good.clone().into_bytes(),
            pem_encode("PRIVATE KEY", b"\x30\x03\x02\x01\x00").into_bytes(),
        ] {
            let err = check_pem("cert.pem", good.as_bytes(), "key.pem", &bad, now(), 30).unwrap_err();
            assert!(matches!(err, CertError::NotPemKey { .. }), "{err:?}");
            assert!(err.to_string().starts_with("key.pem is not a PEM private key"), "{err}");
        }
    }

    #[test]
    fn encrypted_keys_are_refused_with_advice() {
        let key = KeyPair::generate().unwrap();
        let cert = cert_for(&key, -1, 60);
        let enc8 = pem_encode("ENCRYPTED PRIVATE KEY", b"\x30\x00");
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n".to_string()
            + EC_SEC1.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().join("\n").as_str()
            + "\n-----END EC PRIVATE KEY-----\n";
        for k in [enc8, legacy] {
            let err = check(&cert, &k).unwrap_err();
            assert!(matches!(err, CertError::EncryptedKey { .. }), "{err:?}");
            assert!(err.to_string().contains("openssl pkey -in privkey.pem"), "{err}");
        }
    }

    #[test]
    fn files_are_read_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let (c, k) = (dir.path().join("fullchain.pem"), dir.path().join("privkey.pem"));
        std::fs::write(&c, cert_for(&key, -1, 60)).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        check_files(&c, &k, 30).unwrap();
        let missing = dir.path().join("nope.pem");
        let err = check_files(&c, &missing, 30).unwrap_err();
        assert!(matches!(err, CertError::Read { .. }));
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    /// Files made by the `openssl` command line, as users make them: runs
    /// `openssl ARGS` in `dir`. `None` when openssl is not installed (outside
    /// CI; under CI that is a failure).
    fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
        match std::process::Command::new("openssl").args(args).current_dir(dir).output() {
            Ok(out) => {
                assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                Some(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
                eprintln!("skipped: openssl is not installed");
                None
            }
            Err(e) => panic!("cannot run openssl: {e}"),
        }
    }

    #[test]
    fn openssl_made_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let read = |name: &str| std::fs::read(d.join(name)).unwrap();
        let check_at = |cert: &str, key: &str, at: i64| check_pem(cert, &read(cert), key, &read(key), at, 30);
        let self_signed = |key_opts: &[&str], key: &str, cert: &str| {
            let mut args = vec!["req", "-x509", "-nodes", "-days", "90", "-subj", "/CN=localhost"];
            args.extend_from_slice(key_opts);
            args.extend_from_slice(&["-keyout", key, "-out", cert]);
            openssl(d, &args)
        };
        let Some(()) = self_signed(&["-newkey", "rsa:2048"], "rsa.key", "rsa.crt") else { return };
        self_signed(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "ec.key", "ec.crt").unwrap();
        self_signed(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"], "ec2.key", "ec2.crt").unwrap();
        // The same keys in their traditional encodings (PKCS#1, SEC1).
        openssl(d, &["pkey", "-in", "rsa.key", "-traditional", "-out", "rsa1.key"]).unwrap();
        openssl(d, &["ec", "-in", "ec.key", "-out", "sec1.key"]).unwrap();
        assert!(String::from_utf8(read("rsa1.key")).unwrap().starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(String::from_utf8(read("sec1.key")).unwrap().starts_with("-----BEGIN EC PRIVATE KEY-----"));

        // Valid pairs, every encoding.
        for (cert, key, kind) in [
            ("rsa.crt", "rsa.key", "RSA"),
            ("rsa.crt", "rsa1.key", "RSA"),
            ("ec.crt", "ec.key", "EC"),
            ("ec.crt", "sec1.key", "EC"),
        ] {
            let r = check_at(cert, key, now()).unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
            assert_eq!(r.key_type, kind);
            assert_eq!(r.subject, "CN=localhost");
            assert!((88..=90).contains(&r.days_remaining), "{}", r.days_remaining);
        }

        // Expired and not yet valid: the certificate's own dates against a clock.
        let r = check_at("rsa.crt", "rsa.key", now()).unwrap();
        let err = check_at("rsa.crt", "rsa.key", r.not_after + 1).unwrap_err();
        assert!(matches!(err, CertError::Expired { .. }), "{err:?}");
        assert!(err.to_string().starts_with("rsa.crt expired on "), "{err}");
        let err = check_at("ec.crt", "ec.key", r.not_before - 86_400).unwrap_err();
        assert!(matches!(err, CertError::NotYetValid { .. }), "{err:?}");
        assert!(err.to_string().starts_with("ec.crt is not valid before "), "{err}");

        // Mismatched keys: same type, other type, other curve.
        for (cert, key) in
            [("rsa.crt", "ec.key"), ("ec.crt", "ec2.key"), ("ec.crt", "rsa1.key"), ("ec2.crt", "sec1.key")]
        {
            let err = check_at(cert, key, now()).unwrap_err();
            assert!(matches!(err, CertError::Mismatch { .. }), "{cert} {key}: {err:?}");
            assert!(err.to_string().starts_with(&format!("{key} is not the private key of {cert}")), "{err}");
        }

        // DER instead of PEM, for the certificate and for the key.
        openssl(d, &["x509", "-in", "rsa.crt", "-outform", "DER", "-out", "rsa.der"]).unwrap();
        openssl(d, &["pkey", "-in", "ec.key", "-outform", "DER", "-out", "ec.key.der"]).unwrap();
        let err = check_at("rsa.der", "rsa.key", now()).unwrap_err();
        assert!(matches!(err, CertError::NotPemCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("DER") && err.to_string().contains("openssl x509 -inform DER"), "{err}");
        let err = check_at("ec.crt", "ec.key.der", now()).unwrap_err();
        assert!(matches!(err, CertError::NotPemKey { .. }), "{err:?}");

        // Encrypted keys: PKCS#8 and the legacy OpenSSL header form.
        openssl(d, &["pkey", "-in", "rsa.key", "-aes256", "-passout", "pass:secret", "-out", "enc8.key"]).unwrap();
        openssl(
            d,
            &["pkey", "-in", "ec.key", "-traditional", "-aes256", "-passout", "pass:secret", "-out", "encl.key"],
        )
        .unwrap();
        for (cert, key) in [("rsa.crt", "enc8.key"), ("ec.crt", "encl.key")] {
            let err = check_at(cert, key, now()).unwrap_err();
            assert!(matches!(err, CertError::EncryptedKey { .. }), "{key}: {err:?}");
            assert!(err.to_string().contains(&format!("openssl pkey -in {key}")), "{err}");
        }

        // A chain: root → intermediate → leaf; the file holds leaf + intermediate.
        let ext = "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n";
        std::fs::write(d.join("ca.ext"), ext).unwrap();
        self_signed(
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-addext", "basicConstraints=critical,CA:true"],
            "root.key",
            "root.crt",
        )
        .unwrap();
        for (name, subj) in [("int", "/CN=intermediate"), ("leaf", "/CN=leaf.example")] {
            openssl(
                d,
                &[
                    "req",
                    "-new",
                    "-nodes",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-subj",
                    subj,
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            )
            .unwrap();
        }
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "int.csr",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "60",
                "-extfile",
                "ca.ext",
                "-out",
                "int.crt",
            ],
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "int.crt",
                "-CAkey",
                "int.key",
                "-CAcreateserial",
                "-days",
                "20",
                "-out",
                "leaf.crt",
            ],
        )
        .unwrap();
        let chain = [read("leaf.crt"), read("int.crt")].concat();
        std::fs::write(d.join("fullchain.pem"), chain).unwrap();
        let r = check_at("fullchain.pem", "leaf.key", now()).unwrap();
        assert_eq!(r.chain_len, 1);
        assert_eq!(r.subject, "CN=leaf.example");
        assert_eq!(r.warnings.len(), 1, "20 days left is within the 30-day warning: {:?}", r.warnings);
        // The intermediate's key is not the leaf's.
        let err = check_at("fullchain.pem", "int.key", now()).unwrap_err();
        assert!(matches!(err, CertError::Mismatch { .. }), "{err:?}");
    }

    fn valid_pair() -> (String, String) {
        static PAIR: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        PAIR.get_or_init(|| {
            let key = KeyPair::generate().unwrap();
            (cert_for(&key, -1, 60), key.serialize_pem())
        })
        .clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// No input makes the check panic: arbitrary bytes for either file.
        #[test]
        fn arbitrary_bytes_never_panic(cert in proptest::collection::vec(any::<u8>(), 0..2048),
                                       key in proptest::collection::vec(any::<u8>(), 0..2048),
                                       now in any::<i64>(), warn in any::<u32>()) {
            let _ = check_pem("c", &cert, "k", &key, now, warn);
            let (c, k) = valid_pair();
            let _ = check_pem("c", c.as_bytes(), "k", &key, now, warn);
            let _ = check_pem("c", &cert, "k", k.as_bytes(), now, warn);
        }

        /// Nor does a valid pair with bytes changed, dropped or inserted
        /// (PEM that is almost right exercises the DER paths).
        #[test]
        fn mutated_pairs_never_panic(edits in proptest::collection::vec((any::<bool>(), any::<usize>(), any::<u8>(), 0u8..3), 1..8),
                                     now in any::<i64>()) {
            let (c, k) = valid_pair();
            let (mut c, mut k) = (c.into_bytes(), k.into_bytes());
            for (on_cert, pos, byte, op) in edits {
                let buf = if on_cert { &mut c } else { &mut k };
                if buf.is_empty() { continue; }
                let i = pos % buf.len();
                match op {
                    0 => buf[i] = byte,
                    1 => { buf.remove(i); }
                    _ => buf.insert(i, byte),
                }
            }
            let _ = check_pem("c", &c, "k", &k, now, 30);
        }

        /// Valid base64 of arbitrary DER-ish bytes inside the right labels.
        #[test]
        fn arbitrary_der_in_pem_never_panics(der in proptest::collection::vec(any::<u8>(), 0..512), label in 0usize..4) {
            let labels = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "CERTIFICATE"];
            let (c, k) = valid_pair();
            let pem = pem_encode(labels[label], &der);
            let _ = check_pem("c", c.as_bytes(), "k", pem.as_bytes(), now(), 30);
            let _ = check_pem("c", pem.as_bytes(), "k", k.as_bytes(), now(), 30);
        }
    }
}
