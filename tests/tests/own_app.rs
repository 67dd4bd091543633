//! End-to-end test of deploying an application of one's own (issue 11):
//! `examples/notes` (a vendored dependency, migrations run by the release
//! command, plain static files, health at `/healthz`) copied into a temporary
//! directory outside the checkout that holds only `cultivate.toml`, the
//! secrets file and the application, so the stack built into cultivate is
//! what builds and runs it. Over SSH to an `engine` target:
//!
//! - `init` finds the application and writes a configuration `config check` accepts;
//! - a wrong layout: `config check` and `deploy --dry-run` list every problem, exit 2;
//! - r1: the migration runs once, every `[env]` key and secret reaches the backend,
//!   the static files are served without SPA fallback (404 for a path that is no file);
//! - r2 with a new migration: it runs once more (once per deploy); an
//!   unchanged deploy runs nothing;
//! - r3 with a broken migration: exit 4, the previous release keeps serving
//!   with its data, the command's output is in the diagnostics and the deploy log.
//!
//! Run: `cargo test -p cultivate-e2e --test own_app -- --test-threads=1`
//! (as root; a missing prerequisite fails under CI and skips otherwise).

use std::path::Path;
use std::process::{Command, Stdio};

use cultivate_e2e::deploy::{
    copy_tree, curl, random_hex, run_binary, write_file_mode, Project, ProjectOptions, SharedEngine, Via,
};
use cultivate_e2e::prereq;

/// This file's own engine target (names are machine-wide).
const ENGINE: &str = "app-e2e";
const ENGINE_USERS: &[&str] = &["own_application_with_migrations_env_and_checks"];

