//! Runs a checked scenario: builds the devices, their drivers and ports, executes the steps in
//! order, and checks each step's expectations right after it and the `[end]` ones after a final
//! receive. A step error stops the scenario (later steps are reported as skipped) unless the
//! step has `allow_error = true`. Nothing here panics on any scenario; a panic from below is
//! caught and reported as a failed scenario.

use super::error::StepError;
use super::expect::{Expectation, MetricRef, Operand};
use super::ledger::Ledger;
use super::metrics::{Metric, MigrationOutcome, QueueField, StatusField, Value};
use super::model::{Action, PortSpec, ResetHow, Scenario, SizeSpec, Step, TrafficSpec};
use super::report::{ExpectReport, ExpectVerdict, FileReport, StepReport, StepVerdict, Verdict};
use crate::ctl::{CtlClient, Request, Response};
use crate::driver::NetDriver;
use crate::frames;
use crate::pcap::PcapCapture;
use bar_registers::virtio::net_cfg;
use device::{Device, LinkPort, Quirks};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receive passes at most when draining; every pass but the last takes at least one frame, so
/// this only bounds a pathological run.
const DRAIN_PASSES: usize = 1_000_000;
/// Send rounds in a row without progress before traffic gives up.
const STALL_ROUNDS: u32 = 4;

/// One device instance with its driver.
pub(crate) struct Node {
    pub name: String,
    pub dev: Arc<Device>,
    pub drv: NetDriver,
    /// The driver brought the device up (its rings exist and are polled).
    pub started: bool,
    /// Guest memory the inject step builds hostile structures in.
    pub scratch: Option<u64>,
    pub announce_requested: Option<bool>,
    pub announce_acked: Option<bool>,
    pub ctrl_ack: Option<u8>,
}

/// A served device (`ctl = PATH`): controlled and observed through its control socket.
pub(crate) struct Served {
    pub name: String,
    pub client: CtlClient,
    pub announce_requested: Option<bool>,
}

impl Served {
    fn call(&mut self, req: &Request) -> Result<Response, StepError> {
        self.client
            .call(req)
            .map_err(|e| StepError::Usage(format!("served device `{}`: {e}", self.name)))
    }
}

/// How long a served device's control socket may take to answer.
const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a running scenario has.
pub(crate) struct World<'a> {
    pub sc: &'a Scenario,
    /// The devices the scenario builds and drives, by device index (None: a served one).
    pub nodes: Vec<Option<Node>>,
    /// The served devices, by device index (None: a driven one).
    pub served: Vec<Option<Served>>,
    pub ledger: Ledger,
    pub rng: SmallRng,
    /// Quirks `inject` armed for the next device instance.
    pub pending_quirks: Quirks,
    pub migration: Option<MigrationOutcome>,
    pub migrations: u64,
    /// Whether the latest step failed (metric `step.error`).
    pub step_error: bool,
    /// The pcapng capture every device of this run writes into (`scenario run --pcap`).
    pub capture: Option<Arc<PcapCapture>>,
}

/// Runs one scenario and reports on every step and expectation.
pub fn run(sc: &Scenario) -> FileReport {
    run_captured(sc, None)
}

/// [`run`], with every device's frames captured into `capture` (interfaces
/// `SCENARIO/DEVICE-tx<P>`; a migration's destination is `SCENARIO/DEVICE@mN`).
pub fn run_captured(sc: &Scenario, capture: Option<&Arc<PcapCapture>>) -> FileReport {
    let t0 = Instant::now();
    let mut report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(sc, capture.cloned())
    })) {
        Ok(r) => r,
        Err(p) => {
            let msg = device::fault::panic_message(&*p);
            let mut r = FileReport::new(sc);
            r.error = Some(format!("internal error: the model panicked: {msg}"));
            r.verdict = Verdict::Fail;
            r
        }
    };
    report.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
    report
}

