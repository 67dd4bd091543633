//! The everyday operations on a deployed release: `logs -f/--since`,
//! `exec`, `stop`, `start` and `remove`.
//!
//! `logs -f` and `exec` stream: the stack plugin returns the command
//! (`container.logs_command`, `container.exec_command`) and the host runs it
//! through the transport, forwarding output as it arrives (and, for `exec`,
//! this side's stdin, with a terminal when this side has one). The plugin
//! operations they need are optional (`ops::EVERYDAY_OPERATIONS`): with a
//! plugin that lacks one, only the command that needs it fails, saying so.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use cultivate_plugin_api::ops::{self, Operation, ServiceState};
use cultivate_plugin_api::{Channel, ChannelEvent, TtySize};

use crate::cli::{ExecArgs, LogsArgs, RemoveArgs, StopArgs, TargetArgs};
use crate::error::{self, Code, UserError};
use crate::output::Printer;
use crate::pipeline::{self, build::SERVICES, Ctx};
use crate::settings::{self, Overrides};

/// Fails unless the stack plugin offers `op`, naming the plugin, its API
/// version and the command that needs it.
fn require(ctx: &Ctx<'_>, op: &str, command: &str) -> Result<()> {
    let m = ctx.stack.manifest();
    if m.implements(op) {
        return Ok(());
    }
    Err(UserError::new(
        Code::Failed,
        format!(
            "the stack plugin {} {} (plugin API {}) does not offer {op}, which `{command}` needs; nothing was changed",
            m.name, m.version, m.api_version
        ),
    )
    .hint("update the plugin (or choose another with --runtime); deploy, rollback, status and logs without -f work with it as they are")
    .into())
}

/// The release `current` names, or an error saying nothing is deployed.
fn current(ctx: &Ctx<'_>) -> Result<String> {
    ctx.current_version()?.ok_or_else(|| {
        UserError::new(Code::Failed, format!("nothing deployed on {} yet", ctx.settings.target))
            .hint("run `cultivate deploy` first")
            .into()
    })
}

/// Fails with a usage error unless `service` is one of the stack's.
fn check_service(service: &str) -> Result<()> {
    if SERVICES.contains(&service) {
        return Ok(());
    }
    Err(error::usage(format!("no service `{service}` in the stack"))
        .hint(format!("choose one of: {}", SERVICES.join(", ")))
        .into())
}

/// The container to run a command in: a running one of `service`; when
/// there are several (a switch under way), a healthy one first, then the
/// most recently started.
pub fn pick_container<'s>(states: &'s [ServiceState], service: &str) -> Option<&'s ServiceState> {
    states.iter().filter(|s| s.service == service && s.state == "running").max_by(|a, b| {
        let healthy = |s: &ServiceState| s.health.as_deref().is_none_or(|h| h == "healthy");
        (healthy(a), a.started_at.as_deref()).cmp(&(healthy(b), b.started_at.as_deref()))
    })
}

/// The container ID (or name) of a state.
fn container_of(s: &ServiceState) -> String {
    s.id.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| s.container.clone())
}

// ---------------------------------------------------------------- --since

/// Validates `--since` and turns it into what every engine's `logs --since`
/// takes: a duration in seconds (`90s`) or a Unix time (`1714564800`).
///
/// Accepted: a duration of one or more `<number><unit>` with units `s`, `m`,
/// `h`, `d` (`45s`, `10m`, `1h30m`, `2d`); a date `YYYY-MM-DD` (midnight
/// UTC); a time `YYYY-MM-DDTHH:MM[:SS[.frac]]` (a space for `T` too),
/// UTC unless it ends in `Z` or `±HH:MM`.
pub fn parse_since(text: &str) -> std::result::Result<String, String> {
    let s = text.trim();
    let bad = |why: &str| {
        format!(
            "--since `{text}` is not a duration or a time ({why}): give e.g. `10m`, `1h30m`, `2d`, `2024-05-01` or `2024-05-01T12:00:00Z`"
        )
    };
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s.as_bytes()[0].is_ascii_digit() && s.len() >= 10 && s.as_bytes()[4] == b'-' {
        return parse_time(s).map(|t| t.to_string()).map_err(|w| bad(&w));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad(&format!("unexpected `{c}`"))),
        };
        if digits.is_empty() {
            return Err(bad(&format!("a number must come before `{c}`")));
        }
        let n: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
        total =
            n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| bad("the duration is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad("a number needs a unit: s, m, h or d"));
    }
    Ok(format!("{total}s"))
}

