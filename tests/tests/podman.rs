//! A third party's runtime plugin, for real (issue 14): the out-of-tree
//! Podman plugin (contrib/podman) is built in its own directory with `cargo
//! build --release`, installed with `cultivate plugins install`, and deploys
//! the example to a `bare` target into which Podman and podman-compose are
//! installed from Debian bookworm's packages, with no Docker at all: a good
//! release, a broken one rolled back automatically, `status`, `releases`,
//! `logs`, `rollback`, `exec`, `stop` and `start`, then a one-line backend
//! change that sends only the changed layer (an OCI archive without the
//! layers Podman's store has). No `docker` command runs on the target: there
//! is none, and the log of every run shows each command the plugins ran.
//!
//! Target: `pod-e2e` (bare), ports 20710–20711.

use std::path::{Path, PathBuf};
use std::process::Command;

use cultivate_e2e::deploy::{app_copy, base_image_present, binary, random_hex, run_binary_with, Project};
use cultivate_e2e::deploy::{ProjectOptions, Run, Via};
use cultivate_e2e::prereq::{self, workspace_root};
use cultivate_e2e::testenv::{self, Kind, Target};

/// Debian bookworm's packages: podman 4.3.1, podman-compose 1.0.3, runc,
/// netavark and aardvark-dns.
const PACKAGES: &str = "podman podman-compose runc netavark aardvark-dns";

/// This machine's quirks, set as an administrator would in
/// /etc/containers/containers.conf (docs/plugins.md says why):
/// - runc: crun 1.8 refuses this machine's hybrid cgroup layout ("cgroups in
///   hybrid mode not supported, drop all controllers from cgroupv2");
/// - ulimits no higher than the machine's hard limits: without
///   CAP_SYS_RESOURCE, Podman's default RLIMIT_NOFILE of 1048576 fails
///   ("setrlimit `RLIMIT_NOFILE`: Operation not permitted");
/// - netavark: with CNI and dnsname a container on two networks (the
///   frontend) resolves names of its first network only.
fn containers_conf(nofile: &str) -> String {
    format!(
        "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n\
         [engine]\nruntime = \"runc\"\n[network]\nnetwork_backend = \"netavark\"\n"
    )
}

/// Builds contrib/podman in its own directory, as a third party would.
fn build_plugin() -> PathBuf {
    let dir = workspace_root().join("contrib/podman");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet"])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_MANIFEST_DIR")
        .status()
        .expect("running cargo build in contrib/podman");
    assert!(status.success(), "cargo build --release in contrib/podman failed");
    let lib = dir.join("target/release/libcultivate_plugin_podman.so");
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}

/// `cultivate -c CONFIG ARGS…` with the test's own user data directory (where
/// `plugins install` puts the plugin).
fn run(p: &Project, data: &Path, args: &[&str]) -> Run {
    let mut all: Vec<String> = vec!["-c".into(), p.config.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_binary_with(&binary(), &all, &p.log_dir, p.dir.path(), &[("XDG_DATA_HOME", data)])
}

/// Every command the runs logged (`$ …` lines of the debug log).
fn logged_commands(log_dir: &Path) -> Vec<String> {
    let mut cmds = Vec::new();
    for f in cultivate_e2e::deploy::files_under(log_dir) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for line in text.lines() {
            if let Some((_, cmd)) = line.split_once(" cultivate::cmd: $ ") {
                cmds.push(cmd.to_string());
            }
        }
    }
    cmds
}

