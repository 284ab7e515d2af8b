//! The io_uring engine: one ring per engine, batched submission, completions without
//! system calls, and an eventfd for epoll.
//!
//! Per-request state lives in a slab allocated with the engine: slot `i` holds the copy of
//! request `i`'s iovecs that the kernel reads (they must stay put until the completion),
//! its bounce buffer, and the caller's tag; the SQE's `user_data` is the slot index. The
//! ring has at least `depth` SQ entries and twice as many CQ entries, and at most `depth`
//! requests are in flight, so neither queue can overflow. Requests the kernel cannot take
//! directly (unaligned `O_DIRECT` offsets, block-device discards, zero-length requests)
//! and requests the kernel finished short or refused as unsupported run on the shared
//! [`BlockingIo`]; their completions are queued locally and the eventfd is signalled.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::blocking::{BlockingIo, Route};
use crate::bounce::{self, AlignedBuf};
use crate::{Completion, Engine, EngineKind, Error, IoOp};

/// Index of the disk's descriptor in the ring's registered file table.
const FIXED_FILE: types::Fixed = types::Fixed(0);

/// One in-flight request's state, kept until its completion is reaped.
struct Slot {
    user_data: u64,
    op: IoOp,
    /// Bytes the request moves (reads and writes).
    len: u64,
    /// The caller's iovecs; the kernel reads them unless the request is bounced.
    iovecs: Vec<libc::iovec>,
    /// Whether the kernel works on `bounce_iov` instead of `iovecs`.
    bounced: bool,
    bounce: AlignedBuf,
    bounce_iov: libc::iovec,
    /// The `fallocate` mode of a discard or write-zeroes.
    mode: i32,
}

/// The io_uring engine.
pub(crate) struct UringEngine {
    ring: IoUring,
    blocking: BlockingIo,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    /// Completions of requests that ran on `blocking`.
    ready: VecDeque<Completion>,
    /// Submitted and not yet reaped, wherever they ran.
    in_flight: usize,
    /// SQEs pushed whose CQE has not been reaped.
    in_kernel: usize,
    depth: usize,
    eventfd: OwnedFd,
    /// Registered buffers, `(host address, length)` by buffer index.
    fixed: Vec<(usize, usize)>,
}

// SAFETY: the raw pointers in the slots and in `blocking` describe memory the caller of
// `submit` keeps valid until the completion is reaped, from whichever thread owns the
// engine; the engine never shares them with another thread.
unsafe impl Send for UringEngine {}

