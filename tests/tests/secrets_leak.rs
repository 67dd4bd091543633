//! End-to-end leak test (issue 16, P27): with a distinctive secret in the
//! secrets file, every command that can see it — `deploy`, a failing deploy
//! with its automatic rollback, `rollback`, `status`, `releases`, `logs`,
//! `certs check`, `lock status` — at default verbosity, `-v`, `-vv` and
//! `--json`; then the secret is looked for in every output, in the local log
//! directory (which must be 0700 with 0600 files), everywhere on the target
//! but the releases' `.env` files (0600), in the containers' logs, and in every
//! layer of every deployed image.
//!
//! Run: `cargo test -p cultivate-e2e --test secrets_leak -- --test-threads 2`
//! (as root; a missing prerequisite fails under CI and skips otherwise).

use std::os::unix::fs::PermissionsExt;

use cultivate_e2e::deploy::{
    app_copy, command_output_contains, files_under, Project, ProjectOptions, Run, SharedEngine,
};
use cultivate_e2e::stack::openssl_valid_cert;

/// This file's own shared engine target (names are machine-wide).
const ENGINE: &str = "leak-e2e";

/// Every test here that takes the shared engine target.
const ENGINE_USERS: &[&str] = &["no_command_leaks_the_secret_at_any_verbosity"];

const SERVICES: [&str; 3] = ["database", "backend", "frontend"];

/// The verbosities every read-only command runs at.
const LEVELS: [&[&str]; 4] = [&[], &["-v"], &["-vv"], &["--json"]];

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn with(level: &[&str], args: &[&str]) -> Vec<String> {
    args.iter().chain(level.iter()).map(|s| s.to_string()).collect()
}

fn run(p: &Project, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.run(&args)
}

