//! Harness for the end-to-end tests of `cultivate deploy` (tests/tests/deploy.rs):
//! the real binary, a temporary configuration per test, a shared `engine`
//! target, and cleanup of what a test's project left on a target.
//!
//! Each [`Project`] owns a temporary directory holding its `cultivate.toml`
//! (own compose project, own ports, own deploy path), its secrets file (mode
//! 0600, with a random secret), and the `CULTIVATE_LOG_DIR` of every run.
//! Dropping it removes the project's containers, volumes and networks from
//! the target (and this machine's image tags of the project).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::prereq;
use crate::testenv::{self, Kind, Target};

/// Path of the `cultivate` binary, built (with the plugins it loads from its
/// own directory) the first time a test process asks for it when it is
/// missing or older than a source it is made of (the built-in stack's
/// Dockerfiles and compose file are compiled into it): a stale binary would
/// test yesterday's code.
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = prereq::workspace_root();
            let bin = root.join("target/debug/cultivate");
            let plugins = ["local", "ssh", "docker", "compose", "finch"];
            let libs: Vec<PathBuf> =
                plugins.iter().map(|p| root.join(format!("target/debug/libcultivate_plugin_{p}.so"))).collect();
            let oldest = std::iter::once(&bin)
                .chain(&libs)
                .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .collect::<Option<Vec<_>>>()
                .and_then(|times| times.into_iter().min());
            let sources = ["host", "plugins", "plugin-api", "compose", "docker", "Cargo.lock"];
            let fresh = oldest
                .is_some_and(|built| sources.iter().all(|s| newest_mtime(&root.join(s)).is_none_or(|t| t <= built)));
            if fresh {
                return Ok(bin);
            }
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(&root).args(["build", "--quiet", "-p", "cultivate"]);
            for p in plugins {
                cmd.args(["-p", &format!("cultivate-plugin-{p}")]);
            }
            let status = cmd.status().map_err(|e| format!("running cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of cultivate and its plugins failed ({status})"));
            }
            Ok(bin)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The newest modification time of a file under `path` (itself if a file).
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "target" && e.file_name() != "node_modules")
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// Random hex (from /dev/urandom), `bytes` bytes long.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// One run of the binary.
#[derive(Debug, Clone)]
pub struct Run {
    /// The arguments, for messages.
    pub args: Vec<String>,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    /// Both streams, for assertions and messages.
    pub fn output(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr)
    }

    /// Panics with the output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`cultivate {}` exited {} (expected {code}) after {:.1}s\n{}",
            self.args.join(" "),
            self.code,
            self.elapsed.as_secs_f64(),
            self.output()
        );
        self
    }

    /// The commands the run started on the target, counted in its `-v`
    /// log as `scripts/measure-round-trips.sh` counts them: every `exit N
    /// in` (a collected command), `put` (a file written) and `< (stream)`.
    /// A command answered from memory, or inside a batch, is not one.
    pub fn target_commands(&self) -> Vec<String> {
        self.stderr
            .lines()
            .map(strip_ansi)
            .filter(|l| {
                let rest = l.split_once(" DEBUG ").map(|(_, r)| r.trim_start()).unwrap_or("");
                let exit = rest.strip_prefix("exit ").is_some_and(|r| {
                    let mut w = r.split(' ');
                    w.next().is_some_and(|n| n.parse::<i32>().is_ok()) && w.next() == Some("in")
                });
                exit || rest.starts_with("put ") || l.contains("< (stream)")
            })
            .collect()
    }

    /// stdout as JSON (with `--json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout of `cultivate {}` is not JSON: {e}\n{}", self.args.join(" "), self.output())
        })
    }
}

/// How a test reaches its target.
#[derive(Debug, Clone)]
pub enum Via {
    /// This machine's engine, local transport.
    Local,
    /// A target over SSH.
    Ssh {
        uri: String,
        identity: PathBuf,
        known_hosts: PathBuf,
        /// `DOCKER_HOST` reaching the target's engine from this machine, when it can.
        docker_host_here: Option<String>,
        /// Runs a shell command on the target.
        target_name: String,
        ssh_options: Vec<String>,
        user_host: String,
    },
}

