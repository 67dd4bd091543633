//! Building the stack's images.
//!
//! 1. The build context is a tar made here: the stack's `docker/` directory
//!    and the application under `app/` (so the Dockerfiles see `APP_DIR=app`),
//!    with fixed times and owners so an unchanged tree hits the build cache.
//!    Vendored `node_modules` go along; `.git`, `dist`, `target` and `.env*` never do.
//! 2. Local builds go to this machine's engine through its API (bollard),
//!    streaming each step; remote builds send the same tar over the transport
//!    and run the runtime plugin's build command there.
//! 3. A local build whose inputs (the context's digest, the Dockerfile, the
//!    build arguments and the base image's ID) match one this machine built
//!    before, whose image the engine still has, is not sent to the engine
//!    again: the image is only tagged ([`BuildMemo`]). The engine's own cache
//!    would give the same image from the same inputs, after reading the whole
//!    context and walking every step (0.1–0.4 s an image).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{BuildImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// The services, in start order.
pub const SERVICES: [&str; 3] = ["database", "backend", "frontend"];

/// An image built for a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Service name.
    pub service: String,
    /// `PROJECT-SERVICE:VERSION`.
    pub reference: String,
    /// Content ID.
    pub id: String,
    /// Uncompressed layer digests, bottom first.
    pub layers: Vec<String>,
    /// Size in bytes.
    pub size: u64,
}

/// Image reference of a service in a release.
pub fn image_ref(project: &str, service: &str, version: &str) -> String {
    format!("{}:{version}", image_repository(project, service))
}

/// The repository of every image of `service` in `project`, whatever the release.
pub fn image_repository(project: &str, service: &str) -> String {
    format!("{project}-{service}")
}

fn skip(rel: &Path) -> bool {
    rel.components().any(|c| {
        let s = c.as_os_str().to_string_lossy();
        // node_modules stays: without a registry, vendored dependencies are how an app gets them.
        s == ".git" || s == "dist" || s == ".env" || s.starts_with(".env.") || s == "target"
    })
}

fn add_dir(builder: &mut tar::Builder<Vec<u8>>, src: &Path, prefix: &str) -> Result<()> {
    let mut stack = vec![src.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(src).unwrap_or(&path).to_path_buf();
            if skip(&rel) {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                files.push(rel);
            }
        }
    }
    files.sort();
    for rel in files {
        let data = fs_err::read(src.join(&rel))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs_err::metadata(src.join(&rel))?.permissions().mode() & 0o777
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        let name = format!("{prefix}/{}", rel.to_string_lossy());
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    Ok(())
}

/// The build context: the stack's `docker/` (built in, or the project's) and the app as `app/`.
pub fn context_tar(stack: &crate::stack::Stack, app_dir: &Path) -> Result<Vec<u8>> {
    for part in ["frontend", "backend"] {
        if !app_dir.join(part).is_dir() {
            bail!(crate::error::usage(format!("the application at {} has no {part}/ directory", app_dir.display()))
                .hint("set `app_dir` to a directory with frontend/ and backend/ (docs/your-app.md)"));
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    match stack {
        crate::stack::Stack::Project(dir) => {
            let docker = dir.join("docker");
            if !docker.join("Dockerfile.backend").is_file() {
                bail!(crate::error::usage(format!("{} has no Dockerfile.backend", docker.display()))
                    .hint("set `stack_dir` to the directory holding docker/ and compose/, or remove it to use the built-in stack"));
            }
            add_dir(&mut builder, &docker, "docker").with_context(|| format!("packing {}", docker.display()))?;
        }
        crate::stack::Stack::Builtin => {
            // Same order, names and metadata as a project copy: the same context, the same cache.
            let mut files: Vec<_> = crate::stack::BUILTIN.iter().filter(|f| f.path.starts_with("docker/")).collect();
            files.sort_by_key(|f| f.path);
            for f in files {
                let mut header = tar::Header::new_gnu();
                header.set_size(f.data.len() as u64);
                header.set_mode(f.mode);
                header.set_mtime(0);
                header.set_uid(0);
                header.set_gid(0);
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, f.path, f.data)?;
            }
        }
    }
    add_dir(&mut builder, app_dir, "app").with_context(|| format!("packing {}", app_dir.display()))?;
    Ok(builder.into_inner()?)
}

/// This machine's engine.
pub async fn local_engine() -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults().context("cannot reach this machine's Docker engine")?;
    docker.negotiate_version().await.context("cannot reach this machine's Docker engine (is dockerd running?)")
}

