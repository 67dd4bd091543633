//! The shared deploy, health and rollback pipeline. Plugins supply images,
//! stacks and transports; the order, the checks and the rollback live here.
//!
//! Deploy stages, in order ([`Stage`]):
//! 1. connect and verify the connection (P16); probe the OS and the runtimes;
//! 2. check or install Docker and Compose (P18, P19);
//! 3. take the target's lock;
//! 4. build the images and tag them with the release version (P29);
//! 5. send the layers the target lacks and verify the image IDs (P20, P21);
//! 6. upload the compose file, `.env` (0600) and certificates (P22);
//! 7. record the release; `compose up`; wait for every container to be healthy (P23);
//! 8. on success move `current` to it; on failure capture diagnostics and
//!    roll back to `current`, then check that it is healthy (P24, P31);
//! 9. persist the deploy log on the target (P34) and release the lock.

pub mod build;
pub mod deploy;
pub mod envfile;
pub mod health;
pub mod local_finch;
pub mod lock;
pub mod oci_archive;
pub mod progress;
pub mod release;
pub mod rollback;
pub mod state;
pub mod switch;
pub mod transfer;

use std::time::Instant;

use anyhow::{Context, Result};
use cultivate_plugin_api::ops::{self, Operation, StackRef};
use cultivate_plugin_api::{ExecRequest, LoadedPlugin};

use crate::error::{Code, UserError};
use crate::output::Printer;
use crate::plugins::{select_runtimes, Registry, RuntimeSelection};
use crate::session::Session;
use crate::settings::Settings;
use crate::target::Target;
use release::{Layout, ReleaseRecord};

/// The stages of a deploy, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Connect and verify; failing changes nothing.
    Connect,
    /// Probe OS and runtimes; failing changes nothing.
    Probe,
    /// Check or install Docker and Compose; failing changes nothing but what the installer did.
    Dependencies,
    /// Take the deploy lock; failing means another deploy runs.
    Lock,
    /// Build images; failing changes nothing on the target.
    Build,
    /// Send images; failing leaves only unused images on the target.
    TransferImages,
    /// Upload configuration into a new release directory; failing leaves the old release running.
    TransferConfig,
    /// Start the new release.
    Up,
    /// Wait for health; failing triggers the rollback.
    Health,
    /// Move `current` and prune old releases.
    Commit,
    /// Go back to the previous release.
    Rollback,
    /// Write the deploy log on the target.
    PersistLogs,
}

impl Stage {
    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Probe => "probe",
            Stage::Dependencies => "dependencies",
            Stage::Lock => "lock",
            Stage::Build => "build",
            Stage::TransferImages => "transfer images",
            Stage::TransferConfig => "transfer configuration",
            Stage::Up => "start",
            Stage::Health => "health",
            Stage::Commit => "commit",
            Stage::Rollback => "rollback",
            Stage::PersistLogs => "persist logs",
        }
    }
}

/// Timings of the stages run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Timings(pub Vec<(Stage, f64)>);

impl Timings {
    /// Runs `f` as `stage`, recording its wall time.
    pub fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.push((stage, start.elapsed().as_secs_f64()));
        out
    }

    /// Records `stage` as having run since `start`.
    pub fn record(&mut self, stage: Stage, start: Instant) {
        self.0.push((stage, start.elapsed().as_secs_f64()));
    }

    /// `connect 0.12s, probe 0.30s, …`.
    pub fn summary(&self) -> String {
        self.0.iter().map(|(s, t)| format!("{} {t:.2}s", s.label())).collect::<Vec<_>>().join(", ")
    }
}

/// The log of one deploy, kept in memory and written to the target at the end (P34).
#[derive(Debug, Default, Clone)]
pub struct DeployLog {
    lines: Vec<String>,
}

impl DeployLog {
    /// Records a line with an ISO 8601 timestamp and a level (P32).
    pub fn record(&mut self, level: &str, message: &str) {
        let message = crate::redact::apply(message);
        for line in message.lines() {
            self.lines.push(format!("{} {level:<5} {line}", release::now_iso()));
        }
    }

