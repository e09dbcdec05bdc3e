//! Device profiles: which features a device offers (and, optionally, device parameters it
//! fixes), as data.
//!
//! A profile names a subset of [`crate::virtio::OFFERED_FEATURES`], the features the model
//! implements. Two are built in: `full` (the whole table, so a feature added to the table is
//! in it) and `ifcvf` (what the real IFC VF drivers accept, see [`IFCVF_FEATURES`]). Others
//! come from files (`vdpa-emu --profile FILE.toml`, parsed in the harness) and are checked
//! here with [`Profile::new`]: every name known, VERSION_1 present, the dependencies of virtio
//! 1.2 5.1.3.1 met, parameters in range. No I/O happens here.

use crate::layout::MAX_QUEUE_PAIRS;
use crate::lm::LmLayout;
use crate::virtio::{bits, find_feature, offered_mask, unmet_requirement, OFFERED_FEATURES};

/// A device's feature set and the parameters it fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Short name (`full`, `ifcvf`, or the file's `name`).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Where the feature set comes from (driver file and symbol, spec section, datasheet).
    pub source: String,
    /// The offered feature bits.
    pub features: u64,
    /// Device parameters the profile fixes (None: the command line's or the default).
    pub params: ProfileParams,
}

/// Device parameters a profile may fix: the ones the model has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileParams {
    /// Queue pairs the device has (max_virtqueue_pairs; 1..=32).
    pub queue_pairs: Option<u16>,
    /// Largest queue size (a power of two, 2..=32768).
    pub queue_size_max: Option<u16>,
    /// MTU in the device config (68..=65535).
    pub mtu: Option<u16>,
    /// LM block layout.
    pub lm_layout: Option<LmLayout>,
}

/// Why a profile is not a device the model can be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("{field}: unknown feature {name:?}; the model implements: {known}")]
    UnknownFeature {
        field: String,
        name: String,
        known: String,
    },
    #[error("{field}: {name} is listed twice")]
    Duplicate { field: String, name: String },
    #[error("features: VIRTIO_F_VERSION_1 is missing: the model is a modern-only device (virtio 1.2 6.1) and no driver can accept a set without it")]
    NoVersion1,
    #[error("features: {rule}, which the profile does not offer (virtio 1.2 5.1.3.1: a device MUST NOT offer a feature whose requirement it does not offer)")]
    Requirement { rule: String },
    #[error("{field}: {value} is out of range ({range})")]
    OutOfRange {
        field: &'static str,
        value: u64,
        range: &'static str,
    },
    #[error(
        "name: {0:?} is not a profile name (letters, digits, '-', '_', '.'; 1 to 64 characters)"
    )]
    BadName(String),
    #[error("unknown profile {name:?}; the built-in profiles are: {known} (or give a .toml file)")]
    UnknownBuiltin { name: String, known: String },
}

/// The `ifcvf` profile's features: what both real IFC VF drivers accept from the device.
///
/// - Linux drivers/vdpa/ifcvf/ifcvf_base.h `IFCVF_SUPPORTED_FEATURES` (later
///   `IFCVF_NET_SUPPORTED_FEATURES`), which ifcvf_main.c `ifcvf_vdpa_get_features` masked the
///   device's features with: MAC, ANY_LAYOUT, VERSION_1, STATUS, ORDER_PLATFORM,
///   ACCESS_PLATFORM (IOMMU_PLATFORM), MRG_RXBUF. Current Linux
///   (`ifcvf_vdpa_get_device_features`) passes the device's features through.
/// - DPDK drivers/vdpa/ifc/ifcvf_vdpa.c `ifcvf_pci_probe` takes the device's features
///   (base/ifcvf.c `ifcvf_get_features`), hides VIRTIO_F_IOMMU_PLATFORM from vhost and adds
///   GUEST_ANNOUNCE, CTRL_VQ and STATUS for the vhost-user frontend (`dev_info[IFCVF_NET]`);
///   `ifcvf_config_features` then writes negotiated & device features: it accepts whatever
///   the device offers.
///
/// So the set both drivers accept is Linux's mask. Of it the model implements MAC, STATUS,
/// MRG_RXBUF, VERSION_1 and ACCESS_PLATFORM; ANY_LAYOUT (bit 27) is a legacy-interface bit with
/// no meaning for a modern-only device (virtio 1.2 6.3), and ORDER_PLATFORM (bit 36) is not
/// modelled. Neither driver handles the packed ring (the 16-bit LM ring state has no wrap
/// counter), so VIRTIO_F_RING_PACKED is not in it.
pub const IFCVF_FEATURES: &[&str] = &[
    "VIRTIO_NET_F_MAC",
    "VIRTIO_NET_F_STATUS",
    "VIRTIO_NET_F_MRG_RXBUF",
    "VIRTIO_F_VERSION_1",
    "VIRTIO_F_ACCESS_PLATFORM",
];

