//! Unit tests of the queue reset (VIRTIO_F_RING_RESET, virtio 1.2 2.6.1, 4.1.4.3) and of the
//! doorbell's notification data (VIRTIO_F_NOTIFICATION_DATA, 2.9, 4.1.5.2): every transition
//! of the queue state machine they add and every write they refuse.

use crate::doorbell::NotifyArea;
use crate::{Device, DeviceConfig, DmaMapper, Quirk, RegionAccess};
use bar_registers::lm::{ring_state_offset, unpack_ring_state, LmLayout};
use bar_registers::pci::{command, hdr};
use bar_registers::virtio::{bits, common, NO_VECTOR};
use bar_registers::REGION_CONFIG;
use dma::{Backing, Perms, SharedMemory};
use std::sync::Arc;

const IOVA: u64 = 0x1000_0000;
const MEM: u64 = 1 << 20;
const QSIZE: u16 = 16;

/// Ring areas of queue `q` in generation `g` (a re-enabled queue gets fresh rings elsewhere).
fn ring(q: u16, g: u64) -> (u64, u64, u64) {
    let base = IOVA + g * 0x8000 + u64::from(q) * 0x1000;
    (base, base + 0x400, base + 0x800)
}

struct Rig {
    dev: Arc<Device>,
    shm: Arc<SharedMemory>,
}

impl Rig {
    fn new() -> Self {
        let dev = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
        dev.set_loopback();
        let shm = Arc::new(SharedMemory::new("vdpa-emu-ring-reset-test", MEM).unwrap());
        dev.dma_map(
            IOVA,
            MEM,
            Perms::RW,
            Backing::Fd {
                file: shm.try_clone_file().unwrap(),
                offset: 0,
            },
        )
        .unwrap();
        Rig { dev, shm }
    }

    fn write(&self, reg: u64, len: usize, v: u64) {
        let off = self.dev.layout().common.offset + reg;
        self.dev
            .region_write(0, off, &v.to_le_bytes()[..len])
            .unwrap();
    }

    fn read(&self, reg: u64, len: usize) -> u64 {
        let off = self.dev.layout().common.offset + reg;
        let mut b = [0u8; 8];
        self.dev.region_read(0, off, &mut b[..len]).unwrap();
        u64::from_le_bytes(b)
    }

    fn select(&self, q: u16) {
        self.write(common::QUEUE_SELECT, 2, q.into());
    }

    fn lm_state(&self, q: u16) -> (u16, u16) {
        let lm = self.dev.layout().lm;
        let mut b = [0u8; 4];
        self.dev
            .region_read(
                lm.bar.into(),
                lm.offset + ring_state_offset(LmLayout::Dpdk, q),
                &mut b,
            )
            .unwrap();
        unpack_ring_state(u32::from_le_bytes(b))
    }

    fn used_idx(&self, q: u16, g: u64) -> u16 {
        self.shm.read_u16(ring(q, g).2 - IOVA + 2).unwrap()
    }

    fn kick(&self, q: u16, data: &[u8]) {
        let l = self.dev.layout();
        self.dev
            .region_write(l.notify.bar.into(), l.doorbell_offset(q), data)
            .unwrap();
    }

    /// Programs queue `q` with generation `g`'s rings at `size` entries and enables it.
    fn enable(&self, q: u16, g: u64, size: u16) {
        let (d, a, u) = ring(q, g);
        self.select(q);
        self.write(common::QUEUE_SIZE, 2, size.into());
        self.write(common::QUEUE_DESC, 8, d);
        self.write(common::QUEUE_DRIVER, 8, a);
        self.write(common::QUEUE_DEVICE, 8, u);
        self.write(common::QUEUE_MSIX_VECTOR, 2, 1);
        self.write(common::QUEUE_ENABLE, 2, 1);
    }

