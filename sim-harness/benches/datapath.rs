//! Datapath benchmarks through the real register interface and the IOMMU model:
//! - tx_dequeue/64B: the device dequeues 64-byte frames from a TX ring of 256 (one doorbell per
//!   ring-full), IOTLB on, dirty logging off and on, and without an IOTLB. Only the device's
//!   work after the doorbell is timed; the driver model fills the ring untimed.
//! - loopback/64B: TX dequeue + loopback + RX enqueue into posted buffers.
//! - rx_deliver/64B: the receive path alone, as `--port gen:` drives it across processes: a
//!   ring-full of 64-byte UDP frames (8 flows, a burst of 32 each) waits in the device's
//!   receive FIFO, and only the device's delivery into the posted buffers is timed (filter,
//!   steering, descriptor reads, header and frame writes, used ring). The driver reposts the
//!   buffers untimed. `4qp_*`: with four queue pairs, each frame steered to its flow's queue
//!   pair. `gen_*`: as the generator feeds it across processes, a burst of 32 pushed into the
//!   FIFO and delivered, eight per ring-full, pushes and deliveries timed.
//! - `packed_*`: the same on packed virtqueues (VIRTIO_F_RING_PACKED, virtio 1.2 2.8): one read
//!   of a window of descriptors per batch (each descriptor's flags, then the available ones
//!   whole: every descriptor read once) instead of avail ring + per-chain descriptor reads, and
//!   a batch of used descriptors written back in place as runs of slots, the first one's flags
//!   stored last.
//! - packed_vs_split (after the criterion groups): the packed/split throughput ratio of
//!   tx_dequeue/64B and loopback/64B, logging off and on, measured interleaved: split and
//!   packed devices set up side by side, then rounds of `CHUNK` ring-fulls of each, the order
//!   alternating from round to round, so that machine noise falls on both alike (split is the
//!   anchor). Reported: the median of the per-round ratios with its quartiles, and each
//!   layout's median frames per second. `--warm-up-time` / `--measurement-time` set its
//!   warm-up and measuring time per comparison; a filter argument that is not a substring of
//!   `packed_vs_split` skips it; under `cargo test` (no `--bench`) it runs one round of each.
//!
//! Every bench's driver negotiates what the anchor's virtio-user does
//! (`sim_harness::bench::datapath::anchor_features`: no GUEST_CSUM, so no received frame's
//! checksum is looked at), as `vdpa-emu bench datapath` does across processes.
//!
//! Time is the benchmarking thread's CPU time (CLOCK_THREAD_CPUTIME_ID) around the doorbell
//! write, which runs the device inline: on the shared 2-core machine this leaves out the time
//! the thread is preempted, which wall-clock time would count at random.
//!
//! Frames per second = 256 / (time per iteration).
//!
//! Measured 2026-12-03 on the shared 2-core machine, two runs of `cargo bench -p sim-harness
//! --bench datapath -- --warm-up-time 2 --measurement-time 5`, packed/split (median of the
//! interleaved rounds): tx_dequeue/64B 1.27x / 1.23x with logging off, 1.24x / 1.28x on;
//! loopback/64B 1.14x / 1.16x off, 1.15x / 1.13x on. The packed engine before (the window
//! read twice, per-list bookkeeping) measured 0.94x-0.99x in the same runs.

use bar_registers::lm::DPDK_LOG_IOVA;
use criterion::{criterion_group, Criterion, Throughput};
use device::{Device, DeviceConfig, DmaMapper, NullPort};
use dma::{Backing, Perms, SharedMemory};
use sim_harness::driver::net::txq;
use sim_harness::driver::{DriverOptions, NetDriver};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RING: u16 = 256;

