//! The `migrate` step: the scenario's guest (its driver and guest memory) moves live from the
//! device it runs on to a fresh instance with the same options (plus any quirk an `inject`
//! armed), through the migration engine `vdpa-emu migrate` runs ([`crate::migrate::engine`]):
//! dirty logging and a full copy while the guest sends, pre-copy rounds until the downtime limit
//! (or the step's explicit `dirty_threshold`) says stop, the DPDK stop
//! sequence, stop-and-copy, then the switch: ring states restored before queue_enable, frames
//! waiting in the source's receive FIFO handed over, GUEST_ANNOUNCE. Every page the device
//! wrote after logging started must have been in its log (`missed_dirty_pages`), and
//! destination memory must equal the source's.

use super::error::StepError;
use super::metrics::MigrationOutcome;
use super::model::{MigrateSpec, PortSpec};
use super::runner::World;
use crate::driver::NetDriver;
use crate::migrate::engine::{self, MigratingGuest, PreCopy};
use device::{Device, DeviceConfig, LinkPort};
use std::sync::Arc;

/// Traffic bursts on the destination after the switch (a broken resume shows up here).
const BURSTS_AFTER: u32 = 4;

/// The scenario's guest as the migration engine sees it: background bursts of the step's
/// frames, and a destination wired like the source.
struct StepGuest<'w, 'a> {
    world: &'w mut World<'a>,
    step: usize,
    node: usize,
    frames: u32,
    streams: Vec<u16>,
    cfg: DeviceConfig,
    port: PortSpec,
}

impl MigratingGuest for StepGuest<'_, '_> {
    type Error = StepError;

    fn driver(&mut self) -> Result<&mut NetDriver, StepError> {
        Ok(&mut self.world.node(self.node)?.drv)
    }

    fn run(&mut self, _dev: &Arc<Device>) -> Result<(), StepError> {
        self.world
            .burst(self.step, self.node, self.frames, &mut self.streams)
    }

    fn destination(&mut self) -> Result<Arc<Device>, StepError> {
        let dst = Device::new(self.cfg.clone())?;
        if let Some(c) = self.world.capture.clone() {
            let nth = self.world.migrations + 1;
            let scenario = &self.world.sc.name;
            let label = format!("{scenario}/{}@m{nth}", self.world.node(self.node)?.name);
            c.attach(&label, &dst)?;
        }
        match self.port {
            PortSpec::Loopback => dst.set_loopback(),
            PortSpec::Link(j) => LinkPort::join(&dst, &self.world.node(j)?.dev.clone()),
            PortSpec::Null => {}
        }
        Ok(dst)
    }
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

    /// Runs a `migrate` step.
    pub(crate) fn migrate(&mut self, step: usize, m: &MigrateSpec) -> Result<String, StepError> {
        let i = m.device;
        let _span = tracing::info_span!("migrate step", step, device = i).entered();
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
        let name = node.name.clone();
        let mut guest = StepGuest {
            world: &mut *self,
            step,
            node: i,
            frames: m.background_frames,
            streams: Vec::new(),
            cfg,
            port,
        };
        let r = engine::migrate(
            &mut guest,
            &src,
            PreCopy {
                policy: m.stop,
                max_rounds: m.max_rounds,
            },
        )?;
        let mut streams = guest.streams;
        let dst = r.dst.clone();
        self.node(i)?.dev = dst.clone();
        let mut out = MigrationOutcome {
            rounds: u64::from(r.rounds),
            converged: r.converged,
            pages_copied: r.pages_copied,
            zero_pages: r.zero_pages,
            estimated_downtime_us: r.estimated_downtime.map(|d| d.as_micros() as u64),
            log_bytes: r.log_bytes,
            log_writes: r.log_writes,
            missed_dirty_pages: r.missed_dirty_pages,
            memory_mismatch_pages: r.memory_mismatch_pages,
            downtime_us: (r.downtime.as_secs_f64() * 1e6) as u64,
            pending_frames: r.pending_frames,
            errors: Vec::new(),
            announce_acked: r.announce_acked,
        };
        if let Some(e) = r.resume_error {
            out.errors.push(format!("resume on the destination: {e}"));
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
            "{name}: {} round(s) ({}), {} pages copied ({} zero), {} missed dirty, {} mismatched, downtime {} us (estimated {}), {} FIFO frame(s) moved, announce {}{}{}",
            out.rounds,
            match r.stop_reason {
                crate::migrate::policy::StopReason::RoundLimit => "did not converge: round limit".to_string(),
                _ => m.stop.to_string(),
            },
            out.pages_copied,
            out.zero_pages,
            out.missed_dirty_pages,
            out.memory_mismatch_pages,
            out.downtime_us,
            out.estimated_downtime_us.map_or("unknown".into(), |e| format!("{e} us")),
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
