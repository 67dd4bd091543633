//! The deploy lock on the target: `<deploy_path>/.lock/`, made with `mkdir`,
//! with an `owner` file holding a JSON [`Owner`] record; a lock whose holder
//! is gone heals itself.
//!
//! 1. [`acquire`]: `mkdir .lock` (atomic on every filesystem) and write the
//!    record. If the directory exists, read the record and judge its holder
//!    ([`liveness`]).
//! 2. A holder that is [`Liveness::Dead`] (same machine, pid gone or reused)
//!    or whose lease ran out ([`Liveness::LeaseExpired`]) is taken over: the
//!    stale directory is renamed aside (`mv`, which only one taker can win),
//!    the record read back from the renamed directory must be the one judged
//!    stale (otherwise it is put back and the lock is refused), then
//!    `mkdir` as in 1. A warning names the old holder.
//! 3. After a takeover, [`clean_after_takeover`] removes what the old holder
//!    left half-made: release directories with no `release.json`, or whose
//!    record is still `pending`, that `current` does not point at.
//! 4. An [`Liveness::Alive`] or [`Liveness::Unknown`] holder is never
//!    overridden: only `cultivate lock release` removes its lock.
//!
//! *The lease.* The record carries `lease_until`; the running process renews
//! it at each pipeline stage ([`renew`], through `Ctx::renew_lock`) when the
//! last renewal is at least [`RENEW_AFTER_SECS`] old, in one command that
//! rewrites the record only while it is still the one this process wrote,
//! rather than from a background thread: the session is not `Sync`, and a second
//! connection only to renew would double the SSH setup of every deploy. The
//! lease is therefore generous ([`LEASE_SECS`], 10 minutes, longer than any
//! single stage normally takes), and it only ever decides for a holder on
//! *another* machine: on the holder's own machine the pid and its start time
//! decide, so a live deploy in a long build is never taken over, whatever its
//! lease says.
//!
//! *Old-format locks* (a plain-text `owner`, written before this record
//! existed) name no pid or start time this code can trust: they count as an
//! unknown holder for [`LEGACY_LEASE_SECS`] (24 hours) after the lock
//! directory's mtime, then as expired, and `cultivate lock release` removes
//! them at any time.

use anyhow::{Context as _, Result};
use cultivate_plugin_api::shell::quote as q;
use cultivate_plugin_api::ExecRequest;
use serde::{Deserialize, Serialize};

use super::release::{Layout, ReleaseRecord, ReleaseStatus};
use crate::error::{Code, UserError};
use crate::session::Session;

/// How long a lock stays valid without renewal, in seconds.
pub const LEASE_SECS: i64 = 600;

/// How long an old-format lock counts as held after its directory was made.
pub const LEGACY_LEASE_SECS: i64 = 24 * 3600;

/// Who holds the lock: the `owner` file's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The OS user (the name of the process's uid).
    pub user: String,
    /// The machine `cultivate` ran on.
    pub host: String,
    /// Its process ID there.
    pub pid: u32,
    /// The process's start time (clock ticks since boot, `/proc/PID/stat`
    /// field 22), so a reused pid is not mistaken for the holder.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// `cultivate` version.
    pub version: String,
    /// What it is doing (`deploy`, `rollback`).
    pub what: String,
    /// When it took the lock, Unix seconds.
    pub taken_at: i64,
    /// Until when the lock holds without renewal, Unix seconds.
    pub lease_until: i64,
}

impl Owner {
    /// This process, doing `what`, at `now`.
    pub fn this_process(what: &str, now: i64) -> Owner {
        let pid = std::process::id();
        Owner {
            user: os_user(),
            host: hostname(),
            pid,
            start_time: process_start_time(pid),
            version: env!("CARGO_PKG_VERSION").to_string(),
            what: what.to_string(),
            taken_at: now,
            lease_until: now + LEASE_SECS,
        }
    }

