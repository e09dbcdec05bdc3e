//! Scenario results and their three renderings: a table for people (`make demo`), JSON for
//! tools, JUnit XML for CI (one testsuite per file, one testcase per expectation).

use super::expect::Expectation;
use super::model::{Scenario, Step};
use serde::Serialize;
use std::fmt::Write;

/// Overall verdict of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// The file could not be loaded: nothing ran.
    Malformed,
}

/// What happened to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepVerdict {
    Ok,
    Error,
    /// Failed, but the step allows it (`allow_error = true`).
    AllowedError,
    /// Not run: an earlier step failed.
    Skipped,
}

/// What happened to an expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectVerdict {
    Pass,
    Fail,
    Skipped,
}

/// One checked expectation.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectReport {
    /// As written.
    pub expr: String,
    pub line: usize,
    pub verdict: ExpectVerdict,
    /// Operator and right-hand side (with its value when it is a metric).
    pub expected: String,
    /// The left-hand side's value.
    pub observed: String,
    /// For a failure: the step, expected and observed in one sentence.
    pub message: String,
}

impl ExpectReport {
    pub(crate) fn skipped(e: &Expectation, context: &str) -> Self {
        ExpectReport {
            expr: e.text.clone(),
            line: e.line,
            verdict: ExpectVerdict::Skipped,
            expected: String::new(),
            observed: String::new(),
            message: format!("{context}: not checked, an earlier step failed"),
        }
    }
}

/// One step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// 1-based.
    pub index: usize,
    pub kind: String,
    pub label: String,
    pub line: usize,
    pub verdict: StepVerdict,
    /// What the step did (or its error).
    pub evidence: String,
    pub duration_ms: f64,
    pub expectations: Vec<ExpectReport>,
}

impl StepReport {
    pub(crate) fn skipped(s: &Step) -> Self {
        let context = format!("step #{} {} (line {})", s.index, s.label, s.line);
        StepReport {
            index: s.index,
            kind: s.action.kind().to_string(),
            label: s.label.clone(),
            line: s.line,
            verdict: StepVerdict::Skipped,
            evidence: "not run: an earlier step failed".into(),
            duration_ms: 0.0,
            expectations: s
                .expect
                .iter()
                .map(|e| ExpectReport::skipped(e, &context))
                .collect(),
        }
    }
}

/// One scenario file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: String,
    pub scenario: String,
    pub description: Option<String>,
    pub verdict: Verdict,
    /// Why the file is malformed, or what stopped the run outside any step.
    pub error: Option<String>,
    pub duration_ms: f64,
    pub steps: Vec<StepReport>,
    /// `[end]` expectations.
    pub end: Vec<ExpectReport>,
}

impl FileReport {
    pub(crate) fn new(sc: &Scenario) -> Self {
        FileReport {
            file: sc.file.clone(),
            scenario: sc.name.clone(),
            description: sc.description.clone(),
            verdict: Verdict::Pass,
            error: None,
            duration_ms: 0.0,
            steps: Vec::new(),
            end: Vec::new(),
        }
    }

    /// The report of a file that could not be loaded.
    pub fn malformed(file: &str, error: String) -> Self {
        let scenario = std::path::Path::new(file)
            .file_stem()
            .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
        FileReport {
            file: file.to_string(),
            scenario,
            description: None,
            verdict: Verdict::Malformed,
            error: Some(error),
            duration_ms: 0.0,
            steps: Vec::new(),
            end: Vec::new(),
        }
    }

    /// Sets the verdict from the steps and expectations.
    pub(crate) fn finish(&mut self) {
        let step_failed = self
            .steps
            .iter()
            .any(|s| matches!(s.verdict, StepVerdict::Error | StepVerdict::Skipped));
        let expect_failed = self
            .expectations()
            .any(|e| e.verdict != ExpectVerdict::Pass);
        self.verdict = if self.error.is_some() || step_failed || expect_failed {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
    }

    /// Every expectation, steps' first, then `[end]`.
    pub fn expectations(&self) -> impl Iterator<Item = &ExpectReport> {
        self.steps
            .iter()
            .flat_map(|s| s.expectations.iter())
            .chain(self.end.iter())
    }

    /// Every failure message: step errors, failed expectations, the file error.
    pub fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self.error.iter().cloned().collect();
        for s in &self.steps {
            if s.verdict == StepVerdict::Error {
                v.push(format!(
                    "step #{} {} (line {}): {}",
                    s.index, s.label, s.line, s.evidence
                ));
            }
        }
        v.extend(
            self.expectations()
                .filter(|e| e.verdict == ExpectVerdict::Fail)
                .map(|e| e.message.clone()),
        );
        v
    }
}

