//! Checksum and segmentation offloads (virtio 1.2 5.1.6.2, 5.1.6.4): the virtio-net header
//! ([`hdr`]), the Internet checksum ([`csum`]), TCP segmentation ([`gso`]) and the receive offloads
//! the driver takes ([`guest`]). The datapath
//! ([`super::tx`]) decides with them; docs/offloads.md describes what the device does per field.

pub mod coalesce;
pub mod csum;
pub mod gso;
pub mod guest;
pub mod hdr;
pub mod verify;
