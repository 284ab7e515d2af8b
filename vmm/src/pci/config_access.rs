//! The two ways a guest reaches configuration space: mechanism #1 (an address latch at 0xCF8,
//! data at 0xCFC..0xCFF) and ECAM (one 4 KiB page per function, PCIe "Enhanced Configuration
//! Access Mechanism"). Both decode bus 0 only.

use std::sync::{Arc, Mutex};

use super::PciBus;
use crate::devices::BusDevice;

/// Base port of mechanism #1 (`CONFIG_ADDRESS`; `CONFIG_DATA` is at +4).
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports decoded: 0xCF8..=0xCFF.
pub const PCI_CONFIG_IO_LEN: u64 = 8;
const ENABLE: u32 = 1 << 31;

/// A decoded configuration address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConfigAddress {
    bus: u8,
    slot: u8,
    function: u8,
    offset: u16,
}

impl ConfigAddress {
    fn dispatch_read(self, bus: &Mutex<PciBus>, data: &mut [u8]) {
        match bus.lock() {
            Ok(b) if self.bus == 0 => b.config_read(self.slot, self.function, self.offset, data),
            _ => data.fill(0xff),
        }
    }

    fn dispatch_write(self, bus: &Mutex<PciBus>, data: &[u8]) {
        if let (0, Ok(mut b)) = (self.bus, bus.lock()) {
            b.config_write(self.slot, self.function, self.offset, data);
        }
    }
}

/// Configuration mechanism #1.
#[derive(Debug)]
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

