//! The application stack under test (issue 4): the three images, compose
//! projects brought up from `compose/docker-compose.yml`, and helpers to look
//! inside the running containers.
//!
//! Every test project has a unique name (`cve2e…`, never `cultivate`) and its
//! own free host ports, so tests run in parallel next to a real deployment.
//! A [`Stack`] tears its project down (`down -v`) when dropped, and a detached
//! watchdog process removes it too once the test process has exited, which
//! also covers stacks shared through a `static` (never dropped) and aborted
//! runs.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::prereq::{self, workspace_root};

/// Tag of the images the tests build and run (`cultivate-frontend:e2e`, …).
pub const TEST_TAG: &str = "e2e";
/// Image name prefix (`IMAGE_PREFIX` in the compose file).
pub const IMAGE_PREFIX: &str = "cultivate";
/// The compose services.
pub const SERVICES: [&str; 3] = ["database", "backend", "frontend"];
/// Where the database socket lives in the database and backend containers.
pub const SOCKET_DIR: &str = "/var/run/postgresql";
/// PostgreSQL's data directory in the database container.
pub const PGDATA: &str = "/var/lib/postgresql/data";
/// Certificate directory inside the frontend container.
pub const CONTAINER_CERT_DIR: &str = "/etc/nginx/certs";

/// `cultivate-<service>:e2e`.
pub fn image(service: &str) -> String {
    format!("{IMAGE_PREFIX}-{service}:{TEST_TAG}")
}

/// The compose file under test.
pub fn compose_file() -> PathBuf {
    workspace_root().join("compose/docker-compose.yml")
}

/// Run a command, capturing its output. A command that cannot start at all
/// (not installed) panics with its name.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr of an output, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `docker ARGS`.
pub fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

/// `docker ARGS`, which must succeed; its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    run_ok(Command::new("docker").args(args)).trim().to_string()
}

/// `docker inspect` of one object as JSON.
pub fn inspect(object: &str) -> Value {
    let out = docker_ok(&["inspect", object]);
    let v: Value = serde_json::from_str(&out).expect("docker inspect prints JSON");
    v[0].clone()
}

/// The compose tool: `CULTIVATE_TEST_COMPOSE` (a command line, e.g. the path
/// of a Compose v2 binary, to run the tests with another version), else
/// `docker-compose` (v1 or v2's standalone binary), else `docker compose`
/// (v2 plugin). Empty when none exists.
pub fn compose_cmd() -> &'static [String] {
    static CMD: OnceLock<Vec<String>> = OnceLock::new();
    CMD.get_or_init(|| {
        if let Ok(cmd) = std::env::var("CULTIVATE_TEST_COMPOSE") {
            let cmd: Vec<String> = cmd.split_whitespace().map(String::from).collect();
            if !cmd.is_empty() {
                return cmd;
            }
        }
        if prereq::command_ok("docker-compose", &["version"]) {
            vec!["docker-compose".into()]
        } else if prereq::command_ok("docker", &["compose", "version"]) {
            vec!["docker".into(), "compose".into()]
        } else {
            Vec::new()
        }
    })
}

/// True when the compose tool is v2 (`config --format json` exists).
pub fn compose_is_v2() -> bool {
    static V2: OnceLock<bool> = OnceLock::new();
    *V2.get_or_init(|| {
        let cmd = compose_cmd();
        if cmd.is_empty() {
            return false;
        }
        let out = run(Command::new(&cmd[0]).args(&cmd[1..]).args(["version", "--short"]));
        String::from_utf8_lossy(&out.stdout).trim().starts_with('2')
    })
}

/// Engine and compose tool present (fails under CI, skips locally), then the
/// images built (a build failure always fails). Call first in every test.
pub fn ready() -> bool {
    if !prereq::require(prereq::docker_available(), "a running Docker engine") {
        return false;
    }
    if !prereq::require(!compose_cmd().is_empty(), "docker-compose (v1) or the docker compose plugin (v2)") {
        return false;
    }
    if let Err(e) = ensure_images() {
        panic!("building the stack images failed:\n{e}");
    }
    true
}

