//! The vfio-user stream target: the server (`vdpa_vfio_user::Server` over vdpa-emu's NIC,
//! `sim_harness::serve::DeviceBackend` with shared-memory doorbells, loopback port) fed a sequence of commands over a
//! socketpair, descriptors included (small memfds for DMA_MAP, eventfds for SET_IRQS), the way
//! QEMU's vfio-user-pci talks to it (QEMU docs/interop/vfio-user.rst).
//!
//! One input is one connection: the server runs `Server::serve_stream` on its own thread, a
//! writer thread sends the decoded commands and then two probes (VERSION, REGION_READ of the
//! config space), and this thread reads every reply until the server closes. Then a second,
//! fresh connection sends VERSION + REGION_READ again.
//!
//! Checked: no panic; the replies are whole, well-framed reply messages; when every message
//! was well framed (no raw bytes in the input) the connection ends only by the client's close
//! or an unsupported major version, and both probes get a reply (success or errno) with their
//! own id; after the connection the server has cleaned up (no DMA mapping left, every
//! interrupt eventfd closed, counters consistent, no descriptor leaked), and the fresh
//! connection negotiates and reads the PCI vendor/device ID.
//!
//! Input: a sequence of commands, each an opcode byte (low 5 bits the command; bit 7 sets
//! NO_REPLY, bit 6 attaches an extra eventfd to the message) and its fields; see [`Op`].

use crate::cursor::{Cursor, Writer};
use bar_registers::virtio::{common, device_status as st};
use bar_registers::REGION_CONFIG;
use device::{Device, DeviceConfig, MsixOwner, RegionAccess};
use device::doorbell::PollPolicy;
use sim_harness::serve::{DeviceBackend, DeviceServer, DoorbellMode};
use sim_harness::vfio_user::sock::send_with_fds;
use sim_harness::vfio_user::wire::{self, flags, put16, put32, put64, Command, Header};
use sim_harness::vfio_user::{ConnectionEnd, Server, ServerOptions};
use std::fs::File;
use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// IOVA of the guest RAM the seeds map (the DriverSetup rings live there).
pub const RAM_IOVA: u64 = 0x10_0000;
/// Pages of the largest memfd a DMA_MAP sends.
const MAX_PAGES: u64 = 4;
const PAGE: u64 = 4096;
/// Ids of the probes (fuzzed commands count from 0).
const PROBE_VERSION: u16 = 0xfff0;
const PROBE_READ: u16 = 0xfff1;
/// Most commands decoded from one input.
const MAX_COMMANDS: usize = 64;

/// Command opcodes of the input (low 5 bits of the opcode byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// major u16, minor u16, caps u8 (0 none, 1 plain, 2 write_multiple, 3 bad pgsizes,
    /// 4 not JSON, 5 not terminated, else raw: len u8 + bytes).
    Version = 0,
    /// argsz u32.
    GetInfo,
    /// argsz u32, index u32.
    RegionInfo,
    /// argsz u32, index u32.
    IrqInfo,
    /// flags u32, index u32, start u32, count u32, eventfds u8 (% 5), extra data len u8 + bytes.
    SetIrqs,
    /// flags u32 (low 2 bits READ/WRITE; 0xff.. raw), offset pages u8, iova sel u8 (+ u64 if
    /// raw), size pages u8 (+ u64 if 0xff), memfd pages u8, fd bool, fill len u16 + bytes.
    DmaMap,
    /// flags u32, iova sel u8 (+ u64), size u64, extra len u8 + bytes.
    DmaUnmap,
    /// region u8, offset u64, count u32 (capped at 64 KiB unless the high bit of region).
    RegionRead,
    /// region u8, offset u64, count u8, data len u8 + bytes.
    RegionWrite,
    /// n u64, entries u8 (% 5) x (region u8, offset u64, count u8, 8 data bytes).
    RegionWriteMulti,
    DeviceReset,
    /// argsz u32, flags u32, data len u8 + bytes.
    DeviceFeature,
    /// target state u32 (SET MIG_DEVICE_STATE).
    MigState,
    /// argsz u32, size u32.
    MigDataRead,
    /// argsz u32, size u32, data len u16 + bytes.
    MigDataWrite,
    /// page size u64, ranges u8 (% 3) x (iova u64, length u64): SET DMA_LOGGING_START.
    LoggingStart,
    /// iova u64, length u64, page size u64, argsz u32: GET DMA_LOGGING_REPORT.
    LoggingReport,
    /// queue u8, value u16: REGION_WRITE of a doorbell.
    Doorbell,
    /// features lo u32, packed bool, queue size u16: the common-cfg writes of a driver start
    /// with rings in the guest RAM at [`RAM_IOVA`], then DRIVER_OK.
    DriverSetup,
    /// register u8, width u8, value u64: REGION_WRITE into the common cfg.
    CommonWrite,
    /// command u16, flags u32, payload len u8 + bytes: a well-framed message of any kind.
    Message,
    /// len u16 + bytes sent as they are.
    Raw,
}

