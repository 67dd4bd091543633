//! P17 SSH error messages: each class of failure is produced for real against
//! a real sshd (or a real socket) and its kind, message and hint asserted.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use cultivate_plugin_api::{collect, ChannelEvent, ErrorKind, ExecRequest, PluginError};
use cultivate_plugin_ssh::SshPlugin;

fn connect_err(spec: &cultivate_plugin_api::ConnectSpec) -> PluginError {
    match SshPlugin::new().open(spec) {
        Ok(_) => panic!("connect to {} succeeded", spec.target),
        Err(e) => e,
    }
}

#[test]
fn p17_ssh_error_messages_wrong_key() {
    let sshd = sshd_or_skip!("p17_ssh_error_messages_wrong_key");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("other_key");
    support::keygen(&wrong, "ed25519", "");
    let mut spec = sshd.spec();
    spec.identity = Some(wrong.display().to_string());
    let err = connect_err(&spec);
    assert_eq!(err.kind, ErrorKind::AuthFailed, "{err:?}");
    assert!(err.message.contains("authentication as root@127.0.0.1"), "{}", err.message);
    assert!(err.message.contains(&format!("key {} (ssh-ed25519 SHA256:", wrong.display())), "{}", err.message);
    assert!(err.message.contains("rejected"), "{}", err.message);
    assert!(err.hint.as_deref().unwrap_or("").contains("--identity"), "{err:?}");

    // A missing key file is named too.
    spec.identity = Some(dir.path().join("missing").display().to_string());
    let err = connect_err(&spec);
    assert_eq!(err.kind, ErrorKind::AuthFailed, "{err:?}");
    assert!(err.message.contains("missing: cannot read"), "{}", err.message);
}

#[test]
fn p17_ssh_error_messages_unknown_then_accepted_host_key() {
    let sshd = sshd_or_skip!("p17_ssh_error_messages_unknown_then_accepted_host_key");
    let kh = sshd.dir.path().join("fresh_known_hosts");
    let mut spec = sshd.spec();
    spec.known_hosts = Some(kh.display().to_string());
    let err = connect_err(&spec);
    assert_eq!(err.kind, ErrorKind::HostKeyUnknown, "{err:?}");
    let fp = sshd.host_fingerprint();
    assert!(err.message.contains(&format!("[127.0.0.1]:{}", sshd.port)), "{}", err.message);
    assert!(err.message.contains("ssh-ed25519"), "{}", err.message);
    assert!(err.message.contains(&fp), "{} lacks {fp}", err.message);
    assert!(err.hint.as_deref().unwrap_or("").contains("--accept-new-host-key"), "{err:?}");
    assert!(!kh.exists(), "refusing must not write known_hosts");

    spec.accept_new_host_key = true;
    let conn = SshPlugin::new().open(&spec).expect("accept new host key");
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(recorded.trim(), sshd.known_hosts_line());
    drop(conn);

    // Now strictly known.
    spec.accept_new_host_key = false;
    let conn = SshPlugin::new().open(&spec).expect("strict connect after recording");
    let mut ch = cultivate_plugin_api::Connection::exec(&conn, &ExecRequest::new(["true"])).unwrap();
    assert_eq!(collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap().status, 0);
}

#[test]
fn p17_ssh_error_messages_changed_host_key() {
    let mut sshd = sshd_or_skip!("p17_ssh_error_messages_changed_host_key");
    // Line 2 holds the entry, after a comment, to check the line number.
    let kh = sshd.known_hosts.clone();
    std::fs::write(&kh, format!("# recorded by the test\n{}\n", sshd.known_hosts_line())).unwrap();
    SshPlugin::new().open(&sshd.spec()).expect("first connect");
    sshd.restart_with_new_host_key();
    let new_fp = sshd.host_fingerprint();
    for accept in [false, true] {
        let mut spec = sshd.spec();
        spec.accept_new_host_key = accept; // a changed key is refused even then
        let err = connect_err(&spec);
        assert_eq!(err.kind, ErrorKind::HostKeyChanged, "{err:?}");
        assert!(err.message.contains(&new_fp), "{} lacks {new_fp}", err.message);
        assert!(err.message.contains(&format!("{} line 2", kh.display())), "{}", err.message);
        assert!(err.hint.as_deref().unwrap_or("").contains("ssh-keygen -R"), "{err:?}");
    }
}

