//! `cultivate plugins list`, `plugins install`, `plugins remove`.

use anyhow::Result;
use serde_json::json;

use crate::cli::{PluginsInstallArgs, PluginsListArgs, PluginsRemoveArgs};
use crate::error::{Code, UserError};
use crate::output::Printer;
use crate::plugins::{origin_of, ProbeResult, Registry};
use crate::session::Session;
use crate::settings::Settings;
use crate::target::Target;

/// Lists the plugins and, with `--target`, what each finds there.
pub fn list(printer: &Printer, args: &PluginsListArgs, settings: Option<&Settings>) -> Result<()> {
    let registry = Registry::load_default();
    for s in &registry.shadowed {
        tracing::warn!("plugin {} at {} is shadowed by {}", s.name, s.path.display(), s.winner.display());
    }
    registry.ensure_not_empty()?;
    let probes: Option<(Session, Vec<ProbeResult>)> = match &args.target.target {
        Some(t) => {
            let target = Target::parse(t)?;
            let opts = crate::settings::connect_options(&args.target, settings);
            let session = Session::connect(&registry, &target, &opts)?;
            let probes = registry.probe_runtimes(session.host(), &session.info);
            Some((session, probes))
        }
        None => None,
    };
    // What a deploy would use there (with --runtime, what it would force).
    let selection = probes.as_ref().map(|(_, ps)| crate::plugins::select_runtimes(ps, args.target.runtime.as_deref()));
    let probe_of =
        |name: &str| probes.as_ref().and_then(|(_, ps)| ps.iter().find(|p| p.plugin.manifest().name == name));

    if printer.json() {
        let plugins: Vec<_> = registry
            .plugins
            .iter()
            .map(|p| {
                let m = p.manifest();
                let mut v = json!({
                    "name": m.name, "kinds": m.kinds, "version": m.version, "api_version": m.api_version,
                    "capabilities": m.capabilities, "priority": m.priority, "target_os": m.target_os,
                    "schemes": m.schemes, "operations": m.operations, "path": p.path(),
                    "origin": origin_of(p.path()),
                });
                if let Some(pr) = probe_of(&m.name) {
                    v["probe"] = match &pr.probe {
                        Ok(probe) => serde_json::to_value(probe).unwrap_or_default(),
                        Err(e) => json!({ "available": false, "reason": format!("probe failed: {e}") }),
                    };
                }
                v
            })
            .collect();
        let mut out = json!({
            "plugins": plugins,
            "failures": registry.failures,
            "shadowed": registry.shadowed,
            "searched": registry.searched,
        });
        if let Some((session, _)) = &probes {
            out["target"] =
                json!({ "target": session.target.as_str(), "transport": session.transport, "info": session.info });
        }
        match &selection {
            Some(Ok(sel)) => {
                out["selected"] = json!({
                    "images": sel.images.plugin.manifest().name,
                    "stack": sel.stack.plugin.manifest().name,
                })
            }
            Some(Err(e)) => out["selected"] = json!({ "error": e.message, "hint": e.hint }),
            None => {}
        }
        printer.json_value(&out);
        return Ok(());
    }

    let mut rows = vec![vec![
        "NAME".to_string(),
        "KIND".into(),
        "VERSION".into(),
        "API".into(),
        "FROM".into(),
        if probes.is_some() { "ON TARGET".into() } else { "PATH".into() },
    ]];
    for p in &registry.plugins {
        let m = p.manifest();
        let kinds: Vec<String> = m.kinds.iter().map(|k| k.to_string()).collect();
        let last = match probe_of(&m.name) {
            Some(pr) => match &pr.probe {
                Ok(probe) if probe.available => format!(
                    "available {} (score {}){}",
                    probe.version.as_deref().unwrap_or(""),
                    if probe.score != 0 { probe.score } else { m.priority },
                    probe.details.get("flavour").map(|f| format!(", compose {f}")).unwrap_or_default()
                ),
                _ => format!("unavailable: {}", pr.reason()),
            },
            None if probes.is_some() => match &probes {
                Some((s, _)) if m.schemes.iter().any(|sc| sc == s.target.scheme()) && s.transport == m.name => {
                    format!("connected ({})", s.peer)
                }
                _ => "-".into(),
            },
            None => p.path().display().to_string(),
        };
        rows.push(vec![
            m.name.clone(),
            kinds.join(","),
            m.version.clone(),
            m.api_version.clone(),
            origin_of(p.path()).label().to_string(),
            last,
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == row.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        printer.data(line.join("  ").trim_end());
    }
    if let Some((session, _)) = &probes {
        printer.data(&format!(
            "\ntarget {}: {} {} via {} ({})",
            session.target,
            session.info.os,
            session.info.arch,
            session.transport,
            session.info.os_release.get("PRETTY_NAME").map(String::as_str).unwrap_or("unknown release")
        ));
        match &selection {
            Some(Ok(sel)) => printer.data(&format!(
                "chosen: images {}, stack {}",
                sel.images.plugin.manifest().name,
                sel.stack.plugin.manifest().name
            )),
            Some(Err(e)) => printer.data(&format!("chosen: none: {}", e.message)),
            None => {}
        }
    }
    for f in &registry.failures {
        printer.data(&format!("failed to load {}: {}", f.path.display(), f.reason));
    }
    for s in &registry.shadowed {
        printer.data(&format!("shadowed: {} at {} (using {})", s.name, s.path.display(), s.winner.display()));
    }
    Ok(())
}

fn no_user_dir() -> UserError {
    UserError::new(Code::Failed, "no user data directory to install plugins into")
        .hint("set XDG_DATA_HOME or HOME; plugins go to $XDG_DATA_HOME/cultivate/plugins")
}

/// Checks a plugin library by loading it, then copies it into the user's plugin directory.
pub fn install(printer: &Printer, args: &PluginsInstallArgs) -> Result<()> {
    let dir = crate::plugins::user_dir().ok_or_else(no_user_dir)?;
    let registry = Registry::load_default();
    let done = crate::plugins::install(&args.path, &dir, &registry, args.force)?;
    if printer.json() {
        printer.json_value(&serde_json::to_value(&done)?);
    } else {
        printer.success(&format!(
            "installed plugin {} {} (plugin API {}) at {}",
            done.name,
            done.version,
            done.api_version,
            done.path.display()
        ));
        for r in done.replaced.iter().filter(|r| **r != done.path) {
            printer.detail(&format!("removed the replaced {}", r.display()));
        }
    }
    if let Some(p) = &done.shadowed_by {
        printer.warn(&format!(
            "{} in CULTIVATE_PLUGIN_PATH is searched first and still wins over the installed plugin",
            p.display()
        ));
    }
    Ok(())
}

/// Removes a plugin installed with `plugins install`.
pub fn remove(printer: &Printer, args: &PluginsRemoveArgs) -> Result<()> {
    let dir = crate::plugins::user_dir().ok_or_else(no_user_dir)?;
    let registry = Registry::load_default();
    let removed = crate::plugins::remove(&args.name, &dir, &registry)?;
    if printer.json() {
        printer.json_value(&json!({ "removed": args.name, "paths": removed }));
    } else {
        for p in &removed {
            printer.success(&format!("removed plugin {} ({})", args.name, p.display()));
        }
    }
    Ok(())
}