fn setup(
    logging: bool,
    iotlb: usize,
    loopback: bool,
    packed: bool,
    pairs: u16,
) -> (Arc<Device>, NetDriver, Option<SharedMemory>) {
    let mut cfg = DeviceConfig::with_queue_pairs(pairs);
    cfg.iotlb_entries = iotlb;
    cfg.batch = RING;
    let dev = Device::new(cfg).expect("valid config");
    if loopback {
        dev.set_loopback();
    } else {
        dev.set_port(Arc::new(NullPort));
    }
    let mut drv = sim_harness::driver::in_process(
        &dev,
        DriverOptions {
            queue_size: RING,
            queue_pairs: pairs,
            memory: 16 << 20,
            // What the anchor's virtio-user negotiates, as the cross-process bench does: no
            // GUEST_CSUM, so the device verifies no received frame's checksum.
            features: sim_harness::bench::datapath::anchor_features(),
            ..Default::default()
        }
        .with_packed(packed),
    )
    .expect("driver");
    assert_eq!(drv.is_packed(), packed);
    drv.start().expect("start");
    let log = logging.then(|| {
        // One bit per 4 KiB page of IOVA up to the top of guest memory (which starts at 1 GiB),
        // so every device write lands in the log and none is dropped as beyond its end.
        let top = drv.mem.base() + drv.mem.size();
        let len = (top / 4096).div_ceil(8).next_multiple_of(4096);
        let log = SharedMemory::new("bench-log", len).expect("memfd");
        dev.dma_map(
            DPDK_LOG_IOVA,
            len,
            Perms::RW,
            Backing::Fd {
                file: log.try_clone_file().expect("fd"),
                offset: 0,
            },
        )
        .expect("map log");
        drv.enable_logging(DPDK_LOG_IOVA, len).expect("logging");
        log
    });
    (dev, drv, log)
}

/// CPU time of the calling thread: the device runs inline in it (the doorbell write services
/// the queue under the device lock), so this is its work without the time the thread spends
/// preempted on a shared machine.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, a valid, exclusive local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run(drv: &mut NetDriver, iters: u64, frame: &[u8], recv: bool) -> Duration {
    let frames: Vec<&[u8]> = vec![frame; usize::from(RING)];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        drv.reclaim_tx(0).expect("reclaim");
        let n = drv.enqueue_tx(0, &frames).expect("enqueue");
        assert_eq!(n, usize::from(RING));
        drv.publish_no_kick(txq(0)).expect("publish");
        let t = thread_cpu_time();
        drv.kick(txq(0)).expect("kick");
        total += thread_cpu_time() - t;
        if recv {
            let got = drv.recv(0).expect("recv");
            assert_eq!(got.len(), usize::from(RING));
        }
    }
    total
}

/// The loopback and receive groups' variants: (name, dirty logging, packed ring).
const LOOP_VARIANTS: [(&str, bool, bool); 4] = [
    ("log_off", false, false),
    ("log_on", true, false),
    ("packed_log_off", false, true),
    ("packed_log_on", true, true),
];

/// After a variant's runs: the device did not fail, and a logging variant really logged.
fn assert_ran_clean(dev: &Device, logging: bool, ran: bool) {
    assert!(dev.fault().is_none());
    let ls = dev.log_stats();
    assert!(
        !logging || !ran || (ls.log_writes > 0 && ls.beyond_end == 0),
        "logging variant must really log: {ls:?}"
    );
}

fn tx_dequeue(c: &mut Criterion) {
    let mut frame = vec![0u8; 64];
    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut g = c.benchmark_group("tx_dequeue/64B");
    g.throughput(Throughput::Elements(RING.into()));
    for (name, logging, iotlb, packed) in [
        ("iotlb64_log_off", false, 64, false),
        ("iotlb64_log_on", true, 64, false),
        ("no_iotlb_log_off", false, 0, false),
        ("packed_iotlb64_log_off", false, 64, true),
        ("packed_iotlb64_log_on", true, 64, true),
    ] {
        let (dev, mut drv, _log) = setup(logging, iotlb, false, packed, 1);
        let mut ran = false;
        g.bench_function(name, |b| {
            ran = true;
            b.iter_custom(|iters| run(&mut drv, iters, &frame, false))
        });
        assert_ran_clean(&dev, logging, ran);
    }
    g.finish();
    let mut g = c.benchmark_group("loopback/64B");
    g.throughput(Throughput::Elements(RING.into()));
    for (name, logging, packed) in LOOP_VARIANTS {
        let (dev, mut drv, _log) = setup(logging, 64, true, packed, 1);
        // Loopback times TX dequeue + RX enqueue (the doorbell runs both inline).
        let mut ran = false;
        g.bench_function(name, |b| {
            ran = true;
            b.iter_custom(|iters| run(&mut drv, iters, &frame, true))
        });
        assert_ran_clean(&dev, logging, ran);
    }
    g.finish();
}

// Frames per burst pushed into the receive FIFO, all of one flow: `--port gen:`'s burst.
use sim_harness::ports::gen::BATCH as RX_BURST;

