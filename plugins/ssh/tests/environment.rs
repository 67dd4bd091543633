//! Behaviour that depends on environment variables (passphrase, ssh-agent,
//! a missing `ssh` client). One test, so nothing else in this binary reads
//! the environment while it changes.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cultivate_plugin_api::{collect, ConnectSpec, Connection, ErrorKind, ExecRequest};
use cultivate_plugin_ssh::SshPlugin;

fn check_works(spec: &ConnectSpec) -> cultivate_plugin_ssh::SshConnection {
    let conn = SshPlugin::new().open(spec).unwrap_or_else(|e| panic!("{}: {e:?}", spec.target));
    let mut ch = conn.exec(&ExecRequest::new(["true"])).unwrap();
    assert_eq!(collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap().status, 0);
    conn
}

#[test]
fn passphrase_agent_and_builtin_config_reader() {
    let Some(sshd) = support::Sshd::start("passphrase_agent_and_builtin_config_reader") else { return };

    // 1. An encrypted key: refused with a message naming the variable, then used with it.
    let enc = sshd.dir.path().join("id_encrypted");
    support::keygen(&enc, "ed25519", "correct horse");
    sshd.authorize(&enc);
    let mut spec = sshd.spec();
    spec.identity = Some(enc.display().to_string());
    std::env::remove_var("CULTIVATE_SSH_PASSPHRASE");
    let err = SshPlugin::new().open(&spec).err().expect("encrypted key without passphrase");
    assert_eq!(err.kind, ErrorKind::AuthFailed, "{err:?}");
    assert!(err.message.contains("encrypted") && err.message.contains("CULTIVATE_SSH_PASSPHRASE"), "{}", err.message);
    std::env::set_var("CULTIVATE_SSH_PASSPHRASE", "wrong");
    let err = SshPlugin::new().open(&spec).err().expect("wrong passphrase");
    assert_eq!(err.kind, ErrorKind::AuthFailed, "{err:?}");
    assert!(err.message.contains("cannot decrypt"), "{}", err.message);
    std::env::set_var("CULTIVATE_SSH_PASSPHRASE", "correct horse");
    check_works(&spec);
    std::env::remove_var("CULTIVATE_SSH_PASSPHRASE");

    // 2. ssh-agent: no --identity, the agent holds the key.
    let sock = sshd.dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add").arg(&sshd.user_key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    std::env::set_var("SSH_AUTH_SOCK", &sock);
    let mut spec = sshd.spec();
    spec.identity = None;
    spec.options.remove("agent");
    // Only the agent can succeed: default key files are in the (absent) ~/.ssh of this machine or not authorised.
    check_works(&spec);
    // With agent=no and no key, the error says what was looked for.
    spec.options.insert("agent".into(), "no".into());
    let err = SshPlugin::new().open(&spec).err().expect("no agent, no key");
    assert_eq!(err.kind, ErrorKind::AuthFailed, "{err:?}");
    std::env::remove_var("SSH_AUTH_SOCK");
    let _ = agent.kill();
    let _ = agent.wait();

    // 3. No `ssh` client: the built-in reader resolves the alias.
    let cfg = sshd.dir.path().join("builtin_config");
    std::fs::write(
        &cfg,
        format!(
            "# comment\nHost box !nothing\n    HostName=127.0.0.1\n    Port {}\n    User root\n    IdentityFile {}\n\nHost *\n    User nobody\n",
            sshd.port,
            sshd.user_key.display()
        ),
    )
    .unwrap();
    std::env::set_var("CULTIVATE_SSH_CLIENT", "/nonexistent/ssh");
    let mut spec = ConnectSpec {
        target: "box".into(),
        known_hosts: Some(sshd.known_hosts.display().to_string()),
        connect_timeout_secs: 5,
        ..Default::default()
    };
    spec.options.insert("ssh_config".into(), cfg.display().to_string());
    spec.options.insert("agent".into(), "no".into());
    let conn = check_works(&spec);
    std::env::remove_var("CULTIVATE_SSH_CLIENT");
    assert_eq!(conn.info().details.get("ssh_config").map(String::as_str), Some("built-in reader"));
    assert_eq!(conn.info().peer, format!("root@127.0.0.1:{}", sshd.port));
}
