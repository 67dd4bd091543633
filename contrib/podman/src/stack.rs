//! The application stack on Podman: `up` and `down` through the compose
//! tool; `ps`, `logs` and `exec` through `podman` itself, finding the
//! stack's containers by the `com.docker.compose.project` label that both
//! `podman-compose` and `podman compose` set.
//!
//! podman-compose 1.0 (Debian bookworm) has neither `--env-file` nor
//! `config`: it reads `.env` from the stack directory, and the configuration
//! is validated with `--dry-run up` (whose output, which holds the
//! environment, is kept private and not returned).

use cultivate_plugin_api::ops::{
    ContainerExecCommandRequest, ContainerLogsRequest, StackStopRequest, StackUpRequest, Text,
};
use cultivate_plugin_api::ops::{Empty, ServiceState, StackDownRequest, StackExecRequest, StackLogsRequest, StackRef};
use cultivate_plugin_api::{ErrorKind, ExecOutput, ExecRequest, Host, PluginError};
use serde_json::Value;

use crate::images::{argv, command_error};

/// A compose command that drives Podman.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    /// The argv prefix: `["podman-compose"]` or `["podman", "compose"]`.
    pub command: Vec<String>,
    /// The engine CLI (`["podman"]`).
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
    /// `COMMAND -p PROJECT -f FILE…`. An env file other than `.env` is
    /// refused: podman-compose 1.0 reads only the directory's `.env`.
    pub fn base(&self, stack: &StackRef) -> Result<Vec<String>, PluginError> {
        check_name("stack project", &stack.project)?;
        if stack.dir.trim().is_empty() {
            return Err(PluginError::invalid("stack directory must not be empty"));
        }
        if let Some(env) = stack.env_file.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            if env != ".env" && env != "./.env" {
                return Err(PluginError::invalid(format!(
                    "env file {env}: the podman plugin reads only .env in the stack directory \
                     (podman-compose 1.0 has no --env-file)"
                )));
            }
        }
        let mut argv = self.command.clone();
        argv.push("-p".into());
        argv.push(stack.project.clone());
        for f in &stack.files {
            check_name("compose file", f)?;
            argv.push("-f".into());
            argv.push(f.clone());
        }
        Ok(argv)
    }

    /// `BASE args…` run in the stack directory.
    pub fn request(&self, stack: &StackRef, args: &[&str]) -> Result<ExecRequest, PluginError> {
        let mut argv = self.base(stack)?;
        argv.extend(args.iter().map(|s| s.to_string()));
        Ok(ExecRequest::new(argv).cwd(stack.dir.clone()))
    }

    /// `up -d`. See [`Compose::up`] for why there is neither
    /// `--force-recreate` nor `-t`.
    pub fn up_request(&self, req: &StackUpRequest) -> Result<ExecRequest, PluginError> {
        self.request(&req.stack, &["up", "-d"])
    }

    /// `down` (volumes kept), then `up -d`, then a check of what `up` did.
    ///
    /// podman-compose 1.0 differs from Compose here: its `up` leaves an
    /// existing container alone (its `podman run --name` fails, and the
    /// failure is only printed), its `--force-recreate` and `-t N` pass the
    /// timeout to `podman stop` as `30.0`, which Podman refuses, and it exits
    /// 0 whatever its podman commands did. So the stack is taken down first
    /// (`podman stop`'s own timeout), and the output of `up` is read for
    /// `podman run`/`podman start` commands that failed.
    pub fn up(&self, host: &Host, req: &StackUpRequest) -> Result<Empty, PluginError> {
        self.down(host, &StackDownRequest { stack: req.stack.clone(), remove_volumes: false })?;
        let r = self.up_request(req)?;
        let what = r.display();
        let out = host.exec(&r.private_output())?.check(&what)?;
        let failed = failed_podman_commands(&out.stdout);
        if !failed.is_empty() {
            let errors: Vec<&str> = out.stderr.lines().map(str::trim).filter(|l| l.starts_with("Error:")).collect();
            return Err(PluginError::new(
                ErrorKind::CommandFailed,
                format!(
                    "{what}: {} failed: {}",
                    failed.join(", "),
                    if errors.is_empty() { "no error message".to_string() } else { errors.join("; ") }
                ),
            ));
        }
        Ok(Empty {})
    }

    /// `down`, plus `-v` only when asked.
    pub fn down_request(&self, req: &StackDownRequest) -> Result<ExecRequest, PluginError> {
        let mut args = vec!["down"];
        if req.remove_volumes {
            args.push("-v");
        }
        self.request(&req.stack, &args)
    }

    /// `compose down` (volumes kept unless `remove_volumes`), then `podman
    /// rm -f` of any container of the project still there.
    ///
    /// podman-compose 1.0's `down` is `podman stop` then `podman rm` per
    /// container, failures only printed; a container crash-looping under its
    /// restart policy can be restarted between the two (seen: the next `up`
    /// then fails with "the container name … is already in use"). Named
    /// volumes are never touched by `rm -f`.
    pub fn down(&self, host: &Host, req: &StackDownRequest) -> Result<Empty, PluginError> {
        let r = self.down_request(req)?;
        let what = r.display();
        host.exec(&r)?.check(&what)?;
        let left = container_ids(host, &self.engine, &req.stack.project, None)?;
        if !left.is_empty() {
            host.debug(&format!("{} container(s) left after {what}: removing them", left.len()));
            let rm: Vec<String> = argv(&self.engine, &["rm", "-f"]).into_iter().chain(left).collect();
            host.run_ok(&rm)?;
        }
        Ok(Empty {})
    }

    /// Validates the compose file and `.env`: `config` where the tool has
    /// it, else `--dry-run up -d` (podman-compose 1.0). The resolved
    /// configuration holds the release's secrets, so the output stays
    /// private; only `config`'s own output is returned.
    pub fn config(&self, host: &Host, stack: &StackRef) -> Result<Text, PluginError> {
        let r = self.request(stack, &["config"])?.private_output();
        let out = host.exec(&r)?;
        if out.success() {
            return Ok(Text { text: out.stdout });
        }
        if !out.stderr.contains("invalid choice: 'config'") {
            return Err(config_error(&r.display(), &out));
        }
        let mut argv = self.command.clone();
        argv.push("--dry-run".into());
        argv.extend(self.base(stack)?.into_iter().skip(self.command.len()));
        argv.extend(["up".to_string(), "-d".into()]);
        let r = ExecRequest::new(argv).cwd(stack.dir.clone()).private_output();
        let out = host.exec(&r)?;
        if !out.success() {
            return Err(config_error(&r.display(), &out));
        }
        Ok(Text { text: String::new() })
    }
}

