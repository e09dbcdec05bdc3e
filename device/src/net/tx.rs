//! Transmit (virtio 1.2 5.1.6.2): the driver posts virtio_net_hdr + frame as a device-readable
//! chain; the device sends the frame to its port and returns the chain with used len 0.

use super::engine::{Datapath, NetEngine};
use super::{ETH_HLEN, MAX_TX_CHAIN, NET_HDR_LEN};
use crate::capture::CaptureDirection;
use crate::fault::DeviceFault;
use crate::queue::chain::ChainKind;
use crate::state::QueueState;
use dma::DmaKind;

impl NetEngine {
    /// Drains TX queue `q`.
    pub(crate) fn service_tx(&mut self, q: u16, dp: &mut Datapath<'_>) -> Result<(), DeviceFault> {
        let max_frame = self.params.max_frame;
        let batch = self.params.batch;
        let pair = q / 2;
        loop {
            let NetEngine {
                queues,
                dma,
                chain,
                buf,
                port,
                net,
                capture,
                ..
            } = self;
            let counters = &mut *dp.counters;
            let QueueState::Enabled(ring) = &mut queues[usize::from(q)].state else {
                return Ok(());
            };
            let n = ring.fetch_avail(dma, batch)?;
            if n == 0 {
                if ring.arm_notification(dma)? {
                    continue;
                }
                return Ok(());
            }
            let qc = &mut counters.queues[usize::from(q)];
            while ring.pop(dma, chain, ChainKind::Tx, MAX_TX_CHAIN)? {
                // The chain's bytes go to buf[..len]; buf only grows (no zeroing per frame).
                let mut len = 0;
                for d in &chain.descs {
                    let end = len + d.len as usize;
                    if buf.len() < end {
                        buf.resize(end, 0);
                    }
                    dma.read(d.addr, &mut buf[len..end], DmaKind::PacketRead)
                        .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
                    len = end;
                }
                ring.push_used(chain.head, 0);
                qc.chains += 1;
                let frame = buf[..len].get(NET_HDR_LEN..).unwrap_or(&[]);
                if frame.len() < ETH_HLEN {
                    counters.tx_dropped_runt += 1;
                    continue;
                }
                if frame.len() > max_frame {
                    counters.tx_dropped_oversize += 1;
                    continue;
                }
                net.note_tx_flow(frame, pair);
                if port.transmit(frame) {
                    if let Some(c) = capture {
                        c.frame(CaptureDirection::Tx, pair, frame);
                    }
                    counters.tx_frames += 1;
                    counters.tx_bytes += frame.len() as u64;
                    qc.frames += 1;
                    qc.bytes += frame.len() as u64;
                } else {
                    counters.tx_port_drops += 1;
                }
            }
            ring.flush_used(dma)?;
            if ring.interrupt_decision(dma)? {
                dp.interrupts.push(q);
            } else {
                counters.queues[usize::from(q)].interrupts_suppressed += 1;
            }
        }
    }
}
