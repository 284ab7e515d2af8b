//! How the VM ends: the first stop request wins, everyone else sees `is_stopping()`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this value to the exit port.
    ExitPort(u32),
    /// A vCPU took a triple fault (`KVM_EXIT_SHUTDOWN`).
    TripleFault(u8),
    /// A vCPU executed HLT with interrupts that can never come (`KVM_EXIT_HLT`).
    Halted(u8),
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
    /// A vCPU hit an exit the VMM cannot handle, or `KVM_RUN` failed.
    VcpuFailed {
        /// The vCPU index.
        cpu: u8,
        /// What happened.
        message: String,
    },
}

impl StopReason {
    /// The process exit status: the exit port value (255 if larger, so that no value wraps to
    /// success), 128 + the signal number, or 1 for a guest or VMM failure.
    pub fn exit_status(&self) -> i32 {
        match self {
            StopReason::ExitPort(v) => (*v).min(255) as i32,
            StopReason::Signal(s) => 128 + s,
            _ => 1,
        }
    }

    /// What to print on stderr, if anything.
    pub fn message(&self) -> Option<String> {
        match self {
            StopReason::ExitPort(_) => None,
            StopReason::TripleFault(_) => Some("guest triple-faulted (shutdown)".into()),
            StopReason::Halted(cpu) => Some(format!(
                "vCPU {cpu} halted with no way to wake it (KVM_EXIT_HLT)"
            )),
            StopReason::Signal(s) => Some(format!("stopped by signal {s}")),
            StopReason::VcpuFailed { cpu, message } => Some(format!("vCPU {cpu}: {message}")),
        }
    }
}

/// A one-shot latch carrying the first [`StopReason`].
#[derive(Debug, Default)]
pub struct StopLatch {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    cv: Condvar,
}

impl StopLatch {
    /// An open latch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a stop; only the first reason is kept.
    pub fn request(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        // Release: a vCPU that sees the flag also sees the reason stored before it.
        self.stopping.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    /// Whether a stop was requested (checked by vCPUs before every `KVM_RUN`).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for a stop request.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<StopReason> {
        let r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let (r, _) = self
            .cv
            .wait_timeout_while(r, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let l = StopLatch::new();
        assert!(!l.is_stopping());
        assert_eq!(l.wait_timeout(Duration::from_millis(1)), None);
        l.request(StopReason::ExitPort(7));
        l.request(StopReason::Signal(2));
        assert!(l.is_stopping());
        assert_eq!(
            l.wait_timeout(Duration::ZERO),
            Some(StopReason::ExitPort(7))
        );
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(StopReason::ExitPort(7).exit_status(), 7);
        assert_eq!(StopReason::ExitPort(0x1234).exit_status(), 255);
        assert_eq!(StopReason::Signal(15).exit_status(), 143);
        assert_eq!(StopReason::TripleFault(0).exit_status(), 1);
    }
}
