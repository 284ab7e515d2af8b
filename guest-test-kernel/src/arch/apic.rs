//! Local APIC in xAPIC mode (MMIO at 0xFEE0_0000, mapped uncached and user-accessible).

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};

use super::idt::SPURIOUS_VECTOR;
use super::msr;

/// Physical (= virtual) base of the xAPIC registers.
pub const LAPIC_BASE: u64 = 0xFEE0_0000;

const REG_ID: u64 = 0x20;
const REG_TPR: u64 = 0x80;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_LINT0: u64 = 0x350;

/// TPR value that blocks all maskable interrupts (priority class 15): what `init` starts
/// with and `irq::disable` goes back to.
pub(crate) const TPR_BLOCK_ALL: u32 = 0xF0;

/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// ICR destination shorthand "self".
const ICR_SELF: u32 = 1 << 18;
/// ICR delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;

const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE: global enable.
const APIC_BASE_ENABLE: u64 = 1 << 11;

static APIC_ID: AtomicU32 = AtomicU32::new(0);

fn read(reg: u64) -> u32 {
    // SAFETY: the LAPIC page is identity mapped (uncached) and the register offset is valid.
    unsafe { read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as in `read`.
    unsafe { write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

/// Enables the LAPIC (globally and through its SVR), blocks all priorities (see `irq.rs`), masks
/// LINT0 (the firmware may have routed the 8259 there as ExtINT) and masks both 8259 PICs.
///
/// Ring 0 only (MSR access), once.
pub fn init() {
    let base = msr::read(IA32_APIC_BASE);
    if base & APIC_BASE_ENABLE == 0 {
        msr::write(IA32_APIC_BASE, base | APIC_BASE_ENABLE);
    }
    super::pio::outb(0x21, 0xFF);
    super::pio::outb(0xA1, 0xFF);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_TPR, TPR_BLOCK_ALL);
    write(
        REG_SVR,
        read(REG_SVR) | SVR_ENABLE | u32::from(SPURIOUS_VECTOR),
    );
    APIC_ID.store(read(REG_ID) >> 24, Ordering::Relaxed);
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    APIC_ID.load(Ordering::Relaxed)
}

/// MSI address targeting this CPU (physical destination mode, fixed delivery).
pub fn msi_address() -> u64 {
    LAPIC_BASE | u64::from(id()) << 12
}

/// Sets the task priority: vectors whose class (vector >> 4) is not above `tpr >> 4` wait.
pub fn set_tpr(tpr: u32) {
    write(REG_TPR, tpr);
}

/// Signals end of interrupt. The entry stubs already do it for vectors 32..=254; call this
/// only from a handler of your own.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Sends a fixed interrupt with `vector` (>= 32) to this CPU. Works from ring 3.
pub fn self_ipi(vector: u8) {
    write(REG_ICR_HIGH, 0);
    write(REG_ICR_LOW, ICR_SELF | u32::from(vector));
    // Bounded wait for the send to complete.
    for _ in 0..1000 {
        if read(REG_ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}
