//! Properties P1–P15 of the stack (issue 4) on real containers: the images
//! built by docker/build-images.sh, brought up with the compose tool from
//! compose/docker-compose.yml, probed with curl, openssl and psql.
//!
//! Run: `cargo test -p cultivate-e2e --test stack -- --test-threads=2`.
//! A missing engine or compose tool fails under CI and skips locally.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cultivate_e2e::stack::*;
use proptest::prelude::*;
use serde_json::Value;

macro_rules! ready_or_skip {
    () => {
        if !ready() {
            return;
        }
    };
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// (published host port, container port) of a compose `config` port entry:
/// v1 prints `"0.0.0.0:8080:80/tcp"`, v2 `{"published": "8080", "target": 80}`.
fn port_pairs(service: &Value) -> Vec<(u16, u16)> {
    let Some(ports) = service.get("ports").and_then(Value::as_array) else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| match p {
            Value::String(s) => {
                let s = s.split('/').next().unwrap();
                let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                (parts[1].parse().unwrap(), parts[0].parse().unwrap())
            }
            Value::Object(o) => {
                let num = |v: &Value| match v {
                    Value::String(s) => s.parse().unwrap(),
                    Value::Number(n) => n.as_u64().unwrap() as u16,
                    other => panic!("port {other}"),
                };
                (num(&o["published"]), num(&o["target"]))
            }
            other => panic!("unexpected port entry {other}"),
        })
        .collect()
}

/// (source, target, read_only) of a compose `config` volume entry (v1 string
/// `src:dst:mode`, v2 object).
fn volume_mounts(service: &Value) -> Vec<(String, String, bool)> {
    let Some(vols) = service.get("volumes").and_then(Value::as_array) else {
        return Vec::new();
    };
    vols.iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let ro = parts.get(2).is_some_and(|m| m.split(',').any(|m| m == "ro"));
                (parts[0].to_string(), parts[1].to_string(), ro)
            }
            Value::Object(o) => (
                o["source"].as_str().unwrap_or_default().to_string(),
                o["target"].as_str().unwrap().to_string(),
                o.get("read_only").and_then(Value::as_bool).unwrap_or(false),
            ),
            other => panic!("unexpected volume entry {other}"),
        })
        .collect()
}

/// Every regular file under `dir`, relative, `/`-separated.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// Copy a directory out of an image into a temp dir.
fn copy_from_image(image: &str, path: &str) -> tempfile::TempDir {
    let id = docker_ok(&["create", image]);
    let tmp = tempfile::tempdir().unwrap();
    let out =
        run(Command::new("sh")
            .args(["-c", &format!("docker cp {id}:{path}/. - | tar -x -C '{}'", tmp.path().display())]));
    docker(&["rm", "-f", &id]);
    assert!(out.status.success(), "copy {path} out of {image}: {}", text(&out));
    tmp
}

/// Stack with a valid certificate, shared by P3 and P13 (read-only use).
fn tls_stack() -> &'static (Stack, CertPair) {
    static TLS: std::sync::OnceLock<(Stack, CertPair)> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let pair = openssl_valid_cert();
        (Stack::up("tls", &[], Some(&pair)), pair)
    })
}

/// Write a cert dir for a single frontend container.
fn cert_dir(cert: Option<&[u8]>, key: Option<&[u8]>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if let Some(c) = cert {
        std::fs::write(d.path().join("fullchain.pem"), c).unwrap();
    }
    if let Some(k) = key {
        std::fs::write(d.path().join("privkey.pem"), k).unwrap();
    }
    d
}

