//! The docker plugin against this machine's real Docker engine, through a tiny
//! host that runs commands locally. Skips when there is no engine, except
//! under `CI`, where a missing engine fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use cultivate_plugin_api::fake::LocalHost;
use cultivate_plugin_api::ops::{self, Operation};
use cultivate_plugin_api::{Host, Plugin, PluginError, TargetInfo};
use cultivate_plugin_docker::{DockerPlugin, MIN_DOCKER};

fn host() -> Host {
    LocalHost::host().for_plugin("docker")
}

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).output().expect("sh runs")
}

fn target() -> TargetInfo {
    let uname = |flag: &str| String::from_utf8_lossy(&sh(&format!("uname {flag}")).stdout).trim().to_string();
    TargetInfo { os: uname("-s"), arch: uname("-m"), ..TargetInfo::default() }
}

/// True when an engine answers; under `CI` a missing engine is a failure, not a skip.
fn engine_present() -> bool {
    let ok = sh("docker version --format '{{.Server.Version}}'").status.success();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI is set but no Docker engine answers on this machine");
        eprintln!("SKIP: no Docker engine answers here");
    }
    ok
}

fn call<O: Operation>(req: &O::Request) -> Result<O::Response, PluginError> {
    let out = DockerPlugin.call(&host(), O::NAME, &serde_json::to_string(req).unwrap())?;
    Ok(serde_json::from_str(&out).unwrap())
}