/// podman-compose 1.0 prints each podman command it runs, then `exit code:
/// N`. The `podman run`/`podman create`/`podman start` commands that exited
/// non-zero, as `podman run NAME` (never their arguments: they hold the
/// environment).
pub fn failed_podman_commands(stdout: &str) -> Vec<String> {
    let mut failed = Vec::new();
    let mut last: Option<String> = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(code) = line.strip_prefix("exit code:") {
            if let Some(cmd) = last.take() {
                if code.trim() != "0" {
                    failed.push(cmd);
                }
            }
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some("podman") {
            continue;
        }
        last = match words.next() {
            Some(verb @ ("run" | "create" | "start")) => {
                let name = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("--name="))
                    .or_else(|| if verb == "start" { line.split_whitespace().nth(2) } else { None })
                    .unwrap_or("?");
                Some(format!("podman {verb} {name}"))
            }
            _ => None,
        };
    }
    failed
}

/// A failed validation: the last non-empty line of stderr (the YAML error),
/// never stdout (the resolved configuration).
fn config_error(what: &str, out: &ExecOutput) -> PluginError {
    let tail: Vec<&str> = out.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let why = tail.iter().rev().take(2).rev().copied().collect::<Vec<_>>().join(" ");
    PluginError::new(ErrorKind::CommandFailed, format!("{what} exited with status {}: {why}", out.status))
}

