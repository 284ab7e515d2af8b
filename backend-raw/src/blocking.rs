//! Running one request to the end with blocking system calls: the core both engines share.
//!
//! A [`BlockingIo`] owns one engine's file descriptors and what the engine knows about the
//! disk. It validates requests, decides where each one runs ([`Route`]), and runs the ones
//! that run here. The sync engine runs every request on it; the io_uring engine gives the
//! kernel what it can take and runs the rest on it.
//!
//! Reads and writes are `preadv`/`pwritev` loops that continue after short transfers; a
//! read that reaches the end of the file before its last byte completes with `EIO` (the
//! protocol layer rejects requests beyond the capacity, so this only happens when the
//! file shrank under us). Flush is `fdatasync`. Discard punches a hole in a regular file
//! (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`) or is `BLKDISCARD` on a block device, and
//! is a successful no-op where neither is supported: the virtio spec leaves discarded data
//! unspecified. Write-zeroes tries `FALLOC_FL_PUNCH_HOLE` (when unmap is allowed), then
//! `FALLOC_FL_ZERO_RANGE` (both work on files and, since Linux 4.9, block devices), then
//! writes zeros; a mode the kernel refuses with `EOPNOTSUPP` is not tried again.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use crate::bounce::{self, AlignedBuf};
use crate::disk_info::{DiskInfo, EngineFiles};
use crate::{IoOp, MAX_IOVECS};

/// `_IO(0x12, 119)`: discard a byte range of a block device (not in the libc crate).
const BLKDISCARD: libc::c_ulong = 0x1277;

/// Bytes moved per step when a request is bounced synchronously, and the size of the
/// zero buffer used when write-zeroes falls back to writing.
const BOUNCE_CHUNK: u64 = 1 << 20;

/// Largest request the io_uring engine bounces in one piece; larger unaligned requests
/// run synchronously in `BOUNCE_CHUNK` steps, which bounds bounce memory per slot.
pub(crate) const URING_BOUNCE_MAX: u64 = 1 << 20;

/// Where a validated request runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The kernel can take it as is, or with its data copied through a bounce buffer.
    Kernel {
        /// Copy the data through an aligned buffer (`O_DIRECT` with unaligned memory).
        bounce: bool,
    },
    /// Run it now with [`BlockingIo::execute`]: zero-length requests, discards on block
    /// devices (`BLKDISCARD` has no io_uring opcode), write-zeroes without a usable
    /// `fallocate` mode, and under `O_DIRECT` transfers at unaligned offsets (buffered
    /// descriptor) or unaligned and larger than [`URING_BOUNCE_MAX`] (chunked bounce).
    Local,
}

/// Runs requests with blocking system calls on one engine's file descriptors.
pub(crate) struct BlockingIo {
    files: EngineFiles,
    info: DiskInfo,
    /// Copy of a request's iovecs, advanced over short transfers. Keeps its capacity.
    scratch: Vec<libc::iovec>,
    /// Aligned buffer for unaligned `O_DIRECT` requests and for writing zeros.
    bounce: AlignedBuf,
    punch_hole_zeroes: bool,
    zero_range: bool,
}

// SAFETY: the only non-`Send` fields are the iovecs in `scratch`, which are dereferenced by
// the kernel only during an `execute` call on the owning thread and are stale afterwards.
unsafe impl Send for BlockingIo {}

impl BlockingIo {
    pub(crate) fn new(files: EngineFiles, info: DiskInfo) -> BlockingIo {
        let align = info.dio.map_or(512, |d| d.memory.max(512)) as usize;
        BlockingIo {
            files,
            info,
            scratch: Vec::with_capacity(64),
            bounce: AlignedBuf::new(align),
            punch_hole_zeroes: true,
            zero_range: true,
        }
    }

    /// The descriptor the kernel gets requests on (`O_DIRECT` when direct=on).
    pub(crate) fn fd(&self) -> RawFd {
        self.files.file.as_raw_fd()
    }

    /// Alignment for the io_uring engine's bounce buffers.
    pub(crate) fn bounce_align(&self) -> usize {
        self.info.dio.map_or(512, |d| d.memory.max(512)) as usize
    }

