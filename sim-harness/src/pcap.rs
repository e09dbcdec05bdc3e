//! pcapng capture of the frames a device carries (`--pcap FILE` on serve, demo, scenario run and
//! migrate; `vdpa-emu ctl pcap start|stop`).
//!
//! The file follows the pcapng format (IETF draft-ietf-opsawg-pcapng: one Section Header Block,
//! then one Interface Description Block per capture point, then one Enhanced Packet Block per
//! frame) and opens in Wireshark, tshark and tcpdump. Each device contributes two interfaces per
//! queue pair, `tx<P>` (driver to wire) and `rx<P>` (wire to driver), named with the device's
//! label when a file holds several devices (`src-tx0`, `dst-rx0` for `migrate`). Link type
//! Ethernet; timestamps are wall-clock nanoseconds (`if_tsresol` = 9, which pcap-file's
//! writer uses for every timestamp it encodes).
//!
//! What is captured is exactly what the device carried (see `device::capture`): TX frames the
//! port accepted and RX frames written into the driver's buffers, without the virtio-net header.
//! Writing happens on the datapath, under the device lock, into a buffered file; a write error
//! stops the capture (the error is kept and reported at stop) rather than the device.

use device::{CaptureDirection, Device, FrameCapture};
use parking_lot::Mutex;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// libpcap's MAXIMUM_SNAPLEN: no frame the device carries is cut.
const SNAPLEN: u32 = 262_144;
/// Nanosecond timestamps (pcapng if_tsresol: 10^-9).
const TSRESOL_NS: u8 = 9;

/// Why a capture could not start or did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture file {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("capture file {path}: writing pcapng: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("a capture is already running into {0}")]
    AlreadyRunning(PathBuf),
    #[error("no capture is running")]
    NotRunning,
}

/// What a finished (or running) capture holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSummary {
    pub path: PathBuf,
    pub frames: u64,
    pub bytes: u64,
    /// Interfaces in the file (two per queue pair per device).
    pub interfaces: u32,
}

struct Sink {
    writer: Option<PcapNgWriter<BufWriter<File>>>,
    summary: CaptureSummary,
    error: Option<String>,
}

/// An open pcapng file that devices write their frames into.
pub struct PcapCapture {
    sink: Mutex<Sink>,
    path: PathBuf,
}

impl std::fmt::Debug for PcapCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapCapture")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Interface name of `pair`'s `dir` side for a device labelled `label`.
pub fn interface_name(label: &str, dir: CaptureDirection, pair: u16) -> String {
    let d = match dir {
        CaptureDirection::Tx => "tx",
        CaptureDirection::Rx => "rx",
    };
    if label.is_empty() {
        format!("{d}{pair}")
    } else {
        format!("{label}-{d}{pair}")
    }
}

impl PcapCapture {
    /// Creates `path` (truncating it) and writes the section header. Devices are added with
    /// [`PcapCapture::attach`] or [`PcapCapture::add_device`], at any time: pcapng lets an
    /// interface be described anywhere before its first frame.
    pub fn create(path: &Path) -> Result<Arc<Self>, CaptureError> {
        let file = File::create(path).map_err(|source| CaptureError::Create {
            path: path.to_owned(),
            source,
        })?;
        let mut writer = PcapNgWriter::new(BufWriter::with_capacity(1 << 20, file))
            .map_err(|e| write_error(path, e))?;
        writer
            .get_mut()
            .flush()
            .map_err(|e| write_error(path, pcap_file::PcapError::IoError(e)))?;
        Ok(Arc::new(PcapCapture {
            sink: Mutex::new(Sink {
                writer: Some(writer),
                summary: CaptureSummary {
                    path: path.to_owned(),
                    ..Default::default()
                },
                error: None,
            }),
            path: path.to_owned(),
        }))
    }

