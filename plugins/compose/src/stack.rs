//! Stack operations over a compose CLI: `docker compose` (v2), `docker-compose`
//! (v1 or a standalone v2) and `finch compose` (nerdctl's compose, v2-shaped).
//!
//! Shared by the compose and finch plugins (finch includes this file with
//! `#[path]`). The functions build the command lines and parse the output;
//! the host runs the commands through the transport.

use std::collections::BTreeMap;

use cultivate_plugin_api::ops::{
    ContainerExecCommandRequest, ContainerExecRequest, ContainerLogsRequest, ContainerRemoveRequest,
    CopyFromImageRequest, Empty, ServiceState, StackDownRequest, StackExecRequest, StackLogsRequest, StackRef,
    StackStopRequest, StackUpRequest, StartBesideRequest, Text, UpServicesRequest,
};
use cultivate_plugin_api::{ErrorKind, ExecOutput, ExecRequest, Host, PluginError};
use serde_json::Value;

/// Which compose implementation the command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// docker-compose 1.x (Python): no JSON `ps`.
    V1,
    /// Compose 2.x (`docker compose` or a standalone `docker-compose` 2.x).
    V2,
    /// `finch compose` (nerdctl compose): v2 shapes, fewer flags.
    Finch,
}

/// A compose CLI to drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    /// The argv prefix: `["docker", "compose"]`, `["docker-compose"]`, `["/opt/homebrew/bin/finch", "compose"]`.
    pub command: Vec<String>,
    /// What it is.
    pub dialect: Dialect,
    /// The engine CLI for `inspect` (`["docker"]`, `["/opt/homebrew/bin/finch"]`).
    pub engine: Vec<String>,
}

fn check_name(what: &str, value: &str) -> Result<(), PluginError> {
    if value.trim().is_empty() {
        return Err(PluginError::invalid(format!("{what} must not be empty")));
    }
    if value.starts_with('-') {
        return Err(PluginError::invalid(format!("{what} must not start with '-': {value}")));
    }
    Ok(())
}

impl Compose {
    /// `COMMAND -p PROJECT -f FILE… [--env-file ENV]`: the prefix of every stack command.
    pub fn base(&self, stack: &StackRef) -> Result<Vec<String>, PluginError> {
        check_name("stack project", &stack.project)?;
        if stack.dir.trim().is_empty() {
            return Err(PluginError::invalid("stack directory must not be empty"));
        }
        let mut argv = self.command.clone();
        argv.push("-p".into());
        argv.push(stack.project.clone());
        for f in &stack.files {
            check_name("compose file", f)?;
            argv.push("-f".into());
            argv.push(f.clone());
        }
        if let Some(env) = stack.env_file.as_ref().filter(|e| !e.trim().is_empty()) {
            argv.push("--env-file".into());
            argv.push(env.clone());
        }
        Ok(argv)
    }

    /// A request for `BASE args…` run in the stack directory.
    pub fn request(&self, stack: &StackRef, args: &[&str]) -> Result<ExecRequest, PluginError> {
        let mut argv = self.base(stack)?;
        argv.extend(args.iter().map(|s| s.to_string()));
        Ok(ExecRequest::new(argv).cwd(stack.dir.clone()))
    }

