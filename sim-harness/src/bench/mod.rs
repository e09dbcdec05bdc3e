//! `vdpa-emu bench`: measurements of the model that are not pass/fail checks.
//!
//! - [`bus`]: the PCIe bus-overhead model: DMA transactions, TLPs and bytes on the wire per
//!   packet by kind, split ring vs packed ring, across frame size, batch, event idx and dirty
//!   logging (docs/bus-model.md).
//! - [`doorbells`]: what a doorbell costs per path (shared memory, trapped posted, trapped
//!   waiting) against `serve` processes (docs/doorbells.md).
//! - [`datapath`]: frames per second through a `serve` process driven by the driver model in
//!   this one, next to DPDK's vhost-user pair ([`dpdk`]) in the same run (docs/bench.md).
//! - [`placement`]: how far apart the two pinned CPUs are while a cell runs (cache-line
//!   ping-pong samples).
//! - [`serve_child`]: the `serve` child process and /proc CPU time both use.
//! - [`host`]: the CPU and kernel a report was measured on.

pub mod bus;
pub mod datapath;
pub mod doorbells;
pub mod dpdk;
pub mod host;
pub mod placement;
pub mod serve_child;
/// The SVG rendering of a [`bus::BusReport`] (depends on bus; bus does not depend on it).
mod svg;

/// The median of `v` (mean of the middle two for an even count); None when empty.
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}
