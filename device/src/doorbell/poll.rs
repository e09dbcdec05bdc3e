//! How the doorbell engine waits between passes that found no kick: adaptive polling.
//!
//! Hardware notices a doorbell write at once; a thread polling shared memory must choose
//! between latency and CPU. The engine never blocks the driver (a kick is a plain store), so
//! what a slow poll costs is latency: the time from the kick to the service. And every timed
//! sleep costs CPU: on the 2-core VMs this project runs on, one sleep-and-wake of a thread
//! costs 20-30 us of CPU (timer and scheduler work under virtualization; measured with
//! `vdpa-emu bench doorbells`, docs/doorbells.md), so a 1 ms period already costs 2-3 % of a
//! core. The policy spends wake-ups where a kick is likely:
//!
//! - an *event* is a kick, or device activity a kick answers: the datapath raised an
//!   interrupt (the driver refills RX, sends more TX or an ACK after it), or holds received
//!   frames it has no buffers for (it needs the refill's kick to go on). Frames merely moving
//!   do not count: a transfer would keep the engine at its shortest sleep throughout, which
//!   costs more CPU than the latency it saves;
//! - after a pass that found a kick the engine passes again at once (more kicks may have come
//!   while it serviced), then for [`PollPolicy::spin`] with only a CPU pause in between (no
//!   system call, the core is not given up: a driver that answers within microseconds, as one
//!   refilling a ring it waits on does, is met without a sleep, and a short spin costs less
//!   CPU than one sleep and wake-up), then for [`PollPolicy::busy`] passes with only a
//!   `sched_yield` in between (0 by default: yielding in a loop takes a core from the vCPU
//!   thread that makes the kicks);
//! - after an event it sleeps [`PollPolicy::min_sleep`], doubling each idle pass; the sleeps
//!   since the event add up to about twice the current one, so a kick waits about as long as
//!   the quiet time before it at most;
//! - the doubling stops at [`PollPolicy::warm_sleep`] while the last event is less than
//!   [`PollPolicy::warm_for`] old (traffic with pauses, pings), and at
//!   [`PollPolicy::max_sleep`] after that (an idle device: one wake-up per `max_sleep`);
//! - device activity also ends a sleep of [`DEEP_SLEEP`] or more at once (the device unparks
//!   the engine), so a kick that answers it is met by short sleeps.

use std::time::{Duration, Instant};

/// Sleeps at least this long are ended early by device activity.
pub const DEEP_SLEEP: Duration = Duration::from_micros(100);

/// The engine's waiting policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollPolicy {
    /// After a kick, keep passing with only a CPU pause in between for this long.
    pub spin: Duration,
    /// Then keep passing with only a yield in between for this long.
    pub busy: Duration,
    /// First sleep after an event.
    pub min_sleep: Duration,
    /// Longest sleep while the last event is recent.
    pub warm_sleep: Duration,
    /// How long after an event the device counts as warm.
    pub warm_for: Duration,
    /// Longest sleep on an idle device: bounds the first kick's wait and sets the idle cost.
    pub max_sleep: Duration,
    /// How the engine thread asks to be scheduled (super::sched).
    pub sched: super::sched::SchedRequest,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            spin: Duration::ZERO,
            busy: Duration::ZERO,
            min_sleep: Duration::from_micros(20),
            warm_sleep: Duration::from_micros(500),
            warm_for: Duration::from_millis(100),
            max_sleep: Duration::from_millis(10),
            sched: super::sched::SchedRequest::Normal,
        }
    }
}

/// A policy that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollPolicyError {
    #[error("doorbell poll: sleeps must be ordered 1 us <= min ({min:?}) <= warm ({warm:?}) <= idle ({max:?})")]
    Order {
        min: Duration,
        warm: Duration,
        max: Duration,
    },
    #[error("doorbell poll: sleeps above 1 s leave kicks waiting too long, got {0:?}")]
    MaxSleepTooLong(Duration),
    #[error("doorbell poll: spin, busy and warm-for must be at most 10 s, got {0:?}")]
    TooLong(Duration),
}

impl PollPolicy {
    /// Checks 1 us <= min_sleep <= warm_sleep <= max_sleep <= 1 s, busy and warm_for <= 10 s.
    pub fn validate(&self) -> Result<(), PollPolicyError> {
        let us = Duration::from_micros(1);
        if self.min_sleep < us
            || self.min_sleep > self.warm_sleep
            || self.warm_sleep > self.max_sleep
        {
            return Err(PollPolicyError::Order {
                min: self.min_sleep,
                warm: self.warm_sleep,
                max: self.max_sleep,
            });
        }
        if self.max_sleep > Duration::from_secs(1) {
            return Err(PollPolicyError::MaxSleepTooLong(self.max_sleep));
        }
        for d in [self.spin, self.busy, self.warm_for] {
            if d > Duration::from_secs(10) {
                return Err(PollPolicyError::TooLong(d));
            }
        }
        Ok(())
    }
}

/// What to do before the next pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A few CPU pauses (`spin_loop`), then pass again.
    Spin,
    /// `sched_yield`, then pass again.
    Yield,
    /// Sleep this long (or until woken), then pass again.
    Sleep(Duration),
}

/// The state of the policy between passes.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: PollPolicy,
    spin_until: Option<Instant>,
    busy_until: Option<Instant>,
    last_event: Option<Instant>,
    next: Duration,
}