    /// Bus master, features VERSION_1 and `hi` (bits 32-63 of the driver's set), FEATURES_OK,
    /// queues 0-3 at 16 entries, DRIVER_OK.
    fn start(&self, hi: &[u32]) {
        let mut c = [0u8; 2];
        self.dev
            .region_read(REGION_CONFIG, hdr::COMMAND, &mut c)
            .unwrap();
        let cmd = u16::from_le_bytes(c) | command::BUS_MASTER | command::MEMORY_SPACE;
        self.dev
            .region_write(REGION_CONFIG, hdr::COMMAND, &cmd.to_le_bytes())
            .unwrap();
        self.write(common::DEVICE_STATUS, 1, 1);
        self.write(common::DEVICE_STATUS, 1, 3);
        let f = hi
            .iter()
            .fold(1u64 << (bits::VERSION_1 - 32), |m, b| m | 1 << (b - 32));
        self.write(common::DRIVER_FEATURE_SELECT, 4, 1);
        self.write(common::DRIVER_FEATURE, 4, f);
        self.write(common::DEVICE_STATUS, 1, 11);
        for q in 0..4u16 {
            self.enable(q, 0, QSIZE);
        }
        self.write(common::DEVICE_STATUS, 1, 15);
        assert_eq!(self.dev.status(), 15);
    }

    /// Posts chain `i` (one descriptor) on split queue `q` of generation `g`.
    fn post(&self, q: u16, g: u64, i: u16, len: u32, writable: bool) {
        let (d, a, _) = ring(q, g);
        let buf = IOVA + 0x40000 + u64::from(q) * 0x10000 + u64::from(i % QSIZE) * 0x800;
        let slot = u64::from(i % QSIZE);
        self.shm.write_u64(d - IOVA + 16 * slot, buf).unwrap();
        self.shm.write_u32(d - IOVA + 16 * slot + 8, len).unwrap();
        let flags = if writable { 2 } else { 0 };
        self.shm
            .write_u16(d - IOVA + 16 * slot + 12, flags)
            .unwrap();
        self.shm
            .write_u16(a - IOVA + 4 + 2 * slot, slot as u16)
            .unwrap();
        self.shm.write_u16(a - IOVA + 2, i + 1).unwrap();
    }

    /// A TX frame (12-byte header + 60 bytes, broadcast) as chain `i` of TX queue `q`.
    fn post_tx(&self, q: u16, g: u64, i: u16) {
        let buf = IOVA + 0x40000 + u64::from(q) * 0x10000 + u64::from(i % QSIZE) * 0x800;
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
        f.extend((0..46).map(|b| b as u8 ^ i as u8));
        self.shm.write(buf - IOVA, &f).unwrap();
        self.post(q, g, i, f.len() as u32, false);
    }

    /// Polls queue_reset of the selected queue until it reads 0: how many reads read 1.
    fn wait_reset(&self) -> u32 {
        let mut ones = 0;
        while self.read(common::QUEUE_RESET, 2) == 1 {
            ones += 1;
            assert!(ones < 100, "queue_reset never reads 0");
        }
        ones
    }
}

#[test]
fn without_ring_reset_negotiated_queue_reset_reads_0_and_writes_are_refused() {
    let r = Rig::new();
    r.start(&[]);
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    let c = r.dev.counters();
    assert_eq!((c.queue_reset_refused, c.queue_resets), (1, 0));
    assert_eq!(r.read(common::QUEUE_RESET, 2), 0);
    assert!(r.dev.queue(1).unwrap().enabled, "the queue kept running");
    // Traffic still flows on it.
    r.post_tx(1, 0, 0);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 1);
}

#[test]
fn a_queue_reset_write_other_than_1_is_refused() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    r.select(1);
    for v in [0u64, 2, 0x101, 0xFFFF] {
        r.write(common::QUEUE_RESET, 2, v);
    }
    let c = r.dev.counters();
    assert_eq!((c.queue_reset_refused, c.queue_resets), (4, 0));
    assert!(r.dev.queue(1).unwrap().enabled);
    assert_eq!(r.read(common::QUEUE_RESET, 2), 0);
}

