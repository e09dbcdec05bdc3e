//! vdpa-emu's harness: the driver model shared by every command and test, and the commands
//! themselves (the `vdpa-emu` binary is a thin clap front end over this library).

pub mod bench;
pub mod ctl;
pub mod demo;
pub mod dirty_bitmap;
pub mod driver;
pub mod frames;
pub mod inet;
pub mod migrate;
pub mod pcap;
pub mod ports;
pub mod profile;
pub mod progress;
pub mod report_json;
pub mod scenario;
pub mod serve;
pub mod validate;

/// The vfio-user protocol (server, client, wire types) lives in its own crate, `vdpa-vfio-user`
/// (sim-harness/vfio-user); re-exported here so `sim_harness::vfio_user::...` paths keep working.
pub use vdpa_vfio_user as vfio_user;
