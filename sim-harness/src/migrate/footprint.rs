//! What a `migrate` run needs of the machine, checked before it starts, and what it used.
//!
//! Guest RAM is allocated lazily on both sides (sparse memfds: a page holds memory once it is
//! written, and neither the copy nor the verification touches the others), so a run needs
//! memory for the guest's working set twice (source and destination) plus the dirty-tracking
//! bitmaps, which grow with `--memory`; and address space for every mapping of guest RAM, which
//! is `--memory` each.

use crate::dirty_bitmap;
use dma::WriteTrace;

/// Mappings of guest RAM a run holds at once: the driver's and the device's, on the source
/// and on the destination.
pub const RAM_MAPPINGS: u64 = 4;

/// Reads a `kB` field (e.g. `VmHWM`) of a `/proc` status-style text, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory the kernel says can be allocated without swapping (MemAvailable), in bytes.
pub fn mem_available() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable",
    )
}

/// Peak resident set size of this process so far (VmHWM in /proc/self/status), in bytes.
pub fn peak_rss() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// Reserves `bytes` of address space without memory (PROT_NONE, MAP_NORESERVE) and gives it
/// back: whether the run's mappings of guest RAM can exist at all (the user address space
/// and RLIMIT_AS bound them).
pub fn reserve_address_space(bytes: u64) -> std::io::Result<()> {
    let len = usize::try_from(bytes).map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: an anonymous, inaccessible mapping at an address the kernel picks; nothing
    // reads or writes it and it is unmapped right away with the same length.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        libc::munmap(p, len);
    }
    Ok(())
}

/// Memory a run needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// What the guest can touch: the driver's allocations (rings, buffers). Held twice.
    pub working_set: u64,
    /// The device's dirty log (the harvest reads all of it) and the two write traces.
    pub tracking: u64,
}

impl Needs {
    /// For guest RAM of `memory` bytes at IOVA `base` whose driver allocated `working_set`.
    pub fn new(memory: u64, base: u64, working_set: u64) -> Self {
        let top = base.saturating_add(memory);
        Needs {
            working_set,
            tracking: dirty_bitmap::len_for(top) + 2 * WriteTrace::dense_bytes(top),
        }
    }

    /// Bytes in all: the working set on both sides plus the tracking.
    pub fn total(&self) -> u64 {
        self.working_set
            .saturating_mul(2)
            .saturating_add(self.tracking)
    }

    /// Whether the run fits in `available` bytes.
    pub fn fits(&self, available: u64) -> bool {
        self.total() <= available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let t = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(kib_field(t, "VmHWM"), Some(2 << 20));
        assert_eq!(kib_field(t, "VmRSS"), Some(1 << 20));
        assert_eq!(kib_field(t, "VmHW"), None);
        assert_eq!(kib_field(t, "Name"), None);
        // This process is running, so it has a peak RSS, and the machine some memory.
        assert!(peak_rss().is_some_and(|b| b > 0));
        assert!(mem_available().is_some_and(|b| b > 0));
    }

    #[test]
    fn needs_grow_with_the_working_set_not_the_ram() {
        const G: u64 = 1 << 30;
        let base = 0x4000_0000;
        let small = Needs::new(64 * G, base, 4 << 20);
        // 65 GiB of IOVA: a 2 MiB + 8 B log (whole words) and two 2 MiB traces (capped).
        assert_eq!(small.tracking, (65 * G / 4096 / 8) + 2 * (2 << 20));
        assert_eq!(small.total(), (8 << 20) + small.tracking);
        assert!(
            small.fits(64 << 20),
            "64 GiB of RAM, 4 MiB touched: fits in 64 MiB"
        );
        assert!(!small.fits(small.total() - 1));
        // The working set is what counts twice.
        let busy = Needs::new(64 * G, base, 10 * G);
        assert!(!busy.fits(20 * G) && busy.fits(21 * G));
        assert_eq!(Needs::new(u64::MAX, base, u64::MAX).total(), u64::MAX);
    }

    #[test]
    fn address_space_reservation() {
        reserve_address_space(0).unwrap();
        reserve_address_space(256 << 30).unwrap();
        // More than any 64-bit user address space.
        assert!(reserve_address_space(1 << 62).is_err());
    }
}
