//! known_hosts forms, ssh config aliases, ProxyJump and key types against a real sshd.

mod support;

use std::process::Command;
use std::time::Duration;

use cultivate_plugin_api::{collect, ConnectSpec, Connection, ErrorKind, ExecRequest};
use cultivate_plugin_ssh::SshPlugin;

fn run_stdout(conn: &dyn Connection, argv: &[&str]) -> String {
    let mut ch = conn.exec(&ExecRequest::new(argv.iter().copied())).unwrap();
    let out = collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap();
    assert_eq!(out.status, 0, "{argv:?}: {}", out.stderr);
    out.stdout
}

#[test]
fn hashed_known_hosts_entries_are_honoured() {
    let Some(sshd) = support::Sshd::start("hashed_known_hosts_entries_are_honoured") else { return };
    let kh = sshd.dir.path().join("hashed_known_hosts");
    std::fs::write(
        &kh,
        format!(
            "otherhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n{}\n",
            sshd.known_hosts_line()
        ),
    )
    .unwrap();
    support::run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&kh));
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(text.lines().all(|l| l.starts_with("|1|")), "not hashed: {text}");
    let mut spec = sshd.spec();
    spec.known_hosts = Some(kh.display().to_string());
    let conn = SshPlugin::new().open(&spec).expect("hashed entry accepted");
    assert_eq!(run_stdout(&conn, &["echo", "ok"]), "ok\n");
}

#[test]
fn port_entries_are_not_confused_with_port_22() {
    let Some(sshd) = support::Sshd::start("port_entries_are_not_confused_with_port_22") else { return };
    // The right key recorded under the bare name (port 22) does not vouch for PORT.
    let line = sshd.known_hosts_line();
    let bare = line.replacen(&format!("[127.0.0.1]:{}", sshd.port), "127.0.0.1", 1);
    let kh = sshd.dir.path().join("port22_known_hosts");
    std::fs::write(&kh, format!("{bare}\n")).unwrap();
    let mut spec = sshd.spec();
    spec.known_hosts = Some(kh.display().to_string());
    let err = SshPlugin::new().open(&spec).err().expect("port 22 entry must not match");
    assert_eq!(err.kind, ErrorKind::HostKeyUnknown, "{err:?}");
    // The [host]:port entry does.
    std::fs::write(&kh, format!("{bare}\n{line}\n")).unwrap();
    SshPlugin::new().open(&spec).expect("[host]:port entry accepted");
}

fn alias_config(sshd: &support::Sshd) -> String {
    format!(
        "Host testbox\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n",
        port = sshd.port,
        key = sshd.user_key.display(),
        kh = sshd.known_hosts.display(),
    )
}

#[test]
fn ssh_config_alias_with_hostname_port_user_identity() {
    let Some(sshd) = support::Sshd::start("ssh_config_alias_with_hostname_port_user_identity") else { return };
    let cfg = sshd.dir.path().join("alias_config");
    std::fs::write(&cfg, alias_config(&sshd)).unwrap();
    let mut spec = ConnectSpec { target: "testbox".into(), connect_timeout_secs: 5, ..Default::default() };
    spec.options.insert("ssh_config".into(), cfg.display().to_string());
    spec.options.insert("agent".into(), "no".into());
    let conn = SshPlugin::new().open(&spec).expect("connect through alias");
    let info = conn.info();
    assert_eq!(info.peer, format!("root@127.0.0.1:{}", sshd.port));
    assert_eq!(info.details.get("ssh_config").map(String::as_str), Some("ssh -G"));
    assert_eq!(run_stdout(&conn, &["id", "-un"]), "root\n");
    // ssh://alias works too.
    spec.target = "ssh://testbox".into();
    SshPlugin::new().open(&spec).expect("ssh://alias");
}

