use cultivate_plugin_api::fake::FakeHost;
use cultivate_plugin_api::ops::{ImageBuildRequest, StackDownRequest, StackRef, StackUpRequest};
use cultivate_plugin_api::{ExecOutput, LogLevel};
use proptest::prelude::*;

use super::*;

const FINCH: &str = "/opt/homebrew/bin/finch";

fn mac() -> TargetInfo {
    TargetInfo {
        os: "Darwin".into(),
        arch: "arm64".into(),
        home: Some("/Users/ana".into()),
        user: Some("ana".into()),
        ..TargetInfo::default()
    }
}

fn linux() -> TargetInfo {
    TargetInfo { os: "Linux".into(), arch: "x86_64".into(), ..TargetInfo::default() }
}

/// A Mac with Finch in Homebrew's directory and its VM in `vm` state.
fn mac_host(vm: &str) -> FakeHost {
    FakeHost::new()
        .ok("sh -c", &format!("{FINCH}\n"))
        .ok(&format!("{FINCH} --version"), "finch version v1.4.1\n")
        .ok(&format!("{FINCH} vm status"), &format!("{vm}\n"))
        .ok(&format!("{FINCH} vm init"), "")
        .ok(&format!("{FINCH} vm start"), "")
}

fn stack() -> StackRef {
    StackRef {
        project: "cultivate".into(),
        dir: "/Users/ana/cultivate/current".into(),
        files: vec!["docker-compose.yml".into()],
        env_file: Some(".env".into()),
    }
}

fn call<O: Operation>(fake: &FakeHost, req: &O::Request) -> Result<O::Response, PluginError> {
    let out = FinchPlugin.call(&fake.host(), O::NAME, &serde_json::to_string(req).unwrap())?;
    Ok(serde_json::from_str(&out).unwrap())
}

fn last(fake: &FakeHost) -> String {
    fake.commands().last().cloned().unwrap()
}

#[test]
fn manifest() {
    let m = FinchPlugin.manifest();
    assert_eq!(m.name, "finch");
    assert_eq!(m.capabilities, vec![Capability::Images, Capability::Stack]);
    assert_eq!(m.target_os, vec!["darwin"]);
    assert_eq!(m.priority, 60);
    for op in OPERATIONS {
        assert!(m.implements(op));
    }
}

// ---------------------------------------------------------------- probe

#[test]
fn probe_on_linux_is_unavailable_without_running_anything() {
    let fake = FakeHost::new();
    let p = FinchPlugin.probe(&fake.host(), &linux()).unwrap();
    assert!(!p.available);
    assert_eq!(p.reason.as_deref(), Some("finch runs on macOS only (target is Linux)"));
    assert!(fake.commands().is_empty());
}

#[test]
fn probe_with_running_vm() {
    let fake = mac_host("Running");
    let p = FinchPlugin.probe(&fake.host(), &mac()).unwrap();
    assert!(p.available, "{p:?}");
    assert_eq!(p.version.as_deref(), Some("1.4.1"));
    assert_eq!(p.score, PRIORITY);
    assert_eq!(p.details["binary"], FINCH);
    assert_eq!(p.details["vm"], "running");
    assert_eq!(p.details["image_store"], "containerd");
    assert!(!fake.commands().iter().any(|c| c.contains("vm init") || c.contains("vm start")));
}

#[test]
fn probe_initialises_a_nonexistent_vm_and_logs_it() {
    let fake = mac_host("Nonexistent");
    let p = FinchPlugin.probe(&fake.host(), &mac()).unwrap();
    assert!(p.available);
    assert_eq!(p.details["vm"], "initialised");
    assert!(fake.commands().contains(&format!("{FINCH} vm init")));
    let logs = fake.logs.lock().unwrap().clone();
    assert!(logs.iter().any(|(l, _, m)| *l == LogLevel::Info && m.contains("finch vm init")), "{logs:?}");
}

