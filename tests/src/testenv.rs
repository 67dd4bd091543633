//! Target hosts in network namespaces (scripts/testenv.sh).
//!
//! A [`Target`] is a separate host for the deploy tool: its own address
//! (10.77.N.2), its own OpenSSH sshd and, for [`Kind::Engine`] and
//! [`Kind::Trixie`], its own Docker engine, separate from this machine's
//! engine that builds images. [`Kind::Loopback`] is only an sshd on
//! 127.0.0.1, for the ssh transport's tests. See docs/testing.md.
//!
//! ```no_run
//! use cultivate_e2e::testenv::{self, Kind, Target};
//! if !testenv::available(Kind::Engine) {
//!     return; // skipped (fails under CI)
//! }
//! let target = Target::up("my-test", Kind::Engine).unwrap();
//! let out = target.ssh_ok("docker info --format '{{.ID}}'").unwrap();
//! println!("{out} at {}", target.ssh_uri());
//! // dropping `target` tears it down
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::prereq;

/// What a target host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Network namespace, sshd and its own dockerd, on this machine's
    /// filesystem: Docker 20.10 and docker-compose 1.29 (v1).
    Engine,
    /// A Debian bookworm root with sshd and no Docker at all: the target
    /// where the deploy tool installs Docker itself (`apt-get install
    /// docker.io docker-compose`, then starts `dockerd` by hand: no systemd).
    Bare,
    /// A Debian trixie root with Docker 26 and Compose v2 (`docker compose`
    /// and `docker-compose`), its dockerd running.
    Trixie,
    /// Only an sshd on 127.0.0.1 (this machine's filesystem and engine).
    Loopback,
    /// A stand-in macOS 14 host: the trixie root with `uname -s` saying
    /// Darwin, `sw_vers`, root's home at `/Users/admin`, and its Docker 26
    /// engine reachable only through a recording `finch` stand-in
    /// (scripts/testenv/mac/finch); no `docker` or `docker-compose` on the
    /// PATH. The Finch "VM" starts nonexistent.
    Mac,
}

