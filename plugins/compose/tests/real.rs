//! The compose plugin against this machine's real Compose and Docker engine,
//! through a tiny host that runs commands locally. Skips when there is no
//! engine or no Compose, except under `CI`, where that fails the test.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cultivate_plugin_api::fake::LocalHost;
use cultivate_plugin_api::ops::{self, Operation, ServiceState, StackRef};
use cultivate_plugin_api::{ErrorKind, Host, Plugin, PluginError, TargetInfo};
use cultivate_plugin_compose::{ComposePlugin, MIN_COMPOSE_V1, MIN_COMPOSE_V2};

fn host() -> Host {
    LocalHost::host().for_plugin("docker-compose")
}

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).output().expect("sh runs")
}

fn stdout(script: &str) -> String {
    String::from_utf8_lossy(&sh(script).stdout).trim().to_string()
}

fn call<O: Operation>(req: &O::Request) -> Result<O::Response, PluginError> {
    let out = ComposePlugin.call(&host(), O::NAME, &serde_json::to_string(req).unwrap())?;
    Ok(serde_json::from_str(&out).unwrap())
}

/// True when an engine and a Compose answer; under `CI` their absence fails.
fn tools_present() -> bool {
    let engine = sh("docker version --format '{{.Server.Version}}'").status.success();
    let compose = sh("docker compose version || docker-compose version").status.success();
    if !(engine && compose) {
        assert!(std::env::var_os("CI").is_none(), "CI is set but Docker ({engine}) or Compose ({compose}) is missing");
        eprintln!("SKIP: Docker engine or Compose missing here");
    }
    engine && compose
}

