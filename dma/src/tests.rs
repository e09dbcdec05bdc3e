//! Engine-level tests: translation, faults, IOTLB, bus accounting, dirty log, write trace.

use super::*;

const LOG_IOVA: u64 = 0x1000_0000_0000; // DPDK's IFCVF_LOG_BASE

/// Guest memory of `size` bytes mapped RW at `iova` from file offset 0, and an engine.
fn setup(size: u64, iova: u64) -> (SharedMemory, Arc<AddressSpace>, DmaEngine) {
    let shm = SharedMemory::new("guest", size).unwrap();
    let space = Arc::new(AddressSpace::new());
    shm.map_into(&space, iova, 0, size, Perms::RW).unwrap();
    let eng = DmaEngine::new(space.clone(), 64);
    (shm, space, eng)
}

/// Adds a log region of `size` bytes at `LOG_IOVA`.
fn add_log(space: &AddressSpace, size: u64) -> SharedMemory {
    let log = SharedMemory::new("log", size).unwrap();
    log.map_into(space, LOG_IOVA, 0, size, Perms::RW).unwrap();
    log
}

#[test]
fn round_trip_nonzero_iova_and_file_offset() {
    let shm = SharedMemory::new("guest", 0x10000).unwrap();
    let space = Arc::new(AddressSpace::new());
    // IOVA 0x4000_0000 -> file offset 0x3000.
    shm.map_into(&space, 0x4000_0000, 0x3000, 0x4000, Perms::RW)
        .unwrap();
    assert_eq!(
        space.mappings(),
        vec![MappingInfo {
            iova: 0x4000_0000,
            size: 0x4000,
            perms: Perms::RW,
            has_fd: true
        }]
    );
    let mut eng = DmaEngine::new(space, 16);
    let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    eng.write(0x4000_0010, &data, DmaKind::PacketWrite).unwrap();
    // The driver side sees it at file offset 0x3010.
    let mut seen = vec![0u8; data.len()];
    shm.read(0x3010, &mut seen).unwrap();
    assert_eq!(seen, data);
    // And the device reads what the driver writes.
    shm.write(0x5000, b"hello, device").unwrap();
    let mut buf = [0u8; 13];
    eng.read(0x4000_2000, &mut buf, DmaKind::PacketRead)
        .unwrap();
    assert_eq!(&buf, b"hello, device");
    // Nothing outside the mapped file window was touched.
    let snap = shm.snapshot();
    assert!(snap[..0x3010].iter().all(|&b| b == 0));
}

#[test]
fn zero_length_access_is_a_no_op() {
    let space = Arc::new(AddressSpace::new());
    let mut eng = DmaEngine::new(space, 8);
    eng.read(0xdead_0000, &mut [], DmaKind::PacketRead).unwrap();
    eng.write(u64::MAX, &[], DmaKind::PacketWrite).unwrap();
    assert_eq!(eng.bus_stats().total(), Traffic::default());
    assert_eq!(eng.iommu_stats().faults(), 0);
}

#[test]
fn iotlb_hits_and_generation_invalidation() {
    let (_shm, space, mut eng) = setup(0x4000, 0x10000);
    eng.write_u32(0x10000, 1, DmaKind::RingWrite).unwrap();
    assert_eq!(eng.iommu_stats().iotlb_misses, 1);
    assert_eq!(eng.iommu_stats().iotlb_hits, 0);
    // Same mapping, other page: the entry for page 0x10 does not cover page 0x13, but the
    // access at page 0x10 again is a hit anywhere in the mapping.
    eng.write_u32(0x10ffc, 2, DmaKind::RingWrite).unwrap();
    eng.write(0x10800, &[0u8; 0x3000], DmaKind::PacketWrite)
        .unwrap();
    assert_eq!(eng.iommu_stats().iotlb_hits, 2);
    eng.write_u32(0x13000, 3, DmaKind::RingWrite).unwrap();
    assert_eq!(eng.iommu_stats().iotlb_misses, 2);
    assert_eq!(eng.iommu_stats().iotlb_invalidations, 0);

    // Unmap: the cached translation must not be used any more.
    assert_eq!(space.unmap(0x10000, 0x4000).unwrap(), 0x4000);
    let e = eng.write_u32(0x10000, 4, DmaKind::RingWrite).unwrap_err();
    assert_eq!(
        e,
        DmaFault::Unmapped {
            iova: 0x10000,
            len: 4
        }
    );
    let s = *eng.iommu_stats();
    assert_eq!(s.iotlb_invalidations, 1);
    assert_eq!(s.faults_unmapped, 1);
    assert_eq!(s.faults(), 1);
    // Only one invalidation per generation change.
    assert!(eng.read_u16(0x10000, DmaKind::RingRead).is_err());
    assert_eq!(eng.iommu_stats().iotlb_invalidations, 1);

    // Remap at the same IOVA with other memory: the device sees the new memory.
    let other = SharedMemory::new("other", 0x4000).unwrap();
    other.write_u32(0, 0x1234_5678).unwrap();
    other
        .map_into(&space, 0x10000, 0, 0x4000, Perms::RO)
        .unwrap();
    assert_eq!(
        eng.read_u32(0x10000, DmaKind::RingRead).unwrap(),
        0x1234_5678
    );
    assert_eq!(eng.iommu_stats().iotlb_invalidations, 2);
    // ...and its permissions: RO now.
    assert!(matches!(
        eng.write_u32(0x10000, 4, DmaKind::RingWrite),
        Err(DmaFault::Permission { write: true, .. })
    ));

    eng.invalidate_iotlb();
    assert_eq!(eng.iommu_stats().iotlb_invalidations, 3);
    let misses = eng.iommu_stats().iotlb_misses;
    eng.read_u32(0x10000, DmaKind::RingRead).unwrap();
    assert_eq!(eng.iommu_stats().iotlb_misses, misses + 1);
}

/// A mapping that covers whole aligned 2 MiB blocks costs one IOTLB entry per block (a
/// superpage translation); one that does not costs one per page, and its pages evict each other
/// in a 64-entry table.
#[test]
fn iotlb_entries_cover_2mib_blocks_of_mappings_that_cover_them() {
    const MIB2: u64 = 2 << 20;
    // 4 MiB at a 2 MiB-aligned IOVA: two blocks.
    let (_shm, _space, mut eng) = setup(2 * MIB2, 4 * MIB2);
    for round in 0..2 {
        for page in 0..1024u64 {
            eng.read_u16(4 * MIB2 + page * 4096 + 8, DmaKind::RingRead)
                .unwrap();
        }
        let s = *eng.iommu_stats();
        assert_eq!(
            (s.iotlb_misses, s.iotlb_hits),
            (2, 1024 * (round + 1) - 2),
            "one miss per 2 MiB block, round {round}"
        );
    }
    // The same 4 MiB at an IOVA 4 KiB past a block boundary, [4 MiB + 4 KiB, 8 MiB + 4 KiB),
    // covers one whole block only, [6, 8) MiB: its 512 pages cost one entry, the 511 pages
    // before it one each, and those evict each other in 64 entries (and maybe the block's).
    let (_shm, _space, mut eng) = setup(2 * MIB2, 2 * MIB2 + 4096);
    for _ in 0..2 {
        for page in 0..1023u64 {
            eng.read_u16(2 * MIB2 + 4096 + page * 4096, DmaKind::RingRead)
                .unwrap();
        }
    }
    let s = *eng.iommu_stats();
    assert!(
        (2 * 511..=2 * 511 + 2).contains(&s.iotlb_misses),
        "the pages outside the whole block miss, the block's do not: {s:?}"
    );
    assert_eq!(s.iotlb_hits + s.iotlb_misses, 2 * 1023);
    // A mapping smaller than a block never gets a 2 MiB entry, whatever its alignment.
    let (_shm, _space, mut eng) = setup(MIB2 / 2, 4 * MIB2);
    for _ in 0..2 {
        for page in 0..128u64 {
            eng.read_u16(4 * MIB2 + page * 4096, DmaKind::RingRead)
                .unwrap();
        }
    }
    assert_eq!(
        eng.iommu_stats().iotlb_misses,
        256,
        "64 entries for 128 pages"
    );
}

