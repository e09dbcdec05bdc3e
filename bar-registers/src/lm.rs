//! The live-migration (LM) register block at BAR4 offset 0.
//!
//! Two layouts exist in the wild:
//! - DPDK drivers/vdpa/ifc/base/ifcvf.h: IFCVF_LM_LOGGING_CTRL @0x00, IFCVF_LM_BASE_ADDR_LOW/HIGH
//!   @0x10/0x14, IFCVF_LM_END_ADDR_LOW/HIGH @0x18/0x1C, ring state of net queue q at
//!   IFCVF_LM_CFG_SIZE-strided slots: 0x20 + (q/2)*0x40 + (q%2)*4, IFCVF_MQ_OFFSET @0x28.
//! - Linux drivers/vdpa/ifcvf/ifcvf_base.h (2023+), struct ifcvf_lm_cfg: control u64 @0x00,
//!   status u64 @0x08, lm_mem_log_start_addr @0x10, lm_mem_log_end_addr @0x18, vq_state_region
//!   (u16 avail index of queue q at 0x20 + 4*q, ifcvf_get_vq_state/ifcvf_set_vq_state).
//!
//! Queues 0 and 1 agree; from queue 2 on the layouts conflict, hence the selectable profile.

use crate::model::{Access, Narrow, Register};
use crate::ring::{off_wrap, split_off_wrap};

/// Which driver's LM layout the device presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LmLayout {
    /// DPDK ifcvf.h layout (default: the driver that does live migration).
    #[default]
    Dpdk,
    /// Linux ifcvf_base.h struct ifcvf_lm_cfg layout.
    Linux,
}

impl LmLayout {
    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            LmLayout::Dpdk => "dpdk",
            LmLayout::Linux => "linux",
        }
    }

    /// Parse a CLI name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dpdk" => Some(LmLayout::Dpdk),
            "linux" => Some(LmLayout::Linux),
            _ => None,
        }
    }
}

/// Size of the LM window (DPDK's indexing needs 0x20 + 32 * 0x40 = 0x820 bytes).
pub const LM_SIZE: u64 = 0x1000;
/// IFCVF_LM_LOGGING_CTRL (DPDK) / control (Linux, low dword).
pub const LOGGING_CTRL: u64 = 0x00;
/// Linux layout: status.
pub const STATUS: u64 = 0x08;
/// IFCVF_LM_BASE_ADDR_LOW / lm_mem_log_start_addr.
pub const BASE_ADDR_LOW: u64 = 0x10;
/// IFCVF_LM_BASE_ADDR_HIGH.
pub const BASE_ADDR_HIGH: u64 = 0x14;
/// IFCVF_LM_END_ADDR_LOW / lm_mem_log_end_addr: base + size, an end address, not a size.
pub const END_ADDR_LOW: u64 = 0x18;
/// IFCVF_LM_END_ADDR_HIGH.
pub const END_ADDR_HIGH: u64 = 0x1C;
/// IFCVF_MQ_OFFSET (DPDK layout only): number of enabled queue pairs.
pub const MQ_PAIRS: u64 = 0x28;
/// IFCVF_LM_DISABLE.
pub const LOGGING_DISABLE: u32 = 0;
/// IFCVF_LM_ENABLE_VF.
pub const LOGGING_ENABLE_VF: u32 = 1;
/// IFCVF_LM_ENABLE_PF (declared by DPDK, never used by it).
pub const LOGGING_ENABLE_PF: u32 = 3;
/// The bit of logging_ctrl / control that turns dirty-page logging on: bit 0, set by both DPDK
/// values (ENABLE_VF 1, ENABLE_PF 3) and by Linux's IFCVF_LM_ENABLE.
pub const LOGGING_ENABLE_BIT: u64 = 1 << 0;
/// The IOVA at which DPDK maps the vhost log buffer (IFCVF_LOG_BASE in ifcvf_vdpa.c).
pub const DPDK_LOG_IOVA: u64 = 0x1000_0000_0000;

