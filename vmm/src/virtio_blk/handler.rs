//! The queue threads: per-queue workers and the threads that run them.
//!
//! A [`QueueWorker`] owns everything one virtqueue needs on the hot path: the queue state
//! ([`Queue`]), its [`Backend`] (its own engine inside an [`Executor`], or its end of a
//! worker pool, [`super::pool`]), guest memory and the way to raise its interrupt. At
//! DRIVER_OK the device hands the workers to whoever serves them, per `IoMode`:
//!
//! | mode | who pops | who does the I/O | VM-wide lock | polling |
//! | --- | --- | --- | --- | --- |
//! | `Vcpu` | the vCPU thread, in the MMIO exit ([`QueueWorker::serve_kick`]) | same, sync engine | held by the vCPU | no |
//! | `Iothread` | the one shared loop ([`super::iothread`]) | same, the disk's engine | held per turn | no |
//! | `Dataplane` | a [`Dataplane`] thread per queue | same, the disk's engine | never | adaptive |
//! | `Workers` | a [`Dataplane`] thread per queue | pool workers ([`super::pool`]) | never | adaptive, while nothing is with the pool |
//!
//! One turn of a worker ([`QueueWorker::process`]): reap finished I/O, pop and start every
//! available chain (one `flush_submissions` for the batch), reap again (the sync engine
//! completes inside `submit`), publish the used elements in completion order, and make one
//! notification decision for the batch.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtqueue_core::DescriptorChain;
use virtqueue_core::{Queue, QueueError};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::failure_log::FailureLog;
use super::pool::PoolLink;
use super::request::{Executor, Outcome, Used};
use crate::interrupts::MsixVectors;
use crate::metrics::DeviceMetrics;
use crate::trace::{QueueTrace, Stage, NO_HEAD};

/// Interrupt source index of the device configuration change (queues use their index).
pub fn config_source(num_queues: u16) -> usize {
    usize::from(num_queues)
}

/// What workers report to the device without taking its lock.
#[derive(Debug, Default)]
pub struct DeviceHealth {
    needs_reset: AtomicBool,
}

impl DeviceHealth {
    /// Records a ring-level failure: the device must set DEVICE_NEEDS_RESET.
    pub fn report_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
    }

    /// Takes the DEVICE_NEEDS_RESET request, if any.
    pub fn take_needs_reset(&self) -> bool {
        self.needs_reset.swap(false, Ordering::AcqRel)
    }
}

/// Who runs a queue's I/O: an engine on the queue's own thread, or a worker pool.
#[derive(Debug)]
pub enum Backend {
    /// The queue's thread submits to its own engine (vcpu, iothread, dataplane modes).
    Local(Executor),
    /// The queue's thread hands parsed requests to pool workers (`IoMode::Workers`).
    Pool(PoolLink),
}

impl From<Executor> for Backend {
    fn from(e: Executor) -> Self {
        Backend::Local(e)
    }
}

impl From<PoolLink> for Backend {
    fn from(p: PoolLink) -> Self {
        Backend::Pool(p)
    }
}

impl Backend {
    fn reap(&mut self, mem: &GuestMemoryMmap, used: &mut Vec<Used>) -> usize {
        match self {
            Backend::Local(e) => e.reap(mem, used),
            Backend::Pool(p) => p.reap(used),
        }
    }

    fn has_room(&self) -> bool {
        match self {
            Backend::Local(e) => e.has_room(),
            Backend::Pool(p) => p.has_room(),
        }
    }

    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
        used: &mut Vec<Used>,
        trace: &QueueTrace,
    ) {
        match self {
            Backend::Local(e) => {
                e.start(mem, chain, used, trace);
            }
            Backend::Pool(p) => {
                p.start(mem, chain, used, trace);
            }
        }
    }

    fn flush_submissions(&mut self) {
        if let Backend::Local(e) = self {
            e.flush_submissions();
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            Backend::Local(e) => e.in_flight(),
            Backend::Pool(p) => p.in_flight(),
        }
    }

    fn completion_fd(&self) -> Option<i32> {
        match self {
            Backend::Local(e) => e.completion_fd(),
            Backend::Pool(p) => Some(p.completion_fd()),
        }
    }

    fn drain_completion_fd(&self) {
        match self {
            Backend::Local(e) => e.drain_completion_fd(),
            Backend::Pool(p) => p.drain_completion_fd(),
        }
    }

    fn wait(&mut self) {
        match self {
            Backend::Local(e) => e.wait(),
            Backend::Pool(p) => p.wait(),
        }
    }
}

