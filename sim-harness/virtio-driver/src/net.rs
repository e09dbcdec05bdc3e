//! The virtio-net driver model.

use crate::memory::{GuestMemory, MemoryError};
use crate::packed::PackedDriverRing;
use crate::probe::{probe, PciInfo};
use crate::ring::{Buf, DriverRing};
use crate::{DeviceHandle, DriverError};
use bar_registers::lm::{self, LmLayout};
use bar_registers::msix::{ENTRY_SIZE, VECTOR_CONTROL};
use bar_registers::pci::{command, hdr, msix_cap};
use bar_registers::virtio::{
    bits, common, default_driver_features, device_status as st, net_cfg, net_hdr, NO_VECTOR,
};
use bar_registers::REGION_CONFIG;
use device::InterruptRecorder;
use std::sync::Arc;

/// struct virtio_net_hdr_v1 length (VERSION_1).
pub const NET_HDR_LEN: usize = bar_registers::virtio::net_hdr::HDR_LEN;
/// struct virtio_net_hdr_v1_hash (with VIRTIO_NET_F_HASH_REPORT).
pub const HASH_HDR_LEN: usize = bar_registers::virtio::net_hdr::HASH_HDR_LEN;
/// Frames up to this many bytes with their header are written to a TX buffer in one copy.
const SMALL_TX_COPY: usize = 256;
/// The DPDK driver polls queue_enable this many times at stop (ifcvf_hw_disable).
pub const DISABLE_POLLS: u32 = 10;

/// How the driver model behaves.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Queue pairs to use (VQ_PAIRS_SET when more than 1).
    pub queue_pairs: u16,
    /// Features the driver wants; the negotiated set is this & the device's. With
    /// VIRTIO_F_RING_PACKED in it (and offered) every queue runs the packed layout (virtio 1.2
    /// 2.8); the default leaves it out, so the split ring stays the default.
    pub features: u64,
    /// Ring size of every queue.
    pub queue_size: u16,
    /// Size of each RX buffer (>= 1526 without MRG_RXBUF).
    pub rx_buf_size: u32,
    /// Post TX chains through indirect tables (when negotiated).
    pub tx_indirect: bool,
    /// Put the TX header and the frame in separate descriptors.
    pub tx_split_header: bool,
    /// Guest RAM size.
    pub memory: u64,
    /// IOVA of guest RAM.
    pub iova_base: u64,
    /// Which LM layout the driver speaks.
    pub lm_layout: LmLayout,
    /// Index every ring starts at: written into the LM ring state before queue_enable and used
    /// as the driver's own starting avail/used index (0 is a plain start). Packed rings: the
    /// packed encoding `offset | wrap << 15` (0 also means a plain start, i.e. 0x8000).
    pub start_index: u16,
    /// Skip the multiqueue setup (DPDK's MQ register and VQ_PAIRS_SET): the device must then use
    /// queue pair 0 only (virtio 1.2 5.1.6.5.5).
    pub skip_mq_setup: bool,
    /// [`NetDriver::send`] and [`NetDriver::enqueue_tx`] write only the first this-many bytes
    /// of each frame into its TX buffer (after the virtio-net header, which is always
    /// written); the descriptor still covers the whole frame, and the rest of the buffer
    /// keeps what it held. A load generator's shortcut, for benches only: testpmd's `txonly`
    /// writes its 42-byte Ethernet/IPv4/UDP header template into each mbuf and leaves the
    /// payload as it is (app/test-pmd/txonly.c pkt_burst_prepare). `None` (the default):
    /// whole frames.
    pub tx_copy_prefix: Option<usize>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            queue_pairs: 1,
            features: default_driver_features(),
            queue_size: 256,
            rx_buf_size: 2048,
            tx_indirect: false,
            tx_split_header: false,
            memory: 64 << 20,
            iova_base: 0x4000_0000,
            lm_layout: LmLayout::Dpdk,
            start_index: 0,
            skip_mq_setup: false,
            tx_copy_prefix: None,
        }
    }
}

impl DriverOptions {
    /// These options with VIRTIO_F_RING_PACKED wanted (`true`: every queue packed, virtio 1.2
    /// 2.8) or not (`false`: split, 2.7).
    pub fn with_packed(mut self, packed: bool) -> Self {
        if packed {
            self.features |= 1 << bits::RING_PACKED;
        } else {
            self.features &= !(1 << bits::RING_PACKED);
        }
        self
    }

    /// Whether these options ask for the packed layout.
    pub fn packed(&self) -> bool {
        self.features & (1 << bits::RING_PACKED) != 0
    }
}

/// Queue index of RX queue `pair`.
pub fn rxq(pair: u16) -> u16 {
    2 * pair
}
/// Queue index of TX queue `pair`.
pub fn txq(pair: u16) -> u16 {
    2 * pair + 1
}

mod ring_reset;
pub use ring_reset::RESET_POLLS;

/// A driver ring of either layout.
#[derive(Debug)]
pub enum DriverQueueRing {
    Split(DriverRing),
    Packed(PackedDriverRing),
}

