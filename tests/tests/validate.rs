//! The validator passes the healthy model and catches each injected HW bug in exactly the
//! check that owns it.

use bar_registers::LmLayout;
use device::{DeviceConfig, Quirk, Quirks};
use sim_harness::validate::{run, InProcess, Report, ValidateOptions, Verdict, GROUPS};

fn validate(quirks: Quirks, lm_layout: LmLayout, wraparound: bool) -> Report {
    let mut cfg = DeviceConfig::with_queue_pairs(2).lm_layout(lm_layout);
    cfg.quirks = quirks;
    run(&InProcess { cfg }, &ValidateOptions { lm_layout, wraparound, ..Default::default() })
}

fn owner(q: Quirk) -> &'static str {
    match q {
        Quirk::RingStateReadOnly | Quirk::StaleUsedIdx | Quirk::EarlyQueueDisable => "vring-index-rw",
        Quirk::LogSkipsUsedRing | Quirk::LogIgnoresEnd => "dirty-log",
        Quirk::IgnoresEventIdx => "feature-awareness",
        Quirk::NoGuestAnnounce => "guest-announce",
        Quirk::SplitRingUsedLenWrong => "ring-layout-split",
    }
}

#[test]
fn healthy_model_passes_every_must_check_in_both_layouts() {
    for layout in [LmLayout::Dpdk, LmLayout::Linux] {
        let r = validate(Quirks::NONE, layout, layout == LmLayout::Dpdk);
        assert!(r.passed(), "{}", r.table());
        for &(id, _) in GROUPS {
            let g = r.group(id).expect("every group reported");
            let want = if id == "ring-layout-packed" { Verdict::Skip } else { Verdict::Pass };
            assert_eq!(g.verdict, want, "{id}:\n{}", r.table());
            assert!(!g.findings.is_empty(), "{id} has findings");
        }
    }
}

#[test]
fn each_quirk_fails_exactly_its_check() {
    for q in Quirk::ALL {
        let r = validate(Quirks::NONE.with(q), LmLayout::Dpdk, true);
        assert!(!r.passed(), "{} not caught:\n{}", q.name(), r.table());
        for g in &r.groups {
            if g.id == owner(q) {
                assert_eq!(g.verdict, Verdict::Fail, "{}: {} should fail:\n{}", q.name(), g.id, r.table());
                let f = g.findings.iter().find(|f| f.verdict == Verdict::Fail).expect("a failing finding");
                assert!(!f.expected.is_empty() && !f.observed.is_empty(), "{}: evidence names expected and observed", q.name());
            } else {
                assert!(matches!(g.verdict, Verdict::Pass | Verdict::Skip), "{}: {} should not fail:\n{}", q.name(), g.id, r.table());
            }
        }
    }
}

#[test]
fn report_formats() {
    let r = validate(Quirks::NONE.with(Quirk::LogIgnoresEnd), LmLayout::Dpdk, false);
    let j = r.json();
    assert!(j.starts_with('{') && j.ends_with('}') && j.contains("\"passed\":false") && j.contains("\"id\":\"dirty-log\",\"title\""), "{j}");
    let x = r.junit();
    assert!(x.starts_with("<?xml") && x.contains("<testsuite ") && x.trim_end().ends_with("</testsuite>"), "{x}");
    assert_eq!(x.matches("<failure ").count(), r.groups.iter().flat_map(|g| &g.findings).filter(|f| f.verdict == Verdict::Fail).count());
    assert!(x.contains("classname=\"dirty-log\""));
    let t = r.table();
    assert!(t.contains("dirty-log") && t.contains("FAIL") && t.contains("expected") && t.contains("observed") && t.contains("RESULT: FAIL"), "{t}");
}
