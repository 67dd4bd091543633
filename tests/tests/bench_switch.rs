//! Figures for docs/performance.md (issue 10): failed requests and the
//! longest gap between two successful responses while a release changes,
//! cultivate's switch against a plain `docker-compose up` of the same change
//! on the same target in the same run, and the deploy's wall time with this
//! version and, when `CULTIVATE_BENCH_BEFORE` names an earlier build's
//! directory (binary and plugins, and its checkout as the stack), with that.
//!
//! Not part of the suite (`#[ignore]`): `scripts/bench-switch.sh` runs it
//! with release builds and writes the table.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cultivate_e2e::deploy::{app_copy, random_hex, run_binary_with, Project, ProjectOptions, Run, Via};
use cultivate_e2e::load::{Load, Report};
use cultivate_e2e::prereq;
use cultivate_e2e::testenv::{Kind, Target};

const RATE: u32 = 25;

/// Runs `bin -c CONFIG args` for `p` (like `Project::run`, another binary).
fn run_with(bin: &Path, p: &Project, args: &[&str]) -> Run {
    let mut all: Vec<String> = vec!["-c".into(), p.config.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_binary_with(bin, &all, &p.log_dir, p.dir.path(), &[])
}

/// Runs `op` under load; returns the load's report and what `op` returned.
fn under_load<T>(p: &Project, op: impl FnOnce() -> T) -> (Report, T) {
    let load = Load::start(
        &p.via.http_host(),
        p.http_port,
        &["/api/health", "/", "/api/info"],
        RATE,
        Some("/api/slow?ms=2000"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = op();
    std::thread::sleep(Duration::from_millis(1500));
    (load.stop(), out)
}

/// `docker-compose` in a release directory of `p` on its target.
fn compose_in(p: &Project, release: &str, args: &str) {
    let cmd = format!("cd {}/releases/{release} && docker-compose -p {} --env-file .env {args}", p.deploy_path, p.name);
    let out = p.via.command(&cmd).stdin(Stdio::null()).output().expect("docker-compose");
    eprintln!("$ {cmd} -> {}", out.status);
}

fn row(case: &str, how: &str, r: &Report, wall: Option<Duration>) -> String {
    format!(
        "| {case} | {how} | {} | {} | {:.0} ms | {}/{} | {} |",
        r.samples.len(),
        r.failures().len(),
        r.longest_gap().as_secs_f64() * 1000.0,
        r.slow_completed(),
        r.slow.len(),
        wall.map(|w| format!("{:.1} s", w.as_secs_f64())).unwrap_or_else(|| "—".into())
    )
}

fn version(run: &Run) -> String {
    run.stderr.lines().find_map(|l| l.split("building release ").nth(1)).unwrap_or("").trim().to_string()
}

fn changed(parent: &Path, edition: &str, title: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(parent).unwrap();
    let app = app_copy(parent, |s| {
        s.replace(
            "secretConfigured: Boolean(process.env.APP_SECRET),",
            &format!("secretConfigured: Boolean(process.env.APP_SECRET),\n        edition: '{edition}',"),
        )
    });
    if let Some(t) = title {
        let page = app.join("frontend/src/index.html");
        let html = std::fs::read_to_string(&page).unwrap();
        std::fs::write(&page, html.replace("<title>cultivate example app</title>", &format!("<title>{t}</title>")))
            .unwrap();
    }
    app
}

#[test]
#[ignore = "benchmark: scripts/bench-switch.sh"]
fn bench_switch_against_compose_up() {
    assert!(prereq::docker_available(), "needs this machine's Docker engine");
    let bin = PathBuf::from(
        std::env::var("CULTIVATE_BENCH_BIN")
            .unwrap_or_else(|_| prereq::workspace_root().join("target/release/cultivate").display().to_string()),
    );
    let target = Target::up("zd-bench", Kind::Engine).expect("engine target");
    let mut rows = Vec::new();

    // This version: each case, then the same kind of change by plain docker-compose.
    let mut p = Project::new("bnew", 20330, Via::ssh(&target), ProjectOptions::default());
    let r0 = run_with(&bin, &p, &["deploy"]);
    assert_eq!(r0.code, 0, "{}", r0.stderr);
    let v0 = version(&r0);

    p.set_app_dir(&changed(&p.dir.path().join("a"), "a", None));
    let (rep, run) = under_load(&p, || run_with(&bin, &p, &["deploy"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let va = version(&run);
    rows.push(row("(a) backend change", "cultivate", &rep, Some(run.elapsed)));
    let (rep, _) = under_load(&p, || compose_in(&p, &v0, "up -d"));
    rows.push(row("(a) backend change", "docker-compose up -d", &rep, None));
    run_with(&bin, &p, &["status"]);

    p.set_app_dir(&changed(&p.dir.path().join("b"), "a", Some("bench b")));
    let (rep, run) = under_load(&p, || run_with(&bin, &p, &["deploy"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let vb = version(&run);
    rows.push(row("(b) frontend static change", "cultivate", &rep, Some(run.elapsed)));
    let (rep, _) = under_load(&p, || {
        let cmd = format!(
            "cd {}/releases/{vb} && FRONTEND_TAG={vb} docker-compose -p {} --env-file .env up -d --no-deps frontend",
            p.deploy_path, p.name
        );
        let _ = p.via.command(&cmd).stdin(Stdio::null()).output();
    });
    rows.push(row("(b) frontend static change", "docker-compose up -d (new frontend image)", &rep, None));
    run_with(&bin, &p, &["status"]);

    let (rep, run) = under_load(&p, || run_with(&bin, &p, &["rollback"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    rows.push(row("(c) rollback", "cultivate rollback", &rep, Some(run.elapsed)));
    // Back to the first release's backend: the same kind of change as the rollback's (a backend).
    let (rep, _) = under_load(&p, || compose_in(&p, &v0, "up -d"));
    rows.push(row("(c) rollback", "docker-compose up -d (an earlier release)", &rep, None));
    run_with(&bin, &p, &["status"]);

    let broken = app_copy(&p.dir.path().join("d"), |_| "process.exit(3);\n".to_string());
    p.set_app_dir(&broken);
    let (rep, run) = under_load(&p, || run_with(&bin, &p, &["deploy", "--health-timeout", "90"]));
    assert_eq!(run.code, 4, "{}", run.stderr);
    let vd = version(&run);
    rows.push(row("(d) failing backend, automatic rollback", "cultivate", &rep, Some(run.elapsed)));
    let (rep, _) = under_load(&p, || {
        compose_in(&p, &vd, "up -d --no-deps backend");
        std::thread::sleep(Duration::from_secs(20));
        compose_in(&p, &va, "up -d --no-deps backend");
    });
    rows.push(row("(d) failing backend", "docker-compose up -d, 20 s, then up -d of the good one", &rep, None));
    drop(p);

    // An earlier build, when given: the same backend change and rollback.
    if let Ok(before) = std::env::var("CULTIVATE_BENCH_BEFORE") {
        let before = PathBuf::from(before);
        let old_bin = before.join("target/release/cultivate");
        let mut q = Project::new("bold", 20340, Via::ssh(&target), ProjectOptions::default());
        let text = std::fs::read_to_string(&q.config).unwrap();
        let stack = prereq::workspace_root().display().to_string();
        q.set_config_text(
            &text
                .replace(&format!("stack_dir = {stack:?}"), &format!("stack_dir = {:?}", before.display().to_string())),
        );
        // The earlier stack with this version's example app (it has /api/slow).
        let app = prereq::workspace_root().join("examples/app");
        let q_app = |q: &mut Project, dir: &Path| {
            let text = std::fs::read_to_string(&q.config).unwrap();
            let line = text.lines().find(|l| l.starts_with("app_dir")).unwrap().to_string();
            q.set_config_text(&text.replace(&line, &format!("app_dir = {:?}", dir.display().to_string())));
        };
        q_app(&mut q, &app);
        let r0 = run_with(&old_bin, &q, &["deploy"]);
        assert_eq!(r0.code, 0, "{}", r0.stderr);
        let dir = q.dir.path().join("a");
        std::fs::create_dir_all(&dir).unwrap();
        let app_a = dir.join("app");
        cultivate_e2e::deploy::copy_tree(&app, &app_a).unwrap();
        let server = app_a.join("backend/server.js");
        let s = std::fs::read_to_string(&server).unwrap();
        std::fs::write(
            &server,
            s.replace(
                "secretConfigured: Boolean(process.env.APP_SECRET),",
                &format!("secretConfigured: Boolean(process.env.APP_SECRET), edition: '{}',", random_hex(3)),
            ),
        )
        .unwrap();
        q_app(&mut q, &app_a);
        let (rep, run) = under_load(&q, || run_with(&old_bin, &q, &["deploy"]));
        assert_eq!(run.code, 0, "{}", run.stderr);
        rows.push(row("(a) backend change", "before this change (whole-stack recreate)", &rep, Some(run.elapsed)));
        let (rep, run) = under_load(&q, || run_with(&old_bin, &q, &["rollback"]));
        assert_eq!(run.code, 0, "{}", run.stderr);
        rows.push(row("(c) rollback", "before this change (whole-stack recreate)", &rep, Some(run.elapsed)));
    }
    target.down().expect("tearing down");

    let mut table = String::from(
        "| case | how | requests | failed | longest gap between successes | slow requests completed | wall time |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(r);
        table.push('\n');
    }
    println!("{table}");
    if let Ok(out) = std::env::var("CULTIVATE_BENCH_OUT") {
        std::fs::write(out, &table).expect("writing the table");
    }
}
