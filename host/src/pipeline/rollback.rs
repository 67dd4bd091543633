//! `cultivate rollback` and the rollback half of a failed deploy: start a
//! kept release with its own compose file and `.env` (P30), wait until it is
//! healthy (P31), and only then point `current` at it.

use anyhow::{bail, Context, Result};
use cultivate_plugin_api::ops::{self, ServiceState};

use super::release::{ReleaseRecord, ReleaseStatus};
use super::{Ctx, Stage};
use crate::error::{Code, UserError};
use crate::output::Printer;
use crate::settings::Settings;

/// Moves the stack to `version`, from its own release directory (P30), with
/// the same switch a deploy uses: services whose image and configuration are
/// the same keep running, the backend is switched behind the edge; then
/// waits until every container is healthy (P31). `current` moves to it only
/// when it is.
pub fn start_and_verify(ctx: &mut Ctx<'_>, version: &str) -> Result<()> {
    let record = ctx.read_record(version)?;
    let result = match record {
        Some(record) if super::switch::supported(ctx) => {
            super::switch::converge(ctx, version, &record, true, false, None).map(|_| ())
        }
        record => legacy_start(ctx, version, record.as_ref()),
    };
    match result {
        Ok(()) => {
            ctx.set_current(version)?;
            ctx.log.record("INFO", &format!("release {version} is healthy and current"));
            Ok(())
        }
        Err(e) => {
            let diag = ctx.diagnostics(version);
            ctx.log.record("ERROR", &format!("release {version} is not healthy: {e:#}\n{diag}"));
            ctx.printer.raw_stderr(diag.trim_end());
            bail!("release {version} is not healthy: {e:#}")
        }
    }
}

/// Earlier versions' way, for a stack plugin that cannot switch (or a
/// release without a record): `compose up` of the whole release, then health.
fn legacy_start(ctx: &mut Ctx<'_>, version: &str, record: Option<&ReleaseRecord>) -> Result<()> {
    let stack = ctx.stack_ref(version);
    ctx.stack_op::<ops::StackUp>(&ops::StackUpRequest { stack, force_recreate: false, timeout_secs: Some(30) })
        .with_context(|| format!("starting release {version}"))?;
    let states = ctx.wait_healthy(version)?.map_err(|f| anyhow::anyhow!("{f}"))?;
    match record {
        Some(record) => check_images(record, &states),
        None => Ok(()),
    }
}

/// After a whole-stack start: every running container is on the release's
/// image, or the release is not the one running (see [`health::image_mismatches`]).
pub fn check_images(record: &ReleaseRecord, states: &[ServiceState]) -> Result<()> {
    let images: Vec<(&str, &str)> = record.images.iter().map(|(s, i)| (s.as_str(), i.id.as_str())).collect();
    let wrong = super::health::image_mismatches(&images, states);
    if wrong.is_empty() {
        return Ok(());
    }
    bail!(
        "release {} is not what runs: {} (the stack tool left the earlier containers in place)",
        record.version,
        wrong.join("; ")
    )
}

/// The release a rollback goes to: `to`, or the newest healthy release older than `current`.
pub fn choose(ctx: &Ctx<'_>, to: Option<&str>, current: Option<&str>) -> Result<String> {
    let all = ctx.list_releases()?;
    if let Some(v) = to {
        if !all.iter().any(|r| r == v) {
            bail!(crate::error::usage(format!("release {v} is not on {}", ctx.session.target))
                .hint(format!("releases kept there: {}", if all.is_empty() { "none".into() } else { all.join(", ") })));
        }
        return Ok(v.to_string());
    }
    for v in all.iter().rev() {
        if Some(v.as_str()) == current || current.is_some_and(|c| v.as_str() > c) {
            continue;
        }
        if ctx.read_record(v)?.is_some_and(|r| r.status == ReleaseStatus::Healthy) {
            return Ok(v.clone());
        }
    }
    Err(UserError::new(
        Code::Failed,
        format!("there is no earlier healthy release to roll back to on {}", ctx.session.target),
    )
    .hint("`cultivate releases` lists what is kept; `--to VERSION` picks one")
    .into())
}

/// `cultivate rollback [--to VERSION]`.
pub fn run(settings: &Settings, printer: &Printer, to: Option<&str>) -> Result<String> {
    let mut ctx = super::connect(settings, printer, false)?;
    ctx.lock("rollback")?;
    let result = (|| {
        let current = ctx.current_version()?;
        let target = choose(&ctx, to, current.as_deref())?;
        if current.as_deref() == Some(target.as_str()) {
            ctx.status(&format!("release {target} is already current; restarting it from its own configuration"));
        } else {
            ctx.status(&format!("rolling back from {} to {target}", current.as_deref().unwrap_or("(none)")));
        }
        let start = std::time::Instant::now();
        let r = start_and_verify(&mut ctx, &target);
        ctx.timings.record(Stage::Rollback, start);
        r.map_err(|e| {
            UserError::new(Code::RollbackFailed, format!("rollback to {target} failed: {e:#}"))
                .hint("`cultivate status` and `cultivate logs` show the target's state")
        })?;
        ctx.printer.success(&format!("release {target} is current and healthy"));
        Ok::<_, anyhow::Error>(target)
    })();
    if let Err(e) = &result {
        ctx.log.record("ERROR", &format!("{e:#}"));
    }
    let stamp = super::release::version_from(time::OffsetDateTime::now_utc(), None);
    ctx.persist_log(&format!("rollback-{stamp}.log"));
    ctx.unlock();
    result
}
