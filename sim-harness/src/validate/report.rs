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
    /// Not run, with the reason: what it needs is missing (the device is not what the check
    /// is for, a feature it exercises is not offered, the target has no hook for it), or the
    /// run ended before it (the device became unreachable). Never counted as a failure, and
    /// never as a pass.
    #[serde(rename = "NOT RUN")]
    NotRun,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Warn => "WARN",
            Verdict::NotRun => "NOT RUN",
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

    /// A finding that was not run, and why.
    pub fn not_run(group: &'static str, name: &str, why: &str) -> Finding {
        Finding {
            group,
            name: name.into(),
            must: false,
            verdict: Verdict::NotRun,
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
        } else if !findings.is_empty() && findings.iter().all(|f| f.verdict == Verdict::NotRun) {
            Verdict::NotRun
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

/// One feature the model knows: whether the profile and the device offer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeatureStatus {
    pub name: &'static str,
    pub bit: u32,
    /// In the expected set (the profile's, or the device's own when no profile was given).
    pub profile: bool,
    /// Offered by the device (device_feature as read at the start of the run).
    pub device: bool,
}

/// The profile a run checked against and, per feature, what was expected and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProfileReport {
    /// The profile's name, or `device` when no profile was given (the expected set is then
    /// what the device offers, read from it).
    pub name: String,
    /// Where the expected set comes from: `profile` (given, or the model's own), `control
    /// socket` (the served device's, as its control socket reports it) or `device` (none known:
    /// what the device offers).
    pub from: &'static str,
    /// Expected features as a mask.
    pub expected: String,
    /// What the device offers, as a mask.
    pub offered: String,
    /// Every feature the model knows, then any other bit the device offers.
    pub features: Vec<FeatureStatus>,
}

impl ProfileReport {
    /// The report of a run against `profile` (None: the device's own set) on a device that
    /// offers `offered`.
    pub fn new(
        profile: Option<&bar_registers::Profile>,
        origin: &'static str,
        offered: u64,
    ) -> ProfileReport {
        let expected = profile.map_or(offered, |p| p.features);
        let mut features: Vec<FeatureStatus> = bar_registers::virtio::OFFERED_FEATURES
            .iter()
            .map(|f| FeatureStatus {
                name: f.name,
                bit: f.bit,
                profile: expected & (1u64 << f.bit) != 0,
                device: offered & (1u64 << f.bit) != 0,
            })
            .collect();
        let known = bar_registers::virtio::offered_mask();
        for bit in (0..64).filter(|b| offered & !known & (1u64 << b) != 0) {
            features.push(FeatureStatus {
                name: "(not a feature the model knows)",
                bit,
                profile: false,
                device: true,
            });
        }
        ProfileReport {
            name: profile.map_or("device".into(), |p| p.name.clone()),
            from: if profile.is_some() { origin } else { "device" },
            expected: format!("{expected:#x}"),
            offered: format!("{offered:#x}"),
            features,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: String,
    /// The profile checked against, and per feature whether it is offered.
    pub profile: ProfileReport,
    pub groups: Vec<GroupResult>,
    /// Set when the validator lost the device part-way (a transport error): the groups from
    /// there on are NOT RUN, and the run exits 2, not 1.
    pub aborted: Option<String>,
    /// Likely causes of the failures the validator could establish (e.g. the device presents
    /// the other LM layout); they change no verdict.
    pub hints: Vec<String>,
}

/// Findings (or groups) by verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub warn: usize,
    pub not_run: usize,
}

impl Counts {
    fn of(verdicts: impl Iterator<Item = Verdict>) -> Counts {
        let mut c = Counts::default();
        for v in verdicts {
            match v {
                Verdict::Pass => c.pass += 1,
                Verdict::Fail => c.fail += 1,
                Verdict::Warn => c.warn += 1,
                Verdict::NotRun => c.not_run += 1,
            }
        }
        c
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} PASS, {} FAIL, {} WARN, {} NOT RUN",
            self.pass, self.fail, self.warn, self.not_run
        )
    }
}

/// Exit status of `vdpa-emu validate`: every MUST passed.
pub const EXIT_PASS: u8 = 0;
/// Exit status: the device fails a MUST.
pub const EXIT_DEVICE_FAILED: u8 = 1;
/// Exit status: the validator could not reach or drive the device (no report of the device
/// itself, or an incomplete one).
pub const EXIT_UNREACHABLE: u8 = 2;

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

impl Report {
    /// Whether every MUST finding passed and the run was complete.
    pub fn passed(&self) -> bool {
        self.aborted.is_none() && self.groups.iter().all(|g| g.verdict != Verdict::Fail)
    }

    /// Findings by verdict.
    pub fn finding_counts(&self) -> Counts {
        Counts::of(
            self.groups
                .iter()
                .flat_map(|g| &g.findings)
                .map(|f| f.verdict),
        )
    }

    /// Groups by verdict.
    pub fn group_counts(&self) -> Counts {
        Counts::of(self.groups.iter().map(|g| g.verdict))
    }