/// `podman ps -a --filter label=com.docker.compose.project=P [--filter label=…service=S] --format {{.ID}}`.
pub fn ids_argv(engine: &[String], project: &str, service: Option<&str>) -> Vec<String> {
    let mut args = vec!["ps".to_string(), "-a".into(), "--filter".into()];
    args.push(format!("label=com.docker.compose.project={project}"));
    if let Some(s) = service {
        args.push("--filter".into());
        args.push(format!("label=com.docker.compose.service={s}"));
    }
    args.extend(["--format".to_string(), "{{.ID}}".into()]);
    engine.iter().cloned().chain(args).collect()
}

fn container_ids(
    host: &Host,
    engine: &[String],
    project: &str,
    service: Option<&str>,
) -> Result<Vec<String>, PluginError> {
    check_name("stack project", project)?;
    let a = ids_argv(engine, project, service);
    let out = host.run(&a)?;
    if !out.success() {
        return Err(command_error(&cultivate_plugin_api::shell::join(&a), &out));
    }
    Ok(out.stdout.split_whitespace().map(str::to_string).collect())
}

/// The fields of `podman inspect` the pipeline uses, one JSON object per
/// container. Never `.Config.Env`: it holds the release's secrets. Podman
/// names the ID `.ID` and the image reference `.ImageName`.
pub const INSPECT_TEMPLATE: &str = concat!(
    r#"{"id":{{json .ID}},"name":{{json .Name}},"state":{{json .State}},"#,
    r#""image_id":{{json .Image}},"image":{{json .ImageName}},"#,
    r#""service":{{json (index .Config.Labels "com.docker.compose.service")}},"#,
    r#""healthcheck":{{json .Config.Healthcheck}}}"#
);

/// One container as [`INSPECT_TEMPLATE`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    /// The state the host sees.
    pub state: ServiceState,
    /// It has a health check (a `Test` other than `NONE`).
    pub has_healthcheck: bool,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// Parses `podman inspect --format INSPECT_TEMPLATE` output. A health status
/// of `""` (Podman's answer for a container without a check) is no health.
pub fn parse_inspect_lines(stdout: &str) -> Result<Vec<Inspected>, PluginError> {
    let mut out = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            PluginError::other(format!(
                "cannot parse `podman inspect --format` output ({e}): {}",
                line.chars().take(200).collect::<String>()
            ))
        })?;
        let null = Value::Null;
        let state = v.get("state").filter(|s| s.is_object()).unwrap_or(&null);
        let status = str_field(state, "Status").unwrap_or("").to_ascii_lowercase();
        let health_obj = state.get("Health").or_else(|| state.get("Healthcheck")).filter(|h| h.is_object());
        let health = health_obj.and_then(|h| str_field(h, "Status")).map(str::to_ascii_lowercase);
        let last = health_obj.and_then(|h| h.get("Log")).and_then(Value::as_array).and_then(|l| l.last());
        let health_log = last
            .filter(|e| e.get("ExitCode").and_then(Value::as_i64).unwrap_or(0) != 0)
            .map(|e| str_field(e, "Output").unwrap_or("").to_string());
        let test = v.get("healthcheck").and_then(|h| h.get("Test")).and_then(Value::as_array);
        let has_healthcheck = test.is_some_and(|t| !t.is_empty() && t.first().and_then(Value::as_str) != Some("NONE"));
        let name = str_field(&v, "name").unwrap_or("").trim_start_matches('/').to_string();
        let id = str_field(&v, "id").map(str::to_string);
        let exited = matches!(status.as_str(), "exited" | "dead" | "stopped");
        out.push(Inspected {
            state: ServiceState {
                service: str_field(&v, "service").unwrap_or(&name).to_string(),
                container: if name.is_empty() { id.clone().unwrap_or_default() } else { name },
                exit_code: if exited { state.get("ExitCode").and_then(Value::as_i64).map(|c| c as i32) } else { None },
                state: if status == "stopped" { "exited".to_string() } else { status },
                health,
                image: crate::images::short_name(str_field(&v, "image").unwrap_or("")).to_string(),
                health_log,
                id,
                image_id: str_field(&v, "image_id").map(crate::images::content_id),
                config_hash: None,
                started_at: str_field(state, "StartedAt").map(str::to_string),
                health_test: None,
            },
            has_healthcheck,
        });
    }
    Ok(out)
}

