//! PCI configuration space through Configuration Mechanism #1 (ports 0xCF8/0xCFC), device
//! enumeration and BAR placement, on top of `pci_transport::driver`.

use pci_transport::config_space::register;
use pci_transport::driver::{self, ConfigAccess, PciAddress};
use pci_transport::BarKind;

use crate::arch::pio::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// Offset of the secondary bus number in a type-1 (bridge) header.
const SECONDARY_BUS: u16 = 0x19;

/// Window where BARs the firmware left above 4 GiB (or unassigned) are moved to, so ring 3
/// reaches them through the identity map of 0..4 GiB.
const RELOCATION_WINDOW: (u64, u64) = (0xe000_0000, 0xfe00_0000);

/// A PCI function address.
pub type Bdf = PciAddress;

/// Configuration Mechanism #1: every access is an `out` to 0xCF8 then an access to 0xCFC.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortCam;

impl ConfigAccess for PortCam {
    fn read_u32(&mut self, bus: u8, device: u8, function: u8, offset: u16) -> u32 {
        outl(CONFIG_ADDRESS, address(bus, device, function, offset));
        inl(CONFIG_DATA)
    }

    fn write_u32(&mut self, bus: u8, device: u8, function: u8, offset: u16, value: u32) {
        outl(CONFIG_ADDRESS, address(bus, device, function, offset));
        outl(CONFIG_DATA, value);
    }
}

fn address(bus: u8, device: u8, function: u8, offset: u16) -> u32 {
    1u32 << 31
        | u32::from(bus) << 16
        | u32::from(device & 0x1f) << 11
        | u32::from(function & 7) << 8
        | u32::from(offset & 0xfc)
}

/// A decoded memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR number (0..6).
    pub index: u8,
    /// Base address programmed.
    pub addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

impl PortCam {
    /// Every present function on `bus` and, through PCI-to-PCI bridges, the buses below it,
    /// as `(address, vendor, device)`.
    pub fn for_each_function(mut self, bus: u8, f: &mut impl FnMut(Bdf, u16, u16)) {
        self.walk(bus, f, 0);
    }

    fn walk(&mut self, bus: u8, f: &mut impl FnMut(Bdf, u16, u16), depth: u8) {
        for dev in 0..32 {
            let first = Bdf::new(bus, dev, 0);
            if driver::probe(self, first).is_none() {
                continue;
            }
            let multi = self.read_u8(bus, dev, 0, register::HEADER_TYPE) & 0x80 != 0;
            for func in 0..if multi { 8 } else { 1 } {
                let at = Bdf::new(bus, dev, func);
                let Some((vendor, device)) = driver::probe(self, at) else {
                    continue;
                };
                f(at, vendor, device);
                let is_bridge = self.read_u8(bus, dev, func, register::HEADER_TYPE) & 0x7f == 1;
                let secondary = self.read_u8(bus, dev, func, SECONDARY_BUS);
                if is_bridge && secondary > bus && depth < 8 {
                    self.walk(secondary, f, depth + 1);
                }
            }
        }
    }

    /// The implemented memory BARs of `at`, by index (upper halves of 64-bit BARs skipped).
    pub fn memory_bars(mut self, at: Bdf) -> [Option<Bar>; 6] {
        let mut bars = [None; 6];
        let mut index = 0u8;
        while index < 6 {
            let info = driver::size_bar(&mut self, at, index);
            if let (Some(i), Some(slot)) = (info, bars.get_mut(usize::from(index))) {
                if i.size != 0 {
                    *slot = Some(Bar {
                        index,
                        addr: i.address,
                        size: i.size,
                    });
                }
            }
            index += match info {
                Some(i) if i.kind == BarKind::Memory64 => 2,
                _ => 1,
            };
        }
        bars
    }

    /// Makes every memory BAR of `at` reachable below 4 GiB, moving the ones that are not
    /// into a free spot of 0xE000_0000..0xFE00_0000 (avoiding every other function's BARs).
    pub fn place_bars_below_4g(mut self, at: Bdf) -> Result<(), PciError> {
        for bar in self.memory_bars(at).into_iter().flatten() {
            if bar.addr != 0 && bar.addr.saturating_add(bar.size) <= 1 << 32 {
                continue;
            }
            let addr = self
                .free_window(at, bar.size)
                .ok_or(PciError::NoSpaceForBar(bar.index))?;
            crate::println!(
                "pci {}: BAR{} at {:#x} (size {:#x}) moved to {addr:#x}",
                Show(at),
                bar.index,
                bar.addr,
                bar.size
            );
            driver::set_bar_address(&mut self, at, bar.index, addr);
        }
        Ok(())
    }

    /// The lowest `size`-aligned address in the relocation window overlapping no BAR of any
    /// function but `except`'s.
    fn free_window(self, except: Bdf, size: u64) -> Option<u64> {
        let size = size.max(0x1000);
        let mut candidate = align_up(RELOCATION_WINDOW.0, size)?;
        // Each pass either finds no overlap or moves past one BAR; 64 passes bound the work.
        for _ in 0..64 {
            let mut clash = None;
            self.for_each_function(0, &mut |at, _, _| {
                if at == except || clash.is_some() {
                    return;
                }
                for b in self.memory_bars(at).into_iter().flatten() {
                    let overlaps = b.addr < candidate + size && candidate < b.addr + b.size;
                    if b.addr != 0 && overlaps {
                        clash = Some(b.addr + b.size);
                    }
                }
            });
            match clash {
                None if candidate + size <= RELOCATION_WINDOW.1 => return Some(candidate),
                None => return None,
                Some(end) => candidate = align_up(end, size)?,
            }
        }
        None
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Prints a PCI address as `bb:dd.f`.
#[derive(Debug, Clone, Copy)]
pub struct Show(pub Bdf);

impl core::fmt::Display for Show {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.0.bus, self.0.device, self.0.function
        )
    }
}

/// What can go wrong placing the disk's BARs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// No free spot below 4 GiB for this BAR.
    NoSpaceForBar(u8),
}

impl core::fmt::Display for PciError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PciError::NoSpaceForBar(i) => write!(f, "no free space below 4 GiB for BAR{i}"),
        }
    }
}

impl core::error::Error for PciError {}
