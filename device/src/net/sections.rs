//! The net engine's sections of the device-state stream ([`crate::snapshot`]): `QUES` (queue
//! registers, stop state and LM ring states), `NETS` (virtio-net state) and `INBX` (the frames
//! waiting in the receive FIFO), and the optional `RSSC` (RSS configuration), `GOFF` (receive
//! offloads set by the driver) and `INBH` (port headers of FIFO frames). Each is encoded,
//! decoded, checked against this device and restored here, next to the state it describes.

use super::engine::{NetEngine, FLOW_BUCKETS};
use super::offload::guest::{self, GuestOffloads};
use super::offload::hdr::NetHdr;
use super::rss::{parse_rss_config, RssConfig};
use super::{MAX_CTRL_CHAIN, MAX_TX_CHAIN, NET_HDR_LEN};
use crate::port::InboxFrame;
use crate::snapshot::{invalid, Reader, SectionSpec, SnapshotError, Writer};
use crate::state::QueueState;
use bar_registers::virtio::{net_status, NO_VECTOR};

/// Largest frame kept in the receive FIFO image (the largest frame this device transmits).
pub const MAX_INBOX_FRAME: usize = MAX_TX_CHAIN as usize - NET_HDR_LEN;
/// Most entries of a MAC filter table (what one control command can carry).
pub const MAX_MAC_TABLE: usize = MAX_CTRL_CHAIN as usize / 6;

/// A saved queue's state code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueKind {
    Disabled,
    Enabled,
    Stopping(u32),
    Resetting(u32),
    Reset,
}

/// One queue of a `QUES` image.
#[derive(Debug)]
pub(crate) struct QueueImage {
    size: u16,
    msix_vector: u16,
    desc: u64,
    driver: u64,
    device: u64,
    kind: QueueKind,
    ring_state: (u16, u16),
    resumed: (u16, u16),
    late_final: Option<((u16, u16), u32)>,
}

impl QueueImage {
    /// Whether the queue was live (it is enabled again through the normal enable path).
    pub(crate) fn enabled(&self) -> bool {
        self.kind == QueueKind::Enabled
    }
}

/// A `NETS` image.
#[derive(Debug)]
pub(crate) struct NetImage {
    mac: [u8; 6],
    status: u16,
    curr_pairs: u16,
    promisc: bool,
    allmulti: bool,
    uc_table: Vec<[u8; 6]>,
    mc_table: Vec<[u8; 6]>,
    flows: Vec<u16>,
}

