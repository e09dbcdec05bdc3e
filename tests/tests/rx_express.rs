//! The receive path's express lane (device/src/net/rx_express.rs) against the general path it
//! stands in for. The same frames go into two devices: one with the lane (the default), one
//! with `DeviceConfig::rx_express` off, so every frame takes the general path. The driver asks
//! for no receive offload, as DPDK's virtio PMD under testpmd does.
//!
//! What must come out the same:
//! - the frames and headers the driver reads;
//! - every device counter (but `rx_express_frames`);
//! - the IOMMU's counts and the bus model's.
//!
//! The frames mix what the lane takes (plain frames to the device's MAC) with what it leaves
//! to the general path: other MACs, broadcast, NEEDS_CSUM port headers. They come in bursts
//! that outrun the posted buffers, so frames wait and the device asks for a doorbell. Each
//! case runs on both ring layouts, with and without MRG_RXBUF, with buffers that hold a whole
//! frame and with buffers that do not.

use bar_registers::virtio::{bits, default_driver_features};
use device::net::offload::hdr::{NetHdr as DevHdr, F_NEEDS_CSUM};
use device::{Device, DeviceConfig, DeviceCounters};
use dma::{BusStats, IommuStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::hdr::NetHdr;
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames;
use std::sync::Arc;
use virtio_bindings::virtio_net::{VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC};

/// One device's run: what the driver read, and the device's counts.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Per queue pair, in order.
    received: Vec<Vec<(NetHdr, Vec<u8>)>>,
    counters: DeviceCounters,
    bus: BusStats,
    iommu: IommuStats,
}

/// The driver's options: no GUEST_CSUM (nor, by default, GSO frames or hash reports).
fn options(packed: bool, mrg: bool, rx_buf_size: u32, queue_pairs: u16) -> DriverOptions {
    let mut features = default_driver_features() & !(1 << bits::GUEST_CSUM);
    if !mrg {
        features &= !(1 << bits::MRG_RXBUF);
    }
    DriverOptions {
        features,
        queue_pairs,
        queue_size: 64,
        rx_buf_size,
        ..Default::default()
    }
    .with_packed(packed)
}

/// A device with the express lane on or off and `opts`' queue pairs, its driver started.
fn started(express: bool, opts: &DriverOptions) -> (Arc<Device>, NetDriver) {
    let dev = Device::new(DeviceConfig {
        rx_express: express,
        ..DeviceConfig::with_queue_pairs(opts.queue_pairs)
    })
    .unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, opts.clone()).unwrap();
    drv.start().unwrap();
    (dev, drv)
}

/// Runs the frames of `seed` through a device with the express lane on or off.
fn run(express: bool, opts: &DriverOptions, seed: u64) -> Outcome {
    let (dev, mut drv) = started(express, opts);
    let pairs = opts.queue_pairs;
    // Out of promiscuous mode (5.1.6.5.1), so the RX filter drops frames to other MACs.
    drv.ctrl(
        VIRTIO_NET_CTRL_RX as u8,
        VIRTIO_NET_CTRL_RX_PROMISC as u8,
        &[0],
    )
    .unwrap();
    let mac = drv.mac().unwrap();
    let src = [2, 0, 0, 0, 0, 9];
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut received = vec![Vec::new(); pairs.into()];
    let mut recv_all = |drv: &mut NetDriver| {
        let mut any = false;
        for (p, got) in received.iter_mut().enumerate() {
            let frames = drv.recv_with_hdr(p as u16).unwrap();
            any |= !frames.is_empty();
            got.extend(frames);
        }
        any
    };
    for round in 0..40u64 {
        // Up to twice the ring: bursts that outrun the buffers posted.
        for i in 0..rng.gen_range(1..=128u64) {
            let len = rng.gen_range(60..=1514);
            let seq = round * 1000 + i;
            // One of 16 flows: with more than one pair, steered by the flow table.
            let flow = rng.gen_range(0..16);
            let f = |dst, rng: &mut SmallRng| frames::build(src, dst, flow, seq, len, rng);
            match rng.gen_range(0..10) {
                0 => assert!(dev.inbox().push(&f([2, 0, 0, 0, 0, 0x77], &mut rng))),
                1 => assert!(dev.inbox().push(&f([0xff; 6], &mut rng))),
                2 => {
                    // UDP over IPv4: the checksum from byte 34, its field at 34 + 6. The
                    // device completes it (the driver does not take NEEDS_CSUM).
                    let h = DevHdr {
                        flags: F_NEEDS_CSUM,
                        csum_start: 34,
                        csum_offset: 6,
                        ..DevHdr::default()
                    };
                    assert!(dev.inbox().push_with_hdr(&h, &f(mac, &mut rng)));
                }
                _ => assert!(dev.inbox().push(&f(mac, &mut rng))),
            }
        }
        dev.try_service_rx();
        // Now and then the driver is slow to take them: frames wait for its buffers.
        if rng.gen_bool(0.6) {
            recv_all(&mut drv);
        }
    }
    for _ in 0..1000 {
        dev.try_service_rx();
        if !recv_all(&mut drv) && dev.inbox().is_empty() {
            break;
        }
    }
    assert!(dev.inbox().is_empty(), "every frame delivered or dropped");
    drv.check_alive().unwrap();
    Outcome {
        received,
        counters: dev.counters(),
        bus: dev.bus_stats(),
        iommu: dev.iommu_stats(),
    }
}