    /// The `up` command: `up -d --remove-orphans [--force-recreate] [-t N]`.
    /// Never `--wait` (v2 only): the host polls health itself. `finch compose
    /// up` has neither `--force-recreate` nor `-t`: see [`Compose::up`].
    pub fn up_request(&self, req: &StackUpRequest) -> Result<ExecRequest, PluginError> {
        let mut args = vec!["up".to_string(), "-d".into(), "--remove-orphans".into()];
        self.push_recreate_flags(&mut args, req.force_recreate, req.timeout_secs);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&req.stack, &refs)
    }

    /// `[--force-recreate] [-t N]` of `up`; `finch compose up` has neither.
    fn push_recreate_flags(&self, args: &mut Vec<String>, force_recreate: bool, timeout_secs: Option<u64>) {
        if self.dialect == Dialect::Finch {
            return;
        }
        if force_recreate {
            args.push("--force-recreate".into());
        }
        if let Some(t) = timeout_secs {
            args.push("-t".into());
            args.push(t.to_string());
        }
    }

    /// Runs `r`; a non-zero exit is an error naming the command.
    fn run_checked(host: &Host, r: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let what = r.display();
        host.exec(r)?.check(&what)
    }

    /// The `down` command: `down --remove-orphans`, plus `-v` only when asked.
    pub fn down_request(&self, req: &StackDownRequest) -> Result<ExecRequest, PluginError> {
        let mut args = vec!["down", "--remove-orphans"];
        if req.remove_volumes {
            args.push("-v");
        }
        self.request(&req.stack, &args)
    }

    /// `compose up`. With `finch compose`, which cannot force a recreate, a
    /// forced recreate is `down` (volumes kept) followed by `up`.
    pub fn up(&self, host: &Host, req: &StackUpRequest) -> Result<Empty, PluginError> {
        if req.force_recreate && self.dialect == Dialect::Finch {
            self.down(host, &StackDownRequest { stack: req.stack.clone(), remove_volumes: false })?;
        }
        Self::run_checked(host, &self.up_request(req)?)?;
        Ok(Empty {})
    }

    /// `compose down` (volumes kept unless `remove_volumes`).
    pub fn down(&self, host: &Host, req: &StackDownRequest) -> Result<Empty, PluginError> {
        let r = self.down_request(req)?;
        let what = r.display();
        host.exec(&r)?.check(&what)?;
        Ok(Empty {})
    }

    /// The `logs` command.
    pub fn logs_request(&self, req: &StackLogsRequest) -> Result<ExecRequest, PluginError> {
        let mut args = vec!["logs".to_string(), "--no-color".into()];
        if let Some(n) = req.tail {
            args.push("--tail".into());
            args.push(n.to_string());
        }
        for s in &req.services {
            check_name("service", s)?;
            args.push(s.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&req.stack, &refs)
    }

    /// `compose logs` (stdout; stderr is appended when there is any).
    pub fn logs(&self, host: &Host, req: &StackLogsRequest) -> Result<Text, PluginError> {
        let r = self.logs_request(req)?;
        let what = r.display();
        let out = host.exec(&r)?.check(&what)?;
        let mut text = out.stdout;
        if !out.stderr.trim().is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&out.stderr);
        }
        Ok(Text { text })
    }

    /// `compose config`: the resolved configuration. It fails on an invalid
    /// file or `.env`; warnings (unset variables) are logged.
    pub fn config(&self, host: &Host, stack: &StackRef) -> Result<Text, PluginError> {
        let r = self.request(stack, &["config"])?;
        let what = r.display();
        let out = host.exec(&r)?.check(&what)?;
        for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
            host.warn(line.trim());
        }
        Ok(Text { text: out.stdout })
    }

    /// The `exec -T SERVICE argv…` command.
    pub fn exec_request(&self, req: &StackExecRequest) -> Result<ExecRequest, PluginError> {
        check_name("service", &req.service)?;
        if req.argv.is_empty() {
            return Err(PluginError::invalid("stack.exec needs a command"));
        }
        let mut args = vec!["exec".to_string(), "-T".into(), req.service.clone()];
        args.extend(req.argv.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&req.stack, &refs)
    }

    /// Runs a command in a service's container; its output and status are returned as they are.
    pub fn exec(&self, host: &Host, req: &StackExecRequest) -> Result<ExecOutput, PluginError> {
        host.exec(&self.exec_request(req)?)
    }

    /// Containers of the stack (stopped ones too) with state, health, exit code,
    /// image, container and image IDs, config hash, start time and the last
    /// failing health-check output. Containers are inspected with a template
    /// that asks only for those fields: never their environment, which holds
    /// the release's secrets.
    pub fn ps(&self, host: &Host, stack: &StackRef) -> Result<Vec<ServiceState>, PluginError> {
        let ids: Vec<String> = match self.dialect {
            Dialect::V1 | Dialect::V2 => {
                // One command, and no compose process (Python's docker-compose
                // alone takes 0.5-1 s to start): the engine lists the
                // project's containers by compose's labels, then inspects them.
                let r = self.ps_inspect_request(stack)?;
                return self.inspect_output(host.exec(&r)?, &r.display());
            }
            Dialect::Finch => {
                let r = self.request(stack, &["ps", "-a", "--format", "json"])?;
                let what = r.display();
                let out = host.exec(&r)?.check(&what)?;
                parse_ps_json(&out.stdout)?.into_iter().map(|s| s.container).filter(|c| !c.is_empty()).collect()
            }
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.inspect(host, &refs)
    }

    /// `ENGINE inspect --format TEMPLATE ID…` parsed into service states.
    /// Containers that vanished in between are left out.
    fn inspect(&self, host: &Host, ids: &[&str]) -> Result<Vec<ServiceState>, PluginError> {
        let mut argv = self.engine.clone();
        argv.extend(["inspect".to_string(), "--type".into(), "container".into(), "--format".into()]);
        argv.push(INSPECT_TEMPLATE.to_string());
        argv.extend(ids.iter().map(|s| s.to_string()));
        let what = cultivate_plugin_api::shell::join(&argv);
        self.inspect_output(host.run(&argv)?, &what)
    }

    /// The states in an `inspect` run's output; a container that vanished
    /// between listing and inspecting is left out, any other failure is one.
    fn inspect_output(&self, out: ExecOutput, what: &str) -> Result<Vec<ServiceState>, PluginError> {
        if !out.success() && out.stdout.trim().is_empty() {
            if out.stderr.to_ascii_lowercase().contains("no such") {
                return Ok(Vec::new());
            }
            return Err(PluginError::new(
                ErrorKind::CommandFailed,
                format!("{what} exited with status {}: {}", out.status, out.stderr.trim()),
            ));
        }
        let mut states = parse_inspect_lines(&out.stdout)?;
        states.sort_by(|a, b| (&a.service, &a.container).cmp(&(&b.service, &b.container)));
        Ok(states)
    }

    /// One shell command listing the project's service containers (stopped
    /// ones too, never one-off `run` containers, as `compose ps` does) by the
    /// labels compose puts on them, then inspecting them with
    /// [`INSPECT_TEMPLATE_DOCKER`]; no output when there are none.
    pub fn ps_inspect_request(&self, stack: &StackRef) -> Result<ExecRequest, PluginError> {
        check_name("stack project", &stack.project)?;
        let q = cultivate_plugin_api::shell::quote;
        let engine = cultivate_plugin_api::shell::join(&self.engine);
        let project = compose_project_label(&stack.project);
        Ok(ExecRequest::shell(format!(
            "ids=$({engine} ps -a -q --no-trunc --filter {} --filter {}) || exit; \
             [ -z \"$ids\" ] || exec {engine} inspect --type container --format {} $ids",
            q(&format!("label=com.docker.compose.project={project}")),
            q("label=com.docker.compose.oneoff=False"),
            q(INSPECT_TEMPLATE_DOCKER),
        ))
        .cwd(stack.dir.clone()))
    }

    /// `config --hash '*'`: compose's configuration hash of each service.
    pub fn service_hashes(&self, host: &Host, stack: &StackRef) -> Result<BTreeMap<String, String>, PluginError> {
        let r = self.request(stack, &["config", "--hash", "*"])?;
        let what = r.display();
        let out = host.exec(&r)?.check(&what)?;
        let hashes = parse_hashes(&out.stdout);
        if hashes.is_empty() {
            return Err(PluginError::other(format!("{what} printed no service hashes")));
        }
        Ok(hashes)
    }

    /// The command that starts one more container of a service beside the
    /// running ones: `up -d [--no-deps] --no-recreate --scale S=N S`.
    pub fn start_beside_request(&self, req: &StartBesideRequest) -> Result<ExecRequest, PluginError> {
        check_name("service", &req.service)?;
        if req.replicas < 2 {
            return Err(PluginError::invalid("stack.start_beside needs replicas of 2 or more"));
        }
        let scale = format!("{}={}", req.service, req.replicas);
        let mut args = vec!["up", "-d"];
        args.extend(self.no_deps());
        args.extend(["--no-recreate", "--scale", &scale, req.service.as_str()]);
        self.request(&req.stack, &args)
    }

    /// `--no-deps` where it leaves the configuration alone. Compose v2 drops
    /// `depends_on` from a service it creates under `--no-deps`, so the
    /// container's `config-hash` would never again equal `config --hash`;
    /// without the flag v2 only starts stopped dependencies (it never
    /// recreates them unless `--always-recreate-deps`). v1 keeps the
    /// configuration either way but would converge dependencies without it.
    fn no_deps(&self) -> Option<&'static str> {
        (self.dialect != Dialect::V2).then_some("--no-deps")
    }

    /// Starts one more container of a service beside the running ones.
    pub fn start_beside(&self, host: &Host, req: &StartBesideRequest) -> Result<Empty, PluginError> {
        Self::run_checked(host, &self.start_beside_request(req)?)?;
        Ok(Empty {})
    }

    /// `up -d [--no-deps] [--force-recreate] [-t N] SERVICE…` (see [`Compose::no_deps`]).
    pub fn up_services_request(&self, req: &UpServicesRequest) -> Result<ExecRequest, PluginError> {
        if req.services.is_empty() {
            return Err(PluginError::invalid("stack.up_services needs at least one service"));
        }
        let mut args = vec!["up".to_string(), "-d".into()];
        args.extend(self.no_deps().map(str::to_string));
        self.push_recreate_flags(&mut args, req.force_recreate, req.timeout_secs);
        for s in &req.services {
            check_name("service", s)?;
            args.push(s.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&req.stack, &refs)
    }

    /// Brings only the named services to the stack's configuration.
    pub fn up_services(&self, host: &Host, req: &UpServicesRequest) -> Result<Empty, PluginError> {
        Self::run_checked(host, &self.up_services_request(req)?)?;
        Ok(Empty {})
    }

    /// Stops (stop signal, then SIGKILL after the timeout) and removes containers.
    pub fn remove_containers(&self, host: &Host, req: &ContainerRemoveRequest) -> Result<Empty, PluginError> {
        if req.containers.is_empty() {
            return Ok(Empty {});
        }
        for c in &req.containers {
            check_name("container", c)?;
        }
        let mut stop = self.engine.clone();
        stop.push("stop".into());
        if let Some(t) = req.timeout_secs {
            stop.push("-t".into());
            stop.push(t.to_string());
        }
        stop.extend(req.containers.iter().cloned());
        let out = host.run(&stop)?;
        if !out.success() && !out.stderr.to_ascii_lowercase().contains("no such") {
            out.check(&cultivate_plugin_api::shell::join(&stop))?;
        }
        let mut rm = self.engine.clone();
        rm.push("rm".into());
        rm.extend(req.containers.iter().cloned());
        let out = host.run(&rm)?;
        if !out.success() && !out.stderr.to_ascii_lowercase().contains("no such") {
            out.check(&cultivate_plugin_api::shell::join(&rm))?;
        }
        Ok(Empty {})
    }

    /// `ENGINE exec CONTAINER argv…`; output and status as they are.
    pub fn container_exec(&self, host: &Host, req: &ContainerExecRequest) -> Result<ExecOutput, PluginError> {
        check_name("container", &req.container)?;
        if req.argv.is_empty() {
            return Err(PluginError::invalid("container.exec needs a command"));
        }
        let mut argv = self.engine.clone();
        argv.push("exec".into());
        argv.push(req.container.clone());
        argv.extend(req.argv.iter().cloned());
        host.run(&argv)
    }

    /// `ENGINE logs [-f] [--since S] [--tail N] CONTAINER`: the same for
    /// Docker (whichever Compose drives it) and nerdctl/finch.
    pub fn container_logs_command(&self, req: &ContainerLogsRequest) -> Result<ExecRequest, PluginError> {
        check_name("container", &req.container)?;
        let mut argv = self.engine.clone();
        argv.push("logs".into());
        if req.follow {
            argv.push("--follow".into());
        }
        if let Some(since) = &req.since {
            check_name("since", since)?;
            argv.push("--since".into());
            argv.push(since.clone());
        }
        if let Some(n) = req.tail {
            argv.push("--tail".into());
            argv.push(n.to_string());
        }
        argv.push(req.container.clone());
        Ok(ExecRequest::new(argv))
    }

    /// `ENGINE exec [-i] [-t] [-u USER] CONTAINER argv…`.
    pub fn container_exec_command(&self, req: &ContainerExecCommandRequest) -> Result<ExecRequest, PluginError> {
        check_name("container", &req.container)?;
        if req.argv.is_empty() {
            return Err(PluginError::invalid("container.exec_command needs a command"));
        }
        let mut argv = self.engine.clone();
        argv.push("exec".into());
        if req.interactive {
            argv.push("-i".into());
        }
        if req.tty {
            argv.push("-t".into());
        }
        if let Some(user) = &req.user {
            check_name("user", user)?;
            argv.push("--user".into());
            argv.push(user.clone());
        }
        argv.push(req.container.clone());
        argv.extend(req.argv.iter().cloned());
        Ok(ExecRequest::new(argv))
    }

    /// `compose stop [-t N]`: containers stopped, kept with their volumes.
    pub fn stop_request(&self, req: &StackStopRequest) -> Result<ExecRequest, PluginError> {
        let mut args = vec!["stop".to_string()];
        if let Some(t) = req.timeout_secs.filter(|_| self.dialect != Dialect::Finch) {
            args.push("-t".into());
            args.push(t.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&req.stack, &refs)
    }

    /// Stops the stack's containers.
    pub fn stop(&self, host: &Host, req: &StackStopRequest) -> Result<Empty, PluginError> {
        Self::run_checked(host, &self.stop_request(req)?)?;
        Ok(Empty {})
    }

    /// `compose start`: the stopped containers again, as they were.
    pub fn start(&self, host: &Host, stack: &StackRef) -> Result<Empty, PluginError> {
        Self::run_checked(host, &self.request(stack, &["start"])?)?;
        Ok(Empty {})
    }

    /// The shell script that copies `path` of an image to `dest`: a created
    /// (never started) container, `cp` out of it as a tar stream into a
    /// temporary directory, renamed into place; the container is removed
    /// whatever happens.
    pub fn copy_from_image_request(&self, req: &CopyFromImageRequest) -> Result<ExecRequest, PluginError> {
        check_name("image", &req.image)?;
        for (what, p) in [("path in the image", &req.path), ("destination", &req.dest)] {
            if !p.starts_with('/') || p.contains("/../") || p.ends_with("/..") {
                return Err(PluginError::invalid(format!("{what} must be an absolute path: {p}")));
            }
        }
        let q = cultivate_plugin_api::shell::quote;
        let engine = cultivate_plugin_api::shell::join(&self.engine);
        // `cp CONTAINER:DIR -` streams a tar whose entries start with DIR's
        // base name; dash has no pipefail, so an empty result is the failure check.
        let script = format!(
            "set -e; e() {{ {engine} \"$@\"; }}; d={d}; [ -d \"$d\" ] && exit 0; t=\"$d.tmp.$$\"; \
             c=$(e create {image}); trap 'e rm -f \"$c\" >/dev/null 2>&1; rm -rf \"$t\"' EXIT; \
             mkdir -p \"$t\"; e cp \"$c\":{path} - | tar -x -C \"$t\" --strip-components=1 --no-same-owner; \
             [ -n \"$(ls -A \"$t\")\" ] || {{ echo \"{path} of {image} is empty or missing\" >&2; exit 1; }}; \
             chmod -R a+rX \"$t\"; if [ \"$(uname -s)\" = Darwin ]; then mv \"$t\" \"$d\"; else mv -T \"$t\" \"$d\"; fi",
            d = q(req.dest.trim_end_matches('/')),
            image = q(&req.image),
            path = q(req.path.trim_end_matches('/')),
        );
        Ok(ExecRequest::shell(script))
    }

    /// Copies a directory out of an image (see [`Compose::copy_from_image_request`]).
    pub fn copy_from_image(&self, host: &Host, req: &CopyFromImageRequest) -> Result<Empty, PluginError> {
        let r = self.copy_from_image_request(req)?;
        let what = format!("copying {} of {} to {}", req.path, req.image, req.dest);
        host.exec(&r)?.check(&what)?;
        Ok(Empty {})
    }
}

/// The value of the `com.docker.compose.project` label compose gives a
/// project's containers: the name lowercased, without characters other than
/// letters, digits, `-` and `_` (Compose v1 and v2 normalise alike).
pub fn compose_project_label(project: &str) -> String {
    project
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect()
}

/// The fields of [`INSPECT_TEMPLATE`], with `$extra` (`"key":{{…}},`) before the last.
macro_rules! inspect_template {
    ($extra:literal) => {
        concat!(
            r#"{"id":{{json .Id}},"name":{{json .Name}},"state":{{json .State}},"#,
            r#""image_id":{{json .Image}},"image":{{json .Config.Image}},"#,
            r#""service":{{json (index .Config.Labels "com.docker.compose.service")}},"#,
            $extra,
            r#""config_hash":{{json (index .Config.Labels "com.docker.compose.config-hash")}}}"#
        )
    };
}

/// The fields of `inspect` the pipeline uses, one JSON object per container.
/// Never `.Config.Env`: it holds the release's secrets.
/// `.State` whole: its `Health` key exists only for containers with a health
/// check, and Docker's templates fail on a missing key (`index` does not).
pub const INSPECT_TEMPLATE: &str = inspect_template!("");

/// [`INSPECT_TEMPLATE`] with the health check (`.Config.Healthcheck` by
/// `index`: Docker leaves the key out, not null, without one; `null` then):
/// Docker's engines. Finch's keeps the plain template.
pub const INSPECT_TEMPLATE_DOCKER: &str = inspect_template!(r#""healthcheck":{{json (index .Config "Healthcheck")}},"#);

/// Parses `config --hash '*'`: `SERVICE HASH` per line.
pub fn parse_hashes(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (svc, hash) = (it.next()?, it.next()?);
            (it.next().is_none() && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (svc.to_string(), hash.to_string()))
        })
        .collect()
}

