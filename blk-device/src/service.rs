//! The queue service: one virtqueue's request lifecycle, the same in every mode.
//!
//! One turn ([`QueueService::process`]): reap finished requests, pop and start every
//! available chain (parse it into a preallocated [`IoJob`], hand it to the [`Scheduler`]),
//! push the batch with one call, reap again (the sync engine completes inside `submit`),
//! publish the used elements in completion order, and make one notification decision for the
//! batch (2.7.10 "Used Buffer Notification Suppression"). Who calls `process`, on which
//! thread and under which lock, is the I/O mode's business ([`crate::mode`]).

use std::sync::Arc;
use std::time::Instant;

use virtqueue_core::{DescriptorChain, Queue, QueueError};
use vm_memory::GuestMemoryMmap;

use crate::failure_log::FailureLog;
use crate::health::DeviceHealth;
use crate::interrupt::Interrupt;
use crate::metrics::DeviceMetrics;
use crate::request::{IoJob, Outcome, RequestParser, Used};
use crate::scheduler::Scheduler;
use crate::throttle::QueueThrottle;
use crate::trace::{QueueTrace, Stage, NO_HEAD};

/// What a queue service reports to and through: shared by every queue of a device.
#[derive(Debug, Clone)]
pub struct Observers {
    /// The driver-facing notifications.
    pub interrupt: Arc<dyn Interrupt>,
    /// Where a ring failure asks for DEVICE_NEEDS_RESET.
    pub health: Arc<DeviceHealth>,
    /// The device's counters.
    pub metrics: Arc<DeviceMetrics>,
    /// The device's log of failed requests.
    pub failures: Arc<FailureLog>,
}

/// One virtqueue's hot-path state.
pub struct QueueService {
    index: u16,
    queue: Queue,
    mem: GuestMemoryMmap,
    parser: RequestParser,
    scheduler: Box<dyn Scheduler>,
    /// One job per ring entry, allocated when the queue starts.
    #[allow(clippy::vec_box)]
    free: Vec<Box<IoJob>>,
    trace: QueueTrace,
    observers: Observers,
    used: Vec<Used>,
    /// Reused for every pop (no allocation per request).
    chain: DescriptorChain,
    /// When each head was popped, for the latency metric.
    started: Vec<Instant>,
    failed: bool,
    /// The disk's limits (`None`: unlimited, the only cost is this branch).
    throttle: Option<QueueThrottle>,
    /// A parsed request the throttle refused: the queue pops nothing until it runs.
    parked: Option<Box<IoJob>>,
}

impl std::fmt::Debug for QueueService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueService")
            .field("index", &self.index)
            .field("scheduler", &self.scheduler)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Room for a maximal request in every job: `seg_max` data buffers plus header and status,
/// each possibly split in two by a memory-region boundary.
fn job_segments(queue_size: u16) -> usize {
    2 * usize::from(queue_size)
}

impl QueueService {
    /// The service of queue `index`, parsing with `parser` and running requests on
    /// `scheduler`, stamping into `trace`.
    pub fn new(
        index: u16,
        queue: Queue,
        mem: GuestMemoryMmap,
        parser: RequestParser,
        scheduler: Box<dyn Scheduler>,
        trace: QueueTrace,
        observers: Observers,
    ) -> Self {
        let size = queue.size().max(1);
        QueueService {
            index,
            free: (0..size)
                .map(|_| IoJob::with_capacity(job_segments(size)))
                .collect(),
            queue,
            mem,
            parser,
            scheduler,
            trace,
            observers,
            used: Vec::with_capacity(usize::from(size)),
            chain: DescriptorChain::new(),
            started: vec![Instant::now(); usize::from(size)],
            failed: false,
            throttle: None,
            parked: None,
        }
    }

    /// Serves the queue within the limits of `throttle`.
    pub fn with_throttle(mut self, throttle: Option<QueueThrottle>) -> Self {
        self.throttle = throttle;
        self
    }

    /// The throttle timer's fd (readable when a throttled queue may go on), for epoll.
    pub fn throttle_fd(&self) -> Option<i32> {
        self.throttle.as_ref().map(QueueThrottle::timer_fd)
    }

    /// Clears the throttle timer's readiness after epoll reported it.
    pub fn drain_throttle_fd(&self) {
        if let Some(t) = &self.throttle {
            t.drain_timer();
        }
    }

    /// Whether a request waits for tokens (the queue pops nothing meanwhile).
    pub fn is_throttled(&self) -> bool {
        self.parked.is_some()
    }

    /// The queue's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue state (tests, diagnostics).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Requests started and not reaped yet.
    pub fn in_flight(&self) -> usize {
        self.scheduler.in_flight()
    }

    /// The scheduler's completion fds, for epoll.
    pub fn completion_fds(&self) -> impl Iterator<Item = i32> {
        self.scheduler.completion_fds().into_iter().flatten()
    }

    /// Clears the completion fds' readiness after epoll reported one of them.
    pub fn drain_completion_fds(&self) {
        self.scheduler.drain_completion_fds();
    }