/// A frontend container alone (no backend needed to serve static files),
/// with `certs` mounted read-only; waits until HTTP answers.
fn frontend_alone(certs: &Path) -> (Container, u16, u16) {
    let http_port = free_port();
    let https_port = free_port();
    let c = Container::start(&[
        "-p",
        &format!("127.0.0.1:{http_port}:80"),
        "-p",
        &format!("127.0.0.1:{https_port}:443"),
        "-v",
        &format!("{}:{CONTAINER_CERT_DIR}:ro", certs.display()),
        &image("frontend"),
    ]);
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&url).is_ok_and(|r| r.status == 200) {
        let state = docker_ok(&["inspect", "-f", "{{.State.Status}}", &c.id]);
        assert!(
            Instant::now() < deadline && state != "exited",
            "frontend with {} not serving ({state}): {}",
            certs.display(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (c, http_port, https_port)
}

/// P1: every file of the built site is served byte for byte, with the right
/// content type, and the build produced every source asset.
#[test]
fn p01_static_asset_accessibility() {
    ready_or_skip!();
    let stack = shared_stack();
    let site = copy_from_image(&image("frontend"), "/usr/share/nginx/html");
    let built = files_under(site.path());
    let sources = files_under(&prereq_root().join("examples/app/frontend/src"));
    for s in &sources {
        assert!(built.contains(s), "source asset {s} missing from the build: {built:?}");
    }
    assert!(built.iter().any(|f| f.ends_with(".png")), "a binary asset is part of the test");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(site.path().join("asset-manifest.json")).unwrap()).unwrap();
    for rel in &built {
        let expected = std::fs::read(site.path().join(rel)).unwrap();
        let r = get(&stack.http_url(&format!("/{rel}"))).unwrap();
        assert_eq!(r.status, 200, "/{rel}");
        assert!(r.body == expected, "/{rel} is not served byte-exact");
        if rel != "asset-manifest.json" {
            assert!(manifest.get(rel.as_str()).is_some(), "{rel} not in the manifest");
        }
        let ctype = r.header("content-type").unwrap_or_default();
        let want = match rel.rsplit('.').next().unwrap() {
            "html" => "text/html",
            "css" => "text/css",
            "js" => "javascript",
            "png" => "image/png",
            "json" => "application/json",
            _ => "",
        };
        assert!(ctype.contains(want), "/{rel}: content type {ctype:?}, want {want}");
    }
    // The root serves index.html.
    let root = get(&stack.http_url("/")).unwrap();
    assert_eq!(root.body, std::fs::read(site.path().join("index.html")).unwrap());
}

fn prereq_root() -> std::path::PathBuf {
    cultivate_e2e::prereq::workspace_root()
}

/// Ports of the frontend as the compose tool resolves them from `.env`.
fn configured_ports(http: Option<u16>, https: Option<u16>) -> Result<Vec<(u16, u16)>, String> {
    let h = http.map(|p| p.to_string());
    let s = https.map(|p| p.to_string());
    let mut env = vec![];
    if let Some(h) = &h {
        env.push(("HTTP_PORT", h.as_str()));
    }
    if let Some(s) = &s {
        env.push(("HTTPS_PORT", s.as_str()));
    }
    let dir = config_dir(&env);
    let cfg = compose_config(dir.path(), "cve2econfig")?;
    for other in ["database", "backend"] {
        if !port_pairs(&cfg["services"][other]).is_empty() {
            return Err(format!("{other} publishes ports"));
        }
    }
    let mut pairs = port_pairs(&cfg["services"]["frontend"]);
    pairs.sort_by_key(|p| p.1);
    Ok(pairs)
}

/// P2: any HTTP/HTTPS host port pair from `.env` ends up as the frontend's
/// published ports (compose `config` for many pairs, a sample brought up for
/// real); nothing else publishes ports; defaults 8080/8443.
#[test]
fn p02_port_configuration_flexibility() {
    ready_or_skip!();
    assert_eq!(configured_ports(None, None).unwrap(), vec![(8080, 80), (8443, 443)]);

    proptest!(proptest_config(100), |(http in 1u16..=65535, https in 1u16..=65535)| {
        prop_assume!(http != https);
        let pairs = configured_ports(Some(http), Some(https)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(pairs, vec![(http, 80), (https, 443)]);
    });

    // A sample for real: the frontend alone (it serves static files without
    // the backend), on free high ports.
    for _ in 0..2 {
        let stack = Stack::new("p2", &[], None);
        stack.compose_ok(&["up", "-d", "--no-deps", "frontend"]);
        stack.wait_healthy(&["frontend"], Duration::from_secs(60));
        let r = get_until(&stack.http_url("/"), 200, Duration::from_secs(30));
        assert!(r.text().contains("cultivate example app"));
        let id = stack.container("frontend");
        let https_map = docker_ok(&["port", &id, "443/tcp"]);
        assert!(
            https_map.contains(&format!(":{}", stack.https_port)),
            "443 published on {https_map}, want {}",
            stack.https_port
        );
        let http_map = docker_ok(&["port", &id, "80/tcp"]);
        assert!(http_map.contains(&format!(":{}", stack.http_port)));
    }
}

/// P3: HTTPS is served exactly when a valid certificate and key are present:
/// with them the served certificate is the mounted one; without them (or with
/// only one of the two) nothing answers TLS; adding them to a running
/// container enables HTTPS with no new image.
#[test]
fn p03_conditional_https() {
    ready_or_skip!();
    let (tls, pair) = tls_stack();
    assert_eq!(
        served_cert_fingerprint(tls.https_port),
        Some(cert_fingerprint(&pair.cert)),
        "the mounted certificate is served"
    );
    let r = get(&tls.https_url("/api/health")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["database"], "ok");
    assert!(r.header("strict-transport-security").is_some(), "HSTS on HTTPS");

    let plain = shared_stack();
    assert_eq!(served_cert_fingerprint(plain.https_port), None);
    assert!(get(&plain.https_url("/")).is_err(), "no HTTPS without a certificate");

    // Only one of the two files: no HTTPS.
    for (c, k) in [(Some(&pair.cert[..]), None), (None, Some(&pair.key[..]))] {
        let dir = cert_dir(c, k);
        let (container, _, https_port) = frontend_alone(dir.path());
        assert_eq!(served_cert_fingerprint(https_port), None, "{}", container.logs());
        assert!(container.logs().contains("HTTPS disabled"));
    }

    // Added later: write the files, `cultivate-tls reload`, HTTPS is on.
    let dir = cert_dir(None, None);
    let (container, _, https_port) = frontend_alone(dir.path());
    assert_eq!(served_cert_fingerprint(https_port), None);
    std::fs::write(dir.path().join("fullchain.pem"), &pair.cert).unwrap();
    std::fs::write(dir.path().join("privkey.pem"), &pair.key).unwrap();
    let out = container.exec(&["cultivate-tls", "reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert_fingerprint(https_port).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_cert_fingerprint(https_port), Some(cert_fingerprint(&pair.cert)));
}

/// P4: with no certificate, plain HTTP serves everything: the site, the API
/// through the proxy (including the health check that queries the database),
/// with security headers and gzip.
#[test]
fn p04_http_only_fallback() {
    ready_or_skip!();
    let stack = shared_stack();
    assert!(std::fs::read_dir(stack.cert_dir()).unwrap().next().is_none());
    for path in ["/", "/index.html", "/app.js", "/style.css", "/logo.png", "/healthz"] {
        let r = get(&stack.http_url(path)).unwrap();
        assert_eq!(r.status, 200, "{path}");
        for h in ["x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy"] {
            assert!(r.header(h).is_some(), "{path} lacks {h}");
        }
        assert!(r.header("strict-transport-security").is_none(), "no HSTS over HTTP");
    }
    let health = get(&stack.http_url("/api/health")).unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["database"], "ok");
    let info = get(&stack.http_url("/api/info")).unwrap();
    assert_eq!(info.status, 200);
    let notes = get(&stack.http_url("/api/notes")).unwrap();
    assert_eq!(notes.status, 200);
    assert!(notes.json()["notes"].is_array());
    // Server version hidden; gzip for text assets.
    let r = get(&stack.http_url("/")).unwrap();
    assert_eq!(r.header("server").as_deref(), Some("nginx"));
    let out = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        "Accept-Encoding: gzip",
        &stack.http_url("/app.js"),
    ]));
    assert!(text(&out).to_ascii_lowercase().contains("content-encoding: gzip"), "{}", text(&out));
    assert!(get(&stack.https_url("/")).is_err());
    let logs = text(&docker(&["logs", &stack.container("frontend")]));
    assert!(logs.contains("HTTPS disabled"), "{logs}");
}