    /// Describes a device's interfaces (`tx<P>` and `rx<P>` for each queue pair, prefixed
    /// with `label` unless it is empty) and returns the hook that writes its frames.
    pub fn add_device(
        self: &Arc<Self>,
        label: &str,
        queue_pairs: u16,
    ) -> Result<Arc<dyn FrameCapture>, CaptureError> {
        let mut s = self.sink.lock();
        let first_interface = s.summary.interfaces;
        let Some(w) = s.writer.as_mut() else {
            return Err(CaptureError::Write {
                path: self.path.clone(),
                detail: s.error.clone().unwrap_or_else(|| "capture finished".into()),
            });
        };
        for pair in 0..queue_pairs {
            for (dir, what) in [
                (CaptureDirection::Tx, "transmit (driver to wire)"),
                (CaptureDirection::Rx, "receive (wire to driver)"),
            ] {
                let device = if label.is_empty() {
                    String::new()
                } else {
                    format!("{label} ")
                };
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: SNAPLEN,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(interface_name(
                            label, dir, pair,
                        ))),
                        InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                            "vdpa-emu {device}queue pair {pair} {what}"
                        ))),
                        InterfaceDescriptionOption::IfTsResol(TSRESOL_NS),
                    ],
                };
                w.write_pcapng_block(idb)
                    .map_err(|e| write_error(&self.path, e))?;
            }
        }
        s.summary.interfaces += 2 * u32::from(queue_pairs);
        Ok(Arc::new(DeviceTap {
            capture: self.clone(),
            first_interface,
        }))
    }

    /// Adds `dev` (see [`PcapCapture::add_device`]) and starts copying its frames here.
    pub fn attach(self: &Arc<Self>, label: &str, dev: &Device) -> Result<(), CaptureError> {
        let tap = self.add_device(label, dev.layout().params.queue_pairs)?;
        dev.set_capture(Some(tap));
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames and bytes written so far.
    pub fn summary(&self) -> CaptureSummary {
        self.sink.lock().summary.clone()
    }

    /// Flushes and closes the file. Frames offered afterwards are ignored. Detach the devices
    /// first (`Device::set_capture(None)`) so none is lost between the two.
    pub fn finish(&self) -> Result<CaptureSummary, CaptureError> {
        let mut s = self.sink.lock();
        if let Some(w) = s.writer.take() {
            if let Err(e) = w.into_inner().flush() {
                s.error.get_or_insert(e.to_string());
            }
        }
        match &s.error {
            Some(detail) => Err(CaptureError::Write {
                path: self.path.clone(),
                detail: detail.clone(),
            }),
            None => Ok(s.summary.clone()),
        }
    }

    fn write(&self, interface: u32, frame: &[u8]) {
        let mut s = self.sink.lock();
        let Some(w) = s.writer.as_mut() else {
            return;
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let epb = EnhancedPacketBlock {
            interface_id: interface,
            timestamp,
            original_len: frame.len() as u32,
            data: Cow::Borrowed(frame),
            options: vec![],
        };
        match w.write_pcapng_block(epb) {
            Ok(_) => {
                s.summary.frames += 1;
                s.summary.bytes += frame.len() as u64;
            }
            Err(e) => {
                // A full disk must not stop the device: the capture stops instead.
                s.error = Some(error_text(&e));
                s.writer = None;
            }
        }
    }
}

fn write_error(path: &Path, e: pcap_file::PcapError) -> CaptureError {
    CaptureError::Write {
        path: path.to_owned(),
        detail: error_text(&e),
    }
}

/// pcap-file words every I/O error "Error reading bytes", even a failed write: say what the
/// system said instead.
fn error_text(e: &pcap_file::PcapError) -> String {
    match e {
        pcap_file::PcapError::IoError(io) => io.to_string(),
        other => other.to_string(),
    }
}

struct DeviceTap {
    capture: Arc<PcapCapture>,
    first_interface: u32,
}

impl FrameCapture for DeviceTap {
    fn frame(&self, dir: CaptureDirection, pair: u16, frame: &[u8]) {
        let side = match dir {
            CaptureDirection::Tx => 0,
            CaptureDirection::Rx => 1,
        };
        self.capture
            .write(self.first_interface + 2 * u32::from(pair) + side, frame);
    }
}

/// The capture of a device that can be started and stopped while it runs (`serve --pcap`,
/// `vdpa-emu ctl pcap start|stop`).
#[derive(Debug)]
pub struct LiveCapture {
    device: Arc<Device>,
    running: Mutex<Option<Arc<PcapCapture>>>,
}

impl LiveCapture {
    pub fn new(device: Arc<Device>) -> Self {
        LiveCapture {
            device,
            running: Mutex::new(None),
        }
    }

    /// Starts capturing into `path`.
    pub fn start(&self, path: &Path) -> Result<(), CaptureError> {
        let mut r = self.running.lock();
        if let Some(c) = r.as_ref() {
            return Err(CaptureError::AlreadyRunning(c.path().to_owned()));
        }
        let c = PcapCapture::create(path)?;
        c.attach("", &self.device)?;
        *r = Some(c);
        tracing::info!(path = %path.display(), "capture started");
        Ok(())
    }

    /// Stops the capture and closes its file.
    pub fn stop(&self) -> Result<CaptureSummary, CaptureError> {
        let Some(c) = self.running.lock().take() else {
            return Err(CaptureError::NotRunning);
        };
        self.device.set_capture(None);
        let s = c.finish()?;
        tracing::info!(path = %s.path.display(), frames = s.frames, bytes = s.bytes, "capture stopped");
        Ok(s)
    }

    /// The running capture's summary so far.
    pub fn status(&self) -> Option<CaptureSummary> {
        self.running.lock().as_ref().map(|c| c.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn read_back(path: &Path) -> (Vec<String>, Vec<(u32, Vec<u8>)>) {
        let mut r = PcapNgReader::new(File::open(path).unwrap()).unwrap();
        let (mut names, mut frames) = (Vec::new(), Vec::new());
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => {
                    for o in &i.options {
                        if let InterfaceDescriptionOption::IfName(n) = o {
                            names.push(n.to_string());
                        }
                    }
                }
                Block::EnhancedPacket(p) => frames.push((p.interface_id, p.data.to_vec())),
                _ => {}
            }
        }
        (names, frames)
    }

    #[test]
    fn interfaces_and_frames_land_where_they_went() {
        let dir = std::env::temp_dir().join(format!("vdpa-pcap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("two.pcapng");
        let cap = PcapCapture::create(&path).unwrap();
        let src = cap.add_device("src", 2).unwrap();
        src.frame(CaptureDirection::Tx, 1, &[1; 60]);
        // A device added after frames were written (a migration's destination).
        let dst = cap.add_device("dst", 1).unwrap();
        dst.frame(CaptureDirection::Rx, 0, &[2; 1514]);
        src.frame(CaptureDirection::Rx, 0, &[3; 64]);
        let s = cap.finish().unwrap();
        assert_eq!((s.frames, s.bytes, s.interfaces), (3, 60 + 1514 + 64, 6));
        // Frames after finish are ignored, not written into a closed file.
        src.frame(CaptureDirection::Tx, 0, &[4; 60]);
        let (names, frames) = read_back(&path);
        assert_eq!(
            names,
            ["src-tx0", "src-rx0", "src-tx1", "src-rx1", "dst-tx0", "dst-rx0"]
        );
        assert_eq!(
            frames,
            vec![(2, vec![1; 60]), (5, vec![2; 1514]), (1, vec![3; 64])]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let e = PcapCapture::create(Path::new("/nonexistent-dir/x.pcapng")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.pcapng"), "{e}");
    }

    #[test]
    fn a_full_disk_stops_the_capture_not_the_device() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let cap = PcapCapture::create(Path::new("/dev/full"));
        // The header is flushed at create: the failure shows there already.
        let e = cap.unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
    }

    #[test]
    fn a_write_error_mid_capture_stops_the_capture_and_is_reported() {
        // The capture file is a pipe whose reader goes away after the header: the buffered
        // frames fail with EPIPE when they are flushed (Rust ignores SIGPIPE).
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let path = PathBuf::from(format!("/proc/self/fd/{}", fds[1]));
        let cap = PcapCapture::create(&path).unwrap();
        let tap = cap.add_device("", 1).unwrap();
        // SAFETY: fds are the pipe's; the read end is closed once, the write end stays with
        // the capture's own open of /proc/self/fd (a separate description).
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        // More than the 1 MiB buffer, so that a write reaches the pipe.
        for _ in 0..1200 {
            tap.frame(CaptureDirection::Tx, 0, &[0u8; 1000]);
        }
        let written = cap.summary().frames;
        assert!(
            written < 1200,
            "frames after the error must not count: {written}"
        );
        let e = cap.finish().unwrap_err();
        assert!(e.to_string().contains("Broken pipe"), "{e}");
        // Further frames are ignored.
        tap.frame(CaptureDirection::Rx, 0, &[0u8; 60]);
        assert_eq!(cap.summary().frames, written);
    }
}
