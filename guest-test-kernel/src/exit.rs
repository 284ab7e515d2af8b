//! Ending the guest: a 32-bit write of the code to port 0xF4.
//!
//! Under QEMU's `isa-debug-exit,iobase=0xf4,iosize=4` the process exit status becomes
//! `(code << 1) | 1`; our VMM reports the code itself.

use crate::arch::pio::outl;

/// The exit port.
pub const EXIT_PORT: u16 = 0xF4;

/// Stops the guest with `code`. Never returns; if the VMM ignores the port, the CPU idles.
pub fn exit(code: u32) -> ! {
    outl(EXIT_PORT, code);
    if crate::arch::cpl() == 0 {
        loop {
            // SAFETY: ring 0; halting with interrupts off parks the CPU for good.
            unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
    loop {
        core::hint::spin_loop();
    }
}
