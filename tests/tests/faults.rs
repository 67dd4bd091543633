//! Faults (issue 12), end to end on `engine` targets over real SSH: the tool
//! SIGKILLed at each stage of a deploy in turn, the target's Docker daemon
//! stopped, the SSH link cut during the image transfer, the deploy
//! directory's filesystem full, and two projects deploying to one target at
//! once. After each: a release serves, `cultivate status` tells the truth
//! (repairing an interrupted switch), and the next deploy works with no
//! manual step.
//!
//! Run: `cargo test -p cultivate-e2e --test faults -- --test-threads 2` (root).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use cultivate_e2e::deploy::{app_copy, random_hex, Project, ProjectOptions, Run, SharedEngine, Via};
use cultivate_e2e::prereq;
use cultivate_e2e::testenv::{Kind, Target};

/// This file's shared target.
const ENGINE: &str = "faults-e2e";
const ENGINE_USERS: &[&str] = &[
    "sigkill_at_every_stage_leaves_a_serving_release",
    "a_stopped_daemon_is_a_clear_error_before_anything_changes",
    "a_full_deploy_filesystem_is_named_and_nothing_is_half_applied",
    "two_projects_deploy_to_one_target_at_once",
];

fn engine() -> Option<SharedEngine> {
    SharedEngine::take(ENGINE, ENGINE_USERS)
}

/// The greeting the release `current` names was deployed with.
fn current_greeting(p: &Project) -> String {
    let env = p.via.sh(&format!("cat {}/current/.env", p.deploy_path)).expect("current .env");
    env.lines()
        .find_map(|l| l.strip_prefix("APP_GREETING="))
        .map(|v| v.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("no APP_GREETING in the current .env:\n{env}"))
}

/// Starts `cultivate deploy ARGS`, SIGKILLs it `delay` after a stderr line
/// contains `marker`; returns what it printed. Panics when it ends first.
fn deploy_killed_at(p: &Project, args: &[&str], marker: &str, delay: Duration) -> String {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let mut child = p.spawn(&all);
    let stderr = child.stderr.take().expect("piped stderr");
    let started = Instant::now();
    let mut seen = String::new();
    let mut hit = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            std::thread::sleep(delay);
            child.kill().expect("SIGKILL");
            hit = true;
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no `{marker}` within 10 minutes:\n{seen}");
    }
    let _ = child.wait();
    assert!(hit, "the deploy ended before `{marker}`:\n{seen}");
    seen
}

/// After a fault: a release serves, `status` reports it healthy (repairing
/// what the fault left), and what serves is the release `current` names.
fn assert_current_serves(p: &Project, what: &str) {
    let status = p.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{what}: status failed\n{}", status.output());
    let status = p.status_after_starting(status, what);
    assert_eq!(status.json()["healthy"], true, "{what}: not healthy\n{}", status.output());
    let greeting = current_greeting(p);
    assert_eq!(p.info()["greeting"], greeting.as_str(), "{what}: what serves is not the current release");
    assert_eq!(p.containers("backend", false).len(), 1, "{what}: not exactly one backend after status");
}

/// The tool SIGKILLed at each stage of a deploy in turn (and of the
/// automatic rollback): the release that served before still serves (or,
/// killed after the commit, the new one), `status` tells the truth, and the
/// next deploy succeeds without a manual step.
#[test]
fn sigkill_at_every_stage_leaves_a_serving_release() {
    let Some(engine) = engine() else { return };
    let mut p = Project::new("kill", 20350, engine.via(), ProjectOptions::default());
    p.set_env("APP_GREETING", "greeting 0");
    p.deploy(&[]).expect_code(0);

    // Each deploy changes the greeting: the backend is switched, no image built anew.
    let now = Duration::ZERO;
    let stages = [
        ("connect", "==> connecting to", now),
        ("lock", "docker-compose ", now),
        ("build", "==> building release", now),
        ("transfer", "==> sending images", now),
        ("configuration upload", "==> uploading configuration", now),
        ("start", "==> starting release", now),
        ("health", "starting the new container beside", Duration::from_secs(2)),
        ("commit", "drained and stopped", now),
    ];
    for (i, (stage, marker, delay)) in stages.iter().enumerate() {
        p.set_env("APP_GREETING", &format!("greeting {}", i + 1));
        let seen = deploy_killed_at(&p, &[], marker, *delay);
        assert_current_serves(&p, &format!("killed at {stage}\n{seen}"));
    }

    // The automatic rollback, killed too.
    let broken = app_copy(&p.dir.path().join("broken"), |_| "process.exit(3);\n".to_string());
    p.set_app_dir(&broken);
    p.set_env("APP_GREETING", "greeting broken");
    let seen = deploy_killed_at(&p, &["--health-timeout", "60"], "==> rolling back to release", Duration::ZERO);
    assert_current_serves(&p, &format!("killed during the rollback\n{seen}"));

    p.set_app_dir(&prereq::workspace_root().join("examples/app"));
    p.set_env("APP_GREETING", "greeting last");
    p.deploy(&[]).expect_code(0);
    assert_eq!(p.info()["greeting"], "greeting last");
    assert!(p.run(&["lock", "status"]).stdout.contains("unlocked"));
}

