use cultivate_plugin_api::fake::FakeHost;
use cultivate_plugin_api::ops::{StackDownRequest, StackRef, StackUpRequest};

use super::*;

/// `podman version --format json` of Debian bookworm's podman 4.3.1.
const VERSION_4_3: &str = include_str!("../tests/fixtures/podman-4.3.1-version.json");
/// `podman image inspect` of an imported image, podman 4.3.1.
const IMAGE_INSPECT: &str = include_str!("../tests/fixtures/podman-4.3.1-image-inspect.json");
/// `podman inspect --format INSPECT_TEMPLATE` of a podman-compose 1.0.3 stack:
/// a service with a health check (still `starting`), one without.
const CONTAINERS: &str = include_str!("../tests/fixtures/podman-4.3.1-container-inspect-template.jsonl");

fn stack() -> StackRef {
    StackRef {
        project: "shop".into(),
        dir: "/opt/cultivate/releases/1".into(),
        files: vec!["compose.yml".into()],
        env_file: Some(".env".into()),
    }
}

fn podman_compose() -> Compose {
    Compose { command: vec!["podman-compose".into()], engine: vec!["podman".into()] }
}

#[test]
fn versions_parse() {
    assert_eq!(parse_podman_version(VERSION_4_3), Some(("4.3.1".to_string(), None)));
    assert_eq!(parse_version("v4.9.0-rc1"), Some((4, 9, 0)));
    assert_eq!(parse_version("garbage"), None);
    assert_eq!(parse_compose_version("podman-composer version  1.0.3\n"), Some("1.0.3".into()));
    assert_eq!(
        parse_compose_version("['podman', '--version', '']\nusing podman version: 4.3.1\npodman-composer version  1.0.3\npodman --version \nexit code: 0\n"),
        Some("1.0.3".into())
    );
    assert_eq!(parse_compose_version("podman-compose version 1.0.6\npodman version 4.9.3\n"), Some("1.0.6".into()));
    assert_eq!(parse_compose_version("Docker Compose version v2.24.6\n"), Some("2.24.6".into()));
    assert_eq!(parse_compose_version("podman version 4.3.1\n"), None);
}

#[test]
fn probe_finds_rootful_podman_and_podman_compose() {
    let fake = FakeHost::new()
        .ok("podman version", VERSION_4_3)
        .ok("podman info", "false overlay\n")
        .fail("podman compose version", 125, "Error: unrecognized command `podman compose`")
        .ok("podman-compose version", "podman-composer version  1.0.3\nexit code: 0\n");
    let p = probe(&fake.host()).unwrap();
    assert!(p.available, "{p:?}");
    assert_eq!(p.version.as_deref(), Some("4.3.1"));
    assert_eq!(p.score, PRIORITY);
    // docker and docker-compose (50) must win where both are installed
    const { assert!(PRIORITY < 50) };
    assert_eq!(p.details["mode"], "rootful");
    assert_eq!(p.details["compose"], "podman-compose");
    assert_eq!(p.details["compose_version"], "1.0.3");
    assert_eq!(p.details["flavour"], "podman-compose 1.0.3");
    // the host may send an OCI archive without the layers the store has
    assert!(cultivate_plugin_api::ops::loads_format(&p.details, cultivate_plugin_api::ops::LOAD_FORMAT_OCI_PARTIAL));
}

#[test]
fn probe_says_why_podman_is_unavailable() {
    let missing = FakeHost::new().fail("podman version", 127, "sh: 1: podman: not found");
    let p = probe(&missing.host()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("podman not found"));

    let old = FakeHost::new().ok("podman version", r#"{"Client":{"Version":"3.4.4"}}"#);
    let p = probe(&old.host()).unwrap();
    assert!(!p.available);
    assert_eq!(p.reason.as_deref(), Some("podman 3.4.4 is too old: cultivate's podman plugin needs 4.0 or newer"));

    let no_compose = FakeHost::new()
        .ok("podman version", VERSION_4_3)
        .ok("podman info", "true overlay\n")
        .fail("podman compose", 125, "Error: unrecognized command")
        .fail("podman-compose", 127, "sh: 1: podman-compose: not found");
    let p = probe(&no_compose.host()).unwrap();
    assert!(!p.available);
    let reason = p.reason.unwrap();
    assert!(reason.contains("podman 4.3.1 found but no compose tool") && reason.contains("podman-compose"), "{reason}");
    assert_eq!(p.details["rootless"], "true");
}

#[test]
fn image_inspect_adds_the_sha256_prefix_and_keeps_layers() {
    let infos = images::parse_image_inspect(IMAGE_INSPECT, "tiny:latest").unwrap();
    assert_eq!(infos.len(), 1);
    let i = &infos[0];
    assert_eq!(i.id.as_deref(), Some("sha256:b6d2131fd880af5e0ca739b2bc74091b47c54e8563053f5cfd424bd832386886"));
    assert_eq!(i.layers.len(), 1);
    assert!(i.layers[0].starts_with("sha256:"), "{:?}", i.layers);
    assert_eq!(i.tags, ["tiny:latest"], "localhost/ is stripped");
}

#[test]
fn absent_image_is_not_an_error() {
    let fake = FakeHost::new().fail("podman image inspect", 125, "Error: inspecting object: nope:1: image not known");
    let infos = images::inspect(&fake.host(), &["podman".into()], &["nope:1".into()]).unwrap();
    assert_eq!(infos[0].id, None);
}

#[test]
fn image_list_strips_localhost_and_filters_by_prefix() {
    let ls = r#"[{"Id":"a","Names":["localhost/shop-backend:2","localhost/shop-backend:1"]},
                 {"Id":"b","Names":["localhost/other:1"]},{"Id":"c","Names":null}]"#;
    assert_eq!(images::parse_image_ls(ls, "shop-").unwrap(), ["shop-backend:1", "shop-backend:2"]);
    assert!(images::parse_image_ls("not json", "shop-").is_err());
}

