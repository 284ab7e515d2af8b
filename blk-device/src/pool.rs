//! The worker pool of the `workers` mode: queue services hand parsed requests to worker
//! threads over lock-free channels, and get them back finished.
//!
//! ```text
//!  queue service (one per queue)      pops + parses into a preallocated Box<IoJob>
//!      │ PoolLink::start ─▶ jobs: one bounded crossbeam channel per device (MPMC)
//!      ▼
//!  worker 0 … worker N-1               each an engine and its InFlightTable
//!      │ status written by the worker; job sent home
//!      ▼ done: one bounded channel per queue (+ a doorbell eventfd, rung only when the
//!  queue service                        serving thread sleeps)
//! ```
//!
//! Every job box is allocated once, when the queue starts (one per ring entry: the driver
//! cannot have more chains outstanding than the ring holds), and then only moves between the
//! queue service's free list and the two channels: the hot path allocates nothing.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use backend_raw::Engine;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::inflight::InFlightTable;
use crate::metrics::DeviceMetrics;
use crate::request::IoJob;
use crate::scheduler::Scheduler;
use crate::threads::{ThreadHook, ThreadRole};
use crate::trace::{QueueTrace, Stage};

/// Default pool size: two workers, one per core of a small host.
pub const DEFAULT_WORKERS: usize = 2;

