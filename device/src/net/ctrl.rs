//! The control virtqueue (virtio 1.2 5.1.6.5): `{u8 class; u8 command; data[]; u8 ack}` with
//! the ack in the first device-writable byte.

use super::engine::{Datapath, NetEngine};
use super::lane::Lane;
use super::MAX_CTRL_CHAIN;
use crate::fault::DeviceFault;
use crate::queue::chain::ChainKind;
use crate::quirks::Quirk;
use crate::state::QueueState;
use bar_registers::virtio::{bits, net_status};
use dma::DmaKind;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, VIRTIO_NET_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};

/// The ack byte of a command (5.1.6.5: virtio_net_ctrl_ack).
fn ack_byte(ok: bool) -> u8 {
    if ok {
        VIRTIO_NET_OK as u8
    } else {
        VIRTIO_NET_ERR as u8
    }
}

impl NetEngine {
    /// Drains the control queue.
    pub(crate) fn service_ctrl(
        &mut self,
        q: u16,
        dp: &mut Datapath<'_>,
    ) -> Result<(), DeviceFault> {
        loop {
            let NetEngine {
                lanes, chain, buf, ..
            } = self;
            let mut lane = lanes.lock(q);
            let Lane { slot, dma, .. } = &mut *lane;
            let QueueState::Enabled(ring) = &mut slot.state else {
                return Ok(());
            };
            if ring.fetch_avail(dma, 16)? == 0 {
                if ring.arm_notification(dma)? {
                    continue;
                }
                return Ok(());
            }
            if !ring.pop(dma, chain, ChainKind::Ctrl, MAX_CTRL_CHAIN)? {
                continue;
            }
            buf.clear();
            let mut ack_addr = None;
            for d in &chain.descs {
                if d.writable {
                    ack_addr.get_or_insert(d.addr);
                    continue;
                }
                let start = buf.len();
                buf.resize(start + d.len as usize, 0);
                dma.read(d.addr, &mut buf[start..], DmaKind::PacketRead)
                    .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            }
            let head = chain.head;
            let Some(ack_addr) = ack_addr else {
                return Err(DeviceFault::CtrlNoStatus { queue: q });
            };
            // The command may reach other queues (VQ_PAIRS_SET): not with this lane held.
            drop(lane);
            let cmd = std::mem::take(&mut self.buf);
            let ack = self.ctrl_command(&cmd, dp);
            self.buf = cmd;
            dp.counters.ctrl_commands += 1;
            if ack != ack_byte(true) {
                dp.counters.ctrl_errors += 1;
            }
            let mut lane = self.lanes.lock(q);
            let Lane { slot, dma, .. } = &mut *lane;
            let QueueState::Enabled(ring) = &mut slot.state else {
                return Ok(());
            };
            dma.write(ack_addr, &[ack], DmaKind::PacketWrite)
                .map_err(|fault| DeviceFault::Dma { queue: q, fault })?;
            ring.push_used(head, 1);
            dp.counters.queues[usize::from(q)].chains += 1;
            dp.publish(ring, dma, q)?;
        }
    }

