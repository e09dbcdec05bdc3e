//! [`DoorbellEngine`]: the thread that notices kicks in a [`NotifyArea`], as a NIC's doorbell
//! logic notices a posted write, and hands each one to the device.
//!
//! It runs outside any socket handling: a pass reads every slot with plain loads
//! ([`NotifyArea::pending`]) and, if any holds a kick, calls the handler, which takes the kicks
//! and services their queues (for a served device `Device::take_shared_doorbells`: each kick
//! is consumed under the device lock and rung exactly as a trapped doorbell, so the rules for
//! disabled, stopping or paused queues are the same; a transmit queue's budgets then run with
//! the lock free, and kicks that come meanwhile are taken between them).
//! Between passes that find nothing it waits as [`PollPolicy`] says. Counters, not logs:
//! [`DoorbellEngine::stats`].
//!
//! A panic in the engine's loop or in the handler does not end the thread: without it, kicks
//! stored into shared memory would never be noticed again and every queue would stall in
//! silence. The engine counts it, reports it (`on_panic`: a served device enters
//! DEVICE_NEEDS_RESET with an `internal_error` fault, as for a panic in its datapath) and
//! polls on after a pause ([`PANIC_PAUSE`]), so a kick left in its slot is taken then.

use super::area::NotifyArea;
use super::poll::{Backoff, PollPolicy, Wait, DEEP_SLEEP};
use super::sched::EngineSched;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Kicks consumed (each one serviced its queue).
    pub kicks: u64,
    /// Passes over the slots.
    pub passes: u64,
    /// Sleeps between passes.
    pub sleeps: u64,
    /// Yields between passes (busy phase).
    pub yields: u64,
    /// Pause loops between passes (spin phase).
    pub spins: u64,
    /// Passes that found new device activity (and restarted the short sleeps).
    pub activity: u64,
    /// Wall time spent handling kicks (taking them and servicing their queues, waiting for
    /// the device lock included), as opposed to polling, spinning or sleeping: how much of
    /// the engine's time the queues needed. Wall time, so a handler preempted by the host or
    /// the scheduler counts that time too (it can exceed the thread's CPU time).
    pub busy: Duration,
    /// Panics caught in the engine's loop or its handler (each reported to `on_panic`; the
    /// engine went on polling).
    pub panics: u64,
    /// CPU time the engine thread has used, if the platform reports it.
    pub cpu: Option<Duration>,
    /// The scheduling the engine thread got (super::sched).
    pub sched: EngineSched,
}

#[derive(Debug, Default)]
struct Counters {
    stop: AtomicBool,
    kicks: AtomicU64,
    passes: AtomicU64,
    sleeps: AtomicU64,
    yields: AtomicU64,
    spins: AtomicU64,
    activity: AtomicU64,
    busy_ns: AtomicU64,
    panics: AtomicU64,
}

/// CPU pauses between two passes of the spin phase (a pass is a few loads; a pause is tens of
/// cycles, so a pass every few hundred nanoseconds).
const SPIN_PAUSES: u32 = 16;

/// How long the engine waits after a panic before it polls again: a handler that panics on
/// every kick then costs a report every 10 ms, not a core.
pub const PANIC_PAUSE: Duration = Duration::from_millis(10);

/// The running engine; dropping it stops and joins the thread.
pub struct DoorbellEngine {
    area: Arc<NotifyArea>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
    cpu_clock: Option<libc::clockid_t>,
    sched: EngineSched,
}