impl DriverQueueRing {
    fn add(&mut self, mem: &GuestMemory, bufs: &[Buf]) -> Result<Option<u16>, DriverError> {
        match self {
            DriverQueueRing::Split(r) => r.add(mem, bufs),
            DriverQueueRing::Packed(r) => r.add(mem, bufs),
        }
    }
    fn prefetch_adds(&self, mem: &GuestMemory, n: usize) {
        match self {
            DriverQueueRing::Split(r) => r.prefetch_adds(mem, n),
            DriverQueueRing::Packed(r) => r.prefetch_adds(mem, n),
        }
    }
    fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        bufs: &[Buf],
    ) -> Result<Option<u16>, DriverError> {
        match self {
            DriverQueueRing::Split(r) => r.add_indirect(mem, bufs),
            DriverQueueRing::Packed(r) => r.add_indirect(mem, bufs),
        }
    }
    /// Makes what was added visible to the device.
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<(), DriverError> {
        match self {
            DriverQueueRing::Split(r) => r.publish(mem),
            DriverQueueRing::Packed(r) => r.publish(mem),
        }
    }
    fn needs_kick(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        match self {
            DriverQueueRing::Split(r) => r.needs_kick(mem),
            DriverQueueRing::Packed(r) => r.needs_kick(mem),
        }
    }
    /// Takes the next completion: (head or buffer id, bytes written).
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Result<Option<(u16, u32)>, DriverError> {
        match self {
            DriverQueueRing::Split(r) => r.pop_used(mem),
            DriverQueueRing::Packed(r) => r.pop_used(mem),
        }
    }
    /// (descriptor area, driver area, device area, size): what queue_desc/driver/device get.
    pub fn areas(&self) -> (u64, u64, u64, u16) {
        match self {
            DriverQueueRing::Split(r) => (r.desc, r.avail, r.used, r.size),
            DriverQueueRing::Packed(r) => (r.desc, r.driver, r.device, r.size),
        }
    }
    /// The VIRTIO_F_NOTIFICATION_DATA value of a kick of queue `q` (virtio 1.2 2.9; Linux
    /// virtio_ring.c vring_notification_data): vqn in bits 0-15; split: the next avail index
    /// (the avail->idx just published) in 16-31; packed: the next descriptor offset in 16-30
    /// and the driver's wrap counter in 31.
    pub fn notification_data(&self, q: u16) -> u32 {
        let next = match self {
            DriverQueueRing::Split(r) => r.avail_idx,
            DriverQueueRing::Packed(r) => crate::packed::off_wrap(r.next_avail, r.avail_wrap),
        };
        u32::from(next) << 16 | u32::from(q)
    }
    /// Heads (split) or buffer ids (packed) in flight.
    fn in_flight_ids(&self) -> Vec<u16> {
        match self {
            DriverQueueRing::Split(r) => r.in_flight_heads(),
            DriverQueueRing::Packed(r) => r.in_flight_ids(),
        }
    }
    /// Chains in flight.
    pub fn in_flight(&self) -> usize {
        match self {
            DriverQueueRing::Split(r) => r.in_flight(),
            DriverQueueRing::Packed(r) => r.in_flight(),
        }
    }
}

/// A queue with its buffers.
#[derive(Debug)]
struct Queue {
    ring: DriverQueueRing,
    notify_off: u16,
    pool: Vec<u64>,
    inflight: Vec<u64>,
    /// TX: free 72 KiB buffers for frames larger than a pool buffer (GSO frames), allocated
    /// as needed, and every one of them (so a completion knows where its buffer goes back).
    large_pool: Vec<u64>,
    large_all: Vec<u64>,
}

impl Queue {
    /// Takes the next received frame's used buffers (one, or `num_buffers` of them with
    /// mergeable RX buffers, 5.1.6.4) back into the pool, as `(buffer, used len)` in `bufs`.
    /// Returns false when no frame is waiting.
    fn pop_rx_frame(
        &mut self,
        mem: &GuestMemory,
        q: u16,
        hl: usize,
        bufs: &mut Vec<(u64, u32)>,
    ) -> Result<bool, DriverError> {
        bufs.clear();
        let Some((head, len)) = self.ring.pop_used(mem)? else {
            return Ok(false);
        };
        let buf = self.inflight[usize::from(head)];
        self.pool.push(buf);
        if (len as usize) < hl {
            return Err(DriverError::Usage(format!(
                "queue {q}: used len {len} shorter than the {hl}-byte virtio-net header"
            )));
        }
        bufs.push((buf, len));
        let mut nb = [0u8; 2];
        mem.read(buf + net_hdr::NUM_BUFFERS as u64, &mut nb)?;
        let nbuf = u16::from_le_bytes(nb).max(1);
        for _ in 1..nbuf {
            let Some((h, l)) = self.ring.pop_used(mem)? else {
                return Err(DriverError::Usage(format!(
                    "queue {q}: num_buffers {nbuf} but fewer used entries"
                )));
            };
            let b = self.inflight[usize::from(h)];
            self.pool.push(b);
            bufs.push((b, l));
        }
        Ok(true)
    }
}

/// Writes a virtio-net header and the frame bytes after it into TX buffer `buf`: in one write
/// (one bounds check and copy) through a stack buffer when they are small, the common case of
/// a polling sender, else in two.
fn write_tx_buf(mem: &GuestMemory, buf: u64, hdr: &[u8], frame: &[u8]) -> Result<(), MemoryError> {
    let n = hdr.len() + frame.len();
    if n <= SMALL_TX_COPY {
        let mut one = [0u8; SMALL_TX_COPY];
        one[..hdr.len()].copy_from_slice(hdr);
        one[hdr.len()..n].copy_from_slice(frame);
        mem.write(buf, &one[..n])
    } else {
        mem.write(buf, hdr)?;
        mem.write(buf + hdr.len() as u64, frame)
    }
}

/// Bytes left between consecutive pool buffers, so that their first lines do not all fall
/// into the same cache sets. At a stride of exactly 2 KiB every buffer's first line has the
/// same L1 set index bits (6-10), and the 32-64 buffers of a burst (the lines the driver
/// writes and prefetches, and the device reads or writes) compete for 16 L1 ways: prefetched
/// lines evicted each other before they were used. One line more makes the stride 33 lines,
/// which walks through every set. DPDK pads its mempool objects for the same reason (DPDK
/// prog_guide mempool_lib.rst, "Memory Alignment Constraints"; an mbuf object is 37 lines),
/// and Linux virtio_net's page-fragment RX buffers are not power-of-two strided either.
/// Measured with `vdpa-emu bench datapath` (docs/bench.md, 2026-12-06): TX 1 QP +15-30%.
const BUF_SPREAD: u64 = 64;

/// Size of a large TX buffer: a 64 KiB GSO frame with its headers and the virtio-net header.
const LARGE_TX_BUF: u64 = 72 * 1024;

/// A virtio-net driver bound to one device.
pub struct NetDriver {
    dev: Arc<dyn DeviceHandle>,
    pub mem: Arc<GuestMemory>,
    pub irq: Arc<InterruptRecorder>,
    pub pci: PciInfo,
    pub opts: DriverOptions,
    pub device_features: u64,
    pub features: u64,
    num_queues: u16,
    queues: Vec<Option<Queue>>,
    ctrl_buf: u64,
}