#[test]
fn up_and_down_commands_keep_volumes() {
    let c = podman_compose();
    let up = c.up_request(&StackUpRequest { stack: stack(), force_recreate: false, timeout_secs: Some(5) }).unwrap();
    assert_eq!(up.display(), "cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml up -d");
    let down = c.down_request(&StackDownRequest { stack: stack(), remove_volumes: false }).unwrap();
    assert_eq!(down.display(), "cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml down");
    let mut other_env = stack();
    other_env.env_file = Some("prod.env".into());
    let err = c.base(&other_env).unwrap_err();
    assert!(err.message.contains("prod.env") && err.message.contains("--env-file"), "{}", err.message);
    let mut bad = stack();
    bad.project = "-rf".into();
    assert!(c.base(&bad).is_err());
}

#[test]
fn config_falls_back_to_a_dry_run_and_keeps_its_output_private() {
    let fake = FakeHost::new()
        .fail(
            "cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml config",
            2,
            "podman-compose: error: argument command: invalid choice: 'config' (choose from 'help')",
        )
        .ok(
            "cd /opt/cultivate/releases/1 && podman-compose --dry-run -p shop -f compose.yml up -d",
            "podman run -e DB_PASSWORD=hunter2 ...",
        );
    let text = podman_compose().config(&fake.host(), &stack()).unwrap();
    assert_eq!(text.text, "", "the resolved configuration (with secrets) is not returned");
    assert!(fake.commands().iter().any(|c| c.contains("--dry-run")));

    let broken = FakeHost::new()
        .fail(
            "cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml config",
            2,
            "invalid choice: 'config'",
        )
        .fail(
            "cd /opt/cultivate/releases/1 && podman-compose --dry-run",
            1,
            "Traceback\nexpected the node content, but found '<stream end>'\n  in \"compose.yml\", line 3, column 1\n",
        );
    let err = podman_compose().config(&broken.host(), &stack()).unwrap_err();
    assert!(err.message.contains("line 3"), "{}", err.message);
}

#[test]
fn container_states_from_the_inspect_template() {
    let cs = stack::parse_inspect_lines(CONTAINERS).unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].state.service, "a");
    assert_eq!(cs[0].state.health.as_deref(), Some("starting"));
    assert!(cs[0].has_healthcheck && stack::needs_check(&cs[0]));
    assert_eq!(cs[1].state.service, "b");
    assert_eq!(cs[1].state.health, None, "Podman's empty health status is no health check");
    assert!(!stack::needs_check(&cs[1]));
    assert!(cs[1].state.image_id.as_deref().unwrap().starts_with("sha256:"));
    assert_eq!(cs[1].state.image, "tiny:latest");
}

#[test]
fn ps_runs_the_health_checks_podman_does_not_run_without_systemd() {
    let healthy = CONTAINERS.replacen("\"Status\":\"starting\"", "\"Status\":\"healthy\"", 1);
    let fake = FakeHost::new()
        .ok("podman ps -a --filter label=com.docker.compose.project=shop", "01ce9e78dd7a\n37e19373b897\n")
        .ok("podman healthcheck run", "")
        .answer(
            "podman inspect",
            Ok(cultivate_plugin_api::ExecOutput { status: 0, stdout: CONTAINERS.into(), stderr: String::new() }),
        );
    let states = stack::ps(&fake.host(), &["podman".into()], &stack()).unwrap();
    let cmds = fake.commands();
    assert_eq!(cmds.iter().filter(|c| c.starts_with("podman healthcheck run")).count(), 1, "{cmds:?}");
    assert!(cmds.iter().any(|c| c.contains("healthcheck run 01ce9e78dd7a")), "{cmds:?}");
    assert_eq!(cmds.iter().filter(|c| c.starts_with("podman inspect")).count(), 2, "read again after the check");
    assert_eq!(states.len(), 2);
    assert!(healthy.contains("healthy"));
}

