//! Driver side: finding and setting up a (virtio-)PCI function from inside a guest.
//!
//! Everything goes through a [`ConfigAccess`] implementation (port I/O at 0xCF8/0xCFC, ECAM,
//! or in tests a [`VirtioPciFunction`](crate::VirtioPciFunction) directly). The helpers read
//! the capability list to locate the virtio structures (4.1.4 "Virtio Structure PCI
//! Capabilities"), size and place BARs, enable decoding and bus mastering, and locate and
//! enable MSI-X. MMIO to the structures themselves is left to the caller (volatile accesses
//! at `BAR address + offset`).

use crate::bar::{flags, size_from_mask, BarInfo, BarKind, BAR0_OFFSET, NUM_BARS};
use crate::capability::{self, CapabilityIter};
use crate::config_space::{command, register, status};
use crate::msix::{message_control, MsixCapability, MSIX_ENTRY_SIZE};
use crate::virtio_pci::caps::{
    VirtioCapInfo, VirtioPciCap, VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_PCI_CFG,
};

/// Bus/device/function of a PCI function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl PciAddress {
    /// A bus/device/function triple.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device,
            function,
        }
    }
}

/// Configuration space access mechanism. Offsets passed to `read_u32`/`write_u32` are
/// dword-aligned.
pub trait ConfigAccess {
    /// Reads the dword at `offset` (aligned to 4) of bus/device/function.
    fn read_u32(&mut self, bus: u8, device: u8, function: u8, offset: u16) -> u32;

    /// Writes the dword at `offset` (aligned to 4) of bus/device/function.
    fn write_u32(&mut self, bus: u8, device: u8, function: u8, offset: u16, value: u32);

    /// Reads the 16-bit value at `offset` (aligned to 2), through the containing dword.
    fn read_u16(&mut self, bus: u8, device: u8, function: u8, offset: u16) -> u16 {
        let dword = self.read_u32(bus, device, function, offset & !3);
        (dword >> (8 * u32::from(offset & 2))) as u16
    }

    /// Reads the byte at `offset`, through the containing dword.
    fn read_u8(&mut self, bus: u8, device: u8, function: u8, offset: u16) -> u8 {
        let dword = self.read_u32(bus, device, function, offset & !3);
        (dword >> (8 * u32::from(offset & 3))) as u8
    }

    /// Writes the 16-bit value at `offset` (aligned to 2) by read-modify-write of the
    /// containing dword. Not for the dword holding command and status: writing back status
    /// would clear its write-1-to-clear bits (use [`write_command`]).
    fn write_u16(&mut self, bus: u8, device: u8, function: u8, offset: u16, value: u16) {
        let aligned = offset & !3;
        let shift = 8 * u32::from(offset & 2);
        let old = self.read_u32(bus, device, function, aligned);
        let new = (old & !(0xffff << shift)) | (u32::from(value) << shift);
        self.write_u32(bus, device, function, aligned, new);
    }
}

fn rd32<A: ConfigAccess + ?Sized>(a: &mut A, at: PciAddress, offset: u16) -> u32 {
    a.read_u32(at.bus, at.device, at.function, offset)
}

fn wr32<A: ConfigAccess + ?Sized>(a: &mut A, at: PciAddress, offset: u16, value: u32) {
    a.write_u32(at.bus, at.device, at.function, offset, value);
}

fn rd16<A: ConfigAccess + ?Sized>(a: &mut A, at: PciAddress, offset: u16) -> u16 {
    a.read_u16(at.bus, at.device, at.function, offset)
}

fn rd8<A: ConfigAccess + ?Sized>(a: &mut A, at: PciAddress, offset: u16) -> u8 {
    a.read_u8(at.bus, at.device, at.function, offset)
}

/// Vendor and device ID of a function, or `None` if nothing answers (vendor 0xFFFF).
pub fn probe<A: ConfigAccess + ?Sized>(access: &mut A, at: PciAddress) -> Option<(u16, u16)> {
    let id = rd32(access, at, register::VENDOR_ID);
    let vendor = id as u16;
    (vendor != 0xffff && vendor != 0).then_some((vendor, (id >> 16) as u16))
}

