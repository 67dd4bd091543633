//! The stack: Dockerfiles, compose file, nginx configuration, database
//! initialisation and entrypoints. Built into the binary (the repository's
//! `docker/` and `compose/docker-compose.yml`, byte for byte), so a project
//! needs only `cultivate.toml`, a secrets file and its application.
//! `cultivate stack eject` writes them into the project; a project that has
//! them (or names a `stack_dir`) builds and runs with its own copy.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// One file of the stack: path relative to the stack directory, contents, mode.
#[derive(Debug, Clone, Copy)]
pub struct StackFile {
    /// `docker/Dockerfile.backend`, `compose/docker-compose.yml` …
    pub path: &'static str,
    /// The contents.
    pub data: &'static [u8],
    /// 0o755 for scripts, else 0o644.
    pub mode: u32,
}

macro_rules! stack_files {
    ($( $path:literal => $mode:literal ),* $(,)?) => {
        &[$( StackFile { path: $path, data: include_bytes!(concat!("../../", $path)), mode: $mode } ),*]
    };
}

/// Every file of the built-in stack.
pub const BUILTIN: &[StackFile] = stack_files![
    "compose/docker-compose.yml" => 0o644,
    "docker/Dockerfile.backend" => 0o644,
    "docker/Dockerfile.database" => 0o644,
    "docker/Dockerfile.frontend" => 0o644,
    "docker/backend/entrypoint.sh" => 0o755,
    "docker/backend/healthcheck.sh" => 0o755,
    "docker/build-base-images.sh" => 0o755,
    "docker/build-images.sh" => 0o755,
    "docker/database/entrypoint.sh" => 0o755,
    "docker/database/healthcheck.sh" => 0o755,
    "docker/frontend/entrypoint.sh" => 0o755,
    "docker/frontend/https.conf.template" => 0o644,
    "docker/frontend/locations.conf.template" => 0o644,
    "docker/frontend/nginx.conf" => 0o644,
    "docker/frontend/tls-config.sh" => 0o755,
    "docker/init-db.sh" => 0o755,
    "docker/pg_hba.conf" => 0o644,
];

/// The compose file, relative to a stack directory.
pub const COMPOSE: &str = "compose/docker-compose.yml";

/// The files a stack directory must have for the build and the start.
pub const REQUIRED: &[&str] = &[
    "compose/docker-compose.yml",
    "docker/Dockerfile.backend",
    "docker/Dockerfile.database",
    "docker/Dockerfile.frontend",
];

/// Which stack a project uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stack {
    /// The one built into this cultivate.
    Builtin,
    /// The project's own copy (ejected, or named by `stack_dir`).
    Project(PathBuf),
}

impl Stack {
    /// `stack_dir` when set; else the project's `docker/` and `compose/`
    /// beside `cultivate.toml` when both are there; else the built-in one.
    pub fn locate(stack_dir: Option<&Path>, base_dir: &Path) -> Stack {
        match stack_dir {
            Some(dir) => Stack::Project(dir.to_path_buf()),
            None if base_dir.join(COMPOSE).is_file() && base_dir.join("docker/Dockerfile.backend").is_file() => {
                Stack::Project(base_dir.to_path_buf())
            }
            None => Stack::Builtin,
        }
    }

    /// For the plan and `config check`.
    pub fn describe(&self) -> String {
        match self {
            Stack::Builtin => format!("the stack built into cultivate {}", env!("CARGO_PKG_VERSION")),
            Stack::Project(dir) => format!("the project's own stack in {} (docker/ and compose/)", dir.display()),
        }
    }

    /// The files missing from a project stack, each as (path, fix).
    pub fn problems(&self) -> Vec<String> {
        match self {
            Stack::Builtin => Vec::new(),
            Stack::Project(dir) => REQUIRED
                .iter()
                .filter(|f| !dir.join(f).is_file())
                .map(|f| format!("{} is missing", dir.join(f).display()))
                .collect(),
        }
    }

    /// The compose file's text.
    pub fn compose(&self) -> Result<Vec<u8>> {
        match self {
            Stack::Builtin => Ok(builtin(COMPOSE).map(|f| f.data.to_vec()).unwrap_or_default()),
            Stack::Project(dir) => {
                let path = dir.join(COMPOSE);
                fs_err::read(&path).map_err(|e| {
                    crate::error::usage(format!("cannot read the compose file: {e}"))
                        .hint("set `stack_dir` to the directory holding compose/docker-compose.yml, or remove it to use the built-in stack")
                        .into()
                })
            }
        }
    }
}

