//! Device state save/restore (the payload of a migration's state stream) and the paused state
//! a migration stops the device in.
//!
//! # Pause
//!
//! `DeviceState::pause` finishes in-flight work exactly like a queue stop does (every
//! enabled queue's used elements are written and used->idx published, the dirty log flushed),
//! so the ring state of every queue is final. From then on the device does no DMA at all:
//! doorbells are counted and remembered, frames arriving in the receive FIFO wait there, and
//! register accesses still work (the vfio migration STOP state: "must accept and respond to
//! interaction ... for example PCI MSI-X and PCI config space"). `DeviceState::resume`
//! services every enabled queue and the FIFO, which covers every doorbell that came meanwhile.
//!
//! # State stream format (version 1)
//!
//! Little-endian throughout. A 24-byte header, then length-prefixed sections, the last one a
//! checksum seal:
//!
//! ```text
//! header   magic "VDPASNAP" (8) | version u32 = 1 | flags u32 = 0 | total length u64 (whole stream)
//! section  tag [u8; 4] (ASCII letters/digits) | body length u32 | body
//! ```
//!
//! Tags whose first letter is upper case are critical: a reader that does not know one
//! refuses the stream. Lower-case first letters mark ancillary sections a reader may skip
//! (none exist in version 1). Every critical section of version 1 must appear exactly once,
//! except the optional ones ([`OPTIONAL_SECTIONS`]: state that exists only while a feature is
//! in use, such as `RSSC`, `GOFF`, `INBH`, `HASH`), which appear at most once; `SEAL` must be last and end the stream
//! exactly. An optional section is still critical: a reader that does not know it refuses the
//! stream, because it could not carry that state on.
//!
//! Each section is declared, encoded, decoded, checked and restored by the part of the device
//! that owns the state ([`SectionSpec`] constants: `IDNT` here, `PCIC` and `MSIX`
//! [`crate::state::pci_function::PciFunction`], `VIRT` [`crate::state::common_cfg::CommonCfg`],
//! `QUES`, `NETS` and `INBX` [`crate::net::engine::NetEngine`] (net/sections.rs), `LMRG`
//! [`crate::state::lm_block::LmBlock`]); this module frames them. The table below is checked
//! against those declarations by a test.
//!
//! | tag    | body |
//! |--------|------|
//! | `IDNT` | what must match on the destination: num_queues u16, queue_pairs u16, queue_size_max u16, msix_vectors u16, lm_layout u8 (0 dpdk, 1 linux), mtu u16, reset MAC 6 x u8, BAR sizes 6 x u64, rx_backlog u32 |
//! | `PCIC` | the 4096 config space bytes as the function reads them |
//! | `MSIX` | vectors u16, enabled u8, function_mask u8, table (vectors x 4 dwords u32), PBA (ceil(vectors/64) x u64) |
//! | `VIRT` | device_status u8, device_feature_select u32, driver_feature_select u32, driver_features u64, negotiated u64, config_msix_vector u16, queue_select u16, isr u8, config_generation u8 |
//! | `QUES` | count u16, then per queue: size u16, msix_vector u16, desc u64, driver u64, device u64, state u8 (0 disabled, 1 enabled, 2 stopping, 3 resetting: queue_reset still reads 1, 4 reset: done, not re-enabled yet), reads_left u32, ring state (last_avail u16, last_used u16), resumed (u16, u16), late_final u8 + ((u16, u16), u32) |
//! | `NETS` | mac 6 x u8, status u16, curr_pairs u16, promisc u8, allmulti u8, unicast table (count u32 + count x 6 x u8), multicast table (same), flow table (count u32 + count x u16) |
//! | `LMRG` | logging_ctrl u64, log base u64, log end u64, mq_pairs u32 |
//! | `INBX` | frames waiting in the receive FIFO, oldest first: count u32, then per frame length u32 + bytes |
//! | `RSSC` | only while RSS is on: the live configuration as the RSS_CONFIG command that sets it (struct virtio_net_rss_config, virtio 1.2 5.1.6.5.7.1; max_tx_vq = curr_pairs) |
//! | `GOFF` | only after VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: the offloads it set, le64 of GUEST_* feature bits (virtio 1.2 5.1.6.5.6.1), each negotiated |
//! | `INBH` | only while FIFO frames carry a port header: count u32, then per such frame its index in INBX u32 (increasing) + struct virtio_net_hdr_v1 (12 bytes, num_buffers 0) |
//! | `HASH` | only while VIRTIO_NET_CTRL_MQ_HASH_CONFIG has hash reporting on: the command that sets it (struct virtio_net_hash_config, virtio 1.2 5.1.6.5.6.4) |
//! | `SEAL` | FNV-1a 64 of every byte before this section, u64 |
//!
//! Restoring validates everything before touching the device (structure, seal, compatibility,
//! every value's range), then resets the function and rebuilds it: config space through its
//! write masks (then read back: a read-only byte that differs means another kind of device),
//! the MSI-X table, device_status by replaying the driver's init sequence through the status
//! machine (so only reachable values are accepted), queue registers and ring states, and every
//! queue that was enabled is enabled again through the normal enable path, so it resumes at its
//! ring state. Nothing is lost and nothing is serviced until the device runs (not paused).
//! What is not migrated: counters, the fault that caused DEVICE_NEEDS_RESET (the status bit
//! is), the write trace, the port.

use crate::net::engine::NetEngine;
use crate::net::offload::guest::GuestOffloads;
use crate::net::rss::RssConfig;
use crate::net::sections::{NetImage, QueueImage};
use crate::port::InboxFrame;
use crate::state::common_cfg::{CommonCfg, CommonImage};
use crate::state::lm_block::{LmBlock, LmImage};
use crate::state::pci_function::{MsixImage, PciFunction};
use crate::state::{DeviceState, FLOW_BUCKETS};
use bar_registers::pci::CONFIG_SPACE_SIZE;
use bar_registers::LmLayout;

/// Stream magic.
pub const MAGIC: [u8; 8] = *b"VDPASNAP";
/// The format version written (and the only one read).
pub const VERSION: u32 = 1;
/// Header: magic, version, flags, total length.
pub const HEADER_LEN: usize = 24;
/// Section header: tag, body length.
const SECTION_HEAD: usize = 8;
const CONFIG_LEN: usize = CONFIG_SPACE_SIZE as usize;
/// Largest frame kept in the receive FIFO image (the largest frame this device transmits).
pub use crate::net::sections::MAX_INBOX_FRAME;
use crate::net::sections::MAX_MAC_TABLE;

