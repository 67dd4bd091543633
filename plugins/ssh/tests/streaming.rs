//! Commands over a real sshd: stdin/stdout/stderr streaming, exit statuses,
//! concurrency, keepalive during a silent command.

mod support;

use std::time::{Duration, Instant};

use cultivate_plugin_api::{collect, Channel, ChannelEvent, Connection, ExecRequest};
use cultivate_plugin_ssh::{SshConnection, SshPlugin};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

/// Drains a channel (stdin already closed or not needed).
///
/// stderr is checked by its end only: sshd runs commands through the user's
/// login shell, and this machine's root shell start-up may print warnings.
fn drain(ch: &mut dyn Channel, limit: Duration) -> (Vec<u8>, Vec<u8>, i32) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < limit, "command did not finish within {limit:?}");
        match ch.next_event(Duration::from_millis(200)).expect("next_event") {
            ChannelEvent::Stdout(b) => out.extend_from_slice(&b),
            ChannelEvent::Stderr(b) => err.extend_from_slice(&b),
            ChannelEvent::Exit(s) => return (out, err, s),
            ChannelEvent::Idle => {}
        }
    }
}

/// A fresh sshd and a connection to it.
fn setup(name: &str) -> Option<(support::Sshd, SshConnection)> {
    let sshd = support::Sshd::start(name)?;
    let conn = SshPlugin::new().open(&sshd.spec()).expect("connect");
    Some((sshd, conn))
}

#[test]
fn stdout_stderr_and_exit_status_are_separate() {
    let Some((_sshd, conn)) = setup("stdout_stderr_and_exit_status_are_separate") else { return };
    let mut ch = conn.exec(&ExecRequest::shell("echo out; echo err >&2; exit 3")).unwrap();
    ch.close_stdin().unwrap();
    let (out, err, status) = drain(ch.as_mut(), Duration::from_secs(10));
    assert_eq!((out.as_slice(), status), (&b"out\n"[..], 3));
    assert!(err.ends_with(b"err\n"), "{}", String::from_utf8_lossy(&err));
}

#[test]
fn exit_by_signal_is_128_plus_n() {
    let Some((_sshd, conn)) = setup("exit_by_signal_is_128_plus_n") else { return };
    let mut ch = conn.exec(&ExecRequest::shell("kill -TERM $$")).unwrap();
    assert_eq!(collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap().status, 128 + 15);
    let mut ch = conn.exec(&ExecRequest::shell("kill -USR2 $$")).unwrap();
    assert_eq!(collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap().status, 128 + 12);
}

#[test]
fn exit_status_arriving_after_eof_is_kept() {
    let Some((_sshd, conn)) = setup("exit_status_arriving_after_eof_is_kept") else { return };
    // stdout and stderr close (EOF) a while before the process exits.
    let mut ch = conn.exec(&ExecRequest::shell("echo early; exec >&- 2>&-; sleep 1; exit 7")).unwrap();
    ch.close_stdin().unwrap();
    let (out, _, status) = drain(ch.as_mut(), Duration::from_secs(10));
    assert_eq!((out.as_slice(), status), (&b"early\n"[..], 7));
}

#[test]
fn request_stdin_env_and_cwd() {
    let Some((_sshd, conn)) = setup("request_stdin_env_and_cwd") else { return };
    let req = ExecRequest::shell("pwd; echo \"$GREETING\"; cat")
        .cwd("/tmp")
        .env("GREETING", "hello 'world' $HOME")
        .stdin("from stdin\n");
    let mut ch = conn.exec(&req).unwrap();
    let out = collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap();
    assert_eq!(out.stdout, "/tmp\nhello 'world' $HOME\nfrom stdin\n");
}

#[test]
fn next_event_is_idle_after_wait() {
    let Some((_sshd, conn)) = setup("next_event_is_idle_after_wait") else { return };
    let mut ch = conn.exec(&ExecRequest::new(["sleep", "1"])).unwrap();
    let start = Instant::now();
    assert_eq!(ch.next_event(Duration::from_millis(300)).unwrap(), ChannelEvent::Idle);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(900), "{took:?}");
    assert_eq!(collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap().status, 0);
}