impl Kind {
    /// The name used by `scripts/testenv.sh` and in `target.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Engine => "engine",
            Kind::Bare => "bare",
            Kind::Trixie => "trixie",
            Kind::Loopback => "loopback",
            Kind::Mac => "mac",
        }
    }

    fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "engine" => Kind::Engine,
            "bare" => Kind::Bare,
            "trixie" => Kind::Trixie,
            "loopback" => Kind::Loopback,
            "mac" => Kind::Mac,
            other => bail!("unknown target kind {other:?}"),
        })
    }

    /// True when the target runs a Docker engine from the start that an
    /// ssh session can drive with `docker` (a mac target's engine is behind finch).
    pub fn has_docker(self) -> bool {
        matches!(self, Kind::Engine | Kind::Trixie)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `DIR/target.json` as written by `scripts/testenv.sh`.
#[derive(Debug, Clone, Deserialize)]
struct TargetJson {
    name: String,
    kind: String,
    address: String,
    port: u16,
    user: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    docker_host: Option<String>,
    dir: PathBuf,
    netns: Option<String>,
    host_address: Option<String>,
}

/// A running target host. Dropping it tears it down (`testenv.sh down`)
/// unless [`Target::keep`] was called.
#[derive(Debug)]
pub struct Target {
    /// The name given to [`Target::up`].
    pub name: String,
    pub kind: Kind,
    /// Where sshd listens: `10.77.N.2`, or `127.0.0.1` for loopback.
    pub address: String,
    pub port: u16,
    /// Always `root`.
    pub user: String,
    /// Private key accepted by the target's sshd.
    pub identity: PathBuf,
    /// known_hosts file holding the target's host key (and nothing else).
    pub known_hosts: PathBuf,
    /// `DOCKER_HOST` as seen from inside the target (ssh sessions already
    /// have it set); `None` when the target has no engine (bare, loopback).
    pub docker_host: Option<String>,
    /// The target's state directory (keys, logs, sshd config, engine data).
    pub dir: PathBuf,
    /// The network namespace (`None` for loopback).
    pub netns: Option<String>,
    /// This machine's address on the target's link (`10.77.N.1`).
    pub host_address: Option<String>,
    keep: bool,
    down_done: bool,
}

/// Path of `scripts/testenv.sh`.
pub fn script() -> PathBuf {
    prereq::workspace_root().join("scripts/testenv.sh")
}

fn run_script(args: &[&str]) -> Result<Output> {
    let script = script();
    Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {}", script.display(), args.join(" ")))
}

fn script_ok(args: &[&str]) -> Result<()> {
    let out = run_script(args)?;
    if !out.status.success() {
        bail!("testenv.sh {} failed ({}):\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn host_cmd(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Checks (through [`prereq::require`]) what bringing up a target of `kind`
/// needs: root, and the packages of `testenv.sh deps`, which it installs
/// when they are missing; for [`Kind::Engine`], this machine's dockerd.
/// Returns false (the test should return early) when not under CI; panics
/// under CI.
pub fn available(kind: Kind) -> bool {
    if !prereq::require(is_root(), "root (test target hosts need network namespaces and mounts)") {
        return false;
    }
    let deps_ok = || run_script(&["check-deps"]).map(|o| o.status.success()).unwrap_or(false);
    if !deps_ok() {
        // idempotent; apt-get only runs for what is missing
        match run_script(&["deps"]) {
            Ok(o) if !o.status.success() => {
                eprintln!("testenv.sh deps failed: {}", String::from_utf8_lossy(&o.stderr))
            }
            Err(e) => eprintln!("testenv.sh deps: {e:#}"),
            Ok(_) => {}
        }
    }
    if !prereq::require(deps_ok(), "packages of `scripts/testenv.sh deps` (openssh-server, debootstrap, ...)") {
        return false;
    }
    if kind == Kind::Engine {
        return prereq::require(
            Path::new("/usr/sbin/dockerd").exists(),
            "/usr/sbin/dockerd (the engine target runs this machine's dockerd)",
        );
    }
    true
}

impl Target {
    /// Brings up target `name` (`[a-z0-9-]`, at most 31 characters) of the
    /// given kind and waits until sshd (and its engine, if any) answers.
    /// Reuses a healthy target of the same name and kind; replaces one of
    /// another kind. Bare and trixie targets take a minute or two the first
    /// time on a machine (debootstrap), a few seconds after that.
    pub fn up(name: &str, kind: Kind) -> Result<Target> {
        let out = match kind {
            Kind::Loopback => run_script(&["sshd-loopback", name])?,
            _ => run_script(&["up", name, kind.as_str()])?,
        };
        if !out.status.success() {
            bail!("testenv.sh up {name} {kind} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Self::attach(name).map(|mut t| {
            t.keep = false;
            t
        })
    }

    /// A loopback sshd on a given port (see [`Kind::Loopback`]).
    pub fn loopback_on_port(name: &str, port: u16) -> Result<Target> {
        let out = run_script(&["sshd-loopback", name, &port.to_string()])?;
        if !out.status.success() {
            bail!(
                "testenv.sh sshd-loopback {name} {port} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::attach(name).map(|mut t| {
            t.keep = false;
            t
        })
    }

    /// A target that is already up (brought up by the script or another
    /// test). The returned value does not tear it down when dropped.
    pub fn attach(name: &str) -> Result<Target> {
        let root = std::env::var_os("TESTENV_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/cultivate-testenv"));
        let path = root.join(name).join("target.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is target {name:?} up?)", path.display()))?;
        let j: TargetJson = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Target {
            kind: Kind::parse(&j.kind)?,
            name: j.name,
            address: j.address,
            port: j.port,
            user: j.user,
            identity: j.identity,
            known_hosts: j.known_hosts,
            docker_host: j.docker_host,
            dir: j.dir,
            netns: j.netns,
            host_address: j.host_address,
            keep: true,
            down_done: false,
        })
    }

    /// `ssh://root@ADDRESS:PORT`.
    pub fn ssh_uri(&self) -> String {
        format!("ssh://{}@{}:{}", self.user, self.address, self.port)
    }

    /// Options for OpenSSH's `ssh` that reach this target and nothing else:
    /// no user config, only the target's key, only its known_hosts,
    /// BatchMode and StrictHostKeyChecking=yes.
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.identity.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-p".into(),
            self.port.to_string(),
        ]
    }

    /// An `ssh` command running `cmd` (a shell command line) on the target;
    /// set stdin/stdout yourself (e.g. to pipe `docker save` into it).
    pub fn ssh_command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_options()).arg(format!("{}@{}", self.user, self.address)).arg("--").arg(cmd);
        c
    }

    /// Runs `cmd` on the target over ssh and returns its output (whatever
    /// its exit status). Errors only when `ssh` itself cannot be started.
    pub fn ssh(&self, cmd: &str) -> Result<Output> {
        self.ssh_command(cmd)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running ssh to {}", self.ssh_uri()))
    }

    /// Runs `cmd` on the target; fails unless it exits 0. Returns stdout.
    pub fn ssh_ok(&self, cmd: &str) -> Result<String> {
        let out = self.ssh(cmd)?;
        if !out.status.success() {
            bail!(
                "on {}: `{cmd}` failed ({}):\n{}{}",
                self.ssh_uri(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `cmd` on the target with the file at `input` as its stdin
    /// (e.g. `docker load` of an archive); fails unless it exits 0.
    pub fn ssh_with_input(&self, cmd: &str, input: &Path) -> Result<String> {
        let file = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        let out =
            self.ssh_command(cmd).stdin(file).output().with_context(|| format!("running ssh to {}", self.ssh_uri()))?;
        if !out.status.success() {
            bail!(
                "on {}: `{cmd}` < {} failed ({}):\n{}",
                self.ssh_uri(),
                input.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `program args...` inside the target's network namespace on
    /// this machine (e.g. `ip`, `tc`, `ss`), not over ssh.
    pub fn in_netns(&self, program: &str, args: &[&str]) -> Result<Output> {
        let ns = self.netns.as_deref().context("a loopback target has no network namespace")?;
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in netns {ns}"))
    }

    /// Stops the target's dockerd (`testenv.sh engine-stop`); its
    /// containers stop with it.
    pub fn stop_engine(&self) -> Result<()> {
        script_ok(&["engine-stop", &self.name])
    }

    /// Starts the target's dockerd again and waits until it answers.
    pub fn start_engine(&self) -> Result<()> {
        script_ok(&["engine-start", &self.name])
    }

    /// The veth on this machine's side of the target's link (`ctvN`).
    pub fn veth(&self) -> Option<String> {
        self.host_address.as_deref().and_then(veth_of)
    }

    /// Cuts (`false`) or restores (`true`) the target's network link.
    pub fn set_link(&self, up: bool) -> Result<()> {
        let veth = self.veth().context("a loopback target has no link")?;
        host_cmd("ip", &["link", "set", &veth, if up { "up" } else { "down" }])
    }

    /// Limits the target's link to `rate` (tc's units: `"1mbit"`,
    /// `"500kbit"`) in both directions with a token bucket (`tc tbf`);
    /// `None` lifts the limit. (This kernel has no `netem`, so no delay or
    /// loss emulation; cut the link with [`Target::set_link`] instead.)
    pub fn limit_rate(&self, rate: Option<&str>) -> Result<()> {
        let veth = self.veth().context("a loopback target has no link")?;
        let ns = self.netns.clone().context("a loopback target has no link")?;
        let netns_path = format!("--net=/var/run/netns/{ns}");
        let sides: [(&str, Vec<&str>); 2] = [("tc", vec![]), ("nsenter", vec![netns_path.as_str(), "tc"])];
        for (i, (program, prefix)) in sides.iter().enumerate() {
            let dev = if i == 0 { veth.as_str() } else { "eth0" };
            let mut args = prefix.clone();
            match rate {
                Some(rate) => args.extend([
                    "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
                ]),
                None => args.extend(["qdisc", "del", "dev", dev, "root"]),
            }
            host_cmd(program, &args)?;
        }
        Ok(())
    }

    /// Keep the target after this value is dropped (for debugging; tear it
    /// down with `scripts/testenv.sh down NAME`).
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    /// Tears the target down now and reports failure (dropping does the
    /// same but can only print).
    pub fn down(mut self) -> Result<()> {
        self.down_done = true;
        down(&self.name)
    }
}

/// `testenv.sh down NAME`: safe when the target is not up.
pub fn down(name: &str) -> Result<()> {
    script_ok(&["down", name])
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.keep || self.down_done {
            return;
        }
        if let Err(e) = down(&self.name) {
            eprintln!("tearing down test target {}: {e:#}", self.name);
        }
    }
}

/// What is left on this machine of target `name` after `down`: its network
/// namespace, its veth, mounts under its directory, its iptables rules, its
/// directory, its processes. Empty when it is gone completely.
pub fn leftovers(name: &str, dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let text = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let ns = format!("cultivate-{name}");
    if text("ip", &["netns", "list"]).lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())) {
        left.push(format!("network namespace {ns}"));
    }
    if Path::new("/var/run/netns").join(&ns).exists() {
        left.push(format!("/var/run/netns/{ns}"));
    }
    let dir_s = dir.display().to_string();
    for m in text("findmnt", &["-rn", "-o", "TARGET"]).lines() {
        if m == dir_s || m.starts_with(&format!("{dir_s}/")) || m.ends_with(&format!("/{ns}")) {
            left.push(format!("mount {m}"));
        }
    }
    let comment = format!("cultivate-testenv:{name}");
    for table in ["filter", "nat"] {
        for rule in text("iptables", &["-w", "-t", table, "-S"]).lines() {
            if rule.contains(&format!("--comment {comment} ")) || rule.contains(&format!("--comment \"{comment}\" ")) {
                left.push(format!("iptables -t {table}: {rule}"));
            }
        }
    }
    if dir.exists() {
        left.push(format!("directory {dir_s}"));
    }
    for p in text("ps", &["-eo", "pid=,args="]).lines() {
        if p.contains(&format!("{dir_s}/")) {
            left.push(format!("process {}", p.trim()));
        }
    }
    left
}

/// Processes on this machine that belong to the given containers (by full
/// container ID in their cgroup): empty once a target's engine is gone.
pub fn container_processes(ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    if ids.is_empty() {
        return left;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return left;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if let Some(id) = ids.iter().find(|id| cgroup.contains(id.as_str())) {
            let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
            left.push(format!("process {pid} of container {id}: {}", cmd.trim()));
        }
    }
    left
}

/// Names of this machine's veth interfaces (to check a target's is gone).
pub fn host_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// The veth on this machine's side of a target whose host address is
/// `10.77.N.1`: `ctvN`.
pub fn veth_of(host_address: &str) -> Option<String> {
    let n = host_address.strip_prefix("10.77.")?.split('.').next()?;
    Some(format!("ctv{n}"))
}

/// Path of a root-filesystem tarball with a static busybox (for `docker
/// import`; no registry here): `/bin/busybox` with applets such as `sh`,
/// `httpd`, `sleep`, and `/www/index.html` holding `cultivate-testenv`.
/// Built once by `scripts/testenv/tiny-image.sh` from Debian's
/// busybox-static package.
pub fn tiny_image_rootfs() -> Result<PathBuf> {
    let script = prereq::workspace_root().join("scripts/testenv/tiny-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
