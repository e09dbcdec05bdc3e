//! `vdpa-emu bench datapath` end to end, without timing anything: a tiny run against real
//! `serve` processes whose JSON must show traffic in every cell and device counters that
//! account for every frame the driver sent and received; and a run whose DPDK anchor cannot be
//! had, which must say so and print no ratio.

use bar_registers::virtio::bits;
use serde_json::Value;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args(["bench", "datapath"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run vdpa-emu")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a count in {v}"))
}

/// One cell: 64-byte TX on one split queue pair.
const ONE_CELL: [&str; 8] = [
    "--frame", "64", "--dir", "tx", "--qp", "1", "--layout", "split",
];

/// A short run without the anchor (0.2 s windows) of the cells `cells` picks; its JSON report.
fn tiny_json_report(cells: &[&str]) -> Value {
    let mut args = vec![
        "--no-dpdk",
        "--seconds",
        "0.2",
        "--warmup-ms",
        "50",
        "--json",
    ];
    args.extend_from_slice(cells);
    let out = bench(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn rounds_repeat_every_cell_and_summarize_each_once() {
    let r = tiny_json_report(&[
        "--frame",
        "64",
        "--dir",
        "tx",
        "--qp",
        "1",
        "--layout",
        "split,packed",
        "--rounds",
        "2",
    ]);
    assert_eq!(u(&r, "rounds"), 2);
    let cells = r["cells"].as_array().expect("cells");
    let rounds: Vec<(u64, &str)> = cells
        .iter()
        .map(|c| (u(c, "round"), c["layout"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rounds,
        [(0, "split"), (0, "packed"), (1, "split"), (1, "packed")],
        "round after round of the whole set"
    );
    let summary = r["summary"].as_array().expect("summary");
    assert_eq!(summary.len(), 2, "{summary:?}");
    for s in summary {
        assert_eq!(u(s, "rounds"), 2, "{s}");
        let (lo, med, hi) = (
            s["mpps_min"].as_f64().unwrap(),
            s["mpps_median"].as_f64().unwrap(),
            s["mpps_max"].as_f64().unwrap(),
        );
        assert!(lo <= med && med <= hi && hi > 0.0, "{s}");
        assert!(
            s["vs_dpdk_median"].is_null(),
            "a ratio without an anchor: {s}"
        );
    }
}

#[test]
fn tiny_run_counts_every_frame_in_every_cell() {
    let r = tiny_json_report(&[
        "--frame",
        "64,1500",
        "--dir",
        "tx,rx,loopback",
        "--qp",
        "1,2",
        "--layout",
        "split,packed",
    ]);
    assert!(
        r["anchor"]["missing"]
            .as_str()
            .is_some_and(|m| m.contains("--no-dpdk")),
        "{}",
        r["anchor"]
    );
    assert_eq!(r["anchor"]["runs"].as_array().map(Vec::len), Some(0));
    let cells = r["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 2 * 3 * 2 * 2);
    let mut seen = std::collections::BTreeSet::new();
    for c in cells {
        let dir = c["dir"].as_str().unwrap();
        seen.insert((
            dir.to_string(),
            u(c, "frame"),
            u(c, "queue_pairs"),
            c["layout"].as_str().unwrap().to_string(),
        ));
        // Traffic flowed (counted over the whole cell, drain included: how much fits in the
        // 0.2 s window depends on the machine's load, which this test does not judge).
        assert!(
            u(c, "driver_sent") + u(c, "driver_received") > 0,
            "no traffic: {c}"
        );
        assert!(u(c, "window_frames") <= u(c, "driver_sent").max(u(c, "driver_received")));
        assert!(c["vs_dpdk"].is_null(), "a ratio without an anchor: {c}");
        assert_eq!(u(c, "lost"), 0, "{c}");
        assert!(c["fault"].is_null(), "{c}");
        // The anchor's feature set: no GUEST_CSUM (testpmd enables no RX checksum offload),
        // and the cell's own ring layout.
        let f = c["features"]
            .as_str()
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .expect("negotiated features, hex");
        assert_eq!(f & (1 << bits::GUEST_CSUM), 0, "{c}");
        assert_eq!(
            f & (1 << bits::RING_PACKED) != 0,
            c["layout"] == "packed",
            "{c}"
        );
        let d = &c["device"];
        let (sent, received) = (u(c, "driver_sent"), u(c, "driver_received"));
        // What the device counted agrees with what the driver did, frame for frame.
        match dir {
            "tx" => {
                assert!(sent > 0);
                assert_eq!(u(d, "tx_frames"), sent, "{c}");
                assert_eq!(u(d, "tx_port_drops"), 0, "{c}");
                assert_eq!(received, 0, "{c}");
            }
            "rx" => {
                assert!(received > 0);
                assert_eq!(u(d, "rx_frames"), received, "{c}");
                assert_eq!(sent, 0, "{c}");
            }
            "loopback" => {
                assert!(received > 0);
                assert_eq!(u(d, "tx_frames") + u(d, "tx_port_drops"), sent, "{c}");
                assert_eq!(u(d, "rx_frames"), received, "{c}");
                assert_eq!(u(d, "tx_frames"), received, "{c}");
            }
            other => panic!("direction {other}"),
        }
        // Doorbells came through the shared-memory notify page, not trapped writes.
        assert!(u(d, "doorbells") > 0, "{c}");
        assert_eq!(u(d, "doorbells_mmap"), u(d, "doorbells"), "{c}");
        // serve's own session line saw the same frames.
        let s = &c["session"];
        assert_eq!(u(s, "tx_frames"), u(d, "tx_frames"), "{c}");
        assert_eq!(u(s, "rx_frames"), u(d, "rx_frames"), "{c}");
        // The engine handled the kicks: busy, but for no more than the whole session, and
        // the cell carries its time per frame.
        let (busy, cpu) = (s["engine_busy_ms"].as_f64(), s["engine_cpu_ms"].as_f64());
        let (busy, cpu) = (busy.expect("engine_busy_ms"), cpu.expect("engine_cpu_ms"));
        assert!(busy > 0.0, "{c}");
        // wall_s is rounded to whole seconds.
        let wall_ms = s["wall_s"].as_f64().expect("wall_s") * 1e3;
        assert!(busy <= wall_ms + 1e3, "{c}");
        assert!(cpu > 0.0, "{c}");
        let per_frame = c["engine_busy_us_per_frame"].as_f64().expect("per frame");
        assert_eq!(
            Some(per_frame),
            s["engine_busy_us_per_frame"].as_f64(),
            "{c}"
        );
        assert!(per_frame > 0.0, "{c}");
    }
    assert_eq!(seen.len(), cells.len(), "every cell once");
}

#[test]
fn a_missing_dpdk_is_reported_and_never_a_ratio() {
    let dir = std::env::temp_dir().join(format!("vdpa-emu-test-nodpdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("bench-dpdk.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'bench-dpdk: no dpdk-testpmd here (test)' >&2\nexit 1\n",
    )
    .unwrap();
    let args = |json: bool| {
        let mut a = vec![
            "--dpdk-script",
            script.to_str().unwrap(),
            "--seconds",
            "0.1",
            "--warmup-ms",
            "20",
        ];
        a.extend_from_slice(&ONE_CELL);
        if json {
            a.push("--json");
        }
        a
    };
    let out = bench(&args(false));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("anchor: MISSING, no ratios:")
            && text.contains("no dpdk-testpmd here (test)"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("tx "))
        .unwrap_or_else(|| panic!("no tx row: {text}"));
    // Columns: dir frame qp ring Mpps Gbit/s "DPDK Mpps" "vs DPDK" ...: both anchor columns empty.
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cols[6], cols[7]), ("-", "-"), "{row}");

    let out = bench(&args(true));
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(r["anchor"]["testpmd"].is_null());
    assert!(
        r["anchor"]["missing"]
            .as_str()
            .is_some_and(|m| m.contains("no dpdk-testpmd here (test)")),
        "{}",
        r["anchor"]
    );
    assert!(r["cells"][0]["vs_dpdk"].is_null());
    assert!(u(&r["cells"][0], "driver_sent") > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    for (args, needle) in [
        (&["--frame", "20"][..], "frame size 20"),
        (&["--seconds", "0"][..], "--seconds"),
        (
            &["--dir", "sideways"][..],
            "expected tx, rx, rx-unix or loopback",
        ),
        (&["--layout", "ring"][..], "expected split or packed"),
        (&["--qp", "0"][..], "qp"),
        (&["--rounds", "0"][..], "rounds"),
        (&["--rounds", "21"][..], "rounds"),
    ] {
        let mut a = vec!["--no-dpdk"];
        a.extend_from_slice(args);
        let out = bench(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn pinned_windows_sample_the_distance_between_the_two_cpus() {
    let pinned_tx64 = |probe_ms: &str| {
        let mut a = ONE_CELL.to_vec();
        a.extend_from_slice(&["--pin", "--c2c-probe-ms", probe_ms]);
        tiny_json_report(&a)
    };
    let r = pinned_tx64("20");
    let c = &r["cells"][0];
    let p = &c["placement"];
    let samples = p["samples_ns"].as_array().expect("samples_ns");
    // A 0.2 s window sampled every 20 ms (a sample the partner thread did not answer within
    // 5 ms is counted instead).
    assert!(
        samples.len() + p["unanswered"].as_u64().unwrap() as usize >= 4,
        "{p}"
    );
    assert!(!samples.is_empty(), "{p}");
    for s in samples {
        let ns = s.as_f64().unwrap();
        assert!(ns > 1.0 && ns < 50_000.0, "{p}");
    }
    let far = p["far_percent"].as_f64().expect("classified");
    assert!((0.0..=100.0).contains(&far), "{p}");
    assert!(r["far_ns"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        !r["calibration"]["samples_ns"]
            .as_array()
            .unwrap()
            .is_empty(),
        "sampled before the first window: {r}"
    );
    let attempts = c["attempts"].as_u64().unwrap();
    assert!((1..=3).contains(&attempts), "--placement-retries 2: {c}");
    assert_eq!(r["retried"].as_u64().unwrap(), attempts - 1, "{r}");
    // No anchor: no ratio, so no claim about the anchor's placement.
    assert!(c["placement_alike"].is_null(), "{c}");

    // --c2c-probe-ms 0 turns it off.
    let r = pinned_tx64("0");
    assert!(r["cells"][0]["placement"].is_null(), "{r}");
    assert!(r["far_ns"].is_null(), "{r}");
}