fn inspect(host: &Host, engine: &[String], ids: &[String]) -> Result<Vec<Inspected>, PluginError> {
    let mut a = argv(engine, &["inspect", "--type", "container", "--format", INSPECT_TEMPLATE]);
    a.extend(ids.iter().cloned());
    let out = host.run(&a)?;
    if !out.success() && out.stdout.trim().is_empty() {
        let s = out.stderr.to_ascii_lowercase();
        if s.contains("no such") || s.contains("not known") {
            return Ok(Vec::new());
        }
        return Err(command_error(&format!("{} inspect", engine.join(" ")), &out));
    }
    parse_inspect_lines(&out.stdout)
}

/// The containers whose health check `ps` runs now: running, with a check.
pub fn needs_check(c: &Inspected) -> bool {
    c.has_healthcheck && c.state.state == "running"
}

/// The stack's containers (stopped ones too) with state and health. Podman
/// runs health checks on systemd timers only; without systemd they never
/// run, so each running container's check is run here (`podman healthcheck
/// run`, which records the result as the timer would) before the status is read.
pub fn ps(host: &Host, engine: &[String], stack: &StackRef) -> Result<Vec<ServiceState>, PluginError> {
    let ids = container_ids(host, engine, &stack.project, None)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let first = inspect(host, engine, &ids)?;
    let mut ran = false;
    for c in first.iter().filter(|c| needs_check(c)) {
        let target = c.state.id.clone().unwrap_or_else(|| c.state.container.clone());
        // Its exit status is the check's; the outcome is read back below.
        host.run(&argv(engine, &["healthcheck", "run", target.as_str()]))?;
        ran = true;
    }
    let all = if ran { inspect(host, engine, &ids)? } else { first };
    let mut states: Vec<ServiceState> = all.into_iter().map(|c| c.state).collect();
    states.sort_by(|a, b| (&a.service, &a.container).cmp(&(&b.service, &b.container)));
    Ok(states)
}

/// Logs of the stack's services: `podman logs [--tail N]` of each
/// container, every line prefixed with `SERVICE | `.
pub fn logs(host: &Host, engine: &[String], req: &StackLogsRequest) -> Result<Text, PluginError> {
    for s in &req.services {
        check_name("service", s)?;
    }
    let ids = container_ids(host, engine, &req.stack.project, None)?;
    let containers = if ids.is_empty() { Vec::new() } else { inspect(host, engine, &ids)? };
    let mut text = String::new();
    let mut wanted: Vec<&Inspected> =
        containers.iter().filter(|c| req.services.is_empty() || req.services.contains(&c.state.service)).collect();
    wanted.sort_by(|a, b| (&a.state.service, &a.state.container).cmp(&(&b.state.service, &b.state.container)));
    for c in wanted {
        let mut a = argv(engine, &["logs"]);
        if let Some(n) = req.tail {
            a.push("--tail".into());
            a.push(n.to_string());
        }
        a.push(c.state.id.clone().unwrap_or_else(|| c.state.container.clone()));
        let out = host.run(&a)?;
        for line in out.stdout.lines().chain(out.stderr.lines()) {
            text.push_str(&format!("{} | {line}\n", c.state.service));
        }
    }
    Ok(text_of(text))
}

