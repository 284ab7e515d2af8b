//! [`GuestMemory`] over the guest's own identity-mapped RAM: guest physical address == pointer.

use core::sync::atomic::{AtomicU16, Ordering};

use virtqueue_core::{GuestMemory, MemoryError};

/// Lowest address handed out: page 0 is never used, so no pointer here is ever null.
const LOWEST: u64 = 0x1000;

/// The RAM in `[0x1000, end)`, accessed through raw pointers with volatile/atomic operations.
#[derive(Debug, Clone, Copy)]
pub struct IdentityMemory {
    end: u64,
}

impl IdentityMemory {
    /// RAM up to `end` (exclusive), which must be identity mapped and writable.
    pub fn new(end: u64) -> Self {
        IdentityMemory { end }
    }

    fn ptr(&self, addr: u64, len: usize) -> Result<*mut u8, MemoryError> {
        if self.check_range(addr, len as u64) {
            Ok(addr as *mut u8)
        } else {
            Err(MemoryError {
                addr,
                len: len as u64,
            })
        }
    }
}

impl GuestMemory for IdentityMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let p = self.ptr(addr, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `ptr` checked the whole range lies in identity-mapped RAM; volatile
            // because the device shares these bytes.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let p = self.ptr(addr, buf.len())?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }

    fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16, MemoryError> {
        Ok(u16::from_le(
            atomic_u16(self.ptr(addr, 2)?, addr)?.load(order),
        ))
    }

    fn store_u16(&self, addr: u64, value: u16, order: Ordering) -> Result<(), MemoryError> {
        atomic_u16(self.ptr(addr, 2)?, addr)?.store(value.to_le(), order);
        Ok(())
    }

    fn check_range(&self, addr: u64, len: u64) -> bool {
        addr >= LOWEST && addr.checked_add(len).is_some_and(|end| end <= self.end)
    }
}

fn atomic_u16<'a>(p: *mut u8, addr: u64) -> Result<&'a AtomicU16, MemoryError> {
    if !addr.is_multiple_of(2) {
        return Err(MemoryError { addr, len: 2 });
    }
    // SAFETY: the caller checked the 2 bytes lie in RAM; aligned; only ever accessed
    // atomically or volatilely by us, and by the device as shared memory.
    Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
}
