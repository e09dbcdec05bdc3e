//! From the serde form ([`super::schema`]) to a checked [`Scenario`]: names resolved, ranges
//! checked, every step's fields checked against its kind, every expectation parsed. Each error
//! carries the span of the offending value so the message names its line.

use super::error::{malformed, ScenarioError, Spot};
use super::expect::{self, Expectation, Scope};
use super::metrics::{feature_bit, DeviceShape};
use super::model::{
    Action, DeviceSpec, Fault, MigrateSpec, PortSpec, ResetHow, Scenario, SizeSpec, Step,
    TrafficSpec, STEP_KINDS,
};
use super::schema::{RawDevice, RawScenario, RawStep};
use crate::driver::DriverOptions;
use crate::frames::MIN_FRAME;
use crate::migrate::policy::{self, StopPolicy};
use bar_registers::{LmLayout, NotifyLayout, Profile};
use device::{DeviceConfig, Quirk, Quirks};
use std::ops::Range;
use toml::{Spanned, Value};

/// Largest frame the driver model's 2 KiB TX buffers carry (2048 - 12-byte header).
pub const MAX_FRAME: usize = 2036;
/// Default guest RAM per device.
pub const DEFAULT_MEMORY: u64 = 32 << 20;

/// Parses and checks a scenario held in `src`; `file` names it in errors and reports.
pub fn parse_str(src: &str, file: &str) -> Result<Scenario, ScenarioError> {
    parse_str_with(src, file, None)
}

/// [`parse_str`] with every driven device given `profile` (`scenario run --profile`),
/// whatever its `profile` key says. A profile file named by a key is found relative to the
/// scenario file's directory.
pub fn parse_str_with(
    src: &str,
    file: &str,
    profile: Option<&Profile>,
) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = toml::from_str(src)
        .map_err(|e| malformed(file, src, e.span(), None, e.message().to_string()))?;
    let path = std::path::Path::new(file);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string());
    let ctx = Ctx {
        dir: path.parent().unwrap_or(std::path::Path::new("")),
        profile,
    };
    compile(raw, src, file, &stem, &ctx)
        .map_err(|s| malformed(file, src, Some(s.span), Some(s.field), s.message))
}

/// What compiling a file needs besides the file.
struct Ctx<'a> {
    /// The scenario file's directory (profile files are relative to it).
    dir: &'a std::path::Path,
    /// `scenario run --profile`: overrides every `profile` key.
    profile: Option<&'a Profile>,
}

type Res<T> = Result<T, Spot>;

fn line_of(src: &str, span: &Range<usize>) -> usize {
    super::error::line_col(src, span.start).0
}

fn compile(raw: RawScenario, src: &str, file: &str, stem: &str, ctx: &Ctx<'_>) -> Res<Scenario> {
    if raw.device.is_empty() {
        return Err(Spot::new(
            0..0,
            "device",
            "a scenario needs at least one [[device]] table",
        ));
    }
    let n = raw.device.len();
    let mut devices = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for (i, sd) in raw.device.iter().enumerate() {
        let d = sd.get_ref();
        let (spec, port) = device(i, d, sd.span(), n, ctx)?;
        if let Some(other) = devices
            .iter()
            .position(|o: &DeviceSpec| o.name == spec.name)
        {
            let span = d.name.as_ref().map_or(0..0, Spanned::span);
            return Err(Spot::new(
                span,
                format!("device[{}].name", i + 1),
                format!(
                    "device name `{}` is already used by device[{}]",
                    spec.name,
                    other + 1
                ),
            ));
        }
        devices.push(spec);
        ports.push(port);
    }
    resolve_ports(&mut devices, &ports)?;
    let shapes: Vec<(String, DeviceShape)> = devices
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                DeviceShape {
                    pairs: d.config.layout.queue_pairs,
                    served: d.served.is_some(),
                },
            )
        })
        .collect();
    let mut steps = Vec::with_capacity(raw.step.len());
    for (i, s) in raw.step.iter().enumerate() {
        steps.push(step(i, s, &devices, &shapes, src)?);
    }
    let end_scope = Scope {
        devices: &shapes,
        default_device: 0,
    };
    let end = match &raw.end {
        Some(e) => expectations(&e.expect, &end_scope, "end.expect", src)?,
        None => Vec::new(),
    };
    let name = raw
        .name
        .map(Spanned::into_inner)
        .unwrap_or_else(|| stem.to_string());
    Ok(Scenario {
        file: file.to_string(),
        name,
        description: raw.description,
        seed: raw.seed.unwrap_or(1),
        devices,
        steps,
        end,
    })
}