    /// One turn: reap, drain the avail ring, publish, notify. Returns whether anything
    /// happened. A ring-level failure stops the queue for good and asks for a device reset
    /// (2.1.2 "Device Status Field": DEVICE_NEEDS_RESET).
    ///
    /// Once failed, a turn only retires the requests still in flight: their I/O finishes and
    /// their job boxes come back, but nothing is published to the broken ring any more.
    pub fn process(&mut self) -> bool {
        if self.failed {
            return self.retire();
        }
        match self.turn() {
            Ok(work) => work,
            Err(_) => {
                self.process_failure();
                true
            }
        }
    }

    /// After a ring failure: reaps what finished and drops its used elements (the ring cannot
    /// be trusted, 2.1.2: the driver must reset the device, which forgets every request).
    fn retire(&mut self) -> bool {
        let reaped = self.reap() > 0;
        self.used.clear();
        reaped
    }

    fn turn(&mut self) -> Result<bool, QueueError> {
        let mut work = self.reap() > 0;
        work |= self.drain_avail()?;
        self.scheduler.flush();
        self.reap();
        self.publish()?;
        Ok(work)
    }

    /// Takes finished requests into `used` (in completion order).
    fn reap(&mut self) -> usize {
        let (used, free) = (&mut self.used, &mut self.free);
        self.scheduler.reap(&self.mem, &self.trace, &mut |job| {
            used.push(job.used());
            free.push(job);
        })
    }

    /// Pops and starts every available chain while the scheduler has room and the throttle
    /// admits what was popped.
    fn drain_avail(&mut self) -> Result<bool, QueueError> {
        let mut work = false;
        if let Some(job) = self.parked.take() {
            if !self.scheduler.has_room() {
                self.parked = Some(job);
                return Ok(false);
            }
            self.admit(job, false);
            if self.parked.is_some() {
                return Ok(false);
            }
            work = true;
        }
        while self.scheduler.has_room() && !self.free.is_empty() && self.parked.is_none() {
            match self.queue.pop_into(&self.mem, &mut self.chain) {
                Ok(false) => break,
                Ok(true) => self.start_chain(),
                // The entry is consumed but the chain is unusable: return it empty (no status
                // byte can be trusted in a chain that failed validation).
                Err(QueueError::BadChain { head, .. }) => self.used.push(Used::invalid(head, 0)),
                Err(e) => return Err(e),
            }
            work = true;
        }
        if self.parked.is_none() {
            if let Some(t) = &mut self.throttle {
                t.settle();
            }
        }
        Ok(work)
    }

    /// Parses the popped chain and starts its request.
    fn start_chain(&mut self) {
        let head = self.chain.head_index();
        self.trace.stamp(Stage::Popped, head);
        if let Some(t) = self.started.get_mut(usize::from(head)) {
            *t = Instant::now();
        }
        let Some(mut job) = self.free.pop() else {
            // Cannot happen (one job per ring entry gates the pop); return the chain unused
            // rather than lose it.
            self.used.push(Used::invalid(head, 0));
            return;
        };
        job.queue = self.index;
        if let Some(done) = self.parser.prepare(&self.mem, &self.chain, &mut job) {
            self.used.push(done);
            self.free.push(job);
            return;
        }
        self.trace.stamp(Stage::Parsed, head);
        if self.throttle.is_some() {
            return self.admit(job, true);
        }
        self.run(job);
    }

    /// Starts `job` if the throttle admits it; parks it otherwise (the throttle's timer or
    /// its group wakes the queue to ask again). `fresh`: first asked, not a parked one.
    fn admit(&mut self, job: Box<IoJob>, fresh: bool) {
        if let (Some(t), Some(charge)) = (&mut self.throttle, job.charge()) {
            if !t.admit(charge) {
                if fresh {
                    self.observers.metrics.on_throttled();
                    self.trace.stamp(Stage::Throttled, job.head);
                }
                self.parked = Some(job);
                return;
            }
            if let Some(ns) = t.unpark() {
                self.observers.metrics.on_throttled_for(ns);
            }
        }
        self.run(job);
    }

    fn run(&mut self, job: Box<IoJob>) {
        if let Some(job) = self.scheduler.start(&self.mem, job, &self.trace) {
            self.used.push(job.used());
            self.free.push(job);
        }
    }