/// Build the three images once per test process with `docker/build-images.sh
/// e2e` (the engine's layer cache makes this a no-op when nothing changed).
/// `CULTIVATE_TEST_BASE_IMAGE` overrides the base image (e.g.
/// `debian:bookworm-slim` where a registry is reachable).
pub fn ensure_images() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(workspace_root().join("docker/build-images.sh"));
        cmd.arg(TEST_TAG).env("IMAGE_PREFIX", IMAGE_PREFIX);
        if let Ok(base) = std::env::var("CULTIVATE_TEST_BASE_IMAGE") {
            cmd.env("BASE_IMAGE", base);
        }
        let started = Instant::now();
        let out = run(&mut cmd);
        eprintln!("stack images built in {:.1}s", started.elapsed().as_secs_f64());
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    })
}

/// A free TCP port on this host, never handed out twice in one process.
pub fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port =
            TcpListener::bind(("0.0.0.0", 0)).and_then(|l| l.local_addr()).expect("bind an ephemeral port").port();
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A unique compose project name for this process: `cve2e<pid>x<n><label>`.
pub fn project_name(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let label: String = label.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    format!("cve2e{}x{n}{label}", std::process::id())
}

/// One `.env` line, written the portable way: single-quoted, so that Compose
/// v1 (python-dotenv) and v2 (compose-go) both take the value literally.
/// Values must not contain a single quote, a newline, a NUL or `${`
/// (Compose v1 interpolates `${…}` even inside single quotes).
pub fn env_line(key: &str, value: &str) -> String {
    assert!(env_value_is_portable(value), "value for {key} cannot be written portably: {value:?}");
    format!("{key}='{value}'\n")
}

/// See [`env_line`]. Also refused: `\\` and a trailing `\` (Compose v1
/// decodes `\\` and `\'` even inside single quotes).
pub fn env_value_is_portable(value: &str) -> bool {
    !value.contains(['\'', '\n', '\r', '\0'])
        && !value.contains("${")
        && !value.contains("\\\\")
        && !value.ends_with('\\')
}

