//! `vdpa-lm-frontend`: a vhost-user frontend that takes a vDPA backend through the live-migration
//! sequence a VMM uses (QEMU's order, hw/virtio/vhost.c + vhost-user.c), so that DPDK's ifc vDPA
//! driver (drivers/vdpa/ifc/ifcvf_vdpa.c) programs the device's LM registers for real, and checks
//! what the hardware did:
//!
//! 1. GET_FEATURES, SET_OWNER, GET/SET_PROTOCOL_FEATURES (LOG_SHMFD), SET_FEATURES, SET_MEM_TABLE
//!    (one memfd region at a guest-physical address of our choosing), per ring SET_VRING_NUM / BASE
//!    / ADDR (VHOST_VRING_F_LOG, log_guest_addr = the used ring's GPA) / KICK / CALL / ENABLE;
//! 2. traffic: frames on the TX ring come back on the RX ring (the device's loopback port), each
//!    checked byte for byte;
//! 3. SET_LOG_BASE (a memfd holding the vhost bitmap, one bit per 4 KiB of GPA) and SET_FEATURES |
//!    LOG_ALL: the ifc driver maps the log at its IOVA and writes log base / end / enable in BAR4
//!    (ifcvf_enable_logging), or with `sw-live-migration=1` starts its relay;
//! 4. more traffic, recording every page the device must have written (RX buffers, used rings);
//! 5. GET_VRING_BASE on every ring: the driver stops the queues and reads the ring state from the
//!    LM block (ifcvf_hw_disable) and returns it.
//!
//! Checks: every page written while logging is set in the log, no bit is set outside the pages
//! the device may write, and each returned ring base equals the used index in our memory. Prints
//! `E2E-RESULT key=value` lines and exits 1 on a failed check, 2 when it could not run.
//! No dependencies but libc: it runs inside the e2e guest (Debian's userland over 9p).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

// vhost-user requests (docs/interop/vhost-user.rst in QEMU)
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 1;
const PROTOCOL_F_LOG_SHMFD: u64 = 1 << 1;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_LOG_ALL: u64 = 1 << 26;
const F_VERSION_1: u64 = 1 << 32;
const VRING_F_LOG: u32 = 1;

// split ring (virtio 1.2 2.7)
const QSIZE: u16 = 256;
const DESC_F_WRITE: u16 = 2;
/// struct virtio_net_hdr_mrg_rxbuf (VERSION_1: 12 bytes)
const NET_HDR: usize = 12;
const PAGE: u64 = 4096;

// our guest-physical layout: one memfd, offsets below, at GPA_BASE
const GPA_BASE: u64 = 0x4000_0000;
const MEM_SIZE: usize = 4 << 20;
const BUF_SIZE: u64 = 2048;
struct RingLayout {
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
}
const RX: RingLayout = RingLayout {
    desc: 0x0000,
    avail: 0x1000,
    used: 0x2000,
    bufs: 0x10_0000,
};
const TX: RingLayout = RingLayout {
    desc: 0x4000,
    avail: 0x5000,
    used: 0x6000,
    bufs: 0x20_0000,
};

fn die(code: i32, msg: impl std::fmt::Display) -> ! {
    println!("E2E-FAIL vdpa-lm-frontend: {msg}");
    std::process::exit(code)
}

fn memfd(name: &str, size: usize) -> OwnedFd {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: memfd_create with a valid name; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(n.as_ptr(), 0) };
    if fd < 0 {
        die(
            2,
            format!("memfd_create: {}", std::io::Error::last_os_error()),
        );
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) } != 0 {
        die(2, "ftruncate");
    }
    fd
}

/// A shared mapping of a memfd; all ring and buffer accesses go through volatile reads/writes.
struct Mem {
    base: *mut u8,
    size: usize,
}

