//! The one event loop: a thread that serves the queues attached to it, woken by their kick
//! eventfds and completion fds, with an optional lock held per turn and optional adaptive
//! polling before it sleeps.
//!
//! The `dataplane` and `workers` modes run one loop per queue, polling, with no lock; the
//! `iothread` mode runs one loop for every queue of every disk, under the VM-wide lock, never
//! polling. Queues are attached when the driver sets DRIVER_OK and detached at reset or stop:
//! [`EventLoop::detach`] takes the registry lock, so the loop is never in the middle of a turn
//! of a queue being taken away. Lock order: the loop's lock (the VM-wide lock), then the
//! registry.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::poll::{AdaptivePoll, FlightPoll};
use crate::service::QueueService;
use crate::threads::{ThreadHook, ThreadRole};

/// epoll tag of the stop eventfd; the queue in registry slot `s` uses `TAGS * s` for its kick,
/// `TAGS * s + 1` for all its completion fds and `TAGS * s + 2` for its throttle timer (a
/// throttled queue sleeps until its tokens return, popping nothing and polling nothing).
const STOP_TAG: u64 = u64::MAX;
/// Tags per registry slot.
const TAGS: u64 = 3;

/// A queue as handed to a loop: its service and the eventfd its kicks arrive on.
#[derive(Debug)]
pub struct ServedQueue {
    /// The queue's service.
    pub service: QueueService,
    /// Readable when the driver kicks this queue (a duplicate of the ioeventfd or call fd).
    pub kick: EventFd,
}

/// How a loop runs.
#[derive(Debug, Clone, Default)]
pub struct LoopOptions {
    /// The thread's name.
    pub name: String,
    /// Busy-poll budget before sleeping, in microseconds (0: never poll).
    pub poll_us: u32,
    /// Keep polling while requests are in flight ([`FlightPoll`]).
    pub poll_in_flight: bool,
    /// A lock held around every turn (the VM-wide lock of the `iothread` mode).
    pub lock: Option<Arc<Mutex<()>>>,
    /// Run first in the loop's thread.
    pub hook: ThreadHook,
}

/// A running loop.
#[derive(Debug)]
pub struct EventLoop {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    epoll: Epoll,
    registry: Mutex<Vec<Option<ServedQueue>>>,
    stop: AtomicBool,
    stop_evt: EventFd,
    lock: Option<Arc<Mutex<()>>>,
    poll_us: u32,
    poll_in_flight: bool,
}

