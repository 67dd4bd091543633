//! Read-only views of a target: `releases`, `status`, `logs`; and `lock`.

use std::path::Path;

use anyhow::{Context, Result};
use cultivate_plugin_api::ops;

use crate::cli::{LogsArgs, TargetArgs};
use crate::output::Printer;
use crate::pipeline::{self, release::ReleaseStatus};
use crate::settings::{self, Overrides};

/// `cultivate releases`.
pub fn releases(printer: &Printer, config: Option<&Path>, args: &TargetArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(args))?;
    let ctx = pipeline::connect(&settings, printer, false)?;
    // What connect read in its one command; read again only if that failed.
    let state = match ctx.state.clone() {
        Some(state) => state,
        None => ctx.read_state()?,
    };
    let current = state.current.clone();
    let mut rows = Vec::new();
    for v in &state.releases {
        let rec = state.record(v);
        let status = rec.as_ref().map(|r| match r.status {
            ReleaseStatus::Healthy => "healthy",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Pending => "pending",
        });
        rows.push(serde_json::json!({
            "version": v,
            "current": current.as_deref() == Some(v.as_str()),
            "status": status,
            "created_at": rec.as_ref().map(|r| r.created_at.clone()),
        }));
    }
    if printer.json() {
        printer.json_value(&serde_json::json!({ "current": current, "releases": rows }));
    } else if rows.is_empty() {
        printer.data(&format!("no releases on {}", settings.target));
    } else {
        for r in rows {
            printer.data(&format!(
                "{} {:<28} {:<8} {}",
                if r["current"] == true { "*" } else { " " },
                r["version"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or("unknown"),
                r["created_at"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// `cultivate status`.
pub fn status(printer: &Printer, config: Option<&Path>, args: &TargetArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(args))?;
    let ctx = pipeline::connect(&settings, printer, false)?;
    let state = match ctx.state.clone() {
        Some(state) => state,
        None => ctx.read_state()?,
    };
    let Some(current) = state.current.clone() else {
        if printer.json() {
            printer.json_value(&serde_json::json!({ "current": null, "services": [] }));
        } else {
            printer.data(&format!("nothing deployed on {} yet", settings.target));
        }
        return Ok(());
    };
    let mut ctx = ctx;
    // A stack stopped with `cultivate stop` is as meant: nothing to repair.
    let stopped = state.stopped;
    let (repaired, seen) = if stopped { (Vec::new(), None) } else { repair_if_needed(&mut ctx, &current, &state)? };
    // The states the check just read, unless a repair changed them since.
    let mut states = match seen {
        Some(states) => states,
        None => ctx.stack_op::<ops::StackPs>(&ctx.stack_ref(&current))?,
    };
    if !stopped {
        pipeline::switch::settle_starting(&ctx, &mut states);
    }
    let verdict = pipeline::health::judge(&pipeline::build::SERVICES, &states);
    if printer.json() {
        printer.json_value(&serde_json::json!({
            "current": current,
            "healthy": verdict == pipeline::health::Verdict::Healthy,
            "repaired": repaired,
            "stopped": stopped,
            "services": states,
        }));
    } else {
        printer.data(&format!("release {current} on {}", settings.target));
        for s in &states {
            printer.data(&format!("  {:<10} {:<10} {}", s.service, s.state, s.health.as_deref().unwrap_or("-")));
        }
        printer.data(&format!(
            "  {}",
            if stopped {
                "stopped with `cultivate stop`: `cultivate start` starts it again"
            } else if verdict == pipeline::health::Verdict::Healthy {
                "all healthy"
            } else {
                "NOT all healthy"
            }
        ));
    }
    Ok(())
}

/// Finds a stack that is not what the current release says (a deploy or
/// rollback interrupted in the middle of its switch: two backends, the edge
/// on a container of a release that never became current) and, when the
/// lock is free, moves it back to the current release with the same switch
/// a deploy uses. Returns what was done, one line per service changed, and
/// the container states it read when it changed nothing (`status` shows them).
fn repair_if_needed(
    ctx: &mut pipeline::Ctx<'_>,
    current: &str,
    state: &pipeline::state::TargetState,
) -> Result<(Vec<String>, Option<Vec<ops::ServiceState>>)> {
    use pipeline::switch;
    if !switch::supported(ctx) {
        return Ok((Vec::new(), None));
    }
    let Some(record) = state.record(current) else { return Ok((Vec::new(), None)) };
    let stack = ctx.stack_ref(current);
    // Recorded at deploy time when it can be: no compose process to start.
    let hashes = ctx.service_hashes(&record)?;
    let running = ctx.stack_op::<ops::StackPs>(&stack)?;
    // Read with the rest of the state by `connect`.
    let edge = state.edge();
    let plan = switch::plan(&record, &hashes, &running, &edge);
    let off: Vec<String> = plan.iter().filter(|p| p.action != switch::Action::Unchanged).map(|p| p.line()).collect();
    if off.is_empty() {
        return Ok((Vec::new(), Some(running)));
    }
    ctx.warn(&format!(
        "the running stack is not release {current}'s (an interrupted deploy or rollback?): {}",
        off.join("; ")
    ));
    if let Err(e) = ctx.lock("repair of an interrupted switch") {
        ctx.warn(&format!("not repairing now: {e:#}"));
        return Ok((Vec::new(), None));
    }
    ctx.status(&format!("repairing: moving the stack back to release {current}"));
    let result = switch::converge(ctx, current, &record, true, false, None);
    ctx.unlock();
    result.with_context(|| format!("repairing the stack to release {current} failed"))?;
    ctx.printer.success(&format!("repaired: release {current} runs as recorded"));
    Ok((off, None))
}

/// `cultivate logs [SERVICE]`.
pub fn logs(printer: &Printer, config: Option<&Path>, args: &LogsArgs) -> Result<()> {
    if args.purge_local {
        let dir = crate::logging::log_dir();
        let n = crate::logging::purge(&dir)?;
        if printer.json() {
            printer.json_value(&serde_json::json!({ "log_dir": dir, "purged": n }));
        } else {
            printer.success(&format!("removed cultivate's log files in {} ({n} with content)", dir.display()));
        }
        return Ok(());
    }
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    let ctx = pipeline::connect(&settings, printer, false)?;
    let current =
        ctx.current_version()?.ok_or_else(|| anyhow::anyhow!("nothing deployed on {} yet", settings.target))?;
    let req = ops::StackLogsRequest {
        stack: ctx.stack_ref(&current),
        services: args.service.iter().cloned().collect(),
        tail: Some(args.tail.unwrap_or(200)),
    };
    printer.data(ctx.stack_op::<ops::StackLogs>(&req)?.text.trim_end());
    Ok(())
}

/// `cultivate lock status` and `cultivate lock release`.
pub fn lock(printer: &Printer, config: Option<&Path>, args: &TargetArgs, release: bool) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(args))?;
    let ctx = pipeline::connect(&settings, printer, false)?;
    let Some(found) = pipeline::lock::read(&ctx.session, &ctx.layout.lock())? else {
        printer.data("unlocked");
        return Ok(());
    };
    let holder = found.holder.describe();
    if release {
        ctx.unlock();
        printer.success(&format!("removed the lock held by {holder}"));
    } else {
        printer.data(&format!("locked: {holder}\nholder: {}", found.liveness().label()));
    }
    Ok(())
}
