//! Bus 0: slot table, configuration dispatch, and BAR routing on the MMIO bus.

use std::sync::{Arc, Mutex};

use super::{HostBridge, PciError};
use crate::devices::{Bus, BusDevice};
use crate::memory::{overlaps_ram, IOAPIC_BASE, MMIO_HOLE_END};
use crate::pci_device::{BarInfo, PciDevice};

/// Devices per bus.
pub const SLOTS: usize = 32;
/// Size of a function's configuration space (PCIe extended).
pub const CONFIG_SPACE_SIZE: u16 = 4096;
/// BARs at or above this address are never routed: nothing real lives there, and a BAR being
/// sized (all ones written) reads back up here.
const BAR_ADDR_LIMIT: u64 = 1 << 48;

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Forwards MMIO accesses inside one BAR to its device.
struct BarRoute {
    dev: SharedPciDevice,
    bar: u8,
}

impl BusDevice for BarRoute {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.dev.lock() {
            Ok(mut d) => d.bar_read(self.bar, offset, data),
            Err(_) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Ok(mut d) = self.dev.lock() {
            d.bar_write(self.bar, offset, data);
        }
    }
}

struct Slot {
    dev: SharedPciDevice,
    /// The BARs currently on the MMIO bus.
    routed: Vec<BarInfo>,
}

/// PCI bus 0.
pub struct PciBus {
    slots: Vec<Option<Slot>>,
    mmio: Arc<Bus>,
    memory_bytes: u64,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..SLOTS).filter(|&s| self.slots[s].is_some()).collect();
        f.debug_struct("PciBus").field("slots", &used).finish()
    }
}

impl PciBus {
    /// A bus with the host bridge in slot 0, routing BARs on `mmio`, never over guest RAM of
    /// `memory_bytes`.
    pub fn new(mmio: Arc<Bus>, memory_bytes: u64) -> Self {
        let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot {
            dev: Arc::new(Mutex::new(HostBridge::new())),
            routed: Vec::new(),
        });
        PciBus {
            slots,
            mmio,
            memory_bytes,
        }
    }

    /// Plugs `dev` into the first free slot and routes its BARs. Fails if a BAR with an address
    /// cannot be routed (the platform assigned it, so that is a conflict, not a guest choice).
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        self.slots[slot] = Some(Slot {
            dev,
            routed: Vec::new(),
        });
        let rejected = self.update_routes(slot);
        if let Some(b) = rejected.into_iter().find(|b| b.addr != 0) {
            self.unroute(slot);
            self.slots[slot] = None;
            return Err(PciError::BarConflict {
                slot: slot as u8,
                bar: b.index,
                addr: b.addr,
                size: b.size,
            });
        }
        Ok(slot as u8)
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| s.dev.clone())
    }

    fn function(&self, slot: u8, function: u8, offset: u16, len: usize) -> Option<SharedPciDevice> {
        let end = usize::from(offset).checked_add(len)?;
        if function != 0 || end > usize::from(CONFIG_SPACE_SIZE) || !matches!(len, 1 | 2 | 4) {
            return None;
        }
        self.device(slot)
    }

    /// A configuration read; an absent function reads as all ones.
    pub fn config_read(&self, slot: u8, function: u8, offset: u16, data: &mut [u8]) {
        match self.function(slot, function, offset, data.len()) {
            Some(dev) => match dev.lock() {
                Ok(mut d) => d.config_read(offset, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// A configuration write, then BAR re-routing for that device.
    pub fn config_write(&mut self, slot: u8, function: u8, offset: u16, data: &[u8]) {
        let Some(dev) = self.function(slot, function, offset, data.len()) else {
            return;
        };
        if let Ok(mut d) = dev.lock() {
            d.config_write(offset, data);
        }
        self.update_routes(usize::from(slot));
    }

    /// Whether the guest may have a BAR decoded at `bar`.
    fn routable(&self, bar: &BarInfo) -> bool {
        let Some(end) = bar.addr.checked_add(bar.size) else {
            return false;
        };
        bar.addr != 0
            && bar.size != 0
            && end <= BAR_ADDR_LIMIT
            && !(bar.addr < MMIO_HOLE_END && end > IOAPIC_BASE)
            && !overlaps_ram(self.memory_bytes, bar.addr, bar.size)
    }

    fn unroute(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            for b in s.routed.drain(..) {
                self.mmio.remove(b.addr);
            }
        }
    }

    /// Brings the MMIO bus in line with the device's current BARs; returns the BARs left
    /// unrouted (unassigned, over RAM or over another range).
    fn update_routes(&mut self, slot: usize) -> Vec<BarInfo> {
        let Some(s) = self.slots.get(slot).and_then(Option::as_ref) else {
            return Vec::new();
        };
        let dev = s.dev.clone();
        let bars = match dev.lock() {
            Ok(d) => d.bars(),
            Err(_) => Vec::new(),
        };
        let old = s.routed.clone();
        let mut kept: Vec<BarInfo> = Vec::new();
        for b in &old {
            if bars.contains(b) {
                kept.push(*b);
            } else {
                self.mmio.remove(b.addr);
            }
        }
        let mut rejected = Vec::new();
        let added: Vec<BarInfo> = bars.into_iter().filter(|b| !kept.contains(b)).collect();
        for b in &added {
            let route = Arc::new(Mutex::new(BarRoute {
                dev: dev.clone(),
                bar: b.index,
            }));
            if self.routable(b) && self.mmio.insert(b.addr, b.size, route) {
                kept.push(*b);
            } else {
                rejected.push(*b);
            }
        }
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            s.routed = kept;
        }
        rejected
    }
}
