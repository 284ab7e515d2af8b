//! The Xen PVH `hvm_start_info` handed over in EBX: command line and memory map.
//!
//! Layout (xen/include/public/arch-x86/hvm/start_info.h): magic u32 @0, version u32 @4,
//! flags @8, nr_modules @12, modlist_paddr u64 @16, cmdline_paddr u64 @24, rsdp_paddr @32,
//! and from version 1: memmap_paddr u64 @40, memmap_entries u32 @48.
//! Memory map entries: addr u64, size u64, type u32 (1 = RAM), reserved u32.
//!
//! Everything is read with bounds: addresses must lie below the 3 GiB of identity-mapped RAM,
//! counts and lengths are capped. The command line is copied into the kernel image so that the
//! test code may reuse the memory it came from.

use core::ptr::{addr_of, addr_of_mut};

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336E_C578;
/// Only addresses below this are read (RAM part of the identity map, below the MMIO window).
const READABLE_END: u64 = crate::arch::paging::MMIO_START;
const CMDLINE_MAX: usize = 4096;
const MEMMAP_MAX_ENTRIES: u64 = 128;
const MEMMAP_ENTRY_BYTES: u64 = 24;
const E820_RAM: u32 = 1;
/// Assumed when the loader gives no memory map (version 0 start info, or no start info).
const FALLBACK_RAM_END: u64 = 64 << 20;

static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

/// What the boot code needs from the start info.
pub struct PvhInfo {
    /// Kernel command line (empty if absent or not UTF-8).
    pub cmdline: &'static str,
    /// Sum of all RAM ranges.
    pub ram_size: u64,
    /// End of the RAM range containing `free_start`, capped at 3 GiB.
    pub free_end: u64,
    /// False when the memory map was missing and [`FALLBACK_RAM_END`] was assumed.
    pub has_memmap: bool,
}

fn readable(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= READABLE_END) && addr != 0
}

fn read_u32(addr: u64) -> u32 {
    // SAFETY: callers check `readable`: identity-mapped RAM; unaligned reads are allowed.
    unsafe { (addr as *const u32).read_unaligned() }
}

fn read_u64(addr: u64) -> u64 {
    // SAFETY: as in `read_u32`.
    unsafe { (addr as *const u64).read_unaligned() }
}

/// Reads the start info at `paddr` (0 = none given); `free_start` is where free RAM begins.
///
/// Call once, before anything writes to free memory.
pub fn read(paddr: u64, free_start: u64) -> PvhInfo {
    let mut info = PvhInfo {
        cmdline: "",
        ram_size: 0,
        free_end: 0,
        has_memmap: false,
    };
    if !readable(paddr, 56) || read_u32(paddr) != MAGIC {
        return fallback(info, free_start);
    }
    info.cmdline = copy_cmdline(read_u64(paddr + 24));
    let version = read_u32(paddr + 4);
    let memmap = read_u64(paddr + 40);
    let entries = u64::from(read_u32(paddr + 48)).min(MEMMAP_MAX_ENTRIES);
    if version < 1 || entries == 0 || !readable(memmap, entries * MEMMAP_ENTRY_BYTES) {
        return fallback(info, free_start);
    }
    info.has_memmap = true;
    for i in 0..entries {
        let entry = memmap + i * MEMMAP_ENTRY_BYTES;
        let (addr, size, kind) = (read_u64(entry), read_u64(entry + 8), read_u32(entry + 16));
        if kind != E820_RAM {
            continue;
        }
        info.ram_size = info.ram_size.saturating_add(size);
        let end = addr.saturating_add(size);
        if addr <= free_start && free_start < end {
            info.free_end = end.min(READABLE_END) & !0xFFF;
        }
    }
    info.free_end = info.free_end.max(free_start);
    info
}

fn fallback(mut info: PvhInfo, free_start: u64) -> PvhInfo {
    info.ram_size = FALLBACK_RAM_END;
    info.free_end = FALLBACK_RAM_END.max(free_start);
    info
}

fn copy_cmdline(paddr: u64) -> &'static str {
    // SAFETY: runs once in the boot path, before anyone holds a reference to CMDLINE.
    let buf = unsafe { &mut *addr_of_mut!(CMDLINE) };
    let mut len = 0;
    while len < CMDLINE_MAX - 1 && readable(paddr, len as u64 + 1) {
        // SAFETY: `readable` checked this byte.
        let byte = unsafe { *((paddr + len as u64) as *const u8) };
        if byte == 0 {
            break;
        }
        buf[len] = byte;
        len += 1;
    }
    // SAFETY: CMDLINE is never written again, so a shared 'static borrow is sound.
    let bytes: &'static [u8] = unsafe { &(&*addr_of!(CMDLINE))[..len] };
    core::str::from_utf8(bytes).unwrap_or("")
}
