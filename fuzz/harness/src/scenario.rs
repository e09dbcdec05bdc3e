//! The scenario-file target: arbitrary text into the TOML parser and the scenario compiler
//! (`sim_harness::scenario::parse_str`); nothing is run.
//!
//! Checked: no panic; an error renders (Display) without panicking, and a compiled scenario's
//! debug rendering does too.

/// Runs one input (bytes that are not UTF-8 are what `load` would refuse before parsing).
pub fn run(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match sim_harness::scenario::parse_str(src, "fuzz.toml") {
        Ok(sc) => {
            let _ = format!("{sc:?}");
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.line();
        }
    }
}
