//! libFuzzer target `device_state_stream`: see vdpa_fuzz_harness::run for what one input does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vdpa_fuzz_harness::run("device_state_stream", data);
});
