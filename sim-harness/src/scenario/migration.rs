//! The `migrate` step: the scenario's guest (its driver and guest memory) moves live from the
//! device it runs on to a fresh instance with the same options (plus any quirk an `inject`
//! armed), with the stages of `vdpa-emu migrate` (see [`crate::migrate`]): dirty logging and a
//! full copy while the guest sends, pre-copy rounds, the DPDK stop sequence, stop-and-copy, then
//! the switch: ring states restored before queue_enable, frames waiting in the source's receive
//! FIFO handed over, GUEST_ANNOUNCE. Every page the device wrote after logging started must have
//! been in its log (`missed_dirty_pages`), and destination memory must equal the source's.

use super::error::StepError;
use super::metrics::Value;
use super::model::{MigrateSpec, PortSpec};
use super::runner::World;
use crate::driver::GuestMemory;
use bar_registers::lm::DPDK_LOG_IOVA;
use device::{Device, DmaMapper, InterruptRecorder, LinkPort};
use dma::{Backing, Perms, SharedMemory, WriteTrace, PAGE_SIZE};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

/// Pages copied between two background traffic bursts.
const PAGES_PER_BURST: u64 = 512;
/// Traffic bursts on the destination after the switch (a broken resume shows up here).
const BURSTS_AFTER: u32 = 4;

/// What the last `migrate` step measured (metrics `migration.<field>`).
#[derive(Debug, Clone, Default)]
pub struct MigrationOutcome {
    pub rounds: u64,
    pub pages_copied: u64,
    pub log_bytes: u64,
    pub log_writes: u64,
    pub missed_dirty_pages: u64,
    pub memory_mismatch_pages: u64,
    pub downtime_us: u64,
    /// Frames moved from the source's receive FIFO to the destination's.
    pub pending_frames: u64,
    /// Resume and after-switch failures.
    pub errors: Vec<String>,
    pub announce_acked: bool,
}

impl MigrationOutcome {
    /// The field named `name` (see [`super::metrics::MIGRATION_FIELDS`]).
    pub fn get(&self, name: &str) -> Option<Value> {
        let i = |v: u64| Some(Value::Int(v));
        match name {
            "rounds" => i(self.rounds),
            "pages_copied" => i(self.pages_copied),
            "log_bytes" => i(self.log_bytes),
            "log_writes" => i(self.log_writes),
            "missed_dirty_pages" => i(self.missed_dirty_pages),
            "memory_mismatch_pages" => i(self.memory_mismatch_pages),
            "downtime_us" => i(self.downtime_us),
            "pending_frames" => i(self.pending_frames),
            "errors" => i(self.errors.len() as u64),
            "announce_acked" => Some(Value::Bool(self.announce_acked)),
            _ => None,
        }
    }
}

/// Harvests and clears the vhost dirty bitmap into `out` (page numbers).
fn harvest(log: &SharedMemory, len: u64, out: &mut BTreeSet<u64>) -> Result<(), StepError> {
    for w in (0..len).step_by(8) {
        let mut bits = log.swap_u64(w, 0)?;
        while bits != 0 {
            out.insert(w * 8 + u64::from(bits.trailing_zeros()));
            bits &= bits - 1;
        }
    }
    Ok(())
}