impl Via {
    /// Over SSH to `target`.
    pub fn ssh(target: &Target) -> Via {
        // An engine target's dockerd listens on a socket on this machine.
        let docker_host_here = match target.kind {
            Kind::Engine => target.docker_host.clone(),
            // The stand-in Mac's engine socket, seen from this machine: the
            // tests look at its containers without any command reaching the
            // target (only finch may drive the engine there).
            Kind::Mac => Some(format!("unix://{}", target.dir.join("root/run/docker.sock").display())),
            _ => None,
        };
        Via::Ssh {
            uri: target.ssh_uri(),
            identity: target.identity.clone(),
            known_hosts: target.known_hosts.clone(),
            docker_host_here,
            target_name: target.name.clone(),
            ssh_options: target.ssh_options(),
            user_host: format!("{}@{}", target.user, target.address),
        }
    }

    /// The host a browser would use for the published ports.
    pub fn http_host(&self) -> String {
        match self {
            Via::Local => "127.0.0.1".into(),
            Via::Ssh { user_host, .. } => user_host.rsplit('@').next().unwrap_or_default().to_string(),
        }
    }

    /// A shell command on the target (this machine for [`Via::Local`]).
    pub fn command(&self, cmd: &str) -> Command {
        match self {
            Via::Local => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(cmd);
                c
            }
            Via::Ssh { ssh_options, user_host, .. } => {
                let mut c = Command::new("ssh");
                c.args(ssh_options).arg(user_host).arg("--").arg(cmd);
                c
            }
        }
    }

    /// Runs `cmd` on the target; fails unless it exits 0; returns stdout.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        let out = self.command(cmd).stdin(Stdio::null()).output().with_context(|| format!("running `{cmd}`"))?;
        if !out.status.success() {
            bail!(
                "`{cmd}` on the target failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Bytes of `cmd`'s stdout on the target.
    pub fn sh_bytes(&self, cmd: &str) -> Result<Vec<u8>> {
        let out = self.command(cmd).stdin(Stdio::null()).output().with_context(|| format!("running `{cmd}`"))?;
        if !out.status.success() {
            bail!("`{cmd}` on the target failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    }

    /// A `docker` command against the target's engine, run on this machine
    /// when the engine's socket is reachable here (fast), else over SSH.
    pub fn docker(&self, args: &str) -> Command {
        match self {
            Via::Ssh { docker_host_here: Some(h), .. } => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("docker {args}")).env("DOCKER_HOST", h);
                c
            }
            _ => self.command(&format!("docker {args}")),
        }
    }

    /// Runs [`Via::docker`]; fails unless it exits 0; returns stdout.
    pub fn docker_ok(&self, args: &str) -> Result<String> {
        let out = self.docker(args).stdin(Stdio::null()).output().with_context(|| format!("running docker {args}"))?;
        if !out.status.success() {
            bail!("`docker {args}` on the target failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// What a test's configuration says besides the defaults of [`Project::new`].
#[derive(Debug, Clone)]
pub struct ProjectOptions {
    /// Application directory (default: the repository's examples/app).
    pub app_dir: PathBuf,
    /// `[env]` values.
    pub env: Vec<(String, String)>,
    /// Deploy path on the target (default: DIR/deploy in the test's temp dir,
    /// which an `engine` target shares with this machine). Empty: none in the
    /// configuration (the target's default; set [`Project::deploy_path`] to it).
    pub deploy_path: Option<String>,
    /// `health.timeout`.
    pub health_timeout: u64,
    /// `health.drain_timeout`, when not the default.
    pub drain_timeout: Option<u64>,
    /// `transfer.compression`; `None`: the tool's default (compressed). The
    /// default here is `none`: on a target one veth away compressing only
    /// costs CPU, and the suite does dozens of first deploys of ~900 MB on a
    /// 2-core machine; the files about transfer ask for the default.
    pub compression: Option<&'static str>,
}

impl Default for ProjectOptions {
    fn default() -> Self {
        ProjectOptions {
            app_dir: prereq::workspace_root().join("examples/app"),
            env: vec![("APP_GREETING".into(), "Hello from the e2e tests".into())],
            deploy_path: None,
            health_timeout: 240,
            drain_timeout: None,
            compression: Some("none"),
        }
    }
}

/// A test's own deployment: compose project, ports, deploy path, config,
/// secret and log directory.
pub struct Project {
    /// Compose project name and image prefix.
    pub name: String,
    pub http_port: u16,
    pub https_port: u16,
    pub via: Via,
    /// The temporary directory (config, secrets, logs).
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `CULTIVATE_LOG_DIR` of every run.
    pub log_dir: PathBuf,
    /// The value of `APP_SECRET` in the secrets file.
    pub secret: String,
    pub deploy_path: String,
    pub options: ProjectOptions,
}

impl Project {
    /// A project named `e2e-SHORT-PID` publishing `http_port` and `http_port + 1`.
    pub fn new(short: &str, http_port: u16, via: Via, options: ProjectOptions) -> Project {
        let dir = tempfile::Builder::new().prefix(&format!("cultivate-e2e-{short}-")).tempdir().expect("temp dir");
        let name = format!("e2e-{short}-{}", std::process::id());
        let secret = format!("e2e-secret-{}", random_hex(16));
        let log_dir = dir.path().join("logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let deploy_path =
            options.deploy_path.clone().unwrap_or_else(|| dir.path().join("deploy").display().to_string());
        let p = Project {
            name,
            http_port,
            https_port: http_port + 1,
            via,
            config: dir.path().join("cultivate.toml"),
            log_dir,
            secret,
            deploy_path,
            options,
            dir,
        };
        p.write_secrets();
        p.write_config();
        p
    }

    fn write_secrets(&self) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("secrets.env");
        std::fs::write(&path, format!("# test secret\nAPP_SECRET={}\n", self.secret)).expect("secrets file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    }

    /// Replaces `cultivate.toml` with `text`.
    pub fn set_config_text(&self, text: &str) {
        std::fs::write(&self.config, text).expect("writing cultivate.toml");
    }

    /// (Re)writes `cultivate.toml` from the current options.
    pub fn write_config(&self) {
        let root = prereq::workspace_root();
        let mut text = String::new();
        let target = match &self.via {
            Via::Local => "local".to_string(),
            Via::Ssh { uri, .. } => uri.clone(),
        };
        text.push_str(&format!("target = {target:?}\n"));
        text.push_str(&format!("project = {:?}\n", self.name));
        text.push_str(&format!("app_dir = {:?}\n", self.options.app_dir.display().to_string()));
        text.push_str(&format!("stack_dir = {:?}\n", root.display().to_string()));
        if !self.options.deploy_path.as_deref().is_some_and(str::is_empty) {
            text.push_str(&format!("deploy_path = {:?}\n", self.deploy_path));
        }
        text.push_str("secrets_file = \"secrets.env\"\n");
        if let Via::Ssh { identity, known_hosts, .. } = &self.via {
            text.push_str(&format!(
                "\n[ssh]\nidentity = {:?}\nknown_hosts = {:?}\n",
                identity.display().to_string(),
                known_hosts.display().to_string()
            ));
        }
        text.push_str(&format!("\n[ports]\nhttp = {}\nhttps = {}\n", self.http_port, self.https_port));
        text.push_str("\n[build]\nbase_image = \"cultivate/debian:bookworm\"\n");
        if let Some(c) = self.options.compression {
            text.push_str(&format!("\n[transfer]\ncompression = {c:?}\n"));
        }
        text.push_str(&format!("\n[health]\ntimeout = {}\n", self.options.health_timeout));
        if let Some(d) = self.options.drain_timeout {
            text.push_str(&format!("drain_timeout = {d}\n"));
        }
        text.push_str("\n[env]\n");
        for (k, v) in &self.options.env {
            text.push_str(&format!("{k} = {v:?}\n"));
        }
        std::fs::write(&self.config, text).expect("writing cultivate.toml");
    }

    /// Sets one `[env]` value and rewrites the configuration.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.options.env.retain(|(k, _)| k != key);
        self.options.env.push((key.into(), value.into()));
        self.write_config();
    }

    /// Points the configuration at another application directory.
    pub fn set_app_dir(&mut self, dir: &Path) {
        self.options.app_dir = dir.to_path_buf();
        self.write_config();
    }

    /// Given the `status --json` run after a fault (whose repair the caller
    /// judges), waits while it is not healthy only because containers it
    /// left running are still `starting` (not yet judged: on a machine
    /// loaded by the other e2e files the engine's checks of the Node backend
    /// can run over their 5 s timeout for minutes). At most 2 minutes, a
    /// `status` every 3 s; each of them must repair nothing. Returns the last.
    pub fn status_after_starting(&self, first: Run, what: &str) -> Run {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut status = first;
        while status.json()["healthy"] != true && only_starting(&status.json()) && Instant::now() < deadline {
            eprintln!("{}: waiting for a starting container:\n{}", what.lines().next().unwrap_or(""), status.stdout);
            std::thread::sleep(Duration::from_secs(3));
            status = self.run(&["status", "--json"]);
            assert_eq!(status.code, 0, "{what}: status failed\n{}", status.output());
            assert_eq!(
                status.json()["repaired"],
                serde_json::json!([]),
                "{what}: a later status repaired\n{}",
                status.output()
            );
        }
        status
    }

    /// Runs `cultivate -c CONFIG ARGS...` with this project's log directory
    /// and without any other `CULTIVATE_*` variable of the test's environment.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = vec!["-c".into(), self.config.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        run_binary(&all, &self.log_dir, self.dir.path())
    }

    /// [`Project::run`] with `input` on stdin.
    pub fn run_input(&self, args: &[&str], input: &[u8]) -> Run {
        let mut all: Vec<String> = vec!["-c".into(), self.config.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        run_binary_input(&binary(), &all, &self.log_dir, self.dir.path(), &[], Some(input))
    }

    /// Starts `cultivate -c CONFIG ARGS...` without waiting (see [`spawn_binary`]).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut all: Vec<String> = vec!["-c".into(), self.config.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        spawn_binary(&all, &self.log_dir, self.dir.path())
    }

    /// `cultivate deploy ARGS...`.
    pub fn deploy(&self, args: &[&str]) -> Run {
        let mut all = vec!["deploy"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `http://HOST:PORT/PATH` of the deployed frontend.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.via.http_host(), self.http_port)
    }

    /// GET through the frontend with curl; returns the body (fails on HTTP errors).
    pub fn get(&self, path: &str) -> Result<String> {
        curl(&["-fsS", "-m", "20", &self.url(path)])
    }

    /// `GET /api/info` through the frontend, as JSON.
    pub fn info(&self) -> serde_json::Value {
        let body = self.get("/api/info").unwrap_or_else(|e| panic!("GET /api/info: {e:#}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/info is not JSON ({e}): {body}"))
    }

    /// The example application answers through the frontend: its page, and
    /// a backend that reaches the database through the socket.
    pub fn assert_example_answers(&self) {
        let page = self.get("/").unwrap_or_else(|e| panic!("GET / on {}: {e:#}", self.url("/")));
        assert!(page.contains("cultivate example app"), "the frontend did not serve the example's page:\n{page}");
        let health = self.get("/api/health").unwrap_or_else(|e| panic!("GET /api/health: {e:#}"));
        let v: serde_json::Value = serde_json::from_str(&health).expect("health JSON");
        assert_eq!(v["status"], "ok", "{health}");
        assert_eq!(v["database"], "ok", "the backend did not reach the database through the socket: {health}");
    }

    /// POST JSON through the frontend.
    pub fn post_json(&self, path: &str, body: &str) -> Result<String> {
        curl(&[
            "-fsS",
            "-m",
            "20",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &self.url(path),
        ])
    }

    /// IDs of the project's containers of `service` on the target: running
    /// ones (and restarting ones), or all of them with `all`.
    pub fn containers(&self, service: &str, all: bool) -> Vec<String> {
        let out = self
            .via
            .docker_ok(&format!(
                "ps -q{} --filter label=com.docker.compose.project={} --filter label=com.docker.compose.service={service}",
                if all { "a" } else { "" },
                self.name
            ))
            .expect("docker ps on the target");
        out.split_whitespace().map(str::to_string).collect()
    }

    /// The release `current` names on the target.
    pub fn current_release(&self) -> Result<String> {
        let link = self.via.sh(&format!("readlink {}/current", self.deploy_path))?;
        Ok(link.trim().rsplit('/').next().unwrap_or_default().to_string())
    }

    /// Removes the project's containers, networks and volumes from the target
    /// and this machine's tags of its images.
    pub fn cleanup(&self) {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let script = format!(
            "docker ps -aq --filter {label} | xargs -r docker rm -f -v >/dev/null 2>&1; \
             docker network ls -q --filter {label} | xargs -r docker network rm >/dev/null 2>&1; \
             docker volume ls -q --filter {label} | xargs -r docker volume rm >/dev/null 2>&1; \
             docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^{name}-' | xargs -r docker rmi >/dev/null 2>&1; true",
            name = self.name
        );
        let on_target = match &self.via {
            Via::Ssh { docker_host_here: Some(h), .. } => {
                Command::new("sh").arg("-c").arg(&script).env("DOCKER_HOST", h).stdin(Stdio::null()).output()
            }
            via => via.command(&script).stdin(Stdio::null()).output(),
        };
        if let Err(e) = on_target {
            eprintln!("cleanup of {} on the target: {e}", self.name);
        }
        if !matches!(self.via, Via::Local) {
            // this machine's tags of the project's images (built here)
            let local = format!(
                "docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^{}-' | xargs -r docker rmi >/dev/null 2>&1; true",
                self.name
            );
            let _ = Command::new("sh").arg("-c").arg(local).stdin(Stdio::null()).output();
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs the binary with `args`, `CULTIVATE_LOG_DIR=log_dir`, in `cwd`, with
/// no other `CULTIVATE_*` variable and no `RUST_LOG`.
pub fn run_binary(args: &[String], log_dir: &Path, cwd: &Path) -> Run {
    run_binary_with(&binary(), args, log_dir, cwd, &[])
}

/// [`run_binary`] with another binary and extra environment variables
/// (`CULTIVATE_PLUGIN_PATH`, say), which are set after the test's own
/// `CULTIVATE_*` variables are removed.
pub fn run_binary_with(bin: &Path, args: &[String], log_dir: &Path, cwd: &Path, env: &[(&str, &Path)]) -> Run {
    run_binary_input(bin, args, log_dir, cwd, env, None)
}

/// [`run_binary_with`] with `input` on the binary's stdin (closed after it).
pub fn run_binary_input(
    bin: &Path,
    args: &[String],
    log_dir: &Path,
    cwd: &Path,
    env: &[(&str, &Path)],
    input: Option<&[u8]>,
) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CULTIVATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("CULTIVATE_LOG_DIR", log_dir).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        // A writer thread: the binary may not read all of it before it exits.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let run = Run {
        args: args.to_vec(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    };
    eprintln!("$ cultivate {}  -> exit {} in {:.1}s", args.join(" "), run.code, run.elapsed.as_secs_f64());
    // Shown by libtest when the test fails (or with --nocapture).
    let lines: Vec<&str> = run.stderr.lines().collect();
    for l in &lines[lines.len().saturating_sub(150)..] {
        eprintln!("  | {l}");
    }
    run
}

/// Starts the binary as [`run_binary`] does, without waiting: stdout and
/// stderr are piped, for a test that watches the run and signals it.
pub fn spawn_binary(args: &[String], log_dir: &Path, cwd: &Path) -> std::process::Child {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CULTIVATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("CULTIVATE_LOG_DIR", log_dir).env("NO_COLOR", "1");
    eprintln!("$ cultivate {} &", args.join(" "));
    cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", binary().display()))
}

/// Runs curl; returns stdout or fails with its stderr.
pub fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl").args(args).stdin(Stdio::null()).output().context("running curl")?;
    if !out.status.success() {
        bail!("curl {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies a directory tree (files and directories only).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// A copy of examples/app under `parent/app` whose backend/server.js went
/// through `edit` (which must change it).
pub fn app_copy(parent: &Path, edit: impl FnOnce(&str) -> String) -> PathBuf {
    let app = parent.join("app");
    copy_tree(&prereq::workspace_root().join("examples/app"), &app).expect("copying examples/app");
    let server = app.join("backend/server.js");
    let before = std::fs::read_to_string(&server).expect("reading server.js");
    let after = edit(&before);
    assert_ne!(before, after, "the edit did not change backend/server.js");
    std::fs::write(&server, after).expect("writing server.js");
    app
}

/// True when `needle` occurs in everything `reader` yields (streamed, any size).
pub fn stream_contains(mut reader: impl Read, needle: &[u8]) -> std::io::Result<bool> {
    assert!(!needle.is_empty());
    let mut window: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        window.extend_from_slice(&buf[..n]);
        if window.windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        let keep = needle.len() - 1;
        if window.len() > keep {
            window.drain(..window.len() - keep);
        }
    }
}

/// Streams `program args` (stdout) into [`stream_contains`]; the command must succeed.
pub fn command_output_contains(mut cmd: Command, needle: &[u8]) -> Result<bool> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let found = stream_contains(stdout, needle)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(found)
}

/// Files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// True when `line` starts with an ISO 8601 (RFC 3339) UTC timestamp and a level.
pub fn is_timestamped(line: &str) -> bool {
    let Some((stamp, rest)) = line.split_once(' ') else { return false };
    let b = stamp.as_bytes();
    let date_ok = b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10] == b'T'
        && b[11..13].iter().all(u8::is_ascii_digit)
        && b[13] == b':'
        && b[14..16].iter().all(u8::is_ascii_digit)
        && b[16] == b':'
        && b[17..19].iter().all(u8::is_ascii_digit)
        && (stamp.ends_with('Z') || stamp[19..].contains(['+', '-']));
    let level = rest.split_whitespace().next().unwrap_or("");
    date_ok && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

// ------------------------------------------------------------ shared target

struct Shared {
    target: Option<Target>,
    done: usize,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared { target: None, done: 0 });

/// The tests of this run among `users`, judged from the test binary's
/// arguments the way libtest filters (substring, `--exact`, `--skip`).
pub fn selected(users: &[&str]) -> usize {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut exact = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            "--exact" => exact = true,
            "--skip" => {
                if let Some(v) = args.get(i + 1) {
                    skips.push(v.clone());
                }
                i += 1;
            }
            "--test-threads" | "--logfile" | "--format" | "--color" | "-Z" | "--shuffle-seed" => i += 1,
            s if s.starts_with("--skip=") => skips.push(s["--skip=".len()..].to_string()),
            s if s.starts_with('-') => {}
            s => filters.push(s.to_string()),
        }
        i += 1;
    }
    let hit = |name: &str, f: &String| if exact { name == f } else { name.contains(f.as_str()) };
    users
        .iter()
        .filter(|u| filters.is_empty() || filters.iter().any(|f| hit(u, f)))
        .filter(|u| !skips.iter().any(|s| hit(u, s)))
        .count()
}

/// One test's use of the shared `engine` target. The target comes up with
/// the first user and is torn down when the last selected user is done.
pub struct SharedEngine {
    expected: usize,
    via: Via,
    target_name: String,
    address: String,
}

impl SharedEngine {
    /// Takes the shared target named `name`, bringing it up if needed;
    /// `None` when its prerequisites are missing (skipped, or a panic under
    /// CI). `users` lists every test of the file that calls this (so the last
    /// one can tear the target down). Call it first thing in the test.
    pub fn take(name: &str, users: &[&str]) -> Option<SharedEngine> {
        let expected = selected(users).max(1);
        if !engine_available() {
            SHARED.lock().unwrap_or_else(|e| e.into_inner()).done += 1;
            return None;
        }
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if shared.target.is_none() {
            let started = Instant::now();
            match Target::up(name, Kind::Engine) {
                Ok(t) => {
                    eprintln!(
                        "shared engine target {name} up at {} in {:.1}s",
                        t.address,
                        started.elapsed().as_secs_f64()
                    );
                    shared.target = Some(t);
                }
                Err(e) => {
                    shared.done += 1;
                    drop(shared);
                    panic!("bringing up the shared engine target {name}: {e:#}");
                }
            }
        }
        let t = shared.target.as_ref().expect("target");
        Some(SharedEngine { expected, via: Via::ssh(t), target_name: t.name.clone(), address: t.address.clone() })
    }

    /// How to reach it.
    pub fn via(&self) -> Via {
        self.via.clone()
    }

    /// Its address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.target_name
    }
}

impl Drop for SharedEngine {
    fn drop(&mut self) {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.done += 1;
        if shared.done >= self.expected {
            if let Some(t) = shared.target.take() {
                let name = t.name.clone();
                if let Err(e) = t.down() {
                    eprintln!("tearing down the shared target {name}: {e:#}");
                }
            }
        }
    }
}

/// Whether the shared engine target can come up here (root, testenv deps,
/// dockerd); skips or fails through [`prereq::require`].
pub fn engine_available() -> bool {
    prereq::require(prereq::docker_available(), "this machine's Docker engine (builds the images)")
        && testenv::available(Kind::Engine)
        && prereq::require(base_image_present(), "image cultivate/debian:bookworm (docker/build-base-images.sh)")
}

/// The base image the configurations name exists on this machine.
pub fn base_image_present() -> bool {
    prereq::command_ok("docker", &["image", "inspect", "cultivate/debian:bookworm"])
}

/// Writes `text` to a file with `mode`.
pub fn write_file_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Whether the target's engine can exec into a container of `image` (Docker
/// health checks are execs). A dockerd started under a plain `chroot` (as
/// scripts/testenv.sh starts the sshd of `bare` and `trixie` targets, and so
/// every dockerd started over SSH there) cannot: runc falls back from
/// pivot_root, and an exec then lands in the host's root directory, where
/// the health check's program does not exist. `Err` names what happened.
pub fn engine_can_exec(via: &Via, image: &str, program: &str) -> Result<(), String> {
    let name = format!("e2e-exec-probe-{}", random_hex(3));
    let script = format!(
        "docker run -d --name {name} --entrypoint sleep {image} 120 >/dev/null && \
         docker exec {name} test -e {program}; rc=$?; docker rm -f {name} >/dev/null 2>&1; exit $rc"
    );
    match via.command(&script).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`docker exec` into a container of {image} does not see {program} (exit {:?}: {}), although the \
             image has it: the target's dockerd runs under chroot (scripts/testenv.sh starts the target's sshd \
             with `chroot`), so runc cannot pivot_root and execs, which Docker's health checks are, land in the \
             host's root; the target needs its sshd (and thus dockerd) in a mount namespace pivoted into its root",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("running the exec probe: {e}")),
    }
}

/// `text` without ANSI colour sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Every service of a `status --json` report that is not healthy is a
/// running container the engine still calls `starting`.
pub fn only_starting(report: &serde_json::Value) -> bool {
    let services = report["services"].as_array().map(Vec::as_slice).unwrap_or_default();
    !services.is_empty()
        && services
            .iter()
            .filter(|s| s["health"] != "healthy")
            .all(|s| s["state"] == "running" && s["health"] == "starting")
}
