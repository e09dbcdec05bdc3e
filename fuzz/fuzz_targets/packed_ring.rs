//! libFuzzer target `packed_ring`: see vdpa_fuzz_harness::run for what one input does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vdpa_fuzz_harness::run("packed_ring", data);
});
