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
// Part of this API exists for `cultivate certs check`, which may not use every
// field yet.
#![cfg_attr(not(test), allow(dead_code))]

use std::fmt;
use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
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
    let certs: Vec<&PemBlock> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
    let Some(leaf_block) = certs.first() else {
        let found = blocks.first().map(|b| format!("found a {} block instead", b.label));
        return Err(not_cert(found.unwrap_or_else(|| "no -----BEGIN CERTIFICATE----- block".to_string())));
    };
    let (_, leaf) = X509Certificate::from_der(&leaf_block.der)
        .map_err(|e| not_cert(format!("the CERTIFICATE block is not valid X.509: {e}")))?;
    for (i, extra) in certs.iter().enumerate().skip(1) {
        X509Certificate::from_der(&extra.der)
            .map_err(|e| not_cert(format!("certificate {} of the chain is not valid X.509: {e}", i + 1)))?;
    }

    // Key file: exactly one private key block.
    let key_blocks = pem_blocks(key_pem).map_err(not_key)?;
    let key_block = key_blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")).ok_or_else(|| {
        not_key(match key_blocks.first() {
            Some(b) => format!("found a {} block instead", b.label),
            None => "no -----BEGIN PRIVATE KEY----- block".to_string(),
        })
    })?;
    let key_public = match key_block.label.as_str() {
        "PRIVATE KEY" => parse_pkcs8(&key_block.der),
        "RSA PRIVATE KEY" => parse_pkcs1(&key_block.der).map(KeyPublic::Rsa),
        "EC PRIVATE KEY" => parse_sec1(&key_block.der).map(KeyPublic::Ec),
        "ENCRYPTED PRIVATE KEY" => return Err(CertError::EncryptedKey { path: key_name.to_string() }),
        other => Err(format!("unsupported key block {other}")),
    }
    .map_err(not_key)?;
    if key_block.encrypted {
        return Err(CertError::EncryptedKey { path: key_name.to_string() });
    }

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
    let alg = spki.algorithm.algorithm.as_bytes();
    let cert_key: &[u8] = &spki.subject_public_key.data;
    let mismatch = |detail: &str| CertError::Mismatch {
        cert: cert_name.to_string(),
        key: key_name.to_string(),
        detail: detail.to_string(),
    };
    let unsupported =
        |detail: String| CertError::Unsupported { cert: cert_name.to_string(), key: key_name.to_string(), detail };
    let cert_kind = match alg {
        a if a == OID_RSA || a == OID_RSA_PSS => "RSA",
        a if a == OID_EC => "EC",
        a if a == OID_ED25519 => "Ed25519",
        _ => {
            return Err(unsupported(format!(
                "the certificate's key algorithm {} is not supported",
                spki.algorithm.algorithm
            )))
        }
    };
    if cert_kind != key_public.kind() {
        return Err(mismatch(&format!(
            "the certificate has an {cert_kind} key, the key file an {} key",
            key_public.kind()
        )));
    }
    match &key_public {
        KeyPublic::Rsa((n, e)) => {
            let (cn, ce) = parse_rsa_public(cert_key).map_err(|e| unsupported(format!("certificate RSA key: {e}")))?;
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

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

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

// ---- PEM ---------------------------------------------------------------

struct PemBlock {
    label: String,
    der: Vec<u8>,
    /// Legacy OpenSSL encryption (`Proc-Type: 4,ENCRYPTED` header).
    encrypted: bool,
}

/// Every `-----BEGIN X-----` … `-----END X-----` block. Text outside blocks
/// (certbot and openssl put comments there) is ignored; a file with no block
/// at all, or binary data, is an error.
fn pem_blocks(data: &[u8]) -> Result<Vec<PemBlock>, String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Err(if data.first() == Some(&0x30) {
            "binary data, probably DER".to_string()
        } else {
            "binary data, not PEM text".to_string()
        });
    };
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut encrypted = false;
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            if l.starts_with("-----") {
                return Err(format!("the {label} block ends with {l:?} instead of {end:?}"));
            }
            if let Some((name, value)) = l.split_once(':') {
                // RFC 1421 headers of legacy encrypted keys.
                if name.trim() == "Proc-Type" && value.contains("ENCRYPTED") {
                    encrypted = true;
                }
                continue;
            }
            b64.push_str(l);
        }
        if !closed {
            return Err(format!("the {label} block has no {end:?} line"));
        }
        let der = base64_decode(&b64).ok_or_else(|| format!("the {label} block is not valid base64"))?;
        if der.is_empty() {
            return Err(format!("the {label} block is empty"));
        }
        blocks.push(PemBlock { label: label.to_string(), der, encrypted });
    }
    if blocks.is_empty() {
        return Err("no -----BEGIN …----- block".to_string());
    }
    Ok(blocks)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        if padding > 0 {
            return None; // data after padding
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (padding <= 2).then_some(out)
}

