//! `migrate` at scale: guest RAM is allocated lazily on both sides, so a guest far larger than
//! its working set migrates with a resident set far below its RAM, every page accounted for
//! (sent with data or as a zero page), and the copy verified. Run as a child process so that
//! the peak RSS (VmHWM) measured is the migration's alone.

use std::process::Command;

#[test]
fn a_big_sparse_guest_migrates_with_a_small_resident_set() {
    const MEMORY: u64 = 8 << 30;
    let out = Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args([
            "migrate",
            "--memory",
            "8G",
            "--queue-pairs",
            "4",
            "--format",
            "json",
        ])
        .env("RUST_LOG", "error")
        .output()
        .expect("run vdpa-emu");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(j["clean"], true, "{j}");
    assert_eq!(j["memory_mismatch_pages"], 0, "{j}");
    assert_eq!(j["missed_dirty_pages"], 0, "{j}");
    assert_eq!(j["memory_bytes"], MEMORY);
    // Every page of the 8 GiB was sent by the bulk copy; nearly all as zero pages.
    let bulk = j["pages_per_round"][0].as_u64().unwrap();
    assert_eq!(bulk, MEMORY / 4096, "{j}");
    let zero = j["zero_pages"].as_u64().unwrap();
    assert!(zero > bulk * 99 / 100, "{zero} zero pages of {bulk}");
    // The process never held more than a sliver of the guest (the old copy held it twice).
    let rss = j["peak_rss_bytes"].as_u64().unwrap();
    assert!(
        rss > 0 && rss < 256 << 20,
        "peak RSS {rss} B for 8 GiB of guest RAM"
    );
    for side in ["source_resident_bytes", "destination_resident_bytes"] {
        let b = j[side].as_u64().unwrap();
        assert!(b > 0 && b < 64 << 20, "{side}: {b} B");
    }
    // A guest this quiet fits the default 300 ms limit.
    assert_eq!(j["stops"][0]["reason"], "downtime_fits", "{j}");
    assert!(err.contains("stage 1: 2097152 pages sent"), "{err}");
}
