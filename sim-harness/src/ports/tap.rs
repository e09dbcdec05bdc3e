//! A host TAP interface as the NIC's wire: frames the device transmits are written to the TAP
//! (the host kernel receives them on IFNAME), frames the host sends out of IFNAME are read
//! and delivered to the device.
//!
//! Opening needs CAP_NET_ADMIN (root): `/dev/net/tun`, `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (creates IFNAME if absent, attaches to it if it exists),
//! `TUNSETVNETHDRSZ` 12 (struct virtio_net_hdr_v1 before every frame, both ways), `TUNSETOFFLOAD`
//! 0 (the kernel completes checksums and segments before handing frames to the reader), then
//! `SIOCSIFFLAGS` with `IFF_UP`. That is how QEMU's tap backend opens its TAP (QEMU
//! net/tap-linux.c `tap_open`, `tap_fd_set_vnet_hdr_len`, `tap_fd_set_offload`). Frames the
//! device sends go out with their header: GSO frames and partial checksums unchanged (the
//! kernel finishes them, as for QEMU), wire frames behind a zero header. A TAP created here is
//! not persistent: it disappears when the server exits.
//!
//! What the reader gets follows the device's driver: once it negotiated (or switched with
//! CTRL_GUEST_OFFLOADS_SET) GUEST_CSUM / GUEST_TSO4 / GUEST_TSO6 / GUEST_ECN, the device calls
//! [`Port::set_rx_offloads`] and `TUNSETOFFLOAD` asks for TUN_F_CSUM / TSO4 / TSO6 / TSO_ECN,
//! so the kernel hands on partial checksums and 64 KiB GSO frames with their header, as
//! QEMU's virtio-net does for its TAP (hw/net/virtio-net.c `virtio_net_apply_guest_offloads`).

use device::net::offload::hdr::{NetHdr, NET_HDR_LEN};
use device::{Port, PortOffloads};
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// One end of a TAP interface.
#[derive(Debug)]
pub struct TapPort {
    file: File,
    name: String,
    offloads: PortOffloads,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?} (1..15 bytes, no '/', NUL or spaces)"),
        ));
    }
    // SAFETY: ifreq is plain data (a name array and a union of plain data); all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { MaybeUninit::zeroed().assume_init() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

impl TapPort {
    /// Opens (creating if needed) TAP `name` and brings it up.
    pub fn open(name: &str) -> io::Result<Self> {
        let mut ifr = ifreq_for(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `ifr` is, for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which `hdr_len` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        set_offload(&file, 0)?;
        // SAFETY: the kernel wrote a NUL-terminated name (at most IFNAMSIZ - 1 bytes) back.
        let actual = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        bring_up(&actual)?;
        tracing::info!(tap = %actual, "TAP interface attached and up");
        Ok(TapPort {
            file,
            name: actual,
            offloads: PortOffloads::ALL,
            tx_frames: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
        })
    }

    /// The port takes no offloads (`tap:IFNAME:no-offloads`): the device completes checksums
    /// and segments GSO frames itself, and the TAP gets only wire frames behind a zero header,
    /// as a physical link would (a packet socket on the interface then sees final checksums);
    /// the other way `TUNSETOFFLOAD` stays 0 whatever the driver takes, so the kernel hands
    /// the reader complete frames too.
    pub fn without_offloads(mut self) -> Self {
        self.offloads = PortOffloads::NONE;
        self
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second handle on the TAP queue for the reader thread.
    pub fn reader(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Frames written to the TAP and frames dropped (TAP queue full or down).
    pub fn tx_counts(&self) -> (u64, u64) {
        (
            self.tx_frames.load(Ordering::Relaxed),
            self.tx_dropped.load(Ordering::Relaxed),
        )
    }
}

/// TUN_F_* for what the driver takes (TSO needs TUN_F_CSUM: the kernel refuses it alone).
fn tun_offload_flags(o: PortOffloads) -> libc::c_uint {
    if !o.csum {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if o.tso4 {
        f |= libc::TUN_F_TSO4;
    }
    if o.tso6 {
        f |= libc::TUN_F_TSO6;
    }
    if o.ecn && (o.tso4 || o.tso6) {
        f |= libc::TUN_F_TSO_ECN;
    }
    f
}

/// TUNSETOFFLOAD: which offloads (TUN_F_*) the reader takes; the argument is the value itself.
fn set_offload(file: &File, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bring_up(name: &str) -> io::Result<()> {
    // SAFETY: socket() has no memory-safety preconditions.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() just returned `s`; the OwnedFd is its only owner (closed on return).
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut ifr = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS fills the flags of one struct ifreq, which `ifr` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS set the union's flags member, which is therefore the one to read.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads one struct ifreq, which `ifr` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TapPort {
    /// One write = one frame behind its virtio-net header (IFF_NO_PI: no packet-information
    /// prefix). Non-blocking: a full TAP queue drops the frame like a congested wire, the
    /// device lock is never held waiting for the host.
    fn write(&self, hdr: &NetHdr, frame: &[u8]) -> bool {
        let h = NetHdr {
            num_buffers: 0,
            ..*hdr
        }
        .to_bytes();
        let iov = [IoSlice::new(&h), IoSlice::new(frame)];
        match (&self.file).write_vectored(&iov) {
            Ok(n) if n == h.len() + frame.len() => {
                self.tx_frames.fetch_add(1, Ordering::Relaxed);
                true
            }
            r => {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(result = ?r, tap = %self.name, "TAP write dropped a frame");
                false
            }
        }
    }
}

impl Port for TapPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        self.write(&NetHdr::default(), frame)
    }

    /// The kernel takes GSO frames and partial checksums from a TAP writer whatever
    /// TUNSETOFFLOAD says (that governs what it hands the reader): all of them, unless the
    /// port was opened [`TapPort::without_offloads`].
    fn offloads(&self) -> PortOffloads {
        self.offloads
    }

    fn transmit_with_hdr(&self, hdr: &NetHdr, frame: &[u8]) -> bool {
        self.write(hdr, frame)
    }

    fn set_rx_offloads(&self, o: PortOffloads) {
        if self.offloads == PortOffloads::NONE {
            // `:no-offloads`: wire frames both ways, TUNSETOFFLOAD stays 0 whatever the driver takes
            tracing::debug!(tap = %self.name, "no-offloads TAP: receive offloads stay off");
            return;
        }
        let flags = tun_offload_flags(o);
        match set_offload(&self.file, flags) {
            Ok(()) => {
                tracing::info!(tap = %self.name, flags = format_args!("{flags:#x}"), "TUNSETOFFLOAD: receive offloads follow the driver")
            }
            // The reader then gets wire frames, which is always correct.
            Err(e) => tracing::warn!(tap = %self.name, error = %e, "TUNSETOFFLOAD failed"),
        }
    }

    fn describe(&self) -> String {
        if self.offloads == PortOffloads::NONE {
            format!("tap:{}:no-offloads", self.name)
        } else {
            format!("tap:{}", self.name)
        }
    }
}
