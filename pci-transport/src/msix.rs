//! MSI-X: the capability, the vector table, the pending bit array and delivery rules.
//!
//! Delivery follows PCI Local Bus 3.0, 6.8.2: a function signals a vector by sending the
//! entry's message if MSI-X is enabled and neither the function nor the vector is masked.
//! Otherwise, while enabled, the vector's pending bit is set and the message goes out as soon
//! as both masks are clear; [`MsixTable`] reports that moment as
//! [`Event::MsixPendingDelivered`].

use crate::{capability, Error, Event, Events};

// Defined apart so that `Event` can carry a message without importing this module.
pub use crate::msi::{MsixMessage, MAX_MSIX_VECTORS};

// The pending bit array is one u64.
const _: () = assert!(MAX_MSIX_VECTORS <= 64);

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Length of the MSI-X capability structure in configuration space.
pub const MSIX_CAPABILITY_LEN: usize = 12;

/// Bits of the MSI-X Message Control register.
pub mod message_control {
    /// Table size minus one (read-only).
    pub const TABLE_SIZE_MASK: u16 = 0x07ff;
    /// Function Mask: masks every vector of the function.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// MSI-X Enable.
    pub const ENABLE: u16 = 1 << 15;
}

/// Vector Control bit 0: the vector is masked.
pub const VECTOR_CONTROL_MASK_BIT: u32 = 1;

/// Mask of the BAR indicator (BIR) in the Table/PBA offset registers.
pub const BIR_MASK: u32 = 0x7;

/// One MSI-X table entry, as the guest programs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message Address (low 32 bits).
    pub msg_addr_lo: u32,
    /// Message Upper Address.
    pub msg_addr_hi: u32,
    /// Message Data.
    pub msg_data: u32,
    /// Vector Control (bit 0: mask).
    pub vector_control: u32,
}

impl Default for MsixEntry {
    /// Entries come out of reset masked (PCI 3.0, 6.8.2.9).
    fn default() -> Self {
        Self {
            msg_addr_lo: 0,
            msg_addr_hi: 0,
            msg_data: 0,
            vector_control: VECTOR_CONTROL_MASK_BIT,
        }
    }
}

impl MsixEntry {
    /// Whether the vector's mask bit is set.
    pub fn masked(&self) -> bool {
        self.vector_control & VECTOR_CONTROL_MASK_BIT != 0
    }

    /// The message this entry sends.
    pub fn message(&self) -> MsixMessage {
        MsixMessage {
            address: u64::from(self.msg_addr_lo) | (u64::from(self.msg_addr_hi) << 32),
            data: self.msg_data,
        }
    }

    fn dword(&self, index: u64) -> u32 {
        match index {
            0 => self.msg_addr_lo,
            1 => self.msg_addr_hi,
            2 => self.msg_data,
            _ => self.vector_control,
        }
    }

    fn set_dword(&mut self, index: u64, value: u32) {
        match index {
            0 => self.msg_addr_lo = value,
            1 => self.msg_addr_hi = value,
            2 => self.msg_data = value,
            // Only the mask bit of Vector Control is defined; the rest is reserved (reads 0).
            _ => self.vector_control = value & VECTOR_CONTROL_MASK_BIT,
        }
    }
}

/// What [`MsixTable::signal`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixDelivery {
    /// Send this message now.
    Deliver(MsixMessage),
    /// The vector or the function is masked: the pending bit is set and the message will be
    /// reported by an [`Event::MsixPendingDelivered`] once unmasked.
    Pending,
    /// MSI-X is disabled; the function must use INTx (or nothing) instead.
    Disabled,
    /// The vector is outside the table.
    InvalidVector,
}

/// The MSI-X capability structure: table size and where the table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Number of table entries (1..=2048; this crate stores at most [`MAX_MSIX_VECTORS`]).
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bir: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bir: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Offset of Message Control inside the capability.
    pub const MESSAGE_CONTROL: u16 = 2;
    /// Offset of Table Offset/BIR inside the capability.
    pub const TABLE: u16 = 4;
    /// Offset of PBA Offset/BIR inside the capability.
    pub const PBA: u16 = 8;

    /// The capability bytes (next pointer 0, Message Control with Enable and Function Mask
    /// clear).
    pub fn to_bytes(&self) -> [u8; MSIX_CAPABILITY_LEN] {
        let control = self.table_size.saturating_sub(1) & message_control::TABLE_SIZE_MASK;
        let table = (self.table_offset & !BIR_MASK) | (u32::from(self.table_bir) & BIR_MASK);
        let pba = (self.pba_offset & !BIR_MASK) | (u32::from(self.pba_bir) & BIR_MASK);
        let mut out = [0u8; MSIX_CAPABILITY_LEN];
        out[0] = capability::id::MSIX;
        out[2..4].copy_from_slice(&control.to_le_bytes());
        out[4..8].copy_from_slice(&table.to_le_bytes());
        out[8..12].copy_from_slice(&pba.to_le_bytes());
        out
    }

    /// The guest write mask of the capability: only Enable and Function Mask are writable.
    pub fn write_mask() -> [u8; MSIX_CAPABILITY_LEN] {
        let mut mask = [0u8; MSIX_CAPABILITY_LEN];
        let control = message_control::ENABLE | message_control::FUNCTION_MASK;
        mask[2..4].copy_from_slice(&control.to_le_bytes());
        mask
    }

    /// Decodes Message Control, Table and PBA registers as read from configuration space.
    pub fn from_registers(control: u16, table: u32, pba: u32) -> Self {
        Self {
            table_size: (control & message_control::TABLE_SIZE_MASK) + 1,
            table_bir: (table & BIR_MASK) as u8,
            table_offset: table & !BIR_MASK,
            pba_bir: (pba & BIR_MASK) as u8,
            pba_offset: pba & !BIR_MASK,
        }
    }
}

