//! Crash safety (issue 12): `cultivate deploy` SIGKILLed half-way leaves a
//! lock that heals — `cultivate lock status` says its holder is dead, and
//! the next deploy takes it over with a warning naming the old holder,
//! removes the half-made release directory and succeeds with no manual step.
//!
//! Uses its own shared `engine` target ([`ENGINE`]), never `deploy-e2e`.
//! Run: `cargo test -p cultivate-e2e --test crash -- --test-threads 2` (as root).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use cultivate_e2e::deploy::{Project, ProjectOptions, SharedEngine};

/// Name of this file's shared `engine` target.
const ENGINE: &str = "crash-e2e";

/// Every test that takes it (see [`SharedEngine::take`]).
const ENGINE_USERS: &[&str] = &["sigkilled_deploy_leaves_a_lock_the_next_deploy_heals"];

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