/// One virtqueue's hot-path state.
pub struct QueueWorker {
    index: u16,
    queue: Queue,
    mem: GuestMemoryMmap,
    exec: Backend,
    trace: QueueTrace,
    metrics: Arc<DeviceMetrics>,
    failures: Arc<FailureLog>,
    vectors: Arc<MsixVectors>,
    health: Arc<DeviceHealth>,
    config_source: usize,
    used: Vec<Used>,
    /// Reused for every pop (no allocation per request).
    chain: DescriptorChain,
    /// When each head was popped, for the latency metric.
    started: Vec<Instant>,
    failed: bool,
}

impl std::fmt::Debug for QueueWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueWorker")
            .field("index", &self.index)
            .field("failed", &self.failed)
            .finish()
    }
}

impl QueueWorker {
    /// A worker for queue `index`, whose interrupt is source `index` of `vectors`.
    pub fn new(
        index: u16,
        queue: Queue,
        mem: GuestMemoryMmap,
        exec: impl Into<Backend>,
        vectors: Arc<MsixVectors>,
        health: Arc<DeviceHealth>,
        config_source: usize,
    ) -> Self {
        let size = queue.size();
        QueueWorker {
            index,
            queue,
            mem,
            exec: exec.into(),
            trace: QueueTrace::disabled(),
            metrics: Arc::new(DeviceMetrics::new("")),
            failures: Arc::new(FailureLog::silent()),
            vectors,
            health,
            config_source,
            used: Vec::with_capacity(usize::from(size)),
            chain: DescriptorChain::new(),
            started: vec![Instant::now(); usize::from(size)],
            failed: false,
        }
    }

    /// Stamps this queue's stages into `trace` and counts its requests in `metrics`.
    pub fn with_observers(mut self, trace: QueueTrace, metrics: Arc<DeviceMetrics>) -> Self {
        self.trace = trace;
        self.metrics = metrics;
        self
    }

    /// Logs this queue's failed requests in `failures` (the device's log).
    pub fn with_failure_log(mut self, failures: Arc<FailureLog>) -> Self {
        self.failures = failures;
        self
    }

    /// The queue's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue state (tests, diagnostics).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The engine's completion eventfd, if it has one.
    pub fn completion_fd(&self) -> Option<i32> {
        self.exec.completion_fd()
    }

