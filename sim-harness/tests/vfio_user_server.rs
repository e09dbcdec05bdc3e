//! The vfio-user server over its socket: the happy path with our own client and with the
//! `vfio_user` crate's client as an independent peer, the driver model's traffic over the
//! socket, and hostile clients (unknown commands, lying headers and argsz, truncated payloads,
//! stray descriptors, death at any point) that must never panic the server, desync it, leak
//! descriptors or leave the device dirty for the next client.
//!
//! Tests that count this process's descriptors hold the FD lock exclusively; every other test
//! holds it shared, so the counts are not disturbed by tests running in parallel.

use bar_registers::pci::hdr;
use bar_registers::virtio::common;
use bar_registers::REGION_CONFIG;
mod support;

use device::{DeviceConfig, InterruptRecorder};
use dma::{Perms, SharedMemory};
use sim_harness::driver::{DriverOptions, NetDriver};
use sim_harness::frames::{self, Tracker};
use sim_harness::ports::{self, PortSpec};
use sim_harness::serve::DeviceBackend;
use sim_harness::vfio_user::client::{self, recv_reply, send_message, wait_closed, Client, Reply};
use sim_harness::vfio_user::irq::{
    ACTION_MASK, ACTION_TRIGGER, ACTION_UNMASK, DATA_BOOL, DATA_EVENTFD, DATA_NONE,
};
use sim_harness::vfio_user::sock::{eventfd, open_fd_count, poll_in};
use sim_harness::vfio_user::wire::{self, flags, Command, Header, RegionRw};
use sim_harness::vfio_user::{Server, ServerOptions};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use support::{temp_dir, vmm_device, ServeProcess, TestServer};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

static FD_LOCK: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    FD_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    FD_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

impl TestServer {
    /// What a fresh client must find: status 0, no mapping, no eventfd.
    fn assert_clean(&self) {
        assert_eq!(self.dev().status(), 0, "device not reset");
        assert!(
            self.dev().mappings().is_empty(),
            "DMA mappings left: {:?}",
            self.dev().mappings()
        );
        assert_eq!(
            self.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX),
            0,
            "MSI-X eventfds left"
        );
        assert_eq!(
            self.server.irqs().assigned(VFIO_PCI_INTX_IRQ_INDEX),
            0,
            "INTx eventfd left"
        );
    }
}

/// A raw connection: messages exactly as the test writes them.
struct Raw {
    s: UnixStream,
    id: u16,
}