impl World<'_> {
    /// Sends `frames` background frames from device `i` (one stream per pair, opened once per
    /// step) and receives everything.
    fn burst(
        &mut self,
        step: usize,
        i: usize,
        frames: u32,
        streams: &mut Vec<u16>,
    ) -> Result<(), StepError> {
        if frames == 0 {
            return Ok(());
        }
        let to = self.receiver_of(i);
        let dst = match to {
            Some(r) => self.node(r)?.drv.mac()?,
            None => [0x02, 0, 0, 0, 0, 0xFF],
        };
        let node = self.node(i)?;
        let pairs = node.drv.opts.queue_pairs;
        let src = node.drv.mac()?;
        while streams.len() < usize::from(pairs) {
            streams.push(
                self.ledger
                    .open(step, to)
                    .ok_or_else(|| StepError::Usage("too many traffic streams".into()))?,
            );
        }
        let per_pair = u64::from(frames).div_ceil(u64::from(pairs)).max(1);
        for (p, &s) in streams.iter().enumerate().take(usize::from(pairs)) {
            let seq0 = self.ledger.next_seq(s);
            let batch: Vec<Vec<u8>> = (0..per_pair)
                .map(|k| {
                    let len = rand::Rng::gen_range(&mut self.rng, crate::frames::MIN_FRAME..=1514);
                    crate::frames::build(src, dst, s, seq0 + k, len, &mut self.rng)
                })
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let node = self.node(i)?;
            let k = node.drv.send(p as u16, &refs)?;
            self.ledger.sent(s, k as u64);
        }
        self.receive_all()?;
        Ok(())
    }

    /// Copies `pages` (those inside guest memory) from `src` to `dst`, with a traffic burst
    /// every [`PAGES_PER_BURST`] pages while the guest runs.
    #[allow(clippy::too_many_arguments)]
    fn copy_pages(
        &mut self,
        pages: impl IntoIterator<Item = u64>,
        src: &GuestMemory,
        dst: &GuestMemory,
        running: Option<(usize, usize, u32)>,
        streams: &mut Vec<u16>,
        out: &mut MigrationOutcome,
    ) -> Result<u64, StepError> {
        let range = src.pfns();
        let mut buf = Box::new([0u8; PAGE_SIZE as usize]);
        let mut n = 0u64;
        for pfn in pages.into_iter().filter(|p| range.contains(p)) {
            src.copy_page_to(pfn, dst, &mut buf)?;
            n += 1;
            if let (Some((step, node, frames)), 0) = (running, n % PAGES_PER_BURST) {
                self.burst(step, node, frames, streams)?;
            }
        }
        out.pages_copied += n;
        Ok(n)
    }

    /// Runs a `migrate` step.
    pub(crate) fn migrate(&mut self, step: usize, m: &MigrateSpec) -> Result<String, StepError> {
        let i = m.device;
        let port = self
            .sc
            .devices
            .get(i)
            .map(|d| d.port)
            .ok_or_else(|| StepError::Usage(format!("no device {i}")))?;
        let mut cfg = self
            .sc
            .devices
            .get(i)
            .map(|d| d.config.clone())
            .unwrap_or_default();
        let armed = std::mem::take(&mut self.pending_quirks);
        cfg.quirks = armed.iter().fold(cfg.quirks, device::Quirks::with);
        let node = self.node(i)?;
        if !node.started {
            return Err(StepError::Usage(format!(
                "device `{}` is not started: nothing to migrate",
                node.name
            )));
        }
        let src = node.dev.clone();
        let mem = node.drv.mem.clone();
        let name = node.name.clone();
        let mut out = MigrationOutcome::default();
        let mut streams = Vec::new();
        let running = Some((step, i, m.background_frames));

        // Stage 1: the log at IFCVF_LOG_BASE, an independent record of device writes, CPU
        // dirty tracking, logging on, everything copied while the guest runs.
        let top = mem.base() + mem.size();
        let log_len = (top / PAGE_SIZE).div_ceil(8).next_multiple_of(8);
        let log = SharedMemory::new("vdpa-emu-scenario-log", log_len)?;
        src.dma_map(
            DPDK_LOG_IOVA,
            log_len,
            Perms::RW,
            Backing::Fd {
                file: log.try_clone_file()?,
                offset: 0,
            },
        )?;
        let device_writes = Arc::new(WriteTrace::new(top));
        src.set_write_trace(Some(device_writes.clone()));
        let cpu = Arc::new(WriteTrace::new(top));
        mem.set_cpu_dirty_log(Some(cpu.clone()));
        self.node(i)?.drv.enable_logging(DPDK_LOG_IOVA, log_len)?;
        out.log_bytes = log_len;
        let log_writes_before = src.log_stats().log_writes;
        let dst_mem = Arc::new(mem.new_like()?);
        let mut logged = BTreeSet::new();
        self.copy_pages(mem.pfns(), &mem, &dst_mem, running, &mut streams, &mut out)?;

        // Stage 2: pre-copy rounds until the dirty set is small.
        loop {
            self.burst(step, i, m.background_frames, &mut streams)?;
            let mut dirty = BTreeSet::new();
            harvest(&log, log_len, &mut dirty)?;
            logged.extend(dirty.iter().copied());
            dirty.extend(cpu.take_pages());
            out.rounds += 1;
            let n = self.copy_pages(dirty, &mem, &dst_mem, running, &mut streams, &mut out)?;
            if n < u64::from(m.dirty_threshold) || out.rounds >= u64::from(m.max_rounds) {
                break;
            }
        }

        // Stage 3: pause, DPDK stop, stop-and-copy (the used rings marked dirty in software).
        let t_pause = Instant::now();
        // The receive FIFO is device state too. Take it at the pause, before the stop: the stop
        // sequence ends in a device reset, which empties the FIFO (rx_dropped_reset). With the
        // guest paused nothing new arrives, and a frame waits there only because the RX rings
        // are full, so the device could not have consumed it either.
        let pending: Vec<Vec<u8>> = std::iter::from_fn(|| src.inbox().pop()).collect();
        out.pending_frames = pending.len() as u64;
        let states = self.node(i)?.drv.stop()?;
        let mut dirty = BTreeSet::new();
        harvest(&log, log_len, &mut dirty)?;
        logged.extend(dirty.iter().copied());
        src.set_write_trace(None);
        for (used, len) in self.node(i)?.drv.used_rings() {
            dirty.extend(used / PAGE_SIZE..(used + len).div_ceil(PAGE_SIZE));
        }
        dirty.extend(cpu.take_pages());
        mem.set_cpu_dirty_log(None);
        self.copy_pages(dirty, &mem, &dst_mem, None, &mut streams, &mut out)?;
        let pause_copy = t_pause.elapsed();

        // Verification (not downtime): memory equal, every device-written page logged.
        let mut a = Box::new([0u8; PAGE_SIZE as usize]);
        let mut b = Box::new([0u8; PAGE_SIZE as usize]);
        for pfn in mem.pfns() {
            mem.read(pfn * PAGE_SIZE, &mut a[..])?;
            dst_mem.read(pfn * PAGE_SIZE, &mut b[..])?;
            out.memory_mismatch_pages += u64::from(a != b);
        }
        out.missed_dirty_pages = device_writes
            .pages()
            .into_iter()
            .filter(|p| !logged.contains(p))
            .count() as u64;
        out.log_writes = src.log_stats().log_writes.saturating_sub(log_writes_before);
        let _ = src.dma_unmap(DPDK_LOG_IOVA, log_len);

        // Switch: the guest runs on the destination from now on.
        let t_switch = Instant::now();
        let dst = Device::new(cfg)?;
        match port {
            PortSpec::Loopback => dst.set_loopback(),
            PortSpec::Link(j) => LinkPort::join(&dst, &self.node(j)?.dev.clone()),
            PortSpec::Null => {}
        }
        let irq = Arc::new(InterruptRecorder::new(dst.layout().msix_vectors));
        dst.set_interrupt_sink(irq.clone());
        let node = self.node(i)?;
        node.drv.migrate_to(dst.clone(), irq, dst_mem)?;
        node.dev = dst.clone();
        let resumed = node.drv.restart(&states).and_then(|()| {
            for f in &pending {
                dst.inbox().push(f);
            }
            dst.service_rx();
            if dst.announce() {
                return node.drv.handle_config_change();
            }
            Ok(false)
        });
        out.downtime_us = ((pause_copy + t_switch.elapsed()).as_secs_f64() * 1e6) as u64;
        match resumed {
            Ok(acked) => out.announce_acked = acked,
            Err(e) => out.errors.push(format!("resume on the destination: {e}")),
        }
        if out.errors.is_empty() {
            for _ in 0..BURSTS_AFTER {
                if let Err(e) = self.burst(step, i, m.background_frames, &mut streams) {
                    out.errors.push(format!("after the switch: {e}"));
                    break;
                }
            }
        }
        if let Some(f) = dst.fault() {
            out.errors.push(format!("destination device: {f}"));
        }
        if let Some(f) = src.fault() {
            out.errors.push(format!("source device: {f}"));
        }
        self.migrations += 1;
        let ev = format!(
            "{name}: {} round(s), {} pages copied, {} missed dirty, {} mismatched, downtime {} us, {} FIFO frame(s) moved, announce {}{}{}",
            out.rounds,
            out.pages_copied,
            out.missed_dirty_pages,
            out.memory_mismatch_pages,
            out.downtime_us,
            out.pending_frames,
            if out.announce_acked { "acked" } else { "not acked" },
            if armed == device::Quirks::NONE {
                String::new()
            } else {
                format!(", destination quirks: {}", armed.iter().map(|q| q.name()).collect::<Vec<_>>().join(","))
            },
            if out.errors.is_empty() { String::new() } else { format!("; errors: {}", out.errors.join("; ")) }
        );
        self.migration = Some(out);
        Ok(ev)
    }
}