impl Mem {
    fn map(fd: &OwnedFd, size: usize) -> Mem {
        // SAFETY: a new shared mapping of a memfd we sized to `size`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die(2, "mmap");
        }
        Mem {
            base: p as *mut u8,
            size,
        }
    }
    fn ptr(&self, off: u64, len: usize) -> *mut u8 {
        assert!(
            off as usize + len <= self.size,
            "access {off:#x}+{len} outside memory"
        );
        // SAFETY: checked to lie inside the mapping.
        unsafe { self.base.add(off as usize) }
    }
    fn w16(&self, off: u64, v: u16) {
        // SAFETY: in bounds (ptr), naturally aligned by the ring layout.
        unsafe { std::ptr::write_volatile(self.ptr(off, 2) as *mut u16, v.to_le()) }
    }
    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as w16.
        unsafe { std::ptr::write_volatile(self.ptr(off, 4) as *mut u32, v.to_le()) }
    }
    fn w64(&self, off: u64, v: u64) {
        // SAFETY: as w16.
        unsafe { std::ptr::write_volatile(self.ptr(off, 8) as *mut u64, v.to_le()) }
    }
    fn r16(&self, off: u64) -> u16 {
        // SAFETY: as w16.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr(off, 2) as *const u16) })
    }
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: as w16.
        u32::from_le(unsafe { std::ptr::read_volatile(self.ptr(off, 4) as *const u32) })
    }
    fn write(&self, off: u64, data: &[u8]) {
        // SAFETY: in bounds; the device does not touch buffers we have not made available.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(off, data.len()), data.len())
        }
    }
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: in bounds; the buffer was returned to us by the device.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(off, len), v.as_mut_ptr(), len) };
        v
    }
    fn va(&self, off: u64) -> u64 {
        self.base as u64 + off
    }
}

/// One split ring we drive (the driver side).
struct Ring {
    l: &'static RingLayout,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn new(l: &'static RingLayout) -> Ring {
        Ring {
            l,
            avail_idx: 0,
            used_seen: 0,
        }
    }
    fn buf(&self, slot: u16) -> u64 {
        self.l.bufs + u64::from(slot) * BUF_SIZE
    }
    /// Makes descriptor `slot` (the buffer of that slot) available with `len` and `flags`.
    fn post(&mut self, m: &Mem, slot: u16, len: u32, flags: u16) {
        let d = self.l.desc + u64::from(slot) * 16;
        m.w64(d, GPA_BASE + self.buf(slot));
        m.w32(d + 8, len);
        m.w16(d + 12, flags);
        m.w16(d + 14, 0);
        m.w16(
            self.l.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE),
            slot,
        );
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.w16(self.l.avail + 2, self.avail_idx);
    }
    fn used_idx(&self, m: &Mem) -> u16 {
        let v = m.r16(self.l.used + 2);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        v
    }
    /// The next used element (id, len), if the device published one.
    fn pop_used(&mut self, m: &Mem) -> Option<(u16, u32)> {
        if self.used_idx(m) == self.used_seen {
            return None;
        }
        let e = self.l.used + 4 + 8 * u64::from(self.used_seen % QSIZE);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((m.r32(e) as u16, m.r32(e + 4)))
    }
}

struct Conn {
    s: UnixStream,
}