impl Raw {
    fn new(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, id: 100 }
    }

    /// Connects and negotiates VERSION.
    fn negotiated(ts: &TestServer) -> Self {
        Raw::negotiate(ts.connect())
    }

    /// Negotiates VERSION on `s`.
    fn negotiate(s: UnixStream) -> Self {
        let mut r = Raw::new(s);
        let caps = client::qemu_capabilities().to_string();
        let rep = r.call(
            Command::Version as u16,
            0,
            &wire::encode_version(0, 0, &caps),
            &[],
        );
        assert_eq!(rep.errno(), None);
        r
    }

    fn send(&mut self, cmd: u16, extra_flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u16 {
        self.id = self.id.wrapping_add(1);
        let h = Header::command(self.id, cmd, payload.len(), extra_flags);
        send_message(&self.s, &h.to_bytes(), payload, fds).unwrap();
        self.id
    }

    fn recv(&mut self) -> Reply {
        recv_reply(&self.s).unwrap()
    }

    fn call(
        &mut self,
        cmd: u16,
        extra_flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Reply {
        let id = self.send(cmd, extra_flags, payload, fds);
        let r = self.recv();
        assert_eq!(
            (r.header.id, r.header.command),
            (id, cmd),
            "reply matches the request"
        );
        assert_eq!(r.header.msg_type(), flags::TYPE_REPLY);
        r
    }

    /// A command that must fail with `errno`.
    fn expect_errno(&mut self, cmd: u16, payload: &[u8], fds: &[BorrowedFd<'_>], errno: i32) {
        let r = self.call(cmd, 0, payload, fds);
        assert_eq!(
            r.errno(),
            Some(errno),
            "command {cmd} with {} bytes",
            payload.len()
        );
        assert_eq!(
            r.header.size as usize,
            wire::HEADER_SIZE,
            "an error reply is only a header"
        );
    }

    /// The stream is still in sync: GET_INFO answers correctly.
    fn assert_in_sync(&mut self) {
        let r = self.call(
            Command::DeviceGetInfo as u16,
            0,
            &wire::DeviceInfo {
                argsz: 16,
                ..Default::default()
            }
            .encode(),
            &[],
        );
        assert_eq!(r.errno(), None);
        let info = wire::DeviceInfo::parse(&r.payload).unwrap();
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    }

    fn raw_bytes(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }
}

fn region_read_payload(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionRw {
        offset,
        region,
        count,
    }
    .encode()
}

fn dma_map_payload(argsz: u32, flags: u32, offset: u64, iova: u64, size: u64) -> Vec<u8> {
    wire::encode_dma_map(&vfio_bindings::bindings::vfio::vfio_iommu_type1_dma_map {
        argsz,
        flags,
        vaddr: offset,
        iova,
        size,
    })
}

fn read_u16(c: &Client, region: u32, off: u64) -> u16 {
    let mut b = [0u8; 2];
    c.read(region, off, &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// What this process's descriptors point at, sorted (for leak messages).
fn fd_links() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn eventfd_count(f: &std::fs::File) -> Option<u64> {
    let mut b = [0u8; 8];
    match (&*f).read(&mut b) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        _ => None,
    }
}

#[test]
fn happy_path_with_the_raw_client() {
    let _g = shared();
    let ts = TestServer::start(4);
    let c = ts.client();
    // VERSION: what we really support.
    let caps = &c.server_caps()["capabilities"];
    assert_eq!(caps["max_msg_fds"], 16);
    assert_eq!(caps["max_data_xfer_size"], 1 << 20);
    assert_eq!(caps["pgsizes"], 4096);
    assert_eq!(caps["max_dma_maps"], 65535);
    assert_eq!(
        caps["write_multiple"], true,
        "proposed by the client, supported"
    );
    assert!(caps.get("migration").is_none(), "migration is not offered");
    // DEVICE_GET_INFO.
    let info = c.device_info();
    assert_eq!(info.argsz, 16);
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    // Region infos: BAR0/2/4 from the layout, config 4096, the rest absent; no mmap.
    let l = ts.dev().layout().clone();
    let sizes: Vec<u64> = c.regions().iter().map(|r| r.size).collect();
    assert_eq!(
        sizes,
        vec![
            l.bar_size(0),
            0,
            l.bar_size(2),
            0,
            l.bar_size(4),
            0,
            0,
            4096,
            0
        ]
    );
    for r in c.regions() {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        assert_eq!(
            r.flags,
            if r.size > 0 { rw } else { 0 },
            "region {}",
            r.index
        );
        assert_eq!(r.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
        assert_eq!((r.argsz, r.cap_offset), (32, 0));
    }
    // IRQ infos.
    let msix = c.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    assert_eq!(msix.count, u32::from(l.msix_vectors));
    assert_ne!(msix.flags & VFIO_IRQ_INFO_EVENTFD, 0);
    assert_eq!(c.irq_info(VFIO_PCI_INTX_IRQ_INDEX).unwrap().count, 1);
    for i in [1, 3, 4] {
        assert_eq!(c.irq_info(i).unwrap().count, 0);
    }
    // DMA_MAP of a memfd with its descriptor (SCM_RIGHTS), at a file offset.
    let shm = SharedMemory::new("vdpa-emu-test-happy", 4 << 20).unwrap();
    let file = shm.try_clone_file().unwrap();
    c.map(
        0x4000_0000,
        2 << 20,
        Perms::RW,
        Some((file.as_fd(), 1 << 20)),
    )
    .unwrap();
    c.map(0xfffc_0000, 0x4_0000, Perms::RO, None).unwrap();
    let maps = ts.dev().mappings();
    assert_eq!(maps.len(), 2);
    assert!(
        maps[0].has_fd
            && maps[0].perms == Perms::RW
            && maps[0].iova == 0x4000_0000
            && maps[0].size == 2 << 20
    );
    assert!(!maps[1].has_fd && maps[1].perms == Perms::RO);
    // Overlap: EEXIST, as the spec says.
    assert_eq!(
        c.map(0x4010_0000, 4096, Perms::RW, Some((file.as_fd(), 0)))
            .unwrap_err()
            .errno(),
        Some(libc::EEXIST)
    );
    // Config space: the identity the drivers match.
    assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    assert_eq!(read_u16(&c, REGION_CONFIG, hdr::DEVICE_ID), 0x1041);
    // QEMU reads all of config space in one REGION_READ: same bytes as dword reads.
    let mut whole = vec![0u8; 4096];
    c.read(REGION_CONFIG, 0, &mut whole).unwrap();
    let dwords = sim_harness::driver::probe::read_config(&c).unwrap();
    assert_eq!(&whole[..256], &dwords[..]);
    // BAR0: num_queues.
    assert_eq!(
        read_u16(&c, 0, l.common.offset + common::NUM_QUEUES),
        2 * 4 + 1
    );
    // Writes reach the device: driver status bits, then DEVICE_RESET clears them.
    c.write(0, l.common.offset + common::DEVICE_STATUS, &[1])
        .unwrap();
    assert_eq!(ts.dev().status(), 1);
    c.reset().unwrap();
    assert_eq!(ts.dev().status(), 0);
    // DMA_UNMAP of one mapping, of nothing (fine), then everything (flag 2).
    c.unmap(0xfffc_0000, 0x4_0000, 0).unwrap();
    c.unmap(0x1_0000_0000, 4096, 0).unwrap();
    assert_eq!(ts.dev().mappings().len(), 1);
    c.unmap(0, 0, 2).unwrap();
    assert!(ts.dev().mappings().is_empty());
    // Accesses outside a region are refused with EINVAL, not answered with garbage.
    let mut b = [0u8; 4];
    assert_eq!(
        c.read(REGION_CONFIG, 4094, &mut b).unwrap_err().errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        c.read(1, 0, &mut b).unwrap_err().errno(),
        Some(libc::EINVAL)
    );
    drop(c);
    ts.wait_ended(1);
    ts.assert_clean();
}

#[test]
fn the_vfio_user_crate_client_works_as_a_peer() {
    let _g = shared();
    let ts = TestServer::start(2);
    let mut c = vfio_user::Client::new(ts.path()).expect("crate client handshake");
    let l = ts.dev().layout().clone();
    assert_eq!(c.region(0).unwrap().size, l.bar_size(0));
    assert_eq!(c.region(2).unwrap().size, l.bar_size(2));
    assert_eq!(c.region(4).unwrap().size, l.bar_size(4));
    assert_eq!(c.region(7).unwrap().size, 4096);
    // Its resettable() is inverted (documented bug): RESET is advertised, so it says false.
    assert!(!c.resettable());
    let mut id = [0u8; 4];
    c.region_read(REGION_CONFIG, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x1041_1af4);
    let mut nq = [0u8; 2];
    c.region_read(0, l.common.offset + common::NUM_QUEUES, &mut nq)
        .unwrap();
    assert_eq!(u16::from_le_bytes(nq), 5);
    c.region_write(0, l.common.offset + common::DEVICE_STATUS, &[1])
        .unwrap();
    assert_eq!(ts.dev().status(), 1);
    let shm = SharedMemory::new("vdpa-emu-test-crate", 1 << 20).unwrap();
    let file = shm.try_clone_file().unwrap();
    use std::os::fd::AsRawFd;
    c.dma_map(0, 0x8000_0000, 1 << 20, file.as_raw_fd())
        .unwrap();
    assert_eq!(ts.dev().mappings().len(), 1);
    let irq = c.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    assert_eq!(irq.count, u32::from(l.msix_vectors));
    let efd = eventfd().unwrap();
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_EVENTFD | ACTION_TRIGGER,
        1,
        1,
        &[efd.as_raw_fd()],
    )
    .unwrap();
    assert_eq!(ts.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX), 1);
    c.reset().unwrap();
    assert_eq!(ts.dev().status(), 0);
    c.dma_unmap(0x8000_0000, 1 << 20).unwrap();
    assert!(ts.dev().mappings().is_empty());
    c.shutdown().unwrap();
    drop(c);
    ts.wait_ended(1);
    ts.assert_clean();
}

#[test]
fn unknown_and_unsupported_commands_get_errno_and_the_stream_stays_in_sync() {
    let _g = shared();
    let ts = TestServer::start(1);
    // Before VERSION: refused, in sync, and VERSION still works.
    let mut r = Raw::new(ts.connect());
    r.expect_errno(Command::DeviceGetInfo as u16, &[0u8; 16], &[], libc::EINVAL);
    let caps = client::qemu_capabilities().to_string();
    assert_eq!(
        r.call(1, 0, &wire::encode_version(0, 0, &caps), &[])
            .errno(),
        None
    );
    // A second VERSION is refused.
    r.expect_errno(1, &wire::encode_version(0, 0, &caps), &[], libc::EINVAL);
    // DEVICE_FEATURE with 8 bytes of payload (what desyncs the vfio_user crate's server): flags
    // 0xa5a5a5a5 carry unknown operation bits.
    r.expect_errno(Command::DeviceFeature as u16, &[0xa5; 8], &[], libc::EINVAL);
    r.assert_in_sync();
    // Commands nobody defined, with payloads of many sizes (one looks like a header).
    let fake_header = Header::command(7, 4, 16, 0).to_bytes();
    for (cmd, payload) in [
        (0u16, vec![]),
        (19, vec![1; 3]),
        (200, fake_header.to_vec()),
        (0xffff, vec![0; 100_000]),
    ] {
        r.expect_errno(cmd, &payload, &[], libc::ENOSYS);
        r.assert_in_sync();
    }
    // Defined but not implemented here, and server-to-client commands.
    for cmd in [Command::DeviceGetRegionIoFds, Command::DirtyPages] {
        r.expect_errno(cmd as u16, &[0; 16], &[], libc::ENOSYS);
    }
    // Migration data outside STOP_COPY / RESUMING.
    for cmd in [Command::MigDataRead, Command::MigDataWrite] {
        r.expect_errno(cmd as u16, &[0; 16], &[], libc::EINVAL);
    }
    for cmd in [Command::DmaRead, Command::DmaWrite] {
        r.expect_errno(cmd as u16, &[0; 24], &[], libc::EINVAL);
    }
    r.assert_in_sync();
    // A message of another type (not command, not reply): EINVAL; a stray reply: ignored.
    r.send(4, 0x2, &[0; 16], &[]);
    let rep = r.recv();
    assert_eq!(rep.errno(), Some(libc::EINVAL));
    let stray = Header {
        id: 9,
        command: 4,
        size: 20,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    r.raw_bytes(&stray.to_bytes());
    r.raw_bytes(&[0; 4]);
    r.assert_in_sync();
    // NO_REPLY errors are not answered: the next reply is for the next command.
    r.send(0x7777, flags::NO_REPLY, &[0; 10], &[]);
    r.assert_in_sync();
    assert!(ts.server.stats().errors >= 12);
    drop(r);
    ts.wait_ended(1);
}

#[test]
fn malformed_headers_get_an_error_reply_and_an_orderly_disconnect() {
    let _g = shared();
    let ts = TestServer::start(1);
    let mut ended = 0;
    // size smaller than the header: EINVAL, then the server closes.
    for size in [0u32, 1, 15] {
        let mut r = Raw::negotiated(&ts);
        r.raw_bytes(
            &Header {
                id: 5,
                command: 4,
                size,
                flags: 0,
                error: 0,
            }
            .to_bytes(),
        );
        let rep = r.recv();
        assert_eq!((rep.header.id, rep.errno()), (5, Some(libc::EINVAL)));
        assert!(
            wait_closed(&r.s, Duration::from_secs(5)),
            "server keeps a desynced stream open"
        );
        ended += 1;
        ts.wait_ended(ended);
    }
    // Absurd sizes (far above max_data_xfer_size): E2BIG before any allocation, then close.
    for size in [u32::MAX, 0x8000_0000, (1 << 20) + 16 + 4097 + 16] {
        let mut r = Raw::negotiated(&ts);
        r.raw_bytes(
            &Header {
                id: 6,
                command: Command::RegionWrite as u16,
                size,
                flags: 0,
                error: 0,
            }
            .to_bytes(),
        );
        let rep = r.recv();
        assert_eq!((rep.header.id, rep.errno()), (6, Some(libc::E2BIG)));
        assert!(wait_closed(&r.s, Duration::from_secs(5)));
        ended += 1;
        ts.wait_ended(ended);
    }
    // A size that lies larger than what is sent, then EOF: the connection ends, cleanly.
    {
        let mut r = Raw::negotiated(&ts);
        r.raw_bytes(
            &Header {
                id: 7,
                command: Command::RegionRead as u16,
                size: 1000,
                flags: 0,
                error: 0,
            }
            .to_bytes(),
        );
        r.raw_bytes(&[0; 10]);
        r.s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(wait_closed(&r.s, Duration::from_secs(5)));
        ended += 1;
        ts.wait_ended(ended);
    }
    // Half a header, then EOF.
    {
        let mut r = Raw::negotiated(&ts);
        r.raw_bytes(&[1, 0, 4, 0, 32]);
        drop(r);
        ended += 1;
        ts.wait_ended(ended);
    }
    // VERSION with an unknown major: ENOTSUP and close.
    {
        let mut r = Raw::new(ts.connect());
        let rep = r.call(1, 0, &wire::encode_version(1, 0, "{}"), &[]);
        assert_eq!(rep.errno(), Some(libc::ENOTSUP));
        assert!(wait_closed(&r.s, Duration::from_secs(5)));
        ended += 1;
        ts.wait_ended(ended);
    }
    // The server is still serving.
    let c = ts.client();
    assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    drop(c);
    ts.wait_ended(ended + 1);
    ts.assert_clean();
}

#[test]
fn argsz_lies_and_truncated_payloads_are_refused_in_sync() {
    let _g = shared();
    let ts = TestServer::start(1);
    let mut r = Raw::negotiated(&ts);
    let info = |argsz: u32| {
        wire::DeviceInfo {
            argsz,
            ..Default::default()
        }
        .encode()
    };
    let rinfo = |argsz: u32, index: u32| {
        wire::encode_region_info(&vfio_bindings::bindings::vfio::vfio_region_info {
            argsz,
            index,
            ..Default::default()
        })
    };
    let iinfo = |argsz: u32, index: u32| {
        wire::encode_irq_info(&vfio_bindings::bindings::vfio::vfio_irq_info {
            argsz,
            index,
            ..Default::default()
        })
    };
    let irqset = |argsz: u32, flags: u32, index: u32, start: u32, count: u32| {
        wire::encode_irq_set(&vfio_bindings::bindings::vfio::vfio_irq_set {
            argsz,
            flags,
            index,
            start,
            count,
            ..Default::default()
        })
    };
    let unmap = |argsz: u32, flags: u32, iova: u64, size: u64| {
        wire::encode_dma_unmap(&vfio_bindings::bindings::vfio::vfio_iommu_type1_dma_unmap {
            argsz,
            flags,
            iova,
            size,
            ..Default::default()
        })
    };
    let e = libc::EINVAL;
    // argsz smaller than the structure.
    r.expect_errno(Command::DeviceGetInfo as u16, &info(0), &[], e);
    r.expect_errno(Command::DeviceGetRegionInfo as u16, &rinfo(4, 0), &[], e);
    r.expect_errno(Command::DeviceGetIrqInfo as u16, &iinfo(15, 2), &[], e);
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(8, 3, 0, 0x1000, 0x1000),
        &[],
        e,
    );
    r.expect_errno(
        Command::DmaUnmap as u16,
        &unmap(0, 0, 0x1000, 0x1000),
        &[],
        e,
    );
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &irqset(4, DATA_NONE | ACTION_TRIGGER, 2, 0, 1),
        &[],
        e,
    );
    // argsz larger than the payload where it describes the payload.
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &irqset(1000, DATA_BOOL | ACTION_TRIGGER, 2, 0, 1),
        &[],
        e,
    );
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(u32::MAX, 3, 0, 0x1000, 0x1000),
        &[],
        e,
    );
    // argsz as the reply limit: a huge one is fine and allocates nothing; the reply is exact.
    let rep = r.call(
        Command::DeviceGetRegionInfo as u16,
        0,
        &rinfo(u32::MAX, 7),
        &[],
    );
    assert_eq!(rep.errno(), None);
    assert_eq!(rep.payload.len(), 32);
    assert_eq!(wire::parse_region_info(&rep.payload).unwrap().size, 4096);
    // Bad indexes and ranges.
    r.expect_errno(Command::DeviceGetRegionInfo as u16, &rinfo(32, 9), &[], e);
    r.expect_errno(Command::DeviceGetIrqInfo as u16, &iinfo(16, 5), &[], e);
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &irqset(20, DATA_NONE | ACTION_TRIGGER, 2, 0, 1000),
        &[],
        e,
    );
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &irqset(20, DATA_NONE | ACTION_TRIGGER, 2, u32::MAX, 2),
        &[],
        e,
    );
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &irqset(20, DATA_NONE | DATA_BOOL | ACTION_TRIGGER, 2, 0, 1),
        &[],
        e,
    );
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &irqset(20, DATA_NONE | ACTION_TRIGGER, 1, 0, 1),
        &[],
        e,
    );
    r.expect_errno(
        Command::RegionRead as u16,
        &region_read_payload(7, 4095, 2),
        &[],
        e,
    );
    r.expect_errno(
        Command::RegionRead as u16,
        &region_read_payload(7, u64::MAX, 2),
        &[],
        e,
    );
    r.expect_errno(
        Command::RegionRead as u16,
        &region_read_payload(6, 0, 4),
        &[],
        e,
    );
    r.expect_errno(
        Command::RegionRead as u16,
        &region_read_payload(7, 0, 0),
        &[],
        e,
    );
    r.expect_errno(
        Command::RegionRead as u16,
        &region_read_payload(0, 0, (1 << 20) + 1),
        &[],
        libc::E2BIG,
    );
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(32, 3, 0, 0x1001, 0x1000),
        &[],
        e,
    );
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(32, 3, 0, 0x1000, 0),
        &[],
        e,
    );
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(32, 0x10, 0, 0x1000, 0x1000),
        &[],
        e,
    );
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(32, 3, 0, u64::MAX - 0xfff, 0x2000),
        &[],
        e,
    );
    r.expect_errno(
        Command::DmaUnmap as u16,
        &unmap(24, 1, 0x1000, 0x1000),
        &[],
        e,
    );
    // REGION_WRITE whose count disagrees with its payload.
    let mut w = RegionRw {
        offset: 0,
        region: 7,
        count: 4,
    }
    .encode();
    w.extend_from_slice(&[0; 2]);
    r.expect_errno(Command::RegionWrite as u16, &w, &[], e);
    w.extend_from_slice(&[0; 10]);
    r.expect_errno(Command::RegionWrite as u16, &w, &[], e);
    // REGION_WRITE_MULTI with a count larger than its entries.
    let mut m = 5u64.to_ne_bytes().to_vec();
    m.extend_from_slice(&[0; 24]);
    r.expect_errno(Command::RegionWriteMulti as u16, &m, &[], e);
    // VERSION-style garbage JSON is refused in VERSION only; here every payload is cut short.
    for (cmd, full) in [
        (Command::DeviceGetInfo, 16usize),
        (Command::DeviceGetRegionInfo, 32),
        (Command::DeviceGetIrqInfo, 16),
        (Command::DeviceSetIrqs, 20),
        (Command::DmaMap, 32),
        (Command::DmaUnmap, 24),
        (Command::RegionRead, 16),
        (Command::RegionWrite, 16),
        (Command::RegionWriteMulti, 8),
    ] {
        for len in [0, 1, full / 2, full - 1] {
            r.expect_errno(cmd as u16, &vec![0x41; len], &[], e);
        }
    }
    r.assert_in_sync();
    // Nothing of the above changed the device.
    assert!(ts.dev().mappings().is_empty());
    drop(r);
    ts.wait_ended(1);
    // VERSION payload checks, each on a fresh connection.
    for bad in [vec![0u8; 2], wire::encode_version(0, 0, "not json"), {
        let mut v = wire::encode_version(0, 0, "{}");
        v.pop();
        v
    }] {
        let mut r = Raw::new(ts.connect());
        r.expect_errno(1, &bad, &[], e);
        // Still negotiable on the same connection.
        assert_eq!(
            r.call(1, 0, &wire::encode_version(0, 0, "{}"), &[]).errno(),
            None
        );
        r.assert_in_sync();
    }
}