#[test]
fn no_iotlb_always_misses() {
    let (_shm, space, _) = setup(0x2000, 0);
    let mut eng = DmaEngine::new(space, 0);
    assert_eq!(eng.iotlb_entries(), 0);
    for _ in 0..5 {
        eng.read_u16(0x100, DmaKind::RingRead).unwrap();
    }
    assert_eq!(eng.iommu_stats().iotlb_misses, 5);
    assert_eq!(eng.iommu_stats().iotlb_hits, 0);
    // Non-power-of-two sizes are rounded up.
    assert_eq!(
        DmaEngine::new(Arc::new(AddressSpace::new()), 100).iotlb_entries(),
        128
    );
}

#[test]
fn crosses_mapping_end_writes_nothing() {
    let (shm, _space, mut eng) = setup(0x2000, 0x10000);
    shm.fill(0, 0x2000, 0x5a).unwrap();
    let before = shm.snapshot();
    let e = eng
        .write(0x11f80, &[0xffu8; 0x100], DmaKind::PacketWrite)
        .unwrap_err();
    assert_eq!(
        e,
        DmaFault::CrossesMappingEnd {
            iova: 0x11f80,
            len: 0x100,
            mapping_end: 0x12000
        }
    );
    assert_eq!(shm.snapshot(), before, "a faulted write touched memory");
    let mut buf = [0u8; 0x100];
    assert!(matches!(
        eng.read(0x11f80, &mut buf, DmaKind::PacketRead),
        Err(DmaFault::CrossesMappingEnd { .. })
    ));
    assert!(
        buf.iter().all(|&b| b == 0),
        "a faulted read filled the buffer"
    );
    assert_eq!(eng.iommu_stats().faults_crossing, 2);
    assert_eq!(eng.bus_stats().total(), Traffic::default());
    // The last byte of the mapping is fine.
    eng.write(0x11fff, &[1], DmaKind::PacketWrite).unwrap();
}

#[test]
fn unmapped_permission_nobacking_overflow() {
    let shm = SharedMemory::new("g", 0x3000).unwrap();
    let space = Arc::new(AddressSpace::new());
    shm.map_into(&space, 0x1000, 0, 0x1000, Perms::RO).unwrap();
    shm.map_into(&space, 0x3000, 0x1000, 0x1000, Perms::WO)
        .unwrap();
    space.map(0x8000, 0x1000, Perms::RW, Backing::None).unwrap();
    space
        .map(u64::MAX - 0x1000, 0x1000, Perms::RW, Backing::None)
        .unwrap();
    let mut eng = DmaEngine::new(space, 64);
    let mut b = [0u8; 4];

    assert_eq!(
        eng.read(0x2000, &mut b, DmaKind::Descriptor),
        Err(DmaFault::Unmapped {
            iova: 0x2000,
            len: 4
        })
    );
    // RO: reads fine, writes refused (also on the IOTLB-hit path).
    eng.read(0x1000, &mut b, DmaKind::Descriptor).unwrap();
    for _ in 0..2 {
        assert_eq!(
            eng.write(0x1000, &b, DmaKind::RingWrite),
            Err(DmaFault::Permission {
                iova: 0x1000,
                len: 4,
                write: true
            })
        );
    }
    // WO: writes fine, reads refused.
    eng.write(0x3000, &[9, 9], DmaKind::RingWrite).unwrap();
    assert_eq!(
        eng.read_u16(0x3000, DmaKind::RingRead),
        Err(DmaFault::Permission {
            iova: 0x3000,
            len: 2,
            write: false
        })
    );
    assert_eq!(shm.read_u16(0x1000).unwrap(), 0x0909);
    // No fd.
    assert_eq!(
        eng.read(0x8ffc, &mut b, DmaKind::PacketRead),
        Err(DmaFault::NoBacking {
            iova: 0x8ffc,
            len: 4
        })
    );
    assert_eq!(
        eng.publish_u16(0x8000, 1, DmaKind::RingWrite),
        Err(DmaFault::NoBacking {
            iova: 0x8000,
            len: 2
        })
    );
    // Overflow at the top of the IOVA space.
    assert_eq!(
        eng.read(u64::MAX, &mut b, DmaKind::PacketRead),
        Err(DmaFault::AddressOverflow {
            iova: u64::MAX,
            len: 4
        })
    );
    assert_eq!(
        eng.write(u64::MAX - 1, &[0; 3], DmaKind::PacketWrite),
        Err(DmaFault::AddressOverflow {
            iova: u64::MAX - 1,
            len: 3
        })
    );
    // An access ending exactly at 2^64 overflows too (mappings end at u64::MAX at most).
    assert_eq!(
        eng.read_u64(u64::MAX - 7, DmaKind::RingRead),
        Err(DmaFault::AddressOverflow {
            iova: u64::MAX - 7,
            len: 8
        })
    );
    assert_eq!(
        eng.read_u64(u64::MAX - 0x1008, DmaKind::RingRead),
        Err(DmaFault::Unmapped {
            iova: u64::MAX - 0x1008,
            len: 8
        })
    );
    // Mapped near the top but without backing: NoBacking, not overflow.
    assert!(matches!(
        eng.read_u64(u64::MAX - 16, DmaKind::RingRead),
        Err(DmaFault::NoBacking { .. })
    ));
    let s = *eng.iommu_stats();
    assert_eq!(
        (
            s.faults_unmapped,
            s.faults_permission,
            s.faults_no_backing,
            s.faults_overflow,
            s.faults_crossing
        ),
        (2, 3, 3, 3, 0)
    );
    assert_eq!(s.faults(), 11);
    // Faults count nothing on the bus.
    assert_eq!(eng.bus_stats().get(DmaKind::RingWrite).transactions, 1);
    assert_eq!(eng.bus_stats().get(DmaKind::PacketRead), Traffic::default());
}

#[test]
fn fault_messages_name_iova_and_len() {
    let msgs = [
        DmaFault::Unmapped {
            iova: 0xabc0,
            len: 12,
        }
        .to_string(),
        DmaFault::Permission {
            iova: 0xabc0,
            len: 12,
            write: true,
        }
        .to_string(),
        DmaFault::CrossesMappingEnd {
            iova: 0xabc0,
            len: 12,
            mapping_end: 0xabc8,
        }
        .to_string(),
        DmaFault::NoBacking {
            iova: 0xabc0,
            len: 12,
        }
        .to_string(),
        DmaFault::AddressOverflow {
            iova: 0xabc0,
            len: 12,
        }
        .to_string(),
    ];
    for m in &msgs {
        assert!(m.contains("0xabc0") && m.contains("12"), "{m}");
    }
    assert!(msgs[1].contains("write"));
    assert!(msgs[2].contains("0xabc8"));
}

