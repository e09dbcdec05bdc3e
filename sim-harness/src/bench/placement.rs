//! How far apart the two CPUs of a pinned bench are, measured while the cell runs.
//!
//! A cross-process ring benchmark is made of cache-line transfers between the device's core
//! and the driver's: every avail index, descriptor, used element and buffer line the other
//! side wrote moves once per use. On a virtual machine those two "CPUs" are vCPUs the host
//! places and moves: two cores that share an L3 pass a line in tens of nanoseconds, two cores
//! on different dies (an EPYC's CCDs) in well over a hundred. On the 2-vCPU machines this
//! project is measured on, one-way latency flips between about 28 ns and about 160 ns, more
//! often under load, and a bench cell's rate follows how much of its window the pair spent
//! far apart (docs/bench.md, "Where the two modes come from").
//!
//! [`Sampler`] measures it during a window: every `period` a thread pinned to the device's
//! CPU and a partner pinned to the driver's bounce one cache line `round_trips` times (the
//! classic ping-pong core-to-core latency test) and record the one-way time. Each sample
//! preempts the bench on both CPUs for about 2 x `round_trips` one-way times (0.06-0.3 ms at
//! 1000 round trips), 0.1-0.6% of a 50 ms period.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to sample and how often.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// (the sampling thread's CPU, its partner's CPU).
    pub cpus: (usize, usize),
    pub period: Duration,
    pub round_trips: u32,
}

impl Probe {
    /// The bench's probe between `cpus`: 1000 round trips every `period`.
    pub fn between(cpus: (usize, usize), period: Duration) -> Probe {
        Probe {
            cpus,
            period,
            round_trips: 1000,
        }
    }
}

/// A sample that takes longer than this is abandoned (counted in
/// [`Placement::unanswered`]): the partner was not scheduled, which says nothing about the
/// distance between the cores and must not hold the device's CPU.
const SAMPLE_LIMIT: Duration = Duration::from_millis(5);

/// Unanswered samples in a row after which a window stops sampling.
const GIVE_UP: usize = 3;

/// The value that tells the partner a sample was abandoned.
const ABANDON: u64 = u64::MAX;

/// The line the two threads bounce, alone on its own cache lines (128 bytes: the adjacent
/// line prefetcher pairs lines).
#[repr(align(128))]
struct Line(AtomicU64);

struct Shared {
    line: Line,
    stop: AtomicBool,
}

/// The samples of one window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Placement {
    /// One-way cache-line transfer time of each sample, nanoseconds, in order.
    pub samples_ns: Vec<f64>,
    /// Samples abandoned because the partner did not run within 5 ms.
    pub unanswered: usize,
    pub median_ns: Option<f64>,
    /// Share of the samples above the run's far threshold ([`far_threshold`]): how much of
    /// the window the two CPUs spent far apart.
    pub far_percent: Option<f64>,
}

impl Placement {
    /// The window's samples, classified later ([`Placement::classify`]).
    pub fn new(samples_ns: Vec<f64>, unanswered: usize) -> Placement {
        let median_ns = super::median(&samples_ns).map(|v| (v * 10.0).round() / 10.0);
        Placement {
            samples_ns,
            unanswered,
            median_ns,
            far_percent: None,
        }
    }

    /// Sets [`Placement::far_percent`]: the share of samples above `threshold_ns`.
    pub fn classify(&mut self, threshold_ns: f64) {
        self.far_percent = self.far_share(threshold_ns);
    }

    /// The share of samples above `threshold_ns`, %, to one decimal; None without samples.
    fn far_share(&self, threshold_ns: f64) -> Option<f64> {
        let n = self.samples_ns.len();
        (n > 0).then(|| {
            let far = self
                .samples_ns
                .iter()
                .filter(|&&s| s > threshold_ns)
                .count();
            (far as f64 * 1000.0 / n as f64).round() / 10.0
        })
    }
}

/// Where "far" starts for a run whose windows sampled `samples` (every sample of every
/// window): three times the 5th percentile, i.e. three times the transfer time of the two
/// CPUs at their closest, robust against a stray fast sample. The placements seen so far are
/// about 5x apart (about 30 and 160 ns, docs/bench.md). A run that never saw the CPUs close
/// counts everything as near: "far" is relative to the closest this run saw. None without
/// samples.
pub fn far_threshold(samples: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = samples.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(3.0 * v[v.len() / 20])
}

