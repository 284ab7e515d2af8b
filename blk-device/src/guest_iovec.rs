//! Guest buffers as host `iovec`s, for the I/O engines.
//!
//! A descriptor names guest physical memory; the engine needs host virtual addresses. A buffer
//! may straddle two memory regions (two `KVM_SET_USER_MEMORY_REGION` slots are not contiguous
//! on the host), so each buffer becomes one `iovec` per region it covers. A buffer that leaves
//! guest RAM, even partly, is rejected: nothing is ever read or written outside it.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A buffer (or part of one) fell outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest buffer of {len} bytes at {addr:#x} is not inside guest RAM")]
pub struct OutOfGuestRam {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// A reusable list of host `iovec`s describing guest buffers.
#[derive(Debug, Default)]
pub struct IovecList {
    iovecs: Vec<libc::iovec>,
}

// SAFETY: the list only holds addresses of guest RAM, which every thread of the VMM may
// access; the pointers are never dereferenced here, only handed to the I/O engine.
unsafe impl Send for IovecList {}

impl IovecList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the list, keeping its allocation.
    pub fn clear(&mut self) {
        self.iovecs.clear();
    }

    /// Makes room for `more` iovecs without reallocating later.
    pub fn reserve(&mut self, more: usize) {
        self.iovecs.reserve(more);
    }

    /// The iovecs, in order.
    pub fn as_slice(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Appends the host `iovec`s covering guest `[addr, addr + len)`, one per memory region
    /// the buffer covers. On error the list is left as it was.
    pub fn push_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: u64,
        len: u64,
    ) -> Result<(), OutOfGuestRam> {
        let err = OutOfGuestRam { addr, len };
        let count = usize::try_from(len).map_err(|_| err)?;
        if addr.checked_add(len).is_none() {
            return Err(err);
        }
        let start = self.iovecs.len();
        for slice in mem.get_slices(GuestAddress(addr), count) {
            let Ok(slice) = slice else {
                self.iovecs.truncate(start);
                return Err(err);
            };
            // The engine accesses this memory after the guard is gone; the mapping outlives
            // it: guest RAM stays mapped for the VM's whole life, and `get_slices` checked
            // the range.
            let base = slice.ptr_guard_mut().as_ptr();
            self.iovecs.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: slice.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .expect("mmap")
    }

    #[test]
    fn buffer_across_regions_splits() {
        let mem = two_regions();
        let mut v = IovecList::new();
        v.push_guest(&mem, 0xf00, 0x200).expect("in RAM");
        let lens: Vec<usize> = v.as_slice().iter().map(|i| i.iov_len).collect();
        assert_eq!(lens, [0x100, 0x100]);
    }

    #[test]
    fn buffer_leaving_ram_is_rejected() {
        let mem = two_regions();
        let mut v = IovecList::new();
        v.push_guest(&mem, 0x10, 0x10).expect("in RAM");
        assert!(v.push_guest(&mem, 0x1f00, 0x200).is_err());
        assert!(v.push_guest(&mem, u64::MAX, 2).is_err());
        assert!(v.push_guest(&mem, 0x5000, 1).is_err());
        assert_eq!(v.as_slice().len(), 1);
    }

    #[test]
    fn empty_buffer_has_no_iovec() {
        let mem = two_regions();
        let mut v = IovecList::new();
        v.push_guest(&mem, 0x10, 0).expect("empty");
        assert!(v.as_slice().is_empty());
    }
}