/// One section of the stream as the part of the device that owns it declares it: its tag and
/// its body, exactly as the table in the module documentation shows it (a test checks that
/// table against these declarations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionSpec {
    /// The four ASCII letters of the tag.
    pub name: &'static str,
    /// The body's layout.
    pub body: &'static str,
}

impl SectionSpec {
    /// The tag bytes.
    pub const fn tag(&self) -> [u8; 4] {
        let b = self.name.as_bytes();
        [b[0], b[1], b[2], b[3]]
    }
}

/// `IDNT`: what must match on the destination (this module's own section).
pub const IDENTITY_SECTION: SectionSpec = SectionSpec {
    name: "IDNT",
    body: "what must match on the destination: num_queues u16, queue_pairs u16, queue_size_max u16, msix_vectors u16, lm_layout u8 (0 dpdk, 1 linux), mtu u16, reset MAC 6 x u8, BAR sizes 6 x u64, rx_backlog u32",
};
/// `SEAL`: the checksum, last.
pub const SEAL_SECTION: SectionSpec = SectionSpec {
    name: "SEAL",
    body: "FNV-1a 64 of every byte before this section, u64",
};

/// Every critical section of version 1 but the seal, in the order they are written, as the
/// parts of the device that own them declare them.
pub const SECTIONS: [SectionSpec; 8] = [
    IDENTITY_SECTION,
    PciFunction::CONFIG_SECTION,
    PciFunction::MSIX_SECTION,
    CommonCfg::SECTION,
    NetEngine::QUEUES_SECTION,
    NetEngine::NET_SECTION,
    LmBlock::SECTION,
    NetEngine::INBOX_SECTION,
];

/// Critical sections that are written only while the state they carry exists, after
/// [`SECTIONS`], in this order.
pub const OPTIONAL_SECTIONS: [SectionSpec; 4] = [
    NetEngine::RSS_SECTION,
    NetEngine::GUEST_OFFLOADS_SECTION,
    NetEngine::INBOX_HDR_SECTION,
    NetEngine::HASH_SECTION,
];

/// Section tags.
pub mod tag {
    use super::{SEAL_SECTION, SECTIONS};
    const fn at(i: usize) -> [u8; 4] {
        SECTIONS[i].tag()
    }
    /// Device identity (compatibility check).
    pub const IDENTITY: [u8; 4] = at(0);
    /// PCI configuration space.
    pub const PCI: [u8; 4] = at(1);
    /// MSI-X table and PBA.
    pub const MSIX: [u8; 4] = at(2);
    /// virtio common configuration.
    pub const VIRTIO: [u8; 4] = at(3);
    /// Queue registers and ring states.
    pub const QUEUES: [u8; 4] = at(4);
    /// virtio-net state.
    pub const NET: [u8; 4] = at(5);
    /// LM block registers.
    pub const LM: [u8; 4] = at(6);
    /// Receive FIFO frames.
    pub const INBOX: [u8; 4] = at(7);
    /// Receive-side scaling configuration (optional).
    pub const RSS: [u8; 4] = super::OPTIONAL_SECTIONS[0].tag();
    /// Receive offloads the driver set (optional).
    pub const GUEST_OFFLOADS: [u8; 4] = super::OPTIONAL_SECTIONS[1].tag();
    /// Port headers of receive FIFO frames (optional).
    pub const INBOX_HDRS: [u8; 4] = super::OPTIONAL_SECTIONS[2].tag();
    /// Hash reporting configuration without RSS (optional).
    pub const HASH: [u8; 4] = super::OPTIONAL_SECTIONS[3].tag();
    /// Checksum, last.
    pub const SEAL: [u8; 4] = SEAL_SECTION.tag();
    /// Every critical section of version 1 but the seal, in the order they are written.
    pub const REQUIRED: [[u8; 4]; 8] = [IDENTITY, PCI, MSIX, VIRTIO, QUEUES, NET, LM, INBOX];
}

fn tag_name(t: [u8; 4]) -> String {
    t.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// Why a state stream was refused. Nothing in a stream can make the device panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("state stream of {len} bytes is shorter than its {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("not a vdpa-emu device state (bad magic)")]
    BadMagic,
    #[error("state stream version {0} is not supported (this device reads version {VERSION})")]
    UnsupportedVersion(u32),
    #[error("state stream flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    #[error("state stream declares {declared} bytes but has {actual}")]
    LengthMismatch { declared: u64, actual: usize },
    #[error("malformed section header at byte {offset}")]
    BadSectionHeader { offset: usize },
    #[error("section {tag} at byte {offset} runs past the end of the stream")]
    SectionOverrun { tag: String, offset: usize },
    #[error("unknown critical section {tag}")]
    UnknownSection { tag: String },
    #[error("section {tag} appears twice")]
    DuplicateSection { tag: String },
    #[error("section {0} is missing")]
    MissingSection(&'static str),
    #[error("the SEAL section must be the last, 8 bytes long")]
    BadSeal,
    #[error("checksum mismatch: stream says {stored:#018x}, content hashes to {computed:#018x}")]
    Checksum { stored: u64, computed: u64 },
    #[error("section {0} is truncated")]
    Truncated(&'static str),
    #[error("section {tag} has {extra} unexpected trailing bytes")]
    TrailingBytes { tag: &'static str, extra: usize },
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("saved on an incompatible device: {what} is {saved:#x} there, {here:#x} here")]
    Incompatible {
        what: &'static str,
        saved: u64,
        here: u64,
    },
    #[error("config space byte {offset:#x} cannot be restored ({saved:#04x} saved, {here:#04x} here): another kind of device")]
    ConfigMismatch { offset: usize, saved: u8, here: u8 },
    #[error("queue {queue} could not be enabled again: {detail}")]
    QueueRejected { queue: u16, detail: String },
    #[error("{frames} saved receive frames do not fit the {capacity}-frame receive FIFO")]
    InboxOverflow { frames: usize, capacity: usize },
}

pub(crate) fn invalid(field: &'static str, detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// The seal: FNV-1a 64 (corruption detection, not authentication).
use crate::fnv::fnv1a64;

/// Upper bound of a state stream for a device with this many queues, vectors and FIFO
/// frames (a VMM bounds the data it buffers while resuming with it).
pub fn max_state_len(num_queues: u16, msix_vectors: u16, rx_backlog: usize) -> usize {
    let fixed = HEADER_LEN
        + 16 * SECTION_HEAD
        + 128
        + CONFIG_LEN
        + 8
        + 16 * usize::from(msix_vectors)
        + 8 * usize::from(msix_vectors).div_ceil(64)
        + 64;
    let queues = 2 + 60 * usize::from(num_queues);
    let net = 32 + 2 * 6 * MAX_MAC_TABLE + 2 * FLOW_BUCKETS + 12;
    let inbox = 4 + rx_backlog.saturating_mul(4 + MAX_INBOX_FRAME);
    let rss = {
        use bar_registers::virtio::rss::{MAX_INDIRECTION_TABLE_LENGTH, MAX_KEY_SIZE};
        11 + 2 * usize::from(MAX_INDIRECTION_TABLE_LENGTH) + usize::from(MAX_KEY_SIZE)
    };
    let guest_offloads = SECTION_HEAD + 8;
    let hash = SECTION_HEAD + 13 + usize::from(bar_registers::virtio::rss::MAX_KEY_SIZE);
    let inbox_hdrs = SECTION_HEAD + 4 + rx_backlog.saturating_mul(4 + crate::net::NET_HDR_LEN);
    fixed + queues + net + 28 + inbox + rss + guest_offloads + inbox_hdrs + hash
}

// ---------------------------------------------------------------- encoding

/// Appends little-endian values to a stream (every section's encoder writes through it).
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
    pub(crate) fn section(&mut self, t: [u8; 4], body: impl FnOnce(&mut Writer)) {
        self.bytes(&t);
        let at = self.out.len();
        self.u32(0);
        body(self);
        let len = (self.out.len() - at - 4) as u32;
        self.out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// A bounds-checked cursor over one section body (every section's decoder reads through it).
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(SnapshotError::Truncated(self.tag))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn arr<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.arr::<1>()?[0])
    }
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(invalid(field, format!("{v} is not a boolean"))),
        }
    }
    pub(crate) fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A count of items of at least `item` bytes each: at most `max`, and no more than the
    /// rest of the body could hold (nothing is allocated from an unchecked count).
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        max: usize,
        item: usize,
    ) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(invalid(field, format!("{n} entries, at most {max}")));
        }
        if n.saturating_mul(item) > self.buf.len() - self.pos {
            return Err(SnapshotError::Truncated(self.tag));
        }
        Ok(n)
    }
    pub(crate) fn finish(&self) -> Result<(), SnapshotError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(SnapshotError::TrailingBytes {
                tag: self.tag,
                extra,
            }),
        }
    }
}