impl Conn {
    fn send(&mut self, req: u32, payload: &[u8], fds: &[RawFd]) {
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&req.to_le_bytes());
        msg.extend_from_slice(&FLAG_VERSION.to_le_bytes());
        msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
        let mut cbuf = vec![0u8; space.max(1)];
        // SAFETY: msghdr is plain data.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        if !fds.is_empty() {
            mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            mh.msg_controllen = space;
            // SAFETY: the control buffer holds one cmsg with room for the fds.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&mh);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr() as *const u8,
                    libc::CMSG_DATA(c),
                    fds.len() * 4,
                );
            }
        }
        // SAFETY: a valid msghdr over live buffers.
        let n = unsafe { libc::sendmsg(self.s.as_raw_fd(), &mh, 0) };
        if n != msg.len() as isize {
            die(
                2,
                format!("vhost-user send {req}: {}", std::io::Error::last_os_error()),
            );
        }
    }
    fn reply(&mut self, req: u32) -> Vec<u8> {
        let mut hdr = [0u8; 12];
        self.s
            .read_exact(&mut hdr)
            .unwrap_or_else(|e| die(2, format!("vhost-user reply to {req}: {e}")));
        let r = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut p = vec![0u8; size];
        self.s
            .read_exact(&mut p)
            .unwrap_or_else(|e| die(2, format!("vhost-user reply body to {req}: {e}")));
        if r != req {
            die(2, format!("reply to request {r}, expected {req}"));
        }
        p
    }
    fn get_u64(&mut self, req: u32) -> u64 {
        self.send(req, &[], &[]);
        let p = self.reply(req);
        u64::from_le_bytes(
            p.get(..8)
                .unwrap_or_else(|| die(2, "short reply"))
                .try_into()
                .unwrap(),
        )
    }
    fn set_u64(&mut self, req: u32, v: u64) {
        self.send(req, &v.to_le_bytes(), &[]);
    }
    fn vring_state(&mut self, req: u32, index: u32, num: u32) {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        self.send(req, &p, &[]);
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2); owned at once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    if fd < 0 {
        die(2, "eventfd");
    }
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn kick(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
}