fn run_inner(sc: &Scenario, capture: Option<Arc<PcapCapture>>) -> FileReport {
    let mut report = FileReport::new(sc);
    let mut world = match World::new(sc, capture) {
        Ok(w) => w,
        Err(e) => {
            report.error = Some(format!("setting up the devices: {e}"));
            report.steps = sc.steps.iter().map(StepReport::skipped).collect();
            report.end = sc
                .end
                .iter()
                .map(|e| ExpectReport::skipped(e, "end"))
                .collect();
            report.finish();
            return report;
        }
    };
    let mut aborted = false;
    for step in &sc.steps {
        if aborted {
            report.steps.push(StepReport::skipped(step));
            continue;
        }
        let t = Instant::now();
        let result = world.run_step(step);
        world.step_error = result.is_err();
        let (verdict, evidence) = match result {
            Ok(ev) => (StepVerdict::Ok, ev),
            Err(e) if step.allow_error => {
                (StepVerdict::AllowedError, format!("error (allowed): {e}"))
            }
            Err(e) => {
                aborted = true;
                (StepVerdict::Error, format!("error: {e}"))
            }
        };
        let context = format!("step #{} {} (line {})", step.index, step.label, step.line);
        let expectations = if aborted {
            step.expect
                .iter()
                .map(|e| ExpectReport::skipped(e, &context))
                .collect()
        } else {
            step.expect
                .iter()
                .map(|e| world.check(e, &context))
                .collect()
        };
        report.steps.push(StepReport {
            index: step.index,
            kind: step.action.kind().to_string(),
            label: step.label.clone(),
            line: step.line,
            verdict,
            evidence,
            duration_ms: t.elapsed().as_secs_f64() * 1e3,
            expectations,
        });
    }
    if aborted {
        report.end = sc
            .end
            .iter()
            .map(|e| ExpectReport::skipped(e, "end"))
            .collect();
    } else {
        if let Err(e) = world.drain() {
            report.error = Some(format!("final receive: {e}"));
        }
        report.end = sc.end.iter().map(|e| world.check(e, "end")).collect();
    }
    report.finish();
    report
}

impl<'a> World<'a> {
    /// Creates the devices, joins their ports and binds a driver to each.
    fn new(sc: &'a Scenario, capture: Option<Arc<PcapCapture>>) -> Result<Self, StepError> {
        let devs: Vec<Option<Arc<Device>>> = sc
            .devices
            .iter()
            .map(|d| match d.served {
                Some(_) => Ok(None),
                None => Device::new(d.config.clone()).map(Some),
            })
            .collect::<Result<_, _>>()?;
        for (i, d) in sc.devices.iter().enumerate() {
            let Some(dev) = &devs[i] else { continue };
            match d.port {
                PortSpec::Loopback => dev.set_loopback(),
                PortSpec::Link(j) if j > i => {
                    if let Some(Some(peer)) = devs.get(j) {
                        LinkPort::join(dev, peer);
                    }
                }
                PortSpec::Link(_) | PortSpec::Null => {}
            }
        }
        if let Some(c) = &capture {
            for (spec, dev) in sc.devices.iter().zip(&devs) {
                if let Some(dev) = dev {
                    c.attach(&format!("{}/{}", sc.name, spec.name), dev)?;
                }
            }
        }
        let mut served = Vec::with_capacity(devs.len());
        for spec in &sc.devices {
            served.push(match &spec.served {
                Some(path) => Some(Served {
                    name: spec.name.clone(),
                    client: CtlClient::connect(path, CTL_TIMEOUT).map_err(|e| {
                        StepError::Usage(format!("served device `{}`: {e}", spec.name))
                    })?,
                    announce_requested: None,
                }),
                None => None,
            });
        }
        let mut nodes = Vec::with_capacity(devs.len());
        for (spec, dev) in sc.devices.iter().zip(devs) {
            let Some(dev) = dev else {
                nodes.push(None);
                continue;
            };
            let drv = crate::driver::in_process(&dev, spec.driver.clone())?;
            nodes.push(Some(Node {
                name: spec.name.clone(),
                dev,
                drv,
                started: false,
                scratch: None,
                announce_requested: None,
                announce_acked: None,
                ctrl_ack: None,
            }));
        }
        Ok(World {
            sc,
            nodes,
            served,
            ledger: Ledger::default(),
            rng: SmallRng::seed_from_u64(sc.seed),
            pending_quirks: Quirks::NONE,
            migration: None,
            migrations: 0,
            step_error: false,
            capture,
        })
    }