/// Pushes a generator's burst into the receive FIFO, which must take it whole.
fn push(dev: &Device, burst: &[&[u8]]) {
    assert_eq!(
        dev.inbox().push_batch(burst),
        burst.len(),
        "the FIFO takes them"
    );
}

/// One ring-full of received frames per iteration: the FIFO is filled and the buffers are
/// reposted outside the timed part (see the module docs).
fn run_rx(dev: &Device, drv: &mut NetDriver, pairs: u16, iters: u64, frames: &[&[u8]]) -> Duration {
    let mut total = Duration::ZERO;
    let ring = usize::from(RING);
    for _ in 0..iters {
        for burst in frames.chunks(RX_BURST) {
            push(dev, burst);
        }
        let t = thread_cpu_time();
        dev.try_service_rx();
        total += thread_cpu_time() - t;
        let got: usize = (0..pairs).map(|p| drv.recv_count(p).expect("recv")).sum();
        assert_eq!(got, ring, "one delivery takes a ring-full");
    }
    total
}

/// One ring-full the way `--port gen:` feeds it across processes: a burst pushed into the
/// FIFO, then delivered, eight times. Out of line, so scripts/instructions-per-frame.sh finds
/// it in the profile.
#[inline(never)]
fn gen_round(dev: &Device, frames: &[&[u8]]) {
    for burst in frames.chunks(RX_BURST) {
        push(dev, burst);
        dev.try_service_rx();
    }
}

/// [`run_rx`] with the pushes timed too, a burst at a time ([`gen_round`]; one queue pair).
fn run_rx_gen(dev: &Device, drv: &mut NetDriver, iters: u64, frames: &[&[u8]]) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = thread_cpu_time();
        gen_round(dev, frames);
        total += thread_cpu_time() - t;
        let got = drv.recv_count(0).expect("recv");
        assert_eq!(got, usize::from(RING), "a round takes a ring-full");
    }
    total
}

/// How an `rx_deliver` variant fills the receive FIFO.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// A ring-full waits, untimed; one delivery is timed ([`run_rx`]).
    Ring,
    /// Bursts pushed and delivered in turn, all timed ([`run_rx_gen`]).
    Generator,
}

fn rx_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("rx_deliver/64B");
    g.throughput(Throughput::Elements(RING.into()));
    // Four queue pairs: every frame steered by its flow's hash (the flow table, no RSS), as
    // `vdpa-emu bench datapath --qp 4` does; the ring-full spread over the pairs' RX queues.
    let four = [
        ("4qp_log_off", false, false),
        ("packed_4qp_log_off", false, true),
    ];
    let gen = [
        ("gen_log_off", false, false),
        ("packed_gen_log_off", false, true),
    ];
    let variants = LOOP_VARIANTS
        .iter()
        .map(|&(n, l, p)| (n, l, p, 1, Feed::Ring))
        .chain(four.iter().map(|&(n, l, p)| (n, l, p, 4, Feed::Ring)))
        .chain(gen.iter().map(|&(n, l, p)| (n, l, p, 1, Feed::Generator)));
    for (name, logging, packed, pairs, feed) in variants {
        let (dev, mut drv, _log) = setup(logging, 64, false, packed, pairs);
        let mac = drv.mac().expect("mac");
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
        // A burst of one flow each, as the generator port sends them.
        let frames: Vec<Vec<u8>> = (0..usize::from(RING))
            .map(|i| {
                let flow = (i / RX_BURST) as u16;
                sim_harness::frames::build([2, 0, 0, 0, 0, 1], mac, flow, 0, 64, &mut rng)
            })
            .collect();
        let frames: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut ran = false;
        g.bench_function(name, |b| {
            ran = true;
            b.iter_custom(|iters| match feed {
                Feed::Ring => run_rx(&dev, &mut drv, pairs, iters, &frames),
                Feed::Generator => run_rx_gen(&dev, &mut drv, iters, &frames),
            })
        });
        assert_ran_clean(&dev, logging, ran);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = tx_dequeue, rx_deliver
}

/// Ring-fulls of one layout per round of the interleaved comparison: enough to amortize the
/// cache misses of switching from the other device's memory.
const CHUNK: u64 = 32;

/// The one comparison: what the device does, with or without logging.
struct Comparison {
    name: &'static str,
    loopback: bool,
    logging: bool,
}

