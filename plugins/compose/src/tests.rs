use cultivate_plugin_api::fake::FakeHost;
use cultivate_plugin_api::ops::{StackDownRequest, StackExecRequest, StackLogsRequest, StackRef, StackUpRequest};
use cultivate_plugin_api::PluginError;
use proptest::prelude::*;

use super::*;

/// `docker inspect` of the containers of `tests/fixtures/fixture-stack.yml`,
/// brought up with docker-compose 1.29.2 on Docker 20.10.24 (this machine).
const INSPECT_V1: &str = include_str!("../tests/fixtures/docker-inspect-compose-v1.json");
/// `docker compose ps -a --format json` of Compose 2.26 (one object per line).
const PS_V2_26: &str = include_str!("../tests/fixtures/compose-v2.26-ps.jsonl");

#[test]
fn ps_json_of_compose_2_26() {
    // Finch's path (nerdctl prints v2-shaped JSON) reads container names from it.
    let states = stack::parse_ps_json(PS_V2_26).unwrap();
    assert_eq!(states.len(), 3);
    assert_eq!(states[2].state, "exited");
    assert_eq!(states[2].exit_code, Some(1));
}
/// The same of Compose 2.10 (one JSON array).
/// How the v1 version query displays (a script remembering the answer per binary).
const V1_QUERY: &str = "sh -c ': docker-compose version --short";
const PS_V2_10: &str = include_str!("../tests/fixtures/compose-v2.10-ps.json");