    pub(crate) fn node(&mut self, i: usize) -> Result<&mut Node, StepError> {
        match self.nodes.get_mut(i) {
            Some(Some(n)) => Ok(n),
            Some(None) => Err(StepError::Usage(format!(
                "device `{}` is served: the scenario does not drive it",
                self.sc.devices[i].name
            ))),
            None => Err(StepError::Usage(format!("no device {i}"))),
        }
    }

    /// The served device `i`, if it is one.
    fn served(&mut self, i: usize) -> Option<&mut Served> {
        self.served.get_mut(i).and_then(Option::as_mut)
    }

    fn started(&mut self, i: usize) -> Result<&mut Node, StepError> {
        let n = self.node(i)?;
        if !n.started {
            return Err(StepError::Usage(format!(
                "device `{}` is not started (add a `start` step)",
                n.name
            )));
        }
        Ok(n)
    }

    /// The device frames sent by device `i` arrive at.
    pub(crate) fn receiver_of(&self, i: usize) -> Option<usize> {
        match self.sc.devices.get(i)?.port {
            PortSpec::Loopback => Some(i),
            PortSpec::Link(j) => Some(j),
            PortSpec::Null => None,
        }
    }

    fn run_step(&mut self, step: &Step) -> Result<String, StepError> {
        match &step.action {
            Action::Start { devices } => {
                let mut ev = Vec::new();
                for &d in devices {
                    let n = self.node(d)?;
                    n.drv.start()?;
                    n.started = true;
                    ev.push(format!(
                        "{}: up, {} pair(s), features {:#x}",
                        n.name, n.drv.opts.queue_pairs, n.drv.features
                    ));
                }
                Ok(ev.join("; "))
            }
            Action::Traffic(t) => self.traffic(step.index, t),
            Action::Receive { devices } => {
                let before = self.ledger.total().delivered;
                for &d in devices {
                    self.started(d)?;
                }
                self.drain()?;
                Ok(format!(
                    "received {} frame(s)",
                    self.ledger.total().delivered - before
                ))
            }
            Action::StopStart { device } => {
                let n = self.started(*device)?;
                let states = n.drv.stop()?;
                n.drv.restart(&states)?;
                let mut ev = format!(
                    "{}: stopped and resumed at ring states (avail/used)",
                    n.name
                );
                for (q, (a, u)) in states.iter().enumerate().filter(|(_, s)| **s != (0, 0)) {
                    let _ = write!(ev, " q{q} {a}/{u}");
                }
                Ok(ev)
            }
            Action::Reset {
                device,
                how,
                restart,
            } => {
                let n = self.node(*device)?;
                match how {
                    ResetHow::Driver => n.drv.reset()?,
                    ResetHow::Flr => n.dev.reset(),
                }
                n.started = false;
                let what = if *how == ResetHow::Driver {
                    "device_status = 0"
                } else {
                    "function level reset"
                };
                if *restart {
                    n.drv.start()?;
                    n.started = true;
                    return Ok(format!(
                        "{}: {what}, started again (status {:#04x})",
                        n.name,
                        n.dev.status()
                    ));
                }
                Ok(format!("{}: {what}, left reset", n.name))
            }
            Action::Inject {
                device,
                fault,
                pair,
            } => self.inject(*device, *fault, *pair),
            Action::Link { device, up } if self.served(*device).is_some() => {
                let sv = self.served(*device).expect("checked");
                let r = sv.call(&Request::Link { up: *up })?;
                Ok(format!(
                    "{} (served): link {}",
                    sv.name,
                    if r.link_up == Some(true) {
                        "up"
                    } else {
                        "down"
                    }
                ))
            }
            Action::Link { device, up } => {
                let n = self.node(*device)?;
                let before = n.drv.irq.count(0);
                n.dev.set_link(*up);
                Ok(format!(
                    "{}: link {}, config interrupts {before} -> {}",
                    n.name,
                    if *up { "up" } else { "down" },
                    n.drv.irq.count(0)
                ))
            }
            Action::QueuePairs {
                device,
                pairs,
                accept,
            } => {
                let n = self.started(*device)?;
                let ack = n.drv.ctrl_raw(4, 0, &pairs.to_le_bytes())?;
                n.ctrl_ack = Some(ack);
                let verdict = if ack == 0 {
                    "VIRTIO_NET_OK"
                } else {
                    "VIRTIO_NET_ERR"
                };
                if (ack == 0) != *accept {
                    return Err(StepError::Usage(format!(
                        "VQ_PAIRS_SET {pairs} answered {verdict}, expected {}",
                        if *accept { "OK" } else { "ERR" }
                    )));
                }
                Ok(format!(
                    "{}: VQ_PAIRS_SET {pairs} answered {verdict}; active pairs {}",
                    n.name,
                    n.dev.active_queue_pairs()
                ))
            }
            Action::Announce { device } if self.served(*device).is_some() => {
                let sv = self.served(*device).expect("checked");
                let r = sv.call(&Request::Announce {})?;
                let requested = r.announced.unwrap_or(false);
                sv.announce_requested = Some(requested);
                Ok(format!(
                    "{} (served): announce {}",
                    sv.name,
                    if requested {
                        "requested (the guest's driver acks it)"
                    } else {
                        "refused: GUEST_ANNOUNCE not negotiated"
                    }
                ))
            }
            Action::Wait { duration } => {
                std::thread::sleep(*duration);
                Ok(format!("waited {:.3} s", duration.as_secs_f64()))
            }
            Action::Announce { device } => {
                let n = self.started(*device)?;
                let requested = n.dev.announce();
                let acked = if requested {
                    n.drv.handle_config_change()?
                } else {
                    false
                };
                n.announce_requested = Some(requested);
                n.announce_acked = Some(acked);
                Ok(format!(
                    "{}: announce {}, driver {}",
                    n.name,
                    if requested {
                        "requested"
                    } else {
                        "not negotiated"
                    },
                    if acked { "acked" } else { "did not ack" }
                ))
            }
            Action::Migrate(m) => self.migrate(step.index, m),
        }
    }

