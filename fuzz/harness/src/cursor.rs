//! A byte cursor the fuzz targets decode their inputs with, and the writer the seed generator
//! encodes seeds with (its exact inverse).
//!
//! The decoders are hand-written rather than `#[derive(Arbitrary)]` so that the committed seed
//! corpora can be produced by encoding meaningful command sequences (`Writer`): libFuzzer
//! mutates real protocol exchanges and ring images from the first execution on. Reading past
//! the end yields zeros, so every byte string decodes to something.

/// Reads little-endian values off the fuzz input; zeros once it runs out.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let n = self.data.len().saturating_sub(self.pos);
        self.bytes(n)
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let src = self.bytes(N);
        b[..src.len()].copy_from_slice(src);
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }
}

/// Encodes what [`Cursor`] decodes (the seed generator's side).
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v.into())
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_is_the_inverse_and_the_end_reads_zero() {
        let mut w = Writer::default();
        w.u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX - 1)
            .bytes(b"xy");
        let mut c = Cursor::new(&w.0);
        assert_eq!(c.u8(), 7);
        assert_eq!(c.u16(), 0x1234);
        assert_eq!(c.u32(), 0xdead_beef);
        assert_eq!(c.u64(), u64::MAX - 1);
        assert_eq!(c.bytes(5), b"xy");
        assert!(c.is_empty());
        assert_eq!(c.u64(), 0);
        let mut half = Cursor::new(&[1, 2]);
        assert_eq!(half.u32(), 0x0201);
    }
}