/// Seconds since the Unix epoch of `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|±HH:MM]`.
fn parse_time(s: &str) -> std::result::Result<i64, String> {
    let num = |part: &str, what: &str, lo: i64, hi: i64| -> std::result::Result<i64, String> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad {what} `{part}`"));
        }
        let v: i64 = part.parse().map_err(|_| format!("bad {what} `{part}`"))?;
        if v < lo || v > hi {
            return Err(format!("{what} {v} is out of range"));
        }
        Ok(v)
    };
    let (date, rest) = s.split_at(10.min(s.len()));
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || d[0].len() != 4 || d[1].len() != 2 || d[2].len() != 2 {
        return Err("the date must be YYYY-MM-DD".into());
    }
    let (y, m) = (num(d[0], "year", 1970, 9999)?, num(d[1], "month", 1, 12)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][(m - 1) as usize];
    let day = num(d[2], "day", 1, month_days)?;
    let mut secs = days_from_civil(y, m, day) * 86400;
    if rest.is_empty() {
        return Ok(secs);
    }
    let rest = rest.strip_prefix(['T', ' ']).ok_or("the date must be followed by T and a time")?;
    // The zone: Z, or ±HH:MM at the end.
    let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if rest.len() > 6 && matches!(rest.as_bytes()[rest.len() - 6], b'+' | b'-') {
        let (c, z) = rest.split_at(rest.len() - 6);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':').ok_or("the offset must be ±HH:MM")?;
        (c, sign * (num(zh, "offset hour", 0, 23)? * 3600 + num(zm, "offset minute", 0, 59)? * 60))
    } else {
        (rest, 0)
    };
    let clock = clock.split_once('.').unwrap_or((clock, "0"));
    if clock.1.is_empty() || !clock.1.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad fraction of a second `{}`", clock.1));
    }
    let t: Vec<&str> = clock.0.split(':').collect();
    if !(2..=3).contains(&t.len()) {
        return Err("the time must be HH:MM or HH:MM:SS".into());
    }
    secs += num(t[0], "hour", 0, 23)? * 3600 + num(t[1], "minute", 0, 59)? * 60;
    if let Some(sec) = t.get(2) {
        secs += num(sec, "second", 0, 59)?;
    }
    Ok(secs - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

// ---------------------------------------------------------------- logs -f

/// One followed container.
struct Follow {
    label: String,
    service: String,
    container: String,
    channel: Box<dyn Channel>,
    partial: [Vec<u8>; 2],
    colour: &'static str,
    done: bool,
}

const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "91"];

/// Splits a container's output into lines, prefixed with its label.
pub struct LinePrinter {
    width: usize,
    colour: bool,
    json: bool,
}

impl LinePrinter {
    /// One line of a container's output as printed: `label | line`, the label
    /// coloured on a terminal; with `--json`, a JSON object per line.
    pub fn render(
        &self,
        label: &str,
        service: &str,
        container: &str,
        colour: &str,
        stderr: bool,
        line: &str,
    ) -> String {
        let line = crate::redact::apply(line.trim_end_matches('\r'));
        if self.json {
            return serde_json::json!({
                "service": service,
                "container": container,
                "stream": if stderr { "stderr" } else { "stdout" },
                "line": line,
            })
            .to_string();
        }
        let prefix = format!("{label:<w$} |", w = self.width);
        if self.colour {
            format!("\x1b[{colour}m{prefix}\x1b[0m {line}")
        } else {
            format!("{prefix} {line}")
        }
    }
}