/// Start a detached process that removes everything of compose project
/// `project` (containers, volumes, networks) once process `pid` has exited.
fn spawn_watchdog(project: &str, dir: &Path) -> Option<Child> {
    let label = format!("label=com.docker.compose.project={project}");
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 2; done; \
         docker ps -aq --filter '{label}' | xargs -r docker rm -f >/dev/null 2>&1; \
         docker volume ls -q --filter '{label}' | xargs -r docker volume rm -f >/dev/null 2>&1; \
         docker network ls -q --filter '{label}' | xargs -r docker network rm >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// A compose project from the compose file under test, in its own directory
/// (compose file, `.env`, `certs/`) as a deployment lays it out.
pub struct Stack {
    pub project: String,
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    pub https_port: u16,
    env: BTreeMap<String, String>,
    watchdog: Option<Child>,
}

impl Stack {
    /// Prepare (not start) a project: free ports, `.env` with the test tag,
    /// 1 s health check intervals, `extra_env` on top, and `certs` (if any)
    /// as `certs/fullchain.pem` and `certs/privkey.pem`.
    pub fn new(label: &str, extra_env: &[(&str, &str)], certs: Option<&CertPair>) -> Stack {
        let project = project_name(label);
        let dir = tempfile::Builder::new().prefix(&format!("{project}-")).tempdir().expect("temp dir");
        let http_port = free_port();
        let https_port = free_port();
        std::fs::copy(compose_file(), dir.path().join("docker-compose.yml")).expect("copy compose file");
        let cert_dir = dir.path().join("certs");
        std::fs::create_dir(&cert_dir).expect("certs dir");
        if let Some(pair) = certs {
            std::fs::write(cert_dir.join("fullchain.pem"), &pair.cert).unwrap();
            std::fs::write(cert_dir.join("privkey.pem"), &pair.key).unwrap();
        }
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("IMAGE_PREFIX", IMAGE_PREFIX.to_string()),
            ("RELEASE_VERSION", TEST_TAG.to_string()),
            ("DATABASE_TAG", TEST_TAG.to_string()),
            ("BACKEND_TAG", TEST_TAG.to_string()),
            ("FRONTEND_TAG", TEST_TAG.to_string()),
            ("HTTP_PORT", http_port.to_string()),
            ("HTTPS_PORT", https_port.to_string()),
            ("CERT_DIR", cert_dir.display().to_string()),
            ("EDGE_DIR", dir.path().join("edge").display().to_string()),
            ("HEALTHCHECK_INTERVAL", "1s".to_string()),
            ("APP_SECRET", format!("e2e-secret-{project}")),
        ] {
            env.insert(k.to_string(), v);
        }
        for (k, v) in extra_env {
            env.insert(k.to_string(), v.to_string());
        }
        let watchdog = spawn_watchdog(&project, dir.path());
        let stack = Stack { project, dir, http_port, https_port, env, watchdog };
        stack.write_env();
        stack
    }

    /// Prepare and start a project; returns once every service is healthy.
    pub fn up(label: &str, extra_env: &[(&str, &str)], certs: Option<&CertPair>) -> Stack {
        let stack = Stack::new(label, extra_env, certs);
        stack.start(&[]);
        stack
    }

    /// The `.env` values of this project.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Change a `.env` value (takes effect at the next `up`).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_string(), value.to_string());
        self.write_env();
    }

    fn write_env(&self) {
        let mut f = std::fs::File::create(self.dir.path().join(".env")).expect("write .env");
        for (k, v) in &self.env {
            f.write_all(env_line(k, v).as_bytes()).unwrap();
        }
    }

    /// The project's certificate directory on the host.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The compose tool on this project (cwd = its directory, so `.env` and
    /// relative paths resolve as in a deployment).
    pub fn compose(&self, args: &[&str]) -> Output {
        let cmd = compose_cmd();
        run(Command::new(&cmd[0]).args(&cmd[1..]).args(["-p", &self.project]).args(args).current_dir(self.dir.path()))
    }

    /// The compose tool on this project; must succeed.
    pub fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(out.status.success(), "compose {args:?} failed for {}:\n{}\n{}", self.project, text(&out), self.logs());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `up -d [services]`, then wait for the services to be healthy.
    pub fn start(&self, services: &[&str]) {
        let mut args = vec!["up", "-d"];
        args.extend_from_slice(services);
        self.compose_ok(&args);
        let wait: Vec<&str> = if services.is_empty() { SERVICES.to_vec() } else { services.to_vec() };
        self.wait_healthy(&wait, Duration::from_secs(180));
    }

    /// Wait until every listed service's container reports `healthy`.
    pub fn wait_healthy(&self, services: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for service in services {
            loop {
                let status = self
                    .try_container(service)
                    .map(|id| docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]))
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                if status == "healthy" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{service} of {} not healthy within {timeout:?} (status {status:?}):\n{}",
                    self.project,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    /// Logs of every service (for failure messages).
    pub fn logs(&self) -> String {
        let cmd = compose_cmd();
        let out = run(Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["-p", &self.project, "logs", "--no-color", "--tail", "60"])
            .current_dir(self.dir.path()));
        text(&out)
    }

    /// Container ID of a service, if it has one (found by compose's labels
    /// with the docker CLI: much cheaper than a compose v1 call).
    pub fn try_container(&self, service: &str) -> Option<String> {
        let out = docker(&[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        let id = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string();
        (out.status.success() && !id.is_empty()).then_some(id)
    }

    /// Container ID of a service (it must exist).
    pub fn container(&self, service: &str) -> String {
        self.try_container(service).unwrap_or_else(|| panic!("{service} of {} has no container", self.project))
    }

    /// `docker exec [-u USER] [-e K=V…] <service> ARGS`.
    pub fn exec(&self, service: &str, user: Option<&str>, env: &[&str], args: &[&str]) -> Output {
        let id = self.container(service);
        let mut cmd = Command::new("docker");
        cmd.arg("exec");
        if let Some(u) = user {
            cmd.args(["-u", u]);
        }
        for e in env {
            cmd.args(["-e", e]);
        }
        cmd.arg(&id).args(args);
        run(&mut cmd)
    }

    /// Name of one of the project's named volumes.
    pub fn volume(&self, name: &str) -> String {
        format!("{}_{}", self.project, name)
    }

    /// `http://127.0.0.1:<HTTP_PORT><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `https://127.0.0.1:<HTTPS_PORT><path>`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    /// Tear down now (`down -v`).
    pub fn down(&self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.down();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The stack shared by the read-only property tests: started once per test
/// process with no certificate, an awkward `APP_GREETING` and a known
/// `APP_SECRET`. Removed by its watchdog when the process exits.
pub fn shared_stack() -> &'static Stack {
    static SHARED: OnceLock<Stack> = OnceLock::new();
    SHARED
        .get_or_init(|| Stack::up("shared", &[("APP_GREETING", SHARED_GREETING), ("APP_SECRET", SHARED_SECRET)], None))
}

/// `APP_GREETING` of [`shared_stack`]: spaces, `#`, `$`, quotes, backslash,
/// `=`, non-ASCII.
pub const SHARED_GREETING: &str = r#"Grüße #1: "quoted" $HOME a$b \n=x ünï€ `t`"#;
/// `APP_SECRET` of [`shared_stack`]; must never show up in images or the API.
pub const SHARED_SECRET: &str = "e2e-Secret-7f3a9c1d-never-in-layers";

/// HTTP(S) response fetched with curl.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Request `url` with curl (`-k`: self-signed test certificates). `Err` when
/// no HTTP response came back (refused, reset, TLS failure) with curl's message.
pub fn http(method: &str, url: &str, body: Option<&str>) -> Result<HttpResponse, String> {
    let tmp = tempfile::tempdir().unwrap();
    let hdr = tmp.path().join("h");
    let out_body = tmp.path().join("b");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--max-time", "15", "-X", method, "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&out_body)
        .args(["-w", "%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(url);
    let out = run(&mut cmd);
    if !out.status.success() {
        return Err(text(&out));
    }
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    Ok(HttpResponse {
        status,
        headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
        body: std::fs::read(&out_body).unwrap_or_default(),
    })
}

/// GET `url`.
pub fn get(url: &str) -> Result<HttpResponse, String> {
    http("GET", url, None)
}

/// GET `url`, retrying for up to `timeout` until it answers with `status`.
pub fn get_until(url: &str, status: u16, timeout: Duration) -> HttpResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let last = get(url);
        match last {
            Ok(r) if r.status == status => return r,
            _ if Instant::now() >= deadline => {
                panic!("{url} did not answer {status} within {timeout:?}: {last:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The compose tool's own view of `dir`'s project (`config`), as JSON: v2's
/// `config --format json`, or v1's YAML converted by the python3/PyYAML that
/// Compose v1 itself runs on. Values are unescaped (`$$` → `$`).
pub fn compose_config(dir: &Path, project: &str) -> Result<Value, String> {
    let cmd = compose_cmd();
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).args(["-p", project, "config"]).current_dir(dir);
    if compose_is_v2() {
        c.args(["--format", "json"]);
    }
    let out = run(&mut c);
    if !out.status.success() {
        return Err(text(&out));
    }
    let mut v: Value = if compose_is_v2() {
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?
    } else {
        yaml_to_json(&String::from_utf8_lossy(&out.stdout))?
    };
    unescape_dollars(&mut v);
    Ok(v)
}

/// Convert a YAML document to JSON with one long-lived python3/PyYAML
/// process (Compose v1 runs on them, so they are there wherever v1 is);
/// one line of JSON-encoded YAML in, one line of JSON out.
fn yaml_to_json(yaml: &str) -> Result<Value, String> {
    use std::io::{BufRead, BufReader};
    type Conv = (std::process::ChildStdin, BufReader<std::process::ChildStdout>);
    static CONV: Mutex<Option<Conv>> = Mutex::new(None);
    let mut guard = CONV.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let mut py = Command::new("python3")
            .args([
                "-c",
                "import sys, json, yaml\n\
                 for line in sys.stdin:\n    \
                 print(json.dumps(yaml.safe_load(json.loads(line))), flush=True)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 (PyYAML) for compose v1 config output: {e}"))?;
        *guard = Some((py.stdin.take().unwrap(), BufReader::new(py.stdout.take().unwrap())));
    }
    let (stdin, stdout) = guard.as_mut().unwrap();
    let request = serde_json::to_string(yaml).unwrap() + "\n";
    let mut line = String::new();
    let ok = stdin.write_all(request.as_bytes()).is_ok() && stdout.read_line(&mut line).map(|n| n > 0).unwrap_or(false);
    if !ok {
        *guard = None;
        return Err("python3 YAML converter died (is PyYAML installed?)".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("YAML to JSON: {e}: {line}"))
}

fn unescape_dollars(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.replace("$$", "$"),
        Value::Array(a) => a.iter_mut().for_each(unescape_dollars),
        Value::Object(o) => o.values_mut().for_each(unescape_dollars),
        _ => {}
    }
}

/// Write `files` (name, content) and a project dir holding the compose file
/// under test and a `.env` with `env`; returns the dir. For `config` checks.
pub fn config_dir(env: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(compose_file(), dir.path().join("docker-compose.yml")).unwrap();
    let mut f = std::fs::File::create(dir.path().join(".env")).unwrap();
    for (k, v) in env {
        f.write_all(env_line(k, v).as_bytes()).unwrap();
    }
    dir
}

/// `openssl ARGS` in `dir`; must succeed.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    run_ok(Command::new("openssl").args(args).current_dir(dir))
}

/// A self-signed certificate for `localhost` (EC P-256) valid from
/// `not_before` to `not_after` (`YYYYMMDDHHMMSSZ`), made with `openssl ca
/// -selfsign` (OpenSSL 3.0's `req` cannot backdate).
pub fn openssl_cert(not_before: &str, not_after: &str) -> CertPair {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("serial"), "1000\n").unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = local\n\
         [local]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\n\
         default_md = sha256\npolicy = any\nunique_subject = no\nx509_extensions = ext\n\
         [any]\ncommonName = supplied\n\
         [ext]\nsubjectAltName = DNS:localhost,IP:127.0.0.1\nbasicConstraints = CA:false\n\
         [req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-config",
            "ca.cnf",
        ],
    );
    openssl(
        d,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "key.pem",
            "-in",
            "req.csr",
            "-out",
            "cert.pem",
            "-startdate",
            not_before,
            "-enddate",
            not_after,
        ],
    );
    CertPair { cert: std::fs::read(d.join("cert.pem")).unwrap(), key: std::fs::read(d.join("key.pem")).unwrap() }
}

