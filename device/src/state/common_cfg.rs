//! The virtio common configuration (virtio 1.2 4.1.4.3 struct virtio_pci_common_cfg, minus the
//! per-queue registers, which the queues own), the ISR (4.1.4.5) and config_generation (2.5.1):
//! feature negotiation and device_status, the latter through the transition table
//! [`crate::transport::STATUS_STEPS`].

use crate::interrupt::IsrStatus;
use crate::snapshot::{invalid, Reader, SectionSpec, SnapshotError, Writer};
use crate::transport::{
    validate_features, FeatureError, StatusChange, StatusMachine, STATUS_STEPS,
};
use bar_registers::virtio::{common, device_status as st, isr, NO_VECTOR};

/// What a common configuration read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommonRead {
    /// A device-wide register.
    Value(u64),
    /// A queue register of the selected queue (queue_select is in range).
    Queue(u16),
}

/// What a common configuration write asks of the rest of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommonWrite {
    /// Stored.
    Done,
    /// Refused (a rule forbids it now); counted by the device.
    Ignored,
    /// device_status changed as the status machine says.
    Status(StatusChange),
    /// A queue register of the selected queue (queue_select is in range).
    Queue(u16),
}

/// The saved registers (section `VIRT`).
#[derive(Debug)]
pub(crate) struct CommonImage {
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    negotiated: u64,
    config_msix_vector: u16,
    queue_select: u16,
    isr: u8,
    config_generation: u8,
}

impl CommonImage {
    /// Whether the saved device had accepted its features.
    pub(crate) fn features_ok(&self) -> bool {
        self.status & st::FEATURES_OK != 0
    }

    /// The saved negotiated features (0 before FEATURES_OK).
    pub(crate) fn negotiated(&self) -> u64 {
        self.negotiated
    }

    /// Whether the saved device had negotiated feature `bit`.
    pub(crate) fn has(&self, bit: u32) -> bool {
        self.negotiated & (1u64 << bit) != 0
    }
}

/// The device-wide common configuration registers.
#[derive(Debug)]
pub struct CommonCfg {
    offered: u64,
    num_queues: u16,
    msix_vectors: u16,
    status: StatusMachine,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    negotiated: u64,
    config_msix_vector: u16,
    queue_select: u16,
    /// Shared with the register path's lock-free ISR read ([`IsrStatus`]).
    isr: IsrStatus,
    config_generation: u8,
}

impl CommonCfg {
    /// The `VIRT` section of the device-state stream.
    pub const SECTION: SectionSpec = SectionSpec {
        name: "VIRT",
        body: "device_status u8, device_feature_select u32, driver_feature_select u32, driver_features u64, negotiated u64, config_msix_vector u16, queue_select u16, isr u8, config_generation u8",
    };

    /// Reset state of a device offering `offered` with this many queues and vectors, its ISR
    /// kept in `isr`.
    pub fn new(offered: u64, num_queues: u16, msix_vectors: u16, isr: IsrStatus) -> Self {
        isr.set(0);
        CommonCfg {
            offered,
            num_queues,
            msix_vectors,
            status: StatusMachine::default(),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            negotiated: 0,
            config_msix_vector: NO_VECTOR,
            queue_select: 0,
            isr,
            config_generation: 0,
        }
    }

    /// Device reset (2.4): every register back to its reset value.
    pub fn reset(&mut self) {
        *self = CommonCfg::new(
            self.offered,
            self.num_queues,
            self.msix_vectors,
            self.isr.clone(),
        );
    }

    /// Feature bits the device offers.
    /// Changes the offered set (a quirk switched on a live device): drivers that negotiate
    /// from now on see it; features already negotiated stay.
    pub fn set_offered(&mut self, offered: u64) {
        self.offered = offered;
    }

    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Feature bits negotiated at FEATURES_OK (0 before).
    pub fn negotiated(&self) -> u64 {
        self.negotiated
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.negotiated & (1u64 << bit) != 0
    }

