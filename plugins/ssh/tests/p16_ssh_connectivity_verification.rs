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

/// The same verification through the built cdylib, loaded the way the host
/// loads plugins (ABI and API version checked, JSON across the boundary).
#[test]
fn p16_ssh_connectivity_verification_through_the_loaded_library() {
    let sshd = sshd_or_skip!("p16_ssh_connectivity_verification_through_the_loaded_library");
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!("{}cultivate_plugin_ssh{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let path = [deps.join(&file), deps.parent().unwrap().join(&file)].into_iter().find(|p| p.exists());
    let path = path.unwrap_or_else(|| panic!("{file} not built next to {}", deps.display()));
    let plugin = cultivate_plugin_api::LoadedPlugin::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = plugin.manifest();
    assert_eq!((m.name.as_str(), m.priority), ("ssh", 10));
    assert_eq!(m.kinds, vec![cultivate_plugin_api::PluginKind::Transport]);
    assert_eq!(m.schemes, vec!["ssh".to_string()]);

    let host = cultivate_plugin_api::fake::FakeHost::new();
    let conn = plugin.connect(&host.host(), &sshd.spec()).expect("connect through the library");
    let mut ch = conn.exec(&ExecRequest::shell("cat; exit 5").stdin("through ffi")).unwrap();
    let out = collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap();
    assert_eq!((out.status, out.stdout.as_str()), (5, "through ffi"));
    conn.put_file(sshd.dir.path().join("f").to_str().unwrap(), 0o600, b"data").unwrap();
    assert_eq!(std::fs::read(sshd.dir.path().join("f")).unwrap(), b"data");

    // Errors keep their kind across the boundary.
    let mut spec = sshd.spec();
    spec.known_hosts = Some(sshd.dir.path().join("empty_known_hosts").display().to_string());
    let err = plugin.connect(&host.host(), &spec).err().expect("unknown host key");
    assert_eq!(err.kind, ErrorKind::HostKeyUnknown, "{err:?}");
    assert!(err.hint.is_some());
}
