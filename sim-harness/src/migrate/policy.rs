//! When pre-copy stops: the decision a VMM takes before each pre-copy round.
//!
//! QEMU (migration/migration.c) measures the bandwidth of the last iteration in
//! `migration_update_counters` and sets `threshold_size = bandwidth * downtime_limit` (bytes
//! that can be sent within the downtime limit); `migration_iteration_run` then completes the
//! migration (stop-and-copy) when `!pending_size || pending_size < threshold_size`, where
//! `pending_size` is what is still dirty after the last bitmap sync, and runs another iteration
//! otherwise. The default limit is `DEFAULT_MIGRATE_SET_DOWNTIME`, 300 ms (migration/options.c,
//! the `downtime-limit` parameter). [`fits`] is that test; [`decide`] adds the round limit
//! (QEMU has none: it throttles the guest instead; here it is the safety net that forces
//! stop-and-copy, reported as "did not converge") and the older fixed page threshold, kept as
//! an explicit option.

use dma::PAGE_SIZE;
use std::time::Duration;

/// QEMU's default `downtime-limit` (migration/options.c `DEFAULT_MIGRATE_SET_DOWNTIME`).
pub const DEFAULT_MAX_DOWNTIME: Duration = Duration::from_millis(300);

/// The largest downtime limit QEMU accepts (migration/options.c `MAX_MIGRATE_DOWNTIME`, 2000 s).
pub const MAX_DOWNTIME_MS: u64 = 2_000_000;

/// A copy phase measures a rate of its own only from this many pages read (512 KiB) on;
/// smaller ones use the rate over every page copied so far (too few pages time a cache, not a
/// copy).
pub const MIN_RATE_SAMPLE_PAGES: u64 = 128;

/// What ends pre-copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopPolicy {
    /// Stop when the dirty pages left, at the measured copy rate, would be copied within this
    /// downtime (QEMU's `downtime-limit`).
    MaxDowntime(Duration),
    /// Stop when a pre-copy round copied fewer pages than this (after at least one round): the
    /// older fixed threshold, only when asked for explicitly.
    DirtyThreshold(u64),
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy::MaxDowntime(DEFAULT_MAX_DOWNTIME)
    }
}

impl std::fmt::Display for StopPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopPolicy::MaxDowntime(d) => write!(f, "max downtime {} ms", fmt_ms(*d)),
            StopPolicy::DirtyThreshold(n) => {
                write!(f, "dirty threshold {n} pages (a round copying fewer stops)")
            }
        }
    }
}

/// Why pre-copy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The pending pages fit the downtime limit at the measured rate.
    DowntimeFits,
    /// The last round copied fewer pages than the explicit threshold.
    UnderThreshold,
    /// The round limit forced stop-and-copy: pre-copy did not converge.
    RoundLimit,
}

impl StopReason {
    /// Whether pre-copy converged (anything but the round limit).
    pub fn converged(self) -> bool {
        self != StopReason::RoundLimit
    }
}

/// What a decision point knows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct State {
    /// Pre-copy rounds done (0 right after the bulk copy).
    pub rounds: u32,
    /// Dirty pages waiting to be copied.
    pub pending_pages: u64,
    /// Pages the last round copied (None before the first round).
    pub last_round_pages: Option<u64>,
    /// Measured copy rate in bytes per second (None: nothing measured yet).
    pub rate: Option<f64>,
}

/// Bytes of `pages` pages.
pub fn bytes(pages: u64) -> u64 {
    pages.saturating_mul(PAGE_SIZE)
}

/// A usable rate: finite and positive.
fn usable(rate: Option<f64>) -> Option<f64> {
    rate.filter(|r| r.is_finite() && *r > 0.0)
}

/// Time to copy `pending_bytes` at `rate` bytes per second (None without a usable rate).
pub fn estimate(pending_bytes: u64, rate: Option<f64>) -> Option<Duration> {
    if pending_bytes == 0 {
        return Some(Duration::ZERO);
    }
    let r = usable(rate)?;
    Some(Duration::try_from_secs_f64(pending_bytes as f64 / r).unwrap_or(Duration::MAX))
}

/// Bytes that can be copied within `limit` at `rate` (QEMU's `threshold_size`).
pub fn threshold_bytes(rate: Option<f64>, limit: Duration) -> Option<u64> {
    usable(rate).map(|r| (r * limit.as_secs_f64()).min(u64::MAX as f64) as u64)
}

