//! A real OpenSSH sshd for the tests: on 127.0.0.1 and a free port, in a
//! temporary directory with generated host and user keys, never touching the
//! machine's own ssh setup.
//!
//! When `/usr/sbin/sshd` is missing the tests print SKIPPED and pass, unless
//! `CI` is set: then they fail (CI installs `openssh-server` through
//! `scripts/testenv.sh deps`).
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cultivate_plugin_api::ConnectSpec;

pub const SSHD: &str = "/usr/sbin/sshd";

/// Runs a command and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates a key pair at `path` (`path.pub` for the public half).
pub fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", "cultivate-test", "-f"]).arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(&mut cmd);
}

pub fn pub_path(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// True when sshd is installed; otherwise prints SKIPPED (or fails under CI).
pub fn sshd_available(test: &str) -> bool {
    if Path::new(SSHD).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{SSHD} is missing: install openssh-server (scripts/testenv.sh deps)");
    }
    eprintln!("SKIPPED {test}: {SSHD} is missing (apt-get install -y openssh-server)");
    false
}

/// A running sshd.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// The user key authorised for root.
    pub user_key: PathBuf,
    /// A known_hosts file with this server's key as `[127.0.0.1]:PORT`.
    pub known_hosts: PathBuf,
    /// An empty ssh config, so `ssh -G` never reads the machine's.
    pub ssh_config: PathBuf,
    pub host_key: PathBuf,
    extra_config: String,
}

impl Sshd {
    /// Starts an sshd, or returns `None` (after printing SKIPPED) when it is not installed.
    pub fn start(test: &str) -> Option<Sshd> {
        Self::start_with(test, "")
    }

    /// Like [`Sshd::start`] with extra sshd_config lines.
    pub fn start_with(test: &str, extra_config: &str) -> Option<Sshd> {
        if !sshd_available(test) {
            return None;
        }
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::Builder::new().prefix("cultivate-sshd-").tempdir().expect("tempdir");
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key, "ed25519", "");
        let user_key = dir.path().join("id_ed25519");
        keygen(&user_key, "ed25519", "");
        std::fs::copy(pub_path(&user_key), dir.path().join("authorized_keys")).expect("authorized_keys");
        let ssh_config = dir.path().join("ssh_config");
        std::fs::write(&ssh_config, "").expect("ssh_config");
        let mut sshd = Sshd {
            port: free_port(),
            known_hosts: dir.path().join("known_hosts"),
            dir,
            child: None,
            user_key,
            ssh_config,
            host_key,
            extra_config: extra_config.to_string(),
        };
        sshd.launch();
        let line = sshd.known_hosts_line();
        std::fs::write(&sshd.known_hosts, format!("{line}\n")).expect("known_hosts");
        Some(sshd)
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let cfg = d.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nMaxStartups 100\nMaxSessions 50\n\
                 MaxAuthTries 10\nLogLevel ERROR\nSubsystem sftp internal-sftp\n{extra}\n",
                port = self.port,
                hk = self.host_key.display(),
                ak = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
                extra = self.extra_config,
            ),
        )
        .expect("sshd_config");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("sshd.log")).expect("log");
        let mut cmd = Command::new(SSHD);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
        // sshd when the test process dies, so no server outlives a test run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the server sends its SSH banner.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sshd exited with {status}: {}", self.log());
                }
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8];
                if s.read_exact(&mut buf).is_ok() && &buf[..4] == b"SSH-" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd did not start on port {}: {}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…` for the current host key.
    pub fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(pub_path(&self.host_key)).expect("host key");
        let mut parts = public.split_whitespace();
        let (kind, blob) = (parts.next().expect("type"), parts.next().expect("blob"));
        format!("[127.0.0.1]:{} {kind} {blob}", self.port)
    }

    /// The SHA256 fingerprint of the current host key.
    pub fn host_fingerprint(&self) -> String {
        let out = run(Command::new("ssh-keygen").arg("-lf").arg(pub_path(&self.host_key)));
        out.split_whitespace().nth(1).expect("fingerprint").to_string()
    }

    /// A strict spec for root@127.0.0.1:PORT with the test key and known_hosts.
    pub fn spec(&self) -> ConnectSpec {
        let mut spec = ConnectSpec {
            target: format!("ssh://root@127.0.0.1:{}", self.port),
            identity: Some(self.user_key.display().to_string()),
            known_hosts: Some(self.known_hosts.display().to_string()),
            accept_new_host_key: false,
            connect_timeout_secs: 5,
            keepalive_secs: 15,
            sudo: false,
            options: Default::default(),
        };
        spec.options.insert("ssh_config".into(), self.ssh_config.display().to_string());
        spec.options.insert("agent".into(), "no".into());
        spec
    }

    /// Authorises another public key.
    pub fn authorize(&self, key: &Path) {
        let public = std::fs::read_to_string(pub_path(key)).expect("pub");
        let path = self.dir.path().join("authorized_keys");
        let mut all = std::fs::read_to_string(&path).unwrap_or_default();
        all.push_str(&public);
        std::fs::write(path, all).expect("authorized_keys");
    }

    /// PIDs of sshd and all its descendants (the per-connection processes and their commands).
    pub fn process_tree(&self) -> Vec<u32> {
        let Some(root) = self.child.as_ref().map(Child::id) else { return Vec::new() };
        let mut parent_of = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
                // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
                let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
                let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) else { continue };
                parent_of.push((pid, ppid));
            }
        }
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let p = tree[i];
            for &(pid, ppid) in &parent_of {
                if ppid == p && !tree.contains(&pid) {
                    tree.push(pid);
                }
            }
            i += 1;
        }
        tree
    }

    /// Kills sshd and every process it started (cuts live connections).
    pub fn kill_all(&mut self) {
        let pids = self.process_tree();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-9").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills only the sshd processes (listener and per-connection), leaving the
    /// commands they ran: like a cut network, each command sees EOF on stdin.
    pub fn kill_sshd_only(&mut self) {
        let pids: Vec<String> = self
            .process_tree()
            .into_iter()
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim() == "sshd").unwrap_or(false))
            .map(|p| p.to_string())
            .collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&pids).stderr(Stdio::null()).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops sshd, gives it a new host key and starts it again on the same port.
    pub fn restart_with_new_host_key(&mut self) {
        self.kill_all();
        keygen(&self.host_key.clone(), "ed25519", "");
        self.launch();
    }

    /// Starts sshd again with the same keys (after [`Sshd::kill_all`]).
    pub fn restart(&mut self) {
        self.kill_all();
        self.launch();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Skips the test (returns) when sshd is not installed.
#[macro_export]
macro_rules! sshd_or_skip {
    ($name:expr) => {
        match support::Sshd::start($name) {
            Some(s) => s,
            None => return,
        }
    };
}
