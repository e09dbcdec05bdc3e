//! Where a served device's frames go: `--port loopback | null | gen:SIZE | tap:IFNAME[:no-offloads]
//! | unix:PATH`.
//!
//! Frames the device transmits reach the port through [`device::Port::transmit`] (called with
//! the device lock held, so every port is non-blocking and drops when its wire is congested).
//! Frames arriving on the wire are read by a reader thread, pushed into the device's
//! [`device::RxInbox`] and delivered with [`device::Device::service_rx`].

pub mod gen;
pub mod tap;
pub mod unix;

use crate::vfio_user::sock::{Ready, Stop};
use device::net::offload::hdr::{NetHdr, NET_HDR_LEN};
use device::{Device, NullPort, Port};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use tap::TapPort;
pub use unix::UnixLinkPort;

/// A `--port` value.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PortSpec {
    /// Transmitted frames come back on the device's own receive side.
    #[default]
    Loopback,
    /// Transmitted frames are counted and discarded; nothing is received (the device's
    /// `NullPort`: the TX path alone, as `vdpa-emu bench datapath --dir tx` measures it).
    Null,
    /// A generator thread fills the receive side with frames of this many bytes as fast as
    /// the device delivers them; transmitted frames are discarded ([`gen`]).
    Gen(usize),
    /// A host TAP interface (created if absent; needs root). It takes GSO frames and partial
    /// checksums whole (the kernel finishes them).
    Tap(String),
    /// A host TAP interface that takes no offloads (`tap:IFNAME:no-offloads`): the device
    /// completes checksums and segments itself; the TAP sees wire frames.
    TapNoOffloads(String),
    /// One end of a datagram link at `PATH.a` / `PATH.b` (see [`unix`]).
    Unix(PathBuf),
}

/// Why a port could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "port spec {0:?}: expected loopback, null, gen:SIZE (60..=1514), tap:IFNAME, tap:IFNAME:no-offloads or unix:PATH"
    )]
    Spec(String),
    #[error("TAP {name}: {source} (needs root / CAP_NET_ADMIN and /dev/net/tun)")]
    Tap {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("unix link {path}: {source}")]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("port reader thread: {0}")]
    Thread(#[source] io::Error),
}

impl FromStr for PortSpec {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, PortError> {
        match s.split_once(':') {
            None if s == "loopback" => Ok(PortSpec::Loopback),
            None if s == "null" => Ok(PortSpec::Null),
            Some(("gen", size)) => gen::parse_size(size)
                .map(PortSpec::Gen)
                .ok_or_else(|| PortError::Spec(s.into())),
            // ':' is not valid in an interface name (Linux dev_valid_name), so it can separate
            Some(("tap", rest)) => match rest.split_once(':') {
                None if !rest.is_empty() => Ok(PortSpec::Tap(rest.into())),
                Some((name, "no-offloads")) if !name.is_empty() => {
                    Ok(PortSpec::TapNoOffloads(name.into()))
                }
                _ => Err(PortError::Spec(s.into())),
            },
            Some(("unix", path)) if !path.is_empty() => Ok(PortSpec::Unix(path.into())),
            _ => Err(PortError::Spec(s.into())),
        }
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSpec::Loopback => write!(f, "loopback"),
            PortSpec::Null => write!(f, "null"),
            PortSpec::Gen(n) => write!(f, "gen:{n}"),
            PortSpec::Tap(n) => write!(f, "tap:{n}"),
            PortSpec::TapNoOffloads(n) => write!(f, "tap:{n}:no-offloads"),
            PortSpec::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A port attached to a device, with its reader thread. Dropping it stops the reader and
/// disconnects the device from the wire.
pub struct PortHandle {
    device: Arc<Device>,
    port: Option<Arc<dyn Port>>,
    stop: Arc<Stop>,
    reader: Option<JoinHandle<()>>,
    describe: String,
}

impl std::fmt::Debug for PortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortHandle")
            .field("port", &self.describe)
            .finish_non_exhaustive()
    }
}

impl PortHandle {
    /// The port (tests transmit through it directly); `None` for loopback.
    pub fn port(&self) -> Option<&Arc<dyn Port>> {
        self.port.as_ref()
    }

    /// What it is, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

impl Drop for PortHandle {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        if self.port.is_some() {
            self.device.set_port(Arc::new(NullPort));
        }
    }
}

