//! [`NbdEngine`]: the `Engine` a device queue drives; it hands requests to a connection's
//! thread and collects their completions from an eventfd of its own.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use backend_raw::{Completion, Engine, EngineKind, Error, IoOp, MAX_IOVECS};

use crate::connection::{lock, Buffers, Shared, Sink, Submitted};
use crate::handshake::ExportInfo;
use crate::proto::*;

/// An engine over one connection of an export ([`NbdExport::engine`](crate::NbdExport::engine)).
///
/// Requests are pipelined: [`flush_submissions`](Engine::flush_submissions) hands the batch
/// to the connection's thread with one wake-up, and completions arrive in any order.
/// Several engines may share a connection; each has its own completion eventfd.
pub struct NbdEngine {
    conn: Arc<Shared>,
    sink: Arc<Sink>,
    info: ExportInfo,
    batch: Vec<Submitted>,
    in_flight: usize,
    depth: usize,
    /// Complete each request inside `submit` (the `sync` engine's contract).
    blocking: bool,
}

impl NbdEngine {
    pub(crate) fn new(
        conn: Arc<Shared>,
        sink: Arc<Sink>,
        info: ExportInfo,
        depth: usize,
        blocking: bool,
    ) -> NbdEngine {
        NbdEngine {
            conn,
            sink,
            info,
            batch: Vec::with_capacity(depth),
            in_flight: 0,
            depth,
            blocking,
        }
    }

    fn fail_now(&mut self, user_data: u64, errno: i32) {
        self.sink.complete(Completion {
            user_data,
            result: Err(errno),
        });
    }

    /// The wire command for `op`, or the errno it fails with here.
    fn command(&self, op: IoOp, len: u64) -> Result<(u16, u16, u64, u64), i32> {
        let ro = self.info.readonly();
        if ro && !matches!(op, IoOp::Read { .. } | IoOp::Flush) {
            return Err(libc::EBADF);
        }
        let (kind, flags, offset, length) = match op {
            IoOp::Read { offset } => (NBD_CMD_READ, 0, offset, len),
            IoOp::Write { offset } => (NBD_CMD_WRITE, 0, offset, len),
            // No flush command: nothing is cached on the way, so every completed write is
            // as durable as the server makes it.
            IoOp::Flush if !self.info.can_flush() => return Err(0),
            IoOp::Flush => (NBD_CMD_FLUSH, 0, 0, 0),
            IoOp::Discard { offset, len } if self.info.can_trim() => (NBD_CMD_TRIM, 0, offset, len),
            IoOp::WriteZeroes { offset, len, unmap } if self.info.can_write_zeroes() => {
                let flags = if unmap { 0 } else { NBD_CMD_FLAG_NO_HOLE };
                (NBD_CMD_WRITE_ZEROES, flags, offset, len)
            }
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => return Err(libc::EOPNOTSUPP),
        };
        let end = offset.checked_add(length).ok_or(libc::EINVAL)?;
        let data = matches!(kind, NBD_CMD_READ | NBD_CMD_WRITE);
        if end > self.info.size
            || length > u64::from(u32::MAX)
            || (data && length > u64::from(self.info.max_payload))
        {
            return Err(libc::EINVAL);
        }
        Ok((kind, flags, offset, length))
    }
}

impl Engine for NbdEngine {
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
        self.in_flight += 1;
        let data = matches!(op, IoOp::Read { .. } | IoOp::Write { .. });
        let len: u64 = match data {
            true => iovecs.iter().map(|v| v.iov_len as u64).sum(),
            false => 0,
        };
        if data && iovecs.len() > MAX_IOVECS {
            self.fail_now(user_data, libc::EINVAL);
            return Ok(());
        }
        match self.command(op, len) {
            Err(0) => self.sink.complete(Completion {
                user_data,
                result: Ok(0),
            }),
            Err(errno) => self.fail_now(user_data, errno),
            Ok((kind, flags, offset, length)) => {
                self.batch.push(Submitted {
                    sink: self.sink.clone(),
                    user_data,
                    kind,
                    flags,
                    offset,
                    length: length as u32,
                    buffers: Buffers(if data { iovecs.to_vec() } else { Vec::new() }),
                });
                if self.blocking {
                    self.wait()?;
                }
            }
        }
        Ok(())
    }

    fn flush_submissions(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        lock(&self.conn.queue).append(&mut self.batch);
        // A full counter (EAGAIN) still wakes the thread.
        let _ = self.conn.wake.write(1);
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut done = lock(&self.sink.done);
        let n = done.len();
        out.append(&mut done);
        self.in_flight -= n;
        n
    }

    fn wait(&mut self) -> Result<(), Error> {
        self.flush_submissions()?;
        let mut done = lock(&self.sink.done);
        while self.in_flight > 0 && done.is_empty() {
            done = self
                .sink
                .ready
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        if self.blocking {
            return None;
        }
        Some(self.sink.fd.as_raw_fd())
    }

    fn drain_completion_fd(&self) {
        // Already clear (EAGAIN) is fine.
        let _ = self.sink.fd.read();
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn capacity(&self) -> usize {
        self.depth
    }

    /// `Sync` when built blocking (requests complete inside `submit`), else `IoUring`:
    /// callers read the kind as the completion model (asynchronous, with an eventfd), which
    /// is what an NBD engine shares with io_uring.
    fn kind(&self) -> EngineKind {
        match self.blocking {
            true => EngineKind::Sync,
            false => EngineKind::IoUring,
        }
    }
}

impl Drop for NbdEngine {
    /// Buffers lent to requests stay in use until the connection answers or gives up (the
    /// reconnect timeout), so dropping waits for both.
    fn drop(&mut self) {
        let _ = self.flush_submissions();
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            let _ = self.wait();
            self.reap(&mut sink);
            sink.clear();
        }
    }
}
