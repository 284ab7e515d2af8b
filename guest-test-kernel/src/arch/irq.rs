//! Interrupt masking and per-vector counts.
//!
//! Ring 3 runs with RFLAGS.IF = 1 for good, and masking is done with the LAPIC task priority
//! (TPR): 0xF0 holds every vector pending in the IRR, 0 lets all through. Why not IF: PVM
//! faults `sti`/`cli` in guest ring 3 whatever IOPL says, refuses `int n` there (#UD), and after
//! a trip through ring 0 by `syscall` it stopped injecting interrupts into ring 3 even with IF
//! set again. A TPR write is one in-kernel LAPIC MMIO exit: toggle around phases, not per
//! request. Pending interrupts are delivered as soon as the TPR drops.

use core::sync::atomic::Ordering;

use super::apic::{self, TPR_BLOCK_ALL};
use super::idt::IRQ_COUNTS;

/// Lets interrupts through: they go to the ring-0 stubs, which count and EOI them.
#[inline]
pub fn enable() {
    apic::set_tpr(0);
}

/// Holds interrupts pending (in the LAPIC IRR) until [`enable`]. Interrupts start disabled.
#[inline]
pub fn disable() {
    apic::set_tpr(TPR_BLOCK_ALL);
}

/// How many times `vector` was delivered since boot.
#[inline]
pub fn count(vector: u8) -> u64 {
    IRQ_COUNTS[usize::from(vector)].load(Ordering::Acquire)
}
