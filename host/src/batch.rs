//! Several commands in one: a shell script that runs the commands at once and
//! prints its stdout, stderr and exit status as length-prefixed frames, so
//! one round trip to the target answers what would otherwise take one each
//! (issue 13: the OS probe, the runtimes' probe commands and the state read
//! of `connect`).
//!
//! The output is a sequence of frames, each a header line then, for `out`
//! and `err`, exactly `LEN` bytes of the command's output:
//!
//! ```text
//! @@cultivate-frame ID out LEN\n<LEN bytes>
//! @@cultivate-frame ID err LEN\n<LEN bytes>
//! @@cultivate-frame ID exit STATUS\n
//! ```
//!
//! A command's output is never scanned for markers: its length says where it
//! ends, so whatever a command prints (markers included, binary, no final
//! newline) cannot be taken for framing. A command writes into a private
//! temporary directory, which is removed when the script ends.

use std::collections::BTreeMap;

use cultivate_plugin_api::shell::{join, quote};
use cultivate_plugin_api::{ExecOutput, ExecRequest};

/// The header of every frame.
pub const FRAME_MARK: &str = "@@cultivate-frame ";

/// One command of a batch: its id (a word of `[A-Za-z0-9_-]`) and its shell text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Names the command's frames.
    pub id: String,
    /// A shell command line (run in a subshell, stdin from /dev/null).
    pub shell: String,
    /// Run it only on these operating systems (`uname -s` lowercased:
    /// `linux`, `darwin`); on any when empty. Elsewhere it does not run and
    /// has no frames: a runtime's probe of a target it is not for never
    /// reaches that target (no `docker` command on a Mac, requirement 8.10).
    pub os: Vec<String>,
}

/// The line that opens an OS-guarded command in [`script`], up to the OS
/// names; the guard ends with [`OS_GUARD_END`].
pub const OS_GUARD_START: &str = "case \"$cultivate_os\" in ";
/// The end of an OS-guarded command in [`script`].
pub const OS_GUARD_END: &str = ";; esac # cultivate-os-guard";

/// `req` as one shell command line: `cd DIR && K=V … ARGV…`. Its `stdin`,
/// `tty` and `timeout_secs` are not carried (batched commands have none).
pub fn shell_line(req: &ExecRequest) -> String {
    let mut line = String::new();
    if let Some(dir) = &req.cwd {
        line.push_str(&format!("cd {} && ", quote(dir)));
    }
    for (k, v) in &req.env {
        line.push_str(&format!("{k}={} ", quote(v)));
    }
    line.push_str(&join(&req.argv));
    line
}

/// True for ids the framing can carry.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The script that runs `commands`, all at once (each in its own
/// subshell, in the background), then prints their frames in their order.
/// `prelude` runs first, outside any frame (setting variables the commands
/// use); it must print nothing. Exits 0 once every command ended; exits 1,
/// printing nothing, when it cannot make its temporary directory. The
/// commands must not depend on each other: they run concurrently (a batch
/// is for reads: probes, versions, state).
pub fn script(prelude: &str, commands: &[Command]) -> String {
    let mut s = String::from(
        "d=$(mktemp -d 2>/dev/null) || { d=${TMPDIR:-/tmp}/cultivate-batch.$$; mkdir -m 700 \"$d\"; } || exit 1\n\
         trap 'rm -rf \"$d\"' EXIT\n\
         trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM\n\
         cultivate_os=$(uname -s 2>/dev/null | tr '[:upper:]' '[:lower:]')\n\
         f() { [ -f \"$d/$1.rc\" ] || return 0; rc=$(cat \"$d/$1.rc\" 2>/dev/null) || rc=; for k in out err; do n=0; \
         [ -f \"$d/$1.$k\" ] && n=$(($(wc -c <\"$d/$1.$k\"))); printf '",
    );
    s.push_str(FRAME_MARK);
    s.push_str("%s %s %s\\n' \"$1\" \"$k\" \"$n\"; [ \"$n\" = 0 ] || cat \"$d/$1.$k\"; done; ");
    // No status (the command was killed with the shell): no exit frame, so no answer.
    s.push_str("[ -n \"$rc\" ] && printf '");
    s.push_str(FRAME_MARK);
    s.push_str("%s exit %s\\n' \"$1\" \"$rc\"; return 0; }\n");
    if !prelude.trim().is_empty() {
        s.push_str(prelude.trim_end());
        s.push('\n');
    }
    for c in commands {
        assert!(valid_id(&c.id), "batch command id `{}`", c.id);
        let run = format!(
            "{{ ( {}\n) >\"$d/{id}.out\" 2>\"$d/{id}.err\" </dev/null; echo $? >\"$d/{id}.rc\"; }} &",
            c.shell,
            id = c.id
        );
        if c.os.is_empty() {
            s.push_str(&run);
            s.push('\n');
        } else {
            let names: Vec<String> = c.os.iter().map(|o| quote(&o.to_ascii_lowercase())).collect();
            s.push_str(&format!("{OS_GUARD_START}{}) {run} {OS_GUARD_END}\n", names.join("|")));
        }
    }
    s.push_str("wait\n");
    for c in commands {
        s.push_str(&format!("f {}\n", c.id));
    }
    s.push_str("exit 0\n");
    s
}

