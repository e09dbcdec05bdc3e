//! A wire between two devices made of a pair of `SOCK_DGRAM` Unix sockets: one frame per
//! datagram, in one process or two.
//!
//! Convention for `unix:PATH`: the two ends are the socket files `PATH.a` and `PATH.b`. A
//! device binds `PATH.a` if no live end holds it, otherwise `PATH.b`, and sends every frame to
//! the other file. A socket file whose owner died (nothing bound: `connect` is refused) is
//! stale and reused. A third device on the same PATH is refused. The socket file is removed
//! when the end closes.
//!
//! Flow control. The other end's receive queue is short (the kernel keeps
//! `net.unix.max_dgram_qlen` datagrams, 10 by default) and its reader stops reading while its
//! device's receive FIFO is full. So frames go out through an outbox drained by a writer thread
//! of their own, which waits for the socket as long as the other end is alive and reading; the
//! device's TX stops taking chains while the outbox holds [`OUTBOX_HIGH`] frames
//! ([`device::Port::ready`]) and goes on when it is down to [`OUTBOX_LOW`]: the sending guest's
//! TX ring fills and its stack slows down, as on a wire with PAUSE frames, and no frame is
//! lost on the way. Frames are dropped (counted: [`device::Port::lost`]) only when the other
//! end is absent (an unplugged cable), or takes nothing for [`STALL_TIMEOUT`] (then each frame
//! is dropped at once until the other end reads again), or when a single chain overflows the
//! outbox past [`OUTBOX_MAX`].

use crate::vfio_user::sock::poll_out;
use device::{BufPool, Port, ReadyWaker, RoomSignal};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the writer waits for room in the other end's receive queue before it declares the
/// other end stalled and drops.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames waiting in the outbox at which the device stops taking TX chains.
pub const OUTBOX_HIGH: usize = 256;
/// Frames waiting in the outbox at which a device that stopped is woken.
pub const OUTBOX_LOW: usize = 64;
/// Most frames the outbox holds: a chain taken below [`OUTBOX_HIGH`] may still add a GSO
/// frame's worth of segments; past this they are dropped.
pub const OUTBOX_MAX: usize = 8192;

/// One end of a datagram link.
#[derive(Debug)]
pub struct UnixLinkPort {
    sock: UnixDatagram,
    out: Arc<Outbox>,
    own: PathBuf,
    peer: PathBuf,
}

/// Frames the device handed over, waiting for the writer thread.
struct Outbox {
    frames: Mutex<VecDeque<Vec<u8>>>,
    /// Signalled when a frame arrives or the port closes.
    more: Condvar,
    len: AtomicUsize,
    spare: BufPool,
    /// The device found the outbox full ([`Port::ready`]) and waits for OUTBOX_LOW.
    device: RoomSignal,
    closing: AtomicBool,
    tx_frames: AtomicU64,
    tx_lost: AtomicU64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("tx_frames", &self.tx_frames.load(Ordering::Relaxed))
            .field("tx_lost", &self.tx_lost.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(base.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether a socket file at `p` has a live owner.
fn live(p: &Path) -> bool {
    UnixDatagram::unbound().and_then(|s| s.connect(p)).is_ok()
}

impl UnixLinkPort {
    /// Takes a free end of link `base` (see the module docs) and starts its writer thread.
    pub fn open(base: &Path) -> io::Result<Self> {
        for (own, peer) in [(".a", ".b"), (".b", ".a")] {
            let own = with_suffix(base, own);
            let peer = with_suffix(base, peer);
            let sock = match UnixDatagram::bind(&own) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    if live(&own) {
                        continue;
                    }
                    tracing::info!(path = %own.display(), "removing stale link socket");
                    std::fs::remove_file(&own)?;
                    UnixDatagram::bind(&own)?
                }
                Err(e) => return Err(e),
            };
            sock.set_nonblocking(true)?;
            tracing::info!(own = %own.display(), peer = %peer.display(), "unix link end bound");
            let out = Arc::new(Outbox {
                frames: Mutex::new(VecDeque::new()),
                more: Condvar::new(),
                len: AtomicUsize::new(0),
                spare: BufPool::new(OUTBOX_HIGH),
                device: RoomSignal::default(),
                closing: AtomicBool::new(false),
                tx_frames: AtomicU64::new(0),
                tx_lost: AtomicU64::new(0),
            });
            let writer = Writer {
                out: out.clone(),
                peer: peer.clone(),
                tx: None,
                stalled: false,
            };
            std::thread::Builder::new()
                .name("unix-link-tx".into())
                .spawn(move || writer.run())?;
            return Ok(UnixLinkPort {
                sock,
                out,
                own,
                peer,
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("both ends of link {} are in use", base.display()),
        ))
    }

    /// The socket file this end is bound to.
    pub fn own_path(&self) -> &Path {
        &self.own
    }

    /// The socket file frames are sent to.
    pub fn peer_path(&self) -> &Path {
        &self.peer
    }

    /// A second handle on the socket for the reader thread.
    pub fn reader(&self) -> io::Result<UnixDatagram> {
        self.sock.try_clone()
    }

    /// Frames sent and frames lost (taken from the device, then dropped).
    pub fn tx_counts(&self) -> (u64, u64) {
        (
            self.out.tx_frames.load(Ordering::Relaxed),
            self.out.tx_lost.load(Ordering::Relaxed),
        )
    }

    /// Frames waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.out.len.load(Ordering::Acquire)
    }
}

/// The writer thread: sends the outbox's frames to the other end, in order.
struct Writer {
    out: Arc<Outbox>,
    peer: PathBuf,
    tx: Option<UnixDatagram>,
    /// The other end took nothing for STALL_TIMEOUT: drop at once until a send succeeds.
    stalled: bool,
}

impl Writer {
    fn run(mut self) {
        loop {
            let frame = {
                let mut q = self.out.frames.lock();
                loop {
                    if let Some(f) = q.pop_front() {
                        break f;
                    }
                    if self.out.closing.load(Ordering::Acquire) {
                        return;
                    }
                    self.out.more.wait(&mut q);
                }
            };
            match self.send(&frame) {
                Ok(()) => self.out.tx_frames.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::trace!(error = %e, peer = %self.peer.display(), "link dropped a frame");
                    self.out.tx_lost.fetch_add(1, Ordering::Relaxed)
                }
            };
            self.out.spare.put(frame);
            let left = self.out.len.fetch_sub(1, Ordering::AcqRel) - 1;
            if left <= OUTBOX_LOW {
                self.out.device.room();
            }
        }
    }