#[test]
fn a_reset_queue_forgets_its_ring_and_registers_and_touches_no_other_queue() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    for i in 0..3 {
        r.post_tx(1, 0, i);
        r.post_tx(3, 0, i);
    }
    r.kick(1, &1u16.to_le_bytes());
    r.kick(3, &3u16.to_le_bytes());
    assert_eq!((r.used_idx(1, 0), r.used_idx(3, 0)), (3, 3));
    // No RX buffers: the six looped-back frames wait in the receive FIFO.
    assert_eq!(r.dev.inbox().len(), 6);
    assert_eq!(r.lm_state(1), (3, 3));
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    // queue_reset reads 1 while the reset is ongoing (disable_latency_reads = 2), then 0,
    // and queue_enable reads 0 (4.1.4.3.1).
    assert_eq!(r.wait_reset(), 2);
    assert_eq!(r.read(common::QUEUE_ENABLE, 2), 0);
    assert_eq!(
        r.read(common::QUEUE_SIZE, 2),
        256,
        "queue_size back to the maximum"
    );
    assert_eq!(r.read(common::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(r.read(common::QUEUE_DESC, 8), 0);
    assert_eq!(r.read(common::QUEUE_DRIVER, 8), 0);
    assert_eq!(r.read(common::QUEUE_DEVICE, 8), 0);
    assert_eq!(r.lm_state(1), (0, 0), "LM ring state of a reset queue");
    let c = r.dev.counters();
    assert_eq!((c.queue_resets, c.queue_reset_refused), (1, 0));
    // Nothing else changed: queue 3 runs on, its ring state kept, the FIFO holds its frames.
    let q3 = r.dev.queue(3).unwrap();
    assert!(q3.enabled && r.lm_state(3) == (3, 3));
    assert_eq!(r.dev.inbox().len(), 6);
    assert_eq!(r.dev.status(), 15);
    // A kick of the reset queue executes nothing (2.6.1.1.1).
    r.post_tx(1, 0, 3);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 3);
    assert_eq!(r.dev.counters().spurious_doorbells, 1);
}

#[test]
fn a_reset_queue_is_re_enabled_with_a_new_size_and_rings_while_driver_ok() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    for i in 0..5 {
        r.post_tx(1, 0, i);
    }
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 5);
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    r.wait_reset();
    r.enable(1, 1, 8);
    r.select(1);
    assert_eq!(r.read(common::QUEUE_ENABLE, 2), 1);
    assert_eq!(r.read(common::QUEUE_RESET, 2), 0);
    assert_eq!(r.read(common::QUEUE_SIZE, 2), 8);
    // The new ring starts at 0: its first chain is used at used slot 0.
    for i in 0..2 {
        r.post_tx(1, 1, i);
    }
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.used_idx(1, 1), 2);
    assert_eq!(r.used_idx(1, 0), 5, "nothing more written to the old ring");
    assert_eq!(r.dev.queue(1).unwrap().size, 8);
    assert_eq!(r.lm_state(1), (2, 2));
    assert_eq!(r.dev.fault(), None);
}

#[test]
fn while_resetting_no_register_of_the_queue_is_writable() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    let ignored = r.dev.counters().ignored_register_writes;
    r.write(common::QUEUE_ENABLE, 2, 1);
    r.write(common::QUEUE_SIZE, 2, 8);
    assert_eq!(r.dev.counters().ignored_register_writes, ignored + 2);
    assert!(!r.dev.queue(1).unwrap().enabled);
    // Nor is its LM ring state (a stopped queue's is; a resetting one is not stopped yet).
    let lm = r.dev.layout().lm;
    let at = lm.offset + ring_state_offset(LmLayout::Dpdk, 1);
    r.dev
        .region_write(lm.bar.into(), at, &0x0005_0005u32.to_le_bytes())
        .unwrap();
    assert_eq!(r.dev.counters().ignored_register_writes, ignored + 3);
    // A second 1 while resetting starts the reset over: queue_reset reads 1 twice more.
    assert_eq!(r.read(common::QUEUE_RESET, 2), 1);
    r.write(common::QUEUE_RESET, 2, 1);
    assert_eq!(r.dev.counters().queue_resets, 2);
    assert_eq!(r.wait_reset(), 2);
    assert_eq!(r.lm_state(1), (0, 0));
    assert_eq!(r.read(common::QUEUE_SIZE, 2), 256);
    // The LM ring state is writable again once the reset is done (a stopped queue's is).
    r.enable(1, 1, QSIZE);
    assert!(r.dev.queue(1).unwrap().enabled);
}

#[test]
fn with_no_reset_latency_the_queue_is_disabled_at_once() {
    let mut cfg = DeviceConfig::with_queue_pairs(2);
    cfg.disable_latency_reads = 0;
    let r = Rig {
        dev: Device::new(cfg).unwrap(),
        ..Rig::new()
    };
    r.dev.set_loopback();
    let shm = r.shm.clone();
    r.dev
        .dma_map(
            IOVA,
            MEM,
            Perms::RW,
            Backing::Fd {
                file: shm.try_clone_file().unwrap(),
                offset: 0,
            },
        )
        .unwrap();
    r.start(&[bits::RING_RESET]);
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    assert_eq!(r.wait_reset(), 0, "the first read is already 0");
    assert_eq!(r.read(common::QUEUE_ENABLE, 2), 0);
    r.enable(1, 1, QSIZE);
    assert!(r.dev.queue(1).unwrap().enabled);
}