/// psql as postgres in the database container.
fn db_admin(stack: &Stack, sql: &str) -> String {
    let out = stack.exec(
        "database",
        Some("postgres"),
        &[],
        &["psql", "-h", SOCKET_DIR, "-d", "cultivate", "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql],
    );
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// P5: the backend reaches PostgreSQL through the socket (its connections
/// have no client address) and TCP to the database does not exist.
#[test]
fn p05_unix_socket_connectivity() {
    ready_or_skip!();
    let stack = shared_stack();
    let body = format!("{{\"body\": \"p05 {}\"}}", std::process::id());
    let r = http("POST", &stack.http_url("/api/notes"), Some(&body)).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let health = get(&stack.http_url("/api/health")).unwrap();
    assert_eq!(health.json()["database"], "ok");
    // The pool keeps its connections for 10 s.
    let via_socket =
        db_admin(stack, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'apiuser' AND client_addr IS NULL");
    assert!(via_socket.parse::<u32>().unwrap() >= 1, "backend connections: {via_socket}");
    let via_tcp = db_admin(stack, "SELECT count(*) FROM pg_stat_activity WHERE client_addr IS NOT NULL");
    assert_eq!(via_tcp, "0");
    // From the backend, TCP to the database is refused.
    let out = stack.exec(
        "backend",
        None,
        &[],
        &[
            "node",
            "-e",
            "require('net').connect(5432, 'database')\
             .on('connect', () => { console.log('CONNECTED'); process.exit(1); })\
             .on('error', (e) => { console.log(e.code); process.exit(0); });",
        ],
    );
    assert!(out.status.success(), "TCP 5432 reachable: {}", text(&out));
    assert!(text(&out).contains("ECONNREFUSED"), "{}", text(&out));
    // The backend's configuration names the socket directory, nothing else.
    let env = inspect(&stack.container("backend"))["Config"]["Env"].to_string();
    assert!(env.contains("DB_SOCKET_DIR=/var/run/postgresql"), "{env}");
    assert!(!env.contains("PGHOST") && !env.contains("DATABASE_URL"), "{env}");
}

/// P6: the socket volume is mounted by database and backend only.
#[test]
fn p06_socket_volume_exclusivity() {
    ready_or_skip!();
    let stack = shared_stack();
    let vol = stack.volume("db_socket");
    let mut users = BTreeSet::new();
    for service in SERVICES {
        let c = inspect(&stack.container(service));
        let mounts = c["Mounts"].as_array().unwrap();
        let has = mounts.iter().any(|m| m["Name"] == vol.as_str());
        if has {
            users.insert(service);
            let m = mounts.iter().find(|m| m["Name"] == vol.as_str()).unwrap();
            assert_eq!(m["Destination"], SOCKET_DIR);
        }
    }
    assert_eq!(users, BTreeSet::from(["backend", "database"]));
    let listed = docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("volume={vol}")]);
    let listed: BTreeSet<&str> = listed.lines().collect();
    let expected: BTreeSet<String> = ["database", "backend"].iter().map(|s| stack.container(s)).collect();
    assert_eq!(listed, expected.iter().map(String::as_str).collect());
    // And in the compose file itself.
    let dir = config_dir(&[]);
    let cfg = compose_config(dir.path(), "cve2econfig").unwrap();
    for service in SERVICES {
        let mounts = volume_mounts(&cfg["services"][service]);
        let uses = mounts.iter().any(|(src, _, _)| src == "db_socket");
        assert_eq!(uses, service != "frontend", "{service}: {mounts:?}");
    }
    // Neither the socket volume nor the data volume is shared further, and
    // the frontend sees no socket.
    let out = stack.exec("frontend", None, &[], &["test", "-e", "/var/run/postgresql/.s.PGSQL.5432"]);
    assert!(!out.status.success());
}

/// P7: OS user apiuser (UID/GID 1001 in both images) maps by peer
/// authentication to role apiuser, which owns database cultivate.
#[test]
fn p07_peer_authentication_mapping() {
    ready_or_skip!();
    let stack = shared_stack();
    for service in ["database", "backend"] {
        let out = stack.exec(service, None, &[], &["sh", "-c", "id -u apiuser; id -g apiuser"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1001\n1001", "{service}");
    }
    let backend = inspect(&stack.container("backend"));
    assert_eq!(backend["Config"]["User"], "apiuser");
    let out = stack.exec("backend", None, &[], &["id", "-un"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "apiuser");
    let out = stack.exec("backend", None, &[], &["cat", "/proc/1/status"]);
    assert!(text(&out).lines().any(|l| l.starts_with("Uid:") && l.contains("1001")), "PID 1 runs as 1001");

    let q = "SELECT current_user || '|' || session_user || '|' || \
             (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database())";
    for user in ["apiuser", "1001:1001"] {
        let out =
            stack.exec("database", Some(user), &[], &["psql", "-h", SOCKET_DIR, "-d", "cultivate", "-tAX", "-c", q]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "apiuser|apiuser|apiuser");
    }
    // From the backend container, the way the app connects.
    let out = stack.exec(
        "backend",
        None,
        &[],
        &[
            "node",
            "-e",
            "const { Client } = require('pg');\
             const c = new Client({ host: '/var/run/postgresql', database: 'cultivate', user: 'apiuser' });\
             c.connect().then(() => c.query('SELECT current_user AS u'))\
              .then((r) => { console.log(r.rows[0].u); return c.end(); })\
              .catch((e) => { console.error(e.message); process.exit(1); });",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "apiuser");
    assert_eq!(
        db_admin(
            stack,
            "SELECT rolcanlogin::text || rolsuper::text || (rolpassword IS NULL)::text \
             FROM pg_authid WHERE rolname = 'apiuser'"
        ),
        "truefalsetrue"
    );
}

/// P8: a password login (even with the right password), a TCP connection and
/// a connection as another OS user are all refused — real psql, in the
/// database container and on this host.
#[test]
fn p08_password_authentication_rejection() {
    ready_or_skip!();
    let stack = shared_stack();
    // Configuration: every local rule is peer, every host rule rejects.
    let rules = db_admin(
        stack,
        "SELECT string_agg(DISTINCT type || ':' || auth_method, ',' ORDER BY type || ':' || auth_method) \
         FROM pg_hba_file_rules",
    );
    assert_eq!(rules, "host:reject,local:peer");
    assert_eq!(db_admin(stack, "SHOW listen_addresses"), "");

    // A role with a password: the correct password still does not log in.
    let role = format!("e2e_pw_{}", std::process::id());
    db_admin(stack, &format!("CREATE ROLE {role} LOGIN PASSWORD 'right-password'"));
    let pw = "PGPASSWORD=right-password";
    let refused = |user: Option<&str>, env: &[&str], args: &[&str], why: &str| {
        let out = stack.exec("database", user, env, args);
        assert!(!out.status.success(), "{why}: logged in: {}", text(&out));
        text(&out)
    };
    let socket_pw = refused(
        Some("root"),
        &[pw],
        &["psql", "-h", SOCKET_DIR, "-U", &role, "-d", "cultivate", "-c", "SELECT 1"],
        "password over the socket",
    );
    assert!(socket_pw.contains("Peer authentication failed"), "{socket_pw}");
    for host in ["127.0.0.1", "localhost", "database"] {
        let tcp = refused(
            Some("postgres"),
            &[pw],
            &["psql", "-h", host, "-U", &role, "-d", "cultivate", "-c", "SELECT 1"],
            "TCP",
        );
        assert!(tcp.contains("Connection refused") || tcp.contains("could not connect"), "{host}: {tcp}");
    }
    db_admin(stack, &format!("DROP ROLE {role}"));

    // Another OS user than apiuser, asking for role apiuser.
    for user in ["nobody", "postgres", "root", "1002:1002"] {
        let out = refused(
            Some(user),
            &["PGPASSWORD=anything"],
            &["psql", "-h", SOCKET_DIR, "-U", "apiuser", "-d", "cultivate", "-c", "SELECT 1"],
            user,
        );
        assert!(out.contains("authentication failed") || out.contains("Peer"), "{user}: {out}");
    }

    // No TCP listener at all in the database container.
    let out = stack.exec("database", None, &[], &["cat", "/proc/net/tcp", "/proc/net/tcp6"]);
    let listening = text(&out)
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        // Docker's embedded DNS resolver (127.0.0.11) lives in every
        // container's network namespace on user-defined networks.
        .filter(|l| !l.split_whitespace().nth(1).unwrap_or("").starts_with("0B00007F:"))
        .count();
    assert_eq!(listening, 0, "TCP listeners: {}", text(&out));

    // This host's psql: over TCP to the database container, and as root
    // through the socket in the volume.
    if cultivate_e2e::prereq::require(cultivate_e2e::prereq::command_ok("psql", &["--version"]), "psql on the host") {
        let db = inspect(&stack.container("database"));
        let nets = db["NetworkSettings"]["Networks"].as_object().unwrap();
        let ip = nets.values().next().unwrap()["IPAddress"].as_str().unwrap().to_string();
        let out = run(Command::new("psql").env("PGPASSWORD", "x").env("PGCONNECT_TIMEOUT", "5").args([
            "-h",
            &ip,
            "-U",
            "apiuser",
            "-d",
            "cultivate",
            "-c",
            "SELECT 1",
        ]));
        assert!(!out.status.success(), "TCP from host: {}", text(&out));
        let mountpoint = docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", &stack.volume("db_socket")]);
        if Path::new(&mountpoint).join(".s.PGSQL.5432").exists() {
            let out = run(Command::new("psql").env("PGPASSWORD", "x").args([
                "-h",
                &mountpoint,
                "-U",
                "apiuser",
                "-d",
                "cultivate",
                "-c",
                "SELECT 1",
            ]));
            assert!(!out.status.success(), "host socket: {}", text(&out));
            assert!(text(&out).contains("Peer authentication failed"), "{}", text(&out));
        }
    }
}

/// P9: once the database is healthy its socket file exists in the shared
/// volume, visible to the backend.
#[test]
fn p09_socket_file_creation() {
    ready_or_skip!();
    let stack = shared_stack();
    let status = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &stack.container("database")]);
    assert_eq!(status, "healthy");
    for service in ["database", "backend"] {
        let out = stack.exec(
            service,
            None,
            &[],
            &[
                "sh",
                "-c",
                "test -S /var/run/postgresql/.s.PGSQL.5432 && test -f /var/run/postgresql/.s.PGSQL.5432.lock",
            ],
        );
        assert!(out.status.success(), "{service}: no socket: {}", text(&out));
    }
    let mountpoint = docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", &stack.volume("db_socket")]);
    if let Ok(meta) = std::fs::metadata(Path::new(&mountpoint).join(".s.PGSQL.5432")) {
        assert!(meta.file_type().is_socket(), "the volume holds a socket file");
    } else {
        eprintln!("volume {mountpoint} not readable from here; checked inside the containers only");
    }
}

/// P10: a row written survives `down` (without -v) and `up` (and every
/// service stops cleanly on its stop signal).
#[test]
fn p10_volume_persistence() {
    ready_or_skip!();
    let stack = Stack::up("p10", &[], None);
    let note = format!("persist-{}-{:?}", std::process::id(), Instant::now());
    let r = http("POST", &stack.http_url("/api/notes"), Some(&format!("{{\"body\": \"{note}\"}}"))).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let before = stack.container("database");
    // Every container stops cleanly on its stop signal (SIGTERM; the
    // database's is SIGINT, a fast shutdown), well within the timeout.
    let ids: Vec<String> = SERVICES.iter().map(|s| stack.container(s)).collect();
    let started = Instant::now();
    stack.compose_ok(&["stop", "-t", "20"]);
    assert!(started.elapsed() < Duration::from_secs(20), "stop took {:?}", started.elapsed());
    for (service, id) in SERVICES.iter().zip(&ids) {
        let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", id]);
        assert_eq!(code, "0", "{service} did not shut down cleanly:\n{}", stack.logs());
    }
    stack.compose_ok(&["down"]);
    assert!(stack.try_container("database").is_none(), "containers removed");
    docker_ok(&["volume", "inspect", &stack.volume("db_data")]);
    stack.start(&[]);
    assert_ne!(stack.container("database"), before, "a new database container");
    let notes = get_until(&stack.http_url("/api/notes"), 200, Duration::from_secs(30)).json();
    let bodies: Vec<&str> = notes["notes"].as_array().unwrap().iter().map(|n| n["body"].as_str().unwrap()).collect();
    assert!(bodies.contains(&note.as_str()), "{bodies:?}");
}

struct Volume(String);
impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// P11: the database and backend refuse to start, with a message naming the
/// missing mount, when their volumes are missing or mounted elsewhere.
#[test]
fn p11_volume_mount_verification() {
    ready_or_skip!();
    let pid = std::process::id();
    let sock = Volume(format!("cve2e{pid}p11sock"));
    let data = Volume(format!("cve2e{pid}p11data"));
    let s = |target: &str| format!("{}:{target}", sock.0);
    let d = |target: &str| format!("{}:{target}", data.0);
    let db = image("database");
    let be = image("backend");
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (vec![], &db, "/var/run/postgresql is not a mount"),
        (vec![s(SOCKET_DIR)], &db, "/var/lib/postgresql/data is not a mount"),
        (vec![d(PGDATA)], &db, "/var/run/postgresql is not a mount"),
        (vec![s("/srv/socket"), d(PGDATA)], &db, "/var/run/postgresql is not a mount"),
        (vec![s(SOCKET_DIR), d("/srv/data")], &db, "/var/lib/postgresql/data is not a mount"),
        (vec![], &be, "/var/run/postgresql is not a mount"),
        (vec![s("/srv/socket")], &be, "/var/run/postgresql is not a mount"),
    ];
    for (mounts, img, message) in cases {
        let mut args: Vec<String> = Vec::new();
        for m in &mounts {
            args.push("-v".into());
            args.push(m.clone());
        }
        args.push(img.to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_container(&argv, Duration::from_secs(60));
        assert!(!out.status.success(), "{img} {mounts:?} started");
        assert!(text(&out).contains(message), "{img} {mounts:?}: {}", text(&out));
    }
    // Positive control: with the socket volume, the backend gets past the check.
    let c = Container::start(&["-v", &s(SOCKET_DIR), &be]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.logs().contains("listening") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.logs().contains("listening on port"), "{}", c.logs());
    drop(c);
    // And the database with both (the shared stack's is healthy).
    let stack = shared_stack();
    let status = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &stack.container("database")]);
    assert_eq!(status, "healthy");
}

/// Awkward but portable `.env` values: spaces, `#`, `$`, quotes, backslashes,
/// `=`, non-ASCII (see `env_value_is_portable`).
fn env_value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range(' ', '~'),
            1 => prop::sample::select(vec!['ü', 'ß', '€', '✓', '日', '😀', 'é']),
        ],
        1..40,
    )
    .prop_map(|cs| cs.into_iter().collect::<String>())
    .prop_filter("portable in .env", |s| env_value_is_portable(s))
}