// ---------------------------------------------------------------- the decoded image

#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    num_queues: u16,
    queue_pairs: u16,
    queue_size_max: u16,
    msix_vectors: u16,
    lm_layout: u8,
    mtu: u16,
    mac: [u8; 6],
    bar_sizes: [u64; 6],
    rx_backlog: u32,
}

#[derive(Debug)]
struct Image {
    identity: Identity,
    pci: Vec<u8>,
    msix: MsixImage,
    virtio: CommonImage,
    queues: Vec<QueueImage>,
    net: NetImage,
    lm: LmImage,
    inbox: Vec<InboxFrame>,
    /// The `RSSC` body, if the stream has one (parsed against the device in the check).
    rss: Option<Vec<u8>>,
    /// The `GOFF` body, if the stream has one (checked against the saved features).
    guest_offloads: Option<Vec<u8>>,
    /// The `HASH` body, if the stream has one.
    hash: Option<Vec<u8>>,
}

/// The optional sections' state, checked against this device before it is touched.
#[derive(Debug)]
struct Checked {
    /// `RSSC` (`None`: RSS off).
    rss: Option<RssConfig>,
    /// `GOFF` (`None`: the offloads as negotiated).
    guest_offloads: Option<GuestOffloads>,
    /// `HASH` (`None`: no hash reporting without RSS).
    hash: Option<crate::net::rss::HashConfig>,
}

fn lm_code(l: LmLayout) -> u8 {
    match l {
        LmLayout::Dpdk => 0,
        LmLayout::Linux => 1,
    }
}

/// Splits a stream into its sections (checking the header, the section structure and the
/// seal) and decodes every section. Touches no device.
fn parse(data: &[u8]) -> Result<Image, SnapshotError> {
    if data.len() < HEADER_LEN {
        return Err(SnapshotError::TooShort { len: data.len() });
    }
    if data[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut h = Reader {
        buf: &data[8..HEADER_LEN],
        pos: 0,
        tag: "header",
    };
    let (version, flags, total) = (h.u32()?, h.u32()?, h.u64()?);
    if version != VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    if flags != 0 {
        return Err(SnapshotError::UnsupportedFlags(flags));
    }
    if total != data.len() as u64 {
        return Err(SnapshotError::LengthMismatch {
            declared: total,
            actual: data.len(),
        });
    }
    let mut bodies: [Option<&[u8]>; 8] = [None; 8];
    let mut optional: [Option<&[u8]>; OPTIONAL_SECTIONS.len()] = [None; OPTIONAL_SECTIONS.len()];
    let mut pos = HEADER_LEN;
    let mut sealed = false;
    while pos < data.len() {
        if data.len() - pos < SECTION_HEAD {
            return Err(SnapshotError::BadSectionHeader { offset: pos });
        }
        let t: [u8; 4] = data[pos..pos + 4].try_into().expect("4 bytes");
        if !t.iter().all(u8::is_ascii_alphanumeric) {
            return Err(SnapshotError::BadSectionHeader { offset: pos });
        }
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let body_at = pos + SECTION_HEAD;
        let end = body_at
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| SnapshotError::SectionOverrun {
                tag: tag_name(t),
                offset: pos,
            })?;
        if t == tag::SEAL {
            if len != 8 || end != data.len() {
                return Err(SnapshotError::BadSeal);
            }
            let stored = u64::from_le_bytes(data[body_at..end].try_into().expect("8 bytes"));
            let computed = fnv1a64(&data[..pos]);
            if stored != computed {
                return Err(SnapshotError::Checksum { stored, computed });
            }
            sealed = true;
            break;
        }
        match tag::REQUIRED.iter().position(|&r| r == t) {
            Some(i) if bodies[i].is_some() => {
                return Err(SnapshotError::DuplicateSection { tag: tag_name(t) })
            }
            Some(i) => bodies[i] = Some(&data[body_at..end]),
            None => match OPTIONAL_SECTIONS.iter().position(|s| s.tag() == t) {
                Some(i) if optional[i].is_some() => {
                    return Err(SnapshotError::DuplicateSection { tag: tag_name(t) })
                }
                Some(i) => optional[i] = Some(&data[body_at..end]),
                // Ancillary (lower-case first letter): skipped.
                None if t[0].is_ascii_lowercase() => {}
                None => return Err(SnapshotError::UnknownSection { tag: tag_name(t) }),
            },
        }
        pos = end;
    }
    if !sealed {
        return Err(SnapshotError::MissingSection("SEAL"));
    }
    let mut r = Vec::with_capacity(8);
    for (body, spec) in bodies.into_iter().zip(SECTIONS) {
        let body = body.ok_or(SnapshotError::MissingSection(spec.name))?;
        r.push(Reader {
            buf: body,
            pos: 0,
            tag: spec.name,
        });
    }
    let mut it = r.into_iter();
    let mut next = || it.next().expect("eight readers");
    let identity = Identity::parse(&mut next())?;
    let pci = PciFunction::parse_config(&mut next())?;
    let msix = PciFunction::parse_msix(&mut next(), identity.msix_vectors)?;
    let virtio = CommonCfg::parse(&mut next())?;
    let queues = NetEngine::parse_queues(&mut next(), identity.num_queues)?;
    let net = NetEngine::parse_net(&mut next())?;
    let lm = LmBlock::parse(&mut next())?;
    let mut inbox = NetEngine::parse_inbox(&mut next())?;
    if let Some(body) = optional[2] {
        NetEngine::parse_inbox_hdrs(
            &mut Reader {
                buf: body,
                pos: 0,
                tag: OPTIONAL_SECTIONS[2].name,
            },
            &mut inbox,
        )?;
    }
    Ok(Image {
        identity,
        pci,
        msix,
        virtio,
        queues,
        net,
        lm,
        inbox,
        rss: optional[0].map(<[u8]>::to_vec),
        guest_offloads: optional[1].map(<[u8]>::to_vec),
        hash: optional[3].map(<[u8]>::to_vec),
    })
}