const OPS: [Op; 22] = [
    Op::Version,
    Op::GetInfo,
    Op::RegionInfo,
    Op::IrqInfo,
    Op::SetIrqs,
    Op::DmaMap,
    Op::DmaUnmap,
    Op::RegionRead,
    Op::RegionWrite,
    Op::RegionWriteMulti,
    Op::DeviceReset,
    Op::DeviceFeature,
    Op::MigState,
    Op::MigDataRead,
    Op::MigDataWrite,
    Op::LoggingStart,
    Op::LoggingReport,
    Op::Doorbell,
    Op::DriverSetup,
    Op::CommonWrite,
    Op::Message,
    Op::Raw,
];

/// One message as the writer sends it.
struct Out {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

struct Harness {
    server: DeviceServer,
    dev: Arc<Device>,
    /// Descriptors open after the first runs (the baseline a leak would grow).
    fd_baseline: OnceLock<Vec<String>>,
    runs: AtomicU64,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let mut cfg = DeviceConfig::with_queue_pairs(1);
        cfg.msix_owner = MsixOwner::Vmm;
        let dev = Device::new(cfg).expect("device");
        dev.set_loopback();
        // The server needs a bound socket; the fuzz harness never connects through it (it
        // hands socketpair ends to serve_stream), so the file is removed at once.
        let path = std::env::temp_dir().join(format!("vdpa-fuzz-{}.sock", std::process::id()));
        // Shared-memory doorbells, as `serve` runs by default: BAR0's region info then
        // carries a sparse mmap capability and, when argsz holds it, a descriptor.
        let backend =
            DeviceBackend::with_doorbells(dev.clone(), DoorbellMode::Mmap, PollPolicy::default())
                .expect("doorbell engine");
        let server = Server::bind(&path, backend, ServerOptions::default()).expect("bind");
        let _ = std::fs::remove_file(&path);
        Harness {
            server,
            dev,
            fd_baseline: OnceLock::new(),
            runs: AtomicU64::new(0),
        }
    })
}