// ------------------------------------------------------------------------------- values

fn int_in(v: &Spanned<i64>, field: &str, lo: i64, hi: i64) -> Res<i64> {
    let x = *v.get_ref();
    if x < lo || x > hi {
        return Err(Spot::new(
            v.span(),
            field,
            format!("{x} is out of range {lo}..={hi}"),
        ));
    }
    Ok(x)
}

fn as_u16(v: &Spanned<i64>, field: &str, lo: u16, hi: u16) -> Res<u16> {
    int_in(v, field, lo.into(), hi.into()).map(|x| u16::try_from(x).unwrap_or(hi))
}

fn as_u32(v: &Spanned<i64>, field: &str, lo: u32, hi: u32) -> Res<u32> {
    int_in(v, field, lo.into(), hi.into()).map(|x| u32::try_from(x).unwrap_or(hi))
}

/// A byte size: an integer, or a string with a K/M/G suffix ("64K", "16M", "2MiB").
fn byte_size(v: &Spanned<Value>, field: &str) -> Res<u64> {
    let bad = |m: String| Spot::new(v.span(), field, m);
    match v.get_ref() {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| bad(format!("{i} is negative"))),
        Value::String(s) => {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let mult: u64 = match unit
                .trim()
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                u => {
                    return Err(bad(format!(
                        "unknown size unit `{u}` in \"{s}\" (use K, M or G)"
                    )))
                }
            };
            num.parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| {
                    bad(format!(
                        "\"{s}\" is not a size (e.g. 4096, \"64K\", \"16M\")"
                    ))
                })
        }
        other => Err(bad(format!(
            "expected a size (integer or string like \"16M\"), found {}",
            other.type_str()
        ))),
    }
}

fn parse_mac(v: &Spanned<String>, field: &str) -> Res<[u8; 6]> {
    let parts: Vec<&str> = v.get_ref().split(':').collect();
    let bytes: Option<Vec<u8>> = parts
        .iter()
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect();
    match bytes.and_then(|b| <[u8; 6]>::try_from(b).ok()) {
        Some(m) if m[0] & 1 == 0 => Ok(m),
        Some(_) => Err(Spot::new(
            v.span(),
            field,
            format!("\"{}\" is a multicast address", v.get_ref()),
        )),
        None => Err(Spot::new(
            v.span(),
            field,
            format!(
                "\"{}\" is not a MAC address (like \"52:54:00:12:34:56\")",
                v.get_ref()
            ),
        )),
    }
}

fn quirk(v: &Spanned<String>, field: &str) -> Res<Quirk> {
    Quirk::parse(&v.get_ref().replace('_', "-")).ok_or_else(|| {
        Spot::new(
            v.span(),
            field,
            format!(
                "unknown quirk `{}`; known: {}",
                v.get_ref(),
                Quirk::ALL.map(|q| q.name()).join(", ")
            ),
        )
    })
}

