//! macOS through Finch, end to end, on the stand-in Mac (`scripts/testenv.sh
//! up NAME mac`): an SSH target whose `uname -s` says Darwin, whose `sw_vers`
//! answers like macOS 14, whose home is under /Users, and whose only way to
//! the Docker engine behind it is a `finch` stand-in that records every
//! invocation (scripts/testenv/mac/finch). The target's login shell records
//! every command that reaches it over ssh, so the tests can show that every
//! container operation went through finch and no `docker` or
//! `docker-compose` command reached the target.
//!
//! No real Mac is involved: what this proves and what it cannot is in
//! docs/macos.md. One shared target (`mac-e2e`); deploys reuse the images
//! already there; short health and drain timeouts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use cultivate_e2e::deploy::{self, app_copy, random_hex, run_binary_with, Project, ProjectOptions, Run, Via};
use cultivate_e2e::prereq::{self, workspace_root};
use cultivate_e2e::testenv::{self, Kind, Target};

/// The shared stand-in Mac.
const MAC: &str = "mac-e2e";

/// Every test of this file that takes the shared stand-in Mac.
const MAC_USERS: &[&str] = &["mac_deploy_fail_rollback_through_finch", "mac_build_machine_uses_finch_build_and_save"];

/// Seconds: the example is healthy within ~15 s here; a broken backend is
/// given up on quickly.
const HEALTH_TIMEOUT: u64 = 90;
const DRAIN_TIMEOUT: u64 = 2;

// ------------------------------------------------------------ shared target

struct Shared {
    target: Option<Target>,
    done: usize,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared { target: None, done: 0 });

/// Held by the test using the stand-in Mac: its tests take turns (one resets
/// the Finch VM, which would break the other's deploy), whatever the number
/// of test threads.
static TURN: Mutex<()> = Mutex::new(());

