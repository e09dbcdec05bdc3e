//! Device profiles (docs/profiles.md): a device offers exactly its profile's features, real
//! drivers' negotiation works with the `ifcvf` profile, the validator reports and gates by
//! profile (in-process and over vfio-user), broken profile files are refused with the field
//! named, and a migration between different profiles is refused.

mod support;

use bar_registers::virtio::{bits, common, device_status as st, OFFERED_FEATURES};
use bar_registers::{Profile, REGION_BAR0};
use device::{Device, DeviceConfig, MsixOwner, RegionAccess};
use sim_harness::driver::DriverOptions;
use sim_harness::validate::{self, InProcess, OverSocket, ValidateOptions, Verdict};
use std::process::{Command, Output};
use std::sync::Arc;
use support::TestServer;

fn vdpa_emu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run vdpa-emu")
}

fn device(p: Profile) -> Arc<Device> {
    Device::new(DeviceConfig::with_queue_pairs(1).with_profile(p)).unwrap()
}

/// device_feature as a driver reads it: both 32-bit halves through device_feature_select.
fn read_device_features(dev: &Device) -> u64 {
    let base = dev.layout().block("common_cfg").unwrap().location;
    let bar_registers::model::Location::Bar(bar, off) = base else {
        panic!("common cfg is in a BAR")
    };
    assert_eq!(u32::from(bar), REGION_BAR0);
    let mut v = 0u64;
    for sel in [0u32, 1] {
        dev.region_write(
            bar.into(),
            off + common::DEVICE_FEATURE_SELECT,
            &sel.to_le_bytes(),
        )
        .unwrap();
        let mut b = [0u8; 4];
        dev.region_read(bar.into(), off + common::DEVICE_FEATURE, &mut b)
            .unwrap();
        v |= u64::from(u32::from_le_bytes(b)) << (32 * sel);
    }
    v
}

#[test]
fn each_builtin_profile_is_exactly_what_the_device_offers() {
    for p in Profile::builtins() {
        let dev = device(p.clone());
        assert_eq!(read_device_features(&dev), p.features, "{}", p.name);
        assert_eq!(dev.offered_features(), p.features, "{}", p.name);
        assert_eq!(dev.profile(), p);
    }
    // The ifcvf set, spelled out: Linux ifcvf_base.h IFCVF_SUPPORTED_FEATURES within the model.
    let want = [
        bits::MAC,
        bits::MRG_RXBUF,
        bits::STATUS,
        bits::VERSION_1,
        bits::ACCESS_PLATFORM,
    ]
    .iter()
    .fold(0u64, |m, b| m | 1 << b);
    assert_eq!(read_device_features(&device(Profile::ifcvf())), want);
    // A quirk still removes its bit from whatever the profile offers.
    let mut cfg = DeviceConfig::with_queue_pairs(1);
    cfg.quirks = cfg.quirks.with(device::Quirk::NoGuestAnnounce);
    let dev = Device::new(cfg).unwrap();
    assert_eq!(
        read_device_features(&dev),
        Profile::full().features & !(1 << bits::GUEST_ANNOUNCE)
    );
}

