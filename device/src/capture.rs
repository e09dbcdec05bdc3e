//! Frame capture hook: a copy of every frame the device carries, for `--pcap` and
//! `vdpa-emu ctl pcap`. The device knows nothing of files; the capture writer lives in the
//! harness and implements [`FrameCapture`].
//!
//! The copy is taken where the frame meets the wire: a TX frame after the port accepted it
//! (without the virtio-net header, exactly the bytes the port got), an RX frame after it was
//! written into the driver's buffers (exactly the bytes the driver gets after the header).
//! Dropped frames are counted by the device, not captured.

/// Which way a captured frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaptureDirection {
    /// Driver to wire (a TX queue).
    Tx,
    /// Wire to driver (an RX queue).
    Rx,
}

/// Receives the frames a running capture sees. Called on the datapath under the device lock:
/// an implementation must not block on anything the device waits for.
pub trait FrameCapture: Send + Sync {
    /// `frame` went `dir` through queue pair `pair`.
    fn frame(&self, dir: CaptureDirection, pair: u16, frame: &[u8]);
}
