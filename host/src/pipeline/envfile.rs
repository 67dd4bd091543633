//! The `.env` a release runs with: cultivate's own variables, the
//! application environment and the secrets. Written with mode 0600 and never
//! logged; its values reach containers only through compose interpolation.

use std::collections::BTreeMap;

/// Quotes a value so Compose v1 (python-dotenv) and v2 (compose-go) both read
/// it literally: plain when it is made of safe characters, else single-quoted.
/// A value with a single quote, a line break, `${` or a double backslash, or
/// ending in a backslash,
/// cannot be written that way (see compose/.env.example).
pub fn quote_value(key: &str, value: &str) -> Result<String, String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(format!("{key}: values cannot contain line breaks"));
    }
    let plain = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./:@+-,%".contains(&b));
    if plain {
        return Ok(value.to_string());
    }
    if value.contains('\'') {
        return Err(format!(
            "{key}: values cannot contain a single quote (Compose v1 and v2 read quotes in .env differently)"
        ));
    }
    // Compose v1 interpolates and unescapes these even inside single quotes.
    if value.contains("${") || value.contains("\\\\") || value.ends_with('\\') {
        return Err(format!(
            "{key}: values cannot contain `${{` or `\\\\`, nor end in `\\` (Compose v1 rewrites them even in quotes)"
        ));
    }
    Ok(format!("'{value}'"))
}

/// What cultivate itself puts into a release's `.env`.
#[derive(Debug, Clone, Default)]
pub struct System<'a> {
    /// Compose project and image prefix.
    pub project: &'a str,
    /// The release.
    pub version: &'a str,
    /// Published ports.
    pub http: u16,
    /// Published ports.
    pub https: u16,
    /// A certificate and key are deployed.
    pub tls: bool,
    /// Each service's image tag (`database` → `20261129-…`): the release that built the image.
    pub tags: BTreeMap<String, String>,
    /// The deploy directory (absolute): `EDGE_DIR` and `CERT_DIR` are under it.
    pub root: &'a str,
}

/// The variables cultivate sets itself.
pub fn system_vars(sys: &System<'_>) -> BTreeMap<String, String> {
    let mut v = BTreeMap::from([
        ("COMPOSE_PROJECT_NAME".to_string(), sys.project.to_string()),
        ("IMAGE_PREFIX".to_string(), sys.project.to_string()),
        ("RELEASE_VERSION".to_string(), sys.version.to_string()),
        ("HTTP_PORT".to_string(), sys.http.to_string()),
        ("HTTPS_PORT".to_string(), sys.https.to_string()),
        ("CERT_DIR".to_string(), format!("{}/certs", sys.root)),
        ("EDGE_DIR".to_string(), format!("{}/edge", sys.root)),
    ]);
    for (service, tag) in &sys.tags {
        v.insert(format!("{}_TAG", service.to_ascii_uppercase()), tag.clone());
    }
    if sys.tls {
        v.insert("TLS_CERT_NAME".into(), "fullchain.pem".into());
        v.insert("TLS_KEY_NAME".into(), "privkey.pem".into());
    }
    v
}

/// Renders the file: system variables, then the environment, then secrets.
pub fn render(
    version: &str,
    system: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<String, Vec<String>> {
    let mut out = format!("# Written by cultivate for release {version}. Edit cultivate.toml, not this file.\n");
    let mut errors = Vec::new();
    for (section, vars) in [("cultivate", system), ("application environment", env), ("secrets", secrets)] {
        out.push_str(&format!("# {section}\n"));
        for (k, v) in vars {
            match quote_value(k, v) {
                Ok(q) => out.push_str(&format!("{k}={q}\n")),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The file without the lines that change with every release (its header and
/// `RELEASE_VERSION`), for deciding whether anything changed.
pub fn fingerprint_text(rendered: &str) -> String {
    rendered
        .lines()
        .filter(|l| !l.starts_with("# Written by") && !l.starts_with("RELEASE_VERSION="))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_and_quoted() {
        assert_eq!(quote_value("A", "abc-1.2").unwrap(), "abc-1.2");
        assert_eq!(quote_value("A", "a b$c\"d#e").unwrap(), "'a b$c\"d#e'");
        assert!(quote_value("A", "it's").unwrap_err().contains("single quote"));
        assert!(quote_value("A", "a\nb").is_err());
        assert!(quote_value("A", "x${HOME}").is_err());
        assert!(quote_value("A", "a\\\\b").is_err());
        assert!(quote_value("A", "ends\\").is_err());
        assert_eq!(quote_value("A", "a$b\\c").unwrap(), "'a$b\\c'");
    }

    #[test]
    fn fingerprint_ignores_only_the_version() {
        let sys = |version, http| system_vars(&System { project: "p", version, http, https: 443, ..System::default() });
        let sys1 = sys("v1", 80);
        let sys2 = sys("v2", 80);
        let e = BTreeMap::new();
        let a = render("v1", &sys1, &e, &e).unwrap();
        let b = render("v2", &sys2, &e, &e).unwrap();
        assert_ne!(a, b);
        assert_eq!(fingerprint_text(&a), fingerprint_text(&b));
        let sys3 = sys("v2", 81);
        assert_ne!(fingerprint_text(&a), fingerprint_text(&render("v2", &sys3, &e, &e).unwrap()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever is accepted reads back literally by a shell-like single-quote reading.
        #[test]
        fn accepted_values_round_trip(v in "\\PC{0,30}") {
            if let Ok(q) = quote_value("K", &v) {
                let back = q.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).unwrap_or(&q);
                prop_assert_eq!(back, v.as_str());
            }
        }
    }
}
