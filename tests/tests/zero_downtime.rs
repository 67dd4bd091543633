//! Zero-downtime releases (issue 10), end to end over real SSH: a load of
//! at least 20 requests/s through the frontend (every response checked) and
//! a slow request always in flight, while (a) a backend change, (b) a
//! frontend static change, (c) `cultivate rollback`, (d) a deploy whose new
//! backend fails its health check (automatic rollback) and (e) a deploy with
//! nothing changed run. Each must see zero failed requests, and the database
//! container keeps its ID and start time throughout. On Compose v1 (the
//! `engine` target, Docker 20.10) and Compose v2 (the `trixie` target,
//! Docker 26). A third test kills the tool in the middle of a switch and
//! checks that the next `cultivate status` repairs the stack.
//!
//! Run: `cargo test -p cultivate-e2e --test zero_downtime -- --test-threads 2`
//! (root; prerequisites through `prereq::require`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cultivate_e2e::deploy::{
    app_copy, binary, engine_can_exec, random_hex, run_binary_with, Project, ProjectOptions, Run, Via,
};
use cultivate_e2e::load::{Load, Report};
use cultivate_e2e::prereq;
use cultivate_e2e::testenv::{self, Kind, Target};

/// Requests per second through the frontend.
const RATE: u32 = 25;

fn ready(kind: Kind) -> bool {
    prereq::require(prereq::docker_available(), "this machine's Docker engine")
        && prereq::require(cultivate_e2e::deploy::base_image_present(), "image cultivate/debian:bookworm")
        && testenv::available(kind)
}

/// `ID STARTED_AT` of the project's running container of `service`.
fn identity(p: &Project, service: &str) -> String {
    let ids = p.containers(service, false);
    assert_eq!(ids.len(), 1, "expected one running {service} container, found {ids:?}");
    p.via
        .docker_ok(&format!("inspect -f '{{{{.Id}}}} {{{{.State.StartedAt}}}}' {}", ids[0]))
        .expect("inspect")
        .trim()
        .to_string()
}

/// Runs `op` while the load runs (a second before and after), and returns both.
fn under_load(p: &Project, op: impl FnOnce() -> Run) -> (Report, Run) {
    let host = p.via.http_host();
    let load = Load::start(&host, p.http_port, &["/api/health", "/", "/api/info"], RATE, Some("/api/slow?ms=2000"));
    std::thread::sleep(Duration::from_millis(1500));
    let run = op();
    std::thread::sleep(Duration::from_millis(1500));
    (load.stop(), run)
}

fn assert_no_failure(what: &str, report: &Report, run: &Run) {
    eprintln!("{what}: {}", report.summary());
    assert!(report.rate() >= 20.0, "{what}: the load ran at only {:.1} requests/s", report.rate());
    assert!(
        report.failures().is_empty() && report.slow_failures().is_empty(),
        "{what}: requests failed:\n{}\n{}",
        report.failure_lines(),
        run.output()
    );
    assert!(report.slow_completed() >= 1, "{what}: no slow request completed");
}

