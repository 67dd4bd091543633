//! `put_file` over a real sshd (on this machine, so the result is checked on
//! the local file system): byte-exact with its mode, atomic when cut.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cultivate_plugin_api::{Connection, ErrorKind};
use cultivate_plugin_ssh::SshPlugin;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
}

#[test]
fn put_file_is_byte_exact_with_its_mode() {
    let Some(sshd) = support::Sshd::start("put_file_is_byte_exact_with_its_mode") else { return };
    let conn = SshPlugin::new().open(&sshd.spec()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, len, mode) in [("empty", 0usize, 0o600u32), ("small", 17, 0o644), ("big", 3 * 1024 * 1024 + 5, 0o750)] {
        let path = dir.path().join(format!("{name} file"));
        let data = pattern(len);
        conn.put_file(path.to_str().unwrap(), mode, &data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data, "{name}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, mode, "{name}");
    }
    // Overwriting replaces the content and the mode.
    let path = dir.path().join("small file");
    conn.put_file(path.to_str().unwrap(), 0o640, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("cultivate-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A directory that does not exist is an error naming the path.
    let err = conn.put_file("/nonexistent-dir/x", 0o644, b"x").unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommandFailed, "{err:?}");
    assert!(err.message.contains("/nonexistent-dir/x"), "{}", err.message);
}

#[test]
fn cut_connection_never_leaves_a_half_written_file() {
    let Some(mut sshd) = support::Sshd::start("cut_connection_never_leaves_a_half_written_file") else { return };
    let conn = SshPlugin::new().open(&sshd.spec()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, b"old content").unwrap();
    let data = pattern(1024 * 1024).repeat(128);
    let start = Instant::now();
    let result = std::thread::scope(|scope| {
        let upload = scope.spawn(|| conn.put_file(path.to_str().unwrap(), 0o644, &data));
        // Cut while the bytes are flowing.
        let tmp_seen = Instant::now();
        loop {
            let growing = std::fs::read_dir(dir.path()).unwrap().flatten().any(|e| {
                e.file_name().to_string_lossy().contains("cultivate-tmp")
                    && e.metadata().map(|m| m.len() > 1024 * 1024).unwrap_or(false)
            });
            if growing || tmp_seen.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sshd.kill_sshd_only();
        upload.join().unwrap()
    });
    let err = result.expect_err("upload survived a cut connection");
    assert_eq!(err.kind, ErrorKind::ConnectionLost, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(std::fs::read(&path).unwrap(), b"old content");
    // The remote script saw a short file and removed it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("cultivate-tmp"))
            .count();
        if leftovers == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "temporary file left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old content");
}
