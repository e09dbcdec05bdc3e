//! Every committed seed runs through its target's harness without libFuzzer (the same
//! checks the fuzzers make), and each target has seeds.

use std::path::PathBuf;

#[test]
fn every_seed_passes_its_target() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for target in vdpa_fuzz_harness::TARGETS {
        let dir = corpus.join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                continue;
            }
            let data = std::fs::read(&p).unwrap();
            vdpa_fuzz_harness::run(target, &data);
            n += 1;
        }
        assert!(n >= 3, "{target}: only {n} seeds");
        eprintln!("{target}: {n} seeds replayed");
    }
}
