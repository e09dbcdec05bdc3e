//! Injected design bugs: each quirk makes the model behave like a device with one realistic
//! hardware bug, so the validator and the migration checker can prove they catch it.

use bitvec::BitArr;

/// One injectable bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quirk {
    /// LM ring state writes are ignored: the queue always resumes at 0 (or wherever it was).
    RingStateReadOnly,
    /// The LM ring state's last_used_idx lags the real used index by one completion.
    StaleUsedIdx,
    /// Used ring writes (elements, used->idx, avail_event) are not marked in the dirty log.
    LogSkipsUsedRing,
    /// The dirty log ignores its end address and writes bits past it.
    LogIgnoresEnd,
    /// used_event is ignored: the device interrupts after every batch even with EVENT_IDX.
    IgnoresEventIdx,
    /// queue_enable reads 0 at once after a stop, before the ring state is final.
    EarlyQueueDisable,
    /// VIRTIO_NET_F_GUEST_ANNOUNCE is not offered (the device would need RARP instead).
    NoGuestAnnounce,
    /// RX used elements report the buffer's capacity instead of the bytes written.
    SplitRingUsedLenWrong,
    /// RSS steers by the hash modulo the queue pairs, ignoring the indirection table.
    RssIgnoresIndirectionTable,
    /// VIRTIO_F_IN_ORDER is offered, but the split ring engine completes a batch's first two
    /// buffers in swapped order.
    CompletesOutOfOrder,
    /// TX checksum offload adds an odd trailing byte as the low byte of its word, so the
    /// checksum is wrong whenever the checksummed length is odd.
    CsumOddLengthWrong,
    /// TX segmentation gives every segment the GSO frame's IP ID instead of incrementing it.
    TsoIpIdFixed,
    /// TX segmentation gives every segment the GSO frame's TCP sequence number.
    TsoSeqWrong,
    /// CTRL_GUEST_OFFLOADS_SET is acked but ignored: the receive offloads stay as negotiated.
    GuestOffloadsIgnored,
    /// HASH_REPORT names the IP address type for a TCP/UDP 4-tuple hash.
    HashReportTypeWrong,
    /// A queue reset (VIRTIO_F_RING_RESET) keeps the queue's last_avail/last_used indices, so
    /// the re-enabled queue resumes at the old position instead of at 0.
    RingResetKeepsState,
    /// With VIRTIO_F_NOTIFICATION_DATA the device takes the vqn of a doorbell's data from bits
    /// 16-31 (where the next avail index is) instead of bits 0-15.
    NotificationDataVqnFromHighBits,
}