#[test]
fn split_across_adjacent_mappings() {
    let shm = SharedMemory::new("g", 0x10000).unwrap();
    let space = Arc::new(AddressSpace::new());
    // Three adjacent 4 KiB mappings at IOVA 0x10000.. from scattered file offsets.
    shm.map_into(&space, 0x10000, 0x0000, 0x1000, Perms::RW)
        .unwrap();
    shm.map_into(&space, 0x11000, 0x5000, 0x1000, Perms::RW)
        .unwrap();
    shm.map_into(&space, 0x12000, 0x9000, 0x1000, Perms::RW)
        .unwrap();
    let mut eng = DmaEngine::new(space.clone(), 64);
    let data: Vec<u8> = (1..=32).collect();
    eng.write(0x10ff0, &data, DmaKind::PacketWrite).unwrap();
    assert_eq!(
        eng.bus_stats().get(DmaKind::PacketWrite),
        Traffic {
            transactions: 2,
            bytes: 32
        }
    );
    let mut a = [0u8; 16];
    shm.read(0x0ff0, &mut a).unwrap();
    assert_eq!(a[..], data[..16]);
    shm.read(0x5000, &mut a).unwrap();
    assert_eq!(a[..], data[16..]);
    let mut back = [0u8; 32];
    eng.read(0x10ff0, &mut back, DmaKind::PacketRead).unwrap();
    assert_eq!(back[..], data[..]);
    assert_eq!(eng.bus_stats().get(DmaKind::PacketRead).transactions, 2);
    // Three pieces.
    let big = vec![0x77u8; 0x1002];
    eng.write(0x10fff, &big, DmaKind::PacketWrite).unwrap();
    assert_eq!(eng.bus_stats().get(DmaKind::PacketWrite).transactions, 5);
    assert_eq!(shm.snapshot()[0x9000], 0x77);
    assert_eq!(shm.snapshot()[0x9001], 0);
    // A misaligned u16 across the boundary: byte path, still correct.
    eng.write_u16(0x11fff, 0xbeef, DmaKind::RingWrite).unwrap();
    assert_eq!(eng.read_u16(0x11fff, DmaKind::RingRead).unwrap(), 0xbeef);
    eng.publish_u16(0x11fff, 0xcafe, DmaKind::RingWrite)
        .unwrap();
    assert_eq!(eng.read_u16(0x11fff, DmaKind::RingRead).unwrap(), 0xcafe);
    assert_eq!(eng.bus_stats().get(DmaKind::RingRead).transactions, 4);
    // A hole after the third mapping: crossing fault reports the end of the run.
    assert_eq!(
        eng.write(0x10000, &[0u8; 0x3001], DmaKind::PacketWrite),
        Err(DmaFault::CrossesMappingEnd {
            iova: 0x10000,
            len: 0x3001,
            mapping_end: 0x13000
        })
    );
    // Permission is checked on every piece.
    space.unmap(0x12000, 0x1000).unwrap();
    shm.map_into(&space, 0x12000, 0x9000, 0x1000, Perms::RO)
        .unwrap();
    assert!(matches!(
        eng.write(0x11ff0, &[0u8; 0x20], DmaKind::PacketWrite),
        Err(DmaFault::Permission { .. })
    ));
    eng.read(0x11ff0, &mut back, DmaKind::PacketRead).unwrap();
}

/// A 16-byte read at an IOVA, as `read_array` or `read_words` does it.
type Read16 = fn(&mut DmaEngine, u64) -> Result<[u8; 16], DmaFault>;

/// `read16` reads what `read` reads, counts what it counts and faults where it faults.
fn reads_counts_and_faults_as_read_does(read16: Read16) {
    let shm = SharedMemory::new("g", 0x4000).unwrap();
    let space = Arc::new(AddressSpace::new());
    // Two adjacent mappings from scattered file offsets, then a hole, then a write-only page.
    shm.map_into(&space, 0x10000, 0x0000, 0x1000, Perms::RW)
        .unwrap();
    shm.map_into(&space, 0x11000, 0x2000, 0x1000, Perms::RW)
        .unwrap();
    shm.map_into(&space, 0x20000, 0x3000, 0x1000, Perms::WO)
        .unwrap();
    let data: Vec<u8> = (1..=16).collect();
    shm.write(0x0ff8, &data[..8]).unwrap();
    shm.write(0x2000, &data[8..]).unwrap();
    shm.write(0x0104, &data).unwrap();
    for iotlb in [64, 0] {
        let mut eng = DmaEngine::new(space.clone(), iotlb);
        // Inside one mapping, unaligned (an IOTLB hit after the first access, with an IOTLB).
        for _ in 0..2 {
            assert_eq!(read16(&mut eng, 0x10104).unwrap()[..], data[..]);
        }
        // Across the two mappings: the slow path's two pieces.
        assert_eq!(read16(&mut eng, 0x10ff8).unwrap()[..], data[..]);
        let mut by_read = [0u8; 16];
        eng.read(0x10ff8, &mut by_read, DmaKind::PacketRead)
            .unwrap();
        assert_eq!(by_read[..], data[..]);
        assert_eq!(
            eng.bus_stats().get(DmaKind::Descriptor),
            Traffic {
                transactions: 2 + 2,
                bytes: 3 * 16
            },
            "iotlb {iotlb}: one transaction per read inside a mapping, two across"
        );
        // Faults are read's: unmapped, crossing into the hole, no read permission.
        assert!(matches!(
            read16(&mut eng, 0x18000),
            Err(DmaFault::Unmapped { .. })
        ));
        assert!(matches!(
            read16(&mut eng, 0x11ff8),
            Err(DmaFault::CrossesMappingEnd { .. })
        ));
        assert!(matches!(
            read16(&mut eng, 0x20000),
            Err(DmaFault::Permission { .. })
        ));
        assert_eq!(eng.iommu_stats().faults(), 3, "iotlb {iotlb}");
        assert_eq!(
            eng.bus_stats().get(DmaKind::Descriptor).transactions,
            4,
            "a fault reads nothing"
        );
    }
}

#[test]
fn read_array_reads_counts_and_faults_as_read_does() {
    reads_counts_and_faults_as_read_does(|eng, iova| {
        let mut a = [0u8; 16];
        eng.read_array(iova, &mut a, DmaKind::Descriptor)?;
        Ok(a)
    });
}

#[test]
fn read_words_reads_counts_and_faults_as_read_does() {
    reads_counts_and_faults_as_read_does(|eng, iova| {
        // Little-endian words: their bytes in memory order are the bytes read.
        let w: [u64; 2] = eng.read_words(iova, DmaKind::Descriptor)?;
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&w[0].to_le_bytes());
        a[8..].copy_from_slice(&w[1].to_le_bytes());
        Ok(a)
    });
}

#[test]
fn mapping_starting_mid_page_is_not_hit_below_its_start() {
    let shm = SharedMemory::new("g", 0x2000).unwrap();
    let space = Arc::new(AddressSpace::new());
    // Page 1 holds the end of nothing and the start of a mapping at 0x1800.
    shm.map_into(&space, 0x1800, 0, 0x1000, Perms::RW).unwrap();
    let mut eng = DmaEngine::new(space, 16);
    eng.write_u16(0x1800, 1, DmaKind::RingWrite).unwrap();
    assert_eq!(
        eng.write_u16(0x17fe, 1, DmaKind::RingWrite),
        Err(DmaFault::Unmapped {
            iova: 0x17fe,
            len: 2
        })
    );
    // Same page again: 0x2000..0x2800 is page 2; the end of the mapping at 0x2800.
    eng.write_u16(0x27fe, 1, DmaKind::RingWrite).unwrap();
    assert_eq!(
        eng.write_u16(0x2800, 1, DmaKind::RingWrite),
        Err(DmaFault::Unmapped {
            iova: 0x2800,
            len: 2
        })
    );
    assert!(matches!(
        eng.write_u32(0x27fe, 1, DmaKind::RingWrite),
        Err(DmaFault::CrossesMappingEnd {
            mapping_end: 0x2800,
            ..
        })
    ));
}

