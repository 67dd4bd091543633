//! `cultivate deploy`: the stages of [`super`], in order, with the rollback
//! hung on the failure path of start and health.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cultivate_plugin_api::ops::{self, ImageRefs, ImageTagRequest};
use cultivate_plugin_api::ExecRequest;
use sha2::{Digest, Sha256};

use super::build::{self, BuiltImage, SERVICES};
use super::local_finch::LocalFinch;
use super::progress::BuildProgress;
use super::release::{self, ReleaseImage, ReleaseRecord, ReleaseStatus};
use super::switch::{self, Action, ServicePlan};
use super::transfer::{self, TransferStats};
use super::{envfile, Ctx, Stage};
use crate::cli::BuildMode;
use crate::error::{Code, UserError};
use crate::output::Printer;
use crate::settings::Settings;

/// What a deploy did, for `--json` and the figures.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeployReport {
    /// The release deployed (or the current one when nothing changed).
    pub version: String,
    /// `deployed`, `unchanged`, `rolled-back`, `planned`.
    pub outcome: String,
    /// The release before.
    pub previous: Option<String>,
    /// Per-image transfer figures.
    pub transfers: Vec<TransferStats>,
    /// Bytes of image data sent.
    pub bytes_sent: u64,
    /// Wall time per stage, seconds.
    pub timings: Vec<(Stage, f64)>,
    /// Where the deploy log went on the target.
    pub log_path: Option<String>,
    /// What happened (or, planned, would happen) to each service.
    pub services: Vec<ServicePlan>,
}

fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format!("{:x}", h.finalize())
}

/// A configuration file of a release.
struct ConfigFile {
    name: String,
    mode: u32,
    data: Vec<u8>,
}