#[test]
fn no_command_leaks_the_secret_at_any_verbosity() {
    let Some(engine) = SharedEngine::take(ENGINE, ENGINE_USERS) else { return };
    let mut p = Project::new("leak", 20300, engine.via(), ProjectOptions { health_timeout: 120, ..Default::default() });
    let secret = p.secret.clone();
    let needle = secret.as_bytes();
    let mut runs: Vec<Run> = Vec::new();

    // Deploys are slow (build, transfer, health), so each verbosity runs once
    // across them rather than four times each: r1 at -vv, the failing r2 with
    // its automatic rollback at -v, r3 at default verbosity with --json.
    let r1 = p.deploy(&["--release-version", "r1", "-vv"]);
    r1.expect_code(0);
    runs.push(r1);
    let good_app = p.options.app_dir.clone();
    let broken = app_copy(p.dir.path(), |_| {
        "'use strict';\nconsole.error('leak-e2e: refusing to start');\nprocess.exit(3);\n".to_string()
    });
    p.set_app_dir(&broken);
    let r2 = p.deploy(&["--release-version", "r2", "--health-timeout", "25", "-v"]);
    r2.expect_code(4);
    assert!(r2.stderr.contains("rolled back to release r1"), "{}", r2.output());
    runs.push(r2);
    p.set_app_dir(&good_app);
    // Another greeting, so r3 is a release of its own (not "nothing changed").
    p.set_env("APP_GREETING", "leak-e2e r3");
    let r3 = p.deploy(&["--release-version", "r3", "--json"]);
    r3.expect_code(0);
    runs.push(r3);

    // Rollbacks alternate between r1 and r3, each a real restart and health check.
    for (i, level) in LEVELS.iter().enumerate() {
        let to = if i % 2 == 0 { "r1" } else { "r3" };
        let rb = run(&p, &with(level, &["rollback", "--to", to]));
        rb.expect_code(0);
        runs.push(rb);
    }

    // The read-only commands, at every verbosity.
    let cert = openssl_valid_cert();
    let cert_path = p.dir.path().join("fullchain.pem");
    let key_path = p.dir.path().join("privkey.pem");
    std::fs::write(&cert_path, &cert.cert).expect("cert");
    std::fs::write(&key_path, &cert.key).expect("key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let (cert_arg, key_arg) = (cert_path.display().to_string(), key_path.display().to_string());
    for level in LEVELS {
        for args in [
            vec!["status"],
            vec!["releases"],
            vec!["logs", "--tail", "50"],
            vec!["certs", "check", "--cert", &cert_arg, "--key", &key_arg],
            vec!["lock", "status"],
        ] {
            let r = run(&p, &with(level, &args));
            r.expect_code(0);
            runs.push(r);
        }
    }

    // The secret is where it belongs: in the target's .env, mode 0600, and the
    // backend runs with it (so every check below could have found it).
    let env = p.via.sh(&format!("cat {}/releases/r1/.env", p.deploy_path)).expect(".env of r1");
    assert!(env.contains(&format!("APP_SECRET={secret}")), "the secret is not in the target's .env");

    // No output of any command.
    for r in &runs {
        assert!(!r.stdout.contains(&secret), "secret in stdout of `cultivate {}`:\n{}", r.args.join(" "), r.output());
        assert!(!r.stderr.contains(&secret), "secret in stderr of `cultivate {}`:\n{}", r.args.join(" "), r.output());
    }
    // -vv shows commands, but not the output that carries the environment.
    let vv: Vec<&Run> = runs.iter().filter(|r| r.args.iter().any(|a| a == "-vv")).collect();
    assert!(
        vv.iter().any(|r| r.stderr.contains("output not logged")),
        "no -vv run said it kept an environment-bearing output out of the log"
    );

    // The local log directory: private, and without the secret.
    assert_eq!(mode(&p.log_dir), 0o700, "the local log directory is not private");
    let local_logs = files_under(&p.log_dir);
    assert!(!local_logs.is_empty(), "no log file in CULTIVATE_LOG_DIR");
    for f in &local_logs {
        assert_eq!(mode(f), 0o600, "{} is not private", f.display());
        let data = std::fs::read(f).expect("log file");
        assert!(!data.windows(needle.len()).any(|w| w == needle), "secret in {}", f.display());
    }

    // The target: only the releases' .env files hold it, each 0600; the
    // deploy logs are private.
    let holders = p.via.sh(&format!("grep -rlF -- {secret} {} || true", p.deploy_path)).expect("grep on the target");
    let holders: Vec<&str> = holders.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!holders.is_empty(), "grep found no .env: the search cannot see the secret");
    for h in &holders {
        assert!(h.ends_with("/.env") && h.contains("/releases/"), "secret in {h} on the target");
        assert_eq!(p.via.sh(&format!("stat -c %a {h}")).expect("stat").trim(), "600", "{h}");
    }
    let logs_dir = format!("{}/logs", p.deploy_path);
    assert_eq!(p.via.sh(&format!("stat -c %a {logs_dir}")).expect("stat logs").trim(), "700");
    let modes = p.via.sh(&format!("stat -c '%a %n' {logs_dir}/*.log")).expect("stat deploy logs");
    assert!(!modes.trim().is_empty(), "no deploy log on the target");
    for line in modes.lines() {
        assert!(line.starts_with("600 "), "deploy log not private: {line}");
    }
    let container_logs = p
        .via
        .sh(&format!(
            "docker ps -aq --filter label=com.docker.compose.project={} | xargs -r -n1 docker logs 2>&1",
            p.name
        ))
        .expect("container logs");
    assert!(!container_logs.contains(&secret), "secret in a container's log");

    // No image layer, on the target or here.
    let refs: Vec<String> = ["r1", "r2", "r3"]
        .iter()
        .flat_map(|v| SERVICES.iter().map(move |s| (v, s)))
        .map(|(v, s)| format!("{}-{s}:{v}", p.name))
        .collect();
    let present = p.via.docker_ok("image ls --format '{{.Repository}}:{{.Tag}}'").expect("images on the target");
    let on_target: Vec<&String> = refs.iter().filter(|r| present.lines().any(|l| l.trim() == r.as_str())).collect();
    // r3 changed only the configuration: it runs r1's images, which keep r1's
    // tags (no tags of its own); r2's backend stays until it is pruned.
    let every_service = SERVICES.iter().all(|s| on_target.iter().any(|r| r.starts_with(&format!("{}-{s}:", p.name))));
    assert!(every_service, "expected an image of every service on the target, found {on_target:?}");
    let list: Vec<&str> = on_target.iter().map(|s| s.as_str()).collect();
    assert!(
        !command_output_contains(p.via.docker(&format!("save {}", list.join(" "))), needle)
            .expect("docker save on the target"),
        "secret in an image layer on the target"
    );
    let mut save_here = std::process::Command::new("docker");
    save_here.arg("save").args(refs.iter().filter(|r| {
        std::process::Command::new("docker")
            .args(["image", "inspect", r.as_str()])
            .output()
            .is_ok_and(|o| o.status.success())
    }));
    assert!(!command_output_contains(save_here, needle).expect("docker save here"), "secret in an image layer here");

    // Anyone upgrading: an older log file with the secret in clear is found by
    // the next run (warned once), tightened, and removed by --purge-local.
    let old = p.log_dir.join("cultivate.2020-01-01.log");
    std::fs::write(&old, format!("2020-01-01T00:00:00Z DEBUG   | \"APP_SECRET={secret}\"\n")).expect("old log");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod old log");
    let warned = p.run(&["status"]);
    warned.expect_code(0);
    assert_eq!(warned.stderr.matches("--purge-local").count(), 1, "{}", warned.output());
    assert!(warned.stderr.contains("cultivate.2020-01-01.log"), "{}", warned.output());
    assert!(!warned.stderr.contains(&secret));
    assert_eq!(mode(&old), 0o600, "the older log file was not tightened");
    let purge = p.run(&["logs", "--purge-local"]);
    purge.expect_code(0);
    assert!(!old.exists(), "--purge-local left {}", old.display());
    let after = p.run(&["status"]);
    after.expect_code(0);
    assert!(!after.stderr.contains("--purge-local"), "warned again after purging:\n{}", after.output());
}
