//! A type-0 PCI configuration space with per-byte write and write-1-to-clear masks.
//!
//! The guest sees 4096 bytes: the 256-byte PCI header plus capabilities, and an extended
//! (PCI Express) region that reads as zero. Guest accesses are 1, 2 or 4 bytes, naturally
//! aligned; anything else (other widths, misaligned, beyond 4096) is ignored on write and reads
//! as all-ones, as an unclaimed access does on a real bus. Nothing a guest does can panic.
//!
//! Each byte has a write mask (bits the guest may change) and a write-1-to-clear mask (status
//! bits the guest clears by writing 1). Read-only bytes are only changed through the owner's
//! setters.

use crate::bar::{Bar, NUM_BARS};
use crate::capability::{
    Capability, CapabilityIter, CAPABILITIES_POINTER, FIRST_CAPABILITY_OFFSET,
};
use crate::{Error, Event, Events};

/// Size of the conventional configuration space this crate backs with storage.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Size of the (PCI Express) extended configuration space; bytes 256..4096 read as zero.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;

/// Offsets of type-0 header registers.
pub mod register {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface (8 bits), low byte of the class code.
    pub const PROG_IF: u16 = 0x09;
    /// Sub-class (8 bits).
    pub const SUBCLASS: u16 = 0x0a;
    /// Base class (8 bits).
    pub const CLASS: u16 = 0x0b;
    /// Cache line size (8 bits).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// Header type (8 bits).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// BAR0 (32 bits); BARs 1..=5 follow.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt line (8 bits, scratch register for the OS).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (8 bits, 0 = none, 1 = INTA#).
    pub const INTERRUPT_PIN: u16 = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// Bus mastering (DMA and MSI/MSI-X).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx emulation disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The bits the guest may change on this crate's functions.
    pub const WRITABLE: u16 = MEMORY_SPACE | BUS_MASTER | INTX_DISABLE;
}

/// Status register bits.
pub mod status {
    /// INTx is asserted (read-only, set by the device).
    pub const INTERRUPT_STATUS: u16 = 1 << 3;
    /// The function has a capability list (read-only).
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    /// Master data parity error (write-1-to-clear).
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    /// Signaled target abort (write-1-to-clear).
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    /// Received target abort (write-1-to-clear).
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    /// Received master abort (write-1-to-clear).
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    /// Signaled system error (write-1-to-clear).
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    /// Detected parity error (write-1-to-clear).
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// All write-1-to-clear error bits.
    pub const W1C: u16 = MASTER_DATA_PARITY_ERROR
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY_ERROR;
}

/// Whether a guest access of `len` bytes at `offset` is well-formed within `limit` bytes:
/// 1, 2 or 4 bytes, naturally aligned, in range.
pub(crate) fn access_ok(offset: u64, len: usize, limit: u64) -> bool {
    matches!(len, 1 | 2 | 4)
        && offset % len as u64 == 0
        && offset.saturating_add(len as u64) <= limit
}

/// A type-0 configuration space: header, BARs and a capability list.
///
/// ```
/// use pci_transport::config_space::{command, register, ConfigSpace};
///
/// let mut cs = ConfigSpace::new(0x1af4, 0x1042);
/// let events = cs.write(register::COMMAND, &(command::MEMORY_SPACE | 0x8000).to_le_bytes());
/// assert_eq!(cs.command(), command::MEMORY_SPACE); // bit 15 is read-only
/// assert_eq!(events.len(), 1); // CommandChanged
/// let mut id = [0u8; 2];
/// cs.read(register::VENDOR_ID, &mut id);
/// assert_eq!(u16::from_le_bytes(id), 0x1af4);
/// ```
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; CONFIG_SPACE_SIZE],
    write_mask: [u8; CONFIG_SPACE_SIZE],
    w1c_mask: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<Bar>; NUM_BARS],
    /// The address last reported to the owner for each BAR (the pre-assigned one at first).
    reported: [Option<u64>; NUM_BARS],
    /// Offset of the last capability in the list (0: empty list).
    last_cap: u8,
    /// First free dword-aligned offset for the next capability.
    next_free: usize,
}

