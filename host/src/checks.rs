//! Checks before anything runs (`config check`, the start of `deploy`,
//! `--dry-run` included): the application against the contract of
//! docs/your-app.md, the stack files, the secrets file and the certificate
//! pair. Every problem at once, each naming its setting and the fix; the
//! caller turns a non-empty list into exit 2. Reads files only.

use std::path::Path;

use crate::settings::{Problem, Settings};

/// Dependencies the base image provides (Debian packages), so they need not be vendored.
pub const PROVIDED_DEPENDENCIES: &[&str] = &["pg"];

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem { key: key.to_string(), message: message.into() }
}

/// The file a command like `node server.js` runs, when it is that simple.
fn node_script(command: &str) -> Option<&str> {
    let mut words = command.split_whitespace();
    (words.next() == Some("node")).then(|| words.next()).flatten().filter(|w| !w.starts_with('-'))
}

/// The application's layout against the contract.
pub fn app_layout(s: &Settings) -> Vec<Problem> {
    let mut out = Vec::new();
    let app = &s.app_dir;
    if !app.is_dir() {
        out.push(problem(
            "app_dir",
            format!("{} does not exist; set `app_dir` to the directory holding backend/ and frontend/", app.display()),
        ));
        return out;
    }
    let backend = app.join("backend");
    if !backend.is_dir() {
        out.push(problem(
            "app_dir",
            format!("{} has no backend/ directory: put the Node.js API there (docs/your-app.md)", app.display()),
        ));
    } else {
        out.extend(backend_layout(s, &backend));
    }
    let frontend = app.join("frontend");
    if !frontend.is_dir() {
        out.push(problem(
            "app_dir",
            format!(
                "{} has no frontend/ directory: put the site there, as static files or with a build (docs/your-app.md)",
                app.display()
            ),
        ));
    } else {
        out.extend(frontend_layout(s, &frontend));
    }
    out
}

fn backend_layout(s: &Settings, backend: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let package = backend.join("package.json");
    match fs_err::read_to_string(&package) {
        Err(_) => out.push(problem(
            "app_dir",
            format!("{} is missing: the backend needs a package.json (name, dependencies)", package.display()),
        )),
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Err(e) => out.push(problem("app_dir", format!("{} is not valid JSON: {e}", package.display()))),
            Ok(json) => {
                let deps = json.get("dependencies").and_then(|d| d.as_object()).cloned().unwrap_or_default();
                let missing: Vec<String> = deps
                    .keys()
                    .filter(|d| {
                        !PROVIDED_DEPENDENCIES.contains(&d.as_str())
                            && !backend.join("node_modules").join(d).join("package.json").is_file()
                    })
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    out.push(problem(
                        "app_dir",
                        format!(
                            "the backend's dependencies {} are not in {}: the image build installs nothing from a registry, \
                             so vendor them (`npm ci --omit=dev` in backend/ on a machine with registry access)",
                            missing.join(", "),
                            backend.join("node_modules").display()
                        ),
                    ));
                }
            }
        },
    }
    if let Some(script) = node_script(&s.app.start_command) {
        if !backend.join(script).is_file() {
            out.push(problem(
                "app.start_command",
                format!(
                    "`{}` runs {script}, which is not in {}: set app.start_command to how your backend starts",
                    s.app.start_command,
                    backend.display()
                ),
            ));
        }
    }
    out
}

fn frontend_layout(s: &Settings, frontend: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    if s.app.build_command.trim().is_empty() {
        let index = frontend.join(&s.app.output_dir).join("index.html");
        if !index.is_file() {
            out.push(problem(
                "app.output_dir",
                format!(
                    "{} is missing: with no app.build_command the frontend is static files served from app.output_dir \
                     (\".\" for frontend/ itself)",
                    index.display()
                ),
            ));
        }
    } else if let Some(script) = node_script(&s.app.build_command) {
        if !frontend.join(script).is_file() {
            out.push(problem(
                "app.build_command",
                format!(
                    "`{}` runs {script}, which is not in {}: set app.build_command to your build, \
                     or to \"\" for a directory of static files",
                    s.app.build_command,
                    frontend.display()
                ),
            ));
        }
    }
    out
}

