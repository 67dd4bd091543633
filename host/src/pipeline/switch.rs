//! Moving the running stack to a release without dropping a request.
//!
//! The frontend's nginx owns the published ports and is never restarted for a
//! backend or a site change; it is told where to send `/api/` and which site
//! to serve through the edge directory (`DEPLOY_PATH/edge`, mounted read-only
//! into it) and reloaded gracefully. One [`converge`] serves a deploy, a
//! `cultivate rollback` and the automatic rollback:
//!
//! 1. plan: each service's running container against the release (compose's
//!    own configuration hash and the image ID): unchanged, switched,
//!    reloaded or restarted ([`plan`]);
//! 2. database: recreated only when its image or configuration changed;
//!    Then, for a deploy with `[release] command`, the release command runs
//!    once in a one-off container of the new backend image ([`run_release_command`]);
//!    if it fails, nothing else moves;
//! 3. backend: a second container of the new configuration starts beside the
//!    running one; once healthy, the edge points at it and reloads, the old
//!    nginx workers finish their requests, then the old container stops. A new
//!    backend that never becomes healthy is removed and never got a request;
//! 4. site and certificate: copied out of the frontend image into
//!    `edge/sites/ID`, the `edge/site` link swapped, nginx reloaded;
//! 5. frontend: recreated only when its nginx image or configuration changed
//!    (announced, and the outage measured).
//!
//! A stack plugin that lacks [`ops::SWITCH_OPERATIONS`] gets the whole-stack
//! `compose up` of earlier versions, and the deploy says so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cultivate_plugin_api::ops::{self, ServiceState, StackRef};
use serde::Serialize;

use super::health::{self, HealthFailure};
use super::release::{ReleaseImage, ReleaseRecord};
use super::Ctx;

/// How a service is moved to a new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Stopped and recreated (the database: one writer on its volume).
    Restart,
    /// A new container beside the old, then the edge switches to it.
    Switch,
    /// The edge itself: reloaded in place; recreated only for a new nginx image or configuration.
    Edge,
}

/// One service of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Compose service name.
    pub name: &'static str,
    /// How it is replaced.
    pub replace: Replace,
}

/// The stack, in start order.
pub const STACK: [ServiceSpec; 3] = [
    ServiceSpec { name: "database", replace: Replace::Restart },
    ServiceSpec { name: "backend", replace: Replace::Switch },
    ServiceSpec { name: "frontend", replace: Replace::Edge },
];

/// The port the backend listens on inside its container.
pub const BACKEND_PORT: u16 = 3000;

/// Where the frontend image keeps its site.
pub const SITE_PATH: &str = "/usr/share/nginx/html";

/// What happens to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Its container keeps running, untouched.
    Unchanged,
    /// A new container takes over behind the edge: zero downtime.
    Switched,
    /// The container stays; its content or configuration is reloaded: zero downtime.
    Reloaded,
    /// Stopped and recreated: its requests fail meanwhile.
    Restarted,
    /// Not running yet: started.
    Started,
}

impl Action {
    /// Words for the plan.
    pub fn label(self) -> &'static str {
        match self {
            Action::Unchanged => "unchanged",
            Action::Switched => "switched (zero downtime)",
            Action::Reloaded => "reloaded in place (zero downtime)",
            Action::Restarted => "restarted",
            Action::Started => "started",
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    /// The service.
    pub service: String,
    /// What happens to it.
    pub action: Action,
    /// Why, when anything happens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a restart: seconds from stopping the old container to the new one being healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_secs: Option<f64>,
}

impl ServicePlan {
    fn new(service: &str, action: Action, reason: Option<String>) -> Self {
        ServicePlan { service: service.to_string(), action, reason, outage_secs: None }
    }

    /// `backend: switched (zero downtime): image changed`.
    pub fn line(&self) -> String {
        let mut s = format!("{}: {}", self.service, self.action.label());
        if let Some(r) = &self.reason {
            s.push_str(": ");
            s.push_str(r);
        }
        s
    }
}

/// What the edge directory says now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeState {
    /// The backend container nginx sends `/api/` to (`NAME:PORT`'s name).
    pub backend: Option<String>,
    /// The site directory served (`sites/ID`'s ID).
    pub site: Option<String>,
}

/// The directory name of a site: the first 16 hex digits of its image ID.
pub fn site_id(image_id: &str) -> String {
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    hex.chars().take(16).collect()
}