// ---- DER (just enough for private keys) -------------------------------

struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

/// One DER TLV from the start of `input`, and the rest.
fn tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((Tlv { tag, value: &rest[..len] }, &rest[len..]))
}

/// The elements of a SEQUENCE's contents.
fn items(mut value: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !value.is_empty() {
        let (t, rest) = tlv(value)?;
        out.push(t);
        value = rest;
    }
    Some(out)
}

/// A whole DER SEQUENCE and its elements.
fn sequence(der: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let (seq, _) = tlv(der)?;
    if seq.tag != 0x30 {
        return None;
    }
    items(seq.value)
}

/// PKCS#1 RSAPrivateKey: SEQUENCE { version, n, e, d, … }.
fn parse_pkcs1(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let it = sequence(der).ok_or("malformed RSA PRIVATE KEY")?;
    match it.as_slice() {
        [v, n, e, ..] if v.tag == 0x02 && n.tag == 0x02 && e.tag == 0x02 => Ok((n.value.to_vec(), e.value.to_vec())),
        _ => Err("malformed RSA PRIVATE KEY".to_string()),
    }
}

/// SEC1 ECPrivateKey: SEQUENCE { 1, privateKey, [0] params OPTIONAL, [1] publicKey OPTIONAL }.
fn parse_sec1(der: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let it = sequence(der).ok_or("malformed EC PRIVATE KEY")?;
    if it.len() < 2 || it[0].tag != 0x02 || it[1].tag != 0x04 {
        return Err("malformed EC PRIVATE KEY".to_string());
    }
    for t in &it[2..] {
        if t.tag == 0xa1 {
            let (bits, _) = tlv(t.value).ok_or("malformed EC public key")?;
            if bits.tag != 0x03 || bits.value.is_empty() {
                return Err("malformed EC public key".to_string());
            }
            return Ok(Some(bits.value[1..].to_vec()));
        }
    }
    Ok(None)
}

/// PKCS#8 PrivateKeyInfo / OneAsymmetricKey.
fn parse_pkcs8(der: &[u8]) -> Result<KeyPublic, String> {
    let it = sequence(der).ok_or("malformed PRIVATE KEY")?;
    if it.len() < 3 || it[0].tag != 0x02 || it[1].tag != 0x30 || it[2].tag != 0x04 {
        return Err("malformed PRIVATE KEY".to_string());
    }
    let alg = items(it[1].value).ok_or("malformed PRIVATE KEY algorithm")?;
    let oid = alg.first().filter(|t| t.tag == 0x06).ok_or("malformed PRIVATE KEY algorithm")?.value;
    // [1] IMPLICIT BIT STRING publicKey (PKCS#8 v2).
    let outer_public =
        it[3..].iter().find(|t| t.tag == 0x81).and_then(|t| t.value.split_first()).map(|(_, d)| d.to_vec());
    match oid {
        o if o == OID_RSA || o == OID_RSA_PSS => parse_pkcs1(it[2].value).map(KeyPublic::Rsa),
        o if o == OID_EC => Ok(KeyPublic::Ec(parse_sec1(it[2].value)?.or(outer_public))),
        o if o == OID_ED25519 => Ok(KeyPublic::Ed25519(outer_public)),
        _ => Err("unsupported key algorithm (expected RSA, EC or Ed25519)".to_string()),
    }
}

/// RSAPublicKey (the certificate's subjectPublicKey): SEQUENCE { n, e }.
fn parse_rsa_public(der: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let it = sequence(der).ok_or("malformed RSA public key")?;
    match it.as_slice() {
        [n, e] if n.tag == 0x02 && e.tag == 0x02 => Ok((n.value, e.value)),
        _ => Err("malformed RSA public key".to_string()),
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
        let mut pkcs1 =
            base64_decode(&RSA_PKCS1.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
        // The public exponent 65537 is encoded 02 03 01 00 01; make it 65539.
        let pos = pkcs1.windows(5).position(|w| w == [0x02, 0x03, 0x01, 0x00, 0x01]).unwrap();
        pkcs1[pos + 4] = 0x03;
        let forged = pem_encode("RSA PRIVATE KEY", &pkcs1);
        assert!(matches!(check(&rsa_cert, &forged), Err(CertError::Mismatch { .. })));
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let body: Vec<String> = b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
    }

    #[test]
    fn base64_round_trip() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in [0, 1, 2, 3, 4, 5, 100, 256] {
            let pem = pem_encode("X", &data[..n]);
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            assert_eq!(base64_decode(&body).unwrap(), &data[..n]);
        }
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