#[test]
fn stray_and_excess_descriptors_are_refused_and_closed() {
    let _g = exclusive();
    let ts = TestServer::start(1);
    let shm = SharedMemory::new("vdpa-emu-test-fds", 1 << 20).unwrap();
    let mem = shm.try_clone_file().unwrap();
    let efds: Vec<std::fs::File> = (0..40).map(|_| eventfd().unwrap()).collect();
    let mut r = Raw::negotiated(&ts);
    let base = open_fd_count();
    let fd = |i: usize| efds[i].as_fd();
    // Two descriptors on a DMA_MAP.
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(32, 3, 0, 0x10_0000, 0x1000),
        &[mem.as_fd(), fd(0)],
        libc::EINVAL,
    );
    // Descriptors on commands that take none.
    r.expect_errno(
        Command::DeviceGetInfo as u16,
        &wire::DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .encode(),
        &[fd(0)],
        libc::EINVAL,
    );
    r.expect_errno(
        Command::RegionRead as u16,
        &region_read_payload(7, 0, 4),
        &[fd(0), fd(1), fd(2)],
        libc::EINVAL,
    );
    r.expect_errno(0x4242, &[0; 8], &[fd(0)], libc::ENOSYS);
    // More than max_msg_fds (16): the kernel truncates, the server refuses.
    let many: Vec<BorrowedFd<'_>> = (0..40).map(fd).collect();
    let set = |count: u32| {
        wire::encode_irq_set(&vfio_bindings::bindings::vfio::vfio_irq_set {
            argsz: 20,
            flags: DATA_EVENTFD | ACTION_TRIGGER,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count,
            ..Default::default()
        })
    };
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &set(3),
        &many[..17],
        libc::EINVAL,
    );
    r.expect_errno(Command::DeviceSetIrqs as u16, &set(3), &many, libc::EINVAL);
    // Count and descriptors disagree; a descriptor that is not an eventfd.
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &set(3),
        &many[..2],
        libc::EINVAL,
    );
    r.expect_errno(
        Command::DeviceSetIrqs as u16,
        &set(1),
        &[mem.as_fd()],
        libc::EINVAL,
    );
    // DMA_MAP whose file is too short for offset + size: refused, descriptor closed.
    r.expect_errno(
        Command::DmaMap as u16,
        &dma_map_payload(32, 3, 1 << 20, 0x10_0000, 0x1000),
        &[mem.as_fd()],
        libc::EINVAL,
    );
    r.assert_in_sync();
    assert_eq!(ts.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX), 0);
    assert!(ts.dev().mappings().is_empty());
    assert_eq!(
        open_fd_count(),
        base,
        "the server kept descriptors of refused messages"
    );
    drop(r);
    ts.wait_ended(1);
    ts.assert_clean();
}