/// Results of a `scenario run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub files: Vec<FileReport>,
    pub summary: Summary,
}

/// Totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    pub passed: usize,
    pub failed: usize,
    pub malformed: usize,
    pub expectations: usize,
    pub expectations_failed: usize,
    pub duration_ms: f64,
}

impl RunReport {
    /// Collects file reports and totals them.
    pub fn new(files: Vec<FileReport>) -> Self {
        let mut s = Summary {
            files: files.len(),
            ..Summary::default()
        };
        for f in &files {
            match f.verdict {
                Verdict::Pass => s.passed += 1,
                Verdict::Fail => s.failed += 1,
                Verdict::Malformed => s.malformed += 1,
            }
            s.expectations += f.expectations().count();
            s.expectations_failed += f
                .expectations()
                .filter(|e| e.verdict == ExpectVerdict::Fail)
                .count();
            s.duration_ms += f.duration_ms;
        }
        RunReport { files, summary: s }
    }

    /// 0 when every scenario passed, 2 when a file is malformed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.summary.malformed > 0 {
            2
        } else if self.summary.failed > 0 {
            1
        } else {
            0
        }
    }

    /// Pretty JSON.
    pub fn json(&self) -> String {
        crate::report_json::to_json(self)
    }

    /// The human-readable table: one row per step and per expectation.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        for f in &self.files {
            let mut first = true;
            let mut row = |step: String, verdict: &str, evidence: String| {
                let name = if std::mem::take(&mut first) {
                    f.scenario.clone()
                } else {
                    String::new()
                };
                rows.push([name, step, verdict.to_string(), evidence]);
            };
            if f.verdict == Verdict::Malformed {
                row(
                    "(file not loaded)".into(),
                    "ERROR",
                    f.error.clone().unwrap_or_default(),
                );
                continue;
            }
            for s in &f.steps {
                let v = match s.verdict {
                    StepVerdict::Ok => "ok",
                    StepVerdict::Error => "ERROR",
                    StepVerdict::AllowedError => "ok*",
                    StepVerdict::Skipped => "skip",
                };
                row(format!("#{} {}", s.index, s.label), v, s.evidence.clone());
                for e in &s.expectations {
                    let (v, ev) = expect_cells(e);
                    row(format!("  {}", e.expr), v, ev);
                }
            }
            for e in &f.end {
                let (v, ev) = expect_cells(e);
                row(format!("end: {}", e.expr), v, ev);
            }
            if let Some(err) = &f.error {
                row("(run)".into(), "ERROR", err.clone());
            }
            let n = f.expectations().count();
            let failed = f
                .expectations()
                .filter(|e| e.verdict != ExpectVerdict::Pass)
                .count();
            let verdict = if f.verdict == Verdict::Pass {
                "PASS"
            } else {
                "FAIL"
            };
            row(
                format!("=> {verdict}"),
                verdict,
                format!(
                    "{} step(s), {n} expectation(s), {failed} not passed, {:.0} ms, {}",
                    f.steps.len(),
                    f.duration_ms,
                    f.file
                ),
            );
        }
        let head = ["SCENARIO", "STEP / EXPECTATION", "VERDICT", "EVIDENCE"];
        let width = |c: usize, cap: usize| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
                .min(cap)
        };
        let (w0, w1, w2) = (width(0, 28), width(1, 52), width(2, 7));
        let mut out = String::new();
        let line = |out: &mut String, r: [&str; 4]| {
            let _ = writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                clip(r[0], w0),
                clip(r[1], w1),
                r[2],
                r[3]
            );
        };
        line(&mut out, head);
        let _ = writeln!(out, "{}", "-".repeat(w0 + w1 + w2 + 6 + 40));
        for (i, r) in rows.iter().enumerate() {
            if i > 0 && !r[0].is_empty() {
                out.push('\n');
            }
            line(&mut out, [&r[0], &r[1], &r[2], &r[3]]);
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "\n{} scenario file(s): {} passed, {} failed, {} malformed; {} expectation(s), {} failed; {:.2} s",
            s.files,
            s.passed,
            s.failed,
            s.malformed,
            s.expectations,
            s.expectations_failed,
            s.duration_ms / 1e3
        );
        for f in &self.files {
            for m in f.failures() {
                if m.starts_with(&f.file) {
                    let _ = writeln!(out, "  {m}");
                } else {
                    let _ = writeln!(out, "  {}: {m}", f.file);
                }
            }
        }
        out
    }

    /// JUnit XML: one testsuite per file, one testcase per expectation (plus one per failed
    /// step, and one for a file that could not be loaded).
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let s = &self.summary;
        let _ = writeln!(
            out,
            "<testsuites name=\"vdpa-emu scenarios\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
            s.expectations + self.files.iter().map(extra_cases).sum::<usize>(),
            s.expectations_failed,
            self.files.iter().map(extra_cases).sum::<usize>(),
            s.duration_ms / 1e3
        );
        for f in &self.files {
            let cases: Vec<&ExpectReport> = f.expectations().collect();
            let failures = cases
                .iter()
                .filter(|e| e.verdict == ExpectVerdict::Fail)
                .count();
            let skipped = cases
                .iter()
                .filter(|e| e.verdict == ExpectVerdict::Skipped)
                .count();
            let errors = extra_cases(f);
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" file=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">",
                xml(&f.scenario),
                xml(&f.file),
                cases.len() + errors,
                f.duration_ms / 1e3
            );
            let class = xml(&f.scenario);
            if f.verdict == Verdict::Malformed {
                let msg = f.error.clone().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"{class}\" name=\"load\">\n      <error type=\"malformed\" message=\"{}\">{}</error>\n    </testcase>",
                    xml(&msg),
                    xml(&msg)
                );
            }
            for st in &f.steps {
                if st.verdict == StepVerdict::Error {
                    let _ = writeln!(
                        out,
                        "    <testcase classname=\"{class}\" name=\"{}\">\n      <error type=\"step\" message=\"{}\">{}</error>\n    </testcase>",
                        xml(&format!("step #{} {}", st.index, st.label)),
                        xml(&st.evidence),
                        xml(&st.evidence)
                    );
                }
                for e in &st.expectations {
                    junit_case(
                        &mut out,
                        &class,
                        &format!("step #{} {}: {}", st.index, st.label, e.expr),
                        e,
                    );
                }
            }
            for e in &f.end {
                junit_case(&mut out, &class, &format!("end: {}", e.expr), e);
            }
            if let (Some(err), false) = (&f.error, f.verdict == Verdict::Malformed) {
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"{class}\" name=\"run\">\n      <error type=\"run\" message=\"{}\">{}</error>\n    </testcase>",
                    xml(err),
                    xml(err)
                );
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

