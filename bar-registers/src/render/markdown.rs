//! The datasheet as Markdown (docs/registers.md).

use super::{queue_roles, shown_blocks, Datasheet};
use crate::layout::DeviceLayout;
use crate::model::{Location, RegisterBlock};
use crate::virtio::OFFERED_FEATURES;
use std::fmt::Write;

/// The Markdown datasheet: everything from the first layout, the LM block of each other one.
pub(super) fn render(ds: &Datasheet, layouts: &[DeviceLayout]) -> String {
    let first = &layouts[0];
    let mut s = String::new();
    s.push_str("# vdpa-emu register map\n\n");
    let _ = write!(
        s,
        "Generated from the declarations in `bar-registers/` by `{}`",
        if *ds == Datasheet::docs() {
            "vdpa-emu registers > docs/registers.md".to_string()
        } else {
            ds.command("markdown")
        }
    );
    if *ds == Datasheet::docs() {
        s.push_str("; the test `registers_doc_is_current` fails when this file is stale");
    }
    let _ = write!(
        s,
        ". Shown for {} queue pair{} ({}); `--queue-pairs N` renders another size (array registers have one entry per queue or vector), `--format c-header` or `--format json` the same map for C or tools.\n\n",
        ds.queue_pairs,
        if ds.queue_pairs == 1 { "" } else { "s" },
        queue_roles(ds.queue_pairs)
    );
    s.push_str("Access: RO read-only (writes ignored), RW read-write, W1C write-1-to-clear, WO write-only (reads 0), RC read-to-clear.\n");
    s.push_str("An access of a width the register does not accept, to reserved space or past a window reads 0 and is ignored on write; the device counts it (`bad_register_accesses`).\n\n");
    s.push_str("## BARs\n\n| BAR | size | contents |\n|---|---|---|\n");
    for b in &first.bars {
        let _ = writeln!(
            s,
            "| {} (64-bit) | 0x{:x} | {} |",
            b.index, b.size, b.contents
        );
    }
    s.push_str("\n## Features offered\n\nEvery feature the model implements: the `full` profile offers them all, another profile a subset \
         (docs/profiles.md; `vdpa-emu profiles`).\n\n| bit | name | meaning | source |\n|---|---|---|---|\n");
    for f in OFFERED_FEATURES {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            f.bit, f.name, f.meaning, f.source
        );
    }
    s.push('\n');
    for (b, _) in shown_blocks(layouts) {
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
