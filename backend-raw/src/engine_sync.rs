//! The synchronous engine: each request runs to the end on the calling thread.

use std::collections::VecDeque;
use std::os::unix::io::RawFd;

use crate::blocking::BlockingIo;
use crate::{Completion, Engine, EngineKind, Error, IoOp};

/// The sync engine: each request runs to the end on its [`BlockingIo`] inside
/// [`Engine::submit`], and its completion waits in a queue for [`Engine::reap`].
pub(crate) struct SyncEngine {
    io: BlockingIo,
    done: VecDeque<Completion>,
    depth: usize,
}

impl SyncEngine {
    pub(crate) fn new(io: BlockingIo, depth: usize) -> SyncEngine {
        SyncEngine {
            io,
            done: VecDeque::with_capacity(depth),
            depth,
        }
    }
}

impl Engine for SyncEngine {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), Error> {
        if self.done.len() >= self.depth {
            return Err(Error::QueueFull {
                capacity: self.depth,
            });
        }
        // SAFETY: forwarded from the caller; the request ends before this call returns.
        let result = unsafe { self.io.execute(op, iovecs) };
        self.done.push_back(Completion::new(user_data, result));
        Ok(())
    }

    fn flush_submissions(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n
    }

    fn wait(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn capacity(&self) -> usize {
        self.depth
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Sync
    }
}