#[test]
fn index_reads_and_publish() {
    let (shm, _space, mut eng) = setup(0x4000, 0x8000_0000);
    shm.store_u16_release(0x102, 0x1234).unwrap();
    shm.write_u64(0x200, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(
        eng.read_u16(0x8000_0102, DmaKind::RingRead).unwrap(),
        0x1234
    );
    assert_eq!(
        eng.read_u32(0x8000_0200, DmaKind::RingRead).unwrap(),
        0x5566_7788
    );
    assert_eq!(
        eng.read_u64(0x8000_0200, DmaKind::RingRead).unwrap(),
        0x1122_3344_5566_7788
    );
    // Misaligned loads fall back to byte copies.
    assert_eq!(
        eng.read_u16(0x8000_0201, DmaKind::RingRead).unwrap(),
        0x6677
    );
    assert_eq!(
        eng.read_u32(0x8000_0203, DmaKind::RingRead).unwrap(),
        0x2233_4455
    );
    eng.publish_u16(0x8000_0302, 0xabcd, DmaKind::RingWrite)
        .unwrap();
    assert_eq!(shm.read_u16(0x302).unwrap(), 0xabcd);
    eng.publish_u16(0x8000_0305, 0x0102, DmaKind::RingWrite)
        .unwrap();
    assert_eq!(shm.snapshot()[0x305..0x307], [0x02, 0x01]);
    assert_eq!(
        eng.bus_stats().get(DmaKind::RingRead),
        Traffic {
            transactions: 5,
            bytes: 2 + 4 + 8 + 2 + 4
        }
    );
    assert_eq!(
        eng.bus_stats().get(DmaKind::RingWrite),
        Traffic {
            transactions: 2,
            bytes: 4
        }
    );
    assert_eq!(
        eng.publish_u16(0x7fff_ffff, 1, DmaKind::RingWrite),
        Err(DmaFault::Unmapped {
            iova: 0x7fff_ffff,
            len: 2
        })
    );
}

#[test]
fn bus_stats_counts_per_kind() {
    let (_shm, _space, mut eng) = setup(0x4000, 0);
    let mut b = [0u8; 16];
    eng.read(0, &mut b, DmaKind::Descriptor).unwrap();
    eng.read(0x100, &mut b[..12], DmaKind::IndirectTable)
        .unwrap();
    eng.read_u16(0x200, DmaKind::RingRead).unwrap();
    eng.write(0x300, &[0; 8], DmaKind::RingWrite).unwrap();
    eng.publish_u16(0x302, 1, DmaKind::RingWrite).unwrap();
    eng.read(0x1000, &mut [0u8; 64], DmaKind::PacketRead)
        .unwrap();
    eng.write(0x2000, &[0u8; 1500], DmaKind::PacketWrite)
        .unwrap();
    eng.write(0x2000, &[0u8; 10], DmaKind::LogWrite).unwrap();
    assert!(eng.read(0x8000, &mut b, DmaKind::PacketRead).is_err());
    let s = eng.bus_stats().clone();
    let t = |tr, by| Traffic {
        transactions: tr,
        bytes: by,
    };
    assert_eq!(s.get(DmaKind::Descriptor), t(1, 16));
    assert_eq!(s.get(DmaKind::IndirectTable), t(1, 12));
    assert_eq!(s.get(DmaKind::RingRead), t(1, 2));
    assert_eq!(s.get(DmaKind::RingWrite), t(2, 10));
    assert_eq!(s.get(DmaKind::PacketRead), t(1, 64));
    assert_eq!(s.get(DmaKind::PacketWrite), t(1, 1500));
    assert_eq!(s.get(DmaKind::LogWrite), t(1, 10));
    assert_eq!(s.total(), t(8, 16 + 12 + 2 + 10 + 64 + 1500 + 10));
    eng.read(0, &mut b, DmaKind::Descriptor).unwrap();
    assert_eq!(
        eng.bus_stats().delta(&s).total(),
        t(1, 16),
        "delta holds only the new read"
    );
    eng.reset_stats();
    assert_eq!(eng.bus_stats().total(), Traffic::default());
    assert_eq!(*eng.iommu_stats(), IommuStats::default());
    assert_eq!(*eng.log_stats(), LogStats::default());
}

/// Reads the first `n` bytes of the log.
fn log_bytes(log: &SharedMemory, n: usize) -> Vec<u8> {
    log.snapshot()[..n].to_vec()
}

#[test]
fn log_bit_positions() {
    let (_shm, space, mut eng) = setup(0x20000, 0); // 32 pages
    let log = add_log(&space, 0x1000);
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    for pfn in [0u64, 7, 8] {
        eng.write(pfn << 12, &[1], DmaKind::PacketWrite).unwrap();
    }
    // Deferred: nothing in the log until a flush.
    assert_eq!(log_bytes(&log, 16), vec![0; 16]);
    assert_eq!(eng.pending_log_words(), 1);
    eng.flush_log().unwrap();
    assert_eq!(eng.pending_log_words(), 0);
    // pfn 0 -> byte 0 bit 0; pfn 7 -> byte 0 bit 7; pfn 8 -> byte 1 bit 0.
    assert_eq!(log_bytes(&log, 3), vec![0x81, 0x01, 0x00]);
    // Multi-page write: 0x2fff..=0x5000 touches pfns 2, 3, 4 and 5 -> byte 0 bits 2..5.
    eng.write(0x2fff, &[0xee; 0x2002], DmaKind::PacketWrite)
        .unwrap();
    eng.flush_log().unwrap();
    assert_eq!(log_bytes(&log, 2), vec![0x81 | 0x3c, 0x01]);
    assert_eq!(eng.log_stats().pages_marked, 3 + 4);
    assert_eq!(eng.log_stats().log_writes, 2);
    assert_eq!(
        eng.bus_stats().get(DmaKind::LogWrite),
        Traffic {
            transactions: 2,
            bytes: 16
        }
    );
}

#[test]
fn log_bit_positions_high_pfns() {
    // Guest memory at IOVA 0 is only 0x2000 long; map more windows where the pfns are.
    let shm = SharedMemory::new("g", 0x3000).unwrap();
    let space = Arc::new(AddressSpace::new());
    shm.map_into(&space, 63 << 12, 0, 0x2000, Perms::RW)
        .unwrap(); // pfns 63, 64
    shm.map_into(&space, 1000 << 12, 0x2000, 0x1000, Perms::RW)
        .unwrap(); // pfn 1000
    let log = add_log(&space, 0x1000);
    let mut eng = DmaEngine::new(space, 64);
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    eng.write(63 << 12, &[1], DmaKind::PacketWrite).unwrap();
    eng.write_u16(64 << 12, 1, DmaKind::RingWrite).unwrap();
    eng.publish_u16((1000 << 12) + 0x10, 5, DmaKind::RingWrite)
        .unwrap();
    // publish flushed everything: no explicit flush needed.
    let bytes = log.snapshot();
    let mut expect = vec![0u8; 0x1000];
    expect[7] = 0x80; // pfn 63: byte 7, bit 7
    expect[8] = 0x01; // pfn 64: byte 8, bit 0
    expect[125] = 1 << 0; // pfn 1000: byte 125, bit 0
    assert_eq!(bytes, expect);
    assert_eq!(eng.log_stats().log_writes, 3);
}

#[test]
fn log_granularity_64k_and_2m() {
    let (_shm, space, mut eng) = setup(0x40_0000, 0); // 4 MiB
    let log = add_log(&space, 0x1000);
    let cfg = LogConfig {
        base: LOG_IOVA,
        end: LOG_IOVA + 0x1000,
        granularity: 0x1_0000,
    };
    eng.set_logging(Some(cfg));
    assert_eq!(eng.logging(), Some(cfg));
    // pfn 0x12 -> granule pfns 16..=31 -> bytes 2 and 3 fully set.
    eng.write(0x12345, &[1], DmaKind::PacketWrite).unwrap();
    // Straddles the 64 KiB boundary at 0x30000: granules 32..=47 and 48..=63.
    eng.write(0x2fffe, &[1; 4], DmaKind::PacketWrite).unwrap();
    eng.flush_log().unwrap();
    let b = log_bytes(&log, 10);
    assert_eq!(b, vec![0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert_eq!(eng.log_stats().pages_marked, 48);
    assert_eq!(eng.log_stats().log_writes, 1, "one word holds all 48 bits");

    // 2 MiB: one byte at 0x200010 marks pfns 512..=1023 = bytes 64..=127.
    log.fill(0, 0x1000, 0).unwrap();
    eng.set_logging(Some(LogConfig {
        granularity: 2 << 20,
        ..cfg
    }));
    eng.write(0x20_0010, &[1], DmaKind::PacketWrite).unwrap();
    eng.flush_log().unwrap();
    let b = log.snapshot();
    assert!(b[64..128].iter().all(|&x| x == 0xff));
    assert_eq!(b[63], 0);
    assert_eq!(b[128], 0);
    assert_eq!(b.iter().filter(|&&x| x != 0).count(), 64);
    // Coarser = fewer, fuller words: the 8 all-ones words go out as one burst transaction.
    assert_eq!(eng.log_stats().log_writes, 1 + 1);
    assert_eq!(eng.bus_stats().get(DmaKind::LogWrite).bytes, 8 + 64);

    // Invalid granularity is rounded up to a power of two >= 4 KiB.
    eng.set_logging(Some(LogConfig {
        granularity: 5000,
        ..cfg
    }));
    assert_eq!(eng.logging().unwrap().granularity, 8192);
}

#[test]
fn log_beyond_end_not_written() {
    let (_shm, space, mut eng) = setup(0x20_0000, 0); // 512 pages
    let log = add_log(&space, 0x1000);
    // 12 log bytes: pfns 0..=95 loggable; byte 12 onwards is past the end.
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 12)));
    eng.write(95 << 12, &[1], DmaKind::PacketWrite).unwrap(); // byte 11 bit 7
    eng.write(96 << 12, &[1], DmaKind::PacketWrite).unwrap(); // byte 12: beyond
    eng.write(300 << 12, &[1; 0x2000], DmaKind::PacketWrite)
        .unwrap(); // 2 pages beyond
    eng.flush_log().unwrap();
    let b = log.snapshot();
    assert_eq!(b[11], 0x80);
    assert!(b[12..].iter().all(|&x| x == 0), "wrote past the log end");
    assert_eq!(b.iter().filter(|&&x| x != 0).count(), 1);
    assert_eq!(eng.log_stats().beyond_end, 3);
    // Word 1 was only partly inside: written per byte, one transaction.
    assert_eq!(eng.log_stats().log_writes, 1);
    assert_eq!(
        eng.bus_stats().get(DmaKind::LogWrite),
        Traffic {
            transactions: 1,
            bytes: 1
        }
    );
    // A log whose end lies before its base writes nothing.
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA - 1)));
    eng.write(0, &[1], DmaKind::PacketWrite).unwrap();
    eng.flush_log().unwrap();
    assert_eq!(log.snapshot()[0], 0);
    assert_eq!(eng.log_stats().beyond_end, 4);
}

