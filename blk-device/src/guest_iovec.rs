//! Guest buffers as host `iovec`s, for the I/O engines.
//!
//! A descriptor names guest physical memory; the engine needs host virtual addresses. A buffer
//! may straddle two memory regions (two `KVM_SET_USER_MEMORY_REGION` slots are not contiguous
//! on the host), so each buffer becomes one `iovec` per region it covers. A buffer that leaves
//! guest RAM, even partly, is rejected: nothing is ever read or written outside it.
//!
//! Two levels, both bounds-checked:
//! - [`GuestEngine`]: an [`Engine`] bound to guest memory, whose
//!   [`submit`](GuestEngine::submit) takes guest buffers (e.g. a parsed request's
//!   [`segments`](blk_proto::Request::segments)) and is safe: it keeps the guest memory
//!   mapped until every request has completed. This is what a device built from the crates
//!   outside this one uses; it needs no `unsafe` and no `libc`.
//! - [`IovecList`]: the iovecs alone, for a device that keeps the memory mapped by other
//!   means (this crate's [`request`](crate::request) jobs, whose guest RAM lives as long as
//!   the VM) and so calls the `unsafe` [`Engine::submit`] itself.
//!
//! ```
//! use backend_raw::{Disk, DiskOptions, EngineKind, IoOp};
//! use blk_device::guest_iovec::GuestEngine;
//! use blk_proto::DataSegment;
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.img");
//! std::fs::write(&path, vec![9u8; 4096])?;
//! let disk = Disk::open(&path, DiskOptions { readonly: false, direct: false })?;
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])?;
//!
//! let mut engine = GuestEngine::new(disk.engine(EngineKind::Sync, 4)?, &mem);
//! let buf = [DataSegment { addr: 0x1000, len: 512 }];
//! engine.submit(IoOp::Read { offset: 0 }, &buf, 7)?;
//! engine.flush_submissions()?;
//! engine.wait()?;
//! let mut done = Vec::new();
//! assert_eq!(engine.reap(&mut done), 1);
//! assert_eq!((done[0].user_data, done[0].result), (7, Ok(512)));
//! assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000))?, 9);
//!
//! // A buffer outside guest RAM is refused before the engine sees it.
//! let outside = [DataSegment { addr: 0xff00, len: 512 }];
//! assert!(engine.submit(IoOp::Read { offset: 0 }, &outside, 8).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use backend_raw::{iovec, Completion, Engine, IoOp};
use blk_proto::DataSegment;
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
    iovecs: Vec<iovec>,
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
    pub fn as_slice(&self) -> &[iovec] {
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
            self.iovecs.push(iovec {
                iov_base: base.cast(),
                iov_len: slice.len(),
            });
        }
        Ok(())
    }
}

/// Why [`GuestEngine::submit`] refused a request; nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum GuestSubmitError {
    /// A buffer is not inside guest RAM.
    #[error(transparent)]
    OutOfGuestRam(#[from] OutOfGuestRam),
    /// The engine refused the request ([`backend_raw::Error::QueueFull`]: reap first).
    #[error(transparent)]
    Engine(#[from] backend_raw::Error),
}

/// An [`Engine`] bound to guest memory: requests name guest buffers, and submitting is safe.
///
/// [`Engine::submit`] is `unsafe` because the engine touches the iovecs' memory until the
/// request's completion is reaped. `GuestEngine` makes that hold by construction: it builds
/// the iovecs itself from its own handle on the guest memory (bounds-checked, see
/// [`IovecList::push_guest`]), and that handle keeps every region mapped until the engine
/// has finished: dropping a `GuestEngine` first waits for the requests still in flight.
pub struct GuestEngine {
    // Declared before `mem`, so dropped before it: the built-in engines wait for the kernel
    // in their own `Drop`, and `GuestEngine::drop` has already waited for the rest.
    engine: Box<dyn Engine>,
    mem: GuestMemoryMmap,
    iovecs: IovecList,
    drained: Vec<Completion>,
}

impl std::fmt::Debug for GuestEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestEngine")
            .field("kind", &self.engine.kind())
            .field("in_flight", &self.engine.in_flight())
            .finish_non_exhaustive()
    }
}

impl GuestEngine {
    /// Binds `engine` to `mem`. The clone of `mem` taken here shares its regions (it is a
    /// list of reference-counted mappings), which therefore stay mapped as long as needed.
    pub fn new(engine: Box<dyn Engine>, mem: &GuestMemoryMmap) -> Self {
        GuestEngine {
            engine,
            mem: mem.clone(),
            iovecs: IovecList::new(),
            drained: Vec::new(),
        }
    }

    /// Queues `op` over the guest `buffers` (empty for FLUSH, DISCARD and WRITE_ZEROES),
    /// tagged `user_data`, as [`Engine::submit`] does. Fails, queueing nothing, if a buffer
    /// leaves guest RAM or the engine is full.
    pub fn submit(
        &mut self,
        op: IoOp,
        buffers: &[DataSegment],
        user_data: u64,
    ) -> Result<(), GuestSubmitError> {
        self.iovecs.clear();
        for b in buffers {
            self.iovecs
                .push_guest(&self.mem, b.addr, u64::from(b.len))?;
        }
        // SAFETY: every iovec lies inside a region of `self.mem` (checked by `push_guest`);
        // `self.mem` holds those regions mapped until this request completes, because
        // `GuestEngine` waits for all requests in flight before dropping it (`Drop` below,
        // then the engine's own drop, which comes before `mem`'s). The guest may touch the
        // bytes meanwhile; that only affects its own request's data, as with real DMA.
        unsafe { self.engine.submit(op, self.iovecs.as_slice(), user_data)? };
        Ok(())
    }