/// Sets up a client the way QEMU does (memory mapped with its fd, MSI-X eventfds, driver
/// status bits), so that its death has something to clean.
fn busy_client(ts: &TestServer, mem: &std::fs::File, efds: &[std::fs::File]) -> Raw {
    let mut r = Raw::negotiated(ts);
    assert_eq!(
        r.call(
            Command::DmaMap as u16,
            0,
            &dma_map_payload(32, 3, 0, 0x4000_0000, 1 << 20),
            &[mem.as_fd()]
        )
        .errno(),
        None
    );
    let fds: Vec<BorrowedFd<'_>> = efds.iter().map(|f| f.as_fd()).collect();
    let set = wire::encode_irq_set(&vfio_bindings::bindings::vfio::vfio_irq_set {
        argsz: 20,
        flags: DATA_EVENTFD | ACTION_TRIGGER,
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: fds.len() as u32,
        ..Default::default()
    });
    assert_eq!(
        r.call(Command::DeviceSetIrqs as u16, 0, &set, &fds).errno(),
        None
    );
    let status = ts.dev().layout().common.offset + common::DEVICE_STATUS;
    let mut w = RegionRw {
        offset: status,
        region: 0,
        count: 1,
    }
    .encode();
    w.push(3);
    assert_eq!(
        r.call(Command::RegionWrite as u16, 0, &w, &[]).errno(),
        None
    );
    assert_eq!(ts.dev().status(), 3);
    assert_eq!(
        ts.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX),
        efds.len()
    );
    r
}

#[test]
fn a_client_dying_at_any_point_leaves_a_reset_device_and_no_descriptor() {
    let _g = exclusive();
    let ts = TestServer::start(2);
    let shm = SharedMemory::new("vdpa-emu-test-death", 1 << 20).unwrap();
    let mem = shm.try_clone_file().unwrap();
    let efds: Vec<std::fs::File> = (0..6).map(|_| eventfd().unwrap()).collect();
    let base = open_fd_count();
    type Death = Box<dyn Fn(&mut Raw)>;
    let deaths: Vec<(&str, Death)> = vec![
        ("between messages", Box::new(|_r: &mut Raw| {})),
        (
            "mid-header",
            Box::new(|r: &mut Raw| r.raw_bytes(&Header::command(1, 9, 16, 0).to_bytes()[..7])),
        ),
        (
            "mid-payload",
            Box::new(|r: &mut Raw| {
                r.raw_bytes(&Header::command(1, 10, 17, 0).to_bytes());
                r.raw_bytes(&[0; 9]);
            }),
        ),
        (
            "mid-payload with descriptors in flight",
            Box::new(|r: &mut Raw| {
                let shm2 = SharedMemory::new("vdpa-emu-test-inflight", 1 << 20).unwrap();
                let f = shm2.try_clone_file().unwrap();
                let p = dma_map_payload(32, 3, 0, 0x8000_0000, 1 << 20);
                send_message(
                    &r.s,
                    &Header::command(2, Command::DmaMap as u16, p.len(), 0).to_bytes(),
                    &p[..10],
                    &[f.as_fd()],
                )
                .unwrap();
            }),
        ),
        (
            "with unread replies queued",
            Box::new(|r: &mut Raw| {
                for _ in 0..50 {
                    r.send(
                        Command::RegionRead as u16,
                        0,
                        &region_read_payload(7, 0, 4096),
                        &[],
                    );
                }
            }),
        ),
        (
            "after a reset was requested",
            Box::new(|r: &mut Raw| {
                r.send(Command::DeviceReset as u16, flags::NO_REPLY, &[], &[]);
            }),
        ),
    ];
    for (n, (what, die)) in deaths.iter().enumerate() {
        let mut r = busy_client(&ts, &mem, &efds);
        die(&mut r);
        drop(r);
        ts.wait_ended(n as u64 + 1);
        ts.assert_clean();
        assert_eq!(
            open_fd_count(),
            base,
            "descriptors leaked after a client died {what}"
        );
    }
    // A killed client process, not just a dropped socket: the server sees the same EOF.
    let path = ts.path().to_path_buf();
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import socket,struct,time\ns=socket.socket(socket.AF_UNIX);s.connect('{}')\ns.send(struct.pack('<HHIII',1,1,21,0,0)+b'\\0\\0\\0\\0{{}}'[:4])\ntime.sleep(30)",
            path.display()
        ))
        .spawn();
    assert!(
        child.is_ok() || std::env::var_os("CI").is_none(),
        "python3 (the killed-process client) must run in CI: {:?}",
        child.as_ref().err()
    );
    if let Ok(child) = child.as_mut() {
        // Wait until the server has accepted it, then kill it mid-message.
        let t0 = Instant::now();
        while ts.server.stats().accepted < deaths.len() as u64 + 1
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        child.kill().unwrap();
        child.wait().unwrap();
        ts.wait_ended(deaths.len() as u64 + 1);
        ts.assert_clean();
    }
    // And the next client is served.
    let c = ts.client();
    assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
}

