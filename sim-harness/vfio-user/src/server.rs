//! The vfio-user server: one PCI function (a [`Backend`]) behind a Unix socket, one client at
//! a time.
//!
//! Serving model: an accept loop; each connection is served by a blocking read loop on the
//! calling thread, messages strictly in order (so a posted REGION_WRITE to a doorbell is done
//! before anything that follows it). When the client goes away, cleanly or not, or breaks the
//! protocol beyond recovery, the device is reset, every DMA mapping is dropped (closing the
//! client's memory descriptors), every interrupt eventfd is closed, and the next client is
//! accepted. A [`Stop`] ends the loop at any blocking point.
//!
//! Clients that stall: a client may stay idle between messages as long as it likes (QEMU is
//! idle for hours), but once the first byte of a message has arrived the whole message must
//! arrive within [`ServerOptions::client_timeout`], and each reply must be taken off the socket
//! within it too (a client that never reads its replies fills the socket buffer); otherwise the
//! client is dropped with a log line and cleaned up like one that died.
//!
//! A second client while one is served is refused, never left in silence: it is accepted, its
//! first message header is awaited for at most [`REFUSE_WAIT`] on a short-lived thread (so the
//! served client is not delayed), answered with an EBUSY error reply carrying that message's
//! id, and closed; the log says "refusing client: device busy with client N". At most
//! [`MAX_REFUSERS`] such threads run at once; beyond that a newcomer is closed at once (it
//! sees end-of-file), also logged.
//!
//! Robustness rules (each is tested in sim-harness/tests/vfio_user_server.rs):
//! - the declared payload is always consumed, so an unknown or refused command gets an error
//!   reply with a real errno (ENOSYS, EINVAL, ...) and the stream stays in sync;
//! - a header whose size is smaller than the header, or larger than `max_data_xfer_size` plus
//!   the fixed part of any message, gets an error reply and the connection is closed: its
//!   payload boundary cannot be trusted (nothing is allocated from such a size);
//! - payload allocations are bounded by that limit; argsz fields are validated, never used to
//!   size anything;
//! - descriptors beyond what a command takes, or beyond [`MAX_MSG_FDS`], are closed and the
//!   command refused;
//! - NO_REPLY is honoured for every command, errors included (QEMU's posted writes).
//!
//! Migration v2 (DEVICE_FEATURE, MIG_DATA_READ/WRITE) is in [`crate::migration`]; a client's
//! departure also ends its migration session (dirty logging off, state RUNNING).

use crate::backend::{Backend, RegionMmap};
use crate::errno::{Errno, Handled, E2BIG, EINVAL, EIO, ENOSYS, ENOTSUP};
use crate::irq::{IrqData, IrqTable};
use crate::migration::{MigState, Migration};
use crate::sock::{nofile_limit, recv_with_fds, send_with_fds, Either, Ready, Stop, MAX_MSG_FDS};
use crate::wire::{self, flags, Command, DeviceInfo, Header, RegionRw, HEADER_SIZE};
use device::AccessError;
use dma::{Backing, MapError, Perms, PAGE_SIZE};
use std::fs::File;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_unmap, vfio_region_info, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// Largest data transfer (REGION_READ/WRITE count) we accept: the protocol default.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// DMA mappings we accept at once (the protocol default and QEMU's ceiling).
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// DMA page sizes: 4 KiB (IOVA, size and file offset of a DMA_MAP must be multiples).
pub const PGSIZES: u64 = PAGE_SIZE;
/// Room for the fixed part of any message (and a VERSION's JSON) on top of the data limit.
const PAYLOAD_SLACK: usize = 4096;
/// Default [`ServerOptions::client_timeout`].
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// CPU pauses between two looks at the socket while spinning (a look is a recvmsg that finds
/// nothing, about a microsecond).
const SPIN_PAUSES: u32 = 64;
/// Default [`ServerOptions::reply_spin`].
pub const DEFAULT_REPLY_SPIN: Duration = Duration::from_micros(200);
/// How long a refused second client may take to send its first header before it is closed.
pub const REFUSE_WAIT: Duration = Duration::from_secs(1);
/// Refusals in progress at once (each is a short-lived thread).
pub const MAX_REFUSERS: usize = 8;

/// Server limits announced in the VERSION reply (and enforced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest REGION_READ/WRITE count.
    pub max_data_xfer_size: u32,
    /// Most DMA mappings at once.
    pub max_dma_maps: u32,
    /// How long a client may take to send the rest of a message once its first byte arrived,
    /// and to take a reply off the socket; a client over it is dropped (`serve --client-timeout`).
    pub client_timeout: Duration,
    /// After each message, how long the server keeps polling its socket for the next one
    /// before it sleeps in poll(2) (`serve --reply-spin-us`; zero: never). A client that sends
    /// synchronous messages back to back then meets a server that is awake, and each round
    /// trip costs one wakeup (the client's) instead of two. QEMU with a strict guest vIOMMU
    /// sends a DMA_MAP and a DMA_UNMAP per IOTLB entry, each waited for
    /// (hw/vfio/listener.c `vfio_iommu_map_notify`). An idle client costs nothing: the spin
    /// follows messages only.
    pub reply_spin: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            reply_spin: DEFAULT_REPLY_SPIN,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] crate::sock::BindError),
    #[error("creating the stop eventfd: {0}")]
    Stop(#[source] io::Error),
    #[error("waiting for a client: {0}")]
    Accept(#[source] io::Error),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("client closed the connection inside a message ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("header declares {0} bytes, less than the 16-byte header")]
    SizeTooSmall(u32),
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: u32, limit: usize },
    #[error("client proposed protocol major version {0}; only 0 is supported")]
    Version(u16),
    #[error("client stalled inside a message: {got} of {want} bytes after {waited:?}; dropped")]
    Stalled {
        got: usize,
        want: usize,
        waited: Duration,
    },
    #[error("client does not read its replies: {sent} of {total} reply bytes taken in {waited:?}; dropped")]
    ReplyStalled {
        sent: usize,
        total: usize,
        waited: Duration,
    },
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// How a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The client closed the socket between messages.
    Closed,
    /// The server was told to stop.
    Stopped,
    /// Protocol or socket failure.
    Failed(ConnectionError),
}

