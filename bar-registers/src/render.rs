//! Renders the register maps as Markdown (docs/registers.md is this output for the default
//! layout; a test fails when the committed file is stale).

use crate::layout::{DeviceLayout, LayoutParams};
use crate::lm::LmLayout;
use crate::model::{Location, RegisterBlock};
use crate::virtio::OFFERED_FEATURES;
use std::fmt::Write;

/// The parameter set docs/registers.md documents: 2 queue pairs (so array registers stay short).
pub fn doc_params(lm_layout: LmLayout) -> LayoutParams {
    LayoutParams {
        queue_pairs: 2,
        lm_layout,
        ..LayoutParams::default()
    }
}

/// The whole docs/registers.md text.
pub fn registers_markdown() -> String {
    let dpdk = DeviceLayout::new(doc_params(LmLayout::Dpdk)).expect("doc params are valid");
    let linux = DeviceLayout::new(doc_params(LmLayout::Linux)).expect("doc params are valid");
    let mut s = String::new();
    s.push_str("# vdpa-emu register map\n\n");
    s.push_str("Generated from the declarations in `bar-registers/` by `cargo run -p sim-harness -- registers > docs/registers.md`; ");
    s.push_str("the test `registers_doc_is_current` fails when this file is stale. Shown for 2 queue pairs ");
    s.push_str("(queues 0..3 are RX0, TX0, RX1, TX1; queue 4 is the control queue); array registers grow with `--queue-pairs`.\n\n");
    s.push_str("Access: RO read-only (writes ignored), RW read-write, W1C write-1-to-clear, WO write-only (reads 0), RC read-to-clear.\n");
    s.push_str("An access of a width the register does not accept, to reserved space or past a window reads 0 and is ignored on write; the device counts it (`bad_register_accesses`).\n\n");
    s.push_str("## BARs\n\n| BAR | size | contents |\n|---|---|---|\n");
    for b in &dpdk.bars {
        let _ = writeln!(
            s,
            "| {} (64-bit) | 0x{:x} | {} |",
            b.index, b.size, b.contents
        );
    }
    s.push_str("\n## Features offered\n\n| bit | name | meaning | source |\n|---|---|---|---|\n");
    for f in OFFERED_FEATURES {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            f.bit, f.name, f.meaning, f.source
        );
    }
    s.push('\n');
    for b in &dpdk.blocks {
        render_block(&mut s, b);
    }
    if let Some(b) = linux.block("lm") {
        render_block(&mut s, b);
    }
    s
}

fn render_block(s: &mut String, b: &RegisterBlock) {
    let loc = match b.location {
        Location::Config(o) => format!("config space 0x{o:02x}"),
        Location::Bar(i, o) => format!("BAR{i} + 0x{o:x}"),
    };
    let _ = writeln!(
        s,
        "## {} ({}, {} bytes)\n\n{}\n",
        b.title, loc, b.size, b.summary
    );
    s.push_str("| offset | name | width | access | reset | meaning | source |\n|---|---|---|---|---|---|---|\n");
    for r in &b.registers {
        let reset = if r.reset_checkable {
            format!("0x{:x}", r.reset)
        } else {
            format!("0x{:x} (live)", r.reset)
        };
        let _ = writeln!(
            s,
            "| 0x{:03x} | {} | {} | {} | {} | {} | {} |",
            r.offset,
            r.name,
            r.width,
            r.access.name(),
            reset,
            r.meaning,
            r.source
        );
    }
    s.push('\n');
}