#[test]
fn log_unaligned_base_uses_bytes() {
    let (_shm, space, mut eng) = setup(0x10_0000, 0);
    let log = add_log(&space, 0x1000);
    eng.set_logging(Some(LogConfig::new(LOG_IOVA + 3, LOG_IOVA + 0x1000)));
    eng.write(0, &[1], DmaKind::PacketWrite).unwrap(); // byte 0 -> log offset 3
    eng.write(70 << 12, &[1], DmaKind::PacketWrite).unwrap(); // byte 8 bit 6 -> offset 11
    eng.flush_log().unwrap();
    let b = log.snapshot();
    assert_eq!(b[3], 1);
    assert_eq!(b[11], 1 << 6);
    assert_eq!(b.iter().filter(|&&x| x != 0).count(), 2);
    assert_eq!(eng.log_stats().log_writes, 2);
}

#[test]
fn log_writes_are_not_logged_and_logging_off_flushes() {
    let (_shm, space, mut eng) = setup(0x10_0000, 0);
    let log = add_log(&space, 0x1000);
    let trace = Arc::new(WriteTrace::new(0x10_0000));
    eng.set_write_trace(Some(trace.clone()));
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    eng.write(5 << 12, &[1], DmaKind::LogWrite).unwrap();
    assert_eq!(eng.pending_log_words(), 0);
    assert!(trace.is_empty());
    eng.write(9 << 12, &[1], DmaKind::PacketWrite).unwrap();
    assert_eq!(eng.pending_log_words(), 1);
    eng.set_logging(None);
    assert_eq!(eng.logging(), None);
    assert_eq!(log.snapshot()[1], 1 << 1, "turning logging off flushed");
    assert_eq!(trace.pages(), vec![9]);
    // With logging off nothing is marked, but the trace still records.
    eng.write(10 << 12, &[1], DmaKind::PacketWrite).unwrap();
    assert_eq!(eng.pending_log_words(), 0);
    assert_eq!(trace.pages(), vec![9, 10]);
    assert!(eng.take_log_fault().is_none());
}

#[test]
fn log_faults_are_counted_and_reported() {
    let (shm, space, mut eng) = setup(0x10_0000, 0);
    // Logging on but the log region is not mapped.
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    eng.write(0, &[1], DmaKind::PacketWrite).unwrap();
    assert_eq!(
        eng.flush_log(),
        Err(DmaFault::Unmapped {
            iova: LOG_IOVA,
            len: 8
        })
    );
    assert_eq!(eng.log_stats().faults, 1);
    assert_eq!(eng.iommu_stats().faults_unmapped, 1);
    // publish: the log cannot be written, so the index is not published.
    assert!(eng.publish_u16(0x100, 7, DmaKind::RingWrite).is_err());
    assert_eq!(shm.read_u16(0x100).unwrap(), 0);
    assert_eq!(eng.log_stats().faults, 2);
    // A read-only log region is a permission fault.
    let log = SharedMemory::new("log", 0x1000).unwrap();
    log.map_into(&space, LOG_IOVA, 0, 0x1000, Perms::RO)
        .unwrap();
    eng.write(0, &[1], DmaKind::PacketWrite).unwrap();
    assert!(matches!(
        eng.flush_log(),
        Err(DmaFault::Permission { write: true, .. })
    ));
    // Implicit flush (logging turned off) keeps the fault for the device.
    eng.write(0, &[1], DmaKind::PacketWrite).unwrap();
    eng.set_logging(None);
    assert!(matches!(
        eng.take_log_fault(),
        Some(DmaFault::Permission { .. })
    ));
    assert!(eng.take_log_fault().is_none());
    assert_eq!(log.snapshot(), vec![0u8; 0x1000]);
}

#[test]
fn pending_buffer_overflow_flushes() {
    // 1 GiB sparse memfd; touch one page in each of 600 distinct log words.
    let (_shm, space, mut eng) = setup(1 << 30, 0);
    let log = add_log(&space, 0x8000);
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x8000)));
    for w in 0..600u64 {
        eng.write((w * 64 + (w % 64)) << 12, &[1], DmaKind::PacketWrite)
            .unwrap();
        // Re-marking the same bit is coalesced.
        eng.write((w * 64 + (w % 64)) << 12, &[2], DmaKind::PacketWrite)
            .unwrap();
        assert!(eng.pending_log_words() <= dirty_log::PENDING_CAPACITY);
    }
    assert!(eng.log_stats().log_writes >= 512, "buffer-full flushes");
    eng.flush_log().unwrap();
    assert_eq!(eng.log_stats().pages_marked, 600);
    assert_eq!(eng.log_stats().log_writes, 600);
    for w in 0..600u64 {
        assert_eq!(log.read_u64(w * 8).unwrap(), 1 << (w % 64), "word {w}");
    }
}

