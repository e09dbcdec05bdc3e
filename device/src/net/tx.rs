//! Transmit (virtio 1.2 5.1.6.2): the driver posts virtio_net_hdr + frame as a device-readable
//! chain; the device acts on the header (completes a checksum, segments a GSO frame, or hands
//! both on to a port that takes them; docs/offloads.md), sends the frame to its port and
//! returns the chain with used len 0.

use super::engine::{Datapath, NetEngine, Service};
use super::offload::csum;
use super::offload::gso::{self, SegBugs, TCP_CSUM_OFFSET};
use super::offload::hdr::{self, BadTxHdr, GsoKind, NetHdr, TxOffload};
use super::{ETH_HLEN, MAX_TX_CHAIN};
use crate::capture::{CaptureDirection, FrameCapture};
use crate::counters::DeviceCounters;
use crate::fault::DeviceFault;
use crate::port::Port;
use crate::queue::chain::ChainKind;
use crate::quirks::Quirk;
use crate::state::QueueState;
use dma::DmaKind;
use std::sync::Arc;

/// Where one TX queue's frames go: the port, the capture, the counters.
struct Out<'a> {
    port: &'a dyn Port,
    capture: &'a Option<Arc<dyn FrameCapture>>,
    counters: &'a mut DeviceCounters,
    q: usize,
    pair: u16,
}

impl Out<'_> {
    /// Sends a wire frame (or, with `hdr`, a frame the port finishes itself).
    fn send(&mut self, hdr: Option<&NetHdr>, frame: &[u8]) {
        let ok = match hdr {
            None => self.port.transmit(frame),
            Some(h) => self.port.transmit_with_hdr(h, frame),
        };
        if !ok {
            self.counters.tx_port_drops += 1;
            return;
        }
        if let Some(c) = self.capture {
            c.frame(CaptureDirection::Tx, self.pair, frame);
        }
        let c = &mut *self.counters;
        c.tx_frames += 1;
        c.tx_bytes += frame.len() as u64;
        c.queues[self.q].frames += 1;
        c.queues[self.q].bytes += frame.len() as u64;
    }
}

impl NetEngine {
    /// Drains TX queue `q`.
    pub(crate) fn service_tx(
        &mut self,
        q: u16,
        dp: &mut Datapath<'_>,
    ) -> Result<Service, DeviceFault> {
        let max_frame = self.params.max_frame;
        let batch = self.params.batch;
        let budget = self.params.service_budget;
        let mut taken = 0u32;
        let quirks = self.params.quirks;
        let odd_bug = quirks.has(Quirk::CsumOddLengthWrong);
        let bugs = SegBugs {
            ip_id_fixed: quirks.has(Quirk::TsoIpIdFixed),
            seq_fixed: quirks.has(Quirk::TsoSeqWrong),
        };
        let features = dp.features;
        let hdr_len = bar_registers::virtio::net_hdr::len(features);
        let pair = q / 2;
        loop {
            let NetEngine {
                queues,
                dma,
                chain,
                buf,
                seg_buf,
                port,
                net,
                capture,
                ..
            } = self;
            let counters = &mut *dp.counters;
            let dma = dma.port(q);
            let QueueState::Enabled(ring) = &mut queues[usize::from(q)].state else {
                return Ok(Service::Done);
            };
            if taken >= budget {
                // At a batch boundary: everything fetched is used and published. The rest
                // waits for the caller's next round (after others had the lock).
                counters.queues[usize::from(q)].budget_yields += 1;
                return Ok(Service::More);
            }
            let n = ring.fetch_avail(dma, batch)?;
            if n == 0 {
                if ring.arm_notification(dma)? {
                    continue;
                }
                return Ok(Service::Done);
            }
            taken += u32::from(n);
            let mut port_busy = false;
            loop {
                // Flow control: a chain is taken only when the port has room for its frame.
                // The rest stays in the ring (the ring state counts only what was taken) until
                // the port's waker runs the queue again (Port::ready).
                if !port.ready() {
                    port_busy = true;
                    break;
                }
                if !ring.pop(dma, chain, ChainKind::Tx, MAX_TX_CHAIN)? {
                    break;
                }
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
                counters.queues[usize::from(q)].chains += 1;
                if len < hdr_len + ETH_HLEN {
                    counters.tx_dropped_runt += 1;
                    continue;
                }
                // With HASH_REPORT the header is a virtio_net_hdr_v1_hash (5.1.6); its hash
                // fields mean nothing on TX.
                let (h, frame) = buf[..len].split_at_mut(hdr_len);
                let h = NetHdr::parse(h);
                let offload = match hdr::tx_offload(&h, frame.len(), features) {
                    Ok(o) => o,
                    Err(r) => {
                        counters.bad_tx_hdr(r);
                        continue;
                    }
                };
                if hdr::has_unknown_flags(&h) {
                    counters.tx_hdr_unknown_flags += 1;
                }
                let gso = matches!(offload, TxOffload::Gso { .. });
                if !gso && frame.len() > max_frame {
                    counters.tx_dropped_oversize += 1;
                    continue;
                }
                net.note_tx_flow(frame, pair);
                let mut out = Out {
                    port: port.as_ref(),
                    capture,
                    counters,
                    q: usize::from(q),
                    pair,
                };
                match offload {
                    TxOffload::None => out.send(None, frame),
                    TxOffload::Csum { start, offset } => {
                        out.counters.tx_csum += 1;
                        if out.port.offloads().csum {
                            out.send(Some(&h), frame);
                        } else {
                            csum::complete(frame, start, offset, odd_bug);
                            out.send(None, frame);
                        }
                    }
                    TxOffload::Gso {
                        kind,
                        ecn,
                        mss,
                        csum_start,
                        csum_offset,
                    } => {
                        let Some(t) = gso::parse_tcp(frame, kind) else {
                            out.counters.bad_tx_hdr(BadTxHdr::GsoMalformed);
                            continue;
                        };
                        if csum_start != t.l4
                            || csum_offset != TCP_CSUM_OFFSET
                            || t.payload == frame.len()
                        {
                            out.counters.bad_tx_hdr(BadTxHdr::GsoMalformed);
                            continue;
                        }
                        if t.payload + usize::from(mss) > max_frame {
                            out.counters.bad_tx_hdr(BadTxHdr::GsoBadSize);
                            continue;
                        }
                        out.counters.tx_gso_frames += 1;
                        let offers = out.port.offloads();
                        let takes = match kind {
                            GsoKind::Tcp4 => offers.tso4,
                            GsoKind::Tcp6 => offers.tso6,
                        } && (!ecn || offers.ecn);
                        if takes {
                            out.send(Some(&h), frame);
                        } else {
                            let frame: &[u8] = frame;
                            let n = gso::segment(frame, &t, usize::from(mss), bugs, seg_buf, |s| {
                                out.send(None, s)
                            });
                            out.counters.tx_gso_segments += n;
                        }
                    }
                }
            }
            ring.flush_used(dma)?;
            if ring.interrupt_decision(dma)? {
                dp.interrupts.push(q);
            } else {
                counters.queues[usize::from(q)].interrupts_suppressed += 1;
            }
            if port_busy {
                counters.tx_port_busy += 1;
                if !self.port_blocked.contains(&q) {
                    self.port_blocked.push(q);
                }
                return Ok(Service::Done);
            }
        }
    }
}