/// The stack's files, and whether the compose file can pass the variables on.
pub fn stack(s: &Settings) -> Vec<Problem> {
    let stack = s.stack();
    let mut out: Vec<Problem> = stack
        .problems()
        .into_iter()
        .map(|m| {
            problem(
                "stack_dir",
                format!(
                    "{m}: run `cultivate stack eject --force` there, or remove `stack_dir` to use the built-in stack"
                ),
            )
        })
        .collect();
    if out.is_empty() {
        if let Ok(compose) = stack.compose() {
            if !String::from_utf8_lossy(&compose).contains(crate::stack::ENV_MARKER) && !s.env.is_empty() {
                out.push(problem(
                    "stack_dir",
                    format!(
                        "the project's compose file has no `{}` line, so [env] cannot reach the backend: add it to the backend's environment",
                        crate::stack::ENV_MARKER
                    ),
                ));
            }
        }
    }
    out
}

/// The secrets file: there, mode 0600, parses, no name cultivate sets itself.
pub fn secrets(s: &Settings) -> Vec<Problem> {
    let Some(path) = &s.secrets_file else { return Vec::new() };
    match crate::settings::load_secrets(path) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let hint = crate::error::hint(&e).map(|h| format!(" ({h})")).unwrap_or_default();
            vec![problem("secrets_file", format!("{e:#}{hint}"))]
        }
    }
}

/// The certificate pair, when configured.
pub fn certs(s: &Settings) -> Vec<Problem> {
    let Some(tls) = &s.tls else { return Vec::new() };
    match crate::certs::check_files(&tls.cert, &tls.key, s.cert_warning_days) {
        Ok(_) => Vec::new(),
        Err(e) => vec![problem("tls.cert", format!("the certificate pair is not usable: {e}; fix tls.cert / tls.key"))],
    }
}

/// Commands that call npm or npx, which the images do not have (Debian's
/// `nodejs` without `npm`; no registry either).
pub fn commands(s: &Settings) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut check = |key: &str, command: Option<&str>, fix: &str| {
        if let Some(c) = command {
            if let Some(tool) = c.split_whitespace().next().filter(|w| *w == "npm" || *w == "npx") {
                out.push(problem(
                    key,
                    format!("`{c}` needs {tool}, which the images do not have (Node.js only, no npm registry): {fix}"),
                ));
            }
        }
    };
    check("app.start_command", Some(&s.app.start_command), "run node directly, e.g. \"node server.js\"");
    check("app.build_command", Some(&s.app.build_command), "run node directly, e.g. \"node build.js\"");
    check(
        "release.command",
        s.release_command.as_deref(),
        "call the vendored tool, e.g. \"node_modules/.bin/prisma migrate deploy\"",
    );
    out
}

/// Every check, in order.
pub fn all(s: &Settings) -> Vec<Problem> {
    let mut out = app_layout(s);
    out.extend(commands(s));
    out.extend(stack(s));
    out.extend(secrets(s));
    out.extend(certs(s));
    out
}