impl Identity {
    /// Writes the `IDNT` body.
    fn save(&self, w: &mut Writer) {
        w.u16(self.num_queues);
        w.u16(self.queue_pairs);
        w.u16(self.queue_size_max);
        w.u16(self.msix_vectors);
        w.u8(self.lm_layout);
        w.u16(self.mtu);
        w.bytes(&self.mac);
        self.bar_sizes.iter().for_each(|&s| w.u64(s));
        w.u32(self.rx_backlog);
    }

    /// Reads an `IDNT` body.
    fn parse(r: &mut Reader<'_>) -> Result<Identity, SnapshotError> {
        let id = Identity {
            num_queues: r.u16()?,
            queue_pairs: r.u16()?,
            queue_size_max: r.u16()?,
            msix_vectors: r.u16()?,
            lm_layout: r.u8()?,
            mtu: r.u16()?,
            mac: r.arr()?,
            bar_sizes: [r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?],
            rx_backlog: r.u32()?,
        };
        r.finish()?;
        Ok(id)
    }
}

// ---------------------------------------------------------------- the device side

impl DeviceState {
    fn identity(&self) -> Identity {
        let mut bar_sizes = [0u64; 6];
        for (i, s) in bar_sizes.iter_mut().enumerate() {
            *s = self.layout.bar_size(i as u8);
        }
        Identity {
            num_queues: self.layout.num_queues,
            queue_pairs: self.cfg.layout.queue_pairs,
            queue_size_max: self.cfg.layout.queue_size_max,
            msix_vectors: self.layout.msix_vectors,
            lm_layout: lm_code(self.cfg.layout.lm_layout),
            mtu: self.cfg.layout.mtu,
            mac: self.cfg.layout.mac,
            bar_sizes,
            rx_backlog: self.cfg.rx_backlog.min(u32::MAX as usize) as u32,
        }
    }

    /// Stops the datapath for a migration: in-flight work is finished exactly as at a queue
    /// stop (used elements written, used->idx published after the dirty log), so every ring
    /// state is final; then no queue is serviced and no DMA is done until [`Self::resume`].
    pub(crate) fn pause(&mut self) {
        if self.paused {
            return;
        }
        for q in 0..self.engine.num_queues() {
            let res = self.engine.flush(q);
            self.check(res);
        }
        if let Err(f) = self.engine.dma(|d| d.flush_log()) {
            self.fail(crate::fault::DeviceFault::LogDma(f));
        }
        self.paused = true;
        tracing::debug!("device paused");
    }

