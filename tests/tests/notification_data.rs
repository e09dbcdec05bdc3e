//! Traffic with VIRTIO_F_NOTIFICATION_DATA (virtio 1.2 2.9, 4.1.5.2) on both ring layouts
//! (trapped doorbells; the shared notify window is sim-harness/tests/vfio_user_doorbells.rs):
//! every kick a 32-bit store of vqn and next position, every frame back byte-exact, no kick
//! counted bad.

use bar_registers::virtio::{bits, default_driver_features};
use device::{Device, DeviceConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::driver::DriverOptions;
use sim_harness::frames;

#[test]
fn frames_flow_with_notification_data_kicks_on_both_layouts() {
    for packed in [false, true] {
        {
            let what = format!("packed {packed}");
            let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
            dev.set_loopback();
            let mut d = sim_harness::driver::in_process(
                &dev,
                DriverOptions {
                    features: default_driver_features() | 1 << bits::NOTIFICATION_DATA,
                    ..DriverOptions::default()
                }
                .with_packed(packed),
            )
            .unwrap();
            d.start().unwrap();
            assert_ne!(d.features & (1 << bits::NOTIFICATION_DATA), 0, "{what}");
            let mac = d.mac().unwrap();
            let mut rng = SmallRng::seed_from_u64(3);
            let mut got = Vec::new();
            let sent: Vec<Vec<u8>> = (0..300)
                .map(|i| frames::build(mac, mac, 0, i, rng.gen_range(60..=1514), &mut rng))
                .collect();
            for f in &sent {
                while d.send(0, &[f]).unwrap() == 0 {
                    got.extend(d.recv(0).unwrap());
                }
                got.extend(d.recv(0).unwrap());
            }
            for _ in 0..2000 {
                if got.len() == sent.len() {
                    break;
                }
                got.extend(d.recv(0).unwrap());
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(
                got == sent,
                "{what}: {} of {} frames back exact",
                got.len(),
                sent.len()
            );
            let c = dev.counters();
            assert_eq!(c.bad_notification_data, 0, "{what}");
            assert!(c.queues[1].doorbells > 0, "{what}");
        }
    }
}
