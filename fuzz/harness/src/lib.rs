//! What each libFuzzer target of vdpa-emu does with one input, kept apart from the targets
//! (fuzz/fuzz_targets/) so that the seed generator (`examples/gen_corpus.rs`) and the replay
//! test (`tests/seeds.rs`) run the very same code without libFuzzer.
//!
//! - [`vfio`]: vfio-user message streams (with descriptors) into the server over a socketpair;
//! - [`rings`]: split and packed ring images into the device's queue engines;
//! - [`state`]: device-state (migration) streams into restore;
//! - [`scenario`]: text into the scenario parser and compiler.

pub mod cursor;
pub mod rings;
pub mod scenario;
pub mod state;
pub mod vfio;

/// The fuzz targets, as named under fuzz/fuzz_targets/ and fuzz/corpus/.
pub const TARGETS: [&str; 5] = [
    "vfio_user_stream",
    "split_ring",
    "packed_ring",
    "device_state_stream",
    "scenario_toml",
];

/// Runs one input of target `name` (the replay test and the seed check use this).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "vfio_user_stream" => vfio::run(data),
        "split_ring" => rings::run(data, false),
        "packed_ring" => rings::run(data, true),
        "device_state_stream" => state::run(data),
        "scenario_toml" => scenario::run(data),
        _ => panic!("unknown fuzz target {name}"),
    }
}
