//! The everyday operations (issue 17) on one real deployment over SSH:
//! `logs -f` receives a line written after it started and ends cleanly on
//! Ctrl-C; `exec` passes the command's exit status and output through, and
//! a database console query as the application's role over the socket
//! returns a row (stdin streamed); `stop`/`start` keep the data; `remove`
//! keeps the database volume (a redeploy finds the data) and
//! `remove --purge-data` deletes it only with the project's name typed back.
//!
//! One deployment serves every step (each step builds on the one before:
//! the data written through `exec` is what `remove` must keep), so the file
//! costs two deploys. Uses its own shared `engine` target ([`ENGINE`]).
//! Run: `cargo test -p cultivate-e2e --test ops -- --test-threads=1` (as root).

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cultivate_e2e::deploy::{Project, ProjectOptions, SharedEngine};

/// Name of this file's shared `engine` target.
const ENGINE: &str = "ops-e2e";

/// Every test that takes it (see [`SharedEngine::take`]).
const ENGINE_USERS: &[&str] = &["logs_exec_stop_start_remove_on_one_deployment"];

fn volume_exists(p: &Project, volume: &str) -> bool {
    let out = p.via.docker_ok(&format!("volume ls -q --filter name=^{volume}$")).expect("docker volume ls");
    out.lines().any(|l| l.trim() == volume)
}

fn sql(p: &Project, query: &str) -> String {
    let run = p.run(&["exec", "database", "--user", "apiuser", "--", "psql", "-d", "cultivate", "-Atc", query]);
    run.expect_code(0);
    run.stdout.trim().to_string()
}