/// Parses the output of `inspect --format` [`INSPECT_TEMPLATE`]: one JSON
/// object per line (a line that is not one is an error naming it).
pub fn parse_inspect_lines(stdout: &str) -> Result<Vec<ServiceState>, PluginError> {
    let mut out = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            PluginError::other(format!(
                "cannot parse `inspect --format` output ({e}): {}",
                line.chars().take(200).collect::<String>()
            ))
        })?;
        let null = Value::Null;
        let state = v.get("state").filter(|s| s.is_object()).unwrap_or(&null);
        let status = str_field(state, &["Status"]).unwrap_or("").to_ascii_lowercase();
        let health_obj = state.get("Health").filter(|h| h.is_object());
        let health = health_obj.and_then(|h| str_field(h, &["Status"])).map(str::to_ascii_lowercase);
        let last = health_obj.and_then(|h| h.get("Log")).and_then(Value::as_array).and_then(|l| l.last());
        let health_log = last
            .filter(|e| int_field(e, "ExitCode").unwrap_or(0) != 0)
            .map(|e| str_field(e, &["Output"]).unwrap_or("").to_string());
        let name = str_field(&v, &["name"]).unwrap_or("").trim_start_matches('/').to_string();
        let id = str_field(&v, &["id"]).map(str::to_string);
        let exited = matches!(status.as_str(), "exited" | "dead" | "restarting");
        out.push(ServiceState {
            service: str_field(&v, &["service"]).unwrap_or(&name).to_string(),
            container: if name.is_empty() { id.clone().unwrap_or_default() } else { name },
            exit_code: if exited { int_field(state, "ExitCode").map(|c| c as i32) } else { None },
            state: status,
            health,
            image: str_field(&v, &["image"]).unwrap_or("").to_string(),
            health_log,
            id,
            image_id: str_field(&v, &["image_id"]).map(str::to_string),
            config_hash: str_field(&v, &["config_hash"]).map(str::to_string),
            started_at: str_field(state, &["StartedAt"]).map(str::to_string),
            health_test: v
                .get("healthcheck")
                .and_then(|h| h.get("Test"))
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).map(str::to_string).collect()),
        });
    }
    Ok(out)
}