fn memfd(pages: u64, fill: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name and valid flags; a non-negative return
    // is a new descriptor that we own.
    let fd = unsafe { libc::memfd_create(c"vdpa-fuzz-dma".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(pages * PAGE).expect("ftruncate memfd");
    let n = fill.len().min((pages * PAGE) as usize);
    file.write_all_at(&fill[..n], 0).expect("fill memfd");
    file.into()
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd with valid flags; a non-negative return is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn msg(id: u16, cmd: u16, extra_flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Header::command(id, cmd, payload.len(), extra_flags)
        .to_bytes()
        .to_vec();
    b.extend_from_slice(payload);
    b
}

fn region_write(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = wire::RegionRw {
        offset,
        region,
        count: data.len() as u32,
    }
    .encode();
    p.extend_from_slice(data);
    p
}

fn iova(c: &mut Cursor<'_>) -> u64 {
    match c.u8() {
        0xff => c.u64(),
        k => RAM_IOVA + u64::from(k % 16) * PAGE,
    }
}

/// The payloads of the common-cfg writes of a driver start (see [`Op::DriverSetup`]).
fn driver_setup(dev: &Device, features_lo: u32, packed: bool, qsize: u16) -> Vec<Vec<u8>> {
    let c = dev.layout().common.offset;
    let w8 = |reg: u64, v: u8| region_write(0, c + reg, &[v]);
    let w16 = |reg: u64, v: u16| region_write(0, c + reg, &v.to_le_bytes());
    let w32 = |reg: u64, v: u32| region_write(0, c + reg, &v.to_le_bytes());
    let mut v = vec![
        w8(common::DEVICE_STATUS, 0),
        w8(common::DEVICE_STATUS, st::ACKNOWLEDGE),
        w8(common::DEVICE_STATUS, st::ACKNOWLEDGE | st::DRIVER),
        w32(common::DRIVER_FEATURE_SELECT, 0),
        w32(common::DRIVER_FEATURE, features_lo),
        w32(common::DRIVER_FEATURE_SELECT, 1),
        // VERSION_1 (bit 32), RING_PACKED (bit 34).
        w32(common::DRIVER_FEATURE, 1 | if packed { 4 } else { 0 }),
        w8(
            common::DEVICE_STATUS,
            st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK,
        ),
    ];
    for q in 0..3u16 {
        let base = RAM_IOVA + u64::from(q) * 0x1000;
        v.push(w16(common::QUEUE_SELECT, q));
        v.push(w16(common::QUEUE_SIZE, qsize));
        for (reg, at) in [
            (common::QUEUE_DESC, base),
            (common::QUEUE_DRIVER, base + 0x400),
            (common::QUEUE_DEVICE, base + 0x800),
        ] {
            v.push(w32(reg, at as u32));
            v.push(w32(reg + 4, (at >> 32) as u32));
        }
        v.push(w16(common::QUEUE_ENABLE, 1));
    }
    v.push(w8(
        common::DEVICE_STATUS,
        st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
    ));
    v
}

/// Decodes the input into messages; returns them and whether any was sent raw.
fn decode(dev: &Device, data: &[u8]) -> (Vec<Out>, bool) {
    let mut c = Cursor::new(data);
    let mut out = Vec::new();
    let mut raw = false;
    let mut id: u16 = 0;
    while !c.is_empty() && out.len() < MAX_COMMANDS {
        let opb = c.u8();
        let op = OPS[usize::from(opb & 0x1f) % OPS.len()];
        let nr = if opb & 0x80 != 0 { flags::NO_REPLY } else { 0 };
        let mut fds = Vec::new();
        if opb & 0x40 != 0 {
            fds.push(eventfd());
        }
        let mut push = |cmd: Command, payload: Vec<u8>, fds: Vec<OwnedFd>| {
            out.push(Out {
                bytes: msg(id, cmd as u16, nr, &payload),
                fds,
            });
            id = id.wrapping_add(1) % PROBE_VERSION;
        };
        match op {
            Op::Version => {
                let (major, minor) = (c.u16(), c.u16());
                let json: Vec<u8> = match c.u8() {
                    0 => Vec::new(),
                    1 => b"{\"capabilities\":{\"pgsizes\":4096,\"max_msg_fds\":16}}\0".to_vec(),
                    2 => b"{\"capabilities\":{\"write_multiple\":true}}\0".to_vec(),
                    3 => b"{\"capabilities\":{\"pgsizes\":8192}}\0".to_vec(),
                    4 => b"capabilities\0".to_vec(),
                    5 => b"{\"capabilities\":{}}".to_vec(),
                    _ => {
                        let n = usize::from(c.u8());
                        c.bytes(n).to_vec()
                    }
                };
                let mut p = Vec::new();
                put16(&mut p, major);
                put16(&mut p, minor);
                p.extend_from_slice(&json);
                push(Command::Version, p, fds);
            }
            Op::GetInfo => {
                let mut p = Vec::new();
                put32(&mut p, c.u32());
                p.extend_from_slice(&[0; 12]);
                push(Command::DeviceGetInfo, p, fds);
            }
            Op::RegionInfo | Op::IrqInfo => {
                let mut p = Vec::new();
                put32(&mut p, c.u32());
                put32(&mut p, 0);
                put32(&mut p, c.u32());
                let (cmd, rest) = if op == Op::RegionInfo {
                    (Command::DeviceGetRegionInfo, wire::REGION_INFO_SIZE - 12)
                } else {
                    (Command::DeviceGetIrqInfo, wire::IRQ_INFO_SIZE - 12)
                };
                p.resize(p.len() + rest, 0);
                push(cmd, p, fds);
            }
            Op::SetIrqs => {
                let (fl, index, start, count) = (c.u32(), c.u32(), c.u32(), c.u32());
                for _ in 0..c.u8() % 5 {
                    fds.push(eventfd());
                }
                let n = usize::from(c.u8());
                let extra = c.bytes(n);
                let mut p = Vec::new();
                put32(&mut p, (wire::IRQ_SET_SIZE + extra.len()) as u32);
                put32(&mut p, fl);
                put32(&mut p, index);
                put32(&mut p, start);
                put32(&mut p, count);
                p.extend_from_slice(extra);
                push(Command::DeviceSetIrqs, p, fds);
            }
            Op::DmaMap => {
                let fl = c.u32();
                let off = u64::from(c.u8() % 4) * PAGE;
                let at = iova(&mut c);
                let size = match c.u8() {
                    0xff => c.u64(),
                    k => u64::from(k % 8) * PAGE,
                };
                let pages = 1 + u64::from(c.u8()) % MAX_PAGES;
                let with_fd = c.bool();
                let n = usize::from(c.u16());
                let fill = c.bytes(n);
                if with_fd {
                    fds.push(memfd(pages, fill));
                }
                let mut p = Vec::new();
                put32(&mut p, wire::DMA_MAP_SIZE as u32);
                put32(&mut p, if fl >> 31 != 0 { fl } else { fl & 3 });
                put64(&mut p, off);
                put64(&mut p, at);
                put64(&mut p, size);
                push(Command::DmaMap, p, fds);
            }
            Op::DmaUnmap => {
                let fl = c.u32();
                let at = iova(&mut c);
                let size = c.u64();
                let n = usize::from(c.u8());
                let extra = c.bytes(n);
                let mut p = Vec::new();
                put32(&mut p, (wire::DMA_UNMAP_SIZE + extra.len()) as u32);
                put32(&mut p, fl);
                put64(&mut p, at);
                put64(&mut p, size);
                p.extend_from_slice(extra);
                push(Command::DmaUnmap, p, fds);
            }
            Op::RegionRead => {
                let r = c.u8();
                let offset = c.u64();
                let count = c.u32();
                let count = if r & 0x80 != 0 {
                    count
                } else {
                    count % 0x1_0000
                };
                let p = wire::RegionRw {
                    offset,
                    region: u32::from(r & 0x7f),
                    count,
                }
                .encode();
                push(Command::RegionRead, p, fds);
            }
            Op::RegionWrite => {
                let r = c.u8();
                let offset = c.u64();
                let count = c.u8();
                let n = usize::from(c.u8());
                let mut p = wire::RegionRw {
                    offset,
                    region: u32::from(r),
                    count: u32::from(count),
                }
                .encode();
                p.extend_from_slice(c.bytes(n));
                push(Command::RegionWrite, p, fds);
            }
            Op::RegionWriteMulti => {
                let mut p = Vec::new();
                put64(&mut p, c.u64());
                for _ in 0..c.u8() % 5 {
                    let r = c.u8();
                    p.extend_from_slice(
                        &wire::RegionRw {
                            offset: c.u64(),
                            region: u32::from(r),
                            count: u32::from(c.u8()),
                        }
                        .encode(),
                    );
                    put64(&mut p, c.u64());
                }
                push(Command::RegionWriteMulti, p, fds);
            }
            Op::DeviceReset => push(Command::DeviceReset, Vec::new(), fds),
            Op::DeviceFeature => {
                let (argsz, fl) = (c.u32(), c.u32());
                let n = usize::from(c.u8());
                push(
                    Command::DeviceFeature,
                    wire::encode_feature(argsz, fl, c.bytes(n)),
                    fds,
                );
            }
            Op::MigState => {
                let mut d = Vec::new();
                put32(&mut d, c.u32());
                put32(&mut d, u32::MAX);
                let fl = wire::feature::SET | wire::feature::MIG_DEVICE_STATE;
                push(
                    Command::DeviceFeature,
                    wire::encode_feature(16, fl, &d),
                    fds,
                );
            }
            Op::MigDataRead => {
                let (argsz, size) = (c.u32(), c.u32());
                push(
                    Command::MigDataRead,
                    wire::encode_mig_data(argsz, size, &[]),
                    fds,
                );
            }
            Op::MigDataWrite => {
                let (argsz, size) = (c.u32(), c.u32());
                let n = usize::from(c.u16());
                push(
                    Command::MigDataWrite,
                    wire::encode_mig_data(argsz, size, c.bytes(n)),
                    fds,
                );
            }
            Op::LoggingStart => {
                let page = c.u64();
                let ranges: Vec<(u64, u64)> = (0..c.u8() % 3).map(|_| (c.u64(), c.u64())).collect();
                let d = wire::encode_dma_logging_control(page, &ranges);
                let fl = wire::feature::SET | wire::feature::DMA_LOGGING_START;
                let argsz = (wire::DEVICE_FEATURE_SIZE + d.len()) as u32;
                push(
                    Command::DeviceFeature,
                    wire::encode_feature(argsz, fl, &d),
                    fds,
                );
            }
            Op::LoggingReport => {
                let (at, len, page, argsz) = (c.u64(), c.u64(), c.u64(), c.u32());
                let d = wire::encode_dma_logging_report(at, len, page);
                let fl = wire::feature::GET | wire::feature::DMA_LOGGING_REPORT;
                push(
                    Command::DeviceFeature,
                    wire::encode_feature(argsz, fl, &d),
                    fds,
                );
            }
            Op::Doorbell => {
                let q = u16::from(c.u8());
                let v = c.u16();
                let off = dev.layout().doorbell_offset(q);
                push(
                    Command::RegionWrite,
                    region_write(0, off, &v.to_le_bytes()),
                    fds,
                );
            }
            Op::DriverSetup => {
                let (lo, packed, qsize) = (c.u32(), c.bool(), c.u16());
                let mut first = Some(fds);
                for p in driver_setup(dev, lo, packed, qsize) {
                    push(Command::RegionWrite, p, first.take().unwrap_or_default());
                }
            }
            Op::CommonWrite => {
                let reg = u64::from(c.u8()) % common::SIZE;
                let width = [1usize, 2, 4, 8][usize::from(c.u8() % 4)];
                let v = c.u64().to_le_bytes();
                let off = dev.layout().common.offset + reg;
                push(Command::RegionWrite, region_write(0, off, &v[..width]), fds);
            }
            Op::Message => {
                let cmd = c.u16();
                let fl = c.u32();
                let n = usize::from(c.u8());
                let payload = c.bytes(n);
                let mut b = Header {
                    id,
                    command: cmd,
                    size: (wire::HEADER_SIZE + payload.len()) as u32,
                    flags: fl,
                    error: 0,
                }
                .to_bytes()
                .to_vec();
                b.extend_from_slice(payload);
                // A reply-typed message gets no reply, but nor does it desync the stream.
                out.push(Out { bytes: b, fds });
                id = id.wrapping_add(1) % PROBE_VERSION;
            }
            Op::Raw => {
                let n = usize::from(c.u16());
                out.push(Out {
                    bytes: c.bytes(n).to_vec(),
                    fds,
                });
                raw = true;
            }
        }
    }
    (out, raw)
}

/// Sends all of `b` (descriptors with the first byte); false once the peer is gone.
fn send(sock: &UnixStream, b: &[u8], fds: &[BorrowedFd<'_>]) -> bool {
    let mut sent = 0;
    let mut fds = fds;
    while sent < b.len() || !fds.is_empty() {
        match send_with_fds(
            sock.as_fd(),
            &[IoSlice::new(&b[sent..])],
            fds,
            libc::MSG_NOSIGNAL,
        ) {
            Ok(0) if sent < b.len() => return false,
            Ok(n) => {
                sent += n;
                fds = &[];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
        if b.is_empty() {
            break;
        }
    }
    true
}

fn probes() -> Vec<u8> {
    let mut b = msg(
        PROBE_VERSION,
        Command::Version as u16,
        0,
        &wire::encode_version(0, 0, "{}"),
    );
    let rr = wire::RegionRw {
        offset: 0,
        region: REGION_CONFIG,
        count: 4,
    };
    b.extend(msg(PROBE_READ, Command::RegionRead as u16, 0, &rr.encode()));
    b
}

/// One reply: header and payload.
struct Reply {
    hdr: Header,
    payload: Vec<u8>,
}

/// Splits what the server sent into replies; every byte must belong to a whole reply.
fn split_replies(mut b: &[u8], may_be_cut: bool) -> Vec<Reply> {
    let mut v = Vec::new();
    while !b.is_empty() {
        if may_be_cut
            && (b.len() < wire::HEADER_SIZE
                || Header::parse(b[..wire::HEADER_SIZE].try_into().expect("16 bytes")).size
                    as usize
                    > b.len())
        {
            break;
        }
        assert!(
            b.len() >= wire::HEADER_SIZE,
            "{} stray bytes after the last reply",
            b.len()
        );
        let hdr = Header::parse(b[..wire::HEADER_SIZE].try_into().expect("16 bytes"));
        assert_eq!(hdr.msg_type(), flags::TYPE_REPLY, "server sent a non-reply");
        let size = hdr.size as usize;
        assert!(
            size >= wire::HEADER_SIZE && size <= b.len(),
            "reply size {size} with {} bytes left",
            b.len()
        );
        assert!(
            !hdr.is_error() || size == wire::HEADER_SIZE,
            "error reply with a payload"
        );
        v.push(Reply {
            hdr,
            payload: b[wire::HEADER_SIZE..size].to_vec(),
        });
        b = &b[size..];
    }
    v
}

/// Serves `msgs` (then `tail`) on a fresh connection; returns how it ended and the replies.
fn exchange(h: &Harness, msgs: Vec<Out>, tail: Vec<u8>) -> (ConnectionEnd, Vec<u8>, bool) {
    let (mut client, server_end) = UnixStream::pair().expect("socketpair");
    let writer_sock = client.try_clone().expect("dup");
    std::thread::scope(|s| {
        let srv = s.spawn(|| h.server.serve_stream(server_end));
        let wr = s.spawn(move || {
            for m in &msgs {
                let fds: Vec<BorrowedFd<'_>> = m.fds.iter().map(|f| f.as_fd()).collect();
                if !send(&writer_sock, &m.bytes, &fds) {
                    break;
                }
            }
            send(&writer_sock, &tail, &[]);
            let _ = writer_sock.shutdown(Shutdown::Write);
            // Our copies of the descriptors close here, after the server got its own.
            drop(msgs);
        });
        // When the server drops a connection with our bytes still unread, Linux reports
        // ECONNRESET to this side, possibly before replies already queued are read: the reply
        // stream is then incomplete (`reset`).
        let mut got = Vec::new();
        let mut reset = false;
        let mut buf = [0u8; 16384];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    reset = true;
                    break;
                }
                Err(e) => panic!("reading replies: {e}"),
            }
        }
        let end = match srv.join() {
            Ok(e) => e,
            Err(p) => std::panic::resume_unwind(p),
        };
        if let Err(p) = wr.join() {
            std::panic::resume_unwind(p);
        }
        if reset {
            assert!(
                matches!(end, ConnectionEnd::Failed(_)),
                "connection reset but the server saw {end:?}"
            );
        }
        (end, got, reset)
    })
}

/// The open descriptors of the kinds a session creates (memfds, eventfds, sockets), as
/// `fd -> target`. Others are the runtime's: libFuzzer's symbolizer pipes, for one.
fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
                .filter(|f| {
                    ["memfd:", "eventfd", "socket:"]
                        .iter()
                        .any(|k| f.contains(k))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let h = harness();
    let (msgs, raw) = decode(&h.dev, data);
    let (end, got, reset) = exchange(h, msgs, probes());
    // Whole replies only (a reset connection may have lost its tail).
    let replies = split_replies(&got, reset);
    let clean_close = matches!(end, ConnectionEnd::Closed);
    if !raw {
        assert!(
            matches!(
                end,
                ConnectionEnd::Closed
                    | ConnectionEnd::Failed(
                        sim_harness::vfio_user::server::ConnectionError::Version(_)
                    )
            ),
            "well-framed messages ended the connection: {end:?}"
        );
    }
    if clean_close && !raw {
        let n = replies.len();
        assert!(n >= 2, "the probes got no reply");
        let (v, r) = (&replies[n - 2], &replies[n - 1]);
        assert_eq!(
            (v.hdr.id, v.hdr.command),
            (PROBE_VERSION, Command::Version as u16)
        );
        assert_eq!(
            (r.hdr.id, r.hdr.command),
            (PROBE_READ, Command::RegionRead as u16)
        );
        if !r.hdr.is_error() {
            assert_eq!(
                r.payload.len(),
                wire::REGION_RW_SIZE + 4,
                "REGION_READ reply size"
            );
        }
    }
    check_cleanup(h);

    // A fresh connection negotiates and reads the vendor/device ID.
    let (end, got, _) = exchange(h, Vec::new(), probes());
    assert!(
        matches!(end, ConnectionEnd::Closed),
        "fresh connection: {end:?}"
    );
    let replies = split_replies(&got, false);
    assert_eq!(replies.len(), 2, "fresh connection: replies");
    assert!(!replies[0].hdr.is_error(), "fresh VERSION refused");
    assert!(!replies[1].hdr.is_error(), "fresh REGION_READ refused");
    let mut id = [0u8; 4];
    h.dev
        .region_read(REGION_CONFIG, 0, &mut id)
        .expect("config read");
    assert_eq!(&replies[1].payload[wire::REGION_RW_SIZE..], &id);
    check_cleanup(h);

    let n = h.runs.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 8 {
        let _ = h.fd_baseline.set(open_fds());
    } else if n.is_multiple_of(256) {
        if let Some(base) = h.fd_baseline.get() {
            let now = open_fds();
            assert!(
                now.len() <= base.len(),
                "descriptor leak: {now:?} open, {base:?} after the first runs"
            );
        }
    }
}

fn check_cleanup(h: &Harness) {
    assert_eq!(
        h.dev.mapping_count(),
        0,
        "DMA mappings left after the client"
    );
    let s = h.server.stats();
    assert_eq!(s.accepted, s.ended, "a connection not cleaned up");
    // The server contains a handler's panic (EIO, device failed): still a bug to find here
    // (libFuzzer's panic hook aborts before that; this catches it under any other runner).
    assert_eq!(s.handler_panics, 0, "a message's handler panicked");
    assert_eq!(
        h.server.migration_state(),
        sim_harness::vfio_user::MigState::Running,
        "migration state after the client"
    );
    assert!(!h.server.dirty_logging(), "dirty logging after the client");
}

/// Seed encoders: command sequences the generator writes as corpus files.
pub mod seed {
    use super::*;

    /// Encodes an opcode byte.
    pub fn op(w: &mut Writer, op: Op, no_reply: bool) {
        w.u8(op as u8 | if no_reply { 0x80 } else { 0 });
    }

    pub fn version(w: &mut Writer, caps: u8) {
        op(w, Op::Version, false);
        w.u16(0).u16(0).u8(caps);
    }

    /// DMA_MAP of `pages` pages of a memfd holding `fill` at iova slot `slot`.
    pub fn dma_map(w: &mut Writer, slot: u8, pages: u8, fill: &[u8]) {
        op(w, Op::DmaMap, false);
        w.u32(3).u8(0).u8(slot).u8(pages).u8(pages - 1).bool(true);
        w.u16(fill.len() as u16).bytes(fill);
    }

    pub fn driver_setup(w: &mut Writer, features_lo: u32, packed: bool, qsize: u16) {
        op(w, Op::DriverSetup, false);
        w.u32(features_lo).bool(packed).u16(qsize);
    }

    pub fn doorbell(w: &mut Writer, q: u8, v: u16, no_reply: bool) {
        op(w, Op::Doorbell, no_reply);
        w.u8(q).u16(v);
    }

    pub fn region_read(w: &mut Writer, region: u8, offset: u64, count: u32) {
        op(w, Op::RegionRead, false);
        w.u8(region).u64(offset).u32(count);
    }

    pub fn mig_state(w: &mut Writer, state: u32) {
        op(w, Op::MigState, false);
        w.u32(state);
    }

    pub fn set_irqs(w: &mut Writer, fl: u32, index: u32, start: u32, count: u32, fds: u8) {
        op(w, Op::SetIrqs, false);
        w.u32(fl).u32(index).u32(start).u32(count).u8(fds).u8(0);
    }
}
