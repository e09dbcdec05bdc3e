//! Little-endian helpers for register accesses of 1 to 8 bytes at any byte of a register.

/// The low `len` bytes of a u64.
pub(crate) fn mask(len: usize) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

/// The written bytes as a value.
pub(crate) fn to_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    u64::from_le_bytes(b)
}

/// Stores the low bytes of `v` into `data`.
pub(crate) fn put(data: &mut [u8], v: u64) {
    let n = data.len().min(8);
    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
}

/// Merges a partial write of `len` bytes at byte `rel` into `cur`.
pub(crate) fn merge(cur: u64, rel: u64, len: usize, val: u64) -> u64 {
    let shift = 8 * rel;
    (cur & !(mask(len) << shift)) | ((val & mask(len)) << shift)
}
