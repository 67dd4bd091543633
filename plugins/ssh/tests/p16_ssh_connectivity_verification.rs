//! P16 SSH connectivity verification: a connection is verified (handshake,
//! host key, authentication, a harmless command) before anything is changed,
//! and a wrong key fails at connect time, before any command runs.

mod support;

use std::time::Duration;

use cultivate_plugin_api::{collect, ErrorKind, ExecRequest, Plugin};
use cultivate_plugin_ssh::SshPlugin;

#[test]
fn p16_ssh_connectivity_verification() {
    let sshd = sshd_or_skip!("p16_ssh_connectivity_verification");
    let plugin = SshPlugin::new();

    // Through the Plugin trait, as the host does.
    let host = cultivate_plugin_api::fake::FakeHost::new();
    let conn = plugin.connect(&host.host(), &sshd.spec()).expect("connect");
    let info = conn.info();
    assert_eq!(info.peer, format!("root@127.0.0.1:{}", sshd.port));
    assert_eq!(info.details.get("host_key_fingerprint"), Some(&sshd.host_fingerprint()));
    let mut ch = conn.exec(&ExecRequest::new(["true"])).expect("exec true");
    let out = collect(ch.as_mut(), Some(Duration::from_secs(10))).expect("collect");
    assert_eq!(out.status, 0);
    conn.close();

    // A key the server does not know: refused at connect, no command ever runs.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    support::keygen(&wrong, "ed25519", "");
    let mut spec = sshd.spec();
    spec.identity = Some(wrong.display().to_string());
    let marker = sshd.dir.path().join("ran");
    let err = match plugin.connect(&host.host(), &spec) {
        Ok(c) => {
            let _ = c.exec(&ExecRequest::new(["touch", marker.to_str().unwrap()]));
            panic!("connect with a wrong key succeeded");
        }
        Err(e) => e,
    };
    assert_eq!(err.kind, ErrorKind::AuthFailed, "{err:?}");
    assert!(err.message.contains(&wrong.display().to_string()), "{}", err.message);
    assert!(!marker.exists());
}
