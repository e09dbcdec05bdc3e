//! The rig both hostile-input suites (split and packed rings) share: a loopback device with a
//! running driver and a canary-filled arena, the trigger that delivers the hostile input, and
//! every check the issue asks of a hostile case (exact fault, counted once, config interrupt,
//! nothing written, no DMA while broken, recovery after reset). Each suite adds the
//! ring-specific ways to write descriptors in an `impl Rig` of its own.

use bar_registers::virtio::{bits, common, device_status as st, isr};
use device::fault::FAULT_KINDS;
use device::{Device, DeviceConfig, DeviceCounters, DeviceFault, DmaMapper, RegionAccess};
use dma::{Backing, BusStats, DmaKind, Perms, SharedMemory};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use std::sync::Arc;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One queue pair: RX 0, TX 1, control 2.
pub const RXQ: u16 = 0;
pub const TXQ: u16 = 1;
pub const CTRLQ: u16 = 2;
pub const QSIZE: u16 = 64;
pub const MEM: u64 = 8 << 20;
pub const ARENA: u64 = 192 << 10;
pub const CANARY: u8 = 0xC5;
pub const RO_FILL: u8 = 0x5A;
/// ACK | DRIVER | FEATURES_OK | DRIVER_OK.
pub const RUNNING: u8 = st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK;
/// MAX_TX_CHAIN: a 64 KiB frame (65562 bytes) plus the 12-byte virtio-net header.
pub const MAX_TX_CHAIN: u64 = 65_562 + 12;

/// What the device looked like before the hostile kick.
pub struct Before {
    pub status: u8,
    pub counters: DeviceCounters,
    pub bus: BusStats,
    pub cfg_irqs: u64,
    pub mem: Vec<u8>,
    pub ro: Option<Vec<u8>>,
}

/// How the hostile input reaches the device.
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    /// Doorbell of this queue.
    Kick(u16),
    /// A frame in the receive FIFO, then the doorbell of this (RX) queue.
    FrameKick(u16),
    /// queue_enable = 1 for this queue.
    Enable(u16),
}

/// A device in loopback with a running driver and a canary-filled arena in guest memory.
pub struct Rig {
    pub dev: Arc<Device>,
    pub drv: NetDriver,
    pub arena: u64,
    pub ro: Option<(u64, SharedMemory)>,
    pub rng: SmallRng,
}

impl Rig {
    pub fn new(o: DriverOptions) -> Rig {
        let o_packed = o.features & (1 << bits::RING_PACKED) != 0;
        let dev = Device::new(DeviceConfig::with_queue_pairs(1)).expect("device");
        dev.set_loopback();
        let mut drv = sim_harness::driver::in_process(&dev, o).expect("driver");
        let arena = drv.mem.alloc(ARENA, 4096).expect("arena");
        drv.mem.fill(arena, ARENA, CANARY).expect("fill arena");
        drv.start().expect("start");
        assert_eq!(drv.status().unwrap(), RUNNING);
        assert_eq!(drv.is_packed(), o_packed, "ring layout as asked");
        Rig {
            dev,
            drv,
            arena,
            ro: None,
            rng: SmallRng::seed_from_u64(7),
        }
    }

    /// Writes a plain virtio-net header (flags 0, GSO_NONE) at `addr`: a TX chain that starts
    /// there carries a frame the device sends as it is (the canary bytes as a header would set
    /// RSC_INFO, which the device drops: virtio 1.2 5.1.6.2.1).
    pub fn plain_tx_header(&self, addr: u64) {
        self.drv.mem.write(addr, &[0u8; 12]).expect("header");
    }

    pub fn mem_end(&self) -> u64 {
        self.drv.opts.iova_base + self.drv.opts.memory
    }

    /// Maps `size` bytes of a separate memfd read-only at `iova`, filled with RO_FILL.
    pub fn map_ro(&mut self, iova: u64, size: u64) -> u64 {
        let shm = SharedMemory::new("hostile-ro", size).expect("memfd");
        shm.fill(0, size, RO_FILL).unwrap();
        self.dev
            .dma_map(
                iova,
                size,
                Perms::RO,
                Backing::Fd {
                    file: shm.try_clone_file().unwrap(),
                    offset: 0,
                },
            )
            .expect("map RO region");
        self.ro = Some((iova, shm));
        iova
    }
}