/// The marker line after which the names of the `[env]` keys and secrets go.
pub const ENV_MARKER: &str = "# cultivate: every [env] key and secret is added here";

/// The compose file a release runs with: `compose` with, after each
/// [`ENV_MARKER`], a `KEY: ${KEY}` line for every name in `keys` that its
/// `environment:` block does not pass already. Only names: the values stay in
/// the `.env` (mode 0600), which compose reads. A compose file without the
/// marker is refused when there are names to pass.
pub fn render_compose(compose: &[u8], keys: &[&str]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(compose);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len() + keys.len() * 40);
    let mut markers = 0;
    // The lines to add once the marker's comment ends.
    let mut pending: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if pending.is_some() && !trimmed.starts_with('#') {
            out.push_str(&pending.take().unwrap_or_default());
        }
        out.push_str(line);
        if !trimmed.starts_with(ENV_MARKER) {
            continue;
        }
        markers += 1;
        let indent = &line[..line.len() - trimmed.len()];
        // The names this block already passes: back to its `environment:`.
        let present: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .take_while(|l| !l.trim_end().ends_with("environment:"))
            .filter_map(|l| l.trim_start().split_once(':').map(|(k, _)| k))
            .collect();
        let block: String =
            keys.iter().filter(|k| !present.contains(k)).map(|k| format!("{indent}{k}: ${{{k}}}\n")).collect();
        pending = Some(block);
    }
    if let Some(block) = pending {
        out.push_str(&block);
    }
    if markers == 0 && !keys.is_empty() {
        return Err(format!(
            "the compose file has no `{ENV_MARKER}` line in the backend's environment, so {} cannot reach the backend",
            keys.join(", ")
        ));
    }
    Ok(out.into_bytes())
}

fn builtin(path: &str) -> Option<&'static StackFile> {
    BUILTIN.iter().find(|f| f.path == path)
}