/// Locks `m`, also after a panic in another holder (the data stays consistent between
/// turns, so a poisoned lock is no reason to stop serving).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventLoop {
    /// Starts the loop's thread, with no queue yet.
    pub fn start(opts: LoopOptions) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoll: Epoll::new()?,
            registry: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            stop_evt: EventFd::new(EFD_NONBLOCK)?,
            lock: opts.lock,
            poll_us: opts.poll_us,
            poll_in_flight: opts.poll_in_flight,
        });
        shared.add(shared.stop_evt.as_raw_fd(), STOP_TAG)?;
        let s = shared.clone();
        let hook = opts.hook;
        let h = std::thread::Builder::new().name(opts.name).spawn(move || {
            hook.run(ThreadRole::Queue);
            s.run()
        })?;
        Ok(EventLoop {
            shared,
            thread: Mutex::new(Some(h)),
        })
    }

    /// Hands `queues` to the loop; returns their slots (for [`EventLoop::detach`]).
    pub fn attach(&self, queues: Vec<ServedQueue>) -> std::io::Result<Vec<usize>> {
        let mut reg = lock(&self.shared.registry);
        let mut slots = Vec::with_capacity(queues.len());
        for mut q in queues {
            q.service.disable_kicks();
            let slot = match reg.iter().position(Option::is_none) {
                Some(s) => s,
                None => {
                    reg.push(None);
                    reg.len() - 1
                }
            };
            let tag = TAGS * slot as u64;
            self.shared.add(q.kick.as_raw_fd(), tag)?;
            for fd in q.service.completion_fds() {
                self.shared.add(fd, tag + 1)?;
            }
            if let Some(fd) = q.service.throttle_fd() {
                self.shared.add(fd, tag + 2)?;
            }
            // Chains may already wait (the driver kicked before DRIVER_OK was handled): one
            // turn for the new queue.
            let _ = q.kick.write(1);
            if let Some(entry) = reg.get_mut(slot) {
                *entry = Some(q);
            }
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Takes the queues in `slots` back, after their in-flight requests completed.
    pub fn detach(&self, slots: &[usize]) -> Vec<QueueService> {
        let mut taken = Vec::with_capacity(slots.len());
        {
            let mut reg = lock(&self.shared.registry);
            for &s in slots {
                if let Some(q) = reg.get_mut(s).and_then(Option::take) {
                    self.shared.remove(q.kick.as_raw_fd());
                    for fd in q.service.completion_fds().chain(q.service.throttle_fd()) {
                        self.shared.remove(fd);
                    }
                    taken.push(q.service);
                }
            }
        }
        taken.iter_mut().for_each(QueueService::quiesce);
        taken
    }

    /// Stops and joins the thread. Queues still attached stay in the registry; detach them
    /// to take them back.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.stop_evt.write(1);
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn add(&self, fd: i32, tag: u64) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, tag),
        )
    }

    fn remove(&self, fd: i32) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Runs `f` on every attached queue, holding the loop's lock and the registry for this
    /// one turn only: a vCPU waiting for the VM-wide lock gets it between turns.
    fn each<R>(&self, init: R, mut f: impl FnMut(R, &mut ServedQueue) -> R) -> R {
        let _held = self.lock.as_deref().map(lock);
        let mut reg = lock(&self.registry);
        reg.iter_mut().flatten().fold(init, &mut f)
    }

    fn turn(&self) -> bool {
        self.each(false, |work, q| q.service.process() | work)
    }

    fn run(&self) {
        let mut poller = AdaptivePoll::new(self.poll_us);
        let mut flight = FlightPoll::new(self.poll_us);
        let mut events = vec![EpollEvent::default(); 64];
        while !self.stopped() {
            if self.turn() {
                continue;
            }
            // A queue with limits never makes the loop spin: its pace is its limit's, and a
            // spinning core is what its unlimited neighbours need. A loop that also serves
            // unlimited queues polls for them and serves the limited ones on the way.
            let may_poll = self.each(None, |may: Option<bool>, q| {
                if q.service.is_limited() {
                    may
                } else {
                    Some(may.unwrap_or(true) & q.service.may_poll())
                }
            });
            if poller.enabled() && may_poll == Some(true) {
                // Requests in flight: keep watching the rings and the engine across the
                // disk's latency (the driver does not kick meanwhile: kicks stay disabled
                // while this thread is awake), unless the engine's answer needs this CPU
                // (an NBD server on this host). Nothing in flight: the idle window.
                let in_flight = self.poll_in_flight
                    && self.each(false, |any, q| {
                        any | (!q.service.is_limited()
                            && q.service.in_flight() > 0
                            && q.service.spin_in_flight())
                    });
                let found = if in_flight {
                    flight.poll(|| self.turn() || self.stopped())
                } else {
                    poller.poll(|| self.turn() || self.stopped())
                };
                if found {
                    continue;
                }
            }
            // Kicks on again; chains that slipped in meanwhile get another turn.
            if self.each(false, |pending, q| q.service.enable_kicks() | pending) {
                self.each((), |(), q| q.service.disable_kicks());
                continue;
            }
            // Finished jobs that arrived before the doorbell was armed: no sleep.
            if self.each(false, |pending, q| q.service.prepare_sleep() | pending) {
                self.each((), |(), q| {
                    q.service.woke();
                    q.service.disable_kicks()
                });
                continue;
            }
            let slept = Instant::now();
            let n = self.epoll.wait(-1, &mut events).unwrap_or(0);
            poller.after_sleep(slept.elapsed());
            let tags: &[EpollEvent] = events.get(..n).unwrap_or(&[]);
            self.each((), |(), q| q.service.woke());
            let reg = lock(&self.registry);
            for ev in tags {
                acknowledge(&reg, ev.data());
            }
            drop(reg);
            self.each((), |(), q| q.service.disable_kicks());
        }
    }
}

/// Clears the readiness epoll reported for `tag`: a kick is counted and stamped, completion
/// fds are drained.
fn acknowledge(reg: &[Option<ServedQueue>], tag: u64) {
    if tag == STOP_TAG {
        return;
    }
    let Some(Some(q)) = usize::try_from(tag / TAGS).ok().and_then(|s| reg.get(s)) else {
        return;
    };
    match tag % TAGS {
        0 => {
            // EAGAIN: already drained by an earlier event; nothing to do.
            if q.kick.read().is_ok() {
                q.service.kick_seen();
            }
        }
        1 => q.service.drain_completion_fds(),
        _ => q.service.drain_throttle_fd(),
    }
}
