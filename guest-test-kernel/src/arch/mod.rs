//! x86-64 platform: boot, descriptor tables, paging, LAPIC, port I/O, TSC, ring 3.

pub mod apic;
mod boot;
pub mod gdt;
pub mod idt;
pub mod irq;
mod msr;
pub mod paging;
pub mod pio;
pub mod ring3;
pub mod tsc;

pub use boot::PVH_START_INFO_PADDR;

/// Current privilege level (0 or 3).
#[inline]
pub fn cpl() -> u8 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    (cs & 3) as u8
}
