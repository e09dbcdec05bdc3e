//! The scenario runner: the regression set in scenarios/ passes (quickly), malformed files are
//! refused with the file, line and field named, failing expectations say expected vs observed
//! and the step, the reports render (JUnit well-formed), and no input makes the loader panic.

use sim_harness::scenario::report::ExpectVerdict;
use sim_harness::scenario::{
    self, parse_str, RunReport, ScenarioError, Verdict, FAULTS, STEP_KINDS,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// A fresh directory for this test's files.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vdpa-emu-scenarios-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn regression_files() -> Vec<PathBuf> {
    scenario::collect_files(&[scenarios_dir()]).expect("scenarios/ readable")
}

#[test]
fn regression_set_passes_quickly() {
    let files = regression_files();
    assert!(
        files.len() >= 8,
        "the regression set has {} files",
        files.len()
    );
    let t0 = Instant::now();
    let report = scenario::run_files(&files);
    let elapsed = t0.elapsed().as_secs_f64();
    let failures: Vec<String> = report
        .files
        .iter()
        .flat_map(|f| {
            f.failures()
                .into_iter()
                .map(move |m| format!("{}: {m}", f.file))
        })
        .collect();
    assert!(
        report.files.iter().all(|f| f.verdict == Verdict::Pass),
        "scenarios failed:\n{}\n{}",
        failures.join("\n"),
        report.table()
    );
    assert_eq!(report.exit_code(), 0);
    assert!(
        report.summary.expectations >= 200,
        "only {} expectations",
        report.summary.expectations
    );
    eprintln!(
        "regression set: {} files, {} expectations, {elapsed:.2} s",
        report.files.len(),
        report.summary.expectations
    );
    assert!(elapsed < 30.0, "the regression set took {elapsed:.1} s");
}

#[test]
fn regression_set_covers_every_step_kind_and_fault() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut faults = std::collections::BTreeSet::new();
    let mut text = String::new();
    for f in regression_files() {
        let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        for s in &sc.steps {
            kinds.insert(s.action.kind());
            if let scenario::model::Action::Inject { fault, .. } = s.action {
                faults.insert(fault.name());
            }
        }
        text.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
    }
    for k in STEP_KINDS {
        assert!(
            kinds.contains(k),
            "no regression scenario uses step kind `{k}`"
        );
    }
    for (name, _, _) in FAULTS {
        assert!(
            faults.contains(name),
            "no regression scenario injects `{name}`"
        );
    }
    for needle in [
        "port = \"link:",
        "missed_dirty_pages > 0",
        "missed_dirty_pages == 0",
        "mask_features = [\"MRG_RXBUF\"]",
        "how = \"flr\"",
        "up = false",
    ] {
        assert!(
            text.contains(needle),
            "no regression scenario has `{needle}`"
        );
    }
}

#[test]
fn readme_documents_the_schema() {
    let readme =
        std::fs::read_to_string(scenarios_dir().join("README.md")).expect("scenarios/README.md");
    for k in STEP_KINDS {
        assert!(
            readme.contains(&format!("`{k}`")),
            "README lacks step kind `{k}`"
        );
    }
    for (name, counter, _) in FAULTS {
        assert!(
            readme.contains(name) && readme.contains(counter),
            "README lacks fault `{name}` / `{counter}`"
        );
    }
    for family in scenario::metrics::FAMILIES {
        let head = family.split(['.', ' ']).next().unwrap_or(family);
        assert!(
            readme.contains(head),
            "README lacks metric family `{family}`"
        );
    }
    for q in device::Quirk::ALL {
        assert!(readme.contains(q.name()), "README lacks quirk {}", q.name());
    }
    let docs = std::fs::read_to_string(scenarios_dir().join("../docs/scenarios.md"))
        .expect("docs/scenarios.md");
    assert!(docs.contains("scenario run"));
}

// ------------------------------------------------------------------------------- malformed files

const VALID: &str = r#"name = "probe"

[[device]]
queue_pairs = 2

[[step]]
kind = "start"

[[step]]
kind = "traffic"
count = 10
expect = ["traffic.lost == 0"]

[end]
expect = ["frames.delivered == 10"]
"#;

/// Writes `src` to a temp file, loads it, returns the error (the file must be refused).
fn refuse(dir: &Path, name: &str, src: &str) -> (String, ScenarioError) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, src).expect("write");
    match scenario::load(&path) {
        Ok(_) => panic!("{name}: accepted:\n{src}"),
        Err(e) => (path.display().to_string(), e),
    }
}

/// The line number (1-based) of the first line containing `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    src.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in the source"))
}

