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

/// The variables cultivate sets itself.
pub fn system_vars(project: &str, version: &str, http: u16, https: u16, tls: bool) -> BTreeMap<String, String> {
    let mut v = BTreeMap::from([
        ("COMPOSE_PROJECT_NAME".to_string(), project.to_string()),
        ("IMAGE_PREFIX".to_string(), project.to_string()),
        ("RELEASE_VERSION".to_string(), version.to_string()),
        ("HTTP_PORT".to_string(), http.to_string()),
        ("HTTPS_PORT".to_string(), https.to_string()),
        ("CERT_DIR".to_string(), "./certs".to_string()),
    ]);
    if tls {
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
        let sys1 = system_vars("p", "v1", 80, 443, false);
        let sys2 = system_vars("p", "v2", 80, 443, false);
        let e = BTreeMap::new();
        let a = render("v1", &sys1, &e, &e).unwrap();
        let b = render("v2", &sys2, &e, &e).unwrap();
        assert_ne!(a, b);
        assert_eq!(fingerprint_text(&a), fingerprint_text(&b));
        let sys3 = system_vars("p", "v2", 81, 443, false);
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
