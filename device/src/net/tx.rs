//! Transmit (virtio 1.2 5.1.6.2): the driver posts virtio_net_hdr + frame as a device-readable
//! chain; the device acts on the header (completes a checksum, segments a GSO frame, or hands
//! both on to a port that takes them; docs/offloads.md), sends the frame to its port and
//! returns the chain with used len 0.

use super::engine::{Datapath, NetEngine, Service};
use super::filter::flow_hash;
use super::lane::Lane;
use super::offload::csum;
use super::offload::gso::{self, SegBugs, TCP_CSUM_OFFSET};
use super::offload::hdr::{self, BadTxHdr, GsoKind, NetHdr, TxOffload};
use super::{ETH_HLEN, MAX_TX_CHAIN};
use crate::capture::{CaptureDirection, FrameCapture};
use crate::counters::TxCounters;
use crate::fault::DeviceFault;
use crate::port::Port;
use crate::queue::chain::{Chain, ChainKind};
use crate::quirks::Quirk;
use crate::state::QueueState;
use dma::DmaKind;
use std::sync::Arc;

/// Where one TX queue's frames go: the port, the capture, the counters.
struct Out<'a> {
    port: &'a dyn Port,
    capture: &'a Option<Arc<dyn FrameCapture>>,
    counters: &'a mut TxCounters,
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
        c.queue.frames += 1;
        c.queue.bytes += frame.len() as u64;
    }
}

/// What a TX service needs of the device, taken while the device lock is held; the service
/// itself then needs only its queue's lane ([`tx_budget`]).
#[derive(Clone)]
pub(crate) struct TxEnv {
    pub q: u16,
    pub features: u64,
    pub max_frame: usize,
    pub batch: u16,
    pub budget: u32,
    pub quirks: crate::quirks::Quirks,
    pub port: Arc<dyn Port>,
    pub capture: Option<Arc<dyn FrameCapture>>,
    /// Automatic receive steering is on (5.1.6.5.6.1: more than one pair in use, no RSS):
    /// every frame's flow is noted for the pair.
    pub auto_steer: bool,
}

/// How one TX budget ended (besides the ring, the port and the lane's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxOutcome {
    /// Used buffer notifications that became due (one per batch whose decision was yes).
    pub interrupts: u16,
    /// The port was full: the queue waits for its waker ([`Port::ready`]).
    pub port_busy: bool,
    /// The budget ran out at a batch boundary; chains may remain.
    pub more: bool,
}

/// A TX queue's scratch, reused between services (kept in its lane).
#[derive(Debug, Default)]
pub(crate) struct TxScratch {
    /// The chain being processed.
    chain: Chain,
    /// The chain's bytes (header and frame).
    buf: Vec<u8>,
    /// The segment being built from a GSO frame.
    seg_buf: Vec<u8>,
    /// Flow buckets of the frames sent, for automatic receive steering (applied to the flow
    /// table by the device afterwards; consecutive repeats once).
    pub flows: Vec<u16>,
}

impl NetEngine {
    /// What a service of TX queue `q` needs of the device (see [`TxEnv`]).
    pub(crate) fn tx_env(&self, q: u16, features: u64) -> TxEnv {
        TxEnv {
            q,
            features,
            max_frame: self.params.max_frame,
            batch: self.params.batch,
            budget: self.params.service_budget,
            quirks: self.params.quirks,
            port: self.port.clone(),
            capture: self.capture.clone(),
            auto_steer: self.net.auto_steers(),
        }
    }

    /// Drains TX queue `q` for one budget, with the device lock held (see [`tx_budget`]),
    /// and does what it leaves: the flows noted, the interrupt due, the port's wait.
    pub(crate) fn service_tx(
        &mut self,
        q: u16,
        dp: &mut Datapath<'_>,
    ) -> Result<Service, DeviceFault> {
        let env = self.tx_env(q, dp.features);
        let lanes = self.lanes.clone();
        let mut lane = lanes.lock(q);
        let res = tx_budget(&mut lane, &env);
        let out = self.tx_done(q, &mut lane.scratch.flows, res, dp)?;
        Ok(if out.more {
            Service::More
        } else {
            Service::Done
        })
    }

