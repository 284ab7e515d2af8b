//! The device's log of failed requests: one stderr line per request the guest gets back with
//! `VIRTIO_BLK_S_IOERR` (5.2.6 "Device Operation"), up to [`LOGGED`] per device, then one
//! line saying that further failures are only counted (in the metrics' `failed` counter).
//!
//! A failing disk can fail every request; the cap keeps the log readable and the hot path
//! free of a write per request.

use std::fmt::Display;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Failed requests logged per device before they are only counted.
pub const LOGGED: u64 = 20;

/// Rate-limited failure lines of one device (shared by its queues).
#[derive(Debug)]
pub struct FailureLog {
    /// `virtio-blk <image path>`; empty for a log that prints nothing (tests).
    prefix: String,
    failures: AtomicU64,
}

impl FailureLog {
    /// A log whose lines start with `virtio-blk <path>: `.
    pub fn new(path: &Path) -> Self {
        FailureLog {
            prefix: format!("virtio-blk {}", path.display()),
            failures: AtomicU64::new(0),
        }
    }

    /// A log that only counts (for workers built without a device).
    pub fn silent() -> Self {
        FailureLog {
            prefix: String::new(),
            failures: AtomicU64::new(0),
        }
    }

    /// Records one failed request: `what` failed because of `why`.
    pub fn record(&self, what: impl Display, why: impl Display) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        if self.prefix.is_empty() {
            return;
        }
        if n < LOGGED {
            eprintln!("{}: {what} failed: {why}", self.prefix);
        } else if n == LOGGED {
            eprintln!(
                "{}: more than {LOGGED} requests failed; further failures are only counted (metrics: failed)",
                self.prefix
            );
        }
    }

    /// Failed requests recorded so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_failure() {
        let log = FailureLog::silent();
        for i in 0..(LOGGED + 5) {
            log.record(format_args!("request {i}"), "test");
        }
        assert_eq!(log.failures(), LOGGED + 5);
    }
}