    /// Executes one command; returns the ack byte.
    fn ctrl_command(&mut self, cmd: &[u8], dp: &mut Datapath<'_>) -> u8 {
        let (Some(&class), Some(&command)) = (cmd.first(), cmd.get(1)) else {
            return ack_byte(false);
        };
        let data = &cmd[2..];
        let _span = tracing::debug_span!("ctrl", class, command).entered();
        let ok = match (u32::from(class), u32::from(command)) {
            // 5.1.6.5.1: PROMISC / ALLMULTI, one byte on/off.
            (
                VIRTIO_NET_CTRL_RX,
                c @ (VIRTIO_NET_CTRL_RX_PROMISC | VIRTIO_NET_CTRL_RX_ALLMULTI),
            ) if dp.has(bits::CTRL_RX) && data.len() == 1 => {
                let on = data[0] != 0;
                if c == VIRTIO_NET_CTRL_RX_PROMISC {
                    self.net.promisc = on;
                } else {
                    self.net.allmulti = on;
                }
                true
            }
            // 5.1.6.5.2: MAC_TABLE_SET: two {le32 entries; u8 macs[entries][6]} tables.
            (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) if dp.has(bits::CTRL_RX) => {
                match parse_mac_tables(data) {
                    Some((uc, mc)) => {
                        self.net.uc_table = uc;
                        self.net.mc_table = mc;
                        true
                    }
                    None => false,
                }
            }
            // MAC_ADDR_SET: six bytes; the config space mac follows.
            (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET)
                if dp.has(bits::CTRL_MAC_ADDR) && data.len() == 6 =>
            {
                self.net.mac.copy_from_slice(data);
                dp.config_changes += 1;
                true
            }
            // 5.1.6.5.4: ANNOUNCE_ACK clears VIRTIO_NET_S_ANNOUNCE.
            (VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK)
                if dp.has(bits::GUEST_ANNOUNCE) =>
            {
                if self.net.status & net_status::ANNOUNCE != 0 {
                    self.net.status &= !net_status::ANNOUNCE;
                    dp.config_changes += 1;
                }
                true
            }
            // 5.1.6.5.5: VQ_PAIRS_SET, le16 in 1..=max_virtqueue_pairs.
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET)
                if dp.has(bits::MQ) && data.len() == 2 =>
            {
                let n = u16::from_le_bytes([data[0], data[1]]);
                if (1..=self.params.queue_pairs).contains(&n) {
                    self.net.curr_pairs = n;
                    // Steering by flows again (QEMU hw/net/virtio-net.c virtio_net_handle_mq
                    // turns RSS off on every MQ command, and hash reporting with it).
                    self.net.rss = None;
                    self.net.hash_cfg = None;
                    self.steering_changed();
                    true
                } else {
                    false
                }
            }
            // 5.1.6.5.7.1: RSS_CONFIG sets the key, hash types and indirection table, and the
            // transmit queues in use (max_tx_vq); a refused one leaves the state as it was.
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG) if dp.has(bits::RSS) => {
                match super::rss::parse_rss_config(data, self.params.queue_pairs) {
                    Ok(cmd) => {
                        tracing::debug!(pairs = cmd.pairs, on = cmd.config.is_some(), "RSS_CONFIG");
                        self.net.curr_pairs = cmd.pairs;
                        self.net.rss = cmd.config;
                        self.steering_changed();
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, len = data.len(), "RSS_CONFIG refused");
                        false
                    }
                }
            }
            // 5.1.6.5.6.4: HASH_CONFIG sets the hash types and key that HASH_REPORT reports
            // with, without steering; a refused one leaves the state as it was.
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG) if dp.has(bits::HASH_REPORT) => {
                match super::rss::parse_hash_config(data) {
                    Ok(h) => {
                        tracing::debug!(on = h.is_some(), "HASH_CONFIG");
                        self.net.hash_cfg = h;
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, len = data.len(), "HASH_CONFIG refused");
                        false
                    }
                }
            }
            // 5.1.6.5.6.1: GUEST_OFFLOADS_SET, le64 of GUEST_* feature bits, each negotiated.
            (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET) => {
                match super::offload::guest::parse_set(data, dp.features) {
                    Ok(g) => {
                        tracing::debug!(
                            offloads = format_args!("{:#x}", g.0),
                            "GUEST_OFFLOADS_SET"
                        );
                        if !self.params.quirks.has(Quirk::GuestOffloadsIgnored) {
                            self.net.guest_offloads = Some(g);
                            self.apply_guest_offloads(dp.features);
                        }
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "GUEST_OFFLOADS_SET refused");
                        false
                    }
                }
            }
            _ => false,
        };
        ack_byte(ok)
    }
}

type MacTables = (Vec<[u8; 6]>, Vec<[u8; 6]>);

fn parse_mac_tables(data: &[u8]) -> Option<MacTables> {
    fn table(d: &[u8]) -> Option<(Vec<[u8; 6]>, &[u8])> {
        let n = u32::from_le_bytes(d.get(0..4)?.try_into().ok()?) as usize;
        let bytes = n.checked_mul(6)?;
        let body = d.get(4..4 + bytes)?;
        Some((
            body.chunks_exact(6)
                .map(|c| c.try_into().expect("6 bytes"))
                .collect(),
            &d[4 + bytes..],
        ))
    }
    let (uc, rest) = table(data)?;
    let (mc, rest) = table(rest)?;
    rest.is_empty().then_some((uc, mc))
}