    /// What a TX budget leaves to the device: the flows it noted go into the flow table, the
    /// interrupt into `dp`, a full port's wait into the queues it holds back. Returns the
    /// outcome, or the budget's fault.
    pub(crate) fn tx_done(
        &mut self,
        q: u16,
        flows: &mut Vec<u16>,
        res: Result<TxOutcome, DeviceFault>,
        dp: &mut Datapath<'_>,
    ) -> Result<TxOutcome, DeviceFault> {
        let mut moved = false;
        for b in flows.drain(..) {
            moved |= self.net.note_flow_bucket(b, q / 2);
        }
        if moved {
            self.steering_changed();
        }
        let out = res?;
        for _ in 0..out.interrupts {
            dp.interrupts.push(q);
        }
        if out.port_busy && !self.port_blocked.contains(&q) {
            self.port_blocked.push(q);
        }
        Ok(out)
    }
}

/// Drains TX queue `env.q` through its lane for at most one budget
/// ([`crate::DeviceConfig::service_budget`] chains, checked at batch boundaries: everything
/// fetched is then used and published and the interrupt decided). Needs nothing of the device
/// but `env`: the caller may hold the device lock or not (docs/architecture.md, Concurrency).
// Out of line: called from the locked service and from the off-lock budget. Inlined into the
// locked one by the release build's LTO, it measured 3-5% slower in TX dequeue (criterion,
// medians of four interleaved runs).
#[inline(never)]
pub(crate) fn tx_budget(lane: &mut Lane, env: &TxEnv) -> Result<TxOutcome, DeviceFault> {
    let q = env.q;
    let max_frame = env.max_frame;
    let batch = env.batch;
    let budget = env.budget;
    let mut taken = 0u32;
    let quirks = env.quirks;
    let odd_bug = quirks.has(Quirk::CsumOddLengthWrong);
    let bugs = SegBugs {
        ip_id_fixed: quirks.has(Quirk::TsoIpIdFixed),
        seq_fixed: quirks.has(Quirk::TsoSeqWrong),
    };
    let features = env.features;
    let hdr_len = bar_registers::virtio::net_hdr::len(features);
    let pair = q / 2;
    let port = &env.port;
    let capture = &env.capture;
    let Lane {
        slot,
        dma,
        tx: counters,
        scratch,
    } = lane;
    let TxScratch {
        chain,
        buf,
        seg_buf,
        flows,
    } = scratch;
    let mut done = TxOutcome::default();
    loop {
        let QueueState::Enabled(ring) = &mut slot.state else {
            return Ok(done);
        };
        if taken >= budget {
            // At a batch boundary: everything fetched is used and published. The rest
            // waits for the caller's next round (after others had the lock).
            counters.queue.budget_yields += 1;
            done.more = true;
            return Ok(done);
        }
        let n = ring.fetch_avail(dma, batch)?;
        if n == 0 {
            if ring.arm_notification(dma)? {
                continue;
            }
            return Ok(done);
        }
        taken += u32::from(n);
        // The buffers of this batch, on their way here while the first ones are copied.
        ring.prefetch_fetched(dma, false);
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
            counters.queue.chains += 1;
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
            if env.auto_steer {
                let b = flow_hash(frame) as u16;
                if flows.last() != Some(&b) {
                    flows.push(b);
                }
            }
            let mut out = Out {
                port: port.as_ref(),
                capture,
                counters,
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
            done.interrupts += 1;
        } else {
            counters.queue.interrupts_suppressed += 1;
        }
        if port_busy {
            counters.tx_port_busy += 1;
            done.port_busy = true;
            return Ok(done);
        }
    }
}
