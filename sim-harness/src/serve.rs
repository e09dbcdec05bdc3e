//! `vdpa-emu serve`: the NIC served to QEMU (>= 10.1) over vfio-user until SIGINT/SIGTERM.
//!
//! ```text
//! vdpa-emu serve --socket PATH [--queue-pairs N] [--mac MAC] [--port SPEC] [--lm-layout dpdk|linux]
//!                [--client-timeout SECS] [--ctl PATH | --no-ctl] [--pcap FILE]
//! ```
//!
//! Next to the vfio-user socket, `serve` opens a control socket (`PATH.ctl` unless `--ctl`
//! names another; `--no-ctl`: none) for `vdpa-emu ctl`: counters while the device runs, link
//! up/down, announce, quirks and faults on the live device, pcapng capture (the `ctl` module
//! documents its JSON-lines protocol). `--pcap FILE` captures from the start.
//!
//! QEMU attaches with
//! `-device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"PATH"}}'` and needs
//! shared guest RAM so that its DMA_MAPs carry descriptors the device can mmap:
//! `-object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem`.
//! Without `share=on` the server warns at the first DMA_MAP; the device then faults into
//! DEVICE_NEEDS_RESET on its first DMA.
//!
//! One client at a time; when it disconnects the device is reset, its DMA mappings and
//! interrupt eventfds are dropped, and the next client is accepted. A second client meanwhile
//! gets an EBUSY error reply and is closed. A client that stalls inside a message or does not
//! read its replies for `--client-timeout` seconds (default 5) is dropped; idle clients are
//! not. On SIGINT/SIGTERM the server stops and removes its socket. At start the soft
//! RLIMIT_NOFILE is raised to the hard limit (DMA maps keep no descriptor, but each message
//! may bring up to 16, and SET_IRQS keeps its eventfds).
//!
//! `--port SPEC` chooses the wire:
//! - `loopback` (default): transmitted frames come back on the device's own receive side;
//! - `tap:IFNAME`: a host TAP interface, created if absent and brought up (needs root);
//! - `unix:PATH`: one end of a datagram link between two devices (in one process or two).
//!   The ends are the socket files `PATH.a` and `PATH.b`: a server binds `PATH.a` unless a
//!   live server holds it, else `PATH.b`, and sends its frames to the other. So two servers
//!   started with the same `unix:/tmp/link` are wired to each other, in either start order.
//!   Frames sent while the other end is absent are dropped.

use crate::ctl::{CtlHandler, CtlServer};
use crate::pcap::LiveCapture;
use crate::ports::{self, PortError, PortSpec};
use crate::vfio_user::{Backend, Server, ServerError, ServerOptions, Stop};
use bar_registers::pci::CONFIG_SPACE_SIZE;
use bar_registers::{LayoutError, LmLayout, REGION_CONFIG};
use device::{
    AccessError, Device, DeviceConfig, DmaMapper, InterruptSink, MsixOwner, RegionAccess,
    SnapshotError,
};
use dma::{Backing, MapError, MappingInfo, Perms, WriteTrace};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// vdpa-emu's NIC as a vfio-user [`Backend`]: the server reaches it only through this.
#[derive(Clone, Debug)]
pub struct DeviceBackend(Arc<Device>);

/// The server `serve` runs.
pub type DeviceServer = Server<DeviceBackend>;

impl DeviceBackend {
    /// Serves `device`, which must leave the MSI-X table to the VMM
    /// (`DeviceConfig::msix_owner = MsixOwner::Vmm`): QEMU emulates it.
    pub fn new(device: Arc<Device>) -> Self {
        DeviceBackend(device)
    }

    /// The device served.
    pub fn device(&self) -> &Arc<Device> {
        &self.0
    }
}

impl RegionAccess for DeviceBackend {
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        self.0.region_read(region, offset, data)
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        self.0.region_write(region, offset, data)
    }
}

impl DmaMapper for DeviceBackend {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        self.0.dma_map(iova, size, perms, backing)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        self.0.dma_unmap(iova, size)
    }

    fn dma_unmap_all(&self) -> u64 {
        self.0.dma_unmap_all()
    }
}

impl Backend for DeviceBackend {
    type StateError = SnapshotError;

    fn region_size(&self, index: u32) -> u64 {
        match index {
            0..=5 => self.0.layout().bar_size(index as u8),
            REGION_CONFIG => CONFIG_SPACE_SIZE,
            _ => 0,
        }
    }

    fn msix_vectors(&self) -> u16 {
        self.0.layout().msix_vectors
    }

    fn set_interrupt_sink(&self, sink: Arc<dyn InterruptSink>) {
        self.0.set_interrupt_sink(sink)
    }

    fn reset(&self) {
        self.0.reset()
    }

    fn mappings(&self) -> Vec<MappingInfo> {
        self.0.mappings()
    }

    fn mapping_count(&self) -> usize {
        self.0.mapping_count()
    }

    fn map_stats(&self) -> dma::MapStats {
        self.0.map_stats()
    }

    fn pause(&self) {
        self.0.pause()
    }

    fn resume(&self) {
        self.0.resume()
    }

    fn save_state(&self) -> Vec<u8> {
        self.0.save_state()
    }

    fn restore_state(&self, data: &[u8]) -> Result<(), SnapshotError> {
        self.0.restore_state(data)
    }

    fn max_state_len(&self) -> usize {
        self.0.max_state_len()
    }

    fn set_write_trace(&self, trace: Option<Arc<WriteTrace>>) {
        self.0.set_write_trace(trace)
    }
}

