//! Image-store operations over a docker-compatible CLI (`docker`, `finch`).
//!
//! Shared by the docker and finch plugins (finch includes this file with
//! `#[path]`). Every function takes the CLI's argv prefix (`["docker"]`,
//! `["/opt/homebrew/bin/finch"]`) and runs commands through the [`Host`].

use std::collections::BTreeMap;

use cultivate_plugin_api::ops::{CommandSpec, ImageBuildRequest, ImageInfo, RemoveReport};
use cultivate_plugin_api::{ErrorKind, ExecOutput, ExecRequest, Host, PluginError};
use serde::Deserialize;

/// The argv `prefix` followed by `args`.
pub fn argv(prefix: &[String], args: &[&str]) -> Vec<String> {
    prefix.iter().cloned().chain(args.iter().map(|s| s.to_string())).collect()
}

/// True when a CLI's error output says the image does not exist.
pub fn is_no_such_image(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("no such image") || s.contains("no such object")
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

/// Parses `docker image inspect` output (a JSON array) into image infos whose
/// `reference` is `reference`. Objects that do not parse are skipped.
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
            id: Some(raw.id),
            layers: raw.root_fs.and_then(|r| r.layers).unwrap_or_default(),
            size: raw.size.unwrap_or(0).max(0) as u64,
            tags: raw.repo_tags.unwrap_or_default(),
            labels: raw.config.and_then(|c| c.labels).unwrap_or_default(),
        })
        .collect())
}

/// Inspects each reference. An absent image gives `id: None`, not an error;
/// any other failure (daemon down) is an error.
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

/// One line of `docker image ls --format '{{json .}}'`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLsLine {
    #[serde(rename = "Repository")]
    repository: String,
    #[serde(rename = "Tag")]
    tag: String,
    #[serde(rename = "ID")]
    id: String,
}

/// The `repository:tag` references in `docker image ls --format '{{json .}}'`
/// output whose repository starts with `prefix` (untagged images are skipped).
/// Lines that do not parse are skipped.
pub fn parse_image_ls(stdout: &str, prefix: &str) -> Vec<String> {
    let mut refs: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<RawLsLine>(l.trim()).ok())
        .filter(|l| !l.repository.is_empty() && l.repository != "<none>" && l.repository.starts_with(prefix))
        .map(|l| if l.tag.is_empty() || l.tag == "<none>" { l.id } else { format!("{}:{}", l.repository, l.tag) })
        .filter(|r| !r.is_empty())
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

/// The `(reference, image ID as listed)` pairs of [`parse_image_ls`]'s references.
pub fn parse_image_ls_ids(stdout: &str, prefix: &str) -> Vec<(String, String)> {
    let refs = parse_image_ls(stdout, prefix);
    let mut pairs: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<RawLsLine>(l.trim()).ok())
        .filter(|l| !l.id.is_empty())
        .map(|l| {
            let r = if l.tag.is_empty() || l.tag == "<none>" {
                l.id.clone()
            } else {
                format!("{}:{}", l.repository, l.tag)
            };
            (r, l.id)
        })
        .filter(|(r, _)| refs.binary_search(r).is_ok())
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// Images whose repository starts with `prefix`, inspected: all the listed
/// image IDs in one `docker image inspect` (one round trip however many
/// releases are kept); one reference at a time when that does not answer
/// for every ID (an image removed in between).
pub fn list(host: &Host, prefix: &[String], repo_prefix: &str) -> Result<Vec<ImageInfo>, PluginError> {
    let res = host.run_ok(&argv(prefix, &["image", "ls", "--format", "{{json .}}"]))?;
    let pairs = parse_image_ls_ids(&res.stdout, repo_prefix);
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<&str> = pairs.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    let mut args = vec!["image", "inspect"];
    args.extend(&ids);
    let res = host.run(&argv(prefix, &args))?;
    if res.success() {
        let found = parse_image_inspect(&res.stdout, "")?;
        let of = |listed: &str| {
            let listed = listed.strip_prefix("sha256:").unwrap_or(listed);
            found.iter().find(|i| {
                i.id.as_deref().is_some_and(|id| id.strip_prefix("sha256:").unwrap_or(id).starts_with(listed))
            })
        };
        let infos: Option<Vec<ImageInfo>> =
            pairs.iter().map(|(r, id)| of(id).map(|i| ImageInfo { reference: r.clone(), ..i.clone() })).collect();
        if let Some(infos) = infos {
            return Ok(infos);
        }
    }
    let refs: Vec<String> = pairs.into_iter().map(|(r, _)| r).collect();
    Ok(inspect(host, prefix, &refs)?.into_iter().filter(|i| i.id.is_some()).collect())
}