impl Backoff {
    /// Starts idle.
    pub fn new(policy: PollPolicy) -> Self {
        Backoff {
            policy,
            spin_until: None,
            busy_until: None,
            last_event: None,
            next: policy.max_sleep,
        }
    }

    /// A pass found a kick at `now`.
    pub fn kicked(&mut self, now: Instant) {
        let spun = now + self.policy.spin;
        self.spin_until = Some(spun);
        self.busy_until = Some(spun + self.policy.busy);
        self.event(now);
    }

    /// The device was active at `now`: a kick is likely to follow.
    pub fn event(&mut self, now: Instant) {
        self.last_event = Some(now);
        self.next = self.policy.min_sleep;
    }

    /// A pass found nothing at `now`: how to wait.
    pub fn idle(&mut self, now: Instant) -> Wait {
        if self.spin_until.is_some_and(|t| now < t) {
            return Wait::Spin;
        }
        if self.busy_until.is_some_and(|t| now < t) {
            return Wait::Yield;
        }
        let warm = self
            .last_event
            .is_some_and(|t| now.saturating_duration_since(t) < self.policy.warm_for);
        let cap = if warm {
            self.policy.warm_sleep
        } else {
            self.policy.max_sleep
        };
        let d = self.next.min(cap);
        self.next = (d * 2).min(cap);
        Wait::Sleep(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn policy() -> PollPolicy {
        PollPolicy {
            busy: 30 * US,
            min_sleep: 20 * US,
            warm_sleep: 100 * US,
            warm_for: 1000 * US,
            max_sleep: 400 * US,
            ..PollPolicy::default()
        }
    }

    #[test]
    fn sleeps_double_to_the_warm_cap_then_to_the_idle_cap() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        assert_eq!(b.idle(t), Wait::Sleep(400 * US), "starts idle");
        b.event(t);
        let seq: Vec<Wait> = (0..5).map(|_| b.idle(t + 10 * US)).collect();
        assert_eq!(
            seq,
            [20, 40, 80, 100, 100].map(|n| Wait::Sleep(n * US)).to_vec()
        );
        // Warm for 1 ms after the event, then the idle cap.
        assert_eq!(b.idle(t + 999 * US), Wait::Sleep(100 * US));
        assert_eq!(b.idle(t + 1000 * US), Wait::Sleep(100 * US));
        assert_eq!(b.idle(t + 1100 * US), Wait::Sleep(200 * US));
        assert_eq!(b.idle(t + 1300 * US), Wait::Sleep(400 * US));
        assert_eq!(b.idle(t + 1700 * US), Wait::Sleep(400 * US));
    }

    #[test]
    fn a_kick_yields_first_and_starts_over() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        b.kicked(t);
        assert_eq!(b.idle(t + 10 * US), Wait::Yield);
        assert_eq!(b.idle(t + 29 * US), Wait::Yield);
        assert_eq!(b.idle(t + 30 * US), Wait::Sleep(20 * US));
        assert_eq!(b.idle(t + 50 * US), Wait::Sleep(40 * US));
        // Device activity restarts the doubling, without a yield phase.
        b.event(t + 100 * US);
        assert_eq!(b.idle(t + 100 * US), Wait::Sleep(20 * US));
    }

    #[test]
    fn a_kick_spins_then_yields_then_sleeps() {
        let mut b = Backoff::new(PollPolicy {
            spin: 5 * US,
            ..policy()
        });
        let t = Instant::now();
        b.kicked(t);
        assert_eq!(b.idle(t), Wait::Spin);
        assert_eq!(b.idle(t + 4 * US), Wait::Spin);
        assert_eq!(b.idle(t + 5 * US), Wait::Yield);
        assert_eq!(b.idle(t + 34 * US), Wait::Yield);
        assert_eq!(b.idle(t + 35 * US), Wait::Sleep(20 * US));
        // Device activity alone does not spin.
        b.event(t + 100 * US);
        assert_eq!(b.idle(t + 100 * US), Wait::Sleep(20 * US));
        // A new kick spins again.
        b.kicked(t + 200 * US);
        assert_eq!(b.idle(t + 201 * US), Wait::Spin);
    }

    #[test]
    fn no_busy_phase_by_default_and_policies_are_checked() {
        let mut b = Backoff::new(PollPolicy::default());
        let t = Instant::now();
        b.kicked(t);
        assert_eq!(b.idle(t), Wait::Sleep(20 * US));
        assert!(PollPolicy::default().validate().is_ok());
        let with = |min: u32, warm: u32, max: u32| PollPolicy {
            min_sleep: min * US,
            warm_sleep: warm * US,
            max_sleep: max * US,
            ..PollPolicy::default()
        };
        assert!(with(1, 1, 1).validate().is_ok());
        for (min, warm, max) in [(0, 1, 1), (20, 10, 100), (20, 200, 100)] {
            assert!(
                matches!(
                    with(min, warm, max).validate(),
                    Err(PollPolicyError::Order { .. })
                ),
                "{min} {warm} {max}"
            );
        }
        assert!(matches!(
            with(1, 2, 2_000_000).validate(),
            Err(PollPolicyError::MaxSleepTooLong(_))
        ));
        let long = PollPolicy {
            warm_for: Duration::from_secs(11),
            ..PollPolicy::default()
        };
        assert!(matches!(long.validate(), Err(PollPolicyError::TooLong(_))));
    }
}
