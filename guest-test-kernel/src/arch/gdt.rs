//! Global descriptor table and the task-state segment.
//!
//! Layout (selectors): 0x08 kernel code64, 0x10 kernel data, 0x18 user data, 0x20 user code64,
//! 0x28 the 64-bit TSS (two slots). The user pair follows the `sysret` order
//! (STAR[63:48] = 0x10: SS = 0x18 | 3, CS = 0x20 | 3).
//!
//! The TSS carries rsp0 (the stack interrupts from ring 3 switch to), IST1 (double fault), and an
//! all-zero I/O permission bitmap: PVM checks the bitmap for `in`/`out` in ring 3 even with IOPL=3.

use core::arch::asm;
use core::ptr::addr_of_mut;

/// Kernel 64-bit code selector.
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DATA_SELECTOR: u16 = 0x10;
/// User data selector (RPL 3).
pub const USER_DATA_SELECTOR: u16 = 0x18 | 3;
/// User 64-bit code selector (RPL 3).
pub const USER_CODE_SELECTOR: u16 = 0x20 | 3;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x28;

const GDT_ENTRIES: usize = 7;
/// `lgdt` limit of [`GDT`].
pub const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;

/// The GDT; the boot code loads it, [`init`] fills in the TSS descriptor.
#[no_mangle]
pub static mut GDT: [u64; GDT_ENTRIES] = [
    0,
    0x00AF_9A00_0000_FFFF, // kernel code: P, DPL 0, code, L
    0x00CF_9200_0000_FFFF, // kernel data: P, DPL 0, data, writable
    0x00CF_F200_0000_FFFF, // user data: P, DPL 3
    0x00AF_FA00_0000_FFFF, // user code: P, DPL 3, L
    0,                     // TSS low
    0,                     // TSS high
];

/// Offset of the I/O permission bitmap in the TSS (right after the 0x68-byte 64-bit TSS).
const IOMAP_BASE: usize = 0x68;
/// One bit per port.
const IOMAP_BYTES: usize = 65536 / 8;
/// Whole TSS: header, bitmap, and the terminating 0xFF byte the CPU may read past the last port.
const TSS_BYTES: usize = IOMAP_BASE + IOMAP_BYTES + 1;

/// The 64-bit TSS as raw bytes (fields are at unaligned offsets). Zeroed with `.bss`: the
/// bitmap allows every port.
#[repr(C, align(16))]
struct Tss([u8; TSS_BYTES]);

static mut TSS: Tss = Tss([0; TSS_BYTES]);

/// Ring-0 stacks: interrupts from ring 3 (rsp0) and double faults (IST1).
const INT_STACK_BYTES: usize = 32 * 1024;
#[repr(C, align(4096))]
struct Stack([u8; INT_STACK_BYTES]);
#[link_section = ".stacks"]
static mut INT_STACK: Stack = Stack([0; INT_STACK_BYTES]);
#[link_section = ".stacks"]
static mut DF_STACK: Stack = Stack([0; INT_STACK_BYTES]);

fn put_u64(tss: &mut Tss, offset: usize, value: u64) {
    tss.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Fills the TSS and its descriptor, then loads TR (replacing the loader's TR).
///
/// Ring 0 only, once, before interrupts are enabled.
pub fn init() {
    // SAFETY: runs once on the only CPU in ring 0 before anything else uses GDT, TSS or the stacks.
    unsafe {
        let tss = &mut *addr_of_mut!(TSS);
        let rsp0 = addr_of_mut!(INT_STACK) as u64 + INT_STACK_BYTES as u64;
        let ist1 = addr_of_mut!(DF_STACK) as u64 + INT_STACK_BYTES as u64;
        put_u64(tss, 0x04, rsp0);
        put_u64(tss, 0x24, ist1);
        tss.0[0x66..0x68].copy_from_slice(&(IOMAP_BASE as u16).to_le_bytes());
        tss.0[TSS_BYTES - 1] = 0xFF;

        let base = addr_of_mut!(TSS) as u64;
        let limit = (TSS_BYTES - 1) as u64;
        // 64-bit TSS descriptor: type 9 (available), P, DPL 0, byte granularity.
        let low = (limit & 0xFFFF)
            | (base & 0xFF_FFFF) << 16
            | 0x89 << 40
            | ((limit >> 16) & 0xF) << 48
            | ((base >> 24) & 0xFF) << 56;
        let gdt = &mut *addr_of_mut!(GDT);
        gdt[5] = low;
        gdt[6] = base >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags));
    }
}
