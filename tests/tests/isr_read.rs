//! The ISR byte (virtio 1.2 4.1.4.5) is read and cleared without the device lock while that read
//! has no other effect (MSI-X enabled, INTx status clear), so a driver that reads it on every
//! interrupt (Linux ifcvf with one vector, `ifcvf_dev_intr_handler`) never waits for a queue
//! the device is servicing. Where the read also deasserts INTx (4.1.4.5.1) it takes the lock,
//! and an ISR raised before a state save reads the same after the restore.

mod support;

use bar_registers::pci::{hdr, msix_cap, status};
use bar_registers::virtio::isr;
use bar_registers::REGION_CONFIG;
use device::{Device, DeviceConfig, InterruptRecorder, Port, RegionAccess};
use parking_lot::{Condvar, Mutex};
use sim_harness::driver::{DriverOptions, NetDriver};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use support::numbered_frames;

/// Reads the ISR byte as a driver does (1 byte, BAR access).
fn read_isr(dev: &Device) -> u8 {
    let l = dev.layout();
    let mut b = [0u8; 1];
    dev.region_read(l.isr.bar.into(), l.isr.offset, &mut b)
        .unwrap();
    b[0]
}

fn cfg_rd16(dev: &Device, off: u64) -> u16 {
    let mut b = [0u8; 2];
    dev.region_read(REGION_CONFIG, off, &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// Sets or clears MSI-X Enable in the capability's message control.
fn set_msix_enable(dev: &Device, drv: &NetDriver, on: bool) {
    let ctl = drv.pci.msix_cap + msix_cap::MESSAGE_CONTROL;
    let v = cfg_rd16(dev, ctl);
    let v = if on {
        v | msix_cap::CTRL_ENABLE
    } else {
        v & !msix_cap::CTRL_ENABLE
    };
    dev.region_write(REGION_CONFIG, ctl, &v.to_le_bytes())
        .unwrap();
}

/// A port whose `transmit` blocks until it is opened: the TX service that calls it holds the
/// device lock all that time.
#[derive(Default)]
struct StuckPort {
    open: Mutex<bool>,
    entered: Mutex<bool>,
    cv: Condvar,
}

impl StuckPort {
    fn wait_entered(&self) {
        let mut e = self.entered.lock();
        while !*e {
            assert!(
                !self
                    .cv
                    .wait_for(&mut e, Duration::from_secs(10))
                    .timed_out(),
                "the TX service never reached the port"
            );
        }
    }
    fn release(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }
}

impl Port for StuckPort {
    fn transmit(&self, _frame: &[u8]) -> bool {
        *self.entered.lock() = true;
        self.cv.notify_all();
        let mut o = self.open.lock();
        while !*o {
            self.cv.wait(&mut o);
        }
        true
    }
    fn describe(&self) -> String {
        "stuck".into()
    }
}

#[test]
fn an_isr_read_is_answered_while_a_tx_service_holds_the_device() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let port = Arc::new(StuckPort::default());
    dev.set_port(port.clone());
    let mut drv = sim_harness::driver::in_process(&dev, DriverOptions::default()).unwrap();
    drv.start().unwrap();
    let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
    dev.set_interrupt_sink(irq.clone());
    assert_eq!(read_isr(&dev), 0);
    dev.set_link(false);
    let before = dev.counters().isr_reads_unlocked;

    // The driver's doorbell: the TX service takes the device lock and blocks in the port.
    let sender = std::thread::spawn(move || {
        let fs = numbered_frames(1);
        drv.send(0, &[fs[0].as_slice()]).unwrap();
        drv
    });
    port.wait_entered();
    let (tx, rx) = mpsc::channel();
    let reader = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            let first = read_isr(&dev);
            let second = read_isr(&dev);
            tx.send((first, second)).unwrap();
        })
    };
    let got = rx.recv_timeout(Duration::from_secs(10));
    // Whatever happened, let the TX service finish so the threads end.
    port.release();
    let (first, second) = got.expect("the ISR read waited for the TX service's device lock");
    assert_eq!(
        (first, second),
        (isr::CONFIG, 0),
        "the config change is read once, then the ISR is clear"
    );
    reader.join().unwrap();
    let drv = sender.join().unwrap();

    // The TX service's interrupt: queue bit, read without the lock as well.
    assert_eq!(read_isr(&dev), isr::QUEUE);
    assert_eq!(read_isr(&dev), 0);
    assert!(irq.count(NetDriver::vector_of(1)) >= 1, "no TX interrupt");
    assert_eq!(dev.counters().isr_reads_unlocked, before + 4);
    drop(drv);
}

#[test]
fn with_msix_disabled_the_isr_read_deasserts_intx_through_the_lock() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::in_process(&dev, DriverOptions::default()).unwrap();
    drv.start().unwrap();
    let irq = Arc::new(InterruptRecorder::new(dev.layout().msix_vectors));
    dev.set_interrupt_sink(irq.clone());
    set_msix_enable(&dev, &drv, false);
    let before = dev.counters().isr_reads_unlocked;

    dev.set_link(false);
    assert_eq!(irq.intx(), (true, 1), "INTx asserted");
    assert_ne!(cfg_rd16(&dev, hdr::STATUS) & status::INTERRUPT, 0);
    assert_eq!(read_isr(&dev), isr::CONFIG);
    assert_eq!(irq.intx(), (false, 1), "the ISR read deasserted INTx");
    assert_eq!(cfg_rd16(&dev, hdr::STATUS) & status::INTERRUPT, 0);
    assert_eq!(read_isr(&dev), 0);
    assert_eq!(
        dev.counters().isr_reads_unlocked,
        before,
        "an ISR read with MSI-X disabled skipped the lock"
    );

    // INTx raised while MSI-X was off, then MSI-X enabled: the read still has the INTx status
    // bit to clear, so it still takes the lock; the next one has nothing else to do.
    dev.set_link(true);
    assert_eq!(irq.intx(), (true, 2));
    set_msix_enable(&dev, &drv, true);
    assert_eq!(read_isr(&dev), isr::CONFIG);
    assert!(!irq.intx().0, "INTx still asserted");
    assert_eq!(cfg_rd16(&dev, hdr::STATUS) & status::INTERRUPT, 0);
    assert_eq!(dev.counters().isr_reads_unlocked, before);
    dev.set_link(false);
    assert_eq!(irq.intx(), (false, 2), "INTx raised with MSI-X enabled");
    assert_eq!(read_isr(&dev), isr::CONFIG);
    assert_eq!(dev.counters().isr_reads_unlocked, before + 1);
}

#[test]
fn the_isr_moves_with_the_device_state_and_a_reset_clears_it() {
    let src = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::in_process(&src, DriverOptions::default()).unwrap();
    drv.start().unwrap();
    src.set_link(false);
    src.pause();
    let state = src.save_state();
    let dst = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    support::migrate_driver(&mut drv, &dst, &state);
    assert_eq!(read_isr(&dst), isr::CONFIG, "the saved ISR");
    assert_eq!(read_isr(&dst), 0);

    dst.set_link(true);
    dst.reset();
    assert_eq!(read_isr(&dst), 0, "a device reset clears the ISR");
}