/// Counters of a server (tests synchronise on them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections finished and cleaned up (device reset, DMA unmapped, eventfds closed).
    pub ended: u64,
    /// Messages handled.
    pub messages: u64,
    /// Error replies (sent or, for NO_REPLY messages, only logged).
    pub errors: u64,
    /// Clients refused because another was being served (EBUSY, or closed when too many).
    pub refused: u64,
    /// Clients dropped for stalling inside a message or not reading replies.
    pub stalled: u64,
    /// Messages whose handler panicked (answered with EIO, the device failed; a bug).
    pub handler_panics: u64,
    /// REGION_READ messages handled (trapped register reads).
    pub region_reads: u64,
    /// REGION_WRITE and REGION_WRITE_MULTI messages handled (trapped register writes).
    pub region_writes: u64,
    /// Messages whose first bytes arrived while the server was still polling after the one
    /// before ([`ServerOptions::reply_spin`]): wakeups saved.
    pub caught_spinning: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    ended: AtomicU64,
    messages: AtomicU64,
    errors: AtomicU64,
    refused: Arc<AtomicU64>,
    stalled: AtomicU64,
    handler_panics: AtomicU64,
    caught_spinning: AtomicU64,
    /// Refusal threads running.
    refusers: Arc<AtomicUsize>,
    /// Time spent on DMA_MAP / DMA_UNMAP, from the parsed message to the reply sent: what a
    /// guest vIOMMU's synchronous map costs on our side of the socket.
    dma_map_ns: AtomicU64,
    dma_unmap_ns: AtomicU64,
    /// Trapped register accesses: REGION_READ and REGION_WRITE (WRITE_MULTI counts as one).
    region: [RegionCounters; 2],
}

/// One direction of trapped register accesses ([`Counters::region`]: 0 reads, 1 writes).
#[derive(Debug, Default)]
struct RegionCounters {
    /// Messages.
    n: AtomicU64,
    /// From the parsed message to the reply built: the device's share of a trap.
    handled_ns: AtomicU64,
    /// To the reply sent (`sendmsg` returned): on a busy host this also counts the server
    /// being preempted by the client it woke, after the reply is on its way.
    replied_ns: AtomicU64,
}

impl RegionCounters {
    fn snapshot(&self) -> [u64; 3] {
        [&self.n, &self.handled_ns, &self.replied_ns].map(|a| a.load(Ordering::Relaxed))
    }
}

/// A vfio-user server for one function.
#[derive(Debug)]
pub struct Server<B: Backend> {
    /// The function served.
    device: B,
    irqs: Arc<IrqTable>,
    listener: UnixListener,
    path: PathBuf,
    stop: Arc<Stop>,
    opts: ServerOptions,
    counters: Counters,
    sock_id: Option<(u64, u64)>,
    migration: parking_lot::Mutex<Migration>,
}

/// Binds a listening socket that appears at `path` only once it listens: bind(2) creates the
/// file before listen(2) runs, and a client that connects in between (QEMU started right
/// after `serve`, a script polling for the file) gets ECONNREFUSED. So the socket is bound
/// and listening under a temporary name in the same directory, then renamed into place
/// (rename(2) is atomic). A path too long for the temporary name is bound directly.
impl<B: Backend> Server<B> {
    /// Binds `path` (replacing a stale socket file left by a dead server) and becomes
    /// `device`'s interrupt sink. QEMU emulates the MSI-X table itself, so the function must
    /// leave it to the VMM (vdpa-emu's NIC: `DeviceConfig::msix_owner = MsixOwner::Vmm`).
    pub fn bind(path: &Path, device: B, opts: ServerOptions) -> Result<Self, ServerError> {
        let listener = crate::sock::bind_listener(path, None)?;
        let sock_id = path_id(path);
        let irqs = Arc::new(IrqTable::new(device.msix_vectors()));
        device.set_interrupt_sink(irqs.clone());
        let stop = Arc::new(Stop::new().map_err(ServerError::Stop)?);
        tracing::info!(path = %path.display(), "vfio-user server listening");
        Ok(Server {
            device,
            irqs,
            listener,
            path: path.into(),
            stop,
            opts,
            counters: Counters::default(),
            sock_id,
            migration: Default::default(),
        })
    }

    /// The stop handle: triggering it ends [`Server::serve`] (from any thread or a signal
    /// handler writing its eventfd).
    pub fn stop_handle(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The function served.
    pub fn device(&self) -> &B {
        &self.device
    }

    /// The interrupt table (what SET_IRQS configured).
    pub fn irqs(&self) -> &Arc<IrqTable> {
        &self.irqs
    }

    /// The device's migration state (vfio-user migration v2).
    pub fn migration_state(&self) -> MigState {
        self.migration.lock().state()
    }

    /// Whether DMA logging (DMA_LOGGING_START) is on.
    pub fn dirty_logging(&self) -> bool {
        self.migration.lock().logging()
    }

    /// Counter snapshot.
    pub fn stats(&self) -> ServerStats {
        let c = &self.counters;
        ServerStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            ended: c.ended.load(Ordering::SeqCst),
            messages: c.messages.load(Ordering::SeqCst),
            errors: c.errors.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            stalled: c.stalled.load(Ordering::SeqCst),
            handler_panics: c.handler_panics.load(Ordering::SeqCst),
            region_reads: c.region[0].n.load(Ordering::Relaxed),
            region_writes: c.region[1].n.load(Ordering::Relaxed),
            caught_spinning: c.caught_spinning.load(Ordering::Relaxed),
        }
    }

    /// Serves clients one after the other until the stop handle is triggered.
    pub fn serve(&self) -> Result<(), ServerError> {
        loop {
            match self.serve_one()? {
                None | Some(ConnectionEnd::Stopped) => return Ok(()),
                Some(_) => {}
            }
        }
    }

