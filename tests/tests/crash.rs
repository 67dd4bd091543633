//! Crash safety (issue 12): `cultivate deploy` SIGKILLed half-way leaves a
//! lock that heals — `cultivate lock status` says its holder is dead, and
//! the next deploy takes it over with a warning naming the old holder,
//! removes the half-made release directory and succeeds with no manual step.
//!
//! Uses its own shared `engine` target ([`ENGINE`]), never `deploy-e2e`.
//! Run: `cargo test -p cultivate-e2e --test crash -- --test-threads 2` (as root).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use cultivate_e2e::deploy::{app_copy, random_hex, Project, ProjectOptions, SharedEngine};

/// Name of this file's shared `engine` target.
const ENGINE: &str = "crash-e2e";

/// Every test that takes it (see [`SharedEngine::take`]).
const ENGINE_USERS: &[&str] = &[
    "sigkilled_deploy_leaves_a_lock_the_next_deploy_heals",
    "sigterm_stops_at_a_safe_point_and_a_closed_pipe_does_not",
];

/// The stage line to kill at: after it the release directory exists with a
/// `pending` record and `current` does not name it — the half-made state a
/// crash leaves. (During build and image transfer the lock is held but no
/// release directory exists yet, so killing there tests the lock alone.)
const KILL_AT: &str = "==> starting release ";

#[test]
fn sigkilled_deploy_leaves_a_lock_the_next_deploy_heals() {
    let Some(engine) = SharedEngine::take(ENGINE, ENGINE_USERS) else { return };
    let p = Project::new("crash", 20190, engine.via(), ProjectOptions::default());

    let mut child = p.spawn(&["deploy"]);
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped stderr");
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut seen = String::new();
    let mut version = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("reading the deploy's stderr");
        seen.push_str(&line);
        seen.push('\n');
        if let Some(v) = line.strip_prefix(KILL_AT) {
            version = Some(v.trim().to_string());
            // SIGKILL: no handler, no cleanup — as a crash or an OOM kill.
            assert_eq!(kill9(pid), 0, "kill -9 {pid}");
            break;
        }
        assert!(Instant::now() < deadline, "no `{KILL_AT}` line within 15 minutes:\n{seen}");
    }
    let status = child.wait().expect("waiting for the killed deploy");
    let version = version.unwrap_or_else(|| panic!("the deploy ended ({status}) before `{KILL_AT}`:\n{seen}"));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}\n{seen}");

    // What the crash left: the lock, and a half-made release directory.
    let release_dir = format!("{}/releases/{version}", p.deploy_path);
    p.via.sh(&format!("test -d {}/.lock && test -d {release_dir}", p.deploy_path)).expect("lock and release dir left");
    let owner = p.via.sh(&format!("cat {}/.lock/owner", p.deploy_path)).expect("owner file");
    let record: serde_json::Value =
        serde_json::from_str(&owner).unwrap_or_else(|e| panic!("owner is not JSON ({e}): {owner}"));
    assert_eq!(record["pid"], pid, "{owner}");
    assert!(record["what"].as_str().is_some_and(|w| w.starts_with("deploy")), "{owner}");
    assert_ne!(record["user"], "unknown", "{owner}");

    let status = p.run(&["lock", "status"]);
    status.expect_code(0);
    assert!(status.stdout.contains(&format!("pid {pid}")), "the holder is not named:\n{}", status.output());
    assert!(status.stdout.contains("holder: dead"), "the holder is not reported dead:\n{}", status.output());

    // The next deploy: no manual step.
    let next = p.deploy(&["--json"]);
    next.expect_code(0);
    assert!(
        next.stderr.contains("took over the lock of deploy") && next.stderr.contains(&format!("pid {pid}")),
        "no warning naming the old holder:\n{}",
        next.stderr
    );
    assert!(next.stderr.contains(&version), "the removed release is not named:\n{}", next.stderr);
    assert!(
        p.via.sh(&format!("test ! -e {release_dir}")).is_ok(),
        "the half-made release {release_dir} is still there"
    );
    assert!(p.via.sh(&format!("test ! -e {}/.lock", p.deploy_path)).is_ok(), "the lock was not released");
    let page = p.get("/").unwrap_or_else(|e| panic!("GET /: {e:#}"));
    assert!(page.contains("cultivate example app"), "{page}");
    assert!(p.run(&["lock", "status"]).stdout.contains("unlocked"));
}

