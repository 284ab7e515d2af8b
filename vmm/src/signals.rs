//! Signals: SIGINT/SIGTERM request a clean stop; a real-time signal kicks vCPU threads out of
//! `KVM_RUN`.
//!
//! The handlers do only async-signal-safe work (an atomic store). The main thread polls
//! [`pending`] while it waits for the VM to stop, then kicks every vCPU with [`kick`] until it has
//! left its run loop. Handlers are installed without `SA_RESTART`, so a signal landing on a
//! thread inside `KVM_RUN` makes it return `EINTR` and the run loop re-checks the stop latch.
//!
//! SIGINT and SIGTERM are blocked while the VM is built and its threads start
//! ([`block_termination`]), so every vCPU, I/O and dataplane thread inherits a mask without them
//! and only the main thread (which unblocks them again) takes them: device threads never see an
//! `EINTR` they did not ask for.

use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{create_sigset, register_signal_handler, Killable, SIGRTMIN};

use crate::error::{Error, Result};

/// The last termination signal received, 0 if none.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(signal: c_int, _: *mut siginfo_t, _: *mut c_void) {
    PENDING.store(signal, Ordering::Relaxed);
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

/// Installs the SIGINT, SIGTERM and vCPU kick handlers.
pub fn install() -> Result<()> {
    let handlers: [(c_int, extern "C" fn(c_int, *mut siginfo_t, *mut c_void)); 3] = [
        (libc::SIGINT, on_terminate),
        (libc::SIGTERM, on_terminate),
        (kick_signal(), on_kick),
    ];
    for (signal, handler) in handlers {
        register_signal_handler(signal, handler)
            .map_err(|source| Error::Signal { signal, source })?;
    }
    Ok(())
}

fn set_termination_mask(how: c_int) {
    let Ok(set) = create_sigset(&[libc::SIGINT, libc::SIGTERM]) else {
        return;
    };
    // SAFETY: `set` is an initialised signal set and a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts from now on).
pub fn block_termination() {
    set_termination_mask(libc::SIG_BLOCK);
}

/// Unblocks SIGINT and SIGTERM in the calling thread; one that arrived meanwhile is handled now.
pub fn unblock_termination() {
    set_termination_mask(libc::SIG_UNBLOCK);
}

/// The termination signal received so far, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// Interrupts `thread` if it is inside `KVM_RUN` (a no-op for a thread that has finished).
pub fn kick<T>(thread: &JoinHandle<T>) {
    if !thread.is_finished() {
        // ESRCH races with the thread exiting; nothing to do then.
        let _ = thread.kill(kick_signal());
    }
}
