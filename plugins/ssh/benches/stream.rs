//! Streams 256 MiB into `cat > /dev/null` on a local sshd through the ssh
//! plugin and through OpenSSH's `ssh` client, in the same run, and prints
//! both throughputs and their ratio (plugin / OpenSSH).
//!
//! `cargo bench -p cultivate-plugin-ssh --bench stream`
//! (`CULTIVATE_BENCH_MIB=64` for a shorter run, `CULTIVATE_BENCH_ROUNDS=5` for more rounds).
//! Both sides include connection setup; the best round of each is compared.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cultivate_plugin_api::{Channel, ChannelEvent, Connection, ExecRequest};
use cultivate_plugin_ssh::SshPlugin;

const CHUNK: usize = 4 * 1024 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn payload() -> Vec<u8> {
    // Incompressible-looking bytes (compression is off on both sides anyway).
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut out = Vec::with_capacity(CHUNK);
    while out.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn wait_exit(ch: &mut dyn Channel) -> i32 {
    loop {
        match ch.next_event(Duration::from_secs(60)).expect("next_event") {
            ChannelEvent::Exit(s) => return s,
            ChannelEvent::Idle => panic!("cat did not finish"),
            _ => {}
        }
    }
}

fn plugin_round(sshd: &support::Sshd, chunk: &[u8], total: usize) -> (Duration, String) {
    let start = Instant::now();
    let conn = SshPlugin::new().open(&sshd.spec()).expect("connect");
    let mut ch = conn.exec(&ExecRequest::shell("cat > /dev/null")).expect("exec");
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        ch.write_stdin(&chunk[..n]).expect("write");
        sent += n;
    }
    ch.close_stdin().expect("eof");
    assert_eq!(wait_exit(ch.as_mut()), 0);
    let took = start.elapsed();
    let cipher = conn.info().details.get("cipher").cloned().unwrap_or_default();
    conn.close();
    (took, cipher)
}

fn openssh_round(sshd: &support::Sshd, chunk: &[u8], total: usize, cipher: Option<&str>) -> Duration {
    let start = Instant::now();
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "Compression=no"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", sshd.known_hosts.display()))
        .arg("-i")
        .arg(&sshd.user_key)
        .arg("-p")
        .arg(sshd.port.to_string());
    if let Some(c) = cipher {
        cmd.arg("-c").arg(c);
    }
    let mut child = cmd
        .arg("root@127.0.0.1")
        .arg("cat > /dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        stdin.write_all(&chunk[..n]).expect("write to ssh");
        sent += n;
    }
    drop(stdin);
    assert!(child.wait().expect("wait").success());
    start.elapsed()
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then
    // this is only a smoke run (a debug build would take minutes for 256 MiB).
    let real = std::env::args().any(|a| a == "--bench");
    let Some(sshd) = support::Sshd::start("bench stream") else { return };
    let total = env_usize("CULTIVATE_BENCH_MIB", if real { 256 } else { 4 }) * 1024 * 1024;
    let rounds = env_usize("CULTIVATE_BENCH_ROUNDS", if real { 3 } else { 1 }).max(1);
    let chunk = payload();
    let (mut all_plugin, mut all_ssh, mut all_ssh_gcm) = (Vec::new(), Vec::new(), Vec::new());
    let mut plugin_cipher = String::new();
    println!("streaming {} MiB into `cat > /dev/null` on 127.0.0.1:{}, {rounds} rounds", total >> 20, sshd.port);
    for round in 1..=rounds {
        let (p, cipher) = plugin_round(&sshd, &chunk, total);
        let s = openssh_round(&sshd, &chunk, total, None);
        let g = openssh_round(&sshd, &chunk, total, Some("aes128-gcm@openssh.com"));
        println!(
            "round {round}: plugin ({cipher}) {:.0} MiB/s, ssh (default cipher) {:.0} MiB/s, ssh -c aes128-gcm {:.0} MiB/s",
            mib_s(total, p),
            mib_s(total, s),
            mib_s(total, g)
        );
        plugin_cipher = cipher;
        all_plugin.push(mib_s(total, p));
        all_ssh.push(mib_s(total, s));
        all_ssh_gcm.push(mib_s(total, g));
    }
    for (what, pick) in [("best", best as fn(&mut [f64]) -> f64), ("median", median)] {
        let (p, s, g) = (pick(&mut all_plugin), pick(&mut all_ssh), pick(&mut all_ssh_gcm));
        println!(
            "{what}: plugin {p:.0} MiB/s ({plugin_cipher}), OpenSSH ssh {s:.0} MiB/s (default cipher), \
             ssh -c aes128-gcm {g:.0} MiB/s; ratio plugin / OpenSSH {:.2} (default cipher), {:.2} (same cipher)",
            p / s,
            p / g
        );
    }
}

fn best(v: &mut [f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