/// P12: `${VAR}` values from `.env` reach the containers unchanged (compose's
/// own `config` for many values, one real container for an awkward one).
#[test]
fn p12_environment_variable_interpolation() {
    ready_or_skip!();
    proptest!(proptest_config(100), |(greeting in env_value(), secret in env_value(), tag in "[a-z0-9][a-z0-9._-]{0,20}")| {
        // The backend's image tag and its RELEASE_VERSION are the release that built it.
        let dir = config_dir(&[("APP_GREETING", &greeting), ("APP_SECRET", &secret), ("BACKEND_TAG", &tag)]);
        let cfg = compose_config(dir.path(), "cve2econfig").map_err(TestCaseError::fail)?;
        let env = &cfg["services"]["backend"]["environment"];
        prop_assert_eq!(env["APP_GREETING"].as_str(), Some(greeting.as_str()));
        prop_assert_eq!(env["APP_SECRET"].as_str(), Some(secret.as_str()));
        prop_assert_eq!(env["RELEASE_VERSION"].as_str(), Some(tag.as_str()));
        let want_image = format!("cultivate-backend:{tag}");
        prop_assert_eq!(cfg["services"]["backend"]["image"].as_str(), Some(want_image.as_str()));
    });

    // Defaults when unset.
    let dir = config_dir(&[]);
    let cfg = compose_config(dir.path(), "cve2econfig").unwrap();
    assert_eq!(cfg["services"]["backend"]["environment"]["APP_GREETING"], "Hello from cultivate");
    assert_eq!(cfg["services"]["frontend"]["image"], "cultivate-frontend:latest");

    // A real container.
    let stack = shared_stack();
    let out = stack.exec("backend", None, &[], &["printenv", "APP_GREETING"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), SHARED_GREETING);
    let info = get(&stack.http_url("/api/info")).unwrap().json();
    assert_eq!(info["greeting"], SHARED_GREETING);
    assert_eq!(info["version"], TEST_TAG);
    assert_eq!(info["secretConfigured"], true);
}