impl Drop for NetDriver {
    /// The guest goes away: its memory is no longer the device's to reach.
    fn drop(&mut self) {
        let _ = self.dev.dma_unmap(self.mem.base(), self.mem.size());
    }
}

impl std::fmt::Debug for NetDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDriver")
            .field("features", &format_args!("{:#x}", self.features))
            .finish_non_exhaustive()
    }
}

impl NetDriver {
    /// Binds to any device handle; `irq` is where that device's interrupts are counted.
    pub fn new(
        dev: Arc<dyn DeviceHandle>,
        irq: Arc<InterruptRecorder>,
        opts: DriverOptions,
    ) -> Result<Self, DriverError> {
        let pci = probe(dev.as_ref())?;
        let mem = Arc::new(GuestMemory::new(opts.iova_base, opts.memory)?);
        mem.map_into(dev.as_ref())?;
        let ctrl_buf = mem.alloc(4096, 64)?;
        let mut d = NetDriver {
            dev,
            mem,
            irq,
            pci,
            opts,
            device_features: 0,
            features: 0,
            num_queues: 0,
            queues: Vec::new(),
            ctrl_buf,
        };
        d.num_queues = d.common_read16(common::NUM_QUEUES)?;
        Ok(d)
    }

    /// Moves the driver (the guest) to another device whose guest memory `mem` already holds
    /// a copy of this driver's memory: the migration switch-over. The caller then runs
    /// [`NetDriver::restart`] with the source's ring states.
    pub fn migrate_to(
        &mut self,
        dev: Arc<dyn DeviceHandle>,
        irq: Arc<InterruptRecorder>,
        mem: Arc<GuestMemory>,
    ) -> Result<(), DriverError> {
        self.pci = probe(dev.as_ref())?;
        mem.map_into(dev.as_ref())?;
        self.dev = dev;
        self.irq = irq;
        self.mem = mem;
        self.num_queues = self.common_read16(common::NUM_QUEUES)?;
        Ok(())
    }

    /// What a driver does on a config interrupt: reads the config status and, when the device
    /// asks for an announce (VIRTIO_NET_S_ANNOUNCE), acks it with VIRTIO_NET_CTRL_ANNOUNCE_ACK
    /// (after sending its gratuitous ARP, which the model leaves out). Returns whether it acked.
    pub fn handle_config_change(&mut self) -> Result<bool, DriverError> {
        let status = self.net_config(net_cfg::STATUS, 2)?;
        if status & 2 != 0 && self.features & (1 << bits::GUEST_ANNOUNCE) != 0 {
            self.ctrl(3, 0, &[])?;
            return Ok(true);
        }
        Ok(false)
    }

    /// IOVAs of every running queue's used ring with its length (DPDK marks them dirty in
    /// software at stop).
    pub fn used_rings(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for q in self.queues.iter().flatten() {
            match &q.ring {
                DriverQueueRing::Split(r) => v.push((r.used, crate::ring::ring_sizes(r.size).2)),
                DriverQueueRing::Packed(r) => v.extend(r.device_written()),
            }
        }
        v
    }

    /// The device handle.
    pub fn device(&self) -> &Arc<dyn DeviceHandle> {
        &self.dev
    }

    // ------------------------------------------------------------ register helpers

    fn bar_read(&self, bar: u8, off: u64, len: usize) -> Result<u64, DriverError> {
        let mut b = [0u8; 8];
        self.dev.region_read(bar.into(), off, &mut b[..len])?;
        Ok(u64::from_le_bytes(b))
    }
    fn bar_write(&self, bar: u8, off: u64, len: usize, v: u64) -> Result<(), DriverError> {
        self.dev
            .region_write(bar.into(), off, &v.to_le_bytes()[..len])?;
        Ok(())
    }
    fn common_read(&self, reg: u64, len: usize) -> Result<u64, DriverError> {
        self.bar_read(self.pci.common.bar, self.pci.common.offset + reg, len)
    }
    fn common_write(&self, reg: u64, len: usize, v: u64) -> Result<(), DriverError> {
        self.bar_write(self.pci.common.bar, self.pci.common.offset + reg, len, v)
    }
    /// A 16-bit common config register.
    pub fn common_read16(&self, reg: u64) -> Result<u16, DriverError> {
        Ok(self.common_read(reg, 2)? as u16)
    }
    /// queue_size as the device reports it for queue `q` (selects `q`).
    pub fn queue_size_of(&self, q: u16) -> Result<u16, DriverError> {
        self.common_write(common::QUEUE_SELECT, 2, q.into())?;
        self.common_read16(common::QUEUE_SIZE)
    }
    /// io_write64_twopart (DPDK ifcvf.c): low dword, then high dword.
    fn common_write64(&self, reg: u64, v: u64) -> Result<(), DriverError> {
        self.common_write(reg, 4, v & 0xFFFF_FFFF)?;
        self.common_write(reg + 4, 4, v >> 32)
    }
    /// device_status.
    pub fn status(&self) -> Result<u8, DriverError> {
        Ok(self.common_read(common::DEVICE_STATUS, 1)? as u8)
    }
    fn set_status(&self, s: u8) -> Result<(), DriverError> {
        self.common_write(common::DEVICE_STATUS, 1, s.into())
    }
    /// A device config field (read with the config_generation retry Linux uses).
    pub fn net_config(&self, field: u64, len: usize) -> Result<u64, DriverError> {
        loop {
            let g0 = self.common_read(common::CONFIG_GENERATION, 1)?;
            let mut v = 0u64;
            for i in 0..len {
                v |= self.bar_read(
                    self.pci.device_cfg.bar,
                    self.pci.device_cfg.offset + field + i as u64,
                    1,
                )? << (8 * i);
            }
            if self.common_read(common::CONFIG_GENERATION, 1)? == g0 {
                return Ok(v);
            }
        }
    }
    /// The MAC address in config space.
    pub fn mac(&self) -> Result<[u8; 6], DriverError> {
        let v = self.net_config(net_cfg::MAC, 6)?;
        Ok(v.to_le_bytes()[..6].try_into().expect("6 bytes"))
    }
    /// Reads the ISR (clears it).
    pub fn read_isr(&self) -> Result<u8, DriverError> {
        Ok(self.bar_read(self.pci.isr.bar, self.pci.isr.offset, 1)? as u8)
    }
    /// An LM block register (BAR4).
    pub fn lm_read32(&self, off: u64) -> Result<u32, DriverError> {
        Ok(self.bar_read(4, off, 4)? as u32)
    }
    /// Writes an LM block register (BAR4).
    pub fn lm_write32(&self, off: u64, v: u32) -> Result<(), DriverError> {
        self.bar_write(4, off, 4, v.into())
    }
    /// Queue `q`'s LM ring state: (last_avail_idx, last_used_idx).
    pub fn ring_state(&self, q: u16) -> Result<(u16, u16), DriverError> {
        Ok(lm::unpack_ring_state(self.lm_read32(
            lm::ring_state_offset(self.opts.lm_layout, q),
        )?))
    }
    /// Writes queue `q`'s LM ring state.
    pub fn set_ring_state(&self, q: u16, avail: u16, used: u16) -> Result<(), DriverError> {
        self.lm_write32(
            lm::ring_state_offset(self.opts.lm_layout, q),
            lm::pack_ring_state(avail, used),
        )
    }

