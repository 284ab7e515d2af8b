//! What a freestanding binary on the host target must provide itself: the mem* functions that
//! `compiler_builtins` leaves to libc, `rust_eh_personality` (referenced by the prebuilt `core`
//! even with panic=abort) and the panic handler.
//!
//! The mem* bodies are `rep movsb` / `rep stosb` or word loops that LLVM does not turn back into
//! calls to themselves.

use core::arch::asm;
use core::panic::PanicInfo;

/// Exit code after a panic.
pub const PANIC_EXIT_CODE: u32 = 0x7E;

/// C `memcpy`.
///
/// # Safety
/// `dest` and `src` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear (ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags))
    };
    dest
}

/// C `memmove`.
///
/// # Safety
/// `dest` and `src` are valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest before src, or no overlap: a forward copy never reads a byte it already wrote.
        // SAFETY: as for memcpy.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: copy backwards from the last byte with DF set, restored before returning.
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            options(nostack))
    };
    dest
}

/// C `memset`.
///
/// # Safety
/// `dest` is valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; DF is clear (ABI).
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
            options(nostack, preserves_flags))
    };
    dest
}

/// C `memcmp`: compares 8 bytes at a time, then the tail.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within both ranges; unaligned reads are allowed.
        let (x, y) = unsafe {
            (
                u64::from_be((a.add(i) as *const u64).read_unaligned()),
                u64::from_be((b.add(i) as *const u64).read_unaligned()),
            )
        };
        if x != y {
            // Big-endian order makes the first differing byte the most significant.
            return if x < y { -1 } else { 1 };
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n, within both ranges.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// C `bcmp`: zero if equal.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `core`; never called with panic=abort.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    crate::println!("\n*** guest panic: {info}");
    crate::exit::exit(PANIC_EXIT_CODE)
}
