//! The Toeplitz hash of an IPv4/TCP (12-byte) and an IPv6/TCP (36-byte) hash input under a
//! 40-byte key, bit by bit (`toeplitz`, the definition the validator uses) and by the table
//! the device computes it with for every received frame while RSS or hash reporting is on
//! (`ToeplitzTable`). Each iteration hashes 64 different inputs.
//!
//! `cargo bench -p vdpa-device --bench steering`
//!
//! Measured 2026-12-04 on the shared 2-core machine (`-- --warm-up-time 1 --measurement-time
//! 3`), per input: IPv4/TCP 70-75 ns bit by bit, 3.8 ns by table; IPv6/TCP 174-190 ns and
//! 10.5 ns.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use device::net::rss::{toeplitz, ToeplitzTable};
use std::hint::black_box;

const KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// 64 different inputs of `len` bytes.
fn inputs(len: usize) -> Vec<Vec<u8>> {
    (0..64u32)
        .map(|i| {
            (0..len)
                .map(|j| (i.wrapping_mul(2_654_435_761) >> (j % 24)) as u8 ^ j as u8)
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("toeplitz");
    g.throughput(Throughput::Elements(64));
    for (name, len) in [("ipv4_tcp", 12), ("ipv6_tcp", 36)] {
        let ins = inputs(len);
        g.bench_function(format!("{name}/bits"), |b| {
            b.iter(|| {
                ins.iter()
                    .fold(0u32, |h, i| h ^ toeplitz(black_box(&KEY), black_box(i)))
            })
        });
        let table = ToeplitzTable::new(&KEY);
        g.bench_function(format!("{name}/table"), |b| {
            b.iter(|| {
                ins.iter()
                    .fold(0u32, |h, i| h ^ black_box(&table).hash(black_box(i)))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