    /// The whole log, redacted again on its way out: a secret registered after
    /// a line was recorded is hidden too.
    pub fn text(&self) -> String {
        let mut s = self.lines.iter().map(|l| crate::redact::apply(l)).collect::<Vec<_>>().join("\n");
        s.push('\n');
        s
    }
}

/// Everything a pipeline run holds.
pub struct Ctx<'a> {
    /// Settings.
    pub settings: &'a Settings,
    /// Output.
    pub printer: &'a Printer,
    /// The connection.
    pub session: Session,
    /// Chosen runtimes.
    pub runtimes: RuntimeSelection,
    /// Deploy directory layout.
    pub layout: Layout,
    /// The deploy log.
    pub log: DeployLog,
    /// Stage timings.
    pub timings: Timings,
    /// The deployment as last read from the target in one command
    /// ([`state`]): by `connect` (with the secrets), then by `lock` in the
    /// command that takes the lock. What the run itself changes afterwards
    /// is not in it: callers use it for what they read right after.
    pub state: Option<state::TargetState>,
    /// The configuration hashes the last switch asked compose for: `(version, hashes)`.
    pub hashes: Option<(String, std::collections::BTreeMap<String, String>)>,
    /// The image runtime plugin.
    pub images: LoadedPlugin,
    /// The stack runtime plugin.
    pub stack: LoadedPlugin,
}

impl<'a> Ctx<'a> {
    /// Prints and records a status line.
    pub fn status(&mut self, text: &str) {
        self.printer.status(text);
        self.log.record("INFO", text);
    }

    /// Prints and records a detail line.
    pub fn detail(&mut self, text: &str) {
        self.printer.detail(text);
        self.log.record("INFO", text);
    }

    /// Prints and records a warning.
    pub fn warn(&mut self, text: &str) {
        self.printer.warn(text);
        self.log.record("WARN", text);
    }

    /// The compose project of a release.
    pub fn stack_ref(&self, version: &str) -> StackRef {
        StackRef {
            project: self.settings.project.clone(),
            dir: self.layout.release(version),
            files: vec!["docker-compose.yml".into()],
            env_file: Some(".env".into()),
        }
    }

    /// Calls a typed operation on the stack runtime.
    pub fn stack_op<O: ops::Operation>(&self, req: &O::Request) -> Result<O::Response> {
        let host = self.session.host().for_plugin(&self.stack.manifest().name);
        self.stack.call::<O>(&host, req).with_context(|| format!("{} via {}", O::NAME, self.stack.manifest().name))
    }

    /// Calls a typed operation on the image runtime.
    pub fn images_op<O: ops::Operation>(&self, req: &O::Request) -> Result<O::Response> {
        let host = self.session.host().for_plugin(&self.images.manifest().name);
        self.images.call::<O>(&host, req).with_context(|| format!("{} via {}", O::NAME, self.images.manifest().name))
    }

    /// The version `current` points at.
    pub fn current_version(&self) -> Result<Option<String>> {
        let out = self.session.run(&ExecRequest::new(["readlink", &self.layout.current()]))?;
        if !out.success() {
            return Ok(None);
        }
        Ok(out.stdout.trim().rsplit('/').next().map(str::to_string).filter(|v| crate::settings::valid_version(v)))
    }

    /// The stack runtime as its configuration hashes depend on it: its
    /// version and compose flavour (`1.29.2 v1`), when it said.
    pub fn stack_runtime_version(&self) -> Option<String> {
        let probe = self.runtimes.stack.probe.as_ref().ok()?;
        let version = probe.version.clone()?;
        Some(match probe.details.get("flavour") {
            Some(f) => format!("{version} {f}"),
            None => version,
        })
    }

