//! Model-specific registers (ring 0 only).

use core::arch::asm;

/// Reads MSR `index`.
pub fn read(index: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: callers pass architectural MSRs that exist on every x86-64 CPU; ring 0 only.
    unsafe {
        asm!("rdmsr", in("ecx") index, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    u64::from(high) << 32 | u64::from(low)
}

/// Writes MSR `index`.
pub fn write(index: u32, value: u64) {
    // SAFETY: as in `read`; the callers' values keep the machine state valid.
    unsafe {
        asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}