fn frame(seq: u32) -> Vec<u8> {
    let len = 60 + (seq as usize * 131) % 1400;
    let mut f = vec![0xff; 6]; // broadcast: the device's RX filter takes it
    f.extend_from_slice(&[0x02, 0, 0, 0xe2, 0xe0, 0xfd]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

struct Traffic<'a> {
    m: &'a Mem,
    rx: Ring,
    tx: Ring,
    tx_kick: OwnedFd,
    rx_kick: OwnedFd,
    next_seq: u32,
}

impl Traffic<'_> {
    /// Sends `n` frames and receives each back byte-exact; returns the GPA pages of the RX
    /// buffers the device wrote.
    fn round(&mut self, n: u32) -> Vec<u64> {
        let mut pages = Vec::new();
        let mut expect = std::collections::VecDeque::new();
        let mut sent = 0u32;
        let mut got = 0u32;
        let t0 = Instant::now();
        while got < n {
            // keep at most 32 frames in flight
            let mut posted = false;
            while sent < n && sent - got < 32 {
                let f = frame(self.next_seq);
                self.next_seq += 1;
                let slot = self.tx.avail_idx % QSIZE;
                let mut data = vec![0u8; NET_HDR];
                data.extend_from_slice(&f);
                self.m.write(self.tx.buf(slot), &data);
                self.tx.post(self.m, slot, data.len() as u32, 0);
                expect.push_back(f);
                sent += 1;
                posted = true;
            }
            if posted {
                kick(&self.tx_kick);
            }
            while self.tx.pop_used(self.m).is_some() {}
            while let Some((id, len)) = self.rx.pop_used(self.m) {
                let off = self.rx.buf(id);
                let data = self.m.read(off, len as usize);
                let want = expect.pop_front().unwrap_or_default();
                if len as usize != NET_HDR + want.len() || data[NET_HDR..] != want[..] {
                    die(
                        1,
                        format!("RX frame {got} differs from what was sent ({len} bytes)"),
                    );
                }
                let first = (GPA_BASE + off) / PAGE;
                let last = (GPA_BASE + off + u64::from(len) - 1) / PAGE;
                pages.extend(first..=last);
                // give the buffer back
                self.rx.post(self.m, id, BUF_SIZE as u32, DESC_F_WRITE);
                kick(&self.rx_kick);
                got += 1;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                die(
                    1,
                    format!("only {got} of {n} frames came back in 60 s (sent {sent})"),
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        pages
    }
}

fn main() {
    let mut socket = String::from("/tmp/vdpa-s0");
    let mut frames = 2000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().unwrap_or_default(),
            "--frames" => {
                frames = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| die(2, "--frames takes a number"))
            }
            _ => die(
                2,
                format!("unknown argument {a} (usage: --socket PATH [--frames N])"),
            ),
        }
    }
    let s = UnixStream::connect(&socket).unwrap_or_else(|e| die(2, format!("{socket}: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut c = Conn { s };
    let mfd = memfd("vdpa-lm-frontend-mem", MEM_SIZE);
    let m = Mem::map(&mfd, MEM_SIZE);

    // 1. negotiation and setup, in QEMU's order
    let dev_features = c.get_u64(GET_FEATURES);
    c.send(SET_OWNER, &[], &[]);
    if dev_features & F_PROTOCOL_FEATURES == 0 {
        die(2, "the backend offers no protocol features");
    }
    let pf = c.get_u64(GET_PROTOCOL_FEATURES);
    if pf & PROTOCOL_F_LOG_SHMFD == 0 {
        die(
            2,
            "the backend cannot take a shared-memory log (no LOG_SHMFD)",
        );
    }
    c.set_u64(SET_PROTOCOL_FEATURES, PROTOCOL_F_LOG_SHMFD);
    if dev_features & F_LOG_ALL == 0 {
        die(2, "the backend does not offer VHOST_F_LOG_ALL");
    }
    let features = dev_features & (F_VERSION_1 | F_PROTOCOL_FEATURES);
    if features & F_VERSION_1 == 0 {
        die(2, "no VIRTIO_F_VERSION_1");
    }
    c.set_u64(SET_FEATURES, features);
    let mut mt = Vec::new();
    mt.extend_from_slice(&1u32.to_le_bytes());
    mt.extend_from_slice(&0u32.to_le_bytes());
    mt.extend_from_slice(&GPA_BASE.to_le_bytes());
    mt.extend_from_slice(&(MEM_SIZE as u64).to_le_bytes());
    mt.extend_from_slice(&m.va(0).to_le_bytes());
    mt.extend_from_slice(&0u64.to_le_bytes());
    c.send(SET_MEM_TABLE, &mt, &[mfd.as_raw_fd()]);
    let (mut rx, tx) = (Ring::new(&RX), Ring::new(&TX));
    let kicks = [eventfd(), eventfd()];
    let calls = [eventfd(), eventfd()];
    for (q, l) in [(0u32, &RX), (1u32, &TX)] {
        c.vring_state(SET_VRING_NUM, q, u32::from(QSIZE));
        c.vring_state(SET_VRING_BASE, q, 0);
        let mut a = Vec::new();
        a.extend_from_slice(&q.to_le_bytes());
        a.extend_from_slice(&VRING_F_LOG.to_le_bytes());
        a.extend_from_slice(&m.va(l.desc).to_le_bytes());
        a.extend_from_slice(&m.va(l.used).to_le_bytes());
        a.extend_from_slice(&m.va(l.avail).to_le_bytes());
        a.extend_from_slice(&(GPA_BASE + l.used).to_le_bytes());
        c.send(SET_VRING_ADDR, &a, &[]);
        c.send(
            SET_VRING_KICK,
            &u64::from(q).to_le_bytes(),
            &[kicks[q as usize].as_raw_fd()],
        );
        c.send(
            SET_VRING_CALL,
            &u64::from(q).to_le_bytes(),
            &[calls[q as usize].as_raw_fd()],
        );
    }
    // RX buffers before the rings are enabled
    for slot in 0..QSIZE {
        rx.post(&m, slot, BUF_SIZE as u32, DESC_F_WRITE);
    }
    for q in 0..2 {
        c.vring_state(SET_VRING_ENABLE, q, 1);
    }
    // a round trip so that everything above was processed (the driver starts the device then)
    let _ = c.get_u64(GET_FEATURES);
    std::thread::sleep(Duration::from_millis(500));
    let [rx_kick, tx_kick] = kicks;
    kick(&rx_kick);

    // 2. traffic without logging
    let mut t = Traffic {
        m: &m,
        rx,
        tx,
        tx_kick,
        rx_kick,
        next_seq: 0,
    };
    t.round(frames);
    println!("E2E-RESULT lm_frames_before_logging={frames}");

    // 3. logging on
    let log_pages = (GPA_BASE + MEM_SIZE as u64) / PAGE;
    let log_size = (log_pages / 8).next_multiple_of(PAGE) as usize;
    let lfd = memfd("vdpa-lm-frontend-log", log_size);
    let log = Mem::map(&lfd, log_size);
    let mut lb = (log_size as u64).to_le_bytes().to_vec();
    lb.extend_from_slice(&0u64.to_le_bytes());
    c.send(SET_LOG_BASE, &lb, &[lfd.as_raw_fd()]);
    let _ = c.reply(SET_LOG_BASE); // DPDK answers with a header (vhost_user_set_log_base)
    c.set_u64(SET_FEATURES, features | F_LOG_ALL);
    let _ = c.get_u64(GET_FEATURES);
    std::thread::sleep(Duration::from_millis(500));

    // 4. traffic while logging
    let mut written = t.round(frames);
    let used_pages = [(GPA_BASE + RX.used) / PAGE, (GPA_BASE + TX.used) / PAGE];
    written.sort_unstable();
    written.dedup();

    // 5. stop: GET_VRING_BASE on every ring
    let mut bases = [0u16; 2];
    for q in 0..2u32 {
        c.vring_state(GET_VRING_BASE, q, 0);
        let p = c.reply(GET_VRING_BASE);
        bases[q as usize] = u32::from_le_bytes(p[4..8].try_into().unwrap()) as u16;
    }
    let used = [t.rx.used_idx(&m), t.tx.used_idx(&m)];
    println!(
        "E2E-RESULT lm_ring_base_rx={} lm_ring_base_tx={} lm_used_rx={} lm_used_tx={}",
        bases[0], bases[1], used[0], used[1]
    );

    // checks
    let bit = |pfn: u64| log.read(pfn / 8, 1)[0] & (1 << (pfn % 8)) != 0;
    let missing: Vec<u64> = written.iter().copied().filter(|&p| !bit(p)).collect();
    let allowed: std::collections::HashSet<u64> =
        written.iter().copied().chain(used_pages).collect();
    let set: Vec<u64> = (0..log_pages).filter(|&p| bit(p)).collect();
    let extra: Vec<u64> = set
        .iter()
        .copied()
        .filter(|p| !allowed.contains(p))
        .collect();
    println!(
        "E2E-RESULT lm_log_bits={} lm_pages_written={} lm_log_missing={} lm_log_extra={} \
         lm_used_rings_logged={}",
        set.len(),
        written.len(),
        missing.len(),
        extra.len(),
        used_pages.iter().filter(|&&p| bit(p)).count()
    );
    let mut fails = Vec::new();
    if !missing.is_empty() {
        fails.push(format!(
            "{} written pages not in the dirty log (first GPA {:#x})",
            missing.len(),
            missing[0] * PAGE
        ));
    }
    if !extra.is_empty() {
        fails.push(format!(
            "{} log bits outside the pages the device wrote (first GPA {:#x})",
            extra.len(),
            extra[0] * PAGE
        ));
    }
    for q in 0..2 {
        if bases[q] != used[q] {
            fails.push(format!(
                "ring {q}: GET_VRING_BASE returned {} but the used index in memory is {}",
                bases[q], used[q]
            ));
        }
    }
    if fails.is_empty() {
        println!("E2E-RESULT lm_check=pass");
    } else {
        println!("E2E-RESULT lm_check=fail");
        die(1, fails.join("; "));
    }
    let _ = std::io::stdout().flush();
}
