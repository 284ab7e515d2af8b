//! The identity map of 0..4 GiB, built at compile time (ring 0 is emulated: no fill loops).
//!
//! Four page directories of 2 MiB pages (1 GiB pages faulted under QEMU `-cpu host` here).
//! Every entry is user-accessible so that the ring-3 test code can reach all memory and MMIO.
//! The two upper levels (PML4, PDPT) hold addresses and are written in assembly (`boot.rs`).

/// Present.
const P: u64 = 1 << 0;
/// Writable.
const RW: u64 = 1 << 1;
/// User-accessible.
const US: u64 = 1 << 2;
/// Write-through.
const PWT: u64 = 1 << 3;
/// Cache disable.
const PCD: u64 = 1 << 4;
/// Accessed (preset: the walker need not write the entry).
const A: u64 = 1 << 5;
/// Dirty (preset, as above).
const D: u64 = 1 << 6;
/// Page size: a 2 MiB page in a page-directory entry.
const PS: u64 = 1 << 7;

/// Size of a large page.
const PAGE_2M: u64 = 2 << 20;
/// Start of the uncached window: PCI BARs, IOAPIC, LAPIC.
pub const MMIO_START: u64 = 0xC000_0000;

/// Four 4 KiB page directories, contiguous.
#[repr(C, align(4096))]
pub struct PageDirectories(pub [u64; 2048]);

const fn build() -> PageDirectories {
    let mut pd = [0u64; 2048];
    let mut i = 0;
    while i < pd.len() {
        let addr = i as u64 * PAGE_2M;
        let cache = if addr >= MMIO_START { PCD | PWT } else { 0 };
        pd[i] = addr | P | RW | US | A | D | PS | cache;
        i += 1;
    }
    PageDirectories(pd)
}

/// The page directories referenced by the boot PDPT.
#[no_mangle]
#[link_section = ".data.page_tables"]
pub static mut BOOT_PD: PageDirectories = build();
