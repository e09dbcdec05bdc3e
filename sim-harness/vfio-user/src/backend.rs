//! [`Backend`]: what the server needs of the function it serves, and nothing more.
//!
//! The server knows no device type. Register access and DMA mappings come through the same
//! [`RegionAccess`] and [`DmaMapper`] traits the in-process driver model uses; the rest are the
//! hooks vfio-user commands map to (QEMU docs/interop/vfio-user.rst): the region sizes of
//! DEVICE_GET_REGION_INFO, the MSI-X vector count of DEVICE_GET_IRQ_INFO, the interrupt sink
//! SET_IRQS fills, DEVICE_RESET, the migration v2 state machine (pause/resume, the device
//! state stream of MIG_DATA_READ/WRITE) and DMA logging (DMA_LOGGING_START/STOP).
//!
//! vdpa-emu implements it for its NIC in the CLI crate (`sim_harness::serve::DeviceBackend`).

use crate::wire::SparseArea;
use device::{DmaMapper, InterruptSink, RegionAccess};
use dma::{MapStats, MappingInfo, WriteTrace};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// Parts of a region the client may map instead of trapping (DEVICE_GET_REGION_INFO with
/// VFIO_REGION_INFO_FLAG_MMAP and a sparse mmap capability; the descriptor goes with the
/// reply). QEMU maps each area MAP_SHARED into the BAR (hw/vfio/region.c `vfio_region_mmap`).
#[derive(Debug)]
pub struct RegionMmap<'a> {
    /// The memory: byte `o` of the region is byte `offset + o` of this file.
    pub fd: BorrowedFd<'a>,
    /// File offset of the region's first byte (the reply's `offset` field; page-aligned).
    pub offset: u64,
    /// The areas (page-aligned, inside the region); the rest of the region still traps.
    pub areas: Vec<SparseArea>,
}

/// A PCI function served over vfio-user.
pub trait Backend: RegionAccess + DmaMapper + Send + Sync {
    /// Why a device state stream was refused.
    type StateError: std::error::Error + Send + Sync + 'static;

    /// Size in bytes of vfio region `index` (BAR n = n, config space = 7); 0 if absent.
    fn region_size(&self, index: u32) -> u64;
    /// What of region `index` the client may mmap (None: everything traps).
    fn region_mmap(&self, _index: u32) -> Option<RegionMmap<'_>> {
        None
    }
    /// Whether `[iova, iova + size)` is one of the function's own mmap areas where the guest
    /// placed it: QEMU DMA-maps mapped BAR areas too, without a descriptor, for peer-to-peer
    /// DMA (hw/vfio/listener.c `vfio_listener_region_add` maps RAM-device sections), which is
    /// no sign of unshared guest RAM.
    fn is_own_mmap_area(&self, _iova: u64, _size: u64) -> bool {
        false
    }
    /// A JSON summary of the function's work since the last call (logged when a client's
    /// session ends; `Null`: nothing to say).
    fn session_stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// MSI-X vectors of the function (the MSI-X IRQ index's count).
    fn msix_vectors(&self) -> u16;
    /// Where the function's interrupts go from now on (the server's eventfd table).
    fn set_interrupt_sink(&self, sink: Arc<dyn InterruptSink>);
    /// Function-level reset (DEVICE_RESET, and a client's departure).
    fn reset(&self);
    /// The current DMA mappings.
    fn mappings(&self) -> Vec<MappingInfo>;
    /// Number of live DMA mappings (DMA_MAP checks it against max_dma_maps on every map, so
    /// it must not cost a copy of the table).
    fn mapping_count(&self) -> usize;
    /// DMA_MAP / DMA_UNMAP counters (logged when a client's session ends).
    fn map_stats(&self) -> MapStats;

    /// Migration RUNNING -> STOP: finish in-flight work, then no more DMA.
    fn pause(&self);
    /// Migration STOP -> RUNNING.
    fn resume(&self);
    /// The device state stream (STOP -> STOP_COPY).
    fn save_state(&self) -> Vec<u8>;
    /// Loads a device state stream (RESUMING -> STOP).
    fn restore_state(&self, data: &[u8]) -> Result<(), Self::StateError>;
    /// Largest state stream this function can produce (bounds MIG_DATA_WRITE).
    fn max_state_len(&self) -> usize;

    /// Records every page the function's DMA writes into `trace` (None: stop recording).
    fn set_write_trace(&self, trace: Option<Arc<WriteTrace>>);

    /// A message's handler panicked (a bug in the server or the function; `message` is the
    /// panic's): put the function in an error state its driver sees and recovers from by a
    /// reset (a virtio device: DEVICE_NEEDS_RESET). The server answers the message with EIO
    /// and goes on serving.
    fn internal_error(&self, message: String);
}
