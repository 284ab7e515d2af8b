//! PVH entry: from 32-bit protected mode (paging off) to 64-bit long mode, then `kernel_main`.
//!
//! Entry state per the Xen PVH ABI: 32-bit flat CS/DS, paging off, EBX = physical address of
//! `hvm_start_info`, no usable stack, and a TR the guest must replace (done in `gdt::init`).
//! Ring 0 is emulated instruction by instruction on this platform, so this code does no loops
//! except zeroing the small `.bss`: the page tables are built at compile time
//! (`paging.rs`, and the two upper levels below).

use core::arch::global_asm;

use super::gdt::{GDT, GDT_LIMIT, KERNEL_CODE_SELECTOR, KERNEL_DATA_SELECTOR};
use super::paging::BOOT_PD;

/// Physical address of `hvm_start_info`, saved from EBX at entry (0 if the loader gave none).
#[no_mangle]
pub static mut PVH_START_INFO_PADDR: u32 = 0;

global_asm!(
    // XEN_ELFNOTE_PHYS32_ENTRY (type 18): name "Xen", desc = 32-bit physical entry address.
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long pvh_start32",
    ".balign 4",
    // Two upper levels of the identity map: PML4[0] -> PDPT, PDPT[0..4] -> the four page
    // directories of `BOOT_PD` (0..4 GiB in 2 MiB pages). P|RW|US at every level.
    ".section .data.page_tables, \"aw\", @progbits",
    ".balign 4096",
    "boot_pml4:",
    "    .quad boot_pdpt + 0x7",
    "    .fill 511, 8, 0",
    "boot_pdpt:",
    "    .quad {pd} + 0x0000 + 0x7",
    "    .quad {pd} + 0x1000 + 0x7",
    "    .quad {pd} + 0x2000 + 0x7",
    "    .quad {pd} + 0x3000 + 0x7",
    "    .fill 508, 8, 0",
    // 32-bit GDT pointer for the first lgdt (base below 4 GiB); kernel_main reloads nothing.
    ".section .rodata.boot_gdt_ptr, \"a\", @progbits",
    ".balign 8",
    "boot_gdt_ptr:",
    "    .word {gdt_limit}",
    "    .quad {gdt}",
    // Stacks (not zeroed): the boot stack runs kernel_main; ring 0 is left for good after it.
    ".section .stacks, \"aw\", @nobits",
    ".balign 4096",
    "    .skip 65536",
    ".global boot_stack_top",
    "boot_stack_top:",
    ".section .text.boot32, \"ax\", @progbits",
    ".code32",
    ".global pvh_start32",
    "pvh_start32:",
    "    cli",
    "    cld",
    "    mov esp, offset boot_stack_top",
    "    mov ebp, ebx",
    // Zero .bss (statics, IDT, TSS with its I/O bitmap); a loader need not have done it.
    "    mov edi, offset __bss_start",
    "    mov ecx, offset __bss_end",
    "    sub ecx, edi",
    "    shr ecx, 2",
    "    xor eax, eax",
    "    rep stosd",
    "    mov dword ptr [{start_info}], ebp",
    // CR4: PAE | OSFXSR | OSXMMEXCPT; TSD clear so that ring 3 may use rdtsc.
    "    mov eax, cr4",
    "    or eax, 0x620",
    "    and eax, 0xFFFFFFFB",
    "    mov cr4, eax",
    "    mov eax, offset boot_pml4",
    "    mov cr3, eax",
    // EFER.LME
    "    mov ecx, 0xC0000080",
    "    rdmsr",
    "    or eax, 0x100",
    "    wrmsr",
    // CR0: PG | WP | NE | MP | PE, EM and TS clear (the compiler emits SSE).
    "    mov eax, cr0",
    "    and eax, 0xFFFFFFF3",
    "    or eax, 0x80010023",
    "    mov cr0, eax",
    "    lgdt [boot_gdt_ptr]",
    "    push {kcode}",
    "    mov eax, offset long_mode_entry",
    "    push eax",
    "    retf",
    ".code64",
    "long_mode_entry:",
    "    mov eax, {kdata}",
    "    mov ds, eax",
    "    mov es, eax",
    "    mov ss, eax",
    "    xor eax, eax",
    "    mov fs, eax",
    "    mov gs, eax",
    "    lea rsp, [rip + boot_stack_top]",
    // The call leaves rsp = 16n - 8 at Rust entry, as the ABI expects.
    "    call {main}",
    "2:  hlt",
    "    jmp 2b",
    pd = sym BOOT_PD,
    gdt = sym GDT,
    gdt_limit = const GDT_LIMIT,
    start_info = sym PVH_START_INFO_PADDR,
    kcode = const KERNEL_CODE_SELECTOR,
    kdata = const KERNEL_DATA_SELECTOR,
    main = sym crate::kernel_main,
);
