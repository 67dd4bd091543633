//! `cultivate config check` and `cultivate init`.

use std::path::Path;

use anyhow::Result;

use crate::cli::{EjectArgs, InitArgs, TargetArgs};
use crate::error::usage;
use crate::output::Printer;
use crate::settings::{self, Overrides};

/// Prints the resolved settings, secrets redacted, after checking them.
pub fn check(printer: &Printer, config: Option<&Path>, args: &TargetArgs) -> Result<()> {
    let s = settings::load(config, &Overrides::from_target(args))?;
    crate::checks::enforce(&s)?;
    let mut value = serde_json::to_value(&s)?;
    value["stack"] = serde_json::Value::String(s.stack().describe());
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

/// Writes the built-in stack into the project.
pub fn eject(printer: &Printer, config: Option<&Path>, args: &EjectArgs) -> Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let cwd = std::env::current_dir()?;
            match config.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => cwd.join(p),
                None => cwd,
            }
        }
    };
    let written = crate::stack::eject(&dir, args.force)?;
    printer.success(&format!("wrote the stack of cultivate {} into {}", env!("CARGO_PKG_VERSION"), dir.display()));
    for w in &written {
        printer.detail(&w.display().to_string());
    }
    printer.detail("cultivate now builds and runs with these files (the plan says so); delete docker/ and compose/ to go back to the built-in stack");
    Ok(())
}

/// What `init` found in an existing project.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// `app_dir`, relative to the configuration file.
    pub app_dir: String,
    /// `app.start_command`.
    pub start_command: Option<String>,
    /// `app.build_command` (`""` for static files).
    pub build_command: Option<String>,
    /// `app.output_dir`.
    pub output_dir: Option<String>,
    /// `app.health_path`.
    pub health_path: Option<String>,
    /// `secrets_file`, when one is there.
    pub secrets_file: Option<String>,
    /// `release.command`: the backend's `migrate` (or `release`) script.
    pub release_command: Option<String>,
}