    /// Waits for one client and serves it to the end; `None` if stopped while waiting.
    pub fn serve_one(&self) -> Result<Option<ConnectionEnd>, ServerError> {
        match self
            .stop
            .wait_readable(self.listener.as_fd(), None)
            .map_err(ServerError::Accept)?
        {
            Ready::Stopped => return Ok(None),
            Ready::Io | Ready::Timeout => {}
        }
        let (stream, _) = match self.listener.accept() {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::WouldBlock
                ) =>
            {
                return Ok(Some(ConnectionEnd::Closed))
            }
            Err(e) => return Err(ServerError::Accept(e)),
        };
        Ok(Some(self.serve_stream(stream)))
    }

    /// Serves one already-connected client to the end on the calling thread, then cleans up
    /// exactly as for an accepted one (migration session ended, device reset, DMA unmapped,
    /// interrupt eventfds closed). [`Server::serve_one`] calls it after `accept`; an
    /// in-process peer (one end of a `UnixStream::pair`, as the fuzz harness in fuzz/ uses)
    /// calls it directly, without a round trip through the socket file.
    pub fn serve_stream(&self, stream: UnixStream) -> ConnectionEnd {
        let n = self.counters.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let traps_before = self
            .counters
            .region
            .each_ref()
            .map(RegionCounters::snapshot);
        let span = tracing::info_span!("client", n);
        let _g = span.enter();
        tracing::info!(peer_pid = peer_pid(&stream), "client connected");
        let end = Session::new(self, stream, n).run();
        match &end {
            ConnectionEnd::Closed => tracing::info!("client disconnected"),
            ConnectionEnd::Stopped => tracing::info!("server stopping"),
            ConnectionEnd::Failed(
                e @ (ConnectionError::Stalled { .. } | ConnectionError::ReplyStalled { .. }),
            ) => {
                self.counters.stalled.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "client stalled: dropped");
            }
            ConnectionEnd::Failed(e) => tracing::warn!(error = %e, "connection dropped"),
        }
        self.cleanup(traps_before);
        self.counters.ended.fetch_add(1, Ordering::SeqCst);
        end
    }

    /// What a client leaves behind is undone: its migration session ended (dirty logging off,
    /// state RUNNING), device reset (status 0, not paused), DMA unmapped (its memory
    /// descriptors closed), interrupt eventfds closed.
    /// `traps_before`: the trapped access counters when the session began.
    fn cleanup(&self, traps_before: [[u64; 3]; 2]) {
        // One machine-readable line per session: how hard the DMA map path worked (a guest
        // vIOMMU maps and unmaps per buffer); the e2e tests read it.
        let stats = self.device.map_stats();
        let us = |ns: &AtomicU64, n: u64| ns.load(Ordering::Relaxed) as f64 / 1e3 / n.max(1) as f64;
        let unmaps = stats.unmaps + stats.unmaps_of_nothing;
        tracing::info!(
            dma_map_stats = %serde_json::to_string(&stats).unwrap_or_default(),
            map_us = format_args!("{:.1}", us(&self.counters.dma_map_ns, stats.maps)),
            unmap_us = format_args!("{:.1}", us(&self.counters.dma_unmap_ns, unmaps)),
            caught_spinning = self.counters.caught_spinning.load(Ordering::Relaxed),
            "DMA map statistics (map_us/unmap_us: mean server time per message, reply included; \
             caught_spinning: messages since serve started that found it still polling)"
        );
        let mut session = self.device.session_stats();
        if let serde_json::Value::Object(m) = &mut session {
            // The session's trapped register accesses: what stopped its vCPUs for a round trip.
            for (dir, (rc, before)) in ["read", "write"]
                .into_iter()
                .zip(self.counters.region.iter().zip(traps_before))
            {
                let [n, handled, replied] = rc.snapshot();
                let n = n - before[0];
                let mean_us = |ns: u64| (ns as f64 / 1e3 / n.max(1) as f64 * 10.0).round() / 10.0;
                m.insert(format!("trapped_{dir}s"), n.into());
                m.insert(
                    format!("trapped_{dir}_handled_us"),
                    mean_us(handled - before[1]).into(),
                );
                m.insert(
                    format!("trapped_{dir}_replied_us"),
                    mean_us(replied - before[2]).into(),
                );
            }
        }
        if !session.is_null() {
            tracing::info!(session_stats = %session, "session statistics");
        }
        self.migration.lock().end_session(&self.device);
        self.device.reset();
        let unmapped = self.device.dma_unmap_all();
        self.irqs.clear();
        tracing::info!(
            unmapped,
            "device reset, DMA unmapped, interrupt eventfds closed"
        );
    }

    fn region_size(&self, index: u32) -> u64 {
        self.device.region_size(index)
    }

    /// Accepts every pending connection and refuses it (the device is busy with client
    /// `busy_with`): see the module doc.
    fn refuse_pending(&self, busy_with: u64) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock: none left (or it went away)
            };
            self.counters.refused.fetch_add(1, Ordering::SeqCst);
            let pid = peer_pid(&stream);
            let running = self.counters.refusers.fetch_add(1, Ordering::SeqCst);
            if running >= MAX_REFUSERS {
                self.counters.refusers.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    peer_pid = pid,
                    busy_with,
                    "refusing client: device busy with client {busy_with}; {MAX_REFUSERS} refusals already in progress, closed at once"
                );
                continue;
            }
            tracing::warn!(
                peer_pid = pid,
                busy_with,
                "refusing client: device busy with client {busy_with}"
            );
            let refusers = self.counters.refusers.clone();
            let spawned = std::thread::Builder::new()
                .name("vfio-user-refuse".into())
                .spawn(move || {
                    refuse(stream);
                    refusers.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.counters.refusers.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot start a refusal thread: client closed at once");
            }
        }
    }
}

/// Answers a refused client's first message with EBUSY (if it sends one within
/// [`REFUSE_WAIT`]) and closes it.
fn refuse(mut stream: UnixStream) {
    let mut hb = [0u8; HEADER_SIZE];
    let got = stream
        .set_read_timeout(Some(REFUSE_WAIT))
        .and_then(|()| stream.read_exact(&mut hb));
    if got.is_err() {
        return; // silent client or gone: closing is all it gets
    }
    let hdr = Header::parse(&hb);
    let reply = Header {
        id: hdr.id,
        command: hdr.command,
        size: HEADER_SIZE as u32,
        flags: flags::TYPE_REPLY | flags::ERROR,
        error: libc::EBUSY as u32,
    };
    let _ = stream
        .set_write_timeout(Some(REFUSE_WAIT))
        .and_then(|()| stream.write_all(&reply.to_bytes()));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The pid of the process at the other end of `stream` (SO_PEERCRED), 0 if unknown.
fn peer_pid(stream: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live local of that size.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        cred.pid
    } else {
        0
    }
}

impl<B: Backend> Drop for Server<B> {
    fn drop(&mut self) {
        // Remove the socket file only while it is still the one we bound.
        if path_id(&self.path).is_some() && path_id(&self.path) == self.sock_id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn path_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// One message as read off the socket.
struct Message {
    hdr: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
    fds_truncated: bool,
    /// Descriptors the kernel could not install in our table (we are out of descriptors).
    fds_lost: bool,
}

enum Read {
    Msg(Message),
    Closed,
    Stopped,
}

/// One connected client.
struct Session<'a, B: Backend> {
    srv: &'a Server<B>,
    stream: UnixStream,
    /// This client's number (in the refusal log line of others).
    n: u64,
    negotiated: bool,
    warned_no_fd: bool,
    close: Option<ConnectionError>,
    /// A descriptor the reply being built carries (DEVICE_GET_REGION_INFO of a mappable
    /// region); sent with the reply's first bytes, closed after it (or with no reply).
    reply_fd: Option<OwnedFd>,
    /// Until when the socket is polled without sleeping for the next message's first bytes
    /// ([`ServerOptions::reply_spin`]), set as each message is done.
    spin_until: Option<Instant>,
    /// The socket was found empty at least once during this spin.
    spun: bool,
}

impl<'a, B: Backend> Session<'a, B> {
    fn new(srv: &'a Server<B>, stream: UnixStream, n: u64) -> Self {
        Session {
            srv,
            stream,
            n,
            negotiated: false,
            warned_no_fd: false,
            close: None,
            reply_fd: None,
            spin_until: None,
            spun: false,
        }
    }

