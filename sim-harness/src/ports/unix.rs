//! A wire between two devices made of a pair of `SOCK_DGRAM` Unix sockets: one frame per
//! datagram, in one process or two.
//!
//! Convention for `unix:PATH`: the two ends are the socket files `PATH.a` and `PATH.b`. A
//! device binds `PATH.a` if no live end holds it, otherwise `PATH.b`, and sends every frame to
//! the other file. A socket file whose owner died (nothing bound: `connect` is refused) is
//! stale and reused. A third device on the same PATH is refused. The socket file is removed
//! when the end closes.
//!
//! Frames go out through a second, unbound socket connected to the other end, so that a full
//! receive queue on the other side (the kernel keeps only `net.unix.max_dgram_qlen`, 10 by
//! default) can be waited for: up to [`CONGESTION_WAIT`] per frame, then frames are dropped
//! (counted) until the other end drains again. Frames sent while the other end is absent are
//! dropped, like on an unplugged cable.

use crate::vfio_user::sock::poll_out;
use device::Port;
use parking_lot::Mutex;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long a transmit waits for room in the other end's receive queue.
pub const CONGESTION_WAIT: Duration = Duration::from_millis(20);

/// One end of a datagram link.
#[derive(Debug)]
pub struct UnixLinkPort {
    sock: UnixDatagram,
    tx: Mutex<Option<UnixDatagram>>,
    stalled: AtomicBool,
    own: PathBuf,
    peer: PathBuf,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
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
    /// Takes a free end of link `base` (see the module docs).
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
            return Ok(UnixLinkPort {
                sock,
                tx: Mutex::new(None),
                stalled: AtomicBool::new(false),
                own,
                peer,
                tx_frames: AtomicU64::new(0),
                tx_dropped: AtomicU64::new(0),
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

    /// Frames sent and frames dropped.
    pub fn tx_counts(&self) -> (u64, u64) {
        (
            self.tx_frames.load(Ordering::Relaxed),
            self.tx_dropped.load(Ordering::Relaxed),
        )
    }
}

impl UnixLinkPort {
    fn connect(&self) -> io::Result<UnixDatagram> {
        let s = UnixDatagram::unbound()?;
        s.connect(&self.peer)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut tx = self.tx.lock();
        let mut reconnected = false;
        loop {
            if tx.is_none() {
                *tx = Some(self.connect()?);
                reconnected = true;
            }
            let s = tx.as_ref().expect("connected above");
            match s.send(frame) {
                Ok(_) => {
                    self.stalled.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The other end's queue is full: wait a little for its reader, unless it
                    // already failed to keep up (then drop at once until it drains).
                    if self.stalled.load(Ordering::Relaxed)
                        || !poll_out(s.as_fd(), CONGESTION_WAIT)?
                    {
                        self.stalled.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                // The other end went away (and maybe came back on the same path): reconnect once.
                Err(e) if !reconnected => {
                    tracing::debug!(error = %e, "link peer gone; reconnecting");
                    *tx = None;
                }
                Err(e) => {
                    *tx = None;
                    return Err(e);
                }
            }
        }
    }
}

impl Port for UnixLinkPort {
    fn transmit(&self, frame: &[u8]) -> bool {
        match self.send(frame) {
            Ok(()) => {
                self.tx_frames.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(error = %e, peer = %self.peer.display(), "link dropped a frame");
                false
            }
        }
    }

    fn describe(&self) -> String {
        format!("unix:{}", self.own.display())
    }
}

impl Drop for UnixLinkPort {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.own);
    }
}
