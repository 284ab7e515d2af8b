//! Who runs a queue's parsed requests: the [`Scheduler`] a [`QueueService`] starts jobs on.
//!
//! Two exist: [`Inline`] runs them on the serving thread's own engine (the `vcpu`,
//! `iothread` and `dataplane` modes), [`PoolLink`](crate::pool::PoolLink) hands them to a
//! pool of worker threads (the `workers` mode). Both finish a job the same way (the
//! [`InFlightTable`] writes its status), so the queue service sees finished jobs only.
//!
//! [`QueueService`]: crate::service::QueueService

use std::os::unix::io::RawFd;

use backend_raw::Engine;
use vm_memory::GuestMemoryMmap;

use std::sync::Arc;

use crate::inflight::InFlightTable;
use crate::metrics::DeviceMetrics;
use crate::request::IoJob;
use crate::trace::QueueTrace;

/// Where a queue service sends parsed requests, and where it gets them back finished.
pub trait Scheduler: Send + std::fmt::Debug {
    /// Whether a request of any type can be started now.
    fn has_room(&self) -> bool;

    /// Starts `job` (parsed, stamped `Parsed`). Returns the job when it finished at once
    /// (status already written): it could not be handed on.
    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        job: Box<IoJob>,
        trace: &QueueTrace,
    ) -> Option<Box<IoJob>>;

    /// Pushes what `start` queued (one system call for a batch, where the engine needs one).
    fn flush(&mut self);

    /// Hands every finished job (status written) to `done`; returns how many.
    fn reap(
        &mut self,
        mem: &GuestMemoryMmap,
        trace: &QueueTrace,
        done: &mut dyn FnMut(Box<IoJob>),
    ) -> usize;

    /// Jobs started and not reaped.
    fn in_flight(&self) -> usize;

    /// Blocks until a finished job can be reaped (or nothing is in flight).
    fn wait(&mut self);

    /// The file descriptors that become readable when jobs finish, for epoll (at most two: a
    /// scheduler that runs some jobs inline and hands others off has one of each).
    fn completion_fds(&self) -> [Option<RawFd>; 2];

    /// Clears the completion fds' readiness after epoll reported one of them.
    fn drain_completion_fds(&self);

    /// Whether the serving thread may busy-poll now (see [`PoolLink`](crate::pool::PoolLink)).
    fn may_poll(&self) -> bool {
        true
    }

    /// Whether spinning while jobs are in flight can catch their completions sooner than a
    /// sleep (see [`backend_raw::Engine::spin_for_completions`]).
    fn spin_in_flight(&self) -> bool {
        true
    }

    /// The serving thread is about to sleep in epoll; `true` if finished jobs already wait
    /// (then it must not sleep).
    fn prepare_sleep(&self) -> bool {
        false
    }

    /// The serving thread is awake again.
    fn woke(&self) {}
}

/// Requests run on the serving thread's own engine.
#[derive(Debug)]
pub struct Inline {
    table: InFlightTable,
}

impl Inline {
    /// A scheduler over `engine` (built with [`engine_depth`](crate::inflight::engine_depth)
    /// for the queue's size), merging adjacent requests of a batch when `merge`.
    pub fn new(engine: Box<dyn Engine>, merge: bool) -> Self {
        Inline {
            table: InFlightTable::new(engine, merge),
        }
    }

    /// Records in `metrics` which threads do this scheduler's I/O.
    pub fn recording_threads_in(self, metrics: Arc<DeviceMetrics>) -> Self {
        Inline {
            table: self.table.recording_threads_in(metrics),
        }
    }
}

impl Scheduler for Inline {
    fn has_room(&self) -> bool {
        self.table.has_room()
    }

    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        job: Box<IoJob>,
        trace: &QueueTrace,
    ) -> Option<Box<IoJob>> {
        self.table.start(mem, job, trace)
    }

    fn flush(&mut self) {
        self.table.flush();
    }

    fn reap(
        &mut self,
        mem: &GuestMemoryMmap,
        trace: &QueueTrace,
        done: &mut dyn FnMut(Box<IoJob>),
    ) -> usize {
        let before = self.table.live();
        self.table.reap(
            mem,
            |job, wire| trace.backend_complete(job.head, wire),
            done,
        );
        before - self.table.live()
    }

    fn in_flight(&self) -> usize {
        self.table.live()
    }

    fn wait(&mut self) {
        self.table.wait();
    }

    fn completion_fds(&self) -> [Option<RawFd>; 2] {
        [self.table.completion_fd(), None]
    }

    fn spin_in_flight(&self) -> bool {
        self.table.spin_for_completions()
    }

    fn drain_completion_fds(&self) {
        self.table.drain_completion_fd();
    }
}
