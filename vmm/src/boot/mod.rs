//! Booting a PVH kernel: read the ELF ([`elf`]), find its Xen PVH entry and load its segments
//! ([`pvh`]), then describe the machine to it ([`start_info`]) and hand the boot CPU a flat
//! 32-bit protected-mode state ([`gdt`], applied by [`crate::cpu`]).

pub mod elf;
pub mod gdt;
pub mod pvh;
pub mod start_info;

use thiserror::Error;

/// Why a kernel image cannot be booted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootError {
    /// The file ends inside a structure.
    #[error("truncated file: {0} extend past its end; rebuild the kernel")]
    Truncated(&'static str),
    /// No ELF magic.
    #[error("not an ELF file; give --kernel an ELF64 PVH image")]
    NotElf,
    /// Not ELF64 little-endian x86-64.
    #[error("not an ELF64 little-endian x86-64 image; build the kernel for x86_64")]
    WrongArch,
    /// A header field we cannot use.
    #[error("unsupported ELF header field: {0}")]
    BadHeader(&'static str),
    /// A note whose sizes run past its area.
    #[error("malformed ELF note; rebuild the kernel")]
    BadNote,
    /// No `XEN_ELFNOTE_PHYS32_ENTRY` note.
    #[error("no Xen PVH entry note (name \"Xen\", type 18 XEN_ELFNOTE_PHYS32_ENTRY); add one to a PT_NOTE segment or .note section")]
    NoPvhNote,
    /// The PVH note's descriptor is not a 4- or 8-byte address below 4 GiB.
    #[error("the Xen PVH entry note holds {0} bytes; it must hold a 32-bit entry address")]
    BadPvhNote(usize),
    /// No `PT_LOAD` segment.
    #[error("no PT_LOAD segment to load")]
    NoLoadSegments,
    /// `p_filesz > p_memsz`.
    #[error("segment {0} has p_filesz larger than p_memsz")]
    SegmentSizes(usize),
    /// A segment outside guest RAM above 1 MiB.
    #[error("segment {index} at {paddr:#x} (+{memsz:#x} bytes) is not inside guest RAM above 1 MiB; link it at 1 MiB or give more --memory")]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// The entry point is not inside a loaded segment.
    #[error("the PVH entry {0:#x} is not inside a loaded segment")]
    EntryOutsideImage(u32),
    /// More RAM ranges than the memory map table has room for.
    #[error("the memory map has {0} entries, more than fit")]
    MemmapTooLarge(usize),
    /// The command line does not fit.
    #[error("the command line is {0} bytes; keep it under 4096")]
    CmdlineTooLong(usize),
    /// Writing boot data to guest memory failed (a layout bug).
    #[error("cannot write {0} into guest memory")]
    GuestWrite(&'static str),
}