/// Why a batch's output could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the batched commands' output is not in frames at byte {offset}: {why}")]
pub struct FrameError {
    /// Where reading stopped.
    pub offset: usize,
    /// What was wrong there.
    pub why: String,
}

/// Parses [`script`]'s output: each command's output, by id, for the
/// commands whose three frames all arrived. Frames complete before an error
/// are returned with it (the output of a batch cut short).
pub fn parse(out: &[u8]) -> (BTreeMap<String, ExecOutput>, Option<FrameError>) {
    #[derive(Default)]
    struct Partial {
        out: Option<Vec<u8>>,
        err: Option<Vec<u8>>,
    }
    let mut done = BTreeMap::new();
    let mut partial: BTreeMap<String, Partial> = BTreeMap::new();
    let mut pos = 0;
    let fail = |offset: usize, why: String| Some(FrameError { offset, why });
    while pos < out.len() {
        let Some(nl) = out[pos..].iter().position(|&b| b == b'\n') else {
            return (done, fail(pos, "a header without its end of line".into()));
        };
        let header = String::from_utf8_lossy(&out[pos..pos + nl]).into_owned();
        let Some(rest) = header.strip_prefix(FRAME_MARK) else {
            return (done, fail(pos, format!("`{}` is no frame header", header.chars().take(60).collect::<String>())));
        };
        let words: Vec<&str> = rest.split(' ').collect();
        let [id, kind, value] = words[..] else {
            return (done, fail(pos, format!("header `{header}` has not three words")));
        };
        if !valid_id(id) {
            return (done, fail(pos, format!("header `{header}` names no command")));
        }
        pos += nl + 1;
        match kind {
            "out" | "err" => {
                let Ok(len) = value.parse::<usize>() else {
                    return (done, fail(pos, format!("length `{value}` is not a number")));
                };
                if out.len() - pos < len {
                    return (done, fail(pos, format!("{len} bytes announced, {} left", out.len() - pos)));
                }
                let bytes = out[pos..pos + len].to_vec();
                pos += len;
                let p = partial.entry(id.to_string()).or_default();
                if kind == "out" {
                    p.out = Some(bytes);
                } else {
                    p.err = Some(bytes);
                }
            }
            "exit" => {
                let Ok(status) = value.parse::<i32>() else {
                    return (done, fail(pos, format!("exit status `{value}` is not a number")));
                };
                let Some(Partial { out: Some(o), err: Some(e) }) = partial.remove(id) else {
                    return (done, fail(pos, format!("exit of `{id}` before its output")));
                };
                done.insert(
                    id.to_string(),
                    ExecOutput {
                        status,
                        stdout: String::from_utf8_lossy(&o).into_owned(),
                        stderr: String::from_utf8_lossy(&e).into_owned(),
                    },
                );
            }
            other => return (done, fail(pos, format!("frame kind `{other}`"))),
        }
    }
    (done, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(id: &str, out: &[u8], err: &[u8], status: i32) -> Vec<u8> {
        let mut v = format!("{FRAME_MARK}{id} out {}\n", out.len()).into_bytes();
        v.extend_from_slice(out);
        v.extend_from_slice(format!("{FRAME_MARK}{id} err {}\n", err.len()).as_bytes());
        v.extend_from_slice(err);
        v.extend_from_slice(format!("{FRAME_MARK}{id} exit {status}\n").as_bytes());
        v
    }

    #[test]
    fn frames_carry_output_that_looks_like_frames() {
        let tricky = format!("{FRAME_MARK}1 exit 0\n{FRAME_MARK}x out 99999\nno newline");
        let mut out = frames("0", tricky.as_bytes(), b"", 3);
        out.extend(frames("1", b"", tricky.as_bytes(), 0));
        let (got, err) = parse(&out);
        assert_eq!(err, None);
        assert_eq!(got["0"], ExecOutput { status: 3, stdout: tricky.clone(), stderr: String::new() });
        assert_eq!(got["1"], ExecOutput { status: 0, stdout: String::new(), stderr: tricky });
    }

    #[test]
    fn cut_or_foreign_output_is_an_error_that_keeps_what_came_whole() {
        let mut out = frames("a", b"one\n", b"", 0);
        let whole = out.len();
        out.extend(frames("b", b"two\n", b"", 0));
        for cut in [whole + 5, out.len() - 3] {
            let (got, err) = parse(&out[..cut]);
            assert_eq!(got.keys().collect::<Vec<_>>(), ["a"], "cut at {cut}");
            assert!(err.is_some(), "cut at {cut}");
        }
        let (got, err) = parse(b"Welcome to the server\n");
        assert!(got.is_empty());
        assert!(err.unwrap().why.contains("no frame header"));
        let (_, err) = parse(format!("{FRAME_MARK}a exit 0\n").as_bytes());
        assert!(err.unwrap().why.contains("before its output"));
        let (_, err) = parse(format!("{FRAME_MARK}a out -1\n").as_bytes());
        assert!(err.is_some());
    }

    #[test]
    fn shell_lines_quote_every_part() {
        let req = ExecRequest::new(["docker", "version", "--format", "{{json .}}"]).cwd("/a b").env("K", "v w");
        assert_eq!(shell_line(&req), "cd '/a b' && K='v w' docker version --format '{{json .}}'");
    }

    /// The script, run by a real shell, frames what each command printed,
    /// whatever it printed, with its exit status.
    #[test]
    fn a_real_shell_runs_the_script_and_its_output_parses() {
        let nasty = format!("{FRAME_MARK}zz out 3\n\u{1}é  trailing spaces  ");
        let commands = vec![
            Command {
                id: "0".into(),
                // A NUL cannot be in an argument: the command prints one.
                shell: format!("{}; printf '\\000'", shell_line(&ExecRequest::new(["printf", "%s", nasty.as_str()]))),
                os: vec![],
            },
            Command { id: "1".into(), shell: "echo to-err >&2; exit 7".into(), os: vec![] },
            Command { id: "missing".into(), shell: "no-such-program-cultivate-test".into(), os: vec![] },
            Command { id: "var".into(), shell: "printf '%s' \"$v\"; cat".into(), os: vec![] },
        ];
        for shell in ["sh", "bash", "dash"] {
            let out =
                match std::process::Command::new(shell).arg("-c").arg(script("v=from-prelude", &commands)).output() {
                    Ok(out) => out,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && shell != "sh" => continue,
                    Err(e) => panic!("{shell}: {e}"),
                };
            assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
            let (got, err) = parse(&out.stdout);
            assert_eq!(err, None, "{shell}: {}", String::from_utf8_lossy(&out.stdout));
            assert_eq!(got["0"], ExecOutput { status: 0, stdout: format!("{nasty}\0"), stderr: String::new() });
            assert_eq!(got["1"], ExecOutput { status: 7, stdout: String::new(), stderr: "to-err\n".into() });
            assert_eq!(got["missing"].status, 127);
            assert_eq!(got["var"].stdout, "from-prelude", "stdin is empty, variables of the prelude are seen");
            assert_eq!(got.keys().collect::<Vec<_>>(), ["0", "1", "missing", "var"]);
        }
    }

    /// A command guarded by OS runs only there: with `uname -s` saying
    /// Darwin, a Linux-only command does not run at all (it would have
    /// left its mark) and has no frames; with Linux it runs.
    #[test]
    fn os_guarded_commands_run_only_on_their_os() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ran");
        let commands = vec![
            Command { id: "any".into(), shell: "echo any".into(), os: vec![] },
            Command {
                id: "lin".into(),
                shell: format!("touch {}; echo linux", quote(mark.to_str().unwrap())),
                os: vec!["linux".into()],
            },
            Command { id: "mac".into(), shell: "echo mac".into(), os: vec!["darwin".into()] },
        ];
        for (uname, ran) in [("Darwin", false), ("Linux", true)] {
            let bin = dir.path().join(format!("bin-{uname}"));
            std::fs::create_dir_all(&bin).unwrap();
            let fake = bin.join("uname");
            std::fs::write(&fake, format!("#!/bin/sh\necho {uname}\n")).unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script("", &commands))
                .env("PATH", path)
                .output()
                .unwrap();
            let (got, err) = parse(&out.stdout);
            assert_eq!(err, None, "{uname}: {}", String::from_utf8_lossy(&out.stdout));
            assert_eq!(got["any"].stdout, "any\n");
            assert_eq!(got.contains_key("lin"), ran, "{uname}");
            assert_eq!(got.contains_key("mac"), !ran, "{uname}");
            assert_eq!(mark.exists(), ran, "{uname}: the Linux-only command ran");
        }
    }

    proptest! {
        /// Any outputs, framed, come back exactly.
        #[test]
        fn frames_round_trip(cmds in proptest::collection::vec(
            ("[a-z0-9_-]{1,8}", proptest::collection::vec(any::<u8>(), 0..200),
             proptest::collection::vec(any::<u8>(), 0..50), -1i32..300),
            0..6,
        )) {
            let mut out = Vec::new();
            let mut want = BTreeMap::new();
            for (id, o, e, s) in &cmds {
                out.extend(frames(id, o, e, *s));
                want.insert(id.clone(), ExecOutput {
                    status: *s,
                    stdout: String::from_utf8_lossy(o).into_owned(),
                    stderr: String::from_utf8_lossy(e).into_owned(),
                });
            }
            let (got, err) = parse(&out);
            prop_assert_eq!(err, None);
            prop_assert_eq!(got, want);
        }

        /// Whatever arrives, parsing never panics, and a prefix of good output
        /// gives a subset of its commands.
        #[test]
        fn parsing_never_panics(junk in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..400) {
            let _ = parse(&junk);
            let good = [frames("a", &junk, b"x", 1), frames("b", b"", &junk, 0)].concat();
            let (got, _) = parse(&good[..cut.min(good.len())]);
            prop_assert!(got.keys().all(|k| k == "a" || k == "b"));
        }
    }
}