impl std::fmt::Debug for DoorbellEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorbellEngine")
            .field("area", &self.area)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Timer slack of the engine thread: how late the kernel may end its sleeps (the default of
/// 50 us would turn the 20 us first sleep into ~70 us).
const TIMER_SLACK_NS: libc::c_ulong = 5_000;

impl DoorbellEngine {
    /// Starts polling `area`; when a pass sees a kick, `take_kicks()` runs on the engine
    /// thread: it consumes the kicks ([`NotifyArea::take`]), services their queues (each after
    /// its kick was consumed: see the slot protocol in [`super::area`]) and returns how many it
    /// took. A panic there or in the engine's own loop is caught: `on_panic` gets its message,
    /// and the engine polls on after [`PANIC_PAUSE`] (the module docs).
    pub fn start<F, P>(
        area: Arc<NotifyArea>,
        policy: PollPolicy,
        mut take_kicks: F,
        on_panic: P,
    ) -> std::io::Result<Self>
    where
        F: FnMut() -> u32 + Send + 'static,
        P: Fn(String) + Send + 'static,
    {
        policy
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let counters = Arc::new(Counters::default());
        let (a, c) = (area.clone(), counters.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("doorbells".into())
            .spawn(move || {
                // SAFETY: prctl(PR_SET_TIMERSLACK) takes an unsigned long and changes only
                // the calling thread's timer slack; its failure leaves the default slack.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
                let _ = tx.send(super::sched::apply(policy.sched));
                run_contained(&a, &c, policy, &mut take_kicks, &on_panic)
            })?;
        let sched = rx.recv().unwrap_or_default();
        let cpu_clock = thread_cpu_clock(&thread);
        tracing::info!(?policy, area = ?area, sched = sched.name(), "doorbell engine started");
        Ok(DoorbellEngine {
            area,
            counters,
            thread: Some(thread),
            cpu_clock,
            sched,
        })
    }

    /// The area polled.
    pub fn area(&self) -> &Arc<NotifyArea> {
        &self.area
    }

    /// Counter snapshot (and the thread's CPU time so far).
    pub fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            kicks: c.kicks.load(Ordering::Relaxed),
            passes: c.passes.load(Ordering::Relaxed),
            sleeps: c.sleeps.load(Ordering::Relaxed),
            yields: c.yields.load(Ordering::Relaxed),
            spins: c.spins.load(Ordering::Relaxed),
            activity: c.activity.load(Ordering::Relaxed),
            busy: Duration::from_nanos(c.busy_ns.load(Ordering::Relaxed)),
            panics: c.panics.load(Ordering::Relaxed),
            cpu: self.cpu_clock.and_then(read_clock),
            sched: self.sched,
        }
    }
}

impl Drop for DoorbellEngine {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// [`run`] until stopped, again after each panic (the module docs).
///
/// `AssertUnwindSafe`: the loop keeps nothing across a restart but the area and the counters,
/// which are atomics; the backoff starts over, and a deep sleep's flag is cleared by `run`.
/// What the handler left half done is the handler's to recover: a served device is failed by
/// `on_panic`, and the driver's reset rebuilds it.
fn run_contained(
    area: &NotifyArea,
    c: &Counters,
    policy: PollPolicy,
    take_kicks: &mut dyn FnMut() -> u32,
    on_panic: &dyn Fn(String),
) {
    loop {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(area, c, policy, &mut *take_kicks)
        }));
        let Err(payload) = res else { return };
        let message = crate::fault::panic_message(&*payload);
        c.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%message, "the doorbell engine panicked; it polls on");
        on_panic(message);
        if c.stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::park_timeout(PANIC_PAUSE);
    }
}

