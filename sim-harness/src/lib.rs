//! vdpa-emu's harness: the driver model shared by every command and test, and the commands
//! themselves (the `vdpa-emu` binary is a thin clap front end over this library).

pub mod bench;
pub mod demo;
pub mod driver;
pub mod frames;
pub mod migrate;
pub mod ports;
pub mod scenario;
pub mod serve;
pub mod validate;
pub mod vfio_user;