/// Build arguments for the Dockerfiles: the base image and how the application is built and run.
pub fn build_args(base_image: &str, app: &crate::settings::AppSettings) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("BASE_IMAGE".to_string(), base_image.to_string()),
        ("APP_DIR".to_string(), "app".to_string()),
        ("HEALTH_PATH".to_string(), app.health_path.clone()),
        ("FRONTEND_BUILD".to_string(), app.build_command.clone()),
        ("FRONTEND_OUTPUT".to_string(), app.output_dir.clone()),
        ("START_COMMAND".to_string(), app.start_command.clone()),
        ("NODE_MAJOR".to_string(), app.node_version.to_string()),
        ("SPA_FALLBACK".to_string(), if app.spa_fallback { "on" } else { "off" }.to_string()),
    ])
}

/// Images this machine's engine built before, by the inputs that determine
/// them (see [`build_key`]), kept in the user's cache directory
/// (`cultivate/builds.json`). Only a shortcut: an entry whose image the engine
/// no longer has is built again, and a lost entry costs one engine build.
#[derive(Debug, Default)]
pub struct BuildMemo {
    path: Option<std::path::PathBuf>,
    entries: std::sync::Mutex<BTreeMap<String, String>>,
    changed: std::sync::atomic::AtomicBool,
}

/// At most this many entries are kept; when full, the memo starts afresh.
const MEMO_MAX: usize = 2_000;

impl BuildMemo {
    /// The memo at `path` (empty if missing or unreadable).
    pub fn load(path: Option<std::path::PathBuf>) -> BuildMemo {
        let entries = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        BuildMemo { path, entries: std::sync::Mutex::new(entries), changed: Default::default() }
    }

