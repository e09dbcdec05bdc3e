//! CPU cache hints for memory another core wrote last: the device's DMA engine
//! ([`crate::DmaEngine::prefetch`]) and the driver model ([`crate::SharedMemory::prefetch_for_write`])
//! ask for the lines they are about to touch, so the cross-core transfers of a batch overlap
//! instead of each access waiting for its own. Hints only: they never fault and change no
//! memory, whatever the address.

const CACHE_LINE: usize = 64;

/// Hints every cache line of `[p, p + len)` (`write`: for writing).
#[inline(always)]
pub(crate) fn lines(p: *const u8, len: usize, write: bool) {
    let end = p as usize + len;
    let mut at = p as usize & !(CACHE_LINE - 1);
    while at < end {
        line(at as *const u8, write);
        at += CACHE_LINE;
    }
}

#[inline(always)]
fn line(p: *const u8, write: bool) {
    #[cfg(target_arch = "x86_64")]
    if write {
        // SAFETY: PREFETCHW is a hint: it never faults and changes no memory or register,
        // whatever the address. Its opcode (0F 0D /1) executes as a no-op on x86_64 CPUs that
        // lack it (Intel before Broadwell), which is why it is spelled in asm rather than by
        // `_mm_prefetch::<_MM_HINT_ET0>`, which needs the `prfchw` target feature at build time.
        unsafe {
            std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
        };
    } else {
        // SAFETY: PREFETCHT0 is a hint: it never faults and does not change memory, whatever
        // the address (SSE, baseline on x86_64).
        unsafe { std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, write);
}
