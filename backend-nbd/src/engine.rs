//! [`NbdEngine`]: the `Engine` a device queue drives; its thread writes the requests to the
//! connection's socket and reads the replies itself.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use backend_raw::{Completion, Engine, EngineKind, Error, IoOp, WireTimes, MAX_IOVECS};

use crate::connection::{lock, Buffers, Next, Shared, Sink, Submitted};
use crate::handshake::ExportInfo;
use crate::proto::*;
use vmm_sys_util::epoll::Epoll;

/// An engine over one connection of an export ([`NbdExport::engine`](crate::NbdExport::engine)).
///
/// Requests are pipelined: [`flush_submissions`](Engine::flush_submissions) writes the batch
/// to the socket from the calling thread, and completions arrive in any order, read from the
/// socket by [`reap`](Engine::reap) when the [`completion_fd`](Engine::completion_fd) (an
/// epoll set of the socket and the engine's eventfd) is readable. Several engines may share
/// a connection; whoever reads a reply hands it to the engine it belongs to.
pub struct NbdEngine {
    conn: Arc<Shared>,
    sink: Arc<Sink>,
    /// The socket and the sink's eventfd: readable when there is something to reap.
    epoll: Arc<Epoll>,
    /// epoll reported the set since the last reap: the socket may hold a reply (or the
    /// server's close) even with nothing of ours in flight.
    poked: Cell<bool>,
    info: ExportInfo,
    batch: Vec<Submitted>,
    /// Requests cut into parts the server takes, by `user_data`, until every part is back.
    splits: HashMap<u64, Split>,
    /// Whole requests finished, for `reap`.
    ready: Vec<Completion>,
    in_flight: usize,
    depth: usize,
    /// Complete each request inside `submit` (the `sync` engine's contract).
    blocking: bool,
}

/// A request sent as several commands: a read or write larger than the server's maximum
/// payload, or a trim or zeroing longer than one command's 32-bit length.
struct Split {
    parts_left: usize,
    /// Bytes transferred so far, or the first error.
    result: Result<u32, i32>,
    wire: Option<WireTimes>,
}

impl NbdEngine {
    pub(crate) fn new(
        conn: Arc<Shared>,
        sink: Arc<Sink>,
        epoll: Arc<Epoll>,
        info: ExportInfo,
        depth: usize,
        blocking: bool,
    ) -> NbdEngine {
        NbdEngine {
            conn,
            sink,
            epoll,
            poked: Cell::new(false),
            info,
            batch: Vec::with_capacity(depth),
            splits: HashMap::new(),
            ready: Vec::with_capacity(depth),
            in_flight: 0,
            depth,
            blocking,
        }
    }

    /// Reads the replies that arrived (without blocking), when some may have.
    fn receive(&self) {
        if self.in_flight == 0 && !self.poked.replace(false) {
            return;
        }
        if lock(&self.conn.link).receive_for(&self.sink) == Next::Ring {
            self.conn.ring();
        }
    }

