//! `vdpa-emu demo`: loopback traffic through the built-in model with its counters printed.
//! (The validator issue will replace `make demo`'s main job with the prerequisite report.)

use crate::driver::{DriverError, DriverOptions};
use crate::frames::{self, Tracker};
use crate::pcap::PcapCapture;
use device::{Device, DeviceConfig};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

/// What the demo did.
#[derive(Debug)]
pub struct DemoReport {
    pub frames: u64,
    pub tracker: Tracker,
    pub elapsed_s: f64,
    pub text: String,
}

/// Sends `count` random-size frames over `pairs` queue pairs through a loopback device and
/// checks every one comes back intact, once, in order; with `pcap`, every frame is also
/// captured into that pcapng file.
pub fn run(
    pairs: u16,
    count: u64,
    seed: u64,
    pcap: Option<&Path>,
    profile: bar_registers::Profile,
) -> Result<DemoReport, DriverError> {
    if pairs > 1 && !profile.offers(bar_registers::virtio::bits::MQ) {
        return Err(DriverError::Usage(format!(
            "{pairs} queue pairs need VIRTIO_NET_F_MQ, which profile {} does not offer: use --queue-pairs 1",
            profile.name
        )));
    }
    let profile_name = profile.name.clone();
    let mut cfg = DeviceConfig::default().with_profile(profile);
    cfg.layout.queue_pairs = pairs;
    let dev = Device::new(cfg).map_err(|e| DriverError::Usage(e.to_string()))?;
    dev.set_loopback();
    let usage = |e: crate::pcap::CaptureError| DriverError::Usage(e.to_string());
    let capture = match pcap {
        Some(path) => {
            let c = PcapCapture::create(path).map_err(usage)?;
            c.attach("", &dev).map_err(usage)?;
            Some(c)
        }
        None => None,
    };
    let mut drv = crate::driver::in_process(
        &dev,
        DriverOptions {
            queue_pairs: pairs,
            ..Default::default()
        },
    )?;
    drv.start()?;
    let negotiated = dev.negotiated_features();
    let mac = drv.mac()?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut tracker = Tracker::default();
    let mut sent: HashMap<u16, u64> = HashMap::new();
    let t0 = Instant::now();
    let mut total = 0u64;
    while total < count {
        for p in 0..pairs {
            let n = (count - total).min(32) as usize;
            let batch: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let seq = sent.entry(p).or_insert(0);
                    let f = frames::build(
                        mac,
                        mac,
                        p,
                        *seq,
                        rng.gen_range(frames::MIN_FRAME..=1514),
                        &mut rng,
                    );
                    *seq += 1;
                    f
                })
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let k = drv.send(p, &refs)?;
            if k != n {
                return Err(DriverError::Usage(format!("TX ring of pair {p} full")));
            }
            total += n as u64;
            for f in drv.recv(p)? {
                tracker.record(&f);
            }
        }
    }
    for p in 0..pairs {
        for f in drv.recv(p)? {
            tracker.record(&f);
        }
    }
    tracker.finish(&sent);
    let elapsed_s = t0.elapsed().as_secs_f64();
    let states = drv.stop()?;
    let captured = match capture {
        Some(c) => {
            dev.set_capture(None);
            Some(c.finish().map_err(usage)?)
        }
        None => None,
    };
    let c = dev.counters();
    let bus = dev.bus_stats();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "vdpa-emu demo: {total} frames over {pairs} queue pair(s), loopback, profile {profile_name} (negotiated features {negotiated:#x}), in {elapsed_s:.3} s"
    );
    let _ = writeln!(
        text,
        "delivered {} lost {} duplicated {} reordered {} corrupted {}",
        tracker.delivered, tracker.lost, tracker.duplicated, tracker.reordered, tracker.corrupted
    );
    let _ = writeln!(text, "\n{:<28} {:>14}", "device counter", "value");
    for (k, v) in c.scalars() {
        if v != 0 {
            let _ = writeln!(text, "{k:<28} {v:>14}");
        }
    }
    let _ = writeln!(
        text,
        "\n{:<6} {:>10} {:>10} {:>12} {:>10} {:>10}  ring state",
        "queue", "doorbells", "frames", "bytes", "irqs", "irq_supp"
    );
    for (q, qc) in c.queues.iter().enumerate() {
        if qc.chains == 0 && qc.doorbells == 0 {
            continue;
        }
        let (a, u) = states.get(q).copied().unwrap_or_default();
        let _ = writeln!(
            text,
            "{q:<6} {:>10} {:>10} {:>12} {:>10} {:>10}  avail {a} used {u}",
            qc.doorbells, qc.frames, qc.bytes, qc.interrupts, qc.interrupts_suppressed
        );
    }
    let _ = writeln!(
        text,
        "\n{:<16} {:>12} {:>14} {:>12}",
        "bus (DMA)", "transactions", "bytes", "per frame"
    );
    for k in dma::DmaKind::ALL {
        let t = bus.get(k);
        let _ = writeln!(
            text,
            "{:<16} {:>12} {:>14} {:>12.2}",
            k.name(),
            t.transactions,
            t.bytes,
            t.transactions as f64 / total.max(1) as f64
        );
    }
    let io = dev.iommu_stats();
    let _ = writeln!(
        text,
        "\nIOTLB hits {} misses {}, IOMMU faults {}",
        io.iotlb_hits,
        io.iotlb_misses,
        io.faults()
    );
    if let Some(s) = captured {
        let _ = writeln!(
            text,
            "captured {} frames ({} bytes) into {}",
            s.frames,
            s.bytes,
            s.path.display()
        );
    }
    Ok(DemoReport {
        frames: total,
        tracker,
        elapsed_s,
        text,
    })
}
