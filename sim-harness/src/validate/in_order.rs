//! The `in-order` group: with VIRTIO_F_IN_ORDER negotiated the device uses buffers in the order
//! the driver made them available (virtio 1.2 2.7.9 for the split ring): the used ring's ids,
//! slot by slot, are the avail ring's heads. Checked on a TX queue and on an RX queue with
//! mergeable buffers after a burst of frames through the loopback.

use super::checks::{negotiated_all, started, Findings};
use super::report::Finding;
use super::{Session, ValidateOptions};
use crate::driver::net::{rxq, txq};
use crate::driver::{DriverError, DriverOptions, NetDriver};
use crate::frames;
use bar_registers::virtio::bits;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::{Duration, Instant};

const G: &str = "in-order";
/// Frames per check: fewer than the queue size, so no slot is reused.
const FRAMES: usize = 48;

/// The group body.
pub(super) fn in_order(
    s: &Session,
    _o: &ValidateOptions,
    f: &mut Findings,
) -> Result<(), DriverError> {
    // Runs only when the device offers VIRTIO_F_IN_ORDER (checks::GROUP_FEATURES gates it).
    let features = bar_registers::virtio::default_driver_features();
    let mut d = started(
        s,
        DriverOptions {
            features: features | 1 << bits::IN_ORDER,
            queue_size: 256,
            // Two buffers per frame for the larger ones: RX order across merged buffers too.
            rx_buf_size: 1024,
            ..DriverOptions::default()
        },
    )?;
    if !negotiated_all(
        &mut d,
        f,
        G,
        1 << bits::IN_ORDER,
        "VIRTIO_F_IN_ORDER negotiated",
        "FEATURES_OK with VIRTIO_F_IN_ORDER",
    )? {
        return Ok(());
    }
    // The RX avail ring as posted at start: the driver does not refill during the check (a
    // refill would wrap over these slots).
    let mem = d.mem.clone();
    let posted = d.ring(rxq(0))?.avail_heads(&mem)?;
    let mut rng = SmallRng::seed_from_u64(0x494e_4f52);
    let mac = super::checks::MAC;
    let sent: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| frames::build(mac, mac, 0, i as u64, [64, 1500][i % 2], &mut rng))
        .collect();
    let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    // In small bursts, so that one flush of the device holds several completions.
    for chunk in refs.chunks(8) {
        let mut n = 0;
        let t0 = Instant::now();
        while n < chunk.len() && t0.elapsed() < Duration::from_secs(2) {
            n += d.enqueue_tx(0, &chunk[n..])?;
            d.publish(txq(0))?;
        }
    }
    // Wait until the device has used a buffer per 1 KiB of every frame (with its header), or
    // 2 s: the used rings are then final for these slots.
    let want: usize = sent.iter().map(|fr| (fr.len() + 12).div_ceil(1024)).sum();
    let t0 = Instant::now();
    while usize::from(d.ring(rxq(0))?.used_idx(&mem)?) < want
        && t0.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let tx_posted = d.ring(txq(0))?.avail_heads(&mem)?;
    order_finding(f, &mut d, txq(0), "TX", &tx_posted)?;
    order_finding(f, &mut d, rxq(0), "RX (mergeable buffers)", &posted)?;
    d.reset()
}

/// Compares queue `q`'s used ids with the heads the driver made available (`posted`, by avail
/// slot), slot by slot, over what the device completed.
fn order_finding(
    f: &mut Findings,
    d: &mut NetDriver,
    q: u16,
    what: &str,
    posted: &[u16],
) -> Result<(), DriverError> {
    let mem = d.mem.clone();
    let r = d.ring(q)?;
    let (avail, used, size) = (r.avail, r.used, r.size);
    let done = r.used_idx(&mem)?;
    let mut first_bad = None;
    for slot in 0..done.min(size) {
        let head = posted[usize::from(slot)];
        let id = mem.read_u32(used + 4 + 8 * u64::from(slot))?;
        if u32::from(head) != id && first_bad.is_none() {
            first_bad = Some(format!(
                "used slot {slot}: id {id}, avail slot {slot}: head {head}"
            ));
        }
    }
    f.push(Finding::check(
        G,
        &format!("{what}: used ids follow the avail ring"),
        true,
        done > 0 && first_bad.is_none(),
        "used.ring[i].id = avail.ring[i] for every completed slot (virtio 1.2 2.7.9)",
        &first_bad.unwrap_or_else(|| format!("{done} slots in order")),
        &format!("queue {q} used ring {used:#x}, avail ring {avail:#x}"),
    ));
    Ok(())
}