/// Wakes a serving thread sleeping in epoll, without a system call when it is awake.
#[derive(Debug)]
pub struct Doorbell {
    evt: EventFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A doorbell whose serving thread is awake.
    pub fn new() -> std::io::Result<Self> {
        Ok(Doorbell {
            evt: EventFd::new(EFD_NONBLOCK)?,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called by a worker after it sent a completion: writes the eventfd only if the serving
    /// thread announced it is going to sleep (a polling thread sees the channel by itself).
    pub fn ring(&self) {
        // Pairs with the fence in `prepare_sleep`: either the serving thread sees the
        // completion in the channel, or we see its `sleeping` flag (Dekker-style, both SeqCst).
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            let _ = self.evt.write(1);
        }
    }

    fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// The eventfd a sleeping serving thread waits on.
    pub fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    fn drain(&self) {
        let _ = self.evt.read();
    }
}

/// Where a worker sends the finished jobs of one queue.
#[derive(Debug, Clone)]
struct HomeQueue {
    done: Sender<Box<IoJob>>,
    bell: Arc<Doorbell>,
}

/// The worker threads of one device.
#[derive(Debug)]
pub struct WorkerPool {
    jobs: Option<Sender<Box<IoJob>>>,
    threads: Vec<JoinHandle<()>>,
}

/// A queue's end of the pool: the [`Scheduler`] of a queue served in `workers` mode.
#[derive(Debug)]
pub struct PoolLink {
    queue: u16,
    jobs: Sender<Box<IoJob>>,
    done: Receiver<Box<IoJob>>,
    bell: Arc<Doorbell>,
    /// A finished job taken by `wait` and not yet reaped.
    stash: Option<Box<IoJob>>,
    in_flight: usize,
}

impl WorkerPool {
    /// Starts one worker per engine and returns the pool with one link per queue of
    /// `queues` (`(queue index, ring size)`), in the same order. Each worker thread calls
    /// `hook` with [`ThreadRole::Worker`] first (for its seccomp filter). Workers merge
    /// adjacent requests of a batch when `merge`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        engines: Vec<Box<dyn Engine>>,
        merge: bool,
        mem: GuestMemoryMmap,
        queues: &[(u16, u16)],
        traces: Vec<QueueTrace>,
        name: &str,
        hook: &ThreadHook,
        metrics: Option<Arc<DeviceMetrics>>,
    ) -> std::io::Result<(Self, Vec<PoolLink>)> {
        // Bounded by the ring sizes it serves, so a queue service's send never blocks.
        let total: usize = queues.iter().map(|q| usize::from(q.1).max(1)).sum();
        let (tx, rx) = bounded(total.max(1));
        let max = queues.iter().map(|q| usize::from(q.0)).max().unwrap_or(0);
        let mut homes = vec![None; max + 1];
        let mut links = Vec::with_capacity(queues.len());
        for &(queue, size) in queues {
            let (done_tx, done_rx) = bounded(usize::from(size).max(1));
            let bell = Arc::new(Doorbell::new()?);
            if let Some(h) = homes.get_mut(usize::from(queue)) {
                *h = Some(HomeQueue {
                    done: done_tx,
                    bell: bell.clone(),
                });
            }
            links.push(PoolLink {
                queue,
                jobs: tx.clone(),
                done: done_rx,
                bell,
                stash: None,
                in_flight: 0,
            });
        }
        let homes: Arc<[Option<HomeQueue>]> = homes.into();
        let traces: Arc<[QueueTrace]> = traces.into();
        let mut pool = WorkerPool {
            jobs: Some(tx),
            threads: Vec::new(),
        };
        for (i, engine) in engines.into_iter().enumerate() {
            let mut table = InFlightTable::new(engine, merge);
            if let Some(m) = &metrics {
                table = table.recording_threads_in(m.clone());
            }
            let worker = Worker {
                table,
                mem: mem.clone(),
                homes: homes.clone(),
                traces: traces.clone(),
            };
            let (rx, hook) = (rx.clone(), hook.clone());
            let h = std::thread::Builder::new()
                .name(format!("{name}-w{i}"))
                .spawn(move || {
                    hook.run(ThreadRole::Worker);
                    worker.run(&rx)
                });
            match h {
                Ok(h) => pool.threads.push(h),
                Err(e) => {
                    pool.stop();
                    return Err(e);
                }
            }
        }
        Ok((pool, links))
    }

    /// Lets the workers finish once every queue dropped its link, and joins them. Call after
    /// the queue services stopped.
    pub fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The trace of a queue the pool was not told about.
static NO_TRACE: QueueTrace = QueueTrace::disabled();

/// One worker thread: its engine and the jobs in flight on it.
struct Worker {
    table: InFlightTable,
    mem: GuestMemoryMmap,
    homes: Arc<[Option<HomeQueue>]>,
    traces: Arc<[QueueTrace]>,
}

impl Worker {
    fn run(mut self, rx: &Receiver<Box<IoJob>>) {
        loop {
            if self.table.live() == 0 {
                // Idle: block (crossbeam spins briefly, then parks on a futex).
                match rx.recv() {
                    Ok(job) => self.start(job),
                    Err(_) => return,
                }
            }
            // Take what else is queued while the engine has room: one flush for the batch.
            while self.table.has_room() {
                match rx.try_recv() {
                    Ok(job) => self.start(job),
                    Err(_) => break,
                }
            }
            self.table.flush();
            self.reap();
            if self.table.live() > 0 && (rx.is_empty() || !self.table.has_room()) {
                // A job queued meanwhile waits for this completion; another worker may take it.
                self.table.wait();
                self.reap();
            }
        }
    }

    fn trace(&self, queue: u16) -> Option<&QueueTrace> {
        self.traces.get(usize::from(queue))
    }

    fn start(&mut self, job: Box<IoJob>) {
        let trace = self.traces.get(usize::from(job.queue)).unwrap_or(&NO_TRACE);
        if let Some(job) = self.table.start(&self.mem, job, trace) {
            return self.send_home(job);
        }
        // The sync engine completes inside `submit`: answer now, not after the batch.
        self.reap();
    }

    fn reap(&mut self) {
        let (traces, homes) = (&self.traces, &self.homes);
        self.table.reap(
            &self.mem,
            |job, wire| {
                if let Some(t) = traces.get(usize::from(job.queue)) {
                    t.backend_complete(job.head, wire);
                }
            },
            |job| send(homes, job),
        );
    }

    fn send_home(&self, job: Box<IoJob>) {
        if let Some(t) = self.trace(job.queue) {
            t.stamp(Stage::BackendComplete, job.head);
        }
        send(&self.homes, job);
    }
}

/// Sends a finished job to its queue.
fn send(homes: &[Option<HomeQueue>], job: Box<IoJob>) {
    let Some(home) = homes.get(usize::from(job.queue)).and_then(Option::as_ref) else {
        return;
    };
    // The channel holds a whole ring's worth of jobs, so this never blocks; it fails only
    // when the queue service is gone (device stop), and then nobody needs the answer.
    if home.done.send(job).is_ok() {
        home.bell.ring();
    }
}

impl Scheduler for PoolLink {
    fn has_room(&self) -> bool {
        // One job box per ring entry: the queue service cannot pop more than that.
        true
    }

    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        mut job: Box<IoJob>,
        trace: &QueueTrace,
    ) -> Option<Box<IoJob>> {
        job.queue = self.queue;
        // Stamped before the send: a worker may take the job (and stamp BackendSubmit)
        // before `try_send` even returns.
        trace.stamp(Stage::HandedToWorker, job.head);
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.in_flight += 1;
                None
            }
            Err(e) => {
                let mut job = e.into_inner();
                job.fail();
                job.finish(mem);
                Some(job)
            }
        }
    }

    fn flush(&mut self) {}

    fn reap(
        &mut self,
        _mem: &GuestMemoryMmap,
        _trace: &QueueTrace,
        done: &mut dyn FnMut(Box<IoJob>),
    ) -> usize {
        let mut n = 0;
        while let Some(job) = self.stash.take().or_else(|| self.done.try_recv().ok()) {
            self.in_flight = self.in_flight.saturating_sub(1);
            done(job);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn wait(&mut self) {
        while self.stash.is_none() && self.in_flight > 0 {
            match self.done.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => self.stash = Some(job),
                Err(RecvTimeoutError::Timeout) => {}
                // The workers are gone: nothing more will complete.
                Err(RecvTimeoutError::Disconnected) => self.in_flight = 0,
            }
        }
    }

    fn completion_fds(&self) -> [Option<RawFd>; 2] {
        [Some(self.bell.fd()), None]
    }

    fn drain_completion_fds(&self) {
        self.bell.drain();
    }

    /// A serving thread whose jobs are with the workers does not spin: with few cores, a
    /// spinning serving thread takes the CPU the worker needs, and the worker's completion
    /// (or a kick) wakes it anyway.
    fn may_poll(&self) -> bool {
        self.in_flight == 0
    }

    fn prepare_sleep(&self) -> bool {
        self.bell.prepare_sleep();
        let pending = self.stash.is_some() || !self.done.is_empty();
        if pending {
            self.bell.woke();
        }
        pending
    }

    fn woke(&self) {
        self.bell.woke();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Outcome, Used};
    use backend_raw::{Completion, EngineKind, IoOp};
    use blk_proto::MAX_DISCARD_SEGMENTS;
    use proptest::prelude::*;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    /// An engine that completes its in-flight requests in a random order, a random number
    /// at a time, and logs (by disk offset, which the tests set to the chain head) the
    /// order in which it handed completions out.
    struct ShuffleEngine {
        pending: Vec<(u64, u64)>,
        seed: u64,
        cap: usize,
        waited: bool,
        log: Arc<Mutex<Vec<u16>>>,
    }

    impl ShuffleEngine {
        fn next(&mut self) -> u64 {
            // xorshift64
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed
        }
    }

    impl Engine for ShuffleEngine {
        unsafe fn submit(
            &mut self,
            op: IoOp,
            _iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backend_raw::Error> {
            if self.pending.len() >= self.cap {
                return Err(backend_raw::Error::QueueFull { capacity: self.cap });
            }
            let IoOp::Read { offset } = op else {
                unreachable!("tests submit reads")
            };
            self.pending.push((user_data, offset));
            Ok(())
        }
        fn flush_submissions(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
            // Completions appear only after a wait or once a few requests are in flight,
            // so the worker does batch, and the batch completes out of order.
            if self.pending.is_empty() || (!self.waited && self.pending.len() < 4) {
                return 0;
            }
            self.waited = false;
            let n = 1 + (self.next() as usize) % self.pending.len();
            for _ in 0..n {
                let i = (self.next() as usize) % self.pending.len();
                let (user_data, offset) = self.pending.swap_remove(i);
                self.log.lock().unwrap().push(offset as u16);
                out.push(Completion::new(user_data, Ok(0)));
            }
            n
        }
        fn wait(&mut self) -> Result<(), backend_raw::Error> {
            self.waited = true;
            Ok(())
        }
        fn completion_fd(&self) -> Option<RawFd> {
            None
        }
        fn in_flight(&self) -> usize {
            self.pending.len()
        }
        fn capacity(&self) -> usize {
            self.cap
        }
        fn kind(&self) -> EngineKind {
            EngineKind::Sync
        }
    }

    const STATUS_BASE: u64 = 0x1000;

    /// Sends `heads` (one job each) through a pool of `workers` shuffling engines and
    /// collects the used elements in the order the queue's end sees them.
    fn run_pool(
        workers: usize,
        heads: &[u16],
        seed: u64,
    ) -> (Vec<Used>, Vec<u16>, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let size = 256u16;
        let log = Arc::new(Mutex::new(Vec::new()));
        let engines: Vec<Box<dyn Engine>> = (0..workers)
            .map(|i| {
                Box::new(ShuffleEngine {
                    pending: Vec::new(),
                    seed: seed.wrapping_mul(2 * i as u64 + 1) | 1,
                    cap: 8 + MAX_DISCARD_SEGMENTS,
                    waited: false,
                    log: log.clone(),
                }) as Box<dyn Engine>
            })
            .collect();
        let (mut pool, mut links) = WorkerPool::start(
            engines,
            false,
            mem.clone(),
            &[(0, size)],
            vec![QueueTrace::disabled()],
            "test",
            &ThreadHook::none(),
            None,
        )
        .unwrap();
        let mut link = links.pop().unwrap();
        let trace = QueueTrace::disabled();
        for &h in heads {
            let job = IoJob::test_read(0, h, u64::from(h), STATUS_BASE + u64::from(h));
            assert!(
                link.start(&mem, job, &trace).is_none(),
                "handed to the pool"
            );
        }
        let mut used = Vec::new();
        let mut boxes = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while link.in_flight() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "jobs lost: {} missing",
                link.in_flight()
            );
            link.wait();
            link.reap(&mem, &trace, &mut |job| {
                used.push(job.used());
                boxes += 1;
            });
        }
        assert_eq!(boxes, heads.len(), "every job box came home");
        drop(link);
        pool.stop();
        let log = log.lock().unwrap().clone();
        (used, log, mem)
    }

    #[test]
    fn one_worker_publishes_in_completion_order() {
        let heads: Vec<u16> = (0..100).collect();
        let (used, log, mem) = run_pool(1, &heads, 7);
        let order: Vec<u16> = used.iter().map(|u| u.head).collect();
        assert_eq!(order, log, "used order is the engine's completion order");
        assert_ne!(order, heads, "the engine really reordered");
        for u in &used {
            assert_eq!((u.len, u.outcome), (1, Outcome::Ok));
            let mut st = [0xeeu8];
            mem.read_slice(&mut st, GuestAddress(STATUS_BASE + u64::from(u.head)))
                .unwrap();
            assert_eq!(st, [0], "status OK written before the job came back");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the completion order and the number of workers, every job comes back
        /// exactly once (the model: the multiset of heads sent).
        #[test]
        fn no_job_is_lost_or_duplicated(
            workers in 1usize..4,
            n in 1usize..200,
            seed in 1u64..u64::MAX,
        ) {
            let heads: Vec<u16> = (0..n as u16).map(|h| h % 256).collect();
            let heads: Vec<u16> = heads.into_iter().take(256).collect();
            let (used, _, _) = run_pool(workers, &heads, seed);
            let mut got: Vec<u16> = used.iter().map(|u| u.head).collect();
            got.sort_unstable();
            let mut want = heads.clone();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }
}