    /// Moves what the connection finished into `ready`, joining the parts of split requests.
    fn collect(&mut self) {
        let mut done = lock(&self.sink.done);
        for c in done.drain(..) {
            let Some(s) = self.splits.get_mut(&c.user_data) else {
                self.ready.push(c);
                continue;
            };
            s.parts_left -= 1;
            s.result = match (s.result, c.result) {
                (Ok(sum), Ok(n)) => Ok(sum.saturating_add(n)),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
            s.wire = c.wire.or(s.wire);
            if s.parts_left == 0 {
                let Split { result, wire, .. } = *s;
                self.splits.remove(&c.user_data);
                self.ready.push(Completion {
                    user_data: c.user_data,
                    result,
                    wire,
                });
            }
        }
    }

    /// The most bytes one command of `kind` may carry: the server's maximum payload for a
    /// read or write, else what the 32-bit length holds; whole minimum blocks either way.
    fn part_limit(&self, kind: u16) -> u64 {
        let max = match kind {
            NBD_CMD_READ | NBD_CMD_WRITE => self.info.max_payload,
            _ => u32::MAX,
        };
        let block = self.info.min_block.max(1);
        match max - max % block {
            0 => u64::from(max),
            whole => u64::from(whole),
        }
    }

    fn fail_now(&mut self, user_data: u64, errno: i32) {
        self.sink.complete(Completion::new(user_data, Err(errno)));
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
        // A read or write carries its length in the completion's 32 bits.
        let data = matches!(kind, NBD_CMD_READ | NBD_CMD_WRITE);
        if end > self.info.size || (data && length > u64::from(u32::MAX)) {
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
            Err(0) => self.sink.complete(Completion::new(user_data, Ok(0))),
            Err(errno) => self.fail_now(user_data, errno),
            Ok((kind, flags, offset, length)) => {
                let limit = self.part_limit(kind);
                let sink = &self.sink;
                let command = |at: u64, len: u64, buffers: Vec<libc::iovec>| Submitted {
                    sink: sink.clone(),
                    user_data,
                    kind,
                    flags,
                    offset: offset + at,
                    // At most `limit`, which fits in 32 bits.
                    length: len as u32,
                    buffers: Buffers(buffers),
                };
                if length <= limit {
                    let buffers = if data { iovecs.to_vec() } else { Vec::new() };
                    self.batch.push(command(0, length, buffers));
                } else {
                    let parts: Vec<Part> = match data {
                        true => cut(iovecs, limit),
                        false => (0..length.div_ceil(limit))
                            .map(|i| (i * limit, limit.min(length - i * limit), Vec::new()))
                            .collect(),
                    };
                    self.splits.insert(
                        user_data,
                        Split {
                            parts_left: parts.len(),
                            result: Ok(0),
                            wire: None,
                        },
                    );
                    let commands = parts.into_iter().map(|(at, len, b)| command(at, len, b));
                    self.batch.extend(commands);
                }
                if self.blocking {
                    while self.in_flight > 0 && !self.ready.iter().any(|c| c.user_data == user_data)
                    {
                        self.wait()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_submissions(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if lock(&self.conn.link).submit(&mut self.batch) == Next::Ring {
            self.conn.ring();
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.receive();
        self.collect();
        let n = self.ready.len();
        out.append(&mut self.ready);
        self.in_flight -= n;
        n
    }

    fn wait(&mut self) -> Result<(), Error> {
        self.flush_submissions()?;
        loop {
            self.receive();
            self.collect();
            if self.in_flight == 0 || !self.ready.is_empty() {
                return Ok(());
            }
            // `poll` on the epoll set (readable when any of its fds is): a pool worker may
            // wait on one descriptor, not run an epoll loop. EINTR: look again.
            let mut fd = libc::pollfd {
                fd: self.epoll.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let _ = unsafe { libc::poll(&mut fd, 1, -1) };
            self.drain_completion_fd();
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        if self.blocking {
            return None;
        }
        Some(self.epoll.as_raw_fd())
    }

    fn drain_completion_fd(&self) {
        self.poked.set(true);
        // Already clear (EAGAIN) is fine. The socket's readiness clears as `reap` reads it.
        let _ = self.sink.fd.read();
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn capacity(&self) -> usize {
        self.depth
    }

    /// No: the server needs the CPU a spinning thread would take, and each look at the
    /// socket is a system call.
    fn spin_for_completions(&self) -> bool {
        false
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

/// One command of a request: its byte offset into the request, its length, its buffers.
type Part = (u64, u64, Vec<libc::iovec>);

/// Cuts `iovecs` into runs of at most `limit` bytes (the last may be shorter).
fn cut(iovecs: &[libc::iovec], limit: u64) -> Vec<Part> {
    let mut parts = Vec::new();
    let (mut at, mut len, mut run) = (0u64, 0u64, Vec::new());
    for v in iovecs {
        let mut done = 0usize;
        while done < v.iov_len {
            let take = (v.iov_len - done).min((limit - len) as usize);
            run.push(libc::iovec {
                // `done < iov_len`: the pointer stays inside the caller's buffer.
                iov_base: v.iov_base.cast::<u8>().wrapping_add(done).cast(),
                iov_len: take,
            });
            done += take;
            len += take as u64;
            if len == limit {
                parts.push((at, len, std::mem::take(&mut run)));
                at += len;
                len = 0;
            }
        }
    }
    if len > 0 {
        parts.push((at, len, run));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: usize, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    type Span = (u64, u64, Vec<(usize, usize)>);

    fn spans(parts: &[Part]) -> Vec<Span> {
        parts
            .iter()
            .map(|(at, len, v)| {
                let v = v.iter().map(|i| (i.iov_base as usize, i.iov_len)).collect();
                (*at, *len, v)
            })
            .collect()
    }

    #[test]
    fn cut_keeps_every_byte_once_and_in_order() {
        let parts = cut(&[iov(1000, 6), iov(5000, 3), iov(9000, 5)], 4);
        assert_eq!(
            spans(&parts),
            vec![
                (0, 4, vec![(1000, 4)]),
                (4, 4, vec![(1004, 2), (5000, 2)]),
                (8, 4, vec![(5002, 1), (9000, 3)]),
                (12, 2, vec![(9003, 2)]),
            ]
        );
        assert_eq!(cut(&[iov(1000, 8)], 8).len(), 1);
    }
}