#[test]
fn proxy_jump_one_hop() {
    let Some(jump) = support::Sshd::start("proxy_jump_one_hop") else { return };
    // A second sshd that only the jump host is meant to reach (same machine here).
    let Some(target) = support::Sshd::start("proxy_jump_one_hop") else { return };
    target.authorize(&jump.user_key);
    let kh = jump.dir.path().join("both_known_hosts");
    let target_line = target.known_hosts_line().replacen("[127.0.0.1]", "[localhost]", 1);
    std::fs::write(&kh, format!("{}\n{}\n", jump.known_hosts_line(), target_line)).unwrap();
    let cfg = jump.dir.path().join("jump_config");
    std::fs::write(
        &cfg,
        format!(
            "Host jumpbox\n  HostName 127.0.0.1\n  Port {jp}\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n\
             Host inner\n  HostName localhost\n  Port {tp}\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n  ProxyJump jumpbox\n",
            jp = jump.port,
            tp = target.port,
            key = jump.user_key.display(),
            kh = kh.display(),
        ),
    )
    .unwrap();
    let mut spec = ConnectSpec { target: "inner".into(), connect_timeout_secs: 5, ..Default::default() };
    spec.options.insert("ssh_config".into(), cfg.display().to_string());
    spec.options.insert("agent".into(), "no".into());
    let conn = SshPlugin::new().open(&spec).expect("connect through ProxyJump");
    let info = conn.info();
    assert_eq!(info.peer, format!("root@localhost:{}", target.port));
    assert_eq!(info.details.get("via"), Some(&format!("root@127.0.0.1:{}", jump.port)));
    // The target sees the connection coming from the jump host's sshd.
    assert_eq!(run_stdout(&conn, &["sh", "-c", "echo $SSH_CONNECTION | cut -d' ' -f4"]), format!("{}\n", target.port));
    let mut ch = conn.exec(&ExecRequest::shell("cat")).unwrap();
    ch.write_stdin(&vec![7u8; 2 * 1024 * 1024]).unwrap();
    let out = collect(ch.as_mut(), Some(Duration::from_secs(20))).unwrap();
    assert_eq!(out.stdout.len(), 2 * 1024 * 1024);

    // The jump host's key is checked too.
    std::fs::write(&kh, format!("{target_line}\n")).unwrap();
    let err = SshPlugin::new().open(&spec).err().expect("unknown jump host key");
    assert_eq!(err.kind, ErrorKind::HostKeyUnknown, "{err:?}");
    assert!(err.message.contains(&format!("[127.0.0.1]:{}", jump.port)), "{}", err.message);
}

#[test]
fn ecdsa_and_rsa_sha2_keys() {
    // ssh-rsa (SHA-1) signatures are refused by this server: RSA must use SHA-2.
    let Some(sshd) = support::Sshd::start_with(
        "ecdsa_and_rsa_sha2_keys",
        "PubkeyAcceptedAlgorithms rsa-sha2-512,rsa-sha2-256,ecdsa-sha2-nistp256,ssh-ed25519",
    ) else {
        return;
    };
    for kind in ["ecdsa", "rsa"] {
        let key = sshd.dir.path().join(format!("id_{kind}"));
        support::keygen(&key, kind, "");
        sshd.authorize(&key);
        let mut spec = sshd.spec();
        spec.identity = Some(key.display().to_string());
        let conn = SshPlugin::new().open(&spec).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        assert_eq!(run_stdout(&conn, &["echo", kind]), format!("{kind}\n"));
    }
}

#[test]
fn sudo_prefixes_commands_and_keeps_env_and_cwd() {
    // A stand-in `sudo` first on the session's PATH records how it is called
    // (the real one need not be installed, and root needs no password).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("sudo.log");
    let fake = bin.join("sudo");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nprintf '%s\\n' \"$*\" > {}\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let Some(sshd) = support::Sshd::start_with(
        "sudo_prefixes_commands_and_keeps_env_and_cwd",
        &format!("SetEnv PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
    ) else {
        return;
    };
    let mut spec = sshd.spec();
    spec.sudo = true;
    let conn = SshPlugin::new().open(&spec).unwrap();
    let req = ExecRequest::shell("echo \"$WHO\"; pwd").env("WHO", "admin").cwd("/tmp");
    let mut ch = conn.exec(&req).unwrap();
    let out = collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap();
    assert_eq!((out.status, out.stdout.as_str()), (0, "admin\n/tmp\n"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "-n env WHO=admin sh -c echo \"$WHO\"; pwd\n");
}

#[test]
fn proxy_command_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::write(&cfg, "Host viaproxy\n  HostName 127.0.0.1\n  ProxyCommand nc %h %p\n").unwrap();
    let mut spec = ConnectSpec { target: "viaproxy".into(), connect_timeout_secs: 2, ..Default::default() };
    spec.options.insert("ssh_config".into(), cfg.display().to_string());
    let err = SshPlugin::new().open(&spec).err().expect("ProxyCommand refused");
    assert_eq!(err.kind, ErrorKind::InvalidRequest, "{err:?}");
    assert!(err.hint.as_deref().unwrap_or("").contains("ProxyJump"), "{err:?}");
}