/// The target's Docker daemon stopped: a clear error that says to start it
/// (not to install it), before anything changes; fine once it runs again.
#[test]
fn a_stopped_daemon_is_a_clear_error_before_anything_changes() {
    let Some(_engine) = engine() else { return };
    if !prereq::require(cultivate_e2e::testenv::available(Kind::Engine), "engine targets") {
        return;
    }
    // Its own target: stopping the shared one's daemon would stop the other tests' stacks.
    let target = Target::up("faults-daemon", Kind::Engine).expect("engine target");
    let p = Project::new("daemon", 20360, Via::ssh(&target), ProjectOptions::default());
    p.deploy(&["--release-version", "r1"]).expect_code(0);
    target.stop_engine().expect("stopping the target's dockerd");
    let run = p.deploy(&["--release-version", "r2"]);
    let err = run.stderr.clone();
    target.start_engine().expect("starting the target's dockerd");
    run.expect_code(3);
    assert!(err.contains("Docker daemon") && err.contains("not running or not reachable"), "{err}");
    assert!(err.contains("systemctl start docker") && err.contains("without systemd"), "{err}");
    assert!(!err.contains("apt-get install"), "install steps for an installed Docker:\n{err}");
    assert_eq!(err.matches("hint:").count(), 1, "{err}");
    assert!(p.via.sh(&format!("test ! -e {}/releases/r2 && test ! -e {}/.lock", p.deploy_path, p.deploy_path)).is_ok());
    assert_eq!(p.current_release().expect("current"), "r1");
    p.deploy(&["--release-version", "r3"]).expect_code(0);
    drop(p);
    target.down().expect("tearing down");
}

/// The deploy directory on a filesystem that is full: an error naming the
/// filesystem, nothing half-applied (no lock, no release directory, the
/// previous release serving), and a deploy that works once space is freed.
#[test]
fn a_full_deploy_filesystem_is_named_and_nothing_is_half_applied() {
    let Some(engine) = engine() else { return };
    let mut p = Project::new("full", 20370, engine.via(), ProjectOptions::default());
    // An engine target shares this machine's filesystem: a small tmpfs here is its deploy path.
    std::fs::create_dir_all(&p.deploy_path).expect("deploy dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs", &p.deploy_path])
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs at {}", p.deploy_path);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(p.deploy_path.clone());

    p.set_env("APP_GREETING", "before the disk filled");
    p.deploy(&["--release-version", "r1"]).expect_code(0);
    let filler = format!("{}/filler", p.deploy_path);
    // Full to the last page: 64 KiB writes stop with up to 60 KiB still free,
    // room enough for a release's small files; 4 KiB ones take the rest.
    for (file, bs) in [(filler.clone(), "bs=64k"), (format!("{filler}-tail"), "bs=4k")] {
        let _ = std::process::Command::new("dd").args(["if=/dev/zero", &format!("of={file}"), bs]).output();
    }
    let free = p.via.sh(&format!("df -k --output=avail {} | tail -1", p.deploy_path)).expect("df");
    assert_eq!(free.trim(), "0", "the deploy filesystem is not full");
    p.set_env("APP_GREETING", "while the disk is full");
    let run = p.deploy(&["--release-version", "r2"]);
    assert_ne!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("is full") && run.stderr.contains(&p.deploy_path), "{}", run.output());
    assert!(run.stderr.contains("tmpfs"), "the filesystem is not named:\n{}", run.stderr);
    assert!(p.via.sh(&format!("test ! -e {d}/.lock && test ! -e {d}/releases/r2", d = p.deploy_path)).is_ok());
    assert_eq!(p.current_release().expect("current"), "r1");
    assert_eq!(p.info()["greeting"], "before the disk filled");

    std::fs::remove_file(&filler).expect("freeing space");
    std::fs::remove_file(format!("{filler}-tail")).expect("freeing space");
    p.deploy(&["--release-version", "r3"]).expect_code(0);
    assert_eq!(p.info()["greeting"], "while the disk is full");
    drop(p);
}

