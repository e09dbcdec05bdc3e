//! Register maps of the vdpa-emu NIC, declared once as data.
//!
//! Every register the device exposes (PCI configuration header and capabilities, the virtio
//! transport windows in BAR0, MSI-X in BAR2, the live-migration block in BAR4) is declared here
//! with its offset, width, access, reset value, meaning and source. The device model decodes
//! accesses with these declarations, the validator checks a device against them, and
//! docs/registers.md is rendered from them. No I/O happens in this crate.

pub mod layout;
pub mod lm;
pub mod model;
pub mod msix;
pub mod pci;
pub mod profile;
pub mod render;
pub mod ring;
pub mod virtio;

pub use layout::{DeviceLayout, LayoutError, LayoutParams, NotifyLayout, Window};
pub use lm::LmLayout;
pub use model::{Access, Decoded, Dir, Location, Narrow, Register, RegisterBlock};
pub use profile::{Profile, ProfileError, ProfileParams};

/// vfio region index of BAR `n` (VFIO_PCI_BAR0_REGION_INDEX + n); also used by the in-process
/// access path so both speak the same numbers.
pub const REGION_BAR0: u32 = 0;
/// vfio region index of the expansion ROM (absent).
pub const REGION_ROM: u32 = 6;
/// vfio region index of PCI configuration space (VFIO_PCI_CONFIG_REGION_INDEX).
pub const REGION_CONFIG: u32 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    fn all_layouts() -> Vec<DeviceLayout> {
        let mut v = Vec::new();
        for qp in [1, 2, 4, 32] {
            for lm_layout in [LmLayout::Dpdk, LmLayout::Linux] {
                for notify in [NotifyLayout::Compact, NotifyLayout::PagePerQueue] {
                    v.push(
                        DeviceLayout::new(LayoutParams {
                            queue_pairs: qp,
                            lm_layout,
                            notify,
                            ..Default::default()
                        })
                        .unwrap(),
                    );
                }
            }
        }
        v
    }

    #[test]
    fn declarations_are_consistent() {
        for l in all_layouts() {
            for b in &l.blocks {
                b.check().unwrap();
            }
            // Every virtio window lies inside its BAR (both drivers check offset + length).
            for c in &l.capabilities {
                if let Some((_, w)) = c.virtio {
                    assert!(w.offset + w.len <= l.bar_size(w.bar), "{c:?}");
                }
            }
            assert_eq!(l.msix_vectors, l.num_queues + 1);
            assert!(l.msix_table.offset + l.msix_table.len <= l.msix_pba.offset);
        }
    }

    /// The notify window can be handed to a VMM as a sparse mmap area (`serve --doorbell
    /// mmap`): it starts on a 4 KiB page and no other register block shares its pages. The
    /// drivers find it through the notify capability (DPDK ifcvf.c `ifcvf_init_hw`, Linux
    /// ifcvf_base.c `ifcvf_init_hw`), so its place may change; this keeps it mappable.
    #[test]
    fn the_notify_window_has_its_own_pages() {
        for l in all_layouts() {
            let n = l.notify;
            assert_eq!(n.offset % 4096, 0, "{:?}", l.params);
            let end = (n.offset + n.len).next_multiple_of(4096);
            assert!(end <= l.bar_size(n.bar), "{:?}", l.params);
            for b in l.blocks.iter().filter(|b| b.id != "notify") {
                if let Location::Bar(bar, off) = b.location {
                    assert!(
                        bar != n.bar || off + b.size <= n.offset || off >= end,
                        "{} shares the notify pages ({:?})",
                        b.id,
                        l.params
                    );
                }
            }
        }
    }

    #[test]
    fn dpdk_lm_offsets_match_ifcvf_h() {
        // IFCVF_LM_RING_STATE_OFFSET 0x20, IFCVF_LM_CFG_SIZE 0x40: q0 0x20, q1 0x24, q2 0x60, q3 0x64.
        assert_eq!(lm::ring_state_offset(LmLayout::Dpdk, 0), 0x20);
        assert_eq!(lm::ring_state_offset(LmLayout::Dpdk, 1), 0x24);
        assert_eq!(lm::ring_state_offset(LmLayout::Dpdk, 2), 0x60);
        assert_eq!(
            lm::ring_state_offset(LmLayout::Dpdk, 63),
            0x20 + 31 * 0x40 + 4
        );
        assert_eq!(lm::ring_state_offset(LmLayout::Linux, 2), 0x28);
        assert_eq!(lm::pack_ring_state(0x1234, 0xabcd), 0xabcd_1234);
        assert_eq!(lm::unpack_ring_state(0xabcd_1234), (0x1234, 0xabcd));
    }

    #[test]
    fn decode_checks_width_and_range() {
        let l = DeviceLayout::new(LayoutParams::default()).unwrap();
        let c = l.block("common_cfg").unwrap();
        assert!(matches!(
            c.decode(virtio::common::QUEUE_SELECT, 2, Dir::Read),
            Decoded::Reg { .. }
        ));
        assert!(matches!(
            c.decode(virtio::common::QUEUE_SELECT, 4, Dir::Read),
            Decoded::BadWidth { .. }
        ));
        assert!(matches!(
            c.decode(virtio::common::QUEUE_SELECT + 1, 1, Dir::Read),
            Decoded::BadWidth { .. }
        ));
        assert!(matches!(
            c.decode(virtio::common::QUEUE_DESC + 4, 4, Dir::Read),
            Decoded::Reg { rel: 4, .. }
        ));
        assert!(matches!(
            c.decode(virtio::common::QUEUE_DESC + 2, 4, Dir::Read),
            Decoded::BadWidth { .. }
        ));
        assert!(matches!(
            c.decode(virtio::common::SIZE, 1, Dir::Read),
            Decoded::OutOfRange
        ));
        assert!(matches!(
            c.decode(u64::MAX, 2, Dir::Read),
            Decoded::OutOfRange
        ));
        let d = l.block("device_cfg").unwrap();
        for i in 0..6 {
            assert!(
                matches!(d.decode(i, 1, Dir::Read), Decoded::Reg { .. }),
                "mac byte {i}"
            );
        }
        let lm = l.block("lm").unwrap();
        assert!(matches!(lm.decode(0x04, 4, Dir::Read), Decoded::Reserved));
        assert!(
            matches!(lm.decode(0x28, 4, Dir::Read), Decoded::Reg { reg, .. } if reg.name == "mq_pairs")
        );
        // DPDK-layout ring state: narrow reads, whole-dword writes
        assert!(matches!(
            lm.decode(0x22, 2, Dir::Read),
            Decoded::Reg { rel: 2, .. }
        ));
        assert!(matches!(
            lm.decode(0x22, 2, Dir::Write),
            Decoded::BadWidth { .. }
        ));
        assert!(matches!(
            lm.decode(0x20, 4, Dir::Write),
            Decoded::Reg { rel: 0, .. }
        ));
    }

    #[test]
    fn doorbells() {
        let l = DeviceLayout::new(LayoutParams {
            notify: NotifyLayout::PagePerQueue,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(l.doorbell_offset(3) % 4096, 0);
        assert_eq!(l.doorbell_queue(l.doorbell_offset(3)), Some(3));
        assert_eq!(l.doorbell_queue(l.doorbell_offset(3) + 2), None);
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(DeviceLayout::new(LayoutParams {
            queue_pairs: 0,
            ..Default::default()
        })
        .is_err());
        assert!(DeviceLayout::new(LayoutParams {
            queue_pairs: 33,
            ..Default::default()
        })
        .is_err());
        assert!(DeviceLayout::new(LayoutParams {
            queue_size_max: 100,
            ..Default::default()
        })
        .is_err());
    }
}
