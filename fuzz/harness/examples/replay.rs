//! Replays inputs through a target's harness without libFuzzer or sanitizers, to reproduce a
//! crash under a debugger or to time the harness:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml -p vdpa-fuzz-harness --example replay -- \
//!     TARGET [--times N] FILE|DIR...
//! ```

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: replay TARGET [--times N] FILE|DIR...");
    let mut times = 1u32;
    let mut files = Vec::new();
    while let Some(a) = args.next() {
        if a == "--times" {
            times = args.next().and_then(|n| n.parse().ok()).expect("--times N");
            continue;
        }
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(&p)
                .expect("read dir")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p);
        }
    }
    let inputs: Vec<(PathBuf, Vec<u8>)> = files
        .into_iter()
        .map(|f| {
            let d = std::fs::read(&f).expect("read input");
            (f, d)
        })
        .collect();
    let t0 = Instant::now();
    for _ in 0..times {
        for (f, d) in &inputs {
            eprintln!("{}", f.display());
            vdpa_fuzz_harness::run(&target, d);
        }
    }
    let n = u64::from(times) * inputs.len() as u64;
    println!(
        "{target}: {n} runs in {:.3} s ({:.1} us per run)",
        t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64
    );
}