/// The git commit of the application, for the release version.
fn git_short_hash(dir: &std::path::Path) -> Option<String> {
    let out =
        std::process::Command::new("git").args(["rev-parse", "--short=7", "HEAD"]).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a deploy with `settings`.
pub fn run(settings: &Settings, printer: &Printer) -> Result<DeployReport> {
    // Before anything runs (--dry-run included): every problem at once, exit 2.
    crate::checks::enforce(settings)?;
    let secrets = match &settings.secrets_file {
        Some(path) => crate::settings::load_secrets(path)?,
        None => BTreeMap::new(),
    };
    let tls =
        settings.tls.as_ref().map(|t| crate::certs_check::check_pair(t, settings.cert_warning_days)).transpose()?;

    let version = match &settings.release_version {
        Some(v) => v.clone(),
        None => release::version_from(time::OffsetDateTime::now_utc(), git_short_hash(&settings.app_dir).as_deref()),
    };
    let mut ctx = super::connect(settings, printer, settings.install_deps)?;
    if let Some(warnings) = &tls {
        for w in warnings {
            ctx.warn(w);
        }
    }
    if settings.dry_run {
        return plan(&mut ctx, &version, &secrets);
    }
    // Nothing changed is found without the lock when it can be (reads only).
    let built = match unchanged_without_lock(&mut ctx, &version, &secrets) {
        Ok(Unlocked::Unchanged(report)) => {
            ctx.session.close();
            tracing::info!("deploy timings: {}", ctx.timings.summary());
            let mut report = *report;
            report.timings = ctx.timings.0.clone();
            return Ok(report);
        }
        Ok(Unlocked::Built(images)) => Ok(images),
        // Interrupted before the lock: nothing on the target to undo.
        Err(e) if crate::interrupt::received().is_some() => return Err(e),
        // A failed build: reported, and logged on the target, as under the lock.
        Err(e) => Err(e),
    };
    let start = std::time::Instant::now();
    ctx.lock(&format!("deploy of {version}")).map_err(|e| super::explain_disk_full(&ctx, e))?;
    ctx.timings.record(Stage::Lock, start);
    let result = built.and_then(|built| deploy_locked(&mut ctx, &version, &secrets, built));
    let result = match result {
        Err(e) if crate::interrupt::received().is_some() => Err(interrupted(&mut ctx, &version, e)),
        Err(e) => Err(super::explain_disk_full(&ctx, e)),
        other => other,
    };
    let log_name = format!("deploy-{version}.log");
    match &result {
        Ok(r) if r.outcome == "unchanged" => {}
        Ok(_) => ctx.log.record("INFO", &format!("deploy of {version} finished")),
        Err(e) => ctx.log.record("ERROR", &format!("{e:#}")),
    }
    let persist = !matches!(&result, Ok(r) if r.outcome == "unchanged");
    if persist {
        let start = std::time::Instant::now();
        ctx.persist_log(&log_name);
        ctx.timings.record(Stage::PersistLogs, start);
    }
    ctx.unlock();
    ctx.session.close();
    let mut report = result?;
    report.timings = ctx.timings.0.clone();
    if persist {
        report.log_path = Some(format!("{}/{log_name}", ctx.layout.logs()));
    }
    tracing::info!("deploy timings: {}", ctx.timings.summary());
    Ok(report)
}

/// After a signal: the new release's directory goes unless it became
/// current; the error says what was left, with the signal's exit code.
fn interrupted(ctx: &mut Ctx<'_>, version: &str, cause: anyhow::Error) -> anyhow::Error {
    let Some(signal) = crate::interrupt::received() else { return cause };
    let current = ctx.current_version().ok().flatten();
    let mut left = Vec::new();
    if current.as_deref() != Some(version) {
        let dir = ctx.layout.release(version);
        match ctx.session.run(&ExecRequest::new(["rm", "-rf", &dir])) {
            Ok(o) if o.success() => left.push(format!("release {version} was removed")),
            _ => left.push(format!("{dir} may be left behind (the next deploy removes it)")),
        }
    }
    left.push(match &current {
        Some(c) => format!("release {c} is still serving"),
        None => "nothing was deployed before".to_string(),
    });
    let code = crate::interrupt::code_for(signal);
    let message = format!("{}: {}", crate::interrupt::Interrupted(signal), left.join("; "));
    tracing::info!("interrupted: {cause:#}");
    UserError::new(code, message).into()
}

fn plan(ctx: &mut Ctx<'_>, version: &str, secrets: &BTreeMap<String, String>) -> Result<DeployReport> {
    let s = ctx.settings;
    let current = ctx.current_version()?;
    let current_record = match &current {
        Some(v) => ctx.read_record(v)?,
        None => None,
    };
    ctx.status(&format!("plan for release {version} (dry run: nothing is changed)"));
    // Local builds change nothing on the target: build, so that the plan knows which images changed.
    let services = if s.build_mode == BuildMode::Local && switch::supported(ctx) {
        let images = build_images(ctx, version)?;
        let (desired, site) = desired_images(&images, current_record.as_ref());
        let files = config_files(ctx, version, secrets, &desired)?;
        let services = dry_run_services(ctx, &desired, site, &files);
        untag_local(&images);
        Some(services?)
    } else {
        None
    };
    let stack = s.stack();
    let steps = [
        format!("use {}", stack.describe()),
        format!(
            "build {} images ({}, base {})",
            SERVICES.len(),
            match s.build_mode {
                BuildMode::Local => "on this machine",
                BuildMode::Remote => "on the target",
            },
            s.base_image
        ),
        format!("tag them {}", build::image_ref(&s.project, "SERVICE", version)),
        format!(
            "send the layers {} lacks through {} and verify the image IDs",
            ctx.session.target, ctx.session.transport
        ),
        format!(
            "upload docker-compose.yml, .env (mode 0600){} to {}",
            if s.tls.is_some() { " and the certificate" } else { "" },
            ctx.layout.release(version)
        ),
        match &s.release_command {
            Some(c) => format!(
                "run the release command `{c}` once, in a one-off container of the new backend image \
                 connected to the database, before any traffic moves; if it fails, stop there"
            ),
            None => "no release command (`[release] command` is not set)".to_string(),
        },
        if switch::supported(ctx) {
            format!(
                "move the stack to it service by service with {} (project {}), ports {} and {}: \
                 a new backend takes over behind nginx once healthy, nginx reloads in place",
                ctx.stack.manifest().name,
                s.project,
                s.http_port,
                s.https_port
            )
        } else {
            format!(
                "recreate the whole stack with {} (project {}: it cannot switch without downtime), ports {} and {}",
                ctx.stack.manifest().name,
                s.project,
                s.http_port,
                s.https_port
            )
        },
        format!("wait up to {}s for database, backend and frontend to be healthy", s.health.timeout_secs),
        match &current {
            Some(c) => format!("on failure roll back to release {c} the same way"),
            None => "on failure stop the new release (there is no previous one)".to_string(),
        },
        format!("keep {} releases; write the deploy log to {}", s.releases_kept, ctx.layout.logs()),
    ];
    for (i, step) in steps.iter().enumerate() {
        ctx.printer.detail(&format!("{}. {step}", i + 1));
    }
    let services = services.unwrap_or_default();
    if !services.is_empty() {
        ctx.printer.detail("services:");
        for p in &services {
            ctx.printer.detail(&format!("  {}", p.line()));
        }
    }
    Ok(DeployReport {
        version: version.to_string(),
        outcome: "planned".into(),
        previous: current,
        services,
        ..DeployReport::default()
    })
}

/// The plan of a dry run: the release's configuration goes to a scratch
/// directory on the target only to ask compose for its hashes, then goes.
fn dry_run_services(
    ctx: &mut Ctx<'_>,
    desired: &BTreeMap<String, ReleaseImage>,
    site: ReleaseImage,
    files: &[ConfigFile],
) -> Result<Vec<ServicePlan>> {
    let q = cultivate_plugin_api::shell::quote;
    let scratch = format!("{}/.plan-{}", ctx.layout.root, std::process::id());
    ctx.session.sh(&format!("mkdir -p {}", q(&scratch)))?;
    let result = (|| {
        for f in files.iter().filter(|f| !f.name.starts_with("certs/")) {
            ctx.session.put_file(&format!("{scratch}/{}", f.name), f.mode, &f.data)?;
        }
        let mut stack = ctx.stack_ref("unused");
        stack.dir = scratch.clone();
        let hashes = ctx.stack_op::<ops::StackServiceHashes>(&stack)?;
        let running = ctx.stack_op::<ops::StackPs>(&stack)?;
        let edge = switch::read_edge(ctx)?;
        let record = ReleaseRecord {
            version: String::new(),
            created_at: String::new(),
            images: desired.clone(),
            site: Some(site),
            files: BTreeMap::new(),
            fingerprint: String::new(),
            status: ReleaseStatus::Pending,
            previous: None,
            runtime: BTreeMap::new(),
            secret_keys: None,
            config_hashes: BTreeMap::new(),
        };
        Ok(switch::plan(&record, &hashes, &running, &edge))
    })();
    let _ = ctx.session.run(&ExecRequest::new(["rm", "-rf", &scratch]));
    result
}

/// The image each service runs in a release: the one just built, or, when
/// its content is what the current release runs, the current reference (so
/// compose sees an unchanged configuration and leaves the container alone).
/// The frontend's nginx stays the current one when only its site changed;
/// the site is always the new image's. Returns `(service → image, site)`.
pub fn desired_images(
    images: &[BuiltImage],
    current: Option<&ReleaseRecord>,
) -> (BTreeMap<String, ReleaseImage>, ReleaseImage) {
    let mut out = BTreeMap::new();
    let mut site = ReleaseImage { reference: String::new(), id: String::new(), without_site: None };
    for i in images {
        let built = ReleaseImage {
            reference: i.reference.clone(),
            id: i.id.clone(),
            without_site: (i.service == "frontend").then(|| switch::without_site(&i.layers)).flatten(),
        };
        let old = current.and_then(|r| r.images.get(&i.service));
        let keep = match old {
            Some(o) if o.id == i.id => true,
            Some(o) if i.service == "frontend" => o.without_site.is_some() && o.without_site == built.without_site,
            _ => false,
        };
        if i.service == "frontend" {
            // The site's image keeps the reference the target knows it by.
            let reference = current
                .and_then(|r| {
                    let site = r.site.as_ref().filter(|s| s.id == i.id).map(|s| &s.reference);
                    site.or(old.filter(|o| o.id == i.id).map(|o| &o.reference))
                })
                .unwrap_or(&i.reference);
            site = ReleaseImage { reference: reference.clone(), id: i.id.clone(), without_site: None };
        }
        out.insert(i.service.clone(), if keep { old.cloned().unwrap_or(built) } else { built });
    }
    (out, site)
}

/// What [`unchanged_without_lock`] found.
enum Unlocked {
    /// The current release is this one and runs as recorded: done.
    Unchanged(Box<DeployReport>),
    /// Something to do (or it could not tell without the lock): the images,
    /// when it built them, go on to the locked deploy.
    Built(Option<Vec<BuiltImage>>),
}

/// A deploy that changes nothing needs no lock: when `connect`'s read says
/// no lock is there (none held, none left by a run that died: that one takes
/// the locked path, which heals it), nothing is stopped, and the current
/// release is healthy, the images are built here (locally: nothing on the
/// target), and when the fingerprint is the current release's and its
/// containers run as its record says (one each, healthy, its images, its
/// configuration when the record holds the hashes, the edge on its backend),
/// the deploy ends here having changed nothing: no lock taken, no log written.
/// Anything else goes the usual way, under the lock, which reads the state
/// again: what was read here decides nothing there.
fn unchanged_without_lock(ctx: &mut Ctx<'_>, version: &str, secrets: &BTreeMap<String, String>) -> Result<Unlocked> {
    if ctx.settings.build_mode != BuildMode::Local {
        return Ok(Unlocked::Built(None));
    }
    let Some(state) = ctx.state.clone() else { return Ok(Unlocked::Built(None)) };
    let Some(rec) = state.current_record() else { return Ok(Unlocked::Built(None)) };
    if state.locked
        || state.stopped
        || rec.status != ReleaseStatus::Healthy
        || state.current.as_deref() != Some(rec.version.as_str())
        || state.releases.iter().any(|r| r == version)
    {
        return Ok(Unlocked::Built(None));
    }
    crate::interrupt::check()?;
    ctx.status(&format!("building release {version}"));
    let images = build_images(ctx, version)?;
    crate::interrupt::check()?;
    let (desired, _) = desired_images(&images, Some(&rec));
    let files = config_files(ctx, version, secrets, &desired)?;
    if fingerprint(&images, &files) != rec.fingerprint {
        return Ok(Unlocked::Built(Some(images)));
    }
    let mut states = ctx.stack_op::<ops::StackPs>(&ctx.stack_ref(&rec.version))?;
    switch::settle_starting(ctx, &mut states);
    let hashes = ctx.recorded_hashes(&rec);
    if !runs_as_recorded(&rec, &states, &state.edge(), hashes.as_ref(), switch::supported(ctx)) {
        tracing::info!("release {} is current but does not run as recorded: deploying under the lock", rec.version);
        return Ok(Unlocked::Built(Some(images)));
    }
    untag_local(&images);
    ctx.printer.success(&format!("nothing changed: release {} is current and healthy", rec.version));
    Ok(Unlocked::Unchanged(Box::new(unchanged_report(&rec, state.current.clone()))))
}

/// The report of a deploy that found nothing to do.
fn unchanged_report(rec: &ReleaseRecord, previous: Option<String>) -> DeployReport {
    DeployReport {
        version: rec.version.clone(),
        outcome: "unchanged".into(),
        previous,
        services: SERVICES
            .iter()
            .map(|s| ServicePlan { service: s.to_string(), action: Action::Unchanged, reason: None, outage_secs: None })
            .collect(),
        ..DeployReport::default()
    }
}

/// True when `states` are `rec`'s release running as recorded: one
/// container per service, all healthy, each running its service's image;
/// with the configuration hashes (`hashes`) and a switching stack, the
/// switch's own plan finds nothing to do (configuration, edge, site).
pub fn runs_as_recorded(
    rec: &ReleaseRecord,
    states: &[ops::ServiceState],
    edge: &switch::EdgeState,
    hashes: Option<&BTreeMap<String, String>>,
    switching: bool,
) -> bool {
    let one_each = SERVICES.iter().all(|s| states.iter().filter(|c| c.service == *s).count() == 1);
    let images =
        states.iter().all(|s| rec.images.get(&s.service).is_some_and(|i| s.image_id.as_deref() == Some(i.id.as_str())));
    let healthy = super::health::judge(&SERVICES, states) == super::health::Verdict::Healthy;
    if !(one_each && images && healthy) {
        return false;
    }
    // The edge, when there is one, on the one backend (the switch's plan
    // would take the newest backend for one that is gone).
    let backend = states.iter().find(|s| s.service == "backend").map(|s| s.container.as_str());
    if switching && edge.backend.is_some() && edge.backend.as_deref() != backend {
        return false;
    }
    match hashes {
        Some(h) if switching => switch::plan(rec, h, states, edge).iter().all(|p| p.action == Action::Unchanged),
        _ => true,
    }
}

fn deploy_locked(
    ctx: &mut Ctx<'_>,
    version: &str,
    secrets: &BTreeMap<String, String>,
    built: Option<Vec<BuiltImage>>,
) -> Result<DeployReport> {
    let settings = ctx.settings;
    // Read in the command that took the lock (one round trip for all of it).
    let state = match ctx.state.clone() {
        Some(state) => state,
        None => ctx.read_state()?,
    };
    let current = state.current.clone();
    let current_record = state.current_record();
    if state.releases.iter().any(|r| r == version) {
        bail!(crate::error::usage(format!("release {version} already exists on {}", ctx.session.target))
            .hint("pass another --release-version, or leave it out to use the time and commit"));
    }

    // Build.
    let what = format!("deploy of {version}");
    ctx.checkpoint(&what)?;
    let images = match built {
        Some(images) => images,
        None => {
            ctx.status(&format!("building release {version}"));
            build_images(ctx, version)?
        }
    };
    ctx.checkpoint(&what)?;

    // Configuration and fingerprint: nothing changed means nothing to do.
    let (desired, site) = desired_images(&images, current_record.as_ref());
    let files = config_files(ctx, version, secrets, &desired)?;
    let fingerprint = fingerprint(&images, &files);
    if let Some(rec) = &current_record {
        if rec.fingerprint == fingerprint && rec.status == ReleaseStatus::Healthy {
            let mut states = ctx.stack_op::<ops::StackPs>(&ctx.stack_ref(&rec.version))?;
            switch::settle_starting(ctx, &mut states);
            let one_each = SERVICES.iter().all(|s| states.iter().filter(|c| c.service == *s).count() == 1);
            if one_each && super::health::judge(&SERVICES, &states) == super::health::Verdict::Healthy {
                if settings.build_mode == BuildMode::Local {
                    untag_local(&images);
                }
                ctx.printer.success(&format!("nothing changed: release {} is current and healthy", rec.version));
                return Ok(unchanged_report(rec, current.clone()));
            }
        }
    }

    // Images to the target.
    let transfers = if settings.build_mode == BuildMode::Local {
        ctx.status(&format!("sending images to {}", ctx.session.target));
        let start = std::time::Instant::now();
        // A present image is tagged only when the release names it by its new tag.
        let named: std::collections::HashSet<&str> =
            desired.values().chain([&site]).map(|i| i.reference.as_str()).collect();
        let t = transfer_images(ctx, &images, &named)?;
        ctx.timings.record(Stage::TransferImages, start);
        t
    } else {
        Vec::new()
    };
    let bytes_sent = transfers.iter().map(|t| t.bytes_sent).sum();

    // Configuration to the target (P22).
    ctx.checkpoint(&what)?;
    ctx.status(&format!("uploading configuration to {}", ctx.layout.release(version)));
    let start = std::time::Instant::now();
    upload_config(ctx, version, &files)?;
    ctx.timings.record(Stage::TransferConfig, start);
    let mut record = ReleaseRecord {
        version: version.to_string(),
        created_at: release::now_iso(),
        images: desired,
        site: Some(site),
        files: files.iter().map(|f| (f.name.clone(), sha256_hex(&f.data))).collect(),
        fingerprint,
        status: ReleaseStatus::Pending,
        previous: current.clone(),
        runtime: BTreeMap::from([
            ("images".to_string(), ctx.images.manifest().name.clone()),
            ("stack".to_string(), ctx.stack.manifest().name.clone()),
        ]),
        secret_keys: Some(secrets.keys().cloned().collect()),
        config_hashes: BTreeMap::new(),
    };
    let stack = ctx.stack_ref(version);
    ctx.stack_op::<ops::StackConfig>(&stack).context("the compose file or .env of the new release is not valid")?;
    // Last safe point before the stack moves; from here on an interrupt is a
    // failure: the stack goes back to the previous release.
    ctx.checkpoint(&what)?;
    ctx.write_record(&record)?;

    // Start and health (P23); rollback on failure (P24).
    ctx.status(&format!("starting release {version}"));
    let start = std::time::Instant::now();
    let outcome = start_release(ctx, version, &record);
    ctx.timings.record(Stage::Up, start);
    let services = match outcome {
        Ok(services) => services,
        Err(e) => {
            record.status = ReleaseStatus::Failed;
            let _ = ctx.write_record(&record);
            return Err(fail_and_roll_back(ctx, version, current_record.as_ref(), &format!("{e:#}")));
        }
    };

    // Commit.
    let start = std::time::Instant::now();
    record.status = ReleaseStatus::Healthy;
    ctx.keep_hashes(&mut record);
    ctx.write_record(&record)?;
    ctx.set_current(version)?;
    prune(ctx, version, current.as_deref());
    ctx.timings.record(Stage::Commit, start);
    let url = format!("http://{}:{}/", display_host(ctx), settings.http_port);
    ctx.printer.success(&format!("release {version} is live and healthy: {url}"));
    if let Some(outage) = switch::outage(&services) {
        ctx.warn(&format!(
            "the frontend was recreated (new nginx image or configuration): requests could fail for up to {:.1}s",
            outage.as_secs_f64()
        ));
    }
    ctx.log.record("INFO", &format!("release {version} is healthy and current"));
    Ok(DeployReport {
        version: version.to_string(),
        outcome: "deployed".into(),
        previous: current,
        transfers,
        bytes_sent,
        services,
        ..DeployReport::default()
    })
}

/// Moves the running stack to `version`: service by service without
/// downtime when the stack plugin can, else the whole stack recreated.
pub fn start_release(ctx: &mut Ctx<'_>, version: &str, record: &ReleaseRecord) -> Result<Vec<ServicePlan>> {
    let settings = ctx.settings;
    if switch::supported(ctx) {
        return switch::converge(ctx, version, record, true, true, settings.release_command.as_deref());
    }
    if settings.release_command.is_some() {
        bail!(crate::error::usage(format!(
            "{} {} cannot run a release command before traffic moves (it lacks {}); nothing was started",
            ctx.stack.manifest().name,
            ctx.stack.manifest().version,
            ops::SWITCH_OPERATIONS.join(", ")
        ))
        .hint("use a stack plugin that can switch services (compose), or remove `[release] command`"));
    }
    ctx.warn(&format!(
        "{} {} cannot switch services without downtime (it lacks {}): recreating the whole stack",
        ctx.stack.manifest().name,
        ctx.stack.manifest().version,
        ops::SWITCH_OPERATIONS
            .iter()
            .filter(|o| !ctx.stack.manifest().implements(o))
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let stack = ctx.stack_ref(version);
    ctx.stack_op::<ops::StackUp>(&ops::StackUpRequest { stack, force_recreate: false, timeout_secs: Some(30) })
        .context("starting the stack failed")?;
    ctx.status("waiting for every container to be healthy");
    let start = std::time::Instant::now();
    let h = ctx.wait_healthy(version)?;
    ctx.timings.record(Stage::Health, start);
    let states = h.map_err(|f| anyhow::anyhow!("{f}"))?;
    super::rollback::check_images(record, &states)?;
    for s in &states {
        ctx.detail(&format!("{}: {} ({})", s.service, s.state, s.health.as_deref().unwrap_or("no health check")));
    }
    Ok(SERVICES
        .iter()
        .map(|s| ServicePlan {
            service: s.to_string(),
            action: Action::Restarted,
            reason: Some("the stack plugin cannot switch".into()),
            outage_secs: None,
        })
        .collect())
}

fn display_host(ctx: &Ctx<'_>) -> String {
    match ctx.session.target.as_str() {
        "local" => "localhost".to_string(),
        t => {
            let t = t.strip_prefix("ssh://").unwrap_or(t);
            let t = t.rsplit_once('@').map(|(_, h)| h).unwrap_or(t);
            if t.starts_with('[') {
                t.split(']').next().map(|h| format!("{h}]")).unwrap_or_else(|| t.to_string())
            } else {
                t.split(':').next().unwrap_or(t).to_string()
            }
        }
    }
}

fn untag_local(images: &[BuiltImage]) {
    let refs: Vec<String> = images.iter().map(|i| i.reference.clone()).collect();
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        let engine = rt.block_on(async {
            let docker = build::local_engine().await.ok()?;
            for r in &refs {
                let _ = docker.remove_image(r, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
            }
            Some(())
        });
        if engine.is_none() {
            if let Ok(Some(finch)) = LocalFinch::find() {
                finch.untag(&refs);
            }
        }
    }
}

/// What builds and exports images on this machine: its Docker engine, or
/// Finch when there is no engine (a Mac with Finch only).
enum LocalBuilder {
    Engine(bollard::Docker),
    Finch(LocalFinch),
}

impl LocalBuilder {
    /// The engine when it answers; else Finch when it is here; else the engine's error.
    fn find(rt: &tokio::runtime::Runtime) -> Result<LocalBuilder> {
        match rt.block_on(build::local_engine()) {
            Ok(docker) => Ok(LocalBuilder::Engine(docker)),
            Err(engine_error) => match LocalFinch::find()? {
                Some(finch) => Ok(LocalBuilder::Finch(finch)),
                None => Err(engine_error),
            },
        }
    }

    /// `reference`'s archive in a file.
    fn export(&self, rt: &tokio::runtime::Runtime, reference: &str) -> Result<std::fs::File> {
        match self {
            LocalBuilder::Engine(docker) => rt.block_on(transfer::export_to_file(docker, reference)),
            LocalBuilder::Finch(finch) => finch.save(reference),
        }
    }

    /// Where `image`'s archive comes from: the engine's layer store when
    /// `store` is given (see [`transfer::layer_store`]), else its export
    /// stream; or the file `finch save` wrote.
    fn source(
        &self,
        image: &BuiltImage,
        store: Option<&std::sync::Arc<transfer::layer_store::LayerStore>>,
    ) -> Result<transfer::Source> {
        match (self, store) {
            (LocalBuilder::Engine(docker), Some(store)) => {
                Ok(transfer::Source::LayerStore { store: store.clone(), docker: docker.clone(), id: image.id.clone() })
            }
            (LocalBuilder::Engine(docker), None) => Ok(transfer::Source::Engine(docker.clone())),
            (LocalBuilder::Finch(finch), _) => Ok(transfer::Source::File(finch.save(&image.reference)?)),
        }
    }
}

/// One image's summary line: `backend: shop-backend:V sha256:0123456789ab`.
fn image_summary(i: &BuiltImage) -> String {
    format!("{}: {} {}", i.service, i.reference, &i.id[..i.id.len().min(19)])
}

fn build_images(ctx: &mut Ctx<'_>, version: &str) -> Result<Vec<BuiltImage>> {
    let s = ctx.settings;
    let stack = s.stack();
    ctx.detail(&format!("stack: {}", stack.describe()));
    let context = build::context_tar(&stack, &s.app_dir)?;
    let start = std::time::Instant::now();
    let images = match s.build_mode {
        BuildMode::Local => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let printer = ctx.printer.clone();
            let builder = LocalBuilder::find(&rt)?;
            if let LocalBuilder::Finch(finch) = &builder {
                ctx.printer.detail(&format!("no Docker engine here: building with {}", finch.bin.display()));
            }
            let sink = move |line: &str| printer.detail(line);
            let progress = BuildProgress::new(ctx.printer.bars(), &SERVICES, Box::new(sink));
            let progress = &progress;
            let memo = build::BuildMemo::user();
            let digest = build::context_digest(&context);
            let local = &build::LocalBuild { context: &context, digest: &digest, memo: &memo };
            let (context, builder) = (&context, &builder);
            // One service's build, from its start line to its summary line.
            let build_one = |service: &'static str| async move {
                let reference = build::image_ref(&s.project, service, version);
                progress.start(service, &reference);
                let began = std::time::Instant::now();
                let mut reused = false;
                let mut step = |line: &str| {
                    if line.starts_with("Step ") || line.starts_with(build::REUSED) {
                        tracing::info!("{service}: {line}");
                    }
                    reused |= line.starts_with(build::REUSED);
                    progress.line(service, line);
                };
                let image = match builder {
                    LocalBuilder::Engine(docker) => {
                        build::build_local(docker, local, service, &reference, &s.base_image, &s.app, &mut step).await?
                    }
                    LocalBuilder::Finch(finch) => {
                        finch.build(context, service, &reference, &s.base_image, &s.app, &mut step)?
                    }
                };
                let how = if reused { "reused, " } else { "" };
                progress.finish(
                    service,
                    &format!("{} ({how}{:.1}s)", image_summary(&image), began.elapsed().as_secs_f64()),
                );
                Ok::<_, anyhow::Error>(image)
            };
            let built = rt.block_on(async {
                match builder {
                    // The engine builds the three images at once: they share
                    // nothing but the base image, and a cached build is mostly
                    // waiting on the daemon (issue 13, item 4).
                    LocalBuilder::Engine(_) => futures_util::future::join_all(SERVICES.iter().map(|s| build_one(s)))
                        .await
                        .into_iter()
                        .collect(),
                    // Finch's CLI builds block: one after another.
                    LocalBuilder::Finch(_) => {
                        let mut out = Vec::new();
                        for service in SERVICES {
                            out.push(build_one(service).await?);
                        }
                        Ok(out)
                    }
                }
            });
            memo.save();
            if built.is_err() {
                progress.abandon();
            }
            if progress.bars() {
                // The bars became the summary lines: into the deploy log only.
                for i in built.as_ref().into_iter().flatten() {
                    ctx.log.record("INFO", &image_summary(i));
                }
                ctx.timings.record(Stage::Build, start);
                return built;
            }
            built?
        }
        BuildMode::Remote => build_remote(ctx, version, &context)?,
    };
    finish_build(ctx, images, start)
}

fn finish_build(ctx: &mut Ctx<'_>, images: Vec<BuiltImage>, start: std::time::Instant) -> Result<Vec<BuiltImage>> {
    for i in &images {
        ctx.detail(&image_summary(i));
    }
    ctx.timings.record(Stage::Build, start);
    Ok(images)
}

fn build_remote(ctx: &mut Ctx<'_>, version: &str, context: &[u8]) -> Result<Vec<BuiltImage>> {
    let s = ctx.settings;
    let dir = format!("{}/build/{version}", ctx.layout.root);
    let q = cultivate_plugin_api::shell::quote;
    ctx.detail(&format!("sending the build context ({} KiB) to {dir}", context.len() / 1024));
    let out = ctx
        .session
        .run_with_input(
            &ExecRequest::shell(format!("rm -rf {d} && mkdir -p {d} && tar -x -C {d}", d = q(&dir))),
            &mut &context[..],
            &mut |_| {},
        )
        .context("sending the build context")?;
    out.check("unpacking the build context on the target")?;
    let mut images = Vec::new();
    for service in SERVICES {
        let reference = build::image_ref(&s.project, service, version);
        ctx.detail(&format!("{service}: building {reference} on the target"));
        let req = ops::ImageBuildRequest {
            context_dir: dir.clone(),
            dockerfile: format!("docker/Dockerfile.{service}"),
            tag: reference.clone(),
            build_args: build::build_args(&s.base_image, &s.app),
            labels: BTreeMap::new(),
        };
        let cmd = ctx.images_op::<ops::ImageBuildCommand>(&req)?;
        let out = ctx.session.run(&cmd)?;
        if !out.success() {
            let tail: Vec<&str> = out.stdout.lines().chain(out.stderr.lines()).rev().take(15).collect();
            bail!(UserError::new(Code::Failed, format!("building {reference} on the target failed"))
                .hint(tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        let info = ctx.images_op::<ops::ImageInspect>(&ImageRefs { refs: vec![reference.clone()] })?;
        let info = info
            .into_iter()
            .next()
            .filter(|i| i.id.is_some())
            .with_context(|| format!("{reference} is missing after building it"))?;
        images.push(BuiltImage {
            service: service.to_string(),
            reference,
            id: info.id.unwrap_or_default(),
            layers: info.layers,
            size: info.size,
        });
    }
    let _ = ctx.session.run(&ExecRequest::new(["rm", "-rf", &dir]));
    Ok(images)
}

/// Sends the images the target lacks; one it has is tagged when `named` (the
/// references the release uses) has its new reference. The target's images
/// are read in one command, its answer for each of ours included.
fn transfer_images(
    ctx: &mut Ctx<'_>,
    images: &[BuiltImage],
    named: &std::collections::HashSet<&str>,
) -> Result<Vec<TransferStats>> {
    let prefix = format!("{}-", ctx.settings.project);
    let ids = images.iter().map(|i| i.id.clone()).collect();
    let on_target = ctx.images_op::<ops::ImageList>(&ops::ImageListRequest { prefix, ids })?;
    let mut chains: std::collections::HashSet<String> =
        on_target.iter().flat_map(|i| transfer::chain_ids(&i.layers)).collect();
    let probe = ctx.runtimes.images.probe.as_ref().ok();
    // Only a classic image store is known to skip layers it has; anything else gets whole archives.
    let containerd = probe.and_then(|p| p.details.get("image_store")).is_none_or(|s| s != "classic");
    // A runtime that takes a partial OCI archive (Podman) gets one instead.
    let oci = probe.is_some_and(super::oci_archive::accepted);
    let codec = transfer::codec_for(
        &ctx.settings.transfer,
        &ctx.images.manifest().name,
        probe.and_then(|p| p.version.as_deref()),
        probe.and_then(|p| ops::loads_compression(&p.details, "zstd")),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let builder = LocalBuilder::find(&rt)?;
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2).clamp(1, 8);
    // Changed layers are read from the engine's layer store when it can be
    // read (no `docker save` of the whole image); the Podman path converts
    // an export.
    let store = match &builder {
        LocalBuilder::Engine(docker) if !oci => {
            rt.block_on(transfer::layer_store::LayerStore::detect(docker)).map(std::sync::Arc::new)
        }
        _ => None,
    };

    // Which images must go: the target may have some already (only tagged).
    let mut stats: Vec<Option<TransferStats>> = Vec::new();
    let mut to_send: Vec<&BuiltImage> = Vec::new();
    ctx.checkpoint("deploy: sending images")?;
    for image in images {
        // The list answered for our IDs too (another project's copy counts);
        // a plugin that predates that is asked by ID.
        let listed = on_target.iter().any(|i| i.id.as_deref() == Some(image.id.as_str()));
        let answered = on_target.iter().any(|i| i.reference == image.id);
        let present = listed
            || (!answered && {
                let found = ctx.images_op::<ops::ImageInspect>(&ImageRefs { refs: vec![image.id.clone()] })?;
                found.first().and_then(|i| i.id.as_deref()) == Some(image.id.as_str())
            });
        // The release names it by an older tag the target lists for it: nothing to do.
        let untagged = present
            && !named.contains(image.reference.as_str())
            && on_target
                .iter()
                .any(|i| i.id.as_deref() == Some(image.id.as_str()) && named.contains(i.reference.as_str()));
        // Tagged by ID: the image another project (sharing the target and
        // the content) had may be removed between the look and the tag; then
        // it is simply sent.
        let tagged = if !present {
            false
        } else if untagged {
            true
        } else {
            match ctx.images_op::<ops::ImageTag>(&ImageTagRequest {
                source: image.id.clone(),
                target: image.reference.clone(),
            }) {
                Ok(_) => true,
                Err(e) if format!("{e:#}").to_ascii_lowercase().contains("no such image") => {
                    ctx.detail(&format!(
                        "{}: the target's copy vanished before it was tagged; sending it",
                        image.service
                    ));
                    false
                }
                Err(e) => return Err(e),
            }
        };
        if tagged {
            let how = if untagged { "the release names it by its earlier tag" } else { "tagged" };
            ctx.detail(&format!("{}: already on the target, {how}", image.service));
            chains.extend(transfer::chain_ids(&image.layers));
            stats.push(Some(TransferStats {
                reference: image.reference.clone(),
                already_present: true,
                ..TransferStats::default()
            }));
        } else {
            stats.push(None);
            to_send.push(image);
        }
    }

    // Plans: an image may skip what the target has and what the images sent
    // before it bring (they load first; a failure stops the deploy).
    let mut known = transfer::load_known_dirs();
    let mut plans = Vec::new();
    for image in &to_send {
        let plan = if containerd && !oci {
            transfer::LayerPlan::everything(&image.layers)
        } else {
            transfer::LayerPlan {
                layers: image.layers.clone(),
                target_chains: chains.clone(),
                known_dirs: known.clone(),
            }
        };
        chains.extend(transfer::chain_ids(&image.layers));
        plans.push(plan);
    }
    // The next image's export runs while one is sent.
    // A retry after a failed load exports with `docker save` (`store` false).
    let start = |i: usize, plan: transfer::LayerPlan, codec: transfer::Codec, store_ok: bool| {
        let image = to_send[i];
        let source = builder.source(image, store.as_ref().filter(|_| store_ok))?;
        Ok::<_, anyhow::Error>(transfer::spawn_export(source, &image.reference, plan, codec, threads))
    };
    let mut next = match plans.first() {
        Some(p) if !oci => Some(start(0, p.clone(), codec, true)?),
        _ => None,
    };
    let mut sent_stats = Vec::new();
    // Compressed archives go one after the other without waiting for each
    // load: the next streams while the engine unpacks one (seconds for a
    // large image, the link idle otherwise), its last bytes held back until
    // that load ended. An uncompressed archive's end is not one read.
    let pipelined = codec != transfer::Codec::None;
    let mut pending: Option<(usize, Streamed)> = None;
    // The whole image, uncompressed: what a failed load gets once.
    let full = |j: usize| start(j, transfer::LayerPlan::everything(&to_send[j].layers), transfer::Codec::None, false);
    for (i, image) in to_send.iter().enumerate() {
        ctx.checkpoint("deploy: sending images")?;
        if oci {
            let mut archive = builder.export(&rt, &image.reference)?;
            let archive_bytes = transfer::file_len(&archive);
            let (mut stat, mut ok) =
                super::oci_archive::send(ctx, image, &mut archive, &plans[i].target_chains, archive_bytes)?;
            if !ok {
                ctx.warn(&format!(
                    "{}: loading only the changed layers failed; sending the whole image",
                    image.service
                ));
                let full = transfer::spawn_export(
                    transfer::Source::File(archive),
                    &image.reference,
                    transfer::LayerPlan::everything(&image.layers),
                    transfer::Codec::None,
                    threads,
                );
                let (again, loaded, _) = send_archive(ctx, image, full, transfer::Codec::None)?;
                stat = TransferStats { fell_back: true, bytes_sent: stat.bytes_sent + again.bytes_sent, ..again };
                ok = loaded.is_some();
            }
            if !ok {
                bail!("loading {} on {} failed", image.reference, ctx.session.target);
            }
            let after = ctx.images_op::<ops::ImageInspect>(&ImageRefs { refs: vec![image.reference.clone()] })?;
            transfer::verify_id(image, after.first().and_then(|i| i.id.as_deref()))?;
            sent_stats.push(stat);
            continue;
        }
        let outgoing = next.take().context("no export for the image")?;
        if let Some(p) = plans.get(i + 1) {
            next = Some(start(i + 1, p.clone(), codec, true)?);
        }
        if !pipelined {
            let first = send_archive(ctx, image, outgoing, codec)?;
            sent_stats.push(conclude_load(ctx, image, first, &mut known, &|| full(i))?);
            continue;
        }
        let mut streamed = stream_archive(ctx, image, outgoing, codec, true)?;
        // The previous image loaded while this one streamed; it ends first
        // (this one may leave out layers it brings), then this load may start.
        if let Some((j, previous)) = pending.take() {
            let first = finish_archive(ctx, to_send[j], previous)?;
            if first.1.is_none() {
                // This stream may lack what that load should have brought: given up, and sent again after.
                abandon_archive(image, streamed);
                sent_stats.push(conclude_load(ctx, to_send[j], first, &mut known, &|| full(j))?);
                streamed = stream_archive(ctx, image, start(i, plans[i].clone(), codec, true)?, codec, true)?;
            } else {
                sent_stats.push(conclude_load(ctx, to_send[j], first, &mut known, &|| full(j))?);
            }
        }
        // This load starts now, while the next image streams.
        release_archive(&mut streamed);
        pending = Some((i, streamed));
    }
    if let Some((j, last)) = pending.take() {
        let first = finish_archive(ctx, to_send[j], last)?;
        sent_stats.push(conclude_load(ctx, to_send[j], first, &mut known, &|| full(j))?);
    }
    let mut sent_stats = sent_stats.into_iter();
    Ok(stats.into_iter().map(|s| s.or_else(|| sent_stats.next()).unwrap_or_default()).collect())
}

/// The end of an image's load: a failed filtered or compressed load is
/// followed by the whole image, uncompressed (`full`), once; then P20's
/// check of the image ID. The stats of what was sent.
fn conclude_load(
    ctx: &mut Ctx<'_>,
    image: &BuiltImage,
    first: Finished,
    known: &mut std::collections::HashMap<String, String>,
    full: &dyn Fn() -> Result<transfer::Outgoing>,
) -> Result<TransferStats> {
    let (mut stat, mut loaded, report) = first;
    if let Some(r) = &report {
        transfer::save_known_dirs(known, &r.learned);
    }
    let codec_used = stat.compression != transfer::Codec::None.name();
    if loaded.is_none() && (stat.layers_skipped > 0 || codec_used || report.is_none()) {
        ctx.warn(&format!(
            "{}: loading the {} archive failed; sending the whole image uncompressed",
            image.service,
            if stat.layers_skipped > 0 { "filtered" } else { "compressed" }
        ));
        let sent_first = stat.bytes_sent;
        let (again, again_loaded, _) = send_archive(ctx, image, full()?, transfer::Codec::None)?;
        stat = TransferStats { fell_back: true, bytes_sent: sent_first + again.bytes_sent, ..again };
        loaded = again_loaded;
    }
    let Some(reported) = loaded else {
        bail!("loading {} on {} failed", image.reference, ctx.session.target);
    };
    // P20: the target's ID must equal ours (the load command reports it;
    // a plugin whose command does not is asked).
    let after = match reported {
        Some(id) => Some(id),
        None => ctx
            .images_op::<ops::ImageInspect>(&ImageRefs { refs: vec![image.reference.clone()] })?
            .into_iter()
            .next()
            .and_then(|i| i.id),
    };
    transfer::verify_id(image, after.as_deref())?;
    ctx.detail(&format!(
        "{}: sent {} of {} layers, {} ({}) of {}; image ID verified",
        image.service,
        stat.layers_sent,
        stat.layers_sent + stat.layers_skipped,
        transfer::human_bytes(stat.bytes_sent),
        stat.compression,
        transfer::human_bytes(stat.archive_bytes)
    ));
    Ok(stat)
}

/// An image's archive streamed into its load command, the load not yet
/// awaited ([`stream_archive`], [`finish_archive`]).
struct Streamed {
    streaming: Result<crate::session::Streaming, cultivate_plugin_api::PluginError>,
    read: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Result<transfer::FilterReport>>,
    progress: transfer::Progress,
    wire: u64,
    codec: transfer::Codec,
}

/// What a load came to: `(stats, loaded, the filter's report)`. `loaded` is
/// `None` when the load failed, else the image ID the command reported for
/// the reference, if it did. The report is `None` when the export failed.
type Finished = (TransferStats, Option<Option<String>>, Option<transfer::FilterReport>);

/// Streams an export being produced into the load command and waits for it.
fn send_archive(
    ctx: &mut Ctx<'_>,
    image: &BuiltImage,
    outgoing: transfer::Outgoing,
    codec: transfer::Codec,
) -> Result<Finished> {
    let streamed = stream_archive(ctx, image, outgoing, codec, false)?;
    finish_archive(ctx, image, streamed)
}

/// Streams an export being produced into the load command, all of it but
/// the last read when `hold_last` (the load then cannot start: see
/// [`crate::session::Session::stream`]).
fn stream_archive(
    ctx: &mut Ctx<'_>,
    image: &BuiltImage,
    outgoing: transfer::Outgoing,
    codec: transfer::Codec,
    hold_last: bool,
) -> Result<Streamed> {
    let transfer::Outgoing { mut reader, read, handle } = outgoing;
    let cmd = ctx.images_op::<ops::ImageLoadCommand>(&transfer::load_request(codec, Some(&image.reference)))?;
    // Progress counts the export read (what is dropped counts too): the wire
    // size is not known before the end.
    let total = image.size.max(1);
    let mut progress = transfer::Progress::new(&image.service, total, ctx.printer.bars(), ctx.printer.quiet());
    let mut wire = 0u64;
    let streaming = ctx.session.stream(
        &cmd,
        &mut reader,
        &mut |sent| {
            wire = sent;
            progress.update(read.load(Ordering::Relaxed).min(total))
        },
        hold_last,
    );
    // Dropping the reader ends a producer still writing (the load stopped early).
    drop(reader);
    Ok(Streamed { streaming, read, handle, progress, wire, codec })
}

/// Sends what [`stream_archive`] held back and waits for the load.
fn finish_archive(ctx: &mut Ctx<'_>, image: &BuiltImage, streamed: Streamed) -> Result<Finished> {
    let Streamed { streaming, read, handle, mut progress, mut wire, codec } = streamed;
    let result = streaming.and_then(|s| {
        wire += s.held_bytes();
        s.finish()
    });
    let produced = handle.join().map_err(|_| anyhow::anyhow!("the export of {} panicked", image.reference))?;
    let input = read.load(Ordering::Relaxed);
    let total = image.size.max(1);
    progress.finish(input.min(total));
    let loaded = match result {
        Ok(out) => out,
        // The export's own error explains a broken stream better than the transport's.
        Err(e) => match produced {
            Err(export) if !format!("{export:#}").contains(transfer::ABANDONED) => return Err(export),
            _ => return Err(e.into()),
        },
    };
    if !loaded.success() {
        ctx.log.record("WARN", &format!("{} load failed: {}", image.service, loaded.stderr.trim()));
        tracing::warn!("{} load failed (status {}): {}", image.reference, loaded.status, loaded.stderr.trim());
    }
    let report = match produced {
        Ok(r) => Some(r),
        Err(e) if loaded.success() => return Err(e),
        Err(_) => None,
    };
    let ok = loaded.success().then(|| ops::loaded_id(&loaded.stdout));
    let skipped = report.as_ref().map(|r| r.layers_skipped).unwrap_or(0);
    let stats = TransferStats {
        reference: image.reference.clone(),
        already_present: false,
        bytes_sent: wire,
        archive_bytes: input,
        layers_sent: image.layers.len().saturating_sub(skipped),
        layers_skipped: skipped,
        fell_back: false,
        compression: codec.name().to_string(),
    };
    Ok((stats, ok, report))
}

/// Sends what [`stream_archive`] held back without waiting for the load:
/// it runs while the next image streams. A failure here is the load's, seen
/// by [`finish_archive`].
fn release_archive(streamed: &mut Streamed) {
    if let Ok(s) = &mut streamed.streaming {
        streamed.wire += s.held_bytes();
        if let Err(e) = s.release() {
            streamed.streaming = Err(e);
        }
    }
}

/// Gives up a stream [`stream_archive`] is holding (its load fails on the
/// cut archive): the image is sent again.
fn abandon_archive(image: &BuiltImage, streamed: Streamed) {
    let Streamed { streaming, handle, mut progress, .. } = streamed;
    drop(streaming);
    let _ = handle.join();
    progress.finish(0);
    tracing::info!("{}: its held load was given up; it is sent again", image.reference);
}

fn config_files(
    ctx: &Ctx<'_>,
    version: &str,
    secrets: &BTreeMap<String, String>,
    images: &BTreeMap<String, ReleaseImage>,
) -> Result<Vec<ConfigFile>> {
    let s = ctx.settings;
    let stack = s.stack();
    // Every [env] key and secret reaches the backend (and the release command) by name; values stay in .env.
    let names: Vec<&str> = s.env.keys().chain(secrets.keys()).map(String::as_str).collect();
    let compose = crate::stack::render_compose(&stack.compose()?, &names).map_err(|e| {
        crate::error::usage(e).hint(format!(
            "add the line `{}` to the backend's environment in {}, or remove the project's stack to use the built-in one",
            crate::stack::ENV_MARKER,
            crate::stack::COMPOSE
        ))
    })?;
    let tags = images
        .iter()
        .map(|(svc, i)| (svc.clone(), i.reference.rsplit_once(':').map(|(_, t)| t).unwrap_or(version).to_string()))
        .collect();
    let system = envfile::system_vars(&envfile::System {
        project: &s.project,
        version,
        http: s.http_port,
        https: s.https_port,
        tls: s.tls.is_some(),
        tags,
        root: &ctx.layout.root,
    });
    let mut system = system;
    if let Some(c) = &s.release_command {
        system.insert("RELEASE_COMMAND".into(), c.clone());
    }
    let env = envfile::render(version, &system, &s.env, secrets)
        .map_err(|errs| crate::error::usage(format!("values that cannot go into .env:\n  {}", errs.join("\n  "))))?;
    let mut files = vec![
        ConfigFile { name: "docker-compose.yml".into(), mode: 0o644, data: compose },
        ConfigFile { name: ".env".into(), mode: 0o600, data: env.into_bytes() },
    ];
    if let Some(tls) = &s.tls {
        files.push(ConfigFile { name: "certs/fullchain.pem".into(), mode: 0o644, data: fs_err::read(&tls.cert)? });
        files.push(ConfigFile { name: "certs/privkey.pem".into(), mode: 0o600, data: fs_err::read(&tls.key)? });
    }
    Ok(files)
}

fn fingerprint(images: &[BuiltImage], files: &[ConfigFile]) -> String {
    let mut h = Sha256::new();
    for i in images {
        h.update(format!("image {} {}\n", i.service, i.id));
    }
    for f in files {
        let data = if f.name == ".env" {
            envfile::fingerprint_text(&String::from_utf8_lossy(&f.data)).into_bytes()
        } else {
            f.data.clone()
        };
        h.update(format!("file {} {:o} {}\n", f.name, f.mode, sha256_hex(&data)));
    }
    format!("{:x}", h.finalize())
}

fn upload_config(ctx: &Ctx<'_>, version: &str, files: &[ConfigFile]) -> Result<()> {
    let dir = ctx.layout.release(version);
    let q = cultivate_plugin_api::shell::quote;
    ctx.session.sh(&format!("mkdir -p {d}/certs && chmod 755 {d} && chmod 755 {d}/certs", d = q(&dir)))?;
    for f in files {
        ctx.session.put_file(&format!("{dir}/{}", f.name), f.mode, &f.data)?;
    }
    // P22: every file arrived byte-exact with its mode.
    let names: Vec<String> = files.iter().map(|f| q(&format!("{dir}/{}", f.name))).collect();
    let out = ctx.session.sh(&format!(
        // GNU stat and sha256sum, or macOS's BSD stat and shasum
        "for f in {}; do printf '%s %s\\n' \"$(stat -c %a \"$f\" 2>/dev/null || stat -f %Lp \"$f\")\" \
         \"$(if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi < \"$f\" | cut -d' ' -f1)\"; done",
        names.join(" ")
    ))?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    for (f, line) in files.iter().zip(lines.iter().chain(std::iter::repeat(&""))) {
        let want = format!("{:o} {}", f.mode, sha256_hex(&f.data));
        if line.trim() != want {
            bail!(
                "{}/{} did not arrive intact on {} (expected mode and sha256 `{want}`, found `{}`)",
                dir,
                f.name,
                ctx.session.target,
                line.trim()
            );
        }
    }
    ctx.printer.detail(&format!("{} files uploaded and verified", files.len()));
    Ok(())
}

/// Removes old releases and their images, keeping `releases_kept`. An image
/// tag a kept release still runs (an unchanged image keeps an older tag) stays,
/// and so do the site directories kept releases serve.
fn prune(ctx: &mut Ctx<'_>, current: &str, previous: Option<&str>) {
    // Every release and its record, in one command.
    let Ok(state) = ctx.read_state() else { return };
    let all = state.releases.clone();
    let doomed = release::releases_to_prune(&all, Some(current), previous, ctx.settings.releases_kept as usize);
    if doomed.is_empty() {
        return;
    }
    let mut kept_refs = std::collections::BTreeSet::new();
    let mut kept_sites = std::collections::BTreeSet::new();
    for v in all.iter().filter(|v| !doomed.contains(v)) {
        match state.record(v) {
            Some(r) => {
                kept_refs.extend(r.images.values().map(|i| i.reference.clone()));
                if let Some(site) = &r.site {
                    kept_refs.insert(site.reference.clone());
                    kept_sites.insert(switch::site_id(&site.id));
                }
            }
            // Without a kept release's record, nothing can be pruned safely.
            _ => return,
        }
        kept_refs.extend(SERVICES.iter().map(|s| build::image_ref(&ctx.settings.project, s, v)));
    }
    for v in doomed {
        let mut refs: Vec<String> = SERVICES.iter().map(|s| build::image_ref(&ctx.settings.project, s, &v)).collect();
        if let Some(r) = state.record(&v) {
            refs.extend(r.images.values().map(|i| i.reference.clone()));
        }
        refs.sort();
        refs.dedup();
        refs.retain(|r| !kept_refs.contains(r));
        if !refs.is_empty() {
            let _ = ctx.images_op::<ops::ImageRemove>(&ImageRefs { refs });
        }
        let _ = ctx.session.run(&ExecRequest::new(["rm", "-rf", &ctx.layout.release(&v)]));
        ctx.log.record("INFO", &format!("pruned release {v}"));
        tracing::info!("pruned release {v}");
    }
    // Site directories no kept release serves.
    let q = cultivate_plugin_api::shell::quote;
    let keep: Vec<String> = kept_sites.iter().map(|s| q(s)).collect();
    let _ = ctx.session.sh(&format!(
        "cd {}/sites 2>/dev/null || exit 0; for d in *; do case \" {} \" in *\" $d \"*) ;; *) [ -d \"$d\" ] && rm -rf \"$d\" ;; esac; done",
        q(&ctx.layout.edge()),
        keep.join(" ")
    ));
}

/// Shows diagnostics and rolls back to `previous` (P24) with the same switch
/// a deploy uses; the error says what happened.
fn fail_and_roll_back(
    ctx: &mut Ctx<'_>,
    version: &str,
    previous: Option<&ReleaseRecord>,
    reason: &str,
) -> anyhow::Error {
    ctx.printer.warn(&format!("release {version} failed: {reason}"));
    let diag = ctx.diagnostics(version);
    ctx.log.record("ERROR", &format!("release {version} failed: {reason}\n{diag}"));
    ctx.printer.raw_stderr(diag.trim_end());
    let Some(previous) = previous else {
        let _ = ctx.stack_op::<ops::StackDown>(&ops::StackDownRequest {
            stack: ctx.stack_ref(version),
            remove_volumes: false,
        });
        return UserError::new(Code::Failed, format!("deploy of {version} failed: {reason}; there is no previous release to roll back to, so the failed release was stopped (data volumes kept)"))
            .hint("the diagnostics above show why; fix it and deploy again")
            .into();
    };
    let previous = previous.version.clone();
    ctx.status(&format!("rolling back to release {previous}"));
    let start = std::time::Instant::now();
    let outcome = super::rollback::start_and_verify(ctx, &previous);
    ctx.timings.record(Stage::Rollback, start);
    match outcome {
        Ok(()) => UserError::new(Code::RolledBack, format!("deploy of {version} failed: {reason}; rolled back to release {previous}, which is healthy"))
            .hint("the diagnostics above show why the new release failed")
            .into(),
        Err(e) => UserError::new(Code::RollbackFailed, format!("deploy of {version} failed: {reason}; the rollback to {previous} failed too: {e:#}"))
            .hint(format!("the target needs attention: `cultivate status` and `cultivate logs` show its state; the deploy log is in {}", ctx.layout.logs()))
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn built(service: &str, version: &str, id: &str, layers: &[&str]) -> BuiltImage {
        BuiltImage {
            service: service.into(),
            reference: format!("p-{service}:{version}"),
            id: format!("sha256:{id}"),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            size: 1,
        }
    }

    /// The first release of the unit tests: base, then a layer of each service's own.
    fn v1_images() -> [BuiltImage; 3] {
        [
            built("database", "v1", "d1", &["base", "pg"]),
            built("backend", "v1", "b1", &["base", "node", "app1"]),
            built("frontend", "v1", "f1", &["base", "nginx", "site1"]),
        ]
    }

    fn current(images: &[BuiltImage]) -> ReleaseRecord {
        let (desired, site) = desired_images(images, None);
        ReleaseRecord {
            version: "v1".into(),
            created_at: String::new(),
            images: desired,
            site: Some(site),
            files: BTreeMap::new(),
            fingerprint: String::new(),
            status: ReleaseStatus::Healthy,
            previous: None,
            runtime: BTreeMap::new(),
            secret_keys: None,
            config_hashes: BTreeMap::new(),
        }
    }

    fn running(service: &str, container: &str, image: &str, hash: &str) -> ops::ServiceState {
        ops::ServiceState {
            service: service.into(),
            container: container.into(),
            state: "running".into(),
            health: Some("healthy".into()),
            image_id: Some(format!("sha256:{image}")),
            config_hash: Some(hash.into()),
            started_at: Some("2026-11-29T00:00:00Z".into()),
            ..ops::ServiceState::default()
        }
    }

    /// The read-only no-op check: only the release running exactly as
    /// recorded counts as unchanged.
    #[test]
    fn only_a_release_running_as_recorded_is_unchanged() {
        let v1 = v1_images();
        let rec = current(&v1);
        let states = vec![
            running("database", "db1", "d1", "h1"),
            running("backend", "be1", "b1", "h2"),
            running("frontend", "fe1", "f1", "h3"),
        ];
        let hashes = BTreeMap::from([
            ("database".to_string(), "h1".to_string()),
            ("backend".to_string(), "h2".to_string()),
            ("frontend".to_string(), "h3".to_string()),
        ]);
        let edge = switch::EdgeState {
            backend: Some("be1".into()),
            site: Some(switch::site_id(&rec.site.as_ref().unwrap().id)),
        };
        assert!(runs_as_recorded(&rec, &states, &edge, Some(&hashes), true));
        assert!(runs_as_recorded(&rec, &states, &edge, None, true), "without hashes: images and edge");
        assert!(runs_as_recorded(&rec, &states, &switch::EdgeState::default(), None, false));

        // Another configuration (a hash), another image, an unhealthy or a
        // second backend, the edge on another backend, another site: not unchanged.
        let mut other_hash = hashes.clone();
        other_hash.insert("backend".into(), "h9".into());
        assert!(!runs_as_recorded(&rec, &states, &edge, Some(&other_hash), true));
        let mut other_image = states.clone();
        other_image[1].image_id = Some("sha256:b2".into());
        assert!(!runs_as_recorded(&rec, &other_image, &edge, None, true));
        let mut unhealthy = states.clone();
        unhealthy[0].health = Some("unhealthy".into());
        assert!(!runs_as_recorded(&rec, &unhealthy, &edge, Some(&hashes), true));
        let mut two = states.clone();
        two.push(running("backend", "be2", "b1", "h2"));
        assert!(!runs_as_recorded(&rec, &two, &edge, Some(&hashes), true));
        let elsewhere = switch::EdgeState { backend: Some("be0".into()), ..edge.clone() };
        assert!(!runs_as_recorded(&rec, &states, &elsewhere, Some(&hashes), true));
        assert!(!runs_as_recorded(&rec, &states, &elsewhere, None, true));
        let old_site = switch::EdgeState { site: Some("0123".into()), ..edge.clone() };
        assert!(!runs_as_recorded(&rec, &states, &old_site, Some(&hashes), true));
        let mut unknown = states.clone();
        unknown[2].image_id = None;
        assert!(!runs_as_recorded(&rec, &unknown, &edge, None, true), "an image it cannot tell");
    }

    #[test]
    fn unchanged_images_keep_the_tag_of_the_release_that_built_them() {
        let v1 = v1_images();
        let rec = current(&v1);
        // v2: a new backend and a new site on the same nginx.
        let v2 = [
            built("database", "v2", "d1", &["base", "pg"]),
            built("backend", "v2", "b2", &["base", "node", "app2"]),
            built("frontend", "v2", "f2", &["base", "nginx", "site2"]),
        ];
        let (d, site) = desired_images(&v2, Some(&rec));
        assert_eq!(d["database"].reference, "p-database:v1");
        assert_eq!(d["backend"].reference, "p-backend:v2");
        assert_eq!(d["frontend"].reference, "p-frontend:v1", "the nginx part did not change");
        assert_eq!(d["frontend"].id, "sha256:f1");
        assert_eq!((site.reference.as_str(), site.id.as_str()), ("p-frontend:v2", "sha256:f2"));
        // v3: a new nginx.
        let v3 = [
            built("database", "v3", "d1", &["base", "pg"]),
            built("backend", "v3", "b2", &["base", "node", "app2"]),
            built("frontend", "v3", "f3", &["base", "nginx2", "site2"]),
        ];
        let (d, _) = desired_images(&v3, Some(&rec));
        assert_eq!(d["frontend"].reference, "p-frontend:v3");
        // v4: only the backend changed: the site is the image the target knows as p-frontend:v1
        // (no new tag needed on the target).
        let v4 = [
            built("database", "v4", "d1", &["base", "pg"]),
            built("backend", "v4", "b4", &["base", "node", "app4"]),
            built("frontend", "v4", "f1", &["base", "nginx", "site1"]),
        ];
        let (d, site) = desired_images(&v4, Some(&rec));
        assert_eq!(d["frontend"].reference, "p-frontend:v1");
        assert_eq!((site.reference.as_str(), site.id.as_str()), ("p-frontend:v1", "sha256:f1"));
        // v5 after v2 (a site change): the same site again keeps v2's site reference.
        let mut rec2 = current(&v2);
        rec2.site =
            Some(ReleaseImage { reference: "p-frontend:v2".into(), id: "sha256:f2".into(), without_site: None });
        rec2.images.insert("frontend".into(), d["frontend"].clone());
        let v5 = [
            built("database", "v5", "d1", &["base", "pg"]),
            built("backend", "v5", "b5", &["base", "node", "app5"]),
            built("frontend", "v5", "f2", &["base", "nginx", "site2"]),
        ];
        let (d, site) = desired_images(&v5, Some(&rec2));
        assert_eq!(d["frontend"].reference, "p-frontend:v1", "nginx is still v1's");
        assert_eq!(site.reference, "p-frontend:v2", "the site is v2's image");
    }

    proptest! {
        /// Whatever the images, a service keeps its current reference exactly
        /// when its image is the current one (the frontend also when only its site differs).
        #[test]
        fn carried_iff_unchanged(same_db in any::<bool>(), same_be in any::<bool>(), same_nginx in any::<bool>(), same_site in any::<bool>()) {
            let v1 = [
                built("database", "v1", "d1", &["b", "pg"]),
                built("backend", "v1", "b1", &["b", "app1"]),
                built("frontend", "v1", "f1", &["b", "nginx1", "s1"]),
            ];
            let rec = current(&v1);
            let fid = if same_nginx && same_site { "f1" } else { "f2" };
            let v2 = [
                built("database", "v2", if same_db { "d1" } else { "d2" }, &["b", "pg"]),
                built("backend", "v2", if same_be { "b1" } else { "b2" }, &["b", "app"]),
                built("frontend", "v2", fid, &["b", if same_nginx { "nginx1" } else { "nginx2" }, if same_site { "s1" } else { "s2" }]),
            ];
            let (d, site) = desired_images(&v2, Some(&rec));
            prop_assert_eq!(d["database"].reference.ends_with(":v1"), same_db);
            prop_assert_eq!(d["backend"].reference.ends_with(":v1"), same_be);
            prop_assert_eq!(d["frontend"].reference.ends_with(":v1"), same_nginx);
            prop_assert_eq!(site.id, format!("sha256:{fid}"));
        }
    }
}