fn feature_mask(list: &[Spanned<String>], field: &str) -> Res<u64> {
    list.iter().try_fold(0u64, |m, f| {
        feature_bit(f.get_ref())
            .map(|b| m | (1u64 << b))
            .ok_or_else(|| {
                let known: Vec<String> = bar_registers::virtio::OFFERED_FEATURES
                    .iter()
                    .map(|f| super::metrics::short_feature_name(f.name))
                    .collect();
                Spot::new(
                    f.span(),
                    field,
                    format!(
                        "unknown feature `{}`; known: {}",
                        f.get_ref(),
                        known.join(", ")
                    ),
                )
            })
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

// ------------------------------------------------------------------------------- devices

/// The port as written: loopback, null, or link to a named device.
enum RawPort {
    Default,
    Loopback,
    Null,
    Link(String, Range<usize>),
}

fn device(
    i: usize,
    d: &RawDevice,
    table: Range<usize>,
    count: usize,
    ctx: &Ctx<'_>,
) -> Res<(DeviceSpec, RawPort)> {
    let f = |name: &str| format!("device[{}].{name}", i + 1);
    let name = match &d.name {
        Some(n) if valid_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            return Err(Spot::new(
                n.span(),
                f("name"),
                format!(
                    "device name \"{}\" must be 1-32 letters, digits, '-' or '_'",
                    n.get_ref()
                ),
            ))
        }
        None if count == 1 => "dut".to_string(),
        None => {
            return Err(Spot::new(
                table,
                f("name"),
                format!(
                    "device[{}] needs a `name` (the scenario has {count} devices)",
                    i + 1
                ),
            ))
        }
    };
    if let Some(ctl) = &d.ctl {
        if let Some(field) = d.driven_fields() {
            return Err(Spot::new(
                ctl.span(),
                f(field),
                format!(
                    "`{field}` does not apply to a served device (`ctl`): its server decides it"
                ),
            ));
        }
        if ctl.get_ref().is_empty() {
            return Err(Spot::new(ctl.span(), f("ctl"), "`ctl` needs a socket path"));
        }
        return Ok((
            DeviceSpec {
                name,
                // Only queue metrics read the shape of a served device: the largest there can
                // be; a queue it does not have is reported when the metric is read.
                config: DeviceConfig::with_queue_pairs(bar_registers::layout::MAX_QUEUE_PAIRS),
                driver: DriverOptions::default(),
                port: PortSpec::Null,
                served: Some(ctl.get_ref().into()),
            },
            RawPort::Null,
        ));
    }
    let profile = match (ctx.profile, &d.profile) {
        (Some(p), _) => p.clone(),
        (None, None) => Profile::full(),
        (None, Some(v)) => {
            let spec = v.get_ref();
            let r = if crate::profile::is_file(spec) {
                crate::profile::load_file(&ctx.dir.join(spec))
            } else {
                crate::profile::load(spec)
            };
            r.map_err(|e| Spot::new(v.span(), f("profile"), e.to_string()))?
        }
    };
    let fixed = profile.params;
    // A key the profile fixes must agree with it.
    let agree = |key: &str, span: Range<usize>, given: u64, fixed: Option<u64>| match fixed {
        Some(v) if v != given => Err(Spot::new(
            span,
            f(key),
            format!(
                "`{key} = {given}` conflicts with profile {}, which fixes it to {v}",
                profile.name
            ),
        )),
        _ => Ok(()),
    };
    let pairs = match &d.queue_pairs {
        Some(v) => {
            let p = as_u16(v, &f("queue_pairs"), 1, 32)?;
            agree(
                "queue_pairs",
                v.span(),
                p.into(),
                fixed.queue_pairs.map(u64::from),
            )?;
            p
        }
        None => fixed.queue_pairs.unwrap_or(1),
    };
    let driver_pairs = d
        .driver_queue_pairs
        .as_ref()
        .map_or(Ok(pairs), |v| as_u16(v, &f("driver_queue_pairs"), 1, pairs))?;
    let queue_size = match &d.queue_size {
        Some(v) => {
            let q = as_u16(v, &f("queue_size"), 2, 32768)?;
            if !q.is_power_of_two() {
                return Err(Spot::new(
                    v.span(),
                    f("queue_size"),
                    format!("{q} is not a power of two"),
                ));
            }
            agree(
                "queue_size",
                v.span(),
                q.into(),
                fixed.queue_size_max.map(u64::from),
            )?;
            q
        }
        None => fixed.queue_size_max.unwrap_or(256),
    };
    let mut cfg = DeviceConfig::default().with_profile(profile.clone());
    cfg.layout.queue_pairs = pairs;
    cfg.layout.queue_size_max = queue_size;
    cfg.layout.mac = match &d.mac {
        Some(m) => parse_mac(m, &f("mac"))?,
        None => {
            let mut m = cfg.layout.mac;
            m[5] = m[5].wrapping_add(i as u8);
            m
        }
    };
    if let Some(v) = &d.mtu {
        cfg.layout.mtu = as_u16(v, &f("mtu"), 68, u16::MAX)?;
        agree(
            "mtu",
            v.span(),
            cfg.layout.mtu.into(),
            fixed.mtu.map(u64::from),
        )?;
    }
    if let Some(v) = &d.lm_layout {
        cfg.layout.lm_layout = LmLayout::parse(v.get_ref()).ok_or_else(|| {
            Spot::new(
                v.span(),
                f("lm_layout"),
                format!("unknown LM layout `{}`: use dpdk or linux", v.get_ref()),
            )
        })?;
        if let Some(l) = fixed.lm_layout.filter(|l| *l != cfg.layout.lm_layout) {
            return Err(Spot::new(
                v.span(),
                f("lm_layout"),
                format!(
                    "`lm_layout = {}` conflicts with profile {}, which fixes it to {}",
                    cfg.layout.lm_layout.name(),
                    profile.name,
                    l.name()
                ),
            ));
        }
    }
    if let Some(v) = &d.notify {
        cfg.layout.notify = match v.get_ref().replace('-', "_").as_str() {
            "compact" => NotifyLayout::Compact,
            "page_per_queue" => NotifyLayout::PagePerQueue,
            other => {
                return Err(Spot::new(
                    v.span(),
                    f("notify"),
                    format!("unknown notify layout `{other}`: use compact or page_per_queue"),
                ))
            }
        };
    }
    if let Some(v) = &d.log_granularity {
        let g = byte_size(v, &f("log_granularity"))?;
        if !g.is_power_of_two() || !(4096..=1 << 30).contains(&g) {
            return Err(Spot::new(
                v.span(),
                f("log_granularity"),
                format!("{g} must be a power of two from 4K to 1G"),
            ));
        }
        cfg.log_granularity = g;
    }
    if let Some(v) = &d.rx_backlog {
        cfg.rx_backlog = as_u32(v, &f("rx_backlog"), 1, 1 << 20)? as usize;
    }
    if let Some(list) = &d.quirks {
        cfg.quirks = list
            .iter()
            .map(|q| quirk(q, &f("quirks")))
            .collect::<Res<Quirks>>()?;
    }
    let memory = match &d.memory {
        Some(v) => {
            let m = byte_size(v, &f("memory"))?;
            if m % 4096 != 0 || !(1 << 20..=4 << 30).contains(&m) {
                return Err(Spot::new(
                    v.span(),
                    f("memory"),
                    format!("{m} must be a multiple of 4K from 1M to 4G"),
                ));
            }
            m
        }
        None => DEFAULT_MEMORY,
    };
    let mut features = match &d.features {
        Some(list) => feature_mask(list, &f("features"))?,
        None => DriverOptions::default().features,
    };
    if let Some(list) = &d.mask_features {
        features &= !feature_mask(list, &f("mask_features"))?;
    }
    let rx_buf_size = d
        .rx_buf_size
        .as_ref()
        .map_or(Ok(2048), |v| as_u32(v, &f("rx_buf_size"), 64, 65536))?;
    let driver = DriverOptions {
        queue_pairs: driver_pairs,
        features,
        queue_size,
        rx_buf_size,
        tx_indirect: d.tx_indirect.unwrap_or(false),
        tx_split_header: d.tx_split_header.unwrap_or(false),
        memory,
        lm_layout: cfg.layout.lm_layout,
        ..DriverOptions::default()
    };
    let port = match &d.port {
        None => RawPort::Default,
        Some(p) => match p.get_ref().as_str() {
            "loopback" => RawPort::Loopback,
            "null" => RawPort::Null,
            s => match s.strip_prefix("link:") {
                Some(peer) => RawPort::Link(peer.trim().to_string(), p.span()),
                None => {
                    return Err(Spot::new(
                        p.span(),
                        f("port"),
                        format!("unknown port `{s}`: use loopback, null or link:<device name>"),
                    ))
                }
            },
        },
    };
    Ok((
        DeviceSpec {
            name,
            config: cfg,
            driver,
            port: PortSpec::Loopback,
            served: None,
        },
        port,
    ))
}

/// Resolves `link:<name>` ports; links are symmetric, one peer per device.
fn resolve_ports(devices: &mut [DeviceSpec], ports: &[RawPort]) -> Res<()> {
    let names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
    let mut link: Vec<Option<usize>> = vec![None; devices.len()];
    for (i, p) in ports.iter().enumerate() {
        let RawPort::Link(peer, span) = p else {
            continue;
        };
        let field = format!("device[{}].port", i + 1);
        let j = names.iter().position(|n| n == peer).ok_or_else(|| {
            Spot::new(
                span.clone(),
                &field,
                format!(
                    "link to unknown device `{peer}`; devices: {}",
                    names.join(", ")
                ),
            )
        })?;
        if j == i {
            return Err(Spot::new(
                span.clone(),
                &field,
                "a device cannot link to itself: use port = \"loopback\"",
            ));
        }
        if devices[j].served.is_some() {
            return Err(Spot::new(
                span.clone(),
                &field,
                format!("`{peer}` is a served device: its port is its server's (`serve --port`)"),
            ));
        }
        match &ports[j] {
            RawPort::Default => {}
            RawPort::Link(back, _) if *back == names[i] => {}
            _ => {
                return Err(Spot::new(
                    span.clone(),
                    &field,
                    format!(
                    "`{}` links to `{peer}`, whose port does not link back (links are symmetric)",
                    names[i]
                ),
                ))
            }
        }
        for (a, b) in [(i, j), (j, i)] {
            match link[a] {
                Some(x) if x != b => {
                    return Err(Spot::new(
                        span.clone(),
                        &field,
                        format!("device `{}` is linked to two devices", names[a]),
                    ))
                }
                _ => link[a] = Some(b),
            }
        }
    }
    for (i, d) in devices.iter_mut().enumerate() {
        if d.served.is_some() {
            continue;
        }
        d.port = match (&ports[i], link[i]) {
            (_, Some(j)) => PortSpec::Link(j),
            (RawPort::Null, None) => PortSpec::Null,
            _ => PortSpec::Loopback,
        };
    }
    Ok(())
}

// ------------------------------------------------------------------------------- steps

/// Fields each step kind accepts besides kind, name, expect and allow_error.
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "start" | "receive" => &["device"],
        "traffic" => &["from", "count", "size", "pairs", "batch", "receive"],
        "stop_start" | "announce" => &["device"],
        "reset" => &["device", "how", "restart"],
        "inject" => &["device", "fault", "pair", "quirk"],
        "link" => &["device", "up"],
        "queue_pairs" => &["device", "pairs", "accept"],
        "migrate" => &[
            "device",
            "background_frames",
            "dirty_threshold",
            "max_downtime_ms",
            "max_rounds",
        ],
        "wait" => &["seconds"],
        _ => &[],
    }
}

