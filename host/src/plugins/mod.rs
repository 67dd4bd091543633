//! Plugin discovery, loading and selection.
//!
//! 1. Search, in order: `$CULTIVATE_PLUGIN_PATH` (colon-separated), the user's
//!    plugin directory (`$XDG_DATA_HOME/cultivate/plugins`), the directory of
//!    the `cultivate` executable.
//! 2. Open only files named like plugins (`libcultivate_plugin_*.so`); a file
//!    that fails to load is one line in [`Registry::failures`] and the others
//!    still load.
//! 3. The first plugin of a name wins; later ones are reported as shadowed.
//!    Each plugin's [`Origin`] says which of the three places it came from.
//! 4. The transport follows the target; runtimes are chosen per capability by
//!    probing the target, highest score among the available ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use cultivate_plugin_api::{
    Capability, Host, LoadedPlugin, PluginError, PluginKind, Probe, TargetInfo, LIBRARY_PREFIX,
};

use crate::error::{usage, Code, UserError};

/// A library that could not be loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// One line saying why.
    pub reason: String,
}

/// A plugin hidden by an earlier one of the same name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shadowed {
    /// The plugin name.
    pub name: String,
    /// The hidden file.
    pub path: PathBuf,
    /// The file that won.
    pub winner: PathBuf,
}

/// Everything found on the plugin path.
#[derive(Debug, Default)]
pub struct Registry {
    /// Loaded plugins, in search order.
    pub plugins: Vec<LoadedPlugin>,
    /// Libraries that failed to load.
    pub failures: Vec<LoadFailure>,
    /// Duplicates that lost.
    pub shadowed: Vec<Shadowed>,
    /// Directories searched, in order.
    pub searched: Vec<PathBuf>,
}

/// The platform's file name for plugin `stem` (`libcultivate_plugin_docker.so`).
pub fn is_plugin_file_name(name: &str) -> bool {
    let (prefix, suffix) = if cfg!(target_os = "macos") {
        ("lib", ".dylib")
    } else if cfg!(windows) {
        ("", ".dll")
    } else {
        ("lib", ".so")
    };
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_prefix(LIBRARY_PREFIX))
        .and_then(|n| n.strip_suffix(suffix))
        .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The directories searched for plugins, in order.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(path) = std::env::var_os("CULTIVATE_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
    }
    if std::env::var_os("CULTIVATE_NO_DEFAULT_PLUGINS").is_none() {
        dirs.extend(user_dir());
        dirs.extend(bundled_dir());
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The user's plugin directory, where `plugins install` puts plugins:
/// `$XDG_DATA_HOME/cultivate/plugins` (`~/.local/share/cultivate/plugins`).
pub fn user_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("cultivate").join("plugins"))
}

/// The directory of the `cultivate` executable (the plugins shipped with it).
pub fn bundled_dir() -> Option<PathBuf> {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Where a plugin library came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A directory of `$CULTIVATE_PLUGIN_PATH`.
    PluginPath,
    /// The user's plugin directory (`plugins install`).
    Installed,
    /// Next to the `cultivate` executable.
    Bundled,
    /// None of those (not reached by the search path).
    Other,
}

