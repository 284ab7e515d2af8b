//! Volatile access to device registers (BARs are identity mapped like the rest of 0..4 GiB).

/// Reads a `u8` register at physical address `addr`.
pub fn read8(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside a BAR region the PCI walk validated; the page
    // tables identity-map 0..4 GiB for ring 3, and volatile keeps the access a single load.
    unsafe { (addr as *const u8).read_volatile() }
}

/// Reads a `u16` register at `addr` (2-aligned).
pub fn read16(addr: u64) -> u16 {
    // SAFETY: as in `read8`; virtio-pci register offsets are naturally aligned.
    unsafe { (addr as *const u16).read_volatile() }
}

/// Reads a `u32` register at `addr` (4-aligned).
pub fn read32(addr: u64) -> u32 {
    // SAFETY: as in `read16`.
    unsafe { (addr as *const u32).read_volatile() }
}

/// Writes a `u8` register at `addr`.
pub fn write8(addr: u64, v: u8) {
    // SAFETY: as in `read8`.
    unsafe { (addr as *mut u8).write_volatile(v) }
}

/// Writes a `u16` register at `addr` (2-aligned).
pub fn write16(addr: u64, v: u16) {
    // SAFETY: as in `read16`.
    unsafe { (addr as *mut u16).write_volatile(v) }
}

/// Writes a `u32` register at `addr` (4-aligned).
pub fn write32(addr: u64, v: u32) {
    // SAFETY: as in `read16`.
    unsafe { (addr as *mut u32).write_volatile(v) }
}

/// Writes a 64-bit register as two 32-bit halves, low first (4.1.3.1: the driver accesses
/// 64-bit fields of the common configuration as two 32-bit writes).
pub fn write64(addr: u64, v: u64) {
    write32(addr, v as u32);
    write32(addr + 4, (v >> 32) as u32);
}
