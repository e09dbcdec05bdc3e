//! The live-migration register block (BAR4 offset 0): dirty-page log control and window, the
//! DPDK queue-pair count, and where each queue's ring state register sits.
//!
//! The two layouts are declared in [`bar_registers::lm`]: DPDK's (drivers/vdpa/ifc/base/ifcvf.h,
//! programmed by ifcvf.c ifcvf_enable_logging / ifcvf_disable_logging, ring states read by
//! ifcvf_hw_disable and written by ifcvf_hw_enable) and Linux's struct ifcvf_lm_cfg
//! (drivers/vdpa/ifcvf/ifcvf_base.c ifcvf_get_vq_state / ifcvf_set_vq_state). The ring states
//! themselves belong to the queues; this block only decodes which queue an access is for and
//! how its value is encoded.

use super::access::merge;
use crate::snapshot::{Reader, SectionSpec, SnapshotError, Writer};
use bar_registers::{lm, LmLayout};
use dma::LogConfig;

/// What an LM block read needs from the rest of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LmRead {
    /// A register of the block itself.
    Value(u64),
    /// Linux layout status: whether the DMA engine logs.
    LoggingActive,
    /// The ring state register of this queue.
    RingState(u16),
}

/// What an LM block write asks of the rest of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LmWrite {
    /// Stored; the dirty-log configuration ([`LmBlock::log_config`]) may have changed.
    Logging,
    /// DPDK IFCVF_MQ_OFFSET: the driver's queue-pair count (stored as written).
    MqPairs(u32),
    /// The ring state register of this queue.
    RingState(u16),
    /// No writable register there.
    Ignored,
}

/// The LM block registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmBlock {
    layout: LmLayout,
    num_queues: u16,
    control: u64,
    base: u64,
    end: u64,
    mq_pairs: u32,
}

/// The saved registers (section `LMRG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LmImage {
    control: u64,
    base: u64,
    end: u64,
    mq_pairs: u32,
}

impl LmBlock {
    /// The `LMRG` section of the device-state stream.
    pub const SECTION: SectionSpec = SectionSpec {
        name: "LMRG",
        body: "logging_ctrl u64, log base u64, log end u64, mq_pairs u32",
    };

    /// Reset state for a device with `num_queues` queues.
    pub fn new(layout: LmLayout, num_queues: u16) -> Self {
        LmBlock {
            layout,
            num_queues,
            control: 0,
            base: 0,
            end: 0,
            mq_pairs: 0,
        }
    }

    /// Back to the reset values (virtio reset: logging off).
    pub fn reset(&mut self) {
        *self = LmBlock::new(self.layout, self.num_queues);
    }

    /// Which layout the block presents.
    pub fn layout(&self) -> LmLayout {
        self.layout
    }

    /// The queue whose ring state register is at `reg`.
    fn ring_state_queue(&self, reg: u64) -> Option<u16> {
        (0..self.num_queues).find(|&q| lm::ring_state_offset(self.layout, q) == reg)
    }

    /// Decodes a read of register `reg`.
    pub(crate) fn read(&self, reg: u64) -> LmRead {
        let linux = self.layout == LmLayout::Linux;
        match reg {
            lm::LOGGING_CTRL => LmRead::Value(self.control),
            lm::STATUS if linux => LmRead::LoggingActive,
            // one 64-bit register each (bar_registers::lm); the dword halves are byte offsets
            lm::BASE_ADDR_LOW => LmRead::Value(self.base),
            lm::END_ADDR_LOW => LmRead::Value(self.end),
            lm::MQ_PAIRS if !linux => LmRead::Value(self.mq_pairs.into()),
            _ => self
                .ring_state_queue(reg)
                .map_or(LmRead::Value(0), LmRead::RingState),
        }
    }