    /// The configuration hashes `record` holds, when they are valid for this
    /// run's stack runtime (the same plugin, version and flavour recorded them).
    pub fn recorded_hashes(&self, record: &ReleaseRecord) -> Option<std::collections::BTreeMap<String, String>> {
        let same_plugin = record.runtime.get("stack") == Some(&self.stack.manifest().name);
        let recorded = record.runtime.get("stack_version");
        let same_version = recorded.is_some() && recorded.cloned() == self.stack_runtime_version();
        (!record.config_hashes.is_empty() && same_plugin && same_version).then(|| record.config_hashes.clone())
    }

    /// A release's configuration hashes: those its record holds (see
    /// [`Ctx::recorded_hashes`]), else compose's answer now.
    pub fn service_hashes(&self, record: &ReleaseRecord) -> Result<std::collections::BTreeMap<String, String>> {
        if let Some(h) = self.recorded_hashes(record) {
            tracing::debug!("configuration hashes of release {} from its record", record.version);
            return Ok(h);
        }
        self.stack_op::<ops::StackServiceHashes>(&self.stack_ref(&record.version))
    }

    /// Keeps in `record` the configuration hashes the switch to it used,
    /// with the stack runtime they are valid for.
    pub fn keep_hashes(&self, record: &mut ReleaseRecord) {
        match &self.hashes {
            Some((v, h)) if *v == record.version && !h.is_empty() => {
                if let Some(rv) = self.stack_runtime_version() {
                    record.config_hashes = h.clone();
                    record.runtime.insert("stack_version".to_string(), rv);
                }
            }
            _ => {}
        }
    }

    /// Reads the deployment's state in one command (see [`state`]).
    pub fn read_state(&self) -> Result<state::TargetState> {
        let out = self.session.sh(&state::script(&self.layout, false))?;
        Ok(state::parse(&out.stdout))
    }

    /// Reads a release's record.
    pub fn read_record(&self, version: &str) -> Result<Option<ReleaseRecord>> {
        let path = format!("{}/release.json", self.layout.release(version));
        let out = self.session.run(&ExecRequest::new(["cat", &path]))?;
        if !out.success() {
            return Ok(None);
        }
        Ok(serde_json::from_str(&out.stdout).ok())
    }

    /// Writes a release's record.
    pub fn write_record(&self, record: &ReleaseRecord) -> Result<()> {
        let path = format!("{}/release.json", self.layout.release(&record.version));
        let json = serde_json::to_vec_pretty(record)?;
        self.session.put_file(&path, 0o644, &json)
    }

    /// Releases on the target, oldest first.
    pub fn list_releases(&self) -> Result<Vec<String>> {
        let out = self.session.run(&ExecRequest::new(["ls", "-1", &self.layout.releases()]))?;
        Ok(if out.success() { release::parse_release_list(&out.stdout) } else { Vec::new() })
    }

    /// Points `current` at `version`, atomically.
    pub fn set_current(&self, version: &str) -> Result<()> {
        let tmp = format!("{}.tmp", self.layout.current());
        let q = cultivate_plugin_api::shell::quote;
        // A release made current runs: a `cultivate stop` before it is over.
        self.session.sh(&format!(
            "ln -sfn {} {} && {} && rm -f {}",
            q(&format!("releases/{version}")),
            q(&tmp),
            mv_replace(&self.session.info, &q(&tmp), &q(&self.layout.current())),
            q(&self.layout.stopped())
        ))?;
        Ok(())
    }

    /// Waits for the release's stack to be healthy.
    pub fn wait_healthy(&mut self, version: &str) -> Result<Result<Vec<ops::ServiceState>, health::HealthFailure>> {
        let stack = self.stack_ref(version);
        let printer = self.printer.clone();
        let mut last = String::new();
        let this = &*self;
        health::wait(
            &self.settings.health,
            &build::SERVICES,
            || this.stack_op::<ops::StackPs>(&stack),
            |waiting| {
                let line = format!("waiting for {}", waiting.join(", "));
                if line != last {
                    printer.detail(&line);
                    last = line;
                }
            },
        )
    }