/// QEMU's completion test: nothing pending, or less pending than `rate * limit`. Without a
/// measured rate only an empty dirty set fits.
pub fn fits(pending_bytes: u64, rate: Option<f64>, limit: Duration) -> bool {
    if pending_bytes == 0 {
        return true;
    }
    match usable(rate) {
        Some(r) => (pending_bytes as f64) < r * limit.as_secs_f64(),
        None => false,
    }
}

/// Stop (and why) or run another round (None).
pub fn decide(policy: StopPolicy, max_rounds: u32, s: &State) -> Option<StopReason> {
    let stop = match policy {
        StopPolicy::MaxDowntime(limit) => {
            fits(bytes(s.pending_pages), s.rate, limit).then_some(StopReason::DowntimeFits)
        }
        StopPolicy::DirtyThreshold(t) => s
            .last_round_pages
            .is_some_and(|n| n < t)
            .then_some(StopReason::UnderThreshold),
    };
    stop.or((s.rounds >= max_rounds).then_some(StopReason::RoundLimit))
}

/// Measured copy rates: per phase, and over every phase so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateMeter {
    bytes: u64,
    busy: Duration,
    last: Option<f64>,
}

impl RateMeter {
    /// Adds a copy phase that read (and sent, with data or as zero pages) `pages` pages in
    /// `busy`, the guest's turns excluded. Pages are what stop-and-copy spends its time on
    /// (reading, checking for zeros, writing), so the rate counts every page read, zero or
    /// not; the holes the bulk copy skips cost nothing and are not counted.
    pub fn add(&mut self, pages: u64, busy: Duration) {
        self.bytes += bytes(pages);
        self.busy += busy;
        self.last = (pages >= MIN_RATE_SAMPLE_PAGES && !busy.is_zero())
            .then(|| bytes(pages) as f64 / busy.as_secs_f64());
    }

    /// The rate a decision uses: the last phase's, or the overall one when that phase was too
    /// small to time.
    pub fn rate(&self) -> Option<f64> {
        self.last.or_else(|| {
            (self.bytes > 0 && !self.busy.is_zero())
                .then(|| self.bytes as f64 / self.busy.as_secs_f64())
        })
    }
}

/// `d` in milliseconds, with the precision that matters at its size.
pub fn fmt_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 || ms == ms.trunc() {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}