    /// Sends the traffic pattern, receiving as it goes (unless told not to) and draining at the end.
    fn traffic(&mut self, step: usize, t: &TrafficSpec) -> Result<String, StepError> {
        struct Flow {
            node: usize,
            pair: u16,
            stream: u16,
            left: u64,
            src: [u8; 6],
            dst: [u8; 6],
        }
        let mut flows = Vec::new();
        for &n in &t.from {
            let to = self.receiver_of(n);
            let dst = match to {
                Some(r) => self.started(r)?.drv.mac()?,
                None => [0x02, 0, 0, 0, 0, 0xFF],
            };
            let node = self.started(n)?;
            let pairs: Vec<u16> = t
                .pairs
                .clone()
                .unwrap_or_else(|| (0..node.drv.opts.queue_pairs).collect());
            let src = node.drv.mac()?;
            let k = pairs.len().max(1) as u64;
            for (i, &pair) in pairs.iter().enumerate() {
                let left = t.count / k + u64::from((i as u64) < t.count % k);
                let stream = self.ledger.open(step, to).ok_or_else(|| {
                    StepError::Usage("more than 50000 traffic streams in one scenario".into())
                })?;
                flows.push(Flow {
                    node: n,
                    pair,
                    stream,
                    left,
                    src,
                    dst,
                });
            }
        }
        let mut stalls = 0;
        loop {
            let mut progress = false;
            for fl in flows.iter_mut().filter(|f| f.left > 0) {
                let n = fl.left.min(t.batch as u64);
                let seq0 = self.ledger.next_seq(fl.stream);
                let batch: Vec<Vec<u8>> = (0..n)
                    .map(|i| {
                        let len = pick_size(t.size, &mut self.rng);
                        frames::build(fl.src, fl.dst, fl.stream, seq0 + i, len, &mut self.rng)
                    })
                    .collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let node = self.node(fl.node)?;
                let k = node.drv.send(fl.pair, &refs)? as u64;
                self.ledger.sent(fl.stream, k);
                fl.left -= k;
                progress |= k > 0;
            }
            if t.receive {
                self.receive_all()?;
            }
            if flows.iter().all(|f| f.left == 0) {
                break;
            }
            stalls = if progress { 0 } else { stalls + 1 };
            if stalls >= STALL_ROUNDS {
                let left: u64 = flows.iter().map(|f| f.left).sum();
                let status: Vec<String> = t
                    .from
                    .iter()
                    .filter_map(|&n| self.nodes.get(n).and_then(Option::as_ref))
                    .map(|n| format!("{} status {:#04x}", n.name, n.dev.status()))
                    .collect();
                return Err(StepError::Usage(format!(
                    "TX stalled with {left} frame(s) not queued: the TX rings stay full ({})",
                    status.join(", ")
                )));
            }
        }
        if t.receive {
            self.drain()?;
        }
        let s = self.ledger.of_step(step);
        Ok(format!(
            "sent {} delivered {} lost {} dup {} reord {} corrupt {}{}",
            s.sent,
            s.delivered,
            s.lost,
            s.duplicated,
            s.reordered,
            s.corrupted,
            if t.receive { "" } else { " (not received yet)" }
        ))
    }