#[test]
fn concurrent_channels_on_one_connection() {
    let Some((_sshd, conn)) = setup("concurrent_channels_on_one_connection") else { return };
    // Two commands at once; the second finishes while the first is still fed.
    let mut a = conn.exec(&ExecRequest::shell("cat")).unwrap();
    let mut b = conn.exec(&ExecRequest::shell("echo b")).unwrap();
    a.write_stdin(b"first ").unwrap();
    let out_b = collect(b.as_mut(), Some(Duration::from_secs(10))).unwrap();
    assert_eq!(out_b.stdout, "b\n");
    a.write_stdin(b"second").unwrap();
    let out_a = collect(a.as_mut(), Some(Duration::from_secs(10))).unwrap();
    assert_eq!(out_a.stdout, "first second");
    // And from several threads.
    let conn = &conn;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                scope.spawn(move || {
                    let mut ch = conn.exec(&ExecRequest::shell(format!("sleep 0.2; echo {i}"))).unwrap();
                    collect(ch.as_mut(), Some(Duration::from_secs(20))).unwrap().stdout
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), format!("{i}\n"));
        }
    });
}

#[test]
fn large_stdin_with_backpressure_and_unread_output() {
    let Some((_sshd, conn)) = setup("large_stdin_with_backpressure_and_unread_output") else { return };
    // 24 MiB through cat while output is only read at the end: the plugin
    // buffers output per channel, so the writer never deadlocks on it.
    let mut ch = conn.exec(&ExecRequest::shell("cat")).unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..24 {
        ch.write_stdin(&chunk).unwrap();
    }
    ch.close_stdin().unwrap();
    let (out, _err, status) = drain(ch.as_mut(), Duration::from_secs(60));
    assert_eq!((out.len(), status), (24 * chunk.len(), 0));
    assert!(out.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
}

#[test]
fn writes_after_the_command_exited_are_dropped_and_status_kept() {
    let Some((_sshd, conn)) = setup("writes_after_the_command_exited_are_dropped_and_status_kept") else { return };
    let mut ch = conn.exec(&ExecRequest::shell("exit 4")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..16 {
        ch.write_stdin(&[1u8; 256 * 1024]).unwrap();
    }
    assert_eq!(collect(ch.as_mut(), Some(Duration::from_secs(10))).unwrap().status, 4);
}

#[test]
fn silent_command_longer_than_keepalive_completes() {
    let Some(sshd) = support::Sshd::start("silent_command_longer_than_keepalive_completes") else { return };
    let mut spec = sshd.spec();
    spec.keepalive_secs = 1;
    let conn = SshPlugin::new().open(&spec).unwrap();
    let mut ch = conn.exec(&ExecRequest::shell("sleep 4; echo done")).unwrap();
    let out = collect(ch.as_mut(), Some(Duration::from_secs(20))).unwrap();
    assert_eq!((out.status, out.stdout.as_str()), (0, "done\n"));
}

/// Random payloads cut at random boundaries come back byte-exact through
/// `cat`, stderr stays separate, and exit codes survive. One sshd and one
/// connection serve all 100 cases; four runners of 25 cases share it, as
/// concurrent channels (each case's latency is mostly sshd starting a session).
#[test]
fn payloads_round_trip_through_cat() {
    let Some(sshd) = support::Sshd::start("payloads_round_trip_through_cat") else { return };
    let conn = SshPlugin::new().open(&sshd.spec()).expect("connect");
    let conn = &conn;
    std::thread::scope(|scope| {
        let runners: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(move || {
                    let strategy =
                        (0usize..256 * 1024, any::<u64>(), proptest::collection::vec(any::<usize>(), 0..8), 0i32..256);
                    let mut runner = TestRunner::new(ProptestConfig { cases: 25, ..ProptestConfig::default() });
                    runner
                        .run(&strategy, |(len, seed, cuts, code)| round_trip(conn, len, seed, &cuts, code))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for r in runners {
            r.join().unwrap().unwrap();
        }
    });
}

fn round_trip(conn: &SshConnection, len: usize, seed: u64, cuts: &[usize], code: i32) -> Result<(), TestCaseError> {
    let payload = bytes(len, seed);
    let script = format!("cat; echo to-stderr >&2; exit {code}");
    let mut ch = conn.exec(&ExecRequest::shell(script)).unwrap();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (payload.len() + 1)).collect();
    bounds.push(0);
    bounds.push(payload.len());
    bounds.sort_unstable();
    for w in bounds.windows(2) {
        ch.write_stdin(&payload[w[0]..w[1]]).unwrap();
    }
    ch.close_stdin().unwrap();
    let (out, err, status) = drain(ch.as_mut(), Duration::from_secs(30));
    prop_assert!(out == payload, "stdout differs: {} bytes back for {}", out.len(), payload.len());
    prop_assert!(err.ends_with(b"to-stderr\n"), "stderr: {}", String::from_utf8_lossy(&err));
    prop_assert_eq!(status, code);
    Ok(())
}

/// `len` pseudo-random bytes from `seed` (xorshift; cheap even unoptimised).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn write_stdin_blocks_while_the_command_does_not_read() {
    let Some((_sshd, conn)) = setup("write_stdin_blocks_while_the_command_does_not_read") else { return };
    // The command reads nothing for 2 s: 16 MiB cannot fit in the SSH window
    // and pipe buffers, so the writes must wait (no unbounded buffering here).
    let mut ch = conn.exec(&ExecRequest::shell("sleep 2; cat > /dev/null; echo done")).unwrap();
    let chunk = vec![1u8; 1024 * 1024];
    let start = Instant::now();
    for _ in 0..16 {
        ch.write_stdin(&chunk).unwrap();
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1500), "16 MiB accepted in {took:?} while nothing read it");
    let out = collect(ch.as_mut(), Some(Duration::from_secs(20))).unwrap();
    assert_eq!((out.status, out.stdout.as_str()), (0, "done\n"));
}

#[test]
fn a_tty_request_runs_the_command_on_a_terminal_of_that_size() {
    let Some((_sshd, conn)) = setup("a_tty_request_runs_the_command_on_a_terminal_of_that_size") else { return };
    assert_eq!(conn.info().details.get(cultivate_plugin_api::PTY_DETAIL).map(String::as_str), Some("yes"));
    let mut req = ExecRequest::shell("test -t 0 && test -t 1 && stty size && echo TERM=$TERM");
    req.tty = Some(cultivate_plugin_api::TtySize { term: "xterm-256color".into(), cols: 123, rows: 45 });
    let mut ch = conn.exec(&req).unwrap();
    let (out, _, status) = drain(ch.as_mut(), Duration::from_secs(10));
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("45 123") && out.contains("TERM=xterm-256color"), "{out}");
    // Input typed on the terminal reaches the command, Ctrl-C as a signal.
    // Typed at the prompt, as a person would: input that arrives before the
    // remote side has set up its terminal may be flushed.
    // The trap is set before `armed` is printed, so Ctrl-C typed after it
    // must end the command with 42, by way of the terminal's SIGINT.
    let mut req = ExecRequest::shell(
        "echo prompt:; read line; echo got:$line; trap 'exit 42' INT; echo armed; while :; do sleep 0.1; done",
    );
    req.tty = Some(cultivate_plugin_api::TtySize { term: "xterm".into(), cols: 80, rows: 24 });
    let mut ch = conn.exec(&req).unwrap();
    let mut out = Vec::new();
    let mut wait_for = |ch: &mut dyn Channel, what: &str| {
        let start = Instant::now();
        while !String::from_utf8_lossy(&out).contains(what) {
            assert!(start.elapsed() < Duration::from_secs(10), "no {what}: {}", String::from_utf8_lossy(&out));
            if let ChannelEvent::Stdout(b) = ch.next_event(Duration::from_millis(200)).unwrap() {
                out.extend_from_slice(&b);
            }
        }
    };
    wait_for(ch.as_mut(), "prompt:");
    ch.write_stdin(b"hello\r").unwrap();
    wait_for(ch.as_mut(), "got:hello");
    wait_for(ch.as_mut(), "armed");
    ch.write_stdin(b"\x03").unwrap();
    let (_, _, status) = drain(ch.as_mut(), Duration::from_secs(10));
    assert_eq!(status, 42, "Ctrl-C on the terminal is SIGINT");
    // Without the request: no terminal.
    let mut ch = conn.exec(&ExecRequest::shell("test -t 0")).unwrap();
    ch.close_stdin().unwrap();
    assert_eq!(drain(ch.as_mut(), Duration::from_secs(10)).2, 1);
}