fn device_list(v: Option<&Spanned<Value>>, field: &str, devices: &[DeviceSpec]) -> Res<Vec<usize>> {
    let Some(v) = v else {
        // Every device the scenario drives (a served device is driven by its own guest).
        return Ok((0..devices.len())
            .filter(|&i| devices[i].served.is_none())
            .collect());
    };
    let one = |s: &str| {
        devices.iter().position(|d| d.name == s).ok_or_else(|| {
            Spot::new(
                v.span(),
                field,
                format!(
                    "unknown device `{s}`; devices: {}",
                    devices
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };
    match v.get_ref() {
        Value::String(s) => Ok(vec![one(s)?]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| match x {
                Value::String(s) => one(s),
                other => Err(Spot::new(
                    v.span(),
                    field,
                    format!("expected device names, found {}", other.type_str()),
                )),
            })
            .collect(),
        other => Err(Spot::new(
            v.span(),
            field,
            format!(
                "expected a device name or a list of names, found {}",
                other.type_str()
            ),
        )),
    }
}

fn single_device(v: Option<&Spanned<Value>>, field: &str, devices: &[DeviceSpec]) -> Res<usize> {
    match v {
        None => Ok(devices.iter().position(|d| d.served.is_none()).unwrap_or(0)),
        Some(x) if !matches!(x.get_ref(), Value::String(_)) => {
            Err(Spot::new(x.span(), field, "expected one device name"))
        }
        Some(_) => device_list(v, field, devices).map(|l| l.first().copied().unwrap_or(0)),
    }
}

fn step(
    i: usize,
    s: &RawStep,
    devices: &[DeviceSpec],
    shapes: &[(String, DeviceShape)],
    src: &str,
) -> Res<Step> {
    let f = |name: &str| format!("step[{}].{name}", i + 1);
    let kind = s.kind.get_ref().as_str();
    if !STEP_KINDS.contains(&kind) {
        return Err(Spot::new(
            s.kind.span(),
            f("kind"),
            format!(
                "unknown step kind `{kind}`; known: {}",
                STEP_KINDS.join(", ")
            ),
        ));
    }
    let ok = allowed(kind);
    if let Some((name, span)) = s.present().into_iter().find(|(n, _)| !ok.contains(n)) {
        let hint = if ok.is_empty() {
            "none".to_string()
        } else {
            ok.join(", ")
        };
        return Err(Spot::new(
            span,
            f(name),
            format!("field `{name}` does not apply to a `{kind}` step (it takes: {hint})"),
        ));
    }
    let dev = |name: &str| single_device(s.device.as_ref(), &f(name), devices);
    let action = match kind {
        "start" => Action::Start {
            devices: device_list(s.device.as_ref(), &f("device"), devices)?,
        },
        "receive" => Action::Receive {
            devices: device_list(s.device.as_ref(), &f("device"), devices)?,
        },
        "traffic" => Action::Traffic(traffic(s, devices, &f)?),
        "stop_start" => Action::StopStart {
            device: dev("device")?,
        },
        "announce" => Action::Announce {
            device: dev("device")?,
        },
        "reset" => {
            let how = match &s.how {
                None => ResetHow::Driver,
                Some(h) => match h.get_ref().as_str() {
                    "driver" => ResetHow::Driver,
                    "flr" => ResetHow::Flr,
                    o => {
                        return Err(Spot::new(
                            h.span(),
                            f("how"),
                            format!("unknown reset `{o}`: use driver or flr"),
                        ))
                    }
                },
            };
            Action::Reset {
                device: dev("device")?,
                how,
                restart: s.restart.as_ref().is_none_or(|r| *r.get_ref()),
            }
        }
        "inject" => {
            let device = dev("device")?;
            let fault_v = s.fault.as_ref().ok_or_else(|| {
                Spot::new(s.kind.span(), f("fault"), "an `inject` step needs `fault`")
            })?;
            let q = s
                .quirk
                .as_ref()
                .map(|q| quirk(q, &f("quirk")))
                .transpose()?;
            let fault = Fault::parse(fault_v.get_ref(), q).ok_or_else(|| {
                if fault_v.get_ref() == "quirk" {
                    Spot::new(
                        fault_v.span(),
                        f("quirk"),
                        "fault = \"quirk\" needs `quirk = \"<name>\"`",
                    )
                } else {
                    let names: Vec<&str> =
                        super::model::FAULTS.iter().map(|(n, _, _)| *n).collect();
                    Spot::new(
                        fault_v.span(),
                        f("fault"),
                        format!(
                            "unknown fault `{}`; known: {}",
                            fault_v.get_ref(),
                            names.join(", ")
                        ),
                    )
                }
            })?;
            if let (Some(qv), false) = (&s.quirk, matches!(fault, Fault::Quirk(_))) {
                return Err(Spot::new(
                    qv.span(),
                    f("quirk"),
                    "`quirk` applies only to fault = \"quirk\"",
                ));
            }
            let pairs = devices.get(device).map_or(1, |d| d.driver.queue_pairs);
            let pair = s
                .pair
                .as_ref()
                .map_or(Ok(0), |p| as_u16(p, &f("pair"), 0, pairs - 1))?;
            Action::Inject {
                device,
                fault,
                pair,
            }
        }
        "link" => {
            let up = s.up.as_ref().ok_or_else(|| {
                Spot::new(
                    s.kind.span(),
                    f("up"),
                    "a `link` step needs `up = true|false`",
                )
            })?;
            Action::Link {
                device: dev("device")?,
                up: *up.get_ref(),
            }
        }
        "queue_pairs" => {
            let p = s.pairs.as_ref().ok_or_else(|| {
                Spot::new(
                    s.kind.span(),
                    f("pairs"),
                    "a `queue_pairs` step needs `pairs = <n>`",
                )
            })?;
            let n = match p.get_ref() {
                Value::Integer(n) => as_u16(&Spanned::new(p.span(), *n), &f("pairs"), 0, u16::MAX)?,
                other => {
                    return Err(Spot::new(
                        p.span(),
                        f("pairs"),
                        format!("expected an integer, found {}", other.type_str()),
                    ))
                }
            };
            Action::QueuePairs {
                device: dev("device")?,
                pairs: n,
                accept: s.accept.as_ref().is_none_or(|a| *a.get_ref()),
            }
        }
        "wait" => {
            let v = s.seconds.as_ref().ok_or_else(|| {
                Spot::new(s.kind.span(), f("seconds"), "a `wait` step needs `seconds`")
            })?;
            let secs = match v.get_ref() {
                Value::Integer(n) => *n as f64,
                Value::Float(x) => *x,
                other => {
                    return Err(Spot::new(
                        v.span(),
                        f("seconds"),
                        format!("expected a number of seconds, found {}", other.type_str()),
                    ))
                }
            };
            if !(0.0..=3600.0).contains(&secs) {
                return Err(Spot::new(
                    v.span(),
                    f("seconds"),
                    format!("{secs} must be from 0 to 3600"),
                ));
            }
            Action::Wait {
                duration: std::time::Duration::from_secs_f64(secs),
            }
        }
        _ => Action::Migrate(MigrateSpec {
            device: dev("device")?,
            background_frames: s
                .background_frames
                .as_ref()
                .map_or(Ok(32), |v| as_u32(v, &f("background_frames"), 0, 1024))?,
            stop: match (&s.dirty_threshold, &s.max_downtime_ms) {
                (Some(_), Some(d)) => {
                    return Err(Spot::new(
                        d.span(),
                        f("max_downtime_ms"),
                        "give either max_downtime_ms (the downtime limit) or dirty_threshold (a fixed page threshold), not both",
                    ))
                }
                (Some(t), None) => StopPolicy::DirtyThreshold(u64::from(as_u32(
                    t,
                    &f("dirty_threshold"),
                    1,
                    1 << 20,
                )?)),
                (None, Some(d)) => StopPolicy::MaxDowntime(std::time::Duration::from_millis(
                    int_in(d, &f("max_downtime_ms"), 0, policy::MAX_DOWNTIME_MS as i64)? as u64,
                )),
                (None, None) => StopPolicy::default(),
            },
            max_rounds: s
                .max_rounds
                .as_ref()
                .map_or(Ok(8), |v| as_u32(v, &f("max_rounds"), 1, 100))?,
        }),
    };
    let default_device = match &action {
        Action::Start { devices: d }
        | Action::Receive { devices: d }
        | Action::Traffic(TrafficSpec { from: d, .. }) => d.first().copied().unwrap_or(0),
        Action::StopStart { device }
        | Action::Announce { device }
        | Action::Reset { device, .. }
        | Action::Inject { device, .. }
        | Action::Link { device, .. }
        | Action::QueuePairs { device, .. }
        | Action::Migrate(MigrateSpec { device, .. }) => *device,
        Action::Wait { .. } => devices.iter().position(|d| d.served.is_some()).unwrap_or(0),
    };
    served_step(&action, devices, s, kind, &f)?;
    let scope = Scope {
        devices: shapes,
        default_device,
    };
    let expect = expectations(
        s.expect.as_deref().unwrap_or_default(),
        &scope,
        &f("expect"),
        src,
    )?;
    let label = match &s.name {
        Some(n) => format!("{kind}: {}", n.get_ref()),
        None => kind.to_string(),
    };
    Ok(Step {
        index: i + 1,
        line: line_of(src, &s.kind.span()),
        label,
        action,
        allow_error: s.allow_error.as_ref().is_some_and(|a| *a.get_ref()),
        expect,
    })
}

/// A served device takes only the steps its control socket offers: `link`, `announce` and
/// `inject` of a quirk (switched on at once); the others need a driver the scenario runs.
fn served_step(
    action: &Action,
    devices: &[DeviceSpec],
    s: &RawStep,
    kind: &str,
    f: &dyn Fn(&str) -> String,
) -> Res<()> {
    let named: Vec<usize> = match action {
        Action::Link { .. } | Action::Announce { .. } | Action::Wait { .. } => return Ok(()),
        Action::Inject {
            fault: Fault::Quirk(_),
            ..
        } => return Ok(()),
        Action::Start { devices: d }
        | Action::Receive { devices: d }
        | Action::Traffic(TrafficSpec { from: d, .. }) => d.clone(),
        Action::StopStart { device }
        | Action::Reset { device, .. }
        | Action::Inject { device, .. }
        | Action::QueuePairs { device, .. }
        | Action::Migrate(MigrateSpec { device, .. }) => vec![*device],
    };
    match named
        .iter()
        .find_map(|&i| devices.get(i).filter(|d| d.served.is_some()))
    {
        Some(d) => {
            let (field, span) = match (&s.from, &s.device) {
                (Some(v), _) if kind == "traffic" => ("from", v.span()),
                (_, Some(v)) => ("device", v.span()),
                _ => ("kind", s.kind.span()),
            };
            Err(Spot::new(
                span,
                f(field),
                format!(
                    "`{}` is a served device (ctl): a `{kind}` step needs a device the scenario drives; a served device takes link, announce and inject of a quirk",
                    d.name
                ),
            ))
        }
        None => Ok(()),
    }
}

fn traffic(s: &RawStep, devices: &[DeviceSpec], f: &dyn Fn(&str) -> String) -> Res<TrafficSpec> {
    let from = device_list(s.from.as_ref(), &f("from"), devices)?;
    let count = s.count.as_ref().ok_or_else(|| {
        Spot::new(
            s.kind.span(),
            f("count"),
            "a `traffic` step needs `count` (frames per sending device)",
        )
    })?;
    let count = int_in(count, &f("count"), 1, 10_000_000)?.unsigned_abs();
    let max_pairs = from
        .iter()
        .filter_map(|&d| devices.get(d))
        .map(|d| d.driver.queue_pairs)
        .min()
        .unwrap_or(1);
    let max_frame = from
        .iter()
        .filter_map(|&d| devices.get(d))
        .map(|d| usize::from(d.config.layout.mtu) + 14)
        .min()
        .unwrap_or(1514)
        .clamp(MIN_FRAME, MAX_FRAME);
    let size = match &s.size {
        None => SizeSpec::Range(MIN_FRAME, max_frame),
        Some(v) => size_spec(v, &f("size"), max_frame)?,
    };
    let pairs = match &s.pairs {
        None => None,
        Some(v) => {
            let bad = |m: String| Spot::new(v.span(), f("pairs"), m);
            let check = |p: i64| -> Res<u16> {
                u16::try_from(p)
                    .ok()
                    .filter(|&p| p < max_pairs)
                    .ok_or_else(|| {
                        bad(format!(
                            "pair {p} out of range: the sending driver runs pairs 0..={}",
                            max_pairs - 1
                        ))
                    })
            };
            match v.get_ref() {
                Value::Integer(n) if (1..=i64::from(max_pairs)).contains(n) => {
                    Some((0..*n as u16).collect())
                }
                Value::Integer(n) => {
                    return Err(bad(format!("{n} pairs out of range 1..={max_pairs}")))
                }
                Value::Array(a) if !a.is_empty() => Some(
                    a.iter()
                        .map(|x| {
                            x.as_integer()
                                .ok_or_else(|| {
                                    bad(format!("expected pair numbers, found {}", x.type_str()))
                                })
                                .and_then(check)
                        })
                        .collect::<Res<Vec<u16>>>()?,
                ),
                other => {
                    return Err(bad(format!(
                        "expected a pair count or a list of pairs, found {}",
                        other.type_str()
                    )))
                }
            }
        }
    };
    let batch = s
        .batch
        .as_ref()
        .map_or(Ok(32), |b| as_u32(b, &f("batch"), 1, 4096))? as usize;
    Ok(TrafficSpec {
        from,
        count,
        size,
        pairs,
        batch,
        receive: s.receive.as_ref().is_none_or(|r| *r.get_ref()),
    })
}

/// `size = 512`, `size = "random"` (60 ..= MTU + 14), or `size = [min, max]`.
fn size_spec(v: &Spanned<Value>, field: &str, max_frame: usize) -> Res<SizeSpec> {
    let bad = |m: String| Spot::new(v.span(), field, m);
    let one = |x: i64| -> Res<usize> {
        usize::try_from(x)
            .ok()
            .filter(|x| (MIN_FRAME..=MAX_FRAME).contains(x))
            .ok_or_else(|| bad(format!("frame size {x} out of range {MIN_FRAME}..={MAX_FRAME} (the driver's TX buffers are 2 KiB)")))
    };
    match v.get_ref() {
        Value::Integer(x) => one(*x).map(SizeSpec::Fixed),
        Value::String(s) if s == "random" => Ok(SizeSpec::Range(MIN_FRAME, max_frame)),
        Value::Array(a) => match a.as_slice() {
            [Value::Integer(lo), Value::Integer(hi)] if lo <= hi => {
                Ok(SizeSpec::Range(one(*lo)?, one(*hi)?))
            }
            _ => Err(bad("a size range is [min, max] with min <= max".into())),
        },
        other => Err(bad(format!(
            "expected a size, \"random\" or [min, max], found {}",
            other.type_str()
        ))),
    }
}

fn expectations(
    list: &[Spanned<String>],
    scope: &Scope<'_>,
    field: &str,
    src: &str,
) -> Res<Vec<Expectation>> {
    list.iter()
        .map(|e| {
            expect::parse(e.get_ref(), line_of(src, &e.span()), scope)
                .map_err(|m| Spot::new(e.span(), field, m))
        })
        .collect()
}
