//! The vhost dirty bitmap the device logs into: bit `pfn % 64` of little-endian u64 word
//! `pfn / 64` marks 4 KiB page `pfn` written (Linux drivers/vhost/vhost.c `log_write`, QEMU
//! hw/virtio/vhost.c `vhost_dev_sync_region`; DPDK's IFC VF driver hands the device this
//! layout through IFCVF_LOG_BASE). One harvest for `migrate`, the scenario step and the
//! validator.

use dma::{SharedMemory, ShmError, PAGE_SIZE};
use std::collections::BTreeSet;

/// Bytes of a bitmap covering IOVAs below `top`, in whole u64 words.
pub fn len_for(top: u64) -> u64 {
    (top / PAGE_SIZE).div_ceil(8).next_multiple_of(8)
}

/// Reads and clears the first `len` bytes of `log` (word by word, atomically, as QEMU's
/// `vhost_dev_sync_region` does with `qatomic_xchg`), adding every set page number to `out`.
/// The log is scanned a page at a time with plain reads and only non-zero words are swapped
/// (QEMU skips zero words the same way): a bit the device sets after the scan read its word as
/// zero stays for the next harvest.
pub fn harvest(log: &SharedMemory, len: u64, out: &mut BTreeSet<u64>) -> Result<(), ShmError> {
    let mut buf = [0u8; 4096];
    let mut base = 0;
    while base < len {
        let n = (len - base).min(buf.len() as u64) as usize;
        log.read(base, &mut buf[..n])?;
        for (i, word) in buf[..n].chunks_exact(8).enumerate() {
            if word.iter().all(|&b| b == 0) {
                continue;
            }
            let w = base + 8 * i as u64;
            let mut bits = log.swap_u64(w, 0)?;
            while bits != 0 {
                out.insert(w * 8 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        base += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harvest_reads_and_clears() {
        let log = SharedMemory::new("vdpa-emu-bitmap-test", 16).unwrap();
        log.swap_u64(0, (1 << 3) | (1 << 63)).unwrap();
        log.swap_u64(8, 1).unwrap();
        let mut out = BTreeSet::new();
        harvest(&log, 16, &mut out).unwrap();
        assert_eq!(out.into_iter().collect::<Vec<_>>(), [3, 63, 64]);
        let mut again = BTreeSet::new();
        harvest(&log, 16, &mut again).unwrap();
        assert!(again.is_empty());
        // Bits past the first page of the log, and in the last word.
        let big = SharedMemory::new("vdpa-emu-bitmap-test", 3 * 4096).unwrap();
        big.swap_u64(4096 + 8, 1 << 5).unwrap();
        big.swap_u64(3 * 4096 - 8, 1 << 63).unwrap();
        let mut got = BTreeSet::new();
        harvest(&big, 3 * 4096, &mut got).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [(4096 + 8) * 8 + 5, 3 * 4096 * 8 - 1]
        );
        assert_eq!(big.read_u64(4096 + 8).unwrap(), 0, "cleared");
        assert_eq!(len_for(64 * PAGE_SIZE), 8);
        assert_eq!(len_for(65 * PAGE_SIZE), 16);
    }
}