impl Origin {
    /// For `plugins list`.
    pub fn label(self) -> &'static str {
        match self {
            Origin::PluginPath => "CULTIVATE_PLUGIN_PATH",
            Origin::Installed => "installed",
            Origin::Bundled => "bundled",
            Origin::Other => "other",
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Where the library at `path` came from, checked in search order (a
/// directory named twice counts as its first place).
pub fn origin_of(path: &Path) -> Origin {
    let Some(dir) = path.parent() else { return Origin::Other };
    if let Some(env) = std::env::var_os("CULTIVATE_PLUGIN_PATH") {
        if std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()).any(|p| same_dir(&p, dir)) {
            return Origin::PluginPath;
        }
    }
    if user_dir().is_some_and(|u| same_dir(&u, dir)) {
        return Origin::Installed;
    }
    if bundled_dir().is_some_and(|b| same_dir(&b, dir)) {
        return Origin::Bundled;
    }
    Origin::Other
}

/// What `plugins install` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The plugin-API version it was built against.
    pub api_version: String,
    /// Where it now is.
    pub path: PathBuf,
    /// Libraries of the same name it replaced (`--force`).
    pub replaced: Vec<PathBuf>,
    /// A plugin of the same name that is searched first and so still wins.
    pub shadowed_by: Option<PathBuf>,
}

/// Checks the library at `src` by loading it (ABI, layout, API version) and
/// copies it into `dest_dir` atomically (a temporary file in that directory,
/// renamed over the final name). A plugin of the same name anywhere on the
/// search path (`registry`) is replaced only with `force`.
pub fn install(src: &Path, dest_dir: &Path, registry: &Registry, force: bool) -> Result<Installed, UserError> {
    let shown = src.display();
    let meta = std::fs::metadata(src).map_err(|e| usage(format!("cannot install {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(usage(format!("cannot install {shown}: not a file")));
    }
    let file_name = src.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !is_plugin_file_name(file_name) {
        return Err(usage(format!(
            "cannot install {shown}: cultivate loads only files named libcultivate_plugin_NAME.so"
        ))
        .hint(
            "name the crate's library `cultivate_plugin_NAME` (its [lib] name) and install the .so that cargo builds",
        ));
    }
    let plugin =
        LoadedPlugin::load(src).map_err(|e| UserError::new(Code::Failed, format!("cannot install {shown}: {e}")))?;
    let m = plugin.manifest().clone();
    let dest = dest_dir.join(file_name);
    if same_dir(src.parent().unwrap_or(Path::new(".")), dest_dir) {
        return Err(usage(format!("{shown} is already in the plugin directory {}", dest_dir.display())));
    }
    // Same name anywhere on the path (also a shadowed copy), or the same file name here.
    let mut same: Vec<PathBuf> = registry
        .plugins
        .iter()
        .filter(|p| p.manifest().name == m.name)
        .map(|p| p.path().to_path_buf())
        .chain(registry.shadowed.iter().filter(|s| s.name == m.name).map(|s| s.path.clone()))
        .collect();
    if dest.exists() && !same.iter().any(|p| p == &dest) {
        same.push(dest.clone());
    }
    if let Some(existing) = same.first() {
        if !force {
            return Err(usage(format!(
                "a plugin named {} is already installed at {}; use --force to replace it",
                m.name,
                existing.display()
            )));
        }
    }
    std::fs::create_dir_all(dest_dir)
        .map_err(|e| UserError::new(Code::Failed, format!("cannot create {}: {e}", dest_dir.display())))?;
    copy_atomically(src, &dest)
        .map_err(|e| UserError::new(Code::Failed, format!("cannot install {shown} as {}: {e}", dest.display())))?;
    // With --force, older files of the same name in this directory go (they would shadow or be shadowed).
    let mut replaced = Vec::new();
    for p in same {
        if p == dest {
            replaced.push(p);
        } else if p.parent().is_some_and(|d| same_dir(d, dest_dir)) {
            std::fs::remove_file(&p)
                .map_err(|e| UserError::new(Code::Failed, format!("cannot remove {}: {e}", p.display())))?;
            replaced.push(p);
        }
    }
    // Searched before the user's directory: CULTIVATE_PLUGIN_PATH.
    let shadowed_by = registry
        .plugins
        .iter()
        .find(|p| p.manifest().name == m.name && origin_of(p.path()) == Origin::PluginPath)
        .map(|p| p.path().to_path_buf());
    Ok(Installed { name: m.name, version: m.version, api_version: m.api_version, path: dest, replaced, shadowed_by })
}

/// Copies `src` to `dest` so that `dest` is never seen half-written: a
/// temporary file beside it, flushed to disk, mode 0755, renamed into place.
fn copy_atomically(src: &Path, dest: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".cultivate-install-").tempfile_in(dir)?;
    let mut from = std::fs::File::open(src)?;
    std::io::copy(&mut from, tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o755))?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the plugin named `name` from the user's plugin directory
/// `user_dir` (also a copy there that failed to load, by its file name).
/// Plugins elsewhere are not ours to delete: the error says where they are.
pub fn remove(name: &str, user_dir: &Path, registry: &Registry) -> Result<Vec<PathBuf>, UserError> {
    let in_user_dir = |p: &Path| p.parent().is_some_and(|d| same_dir(d, user_dir));
    let stem_file = format!("lib{LIBRARY_PREFIX}{}.so", name.replace('-', "_"));
    let mut files: Vec<PathBuf> = registry
        .plugins
        .iter()
        .filter(|p| p.manifest().name == name)
        .map(|p| p.path().to_path_buf())
        .chain(registry.shadowed.iter().filter(|s| s.name == name).map(|s| s.path.clone()))
        .chain(
            registry
                .failures
                .iter()
                .filter(|f| f.path.file_name().and_then(|n| n.to_str()) == Some(stem_file.as_str()))
                .map(|f| f.path.clone()),
        )
        .collect();
    let elsewhere: Vec<PathBuf> = files.iter().filter(|p| !in_user_dir(p)).cloned().collect();
    files.retain(|p| in_user_dir(p));
    if files.is_empty() {
        return Err(match elsewhere.first() {
            Some(p) => usage(format!(
                "plugin {name} at {} was not installed with `plugins install` ({}); only plugins in {} can be removed",
                p.display(),
                origin_of(p).label(),
                user_dir.display()
            )),
            None => {
                let installed: Vec<String> = registry
                    .plugins
                    .iter()
                    .filter(|p| in_user_dir(p.path()))
                    .map(|p| p.manifest().name.clone())
                    .collect();
                usage(format!("no plugin named {name} is installed in {}", user_dir.display())).hint(format!(
                    "installed there: {}",
                    if installed.is_empty() { "none".to_string() } else { installed.join(", ") }
                ))
            }
        });
    }
    for p in &files {
        std::fs::remove_file(p)
            .map_err(|e| UserError::new(Code::Failed, format!("cannot remove {}: {e}", p.display())))?;
    }
    Ok(files)
}

/// Plugin files in `dir`, sorted by name. A missing directory has none.
pub fn discover(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_plugin_file_name))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

impl Registry {
    /// Loads every plugin on `dirs`.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut reg = Registry { searched: dirs.to_vec(), ..Registry::default() };
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            for path in discover(dir) {
                match LoadedPlugin::load(&path) {
                    Ok(plugin) => {
                        let name = plugin.manifest().name.clone();
                        if let Some(winner) = by_name.get(&name) {
                            reg.shadowed.push(Shadowed { name, path, winner: winner.clone() });
                        } else {
                            by_name.insert(name, path);
                            reg.plugins.push(plugin);
                        }
                    }
                    Err(e) => reg.failures.push(LoadFailure { path, reason: e.to_string() }),
                }
            }
        }
        reg
    }

    /// Loads from the default search path.
    pub fn load_default() -> Registry {
        Registry::load(&search_path())
    }

    /// Fails with a helpful message when no plugin at all was found.
    pub fn ensure_not_empty(&self) -> Result<(), UserError> {
        if !self.plugins.is_empty() {
            return Ok(());
        }
        let searched = self.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        let searched = if searched.is_empty() { "nothing (the plugin path is empty)".to_string() } else { searched };
        Err(UserError::new(Code::Failed, format!("no cultivate plugins found; searched {searched}")).hint(
            "build them with `cargo build --release` (they land next to the binary), \
             or point CULTIVATE_PLUGIN_PATH at the directory holding libcultivate_plugin_*.so",
        ))
    }

    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<&LoadedPlugin> {
        self.plugins.iter().find(|p| p.manifest().name == name)
    }

    /// Plugins of a kind.
    pub fn of_kind(&self, kind: PluginKind) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins.iter().filter(move |p| p.manifest().kinds.contains(&kind))
    }

    fn names_of_kind(&self, kind: PluginKind) -> String {
        let names: Vec<_> = self.of_kind(kind).map(|p| p.manifest().name.clone()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The transport for `scheme` (`local`, `ssh`), or the one named by `--transport`.
    pub fn select_transport(&self, scheme: &str, override_name: Option<&str>) -> Result<&LoadedPlugin, UserError> {
        if let Some(name) = override_name {
            return match self.get(name) {
                Some(p) if p.manifest().kinds.contains(&PluginKind::Transport) => Ok(p),
                _ => Err(usage(format!("--transport {name}: no transport plugin of that name is installed"))
                    .hint(format!("installed transports: {}", self.names_of_kind(PluginKind::Transport)))),
            };
        }
        self.of_kind(PluginKind::Transport)
            .filter(|p| p.manifest().schemes.iter().any(|s| s == scheme))
            .max_by_key(|p| p.manifest().priority)
            .ok_or_else(|| {
                UserError::new(Code::Failed, format!("no transport plugin serves `{scheme}` targets"))
                    .hint(format!("installed transports: {}", self.names_of_kind(PluginKind::Transport)))
            })
    }

    /// Probes every runtime plugin on the target. Plugins for another OS are
    /// reported unavailable without running anything.
    pub fn probe_runtimes(&self, host: &Host, target: &TargetInfo) -> Vec<ProbeResult> {
        self.of_kind(PluginKind::Runtime)
            .map(|plugin| {
                let m = plugin.manifest();
                let os = target.os_key();
                let probe = if !m.target_os.is_empty() && !m.target_os.iter().any(|o| o == &os) {
                    Ok(Probe::unavailable(format!(
                        "{} runs on {}, the target is {}",
                        m.name,
                        m.target_os.join("/"),
                        target.os
                    )))
                } else {
                    plugin.probe(&host.for_plugin(&m.name), target)
                };
                ProbeResult { plugin: plugin.clone(), probe }
            })
            .collect()
    }
}

/// One runtime's answer.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The plugin.
    pub plugin: LoadedPlugin,
    /// Its probe, or the error it returned.
    pub probe: Result<Probe, PluginError>,
}

