//! Opening an authenticated SSH session: TCP (or a ProxyJump tunnel),
//! handshake with host-key verification, authentication.

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cultivate_plugin_api::{ErrorKind, PluginError};
use russh::client::{self, AuthResult, Handle};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{cipher, Preferred};
use tokio::sync::watch;

use crate::known_hosts::{self, Verdict};

/// Env variable holding the passphrase of encrypted keys.
pub const PASSPHRASE_ENV: &str = "CULTIVATE_SSH_PASSPHRASE";

/// Everything needed to open one hop.
#[derive(Debug, Clone)]
pub struct HopSpec {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Keys to try, in order (files).
    pub identity_files: Vec<PathBuf>,
    /// Try the ssh-agent (`SSH_AUTH_SOCK`).
    pub use_agent: bool,
    /// An explicit `--identity`, tried first.
    pub explicit_identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub accept_new_host_key: bool,
    /// Record a newly accepted key hashed (`HashKnownHosts yes`).
    pub hash_known_hosts: bool,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

impl HopSpec {
    pub fn peer(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// What the handshake learned, for `info()` and error messages.
#[derive(Debug, Default, Clone)]
pub struct HandshakeFacts {
    pub host_key_type: String,
    pub fingerprint: String,
    pub cipher: String,
    pub kex: String,
    pub learned_line: Option<usize>,
}

/// Shared between the handler (inside russh's session task) and us.
#[derive(Default)]
pub struct Shared {
    /// Why the host key was refused.
    pub refusal: Mutex<Option<PluginError>>,
    pub facts: Mutex<HandshakeFacts>,
    /// Why the server disconnected, if it said.
    pub disconnect: Mutex<Option<String>>,
}

/// The russh client handler: host-key policy and bookkeeping.
pub struct ClientHandler {
    spec: HopSpec,
    shared: Arc<Shared>,
    /// Dropped with the session task, which wakes everyone waiting on [`Alive`].
    _alive: watch::Sender<()>,
}

/// Resolves when the session is gone.
#[derive(Clone)]
pub struct Alive(watch::Receiver<()>);

impl Alive {
    pub async fn gone(&self) {
        let mut rx = self.0.clone();
        while rx.changed().await.is_ok() {}
    }

    pub fn is_gone(&self) -> bool {
        self.0.has_changed().is_err()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key: PublicKey = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let fp = known_hosts::fingerprint(&key);
        let key_type = key.algorithm().as_str().to_string();
        {
            let mut facts = lock(&self.shared.facts);
            facts.fingerprint = fp.clone();
            facts.host_key_type = key_type.clone();
        }
        let s = &self.spec;
        let kh = s.known_hosts.display().to_string();
        let verdict = match known_hosts::check(&s.known_hosts, &s.host, s.port, &key) {
            Ok(v) => v,
            Err(e) => {
                *lock(&self.shared.refusal) = Some(
                    PluginError::new(ErrorKind::Io, format!("cannot read known_hosts file {kh}: {e}"))
                        .with_hint("fix the file's permissions or pass another file with --known-hosts FILE"),
                );
                return Ok(false);
            }
        };
        let name = known_hosts::host_entry_name(&s.host, s.port);
        match verdict {
            Verdict::Known { .. } => Ok(true),
            Verdict::Unknown if s.accept_new_host_key => {
                match known_hosts::learn(&s.known_hosts, &s.host, s.port, &key, s.hash_known_hosts) {
                    Ok(line) => {
                        lock(&self.shared.facts).learned_line = Some(line);
                        Ok(true)
                    }
                    Err(e) => {
                        *lock(&self.shared.refusal) = Some(
                            PluginError::new(
                                ErrorKind::Io,
                                format!("cannot record the host key of {name} in {kh}: {e}"),
                            )
                            .with_hint("make the known_hosts file writable or pass another with --known-hosts FILE"),
                        );
                        Ok(false)
                    }
                }
            }
            Verdict::Unknown => {
                *lock(&self.shared.refusal) = Some(
                    PluginError::new(
                        ErrorKind::HostKeyUnknown,
                        format!(
                            "host key of {name} is not known: the server offered a {key_type} key with fingerprint {fp}, \
                             which is not in {kh}"
                        ),
                    )
                    .with_hint(format!(
                        "check the fingerprint with the server's administrator (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub \
                         on the server), then run again with --accept-new-host-key to record it, or add it to {kh}"
                    )),
                );
                Ok(false)
            }
            Verdict::Changed { line, recorded_type, recorded_fingerprint } => {
                *lock(&self.shared.refusal) = Some(
                    PluginError::new(
                        ErrorKind::HostKeyChanged,
                        format!(
                            "host key of {name} has CHANGED: the server offered a {key_type} key with fingerprint {fp}, \
                             but {kh} line {line} records a {recorded_type} key with fingerprint {recorded_fingerprint}. \
                             Someone may be intercepting the connection, or the server was reinstalled"
                        ),
                    )
                    .with_hint(format!(
                        "confirm the new fingerprint with the server's administrator; if the change is expected, \
                         remove line {line} from {kh} (ssh-keygen -R '{name}' -f {kh}) and connect with \
                         --accept-new-host-key"
                    )),
                );
                Ok(false)
            }
            Verdict::Revoked { line } => {
                *lock(&self.shared.refusal) = Some(
                    PluginError::new(
                        ErrorKind::HostKeyChanged,
                        format!("host key {fp} of {name} is marked @revoked in {kh} line {line}"),
                    )
                    .with_hint("the server uses a revoked key: do not connect; contact its administrator"),
                );
                Ok(false)
            }
        }
    }

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let mut facts = lock(&self.shared.facts);
        facts.cipher = names.cipher.as_ref().to_string();
        facts.kex = names.kex.as_ref().to_string();
        Ok(())
    }

    async fn disconnected(&mut self, reason: client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let text = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the server disconnected ({:?}: {})", info.reason_code, info.message)
            }
            client::DisconnectReason::Error(e) => format!("{e}"),
        };
        *lock(&self.shared.disconnect) = Some(text);
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// An authenticated session to one hop.
pub struct Session {
    pub handle: Handle<ClientHandler>,
    pub shared: Arc<Shared>,
    pub alive: Alive,
    pub spec: HopSpec,
}

fn ciphers() -> &'static [cipher::Name] {
    // AES-GCM when the CPU has AES instructions (several GB/s), else chacha20-poly1305.
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    let aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    let aes = false;
    if aes {
        &[
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_192_CTR,
            cipher::AES_128_CTR,
        ]
    } else {
        &[
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::AES_256_CTR,
            cipher::AES_192_CTR,
            cipher::AES_128_CTR,
        ]
    }
}

/// The client configuration for a hop.
fn client_config(spec: &HopSpec) -> client::Config {
    let mut preferred = Preferred { cipher: Cow::Borrowed(ciphers()), ..Preferred::default() };
    // Ask for a host key type known_hosts records, so a server with several
    // keys shows the one we can verify.
    let recorded = known_hosts::recorded_algorithms(&spec.known_hosts, &spec.host, spec.port);
    if !recorded.is_empty() {
        let mut keys: Vec<Algorithm> = Vec::new();
        for alg in preferred.key.iter() {
            let known = recorded.iter().any(|r| match (r, alg) {
                (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
                _ => r == alg,
            });
            if known {
                keys.push(alg.clone());
            }
        }
        for alg in preferred.key.iter() {
            if !keys.contains(alg) {
                keys.push(alg.clone());
            }
        }
        preferred.key = Cow::Owned(keys);
    }
    client::Config {
        preferred,
        // Large windows and buffers: bulk stdin (image archives) is the main load.
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 1024,
        keepalive_interval: if spec.keepalive.is_zero() { None } else { Some(spec.keepalive) },
        keepalive_max: KEEPALIVE_MAX as usize,
        inactivity_timeout: None,
        nodelay: true,
        ..client::Config::default()
    }
}

async fn with_timeout<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// Opens a TCP connection to `host:port` with the connect timeout.
/// Keepalives unanswered before the connection counts as lost.
const KEEPALIVE_MAX: u32 = 3;

/// Data the server has not acknowledged for `limit` aborts the connection
/// (Linux's `TCP_USER_TIMEOUT`; zero leaves the kernel's default). russh's
/// keepalive cannot see a dead link while the session task is blocked in its
/// own socket write, which is where it waits when bulk stdin (an image
/// archive) fills the send buffer: the keepalive timer never runs, and TCP
/// retransmits for a quarter of an hour. With this the write fails once the
/// link has been dead as long as the keepalive allows, the session task
/// ends, and every command waiting on it gets a connection-lost error.
fn set_user_timeout(stream: &tokio::net::TcpStream, limit: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if !limit.is_zero() {
        use std::os::fd::AsRawFd;
        let ms = libc::c_uint::try_from(limit.as_millis()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: a valid socket descriptor owned by `stream`, and a pointer
        // to a c_uint with its size, as TCP_USER_TIMEOUT takes. A kernel
        // without the option (before 2.6.37) keeps its default: ignored.
        let _ = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, limit);
}

async fn tcp_connect(spec: &HopSpec) -> Result<tokio::net::TcpStream, PluginError> {
    let t = spec.connect_timeout;
    let secs = t.as_secs_f64();
    let hostport = format!("{}:{}", spec.host, spec.port);
    let lookup = with_timeout(t, tokio::net::lookup_host((spec.host.clone(), spec.port))).await;
    let addrs: Vec<std::net::SocketAddr> = match lookup {
        None => {
            return Err(PluginError::new(
                ErrorKind::HostUnreachable,
                format!("cannot resolve host name `{}`: no answer from DNS within {secs}s", spec.host),
            )
            .with_hint("check the host name and this machine's DNS settings"))
        }
        Some(Err(e)) => {
            return Err(PluginError::new(
                ErrorKind::HostUnreachable,
                format!("cannot resolve host name `{}`: {e}", spec.host),
            )
            .with_hint("check the spelling of the host name, this machine's DNS, or add a Host entry with HostName to ~/.ssh/config"))
        }
        Some(Ok(a)) => a.collect(),
    };
    if addrs.is_empty() {
        return Err(PluginError::new(
            ErrorKind::HostUnreachable,
            format!("host name `{}` has no addresses", spec.host),
        )
        .with_hint("check the host name and DNS"));
    }
    let mut last: Option<PluginError> = None;
    for addr in addrs {
        // `host:port (address)` when the name is not already the address.
        let hostport =
            if addr.ip().to_string() == spec.host { hostport.clone() } else { format!("{hostport} ({addr})") };
        match with_timeout(t, tokio::net::TcpStream::connect(addr)).await {
            Some(Ok(s)) => {
                let _ = s.set_nodelay(true);
                set_user_timeout(&s, spec.keepalive * KEEPALIVE_MAX);
                return Ok(s);
            }
            Some(Err(e)) => {
                let err = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => PluginError::new(
                        ErrorKind::ConnectionRefused,
                        format!("connection to {hostport} refused: nothing listens on port {}", spec.port),
                    )
                    .with_hint("check the port, and that sshd is running on the target (systemctl status ssh)"),
                    _ => {
                        let unreachable = matches!(e.raw_os_error(), Some(code) if code == 101 || code == 113);
                        if unreachable {
                            PluginError::new(ErrorKind::HostUnreachable, format!("host {hostport} is unreachable: {e}"))
                                .with_hint("check the address, the network route and VPN")
                        } else {
                            PluginError::new(ErrorKind::HostUnreachable, format!("cannot connect to {hostport}: {e}"))
                                .with_hint("check the address, the network and firewalls")
                        }
                    }
                };
                last = Some(err);
            }
            None => {
                last = Some(
                    PluginError::new(
                        ErrorKind::Timeout,
                        format!("TCP connection to {hostport} timed out after {secs}s"),
                    )
                    .with_hint(
                        "check that the host is up and a firewall does not drop packets to the port; \
                         raise the connect timeout for slow links",
                    ),
                )
            }
        }
    }
    Err(last.unwrap_or_else(|| PluginError::other(format!("cannot connect to {hostport}"))))
}

/// Runs the SSH handshake over `stream` and authenticates.
async fn handshake<S>(spec: HopSpec, stream: S) -> Result<Session, PluginError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let (alive_tx, alive_rx) = watch::channel(());
    let handler = ClientHandler { spec: spec.clone(), shared: shared.clone(), _alive: alive_tx };
    let config = Arc::new(client_config(&spec));
    let peer = format!("{}:{}", spec.host, spec.port);
    let secs = spec.connect_timeout.as_secs_f64();
    let handle = match with_timeout(spec.connect_timeout, client::connect_stream(config, stream, handler)).await {
        None => {
            return Err(PluginError::new(
                ErrorKind::Timeout,
                format!("SSH handshake with {peer} did not complete within {secs}s (the port accepted the connection but no SSH server answered in time)"),
            )
            .with_hint("check that the port is an SSH server's, and that the server is not overloaded; raise the connect timeout for slow links"))
        }
        Some(Err(e)) => {
            if let Some(refusal) = lock(&shared.refusal).take() {
                return Err(refusal);
            }
            return Err(handshake_error(&peer, &e, lock(&shared.disconnect).clone()));
        }
        Some(Ok(h)) => h,
    };
    let mut session = Session { handle, shared, alive: Alive(alive_rx), spec };
    authenticate(&mut session).await?;
    Ok(session)
}

fn handshake_error(peer: &str, e: &russh::Error, disconnect: Option<String>) -> PluginError {
    let detail = disconnect.unwrap_or_else(|| e.to_string());
    match e {
        russh::Error::Version => PluginError::new(
            ErrorKind::Other,
            format!("{peer} does not speak SSH (bad protocol version banner)"),
        )
        .with_hint("check the port: it is not an SSH server's"),
        russh::Error::NoCommonAlgo { .. } | russh::Error::KexInit | russh::Error::Kex => PluginError::new(
            ErrorKind::Other,
            format!("SSH key exchange with {peer} failed: {detail}"),
        )
        .with_hint("the server allows no algorithm this client supports; check the server's sshd_config (Ciphers, KexAlgorithms, HostKeyAlgorithms)"),
        _ => PluginError::new(
            ErrorKind::ConnectionLost,
            format!("the connection to {peer} closed during the SSH handshake: {detail}"),
        )
        .with_hint("check the server's sshd logs (journalctl -u ssh); it may limit connections (MaxStartups) or block this address"),
    }
}

/// Asks for a passphrase on the controlling terminal with echo off; `None`
/// without a terminal (scripts, CI): then only the environment variable works.
fn prompt_passphrase(path: &std::path::Path) -> Option<String> {
    use std::io::{BufRead, IsTerminal, Write};
    use std::os::fd::AsRawFd;
    if !std::io::stdin().is_terminal() {
        return None;
    }
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").ok()?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data filled by tcgetattr on a valid, open fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` stays open for the calls below (we own `tty`).
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return None;
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut out = &tty;
    let _ = write!(out, "Enter passphrase for key {}: ", path.display());
    let _ = out.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the settings read above on the same fd.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Loads a private key file; an encrypted one takes its passphrase from the
/// environment, or from a prompt on the terminal.
fn load_key(path: &std::path::Path) -> Result<PrivateKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut pass = std::env::var(PASSPHRASE_ENV).ok();
    if pass.is_none() {
        let encrypted = matches!(russh::keys::decode_secret_key(&text, None), Err(russh::keys::Error::KeyIsEncrypted));
        if encrypted {
            pass = prompt_passphrase(path);
        }
    }
    match russh::keys::decode_secret_key(&text, pass.as_deref()) {
        Ok(k) => Ok(k),
        Err(e) => {
            let encrypted = text.contains("ENCRYPTED")
                || russh::keys::decode_secret_key(&text, None)
                    .err()
                    .map(|e| matches!(e, russh::keys::Error::KeyIsEncrypted))
                    .unwrap_or(false);
            if encrypted && pass.is_none() {
                Err(format!("the key is encrypted: set {PASSPHRASE_ENV} to its passphrase (no terminal to ask on)"))
            } else if encrypted {
                Err(format!("cannot decrypt with the given passphrase ({PASSPHRASE_ENV} or the prompt): {e}"))
            } else {
                Err(format!("not a private key this client can use: {e}"))
            }
        }
    }
}

async fn rsa_hash(session: &Session) -> Option<HashAlg> {
    match with_timeout(Duration::from_secs(3), session.handle.best_supported_rsa_hash()).await {
        Some(Ok(Some(alg))) => alg,
        // Unknown: every OpenSSH since 7.2 accepts SHA-2 signatures.
        _ => Some(HashAlg::Sha512),
    }
}

fn describe(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm().as_str(), known_hosts::fingerprint(key))
}