/// `cultivate logs -f` / `--since`: the logs of the current release's
/// containers, one stream per container, each line prefixed with its
/// service. Ends at Ctrl-C (exit 0), when every container stopped, or with
/// exit 16 when the connection drops.
pub fn stream_logs(printer: &Printer, config: Option<&Path>, args: &LogsArgs) -> Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose().map_err(error::usage)?;
    if let Some(s) = &args.service {
        check_service(s)?;
    }
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    let ctx = pipeline::connect(&settings, printer, false)?;
    require(&ctx, ops::ContainerLogsCommand::NAME, "cultivate logs --follow/--since")?;
    let version = current(&ctx)?;
    let mut states = ctx.stack_op::<ops::StackPs>(&ctx.stack_ref(&version))?;
    states.retain(|s| args.service.as_ref().is_none_or(|x| *x == s.service));
    if args.follow {
        states.retain(|s| s.state == "running");
    }
    states.sort_by_key(|s| (SERVICES.iter().position(|x| *x == s.service).unwrap_or(99), s.started_at.clone()));
    if states.is_empty() {
        return Err(UserError::new(
            Code::Failed,
            format!(
                "no {}container of {} in release {version} on {}",
                if args.follow { "running " } else { "" },
                args.service.as_deref().unwrap_or("any service"),
                settings.target
            ),
        )
        .hint("`cultivate status` shows the containers; `cultivate start` starts a stopped stack")
        .into());
    }
    let tail = args.tail.or(if since.is_some() {
        None
    } else if args.follow {
        Some(20)
    } else {
        Some(200)
    });
    let mut streams = Vec::new();
    for (i, s) in states.iter().enumerate() {
        let n = states[..i].iter().filter(|o| o.service == s.service).count();
        let label = if n == 0 { s.service.clone() } else { format!("{}.{}", s.service, n + 1) };
        let container = container_of(s);
        let spec = ctx.stack_op::<ops::ContainerLogsCommand>(&ops::ContainerLogsRequest {
            container: container.clone(),
            follow: args.follow,
            since: since.clone(),
            tail,
        })?;
        let channel = ctx.session.open(&spec).with_context(|| format!("starting the logs of {label}"))?;
        let colour = COLOURS[SERVICES.iter().position(|x| *x == s.service).unwrap_or(i) % COLOURS.len()];
        streams.push(Follow {
            label,
            service: s.service.clone(),
            container,
            channel,
            partial: [Vec::new(), Vec::new()],
            colour,
            done: false,
        });
    }
    for f in &mut streams {
        f.channel.close_stdin().ok();
    }
    let lines = LinePrinter {
        width: streams.iter().map(|f| f.label.len()).max().unwrap_or(0),
        colour: printer.color_stdout(),
        json: printer.json(),
    };
    if args.follow {
        let names: Vec<&str> = streams.iter().map(|f| f.label.as_str()).collect();
        printer.status(&format!("following {} of release {version} (Ctrl-C to stop)", names.join(", ")));
    }
    let wait = Duration::from_millis(if streams.len() == 1 { 200 } else { 40 });
    loop {
        if crate::interrupt::received().is_some() {
            // Ctrl-C is how following ends: not a failure.
            printer.detail("stopped following");
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        let mut live = 0;
        for f in streams.iter_mut().filter(|f| !f.done) {
            live += 1;
            let event = f.channel.next_event(wait).with_context(|| format!("following the logs of {}", f.label))?;
            let (stderr, bytes) = match event {
                ChannelEvent::Stdout(b) => (false, b),
                ChannelEvent::Stderr(b) => (true, b),
                ChannelEvent::Idle => continue,
                ChannelEvent::Exit(status) => {
                    f.done = true;
                    for (i, rest) in f.partial.iter_mut().enumerate() {
                        if !rest.is_empty() {
                            let text = String::from_utf8_lossy(rest).into_owned();
                            let _ = writeln!(
                                out,
                                "{}",
                                lines.render(&f.label, &f.service, &f.container, f.colour, i == 1, &text)
                            );
                            rest.clear();
                        }
                    }
                    if status != 0 && crate::interrupt::received().is_none() {
                        printer.warn(&format!("the logs of {} ended with status {status}", f.label));
                    } else if args.follow {
                        printer.detail(&format!("{} stopped", f.label));
                    }
                    continue;
                }
            };
            let buf = &mut f.partial[usize::from(stderr)];
            buf.extend_from_slice(&bytes);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                let _ = writeln!(out, "{}", lines.render(&f.label, &f.service, &f.container, f.colour, stderr, &text));
            }
        }
        let _ = out.flush();
        if live == 0 {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------- exec

/// Puts a terminal into raw mode until dropped (then restores it).
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on a valid descriptor with a termios
        // the kernel fills; cfmakeraw only edits the struct.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable` on the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// This terminal's type and size.
fn terminal_size() -> TtySize {
    // SAFETY: TIOCGWINSZ fills a winsize on a terminal descriptor.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    let (cols, rows) = if ok && ws.ws_col > 0 { (ws.ws_col as u32, ws.ws_row as u32) } else { (80, 24) };
    let term = std::env::var("TERM").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "xterm".into());
    TtySize { term, cols, rows }
}

/// `cultivate exec SERVICE [--user U] -- COMMAND…`: runs the command in the
/// service's running container of the current release, this side's stdin
/// streamed to it, with a terminal when this side has one (and the
/// transport can give one); exits with the command's status.
pub fn exec(printer: &Printer, config: Option<&Path>, args: &ExecArgs) -> Result<()> {
    check_service(&args.service)?;
    if let Some(u) = &args.user {
        if u.trim().is_empty() || u.starts_with('-') || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(error::usage(format!("--user `{u}` is not a user name or UID[:GID]")).into());
        }
    }
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    // The connection's own chatter would mix with the command's output.
    let quiet = printer.quiet_copy();
    let ctx = pipeline::connect(&settings, &quiet, false)?;
    require(&ctx, ops::ContainerExecCommand::NAME, "cultivate exec")?;
    let version = current(&ctx)?;
    let states = ctx.stack_op::<ops::StackPs>(&ctx.stack_ref(&version))?;
    let Some(state) = pick_container(&states, &args.service) else {
        return Err(UserError::new(
            Code::Failed,
            format!("no running container of {} in release {version} on {}", args.service, settings.target),
        )
        .hint("`cultivate status` shows the containers; `cultivate start` starts a stopped stack")
        .into());
    };
    let local_terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let tty = local_terminal && !args.no_tty && !printer.json();
    if tty && !ctx.session.supports_pty() {
        printer.warn(&format!(
            "the {} transport gives no terminal: running without one (no line editing, no prompt colours)",
            ctx.session.transport
        ));
    }
    let tty = tty && ctx.session.supports_pty();
    let container = container_of(state);
    let mut spec = ctx.stack_op::<ops::ContainerExecCommand>(&ops::ContainerExecCommandRequest {
        container: container.clone(),
        argv: args.command.clone(),
        user: args.user.clone(),
        tty,
        interactive: true,
    })?;
    if tty {
        spec.tty = Some(terminal_size());
    }
    let mut channel = ctx.session.open(&spec).with_context(|| format!("starting the command in {}", args.service))?;

    // stdin: read on a thread (a blocking read), handed over in chunks; None at its end.
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let raw = if tty { RawMode::enable(0) } else { None };
    let (mut collected_out, mut collected_err) = (Vec::new(), Vec::new());
    let mut stdin_open = true;
    let result = (|| -> Result<i32> {
        loop {
            if raw.is_none() && crate::interrupt::received().is_some() {
                crate::interrupt::check()?;
            }
            while stdin_open {
                match rx.try_recv() {
                    Ok(Some(bytes)) => {
                        // A command that does not read its stdin may have ended already.
                        if channel.write_stdin(&bytes).is_err() {
                            stdin_open = false;
                        }
                    }
                    Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                        let _ = channel.close_stdin();
                        stdin_open = false;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            match channel.next_event(Duration::from_millis(20)).context("running the command")? {
                ChannelEvent::Stdout(b) if printer.json() => collected_out.extend_from_slice(&b),
                ChannelEvent::Stderr(b) if printer.json() => collected_err.extend_from_slice(&b),
                ChannelEvent::Stdout(b) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                ChannelEvent::Stderr(b) => {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&b);
                    let _ = err.flush();
                }
                ChannelEvent::Exit(status) => return Ok(status),
                ChannelEvent::Idle => {}
            }
        }
    })();
    drop(raw);
    let status = result?;
    tracing::info!("exec in {} ({container}) exited with status {status}", args.service);
    if printer.json() {
        printer.json_value(&serde_json::json!({
            "service": args.service,
            "container": container,
            "release": version,
            "status": status,
            "stdout": String::from_utf8_lossy(&collected_out),
            "stderr": String::from_utf8_lossy(&collected_err),
        }));
    }
    if status != 0 {
        return Err(error::PassThrough(status).into());
    }
    Ok(())
}

// ---------------------------------------------------------------- stop, start

/// `cultivate stop`: the current release's containers stopped (not
/// removed), under the deploy lock.
pub fn stop(printer: &Printer, config: Option<&Path>, args: &StopArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    let mut ctx = pipeline::connect(&settings, printer, false)?;
    require(&ctx, ops::StackStop::NAME, "cultivate stop")?;
    let version = current(&ctx)?;
    ctx.lock("stop")?;
    ctx.status(&format!("stopping release {version} on {}", settings.target));
    // The marker first: a `status` while the containers stop must not repair them.
    let result = ctx.session.put_file(&ctx.layout.stopped(), 0o644, format!("{version}\n").as_bytes()).and_then(|_| {
        ctx.stack_op::<ops::StackStop>(&ops::StackStopRequest {
            stack: ctx.stack_ref(&version),
            timeout_secs: args.timeout,
        })
    });
    ctx.unlock();
    result?;
    if printer.json() {
        printer.json_value(&serde_json::json!({ "stopped": version, "data_kept": true }));
    } else {
        printer.success(&format!(
            "release {version} stopped: containers, volumes and data kept; `cultivate start` starts it again"
        ));
    }
    Ok(())
}

/// `cultivate start`: the current release's stopped containers started
/// again, then waited for until healthy (as a deploy does).
pub fn start(printer: &Printer, config: Option<&Path>, args: &TargetArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(args))?;
    let mut ctx = pipeline::connect(&settings, printer, false)?;
    require(&ctx, ops::StackStart::NAME, "cultivate start")?;
    let version = current(&ctx)?;
    ctx.lock("start")?;
    ctx.status(&format!("starting release {version} on {}", settings.target));
    let result = ctx
        .stack_op::<ops::StackStart>(&ctx.stack_ref(&version))
        .and_then(|_| ctx.session.sh(&format!("rm -f {}", cultivate_plugin_api::shell::quote(&ctx.layout.stopped()))))
        .and_then(|_| ctx.wait_healthy(&version));
    ctx.unlock();
    let states = match result? {
        Ok(states) => states,
        Err(failure) => {
            let diagnostics = ctx.diagnostics(&version);
            printer.raw_stderr(&diagnostics);
            return Err(UserError::new(Code::Failed, format!("release {version} started but is {failure}"))
                .hint("`cultivate logs` shows why; `cultivate deploy` or `cultivate rollback` replaces it")
                .into());
        }
    };
    if printer.json() {
        printer.json_value(&serde_json::json!({ "started": version, "healthy": true, "services": states }));
    } else {
        printer.success(&format!("release {version} started, all healthy"));
    }
    Ok(())
}

