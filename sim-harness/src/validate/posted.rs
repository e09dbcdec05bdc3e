//! The built-in model as an asynchronous board: a doorbell write returns at once and the device
//! acts on it later, from another thread. A CPU's MMIO write to silicon is posted (it returns
//! before the device has seen it, and a later read only orders its arrival, not the work it
//! starts), and a guest's VFIO driver reaches a device served over vfio-user the same way (QEMU
//! sends BAR writes with NO_REPLY: hw/vfio-user/device.c, posted writes). Checks that assume a
//! doorbell's work is done when its write, or the next register access, returns pass the
//! in-process model and the socket target (both finish the work first) and fail a healthy
//! board; this target runs them that way (tests/tests/validate.rs).

use super::{InProcess, Session, Target, ValidateError};
use device::{AccessError, Device, DeviceConfig, DmaMapper, RegionAccess};
use dma::{Backing, MapError, Perms};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A device that acts on each doorbell `lag` after its write returned, in order, from another
/// thread. Nothing waits for that: register accesses read and change the device as it is
/// meanwhile, as on a board whose doorbell starts work that finishes when it finishes.
pub struct PostedDoorbells {
    dev: Arc<Device>,
    posted: Mutex<mpsc::Sender<(Instant, u64, Vec<u8>)>>,
}

impl PostedDoorbells {
    /// Posts `dev`'s doorbells with `lag`.
    pub fn new(dev: Arc<Device>, lag: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<(Instant, u64, Vec<u8>)>();
        let d = dev.clone();
        std::thread::spawn(move || {
            // Ends when the sender is dropped (with the handle).
            for (at, off, data) in rx {
                std::thread::sleep((at + lag).saturating_duration_since(Instant::now()));
                // A refused doorbell write has no reply to carry its error either: the device
                // counts it, as it counts a posted write over vfio-user.
                let _ = d.region_write(0, off, &data);
            }
        });
        PostedDoorbells {
            dev,
            posted: Mutex::new(tx),
        }
    }
}

impl RegionAccess for PostedDoorbells {
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        self.dev.region_read(region, offset, data)
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        if region == 0 && self.dev.layout().doorbell_queue(offset).is_some() {
            let posted = (Instant::now(), offset, data.to_vec());
            return self
                .posted
                .lock()
                .expect("poster lock")
                .send(posted)
                .map_err(|_| AccessError::Transport("the doorbell poster is gone".into()));
        }
        self.dev.region_write(region, offset, data)
    }
}

impl DmaMapper for PostedDoorbells {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        self.dev.dma_map(iova, size, perms, backing)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        self.dev.dma_unmap(iova, size)
    }

    fn dma_unmap_all(&self) -> u64 {
        self.dev.dma_unmap_all()
    }
}

/// [`super::InProcess`] behind [`PostedDoorbells`].
pub struct PostedInProcess {
    pub cfg: DeviceConfig,
    /// How late each doorbell reaches the device.
    pub lag: Duration,
}

impl Target for PostedInProcess {
    fn open(&self) -> Result<Session, ValidateError> {
        let lag = self.lag;
        // Interrupts follow a doorbell by the lag and the device's work (30 ms of it, as the
        // socket target allows for its pump thread).
        InProcess::session(
            &self.cfg,
            |dev| Arc::new(PostedDoorbells::new(dev, lag)),
            lag + Duration::from_millis(30),
        )
    }

    fn profile(&self) -> Option<bar_registers::Profile> {
        Some(self.cfg.profile.clone())
    }

    fn describe(&self) -> String {
        format!(
            "built-in model, doorbells posted ({} us late)",
            self.lag.as_micros()
        )
    }
}
