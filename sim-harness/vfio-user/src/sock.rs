//! Unix-socket plumbing shared by the vfio-user server, its client and the ports: messages
//! with file descriptors (`SCM_RIGHTS`), and [`Stop`], an eventfd every blocking loop polls so
//! that SIGINT/SIGTERM (or a test) can end it.

use std::fs::File;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Most descriptors one vfio-user message may carry (our `max_msg_fds`, QEMU's ceiling too).
pub const MAX_MSG_FDS: usize = 16;

/// Control-buffer room: enough for [`MAX_MSG_FDS`] descriptors. More than that and the kernel
/// sets `MSG_CTRUNC` and closes the excess itself.
const CMSG_WORDS: usize = 16;

/// What one `recvmsg` returned.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read (0 = the peer closed the connection).
    pub len: usize,
    /// Descriptors that came with those bytes, owned (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The sender passed more descriptors than fit: the kernel dropped (closed) the rest.
    pub truncated: bool,
    /// Some descriptors could not be installed in our table although there was room for them
    /// in the control buffer: we are out of descriptors (EMFILE/ENFILE). The kernel reports
    /// both cases as MSG_CTRUNC (net/core/scm.c, scm_detach_fds: it stops at the first
    /// descriptor it cannot install); fewer than [`MAX_MSG_FDS`] received tells them apart.
    pub fds_lost: bool,
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Reads into `buf` with `recvmsg`, collecting `SCM_RIGHTS` descriptors (close-on-exec).
/// `flags` are extra `recvmsg` flags (`MSG_DONTWAIT`). Retries on `EINTR`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Received> {
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; CMSG_WORDS];
    debug_assert!(cmsg_space(MAX_MSG_FDS) <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; an all-zero value is a valid empty header.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_MSG_FDS) as _;
    // The kernel writes msg back only when recvmsg succeeds, so an EINTR retry reuses it.
    // SAFETY: `msg` points at `iov` (which covers `buf`, valid for writes of its length) and
    // at `control` (valid for msg_controllen bytes); both outlive the call.
    let n = retry_eintr(|| unsafe {
        libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags)
    })?;
    let mut out = Received {
        len: n,
        fds: Vec::new(),
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds_lost: false,
    };
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_FIRSTHDR/NXTHDR only walk
    // inside that buffer and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points inside `control` (see above).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is pure arithmetic.
            let data_len = hdr.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at `data_len` bytes of this control message.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count`, inside the message; the read is unaligned-safe.
                let fd = unsafe { data.add(i).read_unaligned() };
                if fd >= 0 {
                    // SAFETY: SCM_RIGHTS installed `fd` in our table just now; nobody else
                    // owns it, so wrapping it transfers ownership here (closed on drop).
                    out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if out.truncated && out.fds.len() < MAX_MSG_FDS {
        out.fds_lost = true;
        out.truncated = false;
    }
    Ok(out)
}

/// Sends `bufs` with `fds` attached (to the first byte) using `sendmsg(MSG_NOSIGNAL | flags)`;
/// returns bytes sent (possibly fewer than asked, like `write`).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8).max(1)];
    // SAFETY: msghdr is plain data; an all-zero value is a valid empty header.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    // IoSlice is ABI-compatible with iovec (documented by std).
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: msg_control points at a zeroed buffer of msg_controllen bytes, so
        // CMSG_FIRSTHDR returns its start.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: `cmsg` is the start of `control`, which holds CMSG_SPACE(fds) bytes: room
        // for the header and every descriptor written below.
        unsafe {
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len =
                libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as libc::c_uint) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: every pointer in `msg` refers to live buffers (`bufs`, `control`) for the call.
    retry_eintr(|| unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | flags) })
}

/// Runs a system call until it is not interrupted by a signal: its result as a byte count or
/// the errno it failed with.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends all of `data` (blocking), the descriptors with the first chunk.
pub fn send_all_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut sent = send_with_fds(sock, &[IoSlice::new(data)], fds, 0)?;
    while sent < data.len() {
        let n = send_with_fds(sock, &[IoSlice::new(&data[sent..])], &[], 0)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// What `Stop::wait` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The watched descriptor is ready.
    Io,
    /// Stop was triggered.
    Stopped,
    /// The timeout passed.
    Timeout,
}

/// What [`Stop::wait_either`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Either {
    /// The first descriptor is ready, the stop was triggered, or the timeout passed.
    First(Ready),
    /// The second descriptor is readable (and the first is not ready).
    Second,
}

/// The process's soft RLIMIT_NOFILE (0 if it cannot be read).
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    r.rlim_cur
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (getrlimit(2)); returns (soft, hard) after.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        r = want;
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// A stop signal that blocking loops poll next to their socket: an eventfd, so a signal
/// handler can trigger it (`write` is async-signal-safe) and every poller wakes at once.
#[derive(Debug)]
pub struct Stop {
    efd: OwnedFd,
    flag: AtomicBool,
}

impl Stop {
    /// A new, untriggered stop.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this descriptor; we are its only owner.
        Ok(Stop {
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            flag: AtomicBool::new(false),
        })
    }

    /// Triggers it (idempotent). Everything polling it wakes up and sees [`Ready::Stopped`].
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // Nobody reads the counter: it stays readable. A full counter (EAGAIN) is fine too.
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to an eventfd we own.
        let _ = unsafe { libc::write(self.efd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Whether it was triggered (by [`Stop::trigger`] or a signal handler writing the fd).
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
            || poll_in(&[self.efd.as_fd()], Some(Duration::ZERO))
                .map(|r| r[0])
                .unwrap_or(false)
    }

    /// The eventfd itself (for a signal handler: write 8 bytes to it).
    pub fn raw_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Waits until `fd` is readable (or has hung up), the stop is triggered, or `timeout`
    /// passes. Stop wins over readiness.
    pub fn wait_readable(
        &self,
        fd: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> io::Result<Ready> {
        self.wait(fd, libc::POLLIN, timeout)
    }

    /// Like [`Stop::wait_readable`], for writability.
    pub fn wait_writable(
        &self,
        fd: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> io::Result<Ready> {
        self.wait(fd, libc::POLLOUT, timeout)
    }

    /// Waits for `events` on `first`, the stop, `timeout`, or `second` becoming readable (a
    /// listening socket). Stop wins, then `first`.
    pub fn wait_either(
        &self,
        first: BorrowedFd<'_>,
        events: libc::c_short,
        second: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> io::Result<Either> {
        if self.flag.load(Ordering::SeqCst) {
            return Ok(Either::First(Ready::Stopped));
        }
        let mut fds = [
            libc::pollfd {
                fd: first.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: second.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = poll(&mut fds, timeout)?;
        if fds[1].revents != 0 {
            self.flag.store(true, Ordering::SeqCst);
            return Ok(Either::First(Ready::Stopped));
        }
        if fds[0].revents != 0 {
            return Ok(Either::First(Ready::Io));
        }
        if n == 0 {
            return Ok(Either::First(Ready::Timeout));
        }
        Ok(Either::Second)
    }

    fn wait(
        &self,
        fd: BorrowedFd<'_>,
        events: libc::c_short,
        timeout: Option<Duration>,
    ) -> io::Result<Ready> {
        if self.flag.load(Ordering::SeqCst) {
            return Ok(Ready::Stopped);
        }
        let mut fds = [
            libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = poll(&mut fds, timeout)?;
        if fds[1].revents != 0 {
            self.flag.store(true, Ordering::SeqCst);
            return Ok(Ready::Stopped);
        }
        Ok(if n == 0 { Ready::Timeout } else { Ready::Io })
    }
}

impl AsFd for Stop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }
}

fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd for the call.
    retry_eintr(|| unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } as isize)
}

/// Which of `fds` are readable (or hung up) within `timeout`.
pub fn poll_in(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    poll(&mut p, timeout)?;
    Ok(p.iter().map(|p| p.revents != 0).collect())
}

/// Whether `fd` becomes writable within `timeout`.
pub fn poll_out(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    }];
    poll(&mut p, Some(timeout))?;
    Ok(p[0].revents & libc::POLLOUT != 0)
}

/// A new eventfd (close-on-exec, non-blocking), as a `File` for reads and writes.
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd has no memory-safety preconditions.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: eventfd just returned this descriptor; the File becomes its only owner.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Whether `fd` is an eventfd (what SET_IRQS must carry): checked through /proc/self/fd.
pub fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

/// Number of open descriptors of this process (tests count leaks with it).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Why a listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket {0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotSocket(PathBuf),
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A non-blocking listening Unix stream socket at `path`, replacing a stale socket file left
/// by a dead server (one nobody accepts on) but never a live one or a file that is not a
/// socket.
///
/// The socket is bound and listening under a temporary name in the same directory and then
/// renamed into place, so a client that sees the file never gets ECONNREFUSED. Non-blocking: a
/// connection that went away between poll and accept must not block the accept loop (accepted
/// streams do not inherit O_NONBLOCK on Linux, accept(2)). `mode` sets the socket file's
/// permissions before it appears under `path` (None: as the umask leaves them).
pub fn bind_listener(path: &Path, mode: Option<u32>) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotSocket(path.into()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.into()));
        }
        tracing::info!(path = %path.display(), "removing stale socket");
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| BindError::Bind {
        path: path.into(),
        source,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = name.map(|n| path.with_file_name(format!(".{n}.{}.tmp", std::process::id())));
    let listener = match tmp {
        // sockaddr_un.sun_path holds 108 bytes including the NUL (unix(7)).
        Some(tmp) if tmp.as_os_str().len() < 108 => {
            let _ = std::fs::remove_file(&tmp);
            let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
            let placed = mode
                .map_or(Ok(()), |m| {
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m))
                })
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&tmp);
                return Err(bind_err(e));
            }
            listener
        }
        _ => {
            let listener = UnixListener::bind(path).map_err(bind_err)?;
            if let Some(m) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(m))
                    .map_err(bind_err)?;
            }
            listener
        }
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}