    /// The user's memo: `$CULTIVATE_BUILD_MEMO` if set (`off` disables it),
    /// else `cultivate/builds.json` in the cache directory.
    pub fn user() -> BuildMemo {
        match std::env::var_os("CULTIVATE_BUILD_MEMO") {
            Some(v) if v == "off" => BuildMemo::default(),
            Some(v) => BuildMemo::load(Some(v.into())),
            None => BuildMemo::load(dirs::cache_dir().map(|d| d.join("cultivate").join("builds.json"))),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image ID built from `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        self.path.as_ref()?;
        self.entries().get(key).cloned()
    }

    /// Remembers that `key` built `id`.
    pub fn insert(&self, key: String, id: String) {
        let mut entries = self.entries();
        if entries.get(&key) == Some(&id) {
            return;
        }
        if entries.len() >= MEMO_MAX {
            entries.clear();
        }
        entries.insert(key, id);
        self.changed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes the memo if it changed (a temporary file renamed over it, so
    /// deploys writing at once never leave a torn file).
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        if !self.changed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&*self.entries()) else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The sha256 of a build context, hex.
pub fn context_digest(context: &[u8]) -> String {
    format!("{:x}", Sha256::digest(context))
}

/// What determines a build's result, as one digest: the context (which holds
/// the Dockerfiles), the Dockerfile used, the build arguments and the ID of
/// the base image they name (a rebuilt base image has another ID).
pub fn build_key(
    context_digest: &str,
    dockerfile: &str,
    args: &BTreeMap<String, String>,
    base_image_id: &str,
) -> String {
    // Length-prefixed fields: no two inputs give the same byte string.
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    field("cultivate-build-key-1");
    field(context_digest);
    field(dockerfile);
    field(base_image_id);
    for (k, v) in args {
        field(k);
        field(v);
    }
    format!("{:x}", h.finalize())
}

/// How the build step line of an image taken from the [`BuildMemo`] starts.
pub const REUSED: &str = "reused";

/// What a build on this machine's engine starts from.
pub struct LocalBuild<'a> {
    /// The build context ([`context_tar`]).
    pub context: &'a [u8],
    /// Its [`context_digest`].
    pub digest: &'a str,
    /// Images built before.
    pub memo: &'a BuildMemo,
}

/// Splits `name:tag` (the tag after the last colon that follows the last slash).
pub fn repo_and_tag(reference: &str) -> (&str, &str) {
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

async fn image_of(docker: &Docker, service: &str, reference: &str) -> Result<BuiltImage> {
    let inspect =
        docker.inspect_image(reference).await.with_context(|| format!("inspecting {reference} after building it"))?;
    Ok(BuiltImage {
        service: service.to_string(),
        reference: reference.to_string(),
        id: inspect.id.unwrap_or_default(),
        layers: inspect.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        size: inspect.size.unwrap_or(0).max(0) as u64,
    })
}

/// Builds one service's image on this machine's engine, calling `step` for
/// each line of build output, and returns its ID and layers. An image built
/// before from the same inputs, still in the engine, is only tagged.
pub async fn build_local(
    docker: &Docker,
    build: &LocalBuild<'_>,
    service: &str,
    reference: &str,
    base_image: &str,
    app: &crate::settings::AppSettings,
    step: &mut (dyn FnMut(&str) + Send),
) -> Result<BuiltImage> {
    let dockerfile = format!("docker/Dockerfile.{service}");
    let sorted_args = build_args(base_image, app);
    // No base image here: no key, and the build below says what is missing.
    let key = match docker.inspect_image(base_image).await {
        Ok(base) => base.id.map(|id| build_key(build.digest, &dockerfile, &sorted_args, &id)),
        Err(_) => None,
    };
    if let Some(id) = key.as_deref().and_then(|k| build.memo.get(k)) {
        if docker.inspect_image(&id).await.is_ok() {
            let (repo, tag) = repo_and_tag(reference);
            let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
            match docker.tag_image(&id, Some(options)).await {
                Ok(()) => {
                    let short = &id[..id.len().min(19)];
                    tracing::debug!(target: "cultivate::build", "{service}: same inputs as {short}: tagged");
                    step(&format!("{REUSED} {short}: same context, Dockerfile, arguments and base image"));
                    return image_of(docker, service, reference).await;
                }
                Err(e) => tracing::debug!(target: "cultivate::build", "{service}: tagging {id} failed ({e}): building"),
            }
        }
    }
    let context = build.context;
    let args: HashMap<String, String> = sorted_args.into_iter().collect();
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(&dockerfile)
        .t(reference)
        .buildargs(&args)
        .rm(true)
        .forcerm(true)
        .build();
    let body = bollard::body_full(bytes::Bytes::copy_from_slice(context));
    let mut stream = docker.build_image(options, None, Some(body));
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => {
                let detail = tail.join("\n");
                let hint = if detail.contains("pull access denied")
                    || detail.contains("not found")
                    || e.to_string().contains("pull access denied")
                {
                    format!("the base image `{base_image}` is not on this machine and there is no registry to pull it from: build it with docker/build-base-images.sh, or set build.base_image")
                } else {
                    "run with -v to see every build step".to_string()
                };
                return Err(anyhow::Error::new(e)
                    .context(format!(
                        "building {reference} failed{}",
                        if detail.is_empty() { String::new() } else { format!(":\n{detail}") }
                    ))
                    .context(
                        crate::error::UserError::new(
                            crate::error::Code::Failed,
                            format!("building the {service} image failed"),
                        )
                        .hint(hint),
                    ));
            }
        };
        if let Some(text) = info.stream.as_deref() {
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                tracing::debug!(target: "cultivate::build", "{service}: {line}");
                step(line);
                tail.push(line.to_string());
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            bail!(crate::error::UserError::new(
                crate::error::Code::Failed,
                format!("building the {service} image failed: {}", err.trim())
            )
            .hint(format!("last build output:\n{}", tail.join("\n"))));
        }
    }
    let image = image_of(docker, service, reference).await?;
    if let Some(key) = key {
        if !image.id.is_empty() {
            build.memo.insert(key, image.id.clone());
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_holds_docker_and_app_with_fixed_metadata() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let project = crate::stack::Stack::Project(root.clone());
        let tar_bytes = context_tar(&project, &root.join("examples/app")).unwrap();
        let again = context_tar(&project, &root.join("examples/app")).unwrap();
        let builtin = context_tar(&crate::stack::Stack::Builtin, &root.join("examples/app")).unwrap();
        assert_eq!(tar_bytes, builtin, "the built-in stack gives the same context as the repository's");
        assert_eq!(tar_bytes, again, "an unchanged tree gives the same context byte for byte");
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(names.iter().any(|n| n == "docker/Dockerfile.backend"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("app/backend/")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains(".env") || n.contains("/dist/")), "{names:?}");
    }

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_build_input_changes_the_key() {
        let a = args(&[("BASE_IMAGE", "b"), ("NODE_MAJOR", "18")]);
        let key = build_key("ctx", "docker/Dockerfile.backend", &a, "sha256:base");
        assert_eq!(key, build_key("ctx", "docker/Dockerfile.backend", &a.clone(), "sha256:base"), "stable");
        assert_eq!(key.len(), 64);
        let others = [
            build_key("ctx2", "docker/Dockerfile.backend", &a, "sha256:base"),
            build_key("ctx", "docker/Dockerfile.frontend", &a, "sha256:base"),
            build_key(
                "ctx",
                "docker/Dockerfile.backend",
                &args(&[("BASE_IMAGE", "b"), ("NODE_MAJOR", "20")]),
                "sha256:base",
            ),
            build_key("ctx", "docker/Dockerfile.backend", &args(&[("BASE_IMAGE", "b")]), "sha256:base"),
            build_key("ctx", "docker/Dockerfile.backend", &a, "sha256:rebuilt"),
            // Fields are framed: moving bytes from one field to the next is another key.
            build_key("ct", "xdocker/Dockerfile.backend", &a, "sha256:base"),
            build_key(
                "ctx",
                "docker/Dockerfile.backend",
                &args(&[("BASE_IMAGE", "bNODE_MAJOR"), ("", "18")]),
                "sha256:base",
            ),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(&key, other, "input change {i} kept the key");
        }
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(repo_and_tag("shop-backend:20261129-1"), ("shop-backend", "20261129-1"));
        assert_eq!(repo_and_tag("localhost:5000/shop"), ("localhost:5000/shop", "latest"));
        assert_eq!(repo_and_tag("localhost:5000/shop:v1"), ("localhost:5000/shop", "v1"));
        assert_eq!(repo_and_tag("shop"), ("shop", "latest"));
    }

    #[test]
    fn the_memo_survives_a_save_and_a_torn_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("builds.json");
        let memo = BuildMemo::load(Some(path.clone()));
        assert_eq!(memo.get("k"), None);
        memo.insert("k".into(), "sha256:1".into());
        memo.save();
        let again = BuildMemo::load(Some(path.clone()));
        assert_eq!(again.get("k").as_deref(), Some("sha256:1"));
        again.insert("k".into(), "sha256:2".into());
        again.save();
        assert_eq!(BuildMemo::load(Some(path.clone())).get("k").as_deref(), Some("sha256:2"));
        std::fs::write(&path, b"{\"k\": ").unwrap();
        assert_eq!(BuildMemo::load(Some(path)).get("k"), None, "a torn file is an empty memo");
        // Without a path (CULTIVATE_BUILD_MEMO=off) nothing is remembered.
        let off = BuildMemo::default();
        off.insert("k".into(), "sha256:1".into());
        assert_eq!(off.get("k"), None);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("builds.json")], "no temporary file left");
    }

    #[test]
    fn a_full_memo_starts_afresh() {
        let memo = BuildMemo::load(Some(std::path::PathBuf::from("/nonexistent/builds.json")));
        for i in 0..MEMO_MAX {
            memo.insert(format!("k{i}"), "id".into());
        }
        memo.insert("last".into(), "id".into());
        assert_eq!(memo.entries().len(), 1);
        assert_eq!(memo.get("last").as_deref(), Some("id"));
    }

    #[test]
    fn missing_app_parts_are_named() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let err = context_tar(&crate::stack::Stack::Project(root), Path::new("/nonexistent-app")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-app has no frontend/"), "{err:#}");
    }
}
