//! The virtio device status state machine and feature negotiation (virtio 1.2 sections 2.1,
//! 2.2 and 3.1.1).

use bar_registers::virtio::{bits, device_status as st};

/// Phase of the driver initialisation sequence (3.1.1), derived from the status bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// 0: reset; 4.1.4.3.1 "the device MUST present 0 in device_status once reset completes".
    Reset,
    /// ACKNOWLEDGE: the guest noticed the device.
    Acknowledged,
    /// DRIVER: a driver is bound.
    Driver,
    /// FEATURES_OK: features latched; queues may be set up.
    FeaturesOk,
    /// DRIVER_OK: the device is live.
    DriverOk,
    /// FAILED: the driver gave up.
    Failed,
}

/// Outcome of a device_status write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusChange {
    /// Written 0: reset the device (2.4).
    Reset,
    /// Bits accepted, nothing else happens.
    Accepted,
    /// FEATURES_OK set and the features were acceptable.
    FeaturesAccepted,
    /// FEATURES_OK requested but refused: the bit does not stick (3.1.1 step 6).
    FeaturesRefused,
    /// DRIVER_OK set: the datapath starts.
    DriverOk,
    /// FAILED set: the datapath stops.
    Failed,
    /// The write broke a rule (cleared a bit, skipped a step): ignored.
    Rejected,
}

/// The device_status register and its rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusMachine {
    status: u8,
}

impl StatusMachine {
    /// Current register value.
    pub fn value(&self) -> u8 {
        self.status
    }

    /// Phase derived from the bits.
    pub fn phase(&self) -> Phase {
        let s = self.status;
        if s & st::FAILED != 0 {
            Phase::Failed
        } else if s & st::DRIVER_OK != 0 {
            Phase::DriverOk
        } else if s & st::FEATURES_OK != 0 {
            Phase::FeaturesOk
        } else if s & st::DRIVER != 0 {
            Phase::Driver
        } else if s & st::ACKNOWLEDGE != 0 {
            Phase::Acknowledged
        } else {
            Phase::Reset
        }
    }

    /// Whether the datapath runs (DRIVER_OK, not FAILED, not NEEDS_RESET).
    pub fn running(&self) -> bool {
        self.status & (st::DRIVER_OK | st::FAILED | st::DEVICE_NEEDS_RESET) == st::DRIVER_OK
    }

    /// Whether FEATURES_OK is set.
    pub fn features_ok(&self) -> bool {
        self.status & st::FEATURES_OK != 0
    }

    /// Sets DEVICE_NEEDS_RESET (device-owned bit, 2.1.2).
    pub fn set_needs_reset(&mut self) {
        self.status |= st::DEVICE_NEEDS_RESET;
    }

    /// Whether DEVICE_NEEDS_RESET is set.
    pub fn needs_reset(&self) -> bool {
        self.status & st::DEVICE_NEEDS_RESET != 0
    }

    /// Back to 0.
    pub fn reset(&mut self) {
        self.status = 0;
    }

    /// Applies a driver write. `features_acceptable` is consulted only when FEATURES_OK is newly set.
    pub fn write(&mut self, new: u8, features_acceptable: impl FnOnce() -> bool) -> StatusChange {
        if new == 0 {
            return StatusChange::Reset;
        }
        // NEEDS_RESET is the device's bit: a driver write neither sets nor clears it.
        let dev = self.status & st::DEVICE_NEEDS_RESET;
        let old = self.status & !st::DEVICE_NEEDS_RESET;
        let new = new & !st::DEVICE_NEEDS_RESET;
        // 2.1.2: "The driver MUST NOT clear a device status bit."
        if new & old != old {
            return StatusChange::Rejected;
        }
        let added = new & !old;
        if added & st::FAILED != 0 {
            self.status = new | dev;
            return StatusChange::Failed;
        }
        // 3.1.1: ACKNOWLEDGE, then DRIVER, then FEATURES_OK, then DRIVER_OK. FEATURES_OK must
        // have been accepted by an earlier write (step 6 re-reads it) before DRIVER_OK is set.
        let needs = |bit: u8, prereq: u8| added & bit != 0 && new & prereq != prereq;
        if needs(st::DRIVER, st::ACKNOWLEDGE)
            || needs(st::FEATURES_OK, st::ACKNOWLEDGE | st::DRIVER)
            || (added & st::DRIVER_OK != 0 && old & st::FEATURES_OK == 0)
        {
            return StatusChange::Rejected;
        }
        if added & st::FEATURES_OK != 0 && !features_acceptable() {
            self.status = (new & !st::FEATURES_OK) | dev;
            return StatusChange::FeaturesRefused;
        }
        self.status = new | dev;
        if added & st::DRIVER_OK != 0 {
            StatusChange::DriverOk
        } else if added & st::FEATURES_OK != 0 {
            StatusChange::FeaturesAccepted
        } else {
            StatusChange::Accepted
        }
    }
}