/// DPDK's ifc vDPA driver writes `negotiated & device features` (base/ifcvf.c
/// ifcvf_config_features, with the vhost-negotiated set a guest asked for): with the ifcvf
/// profile that is the ifcvf set, FEATURES_OK sticks and traffic flows. Writing the guest's
/// whole set without the mask is refused, so the mask is what makes it work.
#[test]
fn dpdk_style_negotiation_works_with_the_ifcvf_profile() {
    // What a Linux guest's virtio_net asks for through vhost: every bit the model knows plus
    // offloads and legacy bits the IFC VF does not have (CSUM, GUEST_CSUM, HOST_TSO4,
    // ANY_LAYOUT, ORDER_PLATFORM).
    let guest = OFFERED_FEATURES.iter().fold(0u64, |m, f| m | 1 << f.bit)
        | 1 << 0
        | 1 << 1
        | 1 << 11
        | 1 << 27
        | 1 << 36;
    let dev = device(Profile::ifcvf());
    dev.set_loopback();
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            features: guest,
            ..Default::default()
        },
    )
    .unwrap();
    drv.start().unwrap();
    assert_eq!(dev.negotiated_features(), guest & Profile::ifcvf().features);
    assert_eq!(dev.negotiated_features(), Profile::ifcvf().features);
    assert_eq!(dev.status() & st::FEATURES_OK, st::FEATURES_OK);
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
    let mac = drv.mac().unwrap();
    let sent: Vec<Vec<u8>> = (0..50u64)
        .map(|i| {
            sim_harness::frames::build(mac, mac, 0, i, 60 + (i as usize * 29) % 1400, &mut rng)
        })
        .collect();
    for f in &sent {
        assert_eq!(drv.send(0, &[f]).unwrap(), 1);
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(drv.recv(0).unwrap());
        if got.len() == sent.len() {
            break;
        }
    }
    assert_eq!(got, sent, "loopback frames come back byte-exact");
    drop(drv);

    // Without the mask: the device refuses FEATURES_OK for bits it does not offer.
    let dev = device(Profile::ifcvf());
    let d = sim_harness::driver::in_process(&dev, DriverOptions::default()).unwrap();
    let (bar, off) = match dev.layout().block("common_cfg").unwrap().location {
        bar_registers::model::Location::Bar(b, o) => (u32::from(b), o),
        _ => unreachable!(),
    };
    let w = |reg: u64, v: &[u8]| dev.region_write(bar, off + reg, v).unwrap();
    w(common::DEVICE_STATUS, &[0]);
    w(common::DEVICE_STATUS, &[st::ACKNOWLEDGE]);
    w(common::DEVICE_STATUS, &[st::ACKNOWLEDGE | st::DRIVER]);
    for sel in [0u32, 1] {
        w(common::DRIVER_FEATURE_SELECT, &sel.to_le_bytes());
        w(
            common::DRIVER_FEATURE,
            &((guest >> (32 * sel)) as u32).to_le_bytes(),
        );
    }
    w(
        common::DEVICE_STATUS,
        &[st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK],
    );
    assert_eq!(dev.status() & st::FEATURES_OK, 0, "unmasked set refused");
    drop(d);
}

#[test]
fn the_validator_reports_the_profile_and_does_not_run_what_it_lacks() {
    let mut cfg = DeviceConfig::with_queue_pairs(2).with_profile(Profile::ifcvf());
    cfg.msix_owner = MsixOwner::Device;
    let r = validate::run(
        &InProcess { cfg },
        &ValidateOptions {
            wraparound: false,
            ..Default::default()
        },
    )
    .unwrap();
    let t = r.table();
    assert!(r.passed(), "{t}");
    assert_eq!(r.profile.name, "ifcvf");
    assert_eq!(r.profile.from, "profile");
    for id in [
        "ring-layout-packed",
        "guest-announce",
        "rss",
        "checksum",
        "tso",
    ] {
        let g = r.group(id).unwrap();
        assert_eq!(g.verdict, Verdict::NotRun, "{t}");
        assert!(
            g.findings[0]
                .observed
                .contains("not offered by profile ifcvf"),
            "{t}"
        );
    }
    for f in &r.profile.features {
        let on = Profile::ifcvf().offers(f.bit);
        assert_eq!((f.profile, f.device), (on, on), "{}", f.name);
    }
    assert!(
        t.contains("profile ifcvf: expects features 0x300018020"),
        "{t}"
    );
    let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(j["profile"]["name"], "ifcvf");
    assert_eq!(
        j["profile"]["features"].as_array().unwrap().len(),
        OFFERED_FEATURES.len()
    );
}