/// Tries the explicit identity, the agent, then the configured/default key files.
async fn authenticate(session: &mut Session) -> Result<(), PluginError> {
    let spec = session.spec.clone();
    let user = spec.user.clone();
    let t = spec.connect_timeout.max(Duration::from_secs(5));
    let mut tried: Vec<String> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(id) = &spec.explicit_identity {
        files.push(id.clone());
    }
    let mut ordered: Vec<(bool, Option<PathBuf>)> = Vec::new(); // (is_agent, file)
    for f in &files {
        ordered.push((false, Some(f.clone())));
    }
    if spec.use_agent {
        ordered.push((true, None));
    }
    for f in &spec.identity_files {
        if !files.contains(f) {
            ordered.push((false, Some(f.clone())));
        }
    }
    let lost = |tried: &[String], what: &str| {
        PluginError::new(
            ErrorKind::AuthFailed,
            format!(
                "authentication as {} failed: the server closed the connection ({what}); tried: {}",
                spec.peer(),
                tried.join("; ")
            ),
        )
        .with_hint("the server may allow fewer attempts (MaxAuthTries) than keys tried: pass the right key with --identity FILE")
    };
    for (is_agent, file) in ordered {
        if session.alive.is_gone() {
            return Err(lost(&tried, "too many attempts?"));
        }
        if is_agent {
            let Ok(sock) = std::env::var("SSH_AUTH_SOCK") else { continue };
            let mut agent = match russh::keys::agent::client::AgentClient::connect_uds(&sock).await {
                Ok(a) => a,
                Err(e) => {
                    tried.push(format!("ssh-agent at {sock}: cannot connect ({e})"));
                    continue;
                }
            };
            let ids = match with_timeout(t, agent.request_identities()).await {
                Some(Ok(ids)) => ids,
                Some(Err(e)) => {
                    tried.push(format!("ssh-agent: cannot list keys ({e})"));
                    continue;
                }
                None => {
                    tried.push("ssh-agent: no answer".to_string());
                    continue;
                }
            };
            if ids.is_empty() {
                tried.push("ssh-agent: holds no keys".to_string());
            }
            for id in ids {
                let key = id.public_key().into_owned();
                let hash = if key.algorithm().is_rsa() { rsa_hash(session).await } else { None };
                let r =
                    with_timeout(t, session.handle.authenticate_publickey_with(&user, key.clone(), hash, &mut agent))
                        .await;
                match r {
                    Some(Ok(AuthResult::Success)) => return Ok(()),
                    Some(Ok(AuthResult::Failure { .. })) => {
                        tried.push(format!("agent key {}: rejected", describe(&key)))
                    }
                    Some(Err(e)) => tried.push(format!("agent key {}: {e}", describe(&key))),
                    None => tried.push(format!("agent key {}: no answer within {}s", describe(&key), t.as_secs())),
                }
                if session.alive.is_gone() {
                    return Err(lost(&tried, "too many attempts?"));
                }
            }
            continue;
        }
        let Some(path) = file else { continue };
        let explicit = spec.explicit_identity.as_ref() == Some(&path);
        if !explicit && !spec.identity_files.is_empty() && !path.exists() {
            continue;
        }
        let shown = path.display().to_string();
        let key = match load_key(&path) {
            Ok(k) => k,
            Err(why) => {
                tried.push(format!("key {shown}: {why}"));
                continue;
            }
        };
        let public = key.public_key().clone();
        let hash = if key.algorithm().is_rsa() { rsa_hash(session).await } else { None };
        let with_hash = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        match with_timeout(t, session.handle.authenticate_publickey(&user, with_hash)).await {
            Some(Ok(AuthResult::Success)) => return Ok(()),
            Some(Ok(AuthResult::Failure { .. })) => {
                tried.push(format!("key {shown} ({}): rejected", describe(&public)))
            }
            Some(Err(e)) => tried.push(format!("key {shown} ({}): {e}", describe(&public))),
            None => tried.push(format!("key {shown}: no answer within {}s", t.as_secs())),
        }
    }
    let list = if tried.is_empty() {
        let defaults: Vec<String> = spec.identity_files.iter().map(|p| p.display().to_string()).collect();
        let agent = if spec.use_agent { "no ssh-agent in SSH_AUTH_SOCK" } else { "ssh-agent not used" };
        format!("no key found (looked for {}; {agent})", defaults.join(", "))
    } else {
        tried.join("; ")
    };
    Err(PluginError::new(
        ErrorKind::AuthFailed,
        format!("authentication as {} failed (publickey); tried: {list}", spec.peer()),
    )
    .with_hint(format!(
        "add the public key to ~{}/.ssh/authorized_keys on the target, pass the right key with --identity FILE, \
         or load it into ssh-agent (ssh-add); encrypted keys read their passphrase from {PASSPHRASE_ENV}",
        spec.user
    )))
}

