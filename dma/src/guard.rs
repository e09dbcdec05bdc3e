//! Contained SIGBUS: guest memory whose backing vanished becomes a DMA fault, not a crash.
//!
//! A `MAP_SHARED` mapping of a file raises SIGBUS when the device touches a page the file no
//! longer has (mmap(2), "Errors: SIGBUS"): the client `ftruncate`d its memfd below a buffer
//! after DMA_MAP, or the page is a hole of a sparse file whose filesystem cannot allocate it
//! (a full tmpfs, an exhausted hugetlbfs pool: the fault path's ENOSPC becomes SIGBUS). The
//! map-time size check sees neither, because both happen after it.
//!
//! Why this mechanism:
//! - Seals (memfd_create(2), `F_SEAL_SHRINK`) make truncation impossible and are checked at map
//!   time (counted in [`crate::MapStats::shrink_sealed`]; QEMU's `memory-backend-memfd` seals
//!   by default, backends/hostmem-memfd.c). They cannot cover the rest: a sealed memfd may
//!   still be sparse, and QEMU's file backends (hugetlbfs, tmpfs paths) are not memfds, so
//!   refusing unsealed maps would refuse real VMMs. Seals are therefore only a count, and every
//!   fd-backed mmap is guarded the same way.
//! - `sigsetjmp`/`siglongjmp` around each copy (QEMU's prealloc path, util/oslib-posix.c) would
//!   unwind through Rust frames, which is undefined behaviour, and costs a `sigsetjmp` per access.
//! - Replace-and-flag (systemd's journal reader does this for the same reason:
//!   src/basic/sigbus.c, `sigbus_handler`): the handler looks the faulting address up in a
//!   fixed table of guarded mmaps (atomics only, no locks, no allocation), marks that mmap
//!   poisoned, bumps a global epoch, then maps anonymous zero memory `MAP_FIXED` over the
//!   whole mmap so the interrupted copy completes. The DMA engine loads
//!   that epoch after each access (one relaxed load behind an Acquire fence, which is
//!   compiler-only on x86); when it moved, the engine drops its IOTLB and re-translates the
//!   access, and translation refuses poisoned mmaps with
//!   [`crate::DmaFault::BackingLost`]: the device sets DEVICE_NEEDS_RESET, the read's zeros are
//!   never used, and the write went to private memory nobody sees. The mapping stays unusable
//!   (every later access faults the same way) until the client unmaps it; a poisoned mmap is
//!   never reused for a new DMA_MAP. `mmap` is not on signal-safety(7)'s list, but it is a
//!   plain system call with no user-space state (glibc's wrapper is a syscall), which is why
//!   systemd relies on it here too.
//! - A SIGBUS anywhere else (not a guarded mmap, not `BUS_ADRERR`, or sent with kill(2)) is not
//!   ours: the previous disposition is restored and the signal re-delivered, so the process
//!   still dies of it as before.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Guarded mmaps at once (one per backing file mapped, so QEMU needs a handful).
pub(crate) const MAX_GUARDED: usize = 4096;

struct Slot {
    /// Start address; 0 = free.
    start: AtomicUsize,
    len: AtomicUsize,
    /// Host address of the first contained fault + 1 (0 = healthy).
    poisoned: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    poisoned: AtomicUsize::new(0),
};

static SLOTS: [Slot; MAX_GUARDED] = [FREE; MAX_GUARDED];
/// Slots ever used (the handler scans `SLOTS[..HIGH]`).
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Contained faults so far (engines compare it after every access).
static EPOCH: AtomicU64 = AtomicU64::new(0);
static OLD_ACTION: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

/// Number of SIGBUS faults contained so far (process-wide).
pub fn contained_sigbus() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// The contained-fault epoch, loaded after the guest-memory access it vouches for: the
/// Acquire fence keeps that access's loads before this load (free on x86), so an access that
/// read replaced memory sees the epoch the handler bumped before replacing it.
#[inline(always)]
pub(crate) fn epoch() -> u64 {
    std::sync::atomic::fence(Ordering::Acquire);
    EPOCH.load(Ordering::Relaxed)
}