/// Digest of an image's layers below its last one: equal for two frontend
/// images that differ only in their site (the Dockerfile's last layer).
pub fn without_site(layers: &[String]) -> Option<String> {
    use sha2::{Digest, Sha256};
    if layers.len() < 2 {
        return None;
    }
    let mut h = Sha256::new();
    for l in &layers[..layers.len() - 1] {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    Some(format!("{:x}", h.finalize()))
}

fn running_of<'s>(states: &'s [ServiceState], service: &str) -> Vec<&'s ServiceState> {
    states.iter().filter(|s| s.service == service && s.state == "running").collect()
}

fn matches(state: &ServiceState, image: Option<&ReleaseImage>, hash: Option<&String>) -> bool {
    let image_ok = match (image, state.image_id.as_deref()) {
        (Some(i), Some(id)) => i.id == id,
        _ => false,
    };
    image_ok && hash.is_some() && state.config_hash.as_ref() == hash
}

/// Decides what happens to each service: `record` and `hashes` (compose's
/// configuration hash per service) are the release, `running` and `edge`
/// what the target runs now.
pub fn plan(
    record: &ReleaseRecord,
    hashes: &BTreeMap<String, String>,
    running: &[ServiceState],
    edge: &EdgeState,
) -> Vec<ServicePlan> {
    let mut out = Vec::new();
    for spec in STACK {
        let name = spec.name;
        let up = running_of(running, name);
        let image = record.images.get(name);
        let hash = hashes.get(name);
        let good: Vec<&&ServiceState> = up.iter().filter(|s| matches(s, image, hash)).collect();
        if up.is_empty() {
            out.push(ServicePlan::new(name, Action::Started, Some("not running".into())));
            continue;
        }
        let live_ok = match spec.replace {
            Replace::Switch => {
                let live = edge
                    .backend
                    .as_ref()
                    .and_then(|b| up.iter().find(|s| &s.container == b))
                    .or_else(|| up.iter().max_by(|a, b| a.started_at.cmp(&b.started_at)));
                live.is_some_and(|l| matches(l, image, hash))
            }
            _ => good.len() == 1,
        };
        // A switched service's stopped or crash-looping leftovers (a failed
        // new container, a run killed mid-switch) are removed by its switch.
        let leftovers =
            spec.replace == Replace::Switch && running.iter().any(|s| s.service == name && s.state != "running");
        if live_ok && up.len() == 1 && !leftovers {
            let site_changed = spec.replace == Replace::Edge
                && record.site.as_ref().is_some_and(|s| edge.site.as_deref() != Some(site_id(&s.id).as_str()));
            if site_changed {
                out.push(ServicePlan::new(name, Action::Reloaded, Some("site changed".into())));
            } else {
                out.push(ServicePlan::new(name, Action::Unchanged, None));
            }
            continue;
        }
        let all = running.iter().filter(|s| s.service == name).count();
        let reason = if up.len() > 1 || leftovers {
            format!("{all} containers (an interrupted switch or a failed one): keeping one")
        } else if !up.iter().any(|s| image.is_some_and(|i| s.image_id.as_deref() == Some(i.id.as_str()))) {
            "image changed".to_string()
        } else {
            "configuration changed".to_string()
        };
        let action = match spec.replace {
            Replace::Switch => Action::Switched,
            Replace::Edge if live_ok => Action::Reloaded,
            Replace::Edge | Replace::Restart => Action::Restarted,
        };
        out.push(ServicePlan::new(name, action, Some(reason)));
    }
    out
}

/// Whether the stack plugin can switch without downtime.
pub fn supported(ctx: &Ctx<'_>) -> bool {
    let m = ctx.stack.manifest();
    ops::SWITCH_OPERATIONS.iter().all(|op| m.implements(op))
}

/// Reads the edge directory.
pub fn read_edge(ctx: &Ctx<'_>) -> Result<EdgeState> {
    let q = cultivate_plugin_api::shell::quote;
    let dir = ctx.layout.edge();
    let out = ctx.session.sh(&format!(
        "cat {d}/backend 2>/dev/null | head -n 1; echo; readlink {d}/site 2>/dev/null; true",
        d = q(&dir)
    ))?;
    Ok(parse_edge(&out.stdout))
}

