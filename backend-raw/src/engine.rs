//! The engine trait the virtio-blk device talks to, and its request and completion types.
//!
//! The device never asks which engine it has: it submits a batch, pushes it to the kernel
//! with one call, and reaps completions, tagged with its own `user_data`, in any order.

use std::fmt;
use std::os::unix::io::RawFd;
use std::str::FromStr;

use crate::Error;

/// Most iovecs one request may carry (the kernel's `UIO_MAXIOV`).
///
/// A request with more completes with `EINVAL`; a device should advertise a `seg_max`
/// below this.
pub const MAX_IOVECS: usize = 1024;

/// Largest queue depth an engine accepts.
pub const MAX_DEPTH: usize = 4096;

/// One operation on the disk. Offsets and lengths are in bytes.
///
/// The data of reads and writes is described by the iovecs passed to [`Engine::submit`];
/// the other operations take none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Fill the iovecs from the disk, starting at `offset` (virtio-blk `VIRTIO_BLK_T_IN`).
    Read {
        /// Byte offset on the disk.
        offset: u64,
    },
    /// Write the iovecs to the disk, starting at `offset` (`VIRTIO_BLK_T_OUT`).
    Write {
        /// Byte offset on the disk.
        offset: u64,
    },
    /// Make every completed write durable (`VIRTIO_BLK_T_FLUSH`): `fdatasync(2)`.
    Flush,
    /// The range is no longer needed (`VIRTIO_BLK_T_DISCARD`); its contents become
    /// unspecified. On regular files it is punched out and then reads as zeros.
    Discard {
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range must read as zeros (`VIRTIO_BLK_T_WRITE_ZEROES`); with `unmap` the space
    /// may be deallocated as well.
    WriteZeroes {
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: deallocating is allowed.
        unmap: bool,
    },
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The tag given to [`Engine::submit`].
    pub user_data: u64,
    /// Bytes transferred (reads and writes; 0 for the other operations), or a positive errno
    /// (`EIO` for a read that hit the end of the file, `EBADF` for a write to a read-only
    /// disk, `EINVAL` for a request outside the disk or with too many iovecs, ...).
    pub result: Result<u32, i32>,
    /// For an engine that talks to a server: when the request went out and its answer came
    /// back (the network round trip and the server's work), for a request's trace.
    pub wire: Option<WireTimes>,
}

impl Completion {
    /// A completion with no network stages (a local engine's).
    ///
    /// ```
    /// use backend_raw::Completion;
    /// let c = Completion::new(7, Ok(4096));
    /// assert!(c.wire.is_none());
    /// ```
    pub const fn new(user_data: u64, result: Result<u32, i32>) -> Self {
        Completion {
            user_data,
            result,
            wire: None,
        }
    }
}

/// The host's time stamp counter: the clock of [`WireTimes`] and of `blk-device`'s traces.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects and exists on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// When a request of an engine over the network was fully written to its server and when
/// the header of the server's reply arrived, in host time stamp counter ticks ([`rdtsc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireTimes {
    /// The request's last byte went to the socket.
    pub sent_tsc: u64,
    /// The reply's header came in.
    pub reply_tsc: u64,
}

/// Which engine [`Disk::engine`](crate::Disk::engine) builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// `preadv`/`pwritev` in the calling thread; requests complete inside `submit`.
    Sync,
    /// An io_uring per engine; requests complete asynchronously.
    IoUring,
}

impl EngineKind {
    /// The name used on command lines: `sync` or `io_uring`.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Sync => "sync",
            EngineKind::IoUring => "io_uring",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an [`EngineKind`] from a string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O engine `{0}`: expected `sync` or `io_uring`")]
pub struct ParseEngineKindError(pub String);

impl FromStr for EngineKind {
    type Err = ParseEngineKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(EngineKind::Sync),
            "io_uring" | "io-uring" | "uring" => Ok(EngineKind::IoUring),
            other => Err(ParseEngineKindError(other.to_string())),
        }
    }
}

/// An asynchronous I/O engine over one disk: submit a batch, push it, reap completions.
///
/// A dataplane loop looks like this:
/// 1. for each request popped from the virtqueue, [`submit`](Engine::submit) it (on
///    [`Error::QueueFull`] stop popping until completions are reaped);
/// 2. [`flush_submissions`](Engine::flush_submissions) once for the whole batch;
/// 3. [`reap`](Engine::reap) and complete what finished;
/// 4. while [`in_flight`](Engine::in_flight) is non-zero, sleep in epoll on
///    [`completion_fd`](Engine::completion_fd) (then call
///    [`drain_completion_fd`](Engine::drain_completion_fd) before reaping again), or call
///    [`wait`](Engine::wait).
///
/// Engines allocate nothing per request once warmed up. Each engine owns its own file
/// descriptor, so engines of one disk may run on different threads.
pub trait Engine: Send {
    /// Queues a request tagged `user_data`.
    ///
    /// Returns `Err(Error::QueueFull)` when `capacity()` requests are in flight (submitted
    /// and not yet reaped); nothing is queued then. Every other failure, including invalid
    /// requests (outside the disk, too many iovecs, more than `u32::MAX` bytes), is reported
    /// through the request's [`Completion`].
    ///
    /// # Safety
    ///
    /// Each iovec must describe memory that is valid for reads (for `Write`) or writes (for
    /// `Read`) and that stays valid, and is not otherwise accessed, until this request's
    /// completion has been returned by [`reap`](Engine::reap). The `iovecs` slice itself
    /// is copied and may be dropped when `submit` returns.
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), Error>;

    /// Pushes the queued submissions to the kernel, with one system call for the batch.
    fn flush_submissions(&mut self) -> Result<(), Error>;

    /// Appends finished requests to `out` without blocking; returns how many were appended.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize;

    /// Blocks until at least one completion can be reaped.
    ///
    /// Returns at once if one already can, or if nothing is in flight. Pushes pending
    /// submissions first.
    fn wait(&mut self) -> Result<(), Error>;

    /// An eventfd that becomes readable when completions are available, for epoll.
    ///
    /// `None` for engines that complete inside `submit`. Adding to its counter is allowed and
    /// only wakes the reader: wrappers such as [`FaultEngine`](crate::FaultEngine) signal
    /// completions of their own through it.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Clears the readiness of [`completion_fd`](Engine::completion_fd); call it after epoll
    /// reports the fd and before reaping, so that a completion arriving after the reap wakes
    /// epoll again.
    fn drain_completion_fd(&self) {}

    /// Registers `regions` of memory that requests' buffers will come from (a VMM's guest
    /// RAM), so that a read or write whose one buffer lies inside a region skips the kernel's
    /// per-request mapping of its pages (io_uring fixed buffers). Returns whether the engine
    /// will use them; the default, for engines without such a notion, registers nothing.
    /// A failure (for example the locked-memory limit) leaves the engine working as before.
    ///
    /// # Safety
    ///
    /// The regions must stay mapped until the engine is dropped.
    unsafe fn register_memory(&mut self, regions: &[libc::iovec]) -> Result<bool, Error> {
        let _ = regions;
        Ok(false)
    }

    /// Requests submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// The most requests that may be in flight (the depth the engine was built with).
    fn capacity(&self) -> usize;

    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// Whether a thread may spin waiting for this engine's completions rather than sleep.
    /// `false` for an engine whose requests another process of this host answers (a
    /// network block server reached over a local socket, or the host's network stack): a
    /// spinning thread takes the CPU that work needs, and looking costs a system call.
    fn spin_for_completions(&self) -> bool {
        true
    }
}