/// Installs the SIGBUS handler once per process (called by every `AddressSpace::new`).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sigaction is plain data; all-zero is a valid empty action.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigbus as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        // SAFETY: `act.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // Saved before the handler can run, so it always finds the previous action.
        // SAFETY: querying the current action into a valid out-pointer.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            tracing::error!(error = %io::Error::last_os_error(), "cannot read the SIGBUS action");
            return;
        }
        let _ = OLD_ACTION.set(old);
        // SAFETY: installs a handler that only uses atomics and raw system calls.
        if unsafe { libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) } != 0 {
            tracing::error!(error = %io::Error::last_os_error(), "cannot install the SIGBUS guard");
        }
    });
}

/// A guarded mmap: registered while alive (declare it before the mmap it guards in a struct,
/// so it is unregistered before the munmap).
#[derive(Debug)]
pub(crate) struct Guarded {
    slot: usize,
}

impl Guarded {
    /// Registers `[start, start + len)`; `None` when [`MAX_GUARDED`] mmaps are guarded already.
    pub(crate) fn new(start: usize, len: usize) -> Option<Guarded> {
        for (i, s) in SLOTS.iter().enumerate() {
            if s.start.load(Ordering::Relaxed) != 0 {
                continue;
            }
            // Claim with a sentinel that no fault address can match, then publish.
            if s.start
                .compare_exchange(0, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                s.poisoned.store(0, Ordering::Relaxed);
                s.len.store(len, Ordering::Relaxed);
                s.start.store(start, Ordering::Release);
                HIGH.fetch_max(i + 1, Ordering::AcqRel);
                return Some(Guarded { slot: i });
            }
        }
        None
    }

    /// The host address of the first contained fault, if the mmap was poisoned.
    #[inline]
    pub(crate) fn poisoned(&self) -> Option<usize> {
        SLOTS[self.slot]
            .poisoned
            .load(Ordering::Acquire)
            .checked_sub(1)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        SLOTS[self.slot].start.store(0, Ordering::Release);
    }
}

/// The handler. Async-signal-safe: atomics, `mmap`, `sigaction`, `raise` only.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR && contain(addr) {
        return;
    }
    // Not ours: back to the previous disposition; a fault re-executes and is delivered under
    // it, a sent signal is raised again (it is blocked until we return).
    let dfl = || {
        // SAFETY: all-zero sigaction is SIG_DFL with an empty mask.
        let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
        a.sa_sigaction = libc::SIG_DFL;
        a
    };
    let old = OLD_ACTION.get().copied().unwrap_or_else(dfl);
    // SAFETY: restoring a saved (or the default) action; sigaction is async-signal-safe.
    unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    if code <= 0 {
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(sig) };
    }
}