/// Connects `device` to the wire `spec` describes.
pub fn attach(spec: &PortSpec, device: &Arc<Device>) -> Result<PortHandle, PortError> {
    let stop = Arc::new(Stop::new().map_err(PortError::Thread)?);
    let (port, reader): (Option<Arc<dyn Port>>, Option<JoinHandle<()>>) = match spec {
        PortSpec::Loopback => {
            device.set_loopback();
            (None, None)
        }
        PortSpec::Null => {
            let port: Arc<dyn Port> = Arc::new(NullPort);
            (Some(port), None)
        }
        PortSpec::Gen(size) => {
            let port: Arc<dyn Port> = Arc::new(NullPort);
            let (dev, st, size) = (device.clone(), stop.clone(), *size);
            let t = spawn_reader("port-gen".into(), device, &stop, move || {
                gen::run(&dev, size, &st)
            })?;
            (Some(port), Some(t))
        }
        PortSpec::Tap(name) | PortSpec::TapNoOffloads(name) => {
            let mut tap = TapPort::open(name).map_err(|source| PortError::Tap {
                name: name.clone(),
                source,
            })?;
            if matches!(spec, PortSpec::TapNoOffloads(_)) {
                tap = tap.without_offloads();
            }
            let file = tap.reader().map_err(|source| PortError::Tap {
                name: name.clone(),
                source,
            })?;
            let (dev, st) = (device.clone(), stop.clone());
            let t = spawn_reader(format!("tap-{}", tap.name()), device, &stop, move || {
                reader_loop(&dev, file.as_fd(), &st, NET_HDR_LEN, |b| (&file).read(b))
            })?;
            let port: Arc<dyn Port> = Arc::new(tap);
            (Some(port), Some(t))
        }
        PortSpec::Unix(path) => {
            let link = UnixLinkPort::open(path).map_err(|source| PortError::Unix {
                path: path.clone(),
                source,
            })?;
            let sock = link.reader().map_err(|source| PortError::Unix {
                path: path.clone(),
                source,
            })?;
            let (dev, st) = (device.clone(), stop.clone());
            let t = spawn_reader("unix-link".into(), device, &stop, move || {
                reader_loop(&dev, sock.as_fd(), &st, 0, |b| sock.recv(b))
            })?;
            let port: Arc<dyn Port> = Arc::new(link);
            (Some(port), Some(t))
        }
    };
    if let Some(p) = &port {
        device.set_port(p.clone());
    }
    let describe = port
        .as_ref()
        .map_or_else(|| "loopback".to_string(), |p| p.describe());
    tracing::info!(port = %describe, "port attached");
    Ok(PortHandle {
        device: device.clone(),
        port,
        stop,
        reader,
        describe,
    })
}

/// How long a port's reader thread waits after a panic before it reads on.
const PANIC_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Starts a port's reader thread, which runs `body` until it returns (at `stop`, or when its
/// wire failed: logged there). A panic in `body` does not end the thread: without it the
/// port would receive nothing more, in silence. The device is failed instead
/// ([`Device::fail_internal`]: DEVICE_NEEDS_RESET with an `internal_error` fault, as for a
/// panic in its datapath, so the driver sees it and resets), and after [`PANIC_PAUSE`]
/// `body` runs again, reading on from its socket or TAP (the frame it was handling is lost,
/// as the fault says).
///
/// `AssertUnwindSafe`: a reader keeps nothing across frames but its wire's fd and buffer,
/// and what it shares with the device (the inbox, the device lock) is behind `parking_lot`
/// locks, which do not poison and were let go as it unwound.
fn spawn_reader(
    name: String,
    device: &Arc<Device>,
    stop: &Arc<Stop>,
    mut body: impl FnMut() + Send + 'static,
) -> Result<JoinHandle<()>, PortError> {
    let (dev, stop) = (device.clone(), stop.clone());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || loop {
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut body));
            let Err(payload) = res else { return };
            let message = device::fault::panic_message(&*payload);
            tracing::error!(%message, "the port's reader panicked; it reads on");
            dev.fail_internal("port reader", message);
            if stop.is_triggered() {
                return;
            }
            std::thread::sleep(PANIC_PAUSE);
        })
        .map_err(PortError::Thread)
}

