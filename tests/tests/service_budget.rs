//! The service budget (`DeviceConfig::service_budget`, issue #12 item 2): a TX queue that has
//! more chains than one budget stops at a batch boundary, the device lock goes to whoever waits
//! for it (here a register read), and the queue goes on afterwards; nothing is lost or reordered,
//! and the doorbell that announced the chains still returns only when they are all done. A
//! delivery of received frames stops after a budget of frames the same way.

mod support;

use bar_registers::REGION_CONFIG;
use device::{CaptureDirection, Device, DeviceConfig, FrameCapture, Port, RegionAccess};
use parking_lot::Mutex;
use sim_harness::driver::{DriverOptions, NetDriver};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use support::numbered_frames;

/// The pace of a slow datapath step: 100 us per frame, 1 ms once the reader asked (so a reader
/// the scheduler is slow to run is surely waiting for the lock at the next budget boundary).
#[derive(Default)]
struct Pace {
    done: AtomicU64,
    asked: AtomicBool,
}

impl Pace {
    /// Waits the frame's time, runs `f`, then counts the frame.
    fn step(&self, f: impl FnOnce()) {
        let us = if self.asked.load(Ordering::SeqCst) {
            1000
        } else {
            100
        };
        std::thread::sleep(Duration::from_micros(us));
        f();
        self.done.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
}

/// A thread that, once `pace` counted a frame, asks and reads a register (the vendor ID);
/// it returns how many frames were counted when it asked and when the read returned.
fn read_once_started(dev: &Arc<Device>, pace: &Arc<Pace>) -> JoinHandle<(u64, u64)> {
    let (dev, pace) = (dev.clone(), pace.clone());
    std::thread::spawn(move || {
        let mut start = 0;
        while start == 0 {
            std::hint::spin_loop();
            start = pace.done();
        }
        pace.asked.store(true, Ordering::SeqCst);
        let mut id = [0u8; 2];
        dev.region_read(REGION_CONFIG, 0, &mut id).unwrap();
        assert_eq!(u16::from_le_bytes(id), 0x1af4, "vendor ID");
        (start, pace.done())
    })
}

/// A port at that pace (a slow wire) that keeps what it was sent.
#[derive(Default)]
struct SlowPort {
    pace: Arc<Pace>,
    frames: Mutex<Vec<Vec<u8>>>,
}

impl Port for SlowPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        self.pace.step(|| self.frames.lock().push(frame.to_vec()));
        true
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

fn rig(budget: u32) -> (Arc<Device>, NetDriver, Arc<SlowPort>) {
    let cfg = DeviceConfig {
        service_budget: budget,
        batch: 16,
        ..DeviceConfig::default()
    };
    let dev = Device::new(cfg).unwrap();
    let port = Arc::new(SlowPort::default());
    dev.set_port(port.clone());
    let mut drv = sim_harness::driver::in_process(&dev, DriverOptions::default()).unwrap();
    drv.start().unwrap();
    (dev, drv, port)
}

/// Sends 256 frames with one doorbell on one thread while another reads a register once the
/// burst has started; returns how many frames the port had when the read was issued and when
/// it returned.
fn read_during_burst(budget: u32) -> ((u64, u64), Arc<Device>, Arc<SlowPort>) {
    let (dev, mut drv, port) = rig(budget);
    let fs = numbered_frames(256);
    let refs: Vec<&[u8]> = fs.iter().map(|f| f.as_slice()).collect();
    let reader = read_once_started(&dev, &port.pace);
    // One publish and one doorbell: the in-process doorbell returns when the device is done.
    assert_eq!(drv.send(0, &refs).unwrap(), 256);
    assert_eq!(
        port.pace.done(),
        256,
        "the doorbell returned before its chains were done"
    );
    let at_read = reader.join().unwrap();
    let got = port.frames.lock().clone();
    assert_eq!(got, fs, "frames lost or reordered");
    (at_read, dev, port)
}

#[test]
fn a_register_read_waits_for_one_budget_not_for_the_whole_burst() {
    let ((asked, at_read), dev, _) = read_during_burst(32);
    // The read waits for the budget under way when it asked (at most 32 frames), never for
    // the rest of the burst; the bound leaves three more budgets (about 100 ms at 1 ms per
    // frame) for a reader thread the scheduler is slow to run.
    assert!(
        at_read < 256 && at_read <= asked + 128,
        "the register read asked after frame {asked} and returned after {at_read} of 256 (budget 32)"
    );
    let yields = dev.counters().queues[1].budget_yields;
    assert!(
        yields >= 7,
        "256 chains at a budget of 32 must yield at least 7 times, counted {yields}"
    );
}

/// The control: without a budget the same read waits for the whole burst (so the test above
/// can fail).
#[test]
fn without_a_budget_the_read_waits_for_the_whole_burst() {
    let ((_, at_read), dev, _) = read_during_burst(u32::MAX);
    assert_eq!(at_read, 256);
    assert_eq!(dev.counters().queues[1].budget_yields, 0);
}

/// A capture at that pace: a slow RX delivery (the capture runs under the device lock, once
/// per delivered frame).
#[derive(Default)]
struct SlowCapture {
    pace: Arc<Pace>,
}

impl FrameCapture for SlowCapture {
    fn frame(&self, dir: CaptureDirection, _pair: u16, _frame: &[u8]) {
        if dir == CaptureDirection::Rx {
            self.pace.step(|| ());
        }
    }
}

/// Delivers 200 received frames with one call on one thread while another reads a register
/// once the delivery has started; returns how many frames were delivered when the read was
/// issued and when it returned.
fn read_during_delivery(budget: u32) -> ((u64, u64), Arc<Device>) {
    let (dev, mut drv, _) = rig(budget);
    let cap = Arc::new(SlowCapture::default());
    dev.set_capture(Some(cap.clone()));
    let fs = numbered_frames(200);
    let refs: Vec<&[u8]> = fs.iter().map(|f| f.as_slice()).collect();
    dev.inbox().push_batch(&refs);
    let reader = read_once_started(&dev, &cap.pace);
    // A port reader's call. It returns when the FIFO is empty, or when it handed the lock to
    // the reader between two budgets: the reader then delivers the rest as it lets go.
    dev.service_rx();
    let at_read = reader.join().unwrap();
    assert!(dev.inbox().is_empty(), "frames left in the FIFO");
    let got = drv.recv(0).unwrap();
    assert_eq!(got, fs, "frames lost or reordered");
    (at_read, dev)
}

#[test]
fn a_register_read_waits_for_one_rx_budget_not_for_the_whole_delivery() {
    let ((asked, at_read), dev) = read_during_delivery(16);
    // As with TX: the budget under way when the read asked (at most 16 frames), and room for
    // three more for a reader thread the scheduler is slow to run.
    assert!(
        at_read < 200 && at_read <= asked + 64,
        "the register read asked after frame {asked} and returned after {at_read} of 200 (budget 16)"
    );
    let yields = dev.counters().rx_budget_yields;
    assert!(
        yields >= 12,
        "200 frames at a budget of 16 must yield at least 12 times, counted {yields}"
    );
}

/// The control: without a budget the same read waits for the whole delivery.
#[test]
fn without_a_budget_the_read_waits_for_the_whole_delivery() {
    let ((_, at_read), dev) = read_during_delivery(u32::MAX);
    assert_eq!(at_read, 200);
    assert_eq!(dev.counters().rx_budget_yields, 0);
}
