//! The Xen PVH entry note and segment loading (xen/include/public/elfnote.h,
//! `XEN_ELFNOTE_PHYS32_ENTRY`; xen/include/public/arch-x86/hvm/start_info.h for the entry ABI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::elf::{Elf, PT_LOAD};
use super::BootError;
use crate::memory::{ram_ranges, KERNEL_MIN_ADDR};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point of a PVH kernel.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The PVH entry address of `elf`.
pub fn pvh_entry(elf: &Elf<'_>) -> Result<u32, BootError> {
    let note = elf
        .notes()?
        .into_iter()
        .find(|n| n.name == b"Xen" && n.kind == XEN_ELFNOTE_PHYS32_ENTRY)
        .ok_or(BootError::NoPvhNote)?;
    let bad = || BootError::BadPvhNote(note.desc.len());
    match note.desc.len() {
        4 => Ok(u32::from_le_bytes(note.desc.try_into().map_err(|_| bad())?)),
        8 => {
            let v = u64::from_le_bytes(note.desc.try_into().map_err(|_| bad())?);
            u32::try_from(v).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Whether `[addr, addr + len)` lies in one RAM range, at or above 1 MiB.
fn fits_ram(memory_bytes: u64, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    addr >= KERNEL_MIN_ADDR
        && ram_ranges(memory_bytes)
            .iter()
            .any(|&(s, l)| addr >= s && end <= s + l)
}

/// Loads the `PT_LOAD` segments of `image` into `mem` and returns the PVH entry address.
///
/// The tail of each segment beyond its file bytes is left as it is: guest RAM is fresh,
/// zero-filled anonymous memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    image: &[u8],
) -> Result<u32, BootError> {
    let elf = Elf::parse(image)?;
    let entry = pvh_entry(&elf)?;
    let mut entry_loaded = false;
    let mut loaded = 0;
    for (index, seg) in elf.segments().iter().enumerate() {
        if seg.kind != PT_LOAD || seg.memsz == 0 {
            continue;
        }
        if seg.filesz > seg.memsz {
            return Err(BootError::SegmentSizes(index));
        }
        if !fits_ram(memory_bytes, seg.paddr, seg.memsz) {
            return Err(BootError::SegmentOutsideRam {
                index,
                paddr: seg.paddr,
                memsz: seg.memsz,
            });
        }
        let bytes = elf.segment_bytes(seg)?;
        mem.write_slice(bytes, GuestAddress(seg.paddr))
            .map_err(|_| BootError::GuestWrite("a kernel segment"))?;
        let e = u64::from(entry);
        entry_loaded |= e >= seg.paddr && e < seg.paddr + seg.memsz;
        loaded += 1;
    }
    if loaded == 0 {
        return Err(BootError::NoLoadSegments);
    }
    if !entry_loaded {
        return Err(BootError::EntryOutsideImage(entry));
    }
    Ok(entry)
}