fn str_field<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str)).map(str::trim).filter(|s| !s.is_empty())
}

fn int_field(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses `compose ps -a --format json` of Compose 2.x or nerdctl: either one
/// JSON array (up to 2.20) or one JSON object per line (2.21 and later).
pub fn parse_ps_json(stdout: &str) -> Result<Vec<ServiceState>, PluginError> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let objects: Vec<Value> = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Array(a)) => a,
        Ok(v @ Value::Object(_)) => vec![v],
        _ => {
            let mut objs = Vec::new();
            for line in trimmed.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Array(a)) => objs.extend(a),
                    Ok(v @ Value::Object(_)) => objs.push(v),
                    _ => {
                        return Err(PluginError::other(format!(
                            "cannot parse `compose ps --format json` output: {}",
                            line.chars().take(200).collect::<String>()
                        )))
                    }
                }
            }
            objs
        }
    };
    Ok(objects.iter().filter(|v| v.is_object()).map(ps_entry).collect())
}

fn ps_entry(v: &Value) -> ServiceState {
    let state = str_field(v, &["State"]).unwrap_or("").to_ascii_lowercase();
    let mut health = str_field(v, &["Health"]).map(str::to_ascii_lowercase);
    if health.is_none() {
        // Some versions only say it in the status text: "Up 2 minutes (healthy)".
        let status = str_field(v, &["Status"]).unwrap_or("").to_ascii_lowercase();
        for h in ["unhealthy", "healthy", "health: starting"] {
            if status.contains(&format!("({h})")) {
                health = Some(h.trim_start_matches("health: ").to_string());
                break;
            }
        }
    }
    let exited = matches!(state.as_str(), "exited" | "dead");
    ServiceState {
        service: str_field(v, &["Service"]).unwrap_or("").to_string(),
        container: str_field(v, &["Name", "Names", "ID"]).unwrap_or("").to_string(),
        exit_code: if exited { int_field(v, "ExitCode").map(|c| c as i32) } else { None },
        state,
        health,
        image: str_field(v, &["Image"]).unwrap_or("").to_string(),
        health_log: None,
        id: str_field(v, &["ID"]).map(str::to_string),
        ..ServiceState::default()
    }
}