#[test]
fn probe_reads_vm_state_from_stderr_too() {
    let fake = mac_host("").answer(
        &format!("{FINCH} vm status"),
        Ok(ExecOutput { status: 0, stdout: String::new(), stderr: "Stopped\n".into() }),
    );
    let p = FinchPlugin.probe(&fake.host(), &mac()).unwrap();
    assert!(p.available);
    assert_eq!(p.details["vm"], "started");
    assert!(fake.commands().contains(&format!("{FINCH} vm start")));
}

#[test]
fn probe_reports_a_failing_vm_init() {
    let fake = mac_host("Nonexistent").fail(&format!("{FINCH} vm init"), 1, "FATA[0010] failed to download image");
    let p = FinchPlugin.probe(&fake.host(), &mac()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("failed to download image"));
}

#[test]
fn probe_without_finch_gives_install_instructions() {
    let fake = FakeHost::new().fail("sh -c", 1, "");
    let p = FinchPlugin.probe(&fake.host(), &mac()).unwrap();
    assert!(!p.available);
    let reason = p.reason.unwrap();
    assert!(reason.contains("brew install --cask finch"), "{reason}");
    assert!(reason.contains("/Applications/Finch/bin/finch"), "{reason}");
}

#[test]
fn locate_script_tries_path_then_every_install_path() {
    let s = locate_script();
    assert!(s.starts_with("command -v finch"));
    for p in INSTALL_PATHS {
        assert!(s.contains(p), "{p}");
    }
}

#[test]
fn vm_status_words() {
    assert_eq!(parse_vm_status("Running\n", ""), VmState::Running);
    assert_eq!(parse_vm_status("", "Nonexistent"), VmState::Nonexistent);
    assert_eq!(parse_vm_status("Stopped", ""), VmState::Stopped);
    assert_eq!(parse_vm_status("Starting", ""), VmState::Unknown);
}

// ---------------------------------------------------------------- ops

#[test]
fn image_ops_go_through_finch() {
    let inspect = r#"[{"Id":"sha256:abc","RepoTags":["cultivate-backend:1"],"RootFS":{"Type":"layers","Layers":["sha256:l1"]},"Size":5}]"#;
    let fake = mac_host("Running").ok(&format!("{FINCH} image inspect cultivate-backend:1"), inspect).fail(
        &format!("{FINCH} image inspect nope:1"),
        1,
        "time=\"x\" level=fatal msg=\"1 errors:\\nno such image: nope:1\"",
    );
    let infos =
        call::<ops::ImageInspect>(&fake, &ops::ImageRefs { refs: vec!["cultivate-backend:1".into(), "nope:1".into()] })
            .unwrap();
    assert_eq!(infos[0].id.as_deref(), Some("sha256:abc"));
    assert_eq!(infos[1].id, None);
    let spec = call::<ops::ImageLoadCommand>(&fake, &ops::ImageLoadRequest::default()).unwrap();
    assert_eq!(spec.argv, vec![FINCH, "load"]);
    call::<ops::ImageTag>(&fake, &ops::ImageTagRequest { source: "a:1".into(), target: "b:1".into() }).unwrap_err();
    let fake = fake.ok(&format!("{FINCH} image tag"), "");
    call::<ops::ImageTag>(&fake, &ops::ImageTagRequest { source: "a:1".into(), target: "b:1".into() }).unwrap();
    assert_eq!(last(&fake), format!("{FINCH} image tag a:1 b:1"));
    for c in fake.commands() {
        assert!(c.starts_with(FINCH) || c.starts_with("sh -c"), "{c}");
    }
}

#[test]
fn build_command_goes_through_finch_and_checks_the_context_path() {
    let fake = mac_host("Running");
    let req = ImageBuildRequest {
        context_dir: "/Users/ana/cultivate/build".into(),
        dockerfile: "Dockerfile.backend".into(),
        tag: "cultivate-backend:1".into(),
        ..ImageBuildRequest::default()
    };
    let spec = call::<ops::ImageBuildCommand>(&fake, &req).unwrap();
    assert_eq!(spec.argv[0], FINCH);
    assert_eq!(spec.argv[1], "build");
    let bad = ImageBuildRequest { context_dir: "/opt/cultivate/build".into(), ..req };
    assert_eq!(call::<ops::ImageBuildCommand>(&fake, &bad).unwrap_err().kind, ErrorKind::InvalidRequest);
}