    /// Collects diagnostics of a failed stack: states, health logs and the last log lines (P33).
    pub fn diagnostics(&mut self, version: &str) -> String {
        let stack = self.stack_ref(version);
        let mut text = String::new();
        match self.stack_op::<ops::StackPs>(&stack) {
            Ok(states) => {
                for s in &states {
                    text.push_str(&format!(
                        "{}: {}{}{}\n",
                        s.service,
                        s.state,
                        s.health.as_deref().map(|h| format!(" ({h})")).unwrap_or_default(),
                        s.exit_code
                            .filter(|_| s.state != "running")
                            .map(|c| format!(", exit code {c}"))
                            .unwrap_or_default()
                    ));
                    if let Some(log) = s.health_log.as_deref().filter(|l| !l.trim().is_empty()) {
                        text.push_str(&format!("  last health check: {}\n", log.trim()));
                    }
                }
            }
            Err(e) => text.push_str(&format!("(container states unavailable: {e:#})\n")),
        }
        let logs = ops::StackLogsRequest { stack, services: Vec::new(), tail: Some(60) };
        match self.stack_op::<ops::StackLogs>(&logs) {
            Ok(t) => {
                text.push_str("--- container logs (last 60 lines each) ---\n");
                text.push_str(&t.text);
            }
            Err(e) => text.push_str(&format!("(container logs unavailable: {e:#})\n")),
        }
        crate::redact::apply(&text)
    }

    /// Takes the target's deploy lock (taking over a stale one, see
    /// [`lock`]), or fails naming who holds it.
    pub fn lock(&mut self, what: &str) -> Result<()> {
        let printer = self.printer;
        let read = state::script(&self.layout, false);
        let out = lock::acquire(&self.session, &self.layout, what, &|w| printer.warn(w), Some(&read))?;
        self.state = match out {
            Some(out) => Some(state::parse(&out)),
            // A takeover cleaned up in between: read again.
            None => self.read_state().ok(),
        };
        self.log.record("INFO", &format!("took the lock {} for {what}", self.layout.lock()));
        // A signal that came while the lock was being taken: give it back
        // here, since a caller does not unlock after `lock` failed.
        crate::interrupt::check().inspect_err(|_| self.unlock())
    }

    /// A safe point between stages: stops here when a signal came
    /// ([`crate::interrupt`]) and renews this run's lease on the lock.
    pub fn checkpoint(&self, what: &str) -> Result<()> {
        crate::interrupt::check()?;
        self.renew_lock(what);
        Ok(())
    }

    /// Renews this run's lease on the lock; called at each stage (see [`lock`]).
    pub fn renew_lock(&self, what: &str) {
        if let Err(e) = lock::renew(&self.session, &self.layout, what) {
            tracing::warn!("could not renew the lock {}: {e:#}", self.layout.lock());
        }
    }

    /// Releases the deploy lock.
    pub fn unlock(&self) {
        lock::release(&self.session, &self.layout);
    }

    /// Writes the deploy log to the target and applies the retention policy (P34).
    pub fn persist_log(&mut self, name: &str) {
        let path = format!("{}/{name}", self.layout.logs());
        let text = self.log.text();
        let days = self.settings.log_retention_days;
        let q = cultivate_plugin_api::shell::quote;
        // The logs directory is private (0700) and so is every log in it (0600),
        // including those written by earlier versions with wider modes.
        let result = self
            .session
            .sh(&format!("mkdir -p -m 700 {dir} && chmod 700 {dir}", dir = q(&self.layout.logs())))
            .and_then(|_| self.session.put_file(&path, 0o600, text.as_bytes()))
            .and_then(|_| {
                self.session.sh(&format!(
                    "find {dir} -maxdepth 1 -name '*.log' -type f -mtime +{days} -delete; \
                     ls -1t {dir}/*.log 2>/dev/null | tail -n +201 | while IFS= read -r f; do rm -f \"$f\"; done; \
                     find {dir} -maxdepth 1 -name '*.log' -type f ! -perm 600 -exec chmod 600 {{}} +",
                    dir = q(&self.layout.logs())
                ))?;
                Ok(())
            });
        match result {
            Ok(()) => tracing::info!("deploy log written to {path}"),
            Err(e) => self.printer.warn(&format!("could not write the deploy log to {path}: {e:#}")),
        }
    }
}

