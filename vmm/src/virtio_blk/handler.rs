//! The dataplane: per-queue workers and the threads that run them.
//!
//! A [`QueueWorker`] owns everything one virtqueue needs on the hot path: the queue state
//! ([`Queue`]), its engine (inside [`Executor`]), guest memory and the way to raise its
//! interrupt. At DRIVER_OK the device moves the workers into dataplane threads; nothing on
//! the hot path touches the device's lock. A thread runs one queue (`IoMode::Dataplane`,
//! `IoMode::Workers`) or all of them (`IoMode::Iothread`).
//!
//! One turn of a worker ([`QueueWorker::process`]): reap finished I/O, pop and start every
//! available chain (one `flush_submissions` for the batch), reap again (the sync engine
//! completes inside `submit`), publish the used elements, and make one notification
//! decision for the batch.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtqueue_core::{Queue, QueueError};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{Executor, Used};
use crate::interrupts::MsixVectors;

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

/// One virtqueue's hot-path state.
pub struct QueueWorker {
    index: u16,
    queue: Queue,
    mem: GuestMemoryMmap,
    exec: Executor,
    vectors: Arc<MsixVectors>,
    health: Arc<DeviceHealth>,
    config_source: usize,
    used: Vec<Used>,
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
        exec: Executor,
        vectors: Arc<MsixVectors>,
        health: Arc<DeviceHealth>,
        config_source: usize,
    ) -> Self {
        QueueWorker {
            index,
            queue,
            mem,
            exec,
            vectors,
            health,
            config_source,
            used: Vec::new(),
            failed: false,
        }
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
    pub fn process(&mut self) -> bool {
        if self.failed {
            return false;
        }
        match self.turn() {
            Ok(work) => work,
            Err(_) => {
                self.failed = true;
                self.health.report_needs_reset();
                self.vectors.trigger_source(self.config_source);
                true
            }
        }
    }

    fn turn(&mut self) -> Result<bool, QueueError> {
        let mut work = self.exec.reap(&self.mem, &mut self.used) > 0;
        work |= self.drain_avail()?;
        self.exec.flush_submissions();
        self.exec.reap(&self.mem, &mut self.used);
        self.publish()?;
        Ok(work)
    }

    /// Pops and starts every available chain while the engine has room.
    fn drain_avail(&mut self) -> Result<bool, QueueError> {
        let mut work = false;
        while self.exec.has_room() {
            match self.queue.pop(&self.mem) {
                Ok(None) => break,
                Ok(Some(chain)) => self.exec.start(&self.mem, &chain, &mut self.used),
                // The entry is consumed but the chain is unusable: return it empty
                // (no status byte can be trusted in a chain that failed validation).
                Err(QueueError::BadChain { head, .. }) => self.used.push(Used { head, len: 0 }),
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
        for u in self.used.drain(..) {
            self.queue.push_used(&self.mem, u.head, u.len)?;
        }
        self.queue.publish_used(&self.mem)?;
        if self.queue.needs_notification(&self.mem)? {
            self.vectors.trigger_source(usize::from(self.index));
        }
        Ok(())
    }

    /// Asks the driver not to kick: we are awake and looking at the ring anyway.
    fn disable_kicks(&mut self) {
        if !self.failed && self.queue.set_notification(&self.mem, false).is_err() {
            self.process_failure();
        }
    }

    /// Asks the driver to kick again; `true` if chains arrived meanwhile (do not sleep).
    fn enable_kicks(&mut self) -> bool {
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
            self.exec.reap(&self.mem, &mut self.used);
            if self.publish().is_err() {
                // The rings are gone; the I/O itself is finished, which is all a stop needs.
                self.used.clear();
            }
        }
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
    evt: EventFd,
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

    fn raised(&self) -> bool {
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
                .spawn(move || run_thread(group, &stop, poll_us));
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
        if poller.poll(|| process_all(&mut queues) || stop.raised()) {
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
        let slept = Instant::now();
        let n = epoll.wait(-1, &mut events).unwrap_or(0);
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

fn acknowledge(queues: &[ThreadQueue], tag: u64) {
    if tag == STOP_TAG {
        return;
    }
    let Some(q) = usize::try_from(tag / 2).ok().and_then(|i| queues.get(i)) else {
        return;
    };
    if tag & 1 == 0 {
        // EAGAIN: already drained by an earlier event; nothing to do.
        let _ = q.kick.read();
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
