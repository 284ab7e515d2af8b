//! Aligned bounce buffers for `O_DIRECT`, and copying between them and iovecs.
//!
//! `O_DIRECT` refuses buffers whose address is not a multiple of the filesystem's memory
//! alignment, or whose length is not a multiple of its offset alignment (both from
//! `statx(STATX_DIOALIGN)`, see [`DioAlignment`](crate::DioAlignment)). Such requests are
//! copied through an aligned buffer that is kept and reused, so steady-state I/O allocates
//! nothing.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::Error;

/// A heap buffer aligned for `O_DIRECT`, grown on demand and never shrunk.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    /// Dangling (and `layout.size() == 0`) until the first `reserve`.
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is owned memory reachable only through this value.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer; `align` must be a power of two.
    pub(crate) fn new(align: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(0, align).unwrap_or(Layout::new::<u8>());
        AlignedBuf {
            ptr: NonNull::dangling(),
            layout,
        }
    }

    /// Makes room for at least `len` bytes, keeping nothing of the old contents.
    pub(crate) fn reserve(&mut self, len: usize) -> Result<(), Error> {
        if len <= self.layout.size() {
            return Ok(());
        }
        let align = self.layout.align();
        // Powers of two, so that a growing workload reallocates only a few times.
        let layout = len
            .checked_next_power_of_two()
            .and_then(|size| Layout::from_size_align(size.max(align), align).ok())
            .ok_or(Error::BounceAlloc { size: len, align })?;
        // SAFETY: the size is non-zero because `len > self.layout.size() >= 0`. Zeroed so
        // that `slice_mut` never exposes uninitialised bytes.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })
            .ok_or(Error::BounceAlloc { size: len, align })?;
        self.release();
        self.ptr = ptr;
        self.layout = layout;
        Ok(())
    }

    /// The first `len` bytes as a slice; `len` must not exceed what was reserved.
    pub(crate) fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(self.layout.size());
        // SAFETY: the allocation holds `layout.size() >= len` bytes, initialised (zeroed by
        // `reserve`) and borrowed exclusively through `&mut self`; when nothing is allocated
        // `len` is 0, and a zero-length slice may use the dangling pointer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }

    /// An iovec covering the first `len` bytes, for handing to the kernel.
    pub(crate) fn iovec(&mut self, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr().cast(),
            iov_len: len.min(self.layout.size()),
        }
    }

    fn release(&mut self) {
        if self.layout.size() != 0 {
            // SAFETY: `ptr` was allocated with exactly `layout`.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.release();
    }
}

/// Total bytes described by `iovecs`, or `None` if it overflows.
pub(crate) fn total_len(iovecs: &[libc::iovec]) -> Option<u64> {
    iovecs
        .iter()
        .try_fold(0u64, |sum, iov| sum.checked_add(iov.iov_len as u64))
}

/// Whether `O_DIRECT` accepts these buffers as they are.
pub(crate) fn iovecs_aligned(iovecs: &[libc::iovec], memory: u32, length: u32) -> bool {
    iovecs.iter().all(|iov| {
        (iov.iov_base as usize) % memory as usize == 0 && iov.iov_len % length as usize == 0
    })
}

/// Copies `dst.len()` bytes out of the memory described by `iovecs`, starting `skip` bytes
/// in; stops early if the iovecs end.
///
/// # Safety
///
/// Every iovec must describe memory valid for reads.
pub(crate) unsafe fn gather(iovecs: &[libc::iovec], skip: usize, dst: &mut [u8]) {
    let mut done = 0;
    for_each_piece(iovecs, skip, dst.len(), |base, len| {
        // SAFETY: `base..base+len` lies in an iovec (valid for reads by the caller's
        // contract) and `done + len <= dst.len()`; the regions do not overlap because `dst`
        // is an exclusive borrow.
        unsafe { std::ptr::copy_nonoverlapping(base, dst.as_mut_ptr().add(done), len) };
        done += len;
    });
}

/// Copies `src` into the memory described by `iovecs`, starting `skip` bytes in; stops
/// early if the iovecs end.
///
/// # Safety
///
/// Every iovec must describe memory valid for writes and not aliased by `src`.
pub(crate) unsafe fn scatter(src: &[u8], iovecs: &[libc::iovec], skip: usize) {
    let mut done = 0;
    for_each_piece(iovecs, skip, src.len(), |base, len| {
        // SAFETY: `base..base+len` lies in an iovec (valid for writes and not aliasing
        // `src` by the caller's contract) and `done + len <= src.len()`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), base, len) };
        done += len;
    });
}

/// Calls `f(address, length)` for the pieces of `iovecs` covering bytes `skip..skip+len`.
fn for_each_piece(
    iovecs: &[libc::iovec],
    mut skip: usize,
    mut len: usize,
    mut f: impl FnMut(*mut u8, usize),
) {
    for iov in iovecs {
        if len == 0 {
            return;
        }
        if skip >= iov.iov_len {
            skip -= iov.iov_len;
            continue;
        }
        let n = (iov.iov_len - skip).min(len);
        f(iov.iov_base.cast::<u8>().wrapping_add(skip), n);
        skip = 0;
        len -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn gather_and_scatter_cross_iovec_boundaries() {
        let mut a = [1u8, 2, 3];
        let mut b = [4u8, 5];
        let mut c = [6u8, 7, 8, 9];
        let iovecs = [iov(&mut a), iov(&mut b), iov(&mut c)];
        let mut out = [0u8; 5];
        // SAFETY: the iovecs point at the live arrays above.
        unsafe { gather(&iovecs, 2, &mut out) };
        assert_eq!(out, [3, 4, 5, 6, 7]);
        // SAFETY: as above; `out` is a separate array.
        unsafe { scatter(&[0xff; 4], &iovecs, 4) };
        assert_eq!((a, b, c), ([1, 2, 3], [4, 0xff], [0xff, 0xff, 0xff, 9]));
    }

    #[test]
    fn reserve_aligns_and_grows() {
        let mut buf = AlignedBuf::new(4096);
        assert!(buf.slice_mut(10).is_empty());
        buf.reserve(100).unwrap();
        assert_eq!(buf.iovec(100).iov_base as usize % 4096, 0);
        buf.slice_mut(100).fill(7);
        buf.reserve(8192).unwrap();
        assert_eq!(buf.slice_mut(9000).len(), 8192);
    }

    #[test]
    fn alignment_check() {
        let mut buf = AlignedBuf::new(4096);
        buf.reserve(8192).unwrap();
        let good = buf.iovec(4096);
        assert!(iovecs_aligned(&[good], 512, 512));
        let odd_len = libc::iovec {
            iov_len: 100,
            ..good
        };
        assert!(!iovecs_aligned(&[good, odd_len], 512, 512));
        let odd_addr = libc::iovec {
            iov_base: good.iov_base.wrapping_byte_add(1),
            ..good
        };
        assert!(!iovecs_aligned(&[odd_addr], 512, 512));
    }
}
