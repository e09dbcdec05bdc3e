//! The `inject` step: hostile structures written straight into a running queue's rings (the
//! way tests/tests/hostile_input.rs builds them), then the doorbell; or a quirk armed for the
//! next device instance.
//!
//! RX faults are met when a frame arrives: a probe frame (ignored by the frame ledger) is
//! transmitted on the same pair, so automatic receive steering sends it to that pair's RX queue,
//! and is handed to the receive FIFO. The pair must be active (VQ_PAIRS_SET).
//!
//! The hostile chain replaces whatever the device would consume next: with nothing pending
//! (TX, control) it is published as a new avail entry; with buffers posted (RX) the descriptor
//! the device takes next is overwritten. The driver's view of that ring is stale afterwards,
//! which does not matter: the device ends in DEVICE_NEEDS_RESET and the next `reset` rebuilds
//! every ring.

use super::error::StepError;
use super::ledger::PROBE_STREAM;
use super::model::Fault;
use super::runner::World;
use crate::driver::net::{rxq, txq};
use crate::frames;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// Guest memory the hostile descriptors point into.
const SCRATCH: u64 = 128 << 10;
/// An IOVA below guest memory where nothing is mapped.
const UNMAPPED: u64 = 0x1000;
/// Longer than the largest TX chain the device accepts (64 KiB frame + header).
const OVERSIZED: u32 = 70_000;

/// A descriptor; `next` is relative to the head the chain is written at.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// What goes into the avail ring.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    /// The chain's own head.
    Chain,
    /// This raw value as the avail entry.
    Raw(u16),
    /// avail->idx moved queue size + 1 past the device's position.
    Jump,
}

struct Plan {
    queue: u16,
    descs: Vec<(u16, Desc)>,
    head: Head,
    /// Push a frame into the receive FIFO before the doorbell (RX faults).
    frame: bool,
}

