//! Adaptive busy-polling before a serving thread sleeps.
//!
//! Waking a sleeping thread costs far more than a look at a ring, so before sleeping the
//! thread spins on the avail ring and the engine's completions for a window of at most
//! `poll_us`. As QEMU's `poll-max-ns` does, the window adapts to the load: after a sleep
//! shorter than the maximum window, a longer window would have caught the work without the
//! wake-up, so it doubles; after a longer sleep, polling was wasted CPU (taken from the vCPU
//! on a small host), so it halves. `poll_us = 0` never polls.

use std::time::{Duration, Instant};

/// The default maximum polling window (`--poll-us`), in microseconds.
///
/// A window must cover the guest's think time between seeing a completion and kicking the
/// next request, which saves a wake-up; it must not try to cover a disk read, because with
/// two cores the vCPU spins on one and a long-polling thread on the other takes the CPU the
/// kernel's completion work and the pool's workers need (see the notes of the I/O modes
/// issue for the sweep that chose it).
pub const DEFAULT_POLL_US: u32 = 10;

/// Smallest window once polling is on: below this a poll cannot even see a kick.
const MIN_POLL_WINDOW: Duration = Duration::from_micros(1);

/// A polling window that adapts to how long the thread then slept.
///
/// ```
/// use std::time::Duration;
/// use blk_device::poll::AdaptivePoll;
/// let mut p = AdaptivePoll::new(8);
/// assert!(p.poll(|| true));
/// p.after_sleep(Duration::from_millis(5)); // long sleep: polling was wasted
/// assert_eq!(p.window(), Duration::from_micros(4));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AdaptivePoll {
    max: Duration,
    window: Duration,
}

impl AdaptivePoll {
    /// A poller whose window may grow to `poll_us` microseconds; it starts at the maximum.
    pub fn new(poll_us: u32) -> Self {
        let max = Duration::from_micros(u64::from(poll_us));
        AdaptivePoll { max, window: max }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether polling is on at all.
    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// Calls `find_work` until it returns `true` or the window ends; returns whether it found work.
    pub fn poll(&mut self, find_work: impl FnMut() -> bool) -> bool {
        if self.max.is_zero() {
            return false;
        }
        spin(self.window, find_work).is_some()
    }

    /// Adapts the window to a sleep of `slept` after a poll that found nothing.
    pub fn after_sleep(&mut self, slept: Duration) {
        if self.max.is_zero() {
            return;
        }
        self.window = if slept <= self.max {
            (self.window * 2).min(self.max)
        } else {
            (self.window / 2).max(MIN_POLL_WINDOW)
        };
    }
}

/// The most a serving thread spins waiting for requests in flight before it sleeps: long
/// enough for a random read of an SSD-class disk, short enough that a large transfer (which
/// takes a millisecond or more) is waited for asleep: one wake-up is then a small part of its
/// latency, and a spinning core would be most of its CPU cost.
pub const MAX_FLIGHT_POLL: Duration = Duration::from_micros(200);

/// Polling while requests are in flight: the thread watches the avail ring and the engine's
/// completions instead of sleeping, for about twice the time completions have been taking
/// (an average of what it measured), at least the idle window and at most
/// [`MAX_FLIGHT_POLL`]. A request slower than that (a flush, a loaded disk) is waited for
/// asleep, and the window grows for the next one.
///
/// ```
/// use std::time::Duration;
/// use blk_device::poll::FlightPoll;
/// let mut p = FlightPoll::new(10);
/// for _ in 0..32 {
///     p.completed_after(Duration::from_micros(60));
/// }
/// assert!(p.window() > Duration::from_micros(100)); // about twice the completion time
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FlightPoll {
    min: Duration,
    /// Moving average of the time from the start of a wait to a completion.
    estimate: Duration,
}

impl FlightPoll {
    /// A poller that waits at least `poll_us` microseconds; 0 never polls.
    pub fn new(poll_us: u32) -> Self {
        let min = Duration::from_micros(u64::from(poll_us));
        FlightPoll { min, estimate: min }
    }

    /// Whether polling is on at all.
    pub fn enabled(&self) -> bool {
        !self.min.is_zero()
    }

    /// How long the next wait spins.
    pub fn window(&self) -> Duration {
        (self.estimate * 2).clamp(self.min, MAX_FLIGHT_POLL)
    }

    /// A completion (or new work) arrived `after` the wait started.
    pub fn completed_after(&mut self, after: Duration) {
        // An average over about eight waits: follows a change of disk within a few requests
        // without jumping at one outlier.
        self.estimate = (self.estimate * 7 + after) / 8;
    }

    /// The window ended with nothing: the disk is slower than the estimate.
    pub fn missed(&mut self) {
        self.estimate = (self.estimate * 2).min(MAX_FLIGHT_POLL);
    }

    /// Spins on `find_work` for the window; returns whether it found work, adapting the
    /// estimate either way.
    pub fn poll(&mut self, find_work: impl FnMut() -> bool) -> bool {
        if !self.enabled() {
            return false;
        }
        match spin(self.window(), find_work) {
            Some(after) => {
                self.completed_after(after);
                true
            }
            None => {
                self.missed();
                false
            }
        }
    }
}

/// Calls `find_work` until it returns `true` (then returns how long that took) or `window` has
/// passed (then `None`).
fn spin(window: Duration, mut find_work: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if find_work() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= window {
            return None;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_halves_after_long_sleeps_and_doubles_back_after_short_ones() {
        let mut p = AdaptivePoll::new(16);
        for _ in 0..10 {
            p.after_sleep(Duration::from_millis(1));
        }
        assert_eq!(p.window(), MIN_POLL_WINDOW);
        for _ in 0..10 {
            p.after_sleep(Duration::from_micros(1));
        }
        assert_eq!(p.window(), Duration::from_micros(16));
    }

    #[test]
    fn flight_window_follows_completion_times_within_bounds() {
        let mut p = FlightPoll::new(10);
        for _ in 0..64 {
            p.completed_after(Duration::from_micros(80));
        }
        let w = p.window();
        assert!(
            w > Duration::from_micros(150) && w <= Duration::from_micros(160),
            "{w:?}"
        );
        for _ in 0..20 {
            p.missed();
        }
        assert_eq!(p.window(), MAX_FLIGHT_POLL);
        for _ in 0..200 {
            p.completed_after(Duration::ZERO);
        }
        assert_eq!(
            p.window(),
            Duration::from_micros(10),
            "never below the idle window"
        );
        assert!(!FlightPoll::new(0).poll(|| true), "0 never polls");
    }

    #[test]
    fn zero_never_polls() {
        let mut p = AdaptivePoll::new(0);
        let mut calls = 0;
        assert!(!p.poll(|| {
            calls += 1;
            true
        }));
        assert_eq!(calls, 0);
        assert!(!p.enabled());
    }
}