    /// Applies a write of `len` bytes at byte `rel` of register `reg`.
    pub(crate) fn write(&mut self, reg: u64, rel: u64, len: usize, val: u64) -> LmWrite {
        match (reg, self.layout) {
            (lm::LOGGING_CTRL, _) => self.control = merge(self.control, rel, len, val),
            // Both layouts: one 64-bit register each. DPDK's source writes the two dwords, but
            // its compiled ifcvf_enable_logging stores all 8 bytes at once (GCC merges the plain
            // `*(u32 *)` stores): the register takes both (bar_registers::lm).
            (lm::BASE_ADDR_LOW, _) => self.base = merge(self.base, rel, len, val),
            (lm::END_ADDR_LOW, _) => self.end = merge(self.end, rel, len, val),
            (lm::MQ_PAIRS, LmLayout::Dpdk) => {
                self.mq_pairs = val as u32;
                return LmWrite::MqPairs(self.mq_pairs);
            }
            _ => {
                return self
                    .ring_state_queue(reg)
                    .map_or(LmWrite::Ignored, LmWrite::RingState)
            }
        }
        LmWrite::Logging
    }

    /// A ring state register's value for (last_avail, last_used). A 16-bit access at the start
    /// of a Linux-layout register is what ifcvf_get_vq_state does: for a packed ring it carries
    /// the first u16 of struct vdpa_vq_state_packed.
    pub(crate) fn ring_state_value(
        &self,
        (avail, used): (u16, u16),
        packed: bool,
        rel: u64,
        len: usize,
    ) -> u64 {
        if self.linux_vdpa_u16(rel, len) && packed {
            lm::packed_to_vdpa_u16(avail).into()
        } else {
            lm::pack_ring_state(avail, used).into()
        }
    }

    /// The ring state a write of `len` bytes at byte `rel` makes of `current`.
    pub(crate) fn ring_state_written(
        &self,
        current: (u16, u16),
        packed: bool,
        rel: u64,
        len: usize,
        val: u64,
    ) -> (u16, u16) {
        if len == 2 && rel == 0 {
            // Linux ifcvf_set_vq_state writes the 16-bit avail index only: after a clean stop
            // used == avail, so the device resumes both there (as vhost's SET_VRING_BASE does).
            // With RING_PACKED that u16 is the first half of Linux's struct vdpa_vq_state_packed
            // (bit 0 wrap counter, bits 1-15 index: virtio_vdpa writes 0x0001 for a fresh ring).
            let v = if packed && self.layout == LmLayout::Linux {
                lm::vdpa_u16_to_packed(val as u16)
            } else {
                val as u16
            };
            (v, v)
        } else {
            let cur = u64::from(lm::pack_ring_state(current.0, current.1));
            lm::unpack_ring_state(merge(cur, rel, len, val) as u32)
        }
    }

    /// A 16-bit access at the start of a Linux-layout ring state register: what
    /// ifcvf_get_vq_state / ifcvf_set_vq_state do (the avail half only).
    fn linux_vdpa_u16(&self, rel: u64, len: usize) -> bool {
        self.layout == LmLayout::Linux && rel == 0 && len == 2
    }

    /// The dirty-log configuration the registers describe: on while the enable bit is set,
    /// over [base, end) (or [base, inf) for a device that ignores the end).
    pub fn log_config(&self, granularity: u64, ignores_end: bool) -> Option<LogConfig> {
        let on = self.control & lm::LOGGING_ENABLE_BIT != 0;
        on.then_some(LogConfig {
            base: self.base,
            end: if ignores_end { u64::MAX } else { self.end },
            granularity,
        })
    }

    /// Writes the `LMRG` body.
    pub(crate) fn save(&self, w: &mut Writer) {
        w.u64(self.control);
        w.u64(self.base);
        w.u64(self.end);
        w.u32(self.mq_pairs);
    }

    /// Reads an `LMRG` body.
    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<LmImage, SnapshotError> {
        let img = LmImage {
            control: r.u64()?,
            base: r.u64()?,
            end: r.u64()?,
            mq_pairs: r.u32()?,
        };
        r.finish()?;
        Ok(img)
    }

    /// Takes the saved registers as they were (any value is a value the driver could write).
    pub(crate) fn restore(&mut self, img: &LmImage) {
        self.control = img.control;
        self.base = img.base;
        self.end = img.end;
        self.mq_pairs = img.mq_pairs;
    }
}
