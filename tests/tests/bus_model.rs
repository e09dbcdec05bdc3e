//! The bus-overhead model (`vdpa-emu bench bus`, docs/bus-model.md) on a small slice of its
//! matrix: relations that must hold whatever the constants, and the plumbing from the PCIe
//! Device Control register to the DMA engine's TLP sizes.

use sim_harness::bench::bus::{
    self, BusBenchOptions, Category, Config, Logging, Measurement, Outcome, Ring,
};

fn opts() -> BusBenchOptions {
    BusBenchOptions {
        packets: 256,
        warmup: 64,
        ..Default::default()
    }
}

fn cfg(ring: Ring, frame: usize, batch: u16, event_idx: bool, logging: Logging) -> Config {
    Config {
        ring,
        frame,
        batch,
        event_idx,
        logging,
    }
}

fn run(c: Config, o: &BusBenchOptions) -> Measurement {
    match bus::measure(&c, o) {
        Ok(Ok(m)) => m,
        Ok(Err(why)) => panic!("{}: not available: {why}", c.label()),
        Err(e) => panic!("{}: {e}", c.label()),
    }
}

fn pp(m: &Measurement, c: Category) -> f64 {
    m.per_packet(m.get(c).pcie.tlps)
}

fn index_tlps(m: &Measurement) -> f64 {
    pp(m, Category::IndexRead) + pp(m, Category::IndexWrite)
}

const K4: Logging = Logging::Granule(4096);
const M2: Logging = Logging::Granule(2 << 20);

#[test]
fn logging_adds_log_writes_and_coarse_granules_write_no_more_tlps() {
    let o = opts();
    for batch in [1, 8] {
        let off = run(cfg(Ring::Split, 64, batch, false, Logging::Off), &o);
        let k4 = run(cfg(Ring::Split, 64, batch, false, K4), &o);
        let m2 = run(cfg(Ring::Split, 64, batch, false, M2), &o);
        assert_eq!(
            off.get(Category::LogWrite).traffic.transactions,
            0,
            "batch {batch}: no log writes with logging off"
        );
        assert!(
            k4.get(Category::LogWrite).traffic.transactions > 0,
            "batch {batch}: logging on adds LogWrite transactions"
        );
        assert!(k4.get(Category::LogWrite).pcie.tlps > 0);
        assert!(m2.get(Category::LogWrite).pcie.tlps > 0);
        // Same traffic, coarser granule: never more log TLPs (a granule is a run of all-ones
        // words, written as MPS bursts), though more log bytes.
        assert!(
            m2.get(Category::LogWrite).pcie.tlps <= k4.get(Category::LogWrite).pcie.tlps,
            "batch {batch}: 2M {} > 4K {}",
            m2.get(Category::LogWrite).pcie.tlps,
            k4.get(Category::LogWrite).pcie.tlps
        );
        assert!(
            m2.get(Category::LogWrite).traffic.bytes >= k4.get(Category::LogWrite).traffic.bytes
        );
        // Logging changes nothing else the device does on the bus.
        for c in Category::ALL
            .into_iter()
            .filter(|c| *c != Category::LogWrite)
        {
            assert_eq!(
                off.get(c),
                k4.get(c),
                "batch {batch}: {} differs with logging on",
                c.name()
            );
            assert_eq!(
                off.get(c),
                m2.get(c),
                "batch {batch}: {} differs with 2M logging",
                c.name()
            );
        }
    }
}

#[test]
fn event_idx_off_reads_at_least_as_much_ring_metadata() {
    let o = opts();
    for batch in [1, 32] {
        let off = run(cfg(Ring::Split, 64, batch, false, Logging::Off), &o);
        let on = run(cfg(Ring::Split, 64, batch, true, Logging::Off), &o);
        assert!(
            pp(&off, Category::IndexRead) >= pp(&on, Category::IndexRead),
            "batch {batch}"
        );
        // EVENT_IDX costs the avail_event store when the device runs out of work.
        assert!(
            pp(&on, Category::IndexWrite) > pp(&off, Category::IndexWrite),
            "batch {batch}"
        );
        // Descriptors, write-back and packet data do not depend on it.
        for c in [
            Category::Descriptor,
            Category::UsedWriteBack,
            Category::PacketData,
        ] {
            assert_eq!(off.get(c), on.get(c), "batch {batch}: {}", c.name());
        }
    }
}

