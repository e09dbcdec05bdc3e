//! The virtio device status state machine, driven by the transition table [`STATUS_STEPS`],
//! and feature negotiation (virtio 1.2 sections 2.1, 2.2 and 3.1.1).

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

    /// Applies a driver write by the rules of [`STATUS_STEPS`]. `features_acceptable` is
    /// consulted only when FEATURES_OK is newly set.
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
        let steps = || STATUS_STEPS.iter().filter(|s| added & s.bit != 0);
        if let Some(step) = steps().find(|s| s.any_time) {
            self.status = new | dev;
            return step.outcome;
        }
        if steps().any(|s| new & s.requires != s.requires || old & s.after != s.after) {
            return StatusChange::Rejected;
        }
        let outcome = steps().next().map_or(StatusChange::Accepted, |s| s.outcome);
        if outcome == StatusChange::FeaturesAccepted && !features_acceptable() {
            // 3.1.1 step 6: the device does not accept the features: FEATURES_OK stays clear.
            self.status = (new & !st::FEATURES_OK) | dev;
            return StatusChange::FeaturesRefused;
        }
        self.status = new | dev;
        outcome
    }
}

/// A device_status bit a driver sets, when it may set it, and what setting it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusStep {
    /// The bit.
    pub bit: u8,
    /// Bits that must be set by this write or an earlier one.
    pub requires: u8,
    /// Bits that must have been set (and so accepted) by an earlier write.
    pub after: u8,
    /// May be set at any time, whatever else the write does.
    pub any_time: bool,
    /// What newly setting it means (the first matching step of the table decides).
    pub outcome: StatusChange,
    /// The rule, quoted.
    pub spec: &'static str,
}

/// The device_status transitions a driver may make (virtio 1.2 2.1 and the initialization
/// sequence of 3.1.1), in the order their outcomes take precedence. A write that clears a bit
/// (2.1.2) or sets a bit before what its row requires is [`StatusChange::Rejected`]; bits
/// with no row (reserved) are stored. Writing 0 is a reset (2.4); DEVICE_NEEDS_RESET is the
/// device's own bit (2.1.2) and no driver write changes it.
pub const STATUS_STEPS: [StatusStep; 5] = [
    StatusStep {
        bit: st::FAILED,
        requires: 0,
        after: 0,
        any_time: true,
        outcome: StatusChange::Failed,
        spec: "virtio 1.2 3.1.1: \"If any of these steps go irrecoverably wrong, the driver \
               SHOULD set the FAILED status bit to indicate that it has given up on the device\"",
    },
    StatusStep {
        bit: st::DRIVER_OK,
        requires: 0,
        after: st::FEATURES_OK,
        any_time: false,
        outcome: StatusChange::DriverOk,
        spec: "virtio 1.2 3.1.1 step 8: \"Set the DRIVER_OK status bit. At this point the \
               device is 'live'\", after step 6 re-read FEATURES_OK",
    },
    StatusStep {
        bit: st::FEATURES_OK,
        requires: st::ACKNOWLEDGE | st::DRIVER,
        after: 0,
        any_time: false,
        outcome: StatusChange::FeaturesAccepted,
        spec: "virtio 1.2 3.1.1 step 5: \"Set the FEATURES_OK status bit. The driver MUST NOT \
               accept new feature bits after this step.\"",
    },
    StatusStep {
        bit: st::DRIVER,
        requires: st::ACKNOWLEDGE,
        after: 0,
        any_time: false,
        outcome: StatusChange::Accepted,
        spec: "virtio 1.2 3.1.1 step 3: \"Set the DRIVER status bit: the guest OS knows how to \
               drive the device.\"",
    },
    StatusStep {
        bit: st::ACKNOWLEDGE,
        requires: 0,
        after: 0,
        any_time: false,
        outcome: StatusChange::Accepted,
        spec: "virtio 1.2 3.1.1 step 2: \"Set the ACKNOWLEDGE status bit: the guest OS has \
               noticed the device.\"",
    },
];

/// Why a feature set is refused at FEATURES_OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    #[error("driver accepted feature bits the device does not offer: {0:#x}")]
    NotOffered(u64),
    #[error("VIRTIO_F_VERSION_1 not accepted: this is a modern-only device (virtio 1.2 6.1)")]
    NoVersion1,
    #[error("{}, which the driver did not accept (virtio 1.2 5.1.3.1)", rule.describe())]
    Unmet {
        bit: u32,
        rule: &'static bar_registers::virtio::Requirement,
    },
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
    match bar_registers::virtio::unmet_requirement(driver) {
        Some(r) => Err(FeatureError::Unmet {
            bit: r.feature.0,
            rule: r,
        }),
        None => Ok(()),
    }
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
    fn every_status_bit_a_driver_sets_has_one_quoted_rule() {
        let mut seen = 0u8;
        for s in STATUS_STEPS {
            assert_eq!(seen & s.bit, 0, "{:#x} twice", s.bit);
            seen |= s.bit;
            assert!(s.spec.starts_with("virtio 1.2 "), "{}", s.spec);
        }
        assert_eq!(
            seen,
            st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK | st::FAILED
        );
    }

    #[test]
    fn feature_rules() {
        let validate_features = |d| validate_features(d, bar_registers::virtio::offered_mask());
        let v1 = 1u64 << bits::VERSION_1;
        assert!(validate_features(v1).is_ok());
        assert_eq!(validate_features(0), Err(FeatureError::NoVersion1));
        assert!(matches!(
            validate_features(v1 | 1 << bits::MQ),
            Err(FeatureError::Unmet { bit: bits::MQ, .. })
        ));
        assert!(validate_features(v1 | 1 << bits::MQ | 1 << bits::CTRL_VQ).is_ok());
        assert!(matches!(
            validate_features(v1 | 1 << bits::HOST_UFO),
            Err(FeatureError::NotOffered(x)) if x == 1 << bits::HOST_UFO
        ));
    }
}