/// Poisons the guarded mmap holding `addr`; false if none does.
fn contain(addr: usize) -> bool {
    let high = HIGH.load(Ordering::Acquire);
    for s in &SLOTS[..high] {
        let start = s.start.load(Ordering::Acquire);
        if start == 0 || start == usize::MAX || addr < start {
            continue;
        }
        let len = s.len.load(Ordering::Relaxed);
        if addr - start >= len || s.start.load(Ordering::Acquire) != start {
            continue;
        }
        // Poisoned and counted before the memory is replaced: an access on another thread
        // that reads the replacement then always sees the epoch move (see `epoch`).
        let _ = s
            .poisoned
            .compare_exchange(0, addr + 1, Ordering::AcqRel, Ordering::Relaxed);
        EPOCH.fetch_add(1, Ordering::AcqRel);
        // SAFETY: `[start, start + len)` is a live mmap of ours (registered until just before
        // its munmap, and the faulting thread is inside it); replacing it with private
        // anonymous memory only changes what that mapping shows. No other object lives there.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        return p as usize == start;
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::{contained_sigbus, AddressSpace, Backing, DmaEngine, DmaFault, DmaKind, Perms};
    use std::fs::File;
    use std::sync::Arc;

    /// A memfd (not the driver-side `SharedMemory`, whose own mmap would fault after a
    /// truncation) of `size` bytes.
    fn memfd(size: u64) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: valid NUL-terminated name, valid flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guard".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: memfd_create just returned it; nothing else owns it.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    fn map(space: &AddressSpace, iova: u64, size: u64, file: &File) {
        let b = Backing::Fd {
            file: file.try_clone().unwrap(),
            offset: 0,
        };
        space.map(iova, size, Perms::RW, b).unwrap();
    }

    fn lost(r: Result<(), DmaFault>) -> DmaFault {
        match r {
            Err(f @ DmaFault::BackingLost { .. }) => f,
            other => panic!("expected BackingLost, got {other:?}"),
        }
    }

    /// Reproduction 1: the client truncates its memfd to 0 after DMA_MAP.
    #[test]
    fn truncated_to_zero_is_a_dma_fault() {
        let space = Arc::new(AddressSpace::new());
        let f = memfd(0x10000);
        map(&space, 0x10000, 0x10000, &f);
        let other = memfd(0x1000);
        map(&space, 0x100000, 0x1000, &other);
        let mut eng = DmaEngine::new(space.clone(), 64);
        eng.write(0x10100, b"before", DmaKind::PacketWrite).unwrap();
        let mut b = [0u8; 6];
        eng.read(0x10100, &mut b, DmaKind::PacketRead).unwrap();
        assert_eq!(&b, b"before");
        let before = contained_sigbus();
        f.set_len(0).unwrap();
        // IOTLB hit path, then every entry point: all refused, nothing crashes.
        let e = lost(eng.read(0x10100, &mut b, DmaKind::PacketRead));
        assert_eq!(
            e,
            DmaFault::BackingLost {
                iova: 0x10100,
                len: 6,
                mapping_iova: 0x10000,
                mapping_size: 0x10000
            }
        );
        assert!(contained_sigbus() > before);
        lost(eng.write(0x1f000, &[1; 0x800], DmaKind::PacketWrite));
        lost(eng.read_u16(0x10002, DmaKind::RingRead).map(drop));
        lost(eng.publish_u16(0x10004, 7, DmaKind::RingWrite));
        assert!(eng.iommu_stats().faults_backing_lost >= 4);
        // Another file's mapping is unaffected.
        eng.write(0x100000, b"ok", DmaKind::PacketWrite).unwrap();
        // A second engine (another device on the same space) is refused too.
        let mut eng2 = DmaEngine::new(space.clone(), 64);
        lost(eng2.read(0x10000, &mut b, DmaKind::PacketRead));
        // The client unmaps, grows the file back and maps again: a fresh mmap, usable.
        space.unmap(0x10000, 0x10000).unwrap();
        f.set_len(0x10000).unwrap();
        map(&space, 0x10000, 0x10000, &f);
        eng.write(0x10100, b"after!", DmaKind::PacketWrite).unwrap();
        eng.read(0x10100, &mut b, DmaKind::PacketRead).unwrap();
        assert_eq!(&b, b"after!");
    }

    /// Reproduction 2: truncated just below the buffers: the ring page still works, the
    /// buffers and a dirty log living past the new end fault.
    #[test]
    fn truncated_below_the_buffers() {
        let space = Arc::new(AddressSpace::new());
        let f = memfd(0x20000);
        map(&space, 0, 0x20000, &f);
        let mut eng = DmaEngine::new(space.clone(), 64);
        eng.set_logging(Some(crate::LogConfig {
            base: 0x1f000,
            end: 0x20000,
            granularity: crate::PAGE_SIZE,
        }));
        eng.write(0x8000, &[5; 64], DmaKind::PacketWrite).unwrap();
        eng.flush_log().unwrap();
        f.set_len(0x8000).unwrap();
        // The buffer page lies past EOF now.
        let mut buf = [0u8; 64];
        lost(eng.read(0x8000, &mut buf, DmaKind::PacketRead));
        // The whole mapping is poisoned once one page was lost: the ring page faults too.
        lost(eng.read_u16(0x0, DmaKind::RingRead).map(drop));
    }

    /// A dirty log in its own file that is truncated: the log flush faults.
    #[test]
    fn truncated_log_faults_the_flush() {
        let space = Arc::new(AddressSpace::new());
        let ram = memfd(0x10000);
        map(&space, 0, 0x10000, &ram);
        let log = memfd(0x1000);
        map(&space, 0x1000_0000, 0x1000, &log);
        let mut eng = DmaEngine::new(space.clone(), 64);
        eng.set_logging(Some(crate::LogConfig {
            base: 0x1000_0000,
            end: 0x1000_1000,
            granularity: crate::PAGE_SIZE,
        }));
        log.set_len(0).unwrap();
        eng.write(0x3000, &[1; 16], DmaKind::PacketWrite).unwrap();
        lost(eng.flush_log());
        assert!(eng.log_stats().faults >= 1);
    }

    /// Reproduction 3: a sparse file on a full tmpfs; the device writes into a hole.
    /// Mounting needs root (CI runs the tests as root): this test fails, loudly, without it.
    #[test]
    fn hole_on_a_full_tmpfs_is_a_dma_fault() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test mounts a small tmpfs and must run as root (CI does)"
        );
        let dir = std::env::temp_dir().join(format!("vdpa-guard-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "vdpa-guard"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed: {st}");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _u = Unmount(dir.clone());
        // 1 MiB sparse file on a 256 KiB filesystem, then fill the filesystem.
        let sparse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("ram"))
            .unwrap();
        sparse.set_len(0x10_0000).unwrap();
        let mut filler = File::create(dir.join("filler")).unwrap();
        let chunk = vec![0xaau8; 4096];
        loop {
            use std::io::Write;
            match filler.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let space = Arc::new(AddressSpace::new());
        map(&space, 0, 0x10_0000, &sparse);
        let mut eng = DmaEngine::new(space.clone(), 64);
        let before = contained_sigbus();
        // Any access to a hole of a shared tmpfs mapping allocates a page: there is no room.
        let e = lost(eng.write(0x8_0000, &[1; 64], DmaKind::PacketWrite));
        assert!(
            matches!(
                e,
                DmaFault::BackingLost {
                    mapping_size: 0x10_0000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(contained_sigbus() > before);
    }

    /// A SIGBUS outside guest memory is not swallowed: the process still dies of it. Runs
    /// itself as a child process that does exactly that.
    #[test]
    fn sigbus_elsewhere_still_kills() {
        const CHILD: &str = "VDPA_GUARD_SIGBUS_CHILD";
        if std::env::var_os(CHILD).is_some() {
            // No core file from the SIGBUS this child dies of.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit reads one rlimit from a live local.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
            let _space = AddressSpace::new(); // installs the guard
            let f = memfd(0x1000);
            let shm = vm_memory::mmap::MmapRegion::<()>::from_file(
                vm_memory::FileOffset::new(f.try_clone().unwrap(), 0),
                0x1000,
            )
            .unwrap();
            f.set_len(0).unwrap();
            // SAFETY: in bounds of the region; the point is the SIGBUS it raises.
            let v = unsafe { std::ptr::read_volatile(shm.as_ptr()) };
            eprintln!("child survived a SIGBUS outside guest memory (read {v})");
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "guard::tests::sigbus_elsewhere_still_kills",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGBUS),
            "child: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// More distinct backing files than the guard can watch: a clear error (ENOSPC on the
    /// wire), nothing half-mapped, and room again after an unmap. Runs in a child process so
    /// that filling the process-wide table cannot disturb other tests.
    #[test]
    fn too_many_backing_files_is_a_clear_error() {
        const CHILD: &str = "VDPA_GUARD_FILES_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "guard::tests::too_many_backing_files_is_a_clear_error",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{:?}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let space = AddressSpace::new();
        let n = super::MAX_GUARDED as u64;
        for i in 0..n {
            map(&space, i * 0x1000, 0x1000, &memfd(0x1000));
        }
        let e = space
            .map(
                n * 0x1000,
                0x1000,
                Perms::RW,
                Backing::Fd {
                    file: memfd(0x1000),
                    offset: 0,
                },
            )
            .unwrap_err();
        assert!(
            matches!(e, crate::MapError::TooManyFiles { limit, .. } if limit == super::MAX_GUARDED),
            "{e}"
        );
        assert!(e.to_string().contains("distinct backing files"), "{e}");
        assert_eq!(space.len() as u64, n);
        space.unmap(0, 0x1000).unwrap();
        map(&space, n * 0x1000, 0x1000, &memfd(0x1000));
    }
}