    // ------------------------------------------------------------ bring-up

    fn pci_enable(&self) -> Result<(), DriverError> {
        // What the OS does before the driver runs: memory decoding and bus mastering on,
        // MSI-X enabled with every vector unmasked (vfio-pci does this for DPDK).
        let mut c = [0u8; 2];
        self.dev.region_read(REGION_CONFIG, hdr::COMMAND, &mut c)?;
        let cmd = u16::from_le_bytes(c) | command::MEMORY_SPACE | command::BUS_MASTER;
        self.dev
            .region_write(REGION_CONFIG, hdr::COMMAND, &cmd.to_le_bytes())?;
        let ctl = self.pci.msix_cap + msix_cap::MESSAGE_CONTROL;
        self.dev.region_read(REGION_CONFIG, ctl, &mut c)?;
        let v = (u16::from_le_bytes(c) | msix_cap::CTRL_ENABLE) & !msix_cap::CTRL_FUNCTION_MASK;
        self.dev
            .region_write(REGION_CONFIG, ctl, &v.to_le_bytes())?;
        let (bar, table) = self.pci.msix_table;
        for v in 0..u64::from(self.pci.msix_vectors) {
            self.bar_write(bar, table + v * ENTRY_SIZE, 4, 0xFEE0_0000)?;
            self.bar_write(bar, table + v * ENTRY_SIZE + 8, 4, v)?;
            self.bar_write(bar, table + v * ENTRY_SIZE + VECTOR_CONTROL, 4, 0)?;
        }
        Ok(())
    }

    /// ifcvf_reset: status 0, then poll until it reads 0.
    pub fn reset(&self) -> Result<(), DriverError> {
        self.set_status(0)?;
        for _ in 0..1000 {
            if self.status()? == 0 {
                return Ok(());
            }
        }
        Err(DriverError::ResetTimeout(self.status()?))
    }

    fn queue_ids(&self) -> Vec<u16> {
        let mut v: Vec<u16> = (0..self.opts.queue_pairs)
            .flat_map(|p| [rxq(p), txq(p)])
            .collect();
        if self.features & (1 << bits::CTRL_VQ) != 0 {
            v.push(self.num_queues - 1);
        }
        v
    }

    /// ifcvf_start_hw with fresh rings: reset, negotiate, program every queue at ring state
    /// (0, 0), DRIVER_OK; then post RX buffers and, with more than one pair, VQ_PAIRS_SET.
    pub fn start(&mut self) -> Result<(), DriverError> {
        let _span = tracing::debug_span!("driver_start").entered();
        if self.opts.queue_pairs == 0 || 2 * self.opts.queue_pairs + 1 > self.num_queues {
            return Err(DriverError::Usage(format!(
                "device has {} queues, {} pairs asked",
                self.num_queues, self.opts.queue_pairs
            )));
        }
        self.pci_enable()?;
        self.negotiate()?;
        // More than one pair needs VQ_PAIRS_SET over the control queue (virtio 1.2 5.1.6.5.5):
        // a device (profile) without MQ and CTRL_VQ has one pair to offer.
        let mq = (1u64 << bits::MQ) | (1u64 << bits::CTRL_VQ);
        if self.opts.queue_pairs > 1 && !self.opts.skip_mq_setup && self.features & mq != mq {
            return Err(DriverError::Usage(format!(
                "{} queue pairs need VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ, not negotiated \
                 (device features {:#x}, negotiated {:#x}): use one queue pair with this device",
                self.opts.queue_pairs, self.device_features, self.features
            )));
        }
        let ev = self.features & (1 << bits::EVENT_IDX) != 0;
        let packed = self.is_packed();
        self.queues = (0..self.num_queues).map(|_| None).collect();
        for q in self.queue_ids() {
            let at = self.opts.start_index;
            let ring = if packed {
                let mut ring = PackedDriverRing::new(&self.mem, q, self.opts.queue_size, ev)?;
                if at != 0 {
                    ring.start_at(&self.mem, at)?;
                }
                DriverQueueRing::Packed(ring)
            } else {
                let mut ring = DriverRing::new(&self.mem, q, self.opts.queue_size, ev)?;
                if at != 0 {
                    ring.resync(at, at);
                    // As if the rings had run to `at` before: avail->idx and used->idx both there.
                    self.mem.write_u16(ring.avail + 2, at)?;
                    self.mem.write_u16(ring.used + 2, at)?;
                }
                DriverQueueRing::Split(ring)
            };
            let is_rx = q % 2 == 0 && q != self.num_queues - 1;
            let is_tx = q % 2 == 1;
            let nbuf = if is_rx || is_tx {
                usize::from(self.opts.queue_size)
            } else {
                0
            };
            let bsize = if is_rx {
                u64::from(self.opts.rx_buf_size)
            } else {
                2048
            };
            let mut pool = Vec::with_capacity(nbuf);
            for _ in 0..nbuf {
                pool.push(self.mem.alloc(bsize + BUF_SPREAD, 64)?);
            }
            self.queues[usize::from(q)] = Some(Queue {
                ring,
                notify_off: 0,
                pool,
                inflight: vec![0; usize::from(self.opts.queue_size)],
                large_pool: Vec::new(),
                large_all: Vec::new(),
            });
        }
        let at = self.opts.start_index;
        self.program_queues(
            (at != 0)
                .then(|| vec![(at, at); usize::from(self.num_queues)])
                .as_deref(),
        )?;
        self.set_status(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK)?;
        for p in 0..self.opts.queue_pairs {
            self.refill_rx(p)?;
        }
        if self.opts.queue_pairs > 1 && !self.opts.skip_mq_setup {
            let n = self.opts.queue_pairs;
            self.ctrl(4, 0, &n.to_le_bytes())?;
        }
        self.check_alive()
    }