    /// Publishes the completed chains and notifies the driver if it wants a notification.
    fn publish(&mut self) -> Result<(), QueueError> {
        if self.used.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let metrics = &self.observers.metrics;
        for u in self.used.drain(..) {
            self.queue.push_used(&self.mem, u.head, u.len)?;
            self.trace.stamp(Stage::UsedPublished, u.head);
            match u.outcome {
                Outcome::Invalid => metrics.on_error(),
                outcome => {
                    if outcome == Outcome::Failed {
                        log_failure(&self.observers.failures, self.index, &u);
                    }
                    let started = self.started.get(usize::from(u.head)).copied();
                    let ns = started.map_or(0, |t| now.saturating_duration_since(t).as_nanos());
                    let ns = u64::try_from(ns).unwrap_or(u64::MAX);
                    metrics.on_complete(u64::from(u.bytes), outcome == Outcome::Ok, ns);
                }
            }
        }
        self.queue.publish_used(&self.mem)?;
        // One notification decision for the whole batch (2.7.10: with EVENT_IDX, only when
        // used_event was crossed).
        if self.queue.needs_notification(&self.mem)? {
            self.observers.interrupt.notify_queue(self.index);
            metrics.on_interrupt();
            self.trace.stamp(Stage::IrqInjected, NO_HEAD);
        }
        Ok(())
    }

    /// Asks the driver not to kick: the serving thread is awake and looking at the ring.
    pub fn disable_kicks(&mut self) {
        if !self.failed && self.queue.set_notification(&self.mem, false).is_err() {
            self.process_failure();
        }
    }

    /// Asks the driver to kick again; `true` if chains arrived meanwhile (do not sleep). A
    /// throttled queue leaves kicks off: its timer wakes it, and its chains stay in the ring.
    pub fn enable_kicks(&mut self) -> bool {
        if self.failed || self.parked.is_some() {
            return false;
        }
        match self.queue.enable_notification(&self.mem) {
            Ok(pending) => pending,
            Err(_) => {
                self.process_failure();
                true
            }
        }
    }

    /// About to sleep: `true` when finished requests already wait (do not sleep).
    pub fn prepare_sleep(&self) -> bool {
        self.scheduler.prepare_sleep()
    }

    /// Whether the disk has limits (`iops=`, `bw=`, `group=`...).
    pub fn is_limited(&self) -> bool {
        self.throttle.is_some()
    }

    /// Whether spinning while requests are in flight can pay off (see
    /// [`Scheduler::spin_in_flight`]).
    pub fn spin_in_flight(&self) -> bool {
        self.scheduler.spin_in_flight()
    }

    /// Whether busy-polling can pay off now (see [`Scheduler::may_poll`]).
    pub fn may_poll(&self) -> bool {
        self.parked.is_none() && self.scheduler.may_poll()
    }

    /// Back from a sleep.
    pub fn woke(&self) {
        self.scheduler.woke();
    }

    /// A kick arrived (through the ioeventfd, or a notify exit).
    pub fn kick_seen(&self) {
        self.observers.metrics.on_kick();
        self.trace.stamp(Stage::KickSeen, NO_HEAD);
    }

    /// Drops the parked request unstarted and takes the queue out of its group's turn order
    /// (where a parked request, or an admission not yet settled, put it).
    fn drop_parked(&mut self) {
        if let Some(job) = self.parked.take() {
            self.free.push(job);
        }
        if let Some(t) = &mut self.throttle {
            t.forget_parked();
        }
    }

    fn process_failure(&mut self) {
        self.failed = true;
        // The broken queue asks its group for nothing any more: it must not hold the turn
        // of the other disks until the reset.
        self.drop_parked();
        self.observers.health.report_needs_reset();
        self.observers.interrupt.notify_config();
    }

    /// Processes until nothing is in flight.
    pub fn process_to_completion(&mut self) {
        loop {
            self.process();
            if self.scheduler.in_flight() == 0 {
                return;
            }
            self.scheduler.wait();
        }
    }

    /// Serves a kick in the caller's thread: everything available, to completion, then
    /// re-enables kicks, going round again if chains slipped in meanwhile.
    pub fn serve_kick(&mut self) {
        self.kick_seen();
        self.resume();
    }

    /// Serves what is available, to completion, then re-enables kicks (unless throttled),
    /// going round again if chains slipped in meanwhile.
    pub fn resume(&mut self) {
        loop {
            self.process_to_completion();
            if !self.enable_kicks() {
                return;
            }
        }
    }

    /// Waits for in-flight requests and completes them, popping nothing new (stop, reset). A
    /// parked request is dropped unstarted: a reset forgets it with the ring.
    pub fn quiesce(&mut self) {
        self.drop_parked();
        while self.scheduler.in_flight() > 0 {
            self.scheduler.wait();
            if self.failed {
                self.retire();
            } else {
                self.reap();
                if self.publish().is_err() {
                    // The rings are gone; the I/O itself is finished, which is all a stop
                    // needs.
                    self.used.clear();
                }
            }
        }
        // Completions taken before a failure and never published.
        if self.failed {
            self.used.clear();
        }
    }
}

/// One line in the device's failure log for a request of queue `index` returned with IOERR.
fn log_failure(failures: &FailureLog, index: u16, u: &Used) {
    match u.failure {
        Some(f) => failures.record(
            format_args!("queue {index}: {f}"),
            std::io::Error::from_raw_os_error(f.errno),
        ),
        None => failures.record(
            format_args!("queue {index}: request (head {})", u.head),
            "I/O error returned to the guest",
        ),
    }
}