#[test]
fn the_express_lane_does_what_the_general_path_does() {
    // Frames that waited on their own queue's list while the other queues went on (4 pairs).
    let mut waits = 0;
    for packed in [false, true] {
        for (mrg, rx_buf_size, pairs) in [
            // 2048: a buffer holds any frame; 512: with MRG_RXBUF a frame spreads over
            // several, without it the longer frames are dropped (5.1.6.3.1).
            (true, 2048, 1),
            (true, 512, 1),
            (false, 2048, 1),
            (false, 512, 1),
            // Four pairs: each flow's frames steered to its pair by the flow table.
            (true, 2048, 4),
            (false, 512, 4),
        ] {
            let opts = options(packed, mrg, rx_buf_size, pairs);
            let case =
                format!("packed {packed}, mrg {mrg}, {rx_buf_size}-byte buffers, {pairs} pairs");
            let general = run(false, &opts, 17);
            let mut express = run(true, &opts, 17);
            assert_eq!(general.counters.rx_express_frames, 0, "{case}: lane off");
            let took = express.counters.rx_express_frames;
            assert!(
                took > express.counters.rx_frames / 2,
                "{case}: most frames took the lane ({took} of {})",
                express.counters.rx_frames
            );
            assert!(
                express.counters.rx_filtered > 0 && express.counters.rx_csum_completed > 0,
                "{case}: the general path had frames too: {:?}",
                express.counters
            );
            if !mrg && rx_buf_size == 512 {
                assert!(express.counters.rx_dropped_too_small > 0, "{case}: drops");
            }
            let busy = express.received.iter().filter(|r| !r.is_empty()).count();
            assert_eq!(busy, usize::from(pairs), "{case}: every pair received");
            waits += express.counters.rx_queue_waits;
            express.counters.rx_express_frames = 0;
            assert_eq!(express, general, "{case}");
        }
    }
    assert!(waits > 0, "frames waited on their queue's list");
}

#[test]
fn a_driver_with_receive_offloads_never_takes_the_lane() {
    // GUEST_CSUM: every frame is looked at for a checksum to verify (the general path).
    let opts = DriverOptions {
        queue_size: 64,
        ..Default::default()
    };
    assert_ne!(opts.features & (1 << bits::GUEST_CSUM), 0);
    let out = run(true, &opts, 5);
    assert!(out.counters.rx_frames > 0);
    assert_eq!(out.counters.rx_express_frames, 0);
}

/// A DMA fault while the lane writes a frame fails the device as the general path does: the
/// same fault, the same frames delivered before it, the same counts.
#[test]
fn a_dma_fault_in_the_lane_fails_the_device_as_the_general_path_does() {
    for packed in [false, true] {
        let opts = options(packed, true, 2048, 1);
        let run_to_fault = |express: bool| {
            let (dev, mut drv) = started(express, &opts);
            let mac = drv.mac().unwrap();
            let mut rng = SmallRng::seed_from_u64(9);
            let mut burst = |n: u64| {
                for seq in 0..n {
                    let f = frames::build([2, 0, 0, 0, 0, 9], mac, 1, seq, 200, &mut rng);
                    assert!(dev.inbox().push(&f));
                }
            };
            burst(20);
            dev.try_service_rx();
            let received = drv.recv_with_hdr(0).unwrap();
            assert_eq!(received.len(), 20);
            burst(20);
            dev.inject(device::InjectedFault::DmaFault);
            dev.try_service_rx();
            let mut counters = dev.counters();
            let took = std::mem::take(&mut counters.rx_express_frames);
            let fault = dev.fault();
            (took, (received, counters, fault, dev.inbox().len()))
        };
        let (took, express) = run_to_fault(true);
        let (_, general) = run_to_fault(false);
        assert_eq!(took, 20, "packed {packed}: the first burst took the lane");
        assert!(
            matches!(express.2, Some(device::DeviceFault::Dma { queue: 0, .. })),
            "packed {packed}: {:?}",
            express.2
        );
        assert_eq!(express, general, "packed {packed}");
    }
}
