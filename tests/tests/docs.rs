//! docs/registers.md is rendered from the declarations in bar-registers; this fails when the
//! committed file is stale (regenerate with `make docs`).

#[test]
fn registers_doc_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/registers.md");
    let committed = std::fs::read_to_string(path).expect("docs/registers.md exists");
    let rendered = bar_registers::render::registers_markdown();
    assert!(
        committed == rendered,
        "docs/registers.md is stale: run `make docs` and commit the result"
    );
}

#[test]
fn registers_doc_names_every_lm_register_and_source() {
    let md = bar_registers::render::registers_markdown();
    for needle in [
        "logging_ctrl",
        "log_base",
        "log_end",
        "ring_state[0]",
        "mq_pairs",
        "vq_state[2]",
        "ifcvf.h",
        "ifcvf_base.h",
        "notify_off_multiplier",
    ] {
        assert!(md.contains(needle), "registers.md lacks {needle}");
    }
}