/// How far apart (in percentage points of their far shares) two windows may be and still
/// count as alike; also the far share above which [`Gate`] measures a window again.
pub const ALIKE_POINTS: f64 = 25.0;

/// Whether two windows saw the CPUs close and far for about the same share of the time
/// (within [`ALIKE_POINTS`]), so their rates compare the same machine.
pub fn alike(a: &Placement, b: &Placement) -> bool {
    match (a.far_percent, b.far_percent) {
        (Some(x), Some(y)) => (x - y).abs() <= ALIKE_POINTS,
        _ => true,
    }
}

/// Samples between `cpus` every 5 ms for 300 ms with nothing else running: where the run's
/// "near" is, when the windows themselves never see it.
pub fn calibrate(cpus: (usize, usize)) -> std::io::Result<Placement> {
    let s = Sampler::start(Probe::between(cpus, Duration::from_millis(5)))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(s.finish())
}

/// Decides whether a window the host ran with the two CPUs far apart is measured again
/// (`vdpa-emu bench datapath --placement-retries`), so that ours and the anchor's windows are
/// measured on the same placement of the machine instead of marked as not alike afterwards.
#[derive(Debug)]
pub struct Gate {
    /// Every sample so far (the calibration's, then each window's): the threshold's basis.
    samples: Vec<f64>,
    retries: usize,
    /// Windows measured again.
    pub retried: usize,
}

impl Gate {
    /// A gate that measures a window up to `retries` more times.
    pub fn new(calibration: &Placement, retries: usize) -> Gate {
        Gate {
            samples: calibration.samples_ns.clone(),
            retries,
            retried: 0,
        }
    }

    /// Whether the window just measured (attempt `attempt`, from 1), which saw `p`, is
    /// measured again: more than [`ALIKE_POINTS`] percent of its samples were far by the
    /// threshold of everything sampled so far, and it has attempts left.
    pub fn again(&mut self, p: Option<&Placement>, attempt: usize) -> bool {
        let Some(p) = p else {
            return false;
        };
        self.samples.extend_from_slice(&p.samples_ns);
        let Some(threshold) = far_threshold(self.samples.iter().copied()) else {
            return false;
        };
        let again =
            attempt <= self.retries && p.far_share(threshold).is_some_and(|f| f > ALIKE_POINTS);
        self.retried += usize::from(again);
        again
    }
}

/// Runs `measure` until `gate` keeps the window it measured, at most 1 + its retries times
/// (no gate: once); returns the last result and how many windows were measured. An error
/// ends it at once. `placement_of` finds a result's samples.
pub fn until_kept<T, E>(
    mut gate: Option<&mut Gate>,
    what: &str,
    mut measure: impl FnMut() -> Result<T, E>,
    placement_of: impl Fn(&T) -> Option<&Placement>,
) -> (Result<T, E>, usize) {
    let mut attempt = 1;
    loop {
        let r = measure();
        match &r {
            Ok(v)
                if gate
                    .as_deref_mut()
                    .is_some_and(|g| g.again(placement_of(v), attempt)) =>
            {
                tracing::info!(attempt, what, "CPUs far apart: measured again");
                attempt += 1;
            }
            _ => return (r, attempt),
        }
    }
}

/// Samples in the background until [`Sampler::finish`].
pub struct Sampler {
    shared: Arc<Shared>,
    sampler: Option<JoinHandle<(Vec<f64>, usize)>>,
}

