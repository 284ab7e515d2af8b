//! `IoMode::Iothread`: ONE event-loop thread shared by every queue of every disk, which
//! processes under the VM-wide lock (QEMU's `virtio-ioeventfd` with the big QEMU lock).
//!
//! The thread sleeps in epoll over every registered queue's kick eventfd and engine
//! completion fd; when woken it takes the VM lock (the one vCPU threads hold around every
//! port I/O and MMIO dispatch in this mode), then the registry lock, and serves every queue
//! until none has work. It never polls.
//!
//! Devices attach their queues at DRIVER_OK and detach them at reset or stop, from a vCPU
//! thread holding the VM lock (so the loop is never in the middle of a turn then), or from
//! the shutdown hooks after the vCPUs stopped. Lock order everywhere: VM lock, device lock,
//! registry lock; the loop never takes a device lock.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::handler::{acknowledge_one, QueueWorker, StopSignal, ThreadQueue};

/// epoll tag of the stop eventfd; queue slot `s` uses `2 * s` (kick) and `2 * s + 1`.
const STOP_TAG: u64 = u64::MAX;

/// The shared I/O thread.
#[derive(Debug)]
pub struct IoThread {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    vm_lock: Arc<Mutex<()>>,
    epoll: Epoll,
    registry: Mutex<Vec<Option<ThreadQueue>>>,
    stop: StopSignal,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IoThread {
    /// Starts the thread; it processes while holding `vm_lock`.
    pub fn start(vm_lock: Arc<Mutex<()>>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            vm_lock,
            epoll: Epoll::new()?,
            registry: Mutex::new(Vec::new()),
            stop: StopSignal::new()?,
        });
        shared.epoll.ctl(
            ControlOperation::Add,
            shared.stop.evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TAG),
        )?;
        let s = shared.clone();
        let h = std::thread::Builder::new()
            .name("iothread".into())
            .spawn(move || {
                crate::seccomp::apply_thread(crate::seccomp::ThreadKind::Device);
                s.run()
            })?;
        Ok(IoThread {
            shared,
            thread: Mutex::new(Some(h)),
        })
    }

    /// Hands `queues` to the loop; returns their slots (for [`IoThread::detach`]).
    pub fn attach(&self, queues: Vec<ThreadQueue>) -> std::io::Result<Vec<usize>> {
        let mut reg = lock(&self.shared.registry);
        let mut slots = Vec::with_capacity(queues.len());
        for mut q in queues {
            q.worker.disable_kicks();
            let slot = match reg.iter().position(Option::is_none) {
                Some(s) => s,
                None => {
                    reg.push(None);
                    reg.len() - 1
                }
            };
            let tag = 2 * slot as u64;
            let epoll = &self.shared.epoll;
            let add = |fd, tag| {
                epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, tag),
                )
            };
            add(q.kick.as_raw_fd(), tag)?;
            if let Some(fd) = q.worker.completion_fd() {
                add(fd, tag + 1)?;
            }
            // Chains may already wait (the driver kicked before DRIVER_OK was handled):
            // one turn for the new queue.
            let _ = q.kick.write(1);
            if let Some(entry) = reg.get_mut(slot) {
                *entry = Some(q);
            }
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Takes the queues in `slots` back, after their in-flight requests completed.
    pub fn detach(&self, slots: &[usize]) -> Vec<QueueWorker> {
        let mut taken = Vec::with_capacity(slots.len());
        {
            let mut reg = lock(&self.shared.registry);
            for &s in slots {
                if let Some(q) = reg.get_mut(s).and_then(Option::take) {
                    let _ = self.shared.epoll.ctl(
                        ControlOperation::Delete,
                        q.kick.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    if let Some(fd) = q.worker.completion_fd() {
                        let _ = self.shared.epoll.ctl(
                            ControlOperation::Delete,
                            fd,
                            EpollEvent::default(),
                        );
                    }
                    taken.push(q.worker);
                }
            }
        }
        taken.iter_mut().for_each(QueueWorker::quiesce);
        taken
    }

    /// Stops and joins the thread (queues still attached are quiesced by their devices).
    pub fn stop(&self) {
        self.shared.stop.raise();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn run(&self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = self.epoll.wait(-1, &mut events).unwrap_or(0);
            if self.stop.raised() {
                return;
            }
            {
                let _vm = lock(&self.vm_lock);
                let reg = lock(&self.registry);
                for ev in events.iter().take(n) {
                    let tag = ev.data();
                    if tag == STOP_TAG {
                        continue;
                    }
                    if let Some(Some(q)) = usize::try_from(tag / 2).ok().and_then(|s| reg.get(s)) {
                        acknowledge_one(q, tag);
                    }
                }
            }
            // One turn per lock hold: a vCPU waiting for the VM lock (an MMIO exit) gets
            // it between turns instead of after the whole burst.
            loop {
                let _vm = lock(&self.vm_lock);
                let mut reg = lock(&self.registry);
                let mut work = false;
                for q in reg.iter_mut().flatten() {
                    work |= q.worker.process();
                }
                if work {
                    continue;
                }
                // Kicks on again; chains that slipped in meanwhile get another turn.
                let mut pending = false;
                for q in reg.iter_mut().flatten() {
                    pending |= q.worker.enable_kicks();
                }
                if !pending {
                    break;
                }
                reg.iter_mut()
                    .flatten()
                    .for_each(|q| q.worker.disable_kicks());
            }
        }
    }
}