/// P13: the certificate directory is mounted read-only into the frontend.
#[test]
fn p13_certificate_mounting() {
    ready_or_skip!();
    let (stack, pair) = tls_stack();
    let c = inspect(&stack.container("frontend"));
    let mounts = c["Mounts"].as_array().unwrap();
    let m = mounts.iter().find(|m| m["Destination"] == CONTAINER_CERT_DIR).expect("certificate directory mounted");
    assert_eq!(m["RW"], false, "read-only: {m}");
    assert_eq!(m["Type"], "bind");
    assert_eq!(m["Source"].as_str().unwrap(), stack.cert_dir().to_str().unwrap());
    let out = stack.exec("frontend", None, &[], &["cat", "/etc/nginx/certs/fullchain.pem"]);
    assert_eq!(out.stdout, pair.cert);
    let out = stack.exec("frontend", None, &[], &["touch", "/etc/nginx/certs/x"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("Read-only file system"), "{}", text(&out));
    for service in ["database", "backend"] {
        let c = inspect(&stack.container(service));
        assert!(
            !c["Mounts"].as_array().unwrap().iter().any(|m| m["Destination"] == CONTAINER_CERT_DIR),
            "{service} does not get the certificates"
        );
    }
    // compose config: read-only, default ./certs next to the compose file.
    let dir = config_dir(&[]);
    let cfg = compose_config(dir.path(), "cve2econfig").unwrap();
    let mounts = volume_mounts(&cfg["services"]["frontend"]);
    let (src, _, ro) = mounts.iter().find(|(_, t, _)| t == CONTAINER_CERT_DIR).expect("cert mount in config");
    assert!(ro, "{mounts:?}");
    let want = dir.path().join("certs");
    assert_eq!(
        Path::new(src).canonicalize().unwrap_or_else(|_| src.into()),
        want.canonicalize().unwrap_or(want.clone()),
    );
}

/// P14: a bad certificate (not PEM, expired, not yet valid, key mismatch) is
/// refused before it is mounted — by `cultivate certs check` (the
/// validation in host/src/certs.rs, also unit- and proptested there) — and,
/// should one get through, at container start: the frontend keeps HTTP only
/// and says why.
#[test]
fn p14_certificate_validation() {
    ready_or_skip!();
    let good = openssl_valid_cert();
    let other = openssl_valid_cert();
    let expired = openssl_cert("20200101000000Z", "20200201000000Z");
    let future = openssl_cert("20990101000000Z", "20991231000000Z");
    // DER instead of PEM.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("c.pem"), &good.cert).unwrap();
    openssl(tmp.path(), &["x509", "-in", "c.pem", "-outform", "DER", "-out", "c.der"]);
    let der = std::fs::read(tmp.path().join("c.der")).unwrap();

    // (case, certificate, key, frontend's message, cultivate's message)
    let cases: Vec<BadPair> = vec![
        (
            "not PEM (garbage)",
            b"hello, not a certificate\n",
            &good.key,
            "not a PEM certificate",
            "is not a PEM certificate",
        ),
        ("not PEM (DER)", &der, &good.key, "not a PEM certificate", "binary data, probably DER"),
        ("key not PEM", &good.cert, b"not a key\n", "not a PEM private key", "is not a PEM private key"),
        ("expired", &expired.cert, &expired.key, "has expired", "expired on 2020-02-01"),
        ("not yet valid", &future.cert, &future.key, "not valid yet", "is not valid before 2099-01-01"),
        ("key mismatch", &good.cert, &other.key, "do not match", "is not the private key of"),
    ];

    // Before mounting: `cultivate certs check` (host/src/certs.rs) refuses
    // each, naming the file; the good pair passes.
    let bin = cultivate_e2e::deploy::binary();
    let cli = |cert: &[u8], key: &[u8]| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("fullchain.pem"), cert).unwrap();
        std::fs::write(d.path().join("privkey.pem"), key).unwrap();
        run(Command::new(&bin)
            .args(["certs", "check", "--cert", "fullchain.pem", "--key", "privkey.pem"])
            .current_dir(d.path()))
    };
    for (what, cert, key, _, message) in &cases {
        let out = cli(cert, key);
        assert!(!out.status.success(), "cultivate accepted {what}: {}", text(&out));
        assert!(text(&out).contains(message), "{what}: {}", text(&out));
        assert!(text(&out).contains(".pem"), "{what}: the message names the file: {}", text(&out));
    }
    let out = cli(&good.cert, &good.key);
    assert!(out.status.success(), "{}", text(&out));
    let soon = openssl_cert(&date_utc("-1 day"), &date_utc("+10 days"));
    let out = cli(&soon.cert, &soon.key);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("expires on"), "expiry warning: {}", text(&out));

    // At container start: the frontend refuses to enable HTTPS with each.
    for (what, cert, key, message, _) in cases {
        let dir = cert_dir(Some(cert), Some(key));
        let (c, http_port, https_port) = frontend_alone(dir.path());
        assert_eq!(served_cert_fingerprint(https_port), None, "{what}: HTTPS enabled");
        let logs = c.logs();
        assert!(logs.contains(message), "{what}: {logs}");
        assert!(logs.contains("HTTPS disabled"), "{what}: {logs}");
        assert_eq!(get(&format!("http://127.0.0.1:{http_port}/")).unwrap().status, 200);
    }
    // Positive control.
    let dir = cert_dir(Some(&good.cert), Some(&good.key));
    let (c, _, https_port) = frontend_alone(dir.path());
    assert_eq!(served_cert_fingerprint(https_port), Some(cert_fingerprint(&good.cert)), "{}", c.logs());
}

