//! Base Address Registers: memory BARs, 32- and 64-bit, and the sizing protocol.
//!
//! A BAR is described once by the owner ([`Bar`]) and lives in configuration space as one or
//! two 32-bit registers. The sizing protocol falls out of a write mask: the address bits below
//! the BAR size and the four flag bits are read-only, so writing all-ones reads back
//! `!(size - 1) | flags`, which is the size mask software expects (PCI Local Bus 3.0, 6.2.5.1).

use crate::Error;

/// Number of BAR slots in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Offset of BAR0 in configuration space; BAR `n` is at `BAR0_OFFSET + 4 * n`.
pub const BAR0_OFFSET: u16 = 0x10;

/// Memory-space indicator bit (bit 0 clear) and type field values of a BAR register.
pub mod flags {
    /// Bit 0: set for an I/O BAR, clear for a memory BAR.
    pub const IO_SPACE: u32 = 1 << 0;
    /// Bits 2:1 = 00: memory BAR decoded anywhere in 32-bit space.
    pub const MEM_TYPE_32: u32 = 0b00 << 1;
    /// Bits 2:1 = 10: memory BAR decoded anywhere in 64-bit space (uses two slots).
    pub const MEM_TYPE_64: u32 = 0b10 << 1;
    /// Mask of the type field.
    pub const MEM_TYPE_MASK: u32 = 0b11 << 1;
    /// Bit 3: prefetchable.
    pub const PREFETCHABLE: u32 = 1 << 3;
    /// The read-only flag bits of a memory BAR.
    pub const MEM_FLAGS_MASK: u32 = 0xf;
}

/// Address width of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// A single 32-bit register; the BAR lives below 4 GiB.
    Memory32,
    /// Two consecutive registers (low, high); the BAR can live anywhere in 64-bit space.
    Memory64,
}

/// The owner's description of one memory BAR: slot, size, kind and prefetchability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    index: u8,
    size: u64,
    kind: BarKind,
    prefetchable: bool,
}

/// Smallest memory BAR the PCI specification allows.
pub const MIN_BAR_SIZE: u64 = 16;

impl Bar {
    /// A 32-bit memory BAR of `size` bytes (a power of two, 16 bytes to 2 GiB) in slot `index`.
    pub fn memory32(index: u8, size: u64, prefetchable: bool) -> Result<Self, Error> {
        Self::new(index, size, BarKind::Memory32, prefetchable)
    }

    /// A 64-bit memory BAR of `size` bytes (a power of two, at least 16 bytes) in slots
    /// `index` and `index + 1`.
    pub fn memory64(index: u8, size: u64, prefetchable: bool) -> Result<Self, Error> {
        Self::new(index, size, BarKind::Memory64, prefetchable)
    }

    fn new(index: u8, size: u64, kind: BarKind, prefetchable: bool) -> Result<Self, Error> {
        let slots = match kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        if usize::from(index) + slots > NUM_BARS {
            return Err(Error::InvalidBarIndex(index));
        }
        let max = match kind {
            BarKind::Memory32 => 1 << 31,
            BarKind::Memory64 => 1 << 63,
        };
        if !size.is_power_of_two() || !(MIN_BAR_SIZE..=max).contains(&size) {
            return Err(Error::InvalidBarSize(size));
        }
        Ok(Self {
            index,
            size,
            kind,
            prefetchable,
        })
    }

    /// The slot of the BAR (the low slot of a 64-bit pair).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// 32- or 64-bit.
    pub fn kind(&self) -> BarKind {
        self.kind
    }

    /// Whether the BAR is marked prefetchable.
    pub fn prefetchable(&self) -> bool {
        self.prefetchable
    }

    /// Whether the BAR occupies two slots.
    pub fn is_64bit(&self) -> bool {
        self.kind == BarKind::Memory64
    }

    /// Whether `address` is a valid decoded address for this BAR (aligned, and below 4 GiB for
    /// a 32-bit BAR).
    pub fn is_valid_address(&self, address: u64) -> bool {
        let fits = match self.kind {
            BarKind::Memory32 => address <= u64::from(u32::MAX),
            BarKind::Memory64 => true,
        };
        fits && address & (self.size - 1) == 0
    }

