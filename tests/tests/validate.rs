//! The validator passes the healthy model and catches each injected HW bug in exactly the
//! check that owns it.

use bar_registers::LmLayout;
use device::{DeviceConfig, Quirk, Quirks};
use sim_harness::validate::{run, InProcess, Report, ValidateOptions, Verdict, GROUPS};

fn validate(quirks: Quirks, lm_layout: LmLayout, wraparound: bool) -> Report {
    let mut cfg = DeviceConfig::with_queue_pairs(2).lm_layout(lm_layout);
    cfg.quirks = quirks;
    run(
        &InProcess { cfg },
        &ValidateOptions {
            lm_layout,
            wraparound,
            ..Default::default()
        },
    )
    .expect("the built-in model opens")
}

fn owner(q: Quirk) -> &'static str {
    match q {
        Quirk::RingStateReadOnly | Quirk::StaleUsedIdx | Quirk::EarlyQueueDisable => {
            "vring-index-rw"
        }
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
            // Every group passes, ring-layout-packed included (VIRTIO_F_RING_PACKED is offered).
            assert_eq!(g.verdict, Verdict::Pass, "{id}:\n{}", r.table());
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
                assert_eq!(
                    g.verdict,
                    Verdict::Fail,
                    "{}: {} should fail:\n{}",
                    q.name(),
                    g.id,
                    r.table()
                );
                let f = g
                    .findings
                    .iter()
                    .find(|f| f.verdict == Verdict::Fail)
                    .expect("a failing finding");
                assert!(
                    !f.expected.is_empty() && !f.observed.is_empty(),
                    "{}: evidence names expected and observed",
                    q.name()
                );
            } else {
                assert!(
                    matches!(g.verdict, Verdict::Pass | Verdict::NotRun),
                    "{}: {} should not fail:\n{}",
                    q.name(),
                    g.id,
                    r.table()
                );
            }
        }
    }
}

#[test]
fn report_formats() {
    let r = validate(
        Quirks::NONE.with(Quirk::LogIgnoresEnd),
        LmLayout::Dpdk,
        false,
    );
    let j = r.json();
    let v: serde_json::Value = serde_json::from_str(&j).expect("the JSON report parses");
    assert_eq!(v["passed"], false, "{j}");
    let dirty = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == "dirty-log")
        .expect("dirty-log in the JSON report");
    assert_eq!(dirty["verdict"], "FAIL", "{j}");
    assert!(
        dirty["title"].is_string() && dirty["findings"].as_array().is_some_and(|f| !f.is_empty())
    );
    // Control characters in any string (a target's description, an observed value) are
    // escaped: the report stays valid JSON and round-trips.
    let odd = Report {
        target: "device \u{1}\u{7}\t\"x\"\\".into(),
        groups: Vec::new(),
        aborted: None,
    };
    let back: serde_json::Value = serde_json::from_str(&odd.json()).expect("still JSON");
    assert_eq!(back["target"], odd.target);
    let x = r.junit();
    assert!(
        x.starts_with("<?xml")
            && x.contains("<testsuite ")
            && x.trim_end().ends_with("</testsuite>"),
        "{x}"
    );
    assert_eq!(
        x.matches("<failure ").count(),
        r.groups
            .iter()
            .flat_map(|g| &g.findings)
            .filter(|f| f.verdict == Verdict::Fail)
            .count()
    );
    assert!(x.contains("classname=\"dirty-log\""));
    let t = r.table();
    assert!(
        t.contains("dirty-log")
            && t.contains("FAIL")
            && t.contains("expected")
            && t.contains("observed")
            && t.contains("RESULT: FAIL"),
        "{t}"
    );
}

/// The same checks through the vfio-user protocol: a served device, reached only by messages.
fn served(
    quirks: Quirks,
) -> (
    std::sync::Arc<sim_harness::serve::DeviceServer>,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
) {
    use sim_harness::serve::DeviceBackend;
    use sim_harness::vfio_user::server::{Server, ServerOptions};
    let mut cfg = DeviceConfig::with_queue_pairs(2);
    cfg.msix_owner = device::MsixOwner::Vmm;
    cfg.quirks = quirks;
    let dev = device::Device::new(cfg).unwrap();
    dev.set_loopback();
    let dir = std::env::temp_dir().join(format!(
        "vdpa-validate-{}-{}",
        std::process::id(),
        quirks.iter().count()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.sock");
    let server = std::sync::Arc::new(
        Server::bind(&path, DeviceBackend::new(dev), ServerOptions::default()).unwrap(),
    );
    let s = server.clone();
    let t = std::thread::spawn(move || {
        let _ = s.serve();
    });
    (server, path, t)
}

#[test]
fn validates_a_device_over_vfio_user() {
    for (quirks, failing) in [
        (Quirks::NONE, None),
        (
            Quirks::NONE.with(Quirk::LogSkipsUsedRing),
            Some("dirty-log"),
        ),
    ] {
        let (server, path, t) = served(quirks);
        let r = run(
            &sim_harness::validate::OverSocket { path: path.clone() },
            &ValidateOptions {
                wraparound: false,
                ..Default::default()
            },
        )
        .expect("the served device opens");
        server.stop_handle().trigger();
        let _ = std::os::unix::net::UnixStream::connect(&path);
        t.join().unwrap();
        assert!(r.target.contains("vfio-user"), "{}", r.target);
        for g in &r.groups {
            match failing {
                Some(id) if g.id == id => assert_eq!(g.verdict, Verdict::Fail, "{}", r.table()),
                _ => assert!(
                    matches!(g.verdict, Verdict::Pass | Verdict::NotRun),
                    "{}: {}",
                    g.id,
                    r.table()
                ),
            }
        }
        // No VMM hook over the socket: the announce request is reported as not run, not passed.
        let ga = r.group("guest-announce").unwrap();
        assert!(
            ga.findings
                .iter()
                .any(|f| f.verdict == Verdict::NotRun && f.name.contains("on request")),
            "{}",
            r.table()
        );
    }
}