    /// Checks a request against the disk; returns its length in bytes (0 for a flush).
    pub(crate) fn validate(&self, op: IoOp, iovecs: &[libc::iovec]) -> Result<u64, i32> {
        let (offset, len) = match op {
            IoOp::Flush => return Ok(0),
            IoOp::Read { offset } | IoOp::Write { offset } => {
                if iovecs.len() > MAX_IOVECS {
                    return Err(libc::EINVAL);
                }
                let len = bounce::total_len(iovecs)
                    .filter(|len| *len <= u64::from(u32::MAX))
                    .ok_or(libc::EINVAL)?;
                (offset, len)
            }
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len, .. } => (offset, len),
        };
        if self.info.readonly && !matches!(op, IoOp::Read { .. }) {
            return Err(libc::EBADF);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.info.capacity => Ok(len),
            _ => Err(libc::EINVAL),
        }
    }

    /// Decides how a request that passed [`validate`](Self::validate) with `len` runs.
    pub(crate) fn route(&self, op: IoOp, iovecs: &[libc::iovec], len: u64) -> Route {
        let direct = Route::Kernel { bounce: false };
        match op {
            _ if len == 0 && op != IoOp::Flush => Route::Local,
            IoOp::Flush => direct,
            IoOp::Discard { .. } if self.info.block_device => Route::Local,
            IoOp::Discard { .. } => direct,
            // Unaligned under O_DIRECT: a fallback to writing zeros would use the buffered
            // descriptor, which must not race with direct I/O in flight.
            IoOp::WriteZeroes { offset, .. } if self.needs_buffered(offset, len) => Route::Local,
            IoOp::WriteZeroes { .. } => match self.fallocate_mode(op) {
                Some(_) => direct,
                None => Route::Local,
            },
            IoOp::Read { offset } | IoOp::Write { offset } => match self.info.dio {
                None => direct,
                Some(_) if self.needs_buffered(offset, len) => Route::Local,
                Some(a) if bounce::iovecs_aligned(iovecs, a.memory, a.offset) => direct,
                Some(_) if len <= URING_BOUNCE_MAX => Route::Kernel { bounce: true },
                Some(_) => Route::Local,
            },
        }
    }

    /// The `fallocate` mode a discard or write-zeroes would try first, if any.
    pub(crate) fn fallocate_mode(&self, op: IoOp) -> Option<i32> {
        match op {
            IoOp::Discard { .. } => Some(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
            IoOp::WriteZeroes { unmap, .. } => self.zeroes_modes(unmap).next(),
            _ => None,
        }
    }

    /// Remembers that the kernel refused `mode` with `EOPNOTSUPP`.
    pub(crate) fn mark_unsupported(&mut self, mode: i32) {
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            self.punch_hole_zeroes = false;
        }
        if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            self.zero_range = false;
        }
    }

    fn zeroes_modes(&self, unmap: bool) -> impl Iterator<Item = i32> {
        let punch = (unmap && self.punch_hole_zeroes)
            .then_some(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
        let zero = self
            .zero_range
            .then_some(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE);
        punch.into_iter().chain(zero)
    }

    /// Validates and runs a request to the end.
    ///
    /// # Safety
    ///
    /// As for [`Engine::submit`](crate::Engine::submit), but the memory only needs to stay
    /// valid during the call.
    pub(crate) unsafe fn execute(&mut self, op: IoOp, iovecs: &[libc::iovec]) -> Result<u32, i32> {
        let len = self.validate(op, iovecs)?;
        match op {
            // SAFETY: forwarded from the caller.
            IoOp::Read { offset } => unsafe { self.transfer(Dir::Read, offset, iovecs, len)? },
            // SAFETY: forwarded from the caller.
            IoOp::Write { offset } => unsafe { self.transfer(Dir::Write, offset, iovecs, len)? },
            IoOp::Flush => retry_eintr(|| {
                // SAFETY: fdatasync takes no pointers.
                unsafe { libc::fdatasync(self.fd()) }
            })?,
            IoOp::Discard { .. } if len == 0 => {}
            IoOp::Discard { offset, len } => self.discard(offset, len)?,
            IoOp::WriteZeroes { .. } if len == 0 => {}
            IoOp::WriteZeroes { offset, len, unmap } => self.write_zeroes(offset, len, unmap)?,
        }
        match op {
            // `validate` bounded data lengths by u32::MAX.
            IoOp::Read { .. } | IoOp::Write { .. } => Ok(len as u32),
            _ => Ok(0),
        }
    }

    /// Whether `O_DIRECT` refuses this offset or length, so that the transfer must use the
    /// buffered descriptor.
    fn needs_buffered(&self, offset: u64, len: u64) -> bool {
        self.info.dio.is_some_and(|a| {
            let align = u64::from(a.offset);
            offset % align != 0 || len % align != 0
        })
    }

    /// The descriptor for a data transfer: the buffered one when `O_DIRECT` would refuse
    /// the offset or length.
    fn fd_for(&self, offset: u64, len: u64) -> RawFd {
        match &self.files.buffered {
            Some(buffered) if self.needs_buffered(offset, len) => buffered.as_raw_fd(),
            _ => self.fd(),
        }
    }

    /// # Safety
    ///
    /// As for [`BlockingIo::execute`].
    unsafe fn transfer(
        &mut self,
        dir: Dir,
        offset: u64,
        iovecs: &[libc::iovec],
        len: u64,
    ) -> Result<(), i32> {
        let fd = self.fd_for(offset, len);
        match self.info.dio {
            Some(a) if fd == self.fd() && !bounce::iovecs_aligned(iovecs, a.memory, a.offset) => {
                // SAFETY: forwarded from the caller.
                unsafe { self.transfer_bounced(dir, fd, offset, iovecs, len) }
            }
            // SAFETY: forwarded from the caller.
            _ => unsafe { self.transfer_all(dir, fd, offset, iovecs) },
        }
    }

    /// Copies the request through the aligned buffer, `BOUNCE_CHUNK` bytes at a time.
    ///
    /// # Safety
    ///
    /// As for [`BlockingIo::execute`].
    unsafe fn transfer_bounced(
        &mut self,
        dir: Dir,
        fd: RawFd,
        offset: u64,
        iovecs: &[libc::iovec],
        len: u64,
    ) -> Result<(), i32> {
        self.bounce
            .reserve(len.min(BOUNCE_CHUNK) as usize)
            .map_err(|_| libc::ENOMEM)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BOUNCE_CHUNK) as usize;
            let iov = self.bounce.iovec(n);
            if dir == Dir::Write {
                // SAFETY: the iovecs are readable (caller); the bounce buffer is ours.
                unsafe { bounce::gather(iovecs, done as usize, self.bounce.slice_mut(n)) };
            }
            // SAFETY: `iov` covers `n` bytes of the bounce buffer, alive for the call.
            unsafe { self.transfer_all(dir, fd, offset + done, &[iov])? };
            if dir == Dir::Read {
                // SAFETY: the iovecs are writable (caller) and distinct from the buffer.
                unsafe { bounce::scatter(self.bounce.slice_mut(n), iovecs, done as usize) };
            }
            done += n as u64;
        }
        Ok(())
    }

    /// `preadv`/`pwritev` until every byte moved.
    ///
    /// # Safety
    ///
    /// As for [`BlockingIo::execute`].
    unsafe fn transfer_all(
        &mut self,
        dir: Dir,
        fd: RawFd,
        mut offset: u64,
        iovecs: &[libc::iovec],
    ) -> Result<(), i32> {
        self.scratch.clear();
        self.scratch.extend_from_slice(iovecs);
        let mut start = advance(&mut self.scratch, 0, 0);
        while let Some(rest) = self.scratch.get(start..).filter(|r| !r.is_empty()) {
            let off = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
            let moved = retry_eintr_len(|| {
                // SAFETY: `rest` holds at most MAX_IOVECS iovecs describing memory valid for
                // this direction (caller's contract), advanced only within themselves.
                unsafe {
                    match dir {
                        Dir::Read => libc::preadv(fd, rest.as_ptr(), rest.len() as i32, off),
                        Dir::Write => libc::pwritev(fd, rest.as_ptr(), rest.len() as i32, off),
                    }
                }
            })?;
            if moved == 0 {
                // End of file (reads) or a device that accepts nothing (writes).
                return Err(libc::EIO);
            }
            offset += moved as u64;
            start = advance(&mut self.scratch, start, moved);
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), i32> {
        let result = if self.info.block_device {
            let range = [offset, len];
            retry_eintr(|| {
                // SAFETY: BLKDISCARD reads two u64 (offset, length) from the pointer.
                unsafe { libc::ioctl(self.fd(), BLKDISCARD as _, range.as_ptr()) }
            })
        } else {
            fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match result {
            Err(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), i32> {
        while let Some(mode) = self.zeroes_modes(unmap).next() {
            match fallocate(self.fd(), mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(libc::EOPNOTSUPP) => self.mark_unsupported(mode),
                // Block devices refuse ranges not aligned to their logical block size.
                Err(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        self.write_zero_bytes(offset, len)
    }

    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<(), i32> {
        let chunk = len.min(BOUNCE_CHUNK) as usize;
        self.bounce.reserve(chunk).map_err(|_| libc::ENOMEM)?;
        self.bounce.slice_mut(chunk).fill(0);
        let fd = self.fd_for(offset, len);
        let mut done = 0;
        while done < len {
            let iov = self.bounce.iovec((len - done).min(BOUNCE_CHUNK) as usize);
            // SAFETY: `iov` covers initialised bytes of the bounce buffer, alive for the call.
            unsafe { self.transfer_all(Dir::Write, fd, offset + done, &[iov])? };
            done += iov.iov_len as u64;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// Consumes `n` bytes of `iovecs[start..]`, skipping empty iovecs; returns the new start.
fn advance(iovecs: &mut [libc::iovec], mut start: usize, mut n: usize) -> usize {
    while let Some(iov) = iovecs.get_mut(start) {
        if n < iov.iov_len {
            iov.iov_base = iov.iov_base.wrapping_byte_add(n);
            iov.iov_len -= n;
            return start;
        }
        n -= iov.iov_len;
        start += 1;
    }
    start
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Runs a call returning 0 or -1 until it is not interrupted.
fn retry_eintr(mut f: impl FnMut() -> libc::c_int) -> Result<(), i32> {
    loop {
        if f() >= 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// Runs a call returning a byte count or -1 until it is not interrupted.
fn retry_eintr_len(mut f: impl FnMut() -> libc::ssize_t) -> Result<usize, i32> {
    loop {
        if let Ok(n) = usize::try_from(f()) {
            return Ok(n);
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    let len = libc::off_t::try_from(len).map_err(|_| libc::EINVAL)?;
    retry_eintr(|| {
        // SAFETY: fallocate takes no pointers.
        unsafe { libc::fallocate(fd, mode, offset, len) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, DiskOptions, Error};

    /// Write-zeroes where `fallocate` is refused: zeros are written, aligned or not.
    #[test]
    fn write_zeroes_falls_back_to_writing() {
        for direct in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            std::fs::write(&path, vec![0xeeu8; 4 << 20]).unwrap();
            let opts = DiskOptions {
                readonly: false,
                direct,
            };
            let disk = match Disk::open(&path, opts) {
                Err(Error::DirectUnsupported { .. }) => {
                    eprintln!("direct=on NOT possible in {}", dir.path().display());
                    continue;
                }
                other => other.unwrap(),
            };
            let mut io = disk.blocking_io().unwrap();
            io.punch_hole_zeroes = false;
            io.zero_range = false;
            assert_eq!(
                io.fallocate_mode(IoOp::WriteZeroes {
                    offset: 0,
                    len: 1,
                    unmap: true
                }),
                None
            );
            let cases = [(1000, 70_000), (1 << 20, (2 << 20) + 4096)];
            for (offset, len) in cases {
                let op = IoOp::WriteZeroes {
                    offset,
                    len,
                    unmap: true,
                };
                assert_eq!(io.route(op, &[], len), Route::Local);
                // SAFETY: write-zeroes uses no caller memory.
                assert_eq!(unsafe { io.execute(op, &[]) }, Ok(0));
            }
            let data = std::fs::read(&path).unwrap();
            for (i, b) in data.iter().enumerate() {
                let zero = cases.iter().any(|&(o, l)| (o..o + l).contains(&(i as u64)));
                assert_eq!(*b, if zero { 0 } else { 0xee }, "byte {i}, direct={direct}");
            }
        }
    }

    #[test]
    fn advance_skips_consumed_and_empty_iovecs() {
        let mut buf = [0u8; 16];
        let base = buf.as_mut_ptr();
        let iov = |off: usize, len: usize| libc::iovec {
            iov_base: base.wrapping_add(off).cast(),
            iov_len: len,
        };
        let mut iovecs = [iov(0, 0), iov(0, 4), iov(4, 0), iov(4, 8)];
        let start = advance(&mut iovecs, 0, 0);
        assert_eq!(start, 1);
        let start = advance(&mut iovecs, start, 6);
        assert_eq!(start, 3);
        assert_eq!(iovecs[3].iov_len, 6);
        assert_eq!(iovecs[3].iov_base, base.wrapping_add(6).cast());
        assert_eq!(advance(&mut iovecs, start, 6), 4);
    }
}