    /// `deploy by alice@build1 (pid 4242, cultivate 0.1.0) since 2026-…`.
    pub fn describe(&self) -> String {
        format!(
            "{} by {}@{} (pid {}, cultivate {}) since {}",
            self.what,
            self.user,
            self.host,
            self.pid,
            self.version,
            iso(self.taken_at)
        )
    }
}

/// The parsed `owner` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A record this version writes.
    Record(Owner),
    /// Anything else: an old plain-text owner line, or an unreadable file.
    Legacy(String),
}

impl Holder {
    /// One line for messages.
    pub fn describe(&self) -> String {
        match self {
            Holder::Record(o) => o.describe(),
            Holder::Legacy(text) if text.is_empty() => "an unknown holder (empty owner file)".to_string(),
            Holder::Legacy(text) => format!("an unknown holder (old-format lock: {text})"),
        }
    }
}

/// Parses the `owner` file; never fails.
pub fn parse_owner(text: &str) -> Holder {
    match serde_json::from_str::<Owner>(text.trim()) {
        Ok(o) => Holder::Record(o),
        Err(_) => Holder::Legacy(text.trim().to_string()),
    }
}

/// Whether the holder still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its process runs on this machine (never taken over).
    Alive,
    /// On this machine, and its process is gone or the pid is another process.
    Dead(String),
    /// Its lease ran out without renewal.
    LeaseExpired,
    /// Held from another machine within its lease, or an old-format lock
    /// within [`LEGACY_LEASE_SECS`]: cannot tell (never taken over).
    Unknown,
}

impl Liveness {
    /// True when the lock may be taken over.
    pub fn is_stale(&self) -> bool {
        matches!(self, Liveness::Dead(_) | Liveness::LeaseExpired)
    }

    /// `alive`, `dead (…)`, `lease expired`, `unknown (…)`.
    pub fn label(&self) -> String {
        match self {
            Liveness::Alive => "alive".to_string(),
            Liveness::Dead(why) => format!("dead ({why})"),
            Liveness::LeaseExpired => "lease expired".to_string(),
            Liveness::Unknown => {
                "unknown (held from another machine, or an old-format lock, within its lease)".to_string()
            }
        }
    }
}

/// What this machine knows about a process: `None` when no process has that
/// pid; `Some(None)` when it exists but its start time cannot be read.
pub type ProcessFacts = Option<Option<u64>>;

/// The liveness decision, a pure function: `this_host` and `now` (Unix
/// seconds) are this machine's; `lock_mtime` the lock directory's mtime;
/// `process` what this machine knows of the holder's pid (only consulted
/// when the holder is on this machine).
pub fn liveness(
    holder: &Holder,
    this_host: &str,
    now: i64,
    lock_mtime: Option<i64>,
    process: ProcessFacts,
) -> Liveness {
    match holder {
        Holder::Legacy(_) => match lock_mtime {
            Some(m) if now.saturating_sub(m) > LEGACY_LEASE_SECS => Liveness::LeaseExpired,
            _ => Liveness::Unknown,
        },
        Holder::Record(o) if o.host == this_host => match process {
            None => Liveness::Dead(format!("no process {} on {}", o.pid, o.host)),
            Some(Some(start)) if o.start_time.is_some_and(|s| s != start) => {
                Liveness::Dead(format!("pid {} is now another process", o.pid))
            }
            Some(_) => Liveness::Alive,
        },
        Holder::Record(o) if now > o.lease_until => Liveness::LeaseExpired,
        Holder::Record(_) => Liveness::Unknown,
    }
}

