//! The one-way switch from ring 0 to ring 3, where all test work runs at native speed.

use core::arch::asm;

use super::gdt::{USER_CODE_SELECTOR, USER_DATA_SELECTOR};

/// Size of the ring-3 stack.
const USER_STACK_BYTES: usize = 256 * 1024;
#[repr(C, align(4096))]
struct Stack([u8; USER_STACK_BYTES]);
#[link_section = ".stacks"]
static mut USER_STACK: Stack = Stack([0; USER_STACK_BYTES]);

/// RFLAGS in ring 3: IOPL = 3 (port I/O where the TSS bitmap is not checked), IF = 1 for good
/// (interrupts are masked with the LAPIC TPR, see `irq.rs`), reserved bit 1.
const USER_RFLAGS: u64 = 3 << 12 | 1 << 9 | 1 << 1;

/// Leaves ring 0 for good: `iretq` into `entry` in ring 3 on the user stack.
pub fn enter(entry: extern "C" fn() -> !) -> ! {
    // rsp = 16n - 8 at entry, as after a call.
    let stack_top = core::ptr::addr_of!(USER_STACK) as u64 + USER_STACK_BYTES as u64 - 8;
    // SAFETY: the GDT holds the user selectors, the TSS and IDT are loaded, the user stack is a
    // static mapped user-accessible, and `entry` never returns.
    unsafe {
        asm!(
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "iretq",
            ds = in(reg) u32::from(USER_DATA_SELECTOR),
            ss = in(reg) u64::from(USER_DATA_SELECTOR),
            rsp = in(reg) stack_top,
            rflags = in(reg) USER_RFLAGS,
            cs = in(reg) u64::from(USER_CODE_SELECTOR),
            rip = in(reg) entry as usize as u64,
            options(noreturn)
        )
    }
}