/// Connects through the hops (ProxyJump first) to the last one. Returns all
/// sessions, the target's last; earlier ones carry the tunnel.
pub async fn connect_chain(hops: Vec<HopSpec>) -> Result<Vec<Session>, PluginError> {
    let mut sessions: Vec<Session> = Vec::new();
    for hop in hops {
        let session = match sessions.last() {
            None => {
                let tcp = tcp_connect(&hop).await?;
                handshake(hop, tcp).await?
            }
            Some(prev) => {
                let via = prev.spec.peer();
                let opened = with_timeout(
                    hop.connect_timeout,
                    prev.handle.channel_open_direct_tcpip(hop.host.clone(), u32::from(hop.port), "127.0.0.1", 0),
                )
                .await;
                let channel = match opened {
                    None => {
                        return Err(PluginError::new(
                            ErrorKind::Timeout,
                            format!(
                                "jump host {via} did not open a tunnel to {}:{} within {}s",
                                hop.host,
                                hop.port,
                                hop.connect_timeout.as_secs()
                            ),
                        )
                        .with_hint("check that the jump host can reach the target"))
                    }
                    Some(Err(e)) => {
                        return Err(PluginError::new(
                            ErrorKind::HostUnreachable,
                            format!("jump host {via} cannot connect to {}:{}: {e}", hop.host, hop.port),
                        )
                        .with_hint("check the target's address and port as seen from the jump host, and that the jump host allows TCP forwarding (AllowTcpForwarding)"))
                    }
                    Some(Ok(c)) => c,
                };
                handshake(hop, channel.into_stream()).await?
            }
        };
        sessions.push(session);
    }
    Ok(sessions)
}