impl Quirk {
    /// Every quirk.
    pub const ALL: [Quirk; 17] = [
        Quirk::RingStateReadOnly,
        Quirk::StaleUsedIdx,
        Quirk::LogSkipsUsedRing,
        Quirk::LogIgnoresEnd,
        Quirk::IgnoresEventIdx,
        Quirk::EarlyQueueDisable,
        Quirk::NoGuestAnnounce,
        Quirk::SplitRingUsedLenWrong,
        Quirk::RssIgnoresIndirectionTable,
        Quirk::CompletesOutOfOrder,
        Quirk::CsumOddLengthWrong,
        Quirk::TsoIpIdFixed,
        Quirk::TsoSeqWrong,
        Quirk::GuestOffloadsIgnored,
        Quirk::HashReportTypeWrong,
        Quirk::RingResetKeepsState,
        Quirk::NotificationDataVqnFromHighBits,
    ];

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Quirk::RingStateReadOnly => "ring-state-read-only",
            Quirk::StaleUsedIdx => "stale-used-idx",
            Quirk::LogSkipsUsedRing => "log-skips-used-ring",
            Quirk::LogIgnoresEnd => "log-ignores-end",
            Quirk::IgnoresEventIdx => "ignores-event-idx",
            Quirk::EarlyQueueDisable => "early-queue-disable",
            Quirk::NoGuestAnnounce => "no-guest-announce",
            Quirk::SplitRingUsedLenWrong => "split-ring-used-len-wrong",
            Quirk::RssIgnoresIndirectionTable => "rss-ignores-indirection-table",
            Quirk::CompletesOutOfOrder => "completes-out-of-order",
            Quirk::CsumOddLengthWrong => "csum-odd-length-wrong",
            Quirk::TsoIpIdFixed => "tso-ip-id-fixed",
            Quirk::TsoSeqWrong => "tso-seq-wrong",
            Quirk::GuestOffloadsIgnored => "guest-offloads-ignored",
            Quirk::HashReportTypeWrong => "hash-report-type-wrong",
            Quirk::RingResetKeepsState => "ring-reset-keeps-state",
            Quirk::NotificationDataVqnFromHighBits => "notification-data-vqn-from-high-bits",
        }
    }

    /// One sentence on the bug.
    pub fn describe(self) -> &'static str {
        match self {
            Quirk::RingStateReadOnly => "the LM ring state register ignores writes, so a restored queue does not resume where the source stopped",
            Quirk::StaleUsedIdx => "the LM ring state reports a last_used_idx one completion behind the used ring",
            Quirk::LogSkipsUsedRing => "the device does not log its used-ring writes in the dirty-page log",
            Quirk::LogIgnoresEnd => "the device writes dirty-log bits past the log end address",
            Quirk::IgnoresEventIdx => "the device ignores used_event and interrupts after every batch although EVENT_IDX was negotiated",
            Quirk::EarlyQueueDisable => "queue_enable reads 0 right after a stop, before the LM ring state is final",
            Quirk::NoGuestAnnounce => "the device does not offer VIRTIO_NET_F_GUEST_ANNOUNCE",
            Quirk::SplitRingUsedLenWrong => "RX used elements carry the buffer capacity instead of the number of bytes written",
            Quirk::RssIgnoresIndirectionTable => "RSS steers a frame by its hash modulo the queue pairs instead of through the driver's indirection table",
            Quirk::CompletesOutOfOrder => "VIRTIO_F_IN_ORDER is negotiated but the split ring's used elements of a batch come out of order (the first two swapped)",
            Quirk::CsumOddLengthWrong => "TX checksum offload stores a wrong checksum when the checksummed length is odd (the trailing byte is summed as the low byte of its word)",
            Quirk::TsoIpIdFixed => "TX segmentation gives every IPv4 segment the first IP ID instead of incrementing it",
            Quirk::TsoSeqWrong => "TX segmentation does not advance the TCP sequence number from segment to segment",
            Quirk::GuestOffloadsIgnored => "GUEST_OFFLOADS_SET is acked but ignored: the device keeps handing on GSO frames the driver turned off",
            Quirk::HashReportTypeWrong => "HASH_REPORT reports a TCP/UDP 4-tuple hash as an IPv4/IPv6 address hash (hash_report type wrong, value right)",
            Quirk::RingResetKeepsState => "a queue reset (VIRTIO_F_RING_RESET) keeps the old last_avail/last_used indices, so the re-enabled queue does not start at 0",
            Quirk::NotificationDataVqnFromHighBits => "with VIRTIO_F_NOTIFICATION_DATA the doorbell's vqn is taken from bits 16-31 (the next avail index) instead of bits 0-15",
        }
    }

    /// Parses a CLI name.
    pub fn parse(s: &str) -> Option<Quirk> {
        Quirk::ALL.into_iter().find(|q| q.name() == s)
    }
}

/// One bit per [`Quirk`], indexed by its declaration order.
type QuirkBits = BitArr!(for Quirk::ALL.len(), in u16);

/// A set of quirks.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks(QuirkBits);

impl std::fmt::Debug for Quirks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Quirks {
    /// No quirks: a healthy device.
    pub const NONE: Quirks = Quirks(QuirkBits::ZERO);

    /// Whether `q` is on.
    pub fn has(self, q: Quirk) -> bool {
        self.0[q as usize]
    }

    /// Adds `q`.
    pub fn with(mut self, q: Quirk) -> Quirks {
        self.0.set(q as usize, true);
        self
    }

    /// Removes `q`.
    pub fn without(mut self, q: Quirk) -> Quirks {
        self.0.set(q as usize, false);
        self
    }

    /// The quirks that are on.
    pub fn iter(self) -> impl Iterator<Item = Quirk> {
        Quirk::ALL.into_iter().filter(move |&q| self.has(q))
    }
}

impl FromIterator<Quirk> for Quirks {
    fn from_iter<I: IntoIterator<Item = Quirk>>(it: I) -> Self {
        it.into_iter().fold(Quirks::NONE, Quirks::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for q in Quirk::ALL {
            assert_eq!(Quirk::parse(q.name()), Some(q));
        }
        let s: Quirks = [Quirk::StaleUsedIdx, Quirk::NoGuestAnnounce]
            .into_iter()
            .collect();
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![Quirk::StaleUsedIdx, Quirk::NoGuestAnnounce]
        );
    }
}
