//! The pre-copy live migration engine: the one implementation `vdpa-emu migrate` and the
//! scenario `migrate` step both run. It moves a guest (its driver and guest memory) from the
//! device it runs on to a destination the caller creates at the switch, with the VMM's stages
//! as QEMU's migration/ram.c and DPDK's IFC VF driver (drivers/vdpa/ifc/ifcvf_vdpa.c,
//! `ifcvf_sw_fallback_switchover` / `vdpa_ifcvf_stop`) run them:
//!
//! 1. logging on (the vhost bitmap mapped at IFCVF_LOG_BASE, LOGGING_CTRL = 1), an independent
//!    record of every device write, CPU dirty tracking; all memory sent while the guest runs
//!    (holes and zero-filled pages as zero pages, [`super::transfer`]);
//! 2. pre-copy: harvest the device log and the CPU log, then decide ([`policy::decide`]): stop
//!    when those pages, at the copy rate just measured, fit the downtime limit (QEMU's
//!    `downtime-limit` test), or at the round limit; otherwise copy them (a round) and repeat;
//! 3. pause: frames waiting in the receive FIFO taken as device state, the DPDK stop sequence,
//!    the last harvest, the used rings marked dirty in software ("the HW logs packet buffers
//!    only"), stop-and-copy of those and the pages pending at the decision;
//! 4. verification (not downtime): destination memory equals the source (compared over the
//!    pages that hold data on either side, without allocating the rest), every page the device
//!    wrote after logging started was in its log;
//! 5. switch: the destination gets the ring states before queue_enable, the FIFO frames, and
//!    announces (GUEST_ANNOUNCE instead of RARP).
//!
//! What the guest does while it runs (its traffic) and how the destination is wired are the
//! caller's, through [`MigratingGuest`].

use super::policy::{self, RateMeter, StopPolicy, StopReason};
use super::transfer::{self, Sent, Transfer};
use crate::dirty_bitmap;
use crate::driver::{DriverError, NetDriver};
use bar_registers::lm::DPDK_LOG_IOVA;
use device::{Device, DmaMapper, InterruptRecorder};
use dma::{Backing, MapError, Perms, SharedMemory, ShmError, WriteTrace, PAGE_SIZE};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The guest being migrated, as the engine sees it.
pub trait MigratingGuest {
    /// The caller's error type: every failure the engine meets converts into it.
    type Error: From<DriverError> + From<std::io::Error> + From<MapError> + From<ShmError>;

    /// The guest's driver.
    fn driver(&mut self) -> Result<&mut NetDriver, Self::Error>;
    /// Lets the guest run a moment on `dev` (its traffic, both ways).
    fn run(&mut self, dev: &Arc<Device>) -> Result<(), Self::Error>;
    /// Just before the pause (e.g. the network sends a burst the guest does not receive).
    fn before_pause(&mut self, _src: &Arc<Device>) {}
    /// The destination device, created at the switch and wired to its port.
    fn destination(&mut self) -> Result<Arc<Device>, Self::Error>;
    /// A progress line (stage, round).
    fn progress(&self, _line: &str) {}
}

/// When pre-copy stops iterating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreCopy {
    /// The stop test applied before every round.
    pub policy: StopPolicy,
    /// Stop after this many rounds anyway (pre-copy did not converge).
    pub max_rounds: u32,
}

/// One stretch of a migration's timeline (for `migrate --plot` and the JSON report).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Phase {
    /// "bulk" (stage 1: all memory), "round N" (stage 2) or "stop-and-copy" (stage 3).
    pub name: String,
    /// Milliseconds since logging was turned on.
    pub start_ms: f64,
    pub end_ms: f64,
    /// Pages sent in this phase (with data or as zero pages).
    pub pages_copied: u64,
    /// Of those, pages sent as zero pages (holes and pages reading as zeros: no data).
    pub zero_pages: u64,
    /// Milliseconds spent copying (the guest's turns in between excluded).
    pub copy_ms: f64,
    /// Pages the device's dirty log reported for this phase.
    pub dirtied_by_device: u64,
    /// Pages the guest's CPU wrote in this phase (the VMM's own dirty tracking).
    pub dirtied_by_cpu: u64,
}