#[test]
fn batching_amortizes_index_traffic() {
    let o = opts();
    for ring in [Ring::Split, Ring::Packed] {
        // The device offers VIRTIO_F_RING_PACKED: both halves run, and `run` fails the test if
        // a configuration is not measured.
        let b1 = run(cfg(ring, 64, 1, true, Logging::Off), &o);
        let b32 = run(cfg(ring, 64, 32, true, Logging::Off), &o);
        assert!(
            index_tlps(&b32) < index_tlps(&b1),
            "{ring:?}: batch 32 {} vs batch 1 {}",
            index_tlps(&b32),
            index_tlps(&b1)
        );
        assert!(
            b32.per_packet(b32.ring().pcie.all_tlps()) < b1.per_packet(b1.ring().pcie.all_tlps())
        );
        assert!(b32.per_packet(b32.kicks) < b1.per_packet(b1.kicks));
        // Packet data is per packet whatever the batch.
        assert_eq!(
            pp(&b1, Category::PacketData),
            pp(&b32, Category::PacketData)
        );
    }
}

#[test]
fn tlps_follow_mps_and_mrrs_from_device_control() {
    // A 1500-byte frame: TX reads 12 + 1500 bytes in one access, RX writes the same in one
    // access (header and frame gathered, DmaEngine::write_gather). The driver model's 2 KiB
    // buffers are 64-byte aligned, so a buffer may straddle a 4 KiB boundary: one more
    // request then.
    let c = cfg(Ring::Split, 1500, 8, false, Logging::Off);
    let base = run(c, &opts());
    let pkt = base.get(Category::PacketData);
    assert_eq!(base.per_packet(pkt.traffic.bytes), 2.0 * 1512.0);
    // Accesses keep their meaning: one read and one write (header and frame) per packet.
    assert_eq!(base.per_packet(pkt.traffic.transactions), 2.0);
    // MRRS 512: 3 read requests (4 across a boundary); MPS 128: 12 posted writes (13).
    let within = |v: f64, lo: f64, hi: f64| (lo..=hi).contains(&v);
    assert!(
        within(pp(&base, Category::PacketData), 3.0 + 12.0, 4.0 + 13.0),
        "{}",
        pp(&base, Category::PacketData)
    );
    // Read completions of at most MPS bytes: 4 + 4 + 4 for 512 + 512 + 488 (+1 or 2 across).
    assert!(within(base.per_packet(pkt.pcie.completions), 12.0, 14.0));

    // Device Control MRRS 128 (MPS unchanged): 12 or 13 read requests, the writes as before.
    let small = run(
        c,
        &BusBenchOptions {
            mps: 128,
            mrrs: 128,
            ..opts()
        },
    );
    let more = pp(&small, Category::PacketData) - pp(&base, Category::PacketData);
    assert!(
        within(more, 8.0, 10.0),
        "MRRS 512 -> 128 adds {more} read requests per packet"
    );
    // MPS 256 and MRRS 1024: 2 (3) reads and 6 (7) writes; completions of up to 256 bytes.
    let big = run(
        c,
        &BusBenchOptions {
            mps: 256,
            mrrs: 1024,
            ..opts()
        },
    );
    assert!(
        within(pp(&big, Category::PacketData), 2.0 + 6.0, 3.0 + 7.0),
        "{}",
        pp(&big, Category::PacketData)
    );
    assert!(within(
        big.per_packet(big.get(Category::PacketData).pcie.completions),
        6.0,
        8.0
    ));
    // Ring metadata is far below MPS / MRRS: unchanged.
    assert_eq!(base.ring().pcie.tlps, big.ring().pcie.tlps);
    assert_eq!(base.ring().pcie.tlps, small.ring().pcie.tlps);
}

