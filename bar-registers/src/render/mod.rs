//! The register map as a datasheet: Markdown for people (docs/registers.md is this output for
//! [`Datasheet::docs`]; a test fails when the committed file is stale), a C header for silicon
//! and driver teams, JSON for tools. All three render the same [`DeviceLayout`]s, so they
//! cannot disagree with each other or with the device model, which decodes with them.

mod c_header;
mod json;
mod markdown;

pub use json::DatasheetJson;

use crate::layout::{DeviceLayout, LayoutError, LayoutParams};
use crate::lm::LmLayout;
use crate::model::RegisterBlock;

/// What a datasheet shows: one device size and the LM layouts to document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datasheet {
    /// Queue pairs of the layout (array registers have one entry per queue or vector).
    pub queue_pairs: u16,
    /// LM block layouts to show; the first one's layout is used for everything else (the two
    /// layouts differ only in the LM block).
    pub lm_layouts: Vec<LmLayout>,
}

/// Queue pairs docs/registers.md is rendered for (so array registers stay short).
pub const DOC_QUEUE_PAIRS: u16 = 2;

impl Datasheet {
    /// The parameter set docs/registers.md documents: 2 queue pairs, both LM layouts.
    pub fn docs() -> Self {
        Datasheet {
            queue_pairs: DOC_QUEUE_PAIRS,
            lm_layouts: vec![LmLayout::Dpdk, LmLayout::Linux],
        }
    }

    /// The layouts shown, one per LM layout, in order.
    pub fn layouts(&self) -> Result<Vec<DeviceLayout>, LayoutError> {
        self.lm_layouts
            .iter()
            .map(|&lm_layout| {
                DeviceLayout::new(LayoutParams {
                    queue_pairs: self.queue_pairs,
                    lm_layout,
                    ..LayoutParams::default()
                })
            })
            .collect()
    }

    /// Markdown (docs/registers.md for [`Datasheet::docs`]).
    pub fn markdown(&self) -> Result<String, LayoutError> {
        Ok(markdown::render(self, &self.layouts()?))
    }

    /// A C header of `#define`s: block locations, register offsets, widths and reset values,
    /// BAR sizes, offered feature bits, device status bits and the LM constants.
    pub fn c_header(&self) -> Result<String, LayoutError> {
        Ok(c_header::render(self, &self.layouts()?))
    }

    /// The serializable JSON model (the caller picks the serializer: this crate does no I/O).
    pub fn json(&self) -> Result<DatasheetJson, LayoutError> {
        Ok(json::model(self, &self.layouts()?))
    }

    /// The command line that renders this datasheet in `format`, for generated headers.
    pub fn command(&self, format: &str) -> String {
        let mut c = format!(
            "vdpa-emu registers --format {format} --queue-pairs {}",
            self.queue_pairs
        );
        if self.lm_layouts.len() == 1 {
            c.push_str(" --lm-layout ");
            c.push_str(self.lm_layouts[0].name());
        }
        c
    }
}

/// The blocks a datasheet shows, each with the layout it comes from: every block of the first
/// layout, then the LM block of each other one (the layouts differ only there).
fn shown_blocks(layouts: &[DeviceLayout]) -> impl Iterator<Item = (&RegisterBlock, &DeviceLayout)> {
    let (first, others) = layouts.split_first().expect("a datasheet has a layout");
    first
        .blocks
        .iter()
        .map(move |b| (b, first))
        .chain(others.iter().filter_map(|l| Some((l.block("lm")?, l))))
}

/// The whole docs/registers.md text.
pub fn registers_markdown() -> String {
    Datasheet::docs()
        .markdown()
        .expect("the docs' parameters are valid")
}

/// "queues 0..3 are RX0, TX0, RX1, TX1; queue 4 is the control queue" for any size.
fn queue_roles(queue_pairs: u16) -> String {
    let n = 2 * queue_pairs;
    let roles = if queue_pairs <= 3 {
        (0..queue_pairs)
            .flat_map(|p| [format!("RX{p}"), format!("TX{p}")])
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        format!("RX0, TX0, RX1, TX1, ..., RX{0}, TX{0}", queue_pairs - 1)
    };
    format!(
        "queues 0..{} are {roles}; queue {n} is the control queue",
        n - 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_roles_name_every_queue() {
        assert_eq!(
            queue_roles(2),
            "queues 0..3 are RX0, TX0, RX1, TX1; queue 4 is the control queue"
        );
        assert_eq!(
            queue_roles(1),
            "queues 0..1 are RX0, TX0; queue 2 is the control queue"
        );
        assert!(queue_roles(8).contains("RX7, TX7; queue 16 is the control queue"));
    }

    #[test]
    fn array_registers_grow_with_queue_pairs() {
        for pairs in [1, 2, 8, 32] {
            let d = Datasheet {
                queue_pairs: pairs,
                lm_layouts: vec![LmLayout::Dpdk],
            };
            let md = d.markdown().unwrap();
            let last = 2 * pairs; // the control queue
            assert!(md.contains(&format!("doorbell[{last}]")), "{pairs}");
            assert!(!md.contains(&format!("doorbell[{}]", last + 1)), "{pairs}");
            assert!(md.contains(&format!("ring_state[{last}]")), "{pairs}");
            let h = d.c_header().unwrap();
            assert!(
                h.contains(&format!("VDPA_EMU_NOTIFY_DOORBELL_{last} ")),
                "{pairs}"
            );
            assert!(h.contains(&format!("#define VDPA_EMU_QUEUE_PAIRS {pairs}\n")));
            // Only the chosen LM layout.
            assert!(!md.contains("vq_state[") && !h.contains("LM_LINUX"));
        }
        let bad = Datasheet {
            queue_pairs: 0,
            lm_layouts: vec![LmLayout::Dpdk],
        };
        assert!(bad.markdown().is_err() && bad.c_header().is_err() && bad.json().is_err());
    }
}
