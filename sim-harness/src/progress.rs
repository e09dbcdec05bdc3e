//! Progress of long work (migrate's pre-copy rounds, scenario runs) on stderr: a live bar when
//! stderr is a terminal, one plain line per step when it is not (CI logs, pipes), nothing when
//! off. The report itself always goes to stdout, so progress never mixes into it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Where progress goes.
#[derive(Debug)]
pub enum Progress {
    /// A bar redrawn in place on the terminal.
    Bar(ProgressBar),
    /// Plain lines on stderr, each prefixed.
    Lines { prefix: String },
    /// Nothing.
    Off,
}

impl Progress {
    /// Progress over `len` units of `unit` (e.g. 3 "migrations"), shown only when `enabled`.
    pub fn new(enabled: bool, len: u64, unit: &str) -> Progress {
        if !enabled {
            return Progress::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines {
                prefix: String::new(),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(&format!(
            "[{{elapsed_precise}}] {{bar:30.cyan/blue}} {{pos}}/{{len}} {unit}  {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress::Bar(bar)
    }

    /// What is happening now: the bar's message, or a line.
    pub fn message(&self, msg: &str) {
        match self {
            Progress::Bar(b) => b.set_message(msg.to_string()),
            Progress::Lines { prefix } => eprintln!("{prefix}{msg}"),
            Progress::Off => {}
        }
    }

    /// A line prefix for plain-line mode (e.g. `"[2] "` for the third migration).
    pub fn set_prefix(&mut self, p: &str) {
        if let Progress::Lines { prefix } = self {
            *prefix = p.to_string();
        }
    }

    /// One unit done.
    pub fn inc(&self) {
        if let Progress::Bar(b) = self {
            b.inc(1);
        }
    }

    /// Removes the bar (the report follows on stdout).
    pub fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}