/// Every problem as one usage error (exit 2), or nothing.
pub fn enforce(s: &Settings) -> anyhow::Result<()> {
    let problems = all(s);
    if problems.is_empty() {
        return Ok(());
    }
    Err(crate::error::usage(crate::settings::ConfigErrors(problems).to_string())
        .hint("fix the settings named above; docs/your-app.md describes what cultivate expects of the application")
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn settings(dir: &Path, extra: &str) -> Settings {
        let text = format!("target = \"local\"\napp_dir = \"app\"\n{extra}");
        crate::settings::resolve(
            Some((&dir.join("cultivate.toml"), &text)),
            &BTreeMap::new(),
            &crate::settings::Overrides::default(),
            dir,
        )
        .unwrap()
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn messages(p: &[Problem]) -> Vec<String> {
        p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
    }

    #[test]
    fn the_bundled_example_passes() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = "target = \"local\"\napp_dir = \"examples/app\"\n[env]\nA = \"1\"";
        let s = crate::settings::resolve(
            Some((&repo.join("cultivate.toml"), text)),
            &BTreeMap::new(),
            &crate::settings::Overrides::default(),
            repo,
        )
        .unwrap();
        assert!(all(&s).is_empty(), "{:?}", messages(&all(&s)));
    }

    #[test]
    fn a_missing_app_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = app_layout(&settings(dir.path(), ""));
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("does not exist"), "{:?}", messages(&p));
        assert_eq!(p[0].key, "app_dir");
    }

    #[test]
    fn every_layout_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        let p = app_layout(&settings(dir.path(), ""));
        let m = messages(&p);
        assert_eq!(p.len(), 2, "{m:?}");
        assert!(m[0].contains("no backend/ directory"), "{m:?}");
        assert!(m[1].contains("no frontend/ directory"), "{m:?}");

        write(&dir.path().join("app/backend/package.json"), r#"{"dependencies":{"pg":"^8","left-pad":"1"}}"#);
        write(&dir.path().join("app/frontend/index.html"), "<p>hi</p>");
        let p = app_layout(&settings(dir.path(), ""));
        let m = messages(&p);
        assert_eq!(p.len(), 3, "{m:?}");
        assert!(m[0].contains("dependencies left-pad are not in"), "{m:?}");
        assert!(m[1].starts_with("app.start_command: `node server.js` runs server.js"), "{m:?}");
        assert!(m[2].starts_with("app.build_command: `node build.js` runs build.js"), "{m:?}");

        write(&dir.path().join("app/backend/node_modules/left-pad/package.json"), "{}");
        write(&dir.path().join("app/backend/main.js"), "");
        let ok =
            settings(dir.path(), "[app]\nstart_command = \"node main.js\"\nbuild_command = \"\"\noutput_dir = \".\"");
        assert!(app_layout(&ok).is_empty(), "{:?}", messages(&app_layout(&ok)));
        let no_index = settings(
            dir.path(),
            "[app]\nstart_command = \"node main.js\"\nbuild_command = \"\"\noutput_dir = \"public\"",
        );
        let m = messages(&app_layout(&no_index));
        assert!(
            m.len() == 1 && m[0].starts_with("app.output_dir:") && m[0].contains("public/index.html is missing"),
            "{m:?}"
        );

        write(&dir.path().join("app/backend/package.json"), "{not json");
        let m = messages(&app_layout(&ok));
        assert!(m.len() == 1 && m[0].contains("is not valid JSON"), "{m:?}");
    }

    #[test]
    fn npm_and_npx_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(
            dir.path(),
            "[app]\nbuild_command = \"npm run build\"\n[release]\ncommand = \"npx prisma migrate deploy\"",
        );
        let m = messages(&commands(&s));
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("app.build_command: `npm run build` needs npm"), "{m:?}");
        assert!(
            m[1].starts_with("release.command: `npx prisma migrate deploy` needs npx")
                && m[1].contains("node_modules/.bin/prisma"),
            "{m:?}"
        );
    }

    #[test]
    fn stack_secrets_and_certs() {
        let dir = tempfile::tempdir().unwrap();
        // No stack beside the file: the built-in one, nothing to say.
        assert!(stack(&settings(dir.path(), "")).is_empty());
        let p = stack(&settings(dir.path(), "stack_dir = \"mystack\""));
        assert_eq!(p.len(), crate::stack::REQUIRED.len(), "{:?}", messages(&p));
        assert!(p.iter().all(|p| p.key == "stack_dir" && p.message.contains("is missing")));

        let p = secrets(&settings(dir.path(), "secrets_file = \"s.env\""));
        assert!(
            p.len() == 1 && p[0].key == "secrets_file" && p[0].message.contains("No such file"),
            "{:?}",
            messages(&p)
        );
        let path = dir.path().join("s.env");
        std::fs::write(&path, "A=1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = secrets(&settings(dir.path(), "secrets_file = \"s.env\""));
        assert!(p[0].message.contains("mode 0644") && p[0].message.contains("chmod 600"), "{:?}", messages(&p));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "no equals sign\n").unwrap();
        let p = secrets(&settings(dir.path(), "secrets_file = \"s.env\""));
        assert!(p[0].message.contains("line 1: expected KEY=VALUE"), "{:?}", messages(&p));

        write(&dir.path().join("c.pem"), "not a certificate");
        write(&dir.path().join("k.pem"), "not a key");
        let p = certs(&settings(dir.path(), "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\""));
        assert!(p.len() == 1 && p[0].key == "tls.cert" && p[0].message.contains("not usable"), "{:?}", messages(&p));
    }
}
