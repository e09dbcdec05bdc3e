//! `--profile NAME|FILE` and `vdpa-emu profiles`: device profiles from the built-ins or from
//! TOML files (docs/profiles.md). The model and its checks are bar-registers' `profile`
//! module; this one reads files, resolves the parameters a profile fixes against the command
//! line, and renders the listing.

use bar_registers::{LmLayout, Profile, ProfileError, ProfileParams};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Why a profile could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProfileLoadError {
    #[error("profile {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {}: {msg}", path.display())]
    Toml { path: PathBuf, msg: String },
    #[error("profile {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: ProfileError,
    },
    #[error(transparent)]
    Builtin(#[from] ProfileError),
    #[error("{flag} {value} conflicts with profile {profile}, which fixes {field} = {fixed}")]
    Conflict {
        flag: &'static str,
        value: String,
        profile: String,
        field: &'static str,
        fixed: String,
    },
}

/// A profile file (docs/profiles.md): every key but `name` and `features` optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    source: String,
    features: Vec<String>,
    #[serde(default)]
    device: DeviceKeys,
}

/// `[device]`: the parameters a profile may fix.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceKeys {
    queue_pairs: Option<u16>,
    queue_size_max: Option<u16>,
    mtu: Option<u16>,
    lm_layout: Option<String>,
}

/// Whether `spec` names a file rather than a built-in profile: it has a `/` or ends in `.toml`.
pub fn is_file(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".toml")
}

/// A built-in profile by name, or the profile in a TOML file (see [`is_file`]).
pub fn load(spec: &str) -> Result<Profile, ProfileLoadError> {
    if is_file(spec) {
        load_file(Path::new(spec))
    } else {
        Ok(Profile::builtin(spec)?)
    }
}