impl Phase {
    fn new(name: String, start_ms: f64, end_ms: f64, sent: &Sent, dirtied: (u64, u64)) -> Self {
        Phase {
            name,
            start_ms,
            end_ms,
            pages_copied: sent.pages(),
            zero_pages: sent.zero,
            copy_ms: sent.busy.as_secs_f64() * 1e3,
            dirtied_by_device: dirtied.0,
            dirtied_by_cpu: dirtied.1,
        }
    }
}

/// One stop-or-continue decision: after the bulk copy and after each pre-copy round.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Pre-copy rounds done before it (0: right after the bulk copy).
    pub after_round: u32,
    /// Milliseconds since logging was turned on.
    pub at_ms: f64,
    /// Dirty pages waiting to be copied (device log and CPU log, harvested just before).
    pub pending_pages: u64,
    /// The copy rate it used, bytes per second (None: nothing measured).
    pub copy_rate_bytes_per_s: Option<f64>,
    /// Time to copy the pending pages at that rate.
    pub estimated_downtime_us: Option<f64>,
    /// Pages that may be pending for the policy to stop: rate x downtime limit (QEMU's
    /// `threshold_size`), or the explicit threshold (compared with the last round's pages).
    pub threshold_pages: Option<u64>,
    /// Why pre-copy stopped here; None: another round.
    pub stop: Option<StopReason>,
}

/// What one migration measured.
#[derive(Debug)]
pub struct Migration {
    /// The destination the guest now runs on (when `resume_error` is None).
    pub dst: Arc<Device>,
    pub rounds: u32,
    /// Why pre-copy ended.
    pub stop_reason: StopReason,
    /// Every decision, the last one the stop.
    pub decisions: Vec<Decision>,
    /// Whether pre-copy stopped by its policy (false: the round limit forced stop-and-copy).
    pub converged: bool,
    /// Pages sent by stage 1, each pre-copy round, and stop-and-copy.
    pub pages_per_round: Vec<u64>,
    /// Pages sent in all (with data or as zero pages).
    pub pages_copied: u64,
    /// Of those, the zero pages.
    pub zero_pages: u64,
    pub log_bytes: u64,
    pub log_writes: u64,
    pub missed_dirty_pages: u64,
    pub memory_mismatch_pages: u64,
    /// The stop-and-copy time the last decision estimated (None without a measured rate).
    pub estimated_downtime: Option<Duration>,
    /// Pause to resumed on the destination, verification excluded.
    pub downtime: Duration,
    /// The part of the downtime spent copying pages.
    pub stop_copy: Duration,
    /// Bytes of guest RAM holding pages after the copy: source, destination.
    pub resident_bytes: (u64, u64),
    /// Bulk copy, each pre-copy round, stop-and-copy (the last one ends at the resume).
    pub timeline: Vec<Phase>,
    /// Frames moved from the source's receive FIFO to the destination's.
    pub pending_frames: u64,
    /// Whether the destination's announce was acked by the driver.
    pub announce_acked: bool,
    /// The driver could not resume on the destination.
    pub resume_error: Option<DriverError>,
}