/// (case, certificate, key, frontend's message, cultivate's message).
type BadPair<'a> = (&'a str, &'a [u8], &'a [u8], &'a str, &'a str);

/// `date -u -d WHEN` as `YYYYMMDDHHMMSSZ` (openssl ca's format).
fn date_utc(when: &str) -> String {
    run_ok(Command::new("date").args(["-u", "-d", when, "+%Y%m%d%H%M%SZ"])).trim().to_string()
}

fn image_ids() -> Vec<String> {
    SERVICES.iter().map(|s| docker_ok(&["image", "inspect", "-f", "{{.Id}}", &image(s)])).collect()
}

/// P15: after a renewal (files replaced, `nginx -s reload`) the new
/// certificate is served by the same container from the same image.
#[test]
fn p15_certificate_renewal_without_rebuild() {
    ready_or_skip!();
    let old = openssl_valid_cert();
    let new = openssl_valid_cert();
    let images_before = image_ids();
    let stack = Stack::new("p15", &[], Some(&old));
    stack.compose_ok(&["up", "-d", "--no-deps", "frontend"]);
    stack.wait_healthy(&["frontend"], Duration::from_secs(60));
    let id = stack.container("frontend");
    let info_before = inspect(&id);
    assert_eq!(served_cert_fingerprint(stack.https_port), Some(cert_fingerprint(&old.cert)));

    // Renewal as certbot does it: new files, then reload.
    let dir = stack.cert_dir();
    std::fs::write(dir.join("fullchain.pem.new"), &new.cert).unwrap();
    std::fs::write(dir.join("privkey.pem.new"), &new.key).unwrap();
    std::fs::rename(dir.join("privkey.pem.new"), dir.join("privkey.pem")).unwrap();
    std::fs::rename(dir.join("fullchain.pem.new"), dir.join("fullchain.pem")).unwrap();
    let out = stack.exec("frontend", None, &[], &["nginx", "-s", "reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let want = Some(cert_fingerprint(&new.cert));
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_cert_fingerprint(stack.https_port) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_cert_fingerprint(stack.https_port), want, "{}", stack.logs());

    let info_after = inspect(&stack.container("frontend"));
    assert_eq!(stack.container("frontend"), id, "same container");
    assert_eq!(info_after["Image"], info_before["Image"], "same image");
    assert_eq!(info_after["State"]["StartedAt"], info_before["State"]["StartedAt"], "not restarted");
    assert_eq!(image_ids(), images_before, "no image rebuilt");
}

/// Stream `docker save IMAGE` and report whether `needle` occurs in it.
fn image_contains(image: &str, needle: &[u8]) -> bool {
    let mut child =
        Command::new("docker").args(["save", image]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    let mut found = false;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            found = true;
            break;
        }
        let keep = needle.len().saturating_sub(1).min(carry.len());
        carry.drain(..carry.len() - keep);
    }
    drop(out);
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(found || status.success(), "docker save {image} failed");
    found
}