    fn run(mut self) -> ConnectionEnd {
        loop {
            let msg = match self.read_message() {
                Ok(Read::Msg(m)) => m,
                Ok(Read::Closed) => return ConnectionEnd::Closed,
                Ok(Read::Stopped) => return ConnectionEnd::Stopped,
                Err(e) => return ConnectionEnd::Failed(e),
            };
            if let Err(e) = self.handle(msg) {
                return ConnectionEnd::Failed(e);
            }
            let spin = self.srv.opts.reply_spin;
            self.spin_until = (!spin.is_zero()).then(|| Instant::now() + spin);
            if let Some(e) = self.close.take() {
                return ConnectionEnd::Failed(e);
            }
        }
    }

    /// Waits for the client's socket (`events`), the stop, or `deadline`, refusing every
    /// client that connects meanwhile.
    fn wait(&self, events: libc::c_short, deadline: Option<Instant>) -> io::Result<Ready> {
        loop {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.srv.stop.wait_either(
                self.stream.as_fd(),
                events,
                self.srv.listener.as_fd(),
                timeout,
            )? {
                Either::First(r) => return Ok(r),
                Either::Second => self.srv.refuse_pending(self.n),
            }
        }
    }

    /// Whether the server still polls for the next message without sleeping
    /// ([`ServerOptions::reply_spin`]); a short pause between two looks. When it no longer
    /// does, the caller ends the spin as it goes to sleep.
    fn spinning(&mut self) -> bool {
        if self.spin_until.is_none_or(|t| Instant::now() >= t) {
            return false;
        }
        for _ in 0..SPIN_PAUSES {
            std::hint::spin_loop();
        }
        self.spun = true;
        true
    }

