//! Access to the memory the rings and buffers live in.
//!
//! Rings are shared with another party that may write them at any time, so nothing here
//! hands out references into that memory: every access is a volatile copy or an atomic
//! load/store, and every access is bounds-checked against the memory's extent.

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU16, Ordering};

/// An access fell outside the memory, or its address arithmetic overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError {
    /// Guest physical address of the failed access.
    pub addr: u64,
    /// Length of the failed access in bytes.
    pub len: u64,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest memory access of {} bytes at {:#x} is out of range",
            self.len, self.addr
        )
    }
}

impl core::error::Error for MemoryError {}

/// Memory shared with the other side of a virtqueue, addressed by guest physical address.
///
/// Implementations must never create Rust references into the shared bytes; the other side
/// may change them concurrently.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes starting at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copies `buf` into memory starting at `addr`.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError>;
    /// Atomically loads a naturally aligned little-endian `u16` at `addr`.
    fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16, MemoryError>;
    /// Atomically stores a naturally aligned little-endian `u16` at `addr`.
    fn store_u16(&self, addr: u64, value: u16, order: Ordering) -> Result<(), MemoryError>;
    /// Whether `[addr, addr + len)` lies entirely inside this memory (no wrap-around).
    fn check_range(&self, addr: u64, len: u64) -> bool;
}

/// [`GuestMemory`] over one contiguous host byte range whose guest address starts at 0.
///
/// Used by tests (over a `Vec<u8>`) and by the test guest, which identity-maps its RAM.
#[derive(Debug)]
pub struct SliceMemory<'a> {
    ptr: *mut u8,
    len: usize,
    _bytes: PhantomData<&'a mut [u8]>,
}

// SAFETY: all access goes through volatile/atomic operations on a range the constructor
// vouched for; no references into it are ever created, so sharing across threads is sound.
unsafe impl Send for SliceMemory<'_> {}
// SAFETY: as above.
unsafe impl Sync for SliceMemory<'_> {}

impl<'a> SliceMemory<'a> {
    /// Uses `bytes` as guest memory: guest address `a` is `bytes[a]`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        SliceMemory {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            _bytes: PhantomData,
        }
    }

    /// Uses raw memory as guest memory.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be valid for reads and writes for `'a`, and may only be
    /// accessed by others through volatile or atomic operations meanwhile.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        SliceMemory {
            ptr,
            len,
            _bytes: PhantomData,
        }
    }

    /// Size of the memory in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn offset(&self, addr: u64, len: usize) -> Result<usize, MemoryError> {
        let err = MemoryError {
            addr,
            len: len as u64,
        };
        if !self.check_range(addr, len as u64) {
            return Err(err);
        }
        usize::try_from(addr).map_err(|_| err)
    }

    fn atomic_u16(&self, addr: u64) -> Result<&AtomicU16, MemoryError> {
        let off = self.offset(addr, 2)?;
        // SAFETY: off + 2 <= len, so the pointer is inside the range the constructor vouched for.
        let p = unsafe { self.ptr.add(off) };
        if p.align_offset(2) != 0 {
            return Err(MemoryError { addr, len: 2 });
        }
        // SAFETY: in range, 2-aligned, and only ever accessed atomically or volatilely.
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.offset(addr, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: off + i < len (checked by `offset`); volatile because the bytes are shared.
            *b = unsafe { self.ptr.add(off + i).read_volatile() };
        }
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let off = self.offset(addr, buf.len())?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: off + i < len (checked by `offset`); volatile because the bytes are shared.
            unsafe { self.ptr.add(off + i).write_volatile(*b) };
        }
        Ok(())
    }

    fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16, MemoryError> {
        Ok(u16::from_le(self.atomic_u16(addr)?.load(order)))
    }

    fn store_u16(&self, addr: u64, value: u16, order: Ordering) -> Result<(), MemoryError> {
        self.atomic_u16(addr)?.store(value.to_le(), order);
        Ok(())
    }

    fn check_range(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => end <= self.len as u64,
            None => false,
        }
    }
}