#[test]
fn set_irqs_assigns_eventfds_and_masks_in_the_server() {
    let _g = shared();
    let ts = TestServer::start(1);
    let c = Arc::new(ts.client());
    let n = c.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count;
    let efds: Vec<std::fs::File> = (0..n).map(|_| eventfd().unwrap()).collect();
    let fds: Vec<BorrowedFd<'_>> = efds.iter().map(|f| f.as_fd()).collect();
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_EVENTFD | ACTION_TRIGGER,
        0,
        n,
        &[],
        &fds,
    )
    .unwrap();
    assert_eq!(
        ts.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX),
        n as usize
    );
    // A client-side trigger (DATA_NONE) fires the eventfd.
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_NONE | ACTION_TRIGGER,
        1,
        1,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(eventfd_count(&efds[1]), Some(1));
    // Masked: the trigger is remembered, fired on unmask.
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_NONE | ACTION_MASK,
        1,
        1,
        &[],
        &[],
    )
    .unwrap();
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_NONE | ACTION_TRIGGER,
        1,
        1,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(eventfd_count(&efds[1]), None);
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_NONE | ACTION_UNMASK,
        1,
        1,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(eventfd_count(&efds[1]), Some(1));
    // DATA_BOOL selects vectors.
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_BOOL | ACTION_TRIGGER,
        0,
        3,
        &[1, 0, 1],
        &[],
    )
    .unwrap();
    assert_eq!(
        (
            eventfd_count(&efds[0]),
            eventfd_count(&efds[1]),
            eventfd_count(&efds[2])
        ),
        (Some(1), None, Some(1))
    );
    // The device's own interrupts: a driver brings it up (MSI-X on, config vector 0), then a
    // link change raises the config interrupt.
    let l = ts.dev().layout().clone();
    let mut drv = NetDriver::new(
        c.clone(),
        Arc::new(InterruptRecorder::new(n as u16)),
        DriverOptions::default(),
    )
    .unwrap();
    drv.start().unwrap();
    for f in &efds {
        let _ = eventfd_count(f);
    }
    ts.dev().set_link(false);
    assert_eq!(
        eventfd_count(&efds[0]),
        Some(1),
        "config interrupt reached vector 0's eventfd"
    );
    // Without eventfds (DATA_EVENTFD with no descriptors) vector 0 is de-assigned.
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_EVENTFD | ACTION_TRIGGER,
        0,
        1,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(
        ts.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX),
        n as usize - 1
    );
    // count 0 + DATA_NONE: all of the index disabled.
    c.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        DATA_NONE | ACTION_TRIGGER,
        0,
        0,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(ts.server.irqs().assigned(VFIO_PCI_MSIX_IRQ_INDEX), 0);
    // INTx: fires on assertion, then stays masked until UNMASK (AUTOMASKED), refires if still asserted.
    let intx = eventfd().unwrap();
    c.set_irqs(
        VFIO_PCI_INTX_IRQ_INDEX,
        DATA_EVENTFD | ACTION_TRIGGER,
        0,
        1,
        &[],
        &[intx.as_fd()],
    )
    .unwrap();
    let ctl = bar_registers::pci::cap_offset::MSIX + bar_registers::pci::msix_cap::MESSAGE_CONTROL;
    let v = read_u16(&c, REGION_CONFIG, ctl);
    c.write(
        REGION_CONFIG,
        ctl,
        &(v & !bar_registers::pci::msix_cap::CTRL_ENABLE).to_le_bytes(),
    )
    .unwrap();
    ts.dev().set_link(true);
    assert_eq!(eventfd_count(&intx), Some(1));
    c.set_irqs(
        VFIO_PCI_INTX_IRQ_INDEX,
        DATA_NONE | ACTION_UNMASK,
        0,
        1,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(
        eventfd_count(&intx),
        Some(1),
        "line still asserted (ISR unread): fires again on unmask"
    );
    let mut isr = [0u8];
    c.read(0, l.isr.offset, &mut isr).unwrap();
    assert_ne!(isr[0], 0);
    c.set_irqs(
        VFIO_PCI_INTX_IRQ_INDEX,
        DATA_NONE | ACTION_UNMASK,
        0,
        1,
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(eventfd_count(&intx), None, "deasserted by the ISR read");
    drop(drv);
}

#[test]
fn posted_writes_are_done_in_order_before_later_commands() {
    let _g = shared();
    let ts = TestServer::start(4);
    let c = ts.client();
    let l = ts.dev().layout().clone();
    let sel = l.common.offset + common::QUEUE_SELECT;
    let size = l.common.offset + common::QUEUE_SIZE;
    let before = ts.server.stats();
    // Many posted writes, then a read: the read sees the last one.
    for q in 0..9u16 {
        c.write_posted(0, sel, &q.to_le_bytes()).unwrap();
        c.write_posted(0, size, &(16u16 << (q % 4)).to_le_bytes())
            .unwrap();
    }
    assert_eq!(read_u16(&c, 0, sel), 8);
    for q in 0..9u16 {
        c.write(0, sel, &q.to_le_bytes()).unwrap();
        assert_eq!(read_u16(&c, 0, size), 16 << (q % 4), "queue {q}");
    }
    // A posted write that fails is not answered; the next command is.
    c.write_posted(0, l.bar_size(0), &[0; 4]).unwrap();
    assert_eq!(read_u16(&c, 0, sel), 8);
    // REGION_WRITE_MULTI (QEMU's coalesced posted writes).
    let mut m = 2u64.to_ne_bytes().to_vec();
    for (off, val) in [(sel, 3u64), (size, 64)] {
        m.extend_from_slice(
            &RegionRw {
                offset: off,
                region: 0,
                count: 2,
            }
            .encode(),
        );
        m.extend_from_slice(&val.to_le_bytes());
    }
    c.post(Command::RegionWriteMulti as u16, &m, &[]).unwrap();
    assert_eq!(read_u16(&c, 0, sel), 3);
    assert_eq!(read_u16(&c, 0, size), 64);
    let rep = c
        .request(Command::RegionWriteMulti as u16, 0, &m, &[])
        .unwrap();
    assert_eq!(rep.payload, 2u64.to_ne_bytes());
    // Every register access was counted, the refused one and the multi-writes (one each) too.
    let after = ts.server.stats();
    assert_eq!(
        (
            after.region_reads - before.region_reads,
            after.region_writes - before.region_writes
        ),
        (13, 30)
    );
}

/// Runs 640 frames of loopback traffic over two queue pairs through the driver model talking
/// to the server over the socket (posted writes and eventfd interrupts, as QEMU does), then
/// lets the client go. Returns the descriptor count before the client came.
fn traffic_over_the_socket(ts: &TestServer) -> (usize, Vec<String>) {
    let (base, before) = (open_fd_count(), fd_links());
    let ended = ts.server.stats().ended;
    let c = Arc::new(ts.client());
    c.set_posted_writes(true);
    let irq = Arc::new(InterruptRecorder::new(ts.dev().layout().msix_vectors));
    let pump = c.wire_interrupts(irq.clone()).unwrap();
    let mut drv = NetDriver::new(
        c.clone(),
        irq.clone(),
        DriverOptions {
            queue_pairs: 2,
            ..Default::default()
        },
    )
    .unwrap();
    drv.start().unwrap();
    assert!(
        ts.dev().mappings()[0].has_fd,
        "guest memory mapped with its memfd"
    );
    let mac = drv.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
    let (mut tracker, mut sent) = (Tracker::default(), HashMap::new());
    for round in 0..40u64 {
        for p in 0..2u16 {
            let batch: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    frames::build(
                        mac,
                        mac,
                        p,
                        round * 8 + i,
                        64 + (i as usize * 181) % 1400,
                        &mut rng,
                    )
                })
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            // Doorbells are posted: under load the server may not have caught up with the
            // previous batches yet, and the TX ring has no room. Retry until it takes them.
            let (mut done, t0) = (0, Instant::now());
            while done < refs.len() {
                done += drv.send(p, &refs[done..]).unwrap();
                for f in drv.recv(p).unwrap() {
                    tracker.record(&f);
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "TX ring stuck");
            }
            *sent.entry(p).or_insert(0) += 8;
            for f in drv.recv(p).unwrap() {
                tracker.record(&f);
            }
        }
    }
    let t0 = Instant::now();
    while tracker.delivered < 640 && t0.elapsed() < Duration::from_secs(5) {
        for p in 0..2 {
            for f in drv.recv(p).unwrap() {
                tracker.record(&f);
            }
        }
    }
    tracker.finish(&sent);
    assert!(tracker.clean() && tracker.delivered == 640, "{tracker:?}");
    // Queue interrupts arrived through the eventfds.
    let t0 = Instant::now();
    while irq.total() == 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        irq.total() > 0,
        "no interrupt reached the client's eventfds"
    );
    assert_eq!(ts.dev().fault(), None);
    drv.stop().unwrap();
    drop(drv);
    drop(pump);
    drop(c);
    ts.wait_ended(ended + 1);
    ts.assert_clean();
    (base, before)
}

/// issue 11: a client truncates its mapped memfd (to 0, or just below the TX buffers) and
/// rings a doorbell. The server contains the SIGBUS: the device enters DEVICE_NEEDS_RESET with
/// a `BackingLost` DMA fault (counted as dma_fault), the client still gets its replies, and
/// the next client is fully served. (A hole on a full tmpfs is the same fault path; it is
/// reproduced at the engine level in dma/src/guard.rs, which mounts the tmpfs.)
#[test]
fn truncated_guest_memory_is_a_dma_fault_and_the_server_keeps_serving() {
    let _g = shared();
    let ts = TestServer::start(2);
    for (round, to_zero) in [false, true].into_iter().enumerate() {
        let contained = dma::contained_sigbus();
        let faults_before = ts.dev().counters().faults[14];
        let c = Arc::new(ts.client());
        let irq = Arc::new(InterruptRecorder::new(ts.dev().layout().msix_vectors));
        let mut drv = NetDriver::new(
            c.clone(),
            irq,
            DriverOptions {
                queue_pairs: 1,
                ..Default::default()
            },
        )
        .unwrap();
        drv.start().unwrap();
        let mac = drv.mac().unwrap();
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
        let f = frames::build(mac, mac, 0, 0, 1000, &mut rng);
        assert_eq!(drv.enqueue_tx(0, &[&f]).unwrap(), 1);
        drv.publish_no_kick(sim_harness::driver::net::txq(0))
            .unwrap();
        // Where the rings end and where the TX buffer lies (its descriptor's address).
        let (desc, _, used, size) = drv
            .any_ring(sim_harness::driver::net::txq(0))
            .unwrap()
            .areas();
        let mem = drv.mem.clone();
        let mut a = [0u8; 8];
        mem.read(desc, &mut a).unwrap();
        let buf_iova = u64::from_le_bytes(a);
        let ring_end = (used + 4 + 8 * u64::from(size) + 2).next_multiple_of(4096);
        let cut = if to_zero {
            0
        } else {
            assert!(
                buf_iova >= ring_end,
                "TX buffer {buf_iova:#x} below the ring end {ring_end:#x}"
            );
            mem.offset_of(buf_iova).unwrap() & !0xfff
        };
        mem.shm().try_clone_file().unwrap().set_len(cut).unwrap();
        // From here the test touches no guest memory: its own mapping would fault too.
        drv.kick(sim_harness::driver::net::txq(0)).unwrap();
        let fault = ts.dev().fault().expect("device fault after the doorbell");
        assert!(
            matches!(
                &fault,
                device::DeviceFault::Dma {
                    fault: dma::DmaFault::BackingLost { .. },
                    ..
                }
            ),
            "{fault}"
        );
        assert_ne!(ts.dev().status() & 0x40, 0, "DEVICE_NEEDS_RESET");
        assert_eq!(ts.dev().counters().faults[14], faults_before + 1);
        assert!(dma::contained_sigbus() > contained);
        // The client is still served: a register read answers.
        assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
        drop(drv);
        drop(c);
        ts.wait_ended(2 * round as u64 + 1);
        // The next client is fully served (reset device, nothing mapped, traffic exact).
        traffic_over_the_socket(&ts);
    }
}

#[test]
fn the_driver_model_runs_traffic_over_the_socket() {
    let _g = shared();
    let ts = TestServer::start(2);
    traffic_over_the_socket(&ts);
    // The next client finds a fresh device and runs traffic again.
    let c = ts.client();
    assert_eq!(
        read_u16(
            &c,
            0,
            ts.dev().layout().common.offset + common::DEVICE_STATUS
        ),
        0
    );
}