/// With every RX queue in use being reset a received frame is dropped (one pair in use here),
/// the frames that waited for it too; after the re-enable the queue takes frames again.
#[test]
fn frames_for_an_rx_queue_being_reset_are_dropped_when_no_other_can_take_them() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    // No RX buffers yet: two looped-back frames wait in the FIFO for RX queue 0.
    r.post_tx(1, 0, 0);
    r.post_tx(1, 0, 1);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.dev.inbox().len(), 2);
    r.select(0);
    r.write(common::QUEUE_RESET, 2, 1);
    // The next service (a TX kick) finds RX 0 being reset: the waiting and the new frame are
    // dropped, counted.
    r.post_tx(1, 0, 2);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.dev.inbox().len(), 0);
    let c = r.dev.counters();
    assert_eq!(
        (c.rx_dropped_queue_reset, c.rx_resteered_queue_reset),
        (3, 0)
    );
    // Re-enabled, RX 0 takes frames again.
    r.wait_reset();
    r.enable(0, 1, QSIZE);
    r.post(0, 1, 0, 2048, true);
    r.kick(0, &0u16.to_le_bytes());
    r.post_tx(1, 0, 3);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.used_idx(0, 1), 1);
    assert_eq!(r.dev.counters().rx_dropped_queue_reset, 3);
}

#[test]
fn a_stopped_queue_keeps_its_frames_waiting() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    r.select(0);
    r.write(common::QUEUE_ENABLE, 2, 0); // IFC VF stop of RX 0: not a reset
    r.post_tx(1, 0, 0);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.dev.inbox().len(), 1, "waits for the queue's restart");
    assert_eq!(r.dev.counters().rx_dropped_queue_reset, 0);
}

#[test]
fn a_stopped_or_disabled_queue_can_be_reset_too() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET]);
    r.post_tx(1, 0, 0);
    r.kick(1, &1u16.to_le_bytes());
    r.select(1);
    r.write(common::QUEUE_ENABLE, 2, 0); // IFC VF stop: Stopping
    r.write(common::QUEUE_RESET, 2, 1);
    r.wait_reset();
    assert_eq!(r.lm_state(1), (0, 0));
    r.write(common::QUEUE_RESET, 2, 1); // Disabled
    r.wait_reset();
    assert_eq!(r.dev.counters().queue_resets, 2);
}

#[test]
fn a_packed_queue_resets_to_offset_0_with_both_wrap_counters_1() {
    let r = Rig::new();
    r.start(&[bits::RING_RESET, bits::RING_PACKED]);
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    r.wait_reset();
    let q = r.dev.queue(1).unwrap();
    assert_eq!(
        (q.last_avail, q.last_used),
        (
            crate::state::PACKED_RESET_INDEX,
            crate::state::PACKED_RESET_INDEX
        )
    );
}

#[test]
fn the_keeps_state_quirk_keeps_the_old_indices() {
    let r = Rig::new();
    r.dev.set_quirk(Quirk::RingResetKeepsState, true);
    r.start(&[bits::RING_RESET]);
    for i in 0..3 {
        r.post_tx(1, 0, i);
    }
    r.kick(1, &1u16.to_le_bytes());
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    r.wait_reset();
    assert_eq!(
        r.lm_state(1),
        (3, 3),
        "the bug the ring-reset group must catch"
    );
}

#[test]
fn kicks_waiting_in_the_shared_notify_window_are_rung_before_the_reset() {
    let r = Rig::new();
    let area = Arc::new(NotifyArea::new(r.dev.layout()).unwrap());
    r.dev.attach_notify_area(area.clone());
    r.start(&[bits::RING_RESET]);
    r.post_tx(1, 0, 0);
    r.post_tx(3, 0, 0);
    // Kicks stored before the reset write: the access takes them first (PCIe ordering), so
    // both queues' work is done, then queue 1 is reset and its slot left idle.
    area.ring(1, 2).unwrap();
    area.ring(3, 2).unwrap();
    r.select(1);
    r.write(common::QUEUE_RESET, 2, 1);
    assert_eq!(r.dev.counters().shared_doorbells, 2);
    assert_eq!((r.used_idx(1, 0), r.used_idx(3, 0)), (1, 1));
    assert_eq!(area.slot(1), Some(crate::doorbell::IDLE));
    r.wait_reset();
    assert_eq!(r.lm_state(1), (0, 0));
}