#[test]
fn malformed_files_name_file_line_and_field() {
    let dir = temp_dir("malformed");
    // (case, source, line marker, field named, message fragment)
    let cases: Vec<(&str, String, &str, Option<&str>, &str)> = vec![
        (
            "syntax-error",
            VALID.replace("count = 10", "count = = 10"),
            "count = = 10",
            None,
            "",
        ),
        (
            "unterminated-string",
            VALID.replace("kind = \"traffic\"", "kind = \"traffic"),
            "kind = \"traffic",
            None,
            "",
        ),
        (
            "unknown-field",
            VALID.replace("count = 10", "count = 10\nburst = 4"),
            "burst = 4",
            None,
            "unknown field `burst`",
        ),
        (
            "unknown-device-field",
            VALID.replace("queue_pairs = 2", "queue_pairs = 2\nqueue_pair = 3"),
            "queue_pair = 3",
            None,
            "unknown field `queue_pair`",
        ),
        (
            "unknown-step",
            VALID.replace("kind = \"start\"", "kind = \"launch\""),
            "kind = \"launch\"",
            Some("step[1].kind"),
            "unknown step kind `launch`",
        ),
        (
            "unknown-counter",
            VALID.replace("traffic.lost == 0", "counters.tx_frame == 0"),
            "counters.tx_frame",
            Some("step[2].expect"),
            "unknown counter `tx_frame`",
        ),
        (
            "unknown-fault-counter",
            VALID.replace("frames.delivered == 10", "fault.chain_loop == 0"),
            "fault.chain_loop",
            Some("end.expect"),
            "unknown fault kind `chain_loop`",
        ),
        (
            "bad-quirk",
            VALID.replace(
                "queue_pairs = 2",
                "queue_pairs = 2\nquirks = [\"log-skips-used-ring\", \"log-skips-everything\"]",
            ),
            "log-skips-everything",
            Some("device[1].quirks"),
            "unknown quirk `log-skips-everything`",
        ),
        (
            "wrong-type",
            VALID.replace("count = 10", "count = \"ten\""),
            "count = \"ten\"",
            Some("step[2].count"),
            "invalid type: string \"ten\"",
        ),
        (
            "wrong-type-device",
            VALID.replace("queue_pairs = 2", "queue_pairs = true"),
            "queue_pairs = true",
            Some("device[1].queue_pairs"),
            "invalid type: boolean",
        ),
        (
            "out-of-range-pairs",
            VALID.replace("queue_pairs = 2", "queue_pairs = 33"),
            "queue_pairs = 33",
            Some("device[1].queue_pairs"),
            "33 is out of range 1..=32",
        ),
        (
            "out-of-range-queue",
            VALID.replace("traffic.lost == 0", "tx.2.frames == 0"),
            "tx.2.frames",
            Some("step[2].expect"),
            "pair 2 out of range",
        ),
        (
            "queue-size-not-power-of-two",
            VALID.replace("queue_pairs = 2", "queue_pairs = 2\nqueue_size = 100"),
            "queue_size = 100",
            Some("device[1].queue_size"),
            "not a power of two",
        ),
        (
            "field-of-another-kind",
            VALID.replace("kind = \"start\"", "kind = \"start\"\ncount = 3"),
            "count = 3",
            Some("step[1].count"),
            "does not apply to a `start` step",
        ),
        (
            "unknown-fault",
            VALID.replace(
                "kind = \"start\"",
                "kind = \"inject\"\nfault = \"gremlins\"",
            ),
            "gremlins",
            Some("step[1].fault"),
            "unknown fault `gremlins`",
        ),
        (
            "unknown-link-peer",
            VALID.replace("queue_pairs = 2", "queue_pairs = 2\nport = \"link:b\""),
            "link:b",
            Some("device[1].port"),
            "unknown device `b`",
        ),
        (
            "bad-size",
            VALID.replace("count = 10", "count = 10\nsize = 9000"),
            "size = 9000",
            Some("step[2].size"),
            "frame size 9000 out of range",
        ),
        (
            "bad-operator",
            VALID.replace("traffic.lost == 0", "traffic.lost =< 0"),
            "traffic.lost =<",
            Some("step[2].expect"),
            "",
        ),
        (
            "bool-with-order",
            VALID.replace("traffic.lost == 0", "status.needs_reset > 0"),
            "status.needs_reset >",
            Some("step[2].expect"),
            "compares a boolean with an integer",
        ),
        (
            "both-stop-policies",
            VALID.replace(
                "[end]",
                "[[step]]\nkind = \"migrate\"\ndirty_threshold = 64\nmax_downtime_ms = 100\n\n[end]",
            ),
            "max_downtime_ms = 100",
            Some("step[3].max_downtime_ms"),
            "not both",
        ),
        (
            "downtime-out-of-range",
            VALID.replace(
                "[end]",
                "[[step]]\nkind = \"migrate\"\nmax_downtime_ms = -1\n\n[end]",
            ),
            "max_downtime_ms = -1",
            Some("step[3].max_downtime_ms"),
            "-1 is out of range 0..=2000000",
        ),
        (
            "missing-count",
            VALID.replace("count = 10\n", ""),
            "kind = \"traffic\"",
            Some("step[2].count"),
            "needs `count`",
        ),
    ];
    for (name, src, marker, field, fragment) in cases {
        let (path, err) = refuse(&dir, name, &src);
        let want_line = line_of(&src, marker);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{path}:{want_line}:")),
            "{name}: `{msg}` does not start with {path}:{want_line}:"
        );
        assert_eq!(err.line(), Some(want_line), "{name}: {msg}");
        if let Some(f) = field {
            assert_eq!(err.field(), Some(f), "{name}: {msg}");
            assert!(msg.contains(&format!("field `{f}`")), "{name}: {msg}");
        }
        assert!(msg.contains(fragment), "{name}: `{msg}` lacks `{fragment}`");
    }
    // The serde errors name the field too (read back from the source line).
    let (_, err) = refuse(
        &dir,
        "unknown-field-2",
        &VALID.replace("count = 10", "count = 10\nburst = 4"),
    );
    assert_eq!(err.field(), Some("step[2].burst"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_files_exit_2_and_the_rest_still_run() {
    let dir = temp_dir("exit-codes");
    let good = dir.join("a-good.toml");
    let bad = dir.join("b-bad.toml");
    let failing = dir.join("c-failing.toml");
    std::fs::write(&good, VALID).unwrap();
    std::fs::write(&bad, VALID.replace("kind = \"start\"", "kind = \"launch\"")).unwrap();
    std::fs::write(
        &failing,
        VALID.replace("frames.delivered == 10", "frames.delivered == 11"),
    )
    .unwrap();
    let all = scenario::run_files(std::slice::from_ref(&dir));
    assert_eq!(all.files.len(), 3);
    assert_eq!(
        all.files.iter().map(|f| f.verdict).collect::<Vec<_>>(),
        vec![Verdict::Pass, Verdict::Malformed, Verdict::Fail]
    );
    assert_eq!(all.exit_code(), 2, "a malformed file wins");
    assert_eq!(
        scenario::run_files(&[good.clone(), failing.clone()]).exit_code(),
        1
    );
    assert_eq!(scenario::run_files(&[good]).exit_code(), 0);
    assert_eq!(
        scenario::run_files(&[dir.join("missing.toml")]).exit_code(),
        2
    );
    let table = all.table();
    assert!(
        table.contains("b-bad.toml:") && table.contains("unknown step kind"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------- failing runs

#[test]
fn failing_expectation_says_expected_observed_and_step() {
    let src = VALID
        .replace("traffic.lost == 0", "counters.tx_frames == 11")
        .replace("frames.delivered == 10", "frames.delivered < 10");
    let sc = parse_str(&src, "failing.toml").unwrap();
    let r = scenario::run(&sc);
    assert_eq!(r.verdict, Verdict::Fail);
    let step = &r.steps[1];
    let e = &step.expectations[0];
    assert_eq!(e.verdict, ExpectVerdict::Fail);
    assert_eq!((e.observed.as_str(), e.expected.as_str()), ("10", "== 11"));
    assert_eq!(e.line, line_of(&src, "counters.tx_frames == 11"));
    assert!(e.message.contains("step #2 traffic"), "{}", e.message);
    assert!(
        e.message
            .contains("expected counters.tx_frames == 11, observed 10"),
        "{}",
        e.message
    );
    let end = &r.end[0];
    assert_eq!(end.verdict, ExpectVerdict::Fail);
    assert!(
        end.message
            .contains("end: expected frames.delivered < 10, observed 10"),
        "{}",
        end.message
    );
    let report = RunReport::new(vec![r]);
    assert_eq!(report.exit_code(), 1);
    let table = report.table();
    assert!(
        table.contains("FAIL") && table.contains("observed 10, expected == 11"),
        "{table}"
    );
    assert!(report.json().contains("\"verdict\": \"fail\""));
}

#[test]
fn step_error_skips_the_rest_unless_allowed() {
    let src = r#"
[[device]]

[[step]]
kind = "traffic"
count = 5

[[step]]
kind = "start"
expect = ["status.driver_ok"]

[end]
expect = ["frames.sent == 0"]
"#;
    let r = scenario::run(&parse_str(src, "err.toml").unwrap());
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(
        r.steps[0].evidence.contains("not started"),
        "{}",
        r.steps[0].evidence
    );
    assert_eq!(r.steps[1].expectations[0].verdict, ExpectVerdict::Skipped);
    let allowed = src.replace(
        "count = 5",
        "count = 5\nallow_error = true\nexpect = [\"step.error\"]",
    );
    let r = scenario::run(&parse_str(&allowed, "err.toml").unwrap());
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.failures());
}

#[test]
fn junit_is_well_formed_and_escaped() {
    let src = VALID
        .replace("name = \"probe\"", "name = \"<probe> & 'co' \\\"x\\\"\"")
        .replace("frames.delivered == 10", "frames.delivered < 10");
    let sc = parse_str(&src, "weird&<name>.toml").unwrap();
    let mut files = vec![scenario::run(&sc)];
    files.push(sim_harness::scenario::FileReport::malformed(
        "bad<1>.toml",
        "bad<1>.toml:3:1: unknown \u{1} \"thing\" & more".into(),
    ));
    let xml = RunReport::new(files).junit();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "));
    assert!(!xml.contains('\u{1}'));
    assert_eq!(
        xml.matches("<testsuite ").count(),
        2,
        "one testsuite per file"
    );
    assert!(
        xml.contains("&lt;probe&gt; &amp; &apos;co&apos; &quot;x&quot;"),
        "{xml}"
    );
    assert!(xml.contains("<failure type=\"expectation\""));
    assert!(xml.contains("<error type=\"malformed\""));
    check_well_formed(&xml);
}

/// A small XML well-formedness check: balanced tags, quoted attributes, only the five
/// predefined entities, no raw `<` or `&` in text or attributes.
fn check_well_formed(xml: &str) {
    let body = xml.split_once("?>").map(|(_, b)| b).expect("prolog");
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt]);
        let gt = rest[lt..].find('>').expect("unclosed tag") + lt;
        let tag = &rest[lt + 1..gt];
        assert!(!tag.contains('<'), "raw < inside a tag: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else {
            let self_closing = tag.ends_with('/');
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .expect("tag name")
                .to_string();
            let attrs = tag.trim_end_matches('/')[name.len()..].trim();
            assert_eq!(
                attrs.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            check_text(attrs);
            if !self_closing {
                stack.push(name);
            }
        }
        rest = &rest[gt + 1..];
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
}

fn check_text(t: &str) {
    let mut rest = t;
    while let Some(amp) = rest.find('&') {
        let ent = &rest[amp..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| ent.starts_with(e)),
            "bad entity at {ent:.20}"
        );
        rest = &rest[amp + 1..];
    }
}

// ------------------------------------------------------------------------------- robustness

#[test]
fn no_input_makes_the_loader_panic() {
    let sources: Vec<String> = regression_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .chain([VALID.to_string(), String::new(), "\u{0}\u{ff}[[".into()])
        .collect();
    let mut checked = 0;
    for src in &sources {
        // Every prefix (cut at char boundaries), and every line dropped in turn.
        for cut in (0..src.len())
            .filter(|&i| src.is_char_boundary(i))
            .step_by(7)
        {
            let _ = parse_str(&src[..cut], "cut.toml");
            checked += 1;
        }
        let lines: Vec<&str> = src.lines().collect();
        for skip in 0..lines.len() {
            let s: String = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| format!("{l}\n"))
                .collect();
            let _ = parse_str(&s, "dropped.toml");
            checked += 1;
        }
        // Numbers pushed to the extremes.
        for v in [
            "0",
            "-1",
            "65536",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "1e9",
            "\"x\"",
        ] {
            let s = src
                .replace("count = ", &format!("count = {v} #"))
                .replace("queue_pairs = ", &format!("queue_pairs = {v} #"));
            let _ = parse_str(&s, "extreme.toml");
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

#[test]
fn extreme_but_valid_values_run_without_panic() {
    let src = r#"
[[device]]
queue_pairs = 1
queue_size = 2
rx_buf_size = 64
memory = "1M"
mtu = 68

[[step]]
kind = "start"
allow_error = true

[[step]]
kind = "traffic"
count = 50
size = 60
batch = 4096
allow_error = true

[[step]]
kind = "queue_pairs"
pairs = 65535
accept = false
allow_error = true

[[step]]
kind = "inject"
fault = "avail_index_jump"
allow_error = true

[[step]]
kind = "migrate"
allow_error = true
"#;
    let r = scenario::run(&parse_str(src, "extreme.toml").unwrap());
    assert!(
        r.error.as_deref().is_none_or(|e| !e.contains("panicked")),
        "{:?}",
        r.error
    );
    assert_eq!(r.steps.len(), 5);
}