impl Sampler {
    /// Starts the sampling thread and its partner.
    pub fn start(p: Probe) -> std::io::Result<Sampler> {
        let shared = Arc::new(Shared {
            line: Line(AtomicU64::new(0)),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let partner = std::thread::Builder::new()
            .name("c2c-partner".into())
            .spawn(move || partner(&s, p.cpus.1))?;
        let s = shared.clone();
        let sampler = std::thread::Builder::new()
            .name("c2c-sampler".into())
            .spawn(move || sample_loop(&s, p, partner))?;
        Ok(Sampler {
            shared,
            sampler: Some(sampler),
        })
    }

    /// Stops sampling; what was measured.
    pub fn finish(mut self) -> Placement {
        self.stop()
    }

    fn stop(&mut self) -> Placement {
        self.shared.stop.store(true, Ordering::SeqCst);
        match self.sampler.take().map(JoinHandle::join) {
            Some(Ok((samples, unanswered))) => Placement::new(samples, unanswered),
            _ => Placement::default(),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if self.sampler.is_some() {
            self.stop();
        }
    }
}

fn sample_loop(s: &Shared, p: Probe, partner: JoinHandle<()>) -> (Vec<f64>, usize) {
    let pinned = super::serve_child::pin_current(p.cpus.0).is_ok();
    let mut samples = Vec::new();
    let mut unanswered = 0;
    let mut in_a_row = 0;
    // A partner that does not answer three times running is gone or never scheduled: each try
    // spins the device's CPU for SAMPLE_LIMIT, so the window stops sampling instead.
    while pinned && in_a_row < GIVE_UP && !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(p.period);
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        match one_sample(s, p.round_trips, &partner) {
            Some(ns) => {
                samples.push((ns * 10.0).round() / 10.0);
                in_a_row = 0;
            }
            None => {
                unanswered += 1;
                in_a_row += 1;
            }
        }
    }
    s.stop.store(true, Ordering::SeqCst);
    partner.thread().unpark();
    let _ = partner.join();
    (samples, unanswered)
}

/// Round trips timed together; a sample is the median of its chunks, so a preemption of
/// either thread in the middle of a sample moves one chunk, not the sample.
const CHUNK: u32 = 50;

/// One ping-pong of `n` round trips (rounded up to whole chunks of [`CHUNK`]) after an
/// untimed first exchange (the partner's wake-up is not a cache-line transfer): the sampler
/// stores odd values, the partner the even ones that follow. Returns the one-way time in ns
/// (the median chunk's mean), or None when abandoned.
fn one_sample(s: &Shared, n: u32, partner: &JoinHandle<()>) -> Option<f64> {
    let line = &s.line.0;
    let start = Instant::now();
    let mut spins = 0u32;
    // Waits for the partner's answer `v`; false when the sample is abandoned.
    let mut wait = |v: u64| {
        while line.load(Ordering::Acquire) != v {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) && start.elapsed() > SAMPLE_LIMIT {
                // The partner sees ABANDON and parks again; it never writes after it.
                line.store(ABANDON, Ordering::Release);
                return false;
            }
            std::hint::spin_loop();
        }
        true
    };
    line.store(1, Ordering::Release);
    partner.thread().unpark();
    if !wait(2) {
        return None;
    }
    let mut next = 3u64;
    let mut chunks = Vec::with_capacity(n.div_ceil(CHUNK) as usize);
    for _ in 0..n.div_ceil(CHUNK) {
        let t0 = Instant::now();
        for _ in 0..CHUNK {
            line.store(next, Ordering::Release);
            if !wait(next + 1) {
                return None;
            }
            next += 2;
        }
        chunks.push(t0.elapsed().as_nanos() as f64 / (2.0 * f64::from(CHUNK)));
    }
    line.store(0, Ordering::Release);
    super::median(&chunks)
}

fn partner(s: &Shared, cpu: usize) {
    if super::serve_child::pin_current(cpu).is_err() {
        return;
    }
    let line = &s.line.0;
    loop {
        std::thread::park();
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        if line.load(Ordering::Acquire) != 1 {
            continue; // a spurious wake-up, or a sample already abandoned
        }
        let mut want = 1u64;
        loop {
            let v = line.load(Ordering::Acquire);
            if v == ABANDON || s.stop.load(Ordering::Relaxed) {
                break;
            }
            if v == want {
                if line
                    .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    break; // abandoned between the load and the store
                }
                want = v + 2;
                continue;
            }
            if v == 0 {
                break; // the sample is complete
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_share_is_counted_against_three_times_the_closest_placement() {
        // One stray fast sample (16 ns) among 40 does not set the threshold; 20 near samples
        // around 30 ns and 20 far around 160 ns split at 3 x 30.
        let mut run: Vec<f64> = (0..20).map(|i| 30.0 + f64::from(i % 3)).collect();
        run.extend((0..19).map(|i| 160.0 + f64::from(i % 5)));
        run.push(16.0);
        assert_eq!(far_threshold(run.iter().copied()), Some(90.0));
        assert_eq!(far_threshold(std::iter::empty()), None);

        let mut p = Placement::new(vec![28.0, 30.0, 160.0, 27.0, 170.0], 0);
        assert_eq!(p.median_ns, Some(30.0));
        p.classify(90.0);
        assert_eq!(p.far_percent, Some(40.0));
        let mut near = Placement::new(vec![28.0, 29.0], 0);
        near.classify(90.0);
        assert_eq!(near.far_percent, Some(0.0));
        assert!(!alike(&p, &near), "40 points apart");
        let mut mid = Placement::new(vec![28.0, 29.0, 150.0, 30.0, 31.0], 0);
        mid.classify(90.0);
        assert!(alike(&p, &mid), "20 points apart");
        let mut empty = Placement::default();
        empty.classify(90.0);
        assert_eq!(empty.far_percent, None);
        assert!(alike(&empty, &p), "nothing measured: no claim");
    }

    #[test]
    fn the_gate_measures_a_far_window_again_while_it_has_attempts() {
        let mut g = Gate::new(&Placement::new(vec![30.0; 40], 0), 2);
        let near = Placement::new(vec![31.0; 10], 0);
        let far = Placement::new(vec![160.0; 10], 0);
        let mixed = Placement::new([vec![30.0; 8], vec![160.0; 2]].concat(), 0);
        assert!(!g.again(Some(&near), 1));
        assert!(!g.again(Some(&mixed), 1), "20% far: alike enough");
        assert!(g.again(Some(&far), 1));
        assert!(g.again(Some(&far), 2));
        assert!(!g.again(Some(&far), 3), "out of attempts: kept as measured");
        assert!(!g.again(None, 1), "no probe: nothing to decide on");
        assert_eq!(g.retried, 2);
        // Without retries it never asks.
        let mut off = Gate::new(&Placement::new(vec![30.0; 40], 0), 0);
        assert!(!off.again(Some(&far), 1));
        assert_eq!(off.retried, 0);
    }

    #[test]
    fn until_kept_measures_again_while_the_gate_asks() {
        let far = Placement::new(vec![160.0; 10], 0);
        let near = Placement::new(vec![31.0; 10], 0);
        let mut g = Gate::new(&Placement::new(vec![30.0; 40], 0), 2);
        // Far, far, near: kept on the third.
        let mut seq = vec![near.clone(), far.clone(), far.clone()];
        let (r, n) = until_kept(
            Some(&mut g),
            "t",
            || Ok::<_, ()>(seq.pop().unwrap()),
            |p| Some(p),
        );
        assert_eq!((r, n), (Ok(near.clone()), 3));
        // Always far: the last of three attempts is kept.
        let (r, n) = until_kept(Some(&mut g), "t", || Ok::<_, ()>(far.clone()), |p| Some(p));
        assert_eq!((r, n), (Ok(far.clone()), 3));
        // An error ends it; no gate measures once.
        let (r, n) = until_kept(
            Some(&mut g),
            "t",
            || Err::<Placement, _>("down"),
            |p| Some(p),
        );
        assert_eq!((r, n), (Err("down"), 1));
        let (r, n) = until_kept(None, "t", || Ok::<_, ()>(far.clone()), |p| Some(p));
        assert_eq!((r, n), (Ok(far), 1));
    }

    #[test]
    fn a_window_stops_sampling_a_partner_that_never_answers() {
        let cpus = super::super::serve_child::allowed_cpus().unwrap();
        // The partner cannot pin itself to a CPU that does not exist, so it never runs a
        // sample: the window gives up after GIVE_UP abandoned ones instead of spinning on.
        let s = Sampler::start(Probe {
            cpus: (cpus[0], 1000),
            period: Duration::from_millis(1),
            round_trips: 10,
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let p = s.finish();
        assert_eq!((p.samples_ns.len(), p.unanswered), (0, GIVE_UP), "{p:?}");
    }

    #[test]
    fn samples_between_two_cpus_of_this_machine() {
        let cpus = super::super::serve_child::allowed_cpus().unwrap();
        assert!(
            cpus.len() >= 2,
            "bench --pin and this test need two CPUs: {cpus:?}"
        );
        let (a, b) = (cpus[0], *cpus.last().unwrap());
        let s = Sampler::start(Probe {
            cpus: (a, b),
            period: Duration::from_millis(5),
            round_trips: 200,
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let p = s.finish();
        assert!(
            p.samples_ns.len() + p.unanswered >= 10,
            "about 30 samples in 200 ms: {p:?}"
        );
        assert!(!p.samples_ns.is_empty(), "{p:?}");
        // A cache-line transfer between two cores takes more than a nanosecond and far less
        // than 50 us.
        for &ns in &p.samples_ns {
            assert!(ns > 1.0 && ns < 50_000.0, "{ns} ns: {p:?}");
        }
    }
}