    /// Resumes after [`NetDriver::stop`] (or on a migration destination): the same start
    /// sequence, each queue's ring state written before queue_enable, the rings in guest memory
    /// kept as they are.
    pub fn restart(&mut self, states: &[(u16, u16)]) -> Result<(), DriverError> {
        let _span = tracing::debug_span!("driver_restart").entered();
        self.pci_enable()?;
        self.negotiate()?;
        self.program_queues(Some(states))?;
        self.set_status(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK)?;
        if self.opts.queue_pairs > 1 {
            let n = self.opts.queue_pairs;
            self.ctrl(4, 0, &n.to_le_bytes())?;
        }
        self.check_alive()
    }

    fn negotiate(&mut self) -> Result<(), DriverError> {
        self.reset()?;
        self.set_status(st::ACKNOWLEDGE)?;
        self.set_status(st::ACKNOWLEDGE | st::DRIVER)?;
        self.common_write(common::DEVICE_FEATURE_SELECT, 4, 0)?;
        let lo = self.common_read(common::DEVICE_FEATURE, 4)?;
        self.common_write(common::DEVICE_FEATURE_SELECT, 4, 1)?;
        let hi = self.common_read(common::DEVICE_FEATURE, 4)?;
        self.device_features = lo | (hi << 32);
        self.features = self.device_features & self.opts.features;
        self.common_write(common::DRIVER_FEATURE_SELECT, 4, 0)?;
        self.common_write(common::DRIVER_FEATURE, 4, self.features & 0xFFFF_FFFF)?;
        self.common_write(common::DRIVER_FEATURE_SELECT, 4, 1)?;
        self.common_write(common::DRIVER_FEATURE, 4, self.features >> 32)?;
        self.set_status(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK)?;
        let s = self.status()?;
        if s & st::FEATURES_OK == 0 {
            return Err(DriverError::FeaturesRejected {
                features: self.features,
                status: s,
            });
        }
        // ifcvf_hw_enable: config vector 0, must not read back NO_VECTOR.
        self.common_write(common::CONFIG_MSIX_VECTOR, 2, 0)?;
        if self.common_read16(common::CONFIG_MSIX_VECTOR)? == NO_VECTOR {
            return Err(DriverError::MsixConfigRejected(0));
        }
        if self.opts.lm_layout == LmLayout::Dpdk && !self.opts.skip_mq_setup {
            // ifcvf_enable_multiqueue: IFCVF_MQ_OFFSET = number of queue pairs.
            self.lm_write32(lm::MQ_PAIRS, self.opts.queue_pairs.into())?;
        }
        Ok(())
    }

    /// queue_msix_vector of the selected queue `q` := [`NetDriver::vector_of`]`(q)`, checked
    /// by reading it back.
    fn set_selected_vector(&mut self, q: u16) -> Result<(), DriverError> {
        let vec = Self::vector_of(q);
        self.common_write(common::QUEUE_MSIX_VECTOR, 2, vec.into())?;
        let got = self.common_read16(common::QUEUE_MSIX_VECTOR)?;
        if got != vec {
            return Err(DriverError::QueueVectorRejected {
                queue: q,
                want: vec,
                got,
            });
        }
        Ok(())
    }

    /// queue_enable := 1 on the selected queue `q`, checked by reading it back.
    fn enable_selected(&mut self, q: u16) -> Result<(), DriverError> {
        self.common_write(common::QUEUE_ENABLE, 2, 1)?;
        let got = self.common_read16(common::QUEUE_ENABLE)?;
        if got != 1 {
            return Err(DriverError::EnableFailed { queue: q, got });
        }
        Ok(())
    }

    fn program_queues(&mut self, states: Option<&[(u16, u16)]>) -> Result<(), DriverError> {
        for q in self.queue_ids() {
            let (desc, avail, used, size) = self.queues[usize::from(q)]
                .as_ref()
                .ok_or_else(|| DriverError::Usage(format!("queue {q} not set up")))?
                .ring
                .areas();
            self.common_write(common::QUEUE_SELECT, 2, q.into())?;
            self.common_write64(common::QUEUE_DESC, desc)?;
            self.common_write64(common::QUEUE_DRIVER, avail)?;
            self.common_write64(common::QUEUE_DEVICE, used)?;
            self.common_write(common::QUEUE_SIZE, 2, size.into())?;
            // No state: a fresh ring (packed: offset 0, both wrap counters 1, virtio 1.2 2.8.1).
            let fresh = if self.is_packed() {
                (0x8000, 0x8000)
            } else {
                (0, 0)
            };
            let (a, u) = states
                .and_then(|s| s.get(usize::from(q)).copied())
                .unwrap_or(fresh);
            self.set_ring_state(q, a, u)?;
            self.set_selected_vector(q)?;
            let notify_off = self.common_read16(common::QUEUE_NOTIFY_OFF)?;
            self.enable_selected(q)?;
            let qu = self.queues[usize::from(q)].as_mut().expect("checked above");
            qu.notify_off = notify_off;
            if let (Some(_), DriverQueueRing::Split(r)) = (states, &mut qu.ring) {
                r.resync(r.avail_idx, r.last_used);
            }
        }
        Ok(())
    }