fn run(area: &NotifyArea, c: &Counters, policy: PollPolicy, take_kicks: &mut dyn FnMut() -> u32) {
    area.set_waiter(std::thread::current());
    area.set_deep(false);
    let mut backoff = Backoff::new(policy);
    let mut seen = area.activity();
    while !c.stop.load(Ordering::Acquire) {
        c.passes.fetch_add(1, Ordering::Relaxed);
        if area.pending() {
            let start = Instant::now();
            let taken = take_kicks();
            let now = Instant::now();
            c.kicks.fetch_add(u64::from(taken), Ordering::Relaxed);
            c.busy_ns.fetch_add(
                u64::try_from((now - start).as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            // Also when another holder of the device lock took them first: traffic is on.
            backoff.kicked(now);
            continue;
        }
        let now = area.activity();
        if now != seen {
            seen = now;
            c.activity.fetch_add(1, Ordering::Relaxed);
            backoff.event(Instant::now());
        }
        match backoff.idle(Instant::now()) {
            Wait::Spin => {
                c.spins.fetch_add(1, Ordering::Relaxed);
                for _ in 0..SPIN_PAUSES {
                    std::hint::spin_loop();
                }
            }
            Wait::Yield => {
                c.yields.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
            Wait::Sleep(d) => {
                c.sleeps.fetch_add(1, Ordering::Relaxed);
                let deep = d >= DEEP_SLEEP;
                if deep {
                    area.set_deep(true);
                    // Activity or a kick between the checks above and here: do not sleep.
                    if area.activity() != seen || area.pending() {
                        area.set_deep(false);
                        continue;
                    }
                }
                // Woken early by device activity (deep sleeps) or Drop's unpark.
                std::thread::park_timeout(d);
                if deep {
                    area.set_deep(false);
                }
            }
        }
    }
}

/// The CPU-time clock of `thread` (readable from any thread while it runs).
fn thread_cpu_clock(thread: &JoinHandle<()>) -> Option<libc::clockid_t> {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the pthread_t belongs to a thread that is alive until this handle is joined
    // (in Drop, after the last read of the clock); `clock` is a live local.
    let r = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
    (r == 0).then_some(clock)
}

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live local timespec; clock_gettime writes only it.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    (r == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doorbell::tests::wait_until;
    use bar_registers::{DeviceLayout, LayoutParams};
    use dma::SharedMemory;
    use std::sync::atomic::AtomicU32;

    /// What a device does with the kicks: consume each, then service its queue.
    fn take_each(a: &NotifyArea, mut service: impl FnMut(u16)) -> u32 {
        let mut n = 0;
        for q in 0..a.queues() {
            if a.take(q) {
                n += 1;
                service(q);
            }
        }
        n
    }

    fn area() -> Arc<NotifyArea> {
        let l = DeviceLayout::new(LayoutParams {
            queue_pairs: 2,
            ..Default::default()
        })
        .unwrap();
        Arc::new(NotifyArea::new(&l).unwrap())
    }

    #[test]
    fn kicks_reach_the_handler_and_stop_joins() {
        let a = area();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (s2, a2) = (seen.clone(), a.clone());
        let e = DoorbellEngine::start(
            a.clone(),
            PollPolicy::default(),
            move || take_each(&a2, |q| s2.lock().push(q)),
            |m| panic!("no panic expected: {m}"),
        )
        .unwrap();
        a.ring(4, 2).unwrap();
        wait_until("kick of queue 4", || seen.lock().as_slice() == [4]);
        a.ring(1, 2).unwrap();
        wait_until("kick of queue 1", || seen.lock().len() == 2);
        let st = e.stats();
        assert_eq!(st.kicks, 2);
        assert!(st.passes >= 2 && st.sleeps >= 1, "{st:?}");
        assert!(st.cpu.is_some(), "thread CPU clock");
        drop(e);
        // Stopped: a kick stays in its slot.
        a.ring(2, 2).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_ne!(a.slot(2), Some(super::super::area::IDLE));
    }

    /// The time the handler takes is the engine's busy time; polling and sleeping are not.
    #[test]
    fn busy_time_is_the_handlers_time() {
        let a = area();
        let a2 = a.clone();
        let e = DoorbellEngine::start(
            a.clone(),
            PollPolicy::default(),
            move || take_each(&a2, |_| std::thread::sleep(Duration::from_millis(20))),
            |m| panic!("no panic expected: {m}"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(e.stats().busy, Duration::ZERO, "idle: nothing handled");
        for _ in 0..3 {
            a.ring(2, 2).unwrap();
            wait_until("kick taken", || a.slot(2) == Some(super::super::area::IDLE));
        }
        wait_until("three kicks handled", || e.stats().kicks == 3);
        wait_until("the last handler returned", || {
            e.stats().busy >= Duration::from_millis(60)
        });
        let st = e.stats();
        assert!(
            st.busy < Duration::from_secs(2),
            "busy counts the handlers only: {st:?}"
        );
    }

    /// An engine asleep for up to a second wakes at once on device activity, and then meets
    /// a kick with short sleeps.
    #[test]
    fn device_activity_ends_a_deep_sleep() {
        let a = area();
        let a2 = a.clone();
        let sec = Duration::from_secs(1);
        let policy = PollPolicy {
            warm_sleep: sec,
            max_sleep: sec,
            ..Default::default()
        };
        let e = DoorbellEngine::start(
            a.clone(),
            policy,
            move || take_each(&a2, |_| ()),
            |m| panic!("no panic expected: {m}"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50)); // the engine is in its 1 s sleep
        let t0 = Instant::now();
        a.note_activity();
        wait_until("woken by activity", || e.stats().activity == 1);
        a.ring(2, 2).unwrap();
        wait_until("kick taken", || e.stats().kicks == 1);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "activity did not end the 1 s sleep: {:?}",
            t0.elapsed()
        );
    }

    /// Two threads, no lost kick: a producer publishes an index in a shared word (the avail
    /// ring's `idx`, stored with Release) and then kicks, always with the same value; the
    /// engine's handler reads the index (Acquire) after each consumed kick. Once the producer
    /// is done, the handler must have seen its last index: a kick lost by the engine (for
    /// example a slot cleared after servicing instead of before) leaves it short, and nothing
    /// would ever kick again.
    #[test]
    fn stress_two_threads_no_kick_is_lost() {
        const ROUNDS: u32 = 1000;
        const PER_ROUND: u32 = 100;
        let a = area();
        let ring = Arc::new(SharedMemory::new("idx", 4096).unwrap());
        let seen = Arc::new(AtomicU32::new(0));
        let (r2, s2, a2) = (ring.clone(), seen.clone(), a.clone());
        let e = DoorbellEngine::start(
            a.clone(),
            PollPolicy {
                busy: Duration::from_micros(50),
                ..Default::default()
            },
            move || {
                take_each(&a2, |q| {
                    assert_eq!(q, 3);
                    // The "service": everything published so far. It takes a while (as a
                    // real one does), which keeps kicks landing while it runs.
                    let idx = r2.read_u32(0).unwrap();
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(2) {
                        std::hint::spin_loop();
                    }
                    s2.fetch_max(idx, Ordering::SeqCst);
                })
            },
            |m| panic!("no panic expected: {m}"),
        )
        .unwrap();
        let mut idx = 0u32;
        for round in 0..ROUNDS {
            for i in 0..PER_ROUND {
                idx += 1;
                ring.store_release(0, &idx.to_le_bytes()).unwrap();
                a.ring(3, 2).unwrap();
                // Kicks paced like the service (0-3 us apart), so that they keep landing
                // while it runs; a burst faster than the engine wakes would all be seen at
                // once and test nothing.
                let t = Instant::now();
                let gap = Duration::from_nanos(u64::from((i * 7919 + round * 104_729) % 3000));
                while t.elapsed() < gap {
                    std::hint::spin_loop();
                }
            }
            // Like a driver that waits for completions now and then: the engine must have
            // caught up with every kick so far.
            wait_until(&format!("round {round}: index {idx}"), || {
                seen.load(Ordering::SeqCst) == idx
            });
            // Sometimes let the engine fall asleep so kicks also meet a sleeping engine.
            if round % 100 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        assert_eq!(seen.load(Ordering::SeqCst), ROUNDS * PER_ROUND);
        let st = e.stats();
        assert!(st.kicks >= u64::from(ROUNDS) && st.kicks <= u64::from(ROUNDS * PER_ROUND));
    }

    /// A handler that panics does not end the engine: the panic is counted and reported, and
    /// the engine polls on. A panic after the kick was consumed loses that kick's service (the
    /// report is how a device learns of it); one before leaves the kick in its slot, and the
    /// engine takes it once it polls again.
    #[test]
    fn a_panicking_handler_is_reported_and_the_engine_polls_on() {
        let a = area();
        let reports = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicU32::new(0));
        let (a2, s2, c2, r2) = (a.clone(), seen.clone(), calls.clone(), reports.clone());
        let e = DoorbellEngine::start(
            a.clone(),
            PollPolicy::default(),
            move || {
                let call = c2.fetch_add(1, Ordering::SeqCst);
                // First call: panics after taking queue 4's kick. Second: before taking any.
                match call {
                    0 => {
                        assert!(a2.take(4));
                        panic!("handler bug after the take");
                    }
                    1 => panic!("handler bug before the take"),
                    _ => take_each(&a2, |q| s2.lock().push(q)),
                }
            },
            move |m| r2.lock().push(m),
        )
        .unwrap();
        a.ring(4, 2).unwrap();
        wait_until("the first panic reported", || reports.lock().len() == 1);
        assert_eq!(reports.lock()[0], "handler bug after the take");
        assert!(
            seen.lock().is_empty(),
            "the kick was taken, its service lost"
        );
        a.ring(1, 2).unwrap();
        wait_until("queue 1 serviced after the second panic", || {
            seen.lock().as_slice() == [1]
        });
        assert_eq!(
            reports.lock().as_slice(),
            ["handler bug after the take", "handler bug before the take"]
        );
        let st = e.stats();
        assert_eq!(st.panics, 2, "{st:?}");
        assert_eq!(st.kicks, 1, "{st:?}");
        // And it goes on as before.
        a.ring(2, 2).unwrap();
        wait_until("queue 2 serviced", || seen.lock().as_slice() == [1, 2]);
        drop(e);
        // The two that panicked, then one per kick.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