#[test]
fn write_trace_records_device_writes() {
    let (_shm, _space, mut eng) = setup(0x10_0000, 0);
    let trace = Arc::new(WriteTrace::new(0x10_0000));
    eng.set_write_trace(Some(trace.clone()));
    eng.write(0x1fff, &[1, 2], DmaKind::PacketWrite).unwrap();
    eng.publish_u16(0x5000, 1, DmaKind::RingWrite).unwrap();
    eng.read(0x9000, &mut [0; 4], DmaKind::PacketRead).unwrap();
    assert!(eng.write(0x20_0000, &[1], DmaKind::PacketWrite).is_err());
    assert_eq!(trace.pages(), vec![1, 2, 5]);
    assert!(trace.contains_page(5));
    assert_eq!(trace.take_pages(), vec![1, 2, 5]);
    eng.set_write_trace(None);
    eng.write(0x3000, &[1], DmaKind::PacketWrite).unwrap();
    assert!(trace.is_empty());
}

#[test]
fn drop_flushes_pending_bits() {
    let (_shm, space, mut eng) = setup(0x10_0000, 0);
    let log = add_log(&space, 0x1000);
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    eng.write(3 << 12, &[1], DmaKind::PacketWrite).unwrap();
    assert_eq!(log.snapshot()[0], 0);
    drop(eng);
    assert_eq!(log.snapshot()[0], 1 << 3);
}

/// A write within the granule the previous write of its kind marked adds nothing (the
/// engine skips it); one that leaves that granule, or comes after a flush (which the VMM may
/// have harvested since), marks again. Both kinds, 4 KiB and 64 KiB granules, three harvests.
#[test]
fn log_marks_again_after_a_flush_and_past_the_last_granule() {
    for (granularity, expect, per_round) in [
        // pages 3, 4, 5, 15, 16
        (PAGE_SIZE, 1 << 3 | 1 << 4 | 1 << 5 | 1 << 15 | 1 << 16, 5),
        // granules 0 and 1: pages 0..=31
        (0x1_0000, 0xffff_ffff, 32),
    ] {
        let (_shm, space, mut eng) = setup(0x40000, 0);
        let log = add_log(&space, 0x1000);
        eng.set_logging(Some(LogConfig {
            base: LOG_IOVA,
            end: LOG_IOVA + 0x1000,
            granularity,
        }));
        for round in 0..3u64 {
            eng.write(0x3000 + round * 8, &[1; 8], DmaKind::PacketWrite)
                .unwrap();
            eng.write_u16(0x5000 + round * 2, 1, DmaKind::RingWrite)
                .unwrap();
            eng.write(0x3100, &[2; 8], DmaKind::PacketWrite).unwrap();
            eng.write_u16(0x5010, 2, DmaKind::RingWrite).unwrap();
            // From the packet kind's last page (or granule) into the next one.
            eng.write(0x3ff8, &[3; 16], DmaKind::PacketWrite).unwrap();
            eng.write(0xfff8, &[4; 16], DmaKind::PacketWrite).unwrap();
            eng.flush_log().unwrap();
            assert_eq!(
                log.swap_u64(0, 0).unwrap(),
                expect,
                "granularity {granularity:#x}, round {round}"
            );
        }
        assert_eq!(eng.log_stats().pages_marked, 3 * per_round);
    }
}

/// A 1 GiB granule is 4096 log words, more than the pending buffer holds: marking it flushes
/// part of it on the way. The next write within it, after a harvest, must mark it again (not
/// be taken for one whose bits are all still pending).
#[test]
fn log_granule_larger_than_the_buffer_is_marked_again_after_a_harvest() {
    let (_shm, space, mut eng) = setup(0x10000, 0);
    let log_bytes = (1u64 << 30) / PAGE_SIZE / 8; // one granule: 32 KiB of log
    let log = add_log(&space, log_bytes);
    eng.set_logging(Some(LogConfig {
        base: LOG_IOVA,
        end: LOG_IOVA + log_bytes,
        granularity: 1 << 30,
    }));
    let harvest = |log: &SharedMemory| {
        (0..log_bytes / 8)
            .map(|w| log.swap_u64(w * 8, 0).unwrap().count_ones())
            .sum::<u32>()
    };
    eng.write(0x1000, &[1], DmaKind::PacketWrite).unwrap();
    // Part of the granule reached the log during the mark; the VMM harvests it.
    let early = harvest(&log);
    assert!(early > 0, "no bit was flushed during the mark");
    eng.write(0x2000, &[2], DmaKind::PacketWrite).unwrap();
    eng.flush_log().unwrap();
    assert_eq!(
        harvest(&log),
        262_144,
        "every page of the granule after the second write"
    );
}

/// A VMM thread harvests the log with atomic swaps while the device logs millions of writes:
/// per epoch, the union of harvested bits must equal the pages the device wrote (WriteTrace
/// oracle). Epochs are short (about one write per page) so a lost bit is not masked by a
/// later write to the same page.
#[test]
fn concurrent_harvest_loses_no_bit() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::AtomicU64 as Counter;
    use std::sync::mpsc;

    const MEM: u64 = 64 << 20; // 16384 pages
    const PAGES: u64 = MEM / PAGE_SIZE;
    const LOG_BYTES: u64 = PAGES / 8; // 2 KiB
    const EPOCHS: u64 = 100;
    const WRITES_PER_EPOCH: u64 = 20_000; // 2 million writes in all

    let (_shm, space, mut eng) = setup(MEM, 0);
    let log = Arc::new(add_log(&space, 0x1000));
    let trace = Arc::new(WriteTrace::new(MEM));
    eng.set_write_trace(Some(trace.clone()));
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + LOG_BYTES)));

    // The engine bumps `flushed` after its end-of-epoch flush; a sweep that starts after
    // seeing the bump completes that epoch's harvest.
    let flushed = Arc::new(Counter::new(0));
    let (tx, rx) = mpsc::channel::<(Vec<u64>, u64)>();
    let harvester = {
        let (log, flushed) = (log.clone(), flushed.clone());
        std::thread::spawn(move || {
            let mut union = vec![0u64; (LOG_BYTES / 8) as usize];
            let mut epoch = 0u64;
            let mut during = 0u64; // bits harvested before the epoch's final flush
            while epoch < EPOCHS {
                let target = flushed.load(Ordering::Acquire);
                for (w, u) in union.iter_mut().enumerate() {
                    let v = log.swap_u64(w as u64 * 8, 0).unwrap();
                    if target == epoch {
                        during += u64::from(v.count_ones());
                    }
                    *u |= v;
                }
                if target > epoch {
                    let pages = union
                        .iter()
                        .enumerate()
                        .flat_map(|(w, &bits)| {
                            (0..64u64)
                                .filter(move |b| bits & (1 << b) != 0)
                                .map(move |b| w as u64 * 64 + b)
                        })
                        .collect();
                    tx.send((pages, during)).unwrap();
                    union.fill(0);
                    epoch += 1;
                }
            }
        })
    };

    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let payload = [0xa5u8; 64];
    let mut during_total = 0;
    for epoch in 0..EPOCHS {
        for i in 0..WRITES_PER_EPOCH {
            let len = rng.gen_range(1..=64u64);
            let iova = rng.gen_range(0..MEM - len);
            eng.write(iova, &payload[..len as usize], DmaKind::PacketWrite)
                .unwrap();
            if i % 32 == 31 {
                let idx = rng.gen_range(0..MEM / 2) * 2;
                eng.publish_u16(idx, i as u16, DmaKind::RingWrite).unwrap();
            }
        }
        eng.flush_log().unwrap();
        flushed.store(epoch + 1, Ordering::Release);
        let (harvested, during) = rx.recv().unwrap();
        let written = trace.take_pages();
        assert!(written.len() > 1000, "epoch {epoch}: too few pages");
        assert_eq!(
            harvested, written,
            "epoch {epoch}: log differs from written pages"
        );
        during_total = during;
    }
    harvester.join().unwrap();
    assert!(
        during_total > 0,
        "the harvester never ran concurrently with logging"
    );
    assert_eq!(eng.log_stats().faults, 0);
    assert_eq!(eng.log_stats().beyond_end, 0);
}

