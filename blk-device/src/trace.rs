//! Per-request stamps on the device's hot path: the stages of a request, a preallocated
//! lock-free log per queue ([`StampRing`]) and the handle the queue service stamps through
//! ([`QueueTrace`]).
//!
//! Producers reserve a slot with one `fetch_add` and fill it; the log never wraps: once it is
//! full, stamps are dropped and counted. Keeping the *first* stamps (rather than the latest)
//! keeps the device's record aligned with a guest's log, which also starts at boot. The
//! reader runs after the producers stopped (at the end of the run); a slot whose producer
//! had not finished writing is skipped through its `meta` word, published last. Whoever owns
//! the logs (the VMM's tracer) joins them with the guest's view; this crate only records.
//!
//! ```
//! use std::sync::Arc;
//! use blk_device::trace::{QueueTrace, Stage, StampRing};
//! let ring = Arc::new(StampRing::new(16));
//! let q = QueueTrace::new(ring.clone());
//! q.stamp(Stage::Popped, 3);
//! QueueTrace::disabled().stamp(Stage::Popped, 3); // costs a branch, records nothing
//! assert_eq!(ring.snapshot().len(), 1);
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use backend_raw::WireTimes;

/// Head value of a stamp that belongs to a batch rather than one chain (a kick, an interrupt).
pub const NO_HEAD: u16 = u16::MAX;

/// Where a request is, as seen by the device. Stamped in this order for one request.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The queue's kick (ioeventfd) was seen by the thread serving it (per batch: [`NO_HEAD`]).
    KickSeen = 0,
    /// The chain was popped from the avail ring.
    Popped = 1,
    /// The chain was parsed into a request.
    Parsed = 2,
    /// The request was handed to another thread (`workers` io mode).
    HandedToWorker = 3,
    /// The request was submitted to the backend engine.
    BackendSubmit = 4,
    /// The engine reported the request's last operation complete, seen by whoever reaps the
    /// engine (the serving thread or a pool worker), before the status byte is written.
    BackendComplete = 5,
    /// The used element was published (used index written).
    UsedPublished = 6,
    /// The queue's interrupt was injected (per batch: [`NO_HEAD`] allowed).
    IrqInjected = 7,
    /// The parsed request waits for its disk's tokens ([`crate::throttle`]); stamped once,
    /// between `Parsed` and its submission, when the limits hold it back. Numbered last so
    /// older traces keep their numbers.
    Throttled = 8,
    /// An engine over the network wrote the request's last byte to its server (stamped at
    /// the time the engine saw, when the request completes; NBD).
    NetworkSent = 9,
    /// The header of the server's reply arrived: the span from `NetworkSent` is the network
    /// round trip with the server's own work.
    NetworkReply = 10,
}

impl Stage {
    /// Every stage, in request order.
    pub const ALL: [Stage; 11] = [
        Stage::KickSeen,
        Stage::Popped,
        Stage::Parsed,
        Stage::HandedToWorker,
        Stage::BackendSubmit,
        Stage::BackendComplete,
        Stage::UsedPublished,
        Stage::IrqInjected,
        Stage::Throttled,
        Stage::NetworkSent,
        Stage::NetworkReply,
    ];

    /// The stage with this `as u8` value.
    pub fn from_u8(v: u8) -> Option<Stage> {
        Stage::ALL.get(usize::from(v)).copied()
    }
}

/// The host's time stamp counter: what every stamp records (the clock of an engine's
/// [`WireTimes`] too).
pub use backend_raw::rdtsc;

/// One queue's handle for stamping; cheap to clone, `Send`. Disabled handles record nothing.
#[derive(Debug, Clone, Default)]
pub struct QueueTrace {
    ring: Option<Arc<StampRing>>,
}

impl QueueTrace {
    /// A handle that records nothing (tracing off).
    pub const fn disabled() -> Self {
        QueueTrace { ring: None }
    }

    /// A handle appending to `ring`.
    pub fn new(ring: Arc<StampRing>) -> Self {
        QueueTrace { ring: Some(ring) }
    }

    /// Whether stamps are recorded.
    pub fn is_enabled(&self) -> bool {
        self.ring.is_some()
    }

    /// Records that the engine finished chain `head`'s request, with the network stages the
    /// engine timed (an engine over the network) first.
    #[inline]
    pub fn backend_complete(&self, head: u16, wire: Option<WireTimes>) {
        let Some(ring) = &self.ring else {
            return;
        };
        if let Some(w) = wire {
            for (stage, tsc) in [
                (Stage::NetworkSent, w.sent_tsc),
                (Stage::NetworkReply, w.reply_tsc),
            ] {
                ring.push(Stamp {
                    tsc,
                    stage: stage as u8,
                    head,
                });
            }
        }
        self.stamp(Stage::BackendComplete, head);
    }

