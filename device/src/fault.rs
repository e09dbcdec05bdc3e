//! Why the device stopped: every cause of DEVICE_NEEDS_RESET, as a typed error.
//!
//! virtio 1.2 2.1.2: "The device SHOULD set DEVICE_NEEDS_RESET when it enters an error state that
//! a reset is needed." We enter it on any driver-provided structure we must not trust (hostile
//! descriptor chains, bad ring addresses) and on any IOMMU fault; the device then stops all
//! queues, raises the config interrupt and counts the cause. It never touches memory outside a
//! mapping.
//!
//! A panic in the datapath is a bug (the device's, or a [`crate::Port`] it was given), never
//! the driver's doing. Where the datapath runs (`contain_panic`: every service under the
//! device lock, and each TX budget outside it) a panic becomes [`DeviceFault::Internal`] and
//! the device enters DEVICE_NEEDS_RESET, as a hardware datapath that hits an internal error
//! does: the thread that ran it and the server go on, nothing stays locked or marked as
//! running, and the driver's reset brings the device back. A panic on the control path,
//! inside a vfio-user message's handler, ends the same way ([`crate::Device::fail_internal`]).
//! A fuzz target still sees the panic (libFuzzer's panic hook aborts before it unwinds), and
//! so does every test that checks for unexpected faults.

use dma::DmaFault;

/// A descriptor-chain or ring violation, or a DMA fault, that puts the device in DEVICE_NEEDS_RESET.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceFault {
    #[error("queue {queue}: descriptor index {index} >= queue size {size}")]
    DescriptorIndexOutOfRange { queue: u16, index: u16, size: u16 },
    #[error("queue {queue}: descriptor chain longer than {limit} (loop?) starting at head {head}")]
    ChainTooLong { queue: u16, head: u16, limit: u32 },
    #[error("queue {queue}: indirect descriptor inside an indirect table (virtio 1.2 2.7.5.3.1)")]
    NestedIndirect { queue: u16 },
    #[error("queue {queue}: indirect descriptor with NEXT set (virtio 1.2 2.7.5.3.1)")]
    IndirectWithNext { queue: u16 },
    #[error("queue {queue}: indirect descriptor used but VIRTIO_F_INDIRECT_DESC not negotiated")]
    IndirectNotNegotiated { queue: u16 },
    #[error(
        "queue {queue}: indirect table length {len} is zero, not a multiple of 16 or too large"
    )]
    BadIndirectLength { queue: u16, len: u32 },
    #[error("queue {queue}: zero-length descriptor at index {index}")]
    ZeroLengthDescriptor { queue: u16, index: u16 },
    #[error(
        "queue {queue}: chain carries {total} bytes, more than the {limit} this queue accepts"
    )]
    OversizedChain { queue: u16, total: u64, limit: u64 },
    #[error("queue {queue}: device-readable descriptor after a device-writable one (virtio 1.2 2.7.4.2)")]
    ReadableAfterWritable { queue: u16 },
    #[error("queue {queue}: TX chain has a device-writable descriptor")]
    WritableInTxChain { queue: u16 },
    #[error("queue {queue}: RX chain has a device-readable descriptor")]
    ReadableInRxChain { queue: u16 },
    #[error("queue {queue}: avail index {avail} is {pending} ahead of the device's {last}, more than the queue size {size}")]
    AvailIndexJump {
        queue: u16,
        avail: u16,
        last: u16,
        pending: u16,
        size: u16,
    },
    #[error("queue {queue}: control command without a device-writable status byte")]
    CtrlNoStatus { queue: u16 },
    #[error("queue {queue}: ring address misaligned or queue size invalid at enable ({detail})")]
    BadQueueConfig { queue: u16, detail: &'static str },
    #[error("queue {queue}: DMA fault: {fault}")]
    Dma { queue: u16, fault: DmaFault },
    #[error("dirty log: DMA fault: {0}")]
    LogDma(DmaFault),
    #[error(
        "queue {queue}: packed ring descriptor {index} of the chain starting at {head} is not available (virtio 1.2 2.8.17: the first descriptor of a list is made available last)"
    )]
    ChainNotAvailable { queue: u16, head: u16, index: u16 },
    #[error("queue {queue}: packed ring buffer id {id} >= queue size {size} (virtio 1.2 2.8.13)")]
    BufferIdOutOfRange { queue: u16, id: u16, size: u16 },
    /// An internal device error raised on purpose (`vdpa-emu ctl fault inject needs-reset`).
    #[error("injected device error ({0})")]
    Injected(&'static str),
    /// The device's code panicked, in its datapath or in a vfio-user message's handler
    /// ([`crate::Device::fail_internal`]): a bug, with the panic's message.
    #[error("internal device error in {context}: {message}")]
    Internal {
        context: &'static str,
        message: String,
    },
}