impl Rig {
    pub fn frame(&mut self, len: usize) -> Vec<u8> {
        let mac = self.drv.mac().unwrap();
        frames::build(mac, mac, 1, 0, len, &mut self.rng)
    }

    pub fn snapshot(&self) -> Before {
        Before {
            status: self.drv.status().unwrap(),
            counters: self.dev.counters(),
            bus: self.dev.bus_stats(),
            cfg_irqs: self.drv.irq.count(0),
            mem: self.drv.mem.shm().snapshot(),
            ro: self.ro.as_ref().map(|(_, s)| s.snapshot()),
        }
    }

    pub fn common_write16(&self, reg: u64, v: u16) {
        self.dev
            .region_write(0, self.dev.layout().common.offset + reg, &v.to_le_bytes())
            .unwrap();
    }

    pub fn common_read16(&self, reg: u64) -> u16 {
        let mut b = [0u8; 2];
        self.dev
            .region_read(0, self.dev.layout().common.offset + reg, &mut b)
            .unwrap();
        u16::from_le_bytes(b)
    }

    pub fn common_write64(&self, reg: u64, v: u64) {
        let off = self.dev.layout().common.offset + reg;
        self.dev
            .region_write(0, off, &(v as u32).to_le_bytes())
            .unwrap();
        self.dev
            .region_write(0, off + 4, &((v >> 32) as u32).to_le_bytes())
            .unwrap();
    }

    pub fn fire(&mut self, t: Trigger) {
        match t {
            Trigger::Kick(q) => self.drv.kick(q).unwrap(),
            Trigger::FrameKick(q) => {
                let f = self.frame(60);
                assert!(self.dev.inbox().push(&f));
                self.drv.kick(q).unwrap();
            }
            Trigger::Enable(q) => {
                self.common_write16(common::QUEUE_SELECT, q);
                self.common_write16(common::QUEUE_ENABLE, 1);
            }
        }
    }

    /// Stops queue `q` the way DPDK does (write 0, poll until it reads 0).
    pub fn disable_queue(&self, q: u16) {
        self.common_write16(common::QUEUE_SELECT, q);
        self.common_write16(common::QUEUE_ENABLE, 0);
        for _ in 0..10 {
            if self.common_read16(common::QUEUE_ENABLE) == 0 {
                return;
            }
        }
        panic!("queue {q} did not stop");
    }

    /// Everything the issue asks of a hostile case, after the trigger.
    pub fn assert_broken(&mut self, b: &Before, want: &DeviceFault, name: &str) {
        self.assert_fault(b, want, name);
        self.assert_untouched(b, name);
        self.assert_quiet_while_broken(name);
    }

    /// NEEDS_RESET, the exact fault, counted once by kind, the config interrupt.
    pub fn assert_fault(&mut self, b: &Before, want: &DeviceFault, name: &str) {
        // DEVICE_NEEDS_RESET through the common cfg register, the other bits untouched.
        let s = self.drv.status().unwrap();
        assert_eq!(
            s,
            b.status | st::DEVICE_NEEDS_RESET,
            "{name}: device_status {s:#04x}"
        );
        assert_eq!(
            self.dev.fault().as_ref(),
            Some(want),
            "{name}: Device::fault()"
        );
        let c = self.dev.counters();
        for (i, k) in FAULT_KINDS.iter().enumerate() {
            let delta = c.faults[i] - b.counters.faults[i];
            assert_eq!(
                delta,
                u64::from(*k == want.kind()),
                "{name}: fault counter {k}"
            );
        }
        assert_eq!(
            c.fault(want.kind()),
            b.counters.fault(want.kind()) + 1,
            "{name}"
        );
        assert_eq!(
            c.needs_reset,
            b.counters.needs_reset + 1,
            "{name}: needs_reset"
        );
        assert_eq!(
            c.config_interrupts,
            b.counters.config_interrupts + 1,
            "{name}: config_interrupts"
        );
        assert_eq!(
            self.drv.irq.count(0),
            b.cfg_irqs + 1,
            "{name}: config interrupt on vector 0"
        );
        let i = self.drv.read_isr().unwrap();
        assert_ne!(
            i & isr::CONFIG,
            0,
            "{name}: ISR {i:#x} lacks the config bit"
        );
    }

