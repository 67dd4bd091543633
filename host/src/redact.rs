//! Secret redaction for everything cultivate prints or logs.
//!
//! 1. Secret values are registered before the first command runs on a target:
//!    the secrets file, then the `.env` values of the target's releases that
//!    came from secrets ([`crate::secrets`]).
//! 2. Every sink redacts: the printer, the stderr and file layers of tracing
//!    (through [`Redacting`]) and the deploy log written to the target.
//!    A value registered late still hides lines written after it.

use std::io::Write;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not registered: they would mask ordinary text.
pub const MIN_LEN: usize = 4;

/// Registers values that must never be shown. A value spanning several lines
/// is registered line by line too, since sinks redact a line at a time.
pub fn register<I: IntoIterator<Item = String>>(values: I) {
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for v in values {
        let mut parts = vec![v.clone()];
        if v.contains(['\n', '\r']) {
            parts.extend(v.split(['\n', '\r']).map(str::to_string));
        }
        for p in parts {
            if p.len() >= MIN_LEN && !secrets.contains(&p) {
                secrets.push(p);
            }
        }
    }
}

/// True when at least one secret is registered.
pub fn any() -> bool {
    !SECRETS.read().unwrap_or_else(|e| e.into_inner()).is_empty()
}

/// `text` with every registered secret replaced by `***`.
pub fn apply(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    mask(text, &secrets)
}

/// True when `text` holds a registered secret (what [`apply`] would hide).
pub fn reveals(text: &str) -> bool {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    secrets.iter().any(|s| text.contains(s.as_str()))
}

/// `text` with every occurrence of every secret masked. Overlapping or
/// adjacent occurrences are masked as one span, so no part of a secret stays
/// visible next to a mask; repeated until no secret is left (a mask next to
/// the remaining text cannot form a secret again).
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    loop {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            // Overlapping occurrences too: `aaaa` in `aaaaa`.
            let mut from = 0;
            while let Some(i) = out[from..].find(s.as_str()) {
                let start = from + i;
                spans.push((start, start + s.len()));
                from = start + out[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if spans.is_empty() {
            return out;
        }
        spans.sort_unstable();
        let mut masked = String::with_capacity(out.len());
        let mut pos = 0;
        let mut iter = spans.into_iter().peekable();
        while let Some((start, mut end)) = iter.next() {
            while let Some(&(s, e)) = iter.peek() {
                if s > end {
                    break;
                }
                end = end.max(e);
                iter.next();
            }
            masked.push_str(&out[pos..start]);
            masked.push_str(MASK);
            pos = end;
        }
        masked.push_str(&out[pos..]);
        // Each round shortens the text (secrets are longer than the mask), so this ends.
        if masked.len() >= out.len() {
            return masked;
        }
        out = masked;
    }
}

/// A writer that redacts what passes through it, a line at a time, so a
/// secret split across several writes is still caught. A partial line is
/// held until its newline, a flush or the writer's drop.
pub struct Redacting<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> Redacting<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Redacting { inner, pending: Vec::new() }
    }

    fn emit(&mut self, line: &[u8]) -> std::io::Result<()> {
        match std::str::from_utf8(line) {
            Ok(text) => self.inner.write_all(apply(text).as_bytes()),
            Err(_) => self.inner.write_all(apply(&String::from_utf8_lossy(line)).as_bytes()),
        }
    }

    fn flush_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(last + 1);
            let lines = std::mem::replace(&mut self.pending, rest);
            self.emit(&lines)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_pending()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for Redacting<W> {
    fn drop(&mut self) {
        let _ = self.flush_pending();
        let _ = self.inner.flush();
    }
}

/// A tracing `MakeWriter` whose writers redact: wrap stderr and the log file in it.
#[derive(Clone)]
pub struct RedactingMakeWriter<M>(pub M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for RedactingMakeWriter<M>
{
    type Writer = Redacting<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting::new(self.0.make_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn secrets_are_masked_longest_first() {
        register(["hunter2-long".to_string(), "hunter2".to_string(), "ab".to_string()]);
        assert_eq!(apply("pw=hunter2-long and hunter2, ab"), "pw=*** and ***, ab");
    }

    #[test]
    fn overlapping_secrets_leave_no_fragment() {
        let secrets = s(&["abcd", "cdef"]);
        assert_eq!(mask("xabcdefx", &secrets), "x***x");
        assert_eq!(mask("aaaaa", &s(&["aaaa"])), "***");
    }

    #[test]
    fn a_mask_cannot_form_a_secret_again() {
        // Masking `1234` in `a1234` gives `a***`, itself a secret.
        let secrets = s(&["1234", "a***"]);
        assert_eq!(mask("a1234", &secrets), "***");
    }

    #[test]
    fn multi_line_values_are_registered_per_line() {
        register(["first-line-xyz\nsecond-line-xyz".to_string()]);
        assert_eq!(apply("a second-line-xyz b"), "a *** b");
    }

    /// The writer over registered secrets, fed `chunks`.
    fn through_writer(chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        {
            let mut w = Redacting::new(&mut out);
            for c in chunks {
                w.write_all(c).unwrap();
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_secret_split_across_two_writes_is_masked() {
        register(["split-secret-9f8e".to_string()]);
        let out = through_writer(&[b"env APP=split-se", b"cret-9f8e done\nnext line split-", b"secret-9f8e"]);
        assert_eq!(out, "env APP=*** done\nnext line ***");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// No secret survives masking, whatever the text and however secrets overlap.
        #[test]
        fn masked_text_holds_no_secret(
            secrets in proptest::collection::vec("[ab*]{4,8}", 1..4),
            text in "[ab* \n]{0,60}",
        ) {
            let out = mask(&text, &secrets);
            for sec in &secrets {
                prop_assert!(!out.contains(sec.as_str()), "{sec:?} in {out:?} (from {text:?})");
            }
        }

        /// Masking never panics on any text, including multi-byte characters.
        #[test]
        fn masking_never_panics(secrets in proptest::collection::vec("\\PC{1,6}", 0..4), text in "\\PC{0,80}") {
            let _ = mask(&text, &secrets);
        }

        /// However the text is cut into writes, the writer shows no registered secret
        /// and loses nothing that is not a secret.
        #[test]
        fn writer_masks_secrets_split_anywhere(
            before in "[a-z =\n]{0,30}",
            after in "[a-z =\n]{0,30}",
            cuts in proptest::collection::vec(0usize..80, 0..6),
        ) {
            let secret = "Pr0pSecret-77a1";
            register([secret.to_string()]);
            let text = format!("{before}{secret}{after}{secret}");
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&bytes[last..c]);
                last = c;
            }
            chunks.push(&bytes[last..]);
            let out = through_writer(&chunks);
            prop_assert!(!out.contains(secret));
            prop_assert_eq!(out, apply(&text));
        }
    }
}
