//! The `notification-data` group: with VIRTIO_F_NOTIFICATION_DATA negotiated every doorbell is a
//! 32-bit store of vqn (bits 0-15) and the driver's next avail position (split: next_idx in
//! 16-31; packed: next_off in 16-30, next_wrap in 31) (virtio 1.2 2.9, 4.1.5.2; Linux
//! vp_notify_with_data). Traffic must flow with such kicks on the split ring and, when offered,
//! the packed ring; a kick whose vqn names another queue than its address should serve nothing
//! (the device cannot tell which of the two the driver meant).

use super::checks::{negotiated_all, started, Findings};
use super::report::Finding;
use super::traffic::Traffic;
use super::{Session, ValidateOptions};
use crate::driver::net::{rxq, txq};
use crate::driver::{DriverError, DriverOptions};
use crate::frames;
use bar_registers::virtio::{bits, default_driver_features};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::{Duration, Instant};

const G: &str = "notification-data";
/// Frames per burst.
const BURST: u64 = 48;

/// The group body.
pub(super) fn notification_data(
    s: &Session,
    _o: &ValidateOptions,
    f: &mut Findings,
) -> Result<(), DriverError> {
    // Runs only when the device offers VIRTIO_F_NOTIFICATION_DATA (checks::GROUP_FEATURES).
    layout(s, f, false)?;
    let offered = super::checks::driver(s, DriverOptions::default())?.device_features_probe()?;
    if offered & (1 << bits::RING_PACKED) == 0 {
        f.push(Finding::not_run(
            G,
            "packed ring",
            "VIRTIO_F_RING_PACKED not offered",
        ));
        return Ok(());
    }
    layout(s, f, true)
}

fn layout(s: &Session, f: &mut Findings, packed: bool) -> Result<(), DriverError> {
    let what = if packed { "packed" } else { "split" };
    let mut d = started(
        s,
        DriverOptions {
            features: default_driver_features() | 1 << bits::NOTIFICATION_DATA,
            ..DriverOptions::default()
        }
        .with_packed(packed),
    )?;
    if !negotiated_all(
        &mut d,
        f,
        G,
        1 << bits::NOTIFICATION_DATA,
        &format!("{what}: VIRTIO_F_NOTIFICATION_DATA negotiated"),
        "FEATURES_OK with VIRTIO_F_NOTIFICATION_DATA",
    )? {
        return Ok(());
    }
    // Every kick of the driver model now carries the data (NetDriver::kick).
    let mut t = Traffic::new(0x4e44 + u64::from(packed));
    t.burst(&mut d, &[0], &[0], BURST)?;
    f.push(Finding::check(
        G,
        &format!("{what}: traffic flows with 32-bit notification data kicks"),
        true,
        t.stream_whole(0),
        &format!("{BURST} frames once and in order (virtio 1.2 4.1.5.2)"),
        &t.describe(0),
        "TX/RX queues 0-1, notify",
    ));
    // A TX buffer made available without a kick, then a kick at TX queue 1's address whose
    // vqn names RX queue 0.
    let mut rng = SmallRng::seed_from_u64(7);
    let mac = super::checks::MAC;
    let frame = frames::build(mac, mac, 9, 0, 100, &mut rng);
    d.reclaim_tx(0)?;
    // The burst's own doorbells first: one that reaches the device late (posted, on a loaded
    // machine) would serve the buffer below and pass for the bad kick's doing.
    s.settle();
    let queued = d.enqueue_tx(0, &[&frame])?;
    d.publish_no_kick(txq(0))?;
    let name = format!("{what}: a kick whose vqn names another queue serves nothing");
    std::thread::sleep(Duration::from_millis(20));
    let unkicked = d.reclaim_tx(0)?;
    let good = d.any_ring(txq(0))?.notification_data(txq(0));
    let bad = (good & 0xFFFF_0000) | u32::from(rxq(0));
    let served = if unkicked > 0 {
        // A device may serve what is available without a kick (virtio notifications are
        // hints): then what the bad kick does cannot be seen.
        f.push(Finding::not_run(
            G,
            &name,
            "the device served the buffer before any kick for it (it polls its rings, or an \
             earlier doorbell reached it late): what a kick with another queue's vqn does \
             cannot be seen",
        ));
        unkicked
    } else {
        d.notify_write(txq(0), 4, bad.into())?;
        std::thread::sleep(Duration::from_millis(20));
        let served_on_bad = d.reclaim_tx(0)?;
        f.push(Finding::check(
            G,
            &name,
            false,
            queued == 1 && served_on_bad == 0,
            &format!(
                "no TX completion after data {bad:#010x} at queue {}'s doorbell",
                txq(0)
            ),
            &format!("{served_on_bad} TX completions"),
            &format!("notify, queue {}", txq(0)),
        ));
        served_on_bad
    };
    // The right kick serves it (and the device is still working).
    if served == 0 {
        d.notify_write(txq(0), 4, good.into())?;
    }
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && t0.elapsed() < Duration::from_secs(2) {
        got = d.recv(0)?;
        if got.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    f.push(Finding::check(
        G,
        &format!("{what}: the kick with the queue's own vqn serves it"),
        true,
        got.len() == 1 && super::traffic::trimmed(&got[0]) == frame.as_slice(),
        &format!("the frame back after data {good:#010x}"),
        &format!("{} frames back", got.len()),
        &format!("notify, queue {}", txq(0)),
    ));
    d.check_alive()?;
    d.reset()
}