    /// [`EXIT_UNREACHABLE`] if the run was aborted (even when a MUST failed before that: the
    /// report is incomplete), else [`EXIT_DEVICE_FAILED`] if a MUST failed, else [`EXIT_PASS`].
    pub fn exit_code(&self) -> u8 {
        if self.aborted.is_some() {
            EXIT_UNREACHABLE
        } else if self.passed() {
            EXIT_PASS
        } else {
            EXIT_DEVICE_FAILED
        }
    }

    /// Verdict of a group.
    pub fn group(&self, id: &str) -> Option<&GroupResult> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// A readable table: one line per group, and the evidence of every finding that did not pass.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "vDPA HW prerequisites: {}", self.target);
        let p = &self.profile;
        if p.from != "device" {
            let _ = writeln!(
                s,
                "profile {}{}: expects features {}, the device offers {}",
                p.name,
                if p.from == "profile" {
                    String::new()
                } else {
                    format!(" (from its {})", p.from)
                },
                p.expected,
                p.offered
            );
        } else {
            let _ = writeln!(
                s,
                "profile: none given; the device offers {} (checked as its own profile)",
                p.offered
            );
        }
        let _ = writeln!(
            s,
            "\n{:<28} {:>3}  {:<7}  device",
            "feature", "bit", "profile"
        );
        for f in &p.features {
            let _ = writeln!(
                s,
                "{:<28} {:>3}  {:<7}  {}",
                f.name,
                f.bit,
                if f.profile { "offered" } else { "-" },
                match (f.profile, f.device) {
                    (true, true) => "offered",
                    (false, false) => "-",
                    (true, false) => "NOT OFFERED",
                    (false, true) => "OFFERED (not in the profile)",
                }
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<20} {:<7} {:>6}  what", "check", "result", "items");
        for g in &self.groups {
            let n = g
                .findings
                .iter()
                .filter(|f| f.verdict == Verdict::Pass)
                .count();
            let _ = writeln!(
                s,
                "{:<20} {:<7} {:>3}/{:<2}  {}",
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
                    if f.verdict == Verdict::NotRun {
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
            "\nchecks: {}\ngroups: {}",
            self.finding_counts(),
            self.group_counts()
        );
        if let Some(why) = &self.aborted {
            let _ = writeln!(s, "RESULT: INCOMPLETE (could not drive the device: {why})");
        } else if self.passed() {
            let _ = writeln!(s, "RESULT: PASS (every MUST check passed)");
        } else {
            let _ = writeln!(s, "RESULT: FAIL (the device fails a MUST check)");
        }
        for h in &self.hints {
            let _ = writeln!(s, "hint: {h}");
        }
        s
    }

    /// JSON: `{"target", "profile": {"name", "from", "expected", "offered", "features": [{"name",
    /// "bit", "profile", "device"}]}, "passed", "exit_code", "aborted", "counts": {"checks", "groups"},
    /// "checks": [{"id", "title", "verdict", "findings": [...]}], "hints": [...]}`.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Tally {
            checks: Counts,
            groups: Counts,
        }
        #[derive(Serialize)]
        struct Json<'a> {
            target: &'a str,
            profile: &'a ProfileReport,
            passed: bool,
            exit_code: u8,
            aborted: Option<&'a str>,
            counts: Tally,
            checks: &'a [GroupResult],
            hints: &'a [String],
        }
        crate::report_json::to_json(&Json {
            target: &self.target,
            profile: &self.profile,
            passed: self.passed(),
            exit_code: self.exit_code(),
            aborted: self.aborted.as_deref(),
            counts: Tally {
                checks: self.finding_counts(),
                groups: self.group_counts(),
            },
            checks: &self.groups,
            hints: &self.hints,
        })
    }

    /// JUnit XML: one testsuite, one testcase per finding (classname = check group).
    pub fn junit(&self) -> String {
        let all: Vec<&Finding> = self.groups.iter().flat_map(|g| &g.findings).collect();
        let failures = all.iter().filter(|f| f.verdict == Verdict::Fail).count();
        let skipped = all.iter().filter(|f| f.verdict == Verdict::NotRun).count();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let errors = usize::from(self.aborted.is_some());
        let _ = writeln!(
            s,
            "<testsuite name=\"vdpa-emu validate\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">",
            all.len() + errors
        );
        let _ = writeln!(
            s,
            "  <properties><property name=\"target\" value=\"{}\"/><property name=\"profile\" value=\"{}\"/><property name=\"offered_features\" value=\"{}\"/></properties>",
            xml(&self.target),
            xml(&self.profile.name),
            xml(&self.profile.offered)
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
                Verdict::NotRun => {
                    let _ = writeln!(
                        s,
                        "><skipped message=\"NOT RUN: {}\"/></testcase>",
                        xml(&f.observed)
                    );
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
        if let Some(why) = &self.aborted {
            let _ = writeln!(
                s,
                "  <testcase classname=\"validate\" name=\"device reachable and drivable\"><error message=\"{}\"/></testcase>",
                xml(why)
            );
        }
        s.push_str("</testsuite>\n");
        s
    }
}
