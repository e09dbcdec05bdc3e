//! `vdpa-emu registers`: the datasheet export does what its help says, in every format.

use std::process::Command;

fn registers(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .arg("registers")
        .args(args)
        .output()
        .expect("run vdpa-emu registers")
}

#[test]
fn default_output_is_the_committed_datasheet() {
    let out = registers(&[]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/registers.md"))
            .unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "docs/registers.md is stale: run `make docs`"
    );
}

#[test]
fn formats_sizes_and_layouts() {
    let out = registers(&[
        "--format",
        "json",
        "--queue-pairs",
        "8",
        "--lm-layout",
        "linux",
    ]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["queue_pairs"], 8);
    assert_eq!(j["num_queues"], 17);
    assert_eq!(j["lm_layouts"], serde_json::json!(["linux"]));
    let lm: Vec<_> = j["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["id"] == "lm")
        .collect();
    assert_eq!(lm.len(), 1);
    assert_eq!(lm[0]["lm_layout"], "linux");
    assert!(lm[0]["registers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "vq_state[16]"));

    let out = registers(&["--format", "c-header", "--queue-pairs", "3"]);
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap();
    assert!(
        h.contains("#ifndef VDPA_EMU_REGS_H") && h.contains("#define VDPA_EMU_QUEUE_PAIRS 3\n")
    );
    assert!(
        h.contains("--format c-header --queue-pairs 3`"),
        "the header says how it was made"
    );

    let out = registers(&[
        "--format",
        "markdown",
        "--queue-pairs",
        "3",
        "--lm-layout",
        "dpdk",
    ]);
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(
        md.contains("ring_state[6]") && !md.contains("Linux layout"),
        "{md}"
    );
}

#[test]
fn bad_arguments_are_errors() {
    for (args, needle) in [
        (
            &["--queue-pairs", "0"][..],
            "queue pairs must be 1..=32, got 0",
        ),
        (&["--queue-pairs", "33"][..], "got 33"),
        (&["--lm-layout", "bsd"][..], "unknown LM layout"),
        (&["--format", "pdf"][..], "invalid value 'pdf'"),
    ] {
        let out = registers(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing half-printed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
