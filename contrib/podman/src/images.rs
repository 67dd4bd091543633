//! Podman's image store: inspect (with layer lists), list, load, tag, remove.
//!
//! Podman differs from Docker in three ways this module handles: image IDs
//! come without the `sha256:` prefix (added here, as the host compares them
//! with `docker save`'s), images without a registry are stored under
//! `localhost/` (stripped from the tags it reports), and a missing image
//! says "image not known".

use std::collections::BTreeMap;

use cultivate_plugin_api::ops::{CommandSpec, ImageInfo, RemoveReport};
use cultivate_plugin_api::{ErrorKind, ExecOutput, ExecRequest, Host, PluginError};
use serde::Deserialize;

/// The argv `prefix` followed by `args`.
pub fn argv(prefix: &[String], args: &[&str]) -> Vec<String> {
    prefix.iter().cloned().chain(args.iter().map(|s| s.to_string())).collect()
}

/// True when Podman's error output says the image does not exist.
pub fn is_no_such_image(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("image not known") || s.contains("no such image") || s.contains("image not found")
}

/// `sha256:HEX` for Podman's bare `HEX` IDs (left alone when already prefixed).
pub fn content_id(id: &str) -> String {
    if id.contains(':') {
        id.to_string()
    } else {
        format!("sha256:{id}")
    }
}

/// A reference as the host names it: `localhost/cultivate-backend:1` → `cultivate-backend:1`.
pub fn short_name(reference: &str) -> &str {
    reference.strip_prefix("localhost/").unwrap_or(reference)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawInspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Size")]
    size: Option<i64>,
    #[serde(rename = "RootFS")]
    root_fs: Option<RawRootFs>,
    #[serde(rename = "Config")]
    config: Option<RawConfig>,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRootFs {
    #[serde(rename = "Layers")]
    layers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// Parses `podman image inspect` output (a JSON array).
pub fn parse_image_inspect(stdout: &str, reference: &str) -> Result<Vec<ImageInfo>, PluginError> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(v @ serde_json::Value::Object(_)) => vec![v],
        Ok(_) => return Err(PluginError::other(format!("unexpected image inspect output for {reference}"))),
        Err(e) => return Err(PluginError::other(format!("cannot parse image inspect output for {reference}: {e}"))),
    };
    Ok(values
        .into_iter()
        .filter_map(|v| serde_json::from_value::<RawInspect>(v).ok())
        .filter(|raw| !raw.id.is_empty())
        .map(|raw| ImageInfo {
            reference: reference.to_string(),
            id: Some(content_id(&raw.id)),
            layers: raw.root_fs.and_then(|r| r.layers).unwrap_or_default(),
            size: raw.size.unwrap_or(0).max(0) as u64,
            tags: raw.repo_tags.unwrap_or_default().iter().map(|t| short_name(t).to_string()).collect(),
            labels: raw.config.and_then(|c| c.labels).or(raw.labels).unwrap_or_default(),
        })
        .collect())
}

/// Inspects each reference. An absent image gives `id: None`, not an error.
pub fn inspect(host: &Host, prefix: &[String], refs: &[String]) -> Result<Vec<ImageInfo>, PluginError> {
    let mut out = Vec::with_capacity(refs.len());
    for reference in refs {
        let res = host.run(&argv(prefix, &["image", "inspect", reference.as_str()]))?;
        let absent = ImageInfo { reference: reference.clone(), ..ImageInfo::default() };
        if !res.success() {
            if is_no_such_image(&res.stderr) {
                out.push(absent);
                continue;
            }
            return Err(command_error(&format!("{} image inspect {reference}", prefix.join(" ")), &res));
        }
        let info = parse_image_inspect(&res.stdout, reference)?.into_iter().next().unwrap_or(absent);
        out.push(info);
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLsEntry {
    #[serde(rename = "Names")]
    names: Option<Vec<String>>,
}

/// The references in `podman image ls --format json` (one JSON array) whose
/// repository, without `localhost/`, starts with `prefix`; sorted, unique.
pub fn parse_image_ls(stdout: &str, prefix: &str) -> Result<Vec<String>, PluginError> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<RawLsEntry> = serde_json::from_str(trimmed)
        .map_err(|e| PluginError::other(format!("cannot parse `podman image ls --format json` output: {e}")))?;
    let mut refs: Vec<String> = entries
        .into_iter()
        .flat_map(|e| e.names.unwrap_or_default())
        .map(|n| short_name(&n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    refs.sort();
    refs.dedup();
    Ok(refs)
}

/// Images whose repository starts with `repo_prefix`, inspected.
pub fn list(host: &Host, prefix: &[String], repo_prefix: &str) -> Result<Vec<ImageInfo>, PluginError> {
    let res = host.run_ok(&argv(prefix, &["image", "ls", "--format", "json"]))?;
    let refs = parse_image_ls(&res.stdout, repo_prefix)?;
    Ok(inspect(host, prefix, &refs)?.into_iter().filter(|i| i.id.is_some()).collect())
}

/// The archive formats `podman load` takes besides `docker save`'s (the
/// probe's `load_formats`): an OCI archive without the layer blobs the store
/// already has. Podman 4.3's `load` refuses a `docker save` archive with layer
/// files left out ("Some layer tarfiles are missing in the tarball"), but from
/// an OCI layout containers/image asks the store for each layer by digest
/// before it reads the blob.
pub const LOAD_FORMATS: &str = "docker-archive,oci-archive-partial";

/// The command that loads an image archive from stdin: `podman load` finds
/// out itself whether it is a `docker save` archive or an OCI archive, and
/// tags the image with the reference the archive names.
pub fn load_command(prefix: &[String]) -> CommandSpec {
    ExecRequest::new(argv(prefix, &["load"]))
}

/// Tags `source` as `target`.
pub fn tag(host: &Host, prefix: &[String], source: &str, target: &str) -> Result<(), PluginError> {
    if source.trim().is_empty() || target.trim().is_empty() {
        return Err(PluginError::invalid("image.tag needs a source and a target"));
    }
    if source.starts_with('-') || target.starts_with('-') {
        return Err(PluginError::invalid(format!("image references must not start with '-': {source} {target}")));
    }
    host.run_ok(&argv(prefix, &["image", "tag", source, target]))?;
    Ok(())
}

/// Removes references without `--force`: Podman refuses an image a container
/// uses, reported in `failed`. An absent reference counts as removed.
pub fn remove(host: &Host, prefix: &[String], refs: &[String]) -> Result<RemoveReport, PluginError> {
    let mut report = RemoveReport::default();
    for reference in refs {
        if reference.starts_with('-') {
            report.failed.push((reference.clone(), "not an image reference".to_string()));
            continue;
        }
        let res = host.run(&argv(prefix, &["image", "rm", reference.as_str()]))?;
        if res.success() || is_no_such_image(&res.stderr) {
            report.removed.push(reference.clone());
        } else {
            let why = if res.stderr.trim().is_empty() { res.stdout.trim() } else { res.stderr.trim() };
            let why = if why.is_empty() { format!("exited with status {}", res.status) } else { why.to_string() };
            report.failed.push((reference.clone(), why));
        }
    }
    Ok(report)
}

/// The error for command `what` that exited non-zero, with its output.
pub fn command_error(what: &str, res: &ExecOutput) -> PluginError {
    let detail = if res.stderr.trim().is_empty() { res.stdout.trim() } else { res.stderr.trim() };
    PluginError::new(ErrorKind::CommandFailed, format!("{what} exited with status {}: {detail}", res.status))
}