/// What `serve` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// vfio-user socket path.
    pub socket: PathBuf,
    /// Queue pairs (1..=32).
    pub queue_pairs: u16,
    /// MAC address in the device config.
    pub mac: [u8; 6],
    /// The wire.
    pub port: PortSpec,
    /// LM block layout.
    pub lm_layout: LmLayout,
    /// Do not offer VIRTIO_F_RING_PACKED (guests then use split rings).
    pub no_packed: bool,
    /// Injected device bugs.
    pub quirks: device::Quirks,
    /// How long a client may stall inside a message or leave a reply unread.
    pub client_timeout: std::time::Duration,
    /// Control socket path (None: no control socket).
    pub ctl: Option<PathBuf>,
    /// Capture every frame into this pcapng file from the start.
    pub pcap: Option<PathBuf>,
}

/// Why `serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("device configuration: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] io::Error),
    #[error(transparent)]
    Ctl(#[from] crate::ctl::server::CtlServerError),
    #[error(transparent)]
    Capture(#[from] crate::pcap::CaptureError),
}

/// The device configuration `serve` uses: QEMU emulates the MSI-X table, so the VMM owns it.
pub fn device_config(opts: &ServeOptions) -> DeviceConfig {
    let mut cfg = DeviceConfig::with_queue_pairs(opts.queue_pairs).lm_layout(opts.lm_layout);
    cfg.layout.mac = opts.mac;
    cfg.msix_owner = MsixOwner::Vmm;
    cfg.offer_packed = !opts.no_packed;
    cfg.quirks = opts.quirks;
    cfg
}

/// Parses `52:54:00:12:34:56` (also with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || format!("MAC {s:?}: expected six hex bytes like 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// Parses `dpdk` / `linux`.
pub fn parse_lm_layout(s: &str) -> Result<LmLayout, String> {
    LmLayout::parse(s).ok_or_else(|| format!("LM layout {s:?}: expected dpdk or linux"))
}

/// The eventfd SIGINT/SIGTERM write to (-1: none).
static SIGNAL_STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = SIGNAL_STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a live local buffer of 8 bytes and
        // `fd` is the server's stop eventfd, open while the handler is installed.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// SIGINT/SIGTERM handlers that trigger `stop`, restored to the defaults on drop.
struct SignalGuard;

impl SignalGuard {
    fn install(stop: &Stop) -> io::Result<Self> {
        SIGNAL_STOP_FD.store(stop.raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            set_handler(sig, on_signal as *const () as libc::sighandler_t)?;
        }
        Ok(SignalGuard)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let _ = set_handler(sig, libc::SIG_DFL);
        }
        SIGNAL_STOP_FD.store(-1, Ordering::SeqCst);
    }
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero (empty mask, no flags) is a valid value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is a valid sigaction; the handler only does an async-signal-safe write.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves one device until SIGINT/SIGTERM; removes the socket on the way out.
pub fn run(opts: &ServeOptions) -> Result<(), ServeError> {
    match crate::vfio_user::sock::raise_nofile_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let dev = Device::new(device_config(opts))?;
    let port = ports::attach(&opts.port, &dev)?;
    let capture = Arc::new(LiveCapture::new(dev.clone()));
    if let Some(path) = &opts.pcap {
        capture.start(path)?;
    }
    // Before the vfio-user socket: whoever sees that one finds the control socket too.
    let ctl = match &opts.ctl {
        Some(path) => Some(CtlServer::start(
            path,
            CtlHandler::new(dev.clone(), capture.clone()),
        )?),
        None => None,
    };
    let server = Server::bind(
        &opts.socket,
        DeviceBackend::new(dev.clone()),
        ServerOptions {
            client_timeout: opts.client_timeout,
            ..ServerOptions::default()
        },
    )?;
    let l = dev.layout();
    tracing::info!(
        socket = %opts.socket.display(),
        queue_pairs = opts.queue_pairs,
        msix_vectors = l.msix_vectors,
        bar0 = l.bar_size(0),
        port = port.describe(),
        lm = opts.lm_layout.name(),
        ctl = ctl.as_ref().map(|c| c.path().display().to_string()),
        "serving"
    );
    eprintln!(
        "vdpa-emu: serving {} queue pair(s) on {} (port {}); attach with -device '{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"type\":\"unix\",\"path\":\"{}\"}}}}'",
        opts.queue_pairs,
        opts.socket.display(),
        port.describe(),
        opts.socket.display()
    );
    let guard = SignalGuard::install(&server.stop_handle()).map_err(ServeError::Signal)?;
    let result = server.serve();
    drop(guard);
    let stats = server.stats();
    drop(ctl);
    if capture.status().is_some() {
        match capture.stop() {
            Ok(c) => eprintln!(
                "vdpa-emu: captured {} frames ({} bytes) into {}",
                c.frames,
                c.bytes,
                c.path.display()
            ),
            Err(e) => eprintln!("vdpa-emu: capture: {e}"),
        }
    }
    drop(server);
    drop(port);
    tracing::info!(
        clients = stats.accepted,
        messages = stats.messages,
        errors = stats.errors,
        "stopped"
    );
    result.map_err(ServeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("02-00-00-00-00-0a"), Ok([2, 0, 0, 0, 0, 0xa]));
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("52:54:00:12:34:5g").is_err());
        assert!(parse_mac("01:00:00:00:00:00").is_err());
    }

    #[test]
    fn port_specs() {
        assert_eq!("loopback".parse::<PortSpec>().unwrap(), PortSpec::Loopback);
        assert_eq!(
            "tap:vtap0".parse::<PortSpec>().unwrap(),
            PortSpec::Tap("vtap0".into())
        );
        assert_eq!(
            "unix:/tmp/l".parse::<PortSpec>().unwrap(),
            PortSpec::Unix("/tmp/l".into())
        );
        assert!("tap:".parse::<PortSpec>().is_err());
        assert!("udp:1".parse::<PortSpec>().is_err());
    }
}