#[test]
fn stack_ops_go_through_finch_compose() {
    let fake = mac_host("Running").ok("cd ", "");
    call::<ops::StackUp>(&fake, &StackUpRequest { stack: stack(), force_recreate: false, timeout_secs: Some(9) })
        .unwrap();
    assert_eq!(
        last(&fake),
        format!(
            "cd /Users/ana/cultivate/current && {FINCH} compose -p cultivate -f docker-compose.yml --env-file .env \
             up -d --remove-orphans"
        ),
        "no -t: finch compose up has no --timeout"
    );
    call::<ops::StackDown>(&fake, &StackDownRequest { stack: stack(), remove_volumes: false }).unwrap();
    assert!(last(&fake).ends_with(" compose -p cultivate -f docker-compose.yml --env-file .env down --remove-orphans"));
}

#[test]
fn forced_recreate_is_down_then_up_keeping_volumes() {
    let fake = mac_host("Running").ok("cd ", "");
    call::<ops::StackUp>(&fake, &StackUpRequest { stack: stack(), force_recreate: true, timeout_secs: None }).unwrap();
    let cmds: Vec<String> = fake.commands().into_iter().filter(|c| c.starts_with("cd ")).collect();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(cmds[0].ends_with(" down --remove-orphans"), "{cmds:?}");
    assert!(cmds[1].ends_with(" up -d --remove-orphans"), "{cmds:?}");
    assert!(!cmds.iter().any(|c| c.contains("--force-recreate") || c.split(' ').any(|w| w == "-v")));
}

#[test]
fn ps_parses_v2_shaped_json_and_inspects_the_containers_with_finch() {
    let ps = r#"[{"ID":"1","Name":"cultivate-backend-1","Image":"cultivate-backend:1","Project":"cultivate","Service":"backend","State":"running","Health":"unhealthy","ExitCode":0}]"#;
    let inspect = r#"{"id":"1","name":"cultivate-backend-1","state":{"Status":"running","Health":{"Status":"unhealthy","Log":[{"ExitCode":1,"Output":"refused"}]}},"image":"cultivate-backend:1","service":"backend"}"#;
    let fake = mac_host("Running").ok("cd ", ps).ok(&format!("{FINCH} inspect"), inspect);
    let states = call::<ops::StackPs>(&fake, &stack()).unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].health_log.as_deref(), Some("refused"));
    let inspect_cmd = last(&fake);
    assert!(inspect_cmd.starts_with(&format!("{FINCH} inspect --type container --format ")), "{inspect_cmd}");
    assert!(inspect_cmd.ends_with(" cultivate-backend-1"), "{inspect_cmd}");
}