#[test]
fn a_resetting_queue_round_trips_through_save_and_restore() {
    let a = Rig::new();
    a.start(&[bits::RING_RESET]);
    a.post_tx(3, 0, 0);
    a.kick(3, &3u16.to_le_bytes());
    a.select(1);
    a.write(common::QUEUE_RESET, 2, 1);
    assert_eq!(a.read(common::QUEUE_RESET, 2), 1, "one read of two used");
    a.dev.pause();
    let state = a.dev.save_state();
    let b = Rig::new();
    b.dev.restore_state(&state).unwrap();
    b.dev.resume();
    b.select(1);
    assert_eq!(
        b.wait_reset(),
        1,
        "the reset goes on where the source left it"
    );
    assert_eq!(b.read(common::QUEUE_ENABLE, 2), 0);
    assert_eq!(b.lm_state(1), (0, 0));
    assert_eq!(b.lm_state(3), (1, 1));
    b.enable(1, 1, 8);
    assert!(b.dev.queue(1).unwrap().enabled);
}

// ---------------------------------------------------------------- notification data

#[test]
fn notification_data_with_the_doorbells_vqn_rings_and_another_vqn_is_counted_bad() {
    let r = Rig::new();
    r.start(&[bits::NOTIFICATION_DATA]);
    r.post_tx(1, 0, 0);
    // vqn 3 at queue 1's address: bad, nothing serviced on either queue.
    r.kick(1, &(1u32 << 16 | 3).to_le_bytes());
    assert_eq!((r.used_idx(1, 0), r.used_idx(3, 0)), (0, 0));
    assert_eq!(r.dev.counters().bad_notification_data, 1);
    // next_idx 1, vqn 1: rings.
    r.kick(1, &(1u32 << 16 | 1).to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 1);
    // The next_idx is a hint: a wrong one still services what the ring holds.
    r.post_tx(1, 0, 1);
    r.kick(1, &(0x7777u32 << 16 | 1).to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 2);
    // A 16-bit store of the vqn is accepted too.
    r.post_tx(1, 0, 2);
    r.kick(1, &1u16.to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 3);
    assert_eq!(r.dev.counters().bad_notification_data, 1);
    assert_eq!(r.dev.fault(), None);
}

#[test]
fn without_notification_data_the_value_is_not_looked_at() {
    let r = Rig::new();
    r.start(&[]);
    r.post_tx(1, 0, 0);
    r.kick(1, &(1u32 << 16 | 3).to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 1, "the address selects the queue");
    assert_eq!(r.dev.counters().bad_notification_data, 0);
}

#[test]
fn notification_data_in_the_shared_notify_window_is_checked_the_same_way() {
    let r = Rig::new();
    let area = Arc::new(NotifyArea::new(r.dev.layout()).unwrap());
    r.dev.attach_notify_area(area.clone());
    r.start(&[bits::NOTIFICATION_DATA]);
    r.post_tx(1, 0, 0);
    area.ring_data(1, 1 << 16 | 2).unwrap();
    assert_eq!(r.dev.take_shared_doorbells(), 1);
    assert_eq!(r.used_idx(1, 0), 0);
    assert_eq!(r.dev.counters().bad_notification_data, 1);
    area.ring_data(1, 1 << 16 | 1).unwrap();
    assert_eq!(r.dev.take_shared_doorbells(), 1);
    assert_eq!(r.used_idx(1, 0), 1);
}

#[test]
fn the_high_bits_quirk_takes_the_vqn_from_next_idx() {
    let r = Rig::new();
    r.dev
        .set_quirk(Quirk::NotificationDataVqnFromHighBits, true);
    r.start(&[bits::NOTIFICATION_DATA]);
    r.post_tx(1, 0, 0);
    r.kick(1, &(1u32 << 16 | 1).to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 1, "next_idx 1 happens to be the queue");
    r.post_tx(1, 0, 1);
    r.kick(1, &(2u32 << 16 | 1).to_le_bytes());
    assert_eq!(r.used_idx(1, 0), 1, "the bug: next_idx 2 read as vqn 2");
    assert_eq!(r.dev.counters().bad_notification_data, 1);
}
