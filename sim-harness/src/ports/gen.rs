//! `--port gen:SIZE`: a traffic generator in place of a wire. A thread of the serving process
//! fills the device's receive FIFO ([`device::RxInbox`]) with SIZE-byte frames to the device's
//! own MAC as fast as the device delivers them into the driver's RX rings; what the device
//! transmits is counted and discarded (the device's `NullPort`).
//!
//! The frames belong to 64 UDP flows, a burst of [`BATCH`] frames per flow, the flows in turn:
//! trains, as a TCP sender's segments arrive, and as DPDK's `txonly` sends (a burst per queue,
//! all of one flow unless `--txonly-multi-flow`; app/test-pmd/txonly.c). Each burst is steered
//! to one RX queue. Flows interleaved frame by frame, as this generator sent them before, put
//! consecutive frames on different queues; the 4-QP RX cells carried 12-14% fewer frames
//! that way (docs/bench.md).
//!
//! This is the device's receive path without a host wire's cost, the counterpart of DPDK's vhost
//! PMD in `txonly` (`vdpa-emu bench datapath --dir rx`). The generator pushes a burst of 32
//! frames per queue pair while the FIFO holds fewer than [`HIGH_WATER`], so it never overflows
//! the default FIFO (at most 256 + 32 x 32 frames of 4096): while the FIFO is that full (the
//! driver has not posted buffers) it offers the frames to the device and sleeps briefly.

use crate::frames;
use crate::vfio_user::sock::Stop;
use device::Device;
use std::time::Duration;

/// Frames the generator lets wait in the receive FIFO (the device's holds `rx_backlog`, 4096
/// by default), plus one offer's burst at most. 256, not 1024: frames past the FIFO's 256
/// spare buffers cost a `malloc` and a `free` each, and the RX cells went 2-6% faster
/// (docs/bench.md).
pub const HIGH_WATER: usize = 256;

/// Frames pushed between offers to the device, all of one flow (a burst).
pub const BATCH: usize = 32;

/// Parses the SIZE of `gen:SIZE` (60..=1514 bytes: Ethernet header to payload end).
pub fn parse_size(s: &str) -> Option<usize> {
    s.parse::<usize>().ok().filter(|n| (60..=1514).contains(n))
}

/// The generator loop, until `stop`.
pub fn run(dev: &Device, size: usize, stop: &Stop) {
    let mac = dev.layout().params.mac;
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(0x9e4);
    let src = [0x02, 0, 0, 0, 0, 0x01];
    let frames: Vec<Vec<u8>> = (0..64u16)
        .map(|s| frames::build(src, mac, s, 0, size, &mut rng))
        .collect();
    let inbox = dev.inbox().clone();
    // A burst per queue pair between offers, as DPDK's txonly sends a burst per queue.
    let pairs = dev.layout().params.queue_pairs.max(1);
    let mut flow = 0usize;
    let mut rounds = 0u32;
    loop {
        // is_triggered may poll the stop eventfd: a syscall, so not every round.
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(256) && stop.is_triggered() {
            return;
        }
        if inbox.len() >= HIGH_WATER {
            dev.try_service_rx();
            if inbox.len() >= HIGH_WATER {
                std::thread::sleep(Duration::from_micros(20));
            }
            continue;
        }
        for _ in 0..pairs {
            // One flow per burst, the flows in turn (the module docs).
            let frame = frames[flow % frames.len()].as_slice();
            let burst: [&[u8]; BATCH] = [frame; BATCH];
            inbox.push_batch(&burst);
            flow = flow.wrapping_add(1);
        }
        dev.try_service_rx();
    }
}