    /// Leaves the paused state and services every enabled queue and the receive FIFO: the
    /// doorbells and frames that came while paused.
    pub(crate) fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        tracing::debug!("device resumed");
        self.service_all();
        self.service_inbox();
    }

    /// Serializes the device state (see the module documentation). Frames waiting in the
    /// receive FIFO are copied, not taken: a source whose migration is cancelled still has them.
    pub(crate) fn save(&self) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::with_capacity(8192 + self.engine.inbox().len() * 1600),
        };
        w.bytes(&MAGIC);
        w.u32(VERSION);
        w.u32(0);
        w.u64(0);
        w.section(tag::IDENTITY, |w| self.identity().save(w));
        w.section(tag::PCI, |w| self.function.save_config(w));
        w.section(tag::MSIX, |w| self.function.save_msix(w));
        w.section(tag::VIRTIO, |w| self.common.save(w));
        w.section(tag::QUEUES, |w| self.engine.save_queues(w));
        w.section(tag::NET, |w| self.engine.save_net(w));
        w.section(tag::LM, |w| self.lm.save(w));
        let mut inbox_hdrs = None;
        w.section(tag::INBOX, |w| inbox_hdrs = self.engine.save_inbox(w));
        if let Some(rss) = self.engine.save_rss() {
            w.section(tag::RSS, |w| w.bytes(&rss));
        }
        if let Some(g) = self.engine.save_guest_offloads() {
            w.section(tag::GUEST_OFFLOADS, |w| w.bytes(&g));
        }
        if let Some(h) = inbox_hdrs {
            w.section(tag::INBOX_HDRS, |w| w.bytes(&h));
        }
        if let Some(h) = self.engine.save_hash_cfg() {
            w.section(tag::HASH, |w| w.bytes(&h));
        }
        let total = (w.out.len() + SECTION_HEAD + 8) as u64;
        w.out[16..24].copy_from_slice(&total.to_le_bytes());
        let seal = fnv1a64(&w.out);
        w.section(tag::SEAL, |w| w.u64(seal));
        w.out
    }

    /// Restores a state saved by [`Self::save`] on a compatible device. On error the device is
    /// left reset (as after an FLR). The paused flag is kept: a paused device stays paused
    /// (and its restored queues wait for the resume), a running one starts servicing.
    pub(crate) fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        let was_paused = self.paused;
        // Nothing is serviced while the state is rebuilt (an enabled TX queue would otherwise
        // transmit before the saved receive frames are back).
        self.paused = true;
        self.function_reset();
        let r = parse(data).and_then(|img| {
            let checked = self.check_compatible(&img)?;
            self.apply(&img, checked)
        });
        if let Err(e) = &r {
            tracing::warn!(error = %e, "device state refused; device reset");
            self.function_reset();
        }
        self.paused = was_paused;
        if r.is_ok() && !was_paused {
            self.service_all();
            self.service_inbox();
        }
        r
    }

    /// Everything that can be checked before the device is touched. Returns what the
    /// optional sections decode to, checked against this device.
    fn check_compatible(&self, img: &Image) -> Result<Checked, SnapshotError> {
        let here = self.identity();
        let s = &img.identity;
        let pairs: [(&'static str, u64, u64); 7] = [
            (
                "the queue count",
                s.num_queues.into(),
                here.num_queues.into(),
            ),
            (
                "the queue pair count",
                s.queue_pairs.into(),
                here.queue_pairs.into(),
            ),
            (
                "the largest queue size",
                s.queue_size_max.into(),
                here.queue_size_max.into(),
            ),
            (
                "the MSI-X vector count",
                s.msix_vectors.into(),
                here.msix_vectors.into(),
            ),
            (
                "the LM block layout",
                s.lm_layout.into(),
                here.lm_layout.into(),
            ),
            ("the MTU", s.mtu.into(), here.mtu.into()),
            ("the configured MAC", mac_u64(&s.mac), mac_u64(&here.mac)),
        ];
        for (what, saved, here) in pairs {
            if saved != here {
                return Err(SnapshotError::Incompatible { what, saved, here });
            }
        }
        for (i, (&a, &b)) in s.bar_sizes.iter().zip(&here.bar_sizes).enumerate() {
            if a != b {
                const NAMES: [&str; 6] = [
                    "the BAR0 size",
                    "the BAR1 size",
                    "the BAR2 size",
                    "the BAR3 size",
                    "the BAR4 size",
                    "the BAR5 size",
                ];
                return Err(SnapshotError::Incompatible {
                    what: NAMES[i],
                    saved: a,
                    here: b,
                });
            }
        }
        self.engine.check_inbox(&img.inbox)?;
        let v = &img.virtio;
        self.common.check(v)?;
        self.engine.check_queues(
            &img.queues,
            v.features_ok(),
            v.has(bar_registers::virtio::bits::RING_RESET),
            self.layout.msix_vectors,
        )?;
        self.engine.check_net(&img.net)?;
        let rss = img
            .rss
            .as_ref()
            .map(|body| self.engine.parse_rss(body, &img.net))
            .transpose()?;
        let guest_offloads = img
            .guest_offloads
            .as_ref()
            .map(|body| NetEngine::parse_guest_offloads(body, v.negotiated()))
            .transpose()?;
        let hash = img
            .hash
            .as_deref()
            .map(NetEngine::parse_hash_cfg)
            .transpose()?;
        if hash.is_some()
            && v.negotiated() & (1u64 << bar_registers::virtio::bits::HASH_REPORT) == 0
        {
            return Err(invalid(
                "hash configuration",
                "saved without VIRTIO_NET_F_HASH_REPORT negotiated",
            ));
        }
        Ok(Checked {
            rss,
            guest_offloads,
            hash,
        })
    }

    /// Rebuilds the (just reset) device from a checked image and its checked optional state.
    fn apply(&mut self, img: &Image, checked: Checked) -> Result<(), SnapshotError> {
        self.function.restore_config(&img.pci)?;
        self.sync_pcie_limits();
        self.function.restore_msix(&img.msix)?;

        // virtio common configuration; device_status by replaying the init sequence.
        self.common.restore(&img.virtio)?;

        // virtio-net.
        self.engine.restore_net(&img.net);
        self.engine.restore_rss(checked.rss);
        self.engine.restore_hash_cfg(checked.hash);
        self.engine
            .restore_guest_offloads(checked.guest_offloads, img.virtio.negotiated());

        // LM block: registers as saved, logging (to guest memory) on if it was.
        self.lm.restore(&img.lm);
        self.apply_logging();

        // Queues: registers and ring states, then the enabled ones through the enable path,
        // which builds each ring at its ring state.
        self.engine.restore_queues(&img.queues);
        for (q, qi) in (0u16..).zip(&img.queues) {
            if !qi.enabled() {
                continue;
            }
            self.enable_queue(q);
            if !self.engine.is_enabled(q) {
                let detail = self.fault.as_ref().map_or_else(
                    || "the device ignored queue_enable".to_string(),
                    ToString::to_string,
                );
                return Err(SnapshotError::QueueRejected { queue: q, detail });
            }
            self.engine.restore_resumed(q, qi);
        }

        // The receive FIFO, oldest first.
        self.engine.restore_inbox(&img.inbox)?;
        self.engine.dma(|d| d.sync_space());
        Ok(())
    }
}

