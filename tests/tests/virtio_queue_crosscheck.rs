//! An independent driver checks the device's split-ring layout: rust-vmm virtio-queue's
//! `MockSplitQueue` (the field's reference implementation of the driver side of a split ring)
//! builds the rings in a memfd that the device reaches through its DMA mapping; the device must
//! consume them and produce used elements that the mock reads back as the spec defines them.

use bar_registers::pci::{command, hdr};
use bar_registers::virtio::{bits, common, device_status as st};
use bar_registers::REGION_CONFIG;
use device::{Device, DeviceConfig, DmaMapper, RegionAccess};
use dma::{Backing, Perms, SharedMemory};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 1 << 20;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn common_w(dev: &Device, reg: u64, len: usize, v: u64) {
    let off = dev.layout().common.offset + reg;
    dev.region_write(0, off, &v.to_le_bytes()[..len]).unwrap();
}

fn common_r(dev: &Device, reg: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.region_read(0, dev.layout().common.offset + reg, &mut b[..len])
        .unwrap();
    u64::from_le_bytes(b)
}

fn queue(dev: &Device, q: u16, mock: &MockSplitQueue<'_, GuestMemoryMmap>) {
    common_w(dev, common::QUEUE_SELECT, 2, q.into());
    common_w(dev, common::QUEUE_SIZE, 2, 16);
    for (reg, addr) in [
        (common::QUEUE_DESC, mock.desc_table_addr()),
        (common::QUEUE_DRIVER, mock.avail_addr()),
        (common::QUEUE_DEVICE, mock.used_addr()),
    ] {
        common_w(dev, reg, 4, addr.0 & 0xFFFF_FFFF);
        common_w(dev, reg + 4, 4, addr.0 >> 32);
    }
    common_w(dev, common::QUEUE_ENABLE, 2, 1);
}

fn kick(dev: &Device, q: u16) {
    dev.region_write(0, dev.layout().doorbell_offset(q), &q.to_le_bytes())
        .unwrap();
}

#[test]
fn device_consumes_and_produces_rings_built_by_virtio_queue_mock() {
    let dev = Device::new(DeviceConfig::with_queue_pairs(1)).unwrap();
    dev.set_loopback();
    let shm = SharedMemory::new("xcheck", MEM).unwrap();
    dev.dma_map(
        0,
        MEM,
        Perms::RW,
        Backing::Fd {
            file: shm.try_clone_file().unwrap(),
            offset: 0,
        },
    )
    .unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        MEM as usize,
        Some(FileOffset::new(shm.try_clone_file().unwrap(), 0)),
    )])
    .unwrap();
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x0), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);

    // Bring-up with VERSION_1 only: no EVENT_IDX, no MRG_RXBUF, no INDIRECT.
    dev.region_write(
        REGION_CONFIG,
        hdr::COMMAND,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    )
    .unwrap();
    for s in [0, st::ACKNOWLEDGE, st::ACKNOWLEDGE | st::DRIVER] {
        common_w(&dev, common::DEVICE_STATUS, 1, s.into());
    }
    common_w(&dev, common::DRIVER_FEATURE_SELECT, 4, 1);
    common_w(&dev, common::DRIVER_FEATURE, 4, 1 << (bits::VERSION_1 - 32));
    common_w(
        &dev,
        common::DEVICE_STATUS,
        1,
        (st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK).into(),
    );
    assert_ne!(
        common_r(&dev, common::DEVICE_STATUS, 1) as u8 & st::FEATURES_OK,
        0
    );
    queue(&dev, 0, &rx);
    queue(&dev, 1, &tx);
    common_w(
        &dev,
        common::DEVICE_STATUS,
        1,
        (st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK).into(),
    );

    // RX: 8 device-writable 2 KiB buffers at 0x20000.
    let rx_descs: Vec<RawDescriptor> = (0..8u64)
        .map(|i| RawDescriptor::from(SplitDescriptor::new(0x2_0000 + i * 2048, 2048, F_WRITE, 0)))
        .collect();
    rx.add_desc_chains(&rx_descs, 0).unwrap();
    kick(&dev, 0);
    // TX: 6 frames, each a 12-byte virtio_net_hdr descriptor chained to a data descriptor.
    let mut frames = Vec::new();
    let mut tx_descs = Vec::new();
    for i in 0..6u64 {
        let len = 60 + 200 * i as usize;
        let frame: Vec<u8> = (0..len).map(|b| (b as u64 * 7 + i) as u8).collect();
        let hdr_at = 0x6_0000 + i * 4096;
        mem.write_slice(&[0u8; 12], GuestAddress(hdr_at)).unwrap();
        mem.write_slice(&frame, GuestAddress(hdr_at + 64)).unwrap();
        let d = 2 * i as u16;
        tx_descs.push(RawDescriptor::from(SplitDescriptor::new(
            hdr_at,
            12,
            F_NEXT,
            d + 1,
        )));
        tx_descs.push(RawDescriptor::from(SplitDescriptor::new(
            hdr_at + 64,
            len as u32,
            0,
            0,
        )));
        frames.push(frame);
    }
    tx.add_desc_chains(&tx_descs, 0).unwrap();
    kick(&dev, 1);

    assert!(dev.fault().is_none(), "{:?}", dev.fault());
    // TX used ring as the mock reads it: every head, in order, 0 bytes written.
    assert_eq!(tx.used().idx().load(), 6);
    for i in 0..6u16 {
        let e = tx.used().ring().ref_at(usize::from(i)).unwrap().load();
        assert_eq!(
            (e.id(), e.len()),
            (u32::from(2 * i), 0),
            "TX used element {i}"
        );
    }
    // RX: one buffer per frame, len = header + frame, num_buffers = 1, bytes intact.
    assert_eq!(rx.used().idx().load(), 6);
    for (i, frame) in frames.iter().enumerate() {
        let e = rx.used().ring().ref_at(i).unwrap().load();
        assert_eq!(e.id(), i as u32, "RX used id");
        assert_eq!(e.len() as usize, 12 + frame.len(), "RX used len");
        let mut got = vec![0u8; 12 + frame.len()];
        mem.read_slice(&mut got, GuestAddress(0x2_0000 + i as u64 * 2048))
            .unwrap();
        assert_eq!(&got[..10], &[0u8; 10], "virtio_net_hdr fields");
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[12..], &frame[..], "frame {i} bytes");
    }
    // Without EVENT_IDX the device must not touch avail_event (after the used ring).
    let avail_event = rx.used_addr().0 + 4 + 8 * 16;
    assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 0);
}
