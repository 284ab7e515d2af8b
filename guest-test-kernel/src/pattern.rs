//! Data patterns that tell every sector of every run apart, and a small PRNG.
//!
//! Each 8-byte word of a sector is a function of `(seed, sector, word index)`: data left by an
//! earlier run (another seed), written to the wrong sector, or shifted inside a sector all fail
//! verification.

use core::fmt;

/// Bytes per virtio-blk sector (VIRTIO 1.x, 5.2.6: sectors are always 512 bytes).
pub const SECTOR_SIZE: usize = 512;

const WORDS_PER_SECTOR: usize = SECTOR_SIZE / 8;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One step of SplitMix64: a strong 64-bit mixing function.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The SplitMix64 generator, for random offsets and sizes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub const fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// A value in `0..n` (`0` when `n` is 0); the bias is negligible for the ranges used here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn word(sector_key: u64, index: usize) -> u64 {
    sector_key ^ (index as u64 + 1).wrapping_mul(GOLDEN)
}

fn sector_key(seed: u64, sector: u64) -> u64 {
    mix64(seed ^ mix64(sector))
}

/// Fills `buf` (whole sectors) with the pattern of `seed` for sectors starting at `first_sector`.
/// A trailing partial sector is filled as the start of the next sector.
pub fn fill(buf: &mut [u8], first_sector: u64, seed: u64) {
    for (s, sector) in buf.chunks_mut(SECTOR_SIZE).enumerate() {
        let key = sector_key(seed, first_sector + s as u64);
        for (i, w) in sector.chunks_mut(8).enumerate() {
            let bytes = word(key, i).to_le_bytes();
            w.copy_from_slice(&bytes[..w.len()]);
        }
    }
}

/// Where verified data differed from the expected pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Byte offset into the verified buffer.
    pub offset: usize,
    /// Disk sector the byte belongs to.
    pub sector: u64,
    /// The 8-byte word expected (zero-padded for a short tail).
    pub expected: u64,
    /// The 8-byte word found.
    pub found: u64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sector {} byte {}: expected {:#018x} found {:#018x}",
            self.sector,
            self.offset % SECTOR_SIZE,
            self.expected,
            self.found
        )
    }
}

impl core::error::Error for Mismatch {}

/// Checks that `buf` holds the pattern [`fill`] would write; reports the first differing word.
pub fn verify(buf: &[u8], first_sector: u64, seed: u64) -> Result<(), Mismatch> {
    for (s, sector) in buf.chunks(SECTOR_SIZE).enumerate() {
        let sector_no = first_sector + s as u64;
        let key = sector_key(seed, sector_no);
        for (i, w) in sector.chunks(8).enumerate() {
            let expected = word(key, i) & mask(w.len());
            let found = le_word(w);
            if found != expected {
                let offset = s * SECTOR_SIZE + i * 8;
                return Err(Mismatch {
                    offset,
                    sector: sector_no,
                    expected,
                    found,
                });
            }
        }
    }
    Ok(())
}

/// Checks that `buf` is all zero bytes; `first_sector` only labels the report.
pub fn verify_zero(buf: &[u8], first_sector: u64) -> Result<(), Mismatch> {
    for (i, w) in buf.chunks(8).enumerate() {
        let found = le_word(w);
        if found != 0 {
            let offset = i * 8;
            let sector = first_sector + (offset / SECTOR_SIZE) as u64;
            return Err(Mismatch {
                offset,
                sector,
                expected: 0,
                found,
            });
        }
    }
    Ok(())
}

fn le_word(w: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..w.len()].copy_from_slice(w);
    u64::from_le_bytes(bytes)
}

fn mask(len: usize) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (len * 8)) - 1
    }
}

const _: () = assert!(WORDS_PER_SECTOR * 8 == SECTOR_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_verify_passes() {
        let mut buf = [0u8; 3 * SECTOR_SIZE];
        fill(&mut buf, 7, 42);
        assert_eq!(verify(&buf, 7, 42), Ok(()));
    }

    #[test]
    fn wrong_seed_sector_or_byte_fails() {
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        fill(&mut buf, 100, 1);
        assert!(verify(&buf, 100, 2).is_err(), "stale data from another run");
        assert!(verify(&buf, 101, 1).is_err(), "data from the wrong sector");
        buf[SECTOR_SIZE + 17] ^= 1;
        let m = verify(&buf, 100, 1).unwrap_err();
        assert_eq!((m.sector, m.offset), (101, SECTOR_SIZE + 16));
    }

    #[test]
    fn sectors_differ_from_each_other() {
        let mut a = [0u8; SECTOR_SIZE];
        let mut b = [0u8; SECTOR_SIZE];
        fill(&mut a, 0, 9);
        fill(&mut b, 1, 9);
        assert_ne!(a, b);
    }

    #[test]
    fn zero_check_finds_the_first_nonzero() {
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        assert_eq!(verify_zero(&buf, 5), Ok(()));
        buf[600] = 3;
        let m = verify_zero(&buf, 5).unwrap_err();
        assert_eq!((m.sector, m.offset), (6, 600));
    }

    #[test]
    fn short_tail_is_checked() {
        let mut buf = [0u8; 13];
        fill(&mut buf, 0, 3);
        assert_eq!(verify(&buf, 0, 3), Ok(()));
        buf[12] ^= 0x80;
        assert!(verify(&buf, 0, 3).is_err());
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut r = Rng::new(5);
        for n in [1u64, 2, 3, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(r.below(0), 0);
    }
}