/// The first function on `bus` with the given vendor and device ID (multi-function devices
/// are searched too).
pub fn find_device<A: ConfigAccess + ?Sized>(
    access: &mut A,
    bus: u8,
    vendor: u16,
    device: u16,
) -> Option<PciAddress> {
    for dev in 0..32 {
        let Some(ids0) = probe(access, PciAddress::new(bus, dev, 0)) else {
            continue;
        };
        let multi = rd8(access, PciAddress::new(bus, dev, 0), register::HEADER_TYPE) & 0x80 != 0;
        let functions = if multi { 8 } else { 1 };
        for func in 0..functions {
            let at = PciAddress::new(bus, dev, func);
            let ids = if func == 0 {
                Some(ids0)
            } else {
                probe(access, at)
            };
            if ids == Some((vendor, device)) {
                return Some(at);
            }
        }
    }
    None
}

/// Iterates over the capability list of a function (empty if the status register says there
/// is none). Bounded against loops.
pub fn capabilities<'a, A: ConfigAccess + ?Sized>(
    access: &'a mut A,
    at: PciAddress,
) -> CapabilityIter<impl FnMut(u16) -> u8 + 'a> {
    let has_list = rd16(access, at, register::STATUS) & status::CAPABILITIES_LIST != 0;
    let read = move |offset| rd8(access, at, offset);
    if has_list {
        CapabilityIter::new(read)
    } else {
        CapabilityIter::empty(read)
    }
}

/// Decodes the virtio structure capability at `cap_offset` (4.1.4). `None` if it is not a
/// virtio structure capability a driver may use: too short, or naming a reserved BAR.
pub fn read_virtio_cap<A: ConfigAccess + ?Sized>(
    access: &mut A,
    at: PciAddress,
    cap_offset: u8,
) -> Option<VirtioCapInfo> {
    let base = u16::from(cap_offset);
    if rd8(access, at, base) != capability::id::VENDOR_SPECIFIC {
        return None;
    }
    let head = rd32(access, at, base);
    let cap_len = (head >> 16) as u8;
    let cfg_type = (head >> 24) as u8;
    let bar = rd8(access, at, base + VirtioPciCap::BAR);
    if usize::from(cap_len) < VirtioPciCap::LEN || usize::from(bar) >= NUM_BARS {
        return None;
    }
    let notify_off_multiplier = if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG {
        if usize::from(cap_len) < VirtioPciCap::LEN + 4 {
            return None;
        }
        rd32(access, at, base + VirtioPciCap::LEN as u16)
    } else {
        0
    };
    Some(VirtioCapInfo {
        cap_offset,
        cfg_type,
        bar,
        offset: rd32(access, at, base + VirtioPciCap::OFFSET),
        length: rd32(access, at, base + VirtioPciCap::LENGTH),
        notify_off_multiplier,
    })
}

/// The first usable capability of each virtio structure type (4.1.4.1: drivers SHOULD use the
/// first instance they can support).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioCaps {
    /// `VIRTIO_PCI_CAP_COMMON_CFG`.
    pub common: Option<VirtioCapInfo>,
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG` (with `notify_off_multiplier`).
    pub notify: Option<VirtioCapInfo>,
    /// `VIRTIO_PCI_CAP_ISR_CFG`.
    pub isr: Option<VirtioCapInfo>,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`.
    pub device: Option<VirtioCapInfo>,
    /// `VIRTIO_PCI_CAP_PCI_CFG`.
    pub pci_cfg: Option<VirtioCapInfo>,
}

impl VirtioCaps {
    /// Whether the structures a modern driver needs (common, notify, ISR) are all present.
    pub fn is_complete(&self) -> bool {
        self.common.is_some() && self.notify.is_some() && self.isr.is_some()
    }
}