/// The backend's JavaScript (node_modules left out, at most 200 files), for guessing its health route.
fn backend_code(backend: &Path) -> String {
    let mut code = String::new();
    let mut dirs = vec![backend.to_path_buf()];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = fs_err::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                if !e.file_name().to_string_lossy().starts_with(['.']) && e.file_name() != "node_modules" {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "js" || x == "mjs" || x == "cjs" || x == "ts")
                && files < 200
            {
                files += 1;
                code.push_str(&fs_err::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    code
}

fn scripts(dir: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let text = fs_err::read_to_string(dir.join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json.get("scripts").and_then(|s| s.as_object()).cloned().unwrap_or_default())
}

/// Looks for an application (a directory with backend/ and frontend/) in `dir` or one level down.
pub fn detect(dir: &Path) -> Option<Detected> {
    let mut candidates = vec![(dir.to_path_buf(), ".".to_string())];
    if let Ok(entries) = fs_err::read_dir(dir) {
        let mut subs: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        subs.sort();
        for p in subs {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if !name.starts_with('.') && name != "node_modules" {
                candidates.push((p, name));
            }
        }
    }
    let (app, rel) = candidates.into_iter().find(|(p, _)| {
        p.join("backend/package.json").is_file()
            && (p.join("frontend/package.json").is_file() || p.join("frontend").is_dir())
    })?;
    let backend = app.join("backend");
    let frontend = app.join("frontend");
    let mut d = Detected { app_dir: rel, ..Detected::default() };
    let backend_scripts = scripts(&backend).unwrap_or_default();
    let script = |name: &str| backend_scripts.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let start = script("start");
    d.release_command = script("migrate").or_else(|| script("release"));
    d.start_command = start.or_else(|| {
        ["server.js", "index.js", "main.js", "app.js"]
            .iter()
            .find(|f| backend.join(f).is_file())
            .map(|f| format!("node {f}"))
    });
    // The health route: the first of the usual ones the backend's code mentions.
    let code = backend_code(&backend);
    d.health_path = ["/healthz", "/health", "/api/health", "/status"]
        .iter()
        .find(|p| {
            code.contains(&format!("'{p}'")) || code.contains(&format!("\"{p}\"")) || code.contains(&format!("`{p}`"))
        })
        .map(|p| p.to_string());
    let build = scripts(&frontend).and_then(|s| s.get("build").and_then(|v| v.as_str()).map(str::to_string));
    match build {
        Some(b) => {
            d.build_command = Some(b);
            d.output_dir = Some(
                if frontend.join("build").is_dir() && !frontend.join("dist").is_dir() { "build" } else { "dist" }
                    .into(),
            );
        }
        None => {
            d.build_command = Some(String::new());
            d.output_dir = ["public", "dist", "build", "."]
                .iter()
                .find(|o| frontend.join(o).join("index.html").is_file())
                .map(|o| o.to_string())
                .or(Some(".".into()));
        }
    }
    d.secrets_file =
        ["secrets.env", ".cultivate/secrets.env"].iter().find(|f| dir.join(f).is_file()).map(|f| f.to_string());
    Some(d)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `cultivate.toml` for a detected application.
pub fn render_detected(d: &Detected, target: &str) -> String {
    let mut out = String::from(
        "# Written by `cultivate init` for the application it found here; see\n\
         # docs/your-app.md for what cultivate expects and docs/configuration.md for every setting.\n",
    );
    out.push_str(&format!("target = {}\n", toml_str(target)));
    out.push_str(&format!("app_dir = {}\n", toml_str(&d.app_dir)));
    match &d.secrets_file {
        Some(f) => out.push_str(&format!("secrets_file = {}\n", toml_str(f))),
        None => out.push_str("# KEY=VALUE lines, mode 0600; every key reaches the backend as a variable.\n# secrets_file = \"secrets.env\"\n"),
    }
    out.push_str("\n[app]\n");
    if let Some(h) = &d.health_path {
        out.push_str(&format!("health_path = {}\n", toml_str(h)));
    }
    if let Some(c) = &d.start_command {
        out.push_str(&format!("start_command = {}\n", toml_str(c)));
    }
    if let Some(c) = &d.build_command {
        out.push_str(&format!("build_command = {}\n", toml_str(c)));
    }
    if let Some(o) = &d.output_dir {
        out.push_str(&format!("output_dir = {}\n", toml_str(o)));
    }
    out.push_str("\n# Run once per deploy, before traffic moves (migrations):\n");
    match &d.release_command {
        Some(c) => out.push_str(&format!("[release]\ncommand = {}\n", toml_str(c))),
        None => out.push_str("# [release]\n# command = \"node migrate.js\"\n"),
    }
    out.push_str("\n# Variables for the backend (not secret):\n[env]\n");
    out
}

/// Writes `cultivate.toml`: for the application found in its directory, or the commented example.
pub fn init(printer: &Printer, args: &InitArgs) -> Result<()> {
    if args.path.exists() && !args.force {
        return Err(usage(format!("{} already exists", args.path.display()))
            .hint("pass --force to overwrite it")
            .into());
    }
    let dir = args
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or(std::env::current_dir()?);
    let target = args.target.clone().unwrap_or_else(|| "local".into());
    let text = match detect(&dir) {
        Some(d) => {
            printer.detail(&format!(
                "found the application in {}: backend started by `{}`, frontend {}",
                dir.join(&d.app_dir).display(),
                d.start_command.as_deref().unwrap_or("?"),
                match d.build_command.as_deref() {
                    Some("") | None => format!("static files in {}", d.output_dir.as_deref().unwrap_or(".")),
                    Some(b) => format!("built by `{b}` into {}", d.output_dir.as_deref().unwrap_or("dist")),
                }
            ));
            render_detected(&d, &target)
        }
        None => {
            printer.warn(&format!(
                "no application found in {} (a directory with backend/package.json and frontend/): writing the commented example",
                dir.display()
            ));
            EXAMPLE.to_string()
        }
    };
    fs_err::write(&args.path, text)?;
    printer.success(&format!("wrote {}", args.path.display()));
    printer.detail("put secrets in the file named by `secrets_file` (mode 0600), never in cultivate.toml; `cultivate config check` checks it all");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_finds_an_application_and_writes_a_config_that_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        };
        assert_eq!(detect(dir.path()), None);
        w("shop/backend/package.json", r#"{"scripts":{"start":"node api.js","migrate":"node db/migrate.js"}}"#);
        w("shop/backend/api.js", "require('./lib/routes');");
        w("shop/backend/lib/routes.js", "if (req.url === '/healthz') ok();");
        w("shop/frontend/public/index.html", "<p>hi</p>");
        w("secrets.env", "A=1\n");
        let d = detect(dir.path()).unwrap();
        assert_eq!(
            d,
            Detected {
                app_dir: "shop".into(),
                start_command: Some("node api.js".into()),
                build_command: Some(String::new()),
                output_dir: Some("public".into()),
                health_path: Some("/healthz".into()),
                secrets_file: Some("secrets.env".into()),
                release_command: Some("node db/migrate.js".into()),
            }
        );
        let text = render_detected(&d, "ssh://deploy@host");
        let s = crate::settings::resolve(
            Some((&dir.path().join("cultivate.toml"), &text)),
            &Default::default(),
            &Default::default(),
            dir.path(),
        )
        .unwrap();
        assert_eq!(s.app_dir, dir.path().join("shop"));
        assert_eq!(s.app.health_path, "/healthz");
        assert_eq!(s.release_command.as_deref(), Some("node db/migrate.js"));
        assert!(crate::checks::app_layout(&s).is_empty(), "{:?}", crate::checks::app_layout(&s));
    }
}