fn mac_u64(m: &[u8; 6]) -> u64 {
    m.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let total = (body.len() + SECTION_HEAD + 8) as u64;
        body[16..24].copy_from_slice(&total.to_le_bytes());
        let seal = fnv1a64(&body);
        body.extend_from_slice(&tag::SEAL);
        body.extend_from_slice(&8u32.to_le_bytes());
        body.extend_from_slice(&seal.to_le_bytes());
        body
    }

    fn header() -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&[0; 12]);
        h
    }

    #[test]
    fn structure_errors_are_typed() {
        assert_eq!(parse(&[]).unwrap_err(), SnapshotError::TooShort { len: 0 });
        let mut bad = header();
        bad[0] = b'X';
        assert_eq!(parse(&bad).unwrap_err(), SnapshotError::BadMagic);
        let mut v2 = header();
        v2[8] = 2;
        assert_eq!(
            parse(&v2).unwrap_err(),
            SnapshotError::UnsupportedVersion(2)
        );
        // Header only: the length says 0.
        assert!(matches!(
            parse(&header()).unwrap_err(),
            SnapshotError::LengthMismatch {
                declared: 0,
                actual: 24
            }
        ));
        // Seal only: every required section is missing.
        assert_eq!(
            parse(&sealed(header())).unwrap_err(),
            SnapshotError::MissingSection("IDNT")
        );
        // An unknown critical section is refused, an ancillary one skipped.
        let mut s = header();
        s.extend_from_slice(b"ZZZZ\0\0\0\0");
        assert_eq!(
            parse(&sealed(s)).unwrap_err(),
            SnapshotError::UnknownSection { tag: "ZZZZ".into() }
        );
        let mut s = header();
        s.extend_from_slice(b"zzzz\x01\0\0\0\xff");
        assert_eq!(
            parse(&sealed(s)).unwrap_err(),
            SnapshotError::MissingSection("IDNT")
        );
        // A section running past the end.
        let mut s = header();
        s.extend_from_slice(b"IDNT\xff\xff\0\0");
        let total = s.len() as u64;
        s[16..24].copy_from_slice(&total.to_le_bytes());
        assert!(matches!(
            parse(&s).unwrap_err(),
            SnapshotError::SectionOverrun { .. }
        ));
        // Not sealed.
        let mut s = header();
        s.extend_from_slice(b"IDNT\0\0\0\0");
        let total = s.len() as u64;
        s[16..24].copy_from_slice(&total.to_le_bytes());
        assert_eq!(
            parse(&s).unwrap_err(),
            SnapshotError::MissingSection("SEAL")
        );
        // Bad seal value.
        let mut s = sealed(header());
        let n = s.len();
        s[n - 1] ^= 1;
        assert!(matches!(
            parse(&s).unwrap_err(),
            SnapshotError::Checksum { .. }
        ));
    }

    mod live {
        use super::super::*;
        use crate::{Device, DeviceConfig, DmaMapper, RegionAccess};
        use bar_registers::pci::{command, hdr};
        use bar_registers::virtio::{bits, common};
        use bar_registers::REGION_CONFIG;
        use dma::{Backing, Perms, SharedMemory};
        use rand::{Rng, SeedableRng};
        use std::sync::Arc;

        const IOVA: u64 = 0x1000_0000;
        const MEM: u64 = 1 << 20;
        const QSIZE: u16 = 16;
        // Per queue q: desc at q * 0x1000, avail at + 0x400, used at + 0x800; buffers at 0x10000.
        fn ring(q: u16) -> (u64, u64, u64) {
            let base = IOVA + u64::from(q) * 0x1000;
            (base, base + 0x400, base + 0x800)
        }

        struct Rig {
            dev: Arc<Device>,
            shm: Arc<SharedMemory>,
        }

        impl Rig {
            fn new(shm: Option<&Arc<SharedMemory>>) -> Self {
                let dev = Device::new(DeviceConfig::with_queue_pairs(2)).unwrap();
                dev.set_loopback();
                let shm = match shm {
                    Some(s) => s.clone(),
                    None => Arc::new(SharedMemory::new("vdpa-emu-snapshot-test", MEM).unwrap()),
                };
                dev.dma_map(
                    IOVA,
                    MEM,
                    Perms::RW,
                    Backing::Fd {
                        file: shm.try_clone_file().unwrap(),
                        offset: 0,
                    },
                )
                .unwrap();
                Rig { dev, shm }
            }

            fn common(&self, reg: u64, len: usize, v: u64) {
                let off = self.dev.layout().common.offset + reg;
                self.dev
                    .region_write(0, off, &v.to_le_bytes()[..len])
                    .unwrap();
            }

            fn used_idx(&self, q: u16) -> u16 {
                self.shm.read_u16(ring(q).2 - IOVA + 2).unwrap()
            }

            fn kick(&self, q: u16) {
                let l = self.dev.layout();
                self.dev
                    .region_write(l.notify.bar.into(), l.doorbell_offset(q), &q.to_le_bytes())
                    .unwrap();
            }

            /// Bus master, ACK, DRIVER, VERSION_1, FEATURES_OK, queues 0-3 at 16 entries, DRIVER_OK.
            fn start(&self) {
                let mut c = [0u8; 2];
                self.dev
                    .region_read(REGION_CONFIG, hdr::COMMAND, &mut c)
                    .unwrap();
                let cmd = u16::from_le_bytes(c) | command::BUS_MASTER | command::MEMORY_SPACE;
                self.dev
                    .region_write(REGION_CONFIG, hdr::COMMAND, &cmd.to_le_bytes())
                    .unwrap();
                self.common(common::DEVICE_STATUS, 1, 1);
                self.common(common::DEVICE_STATUS, 1, 3);
                self.common(common::DRIVER_FEATURE_SELECT, 4, 1);
                self.common(common::DRIVER_FEATURE, 4, 1 << (bits::VERSION_1 - 32));
                self.common(common::DEVICE_STATUS, 1, 11);
                for q in 0..4u16 {
                    let (d, a, u) = ring(q);
                    self.common(common::QUEUE_SELECT, 2, q.into());
                    self.common(common::QUEUE_SIZE, 2, QSIZE.into());
                    self.common(common::QUEUE_DESC, 8, d);
                    self.common(common::QUEUE_DRIVER, 8, a);
                    self.common(common::QUEUE_DEVICE, 8, u);
                    self.common(common::QUEUE_ENABLE, 2, 1);
                }
                self.common(common::DEVICE_STATUS, 1, 15);
                assert_eq!(self.dev.status(), 15);
            }

            /// Posts chain `i` (one descriptor) on queue `q`: writable for RX.
            fn post(&self, q: u16, i: u16, len: u32, writable: bool) {
                let (d, a, _) = ring(q);
                let buf = IOVA + 0x10000 + u64::from(q) * 0x10000 + u64::from(i) * 0x800;
                let slot = u64::from(i % QSIZE);
                self.shm.write_u64(d - IOVA + 16 * slot, buf).unwrap();
                self.shm.write_u32(d - IOVA + 16 * slot + 8, len).unwrap();
                self.shm
                    .write_u16(d - IOVA + 16 * slot + 12, if writable { 2 } else { 0 })
                    .unwrap();
                self.shm
                    .write_u16(a - IOVA + 4 + 2 * slot, slot as u16)
                    .unwrap();
                self.shm.write_u16(a - IOVA + 2, i + 1).unwrap();
            }

            /// A TX frame (12-byte header + 60 bytes, broadcast) as chain `i` of queue 1.
            fn post_tx(&self, i: u16) {
                let buf = IOVA + 0x10000 + 0x10000 + u64::from(i) * 0x800;
                let mut f = vec![0u8; 12];
                f.extend_from_slice(&[0xff; 6]);
                f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
                f.extend((0..46).map(|b| b as u8 ^ i as u8));
                self.shm.write(buf - IOVA, &f).unwrap();
                self.post(1, i, f.len() as u32, false);
            }
        }

        #[test]
        fn pause_defers_everything_and_resume_catches_up() {
            let r = Rig::new(None);
            r.start();
            r.post_tx(0);
            r.kick(1);
            assert_eq!(r.used_idx(1), 1);
            assert_eq!(r.dev.inbox().len(), 1, "looped back, no RX buffer yet");
            r.dev.pause();
            assert!(r.dev.is_paused());
            let bus = r.dev.bus_stats();
            r.post_tx(1);
            r.kick(1);
            r.post(0, 0, 2048, true);
            r.kick(0);
            r.dev.service_rx();
            assert_eq!(
                (r.used_idx(1), r.used_idx(0)),
                (1, 0),
                "no DMA while paused"
            );
            assert_eq!(r.dev.bus_stats(), bus, "not a byte moved");
            assert_eq!(r.dev.inbox().len(), 1);
            // Registers still answer while paused.
            let mut st = [0u8];
            r.dev
                .region_read(
                    0,
                    r.dev.layout().common.offset + common::DEVICE_STATUS,
                    &mut st,
                )
                .unwrap();
            assert_eq!(st[0], 15);
            r.dev.resume();
            assert_eq!(r.used_idx(1), 2, "the remembered TX doorbell");
            assert_eq!(
                r.used_idx(0),
                1,
                "the waiting frame went into the RX buffer"
            );
            assert_eq!(
                r.dev.inbox().len(),
                1,
                "the second frame waits for a buffer"
            );
            assert_eq!(r.dev.fault(), None);
        }

        #[test]
        fn save_restore_round_trip_resumes_where_the_source_stopped() {
            let a = Rig::new(None);
            a.start();
            for i in 0..3 {
                a.post_tx(i);
            }
            a.kick(1);
            a.dev.pause();
            // Posted while paused: the destination must transmit it.
            a.post_tx(3);
            a.kick(1);
            let state = a.dev.save_state();
            assert_eq!(&state[..8], &MAGIC);
            assert_eq!(
                a.dev.inbox().len(),
                3,
                "saving copies the FIFO, it does not take it"
            );
            assert_eq!(a.dev.save_state(), state, "saving has no side effect");

            // Destination on the same memory (as after the VMM copied it), paused while restoring.
            let b = Rig::new(Some(&a.shm));
            b.dev.pause();
            b.dev.restore_state(&state).unwrap();
            assert_eq!(
                b.dev.save_state(),
                state,
                "restore then save is the identity"
            );
            assert_eq!(b.dev.status(), 15);
            let q1 = b.dev.queue(1).unwrap();
            assert!(q1.enabled);
            assert_eq!((q1.last_avail, q1.last_used), (3, 3));
            assert_eq!(b.used_idx(1), 3);
            b.dev.resume();
            assert_eq!(
                b.used_idx(1),
                4,
                "the chain posted while the source was paused"
            );
            assert_eq!(b.dev.inbox().len(), 4);
            for i in 0..4 {
                b.post(0, i, 2048, true);
            }
            b.kick(0);
            assert_eq!(b.used_idx(0), 4, "every frame delivered, in order");
            for i in 0..4u64 {
                let mut f = [0u8; 1];
                b.shm.read(0x10000 + i * 0x800 + 12 + 14, &mut f).unwrap();
                assert_eq!(f[0], i as u8, "frame {i} in RX buffer {i}");
            }
            assert_eq!(b.dev.fault(), None);

            // A running destination starts servicing at once.
            let c = Rig::new(Some(&a.shm));
            c.dev.restore_state(&state).unwrap();
            assert!(!c.dev.is_paused());
            assert_eq!(c.dev.queue(1).unwrap().last_used, 4);
        }

        /// Bytes a declared field list takes: `u8` .. `u64`, `[n]` byte arrays, `n x uNN`
        /// repeats (words that are none of these are prose).
        fn declared_len(fields: &str) -> usize {
            let toks: Vec<&str> = fields
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '[' || c == ']'))
                .filter(|t| !t.is_empty())
                .collect();
            let mut total = 0usize;
            for (i, t) in toks.iter().enumerate() {
                let size: usize =
                    if let Some(bits) = t.strip_prefix('u').and_then(|b| b.parse::<usize>().ok()) {
                        bits / 8
                    } else if let Some(n) = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                        n.parse().unwrap()
                    } else {
                        continue;
                    };
                let repeat: usize = match i.checked_sub(2).map(|j| (toks[j], toks[j + 1])) {
                    Some((n, "x")) => n.parse().unwrap_or(1),
                    _ => 1,
                };
                total += size * repeat;
            }
            total
        }

        /// The fixed-layout sections are as long as their declarations say, so the table, the
        /// encoders and the decoders describe one format.
        #[test]
        fn sections_are_as_long_as_declared() {
            let a = Rig::new(None);
            a.start();
            let state = a.dev.save_state();
            let mut pos = HEADER_LEN;
            let mut lens = std::collections::HashMap::new();
            while pos < state.len() {
                let t: [u8; 4] = state[pos..pos + 4].try_into().unwrap();
                let len = u32::from_le_bytes(state[pos + 4..pos + 8].try_into().unwrap());
                lens.insert(t, len as usize);
                pos += SECTION_HEAD + len as usize;
            }
            for spec in [
                IDENTITY_SECTION,
                CommonCfg::SECTION,
                LmBlock::SECTION,
                SEAL_SECTION,
            ] {
                assert_eq!(lens[&spec.tag()], declared_len(spec.body), "{}", spec.name);
            }
            let (head, per_queue) = NetEngine::QUEUES_SECTION
                .body
                .split_once("then per queue:")
                .unwrap();
            let nq = usize::from(a.dev.layout().num_queues);
            assert_eq!(
                lens[&tag::QUEUES],
                declared_len(head) + nq * declared_len(per_queue)
            );
            assert_eq!(lens[&tag::PCI], CONFIG_LEN);
        }

        /// A stream saved by the device before its state was split into parts
        /// (tests/fixtures/state-v1.bin: two queue pairs, traffic on queue 1, a paused device,
        /// frames in the receive FIFO). It must still load, and saving it again must
        /// give the same bytes: the format is version 1, unchanged. Regenerate only on a
        /// deliberate version bump, with VDPA_EMU_WRITE_STATE_FIXTURE=1.
        #[test]
        fn a_version_1_stream_from_before_still_loads() {
            const FIXTURE: &str =
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-v1.bin");
            if std::env::var_os("VDPA_EMU_WRITE_STATE_FIXTURE").is_some() {
                let a = Rig::new(None);
                a.start();
                for i in 0..3 {
                    a.post_tx(i);
                }
                a.kick(1);
                a.dev.pause();
                a.post_tx(3);
                a.kick(1);
                std::fs::create_dir_all(std::path::Path::new(FIXTURE).parent().unwrap()).unwrap();
                std::fs::write(FIXTURE, a.dev.save_state()).unwrap();
            }
            let saved = std::fs::read(FIXTURE).unwrap();
            let b = Rig::new(None);
            b.dev.pause();
            b.dev.restore_state(&saved).unwrap();
            assert_eq!(
                b.dev.save_state(),
                saved,
                "restore then save is the identity"
            );
            assert_eq!(b.dev.status(), 15);
            let q1 = b.dev.queue(1).unwrap();
            assert!(q1.enabled);
            assert_eq!((q1.last_avail, q1.last_used), (3, 3));
            assert_eq!(b.dev.inbox().len(), 3);
        }

        /// A stream from the device before its config space grew from 0x11 to 0x18 bytes
        /// (the RSS fields of virtio 1.2 5.1.4): the format is the same, the device is not,
        /// and the destination says where they first differ and stays reset. That device's
        /// common window was also shorter (0x3A, before queue_reset), so the first
        /// difference is the common capability's length (config space byte 0x5C); the
        /// device-specific capability's length (byte 0x90) differs too.
        #[test]
        fn a_stream_from_the_shorter_config_space_is_refused_at_the_capability_length() {
            let b = refused_at_common_capability_length("state-v1-cfg17.bin");
            let mut cfg = [0u8; 1];
            b.dev.region_read(REGION_CONFIG, 0x90, &mut cfg).unwrap();
            assert_eq!(
                cfg[0], 0x18,
                "and the device-specific length differs as well"
            );
        }

        /// A stream from the device before the common window grew from 0x3A to 0x3C bytes
        /// (queue_reset, VIRTIO_F_RING_RESET, virtio 1.2 4.1.4.3): the same format, another
        /// device; refused at the common capability's length (config space byte 0x5C: Linux
        /// vp_check_common_size needs the longer window for RING_RESET), destination reset.
        #[test]
        fn a_stream_from_the_shorter_common_window_is_refused_at_its_capability_length() {
            refused_at_common_capability_length("state-v1-common58.bin");
        }

        /// Restores tests/fixtures/`fixture` (saved by a device whose common window was 0x3A
        /// bytes) into a fresh device: refused where the common capability's length differs
        /// (config space byte 0x5C), the device left reset.
        fn refused_at_common_capability_length(fixture: &str) -> Rig {
            let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
            let saved = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let b = Rig::new(None);
            assert_eq!(
                b.dev.restore_state(&saved),
                Err(SnapshotError::ConfigMismatch {
                    offset: 0x5C,
                    saved: 0x3A,
                    here: 0x3C
                })
            );
            assert_eq!(b.dev.status(), 0);
            b
        }

        /// The optional `RSSC` section: taken when it is an RSS_CONFIG this device accepts with
        /// max_tx_vq = the saved curr_pairs, written back unchanged, refused otherwise (the
        /// device left reset), and at most once.
        #[test]
        fn an_rss_section_is_checked_against_the_device() {
            use crate::net::rss::RssConfig;
            let a = Rig::new(None);
            a.start();
            a.dev.pause();
            let plain = a.dev.save_state();
            let with_rss = |rss: &[u8], times: usize| {
                let mut s = plain[..plain.len() - (SECTION_HEAD + 8)].to_vec();
                for _ in 0..times {
                    s.extend_from_slice(&tag::RSS);
                    s.extend_from_slice(&(rss.len() as u32).to_le_bytes());
                    s.extend_from_slice(rss);
                }
                super::sealed(s)
            };
            let cfg = RssConfig {
                hash_types: bar_registers::virtio::rss::SUPPORTED_HASH_TYPES,
                table: vec![0, 1, 1, 0],
                unclassified: 1,
                key: [7; 40],
                key_len: 40,
            };
            let b = Rig::new(Some(&a.shm));
            b.dev.pause();
            // curr_pairs is 1 (no VQ_PAIRS_SET): max_tx_vq must say 1.
            let good = with_rss(&cfg.encode(1), 1);
            b.dev.restore_state(&good).unwrap();
            assert_eq!(b.dev.save_state(), good, "RSS state written back unchanged");
            let refused = |s: Vec<u8>| {
                let r = b.dev.restore_state(&s);
                assert_eq!(b.dev.status(), 0, "left reset");
                r.unwrap_err()
            };
            let bad_pair = RssConfig {
                table: vec![0, 2],
                ..cfg.clone()
            };
            let off = RssConfig {
                hash_types: 0,
                key_len: 0,
                ..cfg.clone()
            };
            for (what, s) in [
                (
                    "a queue pair the device lacks",
                    with_rss(&bad_pair.encode(1), 1),
                ),
                (
                    "max_tx_vq other than curr_pairs",
                    with_rss(&cfg.encode(2), 1),
                ),
                ("RSS off", with_rss(&off.encode(1), 1)),
                ("truncated", with_rss(&cfg.encode(1)[..20], 1)),
            ] {
                assert!(
                    matches!(
                        refused(s),
                        SnapshotError::Invalid {
                            field: "RSS configuration",
                            ..
                        }
                    ),
                    "{what}"
                );
            }
            assert_eq!(
                refused(with_rss(&cfg.encode(1), 2)),
                SnapshotError::DuplicateSection { tag: "RSSC".into() }
            );
            // Without the section RSS is off again.
            b.dev.restore_state(&plain).unwrap();
            assert_eq!(b.dev.save_state(), plain);
        }

        #[test]
        fn incompatible_and_hostile_streams_are_refused_without_panic() {
            let a = Rig::new(None);
            a.start();
            a.post_tx(0);
            a.kick(1);
            a.dev.pause();
            let state = a.dev.save_state();
            // Another kind of device.
            let other = Device::new(DeviceConfig::with_queue_pairs(3)).unwrap();
            assert!(matches!(
                other.restore_state(&state),
                Err(SnapshotError::Incompatible { .. })
            ));
            // Truncated anywhere.
            let b = Rig::new(Some(&a.shm));
            for n in (0..state.len()).step_by(7) {
                assert!(
                    b.dev.restore_state(&state[..n]).is_err(),
                    "{n} bytes accepted"
                );
                assert_eq!(b.dev.status(), 0, "left reset");
            }
            // Random corruption, resealed so that the section decoders and the validation see it.
            let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
            let mut refused = 0;
            for _ in 0..3000 {
                let mut s = state.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(HEADER_LEN..s.len() - 16);
                    s[i] = rng.gen();
                }
                let n = s.len();
                let seal = fnv1a64(&s[..n - 16]);
                s[n - 8..].copy_from_slice(&seal.to_le_bytes());
                match b.dev.restore_state(&s) {
                    Ok(()) => {}
                    Err(_) => {
                        refused += 1;
                        assert_eq!(b.dev.status(), 0);
                    }
                }
            }
            assert!(refused > 100, "only {refused} corruptions refused");
            // The device still takes the good state afterwards.
            b.dev.restore_state(&state).unwrap();
            assert_eq!(b.dev.save_state(), state);
        }
    }

    #[test]
    fn format_table_is_the_section_declarations() {
        let rows: Vec<&str> = include_str!("snapshot.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .collect();
        let declared: Vec<String> = SECTIONS
            .iter()
            .chain(&OPTIONAL_SECTIONS)
            .chain([&SEAL_SECTION])
            .map(|s| format!("{}` | {} |", s.name, s.body))
            .collect();
        assert_eq!(rows, declared, "the module's format table");
    }

    #[test]
    fn fnv_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
