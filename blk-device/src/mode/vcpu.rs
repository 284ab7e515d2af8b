//! `vcpu`: no ioeventfd; a kick exits to the vCPU thread, which serves the queue to completion
//! right there (pop, parse, blocking I/O, notify) while holding the VM-wide lock, as an
//! unmodified QEMU without ioeventfd does under its global mutex.
//!
//! A disk with limits needs one more thread: a throttled queue leaves kicks off and waits for
//! its tokens, and no exit would ever come to resume it. The disk's throttle thread sleeps on
//! the queues' throttle timers and, when one fires, serves that queue as a kick would. It
//! takes only the queues' own lock, and never holds it while it sleeps.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activation, Serving};
use crate::error::DeviceError;
use crate::service::QueueService;
use crate::threads::ThreadRole;

type Services = Arc<Mutex<Vec<QueueService>>>;

fn lock(m: &Mutex<Vec<QueueService>>) -> MutexGuard<'_, Vec<QueueService>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues, served by whichever vCPU thread exits on a notify.
#[derive(Debug)]
struct OnVcpu {
    services: Services,
    /// Resumes throttled queues (limited disks only).
    resumer: Option<(EventFd, JoinHandle<()>)>,
}

/// Builds the queue services; nothing runs until the first notify exit (or, on a limited
/// disk, a throttle timer).
pub fn start(act: Activation<'_>) -> Result<Box<dyn Serving>, DeviceError> {
    let path = act.disk.path().to_path_buf();
    let (hook, name) = (act.serve.hook.clone(), act.serve.thread_name.clone());
    let services: Vec<QueueService> = act
        .inline_queues()?
        .into_iter()
        .map(|q| q.service)
        .collect();
    let timers: Vec<(usize, i32)> = services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.throttle_fd().map(|fd| (i, fd)))
        .collect();
    let services = Arc::new(Mutex::new(services));
    let resumer = if timers.is_empty() {
        None
    } else {
        let fd_err = |source| DeviceError::Fd {
            path: path.clone(),
            source,
        };
        let epoll = Epoll::new().map_err(fd_err)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(fd_err)?;
        for &(i, fd) in &timers {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(fd_err)?;
        }
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, u64::MAX),
            )
            .map_err(fd_err)?;
        let s = services.clone();
        let h = std::thread::Builder::new()
            .name(format!("{name}-throttle"))
            .spawn(move || {
                hook.run(ThreadRole::Queue);
                resume_loop(&epoll, &s)
            })
            .map_err(|source| DeviceError::Thread {
                path: path.clone(),
                source,
            })?;
        Some((stop, h))
    };
    Ok(Box::new(OnVcpu { services, resumer }))
}

/// Sleeps on the throttle timers; serves the queue whose timer fired. Ends at the stop event.
fn resume_loop(epoll: &Epoll, services: &Mutex<Vec<QueueService>>) {
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ev in events.iter().take(n) {
            if ev.data() == u64::MAX {
                return;
            }
            let mut all = lock(services);
            if let Some(s) = usize::try_from(ev.data()).ok().and_then(|i| all.get_mut(i)) {
                s.drain_throttle_fd();
                s.resume();
            }
        }
    }
}

impl Serving for OnVcpu {
    fn notify(&mut self, queue: u16) -> bool {
        if let Some(s) = lock(&self.services).iter_mut().find(|s| s.index() == queue) {
            s.serve_kick();
        }
        true
    }

    fn stop(mut self: Box<Self>) {
        if let Some((stop, h)) = self.resumer.take() {
            let _ = stop.write(1);
            let _ = h.join();
        }
        lock(&self.services)
            .iter_mut()
            .for_each(QueueService::quiesce);
    }
}
