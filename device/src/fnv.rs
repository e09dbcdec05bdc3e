//! FNV-1a, 64 bits (the Fowler/Noll/Vo hash, draft-eastlake-fnv): the device-state stream's
//! seal. Not cryptographic.

/// FNV-64 offset basis.
pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-64 prime.
pub const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues hash `h` over `bytes`.
pub fn extend(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The FNV-1a 64 hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    extend(OFFSET_BASIS, bytes)
}