/// The command line as far as the interleaved comparison cares (criterion parses it too).
struct Args {
    bench: bool,
    filter: Option<String>,
    warm_up: Duration,
    measurement: Duration,
}

fn args() -> Args {
    let mut a = Args {
        bench: false,
        filter: None,
        warm_up: Duration::from_secs(1),
        measurement: Duration::from_secs(3),
    };
    let secs = |v: Option<String>, d: Duration| {
        v.and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(d, Duration::from_secs_f64)
    };
    // Criterion options that take a value (their value is not a filter).
    const VALUED: [&str; 14] = [
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
        "--color",
        "--format",
    ];
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--bench" => a.bench = true,
            "--warm-up-time" => a.warm_up = secs(it.next(), a.warm_up),
            "--measurement-time" => a.measurement = secs(it.next(), a.measurement),
            v if VALUED.contains(&v) => {
                it.next();
            }
            v if v.starts_with('-') => {}
            v => a.filter = Some(v.to_string()),
        }
    }
    a
}

/// Quantile `q` (0..=1) of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Split and packed side by side, in alternating rounds: the packed/split throughput ratio.
fn packed_vs_split(a: &Args) {
    let mut frame = vec![0u8; 64];
    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let comparisons = [
        Comparison {
            name: "tx_dequeue/64B log_off",
            loopback: false,
            logging: false,
        },
        Comparison {
            name: "tx_dequeue/64B log_on",
            loopback: false,
            logging: true,
        },
        Comparison {
            name: "loopback/64B log_off",
            loopback: true,
            logging: false,
        },
        Comparison {
            name: "loopback/64B log_on",
            loopback: true,
            logging: true,
        },
    ];
    println!(
        "\npacked_vs_split: interleaved rounds of {CHUNK} ring-fulls (256 x 64 B frames) per layout, \
         warm-up {:?}, measuring {:?} per comparison{}",
        a.warm_up,
        a.measurement,
        if a.bench { "" } else { " (test mode: one round)" }
    );
    println!(
        "{:<24} {:>7} {:>16} {:>13} {:>13}",
        "comparison", "rounds", "packed/split", "split Mfps", "packed Mfps"
    );
    for c in comparisons {
        let (split_dev, mut split, _l1) = setup(c.logging, 64, c.loopback, false, 1);
        let (packed_dev, mut packed, _l2) = setup(c.logging, 64, c.loopback, true, 1);
        let round = |drv: &mut NetDriver, n: u64| run(drv, n, &frame, c.loopback);
        let warm_end = Instant::now() + if a.bench { a.warm_up } else { Duration::ZERO };
        while Instant::now() < warm_end {
            round(&mut split, CHUNK);
            round(&mut packed, CHUNK);
        }
        let (mut ts, mut tp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let end = Instant::now() + a.measurement;
        let mut r = 0u64;
        loop {
            let (s, p) = if r.is_multiple_of(2) {
                let s = round(&mut split, CHUNK);
                (s, round(&mut packed, CHUNK))
            } else {
                let p = round(&mut packed, CHUNK);
                (round(&mut split, CHUNK), p)
            };
            let (s, p) = (s.as_secs_f64(), p.as_secs_f64());
            ts.push(s);
            tp.push(p);
            ratios.push(s / p);
            r += 1;
            if !a.bench || (Instant::now() >= end && r >= 10) {
                break;
            }
        }
        for d in [&split_dev, &packed_dev] {
            assert!(d.fault().is_none(), "{}: {:?}", c.name, d.fault());
            let ls = d.log_stats();
            assert!(
                !c.logging || (ls.log_writes > 0 && ls.beyond_end == 0),
                "{}: logging variant must really log: {ls:?}",
                c.name
            );
        }
        for v in [&mut ts, &mut tp, &mut ratios] {
            v.sort_by(f64::total_cmp);
        }
        let mfps = |t: f64| (CHUNK * u64::from(RING)) as f64 / t / 1e6;
        println!(
            "{:<24} {:>7} {:>5.2}x [{:.2}, {:.2}] {:>13.2} {:>13.2}",
            c.name,
            r,
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
            mfps(quantile(&ts, 0.5)),
            mfps(quantile(&tp, 0.5)),
        );
    }
}

fn main() {
    let a = args();
    benches();
    if a.filter
        .as_deref()
        .is_none_or(|f| "packed_vs_split".contains(f))
    {
        packed_vs_split(&a);
    }
    Criterion::default().configure_from_args().final_summary();
}
