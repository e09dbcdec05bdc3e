//! Validation results and their renderings: a table for people, JSON, JUnit XML for CI.

use serde::Serialize;
use std::fmt::Write;

/// Outcome of one finding or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    /// A MUST requirement failed.
    Fail,
    /// A SHOULD requirement failed.
    Warn,
    /// Not applicable (feature not offered, hook not available).
    Skip,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Warn => "WARN",
            Verdict::Skip => "SKIP",
        }
    }
}

/// One observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(skip)]
    pub group: &'static str,
    pub name: String,
    pub must: bool,
    pub verdict: Verdict,
    pub expected: String,
    pub observed: String,
    /// Register or ring address involved.
    pub location: String,
}

impl Finding {
    /// A finding from a comparison.
    pub fn check(
        group: &'static str,
        name: &str,
        must: bool,
        ok: bool,
        expected: &str,
        observed: &str,
        location: &str,
    ) -> Finding {
        let verdict = match (ok, must) {
            (true, _) => Verdict::Pass,
            (false, true) => Verdict::Fail,
            (false, false) => Verdict::Warn,
        };
        Finding {
            group,
            name: name.into(),
            must,
            verdict,
            expected: expected.into(),
            observed: observed.into(),
            location: location.into(),
        }
    }

    /// A failed finding.
    pub fn fail(
        group: &'static str,
        name: &str,
        must: bool,
        expected: &str,
        observed: &str,
        location: &str,
    ) -> Finding {
        Finding::check(group, name, must, false, expected, observed, location)
    }

    /// A skipped finding.
    pub fn skip(group: &'static str, name: &str, why: &str) -> Finding {
        Finding {
            group,
            name: name.into(),
            must: false,
            verdict: Verdict::Skip,
            expected: String::new(),
            observed: why.into(),
            location: String::new(),
        }
    }
}

/// One check group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupResult {
    pub id: &'static str,
    pub title: &'static str,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

impl GroupResult {
    pub fn new(id: &'static str, title: &'static str, findings: Vec<Finding>) -> Self {
        let verdict = if findings.iter().any(|f| f.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if findings.iter().any(|f| f.verdict == Verdict::Warn) {
            Verdict::Warn
        } else if !findings.is_empty() && findings.iter().all(|f| f.verdict == Verdict::Skip) {
            Verdict::Skip
        } else {
            Verdict::Pass
        };
        GroupResult {
            id,
            title,
            verdict,
            findings,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: String,
    pub groups: Vec<GroupResult>,
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

impl Report {
    /// Whether every MUST finding passed.
    pub fn passed(&self) -> bool {
        self.groups.iter().all(|g| g.verdict != Verdict::Fail)
    }

    /// Verdict of a group.
    pub fn group(&self, id: &str) -> Option<&GroupResult> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// A readable table: one line per group, and the evidence of every finding that did not pass.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "vDPA HW prerequisites: {}\n", self.target);
        let _ = writeln!(s, "{:<20} {:<6} {:>6}  what", "check", "result", "items");
        for g in &self.groups {
            let n = g
                .findings
                .iter()
                .filter(|f| f.verdict == Verdict::Pass)
                .count();
            let _ = writeln!(
                s,
                "{:<20} {:<6} {:>3}/{:<2}  {}",
                g.id,
                g.verdict.name(),
                n,
                g.findings.len(),
                g.title
            );
            for f in g.findings.iter().filter(|f| f.verdict != Verdict::Pass) {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    f.verdict.name(),
                    f.name,
                    if f.verdict == Verdict::Skip {
                        f.observed.clone()
                    } else {
                        format!("expected {}; observed {}", f.expected, f.observed)
                    }
                );
                if !f.location.is_empty() {
                    let _ = writeln!(s, "       at {}", f.location);
                }
            }
        }
        let _ = writeln!(
            s,
            "\n{}",
            if self.passed() {
                "RESULT: PASS (every MUST check passed)"
            } else {
                "RESULT: FAIL"
            }
        );
        s
    }

    /// JSON: `{"target", "passed", "checks": [{"id", "title", "verdict", "findings": [...]}]}`.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            target: &'a str,
            passed: bool,
            checks: &'a [GroupResult],
        }
        crate::report_json::to_json(&Json {
            target: &self.target,
            passed: self.passed(),
            checks: &self.groups,
        })
    }

    /// JUnit XML: one testsuite, one testcase per finding (classname = check group).
    pub fn junit(&self) -> String {
        let all: Vec<&Finding> = self.groups.iter().flat_map(|g| &g.findings).collect();
        let failures = all.iter().filter(|f| f.verdict == Verdict::Fail).count();
        let skipped = all.iter().filter(|f| f.verdict == Verdict::Skip).count();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(s, "<testsuite name=\"vdpa-emu validate\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">", all.len());
        let _ = writeln!(
            s,
            "  <properties><property name=\"target\" value=\"{}\"/></properties>",
            xml(&self.target)
        );
        for f in all {
            let _ = write!(
                s,
                "  <testcase classname=\"{}\" name=\"{}\"",
                xml(f.group),
                xml(&f.name)
            );
            match f.verdict {
                Verdict::Pass => s.push_str("/>\n"),
                Verdict::Skip => {
                    let _ = writeln!(s, "><skipped message=\"{}\"/></testcase>", xml(&f.observed));
                }
                Verdict::Fail | Verdict::Warn => {
                    let msg = format!(
                        "expected {}; observed {}{}",
                        f.expected,
                        f.observed,
                        if f.location.is_empty() {
                            String::new()
                        } else {
                            format!(" (at {})", f.location)
                        }
                    );
                    if f.verdict == Verdict::Fail {
                        let _ = writeln!(s, "><failure message=\"{}\"/></testcase>", xml(&msg));
                    } else {
                        let _ = writeln!(
                            s,
                            "><system-out>WARN (SHOULD): {}</system-out></testcase>",
                            xml(&msg)
                        );
                    }
                }
            }
        }
        s.push_str("</testsuite>\n");
        s
    }
}