    /// The read-only low bits of the low register: memory type and prefetchable flag.
    pub fn flag_bits(&self) -> u32 {
        let ty = match self.kind {
            BarKind::Memory32 => flags::MEM_TYPE_32,
            BarKind::Memory64 => flags::MEM_TYPE_64,
        };
        ty | if self.prefetchable {
            flags::PREFETCHABLE
        } else {
            0
        }
    }

    /// Register contents for a BAR decoded at `address`: `(low, high)`, `high` only for 64-bit.
    pub fn registers(&self, address: u64) -> (u32, Option<u32>) {
        let low = (address as u32 & !flags::MEM_FLAGS_MASK) | self.flag_bits();
        let high = self.is_64bit().then_some((address >> 32) as u32);
        (low, high)
    }

    /// Guest write masks of the registers: `(low, high)`. Address bits below the size and the
    /// flag bits are read-only; this is what makes the sizing protocol work.
    pub fn write_masks(&self) -> (u32, Option<u32>) {
        let mask = !(self.size - 1);
        let low = mask as u32 & !flags::MEM_FLAGS_MASK;
        let high = self.is_64bit().then_some((mask >> 32) as u32);
        (low, high)
    }

    /// The address the registers `(low, high)` decode to (`high` is ignored for a 32-bit BAR).
    pub fn decode(&self, low: u32, high: u32) -> u64 {
        let low = u64::from(low & !flags::MEM_FLAGS_MASK);
        match self.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 => low | (u64::from(high) << 32),
        }
    }

    /// Configuration space offset of the low register.
    pub fn register_offset(&self) -> u16 {
        BAR0_OFFSET + 4 * u16::from(self.index)
    }
}

/// Decoded view of a BAR as a driver sees it after sizing (see [`crate::driver::size_bar`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// Current base address.
    pub address: u64,
    /// Size in bytes (0 if the BAR is not implemented).
    pub size: u64,
    /// Kind of memory BAR.
    pub kind: BarKind,
    /// Whether the prefetchable bit is set.
    pub prefetchable: bool,
}

/// Size of a memory BAR from the values read back after writing all-ones (`high` only matters
/// for a 64-bit BAR). Returns 0 for an unimplemented BAR.
pub fn size_from_mask(low: u32, high: u32, kind: BarKind) -> u64 {
    let low = u64::from(low & !flags::MEM_FLAGS_MASK);
    let mask = match kind {
        BarKind::Memory32 if low == 0 => return 0,
        BarKind::Memory32 => low | 0xffff_ffff_0000_0000,
        BarKind::Memory64 => low | (u64::from(high) << 32),
    };
    (!mask).wrapping_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_from_mask_covers_kinds() {
        assert_eq!(size_from_mask(0xffff_f000, 0, BarKind::Memory32), 0x1000);
        assert_eq!(size_from_mask(0, 0, BarKind::Memory32), 0);
        assert_eq!(
            size_from_mask(0xffff_0004, 0xffff_ffff, BarKind::Memory64),
            0x1_0000
        );
        assert_eq!(
            size_from_mask(0x4, 0xffff_fffe, BarKind::Memory64),
            0x2_0000_0000
        );
        assert_eq!(
            size_from_mask(0x4, 0xffff_ffff, BarKind::Memory64),
            0x1_0000_0000
        );
    }

    #[test]
    fn registers_round_trip() {
        let bar = Bar::memory64(2, 0x4000, true).unwrap();
        let (low, high) = bar.registers(0x12_3456_8000);
        assert_eq!(
            low & flags::MEM_FLAGS_MASK,
            flags::MEM_TYPE_64 | flags::PREFETCHABLE
        );
        assert_eq!(bar.decode(low, high.unwrap()), 0x12_3456_8000);
        assert_eq!(bar.register_offset(), 0x18);
        assert!(!bar.is_valid_address(0x2000));
        assert!(!Bar::memory32(0, 0x1000, false)
            .unwrap()
            .is_valid_address(0x1_0000_0000));
    }
}
