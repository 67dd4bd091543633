//! Progress while images build.
//!
//! On a terminal (and not `-q`, `-v` or `--json`: [`crate::output::Printer::bars`])
//! every service has a line at once (indicatif's `MultiProgress`): waiting,
//! then its current step (`step 4/12 RUN npm ci`, or the last line of build
//! output) and the elapsed time, then one summary line per image when done.
//! Anywhere else the renderer writes plain lines only — a "building" line per
//! service as it starts — with no cursor movement and nothing redrawn, so a
//! log file or a pipe reads as before. `-v` keeps the full build output
//! (through tracing, as before).

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where plain lines go (stderr through the printer, or a test's buffer).
pub type LineSink = Box<dyn Fn(&str) + Send + Sync>;

/// The renderer.
pub enum BuildProgress {
    /// A line per service, redrawn in place.
    Bars {
        /// Keeps the bars drawn together.
        multi: MultiProgress,
        /// One bar per service.
        bars: BTreeMap<String, ProgressBar>,
        /// Each service's current step (`step 4/12 RUN npm ci`).
        steps: std::sync::Mutex<BTreeMap<String, String>>,
    },
    /// Plain lines, nothing redrawn.
    Lines(LineSink),
}

/// The message of a bar for a line of build output: `step n/m INSTRUCTION`
/// for Docker's `Step n/m : INSTRUCTION`, else the line; one line, at most
/// `width` characters.
pub fn step_message(line: &str, width: usize) -> String {
    let line = line.trim();
    let text = match line.strip_prefix("Step ").and_then(|rest| rest.split_once(" : ")) {
        Some((n, instruction)) => format!("step {n} {}", instruction.trim()),
        None => line.to_string(),
    };
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().count() <= width {
        text
    } else {
        let mut t: String = text.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

impl BuildProgress {
    /// Bars when `bars` (a terminal, not quiet/verbose/JSON), else plain lines to `sink`.
    pub fn new(bars: bool, services: &[&str], sink: LineSink) -> Self {
        if !bars {
            return BuildProgress::Lines(sink);
        }
        Self::with_target(services, ProgressDrawTarget::stderr())
    }

    /// Bars drawn to `target`.
    pub fn with_target(services: &[&str], target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let width = services.iter().map(|s| s.len()).max().unwrap_or(0);
        let style =
            ProgressStyle::with_template(&format!("    {{spinner}} {{prefix:<{width}}} {{elapsed:>4}} {{wide_msg}}"))
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = services
            .iter()
            .map(|s| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(s.to_string());
                bar.set_message("waiting");
                (s.to_string(), bar)
            })
            .collect();
        BuildProgress::Bars { multi, bars, steps: Default::default() }
    }

    /// True when drawing bars.
    pub fn bars(&self) -> bool {
        matches!(self, BuildProgress::Bars { .. })
    }

    /// A service's build starts.
    pub fn start(&self, service: &str, reference: &str) {
        match self {
            BuildProgress::Bars { bars, .. } => {
                if let Some(bar) = bars.get(service) {
                    bar.reset_elapsed();
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar.set_message(format!("building {reference}"));
                }
            }
            BuildProgress::Lines(sink) => sink(&format!("{service}: building {reference}")),
        }
    }

    /// A line of a service's build output.
    pub fn line(&self, service: &str, line: &str) {
        if let BuildProgress::Lines(sink) = self {
            // Build output stays in the verbose log; an image not built at all is news.
            if line.starts_with(crate::pipeline::build::REUSED) {
                sink(&format!("{service}: {line}"));
            }
        }
        if let BuildProgress::Bars { bars, steps, .. } = self {
            let Some(bar) = bars.get(service) else { return };
            let line = line.trim();
            // Docker's bookkeeping lines say nothing about progress.
            if line.is_empty() || line.starts_with("--->") || line.starts_with("Removing intermediate") {
                return;
            }
            let mut steps = steps.lock().unwrap_or_else(|p| p.into_inner());
            if line.starts_with("Step ") {
                let step = step_message(line, 60);
                bar.set_message(step.clone());
                steps.insert(service.to_string(), step);
            } else {
                // The step, then the last line of its output.
                match steps.get(service) {
                    Some(step) => bar.set_message(format!("{step} · {}", step_message(line, 60))),
                    None => bar.set_message(step_message(line, 100)),
                }
            }
        }
    }

    /// A service's image is built: its bar becomes the summary line.
    pub fn finish(&self, service: &str, summary: &str) {
        if let BuildProgress::Bars { bars, .. } = self {
            if let Some(bar) = bars.get(service) {
                bar.set_style(
                    ProgressStyle::with_template("    {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.finish_with_message(summary.to_string());
            }
        }
    }

    /// The build stopped (failed): bars cleared, so the error prints on a clean screen.
    pub fn abandon(&self) {
        if let BuildProgress::Bars { multi, bars, .. } = self {
            for bar in bars.values().filter(|b| !b.is_finished()) {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn capture() -> (LineSink, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        (Box::new(move |s: &str| l.lock().unwrap().push(s.to_string())), lines)
    }

    #[test]
    fn off_a_terminal_only_plain_lines_are_written() {
        let (sink, lines) = capture();
        let p = BuildProgress::new(false, &["database", "backend"], sink);
        assert!(!p.bars());
        p.start("database", "shop-database:1");
        for i in 1..=12 {
            p.line("database", &format!("Step {i}/12 : RUN something"));
        }
        p.line("database", "\x1b[1A\rprogress 50%");
        p.finish("database", "database: shop-database:1 sha256:abc");
        p.start("backend", "shop-backend:1");
        p.abandon();
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines, ["database: building shop-database:1", "backend: building shop-backend:1"]);
        for l in &lines {
            assert!(!l.contains('\x1b') && !l.contains('\r'), "no terminal control off a terminal: {l:?}");
        }
    }

    #[test]
    fn bars_show_the_step_and_end_as_a_summary() {
        let p = BuildProgress::with_target(&["database", "backend"], ProgressDrawTarget::hidden());
        assert!(p.bars());
        p.start("backend", "shop-backend:1");
        p.line("backend", "Step 4/12 : RUN npm ci --omit=dev");
        let BuildProgress::Bars { bars, .. } = &p else { unreachable!() };
        assert_eq!(bars["backend"].message(), "step 4/12 RUN npm ci --omit=dev");
        p.line("backend", " ---> Running in 0123");
        p.line("backend", "added 12 packages in 3s");
        assert_eq!(bars["backend"].message(), "step 4/12 RUN npm ci --omit=dev · added 12 packages in 3s");
        assert_eq!(bars["database"].message(), "waiting", "every service is shown before it starts");
        p.finish("backend", "backend: shop-backend:1 sha256:abc");
        assert!(bars["backend"].is_finished());
        assert_eq!(bars["backend"].message(), "backend: shop-backend:1 sha256:abc");
    }

    #[test]
    fn step_messages_are_one_short_line() {
        assert_eq!(
            step_message("Step 1/9 : FROM cultivate/debian:bookworm", 80),
            "step 1/9 FROM cultivate/debian:bookworm"
        );
        assert_eq!(step_message(" ---> Running in 1234\n", 80), "---> Running in 1234");
        assert_eq!(step_message("abcdefghij", 5), "abcd…");
        assert_eq!(step_message("a\tb", 5), "a b");
    }
}
