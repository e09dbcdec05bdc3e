//! The command line refuses what it cannot honour, up front, with the reason, and offers
//! completions and man pages generated from the same definitions.

use std::process::{Command, Output};

fn vdpa_emu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run vdpa-emu")
}

#[test]
fn zero_and_out_of_range_counts_are_errors_everywhere() {
    for (args, needle) in [
        (
            &["demo", "--queue-pairs", "0"][..],
            "queue pairs must be 1..=32",
        ),
        (&["demo", "--frames", "0"][..], "--frames"),
        (
            &["serve", "--socket", "/tmp/x.sock", "--queue-pairs", "0"][..],
            "queue pairs must be 1..=32",
        ),
        (
            &["migrate", "--queue-pairs", "0"][..],
            "queue pairs must be 1..=32",
        ),
        (
            &["migrate", "--queue-pairs", "33"][..],
            "queue pairs must be 1..=32",
        ),
        (&["migrate", "--count", "0"][..], "--count"),
        (&["migrate", "--max-rounds", "0"][..], "--max-rounds"),
        (
            &["migrate", "--memory", "67108964"][..],
            "non-zero multiple of 4 KiB",
        ),
        (
            &["migrate", "--max-downtime", "2000001"][..],
            "--max-downtime",
        ),
        (
            &["migrate", "--max-downtime", "10", "--dirty-threshold", "5"][..],
            "cannot be used with",
        ),
        (
            &["migrate", "--log-granularity", "3000"][..],
            "power of two of at least 4K",
        ),
        (
            &["migrate", "--log-granularity", "2K"][..],
            "power of two of at least 4K",
        ),
        (
            &["registers", "--queue-pairs", "0"][..],
            "queue pairs must be 1..=32",
        ),
    ] {
        let out = vdpa_emu(args);
        assert_eq!(out.status.code(), Some(2), "{args:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing ran");
    }
}

#[test]
fn migrate_says_when_pre_copy_did_not_converge() {
    // A zero downtime limit only an empty dirty set meets, and a threshold of 0 pages no round
    // can get under: the round limit ends pre-copy.
    for stop in [["--max-downtime", "0"], ["--dirty-threshold", "0"]] {
        let out = vdpa_emu(&[
            "migrate",
            "--memory",
            "8M",
            "--max-rounds",
            "2",
            "--rate",
            "0",
            stop[0],
            stop[1],
            "--format",
            "json",
        ]);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(j["unconverged"], 1, "{j}");
        assert_eq!(j["rounds"], 2, "{j}");
        assert_eq!(j["stops"][0]["reason"], "round_limit", "{j}");
        assert_eq!(j["clean"], true, "{j}");
    }
    let out = vdpa_emu(&[
        "migrate",
        "--memory",
        "8M",
        "--max-rounds",
        "2",
        "--rate",
        "0",
        "--max-downtime",
        "0",
    ]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("did not converge") && t.contains("hit the round limit"),
        "{t}"
    );
    assert!(t.contains("max downtime 0 ms"), "{t}");
    // --plot writes the timeline: one panel per migration, the downtime labelled.
    let svg = std::env::temp_dir().join(format!("vdpa-emu-plot-{}.svg", std::process::id()));
    let out = vdpa_emu(&[
        "migrate",
        "--memory",
        "8M",
        "--count",
        "2",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.matches(">migration ").count() == 2,
        "{text}"
    );
    assert_eq!(text.matches(">downtime ").count(), 2);
    // Each panel shows the decision that stopped pre-copy, against the default limit.
    assert_eq!(text.matches("stroke-dasharray").count(), 2, "{text}");
    assert_eq!(
        text.matches("&lt; 300 ms limit</text>").count(),
        2,
        "{text}"
    );
    // A forced stop is drawn as one.
    let out = vdpa_emu(&[
        "migrate",
        "--memory",
        "8M",
        "--max-rounds",
        "2",
        "--rate",
        "0",
        "--max-downtime",
        "0",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("stop after round 2:") && text.contains("round limit: did not converge"),
        "{text}"
    );
    let _ = std::fs::remove_file(&svg);
    // The default limit converges on a small, lightly loaded guest.
    let out = vdpa_emu(&["migrate", "--memory", "8M", "--rate", "1000"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("converged                yes"), "{t}");
    assert!(t.contains("fits the 300 ms limit"), "{t}");
}

#[test]
fn migrate_refuses_memory_the_machine_cannot_hold() {
    // Guest RAM is lazy, so memory is not what a huge --memory runs out of: the address space
    // for its four mappings is (x86-64 and arm64 user space: at most 128 or 256 TiB).
    let out = vdpa_emu(&["migrate", "--memory", "100000G"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--memory 102400000 MiB needs 409600000 MiB of address space")
            && err.contains("mapped 4 times"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn completions_and_man_pages() {
    let out = vdpa_emu(&["completions", "bash"]);
    assert!(out.status.success());
    let bash = String::from_utf8(out.stdout).unwrap();
    for sub in ["serve", "validate", "migrate", "registers", "scenario"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert_eq!(vdpa_emu(&["completions", "tcsh"]).status.code(), Some(2));
    let dir = std::env::temp_dir().join(format!("vdpa-emu-man-{}", std::process::id()));
    let out = vdpa_emu(&["man", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "vdpa-emu.1",
        "vdpa-emu-serve.1",
        "vdpa-emu-validate.1",
        "vdpa-emu-scenario-run.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let serve = std::fs::read_to_string(dir.join("vdpa-emu-serve.1")).unwrap();
    assert!(
        serve.contains("socket"),
        "the serve page documents its options"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scenario_run_of_nothing_is_an_error_and_a_missing_file_is_not_found() {
    let empty = std::env::temp_dir().join(format!("vdpa-emu-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not a scenario").unwrap();
    let out = vdpa_emu(&["scenario", "run", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no scenario files (*.toml)"), "{err}");
    let missing = empty.join("missing.toml");
    let out = vdpa_emu(&["scenario", "run", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.toml: not found") && !err.contains("malformed"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no report of a run that did not happen"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn progress_is_a_bar_on_a_terminal_and_lines_otherwise() {
    // Not a terminal: one plain line per stage, prefixed with the migration.
    let out = vdpa_emu(&["migrate", "--memory", "8M", "--count", "2"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[0] stage 1: logging on") && err.contains("[1] stage 3:"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "no escape sequences off a terminal: {err}"
    );
    // A terminal (util-linux script(1) gives the command a pty): a bar counting migrations.
    let log = std::env::temp_dir().join(format!("vdpa-emu-tty-{}.log", std::process::id()));
    let status = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} migrate --memory 8M --count 2 >/dev/null",
            env!("CARGO_BIN_EXE_vdpa-emu")
        ))
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script(1) from util-linux");
    assert!(status.success());
    let tty = std::fs::read_to_string(&log).unwrap();
    assert!(tty.contains("/2 migrations"), "{tty}");
    assert!(
        !tty.contains("[0] stage 1"),
        "no plain lines on a terminal: {tty}"
    );
    let _ = std::fs::remove_file(&log);
}