/// How long a reader waits for room in the inbox before it looks at `stop` again.
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The inbox is full: lets the device deliver (waiting for its lock), then waits until the
/// device took enough for the inbox to be half empty. False when `stop` came meanwhile.
fn wait_for_room(dev: &Device, stop: &Stop) -> bool {
    dev.service_rx();
    while !dev.inbox().wait_room(ROOM_POLL) {
        if stop.is_triggered() {
            return false;
        }
    }
    true
}

/// Smallest frame worth delivering: an Ethernet header.
const MIN_FRAME: usize = 14;

/// Reads frames until `stop`, each behind a header of `hdr_len` bytes (a TAP's
/// virtio_net_hdr_v1: NEEDS_CSUM and GSO frames as far as TUNSETOFFLOAD asked, which follows
/// the device's driver; the header goes into the inbox with the frame). Frames are pushed into
/// the inbox (the NIC's receive buffer) as they come; every batch is offered to the device
/// without waiting (`try_service_rx`: a busy device drains its inbox itself before it lets go
/// of its lock), and once the wire is idle the thread waits for the device lock (`service_rx`;
/// it holds no other lock) so nothing is left behind. A full inbox is not read into: the thread
/// waits for room ([`RxInbox::wait_room`](device::RxInbox::wait_room)), so the frames back up
/// in the socket or TAP queue and the sender slows down (flow control, as QEMU stops polling a
/// netdev its device cannot take from) instead of being dropped here.
fn reader_loop(
    dev: &Device,
    fd: BorrowedFd<'_>,
    stop: &Stop,
    hdr_len: usize,
    mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
) {
    // A 64 KiB GSO frame with its Ethernet and VLAN headers, and the virtio header.
    let mut buf = vec![0u8; device::snapshot::MAX_INBOX_FRAME + hdr_len];
    loop {
        match stop.wait_readable(fd, None) {
            Ok(Ready::Io) | Ok(Ready::Timeout) => {}
            Ok(Ready::Stopped) => return,
            Err(e) => {
                tracing::error!(error = %e, "port reader: poll failed");
                return;
            }
        }
        let mut batch = 0usize;
        loop {
            if dev.inbox().is_full() && !wait_for_room(dev, stop) {
                return;
            }
            match recv(&mut buf) {
                Ok(n) if n >= hdr_len + MIN_FRAME => {
                    if hdr_len == NET_HDR_LEN {
                        let h = NetHdr::parse(&buf[..hdr_len]);
                        dev.inbox().push_with_hdr(&h, &buf[hdr_len..n]);
                    } else {
                        dev.inbox().push(&buf[hdr_len..n]);
                    }
                    batch += 1;
                    if batch.is_multiple_of(64) {
                        dev.try_service_rx();
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::error!(error = %e, "port reader: receive failed");
                    return;
                }
            }
        }
        if batch > 0 {
            dev.service_rx();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bar_registers::virtio::device_status;
    use device::DeviceConfig;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// A reader whose body panics fails the device with the panic's message and runs its body
    /// again (the port keeps receiving); it ends only when its body returns.
    #[test]
    fn a_panicking_reader_fails_the_device_and_reads_on() {
        let dev = Arc::new(Device::new(DeviceConfig::with_queue_pairs(1)).unwrap());
        let stop = Arc::new(Stop::new().unwrap());
        let runs = Arc::new(AtomicU32::new(0));
        let (r2, st2) = (runs.clone(), stop.clone());
        let t = spawn_reader("test-reader".into(), &dev, &stop, move || {
            if r2.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a reader bug");
            }
            // Run again: reads on until stopped.
            while !st2.is_triggered() {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
        let t0 = Instant::now();
        while runs.load(Ordering::SeqCst) < 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the reader did not run again after its panic"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let fault = dev.fault().expect("the panic failed the device");
        assert_eq!(fault.kind(), "internal_error");
        let text = fault.to_string();
        assert!(
            text.contains("port reader") && text.contains("a reader bug"),
            "{text}"
        );
        assert_ne!(dev.status() & device_status::DEVICE_NEEDS_RESET, 0);
        assert!(!t.is_finished(), "the reader thread ended");
        stop.trigger();
        t.join().expect("the reader thread itself did not panic");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