/// Walks the capability list and collects the virtio structure capabilities.
pub fn find_virtio_caps<A: ConfigAccess + ?Sized>(access: &mut A, at: PciAddress) -> VirtioCaps {
    let mut offsets = [0u8; capability::MAX_CAPABILITIES];
    let mut n = 0;
    for cap in capabilities(access, at).filter(|c| c.id == capability::id::VENDOR_SPECIFIC) {
        if let Some(slot) = offsets.get_mut(n) {
            *slot = cap.offset;
            n += 1;
        }
    }
    let mut caps = VirtioCaps::default();
    for &offset in offsets.get(..n).unwrap_or(&[]) {
        let Some(info) = read_virtio_cap(access, at, offset) else {
            continue;
        };
        let slot = match info.cfg_type {
            VIRTIO_PCI_CAP_COMMON_CFG => &mut caps.common,
            VIRTIO_PCI_CAP_NOTIFY_CFG => &mut caps.notify,
            VIRTIO_PCI_CAP_ISR_CFG => &mut caps.isr,
            VIRTIO_PCI_CAP_DEVICE_CFG => &mut caps.device,
            VIRTIO_PCI_CAP_PCI_CFG => &mut caps.pci_cfg,
            _ => continue,
        };
        slot.get_or_insert(info);
    }
    caps
}

/// Command register value.
pub fn read_command<A: ConfigAccess + ?Sized>(access: &mut A, at: PciAddress) -> u16 {
    rd16(access, at, register::COMMAND)
}

/// Writes the command register, writing zeros to the status half so no write-1-to-clear
/// status bit is cleared by accident.
pub fn write_command<A: ConfigAccess + ?Sized>(access: &mut A, at: PciAddress, value: u16) {
    wr32(access, at, register::COMMAND, u32::from(value));
}

/// Sets memory space decoding and bus mastering (needed for MMIO and for MSI-X / DMA).
pub fn enable_memory_and_bus_master<A: ConfigAccess + ?Sized>(access: &mut A, at: PciAddress) {
    let cmd = read_command(access, at);
    write_command(
        access,
        at,
        cmd | command::MEMORY_SPACE | command::BUS_MASTER,
    );
}

/// Reads BAR `index` without sizing it: `(address, kind, prefetchable)`. `None` for an I/O
/// BAR, the upper half of a 64-bit BAR (not detectable here: pass low indices), or an index
/// out of range.
fn bar_header<A: ConfigAccess + ?Sized>(
    access: &mut A,
    at: PciAddress,
    index: u8,
) -> Option<(u16, u32, BarKind)> {
    if usize::from(index) >= NUM_BARS {
        return None;
    }
    let offset = BAR0_OFFSET + 4 * u16::from(index);
    let low = rd32(access, at, offset);
    if low & flags::IO_SPACE != 0 {
        return None;
    }
    let kind = if low & flags::MEM_TYPE_MASK == flags::MEM_TYPE_64 {
        BarKind::Memory64
    } else {
        BarKind::Memory32
    };
    if kind == BarKind::Memory64 && usize::from(index) + 1 >= NUM_BARS {
        return None;
    }
    Some((offset, low, kind))
}

/// Current address of memory BAR `index` (a 64-bit BAR's low index).
pub fn bar_address<A: ConfigAccess + ?Sized>(
    access: &mut A,
    at: PciAddress,
    index: u8,
) -> Option<u64> {
    let (offset, low, kind) = bar_header(access, at, index)?;
    let low = u64::from(low & !flags::MEM_FLAGS_MASK);
    Some(match kind {
        BarKind::Memory32 => low,
        BarKind::Memory64 => low | (u64::from(rd32(access, at, offset + 4)) << 32),
    })
}