    /// ifcvf_stop_hw: config vector off, each queue disabled (vector off), queue_enable polled
    /// until 0, ring states read (DPDK takes last_avail AND last_used from bits 16-31), reset.
    /// Returns each queue's (last_avail_idx, last_used_idx) as DPDK would resume them.
    pub fn stop(&mut self) -> Result<Vec<(u16, u16)>, DriverError> {
        let _span = tracing::debug_span!("driver_stop").entered();
        self.common_write(common::CONFIG_MSIX_VECTOR, 2, NO_VECTOR.into())?;
        let ids = self.queue_ids();
        for &q in &ids {
            self.common_write(common::QUEUE_SELECT, 2, q.into())?;
            self.common_write(common::QUEUE_ENABLE, 2, 0)?;
            self.common_write(common::QUEUE_MSIX_VECTOR, 2, NO_VECTOR.into())?;
        }
        let mut states = vec![(0u16, 0u16); usize::from(self.num_queues)];
        for &q in &ids {
            self.common_write(common::QUEUE_SELECT, 2, q.into())?;
            let mut polls = 0;
            while self.common_read16(common::QUEUE_ENABLE)? != 0 {
                polls += 1;
                if polls >= DISABLE_POLLS {
                    return Err(DriverError::DisableTimeout { queue: q, polls });
                }
            }
            let (_, used) = self.ring_state(q)?;
            states[usize::from(q)] = (used, used);
        }
        self.reset()?;
        Ok(states)
    }

    /// Reads the device's 64 offered feature bits (no state change).
    pub fn device_features_probe(&self) -> Result<u64, DriverError> {
        self.common_write(common::DEVICE_FEATURE_SELECT, 4, 0)?;
        let lo = self.common_read(common::DEVICE_FEATURE, 4)?;
        self.common_write(common::DEVICE_FEATURE_SELECT, 4, 1)?;
        let hi = self.common_read(common::DEVICE_FEATURE, 4)?;
        Ok(lo | (hi << 32))
    }

    /// Fails if the device set DEVICE_NEEDS_RESET.
    pub fn check_alive(&self) -> Result<(), DriverError> {
        let s = self.status()?;
        if s & st::DEVICE_NEEDS_RESET != 0 {
            return Err(DriverError::NeedsReset(s));
        }
        Ok(())
    }

    // ------------------------------------------------------------ datapath

    fn queue(&mut self, q: u16) -> Result<&mut Queue, DriverError> {
        self.queues
            .get_mut(usize::from(q))
            .and_then(Option::as_mut)
            .ok_or_else(|| DriverError::Usage(format!("queue {q} is not running")))
    }

    /// Rings queue `q`'s doorbell: a 16-bit store of the queue index (Linux vp_notify, DPDK
    /// ifcvf_notify_queue), or with VIRTIO_F_NOTIFICATION_DATA negotiated a 32-bit store of
    /// the notification data (Linux vp_notify_with_data, virtio 1.2 4.1.5.2).
    pub fn kick(&mut self, q: u16) -> Result<(), DriverError> {
        let with_data = self.features & (1 << bits::NOTIFICATION_DATA) != 0;
        let qu = self.queue(q)?;
        let data = qu.ring.notification_data(q);
        if with_data {
            self.notify_write(q, 4, data.into())
        } else {
            self.notify_write(q, 2, q.into())
        }
    }

    /// Stores `value` (`width` bytes) at queue `q`'s doorbell address, whatever it holds: the
    /// validator's kicks with a wrong vqn.
    pub fn notify_write(&self, q: u16, width: usize, value: u64) -> Result<(), DriverError> {
        let off = self
            .queues
            .get(usize::from(q))
            .and_then(Option::as_ref)
            .map_or(q, |qu| qu.notify_off);
        let addr = self.pci.notify.offset + u64::from(off) * u64::from(self.pci.notify_multiplier);
        self.bar_write(self.pci.notify.bar, addr, width, value)
    }