fn sha256(value: &str) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(value.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn config_text(p: &Project, app_dir: &str, ssh: &str) -> String {
    format!(
        "target = {target:?}\nproject = {project:?}\napp_dir = {app_dir:?}\ndeploy_path = {deploy:?}\n\
         secrets_file = \"secrets.env\"\n\n{ssh}\n[ports]\nhttp = {http}\nhttps = {https}\n\n\
         [build]\nbase_image = \"cultivate/debian:bookworm\"\n\n[health]\ntimeout = 120\n\n\
         [app]\nhealth_path = \"/healthz\"\nstart_command = \"node src/main.js\"\nbuild_command = \"\"\noutput_dir = \"public\"\nspa_fallback = false\n\n\
         [release]\ncommand = \"node migrate.js\"\n\n\
         [env]\nNOTES_TITLE = \"Team notes: $HOME & more #1\"\nNOTES_REGION = \"eu-west\"\n",
        target = match &p.via {
            Via::Local => "local".to_string(),
            Via::Ssh { uri, .. } => uri.clone(),
        },
        project = p.name,
        deploy = p.deploy_path,
        http = p.http_port,
        https = p.https_port,
    )
}

fn notes(p: &Project) -> serde_json::Value {
    serde_json::from_str(&p.get("/api/notes").expect("GET /api/notes")).expect("JSON from /api/notes")
}

fn runs_of(body: &serde_json::Value, release: &str) -> i64 {
    body["migrationRuns"]
        .as_array()
        .expect("migrationRuns")
        .iter()
        .find(|r| r["release"] == release)
        .and_then(|r| r["n"].as_i64())
        .unwrap_or(0)
}

#[test]
fn own_application_with_migrations_env_and_checks() {
    let Some(engine) = SharedEngine::take(ENGINE, ENGINE_USERS) else { return };
    let p = Project::new("app", 20700, engine.via(), ProjectOptions { health_timeout: 120, ..Default::default() });
    let dir = p.dir.path();
    assert!(!dir.starts_with(prereq::workspace_root()), "the project must be outside the checkout");

    // Only cultivate.toml, the secrets file and the application.
    let app = dir.join("notes");
    copy_tree(&prereq::workspace_root().join("examples/notes"), &app).expect("copying examples/notes");
    let token = format!("tok-{}", random_hex(12));
    let secret = p.secret.clone();
    write_file_mode(&dir.join("secrets.env"), &format!("APP_SECRET={secret}\nNOTES_API_TOKEN={token}\n"), 0o600)
        .expect("secrets file");
    let ssh = std::fs::read_to_string(&p.config)
        .expect("config")
        .split("\n[")
        .find(|s| s.starts_with("ssh]"))
        .map(|s| format!("[{s}\n"))
        .expect("[ssh] of the project's configuration");

    // init finds the application; config check accepts what it wrote.
    let init_path = dir.join("init.toml");
    let target = match &p.via {
        Via::Ssh { uri, .. } => uri.clone(),
        Via::Local => "local".into(),
    };
    let init_arg = init_path.display().to_string();
    let bare = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run_binary(&args, &p.log_dir, dir)
    };
    bare(&["init", &init_arg, "--target", &target]).expect_code(0);
    let written = std::fs::read_to_string(&init_path).expect("init.toml");
    for line in [
        "app_dir = \"notes\"",
        "health_path = \"/healthz\"",
        "start_command = \"node src/main.js\"",
        "build_command = \"\"",
        "output_dir = \"public\"",
        "secrets_file = \"secrets.env\"",
        "[release]\ncommand = \"node migrate.js\"",
    ] {
        assert!(written.contains(line), "init did not write `{line}`:\n{written}");
    }
    let again = bare(&["init", &init_arg]);
    again.expect_code(2);
    assert!(again.stderr.contains("already exists") && again.stderr.contains("--force"), "{}", again.output());
    bare(&["-c", &init_arg, "config", "check"]).expect_code(0);

    // A wrong layout: every problem at once, by setting, exit 2, before anything runs.
    let broken = dir.join("broken");
    copy_tree(&app, &broken).expect("copy");
    std::fs::remove_dir_all(broken.join("backend/node_modules")).expect("rm node_modules");
    std::fs::remove_file(broken.join("frontend/public/index.html")).expect("rm index.html");
    p.set_config_text(&config_text(&p, "broken", &ssh));
    for args in [&["config", "check"][..], &["deploy", "--dry-run"][..]] {
        let r = p.run(args);
        r.expect_code(2);
        assert!(r.stderr.contains("2 problems"), "{}", r.output());
        assert!(r.stderr.contains("dependencies notes-slug are not in"), "{}", r.output());
        assert!(
            r.stderr.contains("app.output_dir:") && r.stderr.contains("public/index.html is missing"),
            "{}",
            r.output()
        );
    }
    assert!(p.containers("backend", true).is_empty(), "a failed check started nothing");

    // r1.
    p.set_config_text(&config_text(&p, "notes", &ssh));
    let check = p.run(&["config", "check"]);
    check.expect_code(0);
    assert!(check.stdout.contains("the stack built into cultivate"), "{}", check.output());
    let plan = p.deploy(&["--dry-run", "--release-version", "r1"]);
    plan.expect_code(0);
    assert!(plan.output().contains("use the stack built into cultivate"), "{}", plan.output());
    assert!(plan.output().contains("run the release command `node migrate.js` once"), "{}", plan.output());
    let r1 = p.deploy(&["--release-version", "r1", "-v"]);
    r1.expect_code(0);
    let body = notes(&p);
    assert_eq!(body["title"], "Team notes: $HOME & more #1", "{body}");
    assert_eq!(runs_of(&body, "r1"), 1, "{body}");
    p.post_json("/api/notes", "{\"title\":\"Written by r1\"}").expect("POST a note");
    // Static files served; no SPA fallback: a path that is no file is a 404.
    assert!(p.get("/").expect("GET /").contains("<title>Notes</title>"));
    let status = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &p.url("/no/such/page")]).expect("curl");
    assert_eq!(status, "404", "app.spa_fallback = false");
    // The frontend's /api/health reaches the app's own health route (app.health_path = /healthz).
    let health = p.get("/api/health").expect("GET /api/health through nginx");
    assert!(health.contains("\"ok\":true"), "{health}");

    // Every [env] key and secret reaches the backend.
    let cfg: serde_json::Value =
        serde_json::from_str(&p.get("/api/config?secret=APP_SECRET&secret=NOTES_API_TOKEN").expect("GET /api/config"))
            .expect("JSON");
    assert_eq!(cfg["env"]["NOTES_REGION"], "eu-west", "{cfg}");
    assert_eq!(cfg["env"]["NOTES_TITLE"], "Team notes: $HOME & more #1", "{cfg}");
    assert_eq!(cfg["secrets"]["APP_SECRET"], sha256(&secret), "{cfg}");
    assert_eq!(cfg["secrets"]["NOTES_API_TOKEN"], sha256(&token), "{cfg}");
    // By name only in the compose file; the values only in the 0600 .env.
    let compose = p.via.sh(&format!("cat {}/releases/r1/docker-compose.yml", p.deploy_path)).expect("compose");
    assert!(compose.contains("NOTES_API_TOKEN: ${NOTES_API_TOKEN}") && !compose.contains(&token), "{compose}");
    let mode = p.via.sh(&format!("stat -c %a {}/releases/r1/.env", p.deploy_path)).expect("stat");
    assert_eq!(mode.trim(), "600");
    let log = p.via.sh(&format!("cat {}/logs/deploy-r1.log", p.deploy_path)).expect("deploy log");
    assert!(log.contains("release command: migrate: applying 001_notes.sql"), "{log}");
    assert!(!log.contains(&token) && !log.contains(&secret), "a secret in the deploy log");

    // r2: a new migration; it runs once for this deploy. An unchanged deploy runs nothing.
    std::fs::write(
        app.join("backend/migrations/002_pinned.sql"),
        "ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false;\n",
    )
    .expect("migration 002");
    p.deploy(&["--release-version", "r2"]).expect_code(0);
    let body = notes(&p);
    assert_eq!((runs_of(&body, "r1"), runs_of(&body, "r2")), (1, 1), "{body}");
    let same = p.deploy(&["--release-version", "r2b"]);
    same.expect_code(0);
    assert!(same.output().contains("nothing changed"), "{}", same.output());
    assert_eq!(runs_of(&notes(&p), "r2b"), 0);

    // r3: a broken migration fails the deploy before any traffic moves.
    std::fs::write(app.join("backend/migrations/003_broken.sql"), "ALTER TABLE no_such_table ADD COLUMN x int;\n")
        .expect("migration 003");
    let backend_before = p.containers("backend", false);
    let r3 = p.deploy(&["--release-version", "r3"]);
    // 4: the deploy failed and the previous release is the one serving, checked healthy.
    r3.expect_code(4);
    let out = r3.output();
    assert!(out.contains("the release command `node migrate.js` failed (exit code 1)"), "{out}");
    assert!(out.contains("migrate: FAILED: 003_broken.sql"), "the command's output is in the diagnostics: {out}");
    assert!(out.contains("rolled back to release r2"), "{out}");
    assert_eq!(p.current_release().expect("current"), "r2");
    assert_eq!(p.containers("backend", false), backend_before, "the serving backend was never touched");
    let body = notes(&p);
    assert_eq!(runs_of(&body, "r3"), 0, "the failed migration's transaction was rolled back: {body}");
    assert!(body["notes"].as_array().expect("notes").iter().any(|n| n["title"] == "Written by r1"), "{body}");
    let log = p.via.sh(&format!("cat {}/logs/deploy-r3.log", p.deploy_path)).expect("deploy log r3");
    assert!(log.contains("migrate: FAILED: 003_broken.sql"), "{log}");
    assert!(p.containers("release", true).is_empty(), "the one-off container was removed");
    assert!(!Path::new(&dir.join("docker")).exists() && !dir.join("compose").exists());
}