/// Why a feature set is refused at FEATURES_OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    #[error("driver accepted feature bits the device does not offer: {0:#x}")]
    NotOffered(u64),
    #[error("VIRTIO_F_VERSION_1 not accepted: this is a modern-only device (virtio 1.2 6.1)")]
    NoVersion1,
    #[error("feature bit {bit} requires VIRTIO_NET_F_CTRL_VQ (virtio 1.2 5.1.3.1)")]
    NeedsCtrlVq { bit: u32 },
}

/// Checks a driver's feature set against what the device offers and the dependency rules.
pub fn validate_features(driver: u64, offered: u64) -> Result<(), FeatureError> {
    let extra = driver & !offered;
    if extra != 0 {
        return Err(FeatureError::NotOffered(extra));
    }
    if driver & (1 << bits::VERSION_1) == 0 {
        return Err(FeatureError::NoVersion1);
    }
    if driver & (1 << bits::CTRL_VQ) == 0 {
        for bit in [
            bits::CTRL_RX,
            bits::GUEST_ANNOUNCE,
            bits::MQ,
            bits::CTRL_MAC_ADDR,
        ] {
            if driver & (1 << bit) != 0 {
                return Err(FeatureError::NeedsCtrlVq { bit });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_sequence() {
        let mut m = StatusMachine::default();
        assert_eq!(m.write(st::ACKNOWLEDGE, || true), StatusChange::Accepted);
        assert_eq!(
            m.write(st::ACKNOWLEDGE | st::DRIVER, || true),
            StatusChange::Accepted
        );
        assert_eq!(m.write(0x0B, || false), StatusChange::FeaturesRefused);
        assert_eq!(m.value(), 0x03);
        assert_eq!(m.write(0x0B, || true), StatusChange::FeaturesAccepted);
        assert_eq!(m.write(0x0F, || true), StatusChange::DriverOk);
        assert!(m.running());
        assert_eq!(
            m.write(0x0B, || true),
            StatusChange::Rejected,
            "clearing DRIVER_OK"
        );
        m.set_needs_reset();
        assert!(!m.running());
        assert_eq!(m.write(0x0F, || true), StatusChange::Accepted);
        assert!(m.needs_reset(), "driver writes keep NEEDS_RESET");
        assert_eq!(m.write(0, || true), StatusChange::Reset);
    }

    #[test]
    fn skipped_steps_rejected() {
        let mut m = StatusMachine::default();
        m.write(st::ACKNOWLEDGE | st::DRIVER, || true);
        assert_eq!(
            m.write(0x0F, || true),
            StatusChange::Rejected,
            "FEATURES_OK and DRIVER_OK in one write"
        );
        assert_eq!(m.value(), 0x03);
        m.reset();
        m.write(st::ACKNOWLEDGE | st::DRIVER, || true);
        assert_eq!(
            m.write(0x0F, || true),
            StatusChange::Rejected,
            "FEATURES_OK and DRIVER_OK in one write"
        );
        assert_eq!(m.value(), 0x03);
        m.reset();
        assert_eq!(m.write(st::DRIVER, || true), StatusChange::Rejected);
        assert_eq!(
            m.write(st::ACKNOWLEDGE | st::DRIVER | st::DRIVER_OK, || true),
            StatusChange::Rejected
        );
        assert_eq!(m.value(), 0);
    }

    #[test]
    fn feature_rules() {
        let validate_features = |d| validate_features(d, bar_registers::virtio::offered_mask());
        let v1 = 1u64 << bits::VERSION_1;
        assert!(validate_features(v1).is_ok());
        assert_eq!(validate_features(0), Err(FeatureError::NoVersion1));
        assert_eq!(
            validate_features(v1 | 1 << bits::MQ),
            Err(FeatureError::NeedsCtrlVq { bit: bits::MQ })
        );
        assert!(validate_features(v1 | 1 << bits::MQ | 1 << bits::CTRL_VQ).is_ok());
        assert!(matches!(
            validate_features(v1 | 1 << 0),
            Err(FeatureError::NotOffered(1))
        ));
    }
}
