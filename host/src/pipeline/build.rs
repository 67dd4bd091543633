//! Building the stack's images.
//!
//! 1. The build context is a tar made here: the stack's `docker/` directory
//!    and the application under `app/` (so the Dockerfiles see `APP_DIR=app`),
//!    with fixed times and owners so an unchanged tree hits the build cache.
//!    Vendored `node_modules` go along; `.git`, `dist`, `target` and `.env*` never do.
//! 2. Local builds go to this machine's engine through its API (bollard),
//!    streaming each step; remote builds send the same tar over the transport
//!    and run the runtime plugin's build command there.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

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
    format!("{project}-{service}:{version}")
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

/// Builds one service's image on this machine's engine, calling `step` for
/// each line of build output, and returns its ID and layers.
pub async fn build_local(
    docker: &Docker,
    context: &[u8],
    service: &str,
    reference: &str,
    base_image: &str,
    app: &crate::settings::AppSettings,
    step: &mut (dyn FnMut(&str) + Send),
) -> Result<BuiltImage> {
    let args: HashMap<String, String> = build_args(base_image, app).into_iter().collect();
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(&format!("docker/Dockerfile.{service}"))
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

    #[test]
    fn missing_app_parts_are_named() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let err = context_tar(&crate::stack::Stack::Project(root), Path::new("/nonexistent-app")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-app has no frontend/"), "{err:#}");
    }
}