/// The profile in a TOML file.
pub fn load_file(path: &Path) -> Result<Profile, ProfileLoadError> {
    let read = |source| ProfileLoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A regular file of sane size: never a device node or a FIFO that reads forever.
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(ProfileLoadError::Toml {
            path: path.to_path_buf(),
            msg: format!("not a regular file of at most {MAX_FILE} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_str(&text, path)
}

/// Largest profile file read.
const MAX_FILE: u64 = 1 << 20;

/// A profile from TOML text (`path` only names it in errors). Errors name the key: an
/// unknown or mistyped key (from toml), `features[i]` for a feature the model does not
/// implement, `features` for a set that breaks VERSION_1 or virtio 1.2 5.1.3.1,
/// `device.lm_layout` for an unknown layout, `queue_pairs` etc. for a value out of range.
pub fn parse_str(text: &str, path: &Path) -> Result<Profile, ProfileLoadError> {
    let f: ProfileFile = toml::from_str(text).map_err(|e| ProfileLoadError::Toml {
        path: path.to_path_buf(),
        msg: match e.span() {
            Some(sp) => {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                let src = text.lines().nth(line - 1).unwrap_or_default().trim();
                format!("line {line}, column {col} (`{src}`): {}", e.message())
            }
            None => e.message().to_string(),
        },
    })?;
    let lm_layout = match f.device.lm_layout.as_deref() {
        None => None,
        Some(s) => Some(LmLayout::parse(s).ok_or_else(|| ProfileLoadError::Toml {
            path: path.to_path_buf(),
            msg: format!("device.lm_layout: unknown LM layout {s:?}: use dpdk or linux"),
        })?),
    };
    let names: Vec<&str> = f.features.iter().map(String::as_str).collect();
    let source = if f.source.is_empty() {
        format!("file {}", path.display())
    } else {
        f.source
    };
    Profile::new(
        &f.name,
        &f.description,
        &source,
        &names,
        ProfileParams {
            queue_pairs: f.device.queue_pairs,
            queue_size_max: f.device.queue_size_max,
            mtu: f.device.mtu,
            lm_layout,
        },
    )
    .map_err(|source| ProfileLoadError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

/// A device parameter given by the command line (`cli`, None when not given) and perhaps
/// fixed by the profile: the profile's value, the command line's when it agrees, else an
/// error; `default` when neither has one.
pub fn resolve<T: PartialEq + Copy + std::fmt::Display>(
    p: &Profile,
    flag: &'static str,
    field: &'static str,
    cli: Option<T>,
    fixed: Option<T>,
    default: T,
) -> Result<T, ProfileLoadError> {
    match (cli, fixed) {
        (Some(c), Some(f)) if c != f => Err(ProfileLoadError::Conflict {
            flag,
            value: c.to_string(),
            profile: p.name.clone(),
            field,
            fixed: f.to_string(),
        }),
        (_, Some(f)) => Ok(f),
        (Some(c), None) => Ok(c),
        (None, None) => Ok(default),
    }
}

/// `--queue-pairs` against the profile (default 4 unless given).
pub fn queue_pairs(p: &Profile, cli: Option<u16>, default: u16) -> Result<u16, ProfileLoadError> {
    resolve(
        p,
        "--queue-pairs",
        "queue_pairs",
        cli,
        p.params.queue_pairs,
        default,
    )
}

/// `--lm-layout` against the profile (dpdk unless given).
pub fn lm_layout(p: &Profile, cli: Option<LmLayout>) -> Result<LmLayout, ProfileLoadError> {
    let n = resolve(
        p,
        "--lm-layout",
        "lm_layout",
        cli.map(LmLayout::name),
        p.params.lm_layout.map(LmLayout::name),
        LmLayout::Dpdk.name(),
    )?;
    Ok(LmLayout::parse(n).expect("a layout's own name"))
}

/// One feature of a profile listing.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureRow {
    pub name: &'static str,
    pub bit: u32,
    pub offered: bool,
    pub meaning: &'static str,
    pub source: &'static str,
}

/// The parameters a profile fixes, for a listing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ParamsJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_pairs: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_size_max: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lm_layout: Option<&'static str>,
}

/// A profile as `vdpa-emu profiles --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileJson {
    pub name: String,
    pub description: String,
    pub source: String,
    /// The offered set as a mask (`0x...`).
    pub features_mask: String,
    pub features: Vec<FeatureRow>,
    pub device: ParamsJson,
}

impl ProfileJson {
    pub fn of(p: &Profile) -> ProfileJson {
        ProfileJson {
            name: p.name.clone(),
            description: p.description.clone(),
            source: p.source.clone(),
            features_mask: format!("{:#x}", p.features),
            features: p
                .table()
                .map(|(f, offered)| FeatureRow {
                    name: f.name,
                    bit: f.bit,
                    offered,
                    meaning: f.meaning,
                    source: f.source,
                })
                .collect(),
            device: ParamsJson {
                queue_pairs: p.params.queue_pairs,
                queue_size_max: p.params.queue_size_max,
                mtu: p.params.mtu,
                lm_layout: p.params.lm_layout.map(LmLayout::name),
            },
        }
    }
}

/// `vdpa-emu profiles`: the built-ins, one line each.
pub fn list_table(profiles: &[Profile]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<12} {:>8}  description", "profile", "features");
    for p in profiles {
        let _ = writeln!(
            s,
            "{:<12} {:>8}  {}",
            p.name,
            p.features.count_ones(),
            p.description
        );
    }
    let _ = writeln!(
        s,
        "\n`vdpa-emu profiles NAME|FILE` shows one profile's features; docs/profiles.md has the file format."
    );
    s
}

/// `vdpa-emu profiles NAME|FILE`: every feature the model implements, offered or not.
pub fn show_table(p: &Profile) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "profile {}: {}", p.name, p.description);
    let _ = writeln!(s, "source: {}", p.source);
    let _ = writeln!(s, "offered features: {:#x}\n", p.features);
    let _ = writeln!(
        s,
        "{:<28} {:>3}  {:<7}  meaning",
        "feature", "bit", "offered"
    );
    for (f, on) in p.table() {
        let _ = writeln!(
            s,
            "{:<28} {:>3}  {:<7}  {}",
            f.name,
            f.bit,
            if on { "yes" } else { "no" },
            f.meaning
        );
    }
    let d = &p.params;
    let fixed: Vec<String> = [
        d.queue_pairs.map(|v| format!("queue_pairs = {v}")),
        d.queue_size_max.map(|v| format!("queue_size_max = {v}")),
        d.mtu.map(|v| format!("mtu = {v}")),
        d.lm_layout.map(|v| format!("lm_layout = {}", v.name())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _ = writeln!(
        s,
        "\ndevice parameters fixed: {}",
        if fixed.is_empty() {
            "none".to_string()
        } else {
            fixed.join(", ")
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bar_registers::virtio::bits;

    fn parse(t: &str) -> Result<Profile, ProfileLoadError> {
        parse_str(t, Path::new("t.toml"))
    }

    #[test]
    fn a_file_defines_a_profile() {
        let p = parse(
            r#"
name = "my-nic"
description = "two pairs"
features = ["VERSION_1", "ACCESS_PLATFORM", "mac", "CTRL_VQ", "MQ"]
[device]
queue_pairs = 2
lm_layout = "linux"
"#,
        )
        .unwrap();
        assert_eq!(p.name, "my-nic");
        assert!(p.offers(bits::MQ) && p.offers(bits::CTRL_VQ) && !p.offers(bits::RING_PACKED));
        assert_eq!(p.params.queue_pairs, Some(2));
        assert_eq!(p.params.lm_layout, Some(LmLayout::Linux));
        assert_eq!(p.source, "file t.toml");
    }

    #[test]
    fn broken_files_name_the_field() {
        for (text, want) in [
            (
                "name = \"x\"\nfeatures = [\"VERSION_1\", \"TURBO\"]",
                "features[1]: unknown feature \"TURBO\"",
            ),
            (
                "name = \"x\"\nfeatures = [\"MAC\"]",
                "VIRTIO_F_VERSION_1 is missing",
            ),
            (
                "name = \"x\"\nfeatures = [\"VERSION_1\", \"CTRL_RX\"]",
                "VIRTIO_NET_F_CTRL_RX requires VIRTIO_NET_F_CTRL_VQ",
            ),
            (
                "name = \"x\"\nfeatures = [\"VERSION_1\"]\nfeaturs = []",
                "featurs",
            ),
            ("features = [\"VERSION_1\"]", "name"),
            (
                "name = \"x\"\nfeatures = [\"VERSION_1\"]\n[device]\nlm_layout = \"bsd\"",
                "device.lm_layout",
            ),
            (
                "name = \"x\"\nfeatures = [\"VERSION_1\"]\n[device]\nqueue_pairs = 40",
                "queue_pairs: 40 is out of range",
            ),
            (
                "name = \"x\"\nfeatures = [\"VERSION_1\"]\n[device]\nqueue_pairs = \"two\"",
                "queue_pairs",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("profile t.toml: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn names_and_files_are_told_apart() {
        assert_eq!(load("ifcvf").unwrap(), Profile::ifcvf());
        assert!(matches!(load("nope"), Err(ProfileLoadError::Builtin(_))));
        assert!(matches!(
            load("/no/such/file.toml"),
            Err(ProfileLoadError::Read { .. })
        ));
    }

    #[test]
    fn fixed_parameters_win_and_conflicts_are_errors() {
        let mut p = Profile::full();
        p.params.queue_pairs = Some(2);
        assert_eq!(queue_pairs(&p, None, 4).unwrap(), 2);
        assert_eq!(queue_pairs(&p, Some(2), 4).unwrap(), 2);
        let e = queue_pairs(&p, Some(4), 4).unwrap_err().to_string();
        assert_eq!(
            e,
            "--queue-pairs 4 conflicts with profile full, which fixes queue_pairs = 2"
        );
        assert_eq!(queue_pairs(&Profile::full(), None, 4).unwrap(), 4);
        assert_eq!(queue_pairs(&Profile::full(), Some(3), 4).unwrap(), 3);
        p.params.lm_layout = Some(LmLayout::Linux);
        assert_eq!(lm_layout(&p, None).unwrap(), LmLayout::Linux);
        assert!(lm_layout(&p, Some(LmLayout::Dpdk)).is_err());
    }

    #[test]
    fn the_listing_shows_every_feature() {
        let p = Profile::ifcvf();
        let t = show_table(&p);
        for f in bar_registers::virtio::OFFERED_FEATURES {
            assert!(t.contains(f.name), "{}", f.name);
        }
        let j: serde_json::Value =
            serde_json::from_str(&crate::report_json::to_json(&ProfileJson::of(&p))).unwrap();
        let offered: Vec<&str> = j["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["offered"] == true)
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(offered.len(), bar_registers::profile::IFCVF_FEATURES.len());
        assert_eq!(j["name"], "ifcvf");
    }

    /// The example file in the repository parses.
    #[test]
    fn the_example_file_is_a_valid_profile() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/profile-example.toml");
        let p = load_file(&path).unwrap();
        assert_eq!(p.name, "example-nic");
    }
}