fn kill9(pid: u32) -> i32 {
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().map_or(-1, |s| s.code().unwrap_or(-1))
}

/// A changed backend, so that the deploy builds and sends something.
fn changed_backend(p: &Project, dir: &str, edition: &str) -> std::path::PathBuf {
    let parent = p.dir.path().join(dir);
    std::fs::create_dir_all(&parent).expect("dir");
    app_copy(&parent, |s| {
        s.replace(
            "secretConfigured: Boolean(process.env.APP_SECRET),",
            &format!("secretConfigured: Boolean(process.env.APP_SECRET),\n        edition: '{edition}',"),
        )
    })
}

fn edition(p: &Project) -> serde_json::Value {
    let body = p.get("/api/info").expect("GET /api/info");
    serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["edition"].clone()
}

/// SIGTERM while images are sent: the deploy stops at the next safe point,
/// releases the lock, removes the half-made release, says what it left and
/// exits 143; the previous release keeps serving. Then a deploy whose
/// stdout and stderr are closed early (`cultivate deploy -v | head`) still
/// runs to the end, and its deploy log on the target is complete.
#[test]
fn sigterm_stops_at_a_safe_point_and_a_closed_pipe_does_not() {
    let Some(engine) = SharedEngine::take(ENGINE, ENGINE_USERS) else { return };
    let mut p = Project::new("sigterm", 20195, engine.via(), ProjectOptions::default());
    p.deploy(&["--release-version", "r1"]).expect_code(0);

    let ed = format!("t-{}", random_hex(3));
    p.set_app_dir(&changed_backend(&p, "t", &ed));
    let mut child = p.spawn(&["deploy", "--release-version", "r2"]);
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("==> sending images") || line.starts_with("==> uploading configuration") {
            let ok = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
            assert!(ok.success());
            break;
        }
    }
    for line in lines {
        seen.push_str(&line.unwrap_or_default());
        seen.push('\n');
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143), "exit status after SIGTERM:\n{seen}");
    assert!(seen.contains("interrupted by SIGTERM"), "{seen}");
    assert!(seen.contains("release r1 is still serving"), "{seen}");
    assert!(p.via.sh(&format!("test ! -e {}/.lock", p.deploy_path)).is_ok(), "the lock was left:\n{seen}");
    assert!(p.via.sh(&format!("test ! -e {}/releases/r2", p.deploy_path)).is_ok(), "r2 was left:\n{seen}");
    assert_eq!(p.current_release().expect("current"), "r1");
    assert_eq!(edition(&p), serde_json::Value::Null, "r2's backend serves");

    // Output closed early: nothing of it is read after the first lines.
    let mut child = p.spawn(&["deploy", "-v", "--release-version", "r3"]);
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout = child.stdout.take().expect("piped stdout");
    let first: Vec<String> = BufReader::new(stderr).lines().take(2).map(|l| l.unwrap_or_default()).collect();
    drop(stdout);
    assert_eq!(first.len(), 2, "{first:?}");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "a deploy with closed output did not finish");
    assert_eq!(p.current_release().expect("current"), "r3");
    assert_eq!(edition(&p), ed.as_str());
    let log = p.via.sh(&format!("cat {}/logs/deploy-r3.log", p.deploy_path)).expect("deploy log");
    assert!(log.contains("release r3 is healthy and current"), "the deploy log is incomplete:\n{log}");
}
