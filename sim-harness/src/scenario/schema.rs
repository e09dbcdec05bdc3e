//! The file format as serde reads it: every table denies unknown fields, and every value a
//! later check may reject keeps its byte span (`toml::Spanned`) so the error can name its line.
//! [`super::compile`] turns this into the checked [`super::model::Scenario`].

use serde::Deserialize;
use std::ops::Range;
use toml::{Spanned, Value};

/// A whole scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    /// Scenario name (default: the file stem).
    pub name: Option<Spanned<String>>,
    /// One paragraph on what the scenario shows.
    pub description: Option<String>,
    /// Seed of frame sizes and payloads.
    pub seed: Option<u64>,
    /// `[[device]]` tables: the device instances (at least one).
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
    /// `[[step]]` tables, run in order.
    #[serde(default)]
    pub step: Vec<RawStep>,
    /// `[end]`: expectations checked after the last step.
    pub end: Option<RawEnd>,
}

/// `[[device]]`: one device instance, its driver and its port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: Option<Spanned<String>>,
    pub queue_pairs: Option<Spanned<i64>>,
    pub driver_queue_pairs: Option<Spanned<i64>>,
    pub queue_size: Option<Spanned<i64>>,
    pub mac: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
    pub lm_layout: Option<Spanned<String>>,
    /// Device profile: a built-in name or a TOML file (relative to the scenario file).
    pub profile: Option<Spanned<String>>,
    pub notify: Option<Spanned<String>>,
    pub log_granularity: Option<Spanned<Value>>,
    pub memory: Option<Spanned<Value>>,
    pub quirks: Option<Vec<Spanned<String>>>,
    pub features: Option<Vec<Spanned<String>>>,
    pub mask_features: Option<Vec<Spanned<String>>>,
    pub rx_buf_size: Option<Spanned<i64>>,
    pub rx_backlog: Option<Spanned<i64>>,
    pub tx_indirect: Option<bool>,
    pub tx_split_header: Option<bool>,
    pub port: Option<Spanned<String>>,
    /// A served device (`vdpa-emu serve`, driven by someone else, e.g. a QEMU guest), reached
    /// through this control socket.
    pub ctl: Option<Spanned<String>>,
}

impl RawDevice {
    /// Set fields that describe a device the scenario builds and drives (everything but `name`
    /// and `ctl`), for the error on a served device.
    pub fn driven_fields(&self) -> Option<&'static str> {
        let set = [
            ("queue_pairs", self.queue_pairs.is_some()),
            ("driver_queue_pairs", self.driver_queue_pairs.is_some()),
            ("queue_size", self.queue_size.is_some()),
            ("mac", self.mac.is_some()),
            ("mtu", self.mtu.is_some()),
            ("lm_layout", self.lm_layout.is_some()),
            ("profile", self.profile.is_some()),
            ("notify", self.notify.is_some()),
            ("log_granularity", self.log_granularity.is_some()),
            ("memory", self.memory.is_some()),
            ("quirks", self.quirks.is_some()),
            ("features", self.features.is_some()),
            ("mask_features", self.mask_features.is_some()),
            ("rx_buf_size", self.rx_buf_size.is_some()),
            ("rx_backlog", self.rx_backlog.is_some()),
            ("tx_indirect", self.tx_indirect.is_some()),
            ("tx_split_header", self.tx_split_header.is_some()),
            ("port", self.port.is_some()),
        ];
        set.into_iter().find(|(_, on)| *on).map(|(n, _)| n)
    }
}

/// `[[step]]`: one action. Which fields apply depends on `kind`; a field that does not apply
/// to the kind is an error (see [`RawStep::present`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub kind: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub device: Option<Spanned<Value>>,
    pub allow_error: Option<Spanned<bool>>,
    pub expect: Option<Vec<Spanned<String>>>,
    // traffic
    pub count: Option<Spanned<i64>>,
    pub size: Option<Spanned<Value>>,
    pub pairs: Option<Spanned<Value>>,
    pub from: Option<Spanned<Value>>,
    pub batch: Option<Spanned<i64>>,
    pub receive: Option<Spanned<bool>>,
    // reset
    pub how: Option<Spanned<String>>,
    pub restart: Option<Spanned<bool>>,
    // inject
    pub fault: Option<Spanned<String>>,
    pub pair: Option<Spanned<i64>>,
    pub quirk: Option<Spanned<String>>,
    // link
    pub up: Option<Spanned<bool>>,
    // queue_pairs (uses `pairs` too)
    pub accept: Option<Spanned<bool>>,
    // migrate
    pub background_frames: Option<Spanned<i64>>,
    pub dirty_threshold: Option<Spanned<i64>>,
    pub max_downtime_ms: Option<Spanned<i64>>,
    pub max_rounds: Option<Spanned<i64>>,
    // wait
    pub seconds: Option<Spanned<Value>>,
}

impl RawStep {
    /// The kind-specific fields that are set, with their spans (`kind`, `name`, `expect` and
    /// `allow_error` apply to every kind and are not listed).
    pub fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        fn s<T>(
            name: &'static str,
            v: &Option<Spanned<T>>,
        ) -> Option<(&'static str, Range<usize>)> {
            v.as_ref().map(|v| (name, v.span()))
        }
        [
            s("device", &self.device),
            s("count", &self.count),
            s("size", &self.size),
            s("pairs", &self.pairs),
            s("from", &self.from),
            s("batch", &self.batch),
            s("receive", &self.receive),
            s("how", &self.how),
            s("restart", &self.restart),
            s("fault", &self.fault),
            s("pair", &self.pair),
            s("quirk", &self.quirk),
            s("up", &self.up),
            s("accept", &self.accept),
            s("background_frames", &self.background_frames),
            s("dirty_threshold", &self.dirty_threshold),
            s("max_downtime_ms", &self.max_downtime_ms),
            s("max_rounds", &self.max_rounds),
            s("seconds", &self.seconds),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// `[end]`: expectations checked after the last step (and a final receive).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnd {
    #[serde(default)]
    pub expect: Vec<Spanned<String>>,
}