impl PciConfigIo {
    /// Mechanism #1 in front of `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    /// The target of a data-port access at `port_offset` (0..4 from 0xCFC) of `len` bytes.
    fn target(&self, port_offset: u64, len: usize) -> Option<ConfigAddress> {
        let a = self.address;
        if a & ENABLE == 0 || port_offset + len as u64 > 4 {
            return None;
        }
        Some(ConfigAddress {
            bus: (a >> 16) as u8,
            slot: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
            offset: (a & 0xfc) as u16 + port_offset as u16,
        })
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        match offset
            .checked_sub(4)
            .and_then(|o| self.target(o, data.len()))
        {
            Some(t) => t.dispatch_read(&self.bus, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a full dword write at 0xCF8 sets the latch (byte accesses there are not ours).
        if let (0, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
            self.address = u32::from_le_bytes(v) & 0x80ff_fffc;
            return;
        }
        if let Some(t) = offset
            .checked_sub(4)
            .and_then(|o| self.target(o, data.len()))
        {
            t.dispatch_write(&self.bus, data);
        }
    }
}

/// ECAM for bus 0: offset = slot << 15 | function << 12 | register.
#[derive(Debug)]
pub struct PciConfigEcam {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigEcam {
    /// ECAM in front of `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciConfigEcam { bus }
    }

    fn target(offset: u64, len: usize) -> Option<ConfigAddress> {
        let register = (offset & 0xfff) as u16;
        // An access must stay inside one naturally aligned dword.
        if (usize::from(register & 3) + len) > 4 {
            return None;
        }
        Some(ConfigAddress {
            bus: (offset >> 20) as u8,
            slot: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            offset: register,
        })
    }
}

impl BusDevice for PciConfigEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some(t) => t.dispatch_read(&self.bus, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(t) = Self::target(offset, data.len()) {
            t.dispatch_write(&self.bus, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Bus;
    use crate::pci::host_bridge::{CLASS_HOST_BRIDGE, HOST_BRIDGE_DEVICE, HOST_BRIDGE_VENDOR};
    use crate::pci_device::{BarInfo, PciDevice};

    /// A function with one 16 KiB memory BAR the guest can move through register 0x10.
    struct Dummy {
        bar0: u32,
        last_write: Option<(u8, u64, Vec<u8>)>,
    }

    impl PciDevice for Dummy {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            let mut regs = [0u8; 0x14];
            regs[0..4].copy_from_slice(&0x1042_1af4u32.to_le_bytes());
            regs[0x10..0x14].copy_from_slice(&self.bar0.to_le_bytes());
            let o = usize::from(offset);
            match regs.get(o..o + data.len()) {
                Some(s) => data.copy_from_slice(s),
                None => data.fill(0),
            }
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) {
            if let (0x10, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
                self.bar0 = u32::from_le_bytes(v) & !0x3fff;
            }
        }
        fn bars(&self) -> Vec<BarInfo> {
            vec![BarInfo {
                index: 0,
                addr: u64::from(self.bar0),
                size: 0x4000,
            }]
        }
        fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(bar + offset as u8);
        }
        fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
    }

    struct Rig {
        mmio: Arc<Bus>,
        io: PciConfigIo,
        ecam: PciConfigEcam,
        dummy: Arc<Mutex<Dummy>>,
    }

    fn rig() -> Rig {
        let mmio = Arc::new(Bus::new());
        let bus = Arc::new(Mutex::new(PciBus::new(mmio.clone(), 256 << 20)));
        let dummy = Arc::new(Mutex::new(Dummy {
            bar0: 0xE000_0000,
            last_write: None,
        }));
        assert_eq!(bus.lock().unwrap().add_device(dummy.clone()), Ok(1));
        Rig {
            mmio,
            io: PciConfigIo::new(bus.clone()),
            ecam: PciConfigEcam::new(bus),
            dummy,
        }
    }

    fn cf8(slot: u32, reg: u32) -> [u8; 4] {
        (ENABLE | slot << 11 | reg).to_le_bytes()
    }

    fn io_read(r: &mut Rig, slot: u32, reg: u32, len: usize) -> u32 {
        r.io.write(0, &cf8(slot, reg & !3));
        let mut b = [0u8; 4];
        r.io.read(4 + u64::from(reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_ids_through_cf8() {
        let mut r = rig();
        let id = io_read(&mut r, 0, 0, 4);
        assert_eq!(
            id,
            u32::from(HOST_BRIDGE_DEVICE) << 16 | u32::from(HOST_BRIDGE_VENDOR)
        );
        assert_eq!(io_read(&mut r, 0, 0x0a, 2), u32::from(CLASS_HOST_BRIDGE));
        assert_eq!(io_read(&mut r, 0, 2, 2), u32::from(HOST_BRIDGE_DEVICE));
        assert_eq!(io_read(&mut r, 0, 3, 1), u32::from(HOST_BRIDGE_DEVICE >> 8));
        let mut latch = [0u8; 4];
        r.io.read(0, &mut latch);
        assert_eq!(latch, cf8(0, 0));
    }

    #[test]
    fn absent_slots_functions_and_disabled_reads_are_all_ones() {
        let mut r = rig();
        assert_eq!(io_read(&mut r, 5, 0, 4), u32::MAX);
        r.io.write(0, &(ENABLE | 1 << 11 | 1 << 8).to_le_bytes());
        let mut b = [0u8; 4];
        r.io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        r.io.write(0, &0u32.to_le_bytes());
        r.io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        assert_eq!(io_read(&mut r, 1, 0, 4), 0x1042_1af4);
    }

    #[test]
    fn bar_moves_are_routed() {
        let mut r = rig();
        let mut b = [0u8; 1];
        assert!(r.mmio.read(0xE000_0010, &mut b));
        assert_eq!(b, [0x10]);
        // Move BAR0 through mechanism #1.
        r.io.write(0, &cf8(1, 0x10));
        r.io.write(4, &0xE001_0000u32.to_le_bytes());
        assert!(!r.mmio.read(0xE000_0010, &mut b));
        assert!(r.mmio.write(0xE001_0008, &[1, 2]));
        assert_eq!(r.dummy.lock().unwrap().last_write, Some((0, 8, vec![1, 2])));
        // Sizing writes all ones: never routed over the APICs.
        r.io.write(4, &u32::MAX.to_le_bytes());
        assert!(!r.mmio.read(0xFFFF_C000, &mut b));
        // Over RAM: ignored.
        r.io.write(4, &0x0010_0000u32.to_le_bytes());
        assert!(!r.mmio.read(0x0010_0000, &mut b));
    }

    #[test]
    fn ecam_reaches_the_same_functions() {
        let mut r = rig();
        let mut b = [0u8; 4];
        r.ecam.read(1 << 15, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1042_1af4);
        r.ecam
            .write((1 << 15) | 0x10, &0xE002_0000u32.to_le_bytes());
        assert!(r.mmio.read(0xE002_0000, &mut b));
        r.ecam.read((1 << 15) | 0x3fe, &mut b);
        assert_eq!(b, [0xff; 4], "a dword access straddling two dwords");
    }
}
