//! The network peer of a migrating guest: it receives the frames the guest transmits (and
//! checks them: exactly once, in order, intact) and sends frames to the guest. When the guest
//! moves, the peer follows it to the destination device (what the switch learns from the
//! guest's announce).

use crate::frames::{self, Tracker};
use device::{Device, Port};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;

/// MAC of the peer.
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
/// Stream ids of peer-to-guest traffic start here (guest-to-peer streams are the pair numbers).
pub const PEER_STREAM_BASE: u16 = 100;

/// Receives what the guest sends.
#[derive(Debug, Default)]
pub struct PeerPort {
    pub received: Mutex<Tracker>,
}

impl Port for PeerPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        self.received.lock().record(frame);
        true
    }
    fn describe(&self) -> String {
        "migration peer".into()
    }
}

/// Generates peer-to-guest traffic.
pub struct PeerSender {
    guest_mac: [u8; 6],
    pairs: u16,
    rng: SmallRng,
    pub sent: HashMap<u16, u64>,
}

impl PeerSender {
    /// A sender to `guest_mac` with one stream per pair.
    pub fn new(guest_mac: [u8; 6], pairs: u16, seed: u64) -> Self {
        PeerSender {
            guest_mac,
            pairs,
            rng: SmallRng::seed_from_u64(seed),
            sent: HashMap::new(),
        }
    }

    /// Sends `per_pair` frames of every stream into `dev`'s receive FIFO.
    pub fn send(&mut self, dev: &Arc<Device>, per_pair: usize) {
        for p in 0..self.pairs {
            let stream = PEER_STREAM_BASE + p;
            for _ in 0..per_pair {
                let seq = self.sent.entry(stream).or_insert(0);
                let len = self.rng.gen_range(frames::MIN_FRAME..=1514);
                let f = frames::build(PEER_MAC, self.guest_mac, stream, *seq, len, &mut self.rng);
                if dev.inbox().push(&f) {
                    *seq += 1;
                }
            }
        }
        dev.service_rx();
    }
}
