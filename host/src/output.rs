//! Human output on stderr through one printer; data on stdout only with `--json`.

use std::io::{IsTerminal, Write};

use crate::cli::{ColorChoice, GlobalArgs};
use crate::redact;

/// The printer.
#[derive(Debug, Clone)]
pub struct Printer {
    quiet: bool,
    json: bool,
    color: bool,
    color_choice: ColorChoice,
    verbose: u8,
}

impl Printer {
    /// From the global flags and the environment.
    pub fn new(args: &GlobalArgs) -> Self {
        let color = match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
            }
        };
        Printer { quiet: args.quiet, json: args.json, color, color_choice: args.color, verbose: args.verbose }
    }

    /// True when progress bars may be drawn: a terminal, not quiet, not verbose, not JSON.
    pub fn bars(&self) -> bool {
        std::io::stderr().is_terminal() && !self.quiet && self.verbose == 0 && !self.json
    }

    /// True when data written to stdout may be coloured (`--color`, NO_COLOR,
    /// stdout a terminal), never with `--json`.
    pub fn color_stdout(&self) -> bool {
        !self.json
            && match self.color_choice {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => {
                    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
                }
            }
    }

    /// The same printer, quiet unless `-v` was given: for commands whose
    /// own output must not mix with cultivate's progress lines (`exec`).
    pub fn quiet_copy(&self) -> Printer {
        let mut p = self.clone();
        if p.verbose == 0 {
            p.quiet = true;
        }
        p
    }

    /// Only errors are shown.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// JSON output requested.
    pub fn json(&self) -> bool {
        self.json
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A stage heading or status line: `==> text`.
    pub fn status(&self, text: &str) {
        if !self.quiet {
            say(format_args!("{} {}", self.paint("1;34", "==>"), redact::apply(text)));
        }
    }

    /// A detail under a stage: `    text`.
    pub fn detail(&self, text: &str) {
        if !self.quiet {
            say(format_args!("    {}", redact::apply(text)));
        }
    }

    /// Success.
    pub fn success(&self, text: &str) {
        if !self.quiet {
            say(format_args!("{} {}", self.paint("1;32", "ok:"), redact::apply(text)));
        }
    }

    /// A warning.
    pub fn warn(&self, text: &str) {
        say(format_args!("{} {}", self.paint("1;33", "warning:"), redact::apply(text)));
    }

    /// An error with its causes and hint.
    pub fn error(&self, err: &anyhow::Error) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{} {}", self.paint("1;31", "error:"), redact::apply(&err.to_string()));
        let mut last = err.to_string();
        for cause in err.chain().skip(1) {
            let text = cause.to_string();
            if text != last && !last.ends_with(&text) {
                let _ = writeln!(stderr, "  caused by: {}", redact::apply(&text));
            }
            last = text;
        }
        if let Some(hint) = crate::error::hint(err) {
            let _ = writeln!(stderr, "\n{} {}", self.paint("1;36", "hint:"), redact::apply(&hint));
        }
    }

    /// Diagnostics text to stderr as it is (redacted; even with `-q`: a
    /// failure's diagnostics are never hidden).
    pub fn raw_stderr(&self, text: &str) {
        say(format_args!("{}", redact::apply(text)));
    }

    /// Writes data to stdout (a broken pipe is not an error).
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", redact::apply(text));
    }

    /// Writes a JSON value to stdout.
    pub fn json_value(&self, value: &serde_json::Value) {
        self.data(&serde_json::to_string_pretty(value).unwrap_or_default());
    }
}

/// Writes one line to stderr, ignoring errors: a closed stderr (`| head`, a
/// gone terminal) must never stop a deploy half-way (`eprintln!` panics).
fn say(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}