/// Sizes memory BAR `index` with the all-ones protocol, restoring its address afterwards.
/// Memory decoding is turned off during sizing so the transient address decodes nothing.
/// Returns `None` for an I/O BAR or a bad index; `size` 0 means the BAR is not implemented.
pub fn size_bar<A: ConfigAccess + ?Sized>(
    access: &mut A,
    at: PciAddress,
    index: u8,
) -> Option<BarInfo> {
    let (offset, low, kind) = bar_header(access, at, index)?;
    let is64 = kind == BarKind::Memory64;
    let high = if is64 {
        rd32(access, at, offset + 4)
    } else {
        0
    };
    let cmd = read_command(access, at);
    write_command(
        access,
        at,
        cmd & !(command::MEMORY_SPACE | command::IO_SPACE),
    );
    wr32(access, at, offset, u32::MAX);
    let low_mask = rd32(access, at, offset);
    let mut high_mask = 0;
    if is64 {
        wr32(access, at, offset + 4, u32::MAX);
        high_mask = rd32(access, at, offset + 4);
        wr32(access, at, offset + 4, high);
    }
    wr32(access, at, offset, low);
    write_command(access, at, cmd);
    let address = u64::from(low & !flags::MEM_FLAGS_MASK) | (u64::from(high) << 32);
    Some(BarInfo {
        address,
        size: size_from_mask(low_mask, high_mask, kind),
        kind,
        prefetchable: low & flags::PREFETCHABLE != 0,
    })
}

/// Programs memory BAR `index` to decode at `address` (the caller picks an address aligned
/// to the BAR size; a 32-bit BAR ignores the upper half). Memory decoding is off while the
/// halves of a 64-bit BAR are written, so the half-updated address never decodes.
pub fn set_bar_address<A: ConfigAccess + ?Sized>(
    access: &mut A,
    at: PciAddress,
    index: u8,
    address: u64,
) {
    let Some((offset, _, kind)) = bar_header(access, at, index) else {
        return;
    };
    let cmd = read_command(access, at);
    write_command(access, at, cmd & !command::MEMORY_SPACE);
    wr32(access, at, offset, address as u32);
    if kind == BarKind::Memory64 {
        wr32(access, at, offset + 4, (address >> 32) as u32);
    }
    write_command(access, at, cmd);
}

/// Where a function's MSI-X capability is and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixInfo {
    /// Offset of the capability in configuration space.
    pub cap_offset: u8,
    /// Table size and table/PBA location.
    pub capability: MsixCapability,
}

impl MsixInfo {
    /// Offset of `vector`'s table entry in the table BAR.
    pub fn entry_offset(&self, vector: u16) -> u64 {
        u64::from(self.capability.table_offset) + u64::from(vector) * MSIX_ENTRY_SIZE
    }
}

/// Finds the MSI-X capability.
pub fn find_msix<A: ConfigAccess + ?Sized>(access: &mut A, at: PciAddress) -> Option<MsixInfo> {
    let cap = capabilities(access, at).find(|c| c.id == capability::id::MSIX)?;
    let base = u16::from(cap.offset);
    let control = rd16(access, at, base + MsixCapability::MESSAGE_CONTROL);
    let table = rd32(access, at, base + MsixCapability::TABLE);
    let pba = rd32(access, at, base + MsixCapability::PBA);
    Some(MsixInfo {
        cap_offset: cap.offset,
        capability: MsixCapability::from_registers(control, table, pba),
    })
}

/// Sets the MSI-X Enable and Function Mask bits (program the table entries first, with the
/// function masked, then enable and unmask).
pub fn msix_set_control<A: ConfigAccess + ?Sized>(
    access: &mut A,
    at: PciAddress,
    info: &MsixInfo,
    enable: bool,
    function_mask: bool,
) {
    let offset = u16::from(info.cap_offset) + MsixCapability::MESSAGE_CONTROL;
    let mut control =
        rd16(access, at, offset) & !(message_control::ENABLE | message_control::FUNCTION_MASK);
    if enable {
        control |= message_control::ENABLE;
    }
    if function_mask {
        control |= message_control::FUNCTION_MASK;
    }
    access.write_u16(at.bus, at.device, at.function, offset, control);
}