/// Over vfio-user the validator did not create the device: without --profile the offered set
/// is read from it and the feature groups it lacks are NOT RUN; told to expect `full`, the
/// same device fails exactly where it falls short.
#[test]
fn over_a_socket_the_offered_set_is_read_or_checked_against_a_profile() {
    let mut cfg = DeviceConfig::with_queue_pairs(2).with_profile(Profile::ifcvf());
    cfg.msix_owner = MsixOwner::Vmm;
    let dev = Device::new(cfg).unwrap();
    dev.set_loopback();
    let srv = TestServer::with_device(dev);
    let o = ValidateOptions {
        wraparound: false,
        ..Default::default()
    };
    let mut target = OverSocket::new(srv.path());
    target.ctl = None;
    let r = validate::run(&target, &o).unwrap();
    let t = r.table();
    assert!(r.passed(), "{t}");
    assert_eq!(r.profile.from, "device");
    assert_eq!(
        r.profile.offered,
        format!("{:#x}", Profile::ifcvf().features)
    );
    let g = r.group("guest-announce").unwrap();
    assert_eq!(g.verdict, Verdict::NotRun, "{t}");
    assert!(
        g.findings[0].observed.contains("not offered by the device"),
        "{t}"
    );

    let r = validate::run(
        &target,
        &ValidateOptions {
            profile: Some(Profile::full()),
            ..o
        },
    )
    .unwrap();
    let t = r.table();
    assert!(!r.passed(), "{t}");
    for id in ["ring-layout-packed", "guest-announce", "feature-awareness"] {
        assert_eq!(r.group(id).unwrap().verdict, Verdict::Fail, "{id}: {t}");
    }
    assert!(t.contains("NOT OFFERED"), "{t}");
}