impl World<'_> {
    /// Runs an `inject` step on device `device`, queue pair `pair`.
    pub(crate) fn inject(
        &mut self,
        device: usize,
        fault: Fault,
        pair: u16,
    ) -> Result<String, StepError> {
        if let (Fault::Quirk(q), Some(sv)) =
            (fault, self.served.get_mut(device).and_then(Option::as_mut))
        {
            let name = sv.name.clone();
            sv.client
                .call(&crate::ctl::Request::Quirk {
                    name: q.name().into(),
                    on: true,
                })
                .map_err(|e| StepError::Usage(format!("served device `{name}`: {e}")))?;
            return Ok(format!(
                "quirk {} switched on in served device `{name}`: {}",
                q.name(),
                q.describe()
            ));
        }
        if let Fault::Quirk(q) = fault {
            self.pending_quirks = self.pending_quirks.with(q);
            return Ok(format!(
                "quirk {} armed for the next device instance: {}",
                q.name(),
                q.describe()
            ));
        }
        let rng = &mut self.rng;
        let node = self
            .nodes
            .get_mut(device)
            .and_then(Option::as_mut)
            .ok_or_else(|| StepError::Usage(format!("no driven device {device}")))?;
        if !node.started {
            return Err(StepError::Usage(format!(
                "device `{}` is not started: nothing to inject into",
                node.name
            )));
        }
        let scratch = match node.scratch {
            Some(s) => s,
            None => {
                let s = node.drv.mem.alloc(SCRATCH, 4096)?;
                node.scratch = Some(s);
                s
            }
        };
        let d = |addr, len, flags, next| Desc {
            addr,
            len,
            flags,
            next,
        };
        let tx = |descs: Vec<(u16, Desc)>| Plan {
            queue: txq(pair),
            descs,
            head: Head::Chain,
            frame: false,
        };
        let plan = match fault {
            Fault::DescriptorLoop => tx(vec![(0, d(scratch, 64, F_NEXT, 0))]),
            Fault::UnmappedBuffer => tx(vec![(0, d(UNMAPPED, 64, 0, 0))]),
            Fault::ZeroLength => tx(vec![(0, d(scratch, 0, 0, 0))]),
            Fault::WritableInTx => tx(vec![(0, d(scratch, 64, F_WRITE, 0))]),
            Fault::OversizedChain => tx(vec![(0, d(scratch, OVERSIZED, 0, 0))]),
            Fault::IndexOutOfRange => Plan {
                queue: txq(pair),
                descs: Vec::new(),
                head: Head::Raw(node.drv.opts.queue_size),
                frame: false,
            },
            Fault::AvailIndexJump => Plan {
                queue: txq(pair),
                descs: Vec::new(),
                head: Head::Jump,
                frame: false,
            },
            Fault::RxUnmappedBuffer => Plan {
                queue: rxq(pair),
                descs: vec![(0, d(UNMAPPED, 2048, F_WRITE, 0))],
                head: Head::Chain,
                frame: true,
            },
            Fault::ReadableInRx => Plan {
                queue: rxq(pair),
                descs: vec![(0, d(scratch, 2048, 0, 0))],
                head: Head::Chain,
                frame: true,
            },
            Fault::CtrlNoStatus => {
                node.drv.mem.write(scratch, &[0, 0, 1])?;
                let ctrl = node.drv.num_queues().saturating_sub(1);
                Plan {
                    queue: ctrl,
                    descs: vec![(0, d(scratch, 2, F_NEXT, 1)), (1, d(scratch + 2, 1, 0, 0))],
                    head: Head::Chain,
                    frame: false,
                }
            }
            Fault::Quirk(_) => return Ok(String::new()),
        };
        let q = plan.queue;
        let mem = node.drv.mem.clone();
        let (desc, avail, size) = {
            let r = node.drv.ring(q)?;
            (r.desc, r.avail, r.size)
        };
        let last = node
            .dev
            .queue(q)
            .ok_or_else(|| StepError::Usage(format!("device has no queue {q}")))?
            .last_avail;
        let published = mem.read_u16(avail + 2)?;
        let slot = last % size;
        let slot_at = avail + 4 + 2 * u64::from(slot);
        let pending = published != last;
        let h = if pending {
            mem.read_u16(slot_at)? % size
        } else {
            slot
        };
        for (rel, x) in &plan.descs {
            let at = desc + 16 * u64::from((h + rel) % size);
            mem.write_u64(at, x.addr)?;
            mem.write_u32(at + 8, x.len)?;
            mem.write_u16(at + 12, x.flags)?;
            mem.write_u16(at + 14, (h + x.next) % size)?;
        }
        match plan.head {
            Head::Jump => {
                mem.store_u16_release(avail + 2, last.wrapping_add(size).wrapping_add(1))?
            }
            Head::Raw(v) => {
                mem.write_u16(slot_at, v)?;
                if !pending {
                    mem.store_u16_release(avail + 2, last.wrapping_add(1))?;
                }
            }
            Head::Chain if !pending => {
                mem.write_u16(slot_at, h)?;
                mem.store_u16_release(avail + 2, last.wrapping_add(1))?;
            }
            Head::Chain => {}
        }
        if plan.frame {
            // Automatic receive steering sends a flow to the pair that last transmitted it:
            // transmit the probe on this pair first (in loopback that alone delivers it), then
            // hand it to the receive FIFO.
            let mac = node.drv.mac()?;
            let f = frames::build(mac, mac, PROBE_STREAM, 0, 128, rng);
            node.drv.send(pair, &[&f])?;
            if node.dev.fault().is_none() {
                node.dev.inbox().push(&f);
            }
        }
        if node.dev.fault().is_none() {
            node.drv.kick(q)?;
        }
        let fault_text = node
            .dev
            .fault()
            .map_or_else(|| "no fault".to_string(), |f| f.to_string());
        Ok(format!(
            "{}: {} on queue {q}: status {:#04x}, {fault_text}",
            node.name,
            fault.name(),
            node.dev.status()
        ))
    }
}