/// The line between the listing and the inspection in [`list_command`]'s output.
pub const LIST_SPLIT: &str = "cultivate-inspect";

/// One shell command, one round trip: the images whose repository starts
/// with `repo_prefix` (`REPOSITORY TAG ID` lines), [`LIST_SPLIT`], then one
/// `image inspect` of their IDs and of `ids`. Exits with the inspect's status
/// (an ID the target lacks fails it; [`list_one_trip`] reads the rest).
pub fn list_command(prefix: &[String], repo_prefix: &str, ids: &[String]) -> CommandSpec {
    let q = cultivate_plugin_api::shell::quote;
    let cli = prefix.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ");
    let extra: Vec<String> = ids.iter().map(|i| q(i)).collect();
    let extra = extra.join(" ");
    ExecRequest::shell(format!(
        "l=$({cli} image ls --no-trunc --format '{{{{.Repository}}}} {{{{.Tag}}}} {{{{.ID}}}}') || exit $?; \
         m=$(printf '%s\\n' \"$l\" | P={p} awk 'index($1, ENVIRON[\"P\"]) == 1 && NF == 3'); \
         printf '%s\\n{LIST_SPLIT}\\n' \"$m\"; \
         i=$(printf '%s\\n' \"$m\" | awk 'NF == 3 {{ print $3 }}' | sort -u); \
         if [ -n \"$i\" ] || [ -n {e} ]; then {cli} image inspect $i {extra}; fi",
        p = q(repo_prefix),
        e = q(&extra),
    ))
}

/// Images whose repository starts with `repo_prefix`, inspected, and the
/// images `ids` (an entry each, `reference` the ID asked, `id: None` when
/// absent): one command ([`list_command`]). A listed image gone before the
/// inspect is asked for again by reference.
pub fn list_one_trip(
    host: &Host,
    prefix: &[String],
    repo_prefix: &str,
    ids: &[String],
) -> Result<Vec<ImageInfo>, PluginError> {
    let res = host.exec(&list_command(prefix, repo_prefix, ids))?;
    let Some((listing, inspected)) = res
        .stdout
        .split_once(&format!("\n{LIST_SPLIT}\n"))
        .or_else(|| res.stdout.strip_prefix(&format!("{LIST_SPLIT}\n")).map(|rest| ("", rest)))
    else {
        return Err(command_error(&format!("{} image ls", prefix.join(" ")), &res));
    };
    // An inspect that fails only for IDs the target lacks is an answer.
    let other_error = res.stderr.lines().map(str::trim).any(|l| !l.is_empty() && !is_no_such_image(l));
    if !res.success() && other_error {
        return Err(command_error(&format!("{} image inspect", prefix.join(" ")), &res));
    }
    let found = if inspected.trim().is_empty() { Vec::new() } else { parse_image_inspect(inspected, "")? };
    let by_id = |id: &str| {
        let id = id.strip_prefix("sha256:").unwrap_or(id);
        found.iter().find(|i| i.id.as_deref().is_some_and(|f| f.strip_prefix("sha256:").unwrap_or(f) == id))
    };
    let pairs = parse_ls_lines(listing, repo_prefix);
    let mut out = Vec::with_capacity(pairs.len() + ids.len());
    let mut again = Vec::new();
    for (reference, id) in pairs {
        match by_id(&id) {
            Some(info) => out.push(ImageInfo { reference, ..info.clone() }),
            None => again.push(reference),
        }
    }
    if !again.is_empty() {
        out.extend(inspect(host, prefix, &again)?.into_iter().filter(|i| i.id.is_some()));
    }
    for id in ids {
        let info = by_id(id).cloned().unwrap_or_default();
        out.push(ImageInfo { reference: id.clone(), ..info });
    }
    Ok(out)
}