/// Offset of queue `q`'s ring state register.
///
/// DPDK: `IFCVF_LM_RING_STATE_OFFSET + (q / 2) * IFCVF_LM_CFG_SIZE + (q % 2) * 4` (net queues);
/// Linux: `&lm_cfg->vq_state_region + qid * 2` with a `__le16 *`, i.e. 0x20 + 4 * q.
pub fn ring_state_offset(layout: LmLayout, q: u16) -> u64 {
    let q = u64::from(q);
    match layout {
        LmLayout::Dpdk => 0x20 + (q / 2) * 0x40 + (q % 2) * 4,
        LmLayout::Linux => 0x20 + 4 * q,
    }
}

/// Pack a ring state value: bits 0-15 last_avail_idx, bits 16-31 last_used_idx.
///
/// With VIRTIO_F_RING_PACKED each 16-bit index is `offset | wrap counter << 15` (bits 0-14 the
/// ring offset, bit 15 the wrap counter), as vhost-user's VHOST_USER_GET/SET_VRING_BASE encode a
/// packed ring: bits 0-14 last_avail_idx, bit 15 avail wrap counter, bits 16-30 last_used_idx,
/// bit 31 used wrap counter. A packed queue's state resets to 0x8000_8000 at FEATURES_OK (both
/// wrap counters start at 1, virtio 1.2 2.8.1). See [`pack_packed_ring_state`].
pub fn pack_ring_state(last_avail: u16, last_used: u16) -> u32 {
    u32::from(last_avail) | (u32::from(last_used) << 16)
}

/// Unpack a ring state value into (last_avail_idx, last_used_idx).
pub fn unpack_ring_state(v: u32) -> (u16, u16) {
    (v as u16, (v >> 16) as u16)
}

/// Pack a packed ring's state: (avail offset, avail wrap counter, used offset, used wrap counter)
/// into bits 0-14, 15, 16-30, 31.
pub fn pack_packed_ring_state(avail: u16, avail_wrap: bool, used: u16, used_wrap: bool) -> u32 {
    pack_ring_state(off_wrap(avail, avail_wrap), off_wrap(used, used_wrap))
}

/// Unpack a packed ring's state into (avail offset, avail wrap, used offset, used wrap).
pub fn unpack_packed_ring_state(v: u32) -> (u16, bool, u16, bool) {
    let (a, u) = unpack_ring_state(v);
    let ((a, aw), (u, uw)) = (split_off_wrap(a), split_off_wrap(u));
    (a, aw, u, uw)
}

/// Linux's struct vdpa_vq_state_packed (include/linux/vdpa.h) starts with
/// `u16 last_avail_counter:1, last_avail_idx:15`; ifcvf_set_vq_state writes that u16 (through
/// the split union member) into the 16-bit vq_state register. Converts it to the
/// `offset | wrap << 15` encoding used everywhere else.
pub fn vdpa_u16_to_packed(v: u16) -> u16 {
    off_wrap(v >> 1, v & 1 != 0)
}

/// The inverse of [`vdpa_u16_to_packed`]: what ifcvf_get_vq_state must read for a packed ring.
pub fn packed_to_vdpa_u16(v: u16) -> u16 {
    let (offset, wrap) = split_off_wrap(v);
    (offset << 1) | u16::from(wrap)
}

