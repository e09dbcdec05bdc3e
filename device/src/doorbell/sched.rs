//! How the doorbell engine thread asks the kernel to run it promptly.
//!
//! A kick is noticed when the engine's sleep ends *and the thread gets a CPU*. Under QEMU's TCG
//! a vCPU thread keeps one core busy, and on a shared 2-core host the other core is rarely
//! idle: a normal (SCHED_OTHER) thread woken by its timer then waits for the running task's
//! slice to end. Measured with `vdpa-emu bench doorbells` on such a host: the 500 us sleep
//! before a kick took about 2 ms, and a kick 200 us after the previous frame waited 1.5 ms (p50)
//! with normal scheduling, 0.19 ms with a 100 us EEVDF slice, 0.10 ms with SCHED_FIFO.
//!
//! But the guest runs on the same two cores: a real-time engine preempts the vCPU thread at
//! every wake-up, and in the e2e suite the guests' throughput fell to 0.2-0.8x of QEMU's
//! virtio-net-pci (two runs) where normal scheduling gave 0.5-1.9x; the short slice measured no
//! better than normal (docs/doorbells.md). So the default is [`SchedRequest::Normal`], and the
//! others are there for hosts with cores to spare (`serve --doorbell-sched`):
//!
//! 1. [`EngineSched::Fifo`] ([`SchedRequest::Prompt`]): SCHED_FIFO priority 1, the lowest
//!    real-time priority (needs CAP_SYS_NICE or RLIMIT_RTPRIO), else the slice. The engine
//!    sleeps between passes and the kernel's real-time throttling (sched_rt_runtime_us) bounds
//!    it anyway; the work it does when it runs (a queue's pending chains) is what a trapped
//!    doorbell does on the socket thread.
//! 2. [`EngineSched::Slice`]: a 100 us custom slice for SCHED_OTHER (sched_setattr with
//!    sched_runtime, Linux 6.12+ EEVDF): an earlier deadline, so the woken engine preempts
//!    sooner, unprivileged.
//! 3. [`EngineSched::Normal`]: what the thread had.

/// The scheduling the engine thread got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineSched {
    /// SCHED_FIFO, priority 1.
    Fifo,
    /// SCHED_OTHER with a 100 us slice (EEVDF custom slice).
    Slice,
    /// Unchanged.
    #[default]
    Normal,
}

impl EngineSched {
    /// `fifo` / `slice` / `normal`.
    pub fn name(self) -> &'static str {
        match self {
            EngineSched::Fifo => "fifo",
            EngineSched::Slice => "slice",
            EngineSched::Normal => "normal",
        }
    }
}

/// What to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedRequest {
    /// Real-time if allowed, else a short slice, else nothing.
    Prompt,
    /// A short slice if the kernel has custom slices, else nothing (no real-time).
    Slice,
    /// Leave the thread's scheduling alone (the default).
    #[default]
    Normal,
}

/// The custom slice asked for (sched_attr.sched_runtime, ns).
const SLICE_NS: u64 = 100_000;

/// `struct sched_attr` (include/uapi/linux/sched/types.h), first 56 bytes (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

fn fifo() -> bool {
    let p = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler(0, ...) changes only the calling thread's policy; `p` is a
    // live local sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0 }
}

fn slice() -> bool {
    let a = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: sched_setattr(pid 0 = the calling thread, attr, flags 0) reads `size` bytes of
    // `a`, a live local laid out as the kernel's struct sched_attr (VER1, 56 bytes).
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &a as *const SchedAttr, 0) == 0 }
}

/// Applies `req` to the calling thread; returns what it got.
pub fn apply(req: SchedRequest) -> EngineSched {
    match req {
        SchedRequest::Prompt if fifo() => EngineSched::Fifo,
        SchedRequest::Prompt | SchedRequest::Slice if slice() => EngineSched::Slice,
        _ => EngineSched::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_is_the_kernels_ver1_layout() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
    }

    /// On a thread of its own: whatever it gets, a normal request changes nothing and the
    /// thread still runs.
    #[test]
    fn requests_degrade_and_never_fail() {
        let got = std::thread::spawn(|| (apply(SchedRequest::Normal), apply(SchedRequest::Slice)))
            .join()
            .unwrap();
        assert_eq!(got.0, EngineSched::Normal);
        assert!(matches!(got.1, EngineSched::Slice | EngineSched::Normal));
    }
}
