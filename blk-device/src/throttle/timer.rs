//! A one-shot `timerfd` on `CLOCK_MONOTONIC`: readable when a throttled queue should ask for
//! tokens again. Arming it from another thread (a throttle group waking a member) is safe:
//! `timerfd_settime` only needs the fd.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A one-shot timer whose fd becomes readable when it expires.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// A disarmed, non-blocking timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call with constant flags; the result is checked below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    /// Expires in `ns` nanoseconds (at least one), replacing any earlier setting.
    pub fn arm_ns(&self, ns: u64) {
        let ns = ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::try_from(ns % 1_000_000_000).unwrap_or(0),
            },
        };
        // SAFETY: the fd is a timerfd we own; `spec` is a valid itimerspec and the old value
        // is not asked for (null). A failure (impossible with these arguments) would only
        // leave the timer as it was.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    /// Clears the readiness of an expired timer.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`, which is 8 bytes long; the fd is
        // non-blocking, so an unexpired timer returns EAGAIN, which is ignored.
        unsafe {
            libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
        }
    }

    /// The fd, for epoll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
