//! The datasheet as a serializable model (`vdpa-emu registers --format json` prints it with
//! serde_json): the same facts as the Markdown and the C header, with numbers as numbers.

use super::{shown_blocks, Datasheet};
use crate::layout::DeviceLayout;
use crate::model::{Location, Narrow, RegisterBlock};
use crate::virtio::OFFERED_FEATURES;
use serde::Serialize;

/// The whole datasheet.
#[derive(Debug, Serialize)]
pub struct DatasheetJson {
    pub queue_pairs: u16,
    pub num_queues: u16,
    pub msix_vectors: u16,
    pub notify_off_multiplier: u32,
    pub lm_layouts: Vec<&'static str>,
    pub bars: Vec<BarJson>,
    pub features: Vec<FeatureJson>,
    /// Every block of the first layout, then the LM block of each other layout.
    pub blocks: Vec<BlockJson>,
}

#[derive(Debug, Serialize)]
pub struct BarJson {
    pub index: u8,
    pub size: u64,
    pub contents: &'static str,
}

#[derive(Debug, Serialize)]
pub struct FeatureJson {
    pub bit: u32,
    pub name: &'static str,
    pub meaning: &'static str,
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct BlockJson {
    pub id: &'static str,
    /// For the LM block: which driver's layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lm_layout: Option<&'static str>,
    pub title: &'static str,
    /// "config" or "bar".
    pub space: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bar: Option<u8>,
    pub offset: u64,
    pub size: u64,
    pub summary: &'static str,
    pub registers: Vec<RegisterJson>,
}

#[derive(Debug, Serialize)]
pub struct RegisterJson {
    pub name: String,
    pub offset: u64,
    pub width: u8,
    pub access: &'static str,
    /// Narrower accesses allowed: "none", "halves", "any", "reads".
    pub narrow: &'static str,
    pub reset: u64,
    pub reset_checkable: bool,
    pub meaning: &'static str,
    pub source: &'static str,
}

fn block(b: &RegisterBlock, l: &DeviceLayout) -> BlockJson {
    let (space, bar, offset) = match b.location {
        Location::Config(o) => ("config", None, o),
        Location::Bar(i, o) => ("bar", Some(i), o),
    };
    BlockJson {
        id: b.id,
        lm_layout: (b.id == "lm").then(|| l.params.lm_layout.name()),
        title: b.title,
        space,
        bar,
        offset,
        size: b.size,
        summary: b.summary,
        registers: b
            .registers
            .iter()
            .map(|r| RegisterJson {
                name: r.name.clone(),
                offset: r.offset,
                width: r.width,
                access: r.access.name(),
                narrow: match r.narrow {
                    Narrow::No => "none",
                    Narrow::Halves => "halves",
                    Narrow::Any => "any",
                    Narrow::Reads => "reads",
                },
                reset: r.reset,
                reset_checkable: r.reset_checkable,
                meaning: r.meaning,
                source: r.source,
            })
            .collect(),
    }
}

pub(super) fn model(ds: &Datasheet, layouts: &[DeviceLayout]) -> DatasheetJson {
    let first = &layouts[0];
    let blocks = shown_blocks(layouts).map(|(b, l)| block(b, l)).collect();
    DatasheetJson {
        queue_pairs: ds.queue_pairs,
        num_queues: first.num_queues,
        msix_vectors: first.msix_vectors,
        notify_off_multiplier: first.notify_multiplier,
        lm_layouts: ds.lm_layouts.iter().map(|l| l.name()).collect(),
        bars: first
            .bars
            .iter()
            .map(|b| BarJson {
                index: b.index,
                size: b.size,
                contents: b.contents,
            })
            .collect(),
        features: OFFERED_FEATURES
            .iter()
            .map(|f| FeatureJson {
                bit: f.bit,
                name: f.name,
                meaning: f.meaning,
                source: f.source,
            })
            .collect(),
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_register_of_both_lm_layouts() {
        let j = serde_json::to_value(Datasheet::docs().json().unwrap()).unwrap();
        let lm: Vec<_> = j["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["id"] == "lm")
            .collect();
        assert_eq!(lm.len(), 2);
        assert_eq!(lm[0]["lm_layout"], "dpdk");
        assert_eq!(lm[1]["lm_layout"], "linux");
        let ring2 = lm[0]["registers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "ring_state[2]")
            .unwrap();
        // DPDK ifcvf_hw_enable: IFCVF_LM_RING_STATE_OFFSET + (2 / 2) * IFCVF_LM_CFG_SIZE.
        assert_eq!(ring2["offset"], 0x60);
        assert_eq!(ring2["narrow"], "reads");
        assert_eq!(j["queue_pairs"], 2);
        assert_eq!(j["num_queues"], 5);
    }
}