#[test]
fn podman_plugin_built_out_of_tree_deploys_rolls_back_and_never_runs_docker() {
    if !(prereq::require(prereq::docker_available(), "this machine's Docker engine (it builds the images)")
        && prereq::require(base_image_present(), "image cultivate/debian:bookworm")
        && testenv::available(Kind::Bare))
    {
        return;
    }
    let lib = build_plugin();
    let target = Target::up("pod-e2e", Kind::Bare).expect("bare target");
    assert!(!target.ssh("command -v docker").expect("ssh").status.success(), "the bare target has docker");
    target
        .ssh_ok(&format!(
            "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
             apt-get install -y -qq --no-install-recommends {PACKAGES} >/dev/null"
        ))
        .expect("installing Podman from Debian's packages on the target");
    let nofile = target.ssh_ok("ulimit -Hn").expect("ulimit");
    let conf = containers_conf(nofile.trim());
    target
        .ssh_ok(&format!("mkdir -p /etc/containers && printf '%s' '{conf}' > /etc/containers/containers.conf"))
        .expect("containers.conf");
    assert!(target.ssh_ok("podman version --format '{{.Client.Version}}'").expect("podman").starts_with("4.3"));

    let options =
        ProjectOptions { deploy_path: Some("/opt/pod-e2e".into()), health_timeout: 240, ..Default::default() };
    let mut p = Project::new("pod", 20710, Via::ssh(&target), options);
    let data = p.dir.path().join("data");

    // Install: checked by loading, copied into the user's plugin directory.
    let installed = run(&p, &data, &["plugins", "install", lib.to_str().unwrap()]);
    installed.expect_code(0);
    let in_dir = data.join("cultivate/plugins/libcultivate_plugin_podman.so");
    assert!(in_dir.is_file(), "{}", installed.output());
    run(&p, &data, &["plugins", "install", lib.to_str().unwrap()]).expect_code(2);

    // What the plugins find on the target: podman wins, Docker is missing.
    let list = run(&p, &data, &["plugins", "list", "--target", &target.ssh_uri(), "--json"]);
    list.expect_code(0);
    let v = list.json();
    let plugin = |name: &str| v["plugins"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap().clone();
    let podman = plugin("podman");
    assert_eq!(podman["origin"], "installed");
    assert_eq!(podman["probe"]["available"], true, "{podman}");
    assert_eq!(podman["probe"]["version"], "4.3.1");
    assert_eq!(podman["probe"]["details"]["mode"], "rootful");
    assert_eq!(podman["probe"]["details"]["compose"], "podman-compose");
    assert_eq!(plugin("docker")["probe"]["available"], false);
    assert_eq!(plugin("docker")["origin"], "bundled");

    // A good release.
    let greeting_a = format!("podman greeting A {}", random_hex(4));
    p.set_env("APP_GREETING", &greeting_a);
    let a = run(&p, &data, &["deploy", "--release-version", "r1"]);
    a.expect_code(0);
    assert!(a.stderr.contains("podman 4.3.1"), "{}", a.output());
    assert_eq!(p.info()["greeting"], greeting_a.as_str());
    p.assert_example_answers();
    let note = format!("note before B {}", random_hex(4));
    p.post_json("/api/notes", &serde_json::json!({ "body": note }).to_string()).expect("POST /api/notes");

    // A broken release: rolled back to r1 automatically, with its diagnostics.
    let marker = format!("pod-broken-{}", random_hex(4));
    let broken = app_copy(p.dir.path(), |_| {
        format!("'use strict';\nconsole.error('{marker}: refusing to start');\nprocess.exit(3);\n")
    });
    p.set_app_dir(&broken);
    p.set_env("APP_GREETING", "podman greeting B");
    let b = run(&p, &data, &["deploy", "--release-version", "r2", "--health-timeout", "45"]);
    b.expect_code(4);
    assert!(b.stderr.contains(&marker), "the backend's log is not in the diagnostics:\n{}", b.output());
    assert!(b.stderr.contains("rolled back to release r1, which is healthy"), "{}", b.output());
    assert_eq!(p.current_release().expect("current"), "r1");
    assert_eq!(p.info()["greeting"], greeting_a.as_str());
    assert!(p.get("/api/notes").expect("notes").contains(&note), "the row written before B is gone");

    // status, releases, logs through the plugin.
    let status = run(&p, &data, &["status"]);
    status.expect_code(0);
    assert!(status.stdout.contains("release r1") && status.stdout.contains("all healthy"), "{}", status.output());
    let releases = run(&p, &data, &["releases"]);
    releases.expect_code(0);
    assert!(releases.stdout.contains("r1") && releases.stdout.contains("r2"), "{}", releases.output());
    let logs = run(&p, &data, &["logs"]);
    logs.expect_code(0);
    assert!(logs.stdout.contains("backend |"), "{}", logs.output());

    // A good third release, then `rollback` back to r1.
    p.set_app_dir(&workspace_root().join("examples/app"));
    let greeting_c = format!("podman greeting C {}", random_hex(4));
    p.set_env("APP_GREETING", &greeting_c);
    run(&p, &data, &["deploy", "--release-version", "r3"]).expect_code(0);
    assert_eq!(p.info()["greeting"], greeting_c.as_str());
    let rb = run(&p, &data, &["rollback"]);
    rb.expect_code(0);
    assert!(rb.stderr.contains("release r1 is current and healthy"), "{}", rb.output());
    assert_eq!(p.info()["greeting"], greeting_a.as_str());

    // The everyday commands: exec, stop (data kept), start (healthy again).
    let exec = run(&p, &data, &["exec", "backend", "--", "node", "-e", "console.log(6 * 7)"]);
    exec.expect_code(0);
    assert_eq!(exec.stdout.trim(), "42", "{}", exec.output());
    run(&p, &data, &["stop"]).expect_code(0);
    assert!(p.get("/api/health").is_err(), "the frontend still answers after stop");
    let started = run(&p, &data, &["start"]);
    started.expect_code(0);
    assert!(started.stderr.contains("all healthy"), "{}", started.output());
    assert_eq!(p.info()["greeting"], greeting_a.as_str());
    assert!(p.get("/api/notes").expect("notes").contains(&note), "the row is gone after stop/start");

    // One backend line changed: only the changed layer crosses the wire, as
    // an OCI archive without the layers the target's store has, and the
    // image ID on the target is the one built here (P20).
    let one_line = p.dir.path().join("one-line");
    std::fs::create_dir_all(&one_line).expect("dir");
    let edited = app_copy(&one_line, |s| s.replacen("'use strict';", "'use strict'; // r4: one line changed", 1));
    p.set_app_dir(&edited);
    let r4 = run(&p, &data, &["--json", "deploy", "--release-version", "r4"]);
    r4.expect_code(0);
    let report = r4.json();
    let transfers = report["transfers"].as_array().expect("transfers in the JSON report");
    let of = |service: &str| {
        transfers
            .iter()
            .find(|t| t["reference"].as_str().is_some_and(|r| r.contains(&format!("-{service}:"))))
            .unwrap_or_else(|| panic!("no transfer of {service}: {report}"))
            .clone()
    };
    let backend = of("backend");
    let (sent, whole) = (backend["bytes_sent"].as_u64().unwrap(), backend["archive_bytes"].as_u64().unwrap());
    eprintln!(
        "podman, one backend line changed: {sent} bytes sent of a {whole}-byte image, {} layers skipped",
        backend["layers_skipped"]
    );
    assert_eq!(backend["already_present"], false, "{backend}");
    assert_eq!(backend["fell_back"], false, "the partial OCI archive did not load: {}", r4.output());
    assert!(backend["layers_skipped"].as_u64().unwrap() > 0, "{backend}");
    assert!(sent > 0 && sent * 100 < whole, "{sent} bytes sent of {whole}: more than the changed layers");
    for unchanged in ["database", "frontend"] {
        assert_eq!(of(unchanged)["already_present"], true, "{}", of(unchanged));
    }
    let reference = format!("{}-backend:r4", p.name);
    let here = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &reference])
        .output()
        .expect("docker image inspect");
    let there =
        target.ssh_ok(&format!("podman image inspect --format '{{{{.Id}}}}' localhost/{reference}")).expect("inspect");
    let there = there.trim();
    assert_eq!(
        String::from_utf8_lossy(&here.stdout).trim(),
        if there.starts_with("sha256:") { there.to_string() } else { format!("sha256:{there}") },
        "the image ID on the target is not the one built here"
    );
    assert_eq!(p.info()["greeting"], greeting_c.as_str());
    assert_eq!(p.current_release().expect("current"), "r4");

    // No docker on the target, and every runtime command went through podman:
    // the only docker words in the logs are the other plugins' probes.
    assert!(!target.ssh("command -v docker").expect("ssh").status.success(), "docker appeared on the target");
    let cmds = logged_commands(&p.log_dir);
    assert!(cmds.iter().any(|c| c.contains("podman-compose -p")), "no podman-compose command logged");
    assert!(cmds.iter().any(|c| c.starts_with("podman load")), "no podman load logged");
    let docker: Vec<&String> = cmds
        .iter()
        .filter(|c| c.split_whitespace().any(|w| w == "docker" || w == "docker-compose"))
        .filter(|c| {
            !(c.starts_with("docker version --format")
                || c.starts_with("docker compose version")
                || c.starts_with("docker-compose version")
                || c.starts_with("sh -c ': docker-compose version --short"))
        })
        .collect();
    assert!(docker.is_empty(), "docker commands other than probes ran: {docker:?}");

    // Remove the plugin: the next run no longer finds it.
    run(&p, &data, &["plugins", "remove", "podman"]).expect_code(0);
    assert!(!in_dir.exists());
    target.ssh_ok("podman rm -af >/dev/null 2>&1; podman volume prune -f >/dev/null 2>&1; true").ok();
    drop(p);
    target.down().expect("tearing down the pod-e2e target");
}