/// Parses `docker inspect CONTAINER…` (a JSON array) into service states:
/// service from the `com.docker.compose.service` label, state, health, exit
/// code, image, and the last health-check output when it failed.
pub fn parse_container_inspect(stdout: &str) -> Result<Vec<ServiceState>, PluginError> {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let arr = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Array(a)) => a,
        Ok(v @ Value::Object(_)) => vec![v],
        Ok(_) => return Err(PluginError::other("unexpected `inspect` output: not a JSON array")),
        Err(e) => return Err(PluginError::other(format!("cannot parse `inspect` output: {e}"))),
    };
    Ok(arr.iter().filter(|v| v.is_object()).map(inspect_entry).collect())
}

fn inspect_entry(v: &Value) -> ServiceState {
    let null = Value::Null;
    let state = v.get("State").unwrap_or(&null);
    let config = v.get("Config").unwrap_or(&null);
    let labels = config.get("Labels").unwrap_or(&null);
    let name = str_field(v, &["Name"]).unwrap_or("").trim_start_matches('/').to_string();
    let id = str_field(v, &["Id", "ID"]).unwrap_or("");
    let status = str_field(state, &["Status"]).unwrap_or("").to_ascii_lowercase();
    let health_obj = state.get("Health").filter(|h| h.is_object());
    let health = health_obj.and_then(|h| str_field(h, &["Status"])).map(str::to_ascii_lowercase);
    let last = health_obj.and_then(|h| h.get("Log")).and_then(Value::as_array).and_then(|l| l.last());
    let health_log = last
        .filter(|e| int_field(e, "ExitCode").unwrap_or(0) != 0)
        .map(|e| str_field(e, &["Output"]).unwrap_or("").to_string());
    let exited = matches!(status.as_str(), "exited" | "dead");
    ServiceState {
        service: str_field(labels, &["com.docker.compose.service"]).unwrap_or(&name).to_string(),
        container: if name.is_empty() { id.to_string() } else { name },
        exit_code: if exited { int_field(state, "ExitCode").map(|c| c as i32) } else { None },
        state: status,
        health,
        image: str_field(config, &["Image"]).or_else(|| str_field(v, &["Image"])).unwrap_or("").to_string(),
        health_log,
        id: (!id.is_empty()).then(|| id.to_string()),
        image_id: str_field(v, &["Image"]).map(str::to_string),
        config_hash: str_field(labels, &["com.docker.compose.config-hash"]).map(str::to_string),
        started_at: str_field(state, &["StartedAt"]).map(str::to_string),
        health_test: config
            .get("Healthcheck")
            .and_then(|h| h.get("Test"))
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(Value::as_str).map(str::to_string).collect()),
    }
}