/// What this machine knows about `pid` (see [`ProcessFacts`]).
pub fn process_facts(pid: u32) -> ProcessFacts {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return None;
    };
    if pid_t <= 0 {
        return None;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists =
        unsafe { libc::kill(pid_t, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists.then(|| process_start_time(pid))
}

/// Field 22 of `/proc/PID/stat` (start time, clock ticks after boot).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Start time from the text of `/proc/PID/stat`; the command name (field 2)
/// is in parentheses and may itself hold spaces or parentheses.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; start time is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The name of this process's uid, from `/etc/passwd` (not `$USER`, which
/// sudo and su leave as it was); `uid N` when it has no entry.
pub fn os_user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| user_for_uid(&t, uid))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The name for `uid` in `/etc/passwd` text.
pub fn user_for_uid(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let found: u32 = f.nth(1)?.parse().ok()?;
        (found == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// This machine's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn iso(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// The lock as found on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The parsed owner file.
    pub holder: Holder,
    /// The lock directory's mtime, Unix seconds.
    pub mtime: Option<i64>,
    /// The owner file as read (compared before a takeover).
    pub raw: String,
}

impl Found {
    /// Its liveness as judged from this machine.
    pub fn liveness(&self) -> Liveness {
        let process = match &self.holder {
            Holder::Record(o) if o.host == hostname() => process_facts(o.pid),
            _ => Some(None),
        };
        liveness(&self.holder, &hostname(), now(), self.mtime, process)
    }
}

const MTIME_MARK: &str = "--cultivate-lock-mtime--";

/// Reads the lock at `lock` (a directory path): `None` when there is none.
pub fn read(session: &Session, lock: &str) -> Result<Option<Found>> {
    let out = session.run(&ExecRequest::shell(format!(
        "test -d {l} || exit 3; cat {l}/owner 2>/dev/null; printf '\\n{MTIME_MARK}\\n'; \
         stat -c %Y {l} 2>/dev/null || stat -f %m {l} 2>/dev/null",
        l = q(lock)
    )))?;
    if out.status == 3 {
        return Ok(None);
    }
    let (raw, mtime) = out.stdout.rsplit_once(MTIME_MARK).unwrap_or((out.stdout.as_str(), ""));
    let raw = raw.trim().to_string();
    Ok(Some(Found { holder: parse_owner(&raw), mtime: mtime.trim().parse().ok(), raw }))
}

fn write_owner_cmd(lock: &str, owner: &Owner) -> Result<String> {
    let json = serde_json::to_string(owner).context("cannot encode the lock record")?;
    Ok(format!("printf '%s\\n' {json} > {l}/owner.new && mv -f {l}/owner.new {l}/owner", json = q(&json), l = q(lock)))
}

/// Takes the lock of `layout` for `what`; takes over a stale one (warning
/// through `warn`, then cleaning the old holder's half-made releases); fails
/// with [`Code::Locked`] naming a live or unknown holder.
///
/// `then`, a read-only script (the deployment's [`super::state`]), runs in
/// the same command right after the lock is taken; its output is returned
/// (`None` after a takeover, whose cleaning changes what it read).
pub fn acquire(
    session: &Session,
    layout: &Layout,
    what: &str,
    warn: &dyn Fn(&str),
    then: Option<&str>,
) -> Result<Option<String>> {
    let lock = layout.lock();
    let owner = Owner::this_process(what, now());
    let try_mkdir = || -> Result<Option<String>> {
        let out = session.run(&ExecRequest::shell(format!(
            // A lock whose record cannot be written (a full disk) is removed
            // again: an empty lock would look like an unknown holder's.
            "mkdir -p {root}/releases && mkdir -p -m 700 {root}/logs && chmod 700 {root}/logs && \
             mkdir {l} 2>/dev/null && {{ {write} || {{ rc=$?; rm -rf {l}; exit $rc; }}; }}{then}",
            root = q(&layout.root),
            l = q(&lock),
            write = write_owner_cmd(&lock, &owner)?,
            // The lock is ours from here: whatever the read does, exit 0.
            then = then.map(|t| format!(" && {{ {{ {t}; }} 2>/dev/null; true; }}")).unwrap_or_default()
        )))?;
        if !out.success() && !out.stderr.trim().is_empty() {
            anyhow::bail!("cannot create {} on {}: {}", layout.root, session.target, out.stderr.trim());
        }
        Ok(out.success().then_some(out.stdout))
    };
    if let Some(out) = try_mkdir()? {
        remember_written(&lock, &owner);
        return Ok(Some(out));
    }
    let Some(found) = read(session, &lock)? else {
        // Released between the two commands: one more try, as a fresh start.
        if let Some(out) = try_mkdir()? {
            remember_written(&lock, &owner);
            return Ok(Some(out));
        }
        return Err(locked(session, "another run took it just now"));
    };
    let state = found.liveness();
    if !state.is_stale() {
        return Err(locked(session, &format!("{} — holder {}", found.holder.describe(), state.label())));
    }
    take_over(session, &lock, &found)?;
    warn(&format!("took over the lock of {} — holder {}", found.holder.describe(), state.label()));
    if try_mkdir()?.is_none() {
        return Err(locked(session, "another run took the stale lock over first"));
    }
    remember_written(&lock, &owner);
    match clean_after_takeover(session, layout) {
        Ok(removed) if !removed.is_empty() => warn(&format!(
            "removed the unfinished release{} {} left by that run",
            plural(removed.len()),
            removed.join(", ")
        )),
        Ok(_) => {}
        Err(e) => warn(&format!("could not clean what the old lock holder left: {e:#}")),
    }
    Ok(None)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn locked(session: &Session, detail: &str) -> anyhow::Error {
    UserError::new(Code::Locked, format!("the target is locked: {detail}"))
        .hint(format!(
            "wait for that run to finish; if it died on another machine, `cultivate lock release --target {}` removes the lock",
            session.target
        ))
        .into()
}

/// Renames the stale lock aside (only one taker's `mv` can succeed), checks
/// it is the lock judged stale, and removes it; puts it back otherwise.
fn take_over(session: &Session, lock: &str, found: &Found) -> Result<()> {
    let aside = format!("{lock}.stale.{}.{}", std::process::id(), now());
    let moved = session.run(&ExecRequest::shell(format!("mv {l} {a} 2>/dev/null", l = q(lock), a = q(&aside))))?;
    if !moved.success() {
        return Err(locked(session, "another run took the stale lock over first"));
    }
    let again = read(session, &aside)?;
    if again.as_ref().map(|f| f.raw.as_str()) != Some(found.raw.as_str()) {
        // Someone replaced the lock between our read and our rename: theirs.
        let _ = session.run(&ExecRequest::shell(format!("mv {a} {l}", l = q(lock), a = q(&aside))));
        return Err(locked(session, "the lock changed hands while it was being taken over"));
    }
    session.run(&ExecRequest::new(["rm", "-rf", &aside]))?;
    Ok(())
}

/// A lease renewed less than this long ago is not renewed again: it still
/// runs for at least `LEASE_SECS - RENEW_AFTER_SECS` (9 minutes), and a run
/// whose stages follow each other quickly (a deploy with nothing changed)
/// spends no round trips on its lease.
pub const RENEW_AFTER_SECS: u64 = 60;

/// What this process last wrote into a lock's `owner` file, and when.
struct Written {
    lock: String,
    json: String,
    at: std::time::Instant,
}

static WRITTEN: std::sync::Mutex<Option<Written>> = std::sync::Mutex::new(None);

fn written() -> std::sync::MutexGuard<'static, Option<Written>> {
    WRITTEN.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember_written(lock: &str, owner: &Owner) {
    if let Ok(json) = serde_json::to_string(owner) {
        *written() = Some(Written { lock: lock.to_string(), json, at: std::time::Instant::now() });
    }
}

/// Whether a lease written `age` ago needs renewing now.
pub fn renewal_due(age: std::time::Duration) -> bool {
    age.as_secs() >= RENEW_AFTER_SECS
}

/// Renews this process's lease (rewrites the record with a later
/// `lease_until`); a no-op when the lock is not ours (its `owner` file is not
/// what this process last wrote there) and when it was written less than
/// [`RENEW_AFTER_SECS`] ago. One command: compare and rewrite on the target.
pub fn renew(session: &Session, layout: &Layout, what: &str) -> Result<()> {
    let _ = what;
    let lock = layout.lock();
    let (json, due) = match written().as_ref() {
        Some(w) if w.lock == lock => (w.json.clone(), renewal_due(w.at.elapsed())),
        _ => return Ok(()),
    };
    if !due {
        return Ok(());
    }
    let Ok(mut owner) = serde_json::from_str::<Owner>(&json) else { return Ok(()) };
    owner.lease_until = now() + LEASE_SECS;
    let out = session.run(&ExecRequest::shell(format!(
        "[ \"$(cat {l}/owner 2>/dev/null)\" = {old} ] || exit 3; {write}",
        l = q(&lock),
        old = q(&json),
        write = write_owner_cmd(&lock, &owner)?
    )))?;
    match out.status {
        0 => remember_written(&lock, &owner),
        // Not ours any more (released, or taken over): nothing to renew.
        3 => {
            *written() = None;
        }
        _ => tracing::warn!("could not renew the lock {lock}: {}", out.stderr.trim()),
    }
    Ok(())
}

/// Removes the lock.
pub fn release(session: &Session, layout: &Layout) {
    let lock = layout.lock();
    if written().as_ref().is_some_and(|w| w.lock == lock) {
        *written() = None;
    }
    if let Err(e) = session.run(&ExecRequest::new(["rm", "-rf", &lock])) {
        tracing::warn!("could not release the lock {lock}: {e}");
    }
}

/// One release directory as listed on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRelease {
    /// Directory name.
    pub version: String,
    /// `release.json`, when present.
    pub record: Option<String>,
}

/// Releases to remove after a takeover: no record, an unreadable one or a
/// `pending` one, never `current`.
pub fn unfinished_releases(listed: &[ListedRelease], current: Option<&str>) -> Vec<String> {
    listed
        .iter()
        .filter(|r| Some(r.version.as_str()) != current)
        .filter(|r| match &r.record {
            None => true,
            Some(text) => {
                serde_json::from_str::<ReleaseRecord>(text).map_or(true, |rec| rec.status == ReleaseStatus::Pending)
            }
        })
        .map(|r| r.version.clone())
        .collect()
}

/// Parses the listing printed by [`clean_after_takeover`]'s command.
fn parse_listing(text: &str) -> (Vec<ListedRelease>, Option<String>) {
    let mut listed = Vec::new();
    let mut current = None;
    for line in text.lines() {
        let Some((kind, rest)) = line.split_once('\t') else { continue };
        match kind {
            "C" => {
                current = rest.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_string)
            }
            "R" => {
                let (version, record) = rest.split_once('\t').unwrap_or((rest, "-"));
                let record = (record != "-").then(|| record.to_string());
                listed.push(ListedRelease { version: version.to_string(), record });
            }
            _ => {}
        }
    }
    (listed, current)
}

/// After a takeover: removes the release directories the old holder left
/// unfinished (see [`unfinished_releases`]); returns their names.
pub fn clean_after_takeover(session: &Session, layout: &Layout) -> Result<Vec<String>> {
    let out = session.run(&ExecRequest::shell(format!(
        "cd {root} || exit 0; printf 'C\\t%s\\n' \"$(readlink current 2>/dev/null)\"; \
         for d in releases/*/; do [ -d \"$d\" ] || continue; v=$(basename \"$d\"); \
         if [ -f \"$d/release.json\" ]; then printf 'R\\t%s\\t' \"$v\"; tr -d '\\n\\t' < \"$d/release.json\"; echo; \
         else printf 'R\\t%s\\t-\\n' \"$v\"; fi; done",
        root = q(&layout.root)
    )))?;
    let (listed, current) = parse_listing(&out.stdout);
    let remove = unfinished_releases(&listed, current.as_deref());
    for v in &remove {
        let dir = layout.release(v);
        let rm = session.run(&ExecRequest::new(["rm", "-rf", &dir]))?;
        anyhow::ensure!(rm.success(), "cannot remove {dir}: {}", rm.stderr.trim());
    }
    Ok(remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner(host: &str, pid: u32, start: Option<u64>, lease_until: i64) -> Owner {
        Owner {
            user: "alice".into(),
            host: host.into(),
            pid,
            start_time: start,
            version: "0.1.0".into(),
            what: "deploy".into(),
            taken_at: 1_000,
            lease_until,
        }
    }

    #[test]
    fn records_round_trip_and_old_files_are_legacy() {
        let o = owner("build1", 42, Some(7), 2_000);
        assert_eq!(parse_owner(&serde_json::to_string(&o).unwrap()), Holder::Record(o.clone()));
        let old = "deploy by unknown@build1 (pid 42) at 2026-11-28T10:00:00Z\n";
        assert_eq!(parse_owner(old), Holder::Legacy(old.trim().to_string()));
        assert_eq!(parse_owner(""), Holder::Legacy(String::new()));
        assert!(Holder::Legacy(old.trim().into()).describe().contains("old-format lock: deploy by unknown@build1"));
        assert!(o.describe().starts_with("deploy by alice@build1 (pid 42, cultivate 0.1.0) since 1970-"));
    }

    #[test]
    fn liveness_on_this_machine_follows_the_process() {
        let rec = Holder::Record(owner("me", 42, Some(7), 2_000));
        assert_eq!(liveness(&rec, "me", 1_500, None, Some(Some(7))), Liveness::Alive);
        // Alive even with its lease long gone: a live holder is never overridden.
        assert_eq!(liveness(&rec, "me", 99_999, None, Some(Some(7))), Liveness::Alive);
        assert_eq!(liveness(&rec, "me", 99_999, None, Some(None)), Liveness::Alive);
        assert!(matches!(liveness(&rec, "me", 1_500, None, None), Liveness::Dead(w) if w.contains("no process 42")));
        assert!(
            matches!(liveness(&rec, "me", 1_500, None, Some(Some(8))), Liveness::Dead(w) if w.contains("another process"))
        );
    }

    #[test]
    fn liveness_from_another_machine_follows_the_lease() {
        let rec = Holder::Record(owner("other", 42, Some(7), 2_000));
        assert_eq!(liveness(&rec, "me", 1_999, None, None), Liveness::Unknown);
        assert_eq!(liveness(&rec, "me", 2_000, None, None), Liveness::Unknown);
        assert_eq!(liveness(&rec, "me", 2_001, None, None), Liveness::LeaseExpired);
    }

    #[test]
    fn old_format_locks_expire_by_directory_age() {
        let old = Holder::Legacy("deploy by x@y (pid 1)".into());
        assert_eq!(liveness(&old, "y", 10_000, Some(10_000 - LEGACY_LEASE_SECS), Some(None)), Liveness::Unknown);
        assert_eq!(liveness(&old, "y", 10_000, Some(10_000 - LEGACY_LEASE_SECS - 1), None), Liveness::LeaseExpired);
        assert_eq!(liveness(&old, "y", 10_000, None, None), Liveness::Unknown);
    }

    #[test]
    fn this_process_is_alive_and_its_start_time_is_read() {
        let me = Owner::this_process("deploy", now());
        assert_eq!(me.pid, std::process::id());
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(me.start_time.is_some());
        }
        assert_eq!(process_facts(me.pid), Some(me.start_time));
        let rec = Holder::Record(me.clone());
        assert_eq!(liveness(&rec, &me.host, now(), None, process_facts(me.pid)), Liveness::Alive);
        assert!(!me.user.is_empty() && !me.user.starts_with("uid "), "{}", me.user);
    }

    #[test]
    fn a_finished_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let rec = Holder::Record(owner(&hostname(), pid, Some(1), now() + 600));
        assert!(liveness(&rec, &hostname(), now(), None, process_facts(pid)).is_stale());
    }

    #[test]
    fn a_lease_is_renewed_only_when_a_minute_old_and_still_holds_nine_minutes() {
        use std::time::Duration;
        assert!(!renewal_due(Duration::ZERO));
        assert!(!renewal_due(Duration::from_secs(RENEW_AFTER_SECS - 1)));
        assert!(renewal_due(Duration::from_secs(RENEW_AFTER_SECS)));
        // A lease skipped for just under a minute still has most of its time.
        assert!(LEASE_SECS - RENEW_AFTER_SECS as i64 >= 540);
    }

    #[test]
    fn start_time_parsing() {
        let stat = "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(
            user_for_uid("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/h:/bin/sh\n", 1000).as_deref(),
            Some("alice")
        );
        assert_eq!(user_for_uid("broken\n", 0), None);
    }

    fn record(status: &str) -> String {
        format!(
            r#"{{"version":"v","created_at":"t","images":{{}},"files":{{}},"fingerprint":"f","status":"{status}"}}"#
        )
    }

    #[test]
    fn unfinished_releases_are_chosen() {
        let listing = format!(
            "C\t/srv/app/releases/b\nR\ta\t{}\nR\tb\t{}\nR\tc\t-\nR\td\t{}\nR\te\tnot json\n",
            record("healthy"),
            record("pending"),
            record("pending")
        );
        let (listed, current) = parse_listing(&listing);
        assert_eq!(current.as_deref(), Some("b"));
        assert_eq!(unfinished_releases(&listed, current.as_deref()), ["c", "d", "e"]);
        let (listed, current) = parse_listing("C\t\nR\tx\t-\n");
        assert_eq!(current, None);
        assert_eq!(unfinished_releases(&listed, None), ["x"]);
        assert!(unfinished_releases(&[ListedRelease { version: "f".into(), record: Some(record("failed")) }], None)
            .is_empty());
    }

    fn arb_owner() -> impl Strategy<Value = Owner> {
        ("\\PC{0,12}", "[a-z0-9.-]{0,12}", any::<u32>(), any::<Option<u64>>(), "\\PC{0,8}", any::<i64>(), any::<i64>())
            .prop_map(|(user, host, pid, start_time, what, taken_at, lease_until)| Owner {
                user,
                host,
                pid,
                start_time,
                version: "0.1.0".into(),
                what,
                taken_at,
                lease_until,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every record written parses back to itself.
        #[test]
        fn owner_records_round_trip(o in arb_owner()) {
            prop_assert_eq!(parse_owner(&serde_json::to_string(&o).unwrap()), Holder::Record(o));
        }

        /// Any owner text parses without panicking, and describes itself.
        #[test]
        fn any_owner_text_parses(text in "\\PC{0,200}") {
            let h = parse_owner(&text);
            prop_assert!(!h.describe().is_empty());
        }

        /// The decision: a holder whose process runs here with the recorded
        /// start time is never stale; another machine's holder is stale
        /// exactly when its lease ran out.
        #[test]
        fn liveness_decision(o in arb_owner(), here in any::<bool>(), now in any::<i64>(),
                             process in any::<Option<Option<u64>>>(), mtime in any::<Option<i64>>()) {
            let this_host = if here { o.host.clone() } else { format!("{}-other", o.host) };
            let l = liveness(&Holder::Record(o.clone()), &this_host, now, mtime, process);
            if here {
                let alive = match process { None => false, Some(Some(s)) => o.start_time.is_none_or(|t| t == s), Some(None) => true };
                prop_assert_eq!(alive, l == Liveness::Alive);
                prop_assert_eq!(!alive, l.is_stale());
            } else {
                prop_assert_eq!(l.is_stale(), now > o.lease_until);
                prop_assert!(l != Liveness::Alive);
            }
        }
    }
}