#[test]
fn manifest_lacks_the_switch_operations_so_the_host_falls_back() {
    let m = PodmanPlugin.manifest();
    assert_eq!(m.name, "podman");
    assert!(m.capabilities.contains(&Capability::Images) && m.capabilities.contains(&Capability::Stack));
    assert!(!ops::SWITCH_OPERATIONS.iter().all(|op| m.implements(op)));
    for op in [ops::ImageLoadCommand::NAME, ops::ImageInspect::NAME, ops::StackUp::NAME, ops::StackPs::NAME] {
        assert!(m.implements(op), "{op}");
    }
}

/// What podman-compose 1.0.3 printed for `up -d` over a running stack
/// (arguments shortened): the names were taken, every `podman run` failed,
/// and it exited 0.
const UP_OVER_RUNNING: &str = "podman volume inspect shop_db || podman volume create shop_db
['podman', 'volume', 'inspect', 'shop_db']
['podman', 'network', 'exists', 'shop_internal']
podman run --name=shop_database_1 -d --label a=b -e DB_PASSWORD=hunter2 shop-database:2
exit code: 125
['podman', 'network', 'exists', 'shop_internal']
exit code: 1
podman run --name=shop_backend_1 -d shop-backend:2
exit code: 0
podman start shop_frontend_1
exit code: 125
";

#[test]
fn failed_runs_in_podman_compose_output_are_found_without_their_arguments() {
    let failed = stack::failed_podman_commands(UP_OVER_RUNNING);
    assert_eq!(failed, ["podman run shop_database_1", "podman start shop_frontend_1"]);
    assert!(stack::failed_podman_commands("podman run --name=x -d img\nexit code: 0\n").is_empty());
}

#[test]
fn up_takes_the_stack_down_first_and_fails_when_a_container_did_not_start() {
    let fake = FakeHost::new()
        .ok("cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml down", "")
        .ok("podman ps -a --filter label=com.docker.compose.project=shop", "")
        .answer(
            "cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml up -d",
            Ok(cultivate_plugin_api::ExecOutput {
                status: 0,
                stdout: UP_OVER_RUNNING.into(),
                stderr: "Error: creating container storage: the container name \"shop_database_1\" is already in use\n"
                    .into(),
            }),
        );
    let err = podman_compose()
        .up(&fake.host(), &StackUpRequest { stack: stack(), force_recreate: false, timeout_secs: Some(30) })
        .unwrap_err();
    assert!(
        err.message.contains("podman run shop_database_1") && err.message.contains("already in use"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("hunter2"), "no environment values in the error: {}", err.message);
    let cmds = fake.commands();
    assert!(cmds[0].ends_with("down") && cmds[2].ends_with("up -d"), "{cmds:?}");
}

#[test]
fn down_removes_what_podman_compose_left_behind() {
    let fake = FakeHost::new()
        .ok("cd /opt/cultivate/releases/1 && podman-compose -p shop -f compose.yml down", "")
        .ok("podman ps -a --filter label=com.docker.compose.project=shop", "301ba4bd30b4\n")
        .ok("podman rm -f", "");
    podman_compose().down(&fake.host(), &StackDownRequest { stack: stack(), remove_volumes: false }).unwrap();
    let cmds = fake.commands();
    assert_eq!(cmds.last().unwrap(), "podman rm -f 301ba4bd30b4", "{cmds:?}");
    assert!(!cmds.iter().any(|c| c.contains("volume")), "{cmds:?}");
}

#[test]
fn everyday_commands_go_to_podman_itself() {
    let bin = vec!["podman".to_string()];
    let logs = stack::container_logs_command(
        &bin,
        &ops::ContainerLogsRequest { container: "c1".into(), follow: true, since: Some("10m".into()), tail: Some(5) },
    )
    .unwrap();
    assert_eq!(logs.display(), "podman logs --follow --since 10m --tail 5 c1");
    let exec = stack::container_exec_command(
        &bin,
        &ops::ContainerExecCommandRequest {
            container: "c1".into(),
            argv: vec!["psql".into(), "-c".into(), "select 1".into()],
            user: Some("postgres".into()),
            tty: true,
            interactive: true,
        },
    )
    .unwrap();
    assert_eq!(exec.display(), "podman exec -i -t --user postgres c1 psql -c 'select 1'");
    let bad = ops::ContainerLogsRequest { container: "--all".into(), ..Default::default() };
    assert!(stack::container_logs_command(&bin, &bad).is_err());

    let fake = FakeHost::new()
        .ok("podman ps -a --filter label=com.docker.compose.project=shop", "aaa\nbbb\n")
        .ok("podman stop", "")
        .ok("podman start", "");
    stack::stop(&fake.host(), &bin, &ops::StackStopRequest { stack: stack(), timeout_secs: Some(30) }).unwrap();
    stack::start(&fake.host(), &bin, &stack()).unwrap();
    let cmds = fake.commands();
    assert!(cmds.contains(&"podman stop -t 30 aaa bbb".to_string()), "{cmds:?}");
    assert!(cmds.contains(&"podman start aaa bbb".to_string()), "{cmds:?}");
}