/// A rate in bytes per second as MB/s or GB/s.
pub fn fmt_rate(r: Option<f64>) -> String {
    match usable(r) {
        Some(r) if r >= 1e9 => format!("{:.2} GB/s", r / 1e9),
        Some(r) => format!("{:.1} MB/s", r / 1e6),
        None => "no rate measured".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const GB_S: f64 = 1e9;

    fn state(rounds: u32, pending_pages: u64, last: Option<u64>, rate: Option<f64>) -> State {
        State {
            rounds,
            pending_pages,
            last_round_pages: last,
            rate,
        }
    }

    #[test]
    fn fits_is_qemus_pending_under_bandwidth_times_limit() {
        // 1 GB/s for 300 ms: 300 MB fit, strictly below.
        assert!(fits(299_999_999, Some(GB_S), 300 * MS));
        assert!(!fits(300_000_000, Some(GB_S), 300 * MS));
        // Nothing pending always fits, even with a zero limit or no rate.
        assert!(fits(0, None, Duration::ZERO));
        assert!(fits(0, Some(GB_S), Duration::ZERO));
        // A zero limit lets nothing else through.
        assert!(!fits(1, Some(1e12), Duration::ZERO));
        // No usable rate: only an empty set fits.
        for r in [
            None,
            Some(0.0),
            Some(-1.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ] {
            assert!(!fits(4096, r, 300 * MS), "{r:?}");
        }
    }

    #[test]
    fn estimate_and_threshold() {
        // The example: ~1,065 pages (4.4 MB) at 2 GB/s take about 2.2 ms.
        let e = estimate(bytes(1065), Some(2.0 * GB_S)).unwrap();
        assert!(
            (e.as_secs_f64() - 1065.0 * 4096.0 / 2e9).abs() < 1e-9,
            "{e:?}"
        );
        assert_eq!(estimate(0, None), Some(Duration::ZERO));
        assert_eq!(estimate(1, None), None);
        assert_eq!(estimate(u64::MAX, Some(1e-300)), Some(Duration::MAX));
        assert_eq!(threshold_bytes(Some(GB_S), 300 * MS), Some(300_000_000));
        assert_eq!(threshold_bytes(None, 300 * MS), None);
    }

    #[test]
    fn downtime_policy_stops_when_the_estimate_fits() {
        let p = StopPolicy::MaxDowntime(300 * MS);
        // After the bulk copy: 1,315 pages at 2 GB/s is ~2.7 ms: stop before any round.
        assert_eq!(
            decide(p, 30, &state(0, 1315, None, Some(2.0 * GB_S))),
            Some(StopReason::DowntimeFits)
        );
        // 1 GiB dirty at 1 GB/s (1.07 s): another round.
        assert_eq!(
            decide(p, 30, &state(3, 262_144, Some(262_144), Some(GB_S))),
            None
        );
        // ... until the round limit forces the stop.
        assert_eq!(
            decide(p, 30, &state(30, 262_144, Some(262_144), Some(GB_S))),
            Some(StopReason::RoundLimit)
        );
        // A fitting estimate at the limit is still a converged stop.
        assert_eq!(
            decide(p, 30, &state(30, 10, Some(10), Some(GB_S))),
            Some(StopReason::DowntimeFits)
        );
        // No rate measured (nothing copied yet): continue.
        assert_eq!(decide(p, 30, &state(0, 10, None, None)), None);
        // A zero limit converges only on an empty dirty set.
        let zero = StopPolicy::MaxDowntime(Duration::ZERO);
        assert_eq!(decide(zero, 2, &state(1, 1, Some(5), Some(GB_S))), None);
        assert_eq!(
            decide(zero, 2, &state(1, 0, Some(5), Some(GB_S))),
            Some(StopReason::DowntimeFits)
        );
        assert!(!StopReason::RoundLimit.converged());
        assert!(StopReason::DowntimeFits.converged());
    }

    #[test]
    fn threshold_policy_needs_a_round_under_it() {
        let p = StopPolicy::DirtyThreshold(64);
        // Never before the first round, whatever is pending.
        assert_eq!(decide(p, 8, &state(0, 0, None, Some(GB_S))), None);
        assert_eq!(decide(p, 8, &state(1, 500, Some(70), None)), None);
        assert_eq!(
            decide(p, 8, &state(2, 500, Some(63), None)),
            Some(StopReason::UnderThreshold)
        );
        assert_eq!(
            decide(p, 8, &state(8, 500, Some(64), None)),
            Some(StopReason::RoundLimit)
        );
        // Threshold 0: no round gets under it.
        assert_eq!(
            decide(
                StopPolicy::DirtyThreshold(0),
                2,
                &state(2, 0, Some(0), None)
            ),
            Some(StopReason::RoundLimit)
        );
    }

    #[test]
    fn rate_meter_uses_the_last_phase_or_everything() {
        let mut m = RateMeter::default();
        assert_eq!(m.rate(), None);
        m.add(0, Duration::from_millis(5));
        assert_eq!(m.rate(), None, "no page copied: no rate");
        // 1000 pages in 4.096 ms: 1 GB/s.
        m.add(1000, Duration::from_micros(4096));
        assert!((m.rate().unwrap() - 1e9).abs() < 1.0);
        // A phase of 2000 pages in 4.096 ms: its own rate, 2 GB/s.
        m.add(2000, Duration::from_micros(4096));
        assert!((m.rate().unwrap() - 2e9).abs() < 1.0);
        // A tiny phase (too few pages to time): the overall rate over all three phases.
        m.add(10, Duration::from_millis(1));
        let overall = bytes(3010) as f64 / (0.005 + 0.004096 * 2.0 + 0.001);
        assert!((m.rate().unwrap() - overall).abs() < 1.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_ms(300 * MS), "300");
        assert_eq!(fmt_ms(Duration::from_micros(2500)), "2.5");
        assert_eq!(fmt_ms(Duration::from_micros(250)), "0.250");
        assert_eq!(fmt_rate(Some(2.5e9)), "2.50 GB/s");
        assert_eq!(fmt_rate(Some(2.5e8)), "250.0 MB/s");
        assert_eq!(fmt_rate(None), "no rate measured");
        assert_eq!(
            StopPolicy::default().to_string(),
            "max downtime 300 ms",
            "QEMU's default"
        );
    }
}
