//! The scheduler of a queue in `workers` mode when the pool has workers: a request runs inline
//! on the serving thread's own engine unless handing it to a pool worker gains parallelism.
//!
//! Handing a request off costs a thread wake-up on each side when the other thread sleeps,
//! which on a small host costs more than the I/O the handler would otherwise submit itself.
//! So a request goes to the pool only when the serving thread could not keep it moving: the
//! inline engine blocks (the sync engine does the whole transfer inside `submit`), or many
//! requests are already in flight inline, so that more threads submitting and reaping add
//! throughput on a host with cores to spare.

use std::os::unix::io::RawFd;

use backend_raw::EngineKind;
use vm_memory::GuestMemoryMmap;

use crate::pool::PoolLink;
use crate::request::IoJob;
use crate::scheduler::{Inline, Scheduler};
use crate::trace::QueueTrace;

/// Requests in flight inline from which further ones go to the pool (the default of
/// [`ServeOptions::handoff_depth`](crate::mode::ServeOptions::handoff_depth)).
pub const HANDOFF_DEPTH: usize = 16;

/// Inline first, the pool for parallelism.
#[derive(Debug)]
pub struct Handoff {
    inline: Inline,
    pool: PoolLink,
    /// The inline engine blocks the serving thread for the whole transfer.
    blocking: bool,
    /// Requests in flight inline from which further ones go to the pool (0: every request).
    depth: usize,
}

impl Handoff {
    /// A scheduler running requests on `inline` (an engine of `kind`) or handing them to
    /// `pool` once `depth` are in flight inline (0: hands every request off, the pool-only
    /// design this replaced).
    pub fn new(inline: Inline, kind: EngineKind, pool: PoolLink, depth: usize) -> Self {
        Handoff {
            inline,
            pool,
            blocking: kind == EngineKind::Sync,
            depth,
        }
    }

    fn hand_off(&self) -> bool {
        self.blocking || self.inline.in_flight() >= self.depth || !self.inline.has_room()
    }
}

impl Scheduler for Handoff {
    fn has_room(&self) -> bool {
        self.pool.has_room() || self.inline.has_room()
    }

    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        job: Box<IoJob>,
        trace: &QueueTrace,
    ) -> Option<Box<IoJob>> {
        if self.hand_off() {
            self.pool.start(mem, job, trace)
        } else {
            self.inline.start(mem, job, trace)
        }
    }

    fn flush(&mut self) {
        self.inline.flush();
    }

    fn reap(
        &mut self,
        mem: &GuestMemoryMmap,
        trace: &QueueTrace,
        done: &mut dyn FnMut(Box<IoJob>),
    ) -> usize {
        self.inline.reap(mem, trace, done) + self.pool.reap(mem, trace, done)
    }

    fn in_flight(&self) -> usize {
        self.inline.in_flight() + self.pool.in_flight()
    }

    /// Waits on whichever side has requests, inline first (its completions come fastest);
    /// the caller reaps both and comes back.
    fn wait(&mut self) {
        if self.inline.in_flight() > 0 {
            self.inline.wait();
        } else {
            self.pool.wait();
        }
    }

    fn completion_fds(&self) -> [Option<RawFd>; 2] {
        [
            self.inline.completion_fds()[0],
            self.pool.completion_fds()[0],
        ]
    }

    fn drain_completion_fds(&self) {
        self.inline.drain_completion_fds();
        self.pool.drain_completion_fds();
    }

    fn may_poll(&self) -> bool {
        self.pool.may_poll()
    }

    fn spin_in_flight(&self) -> bool {
        self.inline.spin_in_flight()
    }

    fn prepare_sleep(&self) -> bool {
        self.pool.prepare_sleep()
    }

    fn woke(&self) {
        self.pool.woke();
    }
}