/// What `docker inspect --format INSPECT_TEMPLATE` prints for containers
/// whose full `docker inspect` is `full`: the template's fields, one object a line.
fn as_template_output(full: &str) -> String {
    let arr: serde_json::Value = serde_json::from_str(full).unwrap();
    let mut out = String::new();
    for v in arr.as_array().unwrap() {
        let labels = &v["Config"]["Labels"];
        let line = serde_json::json!({
            "id": v["Id"], "name": v["Name"], "state": v["State"],
            "image_id": v["Image"], "image": v["Config"]["Image"],
            "service": labels.get("com.docker.compose.service").cloned().unwrap_or("".into()),
            "healthcheck": v["Config"].get("Healthcheck").cloned().unwrap_or(serde_json::Value::Null),
            "config_hash": labels.get("com.docker.compose.config-hash").cloned().unwrap_or("".into()),
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

fn v1_host() -> FakeHost {
    FakeHost::new().fail("docker compose", 125, "unknown flag: --short").ok(V1_QUERY, "1.29.2\n")
}

fn v2_host() -> FakeHost {
    FakeHost::new().ok("docker compose version --short", "2.26.1\n").ok(V1_QUERY, "1.29.2\n")
}

fn stack() -> StackRef {
    StackRef {
        project: "cultivate".into(),
        dir: "/home/deploy/cultivate/current".into(),
        files: vec!["docker-compose.yml".into()],
        env_file: Some(".env".into()),
    }
}

const CD: &str = "cd /home/deploy/cultivate/current && ";

fn call<O: Operation>(fake: &FakeHost, req: &O::Request) -> Result<O::Response, PluginError> {
    let out = ComposePlugin.call(&fake.host(), O::NAME, &serde_json::to_string(req).unwrap())?;
    Ok(serde_json::from_str(&out).unwrap())
}

fn last(fake: &FakeHost) -> String {
    fake.commands().last().cloned().unwrap()
}

fn debian() -> TargetInfo {
    TargetInfo {
        os: "Linux".into(),
        os_release: [("ID".to_string(), "debian".to_string())].into_iter().collect(),
        ..TargetInfo::default()
    }
}

#[test]
fn manifest() {
    let m = ComposePlugin.manifest();
    assert_eq!(m.name, "docker-compose");
    assert_eq!(m.capabilities, vec![Capability::Stack]);
    assert_eq!(m.target_os, vec!["linux"]);
    assert_eq!(m.priority, 50);
    for op in OPERATIONS {
        assert!(m.implements(op));
    }
    assert!(!m.implements("image.inspect"));
}

// ---------------------------------------------------------------- probe

#[test]
fn probe_prefers_v2_over_v1() {
    let fake = v2_host();
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(p.available);
    assert_eq!(p.version.as_deref(), Some("2.26.1"));
    assert_eq!(p.details["flavour"], "v2");
    assert_eq!(p.details["command"], "docker compose");
    assert_eq!(fake.commands(), vec!["docker compose version --short"], "v1 not even asked");
}

#[test]
fn probe_finds_v1_when_v2_is_missing() {
    let fake = v1_host();
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(p.available, "{p:?}");
    assert_eq!(p.version.as_deref(), Some("1.29.2"));
    assert_eq!(p.details["flavour"], "v1");
    assert_eq!(p.details["command"], "docker-compose");
    assert!(p.score < probe_compose(&v2_host().host()).unwrap().score, "v2 scores higher");
}

#[test]
fn probe_parses_long_v1_output_when_short_fails() {
    let fake = FakeHost::new()
        .fail("docker compose", 1, "docker: 'compose' is not a docker command.")
        .fail(V1_QUERY, 1, "No such option: --short")
        .ok(
            "docker-compose version",
            "docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\nCPython version: 3.11.2\n",
        );
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(p.available);
    assert_eq!(p.version.as_deref(), Some("1.29.2"));
}

#[test]
fn standalone_docker_compose_v2_is_v2() {
    // Debian trixie: `docker-compose` is Compose 2.26 too
    let fake = FakeHost::new().fail("docker compose", 1, "not a docker command").ok(V1_QUERY, "2.26.1\n");
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert_eq!(p.details["flavour"], "v2");
    assert_eq!(p.details["command"], "docker-compose");
}

#[test]
fn probe_without_compose_is_unavailable() {
    let fake = FakeHost::new().fail("docker", 127, "sh: docker: not found");
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("Docker Compose not found"));
}

#[test]
fn probe_with_spawn_errors_is_unavailable() {
    let fake = FakeHost::new().answer("docker", Err(PluginError::new(ErrorKind::Io, "No such file or directory")));
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
}

#[test]
fn probe_refuses_old_v1_naming_versions() {
    let fake = FakeHost::new().fail("docker compose", 1, "").ok(V1_QUERY, "1.25.0\n");
    let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    let r = p.reason.unwrap();
    assert!(r.contains("1.25.0") && r.contains(MIN_COMPOSE_V1) && r.contains(MIN_COMPOSE_V2), "{r}");
}

#[test]
fn version_words() {
    assert_eq!(parse_compose_version("1.29.2\n").as_deref(), Some("1.29.2"));
    assert_eq!(parse_compose_version("v2.0.1").as_deref(), Some("2.0.1"));
    assert_eq!(parse_compose_version("Docker Compose version v2.26.1").as_deref(), Some("2.26.1"));
    assert_eq!(parse_compose_version("docker-compose version 1.29.2, build unknown").as_deref(), Some("1.29.2"));
    assert_eq!(parse_compose_version("garbage"), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// P19 for v1: accepted iff >= 1.29.0; a refusal names the version found and the minimums.
    #[test]
    fn p19_compose_v1_minimum(minor in 0u64..40, patch in 0u64..10) {
        let found = format!("1.{minor}.{patch}");
        let fake = FakeHost::new().fail("docker compose", 1, "").ok(V1_QUERY, &found);
        let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
        let ok = semver::Version::new(1, minor, patch) >= semver::Version::parse(MIN_COMPOSE_V1).unwrap();
        prop_assert_eq!(p.available, ok);
        if !ok {
            let r = p.reason.unwrap();
            prop_assert!(r.contains(&found) && r.contains(MIN_COMPOSE_V1), "{}", r);
        }
    }

    /// P19 over any version triple: accepted iff >= the minimum of the flavour its major means.
    #[test]
    fn p19_compose_any_version(major in 0u64..4, minor in 0u64..40, patch in 0u64..10, v2 in any::<bool>()) {
        let found = format!("{major}.{minor}.{patch}");
        let fake = if v2 {
            FakeHost::new().ok("docker compose version --short", &found)
        } else {
            FakeHost::new().fail("docker compose", 1, "").ok(V1_QUERY, &found)
        };
        let p = ComposePlugin.probe(&fake.host(), &debian()).unwrap();
        let v = semver::Version::new(major, minor, patch);
        let is_v2 = v2 || major >= 2;
        let min = if is_v2 { MIN_COMPOSE_V2 } else { MIN_COMPOSE_V1 };
        prop_assert_eq!(p.available, v >= semver::Version::parse(min).unwrap());
        prop_assert_eq!(&p.details["flavour"], if is_v2 { "v2" } else { "v1" });
        if !p.available {
            let r = p.reason.unwrap();
            prop_assert!(r.contains(&found) && r.contains(min), "{}", r);
        }
    }

    #[test]
    fn parsers_never_panic(s in ".{0,300}") {
        let _ = stack::parse_ps_json(&s);
        let _ = stack::parse_container_inspect(&s);
        let _ = stack::parse_inspect_lines(&s);
        let _ = stack::parse_hashes(&s);
        let _ = parse_compose_version(&s);
    }

    #[test]
    fn json_shaped_input_never_panics(s in r#"[\[\]{}":,0-9a-zA-Z .\-\n]{0,200}"#) {
        let _ = stack::parse_ps_json(&s);
        let _ = stack::parse_container_inspect(&s);
    }

    #[test]
    fn ps_never_panics_on_any_output(out in ".{0,300}", status in 0i32..3) {
        let fake = v2_host().answer("cd /", Ok(ExecOutput { status, stdout: out.clone(), stderr: String::new() }))
            .answer("docker inspect", Ok(ExecOutput { status, stdout: out, stderr: String::new() }));
        let _ = call::<ops::StackPs>(&fake, &stack());
    }
}

// ---------------------------------------------------------------- stack ops

#[test]
fn up_v1_command() {
    let fake = v1_host().ok("cd ", "");
    call::<ops::StackUp>(&fake, &StackUpRequest { stack: stack(), force_recreate: false, timeout_secs: None }).unwrap();
    assert_eq!(
        last(&fake),
        format!("{CD}docker-compose -p cultivate -f docker-compose.yml --env-file .env up -d --remove-orphans")
    );
}

#[test]
fn up_v2_command_with_recreate_and_timeout() {
    let fake = v2_host().ok("cd ", "");
    let s = StackRef { files: vec!["docker-compose.yml".into(), "override.yml".into()], ..stack() };
    call::<ops::StackUp>(&fake, &StackUpRequest { stack: s, force_recreate: true, timeout_secs: Some(20) }).unwrap();
    let cmd = last(&fake);
    assert_eq!(
        cmd,
        format!(
            "{CD}docker compose -p cultivate -f docker-compose.yml -f override.yml --env-file .env \
             up -d --remove-orphans --force-recreate -t 20"
        )
    );
    assert!(!cmd.contains("--wait"));
}

#[test]
fn up_without_env_file_omits_the_flag() {
    let fake = v1_host().ok("cd ", "");
    let s = StackRef { env_file: None, ..stack() };
    call::<ops::StackUp>(&fake, &StackUpRequest { stack: s, ..Default::default() }).unwrap();
    assert!(!last(&fake).contains("--env-file"));
}

#[test]
fn up_failure_carries_compose_stderr() {
    let fake = v1_host().fail("cd ", 1, "ERROR: for backend  Container \"x\" is unhealthy.");
    let err = call::<ops::StackUp>(&fake, &StackUpRequest { stack: stack(), ..Default::default() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommandFailed);
    assert!(err.message.contains("is unhealthy"));
}

#[test]
fn ops_fail_clearly_without_compose() {
    let fake = FakeHost::new();
    let err = call::<ops::StackUp>(&fake, &StackUpRequest { stack: stack(), ..Default::default() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAvailable);
}

#[test]
fn invalid_stack_refs_are_refused() {
    let fake = v2_host().ok("cd ", "");
    for s in [
        StackRef { project: "".into(), ..stack() },
        StackRef { dir: "".into(), ..stack() },
        StackRef { files: vec!["-v".into()], ..stack() },
    ] {
        let err = call::<ops::StackUp>(&fake, &StackUpRequest { stack: s, ..Default::default() }).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
    }
}

#[test]
fn down_keeps_volumes_unless_asked() {
    let fake = v1_host().ok("cd ", "");
    call::<ops::StackDown>(&fake, &StackDownRequest { stack: stack(), remove_volumes: false }).unwrap();
    let cmd = last(&fake);
    assert_eq!(
        cmd,
        format!("{CD}docker-compose -p cultivate -f docker-compose.yml --env-file .env down --remove-orphans")
    );
    assert!(!cmd.split(' ').any(|w| w == "-v" || w == "--volumes"));
    call::<ops::StackDown>(&fake, &StackDownRequest { stack: stack(), remove_volumes: true }).unwrap();
    assert!(last(&fake).ends_with(" down --remove-orphans -v"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]
    /// No stack operation other than an explicit `remove_volumes` down ever asks to delete volumes.
    #[test]
    fn volumes_only_removed_on_request(project in "[a-z][a-z0-9_-]{0,12}", recreate in any::<bool>(), v2 in any::<bool>()) {
        let fake = if v2 { v2_host() } else { v1_host() }.ok("cd ", "");
        let s = StackRef { project, ..stack() };
        call::<ops::StackUp>(&fake, &StackUpRequest { stack: s.clone(), force_recreate: recreate, timeout_secs: None }).unwrap();
        call::<ops::StackDown>(&fake, &StackDownRequest { stack: s, remove_volumes: false }).unwrap();
        // (the version query's `command -v` is no volume flag)
        for c in fake.commands().iter().filter(|c| !c.starts_with(V1_QUERY)) {
            prop_assert!(!c.split(' ').any(|w| w == "-v" || w == "--volumes"), "{}", c);
        }
    }
}

/// The one command `stack.ps` runs on Compose v1 and v2.
fn ps_command(fake: &FakeHost) -> String {
    let cmds = fake.commands();
    let ps: Vec<&String> = cmds.iter().filter(|c| c.contains(" ps -a -q")).collect();
    assert_eq!(ps.len(), 1, "{cmds:?}");
    ps[0].clone()
}

#[test]
fn ps_v1_lists_by_compose_labels_and_inspects_in_one_command() {
    let fake = v1_host().ok("cd ", &as_template_output(INSPECT_V1));
    let states = call::<ops::StackPs>(&fake, &stack()).unwrap();
    let cmd = ps_command(&fake);
    assert!(
        cmd.contains(
            "docker ps -a -q --no-trunc --filter label=com.docker.compose.project=cultivate \
             --filter label=com.docker.compose.oneoff=False"
        ),
        "{cmd}"
    );
    assert!(cmd.contains("exec docker inspect --type container --format "), "{cmd}");
    assert!(!cmd.contains("docker-compose"), "no compose process: {cmd}");
    assert!(!cmd.contains("Env"), "only the fields used are asked for");
    assert_eq!(last(&fake), cmd, "nothing runs after it");
    assert_eq!(states.len(), 4);
    let by = |svc: &str| states.iter().find(|s| s.service == svc).unwrap().clone();
    let bad = by("bad");
    assert_eq!(
        (bad.container.as_str(), bad.state.as_str(), bad.health.as_deref(), bad.exit_code),
        ("cultfx_bad_1", "running", Some("unhealthy"), None)
    );
    assert_eq!(bad.image, "cultivate/debian:bookworm");
    assert_eq!(bad.health_log.as_deref(), Some("not ready"));
    assert!(bad.id.as_deref().is_some_and(|i| i.len() == 64), "{bad:?}");
    assert!(bad.image_id.as_deref().is_some_and(|i| i.starts_with("sha256:")), "{bad:?}");
    assert!(bad.config_hash.as_deref().is_some_and(|h| h.len() == 64), "{bad:?}");
    assert!(bad.started_at.as_deref().is_some_and(|t| t.starts_with("20")), "{bad:?}");
    let good = by("good");
    assert_eq!(good.health.as_deref(), Some("healthy"));
    assert_eq!(good.health_log, None);
    assert_eq!(good.health_test, Some(vec!["CMD".to_string(), "true".to_string()]));
    assert_eq!(bad.health_test.as_ref().map(|t| t[0].as_str()), Some("CMD-SHELL"));
    assert!(cmd.contains(r#""healthcheck":{{json (index .Config "Healthcheck")}}"#), "{cmd}");
    let plain = by("plain");
    assert_eq!(plain.health, None);
    assert_eq!(plain.health_test, None, "no health check: null");
    assert_eq!(plain.state, "running");
    let quitter = by("quitter");
    assert_eq!(quitter.state, "exited");
    assert_eq!(quitter.exit_code, Some(3));
    let names: Vec<&str> = states.iter().map(|s| s.service.as_str()).collect();
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "sorted by service: {names:?}");
}

#[test]
fn ps_with_no_containers_is_empty() {
    let fake = v1_host().ok("cd ", "");
    assert!(call::<ops::StackPs>(&fake, &stack()).unwrap().is_empty());
}

#[test]
fn ps_v2_lists_stopped_containers_too_and_inspects_them_all() {
    let fake = v2_host().ok("cd ", &as_template_output(INSPECT_V1));
    let states = call::<ops::StackPs>(&fake, &stack()).unwrap();
    let cmd = ps_command(&fake);
    assert!(cmd.contains("docker ps -a -q"), "{cmd}");
    assert!(!cmd.contains("docker compose"), "{cmd}");
    assert_eq!(states.len(), 4);
    let quitter = states.iter().find(|s| s.service == "quitter").unwrap();
    assert_eq!((quitter.state.as_str(), quitter.exit_code), ("exited", Some(3)));
}

#[test]
fn compose_project_labels_are_normalised_as_compose_does() {
    assert_eq!(stack::compose_project_label("e2e-app-10123"), "e2e-app-10123");
    assert_eq!(stack::compose_project_label("My.Shop_1"), "myshop_1");
}

#[test]
fn inspect_lines_parse_and_reject_garbage() {
    let line = r#"{"id":"5d2e","name":"/p-backend-2","state":{"Status":"restarting","ExitCode":3,"StartedAt":"2026-11-29T00:00:00Z","Health":{"Status":"unhealthy","Log":[{"ExitCode":1,"Output":"down\n"}]}},"image_id":"sha256:ab","image":"p-backend:v2","service":"backend","config_hash":"cafe"}"#;
    let s = stack::parse_inspect_lines(line).unwrap();
    assert_eq!(s[0].container, "p-backend-2");
    assert_eq!(s[0].exit_code, Some(3), "a restarting container's last exit code is kept");
    assert_eq!(s[0].health_log.as_deref(), Some("down"));
    assert_eq!(s[0].config_hash.as_deref(), Some("cafe"));
    assert!(stack::parse_inspect_lines("not json").is_err());
    assert!(stack::parse_inspect_lines("\n").unwrap().is_empty());
}

#[test]
fn service_hashes_parse() {
    let h = stack::parse_hashes("database 0a1b\nbackend ff00\nWARNING: something\n\n");
    assert_eq!(h.len(), 2);
    assert_eq!(h["backend"], "ff00");
    let fake = v1_host().ok("cd ", "backend ff00\n");
    let got = call::<ops::StackServiceHashes>(&fake, &stack()).unwrap();
    assert_eq!(got["backend"], "ff00");
    assert!(last(&fake).ends_with("--env-file .env config --hash '*'"), "{}", last(&fake));
    let fake = v1_host().ok("cd ", "");
    assert!(call::<ops::StackServiceHashes>(&fake, &stack()).is_err(), "no hashes is an error");
}

#[test]
fn switch_commands() {
    let fake = v1_host().ok("cd ", "");
    call::<ops::StackStartBeside>(
        &fake,
        &ops::StartBesideRequest { stack: stack(), service: "backend".into(), replicas: 2 },
    )
    .unwrap();
    assert_eq!(
        last(&fake),
        format!("{CD}docker-compose -p cultivate -f docker-compose.yml --env-file .env up -d --no-deps --no-recreate --scale backend=2 backend")
    );
    assert!(call::<ops::StackStartBeside>(
        &fake,
        &ops::StartBesideRequest { stack: stack(), service: "backend".into(), replicas: 1 }
    )
    .is_err());
    call::<ops::StackUpServices>(
        &fake,
        &ops::UpServicesRequest {
            stack: stack(),
            services: vec!["database".into()],
            force_recreate: false,
            timeout_secs: Some(30),
        },
    )
    .unwrap();
    assert!(last(&fake).ends_with(".env up -d --no-deps -t 30 database"), "{}", last(&fake));
    // Compose v2 would drop depends_on from the hash of what it creates under --no-deps.
    let fake2 = v2_host().ok("cd ", "");
    call::<ops::StackStartBeside>(
        &fake2,
        &ops::StartBesideRequest { stack: stack(), service: "backend".into(), replicas: 2 },
    )
    .unwrap();
    assert!(last(&fake2).ends_with(".env up -d --no-recreate --scale backend=2 backend"), "{}", last(&fake2));
    call::<ops::StackUpServices>(
        &fake2,
        &ops::UpServicesRequest {
            stack: stack(),
            services: vec!["frontend".into()],
            force_recreate: false,
            timeout_secs: None,
        },
    )
    .unwrap();
    assert!(last(&fake2).ends_with(".env up -d frontend"), "{}", last(&fake2));
    let fake = FakeHost::new().ok("docker", "").ok("sh -c", "");
    call::<ops::ContainerRemove>(
        &fake,
        &ops::ContainerRemoveRequest { containers: vec!["p_backend_1".into()], timeout_secs: Some(30) },
    )
    .unwrap();
    let cmds = fake.commands();
    assert_eq!(
        cmds[cmds.len() - 2..],
        ["docker stop -t 30 p_backend_1".to_string(), "docker rm p_backend_1".to_string()]
    );
    assert!(
        call::<ops::ContainerRemove>(
            &fake,
            &ops::ContainerRemoveRequest { containers: vec!["-f".into()], timeout_secs: None }
        )
        .is_err(),
        "an option is not a container"
    );
    call::<ops::ContainerExec>(
        &fake,
        &ops::ContainerExecRequest { container: "fe".into(), argv: vec!["cultivate-tls".into(), "reload".into()] },
    )
    .unwrap();
    assert_eq!(last(&fake), "docker exec fe cultivate-tls reload");
    call::<ops::CopyFromImage>(
        &fake,
        &ops::CopyFromImageRequest {
            image: "sha256:ab".into(),
            path: "/usr/share/nginx/html".into(),
            dest: "/d/edge/sites/ab".into(),
        },
    )
    .unwrap();
    let script = last(&fake);
    assert!(
        script.contains("docker \"$@\"") && script.contains("create sha256:ab") && script.contains("mv -T"),
        "{script}"
    );
    assert!(call::<ops::CopyFromImage>(
        &fake,
        &ops::CopyFromImageRequest { image: "x".into(), path: "relative".into(), dest: "/d".into() }
    )
    .is_err());
}

#[test]
fn ps_v2_array_of_older_versions() {
    let states = stack::parse_ps_json(PS_V2_10).unwrap();
    assert_eq!(states.len(), 2);
    assert_eq!(states[0].health.as_deref(), Some("starting"));
    assert_eq!(states[0].container, "cultivate-database-1");
    assert_eq!(states[1].exit_code, Some(137));
    assert_eq!(states[1].image, "");
    assert!(stack::parse_ps_json("[]").unwrap().is_empty());
    assert!(stack::parse_ps_json("").unwrap().is_empty());
    assert!(stack::parse_ps_json("not json").is_err());
}

#[test]
fn ps_v2_health_from_status_text_when_field_missing() {
    let s = stack::parse_ps_json(
        r#"{"Name":"a-1","Service":"a","State":"running","Status":"Up 3 seconds (health: starting)"}"#,
    )
    .unwrap();
    assert_eq!(s[0].health.as_deref(), Some("starting"));
}

#[test]
fn ps_inspect_failure_is_an_error_unless_containers_vanished() {
    let fake = v1_host().fail("cd ", 1, "Error: No such object: df35");
    assert!(call::<ops::StackPs>(&fake, &stack()).unwrap().is_empty());
    let fake = v1_host().fail("cd ", 1, "Cannot connect to the Docker daemon");
    assert_eq!(call::<ops::StackPs>(&fake, &stack()).unwrap_err().kind, ErrorKind::CommandFailed);
}

#[test]
fn logs_command() {
    let fake = v2_host().ok("cd ", "backend-1  | listening\n");
    let text = call::<ops::StackLogs>(
        &fake,
        &StackLogsRequest { stack: stack(), services: vec!["backend".into()], tail: Some(200) },
    )
    .unwrap();
    assert_eq!(text.text, "backend-1  | listening\n");
    assert_eq!(
        last(&fake),
        format!(
            "{CD}docker compose -p cultivate -f docker-compose.yml --env-file .env logs --no-color --tail 200 backend"
        )
    );
    call::<ops::StackLogs>(&fake, &StackLogsRequest { stack: stack(), services: vec![], tail: None }).unwrap();
    assert!(last(&fake).ends_with("logs --no-color"));
}

#[test]
fn config_validates_and_logs_warnings() {
    let fake = v1_host().answer(
        "cd ",
        Ok(ExecOutput {
            status: 0,
            stdout: "services:\n  backend: {}\n".into(),
            stderr: "WARNING: The DB_NAME variable is not set. Defaulting to a blank string.\n".into(),
        }),
    );
    let text = call::<ops::StackConfig>(&fake, &stack()).unwrap();
    assert!(text.text.starts_with("services:"));
    assert!(last(&fake).ends_with("--env-file .env config"));
    assert!(fake.logs.lock().unwrap().iter().any(|(_, _, m)| m.contains("DB_NAME")));
    let bad = v1_host().fail("cd ", 1, "ERROR: The Compose file './docker-compose.yml' is invalid");
    let err = call::<ops::StackConfig>(&bad, &stack()).unwrap_err();
    assert!(err.message.contains("is invalid"));
}

#[test]
fn exec_command_returns_output_as_is() {
    let fake = v1_host().answer("cd ", Ok(ExecOutput { status: 2, stdout: "out".into(), stderr: "err".into() }));
    let out = call::<ops::StackExec>(
        &fake,
        &StackExecRequest { stack: stack(), service: "database".into(), argv: vec!["pg_isready".into(), "-q".into()] },
    )
    .unwrap();
    assert_eq!(out.status, 2);
    assert_eq!(out.stdout, "out");
    assert!(last(&fake).ends_with("--env-file .env exec -T database pg_isready -q"));
    let err = call::<ops::StackExec>(&fake, &StackExecRequest { stack: stack(), service: "db".into(), argv: vec![] })
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[test]
fn every_op_detects_the_flavour_on_its_own_host() {
    // one plugin instance, two targets: no flavour leaks from one to the other
    let v1 = v1_host().ok("cd ", "");
    let v2 = v2_host().ok("cd ", "");
    let up = StackUpRequest { stack: stack(), ..Default::default() };
    call::<ops::StackUp>(&v2, &up).unwrap();
    call::<ops::StackUp>(&v1, &up).unwrap();
    call::<ops::StackUp>(&v2, &up).unwrap();
    assert!(last(&v1).contains("docker-compose -p"));
    assert!(last(&v2).contains("docker compose -p"));
}

// ---------------------------------------------------------------- install

#[test]
fn install_on_bookworm_takes_docker_compose() {
    let fake = FakeHost::new()
        .ok("env DEBIAN_FRONTEND=noninteractive apt-get", "")
        .fail("apt-cache show", 100, "E: No packages found")
        .fail("docker compose", 1, "")
        .ok(V1_QUERY, "1.29.2\n");
    let report = call::<ops::Install>(&fake, &ops::InstallRequest { target: debian() }).unwrap();
    assert_eq!(report.version.as_deref(), Some("1.29.2"));
    let cmds = fake.commands();
    assert!(
        cmds.contains(&"env DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose".to_string()),
        "{cmds:?}"
    );
    assert!(cmds.contains(&"apt-cache show --no-all-versions docker-compose-plugin".to_string()));
}

#[test]
fn install_prefers_the_v2_plugin_package_when_offered() {
    let fake = FakeHost::new()
        .ok("env DEBIAN_FRONTEND=noninteractive apt-get", "")
        .fail("apt-cache show", 100, "E: No packages found")
        .ok("apt-cache show --no-all-versions docker-compose-v2", "Package: docker-compose-v2\nVersion: 2.24.6\n")
        .ok("docker compose version --short", "2.24.6\n");
    let report = call::<ops::Install>(&fake, &ops::InstallRequest { target: debian() }).unwrap();
    assert_eq!(report.version.as_deref(), Some("2.24.6"));
    assert!(fake
        .commands()
        .contains(&"env DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose-v2".to_string()));
}

#[test]
fn install_fails_when_verification_fails() {
    let fake = FakeHost::new().ok("env DEBIAN_FRONTEND=noninteractive apt-get", "").fail("apt-cache", 100, "");
    let err = call::<ops::Install>(&fake, &ops::InstallRequest { target: debian() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAvailable);
    assert!(err.message.contains("not usable"));
}

#[test]
fn install_refuses_other_distributions() {
    let target = TargetInfo {
        os: "Linux".into(),
        os_release: [("ID".to_string(), "alpine".to_string())].into_iter().collect(),
        ..TargetInfo::default()
    };
    let fake = FakeHost::new();
    let err = call::<ops::Install>(&fake, &ops::InstallRequest { target: target.clone() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAvailable);
    assert!(fake.commands().is_empty());
    let help = call::<ops::InstallHelp>(&fake, &ops::InstallRequest { target }).unwrap();
    assert!(help.lines.iter().any(|l| l.contains("docs.docker.com/compose")));
    let help = install_help(&debian());
    assert!(help.lines.iter().any(|l| l.contains("apt-get install -y docker-compose")));
}

#[test]
fn logs_and_exec_commands_are_the_engine_cli_whatever_the_flavour() {
    let fake = FakeHost::new();
    let spec = call::<ops::ContainerLogsCommand>(
        &fake,
        &ops::ContainerLogsRequest { container: "abc".into(), follow: true, since: Some("10m".into()), tail: Some(5) },
    )
    .unwrap();
    assert_eq!(spec.argv, ["docker", "logs", "--follow", "--since", "10m", "--tail", "5", "abc"]);
    let spec = call::<ops::ContainerLogsCommand>(
        &fake,
        &ops::ContainerLogsRequest { container: "abc".into(), ..Default::default() },
    )
    .unwrap();
    assert_eq!(spec.argv, ["docker", "logs", "abc"]);
    let spec = call::<ops::ContainerExecCommand>(
        &fake,
        &ops::ContainerExecCommandRequest {
            container: "db1".into(),
            argv: vec!["psql".into(), "-c".into(), "select 1".into()],
            user: Some("apiuser".into()),
            tty: true,
            interactive: true,
        },
    )
    .unwrap();
    assert_eq!(spec.argv, ["docker", "exec", "-i", "-t", "--user", "apiuser", "db1", "psql", "-c", "select 1"]);
    // nothing ran: the host streams these itself
    assert!(fake.commands().is_empty());
    for bad in [
        ops::ContainerExecCommandRequest { container: "db1".into(), ..Default::default() },
        ops::ContainerExecCommandRequest { container: "-x".into(), argv: vec!["true".into()], ..Default::default() },
        ops::ContainerExecCommandRequest {
            container: "db1".into(),
            argv: vec!["true".into()],
            user: Some("--privileged".into()),
            ..Default::default()
        },
    ] {
        let err = call::<ops::ContainerExecCommand>(&fake, &bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{bad:?}");
    }
    let err = call::<ops::ContainerLogsCommand>(
        &fake,
        &ops::ContainerLogsRequest { container: "abc".into(), since: Some("-1".into()), ..Default::default() },
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[test]
fn stop_and_start_are_compose_commands_in_both_flavours() {
    for fake in [v1_host().ok("cd ", ""), v2_host().ok("cd ", "")] {
        call::<ops::StackStop>(&fake, &ops::StackStopRequest { stack: stack(), timeout_secs: Some(20) }).unwrap();
        assert!(last(&fake).starts_with(CD), "{}", last(&fake));
        assert!(last(&fake).ends_with("--env-file .env stop -t 20"), "{}", last(&fake));
        call::<ops::StackStart>(&fake, &stack()).unwrap();
        assert!(last(&fake).ends_with("--env-file .env start"), "{}", last(&fake));
    }
    let failing = v2_host().fail("cd ", 1, "no such service");
    let err = call::<ops::StackStart>(&failing, &stack()).unwrap_err();
    assert!(err.message.contains("no such service"), "{err:?}");
}

#[test]
fn the_everyday_operations_are_in_the_manifest() {
    let m = ComposePlugin.manifest();
    for op in ops::EVERYDAY_OPERATIONS {
        assert!(m.implements(op), "{op}");
    }
}

/// The v1 version script in a real shell, with a stand-in `docker-compose`
/// that counts its runs: asked once, answered from the cache after, asked
/// again when the binary is replaced; exit 127 without one.
#[test]
fn v1_version_is_remembered_per_binary_in_a_real_shell() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Only the tools the script uses: this machine has a docker-compose of its own.
    for tool in ["ls", "sed", "mkdir", "mv", "rm"] {
        let found = ["/usr/bin", "/bin"].iter().map(|d| std::path::Path::new(d).join(tool)).find(|p| p.exists());
        std::os::unix::fs::symlink(found.expect(tool), bin.join(tool)).unwrap();
    }
    let count = dir.path().join("runs");
    let write_fake = |version: &str| {
        let path = bin.join("docker-compose");
        let tmp = bin.join("docker-compose.new");
        let script = format!("#!/bin/sh\necho run >> '{}'\necho {version}\n", count.display());
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    let run = || {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", V1_VERSION_SCRIPT])
            .env("PATH", &bin)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let runs = || std::fs::read_to_string(&count).map(|s| s.lines().count()).unwrap_or(0);

    assert_eq!(run().0, Some(127), "no docker-compose: 127");
    write_fake("1.29.2");
    assert_eq!(run(), (Some(0), "1.29.2\n".to_string()));
    assert_eq!(run(), (Some(0), "1.29.2\n".to_string()));
    assert_eq!(runs(), 1, "the second answer came from the cache");
    write_fake("1.29.3");
    assert_eq!(run(), (Some(0), "1.29.3\n".to_string()), "a replaced binary is asked again");
    assert_eq!(runs(), 2);
    assert_eq!(parse_compose_version(&run().1).as_deref(), Some("1.29.3"));
    assert_eq!(runs(), 2);
}