impl ProbeResult {
    /// Available on the target.
    pub fn available(&self) -> bool {
        matches!(&self.probe, Ok(p) if p.available)
    }

    /// Why not, in one line.
    pub fn reason(&self) -> String {
        match &self.probe {
            Ok(p) => p.reason.clone().unwrap_or_default(),
            Err(e) => format!("probe failed: {e}"),
        }
    }

    fn score(&self) -> i32 {
        match &self.probe {
            Ok(p) if p.available => {
                if p.score != 0 {
                    p.score
                } else {
                    self.plugin.manifest().priority
                }
            }
            _ => i32::MIN,
        }
    }
}

/// The runtimes chosen for a target: one per capability.
#[derive(Debug, Clone)]
pub struct RuntimeSelection {
    /// Supplies images.
    pub images: ProbeResult,
    /// Supplies the stack.
    pub stack: ProbeResult,
}

/// Picks one runtime per capability: `--runtime` first where it has the
/// capability, else the highest-scoring available one.
pub fn select_runtimes(probes: &[ProbeResult], override_name: Option<&str>) -> Result<RuntimeSelection, UserError> {
    let describe = |cap: Capability| {
        let lines: Vec<String> = probes
            .iter()
            .filter(|p| p.plugin.manifest().capabilities.contains(&cap))
            .map(|p| {
                if p.available() {
                    format!("{} (available)", p.plugin.manifest().name)
                } else {
                    format!("{} ({})", p.plugin.manifest().name, p.reason())
                }
            })
            .collect();
        if lines.is_empty() {
            "none installed".to_string()
        } else {
            lines.join("; ")
        }
    };
    if let Some(name) = override_name {
        let Some(chosen) = probes.iter().find(|p| p.plugin.manifest().name == name) else {
            let available: Vec<_> =
                probes.iter().filter(|p| p.available()).map(|p| p.plugin.manifest().name.clone()).collect();
            return Err(usage(format!("--runtime {name}: no runtime plugin of that name is installed")).hint(format!(
                "available on this target: {}",
                if available.is_empty() { "none".to_string() } else { available.join(", ") }
            )));
        };
        if !chosen.available() {
            let available: Vec<_> =
                probes.iter().filter(|p| p.available()).map(|p| p.plugin.manifest().name.clone()).collect();
            return Err(UserError::new(
                Code::RuntimeMissing,
                format!("--runtime {name} is not available on the target: {}", chosen.reason()),
            )
            .hint(format!(
                "available on this target: {}",
                if available.is_empty() { "none".to_string() } else { available.join(", ") }
            )));
        }
    }
    let pick = |cap: Capability| -> Result<ProbeResult, UserError> {
        let has = |p: &&ProbeResult| p.plugin.manifest().capabilities.contains(&cap);
        if let Some(name) = override_name {
            if let Some(p) = probes.iter().filter(has).find(|p| p.plugin.manifest().name == name) {
                return Ok(p.clone());
            }
        }
        probes.iter().filter(has).filter(|p| p.available()).max_by_key(|p| p.score()).cloned().ok_or_else(|| {
            UserError::new(
                Code::RuntimeMissing,
                format!("no container runtime on the target can supply {cap}: {}", describe(cap)),
            )
            .hint("install Docker and Compose on the target, or run `cultivate deploy --install-deps` (Debian, Ubuntu)")
        })
    };
    Ok(RuntimeSelection { images: pick(Capability::Images)?, stack: pick(Capability::Stack)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_file_names() {
        assert!(is_plugin_file_name("libcultivate_plugin_docker.so"));
        assert!(is_plugin_file_name("libcultivate_plugin_docker_compose.so"));
        assert!(!is_plugin_file_name("libcultivate_plugin_.so"));
        assert!(!is_plugin_file_name("libcultivate_plugin_docker.so.1"));
        assert!(!is_plugin_file_name("libcultivate_fixture_panicky.so"));
        assert!(!is_plugin_file_name("cultivate"));
        assert!(!is_plugin_file_name("libcultivate_plugin_doc-ker.so"));
    }

    #[test]
    fn missing_directory_has_no_plugins() {
        assert!(discover(Path::new("/nonexistent/cultivate/plugins")).is_empty());
    }

    #[test]
    fn empty_registry_says_where_it_looked() {
        let reg = Registry::load(&[PathBuf::from("/nonexistent/a")]);
        let err = reg.ensure_not_empty().unwrap_err();
        assert!(err.message.contains("/nonexistent/a"), "{}", err.message);
        assert!(err.hint.unwrap().contains("CULTIVATE_PLUGIN_PATH"));
        let err = Registry::load(&[]).ensure_not_empty().unwrap_err();
        assert!(err.message.contains("plugin path is empty"), "{}", err.message);
    }
}