impl ConfigSpace {
    /// A header with the given IDs, class 0, no BARs and no capabilities.
    pub fn new(vendor_id: u16, device_id: u16) -> Self {
        let mut cs = Self {
            data: [0; CONFIG_SPACE_SIZE],
            write_mask: [0; CONFIG_SPACE_SIZE],
            w1c_mask: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            reported: [None; NUM_BARS],
            last_cap: 0,
            next_free: usize::from(FIRST_CAPABILITY_OFFSET),
        };
        cs.put_u16(register::VENDOR_ID, vendor_id);
        cs.put_u16(register::DEVICE_ID, device_id);
        cs.put_mask_u16(register::COMMAND, command::WRITABLE);
        cs.put_w1c_u16(register::STATUS, status::W1C);
        cs.put_mask(register::CACHE_LINE_SIZE, 0xff);
        cs.put_mask(register::INTERRUPT_LINE, 0xff);
        cs
    }

    // --- guest accesses -------------------------------------------------------------------

    /// Guest read of `data.len()` bytes at `offset` (little-endian). Malformed accesses read as
    /// all-ones; the extended region (256..4096) reads as zero.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        if !access_ok(
            u64::from(offset),
            data.len(),
            EXTENDED_CONFIG_SPACE_SIZE as u64,
        ) {
            data.fill(0xff);
            return;
        }
        let start = usize::from(offset);
        match self.data.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    /// Guest write of `data` at `offset` through the write and write-1-to-clear masks.
    /// Malformed accesses and writes to the extended region are ignored.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Events {
        let mut events = Events::new();
        self.write_with(offset, data, &mut events);
        events
    }

    /// [`ConfigSpace::write`], appending to an existing event list.
    pub fn write_with(&mut self, offset: u16, data: &[u8], events: &mut Events) {
        if !access_ok(u64::from(offset), data.len(), CONFIG_SPACE_SIZE as u64) {
            return;
        }
        let old_command = self.command();
        let start = usize::from(offset);
        for (i, &value) in data.iter().enumerate() {
            let at = start + i;
            let (Some(byte), Some(&wm), Some(&w1c)) = (
                self.data.get_mut(at),
                self.write_mask.get(at),
                self.w1c_mask.get(at),
            ) else {
                return;
            };
            *byte = ((*byte & !wm) | (value & wm)) & !(value & w1c);
        }
        let new_command = self.command();
        if new_command != old_command {
            events.push(Event::CommandChanged {
                old: old_command,
                new: new_command,
            });
        }
        self.report_moved_bars(events);
    }

    /// Reports BARs whose decoded address differs from the last reported one. While memory
    /// decoding is disabled nothing decodes, so nothing is reported: sizing and two-step
    /// updates of 64-bit BARs done with decoding off (as drivers do) give one event with the
    /// final address when decoding is turned back on.
    fn report_moved_bars(&mut self, events: &mut Events) {
        if !self.memory_space_enabled() {
            return;
        }
        for index in 0..NUM_BARS as u8 {
            let current = self.bar_address(index);
            let Some(reported) = self.reported.get_mut(usize::from(index)) else {
                continue;
            };
            if let (Some(old_addr), Some(new_addr)) = (*reported, current) {
                if old_addr != new_addr {
                    events.push(Event::BarReprogrammed {
                        index,
                        old_addr,
                        new_addr,
                    });
                    *reported = Some(new_addr);
                }
            }
        }
    }

    // --- owner accessors ------------------------------------------------------------------

    /// Reads a byte of the header region (0 outside it).
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.data.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// Reads a little-endian 16-bit value (0 bytes outside the header region).
    pub fn read_u16(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.wrapping_add(1))])
    }

    /// Reads a little-endian 32-bit value (0 bytes outside the header region).
    pub fn read_u32(&self, offset: u16) -> u32 {
        u32::from(self.read_u16(offset)) | (u32::from(self.read_u16(offset.wrapping_add(2))) << 16)
    }

    /// Overwrites bytes regardless of the masks (owner only).
    pub fn set_bytes(&mut self, offset: u16, bytes: &[u8]) -> Result<(), Error> {
        Self::region(&mut self.data, offset, bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    /// Sets the guest write mask of `mask.len()` bytes at `offset`.
    pub fn set_write_mask(&mut self, offset: u16, mask: &[u8]) -> Result<(), Error> {
        Self::region(&mut self.write_mask, offset, mask.len())?.copy_from_slice(mask);
        Ok(())
    }

    /// Sets the write-1-to-clear mask of `mask.len()` bytes at `offset`.
    pub fn set_w1c_mask(&mut self, offset: u16, mask: &[u8]) -> Result<(), Error> {
        Self::region(&mut self.w1c_mask, offset, mask.len())?.copy_from_slice(mask);
        Ok(())
    }

    fn region(
        buf: &mut [u8; CONFIG_SPACE_SIZE],
        offset: u16,
        len: usize,
    ) -> Result<&mut [u8], Error> {
        let start = usize::from(offset);
        buf.get_mut(start..start.saturating_add(len))
            .ok_or(Error::ConfigOffsetOutOfRange(offset))
    }

    fn put_u16(&mut self, offset: u16, value: u16) {
        // Header offsets used here are constants well inside the header.
        let _ = self.set_bytes(offset, &value.to_le_bytes());
    }

    fn put_mask(&mut self, offset: u16, mask: u8) {
        let _ = self.set_write_mask(offset, &[mask]);
    }

    fn put_mask_u16(&mut self, offset: u16, mask: u16) {
        let _ = self.set_write_mask(offset, &mask.to_le_bytes());
    }

    fn put_w1c_u16(&mut self, offset: u16, mask: u16) {
        let _ = self.set_w1c_mask(offset, &mask.to_le_bytes());
    }

    /// Vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.read_u16(register::VENDOR_ID)
    }

    /// Sets the vendor ID.
    pub fn set_vendor_id(&mut self, id: u16) {
        self.put_u16(register::VENDOR_ID, id);
    }

    /// Device ID.
    pub fn device_id(&self) -> u16 {
        self.read_u16(register::DEVICE_ID)
    }

    /// Sets the device ID.
    pub fn set_device_id(&mut self, id: u16) {
        self.put_u16(register::DEVICE_ID, id);
    }

    /// Sets the revision ID.
    pub fn set_revision_id(&mut self, revision: u8) {
        let _ = self.set_bytes(register::REVISION_ID, &[revision]);
    }

    /// Sets the class code: base class, sub-class and programming interface.
    pub fn set_class(&mut self, class: u8, subclass: u8, prog_if: u8) {
        let _ = self.set_bytes(register::PROG_IF, &[prog_if, subclass, class]);
    }

    /// Sets the subsystem vendor ID and subsystem ID.
    pub fn set_subsystem(&mut self, vendor_id: u16, id: u16) {
        self.put_u16(register::SUBSYSTEM_VENDOR_ID, vendor_id);
        self.put_u16(register::SUBSYSTEM_ID, id);
    }

    /// Sets the interrupt pin (0 = none, 1 = INTA# .. 4 = INTD#).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        let _ = self.set_bytes(register::INTERRUPT_PIN, &[pin]);
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        self.read_u16(register::COMMAND)
    }

    /// Whether memory space decoding is enabled.
    pub fn memory_space_enabled(&self) -> bool {
        self.command() & command::MEMORY_SPACE != 0
    }

    /// Whether bus mastering (DMA, MSI-X) is enabled.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Status register.
    pub fn status(&self) -> u16 {
        self.read_u16(register::STATUS)
    }

    /// Sets or clears device-owned status bits (e.g. [`status::INTERRUPT_STATUS`]).
    pub fn set_status_bits(&mut self, bits: u16, set: bool) {
        let status = self.status();
        let new = if set { status | bits } else { status & !bits };
        self.put_u16(register::STATUS, new);
    }

    // --- BARs -----------------------------------------------------------------------------

    /// Installs a memory BAR decoded at `address` (aligned to its size; below 4 GiB for a
    /// 32-bit BAR). The guest may move it later.
    pub fn add_bar(&mut self, bar: Bar, address: u64) -> Result<(), Error> {
        let index = usize::from(bar.index());
        let slots = if bar.is_64bit() { 2 } else { 1 };
        for slot in index..index + slots {
            if self.bars.get(slot).is_none_or(|b| b.is_some()) || self.slot_in_upper_half(slot) {
                return Err(Error::BarInUse(slot as u8));
            }
        }
        if !bar.is_valid_address(address) {
            return Err(Error::InvalidBarAddress(address));
        }
        let offset = bar.register_offset();
        let (low, high) = bar.registers(address);
        let (low_mask, high_mask) = bar.write_masks();
        self.set_bytes(offset, &low.to_le_bytes())?;
        self.set_write_mask(offset, &low_mask.to_le_bytes())?;
        if let (Some(high), Some(high_mask)) = (high, high_mask) {
            self.set_bytes(offset + 4, &high.to_le_bytes())?;
            self.set_write_mask(offset + 4, &high_mask.to_le_bytes())?;
        }
        if let Some(slot) = self.bars.get_mut(index) {
            *slot = Some(bar);
        }
        if let Some(slot) = self.reported.get_mut(index) {
            *slot = Some(address);
        }
        Ok(())
    }

    fn slot_in_upper_half(&self, slot: usize) -> bool {
        slot.checked_sub(1)
            .and_then(|prev| self.bars.get(prev).copied().flatten())
            .is_some_and(|b| b.is_64bit())
    }

    /// The BAR installed at `index` (the low slot of a 64-bit pair).
    pub fn bar(&self, index: u8) -> Option<Bar> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// Current decoded address of the BAR at `index`.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.bar(index)?;
        let offset = bar.register_offset();
        Some(bar.decode(self.read_u32(offset), self.read_u32(offset + 4)))
    }

    /// Which BAR decodes `len` bytes at guest physical `address`: `(index, offset in BAR)`.
    /// Does not look at the memory space enable bit; the owner decides whether it matters.
    pub fn find_bar(&self, address: u64, len: u64) -> Option<(u8, u64)> {
        (0..NUM_BARS as u8).find_map(|index| {
            let bar = self.bar(index)?;
            let base = self.bar_address(index)?;
            let offset = address.checked_sub(base)?;
            (offset.checked_add(len)? <= bar.size()).then_some((index, offset))
        })
    }

    // --- capabilities ---------------------------------------------------------------------

    /// Appends a capability to the list. `cap` is the whole structure starting with its ID
    /// byte; its next-pointer byte is overwritten. All bytes are read-only to the guest until
    /// the owner sets a write mask. Returns the capability's offset.
    pub fn add_capability(&mut self, cap: &[u8]) -> Result<u8, Error> {
        if cap.len() < 2 {
            return Err(Error::CapabilityTooShort);
        }
        let offset = self.next_free;
        let end = offset + cap.len();
        if end > CONFIG_SPACE_SIZE {
            return Err(Error::CapabilitySpaceExhausted);
        }
        let offset8 = offset as u8;
        self.set_bytes(offset as u16, cap)?;
        self.set_bytes(offset as u16 + 1, &[0])?;
        let link = if self.last_cap == 0 {
            CAPABILITIES_POINTER
        } else {
            u16::from(self.last_cap) + 1
        };
        self.set_bytes(link, &[offset8])?;
        self.last_cap = offset8;
        self.next_free = end.next_multiple_of(4);
        self.set_status_bits(status::CAPABILITIES_LIST, true);
        Ok(offset8)
    }

    /// Iterates over the capability list.
    pub fn capabilities(&self) -> CapabilityIter<impl FnMut(u16) -> u8 + '_> {
        let read = move |offset| self.read_u8(offset);
        if self.status() & status::CAPABILITIES_LIST == 0 {
            return CapabilityIter::empty(read);
        }
        CapabilityIter::new(read)
    }

    /// The first capability with ID `id`.
    pub fn find_capability(&self, id: u8) -> Option<Capability> {
        self.capabilities().find(|c| c.id == id)
    }
}
