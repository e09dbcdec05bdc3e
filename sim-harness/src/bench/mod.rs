//! `vdpa-emu bench`: measurements of the model that are not pass/fail checks.
//!
//! - [`bus`]: the PCIe bus-overhead model: DMA transactions, TLPs and bytes on the wire per
//!   packet by kind, split ring vs packed ring, across frame size, batch, event idx and dirty
//!   logging (docs/bus-model.md).
//! - [`doorbells`]: what a doorbell costs per path (shared memory, trapped posted, trapped
//!   waiting) against `serve` processes (docs/doorbells.md).

pub mod bus;
pub mod doorbells;
/// The SVG rendering of a [`bus::BusReport`] (depends on bus; bus does not depend on it).
mod svg;
