//! `IoMode::Workers`: queue handlers pop and parse, a pool of worker threads does the I/O.
//!
//! ```text
//!  guest kick ──ioeventfd──▶ queue handler (one thread per queue, polls, no VM lock)
//!                              │ pop + parse into a preallocated Box<IoJob>
//!                              ▼ jobs: crossbeam bounded channel (MPMC, one per device)
//!                           worker 0 … worker N-1 (each its own engine on the disk)
//!                              │ status byte written by the worker, job sent back
//!                              ▼ done: one bounded channel per queue (+ a doorbell eventfd,
//!                                rung only when the handler sleeps)
//!  guest ◀──irqfd── queue handler: used ring in completion order, one EVENT_IDX decision
//!                   per batch of completions
//! ```
//!
//! Every job box is allocated once, when the queue starts (one per ring entry: the driver
//! cannot have more chains outstanding than the ring holds), and then only moves between
//! the handler's free list and the two channels: the hot path allocates nothing.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use backend_raw::{Completion, Engine};
use blk_proto::MAX_DISCARD_SEGMENTS;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use virtqueue_core::DescriptorChain;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{IoJob, Outcome, RequestParser, Used};
use crate::trace::{QueueTrace, Stage};

/// Default pool size: two workers, one per core of these machines.
///
/// Each worker owns an io_uring engine (the disk's `engine=`, io_uring by default): it
/// submits every job it can take in one batch and waits for the first completion, so a few
/// workers keep many requests in flight. Measured (QD32 4 KiB random reads, medians of 3):
/// 1 worker 17.5k IOPS, 2 workers 27.6k, 4 workers 37.3k (range 19.8k-47.2k, a loaded
/// machine); the sync engine (one preadv per worker at a time) 11.3k with 2 workers, and at
/// QD1 1.2k against 2.7k for io_uring. More workers than cores only pay off at high queue
/// depth, where `--workers 4` helps; 2 keeps QD1 wake-ups on idle cores.
pub const DEFAULT_WORKERS: usize = 2;