/// Counter slot names for [`DeviceFault`] (stable: used in reports and tests).
pub const FAULT_KINDS: &[&str] = &[
    "descriptor_index_out_of_range",
    "chain_too_long",
    "nested_indirect",
    "indirect_with_next",
    "indirect_not_negotiated",
    "bad_indirect_length",
    "zero_length_descriptor",
    "oversized_chain",
    "readable_after_writable",
    "writable_in_tx_chain",
    "readable_in_rx_chain",
    "avail_index_jump",
    "ctrl_no_status",
    "bad_queue_config",
    "dma_fault",
    "log_dma_fault",
    "chain_not_available",
    "buffer_id_out_of_range",
    "injected",
    "internal_error",
];

impl DeviceFault {
    /// Index into [`FAULT_KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            DeviceFault::DescriptorIndexOutOfRange { .. } => 0,
            DeviceFault::ChainTooLong { .. } => 1,
            DeviceFault::NestedIndirect { .. } => 2,
            DeviceFault::IndirectWithNext { .. } => 3,
            DeviceFault::IndirectNotNegotiated { .. } => 4,
            DeviceFault::BadIndirectLength { .. } => 5,
            DeviceFault::ZeroLengthDescriptor { .. } => 6,
            DeviceFault::OversizedChain { .. } => 7,
            DeviceFault::ReadableAfterWritable { .. } => 8,
            DeviceFault::WritableInTxChain { .. } => 9,
            DeviceFault::ReadableInRxChain { .. } => 10,
            DeviceFault::AvailIndexJump { .. } => 11,
            DeviceFault::CtrlNoStatus { .. } => 12,
            DeviceFault::BadQueueConfig { .. } => 13,
            DeviceFault::Dma { .. } => 14,
            DeviceFault::LogDma(_) => 15,
            DeviceFault::ChainNotAvailable { .. } => 16,
            DeviceFault::BufferIdOutOfRange { .. } => 17,
            DeviceFault::Injected(_) => 18,
            DeviceFault::Internal { .. } => 19,
        }
    }

    /// The stable counter name.
    pub fn kind(&self) -> &'static str {
        FAULT_KINDS[self.kind_index()]
    }
}

/// Runs datapath work `f`; a panic inside it comes back as [`DeviceFault::Internal`] (the
/// module's doc says why). The panic hook has printed the message and location by then; this
/// adds an error event with `context`.
///
/// `AssertUnwindSafe`: what `f` left half done after a panic is only ever reset, never used:
/// the fault stops every queue, and the driver's reset rebuilds every queue's state and the
/// net state and empties the inbox (`NetEngine::reset`). The locks it held (`parking_lot`,
/// no poisoning) were let go as it unwound, and the inbox reader gives its frames back on
/// drop.
pub(crate) fn contain_panic<T>(
    context: &'static str,
    f: impl FnOnce() -> Result<T, DeviceFault>,
) -> Result<T, DeviceFault> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(res) => res,
        Err(payload) => {
            let message = panic_message(&*payload);
            tracing::error!(context, %message, "the device's datapath panicked");
            Err(DeviceFault::Internal { context, message })
        }
    }
}

/// The text a panic was raised with (`panic!`'s formatted message), from the payload
/// `catch_unwind` returned.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_fault_with_its_message() {
        let ok: Result<u8, _> = contain_panic("a test", || Ok(7));
        assert_eq!(ok, Ok(7));
        let passed: Result<u8, _> = contain_panic("a test", || Err(DeviceFault::Injected("x")));
        assert_eq!(passed, Err(DeviceFault::Injected("x")));
        for (res, want) in [
            (
                contain_panic::<()>("a test", || panic!("static text")),
                "static text",
            ),
            (
                contain_panic::<()>("a test", || panic!("formatted {}", 42)),
                "formatted 42",
            ),
            (
                contain_panic::<()>("a test", || std::panic::panic_any(5u32)),
                "(a panic without a message)",
            ),
        ] {
            let f = res.unwrap_err();
            assert_eq!(f.kind(), "internal_error");
            assert_eq!(
                f.to_string(),
                format!("internal device error in a test: {want}")
            );
        }
    }
}