/// The MSI-X table, pending bit array and the enable/function-mask state of a function.
#[derive(Clone, Debug)]
pub struct MsixTable {
    entries: [MsixEntry; MAX_MSIX_VECTORS],
    /// Pending bits, one per vector (MAX_MSIX_VECTORS <= 64).
    pba: u64,
    size: u16,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A table of `size` vectors (1..=[`MAX_MSIX_VECTORS`]), all masked, MSI-X disabled.
    pub fn new(size: u16) -> Result<Self, Error> {
        if size == 0 || usize::from(size) > MAX_MSIX_VECTORS {
            return Err(Error::InvalidMsixTableSize {
                requested: size,
                max: MAX_MSIX_VECTORS as u16,
            });
        }
        Ok(Self {
            entries: [MsixEntry::default(); MAX_MSIX_VECTORS],
            pba: 0,
            size,
            enabled: false,
            function_masked: false,
        })
    }

    /// Number of vectors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Size in bytes of the table in its BAR.
    pub fn table_len(&self) -> u64 {
        u64::from(self.size) * MSIX_ENTRY_SIZE
    }

    /// Size in bytes of the PBA in its BAR (whole QWORDs).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.size).div_ceil(64) * 8
    }

    /// MSI-X Enable.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Function Mask.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// The entry of `vector`.
    pub fn entry(&self, vector: u16) -> Option<&MsixEntry> {
        self.entries
            .get(usize::from(vector))
            .filter(|_| vector < self.size)
    }

    /// The message programmed for `vector`, whatever the masks (to program interrupt routes).
    pub fn message(&self, vector: u16) -> Option<MsixMessage> {
        self.entry(vector).map(MsixEntry::message)
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        vector < self.size && self.pba & (1u64 << vector) != 0
    }

    /// Whether `vector` would be delivered right now.
    pub fn is_deliverable(&self, vector: u16) -> bool {
        self.enabled && !self.function_masked && self.entry(vector).is_some_and(|e| !e.masked())
    }

    /// Signals `vector`: deliver now, or mark it pending (PCI 3.0, 6.8.2.9).
    pub fn signal(&mut self, vector: u16) -> MsixDelivery {
        let Some(entry) = self.entry(vector) else {
            return MsixDelivery::InvalidVector;
        };
        if !self.enabled {
            return MsixDelivery::Disabled;
        }
        if self.function_masked || entry.masked() {
            self.pba |= 1u64 << vector;
            return MsixDelivery::Pending;
        }
        MsixDelivery::Deliver(entry.message())
    }

    /// Applies the Enable and Function Mask bits from Message Control. Reports a change and
    /// releases pending vectors that became deliverable.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool, events: &mut Events) {
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        events.push(Event::MsixEnableChanged {
            enabled,
            function_masked,
        });
        for vector in 0..self.size {
            self.release_pending(vector, events);
        }
    }

    fn release_pending(&mut self, vector: u16, events: &mut Events) {
        if !self.is_pending(vector) || !self.is_deliverable(vector) {
            return;
        }
        self.pba &= !(1u64 << vector);
        if let Some(message) = self.message(vector) {
            events.push(Event::MsixPendingDelivered { vector, message });
        }
    }

    /// Guest read of the table at `offset` from the table start. 4- and 8-byte aligned reads;
    /// other accesses read as all-ones, beyond the table as zero.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        if !dword_access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            let at = offset + 4 * i as u64;
            let value = self
                .entry_at(at)
                .map_or(0, |(entry, dword)| entry.dword(dword));
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Guest write of the table. Reports changed entries and pending vectors released by
    /// clearing a mask bit.
    pub fn table_write(&mut self, offset: u64, data: &[u8], events: &mut Events) {
        if !dword_access_ok(offset, data.len()) {
            return;
        }
        // An aligned 4- or 8-byte access never crosses a 16-byte entry.
        let Ok(vector) = u16::try_from(offset / MSIX_ENTRY_SIZE) else {
            return;
        };
        if vector >= self.size {
            return;
        }
        let Some(entry) = self.entries.get_mut(usize::from(vector)) else {
            return;
        };
        let before = *entry;
        let first = (offset % MSIX_ENTRY_SIZE) / 4;
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            entry.set_dword(
                first + i as u64,
                u32::from_le_bytes(chunk.try_into().unwrap_or([0; 4])),
            );
        }
        if *entry != before {
            events.push(Event::MsixEntryChanged(vector));
            self.release_pending(vector, events);
        }
    }

    fn entry_at(&self, offset: u64) -> Option<(&MsixEntry, u64)> {
        let vector = u16::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        Some((self.entry(vector)?, (offset % MSIX_ENTRY_SIZE) / 4))
    }

    /// Guest read of the pending bit array at `offset` (writes to the PBA are ignored).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        if !dword_access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let bytes = self.pba.to_le_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = usize::try_from(offset)
                .ok()
                .and_then(|o| bytes.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
}

/// MSI-X table and PBA accept aligned 4- and 8-byte accesses (PCI 3.0, 6.8.2).
fn dword_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset % len as u64 == 0
}
