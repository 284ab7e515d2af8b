//! A bump allocator for memory the device reads and writes (rings, headers, data buffers).
//!
//! RAM is identity mapped, so an allocation's address is both the pointer and the guest
//! physical address put into descriptors. Nothing is freed one by one: a test takes a
//! [`mark`] and [`release`]s back to it when done.

use core::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

/// Hands `[start, end)` to the allocator (the boot code's free RAM).
pub fn init(start: u64, end: u64) {
    NEXT.store(start.max(0x1000), Ordering::Relaxed);
    END.store(end, Ordering::Relaxed);
}

/// Zeroed memory of `len` bytes aligned to `align` (a power of two); `None` when exhausted.
pub fn alloc(len: u64, align: u64) -> Option<u64> {
    let next = NEXT.load(Ordering::Relaxed);
    let addr = next.checked_add(align - 1)? & !(align - 1);
    let end = addr.checked_add(len)?;
    if end > END.load(Ordering::Relaxed) {
        return None;
    }
    NEXT.store(end, Ordering::Relaxed);
    // SAFETY: `[addr, end)` lies in the free RAM given to `init`, identity mapped, and no
    // earlier allocation overlaps it (the bump pointer only moves forward until `release`).
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) };
    Some(addr)
}

/// Bytes left.
pub fn available() -> u64 {
    END.load(Ordering::Relaxed)
        .saturating_sub(NEXT.load(Ordering::Relaxed))
}

/// The current allocation point, for [`release`].
pub fn mark() -> u64 {
    NEXT.load(Ordering::Relaxed)
}

/// Frees everything allocated since `mark`. The device must no longer use any of it.
pub fn release(mark: u64) {
    NEXT.store(mark, Ordering::Relaxed);
}

/// The bytes of `[addr, addr + len)` as a slice.
///
/// # Safety
/// The range must come from [`alloc`], and the device must not be accessing it (no request
/// using it is in flight) for as long as the slice lives.
pub unsafe fn bytes<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: the caller guarantees the range is ours alone for 'a.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}
