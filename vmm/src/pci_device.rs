//! The contract between the PCI bus (platform) and the PCI functions plugged into it.

/// One memory BAR as currently programmed by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (0..=5).
    pub index: u8,
    /// Guest physical base address (0 when unassigned).
    pub addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// A PCI function on the VM's bus. The platform serialises calls (one lock per device);
/// a device's dataplane must not depend on that lock.
pub trait PciDevice: Send {
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (0..4096).
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space. The bus re-reads [`PciDevice::bars`] afterwards, so a BAR
    /// the guest moved is routed at its new address.
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// The memory BARs, with their current addresses.
    fn bars(&self) -> Vec<BarInfo>;
    /// An MMIO read inside BAR `bar` at `offset` from its base.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    /// An MMIO write inside BAR `bar` at `offset` from its base.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
}
