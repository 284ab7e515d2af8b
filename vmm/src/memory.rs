//! The guest physical memory map, and guest RAM.
//!
//! ```text
//! 0x0000_0500 ..              boot GDT (null, null, code32 0x10, data 0x18, TSS 0x20)
//! 0x0000_6000 ..              hvm_start_info
//! 0x0000_6040 .. 0x0000_7000  hvm_memmap_table_entry[]
//! 0x0000_7000 .. 0x0000_8000  kernel command line (NUL-terminated)
//! 0x0010_0000 .. low RAM end  kernel PT_LOAD segments and free RAM
//! 0xC000_0000 .. 4 GiB        MMIO hole (RAM above 3 GiB moves to 4 GiB):
//!   0xD000_0000 .. +256 MiB     PCI ECAM (bus 0 decoded: first 1 MiB)
//!   0xE000_0000 .. 0xFEC0_0000  PCI BAR window (BAR0 of slot n preassigned in order)
//!   0xFEC0_0000                 IOAPIC (in-kernel)
//!   0xFEE0_0000                 LAPIC (in-kernel)
//! 4 GiB ..                    RAM above 3 GiB, when --memory is larger than 3 GiB
//! ```

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

/// Where the boot GDT is written.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Where `hvm_start_info` is written; EBX points here at entry.
pub const START_INFO_ADDR: u64 = 0x6000;
/// Where the memory map table is written.
pub const MEMMAP_ADDR: u64 = 0x6040;
/// The most memory map entries that fit below the command line.
pub const MEMMAP_MAX_ENTRIES: usize = ((CMDLINE_ADDR - MEMMAP_ADDR) / 24) as usize;
/// Where the kernel command line is written.
pub const CMDLINE_ADDR: u64 = 0x7000;
// A split RAM layout needs 3 entries; leave room for reserved ranges later.
const _: () = assert!(MEMMAP_MAX_ENTRIES >= 8);

/// Room for the command line, its NUL included.
pub const CMDLINE_MAX_BYTES: usize = 0x1000;
/// End of the legacy low RAM reported to the guest (VGA hole and BIOS area above).
pub const LOW_RAM_END: u64 = 0xA_0000;
/// Lowest address a kernel segment may be loaded at.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the MMIO hole (4 GiB), where high RAM starts.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// PCI Express ECAM base (bus 0 is decoded).
pub const ECAM_BASE: u64 = 0xD000_0000;
/// Bytes of ECAM decoded: one bus, 32 devices x 8 functions x 4 KiB.
pub const ECAM_SIZE: u64 = 1 << 20;
/// Start of the window PCI BARs are allocated from.
pub const PCI_MMIO_START: u64 = 0xE000_0000;
/// End (exclusive) of the PCI BAR window: the IOAPIC follows.
pub const PCI_MMIO_END: u64 = 0xFEC0_0000;
/// Base of the in-kernel IOAPIC.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Base of the in-kernel local APIC.
pub const LAPIC_BASE: u64 = 0xFEE0_0000;

/// The guest RAM ranges `(start, length)` for `memory_bytes` of RAM.
pub fn ram_ranges(memory_bytes: u64) -> Vec<(u64, u64)> {
    let low = memory_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if memory_bytes > low {
        ranges.push((MMIO_HOLE_END, memory_bytes - low));
    }
    ranges
}

/// Whether `[addr, addr + len)` touches guest RAM.
pub fn overlaps_ram(memory_bytes: u64, addr: u64, len: u64) -> bool {
    let end = addr.saturating_add(len);
    ram_ranges(memory_bytes)
        .iter()
        .any(|&(s, l)| addr < s + l && s < end)
}

/// Allocates guest RAM (anonymous, zero-filled mappings).
pub fn create_guest_memory(memory_bytes: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(memory_bytes)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory {
        bytes: memory_bytes,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(0, 3 << 30)]);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]
        );
        assert!(!overlaps_ram(4 << 30, PCI_MMIO_START, 0x1000));
        assert!(overlaps_ram(4 << 30, MMIO_HOLE_END, 1));
        assert!(overlaps_ram(256 << 20, 0x1000, 1));
        assert!(!overlaps_ram(256 << 20, 256 << 20, 1 << 20));
    }

    #[test]
    fn fixed_regions_sit_in_the_hole() {
        let fixed = [
            (ECAM_BASE, ECAM_SIZE),
            (PCI_MMIO_START, PCI_MMIO_END - PCI_MMIO_START),
        ];
        for (a, l) in fixed {
            assert!(a >= MMIO_HOLE_START && a + l <= IOAPIC_BASE);
        }
    }
}