/// Wakes a queue handler sleeping in epoll, without a system call when it is awake.
#[derive(Debug)]
pub struct Doorbell {
    evt: EventFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A doorbell whose handler is awake.
    pub fn new() -> std::io::Result<Self> {
        Ok(Doorbell {
            evt: EventFd::new(EFD_NONBLOCK)?,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called by a worker after it sent a completion: writes the eventfd only if the handler
    /// announced it is going to sleep (a polling handler sees the channel by itself).
    pub fn ring(&self) {
        // Pairs with the fence in `prepare_sleep`: either the handler sees the completion in
        // the channel, or we see its `sleeping` flag (Dekker-style, both SeqCst).
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

    /// The eventfd a sleeping handler waits on.
    pub fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    fn drain(&self) {
        let _ = self.evt.read();
    }
}

/// The jobs channel of one device's pool.
#[derive(Debug)]
pub struct JobQueue {
    tx: Sender<Box<IoJob>>,
    rx: Receiver<Box<IoJob>>,
}

/// Where a worker sends the jobs of one queue back.
#[derive(Debug, Clone)]
pub struct Route {
    done: Sender<Box<IoJob>>,
    bell: Arc<Doorbell>,
}

/// The worker threads of one device.
#[derive(Debug)]
pub struct WorkerPool {
    jobs: Option<Sender<Box<IoJob>>>,
    threads: Vec<JoinHandle<()>>,
}

/// A queue's end of the pool: what its handler holds.
#[derive(Debug)]
pub struct PoolLink {
    queue: u16,
    parser: RequestParser,
    /// Boxes, not values: the box is what travels through the channels without copying.
    #[allow(clippy::vec_box)]
    free: Vec<Box<IoJob>>,
    jobs: Sender<Box<IoJob>>,
    done: Receiver<Box<IoJob>>,
    bell: Arc<Doorbell>,
    /// A completion taken by `wait` and not yet reaped.
    stash: Option<Box<IoJob>>,
    in_flight: usize,
}

/// Builds the per-queue ends: `(queue index, ring size)` for each queue, `segments` iovecs
/// of room per job. Returns the links (same order) and the routes, indexed by queue.
pub fn links(
    queues: &[(u16, u16)],
    parser: &RequestParser,
    segments: usize,
    jobs: &JobQueue,
) -> std::io::Result<(Vec<PoolLink>, Vec<Option<Route>>)> {
    let mut links = Vec::with_capacity(queues.len());
    let max = queues.iter().map(|q| usize::from(q.0)).max().unwrap_or(0);
    let mut routes = vec![None; max + 1];
    for &(queue, size) in queues {
        let size = usize::from(size).max(1);
        let (done_tx, done_rx) = bounded(size);
        let bell = Arc::new(Doorbell::new()?);
        if let Some(r) = routes.get_mut(usize::from(queue)) {
            *r = Some(Route {
                done: done_tx,
                bell: bell.clone(),
            });
        }
        links.push(PoolLink {
            queue,
            parser: parser.clone(),
            free: (0..size).map(|_| IoJob::with_capacity(segments)).collect(),
            jobs: jobs.tx.clone(),
            done: done_rx,
            bell,
            stash: None,
            in_flight: 0,
        });
    }
    Ok((links, routes))
}

impl WorkerPool {
    /// The jobs channel a pool will read, bounded by `capacity` (the sum of the ring
    /// sizes it serves, so a handler's send never blocks).
    pub fn channel(capacity: usize) -> std::io::Result<JobQueue> {
        let (tx, rx) = bounded(capacity.max(1));
        Ok(JobQueue { tx, rx })
    }

    /// Starts one worker per engine, reading `jobs` and answering through `routes`.
    pub fn start(
        engines: Vec<Box<dyn Engine>>,
        mem: GuestMemoryMmap,
        jobs: JobQueue,
        routes: Vec<Option<Route>>,
        traces: Vec<QueueTrace>,
        name: &str,
    ) -> std::io::Result<Self> {
        let routes: Arc<[Option<Route>]> = routes.into();
        let traces: Arc<[QueueTrace]> = traces.into();
        let mut pool = WorkerPool {
            jobs: Some(jobs.tx),
            threads: Vec::new(),
        };
        for (i, engine) in engines.into_iter().enumerate() {
            let (rx, mem, routes, traces) =
                (jobs.rx.clone(), mem.clone(), routes.clone(), traces.clone());
            let worker = Worker::new(engine, mem, routes, traces);
            let h = std::thread::Builder::new()
                .name(format!("{name}-w{i}"))
                .spawn(move || {
                    crate::seccomp::apply_thread(crate::seccomp::ThreadKind::Worker);
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
        Ok(pool)
    }

    /// Lets the workers finish once every handler dropped its link, and joins them. Call
    /// after the queue handlers stopped.
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

/// An engine tag: the slot in the low 32 bits, the slot's generation in the high 32.
///
/// The generation changes every time the slot is given to a new job, so a completion that
/// does not belong to the job now in the slot (a duplicate, or one left over from the
/// slot's previous job) cannot complete that job early: it is counted and dropped.
fn tag(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (slot as u64 & 0xffff_ffff)
}

/// The `(slot, generation)` of an engine tag.
fn untag(user_data: u64) -> (usize, u32) {
    ((user_data & 0xffff_ffff) as usize, (user_data >> 32) as u32)
}

/// A job slot of a worker: the job in flight there, and the slot's generation.
#[derive(Default)]
struct Slot {
    job: Option<Box<IoJob>>,
    generation: u32,
}

/// One worker thread's state: its engine and the jobs it has in flight (slot = user_data).
struct Worker {
    engine: Box<dyn Engine>,
    mem: GuestMemoryMmap,
    routes: Arc<[Option<Route>]>,
    traces: Arc<[QueueTrace]>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    completions: Vec<Completion>,
    live: usize,
    /// Completions whose tag named no job in flight (see [`tag`]); reported once.
    stale: u64,
}

impl Worker {
    fn new(
        engine: Box<dyn Engine>,
        mem: GuestMemoryMmap,
        routes: Arc<[Option<Route>]>,
        traces: Arc<[QueueTrace]>,
    ) -> Self {
        let cap = engine.capacity();
        Worker {
            engine,
            mem,
            routes,
            traces,
            slots: (0..cap).map(|_| Slot::default()).collect(),
            free: (0..cap).rev().collect(),
            completions: Vec::with_capacity(cap),
            live: 0,
            stale: 0,
        }
    }

    fn has_room(&self) -> bool {
        self.engine.in_flight() + MAX_DISCARD_SEGMENTS <= self.engine.capacity()
            && !self.free.is_empty()
    }

    fn run(mut self, rx: &Receiver<Box<IoJob>>) {
        loop {
            if self.live == 0 {
                // Idle: block (crossbeam spins briefly, then parks on a futex).
                match rx.recv() {
                    Ok(job) => self.start(job),
                    Err(_) => return,
                }
            }
            // Take what else is queued while the engine has room: one flush for the batch.
            while self.has_room() {
                match rx.try_recv() {
                    Ok(job) => self.start(job),
                    Err(_) => break,
                }
            }
            self.engine.flush_submissions().ok();
            self.reap();
            if self.live > 0 && (rx.is_empty() || !self.has_room()) {
                // A job queued meanwhile waits for this completion; with two workers the
                // other one takes it. (Waking on either a completion or a new job through
                // epoll was tried and reverted after an intermittent cross-request mix-up
                // under load; that mix-up was later traced to the io_modes tests giving two
                // parallel VMs the same image file, so the epoll design was not at fault.)
                let _ = self.engine.wait();
                self.reap();
            }
        }
    }

    fn trace(&self, job: &IoJob, stage: Stage) {
        if let Some(t) = self.traces.get(usize::from(job.queue)) {
            t.stamp(stage, job.head);
        }
    }

    fn start(&mut self, mut job: Box<IoJob>) {
        let Some(slot) = self.free.pop() else {
            // Cannot happen (has_room gates the take); fail the job rather than lose it.
            job.fail();
            return self.complete(job);
        };
        let Some(entry) = self.slots.get_mut(slot) else {
            job.fail();
            return self.complete(job);
        };
        entry.generation = entry.generation.wrapping_add(1);
        let user_data = tag(slot, entry.generation);
        self.trace(&job, Stage::BackendSubmit);
        if job.submit_to(self.engine.as_mut(), user_data) == 0 {
            self.free.push(slot);
            return self.complete(job);
        }
        if let Some(entry) = self.slots.get_mut(slot) {
            entry.job = Some(job);
            self.live += 1;
        }
        // The sync engine completes inside `submit`: answer now, not after the batch.
        self.reap();
    }

    fn reap(&mut self) {
        self.completions.clear();
        if self.engine.reap(&mut self.completions) == 0 {
            return;
        }
        for i in 0..self.completions.len() {
            let Some(c) = self.completions.get(i).copied() else {
                break;
            };
            let (slot, generation) = untag(c.user_data);
            let Some(entry) = self
                .slots
                .get_mut(slot)
                .filter(|e| e.job.is_some() && e.generation == generation)
            else {
                self.on_stale(c.user_data);
                continue;
            };
            let last = entry.job.as_mut().is_some_and(|j| j.complete_op(c.result));
            if last {
                if let Some(job) = entry.job.take() {
                    self.free.push(slot);
                    self.live -= 1;
                    self.complete(job);
                }
            }
        }
    }

    /// A completion for no job in flight: an engine bug. Dropped (completing whatever job
    /// holds the slot now would return it to the guest before its I/O is done).
    fn on_stale(&mut self, user_data: u64) {
        self.stale += 1;
        if self.stale == 1 {
            eprintln!(
                "virtio-blk worker: dropped a completion for no request in flight (tag {user_data:#x})"
            );
        }
    }

    /// Writes the status byte and sends the job home.
    fn complete(&mut self, mut job: Box<IoJob>) {
        self.trace(&job, Stage::BackendComplete);
        job.finish(&self.mem);
        let Some(route) = self
            .routes
            .get(usize::from(job.queue))
            .and_then(Option::as_ref)
        else {
            return;
        };
        // The channel holds a whole ring's worth of jobs, so this never blocks; it fails
        // only when the handler is gone (device stop), and then nobody needs the answer.
        if route.done.send(job).is_ok() {
            route.bell.ring();
        }
    }
}

impl PoolLink {
    /// Takes the finished jobs: their used elements go to `used`. Returns how many.
    pub fn reap(&mut self, used: &mut Vec<Used>) -> usize {
        let mut n = 0;
        if let Some(job) = self.stash.take() {
            self.finished(job, used);
            n += 1;
        }
        while let Ok(job) = self.done.try_recv() {
            self.finished(job, used);
            n += 1;
        }
        n
    }

    fn finished(&mut self, job: Box<IoJob>, used: &mut Vec<Used>) {
        used.push(Used {
            head: job.head,
            len: job.used_len,
            bytes: if job.outcome == Outcome::Ok {
                job.bytes()
            } else {
                0
            },
            outcome: job.outcome,
            failure: job.failure,
        });
        self.free.push(job);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Whether a chain can be popped now.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Jobs with the workers.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Parses `chain` and hands it to the pool; a request that finished at once goes to
    /// `used`. Returns `true` when a worker got it.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
        used: &mut Vec<Used>,
        trace: &QueueTrace,
    ) -> bool {
        let Some(mut job) = self.free.pop() else {
            // Cannot happen (one job per ring entry, and `has_room` gates the pop); return
            // the chain unused rather than lose it.
            used.push(Used::invalid(chain.head_index(), 0));
            return false;
        };
        if let Some(done) = self.parser.prepare(mem, chain, &mut job) {
            used.push(done);
            self.free.push(job);
            return false;
        }
        trace.stamp(Stage::Parsed, job.head);
        job.queue = self.queue;
        // Stamped before the send: a worker may take the job (and stamp BackendSubmit)
        // before `try_send` even returns.
        trace.stamp(Stage::HandedToWorker, job.head);
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.in_flight += 1;
                true
            }
            Err(e) => {
                let mut job = e.into_inner();
                job.fail();
                used.push(job.finish(mem));
                self.free.push(job);
                false
            }
        }
    }

    /// Blocks until a finished job can be reaped (or nothing is in flight).
    pub fn wait(&mut self) {
        while self.stash.is_none() && self.in_flight > 0 {
            match self.done.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => self.stash = Some(job),
                Err(RecvTimeoutError::Timeout) => {}
                // The workers are gone: nothing more will complete.
                Err(RecvTimeoutError::Disconnected) => self.in_flight = 0,
            }
        }
    }

    /// The doorbell's eventfd, for epoll.
    pub fn completion_fd(&self) -> RawFd {
        self.bell.fd()
    }

    /// Clears the doorbell after epoll reported it.
    pub fn drain_completion_fd(&self) {
        self.bell.drain();
    }

    /// Announces a sleep; returns `true` if completions are already waiting (do not sleep).
    pub fn prepare_sleep(&self) -> bool {
        self.bell.prepare_sleep();
        let pending = self.stash.is_some() || !self.done.is_empty();
        if pending {
            self.bell.woke();
        }
        pending
    }

    /// The handler is awake again.
    pub fn woke(&self) {
        self.bell.woke();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_raw::{EngineKind, IoOp};
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
                out.push(Completion {
                    user_data,
                    result: Ok(0),
                });
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
    /// collects the used elements in the order the handler sees them.
    fn run_pool(
        workers: usize,
        heads: &[u16],
        seed: u64,
    ) -> (Vec<Used>, Vec<u16>, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let size = 256u16;
        let jobs = WorkerPool::channel(usize::from(size)).unwrap();
        let parser = RequestParser::new(blk_proto::DeviceLimits::new(1 << 20), "t");
        let (mut links, routes) = links(&[(0, size)], &parser, 4, &jobs).unwrap();
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
        let mut pool = WorkerPool::start(
            engines,
            mem.clone(),
            jobs,
            routes,
            vec![QueueTrace::disabled()],
            "test",
        )
        .unwrap();
        let mut link = links.pop().unwrap();
        for &h in heads {
            let mut job = link.free.pop().expect("a free job per ring entry");
            *job = *IoJob::test_read(0, h, u64::from(h), STATUS_BASE + u64::from(h));
            link.jobs.send(job).unwrap();
            link.in_flight += 1;
        }
        let mut used = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while link.in_flight() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "jobs lost: {} missing",
                link.in_flight()
            );
            link.wait();
            link.reap(&mut used);
        }
        assert_eq!(
            link.free.len(),
            usize::from(size),
            "every job box came home"
        );
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

    /// An engine that completes in submission order, one per reap, and after each
    /// completion hands the same completion out once more on the next reap (a duplicate);
    /// it records (by disk offset, set to the chain head) which requests really finished.
    struct DuplicatingEngine {
        pending: std::collections::VecDeque<(u64, u64)>,
        duplicate: Option<u64>,
        done: Arc<Mutex<Vec<u16>>>,
    }

    impl Engine for DuplicatingEngine {
        unsafe fn submit(
            &mut self,
            op: IoOp,
            _iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backend_raw::Error> {
            let IoOp::Read { offset } = op else {
                unreachable!("tests submit reads")
            };
            self.pending.push_back((user_data, offset));
            Ok(())
        }
        fn flush_submissions(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
            if let Some(user_data) = self.duplicate.take() {
                out.push(Completion {
                    user_data,
                    result: Ok(0),
                });
                return 1;
            }
            let Some((user_data, offset)) = self.pending.pop_front() else {
                return 0;
            };
            self.done.lock().unwrap().push(offset as u16);
            out.push(Completion {
                user_data,
                result: Ok(0),
            });
            self.duplicate = Some(user_data);
            1
        }
        fn wait(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn completion_fd(&self) -> Option<RawFd> {
            None
        }
        fn in_flight(&self) -> usize {
            self.pending.len()
        }
        fn capacity(&self) -> usize {
            4 + MAX_DISCARD_SEGMENTS
        }
        fn kind(&self) -> EngineKind {
            EngineKind::Sync
        }
    }

    /// A completion handed out twice, after its slot went to the next job, must not
    /// complete that next job: a job comes back once, and only after its own I/O. Drives a
    /// `Worker` step by step (no thread), so the check is exact.
    #[test]
    fn a_duplicate_completion_does_not_complete_the_next_job_of_its_slot() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let size = 64u16;
        let jobs = WorkerPool::channel(usize::from(size)).unwrap();
        let parser = RequestParser::new(blk_proto::DeviceLimits::new(1 << 20), "t");
        let (mut links, routes) = links(&[(0, size)], &parser, 4, &jobs).unwrap();
        let mut link = links.pop().unwrap();
        let done = Arc::new(Mutex::new(Vec::new()));
        let engine = Box::new(DuplicatingEngine {
            pending: Default::default(),
            duplicate: None,
            done: done.clone(),
        });
        let mut worker = Worker::new(
            engine,
            mem,
            routes.into(),
            vec![QueueTrace::disabled()].into(),
        );
        let mut returned = Vec::new();
        let mut check = |link: &mut PoolLink, step: &str| {
            let mut used = Vec::new();
            link.reap(&mut used);
            let finished = done.lock().unwrap().clone();
            for u in used {
                assert!(
                    finished.contains(&u.head),
                    "{step}: head {} came back before its I/O finished",
                    u.head
                );
                returned.push(u.head);
            }
        };
        for h in 0..size {
            let mut job = link.free.pop().expect("a free job per ring entry");
            *job = *IoJob::test_read(0, h, u64::from(h), STATUS_BASE + u64::from(h));
            link.in_flight += 1;
            while !worker.has_room() {
                worker.reap();
                check(&mut link, &format!("room for {h}"));
            }
            // `start` reaps once: alternately a real completion and the duplicate of the
            // previous one, which then names the slot this job was just given.
            worker.start(job);
            check(&mut link, &format!("start {h}"));
        }
        for i in 0..2 * usize::from(size) {
            worker.reap();
            check(&mut link, &format!("final reap {i}"));
        }
        returned.sort_unstable();
        assert_eq!(
            returned,
            (0..size).collect::<Vec<_>>(),
            "each job back once"
        );
        assert!(worker.stale > 0, "the engine did hand out duplicates");
    }

    #[test]
    fn a_failed_send_fails_the_request_instead_of_losing_it() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let jobs = WorkerPool::channel(4).unwrap();
        let parser = RequestParser::new(blk_proto::DeviceLimits::new(1 << 20), "t");
        let (mut links, _routes) = links(&[(0, 4)], &parser, 4, &jobs).unwrap();
        drop(jobs);
        let link = links.first_mut().unwrap();
        let mut job = link.free.pop().unwrap();
        *job = *IoJob::test_read(0, 3, 0, STATUS_BASE);
        let e = link.jobs.try_send(job).unwrap_err();
        let mut job = e.into_inner();
        job.fail();
        let u = job.finish(&mem);
        assert_eq!((u.head, u.len, u.outcome), (3, 1, Outcome::Failed));
    }
}