/// A shell command that renames `src` (quoted) to `dest` (quoted), replacing
/// `dest` itself even when it is a symbolic link to a directory: GNU mv's
/// `-T`, which macOS's BSD mv lacks; its `-h` does the same there. `info` is
/// the probed target.
pub fn mv_replace(info: &cultivate_plugin_api::TargetInfo, src: &str, dest: &str) -> String {
    if info.os_key() == "darwin" {
        format!("mv -fh {src} {dest}")
    } else {
        format!("mv -Tf {src} {dest}")
    }
}

/// Default deploy directory for the target's OS.
pub fn deploy_path(settings: &Settings, session: &Session) -> Result<String> {
    let home = session.info.home.clone().unwrap_or_else(|| "/root".into());
    let macos = session.info.os_key() == "darwin";
    let raw = settings.deploy_path.clone().unwrap_or_else(|| {
        if macos {
            crate::settings::DEFAULT_DEPLOY_PATH_MACOS.to_string()
        } else {
            crate::settings::DEFAULT_DEPLOY_PATH_LINUX.to_string()
        }
    });
    let path = match raw.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", home.trim_end_matches('/')),
        None => raw,
    };
    if macos {
        for bad in ["/opt", "/var", "/etc", "/usr", "/tmp", "/private"] {
            if path == bad || path.starts_with(&format!("{bad}/")) {
                return Err(crate::error::usage(format!(
                    "deploy_path {path} is outside the Finch VM's reach on macOS (it sees only the home directory, and /Volumes once shared with it)"
                ))
                .hint("set deploy_path = \"~/cultivate\"")
                .into());
            }
        }
    }
    Ok(path)
}

/// Connects, probes, and picks the runtimes; installs missing dependencies when allowed.
pub fn connect<'a>(settings: &'a Settings, printer: &'a Printer, install_deps: bool) -> Result<Ctx<'a>> {
    let registry = Registry::load_default();
    for f in &registry.failures {
        printer.warn(&format!("plugin {} not loaded: {}", f.path.display(), f.reason));
    }
    registry.ensure_not_empty()?;
    let target = Target::parse(&settings.target)?;
    crate::secrets::register_configured(settings, printer);
    let mut timings = Timings::default();
    let mut log = DeployLog::default();
    printer.status(&format!("connecting to {target}"));
    let flags = crate::cli::TargetArgs::default();
    let opts = crate::settings::connect_options(&flags, Some(settings));
    // The first command also probes the runtimes and reads the deployment
    // (with its secrets): one round trip for what used to take six.
    let (prelude, read_state) = state::prefetch(settings.deploy_path.as_deref());
    let session = timings
        .time(Stage::Connect, || Session::connect_with(&registry, &target, &opts, Some((&prelude, &read_state))))?;
    log.record(
        "INFO",
        &format!("connected to {target} via {} ({} {})", session.transport, session.info.os, session.info.arch),
    );
    let mut probes = timings.time(Stage::Probe, || registry.probe_runtimes(session.host(), &session.info));
    let mut selection = select_runtimes(&probes, settings.runtime.as_deref());
    if selection.is_err() {
        if let Some(e) = daemon_down(&probes, &session) {
            return Err(e.into());
        }
    }
    if selection.is_err() && install_deps {
        timings.time(Stage::Dependencies, || install_dependencies(&registry, &session, printer, &mut log))?;
        probes = registry.probe_runtimes(session.host(), &session.info);
        selection = select_runtimes(&probes, settings.runtime.as_deref());
    }
    let runtimes = match selection {
        Ok(s) => s,
        // `--runtime NAME` that is not there: its reason and what is there say it all.
        Err(e)
            if e.code == Code::RuntimeMissing && settings.runtime.is_some() && e.message.starts_with("--runtime ") =>
        {
            return Err(e.into())
        }
        Err(e) if e.code == Code::RuntimeMissing && !install_deps => {
            let help = install_help(&registry, &session);
            let base = e.hint.clone().unwrap_or_default();
            // The selection's hint usually offers --install-deps already.
            let offer = if base.contains("--install-deps") {
                ""
            } else {
                "\nor let cultivate do it: cultivate deploy --install-deps"
            };
            let hint = format!(
                "{}{offer}{}",
                base,
                if help.is_empty() {
                    String::new()
                } else {
                    format!("\nto install by hand on the target:\n  {}", help.join("\n  "))
                }
            );
            return Err(UserError::new(Code::RuntimeMissing, e.message).hint(hint).into());
        }
        Err(e) => return Err(e.into()),
    };
    for p in [&runtimes.images, &runtimes.stack] {
        if let Ok(probe) = &p.probe {
            let extra = probe.details.get("flavour").map(|f| format!(" (compose {f})")).unwrap_or_default();
            printer.detail(&format!("{} {}{extra}", p.plugin.manifest().name, probe.version.as_deref().unwrap_or("")));
            log.record(
                "INFO",
                &format!("runtime {} {}{extra}", p.plugin.manifest().name, probe.version.as_deref().unwrap_or("")),
            );
        }
    }
    let layout = Layout::new(&deploy_path(settings, &session)?);
    let prefetched = session.take_prefetched().filter(|o| o.success());
    let state = match prefetched.as_ref().and_then(|o| state::prefetched(&o.stdout, &layout.root)) {
        Some(out) => Some(crate::secrets::register_from_output(out)),
        // Another directory than the one the first command guessed (or it did not run): read it now.
        None => crate::secrets::register_from_target(&session, &layout),
    };
    if let Some((other, version)) = state.as_ref().and_then(|s| s.foreign_release(&settings.project)) {
        return Err(foreign_project(settings, &layout, &session, &other, &version).into());
    }
    Ok(Ctx {
        settings,
        printer,
        images: runtimes.images.plugin.clone(),
        stack: runtimes.stack.plugin.clone(),
        session,
        runtimes,
        layout,
        log,
        timings,
        state,
        hashes: None,
    })
}

