//! Hands out naturally aligned BAR addresses from the PCI MMIO window.

use super::PciError;

/// A bump allocator over `[start, end)`.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// An allocator over `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        BarAllocator { next: start, end }
    }

    /// Allocates `size` bytes aligned to `size` (rounded up to a power of two, at least 4 KiB,
    /// as BARs are).
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        let size = size
            .max(0x1000)
            .checked_next_power_of_two()
            .ok_or(PciError::NoBarSpace(size))?;
        let addr = self
            .next
            .checked_next_multiple_of(size)
            .filter(|a| a.checked_add(size).is_some_and(|e| e <= self.end))
            .ok_or(PciError::NoBarSpace(size))?;
        self.next = addr + size;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_bounded() {
        let mut a = BarAllocator::new(0xE000_1000, 0xE010_0000);
        assert_eq!(a.allocate(0x4000), Ok(0xE000_4000));
        assert_eq!(a.allocate(0x100), Ok(0xE000_8000));
        assert_eq!(a.allocate(0x8_0000), Ok(0xE008_0000));
        assert_eq!(a.allocate(0x8_0000), Err(PciError::NoBarSpace(0x8_0000)));
        assert_eq!(
            a.allocate(1 << 63 | 1),
            Err(PciError::NoBarSpace(1 << 63 | 1))
        );
    }
}