/// Testcases beyond the expectations: failed steps and load/run errors.
fn extra_cases(f: &FileReport) -> usize {
    f.steps
        .iter()
        .filter(|s| s.verdict == StepVerdict::Error)
        .count()
        + usize::from(f.error.is_some())
}

fn junit_case(out: &mut String, class: &str, name: &str, e: &ExpectReport) {
    let _ = write!(
        out,
        "    <testcase classname=\"{class}\" name=\"{}\"",
        xml(name)
    );
    match e.verdict {
        ExpectVerdict::Pass => out.push_str(" />\n"),
        ExpectVerdict::Skipped => {
            let _ = writeln!(
                out,
                ">\n      <skipped message=\"{}\" />\n    </testcase>",
                xml(&e.message)
            );
        }
        ExpectVerdict::Fail => {
            let _ = writeln!(out, ">\n      <failure type=\"expectation\" message=\"{}\">{}</failure>\n    </testcase>", xml(&e.message), xml(&e.message));
        }
    }
}

fn expect_cells(e: &ExpectReport) -> (&'static str, String) {
    match e.verdict {
        // A metric on the right: show its value too.
        ExpectVerdict::Pass if e.expected.contains("(= ") => {
            ("PASS", format!("observed {}, {}", e.observed, e.expected))
        }
        ExpectVerdict::Pass => ("PASS", format!("observed {}", e.observed)),
        ExpectVerdict::Fail => (
            "FAIL",
            format!("observed {}, expected {}", e.observed, e.expected),
        ),
        ExpectVerdict::Skipped => ("skip", String::new()),
    }
}

/// Cuts a cell to `w` characters (with an ellipsis mark).
fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
    t.push('~');
    t
}

/// Escapes text for XML attributes and content; characters XML 1.0 cannot carry become U+FFFD.
pub fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || matches!(c as u32, 0xFFFE | 0xFFFF) => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_everything() {
        assert_eq!(
            xml("a<b>&\"c'\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}"
        );
    }
}
