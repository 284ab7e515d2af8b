//! The host bridge at 00:00.0: identity registers only, no BARs.

use crate::pci_device::{BarInfo, PciDevice};

/// Intel 82G33/Q35 DRAM controller IDs, which every OS knows as a plain host bridge.
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// See [`HOST_BRIDGE_VENDOR`].
pub const HOST_BRIDGE_DEVICE: u16 = 0x29c0;
/// Base class 06h (bridge), subclass 00h (host bridge).
pub const CLASS_HOST_BRIDGE: u16 = 0x0600;

/// The host bridge's 256-byte configuration space.
#[derive(Debug, Clone)]
pub struct HostBridge {
    config: [u8; 256],
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge with its identity registers set.
    pub fn new() -> Self {
        let mut config = [0u8; 256];
        config[0..2].copy_from_slice(&HOST_BRIDGE_VENDOR.to_le_bytes());
        config[2..4].copy_from_slice(&HOST_BRIDGE_DEVICE.to_le_bytes());
        config[0x0a..0x0c].copy_from_slice(&CLASS_HOST_BRIDGE.to_le_bytes());
        // Header type 0, single function.
        HostBridge { config }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let start = usize::from(offset);
        match self.config.get(start..start + data.len()) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        // Only the command register (04h) holds what the guest writes; the rest is read-only.
        let start = usize::from(offset);
        for (i, b) in data.iter().enumerate() {
            if let 4 | 5 = start + i {
                self.config[start + i] = *b;
            }
        }
    }

    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