/// Two engines (two queue workers of one device, or two devices sharing a VMM log) log into
/// the same words while a VMM harvests: every page is written exactly once per round, so a
/// bit lost to a non-atomic read-modify-write shows as a missing page.
#[test]
fn concurrent_engines_share_log_without_loss() {
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use std::sync::atomic::AtomicU64 as Counter;
    use std::sync::Barrier;

    const MEM: u64 = 32 << 20; // 8192 pages
    const PAGES: u64 = MEM / PAGE_SIZE;
    const LOG_BYTES: u64 = PAGES / 8;
    const ROUNDS: u64 = 40;

    let shm = SharedMemory::new("guest", MEM).unwrap();
    let space = Arc::new(AddressSpace::new());
    shm.map_into(&space, 0, 0, MEM, Perms::RW).unwrap();
    let log = Arc::new(add_log(&space, 0x1000));
    let trace = Arc::new(WriteTrace::new(MEM));
    let finished = Arc::new(Counter::new(0));
    let barrier = Arc::new(Barrier::new(3));

    let engines: Vec<_> = (0..2u64)
        .map(|parity| {
            let (space, trace, finished, barrier) = (
                space.clone(),
                trace.clone(),
                finished.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let mut eng = DmaEngine::new(space, 64);
                eng.set_write_trace(Some(trace));
                eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + LOG_BYTES)));
                let mut rng = SmallRng::seed_from_u64(parity);
                let mut pfns: Vec<u64> = (0..PAGES).filter(|p| p % 2 == parity).collect();
                for _ in 0..ROUNDS {
                    barrier.wait();
                    pfns.shuffle(&mut rng);
                    for (i, &pfn) in pfns.iter().enumerate() {
                        eng.write((pfn << 12) + 8, &[1; 8], DmaKind::PacketWrite)
                            .unwrap();
                        if i % 4 == 3 {
                            eng.flush_log().unwrap();
                        }
                    }
                    eng.flush_log().unwrap();
                    finished.fetch_add(1, Ordering::AcqRel);
                }
                assert_eq!(eng.log_stats().faults, 0);
            })
        })
        .collect();

    let mut union = vec![0u64; (LOG_BYTES / 8) as usize];
    for round in 0..ROUNDS {
        barrier.wait();
        loop {
            let f = finished.load(Ordering::Acquire);
            for (w, u) in union.iter_mut().enumerate() {
                *u |= log.swap_u64(w as u64 * 8, 0).unwrap();
            }
            if f == 2 * (round + 1) {
                break;
            }
        }
        let harvested: Vec<u64> = union
            .iter()
            .enumerate()
            .flat_map(|(w, &bits)| {
                (0..64u64)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| w as u64 * 64 + b)
            })
            .collect();
        let written = trace.take_pages();
        assert_eq!(written.len() as u64, PAGES);
        assert_eq!(harvested, written, "round {round}: bits lost");
        union.fill(0);
    }
    for e in engines {
        e.join().unwrap();
    }
}

#[test]
fn thread_safety_markers() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<DmaEngine>();
    send::<AddressSpace>();
    sync::<AddressSpace>();
    sync::<WriteTrace>();
    send::<SharedMemory>();
    sync::<SharedMemory>();
    send::<DmaFault>();
    send::<MapError>();
    sync::<MapError>();
}

/// Writes `n` 16-byte records at file offset `at`: bytes 0..14 = record index + 1, flags (the
/// u16 at 14) = `flags(i)`.
fn records(shm: &SharedMemory, at: u64, n: usize, flags: impl Fn(usize) -> u16) {
    for i in 0..n {
        let r = at + 16 * i as u64;
        shm.write(r, &[i as u8 + 1; 14]).unwrap();
        shm.write_u16(r + 14, flags(i)).unwrap();
    }
}