    /// device_status.
    pub fn status(&self) -> &StatusMachine {
        &self.status
    }

    /// Sets DEVICE_NEEDS_RESET (2.1.2).
    pub fn set_needs_reset(&mut self) {
        self.status.set_needs_reset();
    }

    /// The configuration change vector.
    pub fn config_msix_vector(&self) -> u16 {
        self.config_msix_vector
    }

    /// Sets ISR bits (4.1.4.5: bit 0 queue, bit 1 configuration change).
    pub fn raise_isr(&mut self, bits: u8) {
        self.isr.raise(bits);
    }

    /// Reads and clears the ISR (4.1.4.5.1).
    pub fn take_isr(&mut self) -> u8 {
        self.isr.take()
    }

    /// The device configuration changed (2.5.1: config_generation changes).
    pub fn bump_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The queue the queue_* registers address, if it exists.
    fn selected(&self) -> Option<u16> {
        (self.queue_select < self.num_queues).then_some(self.queue_select)
    }

    /// Decodes a read of register `reg`. A queue register of a queue that does not exist reads
    /// 0 (4.1.4.3: "queue_size ... 0 if the queue is unavailable").
    pub(crate) fn read(&self, reg: u64) -> CommonRead {
        let half = |v: u64, select: u32| match select {
            0 => v & u64::from(u32::MAX),
            1 => v >> 32,
            _ => 0,
        };
        CommonRead::Value(match reg {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select.into(),
            common::DEVICE_FEATURE => half(self.offered, self.device_feature_select),
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select.into(),
            common::DRIVER_FEATURE => half(self.driver_features, self.driver_feature_select),
            common::CONFIG_MSIX_VECTOR => self.config_msix_vector.into(),
            common::NUM_QUEUES => self.num_queues.into(),
            common::DEVICE_STATUS => self.status.value().into(),
            common::CONFIG_GENERATION => self.config_generation.into(),
            common::QUEUE_SELECT => self.queue_select.into(),
            _ => {
                return self
                    .selected()
                    .map_or(CommonRead::Value(0), CommonRead::Queue)
            }
        })
    }

    /// Applies a write of `val` to register `reg`.
    pub(crate) fn write(&mut self, reg: u64, val: u64) -> CommonWrite {
        match reg {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = val as u32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = val as u32,
            common::DRIVER_FEATURE => {
                // 3.1.1: features are written before FEATURES_OK and never after it.
                if self.status.features_ok() || self.driver_feature_select > 1 {
                    return CommonWrite::Ignored;
                }
                let shift = 32 * self.driver_feature_select;
                let half = u64::from(u32::MAX);
                self.driver_features =
                    (self.driver_features & !(half << shift)) | ((val & half) << shift);
            }
            common::CONFIG_MSIX_VECTOR => {
                // 4.1.5.1.2: an invalid vector reads back NO_VECTOR (DPDK checks for 0xFFFF).
                let v = val as u16;
                self.config_msix_vector = if v < self.msix_vectors { v } else { NO_VECTOR };
            }
            common::DEVICE_STATUS => return CommonWrite::Status(self.write_status(val as u8)),
            common::QUEUE_SELECT => self.queue_select = val as u16,
            _ => {
                return self
                    .selected()
                    .map_or(CommonWrite::Ignored, CommonWrite::Queue)
            }
        }
        CommonWrite::Done
    }

    /// A device_status write through the status machine; FEATURES_OK latches the driver's
    /// features when they are acceptable (3.1.1 step 5-6).
    fn write_status(&mut self, v: u8) -> StatusChange {
        let (driver, offered) = (self.driver_features, self.offered);
        let change = self
            .status
            .write(v, || validate_features(driver, offered).is_ok());
        if change == StatusChange::FeaturesAccepted {
            self.negotiated = driver;
        }
        change
    }