/// The `(reference, ID)` pairs of `REPOSITORY TAG ID` lines whose repository
/// starts with `prefix`; an untagged image's reference is its ID.
pub fn parse_ls_lines(stdout: &str, prefix: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (repo, tag, id) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || repo == "<none>" || !repo.starts_with(prefix) || prefix.is_empty() {
                return None;
            }
            let reference = if tag == "<none>" { id.to_string() } else { format!("{repo}:{tag}") };
            Some((reference, id.to_string()))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// The command that loads an image archive from stdin.
pub fn load_command(prefix: &[String]) -> CommandSpec {
    ExecRequest::new(argv(prefix, &["load"]))
}

/// The command that loads an archive compressed with `compression` from
/// stdin. `gzip` and none: the engine reads them itself. `zstd`: piped
/// through the target's `zstd` when it has one (Docker 20.10's `docker load`
/// refuses zstd), else straight to the engine (Docker ≥ 23 reads zstd); the
/// host sends zstd only when the probe's `load_compression` lists it.
/// With `verify`, the loaded reference's ID follows on a line of its own
/// ([`cultivate_plugin_api::ops::LOADED_ID_LINE`]) once the load succeeded;
/// the status stays the load's.
pub fn load_command_for(
    prefix: &[String],
    compression: Option<&str>,
    verify: Option<&str>,
) -> Result<CommandSpec, PluginError> {
    let q = cultivate_plugin_api::shell::quote;
    let cli = prefix.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ");
    let load = format!("{cli} load");
    let shell = match compression.map(str::trim) {
        None | Some("") | Some("none") | Some("gzip") => match verify {
            None => return Ok(load_command(prefix)),
            Some(_) => load,
        },
        Some("zstd") => format!("if command -v zstd >/dev/null 2>&1; then zstd -dcq | {load}; else {load}; fi"),
        Some(other) => {
            return Err(PluginError::invalid(format!(
                "image.load_command: compression `{other}` is not `zstd`, `gzip` or `none`"
            )))
        }
    };
    Ok(ExecRequest::shell(match verify {
        None => shell,
        Some(reference) => format!(
            "{shell} || exit $?; {cli} image inspect --format '{line} {{{{.Id}}}}' {r} 2>/dev/null; exit 0",
            line = cultivate_plugin_api::ops::LOADED_ID_LINE,
            r = q(reference),
        ),
    }))
}

/// The line the probe's `docker info` command adds when the target has `zstd`.
pub const ZSTD_FOUND: &str = "cultivate-zstd-found";

/// `docker info --format '{{json .}}'`, followed by [`ZSTD_FOUND`] on its own
/// line when `zstd` is on the PATH: the probe learns both in one round trip.
/// Exits with `docker info`'s status.
pub fn info_command(prefix: &[String]) -> CommandSpec {
    let cli: Vec<String> = prefix.iter().map(|p| cultivate_plugin_api::shell::quote(p)).collect();
    ExecRequest::shell(format!(
        "{} info --format \"{{{{json .}}}}\"; s=$?; if command -v zstd >/dev/null 2>&1; then echo {ZSTD_FOUND}; fi; exit $s",
        cli.join(" ")
    ))
}

/// True when the output of [`info_command`] says the target has `zstd`.
pub fn has_zstd(stdout: &str) -> bool {
    stdout.lines().any(|l| l.trim() == ZSTD_FOUND)
}

/// Tags `source` as `target`.
pub fn tag(host: &Host, prefix: &[String], source: &str, target: &str) -> Result<(), PluginError> {
    if source.trim().is_empty() || target.trim().is_empty() {
        return Err(PluginError::invalid("image.tag needs a source and a target"));
    }
    host.run_ok(&argv(prefix, &["image", "tag", source, target]))?;
    Ok(())
}

/// Removes references without `--force`: an image a container uses (running
/// or stopped) is refused by the engine and reported in `failed`. A reference
/// that is already absent counts as removed.
pub fn remove(host: &Host, prefix: &[String], refs: &[String]) -> Result<RemoveReport, PluginError> {
    let mut report = RemoveReport::default();
    for reference in refs {
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

/// `docker build -f CONTEXT/DOCKERFILE -t TAG --build-arg K=V … --label K=V … CONTEXT`,
/// run in the context directory. A relative Dockerfile is taken relative to the context.
pub fn build_command(prefix: &[String], req: &ImageBuildRequest) -> Result<CommandSpec, PluginError> {
    if req.context_dir.trim().is_empty() || req.tag.trim().is_empty() {
        return Err(PluginError::invalid("image.build_command needs a context directory and a tag"));
    }
    let dockerfile = if req.dockerfile.trim().is_empty() { "Dockerfile".to_string() } else { req.dockerfile.clone() };
    let dockerfile = if dockerfile.starts_with('/') {
        dockerfile
    } else {
        format!("{}/{}", req.context_dir.trim_end_matches('/'), dockerfile)
    };
    let mut args: Vec<String> = vec!["build".into(), "-f".into(), dockerfile, "-t".into(), req.tag.clone()];
    for (k, v) in &req.build_args {
        args.push("--build-arg".into());
        args.push(format!("{k}={v}"));
    }
    for (k, v) in &req.labels {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args.push(req.context_dir.clone());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(ExecRequest::new(argv(prefix, &refs)).cwd(req.context_dir.clone()))
}

/// The error for command `what` that exited non-zero, with its output.
pub fn command_error(what: &str, res: &ExecOutput) -> PluginError {
    let detail = if res.stderr.trim().is_empty() { res.stdout.trim() } else { res.stderr.trim() };
    PluginError::new(ErrorKind::CommandFailed, format!("{what} exited with status {}: {detail}", res.status))
}