/// Removes what the test made, even when it fails halfway.
struct Cleanup {
    images: Vec<String>,
    containers: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = sh(&format!("docker rm -f {c} >/dev/null 2>&1"));
        }
        for i in &self.images {
            let _ = sh(&format!("docker image rm -f {i} >/dev/null 2>&1"));
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn docker_plugin_against_the_real_engine() {
    if !engine_present() {
        return;
    }
    // probe, cross-checked against what the engine says directly
    let probe = DockerPlugin.probe(&host(), &target()).unwrap();
    assert!(probe.available, "{probe:?}");
    let server =
        String::from_utf8_lossy(&sh("docker version --format '{{.Server.Version}}'").stdout).trim().to_string();
    assert_eq!(probe.version.as_deref(), Some(server.as_str()));
    let found = cultivate_plugin_docker::version::parse_lenient(&server).unwrap();
    assert!(found >= semver::Version::parse(MIN_DOCKER).unwrap());
    let status = String::from_utf8_lossy(&sh("docker info --format '{{json .DriverStatus}}'").stdout).to_string();
    let expected_store = if status.contains("io.containerd.snapshotter") { "containerd" } else { "classic" };
    assert_eq!(probe.details["image_store"], expected_store, "{probe:?}");
    let driver = String::from_utf8_lossy(&sh("docker info --format '{{.Driver}}'").stdout).trim().to_string();
    assert_eq!(probe.details["storage_driver"], driver);
    eprintln!("probe: {probe:?}");

    // an absent image is not an error
    let absent =
        call::<ops::ImageInspect>(&ops::ImageRefs { refs: vec!["cultivate-absent-image:nope".into()] }).unwrap();
    assert_eq!(absent.len(), 1);
    assert_eq!(absent[0].id, None);

    // a tiny image of our own (no registry here): one file, imported
    let pid = std::process::id();
    let repo = format!("cultivate-plugin-test-docker-{pid}");
    let base = format!("{repo}:base");
    let tagged = format!("{repo}:tagged");
    let built = format!("{repo}:built");
    let dir = std::env::temp_dir().join(format!("cultivate-docker-real-{pid}"));
    let mut cleanup = Cleanup {
        images: vec![built.clone(), tagged.clone(), base.clone()],
        containers: vec![],
        dirs: vec![dir.clone()],
    };
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(dir.join("root/hello.txt"), format!("hello {pid}\n")).unwrap();
    let import = sh(&format!("tar -C {} -c . | docker import - {base}", dir.join("root").display()));
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));

    let info = call::<ops::ImageInspect>(&ops::ImageRefs { refs: vec![base.clone()] }).unwrap().remove(0);
    let id = info.id.clone().expect("imported image is present");
    assert_eq!(info.layers.len(), 1);
    assert!(info.tags.contains(&base));

    // tag, list by prefix
    call::<ops::ImageTag>(&ops::ImageTagRequest { source: base.clone(), target: tagged.clone() }).unwrap();
    let listed = call::<ops::ImageList>(&ops::ImageListRequest { prefix: repo.clone(), ids: vec![] }).unwrap();
    let refs: Vec<&str> = listed.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(refs, vec![base.as_str(), tagged.as_str()]);
    assert!(listed.iter().all(|i| i.id.as_deref() == Some(id.as_str())));
    assert_eq!(listed[0].layers, info.layers, "listed images come inspected");
    // the same command answers for IDs asked: one present, one absent
    let absent = format!("sha256:{}", "0".repeat(64));
    let listed =
        call::<ops::ImageList>(&ops::ImageListRequest { prefix: repo.clone(), ids: vec![id.clone(), absent.clone()] })
            .unwrap();
    let refs: Vec<&str> = listed.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(refs, vec![base.as_str(), tagged.as_str(), id.as_str(), absent.as_str()]);
    assert_eq!(listed[2].id.as_deref(), Some(id.as_str()));
    assert_eq!(listed[2].layers, info.layers);
    assert_eq!(listed[3].id, None, "an ID the engine lacks is answered as absent, not an error");
    let nothing =
        call::<ops::ImageList>(&ops::ImageListRequest { prefix: format!("{repo}-none-"), ids: vec![] }).unwrap();
    assert!(nothing.is_empty(), "{nothing:?}");

    // build on "the target" from a context directory
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(ctx.join("docker")).unwrap();
    std::fs::write(ctx.join("docker/Dockerfile.test"), format!("FROM {base}\nARG V\nLABEL org.cultivate.test=$V\n"))
        .unwrap();
    let spec = call::<ops::ImageBuildCommand>(&ops::ImageBuildRequest {
        context_dir: ctx.display().to_string(),
        dockerfile: "docker/Dockerfile.test".into(),
        tag: built.clone(),
        build_args: BTreeMap::from([("V".to_string(), "1".to_string())]),
        labels: BTreeMap::from([("org.cultivate.release".to_string(), "9.9.9".to_string())]),
    })
    .unwrap();
    let out = host().exec(&spec).unwrap();
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let b = call::<ops::ImageInspect>(&ops::ImageRefs { refs: vec![built.clone()] }).unwrap().remove(0);
    assert_eq!(b.labels.get("org.cultivate.release").map(String::as_str), Some("9.9.9"));
    assert_eq!(b.labels.get("org.cultivate.test").map(String::as_str), Some("1"), "build arg passed");
    assert_eq!(b.layers, info.layers, "a LABEL adds no layer");

    // save, remove, load through the load command: same ID (P20's check)
    let archive = dir.join("base.tar");
    assert!(sh(&format!("docker save -o {} {base}", archive.display())).status.success());
    let spec = call::<ops::ImageLoadCommand>(&ops::ImageLoadRequest::default()).unwrap();
    assert_eq!(spec.argv, vec!["docker", "load"]);
    let verifying = call::<ops::ImageLoadCommand>(&ops::ImageLoadRequest {
        compression: Some("gzip".into()),
        verify: Some(base.clone()),
    })
    .unwrap();

    // remove: untagging works; an image a container uses is refused, not forced
    let report = call::<ops::ImageRemove>(&ops::ImageRefs { refs: vec![tagged.clone(), built.clone()] }).unwrap();
    assert_eq!(report.removed, vec![tagged.clone(), built.clone()], "{report:?}");
    let container = format!("cultivate-plugin-test-{pid}");
    assert!(sh(&format!("docker create --name {container} {base} /nothing >/dev/null")).status.success());
    cleanup.containers.push(container.clone());
    let report = call::<ops::ImageRemove>(&ops::ImageRefs { refs: vec![base.clone()] }).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].1.contains("container"), "{report:?}");
    assert!(call::<ops::ImageInspect>(&ops::ImageRefs { refs: vec![base.clone()] }).unwrap()[0].id.is_some());
    assert!(sh(&format!("docker rm {container} >/dev/null")).status.success());
    let report = call::<ops::ImageRemove>(&ops::ImageRefs { refs: vec![base.clone()] }).unwrap();
    assert_eq!(report.removed, vec![base.clone()], "{report:?}");
    assert_eq!(call::<ops::ImageInspect>(&ops::ImageRefs { refs: vec![base.clone()] }).unwrap()[0].id, None);

    // load the archive back with the plugin's command
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]).stdin(std::fs::File::open(&archive).unwrap());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = call::<ops::ImageInspect>(&ops::ImageRefs { refs: vec![base.clone()] }).unwrap().remove(0);
    assert_eq!(back.id.as_deref(), Some(id.as_str()), "loaded image has the source's ID");

    // the verifying load command, gzip'd archive: it reports the loaded ID itself
    assert!(sh(&format!("docker image rm {base} >/dev/null")).status.success());
    let gz = dir.join("base.tar.gz");
    assert!(sh(&format!("gzip -c {} > {}", archive.display(), gz.display())).status.success());
    let run = |stdin: std::process::Stdio| {
        Command::new(&verifying.argv[0]).args(&verifying.argv[1..]).stdin(stdin).output().unwrap()
    };
    let out = run(std::fs::File::open(&gz).unwrap().into());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ops::loaded_id(&stdout).as_deref(), Some(id.as_str()), "{stdout}");
    // a load that fails keeps its status and reports no ID
    let out = run(std::fs::File::open(dir.join("root/hello.txt")).unwrap().into());
    assert!(!out.status.success());
    assert_eq!(ops::loaded_id(&String::from_utf8_lossy(&out.stdout)), None);
}

/// The cdylib cargo built next to this test loads through the host's loader
/// (ABI layout and API version checked) and describes itself as expected.
#[test]
fn the_built_library_loads_as_a_plugin() {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!("{}cultivate_plugin_docker{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let path = [deps.join(&file), deps.parent().unwrap().join(&file)].into_iter().find(|p| p.exists());
    let path = path.unwrap_or_else(|| panic!("{file} not built next to {}", deps.display()));
    let plugin = cultivate_plugin_api::LoadedPlugin::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(plugin.manifest().name, "docker");
    assert!(plugin.manifest().implements("image.inspect"));
    if engine_present() {
        // a probe and an operation across the FFI boundary
        let probe = plugin.probe(&host(), &target()).unwrap();
        assert!(probe.available, "{probe:?}");
        let infos =
            plugin.call::<ops::ImageInspect>(&host(), &ops::ImageRefs { refs: vec!["cultivate-absent:x".into()] });
        assert_eq!(infos.unwrap()[0].id, None);
    }
}