    /// Fills `buf` completely, collecting descriptors: `Some(true)` when full, `Some(false)` if
    /// the peer closed before the first byte, `None` if the server is stopping. `deadline` is
    /// the message's: set at its first byte (idle waits before it are unbounded).
    fn read_full(
        &mut self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        truncated: &mut bool,
        lost: &mut bool,
        deadline: &mut Option<Instant>,
    ) -> Result<Option<bool>, ConnectionError> {
        let mut got = 0;
        while got < buf.len() {
            let r = match recv_with_fds(self.stream.as_fd(), &mut buf[got..], libc::MSG_DONTWAIT) {
                Ok(r) => {
                    // The message's first bytes: the spin (if any) ends here.
                    // (A close, read as 0 bytes, is not a message.)
                    if got == 0 && self.spin_until.take().is_some() && self.spun && r.len > 0 {
                        self.srv
                            .counters
                            .caught_spinning
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.spun = false;
                    r
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 && self.spinning() => {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.spin_until = None;
                    self.spun = false;
                    match self.wait(libc::POLLIN, *deadline)? {
                        Ready::Stopped => return Ok(None),
                        Ready::Io => continue,
                        Ready::Timeout => {
                            return Err(ConnectionError::Stalled {
                                got,
                                want: buf.len(),
                                waited: self.srv.opts.client_timeout,
                            })
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return if got == 0 {
                        Ok(Some(false))
                    } else {
                        Err(ConnectionError::Truncated {
                            got,
                            want: buf.len(),
                        })
                    };
                }
                Err(e) => return Err(e.into()),
            };
            *truncated |= r.truncated;
            *lost |= r.fds_lost;
            fds.extend(r.fds);
            if fds.len() > MAX_MSG_FDS {
                *truncated = true;
                fds.truncate(MAX_MSG_FDS);
            }
            if r.len == 0 {
                return if got == 0 {
                    Ok(Some(false))
                } else {
                    Err(ConnectionError::Truncated {
                        got,
                        want: buf.len(),
                    })
                };
            }
            got += r.len;
            deadline.get_or_insert_with(|| Instant::now() + self.srv.opts.client_timeout);
        }
        Ok(Some(true))
    }

    fn read_message(&mut self) -> Result<Read, ConnectionError> {
        let mut hb = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let (mut truncated, mut lost) = (false, false);
        let mut deadline = None;
        match self.read_full(&mut hb, &mut fds, &mut truncated, &mut lost, &mut deadline)? {
            None => return Ok(Read::Stopped),
            Some(false) => return Ok(Read::Closed),
            Some(true) => {}
        }
        let hdr = Header::parse(&hb);
        let Some(len) = hdr.payload_len() else {
            tracing::warn!(
                id = hdr.id,
                command = hdr.command,
                size = hdr.size,
                "header size below 16 bytes: closing the connection"
            );
            self.send_error(&hdr, EINVAL)?;
            return Err(ConnectionError::SizeTooSmall(hdr.size));
        };
        let limit = self.srv.opts.max_data_xfer_size as usize + PAYLOAD_SLACK;
        if len > limit {
            tracing::warn!(
                id = hdr.id,
                command = hdr.command,
                size = hdr.size,
                limit,
                "message too large: closing the connection"
            );
            self.send_error(&hdr, E2BIG)?;
            return Err(ConnectionError::TooLarge {
                size: hdr.size,
                limit,
            });
        }
        let mut payload = vec![0u8; len];
        match self.read_full(
            &mut payload,
            &mut fds,
            &mut truncated,
            &mut lost,
            &mut deadline,
        ) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Read::Stopped),
            Err(ConnectionError::Truncated { got, .. }) => {
                return Err(ConnectionError::Truncated {
                    got: HEADER_SIZE + got,
                    want: hdr.size as usize,
                })
            }
            Err(ConnectionError::Stalled { got, waited, .. }) => {
                return Err(ConnectionError::Stalled {
                    got: HEADER_SIZE + got,
                    want: hdr.size as usize,
                    waited,
                })
            }
            Err(e) => return Err(e),
        }
        Ok(Read::Msg(Message {
            hdr,
            payload,
            fds,
            fds_truncated: truncated,
            fds_lost: lost,
        }))
    }

    fn handle(&mut self, msg: Message) -> Result<(), ConnectionError> {
        let hdr = msg.hdr;
        let name = wire::command_name(hdr.command);
        let span = tracing::debug_span!("msg", id = hdr.id, cmd = name);
        let _g = span.enter();
        self.srv.counters.messages.fetch_add(1, Ordering::Relaxed);
        match hdr.msg_type() {
            flags::TYPE_COMMAND => {}
            flags::TYPE_REPLY => {
                // We never send commands, so no reply is expected: drop it, stay in sync.
                tracing::warn!(
                    command = hdr.command,
                    "unexpected reply from the client ignored"
                );
                return Ok(());
            }
            t => {
                tracing::warn!(msg_type = t, "unknown message type");
                return self.finish(&hdr, Err(EINVAL));
            }
        }
        tracing::debug!(
            size = hdr.size,
            fds = msg.fds.len(),
            no_reply = hdr.no_reply(),
            "command"
        );
        let t0 = std::time::Instant::now();
        // A refused message's descriptors are closed before the reply goes out, so a client
        // that saw the reply finds them closed.
        let result = if msg.fds_lost {
            tracing::warn!(
                received = msg.fds.len(),
                nofile = nofile_limit(),
                "descriptors lost: the server is out of file descriptors (RLIMIT_NOFILE); refused with EMFILE"
            );
            drop(msg.fds);
            Err(Errno(libc::EMFILE))
        } else if msg.fds_truncated {
            tracing::warn!("more than {MAX_MSG_FDS} descriptors: refused (the excess was closed)");
            drop(msg.fds);
            Err(EINVAL)
        } else {
            self.dispatch_contained(&hdr, &msg.payload, msg.fds)
        };
        // Counted before the reply goes out, so a client that saw its reply sees its count.
        let c = &self.srv.counters;
        let cmd = Command::from_u16(hdr.command);
        let region = match cmd {
            Some(Command::RegionRead) => Some(&c.region[0]),
            Some(Command::RegionWrite | Command::RegionWriteMulti) => Some(&c.region[1]),
            _ => None,
        };
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        if let Some(rc) = region {
            rc.n.fetch_add(1, Ordering::Relaxed);
            rc.handled_ns.fetch_add(ns(t0.elapsed()), Ordering::Relaxed);
        }
        let r = self.finish(&hdr, result);
        let replied = match cmd {
            Some(Command::DmaMap) => Some(&c.dma_map_ns),
            Some(Command::DmaUnmap) => Some(&c.dma_unmap_ns),
            _ => region.map(|rc| &rc.replied_ns),
        };
        if let Some(t) = replied {
            t.fetch_add(ns(t0.elapsed()), Ordering::Relaxed);
        }
        r
    }

    /// Sends the reply (or logs the error of a NO_REPLY command).
    fn finish(&mut self, hdr: &Header, result: Handled) -> Result<(), ConnectionError> {
        if let Err(errno) = result {
            self.srv.counters.errors.fetch_add(1, Ordering::Relaxed);
            if hdr.no_reply() {
                tracing::warn!(%errno, command = wire::command_name(hdr.command), "posted command failed (no reply requested)");
            } else {
                tracing::debug!(%errno, "error reply");
            }
        }
        let fd = self.reply_fd.take();
        if hdr.no_reply() {
            return Ok(());
        }
        match result {
            Ok(payload) => {
                let reply = Header {
                    id: hdr.id,
                    command: hdr.command,
                    size: (HEADER_SIZE + payload.len()) as u32,
                    flags: flags::TYPE_REPLY,
                    error: 0,
                };
                self.send_fds(&reply.to_bytes(), &payload, fd.as_ref().map(|f| f.as_fd()))
            }
            Err(errno) => self.send_error(hdr, errno),
        }
    }

    fn send_error(&mut self, hdr: &Header, errno: Errno) -> Result<(), ConnectionError> {
        let reply = Header {
            id: hdr.id,
            command: hdr.command,
            size: HEADER_SIZE as u32,
            flags: flags::TYPE_REPLY | flags::ERROR,
            error: errno.0 as u32,
        };
        self.send(&reply.to_bytes(), &[])
    }

    fn send(&mut self, head: &[u8], payload: &[u8]) -> Result<(), ConnectionError> {
        self.send_fds(head, payload, None)
    }

    /// Sends a reply; `fd` goes with its first bytes (the sendmsg that carries the header).
    fn send_fds(
        &mut self,
        head: &[u8],
        payload: &[u8],
        mut fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ConnectionError> {
        let total = head.len() + payload.len();
        let mut sent = 0;
        let deadline = Instant::now() + self.srv.opts.client_timeout;
        while sent < total {
            let bufs: Vec<IoSlice<'_>> = if sent < head.len() {
                vec![IoSlice::new(&head[sent..]), IoSlice::new(payload)]
            } else {
                vec![IoSlice::new(&payload[sent - head.len()..])]
            };
            let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
            match send_with_fds(self.stream.as_fd(), &bufs, &fds, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    sent += n;
                    fd = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.wait(libc::POLLOUT, Some(deadline))? {
                        Ready::Stopped => {
                            return Err(io::Error::new(
                                io::ErrorKind::Interrupted,
                                "server stopping",
                            )
                            .into())
                        }
                        Ready::Timeout => {
                            return Err(ConnectionError::ReplyStalled {
                                sent,
                                total,
                                waited: self.srv.opts.client_timeout,
                            })
                        }
                        Ready::Io => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// [`Self::dispatch`], with a panic in it (a bug in the server or the device) contained:
    /// it is logged, counted (`ServerStats::handler_panics`), handed to the backend (the
    /// device enters DEVICE_NEEDS_RESET: [`Backend::internal_error`]) and the message is
    /// answered with EIO; the session goes on. Without this, the panic would unwind through
    /// `serve` and end the process: every port thread and the doorbell engine with it, and
    /// the VMM would find its device gone.
    ///
    /// `AssertUnwindSafe`: what the handler left half done is the session's bookkeeping of
    /// this one message (its reply is the error) and the device's state, which the failed
    /// device keeps only until its driver resets it; the locks it held (`parking_lot`, no
    /// poisoning) were let go as it unwound.
    fn dispatch_contained(&mut self, hdr: &Header, p: &[u8], fds: Vec<OwnedFd>) -> Handled {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(hdr, p, fds)))
        {
            Ok(handled) => handled,
            Err(payload) => {
                let message = device::fault::panic_message(&*payload);
                self.srv
                    .counters
                    .handler_panics
                    .fetch_add(1, Ordering::SeqCst);
                tracing::error!(
                    command = wire::command_name(hdr.command),
                    %message,
                    "the message's handler panicked: the device needs a reset, the message gets EIO"
                );
                self.srv.device.internal_error(message);
                Err(EIO)
            }
        }
    }

    fn dispatch(&mut self, hdr: &Header, p: &[u8], fds: Vec<OwnedFd>) -> Handled {
        let Some(cmd) = Command::from_u16(hdr.command) else {
            tracing::warn!(command = hdr.command, len = p.len(), "unknown command");
            return Err(ENOSYS);
        };
        let takes_fds = matches!(cmd, Command::DmaMap | Command::DeviceSetIrqs);
        if !takes_fds && !fds.is_empty() {
            tracing::warn!(
                fds = fds.len(),
                "descriptors on a command that takes none: refused"
            );
            return Err(EINVAL);
        }
        if cmd != Command::Version && !self.negotiated {
            tracing::warn!("command before VERSION");
            return Err(EINVAL);
        }
        match cmd {
            Command::Version => self.version(p),
            Command::DeviceGetInfo => self.get_info(p),
            Command::DeviceGetRegionInfo => self.region_info(p),
            Command::DeviceGetIrqInfo => self.irq_info(p),
            Command::DeviceSetIrqs => self.set_irqs(p, fds),
            Command::DmaMap => self.dma_map(p, fds),
            Command::DmaUnmap => self.dma_unmap(p),
            Command::RegionRead => self.region_read(p),
            Command::RegionWrite => self.region_write(p),
            Command::RegionWriteMulti => self.region_write_multi(p),
            Command::DeviceReset => {
                self.srv.migration.lock().device_reset();
                self.srv.device.reset();
                tracing::debug!("device reset");
                Ok(Vec::new())
            }
            Command::DeviceFeature => self.srv.migration.lock().device_feature(
                &self.srv.device,
                p,
                self.srv.opts.max_data_xfer_size,
            ),
            Command::MigDataRead => self
                .srv
                .migration
                .lock()
                .data_read(p, self.srv.opts.max_data_xfer_size),
            Command::MigDataWrite => self.srv.migration.lock().data_write(
                &self.srv.device,
                p,
                self.srv.opts.max_data_xfer_size,
            ),
            // Server-to-client commands.
            Command::DmaRead | Command::DmaWrite => Err(EINVAL),
            // Not implemented: IO fds, the old (v1) dirty-page interface.
            Command::DeviceGetRegionIoFds | Command::DirtyPages => {
                tracing::debug!("unsupported command");
                Err(ENOSYS)
            }
        }
    }

    fn version(&mut self, p: &[u8]) -> Handled {
        if self.negotiated {
            tracing::warn!("second VERSION refused");
            return Err(EINVAL);
        }
        if p.len() < wire::VERSION_SIZE {
            return Err(EINVAL);
        }
        let mut r = wire::Reader::new(p);
        let (major, minor) = (r.u16(), r.u16());
        if major != 0 {
            self.close = Some(ConnectionError::Version(major));
            return Err(ENOTSUP);
        }
        let mut write_multiple = false;
        let json = &p[wire::VERSION_SIZE..];
        if !json.is_empty() {
            let Some(end) = json.iter().position(|&b| b == 0) else {
                tracing::warn!("VERSION capabilities not NUL-terminated");
                return Err(EINVAL);
            };
            let v: serde_json::Value = serde_json::from_slice(&json[..end]).map_err(|e| {
                tracing::warn!(error = %e, "VERSION capabilities are not JSON");
                EINVAL
            })?;
            let Some(obj) = v.as_object() else {
                return Err(EINVAL);
            };
            if let Some(caps) = obj.get("capabilities") {
                let Some(caps) = caps.as_object() else {
                    return Err(EINVAL);
                };
                if let Some(pg) = caps.get("pgsizes") {
                    let pg = pg.as_u64().ok_or(EINVAL)?;
                    if pg & PGSIZES == 0 {
                        tracing::warn!(pgsizes = pg, "client does not support 4 KiB DMA pages");
                        return Err(EINVAL);
                    }
                }
                write_multiple = caps
                    .get("write_multiple")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(false);
                tracing::debug!(client_caps = %serde_json::Value::Object(caps.clone()), "client capabilities");
            }
        }
        let mut caps = serde_json::json!({
            "max_msg_fds": MAX_MSG_FDS,
            "max_data_xfer_size": self.srv.opts.max_data_xfer_size,
            "pgsizes": PGSIZES,
            "max_dma_maps": self.srv.opts.max_dma_maps,
        });
        if write_multiple {
            caps["write_multiple"] = serde_json::Value::Bool(true);
        }
        let json = serde_json::json!({ "capabilities": caps }).to_string();
        tracing::info!(client_minor = minor, caps = %json, "version negotiated: 0.0");
        self.negotiated = true;
        Ok(wire::encode_version(0, 0, &json))
    }

    fn get_info(&mut self, p: &[u8]) -> Handled {
        let req = DeviceInfo::parse(p).ok_or(EINVAL)?;
        if (req.argsz as usize) < wire::DEVICE_INFO_SIZE {
            return Err(EINVAL);
        }
        let info = DeviceInfo {
            argsz: wire::DEVICE_INFO_SIZE as u32,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: VFIO_PCI_NUM_REGIONS,
            num_irqs: VFIO_PCI_NUM_IRQS,
        };
        Ok(info.encode())
    }

    /// DEVICE_GET_REGION_INFO. A region the backend offers for mmap gets FLAG_MMAP, a sparse
    /// mmap capability and, with the reply that carries the capability, the descriptor
    /// (SCM_RIGHTS, in the reply's sendmsg). A request whose argsz cannot hold the capability
    /// gets the 32-byte info with the argsz it needs and no descriptor: QEMU asks twice
    /// (hw/vfio/device.c `vfio_device_get_region_info`) and closes a descriptor that came with
    /// the short reply. FLAG_CAPS is set only when the capability is there: QEMU refuses
    /// FLAG_CAPS with a cap_offset below 32 (hw/vfio-user/device.c
    /// `vfio_user_device_io_get_region_info`).
    ///
    /// Any FLAG_MMAP makes QEMU stop posting writes for the whole device
    /// (hw/vfio-user/device.c `vfio_user_get_region_info`): every trapped write then waits
    /// for its reply (docs/doorbells.md).
    fn region_info(&mut self, p: &[u8]) -> Handled {
        let req = wire::parse_region_info(p).ok_or(EINVAL)?;
        if (req.argsz as usize) < wire::REGION_INFO_SIZE || req.index >= VFIO_PCI_NUM_REGIONS {
            return Err(EINVAL);
        }
        let size = self.srv.region_size(req.index);
        let mut info = vfio_region_info {
            argsz: wire::REGION_INFO_SIZE as u32,
            flags: if size > 0 {
                VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
            } else {
                0
            },
            index: req.index,
            cap_offset: 0,
            size,
            offset: 0,
        };
        let mmap = (size > 0)
            .then(|| self.srv.device.region_mmap(req.index))
            .flatten()
            .filter(|m| mmap_is_valid(m, size));
        let Some(mmap) = mmap else {
            tracing::debug!(index = req.index, size, "region info");
            return Ok(wire::encode_region_info(&info));
        };
        let cap = wire::encode_sparse_mmap_cap(&mmap.areas);
        let full = wire::REGION_INFO_SIZE + cap.len();
        info.argsz = full as u32;
        info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
        info.offset = mmap.offset;
        if (req.argsz as usize) < full {
            tracing::debug!(
                index = req.index,
                size,
                need = full,
                "region info (argsz too small for the capability)"
            );
            return Ok(wire::encode_region_info(&info));
        }
        info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
        info.cap_offset = wire::REGION_INFO_SIZE as u32;
        let fd = mmap.fd.try_clone_to_owned().map_err(|e| {
            tracing::warn!(error = %e, "cannot duplicate the region's descriptor");
            Errno(e.raw_os_error().unwrap_or(libc::EMFILE))
        })?;
        self.reply_fd = Some(fd);
        tracing::info!(
            index = req.index,
            size,
            areas = ?mmap.areas,
            "region info: mmap offered"
        );
        let mut out = wire::encode_region_info(&info);
        out.extend_from_slice(&cap);
        Ok(out)
    }

    fn irq_info(&mut self, p: &[u8]) -> Handled {
        let req = wire::parse_irq_info(p).ok_or(EINVAL)?;
        if (req.argsz as usize) < wire::IRQ_INFO_SIZE {
            return Err(EINVAL);
        }
        let info = self.srv.irqs.info(req.index).ok_or(EINVAL)?;
        Ok(wire::encode_irq_info(&info))
    }

    fn set_irqs(&mut self, p: &[u8], fds: Vec<OwnedFd>) -> Handled {
        let req = wire::parse_irq_set(p).ok_or(EINVAL)?;
        let argsz = req.argsz as usize;
        if argsz < wire::IRQ_SET_SIZE || argsz > p.len() {
            tracing::warn!(
                argsz,
                len = p.len(),
                "SET_IRQS argsz does not match the payload"
            );
            return Err(EINVAL);
        }
        let dt = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        if dt != VFIO_IRQ_SET_DATA_EVENTFD && !fds.is_empty() {
            return Err(EINVAL);
        }
        let data = match dt {
            VFIO_IRQ_SET_DATA_NONE => IrqData::None,
            VFIO_IRQ_SET_DATA_BOOL => IrqData::Bool(&p[wire::IRQ_SET_SIZE..argsz]),
            VFIO_IRQ_SET_DATA_EVENTFD => {
                IrqData::Eventfds(fds.into_iter().map(File::from).collect())
            }
            _ => return Err(EINVAL),
        };
        tracing::debug!(
            index = req.index,
            flags = format_args!("{:#x}", req.flags),
            start = req.start,
            count = req.count,
            "set irqs"
        );
        self.srv
            .irqs
            .set_irqs(req.index, req.flags, req.start, req.count, data)
            .map_err(|e| {
                tracing::warn!(error = %e, "SET_IRQS refused");
                EINVAL
            })?;
        Ok(Vec::new())
    }

    fn dma_map(&mut self, p: &[u8], fds: Vec<OwnedFd>) -> Handled {
        let req = wire::parse_dma_map(p).ok_or(EINVAL)?;
        if (req.argsz as usize) < wire::DMA_MAP_SIZE || req.argsz as usize > p.len() {
            return Err(EINVAL);
        }
        if req.flags & !(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) != 0 {
            return Err(EINVAL);
        }
        if fds.len() > 1 {
            tracing::warn!(fds = fds.len(), "DMA_MAP with more than one descriptor");
            return Err(EINVAL);
        }
        let (iova, size, offset) = (req.iova, req.size, req.vaddr);
        if size == 0 || !(iova | size | offset).is_multiple_of(PGSIZES) {
            tracing::warn!(
                iova = format_args!("{iova:#x}"),
                size,
                offset,
                "DMA_MAP not 4 KiB aligned"
            );
            return Err(EINVAL);
        }
        if self.srv.device.mapping_count() >= self.srv.opts.max_dma_maps as usize {
            return Err(Errno(libc::ENOSPC));
        }
        let perms = Perms {
            read: req.flags & VFIO_DMA_MAP_FLAG_READ != 0,
            write: req.flags & VFIO_DMA_MAP_FLAG_WRITE != 0,
        };
        let backing = match fds.into_iter().next() {
            Some(fd) => Backing::Fd {
                file: File::from(fd),
                offset,
            },
            None if self.srv.device.is_own_mmap_area(iova, size) => {
                tracing::debug!(
                    iova = format_args!("{iova:#x}"),
                    size,
                    "DMA_MAP without fd of our own mmapped BAR area (peer-to-peer mapping)"
                );
                Backing::None
            }
            None => {
                if perms.write && !self.warned_no_fd {
                    self.warned_no_fd = true;
                    tracing::warn!(
                        iova = format_args!("{iova:#x}"),
                        size,
                        "DMA_MAP of writable memory without a file descriptor: the device cannot reach it and will fault \
                         (DEVICE_NEEDS_RESET) on first use. Start QEMU with shared guest RAM: \
                         -object memory-backend-memfd,id=mem,size=...,share=on -machine memory-backend=mem"
                    );
                } else {
                    tracing::debug!(
                        iova = format_args!("{iova:#x}"),
                        size,
                        "DMA_MAP without fd (ROM or unshared memory)"
                    );
                }
                Backing::None
            }
        };
        self.srv
            .device
            .dma_map(iova, size, perms, backing)
            .map_err(|e| {
                tracing::warn!(error = %e, "DMA_MAP refused");
                map_errno(&e)
            })?;
        Ok(Vec::new())
    }

    fn dma_unmap(&mut self, p: &[u8]) -> Handled {
        let req = wire::parse_dma_unmap(p).ok_or(EINVAL)?;
        if (req.argsz as usize) < wire::DMA_UNMAP_SIZE {
            return Err(EINVAL);
        }
        if req.flags & !wire::unmap_flags::ALL != 0 {
            // GET_DIRTY_BITMAP (dirty tracking through unmap) and VADDR are not supported.
            tracing::warn!(flags = req.flags, "DMA_UNMAP flags not supported");
            return Err(EINVAL);
        }
        if req.flags & wire::unmap_flags::ALL != 0 {
            let n = self.srv.device.dma_unmap_all();
            tracing::debug!(unmapped = n, "DMA_UNMAP all");
        } else {
            let (iova, size) = (req.iova, req.size);
            // Nothing mapped there succeeds (0 bytes), as the kernel's type1 IOMMU answers;
            // intel-iommu sends power-of-two unmaps covering the whole aperture.
            self.srv.device.dma_unmap(iova, size).map_err(|e| {
                tracing::warn!(error = %e, "DMA_UNMAP refused");
                map_errno(&e)
            })?;
        }
        let echo = vfio_iommu_type1_dma_unmap {
            argsz: wire::DMA_UNMAP_SIZE as u32,
            flags: req.flags,
            iova: req.iova,
            size: req.size,
            ..Default::default()
        };
        Ok(wire::encode_dma_unmap(&echo))
    }

    /// Checks a region access; returns the count as usize.
    fn check_access(&self, rw: &RegionRw) -> Result<usize, Errno> {
        if rw.count == 0 {
            return Err(EINVAL);
        }
        if rw.count > self.srv.opts.max_data_xfer_size {
            return Err(E2BIG);
        }
        let size = self.srv.region_size(rw.region);
        match rw.offset.checked_add(rw.count.into()) {
            Some(end) if size > 0 && end <= size => Ok(rw.count as usize),
            _ => {
                tracing::debug!(
                    region = rw.region,
                    offset = rw.offset,
                    count = rw.count,
                    size,
                    "access outside the region"
                );
                Err(EINVAL)
            }
        }
    }

    fn region_read(&mut self, p: &[u8]) -> Handled {
        let rw = RegionRw::parse(p).ok_or(EINVAL)?;
        let count = self.check_access(&rw)?;
        let mut out = rw.encode();
        out.resize(wire::REGION_RW_SIZE + count, 0);
        let dev = &self.srv.device;
        split_access(rw.offset, count, |off, r| {
            dev.region_read(
                rw.region,
                off,
                &mut out[wire::REGION_RW_SIZE + r.start..wire::REGION_RW_SIZE + r.end],
            )
        })
        .map_err(access_errno)?;
        tracing::trace!(
            region = rw.region,
            offset = format_args!("{:#x}", rw.offset),
            count,
            "read"
        );
        Ok(out)
    }

    fn region_write(&mut self, p: &[u8]) -> Handled {
        let rw = RegionRw::parse(p).ok_or(EINVAL)?;
        let count = self.check_access(&rw)?;
        if p.len() != wire::REGION_RW_SIZE + count {
            tracing::warn!(
                count,
                len = p.len(),
                "REGION_WRITE count does not match the payload"
            );
            return Err(EINVAL);
        }
        let data = &p[wire::REGION_RW_SIZE..];
        let dev = &self.srv.device;
        split_access(rw.offset, count, |off, r| {
            dev.region_write(rw.region, off, &data[r])
        })
        .map_err(access_errno)?;
        tracing::trace!(
            region = rw.region,
            offset = format_args!("{:#x}", rw.offset),
            count,
            "write"
        );
        Ok(rw.encode())
    }

    fn region_write_multi(&mut self, p: &[u8]) -> Handled {
        if p.len() < 8 {
            return Err(EINVAL);
        }
        let n = wire::Reader::new(p).u64();
        let room = ((p.len() - 8) / wire::WRITE_MULTI_ENTRY_SIZE) as u64;
        if n == 0 || n > room {
            return Err(EINVAL);
        }
        for e in p[8..]
            .chunks_exact(wire::WRITE_MULTI_ENTRY_SIZE)
            .take(n as usize)
        {
            let rw = RegionRw::parse(e).ok_or(EINVAL)?;
            if rw.count > 8 {
                return Err(EINVAL);
            }
            let count = self.check_access(&rw)?;
            let data = &e[wire::REGION_RW_SIZE..wire::REGION_RW_SIZE + count];
            let dev = &self.srv.device;
            split_access(rw.offset, count, |off, r| {
                dev.region_write(rw.region, off, &data[r])
            })
            .map_err(access_errno)?;
        }
        Ok(n.to_ne_bytes().to_vec())
    }
}

/// Cuts an access into pieces a register file takes: one piece if it is 1, 2, 4 or 8 bytes
/// and naturally aligned, otherwise naturally aligned pieces of at most 4 bytes (what a PCI
/// function sees of QEMU's whole-config-space read, for example).
fn split_access(
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), AccessError>,
) -> Result<(), AccessError> {
    if matches!(len, 1 | 2 | 4 | 8) && offset.is_multiple_of(len as u64) {
        return f(offset, 0..len);
    }
    let mut pos = 0;
    while pos < len {
        let off = offset + pos as u64;
        let n = [4usize, 2]
            .into_iter()
            .find(|&n| n <= len - pos && off.is_multiple_of(n as u64))
            .unwrap_or(1);
        f(off, pos..pos + n)?;
        pos += n;
    }
    Ok(())
}

/// A backend's mmap offer must be usable as QEMU uses it: 1 to [`wire::MAX_SPARSE_AREAS`]
/// page-aligned areas inside the region at a page-aligned file offset. Anything else is a
/// backend bug: logged, and the region is not offered for mmap.
fn mmap_is_valid(m: &RegionMmap<'_>, size: u64) -> bool {
    let aligned = |v: u64| v.is_multiple_of(PAGE_SIZE);
    let ok = !m.areas.is_empty()
        && m.areas.len() <= wire::MAX_SPARSE_AREAS
        && aligned(m.offset)
        && m.areas.iter().all(|a| {
            a.size > 0
                && aligned(a.offset)
                && aligned(a.size)
                && a.offset.checked_add(a.size).is_some_and(|end| end <= size)
        });
    if !ok {
        tracing::error!(offset = m.offset, areas = ?m.areas, size, "invalid mmap areas from the backend: not offered");
    }
    ok
}

fn access_errno(e: AccessError) -> Errno {
    tracing::debug!(error = %e, "region access refused");
    EINVAL
}

fn map_errno(e: &MapError) -> Errno {
    Errno(match e {
        MapError::ZeroSize | MapError::AddressOverflow { .. } => libc::EINVAL,
        MapError::Overlap { .. } => libc::EEXIST,
        MapError::PartialUnmap { .. } => libc::EINVAL,
        MapError::TooManyFiles { .. } => libc::ENOSPC,
        MapError::Mmap { source, .. } => source.raw_os_error().unwrap_or(libc::EINVAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(offset: u64, len: usize) -> Vec<(u64, usize)> {
        let mut v = Vec::new();
        split_access(offset, len, |o, r| {
            v.push((o, r.len()));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn accesses_are_split_naturally() {
        assert_eq!(pieces(0x10, 8), vec![(0x10, 8)]);
        assert_eq!(pieces(0x12, 2), vec![(0x12, 2)]);
        assert_eq!(pieces(0, 12), vec![(0, 4), (4, 4), (8, 4)]);
        assert_eq!(pieces(1, 6), vec![(1, 1), (2, 2), (4, 2), (6, 1)]);
        assert_eq!(pieces(0, 4096).len(), 1024);
    }
}