/// The refusal to act on a deploy directory that holds another project's
/// releases: its `current`, its lock and its edge would be shared, so a
/// deploy would take the other's release for its own and a rollback would
/// start the other's images under this project's name.
fn foreign_project(settings: &Settings, layout: &Layout, session: &Session, other: &str, version: &str) -> UserError {
    let own = own_directory(&layout.root, &settings.project);
    UserError::new(
        Code::Usage,
        format!(
            "the deploy directory {} on {} holds project `{other}` (release {version}), not `{}`: \
             two projects cannot share a deploy directory",
            layout.root, session.target, settings.project
        ),
    )
    .hint(format!(
        "give this project a directory of its own: deploy_path = \"{own}\" in the configuration \
         (or CULTIVATE_DEPLOY_PATH={own}); if it is `{other}` renamed, set project = \"{other}\" back; \
         nothing was changed on the target"
    ))
}

/// A directory to offer `project` beside `root`, which another project
/// holds: `root`'s sibling named after the project (`/opt/cultivate` →
/// `/opt/blog`), never inside `root` (where a project named `releases`
/// would land in the other's files), else `root-project`.
fn own_directory(root: &str, project: &str) -> String {
    let root = root.trim_end_matches('/');
    match root.rsplit_once('/') {
        Some((parent, name)) if name != project => format!("{parent}/{project}"),
        _ => format!("{root}-{project}"),
    }
}