/// `service → action` of a `--json` deploy report.
fn actions(run: &Run) -> Vec<(String, String)> {
    run.json()["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services in the report:\n{}", run.output()))
        .iter()
        .map(|s| (s["service"].as_str().unwrap_or("").to_string(), s["action"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn action_of(run: &Run, service: &str) -> String {
    actions(run).into_iter().find(|(s, _)| s == service).map(|(_, a)| a).unwrap_or_default()
}

/// A copy of examples/app under `parent` with a changed backend and/or page.
fn changed_app(parent: &std::path::Path, edition: &str, title: Option<&str>) -> std::path::PathBuf {
    std::fs::create_dir_all(parent).expect("dir");
    let app = app_copy(parent, |s| {
        s.replace(
            "secretConfigured: Boolean(process.env.APP_SECRET),",
            &format!("secretConfigured: Boolean(process.env.APP_SECRET),\n        edition: '{edition}',"),
        )
    });
    if let Some(title) = title {
        let page = app.join("frontend/src/index.html");
        let html = std::fs::read_to_string(&page).expect("index.html");
        let changed = html.replace("<title>cultivate example app</title>", &format!("<title>{title}</title>"));
        assert_ne!(html, changed, "the page edit changed nothing");
        std::fs::write(&page, changed).expect("index.html");
    }
    app
}

/// The five switches of the issue on one target, each under load.
fn five_switches(mut p: Project) {
    let first = p.deploy(&["--json"]);
    first.expect_code(0);
    assert!(actions(&first).iter().all(|(_, a)| a == "started"), "{:?}", actions(&first));
    let db = identity(&p, "database");
    let fe = identity(&p, "frontend");
    let note = format!("zero-downtime note {}", random_hex(4));
    p.post_json("/api/notes", &serde_json::json!({ "body": note }).to_string()).expect("POST /api/notes");

    // (e) nothing changed.
    let (r, run) = under_load(&p, || p.deploy(&["--json"]));
    run.expect_code(0);
    assert_eq!(run.json()["outcome"], "unchanged", "{}", run.output());
    assert_no_failure("(e) nothing changed", &r, &run);
    assert_eq!(identity(&p, "database"), db);

    // (a) a backend change; first its plan, which changes nothing.
    let edition_a = format!("a-{}", random_hex(3));
    p.set_app_dir(&changed_app(&p.dir.path().join("a"), &edition_a, None));
    let before = p.current_release().expect("current");
    let dry = p.deploy(&["--dry-run", "--json"]);
    dry.expect_code(0);
    assert_eq!(dry.json()["outcome"], "planned");
    assert_eq!(action_of(&dry, "backend"), "switched", "{}", dry.output());
    assert_eq!(action_of(&dry, "database"), "unchanged", "{}", dry.output());
    assert_eq!(action_of(&dry, "frontend"), "unchanged", "{}", dry.output());
    assert!(dry.stderr.contains("backend: switched (zero downtime)"), "{}", dry.stderr);
    assert_eq!(p.current_release().expect("current"), before, "a dry run moved current");
    assert_ne!(p.info()["edition"], edition_a.as_str(), "a dry run deployed");
    let (r, run_a) = under_load(&p, || p.deploy(&["--json"]));
    run_a.expect_code(0);
    assert_no_failure("(a) backend change", &r, &run_a);
    assert_eq!(action_of(&run_a, "backend"), "switched", "{}", run_a.output());
    assert_eq!(action_of(&run_a, "database"), "unchanged", "{}", run_a.output());
    assert_eq!(action_of(&run_a, "frontend"), "unchanged", "{}", run_a.output());
    assert_eq!(p.info()["edition"], edition_a.as_str(), "the new backend is not serving");
    assert_eq!(identity(&p, "database"), db, "(a) touched the database container");
    assert_eq!(identity(&p, "frontend"), fe, "(a) touched the frontend container");
    let version_a = run_a.json()["version"].as_str().expect("version").to_string();

    // (b) a frontend static change (the backend's code is the same as (a)'s).
    let title = format!("zero downtime {}", random_hex(3));
    p.set_app_dir(&changed_app(&p.dir.path().join("b"), &edition_a, Some(&title)));
    let (r, run_b) = under_load(&p, || p.deploy(&["--json"]));
    run_b.expect_code(0);
    assert_no_failure("(b) frontend static change", &r, &run_b);
    assert_eq!(action_of(&run_b, "frontend"), "reloaded", "{}", run_b.output());
    assert_eq!(action_of(&run_b, "backend"), "unchanged", "{}", run_b.output());
    assert!(p.get("/").expect("GET /").contains(&title), "the new page is not served");
    assert_eq!(identity(&p, "database"), db);
    assert_eq!(identity(&p, "frontend"), fe, "(b) recreated the frontend container");

    // (c) `cultivate rollback` to (a).
    let (r, run_c) = under_load(&p, || p.run(&["rollback", "--json"]));
    run_c.expect_code(0);
    assert_no_failure("(c) rollback", &r, &run_c);
    assert_eq!(p.current_release().expect("current"), version_a);
    assert!(!p.get("/").expect("GET /").contains(&title), "the rolled-back page is still served");
    assert_eq!(identity(&p, "database"), db);
    assert_eq!(identity(&p, "frontend"), fe);

    // (d) a new backend that never becomes healthy: automatic rollback.
    let broken = app_copy(&p.dir.path().join("d"), |_| {
        "'use strict';\nconsole.error('zero-downtime e2e: refusing to start');\nprocess.exit(3);\n".to_string()
    });
    p.set_app_dir(&broken);
    let (r, run_d) = under_load(&p, || p.deploy(&["--json", "--health-timeout", "90"]));
    if run_d.code != 4 {
        let version = run_d.stderr.lines().find_map(|l| l.split("building release ").nth(1)).unwrap_or("").trim();
        if let Err(why) = engine_can_exec(&p.via, &format!("{}-backend:{version}", p.name), "/bin/sh") {
            prereq::require(false, &format!("a target engine that can run health checks: {why}"));
            return;
        }
    }
    run_d.expect_code(4);
    assert_no_failure("(d) failed deploy and automatic rollback", &r, &run_d);
    assert!(run_d.stderr.contains("refusing to start"), "diagnostics missing:\n{}", run_d.stderr);
    assert_eq!(p.current_release().expect("current"), version_a);
    assert_eq!(p.info()["edition"], edition_a.as_str(), "the old backend is not serving after the rollback");
    assert_eq!(identity(&p, "database"), db, "(d) touched the database container");
    assert_eq!(identity(&p, "frontend"), fe, "(d) touched the frontend container");
    assert!(p.get("/api/notes").expect("notes").contains(&note), "the note written first is gone");
    assert_eq!(p.containers("backend", true).len(), 1, "the failed backend container was not removed");
}

#[test]
fn zero_downtime_on_compose_v1() {
    if !ready(Kind::Engine) {
        return;
    }
    let target = Target::up("zd-v1", Kind::Engine).expect("engine target");
    let p = Project::new("zd1", 20300, Via::ssh(&target), ProjectOptions::default());
    five_switches(p);
    target.down().expect("tearing down the target");
}

#[test]
fn zero_downtime_on_compose_v2() {
    if !ready(Kind::Trixie) {
        return;
    }
    let target = Target::up("zd-v2", Kind::Trixie).expect("trixie target");
    let options = ProjectOptions { deploy_path: Some("/opt/zd-e2e".into()), ..Default::default() };
    let p = Project::new("zd2", 20310, Via::ssh(&target), options);
    five_switches(p);
    target.down().expect("tearing down the target");
}

/// The tool SIGKILLed while the new backend starts beside the old one: the
/// old one keeps serving (no failed request), `cultivate status` finds two
/// backends, repairs the stack to the current release without a human, and
/// the next deploy succeeds.
#[test]
fn killed_during_the_switch_status_repairs() {
    if !ready(Kind::Engine) {
        return;
    }
    let target = Target::up("zd-kill", Kind::Engine).expect("engine target");
    let mut p = Project::new("zdk", 20320, Via::ssh(&target), ProjectOptions::default());
    p.deploy(&[]).expect_code(0);
    let current = p.current_release().expect("current");
    let db = identity(&p, "database");
    let edition = format!("k-{}", random_hex(3));
    p.set_app_dir(&changed_app(&p.dir.path().join("k"), &edition, None));

    let load = Load::start(&p.via.http_host(), p.http_port, &["/api/health", "/"], RATE, None);
    let mut cmd = Command::new(binary());
    cmd.args(["-c", &p.config.display().to_string(), "deploy"])
        .current_dir(p.dir.path())
        .env("CULTIVATE_LOG_DIR", &p.log_dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning cultivate deploy");
    let stderr = child.stderr.take().expect("stderr");
    let started = Instant::now();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("starting the new container beside") {
            // Once compose has created the second backend (the tool's death
            // would otherwise take the remote compose command with it before
            // it did), kill the tool in the middle of the switch.
            let waited = Instant::now();
            while p.containers("backend", true).len() < 2 {
                assert!(waited.elapsed() < Duration::from_secs(120), "no second backend appeared:\n{seen}");
                std::thread::sleep(Duration::from_millis(100));
            }
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the deploy never reached the switch:\n{seen}");
    }
    assert!(seen.contains("starting the new container beside"), "the deploy ended before the switch:\n{seen}");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    eprintln!("killed during the switch: {}", report.summary());
    assert!(report.failures().is_empty(), "requests failed:\n{}", report.failure_lines());
    assert_eq!(p.current_release().expect("current"), current, "current moved although the deploy never committed");

    let status = p.run(&["status", "--json"]);
    status.expect_code(0);
    let v = status.json();
    assert!(
        v["repaired"].as_array().is_some_and(|r| !r.is_empty()),
        "status did not find or repair the half-switched stack:\n{}",
        status.output()
    );
    let status = p.status_after_starting(status, "killed during the switch");
    assert_eq!(status.json()["healthy"], true, "{}", status.output());
    assert_eq!(p.containers("backend", false).len(), 1, "still two backends after the repair");
    assert_ne!(p.info()["edition"], edition.as_str(), "the uncommitted backend serves");
    assert_eq!(identity(&p, "database"), db);

    let again = p.deploy(&["--json"]);
    again.expect_code(0);
    assert_eq!(p.info()["edition"], edition.as_str());
    drop(p);
    target.down().expect("tearing down the target");
}

/// Runs the binary for `p` with `CULTIVATE_PLUGIN_PATH=plugins` (first in the search path).
fn run_with_plugins(p: &Project, plugins: &std::path::Path, args: &[&str]) -> Run {
    let mut all: Vec<String> = vec!["-c".into(), p.config.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_binary_with(&binary(), &all, &p.log_dir, p.dir.path(), &[("CULTIVATE_PLUGIN_PATH", plugins)])
}

/// A stack plugin built against plugin API 1.0 (no zero-downtime
/// operations; the `compose-api-1-0` fixture) still loads and deploys: the
/// host recreates the whole stack as earlier versions did, and says so.
#[test]
fn a_plugin_of_api_1_0_still_deploys_with_the_whole_stack_recreated() {
    if !(prereq::require(prereq::docker_available(), "this machine's Docker engine")
        && prereq::require(cultivate_e2e::deploy::base_image_present(), "image cultivate/debian:bookworm"))
    {
        return;
    }
    let root = prereq::workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "-p", "cultivate-fixture-compose-api-1-0"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the API 1.0 fixture failed");
    let _ = binary();
    let mut p = Project::new("api10", 28090, Via::Local, ProjectOptions::default());
    let plugins = p.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(
        root.join("target/debug/libcultivate_fixture_compose_api_1_0.so"),
        plugins.join("libcultivate_plugin_compose10.so"),
    )
    .expect("installing the fixture");

    let first = run_with_plugins(&p, &plugins, &["deploy", "--runtime", "docker-compose-1.0", "--json"]);
    first.expect_code(0);
    assert!(first.stderr.contains("docker-compose-1.0"), "{}", first.output());
    assert!(first.stderr.contains("cannot switch services without downtime"), "{}", first.output());
    assert!(actions(&first).iter().all(|(_, a)| a == "restarted"), "{:?}", actions(&first));

    let edition = format!("api10-{}", random_hex(3));
    p.set_app_dir(&changed_app(&p.dir.path().join("a"), &edition, None));
    let second = run_with_plugins(&p, &plugins, &["deploy", "--runtime", "docker-compose-1.0", "--json"]);
    second.expect_code(0);
    assert!(second.stderr.contains("recreating the whole stack"), "{}", second.output());
    assert_eq!(p.info()["edition"], edition.as_str());
}