/// Parses `cat edge/backend; echo; readlink edge/site`.
pub fn parse_edge(text: &str) -> EdgeState {
    let mut lines = text.lines();
    let backend =
        lines.next().map(str::trim).and_then(|l| l.split(':').next()).filter(|n| !n.is_empty()).map(str::to_string);
    let site = lines
        .map(str::trim)
        .find(|l| !l.is_empty())
        .and_then(|l| l.rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    EdgeState { backend, site }
}

fn stack_states(ctx: &Ctx<'_>, stack: &StackRef) -> Result<Vec<ServiceState>> {
    ctx.stack_op::<ops::StackPs>(stack)
}

/// Waits until the service's container `id` (or, without one, its running
/// containers) is healthy. The failure names the service.
fn wait_for(ctx: &mut Ctx<'_>, stack: &StackRef, service: &str, id: Option<&str>) -> Result<Vec<ServiceState>> {
    let printer = ctx.printer.clone();
    let mut last = String::new();
    let this = &*ctx;
    let poll = || -> Result<Vec<ServiceState>> {
        let states = stack_states(this, stack)?;
        let mut states: Vec<ServiceState> = states
            .into_iter()
            .filter(|s| s.service == service)
            .filter(|s| match id {
                Some(id) => s.id.as_deref() == Some(id) || s.container == id,
                None => s.state == "running",
            })
            .collect();
        settle_starting(this, &mut states);
        Ok(states)
    };
    let verdict = health::wait(&ctx.settings.health, &[service], poll, |waiting| {
        let line = format!("waiting for {}", waiting.join(", "));
        if line != last {
            printer.detail(&line);
            last = line;
        }
    })?;
    verdict.map_err(|f: HealthFailure| anyhow::anyhow!("{f}"))
}

/// Counts a container healthy whose engine still says `starting` when its
/// own health check passes now ([`own_check_passes`]): a deploy moves on
/// as soon as a service answers, and `status` and the check for a deploy
/// with nothing to do agree with it. Runs nothing unless a container is
/// `starting`.
pub fn settle_starting(ctx: &Ctx<'_>, states: &mut [ServiceState]) {
    for s in states {
        if own_check_passes(ctx, s) {
            s.health = Some("healthy".into());
        }
    }
}

/// For a running container the engine still calls `starting`: runs its own
/// health check in it now, as the engine would (the engine's first check
/// comes one interval after the start: 5 s of the bundled stack's, for each
/// service in turn). True when it passes; anything else (no check reported,
/// a plugin without `container.exec_command`, a failure, 10 s without an
/// answer) leaves the verdict to the engine's own checks.
fn own_check_passes(ctx: &Ctx<'_>, s: &ServiceState) -> bool {
    if s.state != "running" || s.health.as_deref() != Some("starting") {
        return false;
    }
    let Some(argv) = s.health_test.as_deref().and_then(ops::health_test_argv) else { return false };
    if !ctx.stack.manifest().implements(<ops::ContainerExecCommand as ops::Operation>::NAME) {
        return false;
    }
    let container = s.id.clone().unwrap_or_else(|| s.container.clone());
    let req = ops::ContainerExecCommandRequest { container, argv, user: None, tty: false, interactive: false };
    let passed = ctx
        .stack_op::<ops::ContainerExecCommand>(&req)
        .and_then(|spec| Ok(ctx.session.run(&spec.timeout_secs(10))?))
        .is_ok_and(|out| out.success());
    if passed {
        tracing::debug!("{}: its own health check passed before the engine ran it", s.container);
    }
    passed
}

fn exec_in(ctx: &Ctx<'_>, container: &str, argv: &[&str]) -> Result<cultivate_plugin_api::ExecOutput> {
    ctx.stack_op::<ops::ContainerExec>(&ops::ContainerExecRequest {
        container: container.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
    })
}

/// Regenerates nginx's configuration from the edge directory and reloads it gracefully.
fn reload_edge(ctx: &mut Ctx<'_>, frontend: &str) -> Result<()> {
    let out = exec_in(ctx, frontend, &["cultivate-tls", "reload"])?;
    if !out.success() {
        bail!("reloading nginx in {frontend} failed (exit {}): {}", out.status, out.stderr.trim());
    }
    tracing::info!("edge reloaded: {}", out.stderr.trim());
    Ok(())
}

/// Waits until nginx's workers of the configuration before the last reload
/// have finished every request they had in flight.
fn drain_edge(ctx: &mut Ctx<'_>, frontend: &str) {
    let secs = ctx.settings.health.drain_secs.to_string();
    match exec_in(ctx, frontend, &["cultivate-tls", "drain", &secs]) {
        Ok(o) if o.success() => {}
        Ok(o) => ctx.warn(&format!(
            "the old nginx workers did not finish within {secs}s ({}); stopping the old backend anyway",
            o.stderr.trim()
        )),
        Err(e) => ctx.warn(&format!("cannot wait for the old nginx workers: {e:#}")),
    }
}

fn write_edge_backend(ctx: &Ctx<'_>, container: &str) -> Result<()> {
    let q = cultivate_plugin_api::shell::quote;
    let dir = ctx.layout.edge();
    ctx.session.sh(&format!(
        "mkdir -p {d} && printf '%s\\n' {v} > {d}/.backend.tmp && mv -f {d}/.backend.tmp {d}/backend",
        d = q(&dir),
        v = q(&format!("{container}:{BACKEND_PORT}"))
    ))?;
    Ok(())
}

fn remove(ctx: &mut Ctx<'_>, containers: Vec<String>, timeout: u64) -> Result<()> {
    if containers.is_empty() {
        return Ok(());
    }
    ctx.stack_op::<ops::ContainerRemove>(&ops::ContainerRemoveRequest { containers, timeout_secs: Some(timeout) })?;
    Ok(())
}

fn frontend_container(ctx: &Ctx<'_>, stack: &StackRef) -> Result<Option<String>> {
    Ok(stack_states(ctx, stack)?
        .into_iter()
        .find(|s| s.service == "frontend" && s.state == "running")
        .map(|s| s.id.unwrap_or(s.container)))
}

/// Points the edge at `container` and, when nginx runs, reloads it and lets
/// the old workers finish; `drain` waits for them.
fn point_edge(ctx: &mut Ctx<'_>, stack: &StackRef, container: &str, drain: bool) -> Result<()> {
    write_edge_backend(ctx, container)?;
    if let Some(fe) = frontend_container(ctx, stack)? {
        reload_edge(ctx, &fe)?;
        if drain {
            drain_edge(ctx, &fe);
        }
    }
    Ok(())
}

/// The backend: the running container stays when it already is the
/// release's; otherwise a new one starts beside it and takes over once healthy.
fn switch_backend(ctx: &mut Ctx<'_>, stack: &StackRef, record: &ReleaseRecord, hash: Option<&String>) -> Result<()> {
    let name = "backend";
    let image = record.images.get(name);
    let states = stack_states(ctx, stack)?;
    let edge = read_edge(ctx)?;
    let all: Vec<&ServiceState> = states.iter().filter(|s| s.service == name).collect();
    let up: Vec<&ServiceState> = all.iter().copied().filter(|s| s.state == "running").collect();
    let id_of = |s: &ServiceState| s.id.clone().unwrap_or_else(|| s.container.clone());
    // Stopped leftovers (a failed earlier attempt) only get in the way.
    let stopped: Vec<String> = all.iter().filter(|s| s.state != "running").map(|s| id_of(s)).collect();
    remove(ctx, stopped, 10)?;
    let live = edge
        .backend
        .as_ref()
        .and_then(|b| up.iter().copied().find(|s| &s.container == b))
        .or_else(|| up.iter().copied().max_by(|a, b| a.started_at.cmp(&b.started_at)))
        .cloned();
    let extras: Vec<String> = up
        .iter()
        .filter(|s| Some(s.container.as_str()) != live.as_ref().map(|l| l.container.as_str()))
        .map(|s| id_of(s))
        .collect();

    let Some(live) = live else {
        // Nothing runs: start it, then tell the edge.
        ctx.stack_op::<ops::StackUpServices>(&ops::UpServicesRequest {
            stack: stack.clone(),
            services: vec![name.into()],
            force_recreate: false,
            timeout_secs: Some(30),
        })?;
        let healthy = wait_for(ctx, stack, name, None).context("the backend did not become healthy")?;
        let new = healthy.first().map(|s| s.container.clone()).context("no backend container after starting it")?;
        return point_edge(ctx, stack, &new, false);
    };
    if matches(&live, image, hash) {
        if edge.backend.as_deref() != Some(live.container.as_str()) || !extras.is_empty() {
            point_edge(ctx, stack, &live.container, !extras.is_empty())?;
        }
        return remove(ctx, extras, 30);
    }
    // Containers other than the live one get no request: remove them first.
    remove(ctx, extras, 30)?;
    if edge.backend.as_deref() != Some(live.container.as_str()) {
        point_edge(ctx, stack, &live.container, true)?;
    }
    let before: Vec<String> = vec![id_of(&live)];
    ctx.detail(&format!("backend: starting the new container beside {}", live.container));
    ctx.stack_op::<ops::StackStartBeside>(&ops::StartBesideRequest {
        stack: stack.clone(),
        service: name.into(),
        replicas: 2,
    })?;
    let new = stack_states(ctx, stack)?
        .into_iter()
        .find(|s| s.service == name && !before.contains(&id_of(s)))
        .context("compose started no new backend container beside the running one")?;
    let new_id = id_of(&new);
    if let Err(e) = wait_for(ctx, stack, name, Some(&new_id)) {
        // It never got a request: the edge still points at the old one. It
        // stays until the diagnostics are taken; the rollback removes it.
        let reason = format!("{e:#}");
        ctx.log.record("ERROR", &format!("new backend {} failed: {reason}", new.container));
        return Err(e.context(format!(
            "the new backend {} did not become healthy; {} keeps serving",
            new.container, live.container
        )));
    }
    ctx.detail(&format!("backend: {} is healthy; switching the edge to it", new.container));
    point_edge(ctx, stack, &new.container, true)?;
    remove(ctx, vec![id_of(&live)], 30)?;
    ctx.detail(&format!("backend: {} drained and stopped", live.container));
    Ok(())
}

/// Copies the release's site out of its frontend image into `edge/sites/ID`
/// (once per image) and points `edge/site` at it; true when the link moved.
fn switch_site(ctx: &mut Ctx<'_>, record: &ReleaseRecord) -> Result<bool> {
    let Some(site) = &record.site else { return Ok(false) };
    let q = cultivate_plugin_api::shell::quote;
    let id = site_id(&site.id);
    let dir = ctx.layout.edge();
    ctx.stack_op::<ops::CopyFromImage>(&ops::CopyFromImageRequest {
        image: site.id.clone(),
        path: SITE_PATH.into(),
        dest: format!("{dir}/sites/{id}"),
    })?;
    let out = ctx.session.sh(&format!(
        "cd {d} && if [ \"$(readlink site 2>/dev/null)\" = {t} ]; then echo same; else \
         ln -sfn {t} .site.tmp && {mv} && echo moved; fi",
        d = q(&dir),
        t = q(&format!("sites/{id}")),
        mv = super::mv_replace(&ctx.session.info, ".site.tmp", "site")
    ))?;
    Ok(out.stdout.trim() == "moved")
}

/// Copies the release's certificate and key (or their absence) into the
/// deployment's certificate directory; true when anything changed.
fn sync_certs(ctx: &Ctx<'_>, version: &str) -> Result<bool> {
    let q = cultivate_plugin_api::shell::quote;
    let out = ctx.session.sh(&format!(
        "d={d}; r={r}; mkdir -p \"$d\"; c=0; for f in fullchain.pem privkey.pem; do \
           if [ -e \"$r/$f\" ]; then cmp -s \"$r/$f\" \"$d/$f\" || {{ cp -p \"$r/$f\" \"$d/.$f.tmp\" && mv -f \"$d/.$f.tmp\" \"$d/$f\"; c=1; }}; \
           elif [ -e \"$d/$f\" ]; then rm -f \"$d/$f\"; c=1; fi; done; echo $c",
        d = q(&ctx.layout.certs()),
        r = q(&format!("{}/certs", ctx.layout.release(version)))
    ))?;
    Ok(out.stdout.trim() == "1")
}

/// Moves the running stack to `version` (its record is `record`), service by
/// service; prints the plan first when `announce`. Returns the plan as carried out.
///
/// `interruptible`: a signal stops it between services (a deploy, which
/// then rolls back); a rollback or repair runs to the end.
pub fn converge(
    ctx: &mut Ctx<'_>,
    version: &str,
    record: &ReleaseRecord,
    announce: bool,
    interruptible: bool,
    release_command: Option<&str>,
) -> Result<Vec<ServicePlan>> {
    let safe_point = |ctx: &Ctx<'_>| if interruptible { ctx.checkpoint("switching services") } else { Ok(()) };
    let stack = ctx.stack_ref(version);
    let hashes = ctx
        .stack_op::<ops::StackServiceHashes>(&stack)
        .context("the compose file or .env of the release is not valid")?;
    ctx.hashes = Some((version.to_string(), hashes.clone()));
    let running = stack_states(ctx, &stack)?;
    let edge = read_edge(ctx)?;
    let mut plan = plan(record, &hashes, &running, &edge);
    if announce {
        for p in &plan {
            match p.action {
                Action::Restarted => ctx.warn(&format!("{}: its requests fail while it restarts", p.line())),
                _ => ctx.detail(&p.line()),
            }
        }
    }
    let action = |plan: &[ServicePlan], svc: &str| plan.iter().find(|p| p.service == svc).map(|p| p.action);
    ctx.session.sh(&format!("mkdir -p {}/sites", cultivate_plugin_api::shell::quote(&ctx.layout.edge())))?;

    // Database: only when it must.
    if matches!(action(&plan, "database"), Some(Action::Restarted | Action::Started)) {
        ctx.detail("database: recreating its container (its data volume stays)");
        ctx.stack_op::<ops::StackUpServices>(&ops::UpServicesRequest {
            stack: stack.clone(),
            services: vec!["database".into()],
            force_recreate: false,
            timeout_secs: Some(30),
        })?;
        wait_for(ctx, &stack, "database", None).context("the database did not become healthy")?;
    }

    // The release command: the database is up, the new images are loaded, no traffic has moved.
    if let Some(command) = release_command {
        safe_point(ctx)?;
        if matches!(action(&plan, "database"), Some(Action::Unchanged | Action::Reloaded | Action::Switched)) {
            wait_for(ctx, &stack, "database", None).context("the database is not healthy")?;
        }
        run_release_command(ctx, &stack, command)?;
    }

    // Backend: behind the edge.
    safe_point(ctx)?;
    switch_backend(ctx, &stack, record, hashes.get("backend"))?;
    safe_point(ctx)?;

    // Site and certificate: in place.
    let site_moved = switch_site(ctx, record)?;
    let certs_changed = sync_certs(ctx, version)?;

    // Frontend: reloaded, or recreated when its own image or configuration changed.
    match action(&plan, "frontend") {
        Some(Action::Restarted | Action::Started) => {
            let start = Instant::now();
            ctx.stack_op::<ops::StackUpServices>(&ops::UpServicesRequest {
                stack: stack.clone(),
                services: vec!["frontend".into()],
                force_recreate: false,
                timeout_secs: Some(15),
            })?;
            wait_for(ctx, &stack, "frontend", None).context("the frontend did not become healthy")?;
            let secs = start.elapsed().as_secs_f64();
            if let Some(p) = plan.iter_mut().find(|p| p.service == "frontend" && p.action == Action::Restarted) {
                p.outage_secs = Some(secs);
                ctx.detail(&format!("frontend: recreated; requests could fail for at most {secs:.1}s"));
            }
        }
        _ => {
            if site_moved || certs_changed {
                if let Some(fe) = frontend_container(ctx, &stack)? {
                    reload_edge(ctx, &fe)?;
                }
                if let Some(p) = plan.iter_mut().find(|p| p.service == "frontend") {
                    if p.action == Action::Unchanged {
                        p.action = Action::Reloaded;
                        p.reason = Some("certificate changed".into());
                    }
                }
            }
        }
    }

    // Every container of the release, healthy.
    let states = stack_states(ctx, &stack)?;
    let failed: Vec<String> = STACK
        .iter()
        .filter(|s| health::judge(&[s.name], &states) != health::Verdict::Healthy)
        .map(|s| s.name.to_string())
        .collect();
    if !failed.is_empty() {
        for s in &failed {
            wait_for(ctx, &stack, s, None).with_context(|| format!("{s} is not healthy"))?;
        }
    }
    Ok(plan)
}

/// Longest a release command may run.
pub const RELEASE_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// The `release` service of the compose file: a one-off container of the new backend image.
pub const RELEASE_SERVICE: &str = "release";

fn release_containers(ctx: &Ctx<'_>, stack: &StackRef) -> Result<Vec<ServiceState>> {
    Ok(stack_states(ctx, stack)?.into_iter().filter(|s| s.service == RELEASE_SERVICE).collect())
}

fn remove_release_containers(ctx: &Ctx<'_>, stack: &StackRef) -> Result<()> {
    let containers: Vec<String> =
        release_containers(ctx, stack)?.into_iter().map(|s| s.id.unwrap_or(s.container)).collect();
    if !containers.is_empty() {
        ctx.stack_op::<ops::ContainerRemove>(&ops::ContainerRemoveRequest { containers, timeout_secs: Some(5) })?;
    }
    Ok(())
}

/// Runs `command` once in a one-off container of the release's backend image
/// (compose service `release`: the backend's environment, volumes and
/// network), waits for it to exit and removes it. Its output goes to the
/// deploy log; a non-zero exit is an error carrying the output's last lines.
pub fn run_release_command(ctx: &mut Ctx<'_>, stack: &StackRef, command: &str) -> Result<()> {
    ctx.status(&format!("running the release command `{command}`"));
    let start = Instant::now();
    // A leftover of an interrupted deploy would be started again instead of a new one.
    remove_release_containers(ctx, stack)?;
    ctx.stack_op::<ops::StackUpServices>(&ops::UpServicesRequest {
        stack: stack.clone(),
        services: vec![RELEASE_SERVICE.into()],
        force_recreate: true,
        timeout_secs: Some(5),
    })
    .context("starting the release command's container failed")?;
    let exited = loop {
        let mine = release_containers(ctx, stack)?;
        match mine.first() {
            Some(s) if s.state != "running" && s.state != "created" && s.state != "restarting" => {
                break Some(s.clone())
            }
            None => bail!("the release command's container vanished before it exited"),
            _ => {}
        }
        if start.elapsed() > RELEASE_COMMAND_TIMEOUT || crate::interrupt::received().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let logs = ctx
        .stack_op::<ops::StackLogs>(&ops::StackLogsRequest {
            stack: stack.clone(),
            services: vec![RELEASE_SERVICE.into()],
            tail: Some(500),
        })
        .map(|t| t.text)
        .unwrap_or_else(|e| format!("(its output could not be read: {e:#})"));
    let output: Vec<String> = logs
        .lines()
        .filter(|l| !l.starts_with("Attaching to "))
        .map(|l| l.split_once(" | ").map(|(_, rest)| rest).unwrap_or(l).trim_end().to_string())
        .collect();
    for line in &output {
        ctx.log.record("INFO", &format!("release command: {line}"));
        tracing::info!("release command: {line}");
    }
    let _ = remove_release_containers(ctx, stack);
    let secs = start.elapsed().as_secs_f64();
    let tail = output.iter().rev().take(20).rev().cloned().collect::<Vec<_>>().join("\n");
    match exited {
        None => bail!(
            "the release command `{command}` did not finish within {}s (stopped); its output:\n{tail}",
            RELEASE_COMMAND_TIMEOUT.as_secs()
        ),
        Some(s) if s.exit_code == Some(0) => {
            ctx.log.record("INFO", &format!("release command `{command}` succeeded in {secs:.1}s"));
            ctx.detail(&format!("release command: succeeded in {secs:.1}s ({} lines of output in the deploy log)", output.len()));
            Ok(())
        }
        Some(s) => bail!(
            "the release command `{command}` failed (exit code {}) before any traffic moved to the new release; its output:\n{tail}",
            s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| s.state.clone())
        ),
    }
}

/// How long a plan's restarts keep the site down, for the summary.
pub fn outage(plan: &[ServicePlan]) -> Option<Duration> {
    plan.iter().filter_map(|p| p.outage_secs).reduce(f64::max).map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::release::ReleaseStatus;
    use proptest::prelude::*;

    fn record(db: &str, be: &str, fe: &str, site: &str) -> ReleaseRecord {
        let img =
            |id: &str| ReleaseImage { reference: format!("p-x:{id}"), id: format!("sha256:{id}"), without_site: None };
        ReleaseRecord {
            version: "v2".into(),
            created_at: String::new(),
            images: BTreeMap::from([
                ("database".into(), img(db)),
                ("backend".into(), img(be)),
                ("frontend".into(), img(fe)),
            ]),
            site: Some(img(site)),
            files: BTreeMap::new(),
            fingerprint: String::new(),
            status: ReleaseStatus::Pending,
            previous: None,
            runtime: BTreeMap::new(),
            secret_keys: None,
            config_hashes: BTreeMap::new(),
        }
    }

    fn st(service: &str, container: &str, image: &str, hash: &str) -> ServiceState {
        ServiceState {
            service: service.into(),
            container: container.into(),
            state: "running".into(),
            health: Some("healthy".into()),
            id: Some(format!("id-{container}")),
            image_id: Some(format!("sha256:{image}")),
            config_hash: Some(hash.into()),
            started_at: Some("2026-11-29T00:00:00Z".into()),
            ..ServiceState::default()
        }
    }

    fn hashes(db: &str, be: &str, fe: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("database".into(), db.into()), ("backend".into(), be.into()), ("frontend".into(), fe.into())])
    }

    fn actions(p: &[ServicePlan]) -> Vec<Action> {
        p.iter().map(|p| p.action).collect()
    }

    fn edge(backend: &str, site: &str) -> EdgeState {
        EdgeState { backend: Some(backend.into()), site: Some(site_id(&format!("sha256:{site}"))) }
    }

    #[test]
    fn nothing_changed_touches_nothing() {
        let running =
            vec![st("database", "db1", "d", "h1"), st("backend", "be1", "b", "h2"), st("frontend", "fe1", "f", "h3")];
        let p = plan(&record("d", "b", "f", "s"), &hashes("h1", "h2", "h3"), &running, &edge("be1", "s"));
        assert_eq!(actions(&p), [Action::Unchanged; 3]);
    }

    #[test]
    fn a_new_backend_is_switched_and_nothing_else_moves() {
        let running =
            vec![st("database", "db1", "d", "h1"), st("backend", "be1", "b", "h2"), st("frontend", "fe1", "f", "h3")];
        let p = plan(&record("d", "b2", "f", "s"), &hashes("h1", "h2x", "h3"), &running, &edge("be1", "s"));
        assert_eq!(actions(&p), [Action::Unchanged, Action::Switched, Action::Unchanged]);
        assert_eq!(p[1].reason.as_deref(), Some("image changed"));
    }

    #[test]
    fn a_new_site_is_a_reload_and_a_new_nginx_a_restart() {
        let running =
            vec![st("database", "db1", "d", "h1"), st("backend", "be1", "b", "h2"), st("frontend", "fe1", "f", "h3")];
        let p = plan(&record("d", "b", "f", "s2"), &hashes("h1", "h2", "h3"), &running, &edge("be1", "s"));
        assert_eq!(actions(&p), [Action::Unchanged, Action::Unchanged, Action::Reloaded]);
        let p = plan(&record("d", "b", "f2", "s2"), &hashes("h1", "h2", "h3x"), &running, &edge("be1", "s"));
        assert_eq!(p[2].action, Action::Restarted);
    }

    #[test]
    fn database_configuration_change_is_a_restart_with_the_reason() {
        let running =
            vec![st("database", "db1", "d", "h1"), st("backend", "be1", "b", "h2"), st("frontend", "fe1", "f", "h3")];
        let p = plan(&record("d", "b", "f", "s"), &hashes("h1x", "h2", "h3"), &running, &edge("be1", "s"));
        assert_eq!(p[0].action, Action::Restarted);
        assert_eq!(p[0].reason.as_deref(), Some("configuration changed"));
    }

    #[test]
    fn a_half_switched_backend_is_repaired() {
        // Killed after the new container started: two backends, the edge on the old one.
        let running = vec![
            st("database", "db1", "d", "h1"),
            st("backend", "be1", "b", "h2"),
            st("backend", "be2", "b2", "h2x"),
            st("frontend", "fe1", "f", "h3"),
        ];
        let p = plan(&record("d", "b2", "f", "s"), &hashes("h1", "h2x", "h3"), &running, &edge("be1", "s"));
        assert_eq!(p[1].action, Action::Switched);
        assert!(p[1].reason.as_deref().unwrap().contains("2 containers"), "{p:?}");
        // Killed during a rollback: the failed new backend crash-loops beside the live one.
        let mut failed = st("backend", "be9", "b9", "h9");
        failed.state = "restarting".into();
        let running = vec![
            st("database", "db1", "d", "h1"),
            st("backend", "be1", "b", "h2"),
            failed,
            st("frontend", "fe1", "f", "h3"),
        ];
        let p = plan(&record("d", "b", "f", "s"), &hashes("h1", "h2", "h3"), &running, &edge("be1", "s"));
        assert_eq!(p[1].action, Action::Switched, "{p:?}");
        assert_eq!(p[0].action, Action::Unchanged);
    }

    #[test]
    fn an_empty_target_starts_everything() {
        let p = plan(&record("d", "b", "f", "s"), &hashes("h1", "h2", "h3"), &[], &EdgeState::default());
        assert_eq!(actions(&p), [Action::Started; 3]);
    }

    #[test]
    fn edge_state_parses() {
        assert_eq!(
            parse_edge("p_backend_2:3000\n\nsites/0123456789abcdef\n"),
            EdgeState { backend: Some("p_backend_2".into()), site: Some("0123456789abcdef".into()) }
        );
        assert_eq!(parse_edge("\n\n"), EdgeState::default());
    }

    #[test]
    fn site_layers_ignore_only_the_last() {
        let a = vec!["l1".to_string(), "l2".into(), "site1".into()];
        let b = vec!["l1".to_string(), "l2".into(), "site2".into()];
        let c = vec!["l1".to_string(), "l3".into(), "site1".into()];
        assert_eq!(without_site(&a), without_site(&b));
        assert_ne!(without_site(&a), without_site(&c));
        assert_eq!(without_site(&a[..1]), None);
    }

    proptest! {
        /// Whatever runs, every service gets exactly one line, in stack order,
        /// and a service whose one container matches is never touched.
        #[test]
        fn plan_covers_every_service(
            n_be in 0usize..4, be_matches in any::<bool>(), db_matches in any::<bool>(), text in "\\PC{0,40}"
        ) {
            let mut running = vec![st("database", "db1", "d", if db_matches { "h1" } else { "hx" })];
            for i in 0..n_be {
                running.push(st("backend", &format!("be{i}"), "b", if be_matches { "h2" } else { "hy" }));
            }
            let p = plan(&record("d", "b", "f", "s"), &hashes("h1", "h2", "h3"), &running, &parse_edge(&text));
            prop_assert_eq!(p.iter().map(|p| p.service.as_str()).collect::<Vec<_>>(), ["database", "backend", "frontend"]);
            prop_assert_eq!(p[0].action == Action::Unchanged, db_matches);
            if n_be == 0 {
                prop_assert_eq!(p[1].action, Action::Started);
            } else if n_be == 1 && be_matches {
                prop_assert_eq!(p[1].action, Action::Unchanged);
            } else {
                prop_assert_eq!(p[1].action, Action::Switched);
            }
        }
    }
}