fn text_of(text: String) -> Text {
    Text { text }
}

/// Runs a command in a (running) container of a service: `podman exec CONTAINER argv…`.
pub fn exec(host: &Host, engine: &[String], req: &StackExecRequest) -> Result<ExecOutput, PluginError> {
    check_name("service", &req.service)?;
    if req.argv.is_empty() {
        return Err(PluginError::invalid("stack.exec needs a command"));
    }
    let ids = container_ids(host, engine, &req.stack.project, Some(&req.service))?;
    let running = if ids.is_empty() { Vec::new() } else { inspect(host, engine, &ids)? };
    let Some(c) = running.iter().find(|c| c.state.state == "running") else {
        return Err(PluginError::new(
            ErrorKind::NotAvailable,
            format!("no running container of service {} in stack {}", req.service, req.stack.project),
        ));
    };
    let mut a = argv(engine, &["exec"]);
    a.push(c.state.id.clone().unwrap_or_else(|| c.state.container.clone()));
    a.extend(req.argv.iter().cloned());
    host.run(&a)
}

/// `podman logs [--follow] [--since S] [--tail N] CONTAINER`, for the host to stream (`logs -f`).
pub fn container_logs_command(engine: &[String], req: &ContainerLogsRequest) -> Result<ExecRequest, PluginError> {
    check_name("container", &req.container)?;
    let mut a = argv(engine, &["logs"]);
    if req.follow {
        a.push("--follow".into());
    }
    if let Some(since) = &req.since {
        check_name("since", since)?;
        a.push("--since".into());
        a.push(since.clone());
    }
    if let Some(n) = req.tail {
        a.push("--tail".into());
        a.push(n.to_string());
    }
    a.push(req.container.clone());
    Ok(ExecRequest::new(a))
}

/// `podman exec [-i] [-t] [--user U] CONTAINER argv…`, for the host to run with the user's terminal.
pub fn container_exec_command(
    engine: &[String],
    req: &ContainerExecCommandRequest,
) -> Result<ExecRequest, PluginError> {
    check_name("container", &req.container)?;
    if req.argv.is_empty() {
        return Err(PluginError::invalid("container.exec_command needs a command"));
    }
    let mut a = argv(engine, &["exec"]);
    if req.interactive {
        a.push("-i".into());
    }
    if req.tty {
        a.push("-t".into());
    }
    if let Some(user) = &req.user {
        check_name("user", user)?;
        a.push("--user".into());
        a.push(user.clone());
    }
    a.push(req.container.clone());
    a.extend(req.argv.iter().cloned());
    Ok(ExecRequest::new(a))
}

/// Stops the stack's containers, kept with their volumes: `podman stop [-t N] ID…`
/// (podman-compose 1.0's own `stop -t N` passes `N.0`, which Podman refuses).
pub fn stop(host: &Host, engine: &[String], req: &StackStopRequest) -> Result<Empty, PluginError> {
    let ids = container_ids(host, engine, &req.stack.project, None)?;
    if ids.is_empty() {
        return Ok(Empty {});
    }
    let mut a = argv(engine, &["stop"]);
    if let Some(t) = req.timeout_secs {
        a.push("-t".into());
        a.push(t.to_string());
    }
    a.extend(ids);
    host.run_ok(&a)?;
    Ok(Empty {})
}

/// Starts the stack's stopped containers again, as they were: `podman start ID…`.
pub fn start(host: &Host, engine: &[String], stack: &StackRef) -> Result<Empty, PluginError> {
    let ids = container_ids(host, engine, &stack.project, None)?;
    if ids.is_empty() {
        return Err(PluginError::new(
            ErrorKind::NotAvailable,
            format!("stack {} has no containers to start", stack.project),
        ));
    }
    host.run_ok(&argv(engine, &["start"]).into_iter().chain(ids).collect::<Vec<_>>())?;
    Ok(Empty {})
}