/// Spawns stdout and stderr readers that send each line, tagged.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<(bool, String)> {
    let (tx, rx) = mpsc::channel();
    for (is_err, stream) in [
        (false, Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>),
        (true, Box::new(child.stderr.take().expect("stderr"))),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((is_err, line)).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

#[test]
fn logs_exec_stop_start_remove_on_one_deployment() {
    let Some(engine) = SharedEngine::take(ENGINE, ENGINE_USERS) else { return };
    let p = Project::new("ops", 20400, engine.via(), ProjectOptions::default());
    p.deploy(&[]).expect_code(0);
    let volume = format!("{}_db_data", p.name);

    // --- another project pointed at this deploy directory is refused, by
    // name and with the directory it should use, before anything changes.
    let other = Project::new(
        "ops-other",
        20402,
        engine.via(),
        ProjectOptions { deploy_path: Some(p.deploy_path.clone()), ..Default::default() },
    );
    let current = p.current_release().expect("current release");
    let parent = p.deploy_path.trim_end_matches('/').rsplit_once('/').expect("an absolute deploy path").0;
    let releases_before = p.via.sh(&format!("ls {}/releases", p.deploy_path)).expect("ls releases");
    for args in [&["deploy"][..], &["rollback"], &["status"]] {
        let run = other.run(args);
        run.expect_code(2);
        assert!(
            run.stderr.contains(&format!("holds project `{}` (release {current})", p.name)),
            "{args:?}: the refusal does not name the other project:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&format!("deploy_path = \"{}/{}\"", parent, other.name)),
            "{args:?}: no directory of its own is offered:\n{}",
            run.stderr
        );
    }
    assert_eq!(p.current_release().expect("current release"), current, "the refused runs moved current");
    assert_eq!(p.via.sh(&format!("ls {}/releases", p.deploy_path)).expect("ls releases"), releases_before);
    assert!(p.via.sh(&format!("test -e {}/.lock", p.deploy_path)).is_err(), "a refused run left the lock");
    assert!(other.containers("backend", true).is_empty(), "the refused deploy started containers");
    p.run(&["status"]).expect_code(0);

    // --- logs -f: a line written after following began arrives, prefixed;
    // Ctrl-C ends it cleanly.
    let mut child = p.spawn(&["logs", "-f", "--tail", "0", "backend"]);
    let rx = lines_of(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let (is_err, line) = rx.recv_timeout(deadline - Instant::now()).expect("no `following` line within 60s");
        seen.push(line.clone());
        if is_err && line.contains("==> following backend") {
            break;
        }
    }
    let backend = p.containers("backend", false);
    assert_eq!(backend.len(), 1, "{backend:?}");
    // `--tail 0`: only lines written after `docker logs -f` attached are
    // shown, so any marker that arrives proves it. Written until one does
    // (the attach may lag the status line a little).
    let mut found = None;
    for i in 0..60 {
        let marker = format!("ops-follow-marker-{i}");
        p.via
            .docker_ok(&format!("exec {} sh -c 'echo {marker} > /proc/1/fd/1'", backend[0]))
            .expect("writing a line to the backend's stdout");
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok((is_err, line)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            seen.push(line.clone());
            if !is_err && line.contains("ops-follow-marker-") {
                found = Some(line);
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let line = found.unwrap_or_else(|| panic!("no marker line arrived while following:\n{}", seen.join("\n")));
    assert!(line.starts_with("backend | ops-follow-marker-"), "prefixed by the service: {line}");
    let interrupted = Instant::now();
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(kill.is_ok_and(|s| s.success()), "kill -INT");
    let status = child.wait().expect("waiting for logs -f");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends following cleanly: {status}\n{}", seen.join("\n"));
    assert!(interrupted.elapsed() < Duration::from_secs(10), "took {:?} to stop", interrupted.elapsed());

    // --- exec: status and output passed through.
    let run = p.run(&["exec", "backend", "--", "node", "-e", "console.log('from-node'); process.exit(3)"]);
    run.expect_code(3);
    assert_eq!(run.stdout.trim(), "from-node", "{}", run.output());
    // A database console query as the application's role, over the socket.
    assert_eq!(sql(&p, "select 'row-' || 42"), "row-42");
    // stdin streamed to the console.
    let run = p.run_input(
        &["exec", "database", "--user", "apiuser", "--", "psql", "-d", "cultivate", "-At", "-v", "ON_ERROR_STOP=1"],
        b"create table ops_kept(v text);\ninsert into ops_kept values ('kept-' || 'data');\nselect v from ops_kept;\n",
    );
    run.expect_code(0);
    assert!(run.stdout.lines().any(|l| l == "kept-data"), "{}", run.output());
    // An unknown service: a usage error naming it, nothing run.
    let run = p.run(&["exec", "cache", "--", "true"]);
    run.expect_code(2);
    assert!(run.stderr.contains("`cache`") && run.stderr.contains("backend"), "{}", run.output());

    // --- stop, start: containers kept and started again, data kept.
    p.run(&["stop"]).expect_code(0);
    for s in ["database", "backend", "frontend"] {
        assert!(p.containers(s, false).is_empty(), "{s} still running after stop");
        assert!(!p.containers(s, true).is_empty(), "{s}'s container removed by stop");
    }
    // `status` tells, and leaves the stopped stack alone (no "repair").
    let run = p.run(&["status"]);
    run.expect_code(0);
    assert!(run.stdout.contains("stopped with `cultivate stop`"), "{}", run.output());
    assert!(p.containers("backend", false).is_empty(), "status started the stopped stack");
    p.run(&["start"]).expect_code(0);
    assert!(p.get("/").is_ok(), "the frontend answers after start");
    assert_eq!(sql(&p, "select v from ops_kept"), "kept-data");

    // --- remove: the stack, the releases and the images go; the volume stays.
    let run = p.run(&["remove"]);
    run.expect_code(0);
    assert!(run.stderr.contains("kept:") && run.stderr.contains(&volume), "{}", run.output());
    assert!(run.stderr.contains("removed:"), "{}", run.output());
    for s in ["database", "backend", "frontend"] {
        assert!(p.containers(s, true).is_empty(), "{s} container left after remove");
    }
    assert!(volume_exists(&p, &volume), "remove kept the database volume");
    p.via.sh(&format!("test ! -e {0}/releases && test ! -e {0}/current", p.deploy_path)).expect("release dirs removed");
    let images = p.via.docker_ok("image ls --format '{{.Repository}}'").expect("docker image ls");
    assert!(!images.lines().any(|r| r.starts_with(&format!("{}-", p.name))), "project images left:\n{images}");
    p.run(&["status"]).expect_code(0);

    // A redeploy finds the data.
    p.deploy(&[]).expect_code(0);
    assert_eq!(sql(&p, "select v from ops_kept"), "kept-data");

    // --- remove --purge-data: refused unless the name is typed back.
    let run = p.run_input(&["remove", "--purge-data"], b"not-the-name\n");
    run.expect_code(2);
    assert!(run.stderr.contains("nothing was removed"), "{}", run.output());
    assert!(volume_exists(&p, &volume), "a wrong name removed the volume");
    assert_eq!(p.containers("database", false).len(), 1, "a wrong name touched the stack");
    let run = p.run_input(&["remove", "--purge-data"], format!("{}\n", p.name).as_bytes());
    run.expect_code(0);
    assert!(!volume_exists(&p, &volume), "--purge-data with the name typed back keeps the volume:\n{}", run.output());
}
