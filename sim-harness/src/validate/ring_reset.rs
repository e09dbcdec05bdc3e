//! The `ring-reset` group: with VIRTIO_F_RING_RESET negotiated one queue is reset alone and
//! re-enabled while the device runs (virtio 1.2 2.6.1; what Linux virtio_net does for
//! `ethtool -G`). With traffic on two queue pairs, TX and RX of pair 0 are reset while pair 1
//! goes on: queue_reset reads 0 once the reset is done, with queue_enable 0 (4.1.4.3.1) and the
//! queue's ring state at its default (2.6.1.1.1: "reset any state of a virtqueue to the default
//! state"); pair 1 loses nothing meanwhile; pair 0 is re-enabled with another queue_size and
//! fresh rings and traffic flows on it again from index 0, with no completion from before the
//! reset. On the split ring, and on the packed ring when it is offered.

use super::checks::{negotiated_all, started, Findings};
use super::report::Finding;
use super::traffic::Traffic;
use super::{Session, ValidateOptions};
use crate::driver::net::{rxq, txq};
use crate::driver::{DriverError, DriverOptions, NetDriver};
use bar_registers::lm;
use bar_registers::virtio::{bits, common, default_driver_features};

const G: &str = "ring-reset";
/// Frames per pair and burst.
const BURST: u64 = 32;

/// The group body.
pub(super) fn ring_reset(
    s: &Session,
    o: &ValidateOptions,
    f: &mut Findings,
) -> Result<(), DriverError> {
    // Runs only when the device offers VIRTIO_F_RING_RESET (checks::GROUP_FEATURES gates it).
    layout(s, o, f, false)?;
    let offered = super::checks::driver(s, DriverOptions::default())?.device_features_probe()?;
    if offered & (1 << bits::RING_PACKED) == 0 {
        f.push(Finding::not_run(
            G,
            "packed ring",
            "VIRTIO_F_RING_PACKED not offered",
        ));
        return Ok(());
    }
    layout(s, o, f, true)
}