#[test]
fn per_packet_accounting_is_consistent() {
    let o = opts();
    let m = run(cfg(Ring::Split, 64, 8, true, K4), &o);
    // Writes have no completions; reads have at least one per request.
    for c in [
        Category::IndexWrite,
        Category::UsedWriteBack,
        Category::LogWrite,
    ] {
        assert_eq!(m.get(c).pcie.completions, 0, "{}", c.name());
    }
    for c in [Category::Descriptor, Category::IndexRead] {
        assert!(
            m.get(c).pcie.completions >= m.get(c).pcie.tlps,
            "{}",
            c.name()
        );
    }
    // Split ring, 64-byte frames: two 16-byte descriptors per packet (TX and RX), each read
    // once. At batch 8 the eight heads a fetch brings sit next to each other in the table
    // (the driver model's free list is a stack) and are read as one run: a quarter of a read
    // per packet. At batch 1 nothing follows a head: one read per descriptor.
    let desc = |m: &Measurement| m.get(Category::Descriptor).traffic;
    assert_eq!(m.per_packet(desc(&m).bytes), 32.0);
    assert_eq!(m.per_packet(desc(&m).transactions), 0.25);
    assert_eq!(pp(&m, Category::Descriptor), 0.25);
    let one = run(cfg(Ring::Split, 64, 1, true, K4), &o);
    assert_eq!(one.per_packet(desc(&one).bytes), 32.0);
    assert_eq!(one.per_packet(desc(&one).transactions), 2.0);
    // A device modelled without runs (`bench bus --no-desc-runs`) reads every descriptor on
    // its own at batch 8 too, the same bytes.
    let single = run(
        cfg(Ring::Split, 64, 8, true, K4),
        &BusBenchOptions {
            desc_runs: false,
            ..opts()
        },
    );
    assert_eq!(single.per_packet(desc(&single).bytes), 32.0);
    assert_eq!(single.per_packet(desc(&single).transactions), 2.0);
    // Index stores are 2-byte words: used->idx of both queues, avail_event.
    assert!(
        m.get(Category::IndexWrite).traffic.bytes
            == 2 * m.get(Category::IndexWrite).traffic.transactions
    );
    // Every TLP moves at least its payload; the wire adds headers.
    let tot = m.total();
    assert!(tot.pcie.payload_bytes >= tot.traffic.bytes);
    assert!(o.wire.wire_bytes(&tot.pcie) > tot.pcie.payload_bytes + 20 * tot.pcie.all_tlps());
}

#[test]
fn packed_rows_are_measured() {
    let o = BusBenchOptions {
        frames: vec![64],
        batches: vec![8],
        event_idx: vec![true],
        logging: vec![Logging::Off],
        ..opts()
    };
    let r = bus::run(&o).expect("bench runs");
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.rows.len(), 2);
    let split = &r.rows[0];
    let packed = &r.rows[1];
    assert_eq!(
        (split.config.ring, packed.config.ring),
        (Ring::Split, Ring::Packed)
    );
    assert!(matches!(split.outcome, Outcome::Measured(_)));
    let table = r.table();
    let json = r.json();
    assert_eq!(json.matches("\"status\"").count(), 2);
    assert_eq!(r.csv().lines().count(), 3);
    let svg = r.svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // The model offers VIRTIO_F_RING_PACKED, so the packed row must be measured, never
    // reported as not available.
    assert!(r.packed_offered(), "{}", r.table());
    let Outcome::Measured(p) = &packed.outcome else {
        panic!("packed offered but not measured: {:?}", packed.outcome)
    };
    let Outcome::Measured(s) = &split.outcome else {
        unreachable!()
    };
    assert_eq!(json.matches("\"status\": \"measured\"").count(), 2);
    assert!(table.contains("packed vs split, per packet"));
    // The packed ring has no avail ring: its ring index reads are the event-suppression
    // word only, fewer than the split ring's avail idx + avail ring + flags reads.
    assert!(pp(p, Category::IndexRead) < pp(s, Category::IndexRead));
    // Packet data costs the same on either ring.
    assert_eq!(p.get(Category::PacketData), s.get(Category::PacketData));
}