    fn connect(&self) -> io::Result<UnixDatagram> {
        let s = UnixDatagram::unbound()?;
        s.connect(&self.peer)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut reconnected = false;
        loop {
            if self.tx.is_none() {
                self.tx = Some(self.connect()?);
                reconnected = true;
            }
            let s = self.tx.as_ref().expect("connected above");
            match s.send(frame) {
                Ok(_) => {
                    self.stalled = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The other end's queue is full: wait for its reader (it stops while its
                    // device cannot take frames), unless it already failed to keep up.
                    if self.stalled || !poll_out(s.as_fd(), STALL_TIMEOUT)? {
                        if !self.stalled {
                            tracing::warn!(peer = %self.peer.display(), "link peer takes no frames: dropping until it does");
                        }
                        self.stalled = true;
                        return Err(e);
                    }
                }
                // The other end went away (and maybe came back on the same path): reconnect once.
                Err(e) if !reconnected => {
                    tracing::debug!(error = %e, "link peer gone; reconnecting");
                    self.tx = None;
                }
                Err(e) => {
                    self.tx = None;
                    return Err(e);
                }
            }
        }
    }
}

impl Port for UnixLinkPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        let out = &self.out;
        if out.len.load(Ordering::Acquire) >= OUTBOX_MAX {
            out.tx_lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let buf = out.spare.copy_of(frame);
        out.len.fetch_add(1, Ordering::AcqRel);
        out.frames.lock().push_back(buf);
        out.more.notify_one();
        true
    }

    fn ready(&self) -> bool {
        let out = &self.out;
        out.device
            .ready_or_want(|| out.len.load(Ordering::SeqCst) >= OUTBOX_HIGH)
    }

    fn set_ready_waker(&self, waker: Option<ReadyWaker>) {
        self.out.device.set_waker(waker);
    }

    fn lost(&self) -> u64 {
        self.out.tx_lost.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("unix:{}", self.own.display())
    }
}

impl Drop for UnixLinkPort {
    fn drop(&mut self) {
        // The writer sends what is queued, then ends (not joined: the last reference to the
        // device, and so to this port, may be dropped on the writer thread itself).
        self.out.closing.store(true, Ordering::Release);
        self.out.device.set_waker(None);
        let _q = self.out.frames.lock();
        self.out.more.notify_all();
        drop(_q);
        let _ = std::fs::remove_file(&self.own);
    }
}