/// The queue reset and re-enable on one ring layout.
fn layout(
    s: &Session,
    o: &ValidateOptions,
    f: &mut Findings,
    packed: bool,
) -> Result<(), DriverError> {
    let what = if packed { "packed" } else { "split" };
    let mut d = started(
        s,
        DriverOptions {
            queue_pairs: 2,
            features: default_driver_features() | 1 << bits::RING_RESET,
            lm_layout: o.lm_layout,
            ..DriverOptions::default()
        }
        .with_packed(packed),
    )?;
    if !negotiated_all(
        &mut d,
        f,
        G,
        1 << bits::RING_RESET,
        &format!("{what}: VIRTIO_F_RING_RESET negotiated"),
        "FEATURES_OK with VIRTIO_F_RING_RESET",
    )? {
        return Ok(());
    }
    let mut t = Traffic::new(0x5252 + u64::from(packed));
    t.burst(&mut d, &[0, 1], &[0, 1], BURST)?;
    f.push(Finding::check(
        G,
        &format!("{what}: traffic on pairs 0 and 1 before the reset"),
        true,
        t.stream_whole(0) && t.stream_whole(1),
        &format!("{BURST} frames per pair, each once and in order"),
        &format!("{}; {}", t.describe(0), t.describe(1)),
        "TX/RX queues 0-3",
    ));
    // The default ring state a reset queue must come back with.
    let fresh = if packed { (0x8000, 0x8000) } else { (0, 0) };
    for q in [txq(0), rxq(0)] {
        let ones = d.reset_queue(q)?;
        let enable = d.common_read16(common::QUEUE_ENABLE)?;
        let reset = d.common_read16(common::QUEUE_RESET)?;
        f.push(Finding::check(
            G,
            &format!("{what}: queue {q} reset: queue_reset and queue_enable read 0"),
            true,
            enable == 0 && reset == 0,
            "queue_reset 0 once the reset is done, queue_enable 0 (virtio 1.2 4.1.4.3.1)",
            &format!(
                "queue_reset read 1 {ones} times, then 0; now queue_reset {reset}, queue_enable {enable}"
            ),
            &format!("common_cfg queue_reset ({:#x}), queue_select {q}", common::QUEUE_RESET),
        ));
        match d.ring_state(q) {
            Ok(state) => f.push(Finding::check(
                G,
                &format!("{what}: queue {q} reset: ring state back to its default"),
                true,
                state == fresh,
                &format!(
                    "last_avail {:#x} last_used {:#x} (virtio 1.2 2.6.1.1.1)",
                    fresh.0, fresh.1
                ),
                &format!("last_avail {:#x} last_used {:#x}", state.0, state.1),
                &super::locate::lm(lm::ring_state_offset(o.lm_layout, q)),
            )),
            Err(e) => f.push(Finding::not_run(
                G,
                &format!("{what}: queue {q} ring state after the reset"),
                &format!("LM ring state unreadable: {e}"),
            )),
        }
    }
    // Pair 1 goes on while pair 0 is reset.
    t.burst(&mut d, &[1], &[1], BURST)?;
    f.push(Finding::check(
        G,
        &format!("{what}: pair 1 keeps flowing while pair 0 is reset"),
        true,
        t.stream_whole(1),
        "every frame of pair 1 once and in order",
        &t.describe(1),
        "TX/RX queues 2-3",
    ));
    // Re-enable pair 0 with another size and new rings, as ethtool -G does.
    let size = if packed { 200 } else { 128 };
    for q in [rxq(0), txq(0)] {
        d.enable_queue_after_reset(q, size)?;
        let got = d.common_read16(common::QUEUE_SIZE)?;
        f.push(Finding::check(
            G,
            &format!("{what}: queue {q} re-enabled with queue_size {size}"),
            true,
            got == size && d.common_read16(common::QUEUE_ENABLE)? == 1,
            &format!("queue_size {size}, queue_enable 1 (virtio 1.2 2.6.1.2)"),
            &format!("queue_size {got}"),
            &format!("common_cfg queue_size, queue_select {q}"),
        ));
    }
    let sent0 = t.sent.get(&0).copied().unwrap_or(0);
    t.burst(&mut d, &[0, 1], &[0, 1], BURST)?;
    f.push(Finding::check(
        G,
        &format!("{what}: traffic flows again on the re-enabled pair"),
        true,
        t.stream_whole(0),
        &format!(
            "frames {sent0}..{} of pair 0 once and in order",
            sent0 + BURST
        ),
        &t.describe(0),
        "TX/RX queues 0-1",
    ));
    f.push(Finding::check(
        G,
        &format!("{what}: pair 1 lost nothing"),
        true,
        t.stream_whole(1),
        "every frame of pair 1 once and in order",
        &t.describe(1),
        "TX/RX queues 2-3",
    ));
    let used = completions(&mut d, txq(0), packed)?;
    f.push(Finding::check(
        G,
        &format!("{what}: the new TX ring holds only completions from after the reset"),
        true,
        used == BURST,
        &format!("{BURST} used entries from index 0"),
        &format!("{used} used entries"),
        &format!("queue {} used ring", txq(0)),
    ));
    d.check_alive()?;
    d.reset()
}

/// How far the device got in queue `q`'s ring since its (re-)enable at index 0: the split used
/// idx, or the packed ring's next used position as slots (each frame takes one).
fn completions(d: &mut NetDriver, q: u16, packed: bool) -> Result<u64, DriverError> {
    let mem = d.mem.clone();
    if packed {
        // Each TX frame takes one slot; BURST < size, so the ring has not wrapped.
        let end = d.packed_ring(q)?.used_end(&mem)?;
        Ok(u64::from(end & 0x7FFF))
    } else {
        Ok(u64::from(d.ring(q)?.used_idx(&mem)?))
    }
}
