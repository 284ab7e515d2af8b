//! What serving threads report to the transport without taking its lock.

use std::sync::atomic::{AtomicBool, Ordering};

/// A device-wide flag the queues raise when a ring failed (2.1.2 "Device Status Field":
/// DEVICE_NEEDS_RESET); the transport moves it into `device_status` before the driver reads
/// the status.
///
/// ```
/// use blk_device::health::DeviceHealth;
/// let h = DeviceHealth::default();
/// h.report_needs_reset();
/// assert!(h.take_needs_reset());
/// assert!(!h.take_needs_reset());
/// ```
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