/// One test's use of the shared stand-in Mac; the last selected user tears it down.
struct MacTarget {
    expected: usize,
    target: Target,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl MacTarget {
    fn take() -> Option<MacTarget> {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let expected = deploy::selected(MAC_USERS).max(1);
        let ready = prereq::require(prereq::docker_available(), "this machine's Docker engine (builds the images)")
            && prereq::require(deploy::base_image_present(), "image cultivate/debian:bookworm")
            && testenv::available(Kind::Mac);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if !ready {
            shared.done += 1;
            return None;
        }
        if shared.target.is_none() {
            let started = Instant::now();
            match Target::up(MAC, Kind::Mac) {
                Ok(t) => {
                    eprintln!("stand-in Mac {MAC} up at {} in {:.1}s", t.address, started.elapsed().as_secs_f64());
                    shared.target = Some(t);
                }
                Err(e) => {
                    shared.done += 1;
                    drop(shared);
                    panic!("bringing up the stand-in Mac {MAC}: {e:#}");
                }
            }
        }
        let target = Target::attach(MAC).expect("attaching the stand-in Mac");
        Some(MacTarget { expected, target, _turn: turn })
    }
}

impl Drop for MacTarget {
    fn drop(&mut self) {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.done += 1;
        if shared.done >= self.expected {
            if let Some(t) = shared.target.take() {
                if let Err(e) = t.down() {
                    eprintln!("tearing down {MAC}: {e:#}");
                }
            }
        }
    }
}

// ------------------------------------------------------------ the records

/// A file inside the target's root, read from this machine (reading it over
/// ssh would add to the very record being checked).
fn in_root(target: &Target, path: &str) -> PathBuf {
    target.dir.join("root").join(path.trim_start_matches('/'))
}

/// Lines of the finch stand-in's invocation record: `TIME finch ARGS…`.
fn finch_record(target: &Target) -> Vec<String> {
    let text = std::fs::read_to_string(in_root(target, "/var/log/finch-standin/invocations.log"))
        .expect("the finch stand-in's invocation record");
    text.lines().map(|l| l.split_once(' ').map(|(_, rest)| rest).unwrap_or(l).to_string()).collect()
}

/// Commands that reached the target over ssh (its login shell's record).
fn ssh_record(target: &Target) -> Vec<String> {
    let text = std::fs::read_to_string(in_root(target, "/var/log/finch-standin/ssh-commands.log"))
        .expect("the stand-in's ssh command record");
    text.lines().map(|l| l.split_once('\t').map(|(_, rest)| rest).unwrap_or(l).to_string()).collect()
}

/// Words of a shell command line that name a program `docker` or
/// `docker-compose` (bare or as a path). `docker-compose.yml` is a file name,
/// not a command, and is not one of them.
fn docker_words(command: &str) -> Vec<String> {
    command
        .split(|c: char| c.is_whitespace() || ";&|()'\"`$={}".contains(c))
        .filter(|w| {
            let base = w.rsplit('/').next().unwrap_or(w);
            base == "docker" || base == "docker-compose"
        })
        .map(str::to_string)
        .collect()
}

/// Sets the stand-in's Finch VM state (`nonexistent` removes the file).
fn set_vm(target: &Target, state: &str) {
    let path = in_root(target, "/var/lib/finch-standin/vm");
    if state == "nonexistent" {
        let _ = std::fs::remove_file(&path);
    } else {
        std::fs::write(&path, format!("{state}\n")).expect("writing the VM state");
    }
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

fn greeting(p: &Project) -> String {
    let body = p.get("/api/info").unwrap_or_else(|e| panic!("GET /api/info: {e:#}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["greeting"].as_str().unwrap_or_default().to_string()
}

fn target_flags(t: &Target) -> Vec<String> {
    vec![
        "--target".into(),
        t.ssh_uri(),
        "--identity".into(),
        t.identity.display().to_string(),
        "--known-hosts".into(),
        t.known_hosts.display().to_string(),
    ]
}

fn run_with(p: &Project, args: &[String]) -> Run {
    let mut all = vec!["-c".to_string(), p.config.display().to_string()];
    all.extend(args.iter().cloned());
    run_binary_with(&deploy::binary(), &all, &p.log_dir, p.dir.path(), &[])
}

fn mac_options(greeting: &str) -> ProjectOptions {
    ProjectOptions {
        // empty: no deploy_path in the configuration, the macOS default (~/cultivate)
        deploy_path: Some(String::new()),
        env: vec![("APP_GREETING".into(), greeting.into())],
        health_timeout: HEALTH_TIMEOUT,
        drain_timeout: Some(DRAIN_TIMEOUT),
        ..Default::default()
    }
}

// ------------------------------------------------------------ the tests

/// The stand-in Mac end to end: the first deploy initialises the Finch VM
/// and succeeds on the macOS default deploy path; `plugins list` shows finch
/// chosen; a deploy path the VM cannot reach is refused before anything is
/// uploaded; a deploy whose backend fails rolls back by itself; `--runtime
/// finch` deploys; `rollback`, `status`, `releases` and `logs` work; and
/// every container operation went through finch, no docker command reached
/// the target.
#[test]
fn mac_deploy_fail_rollback_through_finch() {
    let Some(mac) = MacTarget::take() else { return };
    let t = &mac.target;
    set_vm(t, "nonexistent"); // a Mac where Finch was installed but never started
    let finch_before = finch_record(t).len();
    let ssh_before = ssh_record(t).len();

    let greeting_a = format!("mac A {}", random_hex(4));
    let mut p = Project::new("mac", 20390, Via::ssh(t), mac_options(&greeting_a));
    p.deploy_path = "/Users/admin/cultivate".into();

    // 1. First deploy: `finch vm init`, then the example, healthy.
    let first = p.deploy(&["--release-version", "m1", "--json"]);
    first.expect_code(0);
    let finch = finch_record(t)[finch_before..].to_vec();
    let init = finch.iter().position(|l| l == "finch vm init").unwrap_or_else(|| {
        panic!("the first deploy did not run `finch vm init`:\n{}\n{}", finch.join("\n"), first.output())
    });
    let status = finch.iter().position(|l| l == "finch vm status").expect("finch vm status");
    assert!(status < init, "vm status must come before vm init:\n{}", finch.join("\n"));
    let first_load = finch.iter().position(|l| l == "finch load").expect("images loaded with `finch load`");
    assert!(init < first_load, "the VM was initialised after images were loaded:\n{}", finch.join("\n"));
    assert!(count(&finch, "finch compose -p ") > 0, "{}", finch.join("\n"));
    assert_eq!(std::fs::read_to_string(in_root(t, "/var/lib/finch-standin/vm")).unwrap_or_default().trim(), "running");
    p.assert_example_answers();
    assert_eq!(greeting(&p), greeting_a);
    assert_eq!(p.current_release().expect("current"), "m1");
    assert!(
        in_root(t, "/Users/admin/cultivate/releases/m1/docker-compose.yml").is_file(),
        "the release is not under the macOS default deploy path ~/cultivate"
    );
    for svc in ["database", "backend", "frontend"] {
        assert!(!p.containers(svc, false).is_empty(), "no running {svc} container on the stand-in's engine");
    }

    // 2. plugins list: finch chosen, the VM running; docker and compose are
    // not for macOS.
    let list =
        run_with(&p, &[&["plugins".to_string(), "list".into(), "--json".into()][..], &target_flags(t)[..]].concat());
    list.expect_code(0);
    let v = list.json();
    assert_eq!(v["selected"]["images"], "finch", "{v}");
    assert_eq!(v["selected"]["stack"], "finch", "{v}");
    assert_eq!(v["target"]["info"]["os"], "Darwin", "{v}");
    assert_eq!(v["target"]["info"]["os_release"]["PRETTY_NAME"], "macOS 14.4.1", "{v}");
    let plugin =
        |name: &str| v["plugins"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == name)).cloned().expect(name);
    assert_eq!(plugin("finch")["probe"]["details"]["vm"], "running", "{v}");
    for other in ["docker", "docker-compose"] {
        assert_eq!(plugin(other)["probe"]["available"], false, "{v}");
    }
    let text = run_with(&p, &[&["plugins".to_string(), "list".into()][..], &target_flags(t)[..]].concat());
    text.expect_code(0);
    assert!(text.stdout.contains("chosen: images finch, stack finch"), "{}", text.output());
    assert!(text.stdout.contains("Darwin") && text.stdout.contains("macOS 14.4.1"), "{}", text.output());

    // 3. A deploy path the VM cannot reach: refused before anything is uploaded.
    for bad in ["/opt/e2e-mac", "/var/e2e-mac", "/etc/e2e-mac", "/private/e2e-mac"] {
        let finch_n = finch_record(t).len();
        let ssh_n = ssh_record(t).len();
        let text = std::fs::read_to_string(&p.config).expect("config");
        let bad_config = p.dir.path().join("bad-path.toml");
        std::fs::write(&bad_config, format!("deploy_path = {bad:?}\n{text}")).expect("config");
        let all: Vec<String> = vec!["-c".into(), bad_config.display().to_string(), "deploy".into()];
        let run = run_binary_with(&deploy::binary(), &all, &p.log_dir, p.dir.path(), &[]);
        run.expect_code(2);
        assert!(run.stderr.contains(bad), "the refusal does not name {bad}:\n{}", run.output());
        assert!(run.stderr.contains("Finch VM"), "no reason given:\n{}", run.output());
        assert!(run.stderr.contains("~/cultivate"), "no fix given:\n{}", run.output());
        let finch_new = finch_record(t)[finch_n..].to_vec();
        assert!(
            finch_new.iter().all(|l| l.starts_with("finch vm ") || l == "finch --version"),
            "more than the probe ran through finch for {bad}:\n{}",
            finch_new.join("\n")
        );
        // The first command reads the deployment before the OS is known
        // (host/src/batch.rs: one round trip for probes and state); it only
        // reads, and finds nothing there. No other command may name the path.
        let ssh_new = ssh_record(t)[ssh_n..].to_vec();
        assert!(
            !ssh_new.iter().any(|c| c.contains(bad) && !c.contains("cultivate-batch")),
            "{bad} reached the target beyond the first read:\n{}",
            ssh_new.join("\n")
        );
        assert!(!in_root(t, bad).exists(), "{bad} was created on the target");
    }

    // 4. A backend that cannot start: rolled back to m1 by itself.
    let marker = format!("e2e-mac-broken-{}", random_hex(4));
    let broken = app_copy(p.dir.path(), |_| {
        format!("'use strict';\nconsole.error('{marker}: refusing to start');\nprocess.exit(3);\n")
    });
    p.set_app_dir(&broken);
    p.set_env("APP_GREETING", "mac B");
    let b = p.deploy(&["--release-version", "m2", "--health-timeout", "30"]);
    b.expect_code(4);
    assert!(b.stderr.contains(&marker), "the backend's log is not in the diagnostics:\n{}", b.stderr);
    assert!(b.stderr.contains("rolled back to release m1, which is healthy"), "{}", b.stderr);
    assert_eq!(p.current_release().expect("current"), "m1");
    assert_eq!(greeting(&p), greeting_a, "m1's configuration is not served after the rollback");
    p.assert_example_answers();

    // 5. --runtime finch on the stand-in: a good release m3 with another greeting.
    p.set_app_dir(&workspace_root().join("examples/app"));
    let greeting_c = format!("mac C {}", random_hex(4));
    p.set_env("APP_GREETING", &greeting_c);
    let c = p.deploy(&["--release-version", "m3", "--runtime", "finch"]);
    c.expect_code(0);
    assert_eq!(greeting(&p), greeting_c);
    // --runtime docker there: not available, and finch is named as what is.
    let d = p.deploy(&["--release-version", "m4", "--runtime", "docker"]);
    d.expect_code(3);
    assert!(d.stderr.contains("--runtime docker is not available"), "{}", d.output());
    assert!(d.stderr.contains("available on this target: finch"), "{}", d.output());

    // 6. rollback, status, releases, logs.
    let rb = p.run(&["rollback"]);
    rb.expect_code(0);
    assert!(rb.stderr.contains("release m1 is current and healthy"), "{}", rb.output());
    assert_eq!(p.current_release().expect("current"), "m1");
    assert_eq!(greeting(&p), greeting_a, "rollback did not restore m1's configuration");
    let st = p.run(&["status", "--json"]);
    st.expect_code(0);
    let sv = st.json();
    assert!(sv.to_string().contains("\"m1\""), "status does not name m1: {sv}");
    let rel = p.run(&["releases"]);
    rel.expect_code(0);
    for r in ["m1", "m2", "m3"] {
        assert!(rel.stdout.contains(r), "releases does not list {r}:\n{}", rel.output());
    }
    let logs = p.run(&["logs", "backend", "--tail", "50"]);
    logs.expect_code(0);
    assert!(!logs.stdout.trim().is_empty(), "no backend log lines:\n{}", logs.output());

    // 7. The records: every container operation through finch, no docker.
    let finch = finch_record(t)[finch_before..].to_vec();
    let ssh = ssh_record(t)[ssh_before..].to_vec();
    let offending: Vec<&String> = ssh.iter().filter(|c| !docker_words(&not_for_darwin_removed(c)).is_empty()).collect();
    assert!(offending.is_empty(), "docker commands reached the stand-in Mac:\n{offending:#?}");
    assert!(
        ssh.iter().any(|c| c.contains("/finch compose ")),
        "no finch compose command over ssh:\n{}",
        ssh.join("\n")
    );
    for must in ["finch vm init", "finch load", "finch image inspect", " up -d", " ps -a --format json", " logs "] {
        assert!(count(&finch, must) > 0, "no `{must}` in the finch record:\n{}", finch.join("\n"));
    }
    eprintln!(
        "stand-in Mac: {} finch invocations ({} compose, {} load), {} ssh commands, none naming docker",
        finch.len(),
        count(&finch, "finch compose "),
        count(&finch, "finch load"),
        ssh.len()
    );
}

/// `--runtime finch` on a Linux target without Finch: exit 3, saying why and
/// naming the runtimes that are there.
#[test]
fn runtime_finch_on_a_linux_target_is_refused() {
    if !(prereq::require(prereq::docker_available(), "this machine's Docker engine")
        && testenv::available(Kind::Loopback))
    {
        return;
    }
    let target = Target::up("mac-linux", Kind::Loopback).expect("loopback target");
    let p = Project::new("maclinux", 20396, Via::ssh(&target), ProjectOptions::default());
    let run = p.deploy(&["--runtime", "finch"]);
    run.expect_code(3);
    assert!(run.stderr.contains("--runtime finch is not available"), "{}", run.output());
    assert!(run.stderr.contains("finch runs on darwin, the target is Linux"), "{}", run.output());
    let available = run.stderr.lines().find_map(|l| l.split("available on this target: ").nth(1)).unwrap_or_default();
    assert!(available.split(", ").any(|r| r == "docker"), "docker is not listed as available:\n{}", run.output());
    assert!(!available.contains("finch"), "{}", run.output());
    assert!(
        !run.stderr.contains("--install-deps"),
        "installing Docker is no answer to --runtime finch:\n{}",
        run.output()
    );
    assert!(!run.stderr.contains("building release"), "it went on to build:\n{}", run.output());
    drop(p);
    target.down().expect("tearing down mac-linux");
}

/// A Mac as the build machine: Finch and no Docker engine here. The stand-in
/// finch goes on PATH (driving this machine's engine through an explicit
/// socket), `DOCKER_HOST` points nowhere, and the images are built with
/// `finch build` and exported with `finch save`.
#[test]
fn mac_build_machine_uses_finch_build_and_save() {
    let Some(mac) = MacTarget::take() else { return };
    let t = &mac.target;
    set_vm(t, "running");
    let tools = tempfile::tempdir().expect("temp dir");
    let bin = tools.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::fs::copy(workspace_root().join("scripts/testenv/mac/finch"), bin.join("finch")).expect("finch stand-in");
    let state = tools.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("vm"), "running\n").expect("vm state");
    let record = tools.path().join("invocations.log");
    let docker = which("docker").expect("this machine's docker client");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let nowhere = tools.path().join("no-docker-here.sock");
    let env_vars: Vec<(&str, PathBuf)> = vec![
        ("PATH", PathBuf::from(path)),
        ("DOCKER_HOST", PathBuf::from(format!("unix://{}", nowhere.display()))),
        ("FINCH_STANDIN_DOCKER", docker),
        ("FINCH_STANDIN_HOST", PathBuf::from("unix:///var/run/docker.sock")),
        ("FINCH_STANDIN_STATE", state.clone()),
        ("FINCH_STANDIN_LOG", record.clone()),
    ];
    let env: Vec<(&str, &Path)> = env_vars.iter().map(|(k, v)| (*k, v.as_path())).collect();

    // A backend no one has built: it must be built here and sent.
    // Its own deploy path: ~/cultivate belongs to the other test's project.
    let options = ProjectOptions { deploy_path: Some("~/cultivate-build".into()), ..mac_options("built by finch") };
    let p = Project::new("macbuild", 20393, Via::ssh(t), options);
    let stamp = random_hex(6);
    let app = app_copy(p.dir.path(), |s| format!("{s}\n// e2e mac build {stamp}\n"));
    let mut p = p;
    p.set_app_dir(&app);
    let all: Vec<String> = vec!["-c".into(), p.config.display().to_string(), "deploy".into(), "--json".into()];
    let run = run_binary_with(&deploy::binary(), &all, &p.log_dir, p.dir.path(), &env);
    run.expect_code(0);
    p.assert_example_answers();
    let local = std::fs::read_to_string(&record).expect("the local finch record");
    let lines: Vec<String> = local.lines().map(|l| l.split_once(' ').map(|x| x.1).unwrap_or(l).to_string()).collect();
    for svc in ["database", "backend", "frontend"] {
        assert!(
            lines.iter().any(|l| l.starts_with("finch build ") && l.contains(&format!("Dockerfile.{svc}"))),
            "{svc} was not built with `finch build`:\n{local}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("finch save ") && l.contains(&format!("{}-backend:", p.name))),
        "the new backend was not exported with `finch save`:\n{local}"
    );
    assert!(run.stderr.contains("finch"), "the output does not say finch builds: {}", run.stderr);
    let report = run.json();
    let backend = report["transfers"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["reference"].as_str().is_some_and(|r| r.contains("-backend:"))))
        .cloned()
        .unwrap_or_default();
    assert_eq!(backend["already_present"], false, "the new backend was not sent: {report}");
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// `command` without the parts that cannot run on a Mac: the first
/// command's probes guarded by OS (`case "$cultivate_os" in linux) …
/// ;; esac # cultivate-os-guard`, see host/src/batch.rs, whose unit test
/// runs them under a `uname` saying Darwin and checks they do not run).
/// A guard that names `darwin` is kept.
fn not_for_darwin_removed(command: &str) -> String {
    const START: &str = "case \"$cultivate_os\" in ";
    const END: &str = ";; esac # cultivate-os-guard";
    let mut out = String::new();
    let mut rest = command;
    while let Some(i) = rest.find(START) {
        let after = &rest[i + START.len()..];
        let (Some(end), Some(close)) = (after.find(END), after.find(')')) else { break };
        out.push_str(&rest[..i]);
        if after[..close].split('|').any(|o| o.trim_matches('\'') == "darwin") {
            out.push_str(&rest[i..i + START.len() + end + END.len()]);
        }
        rest = &after[end + END.len()..];
    }
    out.push_str(rest);
    out
}

#[test]
fn only_probes_guarded_for_other_systems_are_left_out_of_the_docker_check() {
    let batch = "uname -s\ncase \"$cultivate_os\" in linux) { ( docker info\n) >x; } & ;; esac # cultivate-os-guard\n\
                 case \"$cultivate_os\" in darwin|linux) { ( docker version\n) >y; } & ;; esac # cultivate-os-guard\ndocker ps";
    let left = not_for_darwin_removed(batch);
    assert!(!left.contains("docker info"), "{left}");
    assert!(left.contains("docker version") && left.contains("docker ps"), "{left}");
    assert_eq!(not_for_darwin_removed("docker ps"), "docker ps");
}

/// The check of the ssh record finds docker commands however they are
/// written, and only them.
#[test]
fn docker_words_finds_docker_commands_only() {
    for cmd in [
        "docker ps",
        "sh -c 'docker info'",
        "cd /x && /usr/bin/docker compose up",
        "docker-compose -p x up -d",
        "true; docker load",
        "e() { docker \"$@\"; }",
        "root=$(docker info --format x)",
    ] {
        assert!(!docker_words(cmd).is_empty(), "{cmd}");
    }
    for cmd in [
        "cd /Users/admin/cultivate/releases/m1 && /usr/local/bin/finch compose -p p -f docker-compose.yml up -d",
        "ls /usr/libexec/docker/cli-plugins",
        "cat /Users/admin/cultivate/current/docker-compose.yml",
        "finch load",
    ] {
        assert!(docker_words(cmd).is_empty(), "{cmd}: {:?}", docker_words(cmd));
    }
}