/// Two projects deploying to one target at the same time, three rounds,
/// with pruning (2 releases kept): neither breaks the other.
#[test]
fn two_projects_deploy_to_one_target_at_once() {
    let Some(engine) = engine() else { return };
    let mut a = Project::new("twoa", 20380, engine.via(), ProjectOptions::default());
    let mut b = Project::new("twob", 20390, engine.via(), ProjectOptions::default());
    for p in [&a, &b] {
        let text = std::fs::read_to_string(&p.config).expect("config");
        p.set_config_text(&format!("releases_kept = 2\n{text}"));
    }
    for round in 0..3 {
        let tag = random_hex(3);
        a.set_env("APP_GREETING", &format!("a {round} {tag}"));
        b.set_env("APP_GREETING", &format!("b {round} {tag}"));
        for p in [&a, &b] {
            let text = std::fs::read_to_string(&p.config).expect("config");
            if !text.starts_with("releases_kept") {
                p.set_config_text(&format!("releases_kept = 2\n{text}"));
            }
        }
        let (ra, rb): (Run, Run) = std::thread::scope(|s| {
            let ha = s.spawn(|| a.deploy(&[]));
            let hb = s.spawn(|| b.deploy(&[]));
            (ha.join().expect("a"), hb.join().expect("b"))
        });
        ra.expect_code(0);
        rb.expect_code(0);
        assert_eq!(a.info()["greeting"], format!("a {round} {tag}").as_str());
        assert_eq!(b.info()["greeting"], format!("b {round} {tag}").as_str());
    }
    let releases = a.via.sh(&format!("ls {}/releases | wc -l", a.deploy_path)).expect("ls");
    assert_eq!(releases.trim(), "2", "pruning keeps 2 releases");
}

/// The SSH link cut for longer than the keepalive while images are sent: a
/// connection-lost error (exit 16) within the keepalive bound, no image
/// tagged half-way; the next deploy, with the link back, works.
#[test]
fn a_cut_link_during_the_transfer_is_a_connection_lost_error() {
    if !(prereq::require(prereq::docker_available(), "this machine's Docker engine")
        && prereq::require(cultivate_e2e::deploy::base_image_present(), "image cultivate/debian:bookworm")
        && cultivate_e2e::testenv::available(Kind::Engine))
    {
        return;
    }
    // A fresh engine: its store is empty, so the first transfer is long enough to cut.
    let target = Target::up("faults-link", Kind::Engine).expect("engine target");
    let p = Project::new("link", 20400, Via::ssh(&target), ProjectOptions::default());
    let text = std::fs::read_to_string(&p.config).expect("config");
    p.set_config_text(&text.replacen("[ssh]\n", "[ssh]\nkeepalive = 2\n", 1));

    let mut child = p.spawn(&["deploy", "--release-version", "r1"]);
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("==> sending images") {
            break;
        }
        assert!(Instant::now() < deadline, "no transfer within 10 minutes:\n{seen}");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the deploy ended ({status}) before the transfer:\n{seen}");
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    target.set_link(false).expect("cutting the link");
    let cut = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if cut.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = target.set_link(true);
            panic!("the deploy still runs 90 s after the link was cut:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = cut.elapsed();
    target.set_link(true).expect("restoring the link");
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(16), "exit after the cut ({took:?}):\n{seen}");
    assert!(took < Duration::from_secs(45), "the lost connection took {took:?} to notice (keepalive 2 s):\n{seen}");
    assert!(seen.to_ascii_lowercase().contains("connection"), "{seen}");
    // Nothing tagged half-way: a tag of r1 on the target is a whole image, the one built here.
    for svc in ["database", "backend", "frontend"] {
        let reference = format!("{}-{svc}:r1", p.name);
        if let Ok(id) = p.via.docker_ok(&format!("image inspect -f '{{{{.Id}}}}' {reference}")) {
            let local = std::process::Command::new("docker")
                .args(["image", "inspect", "-f", "{{.Id}}", &reference])
                .output()
                .expect("docker image inspect");
            assert_eq!(id.trim(), String::from_utf8_lossy(&local.stdout).trim(), "{reference} is not the image built");
        }
    }
    let again = p.deploy(&["--release-version", "r2"]);
    again.expect_code(0);
    let page = p.get("/").expect("GET /");
    assert!(page.contains("cultivate example app"), "{page}");
    drop(p);
    target.down().expect("tearing down");
}