#[test]
fn a_broken_profile_file_is_refused_with_the_field_named() {
    let dir = support::temp_dir("vdpa-profile");
    for (text, needle) in [
        (
            "name = \"x\"\nfeatures = [\"VERSION_1\", \"MAC\", \"WARP_DRIVE\"]\n",
            "features[2]: unknown feature \"WARP_DRIVE\"",
        ),
        (
            "name = \"x\"\nfeatures = [\"VERSION_1\", \"MQ\"]\n",
            "VIRTIO_NET_F_MQ requires VIRTIO_NET_F_CTRL_VQ",
        ),
        (
            "name = \"x\"\nfeatures = [\"MAC\"]\n",
            "VERSION_1 is missing",
        ),
        (
            "name = \"x\"\nfeatures = [\"VERSION_1\"]\n[device]\nqueue_pairs = 64\n",
            "queue_pairs: 64 is out of range",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        for args in [
            vec!["profiles", p],
            vec!["validate", "--profile", p],
            vec!["serve", "--socket", "/nonexistent/x.sock", "--profile", p],
            vec!["migrate", "--profile", p],
        ] {
            let out = vdpa_emu(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(
                err.contains("bad.toml"),
                "{args:?}: the file is named: {err}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let out = vdpa_emu(&["validate", "--profile", "nonesuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("full, ifcvf"));
}

#[test]
fn a_migration_between_different_profiles_is_refused() {
    let out = vdpa_emu(&[
        "migrate",
        "--memory",
        "8M",
        "--profile",
        "full",
        "--dest-profile",
        "ifcvf",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("destination's profile ifcvf does not match the source's profile full")
            && err.contains("only the source offers VIRTIO_NET_F_CSUM,")
            && err.contains("VIRTIO_NET_F_MTU"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing ran");
    // The same profile on both sides migrates, and the report names it.
    let out = vdpa_emu(&[
        "migrate",
        "--memory",
        "8M",
        "--rate",
        "2000",
        "--profile",
        "ifcvf",
        "--dest-profile",
        "ifcvf",
        "--format",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["profile"], "ifcvf");
    assert_eq!(
        j["offered_features"],
        format!("{:#x}", Profile::ifcvf().features)
    );
}

#[test]
fn profiles_lists_and_shows() {
    let out = vdpa_emu(&["profiles"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(t.contains("full") && t.contains("ifcvf"), "{t}");
    let out = vdpa_emu(&["profiles", "ifcvf", "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let on: Vec<&str> = j["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["offered"] == true)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        on,
        [
            "VIRTIO_NET_F_MAC",
            "VIRTIO_NET_F_MRG_RXBUF",
            "VIRTIO_NET_F_STATUS",
            "VIRTIO_F_VERSION_1",
            "VIRTIO_F_ACCESS_PLATFORM"
        ]
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/profile-example.toml");
    let out = vdpa_emu(&["profiles", example]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.contains("queue_pairs = 2"), "{t}");
    // A parameter the profile fixes and the command line contradicts is an error.
    let out = vdpa_emu(&["validate", "--profile", example, "--queue-pairs", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "--queue-pairs 4 conflicts with profile example-nic, which fixes queue_pairs = 2"
    ));
}

#[test]
fn scenario_devices_take_a_profile() {
    use sim_harness::scenario::{parse_str, parse_str_with, run};
    let src = |profile: &str| {
        format!(
            r#"
[[device]]
{profile}
[[step]]
kind = "start"
[[step]]
kind = "traffic"
count = 20
[end]
expect = ["!features.mq", "features.mrg_rxbuf"]
"#
        )
    };
    let sc = parse_str(&src("profile = \"ifcvf\""), "p.toml").unwrap();
    assert_eq!(sc.devices[0].config.profile, Profile::ifcvf());
    let r = run(&sc);
    assert_eq!(
        r.verdict,
        sim_harness::scenario::Verdict::Pass,
        "{}",
        sim_harness::scenario::RunReport::new(vec![r.clone()]).table()
    );
    // Without the key the device is `full` (MQ negotiated), unless the command line overrides.
    let sc = parse_str(&src(""), "p.toml").unwrap();
    assert_eq!(sc.devices[0].config.profile, Profile::full());
    let sc = parse_str_with(&src(""), "p.toml", Some(&Profile::ifcvf())).unwrap();
    assert_eq!(sc.devices[0].config.profile, Profile::ifcvf());
    // An unknown profile, and a key that contradicts what the profile fixes, name their field.
    let e = parse_str(&src("profile = \"nope\""), "p.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("device[1].profile") && e.contains("unknown profile"),
        "{e}"
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/profile-example.toml");
    let e = parse_str(
        &src(&format!("profile = \"{example}\"\nqueue_pairs = 3")),
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("device[1].queue_pairs") && e.contains("fixes it to 2"),
        "{e}"
    );
}

/// Below the harness's up-front refusal, the destination device itself refuses a state whose
/// negotiated features it does not offer (a guest that negotiated MQ cannot land on an ifcvf
/// device), and leaves its own state untouched.
#[test]
fn a_device_refuses_a_state_negotiated_against_more_than_it_offers() {
    let src = device(Profile::full());
    src.set_loopback();
    let mut drv = sim_harness::driver::in_process(&src, DriverOptions::default()).unwrap();
    drv.start().unwrap();
    assert_ne!(src.negotiated_features() & (1 << bits::CTRL_VQ), 0);
    src.pause();
    let state = src.save_state();
    let dst = device(Profile::ifcvf());
    let e = dst.restore_state(&state).unwrap_err().to_string();
    assert!(e.contains("negotiated features"), "{e}");
    assert_eq!(dst.status(), 0, "the refused destination stays reset");
    // The same state lands on a device of the source's profile.
    let same = device(Profile::full());
    same.restore_state(&state).unwrap();
    assert_eq!(same.negotiated_features(), src.negotiated_features());
}

/// A profile assembled by hand (its fields are public) is checked when the device is created:
/// a clear error, no device.
#[test]
fn a_device_refuses_a_hand_made_profile_it_cannot_be() {
    let mut p = Profile::full();
    p.name = "broken".into();
    p.features &= !(1 << bits::CTRL_VQ);
    let e = Device::new(DeviceConfig::with_queue_pairs(1).with_profile(p))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("profile broken") && e.contains("requires VIRTIO_NET_F_CTRL_VQ"),
        "{e}"
    );
}