    /// Requests handed to the engine and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.exec.in_flight()
    }

    /// One turn: reap, drain the avail ring, publish, notify. Returns whether anything
    /// happened. A ring-level failure stops the queue for good and asks for a device reset
    /// (2.1.2 "Device Status Field": DEVICE_NEEDS_RESET).
    ///
    /// Once failed, a turn only retires the requests still in flight (`retire`):
    /// their I/O finishes and their buffers (engine slots, pool jobs) come back, but
    /// nothing is published to the broken ring any more.
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

    /// After a ring failure: reaps what finished and drops its used elements (the ring
    /// cannot be trusted, 2.1.2 "Device Status Field": the driver must reset the device,
    /// which forgets every request). Returns whether anything was reaped.
    fn retire(&mut self) -> bool {
        let reaped = self.reap() > 0;
        self.used.clear();
        reaped
    }

    fn turn(&mut self) -> Result<bool, QueueError> {
        let mut work = self.reap() > 0;
        work |= self.drain_avail()?;
        self.exec.flush_submissions();
        self.reap();
        self.publish()?;
        Ok(work)
    }

    /// Takes finished requests into `used` (in completion order).
    fn reap(&mut self) -> usize {
        let before = self.used.len();
        let n = self.exec.reap(&self.mem, &mut self.used);
        if matches!(self.exec, Backend::Local(_)) {
            for u in self.used.get(before..).unwrap_or(&[]) {
                self.trace.stamp(Stage::BackendComplete, u.head);
            }
        }
        n
    }

    /// Pops and starts every available chain while the engine has room.
    fn drain_avail(&mut self) -> Result<bool, QueueError> {
        let mut work = false;
        while self.exec.has_room() {
            match self.queue.pop_into(&self.mem, &mut self.chain) {
                Ok(false) => break,
                Ok(true) => {
                    let head = self.chain.head_index();
                    self.trace.stamp(Stage::Popped, head);
                    if let Some(t) = self.started.get_mut(usize::from(head)) {
                        *t = Instant::now();
                    }
                    self.exec
                        .start(&self.mem, &self.chain, &mut self.used, &self.trace);
                }
                // The entry is consumed but the chain is unusable: return it empty
                // (no status byte can be trusted in a chain that failed validation).
                Err(QueueError::BadChain { head, .. }) => self.used.push(Used::invalid(head, 0)),
                Err(e) => return Err(e),
            }
            work = true;
        }
        Ok(work)
    }

    /// Publishes the completed chains and raises the interrupt if the driver wants one.
    fn publish(&mut self) -> Result<(), QueueError> {
        if self.used.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        for u in self.used.drain(..) {
            self.queue.push_used(&self.mem, u.head, u.len)?;
            self.trace.stamp(Stage::UsedPublished, u.head);
            match u.outcome {
                Outcome::Invalid => self.metrics.on_error(),
                outcome => {
                    if outcome == Outcome::Failed {
                        log_failure(&self.failures, self.index, &u);
                    }
                    let started = self.started.get(usize::from(u.head)).copied();
                    let ns = started.map_or(0, |t| now.saturating_duration_since(t).as_nanos());
                    let ns = u64::try_from(ns).unwrap_or(u64::MAX);
                    self.metrics
                        .on_complete(u64::from(u.bytes), outcome == Outcome::Ok, ns);
                }
            }
        }
        self.queue.publish_used(&self.mem)?;
        // One notification decision for the whole batch (2.7.10 "Used Buffer Notification
        // Suppression": with EVENT_IDX, only when used_event was crossed).
        if self.queue.needs_notification(&self.mem)? {
            self.vectors.trigger_source(usize::from(self.index));
            self.metrics.on_interrupt();
            self.trace.stamp(Stage::IrqInjected, NO_HEAD);
        }
        Ok(())
    }

    /// Asks the driver not to kick: we are awake and looking at the ring anyway.
    pub(super) fn disable_kicks(&mut self) {
        if !self.failed && self.queue.set_notification(&self.mem, false).is_err() {
            self.process_failure();
        }
    }

    /// Asks the driver to kick again; `true` if chains arrived meanwhile (do not sleep).
    pub(super) fn enable_kicks(&mut self) -> bool {
        if self.failed {
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

    /// About to sleep in epoll: a pool handler raises its doorbell flag. Returns `true` when
    /// completions already arrived (do not sleep).
    fn prepare_sleep(&self) -> bool {
        match &self.exec {
            Backend::Pool(p) => p.prepare_sleep(),
            Backend::Local(_) => false,
        }
    }

    /// Whether busy-polling can pay off now. A pool handler whose jobs are with the
    /// workers does not spin: on 2 cores, with the vCPU spinning on its completion, a third
    /// spinning thread takes the CPU the worker needs (measured, QD1 under load: p50 ~200 us
    /// with the handler spinning, ~120 us sleeping on the doorbell; yielding between looks
    /// was worse still, ~4 ms, as the CPU went to other processes). Sleeping frees a core
    /// for the worker, and the worker's completion (or a kick) wakes the handler.
    fn may_poll(&self) -> bool {
        match &self.exec {
            Backend::Pool(p) => p.in_flight() == 0,
            Backend::Local(_) => true,
        }
    }

    /// Back from epoll.
    fn woke(&self) {
        if let Backend::Pool(p) = &self.exec {
            p.woke();
        }
    }

    /// A kick arrived through the ioeventfd (or an MMIO exit).
    fn kick_seen(&self) {
        self.metrics.on_kick();
        self.trace.stamp(Stage::KickSeen, NO_HEAD);
    }

    fn process_failure(&mut self) {
        self.failed = true;
        self.health.report_needs_reset();
        self.vectors.trigger_source(self.config_source);
    }

    /// Processes until nothing is in flight: the vcpu-thread mode and the final drain at stop.
    pub fn process_to_completion(&mut self) {
        loop {
            self.process();
            if self.exec.in_flight() == 0 {
                return;
            }
            self.exec.wait();
        }
    }

    /// Serves a kick in the caller's thread (`IoMode::Vcpu`): everything available, to
    /// completion, then re-enables kicks, going round again if chains slipped in meanwhile.
    pub fn serve_kick(&mut self) {
        self.kick_seen();
        loop {
            self.process_to_completion();
            if !self.enable_kicks() {
                return;
            }
        }
    }

    /// Waits for in-flight requests and completes them, popping nothing new (stop, reset).
    pub fn quiesce(&mut self) {
        while self.exec.in_flight() > 0 {
            self.exec.wait();
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

/// Adaptive busy-polling before sleeping.
///
/// Waking a sleeping thread costs ~17 us on these machines (PLATFORM.md), a third of a disk
/// read, and a kick through a sleeping thread makes a request round trip ~14 us against
/// ~2.6 us with a spinning one. So before sleeping the thread spins on the avail ring and
/// the engine's completions for a window of at most `poll_us`. As QEMU's `poll-max-ns`
/// does, the window adapts to the load: after a sleep shorter than the maximum window, a
/// longer window would have caught the work without the wake-up, so it doubles; after a
/// longer sleep, polling was wasted CPU (and with 2 cores, CPU stolen from the vcpu), so it
/// halves. `poll_us = 0` never polls.
#[derive(Debug, Clone, Copy)]
pub struct AdaptivePoll {
    max: Duration,
    window: Duration,
}

/// The default maximum polling window (`--poll-us`), in microseconds: 10.
///
/// Measured on the 2-core machine (4 KiB O_DIRECT random reads, guest polling its used ring
/// in ring 3, medians of 3 runs of 3 s, `--poll-us` 0/10/25/50/100): QD1 IOPS for dataplane
/// 4482/3823/2417/3210/1349 and for workers 1817/3006/1832/1151/944; 100 us was the worst
/// for both. A window must cover the guest's think time between seeing a completion and
/// kicking the next request (a few us in ring 3), which saves the ~17 us wake-up; it must
/// not try to cover a disk read (~40-80 us), because on 2 cores the vCPU spins on one and a
/// long-polling thread on the other takes the CPU the kernel's completion work and the
/// pool's workers need. The window adapts below this maximum ([`AdaptivePoll`]).
pub const DEFAULT_POLL_US: u32 = 10;

/// Smallest window once polling is on: below this a poll cannot even see a kick.
const MIN_POLL_WINDOW: Duration = Duration::from_micros(1);

impl AdaptivePoll {
    /// A poller whose window may grow to `poll_us` microseconds; it starts at the maximum.
    pub fn new(poll_us: u32) -> Self {
        let max = Duration::from_micros(u64::from(poll_us));
        AdaptivePoll { max, window: max }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Calls `find_work` until it returns `true` or the window ends; returns whether it found work.
    pub fn poll(&mut self, mut find_work: impl FnMut() -> bool) -> bool {
        if self.max.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            if find_work() {
                return true;
            }
            if start.elapsed() >= self.window {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Adapts the window to a sleep of `slept` after a poll that found nothing.
    pub fn after_sleep(&mut self, slept: Duration) {
        if self.max.is_zero() {
            return;
        }
        self.window = if slept <= self.max {
            (self.window * 2).min(self.max)
        } else {
            (self.window / 2).max(MIN_POLL_WINDOW)
        };
    }
}

/// Tells dataplane threads to finish: a flag plus an eventfd to wake them from epoll.
#[derive(Debug)]
pub struct StopSignal {
    stop: AtomicBool,
    pub(super) evt: EventFd,
}

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            stop: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Raises the signal.
    pub fn raise(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.evt.write(1);
    }

    pub(super) fn raised(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A worker as handed to a thread, with its kick eventfd (a duplicate of the ioeventfd).
#[derive(Debug)]
pub struct ThreadQueue {
    /// The queue's worker.
    pub worker: QueueWorker,
    /// Readable when the guest kicks this queue.
    pub kick: EventFd,
}

/// Running dataplane threads.
#[derive(Debug)]
pub struct Dataplane {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<Vec<QueueWorker>>>,
}

impl Dataplane {
    /// Starts one thread per group of queues.
    pub fn start(groups: Vec<Vec<ThreadQueue>>, poll_us: u32, name: &str) -> std::io::Result<Self> {
        let stop = Arc::new(StopSignal::new()?);
        let mut dp = Dataplane {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (i, group) in groups.into_iter().enumerate() {
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-q{i}"))
                .spawn(move || {
                    crate::seccomp::apply_thread(crate::seccomp::ThreadKind::Device);
                    run_thread(group, &stop, poll_us)
                });
            match handle {
                Ok(h) => dp.threads.push(h),
                Err(e) => {
                    dp.stop();
                    return Err(e);
                }
            }
        }
        Ok(dp)
    }

    /// Stops the threads after their in-flight requests complete and joins them; returns the workers.
    pub fn stop(&mut self) -> Vec<QueueWorker> {
        self.stop.raise();
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .flatten()
            .collect()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// epoll tags: the stop eventfd, then per queue `2 * i` (kick) and `2 * i + 1` (completions).
const STOP_TAG: u64 = u64::MAX;

fn run_thread(mut queues: Vec<ThreadQueue>, stop: &StopSignal, poll_us: u32) -> Vec<QueueWorker> {
    // Without epoll the thread still serves the queues, by polling; it just never sleeps.
    let epoll = register_fds(&queues, stop).ok();
    let mut poller = AdaptivePoll::new(poll_us);
    let mut events = vec![EpollEvent::default(); 2 * queues.len() + 1];
    while !stop.raised() {
        if process_all(&mut queues) {
            continue;
        }
        if queues.iter().all(|q| q.worker.may_poll())
            && poller.poll(|| process_all(&mut queues) || stop.raised())
        {
            continue;
        }
        if queues
            .iter_mut()
            .fold(false, |pending, q| q.worker.enable_kicks() | pending)
        {
            queues.iter_mut().for_each(|q| q.worker.disable_kicks());
            continue;
        }
        let Some(epoll) = epoll.as_ref() else {
            continue;
        };
        if queues
            .iter()
            .fold(false, |pending, q| q.worker.prepare_sleep() | pending)
        {
            queues.iter_mut().for_each(|q| {
                q.worker.woke();
                q.worker.disable_kicks()
            });
            continue;
        }
        let slept = Instant::now();
        let n = epoll.wait(-1, &mut events).unwrap_or(0);
        queues.iter().for_each(|q| q.worker.woke());
        poller.after_sleep(slept.elapsed());
        for ev in events.iter().take(n) {
            acknowledge(&queues, ev.data());
        }
        queues.iter_mut().for_each(|q| q.worker.disable_kicks());
    }
    queues
        .into_iter()
        .map(|mut q| {
            q.worker.quiesce();
            q.worker
        })
        .collect()
}

fn process_all(queues: &mut [ThreadQueue]) -> bool {
    queues
        .iter_mut()
        .fold(false, |work, q| q.worker.process() | work)
}

/// Clears the readiness epoll reported for `tag` (see [`register_fds`]).
pub(super) fn acknowledge(queues: &[ThreadQueue], tag: u64) {
    if tag == STOP_TAG {
        return;
    }
    let Some(q) = usize::try_from(tag / 2).ok().and_then(|i| queues.get(i)) else {
        return;
    };
    acknowledge_one(q, tag);
}

/// Clears the readiness of one queue's kick (even `tag`) or completion fd (odd `tag`).
pub(super) fn acknowledge_one(q: &ThreadQueue, tag: u64) {
    if tag & 1 == 0 {
        // EAGAIN: already drained by an earlier event; nothing to do.
        if q.kick.read().is_ok() {
            q.worker.kick_seen();
        }
    } else {
        q.worker.exec.drain_completion_fd();
    }
}

fn register_fds(queues: &[ThreadQueue], stop: &StopSignal) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    let add = |fd: i32, tag: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, tag),
        )
    };
    add(stop.evt.as_raw_fd(), STOP_TAG)?;
    for (i, q) in queues.iter().enumerate() {
        let i = i as u64;
        add(q.kick.as_raw_fd(), 2 * i)?;
        if let Some(fd) = q.worker.completion_fd() {
            add(fd, 2 * i + 1)?;
        }
    }
    Ok(epoll)
}