/// The target engine's data root on a filesystem that is full: the image
/// transfer fails with an error naming that filesystem, nothing is half
/// applied (no release, no lock, no tag of the new release's backend, the
/// previous release serving), and a deploy works once space is freed.
#[test]
fn a_full_engine_data_root_is_named_and_nothing_is_half_applied() {
    if !(prereq::require(prereq::docker_available(), "this machine's Docker engine")
        && prereq::require(cultivate_e2e::deploy::base_image_present(), "image cultivate/debian:bookworm")
        && cultivate_e2e::testenv::available(Kind::Engine))
    {
        return;
    }
    let target = Target::up("faults-store", Kind::Engine).expect("engine target");
    // The engine's data root on a small filesystem of its own.
    target.stop_engine().expect("stopping the target's dockerd");
    let data = target.dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let data = data.display().to_string();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2g", "tmpfs", &data])
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs at {data}");
    struct StopThenUnmount<'t>(&'t Target, String);
    impl Drop for StopThenUnmount<'_> {
        fn drop(&mut self) {
            let _ = self.0.stop_engine();
            let _ = std::process::Command::new("umount").arg(&self.1).status();
        }
    }
    let guard = StopThenUnmount(&target, data.clone());
    target.start_engine().expect("starting the target's dockerd on the small data root");

    let mut p = Project::new("store", 20410, Via::ssh(&target), ProjectOptions::default());
    p.deploy(&["--release-version", "r1"]).expect_code(0);
    let filler = format!("{data}/filler");
    let _ = std::process::Command::new("dd").args(["if=/dev/zero", &format!("of={filler}"), "bs=1M"]).output();
    let parent = p.dir.path().join("b");
    std::fs::create_dir_all(&parent).expect("dir");
    let edition = format!("store-{}", random_hex(3));
    p.set_app_dir(&app_copy(&parent, |s| {
        s.replace(
            "secretConfigured: Boolean(process.env.APP_SECRET),",
            &format!("secretConfigured: Boolean(process.env.APP_SECRET),\n        edition: '{edition}',"),
        )
    }));
    let run = p.deploy(&["--release-version", "r2"]);
    assert_ne!(run.code, 0, "{}", run.output());
    assert!(
        run.stderr.contains("is full") && run.stderr.contains(&data),
        "the data root is not named:\n{}",
        run.stderr
    );
    assert!(p.via.sh(&format!("test ! -e {d}/.lock && test ! -e {d}/releases/r2", d = p.deploy_path)).is_ok());
    assert!(
        p.via.docker_ok(&format!("image inspect {}-backend:r2", p.name)).is_err(),
        "the backend of r2 was tagged although it could not be loaded"
    );
    assert_eq!(p.current_release().expect("current"), "r1");
    assert_eq!(p.info()["edition"], serde_json::Value::Null, "r1 does not serve");

    std::fs::remove_file(&filler).expect("freeing space");
    p.deploy(&["--release-version", "r3"]).expect_code(0);
    assert_eq!(p.info()["edition"], edition.as_str());
    drop(p);
    drop(guard);
    target.down().expect("tearing down");
}