/// Writes the built-in stack into `dir`; refuses to overwrite any file unless `force`.
/// Returns the paths written.
pub fn eject(dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let existing: Vec<String> =
        BUILTIN.iter().map(|f| dir.join(f.path)).filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
    if !existing.is_empty() && !force {
        return Err(crate::error::usage(format!("the stack files are already there: {}", existing.join(", ")))
            .hint("pass --force to overwrite them with the built-in stack")
            .into());
    }
    let mut written = Vec::new();
    for f in BUILTIN {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::write(&path, f.data)?;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// The built-in stack is the repository's docker/ and compose file, every file of them.
    #[test]
    fn builtin_is_the_repository_stack() {
        let mut on_disk = Vec::new();
        let mut dirs = vec![repo().join("docker")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    on_disk.push(p.strip_prefix(repo()).unwrap().display().to_string());
                }
            }
        }
        on_disk.push(COMPOSE.to_string());
        on_disk.sort();
        let mut embedded: Vec<String> = BUILTIN.iter().map(|f| f.path.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add every stack file to stack::BUILTIN");
        for f in BUILTIN {
            use std::os::unix::fs::PermissionsExt;
            let p = repo().join(f.path);
            assert_eq!(std::fs::read(&p).unwrap(), f.data, "{}", f.path);
            let exec = std::fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0;
            assert_eq!(exec, f.mode == 0o755, "{}: mode", f.path);
        }
    }

    #[test]
    fn compose_gets_every_name_and_no_value() {
        let base = builtin(COMPOSE).unwrap().data;
        let out = render_compose(base, &["APP_SECRET", "DATABASE_URL_EXTRA", "FEATURE_X"]).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Backend and release both get the new names, once each; the backend keeps its one APP_SECRET line.
        assert_eq!(text.matches("      FEATURE_X: ${FEATURE_X}\n").count(), 2, "{text}");
        assert_eq!(text.matches("DATABASE_URL_EXTRA: ${DATABASE_URL_EXTRA}").count(), 2);
        assert_eq!(text.matches("      APP_SECRET: ").count(), 2, "backend's own line plus the release's");
        assert_eq!(render_compose(base, &[]).unwrap(), base, "nothing to add, nothing changed");
        let err = render_compose(b"services: {}\n", &["A"]).unwrap_err();
        assert!(err.contains("cannot reach the backend"), "{err}");
        assert_eq!(render_compose(b"services: {}\n", &[]).unwrap(), b"services: {}\n");
    }

    proptest::proptest! {
        /// Whatever the names, each reaches both services exactly once, by name
        /// (`KEY: ${KEY}`), and nothing else of the file changes.
        #[test]
        fn every_name_once_per_service(keys in proptest::collection::btree_set("[A-Z][A-Z0-9_]{0,12}", 0..12)) {
            let base = builtin(COMPOSE).unwrap().data;
            let keys: Vec<&str> = keys.iter().map(String::as_str).filter(|k| crate::settings::reserved(k).is_none()).collect();
            let out = String::from_utf8(render_compose(base, &keys).unwrap()).unwrap();
            let original = String::from_utf8_lossy(base);
            for k in &keys {
                let line = format!("      {k}: ${{{k}}}\n");
                let already = original.matches(&format!("      {k}: ")).count();
                proptest::prop_assert_eq!(out.matches(&line).count() + already, 2, "{}", k);
            }
            let removed: String = out.lines().filter(|l| !keys.iter().any(|k| *l == format!("      {k}: ${{{k}}}"))).map(|l| format!("{l}\n")).collect();
            proptest::prop_assert_eq!(removed, original.to_string());
        }
    }

    /// The backend's health check run by bash against 127.0.0.1:`port`
    /// (the repository's file, which `builtin_is_the_repository_stack` holds
    /// equal to the embedded one), without a HEALTH_PATH of the caller's.
    fn backend_check_command(port: u16) -> std::process::Command {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(repo().join("docker/backend/healthcheck.sh")).env("PORT", port.to_string()).env_remove("HEALTH_PATH");
        cmd
    }

    /// Runs the backend's health check (the built-in script, with bash)
    /// against `answer` served on a local port; returns its exit status,
    /// stderr and the request line the server got.
    fn backend_check(answer: Option<&'static str>, health_path: Option<&str>) -> (Option<i32>, String, String) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            tx.send(line.trim_end().to_string()).unwrap();
            // The rest of the header, as an HTTP server reads it before answering.
            let mut header = String::new();
            while reader.read_line(&mut header).unwrap() > 0 && !header.ends_with("\r\n\r\n") {}
            match answer {
                Some(a) => (&stream).write_all(a.as_bytes()).unwrap(),
                // Never answers; holds the connection until the check gives up.
                None => std::thread::sleep(std::time::Duration::from_secs(6)),
            }
        });
        let mut cmd = backend_check_command(port);
        if let Some(p) = health_path {
            cmd.env("HEALTH_PATH", p);
        }
        let out = cmd.output().unwrap();
        let request = rx.recv().unwrap();
        server.join().unwrap();
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&out.status) {
            stderr.push_str(&format!("(killed by signal {signal})"));
        }
        (out.status.code(), stderr, request)
    }

    #[test]
    fn backend_health_check_passes_only_on_200() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
        let (code, stderr, request) = backend_check(Some(ok), None);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(request, "GET /health HTTP/1.0");

        let (code, _, request) = backend_check(Some(ok), Some("/api/ready"));
        assert_eq!(code, Some(0));
        assert_eq!(request, "GET /api/ready HTTP/1.0", "HEALTH_PATH is the route asked for");

        let down = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        let (code, stderr, _) = backend_check(Some(down), None);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("answered \"HTTP/1.1 503 Service Unavailable\""), "{stderr}");

        let (code, stderr, _) = backend_check(Some("HTTP/1.1 2000 nonsense\r\n\r\n"), None);
        assert_eq!(code, Some(1), "{stderr}");

        let (code, stderr, _) = backend_check(None, None);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("no answer to GET /health in 4 s"), "{stderr}");
    }

    #[test]
    fn backend_health_check_fails_when_nothing_listens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = backend_check_command(port).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("nothing listens on 127.0.0.1:{port}")), "{stderr}");
    }

    #[test]
    fn eject_writes_then_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let written = eject(dir.path(), false).unwrap();
        assert_eq!(written.len(), BUILTIN.len());
        assert_eq!(Stack::locate(None, dir.path()), Stack::Project(dir.path().to_path_buf()));
        let err = eject(dir.path(), false).unwrap_err();
        assert!(format!("{err:#}").contains("already there"), "{err:#}");
        eject(dir.path(), true).unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Stack::locate(None, empty.path()), Stack::Builtin);
        assert!(Stack::Project(empty.path().into()).problems().len() == REQUIRED.len());
    }
}