    /// Records that chain `head` (or the batch, with [`NO_HEAD`]) reached `stage` now.
    #[inline]
    pub fn stamp(&self, stage: Stage, head: u16) {
        if let Some(ring) = &self.ring {
            ring.push(Stamp {
                tsc: rdtsc(),
                stage: stage as u8,
                head,
            });
        }
    }
}

/// One recorded event: when (host TSC), what ([`Stage`] as `u8`), which chain (`head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Host TSC when the stage was reached.
    pub tsc: u64,
    /// The stage, as `Stage as u8`.
    pub stage: u8,
    /// Head descriptor index ([`NO_HEAD`] for per-batch stages).
    pub head: u16,
}

/// Bit set in a slot's `meta` word once the slot is filled.
const FILLED: u64 = 1 << 32;

#[derive(Debug, Default)]
struct Slot {
    tsc: AtomicU64,
    /// `FILLED | stage << 16 | head`, written after `tsc` (release).
    meta: AtomicU64,
}

/// The log. Capacity is fixed at creation; memory is allocated once, up front.
#[derive(Debug)]
pub struct StampRing {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    dropped: AtomicU64,
}

impl StampRing {
    /// A log with room for `capacity` stamps.
    pub fn new(capacity: usize) -> Self {
        StampRing {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends a stamp, or counts it as dropped if the log is full. Lock-free, wait-free.
    #[inline]
    pub fn push(&self, s: Stamp) {
        // Relaxed: the index only hands out distinct slots; the slot's own release publishes it.
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.slots.get(i) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        slot.tsc.store(s.tsc, Ordering::Relaxed);
        // Release: a reader that sees FILLED also sees the tsc written above.
        slot.meta.store(
            FILLED | u64::from(s.stage) << 16 | u64::from(s.head),
            Ordering::Release,
        );
    }

    /// Stamps dropped because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Slots the log holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// A copy of every complete stamp, in reservation order.
    pub fn snapshot(&self) -> Vec<Stamp> {
        let n = self.next.load(Ordering::Acquire).min(self.slots.len());
        self.slots
            .iter()
            .take(n)
            .filter_map(|slot| {
                // Acquire: pairs with the release in `push`.
                let meta = slot.meta.load(Ordering::Acquire);
                (meta & FILLED != 0).then(|| Stamp {
                    tsc: slot.tsc.load(Ordering::Relaxed),
                    stage: (meta >> 16) as u8,
                    head: meta as u16,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(i: u64) -> Stamp {
        Stamp {
            tsc: i,
            stage: (i % 8) as u8,
            head: (i % 256) as u16,
        }
    }

    #[test]
    fn keeps_everything_below_capacity() {
        let r = StampRing::new(100);
        (0..100).for_each(|i| r.push(stamp(i)));
        assert_eq!(r.snapshot(), (0..100).map(stamp).collect::<Vec<_>>());
        assert_eq!(r.dropped(), 0);
    }

    #[test]
    fn counts_drops_when_full() {
        let r = StampRing::new(10);
        (0..25).for_each(|i| r.push(stamp(i)));
        assert_eq!(r.snapshot(), (0..10).map(stamp).collect::<Vec<_>>());
        assert_eq!(r.dropped(), 15);
    }

    #[test]
    fn concurrent_producers_lose_nothing_below_capacity() {
        let r = Arc::new(StampRing::new(4 * 10_000));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..10_000).for_each(|i| r.push(stamp(t * 1_000_000 + i)))
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut got: Vec<u64> = r.snapshot().iter().map(|s| s.tsc).collect();
        got.sort_unstable();
        let mut want: Vec<u64> = (0..4u64)
            .flat_map(|t| (0..10_000).map(move |i| t * 1_000_000 + i))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(r.dropped(), 0);
    }

    proptest::proptest! {
        #[test]
        fn matches_a_truncating_model(cap in 0usize..64, n in 0u64..200) {
            let r = StampRing::new(cap);
            (0..n).for_each(|i| r.push(stamp(i)));
            let kept = n.min(cap as u64);
            proptest::prop_assert_eq!(r.snapshot(), (0..kept).map(stamp).collect::<Vec<_>>());
            proptest::prop_assert_eq!(r.dropped(), n - kept);
        }
    }
}
