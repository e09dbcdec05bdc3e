//! `vdpa-emu ctl` and the control socket of a served device: counters while it runs, link
//! up/down, announce, quirks and faults switched on a live device, pcapng capture.
//!
//! - protocol.rs: the JSON-lines requests and responses (the documented wire format);
//! - server.rs: the socket `serve` opens (default `SOCKET.ctl`, `serve --ctl PATH`);
//! - client.rs: the client `vdpa-emu ctl`, `validate --socket` and scenarios use;
//! - stats.rs: the `stats` report, as JSON and as a table.

pub mod cli;
pub mod client;
pub mod protocol;
pub mod server;
pub mod stats;

pub use client::{default_ctl_path, CtlClient, CtlError};
pub use protocol::{Request, Response};
pub use server::{CtlHandler, CtlServer};
pub use stats::StatsReport;