pub(crate) fn lm_registers(layout: LmLayout, num_queues: u16) -> Vec<Register> {
    const DPDK: &str = "DPDK drivers/vdpa/ifc/base/ifcvf.h";
    const LINUX: &str = "Linux drivers/vdpa/ifcvf/ifcvf_base.h struct ifcvf_lm_cfg";
    let mut v = match layout {
        LmLayout::Dpdk => vec![
            Register::new(
                "logging_ctrl",
                LOGGING_CTRL,
                4,
                Access::Rw,
                0,
                "0 disable, 1 enable dirty-page logging (VF), 3 enable (PF)",
                DPDK,
            ),
            // Declared as two 64-bit registers, which also take their two dword halves (the
            // default for 8-byte registers): ifcvf_enable_logging (DPDK drivers/vdpa/ifc/base/
            // ifcvf.c) writes LOW and HIGH through plain `*(u32 *)` stores, which GCC merges
            // into one 8-byte store, so the device sees 8-byte writes at 0x10 and 0x18 (seen
            // with Debian's DPDK 24.11 in the e2e guest); a PCIe function takes both widths.
            Register::new(
                "log_base",
                BASE_ADDR_LOW,
                8,
                Access::Rw,
                0,
                "IOVA of the dirty-page log (IFCVF_LM_BASE_ADDR_LOW at +0, _HIGH at +4)",
                DPDK,
            ),
            Register::new(
                "log_end",
                END_ADDR_LOW,
                8,
                Access::Rw,
                0,
                "log end IOVA, base + size (IFCVF_LM_END_ADDR_LOW at +0, _HIGH at +4)",
                DPDK,
            ),
        ],
        LmLayout::Linux => vec![
            Register::new(
                "control",
                LOGGING_CTRL,
                8,
                Access::Rw,
                0,
                "bit 0: dirty-page logging enable",
                LINUX,
            ),
            Register::new(
                "status",
                STATUS,
                8,
                Access::Ro,
                0,
                "bit 0: logging active",
                LINUX,
            ),
            Register::new(
                "log_start",
                BASE_ADDR_LOW,
                8,
                Access::Rw,
                0,
                "IOVA of the dirty-page log",
                LINUX,
            ),
            Register::new(
                "log_end",
                END_ADDR_LOW,
                8,
                Access::Rw,
                0,
                "log end IOVA (start + size)",
                LINUX,
            ),
        ],
    };
    for q in 0..num_queues {
        let off = ring_state_offset(layout, q);
        let reg = match layout {
            LmLayout::Dpdk => Register::new(
                format!("ring_state[{q}]"),
                off,
                4,
                Access::Rw,
                0,
                "bits 0-15 last_avail_idx, 16-31 last_used_idx; writable while the queue is disabled, the queue resumes there on enable; packed ring (RING_PACKED): bits 0-14 last_avail_idx, 15 avail wrap counter, 16-30 last_used_idx, 31 used wrap counter (vhost-user VRING_BASE packed encoding; 0x80008000 after FEATURES_OK)",
                "DPDK ifcvf.h IFCVF_LM_RING_STATE_OFFSET; vDPA talk: R/W vring index",
            )
            // ifcvf_hw_disable keeps only `ring_state >> 16`, so GCC loads just the high u16
            // (a 2-byte read at +2, seen with Debian's DPDK 24.11): reads of any aligned width.
            // Writes stay whole dwords (ifcvf_hw_enable): a 16-bit write, what Linux ifcvf's
            // ifcvf_set_vq_state does with its 2-byte stride, would land in another queue's half.
            .narrow(Narrow::Reads),
            LmLayout::Linux => Register::new(
                format!("vq_state[{q}]"),
                off,
                4,
                Access::Rw,
                0,
                "bits 0-15 avail index (the u16 Linux reads/writes; a 16-bit write sets used = avail too), 16-31 last_used_idx; packed ring: bits 0-14 index, bit 15 wrap counter in each half, except that a 16-bit access carries struct vdpa_vq_state_packed's u16 (bit 0 wrap counter, bits 1-15 index)",
                "Linux ifcvf_base.c ifcvf_get_vq_state/ifcvf_set_vq_state",
            )
            .narrow(Narrow::Any),
        };
        v.push(reg.live());
    }
    if layout == LmLayout::Dpdk {
        v.push(Register::new(
            "mq_pairs",
            MQ_PAIRS,
            4,
            Access::Rw,
            0,
            "number of enabled queue pairs (the driver writes it at start)",
            "DPDK ifcvf.h IFCVF_MQ_OFFSET",
        ));
    }
    v.sort_by_key(|r| r.offset);
    v
}