fn parse_macs(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<[u8; 6]>, SnapshotError> {
    let n = r.count(field, MAX_MAC_TABLE, 6)?;
    (0..n).map(|_| r.arr()).collect()
}

impl NetEngine {
    /// The `QUES` section of the device-state stream.
    pub const QUEUES_SECTION: SectionSpec = SectionSpec {
        name: "QUES",
        body: "count u16, then per queue: size u16, msix_vector u16, desc u64, driver u64, device u64, state u8 (0 disabled, 1 enabled, 2 stopping, 3 resetting: queue_reset still reads 1, 4 reset: done, not re-enabled yet), reads_left u32, ring state (last_avail u16, last_used u16), resumed (u16, u16), late_final u8 + ((u16, u16), u32)",
    };
    /// The `NETS` section of the device-state stream.
    pub const NET_SECTION: SectionSpec = SectionSpec {
        name: "NETS",
        body: "mac 6 x u8, status u16, curr_pairs u16, promisc u8, allmulti u8, unicast table (count u32 + count x 6 x u8), multicast table (same), flow table (count u32 + count x u16)",
    };
    /// The `RSSC` section of the device-state stream: present only while RSS is on. Critical
    /// (a device that cannot steer by RSS must not take the state) but optional.
    pub const RSS_SECTION: SectionSpec = SectionSpec {
        name: "RSSC",
        body: "only while RSS is on: the live configuration as the RSS_CONFIG command that sets it (struct virtio_net_rss_config, virtio 1.2 5.1.6.5.7.1; max_tx_vq = curr_pairs)",
    };
    /// The `GOFF` section of the device-state stream: present only once the driver set its
    /// receive offloads. Critical: a device that cannot honour them must not take the state.
    pub const GUEST_OFFLOADS_SECTION: SectionSpec = SectionSpec {
        name: "GOFF",
        body: "only after VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: the offloads it set, le64 of GUEST_* feature bits (virtio 1.2 5.1.6.5.6.1), each negotiated",
    };
    /// The `INBH` section of the device-state stream: present only while a frame in the
    /// receive FIFO carries a header from its port (NEEDS_CSUM or GSO, from a TAP).
    pub const INBOX_HDR_SECTION: SectionSpec = SectionSpec {
        name: "INBH",
        body: "only while FIFO frames carry a port header: count u32, then per such frame its index in INBX u32 (increasing) + struct virtio_net_hdr_v1 (12 bytes, num_buffers 0)",
    };
    /// The `HASH` section of the device-state stream: present only while hash reporting is
    /// set by HASH_CONFIG (with RSS on, `RSSC` carries the hash settings).
    pub const HASH_SECTION: SectionSpec = SectionSpec {
        name: "HASH",
        body: "only while VIRTIO_NET_CTRL_MQ_HASH_CONFIG has hash reporting on: the command that sets it (struct virtio_net_hash_config, virtio 1.2 5.1.6.5.6.4)",
    };
    /// The `INBX` section of the device-state stream.
    pub const INBOX_SECTION: SectionSpec = SectionSpec {
        name: "INBX",
        body: "frames waiting in the receive FIFO, oldest first: count u32, then per frame length u32 + bytes",
    };

    // ------------------------------------------------------------ QUES

    /// Writes the `QUES` body.
    pub(crate) fn save_queues(&self, w: &mut Writer) {
        w.u16(self.num_queues());
        for lane in &self.lanes.all() {
            let slot = &lane.slot;
            w.u16(slot.size);
            w.u16(slot.msix_vector);
            w.u64(slot.desc);
            w.u64(slot.driver);
            w.u64(slot.device);
            let (kind, reads_left) = match &slot.state {
                QueueState::Disabled => (0, 0),
                QueueState::Enabled(_) => (1, 0),
                QueueState::Stopping { reads_left } => (2, *reads_left),
                QueueState::Resetting { reads_left } => (3, *reads_left),
                QueueState::Reset => (4, 0),
            };
            w.u8(kind);
            w.u32(reads_left);
            let (a, u) = slot.ring_state();
            w.u16(a);
            w.u16(u);
            w.u16(slot.resumed.0);
            w.u16(slot.resumed.1);
            let ((fa, fu), left) = slot.late_final.unwrap_or(((0, 0), 0));
            w.u8(slot.late_final.is_some().into());
            w.u16(fa);
            w.u16(fu);
            w.u32(left);
        }
    }

    /// Reads a `QUES` body of a device with `num_queues` queues.
    pub(crate) fn parse_queues(
        r: &mut Reader<'_>,
        num_queues: u16,
    ) -> Result<Vec<QueueImage>, SnapshotError> {
        let n = r.u16()?;
        if n != num_queues {
            return Err(invalid(
                "queue count",
                format!("{n} in QUES, {num_queues} in IDNT"),
            ));
        }
        let mut out = Vec::with_capacity(usize::from(n));
        for q in 0..n {
            let size = r.u16()?;
            let msix_vector = r.u16()?;
            let (desc, driver, device) = (r.u64()?, r.u64()?, r.u64()?);
            let kind = r.u8()?;
            let reads_left = r.u32()?;
            let kind = match kind {
                0 => QueueKind::Disabled,
                1 => QueueKind::Enabled,
                2 => QueueKind::Stopping(reads_left),
                3 => QueueKind::Resetting(reads_left),
                4 => QueueKind::Reset,
                k => return Err(invalid("queue state", format!("queue {q}: {k}"))),
            };
            let ring_state = (r.u16()?, r.u16()?);
            let resumed = (r.u16()?, r.u16()?);
            let late = r.bool("late_final flag")?;
            let fin = ((r.u16()?, r.u16()?), r.u32()?);
            out.push(QueueImage {
                size,
                msix_vector,
                desc,
                driver,
                device,
                kind,
                ring_state,
                resumed,
                late_final: late.then_some(fin),
            });
        }
        r.finish()?;
        Ok(out)
    }

    /// Checks saved queues against this device: sizes, vectors, and no live queue before
    /// FEATURES_OK.
    pub(crate) fn check_queues(
        &self,
        queues: &[QueueImage],
        features_ok: bool,
        ring_reset: bool,
        msix_vectors: u16,
    ) -> Result<(), SnapshotError> {
        let max = self.params.queue_size_max;
        for (q, qi) in queues.iter().enumerate() {
            if qi.size == 0 || qi.size > max {
                return Err(invalid(
                    "queue size",
                    format!("queue {q}: {} (largest {max})", qi.size),
                ));
            }
            if qi.msix_vector != NO_VECTOR && qi.msix_vector >= msix_vectors {
                return Err(invalid(
                    "queue msix_vector",
                    format!("queue {q}: {} with {msix_vectors} vectors", qi.msix_vector),
                ));
            }
            if qi.enabled() && !features_ok {
                return Err(invalid(
                    "queue state",
                    format!("queue {q} enabled before FEATURES_OK"),
                ));
            }
            if matches!(qi.kind, QueueKind::Resetting(_) | QueueKind::Reset) && !ring_reset {
                return Err(invalid(
                    "queue state",
                    format!("queue {q} resetting without VIRTIO_F_RING_RESET negotiated"),
                ));
            }
        }
        Ok(())
    }

    /// Sets every queue's registers and ring state as saved; live queues stay disabled here
    /// (the device enables them through the normal enable path, which builds each ring at its
    /// ring state), stopping ones keep stopping and resetting ones keep resetting (queue_reset
    /// goes on reading 1 for as many reads as on the source).
    pub(crate) fn restore_queues(&mut self, queues: &[QueueImage]) {
        for (lane, qi) in self.lanes.all().iter_mut().zip(queues) {
            let slot = &mut lane.slot;
            slot.size = qi.size;
            slot.msix_vector = qi.msix_vector;
            slot.desc = qi.desc;
            slot.driver = qi.driver;
            slot.device = qi.device;
            slot.ring_state = qi.ring_state;
            slot.resumed = qi.resumed;
            slot.late_final = qi.late_final;
            slot.state = match qi.kind {
                QueueKind::Stopping(reads_left) => QueueState::Stopping { reads_left },
                QueueKind::Resetting(reads_left) => QueueState::Resetting { reads_left },
                QueueKind::Reset => QueueState::Reset,
                _ => QueueState::Disabled,
            };
        }
    }

    /// After queue `q` was enabled again: where it last resumed, as saved (the enable path
    /// set it to the ring state).
    pub(crate) fn restore_resumed(&mut self, q: u16, qi: &QueueImage) {
        self.lanes.lock(q).slot.resumed = qi.resumed;
    }

    // ------------------------------------------------------------ NETS

    /// Writes the `NETS` body.
    pub(crate) fn save_net(&self, w: &mut Writer) {
        let n = &self.net;
        w.bytes(&n.mac);
        w.u16(n.status);
        w.u16(n.curr_pairs);
        w.u8(n.promisc.into());
        w.u8(n.allmulti.into());
        for t in [&n.uc_table, &n.mc_table] {
            w.u32(t.len() as u32);
            t.iter().for_each(|m| w.bytes(m));
        }
        w.u32(n.flows.len() as u32);
        n.flows.iter().for_each(|&f| w.u16(f));
    }

    /// Reads a `NETS` body and checks what holds on any device.
    pub(crate) fn parse_net(r: &mut Reader<'_>) -> Result<NetImage, SnapshotError> {
        let mac = r.arr()?;
        let status = r.u16()?;
        let curr_pairs = r.u16()?;
        let promisc = r.bool("promisc")?;
        let allmulti = r.bool("allmulti")?;
        let uc_table = parse_macs(r, "unicast MAC table")?;
        let mc_table = parse_macs(r, "multicast MAC table")?;
        let n = r.count("flow table", FLOW_BUCKETS, 2)?;
        if n != FLOW_BUCKETS {
            return Err(invalid(
                "flow table",
                format!("{n} buckets, this device has {FLOW_BUCKETS}"),
            ));
        }
        let flows = (0..n).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        // LINK_UP and ANNOUNCE are the only status bits the device sets.
        if status & !net_status::ALL != 0 {
            return Err(invalid("net status", format!("{status:#x}")));
        }
        Ok(NetImage {
            mac,
            status,
            curr_pairs,
            promisc,
            allmulti,
            uc_table,
            mc_table,
            flows,
        })
    }

    /// Checks a `NETS` image against this device's queue pairs.
    pub(crate) fn check_net(&self, n: &NetImage) -> Result<(), SnapshotError> {
        let pairs = self.params.queue_pairs;
        if n.curr_pairs == 0 || n.curr_pairs > pairs {
            return Err(invalid(
                "curr_pairs",
                format!("{} with {pairs} queue pairs", n.curr_pairs),
            ));
        }
        if let Some(f) = n.flows.iter().find(|&&f| f != u16::MAX && f >= pairs) {
            return Err(invalid(
                "flow table",
                format!("queue pair {f} with {pairs} pairs"),
            ));
        }
        Ok(())
    }

    /// Takes a checked `NETS` image.
    pub(crate) fn restore_net(&mut self, n: &NetImage) {
        let net = &mut self.net;
        net.mac = n.mac;
        net.status = n.status;
        net.curr_pairs = n.curr_pairs;
        net.promisc = n.promisc;
        net.allmulti = n.allmulti;
        net.uc_table = n.uc_table.clone();
        net.mc_table = n.mc_table.clone();
        net.flows = n.flows.clone();
        self.steering_changed();
    }

    // ------------------------------------------------------------ RSSC

    /// Writes the `RSSC` body, if RSS is on (`None`: no section).
    pub(crate) fn save_rss(&self) -> Option<Vec<u8>> {
        let n = &self.net;
        n.rss.as_ref().map(|rss| rss.encode(n.curr_pairs))
    }

    /// Reads an `RSSC` body: an RSS_CONFIG this device would accept that turns RSS on, whose
    /// max_tx_vq is the saved curr_pairs.
    pub(crate) fn parse_rss(
        &self,
        body: &[u8],
        net: &NetImage,
    ) -> Result<RssConfig, SnapshotError> {
        let cmd = parse_rss_config(body, self.params.queue_pairs)
            .map_err(|e| invalid("RSS configuration", e.to_string()))?;
        if cmd.pairs != net.curr_pairs {
            return Err(invalid(
                "RSS configuration",
                format!("max_tx_vq {} with curr_pairs {}", cmd.pairs, net.curr_pairs),
            ));
        }
        cmd.config
            .ok_or_else(|| invalid("RSS configuration", "saved with RSS off"))
    }

    /// Takes a checked RSS configuration (`None`: RSS off).
    pub(crate) fn restore_rss(&mut self, rss: Option<RssConfig>) {
        self.net.rss = rss;
        self.steering_changed();
    }

    // ------------------------------------------------------------ GOFF

    /// The `GOFF` body, once the driver set its receive offloads.
    pub(crate) fn save_guest_offloads(&self) -> Option<[u8; 8]> {
        self.net.guest_offloads.map(|g| g.0.to_le_bytes())
    }

    /// Checks a `GOFF` body as the command that set it, against the saved negotiated features.
    pub(crate) fn parse_guest_offloads(
        body: &[u8],
        features: u64,
    ) -> Result<GuestOffloads, SnapshotError> {
        if body.len() != 8 {
            return Err(invalid(
                "receive offloads",
                format!("{} bytes, 8 expected", body.len()),
            ));
        }
        guest::parse_set(body, features).map_err(|e| invalid("receive offloads", e.to_string()))
    }

    /// Takes checked receive offloads (`None`: as negotiated) and tells the port.
    pub(crate) fn restore_guest_offloads(&mut self, g: Option<GuestOffloads>, features: u64) {
        self.net.guest_offloads = g;
        self.apply_guest_offloads(features);
    }

    // ------------------------------------------------------------ HASH

    /// The `HASH` body, while HASH_CONFIG has hash reporting on.
    pub(crate) fn save_hash_cfg(&self) -> Option<Vec<u8>> {
        self.net
            .hash_cfg
            .as_ref()
            .map(super::rss::HashConfig::encode)
    }

    /// Checks a `HASH` body as the HASH_CONFIG command that set it.
    pub(crate) fn parse_hash_cfg(body: &[u8]) -> Result<super::rss::HashConfig, SnapshotError> {
        super::rss::parse_hash_config(body)
            .map_err(|e| invalid("hash configuration", e.to_string()))?
            .ok_or_else(|| invalid("hash configuration", "saved with hash reporting off"))
    }

    /// Takes a checked hash configuration (`None`: off).
    pub(crate) fn restore_hash_cfg(&mut self, h: Option<super::rss::HashConfig>) {
        self.net.hash_cfg = h;
    }

    // ------------------------------------------------------------ INBX, INBH

    /// Writes the `INBX` body; returns the `INBH` body when a frame carries a port header.
    /// The frames are copied, not taken. The frames waiting for their own queue's buffers are
    /// older than every frame still in the FIFO: they go first, queue by queue, each queue's in
    /// order (a flow's frames are all on one queue, so none passes another when the restored
    /// device steers them again).
    pub(crate) fn save_inbox(&self, w: &mut Writer) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        let mut hdrs = Vec::new();
        let (mut i, mut n) = (0u32, 0u32);
        self.inbox.for_each_held(|f| {
            body.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
            body.extend_from_slice(&f.data);
            if f.hdr != NetHdr::default() {
                n += 1;
                hdrs.extend_from_slice(&i.to_le_bytes());
                hdrs.extend_from_slice(&f.hdr.to_bytes());
            }
            i += 1;
        });
        w.u32(i);
        w.bytes(&body);
        (n > 0).then(|| {
            let mut body = n.to_le_bytes().to_vec();
            body.extend_from_slice(&hdrs);
            body
        })
    }

    /// Reads an `INBX` body.
    pub(crate) fn parse_inbox(r: &mut Reader<'_>) -> Result<Vec<InboxFrame>, SnapshotError> {
        let n = r.count("receive FIFO", usize::MAX, 4)?;
        let mut frames = Vec::with_capacity(n.min(4096));
        for i in 0..n {
            let len = r.u32()? as usize;
            if len > MAX_INBOX_FRAME {
                return Err(invalid(
                    "receive FIFO frame",
                    format!("frame {i}: {len} bytes, at most {MAX_INBOX_FRAME}"),
                ));
            }
            frames.push(InboxFrame {
                hdr: NetHdr::default(),
                data: r.take(len)?.to_vec(),
            });
        }
        r.finish()?;
        Ok(frames)
    }

    /// Puts an `INBH` body's headers on the frames of `INBX`: indices increasing and within
    /// the FIFO, each header one the receive path can act on for its frame.
    pub(crate) fn parse_inbox_hdrs(
        r: &mut Reader<'_>,
        frames: &mut [InboxFrame],
    ) -> Result<(), SnapshotError> {
        let n = r.count("receive FIFO headers", frames.len(), 4 + NET_HDR_LEN)?;
        let mut next = 0usize;
        for _ in 0..n {
            let i = r.u32()? as usize;
            if i < next || i >= frames.len() {
                return Err(invalid(
                    "receive FIFO header",
                    format!(
                        "frame index {i} (FIFO of {}, next at least {next})",
                        frames.len()
                    ),
                ));
            }
            let h = NetHdr::parse(r.take(NET_HDR_LEN)?);
            if h.num_buffers != 0 || !super::rx::port_hdr_ok(&h, &frames[i].data) {
                return Err(invalid(
                    "receive FIFO header",
                    format!("frame {i}: {h:?} does not describe the frame"),
                ));
            }
            frames[i].hdr = h;
            next = i + 1;
        }
        r.finish()
    }

    /// Checks that the saved frames fit this device's receive FIFO.
    pub(crate) fn check_inbox(&self, frames: &[InboxFrame]) -> Result<(), SnapshotError> {
        if frames.len() > self.params.rx_backlog {
            return Err(SnapshotError::InboxOverflow {
                frames: frames.len(),
                capacity: self.params.rx_backlog,
            });
        }
        Ok(())
    }

    /// Puts the saved frames into the receive FIFO, oldest first.
    pub(crate) fn restore_inbox(&self, frames: &[InboxFrame]) -> Result<(), SnapshotError> {
        for f in frames {
            if !self.inbox.push_with_hdr(&f.hdr, &f.data) {
                return Err(SnapshotError::InboxOverflow {
                    frames: frames.len(),
                    capacity: self.params.rx_backlog,
                });
            }
        }
        Ok(())
    }
}
