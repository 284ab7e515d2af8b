//! Port I/O. Works in ring 3 too: IOPL is 3 and the TSS I/O bitmap allows every port.

use core::arch::asm;

/// Reads a byte from `port`.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O has no memory effects visible to Rust; the guest owns all ports.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to `port`.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: as in `inb`.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 16-bit word from `port`.
#[inline]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in `inb`.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 16-bit word to `port`.
#[inline]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as in `inb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit word from `port`.
#[inline]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit word to `port`.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `inb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}