/// DMA_UNMAP must release every reference to the client's memory before it is answered
/// (spec), and a client's departure must close its memfds. After device DMA, the device's DMA
/// engine keeps its last IOVA-space snapshot (and with it the mmap and the memfd) until its
/// next translation, which never comes once the device is reset.
#[test]
fn client_memory_is_released_after_device_dma() {
    let _g = exclusive();
    let ts = TestServer::start(2);
    let (base, before) = traffic_over_the_socket(&ts);
    assert_eq!(
        open_fd_count(),
        base,
        "descriptors still open in the server after the client left: {:?} -> {:?}",
        before,
        fd_links()
    );
}

/// A second client while one is served gets an EBUSY error reply to its first message at
/// once and is closed; a second client that sends nothing is closed within REFUSE_WAIT. The
/// first client is not disturbed, and once it leaves the next client is served.
#[test]
fn a_second_client_is_refused_with_ebusy() {
    let _g = shared();
    let ts = TestServer::start(1);
    let first = ts.client();
    let mut second = Raw::new(ts.connect());
    let t0 = Instant::now();
    let caps = client::qemu_capabilities().to_string();
    let id = second.send(
        Command::Version as u16,
        0,
        &wire::encode_version(0, 0, &caps),
        &[],
    );
    let rep = second.recv();
    assert_eq!(rep.errno(), Some(libc::EBUSY));
    assert_eq!(
        (rep.header.id, rep.header.command),
        (id, Command::Version as u16)
    );
    assert!(
        wait_closed(&second.s, Duration::from_secs(2)),
        "refused client closed"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refused quickly: {:?}",
        t0.elapsed()
    );
    // A silent second client is closed after REFUSE_WAIT, not left hanging.
    let silent = ts.connect();
    let t0 = Instant::now();
    assert!(
        wait_closed(&silent, Duration::from_secs(5)),
        "silent client closed"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Our own client reports it plainly.
    let e = Client::connect(ts.path()).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    assert!(e.to_string().contains("busy"), "{e}");
    ts.wait_stats("three refusals", |s| s.refused == 3);
    // The first client was never disturbed.
    assert_eq!(read_u16(&first, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    drop(first);
    ts.wait_ended(1);
    let next = ts.client();
    assert_eq!(read_u16(&next, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    assert_eq!(
        ts.server.stats().accepted,
        2,
        "refused clients are not sessions"
    );
}

fn short_timeout_server() -> TestServer {
    let dev = support::vmm_device(1);
    dev.set_loopback();
    TestServer::with_options(
        dev,
        ServerOptions {
            client_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    )
}

/// A client may idle between messages forever, but one that stops inside a message (in the
/// header, or in the payload) is dropped after the client timeout; the next client is served.
#[test]
fn a_client_stalled_mid_message_is_dropped_after_the_timeout() {
    let _g = shared();
    let ts = short_timeout_server();
    // Idle for 3 timeouts between messages: still served.
    let idle = ts.client();
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(read_u16(&idle, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    drop(idle);
    ts.wait_ended(1);
    // Half a header, then silence.
    let mut r = Raw::negotiated(&ts);
    let h = Header::command(7, Command::DeviceGetInfo as u16, 16, 0).to_bytes();
    r.raw_bytes(&h[..8]);
    let t0 = Instant::now();
    assert!(
        wait_closed(&r.s, Duration::from_secs(5)),
        "stalled client dropped"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    ts.wait_ended(2);
    assert_eq!(ts.server.stats().stalled, 1);
    ts.assert_clean();
    // A whole header, half the payload.
    let mut r = Raw::negotiated(&ts);
    r.raw_bytes(&h);
    r.raw_bytes(&[16, 0, 0, 0]);
    assert!(
        wait_closed(&r.s, Duration::from_secs(5)),
        "stalled client dropped"
    );
    ts.wait_ended(3);
    assert_eq!(ts.server.stats().stalled, 2);
    // The next client is served.
    let next = ts.client();
    assert_eq!(read_u16(&next, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
}

/// A client that sends requests but never reads the replies fills its socket; the server
/// gives up on the reply after the client timeout, drops it, and serves the next client.
#[test]
fn a_client_that_never_reads_replies_is_dropped() {
    let _g = shared();
    let ts = short_timeout_server();
    let r = Raw::negotiated(&ts);
    // Requests with 256-byte replies, written from a thread (our own writes block once the
    // server stops reading) until the server hangs up.
    let s = r.s.try_clone().unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = std::thread::spawn(move || {
        let mut sent = 0u32;
        loop {
            let p = region_read_payload(REGION_CONFIG, 0, 256);
            let h = Header::command(sent as u16, Command::RegionRead as u16, p.len(), 0);
            if send_message(&s, &h.to_bytes(), &p, &[]).is_err() {
                return sent;
            }
            sent += 1;
        }
    });
    let t0 = Instant::now();
    ts.wait_stats("client dropped for not reading", |s| s.stalled == 1);
    let waited = t0.elapsed();
    let sent = writer.join().unwrap();
    assert!(sent > 100, "only {sent} requests sent");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    ts.wait_ended(1);
    ts.assert_clean();
    let next = ts.client();
    assert_eq!(read_u16(&next, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    drop(r);
}

#[test]
fn stale_sockets_are_replaced_and_live_ones_refused() {
    // Alone: a test that spawns a process meanwhile forks this process, and the child holds
    // the "stale" listener's descriptor until it execs, so the socket answers a connect and
    // looks live (make test on 9a7dbc1: "in use").
    let _g = exclusive();
    let dir = temp_dir("vdpa-emu-vu");
    let path = dir.join("dev.sock");
    // A stale socket file (nobody listening).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let s = Server::bind(
        &path,
        DeviceBackend::new(vmm_device(1)),
        ServerOptions::default(),
    )
    .unwrap();
    // A live one.
    let e = Server::bind(
        &path,
        DeviceBackend::new(vmm_device(1)),
        ServerOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(s);
    assert!(!path.exists(), "socket removed when the server goes");
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(Server::bind(
        &path,
        DeviceBackend::new(vmm_device(1)),
        ServerOptions::default()
    )
    .is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn serve_binary_stops_on_sigterm_and_removes_its_socket() {
    let _g = shared();
    let dir = temp_dir("vdpa-emu-vu");
    let sock = dir.join("dev.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args([
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--queue-pairs",
            "2",
            "--mac",
            "02:00:00:00:00:01",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let c = loop {
        if let Ok(c) = Client::connect(&sock) {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let l = ts_layout(2);
    let mut mac = [0u8; 6];
    c.read(0, l.device_cfg.offset, &mut mac).unwrap();
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(read_u16(&c, 0, l.common.offset + common::NUM_QUEUES), 5);
    // SIGTERM while a client is connected.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket left behind");
    drop(c);
    // SIGINT with no client.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args(["serve", "--socket", sock.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists());
    // Bad arguments fail cleanly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
        .args([
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--port",
            "udp:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

fn ts_layout(pairs: u16) -> bar_registers::DeviceLayout {
    bar_registers::DeviceLayout::new(DeviceConfig::with_queue_pairs(pairs).layout).unwrap()
}

#[test]
fn unix_link_ports_join_two_devices() {
    let _g = shared();
    let dir = temp_dir("vdpa-emu-vu");
    let link = dir.join("link");
    let (a, b) = (vmm_device(1), vmm_device(1));
    let pa = ports::attach(&PortSpec::Unix(link.clone()), &a).unwrap();
    let pb = ports::attach(&PortSpec::Unix(link.clone()), &b).unwrap();
    assert!(
        pa.describe().ends_with("link.a") && pb.describe().ends_with("link.b"),
        "{} {}",
        pa.describe(),
        pb.describe()
    );
    // A third end is refused.
    assert!(ports::attach(&PortSpec::Unix(link.clone()), &vmm_device(1)).is_err());
    // Frames through the ports themselves (no RX buffers yet: they wait in the inbox).
    let frame: Vec<u8> = (0..100u8).collect();
    assert!(pa.port().unwrap().transmit(&frame));
    let t0 = Instant::now();
    while b.inbox().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "frame did not cross the link"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(b.inbox().pop().unwrap().data, frame);
    // Full datapath: driver A sends, driver B receives.
    let mut da = sim_harness::driver::in_process(&a, DriverOptions::default()).unwrap();
    let mut db = sim_harness::driver::in_process(&b, DriverOptions::default()).unwrap();
    da.start().unwrap();
    db.start().unwrap();
    let (ma, mb) = (da.mac().unwrap(), db.mac().unwrap());
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(3);
    let mut tracker = Tracker::default();
    for seq in 0..200u64 {
        let f = frames::build(ma, mb, 0, seq, 60 + (seq as usize * 37) % 1400, &mut rng);
        assert_eq!(da.send(0, &[&f]).unwrap(), 1);
        if seq % 16 == 15 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for f in db.recv(0).unwrap() {
            tracker.record(&f);
        }
    }
    let t0 = Instant::now();
    while tracker.delivered < 200 && t0.elapsed() < Duration::from_secs(5) {
        for f in db.recv(0).unwrap() {
            tracker.record(&f);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    tracker.finish(&HashMap::from([(0, 200)]));
    assert!(tracker.clean() && tracker.delivered == 200, "{tracker:?}");
    drop(pa);
    drop(pb);
    drop(da);
    drop(db);
    // The ends' socket files go with the devices' ports.
    assert!(!dir.join("link.a").exists() && !dir.join("link.b").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// The other end of a unix link is absent (an unplugged cable), or there but taking nothing
/// (paused for longer than the link waits, `STALL_TIMEOUT`): the sender's frames are dropped and
/// counted (`tx_port_lost`), and its TX never stops for good: every chain is taken and used.
#[test]
fn unix_link_drops_and_counts_when_the_other_end_is_absent_or_stalled() {
    use sim_harness::ports::unix::STALL_TIMEOUT;
    let _g = shared();
    let dir = temp_dir("vdpa-emu-vu");
    let link = dir.join("link");
    let a = vmm_device(1);
    let pa = ports::attach(&PortSpec::Unix(link.clone()), &a).unwrap();
    let mut da = sim_harness::driver::in_process(&a, DriverOptions::default()).unwrap();
    da.start().unwrap();
    let ma = da.mac().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(9);
    let frame = frames::build(ma, ma, 0, 0, 200, &mut rng);
    // Sends `n` frames, waiting for ring room; returns when A used them all.
    let send_all = |da: &mut NetDriver, n: usize, within: Duration| {
        let before = a.queue(1).unwrap().last_used;
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < n {
            let want = (n - sent).min(32);
            sent += da.send(0, &vec![frame.as_slice(); want]).unwrap();
            assert!(
                t0.elapsed() < within,
                "A stopped taking chains: {sent} of {n} sent"
            );
            std::thread::yield_now();
        }
        while a.queue(1).unwrap().last_used.wrapping_sub(before) != n as u16 {
            assert!(t0.elapsed() < within, "A's chains not all used");
            da.send(0, &[]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // No other end at all: every frame is lost at once, counted.
    send_all(&mut da, 1000, Duration::from_secs(10));
    let t0 = Instant::now();
    while a.counters().tx_port_lost < 1000 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{:?}",
            a.counters().tx_port_lost
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        a.counters().tx_frames,
        1000,
        "the device sent them; the port lost them"
    );
    // An other end that takes nothing: A waits STALL_TIMEOUT for it, then drops, and goes on.
    let b = vmm_device(1);
    let pb = ports::attach(&PortSpec::Unix(link.clone()), &b).unwrap();
    let mut db = sim_harness::driver::in_process(&b, DriverOptions::default()).unwrap();
    db.start().unwrap();
    b.pause();
    let lost_before = a.counters().tx_port_lost;
    let t0 = Instant::now();
    send_all(&mut da, 6000, STALL_TIMEOUT * 10);
    let waited = t0.elapsed();
    let ca = a.counters();
    assert!(
        ca.tx_port_busy > 0,
        "A was never held back while B took nothing"
    );
    assert!(
        waited >= STALL_TIMEOUT,
        "A dropped before the link's wait was up ({waited:?})"
    );
    let t0 = Instant::now();
    while a.counters().tx_port_lost == lost_before {
        assert!(t0.elapsed() < STALL_TIMEOUT * 5, "nothing counted as lost");
        std::thread::sleep(Duration::from_millis(5));
    }
    // B's FIFO (4096) and socket hold what they took; the rest was lost, none twice.
    b.resume();
    drop((pa, pb, da, db));
    let _ = std::fs::remove_dir_all(dir);
}

/// TAP needs root and /dev/net/tun; skipped (with a message) elsewhere.
#[test]
fn tap_port_moves_frames_between_device_and_host() {
    let _g = shared();
    let name = format!("vdpaemu{}", std::process::id() % 100_000);
    let dev = vmm_device(1);
    let handle = match ports::attach(&PortSpec::Tap(name.clone()), &dev) {
        Ok(h) => h,
        Err(e) => {
            // CI runs as root: there the TAP test must run, not skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "TAP port unavailable in CI: {e}"
            );
            eprintln!("skipping the TAP test: {e}");
            return;
        }
    };
    // A packet socket on the interface sees what the device transmits and injects frames.
    // SAFETY: plain socket(2) call.
    let ps = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    assert!(ps >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: `ps` is a fresh descriptor we own.
    let ps = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ps) };
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(ifindex > 0);
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    use std::os::fd::AsRawFd;
    // SAFETY: binds `ps` to a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            ps.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 0x42]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend((0..80u8).map(|i| i ^ 0x5a));
    // Device -> host.
    assert!(handle.port().unwrap().transmit(&frame));
    let t0 = Instant::now();
    let mut seen = false;
    while !seen && t0.elapsed() < Duration::from_secs(5) {
        if poll_in(&[ps.as_fd()], Some(Duration::from_millis(100))).unwrap()[0] {
            let mut b = [0u8; 2048];
            // SAFETY: reads into a live buffer of the given size.
            let n = unsafe { libc::recv(ps.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
            seen = n as usize == frame.len() && b[..frame.len()] == frame[..];
        }
    }
    assert!(
        seen,
        "the host did not receive the device's frame on {name}"
    );
    // Host -> device.
    let mut f2 = frame.clone();
    f2[11] = 0x43;
    // SAFETY: sends a live buffer through the bound packet socket.
    let n = unsafe { libc::send(ps.as_raw_fd(), f2.as_ptr().cast(), f2.len(), 0) };
    assert_eq!(n as usize, f2.len());
    let t0 = Instant::now();
    let mut got = false;
    while !got && t0.elapsed() < Duration::from_secs(5) {
        while let Some(f) = dev.inbox().pop() {
            got |= f.data == f2;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(got, "the device did not receive the host's frame");
    // A TCPv4 GSO frame with its virtio-net header goes to the TAP whole (IFF_VNET_HDR): the
    // kernel takes it (a header it rejects fails the write) and the packet socket sees the one
    // unsegmented frame, as for QEMU's tap backend.
    let port = handle.port().unwrap();
    assert_eq!(port.offloads(), device::PortOffloads::ALL);
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let (lay, big) = sim_harness::inet::build(
        [2, 0, 0, 0, 0, 0x42],
        [2, 0, 0, 0, 0, 0x44],
        true,
        true,
        &payload,
        1,
        sim_harness::inet::ACK,
        1,
    );
    let hdr = device::net::offload::hdr::NetHdr {
        flags: device::net::offload::hdr::F_NEEDS_CSUM,
        gso_type: device::net::offload::hdr::GSO_TCPV4,
        hdr_len: lay.payload as u16,
        gso_size: 1448,
        csum_start: lay.l4 as u16,
        csum_offset: 16,
        num_buffers: 0,
    };
    assert!(
        port.transmit_with_hdr(&hdr, &big),
        "the TAP took the GSO frame"
    );
    let t0 = Instant::now();
    let mut seen = false;
    while !seen && t0.elapsed() < Duration::from_secs(5) {
        if poll_in(&[ps.as_fd()], Some(Duration::from_millis(100))).unwrap()[0] {
            let mut b = vec![0u8; 70_000];
            // SAFETY: reads into a live buffer of the given size.
            let n = unsafe { libc::recv(ps.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
            seen = n as usize == big.len() && b[lay.payload..big.len()] == big[lay.payload..];
        }
    }
    assert!(seen, "the host did not see the GSO frame on {name}");
    // A bad GSO header is refused by the kernel: the port reports the drop.
    let bad = device::net::offload::hdr::NetHdr {
        gso_size: 0,
        gso_type: 9,
        ..hdr
    };
    assert!(
        !port.transmit_with_hdr(&bad, &big),
        "the kernel refuses gso_type 9"
    );
    drop(handle);
}

/// `--port tap:IFNAME:no-offloads`: the TAP port says it takes no offloads, so the device
/// completes checksums and segments GSO frames itself (docs/offloads.md; the e2e test
/// `dpdk_testpmd_csum_engine_tx_checksum_offload` reads the completed checksums on the host).
/// Needs root, like the test above.
#[test]
fn tap_port_without_offloads_takes_wire_frames_only() {
    let _g = shared();
    let name = format!("vdpaemn{}", std::process::id() % 100_000);
    let dev = vmm_device(1);
    let handle = match ports::attach(&PortSpec::TapNoOffloads(name.clone()), &dev) {
        Ok(h) => h,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "TAP port unavailable in CI: {e}"
            );
            eprintln!("skipping the TAP test: {e}");
            return;
        }
    };
    let port = handle.port().expect("a TAP port");
    assert_eq!(port.offloads(), device::PortOffloads::NONE);
    assert_eq!(handle.describe(), format!("tap:{name}:no-offloads"));
    // wire frames still go out
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 0x42, 0x88, 0xb5]);
    frame.extend([0x5a; 60]);
    assert!(port.transmit(&frame), "the TAP took a wire frame");
    drop(handle);
}

/// Sets the serve child's soft RLIMIT_NOFILE (the hard limit stays).
fn set_nofile(serve: &ServeProcess, n: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into a live local.
    let rc = unsafe { libc::prlimit(serve.pid(), libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let r = libc::rlimit {
        rlim_cur: n.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit on our own child with a valid new limit and no old-limit output.
    let rc = unsafe { libc::prlimit(serve.pid(), libc::RLIMIT_NOFILE, &r, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// DMA maps keep no descriptor in the server (200 maps, each of its own memfd, leave its fd
/// count where it was), and a server out of descriptors says so: descriptors the kernel could
/// not install get an EMFILE reply and a log line naming RLIMIT_NOFILE, not "more than 16
/// descriptors". It keeps serving once descriptors are available again.
#[test]
fn maps_keep_no_descriptor_and_fd_exhaustion_is_reported_as_emfile() {
    let _g = shared();
    let serve = ServeProcess::start("vdpa-emu-serve", &[]);
    let log = serve.log();
    assert!(
        log.contains("RLIMIT_NOFILE"),
        "limit logged at start:\n{log}"
    );
    let mut r = Raw::negotiate(UnixStream::connect(&serve.sock).unwrap());
    let base = serve.fds();
    for i in 0..200u64 {
        let shm = SharedMemory::new("distinct", 0x1000).unwrap();
        let f = shm.try_clone_file().unwrap();
        let rep = r.call(
            Command::DmaMap as u16,
            0,
            &dma_map_payload(32, 3, 0, 0x1000_0000 + i * 0x1000, 0x1000),
            &[f.as_fd()],
        );
        assert_eq!(rep.errno(), None, "map {i}");
    }
    assert_eq!(serve.fds(), base, "DMA maps kept descriptors in the server");
    // Leave room for 2 more descriptors, then send 3 eventfds (one per MSI-X vector).
    // RLIMIT_NOFILE bounds descriptor numbers, and new ones take the lowest free number: the
    // limit goes just above the second free number.
    let used: std::collections::BTreeSet<u64> =
        std::fs::read_dir(format!("/proc/{}/fd", serve.pid()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
    let second_free = (0..).filter(|n| !used.contains(n)).nth(1).unwrap();
    set_nofile(&serve, second_free + 1);
    let efds: Vec<std::fs::File> = (0..3).map(|_| eventfd().unwrap()).collect();
    let fds: Vec<BorrowedFd<'_>> = efds.iter().map(|f| f.as_fd()).collect();
    let set = wire::encode_irq_set(&vfio_bindings::bindings::vfio::vfio_irq_set {
        argsz: 20,
        flags: DATA_EVENTFD | ACTION_TRIGGER,
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 3,
        ..Default::default()
    });
    r.expect_errno(Command::DeviceSetIrqs as u16, &set, &fds, libc::EMFILE);
    let log = serve.log();
    assert!(
        log.contains("out of file descriptors"),
        "true cause logged:\n{log}"
    );
    assert!(!log.contains("more than 16 descriptors"), "{log}");
    assert_eq!(
        serve.fds(),
        base,
        "the descriptors that did arrive were closed"
    );
    // Room again: the same command succeeds, the stream is in sync.
    set_nofile(&serve, 4096);
    let rep = r.call(Command::DeviceSetIrqs as u16, 0, &set, &fds);
    assert_eq!(rep.errno(), None);
    r.assert_in_sync();
}

#[test]
fn the_socket_file_appears_only_once_it_listens() {
    // bind(2) creates the file before listen(2): the server binds under a temporary name and
    // renames, so whoever sees the path can connect at once (no ECONNREFUSED window).
    let dir = temp_dir("vdpa-emu-bindlisten");
    let path = dir.join("dev.sock");
    let server = Server::bind(
        &path,
        DeviceBackend::new(vmm_device(1)),
        ServerOptions::default(),
    )
    .unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["dev.sock"], "no temporary name left behind");
    // Listening already: the connection is queued in the backlog before serve() runs.
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A port with a bug on the control path: the first time a driver's receive offloads reach it
/// (feature negotiation, inside a trapped register write), it panics.
#[derive(Default)]
struct OffloadsPanicPort {
    panicked: std::sync::atomic::AtomicBool,
}

impl device::Port for OffloadsPanicPort {
    fn transmit(&self, _frame: &[u8]) -> bool {
        true
    }
    fn set_rx_offloads(&self, offloads: device::port::PortOffloads) {
        if offloads != device::port::PortOffloads::NONE
            && !self
                .panicked
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("port bug in set_rx_offloads");
        }
    }
    fn describe(&self) -> String {
        "offloads-panic".into()
    }
}

/// A panic inside a message's handler (a bug in the server or the device, here a port's on
/// the control path) does not take the server down: the message gets EIO, the device enters
/// DEVICE_NEEDS_RESET with an internal_error fault carrying the panic's message, the same
/// client goes on (a register read answers, its driver's reset brings the device back) and
/// the session ends cleanly.
#[test]
fn a_panic_in_a_message_handler_fails_the_device_and_the_server_goes_on() {
    let _g = shared();
    let dev = vmm_device(1);
    dev.set_port(Arc::new(OffloadsPanicPort::default()));
    let mut ts = TestServer::with_device(dev);
    ts.expected_handler_panics = 1;
    let c = Arc::new(ts.client());
    let irq = Arc::new(InterruptRecorder::new(ts.dev().layout().msix_vectors));
    let opts = DriverOptions {
        queue_pairs: 1,
        ..Default::default()
    };
    let mut drv = NetDriver::new(c.clone(), irq, opts).unwrap();
    let errors = ts.server.stats().errors;
    assert!(
        drv.start().is_err(),
        "the driver started on a device whose handler panicked"
    );
    let st = ts.server.stats();
    assert_eq!(st.handler_panics, 1);
    // The message was answered with an error (logged only, if it was a posted write).
    assert_eq!(st.errors, errors + 1, "{st:?}");
    let fault = ts
        .dev()
        .fault()
        .expect("no fault after the handler's panic");
    assert_eq!(
        fault.to_string(),
        "internal device error in a vfio-user message's handler: port bug in set_rx_offloads"
    );
    assert_eq!(ts.dev().counters().fault("internal_error"), 1);
    let mut status = [0u8];
    c.read(
        0,
        ts.dev().layout().common.offset + common::DEVICE_STATUS,
        &mut status,
    )
    .unwrap();
    assert_ne!(
        status[0] & bar_registers::virtio::device_status::DEVICE_NEEDS_RESET,
        0,
        "status {:#x}",
        status[0]
    );
    assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);

    // The driver's reset brings the device back on the same connection (the port's bug
    // struck once).
    drv.start().unwrap();
    assert_eq!(ts.dev().fault(), None);
    assert_eq!(ts.server.stats().handler_panics, 1);
    drop(drv);
    drop(c);
    ts.wait_ended(1);
    ts.assert_clean();
}

fn spinning_server(spin: Duration) -> TestServer {
    let dev = support::vmm_device(1);
    dev.set_loopback();
    TestServer::with_options(
        dev,
        ServerOptions {
            reply_spin: spin,
            ..ServerOptions::default()
        },
    )
}

/// After each message the server polls for the next one for `reply_spin` before it sleeps:
/// a client's next message 2 ms later finds it polling (counted), and with no spin none does.
/// A client that idles longer than the spin is still answered (from poll(2)).
#[test]
fn back_to_back_messages_find_the_server_polling() {
    let _g = shared();
    const READS: u64 = 20;
    // A window no scheduler delay between a reply and the next request comes near.
    let ts = spinning_server(Duration::from_millis(500));
    let c = ts.client();
    let before = ts.server.stats().caught_spinning;
    for _ in 0..READS {
        assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
        // Time for the server to finish the message and find the socket empty: a request
        // already waiting when it looks needs no spin (and is not counted).
        std::thread::sleep(Duration::from_millis(2));
    }
    let caught = ts.server.stats().caught_spinning - before;
    // Most, not all: a test thread preempted for the whole window on a busy machine is not
    // what this checks.
    assert!(
        caught >= READS / 2,
        "{caught} of {READS} back-to-back reads found the server polling: {:?}",
        ts.server.stats()
    );
    // Idle past the window: answered all the same, and not counted.
    std::thread::sleep(Duration::from_millis(700));
    let before = ts.server.stats().caught_spinning;
    assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    assert_eq!(ts.server.stats().caught_spinning, before);
    // Closed while the server polls after that read: a close is not a message.
    drop(c);
    ts.wait_ended(1);
    assert_eq!(ts.server.stats().caught_spinning, before);

    let ts = spinning_server(Duration::ZERO);
    let c = ts.client();
    for _ in 0..READS {
        assert_eq!(read_u16(&c, REGION_CONFIG, hdr::VENDOR_ID), 0x1af4);
    }
    assert_eq!(
        ts.server.stats().caught_spinning,
        0,
        "no spin, nothing caught"
    );
}