    /// [`Engine::flush_submissions`].
    pub fn flush_submissions(&mut self) -> Result<(), backend_raw::Error> {
        self.engine.flush_submissions()
    }

    /// [`Engine::reap`].
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.engine.reap(out)
    }

    /// [`Engine::wait`].
    pub fn wait(&mut self) -> Result<(), backend_raw::Error> {
        self.engine.wait()
    }

    /// The engine, for what needs no submitting: [`Engine::completion_fd`],
    /// [`Engine::in_flight`], [`Engine::kind`], ...
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// The guest memory requests are resolved in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl Drop for GuestEngine {
    fn drop(&mut self) {
        // The kernel may still be reading or writing guest memory for requests in flight;
        // their completions are dropped, but the memory must outlive them.
        while self.engine.in_flight() > 0 {
            if self.engine.wait().is_err() {
                // No way to know when the kernel is done: keep the regions mapped for good
                // rather than unmap memory under I/O.
                std::mem::forget(self.mem.clone());
                return;
            }
            self.drained.clear();
            self.engine.reap(&mut self.drained);
        }
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

    fn disk(dir: &tempfile::TempDir, bytes: &[u8]) -> backend_raw::Disk {
        let path = dir.path().join("disk.img");
        std::fs::write(&path, bytes).expect("write image");
        let opts = backend_raw::DiskOptions {
            readonly: false,
            direct: false,
        };
        backend_raw::Disk::open(&path, opts).expect("open image")
    }

    #[test]
    fn guest_engine_moves_data_across_regions_on_both_engines() {
        use backend_raw::EngineKind;
        use vm_memory::Bytes;
        let dir = tempfile::tempdir().expect("tempdir");
        let image: Vec<u8> = (0..4096u32).map(|i| (i / 7) as u8).collect();
        let disk = disk(&dir, &image);
        for kind in [EngineKind::Sync, EngineKind::IoUring] {
            let mem = two_regions();
            let (inner, _fell_back) = disk.engine_or_sync(kind, 4).expect("engine");
            let mut e = GuestEngine::new(inner, &mem);
            // 0x200 bytes straddling the two regions, then a second buffer.
            let bufs = [
                DataSegment {
                    addr: 0xf00,
                    len: 0x200,
                },
                DataSegment {
                    addr: 0x1400,
                    len: 0x200,
                },
            ];
            e.submit(IoOp::Read { offset: 512 }, &bufs, 1)
                .expect("submit");
            e.submit(IoOp::Flush, &[], 2).expect("flush");
            e.flush_submissions().expect("push");
            let mut done = Vec::new();
            while done.len() < 2 {
                e.wait().expect("wait");
                e.reap(&mut done);
            }
            done.sort_by_key(|c| c.user_data);
            assert_eq!(done[0].result, Ok(0x400), "{kind}");
            assert_eq!(done[1].result, Ok(0), "{kind}");
            let mut got = vec![0u8; 0x200];
            mem.read_slice(&mut got, GuestAddress(0xf00)).expect("read");
            assert_eq!(got, image[512..1024], "{kind}");
            mem.read_slice(&mut got, GuestAddress(0x1400))
                .expect("read");
            assert_eq!(got, image[1024..1536], "{kind}");
        }
    }

    #[test]
    fn guest_engine_refuses_buffers_outside_ram_and_queues_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(&dir, &[0u8; 4096]);
        let mem = two_regions();
        let inner = disk
            .engine(backend_raw::EngineKind::Sync, 4)
            .expect("engine");
        let mut e = GuestEngine::new(inner, &mem);
        let bufs = [
            DataSegment { addr: 0, len: 512 },
            DataSegment {
                addr: 0x1f00,
                len: 0x200,
            },
        ];
        let err = e.submit(IoOp::Write { offset: 0 }, &bufs, 1);
        assert!(matches!(err, Err(GuestSubmitError::OutOfGuestRam(_))));
        let mut done = Vec::new();
        assert_eq!(e.reap(&mut done), 0);
        assert_eq!(e.engine().in_flight(), 0);
    }

    #[test]
    fn guest_engine_dropped_with_requests_in_flight_waits_for_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(&dir, &[5u8; 64 << 10]);
        let (inner, _) = disk
            .engine_or_sync(backend_raw::EngineKind::IoUring, 64)
            .expect("engine");
        let mem = two_regions();
        let mut e = GuestEngine::new(inner, &mem);
        for i in 0..16u64 {
            let buf = [DataSegment { addr: 0, len: 4096 }];
            e.submit(IoOp::Read { offset: i * 4096 }, &buf, i)
                .expect("submit");
        }
        e.flush_submissions().expect("push");
        // The caller's handle goes first: only the engine's keeps the memory mapped now.
        drop(mem);
        drop(e);
    }

    #[test]
    fn empty_buffer_has_no_iovec() {
        let mem = two_regions();
        let mut v = IovecList::new();
        v.push_guest(&mem, 0x10, 0).expect("empty");
        assert!(v.as_slice().is_empty());
    }
}