    /// Publishes queue `q` and kicks it if the device asked for it.
    pub fn publish(&mut self, q: u16) -> Result<bool, DriverError> {
        let mem = self.mem.clone();
        let qu = self.queue(q)?;
        qu.ring.publish(&mem)?;
        if qu.ring.needs_kick(&mem)? {
            self.kick(q)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reclaims completed TX chains of `pair`; returns how many.
    pub fn reclaim_tx(&mut self, pair: u16) -> Result<usize, DriverError> {
        let mem = self.mem.clone();
        let qu = self.queue(txq(pair))?;
        let mut n = 0;
        while let Some((head, _)) = qu.ring.pop_used(&mem)? {
            let b = qu.inflight[usize::from(head)];
            if qu.large_all.contains(&b) {
                qu.large_pool.push(b);
            } else {
                qu.pool.push(b);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Sends one frame on TX `pair` with the virtio-net header `hdr` (checksum offload, GSO:
    /// virtio 1.2 5.1.6.2), in one descriptor: a pool buffer, or a large buffer for a frame
    /// longer than that. Reclaims completions first, publishes and kicks as the device asks.
    /// Returns false when the ring has no room.
    pub fn send_with_hdr(
        &mut self,
        pair: u16,
        hdr: &crate::hdr::NetHdr,
        frame: &[u8],
    ) -> Result<bool, DriverError> {
        self.reclaim_tx(pair)?;
        let mem = self.mem.clone();
        let hl = self.hdr_len();
        let total = hl + frame.len();
        if total as u64 > LARGE_TX_BUF {
            return Err(DriverError::Usage(format!(
                "frame of {} bytes exceeds the {LARGE_TX_BUF}-byte large TX buffers",
                frame.len()
            )));
        }
        let qu = self.queue(txq(pair))?;
        let large = total > 2048;
        let buf = if large {
            match qu.large_pool.pop() {
                Some(b) => b,
                None => {
                    let b = mem.alloc(LARGE_TX_BUF, 64)?;
                    qu.large_all.push(b);
                    b
                }
            }
        } else {
            match qu.pool.pop() {
                Some(b) => b,
                None => return Ok(false),
            }
        };
        let mut h = [0u8; HASH_HDR_LEN];
        h[..NET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        write_tx_buf(&mem, buf, &h[..hl], frame)?;
        match qu.ring.add(&mem, &[(buf, total as u32, false)])? {
            Some(h) => qu.inflight[usize::from(h)] = buf,
            None => {
                if large {
                    qu.large_pool.push(buf);
                } else {
                    qu.pool.push(buf);
                }
                return Ok(false);
            }
        }
        self.publish(txq(pair))?;
        Ok(true)
    }

    /// Queues frames on TX `pair` without publishing; returns how many fit.
    pub fn enqueue_tx(&mut self, pair: u16, frames: &[&[u8]]) -> Result<usize, DriverError> {
        let mem = self.mem.clone();
        let indirect = self.opts.tx_indirect && self.features & (1 << bits::INDIRECT_DESC) != 0;
        let split = self.opts.tx_split_header;
        let prefix = self.opts.tx_copy_prefix.unwrap_or(usize::MAX);
        let hl = self.hdr_len();
        let qu = self.queue(txq(pair))?;
        // What this burst writes (buffers, descriptors, avail slots) the device read last: each
        // first write would wait for its line to come back from the device's core. Asked for
        // together, those transfers overlap.
        let burst = frames.len().min(qu.pool.len());
        if !indirect {
            qu.ring.prefetch_adds(&mem, burst);
        }
        for (&buf, f) in qu.pool.iter().rev().zip(frames) {
            mem.prefetch_for_write(buf, (hl + f.len().min(prefix)) as u64);
        }
        let mut sent = 0;
        for f in frames {
            if f.len() + hl > 2048 {
                return Err(DriverError::Usage(format!(
                    "frame of {} bytes exceeds the 2 KiB TX buffers",
                    f.len()
                )));
            }
            let Some(buf) = qu.pool.pop() else { break };
            let total = (hl + f.len()) as u32;
            // The header and the frame, or its first `tx_copy_prefix` bytes.
            let copied = f.len().min(prefix);
            write_tx_buf(&mem, buf, &[0u8; HASH_HDR_LEN][..hl], &f[..copied])?;
            let two: [Buf; 2] = [
                (buf, hl as u32, false),
                (buf + hl as u64, f.len() as u32, false),
            ];
            let one: [Buf; 1] = [(buf, total, false)];
            let bufs: &[Buf] = if split { &two } else { &one };
            let head = if indirect {
                qu.ring.add_indirect(&mem, bufs)?
            } else {
                qu.ring.add(&mem, bufs)?
            };
            match head {
                Some(h) => {
                    qu.inflight[usize::from(h)] = buf;
                    sent += 1;
                }
                None => {
                    qu.pool.push(buf);
                    break;
                }
            }
        }
        Ok(sent)
    }

    /// Sends frames on TX `pair` (reclaiming completions first), publishes and kicks as the
    /// device asks. Returns how many were queued.
    pub fn send(&mut self, pair: u16, frames: &[&[u8]]) -> Result<usize, DriverError> {
        self.reclaim_tx(pair)?;
        let n = self.enqueue_tx(pair, frames)?;
        if n > 0 {
            self.publish(txq(pair))?;
        }
        Ok(n)
    }

    /// Posts every free RX buffer of `pair` and kicks if needed.
    pub fn refill_rx(&mut self, pair: u16) -> Result<usize, DriverError> {
        let mem = self.mem.clone();
        let size = self.opts.rx_buf_size;
        let qu = self.queue(rxq(pair))?;
        let mut n = 0;
        while let Some(buf) = qu.pool.pop() {
            match qu.ring.add(&mem, &[(buf, size, true)])? {
                Some(h) => {
                    qu.inflight[usize::from(h)] = buf;
                    n += 1;
                }
                None => {
                    qu.pool.push(buf);
                    break;
                }
            }
        }
        if n > 0 {
            self.publish(rxq(pair))?;
        }
        Ok(n)
    }

    /// Takes every frame received on `pair` (reassembling mergeable buffers), then reposts
    /// the buffers.
    pub fn recv(&mut self, pair: u16) -> Result<Vec<Vec<u8>>, DriverError> {
        Ok(self
            .recv_with_hdr(pair)?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    /// [`NetDriver::recv`] with each frame's virtio-net header (virtio 1.2 5.1.6.4: flags
    /// DATA_VALID / NEEDS_CSUM, gso_type, num_buffers).
    pub fn recv_with_hdr(
        &mut self,
        pair: u16,
    ) -> Result<Vec<(crate::hdr::NetHdr, Vec<u8>)>, DriverError> {
        Ok(self
            .recv_hashed(pair)?
            .into_iter()
            .map(|(h, _, f)| (h, f))
            .collect())
    }

    /// [`NetDriver::recv_with_hdr`] with each frame's hash report (hash_value, hash_report of
    /// struct virtio_net_hdr_v1_hash, virtio 1.2 5.1.6) when VIRTIO_NET_F_HASH_REPORT was
    /// negotiated, `None` otherwise.
    #[allow(clippy::type_complexity)]
    pub fn recv_hashed(
        &mut self,
        pair: u16,
    ) -> Result<Vec<(crate::hdr::NetHdr, Option<(u32, u16)>, Vec<u8>)>, DriverError> {
        let mem = self.mem.clone();
        let hl = self.hdr_len();
        let q = rxq(pair);
        let qu = self.queue(q)?;
        let mut frames = Vec::new();
        let mut bufs = Vec::new();
        while qu.pop_rx_frame(&mem, q, hl, &mut bufs)? {
            let (buf, len) = bufs[0];
            let mut data = vec![0u8; len as usize];
            mem.read(buf, &mut data)?;
            let mut frame = data.split_off(hl);
            let hdr = crate::hdr::NetHdr::from_bytes(&data[..NET_HDR_LEN].try_into().expect("12"));
            let hash = (hl == HASH_HDR_LEN).then(|| {
                (
                    u32::from_le_bytes(data[12..16].try_into().expect("4")),
                    u16::from_le_bytes([data[16], data[17]]),
                )
            });
            for &(b, l) in &bufs[1..] {
                let start = frame.len();
                frame.resize(start + l as usize, 0);
                mem.read(b, &mut frame[start..])?;
            }
            frames.push((hdr, hash, frame));
        }
        self.refill_rx(pair)?;
        Ok(frames)
    }

    /// Takes every frame received on `pair` without reading its bytes, reposts the buffers
    /// and returns how many frames there were: what testpmd's `rxonly` forwarding does with
    /// the frames a PMD receives (app/test-pmd/rxonly.c frees each mbuf unread). Only each
    /// frame's `num_buffers` is read (the one field a driver must read to find where a frame
    /// ends, 5.1.6.4): the frame's lines past its header's stay with the device, and no
    /// frame is copied or allocated.
    pub fn recv_count(&mut self, pair: u16) -> Result<usize, DriverError> {
        let mem = self.mem.clone();
        let hl = self.hdr_len();
        let q = rxq(pair);
        let qu = self.queue(q)?;
        let mut n = 0;
        let mut bufs = Vec::new();
        while qu.pop_rx_frame(&mem, q, hl, &mut bufs)? {
            n += 1;
        }
        self.refill_rx(pair)?;
        Ok(n)
    }

    /// The virtio-net header length with the negotiated features: 20 bytes (struct
    /// virtio_net_hdr_v1_hash) with VIRTIO_NET_F_HASH_REPORT, else 12 (virtio 1.2 5.1.6).
    pub fn hdr_len(&self) -> usize {
        bar_registers::virtio::net_hdr::len(self.features)
    }

    /// Sends a control command and waits for its ack.
    pub fn ctrl(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<(), DriverError> {
        let ack = self.ctrl_raw(class, cmd, data)?;
        if ack != 0 {
            return Err(DriverError::CtrlRejected { class, cmd });
        }
        Ok(())
    }

    /// Sends a control command; returns the ack byte.
    pub fn ctrl_raw(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<u8, DriverError> {
        let mem = self.mem.clone();
        let q = self.num_queues - 1;
        let b = self.ctrl_buf;
        if data.len() + 3 > 4096 {
            return Err(DriverError::Usage("control command too long".into()));
        }
        mem.write(b, &[class, cmd])?;
        mem.write(b + 2, data)?;
        let ack_at = b + 4095;
        mem.write(ack_at, &[0xAA])?;
        let qu = self.queue(q)?;
        qu.ring
            .add(
                &mem,
                &[(b, 2 + data.len() as u32, false), (ack_at, 1, true)],
            )?
            .ok_or(DriverError::CtrlTimeout { class, cmd })?;
        qu.ring.publish(&mem)?;
        self.kick(q)?;
        for _ in 0..1_000_000 {
            let qu = self.queue(q)?;
            if qu.ring.pop_used(&mem)?.is_some() {
                let mut ack = [0u8];
                mem.read(ack_at, &mut ack)?;
                return Ok(ack[0]);
            }
            std::hint::spin_loop();
        }
        Err(DriverError::CtrlTimeout { class, cmd })
    }

    /// Configures receive-side scaling (VIRTIO_NET_CTRL_MQ_RSS_CONFIG, virtio 1.2 5.1.6.5.7.1)
    /// with `max_tx_vq` transmit queue pairs in use, as Linux virtio_net's
    /// virtnet_commit_rss_command does; returns the ack byte (0: VIRTIO_NET_OK).
    pub fn set_rss(
        &mut self,
        cfg: &device::net::rss::RssConfig,
        max_tx_vq: u16,
    ) -> Result<u8, DriverError> {
        use virtio_bindings::virtio_net::{VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG};
        self.ctrl_raw(
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_RSS_CONFIG as u8,
            &cfg.encode(max_tx_vq),
        )
    }

    /// Programs and enables dirty-page logging into [log, log + size) (DPDK ifcvf_enable_logging:
    /// base lo/hi, end lo/hi, then LOGGING_CTRL = IFCVF_LM_ENABLE_VF).
    pub fn enable_logging(&self, log: u64, size: u64) -> Result<(), DriverError> {
        let end = log + size;
        self.lm_write32(lm::BASE_ADDR_LOW, log as u32)?;
        self.lm_write32(lm::BASE_ADDR_HIGH, (log >> 32) as u32)?;
        self.lm_write32(lm::END_ADDR_LOW, end as u32)?;
        self.lm_write32(lm::END_ADDR_HIGH, (end >> 32) as u32)?;
        self.lm_write32(lm::LOGGING_CTRL, lm::LOGGING_ENABLE_VF)
    }

    /// LOGGING_CTRL = IFCVF_LM_DISABLE.
    pub fn disable_logging(&self) -> Result<(), DriverError> {
        self.lm_write32(lm::LOGGING_CTRL, lm::LOGGING_DISABLE)
    }

    /// Direct access to a split driver ring (tests that set used_event or flags); an error when
    /// the packed layout was negotiated (see [`NetDriver::packed_ring`]).
    pub fn ring(&mut self, q: u16) -> Result<&mut DriverRing, DriverError> {
        match &mut self.queue(q)?.ring {
            DriverQueueRing::Split(r) => Ok(r),
            DriverQueueRing::Packed(_) => Err(DriverError::Usage(format!(
                "queue {q} runs the packed layout: use packed_ring({q})"
            ))),
        }
    }

    /// Direct access to a packed driver ring; an error when the split layout was negotiated.
    pub fn packed_ring(&mut self, q: u16) -> Result<&mut PackedDriverRing, DriverError> {
        match &mut self.queue(q)?.ring {
            DriverQueueRing::Packed(r) => Ok(r),
            DriverQueueRing::Split(_) => Err(DriverError::Usage(format!(
                "queue {q} runs the split layout: use ring({q})"
            ))),
        }
    }

    /// Either layout's driver ring.
    pub fn any_ring(&mut self, q: u16) -> Result<&mut DriverQueueRing, DriverError> {
        Ok(&mut self.queue(q)?.ring)
    }

    /// Makes what was queued on `q` visible to the device without a doorbell (avail->idx store
    /// or packed flags), e.g. to snapshot memory before kicking.
    pub fn publish_no_kick(&mut self, q: u16) -> Result<(), DriverError> {
        let mem = self.mem.clone();
        self.queue(q)?.ring.publish(&mem)
    }

    /// Whether the negotiated features (or, before negotiation, the wanted ones) select the
    /// packed ring.
    pub fn is_packed(&self) -> bool {
        let f = if self.features != 0 {
            self.features
        } else {
            self.opts.features
        };
        f & (1 << bits::RING_PACKED) != 0
    }

    /// Number of queues the device reports.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The MSI-X vector the driver programmed for queue `q` (DPDK plan: q + 1).
    pub fn vector_of(q: u16) -> u16 {
        q + 1
    }
}