// ---------------------------------------------------------------- remove

/// Asks for the project's name to be typed back before the data goes.
fn confirm_purge(project: &str, yes: bool, input: &mut dyn std::io::BufRead) -> Result<()> {
    if yes {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "--purge-data deletes the database volume of `{project}` for good.\ntype the project name to confirm: "
    );
    let _ = err.flush();
    let mut line = String::new();
    let n = input.read_line(&mut line).context("reading the confirmation")?;
    if n == 0 {
        return Err(error::usage("no confirmation given (stdin ended): nothing was removed")
            .hint(format!("type `{project}` when asked, or pass --yes in a script"))
            .into());
    }
    if line.trim() != project {
        return Err(error::usage(format!(
            "`{}` is not the project's name `{project}`: nothing was removed",
            line.trim()
        ))
        .hint("run the command again and type the name exactly")
        .into());
    }
    Ok(())
}

/// `cultivate remove [--purge-data]`: under the deploy lock, the stack taken
/// down, the release directories, `current`, the edge and certificate copies
/// removed, and the images this project tagged on the target; the database
/// volume kept unless `--purge-data` (confirmed). Says what went and what stayed.
pub fn remove(printer: &Printer, config: Option<&Path>, args: &RemoveArgs) -> Result<()> {
    let settings = settings::load(config, &Overrides::from_target(&args.target))?;
    let project = settings.project.clone();
    if args.purge_data {
        confirm_purge(&project, args.yes, &mut std::io::stdin().lock())?;
    }
    let mut ctx = pipeline::connect(&settings, printer, false)?;
    ctx.lock("remove")?;
    let result = remove_locked(&mut ctx, args.purge_data);
    ctx.unlock();
    let (removed, kept) = result?;
    if printer.json() {
        printer.json_value(&serde_json::json!({ "project": project, "removed": removed, "kept": kept }));
    } else {
        printer.success(&format!("{project} removed from {}", settings.target));
        for r in &removed {
            printer.detail(&format!("removed: {r}"));
        }
        for k in &kept {
            printer.detail(&format!("kept:    {k}"));
        }
    }
    Ok(())
}