    /// Why the driver's current feature set would be refused, if it would.
    pub fn feature_error(&self) -> Option<FeatureError> {
        validate_features(self.driver_features, self.offered).err()
    }

    // ------------------------------------------------------------ device-state stream section

    /// Writes the `VIRT` body.
    pub(crate) fn save(&self, w: &mut Writer) {
        w.u8(self.status.value());
        w.u32(self.device_feature_select);
        w.u32(self.driver_feature_select);
        w.u64(self.driver_features);
        w.u64(self.negotiated);
        w.u16(self.config_msix_vector);
        w.u16(self.queue_select);
        w.u8(self.isr.peek());
        w.u8(self.config_generation);
    }

    /// Reads a `VIRT` body and checks what holds on any device.
    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<CommonImage, SnapshotError> {
        let v = CommonImage {
            status: r.u8()?,
            device_feature_select: r.u32()?,
            driver_feature_select: r.u32()?,
            driver_features: r.u64()?,
            negotiated: r.u64()?,
            config_msix_vector: r.u16()?,
            queue_select: r.u16()?,
            isr: r.u8()?,
            config_generation: r.u8()?,
        };
        r.finish()?;
        if v.isr & !(isr::QUEUE | isr::CONFIG) != 0 {
            return Err(invalid("isr", format!("{:#x}", v.isr)));
        }
        if v.features_ok() && v.negotiated != v.driver_features {
            return Err(invalid(
                "negotiated features",
                format!(
                    "{:#x} after FEATURES_OK with driver features {:#x}",
                    v.negotiated, v.driver_features
                ),
            ));
        }
        if !v.features_ok() && v.negotiated != 0 {
            return Err(invalid(
                "negotiated features",
                format!("{:#x} without FEATURES_OK", v.negotiated),
            ));
        }
        Ok(v)
    }

    /// Checks an image against this device (before anything is touched).
    pub(crate) fn check(&self, v: &CommonImage) -> Result<(), SnapshotError> {
        let nvec = self.msix_vectors;
        if v.config_msix_vector != NO_VECTOR && v.config_msix_vector >= nvec {
            return Err(invalid(
                "config_msix_vector",
                format!("{} with {nvec} vectors", v.config_msix_vector),
            ));
        }
        if v.features_ok() {
            validate_features(v.driver_features, self.offered)
                .map_err(|e| invalid("negotiated features", e.to_string()))?;
        }
        Ok(())
    }

    /// Rebuilds the registers (just reset) from a checked image; device_status by replaying
    /// the driver's init sequence through the status machine, in the table's order, so only
    /// values a driver can reach are accepted.
    pub(crate) fn restore(&mut self, v: &CommonImage) -> Result<(), SnapshotError> {
        self.device_feature_select = v.device_feature_select;
        self.driver_feature_select = v.driver_feature_select;
        self.driver_features = v.driver_features;
        let (driver, offered) = (v.driver_features, self.offered);
        let mut cur = 0u8;
        for step in STATUS_STEPS.iter().rev() {
            if v.status & step.bit == 0 {
                continue;
            }
            cur |= step.bit;
            match self
                .status
                .write(cur, || validate_features(driver, offered).is_ok())
            {
                StatusChange::Rejected | StatusChange::FeaturesRefused => {
                    return Err(invalid(
                        "device_status",
                        format!("{:#x} is not reachable by a driver", v.status),
                    ));
                }
                _ => {}
            }
        }
        if v.status & st::DEVICE_NEEDS_RESET != 0 {
            self.status.set_needs_reset();
        }
        if self.status.value() != v.status {
            return Err(invalid(
                "device_status",
                format!("{:#x} has bits no driver sets", v.status),
            ));
        }
        self.negotiated = v.negotiated;
        self.config_msix_vector = v.config_msix_vector;
        self.queue_select = v.queue_select;
        self.isr.set(v.isr);
        self.config_generation = v.config_generation;
        Ok(())
    }
}
