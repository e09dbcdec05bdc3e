//! Receive (virtio 1.2 5.1.6.3-4): frames from the inbox are written, after a 12-byte
//! virtio_net_hdr_v1 (DATA_VALID when GUEST_CSUM was negotiated and the TCP/UDP checksum
//! verified), into device-writable chains of the steered RX queue. With MRG_RXBUF a
//! frame may span several chains (num_buffers in the first header); without it the frame must
//! fit one chain or is dropped (the chain stays available).

use super::engine::{Datapath, NetEngine};
use super::offload::hdr::F_DATA_VALID;
use super::offload::verify::{self, L4Csum};
use super::rss::Steering;
use super::NET_HDR_LEN;
use crate::capture::CaptureDirection;
use crate::counters::DeviceCounters;
use crate::fault::DeviceFault;
use crate::queue::chain::{ChainKind, Desc};
use crate::queue::Ring;
use crate::quirks::Quirk;
use crate::state::QueueState;
use bar_registers::layout::MAX_QUEUE_PAIRS;
use bar_registers::virtio::bits;
use bitvec::BitArr;
use dma::{DmaEngine, DmaKind};

/// A set of queue pairs.
type PairSet = BitArr!(for MAX_QUEUE_PAIRS as usize, in u64);

/// Chains one frame may be spread over (with MRG_RXBUF).
const MAX_RX_CHAINS: usize = 64;

/// Where a popped chain's bytes go.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    head: u16,
    first_desc: usize,
    ndesc: usize,
    cap: u64,
}

impl NetEngine {
    /// Moves frames from the inbox into RX queues until the inbox is empty or a frame has no
    /// room; publishes each touched queue and interrupts as the driver asked.
    pub(crate) fn service_rx(&mut self, dp: &mut Datapath<'_>) -> Result<(), DeviceFault> {
        let mrg = dp.has(bits::MRG_RXBUF);
        let guest_csum = dp.has(bits::GUEST_CSUM);
        let mut touched = PairSet::ZERO;
        let mut result = Ok(());
        while let Some(frame) = self.inbox.pop() {
            if !self.net.accepts(&frame) {
                dp.counters.rx_filtered += 1;
                self.inbox.recycle(frame);
                continue;
            }
            let rss_quirk = self.params.quirks.has(Quirk::RssIgnoresIndirectionTable);
            let q = match self.net.steer(&frame, rss_quirk) {
                Steering::Flow(p) => 2 * p,
                Steering::Hashed(p) => {
                    dp.counters.rx_rss_hashed += 1;
                    2 * p
                }
                Steering::Unclassified(p) => {
                    dp.counters.rx_rss_unclassified += 1;
                    2 * p
                }
            };
            // 5.1.6.4.1: with GUEST_CSUM the device MAY set DATA_VALID, and then MUST have
            // validated the checksum: only a TCP/UDP checksum that verified gets it.
            let csum = if guest_csum {
                verify::l4_checksum(&frame)
            } else {
                L4Csum::NotChecked
            };
            let flags = if csum == L4Csum::Valid {
                F_DATA_VALID
            } else {
                0
            };
            let mut res = self.deliver(q, &frame, flags, mrg, dp.counters);
            if let Ok(false) = res {
                // Out of buffers: ask for a doorbell when the driver adds some (avail_event with
                // EVENT_IDX, 2.7.10), then look once more in case it just did.
                res = match self.arm_rx(q) {
                    Ok(true) => self.deliver(q, &frame, flags, mrg, dp.counters),
                    Ok(false) => Ok(false),
                    Err(e) => Err(e),
                };
            }
            match res {
                Ok(true) => {
                    match csum {
                        L4Csum::Valid => dp.counters.rx_csum_valid += 1,
                        L4Csum::Bad => dp.counters.rx_csum_bad += 1,
                        L4Csum::NotChecked => {}
                    }
                    touched.set(usize::from(q / 2), true);
                    self.inbox.recycle(frame);
                }
                Ok(false) => {
                    // No room yet: keep the frame at the head of the FIFO.
                    self.inbox.unpop(frame);
                    break;
                }
                Err(f) => {
                    result = Err(f);
                    break;
                }
            }
        }
        for pair in touched.iter_ones() {
            self.publish_rx(2 * pair as u16, dp)?;
        }
        result
    }

    fn arm_rx(&mut self, q: u16) -> Result<bool, DeviceFault> {
        match &mut self.queues[usize::from(q)].state {
            QueueState::Enabled(ring) => ring.arm_notification(&mut self.dma),
            _ => Ok(false),
        }
    }

    fn publish_rx(&mut self, q: u16, dp: &mut Datapath<'_>) -> Result<(), DeviceFault> {
        let QueueState::Enabled(ring) = &mut self.queues[usize::from(q)].state else {
            return Ok(());
        };
        ring.flush_used(&mut self.dma)?;
        if ring.interrupt_decision(&mut self.dma)? {
            dp.interrupts.push(q);
        } else {
            dp.counters.queues[usize::from(q)].interrupts_suppressed += 1;
        }
        Ok(())
    }