/// The built-in profiles' names, in listing order.
pub const BUILTIN_NAMES: &[&str] = &["full", "ifcvf"];

impl Profile {
    /// A checked profile from feature names (full or short, case-insensitive) and parameters.
    /// Errors name the field: `features[3]`, `queue_pairs`, ...
    pub fn new(
        name: &str,
        description: &str,
        source: &str,
        features: &[&str],
        params: ProfileParams,
    ) -> Result<Profile, ProfileError> {
        check_name(name)?;
        let mut mask = 0u64;
        for (i, n) in features.iter().enumerate() {
            let field = format!("features[{i}]");
            let f = find_feature(n).ok_or_else(|| ProfileError::UnknownFeature {
                field: field.clone(),
                name: (*n).to_string(),
                known: OFFERED_FEATURES
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if mask & (1u64 << f.bit) != 0 {
                return Err(ProfileError::Duplicate {
                    field,
                    name: f.name.to_string(),
                });
            }
            mask |= 1u64 << f.bit;
        }
        check_mask(mask)?;
        check_params(&params)?;
        Ok(Profile {
            name: name.to_string(),
            description: description.to_string(),
            source: source.to_string(),
            features: mask,
            params,
        })
    }

    /// `full`: every feature the model implements (the whole of `OFFERED_FEATURES`).
    pub fn full() -> Profile {
        Profile {
            name: "full".into(),
            description: "every feature the model implements".into(),
            source:
                "bar-registers/src/virtio.rs OFFERED_FEATURES (each entry cites its spec section)"
                    .into(),
            features: offered_mask(),
            params: ProfileParams::default(),
        }
    }

    /// `ifcvf`: the feature set the real IFC VF drivers accept ([`IFCVF_FEATURES`]).
    pub fn ifcvf() -> Profile {
        Profile::new(
            "ifcvf",
            "the features both real IFC VF drivers (Linux ifcvf, DPDK ifc vDPA) accept",
            "Linux drivers/vdpa/ifcvf/ifcvf_base.h IFCVF_SUPPORTED_FEATURES (masked in ifcvf_main.c \
             ifcvf_vdpa_get_features) intersected with what the model implements; DPDK \
             drivers/vdpa/ifc/ifcvf_vdpa.c ifcvf_pci_probe and base/ifcvf.c ifcvf_config_features \
             accept every device feature",
            IFCVF_FEATURES,
            ProfileParams::default(),
        )
        .expect("the ifcvf profile is valid (a unit test checks it)")
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Profile, ProfileError> {
        match name {
            "full" => Ok(Profile::full()),
            "ifcvf" => Ok(Profile::ifcvf()),
            _ => Err(ProfileError::UnknownBuiltin {
                name: name.to_string(),
                known: BUILTIN_NAMES.join(", "),
            }),
        }
    }

    /// Every built-in profile.
    pub fn builtins() -> Vec<Profile> {
        BUILTIN_NAMES
            .iter()
            .map(|n| Profile::builtin(n).expect("a built-in name"))
            .collect()
    }

    /// This profile less the packed ring (`serve --no-packed`): the name says so.
    pub fn without_packed(mut self) -> Profile {
        let bit = 1u64 << bits::RING_PACKED;
        if self.features & bit != 0 {
            self.features &= !bit;
            self.name = format!("{}-no-packed", self.name);
            self.description = format!("{} (VIRTIO_F_RING_PACKED removed)", self.description);
        }
        self
    }

    /// The rules [`Profile::new`] enforces, for a profile whose fields were set by hand: only
    /// features the model implements, VERSION_1, virtio 1.2 5.1.3.1, parameters in range.
    pub fn check(&self) -> Result<(), ProfileError> {
        let unknown = self.features & !offered_mask();
        if unknown != 0 {
            return Err(ProfileError::UnknownFeature {
                field: "features".into(),
                name: format!("bit {}", unknown.trailing_zeros()),
                known: OFFERED_FEATURES
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        check_mask(self.features)?;
        check_params(&self.params)
    }

    /// Whether feature `bit` is in the profile.
    pub fn offers(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1u64 << bit) != 0
    }

    /// Every feature the model implements with whether this profile offers it, in table order.
    pub fn table(&self) -> impl Iterator<Item = (&'static crate::virtio::Feature, bool)> + '_ {
        OFFERED_FEATURES.iter().map(|f| (f, self.offers(f.bit)))
    }
}

impl Default for Profile {
    /// The default device offers everything (`full`).
    fn default() -> Self {
        Profile::full()
    }
}

fn check_name(name: &str) -> Result<(), ProfileError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ProfileError::BadName(name.to_string()))
    }
}

/// The rules a device's offered set follows: VERSION_1, then 5.1.3.1.
pub fn check_mask(mask: u64) -> Result<(), ProfileError> {
    if mask & (1u64 << bits::VERSION_1) == 0 {
        return Err(ProfileError::NoVersion1);
    }
    if let Some(r) = unmet_requirement(mask) {
        return Err(ProfileError::Requirement { rule: r.describe() });
    }
    Ok(())
}

fn check_params(p: &ProfileParams) -> Result<(), ProfileError> {
    if let Some(q) = p.queue_pairs {
        if !(1..=MAX_QUEUE_PAIRS).contains(&q) {
            return Err(ProfileError::OutOfRange {
                field: "queue_pairs",
                value: q.into(),
                range: "1..=32",
            });
        }
    }
    if let Some(s) = p.queue_size_max {
        if !(2..=32768).contains(&s) || !s.is_power_of_two() {
            return Err(ProfileError::OutOfRange {
                field: "queue_size_max",
                value: s.into(),
                range: "a power of two, 2..=32768",
            });
        }
    }
    if let Some(m) = p.mtu {
        if m < 68 {
            return Err(ProfileError::OutOfRange {
                field: "mtu",
                value: m.into(),
                range: "68..=65535",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{feature_name, FEATURE_REQUIREMENTS};

    #[test]
    fn builtins_are_valid_and_full_is_the_whole_table() {
        for p in Profile::builtins() {
            check_mask(p.features).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(p.features & !offered_mask() == 0, "{}", p.name);
        }
        assert_eq!(Profile::full().features, offered_mask());
        assert_eq!(
            Profile::full().table().filter(|(_, on)| *on).count(),
            OFFERED_FEATURES.len()
        );
    }

    #[test]
    fn ifcvf_is_linux_ifcvf_mask_within_the_model() {
        let p = Profile::ifcvf();
        let names: Vec<&str> = (0..64)
            .filter(|b| p.offers(*b))
            .map(|b| feature_name(b).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "VIRTIO_NET_F_MAC",
                "VIRTIO_NET_F_MRG_RXBUF",
                "VIRTIO_NET_F_STATUS",
                "VIRTIO_F_VERSION_1",
                "VIRTIO_F_ACCESS_PLATFORM"
            ]
        );
        assert!(!p.offers(bits::RING_PACKED));
    }

    #[test]
    fn short_and_full_names_are_the_same_feature() {
        let a = Profile::new("a", "", "", &["version_1", "MAC"], Default::default()).unwrap();
        let b = Profile::new(
            "b",
            "",
            "",
            &["VIRTIO_F_VERSION_1", "VIRTIO_NET_F_MAC"],
            Default::default(),
        )
        .unwrap();
        assert_eq!(a.features, b.features);
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let e = |f: &[&str], p: ProfileParams| Profile::new("x", "", "", f, p).unwrap_err();
        let d = ProfileParams::default();
        assert!(matches!(
            e(&["VERSION_1", "NO_SUCH"], d),
            ProfileError::UnknownFeature { ref field, .. } if field == "features[1]"
        ));
        assert_eq!(e(&["MAC"], d), ProfileError::NoVersion1);
        assert!(
            matches!(e(&["VERSION_1", "MQ"], d), ProfileError::Requirement { ref rule }
            if rule == "VIRTIO_NET_F_MQ requires VIRTIO_NET_F_CTRL_VQ")
        );
        assert!(matches!(
            e(&["VERSION_1", "mac", "VIRTIO_NET_F_MAC"], d),
            ProfileError::Duplicate { ref field, .. } if field == "features[2]"
        ));
        let v1 = &["VERSION_1"][..];
        for (p, field) in [
            (
                ProfileParams {
                    queue_pairs: Some(33),
                    ..d
                },
                "queue_pairs",
            ),
            (
                ProfileParams {
                    queue_size_max: Some(100),
                    ..d
                },
                "queue_size_max",
            ),
            (ProfileParams { mtu: Some(10), ..d }, "mtu"),
        ] {
            assert!(
                matches!(e(v1, p), ProfileError::OutOfRange { field: f, .. } if f == field),
                "{field}"
            );
        }
        assert!(matches!(
            Profile::new("a b", "", "", v1, d),
            Err(ProfileError::BadName(_))
        ));
        assert!(e(&["VERSION_1", "NO_SUCH"], d)
            .to_string()
            .starts_with("features[1]: unknown feature \"NO_SUCH\""));
    }

    /// Each rule of the 5.1.3.1 table is enforced in both directions: the feature alone is
    /// refused, the feature with (each of) its requirement(s) accepted, as far as the
    /// requirement itself needs nothing more.
    #[test]
    fn every_requirement_is_enforced() {
        let v1 = 1u64 << bits::VERSION_1;
        for r in FEATURE_REQUIREMENTS {
            let f = 1u64 << r.feature.0;
            assert!(unmet_requirement(v1 | f).is_some(), "{}", r.describe());
            for n in r.any_of {
                let with = v1 | f | 1u64 << n.0;
                assert!(
                    unmet_requirement(with).is_none_or(|u| u.feature.0 == n.0),
                    "{} with {}",
                    r.describe(),
                    n.1
                );
            }
        }
    }

    #[test]
    fn check_refuses_hand_made_profiles() {
        for p in Profile::builtins() {
            p.check().unwrap();
        }
        let mut p = Profile::full();
        // VIRTIO_F_ANY_LAYOUT: a legacy-interface bit a modern-only model never implements.
        p.features |= 1 << 27;
        assert!(crate::virtio::feature_name(27).is_none());
        assert!(matches!(
            p.check(),
            Err(ProfileError::UnknownFeature { ref name, .. }) if name == "bit 27"
        ));
        let mut p = Profile::full();
        p.features &= !(1 << bits::CTRL_VQ);
        assert!(matches!(p.check(), Err(ProfileError::Requirement { .. })));
        let mut p = Profile::ifcvf();
        p.params.queue_pairs = Some(0);
        assert!(matches!(p.check(), Err(ProfileError::OutOfRange { .. })));
    }

    #[test]
    fn without_packed_says_so() {
        let p = Profile::full().without_packed();
        assert!(!p.offers(bits::RING_PACKED));
        assert_eq!(p.name, "full-no-packed");
        let q = Profile::ifcvf().without_packed();
        assert_eq!(q, Profile::ifcvf(), "nothing to remove: unchanged");
    }

    #[test]
    fn unknown_builtin_lists_the_builtins() {
        let e = Profile::builtin("nope").unwrap_err().to_string();
        assert!(e.contains("full, ifcvf"), "{e}");
    }
}