fn remove_locked(ctx: &mut Ctx<'_>, purge: bool) -> Result<(Vec<String>, Vec<String>)> {
    let q = cultivate_plugin_api::shell::quote;
    let project = ctx.settings.project.clone();
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let releases = ctx.list_releases()?;
    let version = ctx.current_version()?.or_else(|| releases.last().cloned());
    // The stack: `down` from a release's compose file (all releases share the project).
    let volumes = format!("{project}_db_data (the database), {project}_db_socket");
    match &version {
        Some(v) => {
            ctx.status(&format!("taking down the stack of {project} (release {v})"));
            ctx.stack_op::<ops::StackDown>(&ops::StackDownRequest { stack: ctx.stack_ref(v), remove_volumes: purge })?;
            removed.push(format!("the stack's containers and networks (compose project {project})"));
            if purge {
                removed.push(format!("the stack's volumes: {volumes}"));
            } else {
                kept.push(format!(
                    "the stack's volumes: {volumes}; a later deploy uses them again, `cultivate remove --purge-data` deletes them"
                ));
            }
        }
        None => {
            ctx.detail("no release on the target: no stack to take down");
            if purge {
                // Only a release's compose file can take its volumes down with it.
                ctx.warn(&format!(
                    "no release left whose compose file could remove the volumes {volumes}: \
                     `docker volume rm {project}_db_data {project}_db_socket` on the target deletes them"
                ));
                kept.push(format!("the stack's volumes, if any: {volumes} (no release left to remove them with)"));
            }
        }
    }
    // The images this project tagged: PROJECT-SERVICE:TAG, exactly.
    let repos: Vec<String> = SERVICES.iter().map(|s| crate::pipeline::build::image_repository(&project, s)).collect();
    let listed = ctx
        .images_op::<ops::ImageList>(&ops::ImageListRequest { prefix: format!("{project}-"), ..Default::default() })?;
    let mut refs: Vec<String> = listed
        .iter()
        .flat_map(|i| i.tags.iter())
        .filter(|t| repos.iter().any(|r| r == crate::pipeline::build::repo_and_tag(t).0))
        .cloned()
        .collect();
    refs.sort();
    refs.dedup();
    if !refs.is_empty() {
        ctx.status(&format!("removing {} image tag(s) of {project}", refs.len()));
        let report = ctx.images_op::<ops::ImageRemove>(&ops::ImageRefs { refs })?;
        if !report.removed.is_empty() {
            removed.push(format!("images: {}", report.removed.join(", ")));
        }
        for (r, why) in &report.failed {
            ctx.warn(&format!("image {r} not removed: {why}"));
            kept.push(format!("image {r} (could not be removed: {why})"));
        }
    }
    // The deployment's files on the target; the deploy logs stay.
    let root = ctx.layout.root.clone();
    let paths = [
        ctx.layout.stopped(),
        ctx.layout.releases(),
        ctx.layout.current(),
        format!("{}.tmp", ctx.layout.current()),
        ctx.layout.edge(),
        ctx.layout.certs(),
    ];
    let script = format!(
        "for p in {}; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then rm -rf -- \"$p\" && echo \"$p\"; fi; done",
        paths.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
    );
    let out = ctx.session.sh(&script).with_context(|| format!("removing the deployment's files in {root}"))?;
    let gone: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    if !releases.is_empty() {
        removed.push(format!("releases {} in {}", releases.join(", "), ctx.layout.releases()));
    }
    for g in gone.iter().filter(|g| **g != ctx.layout.releases() && **g != ctx.layout.stopped()) {
        removed.push(g.to_string());
    }
    kept.push(format!("the deploy logs in {}", ctx.layout.logs()));
    Ok((removed, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn since_takes_durations_in_seconds() {
        assert_eq!(parse_since("45s").unwrap(), "45s");
        assert_eq!(parse_since("10m").unwrap(), "600s");
        assert_eq!(parse_since("1h30m").unwrap(), "5400s");
        assert_eq!(parse_since("2d").unwrap(), "172800s");
        assert_eq!(parse_since(" 0s ").unwrap(), "0s");
    }

    #[test]
    fn since_takes_dates_and_times_as_unix_seconds() {
        assert_eq!(parse_since("1970-01-01").unwrap(), "0");
        assert_eq!(parse_since("2024-05-01").unwrap(), "1714521600");
        assert_eq!(parse_since("2024-05-01T12:00:00Z").unwrap(), "1714564800");
        assert_eq!(parse_since("2024-05-01 12:00").unwrap(), "1714564800");
        assert_eq!(parse_since("2024-05-01T14:00:00+02:00").unwrap(), "1714564800");
        assert_eq!(parse_since("2024-05-01T12:00:00.5-01:30").unwrap(), "1714570200");
        assert_eq!(parse_since("2024-02-29").unwrap(), "1709164800");
    }

    #[test]
    fn since_refuses_what_it_cannot_read_naming_it() {
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "1h-2m",
            "yesterday",
            "2023-02-29",
            "2024-13-01",
            "2024-05-01T25:00",
            "2024-05-01T12",
            "-5m",
            "99999999999999999999s",
        ] {
            let err = parse_since(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")) && err.contains("10m"), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn since_never_panics(s in "\\PC{0,40}") {
            let _ = parse_since(&s);
        }

        #[test]
        fn since_durations_add_up(h in 0u64..10_000, m in 0u64..10_000, s in 0u64..10_000) {
            prop_assert_eq!(parse_since(&format!("{h}h{m}m{s}s")).unwrap(), format!("{}s", h * 3600 + m * 60 + s));
        }

        #[test]
        fn since_dates_are_consecutive_days(days in 0i64..100_000) {
            // Walk the calendar forward from 1970 and compare.
            let mut y = 1970;
            let mut rest = days;
            loop {
                let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
                let len = if leap { 366 } else { 365 };
                if rest < len { break; }
                rest -= len;
                y += 1;
            }
            prop_assume!(y <= 9999);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let months = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let mut m = 0;
            while rest >= months[m] { rest -= months[m]; m += 1; }
            let text = format!("{y:04}-{:02}-{:02}", m + 1, rest + 1);
            prop_assert_eq!(parse_since(&text).unwrap(), (days * 86400).to_string());
        }
    }

    fn state(service: &str, state: &str, health: Option<&str>, started: &str, id: &str) -> ServiceState {
        ServiceState {
            service: service.into(),
            container: format!("c-{id}"),
            state: state.into(),
            health: health.map(str::to_string),
            started_at: Some(started.into()),
            id: Some(id.into()),
            ..ServiceState::default()
        }
    }

    #[test]
    fn exec_picks_a_running_healthy_container_newest_first() {
        let states = [
            state("backend", "running", Some("healthy"), "2026-01-01T10:00:00Z", "old"),
            state("backend", "running", Some("starting"), "2026-01-01T11:00:00Z", "starting"),
            state("backend", "exited", None, "2026-01-01T12:00:00Z", "exited"),
            state("database", "running", Some("healthy"), "2026-01-01T09:00:00Z", "db"),
        ];
        assert_eq!(pick_container(&states, "backend").map(container_of).as_deref(), Some("old"));
        let mut two = states.clone();
        two[1].health = Some("healthy".into());
        assert_eq!(pick_container(&two, "backend").map(container_of).as_deref(), Some("starting"));
        assert_eq!(pick_container(&states, "frontend"), None);
        assert_eq!(pick_container(&states[2..3], "backend"), None);
    }

    #[test]
    fn log_lines_are_prefixed_coloured_on_a_terminal_and_json_on_request() {
        let plain = LinePrinter { width: 8, colour: false, json: false };
        assert_eq!(plain.render("backend", "backend", "abc", "33", false, "GET /\r"), "backend  | GET /");
        let coloured = LinePrinter { width: 8, colour: true, json: false };
        assert_eq!(
            coloured.render("database", "database", "abc", "36", true, "ready"),
            "\x1b[36mdatabase |\x1b[0m ready"
        );
        let json = LinePrinter { width: 8, colour: true, json: true };
        let v: serde_json::Value =
            serde_json::from_str(&json.render("backend.2", "backend", "abc", "33", true, "x")).unwrap();
        assert_eq!(v["service"], "backend");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["line"], "x");
    }

    #[test]
    fn purging_needs_the_name_typed_back() {
        assert!(confirm_purge("shop", true, &mut &b""[..]).is_ok());
        assert!(confirm_purge("shop", false, &mut &b"shop\n"[..]).is_ok());
        for typed in [&b"shop2\n"[..], b"\n", b""] {
            let err = confirm_purge("shop", false, &mut &typed[..]).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2);
            assert!(err.to_string().contains("nothing was removed"), "{err}");
        }
    }
}