impl UringEngine {
    pub(crate) fn new(blocking: BlockingIo, depth: usize) -> Result<UringEngine, Error> {
        let setup = |source| Error::UringSetup { source };
        let entries = u32::try_from(depth.next_power_of_two())
            .map_err(|_| setup(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let ring = IoUring::builder().build(entries).map_err(setup)?;
        ring.submitter()
            .register_files(&[blocking.fd()])
            .map_err(setup)?;
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::EventFd {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(setup)?;
        let align = blocking.bounce_align();
        let slots = (0..depth)
            .map(|_| Slot {
                user_data: 0,
                op: IoOp::Flush,
                len: 0,
                iovecs: Vec::with_capacity(16),
                bounced: false,
                bounce: AlignedBuf::new(align),
                bounce_iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                mode: 0,
            })
            .collect();
        Ok(UringEngine {
            ring,
            blocking,
            slots,
            free: (0..depth as u32).rev().collect(),
            ready: VecDeque::with_capacity(depth),
            in_flight: 0,
            in_kernel: 0,
            depth,
            eventfd,
            fixed: Vec::new(),
        })
    }

    /// Queues a completion that did not go through the ring, and wakes epoll for it.
    fn complete_local(&mut self, user_data: u64, result: Result<u32, i32>) {
        self.ready.push_back(Completion::new(user_data, result));
        self.in_flight += 1;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`. A full counter (EAGAIN) is already readable.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Fills slot `index` for a request routed to the kernel and builds its SQE.
    ///
    /// # Safety
    ///
    /// As for [`Engine::submit`].
    unsafe fn prepare(
        &mut self,
        index: u32,
        op: IoOp,
        iovecs: &[libc::iovec],
        len: u64,
        bounced: bool,
        user_data: u64,
    ) -> Result<squeue::Entry, i32> {
        let mode = self.blocking.fallocate_mode(op).unwrap_or(0);
        let slot = self.slots.get_mut(index as usize).ok_or(libc::EIO)?;
        slot.user_data = user_data;
        slot.op = op;
        slot.len = len;
        slot.mode = mode;
        slot.bounced = bounced;
        slot.iovecs.clear();
        slot.iovecs.extend_from_slice(iovecs);
        if bounced {
            // Route::Kernel { bounce: true } only for len <= URING_BOUNCE_MAX.
            slot.bounce
                .reserve(len as usize)
                .map_err(|_| libc::ENOMEM)?;
            slot.bounce_iov = slot.bounce.iovec(len as usize);
            if matches!(op, IoOp::Write { .. }) {
                // SAFETY: the iovecs are readable (caller); the bounce buffer is the slot's.
                unsafe { bounce::gather(iovecs, 0, slot.bounce.slice_mut(len as usize)) };
            }
        }
        if let Some(entry) = fixed_entry(&self.fixed, op, iovecs, bounced) {
            return Ok(entry.user_data(u64::from(index)));
        }
        let (iov_ptr, iov_cnt) = match bounced {
            true => (&slot.bounce_iov as *const libc::iovec, 1),
            // At most MAX_IOVECS, checked by `validate`.
            false => (slot.iovecs.as_ptr(), slot.iovecs.len() as u32),
        };
        let entry = match op {
            IoOp::Read { offset } => opcode::Readv::new(FIXED_FILE, iov_ptr, iov_cnt)
                .offset(offset)
                .build(),
            IoOp::Write { offset } => opcode::Writev::new(FIXED_FILE, iov_ptr, iov_cnt)
                .offset(offset)
                .build(),
            IoOp::Flush => opcode::Fsync::new(FIXED_FILE)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len, .. } => {
                opcode::Fallocate::new(FIXED_FILE, len)
                    .offset(offset)
                    .mode(mode)
                    .build()
            }
        };
        Ok(entry.user_data(u64::from(index)))
    }

    /// Moves every CQE's completion to `ready`, freeing its slot.
    fn collect_cqes(&mut self) {
        for cqe in self.ring.completion() {
            let index = cqe.user_data();
            let Some(slot) = usize::try_from(index)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
            else {
                continue;
            };
            // SAFETY: the slot's request has not been reaped yet, so its memory is valid.
            let result = unsafe { finish(slot, &mut self.blocking, cqe.result()) };
            self.ready
                .push_back(Completion::new(slot.user_data, result));
            self.free.push(index as u32);
            self.in_kernel -= 1;
        }
    }

    /// Lets every request in the kernel finish (their completions wait in `ready`) before a
    /// request runs on `blocking`: a transfer through the buffered descriptor racing with
    /// `O_DIRECT` I/O on the same page could leave stale data in the page cache. Only the
    /// rare paths pay this (see [`Route::Local`]). Returns the errno if waiting failed.
    fn settle(&mut self) -> Result<(), i32> {
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.collect_cqes(),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        Ok(())
    }

    /// Waits until the kernel has finished every request it was given, so that no bounce
    /// buffer or iovec array is freed while it may still be used.
    fn quiesce(&mut self) -> bool {
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => return false,
            }
            let reaped = self.ring.completion().count();
            self.in_kernel = self.in_kernel.saturating_sub(reaped);
        }
        true
    }
}

/// Most bytes one registered buffer may span (the kernel's limit).
const MAX_FIXED_BUFFER: usize = 1 << 30;

/// The SQE of a read or write whose one buffer lies inside a registered buffer
/// (`READ_FIXED`/`WRITE_FIXED`: the kernel skips mapping its pages per request); `None` for
/// every other request, which then goes as `READV`/`WRITEV`.
fn fixed_entry(
    fixed: &[(usize, usize)],
    op: IoOp,
    iovecs: &[libc::iovec],
    bounced: bool,
) -> Option<squeue::Entry> {
    let [iov] = iovecs else {
        return None;
    };
    if bounced {
        return None;
    }
    let (start, len) = (iov.iov_base as usize, iov.iov_len);
    let index = fixed
        .iter()
        .position(|&(base, size)| start >= base && start + len <= base + size)?;
    let (index, len32) = (u16::try_from(index).ok()?, u32::try_from(len).ok()?);
    let buf = iov.iov_base.cast::<u8>();
    Some(match op {
        IoOp::Read { offset } => opcode::ReadFixed::new(FIXED_FILE, buf, len32, index)
            .offset(offset)
            .build(),
        IoOp::Write { offset } => opcode::WriteFixed::new(FIXED_FILE, buf, len32, index)
            .offset(offset)
            .build(),
        _ => return None,
    })
}

/// Turns a CQE's result into the request's completion, finishing the request with
/// blocking calls where the kernel could not.
///
/// # Safety
///
/// The slot's iovecs must still be valid (their request has not been reaped yet).
unsafe fn finish(slot: &mut Slot, blocking: &mut BlockingIo, res: i32) -> Result<u32, i32> {
    match slot.op {
        IoOp::Read { .. } | IoOp::Write { .. } if res >= 0 && res as u64 == slot.len => {
            if slot.bounced && matches!(slot.op, IoOp::Read { .. }) {
                let data = slot.bounce.slice_mut(slot.len as usize);
                // SAFETY: the iovecs are writable until reaped (caller of `submit`).
                unsafe { bounce::scatter(data, &slot.iovecs, 0) };
            }
            Ok(slot.len as u32)
        }
        // A short transfer (end of file, or a partial one): redo it whole, with loops.
        // SAFETY: the iovecs are valid until reaped (caller of `submit`).
        IoOp::Read { .. } | IoOp::Write { .. } if res >= 0 => unsafe {
            blocking.execute(slot.op, &slot.iovecs)
        },
        IoOp::Discard { .. } if res == -libc::EOPNOTSUPP => Ok(0),
        IoOp::WriteZeroes { .. } if res == -libc::EOPNOTSUPP || res == -libc::EINVAL => {
            if res == -libc::EOPNOTSUPP {
                blocking.mark_unsupported(slot.mode);
            }
            // SAFETY: write-zeroes uses no caller memory.
            unsafe { blocking.execute(slot.op, &[]) }
        }
        _ if res < 0 => Err(-res),
        _ => Ok(0),
    }
}

impl Engine for UringEngine {
    unsafe fn register_memory(&mut self, regions: &[libc::iovec]) -> Result<bool, Error> {
        let mut chunks = Vec::new();
        for r in regions {
            let mut at = 0;
            while at < r.iov_len {
                let len = (r.iov_len - at).min(MAX_FIXED_BUFFER);
                chunks.push(libc::iovec {
                    iov_base: r.iov_base.cast::<u8>().wrapping_add(at).cast(),
                    iov_len: len,
                });
                at += len;
            }
        }
        if chunks.is_empty() || chunks.len() > usize::from(u16::MAX) {
            return Ok(false);
        }
        // SAFETY: the caller keeps the regions mapped until the engine (and its ring, which
        // unregisters them when it closes) is dropped.
        unsafe { self.ring.submitter().register_buffers(&chunks) }
            .map_err(|source| Error::UringSetup { source })?;
        self.fixed = chunks
            .iter()
            .map(|c| (c.iov_base as usize, c.iov_len))
            .collect();
        Ok(true)
    }

    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), Error> {
        if self.in_flight >= self.depth {
            return Err(Error::QueueFull {
                capacity: self.depth,
            });
        }
        let len = match self.blocking.validate(op, iovecs) {
            Ok(len) => len,
            Err(e) => {
                self.complete_local(user_data, Err(e));
                return Ok(());
            }
        };
        let bounced = match self.blocking.route(op, iovecs, len) {
            Route::Kernel { bounce } => bounce,
            Route::Local => {
                let settled = if len > 0 { self.settle() } else { Ok(()) };
                let result = match settled {
                    // SAFETY: forwarded from the caller; the request ends during the call.
                    Ok(()) => unsafe { self.blocking.execute(op, iovecs) },
                    Err(e) => Err(e),
                };
                self.complete_local(user_data, result);
                return Ok(());
            }
        };
        let Some(index) = self.free.pop() else {
            return Err(Error::QueueFull {
                capacity: self.depth,
            });
        };
        // SAFETY: forwarded from the caller.
        let entry = match unsafe { self.prepare(index, op, iovecs, len, bounced, user_data) } {
            Ok(entry) => entry,
            Err(e) => {
                self.free.push(index);
                self.complete_local(user_data, Err(e));
                return Ok(());
            }
        };
        // SAFETY: the SQE points at the slot's iovec array or bounce buffer, which stay in
        // place until the CQE is reaped, and at caller memory valid until then.
        let mut pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if !pushed {
            // Only when SQEs were left unsubmitted by an earlier failed flush.
            self.flush_submissions()?;
            // SAFETY: as above.
            pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        }
        if !pushed {
            self.free.push(index);
            return Err(Error::QueueFull {
                capacity: self.depth,
            });
        }
        self.in_flight += 1;
        self.in_kernel += 1;
        Ok(())
    }

    fn flush_submissions(&mut self) -> Result<(), Error> {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(source) => return Err(Error::UringEnter { source }),
            }
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.collect_cqes();
        let reaped = self.ready.len();
        out.extend(self.ready.drain(..));
        self.in_flight -= reaped;
        reaped
    }

    fn wait(&mut self) -> Result<(), Error> {
        while self.ready.is_empty() && self.ring.completion().is_empty() && self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(source) => return Err(Error::UringEnter { source }),
            }
        }
        Ok(())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    fn drain_completion_fd(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into `count`; the fd is non-blocking, so an empty counter
        // (EAGAIN) returns at once.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn capacity(&self) -> usize {
        self.depth
    }

    fn kind(&self) -> EngineKind {
        EngineKind::IoUring
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        if !self.quiesce() {
            // The kernel may still use the slots' memory: leak it rather than free it.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