    /// One receive pass over every started device; returns the frames taken.
    pub(crate) fn receive_all(&mut self) -> Result<usize, StepError> {
        let mut n = 0;
        let started = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, n)| n.as_mut().map(|n| (i, n)))
            .filter(|(_, n)| n.started);
        for (i, node) in started {
            for p in 0..node.drv.opts.queue_pairs {
                for f in node.drv.recv(p)? {
                    self.ledger.record(i, &f);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Receives until a pass finds nothing.
    pub(crate) fn drain(&mut self) -> Result<(), StepError> {
        for _ in 0..DRAIN_PASSES {
            if self.receive_all()? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Checks one expectation now.
    fn check(&mut self, e: &Expectation, context: &str) -> ExpectReport {
        let lhs = self.observe(&e.lhs);
        let rhs = match &e.rhs {
            Operand::Literal(v) => Ok(*v),
            Operand::Metric(m) => self.observe(m),
        };
        let expected = match (&e.rhs, &rhs) {
            (Operand::Literal(v), _) => format!("{} {v}", e.op.as_str()),
            (Operand::Metric(m), Ok(v)) => format!("{} {} (= {v})", e.op.as_str(), m.text),
            (Operand::Metric(m), Err(_)) => format!("{} {}", e.op.as_str(), m.text),
        };
        let (verdict, observed, message) = match (lhs, rhs) {
            (Ok(a), Ok(b)) => match e.op.apply(a, b) {
                Some(true) => (ExpectVerdict::Pass, a.to_string(), String::new()),
                Some(false) => (
                    ExpectVerdict::Fail,
                    a.to_string(),
                    format!(
                        "{context}: expected {} {expected}, observed {a}",
                        e.lhs.text
                    ),
                ),
                None => (
                    ExpectVerdict::Fail,
                    a.to_string(),
                    format!("{context}: `{}` compares values of different types", e.text),
                ),
            },
            (Err(m), _) | (_, Err(m)) => (
                ExpectVerdict::Fail,
                "unavailable".into(),
                format!("{context}: expected {} {expected}, but {m}", e.lhs.text),
            ),
        };
        ExpectReport {
            expr: e.text.clone(),
            line: e.line,
            verdict,
            expected,
            observed,
            message,
        }
    }

    /// Reads a metric.
    fn observe(&mut self, m: &MetricRef) -> Result<Value, String> {
        let int = |v: u64| Ok(Value::Int(v));
        let bool_ = |b: bool| Ok(Value::Bool(b));
        match &m.metric {
            Metric::Frames { latest_step, field } => {
                let stats = if *latest_step {
                    let step = self
                        .ledger
                        .latest_step
                        .ok_or("no step has sent frames yet")?;
                    self.ledger.of_step(step)
                } else {
                    self.ledger.total()
                };
                return stats
                    .get(field)
                    .map(Value::Int)
                    .ok_or_else(|| format!("unknown frames field `{field}`"));
            }
            Metric::Migration("count") => return int(self.migrations),
            Metric::Migration(f) => {
                let r = self.migration.as_ref().ok_or("no migration has run")?;
                return r.get(f).ok_or_else(|| {
                    if super::metrics::MIGRATION_FIELDS.contains(f) {
                        format!("migration.{f} has no value for this migration (no copy rate was measured)")
                    } else {
                        format!("unknown migration field `{f}`")
                    }
                });
            }
            Metric::StepError => return bool_(self.step_error),
            _ => {}
        }
        let i = m.device.ok_or("metric needs a device")?;
        if let Some(sv) = self.served(i) {
            return observe_served(sv, &m.metric);
        }
        let n = self
            .nodes
            .get_mut(i)
            .and_then(Option::as_mut)
            .ok_or("no such device")?;
        let c = || n.dev.counters();
        match &m.metric {
            Metric::Counter(name) => c()
                .scalars()
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Value::Int(v))
                .ok_or_else(|| format!("unknown counter `{name}`")),
            Metric::Fault(kind) => int(c().fault(kind)),
            Metric::FaultAny => int(c().faults.iter().sum()),
            Metric::Status(StatusField::Value) => int(n.dev.status().into()),
            Metric::Status(StatusField::Bit(b)) => bool_(n.dev.status() & b != 0),
            Metric::Queue { queue, field } => queue_metric(n, *queue, *field),
            Metric::IrqVector(v) => int(n.drv.irq.count(*v)),
            Metric::IrqTotal => int(n.drv.irq.total()),
            Metric::ConfigLinkUp | Metric::ConfigAnnounce | Metric::ConfigStatus => {
                let s = n
                    .drv
                    .net_config(net_cfg::STATUS, 2)
                    .map_err(|e| format!("reading the config status: {e}"))?;
                match m.metric {
                    Metric::ConfigLinkUp => bool_(s & 1 != 0),
                    Metric::ConfigAnnounce => bool_(s & 2 != 0),
                    _ => int(s),
                }
            }
            Metric::Feature(bit) => bool_(n.dev.negotiated_features() & (1u64 << bit) != 0),
            Metric::FeaturesNegotiated => int(n.dev.negotiated_features()),
            Metric::ActiveQueuePairs => int(n.dev.active_queue_pairs().into()),
            Metric::InboxLen => int(n.dev.inbox().len() as u64),
            Metric::InboxDropped => int(n.dev.inbox().dropped()),
            Metric::IommuFaults => int(n.dev.iommu_stats().faults()),
            Metric::LogWrites => int(n.dev.log_stats().log_writes),
            Metric::LogPagesMarked => int(n.dev.log_stats().pages_marked),
            Metric::LogBeyondEnd => int(n.dev.log_stats().beyond_end),
            Metric::LogFaults => int(n.dev.log_stats().faults),
            Metric::AnnounceRequested => n
                .announce_requested
                .map(Value::Bool)
                .ok_or_else(|| format!("no announce step has run on `{}`", n.name)),
            Metric::AnnounceAcked => n
                .announce_acked
                .map(Value::Bool)
                .ok_or_else(|| format!("no announce step has run on `{}`", n.name)),
            Metric::CtrlLastAck => n
                .ctrl_ack
                .map(|a| Value::Int(a.into()))
                .ok_or_else(|| format!("no queue_pairs step has run on `{}`", n.name)),
            Metric::Frames { .. } | Metric::Migration(_) | Metric::StepError => {
                Err("not a device metric".into())
            }
        }
    }
}

/// Reads a metric of a served device from its control socket's `stats`.
fn observe_served(sv: &mut Served, m: &Metric) -> Result<Value, String> {
    if let Metric::AnnounceRequested = m {
        return sv
            .announce_requested
            .map(Value::Bool)
            .ok_or_else(|| format!("no announce step has run on `{}`", sv.name));
    }
    let st = sv
        .call(&Request::Stats {})
        .map_err(|e| e.to_string())?
        .stats
        .ok_or("the control socket's stats response has no stats")?;
    let int = |v: u64| Ok(Value::Int(v));
    let counter = |k: &str| {
        st.counters
            .get(k)
            .copied()
            .ok_or_else(|| format!("the served device reports no counter `{k}`"))
    };
    match m {
        Metric::Counter(k) | Metric::Fault(k) => counter(k).map(Value::Int),
        Metric::FaultAny => int(device::fault::FAULT_KINDS
            .iter()
            .map(|k| st.counters.get(*k).copied().unwrap_or(0))
            .sum()),
        Metric::Status(StatusField::Value) => int(st.status.into()),
        Metric::Status(StatusField::Bit(b)) => Ok(Value::Bool(st.status & b != 0)),
        Metric::ConfigLinkUp => Ok(Value::Bool(st.link_up)),
        Metric::Feature(bit) => Ok(Value::Bool(st.negotiated_features & (1u64 << bit) != 0)),
        Metric::FeaturesNegotiated => int(st.negotiated_features),
        Metric::ActiveQueuePairs => int(st.active_queue_pairs.into()),
        Metric::IommuFaults => int(st.iommu.get("iommu_faults").copied().unwrap_or(0)),
        Metric::LogWrites | Metric::LogPagesMarked | Metric::LogBeyondEnd | Metric::LogFaults => {
            let k = match m {
                Metric::LogWrites => "log_writes",
                Metric::LogPagesMarked => "pages_marked",
                Metric::LogBeyondEnd => "beyond_end",
                _ => "faults",
            };
            int(st.dirty_log.get(k).copied().unwrap_or(0))
        }
        Metric::Queue { queue, field } => {
            let q = st
                .queues
                .iter()
                .find(|x| x.queue == *queue)
                .ok_or_else(|| format!("served device `{}` has no queue {queue}", sv.name))?;
            match field {
                QueueField::Enabled => Ok(Value::Bool(q.enabled)),
                QueueField::Size => int(q.size.into()),
                QueueField::LastAvail => int(q.last_avail.into()),
                QueueField::LastUsed => int(q.last_used.into()),
                QueueField::Doorbells => int(q.doorbells),
                QueueField::Chains => int(q.chains),
                QueueField::Frames => int(q.frames),
                QueueField::Bytes => int(q.bytes),
                QueueField::Interrupts => int(q.interrupts),
                QueueField::InterruptsSuppressed => int(q.interrupts_suppressed),
                QueueField::UsedIdx | QueueField::MsixVector => {
                    Err("not reported by a served device".into())
                }
            }
        }
        _ => Err(format!(
            "not reported by a served device's control socket ({m:?})"
        )),
    }
}

fn queue_metric(n: &mut Node, q: u16, field: QueueField) -> Result<Value, String> {
    let int = |v: u64| Ok(Value::Int(v));
    if field == QueueField::UsedIdx {
        let mem = n.drv.mem.clone();
        let ring = n.drv.ring(q).map_err(|e| format!("queue {q}: {e}"))?;
        return ring
            .used_idx(&mem)
            .map(|v| Value::Int(v.into()))
            .map_err(|e| format!("queue {q}: {e}"));
    }
    let snap = n
        .dev
        .queue(q)
        .ok_or_else(|| format!("device `{}` has no queue {q}", n.name))?;
    let counters = n.dev.counters();
    let qc = counters
        .queues
        .get(usize::from(q))
        .cloned()
        .unwrap_or_default();
    match field {
        QueueField::Enabled => Ok(Value::Bool(snap.enabled)),
        QueueField::Size => int(snap.size.into()),
        QueueField::LastAvail => int(snap.last_avail.into()),
        QueueField::LastUsed => int(snap.last_used.into()),
        QueueField::MsixVector => int(snap.msix_vector.into()),
        QueueField::Doorbells => int(qc.doorbells),
        QueueField::Chains => int(qc.chains),
        QueueField::Frames => int(qc.frames),
        QueueField::Bytes => int(qc.bytes),
        QueueField::Interrupts => int(qc.interrupts),
        QueueField::InterruptsSuppressed => int(qc.interrupts_suppressed),
        QueueField::UsedIdx => Err("unreachable".into()),
    }
}

fn pick_size(s: SizeSpec, rng: &mut SmallRng) -> usize {
    match s {
        SizeSpec::Fixed(n) => n,
        SizeSpec::Range(a, b) if a < b => rng.gen_range(a..=b),
        SizeSpec::Range(a, _) => a,
    }
}