/// An error caused by a full filesystem on the target, made to say which:
/// `df` of the deploy directory and of the engine's data root, with what to
/// do. Any other error comes back as it is.
pub fn explain_disk_full(ctx: &Ctx<'_>, err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    let lower = text.to_ascii_lowercase();
    // A full tmpfs makes a shell's printf fail with "I/O error", not ENOSPC:
    // any failed write may be a full disk, so look when one is likely.
    let suspect = ["no space left", "i/o error", "cannot create", "write", "did not arrive intact", "load"]
        .iter()
        .any(|w| lower.contains(w));
    if !suspect || matches!(err.downcast_ref::<UserError>(), Some(u) if u.code == Code::Locked) {
        return err;
    }
    let q = cultivate_plugin_api::shell::quote;
    let df = ctx
        .session
        .sh(&format!(
            "root=$(docker info --format '{{{{.DockerRootDir}}}}' 2>/dev/null); df -P -k {} $root 2>/dev/null; true",
            q(&ctx.layout.root)
        ))
        .map(|o| o.stdout)
        .unwrap_or_default();
    let full = full_filesystems(&df);
    if full.is_empty() && !lower.contains("no space left") {
        return err;
    }
    let filesystems = if full.is_empty() { describe_df(&df) } else { full };
    let code = crate::error::exit_code(&err);
    let code = [Code::RolledBack, Code::RollbackFailed].into_iter().find(|c| *c as i32 == code).unwrap_or(Code::Failed);
    UserError::new(
        code,
        format!(
            "{text}: a filesystem on {} is full ({})",
            ctx.session.target,
            if filesystems.is_empty() { "df gave nothing".to_string() } else { filesystems.join("; ") }
        ),
    )
    .hint(
        "free space there, then deploy again: old images (`docker image prune`), old logs, or fewer \
         releases kept (`releases_kept`); nothing of this release was made current",
    )
    .into()
}

/// The filesystems of `df -P -k` output with less than 1 MiB free, described.
pub fn full_filesystems(df: &str) -> Vec<String> {
    describe_df(df)
        .into_iter()
        .filter(|d| {
            d.rsplit_once(": ")
                .and_then(|(_, free)| free.trim_end_matches(" KiB free").parse::<u64>().ok())
                .is_some_and(|kib| kib < 1024)
        })
        .collect()
}