#[test]
fn read_published_takes_the_ready_prefix_in_one_access() {
    let (shm, _space, mut eng) = setup(0x10000, 0x40000);
    // Records 0..5 ready (flags 0x80), record 5 not, record 6 ready again.
    records(&shm, 0x100, 8, |i| if i == 5 { 0 } else { 0x80 });
    let mut buf = vec![0u8; 8 * 16];
    let n = eng
        .read_published(0x40100, &mut buf, 16, 14, DmaKind::Descriptor, |f| {
            f == 0x80
        })
        .unwrap();
    assert_eq!(n, 5, "the prefix stops at the first record not ready");
    let mut want = vec![0u8; 5 * 16];
    shm.read(0x100, &mut want).unwrap();
    assert_eq!(buf[..5 * 16], want[..]);
    // One request for the whole window, every byte of it counted once.
    assert_eq!(
        eng.bus_stats().get(DmaKind::Descriptor),
        Traffic {
            transactions: 1,
            bytes: 8 * 16
        }
    );
    // An odd address: the flags words are unaligned, same answer.
    records(&shm, 0x801, 3, |_| 0x80);
    let mut buf = vec![0u8; 3 * 16];
    let n = eng
        .read_published(0x40801, &mut buf, 16, 14, DmaKind::Descriptor, |f| {
            f == 0x80
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(buf[16 * 2 + 13], 3);
    // Nothing ready: nothing copied, still one access.
    let mut buf = [0xeeu8; 32];
    let n = eng
        .read_published(0x40100, &mut buf, 16, 14, DmaKind::Descriptor, |_| false)
        .unwrap();
    assert_eq!((n, buf), (0, [0xee; 32]));
    assert_eq!(eng.bus_stats().get(DmaKind::Descriptor).transactions, 3);
    // Empty: no access at all.
    let n = eng
        .read_published(0x40100, &mut [], 16, 14, DmaKind::Descriptor, |_| true)
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(eng.bus_stats().get(DmaKind::Descriptor).transactions, 3);
}

#[test]
fn read_published_across_mappings_and_faults() {
    let shm = SharedMemory::new("g", 0x10000).unwrap();
    let space = Arc::new(AddressSpace::new());
    // Two adjacent mappings, the second from another file offset: records 0..2 in the first,
    // 2..4 in the second.
    shm.map_into(&space, 0x10000, 0x0000, 0x1000, Perms::RW)
        .unwrap();
    shm.map_into(&space, 0x11000, 0x5000, 0x1000, Perms::RW)
        .unwrap();
    records(&shm, 0xfe0, 2, |_| 1);
    records(&shm, 0x5000, 2, |i| if i == 0 { 1 } else { 0 });
    let mut eng = DmaEngine::new(space.clone(), 64);
    let mut buf = vec![0u8; 4 * 16];
    let n = eng
        .read_published(0x10fe0, &mut buf, 16, 14, DmaKind::Descriptor, |f| f == 1)
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!((buf[0], buf[16], buf[32]), (1, 2, 1));
    assert_eq!(
        eng.bus_stats().get(DmaKind::Descriptor),
        Traffic {
            transactions: 2,
            bytes: 64
        }
    );
    // Running off the end of the mapped space: a fault, nothing read or counted.
    let mut buf = [0xeeu8; 32];
    assert!(matches!(
        eng.read_published(0x11ff0, &mut buf, 16, 14, DmaKind::Descriptor, |_| true),
        Err(DmaFault::CrossesMappingEnd { .. })
    ));
    assert_eq!(buf, [0xee; 32]);
    assert_eq!(eng.bus_stats().get(DmaKind::Descriptor).transactions, 2);
    assert_eq!(eng.iommu_stats().faults_crossing, 1);
}

#[test]
fn a_gathered_write_is_one_access_of_both_parts() {
    let (shm, space, mut eng) = setup(0x20000, 0);
    let log = add_log(&space, 0x1000);
    eng.set_logging(Some(LogConfig::new(LOG_IOVA, LOG_IOVA + 0x1000)));
    let head = [0xaau8; 12];
    let tail: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
    // Across a page boundary: both pages logged, the bytes in order, one transaction.
    eng.write_gather(0x1ffa, &head, &tail, DmaKind::PacketWrite)
        .unwrap();
    let mut back = vec![0u8; 1512];
    shm.read(0x1ffa, &mut back).unwrap();
    assert_eq!(back[..12], head);
    assert_eq!(back[12..], tail[..]);
    assert_eq!(
        eng.bus_stats().get(DmaKind::PacketWrite),
        Traffic {
            transactions: 1,
            bytes: 1512
        }
    );
    // The TLPs are those of one 1512-byte write (and of the two writes it replaces, which the
    // bus model merges): the same as a plain write of the joined bytes.
    let (_s2, _sp2, mut plain) = setup(0x20000, 0);
    plain
        .write(
            0x1ffa,
            &[&head[..], &tail[..]].concat(),
            DmaKind::PacketWrite,
        )
        .unwrap();
    assert_eq!(
        eng.bus_stats().pcie(DmaKind::PacketWrite),
        plain.bus_stats().pcie(DmaKind::PacketWrite)
    );
    eng.flush_log().unwrap();
    assert_eq!(log_bytes(&log, 1), vec![0b0000_0110], "pfns 1 and 2");
    // The same access again hits the IOTLB: the fast path, two copies (above the stage).
    let hits = eng.iommu_stats().iotlb_hits;
    let tail2: Vec<u8> = tail.iter().map(|b| !b).collect();
    eng.write_gather(0x1ffa, &[0x55; 12], &tail2, DmaKind::PacketWrite)
        .unwrap();
    assert_eq!(eng.iommu_stats().iotlb_hits, hits + 1);
    shm.read(0x1ffa, &mut back).unwrap();
    assert_eq!(back[..12], [0x55; 12]);
    assert_eq!(back[12..], tail2[..]);
    // An empty part is fine on either side. The first access to the page misses the IOTLB
    // (the slow path), the next two hit it (the fast path).
    let hits = eng.iommu_stats().iotlb_hits;
    eng.write_gather(0x5000, &[], &[7, 8], DmaKind::PacketWrite)
        .unwrap();
    eng.write_gather(0x5002, &[9], &[], DmaKind::PacketWrite)
        .unwrap();
    eng.write_gather(0x5003, &[10, 11], &[12], DmaKind::PacketWrite)
        .unwrap();
    assert_eq!(eng.iommu_stats().iotlb_hits, hits + 2);
    let mut six = [0u8; 6];
    shm.read(0x5000, &mut six).unwrap();
    assert_eq!(six, [7, 8, 9, 10, 11, 12]);
    assert_eq!(eng.bus_stats().get(DmaKind::PacketWrite).transactions, 5);
    // A staged write of the largest size the stage takes (256 bytes; the stage is not zeroed):
    // exactly those bytes land, and the memory after them keeps what it held.
    eng.write(0x6000, &[0xcc; 300], DmaKind::PacketWrite)
        .unwrap();
    let hits = eng.iommu_stats().iotlb_hits;
    let body: Vec<u8> = (0..244u32).map(|i| (i * 7) as u8).collect();
    eng.write_gather(0x6000, &[0x11; 12], &body, DmaKind::PacketWrite)
        .unwrap();
    assert_eq!(eng.iommu_stats().iotlb_hits, hits + 1, "the fast path");
    let mut back = [0u8; 300];
    shm.read(0x6000, &mut back).unwrap();
    assert_eq!(back[..12], [0x11; 12]);
    assert_eq!(back[12..256], body[..]);
    assert_eq!(back[256..], [0xcc; 44]);
}

#[test]
fn a_gathered_write_that_faults_writes_nothing() {
    let (shm, _space, mut eng) = setup(0x2000, 0);
    // The tail runs past the end of the mapping: nothing of the head is written either.
    assert_eq!(
        eng.write_gather(0x1ff0, &[1u8; 8], &[2u8; 16], DmaKind::PacketWrite),
        Err(DmaFault::CrossesMappingEnd {
            iova: 0x1ff0,
            len: 24,
            mapping_end: 0x2000
        })
    );
    assert!(shm.snapshot().iter().all(|&b| b == 0));
    assert!(matches!(
        eng.write_gather(0x8000, &[1], &[2], DmaKind::PacketWrite),
        Err(DmaFault::Unmapped {
            iova: 0x8000,
            len: 2
        })
    ));
    assert_eq!(eng.bus_stats().get(DmaKind::PacketWrite).transactions, 0);
}

/// `peek16`, `peek_window` and `prefetch` are hints, not accesses: they see only what the IOTLB holds now,
/// count, log and fault nothing, and a mapping gone since (another generation) is not looked at.
#[test]
fn peeks_and_prefetches_are_not_accesses() {
    let (shm, space, mut eng) = setup(0x4000, 0x10000);
    let desc: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
    shm.write(0x100, &desc).unwrap();
    // Nothing translated yet: the IOTLB holds nothing, so the peek sees nothing (no walk).
    assert_eq!(eng.peek16(0x10100), None);
    assert_eq!(eng.iommu_stats().iotlb_misses, 0);
    let mut b = [0u8; 4];
    eng.read(0x10000, &mut b, DmaKind::Descriptor).unwrap();
    let (bus, iommu) = (eng.bus_stats().clone(), *eng.iommu_stats());
    assert_eq!(eng.peek16(0x10100), Some(desc));
    // Across the mapping's end, and past it: nothing.
    assert_eq!(eng.peek16(0x13ff8), None);
    assert_eq!(eng.peek16(0x14000), None);
    // A window: one translation for many peeks, inside the mapping only.
    let win = eng.peek_window(0x10000, 0x1000).expect("held by the IOTLB");
    assert_eq!(win.get16(0x100), Some(desc));
    assert_eq!(win.get16(0xff0).map(|_| ()), Some(()));
    assert_eq!(win.get16(0xff1), None);
    assert_eq!(win.get16(usize::MAX - 8), None);
    // From a page the IOTLB holds, to the end of the mapping, and not one byte past it.
    assert!(eng.peek_window(0x10000, 0x4000).is_some());
    assert!(eng.peek_window(0x10000, 0x4001).is_none());
    // A page of the mapping the IOTLB does not hold: no walk, nothing.
    assert!(eng.peek_window(0x13000, 0x1000).is_none());
    assert!(eng.peek_window(0x10100, 0).is_none());
    eng.prefetch(0x10100, 4096);
    eng.prefetch(0x13ff0, 64);
    eng.prefetch(0x20000, 64);
    eng.prefetch(0x10100, 0);
    assert_eq!(eng.bus_stats(), &bus);
    assert_eq!(eng.iommu_stats(), &iommu);
    // Unmapped since: the IOTLB's generation is stale, so the peek does not use its entry.
    space.unmap(0x10000, 0x4000).unwrap();
    assert_eq!(eng.peek16(0x10100), None);
    assert!(eng.peek_window(0x10000, 0x1000).is_none());
    eng.prefetch(0x10100, 64);
    assert_eq!(eng.iommu_stats(), &iommu);
}
