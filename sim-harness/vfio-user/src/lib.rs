//! vfio-user: the device served to QEMU (>= 10.1) as `-device vfio-user-pci`, and a client.
//!
//! The protocol layer is written here on `vfio-bindings` types rather than on the `vfio_user`
//! crate, whose server desyncs on unknown commands, answers errors with errno 0 and offers one
//! descriptor per message (vfio_user 0.1.7, src/server.rs, as published on crates.io). The crate's `Client` is used
//! only as an independent peer in the tests.
//!
//! - [`backend`]: the [`Backend`] trait, all the server knows of the function it serves.
//! - [`errno`]: the errno of an error reply, shared by the server and migration.
//! - [`wire`]: header, command numbers, payload encodings.
//! - [`sock`]: `SCM_RIGHTS` send/receive, the [`sock::Stop`] eventfd blocking loops poll.
//! - [`irq`]: eventfds from SET_IRQS, per-vector masks, the device's interrupt sink.
//! - [`server`]: accept loop and per-connection message loop.
//! - [`migration`]: migration v2: DEVICE_FEATURE (migration state machine, DMA logging) and
//!   the device state stream over MIG_DATA_READ/WRITE.
//! - [`client`]: a blocking client (QEMU's message set) implementing `RegionAccess` and
//!   `DmaMapper`, so the driver model runs over a socket.

pub mod backend;
pub mod client;
pub mod errno;
pub mod irq;
pub mod migration;
pub mod server;
pub mod sock;
pub mod wire;

pub use backend::{Backend, RegionMmap};
pub use client::{Client, ClientError, InterruptPump};
pub use errno::Errno;
pub use irq::IrqTable;
pub use migration::MigState;
pub use server::{ConnectionEnd, Server, ServerError, ServerOptions, ServerStats};
pub use sock::Stop;
