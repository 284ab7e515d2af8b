//! An engine wrapper that fails chosen requests, to test how a device copes with a failing
//! disk ("nothing crashes, nothing is lost").
//!
//! A request a [`FaultSpec`] rule chooses is never given to the inner engine, so no data
//! changes; its completion, carrying the rule's errno, is queued inside `submit`. The
//! completions the inner engine had ready at that moment are moved in front of it, so
//! [`Engine::reap`] returns completions in the order the inner engine alone would, with the
//! injected ones where they were submitted (exactly submission order over the sync engine).
//!
//! Waking epoll: an inner engine with a [`completion_fd`](Engine::completion_fd) gets that
//! eventfd signalled for every injected completion, so a loop sleeping on it, then calling
//! [`drain_completion_fd`](Engine::drain_completion_fd) and `reap`, sees them like any
//! other. An inner engine without one completes inside `submit`, and so do injected
//! requests: the caller reaps after submitting, as it does for that engine anyway.

use std::collections::VecDeque;
use std::os::unix::io::RawFd;

use crate::{bounce, Completion, Engine, EngineKind, Error, FaultRule, FaultSpec, IoOp};

/// One rule and what it has counted on this engine.
#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    /// Requests the rule counted.
    counted: u64,
    /// Failures the rule injected.
    failed: u64,
}

/// Wraps any [`Engine`] and fails the requests a [`FaultSpec`] chooses with its errno,
/// in their [`Completion`] (never in `submit`).
///
/// Rules count per engine: a device with one engine per virtqueue counts per queue.
///
/// ```
/// use backend_raw::{Disk, DiskOptions, EngineKind, FaultEngine, IoOp};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("disk.img");
/// std::fs::File::create(&path)?.set_len(1 << 20)?;
/// let disk = Disk::open(&path, DiskOptions::default())?;
/// let mut engine = FaultEngine::new(disk.engine(EngineKind::Sync, 4)?, "eio@read".parse()?);
///
/// let mut data = [0u8; 512];
/// let iov = [libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 512 }];
/// // SAFETY: `data` outlives the request, which is reaped below.
/// unsafe { backend_raw::Engine::submit(&mut engine, IoOp::Read { offset: 0 }, &iov, 7)? };
/// let mut done = Vec::new();
/// backend_raw::Engine::reap(&mut engine, &mut done);
/// assert_eq!((done[0].user_data, done[0].result), (7, Err(libc::EIO)));
/// assert_eq!(engine.injected(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FaultEngine {
    inner: Box<dyn Engine>,
    rules: Vec<RuleState>,
    /// Flushes complete OK without reaching the inner engine (`noflush`).
    drop_flush: bool,
    /// Completions to hand out before the inner engine's: those the inner engine had ready
    /// when a failure was injected, then the injected one.
    ready: VecDeque<Completion>,
    /// Reused to take the inner engine's ready completions; keeps its capacity.
    scratch: Vec<Completion>,
    injected: u64,
}

impl FaultEngine {
    /// Wraps `inner`, failing what `spec` chooses.
    pub fn new(inner: Box<dyn Engine>, spec: FaultSpec) -> FaultEngine {
        let depth = inner.capacity();
        FaultEngine {
            drop_flush: spec.drops_flushes(),
            inner,
            rules: spec
                .rules()
                .iter()
                .map(|rule| RuleState {
                    rule: rule.clone(),
                    counted: 0,
                    failed: 0,
                })
                .collect(),
            ready: VecDeque::with_capacity(depth),
            scratch: Vec::with_capacity(depth),
            injected: 0,
        }
    }

    /// How many completions have been injected so far (failures, and flushes dropped by
    /// `noflush`).
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// The errno the first rule choosing the request gives it, if any, without counting.
    fn verdict(&self, op: IoOp, len: u64) -> Option<i32> {
        self.rules
            .iter()
            .find(|s| s.rule.counts(op, len) && s.rule.fires(s.counted + 1, s.failed))
            .map(|s| s.rule.errno)
    }

    /// Counts the request in every rule that matches it.
    fn count(&mut self, op: IoOp, len: u64) {
        for s in self.rules.iter_mut().filter(|s| s.rule.counts(op, len)) {
            s.counted += 1;
            if s.rule.fires(s.counted, s.failed) {
                s.failed += 1;
            }
        }
    }

    /// Queues an injected completion behind the inner engine's ready ones and wakes epoll.
    fn inject(&mut self, user_data: u64, result: Result<u32, i32>) {
        self.inner.reap(&mut self.scratch);
        self.ready.extend(self.scratch.drain(..));
        self.ready.push_back(Completion::new(user_data, result));
        self.injected += 1;
        if let Some(fd) = self.inner.completion_fd() {
            signal(fd);
        }
    }
}

/// Adds one to an eventfd's counter, making it readable.
fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from `one` to a descriptor the inner engine keeps open. A full
    // counter (EAGAIN) is already readable, which is all this is for.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Wraps `engine` in a [`FaultEngine`] when `spec` is given, returns it unchanged otherwise.
pub fn with_faults(engine: Box<dyn Engine>, spec: Option<&FaultSpec>) -> Box<dyn Engine> {
    match spec {
        Some(spec) => Box::new(FaultEngine::new(engine, spec.clone())),
        None => engine,
    }
}

impl Engine for FaultEngine {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), Error> {
        if self.in_flight() >= self.capacity() {
            return Err(Error::QueueFull {
                capacity: self.capacity(),
            });
        }
        let len = match op {
            IoOp::Read { .. } | IoOp::Write { .. } => bounce::total_len(iovecs).unwrap_or(u64::MAX),
            _ => 0,
        };
        match self.verdict(op, len) {
            Some(errno) => self.inject(user_data, Err(errno)),
            None if self.drop_flush && op == IoOp::Flush => self.inject(user_data, Ok(0)),
            // SAFETY: forwarded from the caller.
            None => unsafe { self.inner.submit(op, iovecs, user_data)? },
        }
        // Only now: a request refused with QueueFull was not submitted, so not counted.
        self.count(op, len);
        Ok(())
    }

    fn flush_submissions(&mut self) -> Result<(), Error> {
        self.inner.flush_submissions()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let ready = self.ready.len();
        out.extend(self.ready.drain(..));
        ready + self.inner.reap(out)
    }

    fn wait(&mut self) -> Result<(), Error> {
        match self.ready.is_empty() {
            true => self.inner.wait(),
            false => self.inner.flush_submissions(),
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }

    unsafe fn register_memory(&mut self, regions: &[libc::iovec]) -> Result<bool, Error> {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.register_memory(regions) }
    }

    fn drain_completion_fd(&self) {
        self.inner.drain_completion_fd();
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.ready.len()
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn spin_for_completions(&self) -> bool {
        self.inner.spin_for_completions()
    }
}