    /// Writes one frame into queue `q`. Ok(false) when it does not fit yet.
    fn deliver(
        &mut self,
        q: u16,
        frame: &[u8],
        flags: u8,
        mrg: bool,
        counters: &mut DeviceCounters,
    ) -> Result<bool, DeviceFault> {
        let batch = self.params.batch;
        let quirk_len = self.params.quirks.has(Quirk::SplitRingUsedLenWrong);
        let NetEngine {
            queues,
            dma,
            chain,
            rx_descs: all,
            rx_slots: slots,
            ..
        } = self;
        let QueueState::Enabled(ring) = &mut queues[usize::from(q)].state else {
            return Ok(false);
        };
        // The split-ring-used-len-wrong quirk is a split ring engine bug.
        let wrong_len = quirk_len && !ring.is_packed();
        let need = (NET_HDR_LEN + frame.len()) as u64;
        // Collect chains until the frame fits. A frame in one chain (the common case) is written
        // from that chain's descriptors; from a second chain on, the descriptors of all of them
        // are appended into one list.
        slots.clear();
        let mut cap = 0u64;
        all.clear();
        ring.begin();
        let outcome: Result<bool, DeviceFault> = loop {
            if cap >= need {
                break Ok(true);
            }
            if slots.len() == MAX_RX_CHAINS || (!mrg && slots.len() == 1) {
                break Ok(false);
            }
            if !ring.has_fetched() && ring.fetch_avail(dma, batch)? == 0 {
                break Ok(false);
            }
            if slots.len() == 1 {
                // The chain is about to hold the next one.
                all.extend(chain.descs.iter().copied());
            }
            if !ring.pop(dma, chain, ChainKind::Rx, u64::from(u32::MAX))? {
                break Ok(false);
            }
            let first = all.len();
            if !slots.is_empty() {
                all.extend(chain.descs.iter().copied());
            }
            slots.push(Slot {
                head: chain.head,
                first_desc: first,
                ndesc: chain.descs.len(),
                cap: chain.writable,
            });
            cap += chain.writable;
        };
        if !outcome? {
            ring.rollback();
            if !mrg && slots.len() == 1 {
                // 5.1.6.3.1: without MRG_RXBUF the driver must post buffers that hold a whole
                // frame; this one does not: drop the frame, keep the buffer.
                counters.rx_dropped_too_small += 1;
                return Ok(true);
            }
            return Ok(false);
        }
        ring.commit();
        // Header: flags (DATA_VALID or 0), gso_type NONE, hdr_len/gso_size/csum 0, num_buffers
        // (LE u16 at 10).
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[0] = flags;
        hdr[10..12].copy_from_slice(&(slots.len() as u16).to_le_bytes());
        let descs = if slots.len() == 1 { &chain.descs } else { all };
        write_frame(ring, dma, q, &hdr, frame, slots, descs, wrong_len)?;
        let qc = &mut counters.queues[usize::from(q)];
        qc.chains += slots.len() as u64;
        qc.frames += 1;
        qc.bytes += frame.len() as u64;
        counters.rx_frames += 1;
        counters.rx_bytes += frame.len() as u64;
        if let Some(c) = &self.capture {
            c.frame(CaptureDirection::Rx, q / 2, frame);
        }
        Ok(true)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_frame(
    ring: &mut Ring,
    dma: &mut DmaEngine,
    q: u16,
    hdr: &[u8],
    frame: &[u8],
    slots: &[Slot],
    all: &[Desc],
    wrong_len: bool,
) -> Result<(), DeviceFault> {
    let total = hdr.len() + frame.len();
    let mut pos = 0usize; // position in the hdr ++ frame stream
    for s in slots {
        let mut written = 0u64;
        for d in &all[s.first_desc..s.first_desc + s.ndesc] {
            if pos >= total {
                break;
            }
            let n = (d.len as usize).min(total - pos);
            let mut addr = d.addr;
            let mut left = n;
            // The part of this descriptor that falls in the header, then the part in the frame.
            if pos < hdr.len() {
                let h = (hdr.len() - pos).min(left);
                dma.write(addr, &hdr[pos..pos + h], DmaKind::PacketWrite)
                    .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
                addr += h as u64;
                left -= h;
                pos += h;
            }
            if left > 0 {
                let f = pos - hdr.len();
                dma.write(addr, &frame[f..f + left], DmaKind::PacketWrite)
                    .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
                pos += left;
            }
            written += n as u64;
        }
        debug_assert!(written <= s.cap);
        ring.push_used(
            s.head,
            if wrong_len {
                s.cap as u32
            } else {
                written as u32
            },
        );
    }
    Ok(())
}