#[test]
fn stack_in_a_directory_the_vm_cannot_reach_is_refused() {
    let fake = mac_host("Running").ok("cd ", "");
    let s = StackRef { dir: "/opt/cultivate".into(), ..stack() };
    let err = call::<ops::StackUp>(&fake, &StackUpRequest { stack: s, ..Default::default() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(err.message.contains("/opt/cultivate") && err.message.contains("~/cultivate"), "{}", err.message);
    assert!(fake.commands().is_empty(), "refused before running anything");
}

#[test]
fn ops_without_finch_fail_with_instructions() {
    let fake = FakeHost::new().fail("sh -c", 1, "");
    let err = call::<ops::StackPs>(&fake, &stack()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAvailable);
    assert!(err.message.contains("brew install --cask finch"));
}

#[test]
fn install_help_depends_on_the_os() {
    let help = call::<ops::InstallHelp>(&FakeHost::new(), &ops::InstallRequest { target: mac() }).unwrap();
    assert_eq!(help.lines[0], "brew install --cask finch");
    let help = install_help(&linux());
    assert!(help.lines[0].contains("macOS only"));
}

// ---------------------------------------------------------------- paths (10.6)

#[test]
fn deploy_paths() {
    let home = Some("/Users/ana");
    for ok in ["/Users/ana/cultivate", "~/cultivate", "/Volumes/Data/cultivate", "/users/ana/x", "/Users/bob/deploy"] {
        assert_eq!(validate_deploy_path(ok, home), Ok(()), "{ok}");
    }
    assert_eq!(validate_deploy_path("/srv/home/ana/x", Some("/srv/home/ana")), Ok(()));
    for bad in [
        "/opt/cultivate",
        "/var/lib/cultivate",
        "/etc/cultivate",
        "/usr/local/cultivate",
        "/tmp/cultivate",
        "/private/tmp/x",
        "/",
        "/Users",
        "/Users/",
        "/srv/x",
        "relative/path",
        "",
        "/Users/ana/../../etc",
    ] {
        let err = validate_deploy_path(bad, home).unwrap_err();
        assert!(err.contains("~/cultivate"), "{bad}: {err}");
        assert!(err.contains(bad.trim()), "{bad}: {err}");
    }
    let err = validate_deploy_path("/var/cultivate", None).unwrap_err();
    assert!(err.contains("under /var"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// 10.6: everything under the unreachable roots is refused, naming the path and suggesting ~/cultivate.
    #[test]
    fn unreachable_roots_are_refused(root in proptest::sample::select(UNREACHABLE_ROOTS.to_vec()), rest in "(/[a-zA-Z0-9._-]{1,12}){0,4}") {
        let path = format!("{root}{rest}");
        let err = validate_deploy_path(&path, Some("/Users/ana")).unwrap_err();
        prop_assert!(err.contains(&path), "{}", err);
        prop_assert!(err.contains("~/cultivate"), "{}", err);
    }

    /// 10.6: any path under /Users/NAME or /Volumes/NAME without `..` is accepted.
    #[test]
    fn shared_paths_are_accepted(top in proptest::sample::select(vec!["/Users", "/Volumes"]), name in "[a-zA-Z0-9._-]{1,12}", rest in "(/[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,11}){0,4}") {
        prop_assume!(name != "..");
        let path = format!("{top}/{name}{rest}");
        prop_assert_eq!(validate_deploy_path(&path, None), Ok(()));
    }

    #[test]
    fn validation_never_panics(path in ".{0,80}", home in proptest::option::of(".{0,20}")) {
        let _ = validate_deploy_path(&path, home.as_deref());
    }

    #[test]
    fn parsers_never_panic(out in ".{0,200}", err in ".{0,50}") {
        let _ = parse_vm_status(&out, &err);
        let _ = stack::parse_ps_json(&out);
        let _ = stack::parse_container_inspect(&out);
        let _ = images::parse_image_inspect(&out, "x");
        let _ = version::find_version(&out);
    }

    #[test]
    fn probe_never_panics(version_out in ".{0,60}", status_out in ".{0,60}") {
        let fake = mac_host("Running")
            .ok(&format!("{FINCH} --version"), &version_out)
            .ok(&format!("{FINCH} vm status"), &status_out);
        let _ = FinchPlugin.probe(&fake.host(), &mac());
    }
}

#[test]
fn everyday_operations_drive_finch() {
    let fake = mac_host("Running").ok(&format!("cd /Users/ana/cultivate/current && {FINCH} compose"), "");
    let spec = call::<ops::ContainerLogsCommand>(
        &fake,
        &ops::ContainerLogsRequest { container: "abc".into(), follow: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(spec.argv, [FINCH, "logs", "--follow", "abc"]);
    let spec = call::<ops::ContainerExecCommand>(
        &fake,
        &ops::ContainerExecCommandRequest {
            container: "abc".into(),
            argv: vec!["sh".into()],
            interactive: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(spec.argv, [FINCH, "exec", "-i", "abc", "sh"]);
    call::<ops::StackStop>(&fake, &ops::StackStopRequest { stack: stack(), timeout_secs: Some(5) }).unwrap();
    assert!(
        last(&fake).ends_with("compose -p cultivate -f docker-compose.yml --env-file .env stop"),
        "{}",
        last(&fake)
    );
    call::<ops::StackStart>(&fake, &stack()).unwrap();
    assert!(last(&fake).ends_with("--env-file .env start"), "{}", last(&fake));
    for op in ops::EVERYDAY_OPERATIONS {
        assert!(FinchPlugin.manifest().implements(op), "{op}");
    }
}