#[test]
fn p17_ssh_error_messages_connection_refused() {
    let port = support::free_port(); // nothing listens there
    let spec = cultivate_plugin_api::ConnectSpec {
        target: format!("ssh://root@127.0.0.1:{port}"),
        connect_timeout_secs: 5,
        ..Default::default()
    };
    let err = connect_err(&spec);
    assert_eq!(err.kind, ErrorKind::ConnectionRefused, "{err:?}");
    assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{}", err.message);
    assert!(err.hint.as_deref().unwrap_or("").contains("sshd"), "{err:?}");
}

#[test]
fn p17_ssh_error_messages_handshake_timeout() {
    // Accepts TCP and never says a word: the SSH handshake cannot complete.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let spec = cultivate_plugin_api::ConnectSpec {
        target: format!("ssh://root@127.0.0.1:{port}"),
        connect_timeout_secs: 2,
        ..Default::default()
    };
    let start = Instant::now();
    let err = connect_err(&spec);
    let took = start.elapsed();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    assert!(err.message.contains("handshake") && err.message.contains("2s"), "{}", err.message);
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "took {took:?}");
    silent.join().unwrap();
}

#[test]
fn p17_ssh_error_messages_unknown_host_name() {
    let spec = cultivate_plugin_api::ConnectSpec {
        target: "ssh://root@no-such-host.invalid".to_string(),
        connect_timeout_secs: 5,
        ..Default::default()
    };
    let err = connect_err(&spec);
    assert_eq!(err.kind, ErrorKind::HostUnreachable, "{err:?}");
    assert!(err.message.contains("no-such-host.invalid"), "{}", err.message);
    assert!(err.message.contains("resolve"), "{}", err.message);
}

#[test]
fn p17_ssh_error_messages_sshd_killed_during_transfer() {
    let mut sshd = sshd_or_skip!("p17_ssh_error_messages_sshd_killed_during_transfer");
    let conn = SshPlugin::new().open(&sshd.spec()).unwrap();
    let mut ch = cultivate_plugin_api::Connection::exec(&conn, &ExecRequest::shell("cat > /dev/null")).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    for _ in 0..8 {
        ch.write_stdin(&chunk).unwrap();
    }
    sshd.kill_all();
    let start = Instant::now();
    let err = loop {
        assert!(start.elapsed() < Duration::from_secs(15), "no error 15s after sshd was killed");
        if let Err(e) = ch.write_stdin(&chunk) {
            break e;
        }
    };
    assert_eq!(err.kind, ErrorKind::ConnectionLost, "{err:?}");
    assert!(err.message.contains(&format!("root@127.0.0.1:{}", sshd.port)), "{}", err.message);
    // Reading fails the same way, and a new command is refused, all without hanging.
    let ev = ch.next_event(Duration::from_secs(5));
    assert!(matches!(&ev, Err(e) if e.kind == ErrorKind::ConnectionLost), "{ev:?}");
    let again = cultivate_plugin_api::Connection::exec(&conn, &ExecRequest::new(["true"]));
    assert!(matches!(&again, Err(e) if e.kind == ErrorKind::ConnectionLost), "{:?}", again.err());
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn p17_ssh_error_messages_silent_peer_noticed_by_keepalive() {
    let sshd = sshd_or_skip!("p17_ssh_error_messages_silent_peer_noticed_by_keepalive");
    let mut spec = sshd.spec();
    spec.keepalive_secs = 1;
    let conn = SshPlugin::new().open(&spec).unwrap();
    let mut ch = cultivate_plugin_api::Connection::exec(&conn, &ExecRequest::new(["sleep", "60"])).unwrap();
    // Freeze the server (no FIN, no RST: like a peer that vanished from the network).
    let pids: Vec<String> = sshd.process_tree().iter().map(u32::to_string).collect();
    support::run(std::process::Command::new("kill").arg("-STOP").args(&pids));
    let start = Instant::now();
    let err = loop {
        assert!(start.elapsed() < Duration::from_secs(20), "dead peer not noticed");
        match ch.next_event(Duration::from_millis(500)) {
            Ok(ChannelEvent::Idle) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    let _ = std::process::Command::new("kill").arg("-CONT").args(&pids).status();
    assert_eq!(err.kind, ErrorKind::ConnectionLost, "{err:?}");
    assert!(start.elapsed() >= Duration::from_secs(2), "noticed too early: {:?}", start.elapsed());
}