/// `df -P -k` output as `/mnt (tmpfs, 256 KiB): 0 KiB free` per filesystem, each once.
pub fn describe_df(df: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in df.lines().skip_while(|l| l.starts_with("Filesystem")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0] == "Filesystem" {
            continue;
        }
        let (size, avail) = (f[1].parse::<u64>().unwrap_or(0), f[3].parse::<u64>().unwrap_or(0));
        let entry = format!("{} ({}, {} KiB): {} KiB free", f[5], f[0], size, avail);
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// When Docker is installed but its daemon does not answer: an error that
/// says so and how to start it (installing would not help).
fn daemon_down(probes: &[crate::plugins::ProbeResult], session: &Session) -> Option<UserError> {
    let down = probes.iter().find(|p| {
        matches!(&p.probe, Ok(probe) if !probe.available
            && probe.details.get("daemon").is_some_and(|d| d == "unreachable"))
    })?;
    Some(
        UserError::new(
            Code::RuntimeMissing,
            format!(
                "the Docker daemon on {} is not running or not reachable ({}); nothing was changed",
                session.target,
                down.reason()
            ),
        )
        .hint(daemon_start_hint(session.info.os_key() == "darwin")),
    )
}

/// How to start a stopped Docker daemon, with and without systemd.
pub fn daemon_start_hint(macos: bool) -> String {
    if macos {
        return "start Docker Desktop (or `finch vm start` for Finch), then deploy again".to_string();
    }
    [
        "start it on the target, then deploy again:",
        "  with systemd:    sudo systemctl start docker    (and `sudo systemctl enable docker` to keep it across reboots)",
        "  without systemd: sudo service docker start, or sudo dockerd >/var/log/dockerd.log 2>&1 &",
        "  check:           docker info",
    ]
    .join("\n")
}

fn install_help(registry: &Registry, session: &Session) -> Vec<String> {
    let req = ops::InstallRequest { target: session.info.clone() };
    let mut lines = Vec::new();
    for name in ["docker", "docker-compose"] {
        if let Some(p) = registry.get(name).filter(|p| p.manifest().implements(ops::InstallHelp::NAME)) {
            if let Ok(help) = p.call::<ops::InstallHelp>(&session.host().for_plugin(name), &req) {
                // Both plugins start with `apt-get update`; say it once.
                for line in help.lines {
                    if !lines.contains(&line) {
                        lines.push(line);
                    }
                }
            }
        }
    }
    lines
}

fn install_dependencies(registry: &Registry, session: &Session, printer: &Printer, log: &mut DeployLog) -> Result<()> {
    let req = ops::InstallRequest { target: session.info.clone() };
    for name in ["docker", "docker-compose"] {
        let Some(plugin) = registry.get(name) else { continue };
        let host = session.host().for_plugin(name);
        if matches!(plugin.probe(&host, &session.info), Ok(p) if p.available) {
            continue;
        }
        printer.status(&format!("installing {name} on {}", session.target));
        // What was learned before the install (versions, a missing compose)
        // is stale after it, and the install's own probes must see the target.
        let report =
            session.without_stable_answers(|| plugin.call::<ops::Install>(&host, &req)).with_context(|| {
                UserError::new(Code::RuntimeMissing, format!("installing {name} on {} failed", session.target))
            })?;
        for step in &report.steps {
            printer.detail(step);
            log.record("INFO", step);
        }
        // P18: verify after installing.
        match plugin.probe(&host, &session.info) {
            Ok(p) if p.available => {
                printer.detail(&format!("{name} {} installed and verified", p.version.unwrap_or_default()));
            }
            Ok(p) => {
                return Err(UserError::new(
                    Code::RuntimeMissing,
                    format!("{name} was installed but is not usable: {}", p.reason.unwrap_or_default()),
                )
                .into())
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("verifying {name} after installing it"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod own_directory_tests {
    use super::own_directory;
    use proptest::prelude::*;

    #[test]
    fn a_sibling_named_after_the_project() {
        assert_eq!(own_directory("/opt/cultivate", "blog"), "/opt/blog");
        assert_eq!(own_directory("/var/lib/cultivate/example/", "blog"), "/var/lib/cultivate/blog");
        assert_eq!(own_directory("/srv/blog", "blog"), "/srv/blog-blog", "the other's directory has our name");
        assert_eq!(own_directory("/cultivate", "blog"), "/blog");
    }

    proptest! {
        /// The offer is never the directory itself nor inside it.
        #[test]
        fn never_the_directory_nor_inside_it(
            root in "(/[a-z0-9._-]{1,8}){1,4}/?",
            project in "[a-z0-9][a-z0-9_-]{0,12}",
        ) {
            let own = own_directory(&root, &project);
            let root = root.trim_end_matches('/');
            prop_assert_ne!(&own, root);
            prop_assert!(!own.starts_with(&format!("{root}/")), "{} is inside {}", own, root);
            prop_assert!(own.starts_with('/'));
        }
    }
}

#[cfg(test)]
mod disk_tests {
    use super::{describe_df, full_filesystems};
    use proptest::prelude::*;

    #[test]
    fn df_lines_name_the_mount_and_what_is_free() {
        let df = "Filesystem     1024-blocks  Used Available Capacity Mounted on\n\
                  tmpfs                256   256         0     100% /tmp/x/deploy\n\
                  /dev/vda1      263174212 1 80000000 1% /\n\
                  tmpfs                256   256         0     100% /tmp/x/deploy\n";
        assert_eq!(
            describe_df(df),
            ["/tmp/x/deploy (tmpfs, 256 KiB): 0 KiB free", "/ (/dev/vda1, 263174212 KiB): 80000000 KiB free"]
        );
        assert!(describe_df("").is_empty());
        assert_eq!(full_filesystems(df), ["/tmp/x/deploy (tmpfs, 256 KiB): 0 KiB free"]);
    }

    proptest! {
        #[test]
        fn df_parsing_never_panics(s in "\\PC{0,200}(\n\\PC{0,80}){0,4}") {
            let _ = describe_df(&s);
            let _ = full_filesystems(&s);
        }
    }
}
