//! The validator passes the healthy model and catches each injected HW bug in exactly the
//! check that owns it.

use bar_registers::LmLayout;
use device::{DeviceConfig, Quirk, Quirks};
use sim_harness::validate::{
    owning_group, posted::PostedInProcess, run, InProcess, Report, ValidateOptions, Verdict, GROUPS,
};

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
        assert_caught_exactly(&r, q);
    }
}

/// `q`'s owning group fails with evidence, and no other group fails.
fn assert_caught_exactly(r: &Report, q: Quirk) {
    assert!(!r.passed(), "{} not caught:\n{}", q.name(), r.table());
    for g in &r.groups {
        if g.id == owning_group(q) {
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

/// The ring-reset and notification-data groups on their own: both ring layouts checked on the
/// healthy model, and each group's quirk fails it with the finding that names the bug.
#[test]
fn ring_reset_and_notification_data_groups_pass_healthy_and_catch_their_quirk() {
    let groups = ["ring-reset".to_string(), "notification-data".to_string()];
    let run = |q: Option<Quirk>| {
        let mut cfg = DeviceConfig::with_queue_pairs(2);
        cfg.quirks = q.map_or(Quirks::NONE, |q| Quirks::NONE.with(q));
        sim_harness::validate::run_groups(&InProcess { cfg }, &ValidateOptions::default(), &groups)
            .expect("the built-in model opens")
    };
    let r = run(None);
    for id in &groups {
        let g = r.group(id).unwrap();
        assert_eq!(g.verdict, Verdict::Pass, "{}", r.table());
        for layout in ["split", "packed"] {
            assert!(
                g.findings
                    .iter()
                    .any(|f| f.name.starts_with(layout) && f.verdict == Verdict::Pass),
                "{id}: {layout} checked:\n{}",
                r.table()
            );
        }
    }
    let failed = |r: &Report, id: &str, name: &str| {
        r.group(id)
            .unwrap()
            .findings
            .iter()
            .any(|f| f.verdict == Verdict::Fail && f.name.contains(name))
    };
    let r = run(Some(Quirk::RingResetKeepsState));
    assert!(
        failed(&r, "ring-reset", "ring state back to its default"),
        "{}",
        r.table()
    );
    assert_eq!(r.group("notification-data").unwrap().verdict, Verdict::Pass);
    let r = run(Some(Quirk::NotificationDataVqnFromHighBits));
    assert!(
        failed(&r, "notification-data", "traffic flows"),
        "{}",
        r.table()
    );
    assert_eq!(r.group("ring-reset").unwrap().verdict, Verdict::Pass);
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
        profile: Default::default(),
        target: "device \u{1}\u{7}\t\"x\"\\".into(),
        groups: Vec::new(),
        aborted: None,
        hints: vec!["a \u{1} hint".into()],
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
    served_with(quirks, true, "")
}

fn served_with(
    quirks: Quirks,
    offer_packed: bool,
    tag: &str,
) -> (
    std::sync::Arc<sim_harness::serve::DeviceServer>,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
) {
    served_layout(quirks, offer_packed, tag, LmLayout::Dpdk)
}

fn served_layout(
    quirks: Quirks,
    offer_packed: bool,
    tag: &str,
    lm: LmLayout,
) -> (
    std::sync::Arc<sim_harness::serve::DeviceServer>,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
) {
    use sim_harness::serve::DeviceBackend;
    use sim_harness::vfio_user::server::{Server, ServerOptions};
    let mut cfg = DeviceConfig::with_queue_pairs(2).lm_layout(lm);
    cfg.msix_owner = device::MsixOwner::Vmm;
    cfg.quirks = quirks;
    if !offer_packed {
        cfg.profile = cfg.profile.without_packed();
    }
    let dev = device::Device::new(cfg).unwrap();
    dev.set_loopback();
    let dir = std::env::temp_dir().join(format!(
        "vdpa-validate-{}-{}{tag}",
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

/// Removes the directory [`served_layout`] made for the socket at `path`, once its server is
/// stopped (a failing test leaves it, with the socket, for a look).
fn remove_socket_dir(path: &std::path::Path) {
    let dir = path.parent().expect("the socket lies in its own directory");
    std::fs::remove_dir_all(dir).unwrap();
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
        let r = validate_socket(&path).expect("the served device opens");
        // One connection for the whole run, the device reset between groups.
        assert_eq!(server.stats().accepted, 1, "{}", r.table());
        server.stop_handle().trigger();
        let _ = std::os::unix::net::UnixStream::connect(&path);
        t.join().unwrap();
        remove_socket_dir(&path);
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

/// Every group but the wrap-around against the served device at `path`.
fn validate_socket(path: &std::path::Path) -> Result<Report, sim_harness::validate::ValidateError> {
    run(
        &sim_harness::validate::OverSocket::new(path),
        &ValidateOptions {
            wraparound: false,
            ..Default::default()
        },
    )
}

fn stop(
    server: &sim_harness::serve::DeviceServer,
    path: &std::path::Path,
    t: std::thread::JoinHandle<()>,
) {
    server.stop_handle().trigger();
    let _ = std::os::unix::net::UnixStream::connect(path);
    t.join().unwrap();
    remove_socket_dir(path);
}

/// A device that presents the other LM layout fails the LM checks, and the report names the
/// layout as the likely cause; a device with a real LM bug gets no such hint.
#[test]
fn a_layout_mismatch_is_named_as_the_likely_cause() {
    for (quirks, tag, hinted) in [
        (Quirks::NONE, "-linux", true),
        (
            Quirks::NONE.with(Quirk::StaleUsedIdx),
            "-linux-stale",
            false,
        ),
    ] {
        let (server, path, t) = served_layout(quirks, true, tag, LmLayout::Linux);
        let r = validate_socket(&path).unwrap();
        let accepted = server.stats().accepted;
        stop(&server, &path, t);
        assert!(!r.passed(), "{}", r.table());
        assert_eq!(accepted, 1, "the hint runs in the same session");
        let table = r.table();
        if hinted {
            assert_eq!(r.hints.len(), 1, "{table}");
            assert!(
                r.hints[0].contains("--lm-layout linux") && r.hints[0].contains("vring-index-rw"),
                "{table}"
            );
            assert!(table.contains("hint: "), "{table}");
            let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
            assert_eq!(j["hints"][0], r.hints[0]);
        } else {
            assert!(r.hints.is_empty(), "{table}");
        }
    }
}

/// `reconnect_per_group` keeps the old behaviour: a connection per group that runs.
#[test]
fn reconnect_per_group_opens_a_session_per_group() {
    let (server, path, t) = served_with(Quirks::NONE, true, "-reconnect");
    let groups: Vec<String> = ["pci-structure", "feature-awareness", "reset"]
        .map(String::from)
        .into();
    let r = sim_harness::validate::run_groups(
        &sim_harness::validate::OverSocket::new(path.clone()),
        &ValidateOptions {
            wraparound: false,
            reconnect_per_group: true,
            ..Default::default()
        },
        &groups,
    )
    .unwrap();
    let accepted = server.stats().accepted;
    stop(&server, &path, t);
    assert!(r.passed(), "{}", r.table());
    assert_eq!(accepted, 3, "{}", r.table());
}

/// A device that does not offer the packed ring: that group is NOT RUN with the reason, the
/// others pass, the run passes (exit 0), and the summary counts it.
#[test]
fn a_group_the_device_cannot_take_part_in_is_not_run() {
    let (server, path, t) = served_with(Quirks::NONE, false, "-nopacked");
    let r = sim_harness::validate::run_groups(
        &sim_harness::validate::OverSocket::new(path.clone()),
        &ValidateOptions {
            wraparound: false,
            ..Default::default()
        },
        &["pci-structure".into(), "ring-layout-packed".into()],
    )
    .unwrap();
    stop(&server, &path, t);
    let g = r.group("ring-layout-packed").unwrap();
    assert_eq!(g.verdict, Verdict::NotRun, "{}", r.table());
    assert!(
        g.findings[0]
            .observed
            .contains("VIRTIO_F_RING_PACKED not offered"),
        "{}",
        r.table()
    );
    assert_eq!(r.exit_code(), sim_harness::validate::EXIT_PASS);
    assert_eq!(r.group_counts().not_run, 1);
    assert!(r.table().contains("1 NOT RUN"), "{}", r.table());
    let x = r.junit();
    assert!(x.contains("<skipped message=\"NOT RUN: "), "{x}");
}

/// The device goes away part-way: the run ends at once, the rest is NOT RUN (never FAIL), and
/// the exit code says the validator could not drive the device (2), not that it failed (1).
#[test]
fn losing_the_device_mid_run_aborts_with_exit_2() {
    let (server, path, t) = served_with(Quirks::NONE, true, "-lost");
    let s2 = server.clone();
    // Stop the server once the run is well into the groups after pci-structure.
    let killer = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while s2.stats().messages < 3000 && t0.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        s2.stop_handle().trigger();
    });
    let t0 = std::time::Instant::now();
    let r = validate_socket(&path).unwrap();
    killer.join().unwrap();
    let _ = std::os::unix::net::UnixStream::connect(&path);
    t.join().unwrap();
    remove_socket_dir(&path);
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    assert!(r.aborted.is_some(), "{}", r.table());
    assert_eq!(r.exit_code(), sim_harness::validate::EXIT_UNREACHABLE);
    assert!(!r.passed());
    assert_eq!(r.group("pci-structure").unwrap().verdict, Verdict::Pass);
    assert_eq!(
        r.group("reset").unwrap().verdict,
        Verdict::NotRun,
        "{}",
        r.table()
    );
    for g in &r.groups {
        assert_ne!(g.verdict, Verdict::Fail, "{}: {}", g.id, r.table());
    }
    assert!(r.table().contains("RESULT: INCOMPLETE"), "{}", r.table());
    assert!(r.junit().contains("<error message="), "{}", r.junit());
}

/// The socket is not there: an error at once, no report, no retry loop.
#[test]
fn an_absent_socket_is_an_error_within_a_second() {
    let t0 = std::time::Instant::now();
    let e = run(
        &sim_harness::validate::OverSocket::new(
            std::env::temp_dir().join(format!("vdpa-none-{}.sock", std::process::id())),
        ),
        &ValidateOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("vdpa-none-"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(1));
}

/// A server that accepts and never answers: unreachable within the reply timeout, not a hang.
#[test]
fn a_server_that_never_answers_is_unreachable_within_the_timeout() {
    let path = std::env::temp_dir().join(format!("vdpa-mute-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let t0 = std::time::Instant::now();
    let mut target = sim_harness::validate::OverSocket::new(path.clone());
    target.reply_timeout = std::time::Duration::from_millis(300);
    let e = run(&target, &ValidateOptions::default()).unwrap_err();
    assert!(e.to_string().contains("handshake"), "{e}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
    drop(held.join().unwrap());
    let _ = std::fs::remove_file(&path);
}

/// The built-in model behind doorbells that land `lag` after their write returned
/// ([`PostedInProcess`]), validated in full.
fn validate_posted(quirks: Quirks, lag_us: u64) -> Report {
    let mut cfg = DeviceConfig::with_queue_pairs(2);
    cfg.quirks = quirks;
    let lag = std::time::Duration::from_micros(lag_us);
    run(&PostedInProcess { cfg, lag }, &ValidateOptions::default()).expect("the model opens")
}

/// A guest's VFIO driver writes the doorbells of a device served over vfio-user posted (QEMU
/// sends BAR writes with NO_REPLY), and a CPU's MMIO writes to real silicon are posted too: the
/// write returns before the device has acted on it. The healthy model behind such doorbells
/// must pass as it does inline. Before the checks waited for the device, it failed four: the
/// 2^16 wrap (the roundtrip got a packet buffer ahead of its RX refills: 6,048 frames
/// dropped), the packed used descriptors (read before they were written) and the dirty log
/// (memory compared before the device wrote).
#[test]
fn healthy_model_passes_with_posted_doorbells() {
    for lag_us in [0, 2000] {
        let r = validate_posted(Quirks::NONE, lag_us);
        assert!(r.passed(), "doorbells {lag_us} us late:\n{}", r.table());
    }
}

/// Waiting for a late device must not let a broken one through: every quirk still fails
/// exactly its check behind posted doorbells.
#[test]
fn each_quirk_fails_exactly_its_check_with_posted_doorbells() {
    for q in Quirk::ALL {
        assert_caught_exactly(&validate_posted(Quirks::NONE.with(q), 500), q);
    }
}
