//! Notifications to the front end: a used-buffer notification is a write to the queue's call
//! eventfd (`VHOST_USER_SET_VRING_CALL`); a device that needs a reset writes every queue's
//! error eventfd (`VHOST_USER_SET_VRING_ERR`), the only channel vhost-user has for it.
//!
//! The front end may replace a call eventfd while the ring runs (QEMU does when the guest
//! masks or unmasks a vector), so each sits behind its own lock, taken once per notification.

use std::sync::{Mutex, MutexGuard};

use blk_device::interrupt::Interrupt;
use vmm_sys_util::eventfd::EventFd;

/// The call and error eventfds of every queue.
#[derive(Debug)]
pub struct Notifiers {
    calls: Vec<Mutex<Option<EventFd>>>,
    errs: Vec<Mutex<Option<EventFd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Notifiers {
    /// No eventfd yet for any of `queues` queues.
    pub fn new(queues: u16) -> Self {
        let none = |_| Mutex::new(None);
        Notifiers {
            calls: (0..queues).map(none).collect(),
            errs: (0..queues).map(none).collect(),
        }
    }

    /// Sets (or, with `None`, clears) the call eventfd of `queue`.
    pub fn set_call(&self, queue: usize, fd: Option<EventFd>) {
        if let Some(slot) = self.calls.get(queue) {
            *lock(slot) = fd;
        }
    }

    /// Sets (or clears) the error eventfd of `queue`.
    pub fn set_err(&self, queue: usize, fd: Option<EventFd>) {
        if let Some(slot) = self.errs.get(queue) {
            *lock(slot) = fd;
        }
    }

    /// Forgets every eventfd (the front end went away).
    pub fn clear(&self) {
        self.calls
            .iter()
            .chain(&self.errs)
            .for_each(|s| *lock(s) = None);
    }
}

impl Interrupt for Notifiers {
    fn notify_queue(&self, queue: u16) {
        if let Some(slot) = self.calls.get(usize::from(queue)) {
            if let Some(fd) = lock(slot).as_ref() {
                // EAGAIN only when the counter is saturated: the front end is notified already.
                let _ = fd.write(1);
            }
        }
    }

    fn notify_config(&self) {
        for slot in &self.errs {
            if let Some(fd) = lock(slot).as_ref() {
                let _ = fd.write(1);
            }
        }
    }
}
