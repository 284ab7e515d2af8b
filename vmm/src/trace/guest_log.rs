//! The guest's per-request log, published through a mailbox in guest memory.
//!
//! With `trace=1` on its command line the test guest records, for every request it submits,
//! the queue, the head index and three guest TSC values: before writing the avail ring, at
//! the kick (if it kicked) and when it saw the completion. At the end of the run (and after
//! each benchmark) it writes a mailbox at the fixed guest physical address [`MAILBOX_ADDR`]:
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | magic [`MAGIC`] (`"VBLKTRC1"` little-endian) |
//! | 8 | `log_addr`: guest physical address of entry 0 |
//! | 16 | `entry_count` |
//! | 24 | `entry_size` (at least [`ENTRY_SIZE`]; larger entries keep this prefix) |
//!
//! An entry ([`GuestEntry`], little-endian): `queue u16 @0, head u16 @2, flags u32 @4,
//! submit_tsc u64 @8, kick_tsc u64 @16, complete_tsc u64 @24`. The guest is not trusted:
//! every field is bounds-checked and a bad mailbox reads as no log.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest physical address of the mailbox (free low memory in the VMM's map; 0x6000 holds
/// hvm_start_info, 0x7000 the command line).
pub const MAILBOX_ADDR: u64 = 0x5000;
/// The mailbox's magic value.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VBLKTRC1");
/// Bytes of the entry fields the VMM reads.
pub const ENTRY_SIZE: u64 = 32;
/// Most entries read (a hostile count cannot make the VMM allocate without bound).
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Largest entry size accepted.
pub const MAX_ENTRY_SIZE: u64 = 4096;

/// `flags` bit: the guest kicked after this submission (`kick_tsc` is valid).
pub const FLAG_KICKED: u32 = 1 << 0;
/// `flags` bit: the guest saw the completion (`complete_tsc` is valid).
pub const FLAG_COMPLETED: u32 = 1 << 1;

/// One request as the guest saw it (guest TSC values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestEntry {
    /// Queue index.
    pub queue: u16,
    /// Head descriptor index.
    pub head: u16,
    /// [`FLAG_KICKED`], [`FLAG_COMPLETED`].
    pub flags: u32,
    /// Guest TSC before the avail ring was written.
    pub submit_tsc: u64,
    /// Guest TSC just before the kick (valid with [`FLAG_KICKED`]).
    pub kick_tsc: u64,
    /// Guest TSC when the completion was seen (valid with [`FLAG_COMPLETED`]).
    pub complete_tsc: u64,
}

impl GuestEntry {
    /// The entry's wire form.
    pub fn to_bytes(&self) -> [u8; ENTRY_SIZE as usize] {
        let mut b = [0u8; ENTRY_SIZE as usize];
        b[0..2].copy_from_slice(&self.queue.to_le_bytes());
        b[2..4].copy_from_slice(&self.head.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.submit_tsc.to_le_bytes());
        b[16..24].copy_from_slice(&self.kick_tsc.to_le_bytes());
        b[24..32].copy_from_slice(&self.complete_tsc.to_le_bytes());
        b
    }

    /// Parses the wire form.
    pub fn from_bytes(b: &[u8; ENTRY_SIZE as usize]) -> Self {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        GuestEntry {
            queue: u16::from_le_bytes([b[0], b[1]]),
            head: u16::from_le_bytes([b[2], b[3]]),
            flags: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            submit_tsc: u64_at(8),
            kick_tsc: u64_at(16),
            complete_tsc: u64_at(24),
        }
    }

    /// Whether the guest kicked for this request.
    pub fn kicked(&self) -> bool {
        self.flags & FLAG_KICKED != 0
    }

    /// Whether the guest saw this request complete.
    pub fn completed(&self) -> bool {
        self.flags & FLAG_COMPLETED != 0
    }
}

/// Why the guest's log could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestLogError {
    /// No mailbox: the guest ran without `trace=1` or ended before publishing.
    #[error("no trace mailbox at {MAILBOX_ADDR:#x} (was the guest run with trace=1?)")]
    NoMailbox,
    /// The mailbox or the log lies outside guest memory.
    #[error("trace log at {addr:#x} is outside guest memory")]
    OutOfBounds {
        /// The unreadable guest physical address.
        addr: u64,
    },
    /// The entry size is outside [`ENTRY_SIZE`]..=[`MAX_ENTRY_SIZE`].
    #[error("trace log entry size {0} not in {ENTRY_SIZE}..={MAX_ENTRY_SIZE}")]
    EntrySize(u64),
}

fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> Result<u64, GuestLogError> {
    mem.read_obj::<u64>(GuestAddress(addr))
        .map(u64::from_le)
        .map_err(|_| GuestLogError::OutOfBounds { addr })
}

/// Reads the guest's log (at most [`MAX_ENTRIES`] entries).
pub fn read(mem: &GuestMemoryMmap) -> Result<Vec<GuestEntry>, GuestLogError> {
    if read_u64(mem, MAILBOX_ADDR)? != MAGIC {
        return Err(GuestLogError::NoMailbox);
    }
    let log_addr = read_u64(mem, MAILBOX_ADDR + 8)?;
    let count = read_u64(mem, MAILBOX_ADDR + 16)?.min(MAX_ENTRIES);
    let size = read_u64(mem, MAILBOX_ADDR + 24)?;
    if !(ENTRY_SIZE..=MAX_ENTRY_SIZE).contains(&size) {
        return Err(GuestLogError::EntrySize(size));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut buf = [0u8; ENTRY_SIZE as usize];
    for i in 0..count {
        let addr = i
            .checked_mul(size)
            .and_then(|o| log_addr.checked_add(o))
            .ok_or(GuestLogError::OutOfBounds { addr: log_addr })?;
        mem.read_slice(&mut buf, GuestAddress(addr))
            .map_err(|_| GuestLogError::OutOfBounds { addr })?;
        entries.push(GuestEntry::from_bytes(&buf));
    }
    Ok(entries)
}

/// Writes a mailbox and its entries as the guest would (tests, tools).
pub fn write(
    mem: &GuestMemoryMmap,
    log_addr: u64,
    entries: &[GuestEntry],
) -> Result<(), GuestLogError> {
    for (i, e) in entries.iter().enumerate() {
        let addr = log_addr + i as u64 * ENTRY_SIZE;
        mem.write_slice(&e.to_bytes(), GuestAddress(addr))
            .map_err(|_| GuestLogError::OutOfBounds { addr })?;
    }
    let header = [MAGIC, log_addr, entries.len() as u64, ENTRY_SIZE];
    for (i, v) in header.iter().enumerate() {
        let addr = MAILBOX_ADDR + 8 * i as u64;
        mem.write_obj(v.to_le(), GuestAddress(addr))
            .map_err(|_| GuestLogError::OutOfBounds { addr })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn round_trips_through_guest_memory() {
        let m = mem();
        let entries: Vec<_> = (0..100u64)
            .map(|i| GuestEntry {
                queue: (i % 2) as u16,
                head: (i % 7) as u16,
                flags: FLAG_KICKED | FLAG_COMPLETED,
                submit_tsc: i * 1000,
                kick_tsc: i * 1000 + 10,
                complete_tsc: i * 1000 + 500,
            })
            .collect();
        write(&m, 0x10000, &entries).unwrap();
        assert_eq!(read(&m).unwrap(), entries);
    }

    #[test]
    fn hostile_mailboxes_are_rejected() {
        let m = mem();
        assert_eq!(read(&m), Err(GuestLogError::NoMailbox));
        write(&m, 0x10000, &[GuestEntry::default()]).unwrap();
        m.write_obj(8u64, GuestAddress(MAILBOX_ADDR + 24)).unwrap();
        assert_eq!(read(&m), Err(GuestLogError::EntrySize(8)));
        m.write_obj(ENTRY_SIZE, GuestAddress(MAILBOX_ADDR + 24))
            .unwrap();
        m.write_obj(u64::MAX, GuestAddress(MAILBOX_ADDR + 16))
            .unwrap();
        assert!(matches!(read(&m), Err(GuestLogError::OutOfBounds { .. })));
        m.write_obj(u64::MAX - 8, GuestAddress(MAILBOX_ADDR + 8))
            .unwrap();
        assert!(matches!(read(&m), Err(GuestLogError::OutOfBounds { .. })));
    }
}