/// Migrates `guest` from `src` to the destination it creates at the switch.
pub fn migrate<G: MigratingGuest>(
    guest: &mut G,
    src: &Arc<Device>,
    p: PreCopy,
) -> Result<Migration, G::Error> {
    let _span = tracing::info_span!("precopy").entered();
    let mem = guest.driver()?.mem.clone();

    // Stage 1: the log (DPDK: mapped at IFCVF_LOG_BASE), the independent write record, CPU
    // dirty tracking, logging on, everything copied while the guest runs.
    let top = mem.base() + mem.size();
    let log_len = dirty_bitmap::len_for(top);
    let log = SharedMemory::new("vdpa-emu-dirty-log", log_len)?;
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
    guest.driver()?.enable_logging(DPDK_LOG_IOVA, log_len)?;
    let log_writes_before = src.log_stats().log_writes;
    guest.progress(&format!(
        "stage 1: logging on ({log_len} B log at {DPDK_LOG_IOVA:#x}), sending {} MiB ({} MiB hold data)",
        mem.size() >> 20,
        mem.resident_bytes().map_err(DriverError::from)? >> 20
    ));
    let dst_mem = Arc::new(mem.new_like().map_err(DriverError::from)?);
    let mut xfer = Transfer::new(&mem, &dst_mem);
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
    let bulk = xfer.bulk(|| guest.run(src))?;
    let mut meter = RateMeter::default();
    meter.add(bulk.read, bulk.busy);
    let mut pages_per_round = vec![bulk.pages()];
    let mut timeline = vec![Phase::new(
        "bulk".into(),
        0.0,
        ms(Instant::now()),
        &bulk,
        (0, 0),
    )];
    guest.progress(&format!(
        "stage 1: {} pages sent, {} of them zero pages, at {}",
        bulk.pages(),
        bulk.zero,
        policy::fmt_rate(meter.rate())
    ));
    let mut logged: BTreeSet<u64> = BTreeSet::new();
    let ram = mem.pfns();

    // Stage 2: harvest, decide, copy, until the policy or the round limit stops it.
    let mut rounds = 0;
    let mut last_round_pages = None;
    let mut decisions = Vec::new();
    let (stop_reason, pending, estimated_downtime) = loop {
        let start = Instant::now();
        guest.run(src)?;
        let mut dirty = BTreeSet::new();
        dirty_bitmap::harvest(&log, log_len, &mut dirty)?;
        logged.extend(dirty.iter().copied());
        let by_device = dirty.len() as u64;
        let cpu_pages = cpu.take_pages();
        let by_cpu = cpu_pages.len() as u64;
        dirty.extend(cpu_pages);
        dirty.retain(|p| ram.contains(p));
        let state = policy::State {
            rounds,
            pending_pages: dirty.len() as u64,
            last_round_pages,
            rate: meter.rate(),
        };
        let stop = policy::decide(p.policy, p.max_rounds, &state);
        let estimate = policy::estimate(policy::bytes(state.pending_pages), state.rate);
        decisions.push(Decision {
            after_round: rounds,
            at_ms: ms(Instant::now()),
            pending_pages: state.pending_pages,
            copy_rate_bytes_per_s: state.rate,
            estimated_downtime_us: estimate.map(|d| d.as_secs_f64() * 1e6),
            threshold_pages: match p.policy {
                StopPolicy::MaxDowntime(limit) => {
                    policy::threshold_bytes(state.rate, limit).map(|b| b / PAGE_SIZE)
                }
                StopPolicy::DirtyThreshold(t) => Some(t),
            },
            stop,
        });
        let est = estimate.map_or("unknown".into(), |d| format!("{} ms", policy::fmt_ms(d)));
        if let Some(reason) = stop {
            guest.progress(&match reason {
                StopReason::RoundLimit => format!(
                    "stage 2: did not converge: {} pages still dirty after {rounds} rounds (the round limit), estimated stop-and-copy {est} at {}; stop-and-copy forced",
                    state.pending_pages,
                    policy::fmt_rate(state.rate)
                ),
                _ => format!(
                    "stage 2: {} pages dirty after {rounds} round(s), estimated stop-and-copy {est} at {}: stopping ({})",
                    state.pending_pages,
                    policy::fmt_rate(state.rate),
                    p.policy
                ),
            });
            break (reason, dirty, estimate);
        }
        rounds += 1;
        let sent = xfer.pages(dirty, || guest.run(src))?;
        meter.add(sent.read, sent.busy);
        last_round_pages = Some(sent.pages());
        pages_per_round.push(sent.pages());
        timeline.push(Phase::new(
            format!("round {rounds}"),
            ms(start),
            ms(Instant::now()),
            &sent,
            (by_device, by_cpu),
        ));
        tracing::debug!(round = rounds, pages = sent.pages(), "pre-copy round");
        guest.progress(&format!(
            "stage 2: round {rounds} copied {} dirty pages ({} zero) at {}; estimated stop-and-copy before it {est}",
            sent.pages(),
            sent.zero,
            policy::fmt_rate(meter.rate())
        ));
    };

    // Stage 3: pause, DPDK stop, stop-and-copy.
    guest.before_pause(src);
    let t_pause = Instant::now();
    // The receive FIFO is device state too. Take it at the pause, before the stop: the stop
    // sequence ends in a device reset, which empties the FIFO (rx_dropped_reset). With the
    // guest paused nothing new arrives, and a frame waits there only because the RX rings are
    // full, so the device could not have consumed it either.
    let pending_frames: Vec<_> = std::iter::from_fn(|| src.inbox().pop()).collect();
    let states = guest.driver()?.stop()?;
    let mut dirty = BTreeSet::new();
    dirty_bitmap::harvest(&log, log_len, &mut dirty)?;
    logged.extend(dirty.iter().copied());
    src.set_write_trace(None);
    // The DPDK driver marks every used ring dirty in software at stop ("the HW logs packet
    // buffers only"): the VMM copies them whatever the device logged.
    let by_device = dirty.len() as u64;
    for (used, len) in guest.driver()?.used_rings() {
        dirty.extend(used / PAGE_SIZE..(used + len).div_ceil(PAGE_SIZE));
    }
    let cpu_pages = cpu.take_pages();
    let by_cpu = cpu_pages.len() as u64;
    dirty.extend(cpu_pages);
    // And what was still dirty when pre-copy stopped.
    dirty.extend(pending);
    mem.set_cpu_dirty_log(None);
    let last = xfer.pages(dirty, || Ok::<_, G::Error>(()))?;
    pages_per_round.push(last.pages());

    // Verification of the copy (not downtime: a real VMM does not do it).
    let t_verify = Instant::now();
    let memory_mismatch_pages = transfer::mismatched_pages(&mem, &dst_mem)?;
    let resident_bytes = (
        mem.resident_bytes().map_err(DriverError::from)?,
        dst_mem.resident_bytes().map_err(DriverError::from)?,
    );
    // Every page the device wrote after logging started must have been in its log.
    let missed_dirty_pages = device_writes
        .pages()
        .into_iter()
        .filter(|p| !logged.contains(p))
        .count() as u64;
    let log_writes = src.log_stats().log_writes.saturating_sub(log_writes_before);
    let _ = src.dma_unmap(DPDK_LOG_IOVA, log_len);
    let verify_time = t_verify.elapsed();

    // Switch: the guest runs on the destination from now on.
    let dst = guest.destination()?;
    let irq = Arc::new(InterruptRecorder::new(dst.layout().msix_vectors));
    dst.set_interrupt_sink(irq.clone());
    let drv = guest.driver()?;
    drv.migrate_to(dst.clone(), irq, dst_mem.clone())?;
    let resumed = drv.restart(&states).and_then(|()| {
        for f in &pending_frames {
            dst.inbox().push_with_hdr(&f.hdr, &f.data);
        }
        dst.service_rx();
        // GUEST_ANNOUNCE instead of RARP: the device raises ANNOUNCE, the driver acks.
        if dst.announce() {
            return drv.handle_config_change();
        }
        Ok(false)
    });
    let downtime = t_pause.elapsed().saturating_sub(verify_time);
    timeline.push(Phase::new(
        "stop-and-copy".into(),
        ms(t_pause),
        ms(t_pause) + downtime.as_secs_f64() * 1e3,
        &last,
        (by_device, by_cpu),
    ));
    guest.progress(&format!(
        "stage 3: stopped, copied {} pages in {:.0} us (estimated {}), resumed on the destination after {:.0} us",
        last.pages(),
        last.busy.as_secs_f64() * 1e6,
        estimated_downtime.map_or("unknown".into(), |d| format!("{:.0} us", d.as_secs_f64() * 1e6)),
        downtime.as_secs_f64() * 1e6
    ));
    let (announce_acked, resume_error) = match resumed {
        Ok(acked) => (acked, None),
        Err(e) => (false, Some(e)),
    };
    Ok(Migration {
        dst,
        rounds,
        stop_reason,
        decisions,
        converged: stop_reason.converged(),
        pages_per_round,
        pages_copied: xfer.total.pages(),
        zero_pages: xfer.total.zero,
        log_bytes: log_len,
        log_writes,
        missed_dirty_pages,
        memory_mismatch_pages,
        estimated_downtime,
        downtime,
        stop_copy: last.busy,
        resident_bytes,
        timeline,
        pending_frames: pending_frames.len() as u64,
        announce_acked,
        resume_error,
    })
}