struct Cleanup {
    project: String,
    dir: PathBuf,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let p = &self.project;
        let _ = sh(&format!("docker ps -aq --filter label=com.docker.compose.project={p} | xargs -r docker rm -f"));
        let _ = sh(&format!(
            "docker volume ls -q --filter label=com.docker.compose.project={p} | xargs -r docker volume rm"
        ));
        let _ = sh(&format!(
            "docker network ls -q --filter label=com.docker.compose.project={p} | xargs -r docker network rm"
        ));
        let _ = sh(&format!("docker image rm -f {} >/dev/null 2>&1", self.image));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An image that can run `sh`, `sleep`, `cat`, `echo`, `true`: this machine's
/// binaries and their libraries, imported (there is no registry to pull from).
fn build_mini_image(dir: &std::path::Path, image: &str) {
    let root = dir.join("root");
    let script = format!(
        r#"set -e
R={root}
for b in sh sleep cat true echo; do
  p=/bin/$b
  for f in $(ldd $p | grep -o '/[^ ]*'); do mkdir -p "$R$(dirname $f)"; cp -L "$f" "$R$f"; done
  mkdir -p $R/bin; cp -L $p $R/bin/$b
done
mkdir -p $R/tmp $R/etc $R/data
tar -C $R -c . | docker import - {image} >/dev/null"#,
        root = root.display()
    );
    let out = sh(&script);
    assert!(out.status.success(), "building the test image: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn compose_plugin_against_the_real_engine() {
    if !tools_present() {
        return;
    }
    // probe, cross-checked against the tools themselves
    let target = TargetInfo { os: stdout("uname -s"), arch: stdout("uname -m"), ..TargetInfo::default() };
    let probe = ComposePlugin.probe(&host(), &target).unwrap();
    eprintln!("probe: {probe:?}");
    assert!(probe.available, "{probe:?}");
    let v2 = sh("docker compose version --short").status.success();
    if v2 {
        assert_eq!(probe.details["flavour"], "v2");
        assert_eq!(probe.details["command"], "docker compose");
        assert_eq!(probe.version.as_deref(), Some(stdout("docker compose version --short").trim_start_matches('v')));
    } else {
        let v = stdout("docker-compose version --short");
        assert_eq!(probe.version.as_deref(), Some(v.as_str()));
        assert_eq!(probe.details["command"], "docker-compose");
        let expected = if v.starts_with("1.") { "v1" } else { "v2" };
        assert_eq!(probe.details["flavour"], expected);
        // this machine: Debian bookworm's docker-compose 1.29.2
        if expected == "v1" {
            assert!(
                cultivate_plugin_compose::version::parse_lenient(&v).unwrap()
                    >= semver::Version::parse(MIN_COMPOSE_V1).unwrap()
            );
        }
    }
    assert!([MIN_COMPOSE_V1, MIN_COMPOSE_V2].contains(&probe.details["minimum"].as_str()));

    let pid = std::process::id();
    let project = format!("cultplugtest{pid}");
    let image = format!("cultivate-plugin-test-compose-{pid}:1");
    let dir = std::env::temp_dir().join(format!("cultivate-compose-real-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup { project: project.clone(), dir: dir.clone(), image: image.clone() };
    build_mini_image(&dir, &image);

    let compose = format!(
        r#"version: "3.8"
services:
  web:
    image: {image}
    command: ["sleep", "300"]
    stop_grace_period: 1s
    environment:
      MSG: ${{MSG}}
    volumes:
      - data:/data
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      retries: 1
  sick:
    image: {image}
    command: ["sleep", "300"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD-SHELL", "echo boom; exit 1"]
      interval: 1s
      retries: 1
  oneshot:
    image: {image}
    command: ["sh", "-c", "echo started; exit 4"]
volumes:
  data: {{}}
"#
    );
    let stack_dir = dir.join("stack");
    std::fs::create_dir_all(&stack_dir).unwrap();
    std::fs::write(stack_dir.join("docker-compose.yml"), compose).unwrap();
    std::fs::write(stack_dir.join("app.env"), format!("MSG=hello-{pid}\n")).unwrap();
    let stack = StackRef {
        project: project.clone(),
        dir: stack_dir.display().to_string(),
        files: vec!["docker-compose.yml".into()],
        env_file: Some("app.env".into()),
    };

    // config resolves ${MSG} from the env file
    let config = call::<ops::StackConfig>(&stack).unwrap();
    assert!(config.text.contains(&format!("hello-{pid}")), "{}", config.text);
    // and fails on a broken file
    let broken = StackRef { files: vec!["missing.yml".into()], ..stack.clone() };
    assert_eq!(call::<ops::StackConfig>(&broken).unwrap_err().kind, ErrorKind::CommandFailed);

    call::<ops::StackUp>(&ops::StackUpRequest { stack: stack.clone(), force_recreate: false, timeout_secs: Some(5) })
        .unwrap();

    // poll until every container settled
    let start = Instant::now();
    let states: Vec<ServiceState> = loop {
        let states = call::<ops::StackPs>(&stack).unwrap();
        let get = |s: &str| states.iter().find(|x| x.service == s).cloned();
        let settled = get("web").and_then(|w| w.health).as_deref() == Some("healthy")
            && get("sick").and_then(|w| w.health).as_deref() == Some("unhealthy")
            && get("oneshot").map(|w| w.state).as_deref() == Some("exited");
        if settled {
            break states;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "stack did not settle: {states:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("ps: {states:#?}");
    assert_eq!(states.len(), 3);
    let get = |s: &str| states.iter().find(|x| x.service == s).unwrap();
    assert_eq!(get("web").state, "running");
    assert_eq!(get("web").image, image);
    assert_eq!(get("web").health_log, None);
    assert_eq!(get("sick").health_log.as_deref(), Some("boom"));
    assert_eq!(get("oneshot").exit_code, Some(4));
    assert_eq!(get("oneshot").health, None);

    // logs
    let logs = call::<ops::StackLogs>(&ops::StackLogsRequest {
        stack: stack.clone(),
        services: vec!["oneshot".into()],
        tail: Some(10),
    })
    .unwrap();
    assert!(logs.text.contains("started"), "{}", logs.text);
    assert!(!logs.text.contains("\u{1b}["), "no colour codes");

    // exec: the environment came from the env file; the status comes back as it is
    let out = call::<ops::StackExec>(&ops::StackExecRequest {
        stack: stack.clone(),
        service: "web".into(),
        argv: vec!["sh".into(), "-c".into(), "echo $MSG; echo x > /data/keep; exit 3".into()],
    })
    .unwrap();
    assert_eq!(out.status, 3, "{out:?}");
    assert_eq!(out.stdout.trim(), format!("hello-{pid}"));

    // down keeps the named volume
    call::<ops::StackDown>(&ops::StackDownRequest { stack: stack.clone(), remove_volumes: false }).unwrap();
    assert!(call::<ops::StackPs>(&stack).unwrap().is_empty());
    let volumes = stdout(&format!("docker volume ls -q --filter label=com.docker.compose.project={project}"));
    assert_eq!(volumes, format!("{project}_data"), "volume kept after down");

    // up again: the data survived
    call::<ops::StackUp>(&ops::StackUpRequest { stack: stack.clone(), force_recreate: true, timeout_secs: None })
        .unwrap();
    let out = call::<ops::StackExec>(&ops::StackExecRequest {
        stack: stack.clone(),
        service: "web".into(),
        argv: vec!["cat".into(), "/data/keep".into()],
    })
    .unwrap();
    assert_eq!(out.stdout.trim(), "x", "{out:?}");

    // down with remove_volumes removes it
    call::<ops::StackDown>(&ops::StackDownRequest { stack: stack.clone(), remove_volumes: true }).unwrap();
    let volumes = stdout(&format!("docker volume ls -q --filter label=com.docker.compose.project={project}"));
    assert_eq!(volumes, "", "volume removed on explicit request");
}

/// The cdylib cargo built next to this test loads through the host's loader
/// (ABI layout and API version checked) and describes itself as expected.
#[test]
fn the_built_library_loads_as_a_plugin() {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!("{}cultivate_plugin_compose{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let path = [deps.join(&file), deps.parent().unwrap().join(&file)].into_iter().find(|p| p.exists());
    let path = path.unwrap_or_else(|| panic!("{file} not built next to {}", deps.display()));
    let plugin = cultivate_plugin_api::LoadedPlugin::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(plugin.manifest().name, "docker-compose");
    assert!(plugin.manifest().implements("stack.up"));
}