/// No secret from `.env` is in any image layer, the image history or config,
/// the API's answers or the logs — while the running backend does have it.
#[test]
fn secrets_never_in_image_layers() {
    ready_or_skip!();
    let stack = shared_stack();
    let out = stack.exec("backend", None, &[], &["printenv", "APP_SECRET"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SHARED_SECRET, "the secret is in use");
    for path in ["/api/info", "/api/health", "/api/notes"] {
        let r = get(&stack.http_url(path)).unwrap();
        assert!(!r.text().contains(SHARED_SECRET), "{path} echoes the secret");
    }
    assert!(!stack.logs().contains(SHARED_SECRET), "the secret is logged");
    for service in SERVICES {
        let img = image(service);
        let history = docker_ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", &img]);
        assert!(!history.contains(SHARED_SECRET) && !history.contains("APP_SECRET"), "{img}: {history}");
        let config = inspect(&img)["Config"].to_string();
        assert!(!config.contains(SHARED_SECRET) && !config.contains("APP_SECRET"), "{img}: {config}");
        assert!(!image_contains(&img, SHARED_SECRET.as_bytes()), "{img} layers hold the secret");
    }
}

/// `prisma generate` runs at build time exactly when the app has a Prisma
/// schema (with a stand-in `prisma` in node_modules/.bin: the real CLI cannot
/// be installed here), and the build fails clearly when the CLI is missing.
#[test]
fn backend_prisma_generate_at_build_time() {
    ready_or_skip!();
    let root = prereq_root();
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    run_ok(Command::new("cp").arg("-r").arg(root.join("docker")).arg(c));
    run_ok(Command::new("mkdir").arg("-p").arg(c.join("app")));
    run_ok(Command::new("cp").arg("-r").arg(root.join("examples/app/backend")).arg(c.join("app/")));
    let be = c.join("app/backend");
    std::fs::create_dir_all(be.join("prisma")).unwrap();
    std::fs::write(be.join("prisma/schema.prisma"), "generator client {\n  provider = \"prisma-client-js\"\n}\n")
        .unwrap();
    std::fs::create_dir_all(be.join("node_modules/.bin")).unwrap();
    let stand_in = be.join("node_modules/.bin/prisma");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\n# stand-in for the Prisma CLI (no npm registry here)\n\
         [ \"$1\" = generate ] || { echo \"unexpected: $*\" >&2; exit 2; }\n\
         mkdir -p node_modules/.prisma/client\n\
         echo \"generated by stand-in at build time from $(sha256sum prisma/schema.prisma | cut -c1-16)\" \
         > node_modules/.prisma/client/index.js\n",
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("+x").arg(&stand_in));
    let base = std::env::var("CULTIVATE_TEST_BASE_IMAGE").unwrap_or_else(|_| "cultivate/debian:bookworm".to_string());
    let tag = format!("cultivate-backend:e2e-prisma-{}", std::process::id());
    let build = |tag: &str| {
        run(Command::new("docker")
            .args(["build", "--force-rm", "-f", "docker/Dockerfile.backend"])
            .args(["--build-arg", &format!("BASE_IMAGE={base}")])
            .args(["--build-arg", "APP_DIR=app", "-t", tag, "."])
            .current_dir(c))
    };
    let out = build(&tag);
    assert!(out.status.success(), "{}", text(&out));
    let generated = docker(&["run", "--rm", "--entrypoint", "cat", &tag, "/app/node_modules/.prisma/client/index.js"]);
    docker(&["rmi", "-f", &tag]);
    assert!(text(&generated).contains("generated by stand-in at build time"), "{}", text(&generated));

    // Schema but no CLI: the build stops and says what to do.
    std::fs::remove_file(&stand_in).unwrap();
    let out = build(&tag);
    docker(&["rmi", "-f", &tag]);
    assert!(!out.status.success(), "built without a Prisma CLI");
    assert!(text(&out).contains("Prisma CLI was not found"), "{}", text(&out));

    // The example app has no schema: the shipped image skips the step.
    let history = docker_ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", &image("backend")]);
    assert!(history.contains("prisma generate"), "the step is in the Dockerfile");
}