    pub fn assert_untouched(&mut self, b: &Before, name: &str) {
        // The refused chain wrote nothing: no packet or ring writes, guest memory byte-identical,
        // the read-only region untouched.
        let bus = self.dev.bus_stats().delta(&b.bus);
        for k in [DmaKind::PacketWrite, DmaKind::RingWrite, DmaKind::LogWrite] {
            assert_eq!(
                bus.get(k).transactions,
                0,
                "{name}: {k} during the faulting kick"
            );
        }
        assert!(
            b.mem == self.drv.mem.shm().snapshot(),
            "{name}: guest memory changed: {}",
            first_diff(&b.mem, &self.drv.mem.shm().snapshot())
        );
        if let (Some(img), Some((_, shm))) = (&b.ro, &self.ro) {
            assert!(*img == shm.snapshot(), "{name}: read-only region changed");
        }
    }

    /// While broken: frames arriving and doorbells on every queue cause no DMA, no interrupt,
    /// no new fault.
    pub fn assert_quiet_while_broken(&mut self, name: &str) {
        let fault = self.dev.fault();
        let c0 = self.dev.counters();
        let bus0 = self.dev.bus_stats();
        let irqs0 = self.drv.irq.total();
        let f = self.frame(100);
        assert!(self.dev.inbox().push(&f));
        for q in [RXQ, TXQ, CTRLQ] {
            self.drv.kick(q).unwrap();
        }
        let _ = self.drv.status().unwrap();
        assert_eq!(self.dev.bus_stats(), bus0, "{name}: DMA while broken");
        let c = self.dev.counters();
        assert_eq!(
            c.spurious_doorbells,
            c0.spurious_doorbells + 3,
            "{name}: doorbells while broken must be ignored"
        );
        assert_eq!(c.faults, c0.faults, "{name}: new faults while broken");
        assert_eq!(c.rx_frames, c0.rx_frames, "{name}");
        assert_eq!(
            self.drv.irq.total(),
            irqs0,
            "{name}: interrupts while broken"
        );
        assert_eq!(self.dev.fault(), fault, "{name}: the first fault is kept");
        let s = self.drv.status().unwrap();
        assert_ne!(s & st::DEVICE_NEEDS_RESET, 0, "{name}");
    }

    /// Reset through the driver, start again, and loop frames.
    pub fn recover(&mut self, name: &str) {
        self.drv.reset().unwrap();
        assert_eq!(self.drv.status().unwrap(), 0, "{name}: status after reset");
        assert_eq!(self.dev.fault(), None, "{name}: fault cleared by reset");
        self.drv
            .start()
            .unwrap_or_else(|e| panic!("{name}: restart: {e}"));
        self.assert_loops(name);
    }

    pub fn assert_loops(&mut self, name: &str) {
        assert_eq!(self.drv.status().unwrap(), RUNNING, "{name}");
        let sent: Vec<Vec<u8>> = (0..4).map(|i| self.frame(60 + 300 * i)).collect();
        let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        assert_eq!(self.drv.send(0, &refs).unwrap(), 4, "{name}");
        let got = self.drv.recv(0).unwrap();
        assert_eq!(got, sent, "{name}: loopback after recovery");
        self.drv.check_alive().unwrap();
    }
}

pub fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at offset {i:#x}: {:#04x} -> {:#04x}",
            a[i], b[i]
        ),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

/// Builds the hostile input on a fresh rig, fires it, checks the fault, recovers.
pub fn run_case(
    name: &str,
    o: DriverOptions,
    build: impl FnOnce(&mut Rig) -> (Trigger, DeviceFault),
) {
    let mut rig = Rig::new(o);
    let (trigger, want) = build(&mut rig);
    let before = rig.snapshot();
    rig.fire(trigger);
    rig.assert_broken(&before, &want, name);
    rig.recover(name);
}
