//! Live migration between two device instances under traffic: nothing lost, and the checks
//! catch the device bugs that would lose something. The clean migrations, the 100 back-to-back
//! ones and the bug-catching checks run on both ring layouts (split, and packed with the wrap
//! counters in the LM ring state).

use bar_registers::LmLayout;
use device::{Quirk, Quirks};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sim_harness::migrate::{run, MigrateOptions, MigrateReport};
use std::time::Duration;

const LAYOUTS: [bool; 2] = [false, true];

fn opts() -> MigrateOptions {
    MigrateOptions {
        memory: 8 << 20,
        rate: 0,
        after: Duration::from_millis(5),
        dirty_threshold: 64,
        max_rounds: 8,
        ..Default::default()
    }
}

fn assert_clean(r: &MigrateReport, what: &str) {
    assert!(r.clean(), "{what}:\n{}", r.table());
    assert!(
        r.frames_delivered > 0 && r.frames_delivered == r.frames_sent,
        "{what}: {} of {} frames delivered",
        r.frames_delivered,
        r.frames_sent
    );
    assert!(
        r.pages_copied >= 2048,
        "{what}: all memory copied at least once"
    );
}

#[test]
fn both_layouts_one_and_eight_pairs() {
    for packed in LAYOUTS {
        for lm_layout in [LmLayout::Dpdk, LmLayout::Linux] {
            for queue_pairs in [1, 8] {
                let r = run(&MigrateOptions {
                    lm_layout,
                    queue_pairs,
                    memory: 32 << 20,
                    packed,
                    ..opts()
                })
                .unwrap();
                assert_clean(
                    &r,
                    &format!("{lm_layout:?} {queue_pairs} pairs, packed {packed}"),
                );
                assert!(r.log_writes > 0, "the device logged");
            }
        }
    }
}

#[test]
fn coarse_granularity_trades_log_writes_for_copied_pages() {
    let mut per_granularity = Vec::new();
    for g in [4 << 10, 64 << 10, 2 << 20] {
        let r = run(&MigrateOptions {
            log_granularity: g,
            seed: 7,
            ..opts()
        })
        .unwrap();
        assert_clean(&r, &format!("granularity {g}"));
        per_granularity.push((g, r.log_writes, r.pages_copied));
    }
    // Coarser logging marks whole granules: more pages to copy per dirty write.
    let (_, _, pages_4k) = per_granularity[0];
    let (_, _, pages_2m) = per_granularity[2];
    assert!(pages_2m > pages_4k, "{per_granularity:?}");
}

#[test]
fn hundred_back_to_back_randomized_migrations_lose_nothing() {
    for packed in LAYOUTS {
        hundred_migrations(packed);
    }
}

fn hundred_migrations(packed: bool) {
    let mut rng = SmallRng::seed_from_u64(2024 + u64::from(packed));
    let mut total = 0;
    for batch in 0..10 {
        let o = MigrateOptions {
            packed,
            queue_pairs: rng.gen_range(1..=4),
            lm_layout: if rng.gen_bool(0.5) {
                LmLayout::Dpdk
            } else {
                LmLayout::Linux
            },
            log_granularity: [4 << 10, 64 << 10, 2 << 20][rng.gen_range(0..3)],
            seed: rng.gen(),
            count: 10,
            dirty_threshold: rng.gen_range(16..256),
            ..opts()
        };
        let r = run(&o).unwrap();
        assert_eq!(r.migrations, 10);
        assert_clean(&r, &format!("batch {batch}: {o:?}"));
        total += r.migrations;
    }
    assert_eq!(total, 100);
}

#[test]
fn log_skipping_used_ring_is_caught() {
    for packed in LAYOUTS {
        let r = run(&MigrateOptions {
            quirks: Quirks::NONE.with(Quirk::LogSkipsUsedRing),
            packed,
            ..opts()
        })
        .unwrap();
        assert!(r.missed_dirty_pages > 0, "packed {packed}: {}", r.table());
        assert!(!r.clean());
    }
}

#[test]
fn stale_used_idx_is_caught() {
    for packed in LAYOUTS {
        let r = run(&MigrateOptions {
            quirks: Quirks::NONE.with(Quirk::StaleUsedIdx),
            packed,
            ..opts()
        })
        .unwrap();
        assert!(!r.clean(), "packed {packed}: {}", r.table());
        assert!(
            r.duplicated_frames + r.lost_frames > 0 || !r.errors.is_empty(),
            "packed {packed}: {}",
            r.table()
        );
    }
}

#[test]
fn early_queue_disable_and_read_only_ring_state_are_caught() {
    for packed in LAYOUTS {
        for q in [Quirk::EarlyQueueDisable, Quirk::RingStateReadOnly] {
            let r = run(&MigrateOptions {
                quirks: Quirks::NONE.with(q),
                packed,
                ..opts()
            })
            .unwrap();
            assert!(!r.clean(), "{q:?} packed {packed} passed:\n{}", r.table());
        }
    }
}

#[test]
fn report_formats_carry_every_field() {
    let r = run(&opts()).unwrap();
    let j = r.json();
    for k in [
        "total_ms",
        "downtime_us",
        "rounds",
        "pages_per_round",
        "log_bytes",
        "missed_dirty_pages",
        "memory_mismatch_pages",
        "lost_frames",
        "duplicated_frames",
        "reordered_frames",
    ] {
        assert!(j.contains(&format!("\"{k}\":")), "json lacks {k}: {j}");
        assert!(r.table().contains(k), "table lacks {k}");
    }
}

#[test]
fn frames_waiting_in_the_receive_fifo_cross_the_switch() {
    // 400 frames per pair against 256 RX buffers: at least 144 wait in the source's FIFO.
    let r = run(&MigrateOptions {
        burst_at_switch: 400,
        queue_pairs: 2,
        ..opts()
    })
    .unwrap();
    assert_clean(&r, "burst at the switch");
}