/// A currently valid self-signed certificate for `localhost` (RSA 2048, 30 days).
pub fn openssl_valid_cert() -> CertPair {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
    );
    CertPair { cert: std::fs::read(d.join("cert.pem")).unwrap(), key: std::fs::read(d.join("key.pem")).unwrap() }
}

/// SHA-256 fingerprint of a PEM certificate (`openssl x509 -fingerprint`).
pub fn cert_fingerprint(pem: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("c.pem"), pem).unwrap();
    openssl(tmp.path(), &["x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha256"]).trim().to_string()
}

/// Fingerprint of the certificate served on `127.0.0.1:port`, or `None` when
/// no TLS handshake succeeds there.
pub fn served_cert_fingerprint(port: u16) -> Option<String> {
    let out = run(Command::new("sh").args([
        "-c",
        &format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ),
    ]));
    let fp = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && fp.contains('=')).then_some(fp)
}

/// `docker run --rm` of a stack image with extra `docker run` arguments, for
/// checks of a single container; waits for it to exit (at most `timeout`).
pub fn run_container(args: &[&str], timeout: Duration) -> Output {
    let secs = timeout.as_secs().max(1).to_string();
    run(Command::new("timeout").args([secs.as_str(), "docker", "run", "--rm"]).args(args))
}

/// A container started with `docker run -d` (removed when dropped).
pub struct Container {
    pub id: String,
}

impl Container {
    /// `docker run -d ARGS`.
    pub fn start(args: &[&str]) -> Container {
        let id = docker_ok(&[&["run", "-d"], args].concat());
        Container { id }
    }

    /// `docker logs` (stdout and stderr).
    pub fn logs(&self) -> String {
        text(&docker(&["logs", &self.id]))
    }

    /// `docker exec` in it.
    pub fn exec(&self, args: &[&str]) -> Output {
        docker(&[&["exec", self.id.as_str()], args].concat())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.id]);
    }
}
